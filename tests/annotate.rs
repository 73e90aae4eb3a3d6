//! End-to-end tests of `lbrprof annotate`: on a real `perf record -b` recording (the shared
//! propeller fixture) and on a program recorded in the VM with the emulated LBR. The
//! per-instruction samples add up to the function's, which agree with `report`; the
//! branch counts follow what the code does.

mod common;

use std::process::Command;

use common::{json, lbrprof};
use serde_json::Value;

fn insns(a: &Value) -> &Vec<Value> {
    a["instructions"].as_array().expect("instructions")
}

/// The conditional branches with their (taken, not taken) counts.
fn conditionals(a: &Value) -> Vec<(String, u64, u64)> {
    insns(a)
        .iter()
        .filter(|i| !i["not_taken"].is_null())
        .map(|i| {
            (
                i["text"].as_str().unwrap().to_owned(),
                i["taken"].as_u64().unwrap_or(0),
                i["not_taken"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn annotate_a_perf_recording_with_branch_stacks() {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return;
    };
    let data = dir.join("propeller_sample.perfdata");
    let (d, p) = (dir.to_str().unwrap(), data.to_str().unwrap());
    let args = ["-i", p, "--symfs", d, "--kallsyms", "/dev/null"];
    let a = json(&[&["annotate", "compute_flag", "--format", "json"][..], &args].concat());
    // Sample shares add up, and agree with report's self samples of the function.
    let samples = a["samples"].as_u64().unwrap();
    let sum: u64 = insns(&a)
        .iter()
        .map(|i| i["samples"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, samples);
    let report = json(&[&["report", "--format", "json", "--limit", "0"][..], &args].concat());
    let row = report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "compute_flag")
        .expect("compute_flag in the report");
    assert_eq!(row["self_samples"].as_u64().unwrap(), samples);
    // compute_flag: `if (i % 10 < 4)`, a jge over the then-branch taken for 6 of 10.
    let cond = conditionals(&a);
    assert_eq!(cond.len(), 1, "{cond:?}");
    let (text, taken, not_taken) = &cond[0];
    assert!(text.starts_with("jge"), "{text}");
    let share = *taken as f64 / (taken + not_taken) as f64;
    assert!((0.5..0.75).contains(&share), "taken {share:.2} of the time");
    // Every instruction between the function's entry and the jge ran as often.
    let exec: Vec<u64> = insns(&a)
        .iter()
        .take_while(|i| !i["text"].as_str().unwrap().starts_with("jge"))
        .map(|i| i["exec"].as_u64().unwrap())
        .collect();
    assert!(
        exec[0] > 0 && exec.iter().all(|&e| e == exec[0]),
        "{exec:?}"
    );

    // The text form: header, columns, the branch counts on the jge's row.
    let text = common::ok(&[&["annotate", "compute_flag"][..], &args].concat());
    assert!(text.starts_with("# lbrprof annotate: compute_flag in propeller_sample.bin"));
    let jge = text.lines().find(|l| l.contains("jge")).unwrap();
    assert!(jge.contains(&taken.to_string()) && jge.contains(&not_taken.to_string()));

    // Unknown functions: one line, exit 2, with the names that come close.
    let out = lbrprof()
        .args([&["annotate", "compute"][..], &args].concat())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no function named 'compute'"), "{err}");
    assert!(err.contains("did you mean: compute_flag"), "{err}");
    assert_eq!(
        err.trim_end()
            .lines()
            .filter(|l| !l.contains("warning"))
            .count(),
        1
    );
}

#[test]
fn annotate_a_program_recorded_in_the_vm() {
    if !common::kvm_available() || !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("branchy.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
volatile unsigned long sink;
__attribute__((noinline)) static void rare(unsigned long i) { sink += i * 3; }
__attribute__((noinline)) static void common_case(unsigned long i) { sink ^= i; }
__attribute__((noinline)) void classify(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) {
        if (i % 4 == 0) rare(i); else common_case(i);
    }
}
int main(void) {
    for (int r = 0; r < 60; r++) classify(1000000);
    printf("%lu\n", sink);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = tmp.path().join("branchy");
    assert!(
        Command::new("gcc")
            .args(["-O2", "-g", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let data = tmp.path().join("b.data");
    let out = lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--vm", "--lbr-freq", "500", "--lbr-overhead", "0", "--"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = json(&[
        "annotate",
        "classify",
        "-i",
        data.to_str().unwrap(),
        "--format",
        "json",
    ]);
    // The loop's `i % 4 == 0` test: its branch goes one way 1 time in 4.
    let cond = conditionals(&a);
    let ratios: Vec<f64> = cond
        .iter()
        .filter(|(_, t, n)| t + n > 200)
        .map(|(_, t, n)| *t as f64 / (t + n) as f64)
        .collect();
    assert!(
        ratios
            .iter()
            .any(|r| (r - 0.25).abs() < 0.1 || (r - 0.75).abs() < 0.1),
        "{cond:?}"
    );
    // Source lines from DWARF: the loop's line is there.
    assert!(
        insns(&a).iter().any(|i| i["line"] == 7),
        "{}",
        serde_json::to_string_pretty(&a).unwrap()
    );
}
