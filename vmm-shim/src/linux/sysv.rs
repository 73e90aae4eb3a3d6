//! System V shared memory (shmget, shmat, shmdt, shmctl) between guest processes.
//!
//! A segment is a [`SharedObject`] (the frames `MAP_SHARED | MAP_ANONYMOUS` regions use,
//! see [`crate::linux::shm`]) in the VM's table of segments, by id and by key: every
//! guest process of the run sees the same segments, and none of the host's (the guest's
//! IPC namespace is the run). `shmat` maps the segment's frames like a shared mapping, so
//! `fork` shares attachments and `execve` or a process's end detaches them. A segment's
//! attachment count is the number of mappings holding its object; `IPC_RMID` takes the
//! segment out of the table at once (later `shmget`s of its key make a new one) and its
//! frames go with its last attachment.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::linux::errno::Errno;
use crate::linux::shm::SharedObject;

/// Largest segment (Linux's default SHMMAX is larger; guest RAM bounds it anyway).
pub const SHMMAX: u64 = 1 << 40;
/// Linux's SHMMNI: most segments at once.
const SHMMNI: usize = 4096;

/// One segment.
#[derive(Debug)]
pub struct Segment {
    pub key: i32,
    pub size: u64,
    pub obj: Arc<SharedObject>,
    /// Permission bits (`shm_perm.mode & 0777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Creator, and last process to attach or detach.
    pub cpid: u64,
    pub lpid: u64,
    pub atime: i64,
    pub dtime: i64,
    pub ctime: i64,
}

impl Segment {
    /// Attachments: the mappings holding the object (the table holds one more).
    pub fn attachments(&self) -> u64 {
        Arc::strong_count(&self.obj).saturating_sub(1) as u64
    }

    /// `struct shmid64_ds` as x86-64 Linux lays it out (112 bytes).
    pub fn to_shmid_ds(&self, id: u64) -> [u8; 112] {
        let mut b = [0u8; 112];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.key.to_le_bytes());
        put(4, &self.uid.to_le_bytes());
        put(8, &self.gid.to_le_bytes());
        put(12, &self.cuid.to_le_bytes());
        put(16, &self.cgid.to_le_bytes());
        put(20, &self.mode.to_le_bytes());
        put(24, &((id >> 15) as u16).to_le_bytes());
        put(48, &self.size.to_le_bytes());
        put(56, &self.atime.to_le_bytes());
        put(64, &self.dtime.to_le_bytes());
        put(72, &self.ctime.to_le_bytes());
        put(80, &(self.cpid as i32).to_le_bytes());
        put(84, &(self.lpid as i32).to_le_bytes());
        put(88, &self.attachments().to_le_bytes());
        b
    }
}

/// The VM's segments.
#[derive(Debug, Default)]
pub struct Segments {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_id: BTreeMap<u64, Segment>,
    next: u64,
}

/// What `shmget` asks for.
pub struct Get {
    pub key: i32,
    pub size: u64,
    pub flags: i32,
}

impl Segments {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `shmget`: the id of the segment with `key` (made with `new` if asked and absent;
    /// IPC_PRIVATE always makes one), by Linux's rules: EEXIST with IPC_CREAT|IPC_EXCL,
    /// ENOENT without IPC_CREAT, EINVAL for a size out of range or larger than the
    /// existing segment's.
    pub fn get(&self, g: &Get, new: impl FnOnce() -> Result<Segment, Errno>) -> Result<u64, Errno> {
        let mut t = self.table();
        if g.key != libc::IPC_PRIVATE {
            let found = t.by_id.iter().find(|(_, s)| s.key == g.key);
            if let Some((&id, s)) = found {
                if g.flags & libc::IPC_CREAT != 0 && g.flags & libc::IPC_EXCL != 0 {
                    return Err(Errno::EEXIST);
                }
                if g.size > s.size {
                    return Err(Errno::EINVAL);
                }
                return Ok(id);
            }
            if g.flags & libc::IPC_CREAT == 0 {
                return Err(Errno(libc::ENOENT));
            }
        }
        if g.size == 0 || g.size > SHMMAX {
            return Err(Errno::EINVAL);
        }
        if t.by_id.len() >= SHMMNI {
            return Err(Errno(libc::ENOSPC));
        }
        let seg = new()?;
        let id = t.next;
        t.next += 1;
        t.by_id.insert(id, seg);
        Ok(id)
    }

    /// Run `f` on segment `id` (EINVAL if there is none).
    pub fn with<T>(&self, id: u64, f: impl FnOnce(&mut Segment) -> T) -> Result<T, Errno> {
        self.table().by_id.get_mut(&id).map(f).ok_or(Errno::EINVAL)
    }

    /// The segment whose object is `obj`, if it is one (shmdt).
    pub fn with_object<T>(
        &self,
        obj: &Arc<SharedObject>,
        f: impl FnOnce(&mut Segment) -> T,
    ) -> Option<T> {
        self.table()
            .by_id
            .values_mut()
            .find(|s| Arc::ptr_eq(&s.obj, obj))
            .map(f)
    }

    /// `IPC_RMID`: the segment leaves the table (its attachments keep its frames).
    pub fn remove(&self, id: u64) -> Result<(), Errno> {
        self.table()
            .by_id
            .remove(&id)
            .map(|_| ())
            .ok_or(Errno::EINVAL)
    }
}

impl crate::linux::Process {
    /// shmget(key, size, flags).
    pub(crate) fn sys_shmget(&mut self, key: u64, size: u64, flags: u64) -> Result<u64, Errno> {
        let g = Get {
            key: key as i32,
            size,
            flags: flags as i32,
        };
        let (mem, pool) = (self.mm.memory_arc(), self.mm.pool());
        let ids = crate::linux::host::ids();
        let now = self.kernel.clock.now(libc::CLOCK_REALTIME)?.0;
        let pid = self.pid;
        let new = || {
            let (uid, gid) = (ids[3] as u32, ids[5] as u32);
            Ok(Segment {
                key: g.key,
                size,
                obj: SharedObject::anonymous(mem, pool),
                mode: flags as u32 & 0o777,
                uid,
                gid,
                cuid: uid,
                cgid: gid,
                cpid: pid,
                lpid: 0,
                atime: 0,
                dtime: 0,
                ctime: now,
            })
        };
        self.kernel.sysv.get(&g, new)
    }

    /// shmat(id, addr, flags): the segment's frames mapped at `addr` (rounded down to
    /// SHMLBA with SHM_RND) or where there is room.
    pub(crate) fn sys_shmat(&mut self, id: u64, addr: u64, flags: u64) -> Result<u64, Errno> {
        use crate::linux::abi::PAGE;
        use crate::linux::mm::Prot;
        use crate::linux::shm::ShmRef;
        let flags = flags as i32;
        let (obj, size) = self.kernel.sysv.with(id, |s| (s.obj.clone(), s.size))?;
        let len = size.div_ceil(PAGE) * PAGE;
        let mut prot = libc::PROT_READ;
        if flags & libc::SHM_RDONLY == 0 {
            prot |= libc::PROT_WRITE;
        }
        if flags & libc::SHM_EXEC != 0 {
            prot |= libc::PROT_EXEC;
        }
        let start = if addr == 0 {
            self.mm.find_free(len).ok_or(Errno::ENOMEM)?
        } else {
            let at = if flags & libc::SHM_RND != 0 {
                addr & !(PAGE - 1)
            } else {
                addr
            };
            if !at.is_multiple_of(PAGE) {
                return Err(Errno::EINVAL);
            }
            if flags & libc::SHM_REMAP == 0 && !self.mm.is_free(at, at.saturating_add(len)) {
                return Err(Errno::EINVAL);
            }
            at
        };
        let shm = ShmRef {
            obj,
            offset: 0,
            may_write: true,
        };
        self.mm
            .map_shared(start, len, Prot(prot as u32), None, shm)?;
        let now = self.kernel.clock.now(libc::CLOCK_REALTIME)?.0;
        let pid = self.pid;
        let _ = self.kernel.sysv.with(id, |s| {
            s.atime = now;
            s.lpid = pid;
        });
        Ok(start)
    }

    /// shmdt(addr): the attachment of a segment that starts at `addr` goes (EINVAL if
    /// no segment is attached there).
    pub(crate) fn sys_shmdt(&mut self, addr: u64) -> Result<u64, Errno> {
        let vma = self.mm.vma_at(addr).ok_or(Errno::EINVAL)?;
        let Some(shm) = vma
            .shm
            .as_ref()
            .filter(|s| s.offset == 0 && vma.start == addr)
        else {
            return Err(Errno::EINVAL);
        };
        let obj = shm.obj.clone();
        let size = self
            .kernel
            .sysv
            .with_object(&obj, |s| s.size)
            .ok_or(Errno::EINVAL)?;
        // Every mapping of this segment in the attachment's range (mprotect may have
        // split it), as Linux's shmdt does.
        let len = size.div_ceil(crate::linux::abi::PAGE) * crate::linux::abi::PAGE;
        let end = addr.saturating_add(len);
        let mut at = addr;
        while at < end {
            let Some(v) = self.mm.vma_at(at) else { break };
            let same = v
                .shm
                .as_ref()
                .is_some_and(|s| std::sync::Arc::ptr_eq(&s.obj, &obj));
            if !same {
                break;
            }
            at = v.end;
        }
        self.mm.unmap(addr, at - addr)?;
        let now = self.kernel.clock.now(libc::CLOCK_REALTIME)?.0;
        let pid = self.pid;
        self.kernel.sysv.with_object(&obj, |s| {
            s.dtime = now;
            s.lpid = pid;
        });
        Ok(0)
    }

    /// shmctl(id, cmd, buf): IPC_STAT/SHM_STAT, IPC_SET (owner and mode), IPC_RMID;
    /// SHM_LOCK/SHM_UNLOCK are accepted (every page is backed). `IPC_64` is ignored.
    pub(crate) fn sys_shmctl(&mut self, id: u64, cmd: u64, buf: u64) -> Result<u64, Errno> {
        const IPC_64: i32 = 0x100;
        match cmd as i32 & !IPC_64 {
            libc::IPC_STAT => {
                let ds = self.kernel.sysv.with(id, |s| s.to_shmid_ds(id))?;
                self.out(buf, &ds).map(|()| 0)
            }
            libc::IPC_SET => {
                let mut b = [0u8; 24];
                self.mm.read(crate::memory::GuestVirtAddr(buf), &mut b)?;
                let word =
                    |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
                let (uid, gid, mode) = (word(4), word(8), word(20));
                let now = self.kernel.clock.now(libc::CLOCK_REALTIME)?.0;
                self.kernel.sysv.with(id, |s| {
                    s.uid = uid;
                    s.gid = gid;
                    s.mode = (s.mode & !0o777) | (mode & 0o777);
                    s.ctime = now;
                })?;
                Ok(0)
            }
            libc::IPC_RMID => self.kernel.sysv.remove(id).map(|()| 0),
            libc::SHM_LOCK | libc::SHM_UNLOCK => self.kernel.sysv.with(id, |_| 0),
            _ => Err(Errno::EINVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::frames::{FramePool, Frames};
    use crate::memory::GuestMemory;

    fn segment(key: i32, size: u64) -> Segment {
        let mem = Arc::new(GuestMemory::new(4 << 20).unwrap());
        let pool: FramePool = Arc::new(Mutex::new(Frames::new(1 << 20, 4 << 20)));
        Segment {
            key,
            size,
            obj: SharedObject::anonymous(mem, pool),
            mode: 0o600,
            uid: 0,
            gid: 0,
            cuid: 0,
            cgid: 0,
            cpid: 1000,
            lpid: 0,
            atime: 0,
            dtime: 0,
            ctime: 0,
        }
    }

    fn get(s: &Segments, key: i32, size: u64, flags: i32) -> Result<u64, Errno> {
        s.get(&Get { key, size, flags }, || Ok(segment(key, size)))
    }

    #[test]
    fn keys_find_one_segment_by_linux_rules() {
        let s = Segments::default();
        let creat = libc::IPC_CREAT;
        let excl = creat | libc::IPC_EXCL;
        assert_eq!(get(&s, 7, 4096, 0), Err(Errno(libc::ENOENT)));
        let id = get(&s, 7, 4096, excl).unwrap();
        assert_eq!(get(&s, 7, 4096, excl), Err(Errno::EEXIST));
        assert_eq!(get(&s, 7, 100, creat), Ok(id));
        assert_eq!(get(&s, 7, 0, 0), Ok(id), "size 0 looks an existing one up");
        assert_eq!(get(&s, 7, 8192, creat), Err(Errno::EINVAL));
        // IPC_PRIVATE always makes a new one; a size of 0 makes none.
        let a = get(&s, libc::IPC_PRIVATE, 4096, 0).unwrap();
        let b = get(&s, libc::IPC_PRIVATE, 4096, 0).unwrap();
        assert!(a != b && a != id && b != id);
        assert_eq!(get(&s, 8, 0, creat), Err(Errno::EINVAL));
        s.remove(id).unwrap();
        assert_eq!(s.remove(id), Err(Errno::EINVAL));
        assert_eq!(get(&s, 7, 4096, 0), Err(Errno(libc::ENOENT)));
    }

    #[test]
    fn the_status_is_linuxs_shmid64_ds() {
        let seg = segment(0x1234, 10000);
        let extra = seg.obj.clone(); // one attachment
        let b = seg.to_shmid_ds(5);
        assert_eq!(b.len(), std::mem::size_of::<libc::shmid_ds>());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        assert_eq!(i32::from_le_bytes(b[0..4].try_into().unwrap()), 0x1234);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 0o600);
        assert_eq!(u64_at(48), 10000, "shm_segsz");
        assert_eq!(
            i32::from_le_bytes(b[80..84].try_into().unwrap()),
            1000,
            "cpid"
        );
        assert_eq!(u64_at(88), 1, "shm_nattch");
        drop(extra);
        assert_eq!(seg.attachments(), 0);
    }
}
