//! `export --perf-data`: a recording written as a Linux `perf.data` file, for `perf
//! report`, `perf script`, `perf2bolt` and everything else that reads perf's format.
//!
//! # File layout
//!
//! ```text
//! offset 0    perf_file_header (104 bytes): "PERFILE2", size 104, attr_size 128,
//!             sections { attrs, data, event_types (empty) }, feature bitmap (256 bits)
//! 104         perf_file_attr × 2: perf_event_attr (PERF_ATTR_SIZE_VER5 = 112 bytes)
//!             + perf_file_section of its ids
//!             ids: host event: 1, then (2 << 32 | vm << 16 | vcpu) per guest vCPU;
//!             guest snapshots (`guest-lbr`): (1 << 32 | vm << 16 | vcpu) per vCPU
//! data        ID_INDEX (with a guest: every id's machine pid and vCPU), then records:
//!             MMAP2, COMM, FORK, EXIT, LOST, THROTTLE, SAMPLE, each with a
//!             sample_id trailer (sample_id_all): pid, tid, time, cpu, identifier;
//!             FINISHED_ROUND (header only)
//! after data  one perf_file_section per feature bit set, then the sections:
//!             BUILD_ID, HOSTNAME, OSRELEASE, VERSION, ARCH, NRCPUS, CMDLINE,
//!             EVENT_DESC (event names), BRANCH_STACK (when any sample has one),
//!             SAMPLE_TIME
//! ```
//!
//! Everything is little-endian (this writer runs on x86-64). Records are written in
//! the input's order, with a `FINISHED_ROUND` every [`ROUND_EVENTS`] events when the
//! input's times allow (see [`Plan::rounds`]), so perf sorts and delivers them round by
//! round; otherwise perf holds the whole file and sorts it.
//!
//! # What becomes what
//!
//! | lbrprof | perf.data |
//! |---|---|
//! | host sample (call chain, branch stack) | `SAMPLE` of event 1 (the recorded event's name), cpumode from the sample, call chain with `PERF_CONTEXT_*` markers where the frames' modes change |
//! | VM *v* | a perf guest machine whose pid is the VMM's host pid (as `perf kvm` names a guest by its QEMU's pid; `10000000 + 1000·v` when the recording has no vCPU threads), declared by `ID_INDEX` (`machine_pid` of the guest ids) |
//! | guest process (`GuestProcess`: a Linux program's fork or exec) | a process of the guest machine with the guest's pid: `FORK` from its parent, `COMM` (an exec's with `COMM_EXEC`), cpumode `GUEST_USER`; a single-image guest is one process, pid 1, named after its image |
//! | guest LBR snapshot of vCPU *n* | `SAMPLE` of event 2 (`guest-lbr`), cpumode `GUEST_USER`, in the guest process its CR3 names (pid = tid), cpu = *n*: ip = guest IP, call chain = guest IP + frame-pointer return addresses (user context: perf's call-chain walk knows no guest contexts), branch stack = the LBR newest first with MISPRED/IN_TX/ABORT/cycles from `LBR_INFO` |
//! | host sample of a vCPU thread in a guest cpumode (the guest was running) | `SAMPLE` of event 1 with that vCPU's guest id, cpumode `GUEST_USER`, in the guest process the vCPU's latest snapshot ran |
//! | guest mapping | `MMAP2` of the guest machine (cpumode `GUEST_USER`) in its address space's process, dated no later than that process's first snapshot (the recorder dates mappings when it drains them, after snapshots already taken) |
//! | host mapping | `MMAP2` (pid −1 and cpumode `KERNEL` for the kernel), build-id in the record when known |
//! | (lbrprof.data made on the running kernel) | `[kernel.kallsyms]_text` `MMAP2` from `/proc/kallsyms`, as perf record writes it ([`Meta::kernel_text`]) |
//! | comm, exec, fork, exit | `COMM` (exec: `PERF_RECORD_MISC_COMM_EXEC`), `FORK`, `EXIT` |
//! | ring-buffer loss, throttling | `LOST`, `THROTTLE` (other losses are left out and counted) |
//!
//! perf handles guest cpumodes only for guest machines it knows (`perf kvm`, or a file
//! whose `ID_INDEX` gives ids a `machine_pid`, which is how `perf inject --guest-data`
//! writes host and guest in one file, perf 6.0+). With the `ID_INDEX`, perf report,
//! perf script and perf2bolt name guest code from the guest's mappings (perf report
//! shows guest user code at level `[u]`, guest kernel addresses at `[g]`), and
//! `--guest-code`-style tooling tells guest from host by the cpumode. All guest code
//! is `GUEST_USER`: lbrprof's guests map their code (ring 0 included) as files of
//! their process; a guest kernel's `GUEST_KERNEL` lookups would need its kallsyms.
//! Guest threads are not told apart (the recording names no guest tids): a guest
//! sample's tid is its process's pid and its cpu its vCPU. Host samples that perf
//! itself recorded in a guest cpumode keep it, unless they are vCPU threads of an
//! lbrprof recording.
//!
//! With [`Meta::guest_as_host`] (`--guest-cpumode host`) the guest is written as before
//! perf had guest machines: user-mode processes of the host with pids
//! [`GUEST_PID_BASE`] + the guest's, and no `ID_INDEX`.
//!
//! Two passes over the input: [`Plan`] learns which optional sample fields the file needs
//! (call chains, branch stacks, guest snapshots, CPUs, time range) and [`write()`] writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Seek, SeekFrom, Write};

use lbrprof_data::model::{
    AddressSpace, Branch, BranchKind, CpuMode, Event, Frame, GuestProcess, LbrSnapshot, Loss,
    LossKind, Mapping, TaskEvent,
};
use lbrprof_data::perfdata::abi::*;
use lbrprof_data::sample::{BranchStack, SampleRef};
use lbrprof_data::source::{SampleVisitor, SourceError};

use crate::aggregate::VcpuSpaces;
use crate::lbr::snapshot_branches;

/// The id of host samples and of the host's side-band records.
const HOST_ID: u64 = 1;
/// First pseudo pid of a guest (VM `v` is `GUEST_PID_BASE + 1000 * v`): the guest
/// machine's pid when the recording does not name its VMM process.
pub const GUEST_PID_BASE: u32 = 10_000_000;
/// The guest pid of an address space no guest process names (a single-image guest).
pub const GUEST_IMAGE_PID: u32 = 1;

/// The id of the guest snapshots of vCPU `vcpu` of VM `vm` (of event `guest-lbr`).
fn snapshot_id(vm: u32, vcpu: u32) -> u64 {
    1 << 32 | u64::from(vm.min(0xffff)) << 16 | u64::from(vcpu.min(0xffff))
}

/// The id of the host event's samples taken while vCPU `vcpu` of VM `vm` ran the guest.
fn guest_mode_id(vm: u32, vcpu: u32) -> u64 {
    2 << 32 | u64::from(vm.min(0xffff)) << 16 | u64::from(vcpu.min(0xffff))
}
/// `perf_event_header.size` is a u16: records are kept below this.
const MAX_RECORD: usize = u16::MAX as usize & !7;
/// Name of the guest snapshot event.
pub const GUEST_EVENT: &str = "guest-lbr";
/// Input events between two `FINISHED_ROUND` records (see [`Plan::rounds`]).
pub const ROUND_EVENTS: u64 = 4096;

/// The time of an event, as perf orders the record written for it.
fn event_time(ev: &Event) -> Option<u64> {
    Some(match ev {
        Event::Sample(s) => s.time_ns,
        Event::Snapshot(s) => s.host_time_ns,
        Event::Mapping(m) => m.time_ns,
        Event::Task(
            TaskEvent::Comm { time_ns, .. }
            | TaskEvent::Exec { time_ns, .. }
            | TaskEvent::Fork { time_ns, .. }
            | TaskEvent::Exit { time_ns, .. },
        ) => *time_ns,
        Event::Loss(l) => l.time_ns,
        Event::Vcpu(_)
        | Event::VcpuStats(_)
        | Event::GuestProcess(_)
        | Event::ExactProfile(_)
        | Event::SamplePhases(_)
        | Event::VcpuSpace(_) => {
            return None;
        }
    })
}

/// Why the perf.data file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("cannot read the recording")]
    Input(#[source] SourceError),
}

/// What the first pass over the events learned.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub host_samples: u64,
    pub host_callchains: bool,
    pub host_branches: bool,
    pub snapshots: u64,
    pub guest_stacks: bool,
    /// vCPU → VM, from the recording's vCPU thread events.
    vcpu_vm: BTreeMap<u32, u32>,
    /// Host thread → (VM, vCPU), for the vCPU threads of a `record --vm` recording.
    vcpu_threads: BTreeMap<u32, (u32, u32)>,
    /// vCPUs that took snapshots or whose threads were sampled in the guest.
    vcpus: BTreeSet<u32>,
    /// VMs with guest mappings.
    guest_vms: BTreeSet<u32>,
    /// VM → the host pid of its VMM process (the guest machine's pid), from the vCPU
    /// thread events.
    vm_host_pid: BTreeMap<u32, u32>,
    /// vCPU → its host thread.
    vcpu_tid: BTreeMap<u32, u32>,
    /// VMs whose guest processes the recording names ([`Event::GuestProcess`]).
    process_vms: BTreeSet<u32>,
    /// (VM, CR3) → address space, as the events so far name them.
    cr3_space: BTreeMap<(u32, u64), u32>,
    /// (VM, address space) → the host time of its first snapshot (or host sample taken
    /// in it): its side-band records are dated no later (the recorder dates them when it
    /// drains them).
    space_first: BTreeMap<(u32, u32), u64>,
    /// (VM, guest pid) → the address spaces it ran, in order (fork, then each exec).
    pid_spaces: BTreeMap<(u32, u32), Vec<u32>>,
    /// Which address space each vCPU ran when (as the writer tracks it).
    vcpu_space: VcpuSpaces,
    max_cpu: u32,
    first_ns: Option<u64>,
    last_ns: u64,
    /// (path, build-id) of every mapping that has one.
    build_ids: BTreeMap<String, (Vec<u8>, bool)>,
    /// Whether the input maps the host kernel itself.
    pub kernel_mapped: bool,
    /// Events seen, and the time bounds perf's round flushing would use (see
    /// [`Plan::rounds`]).
    events: u64,
    max_time: u64,
    max_time_at_last_round: u64,
    flushed_below: u64,
    rounds_out_of_order: bool,
}

/// The first pass: a visitor of the input's events in stream order.
impl SampleVisitor for Plan {
    fn sideband(&mut self, event: &Event) {
        self.observe(event);
    }

    fn sample(&mut self, sample: &SampleRef<'_>) {
        self.observe_sample(sample);
    }
}

impl Plan {
    /// Notes what one event needs.
    pub fn observe(&mut self, ev: &Event) {
        self.count(event_time(ev));
        match ev {
            Event::Sample(s) => self.sample_needs(&SampleRef::of_host(s, 0)),
            Event::Snapshot(s) => {
                self.snapshots += 1;
                self.guest_stacks |= !s.guest_stack.is_empty();
                self.vcpus.insert(s.vcpu);
                let vm = self.vm_of(s.vcpu);
                let space = self.cr3_space.get(&(vm, s.cr3)).copied().unwrap_or(0);
                let first = self.space_first.entry((vm, space)).or_insert(u64::MAX);
                *first = (*first).min(s.host_time_ns);
                self.vcpu_space.snapshot(s.vcpu, space);
                self.max_cpu = self.max_cpu.max(s.vcpu);
                self.time(s.host_time_ns);
            }
            Event::Vcpu(v) => {
                self.vcpu_vm.insert(v.vcpu, v.vm);
                self.vcpu_threads.insert(v.tid, (v.vm, v.vcpu));
                self.vcpus.insert(v.vcpu);
                self.vm_host_pid.entry(v.vm).or_insert(v.pid);
                self.vcpu_tid.insert(v.vcpu, v.tid);
            }
            Event::GuestProcess(p) => {
                self.process_vms.insert(p.vm);
                self.guest_vms.insert(p.vm);
                let spaces = self.pid_spaces.entry((p.vm, p.pid)).or_default();
                if spaces.last() != Some(&p.space) {
                    spaces.push(p.space);
                }
                for &r in &p.roots {
                    self.cr3_space.insert((p.vm, r), p.space);
                }
                // Its records are dated by its snapshots: perf cannot deliver them in
                // rounds.
                self.rounds_out_of_order = true;
            }
            Event::VcpuSpace(v) => self.vcpu_space.told(v),
            Event::Mapping(m) => {
                self.kernel_mapped |= m.space == AddressSpace::HostKernel;
                if let AddressSpace::Guest { vm } = m.space {
                    self.guest_vms.insert(vm);
                    self.rounds_out_of_order = true;
                }
                // perf takes a bracketed name in its build-id table for a kernel
                // module's: lbrprof's own pseudo-modules (`[lbrprof_shim]`, the guest's trap
                // stubs) there made perf 6.1 abort (double free) in `report -b` on the
                // user-space mappings of that name. Their MMAP2 records keep the build-id.
                let pseudo = m.path.starts_with('[') && m.path != "[vdso]";
                if let Some(id) = m.build_id.as_ref().filter(|_| !pseudo) {
                    let kernel = m.space == AddressSpace::HostKernel;
                    self.build_ids
                        .entry(m.path.clone())
                        .or_insert_with(|| (id.clone(), kernel));
                }
            }
            _ => {}
        }
    }

    /// Notes what one sample needs.
    pub fn observe_sample(&mut self, s: &SampleRef<'_>) {
        self.count(Some(s.time_ns));
        self.sample_needs(s);
    }

    /// Counts one event (at time `t`, if it has one) towards perf's rounds.
    fn count(&mut self, t: Option<u64>) {
        if let Some(t) = t {
            // perf, at a FINISHED_ROUND, delivers every queued event up to the largest
            // time seen at the round before; a later event older than that comes out of
            // order (and perf warns).
            if t < self.flushed_below {
                self.rounds_out_of_order = true;
            }
            self.max_time = self.max_time.max(t);
        }
        self.events += 1;
        if self.events.is_multiple_of(ROUND_EVENTS) {
            self.flushed_below = self.max_time_at_last_round;
            self.max_time_at_last_round = self.max_time;
        }
    }

    fn sample_needs(&mut self, s: &SampleRef<'_>) {
        // A vCPU thread's sample in the guest is written in the guest process the vCPU
        // last ran: that process must be known by then.
        if s.mode.is_guest()
            && let Some(&(vm, vcpu)) = self.vcpu_threads.get(&s.tid)
        {
            let space = self.vcpu_space.at(vcpu, s.time_ns);
            let first = self.space_first.entry((vm, space)).or_insert(u64::MAX);
            *first = (*first).min(s.time_ns);
        }
        self.host_samples += 1;
        self.host_callchains |= s.callchain.has_frames();
        self.host_branches |= !s.branches.is_empty();
        self.max_cpu = self.max_cpu.max(s.cpu);
        self.time(s.time_ns);
    }

    fn time(&mut self, t: u64) {
        self.first_ns = Some(self.first_ns.map_or(t, |f| f.min(t)));
        self.last_ns = self.last_ns.max(t);
    }

    fn vm_of(&self, vcpu: u32) -> u32 {
        self.vcpu_vm.get(&vcpu).copied().unwrap_or(0)
    }

    /// (VM, address space) → the latest time its side-band records may have: before its
    /// first snapshot and before the records of what its processes ran next (an exec's
    /// records must not come before the forked process's own, which perf would take for a
    /// newer process and a newer mapping).
    fn space_deadlines(&self) -> BTreeMap<(u32, u32), u64> {
        let mut out: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        for (&(vm, _), spaces) in &self.pid_spaces {
            let mut due = u64::MAX;
            for &space in spaces.iter().rev() {
                let first = self
                    .space_first
                    .get(&(vm, space))
                    .copied()
                    .unwrap_or(u64::MAX);
                due = due.min(first);
                let e = out.entry((vm, space)).or_insert(u64::MAX);
                *e = (*e).min(due);
            }
        }
        for (&key, &first) in &self.space_first {
            let e = out.entry(key).or_insert(u64::MAX);
            *e = (*e).min(first);
        }
        out
    }

    /// The VMs of the recording.
    fn vms(&self) -> BTreeSet<u32> {
        self.vcpus
            .iter()
            .map(|&c| self.vm_of(c))
            .chain(self.guest_vms.iter().copied())
            .collect()
    }

    /// Every (VM, vCPU), with at least vCPU 0 of each VM.
    fn guest_vcpus(&self) -> BTreeSet<(u32, u32)> {
        let mut v: BTreeSet<(u32, u32)> = self.vcpus.iter().map(|&c| (self.vm_of(c), c)).collect();
        for vm in self.vms() {
            if !v.iter().any(|&(m, _)| m == vm) {
                v.insert((vm, 0));
            }
        }
        v
    }

    /// The pid of VM `vm`'s guest machine: its VMM process's host pid, as `perf kvm`
    /// names a guest by its QEMU's pid.
    pub fn machine_pid(&self, vm: u32) -> u32 {
        self.vm_host_pid
            .get(&vm)
            .copied()
            .unwrap_or(GUEST_PID_BASE + 1000 * vm.min(999_000))
    }

    /// The id the side-band records of VM `vm`'s guest carry (one perf maps to its
    /// machine).
    fn side_band_id(&self, vm: u32) -> u64 {
        let vcpu = self
            .guest_vcpus()
            .into_iter()
            .find(|&(m, _)| m == vm)
            .map_or(0, |(_, c)| c);
        if self.snapshots > 0 {
            snapshot_id(vm, vcpu)
        } else {
            guest_mode_id(vm, vcpu)
        }
    }

    /// Whether the file gets a `FINISHED_ROUND` record every [`ROUND_EVENTS`] input
    /// events, so perf delivers (and frees) events as it reads instead of holding the
    /// whole file: only when the input's times allow it (nothing comes after a round
    /// that perf would already have delivered past).
    pub fn rounds(&self) -> bool {
        !self.rounds_out_of_order
    }

    /// Whether there is anything to write.
    pub fn is_empty(&self) -> bool {
        self.host_samples == 0 && self.snapshots == 0
    }
}

/// Facts for the file's header and feature sections.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    /// The host event's name, as perf prints it ("cycles:ppp", "cpu-clock:u", …).
    pub event: String,
    /// Sampling frequency (Hz), or 0 when `period` is used.
    pub frequency: u64,
    pub period: u64,
    /// The event count one guest snapshot stands for (written as its period).
    pub snapshot_period: u64,
    pub hostname: String,
    pub os_release: String,
    /// Who wrote the file (the VERSION feature).
    pub version: String,
    pub arch: String,
    pub cmdline: Vec<String>,
    /// Build-ids the input knows beyond its mappings' (perf.data's build-id table), by
    /// path; kernel entries (`[kernel.kallsyms]`, modules) are recognized by name.
    pub build_ids: Vec<(String, Vec<u8>)>,
    /// Guest pseudo-process names by VM (default: `guest`).
    pub guest_names: BTreeMap<u32, String>,
    /// The recorded kernel's text, `[_text, _etext)`, for a recording that has no kernel
    /// mapping of its own (lbrprof.data): written as perf record's
    /// `[kernel.kallsyms]_text` MMAP, so perf names kernel frames from kallsyms.
    pub kernel_text: Option<(u64, u64)>,
    /// Write the guest as user-mode processes of the host (pids [`GUEST_PID_BASE`] +
    /// the guest's) instead of a guest machine: for readers that know no guest machines
    /// (perf before 6.0, perf.data parsers other than perf's).
    pub guest_as_host: bool,
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub host_samples: u64,
    pub guest_samples: u64,
    pub branch_entries: u64,
    pub mappings: u64,
    pub task_records: u64,
    /// Host samples of vCPU threads taken in a guest cpumode, written in the guest
    /// pseudo-process (see the module doc).
    pub guest_mode_samples: u64,
    /// Call-chain frames cut to keep a record within perf's 64 KiB record size.
    pub truncated_frames: u64,
    /// Loss events of kinds perf.data has no record for (channel full, frozen LBR).
    pub skipped_losses: u64,
    pub bytes: u64,
}

/// Writes the input to `out` as perf.data: `read` hands every side-band event and
/// every sample of the input (the same stream [`Plan`] saw) to the visitor it is given,
/// in stream order ([`lbrprof_data::source::visit_input`]).
pub fn write<W: Write + Seek>(
    out: W,
    meta: &Meta,
    plan: &Plan,
    read: impl FnOnce(&mut dyn SampleVisitor) -> Result<(), SourceError>,
) -> Result<WriteStats, WriteError> {
    let mut w = Writer {
        out: io::BufWriter::with_capacity(1 << 20, out),
        pos: 0,
        plan,
        meta,
        stats: WriteStats::default(),
        buf: Vec::with_capacity(4096),
        guest_started: BTreeSet::new(),
        cr3_space: BTreeMap::new(),
        space_pid: BTreeMap::new(),
        guest_pids: BTreeMap::new(),
        vcpu_space: VcpuSpaces::default(),
        space_deadlines: plan.space_deadlines(),
    };
    let attrs = w.attrs();
    // The header and attributes are rewritten at the end, when the data size is known.
    w.put(&[0; PERF_FILE_HEADER_LEN])?;
    let attrs_offset = w.pos;
    let attrs_len = attrs.len() * (ATTR_SIZE + PERF_FILE_SECTION_LEN);
    w.put(&vec![0; attrs_len])?;
    let mut ids_at = Vec::with_capacity(attrs.len());
    for (ids, _, _) in &attrs {
        ids_at.push((w.pos, 8 * ids.len() as u64));
        for id in ids {
            w.put(&id.to_le_bytes())?;
        }
    }
    let data_offset = w.pos;
    w.id_index(&attrs)?;
    if let Some((start, end)) = meta.kernel_text.filter(|_| !plan.kernel_mapped) {
        w.mapping(&Mapping {
            time_ns: 0,
            space: AddressSpace::HostKernel,
            pid: u32::MAX,
            start,
            len: end.saturating_sub(start),
            pgoff: start,
            path: "[kernel.kallsyms]_text".to_owned(),
            build_id: None,
        })?;
    }
    // Single-image guests' processes first (their COMMs are at time 0).
    for vm in plan.vms() {
        w.start_guest(vm)?;
    }
    let rounds = plan.rounds();
    let mut records = Records {
        w: &mut w,
        rounds,
        events: 0,
        error: None,
    };
    let read = read(&mut records);
    if let Some(e) = records.error {
        return Err(e.into());
    }
    read.map_err(WriteError::Input)?;
    let data_size = w.pos - data_offset;
    let features = w.features(&attrs);
    let feat_offset = w.pos;
    let mut section = feat_offset + (features.len() * PERF_FILE_SECTION_LEN) as u64;
    let mut table = Vec::new();
    for (_, body) in &features {
        table.extend_from_slice(&section.to_le_bytes());
        table.extend_from_slice(&(body.len() as u64).to_le_bytes());
        section += body.len() as u64;
    }
    w.put(&table)?;
    for (_, body) in &features {
        w.put(body)?;
    }
    w.stats.bytes = w.pos;

    let mut head = Vec::with_capacity(PERF_FILE_HEADER_LEN + attrs_len);
    head.extend_from_slice(&PERF_MAGIC);
    head.extend_from_slice(&(PERF_FILE_HEADER_LEN as u64).to_le_bytes());
    head.extend_from_slice(&((ATTR_SIZE + PERF_FILE_SECTION_LEN) as u64).to_le_bytes());
    for (offset, size) in [
        (attrs_offset, attrs_len as u64),
        (data_offset, data_size),
        (0, 0),
    ] {
        head.extend_from_slice(&offset.to_le_bytes());
        head.extend_from_slice(&size.to_le_bytes());
    }
    let mut bitmap = [0u64; 4];
    for (bit, _) in &features {
        bitmap[*bit as usize / 64] |= 1 << (*bit % 64);
    }
    for word in bitmap {
        head.extend_from_slice(&word.to_le_bytes());
    }
    debug_assert_eq!(head.len(), PERF_FILE_HEADER_LEN);
    for ((_, attr, _), (at, len)) in attrs.iter().zip(&ids_at) {
        head.extend_from_slice(attr);
        head.extend_from_slice(&at.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
    }
    let stats = w.stats.clone();
    let mut out = w.out.into_inner().map_err(|e| e.into_error())?;
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&head)?;
    out.flush()?;
    Ok(stats)
}

/// The second pass: the records of the input's events, in stream order, with a
/// `FINISHED_ROUND` every [`ROUND_EVENTS`] events when [`Plan::rounds`]. After a write
/// error nothing more is written.
struct Records<'w, 'a, W: Write> {
    w: &'w mut Writer<'a, W>,
    rounds: bool,
    events: u64,
    error: Option<io::Error>,
}

impl<W: Write> Records<'_, '_, W> {
    fn write(&mut self, record: impl FnOnce(&mut Writer<'_, W>) -> io::Result<()>) {
        if self.error.is_some() {
            return;
        }
        self.events += 1;
        let mut written = record(self.w);
        if written.is_ok() && self.rounds && self.events.is_multiple_of(ROUND_EVENTS) {
            self.w.begin(PERF_RECORD_FINISHED_ROUND, 0);
            written = self.w.finish();
        }
        self.error = written.err();
    }
}

impl<W: Write> SampleVisitor for Records<'_, '_, W> {
    fn sideband(&mut self, event: &Event) {
        self.write(|w| w.event(event));
    }

    fn sample(&mut self, sample: &SampleRef<'_>) {
        self.write(|w| w.host_sample(sample));
    }
}

/// The size of the `perf_event_attr` written.
const ATTR_SIZE: usize = PERF_ATTR_SIZE_VER5 as usize;

struct Writer<'a, W: Write> {
    out: io::BufWriter<W>,
    pos: u64,
    plan: &'a Plan,
    meta: &'a Meta,
    stats: WriteStats,
    buf: Vec<u8>,
    /// VMs whose guest has been announced.
    guest_started: BTreeSet<u32>,
    /// (VM, CR3) → guest address space, as the stream's guest processes name them.
    cr3_space: BTreeMap<(u32, u64), u32>,
    /// (VM, address space) → the guest pid running it.
    space_pid: BTreeMap<(u32, u32), u32>,
    /// (VM, guest pid) → its address space and name, once announced.
    guest_pids: BTreeMap<(u32, u32), (u32, String)>,
    /// Which address space each vCPU ran when (where its host samples taken in the
    /// guest ran).
    vcpu_space: VcpuSpaces,
    /// [`Plan::space_deadlines`].
    space_deadlines: BTreeMap<(u32, u32), u64>,
}

/// The sample_id fields every record carries (`sample_id_all`).
const ID_FIELDS: u64 =
    PERF_SAMPLE_IDENTIFIER | PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_CPU;

impl<W: Write> Writer<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn host_sample_type(&self) -> u64 {
        let mut t = ID_FIELDS | PERF_SAMPLE_IP | PERF_SAMPLE_PERIOD;
        if self.plan.host_callchains {
            t |= PERF_SAMPLE_CALLCHAIN;
        }
        if self.plan.host_branches {
            t |= PERF_SAMPLE_BRANCH_STACK;
        }
        t
    }

    fn guest_sample_type(&self) -> u64 {
        let mut t = ID_FIELDS | PERF_SAMPLE_IP | PERF_SAMPLE_PERIOD | PERF_SAMPLE_BRANCH_STACK;
        if self.plan.guest_stacks {
            t |= PERF_SAMPLE_CALLCHAIN;
        }
        t
    }

    /// (ids, perf_event_attr bytes, name) of each event written: the host event's ids
    /// are [`HOST_ID`] and one per vCPU for its samples taken in the guest; `guest-lbr`
    /// has one per vCPU.
    fn attrs(&self) -> Vec<(Vec<u64>, Vec<u8>, String)> {
        let m = self.meta;
        let (type_, config) = event_type(&m.event);
        let freq = m.frequency > 0;
        let side_band = ATTR_FLAG_MMAP
            | ATTR_FLAG_COMM
            | ATTR_FLAG_TASK
            | ATTR_FLAG_MMAP2
            | ATTR_FLAG_COMM_EXEC;
        let host = attr(
            type_,
            config,
            if freq { m.frequency } else { m.period },
            self.host_sample_type(),
            side_band
                | ATTR_FLAG_SAMPLE_ID_ALL
                | modifier_flags(&m.event)
                | if freq { ATTR_FLAG_FREQ } else { 0 },
            if self.plan.host_branches {
                PERF_SAMPLE_BRANCH_ANY
            } else {
                0
            },
        );
        let vcpus = self.plan.guest_vcpus();
        let host_ids = std::iter::once(HOST_ID)
            .chain(vcpus.iter().map(|&(vm, c)| guest_mode_id(vm, c)))
            .collect();
        let mut v = vec![(host_ids, host, m.event.clone())];
        if self.plan.snapshots > 0 {
            let guest = attr(
                PERF_TYPE_SOFTWARE,
                PERF_COUNT_SW_CPU_CLOCK,
                m.snapshot_period.max(1),
                self.guest_sample_type(),
                // The guest only (its samples are in guest user mode).
                ATTR_FLAG_SAMPLE_ID_ALL
                    | ATTR_FLAG_EXCLUDE_KERNEL
                    | ATTR_FLAG_EXCLUDE_HV
                    | ATTR_FLAG_EXCLUDE_HOST,
                PERF_SAMPLE_BRANCH_ANY,
            );
            let ids = vcpus.iter().map(|&(vm, c)| snapshot_id(vm, c)).collect();
            v.push((ids, guest, GUEST_EVENT.to_owned()));
        }
        v
    }

    /// Starts a record of `type_` in `self.buf` (header filled in by [`Self::finish`]).
    fn begin(&mut self, type_: u32, misc: u16) {
        self.buf.clear();
        self.buf.extend_from_slice(&type_.to_le_bytes());
        self.buf.extend_from_slice(&misc.to_le_bytes());
        self.buf.extend_from_slice(&0u16.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A NUL-terminated string padded to 8 bytes.
    fn string(&mut self, s: &str) {
        let bytes = s.as_bytes();
        // Keep records within their u16 size even for absurd names.
        let bytes = &bytes[..bytes.len().min(4096)];
        self.buf.extend_from_slice(bytes);
        let padded = (bytes.len() + 1).next_multiple_of(8);
        self.buf.resize(self.buf.len() + padded - bytes.len(), 0);
    }

    /// The sample_id trailer of a side-band record, then writes the record.
    fn finish_side_band(&mut self, pid: u32, tid: u32, time: u64) -> io::Result<()> {
        self.finish_side_band_of(HOST_ID, pid, tid, time)
    }

    /// The sample_id trailer with id `id` (which names the machine), then writes it.
    fn finish_side_band_of(&mut self, id: u64, pid: u32, tid: u32, time: u64) -> io::Result<()> {
        self.u32(pid);
        self.u32(tid);
        self.u64(time);
        self.u32(0);
        self.u32(0);
        self.u64(id);
        self.finish()
    }

    /// `PERF_RECORD_ID_INDEX` (as `perf inject --guest-data` writes it), when there is a
    /// guest: each id's machine, so that perf files the guest's samples and side-band
    /// records under a guest machine whose pid is the VMM's (and turns its guest
    /// support on).
    fn id_index(&mut self, attrs: &[(Vec<u64>, Vec<u8>, String)]) -> io::Result<()> {
        if self.plan.vms().is_empty() || self.meta.guest_as_host {
            return Ok(());
        }
        let ids: Vec<u64> = attrs.iter().flat_map(|(ids, _, _)| ids.clone()).collect();
        let owner = |id: u64| -> Option<(u32, u32)> {
            self.plan
                .guest_vcpus()
                .into_iter()
                .find(|&(vm, c)| id == snapshot_id(vm, c) || id == guest_mode_id(vm, c))
        };
        let owners: Vec<Option<(u32, u32)>> = ids.iter().map(|&id| owner(id)).collect();
        self.begin(PERF_RECORD_ID_INDEX, 0);
        self.u64(ids.len() as u64);
        for (&id, o) in ids.iter().zip(&owners) {
            // id, idx, cpu (-1: any), tid: the vCPU's host thread.
            self.u64(id);
            self.u64(0);
            self.u64(u64::MAX);
            let tid = o.map_or(u64::MAX, |(vm, c)| {
                u64::from(
                    self.plan
                        .vcpu_tid
                        .get(&c)
                        .copied()
                        .unwrap_or(self.plan.machine_pid(vm)),
                )
            });
            self.u64(tid);
        }
        for o in &owners {
            // machine_pid (0: the host), vcpu.
            match o {
                Some((vm, c)) => {
                    self.u64(u64::from(self.plan.machine_pid(*vm)));
                    self.u64(u64::from(*c));
                }
                None => {
                    self.u64(0);
                    self.u64(u64::MAX);
                }
            }
        }
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let size = self.buf.len() as u16;
        self.buf[6..8].copy_from_slice(&size.to_le_bytes());
        let buf = std::mem::take(&mut self.buf);
        let r = self.put(&buf);
        self.buf = buf;
        r
    }

    fn event(&mut self, ev: &Event) -> io::Result<()> {
        match ev {
            Event::Sample(s) => self.host_sample(&SampleRef::of_host(s, 0)),
            Event::Snapshot(s) => self.snapshot(s),
            Event::Mapping(m) => self.mapping(m),
            Event::Task(t) => self.task(t),
            Event::Loss(l) => self.loss(l),
            Event::GuestProcess(p) => self.guest_process(p),
            Event::VcpuSpace(v) => {
                self.vcpu_space.told(v);
                Ok(())
            }
            Event::Vcpu(_)
            | Event::VcpuStats(_)
            | Event::ExactProfile(_)
            | Event::SamplePhases(_) => Ok(()),
        }
    }

    /// The guest pid running address space `space` of VM `vm`: the guest process's,
    /// else [`GUEST_IMAGE_PID`] for a single-image guest's only space (0), else the
    /// mapping's own pid (a guest of a perf.data input, whose mappings carry pids).
    fn guest_pid(&self, vm: u32, space: u32) -> u32 {
        let pid = self
            .space_pid
            .get(&(vm, space))
            .copied()
            .unwrap_or(if space == 0 { GUEST_IMAGE_PID } else { space });
        self.pid_written(vm, pid)
    }

    /// The pid a guest pid is written as: itself in the guest machine, else (with
    /// [`Meta::guest_as_host`]) a pseudo pid above the kernel's `PID_MAX_LIMIT`
    /// (4194304), so that it never collides with a host process.
    fn pid_written(&self, vm: u32, pid: u32) -> u32 {
        if self.meta.guest_as_host {
            GUEST_PID_BASE
                .saturating_add(vm.saturating_mul(GUEST_PID_BASE))
                .saturating_add(pid)
        } else {
            pid
        }
    }

    /// The cpumode of the guest's records: guest user, or user with
    /// [`Meta::guest_as_host`].
    fn guest_misc(&self) -> u16 {
        if self.meta.guest_as_host {
            PERF_RECORD_MISC_USER
        } else {
            PERF_RECORD_MISC_GUEST_USER
        }
    }

    /// When the side-band records of guest address space `space` are dated: when the
    /// recorder drained them, unless a snapshot that needs them is older (the recorder
    /// drains mappings and snapshots in batches): then just before that (see
    /// [`Plan::space_deadlines`]).
    fn guest_side_band_time(&self, vm: u32, space: u32, time: u64) -> u64 {
        match self.space_deadlines.get(&(vm, space)) {
            Some(&due) if due <= time => due.saturating_sub(1),
            _ => time,
        }
    }

    /// A process in the guest (a Linux program's fork or exec): FORK from its parent
    /// the first time, then COMM (an exec's with `PERF_RECORD_MISC_COMM_EXEC`), in the
    /// guest machine.
    fn guest_process(&mut self, p: &GuestProcess) -> io::Result<()> {
        for &r in &p.roots {
            self.cr3_space.insert((p.vm, r), p.space);
        }
        self.space_pid.insert((p.vm, p.space), p.pid);
        let time = self.guest_side_band_time(p.vm, p.space, p.time_ns);
        let id = self.plan.side_band_id(p.vm);
        let before = self.guest_pids.get(&(p.vm, p.pid)).cloned();
        if before.as_ref() == Some(&(p.space, p.comm.clone())) {
            return Ok(());
        }
        if before.is_none() && self.guest_pids.contains_key(&(p.vm, p.ppid)) && p.ppid != p.pid {
            let (pid, ppid) = (
                self.pid_written(p.vm, p.pid),
                self.pid_written(p.vm, p.ppid),
            );
            self.begin(PERF_RECORD_FORK, self.guest_misc());
            for v in [pid, ppid, pid, ppid] {
                self.u32(v);
            }
            self.u64(time);
            self.stats.task_records += 1;
            self.finish_side_band_of(id, pid, pid, time)?;
        }
        let exec = before.is_some_and(|(space, _)| space != p.space);
        self.guest_pids
            .insert((p.vm, p.pid), (p.space, p.comm.clone()));
        self.guest_comm(p.vm, p.pid, time, &p.comm, exec)
    }

    fn guest_comm(
        &mut self,
        vm: u32,
        pid: u32,
        time: u64,
        comm: &str,
        exec: bool,
    ) -> io::Result<()> {
        let pid = self.pid_written(vm, pid);
        let misc = self.guest_misc() | if exec { PERF_RECORD_MISC_COMM_EXEC } else { 0 };
        self.begin(PERF_RECORD_COMM, misc);
        self.u32(pid);
        self.u32(pid);
        self.string(comm);
        self.stats.task_records += 1;
        let id = self.plan.side_band_id(vm);
        self.finish_side_band_of(id, pid, pid, time)
    }

    fn host_sample(&mut self, s: &SampleRef<'_>) -> io::Result<()> {
        // A vCPU thread sampled while its guest ran: the time went to the guest, so the
        // sample goes to the guest machine, in the guest process the vCPU last ran, in
        // guest user mode, where perf can name it.
        let in_guest = s
            .mode
            .is_guest()
            .then(|| self.plan.vcpu_threads.get(&s.tid).copied())
            .flatten();
        let (id, pid, tid, mode) = match in_guest {
            Some((vm, vcpu)) => {
                self.start_guest(vm)?;
                let space = self.vcpu_space.at(vcpu, s.time_ns);
                let pid = self.guest_pid(vm, space);
                self.stats.guest_mode_samples += 1;
                let mode = if self.meta.guest_as_host {
                    CpuMode::User
                } else {
                    CpuMode::GuestUser
                };
                (guest_mode_id(vm, vcpu), pid, pid, mode)
            }
            None => (HOST_ID, s.pid, s.tid, s.mode),
        };
        self.begin(PERF_RECORD_SAMPLE, misc_of(mode));
        let fixed = 8 * 6 + 8 + 8 + 24 * s.branches.len();
        self.sample_head(id, s.ip, pid, tid, s.time_ns, s.cpu, s.period);
        if self.plan.host_callchains {
            let frames = s.callchain.frames(s.mode);
            let frames = frames.iter().map(|f| Frame {
                addr: f.addr,
                // perf's call-chain walk knows no guest contexts (it drops the chain):
                // guest frames are user frames of the guest thread.
                mode: if in_guest.is_some() && f.mode.is_guest() {
                    CpuMode::User
                } else {
                    f.mode
                },
            });
            self.callchain(frames, fixed);
        }
        if self.plan.host_branches {
            self.branches(s.branches);
        }
        self.stats.host_samples += 1;
        self.finish()
    }

    #[allow(clippy::too_many_arguments)]
    fn sample_head(
        &mut self,
        id: u64,
        ip: u64,
        pid: u32,
        tid: u32,
        time: u64,
        cpu: u32,
        period: u64,
    ) {
        // IDENTIFIER, IP, TID, TIME, CPU, PERIOD: perf_event.h's order.
        self.u64(id);
        self.u64(ip);
        self.u32(pid);
        self.u32(tid);
        self.u64(time);
        self.u32(cpu);
        self.u32(0);
        self.u64(period);
    }

    /// The call chain with a `PERF_CONTEXT_*` marker before each run of frames of one
    /// mode, cut so that the record stays within perf's record size.
    fn callchain(&mut self, frames: impl Iterator<Item = Frame>, fixed: usize) {
        let at = self.buf.len();
        self.u64(0);
        let budget = MAX_RECORD.saturating_sub(at + fixed) / 8;
        let mut n = 0u64;
        let mut context = None;
        let mut cut = 0;
        for f in frames {
            let marker = context_of(f.mode).filter(|&c| Some(c) != context);
            let need = 1 + usize::from(marker.is_some());
            if n as usize + need > budget {
                cut += 1;
                continue;
            }
            if let Some(c) = marker {
                self.u64(c);
                context = Some(c);
                n += 1;
            }
            self.u64(f.addr);
            n += 1;
        }
        self.stats.truncated_frames += cut;
        self.buf[at..at + 8].copy_from_slice(&n.to_le_bytes());
    }

    fn branches(&mut self, branches: BranchStack<'_>) {
        self.u64(branches.len() as u64);
        for b in branches.iter() {
            self.u64(b.from);
            self.u64(b.to);
            self.u64(branch_flags(&b));
        }
        self.stats.branch_entries += branches.len() as u64;
    }

    fn snapshot(&mut self, s: &LbrSnapshot) -> io::Result<()> {
        let vm = self.plan.vm_of(s.vcpu);
        self.start_guest(vm)?;
        let space = self.cr3_space.get(&(vm, s.cr3)).copied().unwrap_or(0);
        self.vcpu_space.snapshot(s.vcpu, space);
        let pid = self.guest_pid(vm, space);
        self.begin(PERF_RECORD_SAMPLE, self.guest_misc());
        let branches = snapshot_branches(s);
        let fixed = 8 * 6 + 8 + 8 + 24 * branches.len();
        self.sample_head(
            snapshot_id(vm, s.vcpu),
            s.guest_ip,
            pid,
            pid,
            s.host_time_ns,
            s.vcpu,
            self.meta.snapshot_period.max(1),
        );
        if self.plan.guest_stacks {
            let frames = std::iter::once(s.guest_ip)
                .chain(s.guest_stack.iter().copied())
                // User frames of the guest thread: perf's call-chain walk knows no
                // guest contexts.
                .map(|addr| Frame {
                    addr,
                    mode: CpuMode::User,
                });
            self.callchain(frames, fixed);
        }
        self.branches(BranchStack::Decoded(&branches));
        self.stats.guest_samples += 1;
        self.finish()
    }

    /// Announces a single-image guest's process (whose recording names no guest
    /// processes) before its first sample or mapping, at time 0 so that it precedes
    /// every sample once perf sorts.
    fn start_guest(&mut self, vm: u32) -> io::Result<()> {
        if self.plan.process_vms.contains(&vm) || !self.guest_started.insert(vm) {
            return Ok(());
        }
        let name = self
            .meta
            .guest_names
            .get(&vm)
            .cloned()
            .unwrap_or_else(|| "guest".to_owned());
        self.guest_pids
            .insert((vm, GUEST_IMAGE_PID), (0, name.clone()));
        self.guest_comm(vm, GUEST_IMAGE_PID, 0, &name, false)
    }

    fn comm(&mut self, pid: u32, tid: u32, time: u64, comm: &str, exec: bool) -> io::Result<()> {
        let misc = if exec { PERF_RECORD_MISC_COMM_EXEC } else { 0 };
        self.begin(PERF_RECORD_COMM, misc);
        self.u32(pid);
        self.u32(tid);
        self.string(comm);
        self.stats.task_records += 1;
        self.finish_side_band(pid, tid, time)
    }

    fn mapping(&mut self, m: &Mapping) -> io::Result<()> {
        // A guest mapping's pid is its address space's (see `GuestProcess`).
        let (pid, misc, id, time) = match m.space {
            AddressSpace::HostKernel => (u32::MAX, PERF_RECORD_MISC_KERNEL, HOST_ID, m.time_ns),
            AddressSpace::HostUser => (m.pid, PERF_RECORD_MISC_USER, HOST_ID, m.time_ns),
            AddressSpace::Guest { vm } => {
                self.start_guest(vm)?;
                (
                    self.guest_pid(vm, m.pid),
                    self.guest_misc(),
                    self.plan.side_band_id(vm),
                    self.guest_side_band_time(vm, m.pid, m.time_ns),
                )
            }
        };
        let build_id = m.build_id.as_deref().filter(|id| id.len() <= 20);
        let misc = misc
            | if build_id.is_some() {
                PERF_RECORD_MISC_MMAP_BUILD_ID
            } else {
                0
            };
        self.begin(PERF_RECORD_MMAP2, misc);
        self.u32(pid);
        self.u32(pid);
        self.u64(m.start);
        self.u64(m.len);
        self.u64(m.pgoff);
        match build_id {
            Some(id) => {
                // build_id_size, 3 reserved bytes, build_id[20], in place of
                // maj, min, ino, ino_generation.
                let mut field = [0u8; 24];
                field[0] = id.len() as u8;
                field[4..4 + id.len()].copy_from_slice(id);
                self.buf.extend_from_slice(&field);
            }
            None => self.buf.extend_from_slice(&[0; 24]),
        }
        const PROT_READ_EXEC: u32 = 1 | 4;
        const MAP_PRIVATE: u32 = 2;
        self.u32(PROT_READ_EXEC);
        self.u32(MAP_PRIVATE);
        self.string(&m.path);
        self.stats.mappings += 1;
        self.finish_side_band_of(id, pid, pid, time)
    }

    fn task(&mut self, t: &TaskEvent) -> io::Result<()> {
        match t {
            TaskEvent::Comm {
                time_ns,
                pid,
                tid,
                comm,
            } => self.comm(*pid, *tid, *time_ns, comm, false),
            TaskEvent::Exec {
                time_ns,
                pid,
                tid,
                comm,
            } => self.comm(*pid, *tid, *time_ns, comm, true),
            TaskEvent::Fork {
                time_ns,
                pid,
                tid,
                ppid,
                ptid,
            } => self.fork_exit(PERF_RECORD_FORK, [*pid, *ppid, *tid, *ptid], *time_ns),
            TaskEvent::Exit { time_ns, pid, tid } => {
                self.fork_exit(PERF_RECORD_EXIT, [*pid, *pid, *tid, *tid], *time_ns)
            }
        }
    }

    fn fork_exit(&mut self, type_: u32, ids: [u32; 4], time: u64) -> io::Result<()> {
        self.begin(type_, 0);
        for id in ids {
            self.u32(id);
        }
        self.u64(time);
        self.stats.task_records += 1;
        self.finish_side_band(ids[0], ids[2], time)
    }

    fn loss(&mut self, l: &Loss) -> io::Result<()> {
        let tid = l.tid.unwrap_or(u32::MAX);
        match l.kind {
            LossKind::RingBuffer => {
                self.begin(PERF_RECORD_LOST, 0);
                self.u64(HOST_ID);
                self.u64(l.count);
            }
            LossKind::Throttled => {
                self.begin(PERF_RECORD_THROTTLE, 0);
                self.u64(l.time_ns);
                self.u64(HOST_ID);
                self.u64(HOST_ID);
            }
            LossKind::ChannelFull | LossKind::Frozen => {
                self.stats.skipped_losses += 1;
                return Ok(());
            }
        }
        self.finish_side_band(tid, tid, l.time_ns)
    }

    /// The feature sections, by feature bit (ascending, as perf reads them).
    fn features(&self, attrs: &[(Vec<u64>, Vec<u8>, String)]) -> Vec<(u32, Vec<u8>)> {
        let m = self.meta;
        let mut f = vec![
            (HEADER_BUILD_ID, self.build_id_section()),
            (HEADER_HOSTNAME, header_string(&m.hostname)),
            (HEADER_OSRELEASE, header_string(&m.os_release)),
            (HEADER_VERSION, header_string(&m.version)),
            (HEADER_ARCH, header_string(&m.arch)),
        ];
        let nr_cpus = self.plan.max_cpu + 1;
        let mut nrcpus = nr_cpus.to_le_bytes().to_vec();
        nrcpus.extend_from_slice(&nr_cpus.to_le_bytes());
        f.push((HEADER_NRCPUS, nrcpus));
        let mut cmdline = (m.cmdline.len() as u32).to_le_bytes().to_vec();
        for arg in &m.cmdline {
            cmdline.extend_from_slice(&header_string(arg));
        }
        f.push((HEADER_CMDLINE, cmdline));
        let mut desc = (attrs.len() as u32).to_le_bytes().to_vec();
        desc.extend_from_slice(&(ATTR_SIZE as u32).to_le_bytes());
        for (ids, attr, name) in attrs {
            desc.extend_from_slice(attr);
            desc.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            desc.extend_from_slice(&header_string(name));
            for id in ids {
                desc.extend_from_slice(&id.to_le_bytes());
            }
        }
        f.push((HEADER_EVENT_DESC, desc));
        if self.plan.host_branches || self.plan.snapshots > 0 {
            f.push((HEADER_BRANCH_STACK, Vec::new()));
        }
        let mut times = self.plan.first_ns.unwrap_or(0).to_le_bytes().to_vec();
        times.extend_from_slice(&self.plan.last_ns.to_le_bytes());
        f.push((HEADER_SAMPLE_TIME, times));
        f
    }

    /// `HEADER_BUILD_ID`: one `build_id_event` per file with a known build-id.
    fn build_id_section(&self) -> Vec<u8> {
        let mut all = self.plan.build_ids.clone();
        for (path, id) in &self.meta.build_ids {
            all.entry(path.clone())
                .or_insert_with(|| (id.clone(), is_kernel_path(path)));
        }
        let mut out = Vec::new();
        for (path, (id, kernel)) in &all {
            if id.len() > 20 {
                continue;
            }
            let kernel = *kernel || is_kernel_path(path);
            let misc = if kernel {
                PERF_RECORD_MISC_KERNEL
            } else {
                PERF_RECORD_MISC_USER
            } | PERF_RECORD_MISC_BUILD_ID_SIZE;
            let name = path.as_bytes();
            let name_len = (name.len() + 1).next_multiple_of(NAME_ALIGN);
            let size = 8 + 4 + 24 + name_len;
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&misc.to_le_bytes());
            out.extend_from_slice(&(size as u16).to_le_bytes());
            // pid: HOST_KERNEL_ID (-1), the host machine.
            out.extend_from_slice(&(-1i32).to_le_bytes());
            let mut field = [0u8; 24];
            field[..id.len()].copy_from_slice(id);
            field[20] = id.len() as u8;
            out.extend_from_slice(&field);
            out.extend_from_slice(name);
            out.resize(out.len() + name_len - name.len(), 0);
        }
        out
    }
}

/// The pseudo (pid, tid) of vCPU `vcpu` of VM `vm`.
pub fn guest_ids(vm: u32, vcpu: u32) -> (u32, u32) {
    let pid = GUEST_PID_BASE + 1000 * vm.min(999_000);
    (pid, pid + 1 + vcpu.min(998))
}

/// Whether perf files `path` under the kernel's DSOs: `[kernel.kallsyms]`, modules by
/// path (`….ko`, compressed or not) or by `[name]`; the user-space `[vdso]`-like
/// pseudo-files are not (perf mis-handles them as kernel DSOs).
fn is_kernel_path(path: &str) -> bool {
    const USER_PSEUDO: [&str; 5] = ["[vdso]", "[vdso32]", "[vdsox32]", "[vsyscall]", "[vvar]"];
    if path.starts_with('[') {
        return !USER_PSEUDO.contains(&path);
    }
    let name = path.rsplit('/').next().unwrap_or(path);
    [".ko", ".ko.xz", ".ko.gz", ".ko.zst"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// perf's `do_write_string`: u32 length, then the string NUL-padded to [`NAME_ALIGN`].
fn header_string(s: &str) -> Vec<u8> {
    let len = (s.len() + 1).next_multiple_of(NAME_ALIGN);
    let mut v = (len as u32).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v.resize(4 + len, 0);
    v
}

fn attr(
    type_: u32,
    config: u64,
    period_or_freq: u64,
    sample_type: u64,
    flags: u64,
    branch_sample_type: u64,
) -> Vec<u8> {
    let mut a = Vec::with_capacity(ATTR_SIZE);
    a.extend_from_slice(&type_.to_le_bytes());
    a.extend_from_slice(&(ATTR_SIZE as u32).to_le_bytes());
    a.extend_from_slice(&config.to_le_bytes());
    a.extend_from_slice(&period_or_freq.to_le_bytes());
    a.extend_from_slice(&sample_type.to_le_bytes());
    a.extend_from_slice(&0u64.to_le_bytes()); // read_format
    a.extend_from_slice(&flags.to_le_bytes());
    a.resize(72, 0); // wakeup_events, bp_type, config1, config2
    a.extend_from_slice(&branch_sample_type.to_le_bytes());
    a.resize(ATTR_SIZE, 0);
    a
}

/// perf_event_attr type and config for an event named as perf names it; events perf
/// would not know by these numbers are written as cpu-clock (their name still shows).
fn event_type(name: &str) -> (u32, u64) {
    let base = name.split(':').next().unwrap_or_default();
    match base {
        "cycles" | "cpu-cycles" => (PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES),
        "instructions" => (PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS),
        "branches" | "branch-instructions" => {
            (PERF_TYPE_HARDWARE, PERF_COUNT_HW_BRANCH_INSTRUCTIONS)
        }
        "task-clock" => (PERF_TYPE_SOFTWARE, PERF_COUNT_SW_TASK_CLOCK),
        _ => (PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CPU_CLOCK),
    }
}

/// The attr bits perf's event modifiers stand for (`cycles:ppp`, `instructions:uH`), so
/// perf derives the same facts from the file as from the original (e.g. that no event
/// samples the kernel).
fn modifier_flags(name: &str) -> u64 {
    let Some((_, mods)) = name.split_once(':') else {
        return 0;
    };
    if !mods.chars().all(|c| "ukhHGpPS".contains(c)) {
        return 0;
    }
    let mut f = 0;
    if mods.contains(['u', 'k', 'h']) {
        for (c, bit) in [
            ('u', ATTR_FLAG_EXCLUDE_USER),
            ('k', ATTR_FLAG_EXCLUDE_KERNEL),
            ('h', ATTR_FLAG_EXCLUDE_HV),
        ] {
            if !mods.contains(c) {
                f |= bit;
            }
        }
    }
    if mods.contains('H') && !mods.contains('G') {
        f |= ATTR_FLAG_EXCLUDE_GUEST;
    }
    if mods.contains('G') && !mods.contains('H') {
        f |= ATTR_FLAG_EXCLUDE_HOST;
    }
    let precise = mods.chars().filter(|&c| c == 'p').count().min(3) as u64;
    f | precise << ATTR_FLAG_PRECISE_IP_SHIFT
}

fn misc_of(mode: CpuMode) -> u16 {
    match mode {
        CpuMode::Unknown => PERF_RECORD_MISC_CPUMODE_UNKNOWN,
        CpuMode::Kernel => PERF_RECORD_MISC_KERNEL,
        CpuMode::User => PERF_RECORD_MISC_USER,
        CpuMode::Hypervisor => PERF_RECORD_MISC_HYPERVISOR,
        CpuMode::GuestKernel => PERF_RECORD_MISC_GUEST_KERNEL,
        CpuMode::GuestUser => PERF_RECORD_MISC_GUEST_USER,
    }
}

fn context_of(mode: CpuMode) -> Option<u64> {
    match mode {
        CpuMode::Unknown => None,
        CpuMode::Kernel => Some(PERF_CONTEXT_KERNEL),
        CpuMode::User => Some(PERF_CONTEXT_USER),
        CpuMode::Hypervisor => Some(PERF_CONTEXT_HV),
        CpuMode::GuestKernel => Some(PERF_CONTEXT_GUEST_KERNEL),
        CpuMode::GuestUser => Some(PERF_CONTEXT_GUEST_USER),
    }
}

/// `perf_branch_entry`'s flag word.
fn branch_flags(b: &Branch) -> u64 {
    let f = &b.flags;
    let kind = match f.kind {
        BranchKind::Unknown => PERF_BR_UNKNOWN,
        BranchKind::Cond => PERF_BR_COND,
        BranchKind::Uncond => PERF_BR_UNCOND,
        BranchKind::IndJump => PERF_BR_IND,
        BranchKind::Call => PERF_BR_CALL,
        BranchKind::IndCall => PERF_BR_IND_CALL,
        BranchKind::Ret => PERF_BR_RET,
        BranchKind::Syscall => PERF_BR_SYSCALL,
        BranchKind::Sysret => PERF_BR_SYSRET,
        BranchKind::Irq => PERF_BR_IRQ,
        BranchKind::Exception => PERF_BR_SERROR,
        BranchKind::Eret => PERF_BR_ERET,
        BranchKind::Far => PERF_BR_UNKNOWN,
    };
    let mut v = (u64::from(f.cycles) & PERF_BRANCH_CYCLES_MASK) << PERF_BRANCH_CYCLES_SHIFT
        | (kind & PERF_BRANCH_TYPE_MASK) << PERF_BRANCH_TYPE_SHIFT;
    for (set, bit) in [
        (f.mispred, PERF_BRANCH_MISPRED),
        (f.predicted, PERF_BRANCH_PREDICTED),
        (f.in_tx, PERF_BRANCH_IN_TX),
        (f.abort, PERF_BRANCH_ABORT),
    ] {
        if set {
            v |= bit;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbrprof_data::input::{InputError, open_any};
    use lbrprof_data::model::{BranchFlags, HostSample, LbrEntry, SnapshotReason, VcpuThread};
    use lbrprof_data::source::{EventSource, SampleSource, visit_input};

    fn host_sample(time_ns: u64, with_branches: bool) -> HostSample {
        HostSample {
            event: 0,
            time_ns,
            pid: 42,
            tid: 43,
            cpu: 1,
            period: 1000,
            ip: 0xffff_ffff_8100_0010,
            mode: CpuMode::Kernel,
            callchain: vec![
                Frame {
                    addr: 0xffff_ffff_8100_0010,
                    mode: CpuMode::Kernel,
                },
                Frame {
                    addr: 0x40_1234,
                    mode: CpuMode::User,
                },
                Frame {
                    addr: 0x40_1000,
                    mode: CpuMode::User,
                },
            ],
            branches: if with_branches {
                vec![Branch {
                    from: 0x40_1010,
                    to: 0x40_1200,
                    flags: BranchFlags {
                        mispred: true,
                        cycles: 17,
                        kind: BranchKind::Call,
                        ..BranchFlags::default()
                    },
                }]
            } else {
                Vec::new()
            },
            branch_hw_index: None,
        }
    }

    fn snapshot(vcpu: u32, time: u64) -> LbrSnapshot {
        LbrSnapshot {
            vcpu,
            host_time_ns: time,
            guest_tsc: 0,
            reason: SnapshotReason::Pmi { counter: 0 },
            tos: 1,
            entries: vec![
                LbrEntry {
                    from: 0x1010,
                    to: 0x1020,
                    info: 5,
                },
                LbrEntry {
                    from: 0x1030,
                    to: 0x1040,
                    info: crate::lbr::lbr_info::LBR_INFO_MISPRED | 9,
                },
            ],
            guest_ip: 0x1044,
            guest_sp: 0,
            guest_fp: 0,
            cr3: 0,
            guest_stack: vec![0x2000],
            frozen_events: 0,
        }
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Mapping(Mapping {
                time_ns: 0,
                space: AddressSpace::HostUser,
                pid: 42,
                start: 0x40_0000,
                len: 0x1_0000,
                pgoff: 0,
                path: "/bin/prog".into(),
                build_id: Some(vec![0xab; 20]),
            }),
            Event::Mapping(Mapping {
                time_ns: 0,
                space: AddressSpace::Guest { vm: 0 },
                pid: 0,
                start: 0x1000,
                len: 0x2000,
                pgoff: 0x1000,
                path: "/tmp/guest.elf".into(),
                build_id: None,
            }),
            Event::Task(TaskEvent::Comm {
                time_ns: 1,
                pid: 42,
                tid: 43,
                comm: "prog".into(),
            }),
            Event::Vcpu(VcpuThread {
                time_ns: 1,
                vm: 0,
                vcpu: 1,
                pid: 42,
                tid: 43,
            }),
            Event::Sample(host_sample(100, true)),
            Event::Snapshot(snapshot(1, 150)),
            Event::Sample(host_sample(200, false)),
            Event::Task(TaskEvent::Exit {
                time_ns: 300,
                pid: 42,
                tid: 43,
            }),
        ]
    }

    fn write_file(events: &[Event], dir: &std::path::Path) -> (std::path::PathBuf, WriteStats) {
        write_file_with(events, dir, false)
    }

    fn write_file_with(
        events: &[Event],
        dir: &std::path::Path,
        guest_as_host: bool,
    ) -> (std::path::PathBuf, WriteStats) {
        let mut plan = Plan::default();
        events.iter().for_each(|e| plan.observe(e));
        let meta = Meta {
            event: "cycles:u".into(),
            period: 1000,
            snapshot_period: 1,
            hostname: "h".into(),
            version: "test".into(),
            guest_as_host,
            ..Meta::default()
        };
        let path = dir.join("out.perf.data");
        let file = std::fs::File::create(&path).unwrap();
        let stats = write(file, &meta, &plan, |v| {
            EventSource::new(events.iter().cloned().map(Ok::<_, InputError>)).walk_in_order(v)
        })
        .unwrap();
        (path, stats)
    }

    /// What lbrprof writes, lbrprof's own perf.data import reads back as the same
    /// samples, mappings and task events (guest snapshots come back as guest-user-mode
    /// samples of the guest's process, pid 1 for a single-image guest).
    #[test]
    fn the_import_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let evs = events();
        let (path, stats) = write_file(&evs, dir.path());
        assert_eq!(stats.host_samples, 2);
        assert_eq!(stats.guest_samples, 1);
        assert_eq!(stats.bytes, std::fs::metadata(&path).unwrap().len());
        let mut input = open_any(&path).unwrap();
        assert_eq!(input.header().sampling.event, "cycles:u");
        let back: Vec<Event> = input.by_ref().map(Result::unwrap).collect();
        let samples: Vec<&HostSample> = back
            .iter()
            .filter_map(|e| match e {
                Event::Sample(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0], &host_sample(100, true));
        // A sample without branches in a file whose samples have branch stacks.
        assert_eq!(samples[2], &host_sample(200, false));
        let (gpid, gtid) = (GUEST_IMAGE_PID, GUEST_IMAGE_PID);
        let g = samples[1];
        assert_eq!(
            (g.pid, g.tid, g.cpu, g.ip, g.mode),
            (gpid, gtid, 1, 0x1044, CpuMode::GuestUser)
        );
        let addrs: Vec<u64> = g.callchain.iter().map(|f| f.addr).collect();
        assert_eq!(addrs, vec![0x1044, 0x2000]);
        // Newest first: TOS is slot 1.
        assert_eq!((g.branches[0].from, g.branches[1].from), (0x1030, 0x1010));
        assert!(g.branches[0].flags.mispred && g.branches[0].flags.cycles == 9);
        assert!(g.branches[1].flags.predicted && g.branches[1].flags.cycles == 5);
        let maps: Vec<&Mapping> = back
            .iter()
            .filter_map(|e| match e {
                Event::Mapping(m) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(maps[0], {
            let Event::Mapping(m) = &evs[0] else { panic!() };
            m
        });
        assert_eq!((maps[1].pid, maps[1].start), (gpid, 0x1000));
        assert!(matches!(maps[1].space, AddressSpace::Guest { .. }));
        let comms: Vec<(u32, String)> = back
            .iter()
            .filter_map(|e| match e {
                Event::Task(TaskEvent::Comm { tid, comm, .. }) => Some((*tid, comm.clone())),
                _ => None,
            })
            .collect();
        assert!(comms.contains(&(43, "prog".to_owned())), "{comms:?}");
        assert!(comms.contains(&(gtid, "guest".to_owned())), "{comms:?}");
        assert!(
            back.iter()
                .any(|e| matches!(e, Event::Task(TaskEvent::Exit { tid: 43, .. })))
        );
        assert!(input.warnings().is_empty(), "{:?}", input.warnings());
    }

    #[test]
    fn host_only_files_have_one_event_and_no_branch_stack_field() {
        let dir = tempfile::tempdir().unwrap();
        let evs = vec![Event::Sample(host_sample(5, false))];
        let (path, _) = write_file(&evs, dir.path());
        let bytes = std::fs::read(&path).unwrap();
        // attrs section: one perf_file_attr.
        let attrs_size = u64::from_le_bytes(bytes[32..40].try_into().unwrap());
        assert_eq!(attrs_size, (ATTR_SIZE + PERF_FILE_SECTION_LEN) as u64);
        let sample_type = u64::from_le_bytes(bytes[104 + 24..104 + 32].try_into().unwrap());
        assert_eq!(sample_type & PERF_SAMPLE_BRANCH_STACK, 0);
        assert_ne!(sample_type & PERF_SAMPLE_CALLCHAIN, 0);
    }

    fn loss(time_ns: u64) -> Event {
        Event::Loss(Loss {
            time_ns,
            kind: LossKind::RingBuffer,
            count: 1,
            tid: None,
        })
    }

    /// A Linux program's guest processes (fork, exec) become processes of the guest
    /// machine: each snapshot in the process its CR3 names, each mapping in its address
    /// space's process, dated no later than the first snapshot that needs it.
    #[test]
    fn guest_processes_are_processes_of_the_guest_machine() {
        let process = |space, pid, ppid, comm: &str, root| {
            Event::GuestProcess(GuestProcess {
                time_ns: 100,
                vm: 0,
                space,
                pid,
                ppid,
                comm: comm.into(),
                exe: format!("/bin/{comm}"),
                roots: vec![root, root | 0x1000],
            })
        };
        let map = |space, path: &str| {
            Event::Mapping(Mapping {
                time_ns: 100,
                space: AddressSpace::Guest { vm: 0 },
                pid: space,
                start: 0x40_0000,
                len: 0x1000,
                pgoff: 0,
                path: path.into(),
                build_id: None,
            })
        };
        let snap = |cr3, time| {
            let mut s = snapshot(0, time);
            s.cr3 = cr3;
            Event::Snapshot(s)
        };
        let evs = vec![
            Event::Vcpu(VcpuThread {
                time_ns: 1,
                vm: 0,
                vcpu: 0,
                pid: 500,
                tid: 501,
            }),
            process(0, 7, 0, "sh", 0x10_0000),
            map(0, "/bin/sh"),
            process(1, 8, 7, "sh", 0x20_0000),
            process(2, 8, 7, "producer", 0x30_0000),
            map(2, "/bin/producer"),
            // Taken before the recorder drained the exec's records.
            snap(0x30_0000, 90),
            snap(0x10_1000, 95),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (path, stats) = write_file(&evs, dir.path());
        assert_eq!(stats.guest_samples, 2);
        let mut input = open_any(&path).unwrap();
        let back: Vec<Event> = input.by_ref().map(Result::unwrap).collect();
        let pids: Vec<(u32, CpuMode)> = back
            .iter()
            .filter_map(|e| match e {
                Event::Sample(s) => Some((s.pid, s.mode)),
                _ => None,
            })
            .collect();
        assert_eq!(pids, vec![(8, CpuMode::GuestUser), (7, CpuMode::GuestUser)]);
        let maps: Vec<(u32, &str, u64)> = back
            .iter()
            .filter_map(|e| match e {
                Event::Mapping(m) => Some((m.pid, m.path.as_str(), m.time_ns)),
                _ => None,
            })
            .collect();
        // In time order.
        assert_eq!(maps, vec![(8, "/bin/producer", 89), (7, "/bin/sh", 94)]);
        let tasks: Vec<&TaskEvent> = back
            .iter()
            .filter_map(|e| match e {
                Event::Task(t) => Some(t),
                _ => None,
            })
            .collect();
        assert!(
            tasks.iter().any(|t| matches!(
                t,
                TaskEvent::Fork {
                    pid: 8,
                    ppid: 7,
                    ..
                }
            )),
            "{tasks:?}"
        );
        assert!(
            tasks
                .iter()
                .any(|t| matches!(t, TaskEvent::Exec { pid: 8, comm, .. } if comm == "producer")),
            "{tasks:?}"
        );

        // As host processes: pseudo pids, user mode.
        let (path, _) = write_file_with(&evs, dir.path(), true);
        let back: Vec<Event> = open_any(&path).unwrap().map(Result::unwrap).collect();
        let pids: Vec<(u32, CpuMode)> = back
            .iter()
            .filter_map(|e| match e {
                Event::Sample(s) => Some((s.pid, s.mode)),
                _ => None,
            })
            .collect();
        let pseudo = |pid| GUEST_PID_BASE + pid;
        assert_eq!(
            pids,
            vec![(pseudo(8), CpuMode::User), (pseudo(7), CpuMode::User)]
        );
        assert!(back.iter().any(|e| matches!(
            e,
            Event::Task(TaskEvent::Fork { pid, ppid, .. }) if *pid == pseudo(8) && *ppid == pseudo(7)
        )));
    }

    /// Rounds only when no event would come after perf flushed past its time: a stream
    /// in time order gets them, one that goes back further than a round does not.
    #[test]
    fn rounds_only_when_the_times_allow() {
        let n = ROUND_EVENTS * 3;
        let mut ordered = Plan::default();
        (0..n).for_each(|t| ordered.observe(&loss(t)));
        assert!(ordered.rounds());
        // Back by less than a round, after two rounds: still fine.
        ordered.observe(&loss(n - ROUND_EVENTS / 2));
        assert!(ordered.rounds());
        // Back to before the round perf has flushed.
        ordered.observe(&loss(ROUND_EVENTS / 2));
        assert!(!ordered.rounds());
        // The file has a FINISHED_ROUND record every ROUND_EVENTS events.
        let dir = tempfile::tempdir().unwrap();
        let evs: Vec<Event> = (0..n)
            .map(|t| Event::Sample(host_sample(t, false)))
            .collect();
        let (path, _) = write_file(&evs, dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let data_offset = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
        let data_size = u64::from_le_bytes(bytes[48..56].try_into().unwrap()) as usize;
        let (mut at, mut rounds) = (data_offset, 0);
        while at < data_offset + data_size {
            let kind = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            rounds += usize::from(kind == PERF_RECORD_FINISHED_ROUND);
            at += usize::from(u16::from_le_bytes(
                bytes[at + 6..at + 8].try_into().unwrap(),
            ));
        }
        assert_eq!(rounds as u64, n / ROUND_EVENTS);
        let back = open_any(&path)
            .unwrap()
            .filter(|e| matches!(e, Ok(Event::Sample(_))));
        assert_eq!(back.count() as u64, n);
    }

    /// Both passes read an input the same way whether in place (a perf.data file's
    /// records in perf's order) or as the event stream: the same file comes out.
    #[test]
    fn an_input_read_in_place_exports_as_its_event_stream() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_file(&events(), dir.path());
        let export = |stream_only| {
            let mut plan = Plan::default();
            visit_input(&mut open_any(&path).unwrap(), stream_only, &mut plan).unwrap();
            let meta = Meta {
                event: "cycles:u".into(),
                snapshot_period: 1,
                ..Meta::default()
            };
            let mut input = open_any(&path).unwrap();
            let mut out = std::io::Cursor::new(Vec::new());
            write(&mut out, &meta, &plan, |v| {
                visit_input(&mut input, stream_only, v)
            })
            .unwrap();
            (plan.host_samples, plan.snapshots, out.into_inner())
        };
        let (in_place, stream) = (export(false), export(true));
        // The guest snapshots come back as samples of the guest event.
        assert_eq!((in_place.0, in_place.1), (3, 0));
        assert!(
            in_place == stream,
            "the in-place export differs from the stream's"
        );
    }

    #[test]
    fn modifiers_become_attr_bits() {
        let f = modifier_flags("instructions:uH");
        assert_eq!(
            f,
            ATTR_FLAG_EXCLUDE_KERNEL | ATTR_FLAG_EXCLUDE_HV | ATTR_FLAG_EXCLUDE_GUEST
        );
        assert_eq!(
            modifier_flags("cycles:ppp"),
            3 << ATTR_FLAG_PRECISE_IP_SHIFT
        );
        assert_eq!(modifier_flags("cpu-clock"), 0);
        // A PMU event's "/…/" config is not a modifier list.
        assert_eq!(modifier_flags("cs_etm/autofdo/u:x"), 0);
    }

    #[test]
    fn kernel_paths_are_told_from_user_pseudo_files() {
        assert!(is_kernel_path("[kernel.kallsyms]"));
        assert!(is_kernel_path("[nf_tables]"));
        assert!(is_kernel_path("/lib/modules/6.1/kernel/net/x.ko.xz"));
        assert!(!is_kernel_path("[vdso]"));
        assert!(!is_kernel_path("/usr/lib/libc.so.6"));
    }

    #[test]
    fn branch_flag_word_matches_perf_branch_entry() {
        let b = Branch {
            from: 1,
            to: 2,
            flags: BranchFlags {
                predicted: true,
                in_tx: true,
                cycles: 0x1234,
                kind: BranchKind::Ret,
                ..BranchFlags::default()
            },
        };
        let w = branch_flags(&b);
        assert_eq!(w & PERF_BRANCH_PREDICTED, PERF_BRANCH_PREDICTED);
        assert_eq!(w & PERF_BRANCH_IN_TX, PERF_BRANCH_IN_TX);
        assert_eq!(w & PERF_BRANCH_MISPRED, 0);
        assert_eq!(
            (w >> PERF_BRANCH_CYCLES_SHIFT) & PERF_BRANCH_CYCLES_MASK,
            0x1234
        );
        assert_eq!(
            (w >> PERF_BRANCH_TYPE_SHIFT) & PERF_BRANCH_TYPE_MASK,
            PERF_BR_RET
        );
    }
}
