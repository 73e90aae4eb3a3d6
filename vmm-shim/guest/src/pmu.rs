//! Ring 3's view of the (virtual) PMU and LBR: the architectural MSR numbers and bits the
//! guest test programs use (names as in the Intel SDM Vol. 4 and Vol. 3B), and a small
//! branch/instruction counter for measuring a region of ring-3 code.
//!
//! Every access is a system call (`SYS_RDMSR`/`SYS_WRMSR`): the MSRs are read and written
//! in ring 0, and a #GP comes back as `None`/`false`.

use crate::user;

pub const IA32_PMC0: u32 = 0xC1;
pub const IA32_PERFEVTSEL0: u32 = 0x186;
pub const MSR_LBR_SELECT: u32 = 0x1C8;
pub const MSR_LBR_TOS: u32 = 0x1C9;
pub const IA32_DEBUGCTL: u32 = 0x1D9;
pub const IA32_PERF_CAPABILITIES: u32 = 0x345;
pub const IA32_FIXED_CTR_CTRL: u32 = 0x38D;
pub const IA32_PERF_GLOBAL_STATUS: u32 = 0x38E;
pub const IA32_PERF_GLOBAL_CTRL: u32 = 0x38F;
pub const IA32_PERF_GLOBAL_STATUS_RESET: u32 = 0x390;
pub const IA32_PERF_GLOBAL_STATUS_SET: u32 = 0x391;
pub const IA32_A_PMC0: u32 = 0x4C1;
pub const MSR_LASTBRANCH_0_FROM_IP: u32 = 0x680;
pub const MSR_LASTBRANCH_0_TO_IP: u32 = 0x6C0;
pub const MSR_LBR_INFO_0: u32 = 0xDC0;

pub const DEBUGCTL_LBR: u64 = 1 << 0;
pub const DEBUGCTL_BTF: u64 = 1 << 1;
pub const DEBUGCTL_TR: u64 = 1 << 6;
pub const DEBUGCTL_BTS: u64 = 1 << 7;
pub const DEBUGCTL_FREEZE_LBRS_ON_PMI: u64 = 1 << 11;
pub const DEBUGCTL_FREEZE_PERFMON_ON_PMI: u64 = 1 << 12;

pub const LBR_SELECT_CPL_EQ_0: u64 = 1 << 0;
pub const LBR_SELECT_CPL_NEQ_0: u64 = 1 << 1;
pub const LBR_SELECT_JCC: u64 = 1 << 2;
pub const LBR_SELECT_NEAR_REL_CALL: u64 = 1 << 3;
pub const LBR_SELECT_NEAR_IND_CALL: u64 = 1 << 4;
pub const LBR_SELECT_NEAR_RET: u64 = 1 << 5;
pub const LBR_SELECT_NEAR_IND_JMP: u64 = 1 << 6;
pub const LBR_SELECT_NEAR_REL_JMP: u64 = 1 << 7;
pub const LBR_SELECT_FAR_BRANCH: u64 = 1 << 8;
pub const LBR_SELECT_EN_CALLSTACK: u64 = 1 << 9;
/// Every branch-type filter bit (2..=8).
pub const LBR_SELECT_ALL_TYPES: u64 = 0x1FC;

pub const EVTSEL_USR: u64 = 1 << 16;
pub const EVTSEL_OS: u64 = 1 << 17;
pub const EVTSEL_INT: u64 = 1 << 20;
pub const EVTSEL_EN: u64 = 1 << 22;
pub const EVENT_INST_RETIRED: u64 = 0xC0;
pub const EVENT_BR_INST_RETIRED: u64 = 0xC4;

pub const GLOBAL_STATUS_LBR_FRZ: u64 = 1 << 58;
pub const GLOBAL_STATUS_CTR_FRZ: u64 = 1 << 59;

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
                EVTSEL_EN | EVTSEL_USR | EVENT_BR_INST_RETIRED,
            )
            && user::wrmsr(
                IA32_PERFEVTSEL0 + 1,
                EVTSEL_EN | EVTSEL_USR | EVENT_INST_RETIRED,
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
