//! The vCPU as the tracer and the interpreter see it: what they read at a stop
//! ([`GuestCpu`], the interpreter's full [`InterpState`]) and the [`GuestAccess`] trait the
//! VMM implements to provide it (fakes implement it in tests).
//!
//! Kept below both of its users, the tracer and the interpreter, so neither depends on the
//! other for it.

use super::branch::CodeSize;
use crate::arch::RFLAGS_TF;

/// RFLAGS.AC.
const RFLAGS_AC: u64 = 1 << 18;
/// CR0.AM.
const CR0_AM: u64 = 1 << 18;
/// CR4.PKE (protection keys for user pages: not modelled, so never interpreted).
const CR4_PKE: u64 = 1 << 22;
/// CR4.CET (control-flow enforcement: user shadow stacks and indirect-branch tracking
/// change what CALL, RET and indirect jumps do; not modelled, so never interpreted).
const CR4_CET: u64 = 1 << 23;
/// CR4.LA57 (5-level paging: the walk here knows four levels, so never interpreted).
const CR4_LA57: u64 = 1 << 12;
/// DR7.L0–L3/G0–G3: a hardware breakpoint or watchpoint is armed.
const DR7_ENABLES: u64 = 0xff;

/// The guest state the interpreter runs on: the register file plus the control state that
/// decides how memory is accessed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterpState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8–R15 (the encoding order).
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS.DPL.
    pub cpl: u8,
    /// CS.L: 64-bit code.
    pub long_mode: bool,
    /// The guest's own DR7: interpreted instructions would not hit its breakpoints.
    pub dr7: u64,
    /// FS.base (thread-local storage on x86-64 Linux: `%fs:` accesses add it).
    pub fs_base: u64,
}

impl InterpState {
    /// Why this state cannot be interpreted at all, if it cannot.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.cpl != 3 {
            Some("not ring 3")
        } else if !self.long_mode {
            Some("not 64-bit code")
        } else if self.rflags & RFLAGS_TF != 0 {
            Some("the guest single-steps itself")
        } else if self.rflags & RFLAGS_AC != 0 && self.cr0 & CR0_AM != 0 {
            Some("alignment checking is on")
        } else if self.cr4 & CR4_PKE != 0 {
            Some("protection keys are on")
        } else if self.cr4 & CR4_CET != 0 {
            Some("control-flow enforcement (CET) is on")
        } else if self.cr4 & CR4_LA57 != 0 {
            Some("5-level paging is on")
        } else if self.dr7 & DR7_ENABLES != 0 {
            Some("the guest has hardware breakpoints armed")
        } else {
            None
        }
    }
}

/// What the tracer needs to know about the vCPU at a stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestCpu {
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// RFLAGS, when known (lets the tracer predict a Jcc instead of stepping it).
    pub rflags: Option<u64>,
    /// RCX: where SYSRET returns to.
    pub rcx: u64,
    /// CS.DPL of the current code segment (the CPL).
    pub cpl: u8,
    pub code_size: CodeSize,
    /// IDTR.
    pub idt_base: u64,
    pub idt_limit: u16,
    pub cr3: u64,
}

/// The guest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuestAccessError {
    #[error("guest-virtual address {gva:#x} is not mapped")]
    Unmapped { gva: u64 },
    #[error("cannot read the vCPU's {what}")]
    Unavailable { what: &'static str },
    #[error("guest-physical address {gpa:#x} is not guest RAM")]
    NotRam { gpa: u64 },
}

/// Access to one vCPU's guest state, as the VMM provides it at an exit.
pub trait GuestAccess {
    fn cpu(&mut self) -> Result<GuestCpu, GuestAccessError>;
    /// Reads `buf.len()` bytes at guest-virtual (linear) address `gva`, translating through
    /// the guest's page tables; fails if any byte is unmapped.
    fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), GuestAccessError>;
    /// Reads a guest MSR as KVM holds it (IA32_LSTAR, IA32_SYSENTER_EIP).
    fn read_msr(&mut self, index: u32) -> Result<u64, GuestAccessError>;

    /// The full register file for the interpreter, or `None` when this
    /// stop does not allow interpreting: the vCPU must be at an instruction boundary with
    /// nothing left for KVM to complete on the next entry (an I/O or MSR exit's result).
    fn interp_state(&mut self) -> Option<InterpState> {
        None
    }

    /// Writes the interpreter's registers back (RIP, RSP, RFLAGS and the other
    /// general-purpose registers) before the vCPU runs again.
    fn set_interp_state(&mut self, _state: &InterpState) -> Result<(), GuestAccessError> {
        Err(GuestAccessError::Unavailable { what: "registers" })
    }

    /// XMM0–XMM15 as the vCPU holds them (for the interpreter's SSE instructions), or
    /// `None` when they cannot be read here.
    fn xmm(&mut self) -> Option<[u128; 16]> {
        None
    }

    /// XMM0–XMM15 and bits 255:128 of YMM0–YMM15 as the vCPU holds them (for the
    /// interpreter's VEX instructions), or `None` when they cannot be read here.
    fn ymm(&mut self) -> Option<([u128; 16], [u128; 16])> {
        None
    }

    /// Writes XMM0–XMM15 back before the vCPU runs again, and bits 255:128 of
    /// YMM0–YMM15 when given (one write).
    fn set_xmm(
        &mut self,
        _xmm: &[u128; 16],
        _ymm_hi: Option<&[u128; 16]>,
    ) -> Result<(), GuestAccessError> {
        Err(GuestAccessError::Unavailable {
            what: "XMM registers",
        })
    }

    /// Reads guest-physical memory (guest RAM only).
    fn read_phys(&mut self, gpa: u64, _buf: &mut [u8]) -> Result<(), GuestAccessError> {
        Err(GuestAccessError::NotRam { gpa })
    }

    /// Writes guest-physical memory (guest RAM only).
    fn write_phys(&mut self, gpa: u64, _data: &[u8]) -> Result<(), GuestAccessError> {
        Err(GuestAccessError::NotRam { gpa })
    }

    /// The host address of the 4 KiB page of guest RAM at page-aligned `gpa`, for the
    /// interpreter's naturally aligned accesses to pages it validated (through
    /// [`crate::memory::load_aligned_at`] and [`crate::memory::store_aligned_at`], never
    /// through a reference). `None` (the default) sends them through
    /// [`GuestAccess::read_phys_aligned`] and [`GuestAccess::write_phys_aligned`]. An
    /// implementation that answers must keep the page mapped there, as guest RAM at
    /// `gpa`, for as long as it lives.
    fn ram_page(&mut self, _gpa: u64) -> Option<std::ptr::NonNull<u8>> {
        None
    }

    /// Reads `len` (1, 2, 4 or 8) bytes at a `len`-aligned `gpa` as one access: an aligned
    /// load is single-copy atomic for the guest (SDM Vol. 3, "Guaranteed Atomic
    /// Operations"). VMMs whose guests have several vCPUs should override this default.
    fn read_phys_aligned(&mut self, gpa: u64, len: usize) -> Result<u64, GuestAccessError> {
        let mut b = [0u8; 8];
        self.read_phys(gpa, &mut b[..len.min(8)])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes the low `len` (1, 2, 4 or 8) bytes of `value` at a `len`-aligned `gpa` as one
    /// access (see [`GuestAccess::read_phys_aligned`]).
    fn write_phys_aligned(
        &mut self,
        gpa: u64,
        len: usize,
        value: u64,
    ) -> Result<(), GuestAccessError> {
        self.write_phys(gpa, &value.to_le_bytes()[..len.min(8)])
    }

    /// Replaces the 8-byte word at `gpa` by `new` if it still holds `old`; whether it did.
    /// The interpreter sets accessed/dirty bits with it, as the CPU does with a locked
    /// operation: another vCPU may be changing the entry. VMMs whose guests have several
    /// vCPUs must override this default (a plain read, compare and write) atomically.
    fn cmpxchg_phys_u64(&mut self, gpa: u64, old: u64, new: u64) -> Result<bool, GuestAccessError> {
        let mut b = [0u8; 8];
        self.read_phys(gpa, &mut b)?;
        if u64::from_le_bytes(b) != old {
            return Ok(false);
        }
        self.write_phys(gpa, &new.to_le_bytes())?;
        Ok(true)
    }
}
