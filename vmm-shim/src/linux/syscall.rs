//! The system calls. Each takes the six raw argument registers; guest pointers go through
//! [`AddressSpace::read`](super::mm::AddressSpace::read)/[`write`](super::mm::AddressSpace::write) (EFAULT for anything that is not the
//! program's memory), guest descriptors through the [`FdTable`](super::fd::FdTable).
//! Unimplemented calls return `-ENOSYS` and are counted by name for the end-of-run
//! report. fork, vfork, execve and wait are checked here and carried out by the trap
//! path (see [`super::proc`] for the process model); a `clone` that shares memory
//! between two processes without vfork ends the program with a clear "unsupported"
//! error.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use syscalls::Sysno;

use crate::linux::Process;
use crate::linux::abi::*;
use crate::linux::block::{self, Block, WaitOut};
use crate::linux::entropy;
use crate::linux::errno::Errno;
use crate::linux::fd::{Fd, MAX_FDS};
use crate::linux::host;
use crate::linux::itimer;
use crate::linux::limits;
use crate::linux::mm::{FileBacking, Prot};
use crate::linux::outcome::{CloneArgs, ForkArgs, Outcome};
use crate::linux::proc::{Controlling, WaitFor};
use crate::linux::procfs::Served;
use crate::linux::program::Program;
use crate::linux::shm::{SharedObject, ShmRef};
use crate::linux::signal;
use crate::linux::thread::Task;
use crate::linux::usage::Usage;
use crate::linux::waiter::Waiter;
use crate::memory::GuestVirtAddr;

type Sys = Result<u64, Errno>;

/// A shared file a system call reads or writes ([`Process::shared_files_of`]).
type SharedFileCall = (Arc<SharedObject>, bool, (u64, u64));

/// Largest single transfer (read/write and friends); programs handle short counts.
pub(crate) const MAX_IO: usize = 16 << 20;

/// The bytes an iovec array can take in one call: its total length, at most [`MAX_IO`].
pub(crate) fn iov_room(v: &[(u64, u64)]) -> usize {
    let total = v.iter().map(|&(_, l)| l).fold(0, u64::saturating_add);
    usize::try_from(total).unwrap_or(usize::MAX).min(MAX_IO)
}
/// Longest path accepted (PATH_MAX).
const PATH_MAX: usize = 4096;

/// `struct flock` on x86-64: type, whence (i16 each), start, len (i64), pid (i32).
const FLOCK_SIZE: usize = 32;

/// How long a waiting lock call waits before it tries again.
const LOCK_RETRY: Duration = Duration::from_millis(5);
/// Most bytes of arguments and environment an execve takes (ARG_MAX as Linux computes
/// it for an 8 MiB stack).
const ARG_MAX: usize = 2 << 20;

fn ok(v: u64) -> Sys {
    Ok(v)
}

impl Process {
    pub(crate) fn path(&self, va: u64) -> Result<Vec<u8>, Errno> {
        let p = self.mm.read_cstr(va, PATH_MAX)?;
        self.proc_path(p)
    }

    pub(crate) fn host_fd(&self, fd: u64) -> Result<BorrowedFd<'_>, Errno> {
        Ok(self.fds.get(fd)?.host())
    }

    /// A directory descriptor argument: AT_FDCWD (the program's working directory) or
    /// a guest descriptor.
    pub(crate) fn dir(&self, dirfd: u64) -> Result<Option<BorrowedFd<'_>>, Errno> {
        if dirfd as i32 == libc::AT_FDCWD {
            Ok(self
                .cwd
                .as_ref()
                .map(|(_, d)| std::os::fd::AsFd::as_fd(&**d)))
        } else {
            self.host_fd(dirfd).map(Some)
        }
    }

    /// The working directory as a raw `dirfd` for host calls.
    pub(crate) fn cwd_raw(&self) -> i32 {
        self.cwd
            .as_ref()
            .map_or(libc::AT_FDCWD, |(_, d)| d.as_raw_fd())
    }

    /// `path` (a guest path) as the host sees it: relative to the working directory.
    pub(crate) fn host_path(&self, path: &[u8]) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
        match &self.cwd {
            Some((cwd, _)) if p.is_relative() => cwd.join(p),
            _ => p.to_owned(),
        }
    }

    /// chdir (`dir` None: `path` from the working directory) or fchdir (`dir`).
    fn chdir(&mut self, dir: Option<&std::sync::Arc<OwnedFd>>, path: &[u8]) -> Sys {
        use std::os::fd::AsFd;
        let base = match dir {
            Some(d) => Some(d.as_fd()),
            None => self.dir(libc::AT_FDCWD as u64)?,
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let fd = if path.is_empty() {
            let d = base.ok_or(Errno(libc::ENOENT))?;
            host::openat(Some(d), b".", flags, 0)?
        } else {
            host::openat(base, path, flags, 0)?
        };
        // The new directory's path, as the kernel would print it for getcwd.
        let link = host::path_of(fd.as_fd()).ok_or(Errno(libc::ENOENT))?;
        // Search permission, as chdir checks it.
        host::faccessat(Some(fd.as_fd()), b".", libc::X_OK, 0)?;
        self.cwd = Some((link, std::sync::Arc::new(fd)));
        Ok(0)
    }

    pub(crate) fn out(&self, va: u64, bytes: &[u8]) -> Result<(), Errno> {
        self.mm.write(GuestVirtAddr(va), bytes)
    }

    fn out_timespec(&self, va: u64, (s, ns): (i64, i64)) -> Result<(), Errno> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&s.to_le_bytes());
        b[8..].copy_from_slice(&ns.to_le_bytes());
        self.out(va, &b)
    }

    /// Dispatch system call `nr` of thread `task` with the six argument registers.
    pub fn syscall(&mut self, task: &mut Task, nr: u64, a: [u64; 6]) -> Outcome {
        let Some(sys) = usize::try_from(nr).ok().and_then(Sysno::new) else {
            *self
                .report
                .unimplemented
                .entry(format!("#{nr}"))
                .or_insert(0) += 1;
            return Outcome::Return(Errno::ENOSYS.ret());
        };
        let coherent = self.shared_files_of(sys, a);
        let out = self.dispatch(task, sys, a);
        for (obj, writes, (from, to)) in coherent {
            if writes {
                // What the call wrote to the file shows in every shared mapping of it.
                let _ = obj.reload(from, to);
            }
        }
        out
    }

    /// For a call that reads or writes host files mapped shared in the VM: each file's
    /// shared object, its pages the call may read written back already (the call reads
    /// what was written through a mapping), whether the call writes the file (those
    /// pages are read in again after it), and which pages (indices `[from, to)`: those
    /// of the bytes a read, pread or pwrite names, else all). See [`crate::linux::shm`].
    fn shared_files_of(&self, sys: Sysno, a: [u64; 6]) -> Vec<SharedFileCall> {
        let fds: &[(u64, bool)] = match sys {
            Sysno::read | Sysno::pread64 | Sysno::readv | Sysno::preadv | Sysno::preadv2 => {
                &[(a[0], false)]
            }
            // sendfile(out, in, …), copy_file_range(in, _, out, …).
            Sysno::sendfile => &[(a[1], false), (a[0], true)],
            Sysno::copy_file_range => &[(a[0], false), (a[2], true)],
            Sysno::write
            | Sysno::pwrite64
            | Sysno::writev
            | Sysno::pwritev
            | Sysno::pwritev2
            | Sysno::ftruncate
            | Sysno::fallocate => &[(a[0], true)],
            // Writes back what went to the file through shared mappings first.
            Sysno::sync_file_range => &[(a[0], false)],
            _ => return Vec::new(),
        };
        if self.kernel.shm.is_empty() {
            return Vec::new();
        }
        let pages = |off: u64, len: u64| (off / PAGE, off.saturating_add(len).div_ceil(PAGE));
        fds.iter()
            .filter_map(|&(fd, writes)| {
                let host = self.fds.get(fd).ok()?.host();
                let obj = self.kernel.shm.lookup(host)?;
                let span = match sys {
                    Sysno::pread64 | Sysno::pwrite64 => pages(a[3], a[2]),
                    Sysno::read => host::lseek(host, 0, libc::SEEK_CUR)
                        .map_or((0, u64::MAX), |pos| pages(pos, a[2])),
                    _ => (0, u64::MAX),
                };
                let _ = obj.write_back(span.0, span.1);
                Some((obj, writes, span))
            })
            .collect()
    }

    fn dispatch(&mut self, task: &mut Task, sys: Sysno, a: [u64; 6]) -> Outcome {
        task.timeout_span = None;
        if let Some(wait) = self.wait_readable(task, sys, a) {
            return wait;
        }
        if let Some(wait) = self.wait_writable(sys, a) {
            return wait;
        }
        let r: Sys = match sys {
            Sysno::exit_group => return Outcome::Exit(a[0] as i32),
            Sysno::exit => return self.sys_exit(task, a[0] as i32),
            Sysno::clone => return self.sys_clone(task, a),
            Sysno::fork => return self.sys_fork(libc::SIGCHLD as u64, [0; 6]),
            Sysno::vfork => {
                let flags = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64;
                return self.sys_fork(flags, [0; 6]);
            }
            Sysno::execve => return self.sys_execve(libc::AT_FDCWD as u64, a[0], a[1], a[2], 0),
            Sysno::execveat => return self.sys_execve(a[0], a[1], a[2], a[3], a[4]),
            Sysno::wait4 => return self.sys_wait4(task, i64::from(a[0] as i32), a[1], a[2], a[3]),
            Sysno::waitid => {
                return self.sys_waitid(task, a[0], u64::from(a[1] as u32), a[2], a[3]);
            }
            Sysno::chdir => self.path(a[0]).and_then(|p| self.chdir(None, &p)),
            Sysno::fchdir => self.fds.get(a[0]).cloned().and_then(|f| {
                let fd = f.file.clone();
                self.chdir(Some(&fd), b"")
            }),
            Sysno::getpgid | Sysno::getsid => {
                let pid = match u64::from(a[0] as u32) {
                    0 => self.pid,
                    p => p,
                };
                let id = if sys == Sysno::getpgid {
                    self.kernel.pgid(pid)
                } else {
                    self.kernel.sid(pid)
                };
                id.ok_or(Errno(libc::ESRCH))
            }
            Sysno::getpgrp => ok(self.kernel.pgid(self.pid).unwrap_or(self.pid)),
            Sysno::setpgid => {
                let (pid, pgid) = (u64::from(a[0] as u32), u64::from(a[1] as u32));
                let pid = if pid == 0 { self.pid } else { pid };
                let pgid = if pgid == 0 { pid } else { pgid };
                self.kernel.set_pgid(self.pid, pid, pgid).map(|()| 0)
            }
            Sysno::setsid => self.kernel.set_sid(self.pid),
            Sysno::select => {
                let deadline = match self.timeval(task, a[4]) {
                    Ok(d) => d,
                    Err(e) => return Outcome::Return(e.ret()),
                };
                return self.sys_select(a[0], [a[1], a[2], a[3]], deadline);
            }
            Sysno::pselect6 => {
                // The sixth argument: { const sigset_t *ss; size_t ss_len }.
                let mask = if a[5] == 0 {
                    Ok(None)
                } else {
                    self.mm
                        .read_u64(a[5])
                        .and_then(|ss| Ok((ss, self.mm.read_u64(a[5] + 8)?)))
                        .and_then(|(ss, len)| self.sigset_arg(ss, len))
                };
                let mask = match mask {
                    Ok(m) => m,
                    Err(e) => return Outcome::Return(e.ret()),
                };
                let deadline = if a[4] == 0 {
                    None
                } else {
                    match self.timeout(task, a[4], libc::CLOCK_MONOTONIC, false) {
                        Ok(d) => Some(d.unwrap_or_else(std::time::Instant::now)),
                        Err(e) => return Outcome::Return(e.ret()),
                    }
                };
                let out = self.sys_select(a[0], [a[1], a[2], a[3]], deadline);
                return self.with_mask(task, mask, out);
            }
            Sysno::read => self.sys_read(task, a[0], a[1], a[2], None),
            Sysno::pread64 => self.sys_read(task, a[0], a[1], a[2], Some(a[3] as i64)),
            Sysno::write => self.sys_write(a[0], a[1], a[2], None),
            Sysno::pwrite64 => self.sys_write(a[0], a[1], a[2], Some(a[3] as i64)),
            Sysno::readv => self.sys_readv(a[0], a[1], a[2]),
            Sysno::writev => self.sys_writev(a[0], a[1], a[2]),
            Sysno::open => self.sys_openat(task.tid, libc::AT_FDCWD as u64, a[0], a[1], a[2]),
            Sysno::openat => self.sys_openat(task.tid, a[0], a[1], a[2], a[3]),
            Sysno::close => self.fds.close(a[0]).map(|()| 0),
            Sysno::lseek => self.fds.get(a[0]).and_then(|f| match &f.listing {
                Some(listing) => listing.seek(a[1] as i64, a[2] as i32),
                None => host::lseek(f.host(), a[1] as i64, a[2] as i32),
            }),
            Sysno::fstat => self.host_fd(a[0]).and_then(|f| {
                let st = host::fstatat(Some(f), b"", libc::AT_EMPTY_PATH)?;
                self.out(a[1], &st).map(|()| 0)
            }),
            Sysno::stat | Sysno::lstat => {
                let flags = if sys == Sysno::lstat {
                    libc::AT_SYMLINK_NOFOLLOW
                } else {
                    0
                };
                self.path(a[0]).and_then(|p| {
                    let st = host::fstatat(self.dir(libc::AT_FDCWD as u64)?, &p, flags)?;
                    self.out(a[1], &st).map(|()| 0)
                })
            }
            Sysno::newfstatat => self.path(a[1]).and_then(|p| {
                let st = host::fstatat(self.dir(a[0])?, &p, a[3] as i32)?;
                self.out(a[2], &st).map(|()| 0)
            }),
            Sysno::statx => self.path(a[1]).and_then(|p| {
                let st = host::statx(self.dir(a[0])?, &p, a[2] as i32, a[3] as u32)?;
                self.out(a[4], &st).map(|()| 0)
            }),
            Sysno::access => self.path(a[0]).and_then(|p| {
                host::faccessat(self.dir(libc::AT_FDCWD as u64)?, &p, a[1] as i32, 0).map(|()| 0)
            }),
            Sysno::faccessat | Sysno::faccessat2 => {
                let flags = if sys == Sysno::faccessat2 {
                    a[3] as i32
                } else {
                    0
                };
                self.path(a[1]).and_then(|p| {
                    host::faccessat(self.dir(a[0])?, &p, a[2] as i32, flags).map(|()| 0)
                })
            }
            Sysno::readlink => self.sys_readlink(task.tid, libc::AT_FDCWD as u64, a[0], a[1], a[2]),
            Sysno::readlinkat => self.sys_readlink(task.tid, a[0], a[1], a[2], a[3]),
            Sysno::getdents64 => self.fds.get(a[0]).and_then(|f| {
                let b = match &f.listing {
                    Some(listing) => listing.read(a[2] as usize, || self.listed(listing.what()))?,
                    None => host::getdents64(f.host(), a[2] as usize)?,
                };
                self.out(a[1], &b).map(|()| b.len() as u64)
            }),
            Sysno::getcwd => self.sys_getcwd(a[0], a[1]),
            // The request is an unsigned int: musl passes it as a (sign-extended) int.
            Sysno::ioctl => self.sys_ioctl(a[0], u64::from(a[1] as u32), a[2]),
            Sysno::dup => self.fds.get(a[0]).cloned().and_then(|mut f| {
                f.cloexec = false;
                self.fds.insert(f)
            }),
            Sysno::dup2 | Sysno::dup3 => self.sys_dup3(
                a[0],
                a[1],
                if sys == Sysno::dup3 { a[2] } else { 0 },
                sys == Sysno::dup2,
            ),
            Sysno::fcntl if matches!(a[1] as i32, libc::F_SETLKW | libc::F_OFD_SETLKW) => {
                let lock = self.record_lock(a[0], a[1] as i32, a[2]);
                return self.lock_or_retry(task, sys, lock);
            }
            Sysno::fcntl => self.sys_fcntl(a[0], a[1] as i32, a[2]),
            // (Its descriptors are unsigned ints: the upper halves of the registers are not
            // the program's.)
            Sysno::close_range => {
                self.sys_close_range(u64::from(a[0] as u32), u64::from(a[1] as u32), a[2])
            }
            Sysno::mincore => self.sys_mincore(a[0], a[1], a[2]),
            Sysno::capget => self.sys_capget(a[0], a[1]),
            Sysno::pipe | Sysno::pipe2 => {
                self.sys_pipe(a[0], if sys == Sysno::pipe2 { a[1] } else { 0 })
            }
            Sysno::unlink => self.path(a[0]).and_then(|p| {
                host::path_call(libc::SYS_unlinkat, self.cwd_raw(), &p, 0, None, 0)
                    .map(|v| v as u64)
            }),
            Sysno::unlinkat => self.path(a[1]).and_then(|p| {
                let d = self.dir(a[0])?.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
                host::path_call(libc::SYS_unlinkat, d, &p, 0, None, a[2] as i64).map(|v| v as u64)
            }),
            Sysno::mkdir => self.path(a[0]).and_then(|p| {
                host::path_call(libc::SYS_mkdirat, self.cwd_raw(), &p, 0, None, a[1] as i64)
                    .map(|v| v as u64)
            }),
            Sysno::rename => self.path(a[0]).and_then(|p| {
                let q = self.path(a[1])?;
                host::path_call(
                    libc::SYS_renameat2,
                    self.cwd_raw(),
                    &p,
                    self.cwd_raw(),
                    Some(&q),
                    0,
                )
                .map(|v| v as u64)
            }),
            Sysno::getpeername | Sysno::getsockname => self.host_fd(a[0]).and_then(|f| {
                let addr = host::sockname(f, sys == Sysno::getsockname)?;
                let mut len = [0u8; 4];
                self.mm.read(GuestVirtAddr(a[2]), &mut len)?;
                let room = u32::from_le_bytes(len) as usize;
                self.out(a[1], &addr[..addr.len().min(room)])?;
                self.out(a[2], &(addr.len() as u32).to_le_bytes())?;
                Ok(0)
            }),
            Sysno::statfs => self.path(a[0]).and_then(|p| {
                let st = host::statfs(Some(&self.host_path(&p)), None)?;
                self.out(a[1], &st).map(|()| 0)
            }),
            Sysno::fstatfs => self.host_fd(a[0]).and_then(|f| {
                let st = host::statfs(None, Some(f))?;
                self.out(a[1], &st).map(|()| 0)
            }),
            Sysno::chmod => self.path(a[0]).and_then(|p| {
                host::path_call(libc::SYS_fchmodat, self.cwd_raw(), &p, 0, None, a[1] as i64)
                    .map(|v| v as u64)
            }),
            Sysno::fchmodat => self.path(a[1]).and_then(|p| {
                let d = self.dir(a[0])?.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
                host::path_call(libc::SYS_fchmodat, d, &p, 0, None, a[2] as i64).map(|v| v as u64)
            }),
            Sysno::chown | Sysno::lchown => self.path(a[0]).and_then(|p| {
                let flags = if sys == Sysno::lchown {
                    libc::AT_SYMLINK_NOFOLLOW
                } else {
                    0
                };
                host::chown(self.cwd_raw(), &p, a[1] as u32, a[2] as u32, flags).map(|()| 0)
            }),
            Sysno::fchownat => self.path(a[1]).and_then(|p| {
                let d = self.dir(a[0])?.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
                host::chown(d, &p, a[2] as u32, a[3] as u32, a[4] as i32).map(|()| 0)
            }),
            Sysno::fchown => self.host_fd(a[0]).and_then(|f| {
                host::chown(
                    f.as_raw_fd(),
                    b"",
                    a[1] as u32,
                    a[2] as u32,
                    libc::AT_EMPTY_PATH,
                )
                .map(|()| 0)
            }),
            Sysno::fchmod => self
                .host_fd(a[0])
                .and_then(|f| host::fd_call(libc::SYS_fchmod, f, a[1] as i64).map(|v| v as u64)),
            Sysno::ftruncate => self
                .host_fd(a[0])
                .and_then(|f| host::fd_call(libc::SYS_ftruncate, f, a[1] as i64).map(|v| v as u64)),
            // The program's descriptors are host open files: the lock is the host's. A
            // blocking request is tried without blocking, then again after a pause (see
            // `lock_or_retry`), so that a signal can end its wait.
            Sysno::flock => {
                let op = a[1] as i32;
                let waits = op & (libc::LOCK_NB | libc::LOCK_UN) == 0;
                let lock = self.host_fd(a[0]).and_then(|f| {
                    let op = if waits { op | libc::LOCK_NB } else { op };
                    host::fd_call(libc::SYS_flock, f, i64::from(op)).map(|v| v as u64)
                });
                if waits {
                    return self.lock_or_retry(task, sys, lock);
                }
                lock
            }
            Sysno::fsync | Sysno::fdatasync => self.host_fd(a[0]).and_then(|f| {
                let nr = if sys == Sysno::fsync {
                    libc::SYS_fsync
                } else {
                    libc::SYS_fdatasync
                };
                host::fd_call(nr, f, 0).map(|v| v as u64)
            }),
            Sysno::rmdir => self.path(a[0]).and_then(|p| {
                host::path_call(
                    libc::SYS_unlinkat,
                    self.cwd_raw(),
                    &p,
                    0,
                    None,
                    libc::AT_REMOVEDIR as i64,
                )
                .map(|v| v as u64)
            }),
            Sysno::mkdirat => self.path(a[1]).and_then(|p| {
                let d = self.dir(a[0])?.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
                host::path_call(libc::SYS_mkdirat, d, &p, 0, None, a[2] as i64).map(|v| v as u64)
            }),
            Sysno::renameat | Sysno::renameat2 | Sysno::linkat => self.path(a[1]).and_then(|p| {
                let q = self.path(a[3])?;
                let d1 = self.dir(a[0])?.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
                let d2 = self.dir(a[2])?.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
                let (nr, flags) = match sys {
                    Sysno::renameat => (libc::SYS_renameat2, 0),
                    Sysno::renameat2 => (libc::SYS_renameat2, a[4] as i64),
                    _ => (libc::SYS_linkat, a[4] as i64),
                };
                host::path_call(nr, d1, &p, d2, Some(&q), flags).map(|v| v as u64)
            }),
            Sysno::link => self.path(a[0]).and_then(|p| {
                let q = self.path(a[1])?;
                let d = self.cwd_raw();
                host::path_call(libc::SYS_linkat, d, &p, d, Some(&q), 0).map(|v| v as u64)
            }),
            // File-system calls of `files.rs`.
            Sysno::creat => self.sys_openat(
                task.tid,
                libc::AT_FDCWD as u64,
                a[0],
                (libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC) as u64,
                a[1],
            ),
            Sysno::symlink => self.sys_symlinkat(a[0], libc::AT_FDCWD as u64, a[1]),
            Sysno::symlinkat => self.sys_symlinkat(a[0], a[1], a[2]),
            Sysno::mknod => self.sys_mknodat(libc::AT_FDCWD as u64, a[0], a[1], a[2]),
            Sysno::mknodat => self.sys_mknodat(a[0], a[1], a[2], a[3]),
            Sysno::utimensat => self.sys_utimensat(a[0], a[1], a[2], a[3]),
            Sysno::futimesat => self.sys_utimes(a[0], a[1], a[2], false),
            Sysno::utimes => self.sys_utimes(libc::AT_FDCWD as u64, a[0], a[1], false),
            Sysno::utime => self.sys_utimes(libc::AT_FDCWD as u64, a[0], a[1], true),
            Sysno::truncate => self.sys_truncate(a[0], a[1]),
            // (offset, length, mode or flags: integers, as the host takes them.)
            Sysno::fallocate | Sysno::sync_file_range => self.host_fd(a[0]).and_then(|f| {
                let a = [
                    i64::from(f.as_raw_fd()),
                    a[1] as i64,
                    a[2] as i64,
                    a[3] as i64,
                ];
                let nr = if sys == Sysno::fallocate {
                    libc::SYS_fallocate
                } else {
                    libc::SYS_sync_file_range
                };
                host::int_call(nr, a).map(|v| v as u64)
            }),
            Sysno::copy_file_range => self.sys_copy_file_range(a),
            Sysno::sendfile => self.sys_sendfile(a[0], a[1], a[2], a[3]),
            Sysno::preadv => self.sys_preadv(a[0], a[1], a[2], a[3] as i64),
            Sysno::preadv2 => self.sys_preadv(a[0], a[1], a[2], a[3] as i64),
            Sysno::pwritev => self.sys_pwritev(a[0], a[1], a[2], a[3] as i64),
            Sysno::pwritev2 => self.sys_pwritev(a[0], a[1], a[2], a[3] as i64),
            Sysno::inotify_init => self.sys_inotify_init(0),
            Sysno::inotify_init1 => self.sys_inotify_init(a[0]),
            Sysno::inotify_add_watch => self.sys_inotify_add_watch(a[0], a[1], a[2]),
            Sysno::inotify_rm_watch => self.host_fd(a[0]).and_then(|f| {
                let a = [i64::from(f.as_raw_fd()), i64::from(a[1] as i32), 0, 0];
                host::int_call(libc::SYS_inotify_rm_watch, a).map(|v| v as u64)
            }),
            Sysno::memfd_create => self.sys_memfd_create(a[0], a[1]),
            Sysno::sync => host::int_call(libc::SYS_sync, [0; 4]).map(|_| 0),
            Sysno::syncfs => self.host_fd(a[0]).and_then(|f| {
                host::int_call(libc::SYS_syncfs, [i64::from(f.as_raw_fd()), 0, 0, 0]).map(|_| 0)
            }),
            // Extended attributes: none, as on a file system without them (cp -a and tar
            // go on without).
            Sysno::getxattr
            | Sysno::lgetxattr
            | Sysno::fgetxattr
            | Sysno::listxattr
            | Sysno::llistxattr
            | Sysno::flistxattr
            | Sysno::setxattr
            | Sysno::lsetxattr
            | Sysno::fsetxattr
            | Sysno::removexattr
            | Sysno::lremovexattr
            | Sysno::fremovexattr => Err(Errno(libc::EOPNOTSUPP)),
            Sysno::msync => self.sys_msync(a[0], a[1], a[2]),
            Sysno::mlock | Sysno::munlock | Sysno::mlock2 | Sysno::mlockall | Sysno::munlockall => {
                ok(0)
            }
            // Scheduling: the program's threads are host threads of lbrprof under the
            // host's normal policy.
            Sysno::sched_getscheduler => ok(libc::SCHED_OTHER as u64),
            Sysno::sched_getparam => self.out(a[1], &0i32.to_le_bytes()).map(|()| 0),
            Sysno::sched_get_priority_max | Sysno::sched_get_priority_min => match a[0] as i32 {
                libc::SCHED_FIFO | libc::SCHED_RR if sys == Sysno::sched_get_priority_max => ok(99),
                libc::SCHED_FIFO | libc::SCHED_RR => ok(1),
                libc::SCHED_OTHER | libc::SCHED_BATCH | libc::SCHED_IDLE => ok(0),
                _ => Err(Errno::EINVAL),
            },
            Sysno::sched_getattr => self.sys_sched_getattr(a[1], a[2], a[3]),
            // A normal policy is accepted, not applied (GLib copies a thread's attributes
            // to the threads it starts); real-time ones would need the host's privilege
            // for lbrprof's threads.
            Sysno::sched_setattr => self.sys_sched_setattr(a[1], a[2]),
            Sysno::sched_setaffinity => ok(0),
            // No membarrier command is offered (the query says none; each other command is
            // EINVAL, as Linux answers one it does not offer): programs (abseil, liburcu)
            // query first and fall back to their own barriers.
            Sysno::membarrier => match (a[0], a[1]) {
                (0, 0) => ok(0),
                _ => Err(Errno::EINVAL),
            },
            // Memory policy: the default (MPOL_DEFAULT, no nodes named); a new policy is
            // accepted, not applied (guest RAM is one host mapping).
            Sysno::get_mempolicy => {
                let mode = if a[0] == 0 {
                    Ok(())
                } else {
                    self.out(a[0], &0i32.to_le_bytes())
                };
                let words = (a[2].min(1 << 16)).div_ceil(64) as usize;
                mode.and_then(|()| match a[1] {
                    0 => Ok(()),
                    mask => self.out(mask, &vec![0u8; words * 8]),
                })
                .map(|()| 0)
            }
            Sysno::set_mempolicy | Sysno::mbind => ok(0),
            Sysno::getpriority | Sysno::setpriority if a[1] == 0 || a[1] == self.pid => {
                let nr = if sys == Sysno::getpriority {
                    libc::SYS_getpriority
                } else {
                    libc::SYS_setpriority
                };
                host::int_call(nr, [a[0] as i64, 0, a[2] as i64, 0]).map(|v| v as u64)
            }
            Sysno::getpriority | Sysno::setpriority => Err(Errno(libc::ESRCH)),
            // PER_LINUX, the only persona: a query answers it, a change keeps it.
            Sysno::personality => ok(0),
            Sysno::umask => ok(u64::from(host::umask(a[0] as u32 & 0o777))),
            Sysno::fadvise64 => self.host_fd(a[0]).map(|_| 0),
            Sysno::brk => ok(self.mm.set_brk(a[0])),
            Sysno::mmap => self.sys_mmap(a),
            Sysno::munmap => self.sys_munmap(a[0], a[1]),
            Sysno::shmget => self.sys_shmget(a[0], a[1], a[2]),
            Sysno::shmat => self.sys_shmat(a[0], a[1], a[2]),
            Sysno::shmdt => self.sys_shmdt(a[0]),
            Sysno::shmctl => self.sys_shmctl(a[0], a[1], a[2]),
            Sysno::mremap => self.sys_mremap(a[0], a[1], a[2], a[3]),
            Sysno::mprotect => {
                let known = self.mm.maps.len();
                let r = self
                    .mm
                    .protect(a[0], a[1], Prot::from_raw(a[2]))
                    .map(|()| 0);
                self.note_new_maps(known);
                r
            }
            Sysno::madvise => {
                if a[2] == libc::MADV_DONTNEED as u64 {
                    self.mm.discard(a[0], a[1]).map(|()| 0)
                } else {
                    ok(0)
                }
            }
            Sysno::arch_prctl => self.sys_arch_prctl(task, a[0], a[1]),
            Sysno::set_tid_address => {
                task.clear_child_tid = a[0];
                ok(task.tid)
            }
            Sysno::set_robust_list => {
                if a[1] != 24 {
                    Err(Errno::EINVAL)
                } else {
                    task.robust_list = (a[0], a[1]);
                    ok(0)
                }
            }
            Sysno::rseq => Err(Errno::ENOSYS),
            // The guest has no protection keys (CR4.PKE is off): Linux answers a CPU
            // without them with ENOSPC (every key taken), and programs (node) go on.
            Sysno::pkey_alloc => Err(Errno(libc::ENOSPC)),
            Sysno::pkey_free => Err(Errno::EINVAL),
            Sysno::getpid => ok(self.pid),
            Sysno::gettid => ok(task.tid),
            Sysno::getppid => ok(self
                .kernel
                .parent(self.pid)
                .unwrap_or(self.kernel.outside_parent())),
            Sysno::getuid => ok(host::ids()[2]),
            // The program has the invoking user's identity and no other: setting an id
            // to the value it has already succeeds, anything else is EPERM.
            Sysno::setuid | Sysno::setgid => {
                let i = if sys == Sysno::setuid { 2 } else { 4 };
                same_ids(&[a[0]], &host::ids()[i..i + 2])
            }
            Sysno::setreuid | Sysno::setregid => {
                let i = if sys == Sysno::setreuid { 2 } else { 4 };
                same_ids(&[a[0], a[1]], &host::ids()[i..i + 2])
            }
            Sysno::setresuid | Sysno::setresgid => {
                let i = if sys == Sysno::setresuid { 2 } else { 4 };
                same_ids(&[a[0], a[1], a[2]], &host::ids()[i..i + 2])
            }
            Sysno::getresuid | Sysno::getresgid => {
                let i = if sys == Sysno::getresuid { 2 } else { 4 };
                let ids = host::ids();
                // (real, effective, saved): saved is the effective one.
                [(a[0], ids[i]), (a[1], ids[i + 1]), (a[2], ids[i + 1])]
                    .iter()
                    .try_for_each(|&(va, id)| self.out(va, &(id as u32).to_le_bytes()))
                    .map(|()| 0)
            }
            Sysno::getgroups if a[0] == 0 => ok(0),
            Sysno::getgroups => ok(0),
            Sysno::getrusage => self
                .usage(task, a[0] as i32)
                .and_then(|u| self.out(a[1], &u.to_rusage()))
                .map(|()| 0),
            // times' `struct tms`: the process's and its children's user and system
            // times in clock ticks; its value is the clock in ticks.
            Sysno::times => self.kernel.clock.ticks().and_then(|t| {
                if a[0] != 0 {
                    let (own, children) = (self.usage(task, 0)?, self.usage(task, -1)?);
                    let mut b = [0u8; 32];
                    for (i, d) in [own.user, own.system, children.user, children.system]
                        .into_iter()
                        .enumerate()
                    {
                        let ticks = (d.as_millis() / 10) as u64;
                        b[i * 8..i * 8 + 8].copy_from_slice(&ticks.to_le_bytes());
                    }
                    self.out(a[0], &b)?;
                }
                Ok(t)
            }),
            Sysno::geteuid => ok(host::ids()[3]),
            Sysno::getgid => ok(host::ids()[4]),
            Sysno::getegid => ok(host::ids()[5]),
            Sysno::uname => self.out(a[0], &host::uname()).map(|()| 0),
            Sysno::sysinfo => {
                let (total, free) = self.mm.ram();
                let uptime = self.kernel.clock.uptime();
                self.out(a[0], &host::sysinfo(total, free, uptime))
                    .map(|()| 0)
            }
            Sysno::prlimit64 => self.sys_prlimit(a[0], a[1] as u32, a[2], a[3]),
            Sysno::getrlimit => self.sys_prlimit(0, a[0] as u32, 0, a[1]),
            Sysno::setrlimit => self.sys_prlimit(0, a[0] as u32, a[1], 0),
            Sysno::sched_getaffinity => host::sched_getaffinity(a[1] as usize)
                .and_then(|m| self.out(a[2], &m).map(|()| m.len() as u64)),
            Sysno::getcpu => host::getcpu().and_then(|(cpu, node)| {
                for (va, v) in [(a[0], cpu), (a[1], node)] {
                    if va != 0 {
                        self.out(va, &v.to_le_bytes())?;
                    }
                }
                Ok(0)
            }),
            Sysno::sched_yield => {
                std::thread::yield_now();
                ok(0)
            }
            Sysno::clock_gettime => match self.cpu_clock(task, a[0] as i32) {
                Some(t) => t.map(|d| (d.as_secs() as i64, i64::from(d.subsec_nanos()))),
                None => self.kernel.clock.now(a[0] as i32),
            }
            .and_then(|t| self.out_timespec(a[1], t).map(|()| 0)),
            Sysno::clock_getres => match self.cpu_clock(task, a[0] as i32) {
                Some(t) => t.map(|_| (0, 1)),
                None => self.kernel.clock.resolution(a[0] as i32),
            }
            .and_then(|t| {
                if a[1] != 0 {
                    self.out_timespec(a[1], t)?;
                }
                Ok(0)
            }),
            Sysno::gettimeofday => {
                self.kernel
                    .clock
                    .now(libc::CLOCK_REALTIME)
                    .and_then(|(s, ns)| {
                        if a[0] != 0 {
                            self.out_timespec(a[0], (s, ns / 1000))?;
                        }
                        Ok(0)
                    })
            }
            Sysno::time => self
                .kernel
                .clock
                .now(libc::CLOCK_REALTIME)
                .and_then(|(s, _)| {
                    if a[0] != 0 {
                        self.out(a[0], &s.to_le_bytes())?;
                    }
                    Ok(s as u64)
                }),
            Sysno::nanosleep => return self.sys_sleep(task, libc::CLOCK_MONOTONIC, 0, a[0], a[1]),
            Sysno::clock_nanosleep => {
                return self.sys_sleep(task, a[0] as i32, a[1] as i32, a[2], a[3]);
            }
            Sysno::getrandom => {
                let mut b = vec![0u8; (a[1] as usize).min(MAX_IO)];
                self.entropy
                    .fill(&mut b, a[2] as u32)
                    .and_then(|n| self.out(a[0], &b[..n]).map(|()| n as u64))
            }
            Sysno::rt_sigsuspend => {
                if a[1] != 8 {
                    return Outcome::Return(Errno::EINVAL.ret());
                }
                match self.mm.read_u64(a[0]) {
                    Ok(mask) => {
                        return self.with_mask(task, Some(mask), Outcome::Block(Block::Suspend));
                    }
                    Err(e) => Err(e),
                }
            }
            Sysno::pause => return Outcome::Block(Block::Suspend),
            Sysno::rt_sigtimedwait => return self.sys_sigtimedwait(task, a[0], a[1], a[2], a[3]),
            Sysno::alarm => {
                let stop = crate::kick::stop_flag();
                let secs = std::time::Duration::from_secs(u64::from(a[0] as u32));
                let (left, _) =
                    self.itimer
                        .set(&self.shared, stop, secs, std::time::Duration::ZERO);
                ok(itimer::alarm_seconds(left))
            }
            Sysno::setitimer => self.sys_setitimer(a[0], a[1], a[2]),
            Sysno::timer_create => self.sys_timer_create(a[0], a[1], a[2]),
            Sysno::timer_settime => self.sys_timer_settime(task, a[0], a[1], a[2], a[3]),
            Sysno::timer_gettime => self
                .timers
                .get(&a[0])
                .ok_or(Errno::EINVAL)
                .map(|t| t.get())
                .and_then(|v| self.out_itimerspec(a[1], v).map(|()| 0)),
            Sysno::timer_getoverrun => self
                .timers
                .get(&a[0])
                .ok_or(Errno::EINVAL)
                .map(|t| t.overrun()),
            Sysno::timer_delete => match self.timers.remove(&a[0]) {
                Some(t) => {
                    let stop = crate::kick::stop_flag();
                    t.set(&self.shared, stop, Duration::ZERO, Duration::ZERO);
                    self.drop_timer_signal(task, a[0]);
                    Ok(0)
                }
                None => Err(Errno::EINVAL),
            },
            Sysno::getitimer => self.sys_getitimer(a[0], a[1]),
            Sysno::rt_sigaction => self.sys_sigaction(a[0], a[1], a[2], a[3]),
            Sysno::rt_sigprocmask => self.sys_sigprocmask(task, a[0], a[1], a[2]),
            // The blocked signals pending for this thread or its process.
            Sysno::rt_sigpending if a[1] != 8 => Err(Errno::EINVAL),
            Sysno::rt_sigpending => {
                let process = self
                    .shared
                    .signals
                    .load(std::sync::atomic::Ordering::Acquire);
                let set = (task.pending.set() | process) & task.sigmask;
                self.out(a[0], &set.to_le_bytes()).map(|()| 0)
            }
            Sysno::sigaltstack => self.sys_sigaltstack(task, a[0], a[1]),
            Sysno::kill => {
                let pid = i64::from(a[0] as i32);
                // The process itself (any of its threads takes it: this one, unless it
                // blocks it: then it is pending for the process, for another thread or a
                // signalfd to take).
                if pid as u64 == self.pid {
                    let sig = a[1];
                    let blocked = (1..=64).contains(&sig)
                        && sig != libc::SIGKILL as u64
                        && task.sigmask & (1 << (sig - 1)) != 0;
                    if blocked {
                        let info = self.info_from_self(sig as i32, signal::SI_USER);
                        self.shared.post_info(info);
                        return Outcome::Return(0);
                    }
                    return self.sys_kill(task, task.tid, sig, signal::SI_USER);
                }
                if a[1] > 64 {
                    return Outcome::Return(Errno::EINVAL.ret());
                }
                if pid > 0 {
                    // Another process takes it at its next system call.
                    if self.kernel.signal(pid as u64, a[1], self.pid) {
                        Ok(0)
                    } else {
                        Err(Errno(libc::ESRCH))
                    }
                } else {
                    let group = match pid {
                        0 | -1 => self.kernel.pgid(self.pid).unwrap_or(self.pid),
                        _ => pid.unsigned_abs(),
                    };
                    let members = self.kernel.group(group);
                    for &m in members.iter().filter(|&&m| m != self.pid) {
                        self.kernel.signal(m, a[1], self.pid);
                    }
                    if members.contains(&self.pid) {
                        return self.sys_kill(task, task.tid, a[1], signal::SI_USER);
                    }
                    if members.is_empty() {
                        Err(Errno(libc::ESRCH))
                    } else {
                        Ok(0)
                    }
                }
            }
            Sysno::tgkill if a[0] != self.pid => Err(Errno(libc::ESRCH)),
            Sysno::tgkill => return self.sys_kill(task, a[1], a[2], signal::SI_TKILL),
            Sysno::tkill => return self.sys_kill(task, a[0], a[1], signal::SI_TKILL),
            Sysno::rt_sigqueueinfo => return self.sys_sigqueue(task, a[0], None, a[1], a[2]),
            Sysno::rt_tgsigqueueinfo if a[0] != self.pid => Err(Errno(libc::ESRCH)),
            Sysno::rt_tgsigqueueinfo => {
                return self.sys_sigqueue(task, a[0], Some(a[1]), a[2], a[3]);
            }
            Sysno::futex => return self.sys_futex(task, a),
            Sysno::prctl => match a[0] as i32 {
                libc::PR_SET_NAME => self.mm.read_cstr(a[1], PATH_MAX).map(|n| {
                    let n = &n[..n.len().min(15)];
                    task.comm = [0; 16];
                    task.comm[..n.len()].copy_from_slice(n);
                    self.shared.shown().threads.insert(task.tid, task.comm);
                    0
                }),
                libc::PR_GET_NAME => self.out(a[1], &task.comm).map(|()| 0),
                // The signal sent when the parent ends (postgres's children ask for
                // SIGKILL/SIGQUIT so they do not outlive the postmaster).
                libc::PR_SET_PDEATHSIG if a[1] > 64 => Err(Errno::EINVAL),
                libc::PR_SET_PDEATHSIG => {
                    self.shared
                        .pdeathsig
                        .store(a[1], std::sync::atomic::Ordering::Release);
                    ok(0)
                }
                libc::PR_GET_PDEATHSIG => {
                    let sig = self
                        .shared
                        .pdeathsig
                        .load(std::sync::atomic::Ordering::Acquire);
                    self.out(a[1], &(sig as u32).to_le_bytes()).map(|()| 0)
                }
                _ => Err(Errno::EINVAL),
            },
            Sysno::poll => {
                let timeout = a[2] as i32;
                let deadline = (timeout >= 0)
                    .then(|| Self::deadline_after(task, Duration::from_millis(timeout as u64)));
                return self.sys_poll(a[0], a[1], deadline);
            }
            Sysno::ppoll => {
                let mask = match self.sigset_arg(a[3], a[4]) {
                    Ok(m) => m,
                    Err(e) => return Outcome::Return(e.ret()),
                };
                let deadline = if a[2] == 0 {
                    None
                } else {
                    match self.timeout(task, a[2], libc::CLOCK_MONOTONIC, false) {
                        Ok(d) => Some(d.unwrap_or_else(std::time::Instant::now)),
                        Err(e) => return Outcome::Return(e.ret()),
                    }
                };
                let out = self.sys_poll(a[0], a[1], deadline);
                return self.with_mask(task, mask, out);
            }
            // Event descriptors (events.rs).
            Sysno::epoll_create1 => self.sys_epoll_create(a[0], None),
            Sysno::epoll_create => self.sys_epoll_create(0, Some(a[0])),
            Sysno::epoll_ctl => self.sys_epoll_ctl(a[0], a[1], a[2], a[3]),
            Sysno::epoll_wait | Sysno::epoll_pwait => {
                let mask = match sys {
                    Sysno::epoll_pwait => self.sigset_arg(a[4], a[5]),
                    _ => Ok(None),
                };
                let mask = match mask {
                    Ok(m) => m,
                    Err(e) => return Outcome::Return(e.ret()),
                };
                let timeout = a[3] as i32;
                let deadline = (timeout >= 0)
                    .then(|| Self::deadline_after(task, Duration::from_millis(timeout as u64)));
                let out = self.sys_epoll_wait(a[0], a[1], a[2], deadline);
                return self.with_mask(task, mask, out);
            }
            Sysno::epoll_pwait2 => {
                let deadline = if a[3] == 0 {
                    None
                } else {
                    match self.timeout(task, a[3], libc::CLOCK_MONOTONIC, false) {
                        Ok(d) => Some(d.unwrap_or_else(std::time::Instant::now)),
                        Err(e) => return Outcome::Return(e.ret()),
                    }
                };
                let mask = match self.sigset_arg(a[4], a[5]) {
                    Ok(m) => m,
                    Err(e) => return Outcome::Return(e.ret()),
                };
                let out = self.sys_epoll_wait(a[0], a[1], a[2], deadline);
                return self.with_mask(task, mask, out);
            }
            Sysno::eventfd2 => self.sys_eventfd(a[0], a[1]),
            Sysno::signalfd4 => self.sys_signalfd(a[0], a[1], a[2], a[3]),
            Sysno::signalfd => self.sys_signalfd(a[0], a[1], a[2], 0),
            Sysno::eventfd => self.sys_eventfd(a[0], 0),
            Sysno::timerfd_create => self.sys_timerfd_create(a[0], a[1]),
            Sysno::timerfd_settime => self.sys_timerfd_settime(a[0], a[1], a[2], a[3]),
            Sysno::timerfd_gettime => self.sys_timerfd_gettime(a[0], a[1]),
            // Sockets (net.rs).
            Sysno::socket => self.sys_socket(a[0], a[1], a[2]),
            Sysno::socketpair => self.sys_socketpair(a[0], a[1], a[2], a[3]),
            Sysno::bind => self.sys_bind_connect(a[0], a[1], a[2], false),
            Sysno::connect => self.sys_bind_connect(a[0], a[1], a[2], true),
            Sysno::listen => self.sys_listen(a[0], a[1]),
            Sysno::accept => self.sys_accept(a[0], a[1], a[2], 0),
            Sysno::accept4 => self.sys_accept(a[0], a[1], a[2], a[3]),
            Sysno::setsockopt => self.sys_setsockopt(a[0], a[1], a[2], a[3], a[4]),
            Sysno::getsockopt => self.sys_getsockopt(a[0], a[1], a[2], a[3], a[4]),
            Sysno::shutdown => self.sys_shutdown(a[0], a[1]),
            Sysno::sendto => self.sys_sendto(a[0], a[1], a[2], a[3], a[4], a[5]),
            Sysno::recvfrom => self.sys_recvfrom(a[0], a[1], a[2], a[3], a[4], a[5]),
            Sysno::sendmsg => self.sys_sendmsg(a[0], a[1], a[2]),
            Sysno::recvmsg => self.sys_recvmsg(a[0], a[1], a[2]),
            Sysno::sendmmsg => self.sys_mmsg(a[0], a[1], a[2], a[3], true),
            Sysno::recvmmsg => self.sys_mmsg(a[0], a[1], a[2], a[3], false),
            Sysno::clone3 => Err(Errno::ENOSYS),
            // A kernel built without io_uring (CONFIG_IO_URING=n) answers so; its users
            // (qemu-img, liburing's) fall back to threads or epoll.
            Sysno::io_uring_setup => Err(Errno::ENOSYS),
            _ => {
                *self
                    .report
                    .unimplemented
                    .entry(sys.name().to_owned())
                    .or_insert(0) += 1;
                Err(Errno::ENOSYS)
            }
        };
        // A write to a pipe nobody reads: SIGPIPE, as the kernel sends it (its default
        // action ends the program; a program that ignores it sees EPIPE).
        if r == Err(Errno(libc::EPIPE))
            && matches!(sys, Sysno::write | Sysno::writev | Sysno::pwrite64)
        {
            self.send_self(task, libc::SIGPIPE, signal::SI_USER);
        }
        Outcome::Return(match r {
            Ok(v) => v,
            Err(e) => e.ret(),
        })
    }

    fn sys_read(
        &mut self,
        task: &mut Task,
        fd: u64,
        buf: u64,
        count: u64,
        off: Option<i64>,
    ) -> Sys {
        if let Some(set) = self.fds.get(fd)?.signal_mask {
            return self.read_signalfd(task, fd, set, buf, count);
        }
        let mut b = vec![0u8; (count as usize).min(MAX_IO)];
        // A buffer the program may not write (PROT_NONE, read-only, unmapped) is EFAULT
        // before anything is read: the bytes stay in a pipe, the offset unmoved.
        self.mm.check_writable(GuestVirtAddr(buf), b.len())?;
        let n = if self.fds.get(fd)?.seeded_random {
            // The random devices ignore the offset of a pread.
            self.entropy.fill(&mut b, 0)?
        } else {
            let f = self.host_fd(fd)?;
            match off {
                None => host::read(f, &mut b)?,
                Some(o) => host::pread(f, &mut b, o)?,
            }
        };
        self.out(buf, &b[..n])?;
        Ok(n as u64)
    }

    fn sys_write(&mut self, fd: u64, buf: u64, count: u64, off: Option<i64>) -> Sys {
        let f = self.host_fd(fd)?;
        let mut b = vec![0u8; (count as usize).min(MAX_IO)];
        self.mm.read(GuestVirtAddr(buf), &mut b)?;
        let n = match off {
            None => host::write(f, &b)?,
            Some(o) => host::pwrite(f, &b, o)?,
        };
        Ok(n as u64)
    }

    /// The (base, len) pairs of a `struct iovec` array.
    pub(crate) fn iovecs(&self, iov: u64, cnt: u64) -> Result<Vec<(u64, u64)>, Errno> {
        if cnt > 1024 {
            return Err(Errno::EINVAL);
        }
        let mut raw = vec![0u8; 16 * cnt as usize];
        self.mm.read(GuestVirtAddr(iov), &mut raw)?;
        Ok(raw
            .chunks_exact(16)
            .map(|c| {
                let w = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap_or_default());
                (w(0), w(8))
            })
            .collect())
    }

    fn sys_readv(&mut self, fd: u64, iov: u64, cnt: u64) -> Sys {
        let v = self.iovecs(iov, cnt)?;
        let mut b = vec![0u8; iov_room(&v)];
        let n = if self.fds.get(fd)?.seeded_random {
            self.entropy.fill(&mut b, 0)?
        } else {
            host::read(self.host_fd(fd)?, &mut b)?
        };
        self.scatter(&v, &b[..n])?;
        Ok(n as u64)
    }

    /// Spreads `data` over the buffers of an iovec array in order, as far as it reaches
    /// (the second half of readv, preadv and recvmsg).
    pub(crate) fn scatter(&self, v: &[(u64, u64)], data: &[u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        for &(base, len) in v {
            if done >= data.len() {
                break;
            }
            let k = (len as usize).min(data.len() - done);
            self.out(base, &data[done..done + k])?;
            done += k;
        }
        Ok(())
    }

    /// The bytes of a `struct iovec` array, in order (at most [`MAX_IO`]).
    pub(crate) fn gather(&self, iov: u64, cnt: u64) -> Result<Vec<u8>, Errno> {
        let v = self.iovecs(iov, cnt)?;
        let mut b = Vec::new();
        for (base, len) in v {
            let len = (len as usize).min(MAX_IO.saturating_sub(b.len()));
            let start = b.len();
            b.resize(start + len, 0);
            self.mm.read(GuestVirtAddr(base), &mut b[start..])?;
        }
        Ok(b)
    }

    fn sys_writev(&mut self, fd: u64, iov: u64, cnt: u64) -> Sys {
        let b = self.gather(iov, cnt)?;
        let f = self.host_fd(fd)?;
        Ok(host::write(f, &b)? as u64)
    }

    fn sys_openat(&mut self, tid: u64, dirfd: u64, path: u64, flags: u64, mode: u64) -> Sys {
        let raw = self.mm.read_cstr(path, PATH_MAX)?;
        let raw = self.thread_self(tid, self.beside_proc(dirfd, raw));
        let cloexec = flags as i32 & libc::O_CLOEXEC != 0;
        match self.proc_file(&raw, flags as i32)? {
            Some(Served::File(file)) => return self.fds.insert(Fd::new(file, cloexec)),
            Some(Served::Listing(dir, listing)) => {
                let mut f = Fd::new(dir, cloexec);
                f.listing = Some(listing);
                return self.fds.insert(f);
            }
            None => {}
        }
        let mut p = self.proc_path(raw.clone())?;
        let session = self.kernel.controlling(self.pid);
        if raw == b"/dev/tty" {
            // The controlling terminal of the caller's session.
            match &session {
                Controlling::Outside => {}
                Controlling::Guest(t) => p = t.path.as_os_str().as_bytes().to_vec(),
                Controlling::Detached => return Err(Errno(libc::ENXIO)),
            }
        }
        // Only the shim's own translation of a descriptor link may go through one.
        let open = if self.names_own_descriptor(&raw) {
            host::openat
        } else {
            host::openat_no_magic
        };
        let fd = open(self.dir(dirfd)?, &p, flags as i32, mode as u32)?;
        if session == Controlling::Detached && flags as i32 & libc::O_NOCTTY == 0 {
            // A session leader with no terminal that opens one acquires it.
            if let Ok((rdev, path)) = host::terminal(fd.as_fd()) {
                let _ = self.kernel.acquire_terminal(self.pid, rdev, path);
            }
        }
        let listing = (flags as i32 & libc::O_DIRECTORY != 0)
            .then(|| self.own_listing_for(&fd))
            .flatten();
        let mut f = Fd::new(fd, cloexec);
        f.listing = listing;
        if self.entropy.is_seeded() {
            f.seeded_random = host::file_kind(f.host())
                .is_ok_and(|(kind, rdev)| kind == libc::S_IFCHR && entropy::is_random_device(rdev));
        }
        self.fds.insert(f)
    }

    fn sys_readlink(&mut self, tid: u64, dirfd: u64, path: u64, buf: u64, size: u64) -> Sys {
        let raw = self.mm.read_cstr(path, PATH_MAX)?;
        let target = match self.proc_link(&raw, tid) {
            Some(link) => link,
            None => {
                let p = self.path(path)?;
                host::readlinkat(self.dir(dirfd)?, &p, size as usize)?
            }
        };
        let n = target.len().min(size as usize);
        self.out(buf, &target[..n])?;
        Ok(n as u64)
    }

    fn sys_getcwd(&mut self, buf: u64, size: u64) -> Sys {
        use std::os::unix::ffi::OsStrExt;
        let cwd = match &self.cwd {
            Some((p, _)) => p.clone(),
            None => std::env::current_dir().map_err(|_| Errno(libc::ENOENT))?,
        };
        let mut b = cwd.as_os_str().as_bytes().to_vec();
        b.push(0);
        if b.len() as u64 > size {
            return Err(Errno(libc::ERANGE));
        }
        self.out(buf, &b)?;
        Ok(b.len() as u64)
    }

    fn sys_dup3(&mut self, old: u64, new: u64, flags: u64, is_dup2: bool) -> Sys {
        let mut f = self.fds.get(old)?.clone();
        if old == new {
            return if is_dup2 { Ok(new) } else { Err(Errno::EINVAL) };
        }
        f.cloexec = flags as i32 & libc::O_CLOEXEC != 0;
        self.fds.insert_at(new, f)?;
        Ok(new)
    }

    fn sys_fcntl(&mut self, fd: u64, cmd: i32, arg: u64) -> Sys {
        match cmd {
            libc::F_GETFD => Ok(u64::from(self.fds.get(fd)?.cloexec)),
            libc::F_SETFD => {
                self.fds.get_mut(fd)?.cloexec = arg & libc::FD_CLOEXEC as u64 != 0;
                Ok(0)
            }
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
                let mut f = self.fds.get(fd)?.clone();
                f.cloexec = cmd == libc::F_DUPFD_CLOEXEC;
                let min = usize::try_from(arg)
                    .ok()
                    .filter(|&m| m < self.fds.limit())
                    .ok_or(Errno::EINVAL)?;
                self.fds.insert_from(min, f)
            }
            libc::F_GETFL | libc::F_SETFL | libc::F_GETPIPE_SZ => {
                let f = self.host_fd(fd)?;
                host::fcntl_int(f, cmd, arg as i64).map(|v| v as u64)
            }
            libc::F_SETLK | libc::F_GETLK | libc::F_OFD_SETLK | libc::F_OFD_GETLK => {
                self.record_lock(fd, cmd, arg)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// A record lock (fcntl F_SETLK, F_GETLK and their OFD forms; F_SETLKW and
    /// F_OFD_SETLKW are tried as F_SETLK here, see `lock_or_retry`), on the host file.
    ///
    /// Every guest process lives in this one host process, where classic POSIX locks
    /// would never conflict with each other and would be dropped when any guest process
    /// closes any descriptor of the file. So the host lock is an open-file-description
    /// lock: guest processes that opened the file each for themselves exclude each other
    /// as natively, and a lock lasts until its open file is closed. (What differs from
    /// POSIX: a forked child shares its parent's locks, two opens of one file in one
    /// process exclude each other, and F_GETLK reports the holder's pid as -1.)
    fn record_lock(&mut self, fd: u64, cmd: i32, arg: u64) -> Sys {
        let f = self.host_fd(fd)?;
        let mut raw = [0u8; FLOCK_SIZE];
        self.mm
            .read(GuestVirtAddr(arg), &mut raw)
            .map_err(|_| Errno::EFAULT)?;
        let mut lock = host::Flock::from_bytes(&raw);
        let host_cmd = match cmd {
            libc::F_SETLK | libc::F_SETLKW | libc::F_OFD_SETLK | libc::F_OFD_SETLKW => {
                libc::F_OFD_SETLK
            }
            _ => libc::F_OFD_GETLK,
        };
        if matches!(cmd, libc::F_SETLK | libc::F_SETLKW | libc::F_GETLK) {
            // OFD locks take no pid (the POSIX forms ignore it).
            lock.pid = 0;
        }
        host::record_lock(f, host_cmd, &mut lock)?;
        if host_cmd == libc::F_OFD_GETLK {
            self.out(arg, &lock.to_bytes())?;
        }
        Ok(0)
    }

    /// A lock call that would wait (F_SETLKW, flock without LOCK_NB) and found the lock
    /// held: wait a little, or until a signal, and make the call again (restarted after a
    /// handler with SA_RESTART, else EINTR, as signal(7) says of these calls). The host
    /// has no lock wait that a signal for a guest thread could end, and a host thread
    /// blocked in one would keep its vCPU from stopping.
    fn lock_or_retry(&mut self, task: &Task, sys: Sysno, lock: Sys) -> Outcome {
        match lock {
            Err(Errno(libc::EAGAIN | libc::EACCES)) => {
                task.waiter.reset();
                Outcome::Block(Block::Retry {
                    until: std::time::Instant::now() + LOCK_RETRY,
                    nr: sys as u64,
                })
            }
            r => Outcome::Return(r.unwrap_or_else(Errno::ret)),
        }
    }

    /// mincore: every mapped page is resident (the shim backs a page when it is mapped);
    /// ENOMEM when part of the range is not mapped, as natively.
    fn sys_mincore(&mut self, addr: u64, len: u64, vec: u64) -> Sys {
        if !addr.is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        let pages = usize::try_from(len.div_ceil(PAGE)).map_err(|_| Errno::ENOMEM)?;
        if pages > MAX_IO {
            return Err(Errno::ENOMEM);
        }
        let mut resident = vec![1u8; pages];
        let mut at = addr;
        while at < end {
            let vma = self.mm.vma_at(at).ok_or(Errno::ENOMEM)?;
            let (lazy, next) = (vma.lazy, vma.end);
            if lazy {
                // A lazy mapping's untouched pages are not in memory.
                let stop = next.min(end);
                let page = |va: u64| ((va - addr) / PAGE) as usize;
                resident[page(at)..page(stop.div_ceil(PAGE) * PAGE)].fill(0);
                for (va, _, _) in self.mm.backed_leaves(at, stop)? {
                    resident[page(va)] = 1;
                }
            }
            at = next;
        }
        self.out(vec, &resident).map(|()| 0)
    }

    /// capget: the capabilities of lbrprof itself, which are the program's rights on the
    /// host (its header and one or two data structs, by the header's version).
    fn sys_capget(&mut self, header: u64, data: u64) -> Sys {
        let mut head = [0u8; 8];
        self.mm
            .read(GuestVirtAddr(header), &mut head)
            .map_err(|_| Errno::EFAULT)?;
        let (version, caps) = host::capget(u32::from_le_bytes(head[..4].try_into().unwrap()));
        // An unknown version: the kernel writes back its own and says EINVAL.
        self.out(header, &version.to_le_bytes())?;
        let caps = caps?;
        if data != 0 {
            self.out(data, &caps)?;
        }
        Ok(0)
    }

    /// close_range: close (or, with CLOSE_RANGE_CLOEXEC, mark close-on-exec) every open
    /// descriptor from `first` to `last`. This process's table is its own already, so
    /// CLOSE_RANGE_UNSHARE has nothing to do.
    fn sys_close_range(&mut self, first: u64, last: u64, flags: u64) -> Sys {
        const UNSHARE: u64 = 1 << 1;
        const CLOEXEC: u64 = 1 << 2;
        if flags & !(UNSHARE | CLOEXEC) != 0 || first > last {
            return Err(Errno::EINVAL);
        }
        self.fds.close_range(first, last, flags & CLOEXEC != 0);
        Ok(0)
    }

    fn sys_pipe(&mut self, fds: u64, flags: u64) -> Sys {
        let (r, w): (OwnedFd, OwnedFd) = host::pipe()?;
        let cloexec = flags as i32 & libc::O_CLOEXEC != 0;
        if flags as i32 & libc::O_NONBLOCK != 0 {
            host::fcntl_int(
                std::os::fd::AsFd::as_fd(&r),
                libc::F_SETFL,
                libc::O_NONBLOCK as i64,
            )?;
            host::fcntl_int(
                std::os::fd::AsFd::as_fd(&w),
                libc::F_SETFL,
                libc::O_NONBLOCK as i64,
            )?;
        }
        let a = self.fds.insert(Fd::new(r, cloexec))?;
        let b = match self.fds.insert(Fd::new(w, cloexec)) {
            Ok(b) => b,
            Err(e) => {
                let _ = self.fds.close(a);
                return Err(e);
            }
        };
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&(a as u32).to_le_bytes());
        out[4..].copy_from_slice(&(b as u32).to_le_bytes());
        if let Err(e) = self.out(fds, &out) {
            let _ = self.fds.close(a);
            let _ = self.fds.close(b);
            return Err(e);
        }
        Ok(0)
    }

    fn sys_mmap(&mut self, a: [u64; 6]) -> Sys {
        let (addr, len, prot, flags, fd, off) =
            (a[0], a[1], Prot::from_raw(a[2]), a[3] as i32, a[4], a[5]);
        if len == 0 || off % PAGE != 0 {
            return Err(Errno::EINVAL);
        }
        let len = len.checked_add(PAGE - 1).ok_or(Errno::ENOMEM)? & !(PAGE - 1);
        if off.checked_add(len).is_none() {
            return Err(Errno(libc::EOVERFLOW));
        }
        let fixed = flags & libc::MAP_FIXED != 0;
        let noreplace = flags & libc::MAP_FIXED_NOREPLACE != 0;
        let anon = flags & libc::MAP_ANONYMOUS != 0;
        let shared = flags & libc::MAP_SHARED != 0;
        let mut shm = None;
        let file = if anon {
            if shared {
                let obj = SharedObject::anonymous(self.mm.memory_arc(), self.mm.pool());
                shm = Some(ShmRef {
                    obj,
                    offset: 0,
                    may_write: true,
                });
            }
            None
        } else {
            let f = self.fds.get(fd)?;
            // A shared mapping of a regular file shares its pages ([`crate::linux::shm`]);
            // of anything else (a device) only read-only, as a copy.
            let regular = host::file_id(f.host())?.0 == libc::S_IFREG;
            let writer = host::fcntl_int(f.host(), libc::F_GETFL, 0)? as i32 & libc::O_ACCMODE
                == libc::O_RDWR;
            if shared && regular && prot.writable() && !writer {
                return Err(Errno(libc::EACCES));
            }
            if shared && !regular && prot.writable() {
                return Err(Errno(libc::ENODEV));
            }
            if !shared
                && regular
                && let Some(obj) = self.kernel.shm.lookup(f.host())
            {
                // A private copy starts from what the shared mappings wrote, as on
                // Linux, where both start from the page cache.
                obj.write_back_all()?;
            }
            let raw = f.host().as_raw_fd();
            let dup = host::dup(raw)?;
            let path = host::path_of(dup.as_fd()).unwrap_or_default();
            let file = std::sync::Arc::new(std::fs::File::from(dup));
            if shared && regular {
                let obj = self.kernel.shm.object(
                    &self.mm.memory_arc(),
                    &self.mm.pool(),
                    file.clone(),
                    writer,
                )?;
                shm = Some(ShmRef {
                    obj,
                    offset: off,
                    may_write: writer,
                });
            }
            Some(FileBacking {
                path,
                file,
                offset: off,
            })
        };
        let start = if fixed || noreplace {
            if addr % PAGE != 0 {
                return Err(Errno::EINVAL);
            }
            if noreplace && !self.mm.is_free(addr, addr.saturating_add(len)) {
                return Err(Errno::EEXIST);
            }
            addr
        } else {
            let hint = addr & !(PAGE - 1);
            if hint >= MMAP_MIN && self.mm.is_free(hint, hint.saturating_add(len)) {
                hint
            } else {
                self.mm.find_free(len).ok_or(Errno::ENOMEM)?
            }
        };
        let known = self.mm.maps.len();
        match shm {
            Some(shm) => self.mm.map_shared(start, len, prot, file, shm)?,
            // MAP_NORESERVE: backed page by page at first touch (sanitizers' shadow).
            None if file.is_none() => {
                let lazy = flags & libc::MAP_NORESERVE != 0;
                self.mm.map_anonymous(start, len, prot, lazy)?
            }
            None => self.mm.map(start, len, prot, file, "")?,
        }
        self.note_new_maps(known);
        Ok(start)
    }

    /// msync: write the shared file pages of the range back (private mappings have
    /// nothing to write back); ENOMEM when part of the range is not mapped.
    fn sys_msync(&mut self, addr: u64, len: u64, flags: u64) -> Sys {
        let (sync, invalidate, asynchronous) = (
            libc::MS_SYNC as u64,
            libc::MS_INVALIDATE as u64,
            libc::MS_ASYNC as u64,
        );
        if !addr.is_multiple_of(PAGE)
            || flags & !(sync | invalidate | asynchronous) != 0
            || flags & (sync | asynchronous) == sync | asynchronous
        {
            return Err(Errno::EINVAL);
        }
        let end = addr
            .checked_add(len)
            .and_then(|e| e.checked_add(PAGE - 1))
            .ok_or(Errno::ENOMEM)?
            & !(PAGE - 1);
        let mut at = addr;
        while at < end {
            at = self.mm.vma_at(at).ok_or(Errno::ENOMEM)?.end;
        }
        self.mm
            .write_back(addr, end)
            .map_err(|_| Errno(libc::EIO))
            .map(|()| 0)
    }

    fn sys_munmap(&mut self, addr: u64, len: u64) -> Sys {
        if !addr.is_multiple_of(PAGE) || len == 0 {
            return Err(Errno::EINVAL);
        }
        self.mm.unmap(addr, len).map(|()| 0)
    }

    /// `mremap` of anonymous or shared memory: shrink in place, grow in place when the
    /// range above is free, else move (MREMAP_MAYMOVE) without a copy: a shared
    /// mapping's new pages are the same frames, a private one's pages take their frames
    /// along, `PROT_NONE` ones too. Private file mappings: EINVAL.
    fn sys_mremap(&mut self, old: u64, old_len: u64, new_len: u64, flags: u64) -> Sys {
        let round = |v: u64| v.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1));
        let (Some(old_len), Some(new_len)) = (round(old_len), round(new_len)) else {
            return Err(Errno::EINVAL);
        };
        if !old.is_multiple_of(PAGE) || new_len == 0 || flags & !(libc::MREMAP_MAYMOVE as u64) != 0
        {
            return Err(Errno::EINVAL);
        }
        let vma = self.mm.vma_at(old).ok_or(Errno::EFAULT)?;
        if (vma.file.is_some() && vma.shm.is_none()) || vma.end < old.saturating_add(old_len) {
            return Err(Errno::EINVAL);
        }
        let (prot, lazy) = (vma.prot, vma.lazy);
        // The shared object and file at `old` and at `old + n`.
        let skip = old - vma.start;
        let (shm, file) = (vma.shm.clone(), vma.file.clone());
        let at = |n: u64| {
            // Past the end of the offsets: EOVERFLOW when the pages are made.
            let shm = shm.clone().map(|mut s| {
                s.offset = s.offset.wrapping_add(skip + n);
                s
            });
            let file = file.clone().map(|mut f| {
                f.offset = f.offset.wrapping_add(skip + n);
                f
            });
            (shm, file)
        };
        if new_len <= old_len {
            if new_len < old_len {
                self.mm.unmap(old + new_len, old_len - new_len)?;
            }
            return Ok(old);
        }
        let end = old.saturating_add(old_len);
        let known = self.mm.maps.len();
        if self.mm.is_free(end, old.saturating_add(new_len)) {
            match at(old_len) {
                (Some(s), file) => self.mm.map_shared(end, new_len - old_len, prot, file, s)?,
                (None, _) if lazy => self.mm.map_anonymous(end, new_len - old_len, prot, true)?,
                (None, _) => self.mm.map(end, new_len - old_len, prot, None, "")?,
            }
            self.note_new_maps(known);
            return Ok(old);
        }
        if flags & libc::MREMAP_MAYMOVE as u64 == 0 {
            return Err(Errno::ENOMEM);
        }
        let to = self.mm.find_free(new_len).ok_or(Errno::ENOMEM)?;
        if let (Some(s), file) = at(0) {
            self.mm.map_shared(to, new_len, prot, file, s)?;
            self.mm.unmap(old, old_len)?;
            self.note_new_maps(known);
            return Ok(to);
        }
        // Its pages move with their frames (a lazy mapping's untouched ones cost nothing).
        self.mm.move_anonymous(old, old_len, to, new_len)?;
        self.note_new_maps(known);
        Ok(to)
    }

    fn sys_arch_prctl(&mut self, task: &mut Task, code: u64, addr: u64) -> Sys {
        match code {
            ARCH_SET_FS => {
                if addr >= USER_END {
                    return Err(Errno::EFAULT);
                }
                task.fs_base = addr;
                Ok(0)
            }
            ARCH_GET_FS => self.out(addr, &task.fs_base.to_le_bytes()).map(|()| 0),
            ARCH_SET_GS | ARCH_GET_GS => Err(Errno::EINVAL),
            _ => Err(Errno::EINVAL),
        }
    }

    /// prlimit64/getrlimit/setrlimit on the program's own limits ([`limits`]): the old
    /// limit is read before the new one is set, as Linux does.
    fn sys_prlimit(&mut self, pid: u64, resource: u32, new: u64, old: u64) -> Sys {
        if pid != 0 && pid != self.pid && !self.threads.contains_key(&pid) {
            return Err(Errno(libc::EPERM));
        }
        let now = self.limits.get(resource, &self.fds)?;
        let wanted = if new == 0 {
            None
        } else {
            let mut b = [0u8; 16];
            self.mm.read(GuestVirtAddr(new), &mut b)?;
            Some(limits::Limit::from_bytes(&b))
        };
        if let Some(l) = wanted {
            let privileged = host::may_raise_limits();
            self.limits.set(resource, l, &mut self.fds, privileged)?;
        }
        if old != 0 {
            self.out(old, &now.to_bytes())?;
        }
        Ok(0)
    }

    /// nanosleep/clock_nanosleep: a block until the time (relative, or absolute on
    /// `clock` with TIMER_ABSTIME), so other threads' calls go on meanwhile.
    /// With a virtual clock ([`crate::linux::clock`]) the sleep returns at once, the
    /// clock advanced by the time asked for.
    fn sys_sleep(
        &mut self,
        task: &mut Task,
        clock: i32,
        flags: i32,
        req: u64,
        rem: u64,
    ) -> Outcome {
        let absolute = flags & libc::TIMER_ABSTIME != 0;
        if self.kernel.clock.is_pinned() {
            return Outcome::Return(match self.span(req, clock, absolute) {
                Ok(d) => {
                    self.kernel.clock.advance(d.unwrap_or_default());
                    0
                }
                Err(e) => e.ret(),
            });
        }
        let until = self.timeout(task, req, clock, absolute);
        match until {
            Ok(Some(until)) => {
                task.waiter.reset();
                let rem = if absolute { 0 } else { rem };
                Outcome::Block(Block::Sleep { until, rem })
            }
            Ok(None) => Outcome::Return(0),
            Err(e) => Outcome::Return(e.ret()),
        }
    }

    /// How long from now the guest `struct timespec` at `va` is: relative, or absolute
    /// on `clock` (the program's clock, virtual or the host's). None when it is already
    /// past.
    pub(crate) fn span(
        &self,
        va: u64,
        clock: i32,
        absolute: bool,
    ) -> Result<Option<Duration>, Errno> {
        let s = self.mm.read_u64(va)? as i64;
        let ns = self.mm.read_u64(va.checked_add(8).ok_or(Errno::EFAULT)?)? as i64;
        if s < 0 || !(0..1_000_000_000).contains(&ns) {
            return Err(Errno::EINVAL);
        }
        let want = Duration::new(s as u64, ns as u32);
        if absolute {
            self.kernel.clock.until(clock, want)
        } else {
            Ok(Some(want))
        }
    }

    /// The host instant of guest `struct timespec` at `va`: relative, or absolute on
    /// `clock`. None when it is already past.
    pub(crate) fn timeout(
        &self,
        task: &mut Task,
        va: u64,
        clock: i32,
        absolute: bool,
    ) -> Result<Option<std::time::Instant>, Errno> {
        Ok(self
            .span(va, clock, absolute)?
            .map(|want| Self::deadline_after(task, want)))
    }

    /// The host instant `span` from now, the deadline of a wait of `task` that may time
    /// out; `span` is noted so that a timeout advances a virtual clock by exactly it.
    pub(crate) fn deadline_after(task: &mut Task, span: Duration) -> std::time::Instant {
        task.timeout_span = Some(span);
        // Far futures are "forever" (an Instant cannot hold them).
        let now = std::time::Instant::now();
        now.checked_add(span.min(Duration::from_secs(1 << 32)))
            .unwrap_or_else(|| now + Duration::from_secs(1 << 30))
    }

    /// `sched_getattr` of any of the program's threads: SCHED_OTHER at nice 0, as
    /// sched_getscheduler and sched_getparam say, in the caller's `size` (at least the
    /// first version's 48 bytes; the kernel's own 56 at most).
    fn sys_sched_getattr(&mut self, attr: u64, size: u64, flags: u64) -> Sys {
        const VER0: u64 = 48;
        const OURS: u64 = 56;
        if flags != 0 || attr == 0 || !(VER0..=PAGE).contains(&size) {
            return Err(Errno::EINVAL);
        }
        let len = size.min(OURS);
        let mut b = vec![0u8; len as usize];
        b[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        b[4..8].copy_from_slice(&(libc::SCHED_OTHER as u32).to_le_bytes());
        if len >= OURS {
            // util_max: the whole capacity.
            b[52..56].copy_from_slice(&1024u32.to_le_bytes());
        }
        self.out(attr, &b).map(|()| 0)
    }

    /// `sched_setattr`: a normal policy is accepted, not applied (GLib copies a thread's
    /// attributes to the threads it starts); real-time ones would need the host's
    /// privilege for lbrprof's threads (EPERM, as for an unprivileged caller).
    fn sys_sched_setattr(&mut self, attr: u64, flags: u64) -> Sys {
        let mut b = [0u8; 8];
        self.mm.read(GuestVirtAddr(attr), &mut b)?;
        let size = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let policy = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as i32;
        if flags != 0 || (size != 0 && size < 48) {
            return Err(Errno::EINVAL);
        }
        match policy {
            libc::SCHED_OTHER | libc::SCHED_BATCH | libc::SCHED_IDLE => ok(0),
            // (6: SCHED_DEADLINE.)
            libc::SCHED_FIFO | libc::SCHED_RR | 6 => Err(Errno(libc::EPERM)),
            _ => Err(Errno::EINVAL),
        }
    }

    fn sys_sigaction(&mut self, sig: u64, act: u64, old: u64, set_size: u64) -> Sys {
        // SIGKILL's and SIGSTOP's action can be read, not changed (valgrind reads every
        // signal's before installing its own handlers).
        let fixed = sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64;
        if sig == 0 || sig > 64 || (fixed && act != 0) || set_size != 8 {
            return Err(Errno::EINVAL);
        }
        let prev = self.sigactions.get(&sig).copied().unwrap_or([0; 32]);
        if act != 0 {
            let mut b = [0u8; 32];
            self.mm.read(GuestVirtAddr(act), &mut b)?;

            self.sigactions.insert(sig, b);
            let (ignored, caught) = self.dispositions();
            let mut shown = self.shared.shown();
            (shown.ignored, shown.caught) = (ignored, caught);
        }
        if old != 0 {
            self.out(old, &prev)?;
        }
        Ok(0)
    }

    fn sys_sigprocmask(&mut self, task: &mut Task, how: u64, set: u64, old: u64) -> Sys {
        let prev = task.sigmask;
        if set != 0 {
            let s = self.mm.read_u64(set)?;
            task.sigmask = match how as i32 {
                libc::SIG_BLOCK => prev | s,
                libc::SIG_UNBLOCK => prev & !s,
                libc::SIG_SETMASK => s,
                _ => return Err(Errno::EINVAL),
            } & !signal::UNBLOCKABLE;
        }
        if old != 0 {
            self.out(old, &prev.to_le_bytes())?;
        }
        Ok(0)
    }

    /// The signal mask argument of ppoll/pselect6/epoll_pwait/rt_sigsuspend (address
    /// and size): None when there is none.
    fn sigset_arg(&self, va: u64, size: u64) -> Result<Option<u64>, Errno> {
        if va == 0 {
            return Ok(None);
        }
        if size != 8 {
            return Err(Errno::EINVAL);
        }
        self.mm.read_u64(va).map(Some)
    }

    /// A call that waits with the temporary signal mask `mask` (ppoll, pselect6,
    /// epoll_pwait, rt_sigsuspend): applied while it blocks, the old one restored as it
    /// returns (`Process::finish_block`; a handler's frame saves the old one). A call
    /// that returns at once does not change the mask.
    fn with_mask(&mut self, task: &mut Task, mask: Option<u64>, out: Outcome) -> Outcome {
        if let (Some(mask), Outcome::Block(_)) = (mask, &out) {
            task.saved_sigmask = Some(task.sigmask);
            task.sigmask = mask & !signal::UNBLOCKABLE;
        }
        out
    }

    /// setitimer: ITIMER_REAL only (ITIMER_VIRTUAL and ITIMER_PROF count CPU time the
    /// shim does not account: EINVAL). `struct itimerval` is { it_interval, it_value },
    /// two `struct timeval`s.
    fn sys_setitimer(&mut self, which: u64, new: u64, old: u64) -> Sys {
        if which as i32 != libc::ITIMER_REAL {
            return Err(Errno::EINVAL);
        }
        let tv = |va: u64| -> Result<std::time::Duration, Errno> {
            let s = self.mm.read_u64(va)? as i64;
            let us = self.mm.read_u64(va + 8)? as i64;
            if s < 0 || !(0..1_000_000).contains(&us) {
                return Err(Errno::EINVAL);
            }
            Ok(std::time::Duration::new(s as u64, us as u32 * 1000))
        };
        let (interval, value) = if new == 0 {
            (std::time::Duration::ZERO, std::time::Duration::ZERO)
        } else {
            (tv(new)?, tv(new.checked_add(16).ok_or(Errno::EFAULT)?)?)
        };
        let stop = crate::kick::stop_flag();
        let prev = self.itimer.set(&self.shared, stop, value, interval);
        if old != 0 {
            self.out_itimerval(old, prev)?;
        }
        Ok(0)
    }

    /// timer_create: CLOCK_REALTIME, CLOCK_MONOTONIC or CLOCK_BOOTTIME (all measured as
    /// elapsed time), notified by a signal (SIGEV_SIGNAL; no `sevp`: SIGALRM) or not
    /// at all (SIGEV_NONE). SIGEV_THREAD_ID (glibc's SIGEV_THREAD helper): EINVAL.
    fn sys_timer_create(&mut self, clock: u64, sevp: u64, id_out: u64) -> Sys {
        if !matches!(
            clock as i32,
            libc::CLOCK_REALTIME | libc::CLOCK_MONOTONIC | libc::CLOCK_BOOTTIME
        ) {
            return Err(Errno::EINVAL);
        }
        let id = (0..=i32::MAX as u64)
            .map(|i| (self.next_timer + i) % (i32::MAX as u64 + 1))
            .find(|i| !self.timers.contains_key(i))
            .ok_or(Errno(libc::EAGAIN))?;
        // struct sigevent: sigev_value (8), sigev_signo (int), sigev_notify (int), ...
        // Without one: SIGALRM with the timer's id as the value, as Linux.
        let (signal, value) = if sevp == 0 {
            (libc::SIGALRM as u64, id)
        } else {
            let value = self.mm.read_u64(sevp)?;
            let w = self
                .mm
                .read_u64(sevp.checked_add(8).ok_or(Errno::EFAULT)?)?;
            let (signo, notify) = (w as u32 as i32, (w >> 32) as u32 as i32);
            let signal = match notify {
                libc::SIGEV_NONE => 0,
                libc::SIGEV_SIGNAL if (1..=64).contains(&signo) => signo as u64,
                _ => return Err(Errno::EINVAL),
            };
            (signal, value)
        };
        self.out(id_out, &(id as i32).to_le_bytes())?;
        self.next_timer = id + 1;
        self.timers
            .insert(id, Arc::new(itimer::RealTimer::posix(id, signal, value)));
        Ok(0)
    }

    /// timer_settime: `struct itimerspec` is { it_interval, it_value }, two
    /// `struct timespec`s; TIMER_ABSTIME takes it_value on the timer's clock.
    fn sys_timer_settime(
        &mut self,
        task: &mut Task,
        id: u64,
        flags: u64,
        new: u64,
        old: u64,
    ) -> Sys {
        let timer = self.timers.get(&id).cloned().ok_or(Errno::EINVAL)?;
        let ts = |va: u64| -> Result<Duration, Errno> {
            let s = self.mm.read_u64(va)? as i64;
            let ns = self.mm.read_u64(va.checked_add(8).ok_or(Errno::EFAULT)?)? as i64;
            if s < 0 || !(0..1_000_000_000).contains(&ns) {
                return Err(Errno::EINVAL);
            }
            Ok(Duration::new(s as u64, ns as u32))
        };
        let interval = ts(new)?;
        let mut value = ts(new.checked_add(16).ok_or(Errno::EFAULT)?)?;
        if flags as i32 & libc::TIMER_ABSTIME != 0 && !value.is_zero() {
            // CLOCK_REALTIME is what programs use with TIMER_ABSTIME here (the
            // program's: virtual when pinned). Already past: fire at once.
            value = self
                .kernel
                .clock
                .until(libc::CLOCK_REALTIME, value)?
                .unwrap_or(Duration::from_nanos(1));
        }
        let stop = crate::kick::stop_flag();
        let prev = timer.set(&self.shared, stop, value, interval);
        self.drop_timer_signal(task, id);
        if old != 0 {
            self.out_itimerspec(old, prev)?;
        }
        Ok(0)
    }

    /// A POSIX timer was deleted or armed anew: the instance of its signal this
    /// thread took is dropped, as Linux does (the timer drops the process's one).
    fn drop_timer_signal(&mut self, task: &mut Task, id: u64) {
        task.pending.drop_timer(id as u32);
    }

    /// Write (time left, interval) as a `struct itimerspec`.
    fn out_itimerspec(&self, va: u64, (left, interval): (Duration, Duration)) -> Result<(), Errno> {
        let mut b = [0u8; 32];
        let words = [
            interval.as_secs(),
            u64::from(interval.subsec_nanos()),
            left.as_secs(),
            u64::from(left.subsec_nanos()),
        ];
        for (i, w) in words.into_iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        self.out(va, &b)
    }

    fn sys_getitimer(&mut self, which: u64, cur: u64) -> Sys {
        if which as i32 != libc::ITIMER_REAL {
            return Err(Errno::EINVAL);
        }
        self.out_itimerval(cur, self.itimer.get()).map(|()| 0)
    }

    /// Write (time left, interval) as a `struct itimerval` (a running timer shows at
    /// least 1 µs left, as Linux).
    fn out_itimerval(
        &self,
        va: u64,
        (left, interval): (std::time::Duration, std::time::Duration),
    ) -> Result<(), Errno> {
        let us = |d: std::time::Duration| (d.as_secs(), u64::from(d.subsec_micros()));
        let (ls, mut lus) = us(left);
        if !left.is_zero() && ls == 0 && lus == 0 {
            lus = 1;
        }
        let (is, ius) = us(interval);
        let mut b = [0u8; 32];
        for (i, w) in [is, ius, ls, lus].into_iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        self.out(va, &b)
    }

    /// `sigaltstack(ss, old_ss)`: `stack_t` is { ss_sp, ss_flags (int), ss_size }.
    fn sys_sigaltstack(&mut self, task: &mut Task, new: u64, old: u64) -> Sys {
        let mut set = None;
        if new != 0 {
            let sp = self.mm.read_u64(new)?;
            let flags = self.mm.read_u64(new + 8)? as i32;
            let size = self.mm.read_u64(new + 16)?;
            set = Some(if flags & libc::SS_DISABLE != 0 {
                (0, 0)
            } else if flags & !SS_AUTODISARM != 0 {
                return Err(Errno::EINVAL);
            } else if size < 2048 {
                return Err(Errno::ENOMEM);
            } else {
                (sp, size)
            });
        }
        if old != 0 {
            let (sp, size) = task.altstack;
            let mut b = [0u8; 24];
            b[..8].copy_from_slice(&sp.to_le_bytes());
            let flags = if size == 0 { libc::SS_DISABLE } else { 0 };
            b[8..12].copy_from_slice(&(flags as u32).to_le_bytes());
            b[16..24].copy_from_slice(&size.to_le_bytes());
            self.out(old, &b)?;
        }
        if let Some(s) = set {
            task.altstack = s;
        }
        Ok(0)
    }

    /// kill/tgkill/tkill within the program: the signal is pending on thread `tid`
    /// and delivered when that thread next returns from a system call (this one, when
    /// it sends to itself); SIGKILL ends the program at once.
    fn sys_kill(&mut self, task: &mut Task, tid: u64, sig: u64, code: i32) -> Outcome {
        let info = self.info_from_self(sig as i32, code);
        self.sys_kill_info(task, tid, sig, info)
    }

    /// [`Self::sys_kill`] with what the receiver is told (`info`, for signal `sig`).
    pub(crate) fn sys_kill_info(
        &mut self,
        task: &mut Task,
        tid: u64,
        sig: u64,
        info: signal::SigInfo,
    ) -> Outcome {
        if sig > 64 {
            return Outcome::Return(Errno::EINVAL.ret());
        }
        let me = tid == task.tid;
        if !me && !self.threads.contains_key(&tid) {
            return Outcome::Return(Errno(libc::ESRCH).ret());
        }
        if sig == 0 {
            return Outcome::Return(0);
        }
        if sig == libc::SIGKILL as u64 {
            return Outcome::Kill {
                signal: libc::SIGKILL,
                reason: "killed by SIGKILL it sent itself".into(),
            };
        }
        // A signalfd may read it (the target thread's).
        self.shared.wake_signalfds(1 << (sig - 1));
        if me {
            task.pending.push(info);
        } else {
            self.signals_for.entry(tid).or_default().push(info);
            // Out of the guest or its sleep, to take it now (`Process::deliver_async`).
            if let Some(Some(t)) = self.threads.get(&tid) {
                crate::kick::kick_thread(*t);
            }
            if let Some(w) = self.shared.sleepers().get(&tid) {
                w.wake();
            }
        }
        Outcome::Return(0)
    }

    /// poll/ppoll: at once when the deadline is now, else a block with the process
    /// released.
    fn sys_poll(&mut self, va: u64, n: u64, deadline: Option<std::time::Instant>) -> Outcome {
        if n > self.fds.limit() as u64 {
            return Outcome::Return(Errno::EINVAL.ret());
        }
        let mut raw = vec![0u8; 8 * n as usize];
        if let Err(e) = self.mm.read(GuestVirtAddr(va), &mut raw) {
            return Outcome::Return(e.ret());
        }
        let entries = raw
            .chunks_exact(8)
            .map(|c| {
                let fd = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let events = i16::from_le_bytes([c[4], c[5]]);
                if fd < 0 {
                    return (None, events, false);
                }
                match self.fds.get(fd as u64) {
                    Ok(f) => (Some(f.file.clone()), events, false),
                    Err(_) => (None, events, true),
                }
            })
            .collect();
        let mut block = block::PollBlock {
            va,
            entries,
            deadline,
            result: Ok(Vec::new()),
            select: None,
        };
        if deadline.is_some_and(|d| d <= std::time::Instant::now()) {
            block.run(
                &Waiter::default(),
                &std::sync::atomic::AtomicBool::new(false),
            );
            return Outcome::Return(self.poll_done(&block));
        }
        Outcome::Block(Block::Poll(block))
    }

    /// Write a finished poll's revents back; the call's result.
    pub(crate) fn poll_done(&mut self, block: &block::PollBlock) -> u64 {
        let revents = match &block.result {
            Ok(r) => r,
            Err(e) => return e.ret(),
        };
        if let Some(s) = &block.select {
            return self.select_done(s, revents);
        }
        let mut ready = 0;
        for (i, r) in revents.iter().enumerate() {
            let at = block.va + 8 * i as u64 + 6;
            if let Err(e) = self.out(at, &r.to_le_bytes()) {
                return e.ret();
            }
            ready += u64::from(*r != 0);
        }
        ready
    }

    /// `exit` of one thread: its `clear_child_tid` is zeroed and woken (pthread_join
    /// waits on it); the last thread's exit ends the program with its status.
    fn sys_exit(&mut self, task: &mut Task, code: i32) -> Outcome {
        if task.clear_child_tid != 0 {
            let at = task.clear_child_tid;
            if self
                .mm
                .write(GuestVirtAddr(at), &0u32.to_le_bytes())
                .is_ok()
            {
                // Not FUTEX_PRIVATE: a pthread_join in another process sharing the
                // word (robust or process-shared structures) is woken too.
                let key = self.futex_key(at, 0);
                self.futex_wake(key, 1, u32::MAX);
            }
        }
        self.threads.remove(&task.tid);
        self.waiters.remove(&task.tid);
        self.shared.vcpus().remove(&task.tid);
        self.shared.accounts.leave(task.tid);
        if task.tid != self.pid {
            // A zombie still shows its main thread.
            self.shared.shown().threads.remove(&task.tid);
        }
        if self.threads.is_empty() {
            Outcome::Exit(code)
        } else {
            Outcome::ThreadExit
        }
    }

    /// fork, vfork, or a `clone` without CLONE_VM (a new process): the flags are
    /// checked here, the child is made by the caller ([`Process`]'s trap path).
    fn sys_fork(&mut self, flags: u64, a: [u64; 6]) -> Outcome {
        let vm = flags & libc::CLONE_VM as u64 != 0;
        let vfork = flags & libc::CLONE_VFORK as u64 != 0;
        // CLONE_VM without CLONE_THREAD shares memory between two processes: only the
        // vfork form is known here, and it runs the child on a copy (the parent waits).
        if vm && !vfork {
            return unsupported(
                "clone(CLONE_VM) without CLONE_THREAD or CLONE_VFORK (two processes sharing memory)",
            );
        }
        let known = (libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_SETTID
            | libc::CLONE_CHILD_CLEARTID
            | libc::CLONE_SYSVSEM) as u64
            | 0xff;
        if flags & !known != 0 {
            return Outcome::Return(Errno::EINVAL.ret());
        }
        if flags & libc::CLONE_SETTLS as u64 != 0 && a[4] >= USER_END {
            return Outcome::Return(Errno(libc::EPERM).ret());
        }
        Outcome::Fork(Box::new(ForkArgs {
            flags,
            stack: a[1],
            ptid: a[2],
            ctid: a[3],
            tls: a[4],
            vfork,
        }))
    }

    /// The NULL-terminated array of strings at `va` (argv, envp), within ARG_MAX.
    fn strings(&self, va: u64, total: &mut usize) -> Result<Vec<std::ffi::OsString>, Errno> {
        use std::os::unix::ffi::OsStringExt;
        let mut out = Vec::new();
        if va == 0 {
            return Ok(out);
        }
        for i in 0u64.. {
            let p = self
                .mm
                .read_u64(va.checked_add(8 * i).ok_or(Errno::EFAULT)?)?;
            if p == 0 {
                break;
            }
            let s = self.mm.read_cstr(p, ARG_MAX)?;
            *total += s.len() + 9;
            if *total > ARG_MAX {
                return Err(Errno(libc::E2BIG));
            }
            out.push(std::ffi::OsString::from_vec(s));
        }
        Ok(out)
    }

    /// execve/execveat: the program is checked here (a bad one is an error the caller
    /// sees, as on Linux); the caller replaces the process's image.
    fn sys_execve(&mut self, dirfd: u64, path: u64, argv: u64, envp: u64, flags: u64) -> Outcome {
        let r = (|| {
            // (`/proc/self/exe` is the program, not lbrprof.)
            let p = self.path(path)?;
            let mut total = 0;
            let argv = self.strings(argv, &mut total)?;
            let envp = self.strings(envp, &mut total)?;
            let host = if flags as i32 & libc::AT_EMPTY_PATH != 0 && p.is_empty() {
                let f = self.fds.get(dirfd)?;
                host::path_of(f.host()).ok_or(Errno(libc::ENOENT))?
            } else if dirfd as i32 != libc::AT_FDCWD && !p.starts_with(b"/") {
                let f = self.fds.get(dirfd)?;
                let dir = host::path_of(f.host()).ok_or(Errno(libc::ENOENT))?;
                dir.join(std::ffi::OsStr::from_bytes(&p))
            } else {
                if p.is_empty() {
                    return Err(Errno(libc::ENOENT));
                }
                self.host_path(&p)
            };
            Program::new(&host, argv, envp).map_err(|e| Errno(e.errno()))
        })();
        match r {
            Ok(p) => Outcome::Exec(Box::new(p)),
            Err(e) => Outcome::Return(e.ret()),
        }
    }

    /// What `getrusage(who)` tells: the process's use (RUSAGE_SELF), its reaped
    /// children's (RUSAGE_CHILDREN) or the calling thread's (RUSAGE_THREAD); zero with
    /// pinned clocks, so that runs repeat.
    fn usage(&self, task: &Task, who: i32) -> Result<Usage, Errno> {
        if ![
            libc::RUSAGE_SELF,
            libc::RUSAGE_CHILDREN,
            libc::RUSAGE_THREAD,
        ]
        .contains(&who)
        {
            return Err(Errno::EINVAL);
        }
        if self.kernel.clock.is_pinned() {
            return Ok(Usage::default());
        }
        let accounts = &self.shared.accounts;
        accounts.note_resident(self.report.peak_bytes.max(self.mm.resident_bytes()));
        Ok(match who {
            libc::RUSAGE_SELF => accounts.own(),
            libc::RUSAGE_CHILDREN => accounts.children(),
            _ => accounts.thread(task.tid),
        })
    }

    /// A CPU clock's time: `CLOCK_PROCESS_CPUTIME_ID`, `CLOCK_THREAD_CPUTIME_ID`, or a
    /// clock of `clock_getcpuclockid`/`pthread_getcpuclockid` (`!pid << 3`, bit 2 for a
    /// thread, the low two bits: 0 user and system time, 1 user time, 2 run time),
    /// read from the guest threads' host threads ([`crate::linux::usage`]); EINVAL
    /// for a process or thread that is not the program's. None for any other clock,
    /// or any clock when the clocks are pinned ([`crate::linux::clock`] has them).
    fn cpu_clock(&self, task: &Task, id: i32) -> Option<Result<Duration, Errno>> {
        const USER: i32 = 1;
        let (pid, thread, which) = match id {
            2 => (0, false, 2),
            3 => (0, true, 2),
            n if n < 0 && n & 3 != 3 => (u64::from(!(n >> 3) as u32), n & 4 != 0, n & 3),
            _ => return None,
        };
        if self.kernel.clock.is_pinned() {
            return None;
        }
        let time = |accounts: &crate::linux::usage::Accounts, tid: Option<u64>| match tid {
            Some(t) if which == USER => Some(accounts.thread(t).user),
            Some(t) => accounts.thread_cpu_time(t),
            None if which == USER => Some(accounts.own().user),
            None => Some(accounts.cpu_time()),
        };
        Some(if thread {
            let tid = if pid == 0 { task.tid } else { pid };
            // A thread made whose host thread has not started yet has used nothing.
            let starting = self.threads.get(&tid).is_some_and(Option::is_none);
            time(&self.shared.accounts, Some(tid))
                .or(starting.then_some(Duration::ZERO))
                .ok_or(Errno::EINVAL)
        } else if pid == 0 || pid == self.pid {
            time(&self.shared.accounts, None).ok_or(Errno::EINVAL)
        } else {
            self.kernel
                .shared_of(pid)
                .and_then(|s| time(&s.accounts, None))
                .ok_or(Errno::EINVAL)
        })
    }

    /// wait4(pid, status, options, rusage).
    fn sys_wait4(
        &mut self,
        task: &Task,
        pid: i64,
        status: u64,
        options: u64,
        rusage: u64,
    ) -> Outcome {
        let which = match pid {
            -1 => WaitFor::Any,
            0 => WaitFor::Group(0),
            p if p < 0 => WaitFor::Group(p.unsigned_abs()),
            p => WaitFor::Pid(p as u64),
        };
        self.wait(
            task,
            which,
            options as i32,
            WaitOut::Wait4 { status, rusage },
        )
    }

    /// waitid(idtype, id, infop, options).
    fn sys_waitid(
        &mut self,
        task: &Task,
        idtype: u64,
        id: u64,
        info: u64,
        options: u64,
    ) -> Outcome {
        let which = match idtype as u32 {
            libc::P_ALL => WaitFor::Any,
            libc::P_PID => WaitFor::Pid(id),
            libc::P_PGID => WaitFor::Group(id),
            _ => return Outcome::Return(Errno::EINVAL.ret()),
        };
        if options as i32 & libc::WEXITED == 0 {
            return Outcome::Return(Errno::EINVAL.ret());
        }
        self.wait(task, which, options as i32, WaitOut::Waitid { info })
    }

    fn wait(&mut self, task: &Task, which: WaitFor, options: i32, out: WaitOut) -> Outcome {
        let keep = options & libc::WNOWAIT != 0;
        let mut block = block::WaitBlock {
            kernel: self.kernel.clone(),
            parent: self.pid,
            which,
            keep,
            out,
            result: Ok(None),
        };
        if options & libc::WNOHANG != 0 {
            block.result = self.kernel.reap(self.pid, which, keep, None);
            return Outcome::Return(self.wait_done(&block));
        }
        match self.kernel.reap(self.pid, which, keep, Some(&task.waiter)) {
            Ok(None) => Outcome::Block(Block::Wait(block)),
            r => {
                block.result = r;
                Outcome::Return(self.wait_done(&block))
            }
        }
    }

    /// Write a finished wait's results; the call's result.
    pub(crate) fn wait_done(&mut self, block: &block::WaitBlock) -> u64 {
        let (pid, status, used) = match block.result {
            Err(e) => return e.ret(),
            Ok(Some(r)) => r,
            Ok(None) => (0, 0, Usage::default()),
        };
        let used = if self.kernel.clock.is_pinned() {
            Usage::default()
        } else {
            used
        };
        let written = match block.out {
            WaitOut::Wait4 { status: va, rusage } => (|| {
                if va != 0 && pid != 0 {
                    self.out(va, &(status as u32).to_le_bytes())?;
                }
                if rusage != 0 {
                    self.out(rusage, &used.to_rusage())?;
                }
                Ok(())
            })(),
            WaitOut::Waitid { info } if info != 0 => {
                let mut b = [0u8; 128];
                if pid != 0 {
                    let (code, st) = signal::child_code(status);
                    b[0..4].copy_from_slice(&libc::SIGCHLD.to_le_bytes());
                    b[8..12].copy_from_slice(&code.to_le_bytes());
                    b[16..20].copy_from_slice(&(pid as u32).to_le_bytes());
                    b[20..24].copy_from_slice(&(host::ids()[2] as u32).to_le_bytes());
                    b[24..28].copy_from_slice(&st.to_le_bytes());
                }
                self.out(info, &b)
            }
            WaitOut::Waitid { .. } => Ok(()),
        };
        match (written, block.out) {
            (Err(e), _) => e.ret(),
            (Ok(()), WaitOut::Waitid { .. }) => 0,
            (Ok(()), WaitOut::Wait4 { .. }) => pid,
        }
    }

    /// A `struct timeval` timeout (select): None for a null pointer (no timeout).
    fn timeval(&self, task: &mut Task, va: u64) -> Result<Option<std::time::Instant>, Errno> {
        if va == 0 {
            return Ok(None);
        }
        let s = self.mm.read_u64(va)? as i64;
        let us = self.mm.read_u64(va.checked_add(8).ok_or(Errno::EFAULT)?)? as i64;
        if s < 0 || !(0..1_000_000).contains(&us) {
            return Err(Errno::EINVAL);
        }
        let d = Duration::new(s as u64, us as u32 * 1000);
        Ok(Some(Self::deadline_after(task, d)))
    }

    /// select/pselect6: the three `fd_set`s become a poll of their descriptors.
    fn sys_select(
        &mut self,
        nfds: u64,
        sets: [u64; 3],
        deadline: Option<std::time::Instant>,
    ) -> Outcome {
        if nfds > MAX_FDS as u64 {
            return Outcome::Return(Errno::EINVAL.ret());
        }
        let bytes = (nfds as usize).div_ceil(64) * 8;
        let mut bits = [vec![0u8; bytes], vec![0u8; bytes], vec![0u8; bytes]];
        for (b, &va) in bits.iter_mut().zip(&sets) {
            if va != 0
                && let Err(e) = self.mm.read(GuestVirtAddr(va), b)
            {
                return Outcome::Return(e.ret());
            }
        }
        let events = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI];
        let mut fds = Vec::new();
        let mut entries = Vec::new();
        for fd in 0..nfds as usize {
            let mut ev = 0;
            for (b, e) in bits.iter().zip(events) {
                if b[fd / 8] & (1 << (fd % 8)) != 0 {
                    ev |= e;
                }
            }
            if ev == 0 {
                continue;
            }
            match self.fds.get(fd as u64) {
                Ok(f) => entries.push((Some(f.file.clone()), ev, false)),
                Err(e) => return Outcome::Return(e.ret()),
            }
            fds.push(fd as u32);
        }
        let mut block = block::PollBlock {
            va: 0,
            entries,
            deadline,
            result: Ok(Vec::new()),
            select: Some(block::SelectSets { sets, nfds, fds }),
        };
        if deadline.is_some_and(|d| d <= std::time::Instant::now()) {
            block.run(
                &Waiter::default(),
                &std::sync::atomic::AtomicBool::new(false),
            );
            return Outcome::Return(self.poll_done(&block));
        }
        Outcome::Block(Block::Poll(block))
    }

    /// Write a finished select's sets back; the number of bits set.
    fn select_done(&mut self, s: &block::SelectSets, revents: &[i16]) -> u64 {
        let bytes = (s.nfds as usize).div_ceil(64) * 8;
        let mut bits = [vec![0u8; bytes], vec![0u8; bytes], vec![0u8; bytes]];
        let mut n = 0;
        let ready = [
            libc::POLLIN | libc::POLLHUP | libc::POLLERR,
            libc::POLLOUT | libc::POLLERR,
            libc::POLLPRI,
        ];
        for (&fd, &r) in s.fds.iter().zip(revents) {
            let fd = fd as usize;
            for (i, b) in bits.iter_mut().enumerate() {
                let asked = s.sets[i] != 0;
                if asked && r & ready[i] != 0 {
                    b[fd / 8] |= 1 << (fd % 8);
                    n += 1;
                }
            }
        }
        for (b, &va) in bits.iter().zip(&s.sets) {
            if va != 0
                && let Err(e) = self.out(va, b)
            {
                return e.ret();
            }
        }
        n
    }

    /// `clone`: threads only (CLONE_VM | CLONE_THREAD and the sharing they imply, as
    /// glibc's and musl's pthread_create ask); anything that would make a second
    /// process is unsupported.
    fn sys_clone(&mut self, task: &mut Task, a: [u64; 6]) -> Outcome {
        let flags = a[0];
        let thread = (libc::CLONE_VM
            | libc::CLONE_THREAD
            | libc::CLONE_SIGHAND
            | libc::CLONE_FILES
            | libc::CLONE_FS) as u64;
        if flags & libc::CLONE_THREAD as u64 == 0 {
            return self.sys_fork(flags, a);
        }
        if flags & thread != thread {
            return unsupported(
                "clone(CLONE_THREAD) without all of CLONE_VM, CLONE_SIGHAND, CLONE_FILES and CLONE_FS",
            );
        }
        let known = thread
            | (libc::CLONE_SYSVSEM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_SETTID
                | libc::CLONE_CHILD_CLEARTID
                | libc::CLONE_DETACHED) as u64
            | 0xff; // the exit signal (ignored for threads)
        if flags & !known != 0 {
            return Outcome::Return(Errno::EINVAL.ret());
        }
        if self.threads.len() >= MAX_THREADS {
            return Outcome::Return(Errno(libc::EAGAIN).ret());
        }
        let tid = self.kernel.new_id();
        let (stack, ptid, ctid, tls) = (a[1], a[2], a[3], a[4]);
        let id = (tid as u32).to_le_bytes();
        if flags & libc::CLONE_PARENT_SETTID as u64 != 0
            && let Err(e) = self.out(ptid, &id)
        {
            return Outcome::Return(e.ret());
        }
        if flags & libc::CLONE_CHILD_SETTID as u64 != 0
            && let Err(e) = self.out(ctid, &id)
        {
            return Outcome::Return(e.ret());
        }
        if flags & libc::CLONE_SETTLS as u64 != 0 && tls >= USER_END {
            return Outcome::Return(Errno(libc::EPERM).ret());
        }
        // Alive from now on (so an exit of the parent does not end the program), with
        // its host thread once its vCPU starts.
        self.threads.insert(tid, None);
        let _ = task;
        Outcome::Clone(Box::new(CloneArgs {
            tid,
            stack,
            tls: (flags & libc::CLONE_SETTLS as u64 != 0).then_some(tls),
            clear_tid: if flags & libc::CLONE_CHILD_CLEARTID as u64 != 0 {
                ctid
            } else {
                0
            },
        }))
    }
}

/// Whether every id in `want` (u32, -1 meaning "unchanged") is one of `have` (the
/// real and effective ids): 0, else EPERM.
fn same_ids(want: &[u64], have: &[u64]) -> Sys {
    let ok = want
        .iter()
        .map(|&w| w as u32)
        .all(|w| w == u32::MAX || have.iter().any(|&h| h as u32 == w));
    if ok { Ok(0) } else { Err(Errno(libc::EPERM)) }
}

/// `sigaltstack` flag: disarm the stack while a handler runs on it (uapi/linux/signal.h;
/// accepted and not acted on).
const SS_AUTODISARM: i32 = 1 << 31;

/// Most threads a program may have at once (each is a vCPU; clone answers EAGAIN past
/// this, as Linux does at RLIMIT_NPROC).
pub const MAX_THREADS: usize = 256;

fn unsupported(what: &str) -> Outcome {
    Outcome::Kill {
        signal: libc::SIGSYS,
        reason: format!("{what} is not supported in the VM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::fd::FdTable;
    use crate::linux::mm::AddressSpace;
    use crate::memory::GuestMemory;
    use std::sync::Arc;

    fn process() -> Process {
        let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
        let mut mm = AddressSpace::new(mem, 1 << 20).unwrap();
        let trap = crate::linux::cpu::build_trap_area(&mut mm, None).unwrap();
        mm.map(0x40_0000, 4 * PAGE, Prot::RW, None, "").unwrap();
        let mut p = Process::with(mm, FdTable::with_stdio([None, None, None]), trap, 1);
        p.path = "/bin/true".into();
        p
    }

    fn ret(o: Outcome) -> i64 {
        match o {
            Outcome::Return(v) => v as i64,
            o => panic!("{o:?}"),
        }
    }

    /// System call `nr` with four arguments on the main thread: its return value.
    fn call(p: &mut Process, nr: Sysno, a: [u64; 4]) -> i64 {
        ret(p.syscall(
            &mut p.main_task(),
            nr as u64,
            [a[0], a[1], a[2], a[3], 0, 0],
        ))
    }

    #[test]
    fn noreserve_memory_is_lazy_through_mmap_mincore_and_mremap() {
        let mut p = process();
        let mut t = p.main_task();
        let tib = 1u64 << 40;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let mmap = |p: &mut Process, t: &mut Task, flags: u64| {
            ret(p.syscall(t, Sysno::mmap as u64, [0, tib, rw, flags, !0, 0]))
        };
        // Backed at mmap time, a TiB does not fit in 16 MiB; lazily it does.
        assert_eq!(mmap(&mut p, &mut t, anon), -(libc::ENOMEM as i64));
        let at = mmap(&mut p, &mut t, anon | libc::MAP_NORESERVE as u64) as u64;
        assert!(at.is_multiple_of(PAGE), "{at:#x}");
        let page = at + (tib / 2) + 5 * PAGE;
        p.mm.write(GuestVirtAddr(page), b"touched").unwrap();
        // mincore: the written page (and its fault-free neighbours: not) in memory.
        let vec = 0x40_0000;
        let nr = Sysno::mincore;
        assert_eq!(call(&mut p, nr, [page - PAGE, 3 * PAGE, vec, 0]), 0);
        let mut v = [9u8; 3];
        p.mm.read(GuestVirtAddr(vec), &mut v).unwrap();
        assert_eq!(v, [0, 1, 0]);
        // mremap moves it with its one page (a fixed page above keeps it from growing).
        let above = at + tib;
        let fixed = anon | libc::MAP_FIXED as u64;
        let r = p.syscall(&mut t, Sysno::mmap as u64, [above, PAGE, rw, fixed, !0, 0]);
        assert_eq!(ret(r) as u64, above);
        let moved = call(&mut p, Sysno::mremap, [at, tib, 2 * tib, 1]) as u64;
        assert_ne!(moved, at);
        let mut b = [0u8; 7];
        p.mm.read(GuestVirtAddr(moved + (tib / 2) + 5 * PAGE), &mut b)
            .unwrap();
        assert_eq!(&b, b"touched");
        assert_eq!(p.mm.vma_at(moved).map(|v| v.lazy), Some(true));
        assert!(p.mm.vma_at(at).is_none());
    }

    #[test]
    fn a_read_into_memory_it_may_not_write_is_efault_and_leaves_the_bytes_in_the_pipe() {
        let mut p = process();
        assert_eq!(call(&mut p, Sysno::pipe2, [0x40_0000, 0, 0, 0]), 0);
        let fds = [
            p.mm.read_u32(0x40_0000).unwrap(),
            p.mm.read_u32(0x40_0004).unwrap(),
        ];
        p.mm.write(GuestVirtAddr(0x40_1000), b"abc").unwrap();
        assert_eq!(
            call(&mut p, Sysno::write, [fds[1].into(), 0x40_1000, 3, 0]),
            3
        );
        let none = 0x40_2000;
        assert_eq!(call(&mut p, Sysno::mprotect, [none, PAGE, 0, 0]), 0);
        let efault = -(libc::EFAULT as i64);
        assert_eq!(
            call(&mut p, Sysno::read, [fds[0].into(), none, 3, 0]),
            efault
        );
        // Past the end of the mapping: EFAULT too, before the read.
        let edge = 0x40_4000 - 1;
        assert_eq!(
            call(&mut p, Sysno::read, [fds[0].into(), edge, 3, 0]),
            efault
        );
        assert_eq!(
            call(&mut p, Sysno::read, [fds[0].into(), 0x40_3000, 3, 0]),
            3
        );
        let mut b = [0u8; 3];
        p.mm.read(GuestVirtAddr(0x40_3000), &mut b).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn sigqueue_and_sigtimedwait_carry_the_value_and_refuse_what_linux_refuses() {
        let mut p = process();
        let mut t = p.main_task();
        let sig = 40u64;
        t.sigmask = 1 << (sig - 1);
        // A siginfo claiming SI_USER (0) to another process: EPERM, as Linux.
        let mut info = [0u8; 128];
        p.mm.write(GuestVirtAddr(0x40_0000), &info).unwrap();
        let args = |pid: u64| [pid, sig, 0x40_0000, 0, 0, 0];
        let nr = Sysno::rt_sigqueueinfo as u64;
        assert_eq!(ret(p.syscall(&mut t, nr, args(77))), -(libc::EPERM as i64));
        // SI_QUEUE (-1) with a value, to itself while blocked: pending for the process.
        info[8..12].copy_from_slice(&(-1i32).to_le_bytes());
        info[24..32].copy_from_slice(&4242u64.to_le_bytes());
        p.mm.write(GuestVirtAddr(0x40_0000), &info).unwrap();
        assert_eq!(ret(p.syscall(&mut t, nr, args(1))), 0);
        // rt_sigtimedwait takes it with its info; then, with a zero timeout, EAGAIN.
        p.mm.write(GuestVirtAddr(0x40_1000), &(1u64 << (sig - 1)).to_le_bytes())
            .unwrap();
        p.mm.write(GuestVirtAddr(0x40_2000), &[0u8; 16]).unwrap();
        let wait = [0x40_1000, 0x40_3000, 0x40_2000, 8, 0, 0];
        let nr = Sysno::rt_sigtimedwait as u64;
        assert_eq!(ret(p.syscall(&mut t, nr, wait)), sig as i64);
        let got = p.mm.read_u64(0x40_3000 + 24).unwrap();
        assert_eq!(got, 4242);
        assert_eq!(ret(p.syscall(&mut t, nr, wait)), -(libc::EAGAIN as i64));
        // A bad set size and a bad timeout: EINVAL.
        let bad_size = [0x40_1000, 0, 0x40_2000, 16, 0, 0];
        assert_eq!(ret(p.syscall(&mut t, nr, bad_size)), -(libc::EINVAL as i64));
        p.mm.write(GuestVirtAddr(0x40_2008), &2_000_000_000u64.to_le_bytes())
            .unwrap();
        assert_eq!(ret(p.syscall(&mut t, nr, wait)), -(libc::EINVAL as i64));
    }

    #[test]
    fn bad_guest_pointers_are_efault_never_host_accesses() {
        let mut p = process();
        let efault = -(libc::EFAULT as i64);
        let bad = [
            0u64,
            0x3f_ffff,
            0x40_4000,
            USER_END,
            TRAP_AREA.0,
            u64::MAX - 7,
        ];
        let devnull: OwnedFd = std::fs::File::open("/dev/zero").unwrap().into();
        p.fds.insert_at(3, Fd::new(devnull, false)).unwrap();
        for b in bad {
            assert_eq!(
                ret(p.syscall(&mut p.main_task(), Sysno::read as u64, [3, b, 16, 0, 0, 0])),
                efault,
                "read {b:#x}"
            );
            assert_eq!(
                ret(p.syscall(&mut p.main_task(), Sysno::write as u64, [3, b, 16, 0, 0, 0])),
                efault
            );
            assert_eq!(
                ret(p.syscall(
                    &mut p.main_task(),
                    Sysno::openat as u64,
                    [libc::AT_FDCWD as u64, b, 0, 0, 0, 0]
                )),
                efault
            );
            assert_eq!(
                ret(p.syscall(&mut p.main_task(), Sysno::uname as u64, [b, 0, 0, 0, 0, 0])),
                efault
            );
            assert_eq!(
                ret(p.syscall(
                    &mut p.main_task(),
                    Sysno::clock_gettime as u64,
                    [1, b, 0, 0, 0, 0]
                )),
                efault
            );
            assert_eq!(
                ret(p.syscall(&mut p.main_task(), Sysno::writev as u64, [3, b, 1, 0, 0, 0])),
                efault
            );
            assert_eq!(
                ret(p.syscall(&mut p.main_task(), Sysno::fstat as u64, [3, b, 0, 0, 0, 0])),
                efault
            );
        }
        // A buffer that starts mapped and runs off the end is refused whole.
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::read as u64,
                [3, 0x40_3ff0, 64, 0, 0, 0]
            )),
            efault
        );
        // An iovec pointing outside.
        let mut iov = [0u8; 16];
        iov[..8].copy_from_slice(&TRAP_AREA.0.to_le_bytes());
        iov[8..].copy_from_slice(&8u64.to_le_bytes());
        p.mm.write(GuestVirtAddr(0x40_0000), &iov).unwrap();
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::readv as u64,
                [3, 0x40_0000, 1, 0, 0, 0]
            )),
            efault
        );
        // Huge counts are clamped, not allocated.
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::read as u64,
                [3, 0x40_0000, u64::MAX, 0, 0, 0]
            )),
            efault
        );
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::readv as u64,
                [3, 0x40_0000, u64::MAX, 0, 0, 0]
            )),
            -(libc::EINVAL as i64)
        );
    }

    #[test]
    fn random_registers_and_memory_never_panic() {
        // The fuzz target's system-call mode (fuzz/fuzz_targets/linux_personality.rs),
        // with a fixed pseudo-random stream, so every `cargo test` runs it.
        const SAFE: &[u64] = &[
            0, 1, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 25, 28, 32, 33, 39,
            63, 72, 79, 89, 96, 97, 99, 102, 104, 107, 108, 110, 158, 186, 201, 202, 204, 217, 218,
            228, 229, 262, 267, 269, 273, 292, 302, 318, 332, 439,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            let mut p = process();
            let junk: Vec<u8> = (0..4 * PAGE).map(|_| next() as u8).collect();
            p.mm.write(GuestVirtAddr(0x40_0000), &junk).unwrap();
            for _ in 0..16 {
                let nr = SAFE[(next() as usize) % SAFE.len()];
                let mut args = [0u64; 6];
                for a in &mut args {
                    let v = next();
                    *a = match v % 4 {
                        0 => 0x40_0000 + (v >> 2) % 0x5000,
                        1 => v >> 40,
                        2 => (v >> 2) % 64,
                        _ => v,
                    };
                }
                let _ = p.syscall(&mut p.main_task(), nr, args);
            }
        }
    }

    #[test]
    fn descriptors_outside_the_table_are_ebadf() {
        let mut p = process();
        let ebadf = -(libc::EBADF as i64);
        for fd in [0u64, 1, 2, 5, 1 << 40, u64::MAX] {
            assert_eq!(
                ret(p.syscall(
                    &mut p.main_task(),
                    Sysno::write as u64,
                    [fd, 0x40_0000, 1, 0, 0, 0]
                )),
                ebadf
            );
            assert_eq!(
                ret(p.syscall(&mut p.main_task(), Sysno::close as u64, [fd, 0, 0, 0, 0, 0])),
                ebadf
            );
        }
        p.mm.write(GuestVirtAddr(0x40_0000), b"/proc/self/fd/0\0")
            .unwrap();
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::openat as u64,
                [libc::AT_FDCWD as u64, 0x40_0000, 0, 0, 0, 0]
            )),
            -(libc::ENOENT as i64)
        );
    }

    #[test]
    fn the_programs_descriptors_are_reachable_through_proc_and_lbrprofs_are_not() {
        let mut p = process();
        let openat = |p: &mut Process, dirfd: i32, path: &str, flags: i32| {
            let mut b = path.as_bytes().to_vec();
            b.push(0);
            p.mm.write(GuestVirtAddr(0x40_0000), &b).unwrap();
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::openat as u64,
                [dirfd as u64, 0x40_0000, flags as u64, 0, 0, 0],
            ))
        };
        let cwd = libc::AT_FDCWD;
        let fd = openat(&mut p, cwd, "/proc/self/status", libc::O_RDONLY);
        assert!(fd >= 0);
        for spelling in [
            format!("/proc/self/fd/{fd}"),
            format!("/dev/fd/{fd}"),
            format!("//proc/./self/fd/../fd/{fd}"),
            format!("/proc/thread-self/fd/{fd}"),
            format!("/proc/1/fd/{fd}"),
            format!("/proc/self/fdinfo/{fd}"),
        ] {
            assert!(
                openat(&mut p, cwd, &spelling, libc::O_RDONLY) > fd,
                "{spelling}"
            );
        }
        // A descriptor lbrprof has and the program does not.
        let ours = std::fs::File::open("/proc/self/status").unwrap();
        let n = std::os::fd::AsRawFd::as_raw_fd(&ours);
        assert!(p.fds.get(n as u64).is_err());
        let enoent = -(libc::ENOENT as i64);
        for spelling in [
            format!("/proc/self/fd/{n}"),
            format!("/dev/fd/{n}"),
            format!("/proc/{}/fd/{n}", std::process::id()),
            format!("/proc/self/task/1/fd/{n}"),
        ] {
            assert_eq!(
                openat(&mut p, cwd, &spelling, libc::O_RDONLY),
                enoent,
                "{spelling}"
            );
        }
        // Through lbrprof's own /proc directory, by a relative path: refused.
        let dir = openat(
            &mut p,
            cwd,
            "/proc/self",
            libc::O_RDONLY | libc::O_DIRECTORY,
        );
        assert!(dir >= 0);
        let eloop = -(libc::ELOOP as i64);
        assert_eq!(
            openat(&mut p, dir as i32, &format!("fd/{n}"), libc::O_RDONLY),
            eloop
        );
        // The directory itself lists the program's descriptors, not lbrprof's.
        let listing = openat(&mut p, dir as i32, "fd", libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(p.fds.get(listing as u64).unwrap().listing.is_some());
        let listing = openat(&mut p, cwd, "/proc/self/fd/", libc::O_RDONLY);
        assert!(p.fds.get(listing as u64).unwrap().listing.is_some());
        assert_eq!(
            openat(&mut p, cwd, "/proc/self/fd", libc::O_WRONLY),
            -(libc::EISDIR as i64)
        );
    }

    #[test]
    fn sigkill_and_sigstop_actions_can_be_read_not_changed_or_blocked() {
        let mut p = process();
        let (act, old) = (0x40_0000, 0x40_0100);
        let einval = -(libc::EINVAL as i64);
        for sig in [libc::SIGKILL, libc::SIGSTOP] {
            let sig = sig as u64;
            // (valgrind reads every signal's action before setting its own.)
            assert_eq!(call(&mut p, Sysno::rt_sigaction, [sig, 0, old, 8]), 0);
            assert_eq!(call(&mut p, Sysno::rt_sigaction, [sig, act, 0, 8]), einval);
        }
        assert_eq!(call(&mut p, Sysno::rt_sigaction, [11, act, old, 8]), 0);
        assert_eq!(call(&mut p, Sysno::rt_sigaction, [11, 0, old, 16]), einval);
        p.mm.write(GuestVirtAddr(act), &u64::MAX.to_le_bytes())
            .unwrap();
        let mut task = p.main_task();
        let set = [libc::SIG_SETMASK as u64, act, 0, 8, 0, 0];
        assert_eq!(
            ret(p.syscall(&mut task, Sysno::rt_sigprocmask as u64, set)),
            0
        );
        assert_eq!(task.sigmask, !crate::linux::signal::UNBLOCKABLE);
    }

    #[test]
    fn scheduling_attributes_and_membarrier_answer_as_a_kernel_without_extras() {
        let mut p = process();
        let attr = 0x40_0000;
        let einval = -(libc::EINVAL as i64);
        assert_eq!(call(&mut p, Sysno::sched_getattr, [0, attr, 56, 0]), 0);
        let mut b = [0u8; 56];
        p.mm.read(GuestVirtAddr(attr), &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 56);
        assert_eq!(
            u32::from_le_bytes(b[4..8].try_into().unwrap()),
            0,
            "SCHED_OTHER"
        );
        assert_eq!(call(&mut p, Sysno::sched_getattr, [0, attr, 47, 0]), einval);
        assert_eq!(call(&mut p, Sysno::sched_getattr, [0, attr, 56, 1]), einval);
        // Set back what was read: accepted; a real-time policy is not.
        assert_eq!(call(&mut p, Sysno::sched_setattr, [0, attr, 0, 0]), 0);
        p.mm.write(GuestVirtAddr(attr + 4), &1u32.to_le_bytes())
            .unwrap();
        assert_eq!(
            call(&mut p, Sysno::sched_setattr, [0, attr, 0, 0]),
            -(libc::EPERM as i64)
        );
        assert_eq!(call(&mut p, Sysno::membarrier, [0, 0, 0, 0]), 0);
        assert_eq!(call(&mut p, Sysno::membarrier, [8, 0, 0, 0]), einval);
        assert!(p.report.unimplemented.is_empty());
    }

    #[test]
    fn unknown_calls_are_enosys_and_counted_by_name() {
        let mut p = process();
        let enosys = -(libc::ENOSYS as i64);
        assert_eq!(
            ret(p.syscall(&mut p.main_task(), Sysno::ptrace as u64, [0; 6])),
            enosys
        );
        assert_eq!(
            ret(p.syscall(&mut p.main_task(), Sysno::ptrace as u64, [0; 6])),
            enosys
        );
        assert_eq!(ret(p.syscall(&mut p.main_task(), 100_000, [0; 6])), enosys);
        assert_eq!(p.report.unimplemented["ptrace"], 2);
        assert_eq!(p.report.unimplemented["#100000"], 1);
        // ENOSYS as a kernel without io_uring answers, not listed: its users fall back.
        assert_eq!(
            ret(p.syscall(&mut p.main_task(), Sysno::io_uring_setup as u64, [0; 6])),
            enosys
        );
        assert!(!p.report.unimplemented.contains_key("io_uring_setup"));
        // A process: made by the trap path; memory shared between two processes
        // without vfork: unsupported; waiting without children: ECHILD.
        assert!(matches!(
            p.syscall(&mut p.main_task(), Sysno::fork as u64, [0; 6]),
            Outcome::Fork(f) if !f.vfork
        ));
        let shared_vm = libc::CLONE_VM as u64 | libc::SIGCHLD as u64;
        assert!(matches!(
            p.syscall(
                &mut p.main_task(),
                Sysno::clone as u64,
                [shared_vm, 0, 0, 0, 0, 0]
            ),
            Outcome::Kill { .. }
        ));
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::wait4 as u64,
                [u64::MAX, 0, 0, 0, 0, 0]
            )),
            -(libc::ECHILD as i64)
        );
        // execve of something that is not a program is the error Linux gives.
        p.mm.write(GuestVirtAddr(0x40_0000), b"/nonexistent/prog\0")
            .unwrap();
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::execve as u64,
                [0x40_0000, 0, 0, 0, 0, 0]
            )),
            -(libc::ENOENT as i64)
        );
        p.mm.write(GuestVirtAddr(0x40_0000), b"/etc/passwd\0")
            .unwrap();
        let e = ret(p.syscall(
            &mut p.main_task(),
            Sysno::execve as u64,
            [0x40_0000, 0, 0, 0, 0, 0],
        ));
        assert!(
            e == -(libc::EACCES as i64) || e == -(libc::ENOEXEC as i64),
            "{e}"
        );
        assert!(matches!(
            p.syscall(
                &mut p.main_task(),
                Sysno::exit_group as u64,
                [3, 0, 0, 0, 0, 0]
            ),
            Outcome::Exit(3)
        ));
    }

    #[test]
    fn mmap_munmap_and_brk_follow_linux() {
        let mut p = process();
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let a = ret(p.syscall(
            &mut p.main_task(),
            Sysno::mmap as u64,
            [0, 10000, rw, anon, u64::MAX, 0],
        )) as u64;
        assert_eq!(a % PAGE, 0);
        p.mm.write(GuestVirtAddr(a + 9999), b"x").unwrap();
        // MAP_FIXED_NOREPLACE over it fails; MAP_FIXED replaces.
        let nr = anon | libc::MAP_FIXED_NOREPLACE as u64;
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::mmap as u64,
                [a, PAGE, rw, nr, u64::MAX, 0]
            )),
            -(libc::EEXIST as i64)
        );
        let fx = anon | libc::MAP_FIXED as u64;
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::mmap as u64,
                [a, PAGE, rw, fx, u64::MAX, 0]
            )) as u64,
            a
        );
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::munmap as u64,
                [a, 3 * PAGE, 0, 0, 0, 0]
            )),
            0
        );
        assert!(p.mm.write(GuestVirtAddr(a), b"x").is_err());
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::mmap as u64,
                [0, 0, rw, anon, u64::MAX, 0]
            )),
            -(libc::EINVAL as i64)
        );
        assert_eq!(
            ret(p.syscall(
                &mut p.main_task(),
                Sysno::mmap as u64,
                [0, u64::MAX, rw, anon, u64::MAX, 0]
            )),
            -(libc::ENOMEM as i64)
        );
        // A file mapping is recorded for symbolization, and sent to the recorder as made.
        let (tx, rx) = crossbeam_channel::unbounded();
        p.send_maps_to(crate::linux::GuestEventSink::new(tx));
        let events = || rx.try_iter().map(|t| t.event).collect::<Vec<_>>();
        let f: OwnedFd = std::fs::File::open("/bin/true").unwrap().into();
        let fd = p.fds.insert(Fd::new(f, false)).unwrap();
        let m = ret(p.syscall(
            &mut p.main_task(),
            Sysno::mmap as u64,
            [
                0,
                PAGE,
                libc::PROT_READ as u64,
                libc::MAP_PRIVATE as u64,
                fd,
                0,
            ],
        )) as u64;
        let mut head = [0u8; 4];
        p.mm.read(GuestVirtAddr(m), &mut head).unwrap();
        assert_eq!(&head, b"\x7fELF");
        let rec = p.report.maps.last().unwrap();
        assert_eq!(rec.start, m);
        assert!(rec.path.to_string_lossy().ends_with("true"), "{rec:?}");
        assert_eq!(
            events().last().cloned(),
            Some(crate::linux::GuestEvent::Map(rec.clone()))
        );

        // Anonymous memory is recorded when it becomes code (JIT code, for the report
        // to name through the process's perf map), not while it is data.
        let anon_rw = ret(p.syscall(
            &mut p.main_task(),
            Sysno::mmap as u64,
            [0, 2 * PAGE, rw, anon, u64::MAX, 0],
        )) as u64;
        assert_eq!(events().len(), 0);
        let rx_prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let r = ret(p.syscall(
            &mut p.main_task(),
            Sysno::mprotect as u64,
            [anon_rw, PAGE, rx_prot, 0, 0, 0],
        ));
        assert_eq!(r, 0);
        let code = crate::linux::mm::MapRecord::anonymous(p.mm.space, anon_rw, PAGE);
        assert_eq!(events(), vec![crate::linux::GuestEvent::Map(code)]);
        // Code to code: nothing new.
        ret(p.syscall(
            &mut p.main_task(),
            Sysno::mprotect as u64,
            [anon_rw, PAGE, rx_prot, 0, 0, 0],
        ));
        assert_eq!(events().len(), 0);
        let rwx = rw | libc::PROT_EXEC as u64;
        let jit = ret(p.syscall(
            &mut p.main_task(),
            Sysno::mmap as u64,
            [0, PAGE, rwx, anon, u64::MAX, 0],
        )) as u64;
        let rec = p.report.maps.last().unwrap();
        assert_eq!((rec.start, rec.len), (jit, PAGE));
        assert_eq!(rec.path.as_os_str(), "//anon");
        assert_eq!(events().len(), 1);
    }
}
