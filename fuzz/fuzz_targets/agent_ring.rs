//! Fuzz the shim's reader of the guest agent's snapshot ring (guest memory the guest
//! controls): draining never panics, and whatever it accepts is a well-formed snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lbrprof_vmm::abi::{AGENT_MAX_DEPTH, AGENT_RING_ADDR, AGENT_RING_MAGIC};
use lbrprof_vmm::memory::{GuestMemory, GuestPhysAddr};
use lbrprof_vmm::pmu::agent::drain;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemory::new(1 << 20).unwrap();
    // The guest's header and records, as fuzzed bytes behind a valid magic.
    let len = data.len().min(0x4000);
    mem.write(GuestPhysAddr(AGENT_RING_ADDR), &data[..len]).unwrap();
    mem.write_u64(GuestPhysAddr(AGENT_RING_ADDR), AGENT_RING_MAGIC).unwrap();
    if let Ok(d) = drain(&mem, 0, 0) {
        for s in &d.snapshots {
            assert!(!s.entries.is_empty() && s.entries.len() <= AGENT_MAX_DEPTH);
            assert!((s.tos as usize) < s.entries.len());
        }
        // Drained: a second drain finds nothing new.
        assert!(drain(&mem, 0, 0).unwrap().snapshots.is_empty());
    }
});
