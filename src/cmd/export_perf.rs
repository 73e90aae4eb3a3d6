//! `lbrprof export --perf-data`: the recording as a Linux perf.data file (see
//! `lbrprof_reports::perfdata_out` for what becomes what).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_data::input::{Input, InputFormat, open_any};
use lbrprof_data::model::Target;
use lbrprof_data::source::{SourceError, visit_input};
use lbrprof_reports::perfdata_out::{self, Meta, Plan};

use super::export_args::Args;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let i = &args.input;
    if !i.pid.is_empty()
        || !i.tid.is_empty()
        || !i.comm.is_empty()
        || !i.dso.is_empty()
        || i.time.is_some()
    {
        anyhow::bail!(
            "--perf-data writes every sample; filter the file with perf instead (perf script/report --pid, --tid, --comms, --dsos, --time)"
        );
    }
    let path = &i.input;
    let open = || -> anyhow::Result<Input> {
        let mut input =
            open_any(path).with_context(|| format!("cannot read {}", path.display()))?;
        input
            .select_event(i.event.as_deref())
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(input)
    };

    // Pass 1: which sample fields the file needs. Both passes read the input in stream
    // order, in place where it can be mapped; the event stream where a perf.data sample
    // cannot be decoded in place (it names the record).
    let mut first = open()?;
    let mut plan = Plan::default();
    // LBRPROF_STREAM=1 reads the event stream, to compare it with the walk in place.
    let mut stream_only = std::env::var_os("LBRPROF_STREAM").is_some();
    let mut read = visit_input(&mut first, stream_only, &mut plan);
    if let Err(SourceError::Undecodable(_)) = read {
        (first, plan, stream_only) = (open()?, Plan::default(), true);
        read = visit_input(&mut first, stream_only, &mut plan);
    }
    read.with_context(|| format!("cannot read {}", path.display()))?;
    if i.event.is_none()
        && let Some(events) = first.several_events()
    {
        // One event attribute is written: the samples of several would be mixed in it.
        return Err(anyhow::Error::new(super::report::SeveralEvents {
            path: path.clone(),
            events,
        }));
    }
    for w in first.warnings() {
        eprintln!("lbrprof: warning: {w}");
    }
    if plan.is_empty() {
        anyhow::bail!(
            "nothing to export: {} has no samples and no guest snapshots",
            path.display()
        );
    }
    if args.no_callchains {
        plan.host_callchains = false;
        plan.guest_stacks = false;
    }
    let mut meta = meta(&first, &plan);
    meta.guest_as_host = args.guest_cpumode.as_deref() == Some("host");

    // Pass 2: write it, beside the destination, then move it in place (so that a failed
    // export, or one whose output is its input, never destroys a file).
    let tmp = tmp_path(&args.output);
    let file = std::fs::File::create(&tmp)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut second = open()?;
    let result = perfdata_out::write(file, &meta, &plan, |visitor| {
        visit_input(&mut second, stream_only, visitor)
    });
    let stats = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", args.output.display()));
        }
    };
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let guest = if stats.guest_samples > 0 {
        format!(
            ", {} guest snapshots as samples of event {}",
            stats.guest_samples,
            perfdata_out::GUEST_EVENT
        )
    } else {
        String::new()
    };
    eprintln!(
        "lbrprof: wrote {} (perf.data, {} bytes: {} host samples{guest}, {} branch entries, {} mappings, {} task records)",
        args.output.display(),
        stats.bytes,
        stats.host_samples,
        stats.branch_entries,
        stats.mappings,
        stats.task_records
    );
    if stats.guest_mode_samples > 0 {
        eprintln!(
            "lbrprof: {} host samples of vCPU threads running the guest are in the guest's processes{}, where perf names their guest code",
            stats.guest_mode_samples,
            if meta.guest_as_host {
                " (pids 10000000 + the guest's)"
            } else {
                " (guest machine, guest user mode)"
            }
        );
    }
    if stats.truncated_frames > 0 {
        eprintln!(
            "lbrprof: warning: {} call-chain frames cut to keep records within perf's 64 KiB record size",
            stats.truncated_frames
        );
    }
    if stats.skipped_losses > 0 {
        eprintln!(
            "lbrprof: note: {} loss events with no perf.data record (full snapshot channel, frozen LBR) are not in the file; `lbrprof report` counts them",
            stats.skipped_losses
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn meta(input: &Input, plan: &Plan) -> Meta {
    let h = input.header();
    // A perf.data file's header names its first event; the samples may be another's.
    let event = input
        .sampled_event()
        .filter(|e| !e.contains(", "))
        .unwrap_or_else(|| h.sampling.event.clone());
    let mut guest_names = std::collections::BTreeMap::new();
    if let Target::Vm { image, .. } = &h.target {
        let name = image.rsplit(['/', ':']).next().unwrap_or(image);
        guest_names.insert(0, name.to_owned());
    }
    Meta {
        event,
        frequency: h.sampling.frequency,
        period: h.sampling.period,
        snapshot_period: h.sampling.period.max(1),
        hostname: h.host.hostname.clone(),
        os_release: h.host.kernel.clone(),
        version: format!("lbrprof {} (from {})", env!("CARGO_PKG_VERSION"), h.writer),
        arch: std::env::consts::ARCH.to_owned(),
        cmdline: std::env::args().collect(),
        build_ids: input.build_ids(),
        guest_names,
        kernel_text: if input.format() == InputFormat::Lbrprof && !plan.kernel_mapped {
            running_kernel_text(&h.host.kernel)
        } else {
            None
        },
        guest_as_host: false,
    }
}

/// `[_text, _etext)` of the running kernel from /proc/kallsyms, when the recording was
/// made on this kernel release and the addresses are not hidden (kptr_restrict).
fn running_kernel_text(recorded_release: &str) -> Option<(u64, u64)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    if release.trim() != recorded_release || recorded_release.is_empty() {
        return None;
    }
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").ok()?;
    let find = |name: &str| {
        kallsyms.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            (f.next().is_some() && f.next() == Some(name)).then_some(addr)
        })
    };
    let (start, end) = (find("_text")?, find("_etext")?);
    (start != 0 && end > start).then_some((start, end))
}

fn tmp_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".lbrprof-tmp");
    out.with_file_name(name)
}
