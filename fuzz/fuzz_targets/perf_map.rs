#![no_main]
//! perf JIT maps (`/tmp/perf-PID.map`, written by the profiled program, so any bytes):
//! they parse without a panic, and looking up addresses (taken from the input's tail, so
//! the fuzzer can aim at the entries it wrote) finds only entries that contain them.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.len().saturating_sub(64);
    let (text, tail) = data.split_at(split);
    let text = String::from_utf8_lossy(text);
    let mut addrs: Vec<u64> = tail
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    addrs.extend([0, 1, u64::MAX, 0x7f00_0000_0000]);
    let _ = lbrprof_symbolizer::fuzzing::perf_map(&text, &addrs);
});
