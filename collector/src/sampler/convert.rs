//! Conversion of kernel ring-buffer records into the recording model's [`Event`]s, by
//! the data crate's one decoder of perf's record layout (the perf.data reader's): samples
//! from their raw bytes ([`lbrprof_data::perfdata::decode_ring_sample`]), side-band
//! records (mappings, tasks, losses) too ([`lbrprof_data::perfdata::decode_ring_sideband`]),
//! each with the layout of its event's attribute. Pure apart from the build-id fallback,
//! which reads the mapped ELF file when the kernel did not put the build-id in the MMAP2
//! record.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use perf_event_open::sample::record::Parser;

use lbrprof_data::model::Event;
use lbrprof_data::perfdata::abi::PERF_SAMPLE_REGS_USER;
use lbrprof_data::perfdata::{
    RingLayout, RingSample, SampleLayout, decode_ring_sample, decode_ring_sideband,
};

/// What one ring-buffer record became.
#[derive(Debug, PartialEq, Eq)]
pub enum Converted {
    Event(Event),
    /// A record we do not keep (unthrottle, non-executable mmaps, unknown types).
    Skip,
    /// A record its attribute's layout does not describe.
    Malformed,
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

    /// The layout of the records of an event whose attribute `parser` describes.
    pub fn layout(&self, parser: &Parser) -> RingLayout {
        let sample = SampleLayout {
            sample_type: parser.sample_type,
            read_format: parser.read_format,
            branch_sample_type: parser.branch_sample_type,
            // The registers `--call-graph dwarf` asks for (`super::perf_opts`).
            regs_user: if parser.sample_type & PERF_SAMPLE_REGS_USER != 0 {
                lbrprof_data::dwarf::SAMPLE_REGS_USER
            } else {
                0
            },
            fixed_period: self.fixed_period.unwrap_or(0),
        };
        RingLayout::new(sample, parser.sample_id_all)
    }

    /// Decodes a `PERF_RECORD_SAMPLE` record as read from a ring buffer (`record`: its
    /// header and body) of an event of layout `layout` ([`Converter::layout`]).
    pub fn sample(&self, record: &[u8], layout: &RingLayout) -> Result<RingSample, &'static str> {
        decode_ring_sample(record, layout.sample)
    }

    /// Converts one side-band record as read from a ring buffer (`record`: its header
    /// and body) of an event of layout `layout`; a mapping whose record has no build-id
    /// gets its file's. (Samples: [`Converter::sample`].)
    pub fn sideband(&mut self, record: &[u8], layout: &RingLayout) -> Converted {
        match decode_ring_sideband(record, layout) {
            Ok(Some(Event::Mapping(mut m))) => {
                if m.build_id.as_ref().is_none_or(Vec::is_empty) {
                    m.build_id = self.build_id_of(&m.path);
                }
                Converted::Event(Event::Mapping(m))
            }
            Ok(Some(event)) => Converted::Event(event),
            Ok(None) => Converted::Skip,
            Err(_) => Converted::Malformed,
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
    use super::*;
    use lbrprof_data::model::AddressSpace;

    /// A sample record as the kernel writes it into a ring buffer: its header (type,
    /// `misc`, size) and the body's words, in this machine's byte order.
    fn ring_record(misc: u16, body: &[u64]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend(lbrprof_data::perfdata::abi::PERF_RECORD_SAMPLE.to_ne_bytes());
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
        use lbrprof_data::model::{BranchKind, CpuMode, Frame};
        use lbrprof_data::perfdata::abi::*;
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
            .sample(
                &record,
                &conv.layout(&parser(st, PERF_SAMPLE_BRANCH_HW_INDEX)),
            )
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
                conv.sample(
                    &record[..n],
                    &conv.layout(&parser(st, PERF_SAMPLE_BRANCH_HW_INDEX))
                )
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
        let conv = Converter::with_fixed_period(Some(4000));
        let r = conv.sample(&record, &conv.layout(&parser(st, 0))).unwrap();
        assert_eq!(
            (r.sample.period, r.sample.mode, r.sample.pid, r.sample.tid),
            (4000, CpuMode::Kernel, 1, 2)
        );
        assert!(r.sample.callchain.is_empty() && r.sample.branches.is_empty());
        assert_eq!(r.id, None);
    }

    #[test]
    fn dwarf_samples_keep_their_registers_and_stack_copy() {
        use lbrprof_data::perfdata::abi::*;
        let mask = lbrprof_data::dwarf::SAMPLE_REGS_USER;
        let st = PERF_SAMPLE_IP | PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER;
        // The registers in mask bit order, then the copy: size, bytes, dyn_size.
        let regs: Vec<u64> = (0..u64::from(mask.count_ones()))
            .map(|i| 0x1000 + i)
            .collect();
        let mut body = vec![0x401000, lbrprof_unwind::abi::PERF_SAMPLE_REGS_ABI_64];
        body.extend(&regs);
        body.extend([16, 0x1111, 0x2222, 8]);
        let r = Converter::new()
            .sample(
                &ring_record(PERF_RECORD_MISC_USER, &body),
                &Converter::new().layout(&parser(st, 0)),
            )
            .unwrap();
        let copy = r.stack_copy.expect("a stack copy");
        let want = lbrprof_unwind::Regs::from_perf(mask, &regs).unwrap();
        assert_eq!(copy.regs, want);
        // dyn_size: only the bytes the kernel filled.
        assert_eq!(copy.stack, 0x1111u64.to_ne_bytes());
        // A kernel thread (no user registers, abi 0): no copy.
        let body = [0x401000, 0, 0];
        let r = Converter::new()
            .sample(
                &ring_record(PERF_RECORD_MISC_USER, &body),
                &Converter::new().layout(&parser(st, 0)),
            )
            .unwrap();
        assert_eq!(r.stack_copy, None);
    }

    /// A side-band record as the kernel writes it into a ring buffer: header, body and
    /// the `sample_id` of an event sampling TID and TIME (`sample_id_all`).
    fn side_band(ty: u32, misc: u16, body: &[u8], (pid, tid, time): (u32, u32, u64)) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend(ty.to_ne_bytes());
        r.extend(misc.to_ne_bytes());
        r.extend(((8 + body.len() + 16) as u16).to_ne_bytes());
        r.extend(body);
        r.extend(pid.to_ne_bytes());
        r.extend(tid.to_ne_bytes());
        r.extend(time.to_ne_bytes());
        r
    }

    /// Words and 32-bit pairs in this machine's byte order, then a NUL-padded string.
    fn body(u32s: &[u32], u64s: &[u64], text: &str) -> Vec<u8> {
        let mut b: Vec<u8> = u32s.iter().flat_map(|w| w.to_ne_bytes()).collect();
        b.extend(u64s.iter().flat_map(|w| w.to_ne_bytes()));
        if !text.is_empty() {
            b.extend(text.as_bytes());
            b.resize((b.len() + 8) / 8 * 8, 0);
        }
        b
    }

    fn tid_time_layout(conv: &Converter) -> RingLayout {
        use lbrprof_data::perfdata::abi::*;
        conv.layout(&parser(
            PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_TIME,
            0,
        ))
    }

    #[test]
    fn side_band_records_convert() {
        use lbrprof_data::model::{Loss, LossKind, TaskEvent};
        use lbrprof_data::perfdata::abi::*;
        let mut conv = Converter::new();
        let layout = tid_time_layout(&conv);
        let mut convert = |r: Vec<u8>| conv.sideband(&r, &layout);
        let comm = side_band(
            PERF_RECORD_COMM,
            PERF_RECORD_MISC_USER | PERF_RECORD_MISC_COMM_EXEC,
            &body(&[10, 11], &[], "hot"),
            (10, 11, 5),
        );
        assert_eq!(
            convert(comm),
            Converted::Event(Event::Task(TaskEvent::Exec {
                time_ns: 5,
                pid: 10,
                tid: 11,
                comm: "hot".into()
            }))
        );
        // prctl(PR_SET_NAME) and thread names: a COMM without the exec flag.
        let rename = side_band(
            PERF_RECORD_COMM,
            PERF_RECORD_MISC_USER,
            &body(&[10, 12], &[], "worker"),
            (10, 12, 6),
        );
        assert_eq!(
            convert(rename),
            Converted::Event(Event::Task(TaskEvent::Comm {
                time_ns: 6,
                pid: 10,
                tid: 12,
                comm: "worker".into()
            }))
        );
        // pid, ppid, tid, ptid, time.
        let fork = side_band(
            PERF_RECORD_FORK,
            0,
            &body(&[10, 10, 12, 11], &[7], ""),
            (10, 12, 7),
        );
        assert_eq!(
            convert(fork),
            Converted::Event(Event::Task(TaskEvent::Fork {
                time_ns: 7,
                pid: 10,
                tid: 12,
                ppid: 10,
                ptid: 11
            }))
        );
        let exit = side_band(
            PERF_RECORD_EXIT,
            0,
            &body(&[10, 10, 12, 11], &[8], ""),
            (10, 12, 8),
        );
        assert_eq!(
            convert(exit),
            Converted::Event(Event::Task(TaskEvent::Exit {
                time_ns: 8,
                pid: 10,
                tid: 12,
            }))
        );
        // id, lost.
        let lost = side_band(PERF_RECORD_LOST, 0, &body(&[], &[0, 42], ""), (10, 11, 9));
        assert_eq!(
            convert(lost),
            Converted::Event(Event::Loss(Loss {
                time_ns: 9,
                kind: LossKind::RingBuffer,
                count: 42,
                tid: Some(11)
            }))
        );
        // PERF_RECORD_LOST_SAMPLES: lost.
        let lost = side_band(13, 0, &body(&[], &[5], ""), (10, 12, 10));
        assert_eq!(
            convert(lost),
            Converted::Event(Event::Loss(Loss {
                time_ns: 10,
                kind: LossKind::RingBuffer,
                count: 5,
                tid: Some(12)
            }))
        );
        // time, id, stream id.
        let throttle = side_band(
            PERF_RECORD_THROTTLE,
            0,
            &body(&[], &[3, 0, 0], ""),
            (10, 11, 3),
        );
        assert_eq!(
            convert(throttle),
            Converted::Event(Event::Loss(Loss {
                time_ns: 3,
                kind: LossKind::Throttled,
                count: 1,
                tid: Some(11)
            }))
        );
        // PERF_RECORD_UNTHROTTLE, and a type the model has no place for (SWITCH).
        let unthrottle = side_band(6, 0, &body(&[], &[4, 0, 0], ""), (10, 11, 4));
        assert_eq!(convert(unthrottle), Converted::Skip);
        assert_eq!(convert(side_band(14, 0, &[], (1, 1, 1))), Converted::Skip);
        // Shorter than its layout: malformed, never a panic.
        let comm = side_band(PERF_RECORD_COMM, 0, &body(&[10, 11], &[], "x"), (1, 1, 1));
        for n in [0, 4, 8, 12] {
            assert_eq!(
                convert(comm[..n].to_vec()),
                Converted::Malformed,
                "{n} bytes"
            );
        }
    }

    #[test]
    fn mmap_keeps_kernel_build_id_or_reads_the_file() {
        use lbrprof_data::perfdata::abi::*;
        let mut conv = Converter::new();
        let layout = tid_time_layout(&conv);
        let exe = std::env::current_exe().unwrap();
        // pid, tid, addr, len, pgoff, then the build-id (size, reserved, 20 bytes) or
        // the device and inode, then prot, flags and the path.
        let mmap2 = |misc: u16, id: Option<[u8; 20]>, prot: u32, path: &str| {
            let mut b = body(&[10, 10], &[0x5555_0000_0000, 0x1000, 0x2000], "");
            match id {
                Some(id) => {
                    b.extend([20, 0, 0, 0]);
                    b.extend(id);
                }
                None => b.extend([0; 24]),
            }
            b.extend(body(&[prot, 2], &[], path));
            side_band(PERF_RECORD_MMAP2, misc, &b, (10, 10, 1))
        };
        const EXEC: u32 = 5;
        let given = mmap2(
            PERF_RECORD_MISC_USER | PERF_RECORD_MISC_MMAP_BUILD_ID,
            Some([0xab; 20]),
            EXEC,
            "/nonexistent",
        );
        let Converted::Event(Event::Mapping(m)) = conv.sideband(&given, &layout) else {
            panic!("not a mapping")
        };
        assert_eq!(m.build_id, Some(vec![0xab; 20]));
        assert_eq!(
            (m.start, m.len, m.pgoff, m.pid, m.time_ns, m.path.as_str()),
            (0x5555_0000_0000, 0x1000, 0x2000, 10, 1, "/nonexistent")
        );
        assert_eq!(m.space, AddressSpace::HostUser);
        // Data mappings are not kept.
        let data = mmap2(PERF_RECORD_MISC_USER, None, 3, "/nonexistent");
        assert_eq!(conv.sideband(&data, &layout), Converted::Skip);

        // No build-id from the kernel: read it from the ELF file (the test binary has one
        // when linked with --build-id, which rustc does by default on Linux).
        let own = mmap2(PERF_RECORD_MISC_USER, None, EXEC, exe.to_str().unwrap());
        let Converted::Event(Event::Mapping(m)) = conv.sideband(&own, &layout) else {
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
        assert!(expected.is_some());
        assert_eq!(m.build_id, expected);
        let vdso = mmap2(PERF_RECORD_MISC_KERNEL, None, EXEC, "[vdso]");
        let Converted::Event(Event::Mapping(m)) = conv.sideband(&vdso, &layout) else {
            panic!("not a mapping")
        };
        assert_eq!(m.build_id, None);
        assert_eq!(m.space, AddressSpace::HostKernel);
    }
}
