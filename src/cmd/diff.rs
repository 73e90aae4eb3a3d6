//! `lbrprof diff BASE NEW`: per-function (or per-edge) cost changes between two
//! recordings and a regression verdict a CI pipeline can trust.
//!
//! Exit status: 0 no regression, 1 regression, 2 error, 3 inconclusive.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use lbrprof_data::model::{Header, Target};
use lbrprof_data::recording::{self, RunInfo};
use lbrprof_reports::decode::CodeReader;
use lbrprof_reports::diff::{self, Counts, DiffOptions, Metric, Verdict};
use lbrprof_reports::render::{StackSource, folded_lines};
use lbrprof_reports::report::{self, Report, Source};

use super::report::{InputArgs, Loaded, Naming, load_runs, output};

/// Compare two recordings (lbrprof.data or perf.data) and give a verdict.
///
/// Costs are compared, per function and in total: the event count the samples stand for
/// (CPU time for cpu-clock, cycles for cycles), or the branch and instruction counts.
/// Shares of the total are shown beside them.
///
/// Recordings made with `record --repeat N` keep their runs apart: each row's per-run
/// costs are compared with Welch's t-test; half of --alpha goes to the total, half to
/// the rows (Holm-corrected), so two recordings of the same program get a verdict at most
/// --alpha of the time. A row regresses when its cost rose significantly and by more than
/// --threshold. With one run per side, run-to-run noise is unknown: a total change beyond
/// the threshold is INCONCLUSIVE, never a regression and never unchanged. Exact-mode
/// guest recordings (record --vm --lbr-mode exact) have no noise: any change beyond the
/// threshold is a verdict. Rows with too few samples are "low-data".
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 no regression (unchanged or improved), 1 regression, 2 error, 3 \
inconclusive (one run per side and the cost moved beyond the threshold).")]
pub struct Args {
    /// The baseline recording.
    pub base: PathBuf,
    /// The candidate recording.
    pub new: PathBuf,
    /// What to compare. Default: `instructions` when both recordings are exact-mode
    /// guest recordings (`record --vm --lbr-mode exact`: every instruction counted, no
    /// noise), else `self`.
    #[arg(long, value_enum)]
    pub metric: Option<MetricArg>,
    /// Smallest relative change of a cost that counts, e.g. 5% (or 0.05).
    #[arg(long, default_value = "5%", value_parser = parse_fraction, value_name = "PCT")]
    pub threshold: f64,
    /// Family-wise false-alarm rate for sampled data.
    #[arg(long, default_value_t = 0.01, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Rows with fewer samples than this on both sides (all runs) are "low-data".
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub min_samples: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Rows to show (0 = all).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Also write the diff's flame graph to FILE: the new recording's stacks, the functions
    /// the table flags coloured by their verdict (red regressed, blue improved, orange
    /// inconclusive), every other frame grey.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write the report to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Compare the samples of this event, for perf.data files that hold several (`all`:
    /// every event's samples together).
    #[arg(long, value_name = "NAME|all")]
    pub event: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricArg {
    /// Cost of the samples in the function itself.
    #[value(name = "self")]
    SelfSamples,
    /// Cost of the samples with the function on the stack.
    Total,
    /// Taken branches between functions.
    Edges,
    /// Instructions executed per function (from LBR fall-through ranges).
    Instructions,
    /// Taken branches per source function.
    Branches,
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Metric {
        match m {
            MetricArg::SelfSamples => Metric::SelfSamples,
            MetricArg::Total => Metric::Total,
            MetricArg::Edges => Metric::Edges,
            MetricArg::Instructions => Metric::Instructions,
            MetricArg::Branches => Metric::Branches,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// "5%", "5" (percent) or "0.05" (a fraction below 1) → 0.05.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let (num, percent) = match s.strip_suffix('%') {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a percentage like 5% or 0.05"))?;
    let v = if percent || v >= 1.0 { v / 100.0 } else { v };
    if !(0.0..10.0).contains(&v) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(v)
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if v > 0.0 && v < 0.5 {
        Ok(v)
    } else {
        Err("--alpha must be between 0 and 0.5".into())
    }
}

struct Side {
    loaded: Loaded,
    report: Report,
    path: PathBuf,
    /// The runs of a `record --repeat` recording (empty: one run).
    runs: Vec<RunInfo>,
}

fn load_side(path: &Path, what: &str, event: Option<&str>) -> anyhow::Result<Side> {
    // The run windows are in the summary at the end; find it before the samples are
    // folded. (Not an lbrprof recording, or not finished: one run.)
    let runs = match recording::read_summary(path) {
        Ok(Some(summary)) => summary.runs,
        _ => Vec::new(),
    };
    let run_starts: Vec<u64> = if runs.len() >= 2 {
        runs.iter().map(|r| r.start_ns).collect()
    } else {
        Vec::new()
    };
    let args = InputArgs {
        input: path.to_path_buf(),
        pid: vec![],
        tid: vec![],
        comm: vec![],
        dso: vec![],
        no_symbols: false,
        debug_dir: vec![],
        symfs: None,
        kallsyms: None,
        event: event.map(str::to_owned),
        time: None,
    };
    let loaded = load_runs(&args, Naming::Demangled, &run_starts)
        .with_context(|| format!("{what} recording"))?;
    let mut code = CodeReader::default();
    let report = report::build(
        &loaded.profile,
        &loaded.syms,
        Source {
            format: loaded.format.name(),
            path: &path.display().to_string(),
            header: &loaded.header,
            notes: loaded.notes.clone(),
            warnings: loaded.warnings.clone(),
        },
        &mut code,
    );
    Ok(Side {
        loaded,
        report,
        path: path.to_path_buf(),
        runs,
    })
}

fn is_exact(header: &Header) -> bool {
    matches!(&header.target, Target::Vm { mode, .. } if mode == "exact")
}

/// Notes on how the two recordings differ in what they profiled.
fn mismatch_notes(base: &Side, new: &Side) -> Vec<String> {
    let mut notes = Vec::new();
    let target = |h: &Header| match &h.target {
        Target::Command { argv } => argv.first().cloned().unwrap_or_default(),
        Target::Vm { image, .. } => image.clone(),
        Target::Pid { pid } => format!("pid {pid}"),
        Target::Tid { tid } => format!("tid {tid}"),
        Target::PerfData { path } => path.clone(),
        Target::System { cpus, argv } => crate::cmd::info::system_target(cpus, argv),
    };
    let (tb, tn) = (target(&base.loaded.header), target(&new.loaded.header));
    if tb != tn {
        notes.push(format!("base profiled {tb}, new profiled {tn}"));
    }
    if base.loaded.header.sampling.event != new.loaded.header.sampling.event {
        notes.push(format!(
            "base sampled {}, new sampled {}: their costs are not comparable, only the shares are",
            base.loaded.header.sampling.event, new.loaded.header.sampling.event
        ));
    }
    // Modules with the same file name but different build-ids: different builds.
    let builds = |s: &Side| -> BTreeSet<(String, String)> {
        let modules = &s.loaded.profile.spaces.modules;
        modules
            .iter()
            .filter_map(|(_, m)| {
                let id = m.build_id.as_ref()?;
                Some((
                    m.short_name().to_string(),
                    id.iter().map(|b| format!("{b:02x}")).collect(),
                ))
            })
            .collect()
    };
    for (what, side) in [("base", base), ("new", new)] {
        let failed = side
            .runs
            .iter()
            .filter(|r| r.exit_status.is_some_and(|s| s != 0))
            .count();
        if failed > 0 {
            notes.push(format!(
                "{what}: {failed} of {} runs exited with a failure status",
                side.runs.len()
            ));
        }
    }
    let (bb, nb) = (builds(base), builds(new));
    for (name, id) in &bb {
        if let Some((_, other)) = nb.iter().find(|(n, i)| n == name && i != id) {
            notes.push(format!(
                "{name}: different builds (build-id {} in base, {} in new)",
                &id[..id.len().min(12)],
                &other[..other.len().min(12)]
            ));
        }
    }
    notes
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Checked before the recordings are read: the default metric (which depends on
    // them) is a per-function one either way.
    if args.svg.is_some()
        && let Some(m) = args.metric
        && !Metric::from(m).per_function()
    {
        bail!("--svg shows functions: use it with --metric self, total, instructions or branches");
    }
    let base = load_side(&args.base, "base", args.event.as_deref())?;
    let new = load_side(&args.new, "new", args.event.as_deref())?;
    let both_exact = is_exact(&base.loaded.header) && is_exact(&new.loaded.header);
    let metric: Metric = match args.metric {
        Some(m) => m.into(),
        None if both_exact => Metric::Instructions,
        None => Metric::SelfSamples,
    };
    // Exact-mode recordings count guest branches and instructions exactly; their host
    // samples are as noisy as any other.
    let guest_metric = matches!(
        metric,
        Metric::Edges | Metric::Branches | Metric::Instructions
    );
    let exact = guest_metric && both_exact;
    let mut base = base;
    let mut new = new;
    let b = counts(&mut base, metric, exact)?;
    let n = counts(&mut new, metric, exact)?;
    let keys = |c: &Counts| -> BTreeSet<String> {
        c.runs.iter().flat_map(|r| r.rows.keys().cloned()).collect()
    };
    if keys(&b).is_disjoint(&keys(&n)) {
        bail!(
            "{} and {} have no {} rows in common: they profile different programs",
            base.path.display(),
            new.path.display(),
            metric.name()
        );
    }
    let opts = DiffOptions {
        threshold: args.threshold,
        alpha: args.alpha,
        min_samples: args.min_samples,
    };
    let mut report = diff::compare(&b, &n, &opts);
    let had_runs = base.runs.len() > 1 || new.runs.len() > 1;
    if report.method == diff::Method::SingleRun && had_runs {
        // Branch metrics are folded over the whole recording.
        report.notes.push(format!(
            "--metric {} is counted over the whole recording, not per run",
            metric.name()
        ));
    }
    let limit = if args.limit == 0 {
        usize::MAX
    } else {
        args.limit
    };
    let notes = mismatch_notes(&base, &new);
    let mut out = output(args.output.as_deref())?;
    match args.format {
        Format::Text => {
            out.write_all(diff::render_text(&report, metric.name(), limit).as_bytes())?;
            for note in &notes {
                writeln!(out, "note: {note}")?;
            }
        }
        Format::Markdown => {
            out.write_all(diff::render_markdown(&report, metric.name(), limit).as_bytes())?;
            for note in &notes {
                writeln!(out, "\n> note: {note}")?;
            }
        }
        Format::Json => {
            let doc = serde_json::json!({
                "schema": "lbrprof-diff",
                "version": 2,
                "metric": metric.name(),
                "base": base.path.display().to_string(),
                "new": new.path.display().to_string(),
                "exit_status": report.verdict.exit_code(),
                "notes": notes,
                "report": report,
            });
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    if let Some(svg) = &args.svg {
        write_svg(&report, &base, &new, svg)?;
    }
    Ok(match report.verdict {
        Verdict::Regressed | Verdict::Inconclusive => ExitCode::from(report.verdict.exit_code()),
        _ => ExitCode::SUCCESS,
    })
}

/// One side's costs: per run when the recording has runs and the metric is a sample
/// metric, else the whole recording as one run.
fn counts(side: &mut Side, metric: Metric, exact: bool) -> anyhow::Result<Counts> {
    if exact
        && metric == Metric::Instructions
        && let Some((total, rows)) =
            super::export_callgrind::exact_function_counts(&side.path, &mut side.loaded)?
    {
        // Every instruction each function retired, not the snapshots' sample of them.
        return Ok(Counts::single(total, rows, true, "instructions"));
    }
    let c = diff::counts(&side.report, metric, exact);
    if c.total_samples == 0 {
        let what = match metric {
            Metric::SelfSamples | Metric::Total => "samples",
            Metric::Edges | Metric::Branches => "branch records",
            Metric::Instructions => "fall-through ranges",
        };
        bail!("{} has no {what} to compare", side.path.display());
    }
    if exact {
        return Ok(c);
    }
    Ok(diff::run_counts(&side.loaded.profile, &side.loaded.syms, metric, &c).unwrap_or(c))
}

fn write_svg(
    report: &diff::DiffReport,
    base: &Side,
    new: &Side,
    path: &Path,
) -> anyhow::Result<()> {
    let source = if new.loaded.profile.stacks.is_empty() {
        StackSource::Lbr
    } else {
        StackSource::CallChains
    };
    let lines = folded_lines(&new.loaded.profile, &new.loaded.syms, source);
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let title = format!(
        "lbrprof diff: {} → {}",
        base.path.display(),
        new.path.display()
    );
    diff::write_verdict_svg(report, &lines, &title, std::io::BufWriter::new(file))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_as_percent_or_fraction() {
        assert_eq!(parse_fraction("5%"), Ok(0.05));
        assert_eq!(parse_fraction("5"), Ok(0.05));
        assert_eq!(parse_fraction("0.05"), Ok(0.05));
        assert_eq!(parse_fraction("12.5%"), Ok(0.125));
        assert!(parse_fraction("abc").is_err());
        assert!(parse_fraction("-3%").is_err());
        assert!(parse_alpha("0.05").is_ok());
        assert!(parse_alpha("0").is_err());
        assert!(parse_alpha("0.9").is_err());
    }
}
