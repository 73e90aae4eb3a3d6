//! End-to-end tests of the host+guest picture: `record --vm`, pairing in `report`,
//! unified flame graphs and `lbrprof demo`. The tests that run a guest need /dev/kvm and
//! perf_event_open; the pairing rules are also checked on a synthetic recording, so they
//! run everywhere.

mod common;

use common::{check_edge_counts, json, ok, svg_titles};

use std::path::{Path, PathBuf};

use lbrprof_data::model::*;
use lbrprof_data::recording::{RecordingWriter, Summary};
use serde_json::Value;

#[test]
fn demo_without_kvm_records_the_host_workload() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("d");
    let out = common::lbrprof()
        .args(["demo", "-o", out_dir.to_str().unwrap()])
        .env("LBRPROF_DEMO_NO_KVM", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("LBRPROF_DEMO_NO_KVM is set"), "{stderr}");
    assert!(stderr.contains("host workload"), "{stderr}");
    let svg = std::fs::read(out_dir.join("flamegraph.svg")).unwrap();
    let titles = svg_titles(&svg);
    assert!(
        titles
            .iter()
            .any(|t| t.contains("demo_hot_loop") || t.contains("demo_branchy")),
        "the host workload's functions are not in the flame graph"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("branches.json")).unwrap()).unwrap();
    assert!(report["vm"].is_null());
    assert!(report["meta"]["samples"].as_u64().unwrap() > 100);
}

#[test]
fn record_vm_keeps_the_guest_exit_status_and_image() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("g.data");
    let out = common::run(&[
        "record",
        "--vm",
        "builtin:sort",
        "-o",
        data.to_str().unwrap(),
        "--serial",
        dir.path().join("console").to_str().unwrap(),
        "--",
        "n=2000",
        "exit=3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "guest exit=3 gives (3 << 1) | 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("g.data.guest/sort").is_file());
    // Private, as perf makes perf.data: the recording and the copies beside it.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o600);
    assert_eq!(mode(&dir.path().join("g.data.guest")), 0o700);
    assert_eq!(mode(&dir.path().join("g.data.guest/sort")), 0o600);
    let info = ok(&["info", data.to_str().unwrap()]);
    assert!(info.contains("builtin:sort"), "{info}");
    assert!(info.contains("vcpu0"), "{info}");
}

#[test]
fn record_vm_reports_requested_and_effective_snapshot_rates() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("g.data");
    let rec = |overhead: &str| {
        let out = common::run(&[
            "record",
            "--vm",
            "builtin:sort",
            "--lbr",
            "emulated",
            "--lbr-overhead",
            overhead,
            "-o",
            data.to_str().unwrap(),
            "--serial",
            dir.path().join("console").to_str().unwrap(),
            "--",
            "n=100000",
        ]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("lbrprof: guest snapshots: 999 Hz requested, "))
            .unwrap_or_else(|| panic!("no snapshot rate line: {err}"))
            .to_owned();
        assert!(line.contains("Hz effective per vCPU"), "{line}");
        let info = ok(&["info", data.to_str().unwrap()]);
        assert!(info.contains(&line["lbrprof: ".len()..]), "{info}");
        line
    };
    assert!(rec("0").ends_with("(not throttled)"));
    let budget = rec("5");
    assert!(budget.contains("5%"), "{budget}");
}

/// What the shim was doing at a host sample is a fact it marked (`lbrprof_vmm::phase`),
/// not a guess from function names: a Linux program making one-byte reads and writes
/// shows the shim serving its system calls, and the host kernel serving them for it;
/// nearly every sample of the vCPU thread was placed.
#[test]
fn host_activity_comes_from_the_shims_phase_marks() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dd.data");
    let out = common::run(&[
        "record",
        "--vm",
        "-F",
        "2000",
        "-o",
        data.to_str().unwrap(),
        "--",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=1",
        "count=10000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = data.to_str().unwrap();
    let report = json(&["report", "-i", input, "--format", "json", "--limit", "0"]);
    let rows = report["vm"]["activities"].as_array().unwrap();
    let samples = |activity: &str| {
        rows.iter()
            .find(|r| r["activity"] == activity)
            .map_or(0, |r| r["samples"].as_u64().unwrap())
    };
    let total: u64 = rows.iter().map(|r| r["samples"].as_u64().unwrap()).sum();
    let vcpu_thread = total - samples("other_threads");
    assert!(vcpu_thread > 100, "{rows:#?}");
    // 20000 system calls at tens of microseconds each: the shim's share is not small.
    assert!(samples("shim_linux") > 0, "{rows:#?}");
    assert!(
        samples("shim_linux") + samples("linux_kernel") >= vcpu_thread / 200,
        "{rows:#?}"
    );
    // Only samples taken before a vCPU thread installed its log can lack a phase.
    assert!(samples("shim_unknown") * 100 <= vcpu_thread, "{rows:#?}");
    let info = ok(&["info", input]);
    let placed: u64 = info
        .lines()
        .find_map(|l| l.strip_suffix(" host samples placed in a shim phase"))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no placed-samples count: {info}"));
    assert!(
        placed * 100 >= vcpu_thread * 99,
        "{placed} of {vcpu_thread}: {info}"
    );
}

#[test]
fn record_vm_rejects_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.data");
    let out = common::run(&[
        "record",
        "--vm",
        "builtin:nope",
        "-o",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no built-in guest image 'nope'"), "{err}");
    let out = common::run(&["record", "--vm", "/nonexistent/image", "-o", "x"]);
    assert_eq!(out.status.code(), Some(2));
    // Guest options need --vm.
    let out = common::run(&["record", "--vcpus", "2", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    // What the VM would refuse is refused before anything is written.
    for bad in [
        ["--vcpus", "0"],
        ["--mem", "1K"],
        ["--lbr-depth", "7"],
        ["--lbr-overhead", "101"],
    ] {
        let out = common::run(&[
            "record",
            "--vm",
            "builtin:sort",
            bad[0],
            bad[1],
            "-o",
            data.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
    assert!(!data.exists());
    assert!(!dir.path().join("x.data.guest").exists());
}

/// The address of the first symbol of `elf` whose name contains `part`.
fn symbol(elf: &[u8], part: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(elf).unwrap();
    file.symbols()
        .find(|s| s.name().is_ok_and(|n| n.contains(part)))
        .unwrap_or_else(|| panic!("no symbol {part}"))
        .address()
}

fn snapshot(vcpu: u32, time_ns: u64, ip: u64) -> LbrSnapshot {
    LbrSnapshot {
        vcpu,
        host_time_ns: time_ns,
        guest_tsc: 0,
        reason: SnapshotReason::Pmi { counter: 32 },
        tos: 0,
        entries: vec![LbrEntry {
            from: ip + 4,
            to: ip,
            info: 0,
        }],
        guest_ip: ip,
        guest_sp: 0,
        guest_fp: 0,
        cr3: 0,
        guest_stack: vec![],
        frozen_events: 0,
    }
}

/// Two vCPUs running different code (vCPU 0 in `partition`, vCPU 1 in
/// `insertion_sort`), their snapshots interleaved in time so that the nearest snapshot of
/// *any* vCPU is often the other one's: every sample must pair with its own vCPU's.
fn two_vcpu_recording(path: &Path, image_path: &Path) -> (u64, u64) {
    let image = lbrprof_vmm::builtin::image("sort").unwrap();
    std::fs::write(image_path, image).unwrap();
    let part = symbol(image, "9partition");
    let ins = symbol(image, "14insertion_sort");
    let header = Header {
        writer: "test".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: HostInfo::default(),
        sampling: SamplingConfig {
            event: "cpu-clock".into(),
            frequency: 1000,
            call_graph: "fp".into(),
            ..SamplingConfig::default()
        },
        target: Target::Vm {
            image: "builtin:sort".into(),
            vcpus: 2,
            backend: LbrBackend::Emulated,
            mode: "sampled".into(),
        },
    };
    let w = RecordingWriter::create(path, &header).unwrap();
    let sink = w.sink();
    for m in lbrprof_collector::vm::guest_mappings(image, image_path, 0) {
        sink.send(Event::Mapping(m));
    }
    for (vcpu, tid) in [(0, 101), (1, 102)] {
        sink.send(Event::Vcpu(VcpuThread {
            time_ns: 0,
            vm: 0,
            vcpu,
            pid: 100,
            tid,
        }));
    }
    let ms = 1_000_000u64;
    for k in 1..=100u64 {
        // vCPU 0 snapshots at k ms, vCPU 1 at k ms + 0.5 ms.
        sink.send(Event::Snapshot(snapshot(0, k * ms, part)));
        sink.send(Event::Snapshot(snapshot(1, k * ms + ms / 2, ins)));
        // Samples 0.4 ms after each vCPU's snapshot: the other vCPU's is 0.1 ms away.
        for (tid, at, ip) in [(101, k * ms + 400_000, part), (102, k * ms + 900_000, ins)] {
            sink.send(Event::Sample(HostSample {
                time_ns: at,
                pid: 100,
                tid,
                cpu: 0,
                period: ms,
                ip,
                mode: CpuMode::GuestUser,
                ..HostSample::default()
            }));
        }
    }
    // One sample of the shim's main thread: never paired.
    sink.send(Event::Sample(HostSample {
        time_ns: 5 * ms,
        pid: 100,
        tid: 100,
        period: ms,
        ip: 0x1000,
        mode: CpuMode::User,
        ..HostSample::default()
    }));
    w.finish(&Summary::default()).unwrap();
    (part, ins)
}

#[test]
fn each_vcpus_snapshots_pair_only_with_its_own_threads_samples() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("two.data");
    two_vcpu_recording(&data, &dir.path().join("sort"));
    let input = data.to_str().unwrap();

    let report = json(&["report", "-i", input, "--format", "json", "--limit", "0"]);
    let p = &report["vm"]["pairing"];
    assert_eq!(p["in_kvm_run"], 200, "{p}");
    assert_eq!(p["paired"], 200, "{p}");
    assert_eq!(p["not_vcpu_thread"], 1, "{p}");
    // Each sample is 0.4 ms after its own vCPU's snapshot, 0.1 ms before the other's.
    assert_eq!(p["distance_max_ns"], 400_000, "{p}");
    assert_eq!(report["vm"]["check"]["cross_vcpu"], 0);
    check_edge_counts(&report);

    let folded = ok(&["report", "-i", input, "--format", "folded"]);
    let count = |needle: &[&str]| -> u64 {
        folded
            .lines()
            .filter(|l| needle.iter().all(|n| l.contains(n)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        count(&["[vcpu0 thread]", "[guest vcpu0]", "partition"]),
        100,
        "{folded}"
    );
    assert_eq!(
        count(&["[vcpu1 thread]", "[guest vcpu1]", "insertion_sort"]),
        100,
        "{folded}"
    );
    assert_eq!(count(&["[vcpu0 thread]", "[guest vcpu1]"]), 0, "{folded}");
    assert_eq!(count(&["[vcpu1 thread]", "[guest vcpu0]"]), 0, "{folded}");

    // A window below the 0.4 ms distance pairs nothing; the reasons are counted.
    let narrow = json(&[
        "report",
        "-i",
        input,
        "--format",
        "json",
        "--pair-window",
        "399999",
    ]);
    let p = &narrow["vm"]["pairing"];
    assert_eq!(p["paired"], 0, "{p}");
    assert_eq!(p["no_snapshot_in_window"], 200, "{p}");
    // Boundary inclusive.
    let exact = json(&[
        "report",
        "-i",
        input,
        "--format",
        "json",
        "--pair-window",
        "400000",
    ]);
    assert_eq!(exact["vm"]["pairing"]["paired"], 200);
}

/// Host samples and guest snapshots are different measurements: each side's function
/// table has its own denominator, stated in its header, and its shares sum to 100%.
#[test]
fn host_and_guest_function_tables_keep_their_own_denominators() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("two.data");
    two_vcpu_recording(&data, &dir.path().join("sort"));
    let input = data.to_str().unwrap();

    let report = json(&["report", "-i", input, "--format", "json", "--limit", "0"]);
    let functions = report["functions"].as_array().unwrap();
    let side_sum = |side: &str, field: &str| -> f64 {
        functions
            .iter()
            .filter(|f| f["side"] == side)
            .map(|f| f[field].as_f64().unwrap())
            .sum()
    };
    for side in ["host", "guest"] {
        let total = side_sum(side, "self_pct");
        assert!(
            (total - 100.0).abs() < 0.01,
            "{side} self shares sum to {total}"
        );
    }
    assert_eq!(
        side_sum("guest", "self_weight"),
        report["meta"]["guest_weight"].as_f64().unwrap()
    );
    assert_eq!(
        side_sum("host", "self_weight"),
        report["meta"]["weight"].as_f64().unwrap()
    );
    // 100 snapshots in partition and 100 in insertion_sort: half of the guest each.
    let guest_share = |needle: &str| {
        functions
            .iter()
            .find(|f| f["side"] == "guest" && f["function"].as_str().unwrap().contains(needle))
            .map(|f| f["self_pct"].as_f64().unwrap())
    };
    assert_eq!(guest_share("partition"), Some(50.0), "{functions:#?}");
    assert_eq!(guest_share("insertion_sort"), Some(50.0), "{functions:#?}");

    let text = ok(&["report", "-i", input]);
    let host_at = text
        .find("# Hot host functions (share of the host event count, 201 samples)")
        .unwrap_or_else(|| panic!("{text}"));
    let guest_at = text
        .find("# Hot guest functions (share of 200 guest LBR snapshots")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(host_at < guest_at);
    let markdown = ok(&["report", "-i", input, "--format", "markdown"]);
    assert!(markdown.contains("### Hot guest functions"), "{markdown}");
}

/// The pprof export keeps host and guest apart with a `side` label (and `vcpu` on guest
/// samples), so `go tool pprof -tagfocus` shows each side as `report` does.
#[test]
fn pprof_export_labels_guest_snapshots_by_side_and_vcpu() {
    if !common::go_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("two.data");
    two_vcpu_recording(&data, &dir.path().join("sort"));
    let pb = dir.path().join("two.pb.gz");
    let out = common::run(&[
        "export",
        "-i",
        data.to_str().unwrap(),
        "--pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -noinlines: count code inlined into a function as the function's own.
    let top = |focus: &str| -> String {
        let focus = format!("-tagfocus={focus}");
        common::pprof_top(&[
            "-sample_index=samples",
            "-noinlines",
            &focus,
            pb.to_str().unwrap(),
        ])
    };
    let flat = |text: &str, needle: &str| -> Option<u64> {
        common::pprof_rows(text)
            .into_iter()
            .find(|(_, f)| f.contains(needle))
            .map(|(n, _)| n)
    };
    // 100 snapshots per vCPU: partition on vCPU 0, insertion_sort on vCPU 1.
    let guest = top("side=guest");
    assert_eq!(flat(&guest, "partition"), Some(100), "{guest}");
    assert_eq!(flat(&guest, "insertion_sort"), Some(100), "{guest}");
    let vcpu1 = top("vcpu=1");
    assert_eq!(flat(&vcpu1, "insertion_sort"), Some(100), "{vcpu1}");
    assert_eq!(flat(&vcpu1, "partition"), None, "{vcpu1}");
    // The host side: 200 guest-mode samples of the vCPU threads and one of the shim.
    let host = top("side=host");
    assert!(host.contains("accounting for 201, "), "{host}");
}

#[test]
fn flame_graph_views_of_a_guest_recording() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("two.data");
    two_vcpu_recording(&data, &dir.path().join("sort"));
    let input = data.to_str().unwrap();
    let draw = |extra: &[&str]| -> Vec<String> {
        let svg = dir.path().join("f.svg");
        let mut args = vec!["flamegraph", "-i", input, "-o", svg.to_str().unwrap()];
        args.extend_from_slice(extra);
        ok(&args);
        svg_titles(&std::fs::read(&svg).unwrap())
    };
    let unified = draw(&[]);
    let any = |t: &[String], s: &str| t.iter().any(|x| x.starts_with(s));
    assert!(any(&unified, "[vcpu0 thread]") && any(&unified, "[guest vcpu1]"));
    let guest = draw(&["--guest-only"]);
    assert!(any(&guest, "[guest vcpu0]") && !any(&guest, "[vcpu0 thread]"));
    let host = draw(&["--host-only"]);
    assert!(any(&host, "[vcpu0 thread]") && !any(&host, "[guest vcpu0]"));
    // Guest frames are drawn in their own colour.
    let svg = std::fs::read_to_string(dir.path().join("f.svg")).unwrap();
    assert!(!svg.is_empty());
    let guest_svg = {
        draw(&["--guest-only"]);
        std::fs::read_to_string(dir.path().join("f.svg")).unwrap()
    };
    assert!(guest_svg.contains("rgb(80,140,230)"));
    // The views need a guest recording.
    let out = common::run(&[
        "flamegraph",
        "-i",
        "/nonexistent.data",
        "--guest-only",
        "-o",
        dir.path().join("g.svg").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn two_vcpus_in_the_shim_never_pair_across_vcpus() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("2.data");
    let out = common::run(&[
        "record",
        "--vm",
        "builtin:sort",
        "--vcpus",
        "2",
        "--lbr",
        "emulated",
        "-o",
        data.to_str().unwrap(),
        "--serial",
        dir.path().join("console").to_str().unwrap(),
        "--",
        "n=100000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&["report", "-i", data.to_str().unwrap(), "--format", "json"]);
    let vm = &report["vm"];
    assert_eq!(vm["vcpus"], 2);
    assert_eq!(vm["check"]["cross_vcpu"], 0);
    let shim = vm["shim"].as_array().unwrap();
    assert_eq!(shim.len(), 2, "{vm}");
    let tids: Vec<&Value> = shim.iter().map(|s| &s["tid"]).collect();
    assert_ne!(tids[0], tids[1]);
}

#[test]
fn duration_and_ctrl_c_stop_the_guest_and_keep_the_recording() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let endless = ["--", "n=1000000000000"];
    let record = |data: &Path| {
        let mut c = common::lbrprof();
        c.args([
            "record",
            "--vm",
            "builtin:branchy",
            "--lbr-freq",
            "50",
            "-o",
        ])
        .arg(data)
        .args(["--serial", "stdout"]);
        c
    };
    // --duration: the guest is stopped, exit status 124, the recording is complete.
    let data = dir.path().join("dur.data");
    let out = record(&data)
        .args(["--duration", "0.3"])
        .args(endless)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = ok(&["info", data.to_str().unwrap()]);
    assert!(info.contains("exit status 124"), "{info}");

    // SIGINT: the same, with 130.
    let data = dir.path().join("int.data");
    let child = record(&data)
        .args(endless)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&["report", "-i", data.to_str().unwrap(), "--format", "json"]);
    assert!(report["meta"]["samples"].as_u64().unwrap() > 0);
    assert!(report["vm"]["shim"][0]["run_ns"].as_u64().unwrap() > 0);

    // SIGTERM: 143, as the host path gives, and a requested stop is no error.
    let data = dir.path().join("term.data");
    let child = record(&data)
        .args(endless)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(!err.contains("error"), "{err}");
    assert!(err.contains("stopped by SIGTERM"), "{err}");
    let info = ok(&["info", data.to_str().unwrap()]);
    assert!(info.contains("exit status 143"), "{info}");
}

/// The guest's console lines without the runtime's agent report, sorted (`rt.smp` vCPUs
/// print in any order).
fn workload_lines(console: &str) -> Vec<String> {
    let mut lines: Vec<String> = console
        .lines()
        .filter(|l| !l.starts_with("lbrprof-guest: agent"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// `lbrprof-guest: agent on vCPU N: S snapshots, D dropped` → (S, D) for vCPU `vcpu`.
fn agent_line(console: &str, vcpu: u32) -> (u64, u64) {
    let prefix = format!("lbrprof-guest: agent on vCPU {vcpu}: ");
    let line = console
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no agent line for vCPU {vcpu}:\n{console}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// Guest-driven snapshots in `record --vm`: with `--lbr-snapshots agent` the guest
/// runtime's LBR agent runs on both vCPUs of an `rt.smp` guest; each vCPU's snapshots
/// land in the recording (reason Agent, exactly as many as the guest says it wrote, none
/// dropped), pair only with their own vCPU thread's samples, and show in `info`, `report`
/// and the flame graph; the guest's own output is what it is without the agent.
#[test]
fn record_vm_takes_agent_snapshots_on_every_vcpu() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent.data");
    let console = dir.path().join("console");
    let guest = ["n=3000000", "rt.smp"];
    let plain = common::run(
        &[
            &[
                "run",
                "--vm",
                "builtin:branchy",
                "--vcpus",
                "2",
                "--serial",
                "stdio",
                "--",
            ][..],
            &guest,
        ]
        .concat(),
    );
    assert!(plain.status.success());
    let plain = String::from_utf8(plain.stdout).unwrap();
    assert_eq!(
        plain.lines().filter(|l| l.contains("checksum=")).count(),
        2,
        "both vCPUs ran the workload:\n{plain}"
    );
    let out = common::run(
        &[
            &[
                "record",
                "--vm",
                "builtin:branchy",
                "--vcpus",
                "2",
                "--lbr",
                "emulated",
                "--lbr-snapshots",
                "agent",
                "--lbr-freq",
                "200",
                "-o",
                data.to_str().unwrap(),
                "--serial",
                console.to_str().unwrap(),
                "--",
            ][..],
            &guest,
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("snapshots by the guest's agent (rt.agent=10000000)"),
        "2e9 guest cycles / 200 Hz: {err}"
    );
    let console = std::fs::read_to_string(&console).unwrap();
    assert_eq!(workload_lines(&console), workload_lines(&plain));

    let snaps: Vec<LbrSnapshot> = lbrprof_data::recording::RecordingReader::open(&data)
        .unwrap()
        .filter_map(|e| match e.unwrap() {
            Event::Snapshot(s) => Some(s),
            _ => None,
        })
        .collect();
    assert!(
        snaps.iter().all(|s| s.reason == SnapshotReason::Agent),
        "the shim takes none of its own"
    );
    // Each snapshot stands where the guest's ring-3 code was, never in the #DB/#BP
    // handlers the emulated LBR stops the guest through (where its PMI arrives).
    let elf = std::fs::read(dir.path().join("agent.data.guest/branchy")).unwrap();
    let exact = |name: &str| {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(&*elf).unwrap();
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name}"))
            .address()
    };
    let handlers = [exact("rt_vec1"), exact("rt_vec3")];
    for s in &snaps {
        assert!(
            handlers.iter().all(|h| s.guest_ip.wrapping_sub(*h) >= 8),
            "snapshot in a trap handler: {:#x}",
            s.guest_ip
        );
    }
    for vcpu in [0, 1] {
        let (written, dropped) = agent_line(&console, vcpu);
        let got = snaps.iter().filter(|s| s.vcpu == vcpu).count() as u64;
        assert!(written >= 2, "vCPU {vcpu}: {written} snapshots\n{console}");
        assert_eq!(
            got, written,
            "vCPU {vcpu}: recorded vs written by the guest"
        );
        assert_eq!(dropped, 0);
        // Real LBR contents of the workload, with the interrupted context's stack.
        let s = snaps.iter().find(|s| s.vcpu == vcpu).unwrap();
        assert_eq!(s.entries.len(), 32);
        assert!(s.newest_first().count() > 0);
        assert!(!s.guest_stack.is_empty(), "{s:?}");
    }

    let info = ok(&["info", data.to_str().unwrap()]);
    let (w0, _) = agent_line(&console, 0);
    let (w1, _) = agent_line(&console, 1);
    assert!(
        info.contains(&format!("vCPU 0:      {w0} by the guest agent")),
        "{info}"
    );
    assert!(
        info.contains(&format!("vCPU 1:      {w1} by the guest agent")),
        "{info}"
    );
    assert!(info.contains("losses:        none"), "{info}");
    assert!(
        info.contains(&format!(
            "by the guest's LBR agent, every 10000000 ring-3 instructions (vCPU 0: {w0}, \
             vCPU 1: {w1})"
        )),
        "{info}"
    );

    let report = json(&[
        "report",
        "-i",
        data.to_str().unwrap(),
        "--format",
        "json",
        "--limit",
        "0",
    ]);
    check_edge_counts(&report);
    assert_eq!(report["meta"]["snapshots"], w0 + w1);
    let hot = report["branches"][0]["from"].to_string();
    assert!(hot.contains("branchy"), "{hot}");
    let vm = &report["vm"];
    assert_eq!(vm["check"]["cross_vcpu"], 0);
    for (row, written) in vm["shim"].as_array().unwrap().iter().zip([w0, w1]) {
        assert!(
            row["paired"].as_u64().unwrap() > 0,
            "every vCPU pairs: {row}"
        );
        assert_eq!(row["agent_snapshots"], written, "{row}");
        assert_eq!(row["snapshots"], written, "{row}");
        assert_eq!(row["lost_snapshots"], 0, "{row}");
    }
    let text = ok(&["report", "-i", data.to_str().unwrap()]);
    assert!(
        text.contains(&format!("{w1} snapshots ({w1} by the guest agent, 0 lost)")),
        "{text}"
    );
    let svg = dir.path().join("f.svg");
    ok(&[
        "flamegraph",
        "-i",
        data.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    let titles = svg_titles(&std::fs::read(&svg).unwrap());
    for vcpu in ["[guest vcpu0]", "[guest vcpu1]"] {
        assert!(titles.iter().any(|t| t.starts_with(vcpu)), "{vcpu}");
    }
    assert!(titles.iter().any(|t| t.contains("branchy::run")));
}

/// An unknown snapshot source is refused with the choices. (`shim` with the hardware LBR
/// is refused too, with the reason; that decision is unit-tested in `cmd::lbr_opts`, as this
/// host has no hardware LBR to ask for.)
#[test]
fn record_vm_refuses_a_bad_snapshot_source() {
    let out = common::run(&[
        "record",
        "--vm",
        "builtin:branchy",
        "--lbr-snapshots",
        "guest",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: auto, shim, agent"), "{err}");
    if !common::kvm_available() {
        return;
    }
    // A guest that starts its agent while the shim drives the PMU would never see a PMI:
    // refused before anything is written, by record and run alike.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.data");
    let out = common::run(&[
        "record",
        "--vm",
        "builtin:branchy",
        "--lbr",
        "emulated",
        "-o",
        data.to_str().unwrap(),
        "--",
        "rt.agent=5000",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use --lbr-snapshots agent"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let out = common::run(&[
        "run",
        "--vm",
        "builtin:branchy",
        "--lbr",
        "emulated",
        "--lbr-sample",
        "1000",
        "--",
        "rt.agent=5000",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("drop --lbr-sample"), "{err}");
}

/// What a guest agent lost (its ring full before the shim drained it) reaches `info` and
/// `report` per vCPU, next to the snapshots each source took. (A synthetic recording as
/// `record --vm` writes it: the emulated LBR drains at every ack, so a real run on this
/// host never fills a ring; the counting itself is unit-tested in `pmu::agent`.)
#[test]
fn agent_losses_and_sources_show_per_vcpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lost.data");
    let header = Header {
        writer: "test".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: HostInfo::default(),
        sampling: SamplingConfig::default(),
        target: Target::Vm {
            image: "builtin:branchy".into(),
            vcpus: 2,
            backend: LbrBackend::Hardware,
            mode: "sampled".into(),
        },
    };
    let w = RecordingWriter::create(&data, &header).unwrap();
    let sink = w.sink();
    for (vcpu, tid) in [(0, 101), (1, 102)] {
        sink.send(Event::Vcpu(VcpuThread {
            time_ns: 0,
            vm: 0,
            vcpu,
            pid: 100,
            tid,
        }));
    }
    for (vcpu, n) in [(0, 3), (1, 5)] {
        for k in 0..n {
            let mut s = snapshot(vcpu, 1_000 * (k + 1), 0x1000);
            s.reason = SnapshotReason::Agent;
            sink.send(Event::Snapshot(s));
        }
    }
    sink.send(Event::Snapshot(snapshot(0, 9_000, 0x1000)));
    sink.send(Event::Loss(Loss {
        time_ns: 10_000,
        kind: LossKind::ChannelFull,
        count: 4,
        tid: Some(1),
    }));
    for (vcpu, snapshots, lost) in [(0, 4, 0), (1, 5, 4)] {
        sink.send(Event::VcpuStats(VcpuStats {
            vcpu,
            snapshots,
            lost_snapshots: lost,
            ..VcpuStats::default()
        }));
    }
    w.finish(&Summary::default()).unwrap();
    let info = ok(&["info", data.to_str().unwrap()]);
    assert!(
        info.contains("vCPU 0:      3 by the guest agent, 1 by the shim\n"),
        "{info}"
    );
    assert!(
        info.contains("vCPU 1:      5 by the guest agent\n"),
        "{info}"
    );
    assert!(
        info.contains("losses:        4 guest snapshots (vCPU 1's agent ring full)"),
        "{info}"
    );
    let text = ok(&["report", "-i", data.to_str().unwrap()]);
    assert!(
        text.contains("5 snapshots (5 by the guest agent, 4 lost)"),
        "{text}"
    );
    assert!(
        text.contains("4 snapshots (3 by the guest agent, 0 lost)"),
        "{text}"
    );
}

/// `info` speaks from the same decisions `record` and `record --vm` make: what it says they
/// will use is what they then use, and the emulated LBR it calls working does work.
#[test]
fn info_verdicts_agree_with_what_record_does() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let info = json(&["info", "--json"]);
    let dir = tempfile::tempdir().unwrap();

    // Host sampling: the event info names is the one record samples with.
    let event = info["host"]["record"]["event"].as_str().unwrap().to_owned();
    let host_data = dir.path().join("host.data");
    let out = common::run(&["record", "-o", host_data.to_str().unwrap(), "--", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("sampling with event {event} ")),
        "info said {event}; record said:\n{stderr}"
    );

    // Guest LBR: the backend info names for each mode is the one record --vm takes, and a
    // backend info calls working records branches.
    let lbr = &info["guest_lbr"];
    // The sampled run must outlast several snapshot intervals even on a loaded machine
    // (1 M calls end in ~20 ms, about one budgeted interval).
    for (mode, extra) in [
        ("sampled", vec!["--", "n=30000000"]),
        ("exact", vec!["--", "n=2000"]),
    ] {
        let expected = lbr["record_vm"][mode]["backend"].as_str().unwrap();
        let data = dir.path().join(format!("{mode}.data"));
        let mut args = vec![
            "record",
            "--vm",
            "builtin:calls",
            "--lbr-mode",
            mode,
            "-o",
            data.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = common::run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("guest LBR: {mode} mode, {expected} (")),
            "info said {expected} for {mode}; record --vm said:\n{stderr}"
        );
        if lbr[expected]["verdict"] == "works" {
            let report = json(&["report", "-i", data.to_str().unwrap(), "--format", "json"]);
            assert!(
                report["meta"]["branch_entries"].as_u64().unwrap() > 0,
                "info says {expected} works, but record --vm --lbr-mode {mode} got no branches"
            );
        }
    }
    // On any host with KVM the emulated LBR must have passed its trial.
    assert_eq!(lbr["emulated"]["verdict"], "works", "{lbr:#}");
}
