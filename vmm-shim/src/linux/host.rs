//! The host system calls the personality makes on the program's behalf, as safe
//! functions over host file descriptors and plain buffers. This is the only module of the
//! personality with `unsafe`; every call passes buffers it owns with their true lengths.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use crate::linux::mm::Errno;

fn last() -> Errno {
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn check(r: isize) -> Result<usize, Errno> {
    if r < 0 { Err(last()) } else { Ok(r as usize) }
}

/// Read up to `buf.len()` bytes at `offset`, retrying short reads; the bytes read (fewer
/// at end of file or on an error).
pub fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    done
}

/// Run `call` again when a signal of the shim's own interrupted it (a vCPU kick or its
/// exit timer: the program did not ask for the interruption, as with SA_RESTART),
/// unless the VM is stopping (then the program sees EINTR and the run ends).
fn restart<T>(mut call: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match call() {
            Err(Errno(libc::EINTR)) if !crate::vm::stopping() => {}
            r => return r,
        }
    }
}

pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    restart(|| {
        // SAFETY: buf is a live, writable buffer of buf.len() bytes.
        check(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    })
}

pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
    restart(|| {
        // SAFETY: buf is a live buffer of buf.len() bytes.
        check(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
    })
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: i64) -> Result<usize, Errno> {
    // SAFETY: buf is a live, writable buffer of buf.len() bytes.
    check(unsafe { libc::pread64(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) })
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: i64) -> Result<usize, Errno> {
    // SAFETY: buf is a live buffer of buf.len() bytes.
    check(unsafe { libc::pwrite64(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) })
}

pub fn lseek(fd: BorrowedFd<'_>, off: i64, whence: i32) -> Result<u64, Errno> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off, whence) };
    if r < 0 { Err(last()) } else { Ok(r as u64) }
}

/// `openat` relative to `dir` (None = the current directory); the new descriptor is
/// close-on-exec on the host whatever the program asked (it is never inherited).
pub fn openat(
    dir: Option<BorrowedFd<'_>>,
    path: &[u8],
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let fd = restart(|| {
        // SAFETY: c is a NUL-terminated string that outlives the call.
        let fd = unsafe { libc::openat(dfd, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd < 0 { Err(last()) } else { Ok(fd) }
    })?;
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A struct the kernel fills, returned as its raw bytes (the program's ABI is the
/// host's: both are x86-64 Linux).
fn raw_bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain C struct fully written by the kernel (or zero-initialised);
    // the slice covers exactly its bytes and is copied out at once.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// `newfstatat`: `struct stat` bytes.
pub fn fstatat(dir: Option<BorrowedFd<'_>>, path: &[u8], flags: i32) -> Result<Vec<u8>, Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: zeroed stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is a live stat buffer.
    let r = unsafe { libc::fstatat(dfd, c.as_ptr(), &mut st, flags) };
    if r < 0 {
        return Err(last());
    }
    Ok(raw_bytes(&st))
}

/// `statfs` (of `path`) or `fstatfs` (of `fd`): `struct statfs` bytes.
pub fn statfs(
    path: Option<&std::path::Path>,
    fd: Option<BorrowedFd<'_>>,
) -> Result<Vec<u8>, Errno> {
    // SAFETY: zeroed statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = match (path, fd) {
        (Some(p), _) => {
            use std::os::unix::ffi::OsStrExt;
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
            // SAFETY: c is NUL-terminated, st is a live statfs buffer.
            unsafe { libc::statfs(c.as_ptr(), &mut st) }
        }
        // SAFETY: st is a live statfs buffer; fd is open.
        (None, Some(fd)) => unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) },
        (None, None) => return Err(Errno::EINVAL),
    };
    if r < 0 {
        return Err(last());
    }
    Ok(raw_bytes(&st))
}

/// `getpeername` (`getsockname` when `own`): the address bytes.
pub fn sockname(fd: BorrowedFd<'_>, own: bool) -> Result<Vec<u8>, Errno> {
    // SAFETY: zeroed sockaddr_storage is a valid value of this plain C struct.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&raw mut ss).cast::<libc::sockaddr>();
    // SAFETY: p and len describe the live sockaddr_storage above.
    let r = unsafe {
        if own {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        }
    };
    if r < 0 {
        return Err(last());
    }
    let mut b = raw_bytes(&ss);
    b.truncate(len as usize);
    Ok(b)
}

/// `statx`: `struct statx` bytes.
pub fn statx(
    dir: Option<BorrowedFd<'_>>,
    path: &[u8],
    flags: i32,
    mask: u32,
) -> Result<Vec<u8>, Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: zeroed statx is a valid value of this plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is a live statx buffer.
    let r = unsafe { libc::statx(dfd, c.as_ptr(), flags, mask, &mut st) };
    if r < 0 {
        return Err(last());
    }
    Ok(raw_bytes(&st))
}

pub fn faccessat(
    dir: Option<BorrowedFd<'_>>,
    path: &[u8],
    mode: i32,
    flags: i32,
) -> Result<(), Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: c is NUL-terminated; faccessat2 semantics via the raw system call.
    let r = unsafe { libc::syscall(libc::SYS_faccessat2, dfd, c.as_ptr(), mode, flags) };
    if r < 0 { Err(last()) } else { Ok(()) }
}

pub fn readlinkat(dir: Option<BorrowedFd<'_>>, path: &[u8], max: usize) -> Result<Vec<u8>, Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let mut buf = vec![0u8; max.min(1 << 16)];
    // SAFETY: c is NUL-terminated, buf is writable for buf.len() bytes.
    let r = unsafe { libc::readlinkat(dfd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = check(r)?;
    buf.truncate(n);
    Ok(buf)
}

/// `getdents64` into a buffer of `len` bytes.
pub fn getdents64(fd: BorrowedFd<'_>, len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len.min(1 << 20)];
    // SAFETY: buf is writable for buf.len() bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    let n = check(r as isize)?;
    buf.truncate(n);
    Ok(buf)
}

/// Terminal ioctls that read a struct: TCGETS (termios) and TIOCGWINSZ (winsize).
pub fn ioctl_read(fd: BorrowedFd<'_>, request: u64) -> Result<Vec<u8>, Errno> {
    match request {
        r if r == libc::TCGETS => {
            // SAFETY: zeroed termios is valid; the kernel fills it.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: t is a live termios.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS, &mut t) };
            if r < 0 {
                Err(last())
            } else {
                Ok(raw_bytes(&t))
            }
        }
        r if r == libc::TIOCGWINSZ => {
            // SAFETY: zeroed winsize is valid; the kernel fills it.
            let mut w: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: w is a live winsize.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) };
            if r < 0 {
                Err(last())
            } else {
                Ok(raw_bytes(&w))
            }
        }
        _ => Err(Errno(libc::ENOTTY)),
    }
}

/// fcntl commands with an integer argument and result (F_GETFL, F_SETFL, ...).
pub fn fcntl_int(fd: BorrowedFd<'_>, cmd: i32, arg: i64) -> Result<i64, Errno> {
    // SAFETY: only called for commands whose argument is an integer.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    if r < 0 { Err(last()) } else { Ok(i64::from(r)) }
}

/// A new host descriptor for the same open file.
pub fn dup(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor; fd is only read.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if r < 0 {
        return Err(last());
    }
    // SAFETY: r is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

pub fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0; 2];
    // SAFETY: fds is a live array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r < 0 {
        return Err(last());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Path-based calls with one or two paths and an integer: unlinkat, mkdirat, renameat2...
/// A system call on one host descriptor with one integer argument (ftruncate, fsync,
/// fdatasync, fchmod).
pub fn fd_call(nr: i64, fd: BorrowedFd<'_>, arg: i64) -> Result<i64, Errno> {
    // SAFETY: the calls this is used for take (fd, integer) and touch no memory.
    let r = unsafe { libc::syscall(nr, fd.as_raw_fd(), arg) };
    if r < 0 { Err(last()) } else { Ok(r) }
}

pub fn path_call(
    nr: i64,
    dfd1: RawFd,
    p1: &[u8],
    dfd2: RawFd,
    p2: Option<&[u8]>,
    arg: i64,
) -> Result<i64, Errno> {
    let c1 = std::ffi::CString::new(p1).map_err(|_| Errno::EINVAL)?;
    let r = match p2 {
        None => {
            // SAFETY: c1 is NUL-terminated; the call takes (dirfd, path, int).
            unsafe { libc::syscall(nr, dfd1, c1.as_ptr(), arg) }
        }
        Some(p2) => {
            let c2 = std::ffi::CString::new(p2).map_err(|_| Errno::EINVAL)?;
            // SAFETY: both paths are NUL-terminated; the call takes
            // (dirfd, path, dirfd, path, int).
            unsafe { libc::syscall(nr, dfd1, c1.as_ptr(), dfd2, c2.as_ptr(), arg) }
        }
    };
    if r < 0 { Err(last()) } else { Ok(r) }
}

pub fn clock_gettime(clock: i32) -> Result<(i64, i64), Errno> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a live timespec.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    if r < 0 {
        Err(last())
    } else {
        Ok((ts.tv_sec, ts.tv_nsec))
    }
}

pub fn clock_getres(clock: i32) -> Result<(i64, i64), Errno> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a live timespec.
    let r = unsafe { libc::clock_getres(clock, &mut ts) };
    if r < 0 {
        Err(last())
    } else {
        Ok((ts.tv_sec, ts.tv_nsec))
    }
}

pub fn getrandom(buf: &mut [u8], flags: u32) -> Result<usize, Errno> {
    // SAFETY: buf is writable for buf.len() bytes.
    check(unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// `struct utsname` bytes.
pub fn uname() -> Vec<u8> {
    // SAFETY: zeroed utsname is valid; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a live utsname.
    unsafe { libc::uname(&mut u) };
    raw_bytes(&u)
}

/// `struct sysinfo` bytes.
pub fn sysinfo() -> Vec<u8> {
    // SAFETY: zeroed sysinfo is valid; sysinfo fills it.
    let mut s: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: s is a live sysinfo.
    unsafe { libc::sysinfo(&mut s) };
    raw_bytes(&s)
}

/// `prlimit64(0, resource, NULL, old)`: the current limit as `struct rlimit64` bytes.
pub fn getrlimit(resource: u32) -> Result<Vec<u8>, Errno> {
    let mut r = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a live rlimit64; resource is range-checked by the kernel.
    let e = unsafe { libc::prlimit64(0, resource as _, std::ptr::null(), &mut r) };
    if e < 0 {
        Err(last())
    } else {
        Ok(raw_bytes(&r))
    }
}

/// `sched_getaffinity(0)` as a mask of `len` bytes.
pub fn sched_getaffinity(len: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; len.min(4096)];
    // SAFETY: buf is writable for buf.len() bytes.
    let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, 0, buf.len(), buf.as_mut_ptr()) };
    let n = check(r as isize)?;
    buf.truncate(n);
    Ok(buf)
}

/// poll(2) on host descriptors (negative ones are skipped, as the kernel does).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<usize, Errno> {
    // SAFETY: fds is a live, writable array of fds.len() pollfd structures.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    check(r as isize)
}

pub fn ids() -> [u64; 6] {
    // SAFETY: these calls have no preconditions.
    unsafe {
        [
            libc::getpid() as u64,
            libc::getppid() as u64,
            u64::from(libc::getuid()),
            u64::from(libc::geteuid()),
            u64::from(libc::getgid()),
            u64::from(libc::getegid()),
        ]
    }
}

pub fn umask(mask: u32) -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::umask(mask) }
}

/// AT_HWCAP: CPUID.1:EDX, as Linux reports it.
pub fn hwcap() -> u64 {
    // SAFETY: cpuid leaf 1 exists on every x86-64 CPU.
    #[allow(unused_unsafe)]
    u64::from(unsafe { std::arch::x86_64::__cpuid(1) }.edx)
}
