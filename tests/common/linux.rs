//! Helpers of the Linux-personality tests: a program run natively and under
//! `lbrprof run --vm --`, and the byte-for-byte comparison of the two.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::lbrprof;

/// `cmd` run in `dir` with no standard input.
pub fn output_in(mut cmd: Command, dir: &Path) -> Output {
    cmd.current_dir(dir).stdin(Stdio::null());
    cmd.output().expect("cannot start the program")
}

/// PROG ARGS natively and under `lbrprof run --vm --`, both in `dir`.
pub fn native_and_vm_in(dir: &Path, prog: &str, args: &[&str]) -> (Output, Output) {
    native_and_vm_apart(dir, dir, prog, args)
}

/// PROG ARGS natively in `native_dir` and under `lbrprof run --vm --` in `vm_dir` (to
/// compare the files each run leaves).
pub fn native_and_vm_apart(
    native_dir: &Path,
    vm_dir: &Path,
    prog: &str,
    args: &[&str],
) -> (Output, Output) {
    let mut native = Command::new(prog);
    native.args(args);
    let mut vm = lbrprof();
    vm.args(["run", "--vm", "--timeout", "120", "--", prog])
        .args(args);
    (output_in(native, native_dir), output_in(vm, vm_dir))
}

/// Compile `tests/workloads/NAME.c` with `cc` and `flags` into `dir/OUT`.
pub fn build_workload(dir: &Path, name: &str, out: &str, cc: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workloads/{name}.c"));
    let exe = dir.join(out);
    let status = Command::new(cc)
        .args(["-O2", "-g"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("{cc} is needed for the Linux-program tests ({e})"));
    assert!(
        status.success(),
        "{cc} {flags:?} failed on {}",
        src.display()
    );
    exe
}

/// The VM run printed what the native run printed, byte for byte, and exited alike.
pub fn assert_identical(what: &str, native: &Output, vm: &Output) {
    assert_eq!(
        String::from_utf8_lossy(&vm.stderr),
        String::from_utf8_lossy(&native.stderr),
        "{what}: stderr differs"
    );
    assert_eq!(
        String::from_utf8_lossy(&vm.stdout),
        String::from_utf8_lossy(&native.stdout),
        "{what}: stdout differs"
    );
    assert!(vm.stdout == native.stdout, "{what}: stdout bytes differ");
    assert_eq!(
        vm.status.code(),
        native.status.code(),
        "{what}: exit status differs"
    );
}
