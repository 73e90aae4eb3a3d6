//! Profile-guided optimisation: the profiles `export` writes are the ones the optimisers
//! read, checked against the optimisers themselves (llvm-bolt-16 and its perf2bolt
//! aggregator).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn propeller() -> Option<(PathBuf, PathBuf)> {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return None;
    };
    Some((
        dir.join("propeller_sample.perfdata"),
        dir.join("propeller_sample.bin"),
    ))
}

fn tool(name: &str) -> bool {
    let ok = Command::new(name).arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: {name} is not installed (Debian bolt-16)");
    }
    ok
}

fn export_bolt(data: &Path, out: &Path, extra: &[&str]) -> String {
    let dir = data.parent().unwrap().to_str().unwrap();
    let mut a = vec![
        "export",
        "--bolt",
        "-i",
        data.to_str().unwrap(),
        "--symfs",
        dir,
        "--kallsyms",
        "/dev/null",
        "-o",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    let o = common::run(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().collect();
    v.sort_unstable();
    v
}

/// What llvm-bolt-16 says about a profile: (functions with profile, stale warning line).
fn bolt_verdict(bin: &Path, fdata: &Path, dir: &Path) -> (String, Option<String>) {
    let out = Command::new("llvm-bolt-16")
        .arg(bin)
        .arg(format!("-data={}", fdata.display()))
        .arg("-o")
        .arg(dir.join("bolted"))
        .arg("-reorder-blocks=ext-tsp")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "llvm-bolt-16 failed: {text}");
    let profiled = text
        .lines()
        .find(|l| l.contains("have non-empty execution profile"))
        .unwrap_or_else(|| panic!("no profile summary from llvm-bolt-16: {text}"))
        .to_owned();
    let stale = text
        .lines()
        .find(|l| l.contains("samples in the binary") && l.contains("stale"))
        .map(str::to_owned);
    (profiled, stale)
}

/// `export --bolt` on the propeller fixture writes exactly what perf2bolt writes for it
/// (`llvm-bolt-16 -aggregate-only -p`, which runs `perf script` itself), line for line:
/// the same taken branches and the same fall-through edges between BOLT's basic blocks.
#[test]
fn bolt_export_equals_perf2bolt_on_the_propeller_fixture() {
    let Some((data, bin)) = propeller() else {
        return;
    };
    if !tool("llvm-bolt-16") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ours = export_bolt(&data, &tmp.path().join("ours.fdata"), &[]);
    let theirs_path = tmp.path().join("perf2bolt.fdata");
    let out = Command::new("llvm-bolt-16")
        .arg("-aggregate-only")
        .arg("-p")
        .arg(&data)
        .arg(&bin)
        .arg("-o")
        .arg(&theirs_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "perf2bolt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = std::fs::read_to_string(&theirs_path).unwrap();
    // perf2bolt writes in hash order; ours is sorted.
    assert_eq!(sorted_lines(&ours), sorted_lines(&theirs));
    // The lines the block-based fall-throughs add over "a conditional not taken":
    // a block falling into a join label, and a jump to the next instruction crossed by
    // a trace (the 173 traces from the loop head to the back edge).
    for l in [
        "1 main 8b 1 main 90 0 6553",
        "1 compute_flag 29 1 compute_flag 30 0 13855",
        "1 main e4 1 main e9 0 22153",
    ] {
        assert!(ours.lines().any(|x| x == l), "{l} missing: {ours}");
    }
}

/// llvm-bolt-16 reads the export and finds a valid profile for both hot functions; the
/// same check flags a profile with one impossible fall-through as stale.
#[test]
fn llvm_bolt_finds_no_stale_profile_in_the_export() {
    let Some((data, bin)) = propeller() else {
        return;
    };
    if !tool("llvm-bolt-16") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fdata = tmp.path().join("ours.fdata");
    let ours = export_bolt(&data, &fdata, &[]);
    let (profiled, stale) = bolt_verdict(&bin, &fdata, tmp.path());
    assert!(profiled.contains(" 2 out of "), "{profiled}");
    assert_eq!(stale, None);
    // compute_flag+0x1b is mid-block: no such fall-through exists.
    let bad = tmp.path().join("bad.fdata");
    std::fs::write(
        &bad,
        format!("{ours}1 compute_flag 1b 1 compute_flag 29 0 5000\n"),
    )
    .unwrap();
    let (_, stale) = bolt_verdict(&bin, &bad, tmp.path());
    assert!(stale.is_some_and(|s| s.contains("stale")));
}
