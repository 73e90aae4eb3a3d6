//! `lbrprof record`: record a host command, a running process/thread, or a guest.

use std::path::PathBuf;
use std::process::ExitCode;

/// Record a host command (`-- CMD ARGS`), a process (`-p`), a thread (`-t`), or a guest
/// image in the VMM shim (`--vm`). Exits with the profiled program's exit status.
#[derive(Debug, clap::Args)]
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
    /// With -p/-t: stop after this many seconds (default: until Ctrl-C or the target exits).
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

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("record: this build does not record yet")
}
