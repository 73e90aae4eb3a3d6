//! `lbrprof-symbolizer`: turns addresses from host processes, the host kernel and guest
//! images into frames (function, offset, file:line, inlined frames), from ELF and DWARF.
//!
//! In the data flow capture → data → symbolize → aggregate → render it is the symbolize
//! step, and it depends on no other lbrprof crate: callers hand it modules and addresses.
//!
//! # Address spaces
//! Three newtypes keep addresses apart: an [`Avma`] is what a process saw at run time; a
//! [`ProcessMaps`] (built from recorded MMAP2 records or a guest image's load address)
//! turns it into a module and a [`FileOffset`]; the module's `PT_LOAD` program headers turn
//! that into an [`Svma`], the address its symbol table and DWARF use. This handles PIE
//! executables, shared libraries and segments whose file offset differs from their address.
//!
//! # What it owns
//! * [`Symbolizer`]: a thread-safe cache of opened modules. Each module file is mmapped
//!   (never read into memory) and its DWARF is parsed lazily, unit by unit, once per
//!   symbolizer. [`Symbolizer::symbolize_many`] looks modules up in parallel.
//! * Separate debug info: by build-id (`/usr/lib/debug/.build-id/xx/rest.debug`,
//!   `--debug-dir`s and the debuginfod client cache), by `.gnu_debuglink`, dwz supplementary files (`.gnu_debugaltlink`),
//!   split DWARF (`.dwo` files and `.dwp` packages).
//! * Build-id checks: a module whose file no longer has the recorded build-id is reported
//!   (`build-id mismatch for /usr/bin/foo`) and gives unknown frames instead of wrong ones.
//! * Host kernel symbols from `/proc/kallsyms` or a saved copy; the `[vdso]` image (this
//!   process's copy, build-id checked); other pseudo-mappings (`[heap]`, `//anon`) are
//!   unknown without a warning.
//! * Modules rebuilt or deleted since recording: the recorded build is looked for by
//!   build-id in `--debug-dir`s, perf's `~/.debug` and debuginfod's cache.
//! * JIT code through perf's maps (`/tmp/perf-PID.map`, as `node --perf-basic-prof`,
//!   `python3 -X perf` or a JVM agent write them): [`Symbolizer::symbolize_perf_map`].
//! * Demangling of Rust (legacy and v0) and C++ names.
//!
//! # Function extents
//! A symbol covers `[start, start + size)` and nothing more: an address no function
//! contains is unknown, never charged to the symbol before it. Code without symbols still
//! has extents: `.eh_frame` FDEs (every x86-64 binary carries them, stripped or not) and
//! MiniDebugInfo (`.gnu_debugdata`, an xz-compressed symbol table) give them; such a
//! function is named `<module file name>+0x<start>` with its start as an SVMA (what
//! `objdump --start-address` takes), flagged [`SymFrame::unnamed`]. PLT entries are named
//! `name@plt`. Of several symbols at one address the public, global name is shown (over
//! weak and local ones and glibc's `__GI_`/`__libc_` aliases), in every output but
//! [`SymbolChoice::Llvm`]'s, which chooses as llvm-symbolizer does.
//!
//! # Compatibility with llvm-symbolizer and binutils
//! [`NameStyle::Llvm`] (the default) names the containing function as `llvm-symbolizer`
//! does: by the symbol table whenever a symbol covers the address, demangled in LLVM's
//! dialect (see `demangle.rs`), so line-tables-only DWARF, which has short names only,
//! still gives qualified names; inlined frames keep their DWARF names.
//! Which symbol table that is, and which of several aliases, is [`SymbolChoice`]: perf's
//! (the default, what reports show) reads a stripped file's separate debug file's full
//! table; LLVM's (what `lbrprof symbolize` uses with the llvm style) only the file's own
//! `.symtab` or `.dynsym`, so in a distribution's stripped `libc.so.6` an internal
//! function is `msort_with_tmp` (DWARF) there and `msort_with_tmp.part.0` in a report.
//! [`NameStyle::Gnu`] is meant to be diffable with `addr2line -f -i -C`: the same function
//! names where DWARF names them (completed from the symbol table), the same paths (including
//! its doubling of relative DWARF 5 comp dirs), the `STT_FILE` name as the file of
//! line-less local functions, line discriminators (through [`Symbolizer::visit_svma`]).
//! Known differences: where binutils 2.40 mis-resolves DWARF 5 lines from included files
//! we print the included file (as llvm-symbolizer does); alignment padding between
//! functions, which binutils charges to the previous symbol, is in no function here; of
//! aliases, binutils may print an internal one (`__GI_chroot`) where we print `chroot`.

//! # Performance
//! A batch is looked up in address order, each distinct address once, so units, functions
//! and line tables are walked in order; rendered names and paths are interned per module.
//! [`Symbolizer::visit_svma`] lends frames without copying strings, for bulk output; its
//! line discriminators cost a second unit lookup per address, skipped for a module whose
//! `.debug_line` sets none (rustc's and clang's, usually).
//! `bench/symbolize` compares with addr2line and llvm-symbolizer.
//!
//! # Failure model
//! Symbolization never fails as a whole: a missing, stripped, truncated or corrupt file
//! gives unknown frames (callers print `module+0xoff`) and one warning per module and
//! problem, collected by [`Symbolizer::take_warnings`]. No input makes it panic.
//!
//! Non-goals: no CLI flags (the binary turns them into [`SymbolizerOptions`]), no output
//! formatting, no downloading of debug info.

mod arena;
mod debuginfo;
mod demangle;
mod error;
mod kallsyms;
mod locals;
mod maps;
mod module;
mod perfmap;
mod symtab;
mod types;
mod vdso;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

pub use debuginfo::saved_kallsyms;
pub use vdso::add_image as add_pseudo_image;
pub use vdso::pseudo_module_image;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API): the parsers that read
/// files lbrprof does not control, reachable without a file on disk.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses kallsyms text and looks up each of `addrs` in the table.
    pub fn kallsyms(text: &str, addrs: &[u64]) -> usize {
        let table = crate::kallsyms::Kallsyms::parse(text);
        addrs
            .iter()
            .filter(|&&a| !table.lookup(a).frames.is_empty())
            .count()
    }

    /// Parses a perf JIT map (`/tmp/perf-PID.map`) and looks up each of `addrs`; checks
    /// that every hit contains its address.
    pub fn perf_map(text: &str, addrs: &[u64]) -> usize {
        let map = crate::perfmap::PerfMap::parse(text);
        addrs
            .iter()
            .filter(|&&a| {
                map.lookup(a).is_some_and(|h| {
                    assert!(
                        h.start <= a && a - h.start < h.size,
                        "a hit contains its address"
                    );
                    true
                })
            })
            .count()
    }
}
pub use error::{KallsymsError, ModuleError};
pub use locals::{LocalFunction, local_functions};
pub use maps::ProcessMaps;
pub use module::{FrameRef, Module, Opened};
pub use types::{
    Avma, FileOffset, ModuleKey, NameStyle, Svma, SymFrame, SymbolChoice, Symbolized,
    SymbolizerOptions,
};

use kallsyms::Kallsyms;
use perfmap::PerfMap;

/// The default kernel symbol table.
pub const PROC_KALLSYMS: &str = "/proc/kallsyms";

/// `{error}: {cause}: {cause}...` on one line.
pub(crate) fn warning_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A module slot in the cache: opened at most once, by whichever thread comes first.
type Slot = Arc<OnceLock<Option<Arc<Mutex<Module>>>>>;

/// Thread-safe (Sync) symbolizer; parses each module once and caches it; files are mmapped.
pub struct Symbolizer {
    opts: SymbolizerOptions,
    modules: Mutex<HashMap<ModuleKey, Slot>>,
    kallsyms: OnceLock<Option<Kallsyms>>,
    /// perf JIT maps by recorded path, read once (`None`: not found or unreadable).
    /// Perf maps by path: the map (None: missing or unreadable), and whether its absence
    /// was warned about.
    perf_maps: Mutex<HashMap<PathBuf, PerfMapEntry>>,
    warnings: Mutex<Vec<String>>,
    warned: Mutex<HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked: recover it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Symbolizer {
    pub fn new(opts: SymbolizerOptions) -> Self {
        Symbolizer {
            opts,
            modules: Mutex::new(HashMap::new()),
            kallsyms: OnceLock::new(),
            perf_maps: Mutex::new(HashMap::new()),
            warnings: Mutex::new(Vec::new()),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// The options this symbolizer was made with.
    pub fn options(&self) -> &SymbolizerOptions {
        &self.opts
    }

    /// One result per address (file offsets in `module`), same order. Missing or corrupt
    /// files give empty results (and one warning per module), never an error or a panic.
    pub fn symbolize(&self, module: &ModuleKey, addrs: &[FileOffset]) -> Vec<Symbolized> {
        self.with_module(module, addrs.len(), |m| {
            in_address_order(addrs, |a| m.symbolize_offset(*a))
        })
    }

    /// Like [`Symbolizer::symbolize`], but the function only, from the symbol table: one
    /// frame per address with the symbol's name and offset, no file or line (the DWARF is
    /// only loaded for addresses no symbol covers). For tables of functions, which need
    /// nothing more and would otherwise pay for decompressing and indexing DWARF.
    pub fn symbolize_functions(&self, module: &ModuleKey, addrs: &[FileOffset]) -> Vec<Symbolized> {
        self.with_module(module, addrs.len(), |m| {
            in_address_order(addrs, |a| m.symbolize_function_offset(*a))
        })
    }

    /// Like [`Symbolizer::symbolize`], for SVMAs (the addresses binutils `addr2line` takes).
    pub fn symbolize_svma(&self, module: &ModuleKey, addrs: &[Svma]) -> Vec<Symbolized> {
        self.with_module(module, addrs.len(), |m| {
            in_address_order(addrs, |a| m.symbolize(*a))
        })
    }

    /// Calls `visit` with the frames of each SVMA of `module`, in the order of `addrs`,
    /// borrowing the strings instead of copying them: for bulk output such as
    /// `lbrprof symbolize`. Unknown addresses (and all, for a module that cannot be used)
    /// are visited with no frames. Stops at the first error `visit` returns. The module is
    /// locked meanwhile: `visit` must not call back into this symbolizer for it.
    pub fn visit_svma<E>(
        &self,
        module: &ModuleKey,
        addrs: &[Svma],
        mut visit: impl FnMut(&[FrameRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        match self.module(module) {
            Some(m) => lock(&m).visit(addrs, |_, a| Some(a), visit),
            None => addrs.iter().try_for_each(|_| visit(&[])),
        }
    }

    /// Like [`Symbolizer::visit_svma`], for file offsets.
    pub fn visit_offsets<E>(
        &self,
        module: &ModuleKey,
        addrs: &[FileOffset],
        mut visit: impl FnMut(&[FrameRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        match self.module(module) {
            Some(m) => lock(&m).visit(addrs, |m, a| m.svma_of(a), visit),
            None => addrs.iter().try_for_each(|_| visit(&[])),
        }
    }

    /// Host kernel addresses through /proc/kallsyms (or `opts.kallsyms`).
    pub fn symbolize_kernel(&self, addrs: &[u64]) -> Vec<Symbolized> {
        let table = self.kallsyms.get_or_init(|| {
            let path = self
                .opts
                .kallsyms
                .clone()
                .unwrap_or_else(|| PathBuf::from(PROC_KALLSYMS));
            match Kallsyms::load(&path) {
                Ok(k) => Some(k),
                Err(e) => {
                    self.warn(warning_text(&e));
                    None
                }
            }
        });
        match table {
            Some(k) => addrs.iter().map(|a| k.lookup(*a)).collect(),
            None => vec![Symbolized::unknown(); addrs.len()],
        }
    }

    /// JIT code through perf's map of its process (`/tmp/perf-PID.map`, named by `map`):
    /// run-time addresses in, the map's names out. The map is looked for by its file name
    /// in the debug directories first (a copy kept beside the recording), then at `map`.
    /// A missing map gives unknown frames and one warning.
    pub fn symbolize_perf_map(&self, map: &Path, addrs: &[u64]) -> Vec<Symbolized> {
        self.perf_map_lookup(map, addrs, true)
    }

    /// [`Self::symbolize_perf_map`] for addresses that may be JIT code or may be junk (a
    /// guest's memory no mapping covers): a missing map gives unknown frames and no
    /// warning.
    pub fn symbolize_perf_map_if_any(&self, map: &Path, addrs: &[u64]) -> Vec<Symbolized> {
        self.perf_map_lookup(map, addrs, false)
    }

    fn perf_map_lookup(&self, map: &Path, addrs: &[u64], warn_missing: bool) -> Vec<Symbolized> {
        let (table, warn) = {
            let mut maps = lock(&self.perf_maps);
            let entry =
                maps.entry(map.to_path_buf())
                    .or_insert_with(|| match self.load_perf_map(map) {
                        // Found: its problems (if any) are said; nothing more to say.
                        Some(table) => (table, true),
                        None => (None, false),
                    });
            // A missing map is said once, when code that is surely JIT code needs it.
            let warn = entry.0.is_none() && warn_missing && !entry.1;
            entry.1 |= warn;
            (entry.0.clone(), warn)
        };
        if warn {
            self.warn(format!(
                "no {} (nor in the debug directories): its process's JIT code is unnamed; \
                 the JIT writes it when asked (node --perf-basic-prof, python3 -X perf, \
                 a JVM perf-map agent)",
                map.display()
            ));
        }
        let Some(table) = table else {
            return vec![Symbolized::unknown(); addrs.len()];
        };
        addrs
            .iter()
            .map(|&a| match table.lookup(a) {
                Some(hit) => Symbolized {
                    frames: vec![SymFrame {
                        function: Some(hit.name.to_owned()),
                        function_offset: Some(a - hit.start),
                        function_size: Some(hit.size),
                        ..SymFrame::default()
                    }],
                },
                None => Symbolized::unknown(),
            })
            .collect()
    }

    /// The map `map` names: None when there is no such file, Some(None) when it cannot
    /// be read (said as a warning).
    fn load_perf_map(&self, map: &Path) -> Option<Option<Arc<PerfMap>>> {
        let name = map.file_name()?;
        let candidates: Vec<PathBuf> = self
            .opts
            .debug_dirs
            .iter()
            .map(|d| d.join(name))
            .chain(std::iter::once(map.to_path_buf()))
            .collect();
        let found = candidates.iter().find(|p| p.is_file())?;
        match PerfMap::read(found) {
            Ok(m) => {
                if m.bad_lines > 0 {
                    self.warn(format!(
                        "{}: {} lines are not `START SIZE NAME` and were skipped",
                        found.display(),
                        m.bad_lines
                    ));
                }
                Some(Some(Arc::new(m)))
            }
            Err(e) => {
                self.warn(format!("cannot read {}: {e}", found.display()));
                Some(None)
            }
        }
    }

    /// Many modules at once, modules in parallel (rayon's pool: one worker per core; each
    /// module its own task, so one large module does not hold up a batch of small ones).
    /// Results are in `work`'s order.
    pub fn symbolize_many(
        &self,
        work: Vec<(ModuleKey, Vec<FileOffset>)>,
    ) -> Vec<(ModuleKey, Vec<Symbolized>)> {
        use rayon::prelude::*;
        work.into_par_iter()
            .with_max_len(1)
            .map(|(key, addrs)| {
                let out = self.symbolize(&key, &addrs);
                (key, out)
            })
            .collect()
    }

    /// Warnings collected so far (one per module and problem), drained.
    pub fn take_warnings(&self) -> Vec<String> {
        let slots: Vec<Slot> = lock(&self.modules).values().cloned().collect();
        for slot in slots {
            if let Some(Some(m)) = slot.get() {
                for w in lock(m).take_warnings() {
                    self.warn(w);
                }
            }
        }
        std::mem::take(&mut *lock(&self.warnings))
    }

    /// Where the debug info of `module` was looked for and what was found, then the symbol
    /// and frames of each SVMA in `addrs`, as lines of text (`lbrprof symbolize --explain`).
    /// A module that cannot be opened gives the reason.
    pub fn explain(&self, module: &ModuleKey, addrs: &[Svma]) -> Vec<String> {
        match self.module(module) {
            Some(m) => lock(&m).explain(addrs),
            None => {
                let mut out = vec![format!("file {}: cannot be used", module.path.display())];
                out.extend(self.take_warnings().into_iter().map(|w| format!("  {w}")));
                out
            }
        }
    }

    /// True when `module` could be opened and has DWARF (opens it if needed).
    pub fn has_debug_info(&self, module: &ModuleKey) -> bool {
        self.module(module)
            .is_some_and(|m| lock(&m).has_debug_info())
    }

    fn warn(&self, w: String) {
        if lock(&self.warned).insert(w.clone()) {
            lock(&self.warnings).push(w);
        }
    }

    fn module(&self, key: &ModuleKey) -> Option<Arc<Mutex<Module>>> {
        // Pseudo-modules are no files; one with an added image of its build-id is read.
        if vdso::is_pseudo(&key.path)
            && key
                .build_id
                .as_deref()
                .is_none_or(|id| vdso::added_image(id).is_none())
        {
            return None;
        }
        let slot = lock(&self.modules).entry(key.clone()).or_default().clone();
        slot.get_or_init(|| match Module::open(key, &self.opts) {
            Ok(opened) => {
                for w in opened.warnings {
                    self.warn(w);
                }
                Some(Arc::new(Mutex::new(opened.module)))
            }
            Err(e) => {
                self.warn(warning_text(&e));
                None
            }
        })
        .clone()
    }

    fn with_module(
        &self,
        key: &ModuleKey,
        n: usize,
        f: impl FnOnce(&Module) -> Vec<Symbolized>,
    ) -> Vec<Symbolized> {
        match self.module(key) {
            Some(m) => f(&lock(&m)),
            None => vec![Symbolized::unknown(); n],
        }
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new(SymbolizerOptions::default())
    }
}

/// `addrs.iter().map(f)`, but computed in address order, each distinct address once.
///
/// Sorted lookups walk the unit, function and line tables in order, so each piece is
/// parsed and brought into cache once instead of being revisited at random: on 100k random
/// addresses of a 40 MB binary this halves the time.
fn in_address_order<A: Copy + Ord>(
    addrs: &[A],
    mut f: impl FnMut(&A) -> Symbolized,
) -> Vec<Symbolized> {
    let mut order: Vec<usize> = (0..addrs.len()).collect();
    if !addrs.is_sorted() {
        order.sort_unstable_by_key(|i| addrs[*i]);
    }
    let mut out = vec![Symbolized::unknown(); addrs.len()];
    let mut previous: Option<usize> = None;
    for i in order {
        out[i] = match previous {
            Some(p) if addrs[p] == addrs[i] => out[p].clone(),
            _ => f(&addrs[i]),
        };
        previous = Some(i);
    }
    out
}

/// The module path a [`ModuleKey`] names, for `module+0xoff` output.
pub fn module_name(key: &ModuleKey) -> &Path {
    &key.path
}

/// A perf map as loaded (None: missing or unreadable), and whether a missing one was
/// said.
type PerfMapEntry = (Option<Arc<PerfMap>>, bool);

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_sync<T: Sync + Send>() {}

    #[test]
    fn symbolizer_is_sync() {
        assert_sync::<Symbolizer>();
    }

    #[test]
    fn missing_module_gives_unknown_and_one_warning() {
        let s = Symbolizer::default();
        let key = ModuleKey::new("/nonexistent/lbrprof-test-module");
        let out = s.symbolize(&key, &[FileOffset(1), FileOffset(2)]);
        assert_eq!(out, vec![Symbolized::unknown(); 2]);
        s.symbolize(&key, &[FileOffset(3)]);
        let w = s.take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("cannot open /nonexistent/lbrprof-test-module"),
            "{w:?}"
        );
        assert!(s.take_warnings().is_empty());
    }

    #[test]
    fn a_missing_perf_map_is_said_once_and_only_for_sure_jit_code() {
        let s = Symbolizer::default();
        let map = Path::new("/nonexistent/perf-77.map");
        let out = s.symbolize_perf_map_if_any(map, &[0x1000]);
        assert!(out[0].is_unknown());
        assert!(s.take_warnings().is_empty());
        s.symbolize_perf_map(map, &[0x1000]);
        s.symbolize_perf_map(map, &[0x2000]);
        let w = s.take_warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("no /nonexistent/perf-77.map"), "{w:?}");
        // A map that is there names its code either way.
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("perf-78.map");
        std::fs::write(&there, "1000 40 jitted_fn\n").unwrap();
        let out = s.symbolize_perf_map_if_any(&there, &[0x1010]);
        assert_eq!(out[0].frames[0].function.as_deref(), Some("jitted_fn"));
        assert!(s.take_warnings().is_empty());
    }

    #[test]
    fn vdso_is_symbolized_and_pseudo_mappings_are_silent() {
        let s = Symbolizer::default();
        let heap = s.symbolize(&ModuleKey::new("[heap]"), &[FileOffset(0x10)]);
        assert!(heap[0].is_unknown());
        assert!(s.take_warnings().is_empty());
        let Ok(image) = vdso::read_own() else {
            eprintln!("skipped: cannot read the vDSO");
            return;
        };
        let obj = object::File::parse(&*image).unwrap();
        use object::{Object, ObjectSymbol};
        let Some(sym) = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("__vdso_clock_gettime"))
        else {
            eprintln!("skipped: no __vdso_clock_gettime in this vDSO");
            return;
        };
        // The vDSO's file offsets equal its addresses (one PT_LOAD at offset 0).
        let out = s.symbolize(&ModuleKey::new("[vdso]"), &[FileOffset(sym.address())]);
        let f = out[0].function().unwrap();
        assert!(f.contains("clock_gettime"), "{f}");
    }

    #[test]
    fn a_pseudo_module_with_an_added_image_of_its_build_id_is_symbolized() {
        use object::{Object, ObjectSymbol};
        // Any ELF image with symbols and a build-id will do: this process's vDSO.
        let Ok(image) = vdso::read_own() else {
            eprintln!("skipped: cannot read the vDSO");
            return;
        };
        let obj = object::File::parse(&*image).unwrap();
        let (Some(id), Some(sym)) = (
            obj.build_id().ok().flatten().map(<[u8]>::to_vec),
            obj.dynamic_symbols()
                .find(|s| s.name() == Ok("__vdso_clock_gettime")),
        ) else {
            eprintln!("skipped: this vDSO has no build-id or no __vdso_clock_gettime");
            return;
        };
        let offset = FileOffset(sym.address());
        static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let _ = IMAGE.set(image.clone());
        vdso::add_image(|| IMAGE.get().map(Vec::as_slice).unwrap_or_default());
        let s = Symbolizer::default();
        let key = ModuleKey {
            path: "[some-vmm-code]".into(),
            build_id: Some(id.clone()),
        };
        let out = s.symbolize(&key, &[offset]);
        let f = out[0].function().unwrap();
        assert!(f.contains("clock_gettime"), "{f}");
        assert!(
            s.take_warnings().is_empty(),
            "an image's symbols need no debug info"
        );
        assert_eq!(
            pseudo_module_image(&key.path, Some(&id)).map(<[u8]>::len),
            Some(image.len())
        );
        // Without a build-id, or with another one, it is a pseudo-mapping: unknown, silent.
        for build_id in [None, Some(vec![1, 2, 3])] {
            let key = ModuleKey {
                path: "[some-vmm-code]".into(),
                build_id,
            };
            assert!(s.symbolize(&key, &[offset])[0].is_unknown());
        }
        assert!(s.take_warnings().is_empty());
    }

    #[test]
    fn kernel_with_missing_kallsyms_is_unknown() {
        let s = Symbolizer::new(SymbolizerOptions {
            kallsyms: Some("/nonexistent/kallsyms".into()),
            ..Default::default()
        });
        assert!(s.symbolize_kernel(&[0xffffffff81000000])[0].is_unknown());
        assert_eq!(s.take_warnings().len(), 1);
    }

    #[test]
    fn kernel_from_kallsyms_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kallsyms");
        std::fs::write(
            &p,
            "ffffffff81000000 T _stext\nffffffff81000040 T start_kernel\n",
        )
        .unwrap();
        let s = Symbolizer::new(SymbolizerOptions {
            kallsyms: Some(p),
            ..Default::default()
        });
        let out = s.symbolize_kernel(&[0xffffffff81000044]);
        assert_eq!(out[0].function(), Some("start_kernel"));
        assert_eq!(out[0].frames[0].function_offset, Some(4));
    }
}
