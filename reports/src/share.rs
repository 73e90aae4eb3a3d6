//! Shares of a whole, as every table prints them.

/// `part` in percent of `whole`; 0 for an empty whole (no samples: no shares).
pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_of_an_empty_whole_are_zero() {
        assert_eq!(super::pct(3, 0), 0.0);
        assert_eq!(super::pct(1, 4), 25.0);
    }
}
