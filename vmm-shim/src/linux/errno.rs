//! The error value of a system call the shim services ([`Errno`]).

/// A Linux errno value (positive), returned to the program as `-errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
}

impl Errno {
    /// The RAX value of a failed call (`-errno`).
    pub fn ret(self) -> u64 {
        (-i64::from(self.0)) as u64
    }
}
