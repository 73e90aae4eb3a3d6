//! `builtin:sort [n=100000] [seed=1] [timing] [warm]` (n at most 1048576, divided by the
//! vCPUs under `rt.smp`: each sorts its own part of the buffer)
#![no_std]
#![no_main]

use lbrprof_guest::{Args, println, user, workloads::sort};

const MAX_N: usize = 1 << 20;
static mut BUF: [u64; MAX_N] = [0; MAX_N];

fn main(args: &Args) -> i32 {
    let share = MAX_N / args.workers() as usize;
    let n = args.u64("n", 100_000).min(share as u64) as usize;
    let seed = args.u64("seed", 1);
    let first = args.cpu() as usize * share;
    // SAFETY: each vCPU running the workload (vCPU 0, and under rt.smp the others, each
    // with a distinct cpu() < workers()) takes its own `share` of BUF, only here: the
    // slices never overlap.
    let buf =
        unsafe { core::slice::from_raw_parts_mut((&raw mut BUF).cast::<u64>().add(first), n) };
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
