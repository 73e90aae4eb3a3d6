//! Local (`static`) functions of an ELF file and their ordinals among the local symbols
//! of the same name: tools that key functions by name (BOLT's `f/N`) tell such
//! duplicates apart by that ordinal, counted in address order.

use std::path::Path;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::types::FileOffset;

/// A local function symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFunction {
    /// Where its code is in the file.
    pub offset: FileOffset,
    pub name: String,
    /// 1 for the first local symbol (function or data) of this name in address order.
    pub ordinal: u64,
}

/// The local functions of the ELF file at `path`; none when it cannot be read or parsed.
pub fn local_functions(path: &Path) -> Vec<LocalFunction> {
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    local_functions_of(&data)
}

fn local_functions_of(data: &[u8]) -> Vec<LocalFunction> {
    let Ok(obj) = object::File::parse(data) else {
        return Vec::new();
    };
    // (address, name, is code), in address order (stable: symbol table order on ties).
    let mut locals: Vec<(u64, &str, bool)> = obj
        .symbols()
        .filter(|s| s.is_local() && s.is_definition())
        .filter(|s| !matches!(s.kind(), SymbolKind::File | SymbolKind::Section))
        .filter_map(|s| Some((s.address(), s.name().ok()?, s.kind() == SymbolKind::Text)))
        .filter(|(_, n, _)| !n.is_empty())
        .collect();
    locals.sort_by_key(|l| l.0);
    let mut counters: std::collections::HashMap<&str, u64> = Default::default();
    let mut out = Vec::new();
    for (addr, name, code) in locals {
        let ordinal = counters.entry(name).or_default();
        *ordinal += 1;
        let offset = obj.segments().find_map(|seg| {
            let (off, size) = seg.file_range();
            (addr >= seg.address() && addr - seg.address() < size)
                .then(|| off + (addr - seg.address()))
        });
        if let (true, Some(offset)) = (code, offset) {
            out.push(LocalFunction {
                offset: FileOffset(offset),
                name: name.to_owned(),
                ordinal: *ordinal,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gives_nothing() {
        assert_eq!(local_functions_of(b"not an ELF file"), vec![]);
        assert_eq!(local_functions(Path::new("/nonexistent/x")), vec![]);
    }
}
