//! `builtin:calls [n=1000000] [depth=20] [timing] [warm] [pmc]`
//!
//! `pmc`: as in `branchy`, prints the kernel's ring-3 `branches=` and `instructions=`.
#![no_std]
#![no_main]

use lbrprof_guest::{Args, pmu, println, user, workloads::calls};

fn main(args: &Args) -> i32 {
    let n = args.u64("n", 1_000_000);
    let depth = args.u64("depth", 20).min(40);
    if args.flag("warm") {
        // Run once untimed first (page faults, caches), as bench/guest-speed does natively.
        core::hint::black_box(calls::run(n, depth));
    }
    let counts = if args.flag("pmc") {
        match pmu::UserCounts::start() {
            Some(c) => Some(c),
            None => {
                println!("calls: pmc: the guest has no PMU (#GP)");
                return 1;
            }
        }
    } else {
        None
    };
    let t0 = user::tsc();
    let (fib, acc) = calls::run(n, depth);
    let ticks = user::tsc().wrapping_sub(t0);
    if let Some((branches, instructions)) = counts.and_then(pmu::UserCounts::stop) {
        println!("calls: branches={branches} instructions={instructions}");
    }
    println!("calls: n={n} depth={depth} fib={fib} checksum={acc:#018x}");
    if args.flag("timing") {
        println!("calls: kernel_ns={}", args.tsc_to_ns(ticks));
    }
    0
}

lbrprof_guest::workload!(main);
