//! Guest-driven snapshots: the shim's (consuming) side of the guest agent's snapshot rings.
//!
//! lbrprof's guest runtime, started with `rt.agent=PERIOD`, samples its own LBR on every
//! vCPU that runs ring-3 code: the vCPU's PMI handler reads TOS and FROM/TO/INFO while the
//! LBR is frozen, writes them as an [`AgentRecord`] into that vCPU's ring (at
//! [`agent_ring_addr`]; layout and protocol in `guest/src/abi.rs`) and acks the freeze.
//! One [`AgentRingReader`] per vCPU, owned by that vCPU's hook, turns the records written
//! since its last call into [`LbrSnapshot`]s (reason [`SnapshotReason::Agent`]) and
//! advances the ring's tail. The emulated backend's hook calls it when the guest acks (its
//! write of IA32_PERF_GLOBAL_STATUS_RESET), the hardware backend's hook on a timer (with
//! passthrough LBR MSRs nothing else exits), and both when the vCPU stops.
//!
//! Losses are counted exactly: every PMI the guest takes has a sequence number, written
//! with its record; a record the guest had to drop (ring full) leaves a gap, and the
//! ring's PMI count tells about drops after the last record. [`AgentRingReader::lost`] is
//! the total over the run.
//!
//! A snapshot's time is the guest TSC of the handler converted to host time with the
//! vCPU's TSC at the drain ([`DrainClock`]), so a late drain does not move snapshots
//! away from the host samples they pair with.
//!
//! The rings are guest memory, so every field is checked: a bad record is an error naming
//! it, never a panic and never an out-of-range read.

use crate::abi::{
    AGENT_MAX_DEPTH, AGENT_MAX_RINGS, AGENT_RECORD_HEADER_WORDS, AGENT_RING_ADDR, AGENT_RING_MAGIC,
    AGENT_RING_SLOTS, AgentRecord, AgentRing, agent_record_addr, agent_ring_addr,
};
use crate::memory::{GuestMemory, GuestPhysAddr, MemoryError};
use crate::snapshot::{LbrEntry, LbrSnapshot, SnapshotReason};

// The rings lie in low RAM the shim's boot layout leaves free: above the boot stacks,
// below conventional memory's end.
const _: () = {
    use crate::boot::{BOOT_STACK_SIZE, BOOT_STACKS_ADDR, LOW_MEM_END, MAX_VCPUS};
    assert!(AGENT_RING_ADDR >= BOOT_STACKS_ADDR + MAX_VCPUS as u64 * BOOT_STACK_SIZE);
    assert!(ring_end(AGENT_MAX_RINGS - 1) <= LOW_MEM_END);
};

const MAGIC_OFF: u64 = 0;
const HEAD_OFF: u64 = 8;
const TAIL_OFF: u64 = 16;
const PMIS_OFF: u64 = 32;
const EPOCH_OFF: u64 = 40;
const RECORD_WORDS: usize = std::mem::size_of::<AgentRecord>() / 8;

/// The first byte after vCPU `vcpu`'s ring.
const fn ring_end(vcpu: u32) -> u64 {
    agent_record_addr(vcpu, AGENT_RING_SLOTS - 1) + std::mem::size_of::<AgentRecord>() as u64
}

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
        "guest agent ring of vCPU {vcpu}: head {head} and tail {tail} are more than \
         {AGENT_RING_SLOTS} records apart"
    )]
    Indices { vcpu: u32, head: u64, tail: u64 },
    #[error("guest agent record {seq} of vCPU {vcpu}: carries ring position {found}")]
    Sequence { vcpu: u32, seq: u64, found: u64 },
    #[error(
        "guest agent record {seq} of vCPU {vcpu}: PMI number {pmi} goes back (expected at \
         least {expected})"
    )]
    PmiOrder {
        vcpu: u32,
        seq: u64,
        pmi: u64,
        expected: u64,
    },
    #[error(
        "guest agent ring of vCPU {vcpu}: counts {pmis} PMIs, fewer than the {seen} its \
         records number"
    )]
    PmiCount { vcpu: u32, pmis: u64, seen: u64 },
    #[error("guest agent record {seq} of vCPU {vcpu}: depth {depth} (at most {AGENT_MAX_DEPTH})")]
    Depth { vcpu: u32, seq: u64, depth: u64 },
    #[error("guest agent record {seq} of vCPU {vcpu}: TOS {tos} beyond depth {depth}")]
    Tos {
        vcpu: u32,
        seq: u64,
        tos: u64,
        depth: u64,
    },
}

fn read(mem: &GuestMemory, addr: u64) -> Result<u64, AgentRingError> {
    mem.read_u64(GuestPhysAddr(addr))
        .map_err(|source| AgentRingError::Memory { addr, source })
}

/// Host time at a drain and the vCPU's TSC at the same moment, to date each record by the
/// guest TSC its handler read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainClock {
    /// Host CLOCK_MONOTONIC nanoseconds.
    pub now_ns: u64,
    /// The vCPU's TSC now; `None` when it could not be read.
    pub guest_tsc: Option<u64>,
    /// The guest TSC frequency in kHz; 0 when unknown.
    pub tsc_khz: u64,
}

impl DrainClock {
    /// A clock that dates every record at the drain (no TSC facts).
    pub fn at(now_ns: u64) -> DrainClock {
        DrainClock {
            now_ns,
            guest_tsc: None,
            tsc_khz: 0,
        }
    }

    /// The host time of guest TSC `tsc` (never after the drain).
    pub fn host_time(&self, tsc: u64) -> u64 {
        let Some(now_tsc) = self.guest_tsc else {
            return self.now_ns;
        };
        if self.tsc_khz == 0 || tsc > now_tsc {
            return self.now_ns;
        }
        let ago = u128::from(now_tsc - tsc) * 1_000_000 / u128::from(self.tsc_khz);
        self.now_ns
            .saturating_sub(u64::try_from(ago).unwrap_or(u64::MAX))
    }
}

/// What one drain found.
#[derive(Debug, Default)]
pub struct Drained {
    /// The records written since the last drain, oldest first.
    pub snapshots: Vec<LbrSnapshot>,
    /// Records the guest dropped (ring full) that this drain noticed.
    pub lost: u64,
}

/// The consumer of one vCPU's ring; see the module docs.
#[derive(Clone, Debug)]
pub struct AgentRingReader {
    vcpu: u32,
    /// The agent start (ring `epoch`) being read; 0 before the first.
    epoch: u64,
    /// The PMI number the next record should carry.
    next_pmi: u64,
    lost: u64,
    read: u64,
}

impl AgentRingReader {
    pub fn new(vcpu: u32) -> AgentRingReader {
        AgentRingReader {
            vcpu,
            epoch: 0,
            next_pmi: 0,
            lost: 0,
            read: 0,
        }
    }

    pub fn vcpu(&self) -> u32 {
        self.vcpu
    }

    /// Records the guest dropped, over the run so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Records taken from the ring, over the run so far.
    pub fn snapshots(&self) -> u64 {
        self.read
    }

    /// Takes the records the guest wrote since the last drain (oldest first) as snapshots
    /// dated by `clock`, counts the records it dropped, and advances the tail. A vCPU
    /// without a ring, or whose guest never set its ring up (no magic, RAM too small),
    /// yields nothing.
    pub fn drain(
        &mut self,
        mem: &GuestMemory,
        clock: &DrainClock,
    ) -> Result<Drained, AgentRingError> {
        let vcpu = self.vcpu;
        if vcpu >= AGENT_MAX_RINGS || mem.size() < ring_end(vcpu) {
            return Ok(Drained::default());
        }
        let ring = agent_ring_addr(vcpu);
        if read(mem, ring + MAGIC_OFF)? != AGENT_RING_MAGIC {
            return Ok(Drained::default());
        }
        let epoch = read(mem, ring + EPOCH_OFF)?;
        if epoch != self.epoch {
            // A (re)start: the guest zeroed the ring and numbers PMIs from 0 again.
            self.epoch = epoch;
            self.next_pmi = 0;
        }
        let head = read(mem, ring + HEAD_OFF)?;
        let tail = read(mem, ring + TAIL_OFF)?;
        if head.wrapping_sub(tail) > AGENT_RING_SLOTS {
            return Err(AgentRingError::Indices { vcpu, head, tail });
        }
        let mut out = Drained {
            snapshots: Vec::with_capacity(head.wrapping_sub(tail) as usize),
            lost: 0,
        };
        let mut next_pmi = self.next_pmi;
        let mut seq = tail;
        let mut buf = vec![0u8; RECORD_WORDS * 8];
        while seq != head {
            let base = agent_record_addr(vcpu, seq);
            mem.read(GuestPhysAddr(base), &mut buf)
                .map_err(|source| AgentRingError::Memory { addr: base, source })?;
            let w: Vec<u64> = buf
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            let [found, pmi, tsc, _status, tos, depth, rip, rsp, rbp] =
                <[u64; AGENT_RECORD_HEADER_WORDS]>::try_from(&w[..AGENT_RECORD_HEADER_WORDS])
                    .unwrap_or_default();
            if found != seq {
                return Err(AgentRingError::Sequence { vcpu, seq, found });
            }
            if pmi < next_pmi {
                return Err(AgentRingError::PmiOrder {
                    vcpu,
                    seq,
                    pmi,
                    expected: next_pmi,
                });
            }
            if depth == 0 || depth > AGENT_MAX_DEPTH as u64 {
                return Err(AgentRingError::Depth { vcpu, seq, depth });
            }
            if tos >= depth {
                return Err(AgentRingError::Tos {
                    vcpu,
                    seq,
                    tos,
                    depth,
                });
            }
            out.lost += pmi - next_pmi;
            next_pmi = pmi.saturating_add(1);
            let entries = w[AGENT_RECORD_HEADER_WORDS..]
                .chunks_exact(3)
                .take(depth as usize)
                .map(|e| LbrEntry {
                    from: e[0],
                    to: e[1],
                    info: e[2],
                })
                .collect();
            out.snapshots.push(LbrSnapshot {
                vcpu,
                host_time_ns: clock.host_time(tsc),
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
        // PMIs after the last record that have none: dropped with the ring full.
        let pmis = read(mem, ring + PMIS_OFF)?;
        if pmis < next_pmi {
            return Err(AgentRingError::PmiCount {
                vcpu,
                pmis,
                seen: next_pmi,
            });
        }
        out.lost += pmis - next_pmi;
        mem.write_u64(GuestPhysAddr(ring + TAIL_OFF), head)
            .map_err(|source| AgentRingError::Memory {
                addr: ring + TAIL_OFF,
                source,
            })?;
        self.next_pmi = pmis;
        self.lost += out.lost;
        self.read += out.snapshots.len() as u64;
        Ok(out)
    }
}

/// The size of a ring's header, for producers written in Rust (tests, fuzzing).
pub const RING_HEADER_BYTES: u64 = std::mem::size_of::<AgentRing>() as u64;

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest runtime's producer (`guest/src/kernel.rs`, `agent::on_pmi`), in Rust.
    struct FakeAgent<'m> {
        mem: &'m GuestMemory,
        vcpu: u32,
    }

    impl<'m> FakeAgent<'m> {
        fn w(&self, a: u64, v: u64) {
            self.mem.write_u64(GuestPhysAddr(a), v).unwrap();
        }
        fn r(&self, a: u64) -> u64 {
            self.mem.read_u64(GuestPhysAddr(a)).unwrap()
        }
        fn start(mem: &'m GuestMemory, vcpu: u32, epoch: u64) -> Self {
            let a = FakeAgent { mem, vcpu };
            let ring = agent_ring_addr(vcpu);
            for off in (0..RING_HEADER_BYTES).step_by(8) {
                a.w(ring + off, 0);
            }
            a.w(ring + EPOCH_OFF, epoch);
            a.w(ring + MAGIC_OFF, AGENT_RING_MAGIC);
            a
        }
        /// One PMI with an 8-deep LBR whose TOS is `tos`, interrupted at `rip`.
        fn pmi(&self, tos: u64, rip: u64, tsc: u64) {
            let ring = agent_ring_addr(self.vcpu);
            let (head, tail, pmi) = (
                self.r(ring + HEAD_OFF),
                self.r(ring + TAIL_OFF),
                self.r(ring + PMIS_OFF),
            );
            self.w(ring + PMIS_OFF, pmi + 1);
            if head.wrapping_sub(tail) >= AGENT_RING_SLOTS {
                let d = self.r(ring + 24);
                self.w(ring + 24, d + 1);
                return;
            }
            let base = agent_record_addr(self.vcpu, head);
            for (i, v) in [head, pmi, tsc, 1, tos, 8, rip, 0x50, 0x60]
                .into_iter()
                .enumerate()
            {
                self.w(base + 8 * i as u64, v);
            }
            for slot in 0..8 {
                let e = base + 8 * AGENT_RECORD_HEADER_WORDS as u64 + 24 * slot;
                self.w(e, 0x1000 + slot);
                self.w(e + 8, 0x2000 + slot);
                self.w(e + 16, 0);
            }
            self.w(ring + HEAD_OFF, head.wrapping_add(1));
        }
        /// Overwrites word `word` of the record at ring position `seq`.
        fn poke(&self, seq: u64, word: u64, v: u64) {
            self.w(agent_record_addr(self.vcpu, seq) + 8 * word, v);
        }
    }

    fn mem() -> GuestMemory {
        GuestMemory::new(1 << 20).unwrap()
    }

    #[test]
    fn drains_records_in_order_and_advances_the_tail() {
        let mem = mem();
        let agent = FakeAgent::start(&mem, 0, 1);
        agent.pmi(3, 0x400000, 1000);
        agent.pmi(7, 0x400010, 1001);
        let mut r = AgentRingReader::new(0);
        let d = r.drain(&mem, &DrainClock::at(42)).unwrap();
        assert_eq!(d.lost, 0);
        assert_eq!(d.snapshots.len(), 2);
        let s = &d.snapshots[1];
        assert_eq!(
            (s.tos, s.guest_ip, s.guest_sp, s.guest_fp, s.guest_tsc),
            (7, 0x400010, 0x50, 0x60, 1001)
        );
        assert_eq!((s.vcpu, s.reason), (0, SnapshotReason::Agent));
        assert_eq!(s.entries.len(), 8);
        assert_eq!((s.entries[5].from, s.entries[5].to), (0x1005, 0x2005));
        assert_eq!(s.host_time_ns, 42);
        // Consumed: a second drain finds nothing new.
        assert!(
            r.drain(&mem, &DrainClock::at(43))
                .unwrap()
                .snapshots
                .is_empty()
        );
        assert_eq!((r.snapshots(), r.lost()), (2, 0));
    }

    #[test]
    fn every_vcpu_has_its_own_ring() {
        let mem = mem();
        let a0 = FakeAgent::start(&mem, 0, 1);
        let a1 = FakeAgent::start(&mem, 1, 1);
        let a7 = FakeAgent::start(&mem, AGENT_MAX_RINGS - 1, 1);
        a0.pmi(0, 0x10, 0);
        for _ in 0..3 {
            a1.pmi(1, 0x11, 0);
        }
        a7.pmi(2, 0x17, 0);
        let clock = DrainClock::at(0);
        let mut readers: Vec<AgentRingReader> =
            (0..AGENT_MAX_RINGS + 1).map(AgentRingReader::new).collect();
        let counts: Vec<usize> = readers
            .iter_mut()
            .map(|r| r.drain(&mem, &clock).unwrap().snapshots.len())
            .collect();
        assert_eq!(counts, [1, 3, 0, 0, 0, 0, 0, 1, 0]);
        let d = AgentRingReader::new(1).drain(&mem, &clock).unwrap();
        assert!(d.snapshots.is_empty(), "vCPU 1's ring was drained");
        // Snapshots carry their vCPU.
        a7.pmi(2, 0x17, 0);
        let d = readers[7].drain(&mem, &clock).unwrap();
        assert_eq!(d.snapshots[0].vcpu, 7);
    }

    #[test]
    fn a_full_ring_loses_exactly_what_did_not_fit() {
        let mem = mem();
        let agent = FakeAgent::start(&mem, 2, 1);
        let mut r = AgentRingReader::new(2);
        let clock = DrainClock::at(0);
        // 40 PMIs with nobody draining: 32 fit, 8 are dropped.
        for i in 0..40 {
            agent.pmi(i % 8, 0x400000 + i, i);
        }
        let d = r.drain(&mem, &clock).unwrap();
        assert_eq!((d.snapshots.len(), d.lost), (32, 8));
        let tscs: Vec<u64> = d.snapshots.iter().map(|s| s.guest_tsc).collect();
        assert_eq!(
            tscs,
            (0..32).collect::<Vec<_>>(),
            "oldest first, no wrap confusion"
        );
        // Drained in time now: nothing more is lost, and earlier losses are not
        // counted twice.
        for i in 0..5 {
            agent.pmi(0, 0x500000 + i, 100 + i);
        }
        let d = r.drain(&mem, &clock).unwrap();
        assert_eq!((d.snapshots.len(), d.lost), (5, 0));
        // Full again, exactly at capacity: nothing lost; one more: one lost.
        for i in 0..32 {
            agent.pmi(0, 0x600000 + i, 200 + i);
        }
        assert_eq!(r.drain(&mem, &clock).unwrap().lost, 0);
        for i in 0..33 {
            agent.pmi(0, 0x700000 + i, 300 + i);
        }
        let d = r.drain(&mem, &clock).unwrap();
        assert_eq!((d.snapshots.len(), d.lost), (32, 1));
        assert_eq!((r.snapshots(), r.lost()), (101, 9));
        // The guest's own count agrees.
        assert_eq!(agent.r(agent_ring_addr(2) + 24), 9);
    }

    #[test]
    fn a_gap_in_the_pmi_numbers_is_a_loss_at_that_place() {
        let mem = mem();
        let agent = FakeAgent::start(&mem, 0, 1);
        agent.pmi(0, 0x10, 0);
        agent.pmi(0, 0x20, 0);
        // A producer that skipped PMIs 1..=3 (numbered its second record 4, counts 5).
        agent.poke(1, 1, 4);
        agent.w(agent_ring_addr(0) + PMIS_OFF, 5);
        let mut r = AgentRingReader::new(0);
        let d = r.drain(&mem, &DrainClock::at(0)).unwrap();
        assert_eq!((d.snapshots.len(), d.lost), (2, 3));
    }

    #[test]
    fn indices_wrap_around_u64() {
        let mem = mem();
        let agent = FakeAgent::start(&mem, 0, 1);
        let ring = agent_ring_addr(0);
        let start = u64::MAX - 1;
        agent.w(ring + HEAD_OFF, start);
        agent.w(ring + TAIL_OFF, start);
        for i in 0..4 {
            agent.pmi(0, 0x10 + i, i);
        }
        assert_eq!(agent.r(ring + HEAD_OFF), 2, "head wrapped");
        let mut r = AgentRingReader::new(0);
        let d = r.drain(&mem, &DrainClock::at(0)).unwrap();
        let ips: Vec<u64> = d.snapshots.iter().map(|s| s.guest_ip).collect();
        assert_eq!(ips, [0x10, 0x11, 0x12, 0x13]);
    }

    #[test]
    fn a_restart_numbers_pmis_from_zero_again() {
        let mem = mem();
        let mut r = AgentRingReader::new(0);
        let clock = DrainClock::at(0);
        let agent = FakeAgent::start(&mem, 0, 1);
        for _ in 0..3 {
            agent.pmi(0, 0x10, 0);
        }
        assert_eq!(r.drain(&mem, &clock).unwrap().snapshots.len(), 3);
        let agent = FakeAgent::start(&mem, 0, 2);
        agent.pmi(0, 0x10, 0);
        let d = r.drain(&mem, &clock).unwrap();
        assert_eq!((d.snapshots.len(), d.lost), (1, 0));
    }

    #[test]
    fn snapshots_are_dated_by_their_guest_tsc() {
        // 1 GHz guest TSC (1,000,000 kHz): 1 tick = 1 ns.
        let clock = DrainClock {
            now_ns: 10_000,
            guest_tsc: Some(5_000),
            tsc_khz: 1_000_000,
        };
        assert_eq!(clock.host_time(4_000), 9_000);
        assert_eq!(clock.host_time(5_000), 10_000);
        // A TSC from the future, or one before the epoch of the host clock: clamped.
        assert_eq!(clock.host_time(6_000), 10_000);
        let early = DrainClock {
            now_ns: 10,
            ..clock
        };
        assert_eq!(early.host_time(0), 0);
        // No TSC facts: the drain time.
        assert_eq!(DrainClock::at(7).host_time(1), 7);
        let no_khz = DrainClock {
            tsc_khz: 0,
            ..clock
        };
        assert_eq!(no_khz.host_time(1), 10_000);
        let mem = mem();
        let agent = FakeAgent::start(&mem, 0, 1);
        agent.pmi(0, 0x10, 2_500);
        let d = AgentRingReader::new(0).drain(&mem, &clock).unwrap();
        assert_eq!(d.snapshots[0].host_time_ns, 7_500);
    }

    #[test]
    fn a_ring_never_set_up_yields_nothing() {
        let mem = mem();
        let mut r = AgentRingReader::new(0);
        assert!(
            r.drain(&mem, &DrainClock::at(0))
                .unwrap()
                .snapshots
                .is_empty()
        );
        let small = GuestMemory::new(0x1000).unwrap();
        assert!(
            r.drain(&small, &DrainClock::at(0))
                .unwrap()
                .snapshots
                .is_empty()
        );
        // A vCPU beyond the rings never reads guest memory.
        let mut far = AgentRingReader::new(AGENT_MAX_RINGS);
        assert!(far.drain(&small, &DrainClock::at(0)).is_ok());
    }

    #[test]
    fn malformed_records_are_errors() {
        let clock = DrainClock::at(0);
        let setup = |f: &dyn Fn(&FakeAgent)| {
            let mem = mem();
            let agent = FakeAgent::start(&mem, 1, 1);
            agent.pmi(3, 0x10, 0);
            f(&agent);
            AgentRingReader::new(1).drain(&mem, &clock)
        };
        assert!(matches!(
            setup(&|a| a.poke(0, 4, 9)),
            Err(AgentRingError::Tos {
                vcpu: 1,
                seq: 0,
                tos: 9,
                depth: 8
            })
        ));
        assert!(matches!(
            setup(&|a| a.poke(0, 5, 33)),
            Err(AgentRingError::Depth { depth: 33, .. })
        ));
        assert!(matches!(
            setup(&|a| a.poke(0, 5, 0)),
            Err(AgentRingError::Depth { depth: 0, .. })
        ));
        assert!(matches!(
            setup(&|a| a.poke(0, 0, 5)),
            Err(AgentRingError::Sequence {
                seq: 0,
                found: 5,
                ..
            })
        ));
        // The ring counts fewer PMIs than its records number.
        assert!(matches!(
            setup(&|a| a.w(agent_ring_addr(1) + PMIS_OFF, 0)),
            Err(AgentRingError::PmiCount {
                pmis: 0,
                seen: 1,
                ..
            })
        ));
        // PMI numbers going back within a drain.
        let err = setup(&|a| {
            a.pmi(0, 0x20, 0);
            a.poke(1, 1, 0);
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                AgentRingError::PmiOrder {
                    pmi: 0,
                    expected: 1,
                    ..
                }
            ),
            "{err}"
        );
        let err = setup(&|a| a.w(agent_ring_addr(1) + HEAD_OFF, 100)).unwrap_err();
        assert!(matches!(
            err,
            AgentRingError::Indices {
                vcpu: 1,
                head: 100,
                tail: 0
            }
        ));
        assert!(
            err.to_string().contains("more than 32 records apart"),
            "{err}"
        );
    }
}
