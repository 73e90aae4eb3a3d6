//! Guest RAM and guest addresses.
//!
//! [`GuestMemory`] owns one anonymous mapping that backs guest-physical `0..size`; it is
//! unmapped on drop. Byte copies in and out of guest RAM (system-call buffers, loaders,
//! the interpreter's unaligned operands) go through `vm-memory`, the rust-vmm
//! guest-memory crate that Firecracker and Cloud Hypervisor use: a
//! [`vm_memory::VolatileSlice`] over the mapping, which checks the bounds again and makes
//! copies of up to 8 bytes volatile. Aligned single-copy-atomic loads and stores stay
//! plain `core` atomics on the mapping: the emulated LBR's interpreter makes one per memory
//! operand, and measured here (50 M aligned 8-byte loads through `load_aligned`, release
//! build) one costs 5.7-6.0 ns as a `core` atomic and 8.4-8.8 ns through `vm-memory`'s
//! `Bytes::load` on the slice (16 ns through its `GuestMemoryMmap` region collection,
//! which one region of RAM has no use for). What `vm-memory` does not do also stays here: the
//! 2 MiB-aligned, huge-page-advised mapping, zeroing and discarding with `madvise`, and
//! the guest's page walks.
//!
//! [`GuestPhysAddr`] and [`GuestVirtAddr`] are distinct types, so a
//! virtual address can reach memory only through a page walk: [`GuestMemory::translate`]
//! (4-level long-mode paging from a CR3 value, 4 KiB / 2 MiB / 1 GiB pages) or
//! [`GuestMemory::translate_in`] for any [`PagingMode`] (none, 32-bit, PAE, 4-level).
//!
//! Mixing the two does not compile:
//!
//! ```compile_fail
//! use lbrprof_vmm::{GuestMemory, GuestVirtAddr};
//! let mem = GuestMemory::new(1 << 20).unwrap();
//! let mut buf = [0u8; 4];
//! mem.read(GuestVirtAddr(0x1000), &mut buf).unwrap(); // expects a GuestPhysAddr
//! ```

use std::fmt;
use std::ptr::NonNull;

use vm_memory::{Bytes, VolatileSlice};

use crate::arch::{CR0_PG, CR4_PAE, EFER_LMA, PTE_ADDR_MASK, PTE_P, PTE_PS};

/// How the guest translates virtual addresses (from CR0.PG, CR4.PAE, EFER.LMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// Paging off: virtual = physical (e.g. a multiboot kernel at entry).
    None,
    /// 32-bit paging: two levels of 4-byte entries, 4 KiB / 4 MiB pages.
    Bits32,
    /// PAE paging: PDPT, PD, PT of 8-byte entries, 4 KiB / 2 MiB pages.
    Pae,
    /// 4-level long-mode paging.
    Long4,
}

impl PagingMode {
    /// The mode a vCPU with these control registers is in.
    pub fn from_regs(cr0: u64, cr4: u64, efer: u64) -> PagingMode {
        if cr0 & CR0_PG == 0 {
            PagingMode::None
        } else if efer & EFER_LMA != 0 {
            PagingMode::Long4
        } else if cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Bits32
        }
    }
}

/// A guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestPhysAddr(pub u64);

/// A guest-virtual (linear) address, meaningful only with a CR3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestVirtAddr(pub u64);

impl fmt::Display for GuestPhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpa {:#x}", self.0)
    }
}

impl fmt::Display for GuestVirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gva {:#x}", self.0)
    }
}

impl GuestPhysAddr {
    /// `self + off`, or `None` on overflow.
    pub fn checked_add(self, off: u64) -> Option<GuestPhysAddr> {
        self.0.checked_add(off).map(GuestPhysAddr)
    }
}

/// Errors of guest-memory access.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{len} bytes at {addr} are outside guest RAM ({size} bytes)")]
    OutOfRange {
        addr: GuestPhysAddr,
        len: u64,
        size: u64,
    },
    #[error("{addr} is not mapped by the guest page tables (CR3 {cr3:#x})")]
    NotMapped { addr: GuestVirtAddr, cr3: u64 },
}

/// Transparent huge page size on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// The host page size, from sysconf.
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

/// Guest RAM: an owning anonymous mmap, guest-physical 0 at its start.
pub struct GuestMemory {
    mapping: Mapping,
    size: u64,
}

/// The anonymous mapping behind guest RAM, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; every access to its bytes is a
// `vm-memory` copy, a `core` atomic or a raw-pointer fill in `GuestMemory::zero` (like the
// guest's own concurrent accesses), never a Rust reference that would assert
// exclusivity.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe the mapping created in GuestMemory::new, unmapped exactly
        // once; the slices over it (GuestMemory::ram) borrow the GuestMemory that owns it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

impl fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemory")
            .field("size", &self.size)
            .finish()
    }
}

impl GuestMemory {
    /// Map `size` bytes (rounded up to the host page size), zero-filled, lazily backed.
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let page = host_page_size();
        let size = size.div_ceil(page) * page;
        let len = usize::try_from(size).map_err(|_| MemoryError::Map {
            size,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        if len == 0 {
            return Err(MemoryError::Map {
                size,
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        // Over-map by one huge page so the start can be 2 MiB aligned: the guest maps
        // its RAM with 2 MiB pages, and huge host pages behind them (MADV_HUGEPAGE)
        // spare nested paging most of its TLB misses.
        let slack = HUGE_PAGE.max(page as usize);
        let total = len.checked_add(slack).ok_or(MemoryError::Map {
            size,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MemoryError::Map {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = p as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let head = start - base;
        let tail = total - head - len;
        // SAFETY: the head and tail lie inside the mapping just created and are not used;
        // unmapping them leaves exactly [start, start + len) mapped. madvise is advisory.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        let ptr = NonNull::new(start as *mut u8).ok_or(MemoryError::Map {
            size,
            source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        })?;
        Ok(GuestMemory {
            mapping: Mapping { ptr, len },
            size,
        })
    }

    /// Bytes of guest RAM.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest-physical 0 (for KVM_SET_USER_MEMORY_REGION).
    pub fn host_base(&self) -> u64 {
        self.mapping.ptr.as_ptr() as u64
    }

    /// All of guest RAM as a `vm-memory` volatile slice (a pointer and a length).
    fn ram(&self) -> VolatileSlice<'_> {
        // SAFETY: [ptr, ptr + len) is the live read/write mapping this value owns; the slice
        // borrows self, so it cannot outlive the mapping.
        unsafe { VolatileSlice::new(self.mapping.ptr.as_ptr(), self.mapping.len) }
    }

    fn out_of_range(&self, addr: GuestPhysAddr, len: usize) -> MemoryError {
        MemoryError::OutOfRange {
            addr,
            len: len as u64,
            size: self.size,
        }
    }

    fn check(&self, addr: GuestPhysAddr, len: usize) -> Result<usize, MemoryError> {
        match addr.0.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(addr.0 as usize),
            _ => Err(self.out_of_range(addr, len)),
        }
    }

    /// [`Self::check`] of a `u64` length: the range's offset in the mapping and its length.
    fn check_range(&self, addr: GuestPhysAddr, len: u64) -> Result<(usize, usize), MemoryError> {
        let l = usize::try_from(len).map_err(|_| MemoryError::OutOfRange {
            addr,
            len,
            size: self.size,
        })?;
        Ok((self.check(addr, l)?, l))
    }

    /// Copy `data` into guest memory at `addr`.
    pub fn write(&self, addr: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        // Checked first, so a write that does not fit changes nothing.
        let off = self.check(addr, data.len())?;
        self.ram()
            .write_slice(data, off)
            .map_err(|_| self.out_of_range(addr, data.len()))
    }

    /// Zero `len` bytes at `addr`.
    pub fn zero(&self, addr: GuestPhysAddr, len: u64) -> Result<(), MemoryError> {
        let (off, l) = self.check_range(addr, len)?;
        // Only resident pages are written: a page that is not (never touched, or swapped
        // out) is dropped instead, so it reads as zero without costing a page of memory and
        // the time to fault it in (a 3 GiB bss would cost 3 GiB). The edges are written.
        // The mapping's start is page-aligned, so offsets align like addresses.
        let page = host_page_size() as usize;
        let first = off.next_multiple_of(page).min(off + l);
        let last = ((off + l) / page * page).max(first);
        // SAFETY: [off, off + l) is inside the live mapping (checked), and so are its
        // sub-ranges [off, first) and [last, off + l).
        unsafe {
            std::ptr::write_bytes(self.mapping.ptr.as_ptr().add(off), 0, first - off);
            std::ptr::write_bytes(self.mapping.ptr.as_ptr().add(last), 0, off + l - last);
        }
        let pages = (last - first) / page;
        let mut resident = vec![0u8; pages];
        // SAFETY: [first, last) is a page-aligned range inside the live mapping, and
        // `resident` has one byte per page of it.
        let known = pages == 0
            || unsafe {
                libc::mincore(
                    self.mapping.ptr.as_ptr().add(first).cast(),
                    last - first,
                    resident.as_mut_ptr(),
                )
            } == 0;
        // Runs of pages alike: resident ones are written (and stay resident for the
        // guest); the others are dropped with one MADV_DONTNEED per run.
        let mut i = 0;
        while i < pages {
            let is_resident = !known || resident[i] & 1 != 0;
            let n = resident[i..]
                .iter()
                .take_while(|r| (!known || *r & 1 != 0) == is_resident)
                .count();
            // SAFETY: pages [i, i + n) of [first, last): page-aligned and inside the live
            // private anonymous mapping. MADV_DONTNEED makes pages that are not resident
            // (never touched, or swapped out) read as zero without faulting them in;
            // writing zeros is the fallback, correct in every case.
            unsafe {
                let at = self.mapping.ptr.as_ptr().add(first + i * page);
                if is_resident || libc::madvise(at.cast(), n * page, libc::MADV_DONTNEED) != 0 {
                    std::ptr::write_bytes(at, 0, n * page);
                }
            }
            i += n;
        }
        Ok(())
    }

    /// Give the host pages of `[addr, addr + len)` back (MADV_DONTNEED): they read as
    /// zero afterwards, and KVM's MMU notifier drops every guest translation to them
    /// (shadow or nested page-table entries), which is how a VMM that rewrites the
    /// guest's page tables makes sure no stale translation survives. `addr` and `len`
    /// must be host-page aligned.
    pub fn discard(&self, addr: GuestPhysAddr, len: u64) -> Result<(), MemoryError> {
        let (off, l) = self.check_range(addr, len)?;
        let page = host_page_size() as usize;
        if off % page != 0 || l % page != 0 {
            return Err(MemoryError::OutOfRange {
                addr,
                len,
                size: self.size,
            });
        }
        // SAFETY: the range is inside the live mapping (checked) and page-aligned;
        // MADV_DONTNEED on private anonymous memory only zero-fills it.
        unsafe {
            libc::madvise(
                self.mapping.ptr.as_ptr().add(off).cast(),
                l,
                libc::MADV_DONTNEED,
            )
        };
        Ok(())
    }

    /// Make KVM drop every guest translation to the host pages of `[addr, addr + len)`
    /// and keep their contents (unlike [`Self::discard`]): for a frame that another
    /// address space still maps (memory shared between guest processes). The range is
    /// made executable and back: each protection change runs the MMU notifier over it,
    /// and the pages stay readable and writable throughout, so a vCPU or shim thread
    /// using them meanwhile is not disturbed (where the host refuses that, the contents
    /// are saved, discarded and written back). `addr` and `len` must be host-page
    /// aligned.
    pub fn invalidate(&self, addr: GuestPhysAddr, len: u64) -> Result<(), MemoryError> {
        let bad = || MemoryError::OutOfRange {
            addr,
            len,
            size: self.size,
        };
        let l = usize::try_from(len).map_err(|_| bad())?;
        let off = self.check(addr, l)?;
        let page = host_page_size() as usize;
        if off % page != 0 || l % page != 0 {
            return Err(bad());
        }
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        for prot in [rw | libc::PROT_EXEC, rw] {
            // SAFETY: the range is inside the live mapping (checked) and page-aligned;
            // the protections keep it readable and writable, so no access to it faults.
            let r = unsafe { libc::mprotect(self.mapping.ptr.as_ptr().add(off).cast(), l, prot) };
            if r != 0 && prot == rw {
                return Err(bad());
            }
            if r != 0 {
                // A host that refuses executable anonymous memory (an SELinux execmem
                // policy): keep the contents, discard the pages (the notifier runs) and
                // put them back. A store another vCPU makes in between is lost.
                let mut saved = vec![0u8; l];
                self.read(addr, &mut saved)?;
                self.discard(addr, len)?;
                return self.write(addr, &saved);
            }
        }
        Ok(())
    }

    /// Read up to `len` bytes of `file` at `offset` straight into guest memory at `addr`
    /// (the kernel copies from the page cache into guest RAM: no bounce buffer, one
    /// `pread` for a whole run of frames), retrying short reads; the bytes read: fewer at
    /// end of file or on an I/O error, and the rest of the range is left as it was.
    pub fn read_file(
        &self,
        addr: GuestPhysAddr,
        len: u64,
        file: &std::fs::File,
        offset: u64,
    ) -> Result<usize, MemoryError> {
        use std::os::fd::AsRawFd;
        let (off, l) = self.check_range(addr, len)?;
        let mut done = 0;
        while done < l {
            let Some(at) = offset
                .checked_add(done as u64)
                .and_then(|o| libc::off_t::try_from(o).ok())
            else {
                break;
            };
            // SAFETY: [off + done, off + l) is inside the live mapping (checked above);
            // pread writes at most `l - done` bytes there and nothing else.
            let r = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    self.mapping.ptr.as_ptr().add(off + done).cast(),
                    l - done,
                    at,
                )
            };
            match r {
                n if n > 0 => done += n as usize,
                0 => break,
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
        Ok(done)
    }

    /// Copy guest memory at `addr` into `buf`.
    pub fn read(&self, addr: GuestPhysAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.check(addr, buf.len())?;
        self.ram()
            .read_slice(buf, off)
            .map_err(|_| self.out_of_range(addr, buf.len()))
    }

    pub fn read_u64(&self, addr: GuestPhysAddr) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The offset of a naturally aligned access of `len` (1, 2, 4 or 8) bytes at `addr`.
    fn check_aligned(&self, addr: GuestPhysAddr, len: usize) -> Result<usize, MemoryError> {
        let off = self.check(addr, len)?;
        if !matches!(len, 1 | 2 | 4 | 8) || !off.is_multiple_of(len) {
            return Err(MemoryError::OutOfRange {
                addr,
                len: len as u64,
                size: self.size,
            });
        }
        Ok(off)
    }

    /// The host address of the 4 KiB page of guest RAM at page-aligned `addr`, for
    /// accesses made through it directly (the shim's interpreter: [`load_aligned_at`],
    /// [`store_aligned_at`]). Valid as long as this `GuestMemory` lives: the mapping is
    /// never moved or unmapped before.
    pub fn page_ptr(&self, addr: GuestPhysAddr) -> Option<NonNull<u8>> {
        if !addr.0.is_multiple_of(4096) {
            return None;
        }
        let off = self.check(addr, 4096).ok()?;
        // SAFETY: `off + 4096` is inside the mapping (checked).
        NonNull::new(unsafe { self.mapping.ptr.as_ptr().add(off) })
    }

    /// Loads `len` (1, 2, 4 or 8) bytes at a `len`-aligned `addr` in one access, as the
    /// guest's own aligned loads are (single-copy atomic with respect to its vCPUs).
    pub fn load_aligned(&self, addr: GuestPhysAddr, len: usize) -> Result<u64, MemoryError> {
        let off = self.check_aligned(addr, len)?;
        // SAFETY: [off, off + len) is inside the live mapping (checked) and aligned to
        // `len` (the mapping starts on a huge-page boundary).
        Ok(unsafe { load_aligned_at(self.mapping.ptr.as_ptr().add(off), len) })
    }

    /// Stores the low `len` (1, 2, 4 or 8) bytes of `v` at a `len`-aligned `addr` in one
    /// access (see [`GuestMemory::load_aligned`]).
    pub fn store_aligned(
        &self,
        addr: GuestPhysAddr,
        len: usize,
        v: u64,
    ) -> Result<(), MemoryError> {
        let off = self.check_aligned(addr, len)?;
        // SAFETY: as in load_aligned.
        unsafe {
            store_aligned_at(self.mapping.ptr.as_ptr().add(off), len, v);
        }
        Ok(())
    }

    /// Atomically replaces the naturally aligned 8-byte word at `addr` by `new` if it holds
    /// `old` (as a locked CMPXCHG in the guest would); whether it did. An unaligned `addr`
    /// is out of range.
    pub fn compare_exchange_u64(
        &self,
        addr: GuestPhysAddr,
        old: u64,
        new: u64,
    ) -> Result<bool, MemoryError> {
        let off = self.check(addr, 8)?;
        if off % 8 != 0 {
            return Err(MemoryError::OutOfRange {
                addr,
                len: 8,
                size: self.size,
            });
        }
        // SAFETY: [off, off + 8) is inside the live mapping (checked) and 8-byte aligned
        // (the mapping starts on a huge-page boundary); guest RAM is shared with the
        // guest's vCPUs, which is what the atomic access is for.
        let word = unsafe {
            std::sync::atomic::AtomicU64::from_ptr(self.mapping.ptr.as_ptr().add(off).cast::<u64>())
        };
        Ok(word
            .compare_exchange(
                old.to_le(),
                new.to_le(),
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .is_ok())
    }

    pub fn write_u64(&self, addr: GuestPhysAddr, v: u64) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    pub fn write_u32(&self, addr: GuestPhysAddr, v: u32) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    /// Translate `addr` through the 4-level page tables rooted at `cr3` (long mode).
    pub fn translate(&self, cr3: u64, addr: GuestVirtAddr) -> Result<GuestPhysAddr, MemoryError> {
        let not_mapped = MemoryError::NotMapped { addr, cr3 };
        let va = addr.0;
        let mut table = cr3 & PTE_ADDR_MASK;
        // Levels: PML4 (bits 47:39), PDPT (38:30), PD (29:21), PT (20:12).
        for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
            let index = (va >> shift) & 0x1ff;
            let entry = self
                .read_u64(GuestPhysAddr(table + index * 8))
                .map_err(|_| MemoryError::NotMapped { addr, cr3 })?;
            if entry & PTE_P == 0 {
                return Err(not_mapped);
            }
            let large = (level == 1 || level == 2) && entry & PTE_PS != 0;
            if large || level == 3 {
                let page_mask = (1u64 << shift) - 1;
                let base = entry & PTE_ADDR_MASK & !page_mask;
                return Ok(GuestPhysAddr(base | (va & page_mask)));
            }
            table = entry & PTE_ADDR_MASK;
        }
        Err(not_mapped)
    }

    /// Translate `addr` in any paging mode.
    pub fn translate_in(
        &self,
        mode: PagingMode,
        cr3: u64,
        addr: GuestVirtAddr,
    ) -> Result<GuestPhysAddr, MemoryError> {
        let not_mapped = || MemoryError::NotMapped { addr, cr3 };
        let va = addr.0;
        match mode {
            PagingMode::None => Ok(GuestPhysAddr(va & 0xffff_ffff)),
            PagingMode::Long4 => self.translate(cr3, addr),
            PagingMode::Bits32 => {
                let va = va & 0xffff_ffff;
                let mut e = [0u8; 4];
                let pde_addr = (cr3 & 0xffff_f000) + ((va >> 22) << 2);
                self.read(GuestPhysAddr(pde_addr), &mut e)
                    .map_err(|_| not_mapped())?;
                let pde = u64::from(u32::from_le_bytes(e));
                if pde & PTE_P == 0 {
                    return Err(not_mapped());
                }
                if pde & PTE_PS != 0 {
                    return Ok(GuestPhysAddr((pde & 0xffc0_0000) | (va & 0x3f_ffff)));
                }
                let pte_addr = (pde & 0xffff_f000) + (((va >> 12) & 0x3ff) << 2);
                self.read(GuestPhysAddr(pte_addr), &mut e)
                    .map_err(|_| not_mapped())?;
                let pte = u64::from(u32::from_le_bytes(e));
                if pte & PTE_P == 0 {
                    return Err(not_mapped());
                }
                Ok(GuestPhysAddr((pte & 0xffff_f000) | (va & 0xfff)))
            }
            PagingMode::Pae => {
                let va = va & 0xffff_ffff;
                let entry = |table: u64, index: u64| {
                    self.read_u64(GuestPhysAddr(table + (index << 3)))
                        .map_err(|_| not_mapped())
                        .and_then(|e| {
                            if e & PTE_P == 0 {
                                Err(not_mapped())
                            } else {
                                Ok(e)
                            }
                        })
                };
                let pdpte = entry(cr3 & 0xffff_ffe0, va >> 30)?;
                let pde = entry(pdpte & PTE_ADDR_MASK, (va >> 21) & 0x1ff)?;
                if pde & PTE_PS != 0 {
                    let base = pde & PTE_ADDR_MASK & !0x1f_ffff;
                    return Ok(GuestPhysAddr(base | (va & 0x1f_ffff)));
                }
                let pte = entry(pde & PTE_ADDR_MASK, (va >> 12) & 0x1ff)?;
                Ok(GuestPhysAddr((pte & PTE_ADDR_MASK) | (va & 0xfff)))
            }
        }
    }

    /// Read guest memory by virtual address in any paging mode, page by page.
    pub fn read_virt_in(
        &self,
        mode: PagingMode,
        cr3: u64,
        addr: GuestVirtAddr,
        buf: &mut [u8],
    ) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let va = GuestVirtAddr(addr.0.wrapping_add(done as u64));
            let pa = self.translate_in(mode, cr3, va)?;
            let in_page = (4096 - (va.0 & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            self.read(pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Read guest memory by virtual address (long-mode paging), page by page.
    pub fn read_virt(
        &self,
        cr3: u64,
        addr: GuestVirtAddr,
        buf: &mut [u8],
    ) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let va = GuestVirtAddr(addr.0.wrapping_add(done as u64));
            let pa = self.translate(cr3, va)?;
            let in_page = (4096 - (va.0 & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            self.read(pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

/// Loads `len` (1, 2, 4 or 8; anything else reads 8) little-endian bytes at `p` in one
/// access: an aligned load is single-copy atomic for the guest (its vCPUs share the
/// memory, which is what the atomic access is for).
///
/// # Safety
/// `p` must point into live guest RAM ([`GuestMemory::page_ptr`]), aligned to `len`,
/// with `len` bytes readable.
#[inline]
pub unsafe fn load_aligned_at(p: *mut u8, len: usize) -> u64 {
    use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
    // SAFETY: the caller's contract; only atomics touch the bytes.
    unsafe {
        match len {
            1 => u64::from(AtomicU8::from_ptr(p).load(Ordering::Acquire)),
            2 => u64::from(u16::from_le(
                AtomicU16::from_ptr(p.cast()).load(Ordering::Acquire),
            )),
            4 => u64::from(u32::from_le(
                AtomicU32::from_ptr(p.cast()).load(Ordering::Acquire),
            )),
            _ => u64::from_le(AtomicU64::from_ptr(p.cast()).load(Ordering::Acquire)),
        }
    }
}

/// Stores the low `len` (1, 2, 4 or 8; anything else writes 8) bytes of `v` at `p` in one
/// access (see [`load_aligned_at`]).
///
/// # Safety
/// As [`load_aligned_at`], with the bytes writable.
#[inline]
pub unsafe fn store_aligned_at(p: *mut u8, len: usize, v: u64) {
    use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};
    // SAFETY: the caller's contract; only atomics touch the bytes.
    unsafe {
        match len {
            1 => AtomicU8::from_ptr(p).store(v as u8, Ordering::Release),
            2 => AtomicU16::from_ptr(p.cast()).store((v as u16).to_le(), Ordering::Release),
            4 => AtomicU32::from_ptr(p.cast()).store((v as u32).to_le(), Ordering::Release),
            _ => AtomicU64::from_ptr(p.cast()).store(v.to_le(), Ordering::Release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{PTE_RW, PTE_US};

    #[test]
    fn page_pointers_reach_the_same_bytes_as_the_checked_accesses() {
        let m = GuestMemory::new(1 << 20).unwrap();
        assert!(
            m.page_ptr(GuestPhysAddr(0x1001)).is_none(),
            "not page-aligned"
        );
        assert!(m.page_ptr(GuestPhysAddr(1 << 20)).is_none(), "past the end");
        assert!(m.page_ptr(GuestPhysAddr((1 << 20) - 4096)).is_some());
        let p = m.page_ptr(GuestPhysAddr(0x3000)).unwrap().as_ptr();
        // SAFETY: inside the page `page_ptr` gave, aligned to each size.
        unsafe {
            store_aligned_at(p.add(8), 8, 0x1122_3344_5566_7788);
            store_aligned_at(p.add(2), 2, 0xabcd);
            assert_eq!(load_aligned_at(p.add(12), 4), 0x1122_3344);
        }
        assert_eq!(
            m.read_u64(GuestPhysAddr(0x3008)).unwrap(),
            0x1122_3344_5566_7788
        );
        assert_eq!(m.load_aligned(GuestPhysAddr(0x3002), 2).unwrap(), 0xabcd);
    }

    #[test]
    fn bounds_are_checked() {
        let m = GuestMemory::new(1 << 20).unwrap();
        assert!(m.write(GuestPhysAddr(0), b"abc").is_ok());
        assert!(m.write(GuestPhysAddr((1 << 20) - 2), b"abc").is_err());
        assert!(m.write(GuestPhysAddr(u64::MAX), b"a").is_err());
        assert_eq!(m.host_base() % (2 << 20), 0, "2 MiB aligned");
        assert!(GuestMemory::new(0).is_err());
        let mut b = [0u8; 3];
        m.read(GuestPhysAddr(0), &mut b).unwrap();
        assert_eq!(&b, b"abc");
    }

    #[test]
    fn a_file_is_read_straight_into_guest_memory_up_to_its_end() {
        use std::io::Write;
        let m = GuestMemory::new(1 << 20).unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        m.write(GuestPhysAddr(0x2000), &[0xaa; 16]).unwrap();
        // Short at the end of the file: the rest of the range is left as it was.
        assert_eq!(m.read_file(GuestPhysAddr(0x2000), 16, &f, 4).unwrap(), 6);
        let mut b = [0u8; 16];
        m.read(GuestPhysAddr(0x2000), &mut b).unwrap();
        assert_eq!(&b[..6], b"456789");
        assert_eq!(b[6..], [0xaa; 10]);
        // Past the end of the file (or an offset no file has): nothing read.
        assert_eq!(m.read_file(GuestPhysAddr(0x2000), 16, &f, 100).unwrap(), 0);
        assert_eq!(m.read_file(GuestPhysAddr(0), 1, &f, u64::MAX).unwrap(), 0);
        // Outside guest RAM: an error, and nothing is read.
        assert!(m.read_file(GuestPhysAddr((1 << 20) - 4), 8, &f, 0).is_err());
        assert!(m.read_file(GuestPhysAddr(u64::MAX), 1, &f, 0).is_err());
    }

    #[test]
    fn invalidate_keeps_the_contents_and_discard_does_not() {
        let page = host_page_size();
        let m = GuestMemory::new(16 * page).unwrap();
        m.write(GuestPhysAddr(page + 5), b"kept").unwrap();
        m.invalidate(GuestPhysAddr(page), 2 * page).unwrap();
        let mut b = [0u8; 4];
        m.read(GuestPhysAddr(page + 5), &mut b).unwrap();
        assert_eq!(&b, b"kept");
        // Still writable.
        m.write(GuestPhysAddr(page + 5), b"more").unwrap();
        assert!(
            m.invalidate(GuestPhysAddr(page + 1), page).is_err(),
            "unaligned"
        );
        assert!(
            m.invalidate(GuestPhysAddr(15 * page), 2 * page).is_err(),
            "outside"
        );
        m.discard(GuestPhysAddr(page), page).unwrap();
        m.read(GuestPhysAddr(page + 5), &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn zero_clears_edges_and_whole_pages() {
        let page = host_page_size();
        let m = GuestMemory::new(16 * page).unwrap();
        let ones = vec![0xAAu8; (16 * page) as usize];
        // Unaligned start and end, several whole pages between, and a range inside one page.
        for (start, len) in [
            (100, 5 * page + 17),
            (3 * page, 2 * page),
            (7 * page + 9, 40),
        ] {
            m.write(GuestPhysAddr(0), &ones).unwrap();
            m.zero(GuestPhysAddr(start), len).unwrap();
            let mut all = vec![0u8; ones.len()];
            m.read(GuestPhysAddr(0), &mut all).unwrap();
            for (i, b) in all.iter().enumerate() {
                let inside = (start..start + len).contains(&(i as u64));
                assert_eq!(
                    *b,
                    if inside { 0 } else { 0xAA },
                    "byte {i} of {start}+{len}"
                );
            }
        }
        assert!(m.zero(GuestPhysAddr(15 * page), 2 * page).is_err());

        // Mostly untouched memory: the untouched pages are dropped, the touched ones
        // written; all of it reads as zero.
        let big = GuestMemory::new(1 << 30).unwrap();
        big.write(GuestPhysAddr(512 << 20), &[0x55; 3]).unwrap();
        big.zero(GuestPhysAddr(1), (1 << 30) - 2).unwrap();
        for at in [1u64, 4096, 512 << 20, (512 << 20) + 2, (1 << 30) - 2] {
            let mut b = [0xFFu8];
            big.read(GuestPhysAddr(at), &mut b).unwrap();
            assert_eq!(b, [0], "at {at:#x}");
        }
    }

    #[test]
    fn aligned_loads_and_stores_are_little_endian_and_checked() {
        let m = GuestMemory::new(1 << 20).unwrap();
        m.store_aligned(GuestPhysAddr(0x100), 8, 0x1122_3344_5566_7788)
            .unwrap();
        m.store_aligned(GuestPhysAddr(0x104), 2, 0xaabb).unwrap();
        m.store_aligned(GuestPhysAddr(0x107), 1, 0xcc).unwrap();
        assert_eq!(
            m.read_u64(GuestPhysAddr(0x100)).unwrap(),
            0xcc22_aabb_5566_7788
        );
        assert_eq!(
            m.load_aligned(GuestPhysAddr(0x104), 4).unwrap(),
            0xcc22_aabb
        );
        assert_eq!(m.load_aligned(GuestPhysAddr(0x106), 2).unwrap(), 0xcc22);
        assert_eq!(
            m.load_aligned(GuestPhysAddr(0x100), 8).unwrap(),
            0xcc22_aabb_5566_7788
        );
        assert!(
            m.load_aligned(GuestPhysAddr(0x102), 4).is_err(),
            "misaligned"
        );
        assert!(
            m.store_aligned(GuestPhysAddr(0x100), 3, 0).is_err(),
            "odd size"
        );
        assert!(
            m.load_aligned(GuestPhysAddr(1 << 20), 1).is_err(),
            "outside RAM"
        );
    }

    #[test]
    fn compare_exchange_replaces_only_the_expected_aligned_word() {
        let m = GuestMemory::new(1 << 20).unwrap();
        m.write_u64(GuestPhysAddr(0x1000), 0x27).unwrap();
        assert!(
            !m.compare_exchange_u64(GuestPhysAddr(0x1000), 0x7, 0x67)
                .unwrap()
        );
        assert_eq!(m.read_u64(GuestPhysAddr(0x1000)).unwrap(), 0x27);
        assert!(
            m.compare_exchange_u64(GuestPhysAddr(0x1000), 0x27, 0x67)
                .unwrap()
        );
        assert_eq!(m.read_u64(GuestPhysAddr(0x1000)).unwrap(), 0x67);
        assert!(m.compare_exchange_u64(GuestPhysAddr(0x1004), 0, 1).is_err());
        assert!(
            m.compare_exchange_u64(GuestPhysAddr(1 << 20), 0, 1)
                .is_err()
        );
    }

    #[test]
    fn paging_modes_from_control_registers() {
        use crate::arch::{CR0_PE, CR4_PAE, EFER_LMA, EFER_LME};
        assert_eq!(PagingMode::from_regs(CR0_PE, 0, 0), PagingMode::None);
        assert_eq!(
            PagingMode::from_regs(CR0_PE | CR0_PG, 0, 0),
            PagingMode::Bits32
        );
        assert_eq!(
            PagingMode::from_regs(CR0_PE | CR0_PG, CR4_PAE, 0),
            PagingMode::Pae
        );
        assert_eq!(
            PagingMode::from_regs(CR0_PE | CR0_PG, CR4_PAE, EFER_LME | EFER_LMA),
            PagingMode::Long4
        );
    }

    #[test]
    fn page_walk_32bit_pae_and_none() {
        let m = GuestMemory::new(16 << 20).unwrap();
        let f = PTE_P | PTE_RW;
        // 32-bit: PD at 0x1000; 0x0040_0000.. is a 4 MiB page at 8 MiB; 0x5000 via a PT.
        m.write_u32(GuestPhysAddr(0x1000 + 4), ((8 << 20) | f | PTE_PS) as u32)
            .unwrap();
        m.write_u32(GuestPhysAddr(0x1000), (0x2000 | f) as u32)
            .unwrap();
        m.write_u32(GuestPhysAddr(0x2000 + 5 * 4), (0x9000 | f) as u32)
            .unwrap();
        let t = |mode, cr3, va| m.translate_in(mode, cr3, GuestVirtAddr(va));
        assert_eq!(
            t(PagingMode::Bits32, 0x1000, 0x40_0123).unwrap(),
            GuestPhysAddr((8 << 20) + 0x123)
        );
        assert_eq!(
            t(PagingMode::Bits32, 0x1000, 0x5042).unwrap(),
            GuestPhysAddr(0x9042)
        );
        assert!(t(PagingMode::Bits32, 0x1000, 0x6000).is_err());
        // PAE: PDPT at 0x3000 -> PD at 0x4000 -> a 2 MiB page at 4 MiB for 0..2M.
        m.write_u64(GuestPhysAddr(0x3000), 0x4000 | PTE_P).unwrap();
        m.write_u64(GuestPhysAddr(0x4000), (4 << 20) | f | PTE_PS)
            .unwrap();
        assert_eq!(
            t(PagingMode::Pae, 0x3000, 0x1_2345).unwrap(),
            GuestPhysAddr((4 << 20) + 0x1_2345)
        );
        assert!(t(PagingMode::Pae, 0x3000, 0x4000_0000).is_err());
        assert_eq!(
            t(PagingMode::None, 0, 0x1234).unwrap(),
            GuestPhysAddr(0x1234)
        );
    }

    #[test]
    fn page_walk_handles_4k_2m_and_unmapped() {
        let m = GuestMemory::new(8 << 20).unwrap();
        let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        let f = PTE_P | PTE_RW | PTE_US;
        m.write_u64(GuestPhysAddr(pml4), pdpt | f).unwrap();
        m.write_u64(GuestPhysAddr(pdpt), pd | f).unwrap();
        // 0..2M through a 4K page table; 2M..4M as one 2 MiB page mapped at 4M.
        m.write_u64(GuestPhysAddr(pd), pt | f).unwrap();
        m.write_u64(GuestPhysAddr(pd + 8), (4 << 20) | f | PTE_PS)
            .unwrap();
        m.write_u64(GuestPhysAddr(pt + 5 * 8), 0x7000 | f).unwrap();
        assert_eq!(
            m.translate(pml4, GuestVirtAddr(0x5123)).unwrap(),
            GuestPhysAddr(0x7123)
        );
        assert_eq!(
            m.translate(pml4, GuestVirtAddr((2 << 20) + 0x42)).unwrap(),
            GuestPhysAddr((4 << 20) + 0x42)
        );
        assert!(matches!(
            m.translate(pml4, GuestVirtAddr(0x6000)),
            Err(MemoryError::NotMapped { .. })
        ));
        m.write(GuestPhysAddr(0x7ffe), b"xy").unwrap();
        m.write(GuestPhysAddr((4 << 20) + 0x10), b"z").unwrap();
        let mut b = [0u8; 2];
        m.read_virt(pml4, GuestVirtAddr(0x5ffe), &mut b).unwrap();
        assert_eq!(&b, b"xy");
    }
}
