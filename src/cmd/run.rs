//! `lbrprof run`: boot a guest image in the VMM shim, or run a Linux program under the
//! shim's Linux personality (`--vm -- PROG ARGS`), to completion, without profiling. The exit status is the guest's: `(v << 1) | 1` for a write of v to the
//! isa-debug-exit port 0xf4, 0 for a clean power-off; 4 when the guest crashed (triple
//! fault, KVM internal error; the registers are printed), 124 when `--timeout` expired,
//! 2 for lbrprof's own errors (bad image, bad flags, no KVM).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use lbrprof_vmm::vm::{Guest, Outcome, Vm, VmConfig};
use lbrprof_vmm::{NoopHook, VcpuHook, builtin};

use crate::cmd::with_exit;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: the guest's own. A write of v to the isa-debug-exit port 0xf4 gives (v << 1) | 1;
a clean power-off (16-bit write of 0x2000 to port 0x604) gives 0; a guest crash (triple fault,
KVM internal error) gives 4 after printing the vCPU registers; --timeout gives 124; errors of
lbrprof itself (bad image, bad flags, no /dev/kvm) give 2. A Linux program (--vm -- PROG) exits
with its own status (128 + N when signal N killed it); the signals lbrprof receives reach it
(Ctrl-C every process of it), and one still running 1 s after SIGINT or SIGTERM is stopped.

Built-in guests take key=value arguments after --, e.g. `lbrprof run --vm builtin:sort -- n=1000
seed=2 timing`; every built-in accepts exit=N, rt.cpus (report the vCPUs that came up) and
rt.stats (report the cost of the guest's ring-0 boot and of a system call).")]
pub struct Args {
    /// The guest: an ELF64 or multiboot v1 image file, `builtin:NAME` for an image
    /// embedded in lbrprof (branchy, calls, sort, interp, msrprobe, lbrcheck), or a
    /// Linux x86-64 program. With no value (`--vm -- PROG ARGS`) the program after `--`
    /// runs in guest ring 3 with the shim as its kernel; a file given as IMAGE is run
    /// that way too when its ELF says it is a program (position-independent or with an
    /// interpreter), or with --vm-linux.
    #[arg(long, value_name = "IMAGE|builtin:NAME", num_args = 0..=1, default_missing_value = "")]
    pub vm: String,

    /// Treat the --vm file as a Linux program (its arguments follow `--`).
    #[arg(long, conflicts_with = "vm_kernel")]
    pub vm_linux: bool,

    /// Treat the --vm file as a bootable image (ELF64 or multiboot kernel).
    #[arg(long)]
    pub vm_kernel: bool,

    /// Guest RAM, with an optional K, M or G suffix (4M to 3G). For a Linux program it
    /// is the limit of its memory: an allocation past it fails with ENOMEM (reported).
    /// Default: 256M for an image; 3G for a Linux program, whose pages are host memory
    /// only once it touches them (`xz -9` alone reserves 674 MiB).
    #[arg(long, visible_alias = "vm-mem", value_name = "SIZE", value_parser = parse_size)]
    pub mem: Option<u64>,

    /// What a Linux program reads from outside that changes from run to run: `pinned`
    /// gives it a virtual clock (every clock starts at 2025-01-01T00:00:00Z, advances 1 µs
    /// per read and by each sleep, which returns at once; in exact mode RDTSC and RDTSCP
    /// count instructions from 1000 s at 1 GHz), process ids from 1000 and random
    /// bytes from a fixed stream (see --vm-seed), so that exact-mode counts repeat; `host`
    /// gives it the host's time, lbrprof's pid and the host's random bytes. Default:
    /// pinned in exact mode (--lbr-mode exact), host otherwise.
    #[arg(long, value_name = "pinned|host", value_enum)]
    pub vm_outside: Option<crate::cmd::linux_prog::Outside>,
    /// A Linux program's random bytes (getrandom, AT_RANDOM, /dev/urandom, /dev/random):
    /// `host` for the host's, or a number for a fixed stream from that seed, so that runs
    /// repeat exactly (RDRAND and RDSEED are then hidden from CPUID where KVM answers it,
    /// and in exact mode draw from the stream where it does not).
    /// Default: seed 0 when --vm-outside is pinned, the host's otherwise.
    #[arg(long, value_name = "SEED|host", value_parser = crate::cmd::linux_prog::parse_seed)]
    pub vm_seed: Option<lbrprof_vmm::linux::entropy::EntropySource>,

    /// Number of vCPUs, one host thread each. lbrprof's runtime starts every vCPU at
    /// the entry point with its index in RDI; multiboot images start the others with
    /// INIT/SIPI.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u32,

    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Where the guest's serial console goes: `stderr` (default), `stdio`/`stdout`, or a
    /// file.
    #[arg(long, default_value = "stderr", value_name = "FILE|stdio")]
    pub serial: String,

    /// Also write the built-in image to DIR/NAME (for symbolizers, e.g. addr2line).
    #[arg(long, value_name = "DIR")]
    pub write_image: Option<PathBuf>,

    /// Print VM statistics (set-up time, run time, exits, unknown I/O) to stderr.
    #[arg(long)]
    pub stats: bool,

    #[command(flatten)]
    pub lbr: crate::cmd::lbr_opts::LbrArgs,

    /// The guest's command line (after `--`), e.g. `n=1000 exit=3`.
    #[arg(last = true, value_name = "GUEST ARGS")]
    pub guest_args: Vec<String>,
}

/// Parse `256M`, `1G`, `4096K` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 256M, 1G or 4096K"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if secs.is_finite() && secs > 0.0 && secs < 1e9 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("'{s}' must be a positive number of seconds"))
    }
}

/// The image bytes, and the built-in's name when it is one.
fn load_image(
    spec: &str,
) -> anyhow::Result<(std::borrow::Cow<'static, [u8]>, Option<&'static str>)> {
    if let Some((name, bytes)) = builtin::resolve(spec)? {
        return Ok((bytes.into(), Some(name)));
    }
    let bytes = std::fs::read(spec).with_context(|| format!("cannot read guest image '{spec}'"))?;
    Ok((bytes.into(), None))
}

fn serial_sink(spec: &str) -> anyhow::Result<Box<dyn Write + Send>> {
    Ok(match spec {
        "stderr" => Box::new(std::io::stderr()),
        "stdio" | "stdout" | "-" => Box::new(std::io::stdout()),
        path => Box::new(
            File::create(Path::new(path))
                .with_context(|| format!("cannot create serial output file '{path}'"))?,
        ),
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use crate::cmd::linux_prog::{self, Force, VmTarget};
    let force = if args.vm_linux {
        Force::Linux
    } else if args.vm_kernel {
        Force::Kernel
    } else {
        Force::Auto
    };
    if let VmTarget::Program { path, argv } = linux_prog::target(&args.vm, &args.guest_args, force)?
    {
        return run_program(&args, &path, &argv);
    }
    if args.vm_seed.is_some() || args.vm_outside.is_some() {
        anyhow::bail!(
            "--vm-seed and --vm-outside apply to Linux programs (an image has no system calls \
             of ours)"
        );
    }
    let (image, builtin_name) = load_image(&args.vm)?;
    if let Some(dir) = &args.write_image {
        let name =
            builtin_name.ok_or_else(|| anyhow!("--write-image needs a builtin:NAME image"))?;
        let path = builtin::write_image(name, dir)
            .with_context(|| format!("cannot write the guest image to '{}'", dir.display()))?;
        eprintln!("lbrprof: wrote guest image {}", path.display());
    }
    let mut config = VmConfig::new(linux_prog::mem(args.mem, false), args.vcpus);
    config.cmdline = args.guest_args.join(" ");
    config.timeout = args.timeout;
    config.serial = serial_sink(&args.serial)?;
    args.lbr.check_guest_args(&args.guest_args)?;
    let lbr = args.lbr.setup(args.vcpus)?;
    let hooks = |index: u32| -> Box<dyn VcpuHook> {
        match &lbr {
            Some(setup) => setup.hook(index, None),
            None => Box::new(NoopHook),
        }
    };
    let report = Vm::run(config, &image, &hooks)
        .with_context(|| format!("cannot boot guest '{}'", args.vm))?;
    let _ = std::io::stdout().flush();
    if args.stats {
        eprintln!(
            "lbrprof: vm: {:?} image, set-up {:.2} ms, total {:.2} ms",
            report.kind,
            report.setup.as_secs_f64() * 1e3,
            report.elapsed.as_secs_f64() * 1e3,
        );
        print_vcpu_stats(&report);
        if let Some(setup) = &lbr {
            crate::cmd::lbr_opts::print_stats(setup);
        }
        for (port, n) in &report.unknown.ports {
            eprintln!("lbrprof: vm: unknown I/O port {port:#x}: {n} accesses");
        }
        for (page, n) in &report.unknown.mmio_pages {
            eprintln!("lbrprof: vm: unknown MMIO page {page:#x}: {n} accesses");
        }
    }
    guest_exit(&args.vm, &report.outcome, "--timeout", "")
}

/// `--stats`: each vCPU's time in KVM_RUN and its exits by reason.
fn print_vcpu_stats(report: &lbrprof_vmm::RunReport) {
    for v in &report.vcpus {
        let exits: Vec<String> = v.exits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        eprintln!(
            "lbrprof: vm: vCPU {}: {:.2} ms in KVM_RUN, {} exits ({})",
            v.vcpu,
            v.run_ns as f64 / 1e6,
            v.total_exits(),
            exits.join(", ")
        );
    }
}

/// `run --vm -- PROG ARGS`: a Linux program under the shim's personality.
fn run_program(args: &Args, path: &Path, argv: &[String]) -> anyhow::Result<ExitCode> {
    let mut program = crate::cmd::linux_prog::program(path, argv)?;
    let mem = crate::cmd::linux_prog::mem(args.mem, true);
    let mut config = VmConfig::new(mem, args.vcpus);
    config.timeout = args.timeout;
    let mut lbr = args.lbr.setup(args.vcpus)?;
    let exact = lbr
        .as_ref()
        .is_some_and(crate::cmd::lbr_opts::counts_exactly);
    let world = crate::cmd::linux_prog::outside(args.vm_outside, args.vm_seed, exact);
    world.apply(&mut config, &mut program);
    if let Some(setup) = lbr.as_mut() {
        setup.set_outside(world.interpreted());
    }
    let hooks = |index: u32| -> Box<dyn VcpuHook> {
        match &lbr {
            Some(setup) => setup.hook(index, None),
            None => Box::new(NoopHook),
        }
    };
    let _ = std::io::stdout().flush();
    let spec = path.display().to_string();
    // Signals to lbrprof reach the program (its --timeout stays a hard stop).
    let (report, stop_signal) =
        lbrprof_collector::vm_signals::run_guest(config, Guest::Linux(&program), &hooks, None)
            .with_context(|| format!("cannot run '{spec}' in the VM"))?;
    if let Some(linux) = &report.linux {
        crate::cmd::linux_prog::print_report(linux, mem);
        if args.stats {
            let n = linux.syscalls.max(1);
            eprintln!(
                "lbrprof: vm: {} system calls, {:.2} µs each in the shim (trap service), \
                 {} demand page faults{}, {} threads started, {} processes ({} execs), \
                 peak guest memory {:.1} MiB, total {:.2} ms",
                linux.syscalls,
                linux.trap_ns as f64 / 1e3 / n as f64,
                linux.demand_faults,
                if linux.demand_faults > 0 {
                    format!(
                        " ({:.2} µs each in the shim)",
                        linux.fault_ns as f64 / 1e3 / linux.demand_faults as f64
                    )
                } else {
                    String::new()
                },
                linux.threads,
                linux.processes,
                linux.execs,
                linux.peak_bytes as f64 / (1 << 20) as f64,
                report.elapsed.as_secs_f64() * 1e3,
            );
        }
    }
    if args.stats {
        print_vcpu_stats(&report);
        if let Some(setup) = &lbr {
            crate::cmd::lbr_opts::print_stats(setup);
        }
    }
    if let (Outcome::Stopped, Some(signal)) = (&report.outcome, stop_signal) {
        let message = stopped_by(&spec, signal, true);
        return Err(with_exit(anyhow!(message), 128 + signal as u8));
    }
    guest_exit(&spec, &report.outcome, "--timeout", "")
}

/// What to say of a guest that a signal to lbrprof stopped: a Linux program (`program`)
/// was sent it and did not end in time; an image is stopped at once.
pub fn stopped_by(spec: &str, signal: i32, program: bool) -> String {
    let name = lbrprof_vmm::linux::signal::name(signal).unwrap_or("a signal");
    if program {
        format!(
            "'{spec}' was sent {name} and did not end (nor after SIGTERM, or a second \
             signal): the VM was stopped"
        )
    } else {
        format!("guest '{spec}' stopped by {name}")
    }
}

/// The process exit for a guest's outcome, shared by `run` and `record --vm`: the guest's
/// own status when it exited, else an error naming the guest (the registers printed first
/// for a crash) with that status attached. `limit` names the flag that bounds the run;
/// `suffix` is appended to error messages (e.g. "; the recording is kept").
pub fn guest_exit(
    spec: &str,
    outcome: &Outcome,
    limit: &str,
    suffix: &str,
) -> anyhow::Result<ExitCode> {
    let code = outcome.exit_code();
    let message = match outcome {
        Outcome::Exited(_) | Outcome::PowerOff => return Ok(ExitCode::from(code)),
        Outcome::TimedOut(t) => format!(
            "guest '{spec}' did not finish within {:.3} s ({limit}); stopped{suffix}",
            t.as_secs_f64()
        ),
        Outcome::Stopped => format!("guest '{spec}' stopped by a signal{suffix}"),
        Outcome::Signaled { signal, crash } => {
            if !crash.registers.is_empty() {
                eprintln!("lbrprof: guest registers:\n{}", crash.registers);
            }
            format!(
                "'{spec}' was killed by signal {signal}: {}{suffix}",
                crash.reason
            )
        }
        Outcome::Crashed(c) => {
            if !c.registers.is_empty() {
                eprintln!("lbrprof: guest vCPU {} registers:\n{}", c.vcpu, c.registers);
            }
            format!(
                "guest '{spec}' crashed on vCPU {}: {}{suffix}",
                c.vcpu, c.reason
            )
        }
    };
    Err(with_exit(anyhow!(message), code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096K"), Ok(4 << 20));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("nan").is_err());
    }
}
