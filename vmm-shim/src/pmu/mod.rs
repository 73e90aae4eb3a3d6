//! The virtual PMU and LBR: one architectural model (CPUID leaf 0xA, the PMU and LBR MSRs,
//! freeze-on-PMI) with two backends, hardware passthrough and emulation.
//!
//! Everything but [`kvm_hook`] is pure logic that never touches KVM, so every rule is
//! unit-tested without /dev/kvm; [`kvm_hook`] plugs it into the VMM's per-vCPU hook (CPUID
//! set-up, MSR exits, debug exits, NMI injection).
//!
//! * [`msr`]: raw MSR indices, bit positions and CPUID bits with their SDM names.
//! * [`cpuid`]: shapes the guest's CPUID so it advertises exactly this PMU and LBR.
//! * [`lbr`]: the FROM/TO/INFO ring with TOS, MSR_LBR_SELECT filtering, call-stack mode.
//! * [`vpmu`]: the per-vCPU model behind RDMSR/WRMSR: counters, overflow → PMI, freeze.
//! * [`branch`]: decoding and classifying guest instructions (iced-x86).
//! * [`guest`]: the vCPU as the tracer and the interpreter read it (the [`GuestAccess`]
//!   trait the VMM implements).
//! * [`tracer`]: the state machine that observes guest branches through breakpoints and
//!   single-steps (≤ 2 exits per branch) and feeds them to the model, exact or sampled.
//! * [`interp`]: runs ring-3 guest code inside the shim (integer subset, exact flags,
//!   page-table checked memory) so the tracer can record a window without stopping the
//!   guest; anything it does not implement exactly is left to the breakpoints.
//! * [`backend`]: hardware passthrough or emulation, decided from plain host facts.
//! * [`emulated`]: model + tracer + snapshot channel for one vCPU, KVM-free.
//! * [`agent`]: guest-driven snapshots: draining the guest agent's snapshot rings (one per
//!   vCPU), with exact loss counts.
//! * [`setup`]: the one guest-LBR setup of every command that boots a VM: typed options
//!   → backend decision → per-vCPU hooks and their statistics.
//! * [`profile`]: exact mode's per-instruction and per-call counts (callgrind's view).
//! * [`trial`]: a short real run of the emulated LBR, for `lbrprof info`'s verdict.
//! * [`kvm_hook`]: the VMM hook that drives [`emulated`] from KVM exits (KVM guest debug in
//!   ring 0, traps through the guest's own IDT in ring 3), and the hardware-backend hook
//!   (CPUID, and a timer that drains the guest agent's ring).

pub mod addr_hash;
pub mod agent;
pub mod backend;
pub mod branch;
pub mod cpuid;
pub mod emulated;
#[cfg(test)]
mod fake_guest;
pub mod guest;
pub mod interp;
pub mod kvm_hook;
pub mod lbr;
pub mod msr;
pub mod profile;
pub mod setup;
pub mod throttle;
pub mod tracer;
pub mod trial;
pub mod vpmu;

pub use backend::{HostLbrFacts, LbrMode, LbrRequest, Refusal, decide};
pub use branch::BranchKind;
pub use guest::{GuestAccess, GuestCpu};
pub use lbr::LbrDepth;
pub use tracer::{Resume, TraceMode, Tracer};

pub use vpmu::{Gp, PmuConfig, PmuVersion, RetiredBranch, VirtualPmu};
