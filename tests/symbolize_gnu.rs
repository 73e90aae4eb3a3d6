//! `lbrprof symbolize --style gnu` against binutils `addr2line -a -f -i -C` (2.40) on
//! g++-built C++ (`tests/fixtures-src/symbolizer/shapes.cc`, `-O2 -g`, every `.text`
//! address): the number of frames, every file:line (with discriminators) and the inline
//! chain must be identical; function names may differ only in the ways classified below.
//!
//! Conventions of binutils that `--style gnu` matches (and this test checks): the DWARF
//! name of each frame, typed template literals as `0ul`, empty template parameter packs
//! leaving no `, ` behind, `> >`, `[abi:cxx11]`, `&&`-qualified parameters where the
//! demangler keeps them.
//!
//! Known differences, counted and printed:
//! * `padding`: binutils names the bytes after a function's end (alignment padding) by
//!   the nearest symbol before them; we use the symbol's size and print `??` there, as
//!   llvm-symbolizer does.
//! * `cold`: in a function's `.cold` part, binutils names the innermost frame by the
//!   part's symbol (`f(…) [clone .cold]`, `main.cold`) even where the DWARF says an inlined function
//!   is there; we print the DWARF's inlined frame (as llvm-symbolizer does).
//! * `caller's name`: binutils names some inlined frames (a file-local function or
//!   `std::__sort` inlined into `main`) by a caller's name (`main`), sometimes that
//!   caller's linkage name (`void std::__adjust_heap<…>(…)` for a comparison lambda
//!   inlined there); the DWARF, llvm-symbolizer and we name the inlined function.
//! * `DW_AT_name`: binutils follows a subprogram's `DW_AT_specification` to the
//!   declaration's `DW_AT_linkage_name` (a full demangled signature, `void
//!   std::__adjust_heap<…>(…)`); the `addr2line` crate stops at the subprogram's own short
//!   `DW_AT_name` (`__adjust_heap<…>`). The name is the same function's, qualified less.
//! * `demangler`: the same function, rendered differently because `cpp_demangle` differs
//!   from libiberty: in some forwarded parameter packs it loses `&&` or expands a pack
//!   into the wrong parameters, and a few names with expressions in their template
//!   arguments (`std::enable_if<…>::type std::swap<…>`) it cannot decode at all, so the
//!   mangled name is printed. Matching these means a libiberty-exact demangler (or
//!   linking libiberty); not done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use object::{Object, ObjectSection, ObjectSymbol};

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

/// Frames per address from `-a` output: (function, location) pairs.
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
    let (mut current, mut function) = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
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
            Some(f) => map.get_mut(&a).unwrap().push((f, line.to_owned())),
        }
    }
    map
}

/// The qualified name of a function without its return type, template arguments and
/// parameters.
fn base_name(name: &str) -> &str {
    let end = name.find(['<', '(']).unwrap_or(name.len());
    name[..end].rsplit(' ').next().unwrap_or("")
}

#[test]
fn gnu_style_agrees_with_binutils_addr2line_on_gxx_code() {
    if !have("g++") || !have("addr2line") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("p");
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures-src/symbolizer/shapes.cc");
    let out = Command::new("g++")
        .args(["-O2", "-g", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe_s = exe.to_str().unwrap();
    let data = std::fs::read(&exe).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    let text = obj.section_by_name(".text").unwrap();
    let addrs: Vec<u64> = (text.address()..text.address() + text.size()).collect();
    let symbols: Vec<(u64, u64)> = obj
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .map(|s| (s.address(), s.size()))
        .collect();
    let in_a_symbol = |a: u64| symbols.iter().any(|&(s, n)| (s..s + n).contains(&a));

    let theirs = frames("addr2line", &["-a", "-f", "-i", "-C", "-e", exe_s], &addrs);
    let ours = frames(
        env!("CARGO_BIN_EXE_lbrprof"),
        &["symbolize", "--style", "gnu", "-a", "-e", exe_s],
        &addrs,
    );
    assert_eq!(theirs.len(), addrs.len());
    assert_eq!(ours.len(), addrs.len());

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: BTreeMap<&str, (u64, String, String)> = BTreeMap::new();
    for a in &addrs {
        let (t, o) = (&theirs[a], &ours[a]);
        let kind = if t == o {
            "identical"
        } else if o[..] == [("??".to_owned(), "??:0".to_owned())] && !in_a_symbol(*a) {
            "padding"
        } else {
            assert_eq!(
                t.len(),
                o.len(),
                "{a:#x}: frame count\n addr2line: {t:#?}\n lbrprof: {o:#?}"
            );
            let mut kind = "identical";
            for (i, ((tf, tl), (of, ol))) in t.iter().zip(o).enumerate() {
                assert_eq!(tl, ol, "{a:#x}: location of frame {i}");
                if tf == of {
                    continue;
                }
                let (tb, ob) = (base_name(tf), base_name(of));
                kind = if of == "??" && !in_a_symbol(*a) {
                    "padding"
                } else if tf.ends_with(" [clone .cold]") || tf.ends_with(".cold") {
                    "cold"
                // A DW_AT_name has no parameter list (its scope may: `main(int, char**)::`).
                } else if !of.ends_with(')') && tb.ends_with(&format!("::{ob}")) {
                    "DW_AT_name"
                } else if of.starts_with("_Z") && !tf.starts_with("_Z") || tb == ob {
                    "demangler"
                } else if t[i + 1..].iter().any(|(caller, _)| {
                    let cb = base_name(caller);
                    caller == tf || cb == tb || tb.ends_with(&format!("::{cb}"))
                }) {
                    "caller's name"
                } else {
                    panic!(
                        "{a:#x}: frame {i}: unexplained name difference\n addr2line: {tf}\n lbrprof:   {of}"
                    )
                };
                examples.entry(kind).or_insert((*a, tf.clone(), of.clone()));
            }
            kind
        };
        *counts.entry(kind).or_default() += 1;
    }
    eprintln!("{} addresses: {counts:?}", addrs.len());
    for (kind, (a, t, o)) in &examples {
        eprintln!("{kind} e.g. at {a:#x}:\n  addr2line: {t}\n  lbrprof:   {o}");
    }
    // Conventions matched: no cpp_demangle spellings where libiberty has its own.
    for frames in ours.values() {
        for (f, _) in frames {
            assert!(!f.contains(", >"), "empty pack left a comma: {f}");
            assert!(
                !f.contains("<(unsigned long)") && !f.contains(", (unsigned long)"),
                "typed literal not as libiberty prints it: {f}"
            );
        }
    }
    let identical = counts.get("identical").copied().unwrap_or(0);
    assert!(
        identical * 100 >= addrs.len() * 60,
        "only {identical} of {} addresses identical",
        addrs.len()
    );
    assert!(counts.get("padding").copied().unwrap_or(0) * 10 < addrs.len());
}
