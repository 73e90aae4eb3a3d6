//! End-to-end tests of `lbrprof diff`: verdicts and exit codes (0 no regression, 1
//! regression, 2 error, 3 inconclusive) on real recordings of repeated runs and of
//! single runs, exact-mode guest recordings, Markdown/JSON output and the flame graph.
//!
//! Sampled recordings are real, so the changes they test are wide (a function doing twice
//! the work, the whole program doing 1.6× the work) and the threshold is 20%: the
//! verdicts must hold on a loaded machine too. Identical inputs are made deterministic by
//! diffing one recording with itself, or by exact-mode guest recordings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// `four_work` arguments (millions of iterations of each of its four functions).
const BASE: [&str; 4] = ["60", "60", "60", "60"];

/// Runs per recording in the repeated-runs test.
const RUNS: u32 = 6;

struct Bench {
    dir: TempDir,
    exe: PathBuf,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let exe = common::build_workload(dir.path(), "four_work");
        Bench { dir, exe }
    }

    /// Records `four_work WORK` `repeat` times into NAME.
    fn record(&self, name: &str, repeat: u32, work: [&str; 4]) -> PathBuf {
        let out = self.dir.path().join(name);
        let o = common::lbrprof()
            .args([
                "record",
                "-F",
                "1999",
                "--repeat",
                &repeat.to_string(),
                "-o",
            ])
            .arg(&out)
            .arg("--")
            .arg(&self.exe)
            .args(work)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    }
}

fn diff(base: &Path, new: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let o: Output = common::lbrprof()
        .arg("diff")
        .arg(base)
        .arg(new)
        .args(["--threshold", "20%"])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    (o.status.code(), format!("{text}{err}"))
}

/// The rows of a text diff flagged with `verdict` (name last), total included.
fn rows_with<'a>(text: &'a str, verdict: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{verdict} ")))
        .map(|l| l.rsplit(' ').next().unwrap_or(""))
        .collect()
}

#[test]
fn repeated_runs_give_verdicts_on_costs() {
    if !common::perf_available() {
        return;
    }
    let b = Bench::new();
    // Six runs a side: with four, a +60% row on a loaded machine (other tests of this
    // binary run beside it on two cores) could land just above Holm's threshold.
    let base = b.record("base.data", RUNS, BASE);
    let uniform = b.record("uniform.data", RUNS, ["96", "96", "96", "96"]);
    let one = b.record("one.data", RUNS, ["60", "120", "60", "60"]);
    let faster = b.record("faster.data", RUNS, ["60", "60", "60", "15"]);

    // The recording keeps its runs apart.
    let o = common::lbrprof().arg("info").arg(&base).output().unwrap();
    let info = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && info.contains(&format!("\nrun {RUNS} ")),
        "{info}"
    );
    assert!(!info.contains(&format!("\nrun {} ", RUNS + 1)), "{info}");

    // Identical inputs: unchanged, exit 0, every row +0.0%.
    let (code, text) = diff(&base, &base, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("verdict: UNCHANGED"), "{text}");
    assert!(
        text.contains(&format!("{RUNS} vs {RUNS} runs, Welch's t-test")),
        "{text}"
    );
    for row in text.lines().filter(|l| l.starts_with("unchanged ")) {
        assert!(row.contains("+0.0%"), "A/A row moved: {row}");
    }

    // Everything 1.6× slower: the shares do not move, the costs do.
    let (code, text) = diff(&base, &uniform, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.starts_with("verdict: REGRESSED"), "{text}");
    let regressed = rows_with(&text, "regressed");
    assert!(regressed.contains(&"[total]"), "{text}");
    for f in ["work_a", "work_b", "work_c", "work_d"] {
        assert!(regressed.contains(&f), "{f} not flagged:\n{text}");
    }

    // One function of four twice as slow: only it (and not the others) is flagged.
    let (code, text) = diff(&base, &one, &[]);
    assert_eq!(code, Some(1), "{text}");
    let flagged: Vec<&str> = ["regressed", "improved", "inconclusive"]
        .iter()
        .flat_map(|v| rows_with(&text, v))
        .filter(|r| *r != "[total]")
        .collect();
    assert_eq!(flagged, ["work_b"], "{text}");

    // Faster: improved, exit 0.
    let (code, text) = diff(&base, &faster, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("verdict: IMPROVED"), "{text}");
    assert_eq!(
        rows_with(&text, "improved")
            .into_iter()
            .filter(|r| *r != "[total]")
            .collect::<Vec<_>>(),
        ["work_d"],
        "{text}"
    );
    assert!(rows_with(&text, "regressed").is_empty(), "{text}");

    // Markdown for a job summary, and the flame graph colouring exactly the flagged row.
    let svg = b.dir.path().join("diff.svg");
    let (code, md) = diff(
        &base,
        &one,
        &["--format", "markdown", "--svg", svg.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{md}");
    assert!(
        md.starts_with("### ❌ lbrprof diff: verdict: REGRESSED"),
        "{md}"
    );
    let regressed: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| regressed |") && !l.contains("`[total]`"))
        .collect();
    assert_eq!(regressed.len(), 1, "{md}");
    assert!(regressed[0].contains("`work_b`"), "{md}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<?xml"), "bad SVG");
    assert!(svg.contains("work_b: regressed +"), "work_b not coloured");
    for f in ["work_a", "work_c", "work_d"] {
        assert!(!svg.contains(&format!("{f}: ")), "{f} coloured");
    }

    // JSON carries the per-run costs, the verdict and the exit status.
    let (code, json) = diff(&base, &uniform, &["--format", "json"]);
    assert_eq!(code, Some(1));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["schema"], "lbrprof-diff");
    assert_eq!(doc["exit_status"], 1);
    assert_eq!(doc["report"]["verdict"], "regressed");
    assert_eq!(doc["report"]["method"], "welch");
    assert_eq!(doc["report"]["unit"], "ns");
    assert_eq!(
        doc["report"]["total"]["base_runs"]
            .as_array()
            .unwrap()
            .len(),
        RUNS as usize
    );
}

#[test]
fn one_run_per_side_is_inconclusive_not_unchanged() {
    if !common::perf_available() {
        return;
    }
    let b = Bench::new();
    let base = b.record("base.data", 1, BASE);
    let uniform = b.record("uniform.data", 1, ["96", "96", "96", "96"]);
    // A uniform slowdown moves no share; one run cannot separate it from noise.
    let (code, text) = diff(&base, &uniform, &[]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.starts_with("verdict: INCONCLUSIVE"), "{text}");
    assert!(text.contains("one run per side"), "{text}");
    assert!(
        rows_with(&text, "inconclusive").contains(&"[total]"),
        "{text}"
    );
    assert!(rows_with(&text, "regressed").is_empty(), "{text}");
    // A file against itself: nothing moved.
    let (code, text) = diff(&base, &base, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("verdict: UNCHANGED"), "{text}");
}

#[test]
fn record_repeat_rejects_what_it_cannot_repeat() {
    let o = common::run(&["record", "--repeat", "0", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    let o = common::run(&["record", "--repeat", "3", "-p", "1"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--repeat"), "{err}");
    let o = common::run(&["record", "--repeat", "3", "--vm", "builtin:branchy"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--repeat is for host commands"), "{err}");
}

#[test]
fn record_repeat_stops_at_a_failing_run_and_keeps_the_rest() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fail.data");
    let o = common::lbrprof()
        .args(["record", "--repeat", "3", "-o"])
        .arg(&out)
        .args(["--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary = lbrprof_data::recording::read_summary(&out)
        .unwrap()
        .unwrap();
    assert_eq!(summary.runs.len(), 1, "{summary:?}");
    assert_eq!(summary.runs[0].exit_status, Some(7));
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("stopped repeating after run 1 of 3")),
        "{summary:?}"
    );
}

#[test]
fn diff_bad_input_exits_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.data");
    let o = common::run(&["diff", missing.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("lbrprof: error: base recording: cannot read"),
        "{err}"
    );

    let junk = dir.path().join("junk.data");
    std::fs::write(&junk, b"not a recording at all").unwrap();
    let o = common::run(&["diff", junk.to_str().unwrap(), junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));

    let o = common::run(&["diff", "a", "b", "--threshold", "lots"]);
    assert_eq!(o.status.code(), Some(2));

    let o = common::run(&["diff", "a", "b", "--metric", "edges", "--svg", "x.svg"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--svg shows functions"), "{err}");
}

#[test]
fn diff_of_empty_recordings_exits_2() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.data");
    // A sleeping process gets no cpu-clock samples.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let o = common::lbrprof()
        .args(["record", "--duration", "0.3", "-o"])
        .arg(&empty)
        .args(["-p", &sleeper.id().to_string()])
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = common::lbrprof()
        .arg("diff")
        .arg(&empty)
        .arg(&empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("has no samples to compare"), "{err}");
}

#[test]
fn exact_mode_guest_recordings_compare_without_noise() {
    if !common::kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rec = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let o = common::lbrprof()
            .args([
                "record",
                "--vm",
                "builtin:branchy",
                "--lbr-mode",
                "exact",
                "-o",
            ])
            .arg(&out)
            // Enough iterations that on_taken's growth (which scales with n) outweighs
            // the constant start-up and formatting code, whose share depends on where the
            // snapshots happen to land (at n=2000 a formatting function could outrank it).
            .args(["--", "n=6000"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let a = rec("a.data", &[]);
    let b = rec("b.data", &[]);
    let slow = rec("slow.data", &["pct=60"]);
    let diff = |x: &Path, y: &Path| {
        common::lbrprof()
            .args(["diff", "--metric", "instructions"])
            .arg(x)
            .arg(y)
            .output()
            .unwrap()
    };
    // Identical: unchanged, exit 0, with the exact numbers.
    let first = diff(&a, &b);
    let text = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(first.status.code(), Some(0), "{text}");
    assert!(text.starts_with("verdict: UNCHANGED"), "{text}");
    assert!(text.contains("exact counts"), "{text}");
    for row in text.lines().filter(|l| l.starts_with("unchanged")) {
        assert!(row.contains("+0.0%"), "A/A row moved: {row}");
    }
    // Identical inputs give identical output, byte for byte.
    assert_eq!(diff(&a, &b).stdout, first.stdout);
    // Slower: a verdict with no statistics, the exact counts shown.
    let o = diff(&a, &slow);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let top = text
        .lines()
        .find(|l| l.starts_with("regressed") && !l.ends_with("[total]"))
        .unwrap();
    assert!(top.ends_with("branchy::on_taken"), "{text}");
    // Two exact recordings compare their instruction counts unless told otherwise, as
    // iai-callgrind users expect; --metric self gives the host samples' CPU time.
    let o = common::lbrprof()
        .arg("diff")
        .arg(&a)
        .arg(&slow)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let default = String::from_utf8_lossy(&o.stdout);
    assert!(
        default.contains("metric instructions, cost instructions"),
        "{default}"
    );
    assert_eq!(default, text);
    let o = common::lbrprof()
        .args(["diff", "--metric", "self"])
        .arg(&a)
        .arg(&slow)
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&o.stdout);
    assert!(host.contains("metric self, cost CPU time"), "{host}");
}
