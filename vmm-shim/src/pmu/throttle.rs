//! The overhead budget of shim-driven sampling: how long the guest must run free after a
//! snapshot so that the wall time spent tracing and snapshotting stays within a share of
//! the elapsed time, the way perf throttles its sampling (`perf_cpu_time_max_percent`).
//!
//! Pure policy, no clock: the caller measures each sampling episode (from the moment the
//! tracer starts its window to the snapshot) and asks for the next free-running interval.
//! With an episode cost `c` and a budget share `b`, the share `c / (c + free)` stays within
//! `b` when `free >= c * (1 - b) / b`. The cost is smoothed (an exponentially weighted mean)
//! so one preempted episode does not stall sampling, and a requested interval longer than
//! that is kept as it is: the budget only ever lowers the snapshot rate.

/// Weight of the newest episode in the smoothed cost, as `1 / COST_SMOOTHING`.
const COST_SMOOTHING: u64 = 4;

/// The overhead budget and what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttle {
    /// Percent of wall time the LBR may take; 0 (or 100 and above) disables throttling.
    percent: u32,
    /// Smoothed episode cost, nanoseconds.
    avg_cost_ns: Option<u64>,
    stats: ThrottleStats,
}

/// What the budget did over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Sampling episodes measured.
    pub episodes: u64,
    /// Wall time of those episodes (tracing windows and snapshots), nanoseconds.
    pub episode_ns: u64,
    /// Intervals the budget made longer than requested.
    pub stretched: u64,
    /// Samples that fell due where none may be taken (an exit of the guest's, the VMM
    /// serving one, its trap stubs) and were skipped (filled in by the caller; see
    /// `super::emulated::ExitPoint`).
    pub skipped: u64,
}

impl Throttle {
    /// A budget of `percent` of wall time; 0 or 100 (and above) never throttle.
    pub fn new(percent: u32) -> Throttle {
        Throttle {
            percent,
            avg_cost_ns: None,
            stats: ThrottleStats::default(),
        }
    }

    /// No throttling at all.
    pub fn disabled() -> Throttle {
        Throttle::new(0)
    }

    /// Whether the budget can stretch an interval.
    pub fn enabled(&self) -> bool {
        (1..100).contains(&self.percent)
    }

    /// The smoothed episode cost so far, nanoseconds.
    pub fn avg_cost_ns(&self) -> Option<u64> {
        self.avg_cost_ns
    }

    /// Starts from another budget's smoothed cost (another vCPU of the same VM, e.g. a
    /// forked process's parent) instead of from nothing, unless this one measured its own.
    pub fn seed(&mut self, avg_cost_ns: u64) {
        if self.avg_cost_ns.is_none() && avg_cost_ns != 0 {
            self.avg_cost_ns = Some(avg_cost_ns);
        }
    }

    pub fn percent(&self) -> u32 {
        self.percent
    }

    pub fn stats(&self) -> ThrottleStats {
        self.stats
    }

    /// A sampling episode took `cost_ns` of wall time; the guest was asked to run free
    /// for `requested_ns` before the next one. Returns how long it should run free.
    pub fn next_interval_ns(&mut self, cost_ns: u64, requested_ns: u64) -> u64 {
        self.stats.episodes += 1;
        self.stats.episode_ns = self.stats.episode_ns.saturating_add(cost_ns);
        if !self.enabled() {
            return requested_ns;
        }
        let avg = match self.avg_cost_ns {
            None => cost_ns,
            Some(prev) => {
                let prev = u128::from(prev);
                ((prev * u128::from(COST_SMOOTHING - 1) + u128::from(cost_ns))
                    / u128::from(COST_SMOOTHING)) as u64
            }
        };
        self.avg_cost_ns = Some(avg);
        let pct = u128::from(self.percent);
        let needed = (u128::from(avg) * (100 - pct) / pct).min(u128::from(u64::MAX)) as u64;
        if needed > requested_ns {
            self.stats.stretched += 1;
            needed
        } else {
            requested_ns
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake run: episodes of `cost` ns, the requested interval `req` ns; returns the
    /// share of wall time spent in episodes over `n` episodes.
    fn share(t: &mut Throttle, cost: impl Fn(u64) -> u64, req: u64, n: u64) -> f64 {
        let (mut busy, mut total) = (0u64, 0u64);
        for i in 0..n {
            let c = cost(i);
            let free = t.next_interval_ns(c, req);
            busy += c;
            total += c + free;
        }
        busy as f64 / total as f64
    }

    #[test]
    fn cheap_episodes_keep_the_requested_rate() {
        let mut t = Throttle::new(10);
        // 1 ms interval, 50 µs episodes: 4.8%, within 10%.
        assert_eq!(t.next_interval_ns(50_000, 1_000_000), 1_000_000);
        assert_eq!(t.stats().stretched, 0);
    }

    #[test]
    fn expensive_episodes_stretch_the_interval_to_the_budget() {
        let mut t = Throttle::new(10);
        // 1 ms interval, 4 ms episodes (the ~4.8x slowdown): 9 x 4 ms of free run.
        assert_eq!(t.next_interval_ns(4_000_000, 1_000_000), 36_000_000);
        assert_eq!(t.stats().stretched, 1);
        let s = share(&mut t, |_| 4_000_000, 1_000_000, 1000);
        assert!((s - 0.10).abs() < 0.001, "share {s}");
    }

    #[test]
    fn the_long_run_share_stays_within_budget_with_noisy_costs() {
        for pct in [1, 5, 10, 25, 50] {
            let mut t = Throttle::new(pct);
            // Costs alternate between 1 and 7 ms, with a 100 ms outlier now and then.
            let cost = |i: u64| match i % 50 {
                0 => 100_000_000,
                i if i % 2 == 0 => 1_000_000,
                _ => 7_000_000,
            };
            let s = share(&mut t, cost, 1_000_000, 10_000);
            let budget = f64::from(pct) / 100.0;
            assert!(s <= budget * 1.05, "{pct}%: share {s}");
            assert!(s >= budget * 0.8, "{pct}%: needlessly slow: {s}");
        }
    }

    #[test]
    fn a_slow_start_does_not_stall_sampling_for_long() {
        let mut t = Throttle::new(10);
        // One 1 s episode (ring 0 at boot is emulated), then 100 µs ones.
        assert_eq!(t.next_interval_ns(1_000_000_000, 1_000_000), 9_000_000_000);
        let mut i = 0;
        while t.next_interval_ns(100_000, 1_000_000) > 1_000_000 {
            i += 1;
            assert!(i < 40, "still throttled after {i} cheap episodes");
        }
    }

    #[test]
    fn zero_and_hundred_percent_never_throttle() {
        for pct in [0, 100, 250] {
            let mut t = Throttle::new(pct);
            assert!(!t.enabled());
            assert_eq!(t.next_interval_ns(u64::MAX / 2, 1_000), 1_000);
            assert_eq!(t.stats().stretched, 0);
            assert_eq!(t.stats().episodes, 1);
        }
        assert!(!Throttle::disabled().enabled());
        assert!(Throttle::new(99).enabled());
    }

    #[test]
    fn huge_costs_saturate_instead_of_overflowing() {
        let mut t = Throttle::new(1);
        assert_eq!(t.next_interval_ns(u64::MAX, 0), u64::MAX);
        assert_eq!(t.next_interval_ns(u64::MAX, 0), u64::MAX);
    }
}
