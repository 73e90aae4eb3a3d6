//! The machine state a guest starts in: low-memory boot structures (GDT, page tables,
//! boot info / multiboot info) and the initial vCPU registers for each image kind.
//!
//! Guest-physical layout below 1 MiB (images load from [`LOAD_START`] up):
//!
//! ```text
//! 0x0500  GDT: null, code64 (0x08), data (0x10), TSS (0x18, 16 bytes), code32 (0x28)
//! 0x1000  a zeroed TSS (KVM needs a valid TR on entry; guests load their own)
//! 0x2000  BootInfo (lbrprof's protocol, see guest/src/abi.rs); 0x2100 command line
//! 0x3000  multiboot info; 0x3100 memory map; 0x3200 boot-loader name
//! 0x8000  PML4, 0x9000 PDPT, 0xA000-0xDFFF four page directories (identity, 2 MiB pages)
//! 0x10000 per-vCPU 4 KiB boot stacks (RSP at entry), up to MAX_VCPUS
//! 0x60000 the guest agent's snapshot rings, one per vCPU (abi::agent_ring_addr; written by
//!         the guest)
//! ```

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::abi::{BOOT_MAGIC, BOOT_VERSION, BootInfo};
use crate::arch::*;
use crate::memory::{GuestMemory, GuestPhysAddr, MemoryError};

pub const GDT_ADDR: u64 = 0x500;
pub const TSS_ADDR: u64 = 0x1000;
pub const BOOT_INFO_ADDR: u64 = 0x2000;
pub const CMDLINE_ADDR: u64 = 0x2100;
/// Longest guest command line, in bytes.
pub const CMDLINE_MAX: usize = 0xe00;
pub const MB_INFO_ADDR: u64 = 0x3000;
pub const MB_MMAP_ADDR: u64 = 0x3100;
pub const MB_LOADER_NAME_ADDR: u64 = 0x3200;
pub const PML4_ADDR: u64 = 0x8000;
pub const PDPT_ADDR: u64 = 0x9000;
pub const PD_ADDR: u64 = 0xa000;
/// Page directories: each maps 1 GiB, so guest RAM is limited to this many GiB.
pub const PD_COUNT: u64 = 4;
pub const BOOT_STACKS_ADDR: u64 = 0x10000;
pub const BOOT_STACK_SIZE: u64 = 0x1000;
pub const MAX_VCPUS: u32 = 64;
/// Images load from here up.
pub const LOAD_START: u64 = 0x10_0000;
/// Conventional memory reported to multiboot guests (below the EBDA).
pub const LOW_MEM_END: u64 = 0x9_fc00;

// The layout above must not overlap itself.
const _: () = {
    assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= MB_INFO_ADDR);
    assert!(MB_LOADER_NAME_ADDR + 0x100 <= PML4_ADDR);
    assert!(PD_ADDR + PD_COUNT * 0x1000 <= BOOT_STACKS_ADDR);
    assert!(BOOT_STACKS_ADDR + MAX_VCPUS as u64 * BOOT_STACK_SIZE <= LOW_MEM_END);
    assert!(std::mem::size_of::<BootInfo>() as u64 <= CMDLINE_ADDR - BOOT_INFO_ADDR);
};

pub const SEL_CODE64: u16 = 0x08;
pub const SEL_DATA: u16 = 0x10;
pub const SEL_TSS: u16 = 0x18;
pub const SEL_CODE32: u16 = 0x28;

/// Flat descriptors: (access byte, flags nibble).
fn descriptor(access: u64, flags: u64) -> u64 {
    0xffff | (0xf << 48) | (access << 40) | (flags << 52)
}

/// GDT, TSS and identity page tables for all of RAM; everything an image kind needs.
pub fn write_tables(mem: &GuestMemory) -> Result<(), MemoryError> {
    let tss_limit = 0x67u64;
    let gdt = [
        0,
        descriptor(0x9b, 0xa), // code64: P, DPL0, code XR accessed; L=1, G=1
        descriptor(0x93, 0xc), // data: P, DPL0, data RW accessed; D/B=1, G=1
        tss_limit | ((TSS_ADDR & 0xff_ffff) << 16) | (0x8b << 40) | ((TSS_ADDR >> 24) << 56),
        TSS_ADDR >> 32,
        descriptor(0x9b, 0xc), // code32: D/B=1, G=1
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_u64(GuestPhysAddr(GDT_ADDR + 8 * i as u64), *d)?;
    }
    mem.zero(GuestPhysAddr(TSS_ADDR), tss_limit + 1)?;

    let flags = PTE_P | PTE_RW | PTE_US;
    mem.write_u64(GuestPhysAddr(PML4_ADDR), PDPT_ADDR | flags)?;
    let gib = mem.size().div_ceil(1 << 30).clamp(1, PD_COUNT);
    for g in 0..gib {
        let pd = PD_ADDR + g * 0x1000;
        mem.write_u64(GuestPhysAddr(PDPT_ADDR + 8 * g), pd | flags)?;
        for i in 0..512u64 {
            let addr = (g << 30) | (i << 21);
            mem.write_u64(GuestPhysAddr(pd + 8 * i), addr | flags | PTE_PS)?;
        }
    }
    Ok(())
}

/// lbrprof's boot info (ELF64 images) and the command line after it.
pub fn write_boot_info(
    mem: &GuestMemory,
    ncpus: u32,
    tsc_khz: u64,
    cmdline: &str,
) -> Result<(), MemoryError> {
    let info = BootInfo {
        magic: BOOT_MAGIC,
        version: BOOT_VERSION,
        ncpus,
        mem_bytes: mem.size(),
        tsc_khz,
        cmdline_addr: CMDLINE_ADDR,
        cmdline_len: cmdline.len() as u64,
    };
    let fields = [
        info.magic,
        u64::from(info.version) | (u64::from(info.ncpus) << 32),
        info.mem_bytes,
        info.tsc_khz,
        info.cmdline_addr,
        info.cmdline_len,
    ];
    debug_assert_eq!(std::mem::size_of::<BootInfo>(), fields.len() * 8);
    for (i, f) in fields.iter().enumerate() {
        mem.write_u64(GuestPhysAddr(BOOT_INFO_ADDR + 8 * i as u64), *f)?;
    }
    mem.write(GuestPhysAddr(CMDLINE_ADDR), cmdline.as_bytes())?;
    Ok(())
}

/// The multiboot v1 information structure: memory sizes, command line, memory map and
/// boot loader name (Multiboot Specification 0.6.96 §3.3).
pub fn write_multiboot_info(mem: &GuestMemory, cmdline: &str) -> Result<(), MemoryError> {
    let size = mem.size();
    let mut info = [0u32; 22];
    info[0] = MULTIBOOT_INFO_MEMORY
        | MULTIBOOT_INFO_CMDLINE
        | MULTIBOOT_INFO_MEM_MAP
        | MULTIBOOT_INFO_BOOT_LOADER_NAME;
    info[1] = (LOW_MEM_END / 1024) as u32; // mem_lower, KiB
    info[2] = ((size - LOAD_START) / 1024) as u32; // mem_upper, KiB from 1 MiB
    info[4] = CMDLINE_ADDR as u32;
    let map: [(u64, u64, u32); 3] = [
        (0, LOW_MEM_END, MULTIBOOT_MEMORY_AVAILABLE),
        (
            LOW_MEM_END,
            LOAD_START - LOW_MEM_END,
            MULTIBOOT_MEMORY_RESERVED,
        ),
        (LOAD_START, size - LOAD_START, MULTIBOOT_MEMORY_AVAILABLE),
    ];
    let mut entries = Vec::new();
    for (base, len, kind) in map {
        entries.extend(20u32.to_le_bytes());
        entries.extend(base.to_le_bytes());
        entries.extend(len.to_le_bytes());
        entries.extend(kind.to_le_bytes());
    }
    info[11] = entries.len() as u32; // mmap_length
    info[12] = MB_MMAP_ADDR as u32; // mmap_addr
    info[16] = MB_LOADER_NAME_ADDR as u32; // boot_loader_name
    let bytes: Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
    mem.write(GuestPhysAddr(MB_INFO_ADDR), &bytes)?;
    mem.write(GuestPhysAddr(MB_MMAP_ADDR), &entries)?;
    mem.write(GuestPhysAddr(MB_LOADER_NAME_ADDR), b"lbrprof\0")?;
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write(GuestPhysAddr(CMDLINE_ADDR), &line)?;
    Ok(())
}

/// A flat 4 GiB segment register (base 0, page granular) at privilege level `dpl`; `long`
/// for a 64-bit code segment.
pub(crate) fn segment(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn common_sregs(sregs: &mut kvm_sregs) {
    let data = segment(SEL_DATA, SEG_TYPE_DATA_RW_ACCESSED, 0, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: 0x67,
        selector: SEL_TSS,
        type_: SEG_TYPE_TSS_BUSY,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = 6 * 8 - 1;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
}

/// 64-bit long mode with the identity page tables; SSE usable.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    common_sregs(sregs);
    sregs.cs = segment(SEL_CODE64, SEG_TYPE_CODE_XR_ACCESSED, 0, true);
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
}

/// 32-bit protected mode, paging off, flat segments (multiboot machine state).
pub fn protected_mode_sregs(sregs: &mut kvm_sregs) {
    common_sregs(sregs);
    sregs.cs = segment(SEL_CODE32, SEG_TYPE_CODE_XR_ACCESSED, 0, false);
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// Registers at the entry of an ELF64 image on vCPU `index` (see guest/src/abi.rs).
pub fn elf64_regs(entry: u64, index: u32) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rflags: RFLAGS_RESERVED,
        rdi: u64::from(index),
        rsi: BOOT_INFO_ADDR,
        rsp: BOOT_STACKS_ADDR + (u64::from(index) + 1) * BOOT_STACK_SIZE,
        ..Default::default()
    }
}

/// Registers at the entry of a multiboot image (bootstrap processor only).
pub fn multiboot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rflags: RFLAGS_RESERVED,
        rax: u64::from(MULTIBOOT_BOOTLOADER_MAGIC),
        rbx: MB_INFO_ADDR,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GuestVirtAddr;

    #[test]
    fn identity_map_covers_ram_and_is_user_accessible() {
        let mem = GuestMemory::new(1 << 30).unwrap();
        write_tables(&mem).unwrap();
        for va in [0u64, 0x20_1234, (1 << 30) - 1] {
            assert_eq!(
                mem.translate(PML4_ADDR, GuestVirtAddr(va)).unwrap(),
                GuestPhysAddr(va)
            );
        }
        let pde = mem.read_u64(GuestPhysAddr(PD_ADDR)).unwrap();
        assert_eq!(pde & (PTE_US | PTE_PS), PTE_US | PTE_PS);
    }

    #[test]
    fn multiboot_info_reports_memory_and_cmdline() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        write_multiboot_info(&mem, "hello world").unwrap();
        let mut b = [0u8; 12];
        mem.read(GuestPhysAddr(MB_INFO_ADDR), &mut b).unwrap();
        let mem_upper = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        assert_eq!(mem_upper, 63 * 1024);
        let mut s = [0u8; 12];
        mem.read(GuestPhysAddr(CMDLINE_ADDR), &mut s).unwrap();
        assert_eq!(&s, b"hello world\0");
    }
}
