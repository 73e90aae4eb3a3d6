//! signalfd: a descriptor from which the program reads its pending signals.
//!
//! The host file behind a guest signalfd is an eventfd (so `poll`, `select` and `epoll`
//! watch it as any host descriptor, and a blocking read waits on it with the process
//! released). The process's [`Shared`](crate::linux::proc::Shared) keeps each
//! signalfd's signals and makes its eventfd readable whenever one of them is sent
//! ([`Shared::wake_signalfds`](crate::linux::proc::Shared::wake_signalfds)); a read
//! takes pending instances of them from the process's queue as `struct
//! signalfd_siginfo` records, the reading thread's own first (those sent to it alone:
//! tgkill, pthread_kill), as Linux's `dequeue_signal`. A forked child's copies of its
//! parent's signalfds get eventfds of their own, watched by the child's process, since
//! they read the child's signals.

use std::sync::Arc;

use crate::linux::errno::Errno;
use crate::linux::fd::Fd;
use crate::linux::host;
use crate::linux::signal::{SI_TIMER, SigInfo};
use crate::linux::thread::Task;

/// `struct signalfd_siginfo`.
const RECORD: usize = 128;

/// The record a read returns for `info`.
fn record(info: &SigInfo) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &(info.signo as u32).to_le_bytes());
    put(8, &info.code.to_le_bytes());
    if info.code == SI_TIMER {
        // (timer id, overrun) and the timer's sigev_value.
        put(24, &(info.word as u32).to_le_bytes());
        put(32, &((info.word >> 32) as u32).to_le_bytes());
        put(44, &(info.value as u32).to_le_bytes());
        put(48, &info.value.to_le_bytes());
    } else {
        // kill, sigqueue, SIGCHLD: (pid, uid).
        put(12, &(info.word as u32).to_le_bytes());
        put(16, &((info.word >> 32) as u32).to_le_bytes());
        put(44, &(info.value as u32).to_le_bytes());
        put(48, &info.value.to_le_bytes());
    }
    put(36, &(info.trapno as u32).to_le_bytes());
    put(72, &info.cr2.to_le_bytes());
    b
}

/// The signal set at `mask` (of `size` bytes: 8, as the kernel's sigset_t), without
/// SIGKILL and SIGSTOP, which a signalfd cannot take.
fn read_mask(p: &crate::linux::Process, mask: u64, size: u64) -> Result<u64, Errno> {
    if size != 8 {
        return Err(Errno::EINVAL);
    }
    let m = p.mm.read_u64(mask)?;
    Ok(m & !crate::linux::signal::UNBLOCKABLE)
}

impl crate::linux::Process {
    /// signalfd4(fd, mask, size, flags): a new signalfd (fd -1), or a new set for one.
    pub(crate) fn sys_signalfd(
        &mut self,
        fd: u64,
        mask: u64,
        size: u64,
        flags: u64,
    ) -> Result<u64, Errno> {
        let flags = flags as i32;
        if flags & !(libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        let set = read_mask(self, mask, size)?;
        let file = if fd as i32 == -1 {
            let efd = host::eventfd(0, flags & libc::SFD_NONBLOCK)?;
            let mut f = Fd::new(efd, flags & libc::SFD_CLOEXEC != 0);
            f.signal_mask = Some(set);
            let file = f.file.clone();
            let new = self.fds.insert(f)?;
            self.watch(set, &file);
            return Ok(new);
        } else {
            let f = self.fds.get_mut(fd)?;
            if f.signal_mask.is_none() {
                return Err(Errno::EINVAL);
            }
            f.signal_mask = Some(set);
            f.file.clone()
        };
        self.watch(set, &file);
        Ok(fd)
    }

    /// A forked child's signalfds read the child's signals, so each gets a host
    /// eventfd of its own (shared by the child's copies of it, as the parent's were),
    /// watched by the child's process.
    pub(crate) fn own_signalfds(&mut self) -> Result<(), Errno> {
        let mut fresh: Vec<(*const std::os::fd::OwnedFd, Arc<std::os::fd::OwnedFd>)> = Vec::new();
        let mut watched = Vec::new();
        for f in self.fds.iter_mut() {
            let Some(set) = f.signal_mask else {
                continue;
            };
            let old = Arc::as_ptr(&f.file);
            let new = match fresh.iter().find(|(p, _)| *p == old) {
                Some((_, new)) => new.clone(),
                None => {
                    let fl = host::fcntl_int(f.host(), libc::F_GETFL, 0)? as i32;
                    let new = Arc::new(host::eventfd(0, fl & libc::O_NONBLOCK)?);
                    fresh.push((old, new.clone()));
                    new
                }
            };
            f.file = new.clone();
            watched.push((set, new));
        }
        for (set, file) in watched {
            self.watch(set, &file);
        }
        Ok(())
    }

    /// After `task` took signals (a signalfd's read, rt_sigtimedwait): each signalfd
    /// of the process is readable while a signal of its set is left (the process's,
    /// the thread's, or one another thread sent a thread that has not taken it yet),
    /// and no longer readable otherwise, as Linux answers a poll from what is pending.
    pub(crate) fn refresh_signalfds(&self, task: &Task) {
        let others = self.signals_for.values().fold(0, |s, q| s | q.set());
        let pending = others
            | task.pending.set()
            | self
                .shared
                .signals
                .load(std::sync::atomic::Ordering::Acquire);
        let fds = self
            .shared
            .signalfds
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (mask, f) in fds.iter() {
            if let Some(f) = f.upgrade() {
                if mask & pending != 0 {
                    host::eventfd_signal(&f);
                } else {
                    host::eventfd_drain(std::os::fd::AsFd::as_fd(&*f));
                }
            }
        }
    }

    /// Register (or re-register) a signalfd's set; readable at once if one is pending.
    fn watch(&self, set: u64, file: &Arc<std::os::fd::OwnedFd>) {
        {
            let mut fds = self
                .shared
                .signalfds
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            fds.retain(|(_, f)| {
                f.strong_count() > 0 && !std::ptr::eq(f.as_ptr(), Arc::as_ptr(file))
            });
            fds.push((set, Arc::downgrade(file)));
        }
        let pending = self
            .shared
            .signals
            .load(std::sync::atomic::Ordering::Acquire);
        if pending & set != 0 {
            host::eventfd_signal(file);
        }
    }

    /// A read of a signalfd: as many pending signals of its set as `count` holds
    /// records for (EINVAL below one record, EAGAIN when none is pending).
    pub(crate) fn read_signalfd(
        &mut self,
        task: &mut Task,
        fd: u64,
        set: u64,
        buf: u64,
        count: u64,
    ) -> Result<u64, Errno> {
        if count < RECORD as u64 {
            return Err(Errno::EINVAL);
        }
        let file = self.fds.get(fd)?.file.clone();
        host::eventfd_drain(std::os::fd::AsFd::as_fd(&*file));
        let mut out = Vec::new();
        while out.len() + RECORD <= count as usize {
            let Some(info) = self.take_waited(task, set) else {
                break;
            };
            out.extend_from_slice(&record(&info));
        }
        self.refresh_signalfds(task);
        if out.is_empty() {
            return Err(Errno(libc::EAGAIN));
        }
        self.out(buf, &out)?;
        Ok(out.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_senders_pid_and_uid_or_the_timers_fields() {
        let kill = SigInfo {
            signo: libc::SIGUSR1,
            code: 0,
            word: 1234 | (1000 << 32),
            ..SigInfo::default()
        };
        let r = record(&kill);
        let u32_at =
            |r: &[u8; RECORD], at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
        assert_eq!(u32_at(&r, 0), libc::SIGUSR1 as u32);
        assert_eq!(u32_at(&r, 12), 1234);
        assert_eq!(u32_at(&r, 16), 1000);
        let timer = SigInfo {
            signo: libc::SIGALRM,
            code: SI_TIMER,
            word: 3 | (2 << 32),
            value: 77,
            ..SigInfo::default()
        };
        let r = record(&timer);
        assert_eq!((u32_at(&r, 24), u32_at(&r, 32), u32_at(&r, 44)), (3, 2, 77));
    }
}
