//! The host system calls the personality makes on the program's behalf, as safe
//! functions over host file descriptors and plain buffers. This is the only module of the
//! personality with `unsafe`; every call passes buffers it owns with their true lengths.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use crate::linux::errno::Errno;

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
            Err(Errno(libc::EINTR)) if !crate::kick::stopping() => {}
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
/// close-on-exec on the host whatever the program asked (it is never inherited), and
/// a terminal opened never becomes lbrprof's controlling terminal (the program's
/// sessions are its own: [`crate::linux::proc::Kernel::acquire_terminal`]).
pub fn openat(
    dir: Option<BorrowedFd<'_>>,
    path: &[u8],
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let flags = flags | libc::O_CLOEXEC | libc::O_NOCTTY;
    open_with(dir, path, |dfd, c| {
        // SAFETY: c is a NUL-terminated string that outlives the call.
        i64::from(unsafe { libc::openat(dfd, c.as_ptr(), flags, mode) })
    })
}

/// An open of `path` relative to `dir` by `call` (given the directory descriptor and the
/// path as a C string; it returns a new descriptor or -1 with errno), restarted on EINTR.
fn open_with(
    dir: Option<BorrowedFd<'_>>,
    path: &[u8],
    call: impl Fn(i32, &std::ffi::CStr) -> i64,
) -> Result<OwnedFd, Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    let dfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let fd = restart(|| {
        let fd = call(dfd, &c);
        if fd < 0 { Err(last()) } else { Ok(fd as i32) }
    })?;
    // SAFETY: fd was just returned by an open call and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat` that refuses to go through `/proc`'s magic links (`/proc/PID/fd/N`,
/// `/proc/PID/exe`, `cwd`, `root`): how the shim opens the program's paths, so that no
/// spelling of a path (a symbolic link of the program's, a path relative to a descriptor
/// on `/proc`) reaches one of lbrprof's descriptors. Where openat2 is missing (Linux
/// before 5.6) a plain openat.
pub fn openat_no_magic(
    dir: Option<BorrowedFd<'_>>,
    path: &[u8],
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    /// Linux's `struct open_how` (libc's cannot be built by value).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    // openat2 refuses flags Linux does not know, which openat ignores.
    const KNOWN: i32 = libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_TRUNC
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_ASYNC
        | libc::O_DIRECT
        | 0o100000 // O_LARGEFILE
        | libc::O_DIRECTORY
        | libc::O_NOFOLLOW
        | libc::O_NOATIME
        | libc::O_CLOEXEC
        | libc::O_PATH
        | libc::O_TMPFILE;
    let how = OpenHow {
        flags: ((flags & KNOWN) | libc::O_CLOEXEC | libc::O_NOCTTY) as u32 as u64,
        // (openat2 refuses a mode with neither O_CREAT nor O_TMPFILE.)
        mode: if flags & libc::O_CREAT != 0 || flags & libc::O_TMPFILE == libc::O_TMPFILE {
            u64::from(mode & 0o7777)
        } else {
            0
        },
        resolve: libc::RESOLVE_NO_MAGICLINKS,
    };
    let opened = open_with(dir, path, |dfd, c| {
        // SAFETY: c is a NUL-terminated string and `how` an open_how, both outliving the
        // call; the size passed is the struct's.
        unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dfd,
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        }
    });
    match opened {
        Err(Errno(libc::ENOSYS)) => openat(dir, path, flags, mode),
        r => r,
    }
}

/// An empty directory no one else can reach (made and removed at once): the host file
/// behind a descriptor whose directory entries the shim serves itself.
pub fn empty_directory() -> Result<OwnedFd, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let mut template = std::env::temp_dir().as_os_str().as_bytes().to_vec();
    template.extend_from_slice(b"/lbrprof-dir-XXXXXX\0");
    // SAFETY: template is a writable NUL-terminated buffer ending in XXXXXX, which
    // mkdtemp replaces in place.
    if unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) }.is_null() {
        return Err(last());
    }
    let path = &template[..template.len() - 1];
    let fd = openat(None, path, libc::O_RDONLY | libc::O_DIRECTORY, 0);
    // SAFETY: path (with its NUL) names the directory mkdtemp just made.
    unsafe { libc::rmdir(template.as_ptr().cast()) };
    fd
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

/// Bytes of the kernel's `struct termios` (include/uapi/asm-generic/termbits.h: four
/// `tcflag_t`, `c_line`, `c_cc[NCCS = 19]`): what TCGETS and TCSETS* move, fewer than
/// the C library's `struct termios` (glibc's tcgetattr passes a 36-byte one).
pub const KERNEL_TERMIOS: usize = 36;

/// The terminal ioctls passed on to the host: the bytes their argument points to, and
/// whether the kernel writes them (true) or reads them. TCGETS/TCSETS/TCSETSW/TCSETSF
/// (termios), TIOCGWINSZ/TIOCSWINSZ (`struct winsize`, four u16), and the pseudo
/// terminal master's TIOCGPTN (its number) and TIOCSPTLCK (lock), which `openpty`,
/// `ptsname` and `unlockpt` make.
pub fn tty_ioctl_arg(request: u64) -> Option<(usize, bool)> {
    Some(match request {
        libc::TCGETS => (KERNEL_TERMIOS, true),
        libc::TCSETS | libc::TCSETSW | libc::TCSETSF => (KERNEL_TERMIOS, false),
        libc::TIOCGWINSZ => (8, true),
        libc::TIOCSWINSZ => (8, false),
        libc::TIOCGPTN => (4, true),
        libc::TIOCSPTLCK => (4, false),
        _ => return None,
    })
}

/// Terminal ioctl `request` on `fd` with its argument in `arg` (as many bytes as
/// [`tty_ioctl_arg`] says; written back when the kernel writes it).
pub fn tty_ioctl(fd: BorrowedFd<'_>, request: u64, arg: &mut [u8]) -> Result<(), Errno> {
    match tty_ioctl_arg(request) {
        None => Err(Errno(libc::ENOTTY)),
        Some((size, _)) if size != arg.len() => Err(Errno(libc::EINVAL)),
        Some(_) => {
            // SAFETY: `request` is one of the ioctls above, whose argument points to
            // exactly `arg.len()` bytes, which `arg` holds for the call.
            let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg.as_mut_ptr()) };
            if r < 0 { Err(last()) } else { Ok(()) }
        }
    }
}

/// FIONBIO (set or clear O_NONBLOCK through an int), FIONREAD (bytes ready, an int
/// out) and TIOCGPGRP (the terminal's foreground process group, an int out): `value`
/// in, the int the kernel left out.
pub fn ioctl_int(fd: BorrowedFd<'_>, request: u64, value: i32) -> Result<i32, Errno> {
    if ![libc::FIONBIO, libc::FIONREAD, libc::TIOCGPGRP].contains(&request) {
        return Err(Errno(libc::ENOTTY));
    }
    let mut v = value;
    // SAFETY: these requests take a pointer to a live int.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut v) };
    if r < 0 { Err(last()) } else { Ok(v) }
}

/// Whether `fd` is a regular file or a block device (writes to those never wait for
/// another process).
pub fn is_storage(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: zeroed stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a live stat buffer.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    r == 0 && matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFBLK)
}

pub fn is_socket(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: zeroed stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a live stat buffer.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
}

/// fcntl commands with an integer argument and result (F_GETFL, F_SETFL, ...).
pub fn fcntl_int(fd: BorrowedFd<'_>, cmd: i32, arg: i64) -> Result<i64, Errno> {
    // SAFETY: only called for commands whose argument is an integer.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, arg) };
    if r < 0 { Err(last()) } else { Ok(i64::from(r)) }
}

/// A record lock's description (`struct flock`), as the guest and the host lay it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flock {
    pub kind: i16,
    pub whence: i16,
    pub start: i64,
    pub len: i64,
    pub pid: i32,
}

impl Flock {
    /// From the 32 bytes of a `struct flock` (x86-64).
    pub fn from_bytes(b: &[u8; 32]) -> Flock {
        let i16_at = |o: usize| i16::from_le_bytes([b[o], b[o + 1]]);
        let i64_at = |o: usize| i64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        Flock {
            kind: i16_at(0),
            whence: i16_at(2),
            start: i64_at(8),
            len: i64_at(16),
            pid: i32::from_le_bytes(b[24..28].try_into().unwrap()),
        }
    }

    pub fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[2..4].copy_from_slice(&self.whence.to_le_bytes());
        b[8..16].copy_from_slice(&self.start.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.pid.to_le_bytes());
        b
    }
}

/// fcntl with a `struct flock` (F_OFD_SETLK, F_OFD_GETLK, ...); `lock` is updated by
/// the get forms.
pub fn record_lock(fd: BorrowedFd<'_>, cmd: i32, lock: &mut Flock) -> Result<(), Errno> {
    // SAFETY: zeroed is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = lock.kind;
    fl.l_whence = lock.whence;
    fl.l_start = lock.start;
    fl.l_len = lock.len;
    fl.l_pid = lock.pid;
    // SAFETY: the lock commands take a pointer to a live struct flock.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) };
    if r < 0 {
        return Err(last());
    }
    *lock = Flock {
        kind: fl.l_type,
        whence: fl.l_whence,
        start: fl.l_start,
        len: fl.l_len,
        pid: fl.l_pid,
    };
    Ok(())
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

/// fchownat: the owner and group of `path` (relative to `dfd`; the file `dfd` itself with
/// AT_EMPTY_PATH and an empty path). -1 (as u32) leaves one unchanged.
pub fn chown(dfd: RawFd, path: &[u8], uid: u32, gid: u32, flags: i32) -> Result<(), Errno> {
    let c = std::ffi::CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: c is NUL-terminated; the call only reads it.
    let r = unsafe { libc::fchownat(dfd, c.as_ptr(), uid, gid, flags) };
    check(r as isize).map(|_| ())
}

/// capget for this process with header `version`: the version the kernel left in the
/// header, and the capability sets (`struct __user_cap_data_struct`, 12 bytes each: one
/// for version 1, two for versions 2 and 3).
pub fn capget(version: u32) -> (u32, Result<Vec<u8>, Errno>) {
    let mut head = [version, 0u32];
    let mut data = [0u32; 6];
    // SAFETY: the header and six u32s (two data structs) are live and writable.
    let r = unsafe { libc::syscall(libc::SYS_capget, head.as_mut_ptr(), data.as_mut_ptr()) };
    if r < 0 {
        return (head[0], Err(last()));
    }
    let structs = if version == 0x1998_0330 { 1 } else { 2 };
    let bytes = data[..3 * structs]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    (head[0], Ok(bytes))
}

/// A system call whose arguments are all integers (descriptors, flags, lengths,
/// offsets): it touches no memory of ours.
pub fn int_call(nr: i64, a: [i64; 4]) -> Result<i64, Errno> {
    // SAFETY: only used for calls that take integers alone (sync, syncfs, fallocate,
    // sync_file_range, getpriority, setpriority, inotify_rm_watch), so no argument is
    // a pointer.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3]) };
    if r < 0 { Err(last()) } else { Ok(r) }
}

fn cstring(b: &[u8]) -> Result<std::ffi::CString, Errno> {
    std::ffi::CString::new(b).map_err(|_| Errno::EINVAL)
}

/// symlinkat: a link at `path` (relative to `dfd`) whose contents are `target`.
pub fn symlinkat(target: &[u8], dfd: RawFd, path: &[u8]) -> Result<(), Errno> {
    let (t, p) = (cstring(target)?, cstring(path)?);
    // SAFETY: both strings are NUL-terminated and only read.
    check(unsafe { libc::symlinkat(t.as_ptr(), dfd, p.as_ptr()) } as isize).map(|_| ())
}

/// mknodat (a FIFO, a regular file, or a device node where the user may make one).
pub fn mknodat(dfd: RawFd, path: &[u8], mode: u32, dev: u64) -> Result<(), Errno> {
    let p = cstring(path)?;
    // SAFETY: p is NUL-terminated and only read.
    check(unsafe { libc::mknodat(dfd, p.as_ptr(), mode, dev) } as isize).map(|_| ())
}

/// utimensat: `path` None is `dfd` itself (futimens); `times` None is "now".
pub fn utimensat(
    dfd: RawFd,
    path: Option<&[u8]>,
    times: Option<[(i64, i64); 2]>,
    flags: i32,
) -> Result<(), Errno> {
    let p = path.map(cstring).transpose()?;
    let ts = times.map(|t| {
        t.map(|(sec, nsec)| libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        })
    });
    let pp = p.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    let tp = ts.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: the path is NUL-terminated or null, the times two live timespecs or
    // null; the raw call (not libc's wrapper) is what allows a null path.
    let r = unsafe { libc::syscall(libc::SYS_utimensat, dfd, pp, tp, flags) };
    check(r as isize).map(|_| ())
}

/// truncate of a path.
pub fn truncate(path: &std::path::Path, len: i64) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let p = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: p is NUL-terminated and only read.
    check(unsafe { libc::truncate(p.as_ptr(), len) } as isize).map(|_| ())
}

/// copy_file_range between two host files; the offsets, when given, are used and
/// advanced instead of the files' positions.
pub fn copy_file_range(
    from: BorrowedFd<'_>,
    from_off: Option<&mut i64>,
    to: BorrowedFd<'_>,
    to_off: Option<&mut i64>,
    len: usize,
    flags: u32,
) -> Result<usize, Errno> {
    let fp = from_off.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    let tp = to_off.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    // SAFETY: the offsets are live i64s or null; the descriptors are open.
    check(unsafe { libc::copy_file_range(from.as_raw_fd(), fp, to.as_raw_fd(), tp, len, flags) })
}

/// sendfile from `from` to `to`; `off`, when given, is used and advanced instead of
/// `from`'s position.
pub fn sendfile(
    to: BorrowedFd<'_>,
    from: BorrowedFd<'_>,
    off: Option<&mut i64>,
    count: usize,
) -> Result<usize, Errno> {
    let op = off.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    // SAFETY: the offset is a live i64 or null; the descriptors are open.
    check(unsafe { libc::sendfile(to.as_raw_fd(), from.as_raw_fd(), op, count) })
}

pub fn inotify_init(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain integer argument; the result is a fresh descriptor we own.
    let r = check(unsafe { libc::inotify_init1(flags) } as isize)?;
    // SAFETY: r is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

pub fn inotify_add_watch(
    fd: BorrowedFd<'_>,
    path: &std::path::Path,
    mask: u32,
) -> Result<usize, Errno> {
    use std::os::unix::ffi::OsStrExt;
    let p = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: p is NUL-terminated and only read.
    check(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), p.as_ptr(), mask) } as isize)
}

pub fn memfd_create(name: &[u8], flags: u32) -> Result<OwnedFd, Errno> {
    let n = cstring(name)?;
    // SAFETY: n is NUL-terminated and only read; the result is a fresh descriptor.
    let r = check(unsafe { libc::memfd_create(n.as_ptr(), flags) } as isize)?;
    // SAFETY: r is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The host CPU and NUMA node the calling thread runs on (the vCPU's thread, so the
/// CPU the program's thread runs on too).
pub fn getcpu() -> Result<(u32, u32), Errno> {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: both pointers are live u32s; the third argument (tcache) is unused.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut u32,
            &mut node as *mut u32,
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    check(r as isize).map(|_| (cpu, node))
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

/// The host's XCR0 (the XSAVE components its kernel enabled); x87 and SSE when the
/// host has no XSAVE.
pub fn xcr0() -> u64 {
    static XCR0: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *XCR0.get_or_init(|| {
        if std::arch::x86_64::__cpuid(1).ecx & (1 << 27) == 0 {
            return 0b11;
        }
        // SAFETY: CPUID.1:ECX.OSXSAVE is set, so the host kernel enabled XGETBV, and XCR0
        // (index 0) always exists; the instruction only reads a register.
        unsafe { std::arch::x86_64::_xgetbv(0) }
    })
}

/// The file type bits and device number of an open file (`fstat`'s `st_mode & S_IFMT`
/// and `st_rdev`).
pub fn file_kind(fd: BorrowedFd<'_>) -> Result<(u32, u64), Errno> {
    // SAFETY: zeroed stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open descriptor for the call's duration; st is a live buffer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } as isize)?;
    Ok((st.st_mode & libc::S_IFMT, st.st_rdev))
}

/// What names an open file for sharing its pages: `(st_mode & S_IFMT, st_dev, st_ino,
/// st_size)`.
pub fn file_id(fd: BorrowedFd<'_>) -> Result<(u32, u64, u64, u64), Errno> {
    // SAFETY: zeroed stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open descriptor for the call's duration; st is a live buffer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } as isize)?;
    Ok((
        st.st_mode & libc::S_IFMT,
        st.st_dev,
        st.st_ino,
        st.st_size.max(0) as u64,
    ))
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
/// The host's `struct sysinfo`, with the RAM figures replaced by the guest's (`total`
/// and `free` bytes): programs size their heaps from it (the JVM takes 1/64 of it up
/// front), and the guest's RAM is what they have.
/// With `pinned_uptime` (a virtual clock), that uptime and none of what changes from
/// run to run on the host (load averages, process count, swap in use).
pub fn sysinfo(total: u64, free: u64, pinned_uptime: Option<i64>) -> Vec<u8> {
    // SAFETY: zeroed sysinfo is valid; sysinfo fills it.
    let mut s: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: s is a live sysinfo.
    unsafe { libc::sysinfo(&mut s) };
    if let Some(uptime) = pinned_uptime {
        s.uptime = uptime;
        s.loads = [0; 3];
        s.procs = 1;
        s.freeswap = s.totalswap;
    }
    let unit = u64::from(s.mem_unit.max(1));
    s.totalram = total / unit;
    s.freeram = free / unit;
    s.sharedram = 0;
    s.bufferram = 0;
    s.totalhigh = 0;
    s.freehigh = 0;
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

/// Whether lbrprof may raise a hard resource limit (CAP_SYS_RESOURCE in its effective
/// capabilities, from `/proc/self/status`): then so may the program.
pub fn may_raise_limits() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
            u64::from_str_radix(hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
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

/// Where the host has the file open on `fd` (its `/proc/self/fd` link).
pub fn path_of(fd: BorrowedFd<'_>) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// The device number and path of the terminal open on `fd`; ENOTTY if it is not one.
pub fn terminal(fd: BorrowedFd<'_>) -> Result<(u64, std::path::PathBuf), Errno> {
    let mut termios = [0u8; KERNEL_TERMIOS];
    tty_ioctl(fd, libc::TCGETS, &mut termios)?;
    let (_, rdev) = file_kind(fd)?;
    Ok((rdev, path_of(fd).ok_or(Errno(libc::ENOTTY))?))
}

/// The calling host thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The calling host thread's user and system CPU time (`getrusage(RUSAGE_THREAD)`).
pub fn own_thread_times() -> Result<(Duration, Duration), Errno> {
    // SAFETY: zeroed rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a live, writable rusage for the call.
    check(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } as isize)?;
    let tv = |t: libc::timeval| {
        Duration::new(
            t.tv_sec.max(0) as u64,
            (t.tv_usec.clamp(0, 999_999) as u32) * 1000,
        )
    };
    Ok((tv(ru.ru_utime), tv(ru.ru_stime)))
}

/// The CPU time of host thread `tid` of this process, from its thread CPU clock
/// (Linux's encoding: `!tid << 3 | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED`). EINVAL once
/// the thread has ended.
pub fn thread_cpu_time(tid: i32) -> Result<Duration, Errno> {
    let clock = (!tid << 3) | 4 | 2;
    let (s, ns) = clock_gettime(clock)?;
    Ok(Duration::new(
        s.max(0) as u64,
        ns.clamp(0, 999_999_999) as u32,
    ))
}

/// The user and system clock ticks of host thread `tid` of this process (fields 14
/// and 15 of its `/proc/self/task/TID/stat`).
pub fn thread_ticks(tid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The name is in parentheses and may hold anything: the fields follow the last ')'.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let tail = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    let mut fields = tail.split(' ').skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// lbrprof's process group and session.
pub fn group_and_session() -> (u64, u64) {
    // SAFETY: these calls have no preconditions.
    unsafe { (libc::getpgrp() as u64, libc::getsid(0) as u64) }
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

/// A read-only-looking file holding `bytes` (an anonymous memory file, read from its
/// start), for contents the shim serves itself.
pub fn memory_file(name: &std::ffi::CStr, bytes: &[u8]) -> Result<OwnedFd, Errno> {
    use std::io::{Seek, Write};
    // SAFETY: name is NUL-terminated; MFD_CLOEXEC is a valid flag.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let io = |e: std::io::Error| Errno(e.raw_os_error().unwrap_or(libc::EIO));
    file.write_all(bytes).map_err(io)?;
    file.rewind().map_err(io)?;
    Ok(file.into())
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

/// Takes ownership of a descriptor a system call just returned (`r`, or the error).
fn owned(r: i32) -> Result<OwnedFd, Errno> {
    if r < 0 {
        return Err(last());
    }
    // SAFETY: r is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// A host epoll instance (close-on-exec on the host whatever the program asked).
pub fn epoll_create() -> Result<OwnedFd, Errno> {
    // SAFETY: plain integer argument.
    owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
}

/// epoll_ctl with the program's `struct epoll_event` (events, opaque data): the host
/// keeps the data and hands it back from [`epoll_wait`], so it needs no translation.
pub fn epoll_ctl(
    epfd: BorrowedFd<'_>,
    op: i32,
    fd: BorrowedFd<'_>,
    event: Option<(u32, u64)>,
) -> Result<(), Errno> {
    let mut ev = event.map(|(events, u64)| libc::epoll_event { events, u64 });
    let p = ev
        .as_mut()
        .map_or(std::ptr::null_mut(), |e| e as *mut libc::epoll_event);
    // SAFETY: p is null (EPOLL_CTL_DEL) or points at a live epoll_event.
    let r = unsafe { libc::epoll_ctl(epfd.as_raw_fd(), op, fd.as_raw_fd(), p) };
    if r < 0 { Err(last()) } else { Ok(()) }
}

/// Up to `max` ready events as (events, data), waiting at most `timeout_ms`.
pub fn epoll_wait(
    epfd: BorrowedFd<'_>,
    max: usize,
    timeout_ms: i32,
) -> Result<Vec<(u32, u64)>, Errno> {
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; max.max(1)];
    // SAFETY: evs is a live, writable array of evs.len() epoll_event structures.
    let r = unsafe {
        libc::epoll_wait(
            epfd.as_raw_fd(),
            evs.as_mut_ptr(),
            evs.len() as i32,
            timeout_ms,
        )
    };
    if r < 0 {
        return Err(last());
    }
    evs.truncate(r as usize);
    Ok(evs.iter().map(|e| (e.events, e.u64)).collect())
}

/// A host eventfd; `flags` are the program's (EFD_NONBLOCK, EFD_SEMAPHORE).
pub fn eventfd(initval: u32, flags: i32) -> Result<OwnedFd, Errno> {
    let flags = (flags & (libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE)) | libc::EFD_CLOEXEC;
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::eventfd(initval, flags) })
}

/// Add 1 to an eventfd's counter (making it readable); a full counter is left as is.
pub fn eventfd_signal(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to a descriptor we own.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

/// Reset an eventfd's counter to 0 (not readable), without blocking.
pub fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if poll(&mut p, 0).unwrap_or(0) == 0 {
        return;
    }
    let mut b = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer; the eventfd is readable, so
    // the read does not block.
    let _ = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
}

/// A host timerfd on `clock`; `flags` are the program's (TFD_NONBLOCK).
pub fn timerfd_create(clock: i32, flags: i32) -> Result<OwnedFd, Errno> {
    let flags = (flags & libc::TFD_NONBLOCK) | libc::TFD_CLOEXEC;
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::timerfd_create(clock, flags) })
}

/// The 32 bytes of a `struct itimerspec` (interval, value) as four integers.
pub type Itimerspec = [i64; 4];

fn to_itimerspec(t: &Itimerspec) -> libc::itimerspec {
    libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: t[0],
            tv_nsec: t[1],
        },
        it_value: libc::timespec {
            tv_sec: t[2],
            tv_nsec: t[3],
        },
    }
}

fn from_itimerspec(t: &libc::itimerspec) -> Itimerspec {
    [
        t.it_interval.tv_sec,
        t.it_interval.tv_nsec,
        t.it_value.tv_sec,
        t.it_value.tv_nsec,
    ]
}

/// timerfd_settime: arms (or disarms) the timer, returns the old setting.
pub fn timerfd_settime(
    fd: BorrowedFd<'_>,
    flags: i32,
    new: &Itimerspec,
) -> Result<Itimerspec, Errno> {
    let new = to_itimerspec(new);
    // SAFETY: an all-zero itimerspec is a valid value.
    let mut old: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live itimerspec structures.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &new, &mut old) };
    if r < 0 {
        return Err(last());
    }
    Ok(from_itimerspec(&old))
}

pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> Result<Itimerspec, Errno> {
    // SAFETY: an all-zero itimerspec is a valid value.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: cur is a live itimerspec.
    let r = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut cur) };
    if r < 0 {
        return Err(last());
    }
    Ok(from_itimerspec(&cur))
}

/// A host socket (close-on-exec on the host whatever the program asked).
pub fn socket(domain: i32, ty: i32, protocol: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: plain integer arguments.
    owned(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })
}

pub fn socketpair(domain: i32, ty: i32, protocol: i32) -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0; 2];
    // SAFETY: fds is a live array of two ints.
    let r =
        unsafe { libc::socketpair(domain, ty | libc::SOCK_CLOEXEC, protocol, fds.as_mut_ptr()) };
    if r < 0 {
        return Err(last());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// bind (`connect` false) or connect with the program's socket address bytes.
pub fn bind_or_connect(fd: BorrowedFd<'_>, addr: &[u8], connect: bool) -> Result<(), Errno> {
    let p = addr.as_ptr().cast::<libc::sockaddr>();
    let len = addr.len() as libc::socklen_t;
    // SAFETY: p points at addr.len() live bytes; the kernel reads at most len of them.
    let r = unsafe {
        if connect {
            libc::connect(fd.as_raw_fd(), p, len)
        } else {
            libc::bind(fd.as_raw_fd(), p, len)
        }
    };
    if r < 0 { Err(last()) } else { Ok(()) }
}

pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    if r < 0 { Err(last()) } else { Ok(()) }
}

/// Bytes of a `struct sockaddr_storage`: the largest address a call returns.
const SOCKADDR_MAX: usize = std::mem::size_of::<libc::sockaddr_storage>();

/// accept4 with the program's SOCK_NONBLOCK; the new socket and its peer's address
/// (as many bytes as the kernel's address length says).
pub fn accept4(fd: BorrowedFd<'_>, flags: i32) -> Result<(OwnedFd, Vec<u8>, usize), Errno> {
    let mut addr = vec![0u8; SOCKADDR_MAX];
    let mut len = SOCKADDR_MAX as libc::socklen_t;
    let flags = (flags & libc::SOCK_NONBLOCK) | libc::SOCK_CLOEXEC;
    // SAFETY: addr is a live, writable buffer of len bytes.
    let r = unsafe { libc::accept4(fd.as_raw_fd(), addr.as_mut_ptr().cast(), &mut len, flags) };
    let s = owned(r)?;
    Ok((s, addr, len as usize))
}

pub fn setsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: value is a live buffer of value.len() bytes.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if r < 0 { Err(last()) } else { Ok(()) }
}

/// getsockopt into a buffer of `max` bytes: the value (the kernel's length).
pub fn getsockopt(fd: BorrowedFd<'_>, level: i32, name: i32, max: usize) -> Result<Vec<u8>, Errno> {
    let mut v = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: v is a live, writable buffer of len bytes.
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, v.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(last());
    }
    v.truncate((len as usize).min(max));
    Ok(v)
}

pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> Result<(), Errno> {
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::shutdown(fd.as_raw_fd(), how) };
    if r < 0 { Err(last()) } else { Ok(()) }
}

/// sendmsg of one gathered buffer, with an optional destination and control data
/// (already translated to host descriptors).
pub fn sendmsg(
    fd: BorrowedFd<'_>,
    data: &[u8],
    to: Option<&[u8]>,
    control: &[u8],
    flags: i32,
) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(to) = to {
        msg.msg_name = to.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = to.len() as libc::socklen_t;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len();
    }
    // SAFETY: every pointer in msg is to a live buffer of the stated length, only read.
    check(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) })
}

/// What [`recvmsg`] received.
pub struct Received {
    pub len: usize,
    pub from: Vec<u8>,
    /// The sender address's full length (may exceed `from`).
    pub from_len: usize,
    pub control: Vec<u8>,
    pub flags: i32,
}

/// recvmsg into one buffer of `len` bytes, with room for an address and `control` bytes
/// of control data (descriptors arrive close-on-exec).
pub fn recvmsg(
    fd: BorrowedFd<'_>,
    len: usize,
    control: usize,
    flags: i32,
) -> Result<(Vec<u8>, Received), Errno> {
    let mut data = vec![0u8; len];
    let mut from = vec![0u8; SOCKADDR_MAX];
    let mut ctl = vec![0u8; control];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr().cast();
    msg.msg_namelen = SOCKADDR_MAX as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if control > 0 {
        msg.msg_control = ctl.as_mut_ptr().cast();
        msg.msg_controllen = control;
    }
    // SAFETY: every pointer in msg is to a live, writable buffer of the stated length.
    let n =
        check(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) })?;
    ctl.truncate(msg.msg_controllen.min(control));
    let from_len = msg.msg_namelen as usize;
    Ok((
        data,
        Received {
            len: n,
            from,
            from_len,
            control: ctl,
            flags: msg.msg_flags,
        },
    ))
}

/// Takes ownership of a descriptor that arrived in an SCM_RIGHTS message.
pub fn adopt_received(raw: RawFd) -> Option<OwnedFd> {
    // SAFETY: the kernel just installed raw in this process for this message; nobody
    // else owns it.
    (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) })
}
