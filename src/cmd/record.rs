//! `lbrprof record`: record a host command, a running process/thread, or a guest
//! (`--vm`, in `record_vm`, which the command line dispatches to).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lbrprof_collector::host::{self, BranchRequest, EventRequest, HostFacts, SamplingRequest};
use lbrprof_collector::record::{RecordError, RecordOptions, RecordTarget, Recorder};
use lbrprof_data::recording::Replace;

use crate::cmd::lbr_opts::{LbrChoice, LbrModeChoice, SnapshotChoice, TuningArgs};
use crate::cmd::with_exit;

/// Record a host command (`-- CMD ARGS`, with all its threads and children), a process
/// (`-p`, all its threads), a thread (`-t`), or a guest in lbrprof's VMM shim (`--vm`).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Sampling: `--event auto` uses hardware cycles (with LBR branch stacks where the PMU has \
them) and falls back to the cpu-clock software event where there is no hardware PMU; the \
choice and its reason are printed once and stored in the recording. Ctrl-C or SIGTERM \
stops the recording cleanly and finalizes the file.

With --vm IMAGE the guest runs in this process while every thread of the shim (the vCPU \
threads included, followed from their start) is sampled; the recording also holds the \
guest's LBR snapshots, its image (path and build-id; built-in images are written next to \
the recording as FILE.guest/NAME), and the shim's accounting (exits by reason, time in \
KVM_RUN, time tracing and snapshotting). Guest snapshots are taken at --lbr-freq (default \
-F) per vCPU, by the shim or by the guest's LBR agent (--lbr-snapshots; `info` and `report` \
count them by source, and agent snapshots the guest had to drop as losses). A Linux program \
(--vm -- PROG) gets the signals lbrprof receives (Ctrl-C reaches all its processes) and is \
stopped as a host command is: SIGTERM after 0.5 s, the VM stopped after 1 s; --duration sends \
it SIGTERM. A bootable image is stopped at once by Ctrl-C, SIGTERM and --duration (exit status \
124 for --duration; the recording is kept).

Exit status: the recorded command's (128 + N when signal N killed it); 0 for -p/-t; 127 \
when the command is not found, 126 when it cannot be executed; with --vm the guest's (as \
`lbrprof run`: 4 for a guest crash; 130 when stopped by Ctrl-C, 143 by SIGTERM); 2 for \
other errors.")]
pub struct Args {
    /// Output file. It is written as `NAME.<pid>.partial` and renamed into place when the
    /// recording is complete; a recording already there is kept as `NAME.old`.
    #[arg(short, long, default_value = "lbrprof.data")]
    pub output: PathBuf,
    /// Replace an existing output file instead of keeping it as `NAME.old`.
    #[arg(short, long)]
    pub force: bool,
    /// Sampling frequency in Hz.
    #[arg(short = 'F', long, default_value_t = 999)]
    pub freq: u64,
    /// Sampling event: `auto` picks hardware cycles where the PMU has them, else
    /// cpu-clock; or events by perf's name, comma-separated or -e repeated (each sample
    /// keeps its event; `report` shows one section per event): a software event
    /// (cpu-clock, task-clock, page-faults, minor-faults, major-faults,
    /// context-switches, cpu-migrations, alignment-faults, emulation-faults), a hardware
    /// event (cycles, instructions, branches, branch-misses, cache-references,
    /// cache-misses, bus-cycles, ref-cycles; where there is a hardware PMU), or a
    /// tracepoint SUBSYSTEM:NAME from /sys/kernel/tracing/events (sampled on every hit
    /// unless -c says otherwise, as perf).
    #[arg(short = 'e', long, default_value = "auto", value_name = "EVENT[,EVENT...]",
          value_delimiter = ',', action = clap::ArgAction::Append)]
    pub event: Vec<String>,
    /// Sample every PERIOD events instead of -F times a second (perf's -c).
    #[arg(short = 'c', long = "count", value_name = "PERIOD",
          value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "freq")]
    pub period: Option<u64>,
    /// Sample branch stacks (LBR): `auto` where the host PMU supports them.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub branches: Toggle,
    /// How call chains are collected: `fp` (frame pointers, walked by the kernel), `lbr`
    /// (LBR call-stack mode), or `dwarf[,SIZE]`: each sample copies the user registers and
    /// the top SIZE bytes of the user stack (default 8192, at most 65528, a multiple of 8),
    /// which lbrprof unwinds while recording with the binaries' CFI (.eh_frame,
    /// .debug_frame), for programs built without frame pointers; only the call chains
    /// are stored.
    #[arg(long, value_name = "fp|lbr|dwarf[,SIZE]", default_value = "fp",
          value_parser = parse_call_graph)]
    pub call_graph: CallGraph,
    /// Collect call chains by frame pointers: perf's -g, the same as --call-graph fp
    /// (lbrprof collects them by default).
    #[arg(short = 'g', conflicts_with = "call_graph")]
    pub frame_pointer_graph: bool,
    /// Attach to a running process.
    #[arg(short, long, conflicts_with_all = ["tid", "command", "vm"])]
    pub pid: Option<u32>,
    /// Record every task on every CPU (system-wide, as perf's -a): while CMD runs when one
    /// is given, else until Ctrl-C or --duration. Needs root or perf_event_paranoid <= 0.
    #[arg(short = 'a', long = "all-cpus", conflicts_with_all = ["pid", "tid", "vm", "repeat"])]
    pub all_cpus: bool,
    /// Record every task on these CPUs only (system-wide, as perf's -C), e.g. `0,2-3`.
    #[arg(short = 'C', long = "cpu", value_name = "LIST", value_parser = parse_cpus,
          conflicts_with_all = ["pid", "tid", "vm", "repeat"])]
    pub cpu: Option<CpuList>,
    /// Attach to a running thread.
    #[arg(short, long, conflicts_with_all = ["pid", "command", "vm"])]
    pub tid: Option<u32>,
    /// Ring buffer size per CPU in pages (a power of two), as perf's --mmap-pages.
    #[arg(short = 'm', long, value_name = "PAGES", default_value_t = 128)]
    pub mmap_pages: u32,
    /// Stop after this many seconds (a recorded command is then sent SIGTERM); default:
    /// until the target exits or Ctrl-C.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Run the command N times, one after the other, into one recording (each run kept
    /// apart), so that `lbrprof diff` can measure run-to-run variation. Repeating stops at
    /// the first run that fails; --duration applies to each run.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000),
          conflicts_with_all = ["pid", "tid"])]
    pub repeat: u32,
    #[command(flatten)]
    pub guest: VmArgs,
    /// The command to run and record (with --vm: the guest's arguments).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `record --vm`: the guest and its LBR.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Guest (record --vm)")]
pub struct VmArgs {
    /// Record a guest in lbrprof's VMM shim instead of a host command: an ELF64 or
    /// multiboot image file, or `builtin:NAME` (branchy, calls, sort, interp, ...). The
    /// arguments after `--` are the guest's. Exit status: the guest's (see `lbrprof run`).
    /// With no value (`--vm -- PROG ARGS`), or a FILE that is a Linux program by its ELF
    /// (or with --vm-linux): run an x86-64 Linux program in guest ring 3 with the shim as
    /// its kernel (see `lbrprof run`).
    #[arg(long, value_name = "IMAGE|builtin:NAME", num_args = 0..=1, default_missing_value = "")]
    pub vm: Option<String>,
    /// Treat the --vm file as a Linux program (its arguments follow `--`).
    #[arg(long, requires = "vm", conflicts_with = "vm_kernel")]
    pub vm_linux: bool,
    /// Treat the --vm file as a bootable image (ELF64 or multiboot kernel).
    #[arg(long, requires = "vm")]
    pub vm_kernel: bool,
    /// The guest's LBR: `emulated` (the shim implements the LBR MSRs and traces the
    /// guest's branches), `hw` (KVM passes the host's LBR through), `auto` (hardware
    /// where the host has it, else emulated).
    #[arg(long, value_enum, default_value_t = LbrChoice::Auto, requires = "vm")]
    pub lbr: LbrChoice,
    /// How the emulated LBR observes branches: `sampled` lets the guest run free and,
    /// at random sample points (about --lbr-freq per second of the guest running its own
    /// code), traces a window of its next branches into one snapshot credited to the
    /// sample point; `exact` traces every instruction (exact counts, one snapshot every
    /// 10,000,000 / --lbr-freq instructions).
    #[arg(long, value_enum, default_value_t = LbrModeChoice::Sampled, requires = "vm")]
    pub lbr_mode: LbrModeChoice,
    /// Who takes the guest's LBR snapshots: `shim` (the emulated LBR's shim freezes and
    /// reads its own model; any guest), `agent` (the guest's own PMI handler reads its
    /// frozen LBR into a shared-memory ring per vCPU that the shim drains: lbrprof's guest
    /// runtime, booted with `rt.agent=PERIOD` added to the guest arguments; the only way
    /// with the hardware LBR), or `auto` (agent with the hardware LBR, else shim).
    #[arg(long, value_enum, default_value_t = SnapshotChoice::Auto, requires = "vm")]
    pub lbr_snapshots: SnapshotChoice,
    /// Guest snapshots per second (default: -F). With the emulated LBR each snapshot
    /// costs the tracing of its last branches (a few hundred VM exits), so a rate below
    /// the host's sampling rate keeps the guest closer to full speed.
    #[arg(long, value_name = "HZ", requires = "vm")]
    pub lbr_freq: Option<u64>,
    /// The emulated LBR's overhead budget in sampled mode: the percent of wall time its
    /// tracing and snapshots may take. When a snapshot's tracing window costs more, the
    /// interval to the next one is stretched (as perf throttles sampling), so the effective
    /// snapshot rate may fall below --lbr-freq; both are reported. 0 or 100 disables the
    /// budget; exact mode is never throttled.
    #[arg(long, default_value_t = 10, value_name = "PCT",
          value_parser = clap::value_parser!(u32).range(0..=100), requires = "vm")]
    pub lbr_overhead: u32,
    /// LBR entries per snapshot (8, 16 or 32).
    #[arg(long, default_value_t = 32, value_name = "N", requires = "vm")]
    pub lbr_depth: u32,
    /// Number of vCPUs (one host thread each).
    #[arg(long, default_value_t = 1, value_name = "N", requires = "vm")]
    pub vcpus: u32,
    /// Guest RAM, with an optional K, M or G suffix (4M to 3G); for a Linux program, the
    /// limit of its memory. Default: 256M for an image; 3G for a Linux program, whose
    /// pages are host memory only once it touches them.
    #[arg(long, visible_alias = "vm-mem", value_name = "SIZE",
          value_parser = crate::cmd::run::parse_size, requires = "vm")]
    pub mem: Option<u64>,
    /// What a Linux program reads from outside that changes from run to run: `pinned`
    /// gives it a virtual clock (every clock starts at 2025-01-01T00:00:00Z, advances 1 µs
    /// per read and by each sleep, which returns at once; in exact mode RDTSC and RDTSCP
    /// count instructions from 1000 s at 1 GHz), process ids from 1000 and random
    /// bytes from a fixed stream (see --vm-seed), so that exact-mode counts repeat; `host`
    /// gives it the host's time, lbrprof's pid and the host's random bytes. Default:
    /// pinned in exact mode (--lbr-mode exact), host otherwise.
    #[arg(long, value_name = "pinned|host", value_enum, requires = "vm")]
    pub vm_outside: Option<crate::cmd::linux_prog::Outside>,
    /// A Linux program's random bytes (getrandom, AT_RANDOM, /dev/urandom, /dev/random):
    /// `host` for the host's, or a number for a fixed stream from that seed, so that runs
    /// repeat exactly (RDRAND and RDSEED are then hidden from CPUID where KVM answers it,
    /// and in exact mode draw from the stream where it does not).
    /// Default: seed 0 when --vm-outside is pinned, the host's otherwise.
    #[arg(long, value_name = "SEED|host", value_parser = crate::cmd::linux_prog::parse_seed,
          requires = "vm")]
    pub vm_seed: Option<lbrprof_vmm::linux::entropy::EntropySource>,
    /// Where the guest's serial console goes: `stderr` (default), `stdout`, or a file.
    #[arg(
        long,
        default_value = "stderr",
        value_name = "FILE|stdout",
        requires = "vm"
    )]
    pub serial: String,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// `-C`: CPU numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<u32>);

/// A kernel CPU list (`0,2-3`).
fn parse_cpus(s: &str) -> Result<CpuList, String> {
    lbrprof_collector::sampler::parse_cpu_list(s)
        .map(|mut cpus| {
            cpus.sort_unstable();
            cpus.dedup();
            CpuList(cpus)
        })
        .ok_or_else(|| format!("'{s}' is not a CPU list (e.g. 0,2-3)"))
}

/// `--event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventChoice {
    Auto,
    Event(host::EventKind),
}

/// `auto`, or one event by perf's name ([`host::EventKind::parse`]).
pub fn parse_event(s: &str) -> Result<EventChoice, String> {
    if s == "auto" {
        return Ok(EventChoice::Auto);
    }
    let roots: Vec<&std::path::Path> = host::TRACEFS_ROOTS
        .iter()
        .map(std::path::Path::new)
        .collect();
    host::EventKind::parse(s, &roots)
        .map(EventChoice::Event)
        .map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallGraph {
    Fp,
    Lbr,
    /// The stack copy's size in bytes.
    Dwarf(u32),
}

/// perf's default `--call-graph dwarf` stack copy.
pub const DEFAULT_DWARF_STACK: u32 = 8192;

/// `fp`, `lbr`, `dwarf` or `dwarf,SIZE` (perf's syntax; SIZE a multiple of 8 up to the
/// kernel's limit of 65528, with an optional K suffix).
pub fn parse_call_graph(s: &str) -> Result<CallGraph, String> {
    let (mode, size) = match s.split_once(',') {
        Some((m, size)) => (m, Some(size)),
        None => (s, None),
    };
    match (mode, size) {
        ("fp", None) => Ok(CallGraph::Fp),
        ("lbr", None) => Ok(CallGraph::Lbr),
        ("dwarf", None) => Ok(CallGraph::Dwarf(DEFAULT_DWARF_STACK)),
        ("dwarf", Some(size)) => {
            let (digits, scale) = match size.strip_suffix(['k', 'K']) {
                Some(d) => (d, 1024),
                None => (size, 1),
            };
            let bytes = digits
                .parse::<u32>()
                .ok()
                .and_then(|n| n.checked_mul(scale))
                .ok_or_else(|| format!("bad stack size {size:?}: give bytes, e.g. dwarf,16384"))?;
            // The kernel takes a u16-sized, 8-byte aligned dump (perf_event_open(2)).
            if bytes == 0 || bytes % 8 != 0 || bytes > 65528 {
                return Err(format!(
                    "the stack size must be a multiple of 8 between 8 and 65528, not {bytes}"
                ));
            }
            Ok(CallGraph::Dwarf(bytes))
        }
        ("fp" | "lbr", Some(_)) => Err(format!("{mode} takes no size (only dwarf,SIZE does)")),
        _ => Err(format!(
            "unknown call graph mode {mode:?}: use fp, lbr or dwarf[,SIZE]"
        )),
    }
}

impl Args {
    /// What happens to a recording already at the output path (`--force`).
    pub fn replace(&self) -> Replace {
        if self.force {
            Replace::Overwrite
        } else {
            Replace::KeepOld
        }
    }

    /// The events of `-e`, in order: `auto` only alone, each event once. Checked here
    /// rather than by clap, so that a bad name is a one-line error naming it.
    fn events(&self) -> anyhow::Result<Vec<EventChoice>> {
        let mut events: Vec<EventChoice> = Vec::new();
        for name in &self.event {
            let choice = parse_event(name).map_err(anyhow::Error::msg)?;
            if choice == EventChoice::Auto && self.event.len() > 1 {
                anyhow::bail!("-e auto cannot be combined with other events");
            }
            if events.contains(&choice) {
                anyhow::bail!("event '{name}' is given twice in -e");
            }
            events.push(choice);
        }
        Ok(events)
    }

    /// The host sampling request.
    pub fn sampling_request(&self) -> anyhow::Result<SamplingRequest> {
        let events = self.events()?;
        let more_events = events
            .iter()
            .skip(1)
            .filter_map(|e| match e {
                EventChoice::Event(kind) => Some(kind.clone()),
                EventChoice::Auto => None,
            })
            .collect();
        Ok(SamplingRequest {
            event: match events.first().unwrap_or(&EventChoice::Auto) {
                EventChoice::Auto => EventRequest::Auto,
                EventChoice::Event(host::EventKind::Cycles) => EventRequest::Cycles,
                EventChoice::Event(host::EventKind::CpuClock) => EventRequest::CpuClock,
                EventChoice::Event(e) => EventRequest::Event(e.clone()),
            },
            more_events,
            branches: match self.branches {
                Toggle::Auto => BranchRequest::Auto,
                Toggle::On => BranchRequest::On,
                Toggle::Off => BranchRequest::Off,
            },
            call_graph: match self.call_graph {
                CallGraph::Fp => host::CallGraph::Fp,
                CallGraph::Lbr => host::CallGraph::Lbr,
                CallGraph::Dwarf(stack_size) => host::CallGraph::Dwarf { stack_size },
            },
        })
    }

    /// The plain options the collector takes.
    fn into_options(self) -> anyhow::Result<RecordOptions> {
        let request = self.sampling_request()?;
        let replace = self.replace();
        let system = self.all_cpus || self.cpu.is_some();
        let target = match (self.pid, self.tid) {
            _ if system => RecordTarget::System {
                cpus: self.cpu.map(|c| c.0),
                command: self.command,
            },
            (Some(pid), _) => RecordTarget::Pid(pid),
            (_, Some(tid)) => RecordTarget::Tid(tid),
            (None, None) if self.command.is_empty() => {
                anyhow::bail!(
                    "nothing to record: give `-- CMD ARGS`, `-p PID`, `-t TID`, `-a` or `-C LIST`"
                )
            }
            (None, None) => RecordTarget::Command(self.command),
        };
        let duration = match self.duration {
            None => None,
            Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
                Some(Duration::from_secs_f64(secs))
            }
            Some(secs) => {
                anyhow::bail!("--duration must be a positive number of seconds, not {secs}")
            }
        };
        // perf samples tracepoints on every hit unless told otherwise (beside other
        // events, the sampler gives the tracepoints alone a period of 1).
        let tracepoint = |e: &host::EventKind| matches!(e, host::EventKind::Tracepoint { .. });
        let all_tracepoints = matches!(&request.event, EventRequest::Event(e) if tracepoint(e))
            && request.more_events.iter().all(tracepoint);
        let period = match self.period {
            None if all_tracepoints => Some(1),
            period => period,
        };
        Ok(RecordOptions {
            output: self.output,
            frequency: self.freq,
            period,
            request,
            target,
            duration,
            mmap_pages: self.mmap_pages,
            replace,
            repeat: self.repeat,
        })
    }
}

/// Record; exit with the command's status (128 + signal when it was killed), 0 for
/// `-p`/`-t`, 127/126 when the command cannot be run, 2 for other errors.
/// (With `--vm`, the command line dispatches to `record_vm` instead.)
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    debug_assert!(
        args.guest.vm.is_none(),
        "record --vm goes to record_vm::run"
    );
    let opts = args.into_options()?;
    let output = opts.output.clone();
    let opts_period = opts.period;
    let facts = HostFacts::probe();
    let recorder = Recorder::prepare(opts, &facts).map_err(record_error)?;
    for warning in recorder.warnings() {
        eprintln!("lbrprof: warning: {warning}");
    }
    eprintln!("lbrprof: sampling with {}", recorder.choice().reason);
    let outcome = recorder.run().map_err(record_error)?;
    let s = &outcome.summary;
    let event = outcome.choice.event_names();
    let period = match opts_period {
        Some(p) => format!(", one sample every {p} events"),
        None => String::new(),
    };
    let why = if outcome.choice.event == host::EventKind::CpuClock && !facts.pmu_present() {
        " (no hardware PMU)"
    } else {
        ""
    };
    let runs = match s.runs.len() {
        0 | 1 => String::new(),
        n => format!(" in {n} runs"),
    };
    let event = match s.event_samples.as_slice() {
        [] => format!("event {event}"),
        counts => {
            let each: Vec<String> = outcome
                .choice
                .events()
                .iter()
                .zip(counts)
                .map(|(e, n)| format!("{n} {}", e.name()))
                .collect();
            format!("events {event} ({})", each.join(", "))
        }
    };
    eprintln!(
        "lbrprof: {} samples{runs}, {} lost, {} throttled, {event}{why}{period}, written to {}",
        s.samples,
        s.lost,
        s.throttled,
        output.display()
    );
    Ok(match outcome.exit {
        Some(exit) => ExitCode::from(u8::try_from(exit.shell_code()).unwrap_or(255)),
        None => ExitCode::SUCCESS,
    })
}

pub fn record_error(err: RecordError) -> anyhow::Error {
    match err.exit_code() {
        Some(code) => with_exit(err.into(), code),
        None => err.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_event_names_parse() {
        assert_eq!(parse_cpus("0,2-3,2"), Ok(CpuList(vec![0, 2, 3])));
        assert!(parse_cpus("3-1").is_err() && parse_cpus("x").is_err());
        assert_eq!(parse_event("auto"), Ok(EventChoice::Auto));
        assert_eq!(
            parse_event("cpu-clock"),
            Ok(EventChoice::Event(host::EventKind::CpuClock))
        );
        assert!(parse_event("cpu-clock,page-faults").is_err());
        assert!(parse_event("no-such-event").is_err());
    }

    #[test]
    fn call_graph_modes_parse_as_perf_writes_them() {
        assert_eq!(parse_call_graph("fp"), Ok(CallGraph::Fp));
        assert_eq!(parse_call_graph("lbr"), Ok(CallGraph::Lbr));
        assert_eq!(parse_call_graph("dwarf"), Ok(CallGraph::Dwarf(8192)));
        assert_eq!(parse_call_graph("dwarf,16384"), Ok(CallGraph::Dwarf(16384)));
        assert_eq!(parse_call_graph("dwarf,4k"), Ok(CallGraph::Dwarf(4096)));
        assert_eq!(parse_call_graph("dwarf,65528"), Ok(CallGraph::Dwarf(65528)));
        for bad in [
            "dwarf,65536",
            "dwarf,100",
            "dwarf,0",
            "dwarf,x",
            "fp,8",
            "frames",
            "",
        ] {
            assert!(parse_call_graph(bad).is_err(), "{bad} accepted");
        }
    }
}
