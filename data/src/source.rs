//! One way to read samples from any input: a [`SampleSource`] walks its input on one
//! thread, hands out [`SampleChunk`]s that any thread can read as borrowed
//! [`SampleRef`]s, and, once walked, gives its side-band events as the ordered
//! [`Step`]s a consumer replays.
//!
//! | source | walk (one thread) | chunks (any thread) | side-band |
//! |---|---|---|---|
//! | [`PerfSource`]: perf.data, mapped | the record headers ([`crate::perfdata::mapped`]) | records decoded in place | sorted as perf sorts them |
//! | [`RecordingSource`]: lbrprof.data, mapped | the chunk headers; side-band chunks checked and decoded | samples chunks checked and decoded in place | in file order |
//! | [`EventSource`]: any event stream (a file that cannot be mapped, a live capture) | the events | batches of owned events | in stream order |
//!
//! A consumer folds each chunk's samples by their [`SampleRef::epoch`], then replays
//! [`SampleSource::steps`]: each side-band event, and after the event that starts it
//! each epoch ([`Step::Epoch`]), whose samples resolve against the state the events so far
//! built. So every sample meets the mappings and task names the event stream would have
//! shown it, whichever thread read it and in whichever order. Epoch 0 (samples before any
//! side-band) comes first, without a step.
//!
//! A consumer that needs every sample on its own, in stream order, with the side-band
//! events between them (timelines, the pairing of `record --vm` samples with guest
//! snapshots, filters decided per sampled IP) is a [`SampleVisitor`] of the same
//! source: [`SampleSource::walk_in_order`] hands it each side-band event and each
//! sample as the event stream would, still read in place: a recording's chunks in file
//! order, a perf.data file's records in perf's order (sorted in rounds, as perf sorts
//! them, [`crate::perfdata::mapped::Scan::for_each_in_order`]), their stack copies
//! unwound on the way.
//!
//! The walk runs on the calling thread; `on_chunk` is called in input order, as soon as
//! a chunk's epochs are known (for perf.data, while the walk goes on). A chunk that fails
//! to read makes the whole read fail: the consumer hands the first failure in input order
//! to [`SampleSource::finish`], which turns it into the source's error (and reports what
//! the consumer learnt otherwise).

use std::sync::Arc;
use std::sync::mpsc;

use crate::dwarf::{EventUnwinder, ScanUnwinder, UnwindStats};
use crate::input::{Input, InputError, ReaderMut};
use crate::model::Event;
use crate::perfdata::PerfDataReader;
use crate::perfdata::mapped::{self, CHUNK_SIZE, Ordered, Scan, ScanError};
use crate::recording::{self, MappedChunks, RecordingReader};
use crate::sample::{Callchain, SampleRef};

/// The mapped source of an [`Input`] ([`mapped_source`]).
pub enum MappedSource<'i> {
    Perf(PerfSource<'i>),
    Recording(RecordingSource<'i>),
}

/// The input's samples read in place, on every core; `None` for a file that cannot be
/// mapped (read the event stream instead). A [`PerfSource`] may still decline when walked
/// ([`SourceError::Declined`]), leaving the stream untouched; otherwise the walk consumes
/// the stream.
pub fn mapped_source(input: &mut Input) -> Option<MappedSource<'_>> {
    match input.reader_mut() {
        ReaderMut::Perf(r) => Some(MappedSource::Perf(PerfSource::new(r))),
        ReaderMut::Lbrprof(r) => RecordingSource::new(r).map(MappedSource::Recording),
    }
}

/// Hands every side-band event and every sample of `input` to `visitor`, in the event
/// stream's order ([`SampleSource::walk_in_order`]): read in place where the input can
/// be mapped ([`mapped_source`]), else (or with `stream_only`) its event stream, read on
/// a second thread ([`EventSource`]). [`SourceError::Undecodable`]: a perf.data sample
/// could not be decoded in place, the visitor has seen part of the input and the stream
/// is consumed: open the input again and read it with `stream_only`, which names the
/// record.
pub fn visit_input(
    input: &mut Input,
    stream_only: bool,
    visitor: &mut dyn SampleVisitor,
) -> Result<(), SourceError> {
    if !stream_only && let Some(mapped) = mapped_source(input) {
        let read = match mapped {
            MappedSource::Perf(mut s) => s.walk_in_order(visitor),
            MappedSource::Recording(mut s) => s.walk_in_order(visitor),
        };
        match read {
            // The stream is untouched: read it.
            Err(SourceError::Declined) => {}
            read => return read,
        }
    }
    EventSource::new(input.by_ref()).walk_in_order(visitor)
}

/// One step of the side-band replay, in input order.
#[derive(Clone, Copy, Debug)]
pub enum Step<'e> {
    /// A side-band event.
    Event(&'e Event),
    /// The samples of this epoch (they resolve against the state the events so far
    /// built).
    Epoch(u64),
}

/// Why a source could not give its samples. (Not `#[non_exhaustive]`: each variant asks
/// the consumer for something else, so a new one must make every consumer decide.)
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The mapped walk does not take this input; its event stream is untouched (read it
    /// instead).
    #[error("the input needs its event stream")]
    Declined,
    /// A perf.data sample could not be decoded in place; the event stream is consumed:
    /// open the input again and read the stream, which names the record.
    #[error(transparent)]
    Undecodable(#[from] ScanError),
    /// The input is damaged (the error the event stream gives).
    #[error(transparent)]
    Input(#[from] InputError),
}

/// What a consumer learnt from the samples, for the source's notes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Folded {
    /// Branch-stack entries decoded.
    pub branch_entries: u64,
    /// How the stack copies of `--call-graph dwarf` samples unwound.
    pub unwind: UnwindStats,
}

/// A consumer of every sample on its own, in stream order ([`SampleSource::walk_in_order`]):
/// each side-band event, and each sample after the events before it.
pub trait SampleVisitor {
    /// A side-band event (anything but a sample: mappings, tasks, losses, snapshots...).
    fn sideband(&mut self, event: &Event);
    /// A sample; its [`SampleRef::epoch`] numbers the side-band state before it, as its
    /// source numbers it.
    fn sample(&mut self, sample: &SampleRef<'_>);
}

/// Reads `events` on a second thread and hands them to `visitor` on this one, in order
/// and in batches (reading and visiting overlap). Stops at the first error and returns
/// it; the visitor has then seen every event before it.
pub fn visit_events<I, E>(events: I, visitor: &mut dyn SampleVisitor) -> Option<E>
where
    I: Iterator<Item = Result<Event, E>> + Send,
    E: Send,
{
    let (tx, rx) = mpsc::sync_channel::<Vec<Event>>(8);
    let (back_tx, back_rx) = mpsc::channel::<Vec<Event>>();
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut batch = Vec::with_capacity(EVENT_BATCH);
            for ev in events {
                match ev {
                    Ok(ev) => {
                        batch.push(ev);
                        if batch.len() == EVENT_BATCH {
                            // Reuse a returned batch; dropping its events here keeps the
                            // frees off the visiting thread.
                            let next = match back_rx.try_recv() {
                                Ok(mut b) => {
                                    b.clear();
                                    b
                                }
                                Err(_) => Vec::with_capacity(EVENT_BATCH),
                            };
                            if tx.send(std::mem::replace(&mut batch, next)).is_err() {
                                return None;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(batch);
                        return Some(e);
                    }
                }
            }
            let _ = tx.send(batch);
            None
        });
        let mut epoch = 0;
        for batch in rx {
            for ev in &batch {
                match ev {
                    Event::Sample(s) => visitor.sample(&SampleRef::of_host(s, epoch)),
                    ev => {
                        visitor.sideband(ev);
                        epoch += 1;
                    }
                }
            }
            let _ = back_tx.send(batch);
        }
        producer.join().unwrap_or(None)
    })
}

/// A source of samples: see the module docs.
pub trait SampleSource: Send {
    type Chunk: SampleChunk + Send;

    /// Walks the input, calling `on_chunk` with each chunk of samples in input order.
    fn walk(&mut self, on_chunk: &mut dyn FnMut(Self::Chunk)) -> Result<(), SourceError>;

    /// After the walk and the reading of every chunk: `failed`, the first chunk (by
    /// [`SampleChunk::index`]) that could not be read, with its error; `folded`, what the
    /// consumer learnt. The source's error, if the read failed anywhere.
    fn finish(
        &mut self,
        failed: Option<(usize, SourceError)>,
        folded: Folded,
    ) -> Result<(), SourceError>;

    /// After [`SampleSource::finish`]: the side-band replay.
    fn steps(&self) -> impl Iterator<Item = Step<'_>>;

    /// Walks the input handing every side-band event and every sample to `visitor`, in
    /// the event stream's order, then finishes as [`SampleSource::finish`] (on an error
    /// the visitor may have seen part of the input). [`SourceError::Declined`], with
    /// the stream untouched, where the source cannot give the stream's order.
    fn walk_in_order(&mut self, visitor: &mut dyn SampleVisitor) -> Result<(), SourceError>;
}

/// A part of a source's samples, readable on any thread.
pub trait SampleChunk {
    /// The chunk's position in input order (it numbers the positions that decide which
    /// of equal branch entries comes first).
    fn index(&self) -> usize;

    /// The unwinder of the samples' stack copies, when they have some.
    fn unwinder(&self) -> Option<&ScanUnwinder> {
        None
    }

    /// Calls `f` with every sample of the chunk, in input order. On an error `f` may
    /// already have seen some of them.
    fn for_each_sample(&self, f: impl FnMut(SampleRef<'_>)) -> Result<(), SourceError>;
}

// ---------------------------------------------------------------------------------------
// perf.data, mapped

/// A perf.data file, mapped and walked in place ([`crate::perfdata::mapped`]); samples with
/// stack copies (`--call-graph dwarf`) come with the [`ScanUnwinder`] that unwinds them,
/// fed with the side-band as the walk goes.
pub struct PerfSource<'i> {
    reader: &'i mut PerfDataReader,
    chunk_size: usize,
    unwinder: Option<Arc<ScanUnwinder>>,
    scan: Option<Scan>,
}

impl<'i> PerfSource<'i> {
    pub fn new(reader: &'i mut PerfDataReader) -> Self {
        let unwinder = reader
            .has_stack_copies()
            .then(|| Arc::new(ScanUnwinder::default()));
        PerfSource {
            reader,
            chunk_size: CHUNK_SIZE,
            unwinder,
            scan: None,
        }
    }

    /// Chunks of about `bytes` bytes (they end at record boundaries) instead of
    /// [`CHUNK_SIZE`].
    pub fn set_chunk_size(&mut self, bytes: usize) {
        self.chunk_size = bytes;
    }
}

/// A chunk of a [`PerfSource`].
pub struct PerfChunk {
    chunk: mapped::Chunk,
    unwinder: Option<Arc<ScanUnwinder>>,
}

impl SampleSource for PerfSource<'_> {
    type Chunk = PerfChunk;

    fn walk(&mut self, on_chunk: &mut dyn FnMut(PerfChunk)) -> Result<(), SourceError> {
        let unwinder = self.unwinder.clone();
        let mut give = |mut chunk: mapped::Chunk| {
            // The state of the chunk's epochs, before any thread unwinds its samples.
            if let Some(u) = &unwinder {
                for (ev, epoch) in chunk.take_sideband() {
                    u.observe(&ev, epoch);
                }
            }
            on_chunk(PerfChunk {
                chunk,
                unwinder: unwinder.clone(),
            });
        };
        let scan = match &self.unwinder {
            Some(_) => self
                .reader
                .mapped_scan_unwinding_with(self.chunk_size, &mut give),
            None => self.reader.mapped_scan_with(self.chunk_size, &mut give),
        };
        self.scan = Some(scan.ok_or(SourceError::Declined)?);
        Ok(())
    }

    fn finish(
        &mut self,
        failed: Option<(usize, SourceError)>,
        mut folded: Folded,
    ) -> Result<(), SourceError> {
        if let Some((_, e)) = failed {
            return Err(e);
        }
        let scan = self.scan.as_ref().ok_or(SourceError::Declined)?;
        if let Some(u) = &self.unwinder {
            // The events after the last chunk's: they count unusable mappings too.
            for (ev, epoch) in scan.sideband_epochs().skip(u.observed()) {
                u.observe(ev, epoch);
            }
            folded.unwind.unusable_mappings = u.unusable_mappings();
            self.reader.note_unwind_stats(folded.unwind);
        }
        self.reader.note_branch_entries(folded.branch_entries);
        Ok(())
    }

    /// The records in perf's order, as the event stream gives them
    /// ([`Scan::for_each_in_order`]: sorted in rounds, as perf sorts them), the samples
    /// read in place; stack copies are unwound as the stream unwinds them (an
    /// [`EventUnwinder`] following the side-band events in that order), the sample then
    /// handed out with the frames of its walk.
    fn walk_in_order(&mut self, visitor: &mut dyn SampleVisitor) -> Result<(), SourceError> {
        let scan = self
            .reader
            .mapped_scan_in_order()
            .ok_or(SourceError::Declined)?;
        let mut unwinder = self.unwinder.is_some().then(EventUnwinder::new);
        let mut frames = Vec::new();
        let mut branch_entries = 0;
        let read = scan.for_each_in_order(|r| match r {
            Ordered::Sideband(ev) => {
                if let Some(u) = &mut unwinder {
                    u.observe(ev);
                }
                visitor.sideband(ev);
            }
            Ordered::Sample(s) => {
                branch_entries += s.branches.len() as u64;
                match (&mut unwinder, s.stack_copy) {
                    (Some(u), Some(copy)) => {
                        frames.clear();
                        frames.extend_from_slice(&s.callchain.frames(s.mode));
                        u.apply_to_chain(s.pid, &mut frames, copy.regs, copy.stack);
                        visitor.sample(&SampleRef {
                            callchain: Callchain::Frames(&frames),
                            stack_copy: None,
                            ..s
                        });
                    }
                    _ => visitor.sample(&s),
                }
            }
        });
        read?;
        if let Some(u) = &unwinder {
            self.reader.note_unwind_stats(u.stats());
        }
        self.reader.note_branch_entries(branch_entries);
        self.scan = Some(scan);
        Ok(())
    }

    fn steps(&self) -> impl Iterator<Item = Step<'_>> {
        self.scan.iter().flat_map(|scan| {
            scan.sideband_epochs().flat_map(|(ev, starts)| {
                std::iter::once(Step::Event(ev)).chain(starts.map(Step::Epoch))
            })
        })
    }
}

impl SampleChunk for PerfChunk {
    fn index(&self) -> usize {
        self.chunk.index
    }

    fn unwinder(&self) -> Option<&ScanUnwinder> {
        self.unwinder.as_deref()
    }

    #[inline]
    fn for_each_sample(&self, f: impl FnMut(SampleRef<'_>)) -> Result<(), SourceError> {
        Ok(self.chunk.for_each_sample(f)?)
    }
}

// ---------------------------------------------------------------------------------------
// lbrprof.data, mapped

/// An lbrprof.data recording's chunks, mapped ([`RecordingReader::mapped_chunks`]): the
/// walk checks and decodes the side-band chunks (mappings, tasks, losses...) in file
/// order, and hands out the samples chunks, whose epoch is the number of side-band
/// chunks before them, to be checked and decoded on any thread.
///
/// The stream's semantics are kept: the first damaged chunk in file order (checksum,
/// decoding, a length over the limit, a bad summary) is the error, naming its offset; a
/// truncated last chunk gives the stream's warning and everything before it; unknown
/// chunk kinds are skipped with the stream's warning; the summary chunks before the
/// first damaged one are taken in order, as the stream takes them.
pub struct RecordingSource<'i> {
    reader: &'i mut RecordingReader,
    mapped: Arc<MappedChunks>,
    tail_error: Option<recording::FormatError>,
    /// Every side-band chunk walked: its index and events (none for summaries and
    /// unknown kinds).
    sideband: Vec<(usize, Vec<Event>)>,
    /// The side-band chunk the walk stopped at.
    failed: Option<(usize, recording::FormatError)>,
}

impl<'i> RecordingSource<'i> {
    /// `None` when the file cannot be mapped (its stream is untouched); else the stream
    /// is consumed by the walk.
    pub fn new(reader: &'i mut RecordingReader) -> Option<Self> {
        let mut mapped = reader.mapped_chunks()?;
        let tail_error = mapped.take_tail_error();
        Some(RecordingSource {
            reader,
            mapped: Arc::new(mapped),
            tail_error,
            sideband: Vec::new(),
            failed: None,
        })
    }
}

/// A samples chunk of a [`RecordingSource`].
pub struct RecordingChunk {
    mapped: Arc<MappedChunks>,
    index: usize,
    epoch: u64,
}

impl SampleSource for RecordingSource<'_> {
    type Chunk = RecordingChunk;

    fn walk(&mut self, on_chunk: &mut dyn FnMut(RecordingChunk)) -> Result<(), SourceError> {
        let mut epoch = 0u64;
        for (i, c) in self.mapped.chunks().iter().enumerate() {
            if c.is_samples() {
                on_chunk(RecordingChunk {
                    mapped: self.mapped.clone(),
                    index: i,
                    epoch,
                });
                continue;
            }
            epoch += 1;
            let decoded = self.mapped.payload(c).and_then(|payload| {
                if c.is_summary() {
                    // Taken in order by `finish`; checked here so that a bad one stops
                    // the walk.
                    recording::decode_summary(c.offset, payload)?;
                }
                recording::decode_payload(c.offset, c.kind, payload)
            });
            self.mapped.release(c);
            match decoded {
                Ok(events) => self.sideband.push((i, events)),
                Err(e) => {
                    // The stream stops here: nothing after it is needed.
                    self.failed = Some((i, e));
                    break;
                }
            }
        }
        Ok(())
    }

    fn finish(
        &mut self,
        failed: Option<(usize, SourceError)>,
        _folded: Folded,
    ) -> Result<(), SourceError> {
        let walk_failed = self
            .failed
            .take()
            .map(|(i, e)| (i, SourceError::from(InputError::from(e))));
        let first = match (walk_failed, failed) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let bad_index = first.as_ref().map_or(usize::MAX, |(i, _)| *i);
        // The summary chunks before the first damaged one, in order.
        let chunks = self.mapped.chunks();
        for c in chunks[..chunks.len().min(bad_index)]
            .iter()
            .filter(|c| c.is_summary())
        {
            let payload = self.mapped.payload(c).map_err(InputError::from)?;
            self.reader
                .read_summary(c.offset, payload)
                .map_err(InputError::from)?;
        }
        if let Some((_, e)) = first {
            return Err(e);
        }
        if let Some(e) = self.tail_error.take() {
            return Err(InputError::from(e).into());
        }
        Ok(())
    }

    /// The chunks in file order: each side-band chunk's events, each samples chunk's
    /// samples read in place, on the calling thread.
    fn walk_in_order(&mut self, visitor: &mut dyn SampleVisitor) -> Result<(), SourceError> {
        let mut chunks = Vec::new();
        self.walk(&mut |c| chunks.push(c))?;
        // A samples chunk's epoch is the number of side-band chunks before it.
        let mut chunks = chunks.into_iter().peekable();
        let mut failed = None;
        let mut per_event = Vec::new();
        'epochs: for epoch in 0..=self.sideband.len() {
            if let Some((_, events)) = epoch.checked_sub(1).map(|n| &self.sideband[n]) {
                for ev in events {
                    visitor.sideband(ev);
                }
            }
            while let Some(c) = chunks.next_if(|c| c.epoch == epoch as u64) {
                if let Err(e) = c.read(Some(&mut per_event), |s| visitor.sample(&s)) {
                    failed = Some((c.index, e));
                    break 'epochs;
                }
            }
        }
        // Counted as the stream counts them, for a recording without its summary.
        self.reader.note_samples_per_event(per_event);
        self.finish(failed, Folded::default())
    }

    fn steps(&self) -> impl Iterator<Item = Step<'_>> {
        // Chunk i's epoch is the number of side-band chunks before it: the epoch a
        // side-band chunk starts is one more than its position among them.
        self.sideband
            .iter()
            .enumerate()
            .flat_map(|(n, (_, events))| {
                events
                    .iter()
                    .map(Step::Event)
                    .chain(std::iter::once(Step::Epoch(n as u64 + 1)))
            })
    }
}

impl SampleChunk for RecordingChunk {
    fn index(&self) -> usize {
        self.index
    }

    fn for_each_sample(&self, f: impl FnMut(SampleRef<'_>)) -> Result<(), SourceError> {
        self.read(None, f)
    }
}

impl RecordingChunk {
    /// [`SampleChunk::for_each_sample`], counting the samples of every event in
    /// `per_event` as the stream counts them ([`recording::count_event_sample`]).
    fn read(
        &self,
        mut per_event: Option<&mut Vec<u64>>,
        mut f: impl FnMut(SampleRef<'_>),
    ) -> Result<(), SourceError> {
        let mapped = &*self.mapped;
        let c = &mapped.chunks()[self.index];
        if !c.is_event_samples() {
            per_event = None;
        }
        let read = mapped.payload(c).and_then(|payload| {
            recording::for_each_sample_of(c.offset, c.kind, payload, |s| {
                if let Some(counts) = per_event.as_deref_mut() {
                    recording::count_event_sample(counts, s.event);
                }
                // Another event's sample (`--event NAME`): the stream would not give it.
                if mapped.selects(s) {
                    f(SampleRef::of_host(s, self.epoch));
                }
            })
        });
        // Resident memory follows the chunks being read, not the file.
        mapped.release(c);
        Ok(read.map_err(InputError::from)?)
    }
}

// ---------------------------------------------------------------------------------------
// An event stream

/// Any stream of events (an input that cannot be mapped, a live capture): read on the
/// walk's thread, its samples handed out in batches; every event that is not a sample
/// is side-band and starts an epoch.
pub struct EventSource<I> {
    events: I,
    sideband: Vec<Event>,
}

/// Events per [`EventChunk`].
const EVENT_BATCH: usize = 2048;

impl<I> EventSource<I> {
    pub fn new(events: I) -> Self {
        EventSource {
            events,
            sideband: Vec::new(),
        }
    }
}

/// A batch of an [`EventSource`]'s events.
pub struct EventChunk {
    index: usize,
    /// The epoch of the first event.
    epoch: u64,
    events: Vec<Event>,
}

impl<I, E> SampleSource for EventSource<I>
where
    I: Iterator<Item = Result<Event, E>> + Send,
    E: Into<InputError> + Send,
{
    type Chunk = EventChunk;

    fn walk(&mut self, on_chunk: &mut dyn FnMut(EventChunk)) -> Result<(), SourceError> {
        let mut chunk = EventChunk {
            index: 0,
            epoch: 0,
            events: Vec::with_capacity(EVENT_BATCH),
        };
        let mut result = Ok(());
        for ev in self.events.by_ref() {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    result = Err(SourceError::Input(e.into()));
                    break;
                }
            };
            if !matches!(ev, Event::Sample(_)) {
                self.sideband.push(ev.clone());
            }
            chunk.events.push(ev);
            if chunk.events.len() == EVENT_BATCH {
                let next = EventChunk {
                    index: chunk.index + 1,
                    epoch: self.sideband.len() as u64,
                    events: Vec::with_capacity(EVENT_BATCH),
                };
                on_chunk(std::mem::replace(&mut chunk, next));
            }
        }
        if !chunk.events.is_empty() {
            on_chunk(chunk);
        }
        result
    }

    fn finish(
        &mut self,
        failed: Option<(usize, SourceError)>,
        _folded: Folded,
    ) -> Result<(), SourceError> {
        failed.map_or(Ok(()), |(_, e)| Err(e))
    }

    /// The events read on a second thread, visited on this one ([`visit_events`]).
    fn walk_in_order(&mut self, visitor: &mut dyn SampleVisitor) -> Result<(), SourceError> {
        visit_events(self.events.by_ref(), visitor)
            .map_or(Ok(()), |e| Err(SourceError::Input(e.into())))
    }

    fn steps(&self) -> impl Iterator<Item = Step<'_>> {
        self.sideband
            .iter()
            .enumerate()
            .flat_map(|(i, ev)| [Step::Event(ev), Step::Epoch(i as u64 + 1)])
    }
}

impl SampleChunk for EventChunk {
    fn index(&self) -> usize {
        self.index
    }

    #[inline]
    fn for_each_sample(&self, mut f: impl FnMut(SampleRef<'_>)) -> Result<(), SourceError> {
        let mut epoch = self.epoch;
        for ev in &self.events {
            match ev {
                Event::Sample(s) => f(SampleRef::of_host(s, epoch)),
                _ => epoch += 1,
            }
        }
        Ok(())
    }
}
