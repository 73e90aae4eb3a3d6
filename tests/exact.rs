//! Exact mode on a real static C program (issue 14): the interpreter runs it (not the
//! breakpoints), the counts are the same run to run, the output is the program's, and
//! `--stats` names what was handed back to breakpoints; random bytes are a fixed stream so
//! that counts repeat; AVX2 code (glibc's `*_avx2` string functions, intrinsics) runs in
//! the interpreter with the counts the breakpoints alone give; signals (timers, raise)
//! reach a program at instruction boundaries, as natively, and their handlers count;
//! RDRAND, RDSEED, RDTSC and RDTSCP, which a program reads without a system call, are
//! pinned too, so a program that branches on them counts the same every run.

mod common;

use std::path::Path;
use std::process::Command;

use common::{build_static_workload, kvm_available, lbrprof};

/// (instructions, branches, taken, interpreted %, the fall-backs line, stdout).
type ExactRun = (u64, u64, u64, f64, String, Vec<u8>);

fn exact_run(prog: &Path, arg: &str) -> ExactRun {
    exact_run_with(&[], prog, &[arg]).0
}

/// `exact_run` with more `run` flags and any arguments; also returns stderr.
fn exact_run_with(flags: &[&str], prog: &Path, args: &[&str]) -> (ExactRun, String) {
    exact_run_env(flags, prog, args, &[])
}

/// [`exact_run_with`] with `env` added to the program's environment.
fn exact_run_env(
    flags: &[&str],
    prog: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExactRun, String) {
    let out = lbrprof()
        .env_remove("GLIBC_TUNABLES")
        .envs(env.iter().copied())
        .args([
            "run",
            "--vm",
            "--lbr",
            "emulated",
            "--lbr-mode",
            "exact",
            "--stats",
        ])
        .args(flags)
        .arg("--")
        .arg(prog)
        .args(args)
        .env_remove("PYTHONHASHSEED")
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
    // (No such line when the interpreter is off.)
    let share: f64 = err
        .lines()
        .find(|l| l.contains("instructions interpreted"))
        .map_or(0.0, |interp| {
            interp
                .split('(')
                .nth(1)
                .and_then(|s| s.split('%').next())
                .unwrap()
                .parse()
                .unwrap()
        });
    let fallbacks = err
        .lines()
        .find(|l| l.contains("top fall-backs to breakpoints:"))
        .unwrap_or("")
        .to_owned();
    let counts = (
        num(traced, " instructions and"),
        num(traced, " branches ("),
        num(traced, " taken)"),
        share,
        fallbacks,
        out.stdout,
    );
    (counts, err)
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

#[test]
fn random_bytes_are_a_fixed_stream_in_exact_mode_so_counts_repeat() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = common::build_workload(tmp.path(), "exact_random");
    let run = |flags: &[&str]| exact_run_with(flags, &exe, &[]);
    let (a, err) = run(&[]);
    let (b, _) = run(&[]);
    let text = String::from_utf8_lossy(&a.5).into_owned();
    for source in ["getrandom ", "urandom ", "at_random ", "child "] {
        assert!(text.contains(source), "{source} missing:\n{text}\n{err}");
    }
    assert!(err.contains("fixed stream (seed 0)"), "{err}");
    // The same bytes from every source, so the same work and the same counts.
    assert_eq!(a.5, b.5, "two exact runs see the same random bytes");
    assert_eq!((a.0, a.1, a.2), (b.0, b.1, b.2), "and count the same");
    // Each source draws its own bytes: no two lines repeat one another.
    let hex: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    let mut uniq = hex.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), hex.len(), "{text}");
    // Another seed: other bytes, other counts; the host's: new bytes every run.
    let (c, _) = run(&["--vm-seed", "7"]);
    assert_ne!(c.5, a.5, "seed 7 gives the bytes of seed 0");
    assert_eq!(c.5, run(&["--vm-seed", "7"]).0.5);
    let (h1, herr) = run(&["--vm-seed", "host"]);
    let (h2, _) = run(&["--vm-seed", "host"]);
    assert_ne!(h1.5, h2.5, "the host's randomness repeated");
    assert!(!herr.contains("fixed stream"), "{herr}");
}

/// `record` in exact mode, then what the recording says the guest did: the callgrind
/// export (every instruction's count, conditional and indirect branches, call edges) and
/// the report's guest tables (hot functions, branches, fall-through ranges).
fn exact_tables(exe: &Path, data: &Path) -> (Vec<u8>, String, String) {
    exact_tables_with(&[], exe, data)
}

/// [`exact_tables`] with `flags` added to `record`.
fn exact_tables_with(flags: &[&str], exe: &Path, data: &Path) -> (Vec<u8>, String, String) {
    let rec = lbrprof()
        .args(["record", "--vm", "--lbr", "emulated", "--lbr-mode", "exact"])
        .args(flags)
        .arg("-o")
        .arg(data)
        .arg("--")
        .arg(exe)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&rec.stderr);
    assert!(rec.status.success(), "exact record failed:\n{err}");
    let cg = data.with_extension("callgrind");
    let export = lbrprof()
        .args(["export", "--callgrind", "-i"])
        .arg(data)
        .arg("-o")
        .arg(&cg)
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    let callgrind = std::fs::read_to_string(&cg)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("desc: Source:")) // names the recording's file
        .collect::<Vec<_>>()
        .join("\n");
    let report = lbrprof().args(["report", "-i"]).arg(data).output().unwrap();
    assert!(report.status.success(), "{report:?}");
    let text = String::from_utf8_lossy(&report.stdout);
    let from = text.find("# Hot guest functions").expect(&text);
    let to = text.find("# Guest: ").expect(&text);
    (rec.stdout, callgrind, text[from..to].to_owned())
}

#[test]
fn rdrand_and_rdtsc_read_a_pinned_world_in_exact_mode() {
    if !kvm_available() {
        return;
    }
    if !std::arch::is_x86_feature_detected!("rdrand")
        || !std::arch::is_x86_feature_detected!("rdseed")
    {
        eprintln!("skipped: this host's CPU has no RDRAND or RDSEED to run the test program");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_static_workload(tmp.path(), "exact_rdrand", &["-mrdrnd", "-mrdseed"]);
    let a = exact_tables(&exe, &tmp.path().join("a.data"));
    let b = exact_tables(&exe, &tmp.path().join("b.data"));
    let out = String::from_utf8_lossy(&a.0).into_owned();
    assert_eq!(a.0, b.0, "two exact runs read the same values");
    assert_eq!(a.1, b.1, "and count the same instructions and branches");
    assert_eq!(a.2, b.2, "and give the same branch tables");
    // The pinned TSC starts at the pinned monotonic clock's 1000 s (1 GHz) and counts
    // instructions, so the loop that waits for it spins the same number of times; the
    // TSC_AUX is CPU 0's.
    let tsc: Vec<u64> = out
        .lines()
        .find_map(|l| l.strip_prefix("rdtsc "))
        .expect(&out)
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        (1_000_000_000_000..1_000_100_000_000).contains(&tsc[0]) && tsc[1] >= tsc[0] + 20_000,
        "{out}"
    );
    assert!(out.contains(" aux 0\n"), "{out}");
    // A snapshot every 7 instructions (10,000,000 / 1,428,571): many PMIs end an
    // interpreting stretch right before one of these instructions, and the guest goes on
    // from there with breakpoints; still only the interpreter runs them, so the program
    // reads what it read above (the CPU running one would read the host's world).
    let dense = ["--lbr-freq", "1428571"];
    let c = exact_tables_with(&dense, &exe, &tmp.path().join("c.data"));
    assert_eq!(
        String::from_utf8_lossy(&c.0),
        out,
        "PMIs changed what it read"
    );
    // The counts are the interpreter's: the CPU never ran one of them.
    let ((_, _, _, _, fallbacks, _), _) = exact_run_with(&[], &exe, &[]);
    for m in ["rdrand", "rdseed", "rdtsc"] {
        assert!(!fallbacks.contains(m), "{m} went to the CPU: {fallbacks}");
    }
    // Another seed draws other numbers; the host's world gives the CPU's values.
    let (seeded, _) = exact_run_with(&["--vm-seed", "7"], &exe, &[]);
    assert_ne!(seeded.5, a.0);
    let host = |_| exact_run_with(&["--vm-outside", "host"], &exe, &[]).0.5;
    let (h1, h2) = (host(1), host(2));
    assert_ne!(h1, h2, "the host's RDRAND repeated");
    let h1 = String::from_utf8_lossy(&h1).into_owned();
    assert!(!h1.contains("rdtsc 10000000"), "{h1}");
}

#[test]
fn avx2_code_runs_in_the_interpreter_and_counts_as_the_breakpoints_do() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("exact_avx");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/exact_avx.c");
    let ok = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc is needed for this test");
    assert!(ok.success());
    let native = Command::new(&exe).arg("4").output().unwrap();
    // glibc's AVX2 string functions, not its EVEX ones, with no help from the test: the
    // vCPU's XCR0 hides AVX-512, and where the guest's ring 3 runs on the host's XCR0
    // (PVM), whose XGETBV shows AVX-512 whatever the vCPU's says, exact mode's pinned
    // world turns it off in GLIBC_TUNABLES. The interpreter runs no EVEX code.
    let (a, err) = exact_run_env(&[], &exe, &["4"], &[]);
    // Every branch a stop, every instruction the CPU's: the reference counts.
    let (b, _) = exact_run_env(&["--lbr-interp", "false"], &exe, &["4"], &[]);
    let fall_backs = |list: &str| -> Vec<String> {
        list.split_once(": ")
            .map_or("", |(_, l)| l)
            .split(", ")
            .filter_map(|e| e.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    for m in [
        "vmovdqu64",
        "vmovdqa64",
        "vmovdqu8",
        "kmovd",
        "kmovq",
        "kortestd",
        "vpxorq",
    ] {
        assert!(
            !fall_backs(&a.4).contains(&m.to_owned()),
            "EVEX {m} handed back: {}\n{err}",
            a.4
        );
    }
    let sees_avx2 = |out: &[u8]| String::from_utf8_lossy(out).starts_with("avx2 1");
    if sees_avx2(&a.5) || !sees_avx2(&native.stdout) {
        assert_eq!(a.5, native.stdout, "the program's output in the VM");
    } else {
        // The program computes along another path without AVX2: the CPU's own run of
        // that path (the breakpoints' run, below) is the reference.
        eprintln!("the guest sees no AVX2 here, the host does: not compared with the native run");
    }
    assert_eq!(b.5, a.5, "and without the interpreter");
    assert_eq!(
        (a.0, a.1, a.2),
        (b.0, b.1, b.2),
        "the interpreter counts what the breakpoints count"
    );
    if !String::from_utf8_lossy(&a.5).starts_with("avx2 1") {
        eprintln!(
            "skipped the AVX2 checks: the guest does not see AVX2 and BMI2 here (glibc \
             picks its SSE2 functions)"
        );
        return;
    }
    // What the guest ran in VEX forms did not stop it.
    let handed_back = fall_backs(&a.4);
    for m in [
        "vmovdqu",
        "vmovdqa",
        "vpcmpeqb",
        "vpminub",
        "vpmovmskb",
        "vpbroadcastb",
        "vpxor",
        "vptest",
        "vzeroupper",
        "vpshufb",
        "pext",
        "andn",
    ] {
        assert!(
            !handed_back.contains(&m.to_owned()),
            "{m} handed back: {}\n{err}",
            a.4
        );
    }
    assert!(a.3 >= 99.0, "only {}% interpreted; {}", a.3, a.4);
}

#[test]
fn timer_signals_reach_an_exact_mode_program_between_its_instructions() {
    if !kvm_available() {
        return;
    }
    // A timer's kick may find the vCPU between a breakpoint's `int3` (or a single-step)
    // and the exception's delivery, where on some hosts RIP is already past the `int3`:
    // planning or delivering the signal there resumed the program inside an instruction
    // (a wrong sum, or SIGSEGV one byte past the `int3`). The timing differs run to run,
    // so more than one run; the one-shot timers must reach a loop that makes no system
    // call.
    let tmp = tempfile::tempdir().unwrap();
    let timers = build_static_workload(tmp.path(), "exact_signals", &[]);
    let avx = build_static_workload(tmp.path(), "linux_signal_avx", &[]);
    let native_timers = Command::new(&timers).arg("timers").output().unwrap();
    let native_avx = Command::new(&avx).output().unwrap();
    assert!(
        String::from_utf8_lossy(&native_timers.stdout).contains("interval timer taken"),
        "{native_timers:?}"
    );
    for run in 0..2 {
        let (t, err) = exact_run_with(&[], &timers, &["timers"]);
        assert_eq!(
            String::from_utf8_lossy(&t.5),
            String::from_utf8_lossy(&native_timers.stdout),
            "run {run}: the timers program in exact mode\n{err}"
        );
        // Every instruction of the 4 M-round loop was traced (about 10 each), the
        // handlers' too: none ran untraced after a signal moved the program.
        assert!(
            t.0 > 40_000_000,
            "run {run}: only {} instructions traced",
            t.0
        );
        let (a, err) = exact_run_with(&[], &avx, &[]);
        if a.5 == b"no AVX\n" && native_avx.stdout != a.5 {
            eprintln!(
                "skipped linux_signal_avx: the guest's CPUID shows no usable AVX here \
                 (OSXSAVE clear), the host's does"
            );
            continue;
        }
        assert_eq!(
            String::from_utf8_lossy(&a.5),
            String::from_utf8_lossy(&native_avx.stdout),
            "run {run}: linux_signal_avx in exact mode\n{err}"
        );
    }
}

#[test]
fn signals_at_fixed_points_count_the_same_every_run_handlers_included() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_static_workload(tmp.path(), "exact_signals", &[]);
    let native = Command::new(&exe).args(["raise", "100"]).output().unwrap();
    let a = exact_run_with(&[], &exe, &["raise", "100"]).0;
    let b = exact_run_with(&[], &exe, &["raise", "100"]).0;
    assert_eq!(a.5, native.stdout, "the program's output in the VM");
    assert_eq!(
        (a.0, a.1, a.2),
        (b.0, b.1, b.2),
        "two exact runs count the same"
    );
    // 900 more rounds of the handler's loop (at least an add, an increment, a compare
    // and a branch each) for each of the 100 signals: the handlers are traced.
    let more = exact_run_with(&[], &exe, &["raise", "1000"]).0;
    let grew = more.0 - a.0;
    assert!(
        grew >= 100 * 900 * 4,
        "the handlers' instructions grew by only {grew} ({} -> {})",
        a.0,
        more.0
    );
    assert!(more.1 - a.1 >= 100 * 900, "{a:?} {more:?}");
}
