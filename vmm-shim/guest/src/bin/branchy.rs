//! `builtin:branchy [n=1000000] [pct=30] [seed=1] [timing] [warm] [pmc]`
//!
//! `pmc` counts the kernel's ring-3 branches and instructions with the guest PMU (PMC0 =
//! BR_INST_RETIRED, PMC1 = INST_RETIRED, USR only) and prints `branches=` and
//! `instructions=`; exact in `--lbr-mode exact` (tests/lbr.rs checks them against n and
//! taken).
#![no_std]
#![no_main]

use lbrprof_guest::{Args, pmu, println, user, workloads::branchy};

fn main(args: &Args) -> i32 {
    let n = args.u64("n", 1_000_000);
    let pct = args.u64("pct", 30).min(100);
    let seed = args.u64("seed", 1);
    if args.flag("warm") {
        // Run once untimed first (page faults, caches), as bench/guest-speed does natively.
        core::hint::black_box(branchy::run(n, pct, seed));
    }
    let counts = if args.flag("pmc") {
        match pmu::UserCounts::start() {
            Some(c) => Some(c),
            None => {
                println!("branchy: pmc: the guest has no PMU (#GP)");
                return 1;
            }
        }
    } else {
        None
    };
    let t0 = user::tsc();
    let r = branchy::run(n, pct, seed);
    let ticks = user::tsc().wrapping_sub(t0);
    if let Some((branches, instructions)) = counts.and_then(pmu::UserCounts::stop) {
        println!("branchy: branches={branches} instructions={instructions}");
    }
    println!(
        "branchy: n={n} pct={pct} seed={seed} taken={} checksum={:#018x}",
        r.taken, r.checksum
    );
    if args.flag("timing") {
        println!("branchy: kernel_ns={}", args.tsc_to_ns(ticks));
    }
    0
}

lbrprof_guest::workload!(main);
