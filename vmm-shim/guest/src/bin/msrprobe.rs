//! `builtin:msrprobe [rd=MSR]... [wr=MSR:VALUE]... [nmis]`: read/write MSRs from ring 0
//! and print what happened (#GP is caught), then optionally the number of NMIs taken.
//! Exercises the shim's MSR exits, debug exits and NMI injection (the PMU hook).
#![no_std]
#![no_main]

use lbrprof_guest::user::parse_u64;
use lbrprof_guest::{Args, println, user};

fn main(args: &Args) -> i32 {
    for word in args.words() {
        if let Some(msr) = word.strip_prefix("rd=").and_then(parse_u64) {
            match user::rdmsr(msr as u32) {
                Some(v) => println!("rdmsr {msr:#x} = {v:#x}"),
                None => println!("rdmsr {msr:#x} = #GP"),
            }
        } else if let Some((msr, value)) = word.strip_prefix("wr=").and_then(|w| w.split_once(':'))
        {
            let (Some(msr), Some(value)) = (parse_u64(msr), parse_u64(value)) else {
                println!("msrprobe: bad argument {word}");
                return 1;
            };
            let ok = user::wrmsr(msr as u32, value);
            println!(
                "wrmsr {msr:#x} = {value:#x}: {}",
                if ok { "ok" } else { "#GP" }
            );
        } else if word == "nmis" {
            println!("nmis={}", user::nmi_count());
        }
    }
    0
}

lbrprof_guest::workload!(main);
