//! Regression verdicts between two profiles (`lbrprof diff`).
//!
//! A side of a comparison is one or more runs of a program (`record --repeat N` keeps
//! them apart), each with a **cost** per row (function, branch edge, …) and in total: the
//! event count the samples stand for (the sum of their periods: nanoseconds of CPU time
//! for cpu-clock, cycles for cycles) for the sample metrics, the counts themselves for
//! the branch and instruction metrics. Costs are compared, not shares: when everything
//! gets slower together the shares do not move, the costs do. Shares stay in the rows as
//! a second view.
//!
//! Three kinds of data get three kinds of verdict:
//!
//! * **Exact data** (`--lbr-mode exact` guest recordings: instructions and branches
//!   retired, counted without sampling): there is no noise, so any change of a row's or
//!   the total's count beyond the threshold is a verdict, with the exact numbers.
//! * **Repeated runs** (two or more runs on at least one side): the run-to-run variation
//!   is measured, not assumed. Each row's per-run costs are compared with **Welch's
//!   t-test** (two-sided, unequal variances, Welch–Satterthwaite degrees of freedom),
//!   which holds for the small samples CI can afford (3–10 runs a side): per-run costs
//!   are sums over many samples, close to normal, and their variance includes both
//!   sampling noise and what differs from run to run (page faults, caches, frequency,
//!   other tenants) — the part one run cannot show. When one side has a single run, the
//!   other side's variance stands for both. `alpha` (default 1%) is split in two halves
//!   (Bonferroni): the total is tested at `alpha / 2`, and the p-values of the rows with
//!   enough samples are corrected with Holm's step-down method at `alpha / 2`, so the
//!   chance that two recordings of the same program get any verdict (regressed or
//!   improved, total or row) is at most `alpha`, and a change of the whole program is not
//!   lost among many rows. A row (or the total) regresses when its
//!   mean cost per run rose significantly *and* by more than the threshold (default 5%).
//!   A bootstrap was not chosen: with 5 runs a side it has only a few hundred distinct
//!   resamples and understates the variance, so its false-alarm rate is above alpha.
//! * **One run per side**: nothing measures run-to-run variation, which on a real machine
//!   is far wider than sampling noise, so no verdict of regression is given. When the
//!   total cost moved by more than the threshold, or a row moved by more than the
//!   threshold and beyond sampling noise (a Poisson test on its sample counts, Holm-
//!   corrected), the verdict is **inconclusive**; otherwise unchanged. A row that moved
//!   by more than the threshold but within the sampling noise of its samples is
//!   "low-data": its samples cannot tell.
//!
//! Rows with fewer than `min_samples` samples on both sides are "low-data" rather than
//! guessed at (sampled data only).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io;

use serde::Serialize;

use crate::loc::{Side, stack_side};
use crate::report::Report;

/// What `lbrprof diff` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cost of the samples whose leaf frame is in the function.
    SelfSamples,
    /// Cost of the samples with the function anywhere on the stack.
    Total,
    /// Taken branches between two functions (`from → to`, by function name so that the
    /// rows survive a rebuild that moves code).
    Edges,
    /// Instructions executed in the function, from LBR fall-through ranges.
    Instructions,
    /// Taken branches whose source is in the function.
    Branches,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::SelfSamples => "self",
            Metric::Total => "total",
            Metric::Edges => "edges",
            Metric::Instructions => "instructions",
            Metric::Branches => "branches",
        }
    }

    /// Whether the metric's rows are functions (so a flame graph can show them).
    pub fn per_function(self) -> bool {
        self != Metric::Edges
    }
}

/// One run of one side: the cost of each row and in total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// The run's total cost (all samples' periods, all branches, …).
    pub total: u64,
    pub rows: BTreeMap<String, u64>,
}

/// One side of a comparison: its runs, and the sample counts behind each row's costs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// At least one run; a recording without `--repeat` is one run.
    pub runs: Vec<RunCounts>,
    /// Samples behind each row over all runs (for the `min_samples` rule and the
    /// sampling-noise test of single runs); for counted metrics, the counts themselves.
    pub samples: BTreeMap<String, u64>,
    /// Samples behind the total, over all runs.
    pub total_samples: u64,
    /// True when the counts are exact (no sampling noise).
    pub exact: bool,
    /// What the costs count: `ns` (cpu-clock time), `cycles`, `instructions`, ….
    pub unit: String,
}

impl Counts {
    /// A side of one run whose costs are the sample counts themselves (tests, and
    /// metrics without sample periods).
    pub fn single(total: u64, rows: BTreeMap<String, u64>, exact: bool, unit: &str) -> Counts {
        Counts {
            samples: rows.clone(),
            total_samples: total,
            runs: vec![RunCounts { total, rows }],
            exact,
            unit: unit.to_string(),
        }
    }

    /// Sums over all runs.
    fn summed(&self, key: &str) -> u64 {
        self.runs
            .iter()
            .map(|r| r.rows.get(key).copied().unwrap_or(0))
            .sum()
    }

    fn total_cost(&self) -> u64 {
        self.runs.iter().map(|r| r.total).sum()
    }
}

/// The cost unit of a sampled recording's event (`cpu-clock` periods are nanoseconds).
pub fn event_unit(event: &str) -> String {
    match event {
        "cpu-clock" | "task-clock" => "ns".to_string(),
        other => other.to_string(),
    }
}

/// The rows of `metric` in a report (which must not have been truncated), as one run.
/// Sample metrics cost the samples' periods. Rows are keyed by function name alone, so a
/// function keeps its row when its binary is rebuilt or renamed.
pub fn counts(report: &Report, metric: Metric, exact: bool) -> Counts {
    let mut rows: BTreeMap<String, u64> = BTreeMap::new();
    let mut samples: BTreeMap<String, u64> = BTreeMap::new();
    let fname = |p: &crate::report::Place| {
        p.function
            .clone()
            .unwrap_or_else(|| format!("{}+{:#x}", p.module, p.offset))
    };
    let (total, total_samples, unit) = match metric {
        Metric::SelfSamples | Metric::Total => {
            // The host's functions: guest snapshots (record --vm) are not host samples,
            // their weight is not the event's unit, and they are not in the total.
            for f in report.functions.iter().filter(|f| f.side == Side::Host) {
                let (n, w) = if metric == Metric::SelfSamples {
                    (f.self_samples, f.self_weight)
                } else {
                    (f.total_samples, f.total_weight)
                };
                if n > 0 {
                    *rows.entry(f.function.clone()).or_default() += w;
                    *samples.entry(f.function.clone()).or_default() += n;
                }
            }
            (
                report.meta.weight,
                report.meta.samples,
                event_unit(&report.meta.event),
            )
        }
        Metric::Edges => {
            for b in &report.branches {
                let key = format!("{} → {}", fname(&b.from), fname(&b.to));
                *rows.entry(key).or_default() += b.count;
            }
            let t = report.branches.iter().map(|b| b.count).sum();
            (t, t, "branches".to_string())
        }
        Metric::Branches => {
            for b in &report.branches {
                *rows.entry(fname(&b.from)).or_default() += b.count;
            }
            let t = report.branches.iter().map(|b| b.count).sum();
            (t, t, "branches".to_string())
        }
        Metric::Instructions => {
            for r in &report.ranges {
                *rows.entry(fname(&r.start)).or_default() += r.executed.round() as u64;
            }
            let t = rows.values().sum();
            (t, t, "instructions".to_string())
        }
    };
    if samples.is_empty() {
        samples = rows.clone();
    }
    Counts {
        runs: vec![RunCounts { total, rows }],
        samples,
        total_samples,
        exact,
        unit,
    }
}

/// The per-run costs of a sample metric (`SelfSamples` or `Total`), from the per-run
/// stack tables of a repeated recording (`profile.run_stacks`); `None` for other metrics
/// or a recording of one run. Samples (the `min_samples` counts) come from `whole`.
pub fn run_counts(
    profile: &crate::aggregate::Profile,
    syms: &crate::symbols::SymbolTable,
    metric: Metric,
    whole: &Counts,
) -> Option<Counts> {
    if profile.run_stacks.len() < 2 || !matches!(metric, Metric::SelfSamples | Metric::Total) {
        return None;
    }
    let runs = profile
        .run_stacks
        .iter()
        .map(|stacks| {
            let mut rows: BTreeMap<String, u64> = BTreeMap::new();
            for ((side, _, name), c) in crate::report::function_counts(profile, stacks, syms) {
                if side != Side::Host {
                    continue;
                }
                let w = if metric == Metric::SelfSamples {
                    c[1]
                } else {
                    c[3]
                };
                if w > 0 {
                    *rows.entry(name).or_default() += w;
                }
            }
            RunCounts {
                total: stacks
                    .iter()
                    .filter(|(stack, _)| stack_side(stack) == Side::Host)
                    .map(|(_, c)| c.weight)
                    .sum(),
                rows,
            }
        })
        // A run that left no samples (it failed at once) says nothing about the cost.
        .filter(|r| r.total > 0)
        .collect::<Vec<_>>();
    if runs.is_empty() {
        return None;
    }
    Some(Counts {
        runs,
        ..whole.clone()
    })
}

/// How to decide.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffOptions {
    /// Practical threshold: the relative change of a row's (or the total's) cost that
    /// counts, e.g. 0.05 for 5%.
    pub threshold: f64,
    /// Family-wise false-alarm rate for sampled data.
    pub alpha: f64,
    /// Rows with fewer samples than this on both sides are "low-data".
    pub min_samples: u64,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            threshold: 0.05,
            alpha: 0.01,
            min_samples: 30,
        }
    }
}

/// A row's (or the whole comparison's) verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Regressed,
    /// Moved beyond the threshold, but one run per side cannot tell that from noise.
    Inconclusive,
    Improved,
    Unchanged,
    /// Too few samples to tell: fewer than `min_samples` on both sides, or (one run per
    /// side) a move beyond the threshold within the sampling noise.
    NotEnoughData,
}

impl Verdict {
    /// One word, so that every table row starts with it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regressed => "regressed",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
            Verdict::NotEnoughData => "low-data",
        }
    }

    /// `lbrprof diff`'s exit status for this overall verdict: 1 regression, 3
    /// inconclusive, 0 otherwise.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Regressed => 1,
            Verdict::Inconclusive => 3,
            _ => 0,
        }
    }
}

/// How the verdicts were reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact counts, compared with the threshold alone.
    Exact,
    /// Welch's t-test on per-run costs, Holm-corrected.
    Welch,
    /// One run per side: no verdict of regression.
    SingleRun,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffRow {
    pub key: String,
    /// Mean cost per run, per side.
    pub base: f64,
    pub new: f64,
    /// Cost per run, per side.
    pub base_runs: Vec<u64>,
    pub new_runs: Vec<u64>,
    /// Relative standard deviation of the per-run costs (`None` with one run).
    pub base_cv: Option<f64>,
    pub new_cv: Option<f64>,
    /// Share of the side's total cost (the second view).
    pub base_share: f64,
    pub new_share: f64,
    /// `new / base - 1`; infinite for a row that is new.
    pub relative_change: f64,
    /// Two-sided p-value (sampled data only; `None` when not tested), Holm-adjusted over
    /// the rows (not for the total). Significant below `alpha / 2` with repeated runs
    /// (half the family-wise alpha goes to the total, half to the rows), below `alpha`
    /// for single runs.
    pub p_value: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffReport {
    pub exact: bool,
    pub method: Method,
    pub unit: String,
    pub threshold: f64,
    pub alpha: f64,
    pub base_runs: usize,
    pub new_runs: usize,
    /// The total cost per run (key `[total]`), tested like a row.
    pub total: DiffRow,
    /// Rows that entered the statistical test, the total included (sampled data).
    pub rows_tested: usize,
    /// Sorted: regressions first, then by the size of the change.
    pub rows: Vec<DiffRow>,
    pub verdict: Verdict,
    /// What the reader must know about the verdict (e.g. one run per side).
    pub notes: Vec<String>,
}

impl DiffReport {
    pub fn regressed(&self) -> bool {
        self.verdict == Verdict::Regressed
    }

    /// The rows (and the total) with a verdict other than unchanged or low-data.
    pub fn flagged(&self) -> impl Iterator<Item = &DiffRow> {
        std::iter::once(&self.total).chain(&self.rows).filter(|r| {
            matches!(
                r.verdict,
                Verdict::Regressed | Verdict::Improved | Verdict::Inconclusive
            )
        })
    }
}

/// The key of the total row.
pub const TOTAL_KEY: &str = "[total]";

fn make_row(key: &str, b: Vec<u64>, n: Vec<u64>, bt: u64, nt: u64) -> DiffRow {
    let (bm, bcv) = mean_cv(&b);
    let (nm, ncv) = mean_cv(&n);
    let sb: u64 = b.iter().sum();
    let sn: u64 = n.iter().sum();
    DiffRow {
        key: key.to_string(),
        base: bm,
        new: nm,
        base_runs: b,
        new_runs: n,
        base_cv: bcv,
        new_cv: ncv,
        base_share: share(sb, bt),
        new_share: share(sn, nt),
        relative_change: relative(bm, nm),
        p_value: None,
        verdict: Verdict::Unchanged,
    }
}

fn mean_cv(xs: &[u64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (0.0, None);
    }
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    if xs.len() < 2 || mean == 0.0 {
        return (mean, None);
    }
    (mean, Some(variance(xs).sqrt() / mean))
}

/// Unbiased sample variance.
fn variance(xs: &[u64]) -> f64 {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)
}

/// Compares `new` against `base`.
pub fn compare(base: &Counts, new: &Counts, opts: &DiffOptions) -> DiffReport {
    let exact = base.exact && new.exact;
    let (nb, nn) = (base.runs.len(), new.runs.len());
    let method = if exact {
        Method::Exact
    } else if nb.max(nn) >= 2 {
        Method::Welch
    } else {
        Method::SingleRun
    };
    let (bt, nt) = (base.total_cost(), new.total_cost());
    let per_run = |c: &Counts, key: &str| -> Vec<u64> {
        c.runs
            .iter()
            .map(|r| r.rows.get(key).copied().unwrap_or(0))
            .collect()
    };
    let keys: BTreeSet<&String> = base
        .runs
        .iter()
        .chain(&new.runs)
        .flat_map(|r| r.rows.keys())
        .collect();
    let mut rows: Vec<DiffRow> = keys
        .into_iter()
        .map(|key| make_row(key, per_run(base, key), per_run(new, key), bt, nt))
        .collect();
    let mut total = make_row(
        TOTAL_KEY,
        base.runs.iter().map(|r| r.total).collect(),
        new.runs.iter().map(|r| r.total).collect(),
        bt,
        nt,
    );
    let enough = |key: &str| {
        base.samples
            .get(key)
            .copied()
            .unwrap_or(0)
            .max(new.samples.get(key).copied().unwrap_or(0))
            >= opts.min_samples
    };
    let mut notes = Vec::new();
    let rows_tested = match method {
        Method::Exact => {
            for row in rows.iter_mut().chain(std::iter::once(&mut total)) {
                row.verdict = threshold_verdict(row.relative_change, opts.threshold);
            }
            0
        }
        Method::Welch => {
            // One sample's cost (the mean period): the least variance a sampled cost has.
            let quantum = |c: &Counts| {
                if c.total_samples == 0 {
                    0.0
                } else {
                    c.total_cost() as f64 / c.total_samples as f64
                }
            };
            let floor = quantum(base).max(quantum(new)).powi(2);
            if nb.min(nn) < 2 {
                notes.push(format!(
                    "one side has a single run: its variation is taken to be the other side's \
                     ({nb} run(s) vs {nn})"
                ));
            }
            // alpha is split in two (Bonferroni): half for the total, half for the rows
            // (Holm over the rows), so a uniform change is not lost among many rows.
            let mut tested: Vec<(usize, f64)> = Vec::new();
            for (i, row) in rows.iter_mut().enumerate() {
                if !enough(&row.key) {
                    row.verdict = Verdict::NotEnoughData;
                    continue;
                }
                tested.push((i, welch_p(&row.base_runs, &row.new_runs, floor)));
            }
            let m = tested.len();
            holm(&mut tested);
            let welch_verdict = |row: &DiffRow, p: f64| {
                if p < opts.alpha / 2.0 {
                    threshold_verdict(row.relative_change, opts.threshold)
                } else {
                    Verdict::Unchanged
                }
            };
            for (i, p) in tested {
                let row = &mut rows[i];
                row.p_value = Some(p);
                row.verdict = welch_verdict(row, p);
            }
            let p = welch_p(&total.base_runs, &total.new_runs, floor);
            total.p_value = Some(p);
            total.verdict = welch_verdict(&total, p);
            m + 1
        }
        Method::SingleRun => {
            notes.push(
                "one run per side: a change cannot be told from run-to-run noise, so there is \
                 no verdict of regression; record each side with `record --repeat 5`"
                    .to_string(),
            );
            let mut tested: Vec<(usize, f64)> = Vec::new();
            for (i, row) in rows.iter_mut().enumerate() {
                if !enough(&row.key) {
                    row.verdict = Verdict::NotEnoughData;
                    continue;
                }
                let (sb, sn) = (
                    base.samples.get(&row.key).copied().unwrap_or(0),
                    new.samples.get(&row.key).copied().unwrap_or(0),
                );
                tested.push((
                    i,
                    poisson_p(sb, base.summed(&row.key), sn, new.summed(&row.key)),
                ));
            }
            let m = tested.len();
            holm(&mut tested);
            for (i, p) in tested {
                let row = &mut rows[i];
                row.p_value = Some(p);
                let beyond = threshold_verdict(row.relative_change, opts.threshold);
                row.verdict = if beyond == Verdict::Unchanged {
                    Verdict::Unchanged
                } else if p < opts.alpha {
                    Verdict::Inconclusive
                } else {
                    // Moved beyond the threshold, within the sampling noise of its samples.
                    Verdict::NotEnoughData
                };
            }
            if threshold_verdict(total.relative_change, opts.threshold) != Verdict::Unchanged {
                total.verdict = Verdict::Inconclusive;
            }
            m
        }
    };

    rows.sort_by(|a, b| {
        a.verdict
            .cmp(&b.verdict)
            .then_with(|| magnitude(b).total_cmp(&magnitude(a)))
            .then_with(|| a.key.cmp(&b.key))
    });
    let all = || std::iter::once(&total).chain(&rows);
    let verdict = if all().any(|r| r.verdict == Verdict::Regressed) {
        Verdict::Regressed
    } else if all().any(|r| r.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else if all().any(|r| r.verdict == Verdict::Improved) {
        Verdict::Improved
    } else if !rows.is_empty() && rows.iter().all(|r| r.verdict == Verdict::NotEnoughData) {
        Verdict::NotEnoughData
    } else {
        Verdict::Unchanged
    };
    DiffReport {
        exact,
        method,
        unit: if base.unit == new.unit {
            base.unit.clone()
        } else {
            format!("{} vs {}", base.unit, new.unit)
        },
        threshold: opts.threshold,
        alpha: opts.alpha,
        base_runs: nb,
        new_runs: nn,
        total,
        rows_tested,
        rows,
        verdict,
        notes,
    }
}

fn share(count: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        count as f64 / total as f64
    }
}

fn relative(base: f64, new: f64) -> f64 {
    if base == 0.0 {
        if new == 0.0 { 0.0 } else { f64::INFINITY }
    } else {
        new / base - 1.0
    }
}

/// How much a row moved, for sorting: the change in share points.
fn magnitude(row: &DiffRow) -> f64 {
    (row.new_share - row.base_share).abs()
}

fn threshold_verdict(relative_change: f64, threshold: f64) -> Verdict {
    if relative_change > threshold {
        Verdict::Regressed
    } else if relative_change < -threshold {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    }
}

/// Holm's step-down adjustment, in place: the k-th smallest p (0-based) of m is
/// multiplied by m - k, and the adjusted p-values are made monotone.
fn holm(tested: &mut [(usize, f64)]) {
    let m = tested.len();
    tested.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut running_max: f64 = 0.0;
    for (k, (_, p)) in tested.iter_mut().enumerate() {
        let adjusted = (*p * (m - k) as f64).min(1.0).max(running_max);
        running_max = adjusted;
        *p = adjusted;
    }
}

/// Two-sided p-value of Welch's t-test of the means of `a` and `b`. With one value on a
/// side, the other side's variance stands for it; with one value on both, 1. Neither
/// side's variance is taken below `floor`: sampled costs are whole samples, so runs that
/// happen to get the same number of samples do not make a difference of one sample
/// infinitely significant.
pub fn welch_p(a: &[u64], b: &[u64], floor: f64) -> f64 {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() || (a.len() < 2 && b.len() < 2) {
        return 1.0;
    }
    let mean = |x: &[u64]| x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (va, vb) = match (a.len() >= 2, b.len() >= 2) {
        (true, true) => (variance(a), variance(b)),
        (true, false) => (variance(a), variance(a)),
        _ => (variance(b), variance(b)),
    };
    let (va, vb) = (va.max(floor), vb.max(floor));
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    if se2 == 0.0 {
        return if ma == mb { 1.0 } else { 0.0 };
    }
    let t = (mb - ma).abs() / se2.sqrt();
    let df = match (a.len() >= 2, b.len() >= 2) {
        (true, true) => se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0)),
        (true, false) => na - 1.0,
        _ => nb - 1.0,
    };
    2.0 * student_t_upper_tail(t, df)
}

/// Two-sided p-value that two costs differ beyond sampling noise, from the sample counts
/// `s1`, `s2` behind them: the costs are expressed in samples of their mean period, and
/// the conditional binomial test of one count among both (normal approximation) is
/// applied, as for two Poisson counts. Run-to-run variation is not in it.
fn poisson_p(s1: u64, cost1: u64, s2: u64, cost2: u64) -> f64 {
    if s1 + s2 == 0 {
        return 1.0;
    }
    // Cost per sample (the mean period), to turn sample counts into cost-weighted counts.
    let per = |s: u64, c: u64| if s == 0 { 0.0 } else { c as f64 / s as f64 };
    let (p1, p2) = (per(s1, cost1), per(s2, cost2));
    let period = if p1 > 0.0 && p2 > 0.0 {
        (p1 + p2) / 2.0
    } else {
        p1.max(p2)
    };
    if period == 0.0 {
        return 1.0;
    }
    let (x1, x2) = (cost1 as f64 / period, cost2 as f64 / period);
    let z = (x2 - x1).abs() / (x1 + x2).sqrt();
    2.0 * normal_upper_tail(z)
}

/// P(T > t) for Student's t with `df` degrees of freedom (`df` may be fractional):
/// `I_{df/(df+t²)}(df/2, 1/2) / 2`, the regularized incomplete beta function from `statrs`.
pub fn student_t_upper_tail(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    if df.is_nan() || df <= 0.0 {
        // No degrees of freedom: nothing can be told apart from noise.
        return 0.5;
    }
    let x = (df / (df + t * t)).clamp(0.0, 1.0);
    let tail = statrs::function::beta::checked_beta_reg(df / 2.0, 0.5, x).unwrap_or(1.0);
    let half = 0.5 * tail;
    if t >= 0.0 { half } else { 1.0 - half }
}

/// P(Z > z) for a standard normal Z, via the complementary error function.
fn normal_upper_tail(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(z / std::f64::consts::SQRT_2)
}

// ---------------------------------------------------------------------------------------
// The differential flame graph

/// Writes the diff's flame graph: the shape is `new`'s stacks (folded lines `a;b;c
/// count`); the frames of the functions `report` flags are coloured by their verdict (red
/// regressed, blue improved, orange inconclusive), every other frame grey, so the picture
/// shows exactly what the table says. Each flagged frame's tooltip gives its row.
pub fn write_verdict_svg(
    report: &DiffReport,
    new: &[String],
    title: &str,
    w: impl io::Write,
) -> io::Result<()> {
    use inferno::flamegraph::color::{Color, PaletteMap};
    let mut palette = PaletteMap::default();
    let grey = Color {
        r: 0xd8,
        g: 0xd8,
        b: 0xd8,
    };
    // Every frame name in the graph: grey unless its row is flagged.
    for line in new {
        let stack = line.rsplit_once(' ').map_or(line.as_str(), |(s, _)| s);
        for f in stack.split(';') {
            palette.insert(f, grey);
        }
    }
    let mut attrs = String::new();
    for row in report.flagged().filter(|r| r.key != TOTAL_KEY) {
        let color = match row.verdict {
            Verdict::Regressed => Color {
                r: 0xe0,
                g: 0x30,
                b: 0x30,
            },
            Verdict::Improved => Color {
                r: 0x40,
                g: 0x70,
                b: 0xe0,
            },
            _ => Color {
                r: 0xf0,
                g: 0xa0,
                b: 0x30,
            },
        };
        let name = row.key.replace([';', '\n'], ":");
        palette.insert(&name, color);
        let _ = writeln!(
            attrs,
            "{name}\ttitle={name}: {} {} ({} → {} per run)",
            row.verdict.as_str(),
            fmt_change(row.relative_change),
            fmt_cost(&report.unit, report.exact, row.base),
            fmt_cost(&report.unit, report.exact, row.new),
        );
    }
    let mut o = inferno::flamegraph::Options::default();
    o.title = title.to_string();
    o.subtitle = Some(format!(
        "verdict {}: red regressed, blue improved, orange inconclusive, grey unchanged",
        report.verdict.as_str().to_uppercase()
    ));
    o.count_name = "samples".to_string();
    o.deterministic = true;
    o.palette_map = Some(&mut palette);
    o.func_frameattrs =
        inferno::flamegraph::FuncFrameAttrsMap::from_reader(io::BufReader::new(attrs.as_bytes()))?;
    let mut folded = new.join("\n");
    folded.push('\n');
    inferno::flamegraph::from_reader(&mut o, folded.as_bytes(), w)
}

// ---------------------------------------------------------------------------------------
// Rendering

/// A cost in its unit: times in ns/µs/ms/s, counts exact (exact data) or with SI
/// prefixes.
pub fn fmt_cost(unit: &str, exact: bool, v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if unit == "ns" {
        let (div, u) = if v >= 1e9 {
            (1e9, "s")
        } else if v >= 1e6 {
            (1e6, "ms")
        } else if v >= 1e3 {
            (1e3, "µs")
        } else {
            (1.0, "ns")
        };
        return format!("{:.3} {u}", v / div);
    }
    if exact || v < 1e4 {
        return format!("{v:.0}");
    }
    let (div, u) = if v >= 1e9 {
        (1e9, "G")
    } else if v >= 1e6 {
        (1e6, "M")
    } else {
        (1e3, "k")
    };
    format!("{:.3}{u}", v / div)
}

fn fmt_change(r: f64) -> String {
    if r.is_infinite() {
        "new".to_string()
    } else {
        format!("{:+.1}%", r * 100.0)
    }
}

fn fmt_cv(cv: Option<f64>) -> String {
    cv.map_or_else(String::new, |cv| format!(" ±{:.1}%", cv * 100.0))
}

fn unit_name(unit: &str) -> String {
    match unit {
        "ns" => "CPU time (cpu-clock sample periods)".to_string(),
        u => u.to_string(),
    }
}

/// The one-line verdict.
pub fn headline(report: &DiffReport, metric: &str) -> String {
    let count = |v: Verdict| report.flagged().filter(|r| r.verdict == v).count();
    let method = match report.method {
        Method::Exact => "exact counts".to_string(),
        Method::Welch => format!(
            "{} vs {} runs, Welch's t-test on per-run costs, family-wise alpha {} over the total and {} rows (Holm)",
            report.base_runs,
            report.new_runs,
            report.alpha,
            report.rows_tested.saturating_sub(1)
        ),
        Method::SingleRun => "one run per side: run-to-run noise unknown".to_string(),
    };
    let inconclusive = count(Verdict::Inconclusive);
    let inconclusive = if inconclusive > 0 {
        format!(", {inconclusive} inconclusive")
    } else {
        String::new()
    };
    format!(
        "verdict: {} ({} regressed, {} improved{inconclusive}; metric {metric}, cost {}, threshold {:.1}%, {method})",
        report.verdict.as_str().to_uppercase(),
        count(Verdict::Regressed),
        count(Verdict::Improved),
        unit_name(&report.unit),
        report.threshold * 100.0
    )
}

/// The total line: cost per run on each side and its change.
fn total_line(report: &DiffReport) -> String {
    let t = &report.total;
    format!(
        "total cost per run: base {}{}, new {}{} ({}, {})",
        fmt_cost(&report.unit, report.exact, t.base),
        fmt_cv(t.base_cv),
        fmt_cost(&report.unit, report.exact, t.new),
        fmt_cv(t.new_cv),
        fmt_change(t.relative_change),
        t.verdict.as_str()
    )
}

fn fmt_p(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_string(), |p| format!("{p:.2e}"))
}

/// Plain text: the verdict, the total, then up to `limit` rows, each starting with its
/// verdict word (the total is the first row, `[total]`).
pub fn render_text(report: &DiffReport, metric: &str, limit: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", headline(report, metric));
    let _ = writeln!(out, "{}", total_line(report));
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:>12} {:>12} {:>9} {:>7} {:>7} {:>9}  name",
        "verdict", "base/run", "new/run", "change", "base%", "new%", "p"
    );
    for row in std::iter::once(&report.total).chain(report.rows.iter().take(limit)) {
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>12} {:>9} {:>7} {:>7} {:>9}  {}",
            row.verdict.as_str(),
            fmt_cost(&report.unit, report.exact, row.base),
            fmt_cost(&report.unit, report.exact, row.new),
            fmt_change(row.relative_change),
            format!("{:.1}", row.base_share * 100.0),
            format!("{:.1}", row.new_share * 100.0),
            fmt_p(row.p_value),
            row.key
        );
    }
    if report.rows.len() > limit {
        let _ = writeln!(out, "… {} more rows", report.rows.len() - limit);
    }
    out
}

/// Markdown for CI logs, pull-request comments and job summaries: the verdict on top,
/// the total, then the rows (flagged rows first).
pub fn render_markdown(report: &DiffReport, metric: &str, limit: usize) -> String {
    let mut out = String::new();
    let icon = match report.verdict {
        Verdict::Regressed => "❌",
        Verdict::Inconclusive | Verdict::NotEnoughData => "⚠️",
        Verdict::Improved | Verdict::Unchanged => "✅",
    };
    let _ = writeln!(
        out,
        "### {icon} lbrprof diff: {}\n",
        headline(report, metric)
    );
    let _ = writeln!(out, "{}\n", total_line(report));
    for note in &report.notes {
        let _ = writeln!(out, "> note: {note}\n");
    }
    let _ = writeln!(
        out,
        "| verdict | base/run | new/run | change | base share | new share | p | {metric} |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    for row in std::iter::once(&report.total).chain(report.rows.iter().take(limit)) {
        let _ = writeln!(
            out,
            "| {} | {}{} | {}{} | {} | {:.1}% | {:.1}% | {} | `{}` |",
            row.verdict.as_str(),
            fmt_cost(&report.unit, report.exact, row.base),
            fmt_cv(row.base_cv),
            fmt_cost(&report.unit, report.exact, row.new),
            fmt_cv(row.new_cv),
            fmt_change(row.relative_change),
            row.base_share * 100.0,
            row.new_share * 100.0,
            fmt_p(row.p_value),
            row.key.replace('|', "\\|").replace('`', "'")
        );
    }
    if report.rows.len() > limit {
        let _ = writeln!(
            out,
            "\n_{} more rows not shown._",
            report.rows.len() - limit
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic PRNG (SplitMix64) so the statistical tests are repeatable.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        /// A standard normal draw (Box–Muller).
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.unit().max(1e-300), self.unit());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    /// One sampled run: `n` samples of period 1000 drawn from `weights`, the whole run
    /// scaled by `speed` (run-to-run variation: every function slower or faster at once).
    fn run(rng: &mut Rng, weights: &[f64], n: f64) -> (RunCounts, BTreeMap<String, u64>) {
        let sum: f64 = weights.iter().sum();
        let mut rows = BTreeMap::new();
        let mut samples = BTreeMap::new();
        let mut total = 0;
        for (i, w) in weights.iter().enumerate() {
            // Poisson-ish sample count (normal approximation) of this function.
            let mean = n * w / sum;
            let s = (mean + mean.sqrt() * rng.normal()).round().max(0.0) as u64;
            rows.insert(format!("fn{i:02}"), s * 1000);
            samples.insert(format!("fn{i:02}"), s);
            total += s * 1000;
        }
        (RunCounts { total, rows }, samples)
    }

    /// A side of `runs` runs; each run's length varies by `cv` (run-to-run noise).
    fn side(rng: &mut Rng, weights: &[f64], runs: usize, n: f64, cv: f64) -> Counts {
        let mut c = Counts {
            unit: "ns".into(),
            ..Counts::default()
        };
        for _ in 0..runs {
            let scale = 1.0 + cv * rng.normal();
            let (r, s) = run(rng, weights, n * scale);
            for (k, v) in s {
                *c.samples.entry(k).or_default() += v;
                c.total_samples += v;
            }
            c.runs.push(r);
        }
        c
    }

    fn weights() -> Vec<f64> {
        (0..12).map(|i| 0.7f64.powi(i)).collect()
    }

    /// A record --vm recording's guest snapshots weigh 1 each, not the host event's unit:
    /// they are neither rows nor part of the total of a host-sample diff.
    #[test]
    fn guest_snapshots_stay_out_of_host_sample_costs() {
        use crate::aggregate::{AggregateOptions, Aggregator};
        use crate::symbols::{NoSymbols, SymbolTable};
        use lbrprof_data::model::{CpuMode, Event, HostSample};
        let mut a = Aggregator::new(AggregateOptions {
            run_starts: vec![0, 100],
            ..AggregateOptions::default()
        });
        for time_ns in [10, 110] {
            a.add(&Event::Sample(HostSample {
                time_ns,
                pid: 1,
                tid: 1,
                period: 1_000_000,
                ip: 0x1000,
                mode: CpuMode::User,
                ..HostSample::default()
            }));
            let mut snap = crate::lbr::tests::snapshot(0, &[(0x400020, 0x400200, 0)]);
            snap.host_time_ns = time_ns;
            snap.guest_ip = 0x400100;
            a.add(&Event::Snapshot(snap));
        }
        let p = a.finish();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let rep = crate::report::build_for_test(&p, &syms);
        assert!(rep.functions.iter().any(|f| f.side == Side::Guest));
        let whole = counts(&rep, Metric::SelfSamples, false);
        assert_eq!(whole.runs[0].total, 2_000_000);
        assert_eq!(whole.runs[0].rows.values().sum::<u64>(), 2_000_000);
        let runs = run_counts(&p, &syms, Metric::SelfSamples, &whole).unwrap();
        assert_eq!(runs.runs.len(), 2);
        for r in &runs.runs {
            assert_eq!(
                (r.total, r.rows.values().sum::<u64>()),
                (1_000_000, 1_000_000)
            );
        }
    }

    #[test]
    fn special_functions_match_known_values() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-12);
        assert!((normal_upper_tail(1.959_964) - 0.025).abs() < 1e-6);
        // Student's t quantiles (tables): t_{0.975, 4} = 2.776, t_{0.995, 8} = 3.355,
        // t_{0.95, 1} = 6.314.
        assert!((student_t_upper_tail(2.776_445, 4.0) - 0.025).abs() < 1e-6);
        assert!((student_t_upper_tail(3.355_387, 8.0) - 0.005).abs() < 1e-6);
        assert!((student_t_upper_tail(6.313_752, 1.0) - 0.05).abs() < 1e-6);
        assert!((student_t_upper_tail(-2.776_445, 4.0) - 0.975).abs() < 1e-6);
        assert!((student_t_upper_tail(0.0, 3.5) - 0.5).abs() < 1e-12);
        // Degenerate degrees of freedom give "no evidence", not a panic.
        assert_eq!(student_t_upper_tail(1.0, 0.0), 0.5);
        assert_eq!(student_t_upper_tail(1.0, f64::NAN), 0.5);
    }

    #[test]
    fn welch_matches_a_worked_example() {
        // Means 12 and 16, variances 2.5 and 10: t = 4 / sqrt(0.5 + 2) = 2.5298,
        // df = 2.5² / (0.5²/4 + 2²/4) = 5.882.
        let p = welch_p(&[10, 11, 12, 13, 14], &[12, 14, 16, 18, 20], 0.0);
        let want = 2.0 * student_t_upper_tail(4.0 / 2.5f64.sqrt(), 6.25 / 1.0625);
        assert!((p - want).abs() < 1e-12 && (0.04..0.05).contains(&p), "{p}");
        assert_eq!(welch_p(&[5, 5], &[5, 5], 0.0), 1.0);
        assert_eq!(welch_p(&[5, 5], &[6, 6], 0.0), 0.0);
        assert_eq!(welch_p(&[5], &[6], 0.0), 1.0);
        // Whole samples of period 1000: runs that all got 6 vs 7 samples are not proof.
        let p = welch_p(&[6000; 5], &[7000; 5], 1000.0 * 1000.0);
        assert!(p > 0.05, "{p}");
    }

    /// Two sides of 5 runs with 3% run-to-run noise: identical programs rarely get any
    /// verdict, whatever the direction.
    #[test]
    fn a_a_comparisons_rarely_get_a_verdict() {
        let mut rng = Rng(1);
        let w = weights();
        let trials = 400;
        let mut alarms = 0;
        for _ in 0..trials {
            let a = side(&mut rng, &w, 5, 5_000.0, 0.03);
            let b = side(&mut rng, &w, 5, 5_000.0, 0.03);
            let r = compare(&a, &b, &DiffOptions::default());
            assert_eq!(r.method, Method::Welch);
            if r.verdict != Verdict::Unchanged {
                alarms += 1;
            }
        }
        let rate = alarms as f64 / trials as f64;
        eprintln!("A/A verdict rate: {rate} over {trials} pairs");
        assert!(rate <= 0.01, "A/A verdict rate {rate}");
    }

    #[test]
    fn a_uniform_slowdown_is_a_regression_of_the_total() {
        let mut rng = Rng(2);
        let w = weights();
        let mut caught = 0;
        for _ in 0..100 {
            // 2% run-to-run noise and 20,000 samples a run (about 20 s at 999 Hz).
            let a = side(&mut rng, &w, 5, 20_000.0, 0.02);
            let b = side(&mut rng, &w, 5, 22_000.0, 0.02); // +10% everywhere
            let r = compare(&a, &b, &DiffOptions::default());
            if r.verdict == Verdict::Regressed && r.total.verdict == Verdict::Regressed {
                caught += 1;
            }
        }
        assert!(caught >= 95, "caught {caught} of 100");
    }

    #[test]
    fn one_slower_function_is_the_only_one_flagged() {
        let mut rng = Rng(3);
        let w = weights();
        let mut slow = w.clone();
        slow[1] *= 1.3;
        let a = side(&mut rng, &w, 5, 20_000.0, 0.02);
        // The same sample rate: the slower function adds samples.
        let n = 20_000.0 * slow.iter().sum::<f64>() / w.iter().sum::<f64>();
        let b = side(&mut rng, &slow, 5, n, 0.02);
        let r = compare(&a, &b, &DiffOptions::default());
        assert_eq!(r.verdict, Verdict::Regressed);
        let flagged: Vec<&str> = r
            .flagged()
            .filter(|r| r.key != TOTAL_KEY)
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(flagged, ["fn01"], "{}", render_text(&r, "self", 20));
        assert!(render_text(&r, "self", 20).contains("\nregressed "));
    }

    #[test]
    fn single_runs_never_claim_unchanged_over_a_moved_total() {
        let one = |total: u64, a: u64| {
            Counts::single(
                total,
                [("a".to_string(), a), ("b".to_string(), total - a)].into(),
                false,
                "ns",
            )
        };
        // +20% everywhere: shares do not move, the cost does.
        let r = compare(&one(1000, 500), &one(1200, 600), &DiffOptions::default());
        assert_eq!(r.method, Method::SingleRun);
        assert_eq!(r.verdict, Verdict::Inconclusive);
        assert_eq!(r.verdict.exit_code(), 3);
        assert_eq!(r.total.verdict, Verdict::Inconclusive);
        assert!(r.notes[0].contains("one run per side"));
        // Within the threshold and the noise: unchanged.
        let r = compare(&one(1000, 500), &one(1010, 505), &DiffOptions::default());
        assert_eq!(r.verdict, Verdict::Unchanged);
        assert_eq!(r.verdict.exit_code(), 0);
    }

    #[test]
    fn exact_counts_compare_without_noise() {
        let base = Counts::single(
            1000,
            [("a".to_string(), 600), ("b".to_string(), 400)].into(),
            true,
            "instructions",
        );
        let same = compare(&base, &base, &DiffOptions::default());
        assert_eq!(same.verdict, Verdict::Unchanged);
        assert_eq!(same.method, Method::Exact);
        assert!(same.rows.iter().all(|r| r.relative_change == 0.0));
        let mut slower = base.clone();
        slower.runs[0].rows.insert("b".into(), 421); // +5.25%
        slower.runs[0].total = 1021;
        let report = compare(&base, &slower, &DiffOptions::default());
        assert_eq!(report.verdict, Verdict::Regressed);
        assert_eq!(report.rows[0].key, "b");
        assert_eq!(report.rows[0].verdict, Verdict::Regressed);
        assert!(render_text(&report, "instructions", 5).contains(" 400 "));
        let mut within = base.clone();
        within.runs[0].rows.insert("b".into(), 419); // +4.75%, under the threshold
        assert_eq!(
            compare(&base, &within, &DiffOptions::default()).verdict,
            Verdict::Unchanged
        );
        let mut faster = base.clone();
        faster.runs[0].rows.insert("a".into(), 500);
        faster.runs[0].total = 900;
        let r = compare(&base, &faster, &DiffOptions::default());
        assert_eq!((r.verdict, r.verdict.exit_code()), (Verdict::Improved, 0));
    }

    #[test]
    fn small_rows_are_not_guessed_at() {
        let a = Counts::single(
            40,
            [("tiny".to_string(), 10), ("other".to_string(), 30)].into(),
            false,
            "ns",
        );
        let mut b = a.clone();
        b.runs[0].rows.insert("tiny".into(), 20);
        let report = compare(&a, &b, &DiffOptions::default());
        let tiny = report.rows.iter().find(|r| r.key == "tiny").unwrap();
        assert_eq!(tiny.verdict, Verdict::NotEnoughData);
        assert_ne!(report.verdict, Verdict::Regressed);
    }

    #[test]
    fn identical_inputs_render_identically() {
        let mut rng = Rng(9);
        let a = side(&mut rng, &weights(), 3, 1_000.0, 0.02);
        let r1 = compare(&a, &a.clone(), &DiffOptions::default());
        let r2 = compare(&a, &a.clone(), &DiffOptions::default());
        assert_eq!(r1.verdict, Verdict::Unchanged);
        assert_eq!(render_text(&r1, "self", 20), render_text(&r2, "self", 20));
        let md = render_markdown(&r1, "self", 20);
        assert!(md.contains("| unchanged |"), "{md}");
    }

    #[test]
    fn the_flame_graph_colours_the_flagged_rows() {
        let base = Counts::single(
            1000,
            [("a".to_string(), 500), ("b".to_string(), 500)].into(),
            true,
            "instructions",
        );
        let mut new = base.clone();
        new.runs[0].rows.insert("b".into(), 800);
        new.runs[0].total = 1300;
        let r = compare(&base, &new, &DiffOptions::default());
        let mut svg = Vec::new();
        write_verdict_svg(&r, &["main;a 5".into(), "main;b 8".into()], "t", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        // b's frame is red, a's and main's grey.
        assert!(svg.contains("b: regressed +60.0%"), "{svg}");
        assert!(svg.contains("rgb(224,48,48)"), "{svg}");
        assert_eq!(svg.matches("rgb(224,48,48)").count(), 1, "{svg}");
        assert!(svg.contains("rgb(216,216,216)"), "{svg}");
    }
}
