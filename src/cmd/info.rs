//! `lbrprof info`: this host's profiling capabilities, or (`lbrprof info FILE`) a
//! recording's header and totals, read as a stream; for a perf.data file also its events
//! with their sample counts, build-ids and feature sections.
//!
//! The host's verdicts come from the decision code `record` and `record --vm` run
//! (`collector::host::decide`, `vmm::pmu::backend::decide`) on the same probes, and the
//! emulated LBR is called working only after a short trial run has shown it working.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_collector::host::{
    BranchRequest, CallGraph, EventRequest, HostFacts, SamplingChoice, SamplingRequest,
};
use lbrprof_data::model::{
    AddressSpace, Event, Header, LossKind, SnapshotReason, Target, TaskEvent,
};
use lbrprof_data::perfdata::PerfDataReader;
use lbrprof_data::recording::RecordingReader;
use lbrprof_data::sample::SampleRef;
use lbrprof_data::source::{
    EventSource, PerfSource, RecordingSource, SampleSource, SampleVisitor, SourceError,
};
use lbrprof_vmm::caps::KvmCaps;
use lbrprof_vmm::pmu::backend::{
    self, Decision, HostLbrFacts, LbrBackend, LbrFlavour, LbrMode, LbrRequest, Refusal,
};
use lbrprof_vmm::pmu::{kvm_hook, trial};
use serde_json::json;

/// Print this host's profiling capabilities (PMU, LBR, perf_event_paranoid, KVM), or a
/// recording's (lbrprof.data or perf.data) header and totals.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A recording (lbrprof.data, or perf's perf.data) to describe instead of the host.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Describe the host as JSON (for scripts): the same facts and verdicts as the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.file {
        None => {
            let report = HostReport::probe();
            if args.json {
                serde_json::to_writer_pretty(&mut out, &report.to_json())?;
                writeln!(out)?;
            } else {
                report.write_text(&mut out)?;
            }
        }
        Some(path) if args.json => anyhow::bail!(
            "--json describes the host; `lbrprof report -i {} --format json` describes a recording",
            path.display()
        ),
        Some(path) => recording(&mut out, &path)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// What is known of a guest-LBR backend on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Seen working by a trial run.
    Works(String),
    DoesNotWork(String),
    /// The decision allows it but nothing here has run it.
    Untested(String),
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Verdict::Works(_) => "works",
            Verdict::DoesNotWork(_) => "does not work",
            Verdict::Untested(_) => "untested",
        }
    }

    fn reason(&self) -> &str {
        match self {
            Verdict::Works(r) | Verdict::DoesNotWork(r) | Verdict::Untested(r) => r,
        }
    }
}

/// Everything `lbrprof info` says about this host, gathered by the same probes and decided
/// by the same code that `record` (host sampling) and `record --vm` (guest LBR) use.
struct HostReport {
    host: HostFacts,
    kvm: KvmCaps,
    lbr: HostLbrFacts,
    /// What `record -- CMD` samples with by default.
    sampling: Result<SamplingChoice, String>,
    hardware: Verdict,
    emulated: Verdict,
    /// What `record --vm --lbr auto` picks, per mode.
    auto: [(LbrMode, Result<Decision, Refusal>); 2],
}

impl HostReport {
    fn probe() -> HostReport {
        let host = HostFacts::probe();
        let kvm = lbrprof_vmm::caps::probe();
        let lbr = kvm_hook::host_facts(&kvm);
        let sampling = lbrprof_collector::host::decide(
            &host,
            SamplingRequest {
                event: EventRequest::Auto,
                more_events: Vec::new(),
                branches: BranchRequest::Auto,
                call_graph: CallGraph::Fp,
            },
        )
        .map_err(|e| e.to_string());
        let hardware = match backend::decide(&lbr, LbrRequest::Hw, LbrMode::Sampled) {
            Ok(d) => Verdict::Untested(format!(
                "passthrough is possible ({}); info does not boot a guest with it",
                d.reason
            )),
            Err(Refusal::Hardware { why }) => Verdict::DoesNotWork(why),
            Err(other) => Verdict::DoesNotWork(other.to_string()),
        };
        let emulated = match backend::decide(&lbr, LbrRequest::Emulated, LbrMode::Sampled) {
            Err(refusal) => Verdict::DoesNotWork(refusal.to_string()),
            Ok(_) => match trial::emulated_lbr() {
                Ok(t) if t.works() => Verdict::Works(t.to_string()),
                Ok(t) => Verdict::DoesNotWork(t.to_string()),
                Err(e) => Verdict::DoesNotWork(e.to_string()),
            },
        };
        let auto = [LbrMode::Sampled, LbrMode::Exact]
            .map(|mode| (mode, backend::decide(&lbr, LbrRequest::Auto, mode)));
        HostReport {
            host,
            kvm,
            lbr,
            sampling,
            hardware,
            emulated,
            auto,
        }
    }

    fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "host")?;
        for line in self.host.to_string().lines() {
            writeln!(out, "  {line}")?;
        }
        match &self.sampling {
            Ok(c) => writeln!(out, "  record picks:           {}", c.reason)?,
            Err(e) => writeln!(out, "  record picks:           nothing ({e})")?,
        }
        writeln!(out, "kvm")?;
        for line in self.kvm.to_string().lines() {
            writeln!(out, "  {}", line.strip_prefix("kvm: ").unwrap_or(line))?;
        }
        let lbr = &self.lbr;
        writeln!(out, "guest LBR")?;
        match lbr.lbr_flavour() {
            LbrFlavour::None => writeln!(
                out,
                "  host LBR:               none ({})",
                if lbr.host_lbr_nr == 0 {
                    "the host kernel's perf exposes no branch stack: caps/branches missing or 0"
                } else {
                    "no LBR flavour lbrprof knows in CPUID"
                }
            )?,
            flavour => writeln!(out, "  host LBR:               {flavour}")?,
        }
        writeln!(out, "  LBR freeze on PMI:      {}", lbr.lbr_freeze().1)?;
        writeln!(out, "  KVM vPMU:               {}", vpmu(lbr))?;
        writeln!(out, "  virtualization:         {}", lbr.virtualization())?;
        for (name, v) in [
            ("hardware passthrough", &self.hardware),
            ("emulated LBR", &self.emulated),
        ] {
            writeln!(
                out,
                "  {:<22}  {}: {}",
                format!("{name}:"),
                v.word(),
                v.reason()
            )?;
        }
        for (mode, decision) in &self.auto {
            let mode = mode_name(*mode);
            match decision {
                Ok(d) => writeln!(
                    out,
                    "  record --vm ({mode}):{:<w$}{d}",
                    "",
                    w = 9 - mode.len()
                )?,
                Err(r) => writeln!(
                    out,
                    "  record --vm ({mode}):{:<w$}no guest LBR ({r})",
                    "",
                    w = 9 - mode.len()
                )?,
            }
        }
        Ok(())
    }

    fn to_json(&self) -> serde_json::Value {
        let h = &self.host;
        let k = &self.kvm;
        let lbr = &self.lbr;
        let verdict = |v: &Verdict| json!({ "verdict": v.word(), "reason": v.reason() });
        let (freeze, freeze_how) = lbr.lbr_freeze();
        json!({
            "host": {
                "kernel": h.kernel,
                "cpu_vendor": h.cpu_vendor,
                "cpu_model": h.cpu_model,
                "hardware_pmu": h.pmu_present(),
                "lbr_depth": h.lbr_depth,
                "lbr_format": h.lbr_format,
                "perf_event_paranoid": h.perf_event_paranoid,
                "privileged": h.privileged,
                "sampling_other_tasks": h.sampling_allowed(),
                "kernel_callchains": h.kernel_callchains_allowed(),
                "kernel_symbols_visible": h.kernel_symbols_visible(),
                "record": match &self.sampling {
                    Ok(c) => json!({
                        "event": c.event.name(),
                        "branch_stacks": c.branch_stacks,
                        "kernel": c.kernel,
                        "reason": c.reason,
                    }),
                    Err(e) => json!({ "error": e }),
                },
            },
            "kvm": {
                "available": k.open_error.is_none(),
                "error": k.open_error,
                "api_version": k.api_version,
                "vendor": k.vendor,
                "max_vcpus": k.max_vcpus,
                "user_space_msr": k.user_space_msr,
                "msr_filter": k.msr_filter,
                "guest_debug": k.guest_debug,
                "guest_debug_reaches_ring3": k.ring3_guest_debug,
                "irqchip": k.irqchip,
                "enable_pmu": k.enable_pmu,
                "enable_mediated_pmu": lbr.kvm_mediated_pmu,
                "module": lbr.kvm_module,
            },
            "guest_lbr": {
                "host_lbr": lbr.lbr_flavour().to_string(),
                "freeze_on_pmi": freeze,
                "freeze_on_pmi_how": freeze_how,
                "hypervisor": lbr.cpuid.hypervisor,
                "hardware_virtualization": lbr.cpuid.hw_virt,
                "hardware": verdict(&self.hardware),
                "emulated": verdict(&self.emulated),
                "record_vm": self.auto.iter().map(|(mode, d)| {
                    let value = match d {
                        Ok(d) => json!({
                            "backend": backend_name(d.backend),
                            "reason": d.reason,
                        }),
                        Err(r) => json!({ "backend": null, "reason": r.to_string() }),
                    };
                    (mode_name(*mode).to_owned(), value)
                }).collect::<serde_json::Map<_, _>>(),
            },
        })
    }
}

fn mode_name(mode: LbrMode) -> &'static str {
    match mode {
        LbrMode::Sampled => "sampled",
        LbrMode::Exact => "exact",
    }
}

fn backend_name(b: LbrBackend) -> &'static str {
    match b {
        LbrBackend::Hardware => "hardware",
        LbrBackend::Emulated => "emulated",
    }
}

/// KVM's PMU virtualization: `enable_pmu`, and the mediated vPMU where the kernel has it.
fn vpmu(f: &HostLbrFacts) -> String {
    let enable = match f.kvm_enable_pmu {
        Some(true) => "enable_pmu=Y",
        Some(false) => "enable_pmu=N (KVM gives guests no PMU of its own)",
        None => "enable_pmu unknown",
    };
    let mediated = match f.kvm_mediated_pmu {
        Some(true) => {
            "mediated vPMU on (the guest owns the PMU while it runs: no guest LBR from KVM, \
             and the host cannot sample inside the guest)"
        }
        Some(false) => "mediated vPMU off",
        None => "no mediated vPMU in this kernel",
    };
    format!("{enable}; {mediated}")
}

/// How many threads `info FILE` lists.
const TOP_THREADS: usize = 10;

/// One process of a recording, as its side band and samples describe it.
#[derive(Clone, Debug, Default)]
struct Process {
    samples: u64,
    /// Every thread seen (side band or samples).
    threads: BTreeSet<u32>,
    /// The program it runs: the first file mapped after its exec (the kernel maps the
    /// program before its interpreter), or its parent's.
    exe: Option<String>,
    /// Exec'ed and the new program's file is not seen yet.
    awaiting_exe: bool,
    /// Forked by a process of the recording.
    forked: bool,
    execs: u64,
}

/// Totals gathered while reading a recording: every side-band event in order, and every
/// sample (borrowed, [`SampleVisitor`]).
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
    execs: u64,
    forks: u64,
    exits: u64,
    vcpus: u64,
    vcpu_exits: u64,
    /// Host samples of vCPU threads the shim's phase marks placed.
    placed_samples: u64,
    /// vCPUs taking up another guest process's thread, or its new program.
    vcpu_switches: u64,
    /// The vCPUs that ran (their indices, from their threads and accounting).
    vcpus_ran: BTreeSet<u32>,
    /// Guest processes of a Linux program: pid → the programs it ran, in order.
    guest_processes: BTreeMap<u32, Vec<String>>,
    /// Exact-mode profiles: (vCPUs, ring-3 instructions counted).
    exact_profiles: (u64, u64),
    losses: BTreeMap<String, u64>,
    pids: BTreeSet<u32>,
    /// Samples per (pid, tid).
    per_thread: BTreeMap<(u32, u32), u64>,
    /// The last name each thread had.
    names: BTreeMap<u32, String>,
    /// Every host process seen, in samples or side band.
    processes: BTreeMap<u32, Process>,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
}

impl SampleVisitor for Totals {
    fn sideband(&mut self, event: &Event) {
        self.add(event);
    }

    fn sample(&mut self, sample: &SampleRef<'_>) {
        self.add_sample(sample);
    }
}

impl Totals {
    fn add_sample(&mut self, s: &SampleRef<'_>) {
        self.samples += 1;
        self.samples_with_callchain += u64::from(!s.callchain.frames(s.mode).is_empty());
        self.samples_with_branches += u64::from(!s.branches.is_empty());
        self.branches += s.branches.len() as u64;
        self.pids.insert(s.pid);
        *self.per_thread.entry((s.pid, s.tid)).or_default() += 1;
        let p = self.processes.entry(s.pid).or_default();
        p.samples += 1;
        p.threads.insert(s.tid);
        self.first_ns = Some(self.first_ns.map_or(s.time_ns, |t| t.min(s.time_ns)));
        self.last_ns = Some(self.last_ns.map_or(s.time_ns, |t| t.max(s.time_ns)));
    }

    fn add(&mut self, event: &Event) {
        match event {
            Event::Sample(s) => self.add_sample(&SampleRef::of_host(s, 0)),
            Event::Snapshot(s) => {
                self.snapshots += 1;
                let source = match s.reason {
                    SnapshotReason::Agent => "by the guest agent",
                    SnapshotReason::Pmi { .. } => "by the shim",
                    SnapshotReason::Final => "by the shim at the end",
                };
                *self.snapshot_sources.entry((s.vcpu, source)).or_default() += 1;
            }
            Event::Mapping(m) => {
                self.mappings += 1;
                if m.space == AddressSpace::HostUser && m.path.starts_with('/') {
                    let p = self.processes.entry(m.pid).or_default();
                    if p.exe.is_none() || p.awaiting_exe {
                        p.exe = Some(m.path.clone());
                        p.awaiting_exe = false;
                    }
                }
            }
            Event::Task(TaskEvent::Comm { pid, tid, comm, .. }) => {
                self.comms += 1;
                self.names.insert(*tid, comm.clone());
                self.processes.entry(*pid).or_default().threads.insert(*tid);
            }
            Event::Task(TaskEvent::Exec { pid, tid, comm, .. }) => {
                self.execs += 1;
                self.names.insert(*tid, comm.clone());
                let p = self.processes.entry(*pid).or_default();
                p.threads.insert(*tid);
                p.exe = None;
                p.awaiting_exe = true;
                p.execs += 1;
            }
            Event::Task(TaskEvent::Fork {
                pid,
                tid,
                ppid,
                ptid,
                ..
            }) => {
                self.forks += 1;
                // A new thread or process starts with its parent's name.
                if let Some(name) = self.names.get(ptid).cloned() {
                    self.names.entry(*tid).or_insert(name);
                }
                // A new process runs its parent's program until it execs.
                let parent_exe = self.processes.get(ppid).and_then(|p| p.exe.clone());
                let p = self.processes.entry(*pid).or_default();
                p.threads.insert(*tid);
                if pid != ppid {
                    p.forked = true;
                    if p.exe.is_none() {
                        p.exe = parent_exe;
                    }
                }
            }
            Event::Task(TaskEvent::Exit { .. }) => self.exits += 1,
            Event::Vcpu(v) => {
                self.vcpus += 1;
                self.vcpus_ran.insert(v.vcpu);
            }
            Event::VcpuStats(v) => {
                self.vcpus_ran.insert(v.vcpu);
                self.vcpu_exits += v.exits.iter().map(|(_, n)| n).sum::<u64>();
            }
            Event::GuestProcess(p) => {
                let progs = self.guest_processes.entry(p.pid).or_default();
                // A fork announces the parent's program again: one entry per program.
                if progs.last() != Some(&p.comm) || progs.is_empty() {
                    progs.push(p.comm.clone());
                }
            }
            Event::SamplePhases(p) => self.placed_samples += p.samples.len() as u64,
            Event::VcpuSpace(_) => self.vcpu_switches += 1,
            Event::ExactProfile(p) => {
                self.exact_profiles.0 += 1;
                self.exact_profiles.1 += p.instructions;
            }
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

/// How many processes `info FILE` lists.
const TOP_PROCESSES: usize = 10;

/// Every process of the recording (sampled or not), the busiest first, with its program.
fn processes(out: &mut impl Write, t: &Totals) -> std::io::Result<()> {
    if t.processes.is_empty() {
        return Ok(());
    }
    let threads: usize = t.processes.values().map(|p| p.threads.len()).sum();
    let forked = t.processes.values().filter(|p| p.forked).count();
    let exec = t.processes.values().filter(|p| p.execs > 0).count();
    writeln!(
        out,
        "processes:     {} ({forked} forked, {exec} exec'ed), {threads} threads",
        t.processes.len()
    )?;
    let mut list: Vec<(&u32, &Process)> = t.processes.iter().collect();
    list.sort_by(|a, b| b.1.samples.cmp(&a.1.samples).then(a.0.cmp(b.0)));
    for (pid, p) in list.iter().take(TOP_PROCESSES) {
        let name = t.names.get(pid).map_or("?", String::as_str);
        let n = p.threads.len();
        let threads = format!("{n} thread{}", if n == 1 { "" } else { "s" });
        writeln!(
            out,
            "  {:>9} samples  pid {pid:<7} {threads:<11} {name:<15} {}",
            p.samples,
            p.exe.as_deref().unwrap_or("?")
        )?;
    }
    if list.len() > TOP_PROCESSES {
        writeln!(out, "  ... {} more processes", list.len() - TOP_PROCESSES)?;
    }
    Ok(())
}

fn target(t: &Target, vcpus_ran: usize) -> String {
    match t {
        Target::Vm {
            image,
            vcpus,
            backend,
            mode,
        } if vcpus_ran > *vcpus as usize => format!(
            "guest {image} ({vcpus_ran} vCPUs ran, {vcpus} at start, {backend:?} backend, \
             {mode} mode)"
        ),
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
        Target::System { cpus, argv } => system_target(cpus, argv),
    }
}

/// How a system-wide recording's target reads: its CPUs, and the command it ran for.
pub fn system_target(cpus: &[u32], argv: &[String]) -> String {
    let cpus = cpus
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    match argv.is_empty() {
        true => format!("every task on CPUs {cpus}"),
        false => format!("every task on CPUs {cpus} while running {}", argv.join(" ")),
    }
}

fn header(out: &mut impl Write, h: &Header, vcpus_ran: usize) -> std::io::Result<()> {
    writeln!(out, "writer:        {}", h.writer)?;
    match h.start_unix {
        // perf.data keeps no wall-clock start (perf's "captured on" is the file's ctime).
        0 => writeln!(out, "started:       unknown (not recorded in the file)")?,
        t => writeln!(out, "started:       {t} (unix seconds)")?,
    }
    writeln!(out, "target:        {}", target(&h.target, vcpus_ran))?;
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
        s.event_names().join(","),
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
    if is_perf_data(path) {
        return perf_data(out, path);
    }
    let context = || format!("cannot read the recording {}", path.display());
    let mut reader = RecordingReader::open(path).with_context(context)?;
    let mut totals = Totals::default();
    // Every event in file order, the samples read in place; the event stream for a
    // file that cannot be mapped.
    let read = match RecordingSource::new(&mut reader) {
        Some(mut source) => source.walk_in_order(&mut totals),
        None => EventSource::new(reader.by_ref()).walk_in_order(&mut totals),
    };
    // (A damaged file is `SourceError::Input`, which reads as the stream's error.)
    read.with_context(context)?;
    // The header's vCPU count is the VM's at start: a Linux program gets one more per
    // thread and process it starts.
    header(out, reader.header(), totals.vcpus_ran.len())?;
    // Several events (`record -e A,B`): each with its samples, as for perf.data.
    if reader.event_names().len() > 1 {
        for (name, samples) in reader.samples_per_event() {
            writeln!(out, "event:         {name}: {samples} samples")?;
        }
    }
    write_totals(out, &totals)?;
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

/// The totals both kinds of file have: samples, threads, snapshots, side band, losses.
fn write_totals(out: &mut impl Write, totals: &Totals) -> std::io::Result<()> {
    let t = totals;
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
    processes(out, t)?;
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
            "vcpus:         {} ran, {} threads, {} VM exits, {} host samples placed in a shim phase",
            t.vcpus_ran.len(),
            t.vcpus,
            t.vcpu_exits,
            t.placed_samples
        )?;
    }
    if !t.guest_processes.is_empty() {
        let list: Vec<String> = t
            .guest_processes
            .iter()
            .map(|(pid, progs)| format!("{pid} {}", progs.join(" → ")))
            .collect();
        writeln!(
            out,
            "guest procs:   {} ({}); vCPUs switched process or program {} times",
            t.guest_processes.len(),
            list.join(", "),
            t.vcpu_switches
        )?;
    }
    if t.exact_profiles.0 > 0 {
        writeln!(
            out,
            "exact profile: {} ring-3 instructions counted on {} vCPU(s) (export --callgrind)",
            t.exact_profiles.1, t.exact_profiles.0
        )?;
    }
    writeln!(
        out,
        "side-band:     {} mappings, {} comm, {} exec, {} fork, {} exit",
        t.mappings, t.comms, t.execs, t.forks, t.exits
    )?;
    if t.losses.is_empty() {
        writeln!(out, "losses:        none")?;
    } else {
        let list: Vec<String> = t.losses.iter().map(|(k, v)| format!("{v} {k}")).collect();
        writeln!(out, "losses:        {}", list.join(", "))?;
    }
    Ok(())
}

/// `info` of a perf.data file: its header, every event with its samples, the totals, the
/// build-ids and the feature sections it carries.
fn perf_data(out: &mut impl Write, path: &std::path::Path) -> anyhow::Result<()> {
    let context = || format!("cannot read the perf.data file {}", path.display());
    let mut reader = PerfDataReader::open(path).with_context(context)?;
    header(out, reader.header(), 0)?;
    let mut totals = Totals::default();
    // Every record in perf's order, read in place; the event stream for files the
    // mapped walk declines, and to name a sample it cannot decode.
    let read = match PerfSource::new(&mut reader).walk_in_order(&mut totals) {
        Err(SourceError::Declined) => EventSource::new(reader.by_ref()).walk_in_order(&mut totals),
        Err(SourceError::Undecodable(_)) => {
            reader = PerfDataReader::open(path).with_context(context)?;
            totals = Totals::default();
            EventSource::new(reader.by_ref()).walk_in_order(&mut totals)
        }
        read => read,
    };
    read.with_context(context)?;
    for (name, samples) in reader.events() {
        writeln!(out, "event:         {name}: {samples} samples")?;
    }
    write_totals(out, &totals)?;
    let build_ids = reader.build_ids();
    writeln!(out, "build-ids:     {}", build_ids.len())?;
    for (file, id) in build_ids {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(out, "  {hex}  {}", String::from_utf8_lossy(file))?;
    }
    writeln!(out, "features:      {}", reader.features().join(" "))?;
    for warning in reader.warnings() {
        writeln!(out, "warning:       {warning}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbrprof_data::model::{HostSample, Mapping};

    fn map(pid: u32, path: &str) -> Event {
        Event::Mapping(Mapping {
            time_ns: 0,
            space: AddressSpace::HostUser,
            pid,
            start: 0x1000,
            len: 0x1000,
            pgoff: 0,
            path: path.into(),
            build_id: None,
        })
    }

    fn fork(pid: u32, tid: u32, ppid: u32) -> Event {
        Event::Task(TaskEvent::Fork {
            time_ns: 0,
            pid,
            tid,
            ppid,
            ptid: ppid,
        })
    }

    #[test]
    fn processes_get_their_program_threads_and_samples() {
        let mut t = Totals::default();
        let events = [
            // The shell execs, maps its program then its interpreter.
            Event::Task(TaskEvent::Exec {
                time_ns: 0,
                pid: 10,
                tid: 10,
                comm: "sh".into(),
            }),
            map(10, "/bin/sh"),
            map(10, "/lib/ld.so"),
            map(10, "[vdso]"),
            // A child that only forks runs the shell; one that execs runs its program.
            fork(11, 11, 10),
            fork(12, 12, 10),
            Event::Task(TaskEvent::Exec {
                time_ns: 0,
                pid: 12,
                tid: 12,
                comm: "cc".into(),
            }),
            map(12, "/usr/bin/cc"),
            map(12, "/lib/ld.so"),
            // The exec'ed child starts a thread, which is sampled.
            fork(12, 13, 12),
            Event::Sample(HostSample {
                pid: 12,
                tid: 13,
                ..HostSample::default()
            }),
        ];
        for e in &events {
            t.add(e);
        }
        let exe = |pid| t.processes[&pid].exe.as_deref();
        assert_eq!(exe(10), Some("/bin/sh"));
        assert_eq!(exe(11), Some("/bin/sh"));
        assert_eq!(exe(12), Some("/usr/bin/cc"));
        assert_eq!(t.processes[&12].threads.len(), 2);
        assert_eq!(t.processes[&12].samples, 1);
        assert!(t.processes[&11].forked && !t.processes[&10].forked);
        assert_eq!((t.execs, t.forks), (2, 3));
        let mut out = Vec::new();
        processes(&mut out, &t).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("processes:     3 (2 forked, 2 exec'ed), 4 threads\n"),
            "{text}"
        );
        assert!(
            text.contains("        1 samples  pid 12      2 threads   cc              /usr/bin/cc"),
            "{text}"
        );
    }
}
