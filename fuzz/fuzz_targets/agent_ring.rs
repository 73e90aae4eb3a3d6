//! Fuzz the shim's reader of the guest agent's snapshot rings (guest memory the guest
//! controls): draining never panics, whatever it accepts is a well-formed snapshot, and
//! the loss count never goes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lbrprof_vmm::abi::{AGENT_MAX_DEPTH, AGENT_RING_MAGIC, agent_ring_addr};
use lbrprof_vmm::memory::{GuestMemory, GuestPhysAddr};
use lbrprof_vmm::pmu::agent::{AgentRingReader, DrainClock};

fuzz_target!(|data: &[u8]| {
    let Some((&vcpu, data)) = data.split_first() else {
        return;
    };
    let vcpu = u32::from(vcpu % 9);
    let mem = GuestMemory::new(1 << 20).unwrap();
    let ring = agent_ring_addr(vcpu.min(7));
    // The guest's header and records, as fuzzed bytes behind a valid magic.
    let len = data.len().min(0x7000);
    mem.write(GuestPhysAddr(ring), &data[..len]).unwrap();
    mem.write_u64(GuestPhysAddr(ring), AGENT_RING_MAGIC).unwrap();
    let mut reader = AgentRingReader::new(vcpu);
    let clock = DrainClock {
        now_ns: 1 << 40,
        guest_tsc: Some(1 << 30),
        tsc_khz: 2_000_000,
    };
    if let Ok(d) = reader.drain(&mem, &clock) {
        for s in &d.snapshots {
            assert!(!s.entries.is_empty() && s.entries.len() <= AGENT_MAX_DEPTH);
            assert!((s.tos as usize) < s.entries.len());
            assert!(s.host_time_ns <= clock.now_ns);
            assert_eq!(s.vcpu, vcpu);
        }
        let lost = reader.lost();
        // Drained: a second drain finds nothing new and loses nothing more.
        let again = reader.drain(&mem, &clock).unwrap();
        assert!(again.snapshots.is_empty());
        assert_eq!(again.lost, 0);
        assert_eq!(reader.lost(), lost);
    }
});
