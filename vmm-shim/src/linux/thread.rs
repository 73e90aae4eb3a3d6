//! Threads of a Linux program. Each thread is a vCPU on its own host thread (started by
//! the VM when the program calls `clone(CLONE_VM | CLONE_THREAD …)`, see
//! [`crate::vm`]), with its own [`Task`]: thread id, FS base (TLS), signal mask,
//! `clear_child_tid`, and the CR3 it runs on.
//!
//! Futexes wait on the host: a waiter checks the futex word and queues itself in
//! [`Futexes`] under the process lock (the lock every system call holds), so a
//! `FUTEX_WAKE`, also under that lock, cannot slip between the check and the queueing;
//! then it blocks on its own [`Waiter`] with the lock released. Keys are guest-virtual
//! addresses of the process's one address space, so private and shared futexes are the
//! same thing here (memory is never shared between processes: a fork copies it).
//!
//! TLB: the shim changes page tables from outside the guest, so after an unmap or a
//! lowered protection every vCPU must reload CR3 (switch to the twin PML4, see
//! [`super::mm`]) before it runs the program again. The generation counter
//! [`Process::tlb_generation`](super::Process) is bumped, the other vCPU threads are
//! kicked out of `KVM_RUN`, and each reloads CR3 before its next entry.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};

use kvm_bindings::{kvm_fpu, kvm_regs};

use crate::linux::cpu::{SyscallMode, TrapArea};
use crate::linux::host;
use crate::linux::mm::Errno;
use crate::linux::proc::{Kernel, WaitFor};
use crate::linux::syscall::WaitOut;

/// One thread of the program (the state Linux keeps per task that the shim needs).
#[derive(Debug)]
pub struct Task {
    pub tid: u64,
    pub fs_base: u64,
    /// Blocked signals (bit `n - 1` for signal `n`).
    pub sigmask: u64,
    /// Signals sent to this thread and not yet delivered (blocked when sent).
    pub pending: crate::linux::signal::SigPending,
    /// `set_tid_address`/`CLONE_CHILD_CLEARTID`: zeroed and woken when the thread exits.
    pub clear_child_tid: u64,
    /// `set_robust_list` (head, length), recorded.
    pub robust_list: (u64, u64),
    /// `sigaltstack`: (ss_sp, ss_size), ss_size 0 when none.
    pub altstack: (u64, u64),
    /// KVM single-stepped this vCPU and no longer does (the emulated LBR's tracer sets
    /// KVM_GUESTDBG_SINGLESTEP, which runs the guest with RFLAGS.TF): a TF the CPU saved
    /// with the guest's flags (R11 at `syscall`, an exception or NMI frame) is KVM's, and
    /// must not come back, or the program gets a #DB (SIGTRAP) of nobody's asking.
    pub(crate) shim_stepped: bool,
    /// The mask to restore once a call that waits with a temporary one (rt_sigsuspend,
    /// ppoll, pselect6, epoll_pwait) returns: the signal frame of a handler run as it
    /// returns saves this one, as Linux's `set_restore_sigmask`.
    pub saved_sigmask: Option<u64>,
    /// The thread's name (`prctl(PR_SET_NAME)`), NUL-padded.
    pub comm: [u8; 16],
    /// How `syscall` behaves on this vCPU (learnt at the first one).
    pub(crate) syscall_mode: Option<SyscallMode>,
    /// Registers travel in the run page (KVM_CAP_SYNC_REGS).
    pub(crate) sync_regs: bool,
    /// The CR3 this vCPU runs on (one of the twin roots) and the TLB generation it
    /// has caught up with.
    pub(crate) cr3: u64,
    pub(crate) tlb_seen: u64,
    pub(crate) waiter: Arc<Waiter>,
    /// This vCPU's TSS and ring-0 stack.
    pub trap: TrapArea,
    /// The process's execve count when this thread started in it: an execve by
    /// another thread ends this one ([`crate::linux::proc::Shared::ended`]).
    pub(crate) exec_gen: u64,
    /// Held by every thread running on the address space: an execve from a threaded
    /// process frees the old space only once no thread holds its token (the other
    /// vCPUs may still be in the guest on it until they notice their end).
    pub(crate) space_token: Arc<()>,
}

impl Task {
    pub(crate) fn new(tid: u64, cr3: u64, trap: TrapArea) -> Task {
        Task {
            tid,
            fs_base: 0,
            sigmask: 0,
            pending: Default::default(),
            clear_child_tid: 0,
            robust_list: (0, 0),
            altstack: (0, 0),
            saved_sigmask: None,
            shim_stepped: false,
            comm: [0; 16],
            syscall_mode: None,
            sync_regs: false,
            cr3,
            tlb_seen: 0,
            waiter: Arc::new(Waiter::default()),
            trap,
            exec_gen: 0,
            space_token: Arc::new(()),
        }
    }

    /// Whether this vCPU's TLB may hold translations older than generation `now`.
    pub fn tlb_stale(&self, now: u64) -> bool {
        self.tlb_seen != now
    }
}

/// A new thread, as `clone` made it: its task and first registers, for the VM to start
/// on a new vCPU.
#[derive(Debug)]
pub struct NewThread {
    pub task: Task,
    pub regs: kvm_regs,
    /// The parent's x87/SSE state (a thread starts with its creator's, as on Linux).
    pub fpu: Option<kvm_fpu>,
}

/// A thread's parking place (a futex wait or a sleep).
#[derive(Debug, Default)]
pub struct Waiter {
    woken: Mutex<bool>,
    cv: Condvar,
}

/// How often a blocked thread looks at the VM's stop flag.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(20);

impl Waiter {
    pub fn wake(&self) {
        let mut w = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        *w = true;
        self.cv.notify_one();
    }

    /// Forget an earlier wake (before queueing again).
    pub fn reset(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// Whether it was woken since the last [`Self::reset`] (a signal came, for the
    /// waits that poll host descriptors).
    pub fn is_woken(&self) -> bool {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until woken (true), `deadline` passes or `stop` is set (false).
    pub fn wait(&self, deadline: Option<Instant>, stop: &AtomicBool) -> bool {
        let mut w = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *w {
                return true;
            }
            if stop.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            let slice = match deadline {
                Some(d) if d <= now => return false,
                Some(d) => (d - now).min(STOP_POLL),
                None => STOP_POLL,
            };
            w = self
                .cv
                .wait_timeout(w, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// What a thread blocks on, with the process lock released.
#[derive(Debug)]
pub enum Block {
    /// A futex wait (queued in [`Futexes`] already).
    Futex { deadline: Option<Instant> },
    /// nanosleep/clock_nanosleep (woken early by a signal: EINTR, the time left
    /// written to `rem` when not 0).
    Sleep { until: Instant, rem: u64 },
    /// poll/ppoll/select on host descriptors.
    Poll(PollBlock),
    /// epoll_wait and its variants, on a host epoll instance.
    Epoll(crate::linux::events::EpollBlock),
    /// A read that would block: wait until the descriptor is readable, then system
    /// call `nr` starts again (`Process::wait_readable` in `events.rs`).
    Restart { poll: PollBlock, nr: u64 },
    /// wait4/waitid for a child to end.
    Wait(WaitBlock),
    /// rt_sigsuspend and pause: until a signal runs a handler or ends the process.
    Suspend,
    /// A write that may wait for a reader (`Process::wait_writable` in `events.rs`).
    Write(crate::linux::events::WriteBlock),
    /// A vfork parent until its child execs or exits; the child's id, and where the
    /// child gives back the address space it borrowed.
    Vfork {
        child: u64,
        lent: Option<crate::linux::LentSpace>,
    },
}

/// A wait for a child process (wait4, waitid).
#[derive(Debug)]
pub struct WaitBlock {
    pub kernel: Arc<Kernel>,
    pub parent: u64,
    pub which: WaitFor,
    /// WNOWAIT: leave the child to be waited for again.
    pub keep: bool,
    pub out: WaitOut,
    /// The child and its wait status once one ended; None with WNOHANG and no child
    /// ended.
    pub result: Result<Option<(u64, i32)>, Errno>,
}

impl WaitBlock {
    /// Wait until a selected child ends, or a signal or the VM's stop wakes `waiter`
    /// (then the result is EINTR, which `Process::finish_block` turns into a restart
    /// or another wait when the signal does not interrupt it). The waiter was queued
    /// for the children's ends when the call blocked (`Kernel::reap`), so a wake
    /// between then and now is not lost.
    pub fn run(&mut self, waiter: &Arc<Waiter>, stop: &AtomicBool) {
        if !waiter.wait(None, stop) {
            self.result = Err(Errno(libc::EINTR));
            return;
        }
        self.result = match self.kernel.reap(self.parent, self.which, self.keep, None) {
            Ok(None) => Err(Errno(libc::EINTR)),
            r => r,
        };
    }
}

/// The `fd_set`s of a select, to write back when the poll ends.
#[derive(Debug)]
pub struct SelectSets {
    /// Guest addresses of the read, write and except sets (0: none).
    pub sets: [u64; 3],
    pub nfds: u64,
    /// The descriptor of each poll entry.
    pub fds: Vec<u32>,
}

impl Block {
    /// Block `waiter`'s thread; true when it was woken (futex) rather than timed out
    /// or stopped.
    pub fn wait(&mut self, waiter: &Arc<Waiter>, stop: &AtomicBool) -> bool {
        match self {
            Block::Futex { deadline } => waiter.wait(*deadline, stop),
            Block::Wait(w) => {
                w.run(waiter, stop);
                true
            }
            Block::Vfork { .. } | Block::Suspend => waiter.wait(None, stop),
            // Reset under the process lock when the sleep began (a signal's wake
            // after that point must not be lost).
            Block::Sleep { until, .. } => waiter.wait(Some(*until), stop),
            Block::Poll(p) => {
                p.run(waiter, stop);
                true
            }
            Block::Epoll(e) => {
                e.run(waiter, stop);
                true
            }
            Block::Restart { poll, .. } => {
                poll.run(waiter, stop);
                true
            }
            Block::Write(w) => {
                w.run(waiter, stop);
                true
            }
        }
    }
}

/// A poll of guest descriptors, on their host files.
#[derive(Debug)]
pub struct PollBlock {
    /// Guest address of the `struct pollfd` array.
    pub va: u64,
    /// Per entry: the host file (None: a negative fd, skipped) and the events; entries
    /// whose guest fd is not open are POLLNVAL.
    pub entries: Vec<(Option<Arc<OwnedFd>>, i16, bool)>,
    /// None: no timeout.
    pub deadline: Option<Instant>,
    /// revents per entry, or the error, once run.
    pub result: Result<Vec<i16>, Errno>,
    /// Set for a select (the sets to write back instead of `struct pollfd`s).
    pub select: Option<SelectSets>,
}

impl PollBlock {
    /// Poll until something is ready, the deadline passes, a signal wakes `waiter`
    /// (its vCPU thread is kicked too, which ends a host poll at once) or the VM stops.
    pub fn run(&mut self, waiter: &Waiter, stop: &AtomicBool) {
        let mut fds: Vec<libc::pollfd> = self
            .entries
            .iter()
            .map(|(f, events, _)| libc::pollfd {
                fd: f.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: *events,
                revents: 0,
            })
            .collect();
        let nval = self.entries.iter().any(|e| e.2);
        loop {
            let now = Instant::now();
            let slice = match self.deadline {
                _ if nval => Duration::ZERO,
                Some(d) => d.saturating_duration_since(now).min(STOP_POLL),
                None => STOP_POLL,
            };
            match host::poll(&mut fds, slice.as_millis() as i32) {
                Ok(0) => {}
                Ok(_) => break,
                Err(e) if e.0 == libc::EINTR => {}
                Err(e) => {
                    self.result = Err(e);
                    return;
                }
            }
            let over = self.deadline.is_some_and(|d| Instant::now() >= d);
            if nval || over || stop.load(Ordering::Acquire) || waiter.is_woken() {
                break;
            }
        }
        self.result = Ok(self
            .entries
            .iter()
            .zip(&fds)
            .map(|(e, p)| if e.2 { libc::POLLNVAL } else { p.revents })
            .collect());
    }

    /// Whether it ended with nothing ready before its deadline (a signal or the VM's
    /// stop ended it).
    pub fn cut_short(&self) -> bool {
        let none = self
            .result
            .as_ref()
            .is_ok_and(|r| r.iter().all(|&e| e == 0));
        none && self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

#[derive(Debug)]
struct Queued {
    tid: u64,
    bitset: u32,
    waiter: Arc<Waiter>,
}

/// The futex wait queues, by guest-virtual address of the futex word.
#[derive(Debug, Default)]
pub struct Futexes {
    queues: HashMap<u64, VecDeque<Queued>>,
}

impl Futexes {
    /// Wake every waiter (their threads end: an execve by another thread).
    pub fn wake_all(&mut self) {
        for q in std::mem::take(&mut self.queues).into_values() {
            for w in q {
                w.waiter.wake();
            }
        }
    }

    pub fn enqueue(&mut self, addr: u64, tid: u64, bitset: u32, waiter: Arc<Waiter>) {
        waiter.reset();
        self.queues.entry(addr).or_default().push_back(Queued {
            tid,
            bitset,
            waiter,
        });
    }

    /// Wake up to `n` waiters on `addr` whose bitset meets `bitset`; how many woke.
    pub fn wake(&mut self, addr: u64, n: u64, bitset: u32) -> u64 {
        let Some(q) = self.queues.get_mut(&addr) else {
            return 0;
        };
        let mut woken = 0;
        q.retain(|w| {
            if woken < n && w.bitset & bitset != 0 {
                w.waiter.wake();
                woken += 1;
                false
            } else {
                true
            }
        });
        if q.is_empty() {
            self.queues.remove(&addr);
        }
        woken
    }

    /// Wake up to `nwake` waiters on `from`, move up to `nmove` more to `to`; the number
    /// woken plus moved.
    pub fn requeue(&mut self, from: u64, to: u64, nwake: u64, nmove: u64) -> u64 {
        let woken = self.wake(from, nwake, u32::MAX);
        if from == to {
            return woken;
        }
        let Some(mut q) = self.queues.remove(&from) else {
            return woken;
        };
        let k = q.len().min(usize::try_from(nmove).unwrap_or(usize::MAX));
        let moved: Vec<Queued> = q.drain(..k).collect();
        if !q.is_empty() {
            self.queues.insert(from, q);
        }
        let dst = self.queues.entry(to).or_default();
        dst.extend(moved);
        woken + k as u64
    }

    /// Take thread `tid` out of whatever queue it is in; false if it was not queued
    /// (it was woken).
    pub fn remove(&mut self, tid: u64) -> bool {
        let mut found = None;
        for (&addr, q) in self.queues.iter_mut() {
            if let Some(i) = q.iter().position(|w| w.tid == tid) {
                q.remove(i);
                found = Some((addr, q.is_empty()));
                break;
            }
        }
        match found {
            Some((addr, empty)) => {
                if empty {
                    self.queues.remove(&addr);
                }
                true
            }
            None => false,
        }
    }

    /// Waiters queued (tests).
    pub fn len(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

/// The `FUTEX_WAKE_OP` operation on the old value of the second word (linux/futex.h:
/// `op` in bits 28-31 with the 8 "shift" flag, `cmp` in 24-27, operands in 12-23, 0-11),
/// returning the new value and whether waiters on the second word are woken.
pub fn wake_op(encoded: u32, old: u32) -> Option<(u32, bool)> {
    let op = (encoded >> 28) & 0x7;
    let shift = encoded >> 28 & 8 != 0;
    let cmp = (encoded >> 24) & 0xf;
    let mut oparg = ((encoded >> 12) & 0xfff) as i32;
    let cmparg = (encoded & 0xfff) as i32;
    // Sign-extend the 12-bit fields, as the kernel does.
    oparg = (oparg << 20) >> 20;
    let cmparg = (cmparg << 20) >> 20;
    if shift {
        if !(0..32).contains(&oparg) {
            return None;
        }
        oparg = 1 << oparg;
    }
    let oparg = oparg as u32;
    let new = match op {
        0 => oparg,                   // FUTEX_OP_SET
        1 => old.wrapping_add(oparg), // FUTEX_OP_ADD
        2 => old | oparg,             // FUTEX_OP_OR
        3 => old & !oparg,            // FUTEX_OP_ANDN
        4 => old ^ oparg,             // FUTEX_OP_XOR
        _ => return None,
    };
    let o = old as i32;
    let wake = match cmp {
        0 => o == cmparg,
        1 => o != cmparg,
        2 => o < cmparg,
        3 => o <= cmparg,
        4 => o > cmparg,
        5 => o >= cmparg,
        _ => return None,
    };
    Some((new, wake))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_counts_and_bitsets_and_requeue() {
        let mut f = Futexes::default();
        let w: Vec<Arc<Waiter>> = (0..4).map(|_| Arc::new(Waiter::default())).collect();
        f.enqueue(0x1000, 1, u32::MAX, w[0].clone());
        f.enqueue(0x1000, 2, 0b10, w[1].clone());
        f.enqueue(0x1000, 3, u32::MAX, w[2].clone());
        f.enqueue(0x2000, 4, u32::MAX, w[3].clone());
        // Bitset 0b01 skips thread 2.
        assert_eq!(f.wake(0x1000, 1, 0b01), 1);
        let stop = AtomicBool::new(false);
        assert!(w[0].wait(Some(Instant::now()), &stop));
        assert!(!w[1].wait(Some(Instant::now()), &stop));
        // Requeue: wake one (thread 2, first in line), move the other to 0x2000.
        assert_eq!(f.requeue(0x1000, 0x2000, 1, 10), 2);
        assert!(w[1].wait(None, &stop));
        assert_eq!(f.len(), 2);
        assert!(f.remove(3));
        assert!(!f.remove(3));
        assert_eq!(f.wake(0x2000, u64::MAX, u32::MAX), 1);
        assert!(f.is_empty());
    }

    #[test]
    fn a_stopped_vm_ends_every_wait() {
        let w = Waiter::default();
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(!w.wait(None, &stop));
        assert!(t.elapsed() < Duration::from_secs(1));
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        assert!(!w.wait(Some(t + Duration::from_millis(30)), &stop));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn wake_op_follows_the_kernel_encoding() {
        // FUTEX_OP(FUTEX_OP_SET, 0, FUTEX_OP_CMP_GT, 1): glibc's old condvar signal.
        let enc = (4 << 24) | 1;
        assert_eq!(wake_op(enc, 2), Some((0, true)));
        assert_eq!(wake_op(enc, 1), Some((0, false)));
        // ADD with the shift flag: old + (1 << 3).
        let enc = ((8 | 1) << 28) | (1 << 24) | (3 << 12);
        assert_eq!(wake_op(enc, 1), Some((9, true)));
        assert_eq!(wake_op(7 << 28, 0), None);
    }
}
