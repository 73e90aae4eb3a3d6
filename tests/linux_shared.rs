//! End-to-end tests of memory shared between guest processes (issue #13): anonymous
//! `MAP_SHARED` regions across fork, process-shared mutexes, condition variables and
//! semaphores (futexes in shared memory), `shm_open`, writable shared mappings of a
//! regular file (written back to the file, coherent with read()/write()), munmap and
//! mremap of parts of shared regions, System V segments (shmget/shmat/shmdt/shmctl),
//! and Python's `multiprocessing`. Each program runs
//! natively and under `lbrprof run --vm --`; stdout, stderr and the exit status must be
//! byte-identical, and so must the file the program leaves behind.

mod common;

use std::path::Path;
use std::process::Command;

use common::linux::output_in;
use common::linux::{
    assert_identical, build_workload as build, native_and_vm_apart as native_and_vm,
};
use common::{kvm_available, lbrprof};

#[test]
fn shared_memory_between_processes_behaves_as_natively_with_every_libc() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("glibc", "gcc", &["-pthread"][..]),
        ("glibc-static", "gcc", &["-pthread", "-static"][..]),
        ("musl-static", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_shared", out, cc, flags);
        let native_dir = tmp.path().join(format!("{out}-native"));
        let vm_dir = tmp.path().join(format!("{out}-vm"));
        std::fs::create_dir(&native_dir).unwrap();
        std::fs::create_dir(&vm_dir).unwrap();
        let (native, vm) = native_and_vm(&native_dir, &vm_dir, exe.to_str().unwrap(), &[]);
        let text = String::from_utf8_lossy(&native.stdout);
        for line in [
            "a: child exit 5, parent reads \"written by the child\"",
            "b: 3 children done (condvar), 0 failed; by mutex 60000, by semaphore 60000",
            "c: child exit 0, parent reads \"child wrote page 2\", object size 8192",
            "d: pread sees \"middle\" before msync",
            "d: a private mapping made now sees \"middle\"",
            "d: mapping sees pwrite's \"WRITE\"",
            "d: mapping sees sendfile's \"SENDFILE\"",
            "d: read after munmap: 10000 bytes, \"MAPPED\" \"CHILD\" \"WRITE\"",
            "e: anonymous after munmap/mremap: 11 30 40 50 60 70",
            "e: the object has \"child, page 7\"",
        ] {
            assert!(
                text.contains(line),
                "{out}: native run lacks {line:?}: {text}"
            );
        }
        assert!(!text.contains("FAILED"), "{out}: {text}");
        assert_identical(out, &native, &vm);
        // The mapping written after the last msync reached the file when the program
        // ended; the page past the end of the file did not make it longer.
        let native_file = std::fs::read(native_dir.join("shared.dat")).unwrap();
        let vm_file = std::fs::read(vm_dir.join("shared.dat")).unwrap();
        assert_eq!(native_file.len(), 10000, "{out}");
        assert_eq!(&native_file[4097..4107], b"LAST WORDS", "{out}");
        assert!(
            vm_file == native_file,
            "{out}: the file the VM run left differs"
        );
    }
}

#[test]
fn system_v_shared_memory_behaves_as_natively_with_every_libc() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("sysv-glibc", "gcc", &["-pthread"][..]),
        ("sysv-glibc-static", "gcc", &["-pthread", "-static"][..]),
        ("sysv-musl-static", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_sysv", out, cc, flags);
        let (native, vm) = native_and_vm(tmp.path(), tmp.path(), exe.to_str().unwrap(), &[]);
        let text = String::from_utf8_lossy(&native.stdout);
        for line in [
            "IPC_STAT: size 10000, attached 1, mode 600, creator is us 1",
            "child: inherited sees 'from the parent', second attachment sees 'from the parent'",
            "parent: counter 40000, text 'from a child', attached 1",
            "shmat SHM_RND: ok, at the hint 1, same memory 1",
            "shmdt: ok, again: Invalid argument, attached 1",
            "again with IPC_EXCL: File exists",
            "lookup after IPC_RMID: No such file or directory",
            "IPC_STAT after: Invalid argument",
        ] {
            assert!(
                text.contains(line),
                "{out}: native run lacks {line:?}: {text}"
            );
        }
        assert_identical(out, &native, &vm);
    }
}

#[test]
fn python_multiprocessing_pool_and_shared_value_match_native() {
    if !kvm_available() {
        return;
    }
    // A python3 found through PATH may be a pyenv shim (a shell script that execs
    // another python): the system's is the one to compare.
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        eprintln!("skipped: {python} is not installed");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/linux_shared_mp.py");
    let tmp = tempfile::tempdir().unwrap();
    let (native, vm) = native_and_vm(tmp.path(), tmp.path(), python, &[script.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&native.stdout);
    assert!(
        text.contains("pool.map: [0, 1, 4, 9, 16, 25, 36, 49]"),
        "native run: {text}"
    );
    assert!(
        text.contains("value: 4000 want 4000 exit codes [0, 0]"),
        "native run: {text}"
    );
    assert_identical("python3 multiprocessing", &native, &vm);
}

/// `record --vm` runs the same program as `run --vm` (the emulated LBR on, sampled):
/// the output is the native one and every guest process is in the recording.
#[test]
fn recording_processes_that_share_memory_keeps_their_output_and_every_process() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path(), "linux_shared", "musl", "musl-gcc", &["-static"]);
    let native = output_in(Command::new(&exe), tmp.path());
    let data = tmp.path().join("shared.data");
    let mut rec = lbrprof();
    rec.args(["record", "--vm", "-o"])
        .arg(&data)
        .arg("--")
        .arg(&exe);
    let vm = output_in(rec, tmp.path());
    assert_eq!(
        String::from_utf8_lossy(&vm.stdout),
        String::from_utf8_lossy(&native.stdout),
        "record --vm: stdout differs"
    );
    assert_eq!(vm.status.code(), native.status.code());
    let info = lbrprof().arg("info").arg(&data).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    // The program and its 8 children (1 + 3 + 1 + 1 + 2 forks).
    assert!(info.contains("guest procs:   9 ("), "{info}");
}
