//! The guest vDSO: a Linux program in the VM reads the clocks without VM exits, the
//! times are the host's, signals that land in the vDSO are delivered, exact mode keeps
//! making system calls (its clocks are pinned), and recordings name the vDSO's functions.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{build_workload, go_available, kvm_available, lbrprof};

/// `lbrprof run --vm FLAGS -- linux_vdso N`: its "name value" lines and stderr.
fn run(exe: &Path, flags: &[&str], n: &str) -> (BTreeMap<String, i128>, String) {
    let out = lbrprof()
        .args(["run", "--vm", "--stats"])
        .args(flags)
        .arg("--")
        .arg(exe)
        .arg(n)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{flags:?}:\n{stdout}\n{stderr}");
    let values = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect();
    (values, stderr)
}

/// The "N system calls" of `--stats`.
fn system_calls(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            let (head, _) = l.split_once(" system calls")?;
            head.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no system-call count in:\n{stderr}"))
}

fn host_tsc_clocksource() -> bool {
    std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .is_ok_and(|s| s.trim() == "tsc")
}

#[test]
fn clock_reads_stay_in_the_guest_and_read_the_hosts_time() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_workload(tmp.path(), "linux_vdso");
    let (v, stderr) = run(&exe, &[], "300000");
    assert_eq!(v["sysinfo_ehdr"], 1);
    assert_eq!(v["maps_vdso"], 1, "[vdso] in /proc/self/maps");
    assert_eq!(v["backwards"], 0, "CLOCK_MONOTONIC never goes back");
    assert!(v["elapsed_ns"] > 0, "time moves forward");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    for (name, scale) in [
        ("realtime_ns", 1),
        ("gettimeofday_us", 1000),
        ("time", 1_000_000_000),
    ] {
        let diff = (now - v[name] * scale).abs();
        assert!(
            diff < 5_000_000_000,
            "{name} is {diff} ns off the host's clock"
        );
    }
    // The 1 ms timer fired while the program was reading the clock (in the vDSO, mostly).
    assert!(v["alarms"] > 0, "{v:?}");
    let calls = system_calls(&stderr);
    if host_tsc_clocksource() {
        // 300 000 clock reads, and the timer's signals: far fewer exits than reads.
        assert!(
            calls < 30_000,
            "{calls} system calls for 300 000 clock reads"
        );
    } else {
        eprintln!("skipped the exit count: the host's clocksource is not tsc");
    }
}

#[test]
fn exact_mode_reads_its_pinned_clocks_through_the_system_call() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_workload(tmp.path(), "linux_vdso");
    let exact = ["--lbr", "emulated", "--lbr-mode", "exact"];
    let (a, stderr) = run(&exe, &exact, "2000");
    assert!(system_calls(&stderr) >= 2000, "{stderr}");
    assert_eq!(a["sysinfo_ehdr"], 1);
    assert_eq!(a["backwards"], 0);
    // The virtual clock: one 1 µs tick per read.
    assert_eq!(a["elapsed_ns"], 2000 * 1000);
}

#[test]
fn a_recording_names_the_vdso_functions() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_workload(tmp.path(), "linux_vdso");
    let data = tmp.path().join("vdso.lbr");
    let out = lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--lbr-freq", "200", "--"])
        .arg(&exe)
        .arg("10000000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let text = common::ok(&["report", "-i", data.to_str().unwrap()]);
    if !host_tsc_clocksource() {
        return;
    }
    // The guest's samples in its vDSO are named after the vDSO's functions.
    let guest = text
        .split("# Hot guest functions")
        .nth(1)
        .and_then(|s| s.split("# Hot branches").next())
        .unwrap_or_default();
    let vdso_rows: Vec<&str> = guest.lines().filter(|l| l.contains("[vdso]")).collect();
    assert!(
        vdso_rows.iter().any(|l| l.contains("__vdso_clock_gettime")),
        "the vDSO's function in the report:\n{text}"
    );
    assert!(
        !vdso_rows.iter().any(|l| l.contains("[vdso]+0x")),
        "no raw vDSO address:\n{text}"
    );
}

#[test]
fn gos_runtime_finds_the_vdso_by_its_version() {
    if !kvm_available() || !go_available() || !host_tsc_clocksource() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/linux_vdso_go/main.go");
    let exe = tmp.path().join("linux_vdso_go");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&exe)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOCACHE", tmp.path().join("gocache"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = lbrprof()
        .args(["run", "--vm", "--stats", "--"])
        .arg(&exe)
        .arg("20000")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "true true\n");
    // 20 000 time.Now() are 40 000 clock reads (wall and monotonic) by system call
    // without the vDSO.
    let calls = system_calls(&stderr);
    assert!(calls < 5_000, "{calls} system calls for 20 000 time.Now()");
}
