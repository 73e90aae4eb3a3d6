//! lbrprof's user-stack unwinder: what `--call-graph dwarf` turns into call chains.
//!
//! A sample taken with `PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER` carries the user
//! registers at the time of the sample and a copy of the top of the user stack (8 KiB by
//! default). [`Unwinder::unwind`] walks that copy with the call frame information (CFI)
//! of the mapped binaries — `.eh_frame` (with `.eh_frame_hdr` as its index) and
//! `.debug_frame`, from the file itself or from its separate debug file under
//! `/usr/lib/debug/.build-id/` — through [`framehop`], the unwinder samply uses. The
//! result is the same shape as a frame-pointer call chain from the kernel: the sampled
//! IP, then one return address per caller.
//!
//! The unwinder keeps the executable mappings of every process it is told about
//! ([`Unwinder::add_mapping`], [`Unwinder::fork`], [`Unwinder::exec`],
//! [`Unwinder::exit`]), in the order they happened: a consumer feeds it the side-band
//! events and the samples in time order. Each ELF file is mapped once and shared by every
//! process and mapping that uses it; a file whose build-id differs from the one the
//! mapping was recorded with is not used (unwinding through it would follow the wrong
//! rules), and a missing file is counted, not an error.
//!
//! Design constraints and non-goals:
//! * x86-64 only (the registers are perf's x86 `PERF_REG_X86_*`); framehop only recovers
//!   what return addresses need: IP, SP and BP.
//! * No I/O but reading the mapped binaries (and this process's own vDSO, the same image
//!   as every process's on this kernel); no policy about when to unwind. The
//!   recorder unwinds while recording and stores the call chains; the perf.data reader
//!   unwinds while reading. In the data flow capture → data → symbolize → aggregate →
//!   render it serves the first two steps (`lbrprof-collector` and `lbrprof-data` depend
//!   on it) and depends on no lbrprof crate.
//! * Where no CFI covers an address, framehop falls back to the frame-pointer chain, as
//!   perf does; a walk that leaves the stack copy stops there (the stack was deeper than
//!   the copy), as perf's does.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, Unwinder as _};
use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};

/// perf's x86 user-register ABI (`arch/x86/include/uapi/asm/perf_regs.h`).
pub mod abi {
    /// `PERF_REG_X86_BP`.
    pub const PERF_REG_X86_BP: u32 = 6;
    /// `PERF_REG_X86_SP`.
    pub const PERF_REG_X86_SP: u32 = 7;
    /// `PERF_REG_X86_IP`.
    pub const PERF_REG_X86_IP: u32 = 8;
    /// `PERF_SAMPLE_REGS_ABI_64` (`include/uapi/linux/perf_event.h`).
    pub const PERF_SAMPLE_REGS_ABI_64: u64 = 2;
    /// The `sample_regs_user` mask lbrprof asks for: the three registers unwinding uses.
    pub const SAMPLE_REGS_USER: u64 =
        1 << PERF_REG_X86_BP | 1 << PERF_REG_X86_SP | 1 << PERF_REG_X86_IP;
}

/// The deepest call chain produced, as perf's default `perf_event_max_stack`.
pub const MAX_FRAMES: usize = 127;

/// The user registers unwinding starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

impl Regs {
    /// The registers from a sample's `PERF_SAMPLE_REGS_USER` values, stored in
    /// ascending bit order of `mask` (the attribute's `sample_regs_user`). `None` when
    /// the mask lacks IP or SP, or `values` is shorter than the mask says.
    pub fn from_perf(mask: u64, values: &[u64]) -> Option<Regs> {
        Self::from_perf_with(mask, |index| values.get(index).copied())
    }

    /// [`Regs::from_perf`] with the values read by `value(index)` (the index among the
    /// recorded registers), so that only the three needed are read and converted.
    pub fn from_perf_with(mask: u64, value: impl Fn(usize) -> Option<u64>) -> Option<Regs> {
        let get = |reg: u32| {
            if mask & (1 << reg) == 0 {
                return None;
            }
            value((mask & ((1u64 << reg) - 1)).count_ones() as usize)
        };
        Some(Regs {
            ip: get(abi::PERF_REG_X86_IP)?,
            sp: get(abi::PERF_REG_X86_SP)?,
            bp: get(abi::PERF_REG_X86_BP).unwrap_or(0),
        })
    }
}

/// How one walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// framehop found the outermost frame (CFI says so, or the frame pointer is null).
    Complete,
    /// The walk stopped early: it left the stack copy, or an address had no usable rule.
    Truncated,
    /// The chain reached [`MAX_FRAMES`].
    TooDeep,
    /// No mapping is known for the process: only the IP.
    UnknownProcess,
}

/// Counts over every walk, for a recording's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    pub samples: u64,
    pub complete: u64,
    pub truncated: u64,
    pub unknown_process: u64,
    /// Frames produced, the IPs included.
    pub frames: u64,
    /// Mappings whose file could not be used (missing, not ELF, other build-id).
    pub unusable_mappings: u64,
}

/// Bytes of a mapped file, or owned (a decompressed section); cheap to clone.
#[derive(Clone)]
pub struct Bytes {
    buf: Buf,
    range: Range<usize>,
}

#[derive(Clone)]
enum Buf {
    Mapped(Arc<memmap2::Mmap>),
    Owned(Arc<[u8]>),
}

impl Buf {
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Mapped(m) => m,
            Buf::Owned(v) => v,
        }
    }
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes {
            buf: Buf::Owned(Arc::from(&[][..])),
            range: 0..0,
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf.bytes()[self.range.clone()]
    }
}

/// One section of an object: its stated address range and its bytes.
#[derive(Clone)]
struct Section {
    svma: Range<u64>,
    data: Bytes,
}

/// What unwinding needs from one ELF file.
struct ObjectInfo {
    build_id: Option<Vec<u8>>,
    /// PT_LOAD segments: (file offset, file size, stated address).
    loads: Vec<(u64, u64, u64)>,
    text: Option<Section>,
    got: Option<Range<u64>>,
    eh_frame: Option<Section>,
    eh_frame_hdr: Option<Section>,
    debug_frame: Option<Bytes>,
}

impl ObjectInfo {
    fn load(path: &Path) -> Option<ObjectInfo> {
        Self::parse(Buf::Mapped(map_file(path)?))
    }

    fn parse(map: Buf) -> Option<ObjectInfo> {
        let obj = object::File::parse(map.bytes()).ok()?;
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let loads = obj
            .segments()
            .filter(|s| matches!(s.flags(), SegmentFlags::Elf { .. }))
            .map(|s| {
                let (off, size) = s.file_range();
                (off, size, s.address())
            })
            .collect();
        let section = |name: &str| -> Option<Section> {
            let s = obj.section_by_name(name)?;
            let data = section_bytes(&map, &s)?;
            Some(Section {
                svma: s.address()..s.address() + s.size(),
                data,
            })
        };
        let got = obj
            .section_by_name(".got")
            .map(|s| s.address()..s.address() + s.size());
        let mut info = ObjectInfo {
            build_id,
            loads,
            text: section(".text"),
            got,
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame").map(|s| s.data),
        };
        if info.debug_frame.is_none() {
            // Distribution packages move .debug_frame (when there is one) into the
            // separate debug file, found by build-id.
            info.debug_frame = info
                .build_id
                .as_deref()
                .and_then(debug_file_path)
                .and_then(|p| {
                    let map = Buf::Mapped(map_file(&p)?);
                    let obj = object::File::parse(map.bytes()).ok()?;
                    let s = obj.section_by_name(".debug_frame")?;
                    section_bytes(&map, &s)
                });
        }
        Some(info)
    }

    /// AVMA − SVMA for a mapping of this file at `start` from file offset `pgoff`: the
    /// PT_LOAD segment that holds `pgoff` (the kernel maps whole pages, so the mapping
    /// may begin before the segment's first byte) says where the file offset was meant
    /// to be.
    fn bias(&self, start: u64, pgoff: u64) -> u64 {
        let page_mask = !0xfffu64;
        let seg = self
            .loads
            .iter()
            .find(|&&(off, size, _)| off & page_mask <= pgoff && pgoff < off + size.max(1));
        match seg {
            Some(&(off, _, vaddr)) => start
                .wrapping_sub(pgoff)
                .wrapping_add(off)
                .wrapping_sub(vaddr),
            None => start.wrapping_sub(pgoff),
        }
    }

    fn module(&self, name: &str, avma: Range<u64>, bias: u64) -> Module<Bytes> {
        Module::new(
            name.to_owned(),
            avma,
            bias,
            ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: self.text.as_ref().map(|s| s.svma.clone()),
                text: self.text.as_ref().map(|s| s.data.clone()),
                got_svma: self.got.clone(),
                eh_frame_svma: self.eh_frame.as_ref().map(|s| s.svma.clone()),
                eh_frame: self.eh_frame.as_ref().map(|s| s.data.clone()),
                eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
                eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
                debug_frame: self.debug_frame.clone(),
                ..Default::default()
            },
        )
    }
}

fn map_file(path: &Path) -> Option<Arc<memmap2::Mmap>> {
    let file = File::open(path).ok()?;
    // SAFETY: a read-only private mapping. If another process truncates or rewrites the
    // binary meanwhile we may read garbage (or fault), the risk every profiler takes with
    // mapped binaries; `object`, gimli and framehop bounds-check every read.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    Some(Arc::new(map))
}

/// A section's bytes: a window of the mapping, or its decompressed copy.
fn section_bytes(map: &Buf, s: &object::Section<'_, '_>) -> Option<Bytes> {
    use std::borrow::Cow;
    match s.uncompressed_data().ok()? {
        Cow::Borrowed(b) => {
            let start = (b.as_ptr() as usize).checked_sub(map.bytes().as_ptr() as usize)?;
            Some(Bytes {
                buf: map.clone(),
                range: start..start + b.len(),
            })
        }
        Cow::Owned(v) => Some(Bytes {
            range: 0..v.len(),
            buf: Buf::Owned(v.into()),
        }),
    }
}

/// `/usr/lib/debug/.build-id/xx/yyyy.debug`, where Debian's `-dbgsym` packages put them.
fn debug_file_path(build_id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = build_id.split_first()?;
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    let p = PathBuf::from(format!("/usr/lib/debug/.build-id/{first:02x}/{rest}.debug"));
    p.is_file().then_some(p)
}

/// One process's executable mappings.
#[derive(Clone, Default)]
struct Process {
    unwinder: UnwinderX86_64<Bytes>,
    /// start → end of each module added to `unwinder`.
    ranges: BTreeMap<u64, u64>,
}

impl Process {
    /// Drop the modules that overlap `range` (a new mapping replaces them).
    fn unmap(&mut self, range: &Range<u64>) {
        let overlapping: Vec<u64> = self
            .ranges
            .range(..range.end)
            .filter(|&(_, &end)| end > range.start)
            .map(|(&start, _)| start)
            .collect();
        for start in overlapping {
            self.ranges.remove(&start);
            self.unwinder.remove_module(start);
        }
    }
}

/// Turns user registers and stack copies into call chains, following the processes'
/// mappings.
#[derive(Default)]
pub struct Unwinder {
    processes: HashMap<u32, Process>,
    /// Parsed files by path (`None`: unusable), shared by every mapping of them.
    objects: HashMap<PathBuf, Option<Arc<ObjectInfo>>>,
    cache: CacheX86_64,
    stats: UnwindStats,
}

impl Unwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// An executable mapping of `path` in process `pid` (an MMAP2 record, or a line of
    /// `/proc/PID/maps`). Pseudo-files (`[vdso]`, `//anon`) and files that cannot be
    /// used are remembered as holes: addresses there unwind by frame pointer.
    pub fn add_mapping(
        &mut self,
        pid: u32,
        start: u64,
        len: u64,
        pgoff: u64,
        path: &str,
        build_id: Option<&[u8]>,
    ) {
        let range = start..start.saturating_add(len);
        if range.is_empty() {
            return;
        }
        let object = self.object(path, build_id);
        let process = self.processes.entry(pid).or_default();
        process.unmap(&range);
        match object {
            Some(info) => {
                let bias = info.bias(start, pgoff);
                process
                    .unwinder
                    .add_module(info.module(path, range.clone(), bias));
                process.ranges.insert(range.start, range.end);
            }
            None => self.stats.unusable_mappings += u64::from(path.starts_with('/')),
        }
    }

    fn object(&mut self, path: &str, build_id: Option<&[u8]>) -> Option<Arc<ObjectInfo>> {
        let vdso = path == "[vdso]";
        if !vdso && !path.starts_with('/') {
            return None;
        }
        let info = self
            .objects
            .entry(PathBuf::from(path))
            .or_insert_with(|| {
                let info = if vdso {
                    // The kernel's vDSO: this process's own copy is the same image on
                    // the same kernel (the build-id check below tells when a perf.data
                    // came from another one).
                    vdso::image().and_then(|b| ObjectInfo::parse(Buf::Owned(b.into())))
                } else {
                    ObjectInfo::load(Path::new(path))
                };
                info.map(Arc::new)
            })
            .clone()?;
        match (build_id, info.build_id.as_deref()) {
            (Some(want), Some(have)) if !want.is_empty() && want != have => None,
            _ => Some(info),
        }
    }

    /// A new process `child` (fork): it starts with its parent's mappings. A new thread
    /// of the same process (`child == parent`) changes nothing.
    pub fn fork(&mut self, parent: u32, child: u32) {
        if parent == child {
            return;
        }
        if let Some(p) = self.processes.get(&parent).cloned() {
            self.processes.insert(child, p);
        }
    }

    /// Process `pid` executed a new program: its old mappings are gone.
    pub fn exec(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Process `pid` exited.
    pub fn exit(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Walk the stack copy `stack` (the bytes from `regs.sp` up) of process `pid`,
    /// pushing the IP and then each return address onto `out` (innermost first, at most
    /// [`MAX_FRAMES`]).
    pub fn unwind(&mut self, pid: u32, regs: Regs, stack: &[u8], out: &mut Vec<u64>) -> Outcome {
        let before = out.len();
        let outcome = walk(self.processes.get(&pid), &mut self.cache, regs, stack, out);
        self.stats.count(outcome, out.len() - before);
        outcome
    }

    pub fn stats(&self) -> UnwindStats {
        self.stats
    }

    /// Process `pid`'s mappings as they are now, to unwind its samples of this moment
    /// later, on any thread ([`Snapshot::unwind`]).
    pub fn snapshot(&self, pid: u32) -> Option<Snapshot> {
        self.processes
            .get(&pid)
            .map(|p| Snapshot(Arc::new(p.clone())))
    }
}

impl UnwindStats {
    /// Count one walk that gave `frames` frames.
    pub fn count(&mut self, outcome: Outcome, frames: usize) {
        self.samples += 1;
        self.frames += frames as u64;
        match outcome {
            Outcome::Complete => self.complete += 1,
            Outcome::Truncated | Outcome::TooDeep => self.truncated += 1,
            Outcome::UnknownProcess => self.unknown_process += 1,
        }
    }

    /// Add another set of counts.
    pub fn add(&mut self, o: &UnwindStats) {
        self.samples += o.samples;
        self.complete += o.complete;
        self.truncated += o.truncated;
        self.unknown_process += o.unknown_process;
        self.frames += o.frames;
        self.unusable_mappings += o.unusable_mappings;
    }
}

/// One process's mappings at one moment ([`Unwinder::snapshot`]); cheap to clone and
/// shareable between threads.
#[derive(Clone)]
pub struct Snapshot(Arc<Process>);

/// framehop's cache of unwind rules by address: one per thread.
#[derive(Default)]
pub struct Cache(CacheX86_64);

impl Snapshot {
    /// [`Unwinder::unwind`] against this snapshot.
    pub fn unwind(
        &self,
        cache: &mut Cache,
        regs: Regs,
        stack: &[u8],
        out: &mut Vec<u64>,
    ) -> Outcome {
        walk(Some(&self.0), &mut cache.0, regs, stack, out)
    }
}

/// The walk itself (see [`Unwinder::unwind`]).
fn walk(
    process: Option<&Process>,
    cache: &mut CacheX86_64,
    regs: Regs,
    stack: &[u8],
    out: &mut Vec<u64>,
) -> Outcome {
    let before = out.len();
    let Some(process) = process else {
        out.push(regs.ip);
        return Outcome::UnknownProcess;
    };
    let sp = regs.sp;
    let mut read_stack = |addr: u64| {
        let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
        let word = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
        Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
    };
    let mut frames = process.unwinder.iter_frames(
        regs.ip,
        UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
        cache,
        &mut read_stack,
    );
    loop {
        if out.len() - before >= MAX_FRAMES {
            break Outcome::TooDeep;
        }
        match frames.next() {
            Ok(Some(frame)) => out.push(frame.address()),
            Ok(None) => break Outcome::Complete,
            Err(_) => break Outcome::Truncated,
        }
    }
}

mod vdso {
    //! This process's vDSO image, read from its own memory.

    /// A copy of the vDSO ELF image mapped into this process (`AT_SYSINFO_EHDR`, its
    /// extent from `/proc/self/maps`); `None` when there is none.
    pub fn image() -> Option<Vec<u8>> {
        // SAFETY: getauxval only reads the auxiliary vector; 0 means absent.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        if base == 0 {
            return None;
        }
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
        let (range, _) = line.split_once(' ')?;
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        if start != base || end <= start || end - start > 1 << 20 {
            return None;
        }
        // SAFETY: [start, end) is this process's vDSO mapping (readable, never unmapped
        // while the process lives), as the kernel's own maps file and auxv agree.
        let bytes =
            unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
        Some(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests;
