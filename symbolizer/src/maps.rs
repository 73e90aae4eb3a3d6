//! The executable mappings of one address space, and AVMA → (module, file offset).

use std::collections::BTreeMap;

use crate::types::{Avma, FileOffset, ModuleKey};

/// The executable mappings of one address space (a host process, or a guest).
///
/// A later mapping that overlaps earlier ones replaces them where they overlap, as
/// `mmap(MAP_FIXED)` does.
#[derive(Clone, Debug, Default)]
pub struct ProcessMaps {
    /// start → mapping; mappings never overlap.
    maps: BTreeMap<u64, Mapping>,
    modules: Vec<ModuleKey>,
}

#[derive(Clone, Copy, Debug)]
struct Mapping {
    end: u64,
    pgoff: u64,
    module: usize,
}

impl ProcessMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a mapping of `module` at `start..start+len`, whose first byte is at file
    /// offset `pgoff` (MMAP2 start/len/pgoff, or a guest image's loaded segment).
    pub fn add(&mut self, start: Avma, len: u64, pgoff: u64, module: ModuleKey) {
        let start = start.0;
        let end = start.saturating_add(len);
        if len == 0 {
            return;
        }
        let index = match self.modules.iter().position(|m| *m == module) {
            Some(i) => i,
            None => {
                self.modules.push(module);
                self.modules.len() - 1
            }
        };
        // Cut the overlapped parts out of the existing mappings.
        let overlapping: Vec<u64> = self
            .maps
            .range(..end)
            .rev()
            .take_while(|(_, m)| m.end > start)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            let Some(old) = self.maps.remove(&s) else {
                continue;
            };
            if s < start {
                self.maps.insert(s, Mapping { end: start, ..old });
            }
            if old.end > end {
                let pgoff = old.pgoff.saturating_add(end - s);
                self.maps.insert(end, Mapping { pgoff, ..old });
            }
        }
        self.maps.insert(
            start,
            Mapping {
                end,
                pgoff,
                module: index,
            },
        );
    }

    /// The module mapped at `addr` and the file offset `addr` corresponds to.
    pub fn lookup(&self, addr: Avma) -> Option<(&ModuleKey, FileOffset)> {
        let (start, m) = self.maps.range(..=addr.0).next_back()?;
        if addr.0 >= m.end {
            return None;
        }
        let offset = m.pgoff.checked_add(addr.0 - start)?;
        Some((&self.modules[m.module], FileOffset(offset)))
    }

    /// Number of (non-overlapping) mappings.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> ModuleKey {
        ModuleKey::new(p)
    }

    #[test]
    fn lookup_applies_pgoff() {
        let mut m = ProcessMaps::new();
        m.add(Avma(0x5555_0000_1000), 0x2000, 0x1000, key("/bin/a"));
        m.add(Avma(0x7f00_0000_0000), 0x1000, 0, key("/lib/b.so"));
        let (k, off) = m.lookup(Avma(0x5555_0000_1234)).unwrap();
        assert_eq!(
            (k.path.to_str().unwrap(), off),
            ("/bin/a", FileOffset(0x1234))
        );
        let (k, off) = m.lookup(Avma(0x7f00_0000_0fff)).unwrap();
        assert_eq!(
            (k.path.to_str().unwrap(), off),
            ("/lib/b.so", FileOffset(0xfff))
        );
        assert!(m.lookup(Avma(0x5555_0000_3000)).is_none());
        assert!(m.lookup(Avma(0x5555_0000_0fff)).is_none());
        assert!(m.lookup(Avma(0)).is_none());
    }

    #[test]
    fn later_mapping_replaces_overlap() {
        let mut m = ProcessMaps::new();
        m.add(Avma(0x1000), 0x3000, 0, key("a"));
        m.add(Avma(0x2000), 0x1000, 0x10000, key("b"));
        assert_eq!(m.len(), 3);
        assert_eq!(m.lookup(Avma(0x1800)).unwrap().1, FileOffset(0x800));
        let (k, off) = m.lookup(Avma(0x2800)).unwrap();
        assert_eq!((k.path.to_str().unwrap(), off), ("b", FileOffset(0x10800)));
        let (k, off) = m.lookup(Avma(0x3800)).unwrap();
        assert_eq!((k.path.to_str().unwrap(), off), ("a", FileOffset(0x2800)));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let mut m = ProcessMaps::new();
        m.add(Avma(u64::MAX - 1), u64::MAX, u64::MAX, key("x"));
        m.add(Avma(0), 0, 0, key("y"));
        assert_eq!(
            m.lookup(Avma(u64::MAX - 1)).unwrap().1,
            FileOffset(u64::MAX)
        );
        assert!(m.lookup(Avma(0)).is_none());
        m.add(Avma(0x100), 0x100, u64::MAX, key("z"));
        assert!(m.lookup(Avma(0x101)).is_none()); // pgoff + delta overflows
    }
}
