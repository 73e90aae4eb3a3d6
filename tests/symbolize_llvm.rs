//! Agreement with `llvm-symbolizer-16` (the default `--style llvm`) on the layouts debug
//! info really ships in, each built at test time from `tests/fixtures-src/symbolizer/`
//! (`shapes.cc`, `shapes.rs`): line-tables-only DWARF (clang `-gline-tables-only`, Rust
//! `debuginfo=line-tables-only`, legacy and v0 mangling), DWARF 4 and 5, compressed
//! sections (zlib, zstd), split DWARF (`.dwo` files, a `.dwp` package), a stripped PIE
//! with its DWARF found by `.gnu_debuglink`, and dwz.
//!
//! Up to 10 000 distinct `.text` addresses per layout; function, file, line and the whole
//! inlined chain must be identical, except for the differences classified (and counted)
//! below, each a known choice or limit of one of the two tools:
//! * `demangler`: the same function, file and line, but its signature rendered
//!   differently: `cpp_demangle` and LLVM's demangler disagree on some C++ names (reference
//!   qualifiers of forwarded parameter packs, generic lambdas' `auto` parameters).
//! * `rust legacy`: LLVM 16 reads legacy Rust names as C++ (`r::main::h0123…`, `$LT$`
//!   escapes); we demangle them as Rust. Checked by re-mangling LLVM's name.
//! * `stripped`: for a stripped binary, both read symbols from the binary only (its
//!   `.dynsym`: LLVM's convention, which `lbrprof symbolize` follows; see the test of a
//!   stripped library below), and llvm-symbolizer prints `??` for code neither a symbol
//!   nor the DWARF covers (crt files); we name it by its unwind-table extent,
//!   `p.stripped+0x1040`.
//!
//! DWARF discriminators are left out of the comparison: llvm-symbolizer gives each
//! inlined caller the call site's discriminator, lbrprof the line row's to every frame.
//!
//! dwz: llvm-symbolizer 16 cannot read `.gnu_debugaltlink` supplementary files, so the dwz
//! layout is checked against lbrprof's own answers for the same binary before dwz; the
//! same for `.zdebug` sections (`--compress-debug-sections=zlib-gnu`), which LLVM 16 no
//! longer reads.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use object::{Object, ObjectSection};

const LLVM_SYMBOLIZER: &str = "llvm-symbolizer-16";
const ADDRESSES: usize = 10_000;

fn source(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures-src/symbolizer")
        .join(name)
}

/// True when `tool` can be run; otherwise says why the test skips.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipped: needs {tool}");
    }
    ok
}

fn sh(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Up to [`ADDRESSES`] distinct addresses of `.text`: all of them in a small file,
/// a fixed pseudo-random sample in a large one.
fn text_addresses(exe: &Path) -> Vec<u64> {
    let data = std::fs::read(exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let text = obj.section_by_name(".text").unwrap();
    let (lo, size) = (text.address(), text.size());
    if size <= ADDRESSES as u64 {
        return (lo..lo + size).collect();
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut addrs = std::collections::BTreeSet::new();
    while addrs.len() < ADDRESSES {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        addrs.insert(lo + (seed >> 11) % size);
    }
    addrs.into_iter().collect()
}

/// Frames per address from `-a` GNU-style output, as (function, location) pairs, with
/// discriminators removed.
fn frames(program: &str, args: &[&str], addrs: &[u64]) -> BTreeMap<u64, Vec<(String, String)>> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let mut map: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    let mut current = None;
    let mut function = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(hex) = line.strip_prefix("0x")
            && let Ok(a) = u64::from_str_radix(hex, 16)
            && function.is_none()
        {
            current = Some(a);
            map.insert(a, Vec::new());
            continue;
        }
        let Some(a) = current else { continue };
        match function.take() {
            None => function = Some(line.to_owned()),
            Some(f) => {
                let location = match line.find(" (discriminator ") {
                    Some(i) => &line[..i],
                    None => line,
                };
                map.get_mut(&a).unwrap().push((f, location.to_owned()));
            }
        }
    }
    map
}

/// Ours and llvm-symbolizer's frames, with the inlined chain or (`inlines` false,
/// `--no-inlines` to both) without it.
fn ours(exe: &Path, addrs: &[u64], inlines: bool) -> BTreeMap<u64, Vec<(String, String)>> {
    let exe_s = exe.to_str().unwrap();
    let mut args = vec!["symbolize", "-a", "-e", exe_s];
    if !inlines {
        args.push("--no-inlines");
    }
    frames(env!("CARGO_BIN_EXE_lbrprof"), &args, addrs)
}

fn llvm(exe: &Path, addrs: &[u64], inlines: bool) -> BTreeMap<u64, Vec<(String, String)>> {
    let exe_s = exe.to_str().unwrap();
    let mut args = vec!["--output-style=GNU", "-a", "-f", "-C", "-e", exe_s];
    args.push(if inlines { "-i" } else { "--no-inlines" });
    frames(LLVM_SYMBOLIZER, &args, addrs)
}

/// The qualified name of a function without its template arguments and parameters.
fn base_name(name: &str) -> &str {
    let end = name.find(['<', '(']).unwrap_or(name.len());
    // A return type before the name (`void f<int>()`) is part of the rendering too.
    name[..end].rsplit(' ').next().unwrap_or("")
}

/// LLVM's C++ reading of a legacy Rust name (`a::b::h0123456789abcdef`), mangled back
/// and demangled as Rust: what lbrprof prints for it.
fn legacy_rust(llvm_name: &str) -> Option<String> {
    // A `.llvm.N` suffix LLVM shows as ` (.llvm.N)`; rustc-demangle drops it.
    let name = llvm_name.split(" (.").next()?;
    let parts: Vec<&str> = name.split("::").collect();
    let hash = parts.last()?;
    if !(hash.len() == 17 && hash.starts_with('h')) {
        return None;
    }
    let mut mangled = String::from("_ZN");
    for p in &parts {
        mangled.push_str(&format!("{}{p}", p.len()));
    }
    mangled.push('E');
    rustc_demangle::try_demangle(&mangled)
        .ok()
        .map(|d| format!("{d:#}"))
}

#[derive(Default, Debug)]
struct Agreement {
    addresses: usize,
    identical: usize,
    demangler: usize,
    rust_legacy: usize,
    stripped: usize,
    different: Vec<String>,
}

fn compare(layout: &str, exe: &Path, stripped: bool) -> Agreement {
    compare_frames(layout, exe, stripped, true)
}

fn compare_frames(layout: &str, exe: &Path, stripped: bool, inlines: bool) -> Agreement {
    let addrs = text_addresses(exe);
    let theirs = llvm(exe, &addrs, inlines);
    let ours = ours(exe, &addrs, inlines);
    assert_eq!(
        theirs.len(),
        addrs.len(),
        "{layout}: llvm-symbolizer answered"
    );
    assert_eq!(ours.len(), addrs.len(), "{layout}: lbrprof answered");
    let mut a = Agreement {
        addresses: addrs.len(),
        ..Default::default()
    };
    for addr in &addrs {
        let (t, o) = (&theirs[addr], &ours[addr]);
        if t == o {
            a.identical += 1;
            continue;
        }
        let unknown = vec![("??".to_owned(), "??:0".to_owned())];
        if stripped && *t == unknown && o.len() == 1 && o[0].0 != "??" {
            a.stripped += 1;
            continue;
        }
        let same_shape = t.len() == o.len() && t.iter().zip(o).all(|(x, y)| x.1 == y.1);
        let names: Vec<(&str, &str)> = t
            .iter()
            .zip(o)
            .filter(|(x, y)| x.0 != y.0)
            .map(|(x, y)| (x.0.as_str(), y.0.as_str()))
            .collect();
        if same_shape
            && names
                .iter()
                .all(|(x, y)| legacy_rust(x).as_deref() == Some(*y))
        {
            a.rust_legacy += 1;
        } else if same_shape
            && names
                .iter()
                .all(|(x, y)| legacy_rust(x).as_deref() == Some(*y) || base_name(x) == base_name(y))
        {
            a.demangler += 1;
        } else if a.different.len() < 20 {
            a.different.push(format!(
                "{addr:#x}\n  llvm-symbolizer: {t:?}\n  lbrprof:         {o:?}"
            ));
        } else {
            a.different.push(String::new());
        }
    }
    eprintln!(
        "{layout}: {} addresses: {} identical, {} demangler, {} rust legacy, {} stripped, {} different",
        a.addresses,
        a.identical,
        a.demangler,
        a.rust_legacy,
        a.stripped,
        a.different.len()
    );
    a
}

fn assert_agrees(layout: &str, a: &Agreement) {
    assert!(
        a.different.is_empty(),
        "{layout}: {} addresses differ from llvm-symbolizer:\n{}",
        a.different.len(),
        a.different.join("\n")
    );
    // The explained classes stay exceptions: most addresses are identical. (The g++
    // builds are the lowest, ~70%: gcc mangles the fixture's generic lambda so that both
    // demanglers render the std::sort helpers' signatures differently.)
    assert!(
        a.identical * 10 >= a.addresses * 6,
        "{layout}: only {}/{} identical ({a:?})",
        a.identical,
        a.addresses
    );
}

#[test]
fn cxx_layouts_agree_with_llvm_symbolizer() {
    if !have(LLVM_SYMBOLIZER) || !have("clang++-16") || !have("g++") || !have("llvm-dwp-16") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source("shapes.cc");
    let src = src.to_str().unwrap();
    let build = |sub: &str, compiler: &str, flags: &[&str]| -> PathBuf {
        let at = d.join(sub);
        std::fs::create_dir_all(&at).unwrap();
        let mut args = flags.to_vec();
        args.extend(["-o", "p", src]);
        sh(&at, compiler, &args);
        at.join("p")
    };
    let mut layouts: Vec<(&str, PathBuf, bool)> = vec![
        (
            "clang++ -O2 -gline-tables-only",
            build("lto", "clang++-16", &["-O2", "-gline-tables-only"]),
            false,
        ),
        (
            "clang++ -O2 -g (DWARF 5)",
            build("clang5", "clang++-16", &["-O2", "-g"]),
            false,
        ),
        (
            "g++ -O2 -g -gdwarf-4 -gz=zlib",
            build("zlib", "g++", &["-O2", "-g", "-gdwarf-4", "-gz=zlib"]),
            false,
        ),
        (
            "g++ -O2 -gsplit-dwarf (.dwo)",
            build("dwo", "g++", &["-O2", "-g", "-gsplit-dwarf"]),
            false,
        ),
    ];
    // zstd-compressed sections.
    let full = build("zstd", "g++", &["-O2", "-g"]);
    sh(
        full.parent().unwrap(),
        "objcopy",
        &["--compress-debug-sections=zstd", "p", "p.zstd"],
    );
    layouts.push((
        "g++ -O2 -g, zstd sections",
        full.with_extension("zstd"),
        false,
    ));
    // A .dwp package beside the binary, the .dwo files gone.
    let dwp = build("dwp", "g++", &["-O2", "-g", "-gsplit-dwarf"]);
    let at = dwp.parent().unwrap();
    sh(at, "llvm-dwp-16", &["-e", "p", "-o", "p.dwp"]);
    for e in std::fs::read_dir(at).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "dwo") {
            std::fs::remove_file(p).unwrap();
        }
    }
    layouts.push(("g++ -O2 -gsplit-dwarf + dwp", dwp, false));
    // A stripped PIE, its DWARF in a separate file named by .gnu_debuglink.
    let pie = build("debuglink", "clang++-16", &["-O2", "-g", "-fPIE", "-pie"]);
    let at = pie.parent().unwrap();
    sh(at, "objcopy", &["--only-keep-debug", "p", "p.debug"]);
    sh(
        at,
        "objcopy",
        &[
            "--strip-all",
            "--add-gnu-debuglink=p.debug",
            "p",
            "p.stripped",
        ],
    );
    layouts.push(("stripped PIE + .gnu_debuglink", at.join("p.stripped"), true));

    for (layout, exe, stripped) in &layouts {
        let a = compare(layout, exe, *stripped);
        assert_agrees(layout, &a);
    }
}

/// Debian builds its packages with `-ffile-prefix-map=BUILDDIR=.`, so a unit's
/// `DW_AT_comp_dir` is relative (`./libio` in libc6-dbg) and, in DWARF 5, also the line
/// table's directory 0: LLVM prints such a file once (`./sub/shapes.cc`; binutils joins
/// the two, `./sub/./sub/shapes.cc`, as the gnu style does). And without inlined frames
/// both name the innermost function, an inlined one included, at its line.
#[test]
fn relative_compilation_directories_and_no_inlines_agree_with_llvm_symbolizer() {
    if !have(LLVM_SYMBOLIZER) || !have("g++") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sub = root.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::copy(source("shapes.cc"), sub.join("shapes.cc")).unwrap();
    let map = format!("-ffile-prefix-map={}=.", root.display());
    sh(
        &sub,
        "g++",
        &["-O2", "-g", "-gdwarf-5", &map, "-o", "p", "shapes.cc"],
    );
    let exe = sub.join("p");
    let dump = Command::new("llvm-dwarfdump-16")
        .args(["--debug-info", exe.to_str().unwrap()])
        .output();
    if let Ok(dump) = dump {
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(
            dump.contains("DW_AT_comp_dir\t(\"./sub\")"),
            "relative comp_dir"
        );
    }
    let a = compare("g++ -gdwarf-5, relative comp_dir", &exe, false);
    assert_agrees("g++ -gdwarf-5, relative comp_dir", &a);
    let addrs = text_addresses(&exe);
    let files = |frames: BTreeMap<u64, Vec<(String, String)>>| -> Vec<String> {
        frames
            .into_values()
            .flatten()
            .map(|(_, file)| file)
            .collect()
    };
    let llvm_style = files(ours(&exe, &addrs, true));
    assert!(llvm_style.iter().any(|f| f.starts_with("./sub/shapes.cc:")));
    assert!(!llvm_style.iter().any(|f| f.contains("/./")));
    let gnu = files(frames(
        env!("CARGO_BIN_EXE_lbrprof"),
        &[
            "symbolize",
            "--style",
            "gnu",
            "-a",
            "-e",
            exe.to_str().unwrap(),
        ],
        &addrs,
    ));
    assert!(gnu.iter().any(|f| f.starts_with("./sub/./sub/shapes.cc:")));

    for (layout, exe) in [
        (
            "g++ -gdwarf-5, relative comp_dir, --no-inlines",
            exe.clone(),
        ),
        ("clang++ -O2 -g, --no-inlines", {
            let at = root.join("clang");
            std::fs::create_dir_all(&at).unwrap();
            let src = source("shapes.cc");
            sh(
                &at,
                "clang++-16",
                &["-O2", "-g", "-o", "p", src.to_str().unwrap()],
            );
            at.join("p")
        }),
    ] {
        let a = compare_frames(layout, &exe, false, false);
        assert_agrees(layout, &a);
    }
}

#[test]
fn rust_line_tables_only_agrees_with_llvm_symbolizer() {
    if !have(LLVM_SYMBOLIZER) || !have("rustc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source("shapes.rs");
    // rustc's default mangling is legacy.
    let cases: [(&str, &[&str]); 2] = [
        ("legacy", &[]),
        ("v0", &["-C", "symbol-mangling-version=v0"]),
    ];
    for (name, flags) in cases {
        let mut args = vec![
            "-O",
            "-C",
            "debuginfo=line-tables-only",
            "-o",
            name,
            src.to_str().unwrap(),
        ];
        args.extend(flags);
        sh(dir.path(), "rustc", &args);
        let layout = format!("rustc -O debuginfo=line-tables-only, {name} mangling");
        let a = compare(&layout, &dir.path().join(name), false);
        assert_agrees(&layout, &a);
        if name == "v0" {
            assert_eq!(a.rust_legacy, 0, "{layout}: {a:?}");
        }
    }
}

/// dwz moves shared DWARF into a supplementary file (`.gnu_debugaltlink`); the answers
/// must be the same as for the binary before dwz.
#[test]
fn dwz_supplementary_files_give_the_same_frames() {
    if !have("dwz") || !have("g++") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sh(
        d,
        "g++",
        &[
            "-O2",
            "-g",
            "-o",
            "a",
            source("shapes.cc").to_str().unwrap(),
        ],
    );
    std::fs::copy(d.join("a"), d.join("b")).unwrap();
    std::fs::copy(d.join("a"), d.join("before")).unwrap();
    let common_path = d.join("common.debug");
    sh(
        d,
        "dwz",
        &[
            "-m",
            "common.debug",
            "-M",
            common_path.to_str().unwrap(),
            "a",
            "b",
        ],
    );
    let data = std::fs::read(d.join("a")).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    assert!(
        obj.gnu_debugaltlink().unwrap().is_some(),
        "dwz made a .gnu_debugaltlink"
    );
    let addrs = text_addresses(&d.join("before"));
    let before = ours(&d.join("before"), &addrs, true);
    let after = ours(&d.join("a"), &addrs, true);
    let differing: Vec<_> = addrs
        .iter()
        .filter(|a| before[a] != after[a])
        .take(5)
        .map(|a| format!("{a:#x}: {:?} vs {:?}", before[a], after[a]))
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
    // Not trivially equal: the inlined frames' names are in the supplementary file.
    assert!(after.values().any(|f| f.len() > 1));
    // Without the supplementary file: a warning, and the names it held are missing.
    std::fs::remove_file(&common_path).unwrap();
    let out = common::run(&["symbolize", "-e", d.join("a").to_str().unwrap(), "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("supplementary debug file"), "{stderr}");
}

/// Old-style GNU compression (`objcopy --compress-debug-sections=zlib-gnu`: `.zdebug_*`
/// sections with a `ZLIB` header, still in older distribution debug files). LLVM 16
/// no longer reads them, so the answers are checked against the same binary before
/// compression.
#[test]
fn zdebug_sections_give_the_same_frames() {
    if !have("g++") || !have("objcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source("shapes.cc");
    sh(d, "g++", &["-O2", "-g", "-o", "p", src.to_str().unwrap()]);
    sh(
        d,
        "objcopy",
        &["--compress-debug-sections=zlib-gnu", "p", "p.zdebug"],
    );
    let data = std::fs::read(d.join("p.zdebug")).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    assert!(
        obj.section_by_name(".zdebug_info").is_some(),
        "objcopy made .zdebug sections"
    );
    let addrs = text_addresses(&d.join("p"));
    let before = ours(&d.join("p"), &addrs, true);
    let after = ours(&d.join("p.zdebug"), &addrs, true);
    let differing: Vec<_> = addrs
        .iter()
        .filter(|a| before[a] != after[a])
        .take(5)
        .map(|a| format!("{a:#x}: {:?} vs {:?}", before[a], after[a]))
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
    // Not trivially equal: lines and inlined frames come from the compressed DWARF.
    assert!(after.values().any(|f| f.len() > 1));
    assert!(after.values().all(|f| !f.is_empty()));
    assert!(after.values().filter(|f| f[0].1.starts_with("??")).count() < addrs.len() / 4);
}

/// A stripped binary whose debug file is in the debuginfod client cache
/// (`$DEBUGINFOD_CACHE_PATH/<build-id>/debuginfo`), as `debuginfod-find` leaves it.
#[test]
fn debug_info_from_the_debuginfod_cache() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source("inline.c");
    sh(d, "gcc", &["-g", "-O2", "-o", "p", src.to_str().unwrap()]);
    sh(d, "objcopy", &["--only-keep-debug", "p", "p.debug"]);
    sh(d, "objcopy", &["--strip-all", "p", "p.stripped"]);
    let data = std::fs::read(d.join("p")).unwrap();
    let id = object::File::parse(&*data)
        .unwrap()
        .build_id()
        .unwrap()
        .unwrap()
        .to_vec();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let cache = d.join("cache");
    std::fs::create_dir_all(cache.join(&hex)).unwrap();
    std::fs::rename(d.join("p.debug"), cache.join(&hex).join("debuginfo")).unwrap();
    let addr = {
        use object::ObjectSymbol;
        object::File::parse(&*data)
            .unwrap()
            .symbols()
            .find(|s| s.name() == Ok("outer"))
            .expect("outer")
            .address()
    };
    let run = |cache: &Path| {
        common::lbrprof()
            .env("DEBUGINFOD_CACHE_PATH", cache)
            .args(["symbolize", "-e", d.join("p.stripped").to_str().unwrap()])
            .arg(format!("{addr:x}"))
            .output()
            .unwrap()
    };
    let found = String::from_utf8(run(&cache).stdout).unwrap();
    assert!(found.starts_with("outer\n"), "{found}");
    assert!(found.contains("inline.c:"), "{found}");
    let missing = String::from_utf8(run(&d.join("nothing")).stdout).unwrap();
    assert!(!missing.contains("inline.c:"), "{missing}");
}

/// `--explain` lists every place looked at, in order, with what was found there, then the
/// symbol and frames of each address.
#[test]
fn explain_says_where_it_looked_and_what_it_found() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source("inline.c");
    // No build-id: the debug file is matched by the debuglink's CRC.
    sh(
        d,
        "gcc",
        &[
            "-g",
            "-O2",
            "-Wl,--build-id=none",
            "-o",
            "p",
            src.to_str().unwrap(),
        ],
    );
    sh(d, "objcopy", &["--only-keep-debug", "p", "p.debug"]);
    sh(
        d,
        "objcopy",
        &[
            "--strip-all",
            "--add-gnu-debuglink=p.debug",
            "p",
            "p.stripped",
        ],
    );
    let data = std::fs::read(d.join("p")).unwrap();
    let outer = {
        use object::ObjectSymbol;
        object::File::parse(&*data)
            .unwrap()
            .symbols()
            .find(|s| s.name() == Ok("outer"))
            .expect("outer")
            .address()
    };
    let explain = || {
        let out = common::lbrprof()
            .env("DEBUGINFOD_CACHE_PATH", d.join("no-cache"))
            .args(["symbolize", "--explain", "-e"])
            .arg(d.join("p.stripped"))
            .arg(format!("{outer:x}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = explain();
    let debug = d.join("p.debug").canonicalize().unwrap();
    for want in [
        "  build-id: none".to_owned(),
        "  .symtab: no, .dynsym: yes, .debug_info: none, .gnu_debugdata: no".to_owned(),
        format!("  {}: used (CRC matches)", debug.display()),
        "DWARF: loaded: lines and inlined frames available".to_owned(),
        format!("address {outer:#x}:"),
        "  frame: outer at ".to_owned(),
    ] {
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
    }
    assert!(text.contains(".gnu_debuglink: p.debug (CRC 0x"), "{text}");
    // Another build's debug file under the same name: refused, and said so.
    sh(
        d,
        "gcc",
        &[
            "-g",
            "-O0",
            "-Wl,--build-id=none",
            "-o",
            "other",
            src.to_str().unwrap(),
        ],
    );
    sh(d, "objcopy", &["--only-keep-debug", "other", "p.debug"]);
    let text = explain();
    assert!(
        text.contains(&format!("  {}: CRC mismatch: ignored", debug.display())),
        "{text}"
    );
    assert!(
        text.contains("DWARF: none: functions only, no lines"),
        "{text}"
    );
    // A file that cannot be used: the reason.
    let out = common::run(&["symbolize", "--explain", "-e", "/nonexistent/x"]);
    assert!(!out.status.success());
}

/// A stripped shared library whose DWARF is in a separate debug file, laid out as glibc's
/// (`aliases.c`): a `.constprop` clone, two exported names at one address, a hidden
/// `__GI_` alias, a hidden function. llvm-symbolizer names functions from the library's
/// own `.dynsym` (never the debug file's symbol table), the DWARF names the others, and of
/// aliases it shows the largest, then the last in the table; `lbrprof symbolize` must
/// agree on every `.text` address, with the debug file found by `.gnu_debuglink` and by
/// build-id. Reports keep perf's names, from the debug file's full symbol table.
#[test]
fn stripped_library_names_agree_with_llvm_and_reports_keep_perf_names() {
    if !have(LLVM_SYMBOLIZER) || !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source("aliases.c");
    let src = src.to_str().unwrap();
    sh(
        d,
        "gcc",
        &["-O2", "-g", "-fPIC", "-shared", "-o", "libal.so", src],
    );
    sh(
        d,
        "objcopy",
        &["--only-keep-debug", "libal.so", "libal.debug"],
    );
    sh(
        d,
        "objcopy",
        &[
            "--strip-all",
            "--add-gnu-debuglink=libal.debug",
            "libal.so",
            "libal.linked.so",
        ],
    );
    // The build-id layout: no debuglink, the debug file under DIR/.build-id/xx/rest.debug.
    let data = std::fs::read(d.join("libal.so")).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let id: String = obj
        .build_id()
        .unwrap()
        .expect("gcc gives a build-id")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let by_id = d.join("debug/.build-id").join(&id[..2]);
    std::fs::create_dir_all(&by_id).unwrap();
    std::fs::copy(
        d.join("libal.debug"),
        by_id.join(format!("{}.debug", &id[2..])),
    )
    .unwrap();
    sh(d, "objcopy", &["--strip-all", "libal.so", "libal.byid.so"]);
    let debug_dir = d.join("debug");
    let debug_dir = debug_dir.to_str().unwrap();
    // The fixture has what it is about: gcc cloned `scale`, and the names differ.
    let names: Vec<&str> = {
        use object::ObjectSymbol;
        obj.symbols().filter_map(|s| s.name().ok()).collect()
    };
    for name in [
        "scale.constprop.0",
        "__libc_compute",
        "compute",
        "__GI_measure",
    ] {
        assert!(names.contains(&name), "no {name} in {names:?}");
    }

    let addrs = text_addresses(&d.join("libal.so"));
    for (lib, extra_ours, extra_llvm) in [
        ("libal.linked.so", vec![], vec![]),
        (
            "libal.byid.so",
            vec!["--debug-dir", debug_dir],
            vec!["--debug-file-directory", debug_dir],
        ),
    ] {
        let exe = d.join(lib);
        let exe = exe.to_str().unwrap();
        let mut args = vec!["--output-style=GNU", "-a", "-f", "-i", "-C", "-e", exe];
        args.extend(&extra_llvm);
        let theirs = frames(LLVM_SYMBOLIZER, &args, &addrs);
        let mut args = vec!["symbolize", "-a", "-e", exe];
        args.extend(&extra_ours);
        let ours = frames(env!("CARGO_BIN_EXE_lbrprof"), &args, &addrs);
        assert_eq!(theirs.len(), addrs.len(), "{lib}: llvm-symbolizer answered");
        let differ: Vec<String> = addrs
            .iter()
            .filter(|a| theirs.get(a) != ours.get(a))
            .take(10)
            .map(|a| {
                format!(
                    "{a:#x}: llvm {:?}, lbrprof {:?}",
                    theirs.get(a),
                    ours.get(a)
                )
            })
            .collect();
        assert!(differ.is_empty(), "{lib}:\n{}", differ.join("\n"));
        // Both read the DWARF (lines), and name the clone by it and not by the debug
        // file's symbol table.
        let outer: Vec<&str> = ours
            .values()
            .filter_map(|f| f.last().map(|(name, _)| name.as_str()))
            .collect();
        assert!(outer.contains(&"scale"), "{lib}: {outer:?}");
        assert!(!outer.contains(&"scale.constprop.0"), "{lib}: {outer:?}");
        assert!(
            ours.values()
                .any(|f| f.iter().any(|(_, loc)| loc.contains("aliases.c:"))),
            "{lib}: no lines"
        );
    }

    // Reports (the library's default choice, perf's) name functions from the debug
    // file's full symbol table, the public name of aliases first.
    use lbrprof_symbolizer::{ModuleKey, Svma, Symbolizer, SymbolizerOptions};
    let at = |name: &str| {
        use object::ObjectSymbol;
        obj.symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("{name}"))
            .address()
    };
    let s = Symbolizer::new(SymbolizerOptions::default());
    let key = ModuleKey::new(d.join("libal.linked.so"));
    let got = s.symbolize_svma(
        &key,
        &[
            Svma(at("scale.constprop.0")),
            Svma(at("compute")),
            Svma(at("measure")),
            Svma(at("internal_step")),
        ],
    );
    let got: Vec<Option<&str>> = got.iter().map(|g| g.function()).collect();
    assert_eq!(
        got,
        [
            Some("scale.constprop.0"),
            Some("compute"),
            Some("measure"),
            Some("internal_step")
        ]
    );
}
