//! `lbrprof diff BASE NEW`: per-function (or per-edge) changes between two recordings and
//! a regression verdict a CI pipeline can trust.
//!
//! Exit status: 0 no regression, 1 regression, 2 error.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use lbrprof_collector::model::{Header, Target};
use lbrprof_reports::decode::CodeReader;
use lbrprof_reports::diff::{self, Counts, DiffOptions, Metric};
use lbrprof_reports::render::{StackSource, folded_lines};
use lbrprof_reports::report::{self, Report, Source};

use super::report::{InputArgs, Loaded, Naming, load, output};

/// Compare two recordings (lbrprof.data or perf.data) and give a verdict.
///
/// Sampled data: each row's share is compared with a one-sided two-proportion z-test,
/// Holm-corrected over the rows compared, so two runs of the same program report a
/// regression at most --alpha of the time; a row regresses only when its increase is also
/// above --threshold. Rows with too few samples say "not enough data". Exact-mode guest
/// recordings (record --vm --lbr-mode exact) have no noise: any change beyond the threshold
/// is a regression.
///
/// Exit status: 0 no regression, 1 regression, 2 error.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The baseline recording.
    pub base: PathBuf,
    /// The candidate recording.
    pub new: PathBuf,
    /// What to compare.
    #[arg(long, value_enum, default_value = "self")]
    pub metric: MetricArg,
    /// Smallest relative change that counts, e.g. 5% (or 0.05).
    #[arg(long, default_value = "5%", value_parser = parse_fraction, value_name = "PCT")]
    pub threshold: f64,
    /// Family-wise false-alarm rate for sampled data.
    #[arg(long, default_value_t = 0.01, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Rows with fewer samples than this on both sides are "not enough data".
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub min_samples: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Rows to show (0 = all).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Also write a differential flame graph (red: grew, blue: shrank) to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write the report to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricArg {
    /// Samples in the function itself.
    #[value(name = "self")]
    SelfSamples,
    /// Samples with the function on the stack.
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
}

fn load_side(path: &Path, what: &str) -> anyhow::Result<Side> {
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
        event: None,
    };
    let loaded = load(&args, Naming::Demangled).with_context(|| format!("{what} recording"))?;
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
    };
    let (tb, tn) = (target(&base.loaded.header), target(&new.loaded.header));
    if tb != tn {
        notes.push(format!("base profiled {tb}, new profiled {tn}"));
    }
    if base.loaded.header.sampling.event != new.loaded.header.sampling.event {
        notes.push(format!(
            "base sampled {}, new sampled {}: shares are comparable, counts are not",
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
    let base = load_side(&args.base, "base")?;
    let new = load_side(&args.new, "new")?;
    let metric: Metric = args.metric.into();
    // Exact-mode recordings count guest branches and instructions exactly; their host
    // samples are as noisy as any other.
    let guest_metric = matches!(
        metric,
        Metric::Edges | Metric::Branches | Metric::Instructions
    );
    let exact = guest_metric && is_exact(&base.loaded.header) && is_exact(&new.loaded.header);
    let b = counts(&base, metric, exact)?;
    let n = counts(&new, metric, exact)?;
    if !b.rows.keys().any(|k| n.rows.contains_key(k)) {
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
    let report = diff::compare(&b, &n, &opts);
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
                "version": 1,
                "metric": metric.name(),
                "base": base.path.display().to_string(),
                "new": new.path.display().to_string(),
                "notes": notes,
                "report": report,
            });
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    if let Some(svg) = &args.svg {
        write_svg(&base, &new, svg)?;
    }
    Ok(if report.regressed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn counts(side: &Side, metric: Metric, exact: bool) -> anyhow::Result<Counts> {
    let c = diff::counts(&side.report, metric, exact);
    if c.total == 0 {
        let what = match metric {
            Metric::SelfSamples | Metric::Total => "samples",
            Metric::Edges | Metric::Branches => "branch records",
            Metric::Instructions => "fall-through ranges",
        };
        bail!("{} has no {what} to compare", side.path.display());
    }
    Ok(c)
}

fn write_svg(base: &Side, new: &Side, path: &Path) -> anyhow::Result<()> {
    let lines = |s: &Side| {
        let source = if s.loaded.profile.stacks.is_empty() {
            StackSource::Lbr
        } else {
            StackSource::CallChains
        };
        folded_lines(&s.loaded.profile, &s.loaded.syms, source)
    };
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let title = format!(
        "lbrprof diff: {} → {}",
        base.path.display(),
        new.path.display()
    );
    diff::write_differential_svg(
        &lines(base),
        &lines(new),
        &title,
        std::io::BufWriter::new(file),
    )
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
