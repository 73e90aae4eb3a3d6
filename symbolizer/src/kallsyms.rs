//! Host kernel symbols from `/proc/kallsyms` (or a saved copy of it).
//!
//! Format, one symbol per line: `ADDRESS TYPE NAME [MODULE]`, ADDRESS in hex. When
//! `kptr_restrict` hides addresses every address reads as 0; that is reported, not used.

use std::path::Path;

use crate::error::KallsymsError;
use crate::types::{SymFrame, Symbolized};

/// A sorted table of kernel text symbols.
///
/// Built for speed: the whole file is parsed once per report (about 120k lines on a
/// typical kernel), so names are copied into one buffer instead of a `String` each, and
/// sorting is unstable on a key that includes the line number (same result as a stable
/// sort, less work).
#[derive(Debug, Default)]
pub(crate) struct Kallsyms {
    /// Symbol start addresses, sorted.
    addrs: Vec<u64>,
    /// `names[spans[i].0..spans[i].1]` is the name of the symbol at `addrs[i]`.
    spans: Vec<(usize, usize)>,
    names: String,
}

impl Kallsyms {
    pub(crate) fn load(path: &Path) -> Result<Self, KallsymsError> {
        let text = read_text(path).map_err(|source| KallsymsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table = Self::parse(&text);
        if table.addrs.is_empty() {
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
        let mut names = String::with_capacity(text.len() / 2);
        // (address, preference, line number, name span)
        let mut syms: Vec<(u64, Rank, usize, (usize, usize))> = Vec::new();
        for (line_no, line) in text.lines().enumerate() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let start = names.len();
            names.push_str(name);
            if let Some(module) = parts.next() {
                names.push(' ');
                names.push_str(module);
            }
            syms.push((addr, preference(kind, name), line_no, (start, names.len())));
        }
        syms.sort_unstable_by_key(|s| (s.0, s.1, s.2));
        syms.dedup_by_key(|s| s.0);
        Kallsyms {
            addrs: syms.iter().map(|s| s.0).collect(),
            spans: syms.iter().map(|s| s.3).collect(),
            names,
        }
    }

    pub(crate) fn lookup(&self, addr: u64) -> Symbolized {
        let i = self.addrs.partition_point(|a| *a <= addr);
        if i == 0 {
            return Symbolized::unknown();
        }
        let start = self.addrs[i - 1];
        let (from, to) = self.spans[i - 1];
        Symbolized {
            frames: vec![SymFrame {
                function: Some(self.names[from..to].to_owned()),
                function_offset: Some(addr - start),
                file: None,
                line: None,
            }],
        }
    }
}

/// The file as text, like `std::fs::read_to_string`, but with room for a typical
/// `/proc/kallsyms` (several MiB, reported as size 0) reserved up front: growing the buffer
/// from nothing copies it a dozen times and faults in twice the pages. Only the pages
/// written are ever touched.
fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    const TYPICAL: usize = 8 << 20;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0).max(TYPICAL));
    file.read_to_end(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Sort key among aliases at one address, smallest preferred (see [`preference`]).
type Rank = (u8, usize, usize);

/// Sort key among aliases, smallest preferred, as perf's `choose_best_symbol`: global
/// (`T`) before weak (`W`/`w`) before local (`t`), then fewer leading underscores, then the
/// longer name.
fn preference(kind: &str, name: &str) -> Rank {
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
    fn equally_preferred_aliases_keep_file_order() {
        let k = Kallsyms::parse(
            "ffffffff81000200 T bbb\nffffffff81000100 T zed_a\nffffffff81000100 T aaa_b\n",
        );
        assert_eq!(k.lookup(0xffffffff81000100).function(), Some("zed_a"));
        assert_eq!(k.lookup(0xffffffff81000250).function(), Some("bbb"));
        assert_eq!(
            k.lookup(0xffffffff81000250).frames[0].function_offset,
            Some(0x50)
        );
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
