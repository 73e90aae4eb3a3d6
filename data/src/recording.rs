//! The `lbrprof.data` recording format: a streaming writer and a streaming reader.
//!
//! ```text
//!  offset  size  field
//!  ------  ----  ---------------------------------------------------------------
//!       0     8  magic  b"LBRPROF\0"
//!       8     2  major version (u16 LE)   readers reject a major they do not know
//!      10     2  minor version (u16 LE)   additions only (see "Compatibility" below)
//!      12     4  header length H (u32 LE), at most 1 MiB
//!      16     4  CRC-32 (IEEE) of the header bytes
//!      20     H  header: model::Header as JSON
//!   20+H   ...   chunks, appended while recording:
//!
//!   chunk:  [len u32 LE][crc32 u32 LE][kind u8][payload: len bytes]
//!           crc32 covers the len field, the kind byte and the payload
//!           len is at most 64 MiB
//!
//!   kind  payload (postcard-encoded unless noted)
//!   ----  ----------------------------------------------------------------
//!      1  Vec<model::Mapping>
//!      2  Vec<model::TaskEvent>
//!      3  Vec<model::HostSample>
//!      4  Vec<model::LbrSnapshot>
//!      5  Vec<model::Loss>
//!      6  Summary as JSON: the end-of-recording chunk, written once by `finish`
//!         (since 1.1 with `runs`: the runs of a `record --repeat N`, see below)
//!      7  Vec<model::VcpuThread>
//!      8  Vec<model::VcpuStats>
//!      9  Vec<(time_ns u64, pid u32, tid u32, comm String)>: execs
//!         (model::TaskEvent::Exec), since 1.1; a 1.0 reader skips them with
//!         its unknown-kind warning, so it misses the new program's name
//!     10  Vec<model::GuestProcess>: the processes of a Linux program run in the VM
//!         (address space, pid, parent, comm, executable, CR3 values)
//!     11  Vec<model::ExactProfile>: exact mode's per-vCPU instruction and call
//!         counts, written at the end
//!         (1.1 readers before 10 and 11 skip them with a warning)
//!     12  Vec<(event u32, model::HostSample)>: the host samples of a recording of
//!         several events (`record -e A,B`), each with the index of its event in the
//!         header's `sampling.events`; such a recording has no kind-3 chunks (a reader
//!         before kind 12 skips them with a warning: it sees no samples)
//!     13  Vec<model::SamplePhases>: what the shim was doing on a vCPU thread at its
//!         host samples (`record --vm`), written as the samples are drained
//!     14  Vec<model::VcpuSpace>: which address space of a Linux program each vCPU
//!         runs from when on (`record --vm`), written before the samples it places
//!         (a reader before 14 skips them with a warning, and names host samples by
//!         each vCPU's latest snapshot)
//!    15..  reserved for later minor versions; a reader skips kinds it does not
//!        know, with a warning
//! ```
//!
//! Several events (since 1.1 with kind 12): the header's `sampling.events` names them
//! in index order (`sampling.event` is the first), and the summary's `event_samples`
//! counts each one's samples. A reader gives every event's samples, or only one
//! event's ([`RecordingReader::select_event`]); a sample knows its event
//! ([`HostSample::event`]).
//!
//! Repeated runs (minor version 1): `record --repeat N -- CMD` runs the command N times,
//! one after the other, into one recording. The runs share the chunk stream (their
//! samples are told apart by time, as the runs never overlap); the summary's `runs` lists
//! each run's `[start_ns, end_ns]` window on the samples' clock, its exit status and its
//! sample count, in run order. A recording without `runs` (an older one, one run, or a
//! recording whose summary was lost to a kill) is one run. [`read_summary`] finds the
//! summary without decoding the rest of the file, so a reader can learn the run windows
//! before it folds the samples.
//!
//! Compatibility: postcard payloads are positional, so a chunk kind's item type never
//! changes within a major version; a later minor version adds new chunk kinds (older
//! readers skip them) or new fields in the JSON header and summary (readers default
//! them). Anything else is a new major version.
//!
//! The writer runs on its own thread fed over a crossbeam channel and flushes at least
//! every 250 ms. It keeps the order in which events arrive: each run of events of one
//! kind becomes one chunk, so a reader replays side band (mappings, tasks, losses, vCPUs)
//! and samples in the producer's order. The host sampler sends them in time order, so a
//! reader meets every mapping before the samples that need it, and a process's fork
//! before the mappings of the program it then execs. A `record` killed with SIGKILL
//! therefore loses at most the last interval (and what the sampler held back to order
//! it, one drain of at most 100 ms), and the file stays readable: the reader accepts a
//! truncated last chunk (a warning naming its offset, everything before it kept), treats
//! a last chunk that fails its checksum the same way (it is most often the summary, which
//! reports recompute from the samples), reports any other checksum or decoding failure as
//! an error naming the chunk's offset, and never loads more than one chunk at a time.
//! While it is written, a recording lives in `NAME.<pid>.partial` ([`partial_path`]);
//! [`RecordingWriter::finish`] renames it into place.
//!
//! Reports read the chunks another way, with the same outcome: [`RecordingReader::mapped_chunks`]
//! maps the file and walks the chunk headers only ([`MappedChunks`]), so callers check
//! ([`MappedChunks::payload`]) and decode ([`decode_payload`], [`for_each_sample_of`], an
//! allocation-free decoder of sample chunks) many chunks at once, in any order
//! ([`crate::source::RecordingSource`]).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use crate::model::{
    Event, ExactProfile, GuestProcess, Header, HostSample, LbrSnapshot, Loss, Mapping,
    SamplePhases, TaskEvent, VcpuSpace, VcpuStats, VcpuThread,
};

/// The first eight bytes of every `lbrprof.data` file.
pub const MAGIC: [u8; 8] = *b"LBRPROF\0";
/// The format version this build writes; it reads any minor version of this major.
pub const VERSION_MAJOR: u16 = 1;
pub const VERSION_MINOR: u16 = 1;

const PREAMBLE_LEN: usize = 20;
const CHUNK_HEADER_LEN: usize = 9;
const MAX_HEADER_LEN: u32 = 1 << 20;
/// Largest chunk payload a reader accepts.
pub const MAX_CHUNK_LEN: u32 = 64 << 20;
/// The writer closes a batch once its encoded size passes this.
const TARGET_CHUNK_LEN: usize = 1 << 20;
/// The writer flushes at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// The file offsets where the chunks of a recording's bytes start, from the preamble's
/// header length and each chunk's length field alone (no CRC or kind check), up to the
/// end of the bytes or the first length field that does not fit. For tools and tests
/// that cut or damage recordings at chunk boundaries; readers use [`RecordingReader`].
pub fn chunk_offsets(bytes: &[u8]) -> Vec<usize> {
    let le_u32 = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let mut offsets = Vec::new();
    let Some(mut off) = le_u32(12).and_then(|h| h.checked_add(PREAMBLE_LEN)) else {
        return offsets;
    };
    while off < bytes.len() {
        offsets.push(off);
        match le_u32(off).and_then(|len| off.checked_add(CHUNK_HEADER_LEN + len)) {
            Some(next) => off = next,
            None => break,
        }
    }
    offsets
}
const CHANNEL_CAPACITY: usize = 1 << 16;

/// Chunk kinds (the `kind` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkKind {
    Mappings = 1,
    Tasks = 2,
    Samples = 3,
    Snapshots = 4,
    Losses = 5,
    Summary = 6,
    Vcpus = 7,
    VcpuStats = 8,
    Execs = 9,
    GuestProcesses = 10,
    ExactProfiles = 11,
    EventSamples = 12,
    SamplePhases = 13,
    VcpuSpaces = 14,
}

impl ChunkKind {
    fn from_u8(kind: u8) -> Option<ChunkKind> {
        Some(match kind {
            1 => ChunkKind::Mappings,
            2 => ChunkKind::Tasks,
            3 => ChunkKind::Samples,
            4 => ChunkKind::Snapshots,
            5 => ChunkKind::Losses,
            6 => ChunkKind::Summary,
            7 => ChunkKind::Vcpus,
            8 => ChunkKind::VcpuStats,
            9 => ChunkKind::Execs,
            10 => ChunkKind::GuestProcesses,
            11 => ChunkKind::ExactProfiles,
            12 => ChunkKind::EventSamples,
            13 => ChunkKind::SamplePhases,
            14 => ChunkKind::VcpuSpaces,
            _ => return None,
        })
    }
}

/// Totals and notes stored at the end of a recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub duration_ns: u64,
    pub samples: u64,
    pub snapshots: u64,
    pub lost: u64,
    pub throttled: u64,
    /// The profiled program's exit status (128+signal for a signal death), when known.
    pub exit_status: Option<i32>,
    pub notes: Vec<String>,
    /// The runs of a `record --repeat N` recording, in order (empty: one run). Since 1.1.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunInfo>,
    /// Samples per event, in the header's `sampling.events` order, for a recording of
    /// several events (empty otherwise). Since 1.1 with chunk kind 12.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub event_samples: Vec<u64>,
}

/// One run of a repeated recording: the time window its samples fall in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunInfo {
    /// When the run's command was started and when its last samples were drained
    /// (CLOCK_MONOTONIC ns, the samples' clock).
    pub start_ns: u64,
    pub end_ns: u64,
    /// The command's exit status (128+signal for a signal death).
    pub exit_status: Option<i32>,
    /// Samples taken in this run.
    pub samples: u64,
}

impl Summary {
    /// The start times of the runs of a repeated recording, in order; empty for a
    /// recording of one run. A sample at time `t` belongs to the last run started at or
    /// before `t`.
    pub fn run_starts(&self) -> Vec<u64> {
        if self.runs.len() < 2 {
            return Vec::new();
        }
        self.runs.iter().map(|r| r.start_ns).collect()
    }
}

/// The summary of the recording at `path`, found by walking the chunk headers only (the
/// payloads are neither read nor checked but the summary's): `None` for a recording that
/// was not finished.
pub fn read_summary(path: &Path) -> Result<Option<Summary>, FormatError> {
    let mut reader = RecordingReader::open(path)?;
    let Some(mapped) = reader.mapped_chunks() else {
        // Not mappable: read the stream to its end.
        while reader.next_chunk()?.is_some() {}
        return Ok(reader.summary().cloned());
    };
    match mapped.chunks().iter().rev().find(|c| c.is_summary()) {
        Some(c) => Ok(Some(decode_summary(c.offset, mapped.payload(c)?)?)),
        None => Ok(None),
    }
}

/// What the writer wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub bytes: u64,
    pub chunks: u64,
    pub events: u64,
}

/// Why a recording could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("I/O error")]
    Io(#[from] io::Error),
    #[error("not an lbrprof recording (bad magic)")]
    NotARecording,
    #[error(
        "unsupported lbrprof.data version {major}.{minor} (this lbrprof reads {VERSION_MAJOR}.x)"
    )]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("corrupt recording header: {reason}")]
    CorruptHeader { reason: String },
    #[error("corrupt chunk at byte offset {offset}: {reason}")]
    CorruptChunk { offset: u64, reason: String },
    #[error("cannot encode a chunk")]
    Encode(#[source] postcard::Error),
    #[error("the recording writer thread failed")]
    WriterGone,
}

// ---------------------------------------------------------------------------------------
// Writing

/// Writes a recording on a background thread; see the module docs for the layout.
///
/// The recording goes to a partial file beside the target ([`partial_path`]) and is
/// renamed over the target only by [`RecordingWriter::finish`], so a failed or killed
/// `record` never destroys the recording that was there: a kill leaves the partial file,
/// which readers accept (they warn about its missing end), and which no later `record`
/// touches. The target's previous recording is kept as `NAME.old` (perf's convention)
/// unless the writer was made with [`Replace::Overwrite`].
pub struct RecordingWriter {
    tx: Sender<Message>,
    thread: JoinHandle<Result<WriteStats, FormatError>>,
    target: PathBuf,
    /// `None` when the target is written in place (it is not a regular file: a FIFO or a
    /// device, which must not be renamed over).
    partial: Option<PathBuf>,
    replace: Replace,
}

/// What [`RecordingWriter::finish`] does with a recording already at the target path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replace {
    /// Keep it as `NAME.old` (replacing an older `NAME.old`).
    #[default]
    KeepOld,
    /// Replace it.
    Overwrite,
}

/// Where a recording for `target` is written until it is complete: `NAME.<pid>.partial`
/// beside it (the pid keeps concurrent or later recorders off each other's files).
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.partial", std::process::id()));
    target.with_file_name(name)
}

/// Where [`Replace::KeepOld`] keeps the previous recording of `target`: `NAME.old`.
pub fn old_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".old");
    target.with_file_name(name)
}

/// A cheap, cloneable handle through which producer threads hand events to the writer.
#[derive(Clone)]
pub struct EventSink {
    tx: Sender<Message>,
}

enum Message {
    Event(Box<Event>),
    Finish(Summary),
    /// Stop at once and write nothing more (the file is about to be removed).
    Abandon,
}

impl RecordingWriter {
    /// Starts a recording for `path` ([`Replace::KeepOld`]); see [`Self::create_with`].
    pub fn create(path: &Path, header: &Header) -> Result<RecordingWriter, FormatError> {
        Self::create_with(path, header, Replace::KeepOld)
    }

    /// Creates the partial file for `path` and writes the header at once, so an unwritable
    /// directory fails here, before anything is recorded, and the file is valid from the
    /// start. Nothing happens to `path` itself until [`Self::finish`]. The file is private
    /// (0600), as perf makes perf.data: a recording holds kernel addresses and the profiled
    /// program's data.
    pub fn create_with(
        path: &Path,
        header: &Header,
        replace: Replace,
    ) -> Result<RecordingWriter, FormatError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let in_place = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        let partial = (!in_place).then(|| partial_path(path));
        // A file to be renamed into place is synced first; a FIFO or device cannot be.
        let sync = partial.is_some();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(partial.as_deref().unwrap_or(path))?;
        if partial.is_some() {
            // A file left by an earlier process with this pid keeps its mode through
            // O_TRUNC: make it private too.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let header_json = serde_json::to_vec(header).map_err(|e| FormatError::CorruptHeader {
            reason: e.to_string(),
        })?;
        let mut preamble = Vec::with_capacity(PREAMBLE_LEN + header_json.len());
        preamble.extend_from_slice(&MAGIC);
        preamble.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        preamble.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        preamble.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
        preamble.extend_from_slice(&crc32fast::hash(&header_json).to_le_bytes());
        preamble.extend_from_slice(&header_json);
        out.write_all(&preamble)?;
        out.flush()?;
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
        let bytes = preamble.len() as u64;
        let batches = Batches {
            tag_events: header.sampling.events.len() > 1,
            ..Batches::default()
        };
        let thread = std::thread::Builder::new()
            .name("lbrprof-writer".into())
            .spawn(move || writer_loop(out, rx, bytes, sync, batches))?;
        Ok(RecordingWriter {
            tx,
            thread,
            target: path.to_owned(),
            partial,
            replace,
        })
    }

    /// The file being written until [`Self::finish`] (the target itself when it is not a
    /// regular file).
    pub fn writing_to(&self) -> &Path {
        self.partial.as_deref().unwrap_or(&self.target)
    }

    pub fn sink(&self) -> EventSink {
        EventSink {
            tx: self.tx.clone(),
        }
    }

    /// Writes everything still queued (from every sink), then the summary chunk, closes
    /// the file and renames it over the target (keeping the target's previous recording as
    /// `NAME.old` with [`Replace::KeepOld`]). Events sent through sinks after this call are
    /// discarded. On an error the partial file stays where it is, readable.
    pub fn finish(self, summary: &Summary) -> Result<WriteStats, FormatError> {
        let sent = self.tx.send(Message::Finish(summary.clone()));
        drop(self.tx);
        let result = self.thread.join().map_err(|_| FormatError::WriterGone)?;
        let stats = sent.map_err(|_| FormatError::WriterGone).and(result)?;
        if let Some(partial) = &self.partial {
            if self.replace == Replace::KeepOld && std::fs::metadata(&self.target).is_ok() {
                std::fs::rename(&self.target, old_path(&self.target))?;
            }
            std::fs::rename(partial, &self.target)?;
        }
        Ok(stats)
    }

    /// Stops writing and removes the partial file: for a recording that never started
    /// (its command could not be run, its image was refused), so that nothing is left
    /// behind and the target is untouched.
    pub fn abandon(self) {
        // Sinks may still be alive: tell the thread to stop rather than wait for them.
        let _ = self.tx.send(Message::Abandon);
        drop(self.tx);
        let _ = self.thread.join();
        if let Some(partial) = &self.partial {
            let _ = std::fs::remove_file(partial);
        }
    }
}

impl EventSink {
    /// Queues an event. Blocks only while the writer is a full channel behind (a slow
    /// disk); once the writer has stopped, events are discarded.
    pub fn send(&self, event: Event) {
        let _ = self.tx.send(Message::Event(Box::new(event)));
    }
}

/// The events of one flush interval in the order they arrived, as runs of one kind: each
/// run becomes one chunk, so a reader replays mappings, task events and samples in the
/// order the producer sent them (an exec's mappings after the fork that made the
/// process, a sample after the mapping it needs), not grouped by kind.
#[derive(Default)]
struct Batches {
    runs: Vec<Run>,
    /// Rough encoded size of what is queued, to cap chunk sizes.
    approx_bytes: usize,
    /// The recording has several events: samples go to kind 12 with their event.
    tag_events: bool,
}

/// An exec as chunk kind 9 stores it: `(time_ns, pid, tid, comm)`.
type ExecItem = (u64, u32, u32, String);

/// Consecutive events of one chunk kind.
enum Run {
    Mappings(Vec<Mapping>),
    Tasks(Vec<TaskEvent>),
    Execs(Vec<ExecItem>),
    Losses(Vec<Loss>),
    Vcpus(Vec<VcpuThread>),
    VcpuStats(Vec<VcpuStats>),
    GuestProcesses(Vec<GuestProcess>),
    ExactProfiles(Vec<ExactProfile>),
    SamplePhases(Vec<SamplePhases>),
    VcpuSpaces(Vec<VcpuSpace>),
    Snapshots(Vec<LbrSnapshot>),
    Samples(Vec<HostSample>),
    EventSamples(Vec<(u32, HostSample)>),
}

impl Batches {
    fn push(&mut self, event: Event) {
        self.approx_bytes += approx_size(&event);
        // Append to the last run when it has this kind, else start a new run.
        macro_rules! append {
            ($variant:ident, $item:expr) => {
                match self.runs.last_mut() {
                    Some(Run::$variant(items)) => items.push($item),
                    _ => self.runs.push(Run::$variant(vec![$item])),
                }
            };
        }
        match event {
            Event::Mapping(m) => append!(Mappings, m),
            Event::Task(TaskEvent::Exec {
                time_ns,
                pid,
                tid,
                comm,
            }) => append!(Execs, (time_ns, pid, tid, comm)),
            Event::Task(t) => append!(Tasks, t),
            Event::Loss(l) => append!(Losses, l),
            Event::Vcpu(v) => append!(Vcpus, v),
            Event::VcpuStats(v) => append!(VcpuStats, v),
            Event::GuestProcess(p) => append!(GuestProcesses, p),
            Event::ExactProfile(p) => append!(ExactProfiles, p),
            Event::SamplePhases(p) => append!(SamplePhases, p),
            Event::VcpuSpace(v) => append!(VcpuSpaces, v),
            Event::Snapshot(s) => append!(Snapshots, s),
            Event::Sample(s) if self.tag_events => append!(EventSamples, (s.event, s)),
            Event::Sample(s) => append!(Samples, s),
        }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

fn approx_size(event: &Event) -> usize {
    match event {
        Event::Sample(s) => 48 + s.callchain.len() * 9 + s.branches.len() * 24,
        Event::Snapshot(s) => 96 + s.entries.len() * 24 + s.guest_stack.len() * 8,
        Event::Mapping(m) => 64 + m.path.len(),
        Event::VcpuStats(v) => 96 + v.exits.len() * 16,
        Event::GuestProcess(p) => 64 + p.exe.len() + p.comm.len(),
        Event::ExactProfile(p) => 32 + p.runs.len() * 24 + p.calls.len() * 32,
        Event::SamplePhases(p) => 16 + p.samples.len() * 10,
        Event::Task(_) | Event::Loss(_) | Event::Vcpu(_) | Event::VcpuSpace(_) => 32,
    }
}

struct ChunkOut<W: Write> {
    out: W,
    stats: WriteStats,
    scratch: Vec<u8>,
}

impl<W: Write> ChunkOut<W> {
    fn write_chunk(&mut self, kind: ChunkKind, payload: &[u8]) -> Result<(), FormatError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_CHUNK_LEN)
            .ok_or_else(|| FormatError::CorruptChunk {
                offset: self.stats.bytes,
                reason: format!("chunk of {} bytes is too large", payload.len()),
            })?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&[kind as u8]);
        crc.update(payload);
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&crc.finalize().to_le_bytes())?;
        self.out.write_all(&[kind as u8])?;
        self.out.write_all(payload)?;
        self.stats.bytes += (CHUNK_HEADER_LEN + payload.len()) as u64;
        self.stats.chunks += 1;
        Ok(())
    }

    fn write_items<T: Serialize>(
        &mut self,
        kind: ChunkKind,
        items: &mut Vec<T>,
    ) -> Result<(), FormatError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut payload = std::mem::take(&mut self.scratch);
        payload.clear();
        let payload = postcard::to_extend(&*items, payload).map_err(FormatError::Encode)?;
        self.write_chunk(kind, &payload)?;
        self.stats.events += items.len() as u64;
        self.scratch = payload;
        items.clear();
        Ok(())
    }

    fn flush_batches(&mut self, b: &mut Batches) -> Result<(), FormatError> {
        for run in b.runs.drain(..) {
            match run {
                Run::Mappings(mut v) => self.write_items(ChunkKind::Mappings, &mut v)?,
                Run::Tasks(mut v) => self.write_items(ChunkKind::Tasks, &mut v)?,
                Run::Execs(mut v) => self.write_items(ChunkKind::Execs, &mut v)?,
                Run::Losses(mut v) => self.write_items(ChunkKind::Losses, &mut v)?,
                Run::Vcpus(mut v) => self.write_items(ChunkKind::Vcpus, &mut v)?,
                Run::VcpuStats(mut v) => self.write_items(ChunkKind::VcpuStats, &mut v)?,
                Run::GuestProcesses(mut v) => {
                    self.write_items(ChunkKind::GuestProcesses, &mut v)?
                }
                Run::ExactProfiles(mut v) => self.write_items(ChunkKind::ExactProfiles, &mut v)?,
                Run::SamplePhases(mut v) => self.write_items(ChunkKind::SamplePhases, &mut v)?,
                Run::VcpuSpaces(mut v) => self.write_items(ChunkKind::VcpuSpaces, &mut v)?,
                Run::Snapshots(mut v) => self.write_items(ChunkKind::Snapshots, &mut v)?,
                Run::Samples(mut v) => self.write_items(ChunkKind::Samples, &mut v)?,
                Run::EventSamples(mut v) => self.write_items(ChunkKind::EventSamples, &mut v)?,
            }
        }
        b.approx_bytes = 0;
        self.out.flush()?;
        Ok(())
    }
}

fn writer_loop(
    out: BufWriter<File>,
    rx: Receiver<Message>,
    preamble_bytes: u64,
    sync: bool,
    mut batches: Batches,
) -> Result<WriteStats, FormatError> {
    let mut w = ChunkOut {
        out,
        stats: WriteStats {
            bytes: preamble_bytes,
            ..WriteStats::default()
        },
        scratch: Vec::new(),
    };
    let mut deadline = Instant::now() + FLUSH_INTERVAL;
    loop {
        let message = rx.recv_deadline(deadline);
        match message {
            Ok(Message::Event(event)) => {
                batches.push(*event);
                if batches.approx_bytes >= TARGET_CHUNK_LEN {
                    w.flush_batches(&mut batches)?;
                }
            }
            Ok(Message::Finish(summary)) => {
                // Everything sent before `finish` is already queued ahead of this message.
                while let Ok(Message::Event(event)) = rx.try_recv() {
                    batches.push(*event);
                }
                w.flush_batches(&mut batches)?;
                let json = serde_json::to_vec(&summary).map_err(|e| FormatError::CorruptChunk {
                    offset: w.stats.bytes,
                    reason: e.to_string(),
                })?;
                w.write_chunk(ChunkKind::Summary, &json)?;
                w.out.flush()?;
                if sync {
                    // On disk before it is renamed into place.
                    w.out.get_ref().sync_all()?;
                }
                return Ok(w.stats);
            }
            Ok(Message::Abandon) => return Ok(w.stats),
            Err(RecvTimeoutError::Timeout) => {
                if !batches.is_empty() {
                    w.flush_batches(&mut batches)?;
                }
                deadline = Instant::now() + FLUSH_INTERVAL;
            }
            Err(RecvTimeoutError::Disconnected) => {
                // The writer was dropped without `finish`: keep what arrived.
                w.flush_batches(&mut batches)?;
                return Ok(w.stats);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading

/// One chunk as stored: where it starts, its kind byte and its (checked) payload.
#[derive(Debug)]
pub struct RawChunk {
    pub offset: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Streams a recording chunk by chunk.
pub struct RecordingReader {
    input: BufReader<File>,
    header: Header,
    version: (u16, u16),
    offset: u64,
    file_len: u64,
    summary: Option<Summary>,
    warnings: Vec<String>,
    pending: std::vec::IntoIter<Event>,
    done: bool,
    /// Only this event's samples are given ([`Self::select_event`]).
    selected: Option<u32>,
    /// Samples read per event index (the stream only).
    samples_per_event: Vec<u64>,
}

impl RecordingReader {
    pub fn open(path: &Path) -> Result<RecordingReader, FormatError> {
        let file = File::open(path)?;
        Self::from_file(file)
    }

    pub fn from_file(mut file: File) -> Result<RecordingReader, FormatError> {
        let file_len = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut preamble = [0u8; PREAMBLE_LEN];
        let got = read_up_to(&mut input, &mut preamble)?;
        if got < MAGIC.len() || preamble[..8] != MAGIC {
            return Err(FormatError::NotARecording);
        }
        if got < PREAMBLE_LEN {
            return Err(FormatError::CorruptHeader {
                reason: format!("file ends after {got} bytes, inside the header"),
            });
        }
        let major = u16::from_le_bytes([preamble[8], preamble[9]]);
        let minor = u16::from_le_bytes([preamble[10], preamble[11]]);
        if major != VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion { major, minor });
        }
        let header_len = u32::from_le_bytes(preamble[12..16].try_into().unwrap_or_default());
        let header_crc = u32::from_le_bytes(preamble[16..20].try_into().unwrap_or_default());
        if header_len > MAX_HEADER_LEN {
            return Err(FormatError::CorruptHeader {
                reason: format!("header length {header_len} exceeds {MAX_HEADER_LEN}"),
            });
        }
        let mut header_bytes = vec![0u8; header_len as usize];
        if read_up_to(&mut input, &mut header_bytes)? < header_bytes.len() {
            return Err(FormatError::CorruptHeader {
                reason: "file ends inside the header".into(),
            });
        }
        if crc32fast::hash(&header_bytes) != header_crc {
            return Err(FormatError::CorruptHeader {
                reason: "header checksum mismatch".into(),
            });
        }
        let header: Header =
            serde_json::from_slice(&header_bytes).map_err(|e| FormatError::CorruptHeader {
                reason: e.to_string(),
            })?;
        Ok(RecordingReader {
            input,
            header,
            version: (major, minor),
            offset: (PREAMBLE_LEN + header_bytes.len()) as u64,
            file_len,
            summary: None,
            warnings: Vec::new(),
            pending: Vec::new().into_iter(),
            done: false,
            selected: None,
            samples_per_event: Vec::new(),
        })
    }

    /// The sampled events by perf's name, in [`HostSample::event`] order.
    pub fn event_names(&self) -> Vec<String> {
        self.header.sampling.event_names()
    }

    /// From now on only the samples of the event named `name` are given (the others
    /// are still counted, [`Self::samples_per_event`]); `false` when there is none.
    pub fn select_event(&mut self, name: &str) -> bool {
        match self.event_names().iter().position(|n| n == name) {
            Some(i) => {
                self.selected = u32::try_from(i).ok();
                true
            }
            None => false,
        }
    }

    /// The event chosen with [`Self::select_event`].
    pub fn selected_event(&self) -> Option<String> {
        let i = self.selected?;
        self.event_names().get(i as usize).cloned()
    }

    /// Each event's name and its samples: read so far by the stream, or, once the
    /// stream has ended (or for a [`MappedChunks`] caller), the summary's counts when it
    /// has them.
    pub fn samples_per_event(&self) -> Vec<(String, u64)> {
        let counted = self
            .summary
            .as_ref()
            .map(|s| s.event_samples.as_slice())
            .filter(|c| !c.is_empty() && self.samples_per_event.is_empty())
            .unwrap_or(&self.samples_per_event);
        self.event_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| (name, counted.get(i).copied().unwrap_or(0)))
            .collect()
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// (major, minor) of the file.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    /// The end-of-recording summary, once the reader has reached it. `None` after the
    /// whole file was read means the recording was not finished (e.g. `record` was killed).
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// Problems that did not stop reading (truncation at the end, unknown chunk kinds).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Reads the next chunk with its checksum verified, or `None` at the end of the data.
    /// A truncated last chunk ends the data with a warning. Summary chunks are consumed
    /// here (see [`Self::summary`]); other kinds are returned undecoded, so callers can
    /// decode chunks in parallel with [`decode_chunk`].
    pub fn next_chunk(&mut self) -> Result<Option<RawChunk>, FormatError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let offset = self.offset;
            let mut head = [0u8; CHUNK_HEADER_LEN];
            let got = read_up_to(&mut self.input, &mut head)?;
            if got == 0 {
                self.done = true;
                return Ok(None);
            }
            if got < CHUNK_HEADER_LEN {
                self.truncated(offset, CHUNK_HEADER_LEN - got);
                return Ok(None);
            }
            let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
            let kind = head[8];
            if len > MAX_CHUNK_LEN {
                self.done = true;
                return Err(FormatError::CorruptChunk {
                    offset,
                    reason: format!("length {len} exceeds the {MAX_CHUNK_LEN}-byte limit"),
                });
            }
            let remaining = self
                .file_len
                .saturating_sub(offset + CHUNK_HEADER_LEN as u64);
            if u64::from(len) > remaining {
                // A torn write at the end: what the kernel had when `record` died.
                self.truncated(offset, (u64::from(len) - remaining) as usize);
                return Ok(None);
            }
            let mut payload = vec![0u8; len as usize];
            let got = read_up_to(&mut self.input, &mut payload)?;
            if got < payload.len() {
                self.truncated(offset, payload.len() - got);
                return Ok(None);
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&head[0..4]);
            hasher.update(&[kind]);
            hasher.update(&payload);
            if hasher.finalize() != crc {
                self.done = true;
                if offset + (CHUNK_HEADER_LEN + payload.len()) as u64 == self.file_len {
                    self.damaged_last(offset, kind);
                    return Ok(None);
                }
                return Err(FormatError::CorruptChunk {
                    offset,
                    reason: "checksum mismatch".into(),
                });
            }
            self.offset += (CHUNK_HEADER_LEN + payload.len()) as u64;
            match ChunkKind::from_u8(kind) {
                Some(ChunkKind::Summary) => {
                    self.summary = Some(decode_summary(offset, &payload)?);
                }
                Some(_) => {
                    return Ok(Some(RawChunk {
                        offset,
                        kind,
                        payload,
                    }));
                }
                None => self.warnings.push(format!(
                    "skipped a chunk of unknown kind {kind} at byte offset {offset} \
                     (written by a newer lbrprof?)"
                )),
            }
        }
    }

    /// The file's last chunk fails its checksum: like a torn write, it costs that chunk
    /// only (most often the summary, which reports recompute from the samples).
    fn damaged_last(&mut self, offset: u64, kind: u8) {
        let what = if kind == ChunkKind::Summary as u8 {
            "the summary chunk"
        } else {
            "the last chunk"
        };
        self.warnings.push(format!(
            "{what} at byte offset {offset} is damaged (checksum mismatch); kept everything \
             before it"
        ));
    }

    fn truncated(&mut self, offset: u64, missing: usize) {
        self.done = true;
        self.warnings.push(format!(
            "recording is truncated: the chunk at byte offset {offset} is incomplete \
             ({missing} bytes missing); kept everything before it"
        ));
    }
}

/// Decodes the events of one chunk returned by [`RecordingReader::next_chunk`].
pub fn decode_chunk(chunk: &RawChunk) -> Result<Vec<Event>, FormatError> {
    decode_payload(chunk.offset, chunk.kind, &chunk.payload)
}

// ---------------------------------------------------------------------------------------
// Reading, the fast way: the chunks of a mapped file, checked and decoded in parallel

/// One chunk of a [`MappedChunks`]: where it starts, its kind byte, and where its payload
/// lies in the mapping. Its checksum is checked by [`MappedChunks::payload`].
#[derive(Clone, Debug)]
pub struct ChunkRef {
    pub offset: u64,
    pub kind: u8,
    start: usize,
    len: usize,
    crc: u32,
}

impl ChunkRef {
    /// Whether this chunk holds host samples (kind 3, or 12 with their events).
    pub fn is_samples(&self) -> bool {
        self.kind == ChunkKind::Samples as u8 || self.kind == ChunkKind::EventSamples as u8
    }

    /// Whether this is the end-of-recording summary (kind 6).
    pub fn is_summary(&self) -> bool {
        self.kind == ChunkKind::Summary as u8
    }

    /// Whether this chunk's samples carry their event (kind 12): the ones the stream
    /// counts per event ([`RecordingReader::samples_per_event`]).
    pub fn is_event_samples(&self) -> bool {
        self.kind == ChunkKind::EventSamples as u8
    }
}

/// Counts one sample of event `event` in `counts` (indexed by event), as the stream
/// counts the samples of kind-12 chunks.
pub fn count_event_sample(counts: &mut Vec<u64>, event: u32) {
    let i = event as usize;
    if i >= counts.len() {
        counts.resize(i + 1, 0);
    }
    counts[i] += 1;
}

/// Whether `chunk`'s payload lies inside `map` and matches its checksum (over the length,
/// the kind and the payload).
fn chunk_crc_ok(map: &[u8], chunk: &ChunkRef) -> bool {
    let Some(payload) = map.get(chunk.start..chunk.start + chunk.len) else {
        return false;
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(chunk.len as u32).to_le_bytes());
    hasher.update(&[chunk.kind]);
    hasher.update(payload);
    hasher.finalize() == chunk.crc
}

/// The rest of a recording, mapped, and the chunks its headers delimit (see
/// [`RecordingReader::mapped_chunks`]). Payloads are checked on demand, so several threads
/// can check and decode different chunks at once.
pub struct MappedChunks {
    map: memmap2::Mmap,
    chunks: Vec<ChunkRef>,
    /// The error that ended the walk of the chunk headers (a chunk length over the
    /// limit): the stream reports it after everything in `chunks`.
    tail_error: Option<FormatError>,
    /// The reader's [`RecordingReader::select_event`].
    selected: Option<u32>,
}

impl MappedChunks {
    /// The complete chunks, in file order (a truncated last chunk is left out, as the
    /// stream leaves it out).
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    /// The payload of `chunk`, once its checksum is verified (the stream's error when not).
    pub fn payload(&self, chunk: &ChunkRef) -> Result<&[u8], FormatError> {
        if !chunk_crc_ok(&self.map, chunk) {
            return Err(FormatError::CorruptChunk {
                offset: chunk.offset,
                reason: "checksum mismatch".into(),
            });
        }
        Ok(&self.map[chunk.start..chunk.start + chunk.len])
    }

    /// Unmaps the pages of `chunk` from this process (they stay in the page cache), so
    /// that resident memory does not grow with the file: call it once a chunk is folded.
    /// Its bytes stay readable (they are faulted back in from the file).
    pub fn release(&self, chunk: &ChunkRef) {
        let start = chunk.start - CHUNK_HEADER_LEN;
        let len = (CHUNK_HEADER_LEN + chunk.len).min(self.map.len().saturating_sub(start));
        // SAFETY: the mapping is private, read-only and file-backed: MADV_DONTNEED only
        // drops this process's page-table entries for the range; the next access faults
        // the same file bytes back in, so every slice into the mapping still reads what
        // it read (a neighbouring chunk being decoded on another thread included).
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
        };
    }

    /// Whether a sample is of the event the reader was told to read (any, when none was
    /// chosen), as the stream would give it.
    pub fn selects(&self, sample: &HostSample) -> bool {
        self.selected.is_none_or(|e| e == sample.event)
    }

    /// The error the stream meets after the last of [`Self::chunks`], if any.
    pub fn take_tail_error(&mut self) -> Option<FormatError> {
        self.tail_error.take()
    }
}

impl RecordingReader {
    /// Maps the rest of the file and walks its chunk headers, for a caller that checks
    /// and decodes the chunks itself, in parallel ([`MappedChunks::payload`],
    /// [`decode_payload`], [`for_each_sample_of`]); afterwards this reader's stream is
    /// empty. Warnings are those of the stream: unknown chunk kinds (in file order; the
    /// chunks stay in the list so their checksums are still checked) and a truncated last
    /// chunk. The caller hands the summary chunk's payload to [`Self::read_summary`].
    /// `None` when the file cannot be mapped (read the stream instead).
    pub fn mapped_chunks(&mut self) -> Option<MappedChunks> {
        if self.done || !self.pending.as_slice().is_empty() {
            return None;
        }
        // SAFETY: the mapping is read-only and private; its bytes are only read through
        // bounds-checked slices. Recordings are not modified while they are reported on
        // (a file truncated meanwhile would fault, as for perf.data).
        let map = unsafe { memmap2::Mmap::map(self.input.get_ref()) }.ok()?;
        let end = map.len() as u64;
        let mut offset = self.offset;
        let mut chunks = Vec::new();
        let mut tail_error = None;
        while offset < end {
            let start = offset as usize;
            let remaining = (end - offset) as usize;
            if remaining < CHUNK_HEADER_LEN {
                self.truncated(offset, CHUNK_HEADER_LEN - remaining);
                break;
            }
            // Headers are read, not touched through the mapping: a page fault per chunk
            // on this (sequential) walk would cost more than the read.
            let mut head = [0u8; CHUNK_HEADER_LEN];
            if self
                .input
                .get_ref()
                .read_exact_at(&mut head, offset)
                .is_err()
            {
                head.copy_from_slice(&map[start..start + CHUNK_HEADER_LEN]);
            }
            let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
            let kind = head[8];
            if len > MAX_CHUNK_LEN {
                tail_error = Some(FormatError::CorruptChunk {
                    offset,
                    reason: format!("length {len} exceeds the {MAX_CHUNK_LEN}-byte limit"),
                });
                break;
            }
            let body = (remaining - CHUNK_HEADER_LEN) as u64;
            if u64::from(len) > body {
                self.truncated(offset, (u64::from(len) - body) as usize);
                break;
            }
            let chunk = ChunkRef {
                offset,
                kind,
                start: start + CHUNK_HEADER_LEN,
                len: len as usize,
                crc,
            };
            // The last chunk is checked here, as the stream treats its damage like a torn
            // write (the others are checked on demand, by the threads that decode them).
            if u64::from(len) == body && !chunk_crc_ok(&map, &chunk) {
                self.damaged_last(offset, kind);
                offset = end;
                break;
            }
            if ChunkKind::from_u8(kind).is_none() {
                self.warnings.push(format!(
                    "skipped a chunk of unknown kind {kind} at byte offset {offset} \
                     (written by a newer lbrprof?)"
                ));
            }
            chunks.push(chunk);
            offset += (CHUNK_HEADER_LEN as u64) + u64::from(len);
        }
        self.offset = offset;
        self.done = true;
        Some(MappedChunks {
            map,
            chunks,
            tail_error,
            selected: self.selected,
        })
    }

    /// Takes the (checked) payload of a summary chunk met by a [`MappedChunks`] caller,
    /// as the stream takes it; the stream's error when it does not decode.
    /// The samples per event that a caller reading [`Self::mapped_chunks`] in file order
    /// counted ([`count_event_sample`]), as the stream would have counted them.
    pub fn note_samples_per_event(&mut self, counts: Vec<u64>) {
        self.samples_per_event = counts;
    }

    pub fn read_summary(&mut self, offset: u64, payload: &[u8]) -> Result<(), FormatError> {
        self.summary = Some(decode_summary(offset, payload)?);
        Ok(())
    }
}

/// Decodes a checked summary chunk payload (kind 6); the stream's error when it does not.
pub fn decode_summary(offset: u64, payload: &[u8]) -> Result<Summary, FormatError> {
    serde_json::from_slice(payload).map_err(|e| FormatError::CorruptChunk {
        offset,
        reason: format!("summary: {e}"),
    })
}

/// Decodes the events of a checked chunk payload (as [`decode_chunk`]; summary chunks and
/// unknown kinds give no events).
pub fn decode_payload(offset: u64, kind: u8, payload: &[u8]) -> Result<Vec<Event>, FormatError> {
    fn items<'a, T: Deserialize<'a>>(
        offset: u64,
        payload: &'a [u8],
        wrap: fn(T) -> Event,
    ) -> Result<Vec<Event>, FormatError> {
        let decoded: Vec<T> =
            postcard::from_bytes(payload).map_err(|e| FormatError::CorruptChunk {
                offset,
                reason: format!("cannot decode: {e}"),
            })?;
        Ok(decoded.into_iter().map(wrap).collect())
    }
    match ChunkKind::from_u8(kind) {
        Some(ChunkKind::Mappings) => items(offset, payload, Event::Mapping),
        Some(ChunkKind::Tasks) => items(offset, payload, Event::Task),
        Some(ChunkKind::Execs) => items(offset, payload, |(time_ns, pid, tid, comm): ExecItem| {
            Event::Task(TaskEvent::Exec {
                time_ns,
                pid,
                tid,
                comm,
            })
        }),
        // The one decoder of samples, the mapped reader's.
        Some(ChunkKind::Samples | ChunkKind::EventSamples) => {
            let mut events = Vec::new();
            for_each_sample_of(offset, kind, payload, |s| {
                events.push(Event::Sample(s.clone()));
            })?;
            Ok(events)
        }
        Some(ChunkKind::Snapshots) => items(offset, payload, Event::Snapshot),
        Some(ChunkKind::Losses) => items(offset, payload, Event::Loss),
        Some(ChunkKind::Vcpus) => items(offset, payload, Event::Vcpu),
        Some(ChunkKind::VcpuStats) => items(offset, payload, Event::VcpuStats),
        Some(ChunkKind::GuestProcesses) => items(offset, payload, Event::GuestProcess),
        Some(ChunkKind::ExactProfiles) => items(offset, payload, Event::ExactProfile),
        Some(ChunkKind::SamplePhases) => items(offset, payload, Event::SamplePhases),
        Some(ChunkKind::VcpuSpaces) => items(offset, payload, Event::VcpuSpace),
        Some(ChunkKind::Summary) | None => Ok(Vec::new()),
    }
}

/// Calls `f` with each host sample of a checked samples payload of kind `kind` (3, or 12,
/// whose samples carry their [`HostSample::event`]; other kinds give no samples), in
/// order, decoding into one reused [`HostSample`]: no allocation per sample once its call
/// chain and branch stack have grown to the longest seen. [`decode_payload`] decodes
/// samples chunks with it. The samples and the error (naming `offset`) are postcard's;
/// on an error `f` may already have seen some of the chunk's samples.
pub fn for_each_sample_of(
    offset: u64,
    kind: u8,
    payload: &[u8],
    mut f: impl FnMut(&HostSample),
) -> Result<(), FormatError> {
    let tagged = match ChunkKind::from_u8(kind) {
        Some(ChunkKind::Samples) => false,
        Some(ChunkKind::EventSamples) => true,
        _ => return Ok(()),
    };
    let mut sample = HostSample::default();
    let mut seen = 0usize;
    let fast = (|| -> Option<()> {
        let mut d = postcard_lite::Decoder::new(payload);
        let n = d.len()?;
        for _ in 0..n {
            let event = if tagged { d.u32()? } else { 0 };
            d.host_sample(&mut sample)?;
            sample.event = event;
            f(&sample);
            seen += 1;
        }
        Some(())
    })();
    if fast.is_some() {
        return Ok(());
    }
    // The hand-written decoder gave up: postcard's own decoder names the problem (and
    // decodes what the hand-written one cannot, should they ever disagree).
    let corrupt = |e: postcard::Error| FormatError::CorruptChunk {
        offset,
        reason: format!("cannot decode: {e}"),
    };
    let decoded: Vec<HostSample> = if tagged {
        let tagged: Vec<(u32, HostSample)> = postcard::from_bytes(payload).map_err(corrupt)?;
        tagged
            .into_iter()
            .map(|(event, s)| HostSample { event, ..s })
            .collect()
    } else {
        postcard::from_bytes(payload).map_err(corrupt)?
    };
    for s in decoded.iter().skip(seen) {
        f(s);
    }
    Ok(())
}

/// A decoder of postcard's wire format for [`HostSample`]s only (varints, zigzag-free
/// since every field is unsigned, enums as varint variant indices, `Option` as a 0/1
/// tag, bools as 0/1 bytes), decoding into reused buffers. It accepts exactly what
/// postcard accepts or gives up (`None`); enum variants are mapped through postcard
/// itself, so it follows the model's enums.
mod postcard_lite {
    use crate::model::{Branch, BranchFlags, BranchKind, CpuMode, Frame, HostSample};

    pub(super) struct Decoder<'a> {
        buf: &'a [u8],
    }

    impl<'a> Decoder<'a> {
        pub(super) fn new(buf: &'a [u8]) -> Self {
            Decoder { buf }
        }

        #[inline]
        fn byte(&mut self) -> Option<u8> {
            let (&b, rest) = self.buf.split_first()?;
            self.buf = rest;
            Some(b)
        }

        /// A varint of at most `ceil(bits / 7)` bytes whose value fits in `bits` bits.
        #[inline(always)]
        fn varint(&mut self, bits: u32) -> Option<u64> {
            let max_bytes = bits.div_ceil(7) as usize;
            if let Some(&b) = self.buf.first()
                && b < 0x80
            {
                self.buf = &self.buf[1..];
                return Some(u64::from(b));
            }
            // Up to 8 bytes at once: the first byte without the continuation bit ends it.
            if let Some(head) = self.buf.first_chunk::<8>() {
                let word = u64::from_le_bytes(*head);
                let stops = !word & 0x8080_8080_8080_8080;
                let n = (stops.trailing_zeros() / 8 + 1) as usize;
                // Shorter than the longest encoding: the value cannot overflow `bits`.
                if stops != 0 && n < max_bytes {
                    // The payload bits of the first n bytes, squeezed together: 7-bit
                    // groups into 14-bit, 28-bit, then 56-bit ones.
                    let keep = u64::MAX >> (64 - 8 * n);
                    let mut x = word & keep & 0x7f7f_7f7f_7f7f_7f7f;
                    x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
                    x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
                    x = (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
                    self.buf = &self.buf[n..];
                    return Some(x);
                }
            }
            self.varint_slow(bits, max_bytes)
        }

        /// Longest encodings, and the last bytes of the payload.
        #[cold]
        #[inline(never)]
        fn varint_slow(&mut self, bits: u32, max_bytes: usize) -> Option<u64> {
            let mut out = 0u64;
            for i in 0..max_bytes {
                let b = self.byte()?;
                out |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    if i == max_bytes - 1 && (b >> (bits - 7 * i as u32).min(7)) != 0 {
                        return None;
                    }
                    return Some(out);
                }
            }
            None
        }

        #[inline]
        fn u64(&mut self) -> Option<u64> {
            self.varint(64)
        }

        #[inline]
        pub(super) fn u32(&mut self) -> Option<u32> {
            self.varint(32).map(|v| v as u32)
        }

        pub(super) fn len(&mut self) -> Option<usize> {
            usize::try_from(self.varint(usize::BITS)?).ok()
        }

        #[inline]
        fn bool(&mut self) -> Option<bool> {
            match self.byte()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            }
        }

        #[inline]
        fn mode(&mut self) -> Option<CpuMode> {
            let v = self.u32()?;
            *MODES.get(v as usize)?
        }

        #[inline]
        fn kind(&mut self) -> Option<BranchKind> {
            let v = self.u32()?;
            *KINDS.get(v as usize)?
        }

        pub(super) fn host_sample(&mut self, s: &mut HostSample) -> Option<()> {
            s.time_ns = self.u64()?;
            s.pid = self.u32()?;
            s.tid = self.u32()?;
            s.cpu = self.u32()?;
            s.period = self.u64()?;
            s.ip = self.u64()?;
            s.mode = self.mode()?;
            // The call chain and branch stack are decoded in loops of their own, not
            // through one generic sequence reader taking a closure: with 32 branches per
            // sample this loop is the hot path of reading a recording.
            let n = self.len()?;
            s.callchain.clear();
            // Each frame takes at least two bytes: a corrupt length fails here, not in
            // an allocation.
            if n > self.buf.len() / 2 {
                return None;
            }
            for _ in 0..n {
                let addr = self.u64()?;
                let mode = self.mode()?;
                s.callchain.push(Frame { addr, mode });
            }
            let n = self.len()?;
            s.branches.clear();
            if n > self.buf.len() / 8 {
                return None;
            }
            for _ in 0..n {
                let from = self.u64()?;
                let to = self.u64()?;
                let flags = BranchFlags {
                    mispred: self.bool()?,
                    predicted: self.bool()?,
                    in_tx: self.bool()?,
                    abort: self.bool()?,
                    cycles: self.varint(16)? as u16,
                    kind: self.kind()?,
                };
                s.branches.push(Branch { from, to, flags });
            }
            s.branch_hw_index = match self.byte()? {
                0 => None,
                1 => Some(self.u64()?),
                _ => return None,
            };
            Some(())
        }
    }

    /// Variant index → value, as postcard decodes it (`None` past the last variant).
    fn variants<T: serde::de::DeserializeOwned + Copy, const N: usize>() -> [Option<T>; N] {
        std::array::from_fn(|i| postcard::from_bytes(&[i as u8]).ok())
    }

    static MODES: std::sync::LazyLock<[Option<CpuMode>; 64]> =
        std::sync::LazyLock::new(variants::<CpuMode, 64>);
    static KINDS: std::sync::LazyLock<[Option<BranchKind>; 64]> =
        std::sync::LazyLock::new(variants::<BranchKind, 64>);
}

impl RecordingReader {
    /// Counts the samples of a kind-12 chunk per event and keeps the selected event's.
    fn count_and_select(&mut self, events: &mut Vec<Event>) {
        for e in events.iter() {
            if let Event::Sample(s) = e {
                count_event_sample(&mut self.samples_per_event, s.event);
            }
        }
        if let Some(keep) = self.selected {
            events.retain(|e| !matches!(e, Event::Sample(s) if s.event != keep));
        }
    }
}

impl Iterator for RecordingReader {
    type Item = Result<Event, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.pending.next() {
                return Some(Ok(event));
            }
            match self.next_chunk() {
                Ok(None) => return None,
                Ok(Some(chunk)) => match decode_chunk(&chunk) {
                    Ok(mut events) => {
                        if chunk.kind == ChunkKind::EventSamples as u8 {
                            self.count_and_select(&mut events);
                        }
                        self.pending = events.into_iter();
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn header() -> Header {
        Header {
            writer: "test".into(),
            start_unix: 1,
            start_monotonic_ns: 2,
            host: HostInfo::default(),
            sampling: SamplingConfig {
                event: "cpu-clock".into(),
                ..SamplingConfig::default()
            },
            target: Target::Command {
                argv: vec!["true".into()],
            },
        }
    }

    fn sample(i: u64) -> Event {
        Event::Sample(HostSample {
            time_ns: i,
            pid: 1,
            tid: 1 + (i % 3) as u32,
            period: 1000,
            ip: 0x1000 + i,
            mode: CpuMode::User,
            callchain: vec![
                Frame {
                    addr: 0x1000 + i,
                    mode: CpuMode::User,
                },
                Frame {
                    addr: 0xffff_ffff_8100_0000,
                    mode: CpuMode::Kernel,
                },
            ],
            branches: (0..(i % 4))
                .map(|j| Branch {
                    from: j,
                    to: j + 1,
                    flags: BranchFlags {
                        mispred: j % 2 == 0,
                        cycles: j as u16,
                        kind: BranchKind::Cond,
                        ..BranchFlags::default()
                    },
                })
                .collect(),
            ..HostSample::default()
        })
    }

    fn mapping(i: u64) -> Event {
        Event::Mapping(Mapping {
            time_ns: i,
            space: AddressSpace::HostUser,
            pid: 1,
            start: 0x1000 * i,
            len: 0x1000,
            pgoff: 0,
            path: format!("/lib/m{i}.so"),
            build_id: Some(vec![1, 2, 3]),
        })
    }

    /// Writes a recording whose events are all sent before `finish` and returns its bytes,
    /// the events and the offsets at which chunks start.
    fn write(events: &[Event], summary: &Summary) -> (Vec<u8>, WriteStats) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.data");
        let w = RecordingWriter::create(&path, &header()).unwrap();
        let sink = w.sink();
        for e in events {
            sink.send(e.clone());
        }
        let stats = w.finish(summary).unwrap();
        (std::fs::read(&path).unwrap(), stats)
    }

    fn read_bytes(bytes: &[u8]) -> (Result<Vec<Event>, FormatError>, RecordingReader) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut reader = RecordingReader::from_file(file).unwrap();
        let events: Result<Vec<Event>, FormatError> = reader.by_ref().collect();
        (events, reader)
    }

    #[test]
    fn runs_are_kept_in_the_summary_and_found_without_decoding() {
        let runs = vec![
            RunInfo {
                start_ns: 10,
                end_ns: 20,
                exit_status: Some(0),
                samples: 5,
            },
            RunInfo {
                start_ns: 30,
                end_ns: 45,
                exit_status: Some(0),
                samples: 6,
            },
        ];
        let summary = Summary {
            samples: 11,
            runs: runs.clone(),
            ..Summary::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.data");
        let w = RecordingWriter::create(&path, &header()).unwrap();
        let sink = w.sink();
        for i in [12, 33, 40] {
            sink.send(sample(i));
        }
        w.finish(&summary).unwrap();
        let found = read_summary(&path).unwrap().unwrap();
        assert_eq!(found.runs, runs);
        assert_eq!(found.run_starts(), [10, 30]);
        // One run, or none recorded: no per-run windows.
        assert!(Summary::default().run_starts().is_empty());
        // A summary written before runs existed (format 1.0) reads as one run, and one
        // without runs is written as before.
        let old: Summary =
            serde_json::from_str(r#"{"duration_ns":1,"samples":2,"notes":[]}"#).unwrap();
        assert!(old.runs.is_empty());
        assert!(!serde_json::to_string(&old).unwrap().contains("runs"));
        // A recording whose summary was lost: none.
        let bytes = std::fs::read(&path).unwrap();
        let cut = chunk_offsets(&bytes).last().copied().unwrap();
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert_eq!(read_summary(&path).unwrap(), None);
    }

    #[test]
    fn chunk_offsets_stop_at_bytes_that_do_not_fit() {
        assert!(chunk_offsets(b"").is_empty());
        assert!(chunk_offsets(&[0xff; 16]).is_empty());
        // Preamble with an empty header, one 3-byte chunk, then a length cut short.
        let mut bytes = vec![0u8; PREAMBLE_LEN];
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&[0; CHUNK_HEADER_LEN - 4 + 3]);
        bytes.extend_from_slice(&[7, 0]);
        assert_eq!(
            chunk_offsets(&bytes),
            [PREAMBLE_LEN, PREAMBLE_LEN + CHUNK_HEADER_LEN + 3]
        );
    }

    #[test]
    fn the_target_changes_only_when_a_recording_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("r.data");
        std::fs::write(&target, b"previous").unwrap();
        let partial = partial_path(&target);
        assert_eq!(
            partial.file_name().unwrap().to_string_lossy(),
            format!("r.data.{}.partial", std::process::id())
        );

        // Abandoned: the partial file goes, the target stays, even with a sink alive.
        let w = RecordingWriter::create(&target, &header()).unwrap();
        let sink = w.sink();
        assert_eq!(w.writing_to(), partial);
        assert!(partial.is_file());
        w.abandon();
        sink.send(Event::Loss(Loss {
            time_ns: 0,
            kind: LossKind::RingBuffer,
            count: 1,
            tid: None,
        }));
        assert!(!partial.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"previous");

        // Dropped unfinished (a crash): the partial file stays and reads; the target stays.
        let w = RecordingWriter::create(&target, &header()).unwrap();
        drop(w);
        assert!(RecordingReader::open(&partial).is_ok());
        assert_eq!(std::fs::read(&target).unwrap(), b"previous");
        std::fs::remove_file(&partial).unwrap();

        // Finished: renamed into place, the previous one kept as NAME.old.
        let w = RecordingWriter::create(&target, &header()).unwrap();
        w.finish(&Summary::default()).unwrap();
        assert!(!partial.exists());
        assert_eq!(std::fs::read(old_path(&target)).unwrap(), b"previous");
        let reader = RecordingReader::open(&target).unwrap();
        assert_eq!(reader.header(), &header());
        // Overwrite: no new .old.
        std::fs::remove_file(old_path(&target)).unwrap();
        let w = RecordingWriter::create_with(&target, &header(), Replace::Overwrite).unwrap();
        w.finish(&Summary::default()).unwrap();
        assert!(!old_path(&target).exists());
        assert!(RecordingReader::open(&target).is_ok());

        // A target that is not a regular file is written in place, never renamed over.
        let w = RecordingWriter::create(Path::new("/dev/null"), &header()).unwrap();
        assert_eq!(w.writing_to(), Path::new("/dev/null"));
        w.finish(&Summary::default()).unwrap();
        assert!(!Path::new("/dev/null").is_file());
    }

    /// Chunk payloads are positional (postcard): a variant's index is its encoding. These
    /// are the indices format 1.0 wrote; a new variant goes last, or recordings of older
    /// builds stop decoding (as happened once, with `Exec` before `Exit`).
    #[test]
    fn enum_variants_keep_their_format_1_0_positions() {
        let index = |e: &TaskEvent| postcard::to_allocvec(e).unwrap()[0];
        let comm = TaskEvent::Comm {
            time_ns: 0,
            pid: 1,
            tid: 1,
            comm: "c".into(),
        };
        let fork = TaskEvent::Fork {
            time_ns: 0,
            pid: 1,
            tid: 1,
            ppid: 0,
            ptid: 0,
        };
        let exit = TaskEvent::Exit {
            time_ns: 0,
            pid: 1,
            tid: 1,
        };
        assert_eq!((index(&comm), index(&fork), index(&exit)), (0, 1, 2));
        let kinds = [
            LossKind::RingBuffer,
            LossKind::Throttled,
            LossKind::ChannelFull,
            LossKind::Frozen,
        ];
        let loss = |kind| {
            postcard::to_allocvec(&Loss {
                time_ns: 0,
                kind,
                count: 0,
                tid: None,
            })
            .unwrap()[1]
        };
        assert_eq!(kinds.map(loss), [0, 1, 2, 3]);
    }

    #[test]
    fn round_trip_keeps_every_event_and_the_summary() {
        let mut events: Vec<Event> = (0..5000)
            .map(|i| if i % 100 == 0 { mapping(i) } else { sample(i) })
            .collect();
        events.push(Event::Vcpu(VcpuThread {
            time_ns: 1,
            vm: 0,
            vcpu: 1,
            pid: 10,
            tid: 12,
        }));
        events.push(Event::VcpuStats(VcpuStats {
            vcpu: 1,
            exits: vec![("msr".into(), 3)],
            run_ns: 5,
            ..VcpuStats::default()
        }));
        events.push(Event::GuestProcess(GuestProcess {
            time_ns: 2,
            vm: 0,
            space: 3,
            pid: 101,
            ppid: 100,
            comm: "sort".into(),
            exe: "/usr/bin/sort".into(),
            roots: vec![0x1000, 0x2000],
        }));
        events.push(Event::SamplePhases(SamplePhases {
            vm: 0,
            tid: 7,
            samples: vec![(10, ShimPhase::Run), (20, ShimPhase::LinuxTrap)],
        }));
        events.push(Event::VcpuSpace(VcpuSpace {
            time_ns: 21,
            vm: 0,
            vcpu: 1,
            space: 3,
        }));
        let summary = Summary {
            samples: 4950,
            exit_status: Some(3),
            notes: vec!["note".into()],
            ..Summary::default()
        };
        let (bytes, stats) = write(&events, &summary);
        assert_eq!(stats.bytes, bytes.len() as u64);
        assert_eq!(stats.events, 5005);
        let (read, reader) = read_bytes(&bytes);
        let read = read.unwrap();
        assert_eq!(reader.header(), &header());
        assert_eq!(reader.summary(), Some(&summary));
        assert!(reader.warnings().is_empty());
        // Events come back in the order they were sent, whatever their kinds.
        assert_eq!(read, events);
    }

    #[test]
    fn interleaved_kinds_keep_their_order() {
        // A fork, the mappings of the program the child execs, a sample, more task
        // events: each run of one kind is a chunk, and the reader replays them in order.
        let mut events = vec![Event::Task(TaskEvent::Fork {
            time_ns: 1,
            pid: 11,
            tid: 11,
            ppid: 10,
            ptid: 10,
        })];
        events.push(Event::Task(TaskEvent::Exec {
            time_ns: 2,
            pid: 11,
            tid: 11,
            comm: "child".into(),
        }));
        events.extend((0..3).map(mapping));
        events.push(sample(4));
        events.push(Event::Task(TaskEvent::Exit {
            time_ns: 5,
            pid: 11,
            tid: 11,
        }));
        events.push(sample(6));
        events.push(sample(7));
        let (bytes, stats) = write(&events, &Summary::default());
        // fork | exec (kind 9) | 3 mappings | sample | exit | 2 samples | summary
        assert_eq!(stats.chunks, 7);
        let kinds: Vec<u8> = chunk_offsets(&bytes)
            .iter()
            .map(|&at| bytes[at + 8])
            .collect();
        assert_eq!(kinds, [2, 9, 1, 3, 2, 3, 6]);
        let (read, _) = read_bytes(&bytes);
        assert_eq!(read.unwrap(), events);
    }

    #[test]
    fn truncation_anywhere_keeps_all_complete_chunks() {
        // Small events and many flushes: force several chunks with the size cap.
        let events: Vec<Event> = (0..40_000).map(sample).collect();
        let (bytes, _) = write(&events, &Summary::default());
        let offsets = chunk_offsets(&bytes);
        assert!(
            offsets.len() >= 3,
            "want several chunks, got {}",
            offsets.len()
        );
        let header_end = offsets[0];
        // Every chunk boundary and a few points inside each chunk.
        let mut cuts: Vec<usize> = Vec::new();
        for (i, &start) in offsets.iter().enumerate() {
            let end = offsets.get(i + 1).copied().unwrap_or(bytes.len());
            cuts.extend([
                start,
                start + 1,
                start + 4,
                start + 9,
                (start + end) / 2,
                end - 1,
            ]);
        }
        cuts.push(bytes.len());
        for cut in cuts {
            let (read, reader) = read_bytes(&bytes[..cut]);
            let read = read.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            // Count the events of the chunks that end at or before the cut.
            let expect: usize = offsets
                .iter()
                .enumerate()
                .filter(|&(i, _)| offsets.get(i + 1).copied().unwrap_or(bytes.len()) <= cut)
                .map(|(_, &o)| {
                    let len = u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
                    let chunk = RawChunk {
                        offset: o as u64,
                        kind: bytes[o + 8],
                        payload: bytes[o + 9..o + 9 + len].to_vec(),
                    };
                    decode_chunk(&chunk).unwrap().len()
                })
                .sum();
            assert_eq!(read.len(), expect, "cut at {cut}");
            let cut_inside = cut > header_end && !offsets.contains(&cut) && cut != bytes.len();
            assert_eq!(!reader.warnings().is_empty(), cut_inside, "cut at {cut}");
            if cut_inside {
                assert!(
                    reader.warnings()[0].contains("byte offset"),
                    "{:?}",
                    reader.warnings()
                );
            }
        }
    }

    #[test]
    fn bit_flips_are_reported_with_the_chunk_offset() {
        let events: Vec<Event> = (0..2000).map(sample).collect();
        let (bytes, _) = write(&events, &Summary::default());
        let offsets = chunk_offsets(&bytes);
        let mut checked = 0;
        for (i, &start) in offsets.iter().enumerate() {
            let end = offsets.get(i + 1).copied().unwrap_or(bytes.len());
            // Flip a bit in the crc, the kind byte and the payload: all must be caught.
            for pos in [start + 5, start + 8, start + 9, (start + end) / 2, end - 1] {
                let mut damaged = bytes.clone();
                damaged[pos] ^= 0x10;
                let (read, reader) = read_bytes(&damaged);
                if end == bytes.len() {
                    // The last chunk (the summary): like a torn write, it costs itself only.
                    assert_eq!(read.unwrap(), events, "flip at {pos}");
                    assert!(reader.summary().is_none());
                    let warnings = reader.warnings().join("\n");
                    assert!(
                        warnings.contains(&format!(
                            "the summary chunk at byte offset {start} is damaged"
                        )) || warnings.contains(&format!("last chunk at byte offset {start}")),
                        "flip at {pos}: {warnings}"
                    );
                } else {
                    let err = read.expect_err("a flipped bit must be noticed");
                    let msg = err.to_string();
                    assert!(
                        msg.contains(&format!("offset {start}")),
                        "flip at {pos}: {msg}"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 5);
    }

    #[test]
    fn header_problems_are_clear_errors() {
        let (bytes, _) = write(&[sample(1)], &Summary::default());
        let open = |b: &[u8]| {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(b).unwrap();
            file.seek(SeekFrom::Start(0)).unwrap();
            RecordingReader::from_file(file)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(
            open(b"PERFILE2........").unwrap(),
            "not an lbrprof recording (bad magic)"
        );
        assert_eq!(open(b"").unwrap(), "not an lbrprof recording (bad magic)");
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert!(open(&newer).unwrap().contains(&format!(
            "unsupported lbrprof.data version 2.{VERSION_MINOR}"
        )));
        let mut minor = bytes.clone();
        minor[10] = 7;
        assert_eq!(open(&minor), None, "a newer minor version is readable");
        let mut older = bytes.clone();
        older[10] = 0;
        assert_eq!(open(&older), None, "1.0 (before repeated runs) is readable");
        let mut flipped = bytes.clone();
        flipped[PREAMBLE_LEN + 3] ^= 1;
        assert!(open(&flipped).unwrap().contains("checksum"));
        assert!(
            open(&bytes[..PREAMBLE_LEN + 2])
                .unwrap()
                .contains("inside the header")
        );
    }

    /// A recording whose summary has no per-event counts (as one written before they
    /// were kept): read in place in file order, its samples are counted per event as
    /// the stream counts them, and only the chosen event's are handed out.
    #[test]
    fn the_walk_in_file_order_counts_samples_per_event_as_the_stream() {
        use crate::sample::SampleRef;
        use crate::source::{RecordingSource, SampleSource, SampleVisitor};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.data");
        let mut h = header();
        h.sampling.events = vec!["cpu-clock".into(), "page-faults".into()];
        let w = RecordingWriter::create(&path, &h).unwrap();
        let sink = w.sink();
        for i in 0..7u64 {
            let Event::Sample(s) = sample(i) else {
                unreachable!()
            };
            let event = u32::from(i % 3 == 0);
            sink.send(Event::Sample(HostSample { event, ..s }));
        }
        w.finish(&Summary::default()).unwrap();
        let (_, stream) = read_bytes(&std::fs::read(&path).unwrap());
        let counted = [("cpu-clock".into(), 4), ("page-faults".into(), 3)];
        assert_eq!(stream.samples_per_event(), counted);

        #[derive(Default)]
        struct Times(Vec<u64>);
        impl SampleVisitor for Times {
            fn sideband(&mut self, _: &Event) {}
            fn sample(&mut self, s: &SampleRef<'_>) {
                self.0.push(s.time_ns);
            }
        }
        let mut reader = RecordingReader::open(&path).unwrap();
        assert!(reader.select_event("page-faults"));
        let mut times = Times::default();
        RecordingSource::new(&mut reader)
            .unwrap()
            .walk_in_order(&mut times)
            .unwrap();
        assert_eq!(reader.samples_per_event(), counted);
        let expect: Vec<u64> = (0..7u64)
            .filter(|i| i % 3 == 0)
            .map(|i| match sample(i) {
                Event::Sample(s) => s.time_ns,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(times.0, expect);
    }

    #[test]
    fn samples_of_several_events_keep_their_event_and_can_be_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.data");
        let mut h = header();
        h.sampling.events = vec!["cpu-clock".into(), "sched:sched_switch".into()];
        let w = RecordingWriter::create(&path, &h).unwrap();
        let sink = w.sink();
        let tagged = |i: u64| match sample(i) {
            Event::Sample(s) => Event::Sample(HostSample {
                event: (i % 2) as u32,
                ..s
            }),
            _ => unreachable!(),
        };
        let events: Vec<Event> = (0..9)
            .map(|i| if i == 4 { mapping(4) } else { tagged(i) })
            .collect();
        for e in &events {
            sink.send(e.clone());
        }
        let summary = Summary {
            samples: 8,
            event_samples: vec![4, 4],
            ..Summary::default()
        };
        w.finish(&summary).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // Samples go to kind 12 with their event, not to kind 3.
        let kinds: Vec<u8> = chunk_offsets(&bytes)
            .iter()
            .map(|&o| bytes[o + 8])
            .collect();
        assert_eq!(kinds, [12, 1, 12, 6]);

        // All events, each sample with its event; counted per event by the stream.
        let (read, reader) = read_bytes(&bytes);
        assert_eq!(read.unwrap(), events);
        assert_eq!(
            reader.samples_per_event(),
            [("cpu-clock".into(), 4), ("sched:sched_switch".into(), 4)]
        );
        // One event: the other's samples are left out, side band is kept.
        let mut reader = RecordingReader::open(&path).unwrap();
        assert!(!reader.select_event("page-faults"));
        assert!(reader.select_event("sched:sched_switch"));
        let chosen: Vec<Event> = reader.by_ref().map(Result::unwrap).collect();
        let expect: Vec<Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::Sample(s) if s.event != 1))
            .cloned()
            .collect();
        assert_eq!(chosen, expect);
        assert_eq!(
            reader.selected_event().as_deref(),
            Some("sched:sched_switch")
        );

        // The fast path: the same samples through the allocation-free decoder, chosen
        // the same way, and the summary's counts.
        let mut reader = RecordingReader::open(&path).unwrap();
        reader.select_event("sched:sched_switch");
        let mapped = reader.mapped_chunks().unwrap();
        let mut fast = Vec::new();
        for c in mapped.chunks() {
            let payload = mapped.payload(c).unwrap();
            if c.is_summary() {
                reader.read_summary(c.offset, payload).unwrap();
            }
            for_each_sample_of(c.offset, c.kind, payload, |s| {
                if mapped.selects(s) {
                    fast.push(Event::Sample(s.clone()));
                }
            })
            .unwrap();
        }
        let expect_samples: Vec<Event> = expect
            .into_iter()
            .filter(|e| matches!(e, Event::Sample(_)))
            .collect();
        assert_eq!(fast, expect_samples);
        assert_eq!(
            reader.samples_per_event()[1],
            ("sched:sched_switch".into(), 4)
        );

        // A recording of one event still writes kind 3, and its samples are event 0.
        let (bytes, _) = write(&[sample(1)], &Summary::default());
        assert_eq!(bytes[chunk_offsets(&bytes)[0] + 8], 3);
    }

    #[test]
    fn unknown_chunk_kinds_are_skipped_with_a_warning() {
        let (mut bytes, _) = write(&[sample(1)], &Summary::default());
        let mut extra = Vec::new();
        let payload = b"future";
        let len = payload.len() as u32;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&[42]);
        crc.update(payload);
        extra.extend_from_slice(&len.to_le_bytes());
        extra.extend_from_slice(&crc.finalize().to_le_bytes());
        extra.push(42);
        extra.extend_from_slice(payload);
        let first_chunk = chunk_offsets(&bytes)[0];
        bytes.splice(first_chunk..first_chunk, extra);
        let (read, reader) = read_bytes(&bytes);
        assert_eq!(read.unwrap().len(), 1);
        assert!(reader.warnings()[0].contains("unknown kind 42"));
        assert!(reader.summary().is_some());
    }

    #[test]
    fn a_dropped_writer_still_leaves_a_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.data");
        let w = RecordingWriter::create(&path, &header()).unwrap();
        let partial = w.writing_to().to_owned();
        let sink = w.sink();
        for i in 0..10 {
            sink.send(sample(i));
        }
        drop(sink);
        drop(w);
        // The writer thread finishes in the background; give it the flush interval.
        std::thread::sleep(FLUSH_INTERVAL * 3);
        // Unfinished: it stays the partial file, never renamed over the target.
        assert!(!path.exists());
        let mut reader = RecordingReader::open(&partial).unwrap();
        let n = reader.by_ref().count();
        assert_eq!(n, 10);
        assert!(reader.summary().is_none());
    }

    #[test]
    fn create_fails_up_front_for_an_unwritable_path() {
        let err = RecordingWriter::create(Path::new("/nonexistent-dir/x.data"), &header())
            .err()
            .expect("must fail");
        assert!(matches!(err, FormatError::Io(_)));
    }

    /// The hand-written decoder gives postcard's samples, extreme values included.
    #[test]
    fn for_each_sample_decodes_what_postcard_decodes() {
        let kinds = [
            BranchKind::Unknown,
            BranchKind::Cond,
            BranchKind::Uncond,
            BranchKind::IndJump,
            BranchKind::Call,
            BranchKind::IndCall,
            BranchKind::Ret,
            BranchKind::Syscall,
            BranchKind::Sysret,
        ];
        let modes = [
            CpuMode::Unknown,
            CpuMode::Kernel,
            CpuMode::User,
            CpuMode::Hypervisor,
            CpuMode::GuestKernel,
            CpuMode::GuestUser,
        ];
        let mut samples: Vec<HostSample> = (0..200u64)
            .map(|i| HostSample {
                event: 0,
                time_ns: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                pid: (i * 77_777) as u32,
                tid: u32::MAX - i as u32,
                cpu: (i % 300) as u32,
                period: 1 << (i % 64),
                ip: u64::MAX - i,
                mode: modes[i as usize % modes.len()],
                callchain: (0..i % 9)
                    .map(|j| Frame {
                        addr: j << (i % 60),
                        mode: modes[(i + j) as usize % modes.len()],
                    })
                    .collect(),
                branches: (0..i % 33)
                    .map(|j| Branch {
                        from: u64::MAX >> j,
                        to: j,
                        flags: BranchFlags {
                            mispred: j % 2 == 0,
                            predicted: j % 3 == 0,
                            in_tx: j % 5 == 0,
                            abort: j % 7 == 0,
                            cycles: (j * 2000 + i) as u16,
                            kind: kinds[(i + j) as usize % kinds.len()],
                        },
                    })
                    .collect(),
                branch_hw_index: (i % 2 == 0).then_some(i << 50),
            })
            .collect();
        samples.push(HostSample::default());
        let payload = postcard::to_allocvec(&samples).unwrap();
        let mut got = Vec::new();
        for_each_sample_of(7, ChunkKind::Samples as u8, &payload, |s| {
            got.push(s.clone())
        })
        .unwrap();
        assert_eq!(got, samples);
        // Every prefix and a damaged byte anywhere: the same samples or postcard's error.
        for cut in (0..payload.len()).step_by(211) {
            let want: Result<Vec<HostSample>, String> = postcard::from_bytes(&payload[..cut])
                .map_err(|e| format!("corrupt chunk at byte offset 7: cannot decode: {e}"));
            let mut got = Vec::new();
            let res = for_each_sample_of(7, ChunkKind::Samples as u8, &payload[..cut], |s| {
                got.push(s.clone())
            });
            assert_eq!(
                res.map(|()| got).map_err(|e| e.to_string()),
                want,
                "cut {cut}"
            );
        }
        for pos in (0..payload.len()).step_by(101) {
            let mut bad = payload.clone();
            bad[pos] = 0xff;
            let want: Result<Vec<HostSample>, String> = postcard::from_bytes(&bad)
                .map_err(|e| format!("corrupt chunk at byte offset 7: cannot decode: {e}"));
            let mut got = Vec::new();
            let res =
                for_each_sample_of(7, ChunkKind::Samples as u8, &bad, |s| got.push(s.clone()));
            assert_eq!(
                res.map(|()| got).map_err(|e| e.to_string()),
                want,
                "0xff at {pos}"
            );
        }
    }

    /// Varints of every length, at the edges of each 7-bit group.
    #[test]
    fn for_each_sample_decodes_varints_of_every_length() {
        let values: Vec<u64> = (0..64)
            .flat_map(|k| [(1u64 << k) - 1, 1 << k, (1 << k) + 1, u64::MAX >> k])
            .collect();
        let samples: Vec<HostSample> = values
            .iter()
            .map(|&v| HostSample {
                time_ns: v,
                pid: v as u32,
                tid: (v >> 32) as u32,
                cpu: v.rotate_left(17) as u32,
                period: v.rotate_left(7),
                ip: !v,
                callchain: vec![Frame {
                    addr: v,
                    mode: CpuMode::User,
                }],
                branches: vec![Branch {
                    from: v,
                    to: v.swap_bytes(),
                    flags: BranchFlags {
                        cycles: v as u16,
                        ..BranchFlags::default()
                    },
                }],
                branch_hw_index: Some(v),
                ..HostSample::default()
            })
            .collect();
        let payload = postcard::to_allocvec(&samples).unwrap();
        let mut got = Vec::new();
        for_each_sample_of(0, ChunkKind::Samples as u8, &payload, |s| {
            got.push(s.clone())
        })
        .unwrap();
        assert_eq!(got, samples);
    }

    /// The mapped walk leaves the warnings, summary and chunks the stream does.
    #[test]
    fn mapped_chunks_list_what_the_stream_reads() {
        let events: Vec<Event> = (0..40_000).map(sample).collect();
        let (bytes, _) = write(&events, &Summary::default());
        let offsets = chunk_offsets(&bytes);
        for cut in [bytes.len(), offsets[2], offsets[2] + 5, offsets[3] - 1] {
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&bytes[..cut]).unwrap();
            file.seek(SeekFrom::Start(0)).unwrap();
            let mut reader = RecordingReader::from_file(file).unwrap();
            let mut mapped = reader.mapped_chunks().expect("mappable");
            assert!(mapped.take_tail_error().is_none());
            let mut n = 0;
            for c in mapped.chunks() {
                let payload = mapped.payload(c).unwrap();
                if c.is_summary() {
                    reader.read_summary(c.offset, payload).unwrap();
                } else {
                    n += decode_payload(c.offset, c.kind, payload).unwrap().len();
                }
            }
            assert_eq!(reader.next().map(|r| r.is_ok()), None, "stream consumed");
            let (stream, stream_reader) = read_bytes(&bytes[..cut]);
            assert_eq!(n, stream.unwrap().len(), "cut {cut}");
            assert_eq!(reader.warnings(), stream_reader.warnings(), "cut {cut}");
            assert_eq!(reader.summary(), stream_reader.summary(), "cut {cut}");
        }
        // A length over the limit ends the walk with the stream's error.
        let mut huge = bytes.clone();
        huge[offsets[1]..offsets[1] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&huge).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut mapped = RecordingReader::from_file(file)
            .unwrap()
            .mapped_chunks()
            .unwrap();
        assert_eq!(mapped.chunks().len(), 1);
        let (stream, _) = read_bytes(&huge);
        assert_eq!(
            mapped.take_tail_error().map(|e| e.to_string()),
            stream.err().map(|e| e.to_string())
        );
    }
}
