//! perf's JIT symbol maps: `/tmp/perf-PID.map`, one `START SIZE NAME` line per piece of
//! generated code (hexadecimal, with or without `0x`), as written by
//! `node --perf-basic-prof`, `python3.12 -X perf`, JVM agents (perf-map-agent) and others.
//!
//! A JIT may reuse an address range for new code and append a new line for it; the later
//! line wins, as it describes the code that ran last. Lines that do not parse are skipped
//! (a map is often read while its writer is still appending), and counted.

use std::path::Path;

/// One process's map, sorted by start address.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// (start, end, line number, name), sorted by start then line.
    entries: Vec<(u64, u64, u32, String)>,
    /// The longest entry: how far back a lookup must look for ranges that contain it.
    longest: u64,
    /// Lines that did not parse.
    pub bad_lines: usize,
}

/// A found entry: its name, start and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerfMapHit<'a> {
    pub name: &'a str,
    pub start: u64,
    pub size: u64,
}

fn hex(s: &str) -> Option<u64> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

impl PerfMap {
    pub fn read(path: &Path) -> std::io::Result<PerfMap> {
        Ok(PerfMap::parse(&String::from_utf8_lossy(&std::fs::read(
            path,
        )?)))
    }

    pub fn parse(text: &str) -> PerfMap {
        let mut map = PerfMap::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut parts = line.splitn(3, [' ', '\t']);
            let parsed = (|| {
                let start = hex(parts.next()?)?;
                let size = hex(parts.next()?)?;
                let name = parts.next()?.trim();
                let end = start.checked_add(size)?;
                (size > 0 && !name.is_empty()).then_some((start, end, name))
            })();
            match parsed {
                Some((start, end, name)) => {
                    map.longest = map.longest.max(end - start);
                    let line_no = u32::try_from(i).unwrap_or(u32::MAX);
                    map.entries.push((start, end, line_no, name.to_owned()));
                }
                None => map.bad_lines += 1,
            }
        }
        map.entries.sort_unstable_by_key(|e| (e.0, e.2));
        map
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entry containing `addr`; of several, the one written last.
    pub fn lookup(&self, addr: u64) -> Option<PerfMapHit<'_>> {
        // Entries starting at or before `addr`, walked back while they may still reach it.
        let upto = self.entries.partition_point(|e| e.0 <= addr);
        let mut best: Option<&(u64, u64, u32, String)> = None;
        for e in self.entries[..upto].iter().rev() {
            if addr - e.0 >= self.longest {
                break;
            }
            if addr < e.1 && best.is_none_or(|b| e.2 > b.2) {
                best = Some(e);
            }
        }
        best.map(|e| PerfMapHit {
            name: &e.3,
            start: e.0,
            size: e.1 - e.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_python_and_jvm_lines() {
        let map = PerfMap::parse(
            "34a9c18ab2e 28 JS:~hot_loop /tmp/jit.js:2:18\n\
             0x7f0068005b80 0x180 JS:*fib /tmp/jit.js:1:13\n\
             7f00680a0000 b py::main:/tmp/x.py\n\
             7f00680b0000\t20\tLjava/lang/String;::hashCode\n\
             garbage\n\
             7f00680c0000 0 empty\n\
             7f00680d0000 10\n",
        );
        assert_eq!(map.len(), 4);
        assert_eq!(map.bad_lines, 3);
        let hit = map.lookup(0x7f0068005b95).unwrap();
        assert_eq!(hit.name, "JS:*fib /tmp/jit.js:1:13");
        assert_eq!((hit.start, hit.size), (0x7f0068005b80, 0x180));
        assert_eq!(
            map.lookup(0x7f00680b001f).unwrap().name,
            "Ljava/lang/String;::hashCode"
        );
        assert_eq!(
            map.lookup(0x34a9c18ab2e).unwrap().name,
            "JS:~hot_loop /tmp/jit.js:2:18"
        );
        assert!(
            map.lookup(0x34a9c18ab2e + 0x28).is_none(),
            "end is exclusive"
        );
        assert!(map.lookup(0x1000).is_none());
        assert!(map.lookup(u64::MAX).is_none());
    }

    #[test]
    fn a_later_line_for_reused_code_wins() {
        let map = PerfMap::parse(
            "1000 100 old_long\n\
             1040 20 old_short\n\
             1040 20 new_short\n\
             2000 10 other\n",
        );
        assert_eq!(map.lookup(0x1045).unwrap().name, "new_short");
        assert_eq!(map.lookup(0x1010).unwrap().name, "old_long");
        assert_eq!(map.lookup(0x1070).unwrap().name, "old_long");
        // A long entry far before still covers addresses after shorter ones.
        assert_eq!(map.lookup(0x10ff).unwrap().name, "old_long");
        assert!(map.lookup(0x1100).is_none());
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "",
            "\n\n",
            "ffffffffffffffff 2 wraps\n",
            "ffffffffffffffff 1 top\n",
            "zz 10 x\n",
            "10 zz x\n",
            "  \t  \n",
        ] {
            let map = PerfMap::parse(text);
            for a in [0, 0x10, u64::MAX - 1, u64::MAX] {
                let _ = map.lookup(a);
            }
        }
    }
}
