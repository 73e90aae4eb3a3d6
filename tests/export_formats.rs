//! Exports for other tools' formats.
//!
//! `export --perf-data`: the files lbrprof writes are read by Linux perf (Debian
//! linux-perf, 6.1) as the recordings they came from: perf script and perf report on an
//! exported perf.data fixture print what they print on the original, and a recording
//! with guest snapshots shows them as `guest-lbr` samples with symbols and branch stacks.
//!
//! `export --firefox`: the Firefox Profiler's processed-profile JSON, checked against the
//! format's structure (tables, columns, indexes) and for its content (tracks, samples,
//! stacks, markers).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use lbrprof_data::model::*;
use lbrprof_data::recording::{RecordingWriter, Summary};

/// Whether `perf` runs here; says why a test skips when not.
fn perf_tool() -> bool {
    let works = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("skipped: needs the perf tool (Debian linux-perf)");
    }
    works
}

/// `perf ARGS` with its stdout and stderr; it must succeed.
fn perf(args: &[&str]) -> (String, String) {
    let out = Command::new("perf").args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "perf {args:?} failed: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn export(input: &Path, out: &Path) -> String {
    let o = common::run(&[
        "export",
        "-i",
        input.to_str().unwrap(),
        "--perf-data",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "export failed: {stderr}");
    stderr
}

/// Lines as whitespace-separated tokens (perf pads its columns to the widest event name,
/// and a file that keeps only the sampled events has narrower ones).
fn tokens(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect()
}

const ROUND_TRIP: &[&str] = &[
    "perf.data.branch-4.14",
    "perf.data.branch_stack_hw_index",
    "perf.data.callgraph_and_branch-3.8",
    "propeller_sample.perfdata",
];

/// perf.data → lbrprof export --perf-data → perf script equals perf script on the
/// original: samples (comm, pid/tid, time, period, event), call chains with symbols, and
/// every branch entry with its flags and cycles.
#[test]
fn perf_script_on_an_exported_fixture_prints_what_it_prints_on_the_original() {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return;
    };
    if !perf_tool() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let symfs = dir.to_str().unwrap();
    for name in ROUND_TRIP {
        let orig = dir.join(name);
        let ours = tmp.path().join(format!("{name}.out"));
        export(&orig, &ours);
        for fields in ["comm,pid,tid,time,period,event,ip,sym,dso", "brstack"] {
            let script = |p: &Path| {
                perf(&[
                    "script",
                    "-i",
                    p.to_str().unwrap(),
                    "--symfs",
                    symfs,
                    "-F",
                    fields,
                ])
            };
            let (want, want_err) = script(&orig);
            let (got, got_err) = script(&ours);
            assert!(!want.is_empty(), "{name}: perf script printed nothing");
            assert_eq!(
                tokens(&got),
                tokens(&want),
                "{name}: perf script -F {fields} differs"
            );
            // Only the warnings the original gets too (kernel symbols not found here).
            assert_eq!(got_err, want_err, "{name}: perf script -F {fields} stderr");
        }
    }
}

/// perf report's branch view (`-b`: top edges) on the exported file is the
/// original's, line for line.
#[test]
fn perf_report_branch_view_of_an_export_matches_the_original() {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return;
    };
    if !perf_tool() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "perf.data.callgraph_and_branch-3.8",
        "propeller_sample.perfdata",
    ] {
        let orig = dir.join(name);
        let ours = tmp.path().join(format!("{name}.out"));
        export(&orig, &ours);
        let report = |p: &Path| {
            // (perf 6.1's report -b crashes on these files with --symfs or --sort.)
            perf(&["report", "-i", p.to_str().unwrap(), "-b", "--stdio"]).0
        };
        let want = report(&orig);
        let got = report(&ours);
        assert!(tokens(&want).len() > 10, "{name}: {want}");
        assert_eq!(tokens(&got), tokens(&want), "{name}");
    }
}

fn symbol(elf: &[u8], part: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(elf).unwrap();
    file.symbols()
        .find(|s| s.name().is_ok_and(|n| n.contains(part)))
        .unwrap_or_else(|| panic!("no symbol {part}"))
        .address()
}

/// A recording of the builtin `sort` guest on two vCPUs: vCPU 0 is in `partition`,
/// vCPU 1 in `insertion_sort`, each snapshot holding two taken branches (one
/// mispredicted) and a frame-pointer return address; one host sample of the shim.
fn guest_recording(path: &Path, image_path: &Path) -> (u64, u64) {
    let image = lbrprof_vmm::builtin::image("sort").unwrap();
    std::fs::write(image_path, image).unwrap();
    let part = symbol(image, "9partition");
    let ins = symbol(image, "14insertion_sort");
    let header = Header {
        writer: "test".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        // Made on this kernel: the export maps its text as perf record does.
        host: HostInfo {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap()
                .trim()
                .to_owned(),
            ..HostInfo::default()
        },
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
        sink.send(Event::Task(TaskEvent::Comm {
            time_ns: 0,
            pid: 100,
            tid,
            comm: format!("vcpu{vcpu}"),
        }));
    }
    let ms = 1_000_000u64;
    for k in 1..=10u64 {
        for (vcpu, f) in [(0u32, part), (1, ins)] {
            sink.send(Event::Snapshot(LbrSnapshot {
                vcpu,
                host_time_ns: k * ms + u64::from(vcpu),
                guest_tsc: 0,
                reason: SnapshotReason::Pmi { counter: 32 },
                tos: 1,
                entries: vec![
                    LbrEntry {
                        from: f + 0x10,
                        to: f + 0x20,
                        info: 3,
                    },
                    LbrEntry {
                        from: f + 0x30,
                        to: f + 0x8,
                        info: 1 << 63 | 7,
                    },
                ],
                guest_ip: f + 0xc,
                guest_sp: 0,
                guest_fp: 0,
                cr3: 0,
                guest_stack: vec![],
                frozen_events: 0,
            }));
        }
    }
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

/// Guest snapshots become `guest-lbr` samples of the guest machine's process (the image,
/// pid 1) on CPU N = their vCPU, in guest user mode, symbolized from the guest image, with
/// their branch stacks newest first and the LBR_INFO flags.
#[test]
fn guest_snapshots_are_samples_with_symbols_and_branch_stacks() {
    if !perf_tool() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("g.data");
    let (part, ins) = guest_recording(&data, &tmp.path().join("sort"));
    let out = tmp.path().join("g.perf.data");
    let said = export(&data, &out);
    assert!(
        said.contains("1 host samples, 20 guest snapshots"),
        "{said}"
    );
    let (text, stderr) = perf(&[
        "script",
        "-i",
        out.to_str().unwrap(),
        "-F",
        "comm,tid,cpu,event,ip,sym,brstack",
    ]);
    assert!(stderr.trim().is_empty(), "perf warned: {stderr}");
    let guest: Vec<&str> = text.lines().filter(|l| l.contains("guest-lbr")).collect();
    assert_eq!(guest.len(), 20, "{text}");
    for (vcpu, f, name) in [(0, part, "partition"), (1, ins, "insertion_sort")] {
        let rows: Vec<&&str> = guest
            .iter()
            .filter(|l| {
                l.split_whitespace().take(3).collect::<Vec<_>>()
                    == ["sort", "1", &format!("[{vcpu:03}]")]
            })
            .collect();
        assert_eq!(rows.len(), 10, "vCPU {vcpu}: {text}");
        let want_branches = format!(
            "{:#x}/{:#x}/M/-/-/7/  {:#x}/{:#x}/P/-/-/3/",
            f + 0x30,
            f + 0x8,
            f + 0x10,
            f + 0x20
        );
        for row in rows {
            assert!(row.contains(name), "vCPU {vcpu} not in {name}: {row}");
            assert!(row.contains(&format!("{:x}", f + 0xc)), "{row}");
            assert!(
                row.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .contains(
                        &want_branches
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                "branches of vCPU {vcpu}: {row}\nwant {want_branches}"
            );
        }
    }
    // perf report's branch view counts the guest edges by symbol: 20 snapshots × 2.
    let (report, stderr) = perf(&["report", "-i", out.to_str().unwrap(), "-b", "--stdio"]);
    assert!(stderr.trim().is_empty(), "perf report warned: {stderr}");
    assert!(
        report.contains("# Samples: 40  of event 'guest-lbr'"),
        "{report}"
    );
    // In the sample view, perf shows guest user code at its own level, `[u]`.
    let (report, _) = perf(&[
        "report",
        "-i",
        out.to_str().unwrap(),
        "--stdio",
        "--no-branch-stack",
        "--sort",
        "comm,sym",
    ]);
    assert!(
        report
            .lines()
            .any(|l| l.contains("sort")
                && l.contains("[u] lbrprof_guest::workloads::sort::partition")),
        "{report}"
    );
}

/// A real `record --vm` run: the export holds every host sample and every guest
/// snapshot `lbrprof report` counts, and perf reads it without a warning.
#[test]
fn a_recorded_guest_run_exports_every_sample_and_snapshot() {
    if !common::kvm_available() || !common::perf_available() || !perf_tool() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vm.data");
    // Long enough for snapshots at any speed: builtin:sort's ~25 ms could end before the
    // overhead budget's first one (0 snapshots on a fast, loaded host).
    common::ok(&[
        "record",
        "--vm",
        "builtin:branchy",
        "-o",
        data.to_str().unwrap(),
        "--",
        "n=20000000",
    ]);
    let report = common::json(&["report", "-i", data.to_str().unwrap(), "--format", "json"]);
    let samples = report["meta"]["samples"].as_u64().unwrap();
    let snapshots = report["meta"]["snapshots"].as_u64().unwrap();
    let entries = report["meta"]["branch_entries"].as_u64().unwrap();
    assert!(snapshots > 0, "{report}");
    let out = tmp.path().join("vm.perf.data");
    export(&data, &out);
    let (text, _) = perf(&["script", "-i", out.to_str().unwrap(), "-F", "event,brstack"]);
    let count = |ev: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with(ev))
            .count() as u64
    };
    assert_eq!(count("cpu-clock"), samples, "{text}");
    assert_eq!(count("guest-lbr"), snapshots, "{text}");
    let exported_entries = text
        .split_whitespace()
        .filter(|t| t.ends_with('/') && t.matches('/').count() >= 6)
        .count() as u64;
    assert_eq!(exported_entries, entries);
    let (_, stderr) = perf(&["report", "-i", out.to_str().unwrap(), "--stdio"]);
    assert!(
        !stderr.to_lowercase().contains("warning") && !stderr.contains("error"),
        "{stderr}"
    );
}

/// perf report -b's Samples column summed by (command, source symbol, target symbol).
fn perf_branch_counts(report: &str) -> std::collections::BTreeMap<(String, String, String), u64> {
    let mut counts = std::collections::BTreeMap::new();
    for line in report.lines().filter(|l| !l.starts_with('#')) {
        // overhead samples command dso [.] source [.] target cycles; levels [.] [k] [u] [g]
        let mut line = line.to_owned();
        for level in ["[k] ", "[u] ", "[g] "] {
            line = line.replace(level, "[.] ");
        }
        let parts: Vec<&str> = line.split("[.] ").collect();
        if parts.len() != 3 {
            continue;
        }
        let head: Vec<&str> = parts[0].split_whitespace().collect();
        let target = parts[2]
            .trim_end()
            .rsplit_once(char::is_whitespace)
            .unwrap()
            .0;
        let key = (
            head[2].to_owned(),
            parts[1].trim().to_owned(),
            target.trim().to_owned(),
        );
        *counts.entry(key).or_default() += head[1].parse::<u64>().unwrap();
    }
    counts
}

/// A Linux pipeline in the VM (`sh -c 'producer | consumer'`, two programs forked by
/// the shell): in the exported perf.data the guest is a guest machine (guest user
/// cpumode) in which each guest process is a process of its own, with the pid `lbrprof
/// info` names. perf report -b counts each program's hottest branch edges as `lbrprof
/// report` does, and perf2bolt (llvm-bolt -aggregate-only) makes the same BOLT profile
/// from the export as `lbrprof export --bolt`. The pprof export labels each guest
/// snapshot with its guest process's pid and comm, and the Firefox export has a track
/// per guest process and vCPU, with as many snapshots per process as perf counts.
#[test]
fn a_guest_pipeline_is_one_process_per_guest_process_in_a_guest_machine() {
    if !common::kvm_available()
        || !common::perf_available()
        || !perf_tool()
        || !common::go_available()
    {
        return;
    }
    let bolt_works = Command::new("llvm-bolt-16")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !bolt_works {
        eprintln!("skipped: needs llvm-bolt-16 (Debian bolt-16)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gcc = |name: &str, body: &str| {
        let src = tmp.path().join(format!("{name}.c"));
        std::fs::write(&src, body).unwrap();
        let exe = tmp.path().join(name);
        let ok = Command::new("gcc")
            .args(["-O2", "-g", "-o"])
            .arg(&exe)
            .arg(&src)
            .status()
            .expect("gcc")
            .success();
        assert!(ok, "gcc {name}");
        exe
    };
    let producer = gcc(
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
    let consumer = gcc(
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
    let data = tmp.path().join("pipe.data");
    let cmd = format!("{} | {}", producer.display(), consumer.display());
    let d = data.to_str().unwrap();
    common::ok(&[
        "record",
        "-o",
        d,
        "--vm",
        "--lbr-freq",
        "200",
        "--lbr-overhead",
        "0",
        "--",
        "/bin/sh",
        "-c",
        &cmd,
    ]);
    // The guest pids lbrprof names ("26097 sh → producer").
    let info = common::ok(&["info", d]);
    let guest_pid = |prog: &str| -> String {
        let line = info
            .lines()
            .find(|l| l.starts_with("guest procs:"))
            .unwrap();
        let at = line.find(&format!("sh → {prog}")).unwrap();
        line[..at].split_whitespace().last().unwrap().to_owned()
    };
    let (ppid, cpid) = (guest_pid("producer"), guest_pid("consumer"));
    assert_ne!(ppid, cpid);

    let out = tmp.path().join("pipe.perf.data");
    export(&data, &out);
    let o = out.to_str().unwrap();
    let (text, stderr) = perf(&["script", "-i", o, "-F", "comm,pid,event"]);
    assert!(stderr.trim().is_empty(), "perf script warned: {stderr}");
    let guest: std::collections::BTreeSet<(String, String)> = text
        .lines()
        .filter(|l| l.contains("guest-lbr"))
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t[0].to_owned(), t[1].to_owned())
        })
        .collect();
    for (prog, pid) in [("producer", &ppid), ("consumer", &cpid)] {
        assert!(
            guest.contains(&(prog.to_owned(), pid.clone())),
            "{prog} (guest pid {pid}) among {guest:?}"
        );
    }
    // perf's guest tooling sees the guest alone: `perf kvm --guest report` shows the
    // guest's processes and nothing of the host (vcpuN, lbrprof-vm threads).
    let (kvm, _) = perf(&[
        "kvm",
        "--guest",
        "report",
        "-i",
        o,
        "--stdio",
        "--no-branch-stack",
        "--sort",
        "comm",
        "-g",
        "none",
    ]);
    let comms: std::collections::BTreeSet<&str> = kvm
        .lines()
        .filter(|l| l.contains('%') && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert!(
        comms.contains("producer") && comms.contains("consumer"),
        "{kvm}"
    );
    assert!(
        comms
            .iter()
            .all(|c| ["sh", "producer", "consumer"].contains(c)),
        "{kvm}"
    );

    // Snapshots per guest process (pid), as perf counts them. (By pid: a snapshot taken
    // around an exec can be dated on the other side of it, where perf names the process
    // by its other command.)
    let perf_snapshots = |pid: &str| {
        text.lines()
            .filter(|l| l.contains("guest-lbr") && l.split_whitespace().nth(1) == Some(pid))
            .count() as u64
    };
    let (np, nc) = (perf_snapshots(&ppid), perf_snapshots(&cpid));
    assert!(np > 0 && nc > 0, "{text}");

    // pprof: the guest snapshots' comm and pid labels are the guest processes'.
    let pb = tmp.path().join("pipe.pb.gz");
    common::ok(&["export", "-i", d, "--pprof", "-o", pb.to_str().unwrap()]);
    let tags = go_pprof(&[
        "-tags",
        "-sample_index=samples",
        "-tagfocus=side=guest",
        pb.to_str().unwrap(),
    ]);
    let tag = |value: &str| -> u64 {
        let line = tags
            .lines()
            .find(|l| l.trim_end().ends_with(&format!(": {value}")))
            .unwrap_or_else(|| panic!("no tag {value} in\n{tags}"));
        line.split_whitespace()
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap() as u64
    };
    assert_eq!((tag(&ppid), tag(&cpid)), (np, nc), "{tags}");
    // Each program's snapshots are labelled with its command, all but those of its
    // process before its exec (a few at most).
    for (prog, n) in [("producer", np), ("consumer", nc)] {
        assert!(
            tag(prog) <= n && tag(prog) + 3 >= n,
            "{prog}: {n} snapshots\n{tags}"
        );
    }

    // Firefox: a track per guest process and vCPU.
    let json = tmp.path().join("pipe.json");
    let fx = export_firefox(&data, &json, &[]);
    check_processed_profile(&fx);
    check_profile_types(&fx);
    let track_samples = |pid: &str| -> u64 {
        fx["threads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                // A process's tracks: its program's, and its shell's before the exec.
                let name = t["name"].as_str().unwrap();
                name.starts_with("guest ") && name.contains(&format!(" [{pid}] vcpu"))
            })
            .map(|t| t["samples"]["length"].as_u64().unwrap())
            .sum()
    };
    for (prog, pid) in [("producer", &ppid), ("consumer", &cpid)] {
        let named = format!("guest {prog} [{pid}] vcpu");
        assert!(
            fx["threads"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"].as_str().unwrap().starts_with(&named)),
            "no track {named}*"
        );
    }
    assert_eq!((track_samples(&ppid), track_samples(&cpid)), (np, nc));

    // The top edges of each program, counted by function as perf report -b does.
    let report = common::json(&["report", "-i", d, "--format", "json", "--limit", "0"]);
    let mut ours = std::collections::BTreeMap::<(String, String), u64>::new();
    for b in report["branches"].as_array().unwrap() {
        let f = |e: &serde_json::Value| e["function"].as_str().unwrap_or("").to_owned();
        *ours.entry((f(&b["from"]), f(&b["to"]))).or_default() += b["count"].as_u64().unwrap();
    }
    let (perf_report, stderr) = perf(&["report", "-i", o, "-b", "--stdio", "-n"]);
    assert!(stderr.trim().is_empty(), "perf report warned: {stderr}");
    let theirs = perf_branch_counts(&perf_report);
    for (prog, f) in [
        ("producer", "produce_numbers"),
        ("consumer", "consume_number"),
    ] {
        let want = ours[&(f.to_owned(), f.to_owned())];
        assert!(want > 100, "{f}: {want} edges");
        let key = (prog.to_owned(), f.to_owned(), f.to_owned());
        assert_eq!(theirs.get(&key), Some(&want), "{key:?} in\n{perf_report}");
    }

    // For readers without guest machines: the guest as host processes, pids 10000000 +
    // the guest's, with the same edges.
    let host_style = tmp.path().join("pipe.host.perf.data");
    common::ok(&[
        "export",
        "-i",
        d,
        "--perf-data",
        "--guest-cpumode",
        "host",
        "-o",
        host_style.to_str().unwrap(),
    ]);
    let hs = host_style.to_str().unwrap();
    let (hs_report, stderr) = perf(&["report", "-i", hs, "-b", "--stdio", "-n"]);
    assert!(stderr.trim().is_empty(), "perf report warned: {stderr}");
    let hs_counts = perf_branch_counts(&hs_report);
    for (prog, f) in [
        ("producer", "produce_numbers"),
        ("consumer", "consume_number"),
    ] {
        let key = (prog.to_owned(), f.to_owned(), f.to_owned());
        assert_eq!(hs_counts.get(&key), theirs.get(&key), "{key:?}");
    }
    let (hs_text, _) = perf(&["script", "-i", hs, "-F", "comm,pid,event"]);
    let pseudo = (10_000_000 + ppid.parse::<u32>().unwrap()).to_string();
    assert!(
        hs_text.lines().any(|l| l.contains("guest-lbr")
            && l.split_whitespace().take(2).collect::<Vec<_>>() == ["producer", pseudo.as_str()]),
        "no producer {pseudo} among the guest-lbr samples"
    );

    // lbrprof reads the export back: its guest-lbr samples have the original's edges.
    let back = common::json(&[
        "report",
        "-i",
        o,
        "--event",
        "guest-lbr",
        "--format",
        "json",
        "--limit",
        "0",
    ]);
    let edges = |r: &serde_json::Value| -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = r["branches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let at =
                    |e: &serde_json::Value| format!("{}+{}", e["function"], e["function_offset"]);
                (at(&b["from"]), at(&b["to"]), b["count"].as_u64().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(edges(&back), edges(&report));

    // perf2bolt on the call-chain-less export = lbrprof's own BOLT profile.
    let nc = tmp.path().join("pipe.nc.perf.data");
    common::ok(&[
        "export",
        "-i",
        d,
        "--perf-data",
        "--no-callchains",
        "-o",
        nc.to_str().unwrap(),
    ]);
    let bolt = tmp.path().join("bolt.fdata");
    let o = Command::new("llvm-bolt-16")
        .arg(&producer)
        .arg("-p")
        .arg(&nc)
        .arg("-aggregate-only")
        .arg("-o")
        .arg(&bolt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lbr = tmp.path().join("lbrprof.fdata");
    common::ok(&[
        "export",
        "-i",
        d,
        "--bolt",
        "--dso",
        producer.to_str().unwrap(),
        "-o",
        lbr.to_str().unwrap(),
    ]);
    let sorted = |p: &Path| {
        let mut l: Vec<String> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    let want = sorted(&lbr);
    assert!(
        want.iter().any(|l| l.contains("produce_numbers")),
        "{want:?}"
    );
    assert_eq!(sorted(&bolt), want);
}

/// Bad input is a one-line error, and nothing is left behind or overwritten.
#[test]
fn bad_input_is_an_error_and_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.data");
    std::fs::write(&junk, b"not a recording at all").unwrap();
    let out = tmp.path().join("o.perf.data");
    std::fs::write(&out, b"keep me").unwrap();
    let o = common::run(&[
        "export",
        "-i",
        junk.to_str().unwrap(),
        "--perf-data",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    // A --perf-data option with another format.
    let o = common::run(&[
        "export",
        "-i",
        junk.to_str().unwrap(),
        "--pprof",
        "--guest-cpumode",
        "host",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("apply to --perf-data only"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    // A recording with nothing sampled.
    let empty = tmp.path().join("empty.data");
    let header = Header {
        writer: "test".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: HostInfo::default(),
        sampling: SamplingConfig::default(),
        target: Target::Pid { pid: 1 },
    };
    RecordingWriter::create(&empty, &header)
        .unwrap()
        .finish(&Summary::default())
        .unwrap();
    let o = common::run(&[
        "export",
        "-i",
        empty.to_str().unwrap(),
        "--perf-data",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nothing to export"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let left: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
}

/// perf2bolt (llvm-bolt's perf.data aggregator, which reads the file through
/// `perf script`) makes the same BOLT profile from the exported fixture as from the
/// original.
#[test]
fn perf2bolt_aggregates_an_export_as_it_does_the_original() {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return;
    };
    let bolt_works = Command::new("llvm-bolt-16")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !perf_tool() {
        return;
    }
    if !bolt_works {
        eprintln!("skipped: needs llvm-bolt-16 (Debian bolt-16)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let orig = dir.join("propeller_sample.perfdata");
    let ours = tmp.path().join("p.perf.data");
    export(&orig, &ours);
    let fdata = |p: &Path, name: &str| -> String {
        let out = tmp.path().join(name);
        let o = Command::new("llvm-bolt-16")
            .arg(dir.join("propeller_sample.bin"))
            .arg("-p")
            .arg(p)
            .arg("-aggregate-only")
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(&out).unwrap()
    };
    let want = fdata(&orig, "orig.fdata");
    assert!(want.lines().count() > 5, "{want}");
    assert_eq!(fdata(&ours, "ours.fdata"), want);
}

// ---------------------------------------------------------------------------------------
// export --firefox

fn export_firefox(input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "export",
        "-i",
        input.to_str().unwrap(),
        "--firefox",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = common::run(&args);
    assert!(
        o.status.success(),
        "export --firefox failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bytes = std::fs::read(out).unwrap();
    let text = if out.extension().is_some_and(|e| e == "gz") {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut s)
            .expect("gzip");
        s
    } else {
        String::from_utf8(bytes).unwrap()
    };
    serde_json::from_str(&text).expect("valid JSON")
}

/// The processed-profile structure the Firefox Profiler reads (src/types/profile.js of
/// firefox-devtools/profiler): the meta fields it requires, and per thread the sample,
/// stack, frame, func and marker tables as columns of one length whose indexes point
/// into the tables they name. Returns, per thread name, its samples' stacks as function
/// names (root first).
fn check_processed_profile(p: &serde_json::Value) -> Vec<(String, Vec<Vec<String>>)> {
    let meta = &p["meta"];
    for key in [
        "interval",
        "startTime",
        "version",
        "preprocessedProfileVersion",
    ] {
        assert!(meta[key].is_number(), "meta.{key} missing: {meta}");
    }
    assert!(meta["interval"].as_f64().unwrap() > 0.0);
    assert!(meta["product"].is_string());
    let categories = meta["categories"].as_array().expect("meta.categories");
    for c in categories {
        assert!(c["name"].is_string() && c["color"].is_string());
        assert!(!c["subcategories"].as_array().unwrap().is_empty());
    }
    assert!(meta["markerSchema"].is_array());
    assert!(p["libs"].is_array());
    let threads = p["threads"].as_array().expect("threads");
    let mut out = Vec::new();
    for t in threads {
        for key in ["name", "processName", "processType"] {
            assert!(t[key].is_string(), "thread.{key}: {t}");
        }
        assert!(t["pid"].is_string() || t["pid"].is_number());
        assert!(t["tid"].is_string() || t["tid"].is_number());
        let strings = t["stringArray"].as_array().expect("stringArray");
        let table = |name: &str, columns: &[&str]| -> usize {
            let tab = &t[name];
            let len = tab["length"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}.length")) as usize;
            for c in columns {
                let col = tab[*c]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}.{c} is not a column"));
                assert_eq!(col.len(), len, "{name}.{c}");
            }
            len
        };
        let n_samples = table("samples", &["stack", "weight"]);
        assert!(
            t["samples"]["time"].is_array() || t["samples"]["timeDeltas"].is_array(),
            "samples need time or timeDeltas"
        );
        let n_stacks = table("stackTable", &["prefix", "frame"]);
        let n_frames = table(
            "frameTable",
            &["func", "category", "subcategory", "address", "line"],
        );
        let n_funcs = table("funcTable", &["name", "resource", "isJS", "relevantForJS"]);
        table(
            "markers",
            &["name", "startTime", "endTime", "phase", "category", "data"],
        );
        let col = |tab: &str, c: &str, i: usize| t[tab][c][i].as_u64();
        let func_name = |f: usize| -> String {
            let s = col("funcTable", "name", f).unwrap() as usize;
            strings[s].as_str().unwrap().to_owned()
        };
        for i in 0..n_stacks {
            if let Some(prefix) = col("stackTable", "prefix", i) {
                assert!(
                    (prefix as usize) < i,
                    "stack {i}: prefix {prefix} is not older"
                );
            }
            assert!((col("stackTable", "frame", i).unwrap() as usize) < n_frames);
        }
        for i in 0..n_frames {
            assert!((col("frameTable", "func", i).unwrap() as usize) < n_funcs);
            assert!((col("frameTable", "category", i).unwrap() as usize) < categories.len());
        }
        for i in 0..n_funcs {
            assert!((col("funcTable", "name", i).unwrap() as usize) < strings.len());
        }
        let mut stacks = Vec::with_capacity(n_samples);
        for i in 0..n_samples {
            let mut frames = Vec::new();
            let mut s = col("samples", "stack", i).map(|s| s as usize);
            while let Some(si) = s {
                let frame = col("stackTable", "frame", si).unwrap() as usize;
                frames.push(func_name(col("frameTable", "func", frame).unwrap() as usize));
                s = col("stackTable", "prefix", si).map(|s| s as usize);
            }
            frames.reverse();
            stacks.push(frames);
        }
        out.push((t["name"].as_str().unwrap().to_owned(), stacks));
    }
    out
}

/// A guest recording in the Firefox Profiler: a track per host thread and per vCPU, the
/// guest snapshots as samples with their symbolized stacks and as markers.
#[test]
fn firefox_export_has_a_track_per_thread_and_vcpu() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("g.data");
    guest_recording(&data, &tmp.path().join("sort"));
    let p = export_firefox(&data, &tmp.path().join("g.json"), &[]);
    check_profile_types(&p);
    let threads = check_processed_profile(&p);
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for (vcpu, leaf) in [(0, "partition"), (1, "insertion_sort")] {
        let (_, stacks) = threads
            .iter()
            .find(|(n, _)| *n == format!("guest vcpu{vcpu}"))
            .unwrap_or_else(|| panic!("no track guest vcpu{vcpu}: {names:?}"));
        assert_eq!(stacks.len(), 10);
        for s in stacks {
            assert!(s.last().unwrap().contains(leaf), "vCPU {vcpu}: {s:?}");
        }
    }
    // The guest tracks carry one LBR snapshot marker per snapshot.
    let guest0 = p["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "guest vcpu0")
        .unwrap();
    assert_eq!(guest0["markers"]["length"], 10);
    assert_eq!(guest0["markers"]["data"][0]["branches"].as_f64(), Some(2.0));
    assert_eq!(guest0["markers"]["data"][0]["type"], "LbrSnapshot");
    // The shim's own sample is on its main thread's track.
    let host: usize = threads
        .iter()
        .filter(|(n, _)| !n.starts_with("guest"))
        .map(|(_, s)| s.len())
        .sum();
    assert_eq!(host, 1);
}

/// A perf.data fixture, gzip-compressed: per-thread sample counts and leaf functions
/// are those of lbrprof report.
/// Checks a processed profile against the profiler's own types for its version
/// (tests/fixtures-src/firefox/: the keys of each exact object type of
/// `src/types/profile.js`): every required key is there, and no other key.
fn check_profile_types(p: &serde_json::Value) {
    let keys: serde_json::Value = serde_json::from_str(include_str!(
        "fixtures-src/firefox/processed-profile-v55.keys.json"
    ))
    .unwrap();
    assert_eq!(
        p["meta"]["preprocessedProfileVersion"], 55,
        "regenerate tests/fixtures-src/firefox for this version (see its README)"
    );
    let check = |ty: &str, v: &serde_json::Value| {
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("{ty} is not an object"));
        let list = |k: &str| -> Vec<&str> {
            keys[ty][k]
                .as_array()
                .unwrap_or_else(|| panic!("no type {ty}"))
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect()
        };
        let (required, optional) = (list("required"), list("optional"));
        for k in &required {
            assert!(obj.contains_key(*k), "{ty} lacks {k}: {v}");
        }
        for k in obj.keys() {
            assert!(
                required.contains(&k.as_str()) || optional.contains(&k.as_str()),
                "{ty} has no key {k} in the profiler's types"
            );
        }
    };
    check("Profile", p);
    check("ProfileMeta", &p["meta"]);
    for c in p["meta"]["categories"].as_array().unwrap() {
        check("Category", c);
    }
    check("ExtensionTable", &p["meta"]["extensions"]);
    for l in p["libs"].as_array().unwrap() {
        check("Lib", l);
    }
    let threads = p["threads"].as_array().unwrap();
    assert!(!threads.is_empty());
    for t in threads {
        check("RawThread", t);
        for (field, ty) in [
            ("samples", "RawSamplesTable"),
            ("stackTable", "RawStackTable"),
            ("frameTable", "FrameTable"),
            ("funcTable", "FuncTable"),
            ("resourceTable", "ResourceTable"),
            ("nativeSymbols", "NativeSymbolTable"),
            ("markers", "RawMarkerTable"),
        ] {
            check(ty, &t[field]);
        }
    }
}

/// Compares `actual` with `tests/golden/NAME`; `LBRPROF_BLESS=1` rewrites the file.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("LBRPROF_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {} (run with LBRPROF_BLESS=1)",
            path.display()
        )
    });
    if expected != actual {
        let at = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the golden file at line {}:\n  expected: {:?}\n  actual:   {:?}\n(bless with LBRPROF_BLESS=1)",
            at + 1,
            expected.lines().nth(at),
            actual.lines().nth(at)
        );
    }
}

/// The Firefox export of a small guest recording (two vCPUs, 20 snapshots, one host
/// sample) is the golden file's, byte for byte once pretty-printed: tracks, tables,
/// categories, marker schema and markers.
#[test]
fn firefox_export_of_a_guest_recording_is_the_golden_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("g.data");
    guest_recording(&data, &tmp.path().join("sort"));
    let p = export_firefox(&data, &tmp.path().join("g.json"), &[]);
    check_processed_profile(&p);
    check_profile_types(&p);
    golden(
        "guest.firefox.json",
        &(serde_json::to_string_pretty(&p).unwrap() + "\n"),
    );
}

/// `profiler-cli ARGS` (the Firefox Profiler's command-line edition) with its sessions
/// under `home`; it must succeed.
fn profiler_cli(home: &Path, args: &[&str]) -> String {
    let run = || {
        Command::new("profiler-cli")
            .args(args)
            .env("HOME", home)
            .output()
            .unwrap()
    };
    let mut out = run();
    // Its daemon gets 500 ms to start; on a loaded machine it may need longer, and the
    // tool itself says retrying works (the daemon keeps starting meanwhile).
    for _ in 0..5 {
        let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !said.contains("did not become ready") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        out = run();
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "profiler-cli {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Stops the profiler-cli daemons of a test's sessions, however the test ends.
struct ProfilerSessions<'a>(&'a Path);

impl Drop for ProfilerSessions<'_> {
    fn drop(&mut self) {
        let _ = Command::new("profiler-cli")
            .args(["stop", "--all"])
            .env("HOME", self.0)
            .output();
    }
}

/// The Firefox Profiler's own loader (its command-line edition, npm
/// `@firefox-devtools/profiler-cli`, which upgrades and processes a profile as
/// profiler.firefox.com does) opens the export: one track per guest vCPU with its
/// snapshots as markers, and the functions the snapshots were taken in.
#[test]
fn firefox_export_opens_in_the_profilers_own_loader() {
    let works = Command::new("profiler-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!(
            "skipped: needs profiler-cli (npm install -g @firefox-devtools/profiler-cli@0.10.0)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("g.data");
    guest_recording(&data, &tmp.path().join("sort"));
    let json = tmp.path().join("g.json.gz");
    export_firefox(&data, &json, &[]);
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let _sessions = ProfilerSessions(&home);
    profiler_cli(&home, &["load", json.to_str().unwrap()]);
    let list = profiler_cli(&home, &["thread", "list"]);
    // HANDLE NAME... PROCESS PID CPU MARKERS
    let handle = |name: &str| -> (String, u64) {
        let row = list
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no track {name}:\n{list}"));
        let t: Vec<&str> = row
            .trim_start_matches(['*', ' '])
            .split_whitespace()
            .collect();
        (t[0].to_owned(), t.last().unwrap().parse().unwrap())
    };
    for (vcpu, function) in [(0, "partition"), (1, "insertion_sort")] {
        let (h, markers) = handle(&format!("guest vcpu{vcpu}"));
        assert_eq!(markers, 10, "{list}");
        profiler_cli(&home, &["thread", "select", &h]);
        let functions = profiler_cli(&home, &["thread", "functions"]);
        assert!(
            functions
                .lines()
                .any(|l| l.contains(function) && l.contains("self: 10 ")),
            "{functions}"
        );
    }
}

#[test]
fn firefox_export_of_a_perf_fixture_matches_the_report() {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = dir.join("propeller_sample.perfdata");
    let symfs = dir.to_str().unwrap();
    let p = export_firefox(&input, &tmp.path().join("p.json.gz"), &["--symfs", symfs]);
    check_profile_types(&p);
    let threads = check_processed_profile(&p);
    let report = common::json(&[
        "report",
        "-i",
        input.to_str().unwrap(),
        "--symfs",
        symfs,
        "--format",
        "json",
        "--limit",
        "0",
    ]);
    let total: usize = threads.iter().map(|(_, s)| s.len()).sum();
    assert_eq!(total as u64, report["meta"]["samples"].as_u64().unwrap());
    for f in report["functions"].as_array().unwrap() {
        let name = f["function"].as_str().unwrap();
        let leaves = threads
            .iter()
            .flat_map(|(_, s)| s)
            .filter(|s| s.last().is_some_and(|l| l == name))
            .count() as u64;
        assert_eq!(leaves, f["self_samples"].as_u64().unwrap(), "{name}");
    }
}

#[test]
fn firefox_export_of_nothing_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.data");
    let header = Header {
        writer: "test".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: HostInfo::default(),
        sampling: SamplingConfig::default(),
        target: Target::Pid { pid: 1 },
    };
    RecordingWriter::create(&empty, &header)
        .unwrap()
        .finish(&Summary::default())
        .unwrap();
    let out = tmp.path().join("e.json");
    let o = common::run(&[
        "export",
        "-i",
        empty.to_str().unwrap(),
        "--firefox",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to export"));
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------
// export --pprof: labels and inlined frames

fn go_pprof(args: &[&str]) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every sample is labelled with its process, thread and command (a guest snapshot with
/// its vCPU thread's), and code inlined into a function is a line of its own.
#[test]
fn pprof_export_labels_threads_and_keeps_inlined_frames() {
    if !common::go_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("g.data");
    guest_recording(&data, &tmp.path().join("sort"));
    let pb = tmp.path().join("g.pb.gz");
    let o = common::run(&[
        "export",
        "-i",
        data.to_str().unwrap(),
        "--pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pb = pb.to_str().unwrap();
    let tags = go_pprof(&["-tags", "-sample_index=samples", pb]);
    // "-tags" prints " KEY: Total N" then "  COUNT (PCT): VALUE" rows.
    let mut counts: Vec<(String, String, f64)> = Vec::new();
    let mut key = String::new();
    for line in tags.lines() {
        let t = line.trim();
        if let Some((k, _)) = t.split_once(": Total") {
            key = k.to_owned();
        } else if let Some((count, value)) = t.split_once("): ") {
            let n: f64 = count.split_whitespace().next().unwrap().parse().unwrap();
            counts.push((key.clone(), value.to_owned(), n));
        }
    }
    // 10 snapshots per vCPU, on that vCPU's thread; the shim's sample on its main thread.
    for (k, v, n) in [
        ("comm", "vcpu0", 10.0),
        ("comm", "vcpu1", 10.0),
        ("tid", "101", 10.0),
        ("tid", "102", 10.0),
        ("tid", "100", 1.0),
        ("pid", "100", 21.0),
        ("vcpu", "0", 10.0),
        ("vcpu", "1", 10.0),
    ] {
        assert!(
            counts.contains(&(k.to_owned(), v.to_owned(), n)),
            "no {k}={v} with {n} samples in {tags}"
        );
    }
    let vcpu1 = go_pprof(&[
        "-top",
        "-sample_index=samples",
        "-noinlines",
        "-tagfocus=comm=vcpu1",
        pb,
    ]);
    assert!(
        common::pprof_rows(&vcpu1)
            .iter()
            .any(|(n, f)| *n == 10 && f.contains("insertion_sort")),
        "{vcpu1}"
    );
    // The snapshot IPs sit in code inlined into partition and insertion_sort: with
    // inlined frames, pprof shows the inlined function as the leaf, and its caller as
    // the function it was inlined into.
    let raw = go_pprof(&["-raw", pb]);
    let inlined = raw
        .lines()
        .filter(|l| l.contains("partition") || l.contains("insertion_sort"))
        .count();
    assert!(inlined > 0, "{raw}");
    let top = go_pprof(&["-top", "-sample_index=samples", pb]);
    assert!(top.contains("(inline)"), "no inlined frame: {top}");
}

// ---------------------------------------------------------------------------------------
// export --perf-data → lbrprof report: the same report

/// The parts of a JSON report that must survive the trip through perf.data.
fn report_tables(input: &Path, symfs: Option<&str>) -> serde_json::Value {
    let mut args = vec![
        "report",
        "-i",
        input.to_str().unwrap(),
        "--format",
        "json",
        "--limit",
        "0",
    ];
    if let Some(dir) = symfs {
        args.extend_from_slice(&["--symfs", dir]);
    }
    let mut v = common::json(&args);
    let meta = v["meta"].take();
    serde_json::json!({
        "functions": v["functions"].take(),
        "branches": v["branches"].take(),
        "ranges": v["ranges"].take(),
        "samples": meta["samples"],
        "weight": meta["weight"],
        "branch_entries": meta["branch_entries"],
    })
}

/// `export --perf-data` reads its input in place, in stream order (perf.data records in
/// perf's order, a recording's chunks in file order); read as the owned event stream
/// (`LBRPROF_STREAM=1`) it writes the same file, byte for byte: the perf.data fixtures
/// and a recording with guest snapshots.
#[test]
fn perf_data_export_read_in_place_writes_the_streams_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let recording = tmp.path().join("guest.data");
    guest_recording(&recording, &tmp.path().join("sort"));
    let mut inputs = vec![recording];
    match common::perfdata_fixtures() {
        Some(dir) => inputs.extend(ROUND_TRIP.iter().map(|name| dir.join(name))),
        None => eprintln!("skipped (fixtures part): ../shared/fixtures/perfdata is not there"),
    }
    // (The same output path each time: perf.data's CMDLINE section names it.)
    let out = tmp.path().join("out.perf.data");
    let export = |input: &Path, stream: bool| {
        let mut cmd = common::lbrprof();
        cmd.args(["export", "--perf-data", "-o"])
            .arg(&out)
            .arg("-i")
            .arg(input)
            .env_remove("LBRPROF_STREAM");
        if stream {
            cmd.env("LBRPROF_STREAM", "1");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (std::fs::read(&out).unwrap(), o.stderr)
    };
    for input in &inputs {
        let (in_place, stream) = (export(input, false), export(input, true));
        assert!(in_place == stream, "{}", input.display());
    }
}

/// lbrprof reads back the perf.data it wrote as the report of the original: every
/// function, branch edge and fall-through range with the same counts.
#[test]
fn lbrprof_reports_an_exported_perf_data_as_the_original() {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let symfs = dir.to_str().unwrap();
    for name in ROUND_TRIP {
        let orig = dir.join(name);
        let ours = tmp.path().join(format!("{name}.out"));
        export(&orig, &ours);
        assert_eq!(
            report_tables(&ours, Some(symfs)),
            report_tables(&orig, Some(symfs)),
            "{name}"
        );
    }
}

/// A host-only lbrprof recording round trips: its exported perf.data gives the same
/// report, with the program's functions named.
#[test]
fn a_host_recording_round_trips_through_perf_data() {
    if !common::perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = common::build_workload(tmp.path(), "hot");
    let data = tmp.path().join("hot.data");
    let out = common::lbrprof()
        .args(["record", "-F", "999", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .args(["100000000", "0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = tmp.path().join("hot.perf.data");
    export(&data, &exported);
    let want = report_tables(&data, None);
    assert_eq!(report_tables(&exported, None), want);
    let functions = want["functions"].as_array().unwrap();
    assert!(
        functions.iter().any(|f| f["function"] == "hot_loop"),
        "{functions:?}"
    );
}

/// Branch-stack entries ride along as a third value (`branches`): their total is the
/// report's branch entries, each edge labelled with its kind, and the sample values are
/// untouched by them.
#[test]
fn pprof_export_carries_branch_edges_as_their_own_value() {
    if !common::go_available() {
        return;
    }
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return;
    };
    let data = dir.join("propeller_sample.perfdata");
    let (d, p) = (dir.to_str().unwrap(), data.to_str().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let pb = tmp.path().join("b.pb.gz");
    let o = common::run(&[
        "export",
        "-i",
        p,
        "--symfs",
        d,
        "--pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pb = pb.to_str().unwrap();
    let report = common::json(&[
        "report", "-i", p, "--symfs", d, "--format", "json", "--limit", "0",
    ]);
    let entries = report["meta"]["branch_entries"].as_u64().unwrap();
    let calls: u64 = report["branches"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "Call")
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert!(calls > 0);
    // "Showing nodes accounting for N, P% of T total".
    let shown = |out: &str| -> (u64, u64) {
        let line = out
            .lines()
            .find(|l| l.starts_with("Showing nodes accounting for"))
            .unwrap_or_else(|| panic!("{out}"));
        let n = |s: &str| s.trim_end_matches(',').parse::<u64>().unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        (n(words[4]), n(words[words.len() - 2]))
    };
    let all = go_pprof(&["-top", "-sample_index=branches", "-nodefraction=0", pb]);
    assert_eq!(shown(&all), (entries, entries), "{all}");
    let call = go_pprof(&[
        "-top",
        "-sample_index=branches",
        "-tagfocus=branch=call",
        pb,
    ]);
    assert_eq!(shown(&call).0, calls, "{call}");
    let samples = go_pprof(&["-top", "-sample_index=samples", "-nodefraction=0", pb]);
    assert_eq!(
        shown(&samples).1,
        report["meta"]["samples"].as_u64().unwrap()
    );
}
