//! One module (executable, shared library, kernel or guest image): its mmapped ELF file,
//! separate debug info, symbol table, program headers and a lazily-parsed DWARF context.
//!
//! A [`Module`] is opened once per report and cached by [`crate::Symbolizer`]; the DWARF
//! units and line tables it touches are parsed on first use and kept, so each is parsed
//! once. Nothing here panics on malformed input: broken files give errors at open time,
//! broken DWARF met during lookups falls back to the symbol table with a warning.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use addr2line::{LookupContinuation, LookupResult, SplitDwarfLoad};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::arena::Arena;
use crate::debuginfo;
use crate::demangle::{NameStyle, cxx_to_gnu, demangle_symbol};
use crate::error::{ModuleError, hex};
use crate::symtab::{Binding, Candidate, Function, SymbolTable};
use crate::types::{
    FileOffset, ModuleKey, Svma, SymFrame, SymbolChoice, Symbolized, SymbolizerOptions,
};

/// The DWARF reader: plain slices into bytes owned by the module's [`Arena`].
type R = gimli::EndianSlice<'static, gimli::RunTimeEndian>;

/// A map hashed with FxHash, the reports' hasher too: the interner is probed for every
/// frame of every lookup (SipHash was ~7% of a run).
type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

/// What an interned string was rendered from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Rendered {
    DwarfName,
    SymbolName,
    Path,
    Raw,
    /// A function known only by its extent: `<module>+0x<start>` (the key's address is
    /// the start, its length 0).
    Extent,
}

/// Rendered strings, each stored once, found by the address and length of the raw bytes
/// they were rendered from (bytes that live as long as the module).
#[derive(Default)]
struct Interner {
    index: FastMap<(usize, usize, Rendered), u32>,
    strings: Vec<Box<str>>,
}

impl Interner {
    fn get(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|id| self.strings.get(id as usize))
            .map(|s| &**s)
    }

    fn frame(&self, f: &RawFrame) -> FrameRef<'_> {
        FrameRef {
            function: self.get(f.function),
            function_offset: f.function_offset,
            function_size: f.function_size,
            unnamed: f.unnamed,
            file: self.get(f.file),
            line: f.line,
            discriminator: f.discriminator,
        }
    }
}

/// A looked-up frame whose strings are interner indices.
#[derive(Clone, Copy, Debug, Default)]
struct RawFrame {
    function: Option<u32>,
    function_offset: Option<u64>,
    function_size: Option<u64>,
    unnamed: bool,
    file: Option<u32>,
    line: Option<u32>,
    discriminator: Option<u32>,
}

/// A frame borrowing the module's strings (see [`Module::visit`]); the fields mean what
/// [`SymFrame`]'s do.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FrameRef<'a> {
    pub function: Option<&'a str>,
    pub function_offset: Option<u64>,
    pub function_size: Option<u64>,
    pub unnamed: bool,
    pub file: Option<&'a str>,
    pub line: Option<u32>,
    /// The DWARF discriminator of the address's line row, when not 0. Like binutils, it is
    /// given on every frame with a line (it belongs to the instruction, not the frame).
    pub discriminator: Option<u32>,
}

impl FrameRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> SymFrame {
        SymFrame {
            function: self.function.map(str::to_owned),
            function_offset: self.function_offset,
            function_size: self.function_size,
            unnamed: self.unnamed,
            file: self.file.map(str::to_owned),
            line: self.line,
        }
    }
}

/// A `PT_LOAD` segment: file bytes `offset..offset+filesz` appear at SVMA `vaddr`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    filesz: u64,
    vaddr: u64,
}

/// An opened module. See the module docs.
pub struct Module {
    // These fields borrow `'static` slices that really live in `arena`. They are declared
    // first so that they are dropped before it, and no `'static` reference ever leaves
    // this type (lookups return owned strings).
    /// The DWARF context, loaded on the first lookup that needs lines or inlined frames
    /// (decompressing and indexing a large library's DWARF costs more than everything
    /// else a report does with it).
    dwarf_state: OnceLock<DwarfState>,
    /// The object file the DWARF is in (the module or its separate debug file); `None`
    /// when there is none.
    dwarf_obj: Option<object::File<'static>>,
    /// Relative `DW_AT_comp_dir`s of DWARF 5 units, built on first need (see
    /// [`Module::style_path`]).
    relative_comp_dirs: OnceLock<Vec<String>>,
    /// Function extents from the symbol tables, PLT and unwind tables.
    symbols: SymbolTable,
    /// How functions known only by their extent are named: `<this>+0x<start>`.
    short_name: String,
    /// Names and paths already rendered (demangling dominates lookups otherwise).
    interner: RefCell<Interner>,
    /// Per compilation unit (by `.debug_info` offset), its line rows' (address,
    /// discriminator), sorted; empty when the unit has no discriminators. Built on first
    /// need, for [`Module::visit`] only.
    discriminators: RefCell<FastMap<usize, Vec<(u64, u32)>>>,
    /// Whether `.debug_line` may set discriminators at all (see
    /// [`may_set_discriminators`]); when not, no address's unit is looked up for one.
    any_discriminators: OnceLock<bool>,
    segments: Vec<Segment>,
    /// Where split-DWARF `.dwo` files are looked for when their recorded path fails.
    dir: PathBuf,
    path: PathBuf,
    demangle: bool,
    style: NameStyle,
    inlines: bool,
    /// The `--debug-dir`s, for dwz supplementary files met when the DWARF is loaded.
    debug_dirs: Vec<PathBuf>,
    /// Whether `symbols` has a full symbol table's functions (`.symtab`, a debug file's
    /// or MiniDebugInfo's), not only dynamic ones.
    full_symtab: bool,
    /// Where the names in `symbols` come from, as `--explain` says it.
    symbols_from: &'static str,
    /// Shown when the DWARF turns out to be unusable: what the module falls back to.
    no_dwarf_warning: Option<String>,
    /// Warnings raised while looking addresses up (drained by the owner).
    pending: Mutex<Vec<String>>,
    /// Where debug info was looked for and what was found, in order, for `--explain`:
    /// filled when the module is opened and as DWARF, supplementary and split files load.
    trail: Mutex<Vec<String>>,
    dwarf_error_reported: std::sync::atomic::AtomicBool,
    arena: Arena,
}

/// A module's DWARF, once loaded ([`Module::dwarf`]).
#[derive(Default)]
struct DwarfState {
    ctx: Option<addr2line::Context<R>>,
    dwarf: Option<Arc<gimli::Dwarf<R>>>,
    dwp: Option<gimli::DwarfPackage<R>>,
}

/// What opening a module produced besides the module: warnings to show once.
pub struct Opened {
    pub module: Module,
    pub warnings: Vec<String>,
}

fn endianness(obj: &object::File<'_>) -> gimli::RunTimeEndian {
    if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    }
}

fn has_dwarf(obj: &object::File<'_>) -> bool {
    obj.section_by_name(".debug_info").is_some_and(|s| {
        s.kind() != object::SectionKind::UninitializedData
            && s.file_range().is_some_and(|(_, size)| size > 0)
    })
}

impl Module {
    /// Opens the module `key` names, finds its debug info, checks its build-id.
    ///
    /// When the file is missing or is another build than the recorded one, a copy with the
    /// recorded build-id is looked for in build-id caches (`DIR/.build-id/xx/rest[/elf]`
    /// under each `--debug-dir` and `~/.debug`, debuginfod's client cache), as perf does
    /// for reports made elsewhere.
    pub fn open(key: &ModuleKey, opts: &SymbolizerOptions) -> Result<Opened, ModuleError> {
        let vdso = key.path == Path::new(crate::vdso::VDSO);
        if vdso || crate::vdso::is_pseudo(&key.path) {
            let added = key.build_id.as_deref().and_then(crate::vdso::added_image);
            let bytes = match added {
                Some(b) => b.to_vec(),
                None if vdso => crate::vdso::read_own().map_err(|source| ModuleError::Open {
                    path: key.path.clone(),
                    source,
                })?,
                None => {
                    return Err(ModuleError::Open {
                        path: key.path.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "a pseudo-module with no image of its build-id",
                        ),
                    });
                }
            };
            let arena = Arena::default();
            // SAFETY: as in `open_path`, the slice only lives inside the module owning `arena`.
            let data = unsafe { arena.keep(bytes) };
            return Self::from_data(
                &key.path,
                &key.path,
                key.build_id.as_deref(),
                data,
                arena,
                opts,
            );
        }
        let first = Self::open_path(&key.path, key, opts);
        let Some(build_id) = &key.build_id else {
            return first;
        };
        if !matches!(
            first,
            Err(ModuleError::Open { .. } | ModuleError::BuildIdMismatch { .. })
        ) {
            return first;
        }
        let mut candidates = debuginfo::binaries_by_build_id(
            build_id,
            &opts.debug_dirs,
            opts.build_id_cache.as_deref(),
        );
        if let Some(cache) = &opts.debuginfod_cache {
            candidates.push(cache.join(hex(build_id)).join("executable"));
        }
        candidates
            .iter()
            .filter(|candidate| candidate.is_file())
            .find_map(|candidate| Self::open_path(candidate, key, opts).ok())
            .map_or(first, Ok)
    }

    fn open_path(
        path: &Path,
        key: &ModuleKey,
        opts: &SymbolizerOptions,
    ) -> Result<Opened, ModuleError> {
        let arena = Arena::default();
        let open_err = |source| ModuleError::Open {
            path: path.to_owned(),
            source,
        };
        // Checked first: opening a FIFO would block, and devices or /proc files cannot be
        // mapped.
        if !std::fs::metadata(path).map_err(open_err)?.is_file() {
            return Err(ModuleError::NotAFile {
                path: path.to_owned(),
            });
        }
        let file = File::open(path).map_err(open_err)?;
        // SAFETY: every slice taken from `data` ends up in the returned `Module`, which owns
        // `arena` and drops it last (field order).
        let data = unsafe { arena.map(&file) }.map_err(open_err)?;
        Self::from_data(path, &key.path, key.build_id.as_deref(), data, arena, opts)
    }

    /// Builds a module from the bytes of an ELF file (tests, fuzzing, images in memory).
    pub fn from_bytes(
        name: &Path,
        bytes: Vec<u8>,
        opts: &SymbolizerOptions,
    ) -> Result<Opened, ModuleError> {
        let arena = Arena::default();
        // SAFETY: as in `open`, the slice only lives inside the module owning `arena`.
        let data = unsafe { arena.keep(bytes) };
        Self::from_data(name, name, None, data, arena, opts)
    }

    /// `path` is the file read; `recorded` the module's path as recorded (it names
    /// unnamed functions, so a copy found in a build-id cache names them the same).
    fn from_data(
        path: &Path,
        recorded: &Path,
        recorded_build_id: Option<&[u8]>,
        data: &'static [u8],
        arena: Arena,
        opts: &SymbolizerOptions,
    ) -> Result<Opened, ModuleError> {
        let mut warnings = Vec::new();
        let mut trail = Vec::new();
        let obj = object::File::parse(data).map_err(|source| ModuleError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if obj.format() != object::BinaryFormat::Elf {
            return Err(ModuleError::NotElf {
                path: path.to_owned(),
            });
        }
        let build_id = obj.build_id().ok().flatten();
        if let (Some(recorded), Some(found)) = (recorded_build_id, build_id)
            && recorded != found
        {
            return Err(ModuleError::BuildIdMismatch {
                path: path.to_owned(),
                recorded: hex(recorded),
                found: hex(found),
            });
        }

        trail.push(format!("file {}", path.display()));
        trail.push(format!(
            "  build-id: {}",
            build_id.map_or_else(|| "none".to_owned(), hex)
        ));
        trail.push(format!("  {}", describe_sections(&obj)));
        if let Ok(Some((name, crc))) = obj.gnu_debuglink() {
            trail.push(format!(
                "  .gnu_debuglink: {} (CRC {crc:#010x})",
                bytes_to_path(name).display()
            ));
        }
        // Separate debug info, when the file itself has no DWARF.
        let mut debug_obj = None;
        if has_dwarf(&obj) {
            trail.push("  DWARF: in the file itself".to_owned());
        } else {
            trail.push(
                "separate debug info (build-id paths, then .gnu_debuglink names):".to_owned(),
            );
            debug_obj = find_debug_file(path, &obj, opts, &arena, &mut warnings, &mut trail);
            if debug_obj.is_none() {
                trail.push("  none found".to_owned());
            }
        }
        let dwarf_obj = debug_obj.as_ref().unwrap_or(&obj);

        let with_dwarf = has_dwarf(dwarf_obj);

        // The symbols (see SymbolChoice), PLT entries and unwind extents.
        let mut symbols = Vec::new();
        let own_symtab = obj.section_by_name(".symtab").is_some();
        match (&debug_obj, opts.symbols) {
            // perf: the full table, the debug file's when the file is stripped.
            (Some(d), SymbolChoice::Perf) if !own_symtab => {
                collect_from(d, d.symbols(), opts.symbols, &mut symbols)
            }
            _ => collect_from(&obj, obj.symbols(), opts.symbols, &mut symbols),
        }
        // LLVM reads no MiniDebugInfo: its names are used only where no DWARF names
        // anything.
        if symbols.is_empty()
            && (opts.symbols == SymbolChoice::Perf || !with_dwarf)
            && let Some(mini) = mini_debuginfo(path, &obj, &arena, &mut warnings)
        {
            collect_from(&mini, mini.symbols(), opts.symbols, &mut symbols);
            trail.push(format!(
                "symbols: from MiniDebugInfo (.gnu_debugdata): {} functions",
                symbols.len()
            ));
        }
        let full_symtab = !symbols.is_empty();
        // LLVM: `.dynsym` only when there is no other table (its entries would otherwise
        // come last in table order and win ties over the full table's aliases).
        if opts.symbols == SymbolChoice::Perf || symbols.is_empty() {
            collect_from(&obj, obj.dynamic_symbols(), opts.symbols, &mut symbols);
        }
        // What `--explain` says the names come from.
        let symbols_from = if full_symtab {
            "full symbol table"
        } else if opts.symbols == SymbolChoice::Llvm && debug_obj.is_some() {
            "the file's .dynsym only, as llvm-symbolizer: the debug file's symbol table is \
             not used, functions it does not export keep their DWARF names"
        } else {
            "no full symbol table: dynamic symbols, PLT and unwind tables only"
        };
        collect_plt(&obj, &arena, &mut symbols);
        let has_names = !symbols.is_empty();
        collect_unwind_extents(&obj, &mut symbols);
        let symbols = SymbolTable::with_pick(symbols, opts.symbols);

        // What to say when there are no usable lines: now when there is no DWARF, else if
        // loading it fails.
        let no_dwarf_warning = if !has_names {
            Some(format!(
                "no debug info and no symbols in {} (stripped? install its debug package or pass --debug-dir)",
                path.display()
            ))
        } else if debug_obj.is_none()
            && path != Path::new(crate::vdso::VDSO)
            && !crate::vdso::is_pseudo(path)
        {
            // (The vDSO and the other images of pseudo-modules have their symbols and never
            // line tables: nothing to warn.)
            Some(format!(
                "no debug info for {} (install its debug package or pass --debug-dir): functions only, no lines",
                path.display()
            ))
        } else {
            None
        };
        if !with_dwarf {
            warnings.extend(no_dwarf_warning.clone());
        }

        let segments = obj
            .segments()
            .filter_map(|s| {
                let (offset, filesz) = s.file_range();
                (filesz > 0).then_some(Segment {
                    offset,
                    filesz,
                    vaddr: s.address(),
                })
            })
            .collect();

        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dwarf_obj = if with_dwarf {
            Some(debug_obj.unwrap_or(obj))
        } else {
            None
        };
        Ok(Opened {
            module: Module {
                dwarf_state: OnceLock::new(),
                dwarf_obj,
                relative_comp_dirs: Default::default(),
                symbols,
                short_name: recorded
                    .file_name()
                    .unwrap_or(recorded.as_os_str())
                    .to_string_lossy()
                    .into_owned(),
                interner: RefCell::default(),
                discriminators: RefCell::default(),
                any_discriminators: OnceLock::new(),
                segments,
                dir,
                path: path.to_owned(),
                demangle: opts.demangle,
                style: opts.style,
                inlines: opts.inlines,
                debug_dirs: opts.debug_dirs.clone(),
                full_symtab,
                symbols_from,
                no_dwarf_warning,
                pending: Mutex::new(Vec::new()),
                trail: Mutex::new(trail),
                dwarf_error_reported: Default::default(),
                arena,
            },
            warnings,
        })
    }

    /// The module's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `DW_AT_decl_line` of every function the DWARF describes, by the name its
    /// frames carry (the linkage name when there is one, else the plain name, through
    /// `DW_AT_specification` and `DW_AT_abstract_origin` as for frames): the line sample
    /// profiles (AutoFDO) count a function's source lines from. Empty without DWARF;
    /// split-DWARF units are not read.
    pub fn decl_lines(&self) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        let Some(dwarf) = self.dwarf().dwarf.clone() else {
            return out;
        };
        let string = |unit: &gimli::Unit<R>, v| {
            dwarf
                .attr_string(unit, v)
                .ok()
                .map(|s| String::from_utf8_lossy(s.slice()).into_owned())
        };
        let mut units = dwarf.units();
        while let Ok(Some(header)) = units.next() {
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            // (name, decl line, referenced DIE) of each subprogram DIE.
            type Die = (Option<String>, Option<u32>, Option<gimli::UnitOffset>);
            let mut dies: HashMap<gimli::UnitOffset, Die> = HashMap::new();
            let mut entries = unit.entries();
            while let Ok(Some(e)) = entries.next_dfs() {
                if e.tag() != gimli::DW_TAG_subprogram {
                    continue;
                }
                let (mut linkage, mut name, mut line, mut reference) = (None, None, None, None);
                for a in e.attrs() {
                    match a.name() {
                        gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                            linkage = string(&unit, a.value())
                        }
                        gimli::DW_AT_name => name = string(&unit, a.value()),
                        gimli::DW_AT_decl_line => {
                            line = a.udata_value().and_then(|l| u32::try_from(l).ok())
                        }
                        gimli::DW_AT_specification | gimli::DW_AT_abstract_origin => {
                            if let gimli::AttributeValue::UnitRef(o) = a.value() {
                                reference = Some(o);
                            }
                        }
                        _ => {}
                    }
                }
                dies.insert(e.offset(), (linkage.or(name), line, reference));
            }
            for (own_name, own_line, own_reference) in dies.values() {
                let (mut name, mut line, mut reference) =
                    (own_name.clone(), *own_line, *own_reference);
                // A few hops: a concrete instance, its abstract origin, its declaration.
                for _ in 0..4 {
                    let Some(d) = reference.and_then(|o| dies.get(&o)) else {
                        break;
                    };
                    name = name.or_else(|| d.0.clone());
                    line = line.or(d.1);
                    reference = d.2;
                }
                if let (Some(n), Some(l)) = (name, line) {
                    out.entry(n).or_insert(l);
                }
            }
        }
        out
    }

    /// True when the module has DWARF (lines and inlined frames), not only symbols.
    pub fn has_debug_info(&self) -> bool {
        self.dwarf().ctx.is_some()
    }

    /// The DWARF, loaded on first use; its problems become warnings.
    fn dwarf(&self) -> &DwarfState {
        self.dwarf_state.get_or_init(|| {
            let Some(obj) = &self.dwarf_obj else {
                return DwarfState::default();
            };
            let mut warnings = Vec::new();
            let mut trail = Vec::new();
            let state = match load_dwarf(
                obj,
                &self.arena,
                &self.path,
                &self.debug_dirs,
                &mut warnings,
                &mut trail,
            ) {
                Ok((ctx, dwarf)) => DwarfState {
                    ctx: Some(ctx),
                    dwarf: Some(dwarf),
                    dwp: load_dwp(&self.path, &self.arena, &mut warnings, &mut trail),
                },
                Err(e) => {
                    warnings.push(crate::warning_text(&e));
                    warnings.extend(self.no_dwarf_warning.clone());
                    DwarfState::default()
                }
            };
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(warnings);
            self.trail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(trail);
            state
        })
    }

    /// Where debug info was looked for and what was found (loads the DWARF first), then,
    /// per address, the symbol covering it and the frames: the text of
    /// `lbrprof symbolize --explain`.
    pub fn explain(&self, addrs: &[Svma]) -> Vec<String> {
        let state = self.dwarf();
        let mut out = self.trail.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let before_lookups = out.len();
        out.push(format!(
            "symbols: {} function extents ({})",
            self.symbols.functions().len(),
            self.symbols_from
        ));
        out.push(match (&self.dwarf_obj, &state.ctx) {
            (Some(_), Some(_)) => "DWARF: loaded: lines and inlined frames available".to_owned(),
            (Some(_), None) => "DWARF: present but unusable (see the warnings)".to_owned(),
            (None, _) => "DWARF: none: functions only, no lines".to_owned(),
        });
        for &addr in addrs {
            let frames = self.symbolize(addr);
            let mut lines = vec![format!("address {:#x}:", addr.0)];
            match self.symbols.lookup(addr.0) {
                Some(f) => lines.push(format!(
                    "  symbol: {} [{:#x}, {:#x}) from {}",
                    f.name
                        .map_or_else(|| "(unnamed extent)".to_owned(), str::to_owned),
                    f.start,
                    f.end,
                    if f.name.is_some() {
                        "the symbol table"
                    } else {
                        "the unwind tables (.eh_frame)"
                    }
                )),
                None => lines.push(
                    "  symbol: none covers it (padding between functions, or not code)".to_owned(),
                ),
            }
            if frames.frames.is_empty() {
                lines.push("  frames: none".to_owned());
            }
            for f in &frames.frames {
                lines.push(format!(
                    "  frame: {} at {}:{}",
                    f.function.as_deref().unwrap_or("??"),
                    f.file.as_deref().unwrap_or("??"),
                    f.line.map_or_else(|| "?".to_owned(), |l| l.to_string())
                ));
            }
            out.extend(lines);
        }
        // Split DWARF files are looked for during lookups, unit by unit.
        let trail = self.trail.lock().unwrap_or_else(|e| e.into_inner());
        if trail.len() > before_lookups {
            out.push("split DWARF looked for during these lookups:".to_owned());
            out.extend(trail[before_lookups..].iter().cloned());
        }
        out
    }

    /// The SVMA a file offset is loaded at, through the `PT_LOAD` program headers.
    pub fn svma_of(&self, offset: FileOffset) -> Option<Svma> {
        self.segments
            .iter()
            .find(|s| offset.0 >= s.offset && offset.0 - s.offset < s.filesz)
            .map(|s| Svma(s.vaddr.wrapping_add(offset.0 - s.offset)))
    }

    /// Symbolizes one file offset (unknown when no segment maps it).
    pub fn symbolize_offset(&self, offset: FileOffset) -> Symbolized {
        match self.svma_of(offset) {
            Some(svma) => self.symbolize(svma),
            None => Symbolized::unknown(),
        }
    }

    /// The function of one file offset from the symbol table alone (one frame: the
    /// symbol's name and the offset in it, no lines), without loading the DWARF unless
    /// no symbol covers the address. What a table of functions needs.
    pub fn symbolize_function_offset(&self, offset: FileOffset) -> Symbolized {
        let Some(svma) = self.svma_of(offset) else {
            return Symbolized::unknown();
        };
        let mut raw = Vec::new();
        let func = self.symbols.lookup(svma.0).copied();
        if self.dwarf_obj.is_some() && !self.full_symtab && func.is_none_or(|f| f.name.is_none()) {
            // Only the dynamic symbols (a stripped file whose DWARF is elsewhere but has
            // no symbol table there either): the DWARF may know the function. With a full
            // symbol table an address no symbol names is padding or a stub, and the DWARF
            // knows no more.
            self.lookup(svma, &mut raw, false);
            // Only the containing function: lines are not asked for.
            if let Some(outer) = raw.pop() {
                raw.clear();
                raw.push(RawFrame {
                    file: None,
                    line: None,
                    ..outer
                });
            }
        } else if let Some(f) = func {
            raw.push(RawFrame {
                file: None,
                ..self.function_frame(&f, svma.0)
            });
        }
        let strings = self.interner.borrow();
        Symbolized {
            frames: raw.iter().map(|f| strings.frame(f).to_owned()).collect(),
        }
    }

    /// Symbolizes one SVMA.
    pub fn symbolize(&self, svma: Svma) -> Symbolized {
        let mut raw = Vec::new();
        self.lookup(svma, &mut raw, false);
        let strings = self.interner.borrow();
        Symbolized {
            frames: raw.iter().map(|f| strings.frame(f).to_owned()).collect(),
        }
    }

    /// Looks `addrs` up and calls `visit` with each one's frames, in the order of `addrs`,
    /// without copying any string: for bulk output. Lookups run in address order, each
    /// distinct address once (see [`crate::Symbolizer::symbolize`]); an address `to_svma`
    /// cannot map is visited with no frames.
    pub fn visit<A: Copy + Ord, E>(
        &self,
        addrs: &[A],
        to_svma: impl Fn(&Self, A) -> Option<Svma>,
        mut visit: impl FnMut(&[FrameRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        // Bulk callers often hand their addresses over sorted already: then each address's
        // frames are visited as soon as they are looked up, instead of all frames of all
        // addresses being kept until the end (megabytes of fresh pages on a large batch).
        if addrs.is_sorted() {
            let mut frames = Vec::new();
            let mut previous = None;
            for &addr in addrs {
                if previous != Some(addr) {
                    frames.clear();
                    if let Some(svma) = to_svma(self, addr) {
                        self.lookup(svma, &mut frames, true);
                    }
                    previous = Some(addr);
                }
                let strings = self.interner.borrow();
                let refs: Vec<FrameRef<'_>> = frames.iter().map(|f| strings.frame(f)).collect();
                visit(&refs)?;
            }
            return Ok(());
        }
        let mut order: Vec<usize> = (0..addrs.len()).collect();
        order.sort_unstable_by_key(|i| addrs[*i]);
        let mut frames = Vec::new();
        let mut spans = vec![(0usize, 0usize); addrs.len()];
        let mut previous: Option<usize> = None;
        for i in order {
            spans[i] = match previous {
                Some(p) if addrs[p] == addrs[i] => spans[p],
                _ => {
                    let start = frames.len();
                    if let Some(svma) = to_svma(self, addrs[i]) {
                        self.lookup(svma, &mut frames, true);
                    }
                    (start, frames.len())
                }
            };
            previous = Some(i);
        }
        let strings = self.interner.borrow();
        let mut refs = Vec::new();
        for (start, end) in spans {
            refs.clear();
            refs.extend(frames[start..end].iter().map(|f| strings.frame(f)));
            visit(&refs)?;
        }
        Ok(())
    }

    /// Appends the frames of `svma` to `out`: DWARF frames completed by the symbol table
    /// (name of the containing function, offset in it), or the symbol alone; with the line
    /// row's discriminator if asked.
    fn lookup(&self, svma: Svma, out: &mut Vec<RawFrame>, discriminator: bool) {
        let start = out.len();
        let func = self.symbols.lookup(svma.0).copied();
        let outer = match self.dwarf_frames(svma.0, out) {
            Ok(outer) => outer,
            Err(e) => {
                out.truncate(start);
                self.report_dwarf_error(e);
                Outer::default()
            }
        };
        if discriminator
            && out.get(start).is_some_and(|f| f.line.is_some())
            && let Some(d) = self.discriminator(svma.0)
        {
            for f in out[start..].iter_mut().filter(|f| f.line.is_some()) {
                f.discriminator = Some(d);
            }
        }
        let Some(func) = func else {
            return;
        };
        let sym = self.function_frame(&func, svma.0);
        let symbol_name = sym.function;
        match out[start..].last_mut() {
            None => out.push(sym),
            Some(last) => {
                // LLVM: the symbol's name for the containing function (qualified and
                // demangled where the DWARF may have a short name only, as with
                // -gline-tables-only). binutils: the DWARF's name, else the symbol's.
                // Without inlined frames, the one frame left is an inlined function's
                // when the containing one was left out: it keeps its DWARF name.
                let renamed = match self.style {
                    NameStyle::Llvm => true,
                    NameStyle::Gnu => outer.outermost_unmangled,
                };
                if last.function.is_none() || (renamed && func.name.is_some() && !outer.left_out) {
                    last.function = sym.function;
                    last.unnamed = sym.unnamed;
                }
                last.function_offset = sym.function_offset;
                last.function_size = sym.function_size;
            }
        }
        // binutils: the innermost frame of a Rust function known by DW_AT_name only is
        // named by the symbol.
        if self.style == NameStyle::Gnu
            && outer.innermost_unmangled
            && func.name.is_some()
            && let Some(innermost) = out.get_mut(start)
        {
            innermost.function = symbol_name;
        }
    }

    /// The frame of `addr` in `func` from the symbol table alone: its name (or
    /// `<module>+0x<start>`), the offset in it and its size; for a local function, its
    /// `STT_FILE` name as the file.
    fn function_frame(&self, func: &Function, addr: u64) -> RawFrame {
        let function = match func.name {
            Some(name) => self.symbol_name(name),
            None => self.extent_name(func.start),
        };
        // LLVM takes no file from an empty `STT_FILE` name (binutils prints it as empty).
        let file = func
            .file
            .filter(|f| self.style == NameStyle::Gnu || !f.is_empty());
        let file = file.and_then(|f| {
            self.intern(Rendered::Raw, f.as_bytes(), || Ok(f.to_owned()))
                .ok()
        });
        RawFrame {
            function,
            function_offset: Some(addr - func.start),
            function_size: Some(func.end - func.start),
            unnamed: func.name.is_none(),
            file,
            ..RawFrame::default()
        }
    }

    /// `<module>+0x<start>`: the name of a function known only by its extent (`start` is
    /// its SVMA, so `objdump --start-address` finds it).
    fn extent_name(&self, start: u64) -> Option<u32> {
        // Keyed by the start as a dangling, zero-length "slice": never a real one.
        let key = (start as usize, 0, Rendered::Extent);
        if let Some(id) = self.interner.borrow().index.get(&key) {
            return Some(*id);
        }
        let mut interner = self.interner.borrow_mut();
        let id = u32::try_from(interner.strings.len()).ok()?;
        interner
            .strings
            .push(format!("{}+{start:#x}", self.short_name).into_boxed_str());
        interner.index.insert(key, id);
        Some(id)
    }

    /// Warnings raised by lookups since the last call.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn report_dwarf_error(&self, e: gimli::Error) {
        use std::sync::atomic::Ordering;
        if !self.dwarf_error_reported.swap(true, Ordering::Relaxed) {
            let e = ModuleError::Dwarf {
                path: self.path.clone(),
                source: e,
            };
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!(
                    "{}; using the symbol table",
                    crate::warning_text(&e)
                ));
        }
    }

    /// A source path as the chosen style's tool prints it. In DWARF 5, directory 0 of a
    /// line table *is* the compilation directory. LLVM (and gimli) take it as that, so a
    /// file in directory 0 of a unit with a relative comp_dir (`./stdio-common`, as
    /// Debian builds glibc) prints as `./stdio-common/printf_fp.c`. binutils (and so
    /// perf) still join it to `DW_AT_comp_dir`: `./stdio-common/./stdio-common/printf_fp.c`;
    /// in the gnu style redo that doubling, so our output matches addr2line's line for line.
    fn style_path(&self, file: &str) -> String {
        if self.style != NameStyle::Gnu || file.starts_with('/') {
            return file.to_owned();
        }
        let Some(dwarf) = &self.dwarf().dwarf else {
            return file.to_owned();
        };
        let dirs = self
            .relative_comp_dirs
            .get_or_init(|| relative_comp_dirs(dwarf));
        for dir in dirs {
            if let Some(name) = file
                .strip_prefix(dir.as_str())
                .and_then(|r| r.strip_prefix('/'))
                && !name.contains('/')
            {
                return format!("{dir}/{dir}/{name}");
            }
        }
        file.to_owned()
    }

    /// The index of `render(raw)` in the interner, rendered once per distinct `raw`
    /// slice of the module's data.
    fn intern(
        &self,
        kind: Rendered,
        raw: &[u8],
        render: impl FnOnce() -> Result<String, gimli::Error>,
    ) -> Result<u32, gimli::Error> {
        let key = (raw.as_ptr() as usize, raw.len(), kind);
        if let Some(id) = self.interner.borrow().index.get(&key) {
            return Ok(*id);
        }
        let s = render()?;
        let mut interner = self.interner.borrow_mut();
        let id = u32::try_from(interner.strings.len()).unwrap_or(u32::MAX);
        interner.strings.push(s.into_boxed_str());
        interner.index.insert(key, id);
        Ok(id)
    }

    /// A symbol-table name, demangled unless asked not to.
    fn symbol_name(&self, raw: &'static str) -> Option<u32> {
        self.intern(Rendered::SymbolName, raw.as_bytes(), || {
            Ok(if self.demangle {
                demangle_symbol(raw, self.style)
            } else {
                raw.to_owned()
            })
        })
        .ok()
    }

    /// The non-zero discriminator of the line row covering `probe` (the row addr2line's
    /// line lookup uses: the last one at the greatest address not above `probe`).
    fn discriminator(&self, probe: u64) -> Option<u32> {
        // `probe + 1` overflows in addr2line at the top address (see dwarf_frames).
        let ctx = self.dwarf().ctx.as_ref().filter(|_| probe != u64::MAX)?;
        // Most line tables (rustc's, clang's without -fdebug-info-for-profiling) have no
        // discriminators: then skip the second unit lookup per address (~7% of a run).
        let any = *self.any_discriminators.get_or_init(|| {
            self.dwarf().dwarf.as_ref().is_none_or(|d| {
                may_set_discriminators(gimli::Section::reader(&d.debug_line).slice())
            })
        });
        if !any {
            return None;
        }
        let mut lookup = ctx.find_dwarf_and_unit(probe);
        let unit = loop {
            match lookup {
                LookupResult::Output(unit) => break unit?,
                LookupResult::Load { load, continuation } => {
                    lookup = continuation.resume(self.load_dwo(load));
                }
            }
        };
        // Split units' line tables stay in the skeleton; their offsets are another file's.
        if unit.dwo_id.is_some() {
            return None;
        }
        let offset = unit.header.offset().0;
        let mut cache = self.discriminators.borrow_mut();
        let rows = cache.entry(offset).or_insert_with(|| {
            let Some(program) = unit.line_program.clone() else {
                return Vec::new();
            };
            let mut rows = program.rows();
            let mut out = Vec::new();
            let mut any = false;
            while let Ok(Some((_, row))) = rows.next_row() {
                let d = if row.end_sequence() {
                    0
                } else {
                    u32::try_from(row.discriminator()).unwrap_or(0)
                };
                any |= d != 0;
                out.push((row.address(), d));
            }
            if !any {
                return Vec::new();
            }
            // Stable: of rows at one address the last stays last, as addr2line keeps it.
            out.sort_by_key(|r| r.0);
            out
        });
        let i = rows.partition_point(|r| r.0 <= probe);
        let d = rows.get(i.checked_sub(1)?)?.1;
        (d != 0).then_some(d)
    }

    /// Appends the DWARF frames of `probe`, innermost first. Without inlined frames, only
    /// the innermost. Says what the symbol table may still rename (see [`Outer`]).
    fn dwarf_frames(&self, probe: u64, out: &mut Vec<RawFrame>) -> Result<Outer, gimli::Error> {
        // addr2line probes `[probe, probe + 1)`, which overflows at the top address (found
        // by the symbolizer_elf fuzz target); no unit can cover it anyway.
        let Some(ctx) = self.dwarf().ctx.as_ref().filter(|_| probe != u64::MAX) else {
            return Ok(Outer::default());
        };
        let mut lookup = ctx.find_frames(probe);
        let mut iter = loop {
            match lookup {
                LookupResult::Output(result) => break result?,
                LookupResult::Load { load, continuation } => {
                    lookup = continuation.resume(self.load_dwo(load));
                }
            }
        };
        let first = out.len();
        let mut outer = Outer::default();
        while let Some(frame) = iter.next()? {
            let unmangled = frame.function.as_ref().is_some_and(|name| {
                name.language == Some(gimli::DW_LANG_Rust)
                    && !(name.name.starts_with(b"_Z") || name.name.starts_with(b"_R"))
            });
            if out.len() == first {
                outer.innermost_unmangled = unmangled;
            }
            outer.outermost_unmangled = unmangled;
            let function = match &frame.function {
                Some(name) => Some(self.intern(Rendered::DwarfName, name.name.slice(), || {
                    Ok(if self.demangle && self.style == NameStyle::Llvm {
                        demangle_symbol(&name.raw_name()?, NameStyle::Llvm)
                    } else if self.demangle {
                        let cxx = matches!(
                            name.language,
                            Some(
                                gimli::DW_LANG_C_plus_plus
                                    | gimli::DW_LANG_C_plus_plus_03
                                    | gimli::DW_LANG_C_plus_plus_11
                                    | gimli::DW_LANG_C_plus_plus_14
                                    | gimli::DW_LANG_C_plus_plus_17
                                    | gimli::DW_LANG_C_plus_plus_20
                            )
                        );
                        match name.demangle()? {
                            d if cxx => cxx_to_gnu(&d),
                            d => d.into_owned(),
                        }
                    } else {
                        name.raw_name()?.into_owned()
                    })
                })?),
                None => None,
            };
            let (file, line) = match &frame.location {
                Some(loc) => (
                    match loc.file {
                        Some(f) => Some(
                            self.intern(Rendered::Path, f.as_bytes(), || Ok(self.style_path(f)))?,
                        ),
                        None => None,
                    },
                    loc.line.filter(|l| *l != 0),
                ),
                None => (None, None),
            };
            out.push(RawFrame {
                function,
                file,
                line,
                ..RawFrame::default()
            });
            if !self.inlines {
                // As `addr2line -f` without `-i` and `llvm-symbolizer --no-inlines`: the
                // innermost function at the instruction's line. The containing function
                // stays reachable through the symbol offset.
                outer.left_out = iter.next()?.is_some();
                return Ok(outer);
            }
        }
        Ok(outer)
    }

    /// Finds the split DWARF for a skeleton unit: in the `.dwp` package next to the binary,
    /// else the `.dwo` file at the unit's recorded path (or next to the binary).
    fn load_dwo(&self, load: SplitDwarfLoad<R>) -> Option<Arc<gimli::Dwarf<R>>> {
        if let Some(dwp) = &self.dwarf().dwp
            && let Ok(Some(cu)) = dwp.find_cu(load.dwo_id, &load.parent)
        {
            return Some(Arc::new(cu));
        }
        let name = bytes_to_path(load.path?.slice());
        let mut candidates = Vec::new();
        if let Some(comp_dir) = load.comp_dir {
            candidates.push(bytes_to_path(comp_dir.slice()).join(&name));
        }
        candidates.push(name.clone());
        if let Some(file_name) = name.file_name() {
            candidates.push(self.dir.join(file_name));
        }
        let note = |line: String| {
            self.trail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line)
        };
        let found = candidates.into_iter().find_map(|path| {
            if !path.is_file() {
                note(format!("  split DWARF {}: not found", path.display()));
                return None;
            }
            note(format!("  split DWARF {}: found", path.display()));
            let file = File::open(&path).ok()?;
            // SAFETY: the slice lives in this module's arena and only inside this module.
            let data = unsafe { self.arena.map(&file) }.ok()?;
            let obj = object::File::parse(data).ok()?;
            let endian = endianness(&obj);
            let mut dwo =
                gimli::Dwarf::load(|id| load_section(&obj, id.dwo_name(), endian, &self.arena))
                    .ok()?;
            let header = dwo.units().next().ok()??;
            let unit = dwo.unit(header).ok()?;
            if unit.dwo_id != Some(load.dwo_id) {
                note("    its DWO id is another build's: ignored".to_owned());
                return None;
            }
            dwo.make_dwo(&load.parent);
            Some(Arc::new(dwo))
        });
        if found.is_none() {
            note(format!(
                "  split DWARF for unit {:#x}: not found (lines of that unit are missing)",
                load.dwo_id.0
            ));
        }
        found
    }
}

/// False only when `line` (a `.debug_line` section) certainly has no
/// `DW_LNE_set_discriminator`: the bytes `0, L, 4` of that extended opcode (L, its length,
/// a one-byte LEB128 from 2 to 11) occur nowhere, nor does a 0 followed by a multi-byte
/// length. Other bytes may look alike (then the answer is only "maybe"): a byte scan
/// instead of decoding every line program.
fn may_set_discriminators(line: &[u8]) -> bool {
    let mut rest = line;
    while let Some(i) = rest.iter().position(|&b| b == 0) {
        match rest[i + 1..] {
            [2..=11, 4, ..] => return true,
            [len, ..] if len & 0x80 != 0 => return true,
            _ => rest = &rest[i + 1..],
        }
    }
    false
}

/// `.symtab: yes, .dynsym: yes, .debug_info: 12345 bytes (zlib-compressed), DWARF 5`.
fn describe_sections(obj: &object::File<'_>) -> String {
    let has = |name: &str| obj.section_by_name(name).is_some();
    let yes = |b: bool| if b { "yes" } else { "no" };
    let debug = match obj
        .section_by_name(".debug_info")
        .or_else(|| obj.section_by_name(".zdebug_info"))
    {
        Some(s) if s.kind() != object::SectionKind::UninitializedData => {
            let compression = match s.compressed_data().map(|c| c.format) {
                Ok(object::CompressionFormat::Zlib) => " (zlib-compressed)",
                Ok(object::CompressionFormat::Zstandard) => " (zstd-compressed)",
                _ => "",
            };
            format!("{} bytes{compression}", s.size())
        }
        Some(_) => "stripped (NOBITS)".to_owned(),
        None => "none".to_owned(),
    };
    format!(
        ".symtab: {}, .dynsym: {}, .debug_info: {debug}, .gnu_debugdata: {}",
        yes(has(".symtab")),
        yes(has(".dynsym")),
        yes(has(".gnu_debugdata"))
    )
}

fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

fn load_section(
    obj: &object::File<'static>,
    name: Option<&str>,
    endian: gimli::RunTimeEndian,
    arena: &Arena,
) -> Result<R, gimli::Error> {
    let data: &'static [u8] = match name.and_then(|n| obj.section_by_name(n)) {
        // A compressed section whose header claims more than its bytes can expand to
        // would have object reserve that size up front (found by the symbolizer_elf
        // fuzz target: 44 GB for a few bytes); it reads as undecompressible.
        Some(section) if !plausible_compression(section.compressed_data()) => &[],
        Some(section) => match section.uncompressed_data() {
            Ok(Cow::Borrowed(b)) => b,
            // SAFETY: the slice lives in the module's arena and only inside that module.
            Ok(Cow::Owned(v)) => unsafe { arena.keep(v) },
            // A section that cannot be decompressed reads as empty, which gimli reports
            // as missing data where it matters.
            Err(_) => &[],
        },
        None => &[],
    };
    Ok(gimli::EndianSlice::new(data, endian))
}

/// The name of a DWARF section lookups read, or `None` for sections they never read:
/// location lists (variable locations) and macro information. Leaving those out matters
/// because compressed sections are inflated whole when loaded, and in Debian's libc debug
/// file `.debug_loclists` is about a sixth of the compressed DWARF.
fn used_name(id: gimli::SectionId) -> Option<&'static str> {
    use gimli::SectionId::*;
    match id {
        DebugLoc | DebugLocLists | DebugMacinfo | DebugMacro => None,
        _ => Some(id.name()),
    }
}

/// Most bytes one compressed byte can stand for: deflate's limit is 1032:1; zstd's RLE
/// blocks go further (a 128 KiB block in a few bytes), so its bound is looser.
const MAX_ZLIB_RATIO: u64 = 1032;
const MAX_ZSTD_RATIO: u64 = 1 << 16;

/// Whether a section's stated uncompressed size is one its compressed bytes could
/// produce (uncompressed and unreadable sections pass: they allocate nothing).
fn plausible_compression(data: object::Result<object::CompressedData<'_>>) -> bool {
    let Ok(c) = data else { return true };
    let ratio = match c.format {
        object::CompressionFormat::Zlib => MAX_ZLIB_RATIO,
        object::CompressionFormat::Zstandard => MAX_ZSTD_RATIO,
        _ => return true,
    };
    c.uncompressed_size
        <= (c.data.len() as u64)
            .saturating_mul(ratio)
            .saturating_add(4096)
}

fn load_dwarf(
    obj: &object::File<'static>,
    arena: &Arena,
    path: &Path,
    debug_dirs: &[PathBuf],
    warnings: &mut Vec<String>,
    trail: &mut Vec<String>,
) -> Result<(addr2line::Context<R>, Arc<gimli::Dwarf<R>>), ModuleError> {
    let endian = endianness(obj);
    let dwarf_err = |source| ModuleError::Dwarf {
        path: path.to_owned(),
        source,
    };
    let mut dwarf = gimli::Dwarf::load(|id| load_section(obj, used_name(id), endian, arena))
        .map_err(dwarf_err)?;
    // dwz-compressed debug info (Debian's dbgsym packages) refers to a supplementary file.
    if let Ok(Some((alt_path, alt_build_id))) = obj.gnu_debugaltlink() {
        trail.push(format!(
            "dwz supplementary file ({}, build-id {}):",
            bytes_to_path(alt_path).display(),
            hex(alt_build_id)
        ));
        match find_sup(path, alt_path, alt_build_id, debug_dirs, arena, trail) {
            Some(sup) => {
                let sup_endian = endianness(&sup);
                dwarf
                    .load_sup(|id| load_section(&sup, used_name(id), sup_endian, arena))
                    .map_err(dwarf_err)?;
            }
            None => warnings.push(format!(
                "supplementary debug file {} (for {}) not found: some names and lines will be missing",
                bytes_to_path(alt_path).display(),
                path.display()
            )),
        }
    }
    // Every unit is parsed twice (addr2line's unit index, then the relative comp dirs of
    // [`Module::style_path`]), and addr2line keeps each unit's abbreviations alive
    // anyway: cache them all, so each table is parsed once.
    dwarf.populate_abbreviations_cache(gimli::AbbreviationsCacheStrategy::All);
    let dwarf = Arc::new(dwarf);
    let ctx = addr2line::Context::from_arc_dwarf(dwarf.clone()).map_err(dwarf_err)?;
    Ok((ctx, dwarf))
}

/// What [`Module::dwarf_frames`] says of the frames it gave, for the symbol table to
/// rename.
#[derive(Clone, Copy, Default)]
struct Outer {
    /// The containing function's frame was left out (no inlined frames asked for): the
    /// frame given is an inlined function's and keeps its DWARF name (LLVM renames the
    /// containing function's frame only).
    left_out: bool,
    /// The innermost frame's function is Rust without a mangled linkage name in the
    /// DWARF (rustc 1.95 gives drop glue and generic helpers DW_AT_name only): binutils
    /// names that frame by the symbol covering the address (it trusts DW_AT_name alone
    /// only for languages without mangling). (g++'s C++ keeps binutils on the DWARF
    /// names, as tests/symbolize_gnu.rs checks.)
    innermost_unmangled: bool,
    /// The same of the outermost frame's function (the one the symbol is of): binutils
    /// renames that function itself once it named it by its symbol (a lookup that had it
    /// innermost), so its frames print the symbol's name from then on.
    outermost_unmangled: bool,
}

/// Relative compilation directories of DWARF 5 units (Debian builds with
/// `-ffile-prefix-map=...=.`, giving `DW_AT_comp_dir` values like `./stdio-common`).
fn relative_comp_dirs(dwarf: &gimli::Dwarf<R>) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut headers = dwarf.units();
    while let Ok(Some(header)) = headers.next() {
        if header.version() < 5 {
            continue;
        }
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        if let Some(dir) = unit.comp_dir
            && !dir.starts_with(b"/")
            && !dir.is_empty()
        {
            dirs.push(dir.to_string_lossy().into_owned());
        }
    }
    dirs.sort_unstable();
    dirs.dedup();
    // Longest first, so `./a/b` is tried before `./a`.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    dirs
}

fn map_object(path: &Path, arena: &Arena) -> Option<object::File<'static>> {
    if !path.is_file() {
        return None;
    }
    let file = File::open(path).ok()?;
    // SAFETY: the slice lives in the module's arena and only inside that module.
    let data = unsafe { arena.map(&file) }.ok()?;
    object::File::parse(data).ok()
}

fn find_sup(
    path: &Path,
    alt_path: &[u8],
    alt_build_id: &[u8],
    debug_dirs: &[PathBuf],
    arena: &Arena,
    trail: &mut Vec<String>,
) -> Option<object::File<'static>> {
    let alt = bytes_to_path(alt_path);
    let mut candidates = Vec::new();
    if alt.is_absolute() {
        candidates.push(alt.clone());
    } else if let Some(dir) = path.parent() {
        candidates.push(dir.join(&alt));
    }
    candidates.extend(debuginfo::by_build_id(alt_build_id, debug_dirs, ".debug"));
    candidates.into_iter().find_map(|c| {
        let Some(obj) = map_object(&c, arena) else {
            trail.push(format!("  {}: not found", c.display()));
            return None;
        };
        let ok = obj.build_id().ok().flatten() == Some(alt_build_id);
        trail.push(format!(
            "  {}: {}",
            c.display(),
            if ok {
                "used"
            } else {
                "another build-id: ignored"
            }
        ));
        ok.then_some(obj)
    })
}

fn find_debug_file(
    path: &Path,
    obj: &object::File<'static>,
    opts: &SymbolizerOptions,
    arena: &Arena,
    warnings: &mut Vec<String>,
    trail: &mut Vec<String>,
) -> Option<object::File<'static>> {
    let build_id = obj.build_id().ok().flatten();
    let link = obj.gnu_debuglink().ok().flatten();
    let mut candidates = Vec::new();
    if let Some(id) = build_id {
        candidates.extend(debuginfo::by_build_id(id, &opts.debug_dirs, ".debug"));
        if let Some(cache) = &opts.debuginfod_cache {
            candidates.push(cache.join(hex(id)).join("debuginfo"));
        }
    }
    if let Some((name, _)) = link {
        candidates.extend(debuginfo::by_debuglink(
            path,
            &bytes_to_path(name),
            &opts.debug_dirs,
        ));
    }
    for candidate in candidates {
        if !candidate.is_file() {
            trail.push(format!("  {}: not found", candidate.display()));
            continue;
        }
        let Some(debug) = map_object(&candidate, arena) else {
            trail.push(format!("  {}: not a valid ELF file", candidate.display()));
            warnings.push(format!(
                "ignoring debug file {} for {}: not a valid ELF file",
                candidate.display(),
                path.display()
            ));
            continue;
        };
        let debug_id = debug.build_id().ok().flatten();
        let matches = match (build_id, debug_id) {
            (Some(a), Some(b)) => a == b,
            _ => match link {
                Some((_, crc)) => std::fs::read(&candidate)
                    .map(|bytes| crc32fast::hash(&bytes) == crc)
                    .unwrap_or(false),
                None => false,
            },
        };
        if !matches {
            trail.push(format!(
                "  {}: {}",
                candidate.display(),
                if build_id.is_some() {
                    "another build-id: ignored"
                } else {
                    "CRC mismatch: ignored"
                }
            ));
            warnings.push(format!(
                "build-id mismatch for {}: debug file {} belongs to another build; ignored",
                path.display(),
                candidate.display()
            ));
            continue;
        }
        trail.push(format!(
            "  {}: used ({}{})",
            candidate.display(),
            if build_id.is_some() {
                "build-id matches"
            } else {
                "CRC matches"
            },
            if has_dwarf(&debug) {
                ""
            } else {
                ", but it has no DWARF"
            }
        ));
        return Some(debug);
    }
    None
}

fn load_dwp(
    path: &Path,
    arena: &Arena,
    warnings: &mut Vec<String>,
    trail: &mut Vec<String>,
) -> Option<gimli::DwarfPackage<R>> {
    let mut name = path.as_os_str().to_owned();
    name.push(".dwp");
    let dwp_path = PathBuf::from(name);
    if !dwp_path.is_file() {
        trail.push(format!("DWARF package {}: not found", dwp_path.display()));
        return None;
    }
    trail.push(format!("DWARF package {}: found", dwp_path.display()));
    let Some(obj) = map_object(&dwp_path, arena) else {
        warnings.push(format!(
            "ignoring {}: not a valid ELF file",
            dwp_path.display()
        ));
        return None;
    };
    let endian = endianness(&obj);
    let empty = gimli::EndianSlice::new(&[][..], endian);
    match gimli::DwarfPackage::load(|id| load_section(&obj, id.dwo_name(), endian, arena), empty) {
        Ok(p) => Some(p),
        Err(e) => {
            warnings.push(format!(
                "ignoring {}: corrupt DWARF package ({e})",
                dwp_path.display()
            ));
            None
        }
    }
}

/// Function symbols of one symbol table, as candidates for [`SymbolTable`]. A local
/// function also gets the name of the `STT_FILE` symbol before it, as binutils reports
/// that file when there are no lines.
/// The function symbols of one table, in table order. With [`SymbolChoice::Llvm`], also
/// `STT_GNU_IFUNC` symbols (named at their resolver's address, as LLVM names it: glibc
/// exports `memcpy` so, and only the full table names the resolver itself).
fn collect_from<'a>(
    obj: &object::File<'static>,
    symbols: impl Iterator<Item = object::Symbol<'static, 'a>>,
    choice: SymbolChoice,
    out: &mut Vec<Candidate>,
) {
    let ifunc = |s: &object::Symbol<'static, 'a>| {
        choice == SymbolChoice::Llvm
            && s.section_index().is_some()
            && matches!(s.flags(), object::SymbolFlags::Elf { st_info, .. }
                if st_info.st_type() == object::elf::STT_GNU_IFUNC)
    };
    let mut file: Option<&'static str> = None;
    // binutils' rule: a global symbol only inherits the file if no STT_FILE symbol came
    // after other symbols (i.e. the table is not the usual "locals by file, then globals").
    let mut symbol_seen = false;
    let mut file_after_symbol = false;
    for s in symbols {
        if s.kind() == SymbolKind::File {
            // An empty name (assembly objects) is kept: binutils prints it as `:?`.
            file = s.name().ok();
            file_after_symbol |= symbol_seen;
            continue;
        }
        symbol_seen = true;
        if s.kind() != SymbolKind::Text || !(s.is_definition() || ifunc(&s)) || s.address() == 0 {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        if name.is_empty() {
            continue;
        }
        // How far a symbol without a size may reach: the end of its section.
        let limit = s
            .section_index()
            .and_then(|i| obj.section_by_index(i).ok())
            .map_or(0, |sec| sec.address().saturating_add(sec.size()));
        let binding = if s.is_weak() {
            Binding::Weak
        } else if s.is_local() {
            Binding::Local
        } else {
            Binding::Global
        };
        out.push(Candidate {
            addr: s.address(),
            size: s.size(),
            limit,
            name: Some(name),
            binding,
            file: file.filter(|_| s.is_local() || !file_after_symbol),
        });
    }
}

/// Most bytes a MiniDebugInfo section may expand to, per compressed byte (xz's best
/// ratios on symbol tables are far below) and in all.
const MAX_XZ_RATIO: usize = 1 << 10;
const MAX_XZ_SIZE: usize = 1 << 30;

/// A `Write` that refuses to grow past a limit (bounds what a hostile xz stream makes).
struct Bounded {
    out: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("decompressed size over the limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The ELF file in `.gnu_debugdata` (MiniDebugInfo: an xz-compressed symbol table of the
/// functions `.dynsym` leaves out, as Fedora and others ship it), when there is one.
fn mini_debuginfo(
    path: &Path,
    obj: &object::File<'static>,
    arena: &Arena,
    warnings: &mut Vec<String>,
) -> Option<object::File<'static>> {
    let data = obj.section_by_name(".gnu_debugdata")?.data().ok()?;
    let mut out = Bounded {
        out: Vec::new(),
        limit: data
            .len()
            .saturating_mul(MAX_XZ_RATIO)
            .clamp(1 << 20, MAX_XZ_SIZE),
    };
    let parsed = lzma_rs::xz_decompress(&mut &data[..], &mut out)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            // SAFETY: the slice lives in the module's arena and only inside that module.
            let bytes = unsafe { arena.keep(out.out) };
            object::File::parse(bytes).map_err(|e| e.to_string())
        });
    match parsed {
        Ok(mini) => Some(mini),
        Err(e) => {
            warnings.push(format!(
                "ignoring the MiniDebugInfo (.gnu_debugdata) of {}: {e}",
                path.display()
            ));
            None
        }
    }
}

/// `name@plt` for each PLT entry (`.plt`, `.plt.sec`, `.plt.got`) of an x86-64 file, as
/// perf and objdump name them: each entry jumps through a GOT slot (`jmp *disp(%rip)`,
/// optionally after `endbr64` and with a `bnd` prefix), and the dynamic relocation of that
/// slot names the function. Decoding the stubs, rather than counting entries, also works
/// for `-z now`, `.plt.got` and linkers that order entries differently.
fn collect_plt(obj: &object::File<'static>, arena: &Arena, out: &mut Vec<Candidate>) {
    use object::{ObjectSymbolTable, RelocationTarget};
    if obj.architecture() != object::Architecture::X86_64 {
        return;
    }
    let (Some(relocs), Some(dynsyms)) = (obj.dynamic_relocations(), obj.dynamic_symbol_table())
    else {
        return;
    };
    let mut slots: HashMap<u64, String> = HashMap::new();
    for (slot, reloc) in relocs {
        match reloc.target() {
            RelocationTarget::Symbol(index) => {
                if let Ok(sym) = dynsyms.symbol_by_index(index)
                    && let Ok(name) = sym.name()
                    && !name.is_empty()
                {
                    slots.insert(slot, name.to_owned());
                }
            }
            // R_X86_64_IRELATIVE (libc's calls to its own IFUNCs, e.g. memcpy): no
            // symbol, the resolver's address as addend; objdump and perf name the entry
            // `*ABS*+0xADDEND@plt`.
            RelocationTarget::Absolute if reloc.addend() > 0 => {
                slots.insert(slot, format!("*ABS*+{:#x}", reloc.addend()));
            }
            _ => {}
        }
    }
    if slots.is_empty() {
        return;
    }
    for section in [".plt", ".plt.sec", ".plt.got"] {
        let Some(sec) = obj.section_by_name(section) else {
            continue;
        };
        let Ok(data) = sec.data() else { continue };
        // IBT entries (starting with endbr64) are 16 bytes; lazy `.plt` entries are 16
        // bytes too; `.plt.got` entries without IBT are 8.
        let endbr64 = data.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]);
        let stride = if section == ".plt.got" && !endbr64 {
            8
        } else {
            16
        };
        for (i, entry) in data.chunks(stride).enumerate() {
            let entry_addr = sec.address().wrapping_add((i * stride) as u64);
            let Some(at) = entry.windows(6).position(|w| w[0] == 0xff && w[1] == 0x25) else {
                continue;
            };
            let disp =
                i32::from_le_bytes([entry[at + 2], entry[at + 3], entry[at + 4], entry[at + 5]]);
            let next = entry_addr.wrapping_add(at as u64 + 6);
            let slot = next.wrapping_add_signed(i64::from(disp));
            if let Some(name) = slots.get(&slot)
                // SAFETY: the slice lives in the module's arena and only inside that module.
                && let Ok(name) = std::str::from_utf8(unsafe { arena.keep(format!("{name}@plt").into_bytes()) })
            {
                out.push(Candidate {
                    addr: entry_addr,
                    size: stride as u64,
                    limit: entry_addr.saturating_add(stride as u64),
                    name: Some(name),
                    binding: Binding::Global,
                    file: None,
                });
            }
        }
    }
}

/// Function extents from the unwind tables (`.eh_frame` FDEs), which every x86-64 binary
/// carries, stripped or not: where no symbol names the code, these still say where each
/// function begins and ends. Only extents in executable segments count; a malformed table
/// ends the walk (what was read so far is kept).
fn collect_unwind_extents(obj: &object::File<'static>, out: &mut Vec<Candidate>) {
    use gimli::UnwindSection;
    let Some(sec) = obj.section_by_name(".eh_frame") else {
        return;
    };
    let Ok(data) = sec.data() else { return };
    if data.is_empty() {
        return;
    }
    let exec: Vec<(u64, u64)> = obj
        .segments()
        .filter(|s| match s.flags() {
            object::SegmentFlags::Elf { p_flags, .. } => p_flags.contains(object::elf::PF_X),
            _ => false,
        })
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
        .collect();
    let mut eh = gimli::EhFrame::new(data, endianness(obj));
    eh.set_address_size(if obj.is_64() { 8 } else { 4 });
    let addr_of = |name: &str| obj.section_by_name(name).map(|s| s.address());
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(sec.address());
    if let Some(a) = addr_of(".text") {
        bases = bases.set_text(a);
    }
    if let Some(a) = addr_of(".got") {
        bases = bases.set_got(a);
    }
    if let Some(a) = addr_of(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(a);
    }
    let mut cies = HashMap::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(|eh, bases, offset| {
            cies.entry(offset)
                .or_insert_with(|| eh.cie_from_offset(bases, offset))
                .clone()
        });
        let Ok(fde) = fde else { continue };
        let (start, len) = (fde.initial_address(), fde.len());
        let Some(end) = start.checked_add(len) else {
            continue;
        };
        if start == 0 || len == 0 || !exec.iter().any(|&(lo, hi)| lo <= start && end <= hi) {
            continue;
        }
        out.push(Candidate {
            addr: start,
            size: len,
            limit: end,
            name: None,
            binding: Binding::Local,
            file: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{CompressedData, CompressionFormat};

    fn compressed(format: CompressionFormat, len: usize, uncompressed_size: u64) -> bool {
        let data = vec![0u8; len];
        plausible_compression(Ok(CompressedData {
            format,
            data: &data,
            uncompressed_size,
        }))
    }

    /// Found by the symbolizer_elf fuzz target: looking up the top address of a module
    /// with DWARF overflowed inside addr2line (`probe + 1`), a panic in debug builds.
    #[test]
    fn discriminator_opcodes_are_never_missed() {
        // DW_LNE_set_discriminator 3 (0, length 2, opcode 4, ULEB 3) amid other opcodes.
        assert!(may_set_discriminators(&[
            0x05, 0x02, 0x00, 0x02, 0x04, 0x03, 0x01
        ]));
        // A length written as a two-byte LEB128.
        assert!(may_set_discriminators(&[0x00, 0x82, 0x00, 0x04, 0x03]));
        // A large discriminator: ULEB of 10 bytes, length 11.
        let mut big = vec![0x00, 11, 0x04];
        big.extend([0xff; 9]);
        big.push(0x01);
        assert!(may_set_discriminators(&big));
        // DW_LNE_end_sequence (0, 1, 1), DW_LNE_set_address (0, 9, 2, 8 bytes), a file
        // name's terminating 0, a trailing 0: none of them sets a discriminator.
        let mut none = vec![0x00, 0x01, 0x01, 0x00, 0x09, 0x02];
        none.extend([0x10; 8]);
        none.extend(b"a.rs\0\x01\x00\x00");
        none.push(0x00);
        assert!(!may_set_discriminators(&none));
        assert!(!may_set_discriminators(&[]));
    }

    #[test]
    fn top_address_lookup_does_not_overflow() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let opened = Module::from_bytes(&exe, bytes, &SymbolizerOptions::default()).unwrap();
        assert!(opened.module.has_debug_info(), "the test binary has DWARF");
        assert!(opened.module.symbolize(Svma(u64::MAX)).frames.is_empty());
        let mut visited = 0;
        opened
            .module
            .visit(
                &[Svma(u64::MAX)],
                |_, a| Some(a),
                |frames| {
                    visited += 1;
                    assert!(frames.is_empty());
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
        assert_eq!(visited, 1);
    }

    /// Sorted addresses (visited as they are looked up) and the same addresses in another
    /// order, with repeats, give each address the same frames as `symbolize`.
    #[test]
    fn visit_gives_the_frames_of_symbolize_sorted_or_not() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let m = Module::from_bytes(&exe, bytes, &SymbolizerOptions::default())
            .unwrap()
            .module;
        // The test function itself: the largest of the symbols with its name in theirs
        // (closures and drop glue are small).
        let f = m
            .symbols
            .functions()
            .iter()
            .filter(|s| {
                s.name
                    .is_some_and(|n| n.contains("visit_gives_the_frames_of_symbolize"))
            })
            .max_by_key(|s| s.end - s.start)
            .expect("this test's own symbol");
        let start = f.start;
        assert!(f.end - f.start > 32);
        let mut sorted: Vec<Svma> = (0..64).map(|i| Svma(start + i / 2)).collect();
        sorted.push(Svma(u64::MAX));
        let mut shuffled = sorted.clone();
        shuffled.reverse();
        shuffled.swap(3, 40);
        for addrs in [&sorted, &shuffled] {
            let mut got = Vec::new();
            m.visit(
                addrs,
                |_, a| Some(a),
                |frames| {
                    got.push(frames.iter().map(FrameRef::to_owned).collect::<Vec<_>>());
                    Ok::<(), ()>(())
                },
            )
            .unwrap();
            let expected: Vec<_> = addrs.iter().map(|a| m.symbolize(*a).frames).collect();
            assert_eq!(got, expected);
            assert!(got.iter().filter(|f| f.is_empty()).count() == 1, "{got:?}");
        }
    }

    /// Function-only lookups name the symbol and its offset without loading the DWARF;
    /// full lookups load it on first use and agree on the containing symbol's offset.
    #[test]
    fn function_lookups_use_the_symbol_table_and_leave_dwarf_unloaded() {
        let exe = std::env::current_exe().unwrap();
        let bytes = std::fs::read(&exe).unwrap();
        let opened = Module::from_bytes(&exe, bytes, &SymbolizerOptions::default()).unwrap();
        let m = opened.module;
        let sym = *m
            .symbols
            .functions()
            .iter()
            .find(|s| {
                s.name
                    .is_some_and(|n| n.contains("top_address_lookup_does_not_overflow"))
            })
            .expect("this test's own symbol");
        let seg = m
            .segments
            .iter()
            .find(|g| sym.start >= g.vaddr && sym.start - g.vaddr < g.filesz)
            .copied()
            .unwrap();
        let offset = FileOffset(sym.start - seg.vaddr + seg.offset + 4);
        let f = m.symbolize_function_offset(offset);
        assert_eq!(f.frames.len(), 1);
        let frame = &f.frames[0];
        assert!(
            frame
                .function
                .as_deref()
                .is_some_and(|n| n.contains("top_address_lookup_does_not_overflow")),
            "{frame:?}"
        );
        assert_eq!((frame.function_offset, frame.line), (Some(4), None));
        assert!(m.dwarf_state.get().is_none(), "DWARF was loaded");
        let full = m.symbolize_offset(offset);
        assert!(m.dwarf_state.get().is_some());
        assert_eq!(full.frames.last().unwrap().function_offset, Some(4));
        assert!(full.frames[0].line.is_some(), "{full:?}");
    }

    /// Found by the symbolizer_elf fuzz target: a 0x40-byte zlib section claiming 44 GB
    /// made object reserve 44 GB before decompressing.
    #[test]
    fn implausible_uncompressed_sizes_are_refused() {
        assert!(!compressed(CompressionFormat::Zlib, 0x40, 0xb_0000_0000));
        assert!(!compressed(
            CompressionFormat::Zstandard,
            0x40,
            0xb_0000_0000
        ));
        assert!(!compressed(
            CompressionFormat::Zlib,
            1000,
            1000 * 1032 + 4097
        ));
        assert!(compressed(CompressionFormat::Zlib, 1000, 1000 * 1032));
        assert!(compressed(
            CompressionFormat::Zstandard,
            1000,
            1000 * 1032 * 10
        ));
        // Real sections: libc's .debug_info expands about 4x.
        assert!(compressed(CompressionFormat::Zlib, 1 << 20, 4 << 20));
        // Uncompressed and unknown formats allocate nothing up front.
        assert!(compressed(CompressionFormat::None, 0, u64::MAX));
        assert!(compressed(CompressionFormat::Unknown, 0, u64::MAX));
    }
}
