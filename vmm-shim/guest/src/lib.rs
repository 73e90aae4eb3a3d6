//! lbrprof's guest runtime: a tiny ring-0 kernel that runs one workload in ring 3.
//!
//! On hosts with nested virtualization guest ring-0 code is emulated by the host and runs
//! about 1000x slower than ring-3 code, so the kernel does as little as it can: per vCPU
//! it loads a GDT with user segments and a TSS (IST stacks for NMI, #DF and #GP), an IDT,
//! and drops to ring 3. Everything else (argument parsing, formatting, the workloads)
//! runs in ring 3; console and exit I/O go straight to the ports (TSS I/O bitmap), and
//! privileged services through a trap (see [`abi`]). Paging is set up by the shim (identity map, user-accessible), SSE is
//! switched on by the entry code before any Rust runs.
//!
//! vCPU 0 runs the workload; the other vCPUs check in (so the workload can see how many
//! came up) and halt in ring 0, which costs nothing; with `rt.smp` they run the workload
//! too, each in ring 3 on its own stack (see [`abi`]). `rt.agent=PERIOD` starts the LBR
//! agent on every vCPU that runs the workload, each writing its own snapshot ring.
//!
//! Non-goals: isolation between ring 0 and ring 3 (the workload could scribble over the
//! kernel), interrupts (IF stays 0 in ring 3; only NMIs arrive), memory allocation.
#![no_std]

pub mod abi;
mod handoff;
mod kernel;
mod mem;
/// The architectural PMU/LBR MSR numbers and bits: the shim's table, shared.
#[path = "../../src/pmu/msr.rs"]
pub mod msr;
pub mod pmu;
pub mod user;
pub mod workloads;

pub use user::Args;

/// Most vCPUs the runtime sets up; higher-numbered vCPUs halt at once.
pub const MAX_CPUS: usize = 8;

/// Define a workload binary: `workload!(path::to::main)` where `main(&Args) -> i32`.
#[macro_export]
macro_rules! workload {
    ($main:path) => {
        #[unsafe(no_mangle)]
        pub extern "Rust" fn lbrprof_workload_main(args: &$crate::Args) -> i32 {
            $main(args)
        }
    };
}
