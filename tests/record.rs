//! End-to-end tests of `lbrprof record` and `lbrprof info`: real workloads (C sources in
//! `tests/workloads/`, compiled here with gcc) recorded with perf_event_open, checked
//! against their ELF symbol tables.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lbrprof_data::model::{AddressSpace, Event, HostSample, Mapping, TaskEvent};
use lbrprof_data::recording::RecordingReader;
use object::{Object, ObjectSegment, ObjectSymbol};

/// All events of a recording, and whether it had a summary.
fn read_all(path: &Path) -> (Vec<Event>, RecordingReader) {
    let mut reader = RecordingReader::open(path).expect("recording opens");
    let mut events = Vec::new();
    for event in reader.by_ref() {
        events.push(event.expect("event decodes"));
    }
    (events, reader)
}

fn samples(events: &[Event]) -> impl Iterator<Item = &HostSample> {
    events.iter().filter_map(|e| match e {
        Event::Sample(s) => Some(s),
        _ => None,
    })
}

/// The run-time address range of `symbol` of `exe` in process `pid`, from the ELF
/// symbol table and the recorded MMAP2 of the executable (PIE or not).
fn runtime_range(events: &[Event], exe: &Path, symbol: &str, pid: u32) -> (u64, u64) {
    let data = std::fs::read(exe).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok(symbol))
        .unwrap_or_else(|| panic!("{symbol} not in {}", exe.display()));
    let (addr, size) = (sym.address(), sym.size().max(1));
    // Symbol address -> file offset through the segment that holds it.
    let seg = elf
        .segments()
        .find(|s| s.address() <= addr && addr < s.address() + s.size())
        .expect("symbol inside a segment");
    let file_off = addr - seg.address() + seg.file_range().0;
    let exe_path = exe.canonicalize().unwrap();
    let map: &Mapping = events
        .iter()
        .filter_map(|e| match e {
            Event::Mapping(m) => Some(m),
            _ => None,
        })
        .find(|m| {
            m.pid == pid
                && m.space == AddressSpace::HostUser
                && Path::new(&m.path) == exe_path
                && m.pgoff <= file_off
                && file_off < m.pgoff + m.len
        })
        .unwrap_or_else(|| panic!("no executable mapping of {} for pid {pid}", exe.display()));
    let start = map.start + (file_off - map.pgoff);
    (start, start + size)
}

fn in_range(s: &HostSample, (lo, hi): (u64, u64)) -> bool {
    (lo..hi).contains(&s.ip) || s.callchain.iter().any(|f| (lo..hi).contains(&f.addr))
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn hot_function_dominates_the_recording() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "hot");
    let data = dir.path().join("hot.data");
    let out = common::lbrprof()
        .args(["record", "-F", "999", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .args(["300000000", "3"])
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status passes through: {err}"
    );
    assert!(err.contains("samples, 0 lost"), "{err}");
    assert!(
        err.contains(&format!("written to {}", data.display())),
        "{err}"
    );
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("pid ")?.parse().ok())
        .expect("workload prints its pid");

    let (events, reader) = read_all(&data);
    let summary = reader.summary().expect("finished recording has a summary");
    assert_eq!(summary.exit_status, Some(3));
    let all: Vec<&HostSample> = samples(&events).filter(|s| s.pid == pid).collect();
    assert_eq!(summary.samples as usize, samples(&events).count());
    let range = runtime_range(&events, &exe, "hot_loop", pid);
    let hot = all.iter().filter(|s| in_range(s, range)).count();
    assert!(
        hot > 100 && hot * 10 > all.len() * 8,
        "{hot} of {} samples in hot_loop {range:x?}",
        all.len()
    );
    // Call chains: the hot samples were called from main, in user mode, markers gone.
    let main = runtime_range(&events, &exe, "main", pid);
    let with_caller = all
        .iter()
        .filter(|s| {
            s.callchain
                .iter()
                .any(|f| (main.0..main.1).contains(&f.addr))
        })
        .count();
    assert!(
        with_caller * 2 > all.len(),
        "{with_caller} of {} samples have main in their chain",
        all.len()
    );
    assert!(
        all.iter()
            .all(|s| s.callchain.iter().all(|f| f.addr < u64::MAX - 4096))
    );
    // Side band: the exec (COMM with the exec flag), times on CLOCK_MONOTONIC after the start.
    assert!(events.iter().any(|e| matches!(e, Event::Task(TaskEvent::Exec { pid: p, comm, .. }) if *p == pid && comm == "hot")));
    let start = reader.header().start_monotonic_ns;
    assert!(all.iter().all(|s| s.time_ns >= start && s.period > 0));
    // The executable's mapping carries its build-id (gcc links with --build-id on Debian).
    let exe_path = exe.canonicalize().unwrap();
    let exe_map = events
        .iter()
        .find_map(|e| match e {
            Event::Mapping(m) if Path::new(&m.path) == exe_path => Some(m),
            _ => None,
        })
        .unwrap();
    // ...and it comes before the first sample that needs it, in stream order.
    let map_at = events
        .iter()
        .position(|e| matches!(e, Event::Mapping(m) if Path::new(&m.path) == exe_path))
        .unwrap();
    let first_hot = events
        .iter()
        .position(|e| matches!(e, Event::Sample(s) if in_range(s, range)))
        .unwrap();
    assert!(
        map_at < first_hot,
        "mapping at {map_at}, first hot sample at {first_hot}"
    );
    let elf_data = std::fs::read(&exe).unwrap();
    let elf = object::File::parse(&*elf_data).unwrap();
    assert_eq!(exe_map.build_id.as_deref(), elf.build_id().unwrap());

    // `info FILE` shows the totals.
    let info = common::run(&["info", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{}", stderr_of(&info));
    assert!(
        text.contains(&format!("samples:       {}", samples(&events).count())),
        "{text}"
    );
    assert!(text.contains("exit status 3"), "{text}");
}

#[test]
fn every_thread_is_sampled() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "threads");
    let data = dir.path().join("threads.data");
    let out = common::lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .args(["3", "150000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let tids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("tid ")?.parse().ok())
        .collect();
    assert_eq!(tids.len(), 3);
    let (events, _) = read_all(&data);
    for tid in &tids {
        let n = samples(&events).filter(|s| s.tid == *tid).count();
        assert!(n > 10, "thread {tid}: only {n} samples");
        let pid = samples(&events).find(|s| s.tid == *tid).unwrap().pid;
        let range = runtime_range(&events, &exe, "thread_work", pid);
        let hot = samples(&events)
            .filter(|s| s.tid == *tid && in_range(s, range))
            .count();
        assert!(
            hot * 10 > n * 7,
            "thread {tid}: {hot} of {n} in thread_work"
        );
    }
    // `info FILE` lists the threads with their names.
    let info = common::run(&["info", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    for tid in &tids {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("tid {tid} ")) && l.ends_with("threads")),
            "{tid} not listed:\n{text}"
        );
    }
    // Thread creation is on record.
    let forks = events
        .iter()
        .filter(|e| matches!(e, Event::Task(TaskEvent::Fork { tid, .. }) if tids.contains(tid)))
        .count();
    assert_eq!(forks, 3);
}

#[test]
fn forked_children_are_sampled() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "forking");
    let data = dir.path().join("forking.data");
    let out = common::lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .args(["2", "150000000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let children: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("child ")?.parse().ok())
        .collect();
    assert_eq!(children.len(), 2);
    let (events, _) = read_all(&data);
    for child in &children {
        let n = samples(&events).filter(|s| s.pid == *child).count();
        assert!(n > 10, "child {child}: only {n} samples");
        // The child inherited its parent's mappings; they are findable by the parent's
        // pid, and the FORK record links them.
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Task(TaskEvent::Fork { pid, .. }) if pid == child))
        );
    }
}

/// Recordings and exports are private (0600), as perf makes perf.data, also when they
/// replace a world-readable file.
#[test]
fn recordings_and_exports_are_created_private() {
    if !common::perf_available() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("t.data");
    std::fs::write(&data, b"old").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exe = common::build_workload(dir.path(), "hot");
    let out = common::run(&[
        "record",
        "-o",
        data.to_str().unwrap(),
        "--",
        exe.to_str().unwrap(),
        "100000000",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(mode(&data), 0o600);
    let svg = dir.path().join("t.svg");
    let out = common::run(&[
        "flamegraph",
        "-i",
        data.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(mode(&svg), 0o600);
}

#[test]
fn unknown_command_exits_127() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("x.data");
    let out = common::lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--", "lbrprof-no-such-command-xyz", "arg"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        stderr_of(&out).trim_end(),
        "lbrprof: error: cannot run 'lbrprof-no-such-command-xyz': No such file or directory"
    );
    assert!(!data.exists(), "no recording is left behind");

    // A path that does not exist fails in exec, reported back the same way.
    if common::perf_available() {
        let out = common::lbrprof()
            .args(["record", "-o"])
            .arg(&data)
            .args(["--", "/nonexistent/prog"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127), "{}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("cannot run '/nonexistent/prog': No such file or directory")
        );
        assert!(!data.exists());
    }
}

#[test]
fn unwritable_output_fails_before_the_workload_starts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let out = common::lbrprof()
        .args(["record", "-o", "/nonexistent-dir/x.data", "--", "sh", "-c"])
        .arg(format!("touch {}", marker.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.starts_with("lbrprof: error: cannot create the recording /nonexistent-dir/x.data"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(!marker.exists(), "the workload must not have run");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let out = common::run(&["record", "-F", "0", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("sampling frequency must be between 1"));
    let out = common::run(&["record"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("nothing to record"));
    let out = common::run(&["record", "-p", "4194303", "--duration", "0.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_of(&out).trim_end(),
        "lbrprof: error: no such process 4194303"
    );
    let out = common::run(&["record", "-t", "4194303"]);
    assert_eq!(
        stderr_of(&out).trim_end(),
        "lbrprof: error: no such thread 4194303"
    );
    let out = common::run(&["record", "-p", "1", "--duration=-3"]);
    assert!(stderr_of(&out).contains("--duration must be a positive number"));
}

/// Start `lbrprof record` on a long-running `hot` and return it with the workload's pid.
fn start_long_recording(exe: &Path, data: &Path) -> (std::process::Child, u32) {
    let mut child = common::lbrprof()
        .args(["record", "-o"])
        .arg(data)
        .arg("--")
        .arg(exe)
        .arg("100000000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = line
        .trim()
        .strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("workload did not start: {line:?}"));
    (child, pid)
}

fn wait_with_timeout(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("lbrprof record did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_finalizes_the_recording() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "hot");
    let data = dir.path().join("int.data");
    let (mut record, pid) = start_long_recording(&exe, &data);
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(record.id() as i32, libc::SIGINT) };
    let status = wait_with_timeout(&mut record, Duration::from_secs(20));
    // The workload got the SIGINT forwarded and died of it: 128 + 2.
    assert_eq!(status.code(), Some(130));
    let (events, reader) = read_all(&data);
    let summary = reader.summary().expect("summary written after SIGINT");
    assert_eq!(summary.exit_status, Some(130));
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("stopped by a signal"))
    );
    assert!(samples(&events).filter(|s| s.pid == pid).count() > 10);
}

/// SIGINT to lbrprof alone stops the recording within about a second, also when the
/// command ignores it: it is sent SIGTERM, then SIGKILL, and the file is finished.
#[test]
fn sigint_stops_a_command_that_ignores_it() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("stubborn.data");
    let mut record = common::lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--", "sh", "-c", "trap '' INT TERM; while :; do :; done"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let asked = Instant::now();
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(record.id() as i32, libc::SIGINT) };
    let status = wait_with_timeout(&mut record, Duration::from_secs(20));
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    // It ignored SIGINT and SIGTERM: SIGKILL ended it.
    assert_eq!(status.code(), Some(128 + libc::SIGKILL));
    let (_, reader) = read_all(&data);
    let summary = reader.summary().expect("the recording is finished");
    assert_eq!(summary.exit_status, Some(128 + libc::SIGKILL));
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("stopped by a signal"))
    );
}

/// Whether process `pid` still exists (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn sigkill_leaves_a_readable_recording() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "hot");
    let data = dir.path().join("killed.data");
    // A previous recording at the target survives the killed one untouched.
    std::fs::write(&data, b"the previous recording").unwrap();
    let (mut record, pid) = start_long_recording(&exe, &data);
    // Several flush intervals (250 ms) of samples.
    std::thread::sleep(Duration::from_millis(1500));
    let partial = dir
        .path()
        .join(format!("killed.data.{}.partial", record.id()));
    assert!(partial.is_file(), "recording into {}", partial.display());
    record.kill().unwrap();
    record.wait().unwrap();
    // The command dies with its recorder.
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let leaked = alive(pid);
    if leaked {
        // SAFETY: kill has no memory-safety preconditions; clean up before failing.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(!leaked, "the workload outlived the SIGKILLed record");
    assert_eq!(std::fs::read(&data).unwrap(), b"the previous recording");
    // The partial file holds what was flushed, and the readers take it.
    let (events, reader) = read_all(&partial);
    assert!(reader.summary().is_none(), "killed: no summary");
    let n = samples(&events).filter(|s| s.pid == pid).count();
    assert!(n > 50, "only {n} samples survived the SIGKILL");
    let info = common::run(&["info", partial.to_str().unwrap()]);
    assert!(info.status.success(), "{}", stderr_of(&info));
    assert!(String::from_utf8_lossy(&info.stdout).contains("did not finish"));
    // A later record leaves the partial file alone.
    let out = common::run(&["record", "-o", data.to_str().unwrap(), "--", "true"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(partial.is_file());
}

/// A record that fails leaves the file that was there as it was; one that succeeds keeps
/// it as NAME.old, unless --force.
#[test]
fn an_existing_recording_is_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("b.lbr");
    std::fs::write(&data, b"X").unwrap();
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect()
    };
    let out = common::run(&[
        "record",
        "-o",
        data.to_str().unwrap(),
        "--",
        "/nonexistent/cmd",
    ]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr_of(&out));
    assert_eq!(std::fs::read(&data).unwrap(), b"X");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    if common::kvm_available() {
        let out = common::run(&[
            "record",
            "-o",
            data.to_str().unwrap(),
            "--vm",
            "/etc/passwd",
        ]);
        assert_ne!(out.status.code(), Some(0), "{}", stderr_of(&out));
        assert_eq!(std::fs::read(&data).unwrap(), b"X");
        assert!(leftovers().is_empty(), "{:?}", leftovers());
    }
    if !common::perf_available() {
        return;
    }
    let out = common::run(&["record", "-o", data.to_str().unwrap(), "--", "true"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let old = dir.path().join("b.lbr.old");
    assert_eq!(std::fs::read(&old).unwrap(), b"X", "kept as NAME.old");
    let first = std::fs::read(&data).unwrap();
    assert!(first.starts_with(b"LBRPROF"));
    let out = common::run(&["record", "-f", "-o", data.to_str().unwrap(), "--", "true"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(std::fs::read(&old).unwrap(), b"X", "--force keeps no .old");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

#[test]
fn attach_to_a_running_process() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "threads");
    let data = dir.path().join("attach.data");
    let mut target = Command::new(&exe)
        .args(["2", "100000000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    let tids: Vec<u32> = (0..2)
        .map(|_| {
            lines.next().unwrap().unwrap()["tid ".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    let out = common::lbrprof()
        .args(["record", "--duration", "1", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .output()
        .unwrap();
    target.kill().unwrap();
    target.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let (events, reader) = read_all(&data);
    assert!(reader.summary().is_some());
    for tid in &tids {
        let n = samples(&events).filter(|s| s.tid == *tid).count();
        assert!(n > 10, "thread {tid}: {n} samples");
    }
    // Mappings that existed before the attach were synthesized from /proc/PID/maps, so
    // the samples can be placed in thread_work.
    let range = runtime_range(&events, &exe, "thread_work", pid);
    let hot = samples(&events).filter(|s| in_range(s, range)).count();
    assert!(hot > 20, "{hot} samples in thread_work");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Task(TaskEvent::Comm { tid, .. }) if *tid == tids[0]))
    );
}

#[test]
fn info_describes_the_host() {
    let out = common::run(&["info"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "hardware PMU:",
        "LBR depth:",
        "perf_event_paranoid:",
        "kernel call chains:",
        "enable_pmu:",
        "host LBR:",
        "LBR freeze on PMI:",
        "KVM vPMU:",
        "hardware passthrough:",
        "emulated LBR:",
        "record --vm (sampled):",
        "record --vm (exact):",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    assert!(text.ends_with('\n'));
    // Never both "no backend" and a backend picked (the contradiction of old).
    assert!(!text.contains("guest LBR backends"), "{text}");
}

#[test]
fn info_rejects_a_file_that_is_not_a_recording() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.data");
    std::fs::write(&bogus, b"definitely not a recording").unwrap();
    let out = common::run(&["info", bogus.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.starts_with("lbrprof: error: cannot read the recording"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = common::run(&["info", "/nonexistent/file.data"]);
    assert_eq!(out.status.code(), Some(2));
    let perf_data = dir.path().join("perf.data");
    std::fs::write(&perf_data, b"PERFILE2 and then some").unwrap();
    // A broken perf.data is read as perf.data, and its error says so, in one line.
    let out = common::run(&["info", perf_data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.starts_with("lbrprof: error: cannot read the perf.data file"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// utime + stime of a process, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (state), so fields 14 and 15 are at indices 11 and 12.
    field(11) + field(12)
}

#[test]
fn ring_buffer_losses_are_counted_and_reported() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "hot");
    let data = dir.path().join("lossy.data");
    // One page per CPU, and the recorder stopped (SIGSTOP) for 600 ms while the workload
    // keeps running: the kernel must drop records, whatever the machine's speed.
    let mut record = common::lbrprof()
        .args(["record", "-m", "1", "-F", "2000", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .arg("100000000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(record.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("pid "), "{line:?}");
    let workload: u32 = line[4..].trim().parse().unwrap();
    let id = record.id() as i32;
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill has no memory-safety preconditions; `id` is our child.
    unsafe { libc::kill(id, libc::SIGSTOP) };
    // Keep the recorder stopped until the workload has run for 0.3 s of CPU time (not wall
    // time: on a loaded machine it may barely run): at 2000 Hz that is ~600 samples, far
    // more than a one-page ring holds.
    let start = cpu_ticks(workload);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cpu_ticks(workload) < start + 30 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(id, libc::SIGCONT) };
    // The kernel writes PERF_RECORD_LOST only with the next record that fits once the
    // recorder has drained: let the workload run on (0.1 s of CPU) before stopping.
    let resumed = cpu_ticks(workload);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cpu_ticks(workload) < resumed + 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(id, libc::SIGINT) };
    let status = wait_with_timeout(&mut record, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut record.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    let (events, reader) = read_all(&data);
    let summary = reader.summary().unwrap();
    let lost_events: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::Loss(l) if l.kind == lbrprof_data::model::LossKind::RingBuffer => Some(l.count),
            _ => None,
        })
        .sum();
    assert!(
        summary.lost > 0,
        "a stopped recorder with a one-page ring loses records"
    );
    assert_eq!(
        summary.lost, lost_events,
        "the summary counts every Loss event"
    );
    assert!(err.contains(&format!("{} lost", summary.lost)), "{err}");
    assert!(
        summary.notes.iter().any(|n| n.contains("records lost")),
        "{:?}",
        summary.notes
    );
    assert_eq!(summary.samples as usize, samples(&events).count());
    // info and report show the same count.
    let info = common::run(&["info", data.to_str().unwrap()]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains(&format!("losses:        {} ring buffer", summary.lost)),
        "{info}"
    );
    let report = common::run(&["report", "-i", data.to_str().unwrap(), "--limit", "1"]);
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.contains(&format!(", lost {}, ", summary.lost)),
        "{report}"
    );
}

#[test]
fn unprivileged_users_get_user_space_sampling() {
    if !common::perf_available() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2);
    if !root || paranoid != 2 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root (to drop to nobody), setpriv and perf_event_paranoid=2");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "hot");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let data = dir.path().join("user.data");
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_lbrprof"))
        .args(["record", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .arg("100000000")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    if err.contains("Permission denied") && !data.exists() {
        eprintln!("skipped: nobody cannot reach the binary or temp dir here: {err}");
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("user space only"), "{err}");
    let (events, _) = read_all(&data);
    let all: Vec<&HostSample> = samples(&events).collect();
    assert!(all.len() > 20, "{} samples", all.len());
    // Someone else's process is out of reach: a one-line explanation, no file.
    let denied = dir.path().join("denied.data");
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_lbrprof"))
        .args(["record", "-p", "1", "--duration", "0.1", "-o"])
        .arg(&denied)
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lbrprof: error: no permission to sample task 1"),
        "{err}"
    );
    assert!(
        err.contains("CAP_PERFMON") && err.contains("perf_event_paranoid"),
        "{err}"
    );
    assert!(!denied.exists());
    assert!(
        all.iter().all(|s| s
            .callchain
            .iter()
            .all(|f| f.mode != lbrprof_data::model::CpuMode::Kernel)),
        "no kernel frames at paranoid 2"
    );
}

#[test]
fn kernel_call_chains_when_permitted() {
    if !common::perf_available() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: kernel call chains need root or perf_event_paranoid <= 1");
        return;
    }
    use lbrprof_data::model::CpuMode;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sys.data");
    // One-byte reads and writes: most of the time is spent in the kernel.
    let out = common::lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args([
            "--",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            "count=400000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let (events, _) = read_all(&data);
    let kernel: Vec<&HostSample> = samples(&events)
        .filter(|s| s.mode == CpuMode::Kernel)
        .collect();
    assert!(kernel.len() > 10, "{} kernel-mode samples", kernel.len());
    // Kernel frames first (kernel addresses), then the user part that made the syscall.
    let stitched = kernel
        .iter()
        .filter(|s| {
            let first_user = s.callchain.iter().position(|f| f.mode == CpuMode::User);
            s.callchain
                .first()
                .is_some_and(|f| f.mode == CpuMode::Kernel)
                && first_user.is_some_and(|i| {
                    s.callchain[..i]
                        .iter()
                        .all(|f| f.mode == CpuMode::Kernel && f.addr >= 0xffff_8000_0000_0000)
                })
        })
        .count();
    assert!(
        stitched * 2 > kernel.len(),
        "{stitched} of {} kernel samples have kernel then user frames",
        kernel.len()
    );
}

#[test]
fn requests_the_host_cannot_serve_are_refused() {
    if std::path::Path::new("/sys/bus/event_source/devices/cpu").exists() {
        eprintln!("skipped: this host has a hardware PMU");
        return;
    }
    let out = common::run(&["record", "--event", "cycles", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("--event cycles needs a hardware PMU"),
        "{}",
        stderr_of(&out)
    );
    let out = common::run(&["record", "--branches", "on", "--", "true"]);
    assert!(stderr_of(&out).contains("--branches on needs a hardware PMU with LBR"));
    let out = common::run(&["record", "--call-graph", "lbr", "--", "true"]);
    assert!(stderr_of(&out).contains("--call-graph lbr needs LBR"));
}

#[test]
fn attach_to_one_thread() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "threads");
    let data = dir.path().join("tid.data");
    let mut target = Command::new(&exe)
        .args(["2", "100000000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    let tids: Vec<u32> = (0..2)
        .map(|_| {
            lines.next().unwrap().unwrap()["tid ".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    let out = common::lbrprof()
        .args(["record", "--duration", "0.7", "-t"])
        .arg(tids[1].to_string())
        .arg("-o")
        .arg(&data)
        .output()
        .unwrap();
    target.kill().unwrap();
    target.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let (events, _) = read_all(&data);
    let n = samples(&events).count();
    assert!(n > 10, "{n} samples");
    assert!(
        samples(&events).all(|s| s.tid == tids[1]),
        "only the attached thread"
    );
}

#[test]
fn duration_and_sigterm_end_recordings_cleanly() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "hot");

    // --duration with a command: the command is sent SIGTERM, its status passed on.
    let data = dir.path().join("duration.data");
    let started = Instant::now();
    let out = common::lbrprof()
        .args(["record", "--duration", "0.5", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .arg("100000000000")
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        stderr_of(&out)
    );
    let (_, reader) = read_all(&data);
    assert_eq!(
        reader.summary().unwrap().exit_status,
        Some(128 + libc::SIGTERM)
    );

    // SIGTERM to an attached recording: it detaches, finalizes and exits 0.
    let mut target = Command::new(&exe)
        .arg("100000000000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let data = dir.path().join("term.data");
    let mut record = common::lbrprof()
        .args(["record", "-p"])
        .arg(target.id().to_string())
        .arg("-o")
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: kill has no memory-safety preconditions; `record` is our child.
    unsafe { libc::kill(record.id() as i32, libc::SIGTERM) };
    let status = wait_with_timeout(&mut record, Duration::from_secs(20));
    target.kill().unwrap();
    target.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let (events, reader) = read_all(&data);
    let summary = reader.summary().expect("finalized after SIGTERM");
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("stopped by a signal"))
    );
    assert!(samples(&events).count() > 10);
}

#[test]
fn attach_follows_threads_created_later() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "threads");
    let data = dir.path().join("later.data");
    // The process waits 1.5 s before it creates its threads; we attach during the wait.
    let mut target = Command::new(&exe)
        .args(["2", "150000000", "1500"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let out = common::lbrprof()
        .args(["record", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&data)
        .output()
        .unwrap();
    // The recording ends by itself when the process exits.
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let tids: Vec<u32> = lines
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("tid ")?.parse().ok())
        .collect();
    target.wait().unwrap();
    assert_eq!(tids.len(), 2);
    let (events, _) = read_all(&data);
    for tid in &tids {
        let n = samples(&events).filter(|s| s.tid == *tid).count();
        assert!(n > 10, "thread {tid} created after the attach: {n} samples");
    }
}

#[test]
fn attach_to_many_threads_beyond_the_soft_open_file_limit() {
    if !common::perf_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = common::build_workload(dir.path(), "threads");
    let data = dir.path().join("many.data");
    let mut target = Command::new(&exe)
        .args(["40", "100000000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(target.stdout.take().unwrap()).lines();
    for _ in 0..40 {
        lines.next().unwrap().unwrap();
    }
    // 41 threads x every CPU events do not fit in 40 descriptors: record raises the soft
    // limit to the hard one itself.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 40 && exec {} record -p {} --duration 0.5 -o {}",
            env!("CARGO_BIN_EXE_lbrprof"),
            target.id(),
            data.display()
        ))
        .output()
        .unwrap();
    target.kill().unwrap();
    target.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let (events, _) = read_all(&data);
    let tids: std::collections::BTreeSet<u32> = samples(&events).map(|s| s.tid).collect();
    assert!(tids.len() > 10, "samples from {} threads", tids.len());
}
