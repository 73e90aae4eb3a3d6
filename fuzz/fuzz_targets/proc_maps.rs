#![no_main]
//! `/proc/PID/maps` text as the sampler reads it for processes that were running before
//! the recording started: any bytes parse without a panic, and the mappings it accepts are
//! well formed (start below end), as the recording writer assumes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for m in lbrprof_collector::sampler::procfs::parse_maps(&text) {
        assert!(m.start < m.end, "accepted an empty or reversed mapping: {m:?}");
    }
});
