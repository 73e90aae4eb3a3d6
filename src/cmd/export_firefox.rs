//! `lbrprof export --firefox`: the recording as a Firefox Profiler profile (see
//! `lbrprof_reports::firefox`).

use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::firefox::{self, FirefoxMeta};

use super::export_args::Args;
use super::report::{Naming, load_timeline, output};

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load_timeline(&args.input, Naming::Demangled, true)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    if loaded
        .profile
        .timeline
        .as_ref()
        .is_none_or(|t| t.samples.is_empty())
    {
        anyhow::bail!(
            "nothing to export: {} has no samples{}",
            args.input.input.display(),
            if loaded.profile.totals.filtered_out > 0 {
                " that pass the filters"
            } else {
                ""
            }
        );
    }
    let h = &loaded.header;
    let interval_ns = if h.sampling.period > 0 && h.sampling.event.contains("clock") {
        h.sampling.period
    } else {
        1_000_000_000u64
            .checked_div(h.sampling.frequency)
            .unwrap_or(1_000_000)
    };
    let name = args
        .input
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let meta = FirefoxMeta {
        product: format!("lbrprof: {name}"),
        start_unix: h.start_unix,
        start_ns: h.start_monotonic_ns,
        interval_ns,
        event: h.sampling.event.clone(),
    };
    let gzip = args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let out = output(Some(&args.output))?;
    let stats = firefox::write(&loaded.profile, &loaded.syms, &meta, gzip, out)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "lbrprof: wrote {} (Firefox Profiler{}: {} processes, {} threads, {} host samples, {} guest snapshots with as many markers); open it at https://profiler.firefox.com",
        args.output.display(),
        if gzip { ", gzip" } else { "" },
        stats.processes,
        stats.threads,
        stats.host_samples,
        stats.guest_samples,
    );
    Ok(ExitCode::SUCCESS)
}
