//! Signals as the shim keeps them: dispositions ([`Action`]), the queues of pending
//! instances with their siginfo ([`SigPending`]), and the x87/SSE image a signal frame
//! holds ([`FxImage`]); the frame itself is built and read back in `sigframe.rs`.
//!
//! Signals are delivered when the thread returns from a system call (kill, tgkill,
//! tkill and raise to itself, and signals unblocked by rt_sigprocmask) and at a fault
//! (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP), never in the middle of a blocked call.
//!
//! Pending signals are queues ([`SigPending`]: the process's, each thread's), and every
//! instance carries its siginfo from the moment it is sent: the sender says who sent
//! it (SI_USER, SI_TKILL, SI_KERNEL, SI_TIMER with the timer's id and value), and the
//! info moves with the instance from the process's queue to the thread that takes it.

/// `struct sigaction` flags (include/uapi/asm-generic/signal-defs.h, asm/signal.h).
pub const SA_ONSTACK: u64 = 0x0800_0000;
pub const SA_RESTORER: u64 = 0x0400_0000;
pub const SA_RESTART: u64 = 0x1000_0000;
pub const SA_NODEFER: u64 = 0x4000_0000;
pub const SA_RESETHAND: u64 = 0x8000_0000;
pub const SA_SIGINFO: u64 = 4;

/// Bytes of the FXSAVE image above it (`struct _fpstate_64`).
pub(crate) const FPSTATE: u64 = 512;
/// MXCSR bits a program may set (`mxcsr_feature_mask` on CPUs with DAZ).
const MXCSR_MASK: u32 = 0xffff;
/// `si_code` values (include/uapi/asm-generic/siginfo.h).
pub const SI_USER: i32 = 0;
pub const SI_TKILL: i32 = -6;
pub const SI_KERNEL: i32 = 0x80;
/// Sent by a POSIX timer's expiry (`timer_create`).
pub const SI_TIMER: i32 = -2;
/// `si_code` values of SIGCHLD (uapi/asm-generic/siginfo.h).
pub const CLD_EXITED: i32 = 1;
pub const CLD_KILLED: i32 = 2;

/// SIGCHLD's `si_code` and `si_status` for a child that ended with wait status
/// `status`: CLD_EXITED and the exit code, or CLD_KILLED and the signal.
pub fn child_code(status: i32) -> (i32, i32) {
    if status & 0x7f == 0 {
        (CLD_EXITED, (status >> 8) & 0xff)
    } else {
        (CLD_KILLED, status & 0x7f)
    }
}

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

/// Whether Linux dumps core for a process signal `sig` kills (its default action is
/// "core", signal(7)): a fault, abort(), SIGQUIT. For those the registers where the
/// program stood say something; for the others (SIGINT, SIGTERM, SIGKILL...) the
/// program was merely somewhere.
pub fn dumps_core(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGQUIT
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGXCPU
            | libc::SIGXFSZ
            | libc::SIGSYS
    )
}

/// The name of signal `sig` as `<signal.h>` spells it (the standard signals), if it has one.
pub fn name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTKFLT => "SIGSTKFLT",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGURG => "SIGURG",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGWINCH => "SIGWINCH",
        libc::SIGIO => "SIGIO",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// What killed a process, for the user: signal `info` and who sent it, as process
/// `pid` sees it: "SIGINT from the terminal", "SIGTERM from outside the VM", "SIGUSR1 it
/// sent itself"...
pub fn killed_by(info: &SigInfo, pid: u64) -> String {
    let sig = match name(info.signo) {
        Some(n) => n.to_owned(),
        None => format!("signal {}", info.signo),
    };
    let sender = info.word & 0xffff_ffff;
    let origin = match info.code {
        SI_KERNEL if info.signo == libc::SIGALRM => "from its interval timer".to_owned(),
        // Signals lbrprof receives from its terminal (Kernel::signal_from_outside).
        SI_KERNEL => "from the terminal".to_owned(),
        SI_TIMER => "from its POSIX timer".to_owned(),
        SI_USER | SI_TKILL if sender == pid => "it sent itself".to_owned(),
        // A sender outside the VM (si_pid 0): a signal to lbrprof, passed on.
        SI_USER if sender == 0 => "from outside the VM".to_owned(),
        SI_USER | SI_TKILL => format!("sent by process {sender}"),
        _ => String::new(),
    };
    if origin.is_empty() {
        sig
    } else {
        format!("{sig} {origin}")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_process_is_told_what_killed_it_and_who_sent_it() {
        let info = |signo, code, word| SigInfo {
            signo,
            code,
            word,
            ..SigInfo::default()
        };
        let own = 7;
        let cases = [
            (info(libc::SIGINT, SI_KERNEL, 0), "SIGINT from the terminal"),
            (
                info(libc::SIGALRM, SI_KERNEL, 0),
                "SIGALRM from its interval timer",
            ),
            (
                info(libc::SIGTERM, SI_USER, 1000 << 32),
                "SIGTERM from outside the VM",
            ),
            (info(libc::SIGUSR1, SI_TKILL, own), "SIGUSR1 it sent itself"),
            (info(libc::SIGHUP, SI_USER, 9), "SIGHUP sent by process 9"),
            (info(40, SI_TIMER, 3), "signal 40 from its POSIX timer"),
        ];
        for (i, want) in cases {
            assert_eq!(killed_by(&i, own), want);
        }
        assert!(dumps_core(libc::SIGSEGV) && dumps_core(libc::SIGQUIT));
        assert!(!dumps_core(libc::SIGINT) && !dumps_core(libc::SIGKILL));
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
