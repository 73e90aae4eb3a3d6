//! The program's randomness: the host's, or a fixed stream so that runs repeat exactly.
//!
//! Exact mode promises the same instruction and branch counts on every run, but programs
//! read random bytes and branch on them: Python seeds its string hashes from `getrandom`
//! (so dict and set layouts, and the work to walk them, change from run to run), Rust's
//! `HashMap` seeds its keys the same way, and glibc takes its stack-protector canary and
//! pointer guard from `AT_RANDOM`. With [`EntropySource::Seeded`] every source of
//! randomness the personality serves — `getrandom`, `AT_RANDOM` at load and execve, reads
//! of `/dev/urandom` and `/dev/random` — draws from one stream per process, seeded from
//! the given number; a forked child's stream is seeded from its parent's, so each
//! process's bytes depend only on the calls it and its ancestors made, not on how the
//! host scheduled them. The stream is predictable by design: never use a seeded run for
//! anything that needs secrets.

use crate::linux::errno::Errno;
use crate::linux::host;

/// Where the program's random bytes come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EntropySource {
    /// The host's `getrandom` (what the program would get natively).
    #[default]
    Host,
    /// A fixed stream from this seed.
    Seeded(u64),
}

/// One process's randomness.
#[derive(Clone, Debug)]
pub struct Entropy {
    /// None: the host's.
    stream: Option<fastrand::Rng>,
}

impl Entropy {
    pub fn new(source: EntropySource) -> Entropy {
        Entropy {
            stream: match source {
                EntropySource::Host => None,
                EntropySource::Seeded(seed) => Some(fastrand::Rng::with_seed(seed)),
            },
        }
    }

    /// Whether the bytes come from a fixed stream.
    pub fn is_seeded(&self) -> bool {
        self.stream.is_some()
    }

    /// Fill `buf` as `getrandom(2)` with `flags` does; returns the bytes written (a
    /// seeded stream always fills the whole buffer and never blocks).
    pub fn fill(&mut self, buf: &mut [u8], flags: u32) -> Result<usize, Errno> {
        match &mut self.stream {
            None => host::getrandom(buf, flags),
            Some(rng) => {
                rng.fill(buf);
                Ok(buf.len())
            }
        }
    }

    /// `AT_RANDOM`'s 16 bytes for a new program image.
    pub fn at_random(&mut self) -> [u8; 16] {
        let mut random = [0u8; 16];
        // The host's getrandom does not fail for 16 bytes once the pool is ready; if it
        // did, zeros are what the program gets (as with no entropy at all).
        let _ = self.fill(&mut random, 0);
        random
    }

    /// The stream of a child `fork` makes: the host's again, or one seeded from this
    /// stream's next number (so parent and child do not repeat each other's bytes).
    pub fn fork(&mut self) -> Entropy {
        Entropy {
            stream: self
                .stream
                .as_mut()
                .map(|rng| fastrand::Rng::with_seed(rng.u64(..))),
        }
    }
}

/// Whether a character device with this `st_rdev` is `/dev/random` (1:8) or
/// `/dev/urandom` (1:9).
pub fn is_random_device(rdev: u64) -> bool {
    libc::major(rdev) == 1 && matches!(libc::minor(rdev), 8 | 9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_bytes_every_time_and_seeds_differ() {
        let bytes = |seed| {
            let mut e = Entropy::new(EntropySource::Seeded(seed));
            let mut b = [0u8; 64];
            assert_eq!(e.fill(&mut b, 0), Ok(64));
            (b, e.at_random())
        };
        assert_eq!(bytes(0), bytes(0));
        assert_ne!(bytes(0).0, bytes(1).0);
        assert_ne!(bytes(7).0, [0u8; 64]);
    }

    #[test]
    fn a_forked_stream_is_fixed_and_not_the_parents() {
        let mut a = Entropy::new(EntropySource::Seeded(3));
        let mut b = Entropy::new(EntropySource::Seeded(3));
        let (mut ca, mut cb) = (a.fork(), b.fork());
        let draw = |e: &mut Entropy| {
            let mut x = [0u8; 32];
            e.fill(&mut x, 0).map(|_| x)
        };
        assert_eq!(draw(&mut ca), draw(&mut cb));
        assert_ne!(draw(&mut ca), draw(&mut a));
        assert!(ca.is_seeded());
    }

    #[test]
    fn host_entropy_is_the_hosts() {
        let mut e = Entropy::new(EntropySource::Host);
        assert!(!e.is_seeded());
        assert!(!e.fork().is_seeded());
        let (x, y) = (e.at_random(), e.at_random());
        assert_ne!(
            x, y,
            "two 16-byte host draws are equal: not the host's getrandom"
        );
    }

    #[test]
    fn the_random_devices_are_recognised_by_number() {
        assert!(is_random_device(libc::makedev(1, 9)));
        assert!(is_random_device(libc::makedev(1, 8)));
        assert!(!is_random_device(libc::makedev(1, 3)));
        assert!(!is_random_device(libc::makedev(5, 9)));
    }
}
