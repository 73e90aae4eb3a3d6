//! The one hasher of the aggregation maps: FxHash (rustc-hash), deterministic (no seed,
//! so iteration order and every output built from it is the same run to run) and fast on
//! our own integer keys (one multiply per word). The symbolizer's maps use it too.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// A deterministic fast hasher for the aggregation maps (keys are our own integers).
#[derive(Clone, Copy, Default)]
pub struct FastHash;

impl BuildHasher for FastHash {
    type Hasher = rustc_hash::FxHasher;
    fn build_hasher(&self) -> rustc_hash::FxHasher {
        rustc_hash::FxHasher::default()
    }
}

pub type FastMap<K, V> = HashMap<K, V, FastHash>;
