//! Event descriptors: epoll, eventfd and timerfd, on host instances of the same kind.
//!
//! Guest descriptors are host open files (see [`super::fd`]), so an epoll set of the
//! program is a host epoll instance watching the host files behind the program's
//! descriptors. The kernel keeps each registration's `data` and returns it unchanged, so
//! the program's own cookies (often its fd numbers or pointers) come back as it stored
//! them, with no translation. A wait blocks like `poll` (the process released, the VM's
//! stop flag looked at every few milliseconds); as with `poll`, a signal that runs a
//! handler or ends the process interrupts it (EINTR), and `epoll_pwait`'s signal mask
//! applies while it waits.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use crate::linux::Process;
use crate::linux::block::{Block, EpollBlock, PollBlock, WriteBlock};
use crate::linux::errno::Errno;
use crate::linux::fd::Fd;
use crate::linux::host;
use crate::linux::outcome::Outcome;
use crate::linux::proc::{Controlling, Terminal};
use crate::memory::GuestVirtAddr;
use syscalls::Sysno;

/// Bytes of a `struct epoll_event` on x86-64 (packed: u32 events, u64 data).
const EPOLL_EVENT: usize = 12;
/// Most events one wait returns (the kernel's limit is INT_MAX / 12; programs ask for
/// a few hundred at most and get the rest on the next wait).
const MAX_EVENTS: u64 = 4096;

impl Process {
    /// A blocking write that may wait for a reader (a pipe, socket or terminal that is
    /// full, or a write larger than PIPE_BUF, which a pipe takes in parts) must not
    /// hold the process: the reader may be another of its threads, and signals to it
    /// must still get through. The bytes are taken from the program now and written
    /// with the process released. None: write now (non-blocking descriptors, files,
    /// small writes that fit).
    pub(crate) fn wait_writable(&mut self, sys: Sysno, a: [u64; 6]) -> Option<Outcome> {
        if !matches!(sys, Sysno::write | Sysno::writev) {
            return None;
        }
        let file = self.fds.get(a[0]).ok()?.file.clone();
        let fl = host::fcntl_int(file.as_fd(), libc::F_GETFL, 0).ok()?;
        if fl & i64::from(libc::O_NONBLOCK) != 0 {
            return None;
        }
        let len = match sys {
            Sysno::write => a[2],
            _ => {
                let v = self.iovecs(a[1], a[2]).ok()?;
                v.iter().map(|&(_, l)| l).fold(0, u64::saturating_add)
            }
        };
        let mut probe = [libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }];
        match host::poll(&mut probe, 0) {
            Ok(1) if probe[0].revents & libc::POLLOUT == 0 => return None, // error or hang-up
            Ok(1) if len <= libc::PIPE_BUF as u64 || host::is_storage(file.as_fd()) => {
                return None;
            }
            Ok(_) => {}
            Err(_) => return None,
        }
        let data = match sys {
            Sysno::write => {
                let mut b = vec![0u8; (len as usize).min(crate::linux::syscall::MAX_IO)];
                if let Err(e) = self.mm.read(GuestVirtAddr(a[1]), &mut b) {
                    return Some(Outcome::Return(e.ret()));
                }
                b
            }
            _ => match self.gather(a[1], a[2]) {
                Ok(b) => b,
                Err(e) => return Some(Outcome::Return(e.ret())),
            },
        };
        Some(Outcome::Block(Block::Write(WriteBlock {
            file,
            data,
            done: 0,
            result: Ok(0),
            cut: false,
        })))
    }

    /// A read that would block (read, readv, recvfrom, recvmsg, accept on a blocking
    /// pipe, socket or terminal with nothing to take) must not hold the process: the
    /// thread that would make it ready could never run, and a signal must interrupt
    /// it. It waits for readiness with the process released, then the call starts
    /// again (as Linux restarts a system call); a signal ends the wait with EINTR, or
    /// restarts the call after the handler with SA_RESTART (`Process::finish_block`).
    /// None: go on with the call now.
    pub(crate) fn wait_readable(
        &mut self,
        task: &crate::linux::thread::Task,
        sys: Sysno,
        a: [u64; 6],
    ) -> Option<Outcome> {
        let dontwait = |flags: u64| flags as i32 & libc::MSG_DONTWAIT != 0;
        let fd = match sys {
            Sysno::read | Sysno::readv | Sysno::accept | Sysno::accept4 => a[0],
            Sysno::recvfrom if !dontwait(a[3]) => a[0],
            Sysno::recvmsg if !dontwait(a[2]) => a[0],
            Sysno::recvmmsg if !dontwait(a[3]) => a[0],
            _ => return None,
        };
        let f = self.fds.get(fd).ok()?;
        if let Some(set) = f.signal_mask
            && (sys != Sysno::read || a[2] < 128 || self.waited_pending(task, set))
        {
            // A signalfd's read too short for a record fails at once; one with a
            // signal to take (the thread's own too, which may have come before the
            // signalfd watched for it) takes it now.
            return None;
        }
        let file = f.file.clone();
        let fl = host::fcntl_int(file.as_fd(), libc::F_GETFL, 0).ok()?;
        if fl & i64::from(libc::O_NONBLOCK) != 0 {
            return None;
        }
        let mut probe = [libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        match host::poll(&mut probe, 0) {
            Ok(0) => {}
            _ => return None, // ready, hung up or in error: the call says which
        }
        let poll = PollBlock {
            va: 0,
            entries: vec![(Some(file), libc::POLLIN, false)],
            deadline: None,
            result: Ok(Vec::new()),
            select: None,
        };
        Some(Outcome::Block(Block::Restart {
            poll,
            nr: sys as u64,
        }))
    }

    /// epoll_create1 (`size` is epoll_create's, which must be positive).
    pub(crate) fn sys_epoll_create(&mut self, flags: u64, size: Option<u64>) -> Result<u64, Errno> {
        if flags & !(libc::EPOLL_CLOEXEC as u64) != 0 || size.is_some_and(|s| s as i32 <= 0) {
            return Err(Errno::EINVAL);
        }
        let ep = host::epoll_create()?;
        self.fds.insert(Fd::new(ep, flags != 0))
    }

    pub(crate) fn sys_epoll_ctl(
        &mut self,
        epfd: u64,
        op: u64,
        fd: u64,
        event: u64,
    ) -> Result<u64, Errno> {
        let ep = self.fds.get(epfd)?.file.clone();
        let target = self.fds.get(fd)?.file.clone();
        let ev = if op as i32 == libc::EPOLL_CTL_DEL {
            None
        } else {
            let mut b = [0u8; EPOLL_EVENT];
            self.mm.read(GuestVirtAddr(event), &mut b)?;
            let events = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let data = u64::from_le_bytes(b[4..12].try_into().unwrap_or_default());
            Some((events, data))
        };
        host::epoll_ctl(ep.as_fd(), op as i32, target.as_fd(), ev).map(|()| 0)
    }

    /// epoll_wait/epoll_pwait/epoll_pwait2: at once when something is ready or the
    /// deadline is now, else a block with the process released.
    pub(crate) fn sys_epoll_wait(
        &mut self,
        epfd: u64,
        va: u64,
        max: u64,
        deadline: Option<Instant>,
    ) -> Outcome {
        let ep = match self.fds.get(epfd) {
            Ok(f) => f.file.clone(),
            Err(e) => return Outcome::Return(e.ret()),
        };
        if max as i32 <= 0 {
            return Outcome::Return(Errno::EINVAL.ret());
        }
        let max = max.min(MAX_EVENTS) as usize;
        // The array must be the program's writable memory before anything is consumed
        // (an edge-triggered event taken here would be lost with EFAULT).
        if let Err(e) = self
            .mm
            .write(GuestVirtAddr(va), &vec![0; max * EPOLL_EVENT])
        {
            return Outcome::Return(e.ret());
        }
        let mut block = EpollBlock {
            epoll: ep,
            va,
            max,
            deadline,
            result: Ok(Vec::new()),
        };
        match host::epoll_wait(block.epoll.as_fd(), max, 0) {
            Ok(evs) if !evs.is_empty() => {
                block.result = Ok(evs);
                return Outcome::Return(self.epoll_done(&block));
            }
            Ok(_) if deadline.is_some_and(|d| d <= Instant::now()) => {
                return Outcome::Return(0);
            }
            Ok(_) => {}
            Err(e) => return Outcome::Return(e.ret()),
        }
        Outcome::Block(Block::Epoll(block))
    }

    /// Write a finished wait's events to the program; the call's result.
    pub(crate) fn epoll_done(&mut self, block: &EpollBlock) -> u64 {
        let evs = match &block.result {
            Ok(evs) => evs,
            Err(e) => return e.ret(),
        };
        let mut out = Vec::with_capacity(evs.len() * EPOLL_EVENT);
        for (events, data) in evs {
            out.extend_from_slice(&events.to_le_bytes());
            out.extend_from_slice(&data.to_le_bytes());
        }
        match self.mm.write(GuestVirtAddr(block.va), &out) {
            Ok(()) => evs.len() as u64,
            Err(e) => e.ret(),
        }
    }

    /// The ioctls programs make on any descriptor: the terminal's (termios, window
    /// size, pseudo-terminal number and lock: [`host::tty_ioctl_arg`]), FIONBIO and
    /// FIONREAD (event loops such as libuv's), FIOCLEX/FIONCLEX (the descriptor flag,
    /// which is the program's own here).
    pub(crate) fn sys_ioctl(&mut self, fd: u64, request: u64, arg: u64) -> Result<u64, Errno> {
        match request {
            libc::FIOCLEX | libc::FIONCLEX => {
                self.fds.get_mut(fd)?.cloexec = request == libc::FIOCLEX;
                Ok(0)
            }
            libc::FIONBIO => {
                let on = self.mm.read_u32(arg)? as i32;
                host::ioctl_int(self.fds.get(fd)?.host(), request, on).map(|_| 0)
            }
            libc::FIONREAD => {
                let n = host::ioctl_int(self.fds.get(fd)?.host(), request, 0)?;
                self.mm.write(GuestVirtAddr(arg), &n.to_le_bytes())?;
                Ok(0)
            }
            // Sessions are the program's own: a session leader's terminal is recorded
            // in the guest's process table, never made lbrprof's.
            libc::TIOCSCTTY => {
                let (rdev, path) = self.terminal_on(fd)?;
                self.kernel
                    .acquire_terminal(self.pid, rdev, path)
                    .map(|()| 0)
            }
            libc::TIOCNOTTY | libc::TIOCGSID => {
                let (rdev, _) = self.terminal_on(fd)?;
                let outside = self.kernel.outside_session();
                let sid = match self.kernel.terminal(rdev) {
                    Some((sid, _)) if self.kernel.sid(self.pid) == Some(sid) => sid,
                    Some(_) => return Err(Errno(libc::ENOTTY)),
                    // lbrprof's terminal (the host answers ENOTTY for any other), whose
                    // TIOCNOTTY is granted without detaching lbrprof.
                    None if self.kernel.controlling(self.pid) == Controlling::Outside => {
                        host::ioctl_int(self.fds.get(fd)?.host(), libc::TIOCGPGRP, 0)?;
                        outside
                    }
                    None => return Err(Errno(libc::ENOTTY)),
                };
                if request == libc::TIOCGSID {
                    self.mm
                        .write(GuestVirtAddr(arg), &(sid as u32).to_le_bytes())?;
                } else if sid != outside {
                    self.kernel.release_terminal(self.pid, rdev)?;
                }
                Ok(0)
            }
            // Job control. On a terminal a session of the program's acquired, the
            // foreground group is in the guest's process table; on lbrprof's controlling
            // terminal (the host answers ENOTTY for any other descriptor) it is the
            // guest's own too (its pgids are not the host's). No SIGTTOU for a background
            // caller: shells block or ignore it around these calls.
            libc::TIOCGPGRP | libc::TIOCSPGRP => {
                let guest = self.guest_terminal(fd);
                match &guest {
                    Some((sid, _)) if request == libc::TIOCGPGRP => {
                        if self.kernel.sid(self.pid) != Some(*sid) {
                            return Err(Errno(libc::ENOTTY));
                        }
                    }
                    Some(_) => {}
                    None => {
                        host::ioctl_int(self.fds.get(fd)?.host(), libc::TIOCGPGRP, 0)?;
                    }
                }
                if request == libc::TIOCGPGRP {
                    let g = guest.map_or_else(|| self.kernel.foreground(), |(_, t)| t.foreground);
                    self.mm
                        .write(GuestVirtAddr(arg), &(g as u32).to_le_bytes())?;
                    return Ok(0);
                }
                let g = self.mm.read_u32(arg)? as i32;
                if g < 0 {
                    return Err(Errno::EINVAL);
                }
                match guest {
                    Some((_, t)) => self
                        .kernel
                        .set_terminal_foreground(self.pid, t.rdev, g as u64),
                    None => self.kernel.set_foreground(g as u64),
                }
                .map(|()| 0)
            }
            _ => {
                let file = self.fds.get(fd)?.host();
                let (size, out) = host::tty_ioctl_arg(request).ok_or(Errno(libc::ENOTTY))?;
                let mut b = vec![0u8; size];
                if !out {
                    self.mm.read(GuestVirtAddr(arg), &mut b)?;
                }
                host::tty_ioctl(file, request, &mut b)?;
                if out {
                    self.mm.write(GuestVirtAddr(arg), &b)?;
                }
                Ok(0)
            }
        }
    }

    /// The device number and host path of the terminal open on `fd`; ENOTTY for a
    /// descriptor that is not a terminal.
    pub(crate) fn terminal_on(&self, fd: u64) -> Result<(u64, std::path::PathBuf), Errno> {
        host::terminal(self.fds.get(fd)?.host())
    }

    /// The session that has the terminal open on `fd` as its controlling one, and the
    /// terminal, when that is a session of the program's own.
    fn guest_terminal(&self, fd: u64) -> Option<(u64, Terminal)> {
        let (kind, rdev) = host::file_kind(self.fds.get(fd).ok()?.host()).ok()?;
        (kind == libc::S_IFCHR)
            .then(|| self.kernel.terminal(rdev))
            .flatten()
    }

    pub(crate) fn sys_eventfd(&mut self, initval: u64, flags: u64) -> Result<u64, Errno> {
        let known = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE;
        let flags = flags as i32;
        if flags & !known != 0 {
            return Err(Errno::EINVAL);
        }
        let f = host::eventfd(initval as u32, flags)?;
        self.fds.insert(Fd::new(f, flags & libc::EFD_CLOEXEC != 0))
    }

    pub(crate) fn sys_timerfd_create(&mut self, clock: u64, flags: u64) -> Result<u64, Errno> {
        let flags = flags as i32;
        if flags & !(libc::TFD_CLOEXEC | libc::TFD_NONBLOCK) != 0 {
            return Err(Errno::EINVAL);
        }
        let f = host::timerfd_create(clock as i32, flags)?;
        self.fds.insert(Fd::new(f, flags & libc::TFD_CLOEXEC != 0))
    }

    fn read_itimerspec(&self, va: u64) -> Result<host::Itimerspec, Errno> {
        let mut b = [0u8; 32];
        self.mm.read(GuestVirtAddr(va), &mut b)?;
        let mut t = [0i64; 4];
        for (i, v) in t.iter_mut().enumerate() {
            *v = i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        }
        Ok(t)
    }

    fn write_itimerspec(&self, va: u64, t: &host::Itimerspec) -> Result<(), Errno> {
        let mut b = [0u8; 32];
        for (i, v) in t.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        self.mm.write(GuestVirtAddr(va), &b)
    }

    pub(crate) fn sys_timerfd_settime(
        &mut self,
        fd: u64,
        flags: u64,
        new: u64,
        old: u64,
    ) -> Result<u64, Errno> {
        let f = self.fds.get(fd)?.file.clone();
        let want = self.read_itimerspec(new)?;
        let was = host::timerfd_settime(f.as_fd(), flags as i32, &want)?;
        if old != 0 {
            self.write_itimerspec(old, &was)?;
        }
        Ok(0)
    }

    pub(crate) fn sys_timerfd_gettime(&mut self, fd: u64, cur: u64) -> Result<u64, Errno> {
        let f = self.fds.get(fd)?.file.clone();
        let t = host::timerfd_gettime(f.as_fd())?;
        self.write_itimerspec(cur, &t)?;
        Ok(0)
    }
}
