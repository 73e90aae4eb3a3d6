//! Side-band for tasks that existed before sampling started (`record -p/-t`): the kernel
//! reports only new mappings and names, so, like `perf record`, we synthesize MMAP and
//! COMM from `/proc/PID/maps` and `/proc/PID/task/TID/comm`.

use std::fs;
use std::io;

use lbrprof_data::model::{AddressSpace, Event, Mapping, TaskEvent};

use super::convert::Converter;

/// One executable mapping of a `/proc/PID/maps` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapsEntry {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// The executable, file-backed (or `[vdso]`-like) mappings of a maps file. Lines that do
/// not parse are skipped: the format is the kernel's, but a path may contain anything.
pub fn parse_maps(text: &str) -> Vec<MapsEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MapsEntry> {
    // 7f1c2a000000-7f1c2a028000 r-xp 00028000 08:01 1234   /usr/lib/libc.so.6
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    if !perms.contains('x') || path.is_empty() {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    Some(MapsEntry {
        start,
        end,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: path.to_owned(),
    })
}

/// Every process in /proc, in pid order.
pub fn all_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The thread ids of a process (`/proc/PID/task`).
pub fn threads_of(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The process a thread belongs to (`Tgid:` of `/proc/TID/status`).
pub fn tgid_of(tid: u32) -> io::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in status"))
}

/// Whether process `pid` still runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    running(&format!("/proc/{pid}/stat"))
}

/// Whether thread `tid` of process `pid` still runs.
pub fn thread_alive(pid: u32, tid: u32) -> bool {
    running(&format!("/proc/{pid}/task/{tid}/stat"))
}

fn running(stat_path: &str) -> bool {
    let Ok(stat) = fs::read_to_string(stat_path) else {
        return false;
    };
    // "PID (comm) S ...": comm may contain anything, the state follows the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// MMAP and COMM events for the current state of process `pid` (threads `tids`).
/// Times are `now_ns` so they sort before every sample taken afterwards.
pub fn synthesize(
    pid: u32,
    tids: &[u32],
    now_ns: u64,
    converter: &mut Converter,
) -> io::Result<Vec<Event>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut entries = parse_maps(&maps);
    // The program first, as the kernel maps it first at exec: readers take the first
    // file a process maps for its executable.
    if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
        entries.sort_by_key(|m| std::path::Path::new(&m.path) != exe);
    }
    let mut events: Vec<Event> = entries
        .into_iter()
        .map(|m| {
            Event::Mapping(Mapping {
                time_ns: now_ns,
                space: AddressSpace::HostUser,
                pid,
                start: m.start,
                len: m.end - m.start,
                pgoff: m.offset,
                build_id: converter.build_id_of(&m.path),
                path: m.path,
            })
        })
        .collect();
    for &tid in tids {
        if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) {
            events.push(Event::Task(TaskEvent::Comm {
                time_ns: now_ns,
                pid,
                tid,
                comm: comm.trim_end_matches('\n').to_owned(),
            }));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 42   /usr/bin/hot
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 42   /usr/bin/hot
7ffd1c3f0000-7ffd1c3f2000 r-xp 00000000 00:00 0                  [vdso]
7f0000000000-7f0000001000 rwxp 00000000 00:00 0 
7f0000001000-7f0000002000 r-xp 00000000 08:01 7    /tmp/with space (deleted)
garbage line
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0          [vsyscall]
0002-0001 r-xp 00000000 00:00 0 /bad/range
";
        let maps = parse_maps(text);
        assert_eq!(
            maps,
            vec![
                MapsEntry {
                    start: 0x55d0c0a01000,
                    end: 0x55d0c0a02000,
                    offset: 0x1000,
                    path: "/usr/bin/hot".into()
                },
                MapsEntry {
                    start: 0x7ffd1c3f0000,
                    end: 0x7ffd1c3f2000,
                    offset: 0,
                    path: "[vdso]".into()
                },
                MapsEntry {
                    start: 0x7f0000001000,
                    end: 0x7f0000002000,
                    offset: 0,
                    path: "/tmp/with space (deleted)".into()
                },
                MapsEntry {
                    start: 0xffffffffff600000,
                    end: 0xffffffffff601000,
                    offset: 0,
                    path: "[vsyscall]".into()
                },
            ]
        );
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let tids = threads_of(me).unwrap();
        assert!(tids.contains(&me));
        assert_eq!(tgid_of(me).unwrap(), me);
        let events = synthesize(me, &tids, 1, &mut Converter::new()).unwrap();
        let exe = std::env::current_exe().unwrap();
        // The program's own mapping comes first.
        assert!(matches!(&events[0],
            Event::Mapping(m) if m.path == exe.to_str().unwrap() && m.build_id.is_some()));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Task(TaskEvent::Comm { tid, .. }) if *tid == me))
        );
        assert!(threads_of(u32::MAX).is_err());
        assert!(alive(me));
        assert!(thread_alive(me, me));
        assert!(!thread_alive(me, u32::MAX));
        assert!(!alive(u32::MAX));
    }
}
