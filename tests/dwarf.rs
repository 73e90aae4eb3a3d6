//! `--call-graph dwarf` end to end, against perf on the same program.
//!
//! `tests/workloads/dwarf_deep.c` is built at test time with `gcc -O2
//! -fomit-frame-pointer`, as PIE and not, so frame pointers are useless: its hot code
//! runs 12 frames below `main`, partly inside libc (qsort's callback), a stripped
//! distribution library. For each build the share of samples whose call chain reaches
//! `main` must be within 3 points of what `perf record --call-graph dwarf` + `perf
//! script` give, both for lbrprof's own recording and for lbrprof reading perf's
//! perf.data; and a frame-pointer recording must fall far short of it (otherwise the
//! test would not tell the two apart).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn build(dir: &Path, pie: bool) -> PathBuf {
    build_named(
        dir,
        "dwarf_deep",
        if pie { "deep_pie" } else { "deep_nopie" },
        pie,
    )
}

fn build_named(dir: &Path, source: &str, name: &str, pie: bool) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workloads/{source}.c"));
    let exe = dir.join(name);
    let mut cmd = Command::new("gcc");
    cmd.args(["-O2", "-fomit-frame-pointer", "-g"]);
    if !pie {
        cmd.args(["-no-pie", "-fno-pie"]);
    }
    let status = cmd.arg("-o").arg(&exe).arg(&src).status().unwrap();
    assert!(status.success(), "gcc failed");
    exe
}

/// Samples in lbrprof's folded stacks, and those with `main` among their frames.
fn folded_main_share(data: &Path) -> (u64, u64) {
    let folded = common::ok(&["report", "-i", data.to_str().unwrap(), "--format", "folded"]);
    let (mut all, mut main) = (0, 0);
    for line in folded.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        all += n;
        if stack.split(';').any(|f| f == "main") {
            main += n;
        }
    }
    (main, all)
}

/// The same from `perf script`: one block per sample, one frame per line.
fn perf_main_share(data: &Path) -> (u64, u64) {
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut all, mut main) = (0, 0);
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        all += 1;
        let reaches = block
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("main"));
        main += u64::from(reaches);
    }
    (main, all)
}

fn pct((part, all): (u64, u64)) -> f64 {
    assert!(all >= 200, "too few samples: {all}");
    100.0 * part as f64 / all as f64
}

fn one_build(pie: bool) {
    if !common::perf_available() || !have("gcc") || !have("perf") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build(dir, pie);
    let exe_s = exe.to_str().unwrap();
    let rounds = "400";

    // perf's own DWARF recording and its answer.
    let perf_data = dir.join("perf.data");
    let status = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "--call-graph",
            "dwarf",
        ])
        .arg("-o")
        .arg(&perf_data)
        .args([exe_s, rounds])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let perf = pct(perf_main_share(&perf_data));
    // lbrprof reading perf's file.
    let ours_of_perf = pct(folded_main_share(&perf_data));
    // lbrprof's own recording.
    let data = dir.join("dwarf.data");
    let d = data.to_str().unwrap();
    common::ok(&[
        "record",
        "-o",
        d,
        "--event",
        "cpu-clock",
        "--call-graph",
        "dwarf",
        "--",
        exe_s,
        rounds,
    ]);
    let ours = pct(folded_main_share(&data));
    // Frame pointers on the same program.
    let fp_data = dir.join("fp.data");
    let f = fp_data.to_str().unwrap();
    common::ok(&[
        "record",
        "-o",
        f,
        "--event",
        "cpu-clock",
        "-g",
        "--",
        exe_s,
        rounds,
    ]);
    let fp = pct(folded_main_share(&fp_data));

    eprintln!(
        "pie={pie}: main reached by perf {perf:.1}%, lbrprof on perf.data {ours_of_perf:.1}%, \
         lbrprof --call-graph dwarf {ours:.1}%, lbrprof fp {fp:.1}%"
    );
    assert!(
        (ours_of_perf - perf).abs() <= 3.0,
        "perf.data: {ours_of_perf} vs perf {perf}"
    );
    assert!((ours - perf).abs() <= 3.0, "record: {ours} vs perf {perf}");
    assert!(perf > 90.0, "perf itself reached main in only {perf}%");
    assert!(
        fp < perf - 50.0,
        "frame pointers reached main in {fp}%: the test proves nothing"
    );

    // The recording says how the walks went, and that it is a dwarf recording.
    let info = common::ok(&["info", d]);
    assert!(info.contains("call graph dwarf"), "{info}");
    assert!(info.contains("user stacks unwound"), "{info}");

    // A stripped copy (strip -s keeps .eh_frame, as distributions ship binaries) is
    // unwound as deep: the same frames per sample on average, within 10%.
    let stripped = dir.join("stripped");
    std::fs::copy(&exe, &stripped).unwrap();
    assert!(
        Command::new("strip")
            .arg("-s")
            .arg(&stripped)
            .status()
            .unwrap()
            .success()
    );
    let sdata = dir.join("stripped.data");
    let s = sdata.to_str().unwrap();
    common::ok(&[
        "record",
        "-o",
        s,
        "--event",
        "cpu-clock",
        "--call-graph",
        "dwarf",
        "--",
        stripped.to_str().unwrap(),
        rounds,
    ]);
    let depth = |info: &str| -> f64 {
        let (head, _) = info.split_once(" frames on average").expect("unwind note");
        head.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (full, bare) = (depth(&info), depth(&common::ok(&["info", s])));
    assert!(full > 12.0, "{full} frames on average");
    assert!(
        (bare - full).abs() <= full * 0.1,
        "stripped {bare} vs {full} frames"
    );
}

#[test]
fn pie_without_frame_pointers_reaches_main_as_with_perf() {
    one_build(true);
}

#[test]
fn non_pie_without_frame_pointers_reaches_main_as_with_perf() {
    one_build(false);
}

/// Samples in the vDSO (clock_gettime) unwind with the vDSO's own CFI, read from
/// lbrprof's own copy of it (the same kernel), as perf does with its saved copy.
#[test]
fn vdso_samples_reach_main_as_with_perf() {
    if !common::perf_available() || !have("gcc") || !have("perf") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = build_named(dir, "dwarf_vdso", "vdso", true);
    let exe_s = exe.to_str().unwrap();
    let perf_data = dir.join("perf.data");
    let status = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "999",
            "--call-graph",
            "dwarf",
        ])
        .arg("-o")
        .arg(&perf_data)
        .args([exe_s, "15000000"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let perf = pct(perf_main_share(&perf_data));
    let ours_of_perf = pct(folded_main_share(&perf_data));
    let data = dir.join("dwarf.data");
    let d = data.to_str().unwrap();
    common::ok(&[
        "record",
        "-o",
        d,
        "--event",
        "cpu-clock",
        "--call-graph",
        "dwarf",
        "--",
        exe_s,
        "15000000",
    ]);
    let ours = pct(folded_main_share(&data));
    eprintln!(
        "vdso: main reached by perf {perf:.1}%, lbrprof on perf.data {ours_of_perf:.1}%, lbrprof {ours:.1}%"
    );
    assert!(
        (ours_of_perf - perf).abs() <= 3.0,
        "perf.data: {ours_of_perf} vs perf {perf}"
    );
    assert!((ours - perf).abs() <= 3.0, "record: {ours} vs perf {perf}");
}

#[test]
fn bad_stack_sizes_are_refused_with_one_line() {
    for bad in ["dwarf,100", "dwarf,70000", "dwarf,", "frames"] {
        let out = common::run(&["record", "--call-graph", bad, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--call-graph"), "{bad}: {err}");
    }
}
