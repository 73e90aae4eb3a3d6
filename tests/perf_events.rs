//! perf.data files with samples of several events (`perf record -e a,b`), checked against
//! what perf prints for the same file: `report` prints one section per event with perf's
//! `# Samples: N of event 'X'` line and each event's own sample and event counts (a fixed
//! period, `-c`/`period=N`, weighs each sample as perf does); `info` lists every event's
//! samples; `--event NAME` picks one; outputs that show one profile (flame graph, JSON,
//! folded, diff, exports) refuse a file with several events in one line naming them. The recording is made at
//! test time with `perf record -e cpu-clock/freq=999/,page-faults/period=2/ -g` of
//! `tests/workloads/sort_keys.c` (whose forked child copies memory: page faults).

mod common;

use common::perf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const CLOCK: &str = "cpu-clock/freq=999/";
const FAULTS: &str = "page-faults/period=2/";

/// One two-event `perf record` of the sort_keys workload (`None`, having said why, where
/// perf cannot record).
fn recording() -> Option<&'static Path> {
    static DATA: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    DATA.get_or_init(|| {
        common::perf_record_workload(
            "sort_keys",
            &["-q", "-e", &format!("{CLOCK},{FAULTS}"), "-g"],
        )
    })
    .as_ref()
    .map(|(_, p)| p.as_path())
}

/// Samples per event, from `perf script -F event` (one `NAME:` line per sample).
fn perf_script_counts(data: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in perf(&["script", "-F", "event", "-i", data]).lines() {
        let name = line.trim().trim_end_matches(':');
        if !name.is_empty() {
            *counts.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// Event count per event, from the section headers of `perf report --stdio`.
fn perf_event_counts(data: &str) -> BTreeMap<String, u64> {
    let text = perf(&["report", "--stdio", "-i", data]);
    let mut counts = BTreeMap::new();
    let mut event = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# Samples: ") {
            event = rest
                .split_once(" of event '")
                .map(|(_, e)| e.trim_end_matches('\'').to_owned());
        } else if let Some(n) = line.strip_prefix("# Event count (approx.): ") {
            counts.insert(event.take().unwrap(), n.trim().parse().unwrap());
        }
    }
    counts
}

#[test]
fn report_prints_one_section_per_event_with_perfs_counts() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    let samples = perf_script_counts(d);
    let events = perf_event_counts(d);
    assert_eq!(
        samples.keys().collect::<Vec<_>>(),
        [CLOCK, FAULTS],
        "perf script: {samples:?}"
    );
    assert!(samples[FAULTS] > 10, "{samples:?}");
    assert_eq!(
        events[FAULTS],
        2 * samples[FAULTS],
        "perf report: {events:?}"
    );
    let text = common::ok(&["report", "-i", d, "--limit", "5"]);
    // Sections in file order, each with perf's line, then its own header.
    let sections: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("# Samples: "))
        .collect();
    assert_eq!(
        sections,
        [
            format!("# Samples: {} of event '{CLOCK}'", samples[CLOCK]),
            format!("# Samples: {} of event '{FAULTS}'", samples[FAULTS]),
        ],
        "{text}"
    );
    for (event, n) in &samples {
        let header = format!("# samples:  {n} (event count {}),", events[event]);
        assert!(text.contains(&header), "no '{header}' in:\n{text}");
        assert!(text.contains(&format!("# event:    {event}\n")), "{text}");
    }
    // --event picks one section's report.
    let one = common::ok(&["report", "-i", d, "--event", FAULTS, "--limit", "5"]);
    assert!(!one.contains("# Samples: "), "{one}");
    assert!(
        one.contains(&format!(
            "# samples:  {} (event count {}),",
            samples[FAULTS], events[FAULTS]
        )),
        "{one}"
    );
    let json = common::json(&["report", "-i", d, "--event", CLOCK, "--format", "json"]);
    assert_eq!(json["meta"]["samples"], samples[CLOCK], "{}", json["meta"]);
    // `--event all` counts them together.
    let all = common::json(&["report", "-i", d, "--event", "all", "--format", "json"]);
    assert_eq!(
        all["meta"]["samples"],
        samples.values().sum::<u64>(),
        "{}",
        all["meta"]
    );
}

#[test]
fn info_lists_every_events_samples() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    let samples = perf_script_counts(d);
    let info = common::ok(&["info", d]);
    for (event, n) in &samples {
        let line = format!("event:         {event}: {n} samples");
        assert!(info.lines().any(|l| l == line), "no '{line}' in:\n{info}");
    }
}

#[test]
fn one_profile_outputs_need_an_event_chosen() {
    let Some(data) = recording() else { return };
    let d = data.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("f.svg");
    let svg = svg.to_str().unwrap();
    for args in [
        vec!["flamegraph", "-i", d, "-o", svg],
        vec!["report", "-i", d, "--format", "json"],
        vec!["report", "-i", d, "--format", "folded"],
        vec!["diff", d, d],
        vec!["export", "-i", d, "--perf-data", "-o", svg],
        vec!["export", "-i", d, "--pprof", "-o", svg],
    ] {
        let out = common::run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("2 events ({CLOCK}, {FAULTS})")) && err.contains("--event"),
            "{args:?}: {err}"
        );
    }
    common::ok(&["flamegraph", "-i", d, "--event", FAULTS, "-o", svg]);
    let diff = common::ok(&["diff", d, d, "--event", FAULTS]);
    assert!(diff.contains(&format!("cost {FAULTS}")), "{diff}");
    assert!(std::fs::read(svg).unwrap().starts_with(b"<?xml"));
    let out = common::run(&["report", "-i", d, "--event", "nosuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(CLOCK), "{err}");
}
