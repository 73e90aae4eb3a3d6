//! End-to-end tests of `lbrprof report`, `flamegraph` and `export` against real perf.data
//! files and what perf itself prints for them, golden outputs, the JSON schema, and bad
//! input.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lbrprof_data::model::*;
use lbrprof_data::recording::{RecordingWriter, Summary};
use serde_json::Value;

fn fixture(name: &str) -> Option<PathBuf> {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return None;
    };
    Some(dir.join(name))
}

fn xz(path: &Path) -> String {
    let out = Command::new("xz")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("xz is needed to read the expected outputs");
    assert!(out.status.success(), "xz -dc {} failed", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok_stdout(args: &[&str]) -> String {
    let out = common::run(args);
    assert!(
        out.status.success(),
        "lbrprof {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    serde_json::from_str(&ok_stdout(&a)).expect("valid JSON")
}

/// Compares `actual` with `tests/golden/NAME`; `LBRPROF_BLESS=1` rewrites the file.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("LBRPROF_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {} (run with LBRPROF_BLESS=1)",
            path.display()
        )
    });
    if expected != actual {
        let diff_at = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the golden file at line {}:\n  expected: {:?}\n  actual:   {:?}\n(bless with LBRPROF_BLESS=1)",
            diff_at + 1,
            expected.lines().nth(diff_at),
            actual.lines().nth(diff_at)
        );
    }
}

/// Machine-independent output: the fixture directory becomes `$FIXTURES`.
fn normalize(s: &str) -> String {
    let dir = common::perfdata_fixtures().unwrap();
    s.replace(&dir.display().to_string(), "$FIXTURES")
}

// ---------------------------------------------------------------------------------------
// The fixtures are read completely: sample and branch entry counts equal perf script's.

/// (perf.data file, expected-output prefix)
const BRANCH_FIXTURES: &[(&str, &str)] = &[
    ("perf.data.branch-4.14", "quipper_perf.data.branch-4.14"),
    (
        "perf.data.branch_stack_hw_index",
        "quipper_perf.data.branch_stack_hw_index",
    ),
    (
        "perf.data.callgraph_and_branch-3.8",
        "quipper_perf.data.callgraph_and_branch-3.8",
    ),
    (
        "propeller_sample.perfdata",
        "autofdo_propeller_sample.perfdata",
    ),
];

/// The samples `perf script -F brstack` printed: one header line per sample (call-chain
/// lines start with a tab, a branch stack printed on its own line with `0x`).
fn perf_script_samples(script: &str) -> usize {
    script
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !l.starts_with('\t') && !t.is_empty() && !t.starts_with("0x")
        })
        .count()
}

#[test]
fn fixtures_sample_and_branch_counts_match_perf_script() {
    for (file, expected) in BRANCH_FIXTURES {
        let Some(path) = fixture(file) else { return };
        let script = xz(&fixture(&format!("expected/{expected}.script-brstack.txt.xz")).unwrap());
        let samples = perf_script_samples(&script) as u64;
        // Each branch entry is one `from/to/M|P/X/A/cycles/` token.
        let entries = script
            .split_whitespace()
            .filter(|t| t.ends_with('/') && t.matches('/').count() >= 6)
            .count() as u64;
        let v = json(&[
            "report",
            "-i",
            path.to_str().unwrap(),
            "--no-symbols",
            "--limit",
            "1",
        ]);
        assert_eq!(v["meta"]["samples"], samples, "{file}: samples");
        assert_eq!(
            v["meta"]["branch_entries"], entries,
            "{file}: branch entries"
        );
    }
}

/// `info` describes a perf.data file as perf does: each event with the samples perf script
/// prints for it, and the feature sections perf's header lists (none it calls missing).
#[test]
fn info_of_perf_data_matches_perf_header_and_script() {
    for (file, expected) in BRANCH_FIXTURES {
        let Some(path) = fixture(file) else { return };
        let script = xz(&fixture(&format!("expected/{expected}.script-brstack.txt.xz")).unwrap());
        let samples = perf_script_samples(&script);
        let header =
            std::fs::read_to_string(fixture(&format!("expected/{expected}.header.txt")).unwrap())
                .unwrap();
        let info = ok_stdout(&["info", path.to_str().unwrap()]);
        // Every event perf's header names, with its samples; together what perf script
        // prints.
        let mut total = 0;
        for event in header
            .lines()
            .filter_map(|l| l.strip_prefix("# event : name = "))
            .filter_map(|l| l.split(',').next())
        {
            let prefix = format!("event:         {event}: ");
            let n: usize = info
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|l| l.strip_suffix(" samples"))
                .unwrap_or_else(|| panic!("{file}: no line for {event}:\n{info}"))
                .parse()
                .unwrap();
            total += n;
        }
        assert_eq!(total, samples, "{file}:\n{info}");
        let features = info
            .lines()
            .find_map(|l| l.strip_prefix("features:"))
            .unwrap_or_else(|| panic!("{info}"));
        let features: Vec<&str> = features.split_whitespace().collect();
        assert!(features.contains(&"BUILD_ID"), "{file}: {features:?}");
        let missing = header
            .lines()
            .find_map(|l| l.strip_prefix("# missing features: "))
            .unwrap_or_default();
        for m in missing.split_whitespace() {
            assert!(!features.contains(&m), "{file}: perf says {m} is missing");
        }
        assert!(info.contains("build-ids:"), "{info}");
    }
}

/// A perf symbol column (`main`, `0x00000000001a5c2`, `0000000000000000`) or one of our
/// places as a comparable key: the name, or the address/offset as a number.
fn perf_key(sym: &str) -> String {
    let hex = sym.trim_start_matches("0x");
    if !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()) && sym.len() >= 16 {
        return format!("@{:x}", u64::from_str_radix(hex, 16).unwrap());
    }
    sym.to_owned()
}

fn place_key(p: &Value) -> String {
    match p["function"].as_str() {
        Some(f) => f.to_owned(),
        None => format!("@{:x}", p["offset"].as_u64().unwrap()),
    }
}

#[test]
fn fixture_top_edges_match_perf_report_branch() {
    for (file, expected) in BRANCH_FIXTURES {
        let Some(path) = fixture(file) else { return };
        let dir = path.parent().unwrap().to_str().unwrap().to_owned();
        let v = json(&[
            "report",
            "-i",
            path.to_str().unwrap(),
            "--symfs",
            &dir,
            "--limit",
            "0",
        ]);
        // perf groups by (source symbol, target symbol); so do we, here.
        let mut ours: HashMap<(String, String), f64> = HashMap::new();
        for b in v["branches"].as_array().unwrap() {
            let k = (place_key(&b["from"]), place_key(&b["to"]));
            *ours.entry(k).or_default() += b["pct"].as_f64().unwrap();
        }
        let text = xz(&fixture(&format!("expected/{expected}.report-branch.txt.xz")).unwrap());
        let mut checked = 0;
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            // "  54.52%  80937  propeller_sample.bin  [.] main  [.] main"
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 7 {
                continue;
            }
            let pct: f64 = f[0].trim_end_matches('%').parse().unwrap();
            let (from, to) = (perf_key(f[4]), perf_key(f[6]));
            let got = ours
                .get(&(from.clone(), to.clone()))
                .copied()
                .unwrap_or(0.0);
            assert!(
                (got - pct).abs() <= 0.5,
                "{file}: edge {from} -> {to}: perf {pct}%, lbrprof {got}%"
            );
            checked += 1;
            if checked == 20 {
                break;
            }
        }
        assert!(checked > 0, "{file}: no rows in the expected output");
    }
}

#[test]
fn fixture_top_functions_match_perf_report_sym() {
    for (file, expected) in BRANCH_FIXTURES {
        let Some(path) = fixture(file) else { return };
        let dir = path.parent().unwrap().to_str().unwrap().to_owned();
        // Kernel addresses stay addresses (recorded elsewhere), as in perf's output.
        let v = json(&[
            "report",
            "-i",
            path.to_str().unwrap(),
            "--symfs",
            &dir,
            "--kallsyms",
            "/dev/null",
            "--limit",
            "0",
        ]);
        let mut ours: HashMap<String, f64> = HashMap::new();
        for f in v["functions"].as_array().unwrap() {
            *ours
                .entry(our_key(f["function"].as_str().unwrap()))
                .or_default() += f["self_pct"].as_f64().unwrap();
        }
        let text = xz(&fixture(&format!("expected/{expected}.report-sym.txt.xz")).unwrap());
        let rows = perf_rows(&text, 1);
        assert!(!rows.is_empty(), "{file}: no rows in the expected output");
        for (sym, p) in rows.iter().take(20) {
            let got = ours.get(sym).copied().unwrap_or(0.0);
            assert!(
                (got - p[0]).abs() <= 0.5,
                "{file}: self of {sym}: perf {}%, lbrprof {got}%",
                p[0]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Agreement with perf report on a cpu-clock recording made here.

fn tool_works(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Parses `perf report --stdio` rows sorted by symbol: (symbol key, percentages).
fn perf_rows(text: &str, columns: usize) -> Vec<(String, Vec<f64>)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        if f.len() < columns + 2 || !f[0].ends_with('%') {
            continue;
        }
        let pcts: Vec<f64> = f[..columns]
            .iter()
            .map(|p| p.trim_end_matches('%').parse().unwrap())
            .collect();
        // After the percentages (and a shared-object column, when sorted by it) comes the
        // "[.]" / "[k]" marker; the symbol after it may contain spaces.
        let Some(mark) = f[columns..]
            .iter()
            .position(|t| t.len() == 3 && t.starts_with('[') && t.ends_with(']'))
        else {
            continue;
        };
        let sym = f[columns + mark + 1..].join(" ");
        rows.push((perf_key(&sym), pcts));
    }
    rows
}

fn our_key(name: &str) -> String {
    // Unknown locations render as `module+0xoff` or a bare address.
    if let Some((_, off)) = name.rsplit_once("+0x")
        && u64::from_str_radix(off, 16).is_ok()
        && !name.contains('(')
    {
        return format!("@{:x}", u64::from_str_radix(off, 16).unwrap());
    }
    if let Some(h) = name.strip_prefix("0x") {
        return format!("@{:x}", u64::from_str_radix(h, 16).unwrap_or(0));
    }
    name.to_owned()
}

const WORKLOAD_C: &str = r#"
#include <stdint.h>
volatile uint64_t sink;
__attribute__((noinline)) uint64_t leaf_a(uint64_t n) { uint64_t s = 0; for (uint64_t i = 0; i < n; i++) s += i * i; return s; }
__attribute__((noinline)) uint64_t leaf_b(uint64_t n) { uint64_t s = 1; for (uint64_t i = 0; i < n; i++) s ^= s * 31 + i; return s; }
__attribute__((noinline)) uint64_t mid(uint64_t n) { return leaf_a(n) + leaf_b(n / 2); }
/* A one-letter C name that is also a C++ type code ("b" = bool): must stay "b". */
__attribute__((noinline)) uint64_t b(uint64_t n) { return leaf_b(n) + leaf_a(n / 4); }
int main(void) {
    for (int r = 0; r < 120; r++) { sink += mid(1000000); sink += b(600000); }
    return 0;
}
"#;

/// [`WORKLOAD_C`] compiled with frame pointers into a temporary directory, or `None`
/// (the reason printed) without perf or gcc.
fn build_workload() -> Option<(tempfile::TempDir, PathBuf)> {
    if !tool_works("perf", "--version") || !tool_works("gcc", "--version") {
        eprintln!("skipped: needs perf and gcc");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("w.c");
    let exe = dir.path().join("w");
    std::fs::write(&src, WORKLOAD_C).unwrap();
    let cc = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(cc.success(), "gcc failed");
    Some((dir, exe))
}

#[test]
fn self_and_children_agree_with_perf_report_on_a_cpu_clock_recording() {
    if !common::perf_available() {
        return;
    }
    let Some((dir, exe)) = build_workload() else {
        return;
    };
    let data = dir.path().join("perf.data");
    let rec = Command::new("perf")
        .args(["record", "-q", "-g", "-e", "cpu-clock", "-F", "2000", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .output()
        .unwrap();
    if !rec.status.success() {
        eprintln!(
            "skipped: perf record cannot record here: {}",
            String::from_utf8_lossy(&rec.stderr).trim()
        );
        return;
    }
    let perf_report = |children: &str| {
        let out = Command::new("perf")
            .args([
                "report", "--stdio", children, "--sort", "sym", "-g", "none", "-i",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "perf report failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let self_rows = perf_rows(&perf_report("--no-children"), 1);
    let children_rows = perf_rows(&perf_report("--children"), 2);
    assert!(!self_rows.is_empty(), "perf report printed no rows");

    let v = json(&["report", "-i", data.to_str().unwrap(), "--limit", "0"]);
    let mut ours: HashMap<String, (f64, f64)> = HashMap::new();
    for f in v["functions"].as_array().unwrap() {
        let e = ours
            .entry(our_key(f["function"].as_str().unwrap()))
            .or_default();
        e.0 += f["self_pct"].as_f64().unwrap();
        e.1 += f["total_pct"].as_f64().unwrap();
    }
    for (sym, p) in self_rows.iter().take(20) {
        let got = ours.get(sym).map_or(0.0, |x| x.0);
        assert!(
            (got - p[0]).abs() <= 0.5,
            "self of {sym}: perf {}%, lbrprof {got}%",
            p[0]
        );
    }
    for (sym, p) in children_rows.iter().take(20) {
        let got = ours.get(sym).map_or(0.0, |x| x.1);
        assert!(
            (got - p[0]).abs() <= 0.5,
            "children of {sym}: perf {}%, lbrprof {got}%",
            p[0]
        );
    }
    // The workload's own functions are there and named as in the symbol table.
    assert!(ours.contains_key("leaf_a") && ours.contains_key("main"));
    assert!(
        ours.contains_key("b"),
        "the C function `b` lost its name: {:?}",
        ours.keys()
    );
}

/// `perf report --stdio` of a file with several events prints one section per event
/// ("# Samples: N of event 'NAME'"): its rows, by event name.
fn perf_sections(text: &str) -> HashMap<String, Vec<(String, Vec<f64>)>> {
    let mut out = HashMap::new();
    let mut name: Option<String> = None;
    let mut body = String::new();
    for line in text
        .lines()
        .chain(std::iter::once("# Samples: 0 of event 'end'"))
    {
        if let Some((_, rest)) = line.split_once(" of event '") {
            if let Some(n) = name.take() {
                out.insert(n, perf_rows(&body, 1));
            }
            name = Some(rest.trim_end_matches('\'').to_owned());
            body.clear();
        } else {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// A perf.data with two events is reported one event at a time, as perf report's
/// sections are: JSON needs the event chosen with `--event` (the text report's sections
/// are checked in tests/perf_events.rs), all together with `--event all`; an unknown
/// name is a one-line error. Both readers (the mapped fast path,
/// and the event stream that compressed files take) agree with perf.
#[test]
fn perf_data_with_two_events_is_reported_per_event() {
    if !common::perf_available() {
        return;
    }
    let Some((dir, exe)) = build_workload() else {
        return;
    };
    for compress in [false, true] {
        let data = dir.path().join(if compress { "z.data" } else { "p.data" });
        let rec = Command::new("perf")
            .args(["record", "-q", "-g", "-e", "cpu-clock", "-e", "task-clock"])
            .args(["-F", "1000"])
            .args(if compress { &["-z"][..] } else { &[][..] })
            .arg("-o")
            .arg(&data)
            .arg("--")
            .arg(&exe)
            .output()
            .unwrap();
        if !rec.status.success() {
            eprintln!(
                "skipped: perf record cannot record here: {}",
                String::from_utf8_lossy(&rec.stderr).trim()
            );
            return;
        }
        let perf = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--sort",
                "sym",
                "-g",
                "none",
            ])
            .arg("-i")
            .arg(&data)
            .output()
            .unwrap();
        assert!(perf.status.success(), "perf report failed");
        let sections = perf_sections(&String::from_utf8_lossy(&perf.stdout));
        let file = data.to_str().unwrap();
        let mut total = 0;
        let unchosen = common::run(&["report", "-i", file, "--format", "json"]);
        assert!(
            !unchosen.status.success()
                && String::from_utf8_lossy(&unchosen.stderr)
                    .contains("2 events (cpu-clock, task-clock)"),
            "{unchosen:?}"
        );
        for event in ["cpu-clock", "task-clock"] {
            let v = json(&["report", "-i", file, "--limit", "0", "--event", event]);
            assert_eq!(v["meta"]["event"], event, "compress {compress}");
            total += v["meta"]["samples"].as_u64().unwrap();
            let mut ours: HashMap<String, f64> = HashMap::new();
            for f in v["functions"].as_array().unwrap() {
                *ours
                    .entry(our_key(f["function"].as_str().unwrap()))
                    .or_default() += f["self_pct"].as_f64().unwrap();
            }
            let rows = &sections[event];
            assert!(!rows.is_empty(), "perf printed no {event} rows");
            for (sym, p) in rows.iter().take(20) {
                let got = ours.get(sym).copied().unwrap_or(0.0);
                assert!(
                    (got - p[0]).abs() <= 0.5,
                    "{event} (compress {compress}): self of {sym}: perf {}%, lbrprof {got}%",
                    p[0]
                );
            }
        }
        let all = json(&["report", "-i", file, "--event", "all"]);
        assert_eq!(all["meta"]["samples"].as_u64().unwrap(), total);
        assert_eq!(all["meta"]["event"], "cpu-clock, task-clock");

        let bad = common::run(&["report", "-i", file, "--event", "cycles"]);
        assert_eq!(bad.status.code(), Some(2));
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("no event named \"cycles\"") && err.contains("task-clock"),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Golden outputs.

#[test]
fn golden_reports_of_the_fixtures() {
    let Some(prop) = fixture("propeller_sample.perfdata") else {
        return;
    };
    let dir = prop.parent().unwrap().to_str().unwrap().to_owned();
    let p = prop.to_str().unwrap();
    let b414 = fixture("perf.data.branch-4.14").unwrap();
    let hw = fixture("perf.data.branch_stack_hw_index").unwrap();
    let cg = fixture("perf.data.callgraph_and_branch-3.8").unwrap();
    let kall = ["--kallsyms", "/dev/null"];

    let mut a = vec!["report", "-i", p, "--symfs", &dir, "--limit", "12"];
    a.extend(kall);
    golden("propeller.report.txt", &normalize(&ok_stdout(&a)));

    let mut a = vec![
        "report",
        "-i",
        b414.to_str().unwrap(),
        "--limit",
        "10",
        "--format",
        "markdown",
    ];
    a.extend(kall);
    golden("branch-4.14.report.md", &normalize(&ok_stdout(&a)));

    let mut a = vec![
        "report",
        "-i",
        hw.to_str().unwrap(),
        "--limit",
        "5",
        "--format",
        "json",
    ];
    a.extend(kall);
    golden("hw_index.report.json", &normalize(&ok_stdout(&a)));

    let a = [
        "report",
        "-i",
        cg.to_str().unwrap(),
        "--no-symbols",
        "--format",
        "folded",
    ];
    golden("callgraph_and_branch.folded", &normalize(&ok_stdout(&a)));

    let out = tempfile::NamedTempFile::new().unwrap();
    let o = out.path().to_str().unwrap();
    let mut a = vec!["export", "--bolt", "-i", p, "--symfs", &dir, "-o", o];
    a.extend(kall);
    ok_stdout(&a);
    golden(
        "propeller.fdata",
        &std::fs::read_to_string(out.path()).unwrap(),
    );
}

#[test]
fn bolt_export_has_branch_and_fallthrough_lines_and_no_lbr_form() {
    let Some(prop) = fixture("propeller_sample.perfdata") else {
        return;
    };
    let dir = prop.parent().unwrap().to_str().unwrap().to_owned();
    let out = tempfile::NamedTempFile::new().unwrap();
    let o = out.path().to_str().unwrap();
    ok_stdout(&[
        "export",
        "--bolt",
        "-i",
        prop.to_str().unwrap(),
        "--symfs",
        &dir,
        "-o",
        o,
    ]);
    let text = std::fs::read_to_string(out.path()).unwrap();
    // The call main -> compute_flag: 23039 taken, as perf report -b counts it.
    assert!(
        text.lines()
            .any(|l| l.starts_with("1 main 40 1 compute_flag 0 ") && l.ends_with(" 23039")),
        "{text}"
    );
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 8, "bad fdata line {l:?}");
        assert!(f[6].parse::<u64>().is_ok() && f[7].parse::<u64>().is_ok());
    }
    // Fall-through lines (mispredicts 0, from a conditional to the next instruction).
    assert!(text.lines().filter(|l| l.contains(" 0 ")).count() > 1);

    let Some(sleep) = fixture("sleep.data") else {
        return;
    };
    ok_stdout(&["export", "--bolt", "-i", sleep.to_str().unwrap(), "-o", o]);
    let text = std::fs::read_to_string(out.path()).unwrap();
    assert!(text.starts_with("no_lbr "), "{text}");
}

// ---------------------------------------------------------------------------------------
// JSON schema.

fn validate(schema: &Value, root: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return validate(&root["$defs"][name], root, v, at, errs);
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errs.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!("{at}: {v} not in {e:?}"));
    }
    if let (Some(min), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64())
        && x < min
    {
        errs.push(format!("{at}: {x} < {min}"));
    }
    if let (Some(max), Some(x)) = (schema.get("maximum").and_then(Value::as_f64), v.as_f64())
        && x > max + 1e-9
    {
        errs.push(format!("{at}: {x} > {max}"));
    }
    if let Some(obj) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten() {
            if !obj.contains_key(r.as_str().unwrap()) {
                errs.push(format!("{at}: missing {r}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(s, root, x, &format!("{at}.{k}"), errs),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{at}: unexpected field {k}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(items, root, x, &format!("{at}[{i}]"), errs);
        }
    }
}

#[test]
fn json_output_follows_the_published_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/schema/report-v1.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut docs = vec![json(&[
        "report",
        "-i",
        synthetic_recording().0.to_str().unwrap(),
    ])];
    // perf's grouped table and the call tree are optional parts of the same document.
    let doc = json(&[
        "report",
        "-i",
        synthetic_recording().0.to_str().unwrap(),
        "--sort",
        "comm,pid,dso,sym",
        "-g",
        "caller",
    ]);
    assert!(
        doc["hist"]["rows"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(
        doc["call_tree"]["roots"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
    docs.push(doc);
    if let Some(p) = fixture("propeller_sample.perfdata") {
        let dir = p.parent().unwrap().to_str().unwrap().to_owned();
        docs.push(json(&[
            "report",
            "-i",
            p.to_str().unwrap(),
            "--symfs",
            &dir,
        ]));
    }
    for doc in docs {
        assert_eq!(doc["schema"], "lbrprof-report");
        assert_eq!(doc["version"], 1);
        let mut errs = Vec::new();
        validate(&schema, &schema, &doc, "$", &mut errs);
        assert!(errs.is_empty(), "schema violations: {errs:#?}");
    }
}

// ---------------------------------------------------------------------------------------
// lbrprof.data input, guest snapshots, flame graphs.

/// A small recording written through the real writer: one mapping, samples with call
/// chains and branch stacks in pid 7, and guest snapshots. Returns (path, tempdir guard).
fn synthetic_recording() -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lbrprof.data");
    let header = Header {
        writer: "test".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: HostInfo::default(),
        sampling: SamplingConfig {
            event: "cpu-clock".into(),
            period: 1000,
            branch_stacks: true,
            ..SamplingConfig::default()
        },
        target: Target::Command {
            argv: vec!["w".into()],
        },
    };
    let w = RecordingWriter::create(&path, &header).unwrap();
    let sink = w.sink();
    sink.send(Event::Mapping(Mapping {
        time_ns: 0,
        space: AddressSpace::HostUser,
        pid: 7,
        start: 0x400000,
        len: 0x1000,
        pgoff: 0,
        path: "/nonexistent/w".into(),
        build_id: None,
    }));
    sink.send(Event::Task(TaskEvent::Comm {
        time_ns: 0,
        pid: 7,
        tid: 7,
        comm: "w".into(),
    }));
    let br = |from, to, mispred| Branch {
        from,
        to,
        flags: BranchFlags {
            mispred,
            predicted: !mispred,
            cycles: 3,
            kind: BranchKind::Cond,
            ..BranchFlags::default()
        },
    };
    for i in 0..100u64 {
        sink.send(Event::Sample(HostSample {
            event: 0,
            time_ns: 1_000 + i,
            pid: 7,
            tid: 7,
            cpu: 0,
            period: 1000,
            ip: 0x400100 + (i % 2) * 0x100,
            mode: CpuMode::User,
            callchain: vec![
                Frame {
                    addr: 0x400100 + (i % 2) * 0x100,
                    mode: CpuMode::User,
                },
                Frame {
                    addr: 0x400050,
                    mode: CpuMode::User,
                },
            ],
            branches: vec![
                br(0x400120, 0x400100, i % 4 == 0),
                br(0x400080, 0x400110, false),
            ],
            branch_hw_index: None,
        }));
    }
    for i in 0..10u64 {
        sink.send(Event::Snapshot(LbrSnapshot {
            vcpu: 0,
            host_time_ns: 2_000 + i,
            guest_tsc: i,
            reason: SnapshotReason::Pmi { counter: 0 },
            tos: 0,
            entries: vec![LbrEntry {
                from: 0x1000,
                to: 0x2000,
                info: 1 << 63 | 9,
            }],
            guest_ip: 0x2004,
            guest_sp: 0,
            guest_fp: 0,
            cr3: 0,
            guest_stack: vec![0x1004],
            frozen_events: 1,
        }));
    }
    drop(sink);
    w.finish(&Summary {
        samples: 100,
        snapshots: 10,
        ..Summary::default()
    })
    .unwrap();
    (path, dir)
}

#[test]
fn lbrprof_data_with_guest_snapshots_reports_host_and_guest_branches() {
    let (path, _dir) = synthetic_recording();
    let v = json(&["report", "-i", path.to_str().unwrap(), "--limit", "0"]);
    assert_eq!(v["meta"]["source"], "lbrprof.data");
    assert_eq!(v["meta"]["samples"], 100);
    assert_eq!(v["meta"]["snapshots"], 10);
    assert_eq!(v["meta"]["branch_entries"], 210);
    assert_eq!(v["meta"]["frozen"], 10);
    let b = v["branches"].as_array().unwrap();
    let top = b.iter().find(|e| e["from"]["offset"] == 0x120).unwrap();
    assert_eq!(top["count"], 100);
    assert_eq!(top["mispredicts"], 25);
    assert_eq!(top["kind"], "Cond");
    // The guest edge, fully mispredicted, with its LBR_INFO cycle count.
    let guest = b.iter().find(|e| e["from"]["offset"] == 0x1000).unwrap();
    assert_eq!(guest["count"], 10);
    assert_eq!(guest["mispredict_pct"], 100.0);
    assert_eq!(guest["avg_cycles"], 9.0);
    // The fall-through range between the two entries: [0x110, 0x120].
    let r = &v["ranges"][0];
    assert_eq!(
        (r["start"]["offset"].as_u64(), r["end"]["offset"].as_u64()),
        (Some(0x110), Some(0x120))
    );
    assert_eq!(r["estimated"], true);
    // Filters.
    // A pid with no sample: an error saying so (not an empty report).
    let none = common::run(&["report", "-i", path.to_str().unwrap(), "--pid", "8"]);
    assert_eq!(none.status.code(), Some(2));
    let by_comm = json(&["report", "-i", path.to_str().unwrap(), "--comm", "w"]);
    assert_eq!(by_comm["meta"]["samples"], 100);
    // Folded stacks: the guest root frame is there.
    let folded = ok_stdout(&["report", "-i", path.to_str().unwrap(), "--format", "folded"]);
    assert!(
        folded.lines().any(|l| l.starts_with("[guest vcpu0];")),
        "{folded}"
    );
    assert!(folded.lines().any(|l| l == "w+0x50;w+0x100 50"), "{folded}");
}

/// A filter that matches nothing is an error naming it, not an empty report with exit 0.
#[test]
fn a_filter_that_matches_nothing_says_so() {
    let (path, _dir) = synthetic_recording();
    let input = path.to_str().unwrap();
    for cmd in ["report", "flamegraph"] {
        let out = common::run(&[cmd, "-i", input, "--comm", "swapper", "--pid", "99999"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("lbrprof: error: no sample of ")
                && err.contains("matches --pid 99999 --comm swapper: all "),
            "{cmd}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn flamegraph_is_well_formed_deterministic_svg() {
    let (path, dir) = synthetic_recording();
    let a = dir.path().join("a.svg");
    let b = dir.path().join("b.svg");
    for out in [&a, &b] {
        ok_stdout(&[
            "flamegraph",
            "-i",
            path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
    }
    let svg = std::fs::read_to_string(&a).unwrap();
    assert_eq!(
        svg,
        std::fs::read_to_string(&b).unwrap(),
        "not deterministic"
    );
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("w+0x100") && svg.contains("[guest vcpu0]"));
    // Guest frames are coloured apart.
    assert!(svg.contains("rgb(80,140,230)"), "guest colour missing");
    // --branches with no LBR call-stack data in host samples still draws guest stacks.
    ok_stdout(&[
        "flamegraph",
        "-i",
        path.to_str().unwrap(),
        "--branches",
        "-o",
        a.to_str().unwrap(),
    ]);
}

// ---------------------------------------------------------------------------------------
// Bad input.

#[test]
fn bad_input_is_a_one_line_error_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"hello, this is not a profile").unwrap();
    for args in [
        vec!["report", "-i", junk.to_str().unwrap()],
        vec!["report", "-i", "/nonexistent/lbrprof.data"],
        vec![
            "flamegraph",
            "-i",
            junk.to_str().unwrap(),
            "-o",
            "/dev/null",
        ],
    ] {
        let out = common::run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("lbrprof: error: "), "{err}");
    }
    // perf.data magic with garbage behind it.
    let bad = dir.path().join("bad.data");
    let mut bytes = b"PERFILE2".to_vec();
    bytes.extend([0xffu8; 200]);
    std::fs::write(&bad, &bytes).unwrap();
    let out = common::run(&["report", "-i", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn truncated_perf_data_gives_a_warning_and_a_partial_report() {
    let Some(p) = fixture("perf.data.callgraph_and_branch-3.8") else {
        return;
    };
    let full = std::fs::read(&p).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.data");
    std::fs::write(&cut, &full[..full.len() * 2 / 3]).unwrap();
    let out = common::run(&[
        "report",
        "-i",
        cut.to_str().unwrap(),
        "--format",
        "json",
        "--no-symbols",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = v["meta"]["samples"].as_u64().unwrap();
    assert!(samples > 100 && samples < 1856, "{samples}");
    let warnings = v["meta"]["warnings"].to_string();
    assert!(warnings.contains("truncated"), "{warnings}");
}

/// `export --pprof` is read by `go tool pprof`, which lists the same functions with the
/// same sample counts and the same event-count shares as `lbrprof report`.
#[test]
fn pprof_export_reads_in_go_tool_pprof_as_report_does() {
    let Some(path) = fixture("propeller_sample.perfdata") else {
        return;
    };
    if !common::go_available() {
        return;
    }
    let symfs = path.parent().unwrap().to_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("p.pb.gz");
    let out = common::run(&[
        "export",
        "-i",
        path.to_str().unwrap(),
        "--symfs",
        &symfs,
        "--pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&[
        "report",
        "-i",
        path.to_str().unwrap(),
        "--symfs",
        &symfs,
        "--limit",
        "0",
    ]);
    let top = common::pprof_rows(&common::pprof_top(&[
        "-sample_index=samples",
        pb.to_str().unwrap(),
    ]));
    assert!(top.len() >= 2, "{top:?}");
    for f in report["functions"].as_array().unwrap() {
        let samples = f["self_samples"].as_u64().unwrap();
        if samples < 100 {
            continue;
        }
        let name = f["function"].as_str().unwrap();
        assert!(
            top.contains(&(samples, name.to_owned())),
            "{name} with {samples} samples not in pprof's top: {top:?}"
        );
    }
    // The default sample type is the event count, as report's shares are.
    let by_weight = common::pprof_rows(&common::pprof_top(&[pb.to_str().unwrap()]));
    let main = report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "main")
        .unwrap();
    assert!(
        by_weight.contains(&(main["self_weight"].as_u64().unwrap(), "main".to_owned())),
        "{by_weight:?}"
    );
}

/// Intact samples behind damaged metadata are still read: a feature section whose size
/// runs past the end of the file, or a file cut inside its feature sections, costs the
/// metadata (with a warning that says so), never the samples.
#[test]
fn perf_data_with_damaged_feature_sections_keeps_its_samples() {
    let Some(p) = fixture("perf.data.callgraph_and_branch-3.8") else {
        return;
    };
    let full = std::fs::read(&p).unwrap();
    let word = |at: usize| u64::from_le_bytes(full[at..at + 8].try_into().unwrap());
    // struct perf_file_header: the data section at 40, the feature table after the data.
    let table = (word(40) + word(48)) as usize;
    assert!(table + 16 <= full.len());
    let report =
        |path: &Path| -> Value { json(&["report", "-i", path.to_str().unwrap(), "--no-symbols"]) };
    let samples = |v: &Value| v["meta"]["samples"].as_u64().unwrap();
    let base = samples(&report(&p));
    assert!(base > 1000, "{base}");

    let dir = tempfile::tempdir().unwrap();
    let mut huge = full.clone();
    huge[table + 8..table + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let cut_inside = full[..table + 16 + (full.len() - table - 16) / 2].to_vec();
    for (name, bytes) in [("huge.data", huge), ("cut.data", cut_inside)] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let v = report(&path);
        assert_eq!(samples(&v), base, "{name}: every sample is intact");
        let warnings = v["meta"]["warnings"].to_string();
        assert!(
            warnings.contains("ignoring the file's feature sections"),
            "{name}: {warnings}"
        );
    }
}

#[test]
fn compressed_perf_data_is_read() {
    let Some(p) = fixture("sleep.compressed.data") else {
        return;
    };
    let v = json(&["report", "-i", p.to_str().unwrap(), "--no-symbols"]);
    assert!(v["meta"]["samples"].as_u64().unwrap() > 0);
}

/// `--comm-root` folds each stack under its thread's command, as perf script |
/// stackcollapse-perf.pl does: per-command sample totals equal those of perf's own
/// pipeline (expected/…folded-stackcollapse-perf-all.txt), and without the flag the
/// folded output is unchanged.
#[test]
fn folded_comm_root_matches_perf_script_stackcollapse() {
    let Some(cg) = fixture("perf.data.callgraph_and_branch-3.8") else {
        return;
    };
    let expected_path = cg.parent().unwrap().join(
        "expected/quipper_perf.data.callgraph_and_branch-3.8.folded-stackcollapse-perf-all.txt",
    );
    let expected = std::fs::read_to_string(expected_path).unwrap();
    let per_comm = |folded: &str| {
        let mut m: std::collections::BTreeMap<String, u64> = Default::default();
        for line in folded.lines() {
            let (stack, n) = line.rsplit_once(' ').unwrap();
            let comm = stack.split(';').next().unwrap().to_owned();
            *m.entry(comm).or_default() += n.parse::<u64>().unwrap();
        }
        m
    };
    let p = cg.to_str().unwrap();
    let plain = ok_stdout(&["report", "-i", p, "--no-symbols", "--format", "folded"]);
    let rooted = ok_stdout(&[
        "report",
        "-i",
        p,
        "--no-symbols",
        "--format",
        "folded",
        "--comm-root",
    ]);
    assert_eq!(per_comm(&rooted), per_comm(&expected));
    // Dropping the root frame gives back the plain output.
    let mut unrooted: std::collections::BTreeMap<String, u64> = Default::default();
    for line in rooted.lines() {
        let (stack, n) = line.rsplit_once(' ').unwrap();
        let rest = stack.split_once(';').map_or("", |(_, r)| r).to_owned();
        *unrooted.entry(rest).or_default() += n.parse::<u64>().unwrap();
    }
    let plain: std::collections::BTreeMap<String, u64> = plain
        .lines()
        .map(|l| {
            let (s, n) = l.rsplit_once(' ').unwrap();
            (s.to_owned(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(unrooted, plain);
    // Only folded output has a root frame.
    let out = common::run(&["report", "-i", p, "--comm-root"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A sample whose body does not match its attribute is an error naming the sample, as
/// the event stream reports it, although perf.data files are read the fast way first.
#[test]
fn corrupt_sample_body_is_an_error_naming_the_sample() {
    let Some(p) = fixture("perf.data.callgraph_and_branch-3.8") else {
        return;
    };
    let mut bytes = std::fs::read(&p).unwrap();
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let mut at = word(&bytes, 40) as usize;
    let end = at + word(&bytes, 48) as usize;
    let mut corrupted = false;
    while at + 8 <= end {
        let rtype = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let size = u16::from_le_bytes(bytes[at + 6..at + 8].try_into().unwrap()) as usize;
        if rtype == 9 {
            // IP, TID, TIME, CPU, PERIOD, then the callchain length: make it huge.
            let nr = at + 8 + 40;
            bytes[nr..nr + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            corrupted = true;
            break;
        }
        at += size.max(8);
    }
    assert!(corrupted, "no sample record found");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.data");
    std::fs::write(&bad, &bytes).unwrap();
    let out = common::run(&["report", "-i", bad.to_str().unwrap(), "--no-symbols"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("sample #") && err.contains("callchain"),
        "{err}"
    );
}

/// A binary deleted (or rebuilt) after recording is found by its build-id in perf's
/// build-id cache under `$HOME/.debug` (`.build-id/xx/rest/elf`, as `perf buildid-cache`
/// keeps it): the binary passes that directory to the library, which reads no environment.
#[test]
fn a_deleted_binary_is_found_in_perfs_build_id_cache_under_home() {
    use object::Object;
    if !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = common::build_workload(tmp.path(), "hot");
    let data = tmp.path().join("hot.data");
    let out = common::lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .arg("100000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&exe).unwrap();
    let id = object::File::parse(&*bytes)
        .unwrap()
        .build_id()
        .unwrap()
        .expect("gcc links with a build-id");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let home = tmp.path().join("home");
    let cached = home
        .join(".debug/.build-id")
        .join(&hex[..2])
        .join(&hex[2..]);
    std::fs::create_dir_all(&cached).unwrap();
    std::fs::write(cached.join("elf"), &bytes).unwrap();
    std::fs::remove_file(&exe).unwrap();
    let hot_loop_named = |home: &Path| {
        let out = common::lbrprof()
            .args(["report", "--format", "json", "--comm", "hot", "-i"])
            .arg(&data)
            .env("HOME", home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["function"] == "hot_loop")
    };
    assert!(hot_loop_named(&home), "named from {}", cached.display());
    assert!(
        !hot_loop_named(&tmp.path().join("nowhere")),
        "not without the cache"
    );
}
