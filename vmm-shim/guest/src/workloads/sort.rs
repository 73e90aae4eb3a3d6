//! `sort`: quicksort (median-of-three, insertion sort below 16) over PRNG data.
//!
//! The checksum is an FNV-style fold of the sorted values, so it depends only on the
//! multiset of inputs and tests can compute it with any correct sort.

use super::prng::SplitMix64;

pub fn fill(buf: &mut [u64], seed: u64) {
    let mut rng = SplitMix64(seed);
    for v in buf.iter_mut() {
        *v = rng.next_u64() >> 16;
    }
}

#[inline(never)]
fn insertion_sort(a: &mut [u64]) {
    for i in 1..a.len() {
        let v = a[i];
        let mut j = i;
        while j > 0 && a[j - 1] > v {
            a[j] = a[j - 1];
            j -= 1;
        }
        a[j] = v;
    }
}

#[inline(never)]
fn partition(a: &mut [u64]) -> usize {
    let last = a.len() - 1;
    let mid = last / 2;
    // Median of three into a[last].
    if a[mid] < a[0] {
        a.swap(mid, 0);
    }
    if a[last] < a[0] {
        a.swap(last, 0);
    }
    if a[mid] < a[last] {
        a.swap(mid, last);
    }
    let pivot = a[last];
    let mut store = 0;
    for i in 0..last {
        if a[i] < pivot {
            a.swap(i, store);
            store += 1;
        }
    }
    a.swap(store, last);
    store
}

#[inline(never)]
pub fn quicksort(a: &mut [u64]) {
    if a.len() <= 16 {
        insertion_sort(a);
        return;
    }
    let p = partition(a);
    let (left, right) = a.split_at_mut(p);
    quicksort(left);
    quicksort(&mut right[1..]);
}

pub fn is_sorted(a: &[u64]) -> bool {
    a.windows(2).all(|w| w[0] <= w[1])
}

pub fn checksum(a: &[u64]) -> u64 {
    a.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &v| {
        (h ^ v).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fill, sort, fold: the whole kernel.
#[inline(never)]
pub fn run(buf: &mut [u64], seed: u64) -> (bool, u64) {
    fill(buf, seed);
    quicksort(buf);
    (is_sorted(buf), checksum(buf))
}
