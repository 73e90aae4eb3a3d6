//! The program's file descriptors: a virtual table from guest fd numbers to host open
//! files. The program reaches only what is in the table: its standard streams (copies of
//! lbrprof's 0/1/2) and what it opened itself, never lbrprof's own descriptors (the
//! recording, KVM, perf events).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::linux::errno::Errno;
use crate::linux::procfs::Listing;

/// The most descriptors a program may have: RLIMIT_NOFILE's hard limit as the program
/// sees it (its soft limit starts there and may be lowered, and raised back).
pub const MAX_FDS: usize = 1024;

/// One guest descriptor: a shared host open file and the descriptor's own flag.
#[derive(Clone, Debug)]
pub struct Fd {
    pub file: Arc<OwnedFd>,
    pub cloexec: bool,
    /// `/dev/random` or `/dev/urandom` opened while the process's randomness is a fixed
    /// stream ([`crate::linux::entropy`]): reads draw from that stream, not the host file.
    pub seeded_random: bool,
    /// A signalfd's signals (bit `n - 1` for signal `n`): reads take them from the
    /// process's pending signals; the host file is an eventfd that is readable while
    /// some may be pending ([`crate::linux::signalfd`]).
    pub signal_mask: Option<u64>,
    /// A listing of the program's `/proc/self/fd` (or `fdinfo`) directory: what
    /// `getdents64` reads from it ([`crate::linux::procfs`]); the host file is an empty
    /// directory.
    pub listing: Option<Arc<Listing>>,
}

impl Fd {
    pub fn new(file: OwnedFd, cloexec: bool) -> Fd {
        Fd {
            file: Arc::new(file),
            cloexec,
            seeded_random: false,
            signal_mask: None,
            listing: None,
        }
    }

    pub fn host(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The table (index = guest fd). A clone is a forked child's table: the same open
/// files (a host file is closed when no process holds it any more).
#[derive(Clone, Debug)]
pub struct FdTable {
    slots: Vec<Option<Fd>>,
    /// RLIMIT_NOFILE's soft limit: new descriptors are numbered below it.
    limit: usize,
}

impl Default for FdTable {
    fn default() -> FdTable {
        FdTable {
            slots: Vec::new(),
            limit: MAX_FDS,
        }
    }
}

impl FdTable {
    /// A table whose 0, 1 and 2 are copies of the given host descriptors (missing ones
    /// stay closed, as they would be natively).
    pub fn with_stdio(stdio: [Option<OwnedFd>; 3]) -> FdTable {
        FdTable {
            slots: stdio
                .into_iter()
                .map(|f| f.map(|f| Fd::new(f, false)))
                .collect(),
            limit: MAX_FDS,
        }
    }

    /// RLIMIT_NOFILE's soft limit (one past the highest descriptor number allowed).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Set RLIMIT_NOFILE's soft limit (at most [`MAX_FDS`]); descriptors already open
    /// above it stay open, as on Linux.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_FDS);
    }

    pub fn get(&self, fd: u64) -> Result<&Fd, Errno> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get(i))
            .and_then(Option::as_ref)
            .ok_or(Errno::EBADF)
    }

    pub fn get_mut(&mut self, fd: u64) -> Result<&mut Fd, Errno> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::as_mut)
            .ok_or(Errno::EBADF)
    }

    /// Put `f` in the lowest free slot at or above `min`.
    pub fn insert_from(&mut self, min: usize, f: Fd) -> Result<u64, Errno> {
        let free = (min..self.limit).find(|&i| self.slots.get(i).is_none_or(Option::is_none));
        let i = free.ok_or(Errno(libc::EMFILE))?;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(f);
        Ok(i as u64)
    }

    pub fn insert(&mut self, f: Fd) -> Result<u64, Errno> {
        self.insert_from(0, f)
    }

    /// Put `f` at exactly `fd`, closing what was there (EBADF at or above the limit).
    pub fn insert_at(&mut self, fd: u64, f: Fd) -> Result<(), Errno> {
        let i = usize::try_from(fd)
            .ok()
            .filter(|&i| i < self.limit)
            .ok_or(Errno::EBADF)?;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(f);
        Ok(())
    }

    /// The open descriptors.
    /// The numbers of the open descriptors, in order.
    pub fn open(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_some())
            .map(|(i, _)| i as u64)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Fd> {
        self.slots.iter_mut().flatten()
    }

    /// Close every close-on-exec descriptor (execve).
    pub fn close_on_exec(&mut self) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|f| f.cloexec) {
                *slot = None;
            }
        }
    }

    /// Close the open descriptors from `first` to `last` (both included), or only mark
    /// them close-on-exec.
    pub fn close_range(&mut self, first: u64, last: u64, cloexec: bool) {
        let end = usize::try_from(last.saturating_add(1)).unwrap_or(usize::MAX);
        let start = usize::try_from(first).unwrap_or(usize::MAX);
        for slot in self.slots.iter_mut().take(end).skip(start) {
            match slot {
                Some(f) if cloexec => f.cloexec = true,
                _ => *slot = None,
            }
        }
    }

    pub fn close(&mut self, fd: u64) -> Result<(), Errno> {
        let slot = usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(Errno::EBADF)?;
        slot.take().map(|_| ()).ok_or(Errno::EBADF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn lowest_free_descriptor_is_used_and_bad_ones_are_ebadf() {
        let mut t = FdTable::with_stdio([Some(devnull()), None, Some(devnull())]);
        assert_eq!(t.insert(Fd::new(devnull(), false)).unwrap(), 1);
        assert_eq!(t.insert(Fd::new(devnull(), false)).unwrap(), 3);
        t.close(1).unwrap();
        assert_eq!(t.close(1), Err(Errno::EBADF));
        assert!(t.get(1).is_err());
        assert!(t.get(u64::MAX).is_err());
        assert_eq!(t.insert_from(10, Fd::new(devnull(), false)).unwrap(), 10);
        assert!(
            t.insert_at(MAX_FDS as u64, Fd::new(devnull(), false))
                .is_err()
        );
        t.insert_at(7, Fd::new(devnull(), true)).unwrap();
        assert!(t.get(7).unwrap().cloexec);
    }

    #[test]
    fn the_soft_limit_bounds_new_descriptors_but_keeps_open_ones() {
        let mut t = FdTable::with_stdio([Some(devnull()), Some(devnull()), Some(devnull())]);
        t.insert_at(9, Fd::new(devnull(), false)).unwrap();
        t.set_limit(4);
        assert_eq!(t.insert(Fd::new(devnull(), false)).unwrap(), 3);
        assert_eq!(
            t.insert(Fd::new(devnull(), false)),
            Err(Errno(libc::EMFILE))
        );
        assert_eq!(t.insert_at(4, Fd::new(devnull(), false)), Err(Errno::EBADF));
        assert!(
            t.get(9).is_ok(),
            "a descriptor above the new limit stays open"
        );
        t.set_limit(usize::MAX);
        assert_eq!(t.limit(), MAX_FDS);
        assert_eq!(t.insert(Fd::new(devnull(), false)).unwrap(), 4);
    }

    #[test]
    fn close_range_closes_or_marks_only_the_range() {
        let mut t = FdTable::with_stdio([Some(devnull()), Some(devnull()), Some(devnull())]);
        for fd in 3..8 {
            t.insert_at(fd, Fd::new(devnull(), false)).unwrap();
        }
        t.close_range(5, 6, true);
        let marked: Vec<bool> = (0..8).map(|fd| t.get(fd).unwrap().cloexec).collect();
        assert_eq!(
            marked,
            [false, false, false, false, false, true, true, false]
        );
        t.close_range(4, u64::MAX, false);
        assert!((0..4).all(|fd| t.get(fd).is_ok()));
        assert!((4..8).all(|fd| t.get(fd).is_err()));
        // A range past the table is nothing to do.
        t.close_range(u64::MAX, u64::MAX, false);
        assert!(t.get(3).is_ok());
    }
}
