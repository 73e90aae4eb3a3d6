//! Threads of a Linux program. Each thread is a vCPU on its own host thread (started by
//! the VM when the program calls `clone(CLONE_VM | CLONE_THREAD …)`, see
//! [`crate::vm`]), with its own [`Task`]: thread id, FS base (TLS), signal mask,
//! `clear_child_tid`, and the CR3 it runs on.
//!
//! Futexes wait on the host: a waiter checks the futex word and queues itself in
//! [`Futexes`] under the process lock (the lock every system call holds), so a
//! `FUTEX_WAKE`, also under that lock, cannot slip between the check and the queueing;
//! then it blocks on its own [`Waiter`] with the lock released. Keys are guest-virtual
//! addresses of the process's one address space; a futex in memory shared with other
//! processes (not FUTEX_PRIVATE) is queued in the VM's table instead, by guest-physical
//! address, under that table's lock (see `futex.rs`).
//!
//! TLB: the shim changes page tables from outside the guest, so after an unmap or a
//! lowered protection every vCPU must reload CR3 (switch to the twin PML4, see
//! [`super::mm`]) before it runs the program again. The generation counter
//! [`Process::tlb_generation`](super::Process) is bumped, the other vCPU threads are
//! kicked out of `KVM_RUN`, and each reloads CR3 before its next entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use kvm_bindings::{kvm_fpu, kvm_regs};

use crate::linux::cpu::{SyscallMode, TrapArea};
use crate::linux::waiter::Waiter;

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
    /// The timeout of the wait the thread is blocked in (futex, poll, select, epoll):
    /// when it times out, a virtual clock advances by it ([`crate::linux::clock`]).
    pub timeout_span: Option<std::time::Duration>,
    /// `sigaltstack`: (ss_sp, ss_size), ss_size 0 when none.
    pub altstack: (u64, u64),
    /// KVM single-stepped this vCPU and no longer does (the emulated LBR's tracer sets
    /// KVM_GUESTDBG_SINGLESTEP, which runs the guest with RFLAGS.TF): a TF the CPU saved
    /// with the guest's flags (R11 at `syscall`, an exception or NMI frame) is KVM's, and
    /// must not come back, or the program gets a #DB (SIGTRAP) of nobody's asking.
    pub(crate) shim_stepped: bool,
    /// A signal's delivery (to its handler) or `rt_sigreturn` (back from it) moved the
    /// thread by no branch of its own since the VMM last looked ([`Task::take_moved`]):
    /// what the vCPU's hook planned for where it stood does not apply.
    pub(crate) moved: bool,
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
    /// Whether a signal's delivery or `rt_sigreturn` moved the thread since the last
    /// call.
    pub fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    /// Whether a signal waits that the thread does not block (delivered at the next
    /// chance: a system call's return, or a kick out of the guest).
    pub fn signal_waiting(&self) -> bool {
        self.pending.set() & !self.sigmask != 0
    }

    pub(crate) fn new(tid: u64, cr3: u64, trap: TrapArea) -> Task {
        Task {
            tid,
            fs_base: 0,
            sigmask: 0,
            pending: Default::default(),
            clear_child_tid: 0,
            robust_list: (0, 0),
            timeout_span: None,
            altstack: (0, 0),
            saved_sigmask: None,
            shim_stepped: false,
            moved: false,
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
        let moved = self.take(from, nmove);
        let k = moved.len() as u64;
        self.queues.entry(to).or_default().extend(moved);
        woken + k
    }

    /// Move up to `n` waiters on `from` to `to` in table `other` (a requeue between a
    /// process's futexes and the VM's shared ones); how many moved.
    pub fn move_to(&mut self, from: u64, other: &mut Futexes, to: u64, n: u64) -> u64 {
        let moved = self.take(from, n);
        let k = moved.len() as u64;
        if k > 0 {
            other.queues.entry(to).or_default().extend(moved);
        }
        k
    }

    /// Take the first `n` waiters on `addr` out of its queue.
    fn take(&mut self, addr: u64, n: u64) -> Vec<Queued> {
        let Some(mut q) = self.queues.remove(&addr) else {
            return Vec::new();
        };
        let k = q.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let moved: Vec<Queued> = q.drain(..k).collect();
        if !q.is_empty() {
            self.queues.insert(addr, q);
        }
        moved
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
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

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
    fn waiters_move_between_a_process_table_and_the_shared_one() {
        let (mut own, mut shared) = (Futexes::default(), Futexes::default());
        let w: Vec<Arc<Waiter>> = (0..3).map(|_| Arc::new(Waiter::default())).collect();
        for (tid, w) in w.iter().enumerate() {
            own.enqueue(0x1000, tid as u64, u32::MAX, w.clone());
        }
        assert_eq!(own.move_to(0x1000, &mut shared, 0x9000, 2), 2);
        assert_eq!((own.len(), shared.len()), (1, 2));
        // The moved ones are woken by the shared key, in their order.
        assert_eq!(shared.wake(0x9000, 1, u32::MAX), 1);
        let stop = AtomicBool::new(false);
        assert!(w[0].wait(Some(Instant::now()), &stop));
        assert!(!w[1].wait(Some(Instant::now()), &stop));
        assert!(shared.remove(1));
        assert_eq!(shared.move_to(0x9000, &mut own, 0x1000, 5), 0);
        assert!(shared.is_empty());
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
