//! End-to-end tests of demand paging in the VM (issue #13): a `MAP_NORESERVE` mapping is
//! backed page by page at the program's first touch, so a program may map terabytes and
//! use a little, as sanitizers do with their shadow memory. Each program runs natively and
//! under `lbrprof run --vm --`; stdout, stderr and the exit status must be the same
//! (AddressSanitizer's report modulo addresses and pids). Touching more than `--vm-mem`
//! ends the program as Linux's OOM killer would, with one line saying so.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::linux::{assert_identical, build_workload as build, native_and_vm_in, output_in};
use common::{kvm_available, lbrprof};

#[test]
fn a_64_tib_lazy_mapping_behaves_as_natively_with_every_libc() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("glibc", "gcc", &[][..]),
        ("musl-static", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_lazy", out, cc, flags);
        let started = std::time::Instant::now();
        let (native, vm) = native_and_vm_in(tmp.path(), exe.to_str().unwrap(), &[]);
        let text = String::from_utf8_lossy(&native.stdout);
        for line in [
            "mapped 64 TiB",
            "scattered sum 2080",
            "read into untouched page: 15 'through a pipe'",
            "pipe of untouched page: 00000000",
            "child sees 1 and writes 99",
            "parent after child: 1 0, child exit 0",
            "write to read-only: si_code 2 at the address: yes",
            "read of PROT_NONE: si_code 2",
            "read unmapped: si_code 1 at the address: yes",
            "madvise dontneed: 0, reads 0",
            "mremap grew 1 TiB to 2 TiB: ok, moved: yes",
            "moved contents 42 43 0 0",
        ] {
            assert!(
                text.contains(line),
                "{out}: native run lacks {line:?}: {text}"
            );
        }
        assert_identical(out, &native, &vm);
        // Nothing in it steps over the 2^34 pages page by page.
        assert!(
            started.elapsed().as_secs() < 60,
            "{out}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn touching_more_than_the_vm_memory_ends_the_program_as_the_oom_killer_would() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = build(tmp.path(), "linux_lazy", "lazy", "gcc", &[]);
    let exe = exe.to_str().unwrap();
    let vm = |mib: &str| {
        let mut c = lbrprof();
        c.args(["run", "--vm", "--vm-mem", "64M", "--", exe, "touch", mib]);
        output_in(c, tmp.path())
    };
    // Within the limit: as natively.
    let fits = vm("16");
    let mut native = Command::new(exe);
    native.args(["touch", "16"]);
    assert_identical("16 MiB", &output_in(native, tmp.path()), &fits);
    // Past it: SIGKILL (128 + 9), and one line that names the address and the flag.
    let over = vm("200");
    let err = String::from_utf8_lossy(&over.stderr);
    assert_eq!(over.status.code(), Some(137), "{err}");
    assert_eq!(String::from_utf8_lossy(&over.stdout), "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("ran out of guest memory (--vm-mem) touching 0x")
            && lines[0].contains("Raise --vm-mem"),
        "{err}"
    );
}

/// An AddressSanitizer report with what changes run to run (addresses, pids) masked.
/// (The `llvm-symbolizer` ASan starts is left running when the program ends; it reads
/// end-of-file and ends a moment later, within the VM's grace for such processes.)
fn masked(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(&mask_line(line));
        out.push('\n');
    }
    out
}

/// `line` with each `0x` hex number made `0xADDR` and each `==PID==` made `==PID==`.
fn mask_line(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while !rest.is_empty() {
        let digits = |s: &str, hex: bool| {
            s.find(|c: char| {
                !(if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                })
            })
            .unwrap_or(s.len())
        };
        if let Some(tail) = rest.strip_prefix("0x") {
            let n = digits(tail, true);
            out.push_str("0xADDR");
            rest = &tail[n..];
        } else if let Some(tail) = rest.strip_prefix("==") {
            let n = digits(tail, false);
            if n > 0 && tail[n..].starts_with("==") {
                out.push_str("==PID==");
                rest = &tail[n + 2..];
            } else {
                out.push_str("==");
                rest = tail;
            }
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn asan(dir: &Path, name: &str) -> (Output, Output) {
    let exe = build(
        dir,
        name,
        name,
        "clang-16",
        &["-fsanitize=address", "-pthread"],
    );
    // LeakSanitizer's check at exit stops the world with a ptrace-ing clone(CLONE_VM)
    // process, which the VM does not run: leak checking off in both runs.
    let env = ("ASAN_OPTIONS", "detect_leaks=0");
    let mut native = Command::new(&exe);
    native.env(env.0, env.1);
    let mut vm = lbrprof();
    vm.args(["run", "--vm", "--timeout", "120", "--"])
        .arg(&exe)
        .env(env.0, env.1);
    (output_in(native, dir), output_in(vm, dir))
}

#[test]
fn masking_hides_addresses_and_pids_only() {
    assert_eq!(
        mask_line("==123==ERROR: at 0x6020 pc 0xff, ===== x==y"),
        "==PID==ERROR: at 0xADDR pc 0xADDR, ===== x==y"
    );
}

#[test]
fn address_sanitizer_programs_run_as_natively() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A heap-buffer-overflow: ASan's report and exit status 1, as natively.
    let (native, vm) = asan(tmp.path(), "linux_asan_overflow");
    let report = masked(&native.stderr);
    assert!(
        report.contains("ERROR: AddressSanitizer: heap-buffer-overflow on address 0xADDR"),
        "{report}"
    );
    assert!(
        report.contains("SUMMARY: AddressSanitizer: heap-buffer-overflow"),
        "{report}"
    );
    assert_eq!(native.status.code(), Some(1));
    assert_eq!(masked(&vm.stderr), report);
    assert_eq!(vm.stdout, native.stdout);
    assert_eq!(String::from_utf8_lossy(&vm.stdout), "before the overflow\n");
    assert_eq!(vm.status.code(), native.status.code());
    // A clean program (threads, heap, stack, globals): exit 0, the same output.
    let (native, vm) = asan(tmp.path(), "linux_asan_clean");
    assert_eq!(native.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&native.stdout).starts_with("checksum "));
    assert_identical("clean ASan program", &native, &vm);
}
