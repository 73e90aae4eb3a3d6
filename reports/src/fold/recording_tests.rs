//! The one folder on lbrprof.data: mapped ([`RecordingSource`], chunks checked, decoded
//! and folded on every core) and as an event stream ([`EventSource`]), each checked against
//! what the aggregator builds from every event: profile, warnings, summary and errors, on
//! whole, truncated and damaged recordings.

use super::perfdata_tests::summary;
use super::*;
use lbrprof_data::input::open_any;
use lbrprof_data::model::*;
use lbrprof_data::recording::chunk_offsets;
use lbrprof_data::recording::{RecordingWriter, Summary};
use lbrprof_data::source::{EventSource, MappedSource, mapped_source};
use std::path::{Path, PathBuf};

fn header() -> Header {
    Header {
        writer: "test".into(),
        start_unix: 1,
        start_monotonic_ns: 2,
        host: HostInfo::default(),
        sampling: SamplingConfig {
            event: "cycles".into(),
            period: 1000,
            ..SamplingConfig::default()
        },
        target: Target::Command {
            argv: vec!["w".into()],
        },
    }
}

fn mapping(pid: u32, start: u64, path: &str) -> Event {
    Event::Mapping(Mapping {
        time_ns: 0,
        space: AddressSpace::HostUser,
        pid,
        start,
        len: 0x10000,
        pgoff: 0x1000,
        path: path.into(),
        build_id: None,
    })
}

fn comm(tid: u32, name: &str) -> Event {
    Event::Task(TaskEvent::Comm {
        time_ns: 0,
        pid: 1,
        tid,
        comm: name.into(),
    })
}

/// A sample drawn from a small pool (so raw stacks repeat), with addresses in
/// 0x400000.. (mapped first) and 0x500000.. (mapped only later), kernel frames and
/// a 32-entry branch stack of mixed kinds and flags.
fn sample(i: u64) -> Event {
    let k = i % 37;
    let base = if k.is_multiple_of(3) {
        0x50_0000
    } else {
        0x40_0000
    };
    let mode = if k.is_multiple_of(11) {
        CpuMode::Kernel
    } else {
        CpuMode::User
    };
    let ip = if mode == CpuMode::Kernel {
        0xffff_ffff_8100_0000 + k * 16
    } else {
        base + k * 16
    };
    let mut callchain = vec![Frame { addr: ip, mode }];
    callchain.extend((0..k % 5).map(|j| Frame {
        addr: 0x40_0000 + j * 0x100 + k,
        mode: CpuMode::User,
    }));
    let kinds = [
        BranchKind::Cond,
        BranchKind::Call,
        BranchKind::Ret,
        BranchKind::Unknown,
    ];
    let branches = (0..(if k.is_multiple_of(7) { 0 } else { 32 }))
        .map(|j: u64| Branch {
            from: base + ((k + j) % 13) * 0x40 + 0x30,
            to: base + ((k + j + 1) % 13) * 0x40,
            flags: BranchFlags {
                mispred: j.is_multiple_of(5),
                predicted: !j.is_multiple_of(5),
                in_tx: j == 3,
                abort: j == 4,
                cycles: (j * 7 % 300) as u16,
                kind: kinds[((k + j) % 4) as usize],
            },
        })
        .collect();
    Event::Sample(HostSample {
        event: 0,
        time_ns: 1_000 + i,
        pid: 1 + (k % 2) as u32,
        tid: 1 + (k % 4) as u32,
        cpu: (k % 2) as u32,
        period: 1000 + k,
        ip,
        mode,
        callchain,
        branches,
        branch_hw_index: k.is_multiple_of(2).then_some(k),
    })
}

/// Samples enough to pass the writer's chunk size, so the events sent next land in
/// later chunks (a later epoch).
fn burst(from: u64) -> Vec<Event> {
    (from..from + 1500).map(sample).collect()
}

/// A recording whose side-band state changes between bursts of samples: a module
/// mapped late, a renamed thread, a fork, losses.
fn recording(dir: &Path) -> PathBuf {
    let path = dir.join("r.data");
    let w = RecordingWriter::create(&path, &header()).unwrap();
    let sink = w.sink();
    let mut events = vec![mapping(1, 0x40_0000, "/bin/a"), comm(1, "first")];
    events.extend(burst(0));
    events.push(mapping(1, 0x50_0000, "/lib/late.so"));
    events.push(comm(1, "second"));
    events.push(Event::Loss(Loss {
        time_ns: 5,
        kind: LossKind::RingBuffer,
        count: 3,
        tid: None,
    }));
    events.extend(burst(1500));
    events.push(Event::Task(TaskEvent::Fork {
        time_ns: 6,
        pid: 2,
        tid: 2,
        ppid: 1,
        ptid: 1,
    }));
    events.extend(burst(3000));
    for e in events {
        sink.send(e);
    }
    w.finish(&Summary {
        samples: 4500,
        lost: 7,
        notes: vec!["n".into()],
        ..Summary::default()
    })
    .unwrap();
    path
}

type Outcome = Result<(String, Vec<String>, String), String>;

/// Where two outcomes first differ (a profile is too long to print whole).
fn first_difference(a: &Outcome, b: &Outcome) -> String {
    let text = |o: &Outcome| match o {
        Ok((p, w, s)) => format!("{p}\nwarnings {w:?}\nsummary {s}"),
        Err(e) => format!("error {e}"),
    };
    let (a, b) = (text(a), text(b));
    a.lines()
        .zip(b.lines())
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("stream: {x}\n  fast: {y}"))
        .unwrap_or_else(|| "one is a prefix of the other".into())
}

/// The stream's profile, warnings and summary, or its error.
fn stream(path: &Path, opts: &AggregateOptions) -> Outcome {
    stream_through(path, opts, false)
}

/// The owned-event source through the folder, as [`stream`].
fn folded_stream(path: &Path, opts: &AggregateOptions) -> Outcome {
    stream_through(path, opts, true)
}

/// [`stream`], through the folder or every event through the aggregator.
fn stream_through(path: &Path, opts: &AggregateOptions, folded: bool) -> Outcome {
    let mut input = open_any(path).map_err(|e| e.to_string())?;
    let p = if folded {
        fold_source(&mut EventSource::new(input.by_ref()), opts).map_err(|e| e.to_string())?
    } else {
        let (p, err) = crate::aggregate_events(input.by_ref(), opts.clone());
        if let Some(e) = err {
            return Err(e.to_string());
        }
        p
    };
    Ok((
        summary(&p),
        input.warnings(),
        format!("{:?}", input.summary()),
    ))
}

/// The fast path's, as [`stream`].
fn fast(path: &Path, opts: &AggregateOptions) -> Outcome {
    let mut input = open_any(path).map_err(|e| e.to_string())?;
    assert!(supports(opts, input.may_have_branch_stacks()));
    let Some(MappedSource::Recording(mut source)) = mapped_source(&mut input) else {
        panic!("the fast path handles this recording");
    };
    let p = fold_source(&mut source, opts).map_err(|e| e.to_string())?;
    assert_eq!(input.by_ref().count(), 0, "the stream is consumed");
    Ok((
        summary(&p),
        input.warnings(),
        format!("{:?}", input.summary()),
    ))
}

fn option_sets() -> Vec<AggregateOptions> {
    vec![
        AggregateOptions::default(),
        AggregateOptions {
            lbr_call_stack: true,
            ..AggregateOptions::default()
        },
        AggregateOptions {
            comm_root: true,
            snapshot_weight: 7,
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: crate::Filter {
                pids: vec![2],
                ..crate::Filter::default()
            },
            lbr_call_stack: true,
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: crate::Filter {
                pids: vec![1, 2],
                tids: vec![1, 3],
                ..crate::Filter::default()
            },
            comm_root: true,
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: crate::Filter {
                pids: vec![1],
                times: vec![(1_500, 3_000), (4_000, 4_200)],
                ..crate::Filter::default()
            },
            lbr_call_stack: true,
            ..AggregateOptions::default()
        },
        // Runs that start inside bursts (the samples' times are 1000..5500).
        AggregateOptions {
            run_starts: vec![1_200, 2_600, 4_100],
            lbr_call_stack: true,
            ..AggregateOptions::default()
        },
        // Thread 1 is renamed between the first and the second burst.
        AggregateOptions {
            filter: crate::Filter {
                comms: vec!["first".into()],
                ..crate::Filter::default()
            },
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: crate::Filter {
                comms: vec!["second".into()],
                ..crate::Filter::default()
            },
            lbr_call_stack: true,
            comm_root: true,
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: crate::Filter {
                pids: vec![1],
                comms: vec!["second".into(), "first".into()],
                ..crate::Filter::default()
            },
            lbr_call_stack: true,
            run_starts: vec![0, 3_000],
            ..AggregateOptions::default()
        },
    ]
}

#[test]
fn fast_path_builds_the_profile_the_event_stream_builds() {
    let dir = tempfile::tempdir().unwrap();
    let path = recording(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    assert!(chunk_offsets(&bytes).len() >= 8, "want several epochs");
    for opts in option_sets() {
        let slow = stream(&path, &opts);
        let quick = fast(&path, &opts);
        assert!(
            slow == quick,
            "{opts:?}: {}",
            first_difference(&slow, &quick)
        );
        assert!(slow.unwrap().0.contains("late.so"));
    }
}

#[test]
fn folded_event_stream_builds_the_profile_the_aggregator_builds() {
    let dir = tempfile::tempdir().unwrap();
    let path = recording(dir.path());
    for opts in option_sets() {
        assert!(supports(&opts, true));
        let slow = stream(&path, &opts);
        let folded = folded_stream(&path, &opts);
        assert!(
            slow == folded,
            "{opts:?}: {}",
            first_difference(&slow, &folded)
        );
    }
    // A damaged chunk: the same error.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = chunk_offsets(&bytes)[4] + 20;
    bytes[at] ^= 1;
    let bad = dir.path().join("bad.data");
    std::fs::write(&bad, &bytes).unwrap();
    let opts = AggregateOptions::default();
    let err = folded_stream(&bad, &opts).unwrap_err();
    assert_eq!(Err(err), stream(&bad, &opts));
}

#[test]
fn truncated_recordings_read_as_far_as_the_event_stream() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(recording(dir.path())).unwrap();
    let offsets = chunk_offsets(&bytes);
    let cut_path = dir.path().join("cut.data");
    let mut cuts = vec![bytes.len()];
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(bytes.len());
        cuts.extend([start, start + 3, start + 9, (start + end) / 2, end - 1]);
    }
    for cut in cuts {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let opts = AggregateOptions::default();
        let slow = stream(&cut_path, &opts);
        let quick = fast(&cut_path, &opts);
        assert!(
            slow == quick,
            "cut at {cut}: {}",
            first_difference(&slow, &quick)
        );
    }
}

#[test]
fn damaged_chunks_give_the_event_streams_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(recording(dir.path())).unwrap();
    let offsets = chunk_offsets(&bytes);
    let bad = dir.path().join("bad.data");
    let mut checked = 0;
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(bytes.len());
        for pos in [
            start + 1,
            start + 3,
            start + 5,
            start + 8,
            start + 9,
            end - 1,
        ] {
            let mut damaged = bytes.clone();
            damaged[pos] ^= 0x40;
            std::fs::write(&bad, &damaged).unwrap();
            let opts = AggregateOptions::default();
            let slow = stream(&bad, &opts);
            let quick = fast(&bad, &opts);
            assert!(
                slow == quick,
                "flip at {pos}: {}",
                first_difference(&slow, &quick)
            );
            checked += usize::from(slow.is_err());
        }
    }
    assert!(checked > offsets.len() * 3, "flips must mostly be errors");
    // Two damaged chunks: the first in file order is the error.
    let mut damaged = bytes.clone();
    damaged[offsets[2] + 20] ^= 1;
    damaged[offsets[5] + 20] ^= 1;
    std::fs::write(&bad, &damaged).unwrap();
    let err = fast(&bad, &AggregateOptions::default()).unwrap_err();
    assert!(err.contains(&format!("offset {}", offsets[2])), "{err}");
    assert_eq!(Err(err), stream(&bad, &AggregateOptions::default()));
}

/// A payload postcard cannot decode but with a valid checksum: the hand-written
/// decoder gives up and postcard's error, naming the chunk, is the stream's.
#[test]
fn undecodable_payloads_give_the_event_streams_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(recording(dir.path())).unwrap();
    let offsets = chunk_offsets(&bytes);
    let bad = dir.path().join("bad.data");
    let mut errors = 0;
    for &start in &offsets {
        let len = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
        for at in [0, 1, len / 2, len - 1] {
            let mut damaged = bytes.clone();
            let p = start + 9 + at;
            damaged[p] = 0xff;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&damaged[start..start + 4]);
            crc.update(&damaged[start + 8..start + 9 + len]);
            damaged[start + 4..start + 8].copy_from_slice(&crc.finalize().to_le_bytes());
            std::fs::write(&bad, &damaged).unwrap();
            let opts = AggregateOptions::default();
            let slow = stream(&bad, &opts);
            let quick = fast(&bad, &opts);
            assert!(
                slow == quick,
                "0xff at {p}: {}",
                first_difference(&slow, &quick)
            );
            errors += usize::from(slow.is_err());
        }
    }
    assert!(errors > 0);
}

#[test]
fn unknown_chunk_kinds_are_skipped_as_the_stream_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(recording(dir.path())).unwrap();
    let offsets = chunk_offsets(&bytes);
    for (at, kind) in [(offsets[3], 42u8), (offsets[1], 200)] {
        let payload = b"future";
        let len = payload.len() as u32;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&[kind]);
        crc.update(payload);
        let mut extra = len.to_le_bytes().to_vec();
        extra.extend_from_slice(&crc.finalize().to_le_bytes());
        extra.push(kind);
        extra.extend_from_slice(payload);
        bytes.splice(at..at, extra);
    }
    let path = dir.path().join("future.data");
    std::fs::write(&path, &bytes).unwrap();
    for opts in option_sets() {
        let slow = stream(&path, &opts);
        assert_eq!(
            slow.as_ref().unwrap().1.len(),
            2,
            "{:?}",
            slow.as_ref().unwrap().1
        );
        let quick = fast(&path, &opts);
        assert!(slow == quick, "{}", first_difference(&slow, &quick));
    }
}

/// The options the folder leaves to the aggregator (every sample on its own, in
/// stream order).
fn in_order_option_sets() -> Vec<AggregateOptions> {
    vec![
        AggregateOptions {
            vm: true,
            ..AggregateOptions::default()
        },
        AggregateOptions {
            timeline: true,
            ..AggregateOptions::default()
        },
        // Its verdict depends on each sample's IP.
        AggregateOptions {
            filter: crate::Filter {
                dsos: vec!["late.so".into()],
                ..crate::Filter::default()
            },
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: crate::Filter {
                dsos: vec!["/bin/a".into()],
                comms: vec!["second".into()],
                ..crate::Filter::default()
            },
            timeline: true,
            lbr_call_stack: true,
            tasks: true,
            ..AggregateOptions::default()
        },
    ]
}

#[test]
fn timelines_vm_recordings_and_dso_filters_on_branches_are_left_to_the_in_order_walk() {
    // Timelines and pairing keep every sample, in stream order; raw keys merge samples.
    for opts in in_order_option_sets() {
        assert!(!supports(&opts, true), "{opts:?}");
    }
    // `--comm` and per-run tables are the folder's; `--dso` without branch stacks.
    for opts in option_sets() {
        assert!(supports(&opts, true), "{opts:?}");
    }
    let dso = AggregateOptions {
        filter: crate::Filter {
            dsos: vec!["late.so".into()],
            ..crate::Filter::default()
        },
        ..AggregateOptions::default()
    };
    assert!(supports(&dso, false));
}

/// What a walk in stream order builds: the profile's tables, its timeline and its
/// `record --vm` trace, with the input's warnings and summary.
fn in_order(path: &Path, opts: &AggregateOptions, mapped: bool) -> Outcome {
    let mut input = open_any(path).map_err(|e| e.to_string())?;
    let p = if mapped {
        let Some(MappedSource::Recording(mut source)) = mapped_source(&mut input) else {
            panic!("a recording is mapped");
        };
        let p = crate::aggregate::aggregate_in_order(&mut source, opts.clone())
            .map_err(|e| e.to_string())?;
        assert_eq!(input.by_ref().count(), 0, "the stream is consumed");
        p
    } else {
        let (p, err) = crate::aggregate_events(input.by_ref(), opts.clone());
        if let Some(e) = err {
            return Err(e.to_string());
        }
        p
    };
    Ok((
        format!("{}\ntimeline {:?}\nvm {:?}", summary(&p), p.timeline, p.vm),
        input.warnings(),
        format!("{:?}", input.summary()),
    ))
}

#[test]
fn a_mapped_recording_walked_in_order_gives_the_event_streams_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = recording(dir.path());
    for opts in in_order_option_sets() {
        let slow = in_order(&path, &opts, false);
        let quick = in_order(&path, &opts, true);
        assert!(
            slow == quick,
            "{opts:?}: {}",
            first_difference(&slow, &quick)
        );
        let text = &slow.unwrap().0;
        // Every sample on its own, in order: not an empty walk.
        if opts.timeline {
            assert!(text.contains("TimedSample"), "{opts:?}");
        }
        if opts.vm {
            assert!(text.contains("VmSample"), "{opts:?}");
        }
    }
    // Cut and damaged recordings: the stream's error, or as far as the stream reads.
    let bytes = std::fs::read(&path).unwrap();
    let offsets = chunk_offsets(&bytes);
    let bad = dir.path().join("bad.data");
    let opts = &in_order_option_sets()[1];
    let mut errors = 0;
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(bytes.len());
        let mut damaged = bytes.clone();
        damaged[(start + end) / 2] ^= 0x40;
        for (file, is_damaged) in [(&bytes[..(start + end) / 2], false), (&damaged[..], true)] {
            std::fs::write(&bad, file).unwrap();
            let slow = in_order(&bad, opts, false);
            let quick = in_order(&bad, opts, true);
            assert!(
                slow == quick,
                "chunk {i}: {}",
                first_difference(&slow, &quick)
            );
            errors += usize::from(is_damaged && slow.is_err());
        }
    }
    assert!(errors * 2 > offsets.len(), "damage must mostly be errors");
}
