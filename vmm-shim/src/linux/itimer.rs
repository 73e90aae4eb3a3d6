//! The real-time interval timers of a process (`alarm`, `setitimer(ITIMER_REAL)`,
//! `getitimer`, and POSIX timers with `SIGEV_SIGNAL`/`SIGEV_NONE` notification:
//! `timer_create` …): a signal (SIGALRM for the first) posted to the process when one
//! expires, as any signal from outside (its vCPUs are kicked, a blocked call is
//! interrupted).
//!
//! The handler is told what Linux tells it: `si_code` SI_KERNEL for SIGALRM from
//! `alarm`/`setitimer`, SI_TIMER with the timer's id, overrun count and `sigev_value` for
//! a POSIX timer. As Linux's per-timer `sigqueue`, a POSIX timer has at most one
//! instance of its signal queued, wherever it waits (the process's queue or a
//! thread's); an expiry while it is queued counts as an overrun, which the instance
//! carries when it is delivered ([`RealTimer::delivered`]) and `timer_getoverrun` then
//! reports.
//!
//! One host thread per process that ever armed the timer sleeps until the deadline
//! (re-armed on each change through a condition variable) and ends with the process or
//! the VM. Timers are not inherited by a fork child and survive an execve, as on Linux.
//! Their expiry is real time: in exact mode they are not pinned like the clock.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::linux::proc::Shared;
use crate::linux::signal::{SI_KERNEL, SI_TIMER, SigInfo};
use crate::linux::waiter::STOP_POLL;

/// A process's ITIMER_REAL, or one of its POSIX timers.
#[derive(Debug, Default)]
pub struct RealTimer {
    state: Mutex<State>,
    cv: Condvar,
    /// The signal it sends (0: none, SIGEV_NONE).
    signal: u64,
    /// What the handler is told.
    info: SigInfo,
    /// The overrun count of its last delivered signal (`timer_getoverrun`).
    overrun: AtomicU32,
}

/// A POSIX timer's signal instance: whether it is queued, and the expiries since.
#[derive(Debug, Default)]
struct Queued {
    queued: bool,
    overrun: u32,
}

#[derive(Debug, Default)]
struct State {
    /// When it fires next (None: disarmed).
    deadline: Option<Instant>,
    /// Re-armed with this after each expiry (zero: one shot).
    interval: Duration,
    /// Its host thread was started.
    running: bool,
    /// Its signal instance (POSIX timers).
    sig: Queued,
}

impl RealTimer {
    /// The process's ITIMER_REAL (`alarm`, `setitimer`): disarmed, sends SIGALRM from
    /// the kernel (SI_KERNEL).
    pub fn interval_timer() -> RealTimer {
        let signal = libc::SIGALRM as u64;
        RealTimer {
            signal,
            info: SigInfo {
                signo: signal as i32,
                code: SI_KERNEL,
                ..SigInfo::default()
            },
            ..RealTimer::default()
        }
    }

    /// POSIX timer `id`: disarmed, sends `signal` (0: none) with SI_TIMER and `value`
    /// (its `sigev_value`).
    pub fn posix(id: u64, signal: u64, value: u64) -> RealTimer {
        RealTimer {
            signal,
            info: SigInfo {
                signo: signal as i32,
                code: SI_TIMER,
                word: u64::from(id as u32),
                value,
                ..SigInfo::default()
            },
            ..RealTimer::default()
        }
    }

    /// Its signal instance `info` is being delivered: it carries the expiries counted
    /// while it was queued (`si_overrun`, also what `timer_getoverrun` reports from now
    /// on), and the next expiry queues a new one.
    pub fn delivered(&self, info: &mut SigInfo) {
        let overrun = {
            let mut s = self.state();
            s.sig.queued = false;
            std::mem::take(&mut s.sig.overrun)
        };
        info.word = (info.word & 0xffff_ffff) | (u64::from(overrun) << 32);
        self.overrun.store(overrun, Ordering::Relaxed);
    }

    /// Its signal instance was discarded undelivered (the signal is ignored).
    pub fn discarded(&self) {
        let mut s = self.state();
        s.sig = Queued::default();
    }

    /// Send its signal to the process of `shared` (at an expiry, `s` its state): a
    /// POSIX timer whose instance is still queued counts an overrun instead.
    fn fire(&self, s: &mut State, shared: &Shared) {
        if self.signal == 0 {
            return;
        }
        if self.info.code != SI_TIMER {
            shared.post_info(self.info);
        } else if s.sig.queued {
            s.sig.overrun = s.sig.overrun.saturating_add(1).min(i32::MAX as u32);
        } else {
            s.sig.queued = shared.post_info(self.info);
        }
    }

    /// The overrun count of the last signal delivered (`timer_getoverrun`).
    pub fn overrun(&self) -> u64 {
        u64::from(self.overrun.load(Ordering::Relaxed))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time left until it fires (zero: disarmed) and its interval.
    pub fn get(&self) -> (Duration, Duration) {
        let s = self.state();
        // Past its deadline but not fired yet (its thread is about to): 1 ns left, as
        // Linux answers for an expired timer whose signal is not sent yet (0 would
        // tell the program its signal is pending when it is not).
        let left = s.deadline.map_or(Duration::ZERO, |d| {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() && self.signal != 0 {
                Duration::from_nanos(1)
            } else {
                left
            }
        });
        (left, s.interval)
    }

    /// Arm it to fire in `value` and then every `interval` (a zero `value` disarms
    /// it); SIGALRM goes to the process of `shared`. The previous setting, as
    /// [`Self::get`] gives it.
    pub fn set(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        stop: Option<Arc<AtomicBool>>,
        value: Duration,
        interval: Duration,
    ) -> (Duration, Duration) {
        let old = self.get();
        let mut s = self.state();
        s.deadline = (!value.is_zero()).then(|| {
            Instant::now()
                .checked_add(value.min(Duration::from_secs(1 << 32)))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 32))
        });
        s.interval = interval;
        // Armed anew (or disarmed): the queued instance of its signal is dropped, as
        // Linux does since 6.13 (the caller drops one a thread already took).
        if self.info.code == SI_TIMER && std::mem::take(&mut s.sig).queued {
            shared.drop_timer(self.info.word as u32);
        }
        if s.deadline.is_some() && !s.running {
            s.running = true;
            let (timer, shared) = (self.clone(), shared.clone());
            let spawned = std::thread::Builder::new()
                .name("lbrprof-itimer".into())
                .spawn(move || timer.run(&shared, stop.as_deref()));
            if spawned.is_err() {
                s.running = false;
            }
        }
        self.cv.notify_one();
        old
    }

    /// The timer's thread: post its signal at each deadline until the process or the VM
    /// ends.
    fn run(&self, shared: &Shared, stop: Option<&AtomicBool>) {
        let mut s = self.state();
        loop {
            let over = shared.dead.load(Ordering::Acquire)
                || stop.is_some_and(|f| f.load(Ordering::Acquire));
            if over {
                s.running = false;
                return;
            }
            let now = Instant::now();
            let slice = match s.deadline {
                Some(d) if d <= now => {
                    self.fire(&mut s, shared);
                    s.deadline = (!s.interval.is_zero()).then(|| d + s.interval);
                    continue;
                }
                Some(d) => (d - now).min(STOP_POLL),
                None => STOP_POLL,
            };
            s = self
                .cv
                .wait_timeout(s, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Seconds for `alarm` from the time left (rounded up as Linux does, at least 1 when
/// armed).
pub fn alarm_seconds(left: Duration) -> u64 {
    let (s, us) = (left.as_secs(), left.subsec_micros());
    if (s == 0 && us != 0) || us >= 500_000 {
        s + 1
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_fires_sigalrm_once_and_reports_what_is_left() {
        let shared: Arc<Shared> = Arc::default();
        let t = Arc::new(RealTimer::interval_timer());
        assert_eq!(t.get(), (Duration::ZERO, Duration::ZERO));
        let old = t.set(&shared, None, Duration::from_secs(100), Duration::ZERO);
        assert_eq!(old, (Duration::ZERO, Duration::ZERO));
        let (left, _) = t.get();
        assert!(left > Duration::from_secs(99) && left <= Duration::from_secs(100));
        let old = t.set(&shared, None, Duration::from_millis(10), Duration::ZERO);
        assert!(old.0 > Duration::from_secs(99));
        let bit = 1 << (libc::SIGALRM - 1);
        let start = Instant::now();
        while shared.signals.load(Ordering::Acquire) & bit == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "SIGALRM never came"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(t.get().0, Duration::ZERO);
        shared.dead.store(true, Ordering::Release);
    }

    #[test]
    fn alarm_rounds_like_linux() {
        assert_eq!(alarm_seconds(Duration::ZERO), 0);
        assert_eq!(alarm_seconds(Duration::from_millis(1)), 1);
        assert_eq!(alarm_seconds(Duration::from_millis(1400)), 1);
        assert_eq!(alarm_seconds(Duration::from_millis(1600)), 2);
    }
}
