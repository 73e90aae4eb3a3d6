//! What ring 0 hands to ring 3: the boot facts vCPU 0 publishes before it leaves ring 0,
//! the vCPUs that came up, the system-call trap stub, and the ports ring 3 may drive
//! directly (the TSS I/O bitmap lets it). Both sides import this; neither imports the
//! other for it, so `kernel` (which enters ring 3 at `user`'s entry points) and `user`
//! stay one-way.
//!
//! Ring-0 code reads this too: integer-only, no formatting (see `kernel`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::abi::{self, BootInfo};

/// The console and the machine-control ports the shim implements.
pub(crate) use crate::abi::{COM1, EXIT_PORT, POWEROFF_PORT, POWEROFF_VALUE};

/// Boot facts for ring 3 (written by vCPU 0 before it leaves ring 0).
pub(crate) static BOOT_INFO: AtomicU64 = AtomicU64::new(0);
/// vCPUs that finished their ring-0 set-up.
pub(crate) static CPUS_ONLINE: AtomicU32 = AtomicU32::new(0);
/// TSC when vCPU 0 entered the kernel (for `rt.stats`: the cost of the ring-0 boot).
pub(crate) static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// The system-call trap stub (called from ring 3; defined in the kernel's assembly).
    pub(crate) fn rt_syscall_trap();
}

/// The `BootInfo` at guest address `p`, if it is one (checked by magic).
pub(crate) fn boot_info_at(p: u64) -> Option<&'static BootInfo> {
    // SAFETY: the shim wrote a BootInfo at this guest-physical (= virtual) address and
    // nothing writes it afterwards; the magic check guards against a foreign loader.
    let info = unsafe { (p as *const BootInfo).as_ref()? };
    (info.magic == abi::BOOT_MAGIC).then_some(info)
}

/// The `BootInfo` vCPU 0 published, once it has.
pub(crate) fn boot_info() -> Option<&'static BootInfo> {
    boot_info_at(BOOT_INFO.load(Ordering::Acquire))
}
