//! The tracer against a fake guest: code bytes in memory plus the path the "CPU" takes
//! through them. Running to a breakpoint advances along the path until a breakpoint
//! address comes up; a single-step advances one instruction; an injected NMI splices the
//! handler's path in. That is all the hardware behaviour the tracer relies on.

use super::*;
use crate::pmu::fake_guest::*;
use crate::pmu::msr::*;
use crate::pmu::vpmu::{PmuConfig, SnapshotContext};
use crate::snapshot::{LbrEntry, SnapshotReason};

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
    assert_eq!(t.stats().predicted, 1, "the direct call needs no step");
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
    // The window's first entry follows 299 untraced cycles: its count is unknown (0), not
    // 299; the others count the loop's 3 instructions.
    let cycles: Vec<u64> = pmu
        .lbr_newest_first()
        .iter()
        .map(|e| e.info & LBR_INFO_CYC_CNT)
        .collect();
    assert_eq!(cycles, [3, 3, 3, 3, 3, 3, 3, 0]);
    let status = pmu.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap();
    assert_eq!(
        status,
        (1 << 33) | GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ
    );
    assert_eq!(pmu.rdmsr(IA32_FIXED_CTR0 + 1).unwrap(), 0);
    // Few exits: only the window was traced.
    assert!(t.stats().exits <= 2 * 8 + 2, "{} exits", t.stats().exits);
}

/// A window cut short (its episode ran too long): the counter overflows at once and the
/// PMI comes with the branches recorded so far, fewer than the window's, all real.
#[test]
fn a_cut_window_overflows_at_once_with_the_branches_it_has() {
    let mut g = program_a(200, 2);
    let mut pmu = VirtualPmu::new(PmuConfig::new(4, 8).unwrap());
    pmu.wrmsr(
        IA32_DEBUGCTL,
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI,
    )
    .unwrap();
    pmu.wrmsr(IA32_FIXED_CTR_CTRL, (FIXED_CTRL_USR | FIXED_CTRL_PMI) << 4)
        .unwrap();
    pmu.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 33).unwrap();
    pmu.wrmsr(IA32_FIXED_CTR0 + 1, (1 << 48) - 300).unwrap();
    let mut t = Tracer::new(TraceMode::Sampled { window_branches: 8 });
    let r = t.start(&mut g, &mut pmu).unwrap();
    assert!(
        t.cut_window(&mut g, &mut pmu).unwrap().is_none(),
        "no window open yet: nothing to cut"
    );
    let ran = g.free_run(r.deadline_cycles.unwrap());
    let cpl = g.cpu().unwrap().cpl;
    let mut r = t.on_free_run(&mut g, &mut pmu, ran, cpl).unwrap();
    assert!(t.tracing(), "the window opened");
    while lbr(&pmu).len() < 3 {
        assert!(matches!(g.run(&r), Ran::Debug));
        r = t.on_debug_exit(&mut g, &mut pmu).unwrap();
    }
    let recorded = lbr(&pmu);
    let cut = t
        .cut_window(&mut g, &mut pmu)
        .unwrap()
        .expect("an open window");
    assert!(cut.pmi && cut.inject_nmi, "{cut:?}");
    assert!(!t.tracing());
    assert_eq!(t.stats().windows_cut, 1);
    assert_eq!(lbr(&pmu), recorded, "the branches so far, no more");
    assert!(recorded.len() < 8);
    assert!(recorded.iter().all(|&e| e == (0x100b, 0x1007)));
    let status = pmu.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap();
    assert_ne!(status & (1 << 33), 0, "the counter overflowed: {status:#x}");
    assert_eq!(pmu.rdmsr(IA32_FIXED_CTR0 + 1).unwrap(), 0);
    assert!(t.cut_window(&mut g, &mut pmu).unwrap().is_none());
}

/// Empty windows (benchmarking): the overflow fires at the deadline without a single
/// debug stop, and the LBR gets nothing.
#[test]
fn empty_windows_fire_the_overflow_without_tracing() {
    let mut g = program_a(200, 2);
    let mut pmu = VirtualPmu::new(PmuConfig::new(4, 8).unwrap());
    pmu.wrmsr(
        IA32_DEBUGCTL,
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI,
    )
    .unwrap();
    pmu.wrmsr(IA32_FIXED_CTR_CTRL, (FIXED_CTRL_USR | FIXED_CTRL_PMI) << 4)
        .unwrap();
    pmu.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 33).unwrap();
    pmu.wrmsr(IA32_FIXED_CTR0 + 1, (1 << 48) - 300).unwrap();
    let mut t = Tracer::new(TraceMode::Sampled { window_branches: 8 });
    t.set_empty_windows(true);
    t.start(&mut g, &mut pmu).unwrap();
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(t.stats().windows, 1);
    assert_eq!(g.nmis_at.len(), 1);
    assert_eq!(t.stats().exits, 0);
    assert!(lbr(&pmu).is_empty());
    assert_eq!(pmu.rdmsr(IA32_FIXED_CTR0 + 1).unwrap(), 0);
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
    assert_eq!(r.stop_cpl, 0, "SYSCALL stops next in ring 0");
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

/// An interrupt gate for `handler` (ring 0, present, 64-bit interrupt gate).
fn gate(handler: u64) -> Vec<u8> {
    let mut g = vec![0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2] = 0x08;
    g[5] = 0x8e;
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g
}

#[test]
fn stepping_a_ud2_also_breaks_at_the_ud_handler() {
    // The #UD clears TF on its way into the handler, so a plain step would only stop after
    // the handler's IRET (found by builtin:lbrcheck): the step must carry a breakpoint on
    // the IDT's #UD gate and expect to stop in ring 0.
    let code = vec![(0x1000, vec![0x0f, 0x0b]), (0x6000, vec![0xeb, 0xfe])];
    let mut g = Fake::new(code, vec![(0x1000, 3), (0x6000, 0), (0x6000, 0)]);
    g.mem.push((IDT + 6 * 16, gate(0x6000)));
    let mut pmu = counting_pmu(4, 8);
    let mut t = Tracer::new(TraceMode::Exact);
    let r = t.start(&mut g, &mut pmu).unwrap();
    assert!(r.single_step);
    assert_eq!(r.breakpoints, vec![0x6000]);
    assert_eq!(r.stop_cpl, 0, "the #UD handler runs in ring 0");
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(lbr(&pmu), vec![(0x6000, 0x6000), (0x1000, 0x6000)]);
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
    // A return address in the first page is no code (a register's small integer in a
    // function built without frame pointers): the walk ends before it.
    let mut small = stack.clone();
    small[0x48..0x50].copy_from_slice(&7u64.to_le_bytes());
    let mut g = Fake::new(vec![(0x8000, small)], vec![(0x1000, 3)]);
    assert_eq!(walk_frame_pointers(&mut g, 0x8000, 16), vec![0x1111]);
    // A loop in the chain (frame pointing at itself) ends the walk.
    let mut looped = stack;
    looped[0..8].copy_from_slice(&0x8000u64.to_le_bytes());
    let mut g = Fake::new(vec![(0x8000, looped)], vec![(0x1000, 3)]);
    assert_eq!(walk_frame_pointers(&mut g, 0x8000, 16), vec![0x1111]);
}

#[test]
fn jcc_outcomes_are_predicted_from_rflags() {
    // 1000: xor eax,eax; 1002: je 1010; 1004: nop ... 1010: nop; 1011: jmp 1011.
    let mut code = vec![0x31, 0xc0, 0x74, 0x0c];
    code.resize(0x10, 0x90);
    code.extend_from_slice(&[0x90, 0xeb, 0xfe]);
    let path = vec![
        (0x1000, 3),
        (0x1002, 3),
        (0x1010, 3),
        (0x1011, 3),
        (0x1011, 3),
    ];
    let mut g = Fake::new(vec![(0x1000, code)], path);
    g.rflags = Some(1 << 6); // ZF: the je is taken
    let mut pmu = counting_pmu(4, 8);
    let mut t = Tracer::new(TraceMode::Exact);
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(t.stats().predicted, 1);
    assert_eq!(pmu.rdmsr(IA32_PMC0).unwrap(), 4);
    assert_eq!(pmu.rdmsr(IA32_PMC0 + 1).unwrap(), 2);
    assert_eq!(lbr(&pmu), vec![(0x1011, 0x1011), (0x1002, 0x1010)]);
    // bp at the je, bp at the jmp (after the predicted je), one step of the jmp.
    assert_eq!(t.stats().exits, 3);
}

#[test]
fn a_branch_that_may_raise_a_pmi_is_stepped_not_predicted() {
    let mut code = vec![0x31, 0xc0, 0x74, 0x0c];
    code.resize(0x10, 0x90);
    code.extend_from_slice(&[0x90, 0xeb, 0xfe]);
    let path = vec![
        (0x1000, 3),
        (0x1002, 3),
        (0x1010, 3),
        (0x1011, 3),
        (0x1011, 3),
    ];
    let mut g = Fake::new(vec![(0x1000, code)], path);
    g.rflags = Some(1 << 6);
    let mut pmu = counting_pmu(4, 8);
    // BR_INST_RETIRED overflows on the first branch, with a PMI.
    pmu.wrmsr(
        IA32_PERFEVTSEL0 + 1,
        EVTSEL_EN | EVTSEL_USR | EVTSEL_INT | 0xC4,
    )
    .unwrap();
    pmu.wrmsr(IA32_A_PMC0 + 1, (1 << 48) - 1).unwrap();
    let mut t = Tracer::new(TraceMode::Exact);
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(t.stats().predicted, 0);
    // The NMI came right after the je retired: 2 instructions in.
    assert_eq!(g.nmis_at, vec![2]);
}

#[test]
fn without_following_the_nmi_handler_tracing_continues_in_the_interrupted_code() {
    let mut g = program_a(10, 2);
    let mut pmu = counting_pmu(4, 8);
    pmu.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | EVTSEL_INT | 0xC0)
        .unwrap();
    pmu.wrmsr(IA32_A_PMC0, (1 << 48) - 10).unwrap();
    let mut t = Tracer::new(TraceMode::Exact);
    t.set_follow_nmi_handler(false);
    drive(&mut t, &mut g, &mut pmu);
    assert_eq!(g.nmis_at, vec![10]);
    // Every user instruction still counted (the handler's are not: it runs in ring 0
    // untraced), and no unexpected stop.
    let user_len = g.path.iter().filter(|p| p.1 == 3).count() as u64;
    assert_eq!(t.stats().instructions, user_len - 1);
    assert_eq!(t.stats().unexpected, 0);
}

#[test]
fn exact_mode_not_following_the_handler_waits_at_the_interrupted_instruction() {
    // Running free after the NMI would leave the rest of the run untraced whenever the
    // guest makes no exits of its own; the tracer must break where the handler returns,
    // and the handler's own MSR exits must not re-plan into it.
    let mut g = program_a(10, 2);
    let mut pmu = counting_pmu(4, 8);
    pmu.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | EVTSEL_INT | 0xC0)
        .unwrap();
    pmu.wrmsr(IA32_A_PMC0, (1 << 48) - 10).unwrap();
    let mut t = Tracer::new(TraceMode::Exact);
    t.set_follow_nmi_handler(false);
    let mut r = t.start(&mut g, &mut pmu).unwrap();
    while !r.inject_nmi {
        assert!(matches!(g.run(&r), Ran::Debug), "no PMI before the end");
        r = t.on_debug_exit(&mut g, &mut pmu).unwrap();
    }
    let at = g.cpu().unwrap().rip;
    assert!(!r.is_free(), "{r:?}");
    assert_eq!(r.breakpoints, vec![at]);
    assert_eq!(r.stop_cpl, 3);
    // An MSR exit inside the handler keeps waiting (no new NMI, same breakpoint).
    let again = t.replan(&mut g, &mut pmu).unwrap();
    assert_eq!(
        (again.breakpoints.clone(), again.inject_nmi),
        (vec![at], false)
    );
}

/// An exit that is not a debug stop (I/O, MSR) can leave the guest exactly on the
/// instruction that ends the block being run to (a `syscall` stub's `out` before its
/// `sysretq`). The window must go on from there, still open: taken for free running, the
/// next exit opened a new window over it, and a program making system calls in a loop
/// never finished one (no snapshot for the rest of the run).
#[test]
fn an_exit_on_a_blocks_last_instruction_keeps_the_window_open() {
    let mut g = program_a(200, 2);
    let mut pmu = VirtualPmu::new(PmuConfig::new(4, 8).unwrap());
    pmu.wrmsr(
        IA32_DEBUGCTL,
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI,
    )
    .unwrap();
    pmu.wrmsr(IA32_FIXED_CTR_CTRL, (FIXED_CTRL_USR | FIXED_CTRL_PMI) << 4)
        .unwrap();
    pmu.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 33).unwrap();
    pmu.wrmsr(IA32_FIXED_CTR0 + 1, (1 << 48) - 300).unwrap();
    let mut t = Tracer::new(TraceMode::Sampled { window_branches: 8 });
    let r = t.start(&mut g, &mut pmu).unwrap();
    let ran = g.free_run(r.deadline_cycles.unwrap());
    let r = t.on_free_run(&mut g, &mut pmu, ran, 3).unwrap();
    assert!(t.tracing(), "the window opened");
    assert_eq!(r.breakpoints, vec![0x100b], "running to the loop's jnz");
    // The guest exits (say, for I/O) right on the jnz, before its breakpoint fires.
    while g.cpu().unwrap().rip != 0x100b {
        g.pos += 1;
    }
    t.sync(&mut g, &mut pmu).unwrap();
    let r = t.replan(&mut g, &mut pmu).unwrap();
    assert!(t.tracing(), "the window is still open: {r:?}");
    assert!(!r.is_free());
    // A second exit at the same place does not open another window.
    let again = t.on_free_run(&mut g, &mut pmu, 5, 3).unwrap();
    assert_eq!(again, r);
    assert_eq!(t.stats().windows, 1);
    // From there the window completes as usual.
    let mut r = r;
    for _ in 0..1000 {
        match g.run(&r) {
            Ran::Debug => r = t.on_debug_exit(&mut g, &mut pmu).unwrap(),
            _ => break,
        }
        if r.is_free() {
            break;
        }
    }
    assert_eq!(t.stats().windows, 1);
    assert!(!t.tracing());
    assert_eq!(lbr(&pmu), vec![(0x100b, 0x1007); 8]);
    assert!(r.pmi && r.inject_nmi, "the window ended in its PMI: {r:?}");
}

/// Fall-back reasons are counted per reason, most frequent first, with overflow counted.
#[test]
fn halt_reasons_are_counted_and_ranked() {
    use super::super::interp::Halt;
    use iced_x86::Mnemonic;
    let mut c = HaltCounts::default();
    for _ in 0..3 {
        c.add(Halt::Unsupported(Mnemonic::Movups));
    }
    c.add(Halt::Memory);
    c.add(Halt::Unsupported(Mnemonic::Idiv));
    c.add(Halt::Unsupported(Mnemonic::Idiv));
    let top = c.top(2);
    assert_eq!(
        top,
        vec![
            (Halt::Unsupported(Mnemonic::Movups), 3),
            (Halt::Unsupported(Mnemonic::Idiv), 2)
        ]
    );
    assert_eq!(top[0].0.to_string(), "movups");
    let mut c = HaltCounts::default();
    for m in Mnemonic::values().take(HaltCounts::SLOTS + 5) {
        c.add(Halt::Unsupported(m));
    }
    assert_eq!(c.other, 5);
}

#[test]
fn rep_string_instructions_are_recognised_with_their_count_register() {
    let of = |bytes: &[u8]| repeat_of(bytes, 0x1000, CodeSize::Bits64);
    let plain = |mask| {
        Some(Repeat {
            mask,
            while_zf: None,
        })
    };
    assert_eq!(of(&[0xF3, 0xA4]), plain(u64::MAX), "rep movsb");
    assert_eq!(of(&[0xF3, 0x48, 0xAB]), plain(u64::MAX), "rep stosq");
    assert_eq!(
        of(&[0x67, 0xF3, 0xAA]),
        plain(0xffff_ffff),
        "rep stosb, 32-bit addresses"
    );
    let cmps = of(&[0xF3, 0xA6]).unwrap();
    assert_eq!(cmps.while_zf, Some(true), "repe cmpsb repeats while equal");
    let scas = of(&[0xF2, 0xAE]).unwrap();
    assert_eq!(
        scas.while_zf,
        Some(false),
        "repne scasb repeats while not equal"
    );
    assert_eq!(of(&[0xA4]), None, "movsb without a prefix");
    assert_eq!(of(&[0xF3, 0x90]), None, "pause (F3 90)");
    assert_eq!(of(&[0xF3, 0xC3]), None, "rep ret");
    assert_eq!(
        repeat_of(&[0xF3, 0xA5], 0x1000, CodeSize::Bits32).map(|r| r.mask),
        Some(0xffff_ffff),
        "rep movsd in 32-bit code"
    );
}

#[test]
fn rep_passes_are_counted_as_valgrind_runs_them() {
    let plain = Repeat {
        mask: u64::MAX,
        while_zf: None,
    };
    // k iterations to a zero count: k + 1 passes, k more than the one the CPU retires.
    assert_eq!(plain.extra_passes(100, 0, None), 100);
    assert_eq!(
        plain.extra_passes(0, 0, None),
        0,
        "a zero count is one pass"
    );
    // Interrupted and resumed counts come from the count at the start.
    assert_eq!(plain.extra_passes(100, 40, None), 60);
    let repe = Repeat {
        mask: u64::MAX,
        while_zf: Some(true),
    };
    const ZF: u64 = 1 << 6;
    // Cut short by a mismatch after 7 of 10: 7 passes.
    assert_eq!(repe.extra_passes(10, 3, Some(0)), 6);
    // All 10 compared equal: the count check ends it, 11 passes.
    assert_eq!(repe.extra_passes(10, 0, Some(ZF)), 10);
    // The last of 10 differed: cut short as the count reached zero, 10 passes.
    assert_eq!(repe.extra_passes(10, 0, Some(0)), 9);
    assert_eq!(repe.extra_passes(0, 0, Some(0)), 0);
    let repne = Repeat {
        mask: u64::MAX,
        while_zf: Some(false),
    };
    // strlen-style scan found the byte on the 5th of 64: 5 passes.
    assert_eq!(repne.extra_passes(64, 59, Some(ZF)), 4);
    // 32-bit count register: the upper half of RCX does not count.
    let ecx = Repeat {
        mask: 0xffff_ffff,
        while_zf: None,
    };
    assert_eq!(
        ecx.extra_passes(0xdead_0000_0010, 0xdead_0000_0000, None),
        16
    );
}

#[test]
fn a_move_by_the_vmm_drops_the_planned_stop_and_traces_on_from_the_new_place() {
    let mut g = program_a(3, 2);
    let mut pmu = counting_pmu(4, 8);
    let mut t = Tracer::new(TraceMode::Exact);
    let r = t.start(&mut g, &mut pmu).unwrap();
    assert_eq!(r.breakpoints, vec![0x100b]);
    // A kick stops the guest at 0x1007 (2 instructions retired) ...
    g.pos = 2;
    t.sync(&mut g, &mut pmu).unwrap();
    // ... and the VMM moves it to 0x1020 (a signal's handler) before it runs on: the
    // breakpoint at 0x100b would never come (or come by chance, much later).
    g.path.truncate(2);
    g.path
        .extend([0x1020, 0x1021, 0x1012, 0x1013, 0x1013].map(|a| (a, 3)));
    let r = t.moved(&mut g, &mut pmu).unwrap().expect("a plan");
    assert_eq!(r.breakpoints, vec![0x1021], "the new place's branch");
    drive_from(&mut t, &mut g, &mut pmu, r);
    // Everything but the final jmp retired, the instruction before the move included.
    assert_eq!(pmu.rdmsr(IA32_PMC0).unwrap(), g.path.len() as u64 - 1);
    assert_eq!(t.stats().unexpected, 0);
    // Running free (sampled mode, no window), nothing was planned and nothing is.
    let mut g = program_a(3, 2);
    let mut t = Tracer::new(TraceMode::Sampled { window_branches: 4 });
    t.start(&mut g, &mut pmu).unwrap();
    assert_eq!(t.moved(&mut g, &mut pmu).unwrap(), None);
}

/// In a pinned world, the CPU is stopped before an instruction the interpreter answers
/// (a block ends there, and one that starts there is empty, for the interpreter to run
/// it), so it never reads the host's.
#[test]
fn pinned_blocks_end_before_rdtsc_and_rdrand() {
    // 0x1000: nop; rdtsc; nop; rdrand %rax; jmp 0x1000
    let code = vec![(
        0x1000,
        vec![0x90, 0x0f, 0x31, 0x90, 0x48, 0x0f, 0xc7, 0xf0, 0xeb, 0xf6],
    )];
    let mut g = Fake::new(code, Vec::new());
    let block = |g: &mut Fake, at, outside| {
        let b = decode_block(g, at, CodeSize::Bits64, false, outside);
        let stop = b.stop_addr();
        (b.insns, stop)
    };
    let pinned = OutsideConfig {
        random_seed: Some(0),
        pinned_clock: true,
    };
    assert_eq!(block(&mut g, 0x1000, pinned), (vec![0x1000], 0x1001));
    // A block that starts at one is empty, stopping there: the CPU never runs it.
    assert_eq!(block(&mut g, 0x1001, pinned), (vec![], 0x1001));
    let b = decode_block(&mut g, 0x1001, CodeSize::Bits64, false, pinned);
    assert!(matches!(b.stop, Stop::Outside(i) if i.ip == 0x1001 && i.len == 2));
    assert_eq!(block(&mut g, 0x1003, pinned), (vec![0x1003], 0x1004));
    // Only what is pinned stops the CPU; the host's world stops nothing.
    let clock = OutsideConfig {
        random_seed: None,
        pinned_clock: true,
    };
    assert_eq!(block(&mut g, 0x1003, clock).1, 0x1008);
    let host = OutsideConfig::default();
    assert_eq!(
        block(&mut g, 0x1000, host),
        (vec![0x1000, 0x1001, 0x1003, 0x1004], 0x1008)
    );
}
