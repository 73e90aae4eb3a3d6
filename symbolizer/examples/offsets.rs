//! Times the per-address API `report` and the exports use ([`Symbolizer::symbolize`]:
//! file offsets in, owned frames out) on N random offsets of a binary's `.text`, each
//! distinct offset once, as `SymbolTable::build` asks. Run by `bench/symbolize --api`.
//!
//! `cargo run --release -p lbrprof-symbolizer --example offsets -- BINARY [N]`
//! prints `N addresses, F frames, T s` (T: wall time of the lookups alone, after the
//! module was opened).

use lbrprof_symbolizer::{FileOffset, ModuleKey, Symbolizer};
use object::{Object, ObjectSection};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: offsets BINARY [N]");
        std::process::exit(2);
    };
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("offsets: cannot read {path}: {e}");
        std::process::exit(1)
    });
    let obj = object::File::parse(&*data).unwrap_or_else(|e| {
        eprintln!("offsets: {path}: {e}");
        std::process::exit(1)
    });
    let Some((start, size)) = obj
        .section_by_name(".text")
        .and_then(|s| s.file_range())
        .filter(|r| r.1 > 0)
    else {
        eprintln!("offsets: {path} has no .text");
        std::process::exit(1)
    };
    // A fixed xorshift sequence: the same offsets on every run.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut offsets: Vec<FileOffset> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            FileOffset(start + x % size)
        })
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    let s = Symbolizer::default();
    let key = ModuleKey::new(&path);
    // Open the module and load its DWARF first: the lookups alone are timed.
    s.symbolize(&key, &offsets[..1]);
    let t = std::time::Instant::now();
    let out = s.symbolize(&key, &offsets);
    let elapsed = t.elapsed();
    let frames: usize = out.iter().map(|r| r.frames.len()).sum();
    println!(
        "{} addresses, {frames} frames, {:.3} s",
        offsets.len(),
        elapsed.as_secs_f64()
    );
    std::mem::forget(out);
    std::mem::forget(s);
}
