//! The tracer against a fake guest: code bytes in memory plus the path the "CPU" takes
//! through them. Running to a breakpoint advances along the path until a breakpoint
//! address comes up; a single-step advances one instruction; an injected NMI splices the
//! handler's path in. That is all the hardware behaviour the tracer relies on.

use super::*;
use crate::pmu::msr::*;
use crate::pmu::vpmu::{PmuConfig, SnapshotContext};
use crate::snapshot::{LbrEntry, SnapshotReason};

const IDT: u64 = 0x3000;
const NMI_HANDLER: u64 = 0x2000;
const LSTAR: u64 = 0x5000;

struct Fake {
    mem: Vec<(u64, Vec<u8>)>,
    path: Vec<(u64, u8)>,
    pos: usize,
    nmi_path: Vec<(u64, u8)>,
    /// Path positions at which NMIs were injected (= instructions executed before).
    nmis_at: Vec<usize>,
    rcx: u64,
    debug_exits: u64,
}

enum Ran {
    Debug,
    Free,
    End,
}

impl Fake {
    fn new(code: Vec<(u64, Vec<u8>)>, path: Vec<(u64, u8)>) -> Fake {
        let mut gate = vec![0u8; 16];
        gate[0..2].copy_from_slice(&(NMI_HANDLER as u16).to_le_bytes());
        gate[2] = 0x08;
        gate[5] = 0x8e;
        gate[6..8].copy_from_slice(&((NMI_HANDLER >> 16) as u16).to_le_bytes());
        let mut mem = code;
        mem.push((IDT + 2 * 16, gate));
        mem.push((NMI_HANDLER, vec![0x48, 0xcf])); // iretq
        // Readable (INT3-filled) bytes after each piece, as real guest pages have.
        for (_, bytes) in &mut mem {
            bytes.resize(bytes.len() + 32, 0xcc);
        }
        Fake {
            mem,
            path,
            pos: 0,
            nmi_path: vec![(NMI_HANDLER, 0)],
            nmis_at: vec![],
            rcx: 0,
            debug_exits: 0,
        }
    }

    /// Applies `r` and runs to the next debug stop.
    fn run(&mut self, r: &Resume) -> Ran {
        if r.inject_nmi {
            self.nmis_at.push(self.pos);
            let handler = self.nmi_path.clone();
            self.path.splice(self.pos..self.pos, handler);
            if r.breakpoints.contains(&self.path[self.pos].0) {
                self.debug_exits += 1;
                return Ran::Debug;
            }
        }
        if r.is_free() {
            return Ran::Free;
        }
        loop {
            self.pos += 1;
            if self.pos >= self.path.len() {
                return Ran::End;
            }
            if r.single_step || r.breakpoints.contains(&self.path[self.pos].0) {
                self.debug_exits += 1;
                return Ran::Debug;
            }
        }
    }

    /// Runs free for up to `n` instructions; returns how many ran.
    fn free_run(&mut self, n: u64) -> u64 {
        let left = (self.path.len() - 1 - self.pos) as u64;
        let n = n.min(left);
        self.pos += n as usize;
        n
    }
}

impl GuestAccess for Fake {
    fn cpu(&mut self) -> Result<GuestCpu, GuestAccessError> {
        let (rip, cpl) = self.path[self.pos.min(self.path.len() - 1)];
        Ok(GuestCpu {
            rip,
            rsp: 0,
            rbp: 0,
            rcx: self.rcx,
            cpl,
            code_size: CodeSize::Bits64,
            idt_base: IDT,
            idt_limit: 0xFFF,
            cr3: 0x9000,
        })
    }

    fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        for (base, bytes) in &self.mem {
            if gva >= *base && gva + buf.len() as u64 <= base + bytes.len() as u64 {
                let off = (gva - base) as usize;
                buf.copy_from_slice(&bytes[off..off + buf.len()]);
                return Ok(());
            }
        }
        Err(GuestAccessError::Unmapped { gva })
    }

    fn read_msr(&mut self, index: u32) -> Result<u64, GuestAccessError> {
        match index {
            IA32_LSTAR => Ok(LSTAR),
            _ => Err(GuestAccessError::Unavailable { what: "MSR" }),
        }
    }
}

/// Drives tracer and fake to the end of the path.
fn drive(t: &mut Tracer, g: &mut Fake, pmu: &mut VirtualPmu) {
    let mut r = t.start(g, pmu).unwrap();
    for _ in 0..1_000_000 {
        match g.run(&r) {
            Ran::End => return,
            Ran::Debug => r = t.on_debug_exit(g, pmu).unwrap(),
            Ran::Free => {
                let Some(d) = r.deadline_cycles else { return };
                let ran = g.free_run(d);
                if ran == 0 {
                    return;
                }
                let cpl = g.cpu().unwrap().cpl;
                r = t.on_free_run(g, pmu, ran, cpl).unwrap();
            }
        }
    }
    panic!("the tracer did not reach the end of the path");
}

/// Program A (user mode, at 0x1000):
/// ```text
/// 1000 mov ecx, ITERS   1005 xor eax, eax
/// 1007 add eax, ecx     1009 dec ecx       100b jnz 1007
/// 100d call 1020        1012 nop           1013 jmp 1013
/// 1020 nop              1021 ret
/// ```
/// The path runs the loop ITERS times, the call and return, then `spins` times the jmp.
fn program_a(iters: u32, spins: usize) -> Fake {
    let mut code = vec![0xb9];
    code.extend_from_slice(&iters.to_le_bytes());
    code.extend_from_slice(&[0x31, 0xc0, 0x01, 0xc8, 0xff, 0xc9, 0x75, 0xfa]);
    code.extend_from_slice(&[0xe8, 0x0e, 0, 0, 0, 0x90, 0xeb, 0xfe]);
    code.resize(0x20, 0xcc);
    code.extend_from_slice(&[0x90, 0xc3]);
    let mut path = vec![0x1000, 0x1005];
    for _ in 0..iters {
        path.extend_from_slice(&[0x1007, 0x1009, 0x100b]);
    }
    path.extend_from_slice(&[0x100d, 0x1020, 0x1021, 0x1012]);
    path.extend(std::iter::repeat_n(0x1013, spins));
    Fake::new(
        vec![(0x1000, code)],
        path.into_iter().map(|a| (a, 3)).collect(),
    )
}

fn counting_pmu(version: u32, depth: u32) -> VirtualPmu {
    let mut p = VirtualPmu::new(PmuConfig::new(version, depth).unwrap());
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    p.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | 0xC0)
        .unwrap();
    p.wrmsr(IA32_PERFEVTSEL0 + 1, EVTSEL_EN | EVTSEL_USR | 0xC4)
        .unwrap();
    p
}

fn lbr(p: &VirtualPmu) -> Vec<(u64, u64)> {
    p.lbr_newest_first()
        .into_iter()
        .filter(|e| *e != LbrEntry::default())
        .map(|e| (e.from, e.to))
        .collect()
}

#[test]
fn exact_mode_counts_every_instruction_and_branch() {
    let (iters, spins) = (5, 3);
    let mut g = program_a(iters, spins);
    let len = g.path.len() as u64;
    let mut pmu = counting_pmu(4, 8);
    let mut t = Tracer::new(TraceMode::Exact);
    drive(&mut t, &mut g, &mut pmu);
    // The last stop is on the final jmp; everything before it retired.
    let branches = u64::from(iters) + 2 + (spins as u64 - 1);
    assert_eq!(pmu.rdmsr(IA32_PMC0).unwrap(), len - 1);
    assert_eq!(pmu.rdmsr(IA32_PMC0 + 1).unwrap(), branches);
    assert_eq!(t.stats().instructions, len - 1);
    assert_eq!(t.stats().branches, branches);
    assert_eq!(t.stats().unexpected, 0);
    assert!(
        t.stats().exits <= 2 * branches,
        "{} exits for {branches} branches",
        t.stats().exits
    );
    let mut want = vec![(0x1013, 0x1013); spins - 1];
    want.push((0x1021, 0x1012));
    want.push((0x100d, 0x1020));
    want.extend(std::iter::repeat_n((0x100b, 0x1007), iters as usize - 1));
    want.truncate(8);
    assert_eq!(lbr(&pmu), want);
}

#[test]
fn exact_mode_is_deterministic() {
    let run = || {
        let mut g = program_a(40, 4);
        let mut pmu = counting_pmu(4, 32);
        let mut t = Tracer::new(TraceMode::Exact);
        drive(&mut t, &mut g, &mut pmu);
        pmu.snapshot(SnapshotContext::default())
    };
    assert_eq!(run(), run());
}

#[test]
fn exact_mode_pmi_lands_on_the_overflowing_instruction() {
    for period in [1u64, 2, 7, 10, 16, 17] {
        let mut g = program_a(10, 2);
        let mut pmu = counting_pmu(4, 8);
        pmu.wrmsr(
            IA32_DEBUGCTL,
            DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI,
        )
        .unwrap();
        pmu.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | EVTSEL_INT | 0xC0)
            .unwrap();
        pmu.wrmsr(IA32_A_PMC0, (1 << 48) - period).unwrap();
        let mut t = Tracer::new(TraceMode::Exact);
        drive(&mut t, &mut g, &mut pmu);
        assert_eq!(g.nmis_at, vec![period as usize], "period {period}");
        let status = pmu.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap();
        assert_eq!(status, 1 | GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ);
        // The frozen LBR holds the taken branches among the first `period` instructions:
        // the loop's jnz is instruction 5, 8, 11, ...
        let taken_before = (period.saturating_sub(2) / 3) as usize;
        assert_eq!(lbr(&pmu).len(), taken_before.min(8), "period {period}");
        // The NMI, the handler's IRETQ and every later taken branch were lost to the
        // freeze, and counted.
        let taken_total = (10 - 1) + 2 + (2 - 1);
        assert_eq!(
            pmu.stats().frozen_branches,
            2 + taken_total - taken_before as u64,
            "period {period}"
        );
        assert_eq!(
            pmu.snapshot(SnapshotContext::default()).reason,
            SnapshotReason::Pmi { counter: 0 }
        );
    }
}

#[test]
fn sampled_mode_records_the_last_branches_before_the_overflow() {
    let mut g = program_a(200, 2);
    let mut pmu = VirtualPmu::new(PmuConfig::new(4, 8).unwrap());
    pmu.wrmsr(
        IA32_DEBUGCTL,
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI,
    )
    .unwrap();
    // Core cycles in user mode with a PMI, 300 cycles from overflow.
    pmu.wrmsr(IA32_FIXED_CTR_CTRL, (FIXED_CTRL_USR | FIXED_CTRL_PMI) << 4)
        .unwrap();
    pmu.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 33).unwrap();
    pmu.wrmsr(IA32_FIXED_CTR0 + 1, (1 << 48) - 300).unwrap();
    let mut t = Tracer::new(TraceMode::Sampled { window_branches: 8 });
    let r = t.start(&mut g, &mut pmu).unwrap();
    assert!(r.is_free());
    assert_eq!(r.deadline_cycles, Some(300));
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(t.stats().windows, 1);
    assert_eq!(g.nmis_at.len(), 1);
    // The guest ran free for 299 instructions, then the window traced 8 taken jnz.
    let at = g.nmis_at[0];
    assert!(at > 299 && at <= 299 + 8 * 3 + 3, "NMI at {at}");
    assert_eq!(lbr(&pmu), vec![(0x100b, 0x1007); 8]);
    let status = pmu.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap();
    assert_eq!(
        status,
        (1 << 33) | GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ
    );
    assert_eq!(pmu.rdmsr(IA32_FIXED_CTR0 + 1).unwrap(), 0);
    // Few exits: only the window was traced.
    assert!(t.stats().exits <= 2 * 8 + 2, "{} exits", t.stats().exits);
}

#[test]
fn sampled_mode_without_an_armed_counter_runs_free() {
    let mut g = program_a(50, 2);
    let mut pmu = VirtualPmu::new(PmuConfig::default());
    let mut t = Tracer::new(TraceMode::Sampled { window_branches: 8 });
    let r = t.start(&mut g, &mut pmu).unwrap();
    assert_eq!(r, Resume::default());
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(t.stats().exits, 0);
}

#[test]
fn sync_accounts_up_to_an_msr_exit_and_replan_follows_new_counters() {
    let mut g = program_a(3, 2);
    let mut pmu = counting_pmu(4, 8);
    let mut t = Tracer::new(TraceMode::Exact);
    let r = t.start(&mut g, &mut pmu).unwrap();
    assert_eq!(
        r.breakpoints,
        vec![0x100b],
        "breakpoint on the first branch"
    );
    // The guest stops for an MSR access at 0x1007 (2 instructions retired).
    g.pos = 2;
    t.sync(&mut g, &mut pmu).unwrap();
    assert_eq!(pmu.rdmsr(IA32_PMC0).unwrap(), 2);
    // It programs PMC0 to overflow on the next instruction, with a PMI.
    pmu.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | EVTSEL_INT | 0xC0)
        .unwrap();
    pmu.wrmsr(IA32_A_PMC0, (1 << 48) - 1).unwrap();
    let r = t.replan(&mut g, &mut pmu).unwrap();
    assert_eq!(
        r.breakpoints,
        vec![0x1009],
        "stop right after the overflowing add"
    );
    assert!(matches!(g.run(&r), Ran::Debug));
    let r = t.on_debug_exit(&mut g, &mut pmu).unwrap();
    assert!(r.inject_nmi);
    assert_eq!(r.breakpoints, vec![NMI_HANDLER]);
    assert_eq!(pmu.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap(), 1);
}

#[test]
fn syscall_and_sysret_are_far_branches_with_target_breakpoints() {
    // 1000: syscall; 1002: jmp 1002 (user).  5000: sysretq (kernel).
    let code = vec![
        (0x1000, vec![0x0f, 0x05, 0xeb, 0xfe]),
        (LSTAR, vec![0x48, 0x0f, 0x07]),
    ];
    let path = vec![(0x1000, 3), (LSTAR, 0), (0x1002, 3), (0x1002, 3)];
    let mut g = Fake::new(code, path);
    g.rcx = 0x1002;
    let mut pmu = counting_pmu(4, 8);
    let mut t = Tracer::new(TraceMode::Exact);
    let r = t.start(&mut g, &mut pmu).unwrap();
    assert!(r.single_step);
    assert_eq!(r.breakpoints, vec![LSTAR]);
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(
        lbr(&pmu),
        vec![(0x1002, 0x1002), (LSTAR, 0x1002), (0x1000, LSTAR)]
    );
    // With CPL_EQ_0 (user-only), the SYSCALL, which ends in ring 0, is filtered.
    let mut g = Fake::new(
        vec![
            (0x1000, vec![0x0f, 0x05, 0xeb, 0xfe]),
            (LSTAR, vec![0x48, 0x0f, 0x07]),
        ],
        vec![(0x1000, 3), (LSTAR, 0), (0x1002, 3), (0x1002, 3)],
    );
    g.rcx = 0x1002;
    let mut pmu = counting_pmu(4, 8);
    pmu.wrmsr(MSR_LBR_SELECT, LBR_SELECT_CPL_EQ_0).unwrap();
    let mut t = Tracer::new(TraceMode::Exact);
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(lbr(&pmu), vec![(0x1002, 0x1002), (LSTAR, 0x1002)]);
    assert_eq!(
        pmu.rdmsr(IA32_PMC0 + 1).unwrap(),
        2,
        "SYSCALL and JMP retire in ring 3; SYSRET (ring 0) is not counted with USR only"
    );
}

#[test]
fn a_fault_is_recorded_as_an_exception() {
    // 1000: ud2 → #UD handler at 0x6000 (ring 0): jmp 6000.
    let code = vec![(0x1000, vec![0x0f, 0x0b]), (0x6000, vec![0xeb, 0xfe])];
    let path = vec![(0x1000, 3), (0x6000, 0), (0x6000, 0)];
    let mut g = Fake::new(code, path);
    let mut pmu = counting_pmu(4, 8);
    pmu.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | EVTSEL_OS | 0xC0)
        .unwrap();
    let mut t = Tracer::new(TraceMode::Exact);
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(lbr(&pmu), vec![(0x6000, 0x6000), (0x1000, 0x6000)]);
    assert_eq!(
        pmu.rdmsr(IA32_PMC0).unwrap(),
        1,
        "the faulting ud2 does not retire"
    );
}

#[test]
fn long_straight_line_code_is_split_into_blocks() {
    // 1200 nops then jmp self: more than one block's worth of instructions.
    let mut code = vec![0x90u8; 1200];
    code.extend_from_slice(&[0xeb, 0xfe]);
    let mut path: Vec<(u64, u8)> = (0..1200).map(|i| (0x1000 + i, 3)).collect();
    path.push((0x1000 + 1200, 3));
    path.push((0x1000 + 1200, 3));
    let mut g = Fake::new(vec![(0x1000, code)], path);
    let mut pmu = counting_pmu(4, 8);
    let mut t = Tracer::new(TraceMode::Exact);
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(pmu.rdmsr(IA32_PMC0).unwrap(), 1201);
    assert_eq!(t.stats().blocks_decoded, 4);
    assert_eq!(t.stats().unexpected, 0);
}

#[test]
fn frame_pointer_walk_follows_the_chain_and_stops_safely() {
    // Frames at 0x8000 -> 0x8040 -> 0x8080 -> 0 (end), return addresses 0x1111, 0x2222, 0x3333.
    let mut stack = vec![0u8; 0xC0];
    let mut put = |off: usize, v: u64| stack[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put(0x00, 0x8040);
    put(0x08, 0x1111);
    put(0x40, 0x8080);
    put(0x48, 0x2222);
    put(0x80, 0);
    put(0x88, 0x3333);
    let mut g = Fake::new(vec![(0x8000, stack.clone())], vec![(0x1000, 3)]);
    assert_eq!(
        walk_frame_pointers(&mut g, 0x8000, 16),
        vec![0x1111, 0x2222, 0x3333]
    );
    assert_eq!(walk_frame_pointers(&mut g, 0x8000, 2), vec![0x1111, 0x2222]);
    assert_eq!(walk_frame_pointers(&mut g, 0, 16), Vec::<u64>::new());
    assert_eq!(walk_frame_pointers(&mut g, 0x9_0000, 16), Vec::<u64>::new());
    // A loop in the chain (frame pointing at itself) ends the walk.
    let mut looped = stack;
    looped[0..8].copy_from_slice(&0x8000u64.to_le_bytes());
    let mut g = Fake::new(vec![(0x8000, looped)], vec![(0x1000, 3)]);
    assert_eq!(walk_frame_pointers(&mut g, 0x8000, 16), vec![0x1111]);
}
