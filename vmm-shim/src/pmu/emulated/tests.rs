use super::*;
use crate::pmu::fake_guest::*;
use crate::pmu::tracer::TraceMode;
use crate::pmu::vpmu::PmuConfig;

fn vcpu(mode: TraceMode, sink: Option<SnapshotSink>) -> EmulatedVcpu {
    let mut cfg = EmulatedConfig::new(0, PmuConfig::new(4, 8).unwrap(), mode);
    cfg.shim_snapshots = true;
    EmulatedVcpu::new(cfg, sink)
}

/// Runs the fake guest under `v` like the vCPU loop would, with `now` advancing 1 ns per
/// free-run instruction.
fn run(v: &mut EmulatedVcpu, g: &mut Fake) {
    let mut now = 0;
    let mut r = v.on_start(g, now).unwrap();
    for _ in 0..100_000 {
        match g.run(&r) {
            Ran::End => break,
            Ran::Debug => r = v.on_debug(g, now).unwrap(),
            Ran::Free => {
                let ran = g.free_run(r.deadline_cycles.unwrap_or(u64::MAX));
                if ran == 0 {
                    break;
                }
                now += ran;
                // The VMM's timer kicks the vCPU out: an "interrupted" exit.
                r = v.on_exit(g, now).unwrap();
            }
        }
    }
    v.on_stop(g, now);
}

/// What a guest PMU driver does first: LBR with freeze, PMC0 counting user instructions
/// with a PMI every `period`.
fn program(v: &mut EmulatedVcpu, g: &mut Fake, period: u64) {
    let w = |v: &mut EmulatedVcpu, g: &mut Fake, msr, val| v.wrmsr(g, msr, val).unwrap();
    w(
        v,
        g,
        IA32_DEBUGCTL,
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI,
    );
    w(
        v,
        g,
        IA32_PERFEVTSEL0,
        EVTSEL_EN | EVTSEL_USR | EVTSEL_INT | 0xC0,
    );
    w(v, g, IA32_A_PMC0, (1 << 48) - period);
}

#[test]
fn msr_reads_see_exact_counts_and_gp_passes_through() {
    let mut g = program_a(10, 2);
    let mut v = vcpu(TraceMode::Exact, None);
    program(&mut v, &mut g, 1000);
    let r = v.on_start(&mut g, 0).unwrap();
    assert_eq!(r.breakpoints, vec![0x100b]);
    g.pos = 3; // an RDMSR exit at 0x1009
    assert_eq!(v.rdmsr(&mut g, IA32_A_PMC0).unwrap(), (1 << 48) - 1000 + 3);
    assert!(v.rdmsr(&mut g, MSR_LASTBRANCH_0_FROM_IP + 8).is_err());
    assert!(v.wrmsr(&mut g, IA32_DEBUGCTL, 1 << 6).is_err());
    let r = v.on_exit(&mut g, 0).unwrap();
    assert_eq!(r.breakpoints, vec![0x100b], "the same plan after the exit");
    let mut cpuid = vec![];
    v.adjust_cpuid(&mut cpuid);
    assert!(cpuid.iter().any(|e| e.function == 0xA));
    assert!(
        v.msr_ranges()
            .iter()
            .any(|&(lo, hi)| lo <= IA32_DEBUGCTL && IA32_DEBUGCTL <= hi)
    );
}

#[test]
fn exact_mode_sends_a_frozen_snapshot_per_pmi_and_a_final_one() {
    let (sink, rx) = SnapshotSink::bounded(16);
    let mut g = program_a(10, 2);
    let mut v = vcpu(TraceMode::Exact, Some(sink.clone()));
    program(&mut v, &mut g, 11);
    run(&mut v, &mut g);
    let snaps: Vec<LbrSnapshot> = rx.try_iter().collect();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0].reason, SnapshotReason::Pmi { counter: 0 });
    assert_eq!(
        snaps[0].guest_ip, 0x1007,
        "at the 12th instruction, after 11 retired"
    );
    assert_eq!(snaps[0].guest_tsc, 11);
    // Instructions 5 and 8 and 11 are the taken jnz's before the overflow.
    assert_eq!(snaps[0].newest_first().count(), 3);
    assert_eq!(snaps[1].reason, SnapshotReason::Final);
    // Everything after the PMI was frozen: the final snapshot holds the same LBR and
    // counts what was lost.
    assert_eq!(snaps[1].entries, snaps[0].entries);
    assert!(snaps[1].frozen_events > 0);
    assert_eq!(sink.lost(), 0);
    assert_eq!(v.snapshots(), 2);
}

#[test]
fn a_full_channel_counts_losses() {
    let (sink, rx) = SnapshotSink::bounded(1);
    let mut g = program_a(10, 2);
    let mut v = vcpu(TraceMode::Exact, Some(sink.clone()));
    program(&mut v, &mut g, 11);
    run(&mut v, &mut g);
    assert_eq!(rx.try_iter().count(), 1);
    assert_eq!(sink.lost(), 1);
    drop(rx);
    sink.send(v.pmu.clone().snapshot(SnapshotContext::default()));
    assert_eq!(sink.lost(), 2, "a closed channel is a loss, not a panic");
}

#[test]
fn sampled_mode_with_time_based_counter() {
    let (sink, rx) = SnapshotSink::bounded(16);
    let mut g = program_a(400, 2);
    let mut cfg = EmulatedConfig::new(
        0,
        PmuConfig::new(2, 8).unwrap(),
        TraceMode::Sampled { window_branches: 8 },
    );
    cfg.cycles_per_sec = 1_000_000_000; // 1 cycle per ns: one per fake instruction
    cfg.shim_snapshots = true;
    let mut v = EmulatedVcpu::new(cfg, Some(sink));
    let w = |v: &mut EmulatedVcpu, g: &mut Fake, msr, val| v.wrmsr(g, msr, val).unwrap();
    w(
        &mut v,
        &mut g,
        IA32_DEBUGCTL,
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI,
    );
    w(
        &mut v,
        &mut g,
        IA32_FIXED_CTR_CTRL,
        (FIXED_CTRL_USR | FIXED_CTRL_PMI) << 4,
    );
    w(&mut v, &mut g, IA32_PERF_GLOBAL_CTRL, 1 << 33);
    w(&mut v, &mut g, IA32_FIXED_CTR0 + 1, (1 << 48) - 500);
    let r = v.on_start(&mut g, 0).unwrap();
    assert_eq!(v.deadline_ns(&r), Some(500));
    run(&mut v, &mut g);
    let snaps: Vec<LbrSnapshot> = rx.try_iter().collect();
    assert_eq!(snaps[0].reason, SnapshotReason::Pmi { counter: 33 });
    let lbr: Vec<(u64, u64)> = snaps[0].newest_first().map(|e| (e.from, e.to)).collect();
    assert_eq!(lbr, vec![(0x100b, 0x1007); 8]);
    assert_eq!(
        v.tracer_stats().windows,
        1,
        "v2 froze the LBR; the counter is not re-armed"
    );
    assert!(v.tracer_stats().exits <= 20);
}

#[test]
fn shim_driven_sampling_in_exact_mode_is_periodic_deterministic_and_invisible() {
    let go = || {
        let (sink, rx) = SnapshotSink::bounded(64);
        let mut cfg = EmulatedConfig::new(0, PmuConfig::new(4, 8).unwrap(), TraceMode::Exact);
        cfg.sampling = Sampling::Shim { period: 7 };
        let mut v = EmulatedVcpu::new(cfg, Some(sink));
        let mut g = program_a(10, 3);
        let len = g.path.len();
        run(&mut v, &mut g);
        assert!(g.nmis_at.is_empty(), "the guest never sees the shim's PMIs");
        let snaps: Vec<LbrSnapshot> = rx.try_iter().collect();
        // A PMI after every 7 retired instructions, then the final snapshot.
        assert_eq!(snaps.len(), (len - 1) / 7 + 1);
        for (i, s) in snaps[..snaps.len() - 1].iter().enumerate() {
            assert_eq!(s.reason, SnapshotReason::Pmi { counter: 32 });
            assert_eq!(s.guest_tsc as usize, 7 * (i + 1), "snapshot {i} position");
        }
        assert_eq!(snaps.last().unwrap().reason, SnapshotReason::Final);
        // The LBR kept recording between PMIs (re-armed each time): the second snapshot
        // (14 instructions) holds the jnz's at instructions 5, 8, 11 and 14.
        assert_eq!(snaps[1].newest_first().count(), 4);
        snaps
            .into_iter()
            .map(|s| (s.tos, s.entries, s.guest_ip))
            .collect::<Vec<_>>()
    };
    assert_eq!(go(), go());
}

#[test]
fn shim_driven_sampling_in_sampled_mode_follows_time() {
    let (sink, rx) = SnapshotSink::bounded(64);
    let mut cfg = EmulatedConfig::new(
        0,
        PmuConfig::new(2, 8).unwrap(),
        TraceMode::Sampled { window_branches: 8 },
    );
    cfg.cycles_per_sec = 1_000_000_000;
    cfg.sampling = Sampling::Shim { period: 300 };
    let mut v = EmulatedVcpu::new(cfg, Some(sink));
    let mut g = program_a(1000, 2);
    run(&mut v, &mut g);
    assert!(g.nmis_at.is_empty());
    let snaps: Vec<LbrSnapshot> = rx.try_iter().collect();
    // No final snapshot: the end of the program is no sample point.
    let pmis = snaps.len();
    // ~3000 instructions at 1 cycle each: one sample per 300 cycles (plus window time).
    assert!((8..=10).contains(&pmis), "{pmis} samples");
    for s in &snaps {
        assert_eq!(s.reason, SnapshotReason::Pmi { counter: 33 });
        let lbr: Vec<(u64, u64)> = s.newest_first().map(|e| (e.from, e.to)).collect();
        assert_eq!(lbr, vec![(0x100b, 0x1007); 8]);
    }
    assert_eq!(v.tracer_stats().windows as usize, pmis);
}

/// Like [`run`], but each debug stop (tracing) costs `stop_ns` of host time; returns the
/// host time at the end.
fn run_with_costly_stops(v: &mut EmulatedVcpu, g: &mut Fake, stop_ns: u64) -> u64 {
    let mut now = 0;
    let mut r = v.on_start(g, now).unwrap();
    for _ in 0..1_000_000 {
        match g.run(&r) {
            Ran::End => break,
            Ran::Debug => {
                now += stop_ns;
                r = v.on_debug(g, now).unwrap();
            }
            Ran::Free => {
                let ran = g.free_run(r.deadline_cycles.unwrap_or(u64::MAX));
                if ran == 0 {
                    break;
                }
                now += ran;
                r = v.on_exit(g, now).unwrap();
            }
        }
    }
    v.on_stop(g, now);
    now
}

fn sampled_shim(overhead_percent: u32, period: u64) -> EmulatedConfig {
    let mut cfg = EmulatedConfig::new(
        0,
        PmuConfig::new(2, 8).unwrap(),
        TraceMode::Sampled { window_branches: 8 },
    );
    cfg.cycles_per_sec = 1_000_000_000;
    cfg.sampling = Sampling::Shim { period };
    cfg.overhead_percent = overhead_percent;
    cfg
}

#[test]
fn the_overhead_budget_stretches_sampled_mode_intervals() {
    // ~60,000 instructions (1 ns each) sampled every 300 cycles; each tracing stop costs
    // 100 ns, so a window of 8 branches costs far more than 10% of 300 ns.
    let go = |pct: u32| {
        let (sink, rx) = SnapshotSink::bounded(1024);
        let mut v = EmulatedVcpu::new(sampled_shim(pct, 300), Some(sink));
        let mut g = program_a(20_000, 2);
        let end = run_with_costly_stops(&mut v, &mut g, 100);
        let pmis = rx
            .try_iter()
            .filter(|s| matches!(s.reason, SnapshotReason::Pmi { .. }))
            .count() as u64;
        (pmis, v.throttle_stats(), end)
    };
    let (free_pmis, free, free_end) = go(0);
    assert_eq!(free.stretched, 0);
    assert_eq!(free.episodes, free_pmis);
    let free_share = free.episode_ns as f64 / free_end as f64;
    assert!(free_share > 0.5, "unthrottled share {free_share}");

    let (pmis, t, end) = go(10);
    assert!(t.stretched > 0 && t.episodes == pmis, "{t:?}");
    assert!(pmis * 4 < free_pmis, "{pmis} vs {free_pmis} snapshots");
    assert!(pmis >= 5, "starved: {pmis} snapshots");
    let share = t.episode_ns as f64 / end as f64;
    assert!(share <= 0.12, "throttled share {share}");

    // 100% is no budget at all.
    assert_eq!(go(100).0, free_pmis);
}

#[test]
fn exact_mode_is_never_throttled() {
    let (sink, rx) = SnapshotSink::bounded(1024);
    let mut cfg = EmulatedConfig::new(0, PmuConfig::new(4, 8).unwrap(), TraceMode::Exact);
    cfg.sampling = Sampling::Shim { period: 7 };
    cfg.overhead_percent = 1;
    let mut v = EmulatedVcpu::new(cfg, Some(sink));
    let mut g = program_a(100, 2);
    run_with_costly_stops(&mut v, &mut g, 1_000);
    let pmis = rx
        .try_iter()
        .filter(|s| matches!(s.reason, SnapshotReason::Pmi { .. }))
        .count();
    assert!(pmis >= 40, "{pmis} snapshots");
    assert_eq!(v.throttle_stats(), ThrottleStats::default());
}

/// Like [`run`], but the program also makes an exit of its own (a system call) every
/// `every` instructions, which the VMM takes `service_ns` to serve; the timer's exits
/// are [`ExitPoint::Async`] and the program's are `program_exits`.
fn run_with_exits(
    v: &mut EmulatedVcpu,
    g: &mut Fake,
    every: u64,
    service_ns: u64,
    program_exits: ExitPoint,
) {
    let mut now = 0;
    let mut r = v.on_start(g, now).unwrap();
    let mut since_exit = 0;
    for _ in 0..1_000_000 {
        match g.run(&r) {
            Ran::End => break,
            Ran::Debug => r = v.on_debug(g, now).unwrap(),
            Ran::Free => {
                let deadline = r.deadline_cycles.unwrap_or(u64::MAX);
                let ran = g.free_run(deadline.min(every - since_exit));
                if ran == 0 {
                    break;
                }
                now += ran;
                since_exit += ran;
                if since_exit == every {
                    since_exit = 0;
                    now += service_ns;
                    r = v.on_exit_at(g, now, program_exits).unwrap();
                } else {
                    r = v.on_exit(g, now).unwrap();
                }
            }
        }
    }
    v.on_stop(g, now);
}

#[test]
fn samples_are_not_taken_at_the_programs_own_exits() {
    // ~60,000 instructions, a sample per 3,000 ns; an exit every 100 instructions that
    // costs the VMM 1,000 ns to serve (ten times the guest's own time).
    let windows = |program_exits| {
        let (sink, _rx) = SnapshotSink::bounded(1024);
        let mut cfg = sampled_shim(0, 3_000);
        cfg.random_intervals = true;
        let mut v = EmulatedVcpu::new(cfg, Some(sink));
        v.rng = Some(fastrand::Rng::with_seed(1));
        let mut g = program_a(20_000, 2);
        run_with_exits(&mut v, &mut g, 100, 1_000, program_exits);
        (v.tracer_stats().windows, v.skipped_samples())
    };
    // Taken at any exit, samples follow the VMM's serving time: ~220 of them, nearly
    // all where the program exits.
    let (biased, _) = windows(ExitPoint::Async);
    assert!(biased > 150, "{biased} windows");
    // Only where the timer found the guest running: about guest time / period (20),
    // the rest skipped. (With fixed intervals they could lock onto the program's
    // rhythm: 3,000 ns after an exit always falls in the 1,000 ns of serving one.)
    let (fair, skipped) = windows(ExitPoint::Sync);
    assert!((5..=30).contains(&fair), "{fair} windows");
    assert!(skipped > 100, "{skipped} skipped");
}

#[test]
fn random_intervals_are_exponential_around_the_period() {
    let mut rng = fastrand::Rng::with_seed(7);
    let n = 20_000;
    let draws: Vec<u64> = (0..n).map(|_| exponential(1.0 - rng.f64(), 1000)).collect();
    let mean = draws.iter().sum::<u64>() as f64 / n as f64;
    assert!((950.0..1050.0).contains(&mean), "mean {mean}");
    // Memoryless: as many draws beyond 2 means as the exponential's e^-2 share.
    let tail = draws.iter().filter(|&&d| d > 2000).count() as f64 / n as f64;
    assert!((0.12..0.15).contains(&tail), "tail {tail}");
    assert!(draws.iter().all(|&d| (1..=20_000).contains(&d)));
    assert_eq!(exponential(0.0, 1000), 20_000, "capped");
    assert_eq!(exponential(1.0, 1000), 1, "never zero");
}

#[test]
fn a_snapshot_in_the_vmms_stub_is_the_interrupted_codes() {
    let shim = ShimCode {
        stubs: 0x4000..0x5000,
        syscall: 0x5000..0x5010,
    };
    let snapshot_at = |rip: u64, cpl: u8| {
        // The final snapshot of exact mode, where the program ended.
        let (sink, rx) = SnapshotSink::bounded(4);
        let mut cfg = EmulatedConfig::new(0, PmuConfig::new(2, 8).unwrap(), TraceMode::Exact);
        cfg.sampling = Sampling::Shim { period: 1_000_000 };
        let mut v = EmulatedVcpu::new(cfg, Some(sink));
        v.set_shim_code(Some(shim.clone()));
        // The CPU's trap frame at RSP (0 in the fake): RIP, CS, RFLAGS, RSP, SS.
        let mut frame = Vec::new();
        for w in [0x1111u64, 0x33, 0x202, 0x7000, 0x2b] {
            frame.extend_from_slice(&w.to_le_bytes());
        }
        let mut g = Fake::new(
            vec![(0, frame), (rip, vec![0xe6, 0xd0, 0x48, 0x0f, 0x07])],
            vec![(rip, cpl)],
        );
        g.rcx = 0x2222;
        v.on_start(&mut g, 0).unwrap();
        v.on_stop(&mut g, 10);
        let s = rx.try_iter().last().unwrap();
        (s.guest_ip, s.guest_sp)
    };
    // The SYSCALL stub: RCX is where the caller resumes; RSP is its own.
    assert_eq!(snapshot_at(0x5002, 3), (0x2222, 0));
    // An exception stub: the trap frame's.
    assert_eq!(snapshot_at(0x4010, 0), (0x1111, 0x7000));
    // Guest code stays as it is.
    assert_eq!(snapshot_at(0x6000, 3).0, 0x6000);
}

#[test]
fn a_sampled_snapshot_is_credited_to_its_sample_point_not_the_windows_end() {
    // Three loop iterations, a call and return, then `jmp $` forever; the first sample
    // falls due in the loop, and its 8-branch window runs on into the `jmp $`.
    let (sink, rx) = SnapshotSink::bounded(64);
    let mut v = EmulatedVcpu::new(sampled_shim(0, 3), Some(sink));
    let mut g = program_a(3, 50);
    run(&mut v, &mut g);
    let s = rx.try_iter().next().unwrap();
    assert_eq!(s.reason, SnapshotReason::Pmi { counter: 33 });
    let newest = s.newest_first().next().unwrap();
    assert_eq!(
        (newest.from, newest.to),
        (0x1013, 0x1013),
        "the window's end"
    );
    assert!(
        (0x1007..=0x100b).contains(&s.guest_ip),
        "sample point {:#x}",
        s.guest_ip
    );
}

#[test]
fn a_new_vcpu_starts_from_the_vms_sampling_cost() {
    // A vCPU of a VM whose windows cost 9 us each, at a 10% budget: its first interval
    // is already 81 us, not the requested 3 us.
    let shared = Arc::new(AtomicU64::new(9_000));
    let mut v = EmulatedVcpu::new(sampled_shim(10, 3_000), None);
    v.share_episode_costs(Arc::clone(&shared));
    assert_eq!(v.pmu().instructions_until_pmi(3), Some(81_000));
    // Nothing measured yet: the requested rate.
    let mut v = EmulatedVcpu::new(sampled_shim(10, 3_000), None);
    v.share_episode_costs(Arc::new(AtomicU64::new(0)));
    assert_eq!(v.pmu().instructions_until_pmi(3), Some(3_000));
    // Its own windows' costs go back to the VM.
    let (sink, _rx) = SnapshotSink::bounded(1024);
    let mut v = EmulatedVcpu::new(sampled_shim(10, 300), Some(sink));
    let cost = Arc::new(AtomicU64::new(0));
    v.share_episode_costs(Arc::clone(&cost));
    let mut g = program_a(20_000, 2);
    run_with_costly_stops(&mut v, &mut g, 100);
    assert!(cost.load(Ordering::Relaxed) > 0);
}

#[test]
fn exact_mode_intervals_stay_deterministic_with_random_intervals_asked() {
    let go = || {
        let (sink, rx) = SnapshotSink::bounded(1024);
        let mut cfg = EmulatedConfig::new(0, PmuConfig::new(4, 8).unwrap(), TraceMode::Exact);
        cfg.sampling = Sampling::Shim { period: 7 };
        cfg.random_intervals = true;
        let mut v = EmulatedVcpu::new(cfg, Some(sink));
        let mut g = program_a(100, 2);
        run(&mut v, &mut g);
        rx.try_iter().map(|s| s.guest_ip).collect::<Vec<u64>>()
    };
    let a = go();
    assert!(a.len() > 10);
    assert_eq!(a, go());
}

/// A window whose stops are costly is cut once its episode passes the cap: its snapshot
/// holds the branches recorded so far, and no episode runs much past the cap (the
/// budget's stretch after it stays bounded). Without a cap every window is whole.
#[test]
fn a_long_sampling_episode_is_cut_at_the_cap() {
    let go = |cap_ns: u64| {
        let (sink, rx) = SnapshotSink::bounded(1024);
        let mut cfg = sampled_shim(10, 300);
        cfg.max_episode_ns = cap_ns;
        cfg.episode_clock = EpisodeClock::Host;
        let mut v = EmulatedVcpu::new(cfg, Some(sink));
        let mut g = program_a(20_000, 2);
        // Each stop costs 1 ms: a window of 8 branches takes well over 3 ms.
        run_with_costly_stops(&mut v, &mut g, 1_000_000);
        let lens: Vec<usize> = rx
            .try_iter()
            .filter(|s| matches!(s.reason, SnapshotReason::Pmi { .. }))
            .map(|s| s.newest_first().count())
            .collect();
        (lens, v.tracer_stats(), v.throttle_stats())
    };
    let (whole, stats, _) = go(0);
    assert!(!whole.is_empty());
    assert!(whole.iter().all(|&n| n == 8), "{whole:?}");
    assert_eq!(stats.windows_cut, 0);

    let (cut, stats, throttle) = go(3_000_000);
    assert!(
        cut.len() >= whole.len(),
        "{} vs {} snapshots",
        cut.len(),
        whole.len()
    );
    assert!(stats.windows_cut > 0, "{stats:?}");
    assert!(cut.iter().all(|&n| (1..8).contains(&n)), "{cut:?}");
    // Cut at the first stop past 3 ms: at most one stop (1 ms) later.
    let per_episode = throttle.episode_ns / throttle.episodes.max(1);
    assert!(per_episode <= 4_000_000, "{throttle:?}");
}
