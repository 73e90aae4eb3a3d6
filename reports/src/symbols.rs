//! Stage two: naming locations. Every unique [`Loc`] of a [`Profile`] is symbolized once,
//! batched per module, modules in parallel — never per sample.
//!
//! Two depths: [`SymbolTable::build`] looks everything up fully (function, file, line);
//! [`SymbolTable::build_functions`] names functions only, from symbol tables (no DWARF
//! is loaded, which for a large library costs more than the rest of a report), and
//! [`SymbolTable::add_lines`] then adds file and line to the few locations a report
//! shows. Function names are then the symbol table's, as perf shows them.
//!
//! The lookup itself is behind [`SymbolSource`], so reports can be produced (and tested)
//! without debug info: [`NoSymbols`] names everything `module+0xoffset`, and
//! [`SymbolizerSource`] uses `lbrprof-symbolizer` (ELF symbols, DWARF lines, inlining,
//! `/proc/kallsyms`).

use std::collections::HashMap;
use std::path::PathBuf;

use rayon::prelude::*;

use crate::aggregate::Profile;
use crate::loc::{Loc, Module, ModuleId, ModuleKind, ModuleTable};

/// What a location is called. Empty `function` = unknown (rendered `module+0xoff`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sym {
    /// The containing (outermost) function, demangled.
    pub function: Option<String>,
    /// Offset of the location from the start of `function`.
    pub function_offset: Option<u64>,
    /// Size of `function`'s extent, when known (`function_offset` is always below it).
    pub function_size: Option<u64>,
    /// The function is known only by its extent: `function` is `<module>+0x<start>`.
    pub unnamed: bool,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The inline chain, innermost first, when the location is in code inlined into
    /// `function` (more than one frame; the last is `function` itself); empty otherwise
    /// and when only functions were looked up.
    pub inline: Vec<InlineFrame>,
}

/// One function of an inline chain, and the line in it: the location itself for the
/// innermost frame, the call site of the next inner frame for the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InlineFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Something that names code locations.
pub trait SymbolSource: Sync {
    /// One result per offset, same order. See [`crate::loc::ModuleKind`] for what the
    /// offsets mean (file offsets, or kernel addresses for the kernel module).
    fn symbolize(&self, module: &Module, offsets: &[u64]) -> Vec<Sym>;
    /// Like [`SymbolSource::symbolize`], but only the function and the offset in it are
    /// needed (no file or line), which may be much cheaper (no DWARF).
    fn symbolize_functions(&self, module: &Module, offsets: &[u64]) -> Vec<Sym> {
        self.symbolize(module, offsets)
    }
    /// Warnings collected so far (e.g. a module file that is missing), drained.
    fn take_warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Loads what every lookup needs (e.g. the kernel symbol table) ahead of time, so it
    /// can overlap with reading the recording.
    fn prewarm(&self) {}
}

/// Names nothing: every location is shown as `module+0xoffset`.
pub struct NoSymbols;

impl SymbolSource for NoSymbols {
    fn symbolize(&self, _module: &Module, offsets: &[u64]) -> Vec<Sym> {
        vec![Sym::default(); offsets.len()]
    }
}

/// Uses `lbrprof-symbolizer` for files and the kernel.
pub struct SymbolizerSource {
    pub symbolizer: lbrprof_symbolizer::Symbolizer,
    /// Whether kernel addresses may be looked up (off when the recording was made on a
    /// different kernel and no matching kallsyms file was given).
    pub kernel: bool,
    /// Whether [`SymbolSource::prewarm`] loads the kernel symbol table.
    pub prewarm_kernel: bool,
}

impl SymbolizerSource {
    pub fn new(opts: lbrprof_symbolizer::SymbolizerOptions) -> Self {
        SymbolizerSource {
            symbolizer: lbrprof_symbolizer::Symbolizer::new(opts),
            kernel: true,
            prewarm_kernel: true,
        }
    }
}

fn to_sym(s: lbrprof_symbolizer::Symbolized) -> Sym {
    let inner = s.frames.first();
    let outer = s.frames.last();
    Sym {
        function: outer.and_then(|f| f.function.clone()),
        function_offset: outer.and_then(|f| f.function_offset),
        function_size: outer.and_then(|f| f.function_size),
        unnamed: outer.is_some_and(|f| f.unnamed),
        file: inner.and_then(|f| f.file.clone()),
        line: inner.and_then(|f| f.line),
        inline: if s.frames.len() > 1 {
            s.frames
                .iter()
                .map(|f| InlineFrame {
                    function: f.function.clone(),
                    file: f.file.clone(),
                    line: f.line,
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// What the symbolizer is asked for a file module's `offsets`: its key and the offsets.
fn file_request(
    module: &Module,
    offsets: &[u64],
) -> (
    lbrprof_symbolizer::ModuleKey,
    Vec<lbrprof_symbolizer::FileOffset>,
) {
    let key = lbrprof_symbolizer::ModuleKey {
        path: PathBuf::from(&module.path),
        build_id: module.build_id.clone(),
    };
    let offs = offsets
        .iter()
        .map(|&o| lbrprof_symbolizer::FileOffset(o))
        .collect();
    (key, offs)
}

impl SymbolSource for SymbolizerSource {
    fn symbolize(&self, module: &Module, offsets: &[u64]) -> Vec<Sym> {
        let out = match module.kind {
            ModuleKind::Kernel if self.kernel => self.symbolizer.symbolize_kernel(offsets),
            ModuleKind::Kernel => return vec![Sym::default(); offsets.len()],
            ModuleKind::File | ModuleKind::Guest => {
                let (key, offs) = file_request(module, offsets);
                self.symbolizer.symbolize(&key, &offs)
            }
            ModuleKind::PerfMap => self
                .symbolizer
                .symbolize_perf_map(std::path::Path::new(&module.path), offsets),
            ModuleKind::PerfMapIfAny => self
                .symbolizer
                .symbolize_perf_map_if_any(std::path::Path::new(&module.path), offsets),
            ModuleKind::Unknown => return vec![Sym::default(); offsets.len()],
        };
        let mut v: Vec<Sym> = out.into_iter().map(to_sym).collect();
        v.resize(offsets.len(), Sym::default());
        v
    }
    fn symbolize_functions(&self, module: &Module, offsets: &[u64]) -> Vec<Sym> {
        let out = match module.kind {
            ModuleKind::File | ModuleKind::Guest => {
                let (key, offs) = file_request(module, offsets);
                self.symbolizer.symbolize_functions(&key, &offs)
            }
            // Kernel symbols have no lines anyway.
            ModuleKind::Kernel
            | ModuleKind::Unknown
            | ModuleKind::PerfMap
            | ModuleKind::PerfMapIfAny => {
                return self.symbolize(module, offsets);
            }
        };
        let mut v: Vec<Sym> = out.into_iter().map(to_sym).collect();
        v.resize(offsets.len(), Sym::default());
        v
    }
    fn take_warnings(&self) -> Vec<String> {
        self.symbolizer.take_warnings()
    }
    fn prewarm(&self) {
        if self.kernel && self.prewarm_kernel {
            self.symbolizer.symbolize_kernel(&[]);
        }
    }
}

/// The names of every location of a profile.
#[derive(Debug, Default)]
pub struct SymbolTable {
    syms: HashMap<Loc, Sym, crate::aggregate::FastHash>,
}

impl SymbolTable {
    /// Symbolizes every location that appears in `profile` (stacks, edges, ranges, IPs).
    pub fn build(profile: &Profile, source: &dyn SymbolSource) -> Self {
        Self::build_with(profile, source, false)
    }

    /// Like [`SymbolTable::build`], but names only functions (from symbol tables, no
    /// DWARF): enough for tables of functions, folded stacks and flame graphs. Add the
    /// lines of the locations that are shown with [`SymbolTable::add_lines`].
    pub fn build_functions(profile: &Profile, source: &dyn SymbolSource) -> Self {
        Self::build_with(profile, source, true)
    }

    /// Adds file and line to `locs` (the functions stay as they are, or are filled in
    /// where they were unknown).
    pub fn add_lines(
        &mut self,
        modules: &ModuleTable,
        locs: impl IntoIterator<Item = Loc>,
        source: &dyn SymbolSource,
    ) {
        let results = per_module_parallel(modules, locs, |m, offs| {
            source.symbolize(modules.get(m), offs)
        });
        for (module, offs, ss) in results {
            for (offset, full) in offs.into_iter().zip(ss) {
                let s = self.syms.entry(Loc { module, offset }).or_default();
                if s.function.is_none() {
                    s.function = full.function;
                    s.function_offset = full.function_offset;
                    s.function_size = full.function_size;
                    s.unnamed = full.unnamed;
                }
                s.file = full.file;
                s.line = full.line;
            }
        }
    }

    fn build_with(profile: &Profile, source: &dyn SymbolSource, functions_only: bool) -> Self {
        // Unique locations first (stacks repeat the same frames over and over).
        let mut unique: std::collections::HashSet<Loc, crate::aggregate::FastHash> =
            std::collections::HashSet::with_hasher(crate::aggregate::FastHash);
        let stacks = crate::aggregate::in_memory_order(&profile.stacks);
        unique.extend(stacks.into_iter().flat_map(|(s, _)| s).copied());
        unique.extend(profile.lbr_stacks.keys().flatten().copied());
        for (a, b) in profile.edges.keys().chain(profile.ranges.keys()) {
            unique.insert(*a);
            unique.insert(*b);
        }
        unique.extend(profile.ips.keys().copied());
        let modules = &profile.spaces.modules;
        let results = per_module_parallel(modules, unique, |m, offs| {
            if functions_only {
                source.symbolize_functions(modules.get(m), offs)
            } else {
                source.symbolize(modules.get(m), offs)
            }
        });
        let mut syms = HashMap::with_hasher(crate::aggregate::FastHash);
        for (module, offs, ss) in results {
            for (offset, s) in offs.into_iter().zip(ss) {
                syms.insert(Loc { module, offset }, s);
            }
        }
        // Root frames named after commands ([`crate::AggregateOptions::comm_root`]).
        if let Some(module) = profile.comm_root_module {
            for (offset, name) in profile.root_names.iter().enumerate() {
                let l = Loc {
                    module,
                    offset: offset as u64,
                };
                let sym = Sym {
                    function: Some(name.clone()),
                    ..Sym::default()
                };
                syms.insert(l, sym);
            }
        }
        SymbolTable { syms }
    }

    pub fn get(&self, l: &Loc) -> Option<&Sym> {
        self.syms.get(l)
    }

    /// Names `l` (tests, and outputs that name locations themselves).
    pub fn insert(&mut self, l: Loc, sym: Sym) {
        self.syms.insert(l, sym);
    }

    /// The function name of `l`, or `module+0xoff` / a raw address when unknown.
    pub fn function_name(&self, modules: &ModuleTable, l: &Loc) -> String {
        match self.get(l).and_then(|s| s.function.as_deref()) {
            Some(f) => f.to_owned(),
            None => unknown_name(modules, l),
        }
    }
}

/// How an unsymbolized location is shown.
pub fn unknown_name(modules: &ModuleTable, l: &Loc) -> String {
    let m = modules.get(l.module);
    match l.module {
        ModuleTable::GUEST_ROOT => format!("[guest vcpu{}]", l.offset),
        _ => match m.kind {
            ModuleKind::Kernel
            | ModuleKind::Unknown
            | ModuleKind::PerfMap
            | ModuleKind::PerfMapIfAny => {
                format!("{:#x}", l.offset)
            }
            ModuleKind::File | ModuleKind::Guest => {
                format!("{}+{:#x}", m.short_name(), l.offset)
            }
        },
    }
}

/// Groups the known-module locations of `locs` by module (offsets sorted, each once)
/// and runs `lookup` on every module's offsets in parallel: (module, offsets, one `Sym`
/// per offset), in module order.
fn per_module_parallel(
    modules: &ModuleTable,
    locs: impl IntoIterator<Item = Loc>,
    lookup: impl Fn(ModuleId, &[u64]) -> Vec<Sym> + Sync,
) -> Vec<(ModuleId, Vec<u64>, Vec<Sym>)> {
    let mut per_module: HashMap<ModuleId, Vec<u64>> = HashMap::new();
    for l in locs {
        if modules.get(l.module).kind != ModuleKind::Unknown {
            per_module.entry(l.module).or_default().push(l.offset);
        }
    }
    let mut work: Vec<(ModuleId, Vec<u64>)> = per_module
        .into_iter()
        .map(|(m, mut offs)| {
            offs.sort_unstable();
            offs.dedup();
            (m, offs)
        })
        .collect();
    work.sort_by_key(|(m, _)| *m);
    work.into_par_iter()
        .map(|(m, offs)| {
            let syms = lookup(m, &offs);
            (m, offs, syms)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use crate::report;
    use lbrprof_data::model::{
        AddressSpace, Branch, BranchFlags, CpuMode, Event, Frame, HostSample, Mapping,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Functions from "symbols" (`sym_N`), full lookups from "DWARF" (`dwarf_N`, with a
    /// file and a line), counting the full lookups.
    #[derive(Default)]
    struct Layered {
        full: AtomicUsize,
    }

    impl SymbolSource for Layered {
        fn symbolize(&self, m: &Module, offs: &[u64]) -> Vec<Sym> {
            self.full.fetch_add(offs.len(), Ordering::SeqCst);
            offs.iter()
                .map(|&o| Sym {
                    function: Some(format!("dwarf_{}", o / 0x100)),
                    function_offset: Some(o % 0x100),
                    file: Some(format!("{}.c", m.path)),
                    line: Some(o as u32),
                    ..Sym::default()
                })
                .collect()
        }
        fn symbolize_functions(&self, _m: &Module, offs: &[u64]) -> Vec<Sym> {
            offs.iter()
                .map(|&o| Sym {
                    function: Some(format!("sym_{}", o / 0x100)),
                    function_offset: Some(o % 0x100),
                    ..Sym::default()
                })
                .collect()
        }
    }

    fn profile() -> crate::aggregate::Profile {
        let mut a = Aggregator::new(AggregateOptions::default());
        a.add(&Event::Mapping(Mapping {
            time_ns: 0,
            space: AddressSpace::HostUser,
            pid: 1,
            start: 0x10000,
            len: 0x10000,
            pgoff: 0,
            path: "/bin/w".into(),
            build_id: None,
        }));
        let br = |from, to| Branch {
            from,
            to,
            flags: BranchFlags::default(),
        };
        for (n, edge) in [(5, (0x10110, 0x10200)), (1, (0x10310, 0x10400))] {
            for _ in 0..n {
                a.add(&Event::Sample(HostSample {
                    pid: 1,
                    period: 1,
                    ip: 0x10010,
                    mode: CpuMode::User,
                    callchain: vec![Frame {
                        addr: 0x10010,
                        mode: CpuMode::User,
                    }],
                    branches: vec![br(edge.0, edge.1)],
                    ..HostSample::default()
                }));
            }
        }
        a.finish()
    }

    /// Reports name functions from symbols and look lines up only for the places the
    /// truncated tables show.
    #[test]
    fn lines_only_for_the_places_shown() {
        let p = profile();
        let source = Layered::default();
        let mut syms = SymbolTable::build_functions(&p, &source);
        assert_eq!(source.full.load(Ordering::SeqCst), 0);
        let mut rep = report::build_for_test(&p, &syms);
        rep.truncate(1, 0.0);
        assert_eq!(rep.functions[0].function, "sym_0");
        assert_eq!(rep.branches.len(), 1);
        assert_eq!(rep.branches[0].from.file, None);
        let locs = rep.shown_locs();
        assert_eq!(locs.len(), 2, "{locs:?}");
        syms.add_lines(&p.spaces.modules, locs, &source);
        assert_eq!(source.full.load(Ordering::SeqCst), 2);
        rep.refresh_places(&p, &syms);
        let from = &rep.branches[0].from;
        // The hot edge 0x110 -> 0x200: symbol names stay, lines come from the full lookup.
        assert_eq!(
            (from.offset, from.function.as_deref(), from.line),
            (0x110, Some("sym_1"), Some(0x110))
        );
        assert_eq!(from.file.as_deref(), Some("/bin/w.c"));
        assert_eq!(rep.branches[0].to.line, Some(0x200));
        // Untouched: the function table and unshown locations.
        let cold = Loc {
            module: rep_module(&p),
            offset: 0x310,
        };
        assert_eq!(syms.get(&cold).and_then(|s| s.line), None);
    }

    /// Two modules with one file name: each shown place gets its own module's lines.
    #[test]
    fn lines_follow_the_module_not_its_name() {
        let mut a = Aggregator::new(AggregateOptions::default());
        for (pid, path) in [(1, "/a/libx.so"), (2, "/b/libx.so")] {
            a.add(&Event::Mapping(Mapping {
                time_ns: 0,
                space: AddressSpace::HostUser,
                pid,
                start: 0x10000,
                len: 0x10000,
                pgoff: 0,
                path: path.into(),
                build_id: None,
            }));
            a.add(&Event::Sample(HostSample {
                pid,
                period: 1,
                ip: 0x10010,
                mode: CpuMode::User,
                branches: vec![Branch {
                    from: 0x10110,
                    to: 0x10200,
                    flags: BranchFlags::default(),
                }],
                ..HostSample::default()
            }));
        }
        let p = a.finish();
        let source = Layered::default();
        let mut syms = SymbolTable::build_functions(&p, &source);
        let mut rep = report::build_for_test(&p, &syms);
        syms.add_lines(&p.spaces.modules, rep.shown_locs(), &source);
        rep.refresh_places(&p, &syms);
        let mut files: Vec<_> = rep
            .branches
            .iter()
            .map(|b| b.from.file.clone().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["/a/libx.so.c", "/b/libx.so.c"]);
    }

    fn rep_module(p: &crate::aggregate::Profile) -> ModuleId {
        p.spaces
            .modules
            .iter()
            .find(|(_, m)| m.path == "/bin/w")
            .unwrap()
            .0
    }
}
