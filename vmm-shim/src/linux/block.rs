//! What a thread blocks on with its process released ([`Block`]): futex waits, sleeps,
//! polls, epoll waits, reads and writes that wait for the other end, waits for
//! children, vfork. Each kind runs on the vCPU thread and ends when it is done, a
//! signal wakes the thread's [`Waiter`], or the VM stops.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::linux::errno::Errno;
use crate::linux::host;
use crate::linux::mm::LentSpace;
use crate::linux::proc::{Kernel, WaitFor};
use crate::linux::waiter::{STOP_POLL, Waiter};

/// What a thread blocks on, with the process lock released.
#[derive(Debug)]
pub enum Block {
    /// A futex wait (queued in the process's `Futexes` already).
    Futex { deadline: Option<Instant> },
    /// nanosleep/clock_nanosleep (woken early by a signal: EINTR, the time left
    /// written to `rem` when not 0).
    Sleep { until: Instant, rem: u64 },
    /// poll/ppoll/select on host descriptors.
    Poll(PollBlock),
    /// epoll_wait and its variants, on a host epoll instance.
    Epoll(EpollBlock),
    /// A read that would block: wait until the descriptor is readable, then system
    /// call `nr` starts again (`Process::wait_readable` in `events.rs`).
    Restart { poll: PollBlock, nr: u64 },
    /// wait4/waitid for a child to end.
    Wait(WaitBlock),
    /// rt_sigsuspend and pause: until a signal runs a handler or ends the process.
    Suspend,
    /// rt_sigtimedwait: until a signal of its set comes, another signal interrupts it,
    /// or its timeout.
    SigWait(SigWait),
    /// A lock held by someone else (F_SETLKW, flock): wait until `until` or a signal,
    /// then system call `nr` starts again.
    Retry { until: Instant, nr: u64 },
    /// A write that may wait for a reader (`Process::wait_writable` in `events.rs`).
    Write(WriteBlock),
    /// A vfork parent until its child execs or exits; the child's id, and where the
    /// child gives back the address space it borrowed.
    Vfork { child: u64, lent: Option<LentSpace> },
}

/// A thread in `rt_sigtimedwait` (see [`crate::linux::sigwait`]).
#[derive(Debug)]
pub struct SigWait {
    /// The signals it waits for (bit `n - 1` for signal `n`).
    pub set: u64,
    /// Where the taken signal's `siginfo_t` goes (0: nowhere).
    pub info: u64,
    /// None: no timeout.
    pub deadline: Option<Instant>,
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
    pub result: Result<Option<(u64, i32, crate::linux::usage::Usage)>, Errno>,
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
            Block::SigWait(w) => waiter.wait(w.deadline, stop),
            // Reset under the process lock when the sleep began (a signal's wake
            // after that point must not be lost).
            Block::Sleep { until, .. } | Block::Retry { until, .. } => {
                waiter.wait(Some(*until), stop)
            }
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
        self.nothing_ready() && self.deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Whether it ended by its timeout: nothing ready, the deadline past.
    pub fn timed_out(&self) -> bool {
        self.nothing_ready() && self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn nothing_ready(&self) -> bool {
        self.result
            .as_ref()
            .is_ok_and(|r| r.iter().all(|&e| e == 0))
    }
}

/// Where a wait's results go.
#[derive(Clone, Copy, Debug)]
pub enum WaitOut {
    Wait4 { status: u64, rusage: u64 },
    Waitid { info: u64 },
}

/// An `epoll_wait` with the process released.
#[derive(Debug)]
pub struct EpollBlock {
    pub(crate) epoll: Arc<OwnedFd>,
    /// Guest address of the events array.
    pub(crate) va: u64,
    pub(crate) max: usize,
    /// None: no timeout.
    pub(crate) deadline: Option<Instant>,
    /// The ready events once run, or the error.
    pub(crate) result: Result<Vec<(u32, u64)>, Errno>,
}

impl EpollBlock {
    /// Wait until an event is ready, the deadline passes, a signal wakes `waiter` or
    /// the VM stops.
    pub fn run(&mut self, waiter: &Waiter, stop: &AtomicBool) {
        loop {
            let now = Instant::now();
            let slice = match self.deadline {
                Some(d) => d.saturating_duration_since(now).min(STOP_POLL),
                None => STOP_POLL,
            };
            match host::epoll_wait(self.epoll.as_fd(), self.max, slice.as_millis() as i32) {
                Ok(evs) if !evs.is_empty() => {
                    self.result = Ok(evs);
                    return;
                }
                Ok(_) => {}
                Err(e) if e.0 == libc::EINTR => {}
                Err(e) => {
                    self.result = Err(e);
                    return;
                }
            }
            let over = self.deadline.is_some_and(|d| Instant::now() >= d);
            if over || stop.load(Ordering::Acquire) || waiter.is_woken() {
                self.result = Ok(Vec::new());
                return;
            }
        }
    }

    /// Whether it ended with no event before its deadline (a signal or the VM's stop
    /// ended it).
    pub fn cut_short(&self) -> bool {
        self.result.as_ref().is_ok_and(|r| r.is_empty())
            && self.deadline.is_none_or(|d| Instant::now() < d)
    }

    /// Whether it ended by its timeout: no event, the deadline past.
    pub fn timed_out(&self) -> bool {
        self.result.as_ref().is_ok_and(|r| r.is_empty())
            && self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// A `write`/`writev` to a pipe, socket or terminal that may have to wait for a reader:
/// done with the process released (see `Process::wait_writable`).
#[derive(Debug)]
pub struct WriteBlock {
    pub(crate) file: Arc<OwnedFd>,
    /// The bytes, taken from the program when the call was made.
    pub(crate) data: Vec<u8>,
    /// Bytes written so far (a wait that a signal cut short and that goes on keeps them).
    pub(crate) done: usize,
    /// Bytes written, or the error, once run.
    pub(crate) result: Result<usize, Errno>,
    /// A signal or the VM's stop ended the last run before it wrote everything (an
    /// error with some bytes written also ends it short, but for good).
    pub(crate) cut: bool,
}

impl WriteBlock {
    /// Write everything, waiting for room as a blocking write does, until a signal
    /// wakes `waiter` or the VM stops: then what was written counts, and nothing
    /// written is EINTR (which `Process::finish_block` turns into a restart, or a wait
    /// again when the signal does not interrupt the call), as Linux's pipe and socket
    /// writes. The host descriptor stays blocking (its open file may be shared with
    /// other programs), so the write never blocks on the host: it waits for POLLOUT in
    /// slices, then writes what cannot block (a socket's send with MSG_DONTWAIT; at
    /// most PIPE_BUF bytes to a pipe or terminal, which POLLOUT promises room for).
    pub fn run(&mut self, waiter: &Waiter, stop: &AtomicBool) {
        self.cut = false;
        let fd = self.file.as_fd();
        let socket = host::is_socket(fd);
        let mut done = self.done;
        let mut probe = [libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }];
        let error = loop {
            if done == self.data.len() {
                break None;
            }
            if stop.load(Ordering::Acquire) || waiter.is_woken() {
                self.cut = true;
                break (done == 0).then_some(Errno(libc::EINTR));
            }
            match host::poll(&mut probe, STOP_POLL.as_millis() as i32) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) if e.0 == libc::EINTR => continue,
                Err(e) => break Some(e),
            }
            let rest = &self.data[done..];
            let wrote = if socket {
                host::sendmsg(fd, rest, None, &[], libc::MSG_DONTWAIT)
            } else {
                host::write(fd, &rest[..rest.len().min(pipe_room(fd))])
            };
            match wrote {
                Ok(n) => done += n,
                Err(e) if e.0 == libc::EAGAIN || e.0 == libc::EINTR => {}
                Err(e) => break Some(e),
            }
        };
        self.done = done;
        self.result = match error {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        };
    }

    /// Whether a signal (or the VM's stop) ended it before it wrote everything. A host
    /// error after some bytes were written is not: the call returns that count, as on
    /// Linux, instead of being waited on again (it would fail the same way forever).
    pub fn cut_short(&self) -> bool {
        self.cut
    }

    /// Whether it wrote nothing (an interrupted call that may be restarted).
    pub fn wrote_nothing(&self) -> bool {
        self.done == 0
    }
}

/// Bytes a write to `fd` (writable: POLLOUT) takes without blocking: PIPE_BUF, or for a
/// pipe the pages it has free past those its queued bytes may occupy (a page each, plus
/// one partly read at the head).
fn pipe_room(fd: BorrowedFd<'_>) -> usize {
    const PAGE: i64 = 4096;
    let floor = libc::PIPE_BUF;
    let Ok(size) = host::fcntl_int(fd, libc::F_GETPIPE_SZ, 0) else {
        return floor;
    };
    let Ok(queued) = host::ioctl_int(fd, libc::FIONREAD, 0) else {
        return floor;
    };
    let free = size / PAGE - (i64::from(queued) + PAGE - 1) / PAGE - 1;
    (free.max(0) * PAGE).max(floor as i64) as usize
}
