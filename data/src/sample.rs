//! One sample as every chunked source hands it out, borrowed from where it lies.
//!
//! A report does not need an owned [`crate::model::Event`] per sample: it folds samples
//! into tables keyed by their raw contents and resolves each unique key once. The
//! sources that can hand samples out in place, chunk by chunk and on any thread, give
//! them as a [`SampleRef`]:
//!
//! | source | call chain | branch stack | stack copy |
//! |---|---|---|---|
//! | perf.data, mapped ([`crate::perfdata::mapped`]) | perf's words ([`Callchain::PerfWords`]) | perf's entries ([`BranchStack::PerfEntries`]) | `--call-graph dwarf` registers and stack |
//! | lbrprof.data, mapped ([`crate::recording::for_each_sample_of`]) | frames ([`Callchain::Frames`]) | decoded ([`BranchStack::Decoded`]) | none |
//!
//! [`SampleRef::epoch`] numbers the side-band state (mappings, task names) a sample meets:
//! a consumer folds samples per epoch and replays the side-band events in order, applying
//! each epoch's samples right after the event that starts it; each source documents how
//! it numbers its epochs.
//!
//! A folded sample's call chain is kept as *key words* ([`Callchain::push_key_words`]),
//! which say themselves how they decode ([`ChainWords`], [`frames_of_key`]), so one
//! table can hold samples of any source.

use std::borrow::Cow;

use crate::dwarf::Regs;
use crate::model::{Branch, CpuMode, Frame, HostSample};
use crate::perfdata::abi::PERF_CONTEXT_MAX;
use crate::perfdata::entries::{BRANCH_ENTRY_LEN, branch_entry, callchain_frames};

/// One sample, borrowed from its source.
#[derive(Clone, Copy, Debug)]
pub struct SampleRef<'a> {
    /// The side-band state it meets (see the module docs); 0: none yet.
    pub epoch: u64,
    // Who: the thread, and where it ran.
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub mode: CpuMode,
    // When, and how much it stands for (the sample period).
    pub time_ns: u64,
    pub period: u64,
    // Where: the sampled IP, the call chain and the branches that led there.
    pub ip: u64,
    pub callchain: Callchain<'a>,
    /// Newest entry first (perf's order); empty when none was sampled.
    pub branches: BranchStack<'a>,
    /// A `--call-graph dwarf` sample's user registers and stack copy, when it has them.
    pub stack_copy: Option<StackCopyRef<'a>>,
}

impl<'a> SampleRef<'a> {
    /// A decoded sample (of a recording's chunk, or an owned event), at `epoch`.
    #[inline]
    pub fn of_host(s: &'a HostSample, epoch: u64) -> Self {
        SampleRef {
            epoch,
            pid: s.pid,
            tid: s.tid,
            cpu: s.cpu,
            mode: s.mode,
            time_ns: s.time_ns,
            period: s.period,
            ip: s.ip,
            callchain: Callchain::Frames(&s.callchain),
            branches: BranchStack::Decoded(&s.branches),
            stack_copy: None,
        }
    }
}

/// A sample's call chain, as its source stores it.
#[derive(Clone, Copy, Debug)]
pub enum Callchain<'a> {
    /// perf's `u64` words (little-endian bytes), `PERF_CONTEXT_*` markers included; the
    /// frames' modes follow from the markers and the sample's mode ([`callchain_frames`]).
    PerfWords(&'a [u8]),
    /// Frames, innermost first, each with its mode.
    Frames(&'a [Frame]),
}

/// How a folded call chain's key words decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainWords {
    /// perf's words, markers included.
    Perf,
    /// `(addr, mode code)` pairs ([`mode_code`]).
    Frames,
}

impl<'a> Callchain<'a> {
    /// How [`Callchain::push_key_words`] encodes this chain.
    #[inline]
    pub fn words(&self) -> ChainWords {
        match self {
            Callchain::PerfWords(_) => ChainWords::Perf,
            Callchain::Frames(_) => ChainWords::Frames,
        }
    }

    /// Whether the chain has any frame (perf's context markers are not frames).
    #[inline]
    pub fn has_frames(&self) -> bool {
        match self {
            Callchain::PerfWords(_) => self.perf_words().any(|w| w < PERF_CONTEXT_MAX),
            Callchain::Frames(frames) => !frames.is_empty(),
        }
    }

    /// The perf words, each as a `u64`; none for frames.
    #[inline]
    pub fn perf_words(&self) -> impl Iterator<Item = u64> + '_ {
        let bytes = match self {
            Callchain::PerfWords(b) => b,
            Callchain::Frames(_) => &[][..],
        };
        bytes.chunks_exact(8).map(le_word)
    }

    /// The frames, innermost first, of a sample taken in `mode`: borrowed when the
    /// source holds frames, decoded from perf's words otherwise.
    pub fn frames(&self, mode: CpuMode) -> Cow<'a, [Frame]> {
        match *self {
            Callchain::Frames(frames) => Cow::Borrowed(frames),
            Callchain::PerfWords(bytes) => {
                Cow::Owned(callchain_frames(bytes.chunks_exact(8).map(le_word), mode))
            }
        }
    }

    /// Appends the chain's key words (see [`ChainWords`]) to `out`.
    #[inline]
    pub fn push_key_words(&self, out: &mut Vec<u64>) {
        match self {
            Callchain::PerfWords(_) => out.extend(self.perf_words()),
            Callchain::Frames(frames) => {
                for f in *frames {
                    out.extend([f.addr, mode_code(f.mode)]);
                }
            }
        }
    }
}

/// The frames of key words pushed by [`Callchain::push_key_words`], for a sample taken
/// in `mode`.
pub fn frames_of_key(words: &[u64], encoding: ChainWords, mode: CpuMode) -> Vec<Frame> {
    match encoding {
        ChainWords::Perf => callchain_frames(words.iter().copied(), mode),
        ChainWords::Frames => words
            .chunks_exact(2)
            .map(|p| Frame {
                addr: p[0],
                mode: mode_of(p[1]),
            })
            .collect(),
    }
}

/// A sample's branch stack, as its source stores it.
#[derive(Clone, Copy, Debug)]
pub enum BranchStack<'a> {
    /// `struct perf_branch_entry`s, little-endian, [`BRANCH_ENTRY_LEN`] bytes each.
    PerfEntries(&'a [u8]),
    Decoded(&'a [Branch]),
}

impl<'a> BranchStack<'a> {
    /// The number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            BranchStack::PerfEntries(b) => b.len() / BRANCH_ENTRY_LEN,
            BranchStack::Decoded(b) => b.len(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, newest first.
    #[inline]
    pub fn iter(&self) -> Branches<'a> {
        match *self {
            BranchStack::PerfEntries(b) => Branches::Perf(b.chunks_exact(BRANCH_ENTRY_LEN)),
            BranchStack::Decoded(b) => Branches::Decoded(b.iter()),
        }
    }
}

/// The entries of a [`BranchStack`].
pub enum Branches<'a> {
    Perf(std::slice::ChunksExact<'a, u8>),
    Decoded(std::slice::Iter<'a, Branch>),
}

impl Iterator for Branches<'_> {
    type Item = Branch;
    #[inline]
    fn next(&mut self) -> Option<Branch> {
        match self {
            Branches::Perf(it) => it.next().map(|e| branch_entry(e, true)),
            Branches::Decoded(it) => it.next().copied(),
        }
    }
}

/// A sample's user registers and the stack bytes the kernel copied.
#[derive(Clone, Copy, Debug)]
pub struct StackCopyRef<'a> {
    pub regs: Regs,
    pub stack: &'a [u8],
}

/// A mode as one word of a folded key (0 for [`CpuMode::Unknown`]).
#[inline]
pub fn mode_code(m: CpuMode) -> u64 {
    match m {
        CpuMode::Unknown => 0,
        CpuMode::Kernel => 1,
        CpuMode::User => 2,
        CpuMode::Hypervisor => 3,
        CpuMode::GuestKernel => 4,
        CpuMode::GuestUser => 5,
    }
}

/// The mode of a [`mode_code`] word (its low byte); [`CpuMode::Unknown`] for others.
#[inline]
pub fn mode_of(code: u64) -> CpuMode {
    match code & 0xff {
        1 => CpuMode::Kernel,
        2 => CpuMode::User,
        3 => CpuMode::Hypervisor,
        4 => CpuMode::GuestKernel,
        5 => CpuMode::GuestUser,
        _ => CpuMode::Unknown,
    }
}

fn le_word(w: &[u8]) -> u64 {
    u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BranchFlags, BranchKind};
    use crate::perfdata::abi;

    #[test]
    fn key_words_decode_to_the_frames_of_either_encoding() {
        let frames = [
            Frame {
                addr: 0xffff_ffff_8100_0010,
                mode: CpuMode::Kernel,
            },
            Frame {
                addr: 0x40_1000,
                mode: CpuMode::User,
            },
        ];
        let mut words = Vec::new();
        Callchain::Frames(&frames).push_key_words(&mut words);
        assert_eq!(
            frames_of_key(&words, ChainWords::Frames, CpuMode::Kernel),
            frames
        );
        let perf: Vec<u8> = [
            abi::PERF_CONTEXT_KERNEL,
            0xffff_ffff_8100_0010,
            abi::PERF_CONTEXT_USER,
            0x40_1000,
        ]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
        let chain = Callchain::PerfWords(&perf);
        let mut words = Vec::new();
        chain.push_key_words(&mut words);
        assert_eq!(words.len(), 4);
        assert_eq!(chain.words(), ChainWords::Perf);
        assert_eq!(
            frames_of_key(&words, ChainWords::Perf, CpuMode::Kernel),
            frames
        );
        assert!(chain.has_frames() && Callchain::Frames(&frames).has_frames());
        let markers_only: Vec<u8> = abi::PERF_CONTEXT_USER.to_le_bytes().to_vec();
        assert!(!Callchain::PerfWords(&markers_only).has_frames());
        assert!(!Callchain::Frames(&[]).has_frames());
        // Either chain gives its frames.
        assert_eq!(*chain.frames(CpuMode::Kernel), frames);
        assert_eq!(*Callchain::Frames(&frames).frames(CpuMode::User), frames);
    }

    #[test]
    fn branch_stacks_of_either_source_give_the_same_entries() {
        let b = Branch {
            from: 0x40_1000,
            to: 0x40_2000,
            flags: BranchFlags {
                mispred: true,
                kind: BranchKind::Unknown,
                ..BranchFlags::default()
            },
        };
        let mut raw = Vec::new();
        raw.extend(b.from.to_le_bytes());
        raw.extend(b.to.to_le_bytes());
        raw.extend(1u64.to_le_bytes()); // mispred
        let perf = BranchStack::PerfEntries(&raw);
        let decoded = [b];
        let ours = BranchStack::Decoded(&decoded);
        assert_eq!((perf.len(), ours.len()), (1, 1));
        assert_eq!(
            perf.iter().collect::<Vec<_>>(),
            ours.iter().collect::<Vec<_>>()
        );
        assert!(BranchStack::Decoded(&[]).is_empty());
    }

    #[test]
    fn mode_codes_round_trip() {
        for code in 0..6 {
            assert_eq!(mode_code(mode_of(code)), code);
        }
        assert_eq!(mode_of(6), CpuMode::Unknown);
        // The chain-encoding bits above the low byte do not change the mode.
        assert_eq!(mode_of(2 | 1 << 8), CpuMode::User);
    }
}
