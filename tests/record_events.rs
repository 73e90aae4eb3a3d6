//! `record -e EVENT[,EVENT...]` and `-c PERIOD`: software events, tracepoints (from
//! tracefs), several events in one recording (each sample keeps its event), and a clear
//! error for hardware events where there is no PMU, checked against perf on the same
//! workload (`tests/workloads/sort_keys.c`).

mod common;

use std::path::Path;
use std::process::Command;

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

/// tracefs mounted where perf and lbrprof look for it (perf mounts it on demand the same
/// way).
fn tracefs() -> bool {
    let root = Path::new("/sys/kernel/tracing");
    if root.join("events").is_dir() {
        return true;
    }
    let _ = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status();
    let ok = root.join("events").is_dir();
    if !ok {
        eprintln!("skipped: needs tracefs at /sys/kernel/tracing");
    }
    ok
}

fn report_json(data: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["report", "-i", data.to_str().unwrap(), "--format", "json"];
    args.extend(extra);
    common::json(&args)
}

/// `perf stat -e EVENT -x,` of a command: the event's count.
fn perf_stat(event: &str, cmd: &[&str]) -> u64 {
    perf_stat_value(event, cmd) as u64
}

/// `perf stat -e EVENT -x,` of a command: the event's value (msec for task-clock).
fn perf_stat_value(event: &str, cmd: &[&str]) -> f64 {
    let out = Command::new("perf")
        .args(["stat", "-x", ",", "-e", event, "--"])
        .args(cmd)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains(event))
        .unwrap_or_else(|| panic!("perf stat printed no {event}: {text}"));
    line.split(',').next().unwrap().trim().parse().unwrap()
}

#[test]
fn software_event_with_a_period() {
    if !common::perf_available() || !have("gcc") || !have("perf") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = common::build_workload(tmp.path(), "sort_keys");
    let exe = exe.to_str().unwrap();
    let data = tmp.path().join("faults.data");
    let out = common::run(&[
        "record",
        "-o",
        data.to_str().unwrap(),
        "-e",
        "page-faults",
        "-c",
        "10",
        "--",
        exe,
        "300000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("event page-faults") && err.contains("every 10 events"),
        "{err}"
    );
    let j = report_json(&data, &[]);
    assert_eq!(j["meta"]["event"], "page-faults");
    let samples = j["meta"]["samples"].as_u64().unwrap();
    // Every sample stands for exactly 10 faults.
    assert_eq!(j["meta"]["weight"].as_u64().unwrap(), samples * 10);
    // About one sample per ten faults perf counts for the same program.
    let faults = perf_stat("page-faults", &[exe, "300000"]);
    let expect = faults / 10;
    assert!(
        samples.abs_diff(expect) <= expect / 4 + 3,
        "{samples} samples, perf stat counts {faults} faults"
    );
    // -c and -F are two ways to say the same thing.
    let both = common::run(&["record", "-c", "10", "-F", "99", "--", "true"]);
    assert_eq!(both.status.code(), Some(2));
    let zero = common::run(&["record", "-c", "0", "--", "true"]);
    assert_eq!(zero.status.code(), Some(2));
}

#[test]
fn tracepoint_samples_every_hit_with_stacks() {
    if !common::perf_available() || !have("gcc") || !have("perf") || !tracefs() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = common::build_workload(tmp.path(), "sort_keys");
    let exe = exe.to_str().unwrap();
    let data = tmp.path().join("switch.data");
    common::ok(&[
        "record",
        "-o",
        data.to_str().unwrap(),
        "-e",
        "sched:sched_process_exit",
        "--",
        exe,
        "100000",
    ]);
    let j = report_json(&data, &["--sort", "comm"]);
    assert_eq!(j["meta"]["event"], "sched:sched_process_exit");
    // One exit per thread: the main thread, the spinner thread and the child, as perf
    // counts them.
    let samples = j["meta"]["samples"].as_u64().unwrap();
    let exits = perf_stat("sched:sched_process_exit", &[exe, "100000"]);
    assert_eq!(samples, exits, "{j}");
    let comms: Vec<&str> = j["hist"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["keys"][0].as_str().unwrap())
        .collect();
    for c in ["spinner", "child"] {
        assert!(comms.contains(&c), "{comms:?}");
    }
    // Kernel stacks come with the samples: the exit path is named.
    let j = report_json(&data, &["--sort", "sym"]);
    let syms = j["hist"]["rows"].to_string();
    assert!(syms.contains("do_exit"), "{syms}");
}

#[test]
fn unknown_and_unavailable_events_are_one_line_errors() {
    for (event, says) in [
        ("bogus", "unknown event 'bogus'"),
        ("nosuch:thing", "tracepoint"),
        ("cpu-clock,bogus", "unknown event 'bogus'"),
        ("cpu-clock,nosuch:thing", "no tracepoint 'nosuch:thing'"),
        ("cpu-clock,cpu-clock", "event 'cpu-clock' is given twice"),
        ("auto,page-faults", "-e auto cannot be combined"),
    ] {
        let out = common::run(&["record", "-e", event, "--", "true"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{event}: {err}");
        assert!(err.contains(says), "{event}: {err}");
        assert_eq!(err.lines().count(), 1, "{event}: {err}");
    }
    if !common::perf_available() {
        return;
    }
    // A hardware event: where there is no PMU, the error names the event and why.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("insns.data");
    let out = common::run(&[
        "record",
        "-e",
        "instructions",
        "-o",
        data.to_str().unwrap(),
        "--",
        "true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if Path::new("/sys/bus/event_source/devices/cpu").is_dir() {
        eprintln!("this host has a PMU: -e instructions gave {:?}", out.status);
    } else {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("'instructions' needs a hardware PMU") && err.lines().count() == 1,
            "{err}"
        );
    }
}

/// Online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-1`).
fn online_cpus() -> usize {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    text.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn system_wide_and_per_cpu_recordings() {
    if !common::perf_available() || !have("gcc") || !have("perf") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = common::build_workload(tmp.path(), "sort_keys");
    let exe = exe.to_str().unwrap();
    // -a: every task on every CPU while the command runs.
    let data = tmp.path().join("all.data");
    common::ok(&[
        "record",
        "-a",
        "-o",
        data.to_str().unwrap(),
        "--",
        exe,
        "300000",
    ]);
    let info = common::ok(&["info", data.to_str().unwrap()]);
    assert!(
        info.contains("target:        every task on CPUs "),
        "{info}"
    );
    let j = report_json(&data, &["--sort", "comm", "--limit", "0"]);
    let comms: Vec<&str> = j["hist"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["keys"][0].as_str().unwrap())
        .collect();
    for c in ["sort_keys", "spinner", "child"] {
        assert!(comms.contains(&c), "{comms:?}");
    }
    // cpu-clock ticks on every CPU, busy or idle (idle time is swapper's), as perf -a:
    // about F samples a second per CPU.
    let samples = j["meta"]["samples"].as_u64().unwrap() as f64;
    let secs = j["meta"]["duration_ns"].as_u64().unwrap() as f64 / 1e9;
    let rate = samples / secs / online_cpus() as f64;
    assert!((650.0..1100.0).contains(&rate), "{rate} samples/s per CPU");

    // -C: only that CPU's samples (perf script of the perf.data export says which CPU).
    // The recording lasts as long as the command: ~0.5 s of it, so that CPU 0 ticks
    // well over 50 times (300000 keys take ~45 ms: about 45 samples, seen in CI).
    let data = tmp.path().join("cpu0.data");
    common::ok(&[
        "record",
        "-C",
        "0",
        "-o",
        data.to_str().unwrap(),
        "--",
        exe,
        "3000000",
    ]);
    let exported = tmp.path().join("cpu0.perf");
    common::ok(&[
        "export",
        "-i",
        data.to_str().unwrap(),
        "--perf-data",
        "-o",
        exported.to_str().unwrap(),
    ]);
    let out = Command::new("perf")
        .args(["script", "-F", "cpu", "-i"])
        .arg(&exported)
        .output()
        .unwrap();
    let cpus = String::from_utf8_lossy(&out.stdout);
    assert!(cpus.lines().count() > 50, "{cpus}");
    assert!(cpus.lines().all(|l| l.trim() == "[000]"), "{cpus}");

    // Bad CPU lists and conflicting targets are one-line errors.
    for args in [
        &["record", "-C", "4096", "--", "true"][..],
        &["record", "-C", "x", "--", "true"],
        &["record", "-a", "-p", "1"],
    ] {
        let mut args = args.to_vec();
        let out_path = tmp.path().join("bad.data");
        args.splice(1..1, ["-o", out_path.to_str().unwrap()]);
        let out = common::run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

/// `info`'s `event: NAME: N samples` lines.
fn info_event_counts(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|l| l.strip_prefix("event:         "))
        .filter_map(|l| l.strip_suffix(" samples"))
        .filter_map(|l| l.rsplit_once(": "))
        .map(|(name, n)| (name.to_owned(), n.parse().unwrap()))
        .collect()
}

/// `report`'s section headers, `# Samples: N of event 'X'`.
fn report_sections(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# Samples: "))
        .filter_map(|l| l.split_once(" of event '"))
        .map(|(n, e)| (e.trim_end_matches('\'').to_owned(), n.parse().unwrap()))
        .collect()
}

#[test]
fn several_events_in_one_recording() {
    if !common::perf_available() || !have("gcc") || !have("perf") || !tracefs() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = common::build_workload(tmp.path(), "sort_keys");
    let exe = exe.to_str().unwrap();
    let data = tmp.path().join("three.data");
    let d = data.to_str().unwrap();
    // A list and a repeated -e, as perf takes them.
    let out = common::run(&[
        "record",
        "-o",
        d,
        "-e",
        "cpu-clock,task-clock",
        "-e",
        "sched:sched_switch",
        "--",
        exe,
        "300000",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("events cpu-clock,task-clock,sched:sched_switch ("),
        "{err}"
    );
    let info = common::ok(&["info", d]);
    let counts = info_event_counts(&info);
    let names: Vec<&str> = counts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["cpu-clock", "task-clock", "sched:sched_switch"],
        "{info}"
    );
    let count = |name: &str| counts.iter().find(|(n, _)| n == name).unwrap().1;
    let (clock, task, switches) = (
        count("cpu-clock"),
        count("task-clock"),
        count("sched:sched_switch"),
    );
    // Side band is recorded once, not once per event: one exec of the workload.
    assert!(info.contains(" 1 exec,"), "{info}");
    // Both clocks tick at -F 999 on the same threads: about 999 samples per second of
    // the CPU time perf stat measures for the program. perf stat measures other runs,
    // whose CPU time differs from the recorded one's on a loaded machine (a 45 ms run
    // against a recorded 84 ms, seen in CI): within a factor of two of two such runs.
    let runs = [0; 2].map(|_| perf_stat_value("task-clock", &[exe, "300000"]));
    let (lo, hi) = (runs[0].min(runs[1]), runs[0].max(runs[1]));
    for (name, n) in [("cpu-clock", clock), ("task-clock", task)] {
        let n = n as f64;
        assert!(
            n >= lo * 0.999 / 2.0 - 5.0 && n <= hi * 0.999 * 2.0 + 5.0,
            "{name}: {n} samples, perf stat says {runs:?} ms of CPU time"
        );
    }
    assert!(clock.abs_diff(task) <= clock / 5 + 3, "{counts:?}");
    // The workload's threads block (join, wait): the tracepoint hits, each a sample.
    assert!(switches >= 3, "{counts:?}");
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert!(info.contains(&format!("samples:       {total} ")), "{info}");

    // report: one section per event, with the counts info gives.
    let text = common::ok(&["report", "-i", d]);
    assert_eq!(report_sections(&text), counts, "{text}");
    // --event NAME: that event alone, the stream and the fast path alike.
    for (name, n) in &counts {
        let j = report_json(&data, &["--event", name]);
        assert_eq!(j["meta"]["event"], name.as_str(), "{j}");
        assert_eq!(j["meta"]["samples"].as_u64(), Some(*n), "{name}");
        let streamed = common::lbrprof()
            .env("LBRPROF_STREAM", "1")
            .args(["report", "-i", d, "--format", "json", "--event", name])
            .output()
            .unwrap();
        let streamed: serde_json::Value = serde_json::from_slice(&streamed.stdout).unwrap();
        assert_eq!(streamed["meta"]["samples"].as_u64(), Some(*n), "{name}");
    }
    // A tracepoint sample stands for one hit.
    let j = report_json(&data, &["--event", "sched:sched_switch"]);
    assert_eq!(j["meta"]["weight"].as_u64(), Some(switches), "{j}");
    let j = report_json(&data, &["--event", "all"]);
    assert_eq!(j["meta"]["samples"].as_u64(), Some(total));

    // One-profile outputs refuse to add the events up, naming them; --event picks one.
    let svg = tmp.path().join("f.svg");
    let s = svg.to_str().unwrap();
    let out = common::run(&["flamegraph", "-i", d, "-o", s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cpu-clock, task-clock, sched:sched_switch") && err.lines().count() == 1,
        "{err}"
    );
    common::ok(&["flamegraph", "-i", d, "-o", s, "--event", "task-clock"]);
    let pprof = tmp.path().join("out.pb.gz");
    let p = pprof.to_str().unwrap();
    let out = common::run(&["export", "-i", d, "--pprof", "-o", p]);
    assert_eq!(out.status.code(), Some(2));
    common::ok(&[
        "export",
        "-i",
        d,
        "--pprof",
        "-o",
        p,
        "--event",
        "cpu-clock",
    ]);
    let folded = common::ok(&[
        "report",
        "-i",
        d,
        "--format",
        "folded",
        "--event",
        "sched:sched_switch",
    ]);
    let weight: u64 = folded
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(weight, switches, "{folded}");
    let out = common::run(&["report", "-i", d, "--event", "cycles"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no event named \"cycles\""), "{err}");
}
