//! `lbrprof-vmm`: lbrprof's own small KVM virtual machine monitor (the "VMM shim").
//!
//! It owns everything that touches KVM: guest memory ([`memory`]), the image loaders
//! ([`loader`]: static ELF64 and multiboot v1), the boot state ([`boot`]), the few devices
//! a guest needs ([`devices`]: serial console, exit ports, fw_cfg), the vCPU threads
//! ([`vm`]; its error, [`error::VmError`], sits below it so that hooks and the Linux
//! personality can return it, as does the kick that makes a vCPU thread leave
//! `KVM_RUN`), the Linux personality ([`linux`]: unmodified Linux programs in guest
//! ring 3), the per-vCPU extension point the virtual PMU plugs into ([`hook`]), the
//! virtual PMU and LBR ([`pmu`]), KVM capability facts ([`caps`]), the embedded guest
//! images ([`builtin`]) and the channel over which guest LBR snapshots leave the vCPU
//! threads. The snapshots themselves ([`snapshot::LbrSnapshot`]) are defined by the data
//! layer, `lbrprof-data`, which the shim depends on (never the other way round). In the
//! data flow capture → data → symbolize → aggregate → render, the shim is the guest half
//! of capture; the collector drives it and writes what it produces.
//!
//! Non-goals: it knows nothing about files or recordings (the collector stores what it
//! produces), and it is not a general-purpose VMM: no block or network devices, no
//! firmware, just enough machine for a small guest kernel and ring-3 workloads.

/// The boot/system-call ABI shared with the guest runtime (same source file).
#[path = "../guest/src/abi.rs"]
pub mod abi;
pub mod arch;
pub mod boot;
pub mod builtin;
pub mod caps;
pub mod devices;
pub mod error;
pub mod hook;
mod int3;
mod kick;
pub mod linux;
pub mod loader;
pub mod memory;
pub mod phase;
pub mod pmu;
mod timer;
pub mod vm;
pub mod xsave;

/// The snapshot model lives in the data layer (`lbrprof-data`); the shim produces it.
pub use lbrprof_data::snapshot;

pub use hook::{NoopHook, VcpuCtx, VcpuHook};
pub use memory::{GuestMemory, GuestPhysAddr, GuestVirtAddr};
pub use vm::{Guest, Outcome, RunReport, Vm, VmConfig, VmError};
