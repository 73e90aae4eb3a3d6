//! `branchy`: one data-dependent branch with a known taken ratio.
//!
//! For each of `n` PRNG values `x`, the branch `(x >> 32) % 100 < pct` is taken with
//! probability `pct`%; the exact number of taken branches is returned so tests can check
//! it. The two arms call different non-inlined functions, so the compiler cannot turn the
//! branch into a conditional move.

use super::prng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Result {
    pub taken: u64,
    pub checksum: u64,
}

#[inline(never)]
fn on_taken(acc: u64, x: u64) -> u64 {
    acc.wrapping_add(x)
}

#[inline(never)]
fn on_not_taken(acc: u64, x: u64) -> u64 {
    acc ^ x.rotate_left(7)
}

#[inline(never)]
pub fn run(n: u64, pct: u64, seed: u64) -> Result {
    let mut rng = SplitMix64(seed);
    let mut taken = 0;
    let mut acc = 0u64;
    for _ in 0..n {
        let x = rng.next_u64();
        if (x >> 32) % 100 < pct {
            taken += 1;
            acc = on_taken(acc, x);
        } else {
            acc = on_not_taken(acc, x);
        }
    }
    Result {
        taken,
        checksum: acc,
    }
}
