//! End-to-end tests of the symbolizer: fixtures compiled at test time from
//! `tests/fixtures-src/symbolizer/` (see its README) with exact expected frames, separate
//! debug info, bad input, and agreement with binutils `addr2line -f -i -C` on real binaries.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use lbrprof_symbolizer::{
    Avma, FileOffset, Module, ModuleKey, ProcessMaps, Svma, Symbolizer, SymbolizerOptions,
};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

// ---------------------------------------------------------------------------------------
// Helpers

fn source(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures-src/symbolizer")
        .join(name)
}

/// The line of `name` that carries the marker `LINE:<tag>`.
fn line_of(name: &str, tag: &str) -> u32 {
    let text = std::fs::read_to_string(source(name)).unwrap();
    let marker = format!("LINE:{tag}");
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.match_indices(&marker).any(|(i, _)| {
                !l[i + marker.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            })
        })
        .map(|(i, _)| i as u32 + 1)
        .collect();
    assert_eq!(hits.len(), 1, "marker {marker} in {name}");
    hits[0]
}

/// `FILE:LINE` as the symbolizer prints it for a fixture source.
fn at(name: &str, tag: &str) -> String {
    format!("{}:{}", source(name).display(), line_of(name, tag))
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

/// Runs a compiler (or objcopy...) in `dir` and panics with its output when it fails.
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

/// Compiles `inline.c` with `flags` into `dir/name`.
fn build_c(dir: &Path, name: &str, src: &str, flags: &[&str]) -> PathBuf {
    let src = source(src);
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["-o", name, src.to_str().unwrap()]);
    sh(dir, "gcc", &args);
    dir.join(name)
}

/// Function symbols of an ELF file: name → (address, size).
fn functions(path: &Path) -> BTreeMap<String, (u64, u64)> {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    obj.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition() && s.address() != 0)
        .filter_map(|s| Some((s.name().ok()?.to_owned(), (s.address(), s.size()))))
        .collect()
}

/// True when no sized function symbol of `path` contains `addr`: alignment padding
/// between functions, which binutils charges to the previous symbol and lbrprof to none.
fn padding(path: &Path, addr: u64) -> bool {
    functions(path)
        .values()
        .all(|&(start, size)| size == 0 || !(start..start + size).contains(&addr))
}

fn symbolize(args: &[&str]) -> Output {
    // These tests were written against binutils' conventions (tests of the LLVM ones
    // compare with llvm-symbolizer below).
    let mut all = vec!["symbolize", "--style", "gnu"];
    all.extend(args);
    common::run(&all)
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "lbrprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `lbrprof symbolize -a` output, split per address into (function, location) frames.
fn frames_per_address(text: &str) -> Vec<(u64, Vec<(String, String)>)> {
    let mut out: Vec<(u64, Vec<(String, String)>)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(hex) = l.strip_prefix("0x")
            && l.len() == 18
        {
            out.push((u64::from_str_radix(hex, 16).unwrap(), Vec::new()));
            continue;
        }
        let location = lines.next().expect("function line without location line");
        out.last_mut()
            .expect("frames before the first address")
            .1
            .push((l.to_owned(), location.to_owned()));
    }
    out
}

fn frames_of(exe: &Path, extra: &[&str], addrs: &[u64]) -> Vec<(u64, Vec<(String, String)>)> {
    let hex: Vec<String> = addrs.iter().map(|a| format!("{a:#x}")).collect();
    let mut args = vec!["-a", "-e", exe.to_str().unwrap()];
    args.extend(extra);
    args.extend(hex.iter().map(String::as_str));
    frames_per_address(&stdout(&symbolize(&args)))
}

fn pair(f: &str, l: String) -> (String, String) {
    (f.to_owned(), l)
}

// ---------------------------------------------------------------------------------------
// Exact frames from compiled fixtures

/// The -O2 build: `helper` is inlined into `outer`; one address inside must give exactly
/// [helper at its body line, outer at the call line], and every address of `outer` must
/// have `outer` as its containing function. Checked for DWARF 4, DWARF 5, compressed debug
/// sections, split DWARF, PIE and non-PIE.
#[test]
fn inlined_helper_gives_the_exact_frame_chain() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let variants: &[(&str, &[&str])] = &[
        ("dwarf4", &["-gdwarf-4"]),
        ("dwarf5", &["-gdwarf-5"]),
        ("compressed", &["-gz=zlib"]),
        ("split", &["-gsplit-dwarf"]),
        ("split4", &["-gsplit-dwarf", "-gdwarf-4"]),
        ("nopie", &["-no-pie", "-fno-pie"]),
        ("pie", &["-pie", "-fPIE"]),
    ];
    let expected_chain = vec![
        pair("helper", at("inline.c", "helper_body")),
        pair("outer", at("inline.c", "call_helper")),
    ];
    for (name, flags) in variants {
        let mut all = vec!["-g", "-O2"];
        all.extend(*flags);
        let exe = build_c(dir.path(), name, "inline.c", &all);
        let syms = functions(&exe);
        let (start, size) = syms["outer"];
        assert!(size > 0);
        let addrs: Vec<u64> = (start..start + size).collect();
        let got = frames_of(&exe, &[], &addrs);
        assert_eq!(got.len(), addrs.len());
        for (addr, frames) in &got {
            assert_eq!(
                frames.last().unwrap().0,
                "outer",
                "{name}: {addr:#x}: {frames:?}"
            );
        }
        assert!(
            got.iter().any(|(_, f)| *f == expected_chain),
            "{name}: no address of outer gives {expected_chain:?}; got {got:#?}"
        );
        // Without inlines: the innermost frame only, as `addr2line -f` without -i.
        let inlined: Vec<u64> = got
            .iter()
            .filter(|(_, f)| *f == expected_chain)
            .map(|(a, _)| *a)
            .collect();
        let flat = frames_of(&exe, &["--no-inlines"], &inlined);
        for (addr, frames) in flat {
            assert_eq!(frames, vec![expected_chain[0].clone()], "{name}: {addr:#x}");
        }
        let (main, _) = syms["main"];
        assert_eq!(frames_of(&exe, &[], &[main])[0].1.last().unwrap().0, "main");
    }
}

/// The -O0 -DNO_INLINE build: helper is a function of its own; each function's first
/// address is at its own line, and no address of `outer` has inlined frames.
#[test]
fn non_inlined_functions_start_at_their_lines() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(
        dir.path(),
        "noinline",
        "inline.c",
        &["-g", "-O0", "-DNO_INLINE"],
    );
    let syms = functions(&exe);
    for f in ["helper", "outer", "local_function", "main"] {
        let got = frames_of(&exe, &[], &[syms[f].0]);
        assert_eq!(got[0].1, vec![pair(f, at("inline.c", f))]);
    }
    let (start, size) = syms["outer"];
    let got = frames_of(&exe, &[], &(start..start + size).collect::<Vec<_>>());
    assert!(got.iter().all(|(_, f)| f.len() == 1 && f[0].0 == "outer"));
    // The loop's line rows may carry discriminators: `FILE:LINE (discriminator N)`.
    let call = at("inline.c", "call_helper");
    assert!(
        got.iter()
            .any(|(_, f)| f[0].1 == call || f[0].1.starts_with(&format!("{call} (discriminator ")))
    );
    // Addresses on standard input give the same answers as arguments.
    let args_out = stdout(&symbolize(&[
        "-e",
        exe.to_str().unwrap(),
        &format!("{start:x}"),
    ]));
    let mut child = common::lbrprof()
        .args(["symbolize", "--style", "gnu", "-e", exe.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "0x{start:x}").unwrap();
    let stdin_out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&stdin_out), args_out);
}

/// File offsets (what MMAP2 records give) go through the program headers: for a non-PIE
/// executable (code at 0x401000, file offset 0x1000) and a shared library whose code was
/// placed far from its file offset.
#[test]
fn file_offsets_map_through_program_headers() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nopie = build_c(
        dir.path(),
        "nopie",
        "inline.c",
        &["-g", "-O2", "-no-pie", "-fno-pie"],
    );
    let lib = build_c(
        dir.path(),
        "lib.so",
        "lib.c",
        &[
            "-g",
            "-O1",
            "-shared",
            "-fPIC",
            "-Wl,--section-start=.text=0x20000",
        ],
    );
    for (exe, func) in [(&nopie, "outer"), (&lib, "lib_add")] {
        let data = std::fs::read(exe).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let svma = functions(exe)[func].0;
        let offset = obj
            .segments()
            .find_map(|s| {
                let (off, size) = s.file_range();
                (svma >= s.address() && svma < s.address() + size).then(|| svma - s.address() + off)
            })
            .unwrap();
        assert_ne!(
            offset, svma,
            "the fixture should have code away from its file offset"
        );
        let by_svma = frames_of(exe, &[], &[svma]);
        let by_offset = frames_of(exe, &["--file-offsets"], &[offset]);
        assert_eq!(by_svma[0].1, by_offset[0].1);
        assert_eq!(by_svma[0].1.last().unwrap().0, func);
    }
}

/// A shared library mapped the way perf's MMAP2 records describe it, through the library
/// API: run-time address → (module, file offset) → frames with a function offset.
#[test]
fn process_maps_resolve_a_mapped_shared_library() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib = build_c(
        dir.path(),
        "lib.so",
        "lib.c",
        &[
            "-g",
            "-O1",
            "-shared",
            "-fPIC",
            "-Wl,--section-start=.text=0x20000",
        ],
    );
    let data = std::fs::read(&lib).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let base = 0x7f12_3400_0000u64;
    let page = 0x1000u64;
    let key = ModuleKey::new(&lib);
    let mut maps = ProcessMaps::new();
    maps.add(
        Avma(0x5555_0000_0000),
        0x1000,
        0,
        ModuleKey::new("/bin/other"),
    );
    for seg in obj.segments() {
        let (off, size) = seg.file_range();
        let start = (base + seg.address()) & !(page - 1);
        let pgoff = off & !(page - 1);
        let len = base + seg.address() + size - start;
        maps.add(Avma(start), len, pgoff, key.clone());
    }
    let syms = functions(&lib);
    let s = Symbolizer::new(SymbolizerOptions::default());
    for (func, delta) in [("lib_add", 0u64), ("lib_entry", 4)] {
        let avma = Avma(base + syms[func].0 + delta);
        let (module, offset) = maps.lookup(avma).unwrap();
        assert_eq!(module, &key);
        let out = s.symbolize(module, &[offset]);
        let outer = out[0].frames.last().unwrap();
        assert_eq!(outer.function.as_deref(), Some(func));
        assert_eq!(outer.function_offset, Some(delta));
        assert!(outer.file.as_deref().unwrap().ends_with("lib.c"));
    }
    assert!(s.take_warnings().is_empty());
    // The same addresses through symbolize_many, together with a missing module.
    let (module, offset) = maps.lookup(Avma(base + syms["lib_add"].0)).unwrap();
    let many = s.symbolize_many(vec![
        (ModuleKey::new("/nonexistent/x.so"), vec![FileOffset(1)]),
        (module.clone(), vec![offset, offset]),
    ]);
    assert!(many[0].1[0].is_unknown());
    assert_eq!(many[1].1[1].function(), Some("lib_add"));
    assert_eq!(s.take_warnings().len(), 1);
}

#[test]
fn rust_legacy_and_v0_names_are_demangled() {
    if !have("rustc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source("rust_fixture.rs");
    let cases: &[(&str, &[&str], &str, &str)] = &[
        (
            "legacy",
            &[], // rustc's default mangling
            "rust_fixture::inner::Thing<T>::generic_method",
            "_ZN",
        ),
        (
            "v0",
            &["-C", "symbol-mangling-version=v0"],
            "<rust_fixture::inner::Thing<u32>>::generic_method",
            "_R",
        ),
    ];
    for (name, flags, generic, prefix) in cases {
        let mut args = vec!["-g", "-C", "opt-level=0", "-o", name, src.to_str().unwrap()];
        args.extend(*flags);
        sh(dir.path(), "rustc", &args);
        let exe = dir.path().join(name);
        let syms = functions(&exe);
        let addr = |part: &str| {
            syms.iter()
                .find(|(n, _)| n.contains(part))
                .map(|(_, (a, _))| *a)
                .unwrap()
        };
        let (known, method) = (addr("known_function"), addr("generic_method"));
        let got = frames_of(&exe, &[], &[known, method]);
        assert_eq!(
            got[0].1,
            vec![pair(
                "rust_fixture::inner::known_function",
                at("rust_fixture.rs", "known_function")
            )]
        );
        assert_eq!(
            got[1].1,
            vec![pair(generic, at("rust_fixture.rs", "generic_method"))]
        );
        let raw = frames_of(&exe, &["--no-demangle"], &[known]);
        assert!(raw[0].1[0].0.starts_with(prefix), "{name}: {raw:?}");
        // Symbol table only: still demangled.
        sh(
            dir.path(),
            "objcopy",
            &["--strip-debug", name, &format!("{name}.nodebug")],
        );
        let got = frames_of(&dir.path().join(format!("{name}.nodebug")), &[], &[known]);
        assert_eq!(got[0].1[0].0, "rust_fixture::inner::known_function");
    }
}

#[test]
fn cxx_names_are_demangled() {
    if !have("g++") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source("cxx.cc");
    sh(
        dir.path(),
        "g++",
        &["-g", "-O1", "-o", "cxx", src.to_str().unwrap()],
    );
    let exe = dir.path().join("cxx");
    let syms = functions(&exe);
    let run = syms["_ZN2ns3runEi"].0;
    let twice = syms["_ZNK2ns3BoxIiE5twiceEv"].0;
    let got = frames_of(&exe, &[], &[run, twice]);
    assert_eq!(got[0].1, vec![pair("ns::run(int)", at("cxx.cc", "run"))]);
    assert_eq!(
        got[1].1,
        vec![pair("ns::Box<int>::twice() const", at("cxx.cc", "twice"))]
    );
}

// ---------------------------------------------------------------------------------------
// Separate debug info and build-ids

fn build_id(path: &Path) -> Vec<u8> {
    let data = std::fs::read(path).unwrap();
    object::File::parse(&*data)
        .unwrap()
        .build_id()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn separate_debug_info_by_debuglink_and_build_id() {
    if !have("gcc") || !have("objcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let full = build_c(
        d,
        "full",
        "inline.c",
        &["-g", "-O0", "-DNO_INLINE", "-Wl,--build-id"],
    );
    let outer = functions(&full)["outer"].0;
    let expected = vec![pair("outer", at("inline.c", "outer"))];
    let run = |exe: &Path, extra: &[&str]| {
        let mut args = vec!["-e", exe.to_str().unwrap()];
        args.extend(extra);
        let a = format!("{outer:x}");
        args.push(&a);
        let out = symbolize(&args);
        let text = stdout(&out);
        let frames = frames_per_address(&format!("0x{outer:016x}\n{text}"));
        (
            frames[0].1.clone(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // 1. .gnu_debuglink next to the binary.
    sh(d, "objcopy", &["--only-keep-debug", "full", "linked.debug"]);
    sh(
        d,
        "objcopy",
        &[
            "--strip-debug",
            "--add-gnu-debuglink=linked.debug",
            "full",
            "linked",
        ],
    );
    let (frames, stderr) = run(&d.join("linked"), &[]);
    assert_eq!(frames, expected);
    assert!(stderr.is_empty(), "{stderr}");

    // 2. By build-id under --debug-dir; without it, functions only and a warning.
    std::fs::create_dir(d.join("dbg")).unwrap();
    sh(d, "objcopy", &["--strip-debug", "full", "by-id"]);
    let id = hex(&build_id(&full));
    let id_dir = d.join("dbg/.build-id").join(&id[..2]);
    std::fs::create_dir_all(&id_dir).unwrap();
    std::fs::copy(
        d.join("linked.debug"),
        id_dir.join(format!("{}.debug", &id[2..])),
    )
    .unwrap();
    let (frames, stderr) = run(&d.join("by-id"), &[]);
    assert_eq!(frames, vec![pair("outer", "??:?".into())]);
    assert!(stderr.contains("no debug info for"), "{stderr}");
    let dbg = d.join("dbg");
    let (frames, stderr) = run(&d.join("by-id"), &["--debug-dir", dbg.to_str().unwrap()]);
    assert_eq!(frames, expected);
    assert!(stderr.is_empty(), "{stderr}");

    // 3. A debug file from another build at the debuglink's place: reported, not used.
    let other = build_c(d, "other", "inline.c", &["-g", "-O2", "-Wl,--build-id"]);
    assert_ne!(build_id(&other), build_id(&full));
    sh(
        d,
        "objcopy",
        &["--only-keep-debug", "other", "linked.debug"],
    );
    let (frames, stderr) = run(&d.join("linked"), &[]);
    assert_eq!(frames, vec![pair("outer", "??:?".into())]);
    assert!(stderr.contains("build-id mismatch for"), "{stderr}");
    assert_eq!(stderr.matches("build-id mismatch").count(), 1, "{stderr}");
}

/// A module whose file changed since it was recorded is reported and gives unknown frames.
#[test]
fn recorded_build_id_mismatch_is_reported_not_misattributed() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(
        dir.path(),
        "prog",
        "inline.c",
        &["-g", "-O2", "-Wl,--build-id"],
    );
    let outer = functions(&exe)["outer"].0;
    let s = Symbolizer::new(SymbolizerOptions::default());
    let stale = ModuleKey {
        path: exe.clone(),
        build_id: Some(vec![0xde, 0xad, 0xbe, 0xef]),
    };
    assert!(s.symbolize_svma(&stale, &[Svma(outer)])[0].is_unknown());
    let w = s.take_warnings();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].starts_with(&format!("build-id mismatch for {}", exe.display())),
        "{w:?}"
    );
    let fresh = ModuleKey {
        path: exe.clone(),
        build_id: Some(build_id(&exe)),
    };
    assert_eq!(
        s.symbolize_svma(&fresh, &[Svma(outer)])[0].function(),
        Some("outer")
    );

    // Rebuilt since, or gone: the recorded build is found in a build-id cache directory
    // (`DIR/.build-id/xx/rest`, as perf's buildid-cache keeps it) and used instead.
    let id = hex(&build_id(&exe));
    let cache = dir.path().join("cache");
    let slot = cache.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&slot).unwrap();
    std::fs::copy(&exe, slot.join(&id[2..])).unwrap();
    let rebuilt = build_c(
        dir.path(),
        "prog",
        "inline.c",
        &["-g", "-O0", "-Wl,--build-id"],
    );
    assert_ne!(hex(&build_id(&rebuilt)), id);
    let gone = ModuleKey {
        path: dir.path().join("no-longer-here"),
        build_id: fresh.build_id.clone(),
    };
    let s = Symbolizer::new(SymbolizerOptions {
        debug_dirs: vec![cache],
        ..Default::default()
    });
    let (start, size) = functions(&slot.join(&id[2..]))["outer"];
    let addrs: Vec<Svma> = (start..start + size).map(Svma).collect();
    for key in [&fresh, &gone] {
        let got = s.symbolize_svma(key, &addrs);
        // The -O2 build's frames (helper inlined), not the -O0 rebuild's.
        assert!(got.iter().all(|g| g.function() == Some("outer")), "{key:?}");
        assert!(got.iter().any(|g| g.frames.len() == 2), "{key:?}");
    }
    assert!(s.take_warnings().is_empty());
}

#[test]
fn kernel_addresses_through_a_kallsyms_file() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("kallsyms");
    std::fs::write(
        &k,
        "ffffffff81000000 T _stext\nffffffff81001000 T do_syscall_64\nffffffffc0100000 t vmx_vcpu_run\t[kvm_intel]\n",
    )
    .unwrap();
    let out = symbolize(&[
        "--kernel",
        "--kallsyms",
        k.to_str().unwrap(),
        "ffffffff81001010",
        "ffffffffc0100004",
        "10",
    ]);
    assert_eq!(
        stdout(&out),
        "do_syscall_64\n??:?\nvmx_vcpu_run [kvm_intel]\n??:?\n??\n??:0\n"
    );
}

// ---------------------------------------------------------------------------------------
// Bad input

/// Truncated and corrupted ELF/DWARF at many points: never a panic, at most warnings.
#[test]
fn truncated_and_corrupt_files_never_panic() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "prog", "inline.c", &["-g", "-O2"]);
    let data = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let probes: Vec<Svma> = functions(&exe)
        .values()
        .flat_map(|(a, s)| [Svma(*a), Svma(a + s / 2)])
        .chain((0..64).map(|i| Svma(0x1000 + i * 0x13)))
        .collect();
    let debug_ranges: Vec<(usize, usize)> = obj
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".debug")))
        .filter_map(|s| s.file_range())
        .map(|(o, l)| (o as usize, l as usize))
        .collect();
    assert!(!debug_ranges.is_empty());
    let opts = SymbolizerOptions::default();
    let try_bytes = |bytes: Vec<u8>| {
        if let Ok(opened) = Module::from_bytes(Path::new("corrupt"), bytes, &opts) {
            for p in &probes {
                let _ = opened.module.symbolize(*p);
                let _ = opened.module.symbolize_offset(FileOffset(p.0));
            }
        }
    };
    // Truncations at 100 points, denser at the start (headers).
    let n = data.len();
    for i in 0..100usize {
        let cut = if i < 20 { i * 40 } else { n * i / 100 };
        try_bytes(data[..cut.min(n)].to_vec());
    }
    // Deterministic pseudo-random corruption, inside the DWARF and anywhere.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..150 {
        let mut bytes = data.clone();
        let (start, len) = if round % 3 == 2 {
            (0, n)
        } else {
            debug_ranges[next() as usize % debug_ranges.len()]
        };
        for _ in 0..1 + round % 8 {
            let at = start + next() as usize % len.max(1);
            if let Some(b) = bytes.get_mut(at) {
                *b ^= (next() as u8) | 1;
            }
        }
        if round % 5 == 0 {
            // A run of garbage, e.g. a zeroed block of a section.
            let at = start + next() as usize % len.max(1);
            let end = (at + 64).min(n);
            bytes[at..end].fill((round & 0xff) as u8);
        }
        try_bytes(bytes);
    }

    // Through the CLI: a truncated ELF gives a warning and ??, exit 0 (what is there is
    // still read); a file that is not an ELF at all is an error, as for addr2line.
    std::fs::write(dir.path().join("half"), &data[..n / 2]).unwrap();
    std::fs::write(dir.path().join("text"), "not an ELF file\n").unwrap();
    let out = symbolize(&["-e", dir.path().join("half").to_str().unwrap(), "1139", "0"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("lbrprof: warning:").count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let text = dir.path().join("text");
    let out = symbolize(&["-e", text.to_str().unwrap(), "1139", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!("lbrprof: error: {} is not an ELF file", text.display())
    );
    // A file that does not exist is an error of the command line.
    let out = symbolize(&["-e", "/nonexistent/lbrprof-fixture", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("lbrprof: error: cannot open"));
    let out = symbolize(&["-e", exe.to_str().unwrap(), "0xnothex"]);
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------
// Agreement with binutils addr2line

/// One address's frames, per tool: lines after the address line.
fn blocks(program: &str, args: &[&str], addrs: &[u64]) -> BTreeMap<u64, Vec<String>> {
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
    let mut map = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.is_empty() {
            continue; // llvm-symbolizer separates addresses with blank lines
        }
        if let Some(hex) = line.strip_prefix("0x")
            && let Ok(a) = u64::from_str_radix(hex, 16)
            && !line.contains(':')
        {
            current = Some(a);
            map.insert(a, Vec::new());
            continue;
        }
        if let Some(a) = current {
            map.get_mut(&a).unwrap().push(line.to_owned());
        }
    }
    map
}

/// Every function start and 3000 random .text addresses of `exe`: compares our frames with
/// `addr2line -a -f -i -C`; returns (addresses, identical, differing addresses).
fn compare_with_addr2line(exe: &Path) -> (usize, usize, Vec<u64>, BTreeMap<u64, Vec<String>>) {
    let data = std::fs::read(exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let text = obj.section_by_name(".text").unwrap();
    let (lo, hi) = (text.address(), text.address() + text.size());
    let mut addrs: Vec<u64> = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && (lo..hi).contains(&s.address()))
        .map(|s| s.address())
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        addrs.push(lo + (seed >> 11) % (hi - lo));
    }
    addrs.sort_unstable();
    addrs.dedup();
    let exe_s = exe.to_str().unwrap();
    let theirs = blocks("addr2line", &["-a", "-f", "-i", "-C", "-e", exe_s], &addrs);
    let ours = blocks(
        env!("CARGO_BIN_EXE_lbrprof"),
        &["symbolize", "--style", "gnu", "-a", "-e", exe_s],
        &addrs,
    );
    assert_eq!(
        theirs.len(),
        addrs.len(),
        "addr2line answered every address"
    );
    assert_eq!(ours.len(), addrs.len(), "lbrprof answered every address");
    let differing: Vec<u64> = addrs
        .iter()
        .copied()
        .filter(|a| theirs[a] != ours[a])
        .collect();
    let identical = addrs.len() - differing.len();
    eprintln!(
        "{}: {identical}/{} addresses identical to addr2line -f -i -C ({:.2}%)",
        exe.display(),
        addrs.len(),
        100.0 * identical as f64 / addrs.len() as f64
    );
    for a in differing.iter().take(20) {
        eprintln!(
            "  {a:#x}\n    addr2line: {:?}\n    lbrprof:   {:?}",
            theirs[a], ours[a]
        );
    }
    (addrs.len(), identical, differing, ours)
}

/// The lbrprof binary itself (Rust, DWARF 4/5 from rustc, many inlined frames).
#[test]
fn agrees_with_binutils_addr2line_on_the_lbrprof_binary() {
    if !have("addr2line") {
        return;
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_lbrprof"));
    let (n, identical, _, ours) = compare_with_addr2line(exe);
    // rustc (1.95) gives drop glue and many generic helpers DW_AT_name only, no linkage
    // name. binutils names such a Rust function by its symbol when a lookup has it
    // innermost, and from then on renames the function itself if the symbol starts at
    // its entry: which frames print the symbol's name depends on the order of earlier
    // lookups. lbrprof answers each address alone (innermost and containing frames named
    // by the symbol), so ~2% of this binary's addresses differ in one frame's name.
    assert!(
        identical * 100 >= n * 97,
        "only {identical}/{n} identical to addr2line"
    );
    // Without inlined frames, against addr2line without -i, on a sample of the addresses.
    let sample: Vec<u64> = ours.keys().copied().step_by(20).collect();
    let exe_s = exe.to_str().unwrap();
    let theirs = blocks("addr2line", &["-a", "-f", "-C", "-e", exe_s], &sample);
    let flat = blocks(
        env!("CARGO_BIN_EXE_lbrprof"),
        &[
            "symbolize",
            "--style",
            "gnu",
            "--no-inlines",
            "-a",
            "-e",
            exe_s,
        ],
        &sample,
    );
    let same = sample.iter().filter(|a| theirs[a] == flat[a]).count();
    eprintln!(
        "--no-inlines: {same}/{} identical to addr2line -f -C",
        sample.len()
    );
    assert!(same * 100 >= sample.len() * 99);
}

/// libc.so.6 with its debug info from Debian's libc6-dbg (found by build-id).
///
/// binutils 2.40 mis-resolves the file of DWARF 5 line rows that come from an included
/// file (e.g. `strfrom-skeleton.c` included by `strfromf.c`, it prints the including file).
/// Discriminators are compared too (libc has them on about one address in seven).
/// Such a difference — same function and line, different file — counts as explained
/// when llvm-symbolizer agrees with us.
#[test]
fn agrees_with_binutils_addr2line_on_libc_from_its_debug_package() {
    if !have("addr2line") {
        return;
    }
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let Ok(real) = libc.canonicalize() else {
        eprintln!("skipped: no {}", libc.display());
        return;
    };
    let id = hex(&build_id(&real));
    let debug = format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    if !Path::new(&debug).is_file() {
        eprintln!("skipped: needs libc6-dbg ({debug})");
        return;
    }
    let (n, identical, differing, ours) = compare_with_addr2line(&real);
    let theirs = blocks(
        "addr2line",
        &["-a", "-f", "-i", "-C", "-e", real.to_str().unwrap()],
        &differing,
    );
    let llvm = if have("llvm-symbolizer") {
        blocks(
            "llvm-symbolizer",
            &[
                "--output-style=GNU",
                "-a",
                "-f",
                "-i",
                "-C",
                "-e",
                real.to_str().unwrap(),
            ],
            &differing,
        )
    } else {
        BTreeMap::new()
    };
    let line_of = |s: &String| s.rsplit(':').next().unwrap_or("").to_owned();
    let mut explained = 0;
    let mut same_function_and_line = identical;
    let mut in_padding = 0;
    for a in &differing {
        let (t, o) = (&theirs[a], &ours[a]);
        // Padding after a function: addr2line names the previous symbol, lbrprof none.
        if o.first().is_some_and(|f| f == "??") && padding(Path::new(&debug), *a) {
            in_padding += 1;
            continue;
        }
        let file_only = t.len() == o.len()
            && t.iter()
                .zip(o)
                .enumerate()
                .all(|(i, (x, y))| x == y || (i % 2 == 1 && line_of(x) == line_of(y)));
        if file_only {
            same_function_and_line += 1;
            // Locations without discriminators (llvm-symbolizer 14 prints none).
            let plain = |l: &String| l.split(" (discriminator ").next().unwrap_or("").to_owned();
            let llvm_files: Vec<String> = llvm
                .get(a)
                .map(|l| l.iter().skip(1).step_by(2).map(plain).collect())
                .unwrap_or_default();
            let our_files: Vec<String> = o.iter().skip(1).step_by(2).map(plain).collect();
            if llvm_files == our_files {
                explained += 1;
            }
        }
    }
    eprintln!(
        "libc: {identical}/{n} identical; {same_function_and_line}/{n} same function and line; \
         {explained} file-only differences where llvm-symbolizer agrees with lbrprof; \
         {in_padding} in padding between functions"
    );
    assert!((same_function_and_line + in_padding) * 100 >= n * 99);
    if !llvm.is_empty() {
        assert!((identical + explained + in_padding) * 100 >= n * 99);
    }
}

/// The host's own /proc/kallsyms (readable with addresses as root).
#[test]
fn kernel_addresses_through_proc_kallsyms() {
    let Ok(kallsyms) = std::fs::read_to_string("/proc/kallsyms") else {
        eprintln!("skipped: cannot read /proc/kallsyms");
        return;
    };
    // A global text symbol of the core kernel whose address is shown, and the next one up.
    let mut syms: Vec<(u64, &str)> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let addr = u64::from_str_radix(p.next()?, 16).ok()?;
            let kind = p.next()?;
            let name = p.next()?;
            (p.next().is_none() && matches!(kind, "t" | "T" | "w" | "W") && addr != 0)
                .then_some((addr, name))
        })
        .collect();
    syms.sort_unstable();
    syms.dedup_by_key(|s| s.0);
    let Some(w) = syms
        .windows(2)
        .find(|w| w[1].0 - w[0].0 > 8 && w[0].1 == "do_syscall_64")
        .or_else(|| syms.windows(2).find(|w| w[1].0 - w[0].0 > 8))
    else {
        eprintln!("skipped: /proc/kallsyms shows no addresses (kptr_restrict)");
        return;
    };
    let (addr, name) = w[0];
    let out = symbolize(&["--kernel", &format!("{:x}", addr + 4)]);
    let text = stdout(&out);
    let first = text.lines().next().unwrap();
    // Aliases at one address are possible; any symbol at that address is right.
    let at_addr: Vec<&str> = text_syms_at(&kallsyms, addr);
    assert!(
        first == name || at_addr.contains(&first),
        "{first} is not {name}"
    );
}

fn text_syms_at(text: &str, addr: u64) -> Vec<&str> {
    text.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let a = u64::from_str_radix(p.next()?, 16).ok()?;
            p.next()?;
            let name = p.next()?;
            (a == addr).then_some(name)
        })
        .collect()
}

/// Every byte of the -O2 fixture's .text (inlined frames, discriminators, crt code)
/// gives exactly addr2line's output, except alignment padding between functions, which
/// addr2line charges to the previous symbol and lbrprof to no function.
#[test]
fn agrees_with_binutils_addr2line_on_every_address_of_a_fixture() {
    if !have("gcc") || !have("addr2line") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "prog", "inline.c", &["-g", "-O2"]);
    let data = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let text = obj.section_by_name(".text").unwrap();
    let addrs: Vec<u64> = (text.address()..text.address() + text.size()).collect();
    let exe_s = exe.to_str().unwrap();
    let theirs = blocks("addr2line", &["-a", "-f", "-i", "-C", "-e", exe_s], &addrs);
    let ours = blocks(
        env!("CARGO_BIN_EXE_lbrprof"),
        &["symbolize", "--style", "gnu", "-a", "-e", exe_s],
        &addrs,
    );
    assert_eq!(theirs.len(), addrs.len());
    let with_discriminator = theirs
        .values()
        .filter(|f| f.iter().any(|l| l.contains("(discriminator ")))
        .count();
    assert!(
        with_discriminator > 0,
        "the fixture should exercise discriminators"
    );
    let mut padded = 0;
    for a in &addrs {
        if ours[a] != theirs[a] && padding(&exe, *a) {
            assert_eq!(ours[a][0], "??", "at {a:#x}");
            padded += 1;
            continue;
        }
        assert_eq!(ours[a], theirs[a], "at {a:#x}");
    }
    assert!(
        padded < addrs.len() / 4,
        "{padded} of {} in padding",
        addrs.len()
    );
}

/// Each distinct address is looked up and rendered once per batch and its text written for
/// every occurrence: unordered input with repeats, from arguments, from a regular file on
/// stdin and from a pipe, prints each address's own frames in input order, identical to
/// symbolizing it alone.
#[test]
fn repeated_and_unordered_addresses_print_in_input_order() {
    if !have("gcc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path(), "prog", "inline.c", &["-g", "-O2"]);
    let exe_s = exe.to_str().unwrap();
    let data = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let text = obj.section_by_name(".text").unwrap();
    let lo = text.address();
    // Backwards, with every address three times in a mixed order, plus one outside .text.
    let mut addrs: Vec<u64> = (lo..lo + text.size()).rev().collect();
    let n = addrs.len();
    for i in 0..n {
        addrs.push(addrs[(i * 7919) % n]);
        addrs.push(addrs[n - 1 - i]);
    }
    addrs.push(0x10);
    let alone: BTreeMap<u64, String> = addrs[..n]
        .iter()
        .chain([&0x10])
        .map(|a| {
            let hex = format!("{a:#x}");
            (*a, stdout(&symbolize(&["-a", "-e", exe_s, &hex])))
        })
        .collect();
    let expected: String = addrs.iter().map(|a| alone[a].as_str()).collect();
    let hex: Vec<String> = addrs.iter().map(|a| format!("{a:#x}")).collect();
    let mut args = vec!["-a", "-e", exe_s];
    args.extend(hex.iter().map(String::as_str));
    assert!(stdout(&symbolize(&args)) == expected, "from arguments");
    let input = dir.path().join("addrs");
    std::fs::write(&input, hex.join("\n")).unwrap();
    let from_file = common::lbrprof()
        .args(["symbolize", "--style", "gnu", "-a", "-e", exe_s])
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert!(stdout(&from_file) == expected, "from a regular file");
    let piped = blocks(
        env!("CARGO_BIN_EXE_lbrprof"),
        &["symbolize", "--style", "gnu", "-a", "-e", exe_s],
        &addrs,
    );
    for a in &addrs {
        let block: Vec<String> = alone[a].lines().skip(1).map(str::to_owned).collect();
        assert_eq!(piped[a], block, "from a pipe, at {a:#x}");
    }
}

/// Split DWARF packaged with `dwp` into `prog.dwp` (the .dwo files removed) still gives the
/// inlined frame chain. DWARF 4: binutils 2.40's `dwp` crashes on DWARF 5 split units.
#[test]
fn split_dwarf_from_a_dwp_package() {
    if !have("gcc") || !have("dwp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = build_c(
        d,
        "prog",
        "inline.c",
        &["-g", "-O2", "-gsplit-dwarf", "-gdwarf-4"],
    );
    sh(d, "timeout", &["60", "dwp", "-e", "prog", "-o", "prog.dwp"]);
    let mut removed = 0;
    for entry in std::fs::read_dir(d).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "dwo") {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    assert!(
        removed > 0,
        "gcc -gsplit-dwarf should have written .dwo files"
    );
    let (start, size) = functions(&exe)["outer"];
    let got = frames_of(&exe, &[], &(start..start + size).collect::<Vec<_>>());
    let chain = vec![
        pair("helper", at("inline.c", "helper_body")),
        pair("outer", at("inline.c", "call_helper")),
    ];
    assert!(got.iter().any(|(_, f)| *f == chain), "{got:#?}");
}

// ---------------------------------------------------------------------------------------
// Stripped files: PLT entries, MiniDebugInfo, unwind-table extents

/// objdump's `<name@plt>` labels: (address, name).
fn objdump_plt_labels(exe: &Path) -> Vec<(u64, String)> {
    let out = Command::new("objdump").arg("-d").arg(exe).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (addr, rest) = l.split_once(" <")?;
            let name = rest.strip_suffix(">:")?;
            name.ends_with("@plt")
                .then(|| Some((u64::from_str_radix(addr, 16).ok()?, name.to_owned())))?
        })
        .collect()
}

/// PLT entries are named `name@plt` where objdump puts its labels, stripped or not: lazy
/// `.plt`, `-z now`, `.plt.got` (`__cxa_finalize` in a PIE), IBT's `.plt.sec`, PIE and not.
#[test]
fn plt_entries_are_named_like_objdump() {
    if !have("gcc") || !have("objdump") || !have("strip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let variants: [&[&str]; 4] = [
        &["-O2", "-pie", "-fPIE"],
        &["-O2", "-no-pie", "-fno-pie"],
        &["-O2", "-Wl,-z,now"],
        &["-O2", "-fcf-protection=full", "-Wl,-z,ibtplt"],
    ];
    for (i, flags) in variants.iter().enumerate() {
        let exe = build_c(d, &format!("p{i}"), "inline.c", flags);
        let stripped = d.join(format!("p{i}.stripped"));
        sh(
            d,
            "strip",
            &["-s", "-o", stripped.to_str().unwrap(), &format!("p{i}")],
        );
        let labels = objdump_plt_labels(&exe);
        // atoi (strtol once inlined) at least, beside crt's __cxa_finalize.
        assert!(
            labels
                .iter()
                .any(|(_, n)| n.starts_with("strto") || n == "atoi@plt"),
            "{flags:?}: {labels:?}"
        );
        for file in [&exe, &stripped] {
            for (addr, name) in &labels {
                let got = frames_of(file, &[], &[*addr, addr + 5]);
                for (a, frames) in got {
                    assert_eq!(&frames[0].0, name, "{flags:?} {} at {a:#x}", file.display());
                }
            }
        }
    }
}

/// libc's own PLT calls its IFUNCs (memcpy, strlen, ...) through R_X86_64_IRELATIVE
/// slots, which name no symbol: they are `*ABS*+0xRESOLVER@plt` as objdump labels them,
/// not code with no name (a `--call-graph dwarf` report of a qsort-heavy program
/// otherwise sent the user to install libc6-dbgsym for them).
#[test]
fn irelative_plt_entries_of_libc_are_named_like_objdump() {
    let libc = Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6");
    if !have("objdump") || !libc.is_file() {
        return;
    }
    let labels = objdump_plt_labels(libc);
    let abs: Vec<_> = labels
        .iter()
        .filter(|(_, n)| n.starts_with("*ABS*+0x"))
        .collect();
    assert!(!abs.is_empty(), "{labels:?}");
    for (addr, name) in abs {
        for (a, frames) in frames_of(libc, &[], &[*addr, addr + 5]) {
            assert_eq!(&frames[0].0, name, "at {a:#x}");
        }
    }
}

/// A stripped binary carrying MiniDebugInfo (`.gnu_debugdata`, built the way Fedora
/// does) names its local functions from it; a corrupt one is a warning, and the
/// functions are still one extent each from the unwind tables.
#[test]
fn minidebuginfo_names_the_functions_of_a_stripped_binary() {
    if !have("gcc") || !have("xz") || !have("objcopy") || !have("strip") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = build_c(d, "prog", "inline.c", &["-O2", "-g"]);
    let funcs = functions(&exe);
    std::fs::write(d.join("keep"), "outer\nlocal_function\nmain\n").unwrap();
    sh(d, "objcopy", &["--only-keep-debug", "prog", "mini"]);
    sh(
        d,
        "objcopy",
        &[
            "-S",
            "--remove-section",
            ".comment",
            "--keep-symbols=keep",
            "mini",
        ],
    );
    sh(d, "strip", &["--strip-all", "-R", ".comment", "prog"]);
    sh(d, "xz", &["mini"]);
    std::fs::copy(&exe, d.join("corrupt")).unwrap();
    sh(
        d,
        "objcopy",
        &["--add-section", ".gnu_debugdata=mini.xz", "prog"],
    );
    std::fs::write(d.join("garbage"), b"\xfd7zXZ\0 not really xz").unwrap();
    sh(
        d,
        "objcopy",
        &["--add-section", ".gnu_debugdata=garbage", "corrupt"],
    );
    let corrupt = d.join("corrupt");
    for name in ["outer", "local_function", "main"] {
        let (start, size) = funcs[name];
        let addrs = [start, start + size - 1];
        for (_, frames) in frames_of(&exe, &[], &addrs) {
            assert_eq!(frames[0].0, name);
        }
        let unnamed = format!("corrupt+{start:#x}");
        for (_, frames) in frames_of(&corrupt, &[], &addrs) {
            assert_eq!(frames[0].0, unnamed);
        }
        let after = frames_of(&corrupt, &[], &[start + size]);
        assert_ne!(after[0].1[0].0, unnamed);
    }
    let out = symbolize(&["-e", corrupt.to_str().unwrap(), "0"]);
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.contains("ignoring the MiniDebugInfo (.gnu_debugdata)"),
        "{warnings}"
    );
}

/// As a coprocess (addresses on a pipe that stays open), each address is answered as soon
/// as it arrives: the output is flushed whenever the input pauses.
#[test]
fn answers_each_address_while_the_pipe_stays_open() {
    use std::io::{BufRead, Write};
    let mut child = common::lbrprof()
        .args(["symbolize", "-a", "-e", env!("CARGO_BIN_EXE_lbrprof")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let wait = std::time::Duration::from_secs(60);
    // One address, and a second one written in two pieces: answered only when whole.
    for (pieces, want) in [
        (&["0x10\n"][..], "0x0000000000000010"),
        (&["0x2", "0\n"], "0x0000000000000020"),
    ] {
        for piece in pieces {
            stdin.write_all(piece.as_bytes()).unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(
            rx.recv_timeout(wait)
                .expect("an answer while stdin is open"),
            want
        );
        // Its function and location lines.
        rx.recv_timeout(wait).unwrap();
        rx.recv_timeout(wait).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
}
