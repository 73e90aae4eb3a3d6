#![no_main]
//! The symbolizer's ELF/DWARF entry point: any bytes as a module file, then lookups of
//! addresses taken from the input itself (so the fuzzer can steer them into the code).

use std::path::Path;

use lbrprof_symbolizer::{FileOffset, Module, Svma, SymbolizerOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = SymbolizerOptions::default();
    let probes: Vec<u64> = data
        .chunks_exact(8)
        .rev()
        .take(16)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .chain([0, 0x1000, 0x401000])
        .collect();
    if let Ok(opened) = Module::from_bytes(Path::new("fuzz"), data.to_vec(), &opts) {
        for &p in &probes {
            let _ = opened.module.symbolize(Svma(p));
            let _ = opened.module.symbolize(Svma(p & 0xffff));
            let _ = opened.module.symbolize_offset(FileOffset(p & 0xffff));
        }
        let svmas: Vec<Svma> = probes.iter().map(|p| Svma(*p)).collect();
        let _ = opened
            .module
            .visit(&svmas, |_, a| Some(a), |_| Ok::<(), ()>(()));
        let _ = opened.module.take_warnings();
    }
});
