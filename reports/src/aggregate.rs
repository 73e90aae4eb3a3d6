//! Stage one of a report: the event stream folded into counts keyed by code location.
//!
//! [`Aggregator`] consumes [`Event`]s in stream order (mappings must be seen before the
//! samples that use them) and keeps only what grows with the *variety* of the data, never
//! with its length: one entry per unique stack, per unique branch edge and per unique
//! fall-through range. Host samples and guest LBR snapshots go through the same branch
//! path ([`Aggregator::add_branches`]), so guest branches land in the same tables.
//!
//! The aggregator is the [`SampleVisitor`] of a source walked in stream order
//! ([`SampleSource::walk_in_order`]):
//! samples come to it borrowed ([`SampleRef`]), as they come to the folder
//! (`fold`). It builds what needs every sample on its own (timelines, the trace
//! `record --vm` pairing reads, `--dso` verdicts on branch stacks), and resolves the
//! folder's raw keys. An event stream (a file that cannot be mapped) is read on another
//! thread while the aggregator visits it ([`visit_events`]; [`aggregate_events`] for a
//! bare iterator of events), so both cores work on a large file.

use std::collections::HashMap;

use lbrprof_data::model::{Branch, BranchKind, CpuMode, Event, LossKind, TaskEvent};
use lbrprof_data::sample::{BranchStack, SampleRef};
use lbrprof_data::source::{SampleSource, SampleVisitor, SourceError, visit_events};

pub use crate::hash::{FastHash, FastMap};
use crate::lbr::snapshot_branches;
use crate::loc::{AddressSpaces, Loc, ModuleTable};
use crate::vmtrace::{VmSample, VmSnapshot, VmTrace};

/// Which samples to keep (`perf report --pid/--tid/--comms/--dsos`). Empty = keep all.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub tids: Vec<u32>,
    pub comms: Vec<String>,
    /// Module paths or file names; matches the module of the sampled IP.
    pub dsos: Vec<String>,
    /// Time windows `[start, end]` (inclusive, in the recording's sample clock, ns): a
    /// sample is kept when its time is in one of them (`perf report --time`).
    pub times: Vec<(u64, u64)>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
            && self.tids.is_empty()
            && self.comms.is_empty()
            && self.dsos.is_empty()
            && self.times.is_empty()
    }

    /// Whether time `t` is in one of the windows (or there are none). A sample without
    /// a time (0: the recording has no PERF_SAMPLE_TIME) is kept, as perf keeps it.
    pub fn keeps_time(&self, t: u64) -> bool {
        self.times.is_empty() || t == 0 || self.times.iter().any(|&(a, b)| a <= t && t <= b)
    }
}

/// A sampled thread under the command name it had when sampled: what perf's `comm` and
/// `pid` sort keys group by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    /// Index into [`Profile::task_comms`].
    pub comm: u32,
}

/// Sample and weight counts of one stack or function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub samples: u64,
    /// Sum of sample periods (the event count the samples stand for).
    pub weight: u64,
}

impl Count {
    pub(crate) fn add_n(&mut self, samples: u64, weight: u64) {
        self.samples += samples;
        self.weight += weight;
    }
}

/// Everything the LBR says about one `from → to` edge, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeCounts {
    pub count: u64,
    pub mispred: u64,
    pub predicted: u64,
    pub in_tx: u64,
    pub abort: u64,
    /// Sum of non-zero cycle counts, and how many entries had one.
    pub cycles_sum: u64,
    pub cycles_n: u64,
    pub kind: BranchKind,
}

impl EdgeCounts {
    /// Counts one LBR entry with these flags. The edge's kind is the first known kind
    /// among its entries.
    pub(crate) fn add_entry(&mut self, f: &lbrprof_data::model::BranchFlags) {
        self.count += 1;
        self.mispred += u64::from(f.mispred);
        self.predicted += u64::from(f.predicted);
        self.in_tx += u64::from(f.in_tx);
        self.abort += u64::from(f.abort);
        if f.cycles != 0 {
            self.cycles_sum += u64::from(f.cycles);
            self.cycles_n += 1;
        }
        if self.kind == BranchKind::Unknown {
            self.kind = f.kind;
        }
    }

    /// Adds the counts of `other` (an edge seen later, or in a later part of the file);
    /// the kind stays the first known one.
    pub(crate) fn merge(&mut self, other: &EdgeCounts) {
        self.count += other.count;
        self.mispred += other.mispred;
        self.predicted += other.predicted;
        self.in_tx += other.in_tx;
        self.abort += other.abort;
        self.cycles_sum += other.cycles_sum;
        self.cycles_n += other.cycles_n;
        if self.kind == BranchKind::Unknown {
            self.kind = other.kind;
        }
    }
}

/// Totals over the whole (filtered) stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub samples: u64,
    pub weight: u64,
    pub snapshots: u64,
    pub branch_entries: u64,
    /// Samples with at least one branch entry.
    pub samples_with_branches: u64,
    pub max_branch_depth: u64,
    pub lost: u64,
    pub throttled: u64,
    pub frozen: u64,
    pub channel_full: u64,
    /// Samples dropped by the filter.
    pub filtered_out: u64,
    pub guest_samples: u64,
    pub first_time_ns: Option<u64>,
    pub last_time_ns: u64,
}

/// The aggregate of a recording, keyed by [`Loc`]. Stacks are innermost frame first.
#[derive(Debug, Default)]
pub struct Profile {
    pub spaces: AddressSpaces,
    pub totals: Totals,
    pub stacks: FastMap<Vec<Loc>, Count>,
    /// Stacks rebuilt from LBR call-stack data (and guest frame-pointer walks).
    pub lbr_stacks: FastMap<Vec<Loc>, Count>,
    pub edges: FastMap<(Loc, Loc), EdgeCounts>,
    /// Fall-through ranges `[start, end]` (both inclusive instruction addresses).
    pub ranges: FastMap<(Loc, Loc), u64>,
    /// `ranges` again, split by where the taken branch that started the range came
    /// from: `[origin, start, end]`. BOLT's aggregator treats a range entered from
    /// another function (a return) differently from one entered by a jump inside it.
    pub range_origins: FastMap<[Loc; 3], u64>,
    /// Per sampled IP (the `no_lbr` BOLT profile and `--dso` checks).
    pub ips: FastMap<Loc, Count>,
    pub comms: HashMap<u32, String>,
    /// Samples per process, by the name the process had when sampled (its main
    /// thread's): a process that execs has one entry per program it ran.
    pub processes: HashMap<u32, Vec<(String, Count)>>,
    /// The per-sample trace of a `record --vm` recording (with [`AggregateOptions::vm`]).
    pub vm: Option<VmTrace>,
    /// With [`AggregateOptions::comm_root`]: the pseudo-module of the stacks' root frames,
    /// whose `Loc::offset` indexes `root_names` (process/thread names).
    pub comm_root_module: Option<crate::loc::ModuleId>,
    pub root_names: Vec<String>,
    /// With [`AggregateOptions::run_starts`]: `stacks` again, one table per run (a sample
    /// belongs to the last run started at or before its time).
    pub run_stacks: Vec<FastMap<Vec<Loc>, Count>>,
    /// With [`AggregateOptions::timeline`]: every sample and snapshot, in stream order.
    pub timeline: Option<Timeline>,
    /// With [`AggregateOptions::tasks`]: the host samples' stacks again, one table per
    /// sampled thread and command name ([`Task`]).
    pub task_stacks: FastMap<Task, FastMap<Vec<Loc>, Count>>,
    /// The command names [`Task::comm`] indexes: a thread's COMM when sampled, else
    /// `swapper` for the idle task (tid 0) and `:TID` for other threads, as perf names them.
    pub task_comms: Vec<String>,
    /// With [`AggregateOptions::tasks`]: the guest snapshots' stacks (without the vCPU
    /// root), one table per guest process (`pid` = `tid` = the guest's pid) and the
    /// command it had at the snapshot. Guest pids are the guest's own, not host ones.
    pub guest_task_stacks: FastMap<Task, FastMap<Vec<Loc>, Count>>,
    /// With [`AggregateOptions::tasks`]: each guest process's last command name, by
    /// guest pid.
    pub guest_comms: HashMap<u32, String>,
}

/// Every sample and guest snapshot with its time and thread, for outputs that keep them
/// (the Firefox Profiler export); stacks are interned.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub samples: Vec<TimedSample>,
    /// Interned stacks, innermost first, as in [`Profile::stacks`] (guest snapshot
    /// stacks without their `[guest vcpuN]` root).
    pub stacks: Vec<Vec<Loc>>,
    index: FastMap<Vec<Loc>, u32>,
    /// The guest processes snapshots were taken in (a Linux program's, named by the
    /// recording's `GuestProcess` events): [`TimedSample::guest_process`] indexes it.
    pub guest_processes: Vec<GuestProcessName>,
    guest_index: HashMap<GuestProcessName, u32>,
}

/// A guest process as the exports label it: its pid in the guest and its command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestProcessName {
    pub pid: u32,
    pub comm: String,
}

impl Timeline {
    fn intern(&mut self, stack: &[Loc]) -> u32 {
        if let Some(&id) = self.index.get(stack) {
            return id;
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(stack.to_vec());
        self.index.insert(stack.to_vec(), id);
        id
    }
}

/// One host sample or guest snapshot of a [`Timeline`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimedSample {
    pub time_ns: u64,
    /// Host process and thread (for a guest snapshot: those of its vCPU's thread when
    /// the recording names it, else 0).
    pub pid: u32,
    pub tid: u32,
    /// The guest vCPU, for a guest snapshot.
    pub vcpu: Option<u32>,
    pub mode: CpuMode,
    /// Event count (sample period; snapshot weight for snapshots).
    pub weight: u64,
    /// Index into [`Timeline::stacks`].
    pub stack: u32,
    /// Entries of its branch stack (LBR entries of a snapshot).
    pub branches: u16,
    /// For a guest snapshot taken in a named guest process: its index in
    /// [`Timeline::guest_processes`].
    pub guest_process: Option<u32>,
}

/// How the aggregator treats the stream.
#[derive(Clone, Debug, Default)]
pub struct AggregateOptions {
    pub filter: Filter,
    /// The branch stacks are LBR call stacks (`--call-graph lbr`): each entry's `from`
    /// is a call site, which gives the stacks of `flamegraph --branches`.
    pub lbr_call_stack: bool,
    /// Weight of one guest snapshot in the stack tables (the sampling period).
    pub snapshot_weight: u64,
    /// A `record --vm` recording: keep the trace pairing needs ([`crate::vm`]) and
    /// resolve guest-mode host samples in the recorded VM's address space.
    pub vm: bool,
    /// End every sampled stack in a root frame naming the sampled thread's command
    /// (what `perf script | inferno-collapse-perf` puts first in folded stacks).
    pub comm_root: bool,
    /// The start times of the runs of a `record --repeat` recording
    /// (`Summary::run_starts`): the stack table is also kept per run
    /// ([`Profile::run_stacks`]). Empty: one run, no per-run tables.
    pub run_starts: Vec<u64>,
    /// Keep every sample's time, thread and stack ([`Profile::timeline`]).
    pub timeline: bool,
    /// Keep the stack table per sampled thread and command ([`Profile::task_stacks`]).
    pub tasks: bool,
}

/// How many samples [`Aggregator::add_counted`] adds, and their time span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleCounts {
    pub samples: u64,
    /// Sum of their periods.
    pub weight: u64,
    pub first_time_ns: u64,
    pub last_time_ns: u64,
}

/// The module of guest-mode host samples of a Linux program's vCPUs that are at no guest
/// code (see `Aggregator::add_counted`); the function is the address.
pub const HYPERVISOR_MODULE: &str = "[hypervisor]";
/// The canonical upper half, where a Linux program's guest maps only the trap stubs and
/// the vsyscall page.
const HYPERVISOR_ADDRESSES_START: u64 = 0xffff_8000_0000_0000;
/// The legacy vsyscall page (`[vsyscall]`), which a program may call into.
const VSYSCALL_PAGE: u64 = 0xffff_ffff_ff60_0000;

/// Longest fall-through range we believe (longer ones cross a missing entry).
pub(crate) const MAX_RANGE_BYTES: u64 = 1 << 16;

pub struct Aggregator {
    opts: AggregateOptions,
    profile: Profile,
    stack_buf: Vec<Loc>,
    /// Index of each name in `profile.root_names`.
    root_index: HashMap<String, u64>,
    /// vCPU → its host thread (pid, tid), from the recording's vCPU thread events.
    vcpu_threads: HashMap<u32, (u32, u32)>,
    /// Guest page-table roots → the address space (guest process) they belong to.
    guest_spaces: HashMap<u64, u32>,
    /// Which guest address space each vCPU ran when, and vCPU thread id → vCPU: where a
    /// guest-mode host sample of that thread resolves.
    vcpu_space: VcpuSpaces,
    tid_vcpu: HashMap<u32, u32>,
    /// Index of each name in `profile.task_comms`.
    task_comm_index: HashMap<String, u32>,
    /// Guest address space → the process running it (for the timeline's labels).
    space_process: HashMap<u32, GuestProcessName>,
}

impl Aggregator {
    pub fn new(opts: AggregateOptions) -> Self {
        let mut profile = Profile {
            vm: opts.vm.then(VmTrace::default),
            run_stacks: vec![FastMap::default(); opts.run_starts.len()],
            timeline: opts.timeline.then(Timeline::default),
            ..Profile::default()
        };
        if opts.comm_root {
            // Interned first, so module ids do not depend on when the first sample comes.
            profile.comm_root_module = Some(profile.spaces.modules.intern(
                "[comm]",
                None,
                crate::loc::ModuleKind::Unknown,
            ));
        }
        Aggregator {
            opts,
            profile,
            stack_buf: Vec::new(),
            root_index: HashMap::new(),
            vcpu_threads: HashMap::new(),
            guest_spaces: HashMap::new(),
            vcpu_space: VcpuSpaces::default(),
            tid_vcpu: HashMap::new(),
            task_comm_index: HashMap::new(),
            space_process: HashMap::new(),
        }
    }

    pub fn finish(self) -> Profile {
        self.profile
    }

    /// Room for `n` more distinct stacks, for a caller that knows about how many it will
    /// add (the table then does not grow, and rehash every stack, step by step).
    pub(crate) fn reserve_stacks(&mut self, n: usize) {
        self.profile.stacks.reserve(n);
    }

    pub fn add(&mut self, event: &Event) {
        match event {
            Event::Mapping(m) => self.profile.spaces.add_mapping(m),
            Event::Task(TaskEvent::Comm { tid, comm, .. }) => {
                self.profile.comms.insert(*tid, comm.clone());
            }
            Event::Task(TaskEvent::Exec { pid, tid, comm, .. }) => {
                // The old program's mappings are gone; the new one's follow.
                self.profile.spaces.exec(*pid);
                self.profile.comms.insert(*tid, comm.clone());
            }
            Event::Task(TaskEvent::Fork {
                pid,
                ppid,
                tid,
                ptid,
                ..
            }) => {
                if pid != ppid {
                    self.profile.spaces.fork(*ppid, *pid);
                }
                if let Some(c) = self.profile.comms.get(ptid).cloned() {
                    self.profile.comms.entry(*tid).or_insert(c);
                }
            }
            // vCPU threads and shim accounting feed pairing and the host-cost tables of
            // `record --vm` reports, not the histograms built here.
            Event::Task(TaskEvent::Exit { .. }) => {}
            Event::Vcpu(v) => {
                self.vcpu_threads.insert(v.vcpu, (v.pid, v.tid));
                self.tid_vcpu.insert(v.tid, v.vcpu);
                if let Some(vm) = &mut self.profile.vm {
                    vm.vcpus.push(*v);
                }
            }
            Event::VcpuStats(v) => {
                if let Some(vm) = &mut self.profile.vm {
                    vm.stats.push(v.clone());
                }
            }
            Event::SamplePhases(p) => {
                if let Some(vm) = &mut self.profile.vm {
                    vm.phases
                        .extend(p.samples.iter().map(|&(t, phase)| ((p.tid, t), phase)));
                }
            }
            Event::GuestProcess(p) => {
                for &r in &p.roots {
                    self.guest_spaces.insert(r, p.space);
                }
                self.profile.spaces.set_guest_pid(p.vm, p.space, p.pid);
                if self.opts.tasks {
                    // perf names a process by its last command (this one, after an exec).
                    self.profile.guest_comms.insert(p.pid, p.comm.clone());
                }
                self.space_process.insert(
                    p.space,
                    GuestProcessName {
                        pid: p.pid,
                        comm: p.comm.clone(),
                    },
                );
            }
            Event::VcpuSpace(v) => self.vcpu_space.told(v),
            // Exact-mode profiles are read by the callgrind export, not folded here.
            Event::ExactProfile(_) => {}
            Event::Sample(s) => self.add_sample(&SampleRef::of_host(s, 0)),
            Event::Snapshot(snap) => self.add_snapshot(snap),
            Event::Loss(l) => {
                let t = &mut self.profile.totals;
                match l.kind {
                    LossKind::RingBuffer => t.lost += l.count,
                    LossKind::Throttled => t.throttled += l.count,
                    LossKind::ChannelFull => t.channel_full += l.count,
                    LossKind::Frozen => t.frozen += l.count,
                }
            }
        }
    }

    fn keep(&mut self, s: &SampleRef<'_>, ip: Loc) -> bool {
        let f = &self.opts.filter;
        if f.is_empty() {
            return true;
        }
        if !f.pids.is_empty() && !f.pids.contains(&s.pid) {
            return false;
        }
        if !f.tids.is_empty() && !f.tids.contains(&s.tid) {
            return false;
        }
        if !f.comms.is_empty() {
            let comm = self.profile.comms.get(&s.tid).map(String::as_str);
            if !comm.is_some_and(|c| f.comms.iter().any(|x| x == c)) {
                return false;
            }
        }
        if !f.dsos.is_empty() {
            let m = self.profile.spaces.modules.get(ip.module);
            if !f.dsos.iter().any(|d| *d == m.path || d == m.short_name()) {
                return false;
            }
        }
        f.keeps_time(s.time_ns)
    }

    /// Thread `tid` of process `pid` under its current command name.
    fn task(&mut self, pid: u32, tid: u32) -> Task {
        let comm = match self.profile.comms.get(&tid) {
            Some(c) => intern_comm(&mut self.task_comm_index, &mut self.profile.task_comms, c),
            None => {
                let name = match tid {
                    0 => "swapper".to_owned(),
                    _ => format!(":{tid}"),
                };
                intern_comm(
                    &mut self.task_comm_index,
                    &mut self.profile.task_comms,
                    &name,
                )
            }
        };
        Task { pid, tid, comm }
    }

    fn note_time(&mut self, t: u64) {
        let tot = &mut self.profile.totals;
        if tot.first_time_ns.is_none_or(|f| t < f) {
            tot.first_time_ns = Some(t);
        }
        tot.last_time_ns = tot.last_time_ns.max(t);
    }

    pub fn add_sample(&mut self, s: &SampleRef<'_>) {
        let counts = SampleCounts {
            samples: 1,
            weight: s.period,
            first_time_ns: s.time_ns,
            last_time_ns: s.time_ns,
        };
        let Some(ip) = self.add_counted(s, counts) else {
            return;
        };
        let spaces = &mut self.profile.spaces;
        let mut stack = std::mem::take(&mut self.stack_buf);
        let weight = s.period;
        if !s.branches.is_empty() {
            let mode = branch_mode(s.mode);
            if self.opts.lbr_call_stack {
                stack.clear();
                stack.push(ip);
                stack.extend(
                    s.branches
                        .iter()
                        .map(|b| spaces.resolve(s.pid, b.from, mode)),
                );
                bump(&mut self.profile.lbr_stacks, &stack, weight);
            }
            let pid = s.pid;
            let resolve = |sp: &mut AddressSpaces, a| sp.resolve(pid, a, mode);
            let n = s.branches.len() as u64;
            // One loop per representation, not a match per entry.
            match s.branches {
                BranchStack::Decoded(b) => self.add_branches(n, b.iter().copied(), resolve),
                BranchStack::PerfEntries(_) => self.add_branches(n, s.branches.iter(), resolve),
            }
        }
        self.stack_buf = stack;
    }

    /// Adds `counts.samples` samples that share `s`'s process, thread, mode, IP and
    /// call chain (not its branches): totals, IPs and the stack table. Returns the
    /// sampled IP's location, or `None` when the filter drops them.
    pub fn add_counted(&mut self, s: &SampleRef<'_>, counts: SampleCounts) -> Option<Loc> {
        // A guest-mode sample of the shim is in the recorded VM, whatever the host pid.
        let space_pid = if self.opts.vm && s.mode.is_guest() {
            lbrprof_data::model::VM_INDEX
        } else {
            s.pid
        };
        // A Linux program's processes: the address space the vCPU ran at the time.
        let guest_space = (self.opts.vm && s.mode.is_guest()).then(|| {
            self.tid_vcpu
                .get(&s.tid)
                .map_or(0, |&v| self.vcpu_space.at(v, s.time_ns))
        });
        // A Linux program's guest has nothing in the upper half but the shim's trap stubs
        // (a mapping of their own) and the vsyscall page: a guest-mode host sample at
        // another upper-half address is not guest code but the host's hypervisor at the
        // guest's entry or exit, as the host kernel reports it (under PVM: per-CPU
        // switcher code, one address per host CPU).
        let linux_guest = !self.guest_spaces.is_empty();
        let resolve = move |spaces: &mut AddressSpaces, addr: u64, mode: CpuMode| match guest_space
        {
            Some(g) if mode.is_guest() => {
                let l = spaces.resolve_guest_in(space_pid, g, addr);
                if linux_guest
                    && l.module == ModuleTable::GUEST_UNKNOWN
                    && (HYPERVISOR_ADDRESSES_START..VSYSCALL_PAGE).contains(&addr)
                {
                    Loc {
                        module: spaces.modules.intern(
                            HYPERVISOR_MODULE,
                            None,
                            crate::loc::ModuleKind::Unknown,
                        ),
                        offset: addr,
                    }
                } else {
                    l
                }
            }
            _ => spaces.resolve(space_pid, addr, mode),
        };
        let spaces = &mut self.profile.spaces;
        let ip = resolve(spaces, s.ip, s.mode);
        if !self.keep(s, ip) {
            self.profile.totals.filtered_out += counts.samples;
            return None;
        }
        self.note_time(counts.first_time_ns);
        self.note_time(counts.last_time_ns);
        let t = &mut self.profile.totals;
        t.samples += counts.samples;
        t.weight += counts.weight;
        if s.mode.is_guest() {
            t.guest_samples += counts.samples;
        }
        let name = self
            .profile
            .comms
            .get(&s.pid)
            .or_else(|| self.profile.comms.get(&s.tid))
            .map_or("", String::as_str);
        let names = self.profile.processes.entry(s.pid).or_default();
        match names.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => c.add_n(counts.samples, counts.weight),
            None => names.push((
                name.to_owned(),
                Count {
                    samples: counts.samples,
                    weight: counts.weight,
                },
            )),
        }
        self.profile
            .ips
            .entry(ip)
            .or_default()
            .add_n(counts.samples, counts.weight);

        let spaces = &mut self.profile.spaces;
        let mut stack = std::mem::take(&mut self.stack_buf);
        stack.clear();
        // The leaf is the sampled IP; a call chain normally starts with it, but not when
        // its kernel part was excluded.
        let callchain = s.callchain.frames(s.mode);
        if callchain.first().is_none_or(|f| f.addr != s.ip) {
            stack.push(ip);
        }
        stack.extend(callchain.iter().map(|f| resolve(spaces, f.addr, f.mode)));
        if self.opts.comm_root && self.profile.vm.is_none() {
            stack.push(self.comm_root(s.tid));
        }
        bump_n(
            &mut self.profile.stacks,
            &stack,
            counts.samples,
            counts.weight,
        );
        if !self.opts.run_starts.is_empty() {
            let run = run_of(&self.opts.run_starts, counts.first_time_ns);
            bump_n(
                &mut self.profile.run_stacks[run],
                &stack,
                counts.samples,
                counts.weight,
            );
        }
        if self.opts.tasks {
            let task = self.task(s.pid, s.tid);
            bump_n(
                self.profile.task_stacks.entry(task).or_default(),
                &stack,
                counts.samples,
                counts.weight,
            );
        }
        if let Some(tl) = &mut self.profile.timeline {
            let id = tl.intern(&stack);
            tl.samples.push(TimedSample {
                time_ns: counts.first_time_ns,
                pid: s.pid,
                tid: s.tid,
                vcpu: None,
                mode: s.mode,
                weight: counts.weight,
                stack: id,
                branches: s.branches.len().min(usize::from(u16::MAX)) as u16,
                guest_process: None,
            });
        }
        if let Some(vm) = &mut self.profile.vm {
            let id = vm.intern(&stack);
            vm.samples.push(VmSample {
                time_ns: s.time_ns,
                tid: s.tid,
                mode: s.mode,
                stack: id,
            });
        }
        self.stack_buf = stack;
        Some(ip)
    }

    /// The root frame naming thread `tid`'s command as `perf script` prints it: its
    /// COMM, else `swapper` for the idle task (tid 0) and `:TID` for other threads.
    fn comm_root(&mut self, tid: u32) -> Loc {
        let p = &mut self.profile;
        let module = *p.comm_root_module.get_or_insert_with(|| {
            p.spaces
                .modules
                .intern("[comm]", None, crate::loc::ModuleKind::Unknown)
        });
        let name = p.comms.get(&tid).cloned().unwrap_or_else(|| match tid {
            0 => "swapper".to_owned(),
            _ => format!(":{tid}"),
        });
        let offset = match self.root_index.get(&name) {
            Some(&i) => i,
            None => {
                let i = p.root_names.len() as u64;
                p.root_names.push(name.clone());
                self.root_index.insert(name, i);
                i
            }
        };
        Loc { module, offset }
    }

    /// Adds `samples` samples (of total `weight`) with one LBR call stack: the sampled
    /// `ip` (resolved in `mode`) and the branch sources `froms` (resolved in `branch_mode`),
    /// as [`Aggregator::add_sample`] does for `lbr_call_stack` recordings.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_lbr_stack(
        &mut self,
        pid: u32,
        mode: CpuMode,
        ip: u64,
        branch_mode: CpuMode,
        froms: &[u64],
        samples: u64,
        weight: u64,
    ) {
        let spaces = &mut self.profile.spaces;
        let mut stack = std::mem::take(&mut self.stack_buf);
        stack.clear();
        stack.push(spaces.resolve(pid, ip, mode));
        stack.extend(froms.iter().map(|&a| spaces.resolve(pid, a, branch_mode)));
        bump_n(&mut self.profile.lbr_stacks, &stack, samples, weight);
        self.stack_buf = stack;
    }

    /// Adds the summed counts of the branch `from → to` of process `pid`.
    pub(crate) fn add_edge_counts(
        &mut self,
        pid: u32,
        mode: CpuMode,
        from: u64,
        to: u64,
        c: &EdgeCounts,
    ) {
        let p = &mut self.profile;
        let from = p.spaces.resolve(pid, from, mode);
        let to = p.spaces.resolve(pid, to, mode);
        p.edges.entry((from, to)).or_default().merge(c);
    }

    /// Adds `n` passes through the fall-through range `[start, end]` of process `pid`,
    /// entered by a branch from `origin` (dropped, as by [`Aggregator::add_branches`],
    /// when it crosses modules).
    pub(crate) fn add_range_count(
        &mut self,
        pid: u32,
        mode: CpuMode,
        [origin, start, end]: [u64; 3],
        n: u64,
    ) {
        let p = &mut self.profile;
        let to = p.spaces.resolve(pid, start, mode);
        let nf = p.spaces.resolve(pid, end, mode);
        if nf.module == to.module {
            let o = p.spaces.resolve(pid, origin, mode);
            *p.ranges.entry((to, nf)).or_default() += n;
            *p.range_origins.entry([o, to, nf]).or_default() += n;
        }
    }

    /// Whether a guest snapshot taken in address space `space` passes the filter:
    /// `--pid` and `--comm` match the guest process (its pid and command), `--dso` the
    /// module of the guest IP. Guest threads are not known: `--tid` drops snapshots.
    fn keep_snapshot(&mut self, snap: &lbrprof_data::model::LbrSnapshot, space: u32) -> bool {
        let f = &self.opts.filter;
        if !f.keeps_time(snap.host_time_ns) || !f.tids.is_empty() {
            return false;
        }
        let process = self.space_process.get(&space);
        if !f.pids.is_empty() && !process.is_some_and(|p| f.pids.contains(&p.pid)) {
            return false;
        }
        if !f.comms.is_empty() && !process.is_some_and(|p| f.comms.contains(&p.comm)) {
            return false;
        }
        if !f.dsos.is_empty() {
            let ip = self
                .profile
                .spaces
                .resolve_guest_in(0, space, snap.guest_ip);
            let m = self.profile.spaces.modules.get(ip.module);
            if !f.dsos.iter().any(|d| *d == m.path || d == m.short_name()) {
                return false;
            }
        }
        true
    }

    pub fn add_snapshot(&mut self, snap: &lbrprof_data::model::LbrSnapshot) {
        // The guest process (address space) the snapshot was taken in, by its CR3.
        let space = self.guest_spaces.get(&snap.cr3).copied().unwrap_or(0);
        if !self.opts.filter.is_empty() && !self.keep_snapshot(snap, space) {
            self.profile.totals.filtered_out += 1;
            return;
        }
        self.note_time(snap.host_time_ns);
        let weight = self.opts.snapshot_weight.max(1);
        self.profile.totals.snapshots += 1;
        self.profile.totals.frozen += snap.frozen_events;
        let spaces = &mut self.profile.spaces;
        self.vcpu_space.snapshot(snap.vcpu, space);
        let mut stack = std::mem::take(&mut self.stack_buf);
        stack.clear();
        stack.push(spaces.resolve_guest_in(0, space, snap.guest_ip));
        stack.extend(
            snap.guest_stack
                .iter()
                .take_while(|&&a| plausible_return(snap.guest_ip, a))
                .map(|&a| spaces.resolve_guest_in(0, space, a)),
        );
        if let Some(vm) = &mut self.profile.vm {
            let id = vm.intern(&stack);
            vm.snapshots.push(VmSnapshot {
                time_ns: snap.host_time_ns,
                vcpu: snap.vcpu,
                stack: id,
                agent: snap.reason == lbrprof_data::model::SnapshotReason::Agent,
            });
        }
        if let Some(tl) = &mut self.profile.timeline {
            let id = tl.intern(&stack);
            let guest_process = self.space_process.get(&space).map(|p| {
                *tl.guest_index.entry(p.clone()).or_insert_with(|| {
                    tl.guest_processes.push(p.clone());
                    tl.guest_processes.len() as u32 - 1
                })
            });
            let thread = self.vcpu_threads.get(&snap.vcpu).copied().unwrap_or((0, 0));
            tl.samples.push(TimedSample {
                time_ns: snap.host_time_ns,
                pid: thread.0,
                tid: thread.1,
                vcpu: Some(snap.vcpu),
                mode: CpuMode::GuestUser,
                weight,
                stack: id,
                branches: snap.newest_first().count().min(usize::from(u16::MAX)) as u16,
                guest_process,
            });
        }
        if self.opts.tasks {
            let (pid, name) = self
                .space_process
                .get(&space)
                .map_or((0, "[guest]"), |p| (p.pid, p.comm.as_str()));
            let comm = intern_comm(
                &mut self.task_comm_index,
                &mut self.profile.task_comms,
                name,
            );
            let task = Task {
                pid,
                tid: pid,
                comm,
            };
            bump(
                self.profile.guest_task_stacks.entry(task).or_default(),
                &stack,
                weight,
            );
        }
        stack.push(Loc {
            module: ModuleTable::GUEST_ROOT,
            offset: u64::from(snap.vcpu),
        });
        bump(&mut self.profile.stacks, &stack, weight);
        bump(&mut self.profile.lbr_stacks, &stack, weight);
        self.stack_buf = stack;
        let branches = snapshot_branches(snap);
        self.add_branches(branches.len() as u64, branches.into_iter(), |sp, a| {
            sp.resolve_guest_in(0, space, a)
        });
    }

    /// Adds one branch stack of `n` entries (newest first): its edges, and the
    /// fall-through ranges between consecutive entries (`[to of older entry, from of
    /// newer entry]`).
    pub fn add_branches(
        &mut self,
        n: u64,
        branches: impl Iterator<Item = Branch>,
        mut resolve: impl FnMut(&mut AddressSpaces, u64) -> Loc,
    ) {
        let p = &mut self.profile;
        p.totals.branch_entries += n;
        p.totals.samples_with_branches += u64::from(n > 0);
        p.totals.max_branch_depth = p.totals.max_branch_depth.max(n);
        let mut newer_from: Option<(Loc, u64)> = None;
        for b in branches {
            let from = resolve(&mut p.spaces, b.from);
            let to = resolve(&mut p.spaces, b.to);
            p.edges.entry((from, to)).or_default().add_entry(&b.flags);
            if let Some((nf, nf_addr)) = newer_from
                && nf.module == to.module
                && b.to != 0
                && b.to <= nf_addr
                && nf_addr - b.to < MAX_RANGE_BYTES
            {
                *p.ranges.entry((to, nf)).or_default() += 1;
                *p.range_origins.entry([from, to, nf]).or_default() += 1;
            }
            newer_from = (b.from != 0).then_some((from, b.from));
        }
    }
}

/// The entries of a stack table in the order their frames lie in memory. A table's
/// stacks are allocated one after another as they are first met, and the table's own
/// order is the hash's: a pass over every frame of every stack in that order takes a
/// cache miss per stack, in this order the hardware prefetcher streams them. For passes
/// whose result does not depend on the order (sums, sets).
pub(crate) fn in_memory_order<V>(stacks: &FastMap<Vec<Loc>, V>) -> Vec<(&Vec<Loc>, &V)> {
    let mut v: Vec<(&Vec<Loc>, &V)> = stacks.iter().collect();
    v.sort_unstable_by_key(|(s, _)| s.as_ptr() as usize);
    v
}

fn bump(map: &mut FastMap<Vec<Loc>, Count>, key: &[Loc], weight: u64) {
    bump_n(map, key, 1, weight);
}

fn bump_n(map: &mut FastMap<Vec<Loc>, Count>, key: &[Loc], samples: u64, weight: u64) {
    if let Some(c) = map.get_mut(key) {
        c.add_n(samples, weight);
    } else {
        let mut c = Count::default();
        c.add_n(samples, weight);
        map.insert(key.to_vec(), c);
    }
}

/// The index of command name `name` in `comms` (indexed by `index`), added if new.
fn intern_comm(index: &mut HashMap<String, u32>, comms: &mut Vec<String>, name: &str) -> u32 {
    if let Some(&i) = index.get(name) {
        return i;
    }
    comms.push(name.to_owned());
    let i = (comms.len() - 1) as u32;
    index.insert(name.to_owned(), i);
    i
}

/// Whether `ret`, a return address the guest's frame-pointer walk found above code at
/// `ip`, can be one: canonical, in the same half of the address space as `ip` (user code
/// returns to user code, kernel code to kernel code) and above the null page. Code built
/// without frame pointers uses RBP for data, and the walk then reads text or numbers as
/// return addresses: the first implausible one ends the stack, and what follows it is
/// not trusted either.
fn plausible_return(ip: u64, ret: u64) -> bool {
    let canonical = |a: u64| {
        let top = a >> 47;
        top == 0 || top == 0x1_ffff
    };
    canonical(ret) && (ret >> 63) == (ip >> 63) && ret >= 4096
}

/// The run of a `record --repeat` recording whose runs started at `run_starts` that a
/// sample taken at `time_ns` belongs to: the last one started at or before it (the first
/// for samples before every start).
pub(crate) fn run_of(run_starts: &[u64], time_ns: u64) -> usize {
    run_starts
        .partition_point(|&start| start <= time_ns)
        .saturating_sub(1)
}

/// The mode to resolve branch addresses in: a host sample's branches may be in the
/// kernel or in user space, whatever the sample's own mode (decided by address).
pub(crate) fn branch_mode(sample_mode: CpuMode) -> CpuMode {
    if sample_mode.is_guest() {
        CpuMode::GuestUser
    } else {
        CpuMode::Unknown
    }
}

/// Which guest address space (Linux process) each vCPU ran when: from the recording's
/// [`lbrprof_data::model::VcpuSpace`] events, by time; before a vCPU's first one (and in
/// recordings made before them), the space its latest snapshot was taken in.
#[derive(Clone, Debug, Default)]
pub(crate) struct VcpuSpaces {
    /// vCPU → `(from time_ns, space)`, in time order.
    told: HashMap<u32, Vec<(u64, u32)>>,
    latest_snapshot: HashMap<u32, u32>,
}

impl VcpuSpaces {
    pub(crate) fn told(&mut self, v: &lbrprof_data::model::VcpuSpace) {
        let runs = self.told.entry(v.vcpu).or_default();
        // Written in time order per vCPU; any order is kept sorted.
        let at = runs.partition_point(|&(t, _)| t <= v.time_ns);
        runs.insert(at, (v.time_ns, v.space));
    }

    pub(crate) fn snapshot(&mut self, vcpu: u32, space: u32) {
        self.latest_snapshot.insert(vcpu, space);
    }

    /// The space vCPU `vcpu` ran at `time_ns` (0, the first program's, when unknown).
    pub(crate) fn at(&self, vcpu: u32, time_ns: u64) -> u32 {
        let told = self.told.get(&vcpu).and_then(|runs| {
            let after = runs.partition_point(|&(t, _)| t <= time_ns);
            runs.get(after.checked_sub(1)?).map(|&(_, space)| space)
        });
        told.or_else(|| self.latest_snapshot.get(&vcpu).copied())
            .unwrap_or(0)
    }
}

/// Aggregates a stream, reading it on a second thread (decode and aggregate overlap:
/// [`visit_events`]). Stops at the first error and returns it with what was aggregated
/// so far.
pub fn aggregate_events<I, E>(events: I, opts: AggregateOptions) -> (Profile, Option<E>)
where
    I: Iterator<Item = Result<Event, E>> + Send,
    E: Send,
{
    let mut agg = Aggregator::new(opts);
    let err = visit_events(events, &mut agg);
    (agg.finish(), err)
}

/// Aggregates every sample of `source` on its own, in stream order
/// ([`SampleSource::walk_in_order`]).
pub(crate) fn aggregate_in_order<S: SampleSource>(
    source: &mut S,
    opts: AggregateOptions,
) -> Result<Profile, SourceError> {
    let mut agg = Aggregator::new(opts);
    source.walk_in_order(&mut agg)?;
    Ok(agg.finish())
}

impl SampleVisitor for Aggregator {
    fn sideband(&mut self, event: &Event) {
        self.add(event);
    }

    fn sample(&mut self, sample: &SampleRef<'_>) {
        self.add_sample(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_runs_the_space_it_was_told_at_each_time_else_its_latest_snapshots() {
        let told = |time_ns, space| lbrprof_data::model::VcpuSpace {
            time_ns,
            vm: 0,
            vcpu: 1,
            space,
        };
        let mut s = VcpuSpaces::default();
        assert_eq!(s.at(1, 5), 0, "nothing known: the first program's");
        s.snapshot(1, 4);
        assert_eq!(s.at(1, 5), 4, "an old recording: the latest snapshot's");
        // Out of order on purpose: kept sorted.
        s.told(&told(300, 3));
        s.told(&told(100, 2));
        assert_eq!(s.at(1, 50), 4, "before the first told: the snapshot's");
        assert_eq!(s.at(1, 100), 2);
        assert_eq!(s.at(1, 299), 2);
        assert_eq!(s.at(1, 300), 3);
        s.snapshot(1, 9);
        assert_eq!(s.at(1, 1000), 3, "told beats a snapshot's guess");
        assert_eq!(s.at(2, 1000), 0, "another vCPU");
    }
    use crate::lbr::tests::snapshot;
    use lbrprof_data::model::{AddressSpace, BranchFlags, Frame, HostSample, Mapping};

    fn mapping() -> Event {
        Event::Mapping(Mapping {
            time_ns: 0,
            space: AddressSpace::HostUser,
            pid: 1,
            start: 0x400000,
            len: 0x10000,
            pgoff: 0,
            path: "/bin/w".into(),
            build_id: None,
        })
    }

    fn br(from: u64, to: u64) -> Branch {
        Branch {
            from,
            to,
            flags: BranchFlags {
                mispred: from == 0x400100,
                cycles: 4,
                ..BranchFlags::default()
            },
        }
    }

    #[test]
    fn samples_give_stacks_edges_and_ranges() {
        let mut a = Aggregator::new(AggregateOptions::default());
        a.add(&mapping());
        let s = HostSample {
            pid: 1,
            tid: 1,
            period: 10,
            ip: 0x400050,
            mode: CpuMode::User,
            callchain: vec![
                Frame {
                    addr: 0x400050,
                    mode: CpuMode::User,
                },
                Frame {
                    addr: 0x400200,
                    mode: CpuMode::User,
                },
            ],
            // newest first: 0x400100->0x400040 then (older) 0x400020->0x400080
            branches: vec![br(0x400100, 0x400040), br(0x400020, 0x400080)],
            ..HostSample::default()
        };
        a.add(&Event::Sample(s.clone()));
        a.add(&Event::Sample(s));
        let p = a.finish();
        assert_eq!(p.totals.samples, 2);
        assert_eq!(p.totals.weight, 20);
        assert_eq!(p.totals.branch_entries, 4);
        assert_eq!(p.stacks.len(), 1);
        let l = |o| Loc {
            module: crate::loc::ModuleId(4),
            offset: o,
        };
        let e = p.edges[&(l(0x100), l(0x40))];
        assert_eq!((e.count, e.mispred, e.cycles_sum), (2, 2, 8));
        // Range from the older entry's target (0x80) to the newer entry's source (0x100).
        assert_eq!(p.ranges[&(l(0x80), l(0x100))], 2);
        assert_eq!(p.ranges.len(), 1);
    }

    #[test]
    fn a_linux_guests_host_samples_outside_its_code_in_the_upper_half_are_the_hypervisors() {
        let module_of = |linux: bool, ip: u64| {
            let mut a = Aggregator::new(AggregateOptions {
                vm: true,
                ..AggregateOptions::default()
            });
            a.add(&Event::Vcpu(lbrprof_data::model::VcpuThread {
                time_ns: 0,
                vm: 0,
                vcpu: 0,
                pid: 100,
                tid: 101,
            }));
            if linux {
                a.add(&Event::GuestProcess(lbrprof_data::model::GuestProcess {
                    time_ns: 0,
                    vm: 0,
                    space: 0,
                    pid: 1000,
                    ppid: 1,
                    comm: "dd".into(),
                    exe: "/bin/dd".into(),
                    roots: vec![0x1000],
                }));
            }
            a.add(&Event::Sample(HostSample {
                pid: 100,
                tid: 101,
                period: 1,
                ip,
                mode: CpuMode::GuestKernel,
                ..HostSample::default()
            }));
            let p = a.finish();
            let (l, _) = p.ips.iter().next().unwrap();
            (p.spaces.modules.get(l.module).path.clone(), l.offset)
        };
        let hv = 0xffff_8000_0000_2262;
        assert_eq!(module_of(true, hv), (HYPERVISOR_MODULE.to_owned(), hv));
        // A kernel guest's upper half is its own code; the vsyscall page is the guest's.
        assert_ne!(module_of(false, hv).0, HYPERVISOR_MODULE);
        assert_ne!(module_of(true, 0xffff_ffff_ff60_0000).0, HYPERVISOR_MODULE);
        assert_ne!(module_of(true, 0x40_1000).0, HYPERVISOR_MODULE);
    }

    #[test]
    fn filters_pick_guest_snapshots_by_guest_process() {
        let kept = |filter: Filter| {
            let mut a = Aggregator::new(AggregateOptions {
                filter,
                ..AggregateOptions::default()
            });
            for (space, comm, root) in [(0, "sh", 0x1000), (1, "gzip", 0x2000)] {
                a.add(&Event::GuestProcess(lbrprof_data::model::GuestProcess {
                    time_ns: 0,
                    vm: 0,
                    space,
                    pid: 10 + space,
                    ppid: 1,
                    comm: comm.into(),
                    exe: format!("/bin/{comm}"),
                    roots: vec![root],
                }));
            }
            for cr3 in [0x1000, 0x2000, 0x2000] {
                let mut snap = snapshot(0, &[(0x400020, 0x400200, 0)]);
                snap.cr3 = cr3;
                a.add(&Event::Snapshot(snap));
            }
            let t = a.finish().totals;
            (t.snapshots, t.filtered_out)
        };
        let comms = |c: &str| Filter {
            comms: vec![c.into()],
            ..Filter::default()
        };
        assert_eq!(kept(comms("gzip")), (2, 1));
        assert_eq!(kept(comms("sh")), (1, 2));
        assert_eq!(kept(comms("vcpu0")), (0, 3));
        let pids = Filter {
            pids: vec![10],
            ..Filter::default()
        };
        assert_eq!(kept(pids), (1, 2));
        // Guest threads are unknown: a thread filter keeps no snapshot.
        let tids = Filter {
            tids: vec![11],
            ..Filter::default()
        };
        assert_eq!(kept(tids), (0, 3));
    }

    #[test]
    fn guest_stacks_end_at_the_first_implausible_return_address() {
        let stack_of = |ip: u64, frames: &[u64]| {
            let mut a = Aggregator::new(AggregateOptions::default());
            let mut snap = snapshot(0, &[(0x400020, 0x400200, 0)]);
            snap.guest_ip = ip;
            snap.guest_stack = frames.to_vec();
            a.add(&Event::Snapshot(snap));
            let p = a.finish();
            let stack = p.stacks.keys().next().unwrap().clone();
            // Without the guest root frame, as raw offsets (nothing is mapped).
            stack[..stack.len() - 1]
                .iter()
                .map(|l| l.offset)
                .collect::<Vec<_>>()
        };
        // Text read as return addresses ("1\n29206 2"): not canonical. The frame after
        // it came from the same bad chain and goes too.
        assert_eq!(
            stack_of(0x401000, &[0x400100, 0x3236303239320a31, 0x400200]),
            [0x401000, 0x400100]
        );
        // A user walk that lands in the kernel half, or the null page, ends there.
        assert_eq!(
            stack_of(0x401000, &[0xffff_ffff_8100_0000, 0x400200]),
            [0x401000]
        );
        assert_eq!(stack_of(0x401000, &[0x400100, 0x10]), [0x401000, 0x400100]);
        // A kernel guest's frames are all in the kernel half: kept.
        let k = 0xffff_ffff_8100_0000;
        assert_eq!(stack_of(k, &[k + 0x40, k + 0x80]), [k, k + 0x40, k + 0x80]);
    }

    #[test]
    fn guest_snapshots_resolve_in_the_process_their_cr3_names() {
        // Two guest processes with different programs at the same address: a
        // snapshot is symbolized in the one whose page-table root it was taken with.
        let mut a = Aggregator::new(AggregateOptions::default());
        for (space, path, roots) in [
            (0, "sh", [0x10_000, 0x11_000]),
            (1, "sort", [0x20_000, 0x21_000]),
        ] {
            a.add(&Event::GuestProcess(lbrprof_data::model::GuestProcess {
                time_ns: 0,
                vm: 0,
                space,
                pid: 100 + space,
                ppid: 99,
                comm: path.into(),
                exe: format!("/bin/{path}"),
                roots: roots.to_vec(),
            }));
            a.add(&Event::Mapping(Mapping {
                space: AddressSpace::Guest { vm: 0 },
                pid: space,
                path: format!("/bin/{path}"),
                ..match mapping() {
                    Event::Mapping(m) => m,
                    _ => unreachable!(),
                }
            }));
        }
        let mut snap = snapshot(0, &[(0x400020, 0x400200, 0)]);
        snap.cr3 = 0x21_000;
        a.add(&Event::Snapshot(snap.clone()));
        snap.cr3 = 0x10_000;
        a.add(&Event::Snapshot(snap.clone()));
        // An unknown root: the first process's space (recordings without processes).
        snap.cr3 = 0x99_000;
        a.add(&Event::Snapshot(snap));
        let p = a.finish();
        let module = |path: &str| {
            p.spaces
                .modules
                .iter()
                .find(|(_, m)| m.path == path)
                .unwrap()
                .0
        };
        let edge = |path| {
            let l = |o| Loc {
                module: module(path),
                offset: o,
            };
            p.edges.get(&(l(0x20), l(0x200))).map_or(0, |e| e.count)
        };
        assert_eq!((edge("/bin/sort"), edge("/bin/sh")), (1, 2));
    }

    #[test]
    fn guest_snapshots_feed_the_same_edge_and_range_tables() {
        let mut a = Aggregator::new(AggregateOptions::default());
        a.add(&Event::Mapping(Mapping {
            space: AddressSpace::Guest { vm: 0 },
            pid: 0,
            path: "guest.elf".into(),
            ..match mapping() {
                Event::Mapping(m) => m,
                _ => unreachable!(),
            }
        }));
        // Slots in MSR order, TOS = 1: newest is slot 1 (0x400300 -> 0x400010),
        // older slot 0 (0x400000+0x20 -> 0x400200).
        let snap = snapshot(
            1,
            &[
                (0x400020, 0x400200, 3),
                (0x400300, 0x400010, crate::lbr::lbr_info::LBR_INFO_MISPRED),
            ],
        );
        a.add(&Event::Snapshot(snap));
        let p = a.finish();
        assert_eq!(p.totals.snapshots, 1);
        assert_eq!(p.totals.branch_entries, 2);
        let m = p
            .spaces
            .modules
            .iter()
            .find(|(_, m)| m.path == "guest.elf")
            .unwrap()
            .0;
        let l = |o| Loc {
            module: m,
            offset: o,
        };
        assert_eq!(p.edges[&(l(0x300), l(0x10))].mispred, 1);
        assert_eq!(p.edges[&(l(0x20), l(0x200))].cycles_sum, 3);
        assert_eq!(p.ranges[&(l(0x200), l(0x300))], 1);
        // The guest stack ends in the vCPU root frame.
        let stack = p.stacks.keys().next().unwrap();
        assert_eq!(stack.last().unwrap().module, ModuleTable::GUEST_ROOT);
    }

    #[test]
    fn lbr_call_stack_mode_rebuilds_stacks_from_call_sites() {
        let mut a = Aggregator::new(AggregateOptions {
            lbr_call_stack: true,
            ..AggregateOptions::default()
        });
        a.add(&mapping());
        // Call-stack LBR: newest entry is the innermost call (caller site -> callee).
        a.add(&Event::Sample(HostSample {
            pid: 1,
            period: 1,
            ip: 0x400300,
            mode: CpuMode::User,
            branches: vec![br(0x400210, 0x400300), br(0x400110, 0x400200)],
            ..HostSample::default()
        }));
        let p = a.finish();
        let l = |o| Loc {
            module: crate::loc::ModuleId(4),
            offset: o,
        };
        let stack: Vec<Loc> = p.lbr_stacks.keys().next().unwrap().clone();
        assert_eq!(stack, vec![l(0x300), l(0x210), l(0x110)]);
    }

    #[test]
    fn perf_guest_samples_resolve_in_the_guest_address_space() {
        let mut a = Aggregator::new(AggregateOptions::default());
        // perf kvm: guest mappings and samples carry the VM's (host) pid.
        a.add(&Event::Mapping(Mapping {
            time_ns: 0,
            space: AddressSpace::Guest { vm: 42 },
            pid: 42,
            start: 0xffff_ffff_8100_0000,
            len: 0x10000,
            pgoff: 0x200,
            path: "guest-vmlinux".into(),
            build_id: None,
        }));
        a.add(&Event::Sample(HostSample {
            pid: 42,
            period: 1,
            ip: 0xffff_ffff_8100_0010,
            mode: CpuMode::GuestKernel,
            ..HostSample::default()
        }));
        let p = a.finish();
        assert_eq!(p.totals.guest_samples, 1);
        let (l, _) = p.ips.iter().next().unwrap();
        assert_eq!(p.spaces.modules.get(l.module).path, "guest-vmlinux");
        assert_eq!(l.offset, 0x210);
    }

    #[test]
    fn an_exec_clears_the_process_and_renames_it() {
        let mut a = Aggregator::new(AggregateOptions::default());
        a.add(&mapping());
        a.add(&Event::Task(TaskEvent::Comm {
            time_ns: 0,
            pid: 1,
            tid: 1,
            comm: "w".into(),
        }));
        let sample = |ip| {
            Event::Sample(HostSample {
                pid: 1,
                tid: 1,
                period: 1,
                ip,
                mode: CpuMode::User,
                ..HostSample::default()
            })
        };
        a.add(&sample(0x400050));
        a.add(&Event::Task(TaskEvent::Exec {
            time_ns: 1,
            pid: 1,
            tid: 1,
            comm: "x".into(),
        }));
        // Before the new program's mappings arrive, the old ones are gone.
        a.add(&sample(0x400050));
        a.add(&sample(0x400060));
        let p = a.finish();
        let modules: Vec<&str> = p
            .ips
            .keys()
            .map(|l| p.spaces.modules.get(l.module).path.as_str())
            .collect();
        assert!(modules.contains(&"/bin/w") && modules.contains(&"[unknown]"));
        // One process, counted under each name it had.
        let names = &p.processes[&1];
        let count = |n: &str| names.iter().find(|(c, _)| c == n).map(|(_, c)| c.samples);
        assert_eq!((count("w"), count("x")), (Some(1), Some(2)));
    }

    #[test]
    fn comm_root_ends_stacks_in_the_command_name() {
        let mut a = Aggregator::new(AggregateOptions {
            comm_root: true,
            ..AggregateOptions::default()
        });
        a.add(&mapping());
        a.add(&Event::Task(TaskEvent::Comm {
            time_ns: 0,
            pid: 1,
            tid: 1,
            comm: "w".into(),
        }));
        for tid in [1, 1, 0, 7] {
            a.add(&Event::Sample(HostSample {
                pid: 1,
                tid,
                period: 1,
                ip: 0x400050,
                mode: CpuMode::User,
                ..HostSample::default()
            }));
        }
        let p = a.finish();
        assert_eq!(p.root_names, ["w", "swapper", ":7"]);
        let root = p.comm_root_module.unwrap();
        let mut roots: Vec<(u64, u64)> = p
            .stacks
            .iter()
            .map(|(s, c)| {
                assert_eq!(s.len(), 2);
                assert_eq!(s[1].module, root);
                (s[1].offset, c.samples)
            })
            .collect();
        roots.sort();
        assert_eq!(roots, [(0, 2), (1, 1), (2, 1)]);
    }

    #[test]
    fn run_windows_split_the_stack_table() {
        let mut a = Aggregator::new(AggregateOptions {
            run_starts: vec![100, 200, 300],
            ..AggregateOptions::default()
        });
        for (t, period) in [(50, 1), (150, 2), (199, 3), (250, 4), (900, 5)] {
            a.add(&Event::Sample(HostSample {
                time_ns: t,
                pid: 1,
                period,
                ip: 0x10,
                ..HostSample::default()
            }));
        }
        let p = a.finish();
        let weight = |m: &FastMap<Vec<Loc>, Count>| m.values().map(|c| c.weight).sum::<u64>();
        // Before the first start counts to the first run; after the last to the last.
        let per_run: Vec<u64> = p.run_stacks.iter().map(weight).collect();
        assert_eq!(per_run, [1 + 2 + 3, 4, 5]);
        assert_eq!(weight(&p.stacks), 15);
        // Without run windows there are no per-run tables.
        assert!(
            Aggregator::new(AggregateOptions::default())
                .finish()
                .run_stacks
                .is_empty()
        );
    }

    #[test]
    fn filters_drop_samples() {
        let mut a = Aggregator::new(AggregateOptions {
            filter: Filter {
                pids: vec![2],
                ..Filter::default()
            },
            ..AggregateOptions::default()
        });
        a.add(&Event::Sample(HostSample {
            pid: 1,
            ..HostSample::default()
        }));
        let p = a.finish();
        assert_eq!((p.totals.samples, p.totals.filtered_out), (0, 1));
    }

    #[test]
    fn time_windows_keep_the_samples_inside_them() {
        let mut a = Aggregator::new(AggregateOptions {
            filter: Filter {
                times: vec![(100, 200), (300, 300)],
                ..Filter::default()
            },
            ..AggregateOptions::default()
        });
        for t in [0, 99, 100, 150, 200, 201, 300, 301] {
            a.add(&Event::Sample(HostSample {
                time_ns: t,
                pid: 1,
                period: 1,
                ..HostSample::default()
            }));
        }
        let p = a.finish();
        // 0 (no time), 100, 150, 200 and 300; both ends inclusive, as perf.
        assert_eq!((p.totals.samples, p.totals.filtered_out), (5, 3));
    }

    #[test]
    fn threaded_aggregation_matches_and_returns_errors() {
        let evs: Vec<Result<Event, String>> = vec![
            Ok(mapping()),
            Ok(Event::Sample(HostSample {
                pid: 1,
                ip: 0x400001,
                mode: CpuMode::User,
                period: 1,
                ..HostSample::default()
            })),
            Err("boom".into()),
            Ok(Event::Sample(HostSample::default())),
        ];
        let (p, err) = aggregate_events(evs.into_iter(), AggregateOptions::default());
        assert_eq!(p.totals.samples, 1);
        assert_eq!(err.as_deref(), Some("boom"));
    }
}
