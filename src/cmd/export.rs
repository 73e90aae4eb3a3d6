//! `lbrprof export`: profiles for other tools: branch profiles for optimizers (BOLT
//! `.fdata`), and pprof's profile.proto for `go tool pprof` and fleet profilers.
//! perf.data (`export_perf`) and the Firefox Profiler (`export_firefox`) have modules
//! of their own.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::bolt;
use lbrprof_reports::decode::CodeReader;

pub use super::export_args::Args;
use super::report::{Naming, output};

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.perf_data && (args.no_callchains || args.guest_cpumode.is_some()) {
        anyhow::bail!("--no-callchains and --guest-cpumode apply to --perf-data only");
    }
    if args.pprof {
        return pprof(args);
    }
    if args.perf_data {
        return super::export_perf::run(args);
    }
    if args.firefox {
        return super::export_firefox::run(args);
    }
    if args.callgrind {
        return super::export_callgrind::run(args);
    }
    if args.autofdo_raw {
        return super::export_pgo::autofdo_raw(args);
    }
    if args.autofdo {
        return super::export_pgo::autofdo(args);
    }
    if args.bolt_preagg {
        return super::export_pgo::preagg(args);
    }
    let loaded = super::export_pgo::load_for_binaries(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let mut out = output(Some(&args.output))?;
    let mut code = CodeReader::default();
    let stats = bolt::write_fdata(
        &loaded.profile,
        &loaded.syms,
        &mut code,
        &loaded.header.sampling.event,
        &args.input.dso,
        &super::export_pgo::bolt_names(&loaded),
        &mut out,
    )
    .and_then(|s| out.flush().map(|()| s))
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    if stats.unnamed > 0 {
        eprintln!(
            "lbrprof: warning: {} {} in code with no function name (stripped, no symbols) left out of the profile as [unknown]; install the debug package or pass --debug-dir to name them",
            stats.unnamed,
            if stats.no_lbr {
                "samples"
            } else {
                "branch ends"
            }
        );
    }
    if stats.no_lbr {
        eprintln!(
            "lbrprof: wrote {} ({} no_lbr sample lines: the recording has no branch stacks)",
            args.output.display(),
            stats.branch_lines
        );
    } else {
        eprintln!(
            "lbrprof: wrote {} ({} branch lines, {} fall-through lines; skipped {} edges outside known functions; {} of {} fall-through ranges in the binary not usable: unreadable code, or leaving their function)",
            args.output.display(),
            stats.branch_lines,
            stats.fallthrough_lines,
            stats.skipped_edges,
            stats.skipped_ranges,
            stats.ranges
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn pprof(args: Args) -> anyhow::Result<ExitCode> {
    // With the timeline: samples labelled by process and thread.
    let loaded = super::report::load_timeline(&args.input, Naming::Demangled, false)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    if loaded.profile.stacks.is_empty() {
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
    let mut out = output(Some(&args.output))?;
    let sampling = &loaded.header.sampling;
    // The sampling period in the event's unit (ns between samples for a frequency).
    let period = if sampling.period > 0 {
        sampling.period
    } else {
        1_000_000_000u64
            .checked_div(sampling.frequency)
            .unwrap_or(0)
    };
    let stats = lbrprof_reports::pprof::write(
        &loaded.profile,
        &loaded.syms,
        &sampling.event,
        period,
        &mut out,
    )
    .and_then(|s| out.flush().map(|()| s))
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "lbrprof: wrote {} (pprof: {} stacks, {} of them guest snapshots; {} branch edges; {} locations, {} functions, {} mappings)",
        args.output.display(),
        stats.samples - stats.branch_edges,
        stats.guest_samples,
        stats.branch_edges,
        stats.locations,
        stats.functions,
        stats.mappings
    );
    Ok(ExitCode::SUCCESS)
}
