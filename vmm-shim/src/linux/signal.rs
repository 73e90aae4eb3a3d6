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
//! Above the frame (64-byte aligned, as Linux's math frame) is the x87/SSE state in
//! the legacy FXSAVE layout (`struct _fpstate_64`, what Linux writes on a CPU without
//! XSAVE): `uc_mcontext.fpregs` points at it, the handler starts with the initial FPU
//! state (`fpu__clear_user_states`), and `rt_sigreturn` restores the state from there,
//! so what a handler changes in it takes effect. Not in it: AVX upper halves and the
//! other XSAVE components (no FP_XSTATE_MAGIC1 in its software-reserved bytes).
//! Signals are delivered when the thread returns from a system call (kill, tgkill,
//! tkill and raise to itself, and signals unblocked by rt_sigprocmask) and at a fault
//! (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP), never in the middle of a blocked call.
//!
//! Pending signals are queues ([`SigPending`]: the process's, each thread's), and every
//! instance carries its siginfo from the moment it is sent: the sender says who sent
//! it (SI_USER, SI_TKILL, SI_KERNEL, SI_TIMER with the timer's id and value), and the
//! info moves with the instance from the process's queue to the thread that takes it.

use kvm_bindings::kvm_regs;

use crate::linux::Process;
use crate::linux::errno::Errno;
use crate::linux::thread::Task;
use crate::memory::GuestVirtAddr;

/// `struct sigaction` flags (include/uapi/asm-generic/signal-defs.h, asm/signal.h).
pub const SA_ONSTACK: u64 = 0x0800_0000;
pub const SA_RESTORER: u64 = 0x0400_0000;
pub const SA_RESTART: u64 = 0x1000_0000;
pub const SA_NODEFER: u64 = 0x4000_0000;
pub const SA_RESETHAND: u64 = 0x8000_0000;
pub const SA_SIGINFO: u64 = 4;

/// Bytes of the frame (pretcode + ucontext + siginfo).
const FRAME: u64 = 8 + UCONTEXT + 128;
/// Bytes of the FXSAVE image above it (`struct _fpstate_64`).
const FPSTATE: u64 = 512;
/// MXCSR bits a program may set (`mxcsr_feature_mask` on CPUs with DAZ).
const MXCSR_MASK: u32 = 0xffff;
/// `struct ucontext` as the kernel writes it (sigset of 8 bytes).
const UCONTEXT: u64 = 304;
/// Offset of the sigcontext in the ucontext.
const MCONTEXT: usize = 40;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_DF: u64 = 1 << 10;
/// `si_code` values (include/uapi/asm-generic/siginfo.h).
pub const SI_USER: i32 = 0;
pub const SI_TKILL: i32 = -6;
pub const SI_KERNEL: i32 = 0x80;
/// Sent by a POSIX timer's expiry (`timer_create`).
pub const SI_TIMER: i32 = -2;

/// What the handler is told about the signal.
#[derive(Clone, Copy, Debug, Default)]
pub struct SigInfo {
    pub signo: i32,
    pub code: i32,
    /// `si_addr` for faults; for kill: (pid, uid) packed as two 32-bit words; for a
    /// POSIX timer: (timer id, overrun).
    pub word: u64,
    /// The word after it: a POSIX timer's `si_value` (its `sigev_value`).
    pub value: u64,
    /// The exception's vector and error code, CR2 (sigcontext trapno, err, cr2).
    pub trapno: u64,
    pub err: u64,
    pub cr2: u64,
}

/// The first realtime signal (SIGRTMIN as the kernel counts): from here on every
/// send is queued, below it a pending signal is pending once.
pub const SIGRTMIN: u64 = 32;

/// Signals pending on a thread or a process, each instance with what its sender said
/// (Linux's `struct sigpending`: a set and a queue of siginfo). A standard signal is
/// pending once: a second send while it is pending is dropped and the first sender's
/// info is kept. A realtime signal queues one instance per send, delivered in order.
/// (A POSIX timer queues at most one instance of its own and counts its expiries
/// meanwhile as overruns: [`crate::linux::itimer::RealTimer`].)
#[derive(Clone, Debug, Default)]
pub struct SigPending {
    /// Bit `n - 1` for each signal `n` with an instance queued.
    set: u64,
    queue: Vec<SigInfo>,
}

impl SigPending {
    /// The pending signals (bit `n - 1` for signal `n`).
    pub fn set(&self) -> u64 {
        self.set
    }

    /// Queue `info` (as the kernel's `__send_signal` does); false when it was dropped
    /// (a standard signal already pending, or no signal at all).
    pub fn push(&mut self, info: SigInfo) -> bool {
        let sig = info.signo as u64;
        if !(1..=64).contains(&sig) {
            return false;
        }
        let bit = 1u64 << (sig - 1);
        if sig < SIGRTMIN && self.set & bit != 0 {
            return false;
        }
        self.queue.push(info);
        self.set |= bit;
        true
    }

    /// Take the first instance of `sig`; its bit stays while others are queued.
    pub fn take(&mut self, sig: u64) -> Option<SigInfo> {
        let i = self.queue.iter().position(|q| q.signo as u64 == sig)?;
        let info = self.queue.remove(i);
        if !self.queue.iter().any(|q| q.signo as u64 == sig) {
            self.set &= !(1u64 << (sig - 1));
        }
        Some(info)
    }

    /// The lowest pending signal not in `mask` (without taking it).
    pub fn next(&self, mask: u64) -> Option<u64> {
        let deliverable = self.set & !mask;
        (deliverable != 0).then(|| u64::from(deliverable.trailing_zeros()) + 1)
    }

    /// Take every instance of the signals not in `mask` (to move them to a thread).
    pub fn take_unblocked(&mut self, mask: u64) -> SigPending {
        let want = self.set & !mask;
        let mut out = SigPending::default();
        if want == 0 {
            return out;
        }
        let (taken, kept) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|q| want & (1u64 << (q.signo as u64 - 1)) != 0);
        self.queue = kept;
        self.set &= !want;
        out.queue = taken;
        out.set = want;
        out
    }

    /// Drop the queued instance of POSIX timer `id`'s signal, if any (the timer was
    /// deleted or armed anew: Linux drops it too, since 6.13).
    pub fn drop_timer(&mut self, id: u32) {
        let is_it = |q: &SigInfo| q.code == SI_TIMER && q.word as u32 == id;
        if let Some(i) = self.queue.iter().position(is_it) {
            let sig = self.queue.remove(i).signo as u64;
            if !self.queue.iter().any(|q| q.signo as u64 == sig) {
                self.set &= !(1u64 << (sig - 1));
            }
        }
    }

    /// Queue every instance of `other` here (standard signals already pending here
    /// coalesce as [`Self::push`] says); the instances dropped.
    pub fn append(&mut self, other: SigPending) -> Vec<SigInfo> {
        other
            .queue
            .into_iter()
            .filter(|&info| !self.push(info))
            .collect()
    }
}

/// One signal's disposition, from the raw `struct sigaction` (handler, flags,
/// restorer, mask).
#[derive(Clone, Copy, Debug, Default)]
pub struct Action {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

impl Action {
    pub fn from_raw(b: &[u8; 32]) -> Action {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        Action {
            handler: w(0),
            flags: w(8),
            restorer: w(16),
            mask: w(24),
        }
    }
}

/// What Linux does with a signal nobody handles: terminate (true), or nothing.
pub fn default_terminates(sig: u64) -> bool {
    !matches!(
        sig as i32,
        libc::SIGCHLD
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGCONT
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    )
}

/// An FXSAVE image (`struct _fpstate_64`: cwd, swd, ftw, fop, rip, rdp, mxcsr,
/// mxcsr_mask, st0-7, xmm0-15, then reserved and software-reserved bytes).
pub type FxImage = [u8; FPSTATE as usize];

/// Offset of MXCSR in an FXSAVE image.
const FX_MXCSR: usize = 24;

/// The image as a frame holds it: the software-reserved bytes zero (no
/// FP_XSTATE_MAGIC1: a legacy frame, no XSAVE extension).
pub fn frame_image(mut image: FxImage) -> FxImage {
    image[464..].fill(0);
    image
}

/// The image a handler's frame gives back, ready to load: MXCSR's reserved bits
/// cleared, as Linux does before it restores one.
pub fn restorable(mut image: FxImage) -> FxImage {
    let mxcsr = u32::from_le_bytes(image[FX_MXCSR..FX_MXCSR + 4].try_into().unwrap_or_default());
    image[FX_MXCSR..FX_MXCSR + 4].copy_from_slice(&(mxcsr & MXCSR_MASK).to_le_bytes());
    image
}

/// The FPU state a program starts with, and a signal handler too (FCW 0x37f, MXCSR
/// 0x1f80, registers empty).
pub fn initial_image() -> FxImage {
    let mut image = [0u8; FPSTATE as usize];
    image[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
    image[FX_MXCSR..FX_MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
    image[FX_MXCSR + 4..FX_MXCSR + 8].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    image
}

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
        fpu: &FxImage,
    ) -> Result<(), Errno> {
        let (alt_sp, alt_size) = task.altstack;
        let on_alt = alt_size != 0 && regs.rsp > alt_sp && regs.rsp <= alt_sp + alt_size;
        let top = if act.flags & SA_ONSTACK != 0 && alt_size != 0 && !on_alt {
            alt_sp + alt_size
        } else {
            // Below the red zone.
            regs.rsp.wrapping_sub(128)
        };
        let fpstate = top.wrapping_sub(FPSTATE) & !63;
        let sp = ((fpstate.wrapping_sub(FRAME)) & !15).wrapping_sub(8);
        let mut f = vec![0u8; FRAME as usize];
        f[..8].copy_from_slice(&act.restorer.to_le_bytes());
        let uc = &mut f[8..8 + UCONTEXT as usize];
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
        let si = &mut f[8 + UCONTEXT as usize..];
        si[0..4].copy_from_slice(&info.signo.to_le_bytes());
        si[8..12].copy_from_slice(&info.code.to_le_bytes());
        si[16..24].copy_from_slice(&info.word.to_le_bytes());
        si[24..32].copy_from_slice(&info.value.to_le_bytes());
        self.mm.write(GuestVirtAddr(fpstate), &frame_image(*fpu))?;
        self.mm.write(GuestVirtAddr(sp), &f)?;
        let sig = info.signo as u64;
        task.sigmask |= act.mask;
        if act.flags & SA_NODEFER == 0 {
            task.sigmask |= 1 << (sig - 1);
        }
        task.sigmask &= !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
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
    ) -> Result<FxImage, Errno> {
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
        task.sigmask = u64::from_le_bytes(b[296..304].try_into().unwrap_or_default())
            & !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
        let fpstate = w(23);
        if fpstate == 0 {
            return Ok(initial_image());
        }
        let mut image = [0u8; FPSTATE as usize];
        self.mm.read(GuestVirtAddr(fpstate), &mut image)?;
        Ok(restorable(image))
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
        fpu[160 + 3 * 16..176 + 3 * 16].fill(7);
        fpu[32..40].copy_from_slice(&1.5f64.to_bits().to_le_bytes());
        fpu[24..28].copy_from_slice(&0x3f80u32.to_le_bytes());
        fpu[464] = 0x53; // software-reserved: not what the frame holds
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
        assert_eq!(&back[160 + 3 * 16..176 + 3 * 16], &[9; 16]);
        assert_eq!(
            &back[..160],
            &fpu[..160],
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

    #[test]
    fn images_from_handlers_lose_reserved_mxcsr_bits() {
        let mut image = initial_image();
        image[24..28].copy_from_slice(&0xffff_5f80u32.to_le_bytes());
        let r = restorable(image);
        assert_eq!(&r[24..28], &0x5f80u32.to_le_bytes());
        assert_eq!(&r[..24], &image[..24]);
        assert_eq!(&initial_image()[..2], &0x37fu16.to_le_bytes());
    }

    fn info(signo: i32, word: u64) -> SigInfo {
        SigInfo {
            signo,
            code: SI_TIMER,
            word,
            ..Default::default()
        }
    }

    #[test]
    fn a_standard_signal_is_pending_once_with_its_first_info() {
        let mut q = SigPending::default();
        assert!(q.push(info(10, 1)));
        assert!(!q.push(info(10, 2)));
        assert!(q.push(info(12, 3)));
        assert_eq!(q.set(), (1 << 9) | (1 << 11));
        assert_eq!(q.next(1 << 9), Some(12));
        assert_eq!(q.take(10).map(|i| i.word), Some(1));
        assert_eq!(q.take(10).map(|i| i.word), None);
        assert_eq!(q.set(), 1 << 11);
        // Pending again once taken.
        assert!(q.push(info(10, 4)));
    }

    #[test]
    fn realtime_signals_queue_every_send_in_order() {
        let mut q = SigPending::default();
        for w in [1, 2, 3] {
            assert!(q.push(info(34, w)));
        }
        assert!(q.push(info(33, 9)));
        assert_eq!(q.next(0), Some(33));
        assert_eq!(q.take(34).map(|i| i.word), Some(1));
        assert_eq!(q.set() & (1 << 33), 1 << 33, "two still queued");
        // Moving them to a thread keeps every instance and its info.
        let mut t = SigPending::default();
        assert!(t.append(q.take_unblocked(1 << 32)).is_empty());
        assert_eq!(q.set(), 1 << 32, "the blocked one stays");
        assert_eq!(t.take(34).map(|i| i.word), Some(2));
        assert_eq!(t.take(34).map(|i| i.word), Some(3));
        assert_eq!(t.set(), 0);
        // A standard signal moved onto one already pending is dropped (and said so).
        assert!(t.push(info(10, 1)));
        let mut s = SigPending::default();
        s.push(info(10, 2));
        let dropped = t.append(s.take_unblocked(0));
        assert_eq!(dropped.iter().map(|i| i.word).collect::<Vec<_>>(), [2]);
    }
}
