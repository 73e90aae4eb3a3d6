//! BOLT profile export (`.fdata`, the text format `perf2bolt` writes and
//! `llvm-bolt -data=FILE` reads).
//!
//! With branch stacks, every line is an edge:
//!
//! ```text
//! <is_sym> <from function> <from offset hex> <is_sym> <to function> <to offset hex> <mispredicts> <count>
//! ```
//!
//! Taken branches come from the LBR edges. Fall-throughs are written the way BOLT's own
//! aggregator (`DataAggregator::getFallthroughsInTrace`) turns LBR traces into profile:
//! the function is cut into BOLT's basic blocks ([`crate::cfg`]) and every block boundary
//! a fall-through range crosses is an edge from the block's last instruction to the next
//! block (needs the module's code; ranges in unreadable code, or that cannot have run in
//! it, are counted and skipped, as perf2bolt counts "traces mismatching disassembled
//! function contents").
//! A side that is in no named function is written `0 [unknown] 0`: code known only by
//! its extent (`module+0x<start>`, a stripped binary) has no name BOLT could match, and an
//! offset is only ever written inside the extent of the function it names. What is left
//! out that way is counted ([`BoltStats`]) for a warning.
//!
//! Without branch stacks the `no_lbr` form is written: a `no_lbr <event>` line, then
//! `1 <function> <offset hex> <count>` per sampled instruction.
//!
//! Function names are whatever the symbol source gives, PLT entries spelled as BOLT
//! spells them (`printf@PLT`); for BOLT use mangled names (a symbolizer with demangling off).
//!
//! [`write_preagg`] writes perf2bolt's *pre-aggregated* input instead (`perf2bolt -pa -p
//! FILE BINARY`), for one binary, by address, leaving the cutting of fall-throughs into
//! blocks to BOLT:
//!
//! ```text
//! B <from> <to> <count> <mispredicts>     a taken branch
//! F <start> <end> <count>                 a fall-through range entered from its function
//! f <start> <end> <count>                 one entered from elsewhere (a return)
//! ```
//!
//! Addresses are the binary's virtual addresses (as in its ELF headers) in hex; a side
//! outside the binary is `X:0` (BOLT's "unknown object").

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use lbrprof_data::model::BranchKind;

use crate::aggregate::Profile;
use crate::cfg::Blocks;
use crate::decode::CodeReader;
use crate::loc::{Loc, ModuleId};
use crate::symbols::SymbolTable;

/// What an export wrote, for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoltStats {
    pub no_lbr: bool,
    pub branch_lines: usize,
    pub fallthrough_lines: usize,
    /// Edges with neither side in a known function.
    pub skipped_edges: u64,
    /// Distinct fall-through ranges that start in the binaries asked for.
    pub ranges: u64,
    /// Of those, the ones whose code could not be read or decoded, or that leave the
    /// function they start in (or start in no named function).
    pub skipped_ranges: u64,
    /// Branch ends (counted by branch) and, without branch stacks, samples in code with
    /// no function name: left out (written `[unknown]`).
    pub unnamed: u64,
}

/// `(function, offset in it)` of a location, when it is in a named function and the
/// offset is inside that function's extent. Function names cannot contain spaces in fdata.
fn side(syms: &SymbolTable, l: &Loc) -> Option<(String, u64)> {
    let s = syms.get(l)?;
    let f = s.function.as_ref().filter(|_| !s.unnamed)?;
    let offset = s.function_offset.unwrap_or(0);
    if s.function_size.is_some_and(|size| offset >= size) {
        return None;
    }
    Some((bolt_name(f), offset))
}

/// A function's name as BOLT spells it. Function names cannot contain spaces in fdata, and
/// BOLT names a PLT entry `printf@PLT` where the symbolizer (as objdump) says `printf@plt`:
/// a line naming `printf@plt` would be profile for a function BOLT does not know.
fn bolt_name(f: &str) -> String {
    let f = f.replace(char::is_whitespace, "_");
    match f.strip_suffix("@plt") {
        Some(callee) => format!("{callee}@PLT"),
        None => f,
    }
}

fn fmt_side(s: &Option<(String, u64)>) -> String {
    match s {
        Some((f, off)) => format!("1 {f} {off:x}"),
        None => "0 [unknown] 0".to_owned(),
    }
}

/// The names BOLT gives functions that are not simply their symbol's, by (module, file
/// offset of the function's start): a local (`static`) function `f` is `f/N` to BOLT,
/// the N-th local symbol of that name in address order.
pub type BoltNames = HashMap<(ModuleId, u64), String>;

/// Writes the fdata profile of `profile`.
///
/// `binaries`: when not empty, only locations in modules with these paths or file names
/// count as known (BOLT optimizes one binary; other modules' code is `[unknown]` to it).
/// `names` renames functions ([`BoltNames`]).
pub fn write_fdata(
    profile: &Profile,
    syms: &SymbolTable,
    code: &mut CodeReader,
    event: &str,
    binaries: &[String],
    names: &BoltNames,
    mut w: impl Write,
) -> io::Result<BoltStats> {
    let modules = &profile.spaces.modules;
    let mut stats = BoltStats::default();
    let wanted = |l: &Loc| {
        let m = modules.get(l.module);
        binaries.is_empty() || binaries.iter().any(|b| *b == m.path || b == m.short_name())
    };
    let side = |syms: &SymbolTable, l: &Loc| {
        let (f, off) = if wanted(l) { side(syms, l) } else { None }?;
        match names.get(&(l.module, l.offset - off)) {
            Some(n) => Some((n.clone(), off)),
            None => Some((f, off)),
        }
    };
    // In the binaries asked for, but with no name to give BOLT.
    let unnamed = |syms: &SymbolTable, l: &Loc| wanted(l) && side(syms, l).is_none();
    if profile.edges.is_empty() {
        stats.no_lbr = true;
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for (l, c) in &profile.ips {
            if let Some(s) = side(syms, l) {
                *lines.entry(format!("1 {} {:x}", s.0, s.1)).or_default() += c.samples;
            } else if unnamed(syms, l) {
                stats.unnamed += c.samples;
            }
        }
        writeln!(w, "no_lbr {}", event.replace(char::is_whitespace, "_"))?;
        for (l, n) in &lines {
            writeln!(w, "{l} {n}")?;
        }
        stats.branch_lines = lines.len();
        return Ok(stats);
    }
    // (from, to) text -> (mispredicts, count)
    let mut lines: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((from, to), e) in &profile.edges {
        let (f, t) = (side(syms, from), side(syms, to));
        for l in [from, to] {
            if unnamed(syms, l) {
                stats.unnamed += e.count;
            }
        }
        if f.is_none() && t.is_none() {
            stats.skipped_edges += 1;
            continue;
        }
        let v = lines
            .entry(format!("{} {}", fmt_side(&f), fmt_side(&t)))
            .or_default();
        v.0 += e.mispred;
        v.1 += e.count;
    }
    stats.branch_lines = lines.len();
    let mut ft: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // Jump-table targets seen in the profile: block starts BOLT finds in the tables.
    let mut leaders: HashMap<(ModuleId, u64), Vec<u64>> = HashMap::new();
    for ((from, to), e) in &profile.edges {
        if e.kind == BranchKind::IndJump
            && from.module == to.module
            && let (Some((f, fo)), Some((t, to_off))) = (side(syms, from), side(syms, to))
            && f == t
        {
            let start = from.offset - fo;
            leaders
                .entry((from.module, start))
                .or_default()
                .push(to_off);
        }
    }
    let mut cfgs: HashMap<(ModuleId, u64), Option<Blocks>> = HashMap::new();
    for ([origin, start, end], &count) in &profile.range_origins {
        if !wanted(start) {
            // Another binary's code: no part of this profile.
            continue;
        }
        stats.ranges += 1;
        let Some((func, start_off)) = side(syms, start) else {
            stats.skipped_ranges += 1;
            continue;
        };
        // The range must end in the function it starts in.
        let end_off = match side(syms, end) {
            Some((f, off)) if f == func && off >= start_off => off,
            _ => {
                stats.skipped_ranges += 1;
                continue;
            }
        };
        let Some(size) = syms.get(start).and_then(|s| s.function_size) else {
            stats.skipped_ranges += 1;
            continue;
        };
        let key = (start.module, start.offset - start_off);
        // Entered from another function (a return), as perf2bolt tells them apart.
        let external =
            origin.module != start.module || side(syms, origin).is_none_or(|(f, _)| f != func);
        let blocks = cfgs.entry(key).or_insert_with(|| {
            let bytes = code.read(modules, key.0, key.1, size)?;
            let lead = leaders.get(&key).map_or(&[][..], Vec::as_slice);
            (bytes.len() as u64 == size)
                .then(|| Blocks::build(&bytes, lead))
                .flatten()
        });
        let Some(edges) = blocks
            .as_ref()
            .and_then(|b| b.fallthroughs(start_off, end_off, external).ok())
        else {
            stats.skipped_ranges += 1;
            continue;
        };
        for (a, n) in edges {
            ft.entry(format!("1 {func} {a:x} 1 {func} {n:x}"))
                .or_default()
                .1 += count;
        }
    }
    stats.fallthrough_lines = ft.len();
    for (k, v) in ft {
        lines.entry(k).or_default().1 += v.1;
    }
    for (l, (m, n)) in &lines {
        writeln!(w, "{l} {m} {n}")?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use crate::loc::Module;
    use crate::symbols::{Sym, SymbolSource};
    use lbrprof_data::model::{
        AddressSpace, Branch, BranchFlags, CpuMode, Event, HostSample, Mapping,
    };

    /// Names offsets 0x0..0x100 `f`, the rest `g` (each starting at its range's base).
    struct TwoFunctions;
    impl SymbolSource for TwoFunctions {
        fn symbolize(&self, _m: &Module, offs: &[u64]) -> Vec<Sym> {
            offs.iter()
                .map(|&o| Sym {
                    function: Some(if o < 0x100 { "f" } else { "g" }.into()),
                    function_offset: Some(o % 0x100),
                    ..Sym::default()
                })
                .collect()
        }
    }

    fn agg(branches: bool) -> Profile {
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
        let br = |from, to, mispred| Branch {
            from,
            to,
            flags: BranchFlags {
                mispred,
                ..BranchFlags::default()
            },
        };
        for i in 0..3 {
            a.add(&Event::Sample(HostSample {
                pid: 1,
                period: 1,
                ip: 0x1010,
                mode: CpuMode::User,
                branches: if branches {
                    vec![br(0x1020, 0x1100, i == 0), br(0x1180, 0x1010, false)]
                } else {
                    vec![]
                },
                ..HostSample::default()
            }));
        }
        a.finish()
    }

    #[test]
    fn writes_branch_lines_with_function_offsets() {
        let p = agg(true);
        let syms = SymbolTable::build(&p, &TwoFunctions);
        let mut out = Vec::new();
        let stats = write_fdata(
            &p,
            &syms,
            &mut CodeReader::default(),
            "cycles",
            &[],
            &BoltNames::new(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "1 f 20 1 g 0 1 3\n1 g 80 1 f 10 0 3\n");
        assert_eq!(stats.branch_lines, 2);
        // The range [f+0x10, f+0x20] is in unreadable code: counted, skipped.
        assert_eq!((stats.ranges, stats.skipped_ranges), (1, 1));
        // Restricted to another binary, nothing is known.
        let mut out = Vec::new();
        let stats = write_fdata(
            &p,
            &syms,
            &mut CodeReader::default(),
            "c",
            &["other".into()],
            &BoltNames::new(),
            &mut out,
        )
        .unwrap();
        assert_eq!((stats.branch_lines, stats.skipped_edges), (0, 2));
        // Ranges in other binaries are no part of the profile, not skipped ones.
        assert_eq!((stats.ranges, stats.skipped_ranges), (0, 0));
    }

    #[test]
    fn names_are_spelled_as_bolt_spells_them() {
        assert_eq!(bolt_name("printf@plt"), "printf@PLT");
        assert_eq!(
            bolt_name("operator new(unsigned long)"),
            "operator_new(unsigned_long)"
        );
        assert_eq!(bolt_name("helper/2"), "helper/2");
        assert_eq!(bolt_name("plt"), "plt");
    }

    /// `f` is 0x40 bytes at 0x0; the code from 0x100 on is known only by its extent.
    struct Stripped;
    impl SymbolSource for Stripped {
        fn symbolize(&self, _m: &Module, offs: &[u64]) -> Vec<Sym> {
            offs.iter()
                .map(|&o| match o {
                    0..0x40 => Sym {
                        function: Some("f".into()),
                        function_offset: Some(o),
                        function_size: Some(0x40),
                        ..Sym::default()
                    },
                    0x100.. => Sym {
                        function: Some("w+0x100".into()),
                        function_offset: Some(o - 0x100),
                        function_size: Some(0x100),
                        unnamed: true,
                        ..Sym::default()
                    },
                    // Claims an offset past the function's end: never written.
                    _ => Sym {
                        function: Some("f".into()),
                        function_offset: Some(o),
                        function_size: Some(0x40),
                        ..Sym::default()
                    },
                })
                .collect()
        }
    }

    /// Unnamed code is written `[unknown]` and counted; no offset is ever written past
    /// the end of the function it names.
    #[test]
    fn unnamed_code_and_offsets_outside_the_function_are_left_out() {
        let p = agg(true);
        let syms = SymbolTable::build(&p, &Stripped);
        let mut out = Vec::new();
        let stats = write_fdata(
            &p,
            &syms,
            &mut CodeReader::default(),
            "c",
            &[],
            &BoltNames::new(),
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        // 0x1020 -> 0x1100 (f+0x20 -> unnamed) and 0x1180 -> 0x1010 (unnamed -> f+0x10).
        assert_eq!(text, "0 [unknown] 0 1 f 10 0 3\n1 f 20 0 [unknown] 0 1 3\n");
        assert_eq!(stats.unnamed, 6);
        let p = agg(false);
        let mut out = Vec::new();
        let stats = write_fdata(
            &p,
            &syms,
            &mut CodeReader::default(),
            "c",
            &[],
            &BoltNames::new(),
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "no_lbr c\n1 f 10 3\n");
        assert_eq!(stats.unnamed, 0);
    }

    #[test]
    fn preagg_has_branches_by_address_and_ranges_by_origin() {
        let p = agg(true);
        let syms = SymbolTable::build(&p, &TwoFunctions);
        let m = p.edges.keys().next().unwrap().0.module;
        let mut out = Vec::new();
        let stats = write_preagg(&p, &syms, m, &|o| Some(0x40_0000 + o), &mut out).unwrap();
        // Offsets 0x20 -> 0x100 and 0x180 -> 0x10 of the mapping at 0x1000 (pgoff 0);
        // the range [0x10, 0x20] of f entered from g: external.
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "B 400020 400100 3 1\nB 400180 400010 3 0\nf 400010 400020 3\n"
        );
        assert_eq!((stats.branch_lines, stats.external_lines), (2, 1));
        // Another module: nothing of it.
        let mut out = Vec::new();
        let other = crate::loc::ModuleTable::UNKNOWN;
        write_preagg(&p, &syms, other, &|o| Some(o), &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn no_branch_stacks_give_the_no_lbr_form() {
        let p = agg(false);
        let syms = SymbolTable::build(&p, &TwoFunctions);
        let mut out = Vec::new();
        let stats = write_fdata(
            &p,
            &syms,
            &mut CodeReader::default(),
            "cpu clock",
            &[],
            &BoltNames::new(),
            &mut out,
        )
        .unwrap();
        assert!(stats.no_lbr);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "no_lbr cpu_clock\n1 f 10 3\n"
        );
    }
}

/// What [`write_preagg`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreaggStats {
    pub branch_lines: usize,
    pub fallthrough_lines: usize,
    /// Fall-through ranges entered from another function (`f` lines).
    pub external_lines: usize,
    /// Branch and range counts in the binary whose file offset maps to no address.
    pub unmapped: u64,
}

/// Writes perf2bolt's pre-aggregated profile of the code of `module` in `profile`.
/// `svma` maps a file offset of the module to its virtual address (`None` outside its
/// loaded segments). Fall-through ranges are `f` when the branch that started them is
/// not in the function they run in (by `syms`).
pub fn write_preagg(
    profile: &Profile,
    syms: &SymbolTable,
    module: ModuleId,
    svma: &dyn Fn(u64) -> Option<u64>,
    mut w: impl Write,
) -> io::Result<PreaggStats> {
    let mut stats = PreaggStats::default();
    let addr = |l: &Loc| (l.module == module).then(|| svma(l.offset)).flatten();
    let fmt = |a: Option<u64>| a.map_or_else(|| "X:0".to_owned(), |a| format!("{a:x}"));
    // (kind, from, to) -> (count, mispredicts); BTreeMap for a stable order. A side
    // outside the binary has no address.
    type Line = (char, Option<u64>, Option<u64>);
    let mut lines: BTreeMap<Line, (u64, u64)> = BTreeMap::new();
    for ((from, to), e) in &profile.edges {
        if from.module != module && to.module != module {
            continue;
        }
        let (f, t) = (addr(from), addr(to));
        if f.is_none() && t.is_none() {
            stats.unmapped += e.count;
            continue;
        }
        let v = lines.entry(('B', f, t)).or_default();
        v.0 += e.count;
        v.1 += e.mispred;
    }
    for ([origin, start, end], &n) in &profile.range_origins {
        if start.module != module {
            continue;
        }
        let (Some(a), Some(z)) = (addr(start), addr(end)) else {
            stats.unmapped += n;
            continue;
        };
        let func = |l: &Loc| side(syms, l).map(|(f, off)| (l.module, f, l.offset - off));
        let internal = origin.module == start.module
            && func(start).is_some_and(|s| func(origin).is_some_and(|o| o == s));
        let kind = if internal { 'F' } else { 'f' };
        lines.entry((kind, Some(a), Some(z))).or_default().0 += n;
    }
    for ((kind, f, t), (n, m)) in &lines {
        match kind {
            'B' => {
                stats.branch_lines += 1;
                writeln!(w, "B {} {} {n} {m}", fmt(*f), fmt(*t))?;
            }
            _ => {
                if *kind == 'f' {
                    stats.external_lines += 1;
                } else {
                    stats.fallthrough_lines += 1;
                }
                writeln!(w, "{kind} {} {} {n}", fmt(*f), fmt(*t))?;
            }
        }
    }
    Ok(stats)
}
