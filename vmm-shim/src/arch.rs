//! Raw x86 architecture constants the shim needs, named as in the Intel SDM (Vol. 3) and
//! the Multiboot 0.6.96 specification. No logic lives here.

// Control registers (SDM Vol. 3 §2.5).
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_MP: u64 = 1 << 1;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
pub const CR4_OSXSAVE: u64 = 1 << 18;

// IA32_EFER (MSR 0xC000_0080).
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

// RFLAGS: bit 1 is reserved and always set.
pub const RFLAGS_RESERVED: u64 = 1 << 1;
/// RFLAGS.TF (trap flag, SDM Vol. 1 §3.4.3.3): a #DB after each instruction.
pub const RFLAGS_TF: u64 = 1 << 8;

// Paging-structure entries (SDM Vol. 3 §4.5).
pub const PTE_P: u64 = 1 << 0;
pub const PTE_RW: u64 = 1 << 1;
pub const PTE_US: u64 = 1 << 2;
/// Accessed (SDM Vol. 3 §4.8): the processor sets it at the first use of the entry.
pub const PTE_A: u64 = 1 << 5;
/// Dirty (leaf entries): the processor sets it at the first write through the entry.
pub const PTE_D: u64 = 1 << 6;
pub const PTE_PS: u64 = 1 << 7;
/// Bits 51:12 of a paging-structure entry: the physical address it points at.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

// Segment descriptor types (SDM Vol. 3 §3.4.5.1, §3.5).
pub const SEG_TYPE_CODE_XR_ACCESSED: u8 = 0xb;
pub const SEG_TYPE_DATA_RW_ACCESSED: u8 = 0x3;
/// 32/64-bit busy TSS.
pub const SEG_TYPE_TSS_BUSY: u8 = 0xb;

// Debug registers (SDM Vol. 3 §18.2.4): DR7 local-enable bit of breakpoint n is 2n.
pub const DR7_L0: u64 = 1 << 0;
/// DR6.BS: the debug exception was a single step.
pub const DR6_BS: u64 = 1 << 14;

// Multiboot v1 (Multiboot Specification 0.6.96 §3).
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1bad_b002;
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie within the first 8192 bytes, 32-bit aligned.
pub const MULTIBOOT_SEARCH: usize = 8192;
pub const MULTIBOOT_PAGE_ALIGN: u32 = 1 << 0;
pub const MULTIBOOT_MEMORY_INFO: u32 = 1 << 1;
pub const MULTIBOOT_VIDEO_MODE: u32 = 1 << 2;
pub const MULTIBOOT_AOUT_KLUDGE: u32 = 1 << 16;
pub const MULTIBOOT_INFO_MEMORY: u32 = 1 << 0;
pub const MULTIBOOT_INFO_CMDLINE: u32 = 1 << 2;
pub const MULTIBOOT_INFO_MEM_MAP: u32 = 1 << 6;
pub const MULTIBOOT_INFO_BOOT_LOADER_NAME: u32 = 1 << 9;
pub const MULTIBOOT_MEMORY_AVAILABLE: u32 = 1;
pub const MULTIBOOT_MEMORY_RESERVED: u32 = 2;

// ELF (System V ABI, gABI).
pub const ELFMAG: [u8; 4] = *b"\x7fELF";
pub const ELFCLASS32: u8 = 1;
pub const ELFCLASS64: u8 = 2;
pub const ELFDATA2LSB: u8 = 1;
pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
pub const EM_386: u16 = 3;
pub const EM_X86_64: u16 = 62;
pub const PT_LOAD: u32 = 1;
pub const PF_X: u32 = 1;

// fw_cfg (QEMU docs/specs/fw_cfg.rst).
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
pub const FW_CFG_ID: u16 = 0x0001;
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
pub const FW_CFG_MAX_CPUS: u16 = 0x000f;
pub const FW_CFG_CMDLINE_SIZE: u16 = 0x0014;
pub const FW_CFG_CMDLINE_DATA: u16 = 0x0015;
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// The traditional (non-DMA) interface.
pub const FW_CFG_VERSION: u32 = 1;

// 16550 UART registers (offsets from the base) and bits, for the shim's own use of the
// UART (the device is vm-superio's).
pub const UART_RBR_THR: u16 = 0;
pub const UART_IIR_FCR: u16 = 2;
pub const UART_LCR: u16 = 3;
pub const UART_MCR: u16 = 4;
pub const UART_LSR: u16 = 5;
pub const UART_LCR_DLAB: u8 = 1 << 7;
/// MCR: loopback (what is sent comes back as received).
pub const UART_MCR_LOOP: u8 = 1 << 4;
