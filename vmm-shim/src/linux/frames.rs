//! Guest-physical 4 KiB frames: the one pool every address space of a VM (and every
//! shared memory object, [`super::shm`]) draws its pages and page tables from.

use std::sync::{Arc, Mutex};

use crate::linux::abi::PAGE;
use crate::linux::errno::Errno;
use crate::memory::{GuestMemory, GuestPhysAddr};

/// Guest-physical 4 KiB frames, handed out from `[next, end)` and a free list. Page
/// tables come from the top down, data from the bottom up: a table is written when a
/// mapping is made, a data page only when the program touches it, and keeping tables
/// apart keeps untouched data out of the host pages (huge pages) the tables dirty.
#[derive(Debug)]
pub struct Frames {
    next: u64,
    end: u64,
    free: Vec<u64>,
    in_use: u64,
    /// The frame every read-only page of zeros maps ([`Frames::zero`]), once one is.
    zero: Option<u64>,
}

impl Frames {
    /// The frames of guest-physical `[first, end)` (both page-aligned).
    pub fn new(first: u64, end: u64) -> Frames {
        Frames {
            next: first,
            end,
            free: Vec::new(),
            in_use: 0,
            zero: None,
        }
    }

    /// A pool with no frames (tests).
    #[cfg(test)]
    pub fn empty() -> Frames {
        Frames::new(0, 0)
    }

    /// A frame for a page table (from the top).
    pub fn alloc_table(&mut self, mem: &GuestMemory) -> Result<GuestPhysAddr, Errno> {
        if self.next + PAGE > self.end {
            return self.alloc(mem);
        }
        self.end -= PAGE;
        self.in_use += 1;
        Ok(GuestPhysAddr(self.end))
    }

    /// A data frame (zero: fresh, or discarded when it was released).
    pub fn alloc(&mut self, _mem: &GuestMemory) -> Result<GuestPhysAddr, Errno> {
        if let Some(f) = self.free.pop() {
            // Freed frames were discarded (zero-filled) when they were released.
            self.in_use += 1;
            return Ok(GuestPhysAddr(f));
        }
        if self.next + PAGE > self.end {
            return Err(Errno::ENOMEM);
        }
        let f = self.next;
        self.next += PAGE;
        self.in_use += 1;
        Ok(GuestPhysAddr(f))
    }

    /// The one frame of zeros that read-only anonymous pages map (as Linux's zero page):
    /// never written, never released.
    pub fn zero(&mut self, mem: &GuestMemory) -> Result<GuestPhysAddr, Errno> {
        if let Some(f) = self.zero {
            return Ok(GuestPhysAddr(f));
        }
        let f = self.alloc(mem)?;
        self.zero = Some(f.0);
        Ok(f)
    }

    /// Take back `frame` (its host page was discarded already).
    pub fn release(&mut self, frame: u64) {
        self.free.push(frame);
        self.in_use -= 1;
    }

    /// Frames handed out.
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// Bytes never handed out or given back.
    pub fn free_bytes(&self) -> u64 {
        (self.end - self.next) + self.free.len() as u64 * PAGE
    }
}

/// The guest-physical frames every address space of a VM draws from (each guest
/// process has its own page tables; the frames are one pool).
pub type FramePool = Arc<Mutex<Frames>>;

/// Discard `frames` (one `madvise` per physically contiguous run), then give them back to
/// `pool`. KVM may still hold a translation to one (a shadow page table does not see
/// the shim's writes to the guest's tables): discarding its host page makes the MMU
/// notifier drop those translations.
pub fn retire_all(mem: &GuestMemory, pool: &FramePool, mut freed: Vec<u64>) -> Result<(), Errno> {
    freed.sort_unstable();
    for (start, len) in runs(&freed) {
        mem.discard(GuestPhysAddr(start), len)
            .map_err(|_| Errno::EFAULT)?;
    }
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    // Highest first: the free list is a stack, so the frames come back out lowest first,
    // in address order, and the next mapping made of them is contiguous (its file pages
    // are read with one pread per run, [`super::mm`]).
    for f in freed.into_iter().rev() {
        pool.release(f);
    }
    Ok(())
}

/// The physically contiguous runs of the sorted frames `sorted`: (first frame, bytes).
pub fn runs(sorted: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *sorted.get(i)?;
        let mut j = i + 1;
        while j < sorted.len() && sorted[j] == sorted[j - 1] + PAGE {
            j += 1;
        }
        let run = (first, (j - i) as u64 * PAGE);
        i = j;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_retired_together_come_back_in_address_order() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        let pool: FramePool = Arc::new(Mutex::new(Frames::new(0x1000, 1 << 20)));
        let taken: Vec<u64> = (0..4)
            .map(|_| pool.lock().unwrap().alloc(&mem).unwrap().0)
            .collect();
        // Retired in any order (an unmap collects them page by page, maybe reversed).
        retire_all(&mem, &pool, taken.iter().rev().copied().collect()).unwrap();
        let again: Vec<u64> = (0..4)
            .map(|_| pool.lock().unwrap().alloc(&mem).unwrap().0)
            .collect();
        assert_eq!(again, taken);
        assert_eq!(runs(&again).count(), 1, "one contiguous run");
    }

    #[test]
    fn runs_are_the_contiguous_stretches() {
        let f = [0x1000, 0x2000, 0x3000, 0x8000, 0xa000, 0xb000];
        let r: Vec<(u64, u64)> = runs(&f).collect();
        assert_eq!(r, [(0x1000, 3 * PAGE), (0x8000, PAGE), (0xa000, 2 * PAGE)]);
        assert_eq!(runs(&[]).count(), 0);
    }
}
