//! `builtin:interp [n=20000] [timing] [warm]`: Collatz step sum of 1..=n in bytecode.
#![no_std]
#![no_main]

use lbrprof_guest::{Args, println, user, workloads::interp};

fn main(args: &Args) -> i32 {
    let n = args.u64("n", 20_000);
    if args.flag("warm") {
        // Run once untimed first (page faults, caches), as bench/guest-speed does natively.
        core::hint::black_box(interp::run(n));
    }
    let t0 = user::tsc();
    let (steps, executed) = interp::run(n);
    let ticks = user::tsc().wrapping_sub(t0);
    println!("interp: n={n} steps={steps} executed={executed} checksum={steps:#018x}");
    if args.flag("timing") {
        println!("interp: kernel_ns={}", args.tsc_to_ns(ticks));
    }
    0
}

lbrprof_guest::workload!(main);
