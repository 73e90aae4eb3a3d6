//! Opening any recording lbrprof understands, detected by its magic bytes:
//! `lbrprof.data` (magic `LBRPROF\0`, read by [`crate::recording::RecordingReader`]) or
//! `perf.data` (magic `PERFILE2`, imported by [`crate::perfdata::PerfDataReader`]).
//!
//! Either way the caller gets a [`Header`] and a stream of `Result<Event, InputError>`,
//! plus the warnings of the reader (damage at the end of the file, unreadable sections).

use std::io::Read;
use std::path::Path;

use crate::model::{Event, Header};
use crate::perfdata::{PerfDataError, PerfDataReader, abi::PERF_MAGIC, abi::PERF_MAGIC_SWAPPED};
use crate::recording::{self, FormatError, RecordingReader};

/// Which kind of file was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    Lbrprof,
    PerfData,
}

impl InputFormat {
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Lbrprof => "lbrprof.data",
            InputFormat::PerfData => "perf.data",
        }
    }
}

/// Why a recording could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("cannot open the file")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("neither an lbrprof.data nor a perf.data file (it starts with {magic:02x?})")]
    UnknownFormat { path: String, magic: Vec<u8> },
    #[error("the recording has no event named {name:?} (it holds: {choices})")]
    NoSuchEvent { name: String, choices: String },
    #[error(transparent)]
    PerfData(#[from] PerfDataError),
    #[error(transparent)]
    Recording(#[from] FormatError),
}

enum Source {
    Perf(Box<PerfDataReader>),
    Lbrprof(Box<RecordingReader>),
}

/// The reader of an [`Input`].
pub(crate) enum ReaderMut<'i> {
    Perf(&'i mut PerfDataReader),
    Lbrprof(&'i mut RecordingReader),
}

/// An open recording of either format.
pub struct Input {
    format: InputFormat,
    source: Source,
}

/// Detects the format of `path` by its first 8 bytes and opens it.
pub fn open_any(path: &Path) -> Result<Input, InputError> {
    let open_err = |source| InputError::Open {
        path: path.display().to_string(),
        source,
    };
    let mut magic = Vec::with_capacity(8);
    std::fs::File::open(path)
        .map_err(open_err)?
        .take(8)
        .read_to_end(&mut magic)
        .map_err(open_err)?;
    if magic[..] == recording::MAGIC {
        let reader = RecordingReader::open(path)?;
        return Ok(Input {
            format: InputFormat::Lbrprof,
            source: Source::Lbrprof(Box::new(reader)),
        });
    }
    if magic[..] == PERF_MAGIC || magic[..] == PERF_MAGIC_SWAPPED {
        let reader = PerfDataReader::open(path)?;
        return Ok(Input {
            format: InputFormat::PerfData,
            source: Source::Perf(Box::new(reader)),
        });
    }
    Err(InputError::UnknownFormat {
        path: path.display().to_string(),
        magic,
    })
}

impl Input {
    pub fn format(&self) -> InputFormat {
        self.format
    }

    pub fn header(&self) -> &Header {
        match &self.source {
            Source::Perf(r) => r.header(),
            Source::Lbrprof(r) => r.header(),
        }
    }

    /// The reader, for the mapped sources ([`crate::source::mapped_source`]).
    pub(crate) fn reader_mut(&mut self) -> ReaderMut<'_> {
        match &mut self.source {
            Source::Perf(r) => ReaderMut::Perf(r),
            Source::Lbrprof(r) => ReaderMut::Lbrprof(r),
        }
    }

    /// Whether samples may carry branch stacks (false for perf.data files none of whose
    /// events samples them).
    pub fn may_have_branch_stacks(&self) -> bool {
        match &self.source {
            Source::Perf(r) => r.has_branch_stacks(),
            Source::Lbrprof(_) => true,
        }
    }

    /// Whether samples may hold host kernel addresses (false for perf.data files whose
    /// events all exclude the kernel).
    pub fn may_sample_kernel(&self) -> bool {
        match &self.source {
            Source::Perf(r) => r.may_sample_kernel(),
            Source::Lbrprof(_) => true,
        }
    }

    /// The (path, build-id) table of a perf.data file (its `HEADER_BUILD_ID` section);
    /// empty for lbrprof.data, whose mappings carry their build-ids.
    pub fn build_ids(&self) -> Vec<(String, Vec<u8>)> {
        match &self.source {
            Source::Perf(r) => r
                .build_ids()
                .into_iter()
                .map(|(p, b)| (String::from_utf8_lossy(p).into_owned(), b.to_vec()))
                .collect(),
            Source::Lbrprof(_) => Vec::new(),
        }
    }

    /// The build-id of the kernel the recording was made on, when the file names it
    /// (perf.data's build-id section).
    pub fn kernel_build_id(&self) -> Option<Vec<u8>> {
        match &self.source {
            Source::Perf(r) => r.kernel_build_id().map(<[u8]>::to_vec),
            Source::Lbrprof(_) => None,
        }
    }

    /// Problems that did not stop reading; complete only once the stream has ended.
    pub fn warnings(&self) -> Vec<String> {
        match &self.source {
            Source::Perf(r) => r.warnings().to_vec(),
            Source::Lbrprof(r) => r.warnings().to_vec(),
        }
    }

    /// The end-of-recording summary of an lbrprof.data file (once the stream has ended).
    pub fn summary(&self) -> Option<&recording::Summary> {
        match &self.source {
            Source::Perf(_) => None,
            Source::Lbrprof(r) => r.summary(),
        }
    }

    /// Chooses the event whose samples are read, before anything is read (`--event`):
    /// `Some(NAME)` only those of event NAME; `Some("all")` and `None` read every
    /// event's samples (see [`Input::several_events`] for what `None` should
    /// become).
    pub fn select_event(&mut self, choice: Option<&str>) -> Result<(), InputError> {
        let Some(name) = choice.filter(|c| *c != "all") else {
            return Ok(());
        };
        let choices: Vec<String> = match &self.source {
            Source::Perf(r) => r.event_choices().into_iter().map(str::to_owned).collect(),
            Source::Lbrprof(r) => r.event_names(),
        };
        let found = match &mut self.source {
            Source::Perf(r) => r.select_event(name),
            Source::Lbrprof(r) => r.select_event(name),
        };
        if found {
            return Ok(());
        }
        Err(InputError::NoSuchEvent {
            name: name.to_owned(),
            choices: choices.join(", "),
        })
    }

    /// Once the stream has ended, without an event selected: the events that have
    /// samples, in file order, when more than one has. Their samples do not add up (a
    /// cpu-clock sample and a page fault are different things), so a report of such a
    /// file shows one event at a time, as perf report's sections do, reading the file
    /// again for each.
    pub fn several_events(&self) -> Option<Vec<String>> {
        let sampled = match &self.source {
            Source::Perf(r) if r.selected_event().is_none() => {
                r.sampled_events().into_iter().map(str::to_owned).collect()
            }
            Source::Lbrprof(r) if r.selected_event().is_none() => lbrprof_sampled(r),
            _ => return None,
        };
        (sampled.len() > 1).then_some(sampled)
    }

    /// The name of the sampled event(s), known once the stream has ended: for perf.data
    /// the events that really have samples (the header names the first one in the file).
    pub fn sampled_event(&self) -> Option<String> {
        match &self.source {
            Source::Lbrprof(r) => {
                if let Some(name) = r.selected_event() {
                    return Some(name);
                }
                let names = r.event_names();
                (names.len() > 1).then(|| lbrprof_sampled(r).join(", "))
            }
            Source::Perf(r) => {
                if let Some(name) = r.selected_event() {
                    return Some(name.to_owned());
                }
                let names = r.sampled_events();
                (!names.is_empty()).then(|| names.join(", "))
            }
        }
    }

    /// Notes about the recording for the report header: the recorder's own notes, or
    /// what the import skipped. Complete only once the stream has ended.
    pub fn recorded_notes(&self) -> Vec<String> {
        match &self.source {
            Source::Lbrprof(r) => {
                let mut notes = r.summary().map(|s| s.notes.clone()).unwrap_or_default();
                if r.summary().is_none() {
                    notes.push(
                        "the recording has no end-of-recording summary (the recorder did not finish)"
                            .to_owned(),
                    );
                }
                let sampled = lbrprof_sampled(r);
                if sampled.len() > 1 {
                    notes.push(match r.selected_event() {
                        Some(name) => format!(
                            "the recording holds samples of {} events ({}); this shows {name} \
                             (choose with --event NAME, or --event all)",
                            sampled.len(),
                            sampled.join(", ")
                        ),
                        None => format!(
                            "samples of {} events ({}) are counted together",
                            sampled.len(),
                            sampled.join(", ")
                        ),
                    });
                }
                notes
            }
            Source::Perf(r) => {
                let s = r.stats();
                let mut notes = Vec::new();
                let sampled = r.sampled_events();
                if let Some(name) = r.selected_event() {
                    if sampled.len() > 1 {
                        notes.push(format!(
                            "the file holds samples of {} events ({}); this shows {name} \
                             (choose with --event NAME, or --event all)",
                            sampled.len(),
                            sampled.join(", ")
                        ));
                    }
                } else if sampled.len() > 1 {
                    notes.push(format!(
                        "samples of {} events ({}) are counted together",
                        sampled.len(),
                        sampled.join(", ")
                    ));
                }
                if s.skipped_records > 0 {
                    notes.push(format!(
                        "{} perf records of types lbrprof does not use were skipped",
                        s.skipped_records
                    ));
                }
                if let Some(u) = r.unwind_stats() {
                    notes.push(crate::dwarf::summary(&u));
                }
                notes
            }
        }
    }
}

/// The events of an lbrprof.data recording that have samples, in index order: by the
/// summary's counts or what the stream counted; every event of the header when neither
/// knows (a recording without its summary, read the fast way).
fn lbrprof_sampled(r: &RecordingReader) -> Vec<String> {
    let counts = r.samples_per_event();
    if counts.len() < 2 {
        return Vec::new();
    }
    if counts.iter().all(|(_, n)| *n == 0) {
        return counts.into_iter().map(|(name, _)| name).collect();
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, _)| name)
        .collect()
}

impl Iterator for Input {
    type Item = Result<Event, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Perf(r) => r.next().map(|r| r.map_err(InputError::from)),
            Source::Lbrprof(r) => r.next().map(|r| r.map_err(InputError::from)),
        }
    }
}
