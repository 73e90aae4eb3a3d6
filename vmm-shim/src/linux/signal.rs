//! Signals as the shim keeps them: dispositions ([`Action`]), the queues of pending
//! instances with their siginfo ([`SigPending`]), and the x87/SSE image a signal frame
//! holds ([`FpuImage`]); the frame itself is built and read back in `sigframe.rs`.
//!
//! Signals are delivered when the thread returns from a system call (kill, tgkill,
//! tkill and raise to itself, and signals unblocked by rt_sigprocmask) and at a fault
//! (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP), never in the middle of a blocked call;
//! a signal that comes while the thread runs its code (a timer's, another process's)
//! kicks its vCPU out of the guest and is delivered at the instruction it stands at
//! (`Process::deliver_async`), or, where that is no instruction boundary of the program's
//! (an exception on its way in, ring-0 code other than a trap stub's IRETQ), at a kick
//! a moment later.
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
/// SIGKILL and SIGSTOP as mask bits: never blocked, caught or waited for (Linux drops them
/// from every signal mask it is given).
pub const UNBLOCKABLE: u64 = 1 << (libc::SIGKILL - 1) | 1 << (libc::SIGSTOP - 1);
pub const SA_SIGINFO: u64 = 4;

/// Bytes of the legacy FXSAVE region (`struct _fpstate_64`).
pub(crate) const FPSTATE: u64 = 512;
/// Bytes of an `rt_sigframe` below its FPU area: pretcode, `ucontext` (with an 8-byte
/// sigset), `siginfo`.
pub const SIGFRAME_BYTES: u64 = 8 + 304 + 128;
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

impl SigInfo {
    /// The `siginfo_t` (128 bytes) a handler's frame and `rt_sigtimedwait` give the
    /// program: si_signo, si_code, then the union (the fault address, the sender's pid
    /// and uid, or a timer's id and overrun; the word after it).
    pub fn to_bytes(&self) -> [u8; 128] {
        let mut si = [0u8; 128];
        si[0..4].copy_from_slice(&self.signo.to_le_bytes());
        si[8..12].copy_from_slice(&self.code.to_le_bytes());
        si[16..24].copy_from_slice(&self.word.to_le_bytes());
        si[24..32].copy_from_slice(&self.value.to_le_bytes());
        si
    }
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

/// The signals that came to a process from outside the VM so far (bit `n - 1` for
/// signal `n`): passed on to it by lbrprof, and those from lbrprof's terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FromOutside {
    pub sent: u64,
    pub terminal: u64,
}

/// What killed a process, for the user: signal `info` and who sent it, as process
/// `pid` sees it: "SIGINT from the terminal", "SIGTERM from outside the VM", "SIGUSR1 it
/// sent itself"... A signal it sent itself after the same one came from outside is
/// named by where it came from: runtimes that catch a signal to clean up and then die of
/// it (Go, Python's SIGINT) raise it again themselves.
pub fn killed_by(info: &SigInfo, pid: u64, earlier: FromOutside) -> String {
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
        SI_USER | SI_TKILL if sender == pid => {
            let bit = 1u64
                .checked_shl((info.signo as u32).wrapping_sub(1))
                .unwrap_or(0);
            if earlier.terminal & bit != 0 {
                "from the terminal (raised again by its handler)".to_owned()
            } else if earlier.sent & bit != 0 {
                "from outside the VM (raised again by its handler)".to_owned()
            } else {
                "it sent itself".to_owned()
            }
        }
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

/// The x87/SSE/AVX… state a signal frame saves, in the layout Linux writes on a CPU
/// with XSAVE: an XSAVE area in the standard (non-compacted) format, `area.len()` bytes
/// (the legacy FXSAVE region, the 64-byte XSAVE header, then each component at the offset
/// CPUID leaf 0xD gives it), holding the components `features` names (XCR0 bits). With
/// x87 and SSE only, a frame holds just the 512-byte legacy region (`struct
/// _fpstate_64`), as Linux's on a CPU without XSAVE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FpuImage {
    pub area: Vec<u8>,
    pub features: u64,
}

/// XCR0 bits of x87 and SSE state, the legacy region.
pub const XFEATURES_X87_SSE: u64 = 0b11;
/// Offset of MXCSR in the legacy region.
const FX_MXCSR: usize = 24;
/// The software-reserved bytes of the legacy region (`struct _fpx_sw_bytes`).
const SW_BYTES: usize = 464;
/// The XSAVE header: XSTATE_BV, XCOMP_BV, reserved.
pub const XSAVE_HEADER: usize = 512;
const XSAVE_HEADER_END: usize = 576;
/// `FP_XSTATE_MAGIC1` (in the software-reserved bytes) and `FP_XSTATE_MAGIC2` (after
/// the XSAVE area): the frame holds XSAVE state, not only the legacy region.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// The largest XSAVE area a frame may claim (what `kvm_xsave` holds).
pub const MAX_XSTATE: usize = 4096;

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

impl FpuImage {
    /// Whether the frame holds XSAVE state beyond the legacy region.
    fn extended(&self) -> bool {
        self.features & !XFEATURES_X87_SSE != 0 && self.area.len() >= XSAVE_HEADER_END
    }

    /// The bytes of the frame's FPU area: the legacy region with its software-reserved
    /// bytes zero (no magic), or the XSAVE area with `struct _fpx_sw_bytes` (magic1, sizes,
    /// features) and magic2 after it.
    pub fn frame_bytes(&self) -> Vec<u8> {
        let mut b = self.area.clone();
        b.resize(b.len().max(FPSTATE as usize), 0);
        b[SW_BYTES..FPSTATE as usize].fill(0);
        if !self.extended() {
            b.truncate(FPSTATE as usize);
            return b;
        }
        let size = b.len() as u32;
        b[SW_BYTES..SW_BYTES + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
        b[SW_BYTES + 4..SW_BYTES + 8].copy_from_slice(&(size + 4).to_le_bytes());
        b[SW_BYTES + 8..SW_BYTES + 16].copy_from_slice(&self.features.to_le_bytes());
        b[SW_BYTES + 16..SW_BYTES + 20].copy_from_slice(&size.to_le_bytes());
        let bv = u64_at(&b, XSAVE_HEADER) & self.features;
        b[XSAVE_HEADER..XSAVE_HEADER + 8].copy_from_slice(&bv.to_le_bytes());
        b[XSAVE_HEADER + 8..XSAVE_HEADER_END].fill(0);
        b.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
        b
    }

    /// Bytes of the frame's FPU area (at most [`MAX_XSTATE`] + 4).
    pub fn frame_len(&self) -> u64 {
        if self.extended() {
            self.area.len() as u64 + 4
        } else {
            FPSTATE
        }
    }

    /// How many bytes a frame whose legacy region is `legacy` holds in all, and the
    /// features it claims: the XSAVE size when its software-reserved bytes say so
    /// consistently (magic1, extended size = XSAVE size + 4, a size between the header's
    /// end and [`MAX_XSTATE`], x87 and SSE claimed), else the legacy region alone.
    /// (magic2 is checked by [`FpuImage::from_frame`].)
    pub fn frame_extent(legacy: &[u8]) -> (usize, u64) {
        let size = u32_at(legacy, SW_BYTES + 16) as usize;
        let features = u64_at(legacy, SW_BYTES + 8);
        let sane = u32_at(legacy, SW_BYTES) == FP_XSTATE_MAGIC1
            && u32_at(legacy, SW_BYTES + 4) as usize == size + 4
            && (XSAVE_HEADER_END..=MAX_XSTATE).contains(&size)
            && features & XFEATURES_X87_SSE == XFEATURES_X87_SSE;
        if sane {
            (size + 4, features)
        } else {
            (FPSTATE as usize, XFEATURES_X87_SSE)
        }
    }

    /// The state a handler's frame gives back, ready to load (`frame` is what
    /// [`FpuImage::frame_extent`] said to read): MXCSR's reserved bits cleared, the XSAVE
    /// header's reserved words zero and XSTATE_BV limited to the claimed features (what
    /// Linux would refuse with SIGSEGV is made loadable instead); without magic2, or
    /// from a legacy frame, the legacy region only (the other components start anew, as
    /// Linux restores such a frame).
    pub fn from_frame(frame: &[u8], features: u64) -> FpuImage {
        let size = frame.len().saturating_sub(4);
        let extended = features != XFEATURES_X87_SSE
            && size >= XSAVE_HEADER_END
            && u32_at(frame, size) == FP_XSTATE_MAGIC2;
        let (mut area, features) = if extended {
            (frame[..size].to_vec(), features)
        } else {
            let mut a = frame[..FPSTATE as usize].to_vec();
            a.resize(XSAVE_HEADER_END, 0);
            a[XSAVE_HEADER..XSAVE_HEADER + 8].copy_from_slice(&XFEATURES_X87_SSE.to_le_bytes());
            (a, XFEATURES_X87_SSE)
        };
        let mxcsr = u32_at(&area, FX_MXCSR) & MXCSR_MASK;
        area[FX_MXCSR..FX_MXCSR + 4].copy_from_slice(&mxcsr.to_le_bytes());
        let bv = u64_at(&area, XSAVE_HEADER) & features;
        area[XSAVE_HEADER..XSAVE_HEADER + 8].copy_from_slice(&bv.to_le_bytes());
        area[XSAVE_HEADER + 8..XSAVE_HEADER_END].fill(0);
        FpuImage { area, features }
    }

    /// The FPU state a program starts with, and a signal handler too (FCW 0x37f, MXCSR
    /// 0x1f80, registers empty, every XSAVE component in its initial state).
    pub fn initial() -> FpuImage {
        let mut area = vec![0u8; XSAVE_HEADER_END];
        area[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        area[FX_MXCSR..FX_MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        area[FX_MXCSR + 4..FX_MXCSR + 8].copy_from_slice(&MXCSR_MASK.to_le_bytes());
        area[XSAVE_HEADER..XSAVE_HEADER + 8].copy_from_slice(&XFEATURES_X87_SSE.to_le_bytes());
        FpuImage {
            area,
            features: XFEATURES_X87_SSE,
        }
    }

    /// The 512-byte legacy region (x87, MXCSR, XMM0-15).
    pub fn legacy(&self) -> &[u8] {
        &self.area[..FPSTATE as usize]
    }

    pub fn legacy_mut(&mut self) -> &mut [u8] {
        &mut self.area[..FPSTATE as usize]
    }
}

/// The FPU state a program starts with, and a signal handler too.
pub fn initial_image() -> FpuImage {
    FpuImage::initial()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XSAVE image with x87, SSE and AVX (YMM upper halves at 576, 256 bytes).
    fn avx_image() -> FpuImage {
        let mut img = FpuImage::initial();
        img.area.resize(576 + 256, 0);
        img.features = 0b111;
        img.area[512..520].copy_from_slice(&0b111u64.to_le_bytes());
        img.area[160..176].fill(0x11); // xmm0
        img.area[576..592].fill(0x22); // ymm0's upper half
        img
    }

    /// What sigreturn reads back from `frame`: the extent from its legacy region, then
    /// the image.
    fn read_back(frame: &[u8]) -> FpuImage {
        let (len, features) = FpuImage::frame_extent(&frame[..512]);
        FpuImage::from_frame(&frame[..len.min(frame.len())], features)
    }

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
            assert_eq!(killed_by(&i, own, FromOutside::default()), want);
        }
        // Caught, then raised again by the process itself.
        let again = info(libc::SIGTERM, SI_TKILL, own);
        let sent = FromOutside {
            sent: 1 << (libc::SIGTERM - 1),
            terminal: 0,
        };
        assert_eq!(
            killed_by(&again, own, sent),
            "SIGTERM from outside the VM (raised again by its handler)"
        );
        let typed = FromOutside {
            sent: 0,
            terminal: 1 << (libc::SIGINT - 1),
        };
        let int = info(libc::SIGINT, SI_USER, own);
        assert_eq!(
            killed_by(&int, own, typed),
            "SIGINT from the terminal (raised again by its handler)"
        );
        assert_eq!(killed_by(&again, own, typed), "SIGTERM it sent itself");
        assert!(dumps_core(libc::SIGSEGV) && dumps_core(libc::SIGQUIT));
        assert!(!dumps_core(libc::SIGINT) && !dumps_core(libc::SIGKILL));
    }

    #[test]
    fn images_from_handlers_lose_reserved_mxcsr_bits() {
        let mut image = initial_image();
        image.legacy_mut()[24..28].copy_from_slice(&0xffff_5f80u32.to_le_bytes());
        let r = read_back(&image.frame_bytes());
        assert_eq!(&r.legacy()[24..28], &0x5f80u32.to_le_bytes());
        assert_eq!(&r.legacy()[..24], &image.legacy()[..24]);
        assert_eq!(&initial_image().legacy()[..2], &0x37fu16.to_le_bytes());
    }

    #[test]
    fn an_x87_sse_image_makes_a_legacy_frame() {
        let mut image = initial_image();
        image.legacy_mut()[464] = 0x53; // software-reserved: not state
        let frame = image.frame_bytes();
        assert_eq!(frame.len(), 512);
        assert_eq!(image.frame_len(), 512);
        assert_eq!(u32_at(&frame, 464), 0, "no XSAVE magic");
        assert_eq!(read_back(&frame).features, XFEATURES_X87_SSE);
    }

    #[test]
    fn an_avx_image_makes_an_xsave_frame_that_round_trips() {
        let image = avx_image();
        let frame = image.frame_bytes();
        assert_eq!(frame.len() as u64, image.frame_len());
        assert_eq!(frame.len(), 576 + 256 + 4);
        assert_eq!(u32_at(&frame, 464), FP_XSTATE_MAGIC1);
        assert_eq!(u32_at(&frame, 468), 576 + 256 + 4, "extended size");
        assert_eq!(u64_at(&frame, 472), 0b111, "xfeatures");
        assert_eq!(u32_at(&frame, 480), 576 + 256, "xstate size");
        assert_eq!(u32_at(&frame, 576 + 256), FP_XSTATE_MAGIC2);
        let back = read_back(&frame);
        assert_eq!(back.features, 0b111);
        assert_eq!(&back.area[576..592], &[0x22; 16]);
        assert_eq!(&back.area[160..176], &[0x11; 16]);
        assert_eq!(u64_at(&back.area, 512), 0b111);
    }

    #[test]
    fn a_damaged_xsave_frame_restores_the_legacy_region_only() {
        let good = avx_image().frame_bytes();
        // magic2 overwritten: the legacy region only, the rest to its initial state.
        let mut f = good.clone();
        f[576 + 256] ^= 1;
        let back = read_back(&f);
        assert_eq!(back.features, XFEATURES_X87_SSE);
        assert_eq!(back.area.len(), 576);
        assert_eq!(&back.area[160..176], &[0x11; 16]);
        // Inconsistent sizes, or a size past what a frame may claim: not an XSAVE frame.
        for (at, v) in [(468, 100u32), (480, 8192), (480, 100)] {
            let mut f = good.clone();
            f[at..at + 4].copy_from_slice(&v.to_le_bytes());
            assert_eq!(FpuImage::frame_extent(&f[..512]).0, 512, "{at} = {v}");
        }
        // Reserved header words and XSTATE_BV bits past the claimed features are cleared.
        let mut f = good;
        f[512..520].copy_from_slice(&u64::MAX.to_le_bytes());
        f[530] = 9;
        let back = read_back(&f);
        assert_eq!(u64_at(&back.area, 512), 0b111);
        assert!(back.area[520..576].iter().all(|&b| b == 0));
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
