//! End-to-end tests of `record` following a whole process tree: a shell running two
//! programs one after another, a parent that forks and execs a child (dynamically linked,
//! with a shared library of its own), a program that forks without exec and starts a
//! thread, and a process attached with `-p` that then execs and forks. In each, the
//! report must name the functions of every program (no user-space sample of a binary
//! with symbols in `[unknown]`), attribute them to the right process, thread and command
//! name, and `info` must count the processes and threads. The command cases are also
//! recorded with `perf record -g` and both recordings are compared function by function.
//!
//! The workloads are `tests/workloads/follow_*.c`, compiled here with gcc.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Compiles `tests/workloads/SRC.c` into `dir/OUT` with the workloads' flags and `extra`.
fn build(dir: &Path, src: &str, out: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workloads/{src}.c"));
    let exe = dir.join(out);
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(extra)
        .status()
        .expect("gcc is needed to build the test workloads");
    assert!(status.success(), "gcc failed on {}", src.display());
    exe
}

/// `alpha` (static, burns in `burn_alpha`) and `beta` (dynamic, burns in `burn_beta` and
/// in `lib_spin` of `libfollow.so`, found through its RPATH).
fn burners(dir: &Path) -> (PathBuf, PathBuf) {
    let alpha = build(dir, "follow_burn", "alpha", &["-DNAME=alpha", "-static"]);
    build(dir, "follow_lib", "libfollow.so", &["-shared", "-fPIC"]);
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    let libdir = format!("-L{}", dir.display());
    let beta = build(
        dir,
        "follow_burn",
        "beta",
        &["-DNAME=beta", "-DUSE_LIB", &libdir, "-lfollow", &rpath],
    );
    (alpha, beta)
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn record(data: &Path, args: &[&str]) -> Output {
    let out = common::lbrprof()
        .args(["record", "-F", "999", "-o"])
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "record: {}", stderr_of(&out));
    out
}

/// Self samples per `(module, function)` of `report --format json` with `filter`, and
/// the report's sample count.
fn functions(data: &Path, filter: &[&str]) -> (BTreeMap<(String, String), u64>, u64) {
    let out = common::lbrprof()
        .args(["report", "--format", "json", "--limit", "0", "-i"])
        .arg(data)
        .args(filter)
        .output()
        .unwrap();
    assert!(out.status.success(), "report: {}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = BTreeMap::new();
    for f in json["functions"].as_array().unwrap() {
        let key = (
            f["module"].as_str().unwrap().to_owned(),
            f["function"].as_str().unwrap().to_owned(),
        );
        *map.entry(key).or_default() += f["self_samples"].as_u64().unwrap();
    }
    (map, json["meta"]["samples"].as_u64().unwrap())
}

/// The report's processes table: samples per `(pid, command)`.
fn processes(data: &Path) -> BTreeMap<(u32, String), u64> {
    let out = common::run(&[
        "report",
        "--format",
        "json",
        "--limit",
        "0",
        "-i",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "report: {}", stderr_of(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["processes"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|p| {
                    (
                        (
                            p["pid"].as_u64().unwrap() as u32,
                            p["command"].as_str().unwrap().to_owned(),
                        ),
                        p["samples"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Self samples of `function` of `module` (0 when absent).
fn count(fns: &BTreeMap<(String, String), u64>, module: &str, function: &str) -> u64 {
    fns.get(&(module.to_owned(), function.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// No sample may land in an unknown module: every program here has symbols.
fn assert_nothing_unknown(fns: &BTreeMap<(String, String), u64>) {
    let unknown: Vec<_> = fns
        .iter()
        .filter(|((module, _), n)| module == "[unknown]" && **n > 0)
        .collect();
    assert!(unknown.is_empty(), "samples in [unknown]: {unknown:?}");
}

fn info(data: &Path) -> String {
    let out = common::run(&["info", data.to_str().unwrap()]);
    assert!(out.status.success(), "info: {}", stderr_of(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pid N`-style lines of a workload's output: the numbers after `key `.
fn numbers(text: &str, key: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
        .collect()
}

/// Share of `n` in `total`, in percent.
fn pct(n: u64, total: u64) -> f64 {
    100.0 * n as f64 / total.max(1) as f64
}

#[test]
fn a_shell_running_two_programs_names_both() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (alpha, beta) = burners(dir.path());
    let script = format!(
        "{} 200000000; {} 100000000",
        alpha.display(),
        beta.display()
    );
    let data = dir.path().join("sh.data");
    let out = record(&data, &["--", "sh", "-c", &script]);
    assert!(stderr_of(&out).contains(", 0 lost,"), "{}", stderr_of(&out));

    let (fns, total) = functions(&data, &[]);
    assert_nothing_unknown(&fns);
    let a = count(&fns, "alpha", "burn_alpha");
    let b = count(&fns, "beta", "burn_beta");
    let lib = count(&fns, "libfollow.so", "lib_spin");
    assert!(a > 50 && b > 20 && lib > 20, "{fns:?}");
    assert!(
        a + b + lib > total * 9 / 10,
        "{a} + {b} + {lib} of {total} samples in the three burners: {fns:?}"
    );
    // Command names are the exec'ed programs': alpha's samples are alpha's only.
    let (only_alpha, n) = functions(&data, &["--comm", "alpha"]);
    assert!(
        count(&only_alpha, "alpha", "burn_alpha") * 10 >= n * 9,
        "{only_alpha:?}"
    );
    let (only_beta, _) = functions(&data, &["--comm", "beta"]);
    assert_eq!(count(&only_beta, "alpha", "burn_alpha"), 0);
    assert_eq!(count(&only_beta, "beta", "burn_beta"), b);

    // info: the shell and its two children, each with its program.
    let text = info(&data);
    assert!(
        text.contains("processes:     3 (2 forked, 3 exec'ed), 3 threads"),
        "{text}"
    );
    for exe in [&alpha, &beta] {
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains(&format!(" {name} ")) && l.ends_with(exe.to_str().unwrap())),
            "{name} with {} in:\n{text}",
            exe.display()
        );
    }
    assert!(text.contains(", 3 exec, 2 fork, "), "{text}");

    agrees_with_perf(
        dir.path(),
        &["sh", "-c", &script],
        &[
            ("alpha", "burn_alpha", a),
            ("beta", "burn_beta", b),
            ("libfollow.so", "lib_spin", lib),
        ],
        total,
    );
}

/// Records `command` with `perf record -g` (same frequency), reads it with lbrprof and
/// checks that each `(module, function, our self samples)` has a share within sampling
/// noise of perf's (`total`: our sample count).
fn agrees_with_perf(dir: &Path, command: &[&str], ours: &[(&str, &str, u64)], total: u64) {
    let perf_data = dir.join("perf.data");
    let perf = Command::new("perf")
        .args(["record", "-g", "-F", "999", "-q", "-o"])
        .arg(&perf_data)
        .arg("--")
        .args(command)
        .output()
        .expect("perf is needed (linux-perf)");
    assert!(perf.status.success(), "perf record: {}", stderr_of(&perf));
    let (perf_fns, perf_total) = functions(&perf_data, &[]);
    for &(module, function, n) in ours {
        let theirs = count(&perf_fns, module, function);
        let (ours, theirs) = (pct(n, total), pct(theirs, perf_total));
        // Two runs of the program, while this binary's other tests run beside them on two
        // cores: their phases' shares move by more than sampling noise (50.6% against 42.1%
        // seen in CI). A wrong attribution moves a share by tens of points.
        assert!(
            (ours - theirs).abs() < 12.0,
            "{function}: {ours:.1}% here, {theirs:.1}% with perf record"
        );
    }
}

#[test]
fn a_parent_that_forks_and_execs_a_child() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, beta) = burners(dir.path());
    let parent = build(dir.path(), "follow_exec", "follow_exec", &[]);
    let data = dir.path().join("exec.data");
    let command = [
        parent.to_str().unwrap(),
        "150000000",
        beta.to_str().unwrap(),
        "100000000",
    ];
    let out = record(&data, &[&["--"], &command[..]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = numbers(&stdout, "pid")[0];
    let child = numbers(&stdout, "child")[0];

    let (fns, total) = functions(&data, &[]);
    assert_nothing_unknown(&fns);
    let parent_work = count(&fns, "follow_exec", "parent_work");
    let b = count(&fns, "beta", "burn_beta");
    let lib = count(&fns, "libfollow.so", "lib_spin");
    assert!(parent_work > 30 && b > 20 && lib > 20, "{fns:?}");
    assert!(parent_work + b + lib > total * 9 / 10, "{fns:?}");
    // Each process's samples are its own program's.
    let (in_parent, n) = functions(&data, &["--pid", &pid.to_string()]);
    assert_eq!(count(&in_parent, "follow_exec", "parent_work"), parent_work);
    assert!(parent_work * 10 >= n * 9, "{in_parent:?}");
    let (in_child, _) = functions(&data, &["--pid", &child.to_string()]);
    assert_eq!(count(&in_child, "follow_exec", "parent_work"), 0);
    assert_eq!(count(&in_child, "beta", "burn_beta"), b);
    let (by_name, _) = functions(&data, &["--comm", "beta"]);
    assert_eq!(count(&by_name, "libfollow.so", "lib_spin"), lib);
    // The processes table: the parent under its name, the child under its program's.
    let procs = processes(&data);
    let names: Vec<_> = procs.keys().cloned().collect();
    assert_eq!(
        names,
        [(pid, "follow_exec".to_owned()), (child, "beta".to_owned())],
        "{procs:?}"
    );
    assert_eq!(procs.values().sum::<u64>(), total);
    agrees_with_perf(
        dir.path(),
        &command,
        &[
            ("follow_exec", "parent_work", parent_work),
            ("beta", "burn_beta", b),
            ("libfollow.so", "lib_spin", lib),
        ],
        total,
    );

    let text = info(&data);
    assert!(
        text.contains("processes:     2 (1 forked, 2 exec'ed), 2 threads"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains(&format!("pid {child} "))
            && l.contains(" beta ")
            && l.ends_with(beta.to_str().unwrap())),
        "{text}"
    );
}

#[test]
fn fork_without_exec_and_threads_keep_their_ids() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build(dir.path(), "follow_fork", "follow_fork", &[]);
    let data = dir.path().join("fork.data");
    let out = record(&data, &["--", exe.to_str().unwrap(), "150000000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (pid, child, tid) = (
        numbers(&stdout, "pid")[0],
        numbers(&stdout, "child")[0],
        numbers(&stdout, "tid")[0],
    );
    assert!(pid != child && tid != child);

    let (fns, total) = functions(&data, &[]);
    assert_nothing_unknown(&fns);
    agrees_with_perf(
        dir.path(),
        &[exe.to_str().unwrap(), "150000000"],
        &["parent_work", "child_work", "thread_work"]
            .map(|f| ("follow_fork", f, count(&fns, "follow_fork", f))),
        total,
    );
    // Each function in the process and thread that ran it, and nowhere else.
    for (filter, id, function) in [
        ("--pid", pid, "parent_work"),
        ("--tid", child, "child_work"),
        ("--tid", tid, "thread_work"),
    ] {
        let (only, n) = functions(&data, &[filter, &id.to_string()]);
        let here = count(&only, "follow_fork", function);
        assert!(
            here > 30 && here * 10 >= n * 9,
            "{filter} {id}: {here} of {n} samples in {function}: {only:?}"
        );
        assert_eq!(here, count(&fns, "follow_fork", function), "{function}");
    }
    // No exec: every thread keeps the program's name.
    let (named, n) = functions(&data, &["--comm", "follow_fork"]);
    let (_, all) = functions(&data, &[]);
    assert_eq!(n, all, "{named:?}");

    let text = info(&data);
    assert!(
        text.contains("processes:     2 (1 forked, 1 exec'ed), 3 threads"),
        "{text}"
    );
    assert!(
        text.contains("tasks:         2 processes, 3 threads sampled"),
        "{text}"
    );
}

#[test]
fn an_attached_process_that_execs_and_forks_is_followed() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let waiter = build(dir.path(), "follow_attach", "follow_attach", &[]);
    let forker = build(dir.path(), "follow_fork", "follow_fork", &[]);
    let data = dir.path().join("attach.data");
    let mut target = Command::new(&waiter)
        .args(["1500", forker.to_str().unwrap(), "150000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    while lines.next().unwrap().unwrap() != "ready" {}
    // The recording ends when the attached process does (it waits for its child).
    let out = record(&data, &["-p", &pid.to_string()]);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(target.wait().unwrap().success());
    let rest = rest.join("\n");
    let (child, tid) = (numbers(&rest, "child")[0], numbers(&rest, "tid")[0]);
    assert!(stderr_of(&out).contains(", 0 lost,"), "{}", stderr_of(&out));

    let (fns, _) = functions(&data, &[]);
    assert_nothing_unknown(&fns);
    // Before the exec: the program we attached to, from /proc.
    assert!(count(&fns, "follow_attach", "before_exec") > 30, "{fns:?}");
    // After it: the new program, its forked child and the child's thread, none of which
    // existed at the attach.
    for (filter, id, function) in [
        ("--pid", pid, "parent_work"),
        ("--tid", child, "child_work"),
        ("--tid", tid, "thread_work"),
    ] {
        let (only, n) = functions(&data, &[filter, &id.to_string()]);
        let here = count(&only, "follow_fork", function);
        // The attached process ran its first program before the exec.
        let before = count(&only, "follow_attach", "before_exec");
        assert!(
            here > 30 && (here + before) * 10 >= n * 9,
            "{filter} {id}: {here} of {n} samples in {function}: {only:?}"
        );
    }
    // The processes table has the attached process twice, once per program.
    let procs = processes(&data);
    let before = procs
        .get(&(pid, "follow_attach".to_owned()))
        .copied()
        .unwrap_or(0);
    let after = procs
        .get(&(pid, "follow_fork".to_owned()))
        .copied()
        .unwrap_or(0);
    assert!(before > 30 && after > 30, "{procs:?}");
    assert!(
        procs.contains_key(&(child, "follow_fork".to_owned())),
        "{procs:?}"
    );
    // The exec renamed the process: its old program's samples keep the old name.
    let (old, _) = functions(&data, &["--comm", "follow_attach"]);
    let (new, _) = functions(&data, &["--comm", "follow_fork"]);
    assert_eq!(count(&new, "follow_attach", "before_exec"), 0, "{new:?}");
    assert_eq!(count(&old, "follow_fork", "parent_work"), 0, "{old:?}");

    let text = info(&data);
    assert!(
        text.contains("processes:     2 (1 forked, 1 exec'ed), 3 threads"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("pid {pid} ")) && l.ends_with(forker.to_str().unwrap())),
        "{text}"
    );
}
