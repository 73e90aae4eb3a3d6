//! The in-memory form of a recording: a [`Header`] and a stream of [`Event`]s.
//!
//! The recorder produces these, the `lbrprof.data` writer stores them, the reader and the
//! `perf.data` import yield them, and reports consume them. Addresses are kept exactly as
//! the sampled machine saw them (host virtual or guest virtual); mapping them to files is
//! the symbolizer's job, with the [`Mapping`] events as its input.

use serde::{Deserialize, Serialize};

pub use crate::snapshot::{LbrBackend, LbrEntry, LbrSnapshot, SnapshotReason};

/// Which privilege level and machine an address belongs to (perf's `PERF_RECORD_MISC_*`
/// cpumodes and `PERF_CONTEXT_*` callchain markers, without the markers themselves).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum CpuMode {
    #[default]
    Unknown,
    Kernel,
    User,
    Hypervisor,
    GuestKernel,
    GuestUser,
}

impl CpuMode {
    pub fn is_guest(self) -> bool {
        matches!(self, CpuMode::GuestKernel | CpuMode::GuestUser)
    }
    pub fn is_kernel(self) -> bool {
        matches!(
            self,
            CpuMode::Kernel | CpuMode::GuestKernel | CpuMode::Hypervisor
        )
    }
}

/// One frame of a sampled call chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub addr: u64,
    pub mode: CpuMode,
}

/// The kind of a taken branch, as perf's `PERF_BR_*` types or as classified by decoding
/// the instruction at the branch source.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum BranchKind {
    #[default]
    Unknown,
    /// Conditional jump (Jcc, JCXZ, LOOP).
    Cond,
    /// Unconditional direct jump.
    Uncond,
    /// Indirect jump.
    IndJump,
    /// Direct near call.
    Call,
    /// Indirect near call.
    IndCall,
    /// Near return.
    Ret,
    Syscall,
    Sysret,
    /// Interrupt, including NMI/PMI.
    Irq,
    /// Exception or fault.
    Exception,
    /// Return from interrupt or exception (IRET).
    Eret,
    /// Other far transfer (far call/jmp/ret).
    Far,
}

/// What the LBR (or perf) says about one taken branch beyond its addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BranchFlags {
    pub mispred: bool,
    pub predicted: bool,
    pub in_tx: bool,
    pub abort: bool,
    /// Core cycles since the previous LBR entry; 0 when the LBR does not provide them.
    pub cycles: u16,
    pub kind: BranchKind,
}

/// One taken branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Branch {
    pub from: u64,
    pub to: u64,
    pub flags: BranchFlags,
}

/// A sample of the host (or, for imported `perf.data` with guest samples, of a guest seen
/// from the host).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSample {
    /// CLOCK_MONOTONIC nanoseconds (for imported perf.data: perf's clock).
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// Sample period (event count this sample stands for).
    pub period: u64,
    pub ip: u64,
    pub mode: CpuMode,
    /// Call chain, innermost first, callchain context markers removed (each frame keeps
    /// its mode instead). The first frame is normally `ip` itself.
    pub callchain: Vec<Frame>,
    /// Branch stack, newest first (perf's order); empty when none was sampled.
    pub branches: Vec<Branch>,
    /// PERF_SAMPLE_BRANCH_HW_INDEX, when recorded.
    pub branch_hw_index: Option<u64>,
    /// Which event took it: an index into [`SamplingConfig::events`] (0 in a recording
    /// of one event). Not part of the sample's own encoding: a recording of several
    /// events stores it beside each sample (chunk kind 12, see [`crate::recording`]).
    #[serde(skip)]
    pub event: u32,
}

/// Where an executable mapping lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressSpace {
    /// A host process's user space (`pid` of the [`Mapping`]).
    HostUser,
    /// The host kernel and its modules.
    HostKernel,
    /// A guest of the VMM shim; guest virtual addresses.
    Guest { vm: u32 },
}

/// The VM index of the (single) VM a recording holds: the `vm` in [`AddressSpace::Guest`]
/// and the `pid` of that VM's mappings.
pub const VM_INDEX: u32 = 0;

/// An executable mapping (perf's MMAP2, or a guest image's load).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub time_ns: u64,
    pub space: AddressSpace,
    pub pid: u32,
    pub start: u64,
    pub len: u64,
    /// File offset of `start`.
    pub pgoff: u64,
    pub path: String,
    pub build_id: Option<Vec<u8>>,
}

/// Process and thread life-cycle side-band records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEvent {
    Comm {
        time_ns: u64,
        pid: u32,
        tid: u32,
        comm: String,
    },
    Fork {
        time_ns: u64,
        pid: u32,
        tid: u32,
        ppid: u32,
        ptid: u32,
    },
    Exit {
        time_ns: u64,
        pid: u32,
        tid: u32,
    },
    /// `execve`: process `pid` now runs a new program named `comm` (the kernel's COMM
    /// record with `PERF_RECORD_MISC_COMM_EXEC`). The process's earlier mappings are gone;
    /// the new program's, its interpreter's and its libraries' follow as mappings.
    /// Stored in its own chunk kind (see [`crate::recording`]). Last: the task chunks of
    /// format 1.0 encode the variants above by their position.
    Exec {
        time_ns: u64,
        pid: u32,
        tid: u32,
        comm: String,
    },
}

/// What was lost, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LossKind {
    /// The kernel's perf ring buffer overflowed (PERF_RECORD_LOST).
    RingBuffer,
    /// The kernel throttled sampling (PERF_RECORD_THROTTLE).
    Throttled,
    /// A snapshot or sample channel was full.
    ChannelFull,
    /// Branches that retired while the LBR was frozen.
    Frozen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    pub time_ns: u64,
    pub kind: LossKind,
    pub count: u64,
    /// The thread (host) or vCPU (guest) concerned, when known.
    pub tid: Option<u32>,
}

/// A vCPU of a VM run by the shim, and the host thread that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuThread {
    pub time_ns: u64,
    pub vm: u32,
    pub vcpu: u32,
    pub pid: u32,
    pub tid: u32,
}

/// The shim's accounting for one vCPU over a run: where the host spent its time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStats {
    pub vm: u32,
    pub vcpu: u32,
    /// VM exits by reason ("msr", "io", "debug", "hlt", …), sorted by reason.
    pub exits: Vec<(String, u64)>,
    /// Wall time spent inside KVM_RUN.
    pub run_ns: u64,
    /// Wall time spent in the shim handling exits caused by branch tracing.
    pub trace_ns: u64,
    /// Wall time spent taking snapshots.
    pub snapshot_ns: u64,
    /// Guest instructions and branches retired, when counted (exact mode).
    pub instructions: Option<u64>,
    pub branches: Option<u64>,
    pub snapshots: u64,
    pub lost_snapshots: u64,
    /// Branches that retired while the LBR was frozen.
    pub frozen_events: u64,
}

/// One record of a recording's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Mapping(Mapping),
    Task(TaskEvent),
    Sample(HostSample),
    Snapshot(LbrSnapshot),
    Loss(Loss),
    Vcpu(VcpuThread),
    VcpuStats(VcpuStats),
    GuestProcess(GuestProcess),
    /// Appended: exact mode's profile of one vCPU, written when it stops.
    ExactProfile(ExactProfile),
    /// Appended: what the shim was doing on a vCPU thread when host samples were taken.
    SamplePhases(SamplePhases),
    /// Appended: the guest address space a vCPU runs from a time on.
    VcpuSpace(VcpuSpace),
}

/// What a vCPU thread of the shim was doing, as the shim marks it (`lbrprof_vmm::phase`).
/// Stored as one byte; new phases are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ShimPhase {
    /// Inside the KVM_RUN ioctl: the guest runs, or KVM handles an exit in the kernel.
    Run,
    /// The vCPU loop between two KVM_RUNs: exit dispatch and bookkeeping.
    Loop,
    /// Tracing guest branches for the emulated LBR (interpreter, single steps).
    Tracing,
    /// Taking and sending an LBR snapshot.
    Snapshot,
    /// Emulating a PMU or LBR MSR access.
    Msr,
    /// Emulating a device (port or MMIO I/O).
    Devices,
    /// Serving a Linux program's system call, exception or signal.
    LinuxTrap,
    /// Waiting in a blocking system call of a Linux program (sleep, futex, poll, read).
    Blocked,
}

/// The shim's phase at host samples of one vCPU thread: `(sample time_ns, phase)` for
/// each sample of thread `tid` the recorder could place (in time order). A reader
/// matches them to the samples by thread and time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplePhases {
    pub vm: u32,
    pub tid: u32,
    pub samples: Vec<(u64, ShimPhase)>,
}

/// A process of a Linux program run in the VM, in one of its address spaces: sent when
/// the process starts (the first one, or a fork) and again when it execs. Guest
/// [`Mapping`]s whose `pid` is `space` belong to it, and so do the snapshots whose `cr3`
/// is one of `roots`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    pub time_ns: u64,
    pub vm: u32,
    /// The address space's id (0: the first process's first program).
    pub space: u32,
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: String,
    /// The CR3 values its vCPUs run with.
    pub roots: Vec<u64>,
}

/// From `time_ns` on, vCPU `vcpu` of VM `vm` runs a thread of the Linux program's address
/// space `space` (see [`GuestProcess`]): its first thread, the next one it takes, or
/// the same thread after an exec. A guest-mode host sample of that vCPU's thread resolves
/// in the space its vCPU ran at the sample's time; a recorder writes this before any
/// sample taken after it. (Recordings before it: the space of the vCPU's latest snapshot.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuSpace {
    pub time_ns: u64,
    pub vm: u32,
    pub vcpu: u32,
    pub space: u32,
}

/// Exact mode's count of every ring-3 instruction and call of one vCPU (guest-virtual
/// addresses). A run is `instructions` sequential instructions from `start`, ending
/// with a taken branch when `ends_taken`; a reader with the code decodes them to credit
/// each instruction. Calls carry callgrind's inclusive cost: the ring-3 instructions
/// retired between the call and its return.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactProfile {
    pub vm: u32,
    pub vcpu: u32,
    /// `(start, instructions, ends_taken, count)`, sorted.
    pub runs: Vec<(u64, u32, bool, u64)>,
    /// `(call site, target, calls, inclusive [instructions, conditional branches,
    /// indirect branches])`, sorted.
    pub calls: Vec<(u64, u64, u64, [u64; 3])>,
    /// Ring-3 instructions (the runs' sum).
    pub instructions: u64,
    /// Instructions retired outside ring 3 (the shim's system-call path, a guest kernel).
    pub other_instructions: u64,
}

/// Facts about the machine a recording was made on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// Name of the PMU used for host sampling ("cpu" for a hardware PMU, "software").
    pub pmu: String,
    pub lbr_depth: u32,
    /// LBR format from IA32_PERF_CAPABILITIES bits 5:0, when known.
    pub lbr_format: Option<u8>,
}

/// How host sampling was configured.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// "cycles", "cpu-clock", … as perf names them.
    pub event: String,
    /// Why this event was chosen (printed once by `record`).
    pub event_reason: String,
    /// Sampling frequency in Hz, or 0 when `period` is used.
    pub frequency: u64,
    pub period: u64,
    pub branch_stacks: bool,
    /// "fp" or "lbr".
    pub call_graph: String,
    /// Every sampled event by perf's name, in the order of [`HostSample::event`], when
    /// there are several (`record -e A,B`); empty for one (then it is `event`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

impl SamplingConfig {
    /// The sampled events by name, in [`HostSample::event`] order (one or more).
    pub fn event_names(&self) -> Vec<String> {
        if self.events.is_empty() {
            vec![self.event.clone()]
        } else {
            self.events.clone()
        }
    }
}

/// What was profiled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Command {
        argv: Vec<String>,
    },
    Pid {
        pid: u32,
    },
    Tid {
        tid: u32,
    },
    Vm {
        image: String,
        vcpus: u32,
        backend: LbrBackend,
        mode: String,
    },
    /// Imported from a perf.data file.
    PerfData {
        path: String,
    },
    /// Every task on these CPUs (`record -a` / `-C`), while `argv` ran (empty: until
    /// stopped).
    System {
        cpus: Vec<u32>,
        argv: Vec<String>,
    },
}

/// The recording header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// `lbrprof` version that wrote it.
    pub writer: String,
    /// Wall-clock start, seconds since the Unix epoch.
    pub start_unix: u64,
    /// CLOCK_MONOTONIC at start, ns; event times are on this clock.
    pub start_monotonic_ns: u64,
    pub host: HostInfo,
    pub sampling: SamplingConfig,
    pub target: Target,
}
