//! `--time` (every reading command): the time windows of `perf report --time`, and relative ones.
//!
//! * `START,END`: perf's absolute sample times, `SECONDS[.FRACTION]` (at most nine
//!   fraction digits), either side may be empty (from the first / to the last sample);
//!   both ends inclusive.
//! * `+START,+END`: seconds after the recording's first sample (lbrprof's own; perf
//!   script calls this `--reltime`). Absolute and relative ends may be mixed.
//! * Percent slices of the span from the first to the last sample, as perf: `10%/2`
//!   (the second tenth), `0%-10%,30%-40%` (several ranges), `25%` (the first quarter).
//!   A window's end is one nanosecond short of the next slice, except at the last sample.

/// One end of a time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// No bound on this side.
    Open,
    /// An absolute sample time, in ns.
    Abs(u64),
    /// Nanoseconds after the first sample.
    Rel(u64),
}

/// A parsed `--time` value.
#[derive(Clone, Debug, PartialEq)]
pub enum TimeSpec {
    Range(Bound, Bound),
    /// Percent ranges `[start, end]` of the recording's span, as fractions (0..=1).
    Percent(Vec<(f64, f64)>),
}

/// Parses seconds with up to nine fraction digits into nanoseconds, exactly (perf's
/// `parse_nsec_time`).
fn parse_nsec(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a time in seconds (SECONDS[.FRACTION])");
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    if !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if frac.len() > 9 {
        return Err(format!("'{s}': at most nine fraction digits (nanoseconds)"));
    }
    let secs: u64 = if secs.is_empty() {
        0
    } else {
        secs.parse().map_err(|_| bad())?
    };
    let frac: u64 = format!("{frac:0<9}").parse().map_err(|_| bad())?;
    secs.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac))
        .ok_or_else(bad)
}

fn parse_bound(s: &str) -> Result<Bound, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Bound::Open);
    }
    match s.strip_prefix('+') {
        Some(rel) => parse_nsec(rel).map(Bound::Rel),
        None => parse_nsec(s).map(Bound::Abs),
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v = s
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("'{s}' is not a percentage (N%)"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("'{s}': a percentage must be between 0% and 100%"));
    }
    Ok(v / 100.0)
}

/// Parses a `--time` value (clap value parser).
pub fn parse(s: &str) -> Result<TimeSpec, String> {
    if s.contains('%') {
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let range = if let Some((pct, n)) = part.split_once('/') {
                let pct = parse_percent(pct)?;
                let n: u32 = n.trim().parse().map_err(|_| {
                    format!("'{part}': the slice number must be a positive integer")
                })?;
                if pct <= 0.0 || n == 0 {
                    return Err(format!("'{part}': slices are N%/K with N > 0 and K >= 1"));
                }
                (pct * f64::from(n - 1), pct * f64::from(n))
            } else if let Some((a, b)) = part.split_once('-') {
                (parse_percent(a)?, parse_percent(b)?)
            } else {
                (0.0, parse_percent(part)?)
            };
            if range.0 > 1.0 || range.1 > 1.0 {
                return Err(format!("'{part}' reaches past 100%"));
            }
            if range.1 < range.0 {
                return Err(format!("'{part}' ends before it starts"));
            }
            ranges.push(range);
        }
        return Ok(TimeSpec::Percent(ranges));
    }
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}': expected START,END (either may be empty) or N%/K"))?;
    let (a, b) = (parse_bound(a)?, parse_bound(b)?);
    if let (Bound::Abs(x), Bound::Abs(y)) | (Bound::Rel(x), Bound::Rel(y)) = (a, b)
        && y < x
    {
        return Err(format!("'{s}' ends before it starts"));
    }
    Ok(TimeSpec::Range(a, b))
}

impl TimeSpec {
    /// Whether the windows depend on the recording's first and last sample times.
    pub fn needs_span(&self) -> bool {
        match self {
            TimeSpec::Range(a, b) => matches!(a, Bound::Rel(_)) || matches!(b, Bound::Rel(_)),
            TimeSpec::Percent(_) => true,
        }
    }

    /// The inclusive windows in sample time, given the first and last sample times.
    pub fn windows(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
        match self {
            TimeSpec::Range(a, b) => {
                let at = |bound: &Bound, open: u64| match *bound {
                    Bound::Open => open,
                    Bound::Abs(t) => t,
                    Bound::Rel(d) => first.saturating_add(d),
                };
                vec![(at(a, 0), at(b, u64::MAX))]
            }
            TimeSpec::Percent(ranges) => {
                let span = last.saturating_sub(first) as f64;
                ranges
                    .iter()
                    .map(|&(p, q)| {
                        let start = first + (p * span).round() as u64;
                        let mut end = first + (q * span).round() as u64;
                        if end > start && end != last {
                            end -= 1;
                        }
                        (start, end)
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_and_relative_ranges() {
        assert_eq!(
            parse("12.5,13").unwrap().windows(0, 0),
            [(12_500_000_000, 13_000_000_000)]
        );
        assert_eq!(
            parse(",7.000000001").unwrap().windows(0, 0),
            [(0, 7_000_000_001)]
        );
        assert_eq!(
            parse("1,").unwrap().windows(0, 0),
            [(1_000_000_000, u64::MAX)]
        );
        let rel = parse("+0.5,+1").unwrap();
        assert!(rel.needs_span());
        assert_eq!(
            rel.windows(10_000_000_000, 20_000_000_000),
            [(10_500_000_000, 11_000_000_000)]
        );
        assert!(!parse("1,2").unwrap().needs_span());
        for bad in [
            "",
            "1",
            "2,1",
            "+2,+1",
            "x,1",
            "1.0000000001,2",
            "-1,2",
            "1.2.3,4",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_slices_match_perf() {
        // perf: start + round(p * total), end one short of the next slice's start.
        let (first, last) = (1000, 2000);
        assert_eq!(parse("10%/2").unwrap().windows(first, last), [(1100, 1199)]);
        assert_eq!(
            parse("0%-10%,30%-40%").unwrap().windows(first, last),
            [(1000, 1099), (1300, 1399)]
        );
        assert_eq!(parse("50%").unwrap().windows(first, last), [(1000, 1499)]);
        // The last slice keeps the last sample.
        assert_eq!(
            parse("10%/10").unwrap().windows(first, last),
            [(1900, 2000)]
        );
        for bad in ["0%/1", "10%/0", "10%/11", "50%-10%", "101%", "x%"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
