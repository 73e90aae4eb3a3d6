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
    /// Malformed lines are skipped. Of several symbols at one address the one perf would
    /// show is kept (see [`preference`]).
    pub(crate) fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, (u8, usize, usize), String)> = text
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
                let rank = preference(kind, name);
                Some(match module {
                    Some(m) => (addr, rank, format!("{name} {m}")),
                    None => (addr, rank, name.to_owned()),
                })
            })
            .collect();
        syms.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        syms.dedup_by_key(|s| s.0);
        Kallsyms {
            syms: syms.into_iter().map(|(a, _, n)| (a, n)).collect(),
        }
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

/// Sort key among aliases, smallest preferred, as perf's `choose_best_symbol`: global
/// (`T`) before weak (`W`/`w`) before local (`t`), then fewer leading underscores, then the
/// longer name.
fn preference(kind: &str, name: &str) -> (u8, usize, usize) {
    let binding = match kind {
        "T" => 0,
        "W" | "w" => 1,
        _ => 2,
    };
    let underscores = name.bytes().take_while(|b| *b == b'_').count();
    (binding, underscores, usize::MAX - name.len())
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
    fn aliases_resolve_like_perf() {
        let k = Kallsyms::parse(
            "ffffffff81000000 T __pi__text\nffffffff81000000 T _stext\n\
             ffffffff81000000 t local_name\nffffffff81000000 T _text\n\
             ffffffff81000100 W weak_fn\nffffffff81000100 T __strong_fn\n",
        );
        assert_eq!(k.lookup(0xffffffff81000000).function(), Some("_stext"));
        assert_eq!(k.lookup(0xffffffff81000100).function(), Some("__strong_fn"));
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
