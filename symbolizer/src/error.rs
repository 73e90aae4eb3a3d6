//! Errors of the symbolizer. None of them reach `symbolize` callers as errors: a module
//! that cannot be used yields unknown frames and one warning built from its error.

use std::path::PathBuf;

/// Why a module file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is not a valid ELF file", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
    #[error("{} is not an ELF file", path.display())]
    NotElf { path: PathBuf },
    #[error("build-id mismatch for {}: recorded {recorded}, file has {found}", path.display())]
    BuildIdMismatch {
        path: PathBuf,
        recorded: String,
        found: String,
    },
    #[error("corrupt DWARF in {}", path.display())]
    Dwarf {
        path: PathBuf,
        #[source]
        source: gimli::Error,
    },
}

/// Why the kernel symbol table could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KallsymsError {
    #[error("cannot read kernel symbols from {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} has no usable addresses (all zero: kptr_restrict hides them; run as root or pass --kallsyms)",
        path.display()
    )]
    NoAddresses { path: PathBuf },
}

/// Hex string of a build-id, as in `/usr/lib/debug/.build-id` names.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
