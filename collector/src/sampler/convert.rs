//! Conversion of kernel ring-buffer records (as parsed by `perf-event-open`) into the
//! recording model's [`Event`]s. Pure apart from the build-id fallback, which reads the
//! mapped ELF file when the kernel did not put the build-id in the MMAP2 record.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use perf_event_open::sample::record::mmap::{Info, Mmap};
use perf_event_open::sample::record::sample::{BranchType, CallChain, Lbr, Sample};
use perf_event_open::sample::record::{Priv, Record};

use crate::model::{
    AddressSpace, Branch, BranchFlags, BranchKind, CpuMode, Event, Frame, HostSample, Loss,
    LossKind, Mapping, TaskEvent,
};

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

    /// Convert one record. `mode` is the record header's cpumode.
    pub fn convert(&mut self, mode: Priv, record: Record) -> Converted {
        match record {
            Record::Sample(s) => {
                let mut h = sample(mode, &s);
                if s.period.is_none()
                    && let Some(p) = self.fixed_period
                {
                    h.period = p;
                }
                Converted::Event(Event::Sample(h))
            }
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

/// The model's cpumode for a record header's.
pub fn cpu_mode(mode: Priv) -> CpuMode {
    match mode {
        Priv::User => CpuMode::User,
        Priv::Kernel => CpuMode::Kernel,
        Priv::Hv => CpuMode::Hypervisor,
        Priv::GuestUser => CpuMode::GuestUser,
        Priv::GuestKernel => CpuMode::GuestKernel,
        Priv::Unknown => CpuMode::Unknown,
    }
}

/// A kernel sample as the model's [`HostSample`].
pub fn sample(mode: Priv, s: &Sample) -> HostSample {
    let task = s.record_id.task.as_ref();
    HostSample {
        event: 0,
        time_ns: s.record_id.time.unwrap_or(0),
        pid: task.map_or(0, |t| t.pid),
        tid: task.map_or(0, |t| t.tid),
        cpu: s.record_id.cpu.unwrap_or(0),
        period: s.period.unwrap_or(0),
        ip: s.code_addr.map_or(0, |(ip, _)| ip),
        mode: cpu_mode(mode),
        callchain: s.call_chain.as_deref().map(callchain).unwrap_or_default(),
        branches: s.lbr.as_ref().map(branches).unwrap_or_default(),
        branch_hw_index: s.lbr.as_ref().and_then(|l| l.hw_index),
    }
}

/// Flatten perf's context-marked call chain: every frame keeps the mode of the context
/// marker before it; the markers themselves are dropped.
pub fn callchain(chains: &[CallChain]) -> Vec<Frame> {
    let mut frames = Vec::new();
    for chain in chains {
        let (mode, ips) = match chain {
            CallChain::User(ips) => (CpuMode::User, ips),
            CallChain::Kernel(ips) => (CpuMode::Kernel, ips),
            CallChain::Hv(ips) => (CpuMode::Hypervisor, ips),
            // PERF_CONTEXT_GUEST precedes the guest kernel part.
            CallChain::Guest(ips) | CallChain::GuestKernel(ips) => (CpuMode::GuestKernel, ips),
            CallChain::GuestUser(ips) => (CpuMode::GuestUser, ips),
            CallChain::Unknown(ips) => (CpuMode::Unknown, ips),
            // A deferred user chain arrives in a separate record we do not request.
            _ => continue,
        };
        frames.extend(ips.iter().map(|&addr| Frame { addr, mode }));
    }
    frames
}

/// perf's branch stack entries, newest first, as the model's [`Branch`]es.
pub fn branches(lbr: &Lbr) -> Vec<Branch> {
    lbr.entries
        .iter()
        .map(|e| Branch {
            from: e.from,
            to: e.to,
            flags: BranchFlags {
                mispred: e.mis,
                predicted: e.pred,
                in_tx: e.in_tx,
                abort: e.abort,
                cycles: e.cycles,
                kind: branch_kind(&e.branch_type),
            },
        })
        .collect()
}

fn branch_kind(t: &BranchType) -> BranchKind {
    match t {
        BranchType::Cond => BranchKind::Cond,
        BranchType::Uncond => BranchKind::Uncond,
        BranchType::Ind => BranchKind::IndJump,
        BranchType::Call | BranchType::CondCall => BranchKind::Call,
        BranchType::IndCall => BranchKind::IndCall,
        BranchType::Ret | BranchType::CondRet => BranchKind::Ret,
        BranchType::Syscall => BranchKind::Syscall,
        BranchType::Sysret => BranchKind::Sysret,
        BranchType::Eret => BranchKind::Eret,
        BranchType::Irq => BranchKind::Irq,
        _ => BranchKind::Unknown,
    }
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

    #[test]
    fn call_chain_markers_become_modes() {
        let chains = vec![
            CallChain::Kernel(vec![0xffff_ffff_8100_0000, 0xffff_ffff_8100_0010]),
            CallChain::User(vec![0x401000, 0x401100]),
        ];
        let frames = callchain(&chains);
        assert_eq!(
            frames,
            vec![
                Frame {
                    addr: 0xffff_ffff_8100_0000,
                    mode: CpuMode::Kernel
                },
                Frame {
                    addr: 0xffff_ffff_8100_0010,
                    mode: CpuMode::Kernel
                },
                Frame {
                    addr: 0x401000,
                    mode: CpuMode::User
                },
                Frame {
                    addr: 0x401100,
                    mode: CpuMode::User
                },
            ]
        );
        let guest = callchain(&[
            CallChain::Guest(vec![1]),
            CallChain::GuestUser(vec![2]),
            CallChain::Hv(vec![3]),
        ]);
        assert_eq!(guest[0].mode, CpuMode::GuestKernel);
        assert_eq!(guest[1].mode, CpuMode::GuestUser);
        assert_eq!(guest[2].mode, CpuMode::Hypervisor);
        assert!(callchain(&[]).is_empty());
    }

    #[test]
    fn samples_keep_every_field_and_branch_flags() {
        use perf_event_open::sample::record::sample::{BranchPriv, BranchSpec, Entry};
        let entry = |from, to, mis, cycles, branch_type| Entry {
            from,
            to,
            mis,
            pred: !mis,
            in_tx: false,
            abort: false,
            cycles,
            branch_type,
            branch_spec: BranchSpec::Na,
            branch_priv: BranchPriv::User,
            counter: None,
        };
        let s = Sample {
            record_id: rid(1234, 10, 11),
            stat: None,
            period: Some(250_000),
            cgroup: None,
            call_chain: Some(vec![CallChain::User(vec![0x401010, 0x401200])]),
            user_stack: None,
            data_addr: None,
            data_phys_addr: None,
            data_page_size: None,
            data_source: None,
            code_addr: Some((0x401010, true)),
            code_page_size: None,
            user_regs: None,
            intr_regs: None,
            raw: None,
            lbr: Some(Lbr {
                hw_index: Some(7),
                entries: vec![
                    entry(0x401020, 0x401000, true, 12, BranchType::Cond),
                    entry(0x401250, 0x401010, false, 3, BranchType::Call),
                    entry(0x401300, 0x401250, false, 0, BranchType::Ret),
                    entry(0x401400, 0x401500, false, 0, BranchType::Ind),
                ],
            }),
            aux: None,
            txn: None,
            weight: None,
        };
        let h = sample(Priv::User, &s);
        assert_eq!(
            (h.time_ns, h.pid, h.tid, h.cpu, h.period, h.ip, h.mode),
            (1234, 10, 11, 1, 250_000, 0x401010, CpuMode::User)
        );
        assert_eq!(h.callchain.len(), 2);
        assert_eq!(h.branch_hw_index, Some(7));
        let kinds: Vec<BranchKind> = h.branches.iter().map(|b| b.flags.kind).collect();
        assert_eq!(
            kinds,
            [
                BranchKind::Cond,
                BranchKind::Call,
                BranchKind::Ret,
                BranchKind::IndJump
            ]
        );
        assert_eq!((h.branches[0].from, h.branches[0].to), (0x401020, 0x401000));
        assert!(h.branches[0].flags.mispred && !h.branches[0].flags.predicted);
        assert_eq!(h.branches[0].flags.cycles, 12);
        // No branch stack, no call chain: empty, not missing fields.
        let bare = Sample {
            lbr: None,
            call_chain: None,
            ..s
        };
        let h = sample(Priv::Kernel, &bare);
        assert!(h.branches.is_empty() && h.callchain.is_empty());
        assert_eq!((h.mode, h.branch_hw_index), (CpuMode::Kernel, None));
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
