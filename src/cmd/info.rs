//! `lbrprof info`: this host's profiling capabilities, or (`lbrprof info FILE`) a
//! recording's header and totals, read as a stream.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_collector::host::HostFacts;
use lbrprof_collector::model::{Event, Header, LossKind, SnapshotReason, Target, TaskEvent};
use lbrprof_collector::recording::RecordingReader;

/// Print this host's profiling capabilities (PMU, LBR, perf_event_paranoid, KVM), or a
/// recording's header and totals.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A recording (lbrprof.data) to describe instead of the host.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.file {
        None => host(&mut out)?,
        Some(path) => recording(&mut out, &path)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn host(out: &mut impl Write) -> anyhow::Result<()> {
    let facts = HostFacts::probe();
    writeln!(out, "host")?;
    for line in facts.to_string().lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "kvm")?;
    let caps = lbrprof_vmm::caps::probe();
    for line in caps.to_string().lines() {
        writeln!(out, "  {}", line.strip_prefix("kvm: ").unwrap_or(line))?;
    }
    // What `record --vm` would pick by default, and why.
    use lbrprof_vmm::pmu::backend::{self, LbrMode, LbrRequest};
    let facts = backend::HostLbrFacts {
        kvm: caps.open_error.is_none(),
        kvm_user_space_msr: caps.user_space_msr,
        kvm_msr_filter: caps.msr_filter,
        kvm_guest_debug: caps.guest_debug,
        ..backend::probe_host()
    };
    for (mode, name) in [(LbrMode::Sampled, "sampled"), (LbrMode::Exact, "exact")] {
        match backend::decide(&facts, LbrRequest::Auto, mode) {
            Ok(decision) => writeln!(out, "  guest LBR ({name} mode): {decision}")?,
            Err(refusal) => writeln!(out, "  guest LBR ({name} mode): none ({refusal})")?,
        }
    }
    Ok(())
}

/// How many threads `info FILE` lists.
const TOP_THREADS: usize = 10;

/// Totals gathered while streaming a recording.
#[derive(Default)]
struct Totals {
    samples: u64,
    samples_with_callchain: u64,
    samples_with_branches: u64,
    branches: u64,
    snapshots: u64,
    /// Snapshots per (vCPU, source).
    snapshot_sources: BTreeMap<(u32, &'static str), u64>,
    mappings: u64,
    comms: u64,
    forks: u64,
    exits: u64,
    vcpus: u64,
    vcpu_exits: u64,
    losses: BTreeMap<String, u64>,
    pids: BTreeSet<u32>,
    /// Samples per (pid, tid).
    per_thread: BTreeMap<(u32, u32), u64>,
    /// The last name each thread had.
    names: BTreeMap<u32, String>,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
}

impl Totals {
    fn add(&mut self, event: &Event) {
        match event {
            Event::Sample(s) => {
                self.samples += 1;
                self.samples_with_callchain += u64::from(!s.callchain.is_empty());
                self.samples_with_branches += u64::from(!s.branches.is_empty());
                self.branches += s.branches.len() as u64;
                self.pids.insert(s.pid);
                *self.per_thread.entry((s.pid, s.tid)).or_default() += 1;
                self.first_ns = Some(self.first_ns.map_or(s.time_ns, |t| t.min(s.time_ns)));
                self.last_ns = Some(self.last_ns.map_or(s.time_ns, |t| t.max(s.time_ns)));
            }
            Event::Snapshot(s) => {
                self.snapshots += 1;
                let source = match s.reason {
                    SnapshotReason::Agent => "by the guest agent",
                    SnapshotReason::Pmi { .. } => "by the shim",
                    SnapshotReason::Final => "by the shim at the end",
                };
                *self.snapshot_sources.entry((s.vcpu, source)).or_default() += 1;
            }
            Event::Mapping(_) => self.mappings += 1,
            Event::Task(TaskEvent::Comm { tid, comm, .. }) => {
                self.comms += 1;
                self.names.insert(*tid, comm.clone());
            }
            Event::Task(TaskEvent::Fork { tid, ptid, .. }) => {
                self.forks += 1;
                // A new thread or process starts with its parent's name.
                if let Some(name) = self.names.get(ptid).cloned() {
                    self.names.entry(*tid).or_insert(name);
                }
            }
            Event::Task(TaskEvent::Exit { .. }) => self.exits += 1,
            Event::Vcpu(_) => self.vcpus += 1,
            Event::VcpuStats(v) => self.vcpu_exits += v.exits.iter().map(|(_, n)| n).sum::<u64>(),
            Event::Loss(l) => {
                let kind = match (l.kind, l.tid) {
                    (LossKind::RingBuffer, _) => "ring buffer".to_owned(),
                    (LossKind::Throttled, _) => "throttled".to_owned(),
                    // A guest snapshot channel of one vCPU: its agent's ring.
                    (LossKind::ChannelFull, Some(vcpu)) => {
                        format!("guest snapshots (vCPU {vcpu}'s agent ring full)")
                    }
                    (LossKind::ChannelFull, _) => "channel full".to_owned(),
                    (LossKind::Frozen, _) => "while frozen".to_owned(),
                };
                *self.losses.entry(kind).or_default() += l.count;
            }
        }
    }
}

fn target(t: &Target) -> String {
    match t {
        Target::Command { argv } => format!("command {}", argv.join(" ")),
        Target::Pid { pid } => format!("process {pid}"),
        Target::Tid { tid } => format!("thread {tid}"),
        Target::Vm {
            image,
            vcpus,
            backend,
            mode,
        } => format!("guest {image} ({vcpus} vCPUs, {backend:?} backend, {mode} mode)"),
        Target::PerfData { path } => format!("perf.data import of {path}"),
    }
}

fn header(out: &mut impl Write, h: &Header) -> std::io::Result<()> {
    writeln!(out, "writer:        {}", h.writer)?;
    writeln!(out, "started:       {} (unix seconds)", h.start_unix)?;
    writeln!(out, "target:        {}", target(&h.target))?;
    writeln!(
        out,
        "host:          {} ({})",
        h.host.hostname, h.host.kernel
    )?;
    writeln!(
        out,
        "cpu:           {} {}",
        h.host.cpu_vendor, h.host.cpu_model
    )?;
    writeln!(
        out,
        "pmu:           {}, LBR depth {}{}",
        h.host.pmu,
        h.host.lbr_depth,
        h.host
            .lbr_format
            .map(|f| format!(", format {f:#x}"))
            .unwrap_or_default()
    )?;
    let s = &h.sampling;
    writeln!(
        out,
        "event:         {} at {}, call graph {}, branch stacks {}",
        s.event,
        if s.frequency > 0 {
            format!("{} Hz", s.frequency)
        } else {
            format!("period {}", s.period)
        },
        s.call_graph,
        if s.branch_stacks { "on" } else { "off" }
    )?;
    if !s.event_reason.is_empty() {
        writeln!(out, "why:           {}", s.event_reason)?;
    }
    Ok(())
}

/// `perf.data` files start with "PERFILE2" (tools/perf/util/header.c).
fn is_perf_data(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"PERFILE2")
}

fn recording(out: &mut impl Write, path: &std::path::Path) -> anyhow::Result<()> {
    let mut reader = RecordingReader::open(path).with_context(|| {
        if is_perf_data(path) {
            format!(
                "cannot read the recording {} (it is a perf.data file: `lbrprof report` reads those)",
                path.display()
            )
        } else {
            format!("cannot read the recording {}", path.display())
        }
    })?;
    header(out, reader.header())?;
    let mut totals = Totals::default();
    for event in reader.by_ref() {
        let event =
            event.with_context(|| format!("cannot read the recording {}", path.display()))?;
        totals.add(&event);
    }
    let t = &totals;
    writeln!(
        out,
        "samples:       {} ({} with call chains, {} with branch stacks, {} branches)",
        t.samples, t.samples_with_callchain, t.samples_with_branches, t.branches
    )?;
    if let (Some(first), Some(last)) = (t.first_ns, t.last_ns) {
        writeln!(
            out,
            "sampled span:  {:.3} s",
            (last.saturating_sub(first)) as f64 / 1e9
        )?;
    }
    writeln!(
        out,
        "tasks:         {} processes, {} threads sampled",
        t.pids.len(),
        t.per_thread.len()
    )?;
    // The busiest threads, most samples first (ties by pid, tid for a stable order).
    let mut threads: Vec<(&(u32, u32), &u64)> = t.per_thread.iter().collect();
    threads.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for ((pid, tid), n) in threads.iter().take(TOP_THREADS) {
        let name = t
            .names
            .get(tid)
            .or_else(|| t.names.get(pid))
            .map_or("?", String::as_str);
        writeln!(out, "  {n:>9} samples  pid {pid:<7} tid {tid:<7} {name}")?;
    }
    if threads.len() > TOP_THREADS {
        writeln!(out, "  ... {} more threads", threads.len() - TOP_THREADS)?;
    }
    writeln!(out, "snapshots:     {}", t.snapshots)?;
    let mut by_vcpu: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for ((vcpu, source), n) in &t.snapshot_sources {
        by_vcpu
            .entry(*vcpu)
            .or_default()
            .push(format!("{n} {source}"));
    }
    for (vcpu, sources) in by_vcpu {
        writeln!(out, "  vCPU {vcpu}:      {}", sources.join(", "))?;
    }
    if t.vcpus > 0 {
        writeln!(
            out,
            "vcpus:         {} threads, {} VM exits",
            t.vcpus, t.vcpu_exits
        )?;
    }
    writeln!(
        out,
        "side-band:     {} mappings, {} comm, {} fork, {} exit",
        t.mappings, t.comms, t.forks, t.exits
    )?;
    if t.losses.is_empty() {
        writeln!(out, "losses:        none")?;
    } else {
        let list: Vec<String> = t.losses.iter().map(|(k, v)| format!("{v} {k}")).collect();
        writeln!(out, "losses:        {}", list.join(", "))?;
    }
    match reader.summary() {
        Some(s) => {
            writeln!(
                out,
                "summary:       {:.3} s, {} samples, {} snapshots, {} lost, {} throttled{}",
                s.duration_ns as f64 / 1e9,
                s.samples,
                s.snapshots,
                s.lost,
                s.throttled,
                s.exit_status
                    .map(|c| format!(", exit status {c}"))
                    .unwrap_or_default()
            )?;
            for (i, run) in s.runs.iter().enumerate() {
                writeln!(
                    out,
                    "run {:<3}        {:.3} s, {} samples{}",
                    i + 1,
                    run.end_ns.saturating_sub(run.start_ns) as f64 / 1e9,
                    run.samples,
                    run.exit_status
                        .map(|c| format!(", exit status {c}"))
                        .unwrap_or_default()
                )?;
            }
            for note in &s.notes {
                writeln!(out, "note:          {note}")?;
            }
        }
        None => writeln!(out, "summary:       none (the recording did not finish)")?,
    }
    for warning in reader.warnings() {
        writeln!(out, "warning:       {warning}")?;
    }
    Ok(())
}
