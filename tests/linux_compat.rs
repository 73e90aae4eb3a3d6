//! End-to-end tests of the Linux personality's compatibility corners: the legacy
//! vsyscall page, execve from a threaded process (and threads started after it on the
//! ended threads' vCPUs), writers blocked on a full pipe, signals to a busy process,
//! signals interrupting blocked calls, what a signal from another process tells its
//! handler (SIGCHLD, kill), the FPU state in signal frames, sessions and controlling
//! terminals (forkpty), CPU time and memory accounting (getrusage, times, CPU clocks),
//! and a real JVM. Programs are compiled at test time and compared byte for byte
//! (stdout, stderr, exit status) with their native runs under `lbrprof run --vm --`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::kvm_available;
use common::linux::{assert_identical, build_workload as build, native_and_vm_in as native_and_vm};

/// Builds `tests/workloads/NAME.c` with glibc (dynamic and static) and musl (static),
/// runs each build natively and under `lbrprof run --vm --`, and checks that the native
/// run prints every line of `expect` and the VM run is byte-identical to it. Returns each
/// build's name and native output.
fn identical_with_every_libc(name: &str, expect: &[&str]) -> Vec<(&'static str, String)> {
    let tmp = tempfile::tempdir().unwrap();
    let mut texts = Vec::new();
    for (out, cc, flags) in [
        ("dynamic", "gcc", &[][..]),
        ("static", "gcc", &["-static"][..]),
        ("musl", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), name, out, cc, flags);
        let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &[]);
        let text = String::from_utf8_lossy(&native.stdout).into_owned();
        for line in expect {
            assert!(text.contains(line), "{out}: native run: {text}");
        }
        assert_identical(out, &native, &vm);
        texts.push((out, text));
    }
    texts
}

#[test]
fn calls_into_the_vsyscall_page_answer_like_natively() {
    if !kvm_available() {
        return;
    }
    for (out, text) in identical_with_every_libc("linux_vsyscall", &["time: ok"]) {
        assert!(!text.contains("WRONG"), "{out}: {text}");
    }
}

#[test]
fn execve_from_a_threaded_process_ends_the_other_threads() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("glibc", "gcc", &["-pthread"][..]),
        ("glibc-static", "gcc", &["-pthread", "-static"][..]),
        ("musl-static", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_exec_threads", out, cc, flags);
        let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &[]);
        assert_eq!(native.status.code(), Some(3), "{out}: native run");
        let text = String::from_utf8_lossy(&native.stdout);
        assert!(text.contains("after-thread: same pid yes"), "{out}: {text}");
        assert_identical(out, &native, &vm);
    }
}

/// The threads an execve ends are busy in system calls; the next program's threads
/// start on their vCPUs and must start as themselves (a thread ended just after its
/// call's result was written for it once came back to life in the new program, on its
/// old registers: "stack smashing detected", faults, hangs; about one run in four of
/// this workload before the fix).
#[test]
fn threads_started_after_an_execve_do_not_inherit_an_ended_threads_registers() {
    if !kvm_available() {
        return;
    }
    let texts = identical_with_every_libc("linux_exec_busy", &["round 3: 5 threads, 0 wrong"]);
    for (out, text) in texts {
        assert_eq!(text.matches(", 0 wrong").count(), 4, "{out}: {text}");
    }
}

#[test]
fn a_writer_blocked_on_a_full_pipe_lets_its_reader_drain_it() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("glibc", "gcc", &["-pthread"][..]),
        ("musl-static", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_pipe_full", out, cc, flags);
        let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &["4"]);
        let text = String::from_utf8_lossy(&native.stdout);
        assert!(
            text.contains("writer thread: 4194304 bytes, 0 wrong"),
            "{out}: {text}"
        );
        assert_identical(out, &native, &vm);
    }
}

#[test]
fn a_signal_to_a_busy_sleeping_or_waiting_process_arrives_at_once() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path(), "linux_kill_busy", "kill_busy", "gcc", &[]);
    let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &[]);
    let text = String::from_utf8_lossy(&native.stdout);
    for body in [7, 8, 9] {
        let line = format!("signal 10: child exited {body}, in time yes");
        assert!(text.contains(&line), "{text}");
    }
    assert_eq!(text.matches("child killed by 15, in time yes").count(), 3);
    assert_identical("kill to a busy child", &native, &vm);
}

#[test]
fn signals_interrupt_blocked_calls_like_natively() {
    if !kvm_available() {
        return;
    }
    let texts = identical_with_every_libc(
        "linux_signal_wait",
        &[
            "read, no SA_RESTART: -1 EINTR, handled 1",
            "read, SA_RESTART: 1 ok, handled 1",
            "epoll_wait, SA_RESTART: -1 EINTR, handled 1",
            "sigsuspend: -1 EINTR, handled 1, blocked after 1",
            "waitpid again: child, status 4",
            "poll with SIGCHLD default: 0 ok",
        ],
    );
    for (out, text) in texts {
        assert_eq!(text.matches("in time yes").count(), 8, "{out}: {text}");
    }
}

/// The program's own descriptors under every name Linux gives them: `/proc/self/fd/N`
/// (readlink, and an open that reopens the file), `/dev/fd/N`, `/dev/stdin`, bash's
/// process substitution, a listing of the directory, `fdinfo`, and an exec of a
/// descriptor's link (fexecve). They used to be hidden altogether.
#[test]
fn the_programs_descriptors_are_its_own_in_proc_and_dev_fd() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("five"), "12345").unwrap();
    let script = "exec 5<five; readlink /proc/self/fd/5 /dev/fd/5 | sed 's|.*/||'; \
        cat /dev/fd/5; echo; cat <(echo substituted); diff <(echo a) <(echo b); echo \"diff $?\"; \
        echo piped | cat /dev/stdin; \
        python3 -c 'import os; os.closerange(6, 1 << 16); print(sorted(os.listdir(\"/dev/fd\")))'; \
        head -1 /proc/self/fdinfo/5; exec 7</bin/echo; /proc/self/fd/7 fexecve ok";
    let (native, vm) = native_and_vm(tmp.path(), "bash", &["-c", script]);
    let text = String::from_utf8_lossy(&native.stdout);
    for line in [
        "five\nfive\n12345\nsubstituted\n",
        "> b\ndiff 1\npiped\n",
        "fexecve ok",
    ] {
        assert!(text.contains(line), "native run: {text}");
    }
    assert_identical("descriptors", &native, &vm);
}

/// valgrind inside the VM: it grows its client's stack from its SIGSEGV handler (which it
/// installs after reading SIGKILL's action: that read was refused, so it installed none),
/// and reads its client's symbols through /proc/self/fd. Its report is the native one.
#[test]
fn valgrind_memcheck_reports_in_the_vm_what_it_reports_natively() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(
        tmp.path(),
        "memcheck_errors",
        "memcheck_errors",
        "gcc",
        &["-O0"],
    );
    let args = [
        "-q",
        "--leak-check=full",
        "--error-exitcode=3",
        exe.to_str().unwrap(),
    ];
    let (native, vm) = native_and_vm(tmp.path(), "valgrind", &args);
    // The lines carry the process id: "==1234== Invalid write of size 4".
    let report = |o: &std::process::Output| {
        let text = String::from_utf8_lossy(&o.stderr);
        let pid = pid_prefix(&text);
        text.replace(&pid, "==PID==")
    };
    let text = report(&native);
    for line in [
        "Invalid write of size 4",
        "main (memcheck_errors.c:10)",
        "7 bytes in 1 blocks are definitely lost",
    ] {
        assert!(text.contains(line), "native run: {text}");
    }
    assert_eq!(native.status.code(), Some(3));
    assert_eq!(report(&vm), text, "valgrind's report differs in the VM");
    assert_eq!(vm.stdout, native.stdout);
    assert_eq!(vm.status.code(), native.status.code());
}

/// The `==PID==` prefix of a valgrind report's first line.
fn pid_prefix(text: &str) -> String {
    let end = text[2..].find("==").map_or(0, |i| i + 4);
    text[..end].to_string()
}

/// `/proc/self/auxv`, `cmdline` and `environ` are what exec gave the program (they were
/// lbrprof's: a Go program with abseil, gcloud's local-extract, took lbrprof's vDSO
/// address from that auxv and died reading it).
#[test]
fn proc_self_auxv_cmdline_and_environ_are_the_programs() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("dynamic", "gcc", &[][..]),
        ("static", "gcc", &["-static"][..]),
        ("musl", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_procself", out, cc, flags);
        let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &["second", "x"]);
        let text = String::from_utf8_lossy(&native.stdout);
        for line in [
            "auxv: ends with AT_NULL yes, entries as getauxval says: yes",
            "argv's yes, second argument 'second'",
            "after rewriting: 'Xecond'",
            "environ: PATH=found",
        ] {
            assert!(text.contains(line), "{out}: native run: {text}");
        }
        assert_identical(out, &native, &vm);
    }
}

/// A read-only reservation bigger than the VM's memory (Starlark's, in Go programs such
/// as kpt, failed with ENOMEM: every page was given a frame when it was mapped).
#[test]
fn a_read_only_reservation_bigger_than_the_vm_reads_as_zeros() {
    if !kvm_available() {
        return;
    }
    identical_with_every_libc(
        "linux_reserve",
        &[
            "mapped 4 GiB read-only",
            "zeros: yes",
            "page reads back: written, its neighbour: 0",
            "mprotect back to read-only: 0, still written",
            "munmap: 0",
        ],
    );
}

#[test]
fn file_locks_between_processes_and_close_range_work_like_natively() {
    if !kvm_available() {
        return;
    }
    identical_with_every_libc(
        "linux_locks",
        &[
            "child F_SETLK write [50,60): EAGAIN",
            "child F_GETLK [10,15): ok, type F_WRLCK, start 0, len 100",
            "child F_SETLKW interrupted: EINTR, handled 1",
            "child F_SETLKW after the parent's unlock: ok, waited yes",
            "child flock LOCK_SH|LOCK_NB: EAGAIN",
            "child flock LOCK_SH after the parent's unlock: ok, waited yes",
            "close_range CLOEXEC: ok, flags 0 1 1",
            "close_range: ok, fd above closed: EBADF, below open: yes",
            "fchown to its owner: ok",
        ],
    );
}

#[test]
fn resource_limits_are_the_programs_own_and_bound_descriptors() {
    if !kvm_available() {
        return;
    }
    // setrlimit used to answer EPERM (gpg: "Fatal: can't disable core dumps"), and an
    // execve of /proc/self/exe ran lbrprof's binary in the guest.
    identical_with_every_libc(
        "linux_limits",
        &[
            "setrlimit core 0: 0",
            "soft > hard: -1 Invalid argument",
            "bad resource: -1 Invalid argument",
            "open after 9: ",
            "(last fd 11)",
            "dup2 to 12: -1 Bad file descriptor",
            "F_DUPFD 12: -1 Invalid argument",
            "after exec, nofile: soft 12",
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let script = "ulimit -n 100; ulimit -n; ulimit -c 0; ulimit -c; ulimit -S -s 4096; ulimit -s";
    let (native, vm) = native_and_vm(tmp.path(), "bash", &["-c", script]);
    assert_eq!(String::from_utf8_lossy(&native.stdout), "100\n0\n4096\n");
    assert_identical("bash ulimit", &native, &vm);
}

#[test]
fn proc_self_maps_lists_the_programs_own_mappings() {
    if !kvm_available() {
        return;
    }
    // It was lbrprof's: glibc's pthread_getattr_np found no main-thread stack (ENOENT).
    identical_with_every_libc(
        "linux_maps",
        &[
            "main: found 1, r-xp, the executable yes",
            "local: found 1, rw-p [stack]",
            "anonymous page 1: found 1, ---p ''",
            "unmapped page: found 0",
            "thread-self: found 1",
            // (musl finds the stack by probing with mremap: its size is what was touched.)
            "pthread_getattr_np: 0, local inside yes",
        ],
    );
}

#[test]
fn signalfd_reads_blocked_signals_like_natively() {
    if !kvm_available() {
        return;
    }
    // signalfd4 answered ENOSYS: postgres stopped at "signalfd() failed" (its latch),
    // qemu-img listed it; rt_sigpending too.
    identical_with_every_libc(
        "linux_signalfd",
        &[
            "read: 128 bytes, signal 10, code 0, from us 1",
            "two pending: 256 bytes, signals 10 12",
            "epoll_wait: 1, cookie 7",
            "from the child: signal 12, pid is the child's 1",
            "blocking read: 128 bytes, signal 14",
            "SIGUSR1 still pending 1",
            "short buffer: -1 Invalid argument",
        ],
    );
}

#[test]
fn sigtimedwait_takes_blocked_signals_like_natively() {
    if !kvm_available() {
        return;
    }
    // rt_sigtimedwait answered ENOSYS (qemu-img's event loop waits with it); signalfd
    // did not read a signal sent to the reading thread alone, and a forked child's
    // signalfd was not woken by the child's signals.
    identical_with_every_libc(
        "linux_sigwait",
        &[
            "sigwait: 0, signal 10, handler ran 0",
            "zero timeout: -1 Resource temporarily unavailable",
            "short timeout: -1 Resource temporarily unavailable, waited it 1",
            "bad timeout: -1 Invalid argument",
            "from the child: 12, code 0, pid is the child's 1",
            "from a thread to us: 12",
            "from a thread to the process: 10, code 0, handler ran 0",
            "realtime 1: 1",
            "realtime 3: -1 Resource temporarily unavailable",
            "sigqueue: 1, code -1, value 4242, pid is ours 1",
            "sigqueue from the child: 2, code -1, value 77, pid is the child's 1",
            "timer: 14, code 128",
            "interrupted: -1 Interrupted system call, alarm handled 1",
            "mask after: usr1 1 usr2 1 alrm 0",
            "signalfd read: 128, signal 12",
            "blocking signalfd read, thread's pthread_kill: 128, signal 12",
            "child's signalfd: poll 1, read 128, signal 10, from the parent 1",
            "parent's signalfd after: poll 0",
        ],
    );
}

#[test]
fn server_process_calls_work_like_natively() {
    if !kvm_available() {
        return;
    }
    // prctl(PR_SET_PDEATHSIG) answered EINVAL: postgres's checkpointer and other
    // children ended at start ("could not request parent death signal"); its
    // checkpoints' sync_file_range answered ENOSYS.
    identical_with_every_libc(
        "linux_server_calls",
        &[
            "initial: 0, pdeathsig 0",
            "bad signal: -1 Invalid argument",
            "now: 15",
            "child inherits: 0",
            "grandchild: signal 10, code 0",
            "sync_file_range: 0",
            "sync_file_range bad flags: -1 Invalid argument",
        ],
    );
}

#[test]
fn a_process_ending_with_blocked_threads_closes_its_descriptors() {
    if !kvm_available() {
        return;
    }
    // Its threads blocked in futex waits stayed blocked until the VM stopped, and kept
    // the process and its pipe open: `sh -c 'go version | cut -f1'` and rustc hung.
    identical_with_every_libc(
        "linux_exit_blocked",
        &[
            "mode 1: read 13 to the end, exit status 1",
            "mode 7: read 13 to the end, exit status 7",
        ],
    );
}

/// A program of a Debian package, if the machine has it (CI installs it: a skip there
/// is a failure).
fn installed(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var_os("LBRPROF_REQUIRE_KVM").is_some() {
        panic!("LBRPROF_REQUIRE_KVM is set but there is no {path} (.ci/run installs {package})");
    }
    eprintln!("skipped: needs {path} (Debian {package})");
    false
}

#[test]
fn qemu_img_creates_converts_and_inspects_images_like_natively() {
    if !kvm_available() || !installed("/usr/bin/qemu-img", "qemu-utils") {
        return;
    }
    // qemu-img's event loop waits in rt_sigtimedwait (ENOSYS before) and tries
    // io_uring first. Each step runs natively in one directory and in the VM in
    // another, on the same input; the images each leaves are compared too.
    let native_dir = tempfile::tempdir().unwrap();
    let vm_dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for d in [&native_dir, &vm_dir] {
        std::fs::write(d.path().join("raw.bin"), &data).unwrap();
    }
    let steps: [&[&str]; 7] = [
        &["create", "-f", "qcow2", "empty.qcow2", "64M"],
        &["info", "empty.qcow2"],
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "raw.bin",
            "data.qcow2",
        ],
        &["info", "--output=json", "data.qcow2"],
        &["convert", "-O", "raw", "data.qcow2", "back.raw"],
        &["compare", "raw.bin", "back.raw"],
        &["check", "data.qcow2"],
    ];
    for args in steps {
        let (native, vm) = common::linux::native_and_vm_apart(
            native_dir.path(),
            vm_dir.path(),
            "/usr/bin/qemu-img",
            args,
        );
        let what = format!("qemu-img {}", args.join(" "));
        assert!(native.status.success(), "{what}: native run failed");
        assert_identical(&what, &native, &vm);
    }
    for file in ["empty.qcow2", "data.qcow2", "back.raw"] {
        let a = std::fs::read(native_dir.path().join(file)).unwrap();
        let b = std::fs::read(vm_dir.path().join(file)).unwrap();
        assert!(a == b, "{file} differs from the native run's");
    }
}

#[test]
#[ignore = "postgres refuses to run as root: run as a user who may open /dev/kvm, with postgresql installed"]
fn postgres_initdb_start_query_and_stop_like_natively() {
    if !kvm_available() {
        return;
    }
    // The whole life of a database in one shell, natively and in one VM: initdb, a
    // postmaster and its children (PR_SET_PDEATHSIG, signalfd latches, shared memory,
    // sync_file_range at checkpoints), psql over a Unix socket, a fast shutdown.
    let bin = Path::new("/usr/lib/postgresql/15/bin");
    assert!(bin.join("initdb").exists(), "needs Debian postgresql-15");
    let script = "initdb -D data -A trust -U postgres --no-sync >/dev/null && \
        pg_ctl -s -D data -o \"-k $PWD -p 5499 -c listen_addresses=\" -l log -w start && \
        psql -h $PWD -p 5499 -U postgres -c 'create table t(a int); \
          insert into t select generate_series(1, 1000); select sum(a), 6 * 7 as answer from t;' && \
        pg_ctl -s -D data -m fast -w stop";
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let native_dir = tempfile::tempdir().unwrap();
    let vm_dir = tempfile::tempdir().unwrap();
    let mut native = Command::new("/bin/sh");
    native.args(["-c", script]).env("PATH", &path);
    let native = common::linux::output_in(native, native_dir.path());
    let mut vm = common::lbrprof();
    vm.args([
        "run",
        "--vm",
        "--timeout",
        "300",
        "--",
        "/bin/sh",
        "-c",
        script,
    ])
    .env("PATH", &path);
    let vm = common::linux::output_in(vm, vm_dir.path());
    let text = String::from_utf8_lossy(&native.stdout);
    assert!(text.contains(" 500500 |     42"), "native run: {text}");
    assert_identical("postgres", &native, &vm);
}

#[test]
fn file_system_calls_past_open_and_read_work_like_natively() {
    if !kvm_available() {
        return;
    }
    identical_with_every_libc(
        "linux_files",
        &[
            "symlink: ok, readlink a",
            "mkfifo: ok, is a FIFO yes",
            "utimensat: ok, mtime 1200000000",
            "utime: ok, mtime 1500000002",
            "utimensat bad nsec: EINVAL",
            "truncate: ok, size 5",
            "copy_file_range: 3, offsets 4 5, copied ell",
            "pwritev 7, preadv 7: xyz 1234",
            "inotify: watch ok, event IN_CREATE for new-file",
            "memfd_create: ok, reads back memfd!, cloexec 1",
            "get_mempolicy: ok, mode 0",
        ],
    );
}

#[test]
fn signals_interrupt_a_write_blocked_on_a_full_pipe_like_natively() {
    if !kvm_available() {
        return;
    }
    identical_with_every_libc(
        "linux_write_intr",
        &[
            "write to a full pipe, no SA_RESTART: -1 EINTR, handled 1",
            "write to a full pipe, SA_RESTART: 1 ok, handled 1",
            "large write interrupted: 65536 ok, handled 1",
            "write with an ignored signal: 100000 ok, reader saw it all yes",
        ],
    );
}

#[test]
fn timer_signals_say_who_sent_them_like_natively() {
    if !kvm_available() {
        return;
    }
    identical_with_every_libc(
        "linux_timer_info",
        &[
            "setitimer: signo 14 code SI_KERNEL pid 0 uid 0",
            "timer: signo 10 code SI_TIMER id matches yes overrun 0 value 42",
            "blocked timer: code SI_TIMER value 7 overrun > 0 yes, timer_getoverrun agrees yes",
            "blocked timer across system calls: value 8, overruns count the expiries yes",
            "raise after an ignored timer signal: 1 delivery, code SI_TKILL",
            "realtime timers: values 1, 2, 3 once each yes, overruns 0 0 and > 0 yes",
        ],
    );
}

#[test]
fn signals_between_processes_say_who_sent_them_like_natively() {
    if !kvm_available() {
        return;
    }
    identical_with_every_libc(
        "linux_sigchld_info",
        &[
            "child exits 7: signo 17 code CLD_EXITED pid is the child yes uid matches yes status 7",
            "child killed by SIGTERM: signo 17 code CLD_KILLED pid is the child yes uid matches yes status 15",
            "kill from a child: signo 10 code SI_USER pid is the child yes uid matches yes",
            "then it exits 0: signo 17 code CLD_EXITED pid is the child yes uid matches yes status 0",
        ],
    );
}

#[test]
fn signal_handlers_see_and_change_the_fpu_through_fpregs_like_natively() {
    if !kvm_available() {
        return;
    }
    identical_with_every_libc(
        "linux_signal_fpregs",
        &[
            "fault: fpregs set yes, xmm0 1.5, st0 3.75; after return xmm1 2.5, st0 7.25",
            "raise: fpregs mxcsr 0x3f80, the handler ran with 0x1f80, after return 0x5f80",
        ],
    );
}

#[test]
fn avx_state_survives_signal_handlers_and_their_frames_like_natively() {
    if !kvm_available() {
        return;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.split_whitespace().any(|f| f == "avx") {
        eprintln!("skipped: this CPU has no AVX");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let probe = build(tmp.path(), "linux_signal_avx", "probe", "gcc", &[]);
    let (_, vm) = native_and_vm(tmp.path(), probe.to_str().unwrap(), &[]);
    if vm.stdout == b"no AVX\n" {
        eprintln!(
            "skipped: the guest's CPUID shows no usable AVX on this host (OSXSAVE clear), \
             so the program has no AVX state to keep"
        );
        return;
    }
    // A handler that clobbers the YMM upper halves (a signal sent to itself, and timer
    // signals during a loop that keeps values there), and one that edits ymm8 in its
    // frame's XSAVE area: the interrupted code gets its own state back, or the edit.
    identical_with_every_libc(
        "linux_signal_avx",
        &[
            "magic xstate",
            "kept yes",
            "edited low kept high 5a5a5a5a5a5a5a5a 5a5a5a5a5a5a5a5a",
            "async intact",
        ],
    );
}

#[test]
fn system_call_results_survive_a_storm_of_signals() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path(), "linux_kick_storm", "kick_storm", "gcc", &[]);
    let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &[]);
    assert_eq!(
        String::from_utf8_lossy(&native.stdout),
        "wrong results: 0, signals arrived\nchild exited 0 after many signals\n"
    );
    assert_identical("kick storm", &native, &vm);
}

#[test]
fn coreutils_timeout_ends_a_child_blocked_in_read() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    let ok = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(ok.success());
    // `0<>fifo`: stdin open for reading and writing, so cat's read blocks (no EOF);
    // timeout sends it SIGTERM after 0.5 s and exits 124.
    let script = "timeout 0.5 cat 0<>fifo; echo status $?";
    let (native, vm) = native_and_vm(tmp.path(), "/bin/sh", &["-c", script]);
    assert_eq!(String::from_utf8_lossy(&native.stdout), "status 124\n");
    assert_identical("timeout 0.5 cat", &native, &vm);
}

/// The JDK, if the machine has one (CI installs it: a skip there is a failure).
fn javac() -> Option<PathBuf> {
    let javac = PathBuf::from("/usr/bin/javac");
    if javac.exists() && Path::new("/usr/bin/java").exists() {
        return Some(javac);
    }
    if std::env::var_os("LBRPROF_REQUIRE_KVM").is_some() {
        panic!("LBRPROF_REQUIRE_KVM is set but there is no JDK (.ci/run installs it)");
    }
    eprintln!("skipped: needs a JDK (/usr/bin/javac, /usr/bin/java)");
    None
}

#[test]
fn the_jvm_runs_a_java_program_like_natively() {
    if !kvm_available() {
        return;
    }
    let Some(javac) = javac() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/LinuxJava.java");
    let status = Command::new(javac)
        .arg("-d")
        .arg(tmp.path())
        .arg(&src)
        .status()
        .expect("javac");
    assert!(status.success(), "javac failed");
    let cp = tmp.path().to_str().unwrap();
    let (native, vm) = native_and_vm(tmp.path(), "/usr/bin/java", &["-cp", cp, "LinuxJava"]);
    let text = String::from_utf8_lossy(&native.stdout);
    assert!(text.contains("sum 59999997"), "{text}");
    assert_identical("java", &native, &vm);
    let (native, vm) = native_and_vm(tmp.path(), "/usr/bin/java", &["-version"]);
    assert_identical("java -version", &native, &vm);
}

#[test]
fn sessions_and_controlling_terminals_work_like_natively() {
    if !kvm_available() {
        return;
    }
    // forkpty's child makes the pseudo-terminal its controlling one (TIOCSCTTY), as
    // pexpect, `script` and Python's pty.fork do; the VM's sessions are its own.
    for (out, text) in identical_with_every_libc(
        "linux_sessions",
        &[
            "setsid of a group leader: EPERM",
            "written to /dev/tty",
            "the job is in the foreground: yes",
            "the foreground group after its leader ended: hup",
        ],
    ) {
        assert!(!text.contains("wrong"), "{out}: {text}");
    }
}

#[test]
fn cpu_time_and_memory_use_are_accounted_like_natively() {
    if !kvm_available() {
        return;
    }
    // getrusage, wait4's rusage, times() and the CPU clocks of the process, a thread
    // and a child read the guest threads' own CPU time (no more all-zero answers).
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("glibc", "gcc", &["-pthread"][..]),
        ("musl", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_rusage", out, cc, flags);
        let (native, vm) = native_and_vm(tmp.path(), exe.to_str().unwrap(), &[]);
        let text = String::from_utf8_lossy(&native.stdout);
        assert!(
            text.contains("wait4 tells the child's time: ok") && !text.contains("WRONG"),
            "{out}: native run: {text}"
        );
        assert_identical(out, &native, &vm);
    }
}

#[test]
fn sendmmsg_and_recvmmsg_work_like_natively() {
    if !kvm_available() {
        return;
    }
    // sendmmsg answered ENOSYS, and glibc's resolver (A and AAAA queries in one
    // sendmmsg) failed every AF_UNSPEC lookup through DNS: pip and curl found no host.
    identical_with_every_libc(
        "linux_mmsg",
        &[
            "udp: recvmmsg 3: alpha(5) be(2) gamma-delta(11)",
            "udp: from 127.0.0.1: yes",
            "unix: recvmmsg 3: alpha(5) be(2) gamma-delta(11)",
            "bad descriptor: -1 Bad file descriptor",
        ],
    );
}
