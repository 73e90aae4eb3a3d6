//! The POSIX process and signal plumbing `record` needs, behind safe types: a child that
//! waits on a pipe before it execs (so its events can be opened first, as `perf record`
//! does), exec failures reported back through a close-on-exec pipe, `waitpid`, `poll`,
//! CLOCK_MONOTONIC, and a self-pipe for SIGINT/SIGTERM/SIGCHLD.
//!
//! The self-pipe is hand-written (a signal handler that `write(2)`s the signal number)
//! rather than pulled from `signal-hook`: it is twenty lines, and `record` needs exactly
//! one pipe that `poll(2)` watches next to the perf ring buffers.
//!
//! The plain system calls (pipes, limits, `waitpid`, `kill`, `poll`, reads) go through
//! `rustix`'s safe wrappers; `libc` is left for what must run between `fork` and `exec`
//! (async-signal-safe calls only), the signal handler, and `sigaction`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// CLOCK_MONOTONIC in nanoseconds (the clock the perf events are told to use).
pub use lbrprof_data::clock::monotonic_ns;

/// Raise the soft limit on open files to the hard limit: `-p` of a process with many
/// threads needs one perf event per thread and CPU (perf does the same).
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited: raise a finite soft limit up to the hard one (no privilege
    // needed; failure leaves the old limit in place).
    let raise = match (limit.current, limit.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if raise {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(File, File)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((File::from(read), File::from(write)))
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl ChildExit {
    /// The shell's convention: the exit code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            ChildExit::Code(c) => c,
            ChildExit::Signal(s) => 128 + s,
        }
    }
}

/// A forked child blocked before `execv`, waiting for [`BlockedChild::release`].
pub struct BlockedChild {
    pub pid: u32,
    go: Option<File>,
    exec_error: File,
}

/// Fork a child that waits for a byte on a pipe and then `execv`s `path` with `argv`
/// (environment inherited). Nothing that could allocate or lock runs in the child. The
/// child is killed if the recorder dies (PR_SET_PDEATHSIG; it survives the exec), so call
/// this from the thread that lives as long as the recording: the main thread.
pub fn spawn_blocked(path: &CStr, argv: &[CString]) -> io::Result<BlockedChild> {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let (go_read, go_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    // SAFETY: getpid has no preconditions.
    let recorder = unsafe { libc::getpid() };
    // SAFETY: fork has no memory-safety preconditions. In the child (pid 0) only
    // async-signal-safe functions run (read, write, execv, _exit) on memory prepared
    // before the fork, so the other threads' locks (allocator, stdio) are never touched.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above: only async-signal-safe calls on pre-built buffers. `argv_ptrs`
        // is NULL-terminated and points at live CStrings; the go pipe's read end and the
        // error pipe's write end are open in this process (the other ends are close-on-exec
        // and irrelevant here). `_exit` never returns.
        unsafe {
            // Our copies of the parent's ends: without this the child itself would keep
            // the go pipe open and never see EOF if the recorder died before releasing it.
            libc::close(go_write.as_raw_fd());
            libc::close(err_read.as_raw_fd());
            // The command dies with the recorder (a SIGKILLed `record` must not leave it
            // running, reparented to init). If the recorder died before this took effect,
            // the parent is already someone else: give up.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != recorder {
                libc::_exit(127);
            }
            let mut byte = 0u8;
            let n = libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1);
            if n != 1 {
                // The recorder gave up (or died) before releasing us.
                libc::_exit(127);
            }
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err_write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
    }
    drop(go_read);
    drop(err_write);
    Ok(BlockedChild {
        pid: pid as u32,
        go: Some(go_write),
        exec_error: err_read,
    })
}

impl BlockedChild {
    /// Let the child exec. `Ok` once the exec succeeded; `Err(errno)` if it failed (the
    /// child has then exited and been reaped).
    pub fn release(mut self) -> Result<u32, i32> {
        if let Some(mut go) = self.go.take() {
            let _ = go.write_all(&[1]);
        }
        let mut buf = [0u8; 4];
        match self.exec_error.read_exact(&mut buf) {
            // EOF: the close-on-exec write end closed, i.e. exec succeeded.
            Err(_) => Ok(self.pid),
            Ok(()) => {
                let _ = wait_blocking(self.pid);
                Err(i32::from_ne_bytes(buf))
            }
        }
    }

    /// Kill and reap a child that will not be released.
    pub fn abort(mut self) {
        self.go = None;
        kill(self.pid, libc::SIGKILL);
        let _ = wait_blocking(self.pid);
    }
}

/// How a child ended, if it did (a stop or continue is not an end).
fn decode(status: rustix::process::WaitStatus) -> Option<ChildExit> {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => Some(ChildExit::Code(code)),
        (None, Some(signal)) => Some(ChildExit::Signal(signal)),
        (None, None) => None,
    }
}

fn child_pid(pid: u32) -> io::Result<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ECHILD))
}

/// `waitpid(pid, WNOHANG)`: `Some` once the child has exited (and is reaped).
pub fn try_wait(pid: u32) -> io::Result<Option<ChildExit>> {
    use rustix::process::{WaitOptions, waitpid};
    let status = waitpid(Some(child_pid(pid)?), WaitOptions::NOHANG)?;
    Ok(status.and_then(|(_, s)| decode(s)))
}

fn wait_blocking(pid: u32) -> io::Result<ChildExit> {
    use rustix::process::{WaitOptions, waitpid};
    let pid = child_pid(pid)?;
    loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(status) => {
                if let Some(exit) = status.and_then(|(_, s)| decode(s)) {
                    return Ok(exit);
                }
            }
        }
    }
}

/// Send `sig` to `pid`; errors (the task is gone, an unknown signal) are ignored.
pub fn kill(pid: u32, sig: i32) {
    if let (Ok(pid), Some(sig)) = (child_pid(pid), rustix::process::Signal::from_named_raw(sig)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Wait until one of `fds` is readable or hung up, or `timeout_ms` passes, and return
/// the descriptors that hung up (a perf event whose task exited stays hung up: callers
/// stop polling it so the loop does not spin). EINTR is not an error (a signal arrived:
/// the self-pipe says which).
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<RawFd>> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    // SAFETY: the caller's descriptors stay open for the duration of this call (they
    // are borrowed for it only).
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let mut pfds: Vec<PollFd<'_>> = borrowed
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timeout = (timeout_ms >= 0).then(|| Timespec {
        tv_sec: i64::from(timeout_ms / 1000),
        tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
    });
    match poll(&mut pfds, timeout.as_ref()) {
        Ok(_) => {}
        // A signal arrived: the self-pipe says which.
        Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    }
    let hung_up = PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
    Ok(pfds
        .iter()
        .zip(fds)
        .filter(|(p, _)| p.revents().intersects(hung_up))
        .map(|(_, &fd)| fd)
        .collect())
}

/// The write end of the self-pipe, for the signal handler (-1 when none is installed).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Set in a signal's byte on the pipe when the terminal sent it (`si_code` SI_KERNEL);
/// signal numbers fit in the bits below.
const FROM_TERMINAL: u8 = 0x80;

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t for the signal.
        let code = unsafe { info.as_ref() }.map_or(libc::SI_USER, |i| i.si_code);
        let byte = sig as u8
            | if code == libc::SI_KERNEL {
                FROM_TERMINAL
            } else {
                0
            };
        // SAFETY: write(2) is async-signal-safe; `byte` lives for the call; the pipe is
        // non-blocking, so a full pipe drops the byte instead of deadlocking (one pending
        // byte per signal kind is enough). errno is saved and restored around it.
        unsafe {
            let saved = *libc::__errno_location();
            libc::write(fd, (&raw const byte).cast(), 1);
            *libc::__errno_location() = saved;
        }
    }
}

/// Whether this process ignores `sig` (SIG_IGN).
pub fn is_ignored(sig: libc::c_int) -> bool {
    // SAFETY: an all-zero sigaction is valid; it receives the disposition.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `old`.
    let read = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    read == 0 && old.sa_sigaction == libc::SIG_IGN
}

/// A signal the pipe delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub signo: i32,
    /// The terminal sent it (`si_code` SI_KERNEL: Ctrl-C, `Ctrl-\`, a hang-up) to its
    /// foreground process group, rather than a process to lbrprof (`kill`).
    pub from_terminal: bool,
}

/// Watched signals delivered as bytes on a pipe (SIGINT, SIGTERM and SIGCHLD by
/// default); the previous dispositions are restored on drop. One at a time per process.
pub struct SignalPipe {
    read: OwnedFd,
    /// Owned so the handler's descriptor stays open while installed.
    _write: OwnedFd,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

const WATCHED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD];

impl SignalPipe {
    pub fn install() -> io::Result<SignalPipe> {
        SignalPipe::install_for(&WATCHED, &[])
    }

    /// Watch `watched`, and `unless_ignored` where lbrprof does not ignore them (as
    /// `nohup` makes it ignore SIGHUP: they stay ignored).
    pub fn install_for(
        watched: &[libc::c_int],
        unless_ignored: &[libc::c_int],
    ) -> io::Result<SignalPipe> {
        use rustix::pipe::{PipeFlags, pipe_with};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        if SIGNAL_PIPE
            .compare_exchange(-1, write.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(io::Error::other("a signal pipe is already installed"));
        }
        let mut pipe = SignalPipe {
            read,
            _write: write,
            previous: Vec::new(),
        };
        let extra = unless_ignored.iter().filter(|&&sig| !is_ignored(sig));
        for &sig in watched.iter().chain(extra) {
            // SAFETY: an all-zero sigaction is a valid "no flags, empty mask" value.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
            action.sa_sigaction = on_signal as Handler as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            // SAFETY: an all-zero sigaction is valid; it receives the old disposition.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are valid sigaction structs; the handler only does
            // async-signal-safe work.
            if unsafe { libc::sigaction(sig, &action, &mut old) } < 0 {
                return Err(io::Error::last_os_error());
            }
            pipe.previous.push((sig, old));
        }
        Ok(pipe)
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The signals delivered since the last call.
    pub fn take(&self) -> Vec<i32> {
        self.take_received().into_iter().map(|r| r.signo).collect()
    }

    /// The signals delivered since the last call, with who sent them.
    pub fn take_received(&self) -> Vec<Received> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        // Until the non-blocking pipe is empty (EAGAIN) or fails.
        while let Ok(n @ 1..) = rustix::io::read(&self.read, &mut buf) {
            out.extend(buf[..n].iter().map(|&b| Received {
                signo: i32::from(b & !FROM_TERMINAL),
                from_terminal: b & FROM_TERMINAL != 0,
            }));
        }
        out
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restoring a disposition previously returned by sigaction.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
        // The handler stops writing before `write` is closed (after this function).
        SIGNAL_PIPE.store(-1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn child_runs_after_release_and_reports_status() {
        let child =
            spawn_blocked(&cstr("/bin/sh"), &[cstr("sh"), cstr("-c"), cstr("exit 7")]).unwrap();
        // Not yet released: still running (blocked).
        assert_eq!(try_wait(child.pid).unwrap(), None);
        let pid = child.release().unwrap();
        let exit = loop {
            if let Some(e) = try_wait(pid).unwrap() {
                break e;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(exit, ChildExit::Code(7));
        assert_eq!(ChildExit::Signal(9).shell_code(), 137);
    }

    #[test]
    fn exec_failure_comes_back_as_errno() {
        let child = spawn_blocked(&cstr("/nonexistent/prog"), &[cstr("prog")]).unwrap();
        assert_eq!(child.release(), Err(libc::ENOENT));
    }

    #[test]
    fn aborted_child_is_reaped() {
        let child = spawn_blocked(&cstr("/bin/true"), &[cstr("true")]).unwrap();
        let pid = child.pid;
        child.abort();
        assert!(try_wait(pid).is_err(), "already reaped");
    }

    #[test]
    fn a_child_never_released_exits_127() {
        let child = spawn_blocked(&cstr("/bin/true"), &[cstr("true")]).unwrap();
        let pid = child.pid;
        drop(child);
        assert_eq!(wait_blocking(pid).unwrap(), ChildExit::Code(127));
    }
}
