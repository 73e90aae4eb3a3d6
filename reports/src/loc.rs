//! Where an address points: a module (file, kernel, or unknown) and an offset in it.
//!
//! Addresses in a recording are run-time addresses of one address space (a host process,
//! the host kernel, a guest). [`AddressSpaces`] replays the [`Mapping`] events in stream
//! order (including the copy of the parent's mappings on fork) and turns each run-time
//! address into a [`Loc`]: a module from the interned [`ModuleTable`] plus a *file offset*
//! for file-backed modules, or the run-time address itself for the kernel and for
//! addresses outside every mapping. Aggregation keys on `Loc`, so the same code reached in
//! two processes aggregates together and symbolization sees each module once.

use std::collections::HashMap;

use lbrprof_data::model::{AddressSpace, CpuMode, Mapping};
use serde::{Deserialize, Serialize};

/// Index into a [`ModuleTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleId(pub u32);

/// What kind of code a module holds (decides how it is symbolized and displayed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleKind {
    /// A file mapped into a host process; `Loc::offset` is a file offset.
    File,
    /// The host kernel; `Loc::offset` is the kernel virtual address (kallsyms).
    Kernel,
    /// A guest image; `Loc::offset` is a file offset.
    Guest,
    /// No mapping covered the address; `Loc::offset` is the run-time address.
    Unknown,
    /// Anonymous executable memory of one process (JIT code), named by perf's map of
    /// that process (`/tmp/perf-PID.map`, the module's path); `Loc::offset` is the
    /// run-time address.
    PerfMap,
    /// A guest process's user memory that no mapping of the recording covers, looked up
    /// in its perf map if it wrote one (JIT code in recordings made before anonymous code
    /// was recorded) and unknown without a word if not: most such addresses are a frame
    /// walk's junk. `Loc::offset` is the run-time address.
    PerfMapIfAny,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Module {
    pub path: String,
    pub build_id: Option<Vec<u8>>,
    pub kind: ModuleKind,
}

impl Module {
    /// The short name printed in tables (file name without directories).
    pub fn short_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// A code location: a module and an offset in it (see [`ModuleKind`] for what the offset
/// means).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub module: ModuleId,
    pub offset: u64,
}

/// Interned modules. Ids 0 to 3 are always the unknown, host-kernel, guest-unknown and
/// guest-root pseudo-modules.
#[derive(Clone, Debug)]
pub struct ModuleTable {
    modules: Vec<Module>,
    index: HashMap<(String, Option<Vec<u8>>, ModuleKind), ModuleId>,
}

impl Default for ModuleTable {
    fn default() -> Self {
        let mut t = ModuleTable {
            modules: Vec::new(),
            index: HashMap::new(),
        };
        t.intern("[unknown]", None, ModuleKind::Unknown);
        t.intern("[kernel.kallsyms]", None, ModuleKind::Kernel);
        t.intern("[guest]", None, ModuleKind::Unknown);
        t.intern("[guest vCPU]", None, ModuleKind::Unknown);
        t
    }
}

impl ModuleTable {
    pub const UNKNOWN: ModuleId = ModuleId(0);
    pub const KERNEL: ModuleId = ModuleId(1);
    pub const GUEST_UNKNOWN: ModuleId = ModuleId(2);
    /// The synthetic root frame of guest stacks; `Loc::offset` is the vCPU index.
    pub const GUEST_ROOT: ModuleId = ModuleId(3);

    pub fn intern(&mut self, path: &str, build_id: Option<Vec<u8>>, kind: ModuleKind) -> ModuleId {
        let key = (path.to_owned(), build_id, kind);
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = ModuleId(self.modules.len() as u32);
        self.modules.push(Module {
            path: key.0.clone(),
            build_id: key.1.clone(),
            kind,
        });
        self.index.insert(key, id);
        id
    }

    /// Points file-backed modules at copies under `root` (`root/PATH`, else
    /// `root/FILE-NAME`) where such a copy exists, like perf's `--symfs`.
    pub fn relocate(&mut self, root: &std::path::Path) {
        for m in &mut self.modules {
            if !matches!(m.kind, ModuleKind::File | ModuleKind::Guest) {
                continue;
            }
            let full = root.join(m.path.trim_start_matches('/'));
            let by_name = root.join(m.short_name());
            if let Some(p) = [full, by_name].into_iter().find(|p| p.is_file()) {
                m.path = p.display().to_string();
            }
        }
    }

    pub fn get(&self, id: ModuleId) -> &Module {
        &self.modules[id.0 as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (ModuleId, &Module)> {
        self.modules
            .iter()
            .enumerate()
            .map(|(i, m)| (ModuleId(i as u32), m))
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
struct MapEntry {
    start: u64,
    end: u64,
    pgoff: u64,
    module: ModuleId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SpaceKey {
    User(u32),
    /// A VM and an address space in it (a Linux program's process, see
    /// `GuestProcess`; 0 for a single-image guest).
    Guest(u32, u32),
}

/// The executable mappings of every address space seen so far.
#[derive(Debug, Default)]
pub struct AddressSpaces {
    pub modules: ModuleTable,
    spaces: HashMap<SpaceKey, Vec<MapEntry>>,
    /// One-entry cache: the last mapping hit (samples hit the same module in a row).
    last: Option<(SpaceKey, MapEntry)>,
    /// Each guest address space's perf JIT map (its process's `/tmp/perf-PID.map`), for
    /// user addresses no file mapping covers: code a JIT generated in the guest.
    guest_jit: HashMap<(u32, u32), ModuleId>,
    /// Each guest address space's process id.
    guest_pids: HashMap<(u32, u32), u32>,
}

/// Mapping names perf gives anonymous memory (perf's `is_anon_memory`), and named
/// anonymous memory (`[anon:NAME]`, prctl PR_SET_VMA_ANON_NAME).
fn is_anonymous(path: &str) -> bool {
    path == "//anon"
        || path.starts_with("/dev/zero")
        || path.starts_with("/anon_hugepage")
        || path.starts_with("[anon:")
}

/// Addresses below this are user addresses on x86-64 (canonical lower half).
const USER_SPACE_END: u64 = 0x0000_8000_0000_0000;

/// Addresses at or above this are kernel addresses on x86-64 (canonical upper half).
const KERNEL_SPACE_START: u64 = 0xffff_8000_0000_0000;

impl AddressSpaces {
    pub fn add_mapping(&mut self, m: &Mapping) {
        let (key, kind) = match m.space {
            // Kernel addresses resolve to the kernel module by address; no map needed.
            AddressSpace::HostKernel => return,
            AddressSpace::HostUser => (SpaceKey::User(m.pid), ModuleKind::File),
            AddressSpace::Guest { vm } => (SpaceKey::Guest(vm, m.pid), ModuleKind::Guest),
        };
        let Some(end) = m.start.checked_add(m.len) else {
            return;
        };
        let entry = if kind == ModuleKind::File && is_anonymous(&m.path) {
            // JIT code: named by the process's perf map, by run-time address (as perf
            // does for anonymous memory).
            let path = format!("/tmp/perf-{}.map", m.pid);
            MapEntry {
                start: m.start,
                end,
                pgoff: m.start,
                module: self.modules.intern(&path, None, ModuleKind::PerfMap),
            }
        } else if let (SpaceKey::Guest(vm, space), true) = (key, is_anonymous(&m.path)) {
            // A guest JIT's code: its process's perf map (under the guest pid, which the
            // process record before it gave).
            let module = match self.guest_pids.get(&(vm, space)) {
                Some(pid) => {
                    let path = format!("/tmp/perf-{pid}.map");
                    self.modules.intern(&path, None, ModuleKind::PerfMap)
                }
                None => ModuleTable::GUEST_UNKNOWN,
            };
            MapEntry {
                start: m.start,
                end,
                pgoff: m.start,
                module,
            }
        } else {
            MapEntry {
                start: m.start,
                end,
                pgoff: m.pgoff,
                module: self.modules.intern(&m.path, m.build_id.clone(), kind),
            }
        };
        let list = self.spaces.entry(key).or_default();
        // A new mapping replaces the part of any older one it overlaps (mmap over an old
        // range, exec); what sticks out on either side stays, as perf does it.
        if list
            .iter()
            .any(|e| e.start < entry.end && entry.start < e.end)
        {
            let old = std::mem::take(list);
            for e in old {
                if e.end <= entry.start || e.start >= entry.end {
                    list.push(e);
                    continue;
                }
                if e.start < entry.start {
                    list.push(MapEntry {
                        end: entry.start,
                        ..e
                    });
                }
                if e.end > entry.end {
                    list.push(MapEntry {
                        start: entry.end,
                        pgoff: e.pgoff + (entry.end - e.start),
                        ..e
                    });
                }
            }
            list.sort_by_key(|e| e.start);
        }
        let at = list.partition_point(|e| e.start < entry.start);
        list.insert(at, entry);
        self.last = None;
    }

    /// A process that execs loses its user-space mappings (the kernel sends no munmap
    /// for them); the new program's arrive as mappings after the exec.
    pub fn exec(&mut self, pid: u32) {
        if self.spaces.remove(&SpaceKey::User(pid)).is_some() {
            self.last = None;
        }
    }

    /// A forked process starts with a copy of its parent's mappings.
    pub fn fork(&mut self, parent: u32, child: u32) {
        if parent == child {
            return;
        }
        if let Some(list) = self.spaces.get(&SpaceKey::User(parent)).cloned() {
            self.spaces.insert(SpaceKey::User(child), list);
            self.last = None;
        }
    }

    /// Where `addr`, seen in process `pid` in `mode`, points.
    pub fn resolve(&mut self, pid: u32, addr: u64, mode: CpuMode) -> Loc {
        let key = match mode {
            CpuMode::Kernel | CpuMode::Hypervisor => {
                return Loc {
                    module: ModuleTable::KERNEL,
                    offset: addr,
                };
            }
            CpuMode::GuestKernel | CpuMode::GuestUser => SpaceKey::Guest(pid, pid),
            CpuMode::User => SpaceKey::User(pid),
            CpuMode::Unknown if addr >= KERNEL_SPACE_START => {
                return Loc {
                    module: ModuleTable::KERNEL,
                    offset: addr,
                };
            }
            CpuMode::Unknown => SpaceKey::User(pid),
        };
        self.resolve_in(key, addr)
    }

    /// Address space `space` of VM `vm` is (now) guest process `pid`: its user addresses
    /// outside every file mapping are looked up in that process's perf map, as perf does
    /// for a host process's anonymous memory (a JIT in the guest writes the map on the
    /// host's file system, under the pid it sees).
    pub fn set_guest_pid(&mut self, vm: u32, space: u32, pid: u32) {
        let path = format!("/tmp/perf-{pid}.map");
        let module = self.modules.intern(&path, None, ModuleKind::PerfMapIfAny);
        self.guest_jit.insert((vm, space), module);
        self.guest_pids.insert((vm, space), pid);
    }

    /// Where a guest virtual address of VM `vm` points (in its first address space).
    pub fn resolve_guest(&mut self, vm: u32, addr: u64) -> Loc {
        self.resolve_in(SpaceKey::Guest(vm, 0), addr)
    }

    /// Where a guest virtual address of address space `space` of VM `vm` points.
    pub fn resolve_guest_in(&mut self, vm: u32, space: u32, addr: u64) -> Loc {
        self.resolve_in(SpaceKey::Guest(vm, space), addr)
    }

    fn resolve_in(&mut self, key: SpaceKey, addr: u64) -> Loc {
        let hit = |e: &MapEntry| Loc {
            module: e.module,
            offset: addr - e.start + e.pgoff,
        };
        if let Some((k, e)) = &self.last
            && *k == key
            && e.start <= addr
            && addr < e.end
        {
            return hit(e);
        }
        if let Some(list) = self.spaces.get(&key) {
            let i = list.partition_point(|e| e.start <= addr);
            if i > 0 && addr < list[i - 1].end {
                let e = list[i - 1];
                self.last = Some((key, e));
                return hit(&e);
            }
        }
        let unknown = match key {
            SpaceKey::Guest(vm, space) if addr < USER_SPACE_END => {
                match self.guest_jit.get(&(vm, space)) {
                    Some(&module) => module,
                    None => ModuleTable::GUEST_UNKNOWN,
                }
            }
            SpaceKey::Guest(..) => ModuleTable::GUEST_UNKNOWN,
            // A user-mode frame is never kernel code, whatever its value (a stale frame
            // pointer walks into junk): unknown, as perf resolves it.
            SpaceKey::User(_) => ModuleTable::UNKNOWN,
        };
        Loc {
            module: unknown,
            offset: addr,
        }
    }
}

/// Which side of a `record --vm` recording a function row counts: host samples, or guest
/// LBR snapshots. The two are different measurements (time on the host, snapshots of the
/// guest), so each side's shares have their own denominator.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Host samples (and, in imported perf.data, guest-mode samples taken by the host):
    /// shares of `meta.weight`.
    #[default]
    Host,
    /// Guest LBR snapshots: shares of `meta.guest_weight`.
    Guest,
}

/// Whether a stack (root last) is a guest snapshot's, rooted in the guest root frame.
pub fn stack_side(stack: &[Loc]) -> Side {
    match stack.last() {
        Some(l) if l.module == ModuleTable::GUEST_ROOT => Side::Guest,
        _ => Side::Host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pid: u32, start: u64, len: u64, pgoff: u64, path: &str) -> Mapping {
        Mapping {
            time_ns: 0,
            space: AddressSpace::HostUser,
            pid,
            start,
            len,
            pgoff,
            path: path.into(),
            build_id: None,
        }
    }

    #[test]
    fn resolves_to_file_offsets_and_follows_forks() {
        let mut a = AddressSpaces::default();
        a.add_mapping(&map(10, 0x400000, 0x1000, 0x2000, "/bin/a"));
        let l = a.resolve(10, 0x400010, CpuMode::User);
        assert_eq!(a.modules.get(l.module).path, "/bin/a");
        assert_eq!(l.offset, 0x2010);
        assert_eq!(
            a.resolve(11, 0x400010, CpuMode::User).module,
            ModuleTable::UNKNOWN
        );
        a.fork(10, 11);
        assert_eq!(a.resolve(11, 0x400010, CpuMode::User), l);
        let k = a.resolve(10, 0xffff_ffff_8100_0000, CpuMode::Kernel);
        assert_eq!(
            (k.module, k.offset),
            (ModuleTable::KERNEL, 0xffff_ffff_8100_0000)
        );
    }

    #[test]
    fn anonymous_code_is_each_processs_perf_map_by_address() {
        let mut a = AddressSpaces::default();
        // perf gives anonymous memory its start address as page offset; do not rely on it.
        a.add_mapping(&map(10, 0x7f00_0000_0000, 0x10000, 0, "//anon"));
        a.add_mapping(&map(11, 0x7f00_0000_0000, 0x10000, 0, "//anon"));
        a.add_mapping(&map(11, 0x7e00_0000_0000, 0x1000, 0, "[anon:v8]"));
        let l10 = a.resolve(10, 0x7f00_0000_1234, CpuMode::User);
        let l11 = a.resolve(11, 0x7f00_0000_1234, CpuMode::User);
        let named = a.resolve(11, 0x7e00_0000_0010, CpuMode::User);
        assert_eq!(l10.offset, 0x7f00_0000_1234);
        assert_ne!(l10.module, l11.module, "one map per process");
        assert_eq!(named.module, l11.module);
        let m = a.modules.get(l11.module);
        assert_eq!(
            (m.path.as_str(), m.kind),
            ("/tmp/perf-11.map", ModuleKind::PerfMap)
        );
        // Files stay files.
        a.add_mapping(&map(10, 0x400000, 0x1000, 0, "/bin/anon"));
        let f = a.resolve(10, 0x400010, CpuMode::User);
        assert_eq!(a.modules.get(f.module).kind, ModuleKind::File);
    }

    #[test]
    fn unmapped_guest_user_code_is_its_processs_perf_map() {
        let mut a = AddressSpaces::default();
        let mut lib = map(2, 0x7000_0000, 0x1000, 0, "/lib/libc.so.6");
        lib.space = AddressSpace::Guest { vm: 0 };
        a.add_mapping(&lib);
        // Before the process is known: the guest's unknown.
        assert_eq!(
            a.resolve_guest_in(0, 2, 0x3000_0000_0010).module,
            ModuleTable::GUEST_UNKNOWN
        );
        a.set_guest_pid(0, 2, 4242);
        let jit = a.resolve_guest_in(0, 2, 0x3000_0000_0010);
        let m = a.modules.get(jit.module);
        // Looked up there if the process wrote one, quietly (most such addresses are a
        // frame walk's junk).
        assert_eq!(
            (m.path.as_str(), m.kind),
            ("/tmp/perf-4242.map", ModuleKind::PerfMapIfAny)
        );
        assert_eq!(jit.offset, 0x3000_0000_0010);
        // File mappings win, kernel addresses and other spaces are untouched.
        let l = a.resolve_guest_in(0, 2, 0x7000_0010);
        assert_eq!(a.modules.get(l.module).path, "/lib/libc.so.6");
        assert_eq!(
            a.resolve_guest_in(0, 2, 0xffff_8000_0000_0010).module,
            ModuleTable::GUEST_UNKNOWN
        );
        assert_eq!(
            a.resolve_guest_in(0, 3, 0x3000_0000_0010).module,
            ModuleTable::GUEST_UNKNOWN
        );
    }

    #[test]
    fn guest_anonymous_code_is_its_processs_perf_map() {
        let mut a = AddressSpaces::default();
        a.set_guest_pid(0, 2, 4242);
        let mut jit = map(2, 0x3000_0000_0000, 0x2000, 0, "//anon");
        jit.space = AddressSpace::Guest { vm: 0 };
        a.add_mapping(&jit);
        let l = a.resolve_guest_in(0, 2, 0x3000_0000_0010);
        let m = a.modules.get(l.module);
        // JIT code for sure: a missing map is worth a warning.
        assert_eq!(
            (m.path.as_str(), m.kind),
            ("/tmp/perf-4242.map", ModuleKind::PerfMap)
        );
        assert_eq!(l.offset, 0x3000_0000_0010, "run-time addresses");
        // Outside it: the quiet lookup.
        let junk = a.resolve_guest_in(0, 2, 0x3000_0000_2010);
        assert_eq!(a.modules.get(junk.module).kind, ModuleKind::PerfMapIfAny);
    }

    #[test]
    fn exec_drops_the_old_program() {
        let mut a = AddressSpaces::default();
        a.add_mapping(&map(10, 0x400000, 0x1000, 0, "/bin/sh"));
        a.fork(10, 11);
        a.exec(11);
        // The child's copy of the shell is gone, the parent keeps its own.
        assert_eq!(
            a.resolve(11, 0x400010, CpuMode::User).module,
            ModuleTable::UNKNOWN
        );
        let parent = a.resolve(10, 0x400010, CpuMode::User).module;
        assert_eq!(a.modules.get(parent).path, "/bin/sh");
        a.add_mapping(&map(11, 0x500000, 0x1000, 0, "/bin/child"));
        let child = a.resolve(11, 0x500010, CpuMode::User).module;
        assert_eq!(a.modules.get(child).path, "/bin/child");
        // A cached hit does not survive the exec either.
        a.exec(11);
        assert_eq!(
            a.resolve(11, 0x500010, CpuMode::User).module,
            ModuleTable::UNKNOWN
        );
    }

    #[test]
    fn a_new_mapping_replaces_the_overlapped_one() {
        let mut a = AddressSpaces::default();
        a.add_mapping(&map(1, 0x1000, 0x1000, 0, "/old"));
        let m = a.resolve(1, 0x1800, CpuMode::User).module;
        assert_eq!(a.modules.get(m).path, "/old");
        a.add_mapping(&map(1, 0x1000, 0x2000, 0, "/new"));
        let m = a.resolve(1, 0x1800, CpuMode::User).module;
        assert_eq!(a.modules.get(m).path, "/new");
        // A mapping inside an older, larger one splits it (ld.so reserving its range).
        a.add_mapping(&map(1, 0x10000, 0x10000, 0, "/ld"));
        a.add_mapping(&map(1, 0x14000, 0x1000, 0, "/lib"));
        let before = a.resolve(1, 0x13000, CpuMode::User);
        let inside = a.resolve(1, 0x14800, CpuMode::User);
        let after = a.resolve(1, 0x15800, CpuMode::User);
        assert_eq!(a.modules.get(before.module).path, "/ld");
        assert_eq!(a.modules.get(inside.module).path, "/lib");
        assert_eq!(
            (a.modules.get(after.module).path.as_str(), after.offset),
            ("/ld", 0x5800)
        );
    }
}
