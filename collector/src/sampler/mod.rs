//! Host sampling with `perf_event_open`, through the `perf-event-open` crate.
//!
//! [`HostSampler`] opens one sampling event per online CPU for the target (a process
//! followed through `inherit`, or a list of threads), each CPU with one mmapped ring
//! buffer (the events of further threads on that CPU are redirected into it with
//! `PERF_EVENT_IOC_SET_OUTPUT`, as `perf record` does), and converts what the kernel
//! writes there into the recording model's [`Event`]s:
//!
//! * samples, read as raw record bytes and decoded by the data crate's one decoder of
//!   perf's sample layout (the perf.data reader's, [`lbrprof_data::perfdata::decode_ring_sample`]):
//!   IP, PID/TID, CPU, CLOCK_MONOTONIC time, period, user+kernel call chain (context
//!   markers stripped, each frame keeps its [`lbrprof_data::model::CpuMode`]), and the branch
//!   stack when LBR sampling was chosen;
//! * side-band records, decoded from their bytes by the same reader's decoder of perf's
//!   records ([`lbrprof_data::perfdata::decode_ring_sideband`]): MMAP2 (executable only) with the
//!   kernel's build-id, or the file's when the kernel gave none; COMM (an exec when the
//!   kernel flags it so), FORK, EXIT;
//! * LOST, LOST_SAMPLES and THROTTLE, counted in [`RingStats`] and kept as
//!   [`lbrprof_data::model::Loss`].
//!
//! The `perf-event-open` crate opens the events and maps and walks their ring buffers; it
//! decodes none of their records.
//!
//! Tasks that existed before we attached (`-p`/`-t`) get their mappings and names from
//! procfs ([`procfs`]), since the kernel only reports new ones.
//!
//! With `--call-graph dwarf` each sample also carries the user registers and a copy of
//! the user stack; [`HostSampler::drain`] unwinds it ([`lbrprof_data::dwarf`]) when the sample
//! leaves in time order, after the mappings it needs, and passes on only the call chain.
//!
//! Several events (`record -e A,B`): each is opened for every task and CPU and sends its
//! records to the same ring buffer of its CPU (perf does the same without a group);
//! samples carry the event's id (PERF_SAMPLE_ID, which an inherited event reports as
//! its parent's), and [`HostSampler::drain`] turns it into the event's index
//! ([`lbrprof_data::model::HostSample::event`]), its place in `[event, more_events...]`.
//!
//! Policy (which event, branch stacks or not) is decided elsewhere
//! ([`crate::host::decide`]); this module only carries it out.

mod abi;
pub mod convert;
pub mod procfs;

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use perf_event_open::config::{
    CallChain, Cpu, EntryFormat, ExtraRecord, Inherit, Lbr, Mmap, OnExecve, Opts, Priv, Proc,
    RecordIdFormat, RegsMask, SampleFormat, SampleOn, Size, TargetPriv, UseBuildId, WakeUp,
    WakeUpOn,
};
use perf_event_open::count::Counter;
use perf_event_open::event::hw::Hardware;
use perf_event_open::event::sw::Software;
use perf_event_open::event::tp::Tracepoint;
use perf_event_open::sample::Sampler;

use crate::host::{CallGraph, EventKind, HardwareEvent, SoftwareEvent};
use convert::{Converted, Converter};
use lbrprof_data::dwarf::{EventUnwinder, StackCopy, UnwindStats};
use lbrprof_data::model::{Event, LossKind};
use lbrprof_data::perfdata::RingSample;
use lbrprof_data::perfdata::abi::PERF_RECORD_SAMPLE;

/// How to sample (already decided; see [`crate::host::decide`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplerConfig {
    pub event: EventKind,
    /// Further events sampled on the same rings (`-e A,B`), in order.
    pub more_events: Vec<EventKind>,
    /// Samples per second per thread.
    pub frequency: u64,
    /// Sample every `period` events instead (`-c`), when set.
    pub period: Option<u64>,
    pub branch_stacks: bool,
    pub call_graph: CallGraph,
    /// Include kernel IPs and kernel call chains.
    pub kernel: bool,
    /// Ring buffer size per CPU: 2^`ring_pages_exp` pages.
    pub ring_pages_exp: u8,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            event: EventKind::CpuClock,
            more_events: Vec::new(),
            frequency: 999,
            period: None,
            branch_stacks: false,
            call_graph: CallGraph::Fp,
            kernel: true,
            ring_pages_exp: 7,
        }
    }
}

/// Whom to sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SampleTarget {
    /// A process and everything it starts (threads and children, through `inherit`).
    /// With `enable_on_exec` the events start at its next `execve` (the `record -- CMD`
    /// case: the child is opened while it waits to exec).
    Process { pid: u32, enable_on_exec: bool },
    /// Existing threads (`-p` gives all threads of a process, `-t` one). With `inherit`
    /// the threads and processes they create later are followed too.
    Threads { tids: Vec<u32>, inherit: bool },
    /// Every task on these CPUs (system-wide, perf's `-a` / `-C`).
    Cpus { cpus: Vec<u32> },
}

/// Why sampling could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    #[error(
        "no permission to sample {target} with perf_event_open: it belongs to another user, \
         or perf_event_paranoid ({paranoid}) forbids it; run as root or with CAP_PERFMON, or \
         lower it with `sysctl kernel.perf_event_paranoid=1` (your own commands, `record -- \
         CMD`, may still work; `lbrprof info` shows what this host allows)"
    )]
    Permission {
        target: String,
        paranoid: String,
        #[source]
        source: io::Error,
    },
    #[error("CPU {0} is not online (see /sys/devices/system/cpu/online)")]
    CpuOffline(u32),
    #[error("too many open files: one perf event per thread and CPU is needed (raise `ulimit -n`)")]
    TooManyFiles(#[source] io::Error),
    #[error("no such process or thread {0}")]
    NoSuchTask(u32),
    #[error("the {event} event is not supported on this host")]
    EventUnsupported {
        event: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the {event} event on CPU {cpu} for {target}")]
    Open {
        event: String,
        cpu: u32,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot map the perf ring buffer (use a smaller -m, or raise kernel.perf_event_mlock_kb)"
    )]
    Mmap(#[source] io::Error),
    #[error("cannot {what} the sampling events")]
    Control {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the online CPU list")]
    Cpus(#[source] io::Error),
}

/// Counts of what the ring buffers delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub samples: u64,
    /// Records the kernel dropped because a ring buffer was full.
    pub lost: u64,
    /// PERF_RECORD_THROTTLE records.
    pub throttled: u64,
    /// MMAP2/COMM/FORK/EXIT records.
    pub side_band: u64,
}

/// One CPU's ring buffer and the events feeding it.
struct CpuRing {
    /// Keeps the redirected events open; the first one owns `sampler`.
    counters: Vec<Counter>,
    sampler: Sampler,
}

/// Open sampling events and their ring buffers.
pub struct HostSampler {
    rings: Vec<CpuRing>,
    converter: Converter,
    stats: RingStats,
    event_name: String,
    /// Event id (PERF_EVENT_IOC_ID) → index in `[event, more_events...]`, when several.
    event_ids: std::collections::HashMap<u64, u32>,
    /// Samples read per event index.
    samples_per_event: Vec<u64>,
    /// Records read but not yet passed on (see [`HostSampler::drain`]).
    pending: Vec<Pending>,
    /// `--call-graph dwarf`: walks the samples' stack copies.
    unwinder: Option<EventUnwinder>,
    /// When the previous drain started (CLOCK_MONOTONIC ns, the records' clock).
    round_start: u64,
    /// Disabled: no more records can come.
    stopped: bool,
}

impl HostSampler {
    /// Open the events (disabled unless `enable_on_exec`, which enables them at exec).
    pub fn open(config: &SamplerConfig, target: &SampleTarget) -> Result<Self, SamplerError> {
        let online = online_cpus().map_err(SamplerError::Cpus)?;
        // `None`: every task (system-wide).
        let (tasks, inherit, on_exec): (Vec<Option<u32>>, bool, bool) = match target {
            SampleTarget::Process {
                pid,
                enable_on_exec,
            } => (vec![Some(*pid)], true, *enable_on_exec),
            SampleTarget::Threads { tids, inherit } => {
                (tids.iter().copied().map(Some).collect(), *inherit, false)
            }
            SampleTarget::Cpus { .. } => (vec![None], false, false),
        };
        let cpus = match target {
            SampleTarget::Cpus { cpus } => {
                if let Some(&off) = cpus.iter().find(|c| !online.contains(c)) {
                    return Err(SamplerError::CpuOffline(off));
                }
                cpus.clone()
            }
            _ => online,
        };
        let event_name = config.event.name();
        let events: Vec<&EventKind> = std::iter::once(&config.event)
            .chain(&config.more_events)
            .collect();
        let mut event_ids = std::collections::HashMap::new();
        let mut rings = Vec::with_capacity(cpus.len());
        for &cpu in &cpus {
            // The first task that opens owns the CPU's ring buffer; it must be mmapped
            // before other events can be redirected into it.
            let mut ring: Option<CpuRing> = None;
            for (&task, (index, &event)) in tasks
                .iter()
                .flat_map(|t| std::iter::repeat(t).zip(events.iter().enumerate()))
            {
                // Mappings and task events come from the first event only (perf's
                // tracking event), so that they are not repeated per event.
                let tracking = index == 0;
                let counter = match open_one(config, event, tracking, task, cpu, inherit, on_exec) {
                    Ok(c) => c,
                    // A thread of a `-p` process may exit while we attach; the others
                    // still count. When every task is gone, that is an error below.
                    Err(SamplerError::NoSuchTask(_)) if tasks.len() > 1 => continue,
                    Err(e) => return Err(e),
                };
                if events.len() > 1 {
                    let id = counter.id().map_err(|source| SamplerError::Control {
                        what: "identify",
                        source,
                    })?;
                    event_ids.insert(id, index as u32);
                }
                match &mut ring {
                    None => {
                        let sampler = counter
                            .sampler(config.ring_pages_exp)
                            .map_err(SamplerError::Mmap)?;
                        ring = Some(CpuRing {
                            counters: vec![counter],
                            sampler,
                        });
                    }
                    Some(ring) => {
                        abi::set_output(counter.file(), ring.counters[0].file()).map_err(
                            |source| SamplerError::Control {
                                what: "redirect",
                                source,
                            },
                        )?;
                        ring.counters.push(counter);
                    }
                }
            }
            match ring {
                Some(ring) => rings.push(ring),
                None => {
                    return Err(SamplerError::NoSuchTask(
                        tasks.first().copied().flatten().unwrap_or(0),
                    ));
                }
            }
        }
        Ok(HostSampler {
            rings,
            converter: Converter::with_fixed_period(config.period),
            stats: RingStats::default(),
            event_name,
            event_ids,
            samples_per_event: vec![0; events.len()],
            pending: Vec::new(),
            unwinder: matches!(config.call_graph, CallGraph::Dwarf { .. }).then(EventUnwinder::new),
            round_start: 0,
            stopped: false,
        })
    }

    /// The perf name of the sampled event.
    pub fn event_name(&self) -> &str {
        &self.event_name
    }

    /// Samples read so far per event, in `[event, more_events...]` order.
    pub fn samples_per_event(&self) -> &[u64] {
        &self.samples_per_event
    }

    /// Start sampling now (for attached threads; a command's events start at exec).
    pub fn enable(&self) -> Result<(), SamplerError> {
        self.control("enable", Counter::enable)
    }

    /// Stop sampling; what is in the ring buffers can still be drained, and the next
    /// [`HostSampler::drain`] passes on everything.
    pub fn disable(&mut self) -> Result<(), SamplerError> {
        self.stopped = true;
        self.control("disable", Counter::disable)
    }

    fn control(
        &self,
        what: &'static str,
        f: impl Fn(&Counter) -> io::Result<()>,
    ) -> Result<(), SamplerError> {
        for counter in self.rings.iter().flat_map(|r| &r.counters) {
            match f(counter) {
                Ok(()) => {}
                // The task is gone; its events are dead anyway.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => return Err(SamplerError::Control { what, source }),
            }
        }
        Ok(())
    }

    /// The ring buffers' file descriptors, for `poll(2)` (readable when a wake-up
    /// watermark is reached; hung up when every task of the event has exited).
    pub fn poll_fds(&self) -> Vec<RawFd> {
        self.rings
            .iter()
            .filter_map(|r| r.counters.first())
            .map(|c| c.file().as_raw_fd())
            .collect()
    }

    /// Move what the kernel has written into `out`, in time order across the CPUs' rings:
    /// side band (mappings, tasks, losses) and samples interleaved as they happened, so a
    /// consumer meets a fork before the mappings of the program the child execs, and a
    /// mapping before the samples that need it.
    ///
    /// Records are held back until a later drain proves nothing older can still arrive
    /// (perf's "finished round"): one CPU's ring may be read before another CPU writes a
    /// record older than what was already read elsewhere. Each drain passes on what is
    /// older than the start of the previous drain; after [`HostSampler::disable`] nothing
    /// more can come, and the next drain passes on everything.
    pub fn drain(&mut self, out: &mut dyn FnMut(Event)) {
        let started = crate::record::sys::monotonic_ns();
        let mut pending = std::mem::take(&mut self.pending);
        for ring in &self.rings {
            let Some(iter) = ring.sampler.iter() else {
                continue;
            };
            let layout = self.converter.layout(ring.sampler.parser());
            let mut iter = iter.into_cow();
            while let Some(raw) = iter.lending_next() {
                let bytes = raw.as_raw().as_bytes();
                if bytes.get(..4) != Some(&PERF_RECORD_SAMPLE.to_ne_bytes()[..]) {
                    let event = match self.converter.sideband(bytes, &layout) {
                        Converted::Event(event) => event,
                        Converted::Skip => continue,
                        // Not the record its attribute describes: counted as lost.
                        Converted::Malformed => {
                            self.stats.lost += 1;
                            continue;
                        }
                    };
                    drop(raw);
                    match &event {
                        Event::Loss(l) if l.kind == LossKind::Throttled => {
                            self.stats.throttled += l.count
                        }
                        Event::Loss(l) => self.stats.lost += l.count,
                        _ => self.stats.side_band += 1,
                    }
                    pending.push(Pending { event, stack: None });
                    continue;
                }
                // Samples: the data crate's decoder of perf's sample layout.
                let Ok(RingSample {
                    mut sample,
                    id,
                    stack_copy,
                }) = self.converter.sample(bytes, &layout)
                else {
                    // Shorter than the event's layout: the kernel's record is not the
                    // one asked for. Counted as a sample lost.
                    self.stats.lost += 1;
                    continue;
                };
                drop(raw);
                self.stats.samples += 1;
                // One event: index 0, no id sampled.
                sample.event = id
                    .and_then(|id| self.event_ids.get(&id))
                    .copied()
                    .unwrap_or(0);
                if let Some(n) = self.samples_per_event.get_mut(sample.event as usize) {
                    *n += 1;
                }
                pending.push(Pending {
                    event: Event::Sample(sample),
                    stack: stack_copy.filter(|_| self.unwinder.is_some()).map(Box::new),
                });
            }
        }
        let ready = order_ready(&mut pending, (!self.stopped).then_some(self.round_start));
        for Pending { mut event, stack } in pending.drain(..ready) {
            if let Some(unwinder) = &mut self.unwinder {
                match (&mut event, stack) {
                    (Event::Sample(s), Some(copy)) => {
                        unwinder.apply(s, copy.regs, &copy.stack);
                    }
                    (event, _) => unwinder.observe(event),
                }
            }
            out(event);
        }
        self.pending = pending;
        self.round_start = started;
    }

    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// How the `--call-graph dwarf` walks went (`None` without it).
    pub fn unwind_stats(&self) -> Option<UnwindStats> {
        self.unwinder.as_ref().map(EventUnwinder::stats)
    }

    /// Tell the unwinder about an event that did not come from the rings (the mappings
    /// and tasks synthesized from procfs for `-p`/`-t`).
    pub fn observe(&mut self, event: &Event) {
        if let Some(unwinder) = &mut self.unwinder {
            unwinder.observe(event);
        }
    }

    /// Build-ids, read once per file (shared with procfs synthesis).
    pub fn converter(&mut self) -> &mut Converter {
        &mut self.converter
    }
}

/// An event read from a ring, with its sample's stack copy (`--call-graph dwarf`).
struct Pending {
    event: Event,
    stack: Option<Box<StackCopy>>,
}

/// Sort `pending` into time order and say how many of the first events may be passed on:
/// those older than `before`, or all of them when `before` is `None`. The sort is stable
/// (records of one ring keep their order at equal times) and puts side band before the
/// samples of the same nanosecond.
fn order_ready(pending: &mut [Pending], before: Option<u64>) -> usize {
    pending.sort_by_key(|p| (event_time(&p.event), matches!(p.event, Event::Sample(_))));
    match before {
        Some(t) => pending.partition_point(|p| event_time(&p.event) < t),
        None => pending.len(),
    }
}

/// The time of an event as the sampler produces them (0 for kinds it does not make).
fn event_time(event: &Event) -> u64 {
    use lbrprof_data::model::TaskEvent;
    match event {
        Event::Sample(s) => s.time_ns,
        Event::Mapping(m) => m.time_ns,
        Event::Task(TaskEvent::Comm { time_ns, .. })
        | Event::Task(TaskEvent::Exec { time_ns, .. })
        | Event::Task(TaskEvent::Fork { time_ns, .. })
        | Event::Task(TaskEvent::Exit { time_ns, .. }) => *time_ns,
        Event::Loss(l) => l.time_ns,
        _ => 0,
    }
}

fn perf_opts(config: &SamplerConfig, event: &EventKind, inherit: bool, on_exec: bool) -> Opts {
    let page = page_size();
    let ring_bytes = (1usize << config.ring_pages_exp) * page;
    let dwarf = match config.call_graph {
        CallGraph::Dwarf { stack_size } => Some(stack_size),
        _ => None,
    };
    Opts {
        exclude: Priv {
            kernel: !config.kernel,
            hv: true,
            ..Priv::default()
        },
        inherit: inherit.then_some(Inherit::NewChild),
        on_execve: on_exec.then_some(OnExecve::Enable),
        enable: false,
        sample_on: match (config.period, event) {
            (Some(period), _) => SampleOn::Count(period),
            // perf samples a tracepoint on every hit unless -c says otherwise (beside a
            // timer event it keeps its period field, of 1).
            (None, EventKind::Tracepoint { .. }) => SampleOn::Count(1),
            (None, _) => SampleOn::Freq(config.frequency),
        },
        sample_format: SampleFormat {
            // Only in frequency mode (see `Converter::with_fixed_period`).
            period: config.period.is_none(),
            code_addr: true,
            // With dwarf the user part comes from the stack copy (as perf does it, the
            // kernel's frame-pointer walk of user space is not asked for).
            call_chain: (dwarf.is_none() || config.kernel).then_some(CallChain {
                exclude_user: dwarf.is_some(),
                exclude_kernel: !config.kernel,
                defer_user: false,
                max_stack_frames: 127,
            }),
            user_regs: dwarf.map(|_| RegsMask(lbrprof_data::dwarf::SAMPLE_REGS_USER)),
            user_stack: dwarf.map(Size),
            lbr: config.branch_stacks.then(|| Lbr {
                // LBR call-stack mode works for user space only (perf sets
                // PERF_SAMPLE_BRANCH_USER with it); otherwise follow exclude_kernel.
                target_priv: (config.call_graph == CallGraph::Lbr).then_some(TargetPriv {
                    user: true,
                    kernel: false,
                    hv: false,
                }),
                branch_type: perf_event_open::config::BranchType {
                    any: config.call_graph != CallGraph::Lbr,
                    call_stack: config.call_graph == CallGraph::Lbr,
                    ..Default::default()
                },
                hw_index: true,
                entry_format: EntryFormat {
                    flags: true,
                    cycles: true,
                    branch_type: true,
                    ..EntryFormat::default()
                },
            }),
            ..SampleFormat::default()
        },
        record_id_all: true,
        record_id_format: RecordIdFormat {
            // Which event took a sample, when several share the ring.
            id: !config.more_events.is_empty(),
            task: true,
            time: true,
            cpu: true,
            ..RecordIdFormat::default()
        },
        extra_record: ExtraRecord {
            task: true,
            comm: true,
            mmap: Mmap {
                code: true,
                data: false,
                ext: Some(UseBuildId(true)),
            },
            ..ExtraRecord::default()
        },
        // Wake a poller when a quarter of the buffer is used; the recorder also drains on a
        // timer, so a slow workload still reaches the file within a flush interval.
        wake_up: WakeUp {
            on: WakeUpOn::Bytes((ring_bytes / 4) as u32),
            on_aux_bytes: 0,
        },
        timer: Some(perf_event_open::config::Clock::Monotonic),
        ..Opts::default()
    }
}

fn open_one(
    config: &SamplerConfig,
    event: &EventKind,
    tracking: bool,
    task: Option<u32>,
    cpu: u32,
    inherit: bool,
    on_exec: bool,
) -> Result<Counter, SamplerError> {
    let event_name = event.name();
    let mut opts = perf_opts(config, event, inherit, on_exec);
    if !tracking {
        opts.extra_record = ExtraRecord::default();
    }
    let target: perf_event_open::config::Target = match task {
        Some(task) => (Proc(task), Cpu(cpu)).into(),
        None => (Proc::ALL, Cpu(cpu)).into(),
    };
    let who = match task {
        Some(task) => format!("task {task}"),
        None => format!("every task on CPU {cpu}"),
    };
    let open = |opts: &Opts| match event {
        EventKind::Cycles => Counter::new(Hardware::CpuCycle, target.clone(), opts),
        EventKind::CpuClock => Counter::new(Software::CpuClock, target.clone(), opts),
        EventKind::Hardware(h) => Counter::new(hardware(*h), target.clone(), opts),
        EventKind::Software(s) => Counter::new(software(*s), target.clone(), opts),
        EventKind::Tracepoint { id, .. } => {
            Counter::new(Tracepoint { id: *id }, target.clone(), opts)
        }
    };
    let mut result = open(&opts);
    // Kernels before 5.12 do not know `build_id` in MMAP2; fall back to reading the files.
    if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EINVAL)) {
        opts.extra_record.mmap.ext = Some(UseBuildId(false));
        result = open(&opts);
    }
    result.map_err(|source| match source.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => SamplerError::Permission {
            target: who.clone(),
            paranoid: std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            source,
        },
        Some(libc::ESRCH) => SamplerError::NoSuchTask(task.unwrap_or(0)),
        Some(libc::EMFILE) | Some(libc::ENFILE) => SamplerError::TooManyFiles(source),
        Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) => {
            SamplerError::EventUnsupported {
                event: event_name.clone(),
                source,
            }
        }
        _ => SamplerError::Open {
            event: event_name,
            cpu,
            target: who,
            source,
        },
    })
}

/// The perf-event-open crate's name of a generic hardware event.
fn hardware(e: HardwareEvent) -> Hardware {
    match e {
        HardwareEvent::Instructions => Hardware::Instr,
        HardwareEvent::Branches => Hardware::BranchInstr,
        HardwareEvent::BranchMisses => Hardware::BranchMiss,
        HardwareEvent::CacheReferences => Hardware::CacheAccess,
        HardwareEvent::CacheMisses => Hardware::CacheMiss,
        HardwareEvent::BusCycles => Hardware::BusCycle,
        HardwareEvent::RefCycles => Hardware::RefCpuCycle,
    }
}

/// The perf-event-open crate's name of a software event.
fn software(e: SoftwareEvent) -> Software {
    match e {
        SoftwareEvent::TaskClock => Software::TaskClock,
        SoftwareEvent::PageFaults => Software::PageFault,
        SoftwareEvent::MinorFaults => Software::MinorPageFault,
        SoftwareEvent::MajorFaults => Software::MajorPageFault,
        SoftwareEvent::ContextSwitches => Software::CtxSwitch,
        SoftwareEvent::CpuMigrations => Software::CpuMigration,
        SoftwareEvent::AlignmentFaults => Software::AlignFault,
        SoftwareEvent::EmulationFaults => Software::EmuFault,
    }
}

/// `/sys/devices/system/cpu/online`, e.g. `0-3,6`.
pub(crate) fn online_cpus() -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(&text)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad CPU list {text:?}")))
}

/// Parse a kernel CPU list (`0-3,6`).
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,6\n"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn events_leave_in_time_order_once_no_older_one_can_come() {
        use lbrprof_data::model::{HostSample, Mapping, TaskEvent};
        let sample = |t| {
            Event::Sample(HostSample {
                time_ns: t,
                ..HostSample::default()
            })
        };
        let mapping = |t| {
            Event::Mapping(Mapping {
                time_ns: t,
                space: lbrprof_data::model::AddressSpace::HostUser,
                pid: 2,
                start: 0x1000,
                len: 0x1000,
                pgoff: 0,
                path: "/bin/x".into(),
                build_id: None,
            })
        };
        let fork = Event::Task(TaskEvent::Fork {
            time_ns: 20,
            pid: 2,
            tid: 2,
            ppid: 1,
            ptid: 1,
        });
        // Two rings read one after the other: CPU 0's (a sample at 40) before CPU 1's
        // (the fork at 20 and the child's mapping at 30, and a sample at 30).
        let pend = |events: Vec<Event>| -> Vec<Pending> {
            events
                .into_iter()
                .map(|event| Pending { event, stack: None })
                .collect()
        };
        let mut pending = pend(vec![
            sample(40),
            fork.clone(),
            sample(30),
            mapping(30),
            sample(60),
        ]);
        let ready = order_ready(&mut pending, Some(50));
        assert_eq!(ready, 4);
        let events: Vec<&Event> = pending[..ready].iter().map(|p| &p.event).collect();
        assert_eq!(events, [&fork, &mapping(30), &sample(30), &sample(40)]);
        // At the end, everything goes.
        assert_eq!(order_ready(&mut pending[ready..], None), 1);
        // Nothing older than the watermark: nothing leaves.
        let mut late = pend(vec![sample(70)]);
        assert_eq!(order_ready(&mut late, Some(70)), 0);
    }

    #[test]
    fn options_follow_the_config() {
        let cfg = SamplerConfig {
            kernel: false,
            branch_stacks: true,
            call_graph: CallGraph::Lbr,
            ..SamplerConfig::default()
        };
        let opts = perf_opts(&cfg, &cfg.event, true, true);
        assert!(opts.exclude.kernel);
        assert_eq!(opts.inherit, Some(Inherit::NewChild));
        assert_eq!(opts.on_execve, Some(OnExecve::Enable));
        assert!(!opts.enable);
        let chain = opts.sample_format.call_chain.as_ref().unwrap();
        assert!(chain.exclude_kernel && !chain.exclude_user);
        let lbr = opts.sample_format.lbr.as_ref().unwrap();
        assert!(lbr.branch_type.call_stack && !lbr.branch_type.any);
        assert_eq!(
            lbr.target_priv.as_ref().map(|p| (p.user, p.kernel)),
            Some((true, false))
        );
        assert_eq!(opts.timer, Some(perf_event_open::config::Clock::Monotonic));
        assert!(opts.record_id_all && opts.record_id_format.time);

        let opts = perf_opts(
            &SamplerConfig::default(),
            &EventKind::CpuClock,
            false,
            false,
        );
        assert!(!opts.exclude.kernel);
        assert!(opts.sample_format.lbr.is_none());
        assert_eq!(opts.inherit, None);
        assert_eq!(opts.on_execve, None);
    }
}
