//! The hasher of maps keyed by guest addresses (the interpreter's caches, the exact
//! profile's counts): FxHash from `rustc-hash`, a multiply per word. Keys are addresses the
//! guest cannot choose to collide with any benefit: a collision only costs time.

use std::collections::{HashMap, HashSet};

/// A `HashMap` keyed by guest addresses (FxHash).
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
/// A `HashSet` of guest addresses (FxHash).
pub type FastSet<K> = HashSet<K, rustc_hash::FxBuildHasher>;
