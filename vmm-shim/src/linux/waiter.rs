//! A thread's parking place ([`Waiter`]): where a blocked thread waits to be woken
//! (a futex wake, a signal) while it keeps an eye on the VM's stop flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A thread's parking place (a futex wait or a sleep).
#[derive(Debug, Default)]
pub struct Waiter {
    woken: Mutex<bool>,
    cv: Condvar,
}

/// How often a blocked thread looks at the VM's stop flag.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(20);

impl Waiter {
    pub fn wake(&self) {
        let mut w = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        *w = true;
        self.cv.notify_one();
    }

    /// Forget an earlier wake (before queueing again).
    pub fn reset(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// Whether it was woken since the last [`Self::reset`] (a signal came, for the
    /// waits that poll host descriptors).
    pub fn is_woken(&self) -> bool {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Block until woken (true), `deadline` passes or `stop` is set (false).
    pub fn wait(&self, deadline: Option<Instant>, stop: &AtomicBool) -> bool {
        let mut w = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *w {
                return true;
            }
            if stop.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            let slice = match deadline {
                Some(d) if d <= now => return false,
                Some(d) => (d - now).min(STOP_POLL),
                None => STOP_POLL,
            };
            w = self
                .cv
                .wait_timeout(w, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_vm_ends_every_wait() {
        let w = Waiter::default();
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(!w.wait(None, &stop));
        assert!(t.elapsed() < Duration::from_secs(1));
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        assert!(!w.wait(Some(t + Duration::from_millis(30)), &stop));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
