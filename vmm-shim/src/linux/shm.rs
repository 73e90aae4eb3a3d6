//! Memory shared between guest processes: `MAP_SHARED` mappings.
//!
//! A [`SharedObject`] owns the guest-physical frames of one shared thing: the pages of a
//! `MAP_SHARED | MAP_ANONYMOUS` region, or the pages of one host file (a `/dev/shm` file
//! of `shm_open`, a `memfd`, any regular file mapped `MAP_SHARED`), by page index. A
//! mapping of it ([`ShmRef`], held by the mapping's VMA in [`super::mm`]) maps those
//! frames rather than frames of its own, marked [`PTE_SHARED`] in the page tables, so:
//! * `fork` maps the same frames in the child (the VMA, and with it a reference to the
//!   object, is cloned), and what either process writes the other sees;
//! * `munmap`, `execve` and a process's end drop translations, never the frames: the
//!   object frees them when its last mapping goes;
//! * every mapping of one host file, in any process of the VM, shares one object (the
//!   VM's [`ShmFiles`] registry, keyed by device and inode), as Linux's page cache does.
//!
//! File pages reach the file ([`SharedObject::write_back`]) on `msync`, when the last
//! mapping goes, when a process ends, and before the guest reads the file through a
//! descriptor (read, pread, readv, sendfile…); a write to the file through a
//! descriptor (write, pwrite, ftruncate…) is read back into the pages
//! ([`SharedObject::reload`]). A read, pread or pwrite does so for the pages of its
//! bytes only, the other calls for every page. So a guest
//! `read()` sees what was written through a mapping, and a mapping sees what was
//! written with `write()`. What differs from Linux: a host process (outside the VM)
//! writing the file meanwhile is seen by the mappings only after the guest's next
//! write to the file, and the shim writes the whole mapped part of the file back, not
//! only dirty pages (the guest's writes to its memory are not trapped).
//!
//! Futexes in shared memory ([`super::thread`]) are keyed by the guest-physical address
//! of the word, which is the same in every process mapping it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::linux::abi::PAGE;
use crate::linux::errno::Errno;
use crate::linux::frames::{self, FramePool};
use crate::linux::host;
use crate::memory::{GuestMemory, GuestPhysAddr};

/// A software-available bit of a leaf page-table entry (ignored by the CPU): the frame
/// belongs to a [`SharedObject`], not to the address space.
pub const PTE_SHARED: u64 = 1 << 9;

/// The host file behind a shared object.
#[derive(Debug)]
struct Backing {
    file: Arc<File>,
    /// Some mapping may write (the file was opened for writing): pages go back to it.
    writable: bool,
}

/// The frames of one shared region or file (see the module doc).
pub struct SharedObject {
    mem: Arc<GuestMemory>,
    pool: FramePool,
    /// Page index (file offset / 4 KiB for a file) → guest-physical frame.
    pages: Mutex<BTreeMap<u64, u64>>,
    file: Option<Mutex<Backing>>,
}

impl std::fmt::Debug for SharedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedObject")
            .field("pages", &self.pages().len())
            .field("file", &self.file.is_some())
            .finish()
    }
}

/// A mapping's view of a shared object: the object and the byte offset in it of the
/// mapping's first page.
#[derive(Clone, Debug)]
pub struct ShmRef {
    pub obj: Arc<SharedObject>,
    pub offset: u64,
    /// The mapping may be made writable (`mprotect`): not for a file opened read-only.
    pub may_write: bool,
}

impl SharedObject {
    /// A new `MAP_SHARED | MAP_ANONYMOUS` region (its pages are zero).
    pub fn anonymous(mem: Arc<GuestMemory>, pool: FramePool) -> Arc<SharedObject> {
        Arc::new(SharedObject {
            mem,
            pool,
            pages: Mutex::default(),
            file: None,
        })
    }

    fn pages(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.pages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backing(&self) -> Option<MutexGuard<'_, Backing>> {
        self.file
            .as_ref()
            .map(|b| b.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The frame of page `index`, made when new (filled from the file, if any).
    pub fn frame(&self, index: u64) -> Result<GuestPhysAddr, Errno> {
        let mut pages = self.pages();
        if let Some(&f) = pages.get(&index) {
            return Ok(GuestPhysAddr(f));
        }
        let f = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alloc(&self.mem)?;
        if let Some(b) = self.backing() {
            let mut buf = vec![0u8; PAGE as usize];
            let n = host::pread_full(&b.file, &mut buf, index.saturating_mul(PAGE));
            drop(b);
            if self.mem.write(f, &buf[..n]).is_err() {
                let _ = frames::retire_all(&self.mem, &self.pool, vec![f.0]);
                return Err(Errno::EFAULT);
            }
        }
        pages.insert(index, f.0);
        Ok(f)
    }

    /// Whether it holds a host file's pages.
    pub fn is_file(&self) -> bool {
        self.file.is_some()
    }

    /// Write pages `[from, to)` (indices) that exist back to the file, within its size
    /// (a page past the end stays in memory, as on Linux). A region, or a file nobody
    /// may write, has nothing to write back.
    pub fn write_back(&self, from: u64, to: u64) -> Result<(), Errno> {
        let Some(b) = self.backing() else {
            return Ok(());
        };
        if !b.writable || from >= to {
            return Ok(());
        }
        let size = host::file_id(b.file.as_fd())?.3;
        let pages = self.pages();
        let mut buf = vec![0u8; PAGE as usize];
        for (&i, &f) in pages.range(from..to) {
            let off = i * PAGE;
            if off >= size {
                break;
            }
            let n = (size - off).min(PAGE) as usize;
            self.mem
                .read(GuestPhysAddr(f), &mut buf[..n])
                .map_err(|_| Errno::EFAULT)?;
            let mut done = 0;
            while done < n {
                let w = host::pwrite(b.file.as_fd(), &buf[done..n], (off + done as u64) as i64)?;
                if w == 0 {
                    return Err(Errno(libc::EIO));
                }
                done += w;
            }
        }
        Ok(())
    }

    /// [`Self::write_back`] of every page.
    pub fn write_back_all(&self) -> Result<(), Errno> {
        self.write_back(0, u64::MAX)
    }

    /// Read pages `[from, to)` (indices) that exist in again from the file (it was
    /// written through a descriptor); past its end, zero.
    pub fn reload(&self, from: u64, to: u64) -> Result<(), Errno> {
        let Some(b) = self.backing() else {
            return Ok(());
        };
        if from >= to {
            return Ok(());
        }
        let pages = self.pages();
        let mut buf = vec![0u8; PAGE as usize];
        for (&i, &f) in pages.range(from..to) {
            buf.fill(0);
            host::pread_full(&b.file, &mut buf, i * PAGE);
            self.mem
                .write(GuestPhysAddr(f), &buf)
                .map_err(|_| Errno::EFAULT)?;
        }
        Ok(())
    }

    /// Frames it holds.
    pub fn len(&self) -> usize {
        self.pages().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SharedObject {
    /// The last mapping went: the file gets its pages, the pool its frames.
    fn drop(&mut self) {
        let _ = self.write_back_all();
        let freed: Vec<u64> = std::mem::take(&mut *self.pages()).into_values().collect();
        let _ = frames::retire_all(&self.mem, &self.pool, freed);
    }
}

/// The shared objects of host files mapped `MAP_SHARED` in the VM, by (device, inode).
#[derive(Debug, Default)]
pub struct ShmFiles {
    map: Mutex<HashMap<(u64, u64), Weak<SharedObject>>>,
}

impl ShmFiles {
    fn map(&self) -> MutexGuard<'_, HashMap<(u64, u64), Weak<SharedObject>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object of the file `file` is open on (a new one when the file is not mapped
    /// shared anywhere in the VM). `writable`: `file` is open for writing.
    pub fn object(
        &self,
        mem: &Arc<GuestMemory>,
        pool: &FramePool,
        file: Arc<File>,
        writable: bool,
    ) -> Result<Arc<SharedObject>, Errno> {
        let (_, dev, ino, _) = host::file_id(file.as_fd())?;
        let mut map = self.map();
        if let Some(obj) = map.get(&(dev, ino)).and_then(Weak::upgrade) {
            if let Some(mut b) = obj.backing()
                && writable
                && !b.writable
            {
                *b = Backing { file, writable };
            }
            return Ok(obj);
        }
        map.retain(|_, w| w.strong_count() > 0);
        let obj = Arc::new(SharedObject {
            mem: mem.clone(),
            pool: pool.clone(),
            pages: Mutex::default(),
            file: Some(Mutex::new(Backing { file, writable })),
        });
        map.insert((dev, ino), Arc::downgrade(&obj));
        Ok(obj)
    }

    /// The object of the file host descriptor `fd` is open on, if it is mapped shared.
    pub fn lookup(&self, fd: std::os::fd::BorrowedFd<'_>) -> Option<Arc<SharedObject>> {
        if self.is_empty() {
            return None;
        }
        let (_, dev, ino, _) = host::file_id(fd).ok()?;
        self.map().get(&(dev, ino)).and_then(Weak::upgrade)
    }

    /// Whether no file is mapped shared (the common case: nothing to keep coherent).
    pub fn is_empty(&self) -> bool {
        let mut map = self.map();
        map.retain(|_, w| w.strong_count() > 0);
        map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::frames::Frames;

    fn setup() -> (Arc<GuestMemory>, FramePool) {
        let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
        let pool = Arc::new(Mutex::new(Frames::new(1 << 20, 4 << 20)));
        (mem, pool)
    }

    #[test]
    fn a_region_hands_out_one_frame_per_page_and_frees_them_when_dropped() {
        let (mem, pool) = setup();
        let obj = SharedObject::anonymous(mem.clone(), pool.clone());
        let a = obj.frame(3).unwrap();
        assert_eq!(obj.frame(3).unwrap(), a, "the same page is the same frame");
        assert_ne!(obj.frame(4).unwrap(), a);
        assert_eq!(pool.lock().unwrap().in_use(), 2);
        drop(obj);
        assert_eq!(pool.lock().unwrap().in_use(), 0);
    }

    #[test]
    fn file_pages_are_read_in_written_back_within_the_size_and_reloaded() {
        let (mem, pool) = setup();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let open = || {
            Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap(),
            )
        };
        let files = ShmFiles::default();
        assert!(files.is_empty());
        let obj = files.object(&mem, &pool, open(), true).unwrap();
        // A second open of the same file is the same object.
        let again = files.object(&mem, &pool, open(), false).unwrap();
        assert!(Arc::ptr_eq(&obj, &again));
        let f = obj.frame(0).unwrap();
        let mut b = [0u8; 12];
        mem.read(f, &mut b).unwrap();
        assert_eq!(&b, b"0123456789\0\0");
        mem.write(f, b"abcdefghijkl").unwrap();
        obj.write_back_all().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"abcdefghij",
            "within the size"
        );
        std::fs::write(&path, b"ZYXWVUTSRQPO").unwrap();
        obj.reload(1, 5).unwrap();
        mem.read(f, &mut b).unwrap();
        assert_eq!(&b, b"abcdefghijkl", "page 0 is not in the range");
        obj.reload(0, u64::MAX).unwrap();
        mem.read(f, &mut b).unwrap();
        assert_eq!(&b, b"ZYXWVUTSRQPO");
        let file = open();
        assert!(files.lookup(file.as_fd()).is_some());
        drop((obj, again));
        assert!(files.lookup(file.as_fd()).is_none());
        assert!(files.is_empty());
        assert_eq!(pool.lock().unwrap().in_use(), 0);
    }
}
