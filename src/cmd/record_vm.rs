//! `lbrprof record --vm IMAGE`: the guest in the VMM shim, sampled from the host, with its
//! LBR snapshots (the collector's `vm` module does the recording; this is the wiring:
//! flags → image, VM configuration and guest LBR).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use lbrprof_collector::host::{self, HostFacts};
use lbrprof_collector::vm::{GuestImage, GuestLbr, SnapshotSource, VmRecordOptions, record_vm};
use lbrprof_vmm::builtin;
use lbrprof_vmm::vm::VmConfig;

use crate::cmd::lbr_opts::{self, LbrRequestArgs};
use crate::cmd::record::{Args, record_error};

/// Where a built-in image is written for the recording: `FILE.guest/NAME` beside it.
pub fn image_dir(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".guest");
    output.with_file_name(name)
}

/// The image bytes and the file that holds them (for symbolization).
fn guest_image(spec: &str, output: &Path) -> anyhow::Result<GuestImage> {
    if let Some(name) = spec.strip_prefix("builtin:") {
        let bytes = builtin::image(name).ok_or_else(|| {
            anyhow!(
                "no built-in guest image '{name}' (available: {})",
                builtin::names().collect::<Vec<_>>().join(", ")
            )
        })?;
        let dir = image_dir(output);
        let path = builtin::write_image(name, &dir)
            .with_context(|| format!("cannot write the guest image to {}", dir.display()))?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        return Ok(GuestImage {
            spec: spec.to_owned(),
            bytes: bytes.to_vec(),
            path,
            program: None,
        });
    }
    let bytes = std::fs::read(spec).with_context(|| format!("cannot read guest image '{spec}'"))?;
    let path = std::fs::canonicalize(spec).unwrap_or_else(|_| PathBuf::from(spec));
    Ok(GuestImage {
        spec: spec.to_owned(),
        bytes,
        path,
        program: None,
    })
}

fn serial_sink(spec: &str) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    Ok(match spec {
        "stderr" => Box::new(std::io::stderr()),
        "stdio" | "stdout" | "-" => Box::new(std::io::stdout()),
        path => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create serial output file '{path}'"))?,
        ),
    })
}

/// The guest's command line: its arguments, plus `rt.agent=PERIOD` when the guest's agent
/// takes the snapshots (unless the arguments already start it with a period of their own).
/// Arguments that start the agent while the shim drives the PMU are refused: the shim
/// would take the agent's PMIs for its own and the agent would never see one.
fn guest_cmdline(args: &[String], source: SnapshotSource) -> anyhow::Result<String> {
    if source == SnapshotSource::Shim && args.iter().any(|a| a.starts_with("rt.agent=")) {
        anyhow::bail!(
            "the guest arguments start the guest's LBR agent (rt.agent=) but the shim takes \
             the snapshots; use --lbr-snapshots agent"
        );
    }
    let mut words = args.to_vec();
    if let SnapshotSource::Agent { period } = source
        && !args.iter().any(|a| a.starts_with("rt.agent="))
    {
        words.push(format!("rt.agent={period}"));
    }
    Ok(words.join(" "))
}

/// `record` with `--vm`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.repeat > 1 {
        anyhow::bail!(
            "--repeat is for host commands; exact-mode guest recordings \
             (--lbr-mode exact) need no repeats, they count the same every run"
        );
    }
    if args.event.len() > 1 {
        anyhow::bail!("record --vm samples one event: give -e once");
    }
    let request = args.sampling_request()?;
    let spec = args.guest.vm.clone().unwrap_or_default();
    if args.freq == 0 || args.guest.lbr_freq == Some(0) {
        anyhow::bail!("-F and --lbr-freq must be at least 1 Hz");
    }
    if args.period.is_some() {
        anyhow::bail!("-c is not supported with --vm: its host and guest sample at -F");
    }
    let mut lbr = lbr_opts::record_setup(&LbrRequestArgs {
        lbr: args.guest.lbr,
        mode: args.guest.lbr_mode,
        depth: args.guest.lbr_depth,
        frequency: args.guest.lbr_freq.unwrap_or(args.freq),
        vcpus: args.guest.vcpus,
        overhead_percent: args.guest.lbr_overhead,
        snapshots: args.guest.lbr_snapshots,
        tuning: args.guest.tuning,
    })?;
    // What the VM would refuse, refused before anything is written.
    if let Some(mem) = args.guest.mem {
        lbrprof_vmm::vm::check_mem_size(mem).context("bad --mem")?;
    }
    let max = lbrprof_vmm::boot::MAX_VCPUS;
    if args.guest.vcpus == 0 || args.guest.vcpus > max {
        anyhow::bail!("--vcpus must be 1 to {max}, not {}", args.guest.vcpus);
    }
    use crate::cmd::linux_prog::{self, Force, VmTarget};
    let force = if args.guest.vm_linux {
        Force::Linux
    } else if args.guest.vm_kernel {
        Force::Kernel
    } else {
        Force::Auto
    };
    let (spec, cmdline, mut image) = match linux_prog::target(&spec, &args.command, force)? {
        VmTarget::Program { path, argv } => {
            let program = linux_prog::program(&path, &argv)?;
            let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let image = GuestImage {
                spec: path.display().to_string(),
                bytes: Vec::new(),
                path: canonical,
                program: Some(program),
            };
            (path.display().to_string(), String::new(), image)
        }
        VmTarget::Image => {
            let cmdline = guest_cmdline(&args.command, lbr.snapshot_source())?;
            (spec.clone(), cmdline, guest_image(&spec, &args.output)?)
        }
    };
    let image_is_program = image.program.is_some();
    let mut vm = VmConfig::new(
        linux_prog::mem(args.guest.mem, image_is_program),
        args.guest.vcpus,
    );
    if let Some(program) = image.program.as_mut() {
        let exact = lbr.counts_exactly();
        let world = linux_prog::outside(args.guest.vm_outside, args.guest.vm_seed, exact);
        world.apply(&mut vm, program);
        lbr.set_outside(world.interpreted());
    } else if args.guest.vm_seed.is_some() || args.guest.vm_outside.is_some() {
        anyhow::bail!(
            "--vm-seed and --vm-outside apply to Linux programs (an image has no system calls \
             of ours)"
        );
    }
    vm.cmdline = cmdline;
    let duration = match args.duration {
        None => None,
        Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
            Some(std::time::Duration::from_secs_f64(secs))
        }
        Some(secs) => anyhow::bail!("--duration must be a positive number of seconds, not {secs}"),
    };
    vm.serial = serial_sink(&args.guest.serial)?;
    let opts = VmRecordOptions {
        output: args.output.clone(),
        frequency: args.freq,
        request,
        mmap_pages: args.mmap_pages,
        image,
        vm,
        replace: args.replace(),
        duration,
    };
    let facts = HostFacts::probe();
    eprintln!("lbrprof: guest LBR: {}", lbr.describe());
    let outcome = record_vm(opts, &facts, lbr.as_ref())
        .map_err(record_error)
        .with_context(|| format!("cannot record guest '{spec}'"))?;
    let s = &outcome.summary;
    let event = outcome.choice.event.name();
    let why = if outcome.choice.event == host::EventKind::CpuClock && !facts.pmu_present() {
        " (no hardware PMU)"
    } else {
        ""
    };
    let agent_lost: u64 = outcome.run.agent_lost.values().sum();
    eprintln!(
        "lbrprof: {} host samples ({event}{why}), {} guest snapshots ({} lost), {} vCPU \
         threads, {:.2} s, written to {}",
        s.samples,
        outcome.run.snapshots,
        outcome.run.lost_snapshots + agent_lost,
        outcome.run.vcpu_threads.len(),
        outcome.run.elapsed.as_secs_f64(),
        outcome.output.display()
    );
    if let Some(rate) = &outcome.run.rate {
        eprintln!("lbrprof: {}", rate.describe());
    }
    for warning in &outcome.run.warnings {
        eprintln!("lbrprof: warning: {warning}");
    }
    if matches!(outcome.outcome, lbrprof_vmm::vm::Outcome::Stopped) {
        // A requested stop is no error: the host path's statuses (130 SIGINT, 143 SIGTERM).
        let signal = outcome.run.stop_signal.unwrap_or(libc::SIGINT);
        eprintln!(
            "lbrprof: {}; the recording is kept",
            crate::cmd::run::stopped_by(&spec, signal, image_is_program)
        );
        return Ok(ExitCode::from(128 + signal as u8));
    }
    crate::cmd::run::guest_exit(
        &spec,
        &outcome.outcome,
        "--duration",
        "; the recording is kept",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_started_through_the_guest_arguments() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let agent = SnapshotSource::Agent { period: 2000 };
        let line = |v: &[&str], source| guest_cmdline(&args(v), source).map_err(|e| e.to_string());
        assert_eq!(
            line(&["n=5", "rt.smp"], agent),
            Ok("n=5 rt.smp rt.agent=2000".into())
        );
        assert_eq!(line(&[], agent), Ok("rt.agent=2000".into()));
        // The user's own period wins.
        assert_eq!(line(&["rt.agent=7"], agent), Ok("rt.agent=7".into()));
        assert_eq!(line(&["n=5"], SnapshotSource::Shim), Ok("n=5".into()));
        let err = line(&["rt.agent=7"], SnapshotSource::Shim).unwrap_err();
        assert!(err.contains("use --lbr-snapshots agent"), "{err}");
    }

    #[test]
    fn builtin_images_go_beside_the_recording() {
        assert_eq!(
            image_dir(Path::new("out/x.data")),
            PathBuf::from("out/x.data.guest")
        );
        assert_eq!(
            image_dir(Path::new("lbrprof.data")),
            PathBuf::from("lbrprof.data.guest")
        );
    }
}
