//! The one read pipeline: open a recording by content (lbrprof.data or perf.data), select
//! its event, aggregate it (the mapped fast paths where the options allow, else the event
//! stream), and symbolize every unique location once. Every reading subcommand (`report`,
//! `flamegraph`, `diff`, `annotate`, `export`) goes through [`load`]; the binary only
//! turns its flags into [`LoadOptions`] and prints what comes back.

use std::path::{Path, PathBuf};

use lbrprof_data::input::{Input, InputError, InputFormat, open_any};
use lbrprof_data::model::{Header, Target};
use lbrprof_data::source::{EventSource, MappedSource, SourceError, mapped_source};
use lbrprof_symbolizer::SymbolizerOptions;

use crate::aggregate::{AggregateOptions, Filter, Profile, aggregate_in_order};
use crate::symbols::{NoSymbols, SymbolSource, SymbolTable, SymbolizerSource};
use crate::time::TimeSpec;
use crate::{fold, report, vm};

/// Whether locations should be named, and with which names (BOLT wants mangled ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Naming {
    None,
    #[default]
    Demangled,
    Mangled,
}

/// Which samples to keep: the reading commands' filter flags.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only samples of this event (`all`: every event together); `None` with several
    /// events is [`LoadError::SeveralEvents`].
    pub event: Option<String>,
    pub pids: Vec<u32>,
    pub tids: Vec<u32>,
    pub comms: Vec<String>,
    pub dsos: Vec<String>,
    pub time: Option<TimeSpec>,
}

/// Where symbols and debug info are looked for.
#[derive(Clone, Debug, Default)]
pub struct SymbolPlaces {
    /// Extra directories for separate debug info, searched first.
    pub debug_dirs: Vec<PathBuf>,
    /// The debuginfod client cache, if the caller knows one.
    pub debuginfod_cache: Option<PathBuf>,
    /// perf's build-id cache (`~/.debug`), if the caller knows one.
    pub build_id_cache: Option<PathBuf>,
    /// Kernel symbols from this file instead of /proc/kallsyms.
    pub kallsyms: Option<PathBuf>,
    /// The recorded module files are looked for under this directory (perf's --symfs).
    pub symfs: Option<PathBuf>,
}

/// What to build besides the per-function tables.
#[derive(Clone, Debug, Default)]
pub struct Keep {
    /// Name functions only (symbol tables, no DWARF); lines can be added afterwards for
    /// the places shown ([`Loaded::add_lines`]).
    pub functions_only: bool,
    /// End every sampled stack in a root frame naming the thread's command.
    pub comm_root: bool,
    /// Keep the stack table per run of a `record --repeat` recording (the runs' start
    /// times).
    pub run_starts: Vec<u64>,
    /// Keep every sample's time, thread and stack.
    pub timeline: bool,
    /// Keep the stack table per thread and command (perf's sort keys).
    pub tasks: bool,
}

/// How [`load`] reads a recording.
#[derive(Default)]
pub struct LoadOptions<'a> {
    pub select: Selection,
    pub naming: Naming,
    pub symbols: SymbolPlaces,
    pub keep: Keep,
    /// Always read the event stream, never a mapped fast path (to compare them).
    pub event_stream_only: bool,
    /// Called now and then with the number of events read, on the event-stream path.
    pub progress: Option<&'a mut (dyn FnMut(u64) + Send)>,
}

/// Why a recording could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: InputError,
    },
    /// A source gave up in a way its reader does not expect.
    #[error("cannot read {}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: SourceError,
    },
    #[error(transparent)]
    SeveralEvents(#[from] SeveralEvents),
    /// Every sample was filtered out; the message names the filters given.
    #[error(
        "no sample of {} matches {filters}: all {filtered_out} were filtered out \
         (`lbrprof info {}` lists the processes and threads)",
        path.display(),
        path.display()
    )]
    NothingMatches {
        path: PathBuf,
        filters: String,
        filtered_out: u64,
    },
    #[error("{} has no samples: --time cannot be relative to them", path.display())]
    NoSpan { path: PathBuf },
}

/// A recording with samples of several events was loaded without choosing one: one
/// profile would add up samples of different events.
#[derive(Debug)]
pub struct SeveralEvents {
    pub path: PathBuf,
    /// The events that have samples, in file order.
    pub events: Vec<String>,
}

impl std::fmt::Display for SeveralEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} holds samples of {} events ({}): choose one with --event NAME (or --event \
             all to count them together)",
            self.path.display(),
            self.events.len(),
            self.events.join(", ")
        )
    }
}

impl std::error::Error for SeveralEvents {}

/// A recording, aggregated and symbolized.
pub struct Loaded {
    pub profile: Profile,
    pub syms: SymbolTable,
    pub header: Header,
    pub format: InputFormat,
    /// What the recorder noted (shown in reports, not printed as warnings).
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
    /// Where `syms` came from, to add lines later ([`Loaded::add_lines`]).
    pub source: Box<dyn SymbolSource>,
}

impl Loaded {
    /// Adds file and line to the places `rep` shows (for a functions-only load), and the
    /// warnings that brings (e.g. unreadable DWARF) to its header.
    pub fn add_lines(&mut self, rep: &mut report::Report) {
        let locs = rep.shown_locs();
        self.syms
            .add_lines(&self.profile.spaces.modules, locs, self.source.as_ref());
        rep.refresh_places(&self.profile, &self.syms);
        let mut new = self.source.take_warnings();
        new.sort();
        for w in new {
            if !rep.meta.warnings.contains(&w) {
                rep.meta.warnings.push(w.clone());
                self.warnings.push(w);
            }
        }
    }

    /// The host+guest analysis of a `record --vm` recording (`None` for other
    /// recordings). `pair_window`: the largest sample-to-snapshot distance in ns; by
    /// default twice the mean snapshot interval ([`vm::default_window`]).
    pub fn vm_analysis(&self, pair_window: Option<u64>) -> Option<vm::VmAnalysis> {
        let Target::Vm {
            image,
            vcpus,
            backend,
            mode,
        } = &self.header.target
        else {
            return None;
        };
        let trace = self.profile.vm.as_ref()?;
        let freq = self.header.sampling.frequency;
        let host_period = 1_000_000_000u64.checked_div(freq).unwrap_or(1_000_000);
        let window = pair_window.unwrap_or_else(|| vm::default_window(trace, host_period));
        let target = vm::VmTarget {
            image: image.clone(),
            vcpus: *vcpus,
            backend: format!("{backend:?}").to_lowercase(),
            mode: mode.clone(),
        };
        Some(vm::analyze(
            trace,
            &self.profile.spaces.modules,
            &self.syms,
            &target,
            window,
        ))
    }
}

/// Whether /proc/kallsyms shows real addresses to us (`kernel.kptr_restrict` 0, or 1 as
/// root).
fn kallsyms_readable() -> bool {
    let restrict = std::fs::read_to_string("/proc/sys/kernel/kptr_restrict")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    });
    matches!(restrict, Some(0)) || (restrict == Some(1) && root)
}

/// Whether this machine's /proc/kallsyms describes the kernel `header` was recorded on.
fn same_kernel(header: &Header) -> bool {
    let here = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    header.host.kernel.is_empty() || header.host.kernel.trim() == here.trim()
}

fn symbol_source(
    path: &Path,
    places: &SymbolPlaces,
    naming: Naming,
    header: &Header,
    kernel_build_id: Option<&[u8]>,
    may_sample_kernel: bool,
    warnings: &mut Vec<String>,
) -> Box<dyn SymbolSource> {
    let demangle = match naming {
        Naming::None => return Box::new(NoSymbols),
        Naming::Demangled => true,
        Naming::Mangled => false,
    };
    // perf's saved copy of the recorded kernel's symbols (found by build-id) describes
    // that kernel whatever runs now, and is a plain file: reading it costs a fraction of
    // having the kernel generate /proc/kallsyms.
    let saved = match (&places.kallsyms, kernel_build_id) {
        (None, Some(id)) => lbrprof_symbolizer::saved_kallsyms(
            id,
            &places.debug_dirs,
            places.build_id_cache.as_deref(),
        ),
        _ => None,
    };
    let mut source = SymbolizerSource::new(SymbolizerOptions {
        // After the debug dirs: the input's own directory, where `perf archive` output
        // (`.build-id/xx/rest[/elf]`) or debug files named by a debuglink may be unpacked.
        debug_dirs: places
            .debug_dirs
            .iter()
            .cloned()
            .chain(
                path.canonicalize()
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf)),
            )
            .collect(),
        debuginfod_cache: places.debuginfod_cache.clone(),
        build_id_cache: places.build_id_cache.clone(),
        kallsyms: places.kallsyms.clone().or_else(|| saved.clone()),
        demangle,
        inlines: true,
        ..SymbolizerOptions::default()
    });
    if places.kallsyms.is_none() && saved.is_none() && !same_kernel(header) {
        source.kernel = false;
        warnings.push(format!(
            "recorded on kernel {}, not this one: kernel addresses are not symbolized (pass --kallsyms)",
            header.host.kernel
        ));
    }
    // Loading /proc/kallsyms ahead of time is only worth it where it is readable, and
    // for recordings that may have kernel samples: elsewhere it would cost ~45 ms (or
    // warn) for a table that user-space-only recordings never need. (Kernel addresses
    // that show up anyway are still symbolized, the table is then loaded on demand.)
    // A kallsyms file given is always read (and a bad one reported), as asked.
    source.prewarm_kernel = places.kallsyms.is_some()
        || (may_sample_kernel && (saved.is_some() || kallsyms_readable()));
    Box::new(source)
}

/// Opens `path` by content and selects the event asked for.
fn open(path: &Path, event: Option<&str>) -> Result<Input, LoadError> {
    let read = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut input = open_any(path).map_err(read)?;
    input.select_event(event).map_err(read)?;
    Ok(input)
}

/// The times of the first and last sample (or snapshot) of the selected event, for
/// `--time` windows relative to the recording: one pass over the samples, unfiltered.
fn sample_span(path: &Path, event: Option<&str>) -> Result<(u64, u64), LoadError> {
    let mut input = open(path, event)?;
    // (A `record --vm` recording's host samples are not resolved in the VM here: their
    // times are the same.)
    let profile = aggregate(
        path,
        event,
        &mut input,
        AggregateOptions::default(),
        false,
        None,
    )?;
    let t = &profile.totals;
    match t.first_time_ns {
        Some(first) => Ok((first, t.last_time_ns)),
        None => Err(LoadError::NoSpan {
            path: path.to_path_buf(),
        }),
    }
}

/// Time windows in seconds, for messages.
fn describe_windows(windows: &[(u64, u64)]) -> String {
    let secs = |t: u64| format!("{}.{:09}", t / 1_000_000_000, t % 1_000_000_000);
    windows
        .iter()
        .map(|&(a, b)| match b {
            u64::MAX => format!("{}-", secs(a)),
            _ => format!("{}-{}", secs(a), secs(b)),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The filter flags given, as the user wrote them (`--pid 1,2 --comm sh`).
fn describe_filters(select: &Selection, times: &[(u64, u64)]) -> String {
    let mut given = Vec::new();
    for (flag, values) in [
        (
            "--pid",
            select.pids.iter().map(u32::to_string).collect::<Vec<_>>(),
        ),
        ("--tid", select.tids.iter().map(u32::to_string).collect()),
        ("--comm", select.comms.clone()),
        ("--dso", select.dsos.clone()),
        (
            "--time",
            if times.is_empty() {
                Vec::new()
            } else {
                vec![describe_windows(times)]
            },
        ),
    ] {
        if !values.is_empty() {
            given.push(format!("{flag} {}", values.join(",")));
        }
    }
    given.join(" ")
}

/// Runs `work` while the kernel's symbols load on another thread (folding samples does
/// not depend on them).
fn prewarm_while<T>(source: &dyn SymbolSource, work: impl FnOnce() -> T) -> T {
    std::thread::scope(|scope| {
        scope.spawn(|| source.prewarm());
        work()
    })
}

/// The profile of `input` (opened from `path` with `event` selected, reopened when a
/// mapped read must give way to the event stream): the one folder when the options allow
/// it, the input read in place on every core (perf.data or lbrprof.data mapped); else
/// every sample through the aggregator in stream order, still read in place (a
/// recording's chunks in file order, a perf.data file's records in perf's order). The
/// event stream is read instead, by the same folder or aggregator, with
/// `event_stream_only` and for files the mapped walks decline (big-endian, compressed
/// or simpleperf perf.data, recordings that cannot be mapped), or to name a perf.data
/// sample that cannot be decoded. `progress` is called now and then with the number of
/// events read from the stream.
fn aggregate(
    path: &Path,
    event: Option<&str>,
    input: &mut Input,
    agg: AggregateOptions,
    event_stream_only: bool,
    mut progress: Option<&mut (dyn FnMut(u64) + Send + '_)>,
) -> Result<Profile, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let foldable = fold::supports(&agg, input.may_have_branch_stacks());
    if !event_stream_only && let Some(mapped) = mapped_source(input) {
        let read = match (mapped, foldable) {
            (MappedSource::Perf(mut s), true) => fold::fold_source(&mut s, &agg),
            (MappedSource::Recording(mut s), true) => fold::fold_source(&mut s, &agg),
            (MappedSource::Perf(mut s), false) => aggregate_in_order(&mut s, agg.clone()),
            (MappedSource::Recording(mut s), false) => aggregate_in_order(&mut s, agg.clone()),
        };
        match read {
            Ok(p) => return Ok(p),
            // The stream is untouched: read it.
            Err(SourceError::Declined) => {}
            // The event stream reports what could not be decoded in place.
            Err(SourceError::Undecodable(_)) => *input = open(path, event)?,
            Err(SourceError::Input(e)) => return Err(read_error(e)),
        }
    }
    let mut n = 0u64;
    let events = input.by_ref().inspect(|_| {
        n += 1;
        if n.is_multiple_of(1 << 14)
            && let Some(progress) = progress.as_mut()
        {
            progress(n);
        }
    });
    let mut source = EventSource::new(events);
    let read = if foldable {
        fold::fold_source(&mut source, &agg)
    } else {
        aggregate_in_order(&mut source, agg)
    };
    match read {
        Ok(p) => Ok(p),
        Err(SourceError::Input(e)) => Err(read_error(e)),
        // (Only mapped sources decline or meet undecodable samples.)
        Err(source) => Err(LoadError::Source {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Opens, aggregates and symbolizes the recording at `path`.
pub fn load(path: &Path, opts: LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let LoadOptions {
        select,
        naming,
        symbols,
        keep,
        event_stream_only,
        progress,
    } = opts;
    let event = select.event.as_deref();
    let times = match &select.time {
        None => Vec::new(),
        Some(spec) if spec.needs_span() => {
            let (first, last) = sample_span(path, event)?;
            spec.windows(first, last)
        }
        Some(spec) => spec.windows(0, 0),
    };
    let mut input = open(path, event)?;
    let header = input.header().clone();
    let format = input.format();
    let agg = AggregateOptions {
        filter: Filter {
            pids: select.pids.clone(),
            tids: select.tids.clone(),
            comms: select.comms.clone(),
            dsos: select.dsos.clone(),
            times: times.clone(),
        },
        lbr_call_stack: header.sampling.call_graph == "lbr",
        snapshot_weight: header.sampling.period.max(1),
        vm: matches!(header.target, Target::Vm { .. }),
        comm_root: keep.comm_root,
        run_starts: keep.run_starts.clone(),
        timeline: keep.timeline,
        tasks: keep.tasks,
    };
    let mut source_notes = Vec::new();
    let kernel_build_id = input.kernel_build_id();
    let source = symbol_source(
        path,
        &symbols,
        naming,
        &header,
        kernel_build_id.as_deref(),
        input.may_sample_kernel(),
        &mut source_notes,
    );
    let profile = prewarm_while(source.as_ref(), || {
        aggregate(path, event, &mut input, agg, event_stream_only, progress)
    })?;
    let mut profile = profile;
    if select.event.is_none()
        && let Some(events) = input.several_events()
    {
        // Several events have samples: the caller reads the file again per event
        // (`report`'s sections) or says which events there are.
        return Err(LoadError::SeveralEvents(SeveralEvents {
            path: path.to_path_buf(),
            events,
        }));
    }
    let t = &profile.totals;
    if t.samples == 0 && t.snapshots == 0 && t.filtered_out > 0 {
        return Err(LoadError::NothingMatches {
            path: path.to_path_buf(),
            filters: describe_filters(&select, &times),
            filtered_out: t.filtered_out,
        });
    }
    if let Some(summary) = input.summary() {
        // The recorder's own totals cover losses it never turned into events.
        let t = &mut profile.totals;
        t.lost = t.lost.max(summary.lost);
        t.throttled = t.throttled.max(summary.throttled);
    }
    if let Some(dir) = &symbols.symfs {
        profile.spaces.modules.relocate(dir);
    }
    let mut header = header;
    if let Some(event) = input.sampled_event() {
        header.sampling.event = event;
    }
    let mut warnings = input.warnings();
    let notes = input.recorded_notes();
    warnings.extend(source_notes);
    let syms = if keep.functions_only {
        SymbolTable::build_functions(&profile, source.as_ref())
    } else {
        SymbolTable::build(&profile, source.as_ref())
    };
    // Modules are symbolized in parallel: sort their warnings for a stable order.
    let mut symbol_warnings = source.take_warnings();
    symbol_warnings.sort();
    warnings.extend(symbol_warnings);
    Ok(Loaded {
        profile,
        syms,
        header,
        format,
        notes,
        warnings,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_named_as_given() {
        let select = Selection {
            pids: vec![1, 2],
            comms: vec!["sh".into()],
            ..Selection::default()
        };
        assert_eq!(describe_filters(&select, &[]), "--pid 1,2 --comm sh");
        assert_eq!(
            describe_filters(&Selection::default(), &[(1_500_000_000, u64::MAX)]),
            "--time 1.500000000-"
        );
    }

    #[test]
    fn a_missing_file_is_a_read_error_naming_it() {
        let err = load(Path::new("/nonexistent/x.data"), LoadOptions::default())
            .err()
            .expect("no file, no load");
        assert!(matches!(err, LoadError::Read { .. }), "{err:?}");
        assert_eq!(err.to_string(), "cannot read /nonexistent/x.data");
    }
}
