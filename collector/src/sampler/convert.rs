//! Conversion of kernel ring-buffer records into the recording model's [`Event`]s.
//! Samples are decoded from their raw bytes by the data crate's one decoder of perf's
//! sample layout ([`lbrprof_data::perfdata::decode_ring_sample`], the perf.data reader's),
//! with the layout of the event's attribute; side-band records (mappings, tasks, losses)
//! as `perf-event-open` parses them. Pure apart from the build-id fallback, which reads
//! the mapped ELF file when the kernel did not put the build-id in the MMAP2 record.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use perf_event_open::sample::record::mmap::{Info, Mmap};
use perf_event_open::sample::record::{Parser, Priv, Record};

use crate::model::{AddressSpace, Event, Loss, LossKind, Mapping, TaskEvent};
use crate::perfdata::abi::PERF_SAMPLE_REGS_USER;
use crate::perfdata::{RingSample, SampleLayout, decode_ring_sample};

/// What one ring-buffer record became.
#[derive(Debug, PartialEq, Eq)]
pub enum Converted {
    Event(Event),
    /// A record we do not keep (unthrottle, non-executable mmaps, unknown types).
    Skip,
}

/// Stateful converter: caches build-ids read from files.
#[derive(Default)]
pub struct Converter {
    build_ids: HashMap<String, Option<Vec<u8>>>,
    /// The fixed sample period (`-c`), for samples that do not carry theirs.
    fixed_period: Option<u64>,
}

impl Converter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A converter for events sampled every `period` events: their samples carry no
    /// period (with PERF_SAMPLE_PERIOD and a fixed period, the kernel would sample a
    /// software event on every hit instead, as perf knows: it asks for the period only
    /// in frequency mode), so each stands for `period`.
    pub fn with_fixed_period(period: Option<u64>) -> Self {
        Converter {
            fixed_period: period,
            ..Self::default()
        }
    }

    /// Decodes a `PERF_RECORD_SAMPLE` record as read from a ring buffer (`record`: its
    /// header and body) of an event whose attribute `parser` describes.
    pub fn sample(&self, record: &[u8], parser: &Parser) -> Result<RingSample, &'static str> {
        let layout = SampleLayout {
            sample_type: parser.sample_type,
            read_format: parser.read_format,
            branch_sample_type: parser.branch_sample_type,
            // The registers `--call-graph dwarf` asks for (`super::perf_opts`).
            regs_user: if parser.sample_type & PERF_SAMPLE_REGS_USER != 0 {
                crate::dwarf::SAMPLE_REGS_USER
            } else {
                0
            },
            fixed_period: self.fixed_period.unwrap_or(0),
        };
        decode_ring_sample(record, layout)
    }

    /// Convert one side-band record. `mode` is the record header's cpumode. (Samples are
    /// decoded from their bytes: [`Converter::sample`].)
    pub fn convert(&mut self, mode: Priv, record: Record) -> Converted {
        match record {
            Record::Mmap(m) if m.executable => {
                Converted::Event(Event::Mapping(self.mapping(mode, &m)))
            }
            Record::Comm(c) => {
                let time_ns = c.record_id.as_ref().and_then(|r| r.time).unwrap_or(0);
                let (pid, tid) = (c.task.pid, c.task.tid);
                let comm = c.comm.to_string_lossy().into_owned();
                Converted::Event(Event::Task(if c.by_execve {
                    TaskEvent::Exec {
                        time_ns,
                        pid,
                        tid,
                        comm,
                    }
                } else {
                    TaskEvent::Comm {
                        time_ns,
                        pid,
                        tid,
                        comm,
                    }
                }))
            }
            Record::Fork(f) => Converted::Event(Event::Task(TaskEvent::Fork {
                time_ns: f.time,
                pid: f.task.pid,
                tid: f.task.tid,
                ppid: f.parent_task.pid,
                ptid: f.parent_task.tid,
            })),
            Record::Exit(e) => Converted::Event(Event::Task(TaskEvent::Exit {
                time_ns: e.time,
                pid: e.task.pid,
                tid: e.task.tid,
            })),
            Record::LostRecords(l) => Converted::Event(Event::Loss(Loss {
                time_ns: l.record_id.as_ref().and_then(|r| r.time).unwrap_or(0),
                kind: LossKind::RingBuffer,
                count: l.lost_records,
                tid: l
                    .record_id
                    .as_ref()
                    .and_then(|r| r.task.as_ref())
                    .map(|t| t.tid),
            })),
            Record::LostSamples(l) => Converted::Event(Event::Loss(Loss {
                time_ns: l.record_id.as_ref().and_then(|r| r.time).unwrap_or(0),
                kind: LossKind::RingBuffer,
                count: l.lost_samples,
                tid: l
                    .record_id
                    .as_ref()
                    .and_then(|r| r.task.as_ref())
                    .map(|t| t.tid),
            })),
            Record::Throttle(t) => Converted::Event(Event::Loss(Loss {
                time_ns: t.time,
                kind: LossKind::Throttled,
                count: 1,
                tid: t
                    .record_id
                    .as_ref()
                    .and_then(|r| r.task.as_ref())
                    .map(|t| t.tid),
            })),
            _ => Converted::Skip,
        }
    }

    fn mapping(&mut self, mode: Priv, m: &Mmap) -> Mapping {
        let path = m.file.to_string_lossy().into_owned();
        let build_id = match m.ext.as_ref().map(|e| &e.info) {
            Some(Info::BuildId(id)) if !id.is_empty() => Some(id.to_vec()),
            _ => self.build_id_of(&path),
        };
        Mapping {
            time_ns: m.record_id.as_ref().and_then(|r| r.time).unwrap_or(0),
            space: match mode {
                Priv::Kernel | Priv::Hv => AddressSpace::HostKernel,
                _ => AddressSpace::HostUser,
            },
            pid: m.task.pid,
            start: m.addr,
            len: m.len,
            pgoff: m.page_offset,
            path,
            build_id,
        }
    }

    /// The GNU build-id of an ELF file, read once per path; `None` for pseudo-files
    /// (`[vdso]`, `//anon`), unreadable or non-ELF files.
    pub fn build_id_of(&mut self, path: &str) -> Option<Vec<u8>> {
        self.build_ids
            .entry(path.to_owned())
            .or_insert_with(|| {
                path.starts_with('/')
                    .then(|| read_build_id(Path::new(path)))?
            })
            .clone()
    }
}

/// The GNU build-id of the ELF file at `path`, reading only its headers and notes (the
/// file is mapped, not read whole); `None` for unreadable or non-ELF files.
pub fn read_build_id(path: &Path) -> Option<Vec<u8>> {
    use object::Object;
    let file = File::open(path).ok()?;
    // SAFETY: the mapping is read-only and private; if another process truncates or
    // rewrites the file meanwhile we may read garbage or fault, the same risk every
    // profiler and debugger takes with mapped binaries. `object` bounds-checks every read,
    // so garbage gives an error, not undefined behaviour in our code.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let obj = object::File::parse(&*map).ok()?;
    obj.build_id().ok().flatten().map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use perf_event_open::sample::record::comm::Comm;
    use perf_event_open::sample::record::lost::LostRecords;
    use perf_event_open::sample::record::mmap::Ext;
    use perf_event_open::sample::record::task::Fork;
    use perf_event_open::sample::record::throttle::Throttle;
    use perf_event_open::sample::record::{RecordId, Task};

    use super::*;

    fn rid(time: u64, pid: u32, tid: u32) -> RecordId {
        RecordId {
            id: None,
            stream_id: None,
            cpu: Some(1),
            task: Some(Task { pid, tid }),
            time: Some(time),
        }
    }

    /// A sample record as the kernel writes it into a ring buffer: its header (type,
    /// `misc`, size) and the body's words, in this machine's byte order.
    fn ring_record(misc: u16, body: &[u64]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend(crate::perfdata::abi::PERF_RECORD_SAMPLE.to_ne_bytes());
        r.extend(misc.to_ne_bytes());
        r.extend(((8 + body.len() * 8) as u16).to_ne_bytes());
        for w in body {
            r.extend(w.to_ne_bytes());
        }
        r
    }

    fn parser(sample_type: u64, branch_sample_type: u64) -> Parser {
        Parser {
            sample_id_all: true,
            sample_type,
            read_format: 0,
            user_regs: 0,
            intr_regs: 0,
            branch_sample_type,
        }
    }

    #[test]
    fn samples_decode_from_their_bytes_with_every_field_and_branch_flags() {
        use crate::model::{BranchKind, CpuMode, Frame};
        use crate::perfdata::abi::*;
        let st = PERF_SAMPLE_IP
            | PERF_SAMPLE_TID
            | PERF_SAMPLE_TIME
            | PERF_SAMPLE_ID
            | PERF_SAMPLE_CPU
            | PERF_SAMPLE_PERIOD
            | PERF_SAMPLE_CALLCHAIN
            | PERF_SAMPLE_BRANCH_STACK;
        let flags = |mispred: bool, cycles: u64, ty: u64| {
            let prediction = if mispred {
                PERF_BRANCH_MISPRED
            } else {
                PERF_BRANCH_PREDICTED
            };
            prediction | cycles << PERF_BRANCH_CYCLES_SHIFT | ty << PERF_BRANCH_TYPE_SHIFT
        };
        let (pid, tid, cpu) = (10u32, 11u32, 1u32);
        let pair = |a: u32, b: u32| {
            let mut w = [0u8; 8];
            w[..4].copy_from_slice(&a.to_ne_bytes());
            w[4..].copy_from_slice(&b.to_ne_bytes());
            u64::from_ne_bytes(w)
        };
        let body = [
            0x401010,
            pair(pid, tid),
            1234,
            77, // id
            pair(cpu, 0),
            250_000,
            4, // call chain: the kernel's frame, then the user's
            PERF_CONTEXT_KERNEL,
            0xffff_ffff_8100_0000,
            PERF_CONTEXT_USER,
            0x401200,
            2, // branch stack, with its hw_index
            7,
            0x401020,
            0x401000,
            flags(true, 12, PERF_BR_COND),
            0x401250,
            0x401010,
            flags(false, 3, PERF_BR_CALL),
        ];
        let record = ring_record(PERF_RECORD_MISC_USER, &body);
        let conv = Converter::new();
        let r = conv
            .sample(&record, &parser(st, PERF_SAMPLE_BRANCH_HW_INDEX))
            .unwrap();
        let h = &r.sample;
        assert_eq!(
            (h.time_ns, h.pid, h.tid, h.cpu, h.period, h.ip, h.mode),
            (1234, pid, tid, cpu, 250_000, 0x401010, CpuMode::User)
        );
        assert_eq!((r.id, r.stack_copy.as_ref()), (Some(77), None));
        assert_eq!(
            h.callchain,
            [
                Frame {
                    addr: 0xffff_ffff_8100_0000,
                    mode: CpuMode::Kernel
                },
                Frame {
                    addr: 0x401200,
                    mode: CpuMode::User
                },
            ]
        );
        assert_eq!(h.branch_hw_index, Some(7));
        let kinds: Vec<BranchKind> = h.branches.iter().map(|b| b.flags.kind).collect();
        assert_eq!(kinds, [BranchKind::Cond, BranchKind::Call]);
        assert_eq!((h.branches[0].from, h.branches[0].to), (0x401020, 0x401000));
        assert!(h.branches[0].flags.mispred && !h.branches[0].flags.predicted);
        assert_eq!(h.branches[0].flags.cycles, 12);
        assert!(!h.branches[1].flags.mispred && h.branches[1].flags.predicted);
        // Every shorter record is an error, not a panic or a sample.
        for n in 0..record.len() {
            assert!(
                conv.sample(&record[..n], &parser(st, PERF_SAMPLE_BRANCH_HW_INDEX))
                    .is_err()
            );
        }
        // Without PERF_SAMPLE_PERIOD (`-c N`), a sample stands for the fixed period; in
        // the kernel's mode, with no call chain or branch stack.
        let st = PERF_SAMPLE_IP | PERF_SAMPLE_TID;
        let record = ring_record(
            PERF_RECORD_MISC_KERNEL,
            &[0xffff_ffff_8100_0010, pair(1, 2)],
        );
        let r = Converter::with_fixed_period(Some(4000))
            .sample(&record, &parser(st, 0))
            .unwrap();
        assert_eq!(
            (r.sample.period, r.sample.mode, r.sample.pid, r.sample.tid),
            (4000, CpuMode::Kernel, 1, 2)
        );
        assert!(r.sample.callchain.is_empty() && r.sample.branches.is_empty());
        assert_eq!(r.id, None);
    }

    #[test]
    fn dwarf_samples_keep_their_registers_and_stack_copy() {
        use crate::perfdata::abi::*;
        let mask = crate::dwarf::SAMPLE_REGS_USER;
        let st = PERF_SAMPLE_IP | PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER;
        // The registers in mask bit order, then the copy: size, bytes, dyn_size.
        let regs: Vec<u64> = (0..u64::from(mask.count_ones()))
            .map(|i| 0x1000 + i)
            .collect();
        let mut body = vec![0x401000, lbrprof_unwind::abi::PERF_SAMPLE_REGS_ABI_64];
        body.extend(&regs);
        body.extend([16, 0x1111, 0x2222, 8]);
        let r = Converter::new()
            .sample(&ring_record(PERF_RECORD_MISC_USER, &body), &parser(st, 0))
            .unwrap();
        let copy = r.stack_copy.expect("a stack copy");
        let want = lbrprof_unwind::Regs::from_perf(mask, &regs).unwrap();
        assert_eq!(copy.regs, want);
        // dyn_size: only the bytes the kernel filled.
        assert_eq!(copy.stack, 0x1111u64.to_ne_bytes());
        // A kernel thread (no user registers, abi 0): no copy.
        let body = [0x401000, 0, 0];
        let r = Converter::new()
            .sample(&ring_record(PERF_RECORD_MISC_USER, &body), &parser(st, 0))
            .unwrap();
        assert_eq!(r.stack_copy, None);
    }

    #[test]
    fn side_band_records_convert() {
        let mut conv = Converter::new();
        let comm = Record::Comm(Box::new(Comm {
            record_id: Some(rid(5, 10, 11)),
            by_execve: true,
            task: Task { pid: 10, tid: 11 },
            comm: CString::new("hot").unwrap(),
        }));
        assert_eq!(
            conv.convert(Priv::User, comm),
            Converted::Event(Event::Task(TaskEvent::Exec {
                time_ns: 5,
                pid: 10,
                tid: 11,
                comm: "hot".into()
            }))
        );
        // prctl(PR_SET_NAME) and thread names: a COMM without the exec flag.
        let rename = Record::Comm(Box::new(Comm {
            record_id: Some(rid(6, 10, 12)),
            by_execve: false,
            task: Task { pid: 10, tid: 12 },
            comm: CString::new("worker").unwrap(),
        }));
        assert_eq!(
            conv.convert(Priv::User, rename),
            Converted::Event(Event::Task(TaskEvent::Comm {
                time_ns: 6,
                pid: 10,
                tid: 12,
                comm: "worker".into()
            }))
        );
        let fork = Record::Fork(Box::new(Fork {
            record_id: None,
            task: Task { pid: 10, tid: 12 },
            parent_task: Task { pid: 10, tid: 11 },
            time: 7,
        }));
        assert_eq!(
            conv.convert(Priv::User, fork),
            Converted::Event(Event::Task(TaskEvent::Fork {
                time_ns: 7,
                pid: 10,
                tid: 12,
                ppid: 10,
                ptid: 11
            }))
        );
        let lost = Record::LostRecords(Box::new(LostRecords {
            record_id: Some(rid(9, 10, 11)),
            id: 0,
            lost_records: 42,
        }));
        assert_eq!(
            conv.convert(Priv::Unknown, lost),
            Converted::Event(Event::Loss(Loss {
                time_ns: 9,
                kind: LossKind::RingBuffer,
                count: 42,
                tid: Some(11)
            }))
        );
        let throttle = Record::Throttle(Box::new(Throttle {
            record_id: None,
            time: 3,
            id: 0,
            stream_id: 0,
        }));
        assert!(matches!(
            conv.convert(Priv::Unknown, throttle),
            Converted::Event(Event::Loss(Loss {
                kind: LossKind::Throttled,
                count: 1,
                ..
            }))
        ));
        assert_eq!(
            conv.convert(Priv::Unknown, Record::Unknown(vec![1, 2])),
            Converted::Skip
        );
    }

    #[test]
    fn mmap_keeps_kernel_build_id_or_reads_the_file() {
        let mut conv = Converter::new();
        let exe = std::env::current_exe().unwrap();
        let mmap = |path: &str, info: Info| {
            Record::Mmap(Box::new(Mmap {
                record_id: Some(rid(1, 10, 10)),
                executable: true,
                task: Task { pid: 10, tid: 10 },
                addr: 0x5555_0000_0000,
                len: 0x1000,
                file: CString::new(path).unwrap(),
                page_offset: 0x2000,
                ext: Some(Ext {
                    prot: 5,
                    flags: 2,
                    info,
                }),
            }))
        };
        let mut given = Info::BuildId(Default::default());
        if let Info::BuildId(id) = &mut given {
            id.try_extend_from_slice(&[0xab; 20]).unwrap();
        }
        let Converted::Event(Event::Mapping(m)) =
            conv.convert(Priv::User, mmap("/nonexistent", given))
        else {
            panic!("not a mapping")
        };
        assert_eq!(m.build_id, Some(vec![0xab; 20]));
        assert_eq!(
            (m.start, m.len, m.pgoff, m.pid),
            (0x5555_0000_0000, 0x1000, 0x2000, 10)
        );
        assert_eq!(m.space, AddressSpace::HostUser);

        // No build-id from the kernel: read it from the ELF file (the test binary has one
        // when linked with --build-id, which rustc does by default on Linux).
        let device = Info::Device {
            major: 0,
            minor: 0,
            inode: 0,
            inode_gen: 0,
        };
        let Converted::Event(Event::Mapping(m)) =
            conv.convert(Priv::User, mmap(exe.to_str().unwrap(), device.clone()))
        else {
            panic!("not a mapping")
        };
        let expected = {
            use object::Object;
            let data = std::fs::read(&exe).unwrap();
            object::File::parse(&*data)
                .unwrap()
                .build_id()
                .unwrap()
                .map(<[u8]>::to_vec)
        };
        assert_eq!(m.build_id, expected);
        let Converted::Event(Event::Mapping(m)) =
            conv.convert(Priv::Kernel, mmap("[vdso]", device))
        else {
            panic!("not a mapping")
        };
        assert_eq!(m.build_id, None);
        assert_eq!(m.space, AddressSpace::HostKernel);
    }
}
