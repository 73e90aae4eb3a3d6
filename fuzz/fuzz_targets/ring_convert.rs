#![no_main]
//! The live sampler's conversion of kernel ring-buffer records into recording events
//! (`sampler::convert`): samples with any call chain (every context marker, any lengths)
//! and any branch stack (every branch type and flag) convert without a panic, and what
//! comes out keeps the input's sizes (no frame or branch invented or lost but the
//! context markers).

use libfuzzer_sys::fuzz_target;
use lbrprof_collector::model::Event;
use lbrprof_collector::sampler::convert::{Converted, Converter};
use perf_event_open::sample::record::sample::{
    BranchPriv, BranchSpec, BranchType, CallChain, Entry, Lbr, Sample,
};
use perf_event_open::sample::record::{Priv, Record, RecordId, Task};

/// Reads little-endian words from the input, then zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | (u64::from(self.u8()) << (8 * i)))
    }
    fn words(&mut self) -> Vec<u64> {
        let n = usize::from(self.u8() % 40);
        (0..n).map(|_| self.u64()).collect()
    }
}

const TYPES: [BranchType; 23] = [
    BranchType::Unknown,
    BranchType::Cond,
    BranchType::Uncond,
    BranchType::Ind,
    BranchType::Call,
    BranchType::IndCall,
    BranchType::Ret,
    BranchType::Syscall,
    BranchType::Sysret,
    BranchType::CondCall,
    BranchType::CondRet,
    BranchType::Eret,
    BranchType::Irq,
    BranchType::SysErr,
    BranchType::NoTx,
    BranchType::DataFault,
    BranchType::AlignFault,
    BranchType::InstrFault,
    BranchType::Arch1,
    BranchType::Arch2,
    BranchType::Arch3,
    BranchType::Arch4,
    BranchType::Arch5,
];

fn sample(b: &mut Bytes<'_>) -> Sample {
    let mut chains = Vec::new();
    for _ in 0..b.u8() % 6 {
        chains.push(match b.u8() % 8 {
            0 => CallChain::User(b.words()),
            1 => CallChain::UserDeferred { cookie: b.u64() },
            2 => CallChain::Kernel(b.words()),
            3 => CallChain::Hv(b.words()),
            4 => CallChain::Guest(b.words()),
            5 => CallChain::GuestUser(b.words()),
            6 => CallChain::GuestKernel(b.words()),
            _ => CallChain::Unknown(b.words()),
        });
    }
    let lbr = (b.u8() & 1 == 1).then(|| Lbr {
        hw_index: (b.u8() & 1 == 1).then(|| b.u64()),
        entries: (0..b.u8() % 40)
            .map(|_| {
                let flags = b.u8();
                Entry {
                    from: b.u64(),
                    to: b.u64(),
                    mis: flags & 1 != 0,
                    pred: flags & 2 != 0,
                    in_tx: flags & 4 != 0,
                    abort: flags & 8 != 0,
                    cycles: u16::from(b.u8()) << 4,
                    branch_type: TYPES[usize::from(b.u8()) % TYPES.len()],
                    branch_spec: [BranchSpec::Na, BranchSpec::Wrong, BranchSpec::Correct]
                        [usize::from(b.u8() % 3)],
                    branch_priv: [
                        BranchPriv::Unknown,
                        BranchPriv::User,
                        BranchPriv::Kernel,
                        BranchPriv::Hv,
                    ][usize::from(b.u8() % 4)],
                    counter: (flags & 16 != 0).then(|| b.u64()),
                }
            })
            .collect(),
    });
    Sample {
        record_id: RecordId {
            id: None,
            stream_id: None,
            cpu: (b.u8() & 1 == 1).then(|| b.u8().into()),
            task: (b.u8() & 1 == 1).then(|| Task {
                pid: b.u64() as u32,
                tid: b.u64() as u32,
            }),
            time: (b.u8() & 1 == 1).then(|| b.u64()),
        },
        stat: None,
        period: (b.u8() & 1 == 1).then(|| b.u64()),
        cgroup: None,
        call_chain: (!chains.is_empty() || b.u8() & 1 == 1).then_some(chains),
        user_stack: None,
        data_addr: None,
        data_phys_addr: None,
        data_page_size: None,
        data_source: None,
        code_addr: (b.u8() & 1 == 1).then(|| (b.u64(), b.u8() & 1 == 1)),
        code_page_size: None,
        user_regs: None,
        intr_regs: None,
        raw: None,
        lbr,
        aux: None,
        txn: None,
        weight: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut converter = Converter::new();
    while !b.0.is_empty() {
        let mode = [
            Priv::User,
            Priv::Kernel,
            Priv::Hv,
            Priv::GuestUser,
            Priv::GuestKernel,
            Priv::Unknown,
        ][usize::from(b.u8() % 6)];
        let s = sample(&mut b);
        let branches = s.lbr.as_ref().map_or(0, |l| l.entries.len());
        if let Converted::Event(Event::Sample(h)) = converter.convert(mode, Record::Sample(Box::new(s)))
        {
            assert_eq!(h.branches.len(), branches, "a branch stack entry lost or invented");
        }
    }
});
