//! LLVM sample profiles (the AutoFDO text format `clang -fprofile-sample-use` and
//! `llvm-profdata merge --sample` read), computed from LBR data the way AutoFDO's
//! `create_llvm_prof` computes them, for one binary.
//!
//! ```text
//! main:20000:0                 function: total samples, head samples (entry count)
//!  2: 1000                     line offset from the function's first line: count
//!  3: 1000 work:1000           ... with the calls made there (target: count)
//!  4.1: 0                      a discriminator after the dot; 0: never run
//!  6: inlined_fn:4000          a call site inlined here, its own samples nested below
//!   1: 1000
//! ```
//!
//! What AutoFDO does, and so this module:
//! * Every fall-through range `[start, end]` adds its count to each *byte* address from
//!   `start` through `end` (create_llvm_prof walks addresses byte by byte; `end` is the
//!   first byte of the range's last instruction), clipped to the function `start` is in.
//! * Each address has an inline stack from DWARF. Its count is added to the total of the
//!   function and of every inlined call site on the stack; the innermost frame's line
//!   (offset from its function's `DW_AT_decl_line`, with the base discriminator) takes the
//!   largest count of its addresses. Lines of a profiled function that never ran are
//!   written with 0 (cold, as far as the compiler is concerned). Code of line 0 (no
//!   line, e.g. compiler-made spills) counts in the totals but gets no line entry
//!   (create_llvm_prof writes it at the offset `0 - first line`, which names no line).
//! * A taken branch to the first byte of a function (a call, or a tail call) adds to that
//!   function's head samples and, at the branch's source line, to its call targets.
//!
//! The symbolizing is the caller's ([`build`] takes closures), so this stays free of I/O.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use crate::aggregate::Profile;
use crate::loc::ModuleId;
use crate::symbols::SymbolTable;

/// One frame of an address's inline stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The function (linkage name).
    pub function: String,
    /// The line in that function: of the address for the innermost frame, of the call
    /// site for the others; 0 when DWARF gives none (line 0: code of no line).
    pub line: u32,
    /// The DWARF discriminator (as encoded by LLVM: base, duplication factor, copy id).
    pub discriminator: u32,
}

/// The samples of a function, or of a call site inlined into one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionSamples {
    pub name: String,
    pub total: u64,
    pub head: u64,
    /// By (line offset, base discriminator).
    pub body: BTreeMap<(u32, u32), BodySamples>,
    /// By (line offset, discriminator, callee).
    pub callsites: BTreeMap<(u32, u32, String), FunctionSamples>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodySamples {
    pub count: u64,
    /// Call targets and how often each was called from here.
    pub calls: BTreeMap<String, u64>,
}

/// What [`build`] left out, for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutofdoStats {
    /// Range counts that start in code with no named function of extent known.
    pub ranges_outside: u64,
    /// Addresses with counts but no inline stack (no DWARF for them).
    pub no_line: u64,
}

/// LLVM's prefix encoding of one discriminator component
/// (`DILocation::getUnsignedFromPrefixEncoding`).
fn prefix_decode(u: u32) -> u32 {
    if u & 1 != 0 {
        return 0;
    }
    let u = u >> 1;
    if u & 0x20 != 0 {
        ((u >> 1) & 0xfe0) | (u & 0x1f)
    } else {
        u & 0x1f
    }
}

fn next_component(d: u32) -> u32 {
    if d & 1 == 0 {
        d >> if d & 0x40 != 0 { 14 } else { 7 }
    } else {
        d >> 1
    }
}

/// The base discriminator of an encoded one.
pub fn base_discriminator(d: u32) -> u32 {
    prefix_decode(d)
}

/// The duplication factor (loop unrolling, vectorization) an encoded discriminator
/// carries; 1 when none.
pub fn duplication_factor(d: u32) -> u32 {
    match prefix_decode(next_component(d)) {
        0 => 1,
        n => n,
    }
}

impl FunctionSamples {
    fn named(name: &str) -> Self {
        FunctionSamples {
            name: name.to_owned(),
            ..FunctionSamples::default()
        }
    }
}

/// Builds the profile of `module`. `symbolize` gives the inline stack (innermost frame
/// first, empty when unknown) of each file offset asked, in order; `decl_line` the first
/// line of a function by name.
pub fn build(
    profile: &Profile,
    syms: &SymbolTable,
    module: ModuleId,
    symbolize: &mut dyn FnMut(&[u64]) -> Vec<Vec<Frame>>,
    decl_line: &dyn Fn(&str) -> Option<u32>,
) -> (Vec<FunctionSamples>, AutofdoStats) {
    let mut stats = AutofdoStats::default();
    // Named functions of the module: start offset -> (name, size).
    let mut funcs: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let function_of = |l: &crate::loc::Loc| {
        let s = syms.get(l)?;
        let name = s.function.as_ref().filter(|_| !s.unnamed)?;
        let off = s.function_offset?;
        let size = s.function_size.filter(|&z| off < z)?;
        Some((l.offset - off, name.clone(), size))
    };
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for ((start, end), &n) in &profile.ranges {
        if start.module != module {
            continue;
        }
        let Some((fstart, name, size)) = function_of(start) else {
            stats.ranges_outside += n;
            continue;
        };
        let last = end.offset.min(fstart + size - 1);
        for b in start.offset..=last {
            *counts.entry(b).or_default() += n;
        }
        funcs.insert(fstart, (name, size));
    }
    // Calls: (source offset, callee, count), and head samples.
    let mut calls: Vec<(u64, String, u64)> = Vec::new();
    let mut heads: HashMap<String, u64> = HashMap::new();
    for ((from, to), e) in &profile.edges {
        if from.module != module || to.module != module {
            continue;
        }
        let (Some((fstart, fname, fsize)), Some((tstart, callee, _))) =
            (function_of(from), function_of(to))
        else {
            continue;
        };
        if tstart != to.offset {
            continue;
        }
        *heads.entry(callee.clone()).or_default() += e.count;
        calls.push((from.offset, callee, e.count));
        funcs.entry(fstart).or_insert((fname, fsize));
    }
    // Every byte of every function with samples, then the call sources.
    let mut addrs: Vec<u64> = funcs
        .iter()
        .flat_map(|(&s, (_, size))| s..s + size)
        .collect();
    let nbytes = addrs.len();
    addrs.extend(calls.iter().map(|c| c.0));
    let stacks = symbolize(&addrs);
    let offset = |f: &Frame| {
        let start = decl_line(&f.function).unwrap_or(0);
        f.line.wrapping_sub(start) & 0xffff
    };
    let mut out: BTreeMap<u64, FunctionSamples> = BTreeMap::new();
    // The node for `stack` under `top`, creating call sites on the way; `count` is added
    // to the total of each.
    fn descend<'a>(
        top: &'a mut FunctionSamples,
        stack: &[Frame],
        count: u64,
        offset: &dyn Fn(&Frame) -> u32,
    ) -> &'a mut FunctionSamples {
        let mut node = top;
        node.total += count;
        for i in (1..stack.len()).rev() {
            let key = (offset(&stack[i]), 0, stack[i - 1].function.clone());
            node = node
                .callsites
                .entry(key)
                .or_insert_with(|| FunctionSamples::named(&stack[i - 1].function));
            node.total += count;
        }
        node
    }
    let mut fstarts = funcs.keys().copied().peekable();
    let mut current: Option<u64> = None;
    for (i, stack) in stacks.iter().enumerate().take(nbytes) {
        let a = addrs[i];
        while fstarts.next_if(|&s| s <= a).is_some() {
            current = Some(a);
        }
        let Some(fstart) = current else { continue };
        let count = counts.get(&a).copied().unwrap_or(0);
        let Some(inner) = stack.first() else {
            stats.no_line += u64::from(count > 0);
            continue;
        };
        let (name, _) = &funcs[&fstart];
        let count = count * u64::from(duplication_factor(inner.discriminator));
        let top = out
            .entry(fstart)
            .or_insert_with(|| FunctionSamples::named(name));
        let node = descend(top, stack, count, &offset);
        // Line 0 counts in the totals (as in create_llvm_prof) but is no line.
        if inner.line != 0 {
            let body = node
                .body
                .entry((offset(inner), base_discriminator(inner.discriminator)))
                .or_default();
            body.count = body.count.max(count);
        }
    }
    for (i, (from, callee, n)) in calls.iter().enumerate() {
        let stack = &stacks[nbytes + i];
        let Some(inner) = stack.first() else { continue };
        let Some((&fstart, (name, _))) = funcs.range(..=from).next_back() else {
            continue;
        };
        let top = out
            .entry(fstart)
            .or_insert_with(|| FunctionSamples::named(name));
        let node = descend(top, stack, 0, &offset);
        *node
            .body
            .entry((offset(inner), base_discriminator(inner.discriminator)))
            .or_default()
            .calls
            .entry(callee.clone())
            .or_default() += n;
    }
    // Only functions the DWARF describes, as create_llvm_prof writes them: code without a
    // subprogram (crti's `_init`, say) has no first line to count offsets from.
    let mut v: Vec<FunctionSamples> = out
        .into_values()
        .filter(|f| f.total > 0 && decl_line(&f.name).is_some())
        .map(|mut f| {
            f.head = heads.get(&f.name).copied().unwrap_or(0);
            f
        })
        .collect();
    // As LLVM's writer orders them: hottest first.
    v.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
    (v, stats)
}

fn loc(off: u32, disc: u32) -> String {
    if disc == 0 {
        off.to_string()
    } else {
        format!("{off}.{disc}")
    }
}

fn write_function(f: &FunctionSamples, indent: usize, w: &mut dyn Write) -> io::Result<()> {
    let pad = " ".repeat(indent + 1);
    for (&(off, disc), b) in &f.body {
        write!(w, "{pad}{}: {}", loc(off, disc), b.count)?;
        let mut targets: Vec<(&String, &u64)> = b.calls.iter().collect();
        targets.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for (t, n) in targets {
            write!(w, " {t}:{n}")?;
        }
        writeln!(w)?;
    }
    for ((off, disc, _), c) in &f.callsites {
        writeln!(w, "{pad}{}: {}:{}", loc(*off, *disc), c.name, c.total)?;
        write_function(c, indent + 1, w)?;
    }
    Ok(())
}

/// Writes the profile in LLVM's text sample profile format.
pub fn write_text(funcs: &[FunctionSamples], mut w: impl Write) -> io::Result<()> {
    for f in funcs {
        writeln!(w, "{}:{}:{}", f.name, f.total, f.head)?;
        write_function(f, 0, &mut w)?;
    }
    Ok(())
}

/// Writes AutoFDO's raw text profile of `module` (what `create_llvm_prof` and GCC's
/// `create_gcov` read with `--profiler=text`): the fall-through ranges, the sampled
/// addresses and the taken branches, by virtual address (`svma` maps a file offset;
/// `None` leaves it out), in hex:
///
/// ```text
/// <number of ranges>
/// <start>-<end>:<count>
/// <number of addresses>
/// <address>:<count>
/// <number of branches>
/// <from>-><to>:<count>
/// ```
pub fn write_raw(
    profile: &Profile,
    module: ModuleId,
    svma: &dyn Fn(u64) -> Option<u64>,
    mut w: impl Write,
) -> io::Result<usize> {
    let addr = |l: &crate::loc::Loc| (l.module == module).then(|| svma(l.offset)).flatten();
    let mut ranges: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for ((s, e), &n) in &profile.ranges {
        if let (Some(a), Some(z)) = (addr(s), addr(e)) {
            *ranges.entry((a, z)).or_default() += n;
        }
    }
    let mut ips: BTreeMap<u64, u64> = BTreeMap::new();
    for (l, c) in &profile.ips {
        if let Some(a) = addr(l) {
            *ips.entry(a).or_default() += c.samples;
        }
    }
    let mut branches: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for ((f, t), e) in &profile.edges {
        if let (Some(a), Some(z)) = (addr(f), addr(t)) {
            *branches.entry((a, z)).or_default() += e.count;
        }
    }
    writeln!(w, "{}", ranges.len())?;
    for ((a, z), n) in &ranges {
        writeln!(w, "{a:x}-{z:x}:{n}")?;
    }
    writeln!(w, "{}", ips.len())?;
    for (a, n) in &ips {
        writeln!(w, "{a:x}:{n}")?;
    }
    writeln!(w, "{}", branches.len())?;
    for ((a, z), n) in &branches {
        writeln!(w, "{a:x}->{z:x}:{n}")?;
    }
    Ok(ranges.len() + ips.len() + branches.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use crate::loc::Module;
    use crate::symbols::{Sym, SymbolSource};
    use lbrprof_data::model::{AddressSpace, Branch, Event, HostSample, Mapping};

    /// `main` at 0x0..0x20 calls `work` at 0x20..0x30.
    struct Two;
    impl SymbolSource for Two {
        fn symbolize(&self, _m: &Module, offs: &[u64]) -> Vec<Sym> {
            offs.iter()
                .map(|&o| {
                    let (f, s, z) = if o < 0x20 {
                        ("main", 0, 0x20)
                    } else {
                        ("work", 0x20, 0x10)
                    };
                    Sym {
                        function: Some(f.into()),
                        function_offset: Some(o - s),
                        function_size: Some(z),
                        ..Sym::default()
                    }
                })
                .collect()
        }
    }

    /// main: line 10 + (offset / 8); work: line 20 at 0x20..0x28, line 21 after it, with
    /// 0x24..0x28 an inlined `leaf` (line 30) called from work line 21.
    fn stack(o: u64) -> Vec<Frame> {
        let f = |function: &str, line| Frame {
            function: function.into(),
            line,
            discriminator: 0,
        };
        match o {
            0..0x20 => vec![f("main", 10 + (o / 8) as u32)],
            0x24..0x28 => vec![f("leaf", 30), f("work", 21)],
            0x20..0x24 => vec![f("work", 20)],
            _ => vec![f("work", 21)],
        }
    }

    #[test]
    fn counts_bytes_max_per_line_calls_heads_and_inlines() {
        let mut a = Aggregator::new(AggregateOptions::default());
        a.add(&Event::Mapping(Mapping {
            time_ns: 0,
            space: AddressSpace::HostUser,
            pid: 1,
            start: 0x1000,
            len: 0x1000,
            pgoff: 0,
            path: "/nonexistent".into(),
            build_id: None,
        }));
        let br = |from, to| Branch {
            from,
            to,
            flags: Default::default(),
        };
        // main+0x8 calls work; work runs to its ret at 0x2c; back to main+0xd, which
        // runs to its jump at 0x18 (newest first).
        for _ in 0..10 {
            a.add(&Event::Sample(HostSample {
                pid: 1,
                period: 1,
                ip: 0x1010,
                branches: vec![br(0x1018, 0x1000), br(0x102c, 0x100d), br(0x1008, 0x1020)],
                ..HostSample::default()
            }));
        }
        let p = a.finish();
        let syms = SymbolTable::build(&p, &Two);
        let m = p.edges.keys().next().unwrap().0.module;
        let decl = |f: &str| match f {
            "main" => Some(10),
            "work" => Some(20),
            "leaf" => Some(29),
            _ => None,
        };
        let (funcs, stats) = build(
            &p,
            &syms,
            m,
            &mut |offs| offs.iter().map(|&o| stack(o)).collect(),
            &decl,
        );
        assert_eq!(stats, AutofdoStats::default());
        let mut out = Vec::new();
        write_text(&funcs, &mut out).unwrap();
        // work: 13 bytes (0x20..=0x2c) x 10; main: 12 bytes (0xd..=0x18) x 10, plus its
        // unsampled line 10 (offset 0). The jump back to main's first byte counts as a
        // call of main, as in create_llvm_prof.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "work:130:10\n 0: 10\n 1: 10\n 1: leaf:40\n  1: 10\n\
             main:120:10\n 0: 0\n 1: 10 work:10\n 2: 10\n 3: 10 main:10\n"
        );
    }

    #[test]
    fn discriminators_decode_as_llvm_encodes_them() {
        // Base 1, no duplication: encoded 2. Base 3 with duplication factor 2: the base
        // (3 << 1 = 6), then factor 2 (2 << 1 = 4) after 7 bits.
        assert_eq!((base_discriminator(2), duplication_factor(2)), (1, 1));
        let d = 6 | (4 << 7);
        assert_eq!((base_discriminator(d), duplication_factor(d)), (3, 2));
        assert_eq!((base_discriminator(0), duplication_factor(0)), (0, 1));
    }
}
