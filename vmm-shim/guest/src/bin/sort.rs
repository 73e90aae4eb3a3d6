//! `builtin:sort [n=100000] [seed=1] [timing] [warm]` (n at most 1048576)
#![no_std]
#![no_main]

use lbrprof_guest::{Args, println, user, workloads::sort};

const MAX_N: usize = 1 << 20;
static mut BUF: [u64; MAX_N] = [0; MAX_N];

fn main(args: &Args) -> i32 {
    let n = args.u64("n", 100_000).min(MAX_N as u64) as usize;
    let seed = args.u64("seed", 1);
    // SAFETY: only vCPU 0 runs the workload, and only here; BUF is never aliased.
    let buf = unsafe { core::slice::from_raw_parts_mut((&raw mut BUF).cast::<u64>(), n) };
    if args.flag("warm") {
        // Run once untimed first (page faults, caches), as bench/guest-speed does natively.
        core::hint::black_box(sort::run(buf, seed));
    }
    let t0 = user::tsc();
    let (sorted, sum) = sort::run(buf, seed);
    let ticks = user::tsc().wrapping_sub(t0);
    println!(
        "sort: n={n} seed={seed} sorted={} checksum={sum:#018x}",
        if sorted { "yes" } else { "no" }
    );
    if args.flag("timing") {
        println!("sort: kernel_ns={}", args.tsc_to_ns(ticks));
    }
    if sorted { 0 } else { 1 }
}

lbrprof_guest::workload!(main);
