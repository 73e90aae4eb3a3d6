//! Owner of the bytes that DWARF readers borrow: mmapped files and decompressed sections.
//!
//! gimli readers are fastest over plain `&[u8]` slices, but a cached module must own the
//! files its readers point into. [`Arena`] keeps every mapping and buffer alive, never
//! moves or mutates their contents, and hands out slices whose lifetime the *caller*
//! promises not to outlive the arena (see [`crate::module::Module`], which declares the
//! borrowing fields before the arena so they are dropped first).

use std::fs::File;
use std::io;
use std::sync::Mutex;

use memmap2::Mmap;

/// Mappings and buffers that live as long as the arena.
#[derive(Default)]
pub(crate) struct Arena {
    maps: Mutex<Vec<Mmap>>,
    buffers: Mutex<Vec<Box<[u8]>>>,
}

impl Arena {
    /// Maps `file` read-only and keeps the mapping.
    ///
    /// # Safety
    /// The returned slice must not be used after `self` is dropped.
    pub(crate) unsafe fn map(&self, file: &File) -> io::Result<&'static [u8]> {
        // SAFETY: the mapping is private and read-only. Another process could still truncate
        // or rewrite the file underneath us (as with every debugger and symbolizer that
        // mmaps binaries); we accept that, because copying whole debug files into memory is
        // what the mmap avoids.
        let map = unsafe { Mmap::map(file) }?;
        let (ptr, len) = (map.as_ptr(), map.len());
        lock(&self.maps).push(map);
        // SAFETY: the mapping stays at `ptr` until the `Mmap` (now owned by `self.maps`) is
        // dropped with the arena; it is never written through; the caller promises not to
        // outlive the arena.
        Ok(unsafe { slice(ptr, len) })
    }

    /// Keeps `bytes` (e.g. a decompressed section) and returns a view of it.
    ///
    /// # Safety
    /// The returned slice must not be used after `self` is dropped.
    pub(crate) unsafe fn keep(&self, bytes: Vec<u8>) -> &'static [u8] {
        let bytes = bytes.into_boxed_slice();
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        lock(&self.buffers).push(bytes);
        // SAFETY: the boxed slice's heap buffer does not move when the box is moved into the
        // vector and is only freed when the arena is dropped; nothing mutates it; the caller
        // promises not to outlive the arena.
        unsafe { slice(ptr, len) }
    }
}

/// # Safety
/// `ptr..ptr+len` must stay valid and unmodified for as long as the slice is used.
unsafe fn slice(ptr: *const u8, len: usize) -> &'static [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: forwarded from the caller's contract.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while pushing cannot leave a Vec in a broken state, so poisoning is harmless.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn kept_bytes_and_maps_stay_readable() {
        let arena = Arena::default();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello").unwrap();
        // SAFETY: the slices are only used while `arena` is alive.
        let (a, b, empty) = unsafe {
            (
                arena.keep(vec![1, 2, 3]),
                arena.map(f.as_file()).unwrap(),
                arena.keep(Vec::new()),
            )
        };
        for i in 0..100 {
            // SAFETY: as above.
            unsafe { arena.keep(vec![i; 100]) };
        }
        assert_eq!(a, &[1, 2, 3]);
        assert_eq!(b, b"hello");
        assert!(empty.is_empty());
    }
}
