//! Ring 3's view of the (virtual) PMU and LBR: the architectural MSR numbers and bits the
//! guest test programs use (names as in the Intel SDM Vol. 4 and Vol. 3B), and a small
//! branch/instruction counter for measuring a region of ring-3 code.
//!
//! Every access is a system call (`SYS_RDMSR`/`SYS_WRMSR`): the MSRs are read and written
//! in ring 0, and a #GP comes back as `None`/`false`.

use crate::user;

// The MSR numbers and bits are the shim's own table (`vmm-shim/src/pmu/msr.rs`, included
// by the guest crate as `crate::msr`), so the guest tests and the model cannot disagree.
pub use crate::msr::*;

/// Ring-3 BR_INST_RETIRED.ALL_BRANCHES and INST_RETIRED.ANY on PMC0/PMC1 (USR only, so
/// the system calls' ring-0 halves do not count).
pub struct UserCounts {
    start: [u64; 2],
}

impl UserCounts {
    /// Program and zero PMC0/PMC1 and enable them; `None` when the PMU is not there (#GP).
    pub fn start() -> Option<UserCounts> {
        let ok = user::wrmsr(IA32_PERF_GLOBAL_CTRL, 0)
            && user::wrmsr(
                IA32_PERFEVTSEL0,
                EVTSEL_EN | EVTSEL_USR | u64::from(EVENT_BR_INST_RETIRED),
            )
            && user::wrmsr(
                IA32_PERFEVTSEL0 + 1,
                EVTSEL_EN | EVTSEL_USR | u64::from(EVENT_INST_RETIRED),
            )
            && user::wrmsr(IA32_PMC0, 0)
            && user::wrmsr(IA32_PMC0 + 1, 0)
            && user::wrmsr(IA32_PERF_GLOBAL_CTRL, 0b11);
        if !ok {
            return None;
        }
        Some(UserCounts {
            start: [user::rdmsr(IA32_PMC0)?, user::rdmsr(IA32_PMC0 + 1)?],
        })
    }

    /// (branches, instructions) retired in ring 3 since [`Self::start`] (including the
    /// fixed ring-3 cost of the system calls that read the counters).
    pub fn stop(self) -> Option<(u64, u64)> {
        let b = user::rdmsr(IA32_PMC0)?;
        let i = user::rdmsr(IA32_PMC0 + 1)?;
        user::wrmsr(IA32_PERF_GLOBAL_CTRL, 0);
        Some((b.wrapping_sub(self.start[0]), i.wrapping_sub(self.start[1])))
    }
}
