//! Guest LBR snapshots: what leaves a vCPU thread when the (virtual) PMU freezes the LBR.
//!
//! A snapshot keeps the LBR exactly as the architecture presents it: the FROM/TO/INFO MSR
//! slots in index order plus the top-of-stack pointer. Decoding (newest-first order,
//! LBR_INFO bits) happens on the reading side, so the recording holds what the guest saw.

use serde::{Deserialize, Serialize};

/// One LBR slot as raw MSR values: `MSR_LASTBRANCH_n_FROM_IP`, `_TO_IP` and `MSR_LBR_INFO_n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbrEntry {
    pub from: u64,
    pub to: u64,
    pub info: u64,
}

/// Why a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotReason {
    /// A counter overflowed and the PMI froze the LBR; `counter` is the overflowing
    /// counter's bit in IA32_PERF_GLOBAL_STATUS.
    Pmi { counter: u8 },
    /// Written by the guest runtime's PMI handler into the shared snapshot ring.
    Agent,
    /// Taken by the shim when the vCPU stopped (end of run), so the tail is not lost.
    Final,
}

/// How the guest LBR was provided when a snapshot was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LbrBackend {
    /// KVM passes the host's hardware LBR MSRs through to the guest.
    Hardware,
    /// The shim implements the LBR MSRs and observes branches by tracing the vCPU.
    Emulated,
}

/// A frozen guest LBR plus enough guest state to place it in a stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbrSnapshot {
    /// Index of the vCPU (0-based).
    pub vcpu: u32,
    /// Host CLOCK_MONOTONIC time at which the snapshot was taken, in nanoseconds.
    pub host_time_ns: u64,
    /// The guest's time stamp counter at the same moment.
    pub guest_tsc: u64,
    pub reason: SnapshotReason,
    /// MSR_LBR_TOS: the slot holding the most recent entry.
    pub tos: u32,
    /// The LBR slots in MSR index order; `entries.len()` is the LBR depth.
    pub entries: Vec<LbrEntry>,
    pub guest_ip: u64,
    pub guest_sp: u64,
    pub guest_fp: u64,
    pub cr3: u64,
    /// Return addresses found by walking the guest's frame pointers, innermost first.
    pub guest_stack: Vec<u64>,
    /// Branches that retired while the LBR was frozen (lost to skid), since the last snapshot.
    pub frozen_events: u64,
}

impl LbrSnapshot {
    /// The entries from newest to oldest, following TOS backwards modulo the depth, the
    /// order in which perf presents branch stacks. Empty slots (from = to = 0) are skipped.
    pub fn newest_first(&self) -> impl Iterator<Item = &LbrEntry> + '_ {
        let depth = self.entries.len();
        let tos = if depth == 0 {
            0
        } else {
            self.tos as usize % depth
        };
        (0..depth)
            .map(move |i| &self.entries[(tos + depth - i) % depth])
            .filter(|e| e.from != 0 || e.to != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(tos: u32, froms: &[u64]) -> LbrSnapshot {
        LbrSnapshot {
            vcpu: 0,
            host_time_ns: 0,
            guest_tsc: 0,
            reason: SnapshotReason::Final,
            tos,
            entries: froms
                .iter()
                .map(|&f| LbrEntry {
                    from: f,
                    to: if f == 0 { 0 } else { f + 1 },
                    info: 0,
                })
                .collect(),
            guest_ip: 0,
            guest_sp: 0,
            guest_fp: 0,
            cr3: 0,
            guest_stack: vec![],
            frozen_events: 0,
        }
    }

    #[test]
    fn newest_first_walks_back_from_tos_and_wraps() {
        let s = snap(1, &[10, 11, 12, 13]);
        let order: Vec<u64> = s.newest_first().map(|e| e.from).collect();
        assert_eq!(order, vec![11, 10, 13, 12]);
    }

    #[test]
    fn newest_first_skips_empty_slots() {
        let s = snap(1, &[10, 11, 0, 0]);
        let order: Vec<u64> = s.newest_first().map(|e| e.from).collect();
        assert_eq!(order, vec![11, 10]);
    }
}
