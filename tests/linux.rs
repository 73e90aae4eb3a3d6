//! End-to-end tests of the Linux personality: real programs under `lbrprof run --vm --`,
//! compared byte for byte (stdout, stderr, exit status) with their native runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::linux::{assert_identical, build_workload as build};
use common::{kvm_available, lbrprof};

fn run_with(mut cmd: Command, stdin: Option<&Path>) -> Output {
    cmd.env("LINUX_IO_TEST", "yes");
    if let Some(f) = stdin {
        cmd.stdin(Stdio::from(std::fs::File::open(f).unwrap()));
    } else {
        cmd.stdin(Stdio::null());
    }
    cmd.output().expect("cannot start the program")
}

/// Run PROG ARGS natively and under `lbrprof run --vm --`; both outputs.
fn native_and_vm(prog: &str, args: &[&str], stdin: Option<&Path>) -> (Output, Output) {
    let mut native = Command::new(prog);
    native.args(args);
    let mut vm = lbrprof();
    vm.args(["run", "--vm", "--", prog]).args(args);
    (run_with(native, stdin), run_with(vm, stdin))
}

fn fixture_dir(tmp: &Path) -> (PathBuf, PathBuf) {
    let file = tmp.join("input.txt");
    let text: String = (0..5000)
        .map(|i| format!("line {}\n", (i * 7919) % 5000))
        .collect();
    std::fs::write(&file, text).unwrap();
    let dir = tmp.join("dir");
    std::fs::create_dir_all(&dir).unwrap();
    for n in ["b", "a", "c"] {
        std::fs::write(dir.join(n), n).unwrap();
    }
    (file, dir)
}

#[test]
fn c_programs_run_byte_identical_static_musl_glibc_static_pie_and_dynamic() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (file, dir) = fixture_dir(tmp.path());
    let variants: [(&str, &str, &[&str]); 4] = [
        ("musl-static", "musl-gcc", &["-static"]),
        ("glibc-static", "gcc", &["-static"]),
        ("glibc-static-pie", "gcc", &["-static-pie"]),
        ("glibc-dynamic", "gcc", &[]),
    ];
    for (out, cc, flags) in variants {
        let exe = build(tmp.path(), "linux_io", out, cc, flags);
        let exe = exe.to_str().unwrap();
        let args = [file.to_str().unwrap(), dir.to_str().unwrap(), "7"];
        let (native, vm) = native_and_vm(exe, &args, None);
        assert_eq!(native.status.code(), Some(7), "{out}: native run");
        assert!(String::from_utf8_lossy(&native.stdout).contains("entry b"));
        assert_identical(out, &native, &vm);
    }
}

#[test]
fn programs_on_the_machine_run_byte_identical() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (file, _) = fixture_dir(tmp.path());
    let f = file.to_str().unwrap();
    let other = tmp.path().join("other.txt");
    std::fs::write(&other, "1\n2\nthree\n").unwrap();
    let cases: [(&str, &[&str], Option<&Path>); 6] = [
        ("/bin/true", &[], None),
        ("/bin/false", &[], None),
        ("sha256sum", &[f], None),
        ("gzip", &["-9"], Some(&file)),
        ("sort", &["-n", f], None),
        // (diff asks mincore about its stack: exit status 1, the differences.)
        ("diff", &[f, other.to_str().unwrap()], None),
    ];
    for (prog, args, stdin) in cases {
        let (native, vm) = native_and_vm(prog, args, stdin);
        assert_identical(prog, &native, &vm);
    }
    // A `#!` script runs through its interpreter, with the interpreter's argument.
    let script = tmp.path().join("script");
    std::fs::write(&script, "#!/bin/cat -n\nhello from a script\n").unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    let (native, vm) = native_and_vm(script.to_str().unwrap(), &[f], None);
    assert!(String::from_utf8_lossy(&native.stdout).contains("1\t#!/bin/cat -n"));
    assert_identical("#! script", &native, &vm);
    // python3 (dynamic, ~600 system calls, libpython): if the machine has one.
    if Path::new("/usr/bin/python3").exists() {
        let (native, vm) = native_and_vm(
            "/usr/bin/python3",
            &["-c", "import sys; print(sum(range(100)), sys.argv)"],
            None,
        );
        assert_identical("python3", &native, &vm);
    }
}

#[test]
fn bad_programs_fail_like_a_shell_with_one_line() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let not_exec = t.join("plain");
    std::fs::write(&not_exec, "x").unwrap();
    let script_like = t.join("data");
    std::fs::write(&script_like, "not an elf at all").unwrap();
    let mut perms = std::fs::metadata(&script_like).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script_like, perms.clone()).unwrap();
    // A truncated copy of a real program.
    let real = std::fs::read("/bin/true").unwrap();
    let truncated = t.join("truncated");
    std::fs::write(&truncated, &real[..real.len() / 3]).unwrap();
    std::fs::set_permissions(&truncated, perms.clone()).unwrap();
    // A program whose interpreter does not exist.
    let no_interp = t.join("no-interp");
    let mut bytes = real.clone();
    let at = bytes
        .windows(10)
        .position(|w| w == b"/lib64/ld-")
        .expect("/bin/true names its interpreter");
    bytes[at + 1..at + 6].copy_from_slice(b"nope/");
    std::fs::write(&no_interp, &bytes).unwrap();
    std::fs::set_permissions(&no_interp, perms.clone()).unwrap();
    // Another architecture: the i386 header of a 32-bit ELF.
    let elf32 = t.join("elf32");
    let mut h = real[..64].to_vec();
    h[4] = 1;
    std::fs::write(&elf32, &h).unwrap();
    std::fs::set_permissions(&elf32, perms).unwrap();
    let cases = [
        (
            t.join("missing").to_str().unwrap().to_owned(),
            127,
            "not found",
        ),
        ("no-such-command-lbrprof".to_owned(), 127, "not found"),
        (
            not_exec.to_str().unwrap().to_owned(),
            126,
            "permission denied",
        ),
        (t.to_str().unwrap().to_owned(), 126, "is a directory"),
        (script_like.to_str().unwrap().to_owned(), 126, "not an ELF"),
        (
            truncated.to_str().unwrap().to_owned(),
            126,
            "cannot execute",
        ),
        (no_interp.to_str().unwrap().to_owned(), 127, "interpreter"),
        (elf32.to_str().unwrap().to_owned(), 126, "32-bit"),
    ];
    for (prog, code, text) in cases {
        let out = lbrprof()
            .args(["run", "--vm", "--", &prog])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{prog}: {err}");
        assert!(err.contains(text), "{prog}: {err}");
        assert_eq!(err.lines().count(), 1, "{prog}: one line, got {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn memory_limit_unsupported_calls_and_faults_are_reported() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("t.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
int main(int argc, char **argv) {
    if (argv[1][0] == 'm') { char *p = malloc(64 << 20); printf("%s\n", p ? "got" : "null"); return p != 0; }
    if (argv[1][0] == 'f') { fflush(stdout); return fork() < 0 ? 9 : 0; }
    if (argv[1][0] == 's') { volatile int *p = 0; return *p; }
    if (argv[1][0] == 'a') { abort(); }
    return 0;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("t");
    assert!(
        Command::new("gcc")
            .arg("-O1")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let exe = exe.to_str().unwrap();
    let run = |extra: &[&str], arg: &str| {
        let mut c = lbrprof();
        c.arg("run").arg("--vm").args(extra).args(["--", exe, arg]);
        c.output().unwrap()
    };
    // 64 MiB does not fit in 32 MiB: malloc returns NULL, and lbrprof says why.
    let out = run(&["--vm-mem", "32M"], "m");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "null\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ran out of guest memory"));
    let out = run(&["--vm-mem", "256M"], "m");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got\n");
    // fork works (tests/linux_processes.rs): parent and child both return 0.
    let out = run(&[], "f");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // A NULL dereference ends as the shell reports SIGSEGV (128 + 11).
    let out = run(&[], "s");
    assert_eq!(
        out.status.code(),
        Some(139),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIGSEGV"));
    // abort(): SIGABRT, 134.
    let out = run(&[], "a");
    assert_eq!(
        out.status.code(),
        Some(134),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn record_of_a_program_names_its_and_libcs_functions() {
    if !kvm_available() || !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("hot.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) unsigned long hot_loop(unsigned long n) {
    unsigned long s = 0;
    for (unsigned long i = 0; i < n; i++) s += (i % 3 == 0) ? i * 7 : i ^ (s >> 3);
    return s;
}
int main(void) {
    unsigned long t = 0;
    for (int r = 0; r < 200; r++) {
        char *p = malloc(1000 + r);
        memset(p, r, 1000 + r);
        t += hot_loop(1000000) + (unsigned char)p[r];
        free(p);
        /* System calls between the hot stretches: sampling windows open and close
           around the shim's syscall stub. */
        for (int k = 0; k < 20; k++) t += (unsigned long)getppid() & 1;
    }
    printf("%lu\n", t);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("hot");
    assert!(
        Command::new("gcc")
            .args(["-O2", "-g", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let data = tmp.path().join("hot.data");
    let out = lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--lbr-freq", "200", "--lbr-overhead", "0", "--"])
        .arg(&exe)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let native = Command::new(&exe).output().unwrap();
    assert_eq!(out.stdout, native.stdout, "the program's output is its own");
    // Snapshots keep coming for the whole run (a window left open over a system call once
    // stopped them after the first few: 4-8 in all). The run takes about 1-1.5 s at
    // 200 Hz requested; sample points are random and those falling due at one of the
    // program's system calls are skipped, so an idle machine gave 42 (44 Hz effective).
    // 20 is still far above the old 4-8.
    let snapshots = err
        .lines()
        .find_map(|l| {
            let (head, _) = l.split_once(" guest snapshots (")?;
            head.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no snapshot count in:\n{err}"));
    assert!(snapshots >= 20, "{snapshots} snapshots:\n{err}");
    let report = lbrprof()
        .args(["report", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let branches = text.split("# Hot branches").nth(1).unwrap_or_default();
    assert!(
        branches.contains("hot_loop"),
        "the program's function in the branch histogram:\n{text}"
    );
    let info = lbrprof().arg("info").arg(&data).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("guest"), "{info}");
}

/// A system-call-heavy distribution binary (dd, one byte at a time): the vCPU's time at
/// the shim's SYSCALL entry stub is named as Linux names it, in the `[lbrprof_shim]`
/// module, never as a bare guest address; time the host's hypervisor reports as the
/// guest's at other upper-half addresses is `[hypervisor]`'s.
#[test]
fn record_names_the_system_call_entry_of_a_syscall_heavy_program() {
    if !kvm_available() || !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dd.data");
    let out = lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=1"])
        .arg("count=10000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let data = data.to_str().unwrap();
    let report = common::json(&["report", "--format", "json", "-i", data]);
    let host: Vec<&serde_json::Value> = report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["side"] == "host")
        .collect();
    let entry = host
        .iter()
        .find(|f| f["module"] == "[lbrprof_shim]" && f["function"] == "entry_SYSCALL_64")
        .unwrap_or_else(|| panic!("no [lbrprof_shim] entry_SYSCALL_64 row: {host:#?}"));
    assert!(entry["self_samples"].as_u64() > Some(0), "{entry}");
    let bare: Vec<_> = host
        .iter()
        .filter(|f| {
            f["function"]
                .as_str()
                .unwrap_or("")
                .starts_with("0xfffffe00")
        })
        .collect();
    assert!(
        bare.is_empty(),
        "trap-area addresses left unnamed: {bare:#?}"
    );
    // Nor is the host's hypervisor (a guest-mode sample at no guest code) guest code.
    let upper: Vec<_> = host
        .iter()
        .filter(|f| f["module"] == "[guest]")
        .filter(|f| f["function"].as_str().unwrap_or("").starts_with("0xffff"))
        .collect();
    assert!(upper.is_empty(), "upper-half guest addresses: {upper:#?}");
}

/// A Rust program with std::thread (named threads, channels, a mutex, scoped threads),
/// built at test time with the toolchain running the tests.
const RUST_THREADS: &str = r#"
use std::sync::{mpsc, Arc, Mutex};
#[inline(never)]
fn rust_worker(seed: u64, n: u64) -> u64 {
    let mut s = seed;
    for _ in 0..n {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) ^ (s >> 29);
    }
    s
}
fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let total = Arc::new(Mutex::new(0u64));
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..5u64)
        .map(|i| {
            let (total, tx) = (total.clone(), tx.clone());
            std::thread::Builder::new()
                .name(format!("worker{i}"))
                .spawn(move || {
                    let v = rust_worker(i + 1, n);
                    *total.lock().unwrap() ^= v;
                    tx.send((i, v, std::thread::current().name().map(str::to_owned))).unwrap();
                })
                .unwrap()
        })
        .collect();
    drop(tx);
    let mut got: Vec<_> = rx.iter().collect();
    got.sort();
    for h in handles {
        h.join().unwrap();
    }
    let scoped = std::thread::scope(|s| {
        let a = s.spawn(|| rust_worker(100, 1000));
        let b = s.spawn(|| rust_worker(200, 1000));
        a.join().unwrap() ^ b.join().unwrap()
    });
    for (i, v, name) in got {
        println!("{i} {name:?}: {v:016x}");
    }
    println!("total {:016x} scoped {scoped:016x}", *total.lock().unwrap());
}
"#;

fn build_rust(dir: &Path, name: &str, src: &str) -> PathBuf {
    let file = dir.join(format!("{name}.rs"));
    std::fs::write(&file, src).unwrap();
    let exe = dir.join(name);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args(["-O", "-g", "-o"])
        .arg(&exe)
        .arg(&file)
        .status()
        .expect("rustc runs the tests, so it is there");
    assert!(status.success(), "rustc {}", file.display());
    exe
}

#[test]
fn threaded_programs_run_byte_identical() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // pthreads: mutex, condition variable (and a timed wait that times out), barrier,
    // thread-local storage, pthread_exit, join, a detached thread; glibc and musl.
    let variants: [(&str, &str, &[&str]); 3] = [
        ("threads-glibc-dynamic", "gcc", &["-pthread"]),
        ("threads-glibc-static", "gcc", &["-pthread", "-static"]),
        ("threads-musl-static", "musl-gcc", &["-static"]),
    ];
    for (out, cc, flags) in variants {
        let exe = build(tmp.path(), "linux_threads", out, cc, flags);
        let (native, vm) = native_and_vm(exe.to_str().unwrap(), &["6", "300000"], None);
        assert!(
            String::from_utf8_lossy(&native.stdout).contains("timedwait: timed out"),
            "{out}: native run"
        );
        assert_identical(out, &native, &vm);
    }
    let exe = build_rust(tmp.path(), "rust_threads", RUST_THREADS);
    let (native, vm) = native_and_vm(exe.to_str().unwrap(), &[], None);
    assert!(String::from_utf8_lossy(&native.stdout).contains("Some(\"worker4\")"));
    assert_identical("std::thread", &native, &vm);
    // Multi-threaded programs on the machine.
    let data = tmp.path().join("data.txt");
    let text: String = (0..200_000)
        .map(|i| format!("{} line {i}\n", (i * 7919) % 200_000))
        .collect();
    std::fs::write(&data, text).unwrap();
    let d = data.to_str().unwrap();
    let (native, vm) = native_and_vm("sort", &["--parallel=2", "-n", d], None);
    assert_identical("sort --parallel=2", &native, &vm);
    if Path::new("/usr/bin/xz").exists() {
        let (native, vm) = native_and_vm("xz", &["-T2", "-3", "-c"], Some(&data));
        assert!(native.stdout.len() > 1000);
        assert_identical("xz -T2", &native, &vm);
        // xz -9 reserves 674 MiB (its 64 MiB dictionary's match finder): a program's
        // guest memory is as large as the VM takes unless --vm-mem says otherwise.
        let (native, vm) = native_and_vm("xz", &["-9", "-c"], Some(&data));
        assert_identical("xz -9", &native, &vm);
    }
}

#[test]
fn record_of_a_threaded_program_has_snapshots_of_every_thread() {
    if !kvm_available() || !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path(), "linux_threads", "threads", "gcc", &["-pthread"]);
    // With the interpreter off, every window is followed by breakpoints alone: a vCPU
    // that has not stopped through the patched trap handlers yet runs into another
    // vCPU's `int3` in the shared code within milliseconds.
    for interp in ["1", "0"] {
        record_threads(&tmp, &exe, interp);
    }
}

fn record_threads(tmp: &tempfile::TempDir, exe: &Path, interp: &str) {
    let data = tmp.path().join(format!("threads-{interp}.data"));
    // ~0.17 s of CPU per worker with the interpreter: at the overhead budget's few Hz per
    // vCPU on a loaded machine, 20 M iterations (~0.03 s) could end without a sample point.
    let iterations = if interp == "1" {
        "100000000"
    } else {
        "20000000"
    };
    let out = lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        // A budget of half the time: each worker runs 0.03–0.2 s, and a debug build's
        // windows are costly (at 10% a worker may get no sample point at all).
        .args(["--vm", "--lbr", "emulated", "--lbr-overhead", "50", "--"])
        .env("LBRPROF_LBR_INTERP", interp)
        .arg(exe)
        .args(["4", iterations])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "interpreter {interp}: {err}");
    let native = Command::new(exe).args(["4", iterations]).output().unwrap();
    assert_eq!(out.stdout, native.stdout, "the program's output is its own");
    // The four workers' vCPUs (1-4) each took snapshots. (Without the interpreter every
    // window is single-stepped, and the overhead budget leaves ~2 Hz per vCPU: a worker
    // that runs 0.1 s may take none. That run is here for the crash above.)
    let info = lbrprof().arg("info").arg(&data).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    if interp == "0" {
        // Any vCPU's: the main thread's vCPU 0 mostly waits in join, and at a loaded
        // machine's ~2 Hz it may take none (seen once at load 5.7).
        let any = info
            .lines()
            .any(|l| l.trim_start().starts_with("vCPU ") && l.contains(" by the shim"));
        assert!(any, "no snapshots at all:\n{info}");
        return;
    }
    for vcpu in 1..=4 {
        let line = info
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("vCPU {vcpu}:")))
            .unwrap_or_else(|| panic!("no snapshots of vCPU {vcpu}:\n{info}"));
        let shim: u64 = line
            .split(':')
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            shim >= 1,
            "vCPU {vcpu} took no snapshot of its own:\n{info}"
        );
    }
    let report = lbrprof()
        .args(["report", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    let guest = text
        .split("# Hot guest functions")
        .nth(1)
        .unwrap_or_default();
    assert!(guest.contains("worker_sum"), "{text}");
    let branches = text.split("# Hot branches").nth(1).unwrap_or_default();
    assert!(branches.contains("worker_sum"), "{text}");
}

#[test]
fn event_loops_run_byte_identical() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // epoll (cookies, MOD/DEL, edge trigger, pwait2), eventfd, timerfd, FIONREAD/FIONBIO,
    // a thread waking the loop.
    let variants: [(&str, &str, &[&str]); 2] = [
        ("events-glibc-dynamic", "gcc", &["-pthread"]),
        ("events-musl-static", "musl-gcc", &["-static"]),
    ];
    for (out, cc, flags) in variants {
        let exe = build(tmp.path(), "linux_events", out, cc, flags);
        let (native, vm) = native_and_vm(exe.to_str().unwrap(), &[], None);
        let text = String::from_utf8_lossy(&native.stdout);
        assert!(
            text.contains("pipe: FIONREAD 5, read 5 'hello'"),
            "{out}: {text}"
        );
        assert!(text.contains("bad cookies 0"), "{out}: {text}");
        assert_identical(out, &native, &vm);
    }
    // A real event loop: node (libuv: epoll, eventfd, a thread pool).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/node_events.js");
    let (native, vm) = native_and_vm("node", &[script.to_str().unwrap()], None);
    assert!(
        String::from_utf8_lossy(&native.stdout).starts_with("ticks 5 bytes"),
        "node is needed for this test (Debian package nodejs): {native:?}"
    );
    // (Its stderr too: node asks for capget and pkey_alloc, which must not end up in
    // the list of unimplemented calls.)
    assert_identical("node", &native, &vm);
}

#[test]
fn sockets_and_reads_blocked_between_threads_run_byte_identical() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A pipe read and an accept that block until another thread acts, AF_UNIX and TCP
    // echo, UDP with addresses, sendmsg/recvmsg over several iovecs with a descriptor in
    // SCM_RIGHTS, socket options, shutdown.
    let variants: [(&str, &str, &[&str]); 3] = [
        ("net-glibc-dynamic", "gcc", &["-pthread"]),
        ("net-glibc-static", "gcc", &["-pthread", "-static"]),
        ("net-musl-static", "musl-gcc", &["-static"]),
    ];
    for (out, cc, flags) in variants {
        let exe = build(tmp.path(), "linux_net", out, cc, flags);
        let (native, vm) = native_and_vm(exe.to_str().unwrap(), &[], None);
        assert!(native.status.success(), "{out}: native run {native:?}");
        assert!(
            !native.stdout.is_empty(),
            "{out}: native run printed nothing"
        );
        assert_identical(out, &native, &vm);
    }
    // node's HTTP server and client in one process: 20 requests over loopback TCP.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/node_http.js");
    let (native, vm) = native_and_vm("node", &[script.to_str().unwrap()], None);
    assert_eq!(
        String::from_utf8_lossy(&native.stdout),
        "ok 20\n",
        "node is needed for this test (Debian package nodejs): {native:?}"
    );
    assert_identical("node http", &native, &vm);
}

#[test]
fn signals_reach_the_programs_handlers() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Fault handlers that recover (siglongjmp), raise with SA_SIGINFO, a blocked signal
    // delivered at unblock, SIG_IGN, sigaltstack, tgkill to a thread, FP state kept;
    // then abort() with a SIGABRT handler that returns: 134, as natively.
    let variants: [(&str, &str, &[&str]); 3] = [
        ("signals-glibc-dynamic", "gcc", &["-pthread"]),
        ("signals-glibc-static", "gcc", &["-pthread", "-static"]),
        ("signals-musl-static", "musl-gcc", &["-static"]),
    ];
    for (out, cc, flags) in variants {
        let exe = build(tmp.path(), "linux_signals", out, cc, flags);
        let exe = exe.to_str().unwrap();
        let (native, vm) = native_and_vm(exe, &[], None);
        let text = String::from_utf8_lossy(&native.stdout);
        assert!(
            text.contains("round 2: recovered from signal 11"),
            "{out}: {text}"
        );
        assert!(text.contains("on it 1"), "{out}: {text}");
        assert_identical(out, &native, &vm);
        let mut vm = lbrprof();
        vm.args(["run", "--vm", "--", exe, "abort"]);
        let vm = run_with(vm, None);
        assert_eq!(vm.status.code(), Some(134), "{out}");
        assert!(String::from_utf8_lossy(&vm.stdout).ends_with("SIGABRT handler ran (6)\n"));
    }
}

#[test]
fn pseudo_terminals_and_termios_work_as_natively() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("pty-glibc", "gcc", &[][..]),
        ("pty-glibc-static", "gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_pty", out, cc, flags);
        let (native, vm) = native_and_vm(exe.to_str().unwrap(), &[], None);
        let text = String::from_utf8_lossy(&native.stdout);
        assert!(text.contains("master read: to the master"), "{out}: {text}");
        assert!(
            text.contains("TCGETS bytes written past 36: 0"),
            "{out}: {text}"
        );
        assert_identical(out, &native, &vm);
    }
}
