//! `record --vm`: run a guest in the VMM shim, in this process, while the host sampler
//! samples the shim's threads, and store both sides in one recording.
//!
//! Threads and their roles:
//! * the **VM thread** (`lbrprof-vm`) calls [`Vm::run`], which starts one thread per vCPU;
//! * the **calling thread** opens the perf events on the VM thread with `inherit` *before*
//!   it starts the VM (so every vCPU thread is followed from its first instruction), then
//!   drains the perf ring buffers, the guest snapshot channel and the vCPU thread
//!   notifications into the recording until the VM thread ends. It is not itself sampled,
//!   so the recorder's own work never shows up in the profile.
//!
//! What the recording holds, besides the host samples and side band: a guest
//! [`Mapping`] (space `Guest { vm: 0 }`) per executable segment of the image, with the
//! image's path and build-id; every [`LbrSnapshot`] the vCPUs sent (taken by the shim, or
//! by the guest's own LBR agent: reason [`SnapshotReason::Agent`], see [`SnapshotSource`]);
//! an [`Event::Vcpu`] per vCPU thread as it starts; an [`Event::VcpuStats`] per vCPU at the
//! end (the shim's accounting merged with the guest LBR's, its `lost_snapshots` including
//! what that vCPU's agent dropped); a [`LossKind::ChannelFull`] loss for a full snapshot
//! channel (`tid` none) and per vCPU whose agent ring overflowed (`tid` = the vCPU); notes
//! that say who took the snapshots and what was lost; an [`Event::SamplePhases`] per
//! vCPU thread and drain with what the shim was doing at that thread's host samples
//! (looked up in the shim's phase logs, [`lbrprof_vmm::phase`], as the samples are
//! drained); and a header whose target is [`Target::Vm`].
//!
//! Signals to lbrprof ([`crate::vm_signals`]): a Linux program gets them through its
//! own signal path (and SIGINT or SIGTERM it does not end on escalate to a stop); an
//! image is stopped by SIGINT and SIGTERM. A stopped run's recorded exit status is 128 +
//! the signal, as for a host command, and the recording is finalized as usual.
//!
//! The guest LBR itself (hardware passthrough or emulation, exact or sampled) is not this
//! module's business: it comes in as a [`GuestLbr`], which makes the per-vCPU hooks and
//! reports their counters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use lbrprof_data::snapshot::{LbrBackend, LbrSnapshot, SnapshotReason};
use lbrprof_vmm::VcpuHook;
use lbrprof_vmm::phase::{PhaseBoard, ShimPhase};
use lbrprof_vmm::pmu::emulated::SnapshotSink;
use lbrprof_vmm::vm::{Outcome, RunReport, VcpuThreadInfo, Vm, VmConfig, VmError};

use crate::host::{HostFacts, SamplingChoice, SamplingRequest, decide};
use crate::record::{MAX_FREQUENCY, MAX_MMAP_PAGES, RecordError, sys};
use crate::sampler::{HostSampler, SampleTarget, SamplerConfig, procfs};
use crate::vm_signals::GuestSignals;
use lbrprof_data::model::{
    AddressSpace, Event, ExactProfile, GuestProcess, Loss, LossKind, Mapping, SamplePhases, Target,
    VcpuSpace, VcpuStats, VcpuThread,
};
use lbrprof_data::recording::{EventSink, RecordingWriter, Replace, Summary};

pub use lbrprof_data::model::VM_INDEX;

/// How often the rings and the snapshot channel are drained when nothing wakes us earlier.
const DRAIN_INTERVAL_MS: i32 = 20;

/// Snapshots the channel holds before the vCPUs count losses (a few seconds at 1 kHz).
pub const SNAPSHOT_CHANNEL_CAPACITY: usize = 1 << 14;

/// What a guest LBR backend counted for one vCPU over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbrCounters {
    /// Host time spent handling exits caused by branch tracing.
    pub trace_ns: u64,
    /// Host time spent taking snapshots.
    pub snapshot_ns: u64,
    /// Guest instructions and branches retired, when counted exactly.
    pub instructions: Option<u64>,
    pub branches: Option<u64>,
    /// Branches that retired while the LBR was frozen.
    pub frozen_events: u64,
    /// Snapshot intervals the overhead budget made longer than requested.
    pub stretched_intervals: u64,
    /// Snapshots the guest's agent dropped because its ring was full (exact).
    pub agent_lost: u64,
}

/// Who takes a guest's LBR snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotSource {
    /// The shim, from its emulated LBR model (any guest).
    #[default]
    Shim,
    /// The guest's own LBR agent (lbrprof's runtime with `rt.agent=PERIOD`): its PMI
    /// handler writes a ring per vCPU that the vCPU's hook drains.
    Agent {
        /// Ring-3 instructions between snapshots.
        period: u64,
    },
}

/// The snapshot rate a guest LBR was asked for, and the overhead budget that may lower it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotBudget {
    /// Snapshots per second of guest time asked for (per vCPU).
    pub requested_hz: u64,
    /// Percent of wall time tracing may take (`--lbr-overhead`); `None`: not throttled.
    pub overhead_percent: Option<u32>,
    /// Exact mode: the rate is in guest instructions (a snapshot every this many), so
    /// the rate per wall second follows how fast the interpreter runs; `None`: guest time.
    pub instruction_period: Option<u64>,
}

/// The guest's LBR, as `record --vm` needs it: per-vCPU hooks that send snapshots into a
/// sink, and their counters afterwards.
pub trait GuestLbr: Sync {
    /// Which backend provides the LBR.
    fn backend(&self) -> LbrBackend;
    /// `"exact"` or `"sampled"`.
    fn mode(&self) -> &str;
    /// The hook for vCPU `vcpu`, sending snapshots into `sink`.
    fn hook(&self, vcpu: u32, sink: &SnapshotSink) -> Box<dyn VcpuHook>;
    /// What vCPU `vcpu`'s hook counted (after the run).
    fn counters(&self, vcpu: u32) -> LbrCounters;
    /// Who takes the snapshots.
    fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource::Shim
    }
    /// The requested snapshot rate and its overhead budget, when the backend drives
    /// snapshots at a rate (the emulated LBR).
    fn snapshot_budget(&self) -> Option<SnapshotBudget> {
        None
    }
}

/// The guest to run.
pub struct GuestImage {
    /// As the user gave it (`builtin:sort`, a path), for the header.
    pub spec: String,
    pub bytes: Vec<u8>,
    /// A file with the same bytes, recorded in the guest mapping for symbolization.
    pub path: PathBuf,
    /// Set for a Linux program (run under the shim's Linux personality): `bytes` is
    /// then unused and the guest mappings are the files the program mapped.
    pub program: Option<lbrprof_vmm::linux::Program>,
}

/// Everything `record --vm` needs, as plain data.
pub struct VmRecordOptions {
    pub output: PathBuf,
    pub frequency: u64,
    pub request: SamplingRequest,
    pub mmap_pages: u32,
    pub image: GuestImage,
    /// RAM, vCPUs, command line, console, timeout. `vcpu_threads` is set here.
    pub vm: VmConfig,
    /// What happens to a recording already at `output` (kept as `NAME.old` by default).
    pub replace: Replace,
    /// Stop after this long (`--duration`): a Linux program is sent SIGTERM, then
    /// stopped as for Ctrl-C ([`crate::vm_signals`]); an image is stopped.
    pub duration: Option<Duration>,
}

/// The result of a finished `record --vm`.
#[derive(Debug)]
pub struct VmRecordOutcome {
    pub summary: Summary,
    pub choice: SamplingChoice,
    /// How the guest ended.
    pub outcome: Outcome,
    pub run: VmRunFacts,
    pub output: PathBuf,
}

/// A summary of the VM side, for the closing message.
#[derive(Clone, Debug, Default)]
pub struct VmRunFacts {
    pub elapsed: Duration,
    pub snapshots: u64,
    /// Snapshots per vCPU index.
    pub vcpu_snapshots: std::collections::BTreeMap<u32, u64>,
    /// Snapshots taken by the guest's agent, per vCPU index.
    pub agent_snapshots: std::collections::BTreeMap<u32, u64>,
    /// Snapshots lost to a full snapshot channel.
    pub lost_snapshots: u64,
    /// Snapshots the guest's agent dropped (its ring was full), per vCPU index.
    pub agent_lost: std::collections::BTreeMap<u32, u64>,
    /// Notes of the recording that deserve a warning (the guest agent lost snapshots, or
    /// never sent any).
    pub warnings: Vec<String>,
    pub vcpu_threads: Vec<VcpuThread>,
    /// The snapshot rate asked for and obtained, when the backend has one.
    pub rate: Option<SnapshotRate>,
    /// The signal (SIGINT or SIGTERM) that stopped the recording, if one did.
    pub stop_signal: Option<i32>,
}

/// Requested and effective guest snapshot rates (per vCPU, over the run's wall time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotRate {
    pub budget: SnapshotBudget,
    /// Snapshots per second per vCPU, over the wall time of the run.
    pub effective_hz: f64,
    /// Intervals stretched by the overhead budget, all vCPUs.
    pub stretched_intervals: u64,
}

impl SnapshotRate {
    /// One line for the user and the recording's notes.
    pub fn describe(&self) -> String {
        let b = &self.budget;
        let mut s = match b.instruction_period {
            None => format!(
                "guest snapshots: {} Hz requested, {:.1} Hz effective per vCPU",
                b.requested_hz, self.effective_hz
            ),
            Some(period) => format!(
                "guest snapshots: {} Hz requested (exact mode: one every {period} guest \
                 instructions), {:.1} Hz per vCPU of wall time",
                b.requested_hz, self.effective_hz
            ),
        };
        match b.overhead_percent {
            Some(p) if self.stretched_intervals > 0 => s.push_str(&format!(
                " ({} intervals stretched to keep the LBR emulation within {p}% of the \
                 time; --lbr-overhead)",
                self.stretched_intervals
            )),
            Some(p) => s.push_str(&format!(" (within the {p}% overhead budget)")),
            None => s.push_str(" (not throttled)"),
        }
        s
    }
}

/// The guest mappings of an ELF image: one per executable `PT_LOAD` segment, at its
/// virtual address. A non-ELF image (multiboot) gets one mapping of the whole file at the
/// address its first loadable segment asks for, when that can be found; else none.
pub fn guest_mappings(image: &[u8], path: &Path, time_ns: u64) -> Vec<Mapping> {
    use object::{Object, ObjectSegment, SegmentFlags};
    let build_id = lbrprof_vmm::builtin::build_id(image);
    let Ok(file) = object::File::parse(image) else {
        return Vec::new();
    };
    file.segments()
        .filter(|s| match s.flags() {
            SegmentFlags::Elf { p_flags, .. } => p_flags.0 & object::elf::PF_X.0 != 0,
            _ => true,
        })
        .filter(|s| s.size() > 0)
        .map(|s| Mapping {
            time_ns,
            space: AddressSpace::Guest { vm: VM_INDEX },
            pid: VM_INDEX,
            start: s.address(),
            len: s.size(),
            pgoff: s.file_range().0,
            path: path.display().to_string(),
            build_id: build_id.clone(),
        })
        .collect()
}

/// What a Linux program's processes tell the recorder, as events, each at the time it
/// happened: each process (with its address space's id and page-table roots), every
/// executable file mapping it made ([`program_mapping`]), and which address space each
/// vCPU runs from when on.
pub fn program_events(events: &[lbrprof_vmm::linux::TimedGuestEvent]) -> Vec<Event> {
    use lbrprof_vmm::linux::GuestEvent;
    let mut build_ids = BuildIds::default();
    let mut out = Vec::with_capacity(events.len());
    for t in events {
        let time_ns = t.time_ns;
        let event = match &t.event {
            GuestEvent::Map(m) => match program_mapping(m, time_ns, &mut build_ids) {
                Some(m) => Event::Mapping(m),
                None => continue,
            },
            GuestEvent::Process(p) => {
                out.push(Event::GuestProcess(GuestProcess {
                    time_ns,
                    vm: VM_INDEX,
                    space: p.space,
                    pid: p.pid as u32,
                    ppid: p.ppid as u32,
                    comm: p.comm.clone(),
                    exe: p.exe.display().to_string(),
                    roots: p.roots.to_vec(),
                }));
                // Every address space has the shim's trap stubs (the system calls'
                // and exceptions' entry points), supervisor-only, at one address.
                Event::Mapping(trap_stubs_mapping(p.space, time_ns))
            }
            &GuestEvent::Runs { vcpu, space } => Event::VcpuSpace(VcpuSpace {
                time_ns,
                vm: VM_INDEX,
                vcpu,
                space,
            }),
        };
        out.push(event);
    }
    out
}

/// The trap stub page of guest address space `space`, as the module
/// [`lbrprof_vmm::linux::trapsyms::MODULE`] whose image the symbolizer is given.
fn trap_stubs_mapping(space: u32, time_ns: u64) -> Mapping {
    use lbrprof_vmm::linux::trapsyms;
    Mapping {
        time_ns,
        space: AddressSpace::Guest { vm: VM_INDEX },
        pid: space,
        start: trapsyms::STUBS_VA,
        len: lbrprof_vmm::linux::abi::PAGE,
        pgoff: trapsyms::TEXT_OFFSET,
        path: trapsyms::MODULE.to_owned(),
        build_id: Some(trapsyms::image().build_id.clone()),
    }
}

/// Build-ids read so far, by path (a program maps each library several times).
type BuildIds = HashMap<PathBuf, Option<Vec<u8>>>;

/// A guest mapping of a Linux program, as perf's MMAP2 record gives it, when it is code:
/// an executable file mapping (the program, its interpreter, its libraries) or anonymous
/// code (`//anon`, what a JIT made executable). Its `pid` is the address space's id.
pub fn program_mapping(
    m: &lbrprof_vmm::linux::mm::MapRecord,
    time_ns: u64,
    build_ids: &mut BuildIds,
) -> Option<Mapping> {
    if !m.executable || m.len == 0 {
        return None;
    }
    // Anonymous code (`//anon`, a JIT's) has no file to read a build-id from.
    let anonymous = m.path.as_os_str() == lbrprof_vmm::linux::mm::MapRecord::ANONYMOUS;
    // The shim's vDSO is no file: its build-id is the image's, which the symbolizer is
    // given to read it by.
    let vdso = m.path.as_os_str() == "[vdso]";
    let build_id = build_ids
        .entry(m.path.clone())
        .or_insert_with(|| {
            if vdso {
                Some(lbrprof_vmm::linux::vdso::image().build_id.clone())
            } else if anonymous {
                None
            } else {
                crate::sampler::convert::read_build_id(&m.path)
            }
        })
        .clone();
    Some(Mapping {
        time_ns,
        space: AddressSpace::Guest { vm: VM_INDEX },
        pid: m.space,
        start: m.start,
        len: m.len,
        pgoff: m.offset,
        path: m.path.display().to_string(),
        build_id,
    })
}

/// Records a guest run; see the module docs.
pub fn record_vm(
    opts: VmRecordOptions,
    facts: &HostFacts,
    lbr: &dyn GuestLbr,
) -> Result<VmRecordOutcome, RecordError> {
    if opts.frequency == 0 || opts.frequency > MAX_FREQUENCY {
        return Err(RecordError::BadFrequency {
            given: opts.frequency,
            max: MAX_FREQUENCY,
        });
    }
    if !opts.mmap_pages.is_power_of_two() || opts.mmap_pages > MAX_MMAP_PAGES {
        return Err(RecordError::BadMmapPages {
            given: opts.mmap_pages,
            max: MAX_MMAP_PAGES,
        });
    }
    let choice = decide(facts, opts.request.clone())?;
    let VmRecordOptions {
        output,
        frequency,
        request: _,
        mmap_pages,
        image,
        vm: mut vm_config,
        replace,
        duration,
    } = opts;
    let vcpus = vm_config.vcpus;
    let start_monotonic_ns = sys::monotonic_ns();
    let target = Target::Vm {
        image: image.spec.clone(),
        vcpus,
        backend: lbr.backend(),
        mode: lbr.mode().to_owned(),
    };
    let header = crate::record::header(facts, &choice, frequency, None, start_monotonic_ns, target);
    let writer = RecordingWriter::create_with(&output, &header, replace).map_err(|source| {
        RecordError::Output {
            path: output.clone(),
            source,
        }
    })?;
    let sink = writer.sink();
    if image.program.is_none() {
        for m in guest_mappings(&image.bytes, &image.path, start_monotonic_ns) {
            sink.send(Event::Mapping(m));
        }
    }
    let guest = match &image.program {
        Some(p) => lbrprof_vmm::Guest::Linux(p),
        None => lbrprof_vmm::Guest::Image(&image.bytes),
    };

    let config = SamplerConfig {
        event: choice.event.clone(),
        more_events: choice.more_events.clone(),
        frequency,
        period: None,
        branch_stacks: choice.branch_stacks,
        call_graph: choice.call_graph,
        kernel: choice.kernel,
        ring_pages_exp: mmap_pages.trailing_zeros() as u8,
    };
    let (snap_sink, snap_rx) = SnapshotSink::bounded(SNAPSHOT_CHANNEL_CAPACITY);
    let (thread_tx, thread_rx) = crossbeam_channel::unbounded();
    vm_config.vcpu_threads = Some(thread_tx);
    // A Linux program's mappings as it makes them, written in order with the snapshots.
    let (maps_tx, maps_rx) = crossbeam_channel::unbounded();
    vm_config.guest_events = Some(lbrprof_vmm::linux::GuestEventSink::new(maps_tx));
    vm_config.phases = Some(std::sync::Arc::new(PhaseBoard::new()));
    let linux = image.program.is_some();
    let result = GuestSignals::install(&mut vm_config, linux, duration)
        .map_err(|source| RecordError::System {
            what: "install signal handlers",
            source,
        })
        .and_then(|mut signals| {
            let r = run_sampled(
                vm_config,
                guest,
                lbr,
                &snap_sink,
                &config,
                &sink,
                &snap_rx,
                &thread_rx,
                &maps_rx,
                &mut signals,
            );
            r.map(|(mut report, stats, mut facts)| {
                report.outcome = signals.outcome(report.outcome);
                facts.stop_signal = signals.stop_signal();
                (report, stats, facts)
            })
        });
    let (report, sampler_stats, mut run) = match result {
        Ok(r) => r,
        Err(e) => {
            // Nothing useful was recorded: leave no file behind, and the target as it was.
            writer.abandon();
            return Err(e);
        }
    };
    let lost_snapshots = snap_sink.lost();
    run.lost_snapshots = lost_snapshots;
    let now = sys::monotonic_ns();
    if lost_snapshots > 0 {
        sink.send(Event::Loss(Loss {
            time_ns: now,
            kind: LossKind::ChannelFull,
            count: lost_snapshots,
            tid: None,
        }));
    }
    for p in snap_sink.take_profiles() {
        sink.send(Event::ExactProfile(exact_profile(p)));
    }
    let mut frozen = 0;
    let mut stretched = 0;
    for v in &report.vcpus {
        let c = lbr.counters(v.vcpu);
        frozen += c.frozen_events;
        stretched += c.stretched_intervals;
        if c.agent_lost > 0 {
            run.agent_lost.insert(v.vcpu, c.agent_lost);
            // The agent's ring is that vCPU's snapshot channel.
            sink.send(Event::Loss(Loss {
                time_ns: now,
                kind: LossKind::ChannelFull,
                count: c.agent_lost,
                tid: Some(v.vcpu),
            }));
        }
        sink.send(Event::VcpuStats(VcpuStats {
            vm: VM_INDEX,
            vcpu: v.vcpu,
            exits: v.exits.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            run_ns: v.run_ns,
            // Time in the vCPU hook is the LBR's: tracing, and the snapshots within it.
            trace_ns: if c.trace_ns > 0 {
                c.trace_ns
            } else {
                v.hook_ns
            },
            snapshot_ns: c.snapshot_ns,
            instructions: c.instructions,
            branches: c.branches,
            snapshots: run.vcpu_snapshots.get(&v.vcpu).copied().unwrap_or(0),
            // The agent's losses are the vCPU's; the shim's channel's, shared by all,
            // are charged to vCPU 0.
            lost_snapshots: c.agent_lost + if v.vcpu == 0 { lost_snapshots } else { 0 },
            frozen_events: c.frozen_events,
        }));
    }
    let mut notes = vec![format!("sampling: {}", choice.reason)];
    run.elapsed = report.elapsed;
    run.rate = lbr.snapshot_budget().map(|budget| {
        let secs = report.elapsed.as_secs_f64();
        let vcpus = report.vcpus.len().max(1) as f64;
        SnapshotRate {
            budget,
            effective_hz: if secs > 0.0 {
                run.snapshots as f64 / vcpus / secs
            } else {
                0.0
            },
            stretched_intervals: stretched,
        }
    });
    if let Some(rate) = &run.rate {
        notes.push(rate.describe());
    }
    let (source, warnings) = source_notes(lbr.snapshot_source(), &run);
    notes.extend(source);
    notes.extend(warnings.iter().cloned());
    run.warnings = warnings;
    if sampler_stats.lost > 0 {
        notes.push(format!(
            "{} records lost: the ring buffers overflowed (lower -F or raise -m)",
            sampler_stats.lost
        ));
    }
    if lost_snapshots > 0 {
        notes.push(format!(
            "{lost_snapshots} guest snapshots lost: the snapshot channel was full"
        ));
    }
    if frozen > 0 {
        notes.push(format!(
            "{frozen} guest branches retired while the LBR was frozen"
        ));
    }
    match &report.outcome {
        Outcome::Crashed(c) => {
            notes.push(format!("guest crashed on vCPU {}: {}", c.vcpu, c.reason))
        }
        Outcome::TimedOut(t) if linux => notes.push(format!(
            "the program did not end on SIGTERM at the {:.3} s --duration: stopped",
            t.as_secs_f64()
        )),
        Outcome::TimedOut(t) => notes.push(format!(
            "guest stopped after the {:.3} s timeout",
            t.as_secs_f64()
        )),
        Outcome::Stopped => {
            let signal = match run.stop_signal {
                Some(libc::SIGTERM) => "SIGTERM",
                Some(libc::SIGINT) => "SIGINT (Ctrl-C)",
                _ => "a signal",
            };
            notes.push(if linux {
                format!("the program did not end on {signal} to lbrprof: stopped")
            } else {
                format!("stopped by {signal} to lbrprof")
            })
        }
        Outcome::Signaled { signal, crash } => notes.push(format!(
            "the program was killed by signal {signal}: {}",
            crash.reason
        )),
        Outcome::Exited(_) | Outcome::PowerOff => {}
    }
    let summary = Summary {
        event_samples: Vec::new(),
        duration_ns: now.saturating_sub(start_monotonic_ns),
        samples: sampler_stats.samples,
        snapshots: run.snapshots,
        lost: sampler_stats.lost,
        throttled: sampler_stats.throttled,
        exit_status: Some(match (&report.outcome, run.stop_signal) {
            // As the host path records a stopped command: 128 + the signal.
            (Outcome::Stopped, Some(signal)) => 128 + signal,
            (outcome, _) => i32::from(outcome.exit_code()),
        }),
        notes,
        runs: Vec::new(),
    };
    writer
        .finish(&summary)
        .map_err(|source| RecordError::Finish {
            path: output.clone(),
            source,
        })?;
    Ok(VmRecordOutcome {
        summary,
        choice,
        outcome: report.outcome,
        run,
        output,
    })
}

/// What the recording's notes say about where its snapshots came from, and (as warnings)
/// what the guest's agent lost or failed to send.
fn source_notes(source: SnapshotSource, run: &VmRunFacts) -> (Vec<String>, Vec<String>) {
    let per_vcpu = |m: &std::collections::BTreeMap<u32, u64>| {
        m.iter()
            .map(|(v, n)| format!("vCPU {v}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (mut notes, mut warnings) = (Vec::new(), Vec::new());
    let agent: u64 = run.agent_snapshots.values().sum();
    match source {
        SnapshotSource::Shim => {
            if let (Some(rate), 0) = (&run.rate, run.snapshots) {
                warnings.push(format!(
                    "no guest snapshot was taken: the guest ended ({:.3} s) before the first \
                     one was due ({} Hz asked); run a longer workload or raise --lbr-freq",
                    run.elapsed.as_secs_f64(),
                    rate.budget.requested_hz
                ));
            }
        }
        SnapshotSource::Agent { period } if agent == 0 => warnings.push(format!(
            "guest snapshots: no snapshot came from the guest's LBR agent (rt.agent={period}): \
             the guest does not run one, or ran too briefly (lbrprof's guest runtime starts it \
             on every vCPU that runs ring-3 code)"
        )),
        SnapshotSource::Agent { period } => notes.push(format!(
            "guest snapshots: {agent} by the guest's LBR agent, every {period} ring-3 \
             instructions ({})",
            per_vcpu(&run.agent_snapshots)
        )),
    }
    let lost: u64 = run.agent_lost.values().sum();
    if lost > 0 {
        warnings.push(format!(
            "{lost} guest snapshots lost: the guest agent's ring was full before the shim \
             drained it ({})",
            per_vcpu(&run.agent_lost)
        ));
    }
    (notes, warnings)
}

/// Starts the VM thread, opens the events on it, runs the VM and drains until it ends.
#[allow(clippy::too_many_arguments)]
fn run_sampled(
    vm_config: VmConfig,
    image: lbrprof_vmm::Guest<'_>,
    lbr: &dyn GuestLbr,
    snap_sink: &SnapshotSink,
    config: &SamplerConfig,
    sink: &EventSink,
    snap_rx: &Receiver<LbrSnapshot>,
    thread_rx: &Receiver<VcpuThreadInfo>,
    maps_rx: &Receiver<lbrprof_vmm::linux::TimedGuestEvent>,
    signals: &mut GuestSignals,
) -> Result<(RunReport, crate::sampler::RingStats, VmRunFacts), RecordError> {
    let hooks = |vcpu: u32| lbr.hook(vcpu, snap_sink);
    let phases = vm_config.phases.clone();
    std::thread::scope(|scope| {
        let (tid_tx, tid_rx) = mpsc::channel::<u32>();
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        let vm_thread = std::thread::Builder::new()
            .name("lbrprof-vm".into())
            .spawn_scoped(scope, move || -> Option<Result<RunReport, VmError>> {
                let _ = tid_tx.send(gettid());
                if !go_rx.recv().unwrap_or(false) {
                    return None;
                }
                Some(Vm::run_guest(vm_config, image, &hooks))
            })
            .map_err(|source| RecordError::System {
                what: "start the VM thread",
                source,
            })?;
        let tid = tid_rx.recv().map_err(|_| RecordError::System {
            what: "start the VM thread",
            source: std::io::Error::other("the VM thread ended before it started"),
        })?;
        let target = SampleTarget::Threads {
            tids: vec![tid],
            inherit: true,
        };
        let mut sampler = match HostSampler::open(config, &target) {
            Ok(s) => s,
            Err(e) => {
                let _ = go_tx.send(false);
                return Err(e.into());
            }
        };
        // The mappings of this process (the shim is lbrprof itself): no MMAP records
        // come for what was mapped before the events were opened.
        let pid = std::process::id();
        if let Ok(events) =
            procfs::synthesize(pid, &[tid], sys::monotonic_ns(), sampler.converter())
        {
            for e in events {
                sampler.observe(&e);
                sink.send(e);
            }
        }
        if let Err(e) = sampler.enable() {
            let _ = go_tx.send(false);
            return Err(e.into());
        }
        let _ = go_tx.send(true);

        let mut facts = VmRunFacts::default();
        // The shim's phase at each vCPU thread's sample, looked up while the phase logs
        // still hold that time (they keep the last few hundred milliseconds or more).
        let placed = std::cell::RefCell::new(HashMap::<u32, Vec<(u64, ShimPhase)>>::new());
        let send = |e: Event| {
            if let (Event::Sample(s), Some(board)) = (&e, &phases)
                && let Some(phase) = board.log(s.tid).and_then(|l| l.phase_at(s.time_ns))
            {
                placed
                    .borrow_mut()
                    .entry(s.tid)
                    .or_default()
                    .push((s.time_ns, phase));
            }
            sink.send(e)
        };
        let mut drained = Vec::new();
        let mut pass = |sampler: &mut HostSampler, facts: &mut VmRunFacts| {
            sampler.drain(&mut |e| drained.push(e));
            // The guest's events before the samples just drained: the shim sends each
            // one before the vCPU runs what it announces (a new program's mappings, the
            // address space a vCPU runs), so every sample that needs one is in this
            // drain or a later one.
            let told: Vec<_> = maps_rx.try_iter().collect();
            for e in program_events(&told) {
                sink.send(e);
            }
            for e in drained.drain(..) {
                send(e);
            }
            for (tid, samples) in placed.borrow_mut().drain() {
                sink.send(Event::SamplePhases(SamplePhases {
                    vm: VM_INDEX,
                    tid,
                    samples,
                }));
            }
            for t in thread_rx.try_iter() {
                let v = VcpuThread {
                    time_ns: t.time_ns,
                    vm: VM_INDEX,
                    vcpu: t.vcpu,
                    pid: t.pid,
                    tid: t.tid,
                };
                facts.vcpu_threads.push(v);
                sink.send(Event::Vcpu(v));
            }
            // Snapshots after the guest's events told above: a snapshot taken after the
            // last of them can only hold addresses of code mapped before it.
            let told: Vec<_> = maps_rx.try_iter().collect();
            for e in program_events(&told) {
                sink.send(e);
            }
            for s in snap_rx.try_iter() {
                facts.snapshots += 1;
                *facts.vcpu_snapshots.entry(s.vcpu).or_default() += 1;
                if s.reason == SnapshotReason::Agent {
                    *facts.agent_snapshots.entry(s.vcpu).or_default() += 1;
                }
                sink.send(Event::Snapshot(s));
            }
        };
        let mut fds = sampler.poll_fds();
        fds.push(signals.fd());
        while !vm_thread.is_finished() {
            // Errors of poll only shorten the wait; draining on the timer still works.
            let _ = sys::poll_readable(&fds, DRAIN_INTERVAL_MS);
            signals.pass();
            pass(&mut sampler, &mut facts);
        }
        let disabled = sampler.disable();
        let joined = vm_thread.join();
        pass(&mut sampler, &mut facts);
        let report = match joined {
            Ok(Some(Ok(report))) => report,
            Ok(Some(Err(e))) => return Err(RecordError::Vm(e)),
            Ok(None) | Err(_) => {
                return Err(RecordError::System {
                    what: "run the VM",
                    source: std::io::Error::other("the VM thread panicked"),
                });
            }
        };
        disabled?;
        Ok((report, sampler.stats(), facts))
    })
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// The shim's exact-mode profile of a vCPU as the recording stores it.
fn exact_profile(p: lbrprof_vmm::pmu::profile::ExactProfile) -> ExactProfile {
    ExactProfile {
        vm: VM_INDEX,
        vcpu: p.vcpu,
        runs: p
            .runs
            .iter()
            .map(|r| (r.start, r.instructions, r.ends_taken, r.count))
            .collect(),
        calls: p
            .calls
            .iter()
            .map(|c| (c.site, c.target, c.count, c.inclusive))
            .collect(),
        instructions: p.instructions,
        other_instructions: p.other_instructions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest program mappings carry their file's build-id (read from its notes, once per
    /// file); data mappings and unreadable files are left out or get none.
    #[test]
    fn program_mappings_carry_build_ids() {
        use lbrprof_vmm::linux::mm::MapRecord;
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let want = lbrprof_vmm::builtin::build_id(&bytes);
        assert!(want.is_some(), "the test binary has a build-id");
        let map = |path: &std::path::Path, start, executable| MapRecord {
            space: 7,
            start,
            len: 0x1000,
            path: path.to_owned(),
            offset: 0,
            executable,
        };
        let maps = [
            map(&exe, 0x1000, true),
            map(&exe, 0x5000, true),
            map(&exe, 0x9000, false),
            map(std::path::Path::new("/nonexistent/lib.so"), 0xa000, true),
        ];
        let mut ids = BuildIds::default();
        let out: Vec<_> = maps
            .iter()
            .filter_map(|m| program_mapping(m, 42, &mut ids))
            .collect();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].build_id, want);
        assert_eq!(out[1].build_id, want);
        assert_eq!((out[1].pid, out[1].start, out[1].time_ns), (7, 0x5000, 42));
        assert_eq!(out[2].build_id, None);
    }

    #[test]
    fn snapshot_rates_say_whether_the_budget_lowered_them() {
        let rate = |overhead_percent, stretched_intervals| SnapshotRate {
            budget: SnapshotBudget {
                requested_hz: 999,
                overhead_percent,
                instruction_period: None,
            },
            effective_hz: 31.25,
            stretched_intervals,
        };
        assert_eq!(
            rate(Some(10), 7).describe(),
            "guest snapshots: 999 Hz requested, 31.2 Hz effective per vCPU (7 intervals \
             stretched to keep the LBR emulation within 10% of the time; --lbr-overhead)"
        );
        assert!(
            rate(Some(10), 0)
                .describe()
                .ends_with("(within the 10% overhead budget)")
        );
        assert!(rate(None, 0).describe().ends_with("(not throttled)"));
        // Exact mode counts instructions, not time: say so, and what the wall rate is.
        let mut exact = rate(None, 0);
        exact.budget.instruction_period = Some(10_000);
        assert_eq!(
            exact.describe(),
            "guest snapshots: 999 Hz requested (exact mode: one every 10000 guest \
             instructions), 31.2 Hz per vCPU of wall time (not throttled)"
        );
    }

    #[test]
    fn notes_name_the_agent_and_its_losses_per_vcpu() {
        let mut run = VmRunFacts::default();
        let none: (Vec<String>, Vec<String>) = Default::default();
        assert_eq!(source_notes(SnapshotSource::Shim, &run), none);
        // A sampled run that ended before its first snapshot says so.
        run.rate = Some(SnapshotRate {
            budget: SnapshotBudget {
                requested_hz: 999,
                overhead_percent: Some(10),
                instruction_period: None,
            },
            effective_hz: 0.0,
            stretched_intervals: 0,
        });
        let (_, warnings) = source_notes(SnapshotSource::Shim, &run);
        assert!(
            warnings[0].starts_with("no guest snapshot was taken"),
            "{warnings:?}"
        );
        run.rate = None;
        let agent = SnapshotSource::Agent { period: 500 };
        let (notes, warnings) = source_notes(agent, &run);
        assert!(notes.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("no snapshot came from the guest's LBR agent (rt.agent=500)"),
            "{warnings:?}"
        );
        run.agent_snapshots.insert(0, 7);
        run.agent_snapshots.insert(1, 5);
        run.agent_lost.insert(1, 3);
        let (notes, warnings) = source_notes(agent, &run);
        assert_eq!(
            notes,
            [
                "guest snapshots: 12 by the guest's LBR agent, every 500 ring-3 instructions \
              (vCPU 0: 7, vCPU 1: 5)"
            ]
        );
        assert_eq!(
            warnings,
            [
                "3 guest snapshots lost: the guest agent's ring was full before the shim \
              drained it (vCPU 1: 3)"
            ]
        );
    }

    #[test]
    fn builtin_images_get_one_executable_guest_mapping_with_build_id() {
        let img = lbrprof_vmm::builtin::image("sort").unwrap();
        let maps = guest_mappings(img, Path::new("/tmp/sort.elf"), 5);
        assert!(!maps.is_empty());
        for m in &maps {
            assert_eq!(m.space, AddressSpace::Guest { vm: 0 });
            assert_eq!(m.path, "/tmp/sort.elf");
            assert_eq!(m.build_id.as_ref().map(Vec::len), Some(20));
            assert!(m.len > 0 && m.start > 0);
        }
        // The entry point is inside one of them.
        let entry = object::File::parse(img)
            .map(|f| object::Object::entry(&f))
            .unwrap();
        assert!(
            maps.iter()
                .any(|m| (m.start..m.start + m.len).contains(&entry))
        );
    }

    #[test]
    fn guest_processes_come_before_their_mappings_which_carry_the_space_id() {
        use lbrprof_vmm::linux::mm::MapRecord;
        use lbrprof_vmm::linux::{GuestEvent, ProcessRecord};
        let at = |time_ns, event| lbrprof_vmm::linux::TimedGuestEvent { time_ns, event };
        let map = |space, exec| {
            GuestEvent::Map(MapRecord {
                space,
                start: 0x40_0000,
                len: 0x1000,
                path: "/bin/true".into(),
                offset: 0,
                executable: exec,
            })
        };
        let events = [
            at(
                9,
                GuestEvent::Process(ProcessRecord {
                    space: 2,
                    pid: 7,
                    ppid: 6,
                    comm: "true".into(),
                    exe: "/bin/true".into(),
                    roots: [0x1000, 0x2000],
                }),
            ),
            at(10, map(2, true)),
            at(11, map(2, false)),
            at(12, GuestEvent::Runs { vcpu: 1, space: 2 }),
        ];
        let out = program_events(&events);
        assert_eq!(out.len(), 4, "the data mapping is not an executable one");
        let Event::GuestProcess(p) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (p.space, p.pid, p.ppid, p.roots.clone()),
            (2, 7, 6, vec![0x1000, 0x2000])
        );
        // Every space has the shim's trap stubs, named by their image.
        let Event::Mapping(stubs) = &out[1] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (stubs.pid, stubs.path.as_str(), stubs.time_ns),
            (2, lbrprof_vmm::linux::trapsyms::MODULE, 9)
        );
        assert_eq!(
            stubs.build_id.as_deref(),
            Some(&lbrprof_vmm::linux::trapsyms::image().build_id[..])
        );
        let Event::Mapping(m) = &out[2] else {
            panic!("{out:?}")
        };
        assert_eq!((m.pid, m.space), (2, AddressSpace::Guest { vm: 0 }));
        // Each at its own time, the vCPU's space last.
        assert_eq!((p.time_ns, m.time_ns), (9, 10));
        assert_eq!(
            out[3],
            Event::VcpuSpace(VcpuSpace {
                time_ns: 12,
                vm: 0,
                vcpu: 1,
                space: 2
            })
        );
    }

    struct NoLbr;

    impl GuestLbr for NoLbr {
        fn backend(&self) -> LbrBackend {
            LbrBackend::Emulated
        }
        fn mode(&self) -> &str {
            "sampled"
        }
        fn hook(&self, _vcpu: u32, _sink: &SnapshotSink) -> Box<dyn VcpuHook> {
            Box::new(lbrprof_vmm::NoopHook)
        }
        fn counters(&self, _vcpu: u32) -> LbrCounters {
            LbrCounters::default()
        }
    }

    fn options(dir: &Path, frequency: u64, mmap_pages: u32) -> VmRecordOptions {
        VmRecordOptions {
            output: dir.join("out.data"),
            frequency,
            request: SamplingRequest {
                event: crate::host::EventRequest::Auto,
                more_events: Vec::new(),
                branches: crate::host::BranchRequest::Auto,
                call_graph: crate::host::CallGraph::Fp,
            },
            mmap_pages,
            image: GuestImage {
                spec: "builtin:sort".into(),
                bytes: Vec::new(),
                path: dir.join("sort"),
                program: None,
            },
            vm: VmConfig::new(64 << 20, 1),
            replace: Replace::KeepOld,
            duration: None,
        }
    }

    #[test]
    fn bad_options_fail_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let facts = HostFacts::default();
        let err = record_vm(options(dir.path(), 0, 8), &facts, &NoLbr).unwrap_err();
        assert!(
            matches!(err, RecordError::BadFrequency { given: 0, .. }),
            "{err}"
        );
        let err = record_vm(options(dir.path(), 99, 3), &facts, &NoLbr).unwrap_err();
        assert!(
            matches!(err, RecordError::BadMmapPages { given: 3, .. }),
            "{err}"
        );
        assert!(!dir.path().join("out.data").exists());
    }

    #[test]
    fn garbage_has_no_mappings() {
        assert!(guest_mappings(b"not an elf", Path::new("x"), 0).is_empty());
        assert!(guest_mappings(&[], Path::new("x"), 0).is_empty());
    }
}
