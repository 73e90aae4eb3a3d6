//! `lbrprof-vmm`: lbrprof's own small KVM virtual machine monitor (the "VMM shim").
//!
//! It owns everything that touches KVM: guest memory, vCPU threads, the image loaders
//! (static ELF64 and multiboot v1), the few devices a guest needs (serial console, exit
//! port), the virtual PMU and LBR (emulated, or passed through from hardware), and the
//! channel over which guest LBR snapshots leave the vCPU threads.
//!
//! Non-goals: it knows nothing about files or recordings (the collector stores what it
//! produces), and it is not a general-purpose VMM: no block or network devices, no
//! firmware, just enough machine for a small guest kernel and ring-3 workloads.

pub mod pmu;
pub mod snapshot;
