//! Issue 23 end to end: a stripped binary never charges a sample to the wrong function.
//!
//! `tests/workloads/stripped_main.c` and `stripped_lib.c` are built at test time with gcc
//! and clang-16 at -O2, PIE and not:
//!
//! ```text
//! CC -O2 -g -fPIC -shared [-fno-toplevel-reorder] -o DIR/libwork.so stripped_lib.c
//! CC -O2 -g [-no-pie | -fPIE -pie] -o DIR/stripped_main stripped_main.c -LDIR -lwork -Wl,-rpath,'$ORIGIN'
//! ```
//!
//! (gcc's `-fno-toplevel-reorder` keeps the tiny exported `work_is_supported` before the
//! hot static functions, the layout of the bug), recorded with `lbrprof record`, then
//! stripped (`strip -s`, `strip --strip-debug`; `strip -s` leaves the library only its
//! `.dynsym`). The same recording is reported against the stripped copies (`--symfs`):
//! every row mapped back through the unstripped symbol table must be the same function
//! with exactly the same samples, each function one row. Recording the stripped build
//! again gives the same shares within 3 points. No row or BOLT profile line names a
//! function whose extent does not contain its samples.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSymbol};
use serde_json::Value;

const EXE: &str = "stripped_main";
const LIB: &str = "libwork.so";

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: needs {tool}");
    }
    ok
}

fn sh(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn workload(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(name)
        .display()
        .to_string()
}

/// Builds the executable and its library into `dir`.
fn build(dir: &Path, cc: &str, pie: bool) {
    let mut lib = vec!["-O2", "-g", "-fPIC", "-shared"];
    if cc == "gcc" {
        lib.push("-fno-toplevel-reorder");
    }
    let lib_src = workload("stripped_lib.c");
    lib.extend(["-o", LIB, &lib_src]);
    sh(dir, cc, &lib);
    let main_src = workload("stripped_main.c");
    let mut exe = vec!["-O2", "-g"];
    exe.extend(if pie {
        ["-fPIE", "-pie"]
    } else {
        ["-fno-pie", "-no-pie"]
    });
    exe.extend(["-o", EXE, &main_src, "-L.", "-lwork", "-Wl,-rpath,$ORIGIN"]);
    sh(dir, cc, &exe);
}

/// Records `dir/stripped_main N` into `dir/NAME`.
fn record(dir: &Path, name: &str, n: &str) -> PathBuf {
    let data = dir.join(name);
    let out = common::lbrprof()
        .current_dir(dir)
        .args(["record", "-F", "4000", "-o"])
        .arg(&data)
        .args(["--", &format!("./{EXE}"), n])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

/// Function symbols of an ELF file: name → (start, size).
fn sized_functions(path: &Path) -> BTreeMap<String, (u64, u64)> {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    obj.symbols()
        .chain(obj.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| Some((s.name().ok()?.to_owned(), (s.address(), s.size()))))
        .collect()
}

/// `report --format json` of `data` (module files looked up under `symfs`).
fn report(data: &Path, symfs: Option<&Path>) -> Value {
    let mut cmd = common::lbrprof();
    cmd.args(["report", "--format", "json", "--limit", "0", "-i"])
        .arg(data);
    if let Some(dir) = symfs {
        cmd.arg("--symfs").arg(dir);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A function row's identity through the unstripped symbol tables: (module, start), or
/// the name itself for PLT entries and modules other than the two built here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    At(String, u64),
    Named(String, String),
}

struct Tables {
    /// Per module file name: the unstripped sized functions.
    by_module: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
}

impl Tables {
    fn new(dir: &Path) -> Self {
        let by_module = [EXE, LIB]
            .iter()
            .map(|m| (m.to_string(), sized_functions(&dir.join(m))))
            .collect();
        Tables { by_module }
    }

    /// The key of a row; panics when a row of a built module carries a name the
    /// unstripped table does not have (a wrong name).
    fn key(&self, module: &str, function: &str) -> Key {
        let Some(table) = self.by_module.get(module) else {
            return Key::Named(module.to_owned(), function.to_owned());
        };
        if function.ends_with("@plt") {
            return Key::Named(module.to_owned(), function.to_owned());
        }
        if let Some(hex) = function.strip_prefix(&format!("{module}+0x")) {
            let start = u64::from_str_radix(hex, 16).unwrap();
            // An unnamed function starts where a sized unstripped function starts; any
            // other `module+0x…` row is an address no symbol or unwind entry covers.
            if table.values().any(|&(s, size)| s == start && size > 0) {
                return Key::At(module.to_owned(), start);
            }
            return Self::no_extent(module);
        }
        let &(start, size) = table
            .get(function)
            .unwrap_or_else(|| panic!("{module}: {function} is not a function of the file"));
        if size == 0 {
            // A sizeless symbol (crtstuff's `__do_global_dtors_aux`, `_init`) has no
            // unwind entry either: once stripped, its code is unnamed addresses.
            return Self::no_extent(module);
        }
        Key::At(module.to_owned(), start)
    }

    /// The one key of a module's code without a known extent: sizeless symbols in the
    /// unstripped build, bare addresses in the stripped one.
    fn no_extent(module: &str) -> Key {
        Key::Named(module.to_owned(), "(code without an extent)".to_owned())
    }
}

/// Self samples per function key, checking that each function is one row.
fn rows(report: &Value, tables: &Tables) -> BTreeMap<Key, u64> {
    let mut out = BTreeMap::new();
    for f in report["functions"].as_array().unwrap() {
        let module = f["module"].as_str().unwrap();
        let function = f["function"].as_str().unwrap();
        let key = tables.key(module, function);
        let samples = f["self_samples"].as_u64().unwrap();
        let n = out.entry(key.clone()).or_insert(0);
        assert!(
            *n == 0 || matches!(key, Key::Named(..)),
            "{key:?} is split over several rows"
        );
        *n += samples;
    }
    out
}

/// The shares of the two built modules' functions, in percent of all samples.
fn shares(rows: &BTreeMap<Key, u64>) -> BTreeMap<Key, f64> {
    let total: u64 = rows.values().sum();
    rows.iter()
        .filter(|(k, _)| matches!(k, Key::At(..)))
        .map(|(k, n)| (k.clone(), *n as f64 * 100.0 / total as f64))
        .collect()
}

/// `export --bolt` of `data`; returns the profile and what export printed.
fn bolt(data: &Path, symfs: Option<&Path>, out: &Path, dso: Option<&str>) -> (String, String) {
    let mut cmd = common::lbrprof();
    cmd.args(["export", "--bolt", "-i"])
        .arg(data)
        .arg("-o")
        .arg(out);
    if let Some(dir) = symfs {
        cmd.arg("--symfs").arg(dir);
    }
    if let Some(dso) = dso {
        cmd.args(["--dso", dso]);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        std::fs::read_to_string(out).unwrap(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every `1 NAME OFFSET COUNT` line naming a function of the built modules has its offset
/// inside that function. Returns how many lines were checked.
fn bolt_offsets_inside(fdata: &str, tables: &Tables) -> usize {
    let mut checked = 0;
    for line in fdata.lines().skip(1) {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 4, "{line}");
        let off = u64::from_str_radix(parts[2], 16).unwrap();
        for table in tables.by_module.values() {
            if let Some((_, size)) = table.get(parts[1]) {
                assert!(
                    *size == 0 || off < *size,
                    "{line}: offset past the function's {size:#x} bytes"
                );
                checked += 1;
            }
        }
    }
    checked
}

/// Copies of the built files under `dir/NAME`, stripped with `strip ARGS`.
fn stripped_copy(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in [EXE, LIB] {
        let mut a: Vec<&str> = args.to_vec();
        let dest = out.join(f);
        let dest_s = dest.to_str().unwrap().to_owned();
        a.extend(["-o", &dest_s, f]);
        sh(dir, "strip", &a);
    }
    out
}

/// `lbrprof symbolize -e FILE ADDR`: the function line.
fn function_at(file: &Path, addr: u64) -> String {
    let out = common::run(&[
        "symbolize",
        "--style",
        "gnu",
        "-e",
        file.to_str().unwrap(),
        &format!("{addr:x}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn one_build(cc: &str, pie: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, cc, pie);
    let tables = Tables::new(dir);
    let data = record(dir, "full.data", "60000000");
    let full = report(&data, None);
    let full_rows = rows(&full, &tables);
    let full_shares = shares(&full_rows);
    eprintln!("{cc} pie={pie}: unstripped {full_shares:?}");
    // The hot functions are found, by name, in both modules.
    for (module, f) in [
        (EXE, "spin_main"),
        (LIB, "mix_a"),
        (LIB, "mix_b"),
        (LIB, "work_run"),
    ] {
        let key = tables.key(module, f);
        assert!(
            full_shares.get(&key).is_some_and(|s| *s > 1.0),
            "{module} {f}: {:?}",
            full_shares.get(&key)
        );
    }
    // No samples in unnamed code of the unstripped modules (the system's libc and ld.so,
    // with only their .dynsym, may take a sample in their unexported code).
    let unnamed = full["meta"]["unnamed"].as_array().unwrap();
    assert!(
        !unnamed.iter().any(|u| {
            let m = u["module"].as_str().unwrap_or_default();
            m.ends_with(&format!("/{EXE}")) || m.ends_with(&format!("/{LIB}"))
        }),
        "{unnamed:?}"
    );
    let (fdata, _) = bolt(&data, None, &dir.join("full.fdata"), None);
    assert!(bolt_offsets_inside(&fdata, &tables) > 0, "{fdata}");

    for (name, args) in [
        ("strip-all", &["-s"][..]),
        ("strip-debug", &["--strip-debug"][..]),
    ] {
        let symfs = stripped_copy(dir, name, args);
        let stripped = report(&data, Some(&symfs));
        let stripped_rows = rows(&stripped, &tables);
        assert_eq!(
            stripped_rows, full_rows,
            "{cc} pie={pie} {name}: the stripped profile differs"
        );
        // Functions known only by their extent: that extent is the unstripped symbol's.
        for f in stripped["functions"].as_array().unwrap() {
            let (module, function) = (
                f["module"].as_str().unwrap(),
                f["function"].as_str().unwrap(),
            );
            if !tables.by_module.contains_key(module)
                || !function.starts_with(&format!("{module}+0x"))
            {
                continue;
            }
            let Key::At(_, start) = tables.key(module, function) else {
                continue;
            };
            let (_, size) = *tables.by_module[module]
                .values()
                .find(|(s, _)| *s == start)
                .unwrap();
            let file = symfs.join(module);
            assert_eq!(function_at(&file, start + size - 1), function);
            assert_ne!(function_at(&file, start + size), function);
        }
        let unnamed = stripped["meta"]["unnamed"].as_array().unwrap();
        if name == "strip-all" {
            // The hot static functions have no name left, and the header says so.
            assert!(
                unnamed
                    .iter()
                    .any(|u| u["module"].as_str().unwrap().ends_with(LIB)),
                "{unnamed:?}"
            );
            let text = common::lbrprof()
                .args(["report", "-i"])
                .arg(&data)
                .arg("--symfs")
                .arg(&symfs)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&text.stdout);
            let line = text
                .lines()
                .find(|l| l.starts_with("# unnamed:") && l.contains(LIB))
                .unwrap_or_else(|| panic!("no unnamed-code line for {LIB}:\n{text}"));
            assert!(
                line.contains("--debug-dir DIR with DIR/.build-id/"),
                "{line}"
            );
            let (fdata, warning) = bolt(&data, Some(&symfs), &dir.join("s.fdata"), None);
            bolt_offsets_inside(&fdata, &tables);
            assert!(warning.contains("left out of the profile"), "{warning}");
        } else {
            // The workload's own code is all named. (A sample may still land in a system
            // library's code that has no symbol, e.g. a static function of libc.)
            let own = |u: &&serde_json::Value| {
                let m = u["module"].as_str().unwrap_or_default();
                m.ends_with(LIB) || m.ends_with(EXE)
            };
            assert!(!unnamed.iter().any(|u| own(&u)), "{unnamed:?}");
        }
    }
}

fn compilers() -> Vec<&'static str> {
    ["gcc", "clang-16"]
        .into_iter()
        .filter(|c| have(c))
        .collect()
}

#[test]
fn stripped_pie_builds_give_the_same_functions_and_shares() {
    if !common::perf_available() || !have("strip") {
        return;
    }
    for cc in compilers() {
        one_build(cc, true);
    }
}

#[test]
fn stripped_non_pie_builds_give_the_same_functions_and_shares() {
    if !common::perf_available() || !have("strip") {
        return;
    }
    for cc in compilers() {
        one_build(cc, false);
    }
}

/// The stripped build recorded again (sampled data): the same functions, each share
/// within 3 points of the unstripped build's.
#[test]
fn recording_the_stripped_build_again_gives_the_same_shares() {
    if !common::perf_available() || !have("strip") || !have("gcc") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, "gcc", true);
    let tables = Tables::new(dir);
    let full = shares(&rows(
        &report(&record(dir, "full.data", "60000000"), None),
        &tables,
    ));
    // Stripped in place: the recording names the stripped files.
    let unstripped = dir.join("unstripped");
    std::fs::create_dir(&unstripped).unwrap();
    for f in [EXE, LIB] {
        std::fs::copy(dir.join(f), unstripped.join(f)).unwrap();
        sh(dir, "strip", &["-s", f]);
    }
    let tables = Tables::new(&unstripped);
    let stripped = shares(&rows(
        &report(&record(dir, "stripped.data", "60000000"), None),
        &tables,
    ));
    eprintln!("unstripped {full:?}\nstripped   {stripped:?}");
    for (key, share) in &full {
        if *share < 1.0 {
            continue;
        }
        let again = stripped.get(key).copied().unwrap_or(0.0);
        assert!(
            (again - share).abs() <= 3.0,
            "{key:?}: {share:.1}% unstripped, {again:.1}% stripped"
        );
    }
}

/// A `.dynsym`-only library (the Debian case) exported as a BOLT profile: the named
/// functions' offsets stay inside them, the unnamed code is counted in a warning, and
/// llvm-bolt's profile reader accepts the profile without complaint. BOLT is given the
/// unstripped library (the same code): it reads no `.dynsym` names in a stripped file.
#[test]
fn bolt_profile_of_a_dynsym_only_library_is_accepted_by_llvm_bolt() {
    if !common::perf_available() || !have("strip") || !have("gcc") || !have("llvm-bolt-16") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    build(dir, "gcc", true);
    let tables = Tables::new(dir);
    let data = record(dir, "full.data", "60000000");
    let symfs = stripped_copy(dir, "s", &["-s"]);
    let fdata_path = dir.join("lib.fdata");
    let (fdata, warning) = bolt(&data, Some(&symfs), &fdata_path, Some(LIB));
    assert!(fdata.starts_with("no_lbr "), "{fdata}");
    assert!(
        fdata.lines().any(|l| l.starts_with("1 work_run ")),
        "the exported hot function is named: {fdata}"
    );
    assert!(bolt_offsets_inside(&fdata, &tables) > 0);
    assert!(warning.contains("left out of the profile"), "{warning}");
    let lib = dir.join(LIB);
    let out = Command::new("llvm-bolt-16")
        .arg(&lib)
        .arg(format!("-data={}", fdata_path.display()))
        .arg("-o")
        .arg(dir.join("libwork.bolt.so"))
        .arg("-v=1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "llvm-bolt-16 failed:\n{text}");
    for bad in ["out of function", "invalid", "mismatch", "error"] {
        assert!(
            !text.to_lowercase().contains(bad),
            "llvm-bolt-16 complained ({bad}):\n{text}"
        );
    }
    // BOLT matched the profile to at least one function.
    let profiled = text
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("BOLT-INFO: ")?;
            let (n, tail) = rest.split_once(" out of ")?;
            tail.contains("have non-empty execution profile")
                .then(|| n.parse::<u64>().ok())?
        })
        .unwrap_or_else(|| panic!("no profile summary from llvm-bolt-16:\n{text}"));
    assert!(profiled >= 1, "{text}");
}
