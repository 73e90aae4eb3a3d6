//! The program's clocks: the host's, or a virtual clock so that runs repeat exactly.
//!
//! Exact mode promises the same counts on every run, but programs read the time and
//! branch on it: a timing loop runs until a deadline, a logger formats the date, Python
//! hashes and prints `time.time()`. With [`Clock::pinned`] every clock the personality
//! serves reads one virtual time that depends only on what the program did, never on
//! the host's time:
//!
//! * The virtual time `t` starts at 0 when the run starts and is shared by every thread
//!   and process of the run (so it is monotonic across them).
//! * Each read of a clock (`clock_gettime` of any clock id, `gettimeofday`, `time`,
//!   `times`) first advances `t` by [`TICK`] (1 µs), so two reads never see the same
//!   value and a loop that waits for the time to pass ends.
//! * A sleep (`nanosleep`, `clock_nanosleep`) returns at once and advances `t` by the
//!   time asked for (to the deadline, for an absolute one); a timed wait (futex, poll,
//!   select, epoll) that times out advances `t` by its timeout.
//! * `CLOCK_MONOTONIC`, `CLOCK_MONOTONIC_RAW`, `CLOCK_BOOTTIME` (and `_COARSE`, `_ALARM`)
//!   read [`BOOT`] + `t`; `CLOCK_REALTIME` (and `_COARSE`, `_ALARM`) reads [`EPOCH`] + `t`,
//!   so realtime and monotonic advance together; `CLOCK_TAI` is realtime + 37 s; the CPU
//!   clocks (`CLOCK_PROCESS_CPUTIME_ID`, `CLOCK_THREAD_CPUTIME_ID`, the clocks of
//!   `clock_getcpuclockid`) read `t` itself.
//!
//! A single-threaded program (or processes that run one at a time: fork and wait) reads
//! the same times on every run. Threads or processes that read clocks concurrently take
//! their ticks in the order the host ran them, so their values may differ from run to run
//! (the sum of all ticks does not). The real-time timers (`alarm`, `setitimer`,
//! `timer_create`, `timerfd`) and the times in `stat` results stay the host's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::linux::errno::Errno;
use crate::linux::host;

/// What one read of a pinned clock advances it by.
pub const TICK: Duration = Duration::from_micros(1);

/// `CLOCK_REALTIME` when a pinned run starts: 2025-01-01T00:00:00Z.
pub const EPOCH: Duration = Duration::from_secs(1_735_689_600);

/// `CLOCK_MONOTONIC` when a pinned run starts (a machine up for 1000 s).
pub const BOOT: Duration = Duration::from_secs(1000);

/// TAI is ahead of UTC by the 37 leap seconds since 1972 (since 2017).
const TAI_OFFSET: Duration = Duration::from_secs(37);

/// The clock ids of `<linux/time.h>`.
mod id {
    pub const REALTIME: i32 = 0;
    pub const MONOTONIC: i32 = 1;
    pub const PROCESS_CPUTIME: i32 = 2;
    pub const THREAD_CPUTIME: i32 = 3;
    pub const MONOTONIC_RAW: i32 = 4;
    pub const REALTIME_COARSE: i32 = 5;
    pub const MONOTONIC_COARSE: i32 = 6;
    pub const BOOTTIME: i32 = 7;
    pub const REALTIME_ALARM: i32 = 8;
    pub const BOOTTIME_ALARM: i32 = 9;
    pub const TAI: i32 = 11;
    /// A negative id is a CPU clock of a process or thread (`clock_getcpuclockid`)
    /// unless its low three bits are CLOCKFD (a dynamic clock on a descriptor).
    pub const CLOCKFD: i32 = 3;
}

/// What a pinned clock id reads, relative to the virtual time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Realtime,
    Monotonic,
    Tai,
    Cpu,
}

/// The kind of clock `clock_id` is, or EINVAL as Linux answers an unknown id.
fn kind(clock_id: i32) -> Result<Kind, Errno> {
    Ok(match clock_id {
        id::REALTIME | id::REALTIME_COARSE | id::REALTIME_ALARM => Kind::Realtime,
        id::MONOTONIC
        | id::MONOTONIC_RAW
        | id::MONOTONIC_COARSE
        | id::BOOTTIME
        | id::BOOTTIME_ALARM => Kind::Monotonic,
        id::TAI => Kind::Tai,
        id::PROCESS_CPUTIME | id::THREAD_CPUTIME => Kind::Cpu,
        n if n < 0 && n & 7 != id::CLOCKFD => Kind::Cpu,
        _ => return Err(Errno::EINVAL),
    })
}

/// The clocks of the processes of one run.
#[derive(Debug, Default)]
pub struct Clock {
    /// None: the host's clocks. Some: the virtual time, in nanoseconds since the start.
    virtual_ns: Option<AtomicU64>,
}

impl Clock {
    /// The host's clocks.
    pub fn host() -> Clock {
        Clock { virtual_ns: None }
    }

    /// A virtual clock at time 0.
    pub fn pinned() -> Clock {
        Clock {
            virtual_ns: Some(AtomicU64::new(0)),
        }
    }

    /// Whether the clocks are virtual.
    pub fn is_pinned(&self) -> bool {
        self.virtual_ns.is_some()
    }

    /// The virtual time after one more tick (a read of a clock).
    fn tick(v: &AtomicU64) -> Duration {
        let tick = TICK.as_nanos() as u64;
        Duration::from_nanos(v.fetch_add(tick, Ordering::SeqCst).saturating_add(tick))
    }

    /// `clock_gettime(clock_id)` as (seconds, nanoseconds).
    pub fn now(&self, clock_id: i32) -> Result<(i64, i64), Errno> {
        let Some(v) = &self.virtual_ns else {
            return host::clock_gettime(clock_id);
        };
        let kind = kind(clock_id)?;
        Ok(split(on(kind, Self::tick(v))))
    }

    /// `clock_getres(clock_id)`: 1 ns for every valid id of a virtual clock (it is
    /// counted in nanoseconds), the host's otherwise.
    pub fn resolution(&self, clock_id: i32) -> Result<(i64, i64), Errno> {
        if self.is_pinned() {
            kind(clock_id).map(|_| (0, 1))
        } else {
            host::clock_getres(clock_id)
        }
    }

    /// Let `d` of virtual time pass (a sleep, a timed-out wait); nothing for the host's.
    pub fn advance(&self, d: Duration) {
        if let Some(v) = &self.virtual_ns {
            let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let _ = v.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(ns))
            });
        }
    }

    /// How long from now until `clock_id` reads `at` (an absolute timeout); None when it
    /// is already past.
    pub fn until(&self, clock_id: i32, at: Duration) -> Result<Option<Duration>, Errno> {
        let now = match &self.virtual_ns {
            Some(v) => on(
                kind(clock_id)?,
                Duration::from_nanos(v.load(Ordering::SeqCst)),
            ),
            None => {
                let (s, ns) = host::clock_gettime(clock_id)?;
                Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
            }
        };
        Ok(at.checked_sub(now).filter(|d| !d.is_zero()))
    }

    /// The monotonic time in whole seconds (sysinfo's uptime) when virtual.
    pub fn uptime(&self) -> Option<i64> {
        let v = self.virtual_ns.as_ref()?;
        Some(on(Kind::Monotonic, Self::tick(v)).as_secs() as i64)
    }

    /// The return value of `times(2)`: clock ticks (100 per second) since an arbitrary
    /// point, here the boot of the virtual machine the virtual clock describes.
    pub fn ticks(&self) -> Result<u64, Errno> {
        let (s, ns) = self.now(id::MONOTONIC)?;
        Ok((s as u64)
            .wrapping_mul(100)
            .wrapping_add(ns as u64 / 10_000_000))
    }
}

/// What a clock of `kind` reads at virtual time `t`.
fn on(kind: Kind, t: Duration) -> Duration {
    match kind {
        Kind::Realtime => EPOCH + t,
        Kind::Monotonic => BOOT + t,
        Kind::Tai => EPOCH + TAI_OFFSET + t,
        Kind::Cpu => t,
    }
}

fn split(d: Duration) -> (i64, i64) {
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns((s, ns): (i64, i64)) -> i64 {
        s * 1_000_000_000 + ns
    }

    #[test]
    fn pinned_clocks_start_fixed_tick_per_read_and_agree() {
        let c = Clock::pinned();
        assert_eq!(c.now(id::REALTIME), Ok((1_735_689_600, 1_000)));
        assert_eq!(c.now(id::MONOTONIC), Ok((1000, 2_000)));
        assert_eq!(c.now(id::PROCESS_CPUTIME), Ok((0, 3_000)));
        assert_eq!(c.now(id::TAI), Ok((1_735_689_637, 4_000)));
        // Realtime minus monotonic stays the same: they advance together.
        let (r, m) = (c.now(id::REALTIME_COARSE), c.now(id::BOOTTIME));
        assert_eq!(
            ns(r.unwrap()) - ns(m.unwrap()),
            1_735_688_600_000_000_000 - 1_000
        );
        // A second run reads the same times.
        let d = Clock::pinned();
        assert_eq!(d.now(id::REALTIME), Ok((1_735_689_600, 1_000)));
    }

    #[test]
    fn sleeps_advance_the_virtual_time_and_deadlines_follow_it() {
        let c = Clock::pinned();
        c.advance(Duration::from_millis(200));
        assert_eq!(c.now(id::MONOTONIC), Ok((1000, 200_001_000)));
        let left = c
            .until(id::MONOTONIC, BOOT + Duration::from_secs(1))
            .unwrap();
        assert_eq!(left, Some(Duration::from_nanos(799_999_000)));
        assert_eq!(c.until(id::REALTIME, EPOCH).unwrap(), None);
        c.advance(Duration::MAX);
        assert!(c.now(id::MONOTONIC).is_ok(), "saturates, never wraps");
    }

    #[test]
    fn unknown_clock_ids_are_einval_and_cpu_clock_ids_are_cpu_time() {
        let c = Clock::pinned();
        assert_eq!(c.now(10), Err(Errno::EINVAL));
        assert_eq!(c.now(12), Err(Errno::EINVAL));
        assert_eq!(c.resolution(99), Err(Errno::EINVAL));
        assert_eq!(c.resolution(id::MONOTONIC), Ok((0, 1)));
        // clock_getcpuclockid(pid 5): ~5 << 3 | CPUCLOCK_SCHED (2).
        assert_eq!(c.now((!5 << 3) | 2), Ok((0, 1_000)));
        // A dynamic clock on descriptor 4: ~4 << 3 | CLOCKFD.
        assert_eq!(c.now((!4 << 3) | 3), Err(Errno::EINVAL));
    }

    #[test]
    fn host_clocks_are_the_hosts() {
        let c = Clock::host();
        assert!(!c.is_pinned());
        let (s, _) = c.now(id::REALTIME).unwrap();
        let (hs, _) = host::clock_gettime(id::REALTIME).unwrap();
        assert!((hs - s).abs() <= 1, "{s} vs the host's {hs}");
        assert_eq!(c.uptime(), None);
        c.advance(Duration::from_secs(100));
        let (s2, _) = c.now(id::REALTIME).unwrap();
        assert!(s2 - s < 50, "the host's time does not jump with advance");
        assert_eq!(c.now(10), host::clock_gettime(10));
    }
}
