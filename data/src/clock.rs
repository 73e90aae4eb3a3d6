//! The one clock of a recording: CLOCK_MONOTONIC in nanoseconds. Host samples (perf
//! events are told to use it), guest snapshots and every event the shim records are
//! stamped with it, so pairing compares like with like.

/// Now, as CLOCK_MONOTONIC nanoseconds (saturating: a clock near `u64::MAX` ns, 584
/// years of uptime, stays at the top instead of wrapping to a small time).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    to_ns(ts.tv_sec, ts.tv_nsec)
}

fn to_ns(sec: i64, nsec: i64) -> u64 {
    u64::try_from(sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_advances_and_saturates() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000, "{a} -> {b}");
        assert_eq!(to_ns(i64::MAX, 999_999_999), u64::MAX);
        assert_eq!(to_ns(3, 5), 3_000_000_005);
        assert_eq!(to_ns(-1, 0), 0);
    }
}
