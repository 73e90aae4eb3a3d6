//! Function extents: which function, if any, contains an address.
//!
//! The input is every candidate a module offers — symbol-table entries (`.symtab`,
//! `.dynsym`, MiniDebugInfo), synthetic `name@plt` entries, and unnamed extents from the
//! unwind tables (`.eh_frame` FDEs) — and the output is a lookup that never charges an
//! address to a function that does not contain it:
//!
//! * A symbol with a size covers `[start, start + size)`, nothing more: alignment padding
//!   and code no symbol describes are not given to the previous symbol.
//! * A symbol without a size (hand-written assembly) covers up to the next function start
//!   (named or not) or the end of its section, as perf does.
//! * Several symbols at one address are one function: its name is chosen by
//!   [`name_rank`] (the public, global name over weak and local ones and over glibc's
//!   `__GI_`/`__libc_` internal aliases), or, as llvm-symbolizer chooses, the symbol with
//!   the largest size and of those the last in table order ([`SymbolChoice::Llvm`]); its extent is the
//!   largest size among them (or the unwind table's, when no symbol has one).
//! * When extents overlap, the one starting last (the innermost) wins; a named function
//!   always wins over an unnamed extent, which only fills code no symbol covers.
//!
//! Pure data, no I/O: [`crate::module`] gathers the candidates from the ELF file.

use crate::types::SymbolChoice;

/// ELF symbol binding, best first for naming.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Binding {
    Global,
    Weak,
    Local,
}

/// One candidate function: a symbol, a PLT entry or an unwind-table extent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub addr: u64,
    /// 0 when unknown.
    pub size: u64,
    /// The furthest a zero-size candidate may extend (the end of its section).
    pub limit: u64,
    /// `None` for an extent known only from the unwind tables.
    pub name: Option<&'static str>,
    pub binding: Binding,
    /// The `STT_FILE` symbol that scopes a local symbol.
    pub file: Option<&'static str>,
}

/// A function as lookups see it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Function {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    /// `None` for a function known only by its extent.
    pub name: Option<&'static str>,
    pub file: Option<&'static str>,
}

/// A piece of the address space owned by one function (`functions[func]`).
#[derive(Clone, Copy, Debug)]
struct Piece {
    end: u64,
    func: u32,
}

/// The lookup structure: disjoint pieces sorted by start, each naming its function.
#[derive(Default, Debug)]
pub(crate) struct SymbolTable {
    functions: Vec<Function>,
    /// `pieces[i]` starts at `starts[i]` (apart, so the binary search touches fewer lines).
    starts: Vec<u64>,
    pieces: Vec<Piece>,
}

/// Whether a name is one of glibc's internal aliases of a public function.
fn internal_alias(name: &str) -> bool {
    name.starts_with("__GI_") || name.starts_with("__libc_") || name.starts_with("__EI_")
}

/// How good a name is for a function with several symbols at its address; lower is
/// better. The public name first, then global over weak over local, a symbol with a size
/// over one without, fewer leading underscores, the shorter name, and finally the name
/// itself so the choice never depends on table order.
pub(crate) fn name_rank(c: &Candidate) -> (bool, Binding, bool, usize, usize, &'static str) {
    let name = c.name.unwrap_or("");
    (
        internal_alias(name),
        c.binding,
        c.size == 0,
        name.bytes().take_while(|b| *b == b'_').count(),
        name.len(),
        name,
    )
}

impl SymbolTable {
    /// Builds the lookup from candidates in any order, naming each function as perf
    /// does ([`SymbolChoice::Perf`]). Candidates with an empty extent are dropped.
    #[cfg(test)]
    pub fn new(cands: Vec<Candidate>) -> Self {
        Self::with_pick(cands, SymbolChoice::Perf)
    }

    /// Builds the lookup from candidates in table order; `pick` chooses the name of
    /// several at one address: perf's public name ([`name_rank`]) or LLVM's largest,
    /// then last. Candidates with an empty extent are dropped.
    pub fn with_pick(mut cands: Vec<Candidate>, pick: SymbolChoice) -> Self {
        cands.retain(|c| c.addr < c.limit.max(c.addr.saturating_add(c.size)));
        // Stable: candidates at one address stay in table order, for SymbolChoice::Llvm.
        cands.sort_by_key(|c| c.addr);
        // One function per address and kind (named or not), its extent before the
        // zero-size ones are extended: (function, size, limit).
        let mut named: Vec<(Function, u64, u64)> = Vec::new();
        let mut unnamed: Vec<(Function, u64, u64)> = Vec::new();
        let mut starts: Vec<u64> = Vec::new();
        for group in cands.chunk_by(|a, b| a.addr == b.addr) {
            let addr = group[0].addr;
            starts.push(addr);
            let limit = group.iter().map(|c| c.limit).max().unwrap_or(addr);
            let with_names = group.iter().filter(|c| c.name.is_some());
            let best = match pick {
                SymbolChoice::Perf => with_names.min_by_key(|c| name_rank(c)),
                // `max_by_key` returns the last of equal maxima.
                SymbolChoice::Llvm => with_names.max_by_key(|c| c.size),
            };
            let (list, name, file) = match best {
                Some(b) => (&mut named, b.name, b.file),
                None => (&mut unnamed, None, None),
            };
            // The symbols' size; the unwind table's when no symbol has one.
            let max_size = |named_only: bool| {
                group
                    .iter()
                    .filter(|c| !named_only || c.name.is_some())
                    .map(|c| c.size)
                    .max()
                    .unwrap_or(0)
            };
            let size = match max_size(true) {
                0 => max_size(false),
                s => s,
            };
            list.push((
                Function {
                    start: addr,
                    end: addr,
                    name,
                    file,
                },
                size,
                limit,
            ));
        }
        let finish = |list: Vec<(Function, u64, u64)>| -> Vec<Function> {
            list.into_iter()
                .filter_map(|(mut f, size, limit)| {
                    f.end = if size > 0 {
                        f.start.saturating_add(size)
                    } else {
                        // Up to the next function start of either kind.
                        let i = starts.partition_point(|s| *s <= f.start);
                        starts.get(i).copied().unwrap_or(u64::MAX).min(limit)
                    };
                    (f.end > f.start).then_some(f)
                })
                .collect()
        };
        let named = finish(named);
        let unnamed = finish(unnamed);
        starts.clear();
        let mut functions = named;
        let first_unnamed = functions.len();
        functions.extend(unnamed);
        let named_pieces = flatten(&functions[..first_unnamed], 0);
        let unnamed_pieces = flatten(&functions[first_unnamed..], first_unnamed);
        let mut all = named_pieces.clone();
        all.extend(subtract(&unnamed_pieces, &named_pieces));
        all.sort_unstable_by_key(|p| p.0);
        SymbolTable {
            functions,
            starts: all.iter().map(|p| p.0).collect(),
            pieces: all
                .iter()
                .map(|p| Piece {
                    end: p.1,
                    func: p.2,
                })
                .collect(),
        }
    }

    /// The function containing `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&Function> {
        let i = self.starts.partition_point(|s| *s <= addr).checked_sub(1)?;
        let piece = self.pieces[i];
        (addr < piece.end).then(|| &self.functions[piece.func as usize])
    }

    /// Every function, named ones first.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }
}

/// Disjoint `(start, end, index)` pieces of `funcs` (sorted by start, one per start):
/// every address maps to the containing function that starts last. Indices are offset
/// by `base`.
fn flatten(funcs: &[Function], base: usize) -> Vec<(u64, u64, u32)> {
    let mut out = Vec::new();
    // Open functions, innermost last: (end, index).
    let mut open: Vec<(u64, u32)> = Vec::new();
    let mut pos = 0u64;
    let next_starts = funcs.iter().map(|f| Some(f.start)).chain([None]);
    for (i, next) in next_starts.enumerate() {
        let until = next.unwrap_or(u64::MAX);
        while let Some(&(end, idx)) = open.last() {
            if end <= pos {
                open.pop();
                continue;
            }
            if pos >= until {
                break;
            }
            let e = end.min(until);
            out.push((pos, e, idx));
            pos = e;
        }
        if next.is_some() {
            pos = until;
            open.push((funcs[i].end, (base + i) as u32));
        }
    }
    out
}

/// The parts of `pieces` that no piece of `cover` (disjoint, sorted) overlaps.
fn subtract(pieces: &[(u64, u64, u32)], cover: &[(u64, u64, u32)]) -> Vec<(u64, u64, u32)> {
    let mut out = Vec::new();
    for &(mut start, end, idx) in pieces {
        let mut j = cover.partition_point(|c| c.1 <= start);
        while start < end {
            match cover.get(j) {
                Some(&(cs, ce, _)) if cs < end => {
                    if cs > start {
                        out.push((start, cs, idx));
                    }
                    start = start.max(ce);
                    j += 1;
                }
                _ => {
                    out.push((start, end, idx));
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(addr: u64, size: u64, name: &'static str, binding: Binding) -> Candidate {
        Candidate {
            addr,
            size,
            limit: 0x10000,
            name: Some(name),
            binding,
            file: None,
        }
    }

    fn fde(addr: u64, size: u64) -> Candidate {
        Candidate {
            addr,
            size,
            limit: addr + size,
            name: None,
            binding: Binding::Local,
            file: None,
        }
    }

    fn name_at(t: &SymbolTable, addr: u64) -> Option<(u64, Option<&'static str>)> {
        t.lookup(addr).map(|f| (f.start, f.name))
    }

    /// The bug of issue 23: a 26-byte helper followed by unsymbolized code.
    #[test]
    fn an_address_past_a_sized_symbol_is_not_charged_to_it() {
        let t = SymbolTable::new(vec![
            sym(0x1000, 26, "is_supported", Binding::Global),
            sym(0x3000, 0x10, "next", Binding::Global),
        ]);
        assert_eq!(name_at(&t, 0x1019), Some((0x1000, Some("is_supported"))));
        assert_eq!(name_at(&t, 0x101a), None);
        assert_eq!(name_at(&t, 0x2000), None);
        assert_eq!(name_at(&t, 0x3000), Some((0x3000, Some("next"))));
    }

    #[test]
    fn zero_size_symbols_reach_the_next_function_start_or_their_section_end() {
        let mut asm = sym(0x100, 0, "asm_fn", Binding::Global);
        asm.limit = 0x400;
        let t = SymbolTable::new(vec![asm, fde(0x200, 0x20), fde(0x100, 0x80)]);
        // The FDE at the symbol's own address gives it a size.
        assert_eq!(t.lookup(0x17f).map(|f| f.end), Some(0x180));
        assert_eq!(name_at(&t, 0x180), None);
        let t = SymbolTable::new(vec![asm, fde(0x200, 0x20)]);
        assert_eq!(t.lookup(0x1ff).map(|f| f.end), Some(0x200));
        assert_eq!(name_at(&t, 0x210), Some((0x200, None)));
        let t = SymbolTable::new(vec![asm]);
        assert_eq!(t.lookup(0x3ff).map(|f| f.end), Some(0x400));
        assert_eq!(name_at(&t, 0x400), None);
    }

    #[test]
    fn aliases_pick_the_public_global_name() {
        let t = SymbolTable::new(vec![
            sym(0x10, 8, "__GI_chroot", Binding::Local),
            sym(0x10, 8, "chroot", Binding::Weak),
            sym(0x20, 8, "__libc_malloc", Binding::Global),
            sym(0x20, 8, "malloc", Binding::Global),
            sym(0x30, 8, "_IO_puts", Binding::Global),
            sym(0x30, 8, "puts", Binding::Weak),
            sym(0x40, 8, "local_x", Binding::Local),
            sym(0x40, 8, "weak_x", Binding::Weak),
        ]);
        assert_eq!(name_at(&t, 0x10).unwrap().1, Some("chroot"));
        assert_eq!(name_at(&t, 0x20).unwrap().1, Some("malloc"));
        assert_eq!(name_at(&t, 0x30).unwrap().1, Some("_IO_puts"));
        assert_eq!(name_at(&t, 0x40).unwrap().1, Some("weak_x"));
    }

    #[test]
    fn llvm_picks_the_largest_alias_then_the_last_in_table_order() {
        let cands = vec![
            sym(0x20, 8, "malloc", Binding::Global),
            sym(0x20, 8, "__libc_malloc", Binding::Global),
            sym(0x10, 8, "chroot", Binding::Weak),
            sym(0x10, 8, "__GI_chroot", Binding::Local),
            sym(0x30, 0, "puts_entry", Binding::Global),
            sym(0x30, 8, "_IO_puts", Binding::Global),
            sym(0x30, 4, "puts", Binding::Weak),
        ];
        let t = SymbolTable::with_pick(cands.clone(), SymbolChoice::Llvm);
        assert_eq!(name_at(&t, 0x20).unwrap().1, Some("__libc_malloc"));
        assert_eq!(name_at(&t, 0x10).unwrap().1, Some("__GI_chroot"));
        assert_eq!(name_at(&t, 0x34).unwrap().1, Some("_IO_puts"));
        // The extent is the largest either way; perf's pick names the public symbol.
        assert_eq!(t.lookup(0x37).map(|f| f.end), Some(0x38));
        let t = SymbolTable::with_pick(cands, SymbolChoice::Perf);
        assert_eq!(name_at(&t, 0x20).unwrap().1, Some("malloc"));
        assert_eq!(name_at(&t, 0x10).unwrap().1, Some("chroot"));
    }

    #[test]
    fn named_functions_win_over_unwind_extents_and_inner_over_outer() {
        let t = SymbolTable::new(vec![
            sym(0x100, 0x100, "outer", Binding::Global),
            sym(0x140, 0x20, "inner", Binding::Local),
            fde(0x180, 0x100),
        ]);
        assert_eq!(name_at(&t, 0x13f).unwrap().1, Some("outer"));
        assert_eq!(name_at(&t, 0x140).unwrap().1, Some("inner"));
        assert_eq!(name_at(&t, 0x160).unwrap().1, Some("outer"));
        assert_eq!(name_at(&t, 0x1ff).unwrap().1, Some("outer"));
        // The FDE only fills what no symbol covers, and keeps its own start.
        assert_eq!(name_at(&t, 0x200), Some((0x180, None)));
        assert_eq!(name_at(&t, 0x27f), Some((0x180, None)));
        assert_eq!(name_at(&t, 0x280), None);
    }

    /// The reference: every rule of the module docs applied by brute force.
    fn reference(cands: &[Candidate], addr: u64) -> Option<(u64, Option<&'static str>)> {
        let valid: Vec<&Candidate> = cands
            .iter()
            .filter(|c| c.addr < c.limit.max(c.addr + c.size))
            .collect();
        let mut starts: Vec<u64> = valid.iter().map(|c| c.addr).collect();
        starts.sort_unstable();
        starts.dedup();
        // (start, end, name) of the function at each start of one kind.
        let function = |start: u64, named: bool| -> Option<(u64, Option<&'static str>)> {
            let at: Vec<&&Candidate> = valid.iter().filter(|c| c.addr == start).collect();
            let has_name = at.iter().any(|c| c.name.is_some());
            if has_name != named {
                return None;
            }
            let best = at
                .iter()
                .filter(|c| c.name.is_some())
                .min_by_key(|c| name_rank(c));
            let max_size = |named_only: bool| {
                at.iter()
                    .filter(|c| !named_only || c.name.is_some())
                    .map(|c| c.size)
                    .max()
                    .unwrap_or(0)
            };
            let size = match max_size(true) {
                0 => max_size(false),
                s => s,
            };
            let end = if size > 0 {
                start + size
            } else {
                let limit = at.iter().map(|c| c.limit).max().unwrap();
                let next = starts.iter().copied().find(|s| *s > start);
                next.unwrap_or(u64::MAX).min(limit)
            };
            Some((end, best.and_then(|b| b.name)))
        };
        for named in [true, false] {
            let hit = starts.iter().rev().filter(|s| **s <= addr).find_map(|&s| {
                match function(s, named) {
                    Some((end, name)) if addr < end => Some((s, name)),
                    _ => None,
                }
            });
            if hit.is_some() {
                return hit;
            }
        }
        None
    }

    /// Random symbol tables with sizes, gaps, zero sizes, nesting, aliases and unwind
    /// extents: the lookup agrees with the brute-force reference at every address.
    #[test]
    fn lookup_agrees_with_a_brute_force_reference() {
        const NAMES: [&str; 8] = [
            "f",
            "__GI_f",
            "__libc_f",
            "_f",
            "__f",
            "g",
            "long_name",
            "h",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..3000 {
            let n = 1 + rand(12);
            let mut cands = Vec::new();
            for _ in 0..n {
                let addr = rand(64);
                let size = if rand(3) == 0 { 0 } else { rand(24) };
                let binding = [Binding::Global, Binding::Weak, Binding::Local][rand(3) as usize];
                let c = if rand(4) == 0 {
                    fde(addr, size)
                } else {
                    Candidate {
                        addr,
                        size,
                        limit: addr + rand(40),
                        name: Some(NAMES[rand(NAMES.len() as u64) as usize]),
                        binding,
                        file: None,
                    }
                };
                cands.push(c);
                // Aliases at the same address.
                if rand(3) == 0 {
                    let mut alias = c;
                    alias.name = Some(NAMES[rand(NAMES.len() as u64) as usize]);
                    alias.binding =
                        [Binding::Global, Binding::Weak, Binding::Local][rand(3) as usize];
                    if rand(2) == 0 {
                        alias.size = 0;
                    }
                    cands.push(alias);
                }
            }
            let table = SymbolTable::new(cands.clone());
            for addr in 0..140 {
                assert_eq!(
                    name_at(&table, addr),
                    reference(&cands, addr),
                    "at {addr:#x} in {cands:#?}"
                );
            }
        }
    }
}
