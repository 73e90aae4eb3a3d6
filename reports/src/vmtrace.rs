//! What the aggregator keeps of a VM recording ([`VmTrace`]): a compact trace of every
//! host sample and guest snapshot with interned stacks, plus the vCPU threads, the
//! shim's accounting and the shim's phase at each sample of a vCPU thread. Stage one
//! data: [`crate::vm::analyze`] turns it into the host+guest picture after
//! symbolization.

use std::collections::HashMap;

use lbrprof_data::model::{CpuMode, ShimPhase, VcpuStats, VcpuThread};

use crate::hash::FastMap;
use crate::loc::Loc;

/// One host sample, as pairing and the unified stacks need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSample {
    pub time_ns: u64,
    pub tid: u32,
    pub mode: CpuMode,
    /// Index into [`VmTrace::stacks`] (innermost first).
    pub stack: u32,
}

/// One guest snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmSnapshot {
    pub time_ns: u64,
    pub vcpu: u32,
    /// Index into [`VmTrace::stacks`]: guest IP, then the frame-pointer walk.
    pub stack: u32,
    /// Taken by the guest's LBR agent (guest-driven), not by the shim.
    pub agent: bool,
}

/// What the aggregator keeps of a VM recording.
#[derive(Debug, Default)]
pub struct VmTrace {
    pub samples: Vec<VmSample>,
    pub snapshots: Vec<VmSnapshot>,
    pub stacks: Vec<Vec<Loc>>,
    index: FastMap<Vec<Loc>, u32>,
    pub vcpus: Vec<VcpuThread>,
    pub stats: Vec<VcpuStats>,
    /// What the shim was doing at host samples of its vCPU threads, by `(tid, time_ns)`
    /// (recordings since the shim marks its phases).
    pub phases: HashMap<(u32, u64), ShimPhase>,
}

impl VmTrace {
    /// The id of `stack`, adding it when new.
    pub fn intern(&mut self, stack: &[Loc]) -> u32 {
        if let Some(&id) = self.index.get(stack) {
            return id;
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(stack.to_vec());
        self.index.insert(stack.to_vec(), id);
        id
    }
}
