//! Helpers shared by the end-to-end tests: running the binary, and the rules for tests
//! that need /dev/kvm or perf_event_open.
#![allow(dead_code)]

pub mod linux;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `lbrprof` binary under test.
pub fn lbrprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lbrprof"))
}

/// Run `lbrprof ARGS` and return its output.
pub fn run(args: &[&str]) -> Output {
    lbrprof()
        .args(args)
        .output()
        .expect("cannot start the lbrprof binary")
}

/// `../shared/fixtures/perfdata` next to the checkout, where CI keeps the real perf.data files.
pub fn perfdata_fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/perfdata");
    dir.is_dir().then_some(dir)
}

/// Whether a test needing a capability may run. Prints why it skips when it cannot; panics
/// instead of skipping when `LBRPROF_REQUIRE_<NAME>` is set (CI sets it on machines that
/// have the capability, so a skip there is a failure).
fn capability(name: &str, available: Result<(), String>) -> bool {
    match available {
        Ok(()) => true,
        Err(why) => {
            if std::env::var_os(format!("LBRPROF_REQUIRE_{name}")).is_some() {
                panic!("LBRPROF_REQUIRE_{name} is set but the test cannot run: {why}");
            }
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// True when /dev/kvm can be opened read-write.
pub fn kvm_available() -> bool {
    capability(
        "KVM",
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| format!("needs /dev/kvm ({e})")),
    )
}

/// True when perf_event_open is usable for sampling other processes (root or
/// perf_event_paranoid <= 1).
pub fn perf_available() -> bool {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = match paranoid {
        None => Err("needs perf_event_open (no /proc/sys/kernel/perf_event_paranoid)".into()),
        Some(p) if root || p <= 1 => Ok(()),
        Some(p) => Err(format!(
            "needs perf_event_open (perf_event_paranoid is {p}, not root)"
        )),
    };
    capability("PERF", ok)
}

/// Compiles `tests/workloads/NAME.c` into `dir` (with frame pointers and debug info) and
/// returns the executable.
pub fn build_workload(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workloads/{name}.c"));
    let exe = dir.join(name);
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc is needed to build the test workloads");
    assert!(status.success(), "gcc failed on {}", src.display());
    exe
}

/// Compiles `tests/workloads/NAME.c` statically at -O2 with debug info (plus `flags`)
/// into `dir` and returns the executable: the exact-mode tests' programs.
pub fn build_static_workload(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workloads/{name}.c"));
    let exe = dir.join(name);
    let ok = Command::new("gcc")
        .args(["-O2", "-g", "-static"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc is needed to build the test workloads");
    assert!(ok.success(), "gcc failed on {}", src.display());
    exe
}

// ---------------------------------------------------------------------------------------
// Output checks shared by the VM and demo tests

pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "lbrprof {args:?} failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("valid JSON")
}

/// Parses an SVG with an XML parser; returns the text of every `<title>`.
pub fn svg_titles(svg: &[u8]) -> Vec<String> {
    let mut reader = quick_xml::Reader::from_reader(svg);
    let mut buf = Vec::new();
    let mut titles = Vec::new();
    let mut in_title = false;
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(e)) => in_title = e.name().as_ref() == b"title",
            Ok(quick_xml::events::Event::Text(t)) if in_title => {
                titles.push(String::from_utf8_lossy(&t.into_inner()).into_owned());
            }
            Ok(quick_xml::events::Event::End(_)) => in_title = false,
            Ok(_) => {}
            Err(e) => panic!(
                "SVG is not well-formed at {}: {e}",
                reader.buffer_position()
            ),
        }
        buf.clear();
    }
    titles
}

/// The guest edges of a JSON report must add up: every row's share is its count over
/// `meta.branch_entries`, and with `--limit 0` the rows sum to it.
pub fn check_edge_counts(report: &serde_json::Value) -> u64 {
    let meta = &report["meta"];
    let entries = meta["branch_entries"].as_u64().unwrap();
    let branches = report["branches"].as_array().unwrap();
    let sum: u64 = branches.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(
        sum, entries,
        "edge counts do not add up to the histogram's entries"
    );
    for b in branches {
        let pct = b["pct"].as_f64().unwrap();
        let want = b["count"].as_u64().unwrap() as f64 * 100.0 / entries as f64;
        assert!((pct - want).abs() < 1e-6, "{b}");
    }
    let snapshots = meta["snapshots"].as_u64().unwrap();
    let depth = meta["branch_depth"].as_u64().unwrap();
    assert!(
        entries <= snapshots * depth,
        "{entries} > {snapshots} x {depth}"
    );
    entries
}

// ---------------------------------------------------------------------------------------
// go tool pprof, for the pprof export

/// Whether `go` (Debian golang-go, which ships pprof) runs here; says why a test skips.
pub fn go_available() -> bool {
    let ok = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: go (Debian golang-go) is not installed");
    }
    ok
}

/// The text `go tool pprof -top -nodecount=50 ARGS...` prints (it must succeed).
pub fn pprof_top(args: &[&str]) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-nodecount=50"])
        .args(args)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("go runs");
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rows of a `go tool pprof -top` listing: (flat, function name).
pub fn pprof_rows(top: &str) -> Vec<(u64, String)> {
    top.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.parse().ok()?, cols.get(5..)?.join(" ")))
        })
        .collect()
}

/// `perf ARGS`: its standard output; a failure fails the test with perf's message.
pub fn perf(args: &[&str]) -> String {
    let out = Command::new("perf").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "perf {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `perf record PERF_ARGS -o DIR/perf.data WORKLOAD` of a test workload built into a new
/// temporary directory, kept with the recording (`None`, having said why, where perf
/// cannot record here).
pub fn perf_record_workload(
    workload: &str,
    perf_args: &[&str],
) -> Option<(tempfile::TempDir, PathBuf)> {
    if !perf_available() {
        return None;
    }
    if !Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: needs perf (linux-perf)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_workload(dir.path(), workload);
    let data = dir.path().join("perf.data");
    let status = Command::new("perf")
        .arg("record")
        .args(perf_args)
        .arg("-o")
        .arg(&data)
        .arg(&exe)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("cannot run perf");
    assert!(status.success(), "perf record failed");
    Some((dir, data))
}
