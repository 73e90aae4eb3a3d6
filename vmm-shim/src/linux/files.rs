//! File-system calls past open/read/write: links and nodes (symlink, mknod), times
//! (utimensat and its older forms), sizes (truncate, fallocate), copies inside the host
//! (copy_file_range, sendfile), positioned vector I/O (preadv, pwritev and their `2`
//! forms), inotify and memfd. Each acts on the host file system with the invoking user's
//! rights, through the program's descriptors and working directory, like the calls in
//! `syscall.rs`.

use std::os::fd::AsRawFd;

use crate::linux::Process;
use crate::linux::errno::Errno;
use crate::linux::fd::Fd;
use crate::linux::host;
use crate::linux::syscall::{MAX_IO, iov_room};

type Sys = Result<u64, Errno>;

/// `UTIME_NOW` and `UTIME_OMIT` (tv_nsec values utimensat passes through).
const UTIME_NOW: i64 = (1 << 30) - 1;
const UTIME_OMIT: i64 = (1 << 30) - 2;

impl Process {
    fn dir_raw(&self, dirfd: u64) -> Result<i32, Errno> {
        Ok(self.dir(dirfd)?.map_or(libc::AT_FDCWD, |d| d.as_raw_fd()))
    }

    fn read_i64s<const N: usize>(&self, va: u64) -> Result<[i64; N], Errno> {
        let mut out = [0i64; N];
        for (i, v) in out.iter_mut().enumerate() {
            *v = self.mm.read_u64(va + 8 * i as u64)? as i64;
        }
        Ok(out)
    }

    /// symlink(target, path) and symlinkat(target, dirfd, path).
    pub(crate) fn sys_symlinkat(&mut self, target: u64, dirfd: u64, path: u64) -> Sys {
        let t = self.mm.read_cstr(target, 4096)?;
        let p = self.path(path)?;
        host::symlinkat(&t, self.dir_raw(dirfd)?, &p).map(|()| 0)
    }

    /// mknod and mknodat (mkfifo makes its FIFOs with it).
    pub(crate) fn sys_mknodat(&mut self, dirfd: u64, path: u64, mode: u64, dev: u64) -> Sys {
        let p = self.path(path)?;
        host::mknodat(self.dir_raw(dirfd)?, &p, mode as u32, dev).map(|()| 0)
    }

    /// utimensat: a null path is the descriptor itself (futimens); null times are now.
    pub(crate) fn sys_utimensat(&mut self, dirfd: u64, path: u64, times: u64, flags: u64) -> Sys {
        let times = if times == 0 {
            None
        } else {
            let [a, an, m, mn] = self.read_i64s::<4>(times)?;
            let valid =
                |ns: i64| (0..1_000_000_000).contains(&ns) || ns == UTIME_NOW || ns == UTIME_OMIT;
            if !valid(an) || !valid(mn) {
                return Err(Errno::EINVAL);
            }
            Some([(a, an), (m, mn)])
        };
        self.set_times(dirfd, path, times, flags as i32)
    }

    /// utimes and futimesat (`struct timeval[2]`), utime (`struct utimbuf`): utimensat
    /// with the times converted.
    pub(crate) fn sys_utimes(&mut self, dirfd: u64, path: u64, times: u64, utimbuf: bool) -> Sys {
        let times = if times == 0 {
            None
        } else if utimbuf {
            let [a, m] = self.read_i64s::<2>(times)?;
            Some([(a, 0), (m, 0)])
        } else {
            let [a, au, m, mu] = self.read_i64s::<4>(times)?;
            if !(0..1_000_000).contains(&au) || !(0..1_000_000).contains(&mu) {
                return Err(Errno::EINVAL);
            }
            Some([(a, au * 1000), (m, mu * 1000)])
        };
        if path == 0 {
            return Err(Errno::EFAULT);
        }
        self.set_times(dirfd, path, times, 0)
    }

    fn set_times(
        &mut self,
        dirfd: u64,
        path: u64,
        times: Option<[(i64, i64); 2]>,
        flags: i32,
    ) -> Sys {
        if path == 0 {
            let fd = self.host_fd(dirfd)?.as_raw_fd();
            return host::utimensat(fd, None, times, flags).map(|()| 0);
        }
        let p = self.path(path)?;
        host::utimensat(self.dir_raw(dirfd)?, Some(&p), times, flags).map(|()| 0)
    }

    pub(crate) fn sys_truncate(&mut self, path: u64, len: u64) -> Sys {
        let p = self.path(path)?;
        host::truncate(&self.host_path(&p), len as i64).map(|()| 0)
    }

    /// copy_file_range: the offsets (guest pointers, or 0 for the files' positions) are
    /// read, used and written back advanced.
    pub(crate) fn sys_copy_file_range(&mut self, a: [u64; 6]) -> Sys {
        let mut from_off = (a[1] != 0)
            .then(|| self.mm.read_u64(a[1]))
            .transpose()?
            .map(|v| v as i64);
        let mut to_off = (a[3] != 0)
            .then(|| self.mm.read_u64(a[3]))
            .transpose()?
            .map(|v| v as i64);
        let len = (a[4] as usize).min(MAX_IO);
        let n = host::copy_file_range(
            self.host_fd(a[0])?,
            from_off.as_mut(),
            self.host_fd(a[2])?,
            to_off.as_mut(),
            len,
            a[5] as u32,
        )?;
        if let Some(o) = from_off {
            self.out(a[1], &o.to_le_bytes())?;
        }
        if let Some(o) = to_off {
            self.out(a[3], &o.to_le_bytes())?;
        }
        Ok(n as u64)
    }

    /// sendfile(out, in, offset, count), the offset handled like copy_file_range's.
    pub(crate) fn sys_sendfile(&mut self, to: u64, from: u64, off: u64, count: u64) -> Sys {
        let mut o = (off != 0)
            .then(|| self.mm.read_u64(off))
            .transpose()?
            .map(|v| v as i64);
        let n = host::sendfile(
            self.host_fd(to)?,
            self.host_fd(from)?,
            o.as_mut(),
            (count as usize).min(MAX_IO),
        )?;
        if let Some(o) = o {
            self.out(off, &o.to_le_bytes())?;
        }
        Ok(n as u64)
    }

    /// preadv/preadv2 at `off` (-1 with preadv2: the file's position, as readv).
    pub(crate) fn sys_preadv(&mut self, fd: u64, iov: u64, cnt: u64, off: i64) -> Sys {
        let v = self.iovecs(iov, cnt)?;
        let mut b = vec![0u8; iov_room(&v)];
        let f = self.host_fd(fd)?;
        let n = if off == -1 {
            host::read(f, &mut b)?
        } else if off < 0 {
            return Err(Errno::EINVAL);
        } else {
            host::pread(f, &mut b, off)?
        };
        self.scatter(&v, &b[..n])?;
        Ok(n as u64)
    }

    /// pwritev/pwritev2 at `off` (-1 with pwritev2: the file's position, as writev).
    pub(crate) fn sys_pwritev(&mut self, fd: u64, iov: u64, cnt: u64, off: i64) -> Sys {
        let b = self.gather(iov, cnt)?;
        let f = self.host_fd(fd)?;
        let n = if off == -1 {
            host::write(f, &b)?
        } else if off < 0 {
            return Err(Errno::EINVAL);
        } else {
            host::pwrite(f, &b, off)?
        };
        Ok(n as u64)
    }

    pub(crate) fn sys_inotify_init(&mut self, flags: u64) -> Sys {
        let fd = host::inotify_init(flags as i32)?;
        let cloexec = flags as i32 & libc::IN_CLOEXEC != 0;
        self.fds.insert(Fd::new(fd, cloexec))
    }

    pub(crate) fn sys_inotify_add_watch(&mut self, fd: u64, path: u64, mask: u64) -> Sys {
        let p = self.path(path)?;
        let at = self.host_path(&p);
        host::inotify_add_watch(self.host_fd(fd)?, &at, mask as u32).map(|wd| wd as u64)
    }

    pub(crate) fn sys_memfd_create(&mut self, name: u64, flags: u64) -> Sys {
        let n = self.mm.read_cstr(name, 250)?;
        let fd = host::memfd_create(&n, flags as u32)?;
        let cloexec = flags as u32 & libc::MFD_CLOEXEC != 0;
        self.fds.insert(Fd::new(fd, cloexec))
    }
}
