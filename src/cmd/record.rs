//! `lbrprof record`: record a host command, a running process/thread, or a guest.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lbrprof_collector::host::{self, BranchRequest, EventRequest, HostFacts, SamplingRequest};
use lbrprof_collector::record::{RecordError, RecordOptions, RecordTarget, Recorder};

use crate::cmd::with_exit;

/// Record a host command (`-- CMD ARGS`, with all its threads and children), a process
/// (`-p`, all its threads) or a thread (`-t`).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Sampling: `--event auto` uses hardware cycles (with LBR branch stacks where the PMU has \
them) and falls back to the cpu-clock software event where there is no hardware PMU; the \
choice and its reason are printed once and stored in the recording. Ctrl-C or SIGTERM \
stops the recording cleanly and finalizes the file.

Exit status: the recorded command's (128 + N when signal N killed it); 0 for -p/-t; 127 \
when the command is not found, 126 when it cannot be executed; 2 for other errors.")]
pub struct Args {
    /// Output file.
    #[arg(short, long, default_value = "lbrprof.data")]
    pub output: PathBuf,
    /// Sampling frequency in Hz.
    #[arg(short = 'F', long, default_value_t = 999)]
    pub freq: u64,
    /// Sampling event: `auto` picks hardware cycles where the PMU has them, else cpu-clock.
    #[arg(long, value_enum, default_value_t = EventChoice::Auto)]
    pub event: EventChoice,
    /// Sample branch stacks (LBR): `auto` where the host PMU supports them.
    #[arg(long, value_enum, default_value_t = Toggle::Auto)]
    pub branches: Toggle,
    /// How call chains are collected.
    #[arg(long, value_enum, default_value_t = CallGraph::Fp)]
    pub call_graph: CallGraph,
    /// Attach to a running process.
    #[arg(short, long, conflicts_with_all = ["tid", "command"])]
    pub pid: Option<u32>,
    /// Attach to a running thread.
    #[arg(short, long, conflicts_with_all = ["pid", "command"])]
    pub tid: Option<u32>,
    /// Ring buffer size per CPU in pages (a power of two), as perf's --mmap-pages.
    #[arg(short = 'm', long, value_name = "PAGES", default_value_t = 128)]
    pub mmap_pages: u32,
    /// Stop after this many seconds (a recorded command is then sent SIGTERM); default:
    /// until the target exits or Ctrl-C.
    #[arg(long)]
    pub duration: Option<f64>,
    /// The command to run and record.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventChoice {
    Auto,
    Cycles,
    CpuClock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CallGraph {
    Fp,
    Lbr,
}

impl Args {
    /// The plain options the collector takes.
    fn into_options(self) -> anyhow::Result<RecordOptions> {
        let target = match (self.pid, self.tid) {
            (Some(pid), _) => RecordTarget::Pid(pid),
            (_, Some(tid)) => RecordTarget::Tid(tid),
            (None, None) if self.command.is_empty() => {
                anyhow::bail!("nothing to record: give `-- CMD ARGS`, `-p PID` or `-t TID`")
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
        Ok(RecordOptions {
            output: self.output,
            frequency: self.freq,
            request: SamplingRequest {
                event: match self.event {
                    EventChoice::Auto => EventRequest::Auto,
                    EventChoice::Cycles => EventRequest::Cycles,
                    EventChoice::CpuClock => EventRequest::CpuClock,
                },
                branches: match self.branches {
                    Toggle::Auto => BranchRequest::Auto,
                    Toggle::On => BranchRequest::On,
                    Toggle::Off => BranchRequest::Off,
                },
                call_graph: match self.call_graph {
                    CallGraph::Fp => host::CallGraph::Fp,
                    CallGraph::Lbr => host::CallGraph::Lbr,
                },
            },
            target,
            duration,
            mmap_pages: self.mmap_pages,
        })
    }
}

/// Record; exit with the command's status (128 + signal when it was killed), 0 for
/// `-p`/`-t`, 127/126 when the command cannot be run, 2 for other errors.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = args.into_options()?;
    let output = opts.output.clone();
    let facts = HostFacts::probe();
    let recorder = Recorder::prepare(opts, &facts).map_err(record_error)?;
    for warning in recorder.warnings() {
        eprintln!("lbrprof: warning: {warning}");
    }
    eprintln!("lbrprof: sampling with {}", recorder.choice().reason);
    let outcome = recorder.run().map_err(record_error)?;
    let s = &outcome.summary;
    let event = outcome.choice.event.name();
    let why = if outcome.choice.event == host::EventKind::CpuClock && !facts.pmu_present() {
        " (no hardware PMU)"
    } else {
        ""
    };
    eprintln!(
        "lbrprof: {} samples, {} lost, {} throttled, event {event}{why}, written to {}",
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

fn record_error(err: RecordError) -> anyhow::Error {
    match err.exit_code() {
        Some(code) => with_exit(err.into(), code),
        None => err.into(),
    }
}
