//! Profile-guided optimisation: the profiles `export` writes are the ones the optimisers
//! read, checked against the optimisers themselves (llvm-bolt-16 and its perf2bolt
//! aggregator).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn propeller() -> Option<(PathBuf, PathBuf)> {
    let Some(dir) = common::perfdata_fixtures() else {
        eprintln!("skipped: ../shared/fixtures/perfdata is not there");
        return None;
    };
    Some((
        dir.join("propeller_sample.perfdata"),
        dir.join("propeller_sample.bin"),
    ))
}

fn tool(name: &str) -> bool {
    let ok = Command::new(name).arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: {name} is not installed (Debian bolt-16)");
    }
    ok
}

fn export_bolt(data: &Path, out: &Path, extra: &[&str]) -> String {
    let dir = data.parent().unwrap().to_str().unwrap();
    let mut a = vec![
        "export",
        "--bolt",
        "-i",
        data.to_str().unwrap(),
        "--symfs",
        dir,
        "--kallsyms",
        "/dev/null",
        "-o",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    let o = common::run(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().collect();
    v.sort_unstable();
    v
}

/// What llvm-bolt-16 says about a profile: (functions with profile, stale warning line).
/// Runs llvm-bolt-16 with `-reorder-blocks=ext-tsp` and `extra`, writing `dir/bolted`.
fn bolt_verdict(bin: &Path, fdata: &Path, dir: &Path, extra: &[&str]) -> (String, Option<String>) {
    let out = Command::new("llvm-bolt-16")
        .arg(bin)
        .arg(format!("-data={}", fdata.display()))
        .arg("-o")
        .arg(dir.join("bolted"))
        .arg("-reorder-blocks=ext-tsp")
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "llvm-bolt-16 failed: {text}");
    let profiled = text
        .lines()
        .find(|l| l.contains("have non-empty execution profile"))
        .unwrap_or_else(|| panic!("no profile summary from llvm-bolt-16: {text}"))
        .to_owned();
    let stale = text
        .lines()
        .find(|l| l.contains("samples in the binary") && l.contains("stale"))
        .map(str::to_owned);
    (profiled, stale)
}

/// `export --bolt` on the propeller fixture writes exactly what perf2bolt writes for it
/// (`llvm-bolt-16 -aggregate-only -p`, which runs `perf script` itself), line for line:
/// the same taken branches and the same fall-through edges between BOLT's basic blocks.
#[test]
fn bolt_export_equals_perf2bolt_on_the_propeller_fixture() {
    let Some((data, bin)) = propeller() else {
        return;
    };
    if !tool("llvm-bolt-16") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ours = export_bolt(&data, &tmp.path().join("ours.fdata"), &[]);
    let theirs_path = tmp.path().join("perf2bolt.fdata");
    let out = Command::new("llvm-bolt-16")
        .arg("-aggregate-only")
        .arg("-p")
        .arg(&data)
        .arg(&bin)
        .arg("-o")
        .arg(&theirs_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "perf2bolt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = std::fs::read_to_string(&theirs_path).unwrap();
    // perf2bolt writes in hash order; ours is sorted.
    assert_eq!(sorted_lines(&ours), sorted_lines(&theirs));
    // The lines the block-based fall-throughs add over "a conditional not taken":
    // a block falling into a join label, and a jump to the next instruction crossed by
    // a trace (the 173 traces from the loop head to the back edge).
    for l in [
        "1 main 8b 1 main 90 0 6553",
        "1 compute_flag 29 1 compute_flag 30 0 13855",
        "1 main e4 1 main e9 0 22153",
    ] {
        assert!(ours.lines().any(|x| x == l), "{l} missing: {ours}");
    }
}

/// llvm-bolt-16 reads the export and finds a valid profile for both hot functions; the
/// same check flags a profile with one impossible fall-through as stale.
#[test]
fn llvm_bolt_finds_no_stale_profile_in_the_export() {
    let Some((data, bin)) = propeller() else {
        return;
    };
    if !tool("llvm-bolt-16") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fdata = tmp.path().join("ours.fdata");
    let ours = export_bolt(&data, &fdata, &[]);
    let (profiled, stale) = bolt_verdict(&bin, &fdata, tmp.path(), &[]);
    assert!(profiled.contains(" 2 out of "), "{profiled}");
    assert_eq!(stale, None);
    // compute_flag+0x1b is mid-block: no such fall-through exists.
    let bad = tmp.path().join("bad.fdata");
    std::fs::write(
        &bad,
        format!("{ours}1 compute_flag 1b 1 compute_flag 29 0 5000\n"),
    )
    .unwrap();
    let (_, stale) = bolt_verdict(&bin, &bad, tmp.path(), &[]);
    assert!(stale.is_some_and(|s| s.contains("stale")));
}

// ---------------------------------------------------------------------------------------
// A guest recording of a real program (emulated LBR in the VM).

fn have(cmd: &str, why: &str) -> bool {
    let ok = Command::new(cmd).arg("--version").output().is_ok();
    if !ok {
        eprintln!("skipped: {cmd} is not installed ({why})");
    }
    ok
}

/// Builds tests/workloads/pgo_interp.c as the PGO loop does (clang-16 -O2, line tables,
/// relocations kept for BOLT; DWARF 4 for Debian's create_llvm_prof, which reads no
/// DWARF 5 ranges) and records it in the VM with the emulated LBR.
fn guest_recording(dir: &Path) -> (PathBuf, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/pgo_interp.c");
    let exe = dir.join("interp");
    let st = Command::new("clang-16")
        .args([
            "-O2",
            "-gline-tables-only",
            "-gdwarf-4",
            "-Wl,--emit-relocs",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    let data = dir.join("interp.data");
    let out = common::lbrprof()
        .args(["record", "-o"])
        .arg(&data)
        .args(["--lbr-overhead", "0", "--vm", "--lbr", "emulated", "--"])
        .arg(&exe)
        .arg("20000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let native = Command::new(&exe).arg("20000").output().unwrap();
    assert_eq!(out.stdout, native.stdout);
    (exe, data)
}

fn export(data: &Path, flag: &str, out: &Path, extra: &[&str]) -> String {
    let mut a = vec![
        "export",
        flag,
        "-i",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    let o = common::run(&a);
    assert!(
        o.status.success(),
        "{a:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(out).unwrap()
}

/// `name:total:head` and depth-1 body lines `offset[.disc]: count` of a text sample
/// profile: (function -> (total, lines)).
fn parse_afdo(text: &str) -> Afdo {
    let mut out = BTreeMap::new();
    let mut cur: Option<String> = None;
    for l in text.lines() {
        if !l.starts_with(' ') {
            // (Debian's create_llvm_prof 0.19 garbles some inlined callees' names, line
            // breaks included: a line that is no `name:total:head` starts nothing.)
            let mut f = l.rsplitn(3, ':');
            let (_head, total, name) = (f.next(), f.next(), f.next());
            cur = match (name, total.and_then(|t| t.parse::<u64>().ok())) {
                (Some(name), Some(total)) => {
                    out.insert(name.to_owned(), (total, BTreeMap::new()));
                    Some(name.to_owned())
                }
                _ => None,
            };
        } else if l.starts_with(' ') && !l.starts_with("  ") {
            let Some((loc, rest)) = l.trim().split_once(": ") else {
                continue;
            };
            // Body lines only (a call site is `offset: callee:total`).
            let count = rest.split(' ').next().unwrap();
            if let (Ok(n), Some(f)) = (count.parse::<u64>(), &cur) {
                out.get_mut(f).unwrap().1.insert(loc.to_owned(), n);
            }
        }
    }
    out
}

type Afdo = BTreeMap<String, (u64, BTreeMap<String, u64>)>;

/// Each function of ours is in theirs with a total within 1%, and each of our lines
/// with a count has that count there. (Theirs also has line-0 code at offset
/// `0 - first line`, e.g. 65489, which names no line.)
fn same_functions_and_hot_lines(ours: &Afdo, theirs: &Afdo, text: &str) {
    for (f, (total, lines)) in ours {
        let (t, their_lines) = theirs.get(f).unwrap_or_else(|| panic!("{f} not in {text}"));
        assert!(
            total.abs_diff(*t) * 100 <= *t,
            "{f}: {total} vs create_llvm_prof's {t}"
        );
        for (l, n) in lines.iter().filter(|(_, n)| **n > 0) {
            assert_eq!(their_lines.get(l), Some(n), "{f} line {l}");
        }
    }
}

/// On a guest recording (the emulated LBR): the BOLT export equals what perf2bolt makes
/// of our pre-aggregated export (block cutting, returns onto block starts, local
/// function names all as BOLT has them), and llvm-bolt-16 finds nothing stale; the
/// AutoFDO export agrees with create_llvm_prof run on our raw AutoFDO export (same
/// function totals, same hot lines), and so does create_llvm_prof reading the recording
/// exported as a perf.data with branch stacks; llvm-profdata-16 reads our profile and
/// clang-16 uses it. The BOLTed and the clang-FDO programs print what the original prints.
#[test]
fn guest_recording_profiles_agree_with_perf2bolt_and_create_llvm_prof() {
    if !common::kvm_available()
        || !have("clang-16", "Debian clang-16")
        || !have("llvm-bolt-16", "Debian bolt-16")
        || !have("llvm-profdata-16", "Debian llvm-16")
    {
        return;
    }
    if Command::new("create_llvm_prof")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("skipped: create_llvm_prof is not installed (Debian autofdo)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (exe, data) = guest_recording(tmp.path());
    let name = exe.file_name().unwrap().to_str().unwrap();

    // BOLT.
    let fdata = tmp.path().join("ours.fdata");
    let ours = export(&data, "--bolt", &fdata, &["--dso", name]);
    let preagg_path = tmp.path().join("ours.preagg");
    let preagg = export(&data, "--bolt-preagg", &preagg_path, &[]);
    assert!(preagg.lines().any(|l| l.starts_with("f ")), "{preagg}");
    let theirs_path = tmp.path().join("perf2bolt.fdata");
    let out = Command::new("llvm-bolt-16")
        .args(["-aggregate-only", "-pa", "-p"])
        .arg(&preagg_path)
        .arg(&exe)
        .arg("-o")
        .arg(&theirs_path)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    // BOLT's "traces mismatching disassembled function contents: N (P%)". The emulated
    // LBR records only real branches, yet a run now and then has 2-3 such traces of
    // tens of thousands (0.0%); what makes them is not known yet. The bar for
    // BOLT is under 5% stale or mismatched; this holds it under 1%.
    let mismatching = log
        .lines()
        .find_map(|l| {
            l.split("mismatching disassembled function contents: ")
                .nth(1)
        })
        .and_then(|rest| {
            rest.split_once('(')?
                .1
                .split_once('%')?
                .0
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no mismatching-traces line: {log}"));
    assert!(mismatching < 1.0, "{log}");
    let traces: usize = log
        .lines()
        .find_map(|l| {
            l.split("mismatching disassembled function contents: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let theirs = std::fs::read_to_string(&theirs_path).unwrap();
    if traces == 0 {
        assert_eq!(sorted_lines(&ours), sorted_lines(&theirs));
    } else {
        // perf2bolt drops the traces it cannot match; our --bolt does not know them
        // yet: the two may differ in the few lines those traces touch, no more.
        let (a, b) = (sorted_lines(&ours), sorted_lines(&theirs));
        let differing = a.iter().filter(|l| !b.contains(l)).count()
            + b.iter().filter(|l| !a.contains(l)).count();
        assert!(
            differing <= 4 * traces,
            "{differing} lines differ:\n{ours}\n---\n{theirs}"
        );
    }
    assert!(ours.contains(" slow_path/1 "), "{ours}");
    // The loop's BOLT options; the optimised program prints what the original prints.
    let (profiled, stale) = bolt_verdict(
        &exe,
        &fdata,
        tmp.path(),
        &["-reorder-functions=hfsort+", "-split-functions"],
    );
    assert!(!profiled.contains(" 0 out of "), "{profiled}");
    assert_eq!(stale, None);
    let native = Command::new(&exe).arg("20000").output().unwrap();
    assert!(native.status.success());
    let bolted = Command::new(tmp.path().join("bolted"))
        .arg("20000")
        .output()
        .unwrap();
    assert!(bolted.status.success());
    assert_eq!(bolted.stdout, native.stdout);

    // AutoFDO.
    let afdo_path = tmp.path().join("ours.afdo");
    let afdo = export(&data, "--autofdo", &afdo_path, &[]);
    let raw = tmp.path().join("raw.txt");
    export(&data, "--autofdo-raw", &raw, &[]);
    let cl = tmp.path().join("create_llvm_prof.afdo");
    let st = Command::new("create_llvm_prof")
        .args(["--profiler=text", "--format=text"])
        .arg(format!("--profile={}", raw.display()))
        .arg(format!("--binary={}", exe.display()))
        .arg(format!("--out={}", cl.display()))
        .status()
        .unwrap();
    assert!(st.success());
    // Debian's create_llvm_prof 0.19 garbles inlined callees' names (not valid UTF-8).
    let theirs = String::from_utf8_lossy(&std::fs::read(&cl).unwrap()).into_owned();
    let a = parse_afdo(&afdo);
    assert!(
        a.contains_key("main") && a.contains_key("slow_path"),
        "{afdo}"
    );
    same_functions_and_hot_lines(&a, &parse_afdo(&theirs), &theirs);
    let prof = tmp.path().join("ours.prof");
    let out = Command::new("llvm-profdata-16")
        .args(["merge", "--sample"])
        .arg(&afdo_path)
        .arg("-o")
        .arg(&prof)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/pgo_interp.c");
    let out = Command::new("clang-16")
        .args([
            "-O2",
            "-gline-tables-only",
            "-Rpass=sample-profile-inline",
            "-o",
        ])
        .arg(tmp.path().join("interp_fdo"))
        .arg(format!("-fprofile-sample-use={}", afdo_path.display()))
        .arg(&src)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("warning:"), "{err}");
    // The profile steered inlining: clang matched its contexts.
    assert!(err.contains("to match profiling context"), "{err}");
    let fdo = Command::new(tmp.path().join("interp_fdo"))
        .arg("20000")
        .output()
        .unwrap();
    assert!(fdo.status.success());
    assert_eq!(fdo.stdout, native.stdout);

    // The same recording as a perf.data with branch stacks, read by create_llvm_prof's
    // own perf reader (the guest written as host processes, as it knows no guest
    // machines): the same function totals and hot lines as our AutoFDO export.
    let perfdata = tmp.path().join("guest.perfdata");
    let o = common::run(&[
        "export",
        "--perf-data",
        "--guest-cpumode",
        "host",
        "--no-callchains",
        "-i",
        data.to_str().unwrap(),
        "-o",
        perfdata.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cl = tmp.path().join("create_llvm_prof_perf.afdo");
    let st = Command::new("create_llvm_prof")
        .args(["--format=text"])
        .arg(format!("--profile={}", perfdata.display()))
        .arg(format!("--binary={}", exe.display()))
        .arg(format!("--out={}", cl.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let theirs = String::from_utf8_lossy(&std::fs::read(&cl).unwrap()).into_owned();
    same_functions_and_hot_lines(&parse_afdo(&afdo), &parse_afdo(&theirs), &theirs);
    // And lbrprof reading that perf.data (host processes with branch stacks, as
    // `perf record -b` writes them) makes the same profile as from the recording.
    let from_perf = export(
        &perfdata,
        "--autofdo",
        &tmp.path().join("from_perf.afdo"),
        &["--dso", name, "--event", "guest-lbr"],
    );
    assert_eq!(from_perf, afdo);
}

/// A binary profile names one binary, which must be the recorded build and, for
/// AutoFDO, have lines: anything else is a one-line error.
#[test]
fn binary_profiles_refuse_the_wrong_binary() {
    let Some((data, _)) = propeller() else {
        return;
    };
    let dir = data.parent().unwrap().to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("x");
    let base = [
        "-i",
        data.to_str().unwrap(),
        "--symfs",
        dir,
        "--kallsyms",
        "/dev/null",
        "-o",
        o.to_str().unwrap(),
    ];
    let fails = |extra: &[&str], want: &str| {
        let mut a = vec!["export"];
        a.extend(extra);
        a.extend(base);
        let out = common::run(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default().to_owned();
        assert_eq!(out.status.code(), Some(2), "{a:?}: {err}");
        assert!(
            last.starts_with("lbrprof: error:") && last.contains(want),
            "{err}"
        );
    };
    fails(
        &["--bolt-preagg", "--dso", "nosuch"],
        "no binary named nosuch",
    );
    fails(&["--autofdo"], "has no DWARF line tables");
    fails(&["--bolt-preagg", "--dso", "a,b"], "pass one --dso");

    // The recorded build-id is checked: a copy with another build-id in --symfs.
    let fake = tempfile::tempdir().unwrap();
    let c = fake.path().join("m.c");
    std::fs::write(&c, "int main(void) { return 0; }\n").unwrap();
    assert!(
        Command::new("cc")
            .arg(&c)
            .arg("-Wl,--build-id")
            .arg("-o")
            .arg(fake.path().join("propeller_sample.bin"))
            .status()
            .unwrap()
            .success()
    );
    let out = common::run(&[
        "export",
        "--bolt-preagg",
        "-i",
        data.to_str().unwrap(),
        "--symfs",
        fake.path().to_str().unwrap(),
        "--kallsyms",
        "/dev/null",
        "-o",
        o.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("build-id mismatch"), "{err}");
}
