//! The chunk path of lbrprof.data reports (data/src/source.rs: mapped chunks checked,
//! decoded and folded in parallel) gives byte for byte what the event stream gives
//! (`LBRPROF_STREAM=1`): reports in every format, flame graphs and BOLT profiles, on a
//! real recording and on synthetic ones, whole, truncated and damaged. So does the
//! mapped walk of perf.data in perf's order (timelines, `--dso` on branch stacks) on the
//! real perf.data fixtures.

mod common;

use std::path::{Path, PathBuf};

use lbrprof_data::model::*;
use lbrprof_data::recording::{RecordingWriter, Summary, chunk_offsets};

/// Stdout, stderr and exit code of `lbrprof ARGS`, and the bytes of the file it writes
/// (`-o OUT` in `args` is replaced by a path per run), by either path.
fn outcome(args: &[&str], stream: bool, dir: &Path) -> (String, String, Option<i32>, Vec<u8>) {
    let out_file = dir.join("out.file");
    let _ = std::fs::remove_file(&out_file);
    let mut cmd = common::lbrprof();
    for a in args {
        if *a == "OUT" {
            cmd.arg(&out_file);
        } else {
            cmd.arg(a);
        }
    }
    if stream {
        cmd.env("LBRPROF_STREAM", "1");
    } else {
        cmd.env_remove("LBRPROF_STREAM");
    }
    let out = cmd.output().expect("lbrprof runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
        std::fs::read(&out_file).unwrap_or_default(),
    )
}

/// Every output of `data`, by both paths; returns the text report's outcome.
fn assert_same_outputs(data: &Path, dir: &Path) -> (String, String, Option<i32>) {
    let input = data.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["report", "-i", input],
        vec!["report", "-i", input, "--format", "json", "--limit", "0"],
        vec!["report", "-i", input, "--format", "folded", "--comm-root"],
        vec![
            "report", "-i", input, "--format", "markdown", "--sort", "total",
        ],
        vec!["flamegraph", "-i", input, "-o", "OUT"],
        vec!["flamegraph", "-i", input, "--branches", "-o", "OUT"],
        vec!["export", "--bolt", "-i", input, "-o", "OUT"],
        // --pid/--tid are applied while folding; --comm/--dso read the stream.
        vec!["report", "-i", input, "--pid", "1001", "--format", "json"],
        vec!["report", "-i", input, "--tid", "1000,1002", "--no-symbols"],
        vec!["report", "-i", input, "--comm", "after", "--no-symbols"],
    ];
    let mut first = None;
    for args in commands {
        let fast = outcome(&args, false, dir);
        let stream = outcome(&args, true, dir);
        assert_eq!(fast.2, stream.2, "{args:?}: exit codes differ: {}", fast.1);
        assert_eq!(fast.1, stream.1, "{args:?}: stderr differs");
        assert!(fast.0 == stream.0, "{args:?}: stdout differs");
        assert!(fast.3 == stream.3, "{args:?}: written file differs");
        first.get_or_insert((fast.0, fast.1, fast.2));
    }
    first.unwrap()
}

#[test]
fn a_real_recording_reads_the_same_by_both_paths() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "forking");
    let data = dir.path().join("forking.data");
    let out = common::lbrprof()
        .args(["record", "-F", "2000", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .args(["3", "60000000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (text, _, code) = assert_same_outputs(&data, dir.path());
    assert_eq!(code, Some(0));
    assert!(text.contains("child_work"), "{text}");
}

/// A recording written through the real writer whose side-band state changes between
/// chunks of samples: a module mapped late, a renamed thread, a forked process.
fn synthetic(dir: &Path) -> PathBuf {
    let path = dir.join("synthetic.data");
    let exe = std::env::current_exe().unwrap();
    let header = Header {
        writer: "test".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: HostInfo {
            lbr_depth: 32,
            ..HostInfo::default()
        },
        sampling: SamplingConfig {
            event: "cycles".into(),
            period: 1000,
            branch_stacks: true,
            // LBR call stacks: `flamegraph --branches` has stacks to draw.
            call_graph: "lbr".into(),
            ..SamplingConfig::default()
        },
        target: Target::Command {
            argv: vec![exe.display().to_string()],
        },
    };
    let w = RecordingWriter::create(&path, &header).unwrap();
    let sink = w.sink();
    let base = 0x5555_0000_0000u64;
    let map = |pid: u32, start: u64| {
        Event::Mapping(Mapping {
            time_ns: 0,
            space: AddressSpace::HostUser,
            pid,
            start,
            len: 0x20_0000,
            pgoff: 0,
            path: exe.display().to_string(),
            build_id: None,
        })
    };
    let comm = |tid: u32, name: &str| {
        Event::Task(TaskEvent::Comm {
            time_ns: 0,
            pid: 1000,
            tid,
            comm: name.into(),
        })
    };
    let sample = |i: u64| {
        let k = i % 41;
        let pid = if k.is_multiple_of(2) { 1000 } else { 1001 };
        let at = |x: u64| base + (x * 0x1234) % 0x40_0000;
        Event::Sample(HostSample {
            time_ns: i,
            pid,
            tid: pid + (k % 3) as u32,
            period: 1000,
            ip: at(k),
            mode: CpuMode::User,
            callchain: (0..1 + k % 6)
                .map(|j| Frame {
                    addr: at(k + j * 7),
                    mode: CpuMode::User,
                })
                .collect(),
            branches: (0..32)
                .map(|j| Branch {
                    from: at(k + j) + 0x30,
                    to: at(k + j + 1),
                    flags: BranchFlags {
                        mispred: j % 4 == 0,
                        cycles: (j * 3) as u16,
                        kind: BranchKind::Cond,
                        ..BranchFlags::default()
                    },
                })
                .collect(),
            ..HostSample::default()
        })
    };
    let mut events = vec![map(1000, base), comm(1000, "before")];
    events.extend((0..1500).map(sample));
    events.push(comm(1000, "after"));
    events.push(Event::Task(TaskEvent::Fork {
        time_ns: 0,
        pid: 1001,
        tid: 1001,
        ppid: 1000,
        ptid: 1000,
    }));
    events.extend((1500..3000).map(sample));
    events.push(map(1001, base + 0x20_0000));
    events.extend((3000..4500).map(sample));
    for e in events {
        sink.send(e);
    }
    w.finish(&Summary {
        samples: 4500,
        ..Summary::default()
    })
    .unwrap();
    path
}

#[test]
fn synthetic_recordings_read_the_same_by_both_paths_whole_truncated_and_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = synthetic(dir.path());
    let (text, _err0, code) = assert_same_outputs(&path, dir.path());
    assert_eq!(code, Some(0));
    assert!(
        text.contains("samples:  4500"),
        "stdout: {text}\nstderr: {_err0}"
    );

    let bytes = std::fs::read(&path).unwrap();
    let offsets = chunk_offsets(&bytes);
    assert!(offsets.len() >= 6, "want several epochs");
    let cut = dir.path().join("cut.data");
    let mid = (offsets[4] + offsets[5]) / 2;
    std::fs::write(&cut, &bytes[..mid]).unwrap();
    let (text, _, code) = assert_same_outputs(&cut, dir.path());
    assert_eq!(code, Some(0));
    assert!(
        text.contains(&format!(
            "is truncated: the chunk at byte offset {}",
            offsets[4]
        )),
        "{text}"
    );

    let bad = dir.path().join("bad.data");
    let mut damaged = bytes.clone();
    damaged[(offsets[4] + offsets[5]) / 2] ^= 0x08;
    std::fs::write(&bad, &damaged).unwrap();
    let (_, err, code) = assert_same_outputs(&bad, dir.path());
    assert_eq!(code, Some(2));
    assert!(err.contains(&format!("offset {}", offsets[4])), "{err}");

    // One bad byte in the summary (the last chunk) costs the summary only: every sample
    // is reported, by both paths alike, with a warning naming the chunk.
    let last = *offsets.last().unwrap();
    let mut damaged = bytes.clone();
    damaged[(last + bytes.len()) / 2] ^= 0x08;
    std::fs::write(&bad, &damaged).unwrap();
    let (text, err, code) = assert_same_outputs(&bad, dir.path());
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("samples:  4500"), "{text}");
    assert!(
        text.contains(&format!(
            "the summary chunk at byte offset {last} is damaged"
        )),
        "{text}"
    );
}

/// The outputs that need every sample in perf's order (the Firefox export's timelines,
/// `--dso` on branch stacks, `--time` windows besides), by the mapped walk and by the
/// event stream, on every perf.data fixture.
#[test]
fn perf_data_walked_in_order_reads_the_same_as_its_event_stream() {
    let Some(fixtures) = common::perfdata_fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut kept = 0;
    for name in [
        "perf.data.branch-4.14",
        "perf.data.branch_stack_hw_index",
        "perf.data.callgraph_and_branch-3.8",
        "propeller_sample.perfdata",
        "sleep.data",
    ] {
        let path = fixtures.join(name);
        let input = path.to_str().unwrap();
        let commands: Vec<Vec<&str>> = vec![
            vec!["export", "--firefox", "-i", input, "-o", "OUT"],
            vec![
                "export",
                "--firefox",
                "-i",
                input,
                "--time",
                "50%",
                "-o",
                "OUT",
            ],
            vec!["report", "-i", input, "--dso", "[kernel.kallsyms]"],
            vec![
                "report",
                "-i",
                input,
                "--dso",
                "propeller_sample.bin,libc.so.6",
            ],
            vec![
                "report",
                "-i",
                input,
                "--dso",
                "[kernel.kallsyms]",
                "--format",
                "json",
            ],
            vec![
                "flamegraph",
                "-i",
                input,
                "--dso",
                "[kernel.kallsyms]",
                "-o",
                "OUT",
            ],
            vec!["report", "-i", input, "--time", "10%/2", "--format", "json"],
        ];
        for args in commands {
            let fast = outcome(&args, false, dir.path());
            let stream = outcome(&args, true, dir.path());
            assert_eq!(fast.2, stream.2, "{args:?}: exit codes differ: {}", fast.1);
            assert_eq!(fast.1, stream.1, "{args:?}: stderr differs");
            assert!(fast.0 == stream.0, "{args:?}: stdout differs");
            assert!(fast.3 == stream.3, "{args:?}: written file differs");
            kept += usize::from(fast.2 == Some(0));
        }
    }
    assert!(kept > 10, "only {kept} commands gave output");
}
