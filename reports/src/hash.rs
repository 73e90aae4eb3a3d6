//! The one hasher of the aggregation maps: deterministic (fixed seeds, so iteration order
//! and every output built from it is the same run to run) and fast on our own integer keys.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// A deterministic fast hasher for the aggregation maps (keys are our own integers).
#[derive(Clone, Default)]
pub struct FastHash;

impl BuildHasher for FastHash {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> ahash::AHasher {
        ahash::RandomState::with_seeds(0x6c62, 0x7270, 0x726f, 0x6621).build_hasher()
    }
}

pub type FastMap<K, V> = HashMap<K, V, FastHash>;
