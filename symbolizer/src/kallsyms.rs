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
/// typical kernel), so names stay where they are in the file's text (spans into it), and
/// the table is sorted with a stable sort on the address alone: the file is nearly sorted
/// already, which such a sort exploits, and stability keeps aliases in file order.
#[derive(Debug, Default)]
pub(crate) struct Kallsyms {
    /// Symbol start addresses, sorted.
    addrs: Vec<u64>,
    /// `text[spans[i].0..spans[i].1]` is the name (and module) of the symbol at `addrs[i]`.
    spans: Vec<(u32, u32)>,
    text: String,
}

/// One text symbol of the file: its address, and where its name (`start..name_end`) and
/// name with module (`start..end`) are in the text.
#[derive(Clone, Copy)]
struct Line {
    addr: u64,
    start: u32,
    name_end: u32,
    end: u32,
    kind: u8,
}

impl Kallsyms {
    pub(crate) fn load(path: &Path) -> Result<Self, KallsymsError> {
        let text = read_text(path).map_err(|source| KallsymsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table = Self::parse(text);
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
    pub(crate) fn parse(text: impl Into<String>) -> Self {
        let text: String = text.into();
        // Spans are u32: a kallsyms file is a few MiB; anything beyond 4 GiB is ignored.
        let usable = &text.as_bytes()[..text.len().min(u32::MAX as usize)];
        let mut lines: Vec<Line> = Vec::with_capacity(usable.len() / 48);
        let mut at = 0usize;
        while at < usable.len() {
            let end = usable[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(usable.len(), |n| at + n);
            if let Some(l) = parse_line(usable, at, end) {
                lines.push(l);
            }
            at = end + 1;
        }
        lines.sort_by_key(|l| l.addr);
        let mut addrs = Vec::with_capacity(lines.len());
        let mut spans = Vec::with_capacity(lines.len());
        let mut i = 0;
        while i < lines.len() {
            let mut best = i;
            let mut j = i + 1;
            while j < lines.len() && lines[j].addr == lines[i].addr {
                if rank(&text, &lines[j]) < rank(&text, &lines[best]) {
                    best = j;
                }
                j += 1;
            }
            addrs.push(lines[best].addr);
            spans.push((lines[best].start, lines[best].end));
            i = j;
        }
        Kallsyms { addrs, spans, text }
    }

    pub(crate) fn lookup(&self, addr: u64) -> Symbolized {
        let i = self.addrs.partition_point(|a| *a <= addr);
        if i == 0 {
            return Symbolized::unknown();
        }
        let start = self.addrs[i - 1];
        let (from, to) = self.spans[i - 1];
        let raw = &self.text[from as usize..to as usize];
        // `NAME\t[MODULE]` in the file, `NAME [MODULE]` in reports.
        let name = if raw.contains(|c: char| c.is_whitespace()) {
            raw.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            raw.to_owned()
        };
        Symbolized {
            frames: vec![SymFrame {
                function: Some(name),
                function_offset: Some(addr - start),
                ..SymFrame::default()
            }],
        }
    }
}

fn is_space(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b
}

/// The next whitespace-separated token of `b[at..end]`: its start and end.
fn token(b: &[u8], mut at: usize, end: usize) -> Option<(usize, usize)> {
    while at < end && is_space(b[at]) {
        at += 1;
    }
    let start = at;
    while at < end && !is_space(b[at]) {
        at += 1;
    }
    (at > start).then_some((start, at))
}

/// `ADDRESS TYPE NAME [MODULE]` of a text symbol (types t/T/w/W, non-zero address).
fn parse_line(b: &[u8], at: usize, end: usize) -> Option<Line> {
    let (a0, a1) = token(b, at, end)?;
    let (k0, k1) = token(b, a1, end)?;
    let (n0, n1) = token(b, k1, end)?;
    let kind = match &b[k0..k1] {
        [k @ (b't' | b'T' | b'w' | b'W')] => *k,
        _ => return None,
    };
    // The tokens are ASCII-delimited slices of UTF-8 text, so they are UTF-8 too.
    let addr = u64::from_str_radix(std::str::from_utf8(&b[a0..a1]).ok()?, 16).ok()?;
    if addr == 0 {
        return None;
    }
    let end = token(b, n1, end).map_or(n1, |(_, m1)| m1);
    Some(Line {
        addr,
        start: n0 as u32,
        name_end: n1 as u32,
        end: end as u32,
        kind,
    })
}

fn rank(text: &str, l: &Line) -> Rank {
    let kind = match l.kind {
        b'T' => "T",
        b'W' => "W",
        b'w' => "w",
        _ => "t",
    };
    preference(kind, &text[l.start as usize..l.name_end as usize])
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

    /// The straightforward parse (split, copy, sort by address, preference and line),
    /// as a reference for the fast one: (address, name) of each kept symbol.
    fn reference(text: &str) -> Vec<(u64, String)> {
        let mut syms = Vec::new();
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
            let full = match parts.next() {
                Some(m) => format!("{name} {m}"),
                None => name.to_owned(),
            };
            syms.push((addr, preference(kind, name), line_no, full));
        }
        syms.sort_by_key(|s| (s.0, s.1, s.2));
        syms.dedup_by_key(|s| s.0);
        syms.into_iter().map(|s| (s.0, s.3)).collect()
    }

    #[test]
    fn fast_parse_agrees_with_the_reference_on_real_tables() {
        let mut texts = vec![
            TEXT.to_owned(),
            "ffffffff81000000 T __pi__text\nffffffff81000000 T _stext\n \n\
             ffffffff81000000 t local_name \t[m]  extra\nfffffffg T bad\n\
             +ffffffff81000100 T plus\nffffffff81000100 W weak_fn\r\n"
                .to_owned(),
        ];
        if let Ok(t) = std::fs::read_to_string("/proc/kallsyms") {
            texts.push(t);
        }
        for text in texts {
            let expected = reference(&text);
            let k = Kallsyms::parse(text.as_str());
            assert_eq!(k.addrs.len(), expected.len());
            for (addr, name) in &expected {
                let s = k.lookup(*addr);
                assert_eq!(s.function(), Some(name.as_str()), "{addr:#x}");
            }
        }
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
