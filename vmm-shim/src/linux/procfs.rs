//! `/proc` as the guest's processes see it: theirs, as in a pid namespace, not lbrprof's.
//!
//! Every guest process runs inside lbrprof's one host process, so the host's
//! `/proc/self` and `/proc/PID` describe lbrprof. The program reaches `/proc` by
//! absolute paths (or paths relative to `/proc` itself), which are translated here
//! (`Process::proc_path`, `Process::proc_file`):
//!
//! * A listing of `/proc` ([`Listing`], [`Listed::Processes`]) is the host's entries that
//!   are not processes (`cpuinfo`, `self`, `sys`...) and one directory per guest process,
//!   zombies included. `/proc/N` for any N that is not a guest process does not exist,
//!   in both id modes (pinned: the guest's ids are made up from 1000; unpinned: the first
//!   process has lbrprof's host pid and the others the numbers after it, made up too:
//!   where one is also a host process's, `/proc/N` is the guest's).
//! * `/proc/self/...` is `/proc/PID/...` for the calling process's guest pid, and
//!   `readlink("/proc/self")` says that pid (`readlink("/proc/thread-self")` says
//!   `PID/task/TID`) (`Process::proc_link`).
//! * `/proc/PID/...` of a guest process (and `/proc/PID/task/TID/...` of its threads) is
//!   lbrprof's host directory, except the files the shim writes for it: `stat` (its pid,
//!   name, state, parent, process group, session, terminal, thread count, CPU times and
//!   virtual size in place of lbrprof's; with pinned ids the fields that change from run
//!   to run read 0), `status` (the same, its mapping sizes and signals; the user's and
//!   machine's lines are the host's), `statm`, `comm`, `cmdline` and `exe`; and `task`,
//!   a listing of its threads ([`Listed::Threads`]). The calling process reads its own
//!   state; another's comes from the copy each process keeps in its
//!   [`Shared`](crate::linux::proc::Shared) ([`Shown`](crate::linux::proc::Shown):
//!   thread names, arguments, program, mapping sizes, signal dispositions), kept current
//!   where they change.
//! * The calling process's `fd` and `fdinfo` directories (under `/proc/self`,
//!   `/proc/PID`, `/proc/thread-self`, `/proc/PID/task/TID`, and as `/dev/fd`,
//!   `/dev/stdin`, `/dev/stdout`, `/dev/stderr`) are its own descriptors: entry N is the
//!   host's link of the open file behind guest descriptor N (what `readlink` says, and
//!   what an `open` of it reopens, as on Linux: bash's `<(...)`, `cat /dev/stdin`), and a
//!   listing of the directory ([`Listing`]) names the guest's descriptors. Paths are
//!   matched after `//`, `.` and `..` are resolved. lbrprof's own descriptors are
//!   reachable by none of these names, nor through another guest process's directory.
//! * The calling process's `/proc/PID/maps` (`/proc/self/maps`) lists its guest
//!   mappings in Linux's format (what glibc's `pthread_getattr_np` reads to find the main
//!   thread's stack, and what sanitizers and garbage collectors read); its `auxv`,
//!   `cmdline` and `environ` are what exec gave it, read from its memory.
//!
//! Limits: a path relative to a directory below `/proc` (a descriptor on `/proc/self`,
//! `cd /proc/self`), and calls other than `open` relative to `/proc` itself, are not
//! translated (an open through one, or through a symbolic link of the program's own,
//! that would reach one of lbrprof's descriptors fails: the shim opens files refusing
//! `/proc`'s magic links). Not counted, so not shown: a process's resident set (`VmRSS`
//! and the `Rss` lines are left out, `statm`'s resident and `stat`'s rss read 0), the
//! signals a thread blocks (`SigBlk` 0), another process's pending per-thread signals
//! and descriptor table size (`FDSize` left out), context switches. `comm` cannot be
//! written (`prctl(PR_SET_NAME)` renames). The other files of `/proc/PID` (`smaps`,
//! `io`, `limits`, another process's `maps` and `environ`...) are lbrprof's, and so are
//! those of `/proc/thread-self` but `stat`, `status`, `statm` and `comm` (the calling
//! thread's, opened as its `task/TID` ones).

use std::borrow::Cow;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use crate::linux::Process;
use crate::linux::errno::Errno;
use crate::linux::host;
use crate::linux::mm::{Prot, Vma};
use crate::linux::proc::{Controlling, VmSizes};
use crate::memory::GuestVirtAddr;

/// The process a `/proc/...` path names, and the rest of the path after its directory.
#[derive(Debug, PartialEq, Eq)]
enum Named<'a> {
    /// `/proc/self` or `/proc/N`: the process N (a guest pid or a host one).
    Pid(u64, &'a [u8]),
    /// `/proc/thread-self`.
    ThreadSelf(&'a [u8]),
    /// Anything else.
    Other,
}

/// Split `/proc/X/rest`: X is `self`, `thread-self` or a number.
fn named(path: &[u8], own: u64) -> Named<'_> {
    let Some(after) = path.strip_prefix(b"/proc/") else {
        return Named::Other;
    };
    let end = after.iter().position(|&b| b == b'/').unwrap_or(after.len());
    let (dir, rest) = after.split_at(end);
    match dir {
        b"self" => Named::Pid(own, rest),
        b"thread-self" => Named::ThreadSelf(rest),
        _ => std::str::from_utf8(dir)
            .ok()
            .filter(|d| !d.starts_with('0') && !d.starts_with('+'))
            .and_then(|d| d.parse().ok())
            .map_or(Named::Other, |n| Named::Pid(n, rest)),
    }
}

/// Whether `rest` (of `/proc/N/rest` or `/proc/thread-self/rest`) leads to descriptors.
fn shows_descriptors(rest: &[u8]) -> bool {
    let mut parts = rest.split(|&b| b == b'/').filter(|p| !p.is_empty());
    let first = parts.next().unwrap_or_default();
    let fd = |p: &[u8]| p == b"fd" || p == b"fdinfo";
    fd(first) || (first == b"task" && parts.nth(1).is_some_and(fd))
}

/// `path` as the shim matches it: under `/proc` and `/dev`, with `//`, `.` and `..`
/// resolved (lexically: nothing there is a symbolic link to a directory but `/proc/self`,
/// `/proc/thread-self` and `/dev/fd`, whose parents are `/proc` and `/dev`), and
/// `/dev/fd`, `/dev/stdin`, `/dev/stdout`, `/dev/stderr` as the `/proc/self/fd` links
/// they are. Other paths are left as they are.
pub(crate) fn normalize(path: &[u8]) -> Cow<'_, [u8]> {
    let under = |p: &[u8], dir: &[u8]| {
        p.strip_prefix(dir)
            .is_some_and(|r| r.is_empty() || r[0] == b'/')
    };
    let trimmed = {
        let mut t = path;
        while t.starts_with(b"//") {
            t = &t[1..];
        }
        t
    };
    if !under(trimmed, b"/proc") && !under(trimmed, b"/dev") {
        return Cow::Borrowed(path);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    let alias: Option<&[&[u8]]> = match parts.as_slice() {
        [b"dev", b"fd", ..] => Some(&[b"proc", b"self", b"fd"]),
        [b"dev", b"stdin", ..] => Some(&[b"proc", b"self", b"fd", b"0"]),
        [b"dev", b"stdout", ..] => Some(&[b"proc", b"self", b"fd", b"1"]),
        [b"dev", b"stderr", ..] => Some(&[b"proc", b"self", b"fd", b"2"]),
        _ => None,
    };
    if let Some(alias) = alias {
        parts.splice(..2, alias.iter().copied());
    }
    let mut out = Vec::with_capacity(path.len());
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() || path.ends_with(b"/") {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// The part of `rest` (of the calling process's `/proc/PID/rest`) that names its own
/// descriptors: `/fd...` or `/fdinfo...`, also under `/task/TID` of one of `threads`.
fn own_descriptors(rest: &[u8], threads: impl Fn(u64) -> bool) -> Option<&[u8]> {
    let is_fd_dir = |r: &[u8]| {
        [&b"/fd"[..], b"/fdinfo"].iter().any(|d| {
            r.strip_prefix(*d)
                .is_some_and(|t| t.is_empty() || t[0] == b'/')
        })
    };
    if is_fd_dir(rest) {
        return Some(rest);
    }
    let task = rest.strip_prefix(b"/task/")?;
    let end = task.iter().position(|&b| b == b'/')?;
    let tid = std::str::from_utf8(&task[..end]).ok()?.parse().ok()?;
    (threads(tid) && is_fd_dir(&task[end..])).then_some(&task[end..])
}

/// What a [`Listing`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    /// The calling process's descriptors, as links (`/proc/self/fd`).
    Descriptors,
    /// Its descriptors, as files (`/proc/self/fdinfo`).
    DescriptorInfo,
    /// `/proc` itself: the host's entries that are not processes, and the guest's
    /// processes.
    Processes,
    /// `/proc/PID/task` of guest process PID: its threads.
    Threads(u64),
}

/// A listing of a `/proc` directory whose entries are the guest's (its descriptors,
/// processes or threads): what `getdents64` reads from a descriptor opened on it (the
/// host file behind it is an empty directory, or `/proc` for `/proc`). As on Linux, the
/// entries are those present when a read starts from the beginning (after an open or a
/// rewind); the position is shared by the descriptor's duplicates.
#[derive(Debug)]
pub struct Listing {
    what: Listed,
    state: Mutex<ListingState>,
}

#[derive(Debug, Default)]
struct ListingState {
    /// Name and `d_type` of each entry, `.` and `..` first.
    entries: Vec<(Vec<u8>, u8)>,
    /// Index of the next entry to read.
    next: usize,
}

impl Listing {
    pub fn new(what: Listed) -> Listing {
        Listing {
            what,
            state: Mutex::default(),
        }
    }

    /// What it lists.
    pub fn what(&self) -> Listed {
        self.what
    }

    /// `getdents64` into at most `len` bytes: `linux_dirent64` records from the current
    /// position on (empty at the end); `entries` gives the names and `d_type`s there are
    /// now (asked when a read starts from the beginning). EINVAL when not even one
    /// record fits.
    pub fn read(
        &self,
        len: usize,
        entries: impl FnOnce() -> Vec<(Vec<u8>, u8)>,
    ) -> Result<Vec<u8>, Errno> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        if state.next == 0 {
            state.entries = vec![
                (b".".to_vec(), libc::DT_DIR),
                (b"..".to_vec(), libc::DT_DIR),
            ];
            state.entries.extend(entries());
        }
        let mut out = Vec::new();
        while let Some((name, kind)) = state.entries.get(state.next) {
            // ino, off, reclen, type, the name and its NUL, padded to 8 bytes.
            let reclen = (8 + 8 + 2 + 1 + name.len() + 1).next_multiple_of(8);
            if out.len() + reclen > len {
                break;
            }
            let at = out.len();
            let position = state.next as u64 + 1;
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&(reclen as u16).to_le_bytes());
            out.push(*kind);
            out.extend_from_slice(name);
            out.resize(at + reclen, 0);
            state.next += 1;
        }
        if out.is_empty() && state.next < state.entries.len() {
            return Err(Errno::EINVAL);
        }
        Ok(out)
    }

    /// `lseek`: SEEK_SET to a position a record's offset gave (0 is the start), or
    /// SEEK_CUR by 0 (where it is).
    pub fn seek(&self, offset: i64, whence: i32) -> Result<u64, Errno> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match whence {
            libc::SEEK_SET if offset >= 0 => {
                state.next = (offset as usize).min(state.entries.len());
            }
            libc::SEEK_CUR if offset == 0 => {}
            _ => return Err(Errno::EINVAL),
        }
        Ok(state.next as u64)
    }
}

/// The fields of a `/proc/PID/stat` line that change from run to run on the host
/// (numbered from 1 as in proc(5)): faults and times (10-17), start time, sizes (22-24),
/// addresses and signal masks (26-35), the CPU (39), I/O delay and guest times (42-44),
/// addresses (45-51).
fn varies(field: usize) -> bool {
    matches!(field, 10..=17 | 22..=24 | 26..=35 | 39 | 42..=51)
}

/// What a `/proc/PID/stat` says of a guest process.
pub(crate) struct StatIds<'a> {
    pub pid: u64,
    pub comm: &'a [u8],
    pub ppid: u64,
    pub pgrp: u64,
    pub session: u64,
    /// Its session's terminal, when the session is one the program made: None for the
    /// session lbrprof runs in (the host's line says), Some(None) for none.
    pub terminal: Option<Option<crate::linux::proc::Terminal>>,
    pub threads: u64,
    /// `R` running, `S` sleeping (every thread waits in a system call), `Z` a zombie.
    pub state: u8,
    /// Its mappings' sizes (the host's line has lbrprof's).
    pub vm: VmSizes,
    /// Its user and system times and its reaped children's, in clock ticks (None:
    /// pinned, zero).
    pub times: Option<[u64; 4]>,
    /// The size of its descriptor table (`FDSize`; None: not known, another process's).
    pub fd_size: Option<u64>,
    /// Zero what changes from run to run.
    pub pinned: bool,
}

/// Linux's `USER_HZ`: the unit of the times in `/proc/PID/stat`.
const CLOCK_TICKS: u64 = 100;

/// `d` in clock ticks.
fn ticks(d: std::time::Duration) -> u64 {
    d.as_millis() as u64 / (1000 / CLOCK_TICKS)
}

/// `host` (lbrprof's `/proc/PID/stat` line) with the guest process's ids.
fn guest_stat(host: &[u8], ids: &StatIds<'_>) -> Option<Vec<u8>> {
    // The name is in parentheses and may hold anything: the fields follow the last ')'.
    let close = host.iter().rposition(|&b| b == b')')?;
    let tail = std::str::from_utf8(host.get(close + 2..)?).ok()?;
    let mut fields: Vec<String> = tail.trim_end().split(' ').map(str::to_owned).collect();
    // fields[i] is field i + 3.
    let set = |fields: &mut Vec<String>, field: usize, v: String| {
        if let Some(f) = fields.get_mut(field - 3) {
            *f = v;
        }
    };
    set(&mut fields, 3, char::from(ids.state).to_string());
    set(&mut fields, 4, ids.ppid.to_string());
    set(&mut fields, 5, ids.pgrp.to_string());
    set(&mut fields, 6, ids.session.to_string());
    match &ids.terminal {
        None => {}
        Some(None) => {
            set(&mut fields, 7, "0".to_owned());
            set(&mut fields, 8, "-1".to_owned());
        }
        Some(Some(t)) => {
            set(&mut fields, 7, (t.rdev as u32).to_string());
            set(&mut fields, 8, t.foreground.to_string());
        }
    }
    set(&mut fields, 20, ids.threads.to_string());
    if let Some(times) = ids.times {
        for (field, t) in (14..=17).zip(times) {
            set(&mut fields, field, t.to_string());
        }
    }
    // The guest's virtual size; its resident set is not counted (see the module doc).
    set(&mut fields, 23, ids.vm.size.to_string());
    set(&mut fields, 24, "0".to_owned());
    if ids.pinned {
        for field in (3..3 + fields.len()).filter(|&f| varies(f)) {
            set(&mut fields, field, "0".to_owned());
        }
    }
    if ids.pinned && ids.terminal.is_none() {
        // The terminal's foreground group: the program's, when it has a terminal.
        let tty = fields.get(7 - 3).is_some_and(|t| t != "0");
        let tpgid = if tty {
            ids.pgrp.to_string()
        } else {
            "-1".to_owned()
        };
        set(&mut fields, 8, tpgid);
    }
    let mut line = format!("{} (", ids.pid).into_bytes();
    line.extend_from_slice(ids.comm);
    line.extend_from_slice(b") ");
    line.extend_from_slice(fields.join(" ").as_bytes());
    line.push(b'\n');
    Some(line)
}

/// The signal masks `/proc/PID/status` shows (bit `n - 1` for signal `n`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SignalMasks {
    /// Pending for the thread shown, and for the whole process.
    pub pending: u64,
    pub shared: u64,
    /// Blocked by the thread shown (known for the calling thread only).
    pub blocked: u64,
    pub ignored: u64,
    pub caught: u64,
}

/// `host` (lbrprof's `/proc/PID/status`) as a guest process's, thread `tid` of it: its
/// name, state, ids, thread count, mapping sizes and signals in place of lbrprof's. The
/// lines that are the user's and the machine's (Umask, Uid, Gid, Groups, capabilities,
/// Cpus_allowed...) stay; what the shim does not know of the guest (its resident set,
/// page tables, context switches) is left out rather than be lbrprof's.
fn status_text(host: &[u8], ids: &StatIds<'_>, tid: u64, signals: &SignalMasks) -> Vec<u8> {
    let kib = |b: u64| format!("{:>8} kB", b / 1024);
    let state = match ids.state {
        b'Z' => "Z (zombie)",
        b'S' => "S (sleeping)",
        _ => "R (running)",
    };
    let zombie = ids.state == b'Z';
    let mut out = Vec::new();
    for line in host.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let key = line.split(|&b| b == b':').next().unwrap_or_default();
        let value: Option<String> = match key {
            b"Name" => {
                out.extend_from_slice(b"Name:\t");
                out.extend_from_slice(ids.comm);
                out.push(b'\n');
                continue;
            }
            b"State" => Some(state.to_owned()),
            b"Tgid" | b"NStgid" => Some(ids.pid.to_string()),
            b"Pid" | b"NSpid" => Some(tid.to_string()),
            b"PPid" => Some(ids.ppid.to_string()),
            b"NSpgid" => Some(ids.pgrp.to_string()),
            b"NSsid" => Some(ids.session.to_string()),
            b"TracerPid" | b"Ngid" => Some("0".to_owned()),
            b"Threads" => Some(ids.threads.to_string()),
            b"FDSize" => match ids.fd_size {
                Some(n) => Some(n.to_string()),
                None => continue,
            },
            b"VmPeak" if !zombie => Some(kib(ids.vm.peak)),
            b"VmSize" if !zombie => Some(kib(ids.vm.size)),
            b"VmData" if !zombie => Some(kib(ids.vm.data)),
            b"VmStk" if !zombie => Some(kib(ids.vm.stack)),
            b"VmExe" if !zombie => Some(kib(ids.vm.exe)),
            b"VmLib" if !zombie => Some(kib(ids.vm.lib)),
            b"VmLck" | b"VmPin" | b"VmSwap" | b"HugetlbPages" if !zombie => Some(kib(0)),
            b"SigPnd" => Some(format!("{:016x}", signals.pending)),
            b"ShdPnd" => Some(format!("{:016x}", signals.shared)),
            b"SigBlk" => Some(format!("{:016x}", signals.blocked)),
            b"SigIgn" => Some(format!("{:016x}", signals.ignored)),
            b"SigCgt" => Some(format!("{:016x}", signals.caught)),
            b"SigQ" => {
                let limit = line.rsplit(|&b| b == b'/').next().unwrap_or(b"0");
                let queued = (signals.pending | signals.shared).count_ones();
                Some(format!("{queued}/{}", String::from_utf8_lossy(limit)))
            }
            k if k.starts_with(b"Vm") || k.starts_with(b"Rss") || k.ends_with(b"ctxt_switches") => {
                continue;
            }
            _ => None,
        };
        match value {
            Some(v) => {
                out.extend_from_slice(key);
                out.extend_from_slice(b":\t");
                out.extend_from_slice(v.as_bytes());
            }
            None => out.extend_from_slice(line),
        }
        out.push(b'\n');
    }
    out
}

/// `/proc/PID/statm` of mappings of sizes `vm`, in pages: size, resident, shared,
/// text, lib (always 0 on Linux), data (with the stack), dt (always 0). The resident
/// and shared sets are not counted and read 0.
fn statm_text(vm: &VmSizes) -> Vec<u8> {
    let pages = |b: u64| b / crate::linux::abi::PAGE;
    format!(
        "{} 0 0 {} 0 {} 0\n",
        pages(vm.size),
        pages(vm.exe),
        pages(vm.data + vm.stack)
    )
    .into_bytes()
}

/// The entries of `/proc` as the guest lists it: the host's (`host`, name and
/// `d_type`) that are not processes, then one directory per guest process in `pids`.
fn proc_entries(host: impl Iterator<Item = (Vec<u8>, u8)>, pids: &[u64]) -> Vec<(Vec<u8>, u8)> {
    let mut out: Vec<(Vec<u8>, u8)> = host
        .filter(|(name, _)| !name.iter().all(u8::is_ascii_digit))
        .collect();
    out.extend(
        pids.iter()
            .map(|p| (p.to_string().into_bytes(), libc::DT_DIR)),
    );
    out
}

/// The sizes of the mappings `vmas` (in address order) of a process whose program is
/// `exe` (as Linux's `task_mem` counts them).
pub(crate) fn vm_sizes<'a>(vmas: impl Iterator<Item = &'a Vma>, exe: &std::path::Path) -> VmSizes {
    let mut vm = VmSizes::default();
    for v in vmas {
        let len = v.end - v.start;
        vm.size += len;
        if v.name == "[stack]" {
            vm.stack += len;
        } else if v.prot.writable() && v.shm.is_none() {
            vm.data += len;
        }
        if let Some(f) = &v.file {
            vm.file += len;
            if v.prot.executable() {
                if f.path == exe {
                    vm.exe += len;
                } else {
                    vm.lib += len;
                }
            }
        }
    }
    vm.peak = vm.size;
    vm
}

/// `/proc/PID/task/TID/rest`: TID and `/rest`.
fn task_rest(rest: &[u8]) -> Option<(u64, &[u8])> {
    let task = rest.strip_prefix(b"/task/")?;
    let end = task.iter().position(|&b| b == b'/').unwrap_or(task.len());
    let tid = std::str::from_utf8(&task[..end])
        .ok()
        .filter(|d| !d.starts_with('0') && !d.starts_with('+'))?
        .parse()
        .ok()?;
    Some((tid, &task[end..]))
}

/// `/proc/PID/maps` of the mappings `vmas` (in address order), as Linux prints it: one
/// line per mapping (neighbours with the same protection and backing merged, as Linux
/// merges their VMAs), the file's device and inode, the name padded to column 73, and
/// the vsyscall page last.
fn maps_text<'a>(vmas: impl Iterator<Item = &'a Vma>) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    struct Line {
        start: u64,
        end: u64,
        prot: Prot,
        offset: u64,
        dev: u64,
        inode: u64,
        name: Vec<u8>,
        file: bool,
        shared: bool,
    }
    let mut lines: Vec<Line> = Vec::new();
    for v in vmas {
        let (offset, dev, inode, name, file) = match &v.file {
            Some(f) => {
                let meta = f.file.metadata().ok();
                // The path the kernel gives the open file (symbolic links resolved).
                let path = host::path_of(f.file.as_fd()).unwrap_or_else(|| f.path.clone());
                (
                    f.offset,
                    meta.as_ref().map_or(0, |m| m.dev()),
                    meta.as_ref().map_or(0, |m| m.ino()),
                    path.as_os_str().as_bytes().to_vec(),
                    true,
                )
            }
            None => (0, 0, 0, v.name.as_bytes().to_vec(), false),
        };
        // The shim's special mappings (`[vdso]`, `[vvar]`) are shared frames but private
        // mappings, as Linux shows them.
        let shared = v.shm.is_some() && v.name.is_empty();
        if let Some(last) = lines.last_mut() {
            let contiguous = last.end == v.start
                && last.prot.0 == v.prot.0
                && last.name == name
                && last.file == file
                && last.shared == shared
                && (!file
                    || (last.inode == inode && last.offset + (last.end - last.start) == offset));
            if contiguous {
                last.end = v.end;
                continue;
            }
        }
        lines.push(Line {
            start: v.start,
            end: v.end,
            prot: v.prot,
            offset,
            dev,
            inode,
            name,
            file,
            shared,
        });
    }
    let mut out = Vec::new();
    let mut one = |start: u64, end: u64, perms: [u8; 4], offset, dev: u64, inode, name: &[u8]| {
        let head = format!(
            "{start:08x}-{end:08x} {} {offset:08x} {:02x}:{:02x} {inode} ",
            String::from_utf8_lossy(&perms),
            libc::major(dev),
            libc::minor(dev),
        );
        out.extend_from_slice(head.as_bytes());
        if !name.is_empty() {
            out.resize(out.len() + 73usize.saturating_sub(head.len()), b' ');
            out.extend_from_slice(name);
        }
        out.push(b'\n');
    };
    for l in &lines {
        let flag = |on: bool, c: u8| if on { c } else { b'-' };
        let perms = [
            flag(l.prot.0 & libc::PROT_READ as u32 != 0, b'r'),
            flag(l.prot.writable(), b'w'),
            flag(l.prot.executable(), b'x'),
            if l.shared { b's' } else { b'p' },
        ];
        one(l.start, l.end, perms, l.offset, l.dev, l.inode, &l.name);
    }
    let vsyscall = crate::linux::abi::VSYSCALL_PAGE;
    one(
        vsyscall,
        vsyscall + 0x1000,
        *b"--xp",
        0,
        0,
        0,
        b"[vsyscall]",
    );
    out
}

impl Process {
    /// The program's absolute path (what `/proc/self/exe` leads to; lbrprof's working
    /// directory is the one a relative program path was given in).
    fn exe(&self) -> Vec<u8> {
        let exe = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        exe.as_os_str().as_bytes().to_vec()
    }

    /// Whether `n` names a guest process.
    fn is_guest(&self, n: u64) -> bool {
        n == self.pid || self.kernel.exists(n)
    }

    /// The thread ids of guest process `n`.
    fn threads_of(&self, n: u64) -> Vec<u64> {
        if n == self.pid {
            return self.threads.keys().copied().collect();
        }
        self.kernel
            .shared_of(n)
            .map(|s| s.shown().threads.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Keep what `/proc/PID` shows the other processes of this one current: its
    /// arguments, program and mapping sizes ([`crate::linux::proc::Shown`]).
    pub(crate) fn publish(&self) {
        let info = &self.mm.exec_info;
        let mut cmdline = vec![0u8; (info.args.1.saturating_sub(info.args.0)) as usize];
        if self
            .mm
            .read(GuestVirtAddr(info.args.0), &mut cmdline)
            .is_err()
        {
            cmdline.clear();
        }
        let vm = vm_sizes(self.mm.vmas(), &self.path);
        let exe = self.exe();
        let (ignored, caught) = self.dispositions();
        let mut shown = self.shared.shown();
        shown.cmdline = cmdline;
        shown.vm = VmSizes {
            peak: shown.vm.peak.max(vm.size),
            ..vm
        };
        shown.exe = exe;
        (shown.ignored, shown.caught) = (ignored, caught);
    }

    /// The signals the process ignores and those it handles.
    pub(crate) fn dispositions(&self) -> (u64, u64) {
        let (mut ignored, mut caught) = (0, 0);
        for (&sig, action) in &self.sigactions {
            let handler = u64::from_le_bytes(action[..8].try_into().unwrap_or_default());
            let bit = 1u64.checked_shl(sig.wrapping_sub(1) as u32).unwrap_or(0);
            match handler {
                0 => {}
                1 => ignored |= bit,
                _ => caught |= bit,
            }
        }
        (ignored, caught)
    }

    /// `path` (an absolute or relative guest path) as the host opens it: `/proc/self`
    /// and the `/proc` directories of guest processes (and of their threads, under
    /// `task`) are lbrprof's host directory; other pids are absent, as in a pid
    /// namespace. ENOENT for lbrprof's descriptors.
    pub(crate) fn proc_path(&self, path: Vec<u8>) -> Result<Vec<u8>, Errno> {
        let hidden = Err(Errno(libc::ENOENT));
        let host_pid = std::process::id();
        let path = match normalize(&path) {
            Cow::Borrowed(_) => path,
            Cow::Owned(p) => p,
        };
        if let Some(rest) = self.own_descriptors(&path) {
            return self.descriptor_path(rest);
        }
        match named(&path, self.pid) {
            Named::Other => Ok(path),
            Named::ThreadSelf(rest) if shows_descriptors(rest) => hidden,
            // The vCPU's host thread is the calling guest thread.
            Named::ThreadSelf(_) => Ok(path),
            Named::Pid(n, b"/exe") if self.is_guest(n) => self.exe_of(n).ok_or(Errno(libc::ENOENT)),
            Named::Pid(n, rest) if self.is_guest(n) => {
                if shows_descriptors(rest) {
                    return hidden;
                }
                let rest = match task_rest(rest) {
                    Some((tid, sub)) if self.threads_of(n).contains(&tid) => sub,
                    Some(_) => return hidden,
                    None => rest,
                };
                let mut p = format!("/proc/{host_pid}").into_bytes();
                p.extend_from_slice(rest);
                Ok(p)
            }
            Named::Pid(..) => hidden,
        }
    }

    /// `path` as an `openat` relative to `dirfd` gives it: made absolute when it is
    /// relative to `/proc` itself (a descriptor opened on it, or the working directory
    /// after `cd /proc`), so that it is translated as `/proc/...` is (`ls` in `/proc`,
    /// `cat 123/status` there). Other paths are left as they are.
    pub(crate) fn beside_proc(&self, dirfd: u64, path: Vec<u8>) -> Vec<u8> {
        if path.first() == Some(&b'/') {
            return path;
        }
        let at_proc = if dirfd as i32 == libc::AT_FDCWD {
            self.cwd
                .as_ref()
                .is_some_and(|(p, _)| p.as_os_str().as_bytes() == b"/proc")
        } else {
            self.fds.get(dirfd).is_ok_and(|f| {
                f.listing
                    .as_ref()
                    .is_some_and(|l| l.what() == Listed::Processes)
            })
        };
        if !at_proc {
            return path;
        }
        let mut p = b"/proc/".to_vec();
        p.extend_from_slice(&path);
        p
    }

    /// `path` with `/proc/thread-self/stat` (`status`, `statm`, `comm`) as the calling
    /// thread `tid`'s `/proc/PID/task/TID/...`, which the shim writes. Other paths are
    /// left as they are.
    pub(crate) fn thread_self(&self, tid: u64, path: Vec<u8>) -> Vec<u8> {
        let rest = match named(&normalize(&path), self.pid) {
            Named::ThreadSelf(rest @ (b"/stat" | b"/status" | b"/statm" | b"/comm")) => {
                rest.to_vec()
            }
            _ => return path,
        };
        let mut p = format!("/proc/{}/task/{tid}", self.pid).into_bytes();
        p.extend_from_slice(&rest);
        p
    }

    /// The program of guest process `n` (`/proc/N/exe`).
    fn exe_of(&self, n: u64) -> Option<Vec<u8>> {
        if n == self.pid {
            return Some(self.exe());
        }
        let exe = self.kernel.shared_of(n)?.shown().exe.clone();
        (!exe.is_empty()).then_some(exe)
    }
    /// The rest of `path` (normalized) after the calling process's `/proc` directory,
    /// when it leads to the process's own descriptors ([`own_descriptors`]).
    fn own_descriptors<'a>(&self, path: &'a [u8]) -> Option<&'a [u8]> {
        own_descriptors(self.own_rest(path)?, |tid| self.threads.contains_key(&tid))
    }

    /// The rest of `path` after the calling process's own `/proc` directory
    /// (`/proc/self`, `/proc/PID` of its pid, `/proc/thread-self`).
    fn own_rest<'a>(&self, path: &'a [u8]) -> Option<&'a [u8]> {
        match named(path, self.pid) {
            Named::Pid(n, rest) if n == self.pid => Some(rest),
            Named::ThreadSelf(rest) => Some(rest),
            _ => None,
        }
    }

    /// Whether `path` (as the program gave it) names one of its own descriptors' links.
    pub(crate) fn names_own_descriptor(&self, path: &[u8]) -> bool {
        self.own_descriptors(&normalize(path)).is_some_and(|rest| {
            rest.splitn(3, |&b| b == b'/')
                .nth(2)
                .is_some_and(|n| !n.is_empty())
        })
    }

    /// `/fd/N[/more]` or `/fdinfo/N` of the calling process as the host path of the open
    /// file behind its descriptor N; the directories themselves as lbrprof's (for
    /// `stat`: an open is served a [`Listing`] by `proc_file` first).
    fn descriptor_path(&self, rest: &[u8]) -> Result<Vec<u8>, Errno> {
        let mut parts = rest.splitn(3, |&b| b == b'/').skip(1);
        let dir = parts.next().unwrap_or_default();
        let host_pid = std::process::id();
        let mut p = format!("/proc/{host_pid}/").into_bytes();
        p.extend_from_slice(dir);
        let Some(n) = parts.next().filter(|n| !n.is_empty()) else {
            return Ok(p);
        };
        let (number, tail) = n.split_at(n.iter().position(|&b| b == b'/').unwrap_or(n.len()));
        let fd = std::str::from_utf8(number)
            .ok()
            .filter(|d| (!d.starts_with('0') || d.len() == 1) && !d.starts_with('+'))
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or(Errno(libc::ENOENT))?;
        let host = self.fds.get(fd).map_err(|_| Errno(libc::ENOENT))?.host();
        if dir == b"fdinfo" && !tail.is_empty() {
            return Err(Errno(libc::ENOTDIR));
        }
        p.extend_from_slice(format!("/{}", host.as_raw_fd()).as_bytes());
        p.extend_from_slice(tail);
        Ok(p)
    }

    /// What `readlink` says of the links of `/proc` that name guest ids: `/proc/self`,
    /// `/proc/thread-self` (of thread `tid`) and a guest process's `exe`. None: not one.
    pub(crate) fn proc_link(&self, path: &[u8], tid: u64) -> Option<Vec<u8>> {
        match named(path, self.pid) {
            Named::Pid(n, b"/exe") if self.is_guest(n) => self.exe_of(n),
            Named::ThreadSelf(b"/exe") => Some(self.exe()),
            _ if path == b"/proc/self" => Some(self.pid.to_string().into_bytes()),
            _ if path == b"/proc/thread-self" => {
                Some(format!("{}/task/{tid}", self.pid).into_bytes())
            }
            _ => None,
        }
    }

    /// The file the shim serves for an `open` of `path` with `flags`: a listing of
    /// `/proc`, of a guest process's `task` or of the caller's descriptors, or a text
    /// ([`Self::proc_text`]). None: the host's file is opened.
    pub(crate) fn proc_file(&self, path: &[u8], flags: i32) -> Result<Option<Served>, Errno> {
        let path = normalize(path);
        if let Some(rest) = self.own_descriptors(&path) {
            let dir = rest.strip_suffix(b"/").unwrap_or(rest);
            if dir != b"/fd" && dir != b"/fdinfo" {
                return Ok(None);
            }
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(Errno(libc::EISDIR));
            }
            let what = if dir == b"/fd" {
                Listed::Descriptors
            } else {
                Listed::DescriptorInfo
            };
            return Ok(Some(Served::Listing(
                host::empty_directory()?,
                Arc::new(Listing::new(what)),
            )));
        }
        let directory = |what: Listed, host: OwnedFd| {
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(Errno(libc::EISDIR));
            }
            Ok(Some(Served::Listing(host, Arc::new(Listing::new(what)))))
        };
        if &*path == b"/proc" || &*path == b"/proc/" {
            let proc = host::openat_no_magic(
                None,
                b"/proc",
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
            )?;
            return directory(Listed::Processes, proc);
        }
        if let Named::Pid(n, b"/task" | b"/task/") = named(&path, self.pid)
            && self.is_guest(n)
        {
            return directory(Listed::Threads(n), host::empty_directory()?);
        }
        Ok(self.proc_text(&path, flags)?.map(Served::File))
    }

    /// A directory the host opened for the program (`dir`) that is lbrprof's own `fd` or
    /// `fdinfo` directory, reached by a path relative to a descriptor or working directory
    /// on `/proc/self`: the program's listing in its place.
    pub(crate) fn own_listing_for(&self, dir: &OwnedFd) -> Option<Arc<Listing>> {
        let link = host::path_of(dir.as_fd())?;
        let rest = link
            .as_os_str()
            .as_bytes()
            .strip_prefix(format!("/proc/{}", std::process::id()).as_bytes())?;
        let rest = own_descriptors(rest, |tid| {
            std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
        })?;
        let what = match rest {
            b"/fd" => Listed::Descriptors,
            b"/fdinfo" => Listed::DescriptorInfo,
            _ => return None,
        };
        Some(Arc::new(Listing::new(what)))
    }

    /// The entries of a listing as they are now ([`Listing::read`]).
    pub(crate) fn listed(&self, what: Listed) -> Vec<(Vec<u8>, u8)> {
        let dirs = |ids: Vec<u64>| {
            ids.into_iter()
                .map(|t| (t.to_string().into_bytes(), libc::DT_DIR))
                .collect()
        };
        match what {
            Listed::Descriptors => self
                .fds
                .open()
                .map(|fd| (fd.to_string().into_bytes(), libc::DT_LNK))
                .collect(),
            Listed::DescriptorInfo => self
                .fds
                .open()
                .map(|fd| (fd.to_string().into_bytes(), libc::DT_REG))
                .collect(),
            Listed::Processes => {
                let host = std::fs::read_dir("/proc").into_iter().flatten().flatten();
                let host = host.map(|e| {
                    let kind = match e.file_type() {
                        Ok(t) if t.is_dir() => libc::DT_DIR,
                        Ok(t) if t.is_symlink() => libc::DT_LNK,
                        Ok(_) => libc::DT_REG,
                        Err(_) => libc::DT_UNKNOWN,
                    };
                    (e.file_name().as_bytes().to_vec(), kind)
                });
                proc_entries(host, &self.kernel.pids())
            }
            Listed::Threads(n) => dirs(self.threads_of(n)),
        }
    }

    /// What `/proc/N/stat` and `status` say of guest process `n` (thread `tid` of it,
    /// for `task/TID`), with `comm` its name; and its signal masks.
    fn seen<'a>(&self, n: u64, tid: u64, comm: &'a [u8]) -> (StatIds<'a>, SignalMasks) {
        let own = n == self.pid;
        let shared = if own {
            Some(self.shared.clone())
        } else {
            self.kernel.shared_of(n)
        };
        let zombie = self.kernel.is_zombie(n).unwrap_or(false);
        let shown = shared
            .as_ref()
            .map(|s| s.shown().clone())
            .unwrap_or_default();
        let threads = if own {
            self.threads.len().max(1) as u64
        } else {
            shown.threads.len().max(1) as u64
        };
        let state = if zombie {
            b'Z'
        } else if own {
            b'R'
        } else {
            let sleeping = shared.as_ref().is_some_and(|s| {
                let sleepers = s.sleepers();
                !shown.threads.is_empty() && shown.threads.keys().all(|t| sleepers.contains_key(t))
            });
            if sleeping { b'S' } else { b'R' }
        };
        let pinned = self.kernel.clock.is_pinned();
        let vm = if own {
            let vm = vm_sizes(self.mm.vmas(), &self.path);
            VmSizes {
                peak: shown.vm.peak.max(vm.size),
                ..vm
            }
        } else {
            shown.vm
        };
        let times = match &shared {
            Some(s) if !pinned => {
                let (me, children) = (s.accounts.own(), s.accounts.children());
                Some([
                    ticks(me.user),
                    ticks(me.system),
                    ticks(children.user),
                    ticks(children.system),
                ])
            }
            _ => None,
        };
        let (ignored, caught) = if own {
            self.dispositions()
        } else {
            (shown.ignored, shown.caught)
        };
        let signals = SignalMasks {
            pending: if own {
                self.signals_for.get(&tid).map_or(0, |p| p.set())
            } else {
                0
            },
            shared: shared
                .as_ref()
                .map_or(0, |s| s.signals.load(std::sync::atomic::Ordering::Acquire)),
            blocked: 0,
            ignored,
            caught,
        };
        let ids = StatIds {
            pid: n,
            comm,
            ppid: self
                .kernel
                .parent(n)
                .unwrap_or(self.kernel.outside_parent()),
            pgrp: self.kernel.pgid(n).unwrap_or(n),
            session: self.kernel.sid(n).unwrap_or(n),
            terminal: match self.kernel.controlling(n) {
                Controlling::Outside => None,
                Controlling::Detached => Some(None),
                Controlling::Guest(t) => Some(Some(t)),
            },
            threads,
            state,
            vm,
            times,
            // Linux's table grows by 64 slots at a time, as far as the highest descriptor.
            fd_size: own.then(|| {
                let top = self.fds.open().max().map_or(0, |fd| fd + 1);
                top.next_multiple_of(64).max(64)
            }),
            pinned,
        };
        (ids, signals)
    }

    /// The name of thread `tid` of guest process `n` (its main thread's for `tid` n).
    fn comm_of(&self, n: u64, tid: u64) -> Vec<u8> {
        let shared = if n == self.pid {
            Some(self.shared.clone())
        } else {
            self.kernel.shared_of(n)
        };
        let comm = shared.and_then(|s| s.shown().threads.get(&tid).copied());
        let comm = match comm {
            Some(c) => c.to_vec(),
            // Not started yet, or a zombie whose threads are gone: the program's name.
            None => {
                let exe = self.exe_of(n).unwrap_or_default();
                let name = exe.rsplit(|&b| b == b'/').next().unwrap_or_default();
                name[..name.len().min(15)].to_vec()
            }
        };
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        comm[..end].to_vec()
    }

    /// The calling process's `maps`, `auxv`, `cmdline` or `environ` (`rest` of its
    /// `/proc/PID` path), named for its memory file: its mappings, what exec gave it, the
    /// strings read from its memory as they are now (a program may rewrite them, as
    /// `setproctitle` does). None for other files.
    fn own_text(&self, rest: &[u8]) -> Option<(&'static std::ffi::CStr, Vec<u8>)> {
        let info = &self.mm.exec_info;
        let (name, span) = match rest {
            b"/maps" => return Some((c"maps", maps_text(self.mm.vmas()))),
            b"/auxv" => return Some((c"auxv", info.auxv.clone())),
            b"/cmdline" => (c"cmdline", info.args),
            b"/environ" => (c"environ", info.env),
            _ => return None,
        };
        let mut text = vec![0u8; (span.1 - span.0) as usize];
        if self.mm.read(GuestVirtAddr(span.0), &mut text).is_err() {
            text.clear();
        }
        Some((name, text))
    }

    /// A `/proc` file whose text the shim writes: one of the calling process's own
    /// ([`Self::own_text`]), or a guest process's (or its thread's, under `task/TID`)
    /// `stat`, `status`, `statm`, `comm` or `cmdline`.
    fn proc_text(&self, path: &[u8], flags: i32) -> Result<Option<OwnedFd>, Errno> {
        let read_only = || {
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(Errno(libc::EACCES));
            }
            if flags & libc::O_DIRECTORY != 0 {
                return Err(Errno(libc::ENOTDIR));
            }
            Ok(())
        };
        if let Some((name, text)) = self.own_rest(path).and_then(|rest| self.own_text(rest)) {
            read_only()?;
            return host::memory_file(name, &text).map(Some);
        }
        let (n, rest) = match named(path, self.pid) {
            Named::Pid(n, rest) if self.is_guest(n) => (n, rest),
            _ => return Ok(None),
        };
        let (tid, file) = match task_rest(rest) {
            Some((tid, file)) if self.threads_of(n).contains(&tid) => (tid, file),
            Some(_) => return Ok(None),
            None => (n, rest),
        };
        let host_file = |name: &str| {
            std::fs::read(format!("/proc/{}/{name}", std::process::id()))
                .map_err(|_| Errno(libc::ENOENT))
        };
        let comm = self.comm_of(n, tid);
        let (name, text) = match file {
            b"/stat" => {
                let (ids, _) = self.seen(n, tid, &comm);
                let line = guest_stat(&host_file("stat")?, &ids).ok_or(Errno(libc::EIO))?;
                (c"stat", line)
            }
            b"/status" => {
                let (ids, signals) = self.seen(n, tid, &comm);
                (
                    c"status",
                    status_text(&host_file("status")?, &ids, tid, &signals),
                )
            }
            b"/statm" => {
                let (ids, _) = self.seen(n, tid, &comm);
                (c"statm", statm_text(&ids.vm))
            }
            // Read only: a rename is prctl(PR_SET_NAME)'s.
            b"/comm" => {
                let mut text = comm.clone();
                text.push(b'\n');
                (c"comm", text)
            }
            b"/cmdline" if n != self.pid => {
                let cmdline = match self.kernel.shared_of(n) {
                    Some(s) => s.shown().cmdline.clone(),
                    None => Vec::new(),
                };
                (c"cmdline", cmdline)
            }
            _ => return Ok(None),
        };
        read_only()?;
        host::memory_file(name, &text).map(Some)
    }
}

/// What an open of a `/proc` path the shim serves gives: a file with the text it wrote,
/// or a descriptor listing (with the empty host directory behind it).
pub(crate) enum Served {
    File(OwnedFd),
    Listing(OwnedFd, Arc<Listing>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::mm;

    #[test]
    fn proc_paths_name_self_numbers_and_the_rest() {
        assert_eq!(named(b"/proc/self/stat", 7), Named::Pid(7, b"/stat"));
        assert_eq!(named(b"/proc/self", 7), Named::Pid(7, b""));
        assert_eq!(named(b"/proc/1234/maps", 7), Named::Pid(1234, b"/maps"));
        assert_eq!(named(b"/proc/thread-self/fd", 7), Named::ThreadSelf(b"/fd"));
        assert_eq!(named(b"/proc/cpuinfo", 7), Named::Other);
        assert_eq!(named(b"/proc/0012/stat", 7), Named::Other);
        assert_eq!(named(b"/procx/self", 7), Named::Other);
        assert_eq!(named(b"proc/self", 7), Named::Other);
    }

    fn vma(
        start: u64,
        end: u64,
        prot: Prot,
        file: Option<mm::FileBacking>,
        name: &'static str,
    ) -> Vma {
        Vma {
            start,
            end,
            prot,
            file,
            name,
            shm: None,
            lazy: false,
        }
    }

    #[test]
    fn maps_lists_mappings_as_linux_prints_them() {
        use std::os::unix::fs::MetadataExt;
        let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
        let file = std::sync::Arc::new(std::fs::File::open(&exe).unwrap());
        let ino = file.metadata().unwrap().ino();
        let backing = |offset| {
            Some(mm::FileBacking {
                path: exe.clone(),
                file: file.clone(),
                offset,
            })
        };
        let rx = Prot((libc::PROT_READ | libc::PROT_EXEC) as u32);
        let vmas = [
            vma(0x40_0000, 0x40_2000, rx, backing(0), ""),
            // The next page of the file, same protection: one line with the first.
            vma(0x40_2000, 0x40_3000, rx, backing(0x2000), ""),
            // Not the next page of the file: a line of its own.
            vma(0x40_3000, 0x40_4000, rx, backing(0x8000), ""),
            vma(0x50_0000, 0x50_1000, Prot::RW, None, "[heap]"),
            vma(0x50_1000, 0x50_3000, Prot::RW, None, "[heap]"),
            vma(0x60_0000, 0x60_1000, Prot::NONE, None, ""),
            vma(
                0x60_1000,
                0x60_2000,
                Prot((libc::PROT_WRITE) as u32),
                None,
                "",
            ),
        ];
        let text = String::from_utf8(maps_text(vmas.iter())).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        let path = exe.display().to_string();
        assert!(
            lines[0].starts_with("00400000-00403000 r-xp 00000000 "),
            "{text}"
        );
        assert!(lines[0].contains(&format!(" {ino} ")), "{text}");
        assert_eq!(
            lines[0].find(&path),
            Some(73),
            "the name starts at column 73: {text}"
        );
        assert!(
            lines[1].starts_with("00403000-00404000 r-xp 00008000 "),
            "{text}"
        );
        assert_eq!(
            lines[2],
            format!(
                "00500000-00503000 rw-p 00000000 00:00 0{}[heap]",
                " ".repeat(34)
            )
        );
        assert_eq!(lines[3], "00600000-00601000 ---p 00000000 00:00 0 ");
        assert_eq!(lines[4], "00601000-00602000 -w-p 00000000 00:00 0 ");
        assert_eq!(
            lines[5],
            format!(
                "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0{}[vsyscall]",
                " ".repeat(18)
            )
        );
    }

    #[test]
    fn descriptor_directories_are_recognised_under_every_spelling() {
        for rest in [
            &b"/fd"[..],
            b"/fd/3",
            b"/fdinfo/1",
            b"/task/5/fd/0",
            b"//fd",
        ] {
            assert!(shows_descriptors(rest), "{}", String::from_utf8_lossy(rest));
        }
        for rest in [&b"/stat"[..], b"", b"/task/5/stat", b"/fdx", b"/task/fd"] {
            assert!(
                !shows_descriptors(rest),
                "{}",
                String::from_utf8_lossy(rest)
            );
        }
    }

    #[test]
    fn paths_under_proc_and_dev_are_matched_however_they_are_spelled() {
        let n = |p: &[u8]| String::from_utf8(normalize(p).into_owned()).unwrap();
        assert_eq!(n(b"//proc/./self//fd/../fd/3"), "/proc/self/fd/3");
        assert_eq!(n(b"/dev/fd/63"), "/proc/self/fd/63");
        assert_eq!(n(b"/dev//fd"), "/proc/self/fd");
        assert_eq!(n(b"/dev/fd/"), "/proc/self/fd/");
        assert_eq!(n(b"/dev/stdin"), "/proc/self/fd/0");
        assert_eq!(n(b"/dev/./stderr"), "/proc/self/fd/2");
        assert_eq!(n(b"/dev/../proc/self/fdinfo/1"), "/proc/self/fdinfo/1");
        assert_eq!(n(b"/proc/.."), "/");
        // Elsewhere a `..` may follow a symbolic link: left for the host to resolve.
        assert!(matches!(
            normalize(b"/tmp/../proc/self/fd/3"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize(b"fd/3"), Cow::Borrowed(_)));
        assert!(matches!(normalize(b"/devices/x"), Cow::Borrowed(_)));
    }

    #[test]
    fn own_descriptors_are_found_under_the_process_and_its_threads() {
        let threads = |tid| tid == 7;
        for (rest, want) in [
            (&b"/fd"[..], Some(&b"/fd"[..])),
            (b"/fd/3", Some(b"/fd/3")),
            (b"/fdinfo/1", Some(b"/fdinfo/1")),
            (b"/task/7/fd/2", Some(b"/fd/2")),
            (b"/task/8/fd/2", None),
            (b"/fdx", None),
            (b"/stat", None),
            (b"/task/7", None),
        ] {
            assert_eq!(
                own_descriptors(rest, threads),
                want,
                "{}",
                String::from_utf8_lossy(rest)
            );
        }
    }

    /// The names in a `getdents64` buffer.
    fn names(buf: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let reclen = u16::from_le_bytes([buf[at + 16], buf[at + 17]]) as usize;
            assert_eq!(reclen % 8, 0);
            let name = &buf[at + 19..at + reclen];
            let end = name.iter().position(|&b| b == 0).unwrap();
            out.push(String::from_utf8(name[..end].to_vec()).unwrap());
            at += reclen;
        }
        out
    }

    #[test]
    fn a_listing_reads_in_pieces_and_rewinds() {
        let fds = |open: &[u64]| {
            open.iter()
                .map(|fd| (fd.to_string().into_bytes(), libc::DT_LNK))
                .collect::<Vec<_>>()
        };
        let listing = Listing::new(Listed::Descriptors);
        assert_eq!(listing.what(), Listed::Descriptors);
        let first = listing.read(48, || fds(&[0, 1, 12])).unwrap();
        assert_eq!(names(&first), [".", ".."]);
        assert_eq!(first[18], libc::DT_DIR);
        // Entries that came after the first read are not in this pass.
        let rest = listing.read(4096, || fds(&[0, 1, 12, 13])).unwrap();
        assert_eq!(names(&rest), ["0", "1", "12"]);
        assert_eq!(rest[18], libc::DT_LNK);
        assert!(listing.read(4096, || fds(&[0])).unwrap().is_empty());
        assert_eq!(listing.seek(0, libc::SEEK_SET), Ok(0));
        let again = listing.read(4096, || fds(&[0, 13])).unwrap();
        assert_eq!(names(&again), [".", "..", "0", "13"]);
        assert_eq!(listing.seek(0, libc::SEEK_CUR), Ok(4));
        assert_eq!(listing.seek(0, libc::SEEK_END), Err(Errno::EINVAL));
        let info = Listing::new(Listed::DescriptorInfo);
        assert_eq!(info.read(8, || fds(&[0])), Err(Errno::EINVAL));
    }

    #[test]
    fn proc_lists_the_hosts_entries_but_the_guests_processes() {
        let host = [
            ("1", libc::DT_DIR),
            ("cpuinfo", libc::DT_REG),
            ("self", libc::DT_LNK),
            ("4242", libc::DT_DIR),
            ("sys", libc::DT_DIR),
            ("thread-self", libc::DT_LNK),
        ]
        .map(|(n, t)| (n.as_bytes().to_vec(), t));
        let entries = proc_entries(host.into_iter(), &[1000, 1003]);
        let names: Vec<(&str, u8)> = entries
            .iter()
            .map(|(n, t)| (std::str::from_utf8(n).unwrap(), *t))
            .collect();
        assert_eq!(
            names,
            [
                ("cpuinfo", libc::DT_REG),
                ("self", libc::DT_LNK),
                ("sys", libc::DT_DIR),
                ("thread-self", libc::DT_LNK),
                ("1000", libc::DT_DIR),
                ("1003", libc::DT_DIR),
            ]
        );
    }

    #[test]
    fn task_paths_name_a_thread_and_the_rest() {
        assert_eq!(task_rest(b"/task/1001/stat"), Some((1001, &b"/stat"[..])));
        assert_eq!(task_rest(b"/task/1001"), Some((1001, &b""[..])));
        assert_eq!(task_rest(b"/task"), None);
        assert_eq!(task_rest(b"/task/01/stat"), None);
        assert_eq!(task_rest(b"/stat"), None);
    }

    #[test]
    fn sizes_count_the_mappings_by_kind() {
        let exe = std::path::PathBuf::from("/bin/prog");
        let file = std::sync::Arc::new(std::fs::File::open("/proc/self/exe").unwrap());
        let backing = |path: &str| {
            Some(mm::FileBacking {
                path: path.into(),
                file: file.clone(),
                offset: 0,
            })
        };
        let rx = Prot((libc::PROT_READ | libc::PROT_EXEC) as u32);
        let vmas = [
            vma(0x40_0000, 0x40_2000, rx, backing("/bin/prog"), ""),
            vma(0x50_0000, 0x50_3000, Prot::RW, None, "[heap]"),
            vma(0x60_0000, 0x60_1000, rx, backing("/lib/libc.so.6"), ""),
            vma(0x70_0000, 0x70_8000, Prot::RW, None, "[stack]"),
        ];
        let vm = vm_sizes(vmas.iter(), &exe);
        assert_eq!(
            vm,
            VmSizes {
                size: 0xe000,
                peak: 0xe000,
                data: 0x3000,
                stack: 0x8000,
                exe: 0x2000,
                lib: 0x1000,
                file: 0x3000,
            }
        );
        assert_eq!(statm_text(&vm), b"14 0 0 2 0 11 0\n");
    }

    fn ids(pinned: bool) -> StatIds<'static> {
        StatIds {
            pid: 1000,
            comm: b"prog",
            ppid: 999,
            pgrp: 1000,
            session: 999,
            terminal: None,
            threads: 2,
            state: b'S',
            vm: VmSizes {
                size: 8 << 20,
                peak: 9 << 20,
                data: 1 << 20,
                stack: 132 << 10,
                exe: 20 << 10,
                lib: 1528 << 10,
                file: 2 << 20,
            },
            times: (!pinned).then_some([7, 3, 1, 0]),
            fd_size: Some(64),
            pinned,
        }
    }

    #[test]
    fn a_status_has_the_guests_ids_sizes_and_signals_and_not_lbrprofs() {
        let host = b"Name:\tlbrprof\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\nNgid:\t0\n\
Pid:\t4242\nPPid:\t4000\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\nFDSize:\t256\n\
NStgid:\t4242\nNSpid:\t4242\nVmPeak:\t  900000 kB\nVmSize:\t  800000 kB\nVmLck:\t       0 kB\n\
VmHWM:\t   50000 kB\nVmRSS:\t   50000 kB\nRssAnon:\t  40000 kB\nVmData:\t  700000 kB\n\
VmStk:\t     132 kB\nVmExe:\t    9000 kB\nVmLib:\t    3000 kB\nVmPTE:\t     200 kB\n\
Threads:\t7\nSigQ:\t0/96367\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
SigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180004002\n\
Cpus_allowed_list:\t0-1\nvoluntary_ctxt_switches:\t55\n";
        let signals = SignalMasks {
            pending: 0,
            shared: 1 << 9,
            blocked: 0,
            ignored: 1 << 12,
            caught: 1 << 16,
        };
        let text = String::from_utf8(status_text(host, &ids(false), 1001, &signals)).unwrap();
        let want = "Name:\tprog\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1000\nNgid:\t0\n\
Pid:\t1001\nPPid:\t999\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\nFDSize:\t64\n\
NStgid:\t1000\nNSpid:\t1001\nVmPeak:\t    9216 kB\nVmSize:\t    8192 kB\nVmLck:\t       0 kB\n\
VmData:\t    1024 kB\nVmStk:\t     132 kB\nVmExe:\t      20 kB\nVmLib:\t    1528 kB\n\
Threads:\t2\nSigQ:\t1/96367\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000200\n\
SigBlk:\t0000000000000000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000010000\n\
Cpus_allowed_list:\t0-1\n";
        assert_eq!(text, want);
        // A zombie has no memory lines.
        let zombie = StatIds {
            state: b'Z',
            fd_size: None,
            ..ids(false)
        };
        let text = String::from_utf8(status_text(host, &zombie, 1000, &signals)).unwrap();
        assert!(text.contains("State:\tZ (zombie)\n"), "{text}");
        assert!(!text.contains("Vm"), "{text}");
        assert!(!text.contains("FDSize"), "not known: {text}");
    }

    #[test]
    fn a_stat_line_gets_the_guests_ids_and_pinned_ones_lose_what_varies() {
        let host = b"4242 (lbr prof) S 4000 4242 4000 34816 4242 4194304 500 0 0 0 7 3 0 0 \
20 0 9 0 123456 99999 321 18446744073709551615 1 2 3 0 0 0 0 0 0 0 0 0 17 5 0 0 0 0 0 \
10 11 12 13 14 15 16 0\n";
        let real = String::from_utf8(guest_stat(host, &ids(false)).unwrap()).unwrap();
        let f: Vec<&str> = real.trim_end().split(' ').collect();
        assert_eq!(
            &f[..8],
            ["1000", "(prog)", "S", "999", "1000", "999", "34816", "4242"]
        );
        assert_eq!((f[13], f[19], f[21], f[38]), ("7", "2", "123456", "5"));
        // The guest's times, virtual size and (uncounted) resident set.
        assert_eq!(&f[13..17], ["7", "3", "1", "0"]);
        assert_eq!((f[22], f[23]), ("8388608", "0"));
        assert_eq!(f.len(), 52);
        let pinned = String::from_utf8(guest_stat(host, &ids(true)).unwrap()).unwrap();
        let f: Vec<&str> = pinned.trim_end().split(' ').collect();
        assert_eq!(
            f[7], "1000",
            "the terminal's foreground group is the program's"
        );
        assert_eq!((f[13], f[19], f[21], f[38]), ("0", "2", "0", "0"));
        assert_eq!((f[24], f[37], f[51]), ("18446744073709551615", "17", "0"));
        assert_eq!(f.len(), 52);
        assert!(guest_stat(b"garbage", &ids(true)).is_none());
    }

    #[test]
    fn a_session_of_the_programs_own_has_its_terminal_or_none() {
        let host = b"4242 (x) S 1 2 3 34816 4242 0 0 0 0 0 0 0 0 0 20 0 1 0\n";
        let line = |terminal| {
            let ids = StatIds {
                pid: 1001,
                comm: b"sh",
                ppid: 1000,
                pgrp: 1001,
                session: 1001,
                terminal,
                threads: 1,
                ..ids(true)
            };
            let l = String::from_utf8(guest_stat(host, &ids).unwrap()).unwrap();
            l.split(' ')
                .skip(4)
                .take(4)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(line(Some(None)), ["1001", "1001", "0", "-1"]);
        let pty = crate::linux::proc::Terminal {
            rdev: 34820,
            path: "/dev/pts/4".into(),
            foreground: 1003,
        };
        assert_eq!(line(Some(Some(pty))), ["1001", "1001", "34820", "1003"]);
    }
}
