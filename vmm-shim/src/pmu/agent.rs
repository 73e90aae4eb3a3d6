//! Guest-driven snapshots: the shim's (consuming) side of the guest agent's snapshot ring.
//!
//! lbrprof's guest runtime, started with `rt.agent=PERIOD`, samples its own LBR: its PMI
//! handler reads TOS and FROM/TO/INFO while the LBR is frozen, writes them as an
//! [`AgentRecord`] into the agent ring at [`AGENT_RING_ADDR`] (layout and protocol in
//! `guest/src/abi.rs`) and acks the freeze. [`drain`] turns the records written since the
//! last call into [`LbrSnapshot`]s (reason [`SnapshotReason::Agent`]) and advances the
//! ring's tail; the VMM hook calls it when the guest acks (its write of
//! IA32_PERF_GLOBAL_STATUS_RESET) and when the vCPU stops.
//!
//! The ring is guest memory, so every field is checked: a bad record is an error naming
//! it, never a panic and never an out-of-range read.

use crate::abi::{
    AGENT_MAX_DEPTH, AGENT_RING_ADDR, AGENT_RING_MAGIC, AGENT_RING_SLOTS, AgentRecord,
    agent_record_addr,
};
use crate::memory::{GuestMemory, GuestPhysAddr, MemoryError};
use crate::snapshot::{LbrEntry, LbrSnapshot, SnapshotReason};

// The ring lies in low RAM the shim's boot layout leaves free: above the boot stacks,
// below conventional memory's end.
const _: () = {
    use crate::boot::{BOOT_STACK_SIZE, BOOT_STACKS_ADDR, LOW_MEM_END, MAX_VCPUS};
    assert!(AGENT_RING_ADDR >= BOOT_STACKS_ADDR + MAX_VCPUS as u64 * BOOT_STACK_SIZE);
    assert!(
        agent_record_addr(AGENT_RING_SLOTS - 1) + std::mem::size_of::<AgentRecord>() as u64
            <= LOW_MEM_END
    );
};

const MAGIC_OFF: u64 = 0;
const HEAD_OFF: u64 = 8;
const TAIL_OFF: u64 = 16;
const DROPPED_OFF: u64 = 24;
const RECORD_WORDS: usize = std::mem::size_of::<AgentRecord>() / 8;

/// What a malformed agent ring looks like.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentRingError {
    #[error("cannot access the guest agent's snapshot ring at {addr:#x}")]
    Memory {
        addr: u64,
        #[source]
        source: MemoryError,
    },
    #[error(
        "guest agent ring: head {head} and tail {tail} are more than {AGENT_RING_SLOTS} records apart"
    )]
    Indices { head: u64, tail: u64 },
    #[error("guest agent record {seq}: carries sequence number {found}")]
    Sequence { seq: u64, found: u64 },
    #[error("guest agent record {seq}: depth {depth} (at most {AGENT_MAX_DEPTH})")]
    Depth { seq: u64, depth: u64 },
    #[error("guest agent record {seq}: TOS {tos} beyond depth {depth}")]
    Tos { seq: u64, tos: u64, depth: u64 },
}

fn read(mem: &GuestMemory, addr: u64) -> Result<u64, AgentRingError> {
    mem.read_u64(GuestPhysAddr(addr))
        .map_err(|source| AgentRingError::Memory { addr, source })
}

/// The drained records and the ring's own count of records the guest had to drop.
#[derive(Debug, Default)]
pub struct Drained {
    pub snapshots: Vec<LbrSnapshot>,
    pub dropped: u64,
}

/// Takes the records the guest wrote since the last drain (oldest first) as snapshots of
/// vCPU `vcpu` at host time `now_ns`, and advances the tail. A guest that never set up the
/// ring (no magic, or RAM too small to hold it) yields nothing.
pub fn drain(mem: &GuestMemory, vcpu: u32, now_ns: u64) -> Result<Drained, AgentRingError> {
    let end = agent_record_addr(AGENT_RING_SLOTS - 1) + std::mem::size_of::<AgentRecord>() as u64;
    if mem.size() < end || read(mem, AGENT_RING_ADDR + MAGIC_OFF)? != AGENT_RING_MAGIC {
        return Ok(Drained::default());
    }
    let head = read(mem, AGENT_RING_ADDR + HEAD_OFF)?;
    let tail = read(mem, AGENT_RING_ADDR + TAIL_OFF)?;
    let dropped = read(mem, AGENT_RING_ADDR + DROPPED_OFF)?;
    if head.wrapping_sub(tail) > AGENT_RING_SLOTS {
        return Err(AgentRingError::Indices { head, tail });
    }
    let mut snapshots = Vec::with_capacity(head.wrapping_sub(tail) as usize);
    let mut seq = tail;
    while seq != head {
        let base = agent_record_addr(seq);
        let mut buf = vec![0u8; RECORD_WORDS * 8];
        mem.read(GuestPhysAddr(base), &mut buf)
            .map_err(|source| AgentRingError::Memory { addr: base, source })?;
        let w: Vec<u64> = buf
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let (found, tsc, _status, tos, depth, rip, rsp, rbp) =
            (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]);
        if found != seq {
            return Err(AgentRingError::Sequence { seq, found });
        }
        if depth == 0 || depth > AGENT_MAX_DEPTH as u64 {
            return Err(AgentRingError::Depth { seq, depth });
        }
        if tos >= depth {
            return Err(AgentRingError::Tos { seq, tos, depth });
        }
        let entries = (0..depth as usize)
            .map(|i| LbrEntry {
                from: w[8 + 3 * i],
                to: w[8 + 3 * i + 1],
                info: w[8 + 3 * i + 2],
            })
            .collect();
        snapshots.push(LbrSnapshot {
            vcpu,
            host_time_ns: now_ns,
            guest_tsc: tsc,
            reason: SnapshotReason::Agent,
            tos: tos as u32,
            entries,
            guest_ip: rip,
            guest_sp: rsp,
            guest_fp: rbp,
            cr3: 0,
            guest_stack: Vec::new(),
            frozen_events: 0,
        });
        seq = seq.wrapping_add(1);
    }
    mem.write_u64(GuestPhysAddr(AGENT_RING_ADDR + TAIL_OFF), head)
        .map_err(|source| AgentRingError::Memory {
            addr: AGENT_RING_ADDR + TAIL_OFF,
            source,
        })?;
    Ok(Drained { snapshots, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(records: &[(u64, u64, u64)]) -> GuestMemory {
        let mem = GuestMemory::new(1 << 20).unwrap();
        let w = |a: u64, v: u64| mem.write_u64(GuestPhysAddr(a), v).unwrap();
        w(AGENT_RING_ADDR + MAGIC_OFF, AGENT_RING_MAGIC);
        w(AGENT_RING_ADDR + HEAD_OFF, records.len() as u64);
        w(AGENT_RING_ADDR + DROPPED_OFF, 3);
        for (seq, &(tos, depth, rip)) in records.iter().enumerate() {
            let base = agent_record_addr(seq as u64);
            for (i, v) in [
                seq as u64,
                1000 + seq as u64,
                1,
                tos,
                depth,
                rip,
                0x50,
                0x60,
            ]
            .into_iter()
            .enumerate()
            {
                w(base + 8 * i as u64, v);
            }
            for slot in 0..depth {
                w(base + 64 + 24 * slot, 0x1000 + slot);
                w(base + 64 + 24 * slot + 8, 0x2000 + slot);
            }
        }
        mem
    }

    #[test]
    fn drains_records_in_order_and_advances_the_tail() {
        let mem = ring(&[(3, 8, 0x400000), (7, 8, 0x400010)]);
        let d = drain(&mem, 0, 42).unwrap();
        assert_eq!(d.dropped, 3);
        assert_eq!(d.snapshots.len(), 2);
        let s = &d.snapshots[1];
        assert_eq!(
            (s.tos, s.guest_ip, s.guest_sp, s.guest_fp, s.guest_tsc),
            (7, 0x400010, 0x50, 0x60, 1001)
        );
        assert_eq!(s.reason, SnapshotReason::Agent);
        assert_eq!(s.entries.len(), 8);
        assert_eq!((s.entries[5].from, s.entries[5].to), (0x1005, 0x2005));
        assert_eq!(s.host_time_ns, 42);
        // Consumed: a second drain finds nothing new.
        assert!(drain(&mem, 0, 43).unwrap().snapshots.is_empty());
    }

    #[test]
    fn a_ring_never_set_up_yields_nothing() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        assert!(drain(&mem, 0, 0).unwrap().snapshots.is_empty());
        let small = GuestMemory::new(0x1000).unwrap();
        assert!(drain(&small, 0, 0).unwrap().snapshots.is_empty());
    }

    #[test]
    fn malformed_records_are_errors() {
        let mem = ring(&[(9, 8, 0)]);
        assert!(matches!(
            drain(&mem, 0, 0),
            Err(AgentRingError::Tos {
                seq: 0,
                tos: 9,
                depth: 8
            })
        ));
        let mem = ring(&[(0, 33, 0)]);
        assert!(matches!(
            drain(&mem, 0, 0),
            Err(AgentRingError::Depth { depth: 33, .. })
        ));
        let mem = ring(&[(0, 8, 0)]);
        mem.write_u64(GuestPhysAddr(agent_record_addr(0)), 5)
            .unwrap();
        assert!(matches!(
            drain(&mem, 0, 0),
            Err(AgentRingError::Sequence { seq: 0, found: 5 })
        ));
        let mem = ring(&[]);
        mem.write_u64(GuestPhysAddr(AGENT_RING_ADDR + HEAD_OFF), 100)
            .unwrap();
        let err = drain(&mem, 0, 0).unwrap_err();
        assert!(matches!(
            err,
            AgentRingError::Indices { head: 100, tail: 0 }
        ));
        assert!(
            err.to_string().contains("more than 16 records apart"),
            "{err}"
        );
    }
}
