//! End-to-end test of `mprotect(PROT_NONE)` in the VM (issue #13): a page made
//! inaccessible keeps its contents, as on Linux, so a program that writes data, makes it
//! `PROT_NONE` (a guard, a GC's or JIT's trick, a sanitizer's quarantine), catches the
//! SIGSEGV of touching it and makes it accessible again finds its data: in private
//! anonymous memory (a whole mapping and a part of one), a modified private file mapping,
//! shared anonymous memory across fork, read-only zero memory and `MAP_NORESERVE`
//! memory, through fork, mremap, madvise(MADV_DONTNEED) and munmap. The program runs
//! natively and under `lbrprof run --vm --`; stdout, stderr and the exit status must be
//! byte-identical.

mod common;

use common::kvm_available;
use common::linux::{assert_identical, build_workload as build, native_and_vm_in};

#[test]
fn prot_none_pages_keep_their_contents_as_natively_with_every_libc() {
    if !kvm_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (out, cc, flags) in [
        ("glibc", "gcc", &[][..]),
        ("glibc-static", "gcc", &["-static"][..]),
        ("musl-static", "musl-gcc", &["-static"][..]),
    ] {
        let exe = build(tmp.path(), "linux_protnone", out, cc, flags);
        let (native, vm) = native_and_vm_in(tmp.path(), exe.to_str().unwrap(), &[]);
        let text = String::from_utf8_lossy(&native.stdout);
        for line in [
            "anon: mprotect read-write 0, wrong bytes 0",
            "part: page 3 read-write 0, wrong bytes 0, page 2 still si_code 2",
            "syscall: read into PROT_NONE -1 EFAULT",
            "dontneed: madvise of PROT_NONE pages 0-1 0, non-zero bytes there 0",
            "round trips: 20 over 32 MiB 0, wrong pages 0",
            "file: mprotect read 0, 'modified in memory', other bytes wrong 0",
            "shared: mprotect read 0, reads 'from the child', other bytes wrong 0",
            "fork child: mprotect read-write 0, wrong bytes 0",
            "fork: mprotect read-write 0, wrong bytes 0",
            "mremap: mprotect read-write 0, wrong bytes 0, grown part non-zero 0",
            "lazy: read-write 0, wrong bytes 0 0, untouched 0",
        ] {
            assert!(
                text.contains(line),
                "{out}: native run lacks {line:?}: {text}"
            );
        }
        assert_eq!(native.status.code(), Some(0), "{out}: native run");
        assert_identical(out, &native, &vm);
    }
}
