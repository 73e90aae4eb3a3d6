//! The original code bytes under the emulated LBR's `int3` breakpoints, shared by every
//! vCPU of every VM in the process: the breakpoint machinery
//! ([`crate::pmu::kvm_hook`]) places and removes them, and the Linux personality's fork
//! ([`crate::linux`]) puts the originals back in the child's copy of the code. It lives
//! below both so neither imports the other.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// (host address of the guest memory, guest-physical address of the code byte).
pub(crate) type CodeByte = (u64, u64);

/// The original bytes under every `int3` the VM's hooks placed, per (guest memory,
/// guest-physical address), with the number of vCPUs that want the breakpoint: vCPUs
/// share code (a Linux program's threads), so one vCPU's breakpoint is in every vCPU's
/// way. Keyed by physical address because the processes of a Linux program have code at
/// the same virtual addresses in different pages (two shells): one process's breakpoint
/// must neither stand for nor be taken for another's. A vCPU
/// that hits another's breakpoint runs the instruction again (once it is gone), and
/// every vCPU's tracer reads code through this table.
pub(crate) static INT3_ORIGINALS: Mutex<BTreeMap<CodeByte, (u8, u32)>> =
    Mutex::new(BTreeMap::new());

/// The original bytes under the VM's `int3` breakpoints at guest-physical addresses in
/// `[gpa, gpa + len)` of the VM whose guest memory starts at host address `mem_base`:
/// a fork copies the parent's code pages with whatever breakpoints its vCPU had placed,
/// and the child's copy must get the original bytes back (no hook owns those `int3`s,
/// so the child would take them for its own and resume inside the instruction).
pub(crate) fn breakpoint_originals(mem_base: u64, gpa: u64, len: u64) -> Vec<(u64, u8)> {
    let Some(end) = gpa.checked_add(len) else {
        return Vec::new();
    };
    let int3 = INT3_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
    int3.range((mem_base, gpa)..(mem_base, end))
        .map(|(&(_, a), &(orig, _))| (a, orig))
        .collect()
}
