//! What a Linux program reads from outside that changes from run to run (issue 13): in
//! exact mode, or with `--vm-outside pinned`, its clocks are virtual and its process ids
//! start at 1000, so two runs read the same values and count the same; with
//! `--vm-outside host`, and without exact mode, it reads the host's time and lbrprof's pid.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{build_workload, kvm_available, lbrprof};

/// A run of `tests/workloads/linux_outside.c`: its "name value" lines, stdout, stderr,
/// lbrprof's pid.
struct Outside {
    values: BTreeMap<String, String>,
    stdout: String,
    stderr: String,
    lbrprof_pid: u32,
}

impl Outside {
    fn int(&self, name: &str) -> i64 {
        let v = self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("no {name} line:\n{}\n{}", self.stdout, self.stderr));
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is {v}:\n{}", self.stdout))
    }

    /// A clock's reading in nanoseconds.
    fn ns(&self, name: &str) -> i128 {
        let v = &self.values[name];
        let (s, ns) = v.split_once('.').unwrap_or_else(|| panic!("{name} is {v}"));
        s.parse::<i128>().unwrap() * 1_000_000_000 + ns.parse::<i128>().unwrap()
    }
}

fn run_outside(exe: &Path, flags: &[&str]) -> Outside {
    let child = lbrprof()
        .args(["run", "--vm"])
        .args(flags)
        .arg("--")
        .arg(exe)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lbrprof_pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{flags:?} failed:\n{stdout}\n{stderr}"
    );
    let values = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Outside {
        values,
        stdout,
        stderr,
        lbrprof_pid,
    }
}

/// The exact-mode counts of the run: instructions, branches and taken branches summed
/// over the vCPUs. (Which vCPU runs which thread is the host's scheduling: a thread may
/// start on a new vCPU when the one a process just left is not back in the pool yet,
/// so the per-vCPU split varies between runs; the totals do not.)
fn counts(stderr: &str) -> [u64; 3] {
    let mut total = [0u64; 3];
    let mut lines = 0;
    for l in stderr.lines().filter(|l| l.contains(" traced,")) {
        // "lbrprof: lbr: vCPU N: I instructions and B branches (T taken) traced, ..."
        let head = l.split(" traced,").next().unwrap();
        let words: Vec<&str> = head.split_whitespace().collect();
        let at = |w: &str| words.iter().position(|x| *x == w).unwrap();
        let num = |s: &str| -> u64 { s.trim_start_matches('(').parse().unwrap() };
        total[0] += num(words[at("instructions") - 1]);
        total[1] += num(words[at("branches") - 1]);
        total[2] += num(words[at("taken)") - 1]);
        lines += 1;
    }
    assert!(lines > 0, "no exact-mode counts:\n{stderr}");
    total
}

const EXACT: [&str; 5] = ["--lbr", "emulated", "--lbr-mode", "exact", "--stats"];

#[test]
fn exact_mode_pins_clocks_and_pids_so_two_runs_read_and_count_the_same() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_workload(tmp.path(), "linux_outside");
    let a = run_outside(&exe, &EXACT);
    let b = run_outside(&exe, &EXACT);
    assert_eq!(a.stdout, b.stdout, "two exact runs read the same values");
    assert_eq!(counts(&a.stderr), counts(&b.stderr), "and count the same");
    assert!(a.stderr.contains("a virtual clock"), "{}", a.stderr);

    // The clocks start at the documented epoch, tick once per read, and agree.
    assert_eq!(a.values["realtime"], "1735689600.000001000", "{}", a.stdout);
    assert_eq!(a.values["monotonic"], "1000.000002000");
    assert_eq!(a.int("time"), 1_735_689_600);
    let order = [
        "realtime",
        "monotonic",
        "boottime",
        "monotonic_raw",
        "realtime_coarse",
        "monotonic_coarse",
        "process_cputime",
        "thread_cputime",
    ];
    let offset = 1_735_688_600 * 1_000_000_000i128;
    for (i, name) in order.iter().enumerate() {
        let since_start = match *name {
            n if n.starts_with("realtime") => a.ns(n) - offset - 1_000 * 1_000_000_000,
            n if n.ends_with("cputime") => a.ns(n),
            n => a.ns(n) - 1_000 * 1_000_000_000,
        };
        assert_eq!(
            since_start,
            1_000 * (i as i128 + 1),
            "{name}:\n{}",
            a.stdout
        );
    }
    // A sleep, a timed-out poll, a timed-out absolute futex wait and rt_sigtimedwait
    // pass their time (to the microsecond: one clock read between) without waiting for
    // the host's.
    assert_eq!(a.int("slept_us"), 200_001);
    assert_eq!((a.int("poll"), a.int("polled_us")), (0, 50_001));
    assert_eq!(a.int("semwait_timedout"), 1);
    assert_eq!(a.int("semwait_us"), 30_000);
    assert_eq!(
        (a.int("sigwait_timedout"), a.int("sigwait_us")),
        (1, 20_001)
    );
    let end = a.ns("realtime_end") - a.ns("realtime");
    assert!(
        (300_000_000..310_000_000).contains(&end),
        "realtime advanced by {end} ns"
    );

    // Pids from 1000: the process, its parent outside, the forked child, the thread,
    // and /proc/self as each process sees it.
    for (name, want) in [
        ("pid", 1000),
        ("ppid", 999),
        ("tid", 1000),
        ("pgid", 1000),
        // The leader of its group in its parent's session, as a shell's job.
        ("sid", 999),
        ("main_proc_self", 1000),
        ("main_proc_stat", 1000),
        ("fork", 1001),
        ("child_pid", 1001),
        ("child_ppid", 1000),
        ("child_proc_self", 1001),
        ("child_proc_stat", 1001),
        ("wait4", 1001),
        ("child_status", 7),
        ("thread_tid", 1002),
        ("exe_link_is_the_program", 1),
        ("exe_opens_the_program", 1),
        ("thread_self", 1),
    ] {
        assert_eq!(a.int(name), want, "{name}:\n{}", a.stdout);
    }
}

#[test]
fn the_host_switch_and_sampled_mode_give_the_hosts_time_and_lbrprofs_pid() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_workload(tmp.path(), "linux_outside");
    let host_flags: [&[&str]; 2] = [
        &[
            "--lbr-mode",
            "exact",
            "--lbr",
            "emulated",
            "--vm-outside",
            "host",
        ],
        &[],
    ];
    for flags in host_flags {
        let r = run_outside(&exe, flags);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let realtime = r.ns("realtime") / 1_000_000_000;
        assert!(
            (now.as_secs() as i128 - realtime).abs() < 60,
            "{flags:?}: realtime {realtime}, the host's {}",
            now.as_secs()
        );
        assert!(!r.stderr.contains("virtual clock"), "{}", r.stderr);
        // The pid is lbrprof's, the parent this test; later ids follow it.
        let pid = i64::from(r.lbrprof_pid);
        assert_eq!(r.int("pid"), pid, "{flags:?}");
        assert_eq!(r.int("ppid"), i64::from(std::process::id()));
        assert_eq!(r.int("main_proc_self"), pid);
        assert_eq!(r.int("main_proc_stat"), pid);
        assert_eq!(r.int("child_pid"), r.int("wait4"));
        assert_eq!(r.int("child_proc_stat"), r.int("child_pid"));
        for name in [
            "exe_link_is_the_program",
            "exe_opens_the_program",
            "thread_self",
        ] {
            assert_eq!(r.int(name), 1, "{name}:\n{}", r.stdout);
        }
        // Sleeps and timeouts wait for real.
        assert!(r.int("slept_us") >= 200_000, "{}", r.stdout);
        assert!(r.int("polled_us") >= 50_000, "{}", r.stdout);
        assert!(r.int("semwait_us") >= 29_000, "{}", r.stdout);
    }
}

#[test]
fn python_reads_the_same_time_and_pid_on_every_pinned_run() {
    if !kvm_available() || !Path::new("/usr/bin/python3").exists() {
        return;
    }
    let code = "import time, os; print(time.time(), os.getpid(), time.monotonic()); \
                t = time.monotonic(); time.sleep(0.2); print(round(time.monotonic() - t, 6))";
    let run_pid = |flags: &[&str]| {
        let child = lbrprof()
            .args(["run", "--vm"])
            .args(flags)
            .args(["--", "/usr/bin/python3", "-c", code])
            .env_remove("PYTHONHASHSEED")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (String::from_utf8(out.stdout).unwrap(), pid)
    };
    let run = |flags: &[&str]| run_pid(flags).0;
    // What exact mode pins, without its interpreter's cost for a whole Python start-up.
    let a = run(&["--vm-outside", "pinned"]);
    assert_eq!(a, run(&["--vm-outside", "pinned"]));
    let fields: Vec<&str> = a.split_whitespace().collect();
    assert!(fields[0].starts_with("1735689600.0"), "{a}");
    assert_eq!(fields[1], "1000", "{a}");
    assert!(fields[2].starts_with("1000.0"), "{a}");
    // time.sleep returns at once, the clock advanced by the time asked for and a tick.
    assert_eq!(fields[3], "0.200002", "{a}");
    // Sampled mode keeps the host's.
    let (h, pid) = run_pid(&[]);
    let t: f64 = h.split_whitespace().next().unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - t).abs() < 60.0, "{h}");
    let slept: f64 = h.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(slept >= 0.2, "{h}");
    assert_eq!(
        h.split_whitespace().nth(1),
        Some(pid.to_string().as_str()),
        "{h}"
    );
}

#[test]
fn coreutils_sleep_works_with_and_without_pinning() {
    if !kvm_available() {
        return;
    }
    for flags in [&["--vm-outside", "pinned"][..], &[]] {
        let out = lbrprof()
            .args(["run", "--vm"])
            .args(flags)
            .arg("--")
            .args(["sleep", "0.2"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{flags:?}: {out:?}");
    }
}

/// Run `cmd` with a new pseudo terminal as its stdin and controlling terminal (a new
/// session, as a terminal emulator starts a shell); its output.
fn on_a_terminal(mut cmd: std::process::Command) -> std::process::Output {
    use std::os::fd::FromRawFd;
    use std::os::unix::process::CommandExt;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty fills the two ints; the other arguments may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    let (master, slave) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    cmd.stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid and ioctl are async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    drop(master);
    out
}

#[test]
fn job_control_hands_the_terminal_between_guest_process_groups_as_natively() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_workload(tmp.path(), "linux_jobctl");
    let native = on_a_terminal(std::process::Command::new(&exe));
    let mut vm = lbrprof();
    vm.args(["run", "--vm", "--"]).arg(&exe);
    let vm = on_a_terminal(vm);
    let text = String::from_utf8_lossy(&native.stdout).into_owned();
    assert!(native.status.success(), "{native:?}");
    assert!(text.contains("foreground_is_child 1"), "{text}");
    assert!(text.contains("no_such_group -1"), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&vm.stdout),
        text,
        "{}",
        String::from_utf8_lossy(&vm.stderr)
    );
    assert_eq!(vm.status.code(), native.status.code());
}
