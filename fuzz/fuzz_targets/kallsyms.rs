#![no_main]
//! `/proc/kallsyms` text (or a saved copy of it): any bytes parse without a panic, and
//! looking up addresses in the table built from them (taken from the input's tail, so the
//! fuzzer can aim at the symbols it wrote) never panics either.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.len().saturating_sub(64);
    let (text, tail) = data.split_at(split);
    let text = String::from_utf8_lossy(text);
    let mut addrs: Vec<u64> = tail
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    addrs.extend([0, 1, u64::MAX, 0xffff_ffff_8100_0000]);
    let _ = lbrprof_symbolizer::fuzzing::kallsyms(&text, &addrs);
});
