//! JIT code named from perf's maps (`/tmp/perf-PID.map`), as perf names it: a real JIT
//! (node's V8) recorded by lbrprof and by perf.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{kvm_available, lbrprof, perf_available};

fn workload() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/jit_fib.js")
}

/// The pid of the recorded node process, from the module name `perf-PID.map`.
fn map_module(report: &serde_json::Value) -> (String, f64) {
    let f = &report["functions"][0];
    let module = f["module"].as_str().unwrap_or_default().to_owned();
    let function = f["function"].as_str().unwrap_or_default();
    assert!(
        module.starts_with("perf-") && module.ends_with(".map"),
        "the hottest function is not JIT code: {f}"
    );
    assert!(
        function.starts_with("JS:") && function.contains("fib") && function.contains("jit_fib.js"),
        "JIT code is not named from the perf map: {f}"
    );
    (module, f["self_pct"].as_f64().unwrap_or(0.0))
}

fn report_json(data: &Path) -> (serde_json::Value, String) {
    let out = lbrprof()
        .args(["report", "--format", "json", "-i"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        serde_json::from_slice(&out.stdout).expect("valid JSON"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `perf report`'s share of the hottest symbol whose name contains `needle`.
fn perf_share(data: &Path, needle: &str) -> f64 {
    let out = Command::new("perf")
        .args(["report", "--stdio", "--sort", "sym", "-i"])
        .arg(data)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .find_map(|l| l.trim().split('%').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("perf report has no {needle}"))
}

#[test]
fn jit_code_is_named_from_perf_maps_as_perf_names_it() {
    if !perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Recorded by lbrprof.
    let data = tmp.path().join("node.data");
    // V8 leaves an isolate-*.log in its working directory.
    let out = lbrprof()
        .current_dir(tmp.path())
        .args(["record", "-F", "999", "-o"])
        .arg(&data)
        .args(["--", "node", "--perf-basic-prof"])
        .arg(workload())
        .output()
        .expect("node is needed for the JIT tests (Debian package nodejs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (report, _) = report_json(&data);
    let (module, share) = map_module(&report);
    assert!(share > 30.0, "fib is the hot code: {share}%");
    let _ = std::fs::remove_file(Path::new("/tmp").join(&module));

    // Recorded by perf: the same names and shares as perf's own report of it.
    let data = tmp.path().join("perf.data");
    let status = Command::new("perf")
        .current_dir(tmp.path())
        .args(["record", "-q", "-F", "999", "-o"])
        .arg(&data)
        .args(["--", "node", "--perf-basic-prof"])
        .arg(workload())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (report, _) = report_json(&data);
    let (module, share) = map_module(&report);
    let perf = perf_share(&data, "JS:*fib");
    assert!(
        (share - perf).abs() < 0.5,
        "lbrprof {share}% vs perf {perf}% for the optimized fib"
    );

    // A map kept beside the recording (the process's /tmp is gone) still names it.
    let map = Path::new("/tmp").join(&module);
    std::fs::rename(&map, tmp.path().join(&module))
        .or_else(|_| std::fs::copy(&map, tmp.path().join(&module)).map(drop))
        .unwrap();
    let _ = std::fs::remove_file(&map);
    let (report, _) = report_json(&data);
    assert_eq!(map_module(&report).0, module);

    // Without any map: unnamed, and the warning says what would name it.
    std::fs::remove_file(tmp.path().join(&module)).unwrap();
    let (report, stderr) = report_json(&data);
    let f = &report["functions"][0];
    assert_eq!(f["module"].as_str(), Some(module.as_str()), "{f}");
    assert!(
        f["function"].as_str().unwrap_or_default().starts_with("0x"),
        "{f}"
    );
    assert!(
        stderr.contains(&module) && stderr.contains("--perf-basic-prof"),
        "{stderr}"
    );
}

#[test]
fn jit_code_in_the_vm_is_named_from_the_guest_processs_perf_map() {
    if !kvm_available() || !perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vm.data");
    let out = lbrprof()
        .current_dir(tmp.path())
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--", "node", "--perf-basic-prof"])
        .arg(workload())
        .output()
        .expect("node is needed for the JIT tests (Debian package nodejs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "27820800\n");
    let (report, _) = report_json(&data);
    let jit: Vec<&serde_json::Value> = report["functions"]
        .as_array()
        .unwrap()
        .iter()
        // Guest snapshots, or host samples taken while the vCPU ran guest code (both
        // resolve in the guest process's address space).
        .filter(|f| {
            f["module"].as_str().is_some_and(|m| m.starts_with("perf-"))
                && f["function"].as_str().is_some_and(|n| n.starts_with("JS:"))
        })
        .collect();
    assert!(
        !jit.is_empty(),
        "no guest JIT function named from the guest's perf map: {}",
        report["functions"]
    );
    if let Some(m) = jit[0]["module"].as_str() {
        let _ = std::fs::remove_file(Path::new("/tmp").join(m));
    }
}

/// The JVM (JIT, compiler and GC threads, a thread pool) recorded in the VM with the
/// emulated LBR: its threads run the same code (libjvm's PLT among it), where a thread
/// that hit another vCPU's `int3` breakpoint while it was being taken out resumed inside
/// an instruction and crashed the JVM in most runs. Its output is its native one.
#[test]
fn the_jvm_recorded_in_the_vm_runs_like_natively() {
    if !kvm_available() || !perf_available() {
        return;
    }
    let javac = Path::new("/usr/bin/javac");
    if !javac.exists() || !Path::new("/usr/bin/java").exists() {
        assert!(
            std::env::var_os("LBRPROF_REQUIRE_KVM").is_none(),
            "the JVM test needs a JDK (/usr/bin/javac, /usr/bin/java)"
        );
        eprintln!("skipped: needs a JDK (/usr/bin/javac, /usr/bin/java)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/LinuxJava.java");
    let status = Command::new(javac)
        .arg("-d")
        .arg(tmp.path())
        .arg(&src)
        .status()
        .expect("javac");
    assert!(status.success(), "javac failed");
    let native = Command::new("/usr/bin/java")
        .arg("-cp")
        .arg(tmp.path())
        .arg("LinuxJava")
        .output()
        .unwrap();
    assert!(native.status.success());
    let data = tmp.path().join("java.data");
    let out = lbrprof()
        .current_dir(tmp.path())
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--lbr", "emulated", "--", "/usr/bin/java", "-cp"])
        .arg(tmp.path())
        .arg("LinuxJava")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&native.stdout)
    );
    assert!(err.contains(" guest snapshots ("), "{err}");
}

/// A C program that JITs one function (anonymous memory made executable with mprotect)
/// and runs it, recorded in the VM: with the perf map it writes, the guest snapshots name
/// the function; without it, the report says the map is missing, once. A program with no
/// JIT (the same program before it maps code would be the same; here `sort`) gets no
/// such warning, though its frame walks pass through memory no mapping covers.
#[test]
fn anonymous_code_made_executable_in_the_vm_is_recorded_and_named() {
    if !kvm_available() || !perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/jit_anon.c");
    let exe = tmp.path().join("jit_anon");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc is needed for this test");
    assert!(st.success());
    let native = Command::new(&exe).arg("200000").output().unwrap();
    let record = |data: &Path, args: &[&str]| -> String {
        let out = lbrprof()
            .args(["record", "--lbr-overhead", "0", "-o"])
            .arg(data)
            .args(["--vm", "--"])
            .arg(&exe)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, native.stdout);
        let rep = lbrprof().args(["report", "-i"]).arg(data).output().unwrap();
        assert!(
            rep.status.success(),
            "{}",
            String::from_utf8_lossy(&rep.stderr)
        );
        String::from_utf8_lossy(&rep.stdout).into_owned()
    };

    let named = record(&tmp.path().join("named.data"), &["200000", "map"]);
    let guest = named
        .split("Hot guest")
        .nth(1)
        .unwrap_or_else(|| panic!("no guest table:\n{named}"));
    assert!(
        guest.contains("jitted_sum_loop"),
        "the JIT function is not named in the guest table:\n{named}"
    );
    assert!(!named.contains("JIT code is unnamed"), "{named}");
    // The program's map is on the host's /tmp under its guest pid.
    for line in guest.lines().filter(|l| l.contains("jitted_sum_loop")) {
        if let Some(m) = line.split_whitespace().find(|w| w.starts_with("perf-")) {
            let _ = std::fs::remove_file(Path::new("/tmp").join(m));
        }
    }

    let unnamed = record(&tmp.path().join("unnamed.data"), &["200000"]);
    let warnings = unnamed
        .lines()
        .filter(|l| l.contains("JIT code is unnamed"))
        .count();
    assert_eq!(warnings, 1, "{unnamed}");

    // Frame walks through memory nothing maps (junk, not JIT code): no word of a map.
    let junk_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/junk_frames.c");
    let junk = tmp.path().join("junk_frames");
    let st = Command::new("gcc")
        .args(["-O2", "-mno-red-zone", "-o"])
        .arg(&junk)
        .arg(&junk_src)
        .status()
        .unwrap();
    assert!(st.success());
    let data = tmp.path().join("junk.data");
    let out = lbrprof()
        .args(["record", "--lbr-overhead", "0", "-o"])
        .arg(&data)
        .args(["--vm", "--"])
        .arg(&junk)
        .arg("1500000000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep = lbrprof()
        .args(["report", "--format", "json", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    let text = format!("{json}");
    // The walk did read the junk frame (so the old lookup would have asked for a map).
    assert!(text.contains("0x300000000010"), "{text}");
    assert!(!text.contains("JIT code is unnamed"), "{text}");
}
