//! What the Linux personality tells its caller: the run's facts ([`LinuxReport`]) and,
//! as the program runs, its mappings and processes ([`GuestEvent`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::linux::mm::MapRecord;

/// Per-run facts of the personality, for the caller to report.
#[derive(Clone, Debug, Default)]
pub struct LinuxReport {
    /// System calls serviced.
    pub syscalls: u64,
    /// Unimplemented system calls (answered -ENOSYS): name and count.
    pub unimplemented: BTreeMap<String, u64>,
    /// File mappings (the program, its interpreter, libraries), in order.
    pub maps: Vec<MapRecord>,
    /// Some(address) when a mapping was refused because guest memory ran out.
    pub out_of_memory: Option<u64>,
    /// Guest RAM the program used at its peak, in bytes.
    pub peak_bytes: u64,
    /// Time spent servicing traps (system calls included, demand faults not), ns.
    pub trap_ns: u64,
    /// Page faults that backed lazy memory ([`crate::linux::mm::Fault::Resolved`]).
    pub demand_faults: u64,
    /// Time spent servicing them in the shim, ns.
    pub fault_ns: u64,
    /// Threads the program started (besides its first).
    pub threads: u64,
    /// Processes that ran (the first one included).
    pub processes: u64,
    /// Programs started with execve.
    pub execs: u64,
    /// Processes still running when the first one ended (stopped with the run).
    pub left_running: Vec<u64>,
}

/// A guest process as a recorder needs it to place snapshots: sent when a process
/// starts (the first, or a fork) and when it execs, each time with a new address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    /// The address space's id (0: the first process's first one); the mappings made in
    /// it carry the same id ([`MapRecord::space`]).
    pub space: u32,
    pub pid: u64,
    pub ppid: u64,
    /// The name Linux gives it (the executable's file name, at most 15 bytes).
    pub comm: String,
    pub exe: PathBuf,
    /// The CR3 values its vCPUs run with (the twin roots): a snapshot's `cr3` names
    /// the address space it was taken in.
    pub roots: [u64; 2],
}

/// What a Linux guest tells a recorder as it runs (the VM configuration's
/// `guest_events`), each stamped by a [`GuestEventSink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    Map(MapRecord),
    Process(ProcessRecord),
    /// From now on vCPU `vcpu` runs a thread of address space `space`: its first thread,
    /// the next one it takes when its own ended, or the same thread after an exec. A
    /// recorder resolves the vCPU's guest-mode host samples in that space (snapshots
    /// name theirs by CR3; host samples carry no CR3).
    Runs {
        vcpu: u32,
        space: u32,
    },
}

/// A [`GuestEvent`] and when it happened (CLOCK_MONOTONIC ns, the timebase of host
/// samples and snapshots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedGuestEvent {
    pub time_ns: u64,
    pub event: GuestEvent,
}

/// Where a Linux guest's events go, stamped with the time they are sent (which is when
/// they happen: before the vCPU runs the new thread or program they announce).
#[derive(Clone, Debug)]
pub struct GuestEventSink(crossbeam_channel::Sender<TimedGuestEvent>);

impl GuestEventSink {
    pub fn new(tx: crossbeam_channel::Sender<TimedGuestEvent>) -> Self {
        GuestEventSink(tx)
    }

    /// Sends `event`, stamped now; a recorder that stopped listening loses nothing the
    /// guest needs.
    pub fn send(&self, event: GuestEvent) {
        let _ = self.0.send(TimedGuestEvent {
            time_ns: crate::vm::monotonic_ns(),
            event,
        });
    }
}
