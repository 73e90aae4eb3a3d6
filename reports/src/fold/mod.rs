//! The one folder: the samples of any [`SampleSource`] (a mapped perf.data file, a
//! mapped recording, an event stream), borrowed as [`SampleRef`]s, folded on every core
//! into tables keyed by the *raw* sample, then resolved once per unique key through an
//! [`Aggregator`].
//!
//! [`fold_source`] walks the source on one thread while the pool folds the chunks it
//! hands out (so walking overlaps folding, and a chunk is read soon after the walk has
//! passed it), each thread into its own [`Raw`]: stacks keyed `[epoch, pid (| tid << 32),
//! mode (| chain encoding << 8 | run << 16), ip, chain words...]`, LBR call stacks
//! `[epoch, pid, mode, ip, from...]`, branch edges and fall-through ranges keyed by
//! [`PairKey`]. [`Raw`]s merge in any order. [`resolve`] then replays the source's side-band [`Step`]s (mappings,
//! tasks, losses) in the order the event stream gives them, adding each epoch's raw
//! entries right after the step that starts it: every sample meets the mappings and task
//! names the stream would have shown it, and the [`Profile`] is the one
//! [`crate::aggregate_events`] builds from the stream, at a fraction of the cost, since
//! only unique raw keys are ever resolved.
//!
//! Filters: `--pid`/`--tid`/`--time` are applied while folding. `--comm` and `--dso`
//! depend on the side-band state a sample meets (its thread's command, the module its IP
//! lies in), so they are decided when its raw stack resolves, by the aggregator's own
//! filter. With `--comm`, a sample's branch edges and ranges are keyed by its *head*
//! (the first words of its raw stack key but the IP, [`Raw::heads`]) and follow that
//! verdict. Per-run tables (`record --repeat`) keep the run in the raw stack key.
//!
//! What raw keys cannot keep is left to the aggregator, visiting the same source's
//! samples one by one in stream order ([`SampleSource::walk_in_order`], [`supports`]):
//! timelines and the pairing of `record --vm` samples with guest snapshots need every
//! sample on its own, with its time; and `--dso` on samples with branch stacks, whose
//! verdict depends on the sampled IP (keyed by IP, the branch tables would hold a copy
//! of every edge per sampled address: measured 5× slower than the visit).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use lbrprof_data::dwarf::{ScanCache, ScanUnwinder, UnwindStats};
use lbrprof_data::model::{Branch, BranchKind, CpuMode, HostSample};
use lbrprof_data::perfdata::abi::PERF_CONTEXT_USER;
use lbrprof_data::sample::{
    BranchStack, Callchain, ChainWords, SampleRef, frames_of_key, mode_code, mode_of,
};
use lbrprof_data::source::{Folded, SampleChunk, SampleSource, SourceError, Step};

use crate::aggregate::{
    AggregateOptions, Aggregator, EdgeCounts, FastHash, Filter, MAX_RANGE_BYTES, Profile,
    SampleCounts, branch_mode, run_of,
};

/// Samples with one raw key, summed.
#[derive(Clone, Copy, Debug)]
struct Group {
    samples: u64,
    weight: u64,
    first: u64,
    last: u64,
}

impl Group {
    fn new(weight: u64, time: u64) -> Self {
        Group {
            samples: 1,
            weight,
            first: time,
            last: time,
        }
    }
    fn add(&mut self, weight: u64, time: u64) {
        self.samples += 1;
        self.weight += weight;
        self.first = self.first.min(time);
        self.last = self.last.max(time);
    }
    fn merge(&mut self, o: &Group) {
        self.samples += o.samples;
        self.weight += o.weight;
        self.first = self.first.min(o.first);
        self.last = self.last.max(o.last);
    }
}

/// Raw stack keys start `[epoch, pid | tid << 32, mode | chain << 8 | run << 16, ip]`:
/// the sample's *head*, everything the filters and the per-run tables decide by.
const HEAD: usize = 4;

/// The chain-encoding bit of a raw stack's mode word: its words are perf's.
const PERF_CHAIN: u64 = 1 << 8;

/// Where a raw stack's mode word keeps the index of the run its samples belong to
/// ([`run_of`]).
const RUN_SHIFT: u32 = 16;

/// A table keyed by word slices (open addressing, linear probing): `std`'s `HashMap`
/// would hash each new key twice (lookup by slice, then insert by box), and merging
/// would hash every key again.
struct WordMap<V> {
    /// Indices into `entries`, `EMPTY` where free; a power of two long.
    slots: Vec<u32>,
    /// `(hash, key, value)`, in insertion order.
    entries: Vec<(u64, Box<[u64]>, V)>,
}

const EMPTY: u32 = u32::MAX;

impl<V> WordMap<V> {
    fn new() -> Self {
        WordMap {
            slots: vec![EMPTY; 1024],
            entries: Vec::new(),
        }
    }

    fn hash(key: &[u64]) -> u64 {
        FastHash.hash_one(key)
    }

    /// The value of `key`, inserted with `init` when missing; `true` when inserted.
    fn entry(&mut self, key: &[u64], init: impl FnOnce() -> V) -> (&mut V, bool) {
        let (i, new) = self.entry_index(key, init);
        (&mut self.entries[i].2, new)
    }

    /// The index of `key`'s entry (entries keep their index), inserted with `init` when
    /// missing; `true` when inserted.
    fn entry_index(&mut self, key: &[u64], init: impl FnOnce() -> V) -> (usize, bool) {
        let h = Self::hash(key);
        match self.find(h, key) {
            Ok(e) => (e, false),
            Err(slot) => {
                self.insert_at(slot, h, key.into(), init());
                (self.entries.len() - 1, true)
            }
        }
    }

    /// Adds `value` under `key` (hashed `h`) when the key is new, else `merge`s it into
    /// the value already there; the entry's index. (A merge moves the boxed key in
    /// instead of copying it.)
    fn merge_entry(
        &mut self,
        h: u64,
        key: Box<[u64]>,
        value: V,
        merge: impl FnOnce(&mut V, V),
    ) -> usize {
        match self.find(h, &key) {
            Ok(e) => {
                merge(&mut self.entries[e].2, value);
                e
            }
            Err(slot) => {
                self.insert_at(slot, h, key, value);
                self.entries.len() - 1
            }
        }
    }

    /// The entry of `key` (hashed `h`), or the free slot where it goes (the table has
    /// room for one more entry afterwards).
    fn find(&mut self, h: u64, key: &[u64]) -> Result<usize, usize> {
        if (self.entries.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = h as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return Err(i);
            }
            let e = &self.entries[slot as usize];
            if e.0 == h && *e.1 == *key {
                return Ok(slot as usize);
            }
            i = (i + 1) & mask;
        }
    }

    fn insert_at(&mut self, slot: usize, h: u64, key: Box<[u64]>, value: V) -> &mut V {
        self.slots[slot] = self.entries.len() as u32;
        self.entries.push((h, key, value));
        let last = self.entries.len() - 1;
        &mut self.entries[last].2
    }

    fn grow(&mut self) {
        let n = self.slots.len() * 2;
        self.slots = vec![EMPTY; n];
        let mask = n - 1;
        for (k, e) in self.entries.iter().enumerate() {
            let mut i = e.0 as usize & mask;
            while self.slots[i] != EMPTY {
                i = (i + 1) & mask;
            }
            self.slots[i] = k as u32;
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn into_entries(self) -> Vec<(u64, Box<[u64]>, V)> {
        self.entries
    }
}

/// The key of a raw edge (`a → b`) or range (`[a, b]`): 32 million of them are looked
/// up per million 32-entry samples, so it is compared field by field and hashed with a
/// multiply-rotate hash rather than as a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct PairKey {
    /// The sample's epoch; with a `--comm` filter ([`FoldOpts::per_head`]), the index of
    /// its head in [`Raw::heads`] instead.
    epoch: u64,
    /// `pid | mode_code << 32` of the sample.
    ctx: u64,
    a: u64,
    b: u64,
}

impl PairKey {
    fn pid(&self) -> u32 {
        self.ctx as u32
    }
    /// The mode the addresses resolve in.
    fn mode(&self) -> CpuMode {
        branch_mode(mode_of(self.ctx >> 32))
    }
}

type PairMap<V> = HashMap<PairKey, V, PairHash>;

/// The raw-key tables are keyed by a few integers each: the one hasher ([`FastHash`]).
type PairHash = FastHash;

/// No entry gave a kind yet.
const NO_KIND: u64 = u64::MAX;

/// The branch stacks of some samples, counted.
#[derive(Clone, Copy, Debug, Default)]
struct BranchTotals {
    entries: u64,
    /// Samples with at least one entry.
    samples: u64,
    max_depth: u64,
}

impl BranchTotals {
    fn add_stack(&mut self, n: u64) {
        self.entries += n;
        self.samples += 1;
        self.max_depth = self.max_depth.max(n);
    }

    fn merge(&mut self, o: &BranchTotals) {
        self.entries += o.entries;
        self.samples += o.samples;
        self.max_depth = self.max_depth.max(o.max_depth);
    }
}

/// What samples fold into: per chunk, or merged, per part of the file or the whole.
struct Raw {
    stacks: WordMap<Group>,
    /// `[epoch, pid, mode, ip, from...]` of LBR call stacks.
    lbr_stacks: WordMap<Group>,
    /// Raw edges, with the position (chunk index << 40 | entry number) of the first
    /// entry that gave their kind: where raw edges resolve to one edge, the earliest
    /// decides its kind, as in the stream.
    edges: PairMap<(EdgeCounts, u64)>,
    /// Raw fall-through ranges `[start, end]` with the `from` of the branch that started
    /// them, and how often they were run.
    ranges: HashMap<(PairKey, u64), u64, PairHash>,
    /// Of every sample folded, or with [`FoldOpts::per_head`], of none (see `heads`).
    branches: BranchTotals,
    /// With [`FoldOpts::per_head`]: the heads (`[epoch, pid | tid << 32, mode word, 0]`,
    /// as raw stack keys start, without the IP: see [`head_of`]) of the samples with
    /// branch stacks, and their branch totals; raw edges and ranges name their sample's
    /// head by its index here. A head is kept or dropped with the raw stacks that start
    /// with it.
    heads: WordMap<BranchTotals>,
    /// Samples the `--pid`/`--tid` filter dropped.
    filtered_out: u64,
    /// How the stack copies of `--call-graph dwarf` samples unwound.
    unwind: UnwindStats,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            stacks: WordMap::new(),
            lbr_stacks: WordMap::new(),
            edges: PairMap::default(),
            ranges: HashMap::default(),
            branches: BranchTotals::default(),
            heads: WordMap::new(),
            filtered_out: 0,
            unwind: UnwindStats::default(),
        }
    }
}

impl Raw {
    /// `self` and `other` (another part of the input) together, in either order: an
    /// edge's kind goes by the recorded positions.
    fn merge(mut self, later: Raw) -> Raw {
        for (h, k, g) in later.stacks.into_entries() {
            self.stacks.merge_entry(h, k, g, |v, g| v.merge(&g));
        }
        for (h, k, g) in later.lbr_stacks.into_entries() {
            self.lbr_stacks.merge_entry(h, k, g, |v, g| v.merge(&g));
        }
        // `later`'s head indices, as `self`'s (none without per-head keys).
        let heads: Vec<u64> = later
            .heads
            .into_entries()
            .into_iter()
            .map(|(h, k, t)| self.heads.merge_entry(h, k, t, |v, t| v.merge(&t)) as u64)
            .collect();
        let head = |mut k: PairKey| {
            if !heads.is_empty() {
                k.epoch = heads[k.epoch as usize];
            }
            k
        };
        for (k, (e, at)) in later.edges {
            let (v, v_at) = self
                .edges
                .entry(head(k))
                .or_insert((EdgeCounts::default(), NO_KIND));
            // The earlier entry's kind, whichever part holds it.
            let earlier = e.kind != BranchKind::Unknown && at < *v_at;
            v.merge(&e);
            if earlier {
                v.kind = e.kind;
                *v_at = at;
            }
        }
        for ((k, origin), n) in later.ranges {
            *self.ranges.entry((head(k), origin)).or_default() += n;
        }
        self.branches.merge(&later.branches);
        self.filtered_out += later.filtered_out;
        self.unwind.add(&later.unwind);
        self
    }
}

/// What folding keeps of the aggregation options.
#[derive(Clone, Copy)]
struct FoldOpts<'a> {
    /// Raw stacks keep the thread (for filters and root frames that need it).
    keep_tid: bool,
    lbr_call_stack: bool,
    /// `--pid`/`--tid`/`--time` (empty: all).
    filter: &'a Filter,
    /// The start times of the runs of a `record --repeat` recording (empty: one run).
    run_starts: &'a [u64],
    /// A `--comm` filter: whether a sample is kept depends on the side-band state at
    /// its epoch (its thread's command), known only when the raw keys are resolved. The
    /// branch tables are then keyed by the sample's head ([`Raw::heads`]), so that its
    /// edges and ranges follow its stack's verdict.
    per_head: bool,
}

impl<'a> FoldOpts<'a> {
    fn new(opts: &'a AggregateOptions) -> Self {
        let f = &opts.filter;
        FoldOpts {
            keep_tid: !f.tids.is_empty() || !f.comms.is_empty() || opts.comm_root || opts.tasks,
            lbr_call_stack: opts.lbr_call_stack,
            filter: f,
            run_starts: &opts.run_starts,
            per_head: !f.comms.is_empty(),
        }
    }
}

/// Folds samples into a [`Raw`] (one per thread).
struct Folder<'a> {
    raw: Raw,
    opts: FoldOpts<'a>,
    /// The unwinder's per-thread state, made when the first stack copy is met.
    cache: Option<ScanCache>,
    key: Vec<u64>,
    /// The position of the last branch entry folded.
    at: u64,
}

impl<'a> Folder<'a> {
    fn new(opts: FoldOpts<'a>) -> Self {
        Folder {
            raw: Raw::default(),
            opts,
            cache: None,
            key: Vec::with_capacity(256),
            at: 0,
        }
    }

    /// Folds the samples of `chunk`; positions (which decide an edge's kind) follow its
    /// index.
    fn fold_chunk(&mut self, chunk: &impl SampleChunk) -> Result<(), SourceError> {
        self.at = (chunk.index() as u64) << 40;
        let unwinder = chunk.unwinder();
        chunk.for_each_sample(|s| self.add(&s, unwinder))
    }

    /// Folds one sample; `unwinder` unwinds its stack copy, if it has one.
    #[inline]
    fn add(&mut self, s: &SampleRef<'_>, unwinder: Option<&ScanUnwinder>) {
        let (opts, raw, key) = (&self.opts, &mut self.raw, &mut self.key);
        // As the aggregator's filter: a dropped sample adds nothing but this count.
        let f = opts.filter;
        if (!f.pids.is_empty() && !f.pids.contains(&s.pid))
            || (!f.tids.is_empty() && !f.tids.contains(&s.tid))
            || !f.keeps_time(s.time_ns)
        {
            raw.filtered_out += 1;
            return;
        }
        let tid = if opts.keep_tid {
            u64::from(s.tid) << 32
        } else {
            0
        };
        let mode = mode_code(s.mode);
        let chain = match s.callchain.words() {
            ChainWords::Perf => PERF_CHAIN,
            ChainWords::Frames => 0,
        };
        let run = match opts.run_starts {
            [] => 0,
            starts => (run_of(starts, s.time_ns) as u64) << RUN_SHIFT,
        };
        let head = [s.epoch, u64::from(s.pid) | tid, mode | chain | run, s.ip];
        key.clear();
        key.extend(head);
        match (unwinder, s.stack_copy, s.callchain) {
            (Some(u), Some(copy), Callchain::PerfWords(_)) => {
                // The kernel's part of the call chain, then the walk of the copy.
                key.extend(
                    s.callchain
                        .perf_words()
                        .take_while(|&w| w != PERF_CONTEXT_USER),
                );
                key.push(PERF_CONTEXT_USER);
                let before = key.len();
                let cache = self.cache.get_or_insert_with(ScanCache::default);
                let outcome = u.unwind(cache, s.epoch, copy.regs, copy.stack, key);
                raw.unwind.count(outcome, key.len() - before);
            }
            _ => s.callchain.push_key_words(key),
        }
        let (g, new) = raw.stacks.entry(key, || Group::new(s.period, s.time_ns));
        if !new {
            g.add(s.period, s.time_ns);
        }
        if s.branches.is_empty() {
            return;
        }
        let n = s.branches.len() as u64;
        let pid = u64::from(s.pid);
        // The first word of the raw edge and range keys: the epoch, or the head.
        let mut epoch = s.epoch;
        if opts.per_head {
            let (i, _) = raw
                .heads
                .entry_index(&head_of(&head), BranchTotals::default);
            raw.heads.entries[i].2.add_stack(n);
            epoch = i as u64;
        } else {
            raw.branches.add_stack(n);
        }
        if opts.lbr_call_stack {
            key.clear();
            if opts.per_head {
                key.extend(head);
            } else {
                key.extend([s.epoch, pid, mode, s.ip]);
            }
            key.extend(s.branches.iter().map(|b| b.from));
            let (g, new) = raw
                .lbr_stacks
                .entry(key, || Group::new(s.period, s.time_ns));
            if !new {
                g.add(s.period, s.time_ns);
            }
        }
        let ctx = pid | mode << 32;
        // One loop per representation, not a match per entry.
        match s.branches {
            BranchStack::Decoded(b) => {
                fold_branches(raw, &mut self.at, epoch, ctx, b.iter().copied());
            }
            BranchStack::PerfEntries(_) => {
                fold_branches(raw, &mut self.at, epoch, ctx, s.branches.iter());
            }
        }
    }
}

/// Folds a branch stack (newest entry first) of a sample of `epoch` (or head) and `ctx`
/// (see [`PairKey`]) into the raw edge and fall-through tables; `at` numbers the entries.
fn fold_branches(
    raw: &mut Raw,
    at: &mut u64,
    epoch: u64,
    ctx: u64,
    branches: impl Iterator<Item = Branch>,
) {
    let pair = |a, b| PairKey { epoch, ctx, a, b };
    let mut newer_from: Option<u64> = None;
    for b in branches {
        *at += 1;
        let (e, kind_at) = raw
            .edges
            .entry(pair(b.from, b.to))
            .or_insert((EdgeCounts::default(), NO_KIND));
        e.add_entry(&b.flags);
        // A thread's table holds chunks in any order: the earliest entry with a kind
        // gives it, wherever it was met.
        if b.flags.kind != BranchKind::Unknown && *at < *kind_at {
            e.kind = b.flags.kind;
            *kind_at = *at;
        }
        if let Some(nf) = newer_from
            && b.to != 0
            && b.to <= nf
            && nf - b.to < MAX_RANGE_BYTES
        {
            *raw.ranges.entry((pair(b.to, nf), b.from)).or_default() += 1;
        }
        newer_from = (b.from != 0).then_some(b.from);
    }
}

/// The head of a raw stack key as [`Raw::heads`] keys it: its first words without the
/// IP, which a `--comm` verdict does not depend on (keyed by IP, the branch tables
/// would hold a copy of every edge per sampled address).
fn head_of(key: &[u64]) -> [u64; HEAD] {
    [key[0], key[1], key[2], 0]
}

/// Whether the folder builds the profile for these options from a source whose samples
/// may carry branch stacks (`branch_stacks`) or not; else the aggregator visits the
/// samples in stream order ([`crate::aggregate::aggregate_in_order`]).
pub(crate) fn supports(opts: &AggregateOptions, branch_stacks: bool) -> bool {
    // Raw keys merge samples: those need each one, in stream order.
    !opts.vm
        && !opts.timeline
        // A `--dso` verdict depends on the sampled IP's module: the branch tables would
        // need a copy of every edge per sampled address.
        && (opts.filter.dsos.is_empty() || !branch_stacks)
}

/// Builds the profile of `source`'s samples (see the module docs); the source's error
/// when it cannot give them all. Check [`supports`] first.
pub(crate) fn fold_source<S: SampleSource>(
    source: &mut S,
    opts: &AggregateOptions,
) -> Result<Profile, SourceError> {
    let fold = FoldOpts::new(opts);
    // One folder per thread of the pool (and one for a caller outside it).
    let threads = rayon::current_num_threads() + 1;
    let folders: Vec<Mutex<Folder<'_>>> = (0..threads)
        .map(|_| Mutex::new(Folder::new(fold)))
        .collect();
    // The first chunk (in input order) that could not be read: the chunks after it need
    // no work, the read fails.
    let failed: Mutex<Option<(usize, SourceError)>> = Mutex::new(None);
    let first_failed = AtomicUsize::new(usize::MAX);
    let in_flight = AtomicUsize::new(0);
    let walked = rayon::scope(|s| {
        source.walk(&mut |chunk| {
            let (folders, failed, first_failed) = (&folders, &failed, &first_failed);
            spawn_throttled(s, &in_flight, move || {
                let index = chunk.index();
                if index > first_failed.load(Ordering::Relaxed) {
                    return;
                }
                let t = rayon::current_thread_index().map_or(threads - 1, |t| t.min(threads - 1));
                let mut folder = folders[t].lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = folder.fold_chunk(&chunk) {
                    let mut f = failed.lock().unwrap_or_else(|e| e.into_inner());
                    if f.as_ref().is_none_or(|(i, _)| index < *i) {
                        first_failed.fetch_min(index, Ordering::Relaxed);
                        *f = Some((index, e));
                    }
                }
            });
        })
    });
    walked?;
    let raw = folders
        .into_iter()
        .map(|f| f.into_inner().unwrap_or_else(|e| e.into_inner()).raw)
        .reduce(Raw::merge)
        .unwrap_or_default();
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    source.finish(
        failed,
        Folded {
            branch_entries: raw.branches.entries
                + raw.heads.entries.iter().map(|e| e.2.entries).sum::<u64>(),
            unwind: raw.unwind,
        },
    )?;
    Ok(resolve(raw, source.steps(), opts.clone()))
}

/// Folds a chunk handed out by the walk (`fold`) on the pool of scope `s`; then, while
/// more chunks are in flight (`in_flight`: handed out, not folded yet) than the pool has
/// threads, the walk's thread helps fold them. Chunks in flight keep their pages mapped,
/// so resident memory stays a few chunks even when the folding falls behind the walk.
fn spawn_throttled<'s>(
    s: &rayon::Scope<'s>,
    in_flight: &'s AtomicUsize,
    fold: impl FnOnce() + Send + 's,
) {
    in_flight.fetch_add(1, Ordering::SeqCst);
    s.spawn(move |_| {
        fold();
        in_flight.fetch_sub(1, Ordering::SeqCst);
    });
    while in_flight.load(Ordering::SeqCst) > rayon::current_num_threads() + 1 {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::yield_now();
        }
    }
}

/// Per epoch, the raw entries to add before the side-band state changes again.
#[derive(Default)]
struct Epoch {
    stacks: Vec<(Box<[u64]>, Group)>,
    lbr_stacks: Vec<(Box<[u64]>, Group)>,
    /// With the position that gave their kind.
    edges: Vec<(u64, PairKey, EdgeCounts)>,
    ranges: Vec<((PairKey, u64), u64)>,
    /// With [`FoldOpts::per_head`]: the heads of the epoch's samples with branch stacks,
    /// by index.
    heads: Vec<(usize, Box<[u64]>, BranchTotals)>,
}

/// The profile of `raw`: the side-band events replayed through an [`Aggregator`] in
/// `steps`' order, each epoch's raw entries added at its [`Step::Epoch`] (epoch 0 first;
/// epochs no step names last, in order).
fn resolve<'e>(
    raw: Raw,
    steps: impl IntoIterator<Item = Step<'e>>,
    opts: AggregateOptions,
) -> Profile {
    let raw_stacks = raw.stacks.len();
    let per_head = raw.heads.len() > 0;
    let mut epochs: HashMap<u64, Epoch> = HashMap::new();
    // The epoch of each head.
    let mut head_epochs = Vec::with_capacity(raw.heads.len());
    for (i, (_, k, t)) in raw.heads.into_entries().into_iter().enumerate() {
        head_epochs.push(k[0]);
        epochs.entry(k[0]).or_default().heads.push((i, k, t));
    }
    let epoch_of = |k: &PairKey| match per_head {
        true => head_epochs[k.epoch as usize],
        false => k.epoch,
    };
    for (_, k, g) in raw.stacks.into_entries() {
        epochs.entry(k[0]).or_default().stacks.push((k, g));
    }
    for (_, k, g) in raw.lbr_stacks.into_entries() {
        epochs.entry(k[0]).or_default().lbr_stacks.push((k, g));
    }
    for (k, (e, at)) in raw.edges {
        epochs
            .entry(epoch_of(&k))
            .or_default()
            .edges
            .push((at, k, e));
    }
    for (k, n) in raw.ranges {
        epochs
            .entry(epoch_of(&k.0))
            .or_default()
            .ranges
            .push((k, n));
    }
    let mut replay = Replay {
        agg: Aggregator::new(opts),
        kept_heads: vec![false; head_epochs.len()],
        branches: raw.branches,
    };
    // Raw stacks resolve to at most as many stacks (those that differ only in their
    // epoch, or in their thread, resolve to one).
    replay.agg.reserve_stacks(raw_stacks);
    if let Some(e) = epochs.remove(&0) {
        replay.apply_epoch(e);
    }
    for step in steps {
        match step {
            Step::Event(ev) => replay.agg.add(ev),
            Step::Epoch(id) => {
                if let Some(e) = epochs.remove(&id) {
                    replay.apply_epoch(e);
                }
            }
        }
    }
    // (Every epoch has its step; nothing is left unless the source is inconsistent.)
    let mut rest: Vec<_> = epochs.into_iter().collect();
    rest.sort_unstable_by_key(|(id, _)| *id);
    for (_, e) in rest {
        replay.apply_epoch(e);
    }
    let mut profile = replay.agg.finish();
    let t = &mut profile.totals;
    let b = replay.branches;
    t.branch_entries += b.entries;
    t.samples_with_branches += b.samples;
    t.max_branch_depth = t.max_branch_depth.max(b.max_depth);
    t.filtered_out += raw.filtered_out;
    profile
}

/// The raw entries being added to an [`Aggregator`], epoch by epoch.
struct Replay {
    agg: Aggregator,
    /// With [`FoldOpts::per_head`]: by head index, whether the filters keep its samples.
    kept_heads: Vec<bool>,
    /// The branch totals of the samples kept.
    branches: BranchTotals,
}

impl Replay {
    /// Adds an epoch's raw entries.
    fn apply_epoch(&mut self, mut e: Epoch) {
        let agg = &mut self.agg;
        let per_head = !self.kept_heads.is_empty();
        // With per-head keys, the heads of the raw stacks the filters kept.
        let mut kept: HashSet<[u64; HEAD], PairHash> = HashSet::default();
        let mut sample = HostSample::default();
        for (k, g) in e.stacks {
            let mode = mode_of(k[2]);
            let words = if k[2] & PERF_CHAIN != 0 {
                ChainWords::Perf
            } else {
                ChainWords::Frames
            };
            sample.pid = k[1] as u32;
            sample.tid = (k[1] >> 32) as u32;
            sample.mode = mode;
            sample.ip = k[3];
            sample.time_ns = g.first;
            sample.callchain = frames_of_key(&k[HEAD..], words, mode);
            let added = agg.add_counted(
                &SampleRef::of_host(&sample, 0),
                SampleCounts {
                    samples: g.samples,
                    weight: g.weight,
                    first_time_ns: g.first,
                    last_time_ns: g.last,
                },
            );
            if per_head && added.is_some() {
                kept.insert(head_of(&k));
            }
        }
        for (i, k, t) in e.heads {
            if kept.contains(&head_of(&k)) {
                self.kept_heads[i] = true;
                self.branches.merge(&t);
            }
        }
        for (k, g) in e.lbr_stacks {
            if per_head && !kept.contains(&head_of(&k)) {
                continue;
            }
            let (pid, mode) = (k[1] as u32, mode_of(k[2]));
            agg.add_lbr_stack(
                pid,
                mode,
                k[3],
                branch_mode(mode),
                &k[HEAD..],
                g.samples,
                g.weight,
            );
        }
        let kept_heads = &self.kept_heads;
        let keeps = |k: &PairKey| !per_head || kept_heads[k.epoch as usize];
        // Input order, so the earliest entry decides a shared edge's kind.
        e.edges.sort_unstable_by_key(|(at, k, _)| (*at, *k));
        for (_, k, c) in e.edges.iter().filter(|(_, k, _)| keeps(k)) {
            agg.add_edge_counts(k.pid(), k.mode(), k.a, k.b, c);
        }
        for ((k, origin), n) in e.ranges.into_iter().filter(|((k, _), _)| keeps(k)) {
            agg.add_range_count(k.pid(), k.mode(), [origin, k.a, k.b], n);
        }
    }
}

#[cfg(test)]
mod perfdata_tests;
#[cfg(test)]
mod recording_tests;
