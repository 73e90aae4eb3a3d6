//! Address-space newtypes, module identity, and the result types of a lookup.

use std::fmt;
use std::path::PathBuf;

pub use crate::demangle::NameStyle;

/// An address as the process (or guest) saw it at run time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Avma(pub u64);

/// An offset in a module file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct FileOffset(pub u64);

/// A "stated" virtual address: as written in the module's ELF headers, symbol table and
/// DWARF (what binutils `addr2line` takes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Svma(pub u64);

impl fmt::LowerHex for FileOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::LowerHex for Svma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::LowerHex for Avma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Identifies one module file: its path and, when it was recorded, its GNU build-id.
/// A recorded build-id is checked against the file found at symbolization time.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ModuleKey {
    pub path: PathBuf,
    pub build_id: Option<Vec<u8>>,
}

impl ModuleKey {
    /// A key for `path` with no recorded build-id (nothing to check).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModuleKey {
            path: path.into(),
            build_id: None,
        }
    }
}

/// Frames for one address: innermost (inlined) first, the containing function last.
/// Empty `frames` means unknown (callers print `module+0xoff`).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Symbolized {
    pub frames: Vec<SymFrame>,
}

impl Symbolized {
    /// An unknown address.
    pub fn unknown() -> Self {
        Symbolized { frames: Vec::new() }
    }

    /// True when nothing at all is known about the address.
    pub fn is_unknown(&self) -> bool {
        self.frames.is_empty()
    }

    /// The containing (outermost, non-inlined) function's name, if known.
    pub fn function(&self) -> Option<&str> {
        self.frames.last().and_then(|f| f.function.as_deref())
    }
}

/// One frame of a symbolized address.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SymFrame {
    /// Function name, demangled unless demangling was turned off.
    pub function: Option<String>,
    /// Address minus the function's start; set on the outermost frame only.
    pub function_offset: Option<u64>,
    /// The size of the containing function's extent (the address is always inside it);
    /// set on the outermost frame only, when the symbol or unwind tables know it.
    pub function_size: Option<u64>,
    /// True when the function is known only by its extent (no symbol names it): then
    /// `function` is `<module file name>+0x<start>`, its start as an SVMA.
    pub unnamed: bool,
    /// Source file (full path as recorded in DWARF).
    pub file: Option<String>,
    /// Source line; `None` when unknown (DWARF line 0).
    pub line: Option<u32>,
}

/// How the symbolizer looks for files and shapes its output.
#[derive(Clone, Debug)]
pub struct SymbolizerOptions {
    /// Extra directories searched for separate debug info, before /usr/lib/debug: both
    /// `DIR/.build-id/xx/rest.debug` and `.gnu_debuglink` names (`DIR/NAME`,
    /// `DIR/<binary's dir>/NAME`).
    pub debug_dirs: Vec<PathBuf>,
    /// A debuginfod client cache (`$DEBUGINFOD_CACHE_PATH`, by default
    /// `~/.cache/debuginfod_client`): debug files are looked for as `DIR/<build-id>/debuginfo`
    /// after the build-id directories, executables as `DIR/<build-id>/executable`.
    pub debuginfod_cache: Option<PathBuf>,
    /// perf's build-id cache (`~/.debug` for the user who recorded): copies of binaries
    /// (`DIR/.build-id/xx/rest[/elf]`) and saved kernel symbol tables, searched after the
    /// debug directories. The caller names it; the library reads no environment.
    pub build_id_cache: Option<PathBuf>,
    /// A kallsyms file to use instead of /proc/kallsyms (reports made on another machine).
    pub kallsyms: Option<PathBuf>,
    /// Demangle Rust (legacy and v0) and C++ names.
    pub demangle: bool,
    /// Whose naming conventions to follow: llvm-symbolizer's (the default) or binutils'.
    pub style: NameStyle,
    /// Report the whole inlined chain. Otherwise only the innermost frame (function and
    /// line of the instruction itself), as `addr2line -f` without `-i`.
    pub inlines: bool,
    /// Which symbols name functions: perf's choice (the default, for reports) or
    /// llvm-symbolizer's (`lbrprof symbolize`'s default).
    pub symbols: SymbolChoice,
}

/// Which symbol table names a module's functions, and which of several symbols at one
/// address (aliases) is shown. The two differ on stripped files whose DWARF is in a
/// separate debug file, as distributions ship their libraries, and on aliases.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum SymbolChoice {
    /// perf's: the fullest table there is (the file's `.symtab`, else its separate debug
    /// file's, else MiniDebugInfo's) and `.dynsym`, so internal functions keep their
    /// link-time names (`msort_with_tmp.part.0`); of several symbols at one address the
    /// public, global name (`malloc` over `__libc_malloc` and `__GI___libc_malloc`).
    #[default]
    Perf,
    /// llvm-symbolizer's: the file's own `.symtab`, else its `.dynsym`, never a separate
    /// debug file's, so in a stripped library only exported functions are named by a
    /// symbol and the others by their DWARF name (`msort_with_tmp`); of several symbols at
    /// one address the one with the largest size, then the last in table order.
    /// MiniDebugInfo, which LLVM does not read, is used only when there is no DWARF.
    Llvm,
}

impl Default for SymbolizerOptions {
    fn default() -> Self {
        SymbolizerOptions {
            debug_dirs: Vec::new(),
            debuginfod_cache: None,
            build_id_cache: None,
            kallsyms: None,
            demangle: true,
            style: NameStyle::default(),
            inlines: true,
            symbols: SymbolChoice::default(),
        }
    }
}
