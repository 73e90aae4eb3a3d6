//! Exact mode on a real static C program (issue 14): the interpreter runs it (not the
//! breakpoints), the counts are the same run to run, the output is the program's, and
//! `--stats` names what was handed back to breakpoints.

mod common;

use std::path::Path;
use std::process::Command;

use common::{kvm_available, lbrprof};

/// (instructions, branches, taken, interpreted %, the fall-backs line, stdout).
fn exact_run(prog: &Path, arg: &str) -> (u64, u64, u64, f64, String, Vec<u8>) {
    let out = lbrprof()
        .args([
            "run",
            "--vm",
            "--lbr",
            "emulated",
            "--lbr-mode",
            "exact",
            "--stats",
            "--",
        ])
        .arg(prog)
        .arg(arg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exact run failed:\n{err}");
    let num = |line: &str, after: &str| -> u64 {
        let i = line
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {line}"));
        let tok = line[..i].split_whitespace().last().unwrap();
        tok.trim_start_matches('(').parse().unwrap()
    };
    let traced = err.lines().find(|l| l.contains("traced,")).expect(&err);
    let interp = err
        .lines()
        .find(|l| l.contains("instructions interpreted"))
        .expect(&err);
    let share: f64 = interp
        .split('(')
        .nth(1)
        .and_then(|s| s.split('%').next())
        .unwrap()
        .parse()
        .unwrap();
    let fallbacks = err
        .lines()
        .find(|l| l.contains("top fall-backs to breakpoints:"))
        .unwrap_or("")
        .to_owned();
    (
        num(traced, " instructions and"),
        num(traced, " branches ("),
        num(traced, " taken)"),
        share,
        fallbacks,
        out.stdout,
    )
}

#[test]
fn a_static_c_program_runs_in_the_interpreter_deterministically() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("exact_bench");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/exact_bench.c");
    let ok = Command::new("gcc")
        .args(["-O2", "-g", "-static", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc is needed for this test");
    assert!(ok.success());
    let native = Command::new(&exe).arg("4000").output().unwrap();
    let a = exact_run(&exe, "4000");
    let b = exact_run(&exe, "4000");
    assert_eq!(a.5, native.stdout, "the program's output in the VM");
    assert_eq!(
        (a.0, a.1, a.2),
        (b.0, b.1, b.2),
        "two exact runs count the same"
    );
    assert!(a.0 > 1_000_000 && a.1 > 100_000 && a.2 > 0, "{a:?}");
    // qsort's comparator (indirect calls), DIV, SSE2 memset/memcpy/strlen: all in the
    // interpreter; what is left is start-up (CPUID, system calls, rep movsb).
    assert!(a.3 >= 99.0, "only {}% interpreted; {}", a.3, a.4);
    assert!(a.4.contains("syscall"), "{}", a.4);
}
