//! End-to-end tests of `lbrprof diff`: exit codes 0/1/2, the regressed function named,
//! Markdown/JSON output and the differential flame graph.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn build_workload(dir: &Path) -> PathBuf {
    let exe = dir.join("two_phases");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/two_phases.c");
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc failed");
    exe
}

fn record(exe: &Path, out: &Path, a: &str, b: &str) {
    let o = common::lbrprof()
        .args(["record", "-o"])
        .arg(out)
        .arg("--")
        .arg(exe)
        .args([a, b])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn diff_gives_ci_verdicts_on_real_recordings() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_workload(dir.path());
    let base = dir.path().join("base.data");
    let again = dir.path().join("again.data");
    let slow = dir.path().join("slow.data");
    record(&exe, &base, "40000000", "40000000");
    record(&exe, &again, "40000000", "40000000");
    record(&exe, &slow, "40000000", "80000000");

    // A/A: the same program twice is not a regression.
    let o = common::lbrprof()
        .arg("diff")
        .arg(&base)
        .arg(&again)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.starts_with("verdict: UNCHANGED"), "{text}");

    // work_b doing twice the work is, and the report names it.
    let svg = dir.path().join("diff.svg");
    let o = common::lbrprof()
        .arg("diff")
        .arg(&base)
        .arg(&slow)
        .args(["--format", "markdown", "--svg"])
        .arg(&svg)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{md}");
    assert!(md.contains("REGRESSED"), "{md}");
    let regressed: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| regressed |"))
        .collect();
    assert_eq!(regressed.len(), 1, "{md}");
    assert!(regressed[0].contains("`work_b`"), "{md}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("work_b"),
        "bad SVG"
    );

    // JSON names the schema and carries the verdict.
    let o = common::lbrprof()
        .arg("diff")
        .arg(&base)
        .arg(&slow)
        .args(["--format", "json", "--metric", "total"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["schema"], "lbrprof-diff");
    assert_eq!(doc["report"]["verdict"], "regressed");
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
    let first = diff(&a, &b);
    let text = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(first.status.code(), Some(0), "{text}");
    assert!(text.contains("exact counts"), "{text}");
    for row in text.lines().filter(|l| l.starts_with("unchanged")) {
        assert!(row.contains("+0.0%"), "A/A row moved: {row}");
    }
    // Identical inputs give identical output, byte for byte.
    assert_eq!(diff(&a, &b).stdout, first.stdout);
    let o = diff(&a, &slow);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let top = text.lines().find(|l| l.starts_with("regressed")).unwrap();
    assert!(top.ends_with("branchy::on_taken"), "{text}");
}
