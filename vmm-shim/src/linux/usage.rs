//! What guest processes used of the CPU and of memory: what `getrusage`, `wait4`'s
//! rusage, `times` and the CPU clocks (`CLOCK_PROCESS_CPUTIME_ID`, the clocks of
//! `clock_getcpuclockid` and `pthread_getcpuclockid`) tell them.
//!
//! Each guest thread runs on a host thread of its own, so a thread's CPU time is its
//! host thread's: the guest code it ran (ring 3, inside `KVM_RUN`) and the shim's
//! service of its system calls. Its user and system times are the host thread's split
//! of that time. A process's time is what its live threads have used plus what its
//! ended threads used; its children's time is what the children it waited for used,
//! with what they had of their own children, as Linux accounts it. The maximum resident
//! set is the guest memory the process had backed at its peak.
//!
//! With pinned clocks (exact mode) none of this is read: the CPU clocks are the virtual
//! time and the usage is zero, the same on every run.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::linux::host;

/// What a process, a thread or a process's children used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub user: Duration,
    pub system: Duration,
    /// The largest resident set, in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
}

impl Usage {
    /// `self` and `other` together: times add up, the resident set is the larger.
    pub fn add(&mut self, other: Usage) {
        self.user += other.user;
        self.system += other.system;
        self.max_rss_kib = self.max_rss_kib.max(other.max_rss_kib);
    }

    /// Both times together (what a CPU clock reads).
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }

    /// Linux's `struct rusage` (x86-64: two `timeval`s, then fourteen longs), with
    /// the times and the resident set; the counters lbrprof does not keep are zero.
    pub fn to_rusage(&self) -> [u8; RUSAGE_SIZE] {
        let mut b = [0u8; RUSAGE_SIZE];
        let timeval = |d: Duration| {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&d.as_secs().to_le_bytes());
            t[8..].copy_from_slice(&u64::from(d.subsec_micros()).to_le_bytes());
            t
        };
        b[..16].copy_from_slice(&timeval(self.user));
        b[16..32].copy_from_slice(&timeval(self.system));
        b[32..40].copy_from_slice(&self.max_rss_kib.to_le_bytes());
        b
    }
}

/// The size of `struct rusage` on x86-64.
pub const RUSAGE_SIZE: usize = 144;

/// The CPU accounts of one process (kept in its [`crate::linux::proc::Shared`], where
/// other processes read them: a parent reaping it, `clock_getcpuclockid`).
#[derive(Debug, Default)]
pub struct Accounts {
    /// The host thread each live guest thread runs on.
    host_tids: Mutex<BTreeMap<u64, Running>>,
    /// What its ended threads used.
    ended: Mutex<Usage>,
    /// What the children it reaped used (with theirs).
    children: Mutex<Usage>,
    /// Its largest resident set so far, in KiB.
    max_rss_kib: AtomicU64,
}

impl Accounts {
    fn tids(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Running>> {
        self.host_tids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Guest thread `tid` runs on the calling host thread from now on.
    pub fn enter(&self, tid: u64) {
        let (user, system) = host::own_thread_times().unwrap_or_default();
        let running = Running {
            host_tid: host::gettid(),
            before: Usage {
                user,
                system,
                max_rss_kib: 0,
            },
        };
        self.tids().insert(tid, running);
    }

    /// Guest thread `tid` ends (on the calling host thread, or already kicked out of
    /// its own): what it used is kept with the ended threads'.
    pub fn leave(&self, tid: u64) {
        if let Some(running) = self.tids().remove(&tid) {
            let used = running.usage();
            self.ended
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(used);
        }
    }

    /// Every thread ends (the process ends or execs).
    pub fn leave_all(&self) {
        let tids: Vec<u64> = self.tids().keys().copied().collect();
        for tid in tids {
            self.leave(tid);
        }
    }

    /// The process has `bytes` of guest memory backed (kept when the largest yet).
    pub fn note_resident(&self, bytes: u64) {
        self.max_rss_kib.fetch_max(bytes / 1024, Ordering::Relaxed);
    }

    /// What the process has used: its ended threads and its live ones, and its
    /// largest resident set.
    pub fn own(&self) -> Usage {
        let mut u = *self.ended.lock().unwrap_or_else(|e| e.into_inner());
        for running in self.tids().values() {
            u.add(running.usage());
        }
        u.max_rss_kib = self.max_rss_kib.load(Ordering::Relaxed);
        u
    }

    /// What guest thread `tid` has used (the caller's own when it runs it), with the
    /// process's largest resident set, as `RUSAGE_THREAD` says.
    pub fn thread(&self, tid: u64) -> Usage {
        let mut u = self
            .tids()
            .get(&tid)
            .map_or_else(Usage::default, Running::usage);
        u.max_rss_kib = self.max_rss_kib.load(Ordering::Relaxed);
        u
    }

    /// What the process used together with its reaped children (what its parent is
    /// told when it reaps it).
    pub fn with_children(&self) -> Usage {
        let mut u = self.own();
        u.add(self.children());
        u
    }

    /// The process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`), from the thread clocks
    /// alone (a benchmark may read it in a loop).
    pub fn cpu_time(&self) -> Duration {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner()).cpu();
        ended
            + self
                .tids()
                .values()
                .map(Running::cpu_time)
                .sum::<Duration>()
    }

    /// Guest thread `tid`'s CPU time (`CLOCK_THREAD_CPUTIME_ID`); None when it is not
    /// a live thread of this process.
    pub fn thread_cpu_time(&self, tid: u64) -> Option<Duration> {
        self.tids().get(&tid).map(Running::cpu_time)
    }

    /// What the children it reaped used.
    pub fn children(&self) -> Usage {
        *self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A child was reaped, having used `used` (with its own children): it counts as
    /// this process's children's.
    pub fn add_child(&self, used: Usage) {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(used);
    }
}

/// A guest thread running on a host thread (which may have run others before).
#[derive(Clone, Copy, Debug)]
struct Running {
    /// The host thread's kernel thread id.
    host_tid: i32,
    /// What the host thread had used when the guest thread started on it.
    before: Usage,
}

impl Running {
    /// Its CPU time, from the host thread's CPU clock (zero once that has ended).
    fn cpu_time(&self) -> Duration {
        host::thread_cpu_time(self.host_tid)
            .unwrap_or_default()
            .saturating_sub(self.before.cpu())
    }

    /// What it has used: read by its own host thread from `getrusage`; by another,
    /// its CPU clock split between user and system time as the kernel's tick counts
    /// for the host thread split them.
    fn usage(&self) -> Usage {
        if self.host_tid == host::gettid()
            && let Ok((user, system)) = host::own_thread_times()
        {
            return Usage {
                user: user.saturating_sub(self.before.user),
                system: system.saturating_sub(self.before.system),
                max_rss_kib: 0,
            };
        }
        let (user_ticks, system_ticks) = host::thread_ticks(self.host_tid).unwrap_or((1, 0));
        split(self.cpu_time(), user_ticks, system_ticks)
    }
}

/// `total` split in the proportion `user : system` (all user when both are 0).
fn split(total: Duration, user: u64, system: u64) -> Usage {
    let ticks = user + system;
    let system = if ticks == 0 {
        Duration::ZERO
    } else {
        let ns = total.as_nanos() * u128::from(system) / u128::from(ticks);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    };
    Usage {
        user: total.saturating_sub(system),
        system,
        max_rss_kib: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burn `d` of the calling thread's CPU time (not wall time: the machine may be
    /// loaded).
    fn spin(d: Duration) {
        let used = || {
            let (user, system) = host::own_thread_times().unwrap();
            user + system
        };
        let start = used();
        let mut x = 0u64;
        while used() - start < d {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }

    #[test]
    fn the_rusage_layout_is_linuxs() {
        let u = Usage {
            user: Duration::new(3, 250_000_999),
            system: Duration::from_micros(7),
            max_rss_kib: 4096,
        };
        let b = u.to_rusage();
        let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(
            (word(0), word(1), word(2), word(3), word(4)),
            (3, 250_000, 0, 7, 4096)
        );
        assert!(b[40..].iter().all(|&x| x == 0));
    }

    #[test]
    fn a_split_keeps_the_total() {
        let u = split(Duration::from_millis(100), 3, 1);
        assert_eq!(
            (u.user, u.system),
            (Duration::from_millis(75), Duration::from_millis(25))
        );
        assert_eq!(
            split(Duration::from_millis(5), 0, 0).user,
            Duration::from_millis(5)
        );
    }

    #[test]
    fn threads_count_while_they_run_and_after_they_end() {
        let a = std::sync::Arc::new(Accounts::default());
        a.enter(1);
        spin(Duration::from_millis(30));
        let other = {
            let a = a.clone();
            std::thread::spawn(move || {
                a.enter(2);
                spin(Duration::from_millis(30));
                let t = a.thread_cpu_time(2).unwrap();
                a.leave(2);
                t
            })
            .join()
            .unwrap()
        };
        assert!(other >= Duration::from_millis(25), "{other:?}");
        assert!(a.thread_cpu_time(1).unwrap() >= Duration::from_millis(25));
        assert_eq!(a.thread_cpu_time(2), None, "ended");
        // Both threads' time: the live one's and the ended one's.
        a.note_resident(200 << 10);
        a.note_resident(100 << 10);
        let own = a.own();
        assert!(own.cpu() >= Duration::from_millis(50), "{own:?}");
        assert_eq!(own.max_rss_kib, 200, "the largest");
        assert!(a.thread(1).cpu() >= Duration::from_millis(25));
        a.leave_all();
        assert_eq!(a.thread_cpu_time(1), None);
        let after = a.own();
        assert!(after.cpu() >= own.cpu(), "{after:?}");
        assert_eq!(a.cpu_time(), after.cpu(), "no thread runs any more");
        let parent = Accounts::default();
        parent.add_child(a.with_children());
        assert_eq!(parent.children().cpu(), after.cpu());
        assert_eq!(parent.children().max_rss_kib, 200);
        assert_eq!(parent.own().cpu(), Duration::ZERO);
    }
}
