//! Host kernel symbols from `/proc/kallsyms` (or a saved copy of it).
//!
//! Format, one symbol per line: `ADDRESS TYPE NAME [MODULE]`, ADDRESS in hex. When
//! `kptr_restrict` hides addresses every address reads as 0; that is reported, not used.

use std::path::Path;

use crate::error::KallsymsError;
use crate::types::{SymFrame, Symbolized};

/// A sorted table of kernel text symbols.
#[derive(Debug, Default)]
pub(crate) struct Kallsyms {
    /// (address, name), sorted by address.
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    pub(crate) fn load(path: &Path) -> Result<Self, KallsymsError> {
        let text = std::fs::read_to_string(path).map_err(|source| KallsymsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table = Self::parse(&text);
        if table.syms.is_empty() {
            return Err(KallsymsError::NoAddresses {
                path: path.to_owned(),
            });
        }
        Ok(table)
    }

    /// Parses kallsyms text, keeping text symbols (types t/T/w/W) with non-zero addresses.
    /// Malformed lines are skipped.
    pub(crate) fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                let module = parts.next();
                if addr == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                    return None;
                }
                Some(match module {
                    Some(m) => (addr, format!("{name} {m}")),
                    None => (addr, name.to_owned()),
                })
            })
            .collect();
        syms.sort_by_key(|(addr, _)| *addr);
        Kallsyms { syms }
    }

    pub(crate) fn lookup(&self, addr: u64) -> Symbolized {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        if i == 0 {
            return Symbolized::unknown();
        }
        let (start, name) = &self.syms[i - 1];
        Symbolized {
            frames: vec![SymFrame {
                function: Some(name.clone()),
                function_offset: Some(addr - start),
                file: None,
                line: None,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81000100 t do_thing
0000000000000000 A fixed_percpu_data
ffffffff81000200 D some_data
garbage line
ffffffffc0000000 t mod_fn\t[kvm]
";

    #[test]
    fn lookup_nearest_lower_text_symbol() {
        let k = Kallsyms::parse(TEXT);
        let s = k.lookup(0xffffffff81000123);
        assert_eq!(s.function(), Some("do_thing"));
        assert_eq!(s.frames[0].function_offset, Some(0x23));
        assert_eq!(
            k.lookup(0xffffffffc0000010).function(),
            Some("mod_fn [kvm]")
        );
        assert!(k.lookup(0x1000).is_unknown());
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kallsyms");
        std::fs::write(&p, "0000000000000000 T _stext\n").unwrap();
        assert!(matches!(
            Kallsyms::load(&p),
            Err(KallsymsError::NoAddresses { .. })
        ));
    }
}
