//! Stage one for perf.data, the fast way: aggregation straight from the mmapped file
//! ([`lbrprof_data::perfdata::mapped::Scan`]), on every core, without an event or a
//! `Vec` per sample.
//!
//! The walk of the record headers hands out each chunk of the data section as soon as
//! the epochs of its samples are known ([`aggregate_input`]); while it goes on, the
//! other cores fold the chunks (so the file is read once, while its pages are mapped,
//! and walking overlaps folding) into tables keyed by the *raw* sample: its epoch (the
//! side-band state of its process it was taken in), process, mode, IP and the call
//! chain's words as recorded. Branch stacks go into raw edge, fall-through and
//! LBR-call-stack tables the same way. Each chunk's tables are merged into the file's as
//! soon as they are folded; then the side-band events are replayed through an
//! [`Aggregator`] in perf's order, each epoch's raw entries resolved and added right
//! after the event that starts it: the [`Profile`] is the one
//! [`crate::aggregate_events`] builds from the event stream, at a fraction of the cost,
//! since only unique raw stacks are ever resolved.
//!
//! Not handled here (the caller reads the event stream instead): `record --vm`
//! recordings, and filters on files with branch stacks (the raw branch tables do not
//! keep the thread and IP a filter needs).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lbrprof_data::dwarf::{ScanCache, ScanUnwinder, UnwindStats};
use lbrprof_data::input::Input;
use lbrprof_data::model::{CpuMode, Frame, HostSample};
use lbrprof_data::perfdata::abi::PERF_CONTEXT_USER;
use lbrprof_data::perfdata::callchain_frames;
use lbrprof_data::perfdata::mapped::{CHUNK_SIZE, SampleRef, Scan, ScanError};
use rayon::prelude::*;

use crate::aggregate::{
    AggregateOptions, Aggregator, EdgeCounts, FastHash, FastMap, MAX_RANGE_BYTES, Profile,
    SampleCounts, branch_mode,
};

/// Samples with one raw key, summed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Group {
    samples: u64,
    weight: u64,
    first: u64,
    last: u64,
}

impl Group {
    pub(crate) fn new(weight: u64, time: u64) -> Self {
        Group {
            samples: 1,
            weight,
            first: time,
            last: time,
        }
    }
    pub(crate) fn add(&mut self, weight: u64, time: u64) {
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

/// Raw keys are `u64` words: `[epoch, pid | tid << 32, mode, ip, words...]`.
pub(crate) const HEAD: usize = 4;

/// A table keyed by word slices (open addressing, linear probing): `std`'s `HashMap`
/// would hash each new key twice (lookup by slice, then insert by box), and merging
/// would hash every key again.
pub(crate) struct WordMap<V> {
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
    pub(crate) fn entry(&mut self, key: &[u64], init: impl FnOnce() -> V) -> (&mut V, bool) {
        let h = Self::hash(key);
        match self.find(h, key) {
            Ok(e) => (&mut self.entries[e].2, false),
            Err(slot) => (self.insert_at(slot, h, key.into(), init()), true),
        }
    }

    /// Adds `value` under `key` (hashed `h`) when the key is new; else gives it back with
    /// the value already there. (A merge moves the boxed key in instead of copying it.)
    fn entry_owned(&mut self, h: u64, key: Box<[u64]>, value: V) -> Option<(&mut V, V)> {
        match self.find(h, &key) {
            Ok(e) => Some((&mut self.entries[e].2, value)),
            Err(slot) => {
                self.insert_at(slot, h, key, value);
                None
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

/// What one chunk (or, merged, the whole file) folds into.
pub(crate) struct Raw {
    pub(crate) stacks: WordMap<Group>,
    /// `[epoch, pid, mode, ip, from...]` of LBR call stacks.
    pub(crate) lbr_stacks: WordMap<Group>,
    /// `[epoch, pid, mode, from, to]`.
    pub(crate) edges: FastMap<[u64; 5], EdgeCounts>,
    /// `[epoch, pid, mode, start, end, origin]` (origin: the `from` of the branch that
    /// started the range).
    pub(crate) ranges: FastMap<[u64; 6], u64>,
    pub(crate) branch_entries: u64,
    pub(crate) samples_with_branches: u64,
    pub(crate) max_branch_depth: u64,
    /// How the stack copies of `--call-graph dwarf` samples unwound.
    pub(crate) unwind: UnwindStats,
}

pub(crate) fn mode_code(m: CpuMode) -> u64 {
    match m {
        CpuMode::Unknown => 0,
        CpuMode::Kernel => 1,
        CpuMode::User => 2,
        CpuMode::Hypervisor => 3,
        CpuMode::GuestKernel => 4,
        CpuMode::GuestUser => 5,
    }
}

pub(crate) fn mode_of(code: u64) -> CpuMode {
    match code {
        1 => CpuMode::Kernel,
        2 => CpuMode::User,
        3 => CpuMode::Hypervisor,
        4 => CpuMode::GuestKernel,
        5 => CpuMode::GuestUser,
        _ => CpuMode::Unknown,
    }
}

/// Folds the samples `run` walks (a chunk's) into a [`Raw`], with what `run` returns.
/// With `dwarf`, samples with stack copies get their user frames from the walk of the
/// copy, after the kernel's part of the call chain (as a `PERF_CONTEXT_USER` part).
fn fold_with<T>(
    run: impl FnOnce(&mut dyn FnMut(SampleRef<'_>)) -> Result<T, ScanError>,
    keep_tid: bool,
    lbr_call_stack: bool,
    dwarf: Option<&ScanUnwinder>,
) -> Result<(Raw, T), ScanError> {
    // The scan only reads little-endian files.
    let le = true;
    let mut raw = fold_empty();
    let mut key: Vec<u64> = Vec::with_capacity(256);
    let mut cache = ScanCache::default();
    let out = run(&mut |s: SampleRef<'_>| {
        let r = &s.raw;
        let tid = if keep_tid { u64::from(r.tid) << 32 } else { 0 };
        let mode = mode_code(s.mode);
        key.clear();
        key.extend([s.epoch, u64::from(r.pid) | tid, mode, r.ip]);
        match dwarf.and_then(|u| Some((u, r.user_regs(le, s.regs_user)?))) {
            Some((u, regs)) => {
                key.extend(
                    r.callchain_words(le)
                        .take_while(|&w| w != PERF_CONTEXT_USER),
                );
                key.push(PERF_CONTEXT_USER);
                let before = key.len();
                let outcome = u.unwind(&mut cache, s.epoch, regs, r.user_stack, &mut key);
                raw.unwind.count(outcome, key.len() - before);
            }
            None => key.extend(r.callchain_words(le)),
        }
        let (g, new) = raw.stacks.entry(&key, || Group::new(r.period, r.time_ns));
        if !new {
            g.add(r.period, r.time_ns);
        }
        if r.branches.is_empty() {
            return;
        }
        let n = r.branches.len() / lbrprof_data::perfdata::BRANCH_ENTRY_LEN;
        raw.branch_entries += n as u64;
        raw.samples_with_branches += 1;
        raw.max_branch_depth = raw.max_branch_depth.max(n as u64);
        let (epoch, pid) = (s.epoch, u64::from(r.pid));
        if lbr_call_stack {
            key.clear();
            key.extend([epoch, pid, mode, r.ip]);
            key.extend(r.branch_entries(le).map(|b| b.from));
            let (g, new) = raw
                .lbr_stacks
                .entry(&key, || Group::new(r.period, r.time_ns));
            if !new {
                g.add(r.period, r.time_ns);
            }
        }
        let mut newer_from: Option<u64> = None;
        for b in r.branch_entries(le) {
            raw.edges
                .entry([epoch, pid, mode, b.from, b.to])
                .or_default()
                .add_entry(&b.flags);
            if let Some(nf) = newer_from
                && b.to != 0
                && b.to <= nf
                && nf - b.to < MAX_RANGE_BYTES
            {
                *raw.ranges
                    .entry([epoch, pid, mode, b.to, nf, b.from])
                    .or_default() += 1;
            }
            newer_from = (b.from != 0).then_some(b.from);
        }
    })?;
    Ok((raw, out))
}

/// Merges `b` into `a` (`a` holds the earlier part of the file).
pub(crate) fn merge(mut a: Raw, b: Raw) -> Raw {
    for (h, k, g) in b.stacks.into_entries() {
        if let Some((v, g)) = a.stacks.entry_owned(h, k, g) {
            v.merge(&g);
        }
    }
    for (h, k, g) in b.lbr_stacks.into_entries() {
        if let Some((v, g)) = a.lbr_stacks.entry_owned(h, k, g) {
            v.merge(&g);
        }
    }
    for (k, e) in b.edges {
        let v = a.edges.entry(k).or_default();
        v.merge(&e);
    }
    for (k, n) in b.ranges {
        *a.ranges.entry(k).or_default() += n;
    }
    a.branch_entries += b.branch_entries;
    a.samples_with_branches += b.samples_with_branches;
    a.max_branch_depth = a.max_branch_depth.max(b.max_branch_depth);
    a.unwind.add(&b.unwind);
    a
}

/// Whether [`aggregate_scan`] can build the profile for these options and this file.
pub fn supports(scan: &Scan, opts: &AggregateOptions) -> bool {
    !opts.vm
        && !opts.timeline
        && opts.run_starts.is_empty()
        // Raw stacks merge samples of different times.
        && opts.filter.times.is_empty()
        && (opts.filter.is_empty() || !scan.has_branch_stacks())
}

/// Builds the profile of a scanned perf.data file (see the module docs); also returns
/// the number of branch entries decoded. Check [`supports`] first.
pub fn aggregate_scan(scan: &Scan, opts: AggregateOptions) -> Result<(Profile, u64), ScanError> {
    let keep_tid = keep_tid(&opts);
    let lbr_call_stack = opts.lbr_call_stack;
    let parts: Vec<Raw> = (0..scan.chunks())
        .into_par_iter()
        .map(|c| {
            fold_with(
                |f| scan.for_each_sample(c, f),
                keep_tid,
                lbr_call_stack,
                None,
            )
            .map(|(r, ())| r)
        })
        .collect::<Result<_, _>>()?;
    let raw = parts.into_iter().reduce(merge).unwrap_or_else(fold_empty);
    Ok(resolve(scan, raw, opts))
}

/// Whether raw stacks keep the thread (for filters and root frames that need it).
fn keep_tid(opts: &AggregateOptions) -> bool {
    !opts.filter.tids.is_empty() || !opts.filter.comms.is_empty() || opts.comm_root || opts.tasks
}

/// What [`aggregate_input`] did.
pub enum FastPath {
    /// The profile, and the number of branch entries decoded.
    Done(Box<Profile>, u64),
    /// The file needs the event stream; the input is untouched.
    NotScanned,
    /// The file was walked but the profile could not be built that way (a malformed
    /// sample, options the fast path does not handle): the input's stream is consumed;
    /// open the file again and read the stream, which reports what is wrong.
    Failed,
}

/// The fast path from an open input: the walk hands out chunks as it goes
/// ([`lbrprof_data::input::Input::perf_scan_with`]), which the other cores fold
/// meanwhile, each merged into the file's tables as soon as it is folded.
pub fn aggregate_input(input: &mut Input, opts: &AggregateOptions) -> FastPath {
    aggregate_input_chunked(input, opts, CHUNK_SIZE)
}

/// [`aggregate_input`] with chunks of `chunk_size` bytes.
fn aggregate_input_chunked(
    input: &mut Input,
    opts: &AggregateOptions,
    chunk_size: usize,
) -> FastPath {
    if opts.vm || opts.timeline || !opts.filter.times.is_empty() {
        return FastPath::NotScanned;
    }
    if input.perf_has_stack_copies() {
        return aggregate_unwinding(input, opts, chunk_size);
    }
    let keep_tid = keep_tid(opts);
    let lbr_call_stack = opts.lbr_call_stack;
    // The tables of the chunks folded so far (so memory follows the variety of the
    // samples, not their number), and whether a chunk could not be decoded.
    let merged: Mutex<Option<Raw>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let in_flight = AtomicUsize::new(0);
    let scan = rayon::scope(|s| {
        input.perf_scan_with(chunk_size, &mut |chunk| {
            let (merged, failed) = (&merged, &failed);
            spawn_throttled(s, &in_flight, move || {
                match fold_with(|f| chunk.for_each_sample(f), keep_tid, lbr_call_stack, None) {
                    Ok((raw, ())) => {
                        let mut m = merged.lock().unwrap_or_else(|e| e.into_inner());
                        *m = Some(match m.take() {
                            Some(acc) => merge(acc, raw),
                            None => raw,
                        });
                    }
                    Err(_) => failed.store(true, Ordering::SeqCst),
                }
            });
        })
    });
    let Some(scan) = scan else {
        return FastPath::NotScanned;
    };
    if failed.load(Ordering::SeqCst) || !supports(&scan, opts) {
        return FastPath::Failed;
    }
    let raw = merged
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(fold_empty);
    let (profile, branch_entries) = resolve(&scan, raw, opts.clone());
    FastPath::Done(Box::new(profile), branch_entries)
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

/// The fast path for a perf.data file with stack copies (`perf record --call-graph
/// dwarf`), pipelined as [`aggregate_input`]: each chunk comes with the side-band events
/// that give its samples' epochs their state ([`lbrprof_data::perfdata::mapped::Chunk::take_sideband`]),
/// replayed through the [`ScanUnwinder`] (on the walk's thread, in perf's order) before
/// the chunk is folded on any core, each sample unwound against its process's mappings at
/// its epoch. So the unwinding overlaps the walk, and reads each chunk soon after the walk
/// has read it. The chunks' tables are merged in file order, as they would be one after
/// another, so the result does not depend on which chunk was folded first.
fn aggregate_unwinding(input: &mut Input, opts: &AggregateOptions, chunk_size: usize) -> FastPath {
    let unwinder = ScanUnwinder::default();
    let (keep_tid, lbr_call_stack) = (keep_tid(opts), opts.lbr_call_stack);
    // The tables merged so far (chunks 0..next), and those folded out of order.
    let merged: Mutex<(Raw, usize, BTreeMap<usize, Raw>)> =
        Mutex::new((fold_empty(), 0, BTreeMap::new()));
    let failed = AtomicBool::new(false);
    let in_flight = AtomicUsize::new(0);
    let scan = rayon::scope(|s| {
        input.perf_scan_unwinding_with(chunk_size, &mut |mut chunk| {
            for (ev, epoch) in chunk.take_sideband() {
                unwinder.observe(&ev, epoch);
            }
            let (merged, failed, unwinder) = (&merged, &failed, &unwinder);
            spawn_throttled(s, &in_flight, move || {
                let folded = fold_with(
                    |f| chunk.for_each_sample(f),
                    keep_tid,
                    lbr_call_stack,
                    Some(unwinder),
                );
                match folded {
                    Ok((raw, ())) => {
                        let mut m = merged.lock().unwrap_or_else(|e| e.into_inner());
                        let (acc, next, early) = &mut *m;
                        early.insert(chunk.index, raw);
                        while let Some(raw) = early.remove(next) {
                            *acc = merge(std::mem::replace(acc, fold_empty()), raw);
                            *next += 1;
                        }
                    }
                    Err(_) => failed.store(true, Ordering::SeqCst),
                }
            });
        })
    });
    let Some(scan) = scan else {
        return FastPath::NotScanned;
    };
    if failed.load(Ordering::SeqCst) || !supports(&scan, opts) {
        return FastPath::Failed;
    }
    let (mut raw, _, early) = merged.into_inner().unwrap_or_else(|e| e.into_inner());
    // (Every chunk handed out was merged in turn; none is left unless one failed.)
    for (_, r) in early {
        raw = merge(raw, r);
    }
    // The events after the last chunk's: they count unusable mappings too.
    for (ev, epoch) in scan.sideband_epochs().skip(unwinder.observed()) {
        unwinder.observe(ev, epoch);
    }
    raw.unwind.unusable_mappings = unwinder.unusable_mappings();
    input.note_unwind_stats(raw.unwind);
    let (profile, branch_entries) = resolve(&scan, raw, opts.clone());
    FastPath::Done(Box::new(profile), branch_entries)
}

pub(crate) fn fold_empty() -> Raw {
    Raw {
        stacks: WordMap::new(),
        lbr_stacks: WordMap::new(),
        edges: FastMap::default(),
        ranges: FastMap::default(),
        branch_entries: 0,
        samples_with_branches: 0,
        max_branch_depth: 0,
        unwind: UnwindStats::default(),
    }
}

/// Per epoch, the raw entries to add before the side-band state changes again.
#[derive(Default)]
pub(crate) struct Epoch {
    stacks: Vec<(Box<[u64]>, Group)>,
    lbr_stacks: Vec<(Box<[u64]>, Group)>,
    edges: Vec<([u64; 5], EdgeCounts)>,
    ranges: Vec<([u64; 6], u64)>,
}

/// The raw entries of `raw` by epoch (edges in key order, so that file order decides an
/// edge's kind only through the merge), and the totals that need no resolving.
pub(crate) fn group_epochs(raw: Raw) -> (HashMap<u64, Epoch>, [u64; 3]) {
    let totals = [
        raw.branch_entries,
        raw.samples_with_branches,
        raw.max_branch_depth,
    ];
    let mut epochs: HashMap<u64, Epoch> = HashMap::new();
    for (_, k, g) in raw.stacks.into_entries() {
        epochs.entry(k[0]).or_default().stacks.push((k, g));
    }
    for (_, k, g) in raw.lbr_stacks.into_entries() {
        epochs.entry(k[0]).or_default().lbr_stacks.push((k, g));
    }
    let mut edges: Vec<_> = raw.edges.into_iter().collect();
    // File order decides an edge's kind when raw edges disagree; keep it stable.
    edges.sort_unstable_by_key(|(k, _)| *k);
    for (k, e) in edges {
        epochs.entry(k[0]).or_default().edges.push((k, e));
    }
    for (k, n) in raw.ranges {
        epochs.entry(k[0]).or_default().ranges.push((k, n));
    }
    (epochs, totals)
}

/// Adds the totals of [`group_epochs`] to a finished profile.
pub(crate) fn add_branch_totals(profile: &mut Profile, totals: [u64; 3]) {
    let t = &mut profile.totals;
    t.branch_entries += totals[0];
    t.samples_with_branches += totals[1];
    t.max_branch_depth = t.max_branch_depth.max(totals[2]);
}

fn resolve(scan: &Scan, raw: Raw, opts: AggregateOptions) -> (Profile, u64) {
    let branch_entries = raw.branch_entries;
    let raw_stacks = raw.stacks.len();
    let (mut epochs, totals) = group_epochs(raw);
    let mut agg = Aggregator::new(opts);
    // Raw stacks resolve to at most as many stacks (those that differ only in their
    // epoch, or in their thread, resolve to one).
    agg.reserve_stacks(raw_stacks);
    // Samples before any event of their process, then each epoch right after the event
    // that starts it.
    if let Some(e) = epochs.remove(&0) {
        apply_epoch(&mut agg, e, perf_frames);
    }
    for (ev, starts) in scan.sideband_epochs() {
        agg.add(ev);
        if let Some(e) = starts.and_then(|id| epochs.remove(&id)) {
            apply_epoch(&mut agg, e, perf_frames);
        }
    }
    // (Every epoch starts at an event; nothing is left unless the scan is inconsistent.)
    let mut rest: Vec<_> = epochs.into_iter().collect();
    rest.sort_unstable_by_key(|(id, _)| *id);
    for (_, e) in rest {
        apply_epoch(&mut agg, e, perf_frames);
    }
    let mut profile = agg.finish();
    add_branch_totals(&mut profile, totals);
    (profile, branch_entries)
}

/// A perf.data raw stack's call chain (perf's words, with context markers).
fn perf_frames(words: &[u64], mode: CpuMode) -> Vec<Frame> {
    callchain_frames(words.iter().copied(), mode)
}

/// Adds an epoch's raw entries; `frames` turns a raw stack's words after [`HEAD`] into
/// its call chain.
pub(crate) fn apply_epoch(
    agg: &mut Aggregator,
    e: Epoch,
    frames: fn(&[u64], CpuMode) -> Vec<Frame>,
) {
    let mut sample = HostSample::default();
    for (k, g) in e.stacks {
        let mode = mode_of(k[2]);
        sample.pid = k[1] as u32;
        sample.tid = (k[1] >> 32) as u32;
        sample.mode = mode;
        sample.ip = k[3];
        sample.time_ns = g.first;
        sample.callchain = if k.len() > HEAD {
            frames(&k[HEAD..], mode)
        } else {
            Vec::<Frame>::new()
        };
        agg.add_counted(
            &sample,
            SampleCounts {
                samples: g.samples,
                weight: g.weight,
                first_time_ns: g.first,
                last_time_ns: g.last,
            },
        );
    }
    for (k, g) in e.lbr_stacks {
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
    for (k, c) in e.edges {
        let (pid, mode) = (k[1] as u32, branch_mode(mode_of(k[2])));
        agg.add_edge_counts(pid, mode, k[3], k[4], &c);
    }
    for (k, n) in e.ranges {
        let (pid, mode) = (k[1] as u32, branch_mode(mode_of(k[2])));
        agg.add_range_count(pid, mode, [k[5], k[3], k[4]], n);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::aggregate::Filter;
    use lbrprof_data::perfdata::PerfDataReader;
    use std::path::PathBuf;

    fn fixtures() -> Vec<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/perfdata");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipped: no fixtures at {}", dir.display());
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && std::fs::read(p).is_ok_and(|b| b.starts_with(b"PERFILE2")))
            .collect();
        v.sort();
        v
    }

    /// Everything a report reads from a profile, in a comparable form.
    pub(crate) fn summary(p: &Profile) -> String {
        // Root frames by name: their ids follow the order samples are met in.
        let frame = |l: &crate::loc::Loc| match p.comm_root_module {
            Some(m) if m == l.module => p.root_names[l.offset as usize].clone(),
            _ => format!("{l:?}"),
        };
        let mut stacks: Vec<_> = p
            .stacks
            .iter()
            .map(|(k, v)| format!("{:?} {v:?}", k.iter().map(frame).collect::<Vec<_>>()))
            .collect();
        stacks.sort();
        let mut lbr: Vec<_> = p
            .lbr_stacks
            .iter()
            .map(|(k, v)| format!("{k:?} {v:?}"))
            .collect();
        lbr.sort();
        let mut edges: Vec<_> = p
            .edges
            .iter()
            .map(|(k, v)| format!("{k:?} {v:?}"))
            .collect();
        edges.sort();
        let mut ranges: Vec<_> = p
            .ranges
            .iter()
            .map(|(k, v)| format!("{k:?} {v:?}"))
            .collect();
        ranges.sort();
        ranges.extend(p.range_origins.iter().map(|(k, v)| format!("{k:?} {v:?}")));
        ranges[p.ranges.len()..].sort();
        let mut ips: Vec<_> = p.ips.iter().map(|(k, v)| format!("{k:?} {v:?}")).collect();
        ips.sort();
        let modules: Vec<_> = p.spaces.modules.iter().map(|m| format!("{m:?}")).collect();
        let mut comms: Vec<_> = p.comms.iter().collect();
        comms.sort();
        format!(
            "{:?}\n{modules:?}\n{comms:?}\n{stacks:#?}\n{lbr:#?}\n{edges:#?}\n{ranges:#?}\n{ips:#?}",
            p.totals
        )
    }

    fn both(path: &std::path::Path, opts: AggregateOptions) -> Option<(String, String)> {
        let mut r = PerfDataReader::open(path).ok()?;
        let scan = r.mapped_scan()?;
        assert!(supports(&scan, &opts));
        let (fast, _) = aggregate_scan(&scan, opts.clone()).expect("fast path");
        let slow_reader = PerfDataReader::open(path).unwrap();
        let (slow, err) = crate::aggregate_events(slow_reader, opts);
        assert!(err.is_none(), "{err:?}");
        Some((summary(&fast), summary(&slow)))
    }

    #[test]
    fn fast_path_builds_the_profile_the_event_stream_builds() {
        let mut scanned = 0;
        for path in fixtures() {
            for (lbr_call_stack, comm_root) in [(false, false), (true, false), (false, true)] {
                let opts = AggregateOptions {
                    lbr_call_stack,
                    comm_root,
                    ..AggregateOptions::default()
                };
                let Some((fast, slow)) = both(&path, opts) else {
                    eprintln!("{}: not scanned (event stream)", path.display());
                    continue;
                };
                scanned += 1;
                assert!(fast == slow, "{}: profiles differ", path.display());
            }
        }
        if !fixtures().is_empty() {
            assert!(scanned > 0, "no fixture took the fast path");
        }
    }

    #[test]
    fn fast_path_reads_truncated_files_as_far_as_the_event_stream() {
        let tmp = tempfile::tempdir().unwrap();
        for path in fixtures() {
            let bytes = std::fs::read(&path).unwrap();
            let cut = tmp.path().join("cut.data");
            std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
            if let Some((fast, slow)) = both(&cut, AggregateOptions::default()) {
                assert!(
                    fast == slow,
                    "{}: truncated profiles differ",
                    path.display()
                );
            }
        }
    }

    /// A perf.data with stack copies (`perf record --call-graph dwarf` of a shell loop in
    /// the distribution's stripped `sh`, forking `expr` children): the fast path unwinds
    /// every sample against its process's mappings at its epoch, as the event stream does.
    /// Records `perf record --call-graph dwarf` of a shell loop in the distribution's
    /// stripped `sh`, forking `expr` children, into `data`; false when perf cannot.
    fn record_dwarf(data: &std::path::Path) -> bool {
        let recorded = std::process::Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "2000",
                "--call-graph",
                "dwarf",
            ])
            .arg("-o")
            .arg(data)
            .args(["--", "sh", "-c"])
            .arg("i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; expr 1 + 1; expr 2 + 2")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        recorded.is_ok_and(|s| s.success())
    }

    #[test]
    fn fast_path_unwinds_stack_copies_as_the_event_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("dwarf.data");
        if !record_dwarf(&data) {
            eprintln!(
                "skipped: needs `perf record --call-graph dwarf` (linux-perf, perf_event_open)"
            );
            return;
        }
        let opts = AggregateOptions::default();
        let (slow, err) =
            crate::aggregate_events(PerfDataReader::open(&data).unwrap(), opts.clone());
        assert!(err.is_none(), "{err:?}");
        // How the event stream's walks went: the fast path's note must say the same.
        let slow_stats = {
            let mut r = PerfDataReader::open(&data).unwrap();
            for ev in r.by_ref() {
                ev.unwrap();
            }
            lbrprof_data::dwarf::summary(&r.unwind_stats().unwrap())
        };
        let mut fast = None;
        // Chunks of one record, of a few records and of the default size: unwound while
        // the walk goes on, each against the mappings replayed up to its chunk.
        for chunk in [1, 4096, CHUNK_SIZE] {
            let mut input = lbrprof_data::input::open_any(&data).unwrap();
            assert!(input.perf_has_stack_copies());
            let FastPath::Done(p, _) = aggregate_input_chunked(&mut input, &opts, chunk) else {
                panic!("the fast path declined a dwarf perf.data");
            };
            let stats = match input.recorded_notes().iter().find(|n| n.contains("dwarf")) {
                Some(n) => n.clone(),
                None => panic!("no unwinding note in {:?}", input.recorded_notes()),
            };
            assert!(
                summary(&p) == summary(&slow),
                "chunks of {chunk}: profiles differ"
            );
            assert_eq!(stats, slow_stats, "chunks of {chunk}");
            fast = Some((p, stats));
        }
        let (fast, stats) = fast.unwrap();
        // The loop's samples unwind through sh's frames, not one frame each.
        let frames: u64 = fast
            .stacks
            .iter()
            .map(|(k, v)| k.len() as u64 * v.samples)
            .sum();
        let samples: u64 = fast.stacks.values().map(|v| v.samples).sum();
        assert!(samples > 100, "{samples} samples");
        assert!(
            frames > 3 * samples,
            "{frames} frames in {samples} samples; {stats}"
        );
    }

    /// `bytes` (a little-endian perf.data) with records moved across `FINISHED_ROUND`s
    /// against perf's promise: the first record and the mappings of every third round
    /// go three rounds later, where the event stream emits them late (after records with
    /// larger times), as it does with records of a CPU buffer drained late; samples
    /// between then resolve without those mappings. The size stays the same. `None`
    /// when the file has fewer than four rounds.
    fn late_records(bytes: &[u8]) -> Option<Vec<u8>> {
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (start, len) = (word(40) as usize, word(48) as usize);
        let end = (start + len).min(bytes.len());
        use lbrprof_data::perfdata::abi;
        // The records of each round (type, bytes), its closing FINISHED_ROUND last.
        let mut rounds: Vec<Vec<(u32, std::ops::Range<usize>)>> = vec![Vec::new()];
        let mut at = start;
        while at + 8 <= end {
            let rtype = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let size = usize::from(u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]));
            if size < 8 || at + size > end {
                break;
            }
            rounds.last_mut().unwrap().push((rtype, at..at + size));
            if rtype == abi::PERF_RECORD_FINISHED_ROUND {
                rounds.push(Vec::new());
            }
            at += size;
        }
        if rounds.len() < 4 {
            return None;
        }
        for k in (0..rounds.len() - 3).step_by(3) {
            let (moved, kept) = rounds[k].iter().cloned().enumerate().partition(|(i, r)| {
                r.0 != abi::PERF_RECORD_FINISHED_ROUND
                    && (*i == 0 || [abi::PERF_RECORD_MMAP, abi::PERF_RECORD_MMAP2].contains(&r.0))
            });
            let strip = |v: Vec<(usize, _)>| v.into_iter().map(|(_, r)| r);
            rounds[k] = strip(kept).collect();
            // After the first record of their new round, so that its move takes another.
            let at = rounds[k + 3].len().min(1);
            rounds[k + 3].splice(at..at, strip(moved));
        }
        let mut out = bytes[..start].to_vec();
        for (_, r) in rounds.iter().flatten() {
            out.extend_from_slice(&bytes[r.clone()]);
        }
        out.extend_from_slice(&bytes[out.len()..]);
        Some(out)
    }

    /// Files whose records break the rounds' promise take the fast path (they used to
    /// fall back to the event stream) and give the stream's profile: fixtures, and a
    /// `--call-graph dwarf` recording whose samples are unwound.
    #[test]
    fn fast_path_orders_late_records_as_the_event_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let mut files = fixtures();
        let dwarf = tmp.path().join("dwarf.data");
        if record_dwarf(&dwarf) {
            files.push(dwarf);
        } else {
            eprintln!("skipped (dwarf part): needs `perf record --call-graph dwarf`");
        }
        let mut late_files = 0;
        let opts = AggregateOptions::default();
        for path in files {
            // Files the fast path takes as they are.
            let mut input = lbrprof_data::input::open_any(&path).unwrap();
            if !matches!(aggregate_input(&mut input, &opts), FastPath::Done(..)) {
                continue;
            }
            let Some(bytes) = late_records(&std::fs::read(&path).unwrap()) else {
                continue;
            };
            let late = tmp.path().join("late.data");
            std::fs::write(&late, bytes).unwrap();
            // The stream really emits samples out of time order.
            let mut max = 0;
            let mut out_of_order = false;
            for ev in PerfDataReader::open(&late).unwrap().flatten() {
                if let lbrprof_data::model::Event::Sample(s) = ev {
                    out_of_order |= s.time_ns < max;
                    max = max.max(s.time_ns);
                }
            }
            if !out_of_order {
                continue;
            }
            let (slow, err) =
                crate::aggregate_events(PerfDataReader::open(&late).unwrap(), opts.clone());
            assert!(err.is_none(), "{err:?}");
            let slow = summary(&slow);
            for chunk in [1, 4096, CHUNK_SIZE] {
                let mut input = lbrprof_data::input::open_any(&late).unwrap();
                let FastPath::Done(p, _) = aggregate_input_chunked(&mut input, &opts, chunk) else {
                    panic!("{}: the fast path declined late records", path.display());
                };
                assert!(
                    summary(&p) == slow,
                    "{}: chunks of {chunk}: profiles differ",
                    path.display()
                );
            }
            late_files += 1;
        }
        assert!(late_files > 0, "no file had late records");
    }

    /// The pipelined fast path (chunks folded while the walk goes on), with chunks of
    /// one record, of a few records and of the default size, builds the event stream's
    /// profile.
    #[test]
    fn pipelined_fast_path_builds_the_profile_the_event_stream_builds() {
        for path in fixtures() {
            for comm_root in [false, true] {
                let opts = AggregateOptions {
                    comm_root,
                    ..AggregateOptions::default()
                };
                let slow = {
                    let r = PerfDataReader::open(&path).unwrap();
                    let (p, err) = crate::aggregate_events(r, opts.clone());
                    assert!(err.is_none());
                    summary(&p)
                };
                for chunk in [1, 4096, CHUNK_SIZE] {
                    let mut input = lbrprof_data::input::open_any(&path).unwrap();
                    match aggregate_input_chunked(&mut input, &opts, chunk) {
                        FastPath::Done(p, _) => {
                            assert!(summary(&p) == slow, "{}: chunks of {chunk}", path.display())
                        }
                        FastPath::NotScanned => {}
                        FastPath::Failed => panic!("{}: fast path failed", path.display()),
                    }
                }
            }
        }
    }

    #[test]
    fn fast_path_filters_like_the_event_stream() {
        for path in fixtures() {
            let mut r = PerfDataReader::open(&path).unwrap();
            let Some(scan) = r.mapped_scan() else {
                continue;
            };
            if scan.has_branch_stacks() {
                continue;
            }
            let pid = {
                let slow = PerfDataReader::open(&path).unwrap();
                let (p, _) = crate::aggregate_events(slow, AggregateOptions::default());
                p.comms.keys().next().copied().unwrap_or(1)
            };
            for filter in [
                Filter {
                    pids: vec![pid],
                    ..Filter::default()
                },
                Filter {
                    tids: vec![pid],
                    ..Filter::default()
                },
                Filter {
                    comms: vec!["sleep".into()],
                    ..Filter::default()
                },
                Filter {
                    dsos: vec!["libc.so.6".into()],
                    ..Filter::default()
                },
            ] {
                let opts = AggregateOptions {
                    filter,
                    ..AggregateOptions::default()
                };
                let (fast, slow) = both(&path, opts).unwrap();
                assert!(fast == slow, "{}: filtered profiles differ", path.display());
            }
        }
    }
}
