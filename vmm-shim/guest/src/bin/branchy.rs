//! `builtin:branchy [n=1000000] [pct=30] [seed=1] [timing] [warm]`
#![no_std]
#![no_main]

use lbrprof_guest::{Args, println, user, workloads::branchy};

fn main(args: &Args) -> i32 {
    let n = args.u64("n", 1_000_000);
    let pct = args.u64("pct", 30).min(100);
    let seed = args.u64("seed", 1);
    if args.flag("warm") {
        // Run once untimed first (page faults, caches), as bench/guest-speed does natively.
        core::hint::black_box(branchy::run(n, pct, seed));
    }
    let t0 = user::tsc();
    let r = branchy::run(n, pct, seed);
    let ticks = user::tsc().wrapping_sub(t0);
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
