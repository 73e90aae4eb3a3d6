//! Signals taken synchronously: `rt_sigtimedwait` (glibc's `sigwait`, `sigwaitinfo` and
//! `sigtimedwait`), and the dequeue it shares with a signalfd's read; and signals sent
//! with a value to take that way, `rt_sigqueueinfo`/`rt_tgsigqueueinfo` (`sigqueue`,
//! `pthread_sigqueue`).
//!
//! As Linux's `do_sigtimedwait`: a pending signal of the set (the thread's own first,
//! then the process's, lowest number first) is taken at once, its siginfo written out
//! and its number returned; otherwise, with a zero timeout, EAGAIN. Else the thread
//! blocks with the set unblocked (its mask minus the set), so a signal of the set sent
//! meanwhile, to the thread or the process, wakes it and is taken rather than
//! delivered; a signal outside the set that runs a handler or ends the process ends
//! the wait with EINTR (never restarted, whatever SA_RESTART says); the timeout ends it
//! with EAGAIN. The mask is the thread's own again when the call returns. A timeout is
//! a timed wait of the program's clock: with the pinned clock of exact mode
//! ([`crate::linux::clock`]), one that expires advances the virtual time by exactly it.

use crate::linux::Process;
use crate::linux::block::{Block, SigWait};
use crate::linux::errno::Errno;
use crate::linux::outcome::Outcome;
use crate::linux::signal::{SigInfo, UNBLOCKABLE};
use crate::linux::thread::Task;

impl Process {
    /// Take one pending instance of a signal of `set` for `task`, as Linux's
    /// `dequeue_signal`: the thread's own signals first (those other threads sent it
    /// too), then the process's, the lowest signal first; a POSIX timer's carries its
    /// overruns.
    pub(crate) fn take_waited(&mut self, task: &mut Task, set: u64) -> Option<SigInfo> {
        if let Some(sigs) = self.signals_for.remove(&task.tid) {
            for info in task.pending.append(sigs) {
                self.discarded(&info);
            }
        }
        let info = match task.pending.next(!set) {
            Some(sig) => task.pending.take(sig),
            None => self.shared.take_one(set),
        }?;
        Some(self.delivering(info))
    }

    /// Whether a signal of `set` is pending for `task` (its own or its process's).
    pub(crate) fn waited_pending(&self, task: &Task, set: u64) -> bool {
        let process = self
            .shared
            .signals
            .load(std::sync::atomic::Ordering::Acquire);
        let others = self.signals_for.get(&task.tid).map_or(0, |q| q.set());
        (task.pending.set() | others | process) & set != 0
    }

    /// rt_sigtimedwait(set, info, timeout, sigsetsize).
    pub(crate) fn sys_sigtimedwait(
        &mut self,
        task: &mut Task,
        set: u64,
        info: u64,
        timeout: u64,
        size: u64,
    ) -> Outcome {
        let ret = |r: Result<u64, Errno>| Outcome::Return(r.unwrap_or_else(|e| e.ret()));
        if size != 8 {
            return ret(Err(Errno::EINVAL));
        }
        let set = match self.mm.read_u64(set) {
            Ok(s) => s & !UNBLOCKABLE,
            Err(e) => return ret(Err(e)),
        };
        let span = if timeout == 0 {
            None
        } else {
            match self.span(timeout, libc::CLOCK_MONOTONIC, false) {
                Ok(s) => Some(s.unwrap_or_default()),
                Err(e) => return ret(Err(e)),
            }
        };
        if let Some(taken) = self.take_waited(task, set) {
            return ret(self.waited(task, info, &taken));
        }
        let deadline = match span {
            Some(s) if s.is_zero() => return ret(Err(Errno(libc::EAGAIN))),
            Some(s) => Some(Self::deadline_after(task, s)),
            None => None,
        };
        self.wait_with_set(
            task,
            SigWait {
                set,
                info,
                deadline,
            },
        )
    }

    /// Block `task` in `wait`, the set unblocked while it waits.
    pub(crate) fn wait_with_set(&mut self, task: &mut Task, wait: SigWait) -> Outcome {
        let real = *task.saved_sigmask.get_or_insert(task.sigmask);
        task.sigmask = real & !wait.set;
        Outcome::Block(Block::SigWait(wait))
    }

    /// The call returns signal `taken`: its siginfo written to `info` (unless 0).
    pub(crate) fn waited(&mut self, task: &Task, info: u64, taken: &SigInfo) -> Result<u64, Errno> {
        self.refresh_signalfds(task);
        if info != 0 {
            self.out(info, &taken.to_bytes())?;
        }
        Ok(taken.signo as u64)
    }

    /// rt_sigqueueinfo(pid, sig, info) and rt_tgsigqueueinfo(pid, tid, sig, info): `sig`
    /// with the sender's `siginfo_t` (its code and value) to a process, or to one of
    /// this process's threads. As Linux, a process may not claim to be the kernel or
    /// `kill` (a code ≥ 0, or SI_TKILL) to another process (EPERM).
    pub(crate) fn sys_sigqueue(
        &mut self,
        task: &mut Task,
        pid: u64,
        tid: Option<u64>,
        sig: u64,
        info: u64,
    ) -> Outcome {
        let ret = |e: Errno| Outcome::Return(e.ret());
        if sig > 64 {
            return ret(Errno::EINVAL);
        }
        let mut raw = [0u8; 128];
        if let Err(e) = self.mm.read(crate::memory::GuestVirtAddr(info), &mut raw) {
            return ret(e);
        }
        let word = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap_or_default());
        let code = i32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let own = i64::from(pid as i32) as u64 == self.pid;
        if (code >= 0 || code == crate::linux::signal::SI_TKILL) && !own {
            return ret(Errno(libc::EPERM));
        }
        let info = SigInfo {
            signo: sig as i32,
            code,
            word: word(16),
            value: word(24),
            ..SigInfo::default()
        };
        match tid {
            Some(tid) => self.sys_kill_info(task, tid, sig, info),
            None if own => {
                let blocked = sig != 0 && task.sigmask & (1 << (sig - 1)) != 0;
                if blocked {
                    // Pending for the process: another thread, a signalfd or a wait
                    // takes it.
                    self.shared.post_info(info);
                    return Outcome::Return(0);
                }
                self.sys_kill_info(task, task.tid, sig, info)
            }
            None if !self.kernel.exists(pid) => ret(Errno(libc::ESRCH)),
            None if sig == 0 => Outcome::Return(0),
            None => {
                self.kernel.signal_info(pid, info);
                Outcome::Return(0)
            }
        }
    }
}
