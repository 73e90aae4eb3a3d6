//! What `--vm` names: a bootable image or a Linux program (shared by `run` and
//! `record`), and what to print about a Linux program's run.
//!
//! * `--vm -- PROG ARGS…` (no value): PROG is a Linux program, found through PATH like
//!   a shell does when it has no `/`.
//! * `--vm builtin:NAME`: a built-in image.
//! * `--vm FILE`: a Linux program when `--vm-linux` is given or the file is one by its
//!   ELF (position-independent or with an interpreter); a bootable image otherwise or
//!   with `--vm-kernel`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use lbrprof_vmm::linux::entropy::EntropySource;
use lbrprof_vmm::linux::{LinuxError, LinuxReport, Program};
use lbrprof_vmm::pmu::interp::outside::OutsideConfig;

use crate::cmd::with_exit;

/// The guest a `--vm` flag and its trailing arguments name.
#[derive(Debug)]
pub enum VmTarget {
    /// `builtin:NAME` or an image file: the trailing arguments are its command line.
    Image,
    /// A Linux program and its argv.
    Program { path: PathBuf, argv: Vec<String> },
}

/// How to tell a program from a kernel (`--vm-linux` / `--vm-kernel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Force {
    #[default]
    Auto,
    Linux,
    Kernel,
}

/// Find `name` as a shell would: as given when it contains a `/`, else in `path_var`.
pub fn resolve_command(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    if name.is_empty() {
        return None;
    }
    let dirs = path_var.map(std::env::split_paths)?;
    for dir in dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            use std::os::unix::fs::PermissionsExt;
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Some(candidate);
            }
        }
    }
    None
}

/// Decide what `--vm SPEC -- ARGS` runs.
pub fn target(spec: &str, args: &[String], force: Force) -> anyhow::Result<VmTarget> {
    if spec.is_empty() {
        let Some(name) = args.first() else {
            anyhow::bail!("--vm without an image needs a program: --vm -- PROG ARGS...");
        };
        let path_var = std::env::var_os("PATH");
        let path = resolve_command(name, path_var.as_deref())
            .ok_or_else(|| with_exit(anyhow!("{name}: command not found"), 127))?;
        return Ok(VmTarget::Program {
            path,
            argv: args.to_vec(),
        });
    }
    if spec.starts_with("builtin:") || force == Force::Kernel {
        return Ok(VmTarget::Image);
    }
    let program = || {
        let mut argv = vec![spec.to_owned()];
        argv.extend(args.iter().cloned());
        VmTarget::Program {
            path: PathBuf::from(spec),
            argv,
        }
    };
    if force == Force::Linux {
        return Ok(program());
    }
    // A file that cannot be read is left to the image loader's error.
    let bytes = std::fs::read(spec).unwrap_or_default();
    Ok(if Program::looks_like_program(&bytes) {
        program()
    } else {
        VmTarget::Image
    })
}

/// Check the program and build what the VM loads; errors exit 126/127 as a shell's do.
pub fn program(path: &Path, argv: &[String]) -> anyhow::Result<Program> {
    let env: Vec<OsString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            OsString::from_vec(kv)
        })
        .collect();
    let argv = argv.iter().map(OsString::from).collect();
    Program::new(path, argv, env).map_err(|e: LinuxError| {
        let code = e.exit_code();
        with_exit(anyhow::Error::new(e), code)
    })
}

/// `--vm-seed SEED|host`.
pub fn parse_seed(s: &str) -> Result<EntropySource, String> {
    if s == "host" {
        return Ok(EntropySource::Host);
    }
    let n = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    n.map(EntropySource::Seeded)
        .map_err(|_| format!("'{s}' is neither a seed (a 64-bit number) nor 'host'"))
}

/// Guest RAM when `--vm-mem` is not given: an image's RAM is its physical memory.
const IMAGE_MEM: u64 = 256 << 20;

/// `--vm-mem`, or its default: 256 MiB for an image, and for a Linux program the most
/// the VM takes ([`lbrprof_vmm::vm::MAX_MEM`]), because a program's pages cost host memory
/// only once it touches them and programs reserve far more than they use (`xz -9`: 674
/// MiB), as natively, where nothing caps them below the host's memory.
pub fn mem(asked: Option<u64>, program: bool) -> u64 {
    asked.unwrap_or(if program {
        lbrprof_vmm::vm::MAX_MEM
    } else {
        IMAGE_MEM
    })
}

/// `--vm-outside`: what a Linux program reads from the world outside it that changes
/// from run to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Outside {
    /// A virtual clock, process ids from 1000, random bytes from seed 0.
    Pinned,
    /// The host's clocks, lbrprof's pid, the host's random bytes.
    Host,
}

/// What the program reads from outside, as the VM is told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsideWorld {
    pub entropy: EntropySource,
    /// A virtual clock and pinned pids.
    pub pinned: bool,
    /// glibc is told to leave AVX-512 alone ([`AVX512_OFF`]): this host shows it to the
    /// program whatever the vCPU's XCR0 says.
    pub no_avx512: bool,
}

/// The glibc tunable that makes glibc find AVX-512 unusable, so that it takes its AVX2
/// functions, as it does under valgrind (which hides AVX-512) and in the VM on hosts
/// where the vCPU's XCR0 hides it.
pub const AVX512_OFF: &str = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD";

/// The glibc tunables that fix the sizes glibc otherwise derives from the host's caches
/// (CPUID's cache leaves), which choose between the vector loops and REP MOVSB/STOSB
/// in memcpy and memset and when they go non-temporal: with them a pinned program takes
/// the same paths, and counts the same instructions, on every host. The values are the
/// ones glibc derives under valgrind (whose CPUID describes one fixed cache), so exact
/// mode's counts match valgrind's I refs there too (without them a static C benchmark's
/// count was 1.24% above valgrind's on this project's AMD host: glibc copied 2–8 KiB
/// with REP MOVSB, one counted pass per byte, where under valgrind it took the loop).
pub const FIXED_CACHES: &[&str] = &[
    "glibc.cpu.x86_data_cache_size=0x8000",
    "glibc.cpu.x86_shared_cache_size=0x800000",
    "glibc.cpu.x86_non_temporal_threshold=0x200000",
    "glibc.cpu.x86_rep_movsb_threshold=0x2000",
    "glibc.cpu.x86_rep_stosb_threshold=0x800",
];

impl OutsideWorld {
    /// What exact mode's interpreter answers from this world in place of the CPU
    /// (RDRAND, RDSEED from the seed; RDTSC, RDTSCP, RDPID from the virtual clock).
    pub fn interpreted(&self) -> OutsideConfig {
        OutsideConfig {
            random_seed: match self.entropy {
                EntropySource::Seeded(seed) => Some(seed),
                EntropySource::Host => None,
            },
            pinned_clock: self.pinned,
        }
    }

    /// Give the VM and the program this world.
    pub fn apply(self, config: &mut lbrprof_vmm::vm::VmConfig, program: &mut Program) {
        config.guest_entropy = self.entropy;
        config.guest_pinned = self.pinned;
        if self.no_avx512 {
            add_tunable(&mut program.envp, AVX512_OFF);
        }
        if self.pinned {
            for t in FIXED_CACHES {
                add_tunable(&mut program.envp, t);
            }
        }
    }
}

/// Adds glibc tunable `tunable` (`name=value`) to `GLIBC_TUNABLES` in `envp` (appended
/// to the variable, or the variable appended), unless the user's own tunables already
/// set that name.
fn add_tunable(envp: &mut Vec<OsString>, tunable: &str) {
    const VAR: &[u8] = b"GLIBC_TUNABLES=";
    let name = &tunable.as_bytes()[..=tunable.find('=').unwrap_or(tunable.len() - 1)];
    match envp.iter_mut().find(|e| e.as_bytes().starts_with(VAR)) {
        Some(e) => {
            let value = &e.as_bytes()[VAR.len()..];
            if value.split(|&b| b == b':').any(|t| t.starts_with(name)) {
                return;
            }
            let mut v = e.as_bytes().to_vec();
            if !value.is_empty() {
                v.push(b':');
            }
            v.extend_from_slice(tunable.as_bytes());
            *e = OsString::from_vec(v);
        }
        None => {
            let mut v = VAR.to_vec();
            v.extend_from_slice(tunable.as_bytes());
            envp.push(OsString::from_vec(v));
        }
    }
}

/// What the program reads from outside: `--vm-outside` when given, else pinned in exact
/// mode (whose counts must repeat from run to run) and the host's otherwise; `--vm-seed`
/// then chooses the random bytes alone. Prints one line when something is pinned, so
/// nobody is surprised.
pub fn outside(flag: Option<Outside>, seed: Option<EntropySource>, exact: bool) -> OutsideWorld {
    let pinned = flag.map_or(exact, |o| o == Outside::Pinned);
    let entropy = seed.unwrap_or(if pinned {
        EntropySource::Seeded(0)
    } else {
        EntropySource::Host
    });
    let mut what = Vec::new();
    if pinned {
        what.push(if exact {
            "a virtual clock (2025-01-01T00:00:00Z at the start; RDTSC counts instructions)"
                .to_owned()
        } else {
            "a virtual clock (2025-01-01T00:00:00Z at the start)".to_owned()
        });
        what.push("process ids from 1000".to_owned());
    }
    if let EntropySource::Seeded(n) = entropy {
        what.push(format!(
            "random bytes (getrandom, AT_RANDOM, /dev/urandom{}) from a fixed stream (seed {n})",
            if exact { ", RDRAND, RDSEED" } else { "" }
        ));
    }
    let no_avx512 = pinned && lbrprof_vmm::linux::cpu::guest_sees_host_avx512();
    if no_avx512 {
        what.push(format!(
            "glibc's AVX2 functions, not the AVX-512 ones this host would show it, as under \
             valgrind (GLIBC_TUNABLES={AVX512_OFF})"
        ));
    }
    if pinned {
        what.push(
            "glibc's cache sizes, which choose its memcpy and memset paths, as under valgrind \
             (GLIBC_TUNABLES=glibc.cpu.x86_*_cache_size,x86_*_threshold)"
                .to_owned(),
        );
    }
    if !what.is_empty() {
        let why = if exact && flag.is_none() {
            "exact mode pins"
        } else {
            "pinned"
        };
        eprintln!(
            "lbrprof: vm: {why} what the program reads from outside so that its counts repeat: \
             {}; --vm-outside host gives it the host's",
            what.join(", ")
        );
    }
    OutsideWorld {
        entropy,
        pinned,
        no_avx512,
    }
}

/// The end-of-run lines about a program: unimplemented system calls (once each, with
/// counts), processes it left running, and a refused allocation.
pub fn print_report(report: &LinuxReport, mem_bytes: u64) {
    if !report.unimplemented.is_empty() {
        let calls: Vec<String> = report
            .unimplemented
            .iter()
            .map(|(name, n)| format!("{name} ({n})"))
            .collect();
        eprintln!(
            "lbrprof: vm: unimplemented system calls answered with ENOSYS: {}",
            calls.join(", ")
        );
    }
    if !report.left_running.is_empty() {
        let pids: Vec<String> = report.left_running.iter().map(u64::to_string).collect();
        eprintln!(
            "lbrprof: vm: the program ended while {} of its processes still ran (pid {}); \
             they were stopped {} s after it (on Linux they would go on, orphaned)",
            pids.len(),
            pids.join(", "),
            lbrprof_vmm::vm::ORPHANS_GRACE.as_secs_f64()
        );
    }
    if let Some(addr) = report.out_of_memory {
        eprintln!(
            "lbrprof: vm: the program ran out of guest memory (--vm-mem {} MiB) at \
             {addr:#x}; the request for memory there failed (ENOMEM, or EFAULT for a system \
             call writing into untouched memory). Raise --vm-mem.",
            mem_bytes >> 20
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_numbers_or_host() {
        assert_eq!(parse_seed("host"), Ok(EntropySource::Host));
        assert_eq!(parse_seed("42"), Ok(EntropySource::Seeded(42)));
        assert_eq!(parse_seed("0xff"), Ok(EntropySource::Seeded(255)));
        assert!(parse_seed("-1").is_err());
        assert!(parse_seed("random").unwrap_err().contains("'random'"));
    }

    #[test]
    fn exact_mode_pins_the_outside_world_unless_told_otherwise() {
        let world = |flag, seed, exact| {
            let w = outside(flag, seed, exact);
            (w.entropy, w.pinned)
        };
        assert_eq!(world(None, None, false), (EntropySource::Host, false));
        assert_eq!(world(None, None, true), (EntropySource::Seeded(0), true));
        let host = Some(Outside::Host);
        assert_eq!(world(host, None, true), (EntropySource::Host, false));
        let pinned = Some(Outside::Pinned);
        assert_eq!(world(pinned, None, false), (EntropySource::Seeded(0), true));
        // --vm-seed picks the random bytes alone.
        let seed = |s| Some(EntropySource::Seeded(s));
        assert_eq!(
            world(None, seed(9), false),
            (EntropySource::Seeded(9), false)
        );
        assert_eq!(
            world(host, seed(9), true),
            (EntropySource::Seeded(9), false)
        );
        let host_bytes = Some(EntropySource::Host);
        assert_eq!(world(None, host_bytes, true), (EntropySource::Host, true));
    }

    #[test]
    fn commands_are_found_like_a_shell_finds_them() {
        let path = std::ffi::OsString::from("/nonexistent:/usr/bin:/bin");
        let sh = resolve_command("sh", Some(&path)).unwrap();
        assert!(sh.ends_with("sh"));
        assert_eq!(
            resolve_command("./x", Some(&path)),
            Some(PathBuf::from("./x"))
        );
        assert_eq!(resolve_command("no-such-command-lbr", Some(&path)), None);
        assert_eq!(resolve_command("", Some(&path)), None);
        assert_eq!(resolve_command("sh", None), None);
    }

    #[test]
    fn programs_and_images_are_told_apart() {
        let args = vec!["a".to_string()];
        assert!(matches!(
            target("builtin:sort", &args, Force::Auto).unwrap(),
            VmTarget::Image
        ));
        match target("/bin/true", &args, Force::Auto).unwrap() {
            VmTarget::Program { path, argv } => {
                assert_eq!(path, PathBuf::from("/bin/true"));
                assert_eq!(argv, ["/bin/true", "a"]);
            }
            t => panic!("{t:?}"),
        }
        assert!(matches!(
            target("/bin/true", &args, Force::Kernel).unwrap(),
            VmTarget::Image
        ));
        match target("", &["true".into(), "x".into()], Force::Auto).unwrap() {
            VmTarget::Program { argv, .. } => assert_eq!(argv, ["true", "x"]),
            t => panic!("{t:?}"),
        }
        assert!(target("", &[], Force::Auto).is_err());
    }

    #[test]
    fn tunables_join_glibc_tunables_unless_the_user_set_them() {
        let env = |v: &[&str]| -> Vec<OsString> { v.iter().map(OsString::from).collect() };
        let off = format!("GLIBC_TUNABLES={AVX512_OFF}");
        let mut e = env(&["PATH=/bin"]);
        add_tunable(&mut e, AVX512_OFF);
        assert_eq!(e, env(&["PATH=/bin", &off]));
        // Other tunables stay, hwcaps joins them.
        let mut e = env(&["GLIBC_TUNABLES=glibc.malloc.check=3", "HOME=/"]);
        add_tunable(&mut e, AVX512_OFF);
        let joined = format!("GLIBC_TUNABLES=glibc.malloc.check=3:{AVX512_OFF}");
        assert_eq!(e, env(&[&joined, "HOME=/"]));
        // An empty variable gets the tunable alone.
        let mut e = env(&["GLIBC_TUNABLES="]);
        add_tunable(&mut e, AVX512_OFF);
        assert_eq!(e, env(&[&off]));
        // The user's own choice of hwcaps is kept as it is.
        let own = env(&["GLIBC_TUNABLES=glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX2"]);
        let mut e = own.clone();
        add_tunable(&mut e, AVX512_OFF);
        assert_eq!(e, own);
        // The user's threshold stays; the other fixed sizes join it.
        let mut e = env(&["GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=0x1000"]);
        for t in FIXED_CACHES {
            add_tunable(&mut e, t);
        }
        let v = e[0].to_str().unwrap();
        assert!(v.contains("x86_rep_movsb_threshold=0x1000"), "{v}");
        assert!(!v.contains("x86_rep_movsb_threshold=0x2000"), "{v}");
        assert!(v.contains("x86_non_temporal_threshold=0x200000"), "{v}");
        assert_eq!(v.matches(':').count(), FIXED_CACHES.len() - 1, "{v}");
    }
}
