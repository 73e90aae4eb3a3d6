//! Signal delivery to the program's handlers, as Linux x86-64 does it: an `rt_sigframe`
//! on the thread's stack (or its `sigaltstack` with SA_ONSTACK) holding the return
//! address (`sa_restorer`), a `ucontext` with the interrupted registers and signal mask,
//! and a `siginfo`; the handler runs with RDI = signal, RSI = &siginfo, RDX = &ucontext;
//! `rt_sigreturn` reads the registers and mask back from the frame.
//!
//! ```text
//!  sp+0    pretcode (sa_restorer)           sp ≡ 8 (mod 16), as after a call
//!  sp+8    ucontext: uc_flags, uc_link, uc_stack (24), sigcontext (256), uc_sigmask
//!  sp+312  siginfo (128)
//! ```
//!
//! Above the frame (64-byte aligned, as Linux's math frame) is the FPU state as Linux
//! writes it ([`FpuImage`]): the XSAVE area of the components XCR0 enables (x87, SSE,
//! AVX, … — FP_XSTATE_MAGIC1 and the sizes in the software-reserved bytes, magic2 after
//! it, UC_FP_XSTATE in `uc_flags`), or on a vCPU with x87 and SSE only the legacy FXSAVE
//! region (`struct _fpstate_64`). `uc_mcontext.fpregs` points at it, the handler starts
//! with the initial FPU state (`fpu__clear_user_states`: every component initial), and
//! `rt_sigreturn` restores the state from there, so what a handler changes in it takes
//! effect; a frame whose XSAVE description does not hold together restores its legacy
//! region only.

use kvm_bindings::kvm_regs;

use crate::arch::RFLAGS_TF;
use crate::linux::Process;
use crate::linux::errno::Errno;
use crate::linux::signal::{
    Action, FPSTATE, FpuImage, SA_NODEFER, SA_ONSTACK, SA_RESETHAND, SIGFRAME_BYTES, SigInfo,
    UNBLOCKABLE, initial_image,
};
use crate::linux::thread::Task;
use crate::memory::GuestVirtAddr;

/// Bytes of the frame (pretcode + ucontext + siginfo).
const FRAME: u64 = SIGFRAME_BYTES;
/// `struct ucontext` as the kernel writes it (sigset of 8 bytes).
const UCONTEXT: u64 = 304;
const _: () = assert!(FRAME == 8 + UCONTEXT + 128);
/// Offset of the sigcontext in the ucontext.
const MCONTEXT: usize = 40;
const RFLAGS_DF: u64 = 1 << 10;
/// `uc_flags`: the frame holds XSAVE state; SS is saved in the sigcontext and restored
/// strictly (what 64-bit Linux always sets).
const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;

/// The sigcontext's general registers, in the kernel's order.
fn sigcontext(r: &kvm_regs, info: &SigInfo, oldmask: u64, fpstate: u64) -> [u64; 32] {
    let mut c = [0u64; 32];
    let regs = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.rflags,
    ];
    c[..18].copy_from_slice(&regs);
    // cs, gs, fs, ss (16 bits each) in one word: user CS and SS as Linux has them.
    c[18] = 0x33 | (0x2b << 48);
    c[19] = info.err;
    c[20] = info.trapno;
    c[21] = oldmask;
    c[22] = info.cr2;
    c[23] = fpstate;
    c
}

impl Process {
    /// Build the frame for `sig` (whose action is `act`) on `task`'s stack, the thread
    /// interrupted in state `regs`; leave in `regs` the handler's entry state.
    pub(crate) fn setup_frame(
        &mut self,
        task: &mut Task,
        regs: &mut kvm_regs,
        act: Action,
        info: SigInfo,
        fpu: &FpuImage,
    ) -> Result<(), Errno> {
        let (alt_sp, alt_size) = task.altstack;
        let on_alt = alt_size != 0 && regs.rsp > alt_sp && regs.rsp <= alt_sp + alt_size;
        let top = if act.flags & SA_ONSTACK != 0 && alt_size != 0 && !on_alt {
            alt_sp + alt_size
        } else {
            // Below the red zone.
            regs.rsp.wrapping_sub(128)
        };
        let fpu_bytes = fpu.frame_bytes();
        let fpstate = top.wrapping_sub(fpu_bytes.len() as u64) & !63;
        let sp = ((fpstate.wrapping_sub(FRAME)) & !15).wrapping_sub(8);
        let mut f = vec![0u8; FRAME as usize];
        f[..8].copy_from_slice(&act.restorer.to_le_bytes());
        let uc = &mut f[8..8 + UCONTEXT as usize];
        let xstate = if fpu_bytes.len() as u64 > FPSTATE {
            UC_FP_XSTATE
        } else {
            0
        };
        uc[..8].copy_from_slice(&(xstate | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS).to_le_bytes());
        // uc_stack: the alternate stack as it is.
        uc[16..24].copy_from_slice(&alt_sp.to_le_bytes());
        let ss_flags: u32 = if alt_size == 0 {
            libc::SS_DISABLE as u32
        } else if on_alt {
            libc::SS_ONSTACK as u32
        } else {
            0
        };
        uc[24..28].copy_from_slice(&ss_flags.to_le_bytes());
        uc[32..40].copy_from_slice(&alt_size.to_le_bytes());
        // The mask the handler's return restores: the one from before a call's
        // temporary mask (rt_sigsuspend, ppoll…), or the current one.
        let restore = task.saved_sigmask.take().unwrap_or(task.sigmask);
        for (i, w) in sigcontext(regs, &info, restore, fpstate).iter().enumerate() {
            uc[MCONTEXT + 8 * i..MCONTEXT + 8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        uc[296..304].copy_from_slice(&restore.to_le_bytes());
        f[8 + UCONTEXT as usize..].copy_from_slice(&info.to_bytes());
        self.mm.write(GuestVirtAddr(fpstate), &fpu_bytes)?;
        self.mm.write(GuestVirtAddr(sp), &f)?;
        let sig = info.signo as u64;
        task.sigmask |= act.mask;
        if act.flags & SA_NODEFER == 0 {
            task.sigmask |= 1 << (sig - 1);
        }
        task.sigmask &= !UNBLOCKABLE;
        if act.flags & SA_RESETHAND != 0 {
            self.sigactions.remove(&sig);
        }
        regs.rsp = sp;
        regs.rip = act.handler;
        regs.rdi = sig;
        regs.rsi = sp + 8 + UCONTEXT;
        regs.rdx = sp + 8;
        regs.rax = 0;
        regs.rflags &= !(RFLAGS_TF | RFLAGS_DF);
        Ok(())
    }

    /// `rt_sigreturn`: the registers and mask from the frame the handler returned
    /// through (RSP is past its pretcode), and the FPU state its `fpregs` points at
    /// (none: the initial state, as Linux).
    pub(crate) fn sigreturn(
        &mut self,
        task: &mut Task,
        regs: &mut kvm_regs,
    ) -> Result<FpuImage, Errno> {
        let uc = regs.rsp;
        let mut b = vec![0u8; UCONTEXT as usize];
        self.mm.read(GuestVirtAddr(uc), &mut b)?;
        let w = |i: usize| {
            let at = MCONTEXT + 8 * i;
            u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
        };
        let keep = regs.rflags;
        *regs = kvm_regs {
            r8: w(0),
            r9: w(1),
            r10: w(2),
            r11: w(3),
            r12: w(4),
            r13: w(5),
            r14: w(6),
            r15: w(7),
            rdi: w(8),
            rsi: w(9),
            rbp: w(10),
            rbx: w(11),
            rdx: w(12),
            rax: w(13),
            rcx: w(14),
            rsp: w(15),
            rip: w(16),
            // The arithmetic and direction flags are the program's; IF and the rest
            // stay as the shim runs them.
            rflags: (keep & !0xdd5) | (w(17) & 0xdd5),
        };
        task.sigmask =
            u64::from_le_bytes(b[296..304].try_into().unwrap_or_default()) & !UNBLOCKABLE;
        let fpstate = w(23);
        if fpstate == 0 {
            return Ok(initial_image());
        }
        let mut frame = vec![0u8; FPSTATE as usize];
        self.mm.read(GuestVirtAddr(fpstate), &mut frame)?;
        let (len, features) = FpuImage::frame_extent(&frame);
        if len > frame.len() {
            frame.resize(len, 0);
            self.mm.read(GuestVirtAddr(fpstate), &mut frame)?;
        }
        Ok(FpuImage::from_frame(&frame, features))
    }

    /// The first instance of the lowest pending signal of `task` that is not blocked,
    /// taken off its queue.
    pub(crate) fn next_signal(&mut self, task: &mut Task) -> Option<SigInfo> {
        let sig = task.pending.next(task.sigmask)?;
        task.pending.take(sig)
    }

    pub(crate) fn action(&self, sig: u64) -> Action {
        self.sigactions
            .get(&sig)
            .map(Action::from_raw)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::abi::PAGE;
    use crate::linux::mm::Prot;
    use crate::linux::signal::{SA_RESTORER, SA_SIGINFO};
    use crate::memory::GuestMemory;
    use std::sync::Arc;

    #[test]
    fn a_frame_round_trips_through_sigreturn() {
        let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
        let mut p = Process::bare(mem).unwrap();
        p.memory_mut()
            .map(0x40_0000, 4 * PAGE, Prot::RW, None, "")
            .unwrap();
        let mut t = p.main_task();
        t.sigmask = 0b100;
        let before = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rbp: 7,
            rsp: 0x40_3000,
            r8: 8,
            r15: 15,
            rip: 0x1234,
            rflags: 0x202 | 0x1,
            ..Default::default()
        };
        let mut r = before;
        let act = Action {
            handler: 0x5000,
            flags: SA_SIGINFO | SA_RESTORER,
            restorer: 0x6000,
            mask: 1 << 9,
        };
        let info = SigInfo {
            signo: libc::SIGSEGV,
            code: 1,
            word: 0xdead,
            ..Default::default()
        };
        let mut fpu = initial_image();
        let legacy = fpu.legacy_mut();
        legacy[160 + 3 * 16..176 + 3 * 16].fill(7);
        legacy[32..40].copy_from_slice(&1.5f64.to_bits().to_le_bytes());
        legacy[24..28].copy_from_slice(&0x3f80u32.to_le_bytes());
        legacy[464] = 0x53; // software-reserved: not what the frame holds
        p.setup_frame(&mut t, &mut r, act, info, &fpu).unwrap();
        assert_eq!((r.rip, r.rdi), (0x5000, libc::SIGSEGV as u64));
        assert_eq!(r.rsp % 16, 8, "as after a call");
        assert!(
            r.rsp + FRAME + FPSTATE <= 0x40_3000 - 128,
            "below the red zone"
        );
        // uc_mcontext.fpregs (sigcontext word 23) points at the FXSAVE image, above the
        // frame and 64-byte aligned.
        let fpregs = p.memory_mut().read_u64(r.rdx + 40 + 8 * 23).unwrap();
        assert_eq!(fpregs % 64, 0);
        assert!(fpregs >= r.rsp + FRAME);
        let xmm3 = p.memory_mut().read_u64(fpregs + 160 + 3 * 16).unwrap();
        assert_eq!(xmm3, 0x0707_0707_0707_0707);
        assert_eq!(p.memory_mut().read_u32(fpregs + 24).unwrap(), 0x3f80);
        // The handler changes xmm3 there: the change is what sigreturn restores.
        p.memory_mut()
            .write(GuestVirtAddr(fpregs + 160 + 3 * 16), &[9; 16])
            .unwrap();
        assert_eq!(p.memory_mut().read_u64(r.rsp).unwrap(), 0x6000);
        assert_eq!(p.memory_mut().read_u64(r.rsi + 16).unwrap(), 0xdead);
        assert_eq!(t.sigmask, 0b100 | (1 << 9) | (1 << (libc::SIGSEGV - 1)));
        // The handler's `ret` pops the pretcode; the restorer's syscall comes with RSP
        // at the ucontext.
        r.rsp += 8;
        assert_eq!(
            p.memory_mut().read_u32(fpregs + 464).unwrap(),
            0,
            "no XSAVE magic"
        );
        let back = p.sigreturn(&mut t, &mut r).unwrap();
        assert_eq!(r, before);
        assert_eq!(&back.legacy()[160 + 3 * 16..176 + 3 * 16], &[9; 16]);
        assert_eq!(
            &back.legacy()[..160],
            &fpu.legacy()[..160],
            "x87 state and MXCSR as they were"
        );
        assert_eq!(t.sigmask, 0b100);
    }

    #[test]
    fn pending_signals_come_lowest_first_and_respect_the_mask() {
        let mem = Arc::new(GuestMemory::new(8 << 20).unwrap());
        let mut p = Process::bare(mem).unwrap();
        let mut t = p.main_task();
        for sig in [10, 2] {
            t.pending.push(SigInfo {
                signo: sig,
                ..Default::default()
            });
        }
        t.sigmask = 1 << 1;
        let signo = |i: Option<SigInfo>| i.map(|i| i.signo);
        assert_eq!(signo(p.next_signal(&mut t)), Some(10));
        assert_eq!(signo(p.next_signal(&mut t)), None);
        t.sigmask = 0;
        assert_eq!(signo(p.next_signal(&mut t)), Some(2));
    }
}
