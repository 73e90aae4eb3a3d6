//! The one folder on perf.data: mapped ([`PerfSource`], chunks folded while the walk goes
//! on, stack copies unwound per sample) and as an event stream ([`EventSource`]), and the
//! mapped walk in perf's order ([`SampleSource::walk_in_order`]), each checked against
//! the profile the aggregator builds from every event of the stream.

use super::*;
use crate::aggregate::Filter;
use lbrprof_data::input::{Input, open_any};
use lbrprof_data::perfdata::PerfDataReader;
use lbrprof_data::perfdata::mapped::CHUNK_SIZE;
use lbrprof_data::source::{EventSource, MappedSource, mapped_source};
use std::path::PathBuf;

/// The mapped source of a perf.data `input`, folded in chunks of `chunk` bytes.
fn fold_mapped(
    input: &mut Input,
    opts: &AggregateOptions,
    chunk: usize,
) -> Result<Profile, SourceError> {
    let Some(MappedSource::Perf(mut source)) = mapped_source(input) else {
        panic!("not a perf.data input");
    };
    source.set_chunk_size(chunk);
    fold_source(&mut source, opts)
}

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/perfdata");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: no fixtures at {}", dir.display());
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && std::fs::read(p).is_ok_and(|b| b.starts_with(b"PERFILE2")))
        .collect();
    v.sort();
    v
}

/// Everything a report reads from a profile, in a comparable form.
pub(super) fn summary(p: &Profile) -> String {
    // Root frames by name: their ids follow the order samples are met in.
    let frame = |l: &crate::loc::Loc| match p.comm_root_module {
        Some(m) if m == l.module => p.root_names[l.offset as usize].clone(),
        _ => format!("{l:?}"),
    };
    let sorted_stacks = |table: &crate::aggregate::FastMap<Vec<crate::loc::Loc>, _>| {
        let mut v: Vec<_> = table
            .iter()
            .map(|(k, v)| format!("{:?} {v:?}", k.iter().map(frame).collect::<Vec<_>>()))
            .collect();
        v.sort();
        v
    };
    let stacks = sorted_stacks(&p.stacks);
    let runs: Vec<_> = p.run_stacks.iter().map(sorted_stacks).collect();
    let mut lbr: Vec<_> = p
        .lbr_stacks
        .iter()
        .map(|(k, v)| format!("{k:?} {v:?}"))
        .collect();
    lbr.sort();
    let mut edges: Vec<_> = p
        .edges
        .iter()
        .map(|(k, v)| format!("{k:?} {v:?}"))
        .collect();
    edges.sort();
    let mut ranges: Vec<_> = p
        .ranges
        .iter()
        .map(|(k, v)| format!("{k:?} {v:?}"))
        .collect();
    ranges.sort();
    ranges.extend(p.range_origins.iter().map(|(k, v)| format!("{k:?} {v:?}")));
    ranges[p.ranges.len()..].sort();
    let mut ips: Vec<_> = p.ips.iter().map(|(k, v)| format!("{k:?} {v:?}")).collect();
    ips.sort();
    let modules: Vec<_> = p.spaces.modules.iter().map(|m| format!("{m:?}")).collect();
    let mut comms: Vec<_> = p.comms.iter().collect();
    comms.sort();
    format!(
        "{:?}\n{modules:?}\n{comms:?}\n{stacks:#?}\n{runs:#?}\n{lbr:#?}\n{edges:#?}\n{ranges:#?}\n{ips:#?}",
        p.totals
    )
}

/// The profiles of the mapped source and of the aggregator; `None` when the mapped walk
/// declines the file.
fn both(path: &std::path::Path, opts: AggregateOptions) -> Option<(String, String)> {
    let mut input = open_any(path).ok()?;
    assert!(supports(&opts, input.may_have_branch_stacks()));
    let fast = match fold_mapped(&mut input, &opts, CHUNK_SIZE) {
        Ok(p) => p,
        Err(SourceError::Declined) => return None,
        Err(e) => panic!("{}: fast path: {e}", path.display()),
    };
    let slow_reader = PerfDataReader::open(path).unwrap();
    let (slow, err) = crate::aggregate_events(slow_reader, opts);
    assert!(err.is_none(), "{err:?}");
    Some((summary(&fast), summary(&slow)))
}

#[test]
fn fast_path_and_folded_stream_build_the_profile_the_event_stream_builds() {
    let mut scanned = 0;
    for path in fixtures() {
        for (lbr_call_stack, comm_root) in [(false, false), (true, false), (false, true)] {
            let opts = AggregateOptions {
                lbr_call_stack,
                comm_root,
                ..AggregateOptions::default()
            };
            // The event stream through the folder: the road of files the mapped walk
            // declines (compressed ones among the fixtures).
            let folded = fold_source(
                &mut EventSource::new(PerfDataReader::open(&path).unwrap()),
                &opts,
            )
            .expect("the folded stream");
            let slow = match both(&path, opts.clone()) {
                Some((fast, slow)) => {
                    scanned += 1;
                    assert!(fast == slow, "{}: profiles differ", path.display());
                    slow
                }
                None => {
                    let r = PerfDataReader::open(&path).unwrap();
                    let (p, err) = crate::aggregate_events(r, opts);
                    assert!(err.is_none(), "{err:?}");
                    summary(&p)
                }
            };
            assert!(
                summary(&folded) == slow,
                "{}: the folded stream differs",
                path.display()
            );
        }
    }
    if !fixtures().is_empty() {
        assert!(scanned > 0, "no fixture took the fast path");
    }
}

#[test]
fn fast_path_reads_truncated_files_as_far_as_the_event_stream() {
    let tmp = tempfile::tempdir().unwrap();
    for path in fixtures() {
        let bytes = std::fs::read(&path).unwrap();
        let cut = tmp.path().join("cut.data");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        if let Some((fast, slow)) = both(&cut, AggregateOptions::default()) {
            assert!(
                fast == slow,
                "{}: truncated profiles differ",
                path.display()
            );
        }
    }
}

/// A perf.data with stack copies (`perf record --call-graph dwarf` of a shell loop in
/// the distribution's stripped `sh`, forking `expr` children): the fast path unwinds
/// every sample against its process's mappings at its epoch, as the event stream does.
/// Records `perf record --call-graph dwarf` of a shell loop in the distribution's
/// stripped `sh`, forking `expr` children, into `data`; false when perf cannot.
fn record_dwarf(data: &std::path::Path) -> bool {
    let recorded = std::process::Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "2000",
            "--call-graph",
            "dwarf",
        ])
        .arg("-o")
        .arg(data)
        .args(["--", "sh", "-c"])
        .arg("i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; expr 1 + 1; expr 2 + 2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    recorded.is_ok_and(|s| s.success())
}

#[test]
fn fast_path_unwinds_stack_copies_as_the_event_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dwarf.data");
    if !record_dwarf(&data) {
        eprintln!("skipped: needs `perf record --call-graph dwarf` (linux-perf, perf_event_open)");
        return;
    }
    let opts = AggregateOptions::default();
    let (slow, err) = crate::aggregate_events(PerfDataReader::open(&data).unwrap(), opts.clone());
    assert!(err.is_none(), "{err:?}");
    // How the event stream's walks went: the fast path's note must say the same.
    let slow_stats = {
        let mut r = PerfDataReader::open(&data).unwrap();
        for ev in r.by_ref() {
            ev.unwrap();
        }
        lbrprof_data::dwarf::summary(&r.unwind_stats().unwrap())
    };
    let mut fast = None;
    // Chunks of one record, of a few records and of the default size: unwound while
    // the walk goes on, each against the mappings replayed up to its chunk.
    for chunk in [1, 4096, CHUNK_SIZE] {
        assert!(PerfDataReader::open(&data).unwrap().has_stack_copies());
        let mut input = open_any(&data).unwrap();
        let p = fold_mapped(&mut input, &opts, chunk).expect("the fast path takes dwarf perf.data");
        let stats = match input.recorded_notes().iter().find(|n| n.contains("dwarf")) {
            Some(n) => n.clone(),
            None => panic!("no unwinding note in {:?}", input.recorded_notes()),
        };
        assert!(
            summary(&p) == summary(&slow),
            "chunks of {chunk}: profiles differ"
        );
        assert_eq!(stats, slow_stats, "chunks of {chunk}");
        fast = Some((p, stats));
    }
    let (fast, stats) = fast.unwrap();
    // The loop's samples unwind through sh's frames, not one frame each.
    let frames: u64 = fast
        .stacks
        .iter()
        .map(|(k, v)| k.len() as u64 * v.samples)
        .sum();
    let samples: u64 = fast.stacks.values().map(|v| v.samples).sum();
    assert!(samples > 100, "{samples} samples");
    assert!(
        frames > 3 * samples,
        "{frames} frames in {samples} samples; {stats}"
    );
}

/// `bytes` (a little-endian perf.data) with records moved across `FINISHED_ROUND`s
/// against perf's promise: the first record and the mappings of every third round
/// go three rounds later, where the event stream emits them late (after records with
/// larger times), as it does with records of a CPU buffer drained late; samples
/// between then resolve without those mappings. The size stays the same. `None`
/// when the file has fewer than four rounds.
fn late_records(bytes: &[u8]) -> Option<Vec<u8>> {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let (start, len) = (word(40) as usize, word(48) as usize);
    let end = (start + len).min(bytes.len());
    use lbrprof_data::perfdata::abi;
    // The records of each round (type, bytes), its closing FINISHED_ROUND last.
    let mut rounds: Vec<Vec<(u32, std::ops::Range<usize>)>> = vec![Vec::new()];
    let mut at = start;
    while at + 8 <= end {
        let rtype = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let size = usize::from(u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]));
        if size < 8 || at + size > end {
            break;
        }
        rounds.last_mut().unwrap().push((rtype, at..at + size));
        if rtype == abi::PERF_RECORD_FINISHED_ROUND {
            rounds.push(Vec::new());
        }
        at += size;
    }
    if rounds.len() < 4 {
        return None;
    }
    for k in (0..rounds.len() - 3).step_by(3) {
        let (moved, kept) = rounds[k].iter().cloned().enumerate().partition(|(i, r)| {
            r.0 != abi::PERF_RECORD_FINISHED_ROUND
                && (*i == 0 || [abi::PERF_RECORD_MMAP, abi::PERF_RECORD_MMAP2].contains(&r.0))
        });
        let strip = |v: Vec<(usize, _)>| v.into_iter().map(|(_, r)| r);
        rounds[k] = strip(kept).collect();
        // After the first record of their new round, so that its move takes another.
        let at = rounds[k + 3].len().min(1);
        rounds[k + 3].splice(at..at, strip(moved));
    }
    let mut out = bytes[..start].to_vec();
    for (_, r) in rounds.iter().flatten() {
        out.extend_from_slice(&bytes[r.clone()]);
    }
    out.extend_from_slice(&bytes[out.len()..]);
    Some(out)
}

/// Files whose records break the rounds' promise take the fast path (they used to
/// fall back to the event stream) and give the stream's profile: fixtures, and a
/// `--call-graph dwarf` recording whose samples are unwound.
#[test]
fn fast_path_orders_late_records_as_the_event_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = fixtures();
    let dwarf = tmp.path().join("dwarf.data");
    if record_dwarf(&dwarf) {
        files.push(dwarf);
    } else {
        eprintln!("skipped (dwarf part): needs `perf record --call-graph dwarf`");
    }
    let mut late_files = 0;
    let opts = AggregateOptions::default();
    for path in files {
        // Files the fast path takes as they are.
        let mut input = open_any(&path).unwrap();
        if fold_mapped(&mut input, &opts, CHUNK_SIZE).is_err() {
            continue;
        }
        let Some(bytes) = late_records(&std::fs::read(&path).unwrap()) else {
            continue;
        };
        let late = tmp.path().join("late.data");
        std::fs::write(&late, bytes).unwrap();
        // The stream really emits samples out of time order.
        let mut max = 0;
        let mut out_of_order = false;
        for ev in PerfDataReader::open(&late).unwrap().flatten() {
            if let lbrprof_data::model::Event::Sample(s) = ev {
                out_of_order |= s.time_ns < max;
                max = max.max(s.time_ns);
            }
        }
        if !out_of_order {
            continue;
        }
        let (slow, err) =
            crate::aggregate_events(PerfDataReader::open(&late).unwrap(), opts.clone());
        assert!(err.is_none(), "{err:?}");
        let slow = summary(&slow);
        for chunk in [1, 4096, CHUNK_SIZE] {
            let mut input = open_any(&late).unwrap();
            let Ok(p) = fold_mapped(&mut input, &opts, chunk) else {
                panic!("{}: the fast path declined late records", path.display());
            };
            assert!(
                summary(&p) == slow,
                "{}: chunks of {chunk}: profiles differ",
                path.display()
            );
        }
        late_files += 1;
    }
    assert!(late_files > 0, "no file had late records");
}

/// The pipelined fast path (chunks folded while the walk goes on), with chunks of
/// one record, of a few records and of the default size, builds the event stream's
/// profile.
#[test]
fn pipelined_fast_path_builds_the_profile_the_event_stream_builds() {
    for path in fixtures() {
        for comm_root in [false, true] {
            let opts = AggregateOptions {
                comm_root,
                ..AggregateOptions::default()
            };
            let slow = {
                let r = PerfDataReader::open(&path).unwrap();
                let (p, err) = crate::aggregate_events(r, opts.clone());
                assert!(err.is_none());
                summary(&p)
            };
            for chunk in [1, 4096, CHUNK_SIZE] {
                let mut input = open_any(&path).unwrap();
                match fold_mapped(&mut input, &opts, chunk) {
                    Ok(p) => {
                        assert!(summary(&p) == slow, "{}: chunks of {chunk}", path.display())
                    }
                    Err(SourceError::Declined) => {}
                    Err(e) => panic!("{}: fast path failed: {e}", path.display()),
                }
            }
        }
    }
}

#[test]
fn fast_path_filters_like_the_event_stream() {
    let mut branch_files = 0;
    for path in fixtures() {
        if PerfDataReader::open(&path).unwrap().mapped_scan().is_none() {
            continue;
        }
        // With branch stacks, `--comm` keeps a sample's edges and ranges with its stack,
        // by its head; `--dso` is left to the walk in perf's order.
        let branches = PerfDataReader::open(&path).unwrap().has_branch_stacks();
        branch_files += usize::from(branches);
        let (pid, mid) = {
            let slow = PerfDataReader::open(&path).unwrap();
            let (p, _) = crate::aggregate_events(slow, AggregateOptions::default());
            let t = &p.totals;
            let mid = t.first_time_ns.unwrap_or(0) / 2 + t.last_time_ns / 2;
            (p.comms.keys().next().copied().unwrap_or(1), mid)
        };
        for filter in [
            Filter {
                times: vec![(mid, u64::MAX)],
                ..Filter::default()
            },
            Filter {
                pids: vec![pid],
                ..Filter::default()
            },
            Filter {
                tids: vec![pid],
                ..Filter::default()
            },
            Filter {
                comms: vec!["sleep".into()],
                ..Filter::default()
            },
            Filter {
                dsos: vec!["libc.so.6".into()],
                ..Filter::default()
            },
        ] {
            if branches && !filter.dsos.is_empty() {
                // Its verdict depends on each sampled IP: the walk in perf's order.
                let opts = AggregateOptions {
                    filter,
                    ..AggregateOptions::default()
                };
                let (fast, slow) = in_order_both(&path, &opts).unwrap();
                assert!(fast == slow, "{}: --dso profiles differ", path.display());
                continue;
            }
            let opts = AggregateOptions {
                filter,
                ..AggregateOptions::default()
            };
            let (fast, slow) = both(&path, opts).unwrap();
            assert!(fast == slow, "{}: filtered profiles differ", path.display());
        }
    }
    if !fixtures().is_empty() {
        assert!(
            branch_files > 0,
            "no fixture with branch stacks was filtered"
        );
    }
}

/// What the mapped walk in perf's order and the aggregator over the event stream build
/// with `opts` (the profile's tables, its timeline, the input's notes); `None` when the
/// mapped walk declines the file.
fn in_order_both(path: &std::path::Path, opts: &AggregateOptions) -> Option<(String, String)> {
    let outcome = |p: &Profile, input: &Input| {
        format!(
            "{}\ntimeline {:?}\nnotes {:?}\nwarnings {:?}",
            summary(p),
            p.timeline,
            input.recorded_notes(),
            input.warnings()
        )
    };
    let mut input = open_any(path).ok()?;
    let Some(MappedSource::Perf(mut source)) = mapped_source(&mut input) else {
        panic!("not a perf.data input");
    };
    let fast = match crate::aggregate::aggregate_in_order(&mut source, opts.clone()) {
        Ok(p) => p,
        Err(SourceError::Declined) => return None,
        Err(e) => panic!("{}: walk in order: {e}", path.display()),
    };
    let fast = outcome(&fast, &input);
    let mut slow_input = open_any(path).unwrap();
    let (slow, err) = crate::aggregate_events(slow_input.by_ref(), opts.clone());
    assert!(err.is_none(), "{err:?}");
    Some((fast, outcome(&slow, &slow_input)))
}

/// The options a walk in order serves: timelines (the Firefox export), `--dso` with
/// branch stacks, both with LBR call stacks and per-task tables.
fn in_order_option_sets() -> Vec<AggregateOptions> {
    vec![
        AggregateOptions {
            timeline: true,
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: Filter {
                dsos: vec!["libc.so.6".into(), "[kernel.kallsyms]".into()],
                ..Filter::default()
            },
            ..AggregateOptions::default()
        },
        AggregateOptions {
            filter: Filter {
                dsos: vec!["[kernel.kallsyms]".into()],
                comms: vec!["sleep".into(), "echo".into()],
                ..Filter::default()
            },
            timeline: true,
            lbr_call_stack: true,
            tasks: true,
            comm_root: true,
            ..AggregateOptions::default()
        },
    ]
}

/// The mapped walk in perf's order gives every sample and side-band event in the event
/// stream's order (timelines list them so): on the fixtures, on them with records moved
/// across rounds against perf's promise, cut short, and on a `--call-graph dwarf`
/// recording whose samples it unwinds as the stream does.
#[test]
fn mapped_walk_in_order_gives_the_event_streams_order_and_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, path) in fixtures().into_iter().enumerate() {
        let bytes = std::fs::read(&path).unwrap();
        if let Some(late) = late_records(&bytes) {
            let p = tmp.path().join(format!("late{i}.data"));
            std::fs::write(&p, late).unwrap();
            files.push(p);
        }
        let cut = tmp.path().join(format!("cut{i}.data"));
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        files.extend([path, cut]);
    }
    let dwarf = tmp.path().join("dwarf.data");
    if record_dwarf(&dwarf) {
        files.push(dwarf);
    } else {
        eprintln!("skipped (dwarf part): needs `perf record --call-graph dwarf`");
    }
    let mut walked = 0;
    for path in &files {
        for opts in in_order_option_sets() {
            let Some((fast, slow)) = in_order_both(path, &opts) else {
                continue;
            };
            walked += 1;
            if fast != slow {
                let (f, s) = fast
                    .lines()
                    .zip(slow.lines())
                    .find(|(f, s)| f != s)
                    .unwrap_or_default();
                // A timeline is one line: where the two part is enough.
                let at = f.bytes().zip(s.bytes()).take_while(|(a, b)| a == b).count();
                let near = |line: &str| -> String {
                    line.chars()
                        .skip(at.saturating_sub(100))
                        .take(300)
                        .collect()
                };
                panic!(
                    "{}: {opts:?}:\n  walk:   ...{}\n  stream: ...{}",
                    path.display(),
                    near(f),
                    near(s)
                );
            }
        }
    }
    if !fixtures().is_empty() {
        assert!(walked > 0, "no file took the walk in order");
    }
}
