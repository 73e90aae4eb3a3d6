//! Signals sent to lbrprof reach the Linux program it runs in the VM (issue #13), end to
//! end: a program that handles SIGINT runs its handler (its blocked call interrupted as
//! natively) and goes on; one that does not dies as the shell reports it; Ctrl-C on the
//! terminal reaches every process of the program; a program that ignores the signal
//! still lets lbrprof stop; `record --vm` keeps a readable recording. Each case is
//! compared with the program run natively and sent the same signal.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{kvm_available, lbrprof, perf_available};

/// How long a program may take to say it is ready, or to end once signalled.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long after "ready" the program is surely in its wait.
const SETTLE: Duration = Duration::from_millis(300);

fn build(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/linux_outside_signal.c");
    let exe = dir.join("outside_signal");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc is needed for the Linux-program tests");
    assert!(status.success(), "gcc failed on {}", src.display());
    exe
}

/// A started program whose stdout lines come on a channel.
struct Started {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn start(mut cmd: Command) -> Started {
    // stdin: a pipe the test keeps open and never writes (a `read` waits on it).
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start the program");
    let out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    Started {
        child,
        lines,
        stderr,
    }
}

impl Started {
    fn wait_ready(&mut self) {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(l) if l == "ready" => {}
            other => {
                let _ = self.child.kill();
                panic!("the program did not say it was ready: {other:?}");
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our live child's.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill failed");
    }

    /// Wait for the end: the rest of stdout, the status, stderr, and how long it took.
    fn finish(mut self) -> (Vec<String>, ExitStatus, String, Duration) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("the program did not end within {PATIENCE:?} of the signal");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = started.elapsed();
        drop(self.child.stdin.take());
        let lines = self.lines.iter().collect();
        (lines, status, self.stderr.join().unwrap(), took)
    }
}

/// The exit status as a shell gives it (128 + N for signal N).
fn shell_code(s: ExitStatus) -> i32 {
    s.code().or(s.signal().map(|n| 128 + n)).unwrap()
}

fn native(exe: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(exe);
    c.args(args);
    c
}

fn in_vm(exe: &Path, args: &[&str]) -> Command {
    let mut c = lbrprof();
    c.args(["run", "--vm", "--"]).arg(exe).args(args);
    c
}

/// Start `cmd`, send it `sig` once it is ready, and wait for its end.
fn signalled(cmd: Command, sig: i32) -> (Vec<String>, ExitStatus, String, Duration) {
    let mut p = start(cmd);
    p.wait_ready();
    // Time to go from "ready" into the wait (a signal just before it would run the
    // handler with no call to interrupt: natively as in the VM).
    std::thread::sleep(SETTLE);
    p.signal(sig);
    p.finish()
}

#[test]
fn a_handled_sigint_interrupts_each_kind_of_wait_as_natively() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    for (how, first) in [
        ("pause", None),
        ("read", Some("read: EINTR")),
        ("sleep", Some("nanosleep: EINTR")),
        ("spin", None),
    ] {
        let args = ["handle", how];
        let (n_lines, n_status, _, _) = signalled(native(&exe, &args), libc::SIGINT);
        let (v_lines, v_status, v_err, _) = signalled(in_vm(&exe, &args), libc::SIGINT);
        let mut want: Vec<String> = first.map(String::from).into_iter().collect();
        want.push("got SIGINT".into());
        assert_eq!(n_lines, want, "{how}: native");
        assert_eq!(v_lines, want, "{how}: in the VM; stderr: {v_err}");
        assert_eq!(n_status.code(), Some(3), "{how}: native");
        assert_eq!(
            v_status.code(),
            Some(3),
            "{how}: in the VM; stderr: {v_err}"
        );
    }
}

#[test]
fn an_unhandled_sigint_kills_the_program_as_the_shell_reports_it() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    for how in ["pause", "spin"] {
        let args = ["default", how];
        let (_, n_status, _, _) = signalled(native(&exe, &args), libc::SIGINT);
        let (v_lines, v_status, v_err, _) = signalled(in_vm(&exe, &args), libc::SIGINT);
        assert_eq!(n_status.signal(), Some(libc::SIGINT));
        assert_eq!(shell_code(v_status), 130, "{how}: {v_err}");
        assert_eq!(shell_code(v_status), shell_code(n_status));
        assert!(v_lines.is_empty(), "{v_lines:?}");
        // One line, no register dump (no core for SIGINT).
        assert_eq!(
            v_err.trim_end(),
            format!(
                "lbrprof: error: '{}' was killed by signal 2: SIGINT from outside the VM",
                exe.display()
            ),
            "{how}"
        );
    }
}

#[test]
fn a_signal_from_outside_that_the_program_raises_again_is_reported_as_from_outside() {
    if !kvm_available() {
        return;
    }
    // Go and Python catch SIGINT/SIGTERM, clean up, restore the default action and raise
    // the signal again themselves: it killed them, but it came from outside.
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    let (n_lines, n_status, _, _) = signalled(native(&exe, &["reraise"]), libc::SIGINT);
    let (v_lines, v_status, v_err, _) = signalled(in_vm(&exe, &["reraise"]), libc::SIGINT);
    assert_eq!(n_status.signal(), Some(libc::SIGINT));
    assert_eq!(n_lines, ["cleaning up"]);
    assert_eq!(v_lines, n_lines, "{v_err}");
    assert_eq!(shell_code(v_status), 130, "{v_err}");
    assert_eq!(
        v_err.trim_end(),
        format!(
            "lbrprof: error: '{}' was killed by signal 2: SIGINT from outside the VM \
             (raised again by its handler)",
            exe.display()
        )
    );
}

/// coreutils `timeout` sends its SIGTERM to lbrprof and to lbrprof's process group, two
/// deliveries at once: one request, not a second one (which stops the VM at once). A
/// program spinning in ring 3 used to be stopped that way in most runs, before the
/// first SIGTERM reached it, and lbrprof said it "did not end".
#[test]
fn sigterm_to_lbrprof_and_its_group_at_once_is_one_request() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    for round in 0..3 {
        let mut cmd = in_vm(&exe, &["default", "spin"]);
        cmd.process_group(0);
        let mut p = start(cmd);
        p.wait_ready();
        std::thread::sleep(SETTLE);
        p.signal(libc::SIGTERM);
        // SAFETY: kill has no memory preconditions; the group is our child's own.
        let r = unsafe { libc::kill(-(p.child.id() as libc::pid_t), libc::SIGTERM) };
        assert_eq!(r, 0, "kill of the group failed");
        let (_, status, stderr, _) = p.finish();
        assert_eq!(
            shell_code(status),
            128 + libc::SIGTERM,
            "round {round}: {stderr}"
        );
        assert!(
            stderr.contains("SIGTERM from outside the VM") && !stderr.contains("did not end"),
            "round {round}: {stderr}"
        );
    }
}

#[test]
fn a_program_that_ignores_sigint_still_lets_lbrprof_stop() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    let (lines, status, err, took) = signalled(in_vm(&exe, &["ignore"]), libc::SIGINT);
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("was sent SIGINT and did not end"), "{err}");
    // SIGTERM after 0.5 s, the VM stopped after 1 s: well within a few seconds.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "took {took:?}: no grace"
    );
}

/// Start `cmd` in a session of its own with a new terminal (a pty) as its controlling
/// terminal and stdin: typing Ctrl-C there signals its foreground process group.
fn with_terminal(mut cmd: Command) -> (Command, std::fs::File) {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname on a descriptor we own; ptsname's
    // static buffer is copied at once (the test threads do not call it concurrently).
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
        (
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(m),
            PathBuf::from(name.to_str().unwrap()),
        )
    };
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave)
        .unwrap();
    cmd.stdin(tty);
    // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (cmd, master)
}

#[test]
fn ctrl_c_on_the_terminal_reaches_every_process_of_the_program() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    let mut results = Vec::new();
    for cmd in [native(&exe, &["family"]), in_vm(&exe, &["family"])] {
        let (mut cmd, mut master) = with_terminal(cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        assert_eq!(lines.recv_timeout(PATIENCE).as_deref(), Ok("ready"));
        // Give the child time to reach pause() (a signal before it is fine too).
        std::thread::sleep(SETTLE);
        master.write_all(b"\x03").unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!("Ctrl-C did not end the program (its child never got SIGINT?)");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let rest: Vec<String> = lines.iter().collect();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        results.push((rest, status.code(), err));
    }
    let want = vec![
        "got SIGINT in child".to_owned(),
        "got SIGINT in parent, child exited 5".to_owned(),
    ];
    assert_eq!(results[0].0, want, "native: {}", results[0].2);
    assert_eq!(results[1].0, want, "in the VM: {}", results[1].2);
    assert_eq!(results[0].1, Some(3));
    assert_eq!(results[1].1, Some(3), "{}", results[1].2);
}

#[test]
fn sigterm_to_record_vm_ends_the_program_and_keeps_a_readable_recording() {
    if !kvm_available() || !perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    let data = tmp.path().join("sig.data");
    let mut cmd = lbrprof();
    cmd.args(["record", "--vm", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe)
        .args(["default", "spin"]);
    let (lines, status, err, _) = signalled(cmd, libc::SIGTERM);
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(shell_code(status), 143, "{err}");
    assert!(
        err.contains("was killed by signal 15: SIGTERM from outside the VM; the recording is kept"),
        "{err}"
    );
    let report = lbrprof()
        .args(["report", "-i"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&report.stderr)
    );
    assert!(text.contains("outside_signal"), "{text}");
}

#[test]
fn record_vm_duration_sends_the_program_sigterm_then_stops_it() {
    if !kvm_available() || !perf_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    // (mode, exit status, what stderr says, shortest and longest time)
    let cases = [
        (
            "default",
            143,
            "was killed by signal 15: SIGTERM from outside the VM; the recording is kept",
        ),
        (
            "ignore",
            124,
            "did not finish within 0.500 s (--duration); stopped; the recording is kept",
        ),
    ];
    for (mode, code, says) in cases {
        let data = tmp.path().join(format!("{mode}.data"));
        let started = Instant::now();
        let out = lbrprof()
            .args(["record", "--vm", "--duration", "0.5", "-o"])
            .arg(&data)
            .arg("--")
            .arg(&exe)
            .args([mode, "spin"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{mode}: {err}");
        assert!(err.contains(says), "{mode}: {err}");
        // The ignoring program: SIGTERM at 0.5 s, the VM stopped 1 s later.
        if mode == "ignore" {
            assert!(took >= Duration::from_millis(1400), "{mode}: {took:?}");
        }
        assert!(took < Duration::from_secs(15), "{mode}: {took:?}");
        let info = lbrprof().arg("info").arg(&data).output().unwrap();
        assert!(
            info.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&info.stderr)
        );
        let text = String::from_utf8_lossy(&info.stdout);
        assert!(text.contains(&format!("exit status {code}")), "{text}");
    }
}

#[test]
fn a_signal_lbrprof_was_started_ignoring_stays_ignored_as_under_nohup() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path());
    let mut codes = Vec::new();
    for mut cmd in [
        native(&exe, &["default", "pause"]),
        in_vm(&exe, &["default", "pause"]),
    ] {
        // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut p = start(cmd);
        p.wait_ready();
        std::thread::sleep(SETTLE);
        p.signal(libc::SIGHUP);
        std::thread::sleep(SETTLE);
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "SIGHUP was not ignored"
        );
        p.signal(libc::SIGINT);
        let (lines, status, err, _) = p.finish();
        // Started ignored, as the program sees it.
        assert_eq!(lines, ["SIGHUP ignored"], "{err}");
        codes.push(shell_code(status));
    }
    assert_eq!(codes, [130, 130]);
}
