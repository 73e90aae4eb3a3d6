#![no_main]
//! The shim's x86 interpreter against the host CPU: random instruction bytes and a random
//! register state (general-purpose, flags, XMM). Every register-only, straight-line
//! instruction the interpreter completes must leave the same registers and defined
//! flags as the CPU does running it natively; anything else the interpreter must refuse
//! (the breakpoints then take it). The interpreter decides what is run on the host: an
//! instruction it completes is one a ring-3 program may run.

use lbrprof_vmm::pmu::interp::harness::differential;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 15 instruction bytes, then the state, zero-filled when the input is short.
    let mut buf = [0u8; 15 + 8 * 17 + 16 * 16];
    let n = data.len().min(buf.len());
    buf[..n].copy_from_slice(&data[..n]);
    let (code, state) = buf.split_at(15);
    let word = |i: usize| u64::from_le_bytes(state[i * 8..i * 8 + 8].try_into().unwrap());
    let regs: [u64; 16] = std::array::from_fn(word);
    let flags = word(16);
    let xmm: [u128; 16] = std::array::from_fn(|i| {
        let at = 8 * 17 + 16 * i;
        u128::from_le_bytes(state[at..at + 16].try_into().unwrap())
    });
    if let Err(disagreement) = differential(code, regs, flags, xmm) {
        panic!("interpreter and CPU disagree: {disagreement}");
    }
});
