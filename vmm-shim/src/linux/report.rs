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

/// What a Linux guest tells a recorder as it runs (the VM configuration's `guest_maps`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    Map(MapRecord),
    Process(ProcessRecord),
}
