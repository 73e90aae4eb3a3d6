//! `lbrprof report`: hot functions, hot branches and hot fall-through ranges of a
//! recording (lbrprof.data or perf.data), as text, JSON, folded stacks or Markdown.
//!
//! Also home of the input flags every reading command shares, turned into the read
//! pipeline's options ([`lbrprof_reports::load()`]).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::decode::CodeReader;
use lbrprof_reports::hist::{self, HistKey};
use lbrprof_reports::load::{Keep, LoadError, LoadOptions, Selection, SymbolPlaces};
pub use lbrprof_reports::load::{Loaded, Naming, SeveralEvents};
use lbrprof_reports::render::{self, StackSource};
use lbrprof_reports::report::{self, SortKey, Source};
use lbrprof_reports::time::{self, TimeSpec};
use lbrprof_reports::{tree, vm};

/// Options shared by every command that reads a recording.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// The recording to read: lbrprof.data or perf.data (detected by content).
    #[arg(short, long, value_name = "FILE", default_value = "lbrprof.data")]
    pub input: PathBuf,
    /// Only samples of these process ids (comma-separated). For `record --vm`
    /// recordings also the guest snapshots of these guest processes.
    #[arg(long, value_delimiter = ',', value_name = "PID")]
    pub pid: Vec<u32>,
    /// Only samples of these thread ids (comma-separated; keeps no guest snapshot).
    #[arg(long, value_delimiter = ',', value_name = "TID")]
    pub tid: Vec<u32>,
    /// Only samples of threads with these command names (comma-separated). For `record
    /// --vm` recordings also the guest snapshots of guest processes with these names.
    #[arg(long, value_delimiter = ',', value_name = "COMM")]
    pub comm: Vec<String>,
    /// Only samples whose instruction pointer is in these modules (file name or path);
    /// guest snapshots by their guest IP.
    #[arg(long, value_delimiter = ',', value_name = "DSO")]
    pub dso: Vec<String>,
    /// Do not symbolize; show every location as module+offset.
    #[arg(long)]
    pub no_symbols: bool,
    /// Also look for separate debug info in DIR (repeatable).
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Vec<PathBuf>,
    /// Look for the recorded module files under DIR (as DIR/PATH, then DIR/FILE-NAME),
    /// like perf's --symfs.
    #[arg(long, value_name = "DIR")]
    pub symfs: Option<PathBuf>,
    /// Kernel symbols from this kallsyms file instead of /proc/kallsyms.
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,
    /// Only samples of this event, for a recording that holds several (perf.data, or
    /// `lbrprof record -e A,B`); `all` counts every event's samples together. Default:
    /// `report` prints one section per event (as perf report does); other commands need
    /// one chosen.
    #[arg(long, value_name = "NAME|all")]
    pub event: Option<String>,
    /// Only samples in these time windows: `START,END` in perf's sample time (seconds,
    /// as `perf script` prints them; either end may be left empty), `+START,+END` in
    /// seconds after the first sample, or percent slices of the recording as perf's
    /// `10%/2` (the second tenth), `0%-10%,30%-40%` or `25%` (the first quarter).
    #[arg(long, value_name = "WINDOW", value_parser = time::parse)]
    pub time: Option<TimeSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Folded,
    Markdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Functions by self share; branches and ranges by count.
    #[value(name = "self")]
    SelfShare,
    /// Functions by total (children) share.
    Total,
    /// By name / location.
    Name,
    /// Branches by mispredictions.
    Mispred,
    /// Branches by average cycles.
    Cycles,
}

/// `--sort`: an order of the default tables, or perf's sort keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortSpec {
    Order(Sort),
    /// perf's grouped table by these keys (`comm,dso`).
    Keys(Vec<HistKey>),
}

/// Parses `--sort`: one order (`self`, `total`, `name`, `mispred`, `cycles`) or a
/// comma-separated list of perf keys (`comm`, `pid`/`tid`, `dso`, `sym`/`symbol`).
fn parse_sort(s: &str) -> Result<SortSpec, String> {
    use clap::ValueEnum;
    if let Ok(order) = Sort::from_str(s, false) {
        return Ok(SortSpec::Order(order));
    }
    let mut keys = Vec::new();
    for k in s.split(',') {
        let key = HistKey::parse(k.trim()).ok_or_else(|| {
            format!(
                "unknown sort key '{k}': use one of self, total, name, mispred, cycles, or a \
                 list of comm, pid, dso, sym"
            )
        })?;
        if keys.contains(&key) {
            return Err(format!("sort key '{k}' given twice"));
        }
        keys.push(key);
    }
    Ok(SortSpec::Keys(keys))
}

/// `-g`: which way the call tree grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TreeOrder {
    /// Top-down: from the outermost callers to the sampled functions.
    Caller,
    /// Bottom-up: from the sampled functions out to their callers.
    Callee,
}

impl From<TreeOrder> for tree::Order {
    fn from(o: TreeOrder) -> Self {
        match o {
            TreeOrder::Caller => tree::Order::Caller,
            TreeOrder::Callee => tree::Order::Callee,
        }
    }
}

impl From<Sort> for SortKey {
    fn from(s: Sort) -> Self {
        match s {
            Sort::SelfShare => SortKey::SelfShare,
            Sort::Total => SortKey::Total,
            Sort::Name => SortKey::Name,
            Sort::Mispred => SortKey::Mispred,
            Sort::Cycles => SortKey::Cycles,
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = PAIRING_HELP)]
pub struct Args {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub pairing: PairArgs,
    /// Output format (json: schema "lbrprof-report" version 1; folded: inferno/FlameGraph
    /// input, the unified host+guest stacks for record --vm recordings).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Row order of the default tables: `self` (functions by self share, branches and
    /// ranges by count), `total` (functions by total share), `name`, `mispred` (branches
    /// by mispredictions), `cycles` (branches by average cycles). Or perf's sort keys,
    /// one or several comma-separated: `comm` (the sampled thread's command), `pid` (the
    /// thread, TID:COMM, as perf), `dso` (module), `sym` (function); these print perf's
    /// grouped table instead, one row per distinct key tuple with its share.
    #[arg(long, default_value = "self", value_name = "ORDER|KEY[,KEY...]",
          value_parser = parse_sort)]
    pub sort: SortSpec,
    /// perf's Children column: with sort keys, also count each sample for every key
    /// tuple on its call chain (once), and order rows by that share; on the default
    /// tables, order functions by total share. Default with sort keys: on when the
    /// recording has call chains, as perf.
    #[arg(long, overrides_with = "no_children")]
    pub children: bool,
    /// Only the Self share (perf's --no-children).
    #[arg(long, overrides_with = "children")]
    pub no_children: bool,
    /// Print the call tree of the host samples by function: `caller` (top-down, from the
    /// outermost callers; the default for a bare -g) or `callee` (bottom-up, from the
    /// sampled functions out to their callers). Nodes below --percent-limit (default
    /// 0.5 for the tree, perf's threshold) are hidden, at most --limit children each.
    #[arg(short = 'g', long = "call-graph", value_enum, value_name = "caller|callee",
          num_args = 0..=1, default_missing_value = "caller")]
    pub call_graph: Option<TreeOrder>,
    /// Rows per table (0 = all).
    #[arg(long, default_value_t = 25, value_name = "N")]
    pub limit: usize,
    /// Hide rows below this share, in percent (default 0; 0.5 for the call tree).
    #[arg(long, value_name = "PCT")]
    pub percent_limit: Option<f64>,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// With --format folded: start each stack with the sampled thread's command name, as
    /// `perf script | inferno-collapse-perf` does.
    #[arg(long)]
    pub comm_root: bool,
}

/// How `record --vm` recordings are read (pairing rules in the man page).
pub const PAIRING_HELP: &str = "\
Recordings of `record --vm` also show the guest (branch histogram, hot functions and \
fall-through ranges from its LBR snapshots, symbolized from the guest image), where the \
host spent its time (guest running, KVM in the kernel, the shim's exit handling by kind, \
with the hottest host stacks; the shim's exits by reason and time in KVM_RUN), and \
pairing statistics.

Pairing rules: host samples and guest snapshots share CLOCK_MONOTONIC. A host sample is \
paired only if it was taken on a vCPU thread while that thread was inside KVM_RUN: its \
cpumode is a guest mode (the guest was running), or one of its kernel frames is \
kvm_arch_vcpu_ioctl_run. It pairs with the snapshot of the same vCPU nearest in time, if \
that is at most --pair-window away (inclusive; default: twice the mean time between \
consecutive snapshots of a vCPU, of the shorter 90% of those intervals, and at least one \
host sample period 1/F; snapshots are taken at random times, so this pairs about 95% of \
the samples in KVM_RUN); of two equally near snapshots the earlier wins. A snapshot may pair \
with several samples. Unpaired samples are counted by reason: not on a vCPU thread, \
outside KVM_RUN, no snapshot in the window. Pairing happens at report time, so a \
different window needs no new recording.";

/// `--pair-window`.
#[derive(Debug, Clone, clap::Args)]
pub struct PairArgs {
    /// Largest time distance, in nanoseconds, between a host sample and the guest
    /// snapshot it is paired with (record --vm recordings; default: twice the mean time
    /// between a vCPU's consecutive snapshots, at least 1/F).
    #[arg(long, value_name = "NS")]
    pub pair_window: Option<u64>,
}

/// The host+guest analysis of a `record --vm` recording (`None` for other recordings).
pub fn vm_analysis(loaded: &Loaded, pairing: &PairArgs) -> Option<vm::VmAnalysis> {
    loaded.vm_analysis(pairing.pair_window)
}

impl InputArgs {
    /// The read pipeline's options for these flags; `keep` says what to build.
    pub fn load_options<'a>(&self, naming: Naming, keep: Keep) -> LoadOptions<'a> {
        LoadOptions {
            select: Selection {
                event: self.event.clone(),
                pids: self.pid.clone(),
                tids: self.tid.clone(),
                comms: self.comm.clone(),
                dsos: self.dso.clone(),
                time: self.time.clone(),
            },
            naming: if self.no_symbols {
                Naming::None
            } else {
                naming
            },
            symbols: SymbolPlaces {
                debug_dirs: self.debug_dir.clone(),
                debuginfod_cache: crate::cmd::symbolize::debuginfod_cache(),
                build_id_cache: crate::cmd::symbolize::build_id_cache(),
                kallsyms: self.kallsyms.clone(),
                symfs: self.symfs.clone(),
            },
            keep,
            // LBRPROF_STREAM=1 reads the event stream instead of the mapped fast paths,
            // to compare them.
            event_stream_only: std::env::var_os("LBRPROF_STREAM").is_some(),
            progress: None,
        }
    }
}

/// Opens, aggregates and symbolizes `args.input` (functions, files and lines).
pub fn load(args: &InputArgs, naming: Naming) -> anyhow::Result<Loaded> {
    load_with(args, naming, Keep::default())
}

/// Like [`load`], and keeps the stack table per run of a `record --repeat` recording
/// (`run_starts`: the runs' start times, from its summary).
pub fn load_runs(args: &InputArgs, naming: Naming, run_starts: &[u64]) -> anyhow::Result<Loaded> {
    let keep = Keep {
        run_starts: run_starts.to_vec(),
        ..Keep::default()
    };
    load_with(args, naming, keep)
}

/// Like [`load`], but names functions only (symbol tables, no DWARF): for outputs that
/// show functions, or that add lines to the few places they show ([`Loaded::add_lines`]).
/// With `comm_root`, every sampled stack ends in a root frame naming the sampled
/// thread's command (`--comm-root`).
pub fn load_functions(args: &InputArgs, naming: Naming, comm_root: bool) -> anyhow::Result<Loaded> {
    let keep = Keep {
        functions_only: true,
        comm_root,
        ..Keep::default()
    };
    load_with(args, naming, keep)
}

/// Like [`load_functions`], and keeps the stack table per sampled thread and command
/// (`Profile::task_stacks`), for perf's sort keys.
fn load_tasks(args: &InputArgs, naming: Naming) -> anyhow::Result<Loaded> {
    let keep = Keep {
        functions_only: true,
        tasks: true,
        ..Keep::default()
    };
    load_with(args, naming, keep)
}

/// Like [`load`] (or [`load_functions`] with `functions_only`), and keeps every
/// sample's time, thread and stack ([`lbrprof_reports::aggregate::Timeline`]): for
/// exports that keep threads or time.
pub fn load_timeline(
    args: &InputArgs,
    naming: Naming,
    functions_only: bool,
) -> anyhow::Result<Loaded> {
    let keep = Keep {
        functions_only,
        timeline: true,
        ..Keep::default()
    };
    load_with(args, naming, keep)
}

/// [`lbrprof_reports::load()`] with these flags, a progress spinner on a terminal, and the
/// error as the user sees it.
fn load_with(args: &InputArgs, naming: Naming, keep: Keep) -> anyhow::Result<Loaded> {
    let progress = progress_bar(&args.input);
    let ticker = progress.clone();
    let mut tick = move |n: u64| ticker.set_position(n);
    let mut opts = args.load_options(naming, keep);
    opts.progress = Some(&mut tick);
    let loaded = lbrprof_reports::load(&args.input, opts);
    progress.finish_and_clear();
    loaded.map_err(|e| match e {
        // Kept as its own type: `report` prints one section per event.
        LoadError::SeveralEvents(several) => anyhow::Error::new(several),
        e => anyhow::Error::new(e),
    })
}

/// A spinner with an event count on stderr, only when stderr is a terminal.
fn progress_bar(path: &Path) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} reading {msg}: {pos} events")
    {
        bar.set_style(style);
    }
    bar.set_message(path.display().to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Standard output or a file, buffered. Files are created private (0600), like the
/// recordings they come from.
pub fn output(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    use std::os::unix::fs::OpenOptionsExt;
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

/// The Debian packages that ship `modules` (module path → package), from dpkg's file
/// lists (`/var/lib/dpkg/info/PACKAGE[:ARCH].list`, one installed path a line): what
/// `dpkg-query -S` answers, without its reading of the whole package database (about a
/// tenth of a second of CPU, a sixth of a report on a large perf.data; the lists alone
/// take a few milliseconds). Each path is tried as recorded, through symlinks and as its
/// merged-/usr alias. Paths off Debian or not packaged are absent.
fn debian_packages(modules: &[&str]) -> HashMap<String, String> {
    // Candidate path → the module it stands for (the first module to claim it).
    let mut candidates: HashMap<String, &str> = HashMap::new();
    for &module in modules {
        let path = Path::new(module);
        let mut paths = vec![path.to_path_buf()];
        if let Ok(real) = path.canonicalize() {
            paths.push(real);
        }
        for c in paths.clone() {
            match c.strip_prefix("/usr") {
                Ok(rest) => paths.push(Path::new("/").join(rest)),
                Err(_) => {
                    if let Ok(rest) = c.strip_prefix("/") {
                        paths.push(Path::new("/usr").join(rest));
                    }
                }
            }
        }
        for p in paths {
            if let Some(p) = p.to_str() {
                candidates.entry(p.to_owned()).or_insert(module);
            }
        }
    }
    if candidates.is_empty() {
        return HashMap::new();
    }
    let Ok(dir) = std::fs::read_dir("/var/lib/dpkg/info") else {
        return HashMap::new();
    };
    let mut lists: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "list"))
        .collect();
    lists.sort();
    let wanted: std::collections::HashSet<&str> = modules.iter().copied().collect();
    let mut out = HashMap::new();
    for list in lists {
        if out.len() == wanted.len() {
            break;
        }
        let (Some(stem), Ok(text)) = (
            list.file_stem().and_then(|s| s.to_str()),
            std::fs::read_to_string(&list),
        ) else {
            continue;
        };
        packages_from_list(stem, &text, &candidates, &mut out);
    }
    out
}

/// Adds to `out` (module → package) the modules whose candidate path is a line of the
/// file list `text` of package `stem` (`NAME` or `NAME:ARCH`); modules already named keep
/// their package. One pass over the list, whatever the number of candidates.
fn packages_from_list(
    stem: &str,
    text: &str,
    candidates: &HashMap<String, &str>,
    out: &mut HashMap<String, String>,
) {
    let package = stem.split(':').next().unwrap_or_default();
    if package.is_empty() {
        return;
    }
    for line in text.lines() {
        if let Some(&module) = candidates.get(line) {
            out.entry(module.to_owned())
                .or_insert_with(|| package.to_owned());
        }
    }
}

/// Whether any host sample has a call chain (more than its own frame): perf then shows
/// the Children column by default.
fn has_call_chains(loaded: &Loaded) -> bool {
    loaded
        .profile
        .task_stacks
        .values()
        .any(|stacks| stacks.keys().any(|s| s.len() > 1))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let percent_limit = args.percent_limit.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&percent_limit) {
        anyhow::bail!("--percent-limit must be between 0 and 100");
    }
    if args.comm_root && args.format != Format::Folded {
        anyhow::bail!("--comm-root needs --format folded");
    }
    let keys = match &args.sort {
        SortSpec::Keys(keys) => Some(keys.clone()),
        SortSpec::Order(_) => None,
    };
    if (keys.is_some() || args.call_graph.is_some()) && args.format == Format::Folded {
        anyhow::bail!("perf sort keys and -g print with --format text, json or markdown");
    }
    let load = |input: &InputArgs| {
        if keys.is_some() {
            load_tasks(input, Naming::Demangled)
        } else {
            load_functions(input, Naming::Demangled, args.comm_root)
        }
    };
    let loaded = match load(&args.input) {
        Ok(loaded) => loaded,
        Err(e) => match e.downcast::<SeveralEvents>() {
            // perf report's sections: one report per event, each headed by perf's line.
            Ok(several) if matches!(args.format, Format::Text | Format::Markdown) => {
                let mut out = output(args.output.as_deref())?;
                for (i, event) in several.events.iter().enumerate() {
                    let mut input = args.input.clone();
                    input.event = Some(event.clone());
                    let loaded = load(&input)?;
                    if i > 0 {
                        writeln!(out)?;
                    }
                    writeln!(
                        out,
                        "# Samples: {} of event '{event}'",
                        loaded.profile.totals.samples
                    )?;
                    report_one(&args, &input, keys.as_deref(), loaded, &mut out)?;
                }
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            Ok(several) => {
                return Err(anyhow::Error::new(several).context(format!(
                    "--format {} shows one event",
                    if args.format == Format::Json {
                        "json"
                    } else {
                        "folded"
                    }
                )));
            }
            Err(e) => return Err(e),
        },
    };
    let mut out = output(args.output.as_deref())?;
    report_one(&args, &args.input, keys.as_deref(), loaded, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the report of one loaded recording (of one event) to `out`.
fn report_one(
    args: &Args,
    input: &InputArgs,
    keys: Option<&[HistKey]>,
    mut loaded: Loaded,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let percent_limit = args.percent_limit.unwrap_or(0.0);
    if args.format == Format::Folded {
        // A guest recording folds its unified host+guest stacks, as the flame graph.
        match vm_analysis(&loaded, &args.pairing) {
            Some(vm) => {
                for line in vm.folded(vm::View::Unified) {
                    writeln!(out, "{line}")?;
                }
            }
            None => render::folded(&loaded.profile, &loaded.syms, StackSource::CallChains, out)?,
        }
        for w in &loaded.warnings {
            eprintln!("lbrprof: warning: {w}");
        }
        return Ok(());
    }
    let mut code = CodeReader::default();
    let mut rep = report::build(
        &loaded.profile,
        &loaded.syms,
        Source {
            format: loaded.format.name(),
            path: &input.input.display().to_string(),
            header: &loaded.header,
            notes: loaded.notes.clone(),
            warnings: loaded.warnings.clone(),
        },
        &mut code,
    );
    if input.no_symbols {
        // Nothing was looked up: no code is "unnamed" for want of a debug package.
        rep.meta.unnamed.clear();
    }
    let modules: Vec<&str> = rep
        .meta
        .unnamed
        .iter()
        .filter(|u| !u.missing)
        .map(|u| u.module.as_str())
        .collect();
    let packages = debian_packages(&modules);
    for u in rep.meta.unnamed.iter_mut().filter(|u| !u.missing) {
        u.package = packages.get(&u.module).cloned();
    }
    let order = match args.sort {
        SortSpec::Order(Sort::SelfShare) if args.children => SortKey::Total,
        SortSpec::Order(o) => o.into(),
        SortSpec::Keys(_) => SortKey::default(),
    };
    rep.sort(order);
    rep.truncate(args.limit, percent_limit);
    if let Some(keys) = keys {
        let children = args.children || (!args.no_children && has_call_chains(&loaded));
        let mut h = hist::build(&loaded.profile, &loaded.syms, keys, children);
        h.truncate(args.limit, percent_limit);
        rep.hist = Some(h);
        rep.guest_hist =
            hist::build_guest(&loaded.profile, &loaded.syms, keys, children).map(|mut h| {
                h.truncate(args.limit, percent_limit);
                h
            });
    }
    if let Some(order) = args.call_graph {
        let mut t = tree::build(
            &loaded.profile,
            &loaded.profile.stacks,
            &loaded.syms,
            order.into(),
        );
        t.truncate(args.limit, args.percent_limit.unwrap_or(0.5));
        rep.call_tree = Some(t);
    }
    // Lines only for the places shown.
    loaded.add_lines(&mut rep);
    rep.vm = vm_analysis(&loaded, &args.pairing).map(|a| a.report);
    match args.format {
        Format::Text => render::text(&rep, out)?,
        Format::Markdown => render::markdown(&rep, out)?,
        Format::Json => render::json(&rep, out)?,
        Format::Folded => unreachable!("handled above"),
    }
    if args.format != Format::Text && args.format != Format::Markdown {
        for w in &loaded.warnings {
            eprintln!("lbrprof: warning: {w}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lists_name_each_module_once() {
        let candidates = [
            (
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ),
            (
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
            ),
            (PathBuf::from("/usr/bin/gzip"), "/usr/bin/gzip"),
            (PathBuf::from("/bin/gzip"), "/usr/bin/gzip"),
            (PathBuf::from("/opt/x/own.so"), "/opt/x/own.so"),
        ];
        let candidates: HashMap<String, &str> = candidates
            .into_iter()
            .map(|(p, m)| (p.to_string_lossy().into_owned(), m))
            .collect();
        let mut got = HashMap::new();
        let libc = "/.\n/lib\n/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu/libc.so.6\n";
        packages_from_list("libc6:amd64", libc, &candidates, &mut got);
        // A longer path that starts with a candidate is not it.
        packages_from_list(
            "zz",
            "/bin/gzip-extra\n/usr/bin/gzipx",
            &candidates,
            &mut got,
        );
        assert_eq!(got.len(), 1, "{got:?}");
        packages_from_list("gzip", "/.\n/bin\n/bin/gzip", &candidates, &mut got);
        // The first package that lists a module keeps it.
        packages_from_list("other", "/bin/gzip\n", &candidates, &mut got);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["/usr/lib/x86_64-linux-gnu/libc.so.6"], "libc6");
        assert_eq!(got["/usr/bin/gzip"], "gzip");
    }

    /// On Debian (this machine and CI), the system's libc is found, beside a path that is
    /// not packaged; other packages' files as dpkg-query -S names them.
    #[test]
    fn debian_packages_finds_libc_in_one_query() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        if !Path::new("/var/lib/dpkg/status").exists() || !Path::new(libc).exists() {
            eprintln!("skipped: not a Debian system with {libc}");
            return;
        }
        let got = debian_packages(&[libc, "/nonexistent/own.so"]);
        assert_eq!(got.get(libc).map(String::as_str), Some("libc6"), "{got:?}");
        assert!(!got.contains_key("/nonexistent/own.so"));
        assert!(debian_packages(&[]).is_empty());
        // The answer of dpkg-query -S for the files of a few packages, where it is here.
        for path in [
            "/usr/bin/gzip",
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/bin/perf",
        ] {
            let Ok(out) = std::process::Command::new("dpkg-query")
                .args(["-S", path])
                .output()
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let first = text.lines().find(|l| !l.starts_with("diversion"));
            let Some((packages, _)) = first.and_then(|l| l.split_once(": ")) else {
                continue;
            };
            let expect = packages.split(&[',', ':'][..]).next().unwrap().trim();
            let got = debian_packages(&[path]);
            assert_eq!(got.get(path).map(String::as_str), Some(expect), "{path}");
        }
    }

    #[test]
    fn sort_takes_an_order_or_perf_keys() {
        assert_eq!(parse_sort("total"), Ok(SortSpec::Order(Sort::Total)));
        assert_eq!(parse_sort("self"), Ok(SortSpec::Order(Sort::SelfShare)));
        assert_eq!(
            parse_sort("comm,dso"),
            Ok(SortSpec::Keys(vec![HistKey::Comm, HistKey::Dso]))
        );
        assert_eq!(
            parse_sort("tid,symbol"),
            Ok(SortSpec::Keys(vec![HistKey::Pid, HistKey::Sym]))
        );
        for bad in ["", "comm,", "comm,comm", "comm,total", "cpu", "pid,tid"] {
            assert!(parse_sort(bad).is_err(), "{bad} accepted");
        }
    }
}
