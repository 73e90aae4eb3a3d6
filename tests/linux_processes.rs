//! End-to-end tests of processes under the Linux personality (fork, vfork, execve,
//! wait, pipes between processes, chdir, select): programs compiled at test time and
//! programs on the machine (sh, sort, make, gcc) under `lbrprof run --vm --`, compared
//! byte for byte with their native runs, and `record --vm` of a pipeline, whose report
//! names the functions of each program in it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::linux::{assert_identical, native_and_vm_in as native_and_vm, output_in as output};
use common::{kvm_available, lbrprof};

fn gcc(dir: &Path, src: &Path, out: &str, flags: &[&str]) -> PathBuf {
    let exe = dir.join(out);
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(src)
        .status()
        .expect("gcc is needed for the Linux-process tests");
    assert!(status.success(), "gcc failed on {}", src.display());
    exe
}

/// `body` written to `dir/NAME.c` and built into `dir/NAME`.
fn gcc_source(dir: &Path, name: &str, body: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, body).unwrap();
    gcc(dir, &src, name, flags)
}

fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workloads/{name}.c"))
}

#[test]
fn a_program_that_forks_execs_waits_and_pipes_runs_byte_identical() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let sub = tmp.path().join("d/sub");
    std::fs::create_dir_all(&sub).unwrap();
    for f in ["b", "a"] {
        std::fs::write(sub.join(f), f).unwrap();
    }
    let sub = sub.to_str().unwrap();
    for (name, flags) in [("dynamic", &[][..]), ("static", &["-static"][..])] {
        let exe = gcc(tmp.path(), &workload("linux_procs"), name, flags);
        let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &[sub]);
        assert_eq!(native.status.code(), Some(4), "{name}: native run");
        let text = String::from_utf8_lossy(&native.stdout);
        assert!(text.contains("killed child: killed by 15"), "{text}");
        assert_identical(name, &native, &vm);
    }
}

#[test]
fn shell_pipelines_and_scripts_run_byte_identical() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    std::fs::write(tmp.path().join("sub/f"), "x").unwrap();
    let script = "cd sub && pwd && ls; cd ..; \
                  for i in 3 1 2; do echo $i; done | sort -n | tr '\\n' ' '; echo; \
                  x=$(echo inner | tr a-z A-Z); echo $x; \
                  false || echo 'or'; (exit 7); echo \"status $?\"; \
                  nonexistent-command-xyz 2>/dev/null; echo \"missing $?\"; \
                  echo to-stderr >&2; exit 3";
    let cases: [(&str, &[&str]); 4] = [
        ("/bin/sh", &["-c", "seq 1000 | sort -n | tail -1"]),
        (
            "/bin/sh",
            &["-c", "seq 20000 | sort -rn | head -3; echo done"],
        ),
        ("/bin/sh", &["-c", script]),
        ("/bin/bash", &["-c", script]),
    ];
    for (prog, args) in cases {
        if !Path::new(prog).exists() {
            continue;
        }
        let (native, vm) = native_and_vm(tmp.path(), prog, args);
        assert_identical(&format!("{prog} {args:?}"), &native, &vm);
    }
}

#[test]
fn make_runs_the_compiler_driver_and_its_programs_like_natively() {
    if !kvm_available() {
        return;
    }
    if !Path::new("/usr/bin/make").exists() {
        eprintln!("skipped: needs make");
        return;
    }
    let build = |dir: &Path| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("hello.c"),
            "#include <stdio.h>\nint main(void) { puts(\"hello from make\"); return 0; }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("Makefile"),
            "all: hello\n\t./hello\nhello: hello.o\n\tgcc -o hello hello.o\n\
             hello.o: hello.c\n\tgcc -O2 -c hello.c\n",
        )
        .unwrap();
    };
    let tmp = tempfile::tempdir().unwrap();
    let (n, v) = (tmp.path().join("native"), tmp.path().join("vm"));
    build(&n);
    build(&v);
    let native = output(Command::new("make"), &n);
    let mut vm = lbrprof();
    vm.args(["run", "--vm", "--timeout", "300", "--", "/usr/bin/make"]);
    let vm = output(vm, &v);
    assert_identical("make", &native, &vm);
    assert!(String::from_utf8_lossy(&vm.stdout).contains("hello from make"));
    // gcc ran cc1, as and collect2/ld in the VM: the object is the native one.
    assert_eq!(
        std::fs::read(v.join("hello.o")).unwrap(),
        std::fs::read(n.join("hello.o")).unwrap(),
        "gcc -c in the VM makes the same object file"
    );
}

#[test]
fn a_clone_sharing_memory_without_vfork_is_one_clear_error() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("c.c");
    std::fs::write(
        &src,
        r#"#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
static int child(void *arg) { return 0; }
int main(void) {
    char *stack = malloc(65536);
    return clone(child, stack + 65536, CLONE_VM | SIGCHLD, 0) < 0;
}
"#,
    )
    .unwrap();
    let exe = gcc(tmp.path(), &src, "c", &[]);
    let out = lbrprof()
        .args(["run", "--vm", "--"])
        .arg(&exe)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clone(CLONE_VM) without CLONE_THREAD or CLONE_VFORK (two processes sharing memory) is not supported in the VM"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(128 + libc::SIGSYS), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn processes_left_running_at_the_end_are_named_not_silently_lost() {
    if !kvm_available() {
        return;
    }
    let sh = |script: &str| {
        let out = lbrprof()
            .args(["run", "--vm", "--", "sh", "-c", script])
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (text(&out.stdout), text(&out.stderr), out.status.code())
    };
    // The run ends with its first process; one it left behind (orphaned, on Linux it
    // would go on) is stopped a second after it, and lbrprof says so.
    let started = std::time::Instant::now();
    let (out, err, code) = sh("sleep 30 & echo parent; exit 3");
    assert_eq!((out.as_str(), code), ("parent\n", Some(3)), "{err}");
    assert!(
        err.contains("lbrprof: vm: the program ended while 1 of its processes still ran (pid "),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // One that ends on its own within that second finishes what it does, as the helper
    // a program starts and leaves behind (ASan's llvm-symbolizer, ending when its pipe
    // closes) or a short job sent to the background do on Linux.
    let (out, err, code) = sh("(sleep 0.2; echo late) & echo parent; exit 4");
    assert_eq!((out.as_str(), code), ("parent\nlate\n", Some(4)), "{err}");
    assert!(!err.contains("still ran"), "{err}");
    // A program that waits for its children ends without that line.
    let (out, err, code) = sh("sleep 0.1 & wait; echo done");
    assert_eq!((out.as_str(), code), ("done\n", Some(0)), "{err}");
    assert!(!err.contains("still ran"), "{err}");
}

#[test]
fn a_thread_entering_a_futex_wait_as_its_process_ends_ends_with_it() {
    if !kvm_available() {
        return;
    }
    // Each round's child ends with exit_group while two of its threads keep going back
    // into futex waits without a timeout; the parent reads a pipe from it to its end.
    // A thread that reached the shim just after the end used to be served its wait and
    // block where nothing woke it, holding the pipe open: the parent waited forever
    // (`go build` hung in about 1 run in 15 that way). 200 rounds hit that every run.
    let tmp = tempfile::tempdir().unwrap();
    let exe = gcc(
        tmp.path(),
        &workload("exit_race"),
        "exit_race",
        &["-pthread"],
    );
    let out = lbrprof()
        .args(["run", "--vm", "--timeout", "60", "--"])
        .arg(&exe)
        .arg("200")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 rounds\n",
        "{err}"
    );
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn record_of_a_pipeline_names_the_functions_of_each_program() {
    if !kvm_available() || !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = |name: &str, body: &str| gcc_source(tmp.path(), name, body, &[]);
    let producer = src(
        "producer",
        r#"#include <stdio.h>
__attribute__((noinline)) unsigned long produce_numbers(unsigned long i) {
    unsigned long s = i;
    for (int k = 0; k < 6000; k++) s = s * 6364136223846793005UL + (k & 7 ? k : s >> 7);
    return s;
}
int main(void) {
    for (unsigned long i = 0; i < 20000; i++) printf("%lu\n", produce_numbers(i) % 1000);
    return 0;
}
"#,
    );
    let consumer = src(
        "consumer",
        r#"#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) unsigned long consume_number(unsigned long v, unsigned long s) {
    for (int k = 0; k < 6000; k++) s += (v ^ k) % 3 ? k : s >> 5;
    return s;
}
int main(void) {
    char line[64]; unsigned long s = 0;
    while (fgets(line, sizeof line, stdin)) s = consume_number(strtoul(line, 0, 10), s);
    printf("%lu\n", s);
    return 0;
}
"#,
    );
    // Each program computes for ~0.3 s, so that even on a loaded machine (the test suite
    // runs in parallel) both take several snapshots at 200 Hz.
    let cmd = format!("{} | {}", producer.display(), consumer.display());
    let data = tmp.path().join("pipe.data");
    let out = lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--lbr-freq", "200", "--lbr-overhead", "0", "--"])
        .args(["/bin/sh", "-c", &cmd])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let native = Command::new("/bin/sh").args(["-c", &cmd]).output().unwrap();
    assert_eq!(
        out.stdout, native.stdout,
        "the pipeline's output is its own"
    );

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
    let guest = text
        .split("# Hot guest functions")
        .nth(1)
        .unwrap_or_default();
    for f in ["produce_numbers", "consume_number"] {
        assert!(guest.contains(f), "{f} among the guest functions:\n{text}");
    }
    // Each program's code is named in its own binary, never as another's.
    for line in guest.lines() {
        if line.contains("produce_numbers") {
            assert!(line.contains("producer"), "{line}");
        }
        if line.contains("consume_number") {
            assert!(line.contains("consumer"), "{line}");
        }
    }
    // perf's sort keys group the guest snapshots by the guest's own commands.
    let sorted = lbrprof()
        .args(["report", "--sort", "comm,sym", "--format", "json", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(sorted.status.success());
    let sorted: serde_json::Value = serde_json::from_slice(&sorted.stdout).unwrap();
    let rows = sorted["guest_hist"]["rows"]
        .as_array()
        .expect("a guest table");
    for (comm, f) in [
        ("producer", "produce_numbers"),
        ("consumer", "consume_number"),
    ] {
        assert!(
            rows.iter().any(|r| r["keys"][0] == comm
                && r["keys"][1] == f
                && r["self_pct"].as_f64() > Some(5.0)),
            "{comm} {f} among the guest rows: {rows:#?}"
        );
    }
    // --comm picks a guest process's snapshots (no host thread is called producer).
    let only = lbrprof()
        .args(["report", "--comm", "producer", "--format", "json", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        only.status.success(),
        "{}",
        String::from_utf8_lossy(&only.stderr)
    );
    let only: serde_json::Value = serde_json::from_slice(&only.stdout).unwrap();
    let guest: Vec<&str> = only["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["side"] == "guest")
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(guest.contains(&"produce_numbers"), "{guest:?}");
    assert!(!guest.contains(&"consume_number"), "{guest:?}");
    let info = lbrprof().arg("info").arg(&data).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("sh → producer") && info.contains("sh → consumer"),
        "the guest processes and what they ran:\n{info}"
    );
    let ran = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("vcpus:")?
                .trim()
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no vcpus line:\n{info}"));
    assert!(
        ran >= 2,
        "the pipeline's processes ran on {ran} vCPUs:\n{info}"
    );
    assert!(
        info.contains("vCPUs ran, 1 at start"),
        "the target line says what ran:\n{info}"
    );
}

/// A host sample taken while a vCPU ran the guest carries no page-table root: it is
/// named in the process its vCPU ran at that time. After a fork and an exec (two PIE
/// programs, loaded at the same addresses), the child's samples are the child's, even
/// before its vCPU's first snapshot (snapshots rare here, at 10 Hz).
#[test]
fn host_samples_after_an_exec_are_named_in_the_new_program() {
    if !kvm_available() || !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = |name: &str, body: &str| gcc_source(tmp.path(), name, body, &["-fPIE", "-pie"]);
    let worker = src(
        "worker",
        r#"#include <stdio.h>
__attribute__((noinline)) unsigned long churn(unsigned long s, int n) {
    for (int k = 0; k < n; k++) s = s * 6364136223846793005UL + (k & 7 ? k : s >> 7);
    return s;
}
int main(void) {
    unsigned long s = 1;
    for (int i = 0; i < 6000; i++) s = churn(s, 40000);
    printf("%lu\n", s % 1000);
    return 0;
}
"#,
    );
    let launcher = src(
        "launcher",
        r#"#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    for (int i = 0; i < 2; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execl(argv[1], argv[1], (char *)0);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return 1;
    }
    return 0;
}
"#,
    );
    let data = tmp.path().join("exec.data");
    let out = lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--lbr-freq", "10", "--lbr-overhead", "0", "--"])
        .arg(&launcher)
        .arg(&worker)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let data = data.to_str().unwrap();
    let report = common::json(&["report", "--format", "json", "-i", data]);
    let host_samples_in = |module: &str| -> u64 {
        report["functions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["side"] == "host" && f["module"] == module)
            .map(|f| f["self_samples"].as_u64().unwrap_or(0))
            .sum()
    };
    let (worker, launcher) = (host_samples_in("worker"), host_samples_in("launcher"));
    assert!(
        worker >= 100,
        "the worker's own samples: {worker}\n{report:#}"
    );
    // The launcher only forks and waits: a sample or two of its start, never the
    // worker's loop under its name.
    assert!(
        launcher <= 2,
        "{launcher} host samples named in the launcher (worker: {worker}):\n{report:#}"
    );
}
