//! The program's address space: guest-physical frames, the 4-level page tables the shim
//! builds for them, the list of mappings (VMAs) and the heap (`brk`).
//!
//! Pages are backed eagerly: a mapping gets its frames when it is created (or, for a
//! mapping made `PROT_NONE`, when `mprotect` first makes a page of it accessible), not at
//! first touch, because on a host where guest ring 0 is emulated a page-fault round trip
//! costs as much as a system call.
//! `mprotect(PROT_NONE)` of a backed page keeps its frame and contents, as on Linux (a
//! guard page, a garbage collector's or a JIT's trick, a sanitizer's quarantine: the
//! program makes the data accessible again and finds it there): the leaf entry loses
//! its present bit, so the CPU faults on every access and ignores the other bits, and
//! keeps its frame and software bits with [`PTE_PROTNONE`] set, as Linux's
//! `_PAGE_PROTNONE`. Such a page is *backed* but not present: every walker of these
//! tables treats it as holding a frame (fork copies it, munmap and exec free it, mremap
//! moves it, `MADV_DONTNEED` discards it) and never as accessible (the shim's accesses
//! are EFAULT, a fault of the program is SIGSEGV).
//! A fresh read-only anonymous mapping (`mmap(PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS)`,
//! which Starlark's Go interpreter makes 4 GiB big, for tagged integers, and never
//! touches) maps one frame of zeros everywhere ([`PTE_ZERO`]), as Linux maps its zero
//! page, and gets frames of its own only when `mprotect` makes it writable.
//! A `MAP_NORESERVE` private anonymous mapping is the exception: it is *lazy*
//! ([`Vma::lazy`]), backed page by page when the program first touches it, as Linux backs
//! all anonymous memory. Sanitizers map terabytes of shadow that way and touch a little
//! of it; the guest's page fault comes to the shim ([`AddressSpace::fault`]), which maps a
//! fresh frame (or, for a read of read-only memory, the frame of zeros) and resumes the
//! faulting instruction. A fault round trip goes through guest ring 0 (~80 µs on a host
//! that emulates it, against ~30 µs for the first touch of an eagerly mapped page),
//! so a fault backs the 64 KiB block around the page, as transparent huge pages do.
//! Unmap, protect, fork, mremap and discard walk the page tables and skip absent tables
//! whole ([`AddressSpace::backed_leaves`]), so a mapping's size costs nothing, only its
//! populated pages do.
//! Host memory is still lazy: fresh frames are untouched pages of the guest-RAM mapping
//! (MAP_NORESERVE), so only pages the program writes cost host memory. A frame that is
//! freed and handed out again is zeroed first.
//!
//! Every access the shim makes on the program's behalf goes through [`AddressSpace::read`]
//! / [`AddressSpace::write`], which walk these page tables and require a present user page
//! (writable for writes), or an absent page of a lazy mapping that allows the access: a
//! read of it reads zeros, a write populates it first. Anything else is `EFAULT`. Guest-physical accesses are bounds-
//! checked again by [`GuestMemory`], so no guest value reaches outside guest RAM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::arch::{PTE_A, PTE_ADDR_MASK, PTE_D, PTE_P, PTE_RW, PTE_US};
use crate::linux::abi::{MMAP_MIN, MMAP_TOP, PAGE, USER_END};
use crate::linux::errno::Errno;
use crate::linux::frames;
pub use crate::linux::frames::{FramePool, Frames};
use crate::linux::shm::{PTE_SHARED, ShmRef};
use crate::memory::{GuestMemory, GuestPhysAddr, GuestVirtAddr};

/// Execute-disable (bit 63 of a paging entry; needs EFER.NXE).
pub const PTE_NX: u64 = 1 << 63;

/// A leaf that maps the pool's frame of zeros (a software bit): read-only, shared by
/// every such page, never written, copied or freed through this space.
pub const PTE_ZERO: u64 = 1 << 10;

/// A leaf of a `PROT_NONE` page that keeps its frame (a software bit, as Linux's
/// `_PAGE_PROTNONE`): the present bit is clear, so the CPU ignores the entry's other
/// bits; the frame and the other software bits ([`PTE_ZERO`], [`PTE_SHARED`]) stay, and
/// `mprotect` to an accessible protection sets the present bit again on the same frame.
pub const PTE_PROTNONE: u64 = 1 << 11;

/// The bits of a leaf that say which frame it holds and whose it is: what a
/// [`PTE_PROTNONE`] entry keeps of a present one, and gives back.
const PTE_FRAME_BITS: u64 = PTE_ADDR_MASK | PTE_ZERO | PTE_SHARED;

/// Whether leaf entry `e` holds a frame: present, or kept while `PROT_NONE`.
fn backed(e: u64) -> bool {
    e & (PTE_P | PTE_PROTNONE) != 0
}

/// `PROT_*` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prot(pub u32);

impl Prot {
    pub const NONE: Prot = Prot(0);
    pub const RW: Prot = Prot((libc::PROT_READ | libc::PROT_WRITE) as u32);
    pub fn from_raw(v: u64) -> Prot {
        Prot((v as u32) & (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u32)
    }
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
    pub fn writable(self) -> bool {
        self.0 & libc::PROT_WRITE as u32 != 0
    }
    pub fn executable(self) -> bool {
        self.0 & libc::PROT_EXEC as u32 != 0
    }
    /// The leaf page-table flags for this protection (user page, NX unless executable).
    ///
    /// Accessed, and dirty when writable, from the start: nothing reads those bits back
    /// (a page is backed when it is mapped, and a fork copies what is there), and a
    /// host that shadows the guest's page tables (KVM without EPT/NPT) must otherwise
    /// take a fault to set each of them at the page's first read and first write, and
    /// only prefetches the shadow entries of neighbouring pages whose accessed bit is set.
    fn pte_flags(self) -> u64 {
        let mut f = PTE_P | PTE_US | PTE_A;
        if self.writable() {
            f |= PTE_RW | PTE_D;
        }
        if !self.executable() {
            f |= PTE_NX;
        }
        f
    }
}

/// A file a mapping's contents came from (for symbolization, like perf's MMAP2).
#[derive(Clone, Debug)]
pub struct FileBacking {
    pub path: PathBuf,
    pub file: Arc<std::fs::File>,
    /// File offset of the mapping's first page.
    pub offset: u64,
}

/// One mapping: `[start, end)` with one protection.
#[derive(Clone, Debug)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: Prot,
    pub file: Option<FileBacking>,
    /// `[heap]`, `[stack]` or empty.
    pub name: &'static str,
    /// `MAP_SHARED`: the pages are the shared object's ([`crate::linux::shm`]).
    pub shm: Option<ShmRef>,
    /// Private anonymous memory backed at first touch ([`AddressSpace::fault`]), not
    /// when mapped (`MAP_NORESERVE`).
    pub lazy: bool,
}

/// What [`AddressSpace::fault`] made of a page fault of the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The page is there now (or was already): run the instruction again.
    Resolved,
    /// No mapping holds the address (SIGSEGV, `SEGV_MAPERR`).
    Unmapped,
    /// The mapping does not allow the access (SIGSEGV, `SEGV_ACCERR`).
    Denied,
    /// A lazy page could not get a frame: guest memory (`--vm-mem`) is used up.
    OutOfMemory,
}

impl Fault {
    /// The `si_code` of the SIGSEGV an unresolved fault raises.
    pub fn si_code(self) -> i32 {
        match self {
            Fault::Unmapped => 1, // SEGV_MAPERR
            _ => 2,               // SEGV_ACCERR
        }
    }
}

/// A mapping event, in the order they happened (what perf's MMAP2 records carry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapRecord {
    /// The address space it was made in ([`AddressSpace::space`]).
    pub space: u32,
    pub start: u64,
    pub len: u64,
    pub path: PathBuf,
    pub offset: u64,
    pub executable: bool,
}

impl MapRecord {
    /// The path of anonymous executable memory (code a JIT wrote), as perf names it.
    pub const ANONYMOUS: &'static str = "//anon";

    /// Anonymous memory made executable (by `mmap` or `mprotect`): JIT code.
    pub fn anonymous(space: u32, start: u64, len: u64) -> MapRecord {
        MapRecord {
            space,
            start,
            len,
            path: PathBuf::from(Self::ANONYMOUS),
            offset: 0,
            executable: true,
        }
    }
}

/// An address space a vfork parent lent its child (the process model is in `proc.rs`):
/// the child puts it back here when it execs or ends.
pub type LentSpace = Arc<Mutex<Option<AddressSpace>>>;

/// Where exec put the program's arguments and environment on its stack, and the
/// auxiliary vector it gave it (Linux's `mm->arg_start`... and `saved_auxv`).
#[derive(Clone, Debug, Default)]
pub struct ExecInfo {
    /// The auxiliary vector as `/proc/PID/auxv` reads: (tag, value) words to AT_NULL.
    pub auxv: Vec<u8>,
    /// `[start, end)` of the argument strings (`/proc/PID/cmdline` reads them live).
    pub args: (u64, u64),
    /// `[start, end)` of the environment strings (`/proc/PID/environ`).
    pub env: (u64, u64),
}

/// The program's address space (see the module doc).
pub struct AddressSpace {
    mem: Arc<GuestMemory>,
    frames: FramePool,
    /// Guest-physical address of the PML4 in use.
    root: u64,
    /// A second PML4 with the same entries: switching CR3 between the two is how the
    /// shim flushes the vCPU's TLB (KVM resets its MMU only when CR3 changes).
    alt_root: u64,
    vmas: BTreeMap<u64, Vma>,
    pub brk_start: u64,
    pub brk: u64,
    /// What exec put on the stack, as `/proc/PID/auxv`, `cmdline` and `environ` show it.
    pub exec_info: ExecInfo,
    /// Every file mapping made, in order.
    pub maps: Vec<MapRecord>,
    /// The address of a request refused because guest memory ran out, plus one (0:
    /// none); atomic because the shim populates lazy pages through `&self` accesses.
    exhausted: AtomicU64,
    /// This space's id among the VM's (0: the first process's first one).
    pub space: u32,
    /// The trap stub page every process maps ([`crate::linux::cpu::build_trap_area`]):
    /// not this space's to free.
    stubs: Option<u64>,
    /// Set when existing translations changed (unmap, protection lowered): every vCPU's
    /// TLB must be flushed before the program runs again.
    pub flush_needed: bool,
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("root", &self.root)
            .field("vmas", &self.vmas.len())
            .field("brk", &self.brk)
            .finish()
    }
}

fn page_down(v: u64) -> u64 {
    v & !(PAGE - 1)
}

fn page_up(v: u64) -> Option<u64> {
    v.checked_add(PAGE - 1).map(page_down)
}

impl AddressSpace {
    /// An empty address space whose frames come from guest-physical `[first, RAM end)`.
    pub fn new(mem: Arc<GuestMemory>, first: u64) -> Result<AddressSpace, Errno> {
        let end = page_down(mem.size());
        let frames = Frames::new(page_up(first).ok_or(Errno::ENOMEM)?, end);
        AddressSpace::with_pool(mem, Arc::new(Mutex::new(frames)))
    }

    /// An empty address space whose frames come from `frames` (shared with the other
    /// processes of the VM).
    pub fn with_pool(mem: Arc<GuestMemory>, frames: FramePool) -> Result<AddressSpace, Errno> {
        let (root, alt_root) = {
            let mut f = frames.lock().unwrap_or_else(|e| e.into_inner());
            let root = f.alloc_table(&mem)?.0;
            match f.alloc_table(&mem) {
                Ok(alt) => (root, alt.0),
                Err(e) => {
                    f.release(root);
                    return Err(e);
                }
            }
        };
        Ok(AddressSpace {
            mem,
            frames,
            root,
            alt_root,
            vmas: BTreeMap::new(),
            brk_start: 0,
            brk: 0,
            exec_info: ExecInfo::default(),
            maps: Vec::new(),
            exhausted: AtomicU64::new(0),
            space: 0,
            stubs: None,
            flush_needed: false,
        })
    }

    /// A stand-in with no page tables (a vfork parent's while its child borrows its
    /// space): every access is EFAULT, and dropping it frees nothing.
    pub fn hollow(mem: Arc<GuestMemory>, frames: FramePool) -> AddressSpace {
        AddressSpace {
            mem,
            frames,
            root: HOLLOW,
            alt_root: HOLLOW,
            vmas: BTreeMap::new(),
            brk_start: 0,
            brk: 0,
            exec_info: ExecInfo::default(),
            maps: Vec::new(),
            exhausted: AtomicU64::new(0),
            space: 0,
            stubs: None,
            flush_needed: false,
        }
    }

    /// The frame pool this space draws from.
    pub fn pool(&self) -> FramePool {
        self.frames.clone()
    }

    fn frames(&self) -> MutexGuard<'_, Frames> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of this address space for a forked child: the same mappings, each present
    /// page copied to a frame of its own (no copy-on-write: a page fault costs as much
    /// as a system call on hosts that emulate guest ring 0). Pages that are all zero are
    /// left as fresh frames, so untouched memory stays untouched on the host too. The
    /// trap area is not copied (the child builds its own).
    pub fn fork(&self) -> Result<AddressSpace, Errno> {
        let mut child = AddressSpace::with_pool(self.mem.clone(), self.frames.clone())?;
        child.vmas = self.vmas.clone();
        child.brk_start = self.brk_start;
        child.exec_info = self.exec_info.clone();
        child.brk = self.brk;
        child.maps = self.maps.clone();
        let mut page = vec![0u8; PAGE as usize];
        for v in self.vmas.values() {
            // Backed pages only (present or PROT_NONE, which the child gets the same way):
            // a lazy mapping's untouched pages stay untouched.
            for (va, _, e) in self.backed_leaves(v.start, v.end)? {
                if e & (PTE_SHARED | PTE_ZERO) != 0 {
                    // A shared object's frame, or the zero frame: the child maps the same.
                    child.map_page(va, GuestPhysAddr(e & PTE_ADDR_MASK), e & !PTE_ADDR_MASK)?;
                } else {
                    let f = child.frames().alloc(&self.mem);
                    let f = f.inspect_err(|_| {
                        child.note_exhausted(va);
                    })?;
                    self.mem
                        .read(GuestPhysAddr(e & PTE_ADDR_MASK), &mut page)
                        .map_err(|_| Errno::EFAULT)?;
                    // The emulated LBR's breakpoints in the parent's code stay the
                    // parent's: the child's copy gets the original bytes.
                    let pa = e & PTE_ADDR_MASK;
                    for (a, orig) in
                        crate::int3::breakpoint_originals(self.mem.host_base(), pa, PAGE)
                    {
                        let i = (a - pa) as usize;
                        if page[i] == 0xCC {
                            page[i] = orig;
                        }
                    }
                    if page.iter().any(|&b| b != 0) {
                        self.mem.write(f, &page).map_err(|_| Errno::EFAULT)?;
                    }
                    child.map_page(va, f, e & !PTE_ADDR_MASK)?;
                }
            }
        }
        Ok(child)
    }

    /// The address of the first request refused because guest memory ran out.
    pub fn exhausted(&self) -> Option<u64> {
        self.exhausted.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Remember that a request at `va` was refused for want of guest memory (the first
    /// such address is kept).
    pub fn note_exhausted(&self, va: u64) {
        let _ = self.exhausted.compare_exchange(
            0,
            va.saturating_add(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Every leaf entry of `[start, end)` that holds a frame (present, or kept while
    /// `PROT_NONE`, [`PTE_PROTNONE`]): (page address, entry address, entry), in address
    /// order. Absent tables are skipped whole, so the cost is the populated pages',
    /// whatever the range's size.
    pub fn backed_leaves(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, GuestPhysAddr, u64)>, Errno> {
        let mut out = Vec::new();
        if self.root != HOLLOW && start < end {
            self.walk(self.root, 39, 0, page_down(start), end, &mut out)?;
        }
        Ok(out)
    }

    /// [`Self::backed_leaves`] under `table`, which maps the `512 << shift` bytes at `base`.
    fn walk(
        &self,
        table: u64,
        shift: u32,
        base: u64,
        start: u64,
        end: u64,
        out: &mut Vec<(u64, GuestPhysAddr, u64)>,
    ) -> Result<(), Errno> {
        let span = 1u64 << shift;
        let mut i = (start.max(base) - base) >> shift;
        while i < 512 {
            let lo = base + i * span;
            if lo >= end {
                break;
            }
            let slot = GuestPhysAddr(table + i * 8);
            let e = self.mem.read_u64(slot).map_err(|_| Errno::EFAULT)?;
            if shift == 12 {
                if backed(e) {
                    out.push((lo, slot, e));
                }
            } else if e & PTE_P != 0 {
                self.walk(e & PTE_ADDR_MASK, shift - 9, lo, start, end, out)?;
            }
            i += 1;
        }
        Ok(())
    }

    /// A page fault of the program at `va` (a write when `write`, an instruction fetch
    /// when `fetch`): a lazy mapping that allows the access gets its page (a fresh zero
    /// frame; the frame of zeros for a read of read-only memory); anything else is the
    /// SIGSEGV Linux would raise.
    pub fn fault(&mut self, va: u64, write: bool, fetch: bool) -> Fault {
        let Some(v) = self.vma_at(va) else {
            return Fault::Unmapped;
        };
        let (prot, lazy) = (v.prot, v.lazy);
        let allowed = if fetch {
            prot.executable()
        } else if write {
            prot.writable()
        } else {
            !prot.is_none()
        };
        if !allowed || !lazy || v.shm.is_some() || v.file.is_some() {
            return Fault::Denied;
        }
        let page = page_down(va);
        let e = self.pte(page);
        if e & PTE_PROTNONE != 0 {
            // Kept while PROT_NONE (its mapping's protection says otherwise: never made
            // so): never populated over.
            return Fault::Denied;
        }
        if e & PTE_P != 0 {
            if e & PTE_ZERO != 0 && write {
                // Protections and the zero frame disagree: never made so.
                return Fault::Denied;
            }
            // Another vCPU populated it first, or this vCPU's TLB held the absent entry:
            // flush and run again.
            self.flush_needed = true;
            return Fault::Resolved;
        }
        if self.populate_lazy(page, prot, write).is_err() {
            return Fault::OutOfMemory;
        }
        self.fault_around(page, prot, write);
        Fault::Resolved
    }

    /// Populate the other absent pages of `page`'s aligned block of [`FAULT_AROUND`]
    /// pages inside its mapping, as Linux's transparent huge pages back anonymous memory
    /// in bigger blocks than the page that faulted: a fault round trip costs as much as
    /// a thousand page-table writes on hosts that emulate guest ring 0. Not when frames run low: the
    /// pages the program touches come first.
    fn fault_around(&self, page: u64, prot: Prot, write: bool) {
        let Some(v) = self.vma_at(page) else { return };
        let block = FAULT_AROUND * PAGE;
        let lo = (page & !(block - 1)).max(v.start);
        let hi = (page & !(block - 1)).saturating_add(block).min(v.end);
        if self.frames().free_bytes() < FAULT_AROUND_RESERVE {
            return;
        }
        let mut va = lo;
        while va < hi {
            if va != page && self.pte(va) == 0 && self.populate_lazy(va, prot, write).is_err() {
                return;
            }
            va += PAGE;
        }
    }

    /// Map lazy page `page` (absent) with `prot`: the frame of zeros for a read of
    /// memory that is neither writable nor executable, else a fresh frame. ENOMEM when
    /// guest memory is used up (the caller says what that does to the program).
    fn populate_lazy(&self, page: u64, prot: Prot, write: bool) -> Result<(), Errno> {
        let mem = self.mem.clone();
        let zero = !write && !prot.writable() && !prot.executable();
        let frame = if zero {
            self.frames().zero(&mem)
        } else {
            self.frames().alloc(&mem)
        };
        let frame = frame?;
        let flags = prot.pte_flags() | if zero { PTE_ZERO } else { 0 };
        let slot = self.leaf(page, true).and_then(|s| s.ok_or(Errno::EFAULT));
        let slot = match slot {
            Ok(s) => s,
            Err(e) => {
                if !zero {
                    self.frames().release(frame.0);
                }
                return Err(e);
            }
        };
        self.mem
            .write_u64(slot, frame.0 | flags)
            .map_err(|_| Errno::EFAULT)
    }

    /// Frame `f` is the VM's trap stub page: mapped here, freed by nobody.
    pub fn share_stubs(&mut self, f: GuestPhysAddr) {
        self.stubs = Some(f.0);
    }

    /// The trap stub page's frame, once the trap area is built.
    pub fn trap_stubs(&self) -> Option<GuestPhysAddr> {
        self.stubs.map(GuestPhysAddr)
    }

    /// The CR3 value.
    pub fn cr3(&self) -> u64 {
        self.root
    }

    /// The twin of PML4 `cr3` (one of the two): loading it flushes the vCPU's TLB.
    pub fn twin(&self, cr3: u64) -> u64 {
        if cr3 == self.root {
            self.alt_root
        } else {
            self.root
        }
    }

    /// Both PML4s (see [`Self::twin`]).
    pub fn roots(&self) -> [u64; 2] {
        [self.root, self.alt_root]
    }

    /// The guest memory, shared.
    pub fn memory_arc(&self) -> Arc<GuestMemory> {
        self.mem.clone()
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Bytes of guest RAM in use by the program (its pages and page tables).
    pub fn resident_bytes(&self) -> u64 {
        self.frames().in_use() * PAGE
    }

    /// Guest RAM for programs (every address space's frames) and how much of it is free,
    /// in bytes.
    pub fn ram(&self) -> (u64, u64) {
        let f = self.frames();
        let free = f.free_bytes();
        (free + f.in_use() * PAGE, free)
    }

    /// A free frame (zeroed).
    pub fn alloc_frame(&mut self) -> Result<GuestPhysAddr, Errno> {
        let mem = self.mem.clone();
        self.frames().alloc(&mem)
    }

    /// The leaf entry's address for `va`, creating the tables on the way when `create`.
    fn leaf(&self, va: u64, create: bool) -> Result<Option<GuestPhysAddr>, Errno> {
        let mut table = self.root;
        for shift in [39u32, 30, 21] {
            let slot = GuestPhysAddr(table + ((va >> shift) & 0x1ff) * 8);
            let entry = self.mem.read_u64(slot).map_err(|_| Errno::EFAULT)?;
            if entry & PTE_P == 0 {
                if !create {
                    return Ok(None);
                }
                let mem = self.mem.clone();
                let t = self.frames().alloc_table(&mem)?;
                // Accessed already, as the leaves (see `Prot::pte_flags`).
                let entry = t.0 | PTE_P | PTE_RW | PTE_US | PTE_A;
                self.mem.write_u64(slot, entry).map_err(|_| Errno::EFAULT)?;
                if shift == 39 {
                    let twin = GuestPhysAddr(self.alt_root + ((va >> shift) & 0x1ff) * 8);
                    self.mem.write_u64(twin, entry).map_err(|_| Errno::EFAULT)?;
                }
                table = t.0;
            } else {
                table = entry & PTE_ADDR_MASK;
            }
        }
        Ok(Some(GuestPhysAddr(table + ((va >> 12) & 0x1ff) * 8)))
    }

    /// The leaf entry of `va` when it holds a frame (present, or kept while `PROT_NONE`:
    /// test [`PTE_P`] before using it as a translation); 0 when nothing is there.
    fn pte(&self, va: u64) -> u64 {
        let mut table = self.root;
        for shift in [39u32, 30, 21, 12] {
            let slot = GuestPhysAddr(table + ((va >> shift) & 0x1ff) * 8);
            let Ok(entry) = self.mem.read_u64(slot) else {
                return 0;
            };
            if shift == 12 {
                return if backed(entry) { entry } else { 0 };
            }
            if entry & PTE_P == 0 {
                return 0;
            }
            table = entry & PTE_ADDR_MASK;
        }
        0
    }

    /// Map the page at `va` to `frame` with raw leaf flags (supervisor pages included).
    pub fn map_page(&mut self, va: u64, frame: GuestPhysAddr, flags: u64) -> Result<(), Errno> {
        let slot = self.leaf(va, true)?.ok_or(Errno::EFAULT)?;
        self.mem
            .write_u64(slot, frame.0 | flags)
            .map_err(|_| Errno::EFAULT)
    }

    /// Give page `va` a fresh frame with `prot` (no-op when already present), or the
    /// shared object's frame of the page, and fill a fresh frame from `file`.
    fn populate(
        &mut self,
        va: u64,
        prot: Prot,
        file: Option<&FileBacking>,
        shm: Option<&ShmRef>,
        vma_start: u64,
    ) -> Result<(), Errno> {
        if let (Some(frame), Some(b)) = (self.populate_zeroed(va, prot, shm, vma_start)?, file) {
            self.fill(b, vma_start, &[(va, frame.0)])?;
        }
        Ok(())
    }

    /// [`Self::populate`] without the file: the fresh (zero) frame it mapped at `va`, if
    /// it mapped one of this space's own.
    fn populate_zeroed(
        &mut self,
        va: u64,
        prot: Prot,
        shm: Option<&ShmRef>,
        vma_start: u64,
    ) -> Result<Option<GuestPhysAddr>, Errno> {
        if self.pte(va) != 0 {
            return Ok(None);
        }
        if let Some(s) = shm {
            let at = s.offset.checked_add(va - vma_start);
            let frame = s.obj.frame(at.ok_or(Errno(libc::EOVERFLOW))? / PAGE);
            let frame = frame.inspect_err(|_| {
                self.note_exhausted(va);
            })?;
            self.map_page(va, frame, prot.pte_flags() | PTE_SHARED)?;
            return Ok(None);
        }
        let mem = self.mem.clone();
        let frame = self.frames().alloc(&mem);
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                self.note_exhausted(va);
                return Err(e);
            }
        };
        self.map_page(va, frame, prot.pte_flags())?;
        Ok(Some(frame))
    }

    /// Read the file contents of fresh frames `pages` ((page, frame), in page order) of
    /// a mapping of `b` that starts at `vma_start`: one `pread` straight into guest RAM
    /// per run of pages whose frames are contiguous too (the frame allocator hands out
    /// consecutive frames, so a library's mapping is usually one run). What lies past the
    /// end of the file stays zero.
    fn fill(&self, b: &FileBacking, vma_start: u64, pages: &[(u64, u64)]) -> Result<(), Errno> {
        let mut i = 0;
        while i < pages.len() {
            let (va, frame) = pages[i];
            let mut n = 1;
            while i + n < pages.len()
                && pages[i + n].0 == va + n as u64 * PAGE
                && pages[i + n].1 == frame + n as u64 * PAGE
            {
                n += 1;
            }
            let len = n as u64 * PAGE;
            let Some(off) = b.offset.checked_add(va - vma_start) else {
                return Err(Errno(libc::EOVERFLOW));
            };
            self.mem
                .read_file(GuestPhysAddr(frame), len, &b.file, off)
                .map_err(|_| Errno::EFAULT)?;
            i += n;
        }
        Ok(())
    }

    /// Drop the translations of the pages in `[start, end)` (absent ones cost nothing);
    /// their frames go to `freed` (see [`Self::retire_all`]).
    fn unmap_pages(&mut self, start: u64, end: u64, freed: &mut Vec<u64>) -> Result<(), Errno> {
        for (_, slot, e) in self.backed_leaves(start, end)? {
            self.mem.write_u64(slot, 0).map_err(|_| Errno::EFAULT)?;
            self.flush_needed = true;
            // A shared object's frame stays the object's; its translations are dropped
            // without a discard ([`Self::retire_all`]). The zero frame's content never
            // changes: nothing to drop.
            if e & PTE_ZERO != 0 {
                continue;
            }
            if e & PTE_SHARED == 0 {
                freed.push(e & PTE_ADDR_MASK);
            } else {
                freed.push((e & PTE_ADDR_MASK) | SHARED_FRAME);
            }
        }
        Ok(())
    }

    /// Retire many frames ([`frames::retire_all`]). Those marked [`SHARED_FRAME`] are a
    /// shared object's: KVM only forgets its translations to them (another process may
    /// still map them, with their contents).
    fn retire_all(&mut self, freed: Vec<u64>) -> Result<(), Errno> {
        let (shared, own): (Vec<u64>, Vec<u64>) =
            freed.into_iter().partition(|f| f & SHARED_FRAME != 0);
        self.forget_translations(shared.into_iter().map(|f| f & !SHARED_FRAME).collect())?;
        frames::retire_all(&self.mem, &self.frames, own)
    }

    /// Make KVM drop its translations to `frames` and keep their contents
    /// ([`GuestMemory::invalidate`], once per contiguous run): for frames that stay in
    /// use but must no longer be reachable through an entry that changed (a shadow page
    /// table does not see the shim's writes to the guest's tables).
    fn forget_translations(&self, mut frames: Vec<u64>) -> Result<(), Errno> {
        frames.sort_unstable();
        frames.dedup();
        for (start, len) in frames::runs(&frames) {
            self.mem
                .invalidate(GuestPhysAddr(start), len)
                .map_err(|_| Errno::EFAULT)?;
        }
        Ok(())
    }

    /// Free a frame that a translation pointed at. KVM may still hold a translation to
    /// it (a shadow page table does not see the shim's writes to the guest's tables),
    /// so its host page is discarded: the MMU notifier drops those translations.
    fn retire(&mut self, frame: u64) -> Result<(), Errno> {
        self.mem
            .discard(GuestPhysAddr(frame), PAGE)
            .map_err(|_| Errno::EFAULT)?;
        self.frames().release(frame);
        Ok(())
    }

    /// Whether `[start, end)` overlaps no mapping.
    pub fn is_free(&self, start: u64, end: u64) -> bool {
        if start < MMAP_MIN || end > USER_END || start >= end {
            return false;
        }
        match self.vmas.range(..end).next_back() {
            Some((_, v)) => v.end <= start,
            None => true,
        }
    }

    /// The highest free range of `len` bytes below MMAP_TOP.
    pub fn find_free(&self, len: u64) -> Option<u64> {
        let mut top = MMAP_TOP;
        for (_, v) in self.vmas.range(..MMAP_TOP).rev() {
            if v.end <= top && top - v.end >= len {
                return Some(top - len);
            }
            top = top.min(v.start);
        }
        (top >= len && top - len >= MMAP_MIN).then(|| top - len)
    }

    /// Split the VMA containing `at` (if any) so that a VMA boundary lies at `at`.
    fn split_at(&mut self, at: u64) {
        let Some((&start, v)) = self.vmas.range(..at).next_back() else {
            return;
        };
        if v.end <= at || start == at {
            return;
        }
        let mut tail = v.clone();
        tail.start = at;
        if let Some(f) = &mut tail.file {
            f.offset += at - start;
        }
        if let Some(s) = &mut tail.shm {
            // In range: `map` checked the mapping's last offset.
            s.offset = s.offset.wrapping_add(at - start);
        }
        if let Some(v) = self.vmas.get_mut(&start) {
            v.end = at;
        }
        self.vmas.insert(at, tail);
    }

    /// Map `[start, start + len)` (page-aligned) with `prot`, filled from `file` or zero.
    /// Replaces whatever was there (the caller decided that is allowed).
    pub fn map(
        &mut self,
        start: u64,
        len: u64,
        prot: Prot,
        file: Option<FileBacking>,
        name: &'static str,
    ) -> Result<(), Errno> {
        self.map_vma(start, len, prot, file, None, name, false)
    }

    /// A fresh private anonymous mapping: [`Self::map`], but read-only (not executable)
    /// memory maps the frame of zeros ([`PTE_ZERO`]) instead of frames of its own, and
    /// a `lazy` mapping ([`Vma::lazy`]) maps nothing until the program touches it.
    pub fn map_anonymous(
        &mut self,
        start: u64,
        len: u64,
        prot: Prot,
        lazy: bool,
    ) -> Result<(), Errno> {
        if lazy {
            return self.map_vma(start, len, prot, None, None, "", true);
        }
        if prot.is_none() || prot.writable() || prot.executable() {
            return self.map(start, len, prot, None, "");
        }
        self.map(start, len, Prot::NONE, None, "")?;
        let zero = {
            let mem = self.mem.clone();
            self.frames().zero(&mem)
        };
        let zero = zero.inspect_err(|_| {
            self.note_exhausted(start);
        })?;
        let mut va = start;
        while va < start + len {
            if let Err(e) = self.map_page(va, zero, prot.pte_flags() | PTE_ZERO) {
                let _ = self.unmap(start, len);
                return Err(e);
            }
            va += PAGE;
        }
        if let Some(v) = self.vmas.get_mut(&start) {
            v.prot = prot;
        }
        Ok(())
    }

    /// [`Self::map`] of a shared object's pages (`MAP_SHARED`; `file` names the file, if
    /// any, for the mapping records).
    pub fn map_shared(
        &mut self,
        start: u64,
        len: u64,
        prot: Prot,
        file: Option<FileBacking>,
        shm: ShmRef,
    ) -> Result<(), Errno> {
        self.map_vma(start, len, prot, file, Some(shm), "", false)
    }

    /// [`Self::map_shared`] of a special mapping the shim makes (`[vdso]`, `[vvar]`):
    /// `/proc/PID/maps` shows `name`, and the mapping is recorded by it.
    pub fn map_special(
        &mut self,
        start: u64,
        len: u64,
        prot: Prot,
        shm: ShmRef,
        name: &'static str,
    ) -> Result<(), Errno> {
        self.map_vma(start, len, prot, None, Some(shm), name, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn map_vma(
        &mut self,
        start: u64,
        len: u64,
        prot: Prot,
        file: Option<FileBacking>,
        shm: Option<ShmRef>,
        name: &'static str,
        lazy: bool,
    ) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::ENOMEM)?;
        if !start.is_multiple_of(PAGE)
            || len == 0
            || !len.is_multiple_of(PAGE)
            || start < MMAP_MIN
            || end > USER_END
        {
            return Err(Errno::EINVAL);
        }
        self.unmap(start, len)?;
        if let Some(b) = &file {
            self.maps.push(MapRecord {
                space: self.space,
                start,
                len,
                path: b.path.clone(),
                offset: b.offset,
                executable: prot.executable(),
            });
        } else if prot.executable() && !name.is_empty() {
            // A named special mapping (`[vdso]`): recorded by its name, as perf does.
            self.maps.push(MapRecord {
                path: PathBuf::from(name),
                ..MapRecord::anonymous(self.space, start, len)
            });
        } else if prot.executable() {
            self.maps.push(MapRecord::anonymous(self.space, start, len));
        }
        if !prot.is_none() && !lazy {
            let mut va = start;
            // The fresh frames a file's contents go to, read in runs once all are mapped.
            let mut fresh = Vec::new();
            while va < end {
                match self.populate_zeroed(va, prot, shm.as_ref(), start) {
                    Ok(Some(frame)) if file.is_some() => fresh.push((va, frame.0)),
                    Ok(_) => {}
                    Err(e) => {
                        // Leave nothing half-made behind.
                        self.unbuild(start, va);
                        return Err(e);
                    }
                }
                va += PAGE;
            }
            if let Some(b) = &file
                && let Err(e) = self.fill(b, start, &fresh)
            {
                self.unbuild(start, end);
                return Err(e);
            }
        }
        self.vmas.insert(
            start,
            Vma {
                start,
                end,
                prot,
                file,
                name,
                shm,
                lazy,
            },
        );
        Ok(())
    }

    /// Give back the pages of `[start, end)` of a mapping that failed half-made (not in
    /// the mapping list yet, so [`Self::unmap`] would not see them).
    fn unbuild(&mut self, start: u64, end: u64) {
        let mut freed = Vec::new();
        let _ = self.unmap_pages(start, end, &mut freed);
        let _ = self.retire_all(freed);
    }

    /// `munmap`: drop `[start, start + len)` (page-aligned; holes are fine).
    pub fn unmap(&mut self, start: u64, len: u64) -> Result<(), Errno> {
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        if !start.is_multiple_of(PAGE) || end > USER_END {
            return Err(Errno::EINVAL);
        }
        let end = page_up(end).ok_or(Errno::EINVAL)?;
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.vmas.range(start..end).map(|(&s, _)| s).collect();
        let mut freed = Vec::new();
        for s in inside {
            if let Some(v) = self.vmas.remove(&s) {
                self.unmap_pages(v.start, v.end, &mut freed)?;
            }
        }
        self.retire_all(freed)
    }

    /// `mprotect`: every page of `[start, start + len)` must be mapped (else ENOMEM).
    pub fn protect(&mut self, start: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        let end = page_up(start.checked_add(len).ok_or(Errno::ENOMEM)?).ok_or(Errno::ENOMEM)?;
        if !start.is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        // Mapped without holes?
        let mut at = start;
        for (_, v) in self.vmas.range(..end) {
            if v.end <= at {
                continue;
            }
            if v.start > at {
                return Err(Errno::ENOMEM);
            }
            at = v.end;
        }
        if at < end {
            return Err(Errno::ENOMEM);
        }
        // A shared mapping of a file opened read-only cannot become writable.
        let denied = self.vmas.range(..end).any(|(_, v)| {
            v.end > start && prot.writable() && v.shm.as_ref().is_some_and(|s| !s.may_write)
        });
        if denied {
            return Err(Errno(libc::EACCES));
        }
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.vmas.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            let Some(v) = self.vmas.get(&s).cloned() else {
                continue;
            };
            if v.file.is_none() && prot.executable() && !v.prot.executable() {
                // Anonymous memory turned into code (a JIT's W^X flip).
                self.maps
                    .push(MapRecord::anonymous(self.space, v.start, v.end - v.start));
            }
            if prot.is_none() {
                self.make_inaccessible(v.start, v.end)?;
            } else if v.lazy {
                // Untouched pages stay absent: the fault maps them with the new `prot`.
                for (va, _, e) in self.backed_leaves(v.start, v.end)? {
                    self.reprotect(va, e, prot)?;
                }
            } else {
                let mut va = v.start;
                while va < v.end {
                    let e = self.pte(va);
                    if e == 0 {
                        self.populate(va, prot, v.file.as_ref(), v.shm.as_ref(), v.start)?;
                    } else {
                        self.reprotect(va, e, prot)?;
                    }
                    va += PAGE;
                }
            }
            if let Some(v) = self.vmas.get_mut(&s) {
                v.prot = prot;
            }
        }
        Ok(())
    }

    /// `mprotect(PROT_NONE)` of `[start, end)`: every present page keeps its frame, not
    /// present any more ([`PTE_PROTNONE`]). KVM forgets its translations to the frames
    /// (their contents stay) and every vCPU flushes its TLB, so no access gets through.
    fn make_inaccessible(&mut self, start: u64, end: u64) -> Result<(), Errno> {
        let mut kept = Vec::new();
        for (_, slot, e) in self.backed_leaves(start, end)? {
            if e & PTE_P == 0 {
                continue;
            }
            self.mem
                .write_u64(slot, (e & PTE_FRAME_BITS) | PTE_PROTNONE)
                .map_err(|_| Errno::EFAULT)?;
            kept.push(e & PTE_ADDR_MASK);
        }
        if !kept.is_empty() {
            self.flush_needed = true;
        }
        self.forget_translations(kept)
    }

    /// Give backed page `va` (leaf entry `e`, present or [`PTE_PROTNONE`]) protection
    /// `prot` (not `PROT_NONE`: see [`Self::make_inaccessible`]).
    fn reprotect(&mut self, va: u64, e: u64, prot: Prot) -> Result<(), Errno> {
        if e & PTE_PROTNONE != 0 {
            // Present again, on the frame it kept (no translation to it is left, so none
            // can outlive the change); the zero frame's pages get frames of their own
            // when they become writable or executable, as below.
            let slot = self.leaf(va, false)?.ok_or(Errno::EFAULT)?;
            let own = e & PTE_ZERO != 0 && (prot.writable() || prot.executable());
            let entry = if own {
                let mem = self.mem.clone();
                let f = self.frames().alloc(&mem);
                let f = f.inspect_err(|_| {
                    self.note_exhausted(va);
                })?;
                f.0 | prot.pte_flags()
            } else {
                (e & PTE_FRAME_BITS) | prot.pte_flags()
            };
            return self.mem.write_u64(slot, entry).map_err(|_| Errno::EFAULT);
        }
        if e & PTE_ZERO != 0 {
            // Still read-only zeros, or a frame of its own (zero) from now on.
            let slot = self.leaf(va, false)?.ok_or(Errno::EFAULT)?;
            let (frame, flags) = if prot.writable() || prot.executable() {
                let mem = self.mem.clone();
                let f = self.frames().alloc(&mem);
                let f = f.inspect_err(|_| {
                    self.note_exhausted(va);
                })?;
                (f.0, prot.pte_flags())
            } else {
                (e & PTE_ADDR_MASK, prot.pte_flags() | PTE_ZERO)
            };
            if e != frame | flags {
                self.mem
                    .write_u64(slot, frame | flags)
                    .map_err(|_| Errno::EFAULT)?;
                self.flush_needed = true;
            }
        } else if e & PTE_SHARED != 0 {
            // A shared frame keeps its place (other processes map it): new
            // flags in place, and every vCPU of the process flushes.
            let flags = prot.pte_flags() | PTE_SHARED;
            if e & !PTE_ADDR_MASK != flags {
                let slot = self.leaf(va, false)?.ok_or(Errno::EFAULT)?;
                self.mem
                    .write_u64(slot, (e & PTE_ADDR_MASK) | flags)
                    .map_err(|_| Errno::EFAULT)?;
                self.retire_all(vec![(e & PTE_ADDR_MASK) | SHARED_FRAME])?;
                self.flush_needed = true;
            }
        } else if e & !PTE_ADDR_MASK != prot.pte_flags() {
            // New permissions on a new frame (see retire): no translation
            // with the old ones can outlive the change.
            let slot = self.leaf(va, false)?.ok_or(Errno::EFAULT)?;
            let old = e & PTE_ADDR_MASK;
            let mem = self.mem.clone();
            let new = self.frames().alloc(&mem)?;
            let mut page = vec![0u8; PAGE as usize];
            self.mem
                .read(GuestPhysAddr(old), &mut page)
                .map_err(|_| Errno::EFAULT)?;
            self.mem.write(new, &page).map_err(|_| Errno::EFAULT)?;
            self.mem
                .write_u64(slot, new.0 | prot.pte_flags())
                .map_err(|_| Errno::EFAULT)?;
            self.retire(old)?;
            self.flush_needed = true;
        }
        Ok(())
    }

    /// `madvise(MADV_DONTNEED)` on private anonymous memory: the pages read as zero again.
    pub fn discard(&mut self, start: u64, len: u64) -> Result<(), Errno> {
        let end = page_up(start.checked_add(len).ok_or(Errno::EINVAL)?).ok_or(Errno::EINVAL)?;
        let mut freed = Vec::new();
        // PROT_NONE pages too: their contents go, as on Linux.
        for (va, slot, e) in self.backed_leaves(start, end)? {
            let Some(v) = self.vma_at(va) else { continue };
            if v.file.is_some() || v.shm.is_some() {
                continue;
            }
            if v.lazy {
                // Absent again: its frame goes back to the pool (and out of the count).
                self.mem.write_u64(slot, 0).map_err(|_| Errno::EFAULT)?;
                self.flush_needed = true;
                if e & PTE_ZERO == 0 {
                    freed.push(e & PTE_ADDR_MASK);
                }
            } else if e & PTE_ZERO == 0 {
                self.mem
                    .discard(GuestPhysAddr(e & PTE_ADDR_MASK), PAGE)
                    .map_err(|_| Errno::EFAULT)?;
            }
        }
        self.retire_all(freed)
    }

    /// `brk`: move the program break; returns the (possibly unchanged) break.
    pub fn set_brk(&mut self, want: u64) -> u64 {
        if want < self.brk_start {
            return self.brk;
        }
        let (Some(old_top), Some(new_top)) = (page_up(self.brk), page_up(want)) else {
            return self.brk;
        };
        if new_top > old_top {
            if !self.is_free(old_top, new_top)
                || self
                    .map(old_top, new_top - old_top, Prot::RW, None, "[heap]")
                    .is_err()
            {
                return self.brk;
            }
        } else if new_top < old_top && self.unmap(new_top, old_top - new_top).is_err() {
            return self.brk;
        }
        self.brk = want;
        self.brk
    }

    /// The guest-physical address of user byte `va`, if a present user page (writable
    /// when `write`) holds it; `None` for an absent page of a lazy mapping that allows
    /// the access (it reads as zeros; [`Self::user_phys_populated`] backs it).
    fn user_phys(&self, va: u64, write: bool) -> Result<Option<GuestPhysAddr>, Errno> {
        if va >= USER_END {
            return Err(Errno::EFAULT);
        }
        let e = self.pte(va);
        if e == 0 {
            let lazy = self.lazy_vma_at(va).is_some_and(|v| {
                if write {
                    v.prot.writable()
                } else {
                    !v.prot.is_none()
                }
            });
            return if lazy { Ok(None) } else { Err(Errno::EFAULT) };
        }
        // A PROT_NONE page (not present) fails here too.
        let need = PTE_P | PTE_US | if write { PTE_RW } else { 0 };
        if e & need != need {
            return Err(Errno::EFAULT);
        }
        Ok(Some(GuestPhysAddr((e & PTE_ADDR_MASK) | (va & (PAGE - 1)))))
    }

    /// The private anonymous lazy mapping holding `va`, if one does.
    fn lazy_vma_at(&self, va: u64) -> Option<&Vma> {
        self.vma_at(va)
            .filter(|v| v.lazy && v.file.is_none() && v.shm.is_none())
    }

    /// [`Self::user_phys`], with an absent lazy page backed first (the shim writes it).
    fn user_phys_populated(&self, va: u64, write: bool) -> Result<GuestPhysAddr, Errno> {
        if let Some(pa) = self.user_phys(va, write)? {
            return Ok(pa);
        }
        self.populate_absent(va)?;
        self.user_phys(va, write)?.ok_or(Errno::EFAULT)
    }

    /// Back absent page `va` of a lazy mapping with a fresh frame, whatever its
    /// protection (the shim writes it on the program's behalf).
    fn populate_absent(&self, va: u64) -> Result<(), Errno> {
        let prot = self.lazy_vma_at(va).ok_or(Errno::EFAULT)?.prot;
        self.populate_lazy(page_down(va), prot, true).map_err(|_| {
            self.note_exhausted(page_down(va));
            Errno::EFAULT
        })
    }

    /// Copy program memory at `va` into `buf` (EFAULT unless every byte is readable).
    /// Untouched pages of lazy mappings read as zeros and stay untouched.
    pub fn read(&self, va: GuestVirtAddr, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < buf.len() {
            let a = va.0.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let n = ((PAGE - (a & (PAGE - 1))) as usize).min(buf.len() - done);
            match self.user_phys(a, false)? {
                Some(pa) => self
                    .mem
                    .read(pa, &mut buf[done..done + n])
                    .map_err(|_| Errno::EFAULT)?,
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// Copy `data` into program memory at `va` (EFAULT unless every byte is writable).
    pub fn write(&self, va: GuestVirtAddr, data: &[u8]) -> Result<(), Errno> {
        // Check the whole range first so a fault writes nothing.
        self.check_writable(va, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let a = va.0 + done as u64;
            let pa = self.user_phys_populated(a, true)?;
            let n = ((PAGE - (a & (PAGE - 1))) as usize).min(data.len() - done);
            self.mem
                .write(pa, &data[done..done + n])
                .map_err(|_| Errno::EFAULT)?;
            done += n;
        }
        Ok(())
    }

    /// EFAULT unless [`Self::write`] of `len` bytes at `va` would succeed: for a call
    /// that must not consume its input when the output cannot be written (a `read` from
    /// a pipe leaves the bytes in it, as Linux does).
    pub fn check_writable(&self, va: GuestVirtAddr, len: usize) -> Result<(), Errno> {
        let mut a = page_down(va.0);
        let end = va.0.checked_add(len as u64).ok_or(Errno::EFAULT)?;
        while a < end {
            self.user_phys(a.max(va.0), true)?;
            a += PAGE;
        }
        Ok(())
    }

    /// Write into the program's memory ignoring page protection (the loader filling
    /// read-only segments); the pages must still be present user pages, or pages of a
    /// lazy mapping (backed first).
    pub fn poke(&self, va: u64, data: &[u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < data.len() {
            let a = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let e = self.pte(a);
            if e & PTE_ZERO != 0 {
                return Err(Errno::EFAULT);
            }
            if e == 0 {
                self.populate_absent(a)?;
            }
            let pa = self.user_phys(a, false)?.ok_or(Errno::EFAULT)?;
            let n = ((PAGE - (a & (PAGE - 1))) as usize).min(data.len() - done);
            self.mem
                .write(pa, &data[done..done + n])
                .map_err(|_| Errno::EFAULT)?;
            done += n;
        }
        Ok(())
    }

    pub fn read_u32(&self, va: u64) -> Result<u32, Errno> {
        let mut b = [0u8; 4];
        self.read(GuestVirtAddr(va), &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn read_u64(&self, va: u64) -> Result<u64, Errno> {
        let mut b = [0u8; 8];
        self.read(GuestVirtAddr(va), &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A NUL-terminated string of at most `max` bytes (ENAMETOOLONG past it).
    pub fn read_cstr(&self, va: u64, max: usize) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        let mut a = va;
        loop {
            let n = (PAGE - (a & (PAGE - 1))) as usize;
            let mut chunk = vec![0u8; n];
            if let Some(pa) = self.user_phys(a, false)? {
                self.mem.read(pa, &mut chunk).map_err(|_| Errno::EFAULT)?;
            }
            if let Some(z) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..z]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
            if out.len() > max {
                return Err(Errno(libc::ENAMETOOLONG));
            }
            a = a.checked_add(n as u64).ok_or(Errno::EFAULT)?;
        }
    }

    /// The mapping holding `va`.
    pub fn vma_at(&self, va: u64) -> Option<&Vma> {
        self.vmas
            .range(..=va)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.end > va)
    }

    /// `mremap` moving private anonymous memory: `[from, from + len)`, inside one
    /// mapping, becomes the mapping `[to, to + new_len)` (free, `new_len >= len`; all
    /// page-aligned). Its backed pages move with their frames, as Linux moves page
    /// tables: contents, protection and `PROT_NONE` pages kept, no copy, and a lazy
    /// mapping's untouched pages cost nothing. The grown part is backed as `mprotect`
    /// backs a page made accessible.
    pub fn move_anonymous(
        &mut self,
        from: u64,
        len: u64,
        to: u64,
        new_len: u64,
    ) -> Result<(), Errno> {
        let aligned = [from, len, to, new_len]
            .iter()
            .all(|v| v.is_multiple_of(PAGE));
        let end = from.checked_add(len).ok_or(Errno::EINVAL)?;
        let v = self.vma_at(from).ok_or(Errno::EFAULT)?;
        if !aligned || new_len < len || v.end < end || v.file.is_some() || v.shm.is_some() {
            return Err(Errno::EINVAL);
        }
        let (prot, lazy) = (v.prot, v.lazy);
        let to_end = to.checked_add(new_len).ok_or(Errno::ENOMEM)?;
        if !self.is_free(to, to_end) {
            return Err(Errno::ENOMEM);
        }
        // Inaccessible and empty first; the tables its pages need before any moves, so
        // that running out of frames leaves the source whole.
        self.map_vma(to, new_len, Prot::NONE, None, None, "", lazy)?;
        let leaves = self.backed_leaves(from, end)?;
        let mut slots = Vec::with_capacity(leaves.len());
        for &(va, _, _) in &leaves {
            match self.leaf(to + (va - from), true) {
                Ok(Some(slot)) => slots.push(slot),
                Ok(None) | Err(_) => {
                    self.note_exhausted(to + (va - from));
                    let _ = self.unmap(to, new_len);
                    return Err(Errno::ENOMEM);
                }
            }
        }
        // The frames of present pages: KVM forgets their translations at `from`.
        let mut moved = Vec::new();
        for ((_, old, e), new) in leaves.into_iter().zip(slots) {
            self.mem.write_u64(new, e).map_err(|_| Errno::EFAULT)?;
            self.mem.write_u64(old, 0).map_err(|_| Errno::EFAULT)?;
            if e & PTE_P != 0 {
                moved.push(e & PTE_ADDR_MASK);
            }
        }
        self.flush_needed = true;
        self.forget_translations(moved)?;
        // Nothing is left to free at `from`; `to` gets the protection (and the grown
        // part its pages).
        self.unmap(from, len)?;
        self.protect(to, new_len, prot)
    }

    /// The guest-physical address of byte `va` when a shared object's page holds it
    /// (the key of a futex in shared memory).
    pub fn shared_phys(&self, va: u64) -> Option<u64> {
        if va >= USER_END {
            return None;
        }
        let e = self.pte(va);
        (e & (PTE_P | PTE_SHARED) == PTE_P | PTE_SHARED)
            .then_some((e & PTE_ADDR_MASK) | (va & (PAGE - 1)))
    }

    /// `msync`: write the file pages of the shared mappings in `[start, end)` back.
    pub fn write_back(&self, start: u64, end: u64) -> Result<(), Errno> {
        for v in self.vmas.range(..end).map(|(_, v)| v) {
            let Some(s) = &v.shm else { continue };
            if v.end <= start {
                continue;
            }
            let from = s.offset.saturating_add(start.max(v.start) - v.start);
            let to = s.offset.saturating_add(end.min(v.end) - v.start);
            s.obj.write_back(from / PAGE, to.div_ceil(PAGE))?;
        }
        Ok(())
    }

    /// Write every shared file page this space maps back (the process ends).
    pub fn write_back_all(&self) {
        for v in self.vmas.values() {
            if let Some(s) = &v.shm {
                let _ = s.obj.write_back_all();
            }
        }
    }

    /// Unmap every shared mapping (a process ending: its attachments end with it, before
    /// its parent can see it gone, as on Linux).
    pub fn unmap_shared(&mut self) {
        let shared: Vec<(u64, u64)> = self
            .vmas
            .values()
            .filter(|v| v.shm.is_some())
            .map(|v| (v.start, v.end - v.start))
            .collect();
        for (start, len) in shared {
            let _ = self.unmap(start, len);
        }
    }

    /// The mappings, in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &Vma> {
        self.vmas.values()
    }
}

/// The pages a lazy mapping's fault populates at once (an aligned block: 64 KiB).
const FAULT_AROUND: u64 = 16;

/// Free guest memory below which a fault populates only the page that faulted.
const FAULT_AROUND_RESERVE: u64 = 4 << 20;

/// Marks a frame given to [`AddressSpace::retire_all`] as a shared object's (bit 0: frames
/// are page-aligned).
const SHARED_FRAME: u64 = 1;

/// The root of a [hollow](AddressSpace::hollow) space: no guest-physical address.
const HOLLOW: u64 = !(PAGE - 1);

impl Drop for AddressSpace {
    /// Every frame of the space (pages, page tables, both roots) goes back to the pool,
    /// discarded first so no stale translation or content outlives the process.
    fn drop(&mut self) {
        if self.root == HOLLOW {
            return;
        }
        let mut freed = Vec::new();
        collect_frames(&self.mem, self.root, 4, &mut freed);
        freed.retain(|&f| Some(f) != self.stubs);
        freed.push(self.root);
        freed.push(self.alt_root);
        let _ = self.retire_all(freed);
    }
}

/// The frames under page table `table` (`level` 4 = PML4): tables and leaves.
fn collect_frames(mem: &GuestMemory, table: u64, level: u32, out: &mut Vec<u64>) {
    for i in 0..512u64 {
        let Ok(e) = mem.read_u64(GuestPhysAddr(table + 8 * i)) else {
            continue;
        };
        // A leaf kept while PROT_NONE holds a frame too.
        let holds = if level > 1 { e & PTE_P != 0 } else { backed(e) };
        if !holds {
            continue;
        }
        let f = e & PTE_ADDR_MASK;
        if level > 1 {
            collect_frames(mem, f, level - 1, out);
        } else if e & PTE_ZERO != 0 {
            // The pool's frame of zeros: nobody's to free.
            continue;
        } else if e & PTE_SHARED != 0 {
            // A shared object's frame: the object frees it (KVM forgets this space's
            // translations to it, see `retire_all`).
            out.push(f | SHARED_FRAME);
            continue;
        }
        out.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> AddressSpace {
        let mem = Arc::new(GuestMemory::new(16 << 20).unwrap());
        AddressSpace::new(mem, 1 << 20).unwrap()
    }

    #[test]
    fn read_only_anonymous_memory_maps_the_zero_frame_until_it_is_made_writable() {
        let mut s = space();
        let base = s.frames().in_use();
        // Four times the guest's RAM, as Starlark reserves 4 GiB of a 3 GiB VM.
        let (start, len) = (0x1000_0000, 64 << 20);
        s.map_anonymous(start, len, Prot(libc::PROT_READ as u32), false)
            .unwrap();
        let tables = s.frames().in_use() - base;
        assert!(tables < 40, "{tables} frames for 16384 pages of zeros");
        let mut b = [1u8; 16];
        s.read(GuestVirtAddr(start + len - 16), &mut b).unwrap();
        assert_eq!(b, [0; 16]);
        assert_eq!(s.write(GuestVirtAddr(start), b"x"), Err(Errno::EFAULT));
        assert_eq!(s.poke(start, b"x"), Err(Errno::EFAULT));
        // Writable: a frame of its own, zero; the other pages still read the zero frame.
        s.protect(start + PAGE, PAGE, Prot::RW).unwrap();
        s.write(GuestVirtAddr(start + PAGE), b"mine").unwrap();
        s.read(GuestVirtAddr(start + PAGE), &mut b[..4]).unwrap();
        assert_eq!(&b[..4], b"mine");
        s.read(GuestVirtAddr(start), &mut b).unwrap();
        assert_eq!(b, [0; 16]);
        let child = s.fork().unwrap();
        child.read(GuestVirtAddr(start + 2 * PAGE), &mut b).unwrap();
        assert_eq!(b, [0; 16]);
        child
            .read(GuestVirtAddr(start + PAGE), &mut b[..4])
            .unwrap();
        assert_eq!(&b[..4], b"mine");
        drop(child);
        // Back to read-only and unmapped: only the one page's frame was ever its own.
        s.protect(start, len, Prot(libc::PROT_READ as u32)).unwrap();
        s.read(GuestVirtAddr(start + PAGE), &mut b[..4]).unwrap();
        assert_eq!(&b[..4], b"mine");
        let before = s.frames().in_use();
        s.unmap(start, len).unwrap();
        assert_eq!(s.frames().in_use(), before - 1);
        // Executable or writable anonymous memory still gets frames of its own.
        s.map_anonymous(
            start,
            PAGE,
            Prot(libc::PROT_READ as u32 | libc::PROT_EXEC as u32),
            false,
        )
        .unwrap();
        assert_eq!(s.pte(start) & PTE_ZERO, 0);
    }

    #[test]
    fn mapped_memory_is_readable_and_writable_through_the_page_tables() {
        let mut s = space();
        s.map(0x40_0000, 3 * PAGE, Prot::RW, None, "").unwrap();
        s.write(GuestVirtAddr(0x40_0ffe), b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read(GuestVirtAddr(0x40_0ffe), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        // The CPU's view (the shared page walker) agrees.
        let pa = s
            .memory()
            .translate(s.cr3(), GuestVirtAddr(0x40_1000))
            .unwrap();
        // The twin root translates the same way.
        let twin = s.twin(s.cr3());
        assert_eq!(
            s.memory()
                .translate(twin, GuestVirtAddr(0x40_1000))
                .unwrap(),
            pa
        );
        let mut c = [0u8; 3];
        s.memory().read(pa, &mut c).unwrap();
        assert_eq!(&c, b"llo");
    }

    fn file_backing(bytes: &[u8], offset: u64) -> FileBacking {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        FileBacking {
            path: PathBuf::from("/test/file"),
            file: Arc::new(f),
            offset,
        }
    }

    #[test]
    fn a_file_mapping_holds_the_file_from_its_offset_and_zeros_past_its_end() {
        // 3.5 pages of numbered bytes; the mapping starts at the file's second page
        // and is 4 pages long: 2.5 pages of the file, then zeros.
        let bytes: Vec<u8> = (0..7 * PAGE / 2).map(|i| (i / 7) as u8).collect();
        let mut s = space();
        // Frames given back earlier are handed out first: two unmapped apart come back
        // in reverse order and not next to each other, then fresh ones follow (one run).
        // The contents must not depend on how the frames fall into runs.
        s.map(0x60_0000, 3 * PAGE, Prot::RW, None, "").unwrap();
        s.write(GuestVirtAddr(0x60_0000), &[0x55; 3 * PAGE as usize])
            .unwrap();
        s.unmap(0x60_0000, PAGE).unwrap();
        s.unmap(0x60_2000, PAGE).unwrap();
        let read = Prot(libc::PROT_READ as u32);
        s.map(
            0x40_0000,
            4 * PAGE,
            read,
            Some(file_backing(&bytes, PAGE)),
            "",
        )
        .unwrap();
        let mut got = vec![0u8; 4 * PAGE as usize];
        s.read(GuestVirtAddr(0x40_0000), &mut got).unwrap();
        let file_part = &bytes[PAGE as usize..];
        assert_eq!(&got[..file_part.len()], file_part);
        assert!(got[file_part.len()..].iter().all(|&b| b == 0));
        // The mapping record names the file and its offset (what the symbolizer uses).
        let rec = s.maps.last().unwrap();
        assert_eq!(
            (rec.start, rec.len, rec.offset),
            (0x40_0000, 4 * PAGE, PAGE)
        );
    }

    #[test]
    fn writes_to_a_private_file_mapping_stay_in_guest_memory() {
        let bytes = vec![7u8; 2 * PAGE as usize];
        let b = file_backing(&bytes, 0);
        let file = b.file.clone();
        let mut s = space();
        s.map(0x40_0000, 2 * PAGE, Prot::RW, Some(b), "").unwrap();
        s.write(GuestVirtAddr(0x40_0ff0), &[9u8; 32]).unwrap();
        let mut got = [0u8; 32];
        s.read(GuestVirtAddr(0x40_0ff0), &mut got).unwrap();
        assert_eq!(got, [9u8; 32]);
        let mut on_disk = vec![0u8; 2 * PAGE as usize];
        let n = crate::linux::host::pread_full(&file, &mut on_disk, 0);
        assert_eq!((n, on_disk), (bytes.len(), bytes));
    }

    #[test]
    fn every_guest_pointer_outside_a_user_mapping_is_efault() {
        let mut s = space();
        s.map(0x40_0000, PAGE, Prot(libc::PROT_READ as u32), None, "")
            .unwrap();
        let mut b = [0u8; 8];
        for va in [0u64, 0x3f_fff8, 0x40_0ffc, u64::MAX - 3, USER_END, 1 << 63] {
            assert_eq!(
                s.read(GuestVirtAddr(va), &mut b),
                Err(Errno::EFAULT),
                "{va:#x}"
            );
        }
        // Read-only: reads work, writes fault and write nothing.
        assert!(s.read(GuestVirtAddr(0x40_0000), &mut b).is_ok());
        assert_eq!(s.write(GuestVirtAddr(0x40_0000), b"x"), Err(Errno::EFAULT));
        // A string running off the end of the mapping faults.
        s.poke(0x40_0000, &[b'a'; PAGE as usize]).unwrap();
        assert_eq!(s.read_cstr(0x40_0000, 1 << 20), Err(Errno::EFAULT));
        assert_eq!(s.read_cstr(0x40_0000, 16), Err(Errno(libc::ENAMETOOLONG)));
        // Supervisor pages are not the program's.
        let f = s.alloc_frame().unwrap();
        s.map_page(0x50_0000, f, PTE_P | PTE_RW).unwrap();
        assert_eq!(s.read(GuestVirtAddr(0x50_0000), &mut b), Err(Errno::EFAULT));
    }

    #[test]
    fn unmap_and_protect_split_mappings() {
        let mut s = space();
        s.map(0x40_0000, 4 * PAGE, Prot::RW, None, "").unwrap();
        s.unmap(0x40_1000, PAGE).unwrap();
        assert_eq!(s.vmas().count(), 2);
        let mut b = [0u8; 1];
        assert!(s.read(GuestVirtAddr(0x40_1000), &mut b).is_err());
        assert!(s.read(GuestVirtAddr(0x40_2000), &mut b).is_ok());
        // mprotect over the hole is ENOMEM; over mapped pages it works.
        assert_eq!(
            s.protect(0x40_0000, 3 * PAGE, Prot::NONE),
            Err(Errno::ENOMEM)
        );
        s.protect(0x40_2000, PAGE, Prot::NONE).unwrap();
        assert!(s.read(GuestVirtAddr(0x40_2000), &mut b).is_err());
        s.protect(0x40_2000, PAGE, Prot::RW).unwrap();
        s.write(GuestVirtAddr(0x40_2000), b"z").unwrap();
        assert_eq!(s.vmas().count(), 3);
    }

    #[test]
    fn a_mapping_that_does_not_fit_gives_back_what_it_took() {
        let mut s = space();
        let base = s.frames().in_use();
        assert_eq!(
            s.map(0x1000_0000, 64 << 20, Prot::RW, None, ""),
            Err(Errno::ENOMEM)
        );
        // Only the page tables it built stay (a few frames, not the whole VM).
        assert!(s.frames().in_use() - base < 16, "{}", s.frames().in_use());
        s.map(0x1000_0000, 8 << 20, Prot::RW, None, "").unwrap();
    }

    #[test]
    fn running_out_of_frames_is_enomem_and_recorded() {
        let mut s = space();
        let too_big = 32 << 20;
        assert_eq!(
            s.map(0x40_0000, too_big, Prot::RW, None, ""),
            Err(Errno::ENOMEM)
        );
        assert!(s.exhausted().is_some());
        // Nothing half-made stays behind; the memory is usable again.
        assert_eq!(s.vmas().count(), 0);
        s.map(0x40_0000, 8 << 20, Prot::RW, None, "").unwrap();
    }

    #[test]
    fn a_forked_space_is_a_copy_and_its_frames_come_back_when_it_is_dropped() {
        let mut s = space();
        s.map(0x40_0000, 4 * PAGE, Prot::RW, None, "").unwrap();
        s.write(GuestVirtAddr(0x40_1000), b"parent").unwrap();
        let before = s.resident_bytes();
        let child = s.fork().unwrap();
        assert_ne!(child.cr3(), s.cr3());
        let mut b = [0u8; 6];
        child.read(GuestVirtAddr(0x40_1000), &mut b).unwrap();
        assert_eq!(&b, b"parent");
        // Private copies: a write in one is not seen in the other.
        child.write(GuestVirtAddr(0x40_1000), b"child!").unwrap();
        s.read(GuestVirtAddr(0x40_1000), &mut b).unwrap();
        assert_eq!(&b, b"parent");
        assert!(s.resident_bytes() > before, "the pool is shared");
        drop(child);
        assert_eq!(
            s.resident_bytes(),
            before,
            "every frame of the child came back"
        );
    }

    fn shared_region(s: &AddressSpace) -> ShmRef {
        ShmRef {
            obj: crate::linux::shm::SharedObject::anonymous(s.memory_arc(), s.pool()),
            offset: 0,
            may_write: true,
        }
    }

    #[test]
    fn a_shared_region_is_the_same_memory_in_a_forked_space_until_the_last_unmap() {
        let mut s = space();
        let before = s.resident_bytes();
        let shm = shared_region(&s);
        s.map_shared(0x40_0000, 4 * PAGE, Prot::RW, None, shm)
            .unwrap();
        s.map(0x50_0000, PAGE, Prot::RW, None, "").unwrap();
        s.write(GuestVirtAddr(0x40_1000), b"parent").unwrap();
        let child = s.fork().unwrap();
        // The child's write is the parent's (the private page stays private).
        child.write(GuestVirtAddr(0x40_1000), b"child!").unwrap();
        child.write(GuestVirtAddr(0x50_0000), b"mine").unwrap();
        let mut b = [0u8; 6];
        s.read(GuestVirtAddr(0x40_1000), &mut b).unwrap();
        assert_eq!(&b, b"child!");
        s.read(GuestVirtAddr(0x50_0000), &mut b[..4]).unwrap();
        assert_eq!(&b[..4], &[0; 4]);
        // Both spaces see the word at the same guest-physical address (a futex key).
        let pa = s.shared_phys(0x40_1004).unwrap();
        assert_eq!(child.shared_phys(0x40_1004), Some(pa));
        assert_eq!(s.shared_phys(0x50_0000), None, "private memory");
        // The child going does not free the shared frames.
        drop(child);
        s.read(GuestVirtAddr(0x40_1000), &mut b).unwrap();
        assert_eq!(&b, b"child!");
        // Unmapping part of it keeps the rest; mprotect to none and back maps the same
        // frame again.
        s.unmap(0x40_0000, PAGE).unwrap();
        s.protect(0x40_1000, PAGE, Prot::NONE).unwrap();
        assert!(s.read(GuestVirtAddr(0x40_1000), &mut b).is_err());
        s.protect(0x40_1000, PAGE, Prot::RW).unwrap();
        assert_eq!(s.shared_phys(0x40_1004), Some(pa));
        s.read(GuestVirtAddr(0x40_1000), &mut b).unwrap();
        assert_eq!(&b, b"child!");
        // The last unmap gives every frame back.
        s.unmap(0x40_0000, 4 * PAGE).unwrap();
        s.unmap(0x50_0000, PAGE).unwrap();
        let tables = s.resident_bytes() - before;
        assert!(tables <= 4 * PAGE, "only page tables are left: {tables}");
    }

    #[test]
    fn a_shared_mapping_of_a_file_opened_read_only_cannot_become_writable() {
        let mut s = space();
        let mut shm = shared_region(&s);
        shm.may_write = false;
        s.map_shared(0x40_0000, PAGE, Prot(libc::PROT_READ as u32), None, shm)
            .unwrap();
        assert_eq!(
            s.protect(0x40_0000, PAGE, Prot::RW),
            Err(Errno(libc::EACCES))
        );
        s.protect(0x40_0000, PAGE, Prot::NONE).unwrap();
    }

    #[test]
    fn brk_grows_and_shrinks_and_free_ranges_are_found() {
        let mut s = space();
        s.brk_start = 0x60_0000;
        s.brk = 0x60_0000;
        assert_eq!(s.set_brk(0x60_2100), 0x60_2100);
        s.write(GuestVirtAddr(0x60_2000), b"q").unwrap();
        assert_eq!(s.set_brk(0x60_0800), 0x60_0800);
        let mut b = [0u8; 1];
        assert!(s.read(GuestVirtAddr(0x60_2000), &mut b).is_err());
        assert_eq!(s.set_brk(0x10), 0x60_0800, "below the start: unchanged");
        let a = s.find_free(2 * PAGE).unwrap();
        assert_eq!(a, MMAP_TOP - 2 * PAGE);
        s.map(a, 2 * PAGE, Prot::RW, None, "").unwrap();
        assert_eq!(s.find_free(PAGE).unwrap(), a - PAGE);
        assert!(!s.is_free(a, a + PAGE));
    }

    /// A lazy mapping the size of ASan's shadow and more (64 TiB) in a 16 MiB VM.
    const HUGE: (u64, u64) = (0x1000_0000_0000, 64 << 40);

    fn lazy_space() -> AddressSpace {
        let mut s = space();
        s.map_anonymous(HUGE.0, HUGE.1, Prot::RW, true).unwrap();
        s
    }

    #[test]
    fn a_lazy_mapping_costs_nothing_until_a_fault_populates_a_page() {
        let base = space().frames().in_use();
        let mut s = lazy_space();
        assert_eq!(s.frames().in_use(), base, "nothing backed at mmap time");
        assert_eq!(s.vmas().count(), 1, "/proc/PID/maps shows it");
        let (start, len) = HUGE;
        let at = start + len / 2 + 123;
        assert_eq!(s.pte(at) & PTE_P, 0);
        assert_eq!(s.fault(at, true, false), Fault::Resolved);
        let e = s.pte(at);
        assert_eq!(e & (PTE_P | PTE_RW | PTE_US), PTE_P | PTE_RW | PTE_US);
        assert_eq!(e & PTE_ZERO, 0);
        // Its aligned block of data frames and the three tables under the PML4 it needed.
        let block = FAULT_AROUND * PAGE;
        assert_eq!(s.frames().in_use(), base + FAULT_AROUND + 3);
        assert_ne!(s.pte(at & !(block - 1)) & PTE_P, 0);
        assert_ne!(s.pte((at | (block - 1)) - PAGE + 1) & PTE_P, 0);
        assert_eq!(s.pte((at | (block - 1)) + 1) & PTE_P, 0);
        // A second fault on it (another vCPU got there first) just resumes.
        assert_eq!(s.fault(at, false, false), Fault::Resolved);
        assert_eq!(s.frames().in_use(), base + FAULT_AROUND + 3);
        // Not executable, nothing mapped below it.
        assert_eq!(s.fault(at, false, true), Fault::Denied);
        assert_eq!(s.fault(start - 1, false, false), Fault::Unmapped);
        assert_eq!(Fault::Unmapped.si_code(), 1);
        assert_eq!(Fault::Denied.si_code(), 2);
    }

    #[test]
    fn a_read_fault_of_read_only_lazy_memory_maps_the_zero_frame() {
        let mut s = space();
        let base = s.frames().in_use();
        s.map_anonymous(HUGE.0, HUGE.1, Prot(libc::PROT_READ as u32), true)
            .unwrap();
        assert_eq!(s.fault(HUGE.0, true, false), Fault::Denied);
        assert_eq!(s.fault(HUGE.0, false, false), Fault::Resolved);
        assert_ne!(s.pte(HUGE.0) & PTE_ZERO, 0);
        // The zero frame and three tables; the zero frame is nobody's to free.
        assert_eq!(s.frames().in_use(), base + 4);
        s.protect(HUGE.0, PAGE, Prot::RW).unwrap();
        s.write(GuestVirtAddr(HUGE.0), b"own").unwrap();
        assert_eq!(s.pte(HUGE.0) & PTE_ZERO, 0);
    }

    #[test]
    fn the_shim_reads_zeros_from_untouched_lazy_pages_and_populates_those_it_writes() {
        let mut s = lazy_space();
        let base = s.frames().in_use();
        let at = HUGE.0 + (5 << 40) + PAGE - 3;
        // A read leaves the pages untouched.
        let mut b = [7u8; 10];
        s.read(GuestVirtAddr(at), &mut b).unwrap();
        assert_eq!(b, [0; 10]);
        assert_eq!(s.read_cstr(at, 100).unwrap(), b"");
        assert_eq!(s.frames().in_use(), base);
        // A write across a page boundary backs both pages, as read(2) into a buffer.
        s.write(GuestVirtAddr(at), b"across pages").unwrap();
        s.read(GuestVirtAddr(at), &mut b).unwrap();
        assert_eq!(&b, b"across pag");
        assert_eq!(s.frames().in_use(), base + 2 + 3);
        // poke (protection aside) populates too; read-only lazy memory refuses a write.
        s.poke(HUGE.0 + (9 << 40), b"poked").unwrap();
        assert_eq!(
            s.read_u32(HUGE.0 + (9 << 40)).unwrap(),
            u32::from_le_bytes(*b"poke")
        );
        s.protect(HUGE.0 + (10 << 40), PAGE, Prot(libc::PROT_READ as u32))
            .unwrap();
        assert_eq!(
            s.write(GuestVirtAddr(HUGE.0 + (10 << 40)), b"x"),
            Err(Errno::EFAULT)
        );
        // A PROT_NONE lazy page is EFAULT both ways, as Linux's copy_to/from_user.
        s.protect(HUGE.0 + (11 << 40), PAGE, Prot::NONE).unwrap();
        assert_eq!(
            s.read(GuestVirtAddr(HUGE.0 + (11 << 40)), &mut b),
            Err(Errno::EFAULT)
        );
        // Past the mapping: EFAULT.
        assert_eq!(
            s.write(GuestVirtAddr(HUGE.0 + HUGE.1), b"x"),
            Err(Errno::EFAULT)
        );
    }

    #[test]
    fn protect_fork_discard_and_unmap_skip_the_untouched_part_of_a_lazy_mapping() {
        let mut s = lazy_space();
        let base = s.frames().in_use();
        let pages: Vec<u64> = (0..16).map(|i| HUGE.0 + i * (4 << 40) + i * PAGE).collect();
        for (i, &p) in pages.iter().enumerate() {
            s.write(GuestVirtAddr(p), &[i as u8 + 1]).unwrap();
        }
        let populated = s.frames().in_use() - base;
        // Each of these would be 2^34 page steps if it walked the range page by page.
        let t = std::time::Instant::now();
        s.protect(HUGE.0, HUGE.1, Prot(libc::PROT_READ as u32))
            .unwrap();
        assert_eq!(s.fault(pages[3], true, false), Fault::Denied);
        s.protect(HUGE.0, HUGE.1, Prot::RW).unwrap();
        let child = s.fork().unwrap();
        for (i, &p) in pages.iter().enumerate() {
            assert_eq!(child.read_u32(p).unwrap() & 0xff, i as u32 + 1);
        }
        assert_eq!(
            child.backed_leaves(HUGE.0, HUGE.0 + HUGE.1).unwrap().len(),
            16
        );
        drop(child);
        assert_eq!(s.frames().in_use() - base, populated);
        // MADV_DONTNEED gives a lazy page's frame back; it reads zero again.
        s.discard(pages[2], PAGE).unwrap();
        assert_eq!(s.read_u32(pages[2]).unwrap(), 0);
        assert_eq!(s.frames().in_use() - base, populated - 1);
        // Unmap the middle half, then everything: every data frame comes back.
        s.unmap(HUGE.0 + HUGE.1 / 4, HUGE.1 / 2).unwrap();
        assert_eq!(s.vmas().count(), 2);
        assert_eq!(s.fault(pages[8], false, false), Fault::Unmapped);
        assert_eq!(s.read_u32(pages[15]).unwrap() & 0xff, 16);
        s.unmap(HUGE.0, HUGE.1).unwrap();
        assert!(s.backed_leaves(HUGE.0, HUGE.0 + HUGE.1).unwrap().is_empty());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_fault_past_the_memory_limit_is_out_of_memory_and_recorded() {
        let mut s = lazy_space();
        let mut last = Fault::Resolved;
        let mut n = 0u64;
        while last == Fault::Resolved {
            last = s.fault(HUGE.0 + n * PAGE, true, false);
            n += 1;
            assert!(n < 16 << 8, "a 16 MiB VM ran out of frames");
        }
        assert_eq!(last, Fault::OutOfMemory);
        // The program is ended for it (`Process::on_trap`): no allocation failed.
        assert_eq!(s.exhausted(), None);
        // The shim's own writes into lazy pages fail with EFAULT, recorded.
        assert_eq!(
            s.write(GuestVirtAddr(HUGE.0 + (1 << 40)), b"x"),
            Err(Errno::EFAULT)
        );
        assert_eq!(s.exhausted(), Some(HUGE.0 + (1 << 40)));
        // Freeing some lets the program go on.
        s.unmap(HUGE.0, 16 * PAGE).unwrap();
        assert_eq!(s.fault(HUGE.0 + (2 << 40), true, false), Fault::Resolved);
    }

    /// `len` bytes of a pattern seeded with `seed`.
    fn pattern(len: u64, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn bytes(s: &AddressSpace, va: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let mut b = vec![0u8; len as usize];
        s.read(GuestVirtAddr(va), &mut b).map(|()| b)
    }

    #[test]
    fn prot_none_keeps_the_frames_and_their_contents_out_of_reach() {
        let mut s = space();
        let (start, len) = (0x40_0000, 4 * PAGE);
        s.map(start, len, Prot::RW, None, "").unwrap();
        s.write(GuestVirtAddr(start), &pattern(len, 1)).unwrap();
        let frames: Vec<u64> = (0..4).map(|i| s.pte(start + i * PAGE)).collect();
        let in_use = s.frames().in_use();
        s.flush_needed = false;
        s.protect(start, len, Prot::NONE).unwrap();
        assert!(s.flush_needed, "the vCPUs' TLBs must forget the pages");
        assert_eq!(s.frames().in_use(), in_use, "nothing freed");
        let e = s.pte(start + PAGE);
        assert_eq!(e & (PTE_P | PTE_PROTNONE), PTE_PROTNONE);
        // Out of reach of the shim, of the CPU and of the fault path.
        assert_eq!(bytes(&s, start + PAGE, 8), Err(Errno::EFAULT));
        assert_eq!(s.write(GuestVirtAddr(start), b"x"), Err(Errno::EFAULT));
        assert_eq!(
            s.check_writable(GuestVirtAddr(start), 1),
            Err(Errno::EFAULT)
        );
        assert_eq!(s.poke(start, b"x"), Err(Errno::EFAULT));
        assert_eq!(s.read_cstr(start, 16), Err(Errno::EFAULT));
        assert!(s.memory().translate(s.cr3(), GuestVirtAddr(start)).is_err());
        assert_eq!(s.fault(start, false, false), Fault::Denied);
        assert_eq!(s.shared_phys(start), None);
        // A second PROT_NONE changes nothing.
        s.protect(start, len, Prot::NONE).unwrap();
        // Readable again: the same frames, the same bytes; then writable.
        let read = Prot(libc::PROT_READ as u32);
        s.protect(start, len, read).unwrap();
        let again: Vec<u64> = (0..4).map(|i| s.pte(start + i * PAGE)).collect();
        let frame = |e: &u64| e & PTE_ADDR_MASK;
        assert_eq!(
            again.iter().map(frame).collect::<Vec<_>>(),
            frames.iter().map(frame).collect::<Vec<_>>()
        );
        assert_eq!(again[0] & !PTE_ADDR_MASK, read.pte_flags());
        assert_eq!(bytes(&s, start, len).unwrap(), pattern(len, 1));
        assert_eq!(s.write(GuestVirtAddr(start), b"x"), Err(Errno::EFAULT));
        // Straight back to read-write: the same frames too.
        s.protect(start, len, Prot::NONE).unwrap();
        s.protect(start, len, Prot::RW).unwrap();
        let rw: Vec<u64> = (0..4).map(|i| s.pte(start + i * PAGE)).collect();
        assert_eq!(
            rw.iter().map(frame).collect::<Vec<_>>(),
            again.iter().map(frame).collect::<Vec<_>>()
        );
        assert_eq!(rw[0] & !PTE_ADDR_MASK, Prot::RW.pte_flags());
        assert_eq!(bytes(&s, start, len).unwrap(), pattern(len, 1));
        s.write(GuestVirtAddr(start), b"new").unwrap();
        assert_eq!(s.frames().in_use(), in_use);
        // A part of a mapping: it splits, the rest stays accessible.
        s.protect(start + PAGE, PAGE, Prot::NONE).unwrap();
        assert_eq!(s.vmas().count(), 3);
        assert_eq!(bytes(&s, start + PAGE - 1, 2), Err(Errno::EFAULT));
        assert!(bytes(&s, start + 2 * PAGE, PAGE).is_ok());
        s.protect(start + PAGE, PAGE, Prot::RW).unwrap();
        assert_eq!(
            bytes(&s, start + PAGE, PAGE).unwrap(),
            pattern(len, 1)[PAGE as usize..2 * PAGE as usize]
        );
    }

    #[test]
    fn munmap_exec_and_dontneed_free_or_clear_prot_none_pages() {
        let mut s = space();
        let base = s.frames().in_use();
        let (start, len) = (0x40_0000, 8 * PAGE);
        s.map(start, len, Prot::RW, None, "").unwrap();
        let mapped = s.frames().in_use();
        s.write(GuestVirtAddr(start), &pattern(len, 2)).unwrap();
        s.protect(start, len, Prot::NONE).unwrap();
        // MADV_DONTNEED: the contents go, as on Linux (the frame stays, reads zero).
        s.discard(start, PAGE).unwrap();
        s.protect(start, 2 * PAGE, Prot(libc::PROT_READ as u32))
            .unwrap();
        assert_eq!(bytes(&s, start, PAGE).unwrap(), vec![0; PAGE as usize]);
        assert_eq!(
            bytes(&s, start + PAGE, PAGE).unwrap(),
            pattern(len, 2)[PAGE as usize..2 * PAGE as usize]
        );
        // munmap of the PROT_NONE rest gives every data frame back.
        s.unmap(start, len).unwrap();
        assert_eq!(s.frames().in_use(), mapped - 8);
        assert!(s.frames().in_use() > base, "the page tables stay");
        // A lazy mapping's PROT_NONE page: DONTNEED gives its frame back, and it is
        // populated afresh (zeros) once accessible again.
        s.map_anonymous(HUGE.0, HUGE.1, Prot::RW, true).unwrap();
        s.write(GuestVirtAddr(HUGE.0), b"lazy").unwrap();
        s.protect(HUGE.0, HUGE.1, Prot::NONE).unwrap();
        assert_eq!(s.fault(HUGE.0, false, false), Fault::Denied);
        let before = s.frames().in_use();
        s.discard(HUGE.0, PAGE).unwrap();
        assert_eq!(s.frames().in_use(), before - 1);
        s.protect(HUGE.0, HUGE.1, Prot::RW).unwrap();
        assert_eq!(s.read_u32(HUGE.0).unwrap(), 0);
        // A space dropped (exec, exit) with PROT_NONE pages gives them back too.
        let pool = s.pool();
        let in_use = || pool.lock().unwrap().in_use();
        let start_pool = in_use();
        let mut other = AddressSpace::with_pool(s.memory_arc(), pool.clone()).unwrap();
        other.map(start, len, Prot::RW, None, "").unwrap();
        other.protect(start, len, Prot::NONE).unwrap();
        assert!(in_use() > start_pool + 8);
        drop(other);
        assert_eq!(in_use(), start_pool);
    }

    #[test]
    fn a_forked_child_gets_its_own_copy_of_prot_none_pages() {
        let mut s = space();
        let (start, len) = (0x40_0000, 3 * PAGE);
        s.map(start, len, Prot::RW, None, "").unwrap();
        s.write(GuestVirtAddr(start), &pattern(len, 3)).unwrap();
        let shm = shared_region(&s);
        s.map_shared(0x50_0000, PAGE, Prot::RW, None, shm).unwrap();
        s.write(GuestVirtAddr(0x50_0000), b"shared").unwrap();
        s.protect(start + PAGE, 2 * PAGE, Prot::NONE).unwrap();
        s.protect(0x50_0000, PAGE, Prot::NONE).unwrap();
        let before = s.resident_bytes();
        let mut child = s.fork().unwrap();
        assert_eq!(bytes(&child, start + PAGE, 1), Err(Errno::EFAULT));
        assert_eq!(child.pte(start + PAGE) & PTE_P, 0);
        // The child restores its copy and writes it; the parent's stays as it was.
        child.protect(start, len, Prot::RW).unwrap();
        assert_eq!(bytes(&child, start, len).unwrap(), pattern(len, 3));
        child
            .write(GuestVirtAddr(start + PAGE), &pattern(PAGE, 9))
            .unwrap();
        // The shared page is the same frame in both.
        child.protect(0x50_0000, PAGE, Prot::RW).unwrap();
        child.write(GuestVirtAddr(0x50_0000), b"child!").unwrap();
        assert_eq!(bytes(&s, start + PAGE, 1), Err(Errno::EFAULT));
        s.protect(start, len, Prot::RW).unwrap();
        s.protect(0x50_0000, PAGE, Prot(libc::PROT_READ as u32))
            .unwrap();
        assert_eq!(bytes(&s, start, len).unwrap(), pattern(len, 3));
        assert_eq!(bytes(&s, 0x50_0000, 6).unwrap(), b"child!");
        // Dropped with a page still PROT_NONE: every frame of the child comes back.
        child.protect(start, PAGE, Prot::NONE).unwrap();
        drop(child);
        assert_eq!(s.resident_bytes(), before);
    }

    #[test]
    fn a_modified_private_file_page_keeps_the_modification_through_prot_none() {
        let bytes_on_disk = pattern(2 * PAGE, 4);
        let mut s = space();
        let start = 0x40_0000;
        s.map(
            start,
            2 * PAGE,
            Prot::RW,
            Some(file_backing(&bytes_on_disk, 0)),
            "",
        )
        .unwrap();
        s.write(GuestVirtAddr(start + PAGE + 10), b"modified")
            .unwrap();
        s.protect(start, 2 * PAGE, Prot::NONE).unwrap();
        assert_eq!(bytes(&s, start, 1), Err(Errno::EFAULT));
        s.protect(start, 2 * PAGE, Prot(libc::PROT_READ as u32))
            .unwrap();
        let mut want = bytes_on_disk.clone();
        want[PAGE as usize + 10..PAGE as usize + 18].copy_from_slice(b"modified");
        assert_eq!(bytes(&s, start, 2 * PAGE).unwrap(), want);
    }

    #[test]
    fn zero_frame_and_lazy_pages_come_back_from_prot_none() {
        let mut s = space();
        let read = Prot(libc::PROT_READ as u32);
        // Read-only zeros: the zero frame is kept and given back, then a frame of its
        // own when the page becomes writable.
        s.map_anonymous(0x40_0000, 2 * PAGE, read, false).unwrap();
        let zero = s.pte(0x40_0000) & PTE_ADDR_MASK;
        s.protect(0x40_0000, 2 * PAGE, Prot::NONE).unwrap();
        assert_eq!(s.pte(0x40_0000) & (PTE_P | PTE_ZERO), PTE_ZERO);
        s.protect(0x40_0000, PAGE, read).unwrap();
        assert_eq!(s.pte(0x40_0000), zero | read.pte_flags() | PTE_ZERO);
        s.protect(0x40_1000, PAGE, Prot::RW).unwrap();
        assert_eq!(s.pte(0x40_1000) & PTE_ZERO, 0);
        assert_ne!(s.pte(0x40_1000) & PTE_ADDR_MASK, zero);
        s.write(GuestVirtAddr(0x40_1000), b"own").unwrap();
        assert_eq!(bytes(&s, 0x40_0000, 4).unwrap(), [0; 4]);
        // A lazy mapping: touched pages keep theirs, untouched ones stay absent (and are
        // not populated by a fault while PROT_NONE).
        let mut l = lazy_space();
        let at = HUGE.0 + (3 << 40);
        l.write(GuestVirtAddr(at), b"lazy data").unwrap();
        let in_use = l.frames().in_use();
        l.protect(HUGE.0, HUGE.1, Prot::NONE).unwrap();
        assert_eq!(l.fault(at, false, false), Fault::Denied);
        assert_eq!(l.fault(HUGE.0, true, false), Fault::Denied);
        assert_eq!(bytes(&l, HUGE.0, 1), Err(Errno::EFAULT));
        assert_eq!(l.frames().in_use(), in_use);
        l.protect(HUGE.0, HUGE.1, Prot::RW).unwrap();
        assert_eq!(bytes(&l, at, 9).unwrap(), b"lazy data");
        assert_eq!(l.frames().in_use(), in_use);
    }

    #[test]
    fn mremap_moves_pages_with_their_frames_prot_none_ones_too() {
        let mut s = space();
        let (from, to, len) = (0x40_0000, 0x80_0000, 4 * PAGE);
        s.map(from, len, Prot::RW, None, "").unwrap();
        s.write(GuestVirtAddr(from), &pattern(len, 5)).unwrap();
        let frames: Vec<u64> = (0..4)
            .map(|i| s.pte(from + i * PAGE) & PTE_ADDR_MASK)
            .collect();
        s.protect(from, len, Prot::NONE).unwrap();
        let in_use = s.frames().in_use();
        s.move_anonymous(from, len, to, 2 * len).unwrap();
        assert!(s.vma_at(from).is_none());
        assert_eq!(
            s.vma_at(to).map(|v| (v.end, v.prot)),
            Some((to + 2 * len, Prot::NONE))
        );
        assert_eq!(bytes(&s, to, 1), Err(Errno::EFAULT));
        let moved: Vec<u64> = (0..4)
            .map(|i| s.pte(to + i * PAGE) & PTE_ADDR_MASK)
            .collect();
        assert_eq!(moved, frames, "no copy");
        // Only the page tables of the new place were needed.
        assert!(s.frames().in_use() - in_use <= 3);
        s.protect(to, 2 * len, Prot::RW).unwrap();
        assert_eq!(bytes(&s, to, len).unwrap(), pattern(len, 5));
        assert_eq!(bytes(&s, to + len, len).unwrap(), vec![0; len as usize]);
        // Accessible memory moves the same way; a lazy mapping moves only what it has.
        s.move_anonymous(to, 2 * len, from, 2 * len).unwrap();
        assert_eq!(bytes(&s, from, len).unwrap(), pattern(len, 5));
        let (lazy, tib) = (0x1000_0000_0000, 1 << 40);
        s.map_anonymous(lazy, tib, Prot::RW, true).unwrap();
        s.write(GuestVirtAddr(lazy + tib / 2), b"far").unwrap();
        s.move_anonymous(lazy, tib, lazy + 4 * tib, 2 * tib)
            .unwrap();
        let moved = s.backed_leaves(lazy + 4 * tib, lazy + 6 * tib).unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(bytes(&s, lazy + 4 * tib + tib / 2, 3).unwrap(), b"far");
        assert!(s.vma_at(lazy + 5 * tib).is_some_and(|v| v.lazy));
        // A file mapping is not this call's.
        s.map(0x90_0000, PAGE, Prot::RW, Some(file_backing(b"f", 0)), "")
            .unwrap();
        assert_eq!(
            s.move_anonymous(0x90_0000, PAGE, 0xa0_0000, PAGE),
            Err(Errno::EINVAL)
        );
    }
}
