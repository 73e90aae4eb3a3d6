//! Resource limits (getrlimit, setrlimit, prlimit64) as the program sees them.
//!
//! Every guest process lives in lbrprof's host process, so the program must not change
//! the host's limits (a lowered RLIMIT_NOFILE or RLIMIT_AS would break lbrprof itself).
//! A limit the program sets is kept here, per process, inherited by fork and kept across
//! execve as on Linux; a limit it never set reads as the host's. RLIMIT_NOFILE is the
//! descriptor table's own ([`crate::linux::fd::FdTable::limit`]) and is enforced; the
//! others are remembered and reported but not enforced (a program lowering RLIMIT_CORE
//! to 0, as gpg and ssh-agent do, dumps no core under lbrprof anyway).

use std::collections::BTreeMap;

use crate::linux::errno::Errno;
use crate::linux::fd::{FdTable, MAX_FDS};
use crate::linux::host;

/// Linux's number of resources (RLIM_NLIMITS).
const RESOURCES: u32 = 16;

/// A limit: soft (current) and hard (maximum), as in `struct rlimit64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

impl Limit {
    pub fn from_bytes(b: &[u8; 16]) -> Limit {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        Limit {
            soft: w(0),
            hard: w(8),
        }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.soft.to_le_bytes());
        b[8..].copy_from_slice(&self.hard.to_le_bytes());
        b
    }
}

/// The limits a process set (resource number → limit).
#[derive(Clone, Debug, Default)]
pub struct Limits {
    set: BTreeMap<u32, Limit>,
}

impl Limits {
    /// The limit of `resource`: what the process set, else the host's; RLIMIT_NOFILE
    /// from the descriptor table (hard limit [`MAX_FDS`]).
    pub fn get(&self, resource: u32, fds: &FdTable) -> Result<Limit, Errno> {
        if resource >= RESOURCES {
            return Err(Errno::EINVAL);
        }
        if resource == libc::RLIMIT_NOFILE {
            return Ok(Limit {
                soft: fds.limit() as u64,
                hard: MAX_FDS as u64,
            });
        }
        if let Some(l) = self.set.get(&resource) {
            return Ok(*l);
        }
        let b = host::getrlimit(resource)?;
        Ok(Limit::from_bytes(&b.try_into().map_err(|_| Errno::EINVAL)?))
    }

    /// Set `resource` to `new`, by Linux's rules: the soft limit at most the hard one
    /// (EINVAL); raising the hard limit takes a privileged user (EPERM otherwise), and
    /// RLIMIT_NOFILE's cannot pass [`MAX_FDS`] (EPERM, as past Linux's `nr_open`).
    pub fn set(
        &mut self,
        resource: u32,
        new: Limit,
        fds: &mut FdTable,
        privileged: bool,
    ) -> Result<(), Errno> {
        let old = self.get(resource, fds)?;
        if new.soft > new.hard {
            return Err(Errno::EINVAL);
        }
        if resource == libc::RLIMIT_NOFILE {
            if new.hard > MAX_FDS as u64 {
                return Err(Errno(libc::EPERM));
            }
            fds.set_limit(usize::try_from(new.soft).unwrap_or(usize::MAX));
            // The hard limit stays MAX_FDS: lowering it is not remembered (a later raise
            // of the soft limit back up to MAX_FDS succeeds where Linux would refuse).
            return Ok(());
        }
        if new.hard > old.hard && !privileged {
            return Err(Errno(libc::EPERM));
        }
        self.set.insert(resource, new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: u64 = u64::MAX;

    #[test]
    fn a_set_limit_reads_back_and_the_host_is_untouched() {
        let mut l = Limits::default();
        let mut fds = FdTable::default();
        let host_core = l.get(libc::RLIMIT_CORE, &fds).unwrap();
        let zero = Limit { soft: 0, hard: 0 };
        l.set(libc::RLIMIT_CORE, zero, &mut fds, false).unwrap();
        assert_eq!(l.get(libc::RLIMIT_CORE, &fds).unwrap(), zero);
        let b = host::getrlimit(libc::RLIMIT_CORE).unwrap();
        assert_eq!(Limit::from_bytes(&b.try_into().unwrap()), host_core);
        // A clone (fork) keeps it.
        assert_eq!(l.clone().get(libc::RLIMIT_CORE, &fds).unwrap(), zero);
    }

    #[test]
    fn linux_rules_for_soft_hard_and_privilege() {
        let mut l = Limits::default();
        let mut fds = FdTable::default();
        let r = libc::RLIMIT_STACK;
        let bad = Limit { soft: 2, hard: 1 };
        assert_eq!(l.set(r, bad, &mut fds, true), Err(Errno::EINVAL));
        l.set(
            r,
            Limit {
                soft: 1 << 20,
                hard: 1 << 21,
            },
            &mut fds,
            false,
        )
        .unwrap();
        let up = Limit {
            soft: 1 << 20,
            hard: INF,
        };
        assert_eq!(l.set(r, up, &mut fds, false), Err(Errno(libc::EPERM)));
        l.set(r, up, &mut fds, true).unwrap();
        assert_eq!(l.get(r, &fds).unwrap(), up);
        assert_eq!(l.get(RESOURCES, &fds), Err(Errno::EINVAL));
        assert_eq!(l.set(RESOURCES, up, &mut fds, true), Err(Errno::EINVAL));
    }

    #[test]
    fn the_descriptor_limit_is_the_tables() {
        let mut l = Limits::default();
        let mut fds = FdTable::default();
        let r = libc::RLIMIT_NOFILE;
        let max = MAX_FDS as u64;
        assert_eq!(
            l.get(r, &fds).unwrap(),
            Limit {
                soft: max,
                hard: max
            }
        );
        l.set(
            r,
            Limit {
                soft: 64,
                hard: max,
            },
            &mut fds,
            false,
        )
        .unwrap();
        assert_eq!(fds.limit(), 64);
        assert_eq!(l.get(r, &fds).unwrap().soft, 64);
        let over = Limit {
            soft: 64,
            hard: max + 1,
        };
        assert_eq!(l.set(r, over, &mut fds, true), Err(Errno(libc::EPERM)));
    }
}
