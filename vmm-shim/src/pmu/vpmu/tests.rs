use super::*;

fn pmu(version: u32, depth: u32) -> VirtualPmu {
    VirtualPmu::new(PmuConfig::new(version, depth).unwrap())
}

fn jmp(from: u64, to: u64) -> RetiredBranch {
    RetiredBranch {
        from,
        to,
        fallthrough: from + 2,
        kind: BranchKind::JmpRel,
        taken: true,
        cpl_before: 3,
        cpl_after: 3,
    }
}

const EN_USR_OS_INT: u64 = EVTSEL_EN | EVTSEL_USR | EVTSEL_OS | EVTSEL_INT;

#[test]
fn config_validation() {
    assert_eq!(PmuConfig::new(3, 32), Err(ConfigError::Version(3)));
    assert_eq!(PmuConfig::new(4, 12), Err(ConfigError::Depth(12)));
    assert_eq!(PmuConfig::default(), PmuConfig::new(4, 32).unwrap());
}

#[test]
fn perf_capabilities_reads_format_5_and_is_read_only() {
    let mut p = pmu(4, 32);
    let caps = p.rdmsr(IA32_PERF_CAPABILITIES).unwrap();
    assert_eq!(caps & PERF_CAP_LBR_FMT_MASK, LBR_FORMAT_INFO);
    assert_ne!(caps & PERF_CAP_FW_WRITE, 0);
    assert!(p.wrmsr(IA32_PERF_CAPABILITIES, caps).is_err());
}

#[test]
fn debugctl_accepts_only_the_four_supported_bits() {
    let mut p = pmu(4, 32);
    for bit in [
        DEBUGCTL_LBR,
        DEBUGCTL_BTF,
        DEBUGCTL_FREEZE_LBRS_ON_PMI,
        DEBUGCTL_FREEZE_PERFMON_ON_PMI,
    ] {
        p.wrmsr(IA32_DEBUGCTL, bit).unwrap();
        assert_eq!(p.rdmsr(IA32_DEBUGCTL).unwrap(), bit);
    }
    for bad in [
        DEBUGCTL_TR,
        DEBUGCTL_BTS,
        DEBUGCTL_FREEZE_WHILE_SMM,
        DEBUGCTL_RTM_DEBUG,
        1 << 13,
        1 << 63,
    ] {
        let before = p.rdmsr(IA32_DEBUGCTL).unwrap();
        assert!(
            p.wrmsr(IA32_DEBUGCTL, bad | DEBUGCTL_LBR).is_err(),
            "{bad:#x}"
        );
        assert_eq!(
            p.rdmsr(IA32_DEBUGCTL).unwrap(),
            before,
            "#GP leaves state alone"
        );
    }
}

#[test]
fn lbr_msrs_beyond_depth_gp() {
    for depth in [8u32, 16, 32] {
        let mut p = pmu(2, depth);
        for base in [
            MSR_LASTBRANCH_0_FROM_IP,
            MSR_LASTBRANCH_0_TO_IP,
            MSR_LBR_INFO_0,
        ] {
            assert!(p.rdmsr(base + depth - 1).is_ok());
            assert!(p.wrmsr(base + depth - 1, 0).is_ok());
            if depth < 32 {
                assert!(
                    p.rdmsr(base + depth).is_err(),
                    "depth {depth} base {base:#x}"
                );
                assert!(p.wrmsr(base + depth, 0).is_err());
            }
            assert!(p.rdmsr(base + 32).is_err());
        }
        assert!(p.wrmsr(MSR_LBR_TOS, u64::from(depth) - 1).is_ok());
        assert!(p.wrmsr(MSR_LBR_TOS, u64::from(depth)).is_err());
    }
}

#[test]
fn lbr_msr_writes_round_trip_and_check_their_values() {
    let mut p = pmu(4, 16);
    p.wrmsr(MSR_LASTBRANCH_0_FROM_IP + 3, 0xffff_8000_0000_1000)
        .unwrap();
    p.wrmsr(MSR_LASTBRANCH_0_TO_IP + 3, 0x40_1000).unwrap();
    p.wrmsr(MSR_LBR_INFO_0 + 3, LBR_INFO_MISPRED | 7).unwrap();
    assert_eq!(
        p.rdmsr(MSR_LASTBRANCH_0_FROM_IP + 3).unwrap(),
        0xffff_8000_0000_1000
    );
    assert_eq!(p.rdmsr(MSR_LASTBRANCH_0_TO_IP + 3).unwrap(), 0x40_1000);
    assert_eq!(p.rdmsr(MSR_LBR_INFO_0 + 3).unwrap(), LBR_INFO_MISPRED | 7);
    assert!(
        p.wrmsr(MSR_LASTBRANCH_0_FROM_IP, 0x0000_8000_0000_0000)
            .is_err()
    );
    assert!(p.wrmsr(MSR_LBR_INFO_0, LBR_INFO_CYC_CNT_VALID).is_err());
    assert!(p.wrmsr(MSR_LBR_SELECT, 1 << 10).is_err());
    p.wrmsr(MSR_LBR_SELECT, LBR_SELECT_VALID).unwrap();
    assert_eq!(p.rdmsr(MSR_LBR_SELECT).unwrap(), LBR_SELECT_VALID);
}

#[test]
fn counter_msrs_exist_only_as_advertised() {
    let mut p = pmu(2, 32);
    assert!(p.rdmsr(IA32_PMC0 + 3).is_ok());
    assert!(p.rdmsr(IA32_PMC0 + 4).is_err());
    assert!(p.rdmsr(IA32_PERFEVTSEL0 + 4).is_err());
    assert!(p.rdmsr(IA32_A_PMC0 + 4).is_err());
    assert!(p.rdmsr(IA32_FIXED_CTR0 + 2).is_ok());
    assert!(p.rdmsr(IA32_FIXED_CTR0 + 3).is_err());
    // STATUS_SET and INUSE are version 4 registers.
    assert!(p.rdmsr(IA32_PERF_GLOBAL_STATUS_SET).is_err());
    assert!(p.wrmsr(IA32_PERF_GLOBAL_STATUS_SET, 1).is_err());
    assert!(p.rdmsr(IA32_PERF_GLOBAL_INUSE).is_err());
    let p4 = pmu(4, 32);
    assert!(p4.rdmsr(IA32_PERF_GLOBAL_STATUS_SET).is_ok());
    assert!(p4.rdmsr(IA32_PERF_GLOBAL_INUSE).is_ok());
    assert!(p.wrmsr(IA32_PERF_GLOBAL_STATUS, 0).is_err());
    assert!(VirtualPmu::owns_msr(MSR_LBR_INFO_0 + 31));
    assert!(!VirtualPmu::owns_msr(0x10)); // TSC stays with KVM
}

#[test]
fn reserved_counter_control_bits_gp() {
    let mut p = pmu(4, 32);
    assert!(p.wrmsr(IA32_PERFEVTSEL0, 1 << 32).is_err());
    assert!(p.wrmsr(IA32_PERFEVTSEL0, EN_USR_OS_INT | 0xC0).is_ok());
    assert!(p.wrmsr(IA32_FIXED_CTR_CTRL, 1 << 12).is_err());
    assert!(p.wrmsr(IA32_FIXED_CTR_CTRL, 0xBBB).is_ok());
    assert!(p.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 4).is_err());
    assert!(p.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 35).is_err());
    assert!(p.wrmsr(IA32_PERF_GLOBAL_CTRL, 0x7_0000_000F).is_ok());
    assert!(p.wrmsr(IA32_A_PMC0, 1 << 48).is_err());
    assert!(p.wrmsr(IA32_FIXED_CTR0, 1 << 48).is_err());
}

#[test]
fn global_ctrl_resets_with_gp_enables() {
    let p = pmu(2, 32);
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_CTRL).unwrap(), 0xF);
}

#[test]
fn legacy_pmc_writes_sign_extend_bit_31() {
    let mut p = pmu(4, 32);
    p.wrmsr(IA32_PMC0, 0xFFFF_FFF0).unwrap();
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 0xFFFF_FFFF_FFF0);
    p.wrmsr(IA32_PMC0 + 1, 0x1234_7FFF_FFFF).unwrap();
    assert_eq!(p.rdmsr(IA32_PMC0 + 1).unwrap(), 0x7FFF_FFFF);
    p.wrmsr(IA32_A_PMC0 + 2, 0x1234_0000_0000).unwrap();
    assert_eq!(p.rdmsr(IA32_PMC0 + 2).unwrap(), 0x1234_0000_0000);
}

#[test]
fn counting_respects_usr_os_en_and_global_ctrl() {
    let mut p = pmu(4, 32);
    p.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | 0xC0)
        .unwrap();
    p.wrmsr(IA32_PERFEVTSEL0 + 1, EVTSEL_EN | EVTSEL_OS | 0xC0)
        .unwrap();
    p.wrmsr(IA32_PERFEVTSEL0 + 2, EVTSEL_USR | 0xC0).unwrap(); // not enabled
    p.wrmsr(
        IA32_PERFEVTSEL0 + 3,
        EVTSEL_EN | EVTSEL_USR | EVTSEL_OS | 0xC4,
    )
    .unwrap();
    p.wrmsr(IA32_FIXED_CTR_CTRL, FIXED_CTRL_USR | (FIXED_CTRL_OS << 4))
        .unwrap();
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, 0xF | (0b11 << 32)).unwrap();
    p.on_instructions(10, 3);
    p.on_instructions(5, 0);
    p.on_cycles(7, 0);
    p.on_branch(jmp(0x1000, 0x2000));
    assert_eq!(
        p.rdmsr(IA32_PMC0).unwrap(),
        11,
        "user instructions + the branch"
    );
    assert_eq!(p.rdmsr(IA32_PMC0 + 1).unwrap(), 5);
    assert_eq!(p.rdmsr(IA32_PMC0 + 2).unwrap(), 0);
    assert_eq!(p.rdmsr(IA32_PMC0 + 3).unwrap(), 1, "branches");
    assert_eq!(
        p.rdmsr(IA32_FIXED_CTR0).unwrap(),
        11,
        "fixed 0 = instructions, user"
    );
    assert_eq!(
        p.rdmsr(IA32_FIXED_CTR0 + 1).unwrap(),
        7,
        "fixed 1 = cycles, os"
    );
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, 0).unwrap();
    p.on_instructions(100, 3);
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 11);
}

#[test]
fn inuse_reflects_programmed_counters() {
    let mut p = pmu(4, 32);
    p.wrmsr(IA32_PERFEVTSEL0 + 2, 0xC0 | EVTSEL_INT).unwrap();
    p.wrmsr(IA32_FIXED_CTR_CTRL, FIXED_CTRL_USR << 4).unwrap();
    assert_eq!(
        p.rdmsr(IA32_PERF_GLOBAL_INUSE).unwrap(),
        (1 << 2) | (1 << 33) | GLOBAL_INUSE_PMI
    );
}

#[test]
fn overflow_sets_status_and_raises_pmi_only_with_int() {
    let mut p = pmu(2, 32);
    p.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | 0xC0)
        .unwrap();
    p.wrmsr(IA32_PMC0, (-3i64) as u64).unwrap();
    p.on_instructions(3, 3);
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 0);
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap(), 1);
    assert!(!p.take_pmi(), "no INT, no PMI");
    p.wrmsr(IA32_PERF_GLOBAL_OVF_CTRL, 1).unwrap();
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap(), 0);

    p.wrmsr(IA32_PERFEVTSEL0, EN_USR_OS_INT | 0xC0).unwrap();
    p.wrmsr(IA32_PMC0, (-2i64) as u64).unwrap();
    assert_eq!(p.instructions_until_pmi(3), Some(2));
    p.on_instructions(1, 3);
    assert!(!p.take_pmi());
    p.on_instructions(1, 3);
    assert!(p.take_pmi());
    assert!(!p.take_pmi(), "taken once");
    assert_eq!(p.last_overflow_bit(), 0);
}

#[test]
fn fixed_counter_overflow_uses_the_field_pmi_bit() {
    let mut p = pmu(4, 32);
    p.wrmsr(IA32_FIXED_CTR_CTRL, (FIXED_CTRL_USR | FIXED_CTRL_PMI) << 4)
        .unwrap();
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, 1 << 33).unwrap();
    p.wrmsr(IA32_FIXED_CTR0 + 1, (1 << 48) - 100).unwrap();
    assert_eq!(p.cycles_until_pmi(3), Some(100));
    assert_eq!(p.cycles_until_pmi(0), None, "USR only");
    p.on_cycles(150, 3);
    assert_eq!(p.rdmsr(IA32_FIXED_CTR0 + 1).unwrap(), 50);
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap(), 1 << 33);
    assert!(p.take_pmi());
    assert_eq!(p.last_overflow_bit(), 33);
}

fn armed_for_lbr_freeze(version: u32) -> VirtualPmu {
    let mut p = pmu(version, 8);
    p.wrmsr(
        IA32_DEBUGCTL,
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI,
    )
    .unwrap();
    p.wrmsr(IA32_PERFEVTSEL0, EN_USR_OS_INT | 0xC4).unwrap();
    p.wrmsr(IA32_PMC0, (-3i64) as u64).unwrap();
    p
}

#[test]
fn v2_freeze_clears_debugctl_lbr_and_global_ctrl() {
    let mut p = armed_for_lbr_freeze(2);
    for i in 0..3 {
        p.on_branch(jmp(0x1000 + i, 0x2000 + i));
    }
    assert!(p.take_pmi());
    // The overflowing branch is the newest entry.
    assert_eq!(p.lbr_newest_first()[0].from, 0x1002);
    assert_eq!(p.rdmsr(IA32_DEBUGCTL).unwrap() & DEBUGCTL_LBR, 0);
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_CTRL).unwrap(), 0);
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap(), 1);
    // Skid: two more branches retire before the handler runs; they are lost and counted.
    p.on_branch(jmp(0x3000, 0x4000));
    p.on_branch(jmp(0x3001, 0x4001));
    p.on_instructions(4, 0);
    assert_eq!(p.lbr().tos(), 3);
    assert_eq!(p.stats().frozen_branches, 2);
    assert_eq!(
        p.stats().frozen_instructions,
        6,
        "4 + the 2 branch instructions"
    );
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 0, "counters frozen");
    let s = p.snapshot(SnapshotContext::default());
    assert_eq!(s.frozen_events, 2);
    assert_eq!(s.reason, SnapshotReason::Pmi { counter: 0 });
    assert_eq!(p.snapshot(SnapshotContext::default()).frozen_events, 0);
    // The handler re-arms: LBR and counters run again.
    p.wrmsr(IA32_PERF_GLOBAL_OVF_CTRL, 1).unwrap();
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI)
        .unwrap();
    p.wrmsr(IA32_PERF_GLOBAL_CTRL, 1).unwrap();
    p.on_branch(jmp(0x5000, 0x6000));
    assert_eq!(p.lbr_newest_first()[0].from, 0x5000);
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 1);
    // STATUS_RESET's v4 bits do not exist in v2.
    assert!(
        p.wrmsr(IA32_PERF_GLOBAL_OVF_CTRL, GLOBAL_STATUS_LBR_FRZ)
            .is_err()
    );
}

#[test]
fn v4_freeze_sets_frz_bits_and_resumes_on_status_reset() {
    let mut p = armed_for_lbr_freeze(4);
    for i in 0..3 {
        p.on_branch(jmp(0x1000 + i, 0x2000 + i));
    }
    assert!(p.take_pmi());
    let status = p.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap();
    assert_eq!(status, 1 | GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ);
    // DEBUGCTL and GLOBAL_CTRL are untouched by the streamlined freeze.
    assert_ne!(p.rdmsr(IA32_DEBUGCTL).unwrap() & DEBUGCTL_LBR, 0);
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_CTRL).unwrap(), 0xF);
    p.on_branch(jmp(0x3000, 0x4000));
    assert_eq!(p.lbr_newest_first()[0].from, 0x1002, "frozen");
    assert_eq!(p.stats().frozen_branches, 1);
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 0);
    // Clearing only the overflow bit keeps the freeze.
    p.wrmsr(IA32_PERF_GLOBAL_STATUS_RESET, 1).unwrap();
    p.on_branch(jmp(0x3001, 0x4001));
    assert_eq!(p.stats().frozen_branches, 2);
    p.wrmsr(
        IA32_PERF_GLOBAL_STATUS_RESET,
        GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ,
    )
    .unwrap();
    assert_eq!(p.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap(), 0);
    p.on_branch(jmp(0x5000, 0x6000));
    assert_eq!(p.lbr_newest_first()[0].from, 0x5000);
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 1);
}

#[test]
fn v4_status_set_sets_bits_and_freezes() {
    let mut p = pmu(4, 8);
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    p.wrmsr(
        IA32_PERF_GLOBAL_STATUS_SET,
        GLOBAL_STATUS_LBR_FRZ | 0b10 | (1 << 34),
    )
    .unwrap();
    assert_eq!(
        p.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap(),
        GLOBAL_STATUS_LBR_FRZ | 0b10 | (1 << 34)
    );
    assert!(!p.take_pmi(), "STATUS_SET raises no PMI");
    p.on_branch(jmp(0x1000, 0x2000));
    assert_eq!(p.lbr().tos(), 0);
    assert_eq!(p.stats().frozen_branches, 1);
    assert!(
        p.wrmsr(IA32_PERF_GLOBAL_STATUS_SET, GLOBAL_STATUS_COND_CHGD)
            .is_err()
    );
    assert!(p.wrmsr(IA32_PERF_GLOBAL_STATUS_SET, 1 << 4).is_err());
}

#[test]
fn no_freeze_without_the_debugctl_bits() {
    let mut p = pmu(4, 8);
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    p.wrmsr(IA32_PERFEVTSEL0, EN_USR_OS_INT | 0xC4).unwrap();
    p.wrmsr(IA32_PMC0, (-1i64) as u64).unwrap();
    p.on_branch(jmp(0x1000, 0x2000));
    assert!(p.take_pmi());
    p.on_branch(jmp(0x3000, 0x4000));
    assert_eq!(p.lbr_newest_first()[0].from, 0x3000);
    assert_eq!(p.stats().frozen_branches, 0);
}

#[test]
fn lbr_disabled_records_nothing_and_is_not_a_freeze() {
    let mut p = pmu(4, 8);
    p.on_branch(jmp(0x1000, 0x2000));
    assert_eq!(p.lbr_newest_first()[0], LbrEntry::default());
    assert_eq!(p.stats().frozen_branches, 0);
}

#[test]
fn not_taken_branches_count_but_are_not_recorded() {
    let mut p = pmu(4, 8);
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    p.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | 0xC4)
        .unwrap();
    p.on_branch(RetiredBranch {
        kind: BranchKind::Jcc,
        taken: false,
        ..jmp(0x1000, 0x1002)
    });
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 1);
    assert_eq!(p.lbr().tos(), 0);
    assert_eq!(p.stats().lbr_records, 0);
}

#[test]
fn interrupts_are_far_branches_but_not_instructions() {
    let mut p = pmu(4, 8);
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    p.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | EVTSEL_OS | 0xC4)
        .unwrap();
    p.on_branch(RetiredBranch {
        kind: BranchKind::Interrupt,
        cpl_after: 0,
        ..jmp(0x1000, 0xffff_8000_0000_0000)
    });
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 0);
    assert_eq!(p.lbr_newest_first()[0].to, 0xffff_8000_0000_0000);
    p.wrmsr(MSR_LBR_SELECT, LBR_SELECT_FAR_BRANCH).unwrap();
    p.on_branch(RetiredBranch {
        kind: BranchKind::Exception,
        ..jmp(0x2000, 0x3000)
    });
    assert_eq!(p.lbr().tos(), 1);
    assert_eq!(p.stats().lbr_filtered, 1);
}

#[test]
fn lbr_info_carries_cycles_since_previous_entry_saturating() {
    let mut p = pmu(4, 8);
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    p.on_cycles(12, 3);
    p.on_branch(jmp(0x1000, 0x2000));
    p.on_cycles(3, 3);
    p.on_branch(jmp(0x2000, 0x3000));
    p.on_cycles(1 << 20, 3);
    p.on_branch(jmp(0x3000, 0x4000));
    // An entry with no cycle since the previous one still counts its own.
    p.on_branch(jmp(0x4000, 0x5000));
    // Untraced time: the next entry's count is unknown (0), the one after it known again.
    p.on_cycles(5000, 3);
    p.forget_lbr_cycles();
    p.on_branch(jmp(0x5000, 0x6000));
    p.on_cycles(7, 3);
    p.on_branch(jmp(0x6000, 0x7000));
    let e = p.lbr_newest_first();
    assert_eq!(e[5].info & LBR_INFO_CYC_CNT, 12);
    assert_eq!(e[4].info & LBR_INFO_CYC_CNT, 3);
    assert_eq!(e[3].info & LBR_INFO_CYC_CNT, 0xFFFF);
    assert_eq!(e[2].info & LBR_INFO_CYC_CNT, 1);
    assert_eq!(e[1].info & LBR_INFO_CYC_CNT, 0);
    assert_eq!(e[0].info & LBR_INFO_CYC_CNT, 7);
    assert!(e.iter().all(|x| x.info & LBR_INFO_CYC_CNT_VALID == 0));
    assert!(
        e.iter()
            .all(|x| x.info & (LBR_INFO_IN_TX | LBR_INFO_TSX_ABORT) == 0)
    );
}

#[test]
fn predictor_marks_mispredictions() {
    let mut p = pmu(4, 32);
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    p.wrmsr(IA32_PERFEVTSEL0, EVTSEL_EN | EVTSEL_USR | 0xC5)
        .unwrap();
    let jcc = |taken| RetiredBranch {
        kind: BranchKind::Jcc,
        taken,
        ..jmp(0x1000, 0x1800)
    };
    // Weakly not-taken at first: the first taken instance mispredicts, then it learns.
    for _ in 0..4 {
        p.on_branch(jcc(true));
    }
    let e = p.lbr_newest_first();
    assert_ne!(e[3].info & LBR_INFO_MISPRED, 0);
    assert_eq!(e[2].info & LBR_INFO_MISPRED, 0);
    assert_eq!(e[0].info & LBR_INFO_MISPRED, 0);
    // A call then its return predicts through the return stack.
    let call = RetiredBranch {
        kind: BranchKind::CallRel,
        fallthrough: 0x5005,
        ..jmp(0x5000, 0x9000)
    };
    p.on_branch(call);
    p.on_branch(RetiredBranch {
        kind: BranchKind::Ret,
        ..jmp(0x9010, 0x5005)
    });
    assert_eq!(p.lbr_newest_first()[0].info & LBR_INFO_MISPRED, 0);
    p.on_branch(RetiredBranch {
        kind: BranchKind::Ret,
        ..jmp(0x9020, 0x7777)
    });
    assert_ne!(p.lbr_newest_first()[0].info & LBR_INFO_MISPRED, 0);
    assert_eq!(p.rdmsr(IA32_PMC0).unwrap(), 2);
}

#[test]
fn snapshot_copies_slots_in_msr_order() {
    let mut p = pmu(4, 8);
    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_LBR).unwrap();
    for i in 0..10u64 {
        p.on_branch(jmp(0x1000 + i, 0x2000));
    }
    let s = p.snapshot(SnapshotContext {
        vcpu: 1,
        host_time_ns: 5,
        reason: Some(SnapshotReason::Final),
        guest_ip: 0x40_0000,
        ..Default::default()
    });
    assert_eq!((s.vcpu, s.tos, s.entries.len()), (1, 2, 8));
    assert_eq!(s.reason, SnapshotReason::Final);
    assert_eq!(s.entries[2].from, 0x1009);
    let newest: Vec<u64> = s.newest_first().map(|e| e.from).collect();
    assert_eq!(newest[0], 0x1009);
    assert_eq!(newest[7], 0x1002);
}

/// A xorshift stream from `seed` (random control writes and events for the tests).
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// A PERFEVTSEL value from `r`: one of the modelled events (or another), with random
/// enable, ring and interrupt bits.
fn random_evtsel(r: u64) -> u64 {
    const EVENTS: [(u8, u8); 6] = [
        (EVENT_INST_RETIRED, 0),
        (EVENT_BR_INST_RETIRED, 0),
        (EVENT_BR_MISP_RETIRED, 0),
        (EVENT_CORE_CYCLES, 0),
        (EVENT_CORE_CYCLES, UMASK_REF_CYCLES),
        (0x2e, 0x41),
    ];
    let (code, umask) = EVENTS[(r >> 16) as usize % EVENTS.len()];
    let bits = (r >> 24) & (EVTSEL_EN | EVTSEL_USR | EVTSEL_OS | EVTSEL_INT);
    u64::from(code) | u64::from(umask) << EVTSEL_UMASK_SHIFT | bits
}

/// The table `count` uses to find the counters of an event says what the per-counter
/// rules say, after any sequence of control writes (and a v2 freeze, which clears
/// GLOBAL_CTRL), for every event and ring.
#[test]
fn the_counting_table_follows_every_control_write() {
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    for version in [2, 4] {
        let mut p = pmu(version, 32);
        for _ in 0..2000 {
            let r = next();
            let i = (r >> 8) as u32 % GP_COUNTERS as u32;
            let _ = match r % 4 {
                0 => p.wrmsr(IA32_PERFEVTSEL0 + i, random_evtsel(r)),
                1 => p.wrmsr(IA32_FIXED_CTR_CTRL, (r >> 20) & 0xfff),
                2 => p.wrmsr(IA32_PERF_GLOBAL_CTRL, (r >> 30) & COUNTERS_MASK),
                _ => {
                    p.wrmsr(IA32_DEBUGCTL, DEBUGCTL_FREEZE_PERFMON_ON_PMI)
                        .unwrap();
                    p.raise_pmi();
                    Ok(())
                }
            };
            for ev in [
                Event::Instructions,
                Event::Branches,
                Event::BranchMisses,
                Event::CoreCycles,
                Event::RefCycles,
                Event::Other,
            ] {
                for cpl in [0u8, 3] {
                    let mut want = 0u16;
                    for c in 0..GP_COUNTERS {
                        want |= u16::from(p.gp_counts(c, ev, cpl)) << c;
                    }
                    for c in 0..FIXED_COUNTERS {
                        want |= u16::from(p.fixed_counts(c, ev, cpl)) << (8 + c);
                    }
                    assert_eq!(p.counting[ev as usize][usize::from(cpl != 0)], want);
                }
            }
            for ring in 0..2 {
                let any = p.counting.iter().any(|c| c[ring] != 0);
                assert_eq!(p.counting_any[ring], any);
            }
        }
    }
}

#[test]
fn a_batch_and_its_branch_in_one_call_do_what_the_calls_one_by_one_do() {
    let kinds = [
        BranchKind::Jcc,
        BranchKind::JmpRel,
        BranchKind::JmpInd,
        BranchKind::CallRel,
        BranchKind::CallInd,
        BranchKind::Ret,
        BranchKind::Interrupt,
    ];
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    for version in [2, 4] {
        // One PMU gets the calls one by one, the other the one call; counters near
        // overflow, PMIs, freezes and the LBR on and off on the way.
        let mut one_by_one = pmu(version, 8);
        let mut batched = one_by_one.clone();
        for step in 0..1500 {
            let r = next();
            let i = (r >> 8) as u32 % GP_COUNTERS as u32;
            let write = match r % 16 {
                0 => Some((IA32_PERFEVTSEL0 + i, random_evtsel(r))),
                1 => Some((IA32_PMC0 + i, (-((r >> 32) as i64 % 24)) as u64)),
                2 => Some((IA32_FIXED_CTR_CTRL, (r >> 20) & 0xfff)),
                3 => Some((IA32_PERF_GLOBAL_CTRL, (r >> 30) & COUNTERS_MASK)),
                4 => Some((IA32_PERF_GLOBAL_OVF_CTRL, (r >> 30) & COUNTERS_MASK)),
                5 => Some((
                    IA32_DEBUGCTL,
                    (r >> 40)
                        & (DEBUGCTL_LBR
                            | DEBUGCTL_FREEZE_LBRS_ON_PMI
                            | DEBUGCTL_FREEZE_PERFMON_ON_PMI),
                )),
                6 => {
                    assert_eq!(one_by_one.take_pmi(), batched.take_pmi());
                    None
                }
                _ => {
                    let kind = kinds[(r >> 16) as usize % kinds.len()];
                    let cpl = if r >> 20 & 3 == 0 { 0 } else { 3 };
                    let from = 0x1000 + (r >> 24) % 48;
                    let b = RetiredBranch {
                        from,
                        to: 0x8000 + (r >> 32) % 8,
                        fallthrough: from + 2,
                        kind,
                        taken: kind != BranchKind::Jcc || r >> 44 & 1 == 1,
                        cpl_before: cpl,
                        cpl_after: cpl,
                    };
                    let n = (r >> 48) % 7;
                    one_by_one.on_instructions(n, cpl);
                    one_by_one.on_cycles(n, cpl);
                    if kind.is_instruction() {
                        one_by_one.on_cycles(1, cpl);
                    }
                    one_by_one.on_branch(b);
                    batched.on_batch_then_branch(n, b);
                    None
                }
            };
            if let Some((msr, v)) = write {
                assert_eq!(one_by_one.wrmsr(msr, v), batched.wrmsr(msr, v));
            }
            assert_eq!(
                format!("{one_by_one:?}"),
                format!("{batched:?}"),
                "version {version}, step {step}"
            );
        }
    }
}
