//! `futex`: WAIT/WAIT_BITSET (with timeouts), WAKE/WAKE_BITSET, REQUEUE/CMP_REQUEUE,
//! WAKE_OP. PI futexes: ENOSYS.
//!
//! A futex is queued where its waiters and wakers meet ([`FutexKey`]): a word in
//! memory shared between processes ([`super::shm`]), used without FUTEX_PRIVATE_FLAG,
//! in the VM's table under its guest-physical address (the same in every process that
//! maps the page: a process-shared mutex, semaphore or condition variable); any other
//! in the process's own table under its virtual address (the threads of one process
//! share one address space). As on Linux, a FUTEX_PRIVATE wait on shared memory is
//! only woken by the same process.

use std::sync::MutexGuard;

use crate::linux::Process;
use crate::linux::block::Block;
use crate::linux::errno::Errno;
use crate::linux::outcome::Outcome;
use crate::linux::thread::{self, Futexes, Task};
use crate::memory::GuestVirtAddr;

/// Where a futex's waiters queue (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutexKey {
    /// The process's table, by guest-virtual address.
    Local(u64),
    /// The VM's table, by guest-physical address.
    Shared(u64),
}

/// The queue table of `key`: the process's own, or the VM's (locked by the caller).
fn table<'a>(
    local: &'a mut Futexes,
    shared: &'a mut Option<MutexGuard<'_, Futexes>>,
    key: FutexKey,
) -> (&'a mut Futexes, u64) {
    match (key, shared) {
        (FutexKey::Shared(pa), Some(g)) => (&mut **g, pa),
        (FutexKey::Shared(pa), None) => (local, pa),
        (FutexKey::Local(va), _) => (local, va),
    }
}

impl Process {
    /// The key of the futex word at `va` for a call with `op`'s flags.
    pub(crate) fn futex_key(&self, va: u64, op: i32) -> FutexKey {
        match self.mm.shared_phys(va) {
            Some(pa) if op & libc::FUTEX_PRIVATE_FLAG == 0 => FutexKey::Shared(pa),
            _ => FutexKey::Local(va),
        }
    }

    /// Wake up to `n` waiters of `key` whose bitset meets `bitset`; how many woke.
    pub(crate) fn futex_wake(&mut self, key: FutexKey, n: u64, bitset: u32) -> u64 {
        match key {
            FutexKey::Local(va) => self.futexes.wake(va, n, bitset),
            FutexKey::Shared(pa) => self.kernel.futexes().wake(pa, n, bitset),
        }
    }

    /// Take thread `tid` out of the futex queue it waits in; false if it is in none
    /// (it was woken).
    pub(crate) fn futex_unqueue(&mut self, tid: u64) -> bool {
        self.futexes.remove(tid) || self.kernel.futexes().remove(tid)
    }

    pub(crate) fn sys_futex(&mut self, task: &mut Task, a: [u64; 6]) -> Outcome {
        self.futex(task, a)
            .unwrap_or_else(|e| Outcome::Return(e.ret()))
    }

    fn futex_word(&self, va: u64) -> Result<u32, Errno> {
        if !va.is_multiple_of(4) {
            return Err(Errno::EINVAL);
        }
        let mut b = [0u8; 4];
        self.mm.read(GuestVirtAddr(va), &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn futex(&mut self, task: &mut Task, a: [u64; 6]) -> Result<Outcome, Errno> {
        let (addr, op, val) = (a[0], a[1] as i32, a[2]);
        let cmd = op & libc::FUTEX_CMD_MASK;
        let key = self.futex_key(addr, op);
        // The second word of REQUEUE and WAKE_OP.
        let two = matches!(
            cmd,
            libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE | libc::FUTEX_WAKE_OP
        );
        let key2 = two.then(|| self.futex_key(a[4], op));
        // The VM's table is held for the whole call when a word is shared: a wait's
        // check and queueing cannot be split by another process's wake.
        let kernel = self.kernel.clone();
        let any_shared =
            matches!(key, FutexKey::Shared(_)) || matches!(key2, Some(FutexKey::Shared(_)));
        let mut shared = any_shared.then(|| kernel.futexes());
        // The _BITSET forms' mask (every bit for the plain form); 0 is EINVAL.
        let bitset = |plain: i32| match if cmd == plain { u32::MAX } else { a[5] as u32 } {
            0 => Err(Errno::EINVAL),
            b => Ok(b),
        };
        match cmd {
            libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => {
                let bitset = bitset(libc::FUTEX_WAIT)?;
                if self.futex_word(addr)? != val as u32 {
                    return Err(Errno(libc::EAGAIN));
                }
                // FUTEX_WAIT's timeout is relative (monotonic); WAIT_BITSET's absolute,
                // on CLOCK_REALTIME with FUTEX_CLOCK_REALTIME.
                let deadline = if a[3] == 0 {
                    None
                } else {
                    let clock = if op & libc::FUTEX_CLOCK_REALTIME != 0 {
                        libc::CLOCK_REALTIME
                    } else {
                        libc::CLOCK_MONOTONIC
                    };
                    match self.timeout(task, a[3], clock, cmd == libc::FUTEX_WAIT_BITSET) {
                        Ok(Some(d)) => Some(d),
                        Ok(None) => return Err(Errno(libc::ETIMEDOUT)),
                        Err(e) => return Err(e),
                    }
                };
                let (q, at) = table(&mut self.futexes, &mut shared, key);
                q.enqueue(at, task.tid, bitset, task.waiter.clone());
                Ok(Outcome::Block(Block::Futex { deadline }))
            }
            libc::FUTEX_WAKE | libc::FUTEX_WAKE_BITSET => {
                let bitset = bitset(libc::FUTEX_WAKE)?;
                let (q, at) = table(&mut self.futexes, &mut shared, key);
                Ok(Outcome::Return(q.wake(
                    at,
                    val.min(i32::MAX as u64),
                    bitset,
                )))
            }
            libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE => {
                if cmd == libc::FUTEX_CMP_REQUEUE && self.futex_word(addr)? != a[5] as u32 {
                    return Err(Errno(libc::EAGAIN));
                }
                let key2 = key2.unwrap_or(FutexKey::Local(a[4]));
                // The fourth argument is the count to requeue (the timeout slot).
                let nmove = a[3].min(i32::MAX as u64);
                let nwake = val.min(i32::MAX as u64);
                let n = match (key, key2, shared.as_mut()) {
                    (FutexKey::Local(from), FutexKey::Local(to), _) => {
                        self.futexes.requeue(from, to, nwake, nmove)
                    }
                    (FutexKey::Shared(from), FutexKey::Shared(to), Some(g)) => {
                        g.requeue(from, to, nwake, nmove)
                    }
                    (FutexKey::Local(from), FutexKey::Shared(to), Some(g)) => {
                        let woken = self.futexes.wake(from, nwake, u32::MAX);
                        woken + self.futexes.move_to(from, g, to, nmove)
                    }
                    (FutexKey::Shared(from), FutexKey::Local(to), Some(g)) => {
                        let woken = g.wake(from, nwake, u32::MAX);
                        woken + g.move_to(from, &mut self.futexes, to, nmove)
                    }
                    // A shared key always comes with the VM's table held.
                    (_, _, None) => 0,
                };
                Ok(Outcome::Return(n))
            }
            libc::FUTEX_WAKE_OP => {
                let addr2 = a[4];
                let old = self.futex_word(addr2)?;
                let Some((new, wake2)) = thread::wake_op(a[5] as u32, old) else {
                    return Err(Errno(libc::ENOSYS));
                };
                // The guest cannot race this store: it would need a system call, and
                // those hold the process (other threads' plain stores are its own race).
                self.mm.write(GuestVirtAddr(addr2), &new.to_le_bytes())?;
                let (q, at) = table(&mut self.futexes, &mut shared, key);
                let mut n = q.wake(at, val.min(i32::MAX as u64), u32::MAX);
                if wake2 {
                    let key2 = key2.unwrap_or(FutexKey::Local(addr2));
                    let (q, at) = table(&mut self.futexes, &mut shared, key2);
                    n += q.wake(at, a[3].min(i32::MAX as u64), u32::MAX);
                }
                Ok(Outcome::Return(n))
            }
            _ => Err(Errno::ENOSYS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::abi::PAGE;
    use crate::linux::fd::FdTable;
    use crate::linux::mm::AddressSpace;
    use crate::memory::GuestMemory;
    use std::sync::Arc;
    use syscalls::Sysno;

    fn ret(o: Outcome) -> i64 {
        match o {
            Outcome::Return(v) => v as i64,
            o => panic!("{o:?}"),
        }
    }

    /// A process with a shared region at the address returned, and its forked twin
    /// (same kernel, same shared frames, a private page copied).
    fn parent_and_child() -> (Process, Process, u64) {
        let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
        let mut mm = AddressSpace::new(mem, 1 << 20).unwrap();
        let trap = crate::linux::cpu::build_trap_area(&mut mm, None).unwrap();
        let mut p = Process::with(mm, FdTable::with_stdio([None, None, None]), trap, 1);
        let mut t = p.main_task();
        let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let at = ret(p.syscall(&mut t, Sysno::mmap as u64, [0, PAGE, rw, flags, !0, 0])) as u64;
        let private = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let args = [0x40_0000, PAGE, rw, private | libc::MAP_FIXED as u64, !0, 0];
        assert_eq!(ret(p.syscall(&mut t, Sysno::mmap as u64, args)), 0x40_0000);
        let mut mm = p.mm.fork().unwrap();
        let trap = crate::linux::cpu::build_trap_area(&mut mm, Some(p.trap.stubs)).unwrap();
        let mut c = Process::with(mm, FdTable::with_stdio([None, None, None]), trap, 2);
        c.kernel = p.kernel.clone();
        (p, c, at)
    }

    #[test]
    fn a_shared_futex_wait_in_one_process_is_woken_from_another_unless_private() {
        let (mut p, mut c, at) = parent_and_child();
        let (mut pt, mut ct) = (p.main_task(), c.main_task());
        let futex = Sysno::futex as u64;
        let (wait, wake) = (libc::FUTEX_WAIT as u64, libc::FUTEX_WAKE as u64);
        let private = libc::FUTEX_PRIVATE_FLAG as u64;
        // The child waits on the shared word (0): queued in the VM's table.
        let o = c.syscall(&mut ct, futex, [at, wait, 0, 0, 0, 0]);
        assert!(matches!(o, Outcome::Block(Block::Futex { .. })), "{o:?}");
        assert_eq!(c.futexes.len(), 0);
        // A private wake from the parent does not reach it; a shared one does.
        assert_eq!(
            ret(p.syscall(&mut pt, futex, [at, wake | private, 1, 0, 0, 0])),
            0
        );
        assert_eq!(ret(p.syscall(&mut pt, futex, [at, wake, 1, 0, 0, 0])), 1);
        assert!(!c.futex_unqueue(ct.tid), "it was woken");
        // The value check sees the other process's store.
        c.mm.write(GuestVirtAddr(at), &5u32.to_le_bytes()).unwrap();
        let r = ret(p.syscall(&mut pt, futex, [at, wait, 0, 0, 0, 0]));
        assert_eq!(r, -(libc::EAGAIN as i64));
        // Private memory: the two processes' words are their own.
        let o = c.syscall(&mut ct, futex, [0x40_0000, wait, 0, 0, 0, 0]);
        assert!(matches!(o, Outcome::Block(Block::Futex { .. })), "{o:?}");
        assert_eq!(
            ret(p.syscall(&mut pt, futex, [0x40_0000, wake, 1, 0, 0, 0])),
            0
        );
        // Requeue from the child's private word to the shared one, then wake it there.
        let requeue = libc::FUTEX_REQUEUE as u64;
        let o = c.syscall(&mut ct, futex, [0x40_0000, requeue, 0, 1, at, 0]);
        assert_eq!(ret(o), 1);
        assert_eq!(ret(p.syscall(&mut pt, futex, [at, wake, 1, 0, 0, 0])), 1);
    }

    #[test]
    fn a_shared_mapping_past_the_largest_offset_is_eoverflow() {
        let (mut p, _c, _) = parent_and_child();
        let mut t = p.main_task();
        let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
        let off = !(PAGE - 1);
        let r = ret(p.syscall(&mut t, Sysno::mmap as u64, [0, 2 * PAGE, 3, flags, !0, off]));
        assert_eq!(r, -(libc::EOVERFLOW as i64));
    }
}
