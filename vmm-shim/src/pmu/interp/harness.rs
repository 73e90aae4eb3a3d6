//! What the interpreter's tests and its differential fuzz target share: a small fake
//! machine (guest RAM with 4-level page tables mapping 2 MiB pages: 0–2 MiB
//! supervisor-only, 2–4 MiB user code read-only, 4–6 MiB user read-write, 6–8 MiB user
//! read-only) and an executable page that runs one instruction on the host CPU from a
//! given register state; and [`differential`], which runs one instruction both ways.

use std::arch::asm;

use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Register};

use super::*;
use crate::pmu::guest::{GuestAccessError, GuestCpu};

pub const CODE: u64 = 0x20_0000;
pub const DATA: u64 = 0x40_0000;
pub const RO: u64 = 0x60_0000;
pub const PD: u64 = 0x3000;

pub struct Machine {
    pub mem: Vec<u8>,
    /// XMM0–XMM15.
    pub xmm: [u128; 16],
    /// Bits 255:128 of YMM0–YMM15.
    pub ymm_hi: [u128; 16],
}

impl Machine {
    pub fn new(code: &[u8]) -> Machine {
        let mut mem = vec![0u8; 8 << 20];
        let mut put = |at: u64, v: u64| {
            mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(0x1000, 0x2000 | PTE_P | PTE_RW | PTE_US);
        put(0x2000, PD | PTE_P | PTE_RW | PTE_US);
        put(PD, PTE_P | PTE_RW | PTE_PS); // supervisor
        put(PD + 8, CODE | PTE_P | PTE_US | PTE_PS);
        put(PD + 16, DATA | PTE_P | PTE_RW | PTE_US | PTE_PS);
        put(PD + 24, RO | PTE_P | PTE_US | PTE_PS);
        mem[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
        Machine {
            mem,
            xmm: [0; 16],
            ymm_hi: [0; 16],
        }
    }

    pub fn u64_at(&self, at: u64) -> u64 {
        u64::from_le_bytes(self.mem[at as usize..at as usize + 8].try_into().unwrap())
    }
}

impl GuestAccess for Machine {
    fn cpu(&mut self) -> Result<GuestCpu, GuestAccessError> {
        Err(GuestAccessError::Unavailable { what: "registers" })
    }

    fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        // Identity-mapped below 8 MiB.
        self.read_phys(gva, buf)
            .map_err(|_| GuestAccessError::Unmapped { gva })
    }

    fn read_msr(&mut self, _index: u32) -> Result<u64, GuestAccessError> {
        Err(GuestAccessError::Unavailable { what: "MSR" })
    }

    fn xmm(&mut self) -> Option<[u128; 16]> {
        Some(self.xmm)
    }

    fn ymm(&mut self) -> Option<([u128; 16], [u128; 16])> {
        Some((self.xmm, self.ymm_hi))
    }

    fn set_xmm(
        &mut self,
        xmm: &[u128; 16],
        ymm_hi: Option<&[u128; 16]>,
    ) -> Result<(), GuestAccessError> {
        self.xmm = *xmm;
        if let Some(hi) = ymm_hi {
            self.ymm_hi = *hi;
        }
        Ok(())
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        let end = gpa as usize + buf.len();
        let src = self
            .mem
            .get(gpa as usize..end)
            .ok_or(GuestAccessError::NotRam { gpa })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestAccessError> {
        let end = (gpa as usize).checked_add(data.len());
        if end.is_none_or(|end| end > self.mem.len()) {
            return Err(GuestAccessError::NotRam { gpa });
        }
        // SAFETY: in bounds (checked). Through the buffer's raw pointer, not a fresh
        // `&mut` slice, so the pointers `ram_page` handed out stay valid.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.mem.as_mut_ptr().add(gpa as usize),
                data.len(),
            )
        };
        Ok(())
    }

    /// The interpreter's direct path ([`GuestAccess::ram_page`]), so the tests run it.
    fn ram_page(&mut self, gpa: u64) -> Option<std::ptr::NonNull<u8>> {
        let end = (gpa as usize).checked_add(PAGE as usize)?;
        if !gpa.is_multiple_of(PAGE) || end > self.mem.len() {
            return None;
        }
        // SAFETY: in bounds (checked); `mem` is not resized while a session borrows the
        // machine.
        std::ptr::NonNull::new(unsafe { self.mem.as_mut_ptr().add(gpa as usize) })
    }
}

pub fn state() -> InterpState {
    let mut s = InterpState {
        rip: CODE,
        rflags: 2,
        cr0: 0x8000_0033,
        cr3: 0x1000,
        cr4: 0x20,
        efer: 0x500,
        cpl: 3,
        long_mode: true,
        ..InterpState::default()
    };
    s.gpr[RSP] = DATA + 0x10_0000;
    s
}

/// An executable page holding one instruction and a `ret`.
pub struct CodePage(*mut u8);

impl CodePage {
    #[allow(
        clippy::new_without_default,
        reason = "a mapping per call, not a value"
    )]
    pub fn new() -> CodePage {
        // SAFETY: a fresh private anonymous mapping; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of an executable page");
        CodePage(p.cast())
    }

    /// Runs `code` (one instruction, which must not touch RSP or memory) with the
    /// general-purpose registers and RFLAGS given; returns them afterwards.
    pub fn run(&self, code: &[u8], regs: &mut [u64; 16], flags: &mut u64) {
        assert!(code.len() < 4000);
        // SAFETY: the page is ours, writable and 4096 bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.0, code.len());
            *self.0.add(code.len()) = 0xc3; // ret
        }
        let regs_ptr = regs.as_mut_ptr();
        let flags_ptr: *mut u64 = flags;
        // SAFETY: the callee-saved registers are pushed and popped around the call; the
        // called code is one register-only instruction and a RET, so it only changes the
        // registers saved here and the status flags; the stack is balanced on return.
        unsafe {
            asm!(
                "push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
                "push rdx",
                "push rdi",
                "push rsi",
                "push qword ptr [rdx]",
                "mov rax, [rdi]",
                "mov rcx, [rdi + 8]",
                "mov rdx, [rdi + 16]",
                "mov rbx, [rdi + 24]",
                "mov rbp, [rdi + 40]",
                "mov rsi, [rdi + 48]",
                "mov r8, [rdi + 64]",
                "mov r9, [rdi + 72]",
                "mov r10, [rdi + 80]",
                "mov r11, [rdi + 88]",
                "mov r12, [rdi + 96]",
                "mov r13, [rdi + 104]",
                "mov r14, [rdi + 112]",
                "mov r15, [rdi + 120]",
                "mov rdi, [rdi + 56]",
                "popfq",
                "call qword ptr [rsp]",
                "pushfq",
                "push rdi",
                "mov rdi, [rsp + 24]",
                "mov [rdi], rax",
                "mov [rdi + 8], rcx",
                "mov [rdi + 16], rdx",
                "mov [rdi + 24], rbx",
                "mov [rdi + 40], rbp",
                "mov [rdi + 48], rsi",
                "mov [rdi + 64], r8",
                "mov [rdi + 72], r9",
                "mov [rdi + 80], r10",
                "mov [rdi + 88], r11",
                "mov [rdi + 96], r12",
                "mov [rdi + 104], r13",
                "mov [rdi + 112], r14",
                "mov [rdi + 120], r15",
                "pop rax",
                "mov [rdi + 56], rax",
                "pop rax",
                "mov rdx, [rsp + 16]",
                "mov [rdx], rax",
                "add rsp, 24",
                "pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
                in("rdi") regs_ptr,
                in("rsi") self.0,
                in("rdx") flags_ptr,
                clobber_abi("C"),
            );
        }
    }
}

/// Where [`CodePage::run_xmm`] keeps XMM0–XMM15 on the page.
const XMM_AREA: usize = 0x800;

impl CodePage {
    /// [`CodePage::run`] with XMM0–XMM15 loaded before the instruction and stored after it
    /// (RIP-relative MOVDQU to an area on the page: no register or flag is touched).
    pub fn run_xmm(
        &self,
        code: &[u8],
        regs: &mut [u64; 16],
        flags: &mut u64,
        xmm: &mut [u128; 16],
    ) {
        let mut seq = Vec::new();
        let movdqu = |seq: &mut Vec<u8>, n: usize, store: bool| {
            seq.push(0xf3);
            if n >= 8 {
                seq.push(0x44);
            }
            seq.extend([
                0x0f,
                if store { 0x7f } else { 0x6f },
                (((n & 7) as u8) << 3) | 0b101,
            ]);
            let next = seq.len() + 4;
            let disp = (XMM_AREA + 16 * n) as i64 - next as i64;
            seq.extend((disp as i32).to_le_bytes());
        };
        for n in 0..16 {
            movdqu(&mut seq, n, false);
        }
        seq.extend_from_slice(code);
        for n in 0..16 {
            movdqu(&mut seq, n, true);
        }
        assert!(seq.len() < XMM_AREA);
        // SAFETY: the page is ours, writable and 4096 bytes long; the area is within it.
        unsafe {
            for (n, v) in xmm.iter().enumerate() {
                let p = self.0.add(XMM_AREA + 16 * n);
                std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), p, 16);
            }
        }
        self.run(&seq, regs, flags);
        for (n, v) in xmm.iter_mut().enumerate() {
            let mut b = [0u8; 16];
            // SAFETY: as above.
            unsafe {
                std::ptr::copy_nonoverlapping(self.0.add(XMM_AREA + 16 * n), b.as_mut_ptr(), 16)
            };
            *v = u128::from_le_bytes(b);
        }
    }
}

impl CodePage {
    /// [`CodePage::run`] with YMM0–YMM15 (`xmm`: bits 127:0, `hi`: bits 255:128) loaded
    /// before the instruction and stored after it (RIP-relative VMOVDQU; no register or
    /// flag is touched). The host must have AVX.
    pub fn run_ymm(
        &self,
        code: &[u8],
        regs: &mut [u64; 16],
        flags: &mut u64,
        xmm: &mut [u128; 16],
        hi: &mut [u128; 16],
    ) {
        let mut seq = Vec::new();
        let vmovdqu = |seq: &mut Vec<u8>, n: usize, store: bool| {
            // VEX.256.F3.0F 6F/7F with the two-byte prefix: C5, then ~R, ~vvvv = 1111,
            // L = 1, pp = F3.
            let r = if n >= 8 { 0 } else { 0x80 };
            seq.extend([
                0xc5,
                r | 0x7e,
                if store { 0x7f } else { 0x6f },
                (((n & 7) as u8) << 3) | 0b101,
            ]);
            let next = seq.len() + 4;
            let disp = (XMM_AREA + 32 * n) as i64 - next as i64;
            seq.extend((disp as i32).to_le_bytes());
        };
        for n in 0..16 {
            vmovdqu(&mut seq, n, false);
        }
        seq.extend_from_slice(code);
        for n in 0..16 {
            vmovdqu(&mut seq, n, true);
        }
        assert!(seq.len() < XMM_AREA);
        // SAFETY: the page is ours, writable and 4096 bytes long; the 512-byte area is
        // within it.
        unsafe {
            for n in 0..16 {
                let p = self.0.add(XMM_AREA + 32 * n);
                std::ptr::copy_nonoverlapping(xmm[n].to_le_bytes().as_ptr(), p, 16);
                std::ptr::copy_nonoverlapping(hi[n].to_le_bytes().as_ptr(), p.add(16), 16);
            }
        }
        self.run(&seq, regs, flags);
        for n in 0..16 {
            let (mut lo, mut up) = ([0u8; 16], [0u8; 16]);
            // SAFETY: as above.
            unsafe {
                let p = self.0.add(XMM_AREA + 32 * n);
                std::ptr::copy_nonoverlapping(p, lo.as_mut_ptr(), 16);
                std::ptr::copy_nonoverlapping(p.add(16), up.as_mut_ptr(), 16);
            }
            xmm[n] = u128::from_le_bytes(lo);
            hi[n] = u128::from_le_bytes(up);
        }
    }
}

impl Drop for CodePage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), unmapped once.
        unsafe { libc::munmap(self.0.cast(), 4096) };
    }
}

/// What [`differential`] made of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a register-only, straight-line user instruction: not tried.
    Skipped,
    /// The interpreter refused it (the breakpoints would take it): nothing to compare.
    Refused,
    /// Both ran it and agree.
    Agreed,
}

/// Runs the instruction at the start of `code` (any instruction) in the interpreter from
/// `s` three times, each on its own fake machine: one step with and one without the fast
/// path (`interp/fast.rs`), and as the tracer runs it, in a batch ([`Session::run`], the
/// fast path, going on to a HLT placed after it). The outcome, the registers and all of
/// memory must be the same. Then after a NOP, in steps and in a batch.
fn fast_matches_generic(code: &[u8], s: InterpState, xmm: [u128; 16]) -> Result<(), String> {
    let mut bytes = code.to_vec();
    bytes.push(0xf4);
    /// What `go` made of the fake machine's instruction, and the registers, XMM registers
    /// and memory after it.
    type After<R> = (R, InterpState, Option<[u128; 16]>, Vec<u8>);
    fn run<R>(
        bytes: &[u8],
        s: InterpState,
        xmm: [u128; 16],
        mut interp: Interp,
        go: impl FnOnce(&mut Session<'_>) -> R,
    ) -> After<R> {
        let mut m = Machine::new(bytes);
        m.xmm = xmm;
        let mut session = interp.session(&mut m, s);
        let r = go(&mut session);
        let after = *session.state();
        let after_xmm = session.xmm_to_write_back().copied();
        drop(session);
        (r, after, after_xmm, m.mem)
    }
    let fast = run(&bytes, s, xmm, Interp::default(), |s| s.step());
    let generic = run(&bytes, s, xmm, Interp::generic_only(), |s| s.step());
    if fast.0 != generic.0 || fast.1 != generic.1 || fast.2 != generic.2 {
        return Err(format!(
            "{code:02x?}: the fast path gives {:?} {:x?}, the generic one {:?} {:x?} (from {s:x?})",
            fast.0, fast.1, generic.0, generic.1
        ));
    }
    if fast.3 != generic.3 {
        return Err(format!(
            "{code:02x?}: the fast and generic paths leave memory different (from {s:x?})"
        ));
    }
    let batch = run(&bytes, s, xmm, Interp::default(), |s| s.run(u64::MAX));
    let (one, (n, r)) = (fast.0, batch.0);
    if !batch_agrees(one, n, r, 0) || batch.1 != fast.1 || batch.2 != fast.2 || batch.3 != fast.3 {
        return Err(format!(
            "{code:02x?}: a step gives {one:?} {:x?}, a batch {n} then {r:?} {:x?} (from {s:x?})",
            fast.1, batch.1
        ));
    }
    // After a NOP, so that a batch runs the instruction from its block's packed fast
    // forms (`Session::run_block`), not as the block's first: as two steps.
    let mut after_nop = vec![0x90];
    after_nop.extend_from_slice(&bytes);
    let two = |s: &mut Session<'_>| s.step().and_then(|_| s.step());
    let stepped = run(&after_nop, s, xmm, Interp::default(), two);
    let batch = run(&after_nop, s, xmm, Interp::default(), |s| s.run(u64::MAX));
    let (one, (n, r)) = (stepped.0, batch.0);
    if !batch_agrees(one, n, r, 1)
        || batch.1 != stepped.1
        || batch.2 != stepped.2
        || batch.3 != stepped.3
    {
        return Err(format!(
            "{code:02x?} after a NOP: steps give {one:?} {:x?}, a batch {n} then {r:?} {:x?} \
             (from {s:x?})",
            stepped.1, batch.1
        ));
    }
    Ok(())
}

/// Whether a batch ([`Session::run`]) that retired `n` instructions and ended with `r`
/// agrees with `one`, the step of the instruction after `before` others: a completed
/// non-branch instruction goes on to the HLT, which halts the batch.
fn batch_agrees(
    one: Result<Step, Halt>,
    n: u64,
    r: Result<Option<Step>, Halt>,
    before: u64,
) -> bool {
    match one {
        Ok(step) if step.effect == Effect::Next => {
            n == before + 1 && r == Err(Halt::Unsupported(Mnemonic::Hlt))
        }
        Ok(step) => n == before && r == Ok(Some(step)),
        Err(h) => n == before && r == Err(h),
    }
}

/// Runs the instruction at the start of `code` in the interpreter and, if the interpreter
/// completes it, on the host CPU, from the same registers, flags and XMM registers, and
/// compares every general-purpose and XMM register and every flag the interpreter
/// defines. Every instruction is also run with and without the interpreter's fast path,
/// which must agree. Only instructions that touch nothing but general-purpose and XMM registers
/// (no memory, no stack, no segment or control register, straight-line) are tried; an
/// instruction the interpreter completes is one a ring-3 program may run, so running it
/// on the host is safe. `Err` says how they disagree.
pub fn differential(
    code: &[u8],
    regs: [u64; 16],
    flags: u64,
    xmm: [u128; 16],
) -> Result<Verdict, String> {
    let insn = Decoder::with_ip(64, code, 0, DecoderOptions::NONE).decode();
    if !insn.is_invalid() {
        // Any instruction, memory and branches included (nothing runs on the host here):
        // registers as given, RSP and a base register or two pointing into the data.
        let mut s = state();
        let sp = s.gpr[RSP];
        s.gpr = regs;
        s.gpr[RSP] = sp;
        s.gpr[3] = DATA + (regs[3] & 0xfff);
        s.rflags = (flags & STATUS) | 2;
        fast_matches_generic(&code[..insn.len()], s, xmm)?;
    }
    // (RIP-relative operands, LEA's included, differ between the fake machine's code
    // address and the host page's.)
    if insn.is_invalid()
        || insn.flow_control() != FlowControl::Next
        || insn.is_ip_rel_memory_operand()
    {
        return Ok(Verdict::Skipped);
    }
    let code = &code[..insn.len()];
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&insn);
    if !info.used_memory().is_empty() {
        return Ok(Verdict::Skipped);
    }
    let plain = |r: Register| {
        (r.is_gpr() || r.is_xmm()) && !matches!(r.full_register(), Register::RSP | Register::RIP)
    };
    if !info.used_registers().iter().all(|u| plain(u.register())) {
        return Ok(Verdict::Skipped);
    }
    let flags = (flags & STATUS) | 2;
    // The interpreter: the instruction, then `cmp %eax,%eax; hlt` so that flags it leaves
    // undefined are provably dead.
    let mut bytes = code.to_vec();
    bytes.extend([0x39, 0xc0, 0xf4]);
    let mut m = Machine::new(&bytes);
    m.xmm = xmm;
    let mut s = state();
    let sp = s.gpr[RSP];
    s.gpr = regs;
    s.gpr[RSP] = sp;
    s.rflags = flags;
    let mut interp = Interp::default();
    let mut session = interp.session(&mut m, s);
    let Ok(step) = session.step() else {
        return Ok(Verdict::Refused);
    };
    let after = *session.state();
    let after_xmm = session.xmm_to_write_back().copied().unwrap_or(xmm);
    drop(session);
    if step.next != CODE + code.len() as u64 {
        return Err(format!(
            "{code:02x?}: the interpreter went on at {:#x}, not after the instruction",
            step.next
        ));
    }
    let page = CodePage::new();
    let (mut native_regs, mut native_flags, mut native_xmm) = (regs, flags, xmm);
    native_regs[RSP] = 0;
    page.run_xmm(code, &mut native_regs, &mut native_flags, &mut native_xmm);
    for i in (0..16).filter(|&i| i != RSP) {
        if after.gpr[i] != native_regs[i] {
            return Err(format!(
                "{code:02x?}: register {i} is {:#x} interpreted, {:#x} on the CPU \
                 (from {regs:x?}, flags {flags:#x})",
                after.gpr[i], native_regs[i]
            ));
        }
    }
    if after_xmm != native_xmm {
        return Err(format!(
            "{code:02x?}: XMM registers differ: {after_xmm:x?} interpreted, {native_xmm:x?} \
             on the CPU (from {xmm:x?})"
        ));
    }
    let defined = STATUS & !step.undefined;
    if after.rflags & defined != native_flags & defined {
        return Err(format!(
            "{code:02x?}: flags {:#x} interpreted, {:#x} on the CPU (defined {defined:#x}; \
             from {regs:x?}, flags {flags:#x})",
            after.rflags & defined,
            native_flags & defined
        ));
    }
    Ok(Verdict::Agreed)
}
