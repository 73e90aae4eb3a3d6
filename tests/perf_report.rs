//! `report` options perf users reach for first, checked against what perf itself prints
//! for the same perf.data: sort keys (`--sort comm,dso`, `pid,sym`, ...) with and without
//! `--children`, call trees (`-g caller|callee` against perf's folded call graphs), time
//! windows (`--time` absolute, relative and percent slices), and filters that match
//! nothing. The recordings are made at test time with `perf record -e cpu-clock -g`
//! of `tests/workloads/sort_keys.c`.

mod common;

use common::perf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: needs {tool}");
    }
    found
}

/// One `perf record -g` of the sort_keys workload, shared by the tests of this file
/// (`None`, having said why, where perf cannot record).
fn recording() -> Option<&'static Path> {
    static DATA: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    DATA.get_or_init(|| {
        if !have("gcc") {
            return None;
        }
        common::perf_record_workload("sort_keys", &["-q", "-e", "cpu-clock", "-F", "999", "-g"])
    })
    .as_ref()
    .map(|(_, p)| p.as_path())
}

/// The rows of a perf or lbrprof grouped table: key tuple → (children %, self %) with
/// `children` (else (self %, self %)). perf's `[.]`/`[k]` symbol markers are dropped.
fn table_rows(text: &str, children: bool) -> BTreeMap<String, (f64, f64)> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.contains('%') {
            continue;
        }
        let mut words = line.split_whitespace();
        let mut pct = || -> Option<f64> { words.next()?.strip_suffix('%')?.parse().ok() };
        let Some(first) = pct() else { continue };
        let (c, s) = if children {
            (first, pct().unwrap())
        } else {
            (first, first)
        };
        let keys: Vec<&str> = words.filter(|w| *w != "[.]" && *w != "[k]").collect();
        rows.insert(keys.join(" "), (c, s));
    }
    rows
}

/// Whether a key tuple has only named symbols (perf and lbrprof spell unnamed code
/// differently).
fn named(keys: &str) -> bool {
    !keys.contains("0x")
}

#[test]
fn sort_keys_match_perf() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    for sort in ["comm,dso", "comm", "pid", "dso", "pid,sym", "comm,dso,sym"] {
        for children in [true, false] {
            let flag = if children {
                "--children"
            } else {
                "--no-children"
            };
            let theirs = table_rows(
                &perf(&[
                    "report", "-i", d, "--stdio", "--sort", sort, flag, "-g", "none",
                ]),
                children,
            );
            let ours = table_rows(
                &common::ok(&["report", "-i", d, "--sort", sort, flag, "--limit", "0"]),
                children,
            );
            assert!(!theirs.is_empty(), "perf printed no rows for {sort}");
            // Rows of at least 1% (below, one sample can land on an aliased symbol name).
            for (rows, other, who) in [(&theirs, &ours, "perf"), (&ours, &theirs, "lbrprof")] {
                for (k, &(c, s)) in rows.iter().filter(|(k, v)| named(k) && v.0 >= 1.0) {
                    let Some(&(oc, os)) = other.get(k) else {
                        panic!(
                            "--sort {sort} {flag}: {who}'s row '{k}' ({c}%) is missing\nperf: {theirs:?}\nlbrprof: {ours:?}"
                        );
                    };
                    assert!(
                        (c - oc).abs() < 0.015 && (s - os).abs() < 0.015,
                        "--sort {sort} {flag}: '{k}' {who} {c}/{s}, other {oc}/{os}"
                    );
                }
            }
        }
    }
    // The workload's threads are all there, under perf's Pid:Command spelling.
    let ours = common::ok(&["report", "-i", d, "--sort", "pid", "--limit", "0"]);
    for comm in ["sort_keys", "spinner", "child"] {
        assert!(ours.contains(&format!(":{comm}")), "{ours}");
    }
}

#[test]
fn children_are_shown_by_default_with_call_chains_and_order_rows() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    let text = common::ok(&["report", "-i", d, "--sort", "comm,dso"]);
    assert!(text.contains("# Children      Self  Command"), "{text}");
    let rows = table_rows(&text, true);
    // libc is on every stack (__libc_start_call_main, start_thread) but rarely sampled.
    let libc = rows
        .iter()
        .find(|(k, _)| k.starts_with("sort_keys libc.so"))
        .map(|(_, v)| *v)
        .expect("sort_keys libc row");
    assert!(libc.0 > 30.0 && libc.1 < 1.0, "{libc:?}");
    let no = common::ok(&["report", "-i", d, "--sort", "comm,dso", "--no-children"]);
    assert!(no.contains("# Overhead  Command"), "{no}");
    // --percent-limit cuts by the ordering column.
    let cut = table_rows(
        &common::ok(&[
            "report",
            "-i",
            d,
            "--sort",
            "comm,dso",
            "--no-children",
            "--percent-limit",
            "5",
        ]),
        false,
    );
    assert!(
        !cut.is_empty() && cut.values().all(|v| v.1 >= 5.0),
        "{cut:?}"
    );
    // Markdown too (for CI logs), with the tree as a nested list.
    let md = common::ok(&[
        "report", "-i", d, "--sort", "comm,dso", "--format", "markdown", "-g",
    ]);
    assert!(
        md.contains("| Children | Self | Command | Shared Object |"),
        "{md}"
    );
    assert!(
        md.contains("### Call tree (caller") && md.contains("  - "),
        "{md}"
    );
    assert!(
        common::run(&["report", "-i", d, "--sort", "comm", "--format", "folded"])
            .status
            .code()
            == Some(2)
    );
    // JSON carries the same table.
    let j = common::json(&["report", "-i", d, "--sort", "comm,dso", "--format", "json"]);
    assert_eq!(j["hist"]["keys"], serde_json::json!(["comm", "dso"]));
    assert_eq!(j["hist"]["children"], true);
    let sum: f64 = j["hist"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["self_pct"].as_f64().unwrap())
        .sum();
    assert!((sum - 100.0).abs() < 0.01, "self shares sum to {sum}");
}

/// perf's folded call graph lines (`PCT% a;b;c`) → path → percent.
fn perf_folded(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some((pct, path)) = line.split_once("% ")
            && let Ok(p) = pct.trim().parse::<f64>()
            && !path.starts_with(' ')
            && !path.starts_with('[')
        {
            *out.entry(path.to_owned()).or_default() += p;
        }
    }
    out
}

/// Every complete path of a JSON call tree (a node where samples end) → percent.
fn tree_paths(tree: &serde_json::Value) -> BTreeMap<String, f64> {
    fn walk(nodes: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, f64>) {
        for n in nodes.as_array().unwrap() {
            let f = n["function"].as_str().unwrap();
            let path = if prefix.is_empty() {
                f.to_owned()
            } else {
                format!("{prefix};{f}")
            };
            let s = n["self_pct"].as_f64().unwrap();
            if s > 0.0 {
                *out.entry(path.clone()).or_default() += s;
            }
            walk(&n["children"], &path, out);
        }
    }
    let mut out = BTreeMap::new();
    walk(&tree["roots"], "", &mut out);
    out
}

#[test]
fn call_trees_match_perf_call_graphs() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    for order in ["caller", "callee"] {
        let theirs = perf_folded(&perf(&[
            "report",
            "-i",
            d,
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "-g",
            &format!("folded,0,{order},function,percent"),
        ]));
        let j = common::json(&[
            "report",
            "-i",
            d,
            "-g",
            order,
            "--format",
            "json",
            "--percent-limit",
            "0",
            "--limit",
            "0",
        ]);
        assert_eq!(j["call_tree"]["order"], order);
        let ours = tree_paths(&j["call_tree"]);
        let main_paths = theirs.keys().filter(|p| p.contains("main")).count();
        assert!(main_paths >= 2, "perf's {order} graph: {theirs:?}");
        for (rows, other, who) in [(&theirs, &ours, "perf"), (&ours, &theirs, "lbrprof")] {
            for (path, &p) in rows.iter().filter(|(k, p)| named(k) && **p >= 1.0) {
                let o = other.get(path).copied().unwrap_or(0.0);
                assert!(
                    (p - o).abs() < 0.015,
                    "-g {order}: {who}'s path {path} is {p}%, the other's {o}%\nperf: {theirs:?}\nlbrprof: {ours:?}"
                );
            }
        }
    }
    // Text: the tree is indented, callers first in caller order.
    let text = common::ok(&["report", "-i", d, "-g"]);
    let main = text
        .lines()
        .position(|l| l.contains(" main ["))
        .expect("main");
    let mid = text
        .lines()
        .position(|l| l.contains(" mid_a ["))
        .expect("mid_a");
    assert!(main < mid, "{text}");
    let callee = common::ok(&["report", "-i", d, "-g", "callee"]);
    let first = callee
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap_or_default();
    assert!(
        first.contains(" spin [") || first.contains(" leaf ["),
        "the hottest sampled function first: {callee}"
    );
}

/// Sample times as `perf script` prints them (seconds, microseconds).
fn perf_times(data: &str) -> Vec<f64> {
    perf(&["script", "-i", data, "-F", "time"])
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(':').parse().ok())
        .collect()
}

fn samples(text: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with("# samples:") || l.starts_with("# Samples:"))
        .unwrap_or_else(|| panic!("no sample count in {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn time_windows_match_perf() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    let times = perf_times(d);
    // The workload's fixed work gives ~200-300 samples at 999 Hz, fewer on a fast CPU.
    let n = times.len();
    assert!(n >= 100, "{n} samples");
    let at = |i: usize| format!("{:.6}", times[i] + 0.0000005);
    let absolute = [
        format!("{},{}", at(n / 4), at(3 * n / 4)),
        format!(",{}", at(n / 2)),
        format!("{},", at(n / 2)),
    ];
    for window in
        absolute
            .iter()
            .map(String::as_str)
            .chain(["10%/2", "0%-25%,50%-60%", "33%", "10%/10"])
    {
        // perf report rounds its sample count ("# Samples: 1K of event"); perf script
        // applies the same --time parser and prints every sample.
        let theirs = perf(&["script", "-i", d, "-F", "time", "--time", window])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count() as u64;
        let ours = samples(&common::ok(&["report", "-i", d, "--time", window]));
        assert_eq!(ours, theirs, "--time {window}");
        assert!(ours > 0, "--time {window}");
    }
    // Relative windows: seconds after the first sample.
    let first = times[0];
    let want = times
        .iter()
        .filter(|&&t| (first + 0.1..=first + 0.5).contains(&t))
        .count() as u64;
    let ours = samples(&common::ok(&["report", "-i", d, "--time", "+0.1,+0.5"]));
    assert!(
        ours.abs_diff(want) <= 1,
        "--time +0.1,+0.5: {ours}, perf script {want}"
    );
    // The other outputs take the window too.
    let j = common::json(&["report", "-i", d, "--time", "10%/2", "--format", "json"]);
    assert!(j["meta"]["filtered_out"].as_u64().unwrap() > 0);
}

#[test]
fn filters_that_match_nothing_say_so() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    for filter in [
        &["--comm", "no-such-command"][..],
        &["--pid", "999999999"],
        &["--tid", "999999999"],
        &["--dso", "no-such.so"],
        &["--time", "1,2"],
        &["--comm", "spinner", "--dso", "no-such.so"],
    ] {
        let mut args = vec!["report", "-i", d];
        args.extend(filter);
        let out = common::run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{filter:?}: {err}");
        assert!(
            err.contains("no sample of") && err.contains(filter[0]) && err.lines().count() == 1,
            "{filter:?}: {err}"
        );
        // The same for the other commands that read a recording.
        let mut args = vec!["flamegraph", "-i", d, "-o", "/dev/null"];
        args.extend(filter);
        assert_eq!(
            common::run(&args).status.code(),
            Some(2),
            "flamegraph {filter:?}"
        );
    }
    // The perf.data export keeps every sample: it refuses a window rather than ignore it.
    let out = common::run(&[
        "export",
        "-i",
        d,
        "--perf-data",
        "-o",
        "/dev/null",
        "--time",
        "1,",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // A filter that matches keeps only its samples.
    let text = common::ok(&["report", "-i", d, "--comm", "spinner", "--sort", "comm"]);
    let rows = table_rows(&text, true);
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["spinner"], "{text}");
    assert!((rows["spinner"].1 - 100.0).abs() < 0.01);
}

#[test]
fn bad_sort_and_time_values_are_one_line_errors() {
    for args in [
        &["report", "--sort", "bogus"][..],
        &["report", "--sort", "comm,comm"],
        &["report", "--sort", "comm,self"],
        &["report", "--time", "2,1"],
        &["report", "--time", "10%/0"],
        &["report", "--time", "abc"],
        &["report", "-g", "sideways"],
    ] {
        let out = common::run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

/// `info` of perf's recording: the build-ids `perf buildid-list` prints, the sample count
/// and time span of `perf report --header-only`.
#[test]
fn info_matches_perf_buildid_list_and_header() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    let info = common::ok(&["info", d]);
    // perf.data keeps no wall-clock start: said, not printed as 0 (1970).
    assert!(
        info.contains("started:       unknown (not recorded in the file)"),
        "{info}"
    );
    let ids = perf(&["buildid-list", "-i", d]);
    // perf lists the objects its samples hit: the program at least, often the kernel and
    // libc too (under load once only two), so the comparison below is the check.
    assert!(!ids.trim().is_empty(), "{ids}");
    for line in ids.lines() {
        let (id, path) = line.split_once(' ').unwrap();
        assert!(
            info.lines().any(|l| l.trim() == format!("{id}  {path}")),
            "{id} {path} not in info:\n{info}"
        );
    }
    let n = perf_times(d).len();
    assert!(
        info.contains(&format!("event:         cpu-clock: {n} samples")),
        "{info}"
    );
    let header = perf(&["report", "-i", d, "--header-only"]);
    let ms: f64 = header
        .lines()
        .find_map(|l| l.strip_prefix("# sample duration :"))
        .and_then(|l| l.trim().strip_suffix(" ms"))
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{header}"));
    let span: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("sampled span:"))
        .and_then(|l| l.trim().strip_suffix(" s"))
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{info}"));
    assert!(
        (span * 1000.0 - ms).abs() < 1.0,
        "span {span} s, perf {ms} ms"
    );
}
