//! Fuzz the guest image loaders (ELF64, multiboot ELF32, multiboot a.out kludge): parsing
//! never panics, and whatever it accepts satisfies the invariants the VM relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lbrprof_vmm::loader::{RamLayout, parse};

fuzz_target!(|data: &[u8]| {
    let layout = RamLayout::for_ram(64 << 20);
    if let Ok(image) = parse(data, layout) {
        assert!(!image.segments.is_empty());
        for s in &image.segments {
            assert!(s.gpa.0 >= layout.load_start && s.end() <= layout.ram_end);
            assert!(s.file_offset + s.file_size <= data.len());
            assert!(s.file_size as u64 <= s.mem_size);
        }
        assert!(image.segments.iter().any(|s| (s.gpa.0..s.end()).contains(&image.entry)));
    }
});
