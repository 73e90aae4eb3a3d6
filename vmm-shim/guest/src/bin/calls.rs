//! `builtin:calls [n=1000000] [depth=20] [timing] [warm]`
#![no_std]
#![no_main]

use lbrprof_guest::{Args, println, user, workloads::calls};

fn main(args: &Args) -> i32 {
    let n = args.u64("n", 1_000_000);
    let depth = args.u64("depth", 20).min(40);
    if args.flag("warm") {
        // Run once untimed first (page faults, caches), as bench/guest-speed does natively.
        core::hint::black_box(calls::run(n, depth));
    }
    let t0 = user::tsc();
    let (fib, acc) = calls::run(n, depth);
    let ticks = user::tsc().wrapping_sub(t0);
    println!("calls: n={n} depth={depth} fib={fib} checksum={acc:#018x}");
    if args.flag("timing") {
        println!("calls: kernel_ns={}", args.tsc_to_ns(ticks));
    }
    0
}

lbrprof_guest::workload!(main);
