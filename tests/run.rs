//! End-to-end tests of `lbrprof run`: the built-in workloads print checksums computed
//! here independently, exit codes propagate, a multiboot kernel built with gcc boots (UART,
//! fw_cfg, multiboot info, INIT/SIPI), crashes and timeouts end cleanly, and every kind of
//! bad image or flag gets its own one-line error with exit status 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{kvm_available, lbrprof};

fn run(args: &[&str]) -> Output {
    lbrprof()
        .arg("run")
        .args(args)
        .output()
        .expect("cannot start lbrprof")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// SplitMix64, the workloads' PRNG (the specification the guest implements).
struct SplitMix64(u64);
impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn expected_sort(n: usize, seed: u64) -> u64 {
    let mut rng = SplitMix64(seed);
    let mut v: Vec<u64> = (0..n).map(|_| rng.next() >> 16).collect();
    v.sort_unstable();
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x).wrapping_mul(0x0100_0000_01b3)
    })
}

fn expected_branchy(n: u64, pct: u64, seed: u64) -> (u64, u64) {
    let mut rng = SplitMix64(seed);
    let (mut taken, mut acc) = (0u64, 0u64);
    for _ in 0..n {
        let x = rng.next();
        if (x >> 32) % 100 < pct {
            taken += 1;
            acc = acc.wrapping_add(x);
        } else {
            acc ^= x.rotate_left(7);
        }
    }
    (taken, acc)
}

fn expected_calls(n: u64, depth: u64) -> (u64, u64) {
    fn fib(n: u64) -> u64 {
        if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
    }
    let mix = |x: u64| (x ^ (x >> 17)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let f = fib(depth);
    let mut acc = f;
    for i in 0..n {
        let v = match i % 4 {
            0 => mix(i.wrapping_add(1)),
            1 => mix(i.wrapping_mul(3)),
            2 => mix(i ^ 0x5555),
            _ => mix(i.rotate_left(13)),
        };
        acc = acc.wrapping_mul(31).wrapping_add(v);
    }
    (f, acc)
}

fn expected_collatz_steps(n: u64) -> u64 {
    (1..=n)
        .map(|mut x| {
            let mut steps = 0;
            while x != 1 {
                x = if x % 2 == 0 { x / 2 } else { 3 * x + 1 };
                steps += 1;
            }
            steps
        })
        .sum()
}

#[test]
fn workloads_print_their_expected_checksums() {
    if !kvm_available() {
        return;
    }
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "sort",
            vec!["n=5000", "seed=7"],
            format!(
                "sort: n=5000 seed=7 sorted=yes checksum={:#018x}\n",
                expected_sort(5000, 7)
            ),
        ),
        ("branchy", vec!["n=100000", "pct=25", "seed=3"], {
            let (t, c) = expected_branchy(100_000, 25, 3);
            format!("branchy: n=100000 pct=25 seed=3 taken={t} checksum={c:#018x}\n")
        }),
        ("calls", vec!["n=1000", "depth=15"], {
            let (f, c) = expected_calls(1000, 15);
            format!("calls: n=1000 depth=15 fib={f} checksum={c:#018x}\n")
        }),
        ("interp", vec!["n=1000"], {
            let s = expected_collatz_steps(1000);
            format!("checksum={s:#018x}\n")
        }),
    ];
    for (name, args, expected) in cases {
        let vm = format!("builtin:{name}");
        let mut argv = vec!["--vm", vm.as_str(), "--serial", "stdio", "--"];
        argv.extend(args.iter().copied());
        let out = run(&argv);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.ends_with(&expected),
            "{name}: got {text:?}, expected ...{expected:?}"
        );
    }
    // The interpreter also reports its exact step count.
    let out = run(&["--vm", "builtin:interp", "--serial", "stdio", "--", "n=27"]);
    assert!(stdout(&out).contains(&format!("steps={} ", expected_collatz_steps(27))));
}

#[test]
fn guest_exit_codes_propagate() {
    if !kvm_available() {
        return;
    }
    for (code, status) in [(0, 0), (1, 3), (3, 7), (100, 201)] {
        let arg = format!("exit={code}");
        let out = run(&[
            "--vm",
            "builtin:calls",
            "--serial",
            "stdio",
            "--",
            "n=10",
            &arg,
        ]);
        assert_eq!(
            out.status.code(),
            Some(status),
            "exit={code}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn serial_to_file_write_image_and_stats() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("console.txt");
    let images = dir.path().join("images");
    let out = run(&[
        "--vm",
        "builtin:sort",
        "--serial",
        serial.to_str().unwrap(),
        "--write-image",
        images.to_str().unwrap(),
        "--stats",
        "--",
        "n=100",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(console.starts_with("sort: n=100 "), "{console}");
    let image = std::fs::read(images.join("sort")).unwrap();
    assert_eq!(&image[..4], b"\x7fELF");
    let err = stderr(&out);
    assert!(
        err.contains("wrote guest image") && err.contains("in KVM_RUN"),
        "{err}"
    );
}

#[test]
fn all_vcpus_of_the_runtime_come_up() {
    if !kvm_available() {
        return;
    }
    let out = run(&[
        "--vm",
        "builtin:calls",
        "--vcpus",
        "3",
        "--serial",
        "stdio",
        "--",
        "rt.cpus",
        "n=10",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("lbrprof-guest: 3 of 3 vCPUs online\n"),
        "{}",
        stdout(&out)
    );
}

/// Build the multiboot test kernel from tests/fixtures-src/multiboot with gcc.
fn multiboot_kernel(dir: &Path) -> PathBuf {
    build_multiboot(dir, "kernel.elf", &[])
}

fn build_multiboot(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-src/multiboot");
    let out = dir.join(name);
    let status = std::process::Command::new("gcc")
        .args(defines)
        .args([
            "-m32",
            "-march=i686",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-fno-pie",
            "-no-pie",
        ])
        .args([
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-O2",
        ])
        .args(["-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments", "-T"])
        .arg(src.join("link.ld"))
        .arg(src.join("boot.S"))
        .arg(src.join("kernel.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("gcc is needed to build the multiboot test kernel");
    assert!(
        status.success(),
        "gcc -m32 failed to build the multiboot test kernel"
    );
    out
}

#[test]
fn multiboot_kernel_boots_reads_fw_cfg_and_its_info_and_exits() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = multiboot_kernel(dir.path());
    let k = kernel.to_str().unwrap();
    let out = run(&[
        "--vm", k, "--mem", "64M", "--vcpus", "3", "--serial", "stdio", "--", "exit=5", "smp",
    ]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    let expected = "multiboot: magic ok\n\
                    multiboot: mem_lower=639 mem_upper=64512\n\
                    multiboot: cmdline=exit=5 smp\n\
                    multiboot: mmap entries=3 available=0x0000000003f9fc00\n\
                    fw_cfg: signature=QEMU cpus=3 ram=0x0000000004000000\n\
                    smp: 2 APs started\n";
    assert_eq!(stdout(&out), expected);

    // exit=0 powers off: status 0.
    let out = run(&["--vm", k, "--mem", "16M", "--serial", "stdio"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn multiboot_aout_kludge_flat_binary_boots() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = build_multiboot(dir.path(), "kludge.elf", &["-DAOUT_KLUDGE"]);
    let flat = dir.path().join("kernel.bin");
    let status = std::process::Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&flat)
        .status()
        .expect("objcopy (binutils) is needed");
    assert!(status.success());
    let out = run(&[
        "--vm",
        flat.to_str().unwrap(),
        "--mem",
        "16M",
        "--serial",
        "stdio",
        "--stats",
        "--",
        "exit=9",
    ]);
    assert_eq!(out.status.code(), Some(19), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("multiboot: magic ok\nmultiboot: mem_lower=639 mem_upper=15360\n")
    );
    assert!(
        stderr(&out).contains("MultibootAout image"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_ports_and_mmio_are_ignored_counted_and_reported_once() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = multiboot_kernel(dir.path());
    let out = run(&[
        "--vm",
        kernel.to_str().unwrap(),
        "--mem",
        "16M",
        "--serial",
        "stdio",
        "--stats",
        "--",
        "probe",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("probe: mmio=0x00000000ffffffff\n"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert_eq!(
        err.matches("unknown I/O port 0x80 ignored (reported once)")
            .count(),
        1,
        "{err}"
    );
    assert_eq!(
        err.matches("unknown MMIO address 0xd0000000 ignored")
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("unknown I/O port 0x80: 3 accesses"), "{err}");
    assert!(
        err.contains("unknown MMIO page 0xd0000000: 1 accesses"),
        "{err}"
    );
}

#[test]
fn a_triple_fault_stops_with_registers_and_status_4() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = multiboot_kernel(dir.path());
    let out = run(&[
        "--vm",
        kernel.to_str().unwrap(),
        "--mem",
        "16M",
        "--",
        "triple",
    ]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("triple: faulting now"), "{err}");
    assert!(
        err.contains("registers:") && err.contains("  rip "),
        "{err}"
    );
    assert!(
        err.trim_end()
            .ends_with("crashed on vCPU 0: triple fault (KVM_EXIT_SHUTDOWN)"),
        "{err}"
    );
}

#[test]
fn timeout_stops_a_runaway_guest() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = multiboot_kernel(dir.path());
    let started = std::time::Instant::now();
    let out = run(&[
        "--vm",
        kernel.to_str().unwrap(),
        "--mem",
        "16M",
        "--vcpus",
        "2",
        "--timeout",
        "0.5",
        "--",
        "hang",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not finish within 0.500 s"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// A guest that halts with interrupts off can never run again: the run ends with its
/// registers and status 4 instead of hanging. Its APs, parked the same way after SIPI,
/// must not end a run whose BSP is still working.
#[test]
fn a_halt_with_interrupts_off_ends_the_run_with_status_4() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = multiboot_kernel(dir.path());
    let kernel = kernel.to_str().unwrap();
    let started = std::time::Instant::now();
    let out = run(&[
        "--vm", kernel, "--mem", "16M", "--vcpus", "2", "--", "smp", "halt",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("halt: halting with interrupts off"), "{err}");
    assert!(err.contains("  rip "), "registers:\n{err}");
    assert!(
        err.contains("halted with interrupts disabled and nothing pending"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    // Parked APs alone do not end the run: the spinning BSP runs into its timeout.
    let out = run(&[
        "--vm",
        kernel,
        "--mem",
        "16M",
        "--vcpus",
        "2",
        "--timeout",
        "2.5",
        "--",
        "smp",
        "hang",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stdout(&out).contains("APs started") || stderr(&out).contains("APs started"));
}

/// One bad input per kind: (name, arguments, a phrase of the expected error).
#[test]
fn bad_images_and_flags_get_one_line_errors_and_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    // Take a real image (the built-in sort) and break it in different ways.
    let image_dir = dir.path().join("img");
    let out = run(&[
        "--vm",
        "builtin:sort",
        "--write-image",
        image_dir.to_str().unwrap(),
        "--mem",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let good = std::fs::read(image_dir.join("sort")).unwrap();
    let mut aarch64 = good.clone();
    aarch64[18..20].copy_from_slice(&183u16.to_le_bytes());
    let mut pie = good.clone();
    pie[16..18].copy_from_slice(&3u16.to_le_bytes());
    let mut entry_outside = good.clone();
    entry_outside[24..32].copy_from_slice(&0x7000_0000u64.to_le_bytes());

    let text = write("script.sh", b"#!/bin/sh\necho not a kernel\n");
    let truncated = write("truncated", &good[..4096]);
    let aarch64 = write("aarch64", &aarch64);
    let pie = write("pie", &pie);
    let entry_outside = write("entry", &entry_outside);
    let missing = dir.path().join("missing").to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("not an image", vec!["--vm", &text], "not a guest image"),
        ("empty file", vec!["--vm", "/dev/null"], "not a guest image"),
        ("truncated", vec!["--vm", &truncated], "truncated image"),
        ("wrong machine", vec!["--vm", &aarch64], "wrong machine"),
        // A position-independent ELF is taken for a Linux program unless --vm-kernel
        // says it is a kernel (tests/linux.rs covers the program side).
        (
            "PIE as a kernel",
            vec!["--vm", &pie, "--vm-kernel"],
            "not a static executable",
        ),
        (
            "entry outside",
            vec!["--vm", &entry_outside],
            "entry point 0x70000000 is outside",
        ),
        (
            "too little RAM for the image",
            vec!["--vm", "builtin:sort", "--mem", "4M"],
            "outside the guest RAM",
        ),
        (
            "absurdly small --mem",
            vec!["--vm", "builtin:sort", "--mem", "64K"],
            "out of range",
        ),
        (
            "absurdly large --mem",
            vec!["--vm", "builtin:sort", "--mem", "4096G"],
            "out of range",
        ),
        (
            "unparsable --mem",
            vec!["--vm", "builtin:sort", "--mem", "lots"],
            "not a size",
        ),
        (
            "zero vCPUs",
            vec!["--vm", "builtin:sort", "--vcpus", "0"],
            "vCPUs requested",
        ),
        (
            "too many vCPUs",
            vec!["--vm", "builtin:sort", "--vcpus", "1000"],
            "vCPUs requested",
        ),
        (
            "bad timeout",
            vec!["--vm", "builtin:sort", "--timeout=0"],
            "positive number",
        ),
        (
            "missing file",
            vec!["--vm", &missing],
            "cannot read guest image",
        ),
        (
            "unknown builtin",
            vec!["--vm", "builtin:nope"],
            "available: branchy",
        ),
        (
            "write-image of a file",
            vec!["--vm", &text, "--write-image", "/tmp"],
            "needs a builtin",
        ),
    ];
    for (name, args, phrase) in cases {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(phrase),
            "{name}: expected {phrase:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");
        let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() <= 3, "{name}: not a short error: {err}");
    }
}
