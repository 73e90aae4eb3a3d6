//! Stage one for lbrprof.data, the fast way: the recording's chunks, mapped, checked and
//! decoded on every core, their samples folded straight into raw tables without an
//! [`Event`] or a `Vec` per sample; then merged and resolved once per unique raw stack.
//!
//! Chunks are self-delimiting and CRC-checked ([`lbrprof_collector::recording`]), so the
//! walk of their headers ([`Input::lbrprof_chunks`]) is cheap and the chunks can be
//! checked and decoded in any order. The order that matters is kept through *epochs*,
//! as [`crate::perfscan`] does for perf.data: a samples chunk's epoch is the number of
//! other chunks (side-band: mappings, tasks, losses, snapshots, vCPUs...) before it, and
//! its samples are keyed by `[epoch, pid (| tid << 32), mode, ip, (addr, mode)...]`. The
//! side-band chunks are then replayed through an [`Aggregator`] in file order, each
//! epoch's raw entries resolved and added right after the chunk that starts it: every
//! sample meets the mappings and task names the event stream would have shown it, and
//! the [`Profile`] is the one [`crate::aggregate_events`] builds from the stream.
//!
//! The stream's semantics are kept: the first damaged chunk in file order (checksum,
//! decoding, a length over the limit, a bad summary) is the error, naming its offset; a
//! truncated last chunk gives the stream's warning and everything before it; unknown
//! chunk kinds are skipped with the stream's warning.
//!
//! Not handled here (the caller reads the event stream instead): `record --vm`
//! recordings (pairing needs every sample in order) and filters (the raw branch tables
//! do not keep what a filter needs).

use std::sync::atomic::{AtomicUsize, Ordering};

use lbrprof_collector::input::{Input, InputError};
use lbrprof_collector::model::{BranchKind, CpuMode, Event, Frame, HostSample};
use lbrprof_collector::recording::{self, FormatError, MappedChunks};
use rayon::prelude::*;

use crate::aggregate::{AggregateOptions, Aggregator, MAX_RANGE_BYTES, Profile};
use crate::perfscan::{
    Group, Raw, add_branch_totals, apply_epoch, fold_empty, group_epochs, merge, mode_code, mode_of,
};

/// Whether [`aggregate_recording`] can build the profile for these options.
pub fn supports(opts: &AggregateOptions) -> bool {
    !opts.vm && opts.filter.is_empty()
}

/// What the chunks folded so far (a contiguous run of them, in file order) gave.
struct Acc {
    raw: Raw,
    /// The events of every non-samples chunk, by chunk index (empty for summaries and
    /// unknown kinds), in file order.
    sideband: Vec<(usize, Vec<Event>)>,
    /// The first damaged chunk of the run.
    error: Option<(usize, FormatError)>,
}

impl Acc {
    fn new() -> Self {
        Acc {
            raw: fold_empty(),
            sideband: Vec::new(),
            error: None,
        }
    }

    /// `self` followed by `later`.
    fn then(mut self, later: Acc) -> Acc {
        if self.error.is_some() {
            return self;
        }
        self.raw = merge(self.raw, later.raw);
        self.sideband.extend(later.sideband);
        self.error = later.error;
        self
    }
}

/// Builds the profile of an lbrprof.data input from its mapped chunks (see the module
/// docs). `Ok(None)`: not handled here (perf.data, options [`supports`] rejects, a file
/// that cannot be mapped); the input is untouched, read its event stream. On `Ok(Some)`
/// the input's stream is consumed and its warnings and summary are those the stream
/// would have left.
pub fn aggregate_recording(
    input: &mut Input,
    opts: &AggregateOptions,
) -> Result<Option<Profile>, InputError> {
    if !supports(opts) {
        return Ok(None);
    }
    let Some(mut mapped) = input.lbrprof_chunks() else {
        return Ok(None);
    };
    let chunks = mapped.chunks();
    // Epoch of every chunk: the number of non-samples chunks before it.
    let mut epochs = Vec::with_capacity(chunks.len());
    let mut n = 0u64;
    for c in chunks {
        epochs.push(n);
        n += u64::from(!c.is_samples());
    }
    let keep_tid = opts.comm_root;
    let lbr_call_stack = opts.lbr_call_stack;
    // Chunks after a damaged one need no work: the stream stops there.
    let first_bad = AtomicUsize::new(usize::MAX);
    let acc = (0..chunks.len())
        .into_par_iter()
        .fold(Acc::new, |mut acc, i| {
            if acc.error.is_some() || i > first_bad.load(Ordering::Relaxed) {
                return acc;
            }
            if let Err(e) = fold_chunk(&mapped, i, epochs[i], keep_tid, lbr_call_stack, &mut acc) {
                first_bad.fetch_min(i, Ordering::Relaxed);
                acc.error = Some((i, e));
            }
            acc
        })
        .reduce(Acc::new, Acc::then);
    let Acc {
        raw,
        sideband,
        error,
    } = acc;
    let bad_index = error.as_ref().map_or(usize::MAX, |(i, _)| *i);
    // Summary chunks before the first damaged one, in order, as the stream takes them.
    let summaries: Vec<usize> = (0..chunks.len().min(bad_index))
        .filter(|&i| chunks[i].is_summary())
        .collect();
    for i in summaries {
        let c = &mapped.chunks()[i];
        // Checked in the parallel pass (it would be the error otherwise).
        let payload = mapped.payload(c)?;
        input.read_summary(c.offset, payload)?;
    }
    if let Some((_, e)) = error {
        return Err(e.into());
    }
    if let Some(e) = mapped.take_tail_error() {
        return Err(e.into());
    }
    Ok(Some(resolve(raw, sideband, &epochs, opts.clone())))
}

/// Checks chunk `i` and folds it into `acc`: samples into the raw tables, anything else
/// decoded into events for the replay.
fn fold_chunk(
    mapped: &MappedChunks,
    i: usize,
    epoch: u64,
    keep_tid: bool,
    lbr_call_stack: bool,
    acc: &mut Acc,
) -> Result<(), FormatError> {
    let c = &mapped.chunks()[i];
    let payload = mapped.payload(c)?;
    if !c.is_samples() {
        if c.is_summary() {
            // Decoded (and its errors reported) in order by the caller; check it here
            // so a bad one stops the work after it.
            recording::decode_summary(c.offset, payload)?;
        }
        let events = recording::decode_payload(c.offset, c.kind, payload)?;
        acc.sideband.push((i, events));
        return Ok(());
    }
    // Fold into a fresh table, so a chunk that fails to decode adds nothing.
    let mut raw = fold_empty();
    let mut key: Vec<u64> = Vec::with_capacity(256);
    recording::for_each_sample(c.offset, payload, |s| {
        fold_sample(&mut raw, &mut key, epoch, keep_tid, lbr_call_stack, s);
    })?;
    let acc_raw = std::mem::replace(&mut acc.raw, fold_empty());
    acc.raw = merge(acc_raw, raw);
    Ok(())
}

fn fold_sample(
    raw: &mut Raw,
    key: &mut Vec<u64>,
    epoch: u64,
    keep_tid: bool,
    lbr_call_stack: bool,
    s: &HostSample,
) {
    let tid = if keep_tid { u64::from(s.tid) << 32 } else { 0 };
    let mode = mode_code(s.mode);
    key.clear();
    key.extend([epoch, u64::from(s.pid) | tid, mode, s.ip]);
    for f in &s.callchain {
        key.extend([f.addr, mode_code(f.mode)]);
    }
    let (g, new) = raw.stacks.entry(key, || Group::new(s.period, s.time_ns));
    if !new {
        g.add(s.period, s.time_ns);
    }
    if s.branches.is_empty() {
        return;
    }
    let n = s.branches.len() as u64;
    raw.branch_entries += n;
    raw.samples_with_branches += 1;
    raw.max_branch_depth = raw.max_branch_depth.max(n);
    let pid = u64::from(s.pid);
    if lbr_call_stack {
        key.clear();
        key.extend([epoch, pid, mode, s.ip]);
        key.extend(s.branches.iter().map(|b| b.from));
        let (g, new) = raw
            .lbr_stacks
            .entry(key, || Group::new(s.period, s.time_ns));
        if !new {
            g.add(s.period, s.time_ns);
        }
    }
    let mut newer_from: Option<u64> = None;
    for b in &s.branches {
        let e = raw
            .edges
            .entry([epoch, pid, mode, b.from, b.to])
            .or_default();
        e.count += 1;
        e.mispred += u64::from(b.flags.mispred);
        e.predicted += u64::from(b.flags.predicted);
        e.in_tx += u64::from(b.flags.in_tx);
        e.abort += u64::from(b.flags.abort);
        if b.flags.cycles != 0 {
            e.cycles_sum += u64::from(b.flags.cycles);
            e.cycles_n += 1;
        }
        if e.kind == BranchKind::Unknown {
            e.kind = b.flags.kind;
        }
        if let Some(nf) = newer_from
            && b.to != 0
            && b.to <= nf
            && nf - b.to < MAX_RANGE_BYTES
        {
            *raw.ranges.entry([epoch, pid, mode, b.to, nf]).or_default() += 1;
        }
        newer_from = (b.from != 0).then_some(b.from);
    }
}

/// A raw stack's call chain: `(addr, mode)` word pairs.
fn frames(words: &[u64], _mode: CpuMode) -> Vec<Frame> {
    words
        .chunks_exact(2)
        .map(|p| Frame {
            addr: p[0],
            mode: mode_of(p[1]),
        })
        .collect()
}

/// Replays the side-band events in file order, each epoch's raw entries right after the
/// chunk that starts it.
fn resolve(
    raw: Raw,
    sideband: Vec<(usize, Vec<Event>)>,
    epochs: &[u64],
    opts: AggregateOptions,
) -> Profile {
    let (mut by_epoch, totals) = group_epochs(raw);
    let mut agg = Aggregator::new(opts);
    if let Some(e) = by_epoch.remove(&0) {
        apply_epoch(&mut agg, e, frames);
    }
    for (i, events) in sideband {
        for ev in &events {
            agg.add(ev);
        }
        // The chunk after this one starts epoch epochs[i] + 1.
        if let Some(e) = by_epoch.remove(&(epochs[i] + 1)) {
            apply_epoch(&mut agg, e, frames);
        }
    }
    // (Every epoch starts after a chunk; nothing is left.)
    let mut rest: Vec<_> = by_epoch.into_iter().collect();
    rest.sort_unstable_by_key(|(id, _)| *id);
    for (_, e) in rest {
        apply_epoch(&mut agg, e, frames);
    }
    let mut profile = agg.finish();
    add_branch_totals(&mut profile, totals);
    profile
}
