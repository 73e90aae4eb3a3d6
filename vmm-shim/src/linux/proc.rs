//! Processes of a Linux program: what the guest processes of one VM share (the shim's
//! "kernel" state beside each [`Process`](super::Process)).
//!
//! The process model:
//! * a guest process is a [`Process`](super::Process): its own address space (own page
//!   tables, twin roots, trap area) drawn from the VM's one [`FramePool`], its own
//!   descriptor table, signal dispositions, working directory;
//! * each thread of a process is a vCPU on a host thread (see [`super::thread`]); a
//!   `fork` (or a `clone` without `CLONE_VM`) copies the address space
//!   ([`AddressSpace::fork`](super::mm::AddressSpace::fork)) and starts the child's
//!   thread on a vCPU of its own; a `vfork` (`CLONE_VM | CLONE_VFORK`) lends the child
//!   the parent's address space until the child execs or ends, the parent waiting;
//!   `execve` replaces the calling process's address space and keeps its vCPU, pid and
//!   descriptors (those without close-on-exec);
//! * vCPUs whose thread ended wait for the next thread or process to run, so a shell
//!   script that starts a thousand commands does not need a thousand vCPUs;
//! * this [`Kernel`] holds what crosses processes: process ids, parents, exit statuses
//!   of children not yet waited for (zombies), the waiters in `wait4`/`waitid`, and
//!   signals sent from one process to another.
//!
//! Lock order: a process's lock, then the kernel's table (or its shared futexes, or its
//! shared-file registry). Nothing holding one of those takes a process lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::linux::clock::Clock;
use crate::linux::errno::Errno;
use crate::linux::mm::FramePool;
use crate::linux::report::LinuxReport;
use crate::linux::shm::ShmFiles;
use crate::linux::signal::{SI_KERNEL, SI_USER, SigInfo, SigPending, child_code};
use crate::linux::thread::Futexes;
use crate::linux::usage::Usage;
use crate::linux::waiter::Waiter;

/// What every process of a VM shares.
#[derive(Debug)]
pub struct Kernel {
    pub frames: FramePool,
    /// The VM's first process (its end is the run's end).
    first: u64,
    table: Mutex<Table>,
    next_space: AtomicU32,
    /// What ended processes reported (their system calls, mappings...), merged.
    finished: Mutex<LinuxReport>,
    /// The first process's parent, outside the VM (what `getppid` tells a process
    /// whose parent is not a guest process).
    outside_parent: u64,
    /// The clocks every process reads ([`Clock::pinned`] in exact mode).
    pub clock: Clock,
    /// The vDSO every process maps (None: no vDSO, as for [`super::Process::bare`]).
    pub vdso: Option<crate::linux::vdso::Vdso>,
    /// The foreground process group of the program's controlling terminal, as the
    /// program sees it (TIOCGPGRP/TIOCSPGRP): the first process's at the start, as a
    /// shell makes a job it runs in the foreground. The host terminal's stays lbrprof's.
    foreground: AtomicU64,
    /// The session the first process starts in, whose terminal is lbrprof's.
    outside_session: u64,
    /// The shared objects of the host files mapped `MAP_SHARED` ([`crate::linux::shm`]).
    pub shm: ShmFiles,
    /// System V shared memory segments ([`crate::linux::sysv`]).
    pub sysv: crate::linux::sysv::Segments,
    /// Futexes in shared memory, keyed by the word's guest-physical address: waits
    /// and wakes from every process meet here (under this lock, as a process's own
    /// futexes meet under the process's lock).
    futexes: Mutex<Futexes>,
}

/// The first process's id when pids are pinned (exact mode), so that every run
/// numbers its processes and threads alike: 1000, then 1001, 1002... as they are made.
pub const PINNED_PID: u64 = 1000;

/// The first process's parent when pids are pinned (not a guest process: signals to
/// it fail with ESRCH, as to a process outside a pid namespace).
pub const PINNED_PARENT: u64 = 999;

#[derive(Debug)]
struct Table {
    next_id: u64,
    procs: BTreeMap<u64, Entry>,
    /// The controlling terminals of sessions the program made (`setsid`, then
    /// `TIOCSCTTY` or an open of a terminal), by session id. The session the first
    /// process starts in has lbrprof's terminal, which is not in here.
    terminals: BTreeMap<u64, Terminal>,
}

/// A terminal a guest session made its controlling terminal: a pseudo-terminal the
/// program opened (`forkpty`, `script`, pexpect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminal {
    /// Its device number (`st_rdev`), which names it whichever descriptor is used.
    pub rdev: u64,
    /// Where the host has it (what `/dev/tty` opens in its session).
    pub path: std::path::PathBuf,
    /// Its foreground process group (TIOCGPGRP/TIOCSPGRP).
    pub foreground: u64,
}

/// The controlling terminal of a process's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Controlling {
    /// The session the program started in: lbrprof's terminal, if it has one.
    Outside,
    /// A terminal a session of the program's own acquired.
    Guest(Terminal),
    /// None: a session made with `setsid` that has not acquired one yet.
    Detached,
}

/// One process, as other processes see it.
#[derive(Debug)]
struct Entry {
    ppid: u64,
    pgid: u64,
    /// Its session.
    sid: u64,
    /// The wait status once the process ended (a zombie until its parent waits).
    status: Option<i32>,
    /// Its tasks blocked in wait4/waitid.
    waiters: Vec<Arc<Waiter>>,
    shared: Arc<Shared>,
}

/// What other processes may change in a process without its lock.
#[derive(Debug, Default)]
pub struct Shared {
    /// Signals sent to the process (bit `n - 1` for signal `n`): the set of `queue`,
    /// taken by whichever thread that does not block them runs next.
    pub signals: AtomicU64,
    /// The process ended (exit_group, a fatal signal): its other threads stop.
    pub dead: AtomicBool,
    /// execve calls from a threaded process: each ends every thread but the caller.
    pub execs: AtomicU64,
    /// The host threads of its vCPUs, by thread id: a signal from another process
    /// kicks them out of the guest so that it is delivered at once.
    pub vcpus: Mutex<BTreeMap<u64, libc::pthread_t>>,
    /// Its threads blocked in a call a signal interrupts (sleeps, futex waits, polls,
    /// reads, waits for children, rt_sigsuspend).
    pub sleepers: Mutex<BTreeMap<u64, Arc<Waiter>>>,
    /// The signals sent to the process, each instance with its sender's info
    /// (`signals` is its set, kept with it under this lock, to be read without it).
    pub queue: Mutex<SigPending>,
    /// Its signalfds: each one's signals and its host eventfd, made readable when one
    /// of them is sent ([`crate::linux::signalfd`]).
    pub signalfds: Mutex<Vec<(u64, std::sync::Weak<std::os::fd::OwnedFd>)>>,
    /// The signal it is sent when its parent ends (`prctl(PR_SET_PDEATHSIG)`; 0: none).
    pub pdeathsig: AtomicU64,
    /// Signals that came to it from outside the VM, passed on by lbrprof (bit `n - 1`
    /// for signal `n`), and those of them from lbrprof's terminal.
    pub outside_sent: AtomicU64,
    pub outside_terminal: AtomicU64,
    /// What it used of the CPU and memory (and its reaped children).
    pub accounts: crate::linux::usage::Accounts,
    /// What its `/proc/PID` directory shows the other processes ([`Shown`]).
    pub shown: Mutex<Shown>,
}

/// What `/proc/PID` says of a process to the others, who cannot take its lock: a copy
/// the process keeps current where it changes (thread start and end, `prctl`'s name,
/// exec, fork, its end) and, for its memory, when that is cheap (the same events, and
/// whenever it reads `/proc` itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    /// Its live threads, by id, with their names (`comm`, NUL-padded).
    pub threads: BTreeMap<u64, [u8; 16]>,
    /// Its arguments as exec gave them (NUL-terminated strings; `/proc/PID/cmdline`).
    pub cmdline: Vec<u8>,
    /// Its mappings' sizes.
    pub vm: VmSizes,
    /// Its program's absolute path (`/proc/PID/exe`).
    pub exe: Vec<u8>,
    /// The signals it ignores and those it handles (bit `n - 1` for signal `n`).
    pub ignored: u64,
    pub caught: u64,
}

/// The sizes of an address space's mappings, in bytes, as `/proc/PID/status` and
/// `statm` give them (Linux's `VmSize`, `VmExe`...).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmSizes {
    /// Every mapping.
    pub size: u64,
    /// The largest `size` has been.
    pub peak: u64,
    /// Private writable mappings other than the stack (`VmData`).
    pub data: u64,
    /// The main thread's stack.
    pub stack: u64,
    /// Executable mappings of the program's file.
    pub exe: u64,
    /// Executable mappings of other files (shared libraries).
    pub lib: u64,
    /// Mappings of files.
    pub file: u64,
}

impl Shared {
    /// Whether `task` must stop: its process ended, or another thread of it called
    /// execve since `task` started.
    pub fn ended(&self, task: &crate::linux::thread::Task) -> bool {
        self.dead.load(Ordering::Acquire) || self.superseded(task)
    }

    /// The signals that came to it from outside the VM so far.
    pub fn from_outside(&self) -> crate::linux::signal::FromOutside {
        crate::linux::signal::FromOutside {
            sent: self.outside_sent.load(Ordering::Acquire),
            terminal: self.outside_terminal.load(Ordering::Acquire),
        }
    }

    /// Note `sig` (1..=64) as sent to the process by process `sender` (SI_USER, with
    /// the sender's pid and uid, as `kill` tells the handler), and kick its vCPUs out
    /// of the guest: the first back takes it
    /// ([`crate::linux::Process::deliver_async`]).
    pub fn post(&self, sig: u64, sender: u64) {
        if (1..=64).contains(&sig) {
            self.post_info(SigInfo {
                signo: sig as i32,
                code: SI_USER,
                word: sender | (crate::linux::host::ids()[2] << 32),
                ..SigInfo::default()
            });
        }
    }

    /// [`Self::post`] with what the handler is told; false when the signal was not
    /// queued (a standard signal already pending).
    pub fn post_info(&self, info: SigInfo) -> bool {
        let queued = {
            let mut q = self.queue();
            let queued = q.push(info);
            self.signals.store(q.set(), Ordering::Release);
            queued
        };
        self.wake_signalfds(1u64 << ((info.signo as u64).clamp(1, 64) - 1));
        self.kick();
        queued
    }

    /// Make the signalfds that watch any of `set` readable.
    pub fn wake_signalfds(&self, set: u64) {
        let mut fds = self.signalfds.lock().unwrap_or_else(|e| e.into_inner());
        fds.retain(|(_, f)| f.strong_count() > 0);
        for (mask, f) in fds.iter() {
            if mask & set != 0
                && let Some(f) = f.upgrade()
            {
                crate::linux::host::eventfd_signal(&f);
            }
        }
    }

    /// Take one pending instance of a signal of `set` (a signalfd's read).
    pub fn take_one(&self, set: u64) -> Option<SigInfo> {
        let mut q = self.queue();
        let sig = q.next(!set)?;
        let info = q.take(sig);
        self.signals.store(q.set(), Ordering::Release);
        info
    }

    /// Drop the queued instance of POSIX timer `id`'s signal ([`SigPending::drop_timer`]).
    pub fn drop_timer(&self, id: u32) {
        let mut q = self.queue();
        q.drop_timer(id);
        self.signals.store(q.set(), Ordering::Release);
    }

    fn queue(&self) -> MutexGuard<'_, SigPending> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kick the process's vCPUs out of the guest and wake its sleepers, for a signal.
    fn kick(&self) {
        for &t in self.vcpus().values() {
            crate::kick::kick_thread(t);
        }
        for w in self.sleepers().values() {
            w.wake();
        }
    }

    pub(crate) fn sleepers(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Waiter>>> {
        self.sleepers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the signals sent to the process that a thread with signal mask `mask`
    /// accepts, every instance with its info (the others stay for a thread that does
    /// not block them).
    pub fn take(&self, mask: u64) -> SigPending {
        if self.signals.load(Ordering::Acquire) & !mask == 0 {
            return SigPending::default();
        }
        let mut q = self.queue();
        let taken = q.take_unblocked(mask);
        self.signals.store(q.set(), Ordering::Release);
        taken
    }

    pub(crate) fn vcpus(&self) -> MutexGuard<'_, BTreeMap<u64, libc::pthread_t>> {
        self.vcpus.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another thread's execve ended `task`.
    pub fn superseded(&self, task: &crate::linux::thread::Task) -> bool {
        self.execs.load(Ordering::Acquire) != task.exec_gen
    }

    /// What `/proc/PID` shows of the process ([`Shown`]).
    pub fn shown(&self) -> MutexGuard<'_, Shown> {
        self.shown.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A signal lbrprof received, for the guest's processes
/// ([`Kernel::signal_from_outside`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsideSignal {
    /// 1..=64.
    pub signo: i32,
    /// The terminal sent it (`si_code` SI_KERNEL: Ctrl-C, `Ctrl-\`, a hang-up) to its
    /// foreground process group; otherwise a process sent it to lbrprof (`kill`).
    pub from_terminal: bool,
}

/// Which children a wait is for (`wait4`'s pid argument, `waitid`'s idtype and id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    Any,
    Pid(u64),
    Group(u64),
}

/// The wait status of a process that exited with `code` (what `WEXITSTATUS` reads).
pub fn exited(code: i32) -> i32 {
    (code & 0xff) << 8
}

/// The wait status of a process killed by `signal` (what `WTERMSIG` reads).
pub fn killed(signal: i32) -> i32 {
    signal & 0x7f
}

impl Kernel {
    /// The kernel of a VM whose first process has id `pid`.
    pub fn new(frames: FramePool, pid: u64, ppid: u64, shared: Arc<Shared>) -> Kernel {
        let mut procs = BTreeMap::new();
        procs.insert(
            pid,
            Entry {
                ppid,
                pgid: pid,
                sid: pid,
                status: None,
                waiters: Vec::new(),
                shared,
            },
        );
        Kernel {
            frames,
            first: pid,
            table: Mutex::new(Table {
                next_id: pid + 1,
                procs,
                terminals: BTreeMap::new(),
            }),
            next_space: AtomicU32::new(1),
            finished: Mutex::new(LinuxReport::default()),
            outside_parent: ppid,
            clock: Clock::host(),
            vdso: None,
            foreground: AtomicU64::new(pid),
            outside_session: pid,
            shm: ShmFiles::default(),
            sysv: Default::default(),
            futexes: Mutex::default(),
        }
    }

    /// Start the first process in process group `pgid` of session `sid` rather than as
    /// the leader of both: where it would be run on the host (lbrprof's own group and
    /// session), so that `setsid` and job control see what they would natively.
    pub fn in_session(mut self, pgid: u64, sid: u64) -> Kernel {
        let t = self.table.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = t.procs.get_mut(&self.first) {
            e.pgid = pgid;
            e.sid = sid;
        }
        *self.foreground.get_mut() = pgid;
        self.outside_session = sid;
        self
    }

    /// The wait queues of futexes in shared memory (see the field).
    pub fn futexes(&self) -> MutexGuard<'_, Futexes> {
        self.futexes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The terminal's foreground process group, as the program sees it.
    pub fn foreground(&self) -> u64 {
        self.foreground.load(Ordering::Acquire)
    }

    /// TIOCSPGRP: make `pgid` the foreground group; ESRCH when no process is in it.
    pub fn set_foreground(&self, pgid: u64) -> Result<(), Errno> {
        let t = self.table();
        if !t
            .procs
            .values()
            .any(|e| e.pgid == pgid && e.status.is_none())
        {
            return Err(Errno(libc::ESRCH));
        }
        self.foreground.store(pgid, Ordering::Release);
        Ok(())
    }

    /// This kernel with `clock` for its processes.
    pub fn with_clock(mut self, clock: Clock) -> Kernel {
        self.clock = clock;
        self
    }

    /// This kernel with `vdso` for its processes.
    pub fn with_vdso(mut self, vdso: Option<crate::linux::vdso::Vdso>) -> Kernel {
        self.vdso = vdso;
        self
    }

    /// The first process's parent outside the VM.
    pub fn outside_parent(&self) -> u64 {
        self.outside_parent
    }

    /// Whether `pid` is a guest process (running, or ended and not yet waited for).
    pub fn exists(&self, pid: u64) -> bool {
        self.table().procs.contains_key(&pid)
    }

    /// The guest processes (running, and zombies), in pid order.
    pub fn pids(&self) -> Vec<u64> {
        self.table().procs.keys().copied().collect()
    }

    /// Whether `pid` ended and waits to be reaped (None: no such process).
    pub fn is_zombie(&self, pid: u64) -> Option<bool> {
        self.table().procs.get(&pid).map(|e| e.status.is_some())
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh thread or process id.
    pub fn new_id(&self) -> u64 {
        let mut t = self.table();
        let id = t.next_id;
        t.next_id += 1;
        id
    }

    /// A fresh address-space id (0 is the first process's).
    pub fn new_space(&self) -> u32 {
        self.next_space.fetch_add(1, Ordering::Relaxed)
    }

    /// Enter process `pid` (a new child of `ppid`, in process group `pgid`).
    pub fn add(&self, pid: u64, ppid: u64, pgid: u64, shared: Arc<Shared>) {
        let mut t = self.table();
        let sid = t.procs.get(&ppid).map_or(self.outside_session, |p| p.sid);
        t.procs.insert(
            pid,
            Entry {
                ppid,
                pgid,
                sid,
                status: None,
                waiters: Vec::new(),
                shared,
            },
        );
    }

    /// The parent of `pid` (None for the first process or an unknown id).
    pub fn parent(&self, pid: u64) -> Option<u64> {
        let t = self.table();
        let ppid = t.procs.get(&pid)?.ppid;
        t.procs.contains_key(&ppid).then_some(ppid)
    }

    /// The process group of `pid`.
    pub fn pgid(&self, pid: u64) -> Option<u64> {
        self.table().procs.get(&pid).map(|e| e.pgid)
    }

    /// What other processes may change in process `pid` (running or a zombie).
    pub fn shared_of(&self, pid: u64) -> Option<Arc<Shared>> {
        self.table().procs.get(&pid).map(|e| e.shared.clone())
    }

    /// The session of `pid`.
    pub fn sid(&self, pid: u64) -> Option<u64> {
        self.table().procs.get(&pid).map(|e| e.sid)
    }

    /// `setsid()` by `pid`: a new session and process group, both named by `pid`, with
    /// no controlling terminal. EPERM for a process group leader (a group named by its
    /// id exists), which could otherwise leave its group split across two sessions.
    pub fn set_sid(&self, pid: u64) -> Result<u64, Errno> {
        let mut t = self.table();
        if t.procs.values().any(|e| e.pgid == pid) {
            return Err(Errno(libc::EPERM));
        }
        let e = t.procs.get_mut(&pid).ok_or(Errno(libc::ESRCH))?;
        e.pgid = pid;
        e.sid = pid;
        Ok(pid)
    }

    /// The session the first process started in (lbrprof's terminal's).
    pub fn outside_session(&self) -> u64 {
        self.outside_session
    }

    /// The controlling terminal of `pid`'s session.
    pub fn controlling(&self, pid: u64) -> Controlling {
        let t = self.table();
        let sid = t.procs.get(&pid).map_or(self.outside_session, |e| e.sid);
        if sid == self.outside_session {
            return Controlling::Outside;
        }
        t.terminals
            .get(&sid)
            .map_or(Controlling::Detached, |c| Controlling::Guest(c.clone()))
    }

    /// The session that has the terminal `rdev` as its controlling one, and that
    /// terminal.
    pub fn terminal(&self, rdev: u64) -> Option<(u64, Terminal)> {
        let t = self.table();
        t.terminals
            .iter()
            .find(|(_, c)| c.rdev == rdev)
            .map(|(&sid, c)| (sid, c.clone()))
    }

    /// Session leader `pid` makes terminal `rdev` (at `path` on the host) its session's
    /// controlling terminal (`TIOCSCTTY`, or opening it without `O_NOCTTY`). EPERM
    /// when `pid` leads no session of the program's, when its session has another
    /// terminal or when another session has this one.
    pub fn acquire_terminal(
        &self,
        pid: u64,
        rdev: u64,
        path: std::path::PathBuf,
    ) -> Result<(), Errno> {
        let mut t = self.table();
        let e = t.procs.get(&pid).ok_or(Errno(libc::ESRCH))?;
        let (sid, pgid) = (e.sid, e.pgid);
        if sid != pid || sid == self.outside_session {
            return Err(Errno(libc::EPERM));
        }
        match t.terminals.iter().find(|(_, c)| c.rdev == rdev) {
            Some((&owner, _)) if owner == sid => return Ok(()),
            Some(_) => return Err(Errno(libc::EPERM)),
            None => {}
        }
        if t.terminals.contains_key(&sid) {
            return Err(Errno(libc::EPERM));
        }
        t.terminals.insert(
            sid,
            Terminal {
                rdev,
                path,
                foreground: pgid,
            },
        );
        Ok(())
    }

    /// `TIOCNOTTY` on terminal `rdev` by `pid`: ENOTTY unless it is the controlling
    /// terminal of `pid`'s session; a session leader's session gives it up.
    pub fn release_terminal(&self, pid: u64, rdev: u64) -> Result<(), Errno> {
        let mut t = self.table();
        let sid = t.procs.get(&pid).ok_or(Errno(libc::ESRCH))?.sid;
        if t.terminals.get(&sid).is_none_or(|c| c.rdev != rdev) {
            return Err(Errno(libc::ENOTTY));
        }
        if sid == pid {
            t.terminals.remove(&sid);
        }
        Ok(())
    }

    /// `TIOCSPGRP` on terminal `rdev` by `pid`: ENOTTY unless it is the controlling
    /// terminal of `pid`'s session; EPERM unless `pgid` is a process group of that
    /// session.
    pub fn set_terminal_foreground(&self, pid: u64, rdev: u64, pgid: u64) -> Result<(), Errno> {
        let mut t = self.table();
        let sid = t.procs.get(&pid).ok_or(Errno(libc::ESRCH))?.sid;
        if !t
            .procs
            .values()
            .any(|e| e.pgid == pgid && e.sid == sid && e.status.is_none())
        {
            return Err(Errno(libc::EPERM));
        }
        match t.terminals.get_mut(&sid) {
            Some(c) if c.rdev == rdev => {
                c.foreground = pgid;
                Ok(())
            }
            _ => Err(Errno(libc::ENOTTY)),
        }
    }

    /// `setpgid(pid, pgid)`: `pid` must be the caller or one of its children.
    /// EPERM for a session leader, a child in another session, or a group that does
    /// not exist in the session (other than `pid`'s own new one).
    pub fn set_pgid(&self, caller: u64, pid: u64, pgid: u64) -> Result<(), Errno> {
        let mut t = self.table();
        let caller_sid = t.procs.get(&caller).map(|e| e.sid);
        let e = t.procs.get(&pid).ok_or(Errno(libc::ESRCH))?;
        if pid != caller && e.ppid != caller {
            return Err(Errno(libc::ESRCH));
        }
        let sid = e.sid;
        let group_exists = t.procs.values().any(|x| x.pgid == pgid && x.sid == sid);
        if sid == pid || Some(sid) != caller_sid || (pgid != pid && !group_exists) {
            return Err(Errno(libc::EPERM));
        }
        if let Some(e) = t.procs.get_mut(&pid) {
            e.pgid = pgid;
        }
        Ok(())
    }

    /// Process `pid` ended with wait status `status`: its parent can reap it (and is
    /// woken, and sent SIGCHLD), its children lose their parent.
    pub fn exit(&self, pid: u64, status: i32) {
        let mut t = self.table();
        let Some(e) = t.procs.get_mut(&pid) else {
            return;
        };
        e.status = Some(status);
        e.shared.dead.store(true, Ordering::Release);
        let ppid = e.ppid;
        // A session leader's end hangs up its terminal: the foreground group is sent
        // SIGHUP and SIGCONT, and the session has no terminal any more.
        if let Some(c) = t.terminals.remove(&pid) {
            for e in t.procs.values() {
                if e.pgid == c.foreground && e.sid == pid && e.status.is_none() {
                    for signo in [libc::SIGHUP, libc::SIGCONT] {
                        e.shared.post_info(SigInfo {
                            signo,
                            code: SI_KERNEL,
                            ..SigInfo::default()
                        });
                    }
                }
            }
        }
        // Orphans: nobody will wait for them; a finished one goes at once.
        let orphans: Vec<u64> = t
            .procs
            .iter()
            .filter(|(_, c)| c.ppid == pid)
            .map(|(&c, _)| c)
            .collect();
        for c in orphans {
            if t.procs.get(&c).is_some_and(|c| c.status.is_some()) {
                t.procs.remove(&c);
            } else if let Some(c) = t.procs.get_mut(&c) {
                c.ppid = 0;
                // Its parent-death signal, from the parent (SI_USER, as Linux's
                // forget_original_parent sends it).
                let sig = c.shared.pdeathsig.load(Ordering::Acquire);
                if sig != 0 {
                    c.shared.post(sig, pid);
                }
            }
        }
        match t.procs.get_mut(&ppid) {
            Some(p) if p.status.is_none() => {
                // SIGCHLD interrupts what the parent waits in when it handles it. It
                // says which child ended and how (si_pid, si_uid, si_status).
                let (code, child_status) = child_code(status);
                p.shared.post_info(SigInfo {
                    signo: libc::SIGCHLD,
                    code,
                    word: pid | (crate::linux::host::ids()[2] << 32),
                    value: child_status as u32 as u64,
                    ..SigInfo::default()
                });
                for w in p.waiters.drain(..) {
                    w.wake();
                }
            }
            _ => {
                t.procs.remove(&pid);
            }
        }
    }

    /// A child of `parent` that `which` selects and that has ended: its id, status and
    /// what it used (with its reaped children), reaped unless `keep` (then what it used
    /// counts as `parent`'s children's). None when children selected exist but none has ended
    /// (and then `waiter` is queued to be woken when one does); ECHILD when there is
    /// no such child.
    pub fn reap(
        &self,
        parent: u64,
        which: WaitFor,
        keep: bool,
        waiter: Option<&Arc<Waiter>>,
    ) -> Result<Option<(u64, i32, Usage)>, Errno> {
        let mut t = self.table();
        let pgid = t.procs.get(&parent).map_or(0, |e| e.pgid);
        let selected = |pid: u64, e: &Entry| {
            e.ppid == parent
                && match which {
                    WaitFor::Any => true,
                    WaitFor::Pid(p) => p == pid,
                    WaitFor::Group(0) => e.pgid == pgid,
                    WaitFor::Group(g) => e.pgid == g,
                }
        };
        let mut any = false;
        let mut done = None;
        for (&pid, e) in &t.procs {
            if selected(pid, e) {
                any = true;
                if let Some(s) = e.status {
                    done = Some((pid, s, e.shared.accounts.with_children()));
                    break;
                }
            }
        }
        if !any {
            return Err(Errno(libc::ECHILD));
        }
        if let Some((pid, _, used)) = done {
            if !keep {
                t.procs.remove(&pid);
                if let Some(p) = t.procs.get(&parent) {
                    p.shared.accounts.add_child(used);
                }
            }
            return Ok(done);
        }
        if let (Some(w), Some(p)) = (waiter, t.procs.get_mut(&parent)) {
            w.reset();
            p.waiters.push(w.clone());
        }
        Ok(None)
    }

    /// Send `sig` from process `sender` to process `pid` (0: only check it exists).
    /// False if there is none (or it has ended).
    /// Post `info` to process `pid` (sigqueue); false when there is no such process.
    pub fn signal_info(&self, pid: u64, info: SigInfo) -> bool {
        let t = self.table();
        match t.procs.get(&pid) {
            Some(e) if e.status.is_none() => {
                e.shared.post_info(info);
                true
            }
            _ => false,
        }
    }

    pub fn signal(&self, pid: u64, sig: u64, sender: u64) -> bool {
        let t = self.table();
        match t.procs.get(&pid) {
            Some(e) if e.status.is_none() => {
                e.shared.post(sig, sender);
                true
            }
            _ => false,
        }
    }

    /// Deliver `signal`, sent to lbrprof from outside the VM, as it would have reached
    /// the program run on the host: one from the terminal (Ctrl-C, `Ctrl-\`, a hang-up)
    /// goes to the whole foreground process group, which is every guest process still
    /// running; one sent to lbrprof alone (`kill`) to the program's first process.
    /// The handler is told SI_KERNEL for the terminal's, SI_USER otherwise, with
    /// `si_pid` 0 as Linux gives a sender outside the receiver's pid namespace. The
    /// number of processes it reached.
    pub fn signal_from_outside(&self, signal: OutsideSignal) -> usize {
        let info = SigInfo {
            signo: signal.signo,
            code: if signal.from_terminal {
                SI_KERNEL
            } else {
                SI_USER
            },
            word: if signal.from_terminal {
                0
            } else {
                crate::linux::host::ids()[2] << 32
            },
            ..SigInfo::default()
        };
        let t = self.table();
        let mut reached = 0;
        for (&pid, e) in &t.procs {
            if e.status.is_none() && (signal.from_terminal || pid == self.first) {
                let bit = 1u64
                    .checked_shl((signal.signo as u32).wrapping_sub(1))
                    .unwrap_or(0);
                let mask = if signal.from_terminal {
                    &e.shared.outside_terminal
                } else {
                    &e.shared.outside_sent
                };
                mask.fetch_or(bit, Ordering::AcqRel);
                e.shared.post_info(info);
                reached += 1;
            }
        }
        reached
    }

    /// The processes of group `pgid` still running.
    pub fn group(&self, pgid: u64) -> Vec<u64> {
        self.table()
            .procs
            .iter()
            .filter(|(_, e)| e.pgid == pgid && e.status.is_none())
            .map(|(&p, _)| p)
            .collect()
    }

    /// Merge what an ended process reports into the run's report.
    pub fn absorb(&self, r: LinuxReport) {
        let mut f = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        f.syscalls += r.syscalls;
        for (k, v) in r.unimplemented {
            *f.unimplemented.entry(k).or_insert(0) += v;
        }
        f.maps.extend(r.maps);
        f.out_of_memory = f.out_of_memory.or(r.out_of_memory);
        f.peak_bytes = f.peak_bytes.max(r.peak_bytes);
        f.trap_ns += r.trap_ns;
        f.demand_faults += r.demand_faults;
        f.fault_ns += r.fault_ns;
        f.threads += r.threads;
        f.processes += r.processes;
        f.execs += r.execs;
    }

    /// The guest processes that have not ended (the first one's exit ends the run, and
    /// with it any process it left behind), in pid order.
    pub fn still_running(&self) -> Vec<u64> {
        self.table()
            .procs
            .iter()
            .filter(|(_, e)| e.status.is_none())
            .map(|(&p, _)| p)
            .collect()
    }

    /// What ended processes reported, merged.
    pub fn finished(&self) -> LinuxReport {
        std::mem::take(&mut *self.finished.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::mm::Frames;
    use crate::linux::signal::SI_TIMER;

    /// `Kernel::reap`'s id and status.
    fn reaped(
        k: &Kernel,
        parent: u64,
        which: WaitFor,
        keep: bool,
        waiter: Option<&Arc<Waiter>>,
    ) -> Result<Option<(u64, i32)>, Errno> {
        k.reap(parent, which, keep, waiter)
            .map(|r| r.map(|(pid, status, _)| (pid, status)))
    }

    fn kernel() -> Kernel {
        let pool = Arc::new(Mutex::new(Frames::empty()));
        Kernel::new(pool, 100, 1, Arc::default())
    }

    #[test]
    fn a_thread_takes_only_the_process_signals_it_does_not_block() {
        let s = Shared::default();
        s.post(10, 7);
        s.post(15, 7);
        // A thread blocking SIGUSR1 (bit 9) takes SIGTERM only.
        assert_eq!(s.take(1 << 9).set(), 1 << 14);
        assert_eq!(s.take(1 << 9).set(), 0);
        assert_eq!(s.take(0).set(), 1 << 9);
        assert_eq!(s.signals.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_signals_info_travels_with_it_and_realtime_ones_queue() {
        let s = Shared::default();
        let timer = |signo: i32, id: u64| SigInfo {
            signo,
            code: SI_TIMER,
            word: id,
            value: 7,
            ..SigInfo::default()
        };
        assert!(s.post_info(timer(12, 3)));
        // A plain post of a pending standard signal keeps the first sender's info.
        s.post(12, 7);
        assert!(!s.post_info(timer(12, 4)));
        let mut t = s.take(0);
        assert_eq!(t.set(), 1 << 11);
        assert_eq!(s.signals.load(Ordering::Acquire), 0);
        let i = t.take(12).unwrap();
        assert_eq!((i.code, i.word, i.value), (SI_TIMER, 3, 7));
        // Posted anew by a process: its own info (its pid in si_pid), nothing stale
        // from before.
        s.post(12, 7);
        let i = s.take(0).take(12).unwrap();
        assert_eq!((i.code, i.word as u32), (SI_USER, 7));
        // Realtime: two timers on one signal are two deliveries, each with its info.
        assert!(s.post_info(timer(40, 1)));
        assert!(s.post_info(timer(40, 2)));
        let mut t = s.take(0);
        assert_eq!(t.take(40).map(|i| i.word), Some(1));
        assert_eq!(t.take(40).map(|i| i.word), Some(2));
        assert_eq!(t.set(), 0);
    }

    #[test]
    fn children_are_reaped_once_and_orphans_are_forgotten() {
        let k = kernel();
        assert_eq!(
            reaped(&k, 100, WaitFor::Any, false, None),
            Err(Errno(libc::ECHILD))
        );
        let a = k.new_id();
        let b = k.new_id();
        let sa: Arc<Shared> = Arc::default();
        k.add(a, 100, 100, sa.clone());
        k.add(b, 100, 100, Arc::default());
        let w = Arc::new(Waiter::default());
        assert_eq!(reaped(&k, 100, WaitFor::Pid(a), false, Some(&w)), Ok(None));
        k.exit(a, exited(3));
        assert!(sa.dead.load(Ordering::Acquire));
        let stop = AtomicBool::new(false);
        assert!(
            w.wait(Some(std::time::Instant::now()), &stop),
            "the waiter is woken"
        );
        assert_eq!(
            reaped(&k, 100, WaitFor::Any, true, None),
            Ok(Some((a, 0x300)))
        );
        assert_eq!(
            reaped(&k, 100, WaitFor::Any, false, None),
            Ok(Some((a, 0x300)))
        );
        assert_eq!(
            reaped(&k, 100, WaitFor::Pid(a), false, None),
            Err(Errno(libc::ECHILD))
        );
        // b's child is orphaned when b ends, and forgotten when it ends itself.
        let c = k.new_id();
        k.add(c, b, 100, Arc::default());
        k.exit(b, killed(libc::SIGTERM));
        assert_eq!(k.parent(c), None);
        k.exit(c, exited(0));
        assert_eq!(k.group(100), vec![100]);
        assert_eq!(
            reaped(&k, 100, WaitFor::Group(0), false, None),
            Ok(Some((b, 15)))
        );
        assert!(!k.signal(b, 1, 100));
        assert!(k.signal(100, libc::SIGCHLD as u64, 100));
    }

    #[test]
    fn the_terminals_signals_reach_every_process_a_kill_only_the_first() {
        let first: Arc<Shared> = Arc::default();
        let k = Kernel::new(Arc::new(Mutex::new(Frames::empty())), 100, 1, first.clone());
        let (a, b) = (k.new_id(), k.new_id());
        let (sa, sb): (Arc<Shared>, Arc<Shared>) = Default::default();
        k.add(a, 100, 100, sa.clone());
        // In a group of its own: the terminal's signal still reaches it (every guest
        // process is in the terminal's foreground group).
        k.add(b, a, b, sb.clone());
        k.exit(a, exited(0));
        let ctrl_c = OutsideSignal {
            signo: libc::SIGINT,
            from_terminal: true,
        };
        assert_eq!(
            k.signal_from_outside(ctrl_c),
            2,
            "the ended process is left out"
        );
        for s in [&first, &sb] {
            let i = s.take(0).take(libc::SIGINT as u64).unwrap();
            assert_eq!((i.code, i.word), (SI_KERNEL, 0));
        }
        assert_eq!(sa.take(0).set(), 0);
        let kill = OutsideSignal {
            signo: libc::SIGTERM,
            from_terminal: false,
        };
        assert_eq!(k.signal_from_outside(kill), 1);
        let i = first.take(0).take(libc::SIGTERM as u64).unwrap();
        // si_pid 0: the sender is outside the guest.
        assert_eq!(
            (i.code, i.word),
            (SI_USER, crate::linux::host::ids()[2] << 32)
        );
        assert_eq!(sb.take(0).set(), 0);
    }

    #[test]
    fn a_childs_end_tells_its_parent_which_child_and_how() {
        let parent: Arc<Shared> = Arc::default();
        let k = Kernel::new(
            Arc::new(Mutex::new(Frames::empty())),
            100,
            1,
            parent.clone(),
        );
        let uid = crate::linux::host::ids()[2];
        for (status, code, si_status) in [
            (exited(7), crate::linux::signal::CLD_EXITED, 7),
            (
                killed(libc::SIGTERM),
                crate::linux::signal::CLD_KILLED,
                libc::SIGTERM,
            ),
        ] {
            let c = k.new_id();
            k.add(c, 100, 100, Arc::default());
            k.exit(c, status);
            let i = parent.take(0).take(libc::SIGCHLD as u64).unwrap();
            assert_eq!(
                (i.code, i.word, i.value),
                (code, c | (uid << 32), si_status as u64)
            );
            assert_eq!(
                reaped(&k, 100, WaitFor::Pid(c), false, None),
                Ok(Some((c, status)))
            );
        }
    }

    #[test]
    fn sessions_are_the_programs_own_with_their_terminals() {
        let pool = Arc::new(Mutex::new(Frames::empty()));
        // The first process (100) is in lbrprof's group 50 of session 40.
        let k = Kernel::new(pool, 100, 1, Arc::default()).in_session(50, 40);
        assert_eq!((k.pgid(100), k.sid(100)), (Some(50), Some(40)));
        assert_eq!(k.controlling(100), Controlling::Outside);
        let leader: Arc<Shared> = Arc::default();
        let (a, b) = (k.new_id(), k.new_id());
        k.add(a, 100, 50, leader.clone());
        assert_eq!(k.sid(a), Some(40), "a child is in its parent's session");
        assert_eq!(
            k.acquire_terminal(a, 0x8801, "/dev/pts/1".into()),
            Err(Errno(libc::EPERM)),
            "not a session leader"
        );
        assert_eq!(k.set_sid(a), Ok(a));
        assert_eq!((k.pgid(a), k.sid(a)), (Some(a), Some(a)));
        assert_eq!(k.controlling(a), Controlling::Detached);
        assert_eq!(k.set_sid(a), Err(Errno(libc::EPERM)), "a group leader");
        assert_eq!(
            k.set_pgid(a, a, 50),
            Err(Errno(libc::EPERM)),
            "a session leader"
        );
        k.acquire_terminal(a, 0x8801, "/dev/pts/1".into()).unwrap();
        assert_eq!(k.acquire_terminal(a, 0x8801, "/dev/pts/1".into()), Ok(()));
        assert_eq!(
            k.acquire_terminal(a, 0x8802, "/dev/pts/2".into()),
            Err(Errno(libc::EPERM)),
            "one terminal per session"
        );
        // b, a's child, runs in its own group and is made the foreground one.
        let job: Arc<Shared> = Arc::default();
        k.add(b, a, a, job.clone());
        assert_eq!(
            k.set_pgid(a, b, 50),
            Err(Errno(libc::EPERM)),
            "another session's group"
        );
        k.set_pgid(a, b, b).unwrap();
        assert_eq!(
            k.terminal(0x8801).map(|(s, t)| (s, t.foreground)),
            Some((a, a))
        );
        assert_eq!(
            k.set_terminal_foreground(a, 0x8801, 50),
            Err(Errno(libc::EPERM))
        );
        assert_eq!(
            k.set_terminal_foreground(100, 0x8801, b),
            Err(Errno(libc::EPERM))
        );
        k.set_terminal_foreground(a, 0x8801, b).unwrap();
        match k.controlling(b) {
            Controlling::Guest(t) => assert_eq!((t.foreground, t.path), (b, "/dev/pts/1".into())),
            c => panic!("{c:?}"),
        }
        assert_eq!(k.release_terminal(100, 0x8801), Err(Errno(libc::ENOTTY)));
        // The leader's end hangs up the terminal: the foreground group is sent SIGHUP
        // and SIGCONT, the session has no terminal.
        k.exit(a, exited(0));
        assert_eq!(
            job.signals.load(Ordering::Acquire),
            1 << (libc::SIGHUP - 1) | 1 << (libc::SIGCONT - 1)
        );
        assert_eq!(leader.signals.load(Ordering::Acquire), 0);
        assert_eq!(k.terminal(0x8801), None);
        assert_eq!(k.controlling(b), Controlling::Detached);
    }
}
