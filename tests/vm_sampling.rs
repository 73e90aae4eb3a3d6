//! End-to-end tests of where sampled-mode guest LBR snapshots of `record --vm --
//! PROG` land: like host sampling, in proportion to the time the program spends in
//! each function, never in the VMM's own trap stubs, and in every process of a
//! pipeline that runs for a meaningful time. Programs built at test time
//! (`tests/workloads/time_split.c`) and on the machine (`gzip`, `sh`, `wc`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{kvm_available, lbrprof, perf_available};

/// The Linux personality's trap stubs (`vmm-shim/src/linux/abi.rs`: TRAP_AREA).
const STUB_PREFIX: &str = "0xfffffe";

fn build_time_split(dir: &Path) -> PathBuf {
    let exe = dir.join("time_split");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/time_split.c");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(src)
        .status()
        .expect("gcc is needed for the VM sampling tests");
    assert!(status.success(), "gcc failed on time_split.c");
    exe
}

/// `record -o DATA ARGS...` in `dir`; panics unless it succeeds.
fn record(dir: &Path, data: &str, args: &[&str]) {
    let out = lbrprof()
        .current_dir(dir)
        .args(["record", "-o", data])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "record {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (module, function, self samples) of one side ("host" or "guest") of a recording.
fn functions(dir: &Path, data: &str, side: &str) -> Vec<(String, String, u64)> {
    let out = lbrprof()
        .current_dir(dir)
        .args(["report", "--format", "json", "-i", data])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["side"] == side)
        .map(|f| {
            (
                f["module"].as_str().unwrap_or_default().to_owned(),
                f["function"].as_str().unwrap_or_default().to_owned(),
                f["self_samples"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Samples of `function`, and of all functions, in `module`.
fn share_in(fs: &[(String, String, u64)], module: &str, function: &str) -> (u64, u64) {
    let of = |pred: &dyn Fn(&(String, String, u64)) -> bool| {
        fs.iter().filter(|f| pred(f)).map(|f| f.2).sum::<u64>()
    };
    (
        of(&|f| f.0 == module && f.1 == function),
        of(&|f| f.0 == module),
    )
}

fn assert_no_stub(fs: &[(String, String, u64)]) {
    for (m, f, n) in fs {
        assert!(
            !f.starts_with(STUB_PREFIX),
            "{n} guest snapshots in the VMM's trap stub {m} {f}: {fs:?}"
        );
    }
}

#[test]
fn guest_snapshots_split_the_time_like_host_sampling() {
    if !kvm_available() || !perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_time_split(tmp.path());
    let exe = exe.to_str().unwrap();
    record(tmp.path(), "host.data", &["--", exe, "50"]);
    record(
        tmp.path(),
        "vm.data",
        &[
            "--vm",
            "--lbr-freq",
            "3000",
            "--lbr-overhead",
            "0",
            "--",
            exe,
            "50",
        ],
    );
    let host = functions(tmp.path(), "host.data", "host");
    let guest = functions(tmp.path(), "vm.data", "guest");
    assert_no_stub(&guest);
    let (h_hot, h_all) = share_in(&host, "time_split", "hot_part");
    let (g_hot, g_all) = share_in(&guest, "time_split", "hot_part");
    let (g_sys, _) = share_in(&guest, "time_split", "syscall_part");
    assert!(h_all >= 200, "host samples: {host:?}");
    assert!(g_all >= 100, "guest snapshots: {guest:?}");
    let host_pct = 100.0 * h_hot as f64 / h_all as f64;
    let guest_pct = 100.0 * g_hot as f64 / g_all as f64;
    eprintln!(
        "hot_part: host {host_pct:.1}% of {h_all} samples, guest {guest_pct:.1}% of {g_all} \
         snapshots ({g_sys} in syscall_part)"
    );
    assert!(
        (host_pct - guest_pct).abs() <= 10.0,
        "hot_part: host sampling {host_pct:.1}%, guest snapshots {guest_pct:.1}% \
         (guest {guest:?})"
    );
}

#[test]
fn every_process_of_a_pipeline_that_computes_gets_snapshots_none_in_stubs() {
    let gzip = Path::new("/usr/bin/gzip");
    if !kvm_available() || !perf_available() {
        return;
    }
    if !gzip.exists() {
        eprintln!("skipped: needs /usr/bin/gzip");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nums: String = (1..=400_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(tmp.path().join("nums.txt"), nums).unwrap();
    // gzip -9 of 2.7 MB computes for ~0.3 s natively (Debian's stripped binary); wc and
    // the shell mostly wait. A throttled rate (the budget stretches the intervals after
    // each window; at the default 10% a debug build's costly windows leave only a few).
    record(
        tmp.path(),
        "pipe.data",
        &[
            "--vm",
            "--lbr-overhead",
            "50",
            "--",
            "/bin/sh",
            "-c",
            "gzip -9 -c nums.txt | wc -c",
        ],
    );
    let guest = functions(tmp.path(), "pipe.data", "guest");
    assert_no_stub(&guest);
    let all: u64 = guest.iter().map(|f| f.2).sum();
    let in_gzip: u64 = guest.iter().filter(|f| f.0 == "gzip").map(|f| f.2).sum();
    eprintln!("{in_gzip} of {all} guest snapshots in gzip");
    // The budget sets the rate; before, gzip got few or none, or its share went to the
    // trap stubs.
    assert!(in_gzip >= 50, "gzip's snapshots: {guest:?}");
    assert!(
        in_gzip * 10 >= all * 8,
        "gzip did nearly all the computing, yet has {in_gzip} of {all} snapshots: {guest:?}"
    );
}
