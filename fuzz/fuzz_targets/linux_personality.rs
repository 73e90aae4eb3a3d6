//! Fuzz the Linux personality's inputs that a program controls: its ELF headers (parse,
//! then load into an address space), the initial stack, and the system calls' argument
//! registers and the memory they point at. Nothing may panic, and no guest value may make
//! the shim touch anything outside guest memory (GuestMemory checks every access; a
//! bounds bug shows up as a panic or a sanitizer report here).
#![no_main]

use std::sync::Arc;

use lbrprof_vmm::linux::Process;
use lbrprof_vmm::linux::loader::Elf;
use lbrprof_vmm::linux::mm::{AddressSpace, Prot};
use lbrprof_vmm::linux::stack::{StackSpec, build};
use lbrprof_vmm::memory::{GuestMemory, GuestVirtAddr};
use libfuzzer_sys::fuzz_target;

/// System calls that cannot change the host or block (no file creation, no pipes, no
/// sleeping, no exit). Kept in step with the unit test in vmm-shim/src/linux/syscall.rs.
const SAFE: &[u64] = &[
    0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 25, 28, 32, 33, 39,
    63, 72, 79, 89, 96, 97, 99, 102, 104, 107, 108, 110, 158, 186, 201, 202, 204, 217, 218,
    228, 229, 262, 267, 269, 273, 292, 302, 318, 332, 439,
];

fn words(data: &[u8]) -> impl Iterator<Item = u64> + '_ {
    data.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
    match mode % 3 {
        0 => {
            // ELF: parse; what parses must load (or fail cleanly) into a small space.
            let dir = std::env::temp_dir().join(format!("lbrprof-fuzz-{}", std::process::id()));
            let path = dir.with_extension("elf");
            if std::fs::write(&path, data).is_err() {
                return;
            }
            if let Ok(elf) = Elf::parse(&path, data.to_vec()) {
                let mut mm = AddressSpace::new(mem, 0x1000).unwrap();
                let _ = elf.load(&mut mm, true);
            }
            let _ = std::fs::remove_file(&path);
        }
        1 => {
            // The stack: arguments split at NUL bytes, whatever the top and limit.
            let mut parts = data.split(|&b| b == 0).map(<[u8]>::to_vec);
            let spec = StackSpec {
                argv: parts.by_ref().take(8).collect(),
                envp: parts.by_ref().take(8).collect(),
                execfn: parts.next().unwrap_or_default(),
                random: [1; 16],
                auxv: words(data).take(8).map(|w| (w & 0xff, w)).collect(),
            };
            let top = words(data).next().unwrap_or(0x7fff_0000);
            if let Some(st) = build(&spec, top, 1 << 20) {
                assert!(st.sp <= top && top - st.sp == st.bytes.len() as u64);
                assert_eq!(st.sp % 16, 0);
            }
        }
        _ => {
            // System calls: a mapped page of fuzzed memory, then calls with fuzzed
            // registers (pointers often aimed near the mapping).
            let mut p = Process::bare(mem).unwrap();
            let base = 0x40_0000u64;
            p.memory_mut().map(base, 0x4000, Prot::RW, None, "").unwrap();
            let _ = p
                .memory_mut()
                .write(GuestVirtAddr(base), &data[..data.len().min(0x4000)]);
            let mut w = words(data);
            let mut task = p.main_task();
            for _ in 0..16 {
                let Some(sel) = w.next() else { break };
                let nr = SAFE[(sel as usize) % SAFE.len()];
                let mut args = [0u64; 6];
                for a in &mut args {
                    let v = w.next().unwrap_or(0);
                    *a = if v & 1 == 0 { base + (v >> 1) % 0x5000 } else { v };
                }
                let _ = p.syscall(&mut task, nr, args);
            }
        }
    }
});
