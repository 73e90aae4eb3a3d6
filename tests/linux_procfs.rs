//! End-to-end tests of `/proc` as the guest's processes see it, as in a pid namespace:
//! a listing of `/proc` names the guest's processes (not the host's), every guest
//! process's `stat`, `status`, `comm`, `cmdline` and `task` directory are its own, so
//! `ps`, `pgrep`, `pkill` and `kill $(pgrep ...)` work on the guest's processes.

mod common;

use std::collections::BTreeSet;

use common::kvm_available;
use common::linux::{assert_identical, build_workload, native_and_vm_in, output_in};

/// A threaded program and its child read their `/proc` entries (task listing, thread
/// names, status, another process's stat/comm/cmdline, the `/proc` listing): the VM run
/// prints what the native run prints, with every libc.
#[test]
fn a_threaded_program_and_its_child_see_themselves_in_proc_as_natively() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("dynamic", "gcc", &["-pthread"][..]),
        ("musl", "musl-gcc", &["-static", "-pthread"][..]),
    ] {
        let exe = build_workload(tmp.path(), "linux_proc_threads", out, cc, flags);
        let (native, vm) = native_and_vm_in(tmp.path(), exe.to_str().unwrap(), &[]);
        let text = String::from_utf8_lossy(&native.stdout);
        for line in [
            "tasks: 3 (main 1, named workers 2)",
            "status: pid ok, ppid ok, threads 3",
            "inherited names: ok",
            "thread-self comm: ok",
            "child comm: the-child",
            "child stat: pid ok, ppid ok",
            "/proc lists: self 1, child 1",
        ] {
            assert!(text.contains(line), "{out}: native run: {text}");
        }
        assert!(!text.contains("WRONG"), "{out}: {text}");
        assert_identical(out, &native, &vm);
    }
}

/// The value after `key=` on the line of `text` that starts with `key=`.
fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
}

/// A shell with a background `sleep` sees the guest's processes in `ps`, `pgrep` and a
/// glob of `/proc`, and kills the sleep by `kill $(pgrep sleep)`.
#[test]
fn ps_pgrep_and_kill_see_the_guests_processes() {
    if !kvm_available() {
        return;
    }
    let script = r#"
sleep 30 & bg=$!
echo "bash=$$"
echo "bg=$bg"
ps -eo pid=,ppid=,comm= > ps.txt
echo "ps=$(tr -s ' ' < ps.txt | sed 's/^ //' | tr '\n' ',')"
echo "pgrep=$(pgrep -x sleep)"
set -- /proc/[0-9]*
echo "glob=$*"
cd /proc
set -- [0-9]*
echo "relative=$*"
cd - >/dev/null
echo "tasks=$(ls /proc/self/task | wc -l)"
echo "status=$(grep -E '^(Pid|PPid|Threads):' /proc/$$/status | tr -s '\t' ' ' | tr '\n' ',')"
echo "args=$(ps -o args= -p $bg)"
kill $(pgrep sleep)
wait $bg
echo "killed=$?"
echo "after=$(pgrep -x sleep || echo none)"
"#;
    let tmp = tempfile::tempdir().unwrap();
    let mut vm = common::lbrprof();
    vm.args([
        "run",
        "--vm",
        "--timeout",
        "120",
        "--",
        "/bin/bash",
        "-c",
        script,
    ]);
    let out = output_in(vm, tmp.path());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bash: u64 = value(&text, "bash").parse().unwrap();
    let bg: u64 = value(&text, "bg").parse().unwrap();
    // ps lists exactly the shell, its sleep and ps itself, with their parents.
    let ps: Vec<(u64, u64, &str)> = value(&text, "ps")
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2])
        })
        .collect();
    assert_eq!(ps.len(), 3, "{text}");
    assert_eq!(ps[0].0, bash, "{text}");
    assert_eq!(ps[0].2, "bash", "{text}");
    assert_eq!((ps[1].0, ps[1].1, ps[1].2), (bg, bash, "sleep"), "{text}");
    assert_eq!((ps[2].1, ps[2].2), (bash, "ps"), "{text}");
    assert_eq!(value(&text, "pgrep"), bg.to_string(), "{text}");
    // bash globs /proc itself: the shell and the sleep are all there is.
    let glob: BTreeSet<&str> = value(&text, "glob").split(' ').collect();
    let (bash_dir, bg_dir) = (format!("/proc/{bash}"), format!("/proc/{bg}"));
    assert_eq!(glob, BTreeSet::from([&*bash_dir, &*bg_dir]), "{text}");
    // And so does it in /proc, by a relative path.
    let relative: BTreeSet<u64> = value(&text, "relative")
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(relative, BTreeSet::from([bash, bg]), "{text}");
    assert_eq!(value(&text, "tasks"), "1", "{text}");
    assert_eq!(
        value(&text, "status"),
        format!("Pid: {bash},PPid: {},Threads: 1,", ps[0].1),
        "{text}"
    );
    assert_eq!(value(&text, "args"), "sleep 30", "{text}");
    assert_eq!(value(&text, "killed"), "143", "{text}");
    assert_eq!(value(&text, "after"), "none", "{text}");
    // No host process is reachable by its pid: lbrprof's parent, this test, is not a
    // guest process.
    let mut vm = common::lbrprof();
    let me = std::process::id().to_string();
    vm.args([
        "run",
        "--vm",
        "--",
        "/bin/cat",
        &format!("/proc/{me}/status"),
    ]);
    let out = output_in(vm, tmp.path());
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
