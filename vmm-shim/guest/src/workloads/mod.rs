//! The demo and test workloads. Each kernel is a pure, deterministic function of its
//! parameters (no runtime calls), so that tests can compute expected checksums and exact
//! branch counts, and `bench/guest-speed` can run the very same source natively.
//! The `main` functions around them parse arguments and print.

pub mod branchy;
pub mod calls;
pub mod interp;
pub mod prng;
pub mod sort;
