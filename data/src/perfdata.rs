//! Import of Linux `perf.data` files into the recording model ([`Header`] + [`Event`]s).
//!
//! The file structure (header, attributes, feature sections, zstd-compressed records,
//! time ordering over `FINISHED_ROUND`) is read by the `linux-perf-data` crate. Sample
//! bodies are decoded here ([`decode_sample`]) because that crate skips branch stacks:
//! we need every `perf_branch_entry` with its flags, and `PERF_SAMPLE_BRANCH_HW_INDEX`.
//!
//! What becomes what:
//!
//! | perf record | model |
//! |---|---|
//! | `SAMPLE` (IP, TID, TIME, CPU, PERIOD, CALLCHAIN, BRANCH_STACK) | [`Event::Sample`]; callchain context markers (`PERF_CONTEXT_*`) become per-frame [`CpuMode`]s |
//! | `MMAP`, `MMAP2` (executable only) | [`Event::Mapping`], build-id from the MMAP2 record or the `HEADER_BUILD_ID` feature section |
//! | `COMM`, `FORK`, `EXIT` | [`Event::Task`]; a `COMM` flagged `PERF_RECORD_MISC_COMM_EXEC` is a [`TaskEvent::Exec`] |
//! | `LOST`, `LOST_SAMPLES`, `THROTTLE` | [`Event::Loss`], with the thread of the record's `sample_id` |
//! | anything else | skipped and counted in [`ImportStats::skipped_records`] |
//!
//! A file recorded with `perf record --call-graph dwarf` has user registers and a stack
//! copy in each sample (`PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER`): the reader
//! unwinds them as it goes ([`crate::dwarf`]) and the sample's call chain gets the user
//! frames after the kernel's, as `perf report` shows them.
//!
//! The reports read the data section mapped, in place ([`mapped`]: chunk by chunk on
//! every core, or every record in perf's order), and this reader's event stream only
//! for files the mapped walk declines.
//!
//! Damage: a file whose data section extends past its end (a `perf record` that was
//! killed) is read up to the damage, with a warning ([`PerfDataReader::warnings`]); any
//! other malformed record is an error naming the file offset (for framing errors) or the
//! record number (for a sample body that does not match its attribute).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod entries;
pub mod mapped;

pub use linux_perf_data::linux_perf_event_reader::Endianness;
use linux_perf_data::linux_perf_event_reader::{
    self as reader, EventRecord, Mmap2FileId, PerfEventType, RawEventRecord, RecordType,
    SamplingPolicy,
};
use linux_perf_data::{PerfFileReader, PerfFileRecord, PerfRecordIter};

use crate::dwarf::{EventUnwinder, Regs};
use crate::model::{
    AddressSpace, Branch, CpuMode, Event, Header, HostInfo, HostSample, Loss, LossKind, Mapping,
    SamplingConfig, Target, TaskEvent,
};

/// Raw perf ABI constants, named as in `include/uapi/linux/perf_event.h`.
pub mod abi;

pub use entries::{
    BRANCH_ENTRY_LEN, branch_entry, branch_flags, branch_kind, callchain_frames, word,
};

/// Why a perf.data file could not be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PerfDataError {
    #[error("cannot open the file")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a perf.data file (magic {magic:02x?})")]
    BadMagic { magic: Vec<u8> },
    // linux-perf-data's errors print their own cause too (`I/O error: X` with X as
    // source), so they are kept as text here to print each cause once.
    #[error("malformed perf.data header: {reason}")]
    Header { reason: String },
    #[error("malformed perf.data record near file offset {offset:#x}: {reason}")]
    Record { offset: u64, reason: String },
    #[error("malformed {kind} record #{index} (its body does not match its event attribute)")]
    RecordBody {
        kind: &'static str,
        index: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("sample #{index}: {what}")]
    Sample { index: u64, what: &'static str },
}

/// Counts of what the import saw, for the report header and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportStats {
    pub records: u64,
    pub samples: u64,
    pub branch_entries: u64,
    pub mappings: u64,
    /// Record types the model has no place for (e.g. `SWITCH`, `AUX`, user records).
    pub skipped_records: u64,
    /// Samples per event attribute, in file order.
    pub samples_per_event: Vec<u64>,
}

/// A `Read + Seek` wrapper that publishes its position, so an error deep inside the
/// parser can still name the file offset where reading stopped (to within the read
/// buffer it sits under). It can also present a
/// patched copy of the file header (`head`) in place of the first bytes of the file.
struct Tracked<R> {
    inner: R,
    pos: Arc<AtomicU64>,
    head: Vec<u8>,
}

impl<R: Read + Seek> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.pos.load(Ordering::Relaxed);
        let n = if (at as usize) < self.head.len() {
            let n = buf.len().min(self.head.len() - at as usize);
            buf[..n].copy_from_slice(&self.head[at as usize..at as usize + n]);
            self.inner.seek(SeekFrom::Current(n as i64))?;
            n
        } else {
            self.inner.read(buf)?
        };
        self.pos.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: Seek> Seek for Tracked<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let p = self.inner.seek(pos)?;
        self.pos.store(p, Ordering::Relaxed);
        Ok(p)
    }
}

type FileIter = PerfRecordIter<BufReader<Tracked<File>>>;

/// Streams a perf.data file as model events (records in time order, as perf sorts them).
pub struct PerfDataReader {
    header: Header,
    perf_file: linux_perf_data::PerfFile,
    records: FileIter,
    pos: Arc<AtomicU64>,
    /// The end of the data section as the file header states it.
    data_end: u64,
    /// The readable part of the data section (complete records only, for a truncated
    /// file), for [`PerfDataReader::mapped_scan`].
    data_range: (u64, u64),
    path: PathBuf,
    little_endian: bool,
    file_len: u64,
    build_ids: HashMap<Vec<u8>, Vec<u8>>,
    /// perf's name of each event attribute, in file order.
    event_names: Vec<String>,
    /// Per event attribute, [`SampleLayout::fixed_period`].
    fixed_periods: Vec<u64>,
    /// The attributes whose samples are read ([`PerfDataReader::select_event`]); `None`:
    /// all of them.
    selected: Option<Vec<bool>>,
    stats: ImportStats,
    warnings: Vec<String>,
    done: bool,
    /// Files recorded with `--call-graph dwarf`: walks their samples' stack copies.
    unwinder: Option<EventUnwinder>,
    /// The counts of the walks made by a mapped scan's consumer
    /// ([`PerfDataReader::note_unwind_stats`]).
    scanned_unwind: Option<crate::dwarf::UnwindStats>,
}

impl PerfDataReader {
    /// Opens `path` and reads its header, attributes and feature sections.
    pub fn open(path: &Path) -> Result<Self, PerfDataError> {
        let open_err = |source| PerfDataError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut file = File::open(path).map_err(open_err)?;
        let file_len = file.metadata().map_err(open_err)?.len();
        let mut head = [0u8; abi::PERF_FILE_HEADER_DATA_OFFSET + 16];
        let got = read_up_to(&mut file, &mut head).map_err(open_err)?;
        if got < 8 || (head[..8] != abi::PERF_MAGIC && head[..8] != abi::PERF_MAGIC_SWAPPED) {
            return Err(PerfDataError::BadMagic {
                magic: head[..got.min(8)].to_vec(),
            });
        }
        let le = head[..8] == abi::PERF_MAGIC;
        let o = abi::PERF_FILE_HEADER_DATA_OFFSET;
        let data_end = if got == head.len() {
            header_word(&head[o..o + 8], le).saturating_add(header_word(&head[o + 8..o + 16], le))
        } else {
            u64::MAX
        };
        let truncated = data_end != u64::MAX && data_end > file_len;
        let data_off = if got == head.len() {
            header_word(&head[o..o + 8], le)
        } else {
            0
        };
        let mut data_range = (data_off, data_end);
        let mut warnings = Vec::new();
        let head_patch = if truncated {
            warnings.push(format!(
                "the file is truncated: its data section should end at offset {data_end:#x} \
                 but the file has only {file_len:#x} bytes; reading what is there"
            ));
            let patched = truncated_file_header(&mut file, data_off, file_len, le, &mut warnings)
                .map_err(open_err)?;
            if let Some(size) = patched.get(o + 8..o + 16) {
                data_range.1 = data_off.saturating_add(header_word(size, le));
            }
            patched
        } else {
            Vec::new()
        };
        check_sections(&mut file, file_len, le, false).map_err(|e| match e {
            SectionCheck::Io(source) => open_err(source),
            SectionCheck::Bad(reason) => PerfDataError::Header { reason },
        })?;
        // Damaged feature sections cost the metadata they hold, not the samples: read the
        // file as if it had none, and say what was skipped.
        let mut head_patch = head_patch;
        if !truncated {
            match check_sections(&mut file, file_len, le, true) {
                Ok(()) => {}
                Err(SectionCheck::Io(source)) => return Err(open_err(source)),
                Err(SectionCheck::Bad(reason)) => {
                    warnings.push(format!(
                        "ignoring the file's feature sections (event names, build-ids, host \
                         facts): {reason}; the samples are read without them"
                    ));
                    head_patch = header_without_features(&mut file).map_err(open_err)?;
                }
            }
        }
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        let pos = Arc::new(AtomicU64::new(0));
        let tracked = BufReader::with_capacity(
            1 << 20,
            Tracked {
                inner: file,
                pos: Arc::clone(&pos),
                head: head_patch,
            },
        );
        let PerfFileReader {
            perf_file,
            record_iter,
        } = PerfFileReader::parse_file(tracked).map_err(|e| PerfDataError::Header {
            reason: e.to_string(),
        })?;

        let build_ids = match perf_file.build_ids() {
            Ok(map) => map
                .into_values()
                .map(|info| (info.path, info.build_id))
                .collect(),
            Err(e) => {
                warnings.push(format!("ignoring the unreadable build-id section ({e})"));
                HashMap::new()
            }
        };
        let fixed_periods: Vec<u64> = perf_file
            .event_attributes()
            .iter()
            .map(|a| fixed_period(&a.attr))
            .collect();
        let event_names: Vec<String> = perf_file
            .event_attributes()
            .iter()
            .map(|a| {
                a.name()
                    .map_or_else(|| event_type_name(&a.attr.type_), str::to_owned)
            })
            .collect();
        let header = header_of(&perf_file, path);
        let stack_copies = has_stack_copies(&perf_file);
        Ok(Self {
            header,
            perf_file,
            records: record_iter,
            pos,
            data_end,
            data_range,
            path: path.to_owned(),
            little_endian: le,
            file_len,
            build_ids,
            stats: ImportStats {
                samples_per_event: vec![0; event_names.len()],
                ..ImportStats::default()
            },
            fixed_periods,
            event_names,
            selected: None,
            warnings,
            done: false,
            unwinder: stack_copies.then(EventUnwinder::new),
            scanned_unwind: None,
        })
    }

    /// The recording header derived from the attributes and feature sections.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Problems that did not stop the import (truncation at the end, unreadable sections).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn stats(&self) -> &ImportStats {
        &self.stats
    }

    /// The names of the events that have samples (known once the stream has ended); the
    /// header names the first attribute, which in some files is an AUX or dummy event.
    pub fn sampled_events(&self) -> Vec<&str> {
        self.event_names
            .iter()
            .zip(&self.stats.samples_per_event)
            .filter(|(_, n)| **n > 0)
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Every event attribute's name with its sample count so far (complete once the stream
    /// has ended), in file order.
    pub fn events(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.event_names
            .iter()
            .zip(&self.stats.samples_per_event)
            .map(|(name, n)| (name.as_str(), *n))
    }

    /// The `HEADER_BUILD_ID` section: (file path, build-id) pairs, sorted by path.
    pub fn build_ids(&self) -> Vec<(&[u8], &[u8])> {
        let mut v: Vec<(&[u8], &[u8])> = self
            .build_ids
            .iter()
            .map(|(p, b)| (p.as_slice(), b.as_slice()))
            .collect();
        v.sort_unstable();
        v
    }

    /// The names of the feature sections the file has (perf's `HEADER_*` without the
    /// prefix), in bit order.
    pub fn features(&self) -> Vec<String> {
        self.perf_file
            .features()
            .iter()
            .map(|f| f.to_string())
            .collect()
    }

    /// The events a report can choose between (`--event`): perf's names of the event
    /// attributes, in file order, each once, without perf's side-band `dummy` event
    /// (which never samples).
    pub fn event_choices(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for name in &self.event_names {
            let base = name.split(':').next().unwrap_or(name);
            if base != "dummy" && !out.contains(&name.as_str()) {
                out.push(name);
            }
        }
        out
    }

    /// From now on only samples of the event(s) named `name` are read; the other events'
    /// samples are skipped (still counted in [`ImportStats::samples_per_event`]). `false`
    /// when no attribute has that name.
    pub fn select_event(&mut self, name: &str) -> bool {
        let mask: Vec<bool> = self.event_names.iter().map(|n| n == name).collect();
        if !mask.contains(&true) {
            return false;
        }
        self.selected = Some(mask);
        true
    }

    /// The event selected with [`PerfDataReader::select_event`].
    pub fn selected_event(&self) -> Option<&str> {
        let mask = self.selected.as_ref()?;
        let i = mask.iter().position(|s| *s)?;
        self.event_names.get(i).map(String::as_str)
    }

    /// Whether samples may hold kernel addresses: false when every event attribute
    /// excludes the kernel (`perf record -e EVENT:u`, `--all-user`).
    pub fn may_sample_kernel(&self) -> bool {
        use reader::AttrFlags;
        // Such events only sample user mode: their IPs, call chains (walked from the
        // user registers) and branch filters (which follow the event's privilege) stay
        // in user space.
        self.perf_file
            .event_attributes()
            .iter()
            .any(|a| !a.attr.flags.contains(AttrFlags::EXCLUDE_KERNEL))
    }

    /// The build-id of the recorded kernel (`[kernel.kallsyms]` in the build-id section).
    pub fn kernel_build_id(&self) -> Option<&[u8]> {
        self.build_ids
            .get(b"[kernel.kallsyms]".as_slice())
            .map(Vec::as_slice)
            .filter(|id| !id.is_empty())
    }

    /// The fast path for reports ([`mapped`]): maps the file and walks its records in
    /// place instead of streaming them as events. `None` when the file needs the event
    /// stream (see [`mapped`] for which), or when the stream has been started; the
    /// stream is then still there to read. On success the stream is consumed: [`stats`]
    /// counts the records walked (add the branch entries with
    /// [`PerfDataReader::note_branch_entries`]).
    ///
    /// [`stats`]: PerfDataReader::stats
    pub fn mapped_scan(&mut self) -> Option<mapped::Scan> {
        self.mapped_scan_with(mapped::CHUNK_SIZE, &mut |_| {})
    }

    /// [`PerfDataReader::mapped_scan`], handing out each chunk of `chunk_size` bytes (or
    /// a little more: chunks end at record boundaries) as soon as the walk has passed it,
    /// so that its samples can be decoded while the walk goes on. When the walk gives up
    /// (`None`), the chunks handed out must be dropped unused.
    pub fn mapped_scan_with(
        &mut self,
        chunk_size: usize,
        on_chunk: &mut dyn FnMut(mapped::Chunk),
    ) -> Option<mapped::Scan> {
        self.scan(chunk_size, on_chunk, mapped::Consumer::Chunks)
    }

    /// The fast path for a consumer of every sample in perf's order
    /// ([`mapped::Scan::for_each_in_order`]); as [`PerfDataReader::mapped_scan`]
    /// otherwise. Samples with stack copies are handed out with them: the consumer
    /// unwinds them ([`crate::dwarf::EventUnwinder`], following the side-band events it
    /// meets) and reports how with [`PerfDataReader::note_unwind_stats`].
    pub fn mapped_scan_in_order(&mut self) -> Option<mapped::Scan> {
        self.scan(mapped::CHUNK_SIZE, &mut |_| {}, mapped::Consumer::InOrder)
    }

    fn scan(
        &mut self,
        chunk_size: usize,
        on_chunk: &mut dyn FnMut(mapped::Chunk),
        consumer: mapped::Consumer,
    ) -> Option<mapped::Scan> {
        use linux_perf_data::Feature;
        use reader::{AttrFlags, RecordParseInfo};
        if !self.little_endian
            || (self.unwinder.is_some() && consumer == mapped::Consumer::Chunks)
            || self.done
            || self.stats.records > 0
            || self
                .perf_file
                .features()
                .has_feature(Feature::SIMPLEPERF_META_INFO)
        {
            return None;
        }
        let attrs = self.perf_file.event_attributes();
        let parse_infos: Vec<RecordParseInfo> = attrs
            .iter()
            .map(|a| RecordParseInfo::new(&a.attr, Endianness::LittleEndian))
            .collect();
        let first = parse_infos.first()?;
        let id_info = if parse_infos.len() == 1 {
            mapped::IdInfo::OnlyOne
        } else if parse_infos
            .iter()
            .all(|p| p.id_parse_info == first.id_parse_info)
        {
            mapped::IdInfo::Same(first.id_parse_info)
        } else {
            mapped::IdInfo::PerAttribute {
                sample_id_all: attrs[0].attr.flags.contains(AttrFlags::SAMPLE_ID_ALL),
            }
        };
        let mut id_to_attr = HashMap::new();
        for (i, a) in attrs.iter().enumerate() {
            for id in &a.event_ids {
                id_to_attr.insert(*id, i);
            }
        }
        let layouts = mapped::Layouts {
            layouts: attrs
                .iter()
                .map(|a| SampleLayout {
                    sample_type: a.attr.sample_format.bits(),
                    read_format: a.attr.read_format.bits(),
                    branch_sample_type: a.attr.branch_sample_format.bits(),
                    regs_user: a.attr.sample_regs_user,
                    fixed_period: fixed_period(&a.attr),
                })
                .collect(),
            parse_infos,
            id_info,
            id_to_attr,
            selected: self.selected.clone(),
        };
        let file = File::open(&self.path).ok()?;
        // SAFETY: the mapping is read-only and private; its bytes are only read through
        // bounds-checked slices. perf.data files are not modified while they are reported
        // on (as for perf itself, a file truncated meanwhile would fault).
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let (start, end) = self.data_range;
        let start = usize::try_from(start).ok()?;
        let end = usize::try_from(end).ok()?.min(map.len());
        if start > end {
            return None;
        }
        let build_ids = &self.build_ids;
        let (scan, stats) = mapped::walk(
            map,
            start..end,
            layouts,
            chunk_size.max(1),
            consumer,
            |raw, stats| convert(raw, 0, build_ids, stats, None, 1).map_err(|_| ()),
            on_chunk,
        )?;
        self.stats = stats;
        self.done = true;
        Some(scan)
    }

    /// How the walks of the samples' stack copies went, for a file recorded with
    /// `--call-graph dwarf` (complete once the stream has ended).
    pub fn unwind_stats(&self) -> Option<crate::dwarf::UnwindStats> {
        self.scanned_unwind
            .or_else(|| self.unwinder.as_ref().map(EventUnwinder::stats))
    }

    /// Whether any event attribute samples branch stacks.
    pub fn has_branch_stacks(&self) -> bool {
        self.perf_file
            .event_attributes()
            .iter()
            .any(|a| a.attr.sample_format.bits() & abi::PERF_SAMPLE_BRANCH_STACK != 0)
    }

    /// Whether the samples carry stack copies (`perf record --call-graph dwarf`): then
    /// [`PerfDataReader::mapped_scan`] declines, and only a consumer that unwinds them
    /// itself ([`crate::dwarf::ScanUnwinder`]) may take
    /// [`PerfDataReader::mapped_scan_unwinding_with`].
    pub fn has_stack_copies(&self) -> bool {
        self.unwinder.is_some()
    }

    /// [`PerfDataReader::mapped_scan_with`] for a consumer that unwinds the samples' stack
    /// copies itself, and reports how with [`PerfDataReader::note_unwind_stats`]: each
    /// chunk is handed out with the side-band events that give its samples' epochs their
    /// state ([`mapped::Chunk::take_sideband`]), so that they can be unwound while the
    /// walk goes on.
    pub fn mapped_scan_unwinding_with(
        &mut self,
        chunk_size: usize,
        on_chunk: &mut dyn FnMut(mapped::Chunk),
    ) -> Option<mapped::Scan> {
        self.scan(chunk_size, on_chunk, mapped::Consumer::ChunksWithSideband)
    }

    /// The counts of the walks a mapped scan's consumer made.
    pub fn note_unwind_stats(&mut self, stats: crate::dwarf::UnwindStats) {
        self.scanned_unwind = Some(stats);
    }

    /// Adds the branch entries of the samples a [`mapped::Scan`] decoded to [`stats`].
    ///
    /// [`stats`]: PerfDataReader::stats
    pub fn note_branch_entries(&mut self, n: u64) {
        self.stats.branch_entries += n;
    }

    /// The next batch of events (one record gives zero or one event).
    fn next_event(&mut self) -> Result<Option<Event>, PerfDataError> {
        loop {
            let record = match self.records.next_record(&mut self.perf_file) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(source) => {
                    let offset = self.pos.load(Ordering::Relaxed);
                    if self.data_end > self.file_len || offset >= self.file_len {
                        self.warnings.push(format!(
                            "stopped at file offset {offset:#x}: the last record is incomplete \
                             ({source}); the report covers the records before it"
                        ));
                        return Ok(None);
                    }
                    return Err(PerfDataError::Record {
                        offset,
                        reason: source.to_string(),
                    });
                }
            };
            self.stats.records += 1;
            let (raw, attr_index) = match record {
                PerfFileRecord::EventRecord { record, attr_index } => {
                    if record.record_type == RecordType::SAMPLE {
                        if let Some(n) = self.stats.samples_per_event.get_mut(attr_index) {
                            *n += 1;
                        }
                        if !selected(self.selected.as_deref(), attr_index) {
                            continue;
                        }
                    }
                    (record, attr_index)
                }
                PerfFileRecord::UserRecord(_) => {
                    self.stats.skipped_records += 1;
                    continue;
                }
            };
            let index = self.stats.records;
            let unwinder = self.unwinder.as_mut();
            let period = self.fixed_periods.get(attr_index).copied().unwrap_or(1);
            if let Some(ev) = convert(
                &raw,
                index,
                &self.build_ids,
                &mut self.stats,
                unwinder,
                period,
            )? {
                if let Some(u) = &mut self.unwinder {
                    u.observe(&ev);
                }
                return Ok(Some(ev));
            }
        }
    }
}

impl Iterator for PerfDataReader {
    type Item = Result<Event, PerfDataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_event() {
            Ok(Some(ev)) => Some(Ok(ev)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Whether some event's samples carry user registers and a stack copy (`perf record
/// --call-graph dwarf`).
fn has_stack_copies(perf_file: &linux_perf_data::PerfFile) -> bool {
    let both = abi::PERF_SAMPLE_REGS_USER | abi::PERF_SAMPLE_STACK_USER;
    perf_file
        .event_attributes()
        .iter()
        .any(|a| a.attr.sample_format.bits() & both == both && a.attr.sample_regs_user != 0)
}

/// A `u64` of the file header in the file's byte order.
fn header_word(b: &[u8], le: bool) -> u64 {
    let a: [u8; 8] = b.try_into().unwrap_or_default();
    if le {
        u64::from_le_bytes(a)
    } else {
        u64::from_be_bytes(a)
    }
}

/// The file header to read a truncated file with: its data section ends at the last
/// complete record, and it has no feature sections (they lived after the data section,
/// so they are gone too). Old files describe events in the event_types section; it is
/// dropped as well, as the attrs section alone is what every perf version writes.
enum SectionCheck {
    Io(std::io::Error),
    Bad(String),
}

/// Checks that the header's attrs and event_types sections and (with `features`) every
/// feature section lie inside the file, before linux-perf-data reads them: it allocates
/// each feature section at the size the file states, so a corrupt size would otherwise
/// abort the process with an allocation failure.
fn check_sections(
    file: &mut File,
    file_len: u64,
    le: bool,
    features: bool,
) -> Result<(), SectionCheck> {
    let mut head = vec![0u8; abi::PERF_FILE_HEADER_LEN];
    file.seek(SeekFrom::Start(0)).map_err(SectionCheck::Io)?;
    let n = read_up_to(file, &mut head).map_err(SectionCheck::Io)?;
    if n < head.len() {
        // linux-perf-data reports the short header itself.
        return Ok(());
    }
    let section = |b: &[u8]| (header_word(&b[..8], le), header_word(&b[8..16], le));
    let inside = |what: &str, (offset, size): (u64, u64)| match offset.checked_add(size) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(SectionCheck::Bad(format!(
            "the {what} section (offset {offset:#x}, size {size:#x}) lies beyond the end of \
             the file ({file_len:#x} bytes)"
        ))),
    };
    let a = abi::PERF_FILE_HEADER_ATTRS_OFFSET;
    let t = abi::PERF_FILE_HEADER_EVENT_TYPES_OFFSET;
    let l = abi::PERF_FILE_SECTION_LEN;
    let attrs = section(&head[a..a + l]);
    let event_types = section(&head[t..t + l]);
    inside("attrs", attrs)?;
    inside("event_types", event_types)?;
    // linux-perf-data divides the attrs section by attr_size, and sizes each attr's id
    // list from the `perf_file_section` that ends each attrs entry (event_types entries
    // have it after the attr) before reading it.
    let attr_size = header_word(&head[16..24], le);
    if attr_size < abi::PERF_ATTR_SIZE_VER0 {
        return Err(SectionCheck::Bad(format!(
            "attr_size {attr_size} is below the smallest perf_event_attr ({})",
            abi::PERF_ATTR_SIZE_VER0
        )));
    }
    for (what, (offset, size), entry) in [
        ("attrs", attrs, attr_size),
        (
            "event_types",
            event_types,
            attr_size.saturating_add(l as u64),
        ),
    ] {
        // Inside the file, so bounded by its length.
        let mut body = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))
            .map_err(SectionCheck::Io)?;
        file.read_exact(&mut body).map_err(SectionCheck::Io)?;
        for (i, e) in body.chunks_exact(entry as usize).enumerate() {
            inside(
                &format!("{what} entry #{i}'s ids"),
                section(&e[e.len() - l..]),
            )?;
        }
    }
    if !features {
        return Ok(());
    }
    let d = abi::PERF_FILE_HEADER_DATA_OFFSET;
    let (data_off, data_size) = section(&head[d..d + l]);
    let f = abi::PERF_FILE_HEADER_FEATURES_OFFSET;
    // The feature sections' table lists the set bits of the bitmap (four u64 words in the
    // file's byte order) in increasing order.
    let ids: Vec<u32> = (0..4u32)
        .flat_map(|w| {
            let at = f + 8 * w as usize;
            let word = header_word(&head[at..at + 8], le);
            (0..64u32)
                .filter(move |b| word >> b & 1 == 1)
                .map(move |b| 64 * w + b)
        })
        .collect();
    let mut table = vec![0u8; ids.len() * l];
    file.seek(SeekFrom::Start(data_off.saturating_add(data_size)))
        .map_err(SectionCheck::Io)?;
    let got = read_up_to(file, &mut table).map_err(SectionCheck::Io)?;
    // A short table is linux-perf-data's to report; check the entries that are there.
    for (entry, id) in table[..got - got % l].chunks_exact(l).zip(ids) {
        let (offset, size) = section(entry);
        inside(&format!("feature #{id}"), (offset, size))?;
        // linux-perf-data sizes its buffers from counts and lengths in these sections
        // before reading them; check each against the bytes that are there.
        let string = matches!(
            id,
            abi::HEADER_HOSTNAME
                | abi::HEADER_OSRELEASE
                | abi::HEADER_VERSION
                | abi::HEADER_ARCH
                | abi::HEADER_CPUDESC
                | abi::HEADER_CPUID
        );
        if !string && id != abi::HEADER_EVENT_DESC {
            continue;
        }
        // Inside the file, so bounded by its length.
        let mut body = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(offset))
            .map_err(SectionCheck::Io)?;
        file.read_exact(&mut body).map_err(SectionCheck::Io)?;
        let checked = if string {
            header_string_end(&body, 0, le).map(|_| ())
        } else {
            check_event_desc(&body, le)
        };
        checked.map_err(|what| SectionCheck::Bad(format!("feature #{id} section: {what}")))?;
    }
    Ok(())
}

fn section_u32(body: &[u8], at: usize, le: bool) -> Option<u32> {
    let b: [u8; 4] = body.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if le {
        u32::from_le_bytes(b)
    } else {
        u32::from_be_bytes(b)
    })
}

/// The end of the `struct perf_header_string { u32 len; char buf[len]; }` at `at`.
fn header_string_end(body: &[u8], at: usize, le: bool) -> Result<usize, String> {
    let len = section_u32(body, at, le).ok_or("a string's length lies past its end")?;
    let end = at + 4 + len as usize;
    if end > body.len() {
        return Err(format!(
            "a {len}-byte string at offset {at:#x} overruns the section ({:#x} bytes)",
            body.len()
        ));
    }
    Ok(end)
}

/// Walks HEADER_EVENT_DESC: `u32 nr, attr_size`, then per event the attr, `u32 nr_ids`,
/// a header string and `u64 ids[nr_ids]`, each inside the section.
fn check_event_desc(body: &[u8], le: bool) -> Result<(), String> {
    let short = || format!("its {} bytes end inside an event", body.len());
    let nr = section_u32(body, 0, le).ok_or_else(short)?;
    let attr_size = section_u32(body, 4, le).ok_or_else(short)? as usize;
    let mut at = 8usize;
    for _ in 0..nr {
        at = at.checked_add(attr_size).ok_or_else(short)?;
        let nr_ids = section_u32(body, at, le).ok_or_else(short)? as usize;
        at = header_string_end(body, at + 4, le)?;
        at = at.checked_add(nr_ids * 8).ok_or_else(short)?;
        if at > body.len() {
            return Err(format!(
                "{nr} events with {nr_ids} ids overrun its {} bytes",
                body.len()
            ));
        }
    }
    Ok(())
}

/// The file header with an empty feature bitmap, so that no feature section is read.
/// The event_types section goes too, as for a truncated file: without the feature
/// sections linux-perf-data takes the attributes from the attrs section only.
fn header_without_features(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut full = vec![0u8; abi::PERF_FILE_HEADER_LEN];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut full)?;
    full.truncate(n);
    let t = abi::PERF_FILE_HEADER_EVENT_TYPES_OFFSET;
    let features = abi::PERF_FILE_HEADER_FEATURES_OFFSET;
    if full.len() >= features + 32 {
        full[t..t + abi::PERF_FILE_SECTION_LEN].fill(0);
        full[features..features + 32].fill(0);
    }
    Ok(full)
}

fn truncated_file_header(
    file: &mut File,
    data_off: u64,
    file_len: u64,
    le: bool,
    warnings: &mut Vec<String>,
) -> std::io::Result<Vec<u8>> {
    let usable = complete_records_end(file, data_off, file_len, le)?;
    warnings.push(format!(
        "stopped at file offset {usable:#x}: the record there is incomplete; \
         the report covers the records before it"
    ));
    warnings.push(
        "the file's feature sections (event names, build-ids, host facts) are lost with its end"
            .to_owned(),
    );
    let mut full = vec![0u8; abi::PERF_FILE_HEADER_LEN];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut full)?;
    full.truncate(n);
    let o = abi::PERF_FILE_HEADER_DATA_OFFSET;
    let features = abi::PERF_FILE_HEADER_FEATURES_OFFSET;
    if full.len() >= features + 32 {
        let size = usable.saturating_sub(data_off);
        full[o + 8..o + 16].copy_from_slice(&if le {
            size.to_le_bytes()
        } else {
            size.to_be_bytes()
        });
        full[o + 16..o + 32].fill(0);
        full[features..features + 32].fill(0);
    }
    Ok(full)
}

/// The end of the last complete record of a data section starting at `data_off`, walking
/// the record headers (`struct perf_event_header { u32 type; u16 misc; u16 size; }`).
fn complete_records_end(
    file: &mut File,
    data_off: u64,
    file_len: u64,
    le: bool,
) -> std::io::Result<u64> {
    let mut r = BufReader::with_capacity(1 << 16, &*file);
    let mut at = data_off;
    r.seek(SeekFrom::Start(at))?;
    loop {
        let mut h = [0u8; 8];
        if at + 8 > file_len || read_up_to(&mut r, &mut h)? < 8 {
            return Ok(at);
        }
        let size = u64::from(if le {
            u16::from_le_bytes([h[6], h[7]])
        } else {
            u16::from_be_bytes([h[6], h[7]])
        });
        if size < 8 || at + size > file_len {
            return Ok(at);
        }
        r.seek_relative(size as i64 - 8)?;
        at += size;
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn header_of(perf_file: &linux_perf_data::PerfFile, path: &Path) -> Header {
    let attrs = perf_file.event_attributes();
    let first = attrs.first();
    let event = first
        .and_then(|a| a.name().map(str::to_owned))
        .or_else(|| first.map(|a| event_type_name(&a.attr.type_)))
        .unwrap_or_else(|| "unknown".to_owned());
    let (frequency, period) = match first.map(|a| a.attr.sampling_policy) {
        Some(SamplingPolicy::Frequency(f)) => (f, 0),
        Some(SamplingPolicy::Period(p)) => (0, p.get()),
        _ => (0, 0),
    };
    let sample_type = first.map_or(0, |a| a.attr.sample_format.bits());
    let branch_type = first.map_or(0, |a| a.attr.branch_sample_format.bits());
    let call_graph = if branch_type & abi::PERF_SAMPLE_BRANCH_CALL_STACK != 0 {
        "lbr"
    } else if has_stack_copies(perf_file) {
        "dwarf"
    } else if sample_type & abi::PERF_SAMPLE_CALLCHAIN != 0 {
        "fp"
    } else {
        ""
    };
    let hardware = matches!(
        first.map(|a| &a.attr.type_),
        Some(PerfEventType::Hardware(..) | PerfEventType::HwCache(..))
    );
    let cpu_id = perf_file.cpu_id().ok().flatten().unwrap_or_default();
    let host = HostInfo {
        hostname: perf_file
            .hostname()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned(),
        kernel: perf_file
            .os_release()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned(),
        cpu_vendor: cpu_id.split(',').next().unwrap_or_default().to_owned(),
        cpu_model: perf_file
            .cpu_desc()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned(),
        pmu: if hardware { "cpu" } else { "software" }.to_owned(),
        lbr_depth: 0,
        lbr_format: None,
    };
    let start_ns = perf_file
        .sample_time_range()
        .ok()
        .flatten()
        .map_or(0, |r| r.first_sample_time);
    Header {
        writer: format!(
            "perf {}",
            perf_file.perf_version().ok().flatten().unwrap_or("?")
        ),
        start_unix: 0,
        start_monotonic_ns: start_ns,
        host,
        sampling: SamplingConfig {
            events: Vec::new(),
            event,
            event_reason: "imported from perf.data".to_owned(),
            frequency,
            period,
            branch_stacks: sample_type & abi::PERF_SAMPLE_BRANCH_STACK != 0,
            call_graph: call_graph.to_owned(),
        },
        target: Target::PerfData {
            path: path.display().to_string(),
        },
    }
}

/// perf's name for an event without an `EVENT_DESC` name (old or truncated files).
fn event_type_name(t: &PerfEventType) -> String {
    use reader::{HardwareEventId as H, SoftwareCounterType as S};
    match t {
        PerfEventType::Hardware(id, _) => match id {
            H::CpuCycles => "cycles".to_owned(),
            H::Instructions => "instructions".to_owned(),
            H::CacheReferences => "cache-references".to_owned(),
            H::CacheMisses => "cache-misses".to_owned(),
            H::BranchInstructions => "branches".to_owned(),
            H::BranchMisses => "branch-misses".to_owned(),
            other => format!("{other:?}").to_lowercase(),
        },
        PerfEventType::Software(id) => match id {
            S::CpuClock => "cpu-clock".to_owned(),
            S::TaskClock => "task-clock".to_owned(),
            S::PageFaults => "page-faults".to_owned(),
            S::ContextSwitches => "context-switches".to_owned(),
            other => format!("{other:?}").to_lowercase(),
        },
        other => format!("{other:?}").to_lowercase(),
    }
}

fn cpu_mode(m: reader::CpuMode) -> CpuMode {
    match m {
        reader::CpuMode::Kernel => CpuMode::Kernel,
        reader::CpuMode::User => CpuMode::User,
        reader::CpuMode::Hypervisor => CpuMode::Hypervisor,
        reader::CpuMode::GuestKernel => CpuMode::GuestKernel,
        reader::CpuMode::GuestUser => CpuMode::GuestUser,
        _ => CpuMode::Unknown,
    }
}

fn record_name(t: RecordType) -> &'static str {
    match t {
        RecordType::SAMPLE => "SAMPLE",
        RecordType::MMAP => "MMAP",
        RecordType::MMAP2 => "MMAP2",
        RecordType::COMM => "COMM",
        RecordType::FORK => "FORK",
        RecordType::EXIT => "EXIT",
        RecordType::LOST => "LOST",
        RecordType::THROTTLE => "THROTTLE",
        RecordType::LOST_SAMPLES => "LOST_SAMPLES",
        _ => "perf",
    }
}

fn convert(
    raw: &RawEventRecord<'_>,
    index: u64,
    build_ids: &HashMap<Vec<u8>, Vec<u8>>,
    stats: &mut ImportStats,
    unwinder: Option<&mut EventUnwinder>,
    fixed_period: u64,
) -> Result<Option<Event>, PerfDataError> {
    let body_err = |source| PerfDataError::RecordBody {
        kind: record_name(raw.record_type),
        index,
        source,
    };
    if raw.record_type == RecordType::SAMPLE {
        let bytes = raw.data.as_slice();
        let layout = SampleLayout {
            sample_type: raw.parse_info.sample_format.bits(),
            read_format: raw.parse_info.read_format.bits(),
            branch_sample_type: raw.parse_info.branch_sample_format.bits(),
            regs_user: raw.parse_info.sample_regs_user,
            fixed_period,
        };
        let le = raw.parse_info.endian == Endianness::LittleEndian;
        let mode = cpu_mode(reader::CpuMode::from_misc(raw.misc));
        let r = decode_sample_raw(&bytes, le, layout)
            .map_err(|what| PerfDataError::Sample { index, what })?;
        let mut sample = sample_of(&r, le, layout, mode);
        if let Some((u, regs)) = unwinder.zip(r.user_regs(le, layout.regs_user)) {
            u.apply(&mut sample, regs, r.user_stack);
        }
        stats.samples += 1;
        stats.branch_entries += sample.branches.len() as u64;
        return Ok(Some(Event::Sample(sample)));
    }
    let time_ns = raw.timestamp().unwrap_or(0);
    // The thread of a loss, from the record's `sample_id` (`sample_id_all`).
    let tid = || raw.common_data().ok().and_then(|c| c.tid).map(|t| t as u32);
    if raw.record_type == RecordType::LOST_SAMPLES {
        // `u64 lost`, then the `sample_id` (the parser does not know this record).
        let body = raw.data.as_slice();
        let count = body.get(..8).ok_or_else(|| {
            body_err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "LOST_SAMPLES without its count",
            ))
        })?;
        let count = word(count, raw.parse_info.endian == Endianness::LittleEndian);
        return Ok(Some(Event::Loss(Loss {
            time_ns,
            kind: LossKind::RingBuffer,
            count,
            tid: tid(),
        })));
    }
    let parsed = match raw.record_type {
        RecordType::MMAP
        | RecordType::MMAP2
        | RecordType::COMM
        | RecordType::FORK
        | RecordType::EXIT
        | RecordType::LOST
        | RecordType::THROTTLE => {
            if raw.record_type == RecordType::MMAP2
                && raw.misc & abi::PERF_RECORD_MISC_MMAP_BUILD_ID != 0
            {
                // The parser asserts on this length; check it first so bad input is an
                // error, not a panic. Layout: pid, tid (u32), addr, len, pgoff (u64), then
                // the build-id length byte.
                let body = raw.data.as_slice();
                if body.get(32).is_none_or(|&n| n > 20) {
                    return Err(body_err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "MMAP2 build-id longer than 20 bytes",
                    )));
                }
            }
            raw.parse().map_err(body_err)?
        }
        _ => {
            stats.skipped_records += 1;
            return Ok(None);
        }
    };
    let ev = match parsed {
        EventRecord::Mmap(m) => {
            if !m.is_executable {
                return Ok(None);
            }
            let path = m.path.as_slice().into_owned();
            let build_id = build_ids.get(&path).cloned();
            mapping(
                time_ns,
                m.pid,
                m.address,
                m.length,
                m.page_offset,
                cpu_mode(m.cpu_mode),
                path,
                build_id,
            )
        }
        EventRecord::Mmap2(m) => {
            const PROT_EXEC: u32 = 4;
            if m.protection & PROT_EXEC == 0 {
                return Ok(None);
            }
            let path = m.path.as_slice().into_owned();
            let build_id = match m.file_id {
                Mmap2FileId::BuildId(id) if raw.misc & abi::PERF_RECORD_MISC_MMAP_BUILD_ID != 0 => {
                    Some(id)
                }
                _ => build_ids.get(&path).cloned(),
            };
            mapping(
                time_ns,
                m.pid,
                m.address,
                m.length,
                m.page_offset,
                cpu_mode(m.cpu_mode),
                path,
                build_id,
            )
        }
        EventRecord::Comm(c) if c.is_execve => Event::Task(TaskEvent::Exec {
            time_ns,
            pid: c.pid as u32,
            tid: c.tid as u32,
            comm: String::from_utf8_lossy(&c.name.as_slice()).into_owned(),
        }),
        EventRecord::Comm(c) => Event::Task(TaskEvent::Comm {
            time_ns,
            pid: c.pid as u32,
            tid: c.tid as u32,
            comm: String::from_utf8_lossy(&c.name.as_slice()).into_owned(),
        }),
        EventRecord::Fork(f) => Event::Task(TaskEvent::Fork {
            time_ns: f.timestamp,
            pid: f.pid as u32,
            tid: f.tid as u32,
            ppid: f.ppid as u32,
            ptid: f.ptid as u32,
        }),
        EventRecord::Exit(f) => Event::Task(TaskEvent::Exit {
            time_ns: f.timestamp,
            pid: f.pid as u32,
            tid: f.tid as u32,
        }),
        EventRecord::Lost(l) => Event::Loss(Loss {
            time_ns,
            kind: LossKind::RingBuffer,
            count: l.count,
            tid: tid(),
        }),
        EventRecord::Throttle(t) => Event::Loss(Loss {
            time_ns: t.timestamp,
            kind: LossKind::Throttled,
            count: 1,
            tid: tid(),
        }),
        _ => {
            stats.skipped_records += 1;
            return Ok(None);
        }
    };
    if matches!(ev, Event::Mapping(_)) {
        stats.mappings += 1;
    }
    Ok(Some(ev))
}

#[allow(clippy::too_many_arguments)]
fn mapping(
    time_ns: u64,
    pid: i32,
    start: u64,
    len: u64,
    pgoff: u64,
    mode: CpuMode,
    path: Vec<u8>,
    build_id: Option<Vec<u8>>,
) -> Event {
    let space = match mode {
        CpuMode::GuestKernel | CpuMode::GuestUser => AddressSpace::Guest {
            vm: pid.max(0) as u32,
        },
        CpuMode::Kernel => AddressSpace::HostKernel,
        _ if pid == -1 => AddressSpace::HostKernel,
        _ => AddressSpace::HostUser,
    };
    Event::Mapping(Mapping {
        time_ns,
        space,
        pid: pid as u32,
        start,
        len,
        pgoff,
        path: String::from_utf8_lossy(&path).into_owned(),
        build_id,
    })
}

/// What a sample record contains, from its event attribute.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleLayout {
    /// `perf_event_attr.sample_type`.
    pub sample_type: u64,
    /// `perf_event_attr.read_format`.
    pub read_format: u64,
    /// `perf_event_attr.branch_sample_type`.
    pub branch_sample_type: u64,
    /// `perf_event_attr.sample_regs_user`.
    pub regs_user: u64,
    /// The weight of a sample without `PERF_SAMPLE_PERIOD`: the attribute's fixed
    /// `sample_period` (`perf record -c N`), as perf counts it; 0 or 1 count one.
    pub fixed_period: u64,
}

/// [`SampleLayout::fixed_period`] of an event attribute.
fn fixed_period(attr: &reader::PerfEventAttr) -> u64 {
    match attr.sampling_policy {
        SamplingPolicy::Period(p) => p.get(),
        _ => 1,
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    le: bool,
}

impl Cursor<'_> {
    fn u64(&mut self, what: &'static str) -> Result<u64, &'static str> {
        let (head, rest) = self.buf.split_first_chunk::<8>().ok_or(what)?;
        self.buf = rest;
        Ok(if self.le {
            u64::from_le_bytes(*head)
        } else {
            u64::from_be_bytes(*head)
        })
    }
    fn u32_pair(&mut self, what: &'static str) -> Result<(u32, u32), &'static str> {
        let (head, rest) = self.buf.split_first_chunk::<8>().ok_or(what)?;
        self.buf = rest;
        let a: [u8; 4] = [head[0], head[1], head[2], head[3]];
        let b: [u8; 4] = [head[4], head[5], head[6], head[7]];
        Ok(if self.le {
            (u32::from_le_bytes(a), u32::from_le_bytes(b))
        } else {
            (u32::from_be_bytes(a), u32::from_be_bytes(b))
        })
    }
    fn skip(&mut self, n: u64, what: &'static str) -> Result<(), &'static str> {
        let n = usize::try_from(n).map_err(|_| what)?;
        if n > self.buf.len() {
            return Err(what);
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

/// Whether samples of attribute `attr` are read under the `--event` mask `mask`.
fn selected(mask: Option<&[bool]>, attr: usize) -> bool {
    mask.is_none_or(|m| m.get(attr).copied().unwrap_or(false))
}

/// A `PERF_RECORD_SAMPLE` body decoded up to and including its branch stack, borrowing
/// the variable-length parts (the fast path aggregates them without copying).
#[derive(Clone, Copy, Debug, Default)]
pub struct RawSample<'a> {
    /// The event's id (`PERF_SAMPLE_IDENTIFIER`, else `PERF_SAMPLE_ID`), when sampled.
    pub id: Option<u64>,
    pub time_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub period: u64,
    pub ip: u64,
    /// The call chain's `u64` words (context markers included), in the file's byte order.
    pub callchain: &'a [u8],
    /// The branch stack's `perf_branch_entry`s (`from`, `to`, flags: 24 bytes each).
    pub branches: &'a [u8],
    pub branch_hw_index: Option<u64>,
    /// `PERF_SAMPLE_REGS_USER`: the `abi` word (`PERF_SAMPLE_REGS_ABI_*`, 0: none).
    pub user_regs_abi: u64,
    /// The user registers' `u64` words, in `sample_regs_user` bit order.
    pub user_regs: &'a [u8],
    /// `PERF_SAMPLE_STACK_USER`: the stack bytes the kernel copied (`dyn_size` of them).
    pub user_stack: &'a [u8],
}

impl RawSample<'_> {
    /// The call chain's words.
    pub fn callchain_words(&self, le: bool) -> impl Iterator<Item = u64> + '_ {
        self.callchain.chunks_exact(8).map(move |w| word(w, le))
    }

    /// The user registers of a `--call-graph dwarf` sample (its stack copy is
    /// [`RawSample::user_stack`]); `None` when the sample has none (a kernel thread, a
    /// 32-bit task, or not recorded so).
    /// `regs_user` is the attribute's `sample_regs_user`.
    pub fn user_regs(&self, le: bool, regs_user: u64) -> Option<Regs> {
        if self.user_regs_abi != lbrprof_unwind::abi::PERF_SAMPLE_REGS_ABI_64 {
            return None;
        }
        Regs::from_perf_with(regs_user, |index| {
            let w = self.user_regs.get(index.checked_mul(8)?..)?.get(..8)?;
            Some(word(w, le))
        })
    }

    /// The branch stack entries, newest first.
    pub fn branch_entries(&self, le: bool) -> impl Iterator<Item = Branch> + '_ {
        self.branches
            .chunks_exact(BRANCH_ENTRY_LEN)
            .map(move |e| branch_entry(e, le))
    }
}

/// Decodes a `PERF_RECORD_SAMPLE` body up to and including its branch stack (the
/// fields after it are not used by the model). Never panics; a body shorter than its
/// layout says gives an error naming the missing field.
pub fn decode_sample(
    body: &[u8],
    endian: Endianness,
    layout: SampleLayout,
    mode: CpuMode,
) -> Result<HostSample, &'static str> {
    let le = endian == Endianness::LittleEndian;
    let r = decode_sample_raw(body, le, layout)?;
    Ok(sample_of(&r, le, layout, mode))
}

/// A sample as a live capture reads it from a ring buffer (see [`decode_ring_sample`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingSample {
    pub sample: HostSample,
    /// The id of the event that took it, when the layout has one.
    pub id: Option<u64>,
    /// A `--call-graph dwarf` sample's user registers and stack copy (none for a kernel
    /// thread or a 32-bit task).
    pub stack_copy: Option<crate::dwarf::StackCopy>,
}

/// Decodes a whole `PERF_RECORD_SAMPLE` record (its `perf_event_header`, then the body)
/// in this machine's byte order, as the kernel writes it into a ring buffer: the same
/// decoder as the perf.data reader's ([`decode_sample_raw`]), the mode from the header's
/// cpumode. Never panics; a record shorter than its layout says is an error.
pub fn decode_ring_sample(record: &[u8], layout: SampleLayout) -> Result<RingSample, &'static str> {
    let le = cfg!(target_endian = "little");
    let (head, body) = record
        .split_first_chunk::<8>()
        .ok_or("record header truncated")?;
    let misc = u16::from_ne_bytes([head[4], head[5]]);
    let mode = cpu_mode(reader::CpuMode::from_misc(misc));
    let r = decode_sample_raw(body, le, layout)?;
    let stack_copy = r
        .user_regs(le, layout.regs_user)
        .map(|regs| crate::dwarf::StackCopy {
            regs,
            stack: r.user_stack.to_vec(),
        });
    Ok(RingSample {
        sample: sample_of(&r, le, layout, mode),
        id: r.id,
        stack_copy,
    })
}

/// Decodes a side-band record as the kernel writes it into a live ring buffer (`record`:
/// its `perf_event_header`, then the body, in this machine's byte order) with the
/// perf.data reader's decoder of the same records: the mappings (executable only),
/// tasks and losses a perf.data file holding it would give. `None` for what the model
/// has no place for, and for samples ([`decode_ring_sample`]). A mapping's build-id is
/// the record's (`MMAP2` flagged `PERF_RECORD_MISC_MMAP_BUILD_ID`), else none: the caller
/// may read the mapped file's. Never panics; a malformed record is an error.
pub fn decode_ring_sideband(
    record: &[u8],
    layout: &RingLayout,
) -> Result<Option<Event>, PerfDataError> {
    let bad = |reason: &str| PerfDataError::Record {
        offset: 0,
        reason: reason.to_owned(),
    };
    let (head, body) = record
        .split_first_chunk::<8>()
        .ok_or_else(|| bad("record header truncated"))?;
    let record_type = RecordType(u32::from_ne_bytes([head[0], head[1], head[2], head[3]]));
    let misc = u16::from_ne_bytes([head[4], head[5]]);
    if record_type == RecordType::SAMPLE || !record_type.is_builtin_type() {
        return Ok(None);
    }
    let raw = RawEventRecord::new(
        record_type,
        misc,
        reader::RawData::Single(body),
        layout.info,
    );
    convert(
        &raw,
        0,
        &HashMap::new(),
        &mut ImportStats::default(),
        None,
        layout.sample.fixed_period,
    )
}

/// How the records of a live event's ring buffer decode: its [`SampleLayout`], and the
/// record parse info of an attribute with that layout, whose side-band records end in a
/// `sample_id` when it sets `sample_id_all`.
#[derive(Clone, Copy, Debug)]
pub struct RingLayout {
    pub sample: SampleLayout,
    info: reader::RecordParseInfo,
}

impl RingLayout {
    pub fn new(sample: SampleLayout, sample_id_all: bool) -> Self {
        let attr = reader::PerfEventAttr {
            // (Neither the event nor its policies change how its records decode.)
            type_: PerfEventType::Software(reader::SoftwareCounterType::CpuClock),
            sampling_policy: SamplingPolicy::NoSampling,
            sample_format: reader::SampleFormat::from_bits_truncate(sample.sample_type),
            read_format: reader::ReadFormat::from_bits_truncate(sample.read_format),
            flags: if sample_id_all {
                reader::AttrFlags::SAMPLE_ID_ALL
            } else {
                reader::AttrFlags::empty()
            },
            wakeup_policy: reader::WakeupPolicy::EventCount(1),
            branch_sample_format: reader::BranchSampleFormat::from_bits_truncate(
                sample.branch_sample_type,
            ),
            sample_regs_user: sample.regs_user,
            sample_stack_user: 0,
            clock: reader::PerfClock::Default,
            sample_regs_intr: 0,
            aux_watermark: 0,
            sample_max_stack: 0,
            aux_sample_size: 0,
            sig_data: 0,
        };
        let endian = if cfg!(target_endian = "little") {
            Endianness::LittleEndian
        } else {
            Endianness::BigEndian
        };
        RingLayout {
            sample,
            info: reader::RecordParseInfo::new(&attr, endian),
        }
    }
}

/// The model's sample for a decoded body.
fn sample_of(r: &RawSample<'_>, le: bool, layout: SampleLayout, mode: CpuMode) -> HostSample {
    HostSample {
        event: 0,
        time_ns: r.time_ns,
        pid: r.pid,
        tid: r.tid,
        cpu: r.cpu,
        period: r.period,
        ip: r.ip,
        mode,
        callchain: if layout.sample_type & abi::PERF_SAMPLE_CALLCHAIN != 0 {
            callchain_frames(r.callchain_words(le), mode)
        } else {
            Vec::new()
        },
        branches: r.branch_entries(le).collect(),
        branch_hw_index: r.branch_hw_index,
    }
}

/// [`decode_sample`] without copies: the call chain and branch stack stay raw bytes.
pub fn decode_sample_raw(
    body: &[u8],
    le: bool,
    layout: SampleLayout,
) -> Result<RawSample<'_>, &'static str> {
    use abi::*;
    let st = layout.sample_type;
    let mut c = Cursor { buf: body, le };
    let mut s = RawSample {
        period: layout.fixed_period.max(1),
        ..RawSample::default()
    };
    if st & PERF_SAMPLE_IDENTIFIER != 0 {
        s.id = Some(c.u64("sample id truncated")?);
    }
    if st & PERF_SAMPLE_IP != 0 {
        s.ip = c.u64("ip truncated")?;
    }
    if st & PERF_SAMPLE_TID != 0 {
        let (pid, tid) = c.u32_pair("pid/tid truncated")?;
        s.pid = pid;
        s.tid = tid;
    }
    if st & PERF_SAMPLE_TIME != 0 {
        s.time_ns = c.u64("time truncated")?;
    }
    if st & PERF_SAMPLE_ADDR != 0 {
        c.u64("addr truncated")?;
    }
    if st & PERF_SAMPLE_ID != 0 {
        let id = c.u64("id truncated")?;
        s.id = s.id.or(Some(id));
    }
    if st & PERF_SAMPLE_STREAM_ID != 0 {
        c.u64("stream id truncated")?;
    }
    if st & PERF_SAMPLE_CPU != 0 {
        s.cpu = c.u32_pair("cpu truncated")?.0;
    }
    if st & PERF_SAMPLE_PERIOD != 0 {
        s.period = c.u64("period truncated")?;
    }
    if st & PERF_SAMPLE_READ != 0 {
        let rf = layout.read_format;
        let per_value =
            1 + u64::from(rf & PERF_FORMAT_ID != 0) + u64::from(rf & PERF_FORMAT_LOST != 0);
        let times = u64::from(rf & PERF_FORMAT_TOTAL_TIME_ENABLED != 0)
            + u64::from(rf & PERF_FORMAT_TOTAL_TIME_RUNNING != 0);
        if rf & PERF_FORMAT_GROUP != 0 {
            let nr = c.u64("read group truncated")?;
            let words = nr
                .checked_mul(per_value)
                .and_then(|w| w.checked_add(times))
                .and_then(|w| w.checked_mul(8))
                .ok_or("read group too large")?;
            c.skip(words, "read group truncated")?;
        } else {
            c.skip((per_value + times) * 8, "read value truncated")?;
        }
    }
    if st & PERF_SAMPLE_CALLCHAIN != 0 {
        let nr = c.u64("callchain length truncated")?;
        let bytes = nr.checked_mul(8).ok_or("callchain too long")?;
        let n = usize::try_from(bytes).map_err(|_| "callchain too long")?;
        if n > c.buf.len() {
            return Err("callchain truncated");
        }
        let (chain, rest) = c.buf.split_at(n);
        c.buf = rest;
        s.callchain = chain;
    }
    if st & PERF_SAMPLE_RAW != 0 {
        // `u32 size; char data[size];` — the u32 pair read takes the size and the
        // first 4 bytes of the data.
        let (size, _) = c.u32_pair("raw size truncated")?;
        c.skip(u64::from(size).saturating_sub(4), "raw data truncated")?;
    }
    if st & PERF_SAMPLE_BRANCH_STACK != 0 {
        let nr = c.u64("branch stack length truncated")?;
        if layout.branch_sample_type & PERF_SAMPLE_BRANCH_HW_INDEX != 0 {
            s.branch_hw_index = Some(c.u64("branch hw_index truncated")?);
        }
        let bytes = nr
            .checked_mul(BRANCH_ENTRY_LEN as u64)
            .filter(|b| *b <= c.buf.len() as u64)
            .ok_or("branch stack truncated")? as usize;
        s.branches = &c.buf[..bytes];
        c.buf = &c.buf[bytes..];
    }
    if st & PERF_SAMPLE_REGS_USER != 0 {
        s.user_regs_abi = c.u64("user regs abi truncated")?;
        if s.user_regs_abi != 0 {
            let n = u64::from(layout.regs_user.count_ones()) * 8;
            let regs = c.buf.get(..n as usize).ok_or("user regs truncated")?;
            s.user_regs = regs;
            c.skip(n, "user regs truncated")?;
        }
    }
    if st & PERF_SAMPLE_STACK_USER != 0 {
        let size = c.u64("user stack size truncated")?;
        if size > 0 {
            let n = usize::try_from(size).map_err(|_| "user stack too large")?;
            let data = c.buf.get(..n).ok_or("user stack truncated")?;
            c.skip(size, "user stack truncated")?;
            let dyn_size = c.u64("user stack dyn_size truncated")?;
            s.user_stack = &data[..usize::try_from(dyn_size).unwrap_or(n).min(n)];
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BranchKind, Frame};

    /// The error of the feature-section check of the file at `path` (`len` bytes).
    fn feature_check_error(path: &Path, len: usize) -> String {
        let mut f = File::open(path).unwrap();
        match check_sections(&mut f, len as u64, true, true) {
            Err(SectionCheck::Bad(msg)) => msg,
            _ => panic!("the feature check must fail"),
        }
    }

    fn words(ws: &[u64]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Found by the perfdata_import fuzz target: attr_size 0 divided by zero in
    /// linux-perf-data, and an attr's id section claiming 2^60 bytes was reserved up front.
    #[test]
    fn attr_size_and_attr_id_sections_are_checked() {
        let open = |attr_size: u64, ids: (u64, u64)| {
            let mut file = b"PERFILE2".to_vec();
            // attrs: one 80-byte entry at 104 (a 64-byte attr, then its ids section).
            file.extend(words(&[104, attr_size, 104, 80, 184, 0, 0, 0, 0, 0, 0, 0]));
            file.extend(words(&[0, 64, 0, 0, 0, 0, 0, 0, ids.0, ids.1]));
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("perf.data");
            std::fs::write(&path, &file).unwrap();
            match PerfDataReader::open(&path) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        let msg = open(0, (0, 0));
        assert!(
            msg.contains("attr_size 0 is below the smallest perf_event_attr"),
            "{msg}"
        );
        let msg = open(80, (184, 1 << 60));
        assert!(msg.contains("attrs entry #0's ids section"), "{msg}");
        assert!(msg.contains("beyond the end of the file"), "{msg}");
        let msg = open(80, (184, 0));
        assert!(!msg.contains("beyond the end"), "{msg}");
    }

    /// Found by the perfdata_import fuzz target: an EVENT_DESC section claiming 2^32
    /// events (or ids, or a 4 GB name) made linux-perf-data reserve that much up front.
    #[test]
    fn event_desc_and_string_counts_must_fit_their_section() {
        let le = |ws: &[u32]| -> Vec<u8> { ws.iter().flat_map(|w| w.to_le_bytes()).collect() };
        // One event: an 8-byte attr, 1 id, the name "ab".
        let mut good = le(&[1, 8, 0, 0, 1, 2]);
        good.extend(b"ab");
        good.extend(7u64.to_le_bytes());
        assert_eq!(check_event_desc(&good, true), Ok(()));
        assert_eq!(check_event_desc(&le(&[0, 136]), true), Ok(()));
        for bad in [
            le(&[u32::MAX, 136]),
            le(&[1, u32::MAX]),
            le(&[1, 0, u32::MAX, 0]),
            le(&[1, 0, 1, u32::MAX]),
            good[..good.len() - 1].to_vec(),
            Vec::new(),
        ] {
            assert!(check_event_desc(&bad, true).is_err(), "{bad:02x?}");
        }
        assert_eq!(header_string_end(&le(&[2, 0]), 0, true), Ok(6));
        assert!(header_string_end(&le(&[u32::MAX, 0]), 0, true).is_err());
        assert!(header_string_end(&[0, 0, 0], 0, true).is_err());
        // The same through open(): a file whose EVENT_DESC section claims 2^32 - 1 events.
        let mut file = b"PERFILE2".to_vec();
        file.extend(words(&[
            104,
            136,
            104,
            0,
            104,
            0,
            0,
            0,
            1 << 12,
            0,
            0,
            0,
            120,
            8,
        ]));
        file.extend(le(&[u32::MAX, 136]));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("perf.data");
        std::fs::write(&path, &file).unwrap();
        // The damaged section is skipped (never allocated); what stops this file is that it
        // has no attributes at all.
        let err = PerfDataReader::open(&path).err().expect("no attributes");
        assert!(
            err.to_string().contains("no perf event attributes"),
            "{err}"
        );
        let msg = feature_check_error(&path, file.len());
        assert!(
            msg.contains("feature #12 section: its 8 bytes end inside an event"),
            "{msg}"
        );
    }

    /// Found by the perfdata_import fuzz target: a feature section claiming 2^54 bytes made
    /// linux-perf-data allocate that much and abort the process. Now the feature sections
    /// are skipped with a warning that names the bad one, and the samples stay readable.
    #[test]
    fn feature_section_beyond_the_file_is_skipped_with_a_warning() {
        let mut file = b"PERFILE2".to_vec();
        file.extend(words(&[
            104, // header size
            136, // attr_size
            104,
            0, // attrs
            104,
            0, // data
            0,
            0,      // event_types
            1 << 2, // features: HEADER_BUILD_ID
            0,
            0,
            0,
            500,     // feature section offset
            1 << 54, // and size
        ]));
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("perf.data");
        std::fs::write(&path, &file).unwrap();
        let err = PerfDataReader::open(&path).err().expect("no attributes");
        assert!(
            err.to_string().contains("no perf event attributes"),
            "{err}"
        );
        let msg = feature_check_error(&path, file.len());
        assert!(msg.contains("feature #2 section"), "{msg}");
        assert!(
            msg.contains("beyond the end of the file (0x78 bytes)"),
            "{msg}"
        );
    }

    #[test]
    fn decodes_ip_tid_callchain_and_branches() {
        use abi::*;
        let layout = SampleLayout {
            sample_type: PERF_SAMPLE_IP
                | PERF_SAMPLE_TID
                | PERF_SAMPLE_TIME
                | PERF_SAMPLE_PERIOD
                | PERF_SAMPLE_CALLCHAIN
                | PERF_SAMPLE_BRANCH_STACK,
            read_format: 0,
            branch_sample_type: PERF_SAMPLE_BRANCH_HW_INDEX,
            regs_user: 0,
            fixed_period: 0,
        };
        let flags = PERF_BRANCH_MISPRED | (37 << PERF_BRANCH_CYCLES_SHIFT) | (PERF_BR_COND << 20);
        let body = words(&[
            0xffff_ffff_8100_0000,
            (7u64 << 32) | 5, // pid 5, tid 7 (little-endian u32 pair)
            1000,
            4000,
            4,
            PERF_CONTEXT_KERNEL,
            0xffff_ffff_8100_0000,
            PERF_CONTEXT_USER,
            0x401000,
            2,
            9,
            0x401000,
            0x401020,
            flags,
            0x401030,
            0x401040,
            0,
        ]);
        let s = decode_sample(&body, Endianness::LittleEndian, layout, CpuMode::Kernel).unwrap();
        assert_eq!((s.pid, s.tid, s.time_ns, s.period), (5, 7, 1000, 4000));
        assert_eq!(
            s.callchain,
            vec![
                Frame {
                    addr: 0xffff_ffff_8100_0000,
                    mode: CpuMode::Kernel
                },
                Frame {
                    addr: 0x401000,
                    mode: CpuMode::User
                }
            ]
        );
        assert_eq!(s.branch_hw_index, Some(9));
        assert_eq!(s.branches.len(), 2);
        assert!(s.branches[0].flags.mispred);
        assert_eq!(s.branches[0].flags.cycles, 37);
        assert_eq!(s.branches[0].flags.kind, BranchKind::Cond);
        assert!(!s.branches[1].flags.mispred);
    }

    #[test]
    fn guest_context_markers_give_guest_modes() {
        use abi::*;
        let frames = callchain_frames(
            [
                PERF_CONTEXT_GUEST,
                PERF_CONTEXT_GUEST_KERNEL,
                0xffff_8000,
                PERF_CONTEXT_GUEST_USER,
                0x1000,
            ],
            CpuMode::GuestKernel,
        );
        assert_eq!(frames[0].mode, CpuMode::GuestKernel);
        assert_eq!(frames[1].mode, CpuMode::GuestUser);
    }

    #[test]
    fn short_bodies_are_errors_not_panics() {
        let layout = SampleLayout {
            sample_type: abi::PERF_SAMPLE_IP
                | abi::PERF_SAMPLE_CALLCHAIN
                | abi::PERF_SAMPLE_BRANCH_STACK,
            ..SampleLayout::default()
        };
        let full = words(&[1, 1, 2, 1, 0x10, 0x20, 0]);
        for n in 0..full.len() {
            assert!(
                decode_sample(&full[..n], Endianness::LittleEndian, layout, CpuMode::User).is_err()
            );
        }
        assert!(decode_sample(&full, Endianness::LittleEndian, layout, CpuMode::User).is_ok());
        // A huge declared length does not allocate or panic.
        let huge = words(&[1, u64::MAX / 4]);
        assert!(decode_sample(&huge, Endianness::LittleEndian, layout, CpuMode::User).is_err());
    }

    /// A small in-process fuzz: bit flips and truncations of a real file are errors or
    /// warnings, never panics (the fuzz target does this at scale).
    #[test]
    fn corrupted_files_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/fixtures/perfdata/perf.data.branch-4.14");
        let Ok(orig) = std::fs::read(&dir) else {
            eprintln!("skipped: fixture {} is not there", dir.display());
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.data");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = orig.clone();
            if round % 3 == 0 {
                bytes.truncate((state as usize) % orig.len());
            } else {
                for k in 0..4 {
                    let at = ((state >> (k * 16)) as usize) % bytes.len();
                    bytes[at] ^= 1 << (k + round % 5);
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(r) = PerfDataReader::open(&path) {
                for ev in r.take(100_000) {
                    if ev.is_err() {
                        break;
                    }
                }
            }
            // The mapped fast path walks the same bytes.
            if let Ok(mut r) = PerfDataReader::open(&path)
                && let Some(scan) = r.mapped_scan()
            {
                for c in 0..scan.chunks() {
                    let _ = scan.for_each_sample(c, |s| {
                        let _ = s.callchain.perf_words().count();
                        let _ = s.branches.iter().count();
                    });
                }
            }
        }
    }

    #[test]
    fn user_regs_and_stack_follow_the_branch_stack() {
        // perf's --call-graph dwarf mask: AX..R15 without segments (BP, SP, IP are the
        // 7th, 8th and 9th values), then a 16-byte stack copy of which 12 bytes are used.
        let mask = 0xff_0fffu64;
        let layout = SampleLayout {
            sample_type: abi::PERF_SAMPLE_IP
                | abi::PERF_SAMPLE_BRANCH_STACK
                | abi::PERF_SAMPLE_REGS_USER
                | abi::PERF_SAMPLE_STACK_USER,
            regs_user: mask,
            ..SampleLayout::default()
        };
        let mut w = vec![0x401000, 1, 0xa, 0xb, 0x1, 2]; // ip, one branch, abi 64
        w.extend((0..mask.count_ones() as u64).map(|i| 100 + i));
        w.extend([16, 0x1111, 0x2222, 12]); // size, data (2 words), dyn_size
        let body = words(&w);
        let r = decode_sample_raw(&body, true, layout).unwrap();
        assert_eq!(r.branches.len(), BRANCH_ENTRY_LEN);
        assert_eq!(
            r.user_regs(true, mask),
            Some(Regs {
                bp: 106,
                sp: 107,
                ip: 108
            })
        );
        assert_eq!(r.user_stack.len(), 12);
        assert_eq!(&r.user_stack[..8], &0x1111u64.to_le_bytes());
        // ABI none (a kernel thread): no register words follow, no registers.
        let body = words(&[0x401000, 0, 0, 0]);
        let r = decode_sample_raw(&body, true, layout).unwrap();
        assert_eq!(r.user_regs(true, mask), None);
        assert!(r.user_stack.is_empty());
        // Every truncation is an error, never a panic.
        let full = words(&w);
        for n in (0..full.len()).step_by(8) {
            assert!(decode_sample_raw(&full[..n], true, layout).is_err(), "{n}");
        }
    }

    #[test]
    fn read_group_is_skipped_correctly() {
        let layout = SampleLayout {
            sample_type: abi::PERF_SAMPLE_READ | abi::PERF_SAMPLE_CALLCHAIN,
            read_format: abi::PERF_FORMAT_GROUP | abi::PERF_FORMAT_ID,
            branch_sample_type: 0,
            regs_user: 0,
            fixed_period: 0,
        };
        // nr=2, {value,id} x2, then callchain of one frame.
        let body = words(&[2, 10, 1, 20, 2, 1, 0x1234]);
        let s = decode_sample(&body, Endianness::LittleEndian, layout, CpuMode::User).unwrap();
        assert_eq!(s.callchain.len(), 1);
        assert_eq!(s.callchain[0].addr, 0x1234);
    }
}
