//! The fast path through a perf.data file: the data section mmapped and walked in place.
//!
//! [`super::PerfDataReader`] yields one owned [`Event`] per record, in perf's time order
//! (linux-perf-data buffers, copies and sorts every record). A report does not need that:
//! samples only have to be resolved against the mappings and tasks that precede them in
//! time. [`super::PerfDataReader::mapped_scan`] walks the record headers once, keeps the few
//! side-band records (mappings, tasks, losses) as events sorted as perf sorts them, and
//! cuts the data section into record-aligned chunks, handing each out as soon as its
//! epochs are known ([`Chunk`]). Samples are then decoded in place, chunk by chunk
//! (chunks may be handled on different threads, during the walk), each tagged with its
//! *epoch*: the last state-changing side-band event of its own process that precedes it
//! in perf's order (a process's samples resolve against its own mappings and names
//! only, so other processes' events do not split its epochs). A consumer that
//! aggregates samples per epoch and replays the side-band events in order, applying the
//! samples of each epoch right after its event ([`Scan::sideband_epochs`]), sees exactly
//! what the event stream would have shown it.
//!
//! perf's order is the order in which the stream's sorter releases records: at each
//! `FINISHED_ROUND` it releases, sorted by (time, file offset), every record buffered so
//! far whose key is at most the largest key read before the previous `FINISHED_ROUND`.
//! A record that breaks the rounds' promise (a key below what a round already released:
//! files with lost samples have them, when a CPU's buffer was drained late) comes out
//! in the next release, after records with larger keys. The walk gives every record its
//! *batch*, the release that emits it (`Rounds`), and sorts by (batch, time, offset):
//! exactly the stream's order, for in-order and out-of-order files alike, with no record
//! buffered (a file whose rounds keep their promise has batches that follow the keys).
//!
//! A consumer that needs every sample on its own in perf's order (timelines, filters
//! decided per sampled IP) takes a scan made for it
//! ([`super::PerfDataReader::mapped_scan_in_order`]): the walk keeps every selected
//! sample's sort key, and [`Scan::for_each_in_order`] merges the sorted keys with the
//! side-band events, decoding each sample in place when its turn comes.
//!
//! The walk declines (returns `None`, and the caller reads the event stream instead)
//! whatever it does not handle exactly as the stream does: big-endian and simpleperf
//! files, compressed or AUX-trace records, framing errors, and samples with stack copies
//! unless the caller unwinds them itself
//! ([`super::PerfDataReader::mapped_scan_unwinding_with`],
//! [`super::PerfDataReader::mapped_scan_in_order`]).
//! A sample body that does not match its attribute is reported as
//! [`ScanError::Sample`]; the caller then reads the stream, which names the record.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use linux_perf_data::linux_perf_event_reader::{
    self as reader, RawData, RawEventRecord, RecordIdParseInfo, RecordParseInfo, RecordType,
};
use memmap2::Mmap;

use super::{ImportStats, SampleLayout, abi, cpu_mode, decode_sample_raw};
use crate::model::{Event, TaskEvent};
pub use crate::sample::SampleRef;
use crate::sample::{BranchStack, Callchain, StackCopyRef};

pub use super::RawSample;

/// How the attribute of a record is found (as linux-perf-data decides it).
#[derive(Clone, Copy, Debug)]
pub(super) enum IdInfo {
    OnlyOne,
    Same(RecordIdParseInfo),
    PerAttribute { sample_id_all: bool },
}

/// The default size of the chunks the data section is cut into.
pub const CHUNK_SIZE: usize = 4 << 20;

/// The sorter's key of a record: its timestamp (none sorts first), then its position.
type TimeKey = (Option<u64>, u64);

/// perf's order of a record: its batch (see [`Rounds`]), then its [`TimeKey`].
pub(super) type SortKey = (u64, Option<u64>, u64);

/// The rounds of the stream's sorter (linux-perf-data's `Sorter`, as perf's
/// ordered-events), as far as they decide which release emits a record.
///
/// `bounds[r]` is the sorter's bound while round `r` is read (after `r`
/// `FINISHED_ROUND`s): the largest key read before the previous `FINISHED_ROUND` (`None`:
/// below every key). The next `FINISHED_ROUND` releases every buffered record at or below
/// it; the end of the file releases the rest. So a record of round `r` comes out in
/// release `r + 1` when its key is at most `bounds[r]` (in time, or late: below what was
/// already released), else in release `r + 2` (the bound then has passed it), and in
/// the last release at most.
#[derive(Clone, Copy, Debug)]
struct Rounds<'a> {
    /// The round of `bounds[0]`.
    first: usize,
    bounds: &'a [Option<TimeKey>],
    /// The last release (`FINISHED_ROUND`s in the file, plus one), once known.
    last: Option<u64>,
    /// The round of the first record walked with these bounds.
    start: usize,
}

impl Rounds<'_> {
    /// The release that emits a record of round `round` with key `key`.
    fn batch(&self, round: usize, key: TimeKey) -> u64 {
        let bound = self.bounds.get(round - self.first).copied().flatten();
        let next = round as u64 + 1;
        let batch = if Some(key) <= bound { next } else { next + 1 };
        self.last.map_or(batch, |last| batch.min(last))
    }
}

/// Per process, the sort keys of its state-changing side-band events, ascending. The
/// walk adds to it while chunks handed out earlier read it: a key added after a chunk
/// was handed out sorts after all its samples, so they never see a difference.
type PidKeys = RwLock<HashMap<u32, Vec<SortKey>>>;

/// Everything the walk needs to know about the file besides its bytes.
pub(super) struct Layouts {
    pub(super) parse_infos: Vec<RecordParseInfo>,
    pub(super) layouts: Vec<SampleLayout>,
    pub(super) id_info: IdInfo,
    pub(super) id_to_attr: HashMap<u64, usize>,
    /// The attributes whose samples are read (`--event`); `None`: all of them.
    pub(super) selected: Option<Vec<bool>>,
}

impl Layouts {
    /// Whether samples of attribute `attr` are read (see [`Layouts::selected`]).
    fn is_selected(&self, attr: usize) -> bool {
        self.selected
            .as_ref()
            .is_none_or(|s| s.get(attr).copied().unwrap_or(false))
    }

    /// The attribute of a record, found by its id as linux-perf-data finds it
    /// (`get_record_id` / `get_record_identifier`); 0 when unknown.
    fn attr_index(&self, sample: bool, body: &[u8]) -> usize {
        let id = match self.id_info {
            IdInfo::OnlyOne => return 0,
            IdInfo::Same(info) if sample => info
                .sample_record_id_offset_from_start
                .and_then(|o| le_word_at(body, usize::from(o))),
            IdInfo::Same(info) => info
                .nonsample_record_id_offset_from_end
                .and_then(|o| le_word_from_end(body, usize::from(o))),
            IdInfo::PerAttribute { .. } if sample => le_word_at(body, 0),
            IdInfo::PerAttribute { sample_id_all } => {
                sample_id_all.then(|| le_word_from_end(body, 8)).flatten()
            }
        };
        id.and_then(|id| self.id_to_attr.get(&id).copied())
            .unwrap_or(0)
    }
}

/// The timestamp of a record, where its attribute puts one (`get_record_timestamp`).
fn timestamp(sample: bool, body: &[u8], info: &RecordParseInfo) -> Option<u64> {
    if sample {
        info.sample_record_time_offset_from_start
            .and_then(|o| le_word_at(body, usize::from(o)))
    } else {
        info.nonsample_record_time_offset_from_end
            .and_then(|o| le_word_from_end(body, usize::from(o)))
    }
}

fn le_word_at(body: &[u8], at: usize) -> Option<u64> {
    let w: [u8; 8] = body.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

fn le_word_from_end(body: &[u8], from_end: usize) -> Option<u64> {
    le_word_at(body, body.len().checked_sub(from_end)?)
}

/// Why a chunk could not be decoded (the caller falls back to the event stream).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error("sample at data offset {offset:#x}: {what}")]
    Sample { offset: usize, what: &'static str },
}

/// Whether a side-band event changes how later samples resolve or are filtered
/// (mappings, and the process/thread names and address-space copies of tasks).
pub fn changes_state(ev: &Event) -> bool {
    state_pid(ev).is_some()
}

/// The process whose samples a state-changing side-band event concerns (a fork's is
/// the child).
fn state_pid(ev: &Event) -> Option<u32> {
    match ev {
        Event::Mapping(m) => Some(m.pid),
        Event::Task(
            TaskEvent::Comm { pid, .. } | TaskEvent::Exec { pid, .. } | TaskEvent::Fork { pid, .. },
        ) => Some(*pid),
        _ => None,
    }
}

/// The result of the header walk: side-band events in perf's order and the chunks of
/// the data section that hold the samples.
pub struct Scan {
    pub(super) map: Arc<Mmap>,
    /// Data section bytes `data.start..data.end` of `map`.
    pub(super) data: Range<usize>,
    pub(super) layouts: Arc<Layouts>,
    /// Side-band events, in perf's order, with their sort keys.
    pub(super) sideband: Vec<(SortKey, Event)>,
    pub(super) pid_keys: Arc<PidKeys>,
    /// Record-aligned byte ranges of `map` (within `data`), each with the round it
    /// starts in.
    pub(super) chunks: Vec<(Range<usize>, usize)>,
    /// The sorter's bound per round (see [`Rounds`]).
    bounds: Vec<Option<TimeKey>>,
    pub(super) samples: u64,
    /// For [`Scan::for_each_in_order`]: every selected sample's place in perf's order.
    sample_order: SampleOrder,
    /// For [`Scan::for_each_in_order`]: per chunk, the last release of its records.
    chunk_batches: Vec<u64>,
}

/// Where every selected sample comes in perf's order, for [`Scan::for_each_in_order`],
/// in 8 bytes a sample: its position in the data section, batch by batch.
///
/// The walk sorts the samples of each release (batch) when it closes, as perf's
/// ordered-events sort each round's queue: a record of round `r` is in release `r + 1`
/// or `r + 2` ([`Rounds::batch`]), so while round `r` is walked only those two are open
/// and the `FINISHED_ROUND` that ends it closes release `r + 1`. Only the open releases'
/// samples are kept with their times (16 bytes each: [`order_words`]); a sorted release
/// keeps their positions, and the visit reads each time again from its record. A file
/// without rounds is one release, sorted at the end.
#[derive(Debug, Default)]
struct SampleOrder {
    /// The samples' positions in the data section, sorted within each batch.
    positions: Vec<u64>,
    /// Each non-empty batch and the index in `positions` of its first sample, ascending.
    batches: Vec<(u64, usize)>,
    /// The samples of the open batches `next` and `next + 1`, as [`order_words`].
    open: [Vec<(u64, u64)>; 2],
    /// The first open batch: the round being walked, plus one.
    next: u64,
}

/// A sample's [`TimeKey`] as two words that sort the same way: an untimed sample before
/// every timed one, then by position (below 2^63).
fn order_words((time, position): TimeKey) -> (u64, u64) {
    match time {
        None => (0, position),
        Some(t) => (t, position | 1 << 63),
    }
}

impl SampleOrder {
    fn new() -> Self {
        SampleOrder {
            next: 1,
            ..SampleOrder::default()
        }
    }

    /// A sample of `batch` (one of the open two) with key `key`.
    fn push(&mut self, batch: u64, key: TimeKey) {
        let open = batch.saturating_sub(self.next).min(1) as usize;
        self.open[open].push(order_words(key));
    }

    /// A `FINISHED_ROUND`: the first open batch gets no more samples.
    fn close_round(&mut self) {
        let mut done = std::mem::take(&mut self.open[0]);
        self.keep(self.next, &mut done);
        self.open.swap(0, 1);
        self.open[1] = done;
        self.next += 1;
    }

    /// The end of the walk: the records of the last round that were keyed for the
    /// release after it come out in the last one, `next`.
    fn finish(&mut self) {
        let [mut a, b] = std::mem::take(&mut self.open);
        a.extend(b);
        self.keep(self.next, &mut a);
    }

    /// Sorts the samples of `batch` and keeps their positions; empties `samples`.
    fn keep(&mut self, batch: u64, samples: &mut Vec<(u64, u64)>) {
        if samples.is_empty() {
            return;
        }
        samples.sort_unstable();
        self.batches.push((batch, self.positions.len()));
        self.positions
            .extend(samples.drain(..).map(|(_, p)| p & !(1 << 63)));
    }

    /// Each batch with the positions of its samples, in perf's order.
    fn batches(&self) -> impl Iterator<Item = (u64, &[u64])> {
        self.batches.iter().enumerate().map(|(i, &(batch, start))| {
            let end = self
                .batches
                .get(i + 1)
                .map_or(self.positions.len(), |&(_, e)| e);
            (batch, &self.positions[start..end])
        })
    }
}

/// A chunk of the data section handed out while the walk goes on (see
/// [`super::PerfDataReader::mapped_scan_with`]): its samples can be decoded at once,
/// with their final epochs. A chunk is handed out once no record still to come can sort
/// before its last one (perf's `FINISHED_ROUND` rounds tell when: a round never
/// overlaps the one two rounds before it), with every side-band event walked so far;
/// chunks that the end of the walk leaves are handed out then.
pub struct Chunk {
    map: Arc<Mmap>,
    layouts: Arc<Layouts>,
    data_start: usize,
    range: Range<usize>,
    pid_keys: Arc<PidKeys>,
    /// The round the chunk starts in, and the bounds from there on (see [`Rounds`]).
    first_round: usize,
    bounds: Vec<Option<TimeKey>>,
    last_batch: Option<u64>,
    /// Position among [`Scan::chunks`].
    pub index: usize,
    /// See [`Chunk::take_sideband`].
    sideband: Vec<(Event, Option<u64>)>,
}

impl Chunk {
    /// For a walk that unwinds ([`super::PerfDataReader::mapped_scan_unwinding_with`]):
    /// the side-band events that no record still to come can sort before, and that no
    /// earlier chunk carried, in perf's order, each with the epoch it starts (as
    /// [`Scan::sideband_epochs`]). Replayed in the order the chunks are handed out, they
    /// are a prefix of [`Scan::sideband_epochs`] that holds the state of every epoch of
    /// this chunk's samples (and of the chunks before it). Empty for other walks, and
    /// after the first call.
    pub fn take_sideband(&mut self) -> Vec<(Event, Option<u64>)> {
        std::mem::take(&mut self.sideband)
    }

    /// Calls `f` with every sample of the chunk, in file order.
    pub fn for_each_sample(&self, f: impl FnMut(SampleRef<'_>)) -> Result<(), ScanError> {
        let rounds = Rounds {
            first: self.first_round,
            bounds: &self.bounds,
            last: self.last_batch,
            start: self.first_round,
        };
        samples_in(
            &self.map,
            &self.layouts,
            self.data_start,
            self.range.clone(),
            &self.pid_keys,
            rounds,
            f,
        )
    }
}

impl Scan {
    /// Side-band events (mappings, tasks, losses), sorted as perf sorts records.
    pub fn sideband(&self) -> impl Iterator<Item = &Event> {
        self.sideband.iter().map(|(_, ev)| ev)
    }

    /// [`Scan::sideband`], with the epoch that starts after each state-changing event
    /// (see [`SampleRef::epoch`]).
    pub fn sideband_epochs(&self) -> impl Iterator<Item = (&Event, Option<u64>)> {
        self.sideband
            .iter()
            .map(|(key, ev)| (ev, changes_state(ev).then_some(epoch_of(key))))
    }

    /// How many chunks [`Scan::for_each_sample`] takes.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// The number of sample records.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Whether the file is little-endian (the only byte order scanned).
    pub fn little_endian(&self) -> bool {
        true
    }

    /// Whether any event attribute samples branch stacks.
    pub fn has_branch_stacks(&self) -> bool {
        self.layouts
            .layouts
            .iter()
            .any(|l| l.sample_type & abi::PERF_SAMPLE_BRANCH_STACK != 0)
    }

    /// Calls `f` with every sample of chunk `chunk`, in file order, with final epochs.
    pub fn for_each_sample(
        &self,
        chunk: usize,
        f: impl FnMut(SampleRef<'_>),
    ) -> Result<(), ScanError> {
        let Some((range, first)) = self.chunks.get(chunk) else {
            return Ok(());
        };
        let rounds = Rounds {
            first: 0,
            bounds: &self.bounds,
            last: Some(self.bounds.len() as u64),
            start: *first,
        };
        samples_in(
            &self.map,
            &self.layouts,
            self.data.start,
            range.clone(),
            &self.pid_keys,
            rounds,
            f,
        )
    }
}

/// A record of a [`Scan`] in perf's order ([`Scan::for_each_in_order`]).
#[derive(Clone, Copy, Debug)]
pub enum Ordered<'a> {
    Sideband(&'a Event),
    Sample(SampleRef<'a>),
}

impl Scan {
    /// Every side-band event and every sample of the selected events, in perf's order
    /// (the event stream's, see the module docs), on the calling thread; the samples are
    /// decoded in place. For a scan made for it
    /// ([`super::PerfDataReader::mapped_scan_in_order`], which keeps every sample's place
    /// in perf's order, 8 bytes a sample); other scans give only their side-band events. A sample's epoch is
    /// the one the last state-changing side-band event before it started (0: none).
    /// Stops at the first sample that cannot be decoded (the samples before it in perf's
    /// order have been visited).
    pub fn for_each_in_order(&self, mut f: impl FnMut(Ordered<'_>)) -> Result<(), ScanError> {
        let bytes = &self.map[..];
        let stack_copies = self
            .layouts
            .layouts
            .iter()
            .any(|l| l.sample_type & abi::PERF_SAMPLE_STACK_USER != 0);
        let mut side = self.sideband.iter().peekable();
        let mut epoch = 0;
        // The chunks whose records have all been visited are released (the walk left
        // them resident).
        let mut released = 0;
        for (batch, positions) in self.sample_order.batches() {
            while released < self.chunk_batches.len() && self.chunk_batches[released] < batch {
                release(&self.map, self.chunks[released].0.clone());
                released += 1;
            }
            for &position in positions {
                // A selected sample's record, its framing checked by the walk.
                let at = self.data.start + position as usize;
                let (_, misc, size) = record_header(&bytes[at..at + 8]);
                let body = &bytes[at + 8..at + size];
                let attr = self.layouts.attr_index(true, body);
                let time = timestamp(true, body, &self.layouts.parse_infos[attr]);
                let key = (batch, time, position);
                while let Some((k, ev)) = side.next_if(|(k, _)| *k < key) {
                    if changes_state(ev) {
                        epoch = epoch_of(k);
                    }
                    f(Ordered::Sideband(ev));
                }
                let layout = self.layouts.layouts[attr];
                let raw =
                    decode_sample_raw(body, true, layout).map_err(|what| ScanError::Sample {
                        offset: position as usize,
                        what,
                    })?;
                f(Ordered::Sample(sample_ref(
                    &raw,
                    layout,
                    misc,
                    epoch,
                    stack_copies,
                )));
            }
        }
        side.for_each(|(_, ev)| f(Ordered::Sideband(ev)));
        release(&self.map, self.data.clone());
        Ok(())
    }
}

/// The epoch a state-changing side-band event starts: its position, plus one.
fn epoch_of(key: &SortKey) -> u64 {
    key.2 + 1
}

/// Decodes the samples of `range` (which starts in round `rounds.start`), with epochs
/// from `pid_keys`. Releases the range's pages afterwards.
fn samples_in(
    map: &Mmap,
    layouts: &Layouts,
    data_start: usize,
    range: Range<usize>,
    pid_keys: &PidKeys,
    rounds: Rounds<'_>,
    mut f: impl FnMut(SampleRef<'_>),
) -> Result<(), ScanError> {
    let bytes = &map[..];
    // The keys of the processes met in this chunk, copied once.
    let mut cache: HashMap<u32, Vec<SortKey>> = HashMap::new();
    // Samples come in runs of one process: the last one's keys, without a lookup.
    let mut last: Option<(u32, Vec<SortKey>)> = None;
    let mut round = rounds.start;
    let mut at = range.start;
    let stack_copies = layouts
        .layouts
        .iter()
        .any(|l| l.sample_type & abi::PERF_SAMPLE_STACK_USER != 0);
    while at < range.end {
        // Framing was checked by the walk.
        let (rtype, misc, size) = record_header(&bytes[at..at + 8]);
        let body = &bytes[at + 8..at + size];
        if stack_copies {
            prefetch_next(bytes, at, size);
        }
        if rtype == abi::PERF_RECORD_FINISHED_ROUND {
            round += 1;
        } else if rtype == abi::PERF_RECORD_SAMPLE {
            let attr = layouts.attr_index(true, body);
            if !layouts.is_selected(attr) {
                at += size;
                continue;
            }
            let layout = layouts.layouts[attr];
            let raw = decode_sample_raw(body, true, layout).map_err(|what| ScanError::Sample {
                offset: at - data_start,
                what,
            })?;
            let has_time = layout.sample_type & abi::PERF_SAMPLE_TIME != 0;
            let time_key = (has_time.then_some(raw.time_ns), (at - data_start) as u64);
            let key = (rounds.batch(round, time_key), time_key.0, time_key.1);
            if last.as_ref().is_none_or(|(pid, _)| *pid != raw.pid) {
                if let Some((pid, keys)) = last.take() {
                    cache.insert(pid, keys);
                }
                let keys = cache.remove(&raw.pid).unwrap_or_else(|| {
                    let all = pid_keys.read().unwrap_or_else(|e| e.into_inner());
                    all.get(&raw.pid).cloned().unwrap_or_default()
                });
                last = Some((raw.pid, keys));
            }
            let keys = last.as_ref().map_or(&[][..], |(_, k)| &k[..]);
            let before = keys.partition_point(|k| *k < key);
            let epoch = before.checked_sub(1).map_or(0, |i| epoch_of(&keys[i]));
            f(sample_ref(&raw, layout, misc, epoch, stack_copies));
        }
        at += size;
    }
    release(map, range);
    Ok(())
}

/// The sample of a decoded record with header flags `misc`, at `epoch`; with its stack
/// copy when the file has some (`stack_copies`).
#[inline(always)]
fn sample_ref<'a>(
    raw: &RawSample<'a>,
    layout: SampleLayout,
    misc: u16,
    epoch: u64,
    stack_copies: bool,
) -> SampleRef<'a> {
    let stack_copy = if stack_copies {
        raw.user_regs(true, layout.regs_user)
            .map(|regs| StackCopyRef {
                regs,
                stack: raw.user_stack,
            })
    } else {
        None
    };
    SampleRef {
        epoch,
        pid: raw.pid,
        tid: raw.tid,
        cpu: raw.cpu,
        mode: cpu_mode(reader::CpuMode::from_misc(misc)),
        time_ns: raw.time_ns,
        period: raw.period,
        ip: raw.ip,
        callchain: Callchain::PerfWords(raw.callchain),
        branches: BranchStack::PerfEntries(raw.branches),
        stack_copy,
    }
}

/// How much of a record with a stack copy [`prefetch_next`] asks for: its header, the
/// fields before the copy and the top of the copy, where unwinding reads.
const PREFETCH_HEAD: usize = 1024;

/// Asks the CPU to start loading the next record (after the one at `at`, `size` bytes
/// long) while this one is decoded and unwound: its head, and its last bytes (a stack
/// copy's `dyn_size`), guessed from this record's size (records with stack copies differ
/// in size by their call chains only). Samples with stack copies are thousands of bytes
/// apart, so each is a cold TLB entry and cold cache lines; without this their loads
/// wait one after another. A hint only: addresses outside `bytes` are not asked for,
/// and a wrong guess costs one useless load.
fn prefetch_next(bytes: &[u8], at: usize, size: usize) {
    let next = at + size;
    prefetch(bytes, next..next + PREFETCH_HEAD);
    let tail = (next + size).saturating_sub(128);
    prefetch(bytes, tail..tail + 192);
}

/// Asks the CPU to load the cache lines of `bytes[range]` (clamped to `bytes`).
fn prefetch(bytes: &[u8], range: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let end = range.end.min(bytes.len());
        let mut at = range.start;
        while at < end {
            // SAFETY: a prefetch is a hint: it never faults and changes nothing the
            // program can observe; the address is inside `bytes` (at < end <= len).
            // SSE, which it needs, is part of x86-64's baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(at).cast()) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, range);
}

/// Unmaps the pages of `range` from this process (they stay in the page cache), so
/// that resident memory does not grow with the file: each chunk is released once it
/// has been walked or folded.
fn release(map: &Mmap, range: Range<usize>) {
    // SAFETY: the mapping is private, read-only and file-backed: MADV_DONTNEED only drops
    // this process's page-table entries for the range; the next access faults the same
    // file bytes back in, so every slice into the mapping still reads what it read.
    let _ = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len())
    };
}

/// `struct perf_event_header { u32 type; u16 misc; u16 size; }`, little-endian.
fn record_header(h: &[u8]) -> (u32, u16, usize) {
    (
        u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        u16::from_le_bytes([h[4], h[5]]),
        usize::from(u16::from_le_bytes([h[6], h[7]])),
    )
}

/// The events `side[i]` for `i` in `indices`, in perf's order, each with the epoch it
/// starts (see [`Scan::sideband_epochs`]).
fn in_order(
    side: &[(SortKey, Event)],
    mut indices: Vec<usize>,
) -> impl Iterator<Item = (Event, Option<u64>)> + '_ {
    indices.sort_unstable_by_key(|&i| side[i].0);
    indices.into_iter().map(|i| {
        let (key, ev) = &side[i];
        (ev.clone(), changes_state(ev).then_some(epoch_of(key)))
    })
}

/// Who takes the samples of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Consumer {
    /// Chunk by chunk, on any thread.
    Chunks,
    /// Chunk by chunk, each chunk with the side-band events its samples' epochs need
    /// ([`Chunk::take_sideband`]), to unwind their stack copies.
    ChunksWithSideband,
    /// One by one in perf's order, after the walk ([`Scan::for_each_in_order`]).
    InOrder,
}

/// Walks the record headers of `map[data]`. `convert` turns a side-band record into an
/// event (or `None` for records the model skips, `Err` for a malformed one); `None` overall
/// means the fast path does not apply. `consumer` says what the walk keeps for whom.
pub(super) fn walk(
    map: Mmap,
    data: Range<usize>,
    layouts: Layouts,
    chunk_size: usize,
    consumer: Consumer,
    mut convert: impl FnMut(&RawEventRecord<'_>, &mut ImportStats) -> Result<Option<Event>, ()>,
    on_chunk: &mut dyn FnMut(Chunk),
) -> Option<(Scan, ImportStats)> {
    let deliver_sideband = consumer == Consumer::ChunksWithSideband;
    let keep_keys = consumer == Consumer::InOrder;
    let map = Arc::new(map);
    let layouts = Arc::new(layouts);
    let bytes = map.get(data.clone())?;
    // For `Consumer::InOrder`: the sort key of every selected sample, and per chunk the
    // last release of its records.
    let mut sample_order = SampleOrder::new();
    let mut chunk_batches: Vec<u64> = Vec::new();
    let mut stats = ImportStats {
        samples_per_event: vec![0; layouts.layouts.len()],
        ..ImportStats::default()
    };
    let mut side: Vec<(SortKey, Event)> = Vec::new();
    // The state-changing side-band keys walked so far, per process.
    let pid_keys: Arc<PidKeys> = Arc::new(RwLock::new(HashMap::new()));
    // The chunks walked, each with the round it starts in.
    let mut chunks: Vec<(Range<usize>, usize)> = Vec::new();
    let mut chunk_start = 0usize;
    // The sorter's rounds (see `Rounds`): the bound of each round so far, and the
    // largest key read.
    let mut bounds: Vec<Option<TimeKey>> = vec![None];
    let mut cur_max: Option<TimeKey> = None;
    let mut chunk_round = 0usize;
    // The last batch of the chunk being walked.
    let mut chunk_batch = 0u64;
    // Walked chunks whose samples may still gain an earlier side-band event, with their
    // last batch: a chunk is handed out once every record still to come sorts after it.
    let mut pending: Vec<(usize, u64)> = Vec::new();
    // With `deliver_sideband`: the final side-band events no chunk carried yet, in
    // perf's order (for the next chunk handed out); the indices into `side` of events
    // that may still gain an earlier record; and how much of `side` was looked at.
    let mut ready: Vec<(Event, Option<u64>)> = Vec::new();
    let mut carry: Vec<usize> = Vec::new();
    let mut looked_at = 0usize;
    let hand_out = |index: usize,
                    chunks: &[(Range<usize>, usize)],
                    bounds: &[Option<TimeKey>],
                    last_batch: Option<u64>,
                    sideband: Vec<(Event, Option<u64>)>,
                    on_chunk: &mut dyn FnMut(Chunk)| {
        let (range, first) = chunks[index].clone();
        on_chunk(Chunk {
            map: Arc::clone(&map),
            layouts: Arc::clone(&layouts),
            data_start: data.start,
            range,
            pid_keys: Arc::clone(&pid_keys),
            first_round: first,
            bounds: bounds[first..].to_vec(),
            last_batch,
            index,
            sideband,
        });
    };
    let mut at = 0usize;
    while at < bytes.len() {
        let h = bytes.get(at..at + 8)?;
        let (rtype, misc, size) = record_header(h);
        if size < 8 || at + size > bytes.len() {
            return None;
        }
        let body = &bytes[at + 8..at + size];
        let offset = at as u64;
        let round = bounds.len() - 1;
        let rounds = Rounds {
            first: 0,
            bounds: &bounds,
            last: None,
            start: round,
        };
        if rtype >= abi::PERF_RECORD_USER_TYPE_START {
            match rtype {
                abi::PERF_RECORD_FINISHED_ROUND => {
                    // This round's release: every record to come is in a later one.
                    let released = bounds.len() as u64;
                    bounds.push(cur_max);
                    if keep_keys {
                        sample_order.close_round();
                    }
                    if deliver_sideband {
                        // Records still to come are in later releases: the events of
                        // this one and before are final.
                        let mut newly = std::mem::take(&mut carry);
                        newly.extend(looked_at..side.len());
                        looked_at = side.len();
                        let (done, later): (Vec<usize>, Vec<usize>) =
                            newly.into_iter().partition(|&i| side[i].0.0 <= released);
                        carry = later;
                        ready.extend(in_order(&side, done));
                    }
                    pending.retain(|&(i, batch)| {
                        let done = batch <= released;
                        if done {
                            let sideband = std::mem::take(&mut ready);
                            hand_out(i, &chunks, &bounds, None, sideband, on_chunk);
                        }
                        !done
                    });
                }
                abi::PERF_RECORD_COMPRESSED
                | abi::PERF_RECORD_COMPRESSED2
                | abi::PERF_RECORD_AUXTRACE => return None,
                _ => {
                    // The sorter keeps these too (untimed), so they move its bound.
                    let key = (None, offset);
                    cur_max = cur_max.max(Some(key));
                    chunk_batch = chunk_batch.max(rounds.batch(round, key));
                    stats.records += 1;
                    stats.skipped_records += 1;
                }
            }
        } else {
            stats.records += 1;
            let record_type = RecordType(rtype);
            let sample = rtype == abi::PERF_RECORD_SAMPLE;
            let attr = layouts.attr_index(sample, body);
            let info = *layouts.parse_infos.get(attr)?;
            let time_key = (timestamp(sample, body, &info), offset);
            cur_max = cur_max.max(Some(time_key));
            let batch = rounds.batch(round, time_key);
            chunk_batch = chunk_batch.max(batch);
            if sample {
                stats.samples += 1;
                if let Some(n) = stats.samples_per_event.get_mut(attr) {
                    *n += 1;
                }
                if keep_keys && layouts.is_selected(attr) {
                    sample_order.push(batch, time_key);
                }
            } else {
                let raw = RawEventRecord::new(record_type, misc, RawData::Single(body), info);
                if let Some(ev) = convert(&raw, &mut stats).ok()? {
                    let key = (batch, time_key.0, time_key.1);
                    if let Some(pid) = state_pid(&ev) {
                        let mut all = pid_keys.write().unwrap_or_else(|e| e.into_inner());
                        let keys = all.entry(pid).or_default();
                        let at = keys.partition_point(|k| *k < key);
                        keys.insert(at, key);
                    }
                    side.push((key, ev));
                }
            }
        }
        at += size;
        if at - chunk_start >= chunk_size || at == bytes.len() {
            if keep_keys {
                chunk_batches.push(chunk_batch);
                // Nobody reads the chunk before the visit in order, which faults its
                // pages back in as it goes: resident memory stays a few chunks.
                release(&map, data.start + chunk_start..data.start + at);
            }
            pending.push((chunks.len(), std::mem::take(&mut chunk_batch)));
            chunks.push((data.start + chunk_start..data.start + at, chunk_round));
            chunk_start = at;
            chunk_round = bounds.len() - 1;
        }
    }
    // Every side-band event is known now, and the last release: the records of the
    // last round that were keyed for a release after it come out in it.
    let last = bounds.len() as u64;
    for (key, _) in &mut side {
        key.0 = key.0.min(last);
    }
    if keep_keys {
        sample_order.finish();
    }
    for batch in &mut chunk_batches {
        *batch = (*batch).min(last);
    }
    if deliver_sideband {
        carry.extend(looked_at..side.len());
        ready.extend(in_order(&side, carry));
    }
    side.sort_by_key(|(k, _)| *k);
    {
        let mut all = pid_keys.write().unwrap_or_else(|e| e.into_inner());
        for keys in all.values_mut() {
            for key in keys.iter_mut() {
                key.0 = key.0.min(last);
            }
            keys.sort_unstable();
        }
    }
    for (i, _) in pending {
        let sideband = std::mem::take(&mut ready);
        hand_out(i, &chunks, &bounds, Some(last), sideband, on_chunk);
    }
    let samples = stats.samples;
    Some((
        Scan {
            map,
            data,
            layouts,
            sideband: side,
            pid_keys,
            chunks,
            bounds,
            samples,
            sample_order,
            chunk_batches,
        },
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_words_sort_as_time_keys() {
        let keys: Vec<TimeKey> = vec![
            (Some(5), 3),
            (None, 9),
            (Some(0), 1),
            (Some(5), 2),
            (None, 4),
            (Some(u64::MAX), 0),
        ];
        let mut by_key = keys.clone();
        by_key.sort();
        let mut by_words = keys;
        by_words.sort_by_key(|&k| order_words(k));
        assert_eq!(by_words, by_key);
    }

    /// Samples pushed round by round into the two open releases come out as one sort
    /// of (batch, time, position) would give them, 8 bytes each.
    #[test]
    fn sample_order_sorts_release_by_release() {
        let mut order = SampleOrder::new();
        // (round, batch offset 0 or 1, time, position)
        let samples: [(u64, u64, Option<u64>, u64); 9] = [
            (0, 0, Some(30), 0),
            (0, 1, Some(50), 8),
            (0, 0, Some(10), 16),
            (1, 0, Some(40), 24),
            (1, 0, None, 32),
            (1, 1, Some(90), 40),
            (2, 1, Some(70), 48),
            (2, 0, Some(60), 56),
            (2, 1, Some(65), 64),
        ];
        let mut round = 0;
        let mut expect = Vec::new();
        for &(r, b, time, position) in &samples {
            while round < r {
                order.close_round();
                round += 1;
            }
            let batch = r + 1 + b;
            order.push(batch, (time, position));
            // The last release takes what was keyed for the one after it.
            expect.push((batch.min(3), time, position));
        }
        order.finish();
        expect.sort();
        let got: Vec<(u64, u64)> = order
            .batches()
            .flat_map(|(batch, positions)| positions.iter().map(move |&p| (batch, p)))
            .collect();
        let want: Vec<(u64, u64)> = expect.iter().map(|&(b, _, p)| (b, p)).collect();
        assert_eq!(got, want);
        assert_eq!(order.positions.len(), samples.len());
    }
}
