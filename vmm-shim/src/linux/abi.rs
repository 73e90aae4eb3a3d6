//! Raw constants of the Linux personality: the machine layout the shim builds for a
//! program (selectors as Linux uses them, the supervisor-only trap area) and the Linux
//! user ABI values that the `libc` crate does not carry (auxv tags, arch_prctl codes).
//! No logic lives here.

use crate::memory::GuestVirtAddr;

/// x86 page size; the guest's page tables use 4 KiB pages only.
pub const PAGE: u64 = 4096;

// GDT selectors, as Linux x86-64 lays them out (arch/x86/include/asm/segment.h), so a
// program that looks at CS/SS sees the values it would natively.
pub const KERNEL_CS: u16 = 0x10;
pub const KERNEL_DS: u16 = 0x18;
pub const USER32_CS: u16 = 0x23;
pub const USER_DS: u16 = 0x2b;
pub const USER_CS: u16 = 0x33;
pub const TSS_SEL: u16 = 0x40;
/// GDT entries (the TSS descriptor takes two).
pub const GDT_ENTRIES: u64 = 10;

/// The supervisor-only trap area: GDT, TSS, IDT, the trap stubs and the ring-0 stack,
/// one page each, far above anything a program can map (user space ends at 2^47).
pub const TRAP_AREA: GuestVirtAddr = GuestVirtAddr(0xffff_fe00_0000_0000);
pub const TRAP_GDT: u64 = 0;
pub const TRAP_TSS: u64 = 1;
pub const TRAP_IDT: u64 = 2;
pub const TRAP_STUBS: u64 = 3;
pub const TRAP_STACK: u64 = 4;
pub const TRAP_PAGES: u64 = 5;

/// Every vector `v` < 32 has a stub `out TRAP_PORT_BASE + v, al; iretq`; vectors from
/// 32 up share the stub of port [`TRAP_PORT_OTHER`]. Ring 3 cannot reach these ports
/// (the TSS has no I/O bitmap), so only a trap can produce these exits.
pub const TRAP_PORT_BASE: u16 = 0xe0;
pub const TRAP_PORT_OTHER: u16 = 0xdf;
/// The `syscall` entry stub (LSTAR): `out TRAP_PORT_SYSCALL, al; sysretq`.
pub const TRAP_PORT_SYSCALL: u16 = 0xd0;
/// A port whose exit the shim ignores (no register is read or written): a program that
/// writes it measures the bare cost of leaving and re-entering the guest, the floor of
/// the system-call path (bench/linux-programs). Natively the write is a SIGSEGV.
pub const TRAP_PORT_NULL: u16 = 0xd1;
/// Stub slot of the `syscall` entry (after the 33 exception/interrupt slots).
pub const SYSCALL_SLOT: u64 = 33;
/// Bytes per stub slot in the stub page.
pub const STUB_SLOT: u64 = 16;
/// The legacy vsyscall page (fixed by the x86-64 ABI; older programs and the JVM call
/// into it): `gettimeofday` at +0, `time` at +0x400, `getcpu` at +0x800.
pub const VSYSCALL_PAGE: u64 = 0xffff_ffff_ff60_0000;

// Exception vectors (SDM Vol. 3 §6.3.1).
pub const VEC_DE: u8 = 0;
pub const VEC_DB: u8 = 1;
pub const VEC_NMI: u8 = 2;
pub const VEC_BP: u8 = 3;
pub const VEC_UD: u8 = 6;
pub const VEC_GP: u8 = 13;
pub const VEC_PF: u8 = 14;
/// Page-fault error code bits: the access was a write, an instruction fetch.
pub const PF_WRITE: u64 = 1 << 1;
pub const PF_FETCH: u64 = 1 << 4;
pub const VEC_MF: u8 = 16;
pub const VEC_AC: u8 = 17;
pub const VEC_XM: u8 = 19;

/// Whether exception `vector` pushes an error code (SDM Vol. 3 Table 6-1).
pub fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// `syscall` (0F 05).
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

// SYSCALL/SYSRET MSRs (SDM Vol. 3 §5.8.8) and the values Linux gives them.
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// IA32_TIME_STAMP_COUNTER (SDM Vol. 4 Table 2-2): the guest's TSC, as KVM computes it.
pub const MSR_IA32_TSC: u32 = 0x10;
/// STAR: SYSRET bases its selectors on USER32_CS (CS = +16, SS = +8), SYSCALL on KERNEL_CS.
pub const STAR_VALUE: u64 = ((USER32_CS as u64) << 48) | ((KERNEL_CS as u64) << 32);
/// RFLAGS bits SYSCALL clears: TF, DF, NT, AC (not IF: see cpu.rs).
pub const SYSCALL_MASK_VALUE: u64 = 0x4_4500;
/// TSS layout: the I/O permission bitmap follows the 104-byte TSS and covers ports up to
/// and including TRAP_PORT_SYSCALL; one all-ones byte ends it.
pub const TSS_IOMAP_BASE: u64 = 0x68;
pub const TSS_IOMAP_BYTES: u64 = TRAP_PORT_NULL as u64 / 8 + 1;
pub const TSS_LIMIT: u64 = TSS_IOMAP_BASE + TSS_IOMAP_BYTES;

// Where things go in the program's address space (as Linux without ASLR places them).
/// Top of the main thread's stack.
pub const STACK_TOP: u64 = 0x7fff_ffff_f000;
/// Bytes of stack reserved below STACK_TOP (RLIMIT_STACK's usual 8 MiB).
pub const STACK_SIZE: u64 = 8 << 20;
/// mmap without a hint allocates downward from here.
pub const MMAP_TOP: u64 = 0x7fff_f7ff_f000;
/// Load address of a position-independent main program (ELF_ET_DYN_BASE, no ASLR).
pub const PIE_BASE: u64 = 0x5555_5555_4000;
/// Lowest address a mapping may start at (vm.mmap_min_addr).
pub const MMAP_MIN: u64 = 0x1_0000;
/// First address past user space (47-bit canonical lower half).
pub const USER_END: u64 = 0x7fff_ffff_f000;

// Auxiliary vector tags (include/uapi/linux/auxvec.h, arch/x86/include/uapi/asm/auxvec.h).
pub const AT_NULL: u64 = 0;
pub const AT_PHDR: u64 = 3;
pub const AT_PHENT: u64 = 4;
pub const AT_PHNUM: u64 = 5;
pub const AT_PAGESZ: u64 = 6;
pub const AT_BASE: u64 = 7;
pub const AT_FLAGS: u64 = 8;
pub const AT_ENTRY: u64 = 9;
pub const AT_UID: u64 = 11;
pub const AT_EUID: u64 = 12;
pub const AT_GID: u64 = 13;
pub const AT_EGID: u64 = 14;
pub const AT_PLATFORM: u64 = 15;
pub const AT_HWCAP: u64 = 16;
pub const AT_CLKTCK: u64 = 17;
pub const AT_SECURE: u64 = 23;
pub const AT_RANDOM: u64 = 25;
pub const AT_HWCAP2: u64 = 26;
pub const AT_EXECFN: u64 = 31;
pub const AT_SYSINFO_EHDR: u64 = 33;
pub const AT_MINSIGSTKSZ: u64 = 51;

// arch_prctl codes (arch/x86/include/uapi/asm/prctl.h).
pub const ARCH_SET_GS: u64 = 0x1001;
pub const ARCH_SET_FS: u64 = 0x1002;
pub const ARCH_GET_FS: u64 = 0x1003;
pub const ARCH_GET_GS: u64 = 0x1004;

/// `struct linux_dirent64` header size before the name (d_ino, d_off, d_reclen, d_type).
pub const DIRENT64_HEADER: usize = 19;
