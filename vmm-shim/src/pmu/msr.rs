//! Raw architectural constants of the PMU and LBR: MSR indices and their bit fields, named
//! as in the Intel SDM (Vol. 4 "Model-Specific Registers", Vol. 3B chapters "Last Branch,
//! Interrupt, and Exception Recording" and "Performance Monitoring") and as Linux spells
//! them in `arch/x86/include/asm/msr-index.h` where the SDM has no single name.
//!
//! Only numbers live here; what they mean to the virtual PMU is in [`super::vpmu`].

// ---- MSR indices -------------------------------------------------------------------------

/// IA32_PMC0: general-purpose counter 0 (legacy 32-bit-write alias); PMCn = PMC0 + n.
pub const IA32_PMC0: u32 = 0xC1;
/// IA32_PERFEVTSEL0: event select for PMC0; PERFEVTSELn = PERFEVTSEL0 + n.
pub const IA32_PERFEVTSEL0: u32 = 0x186;
/// MSR_LBR_SELECT (LBR filter control, Nehalem and later).
pub const MSR_LBR_SELECT: u32 = 0x1C8;
/// MSR_LBR_TOS (LASTBRANCH_TOS): index of the most recent LBR slot.
pub const MSR_LBR_TOS: u32 = 0x1C9;
/// IA32_DEBUGCTL.
pub const IA32_DEBUGCTL: u32 = 0x1D9;
/// IA32_FIXED_CTR0 (INST_RETIRED.ANY); FIXED_CTRn = FIXED_CTR0 + n.
pub const IA32_FIXED_CTR0: u32 = 0x309;
/// IA32_PERF_CAPABILITIES (read-only; enumerated by CPUID.1:ECX.PDCM).
pub const IA32_PERF_CAPABILITIES: u32 = 0x345;
/// IA32_FIXED_CTR_CTRL.
pub const IA32_FIXED_CTR_CTRL: u32 = 0x38D;
/// IA32_PERF_GLOBAL_STATUS (read-only).
pub const IA32_PERF_GLOBAL_STATUS: u32 = 0x38E;
/// IA32_PERF_GLOBAL_CTRL.
pub const IA32_PERF_GLOBAL_CTRL: u32 = 0x38F;
/// IA32_PERF_GLOBAL_OVF_CTRL (v2/v3); the same MSR is IA32_PERF_GLOBAL_STATUS_RESET in v4.
pub const IA32_PERF_GLOBAL_OVF_CTRL: u32 = 0x390;
/// IA32_PERF_GLOBAL_STATUS_RESET (v4 name of 0x390).
pub const IA32_PERF_GLOBAL_STATUS_RESET: u32 = 0x390;
/// IA32_PERF_GLOBAL_STATUS_SET (v4 only).
pub const IA32_PERF_GLOBAL_STATUS_SET: u32 = 0x391;
/// IA32_PERF_GLOBAL_INUSE (v4 only, read-only).
pub const IA32_PERF_GLOBAL_INUSE: u32 = 0x392;
/// IA32_A_PMC0: full-width alias of PMC0 (when PERF_CAPABILITIES.FW_WRITE); A_PMCn = A_PMC0 + n.
pub const IA32_A_PMC0: u32 = 0x4C1;
/// MSR_LASTBRANCH_0_FROM_IP; slot n at + n.
pub const MSR_LASTBRANCH_0_FROM_IP: u32 = 0x680;
/// MSR_LASTBRANCH_0_TO_IP; slot n at + n.
pub const MSR_LASTBRANCH_0_TO_IP: u32 = 0x6C0;
/// MSR_LBR_INFO_0 (LBR format 5 and later); slot n at + n.
pub const MSR_LBR_INFO_0: u32 = 0xDC0;

/// The most LBR slots any non-architectural LBR implementation has (Skylake: 32). The MSR
/// ranges above are this long; slots at or beyond the configured depth #GP.
pub const LBR_MAX_SLOTS: u32 = 32;

// ---- IA32_DEBUGCTL (SDM Vol. 3B, "IA32_DEBUGCTL MSR") --------------------------------------

/// LBR: record last branches.
pub const DEBUGCTL_LBR: u64 = 1 << 0;
/// BTF: single-step on branches.
pub const DEBUGCTL_BTF: u64 = 1 << 1;
/// TR: send branch trace messages.
pub const DEBUGCTL_TR: u64 = 1 << 6;
/// BTS: branch trace store.
pub const DEBUGCTL_BTS: u64 = 1 << 7;
/// FREEZE_LBRS_ON_PMI.
pub const DEBUGCTL_FREEZE_LBRS_ON_PMI: u64 = 1 << 11;
/// FREEZE_PERFMON_ON_PMI.
pub const DEBUGCTL_FREEZE_PERFMON_ON_PMI: u64 = 1 << 12;
/// FREEZE_WHILE_SMM.
pub const DEBUGCTL_FREEZE_WHILE_SMM: u64 = 1 << 14;
/// RTM_DEBUG.
pub const DEBUGCTL_RTM_DEBUG: u64 = 1 << 15;

// ---- MSR_LBR_SELECT (SDM Vol. 3B, table "MSR_LBR_SELECT for ... Haswell" and later) -------
// Every filter bit SUPPRESSES the kind of branch it names when set.

/// CPL_EQ_0: do not capture branches ending in ring 0.
pub const LBR_SELECT_CPL_EQ_0: u64 = 1 << 0;
/// CPL_NEQ_0: do not capture branches ending in ring > 0.
pub const LBR_SELECT_CPL_NEQ_0: u64 = 1 << 1;
/// JCC: do not capture conditional branches.
pub const LBR_SELECT_JCC: u64 = 1 << 2;
/// NEAR_REL_CALL: do not capture near relative calls.
pub const LBR_SELECT_NEAR_REL_CALL: u64 = 1 << 3;
/// NEAR_IND_CALL: do not capture near indirect calls.
pub const LBR_SELECT_NEAR_IND_CALL: u64 = 1 << 4;
/// NEAR_RET: do not capture near returns.
pub const LBR_SELECT_NEAR_RET: u64 = 1 << 5;
/// NEAR_IND_JMP: do not capture near indirect jumps (other than calls and returns).
pub const LBR_SELECT_NEAR_IND_JMP: u64 = 1 << 6;
/// NEAR_REL_JMP: do not capture near relative jumps (other than calls).
pub const LBR_SELECT_NEAR_REL_JMP: u64 = 1 << 7;
/// FAR_BRANCH: do not capture far branches (far call/jmp/ret, interrupts, exceptions,
/// IRET, SYSCALL/SYSRET, SYSENTER/SYSEXIT).
pub const LBR_SELECT_FAR_BRANCH: u64 = 1 << 8;
/// EN_CALLSTACK: LIFO call-stack mode (calls push, returns pop).
pub const LBR_SELECT_EN_CALLSTACK: u64 = 1 << 9;
/// Every branch-type filter bit (JCC through FAR_BRANCH, bits 8:2).
pub const LBR_SELECT_ALL_TYPES: u64 = 0x1FC;
/// All defined LBR_SELECT bits; bits 63:10 are reserved.
pub const LBR_SELECT_VALID: u64 = (1 << 10) - 1;

// ---- MSR_LBR_INFO_n (LBR format 5, SDM "MSR_LBR_INFO_x") ----------------------------------

/// MISPRED: the branch was mispredicted.
pub const LBR_INFO_MISPRED: u64 = 1 << 63;
/// IN_TX: the branch retired inside a TSX transaction.
pub const LBR_INFO_IN_TX: u64 = 1 << 62;
/// TSX_ABORT: the entry records a transaction abort.
pub const LBR_INFO_TSX_ABORT: u64 = 1 << 61;
/// CYC_CNT_VALID: exists only in the architectural-LBR IA32_LBR_x_INFO (and in
/// LBR-format-7 parts); in format 5 bits 60:16 are reserved, so this model never sets it.
/// Kept here so readers decoding both formats can name it.
pub const LBR_INFO_CYC_CNT_VALID: u64 = 1 << 60;
/// CYC_CNT: core cycles since the previous LBR entry, saturating at 0xFFFF.
pub const LBR_INFO_CYC_CNT: u64 = 0xFFFF;
/// Bits of MSR_LBR_INFO_n that software may write in format 5.
pub const LBR_INFO_WRITABLE: u64 =
    LBR_INFO_MISPRED | LBR_INFO_IN_TX | LBR_INFO_TSX_ABORT | LBR_INFO_CYC_CNT;

// ---- IA32_PERF_CAPABILITIES ---------------------------------------------------------------

/// LBR_FMT (bits 5:0): the LBR record format.
pub const PERF_CAP_LBR_FMT_MASK: u64 = 0x3F;
/// LBR format 5: 64-bit LIP in FROM/TO, flags and cycles in MSR_LBR_INFO_n (Skylake).
pub const LBR_FORMAT_INFO: u64 = 5;
/// FW_WRITE (bit 13): full-width writes through IA32_A_PMCx.
pub const PERF_CAP_FW_WRITE: u64 = 1 << 13;

// ---- IA32_PERFEVTSELx (SDM "Architectural Performance Monitoring Version 1") ---------------

/// EventSelect (bits 7:0).
pub const EVTSEL_EVENT_MASK: u64 = 0xFF;
/// UMask (bits 15:8).
pub const EVTSEL_UMASK_SHIFT: u32 = 8;
/// USR: count while CPL > 0.
pub const EVTSEL_USR: u64 = 1 << 16;
/// OS: count while CPL = 0.
pub const EVTSEL_OS: u64 = 1 << 17;
/// E: edge detect.
pub const EVTSEL_EDGE: u64 = 1 << 18;
/// PC: pin control.
pub const EVTSEL_PC: u64 = 1 << 19;
/// INT: APIC interrupt (PMI) on overflow.
pub const EVTSEL_INT: u64 = 1 << 20;
/// ANY: any thread (v3).
pub const EVTSEL_ANY: u64 = 1 << 21;
/// EN: enable the counter.
pub const EVTSEL_EN: u64 = 1 << 22;
/// INV: invert the counter mask.
pub const EVTSEL_INV: u64 = 1 << 23;
/// CMASK (bits 31:24).
pub const EVTSEL_CMASK_SHIFT: u32 = 24;
/// Every writable PERFEVTSEL bit when TSX is not advertised (bits 63:32 reserved).
pub const EVTSEL_VALID: u64 = 0xFFFF_FFFF;

/// Architectural event: UnHalted Core Cycles (event 0x3C, umask 0x00).
pub const EVENT_CORE_CYCLES: u8 = 0x3C;
/// Architectural event: Instructions Retired (event 0xC0, umask 0x00).
pub const EVENT_INST_RETIRED: u8 = 0xC0;
/// Architectural event: Branch Instructions Retired (event 0xC4, umask 0x00).
pub const EVENT_BR_INST_RETIRED: u8 = 0xC4;
/// Architectural event: Branch Misses Retired (event 0xC5, umask 0x00).
pub const EVENT_BR_MISP_RETIRED: u8 = 0xC5;
/// UnHalted Reference Cycles is event 0x3C with this umask.
pub const UMASK_REF_CYCLES: u8 = 0x01;

// ---- IA32_FIXED_CTR_CTRL: one 4-bit field per fixed counter -------------------------------

/// EN field bit 0: count at CPL = 0.
pub const FIXED_CTRL_OS: u64 = 1 << 0;
/// EN field bit 1: count at CPL > 0.
pub const FIXED_CTRL_USR: u64 = 1 << 1;
/// AnyThread (bit 2 of each field, v3+).
pub const FIXED_CTRL_ANY: u64 = 1 << 2;
/// PMI (bit 3 of each field): interrupt on overflow.
pub const FIXED_CTRL_PMI: u64 = 1 << 3;
/// Width of one fixed-counter control field.
pub const FIXED_CTRL_FIELD_BITS: u32 = 4;

// ---- IA32_PERF_GLOBAL_STATUS / _CTRL / _OVF_CTRL / _STATUS_SET ----------------------------

/// Bit of fixed counter 0 in the global registers; fixed counter n is at + n.
pub const GLOBAL_FIXED0_BIT: u32 = 32;
/// Trace_ToPA_PMI (bit 55, v4).
pub const GLOBAL_STATUS_TRACE_TOPA_PMI: u64 = 1 << 55;
/// LBR_FRZ (bit 58, v4): the LBR stack is frozen.
pub const GLOBAL_STATUS_LBR_FRZ: u64 = 1 << 58;
/// CTR_FRZ (bit 59, v4): the counters are frozen.
pub const GLOBAL_STATUS_CTR_FRZ: u64 = 1 << 59;
/// ASCI (bit 60, v4).
pub const GLOBAL_STATUS_ASCI: u64 = 1 << 60;
/// Ovf_Uncore (bit 61).
pub const GLOBAL_STATUS_OVF_UNCORE: u64 = 1 << 61;
/// OvfBuf (bit 62): DS buffer overflow.
pub const GLOBAL_STATUS_OVF_BUF: u64 = 1 << 62;
/// CondChgd (bit 63).
pub const GLOBAL_STATUS_COND_CHGD: u64 = 1 << 63;
/// IA32_PERF_GLOBAL_INUSE bit 63: PMI in use.
pub const GLOBAL_INUSE_PMI: u64 = 1 << 63;

// ---- CPUID (SDM Vol. 2A, CPUID) ------------------------------------------------------------

/// CPUID.01H:ECX bit 15, PDCM: IA32_PERF_CAPABILITIES is present.
pub const CPUID_1_ECX_PDCM: u32 = 1 << 15;
/// CPUID.01H:ECX bit 2, DTES64 (64-bit debug store).
pub const CPUID_1_ECX_DTES64: u32 = 1 << 2;
/// CPUID.01H:ECX bit 4, DS-CPL.
pub const CPUID_1_ECX_DS_CPL: u32 = 1 << 4;
/// CPUID.01H:EDX bit 21, DS: debug store (BTS/PEBS).
pub const CPUID_1_EDX_DS: u32 = 1 << 21;
/// CPUID.(EAX=07H,ECX=0):EDX bit 15, Hybrid part.
pub const CPUID_7_EDX_HYBRID: u32 = 1 << 15;
/// CPUID.(EAX=07H,ECX=0):EDX bit 19, Arch LBR.
pub const CPUID_7_EDX_ARCH_LBR: u32 = 1 << 19;
/// CPUID.01H:ECX bit 5, VMX: the CPU can run hardware-accelerated guests (Intel).
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// CPUID.01H:ECX bit 31: a hypervisor runs this (virtual) CPU.
pub const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.80000001H:ECX bit 2, SVM: the CPU can run hardware-accelerated guests (AMD).
pub const CPUID_80000001_ECX_SVM: u32 = 1 << 2;
/// CPUID.80000008H:EBX bit 31, BRS: AMD Branch Sampling (Zen 3, 16 entries).
pub const CPUID_80000008_EBX_BRS: u32 = 1 << 31;
/// CPUID leaf 80000022H: AMD extended performance monitoring and debug.
pub const CPUID_LEAF_AMD_PERFMON_V2: u32 = 0x8000_0022;
/// CPUID.80000022H:EAX bit 1, LbrStack: AMD LbrExtV2 (Zen 4).
pub const CPUID_80000022_EAX_LBR_V2: u32 = 1 << 1;
/// CPUID.80000022H:EAX bit 2, LbrAndPmcFreeze: the LBR and counters freeze on a PMI.
pub const CPUID_80000022_EAX_LBR_PMC_FREEZE: u32 = 1 << 2;
/// CPUID.80000022H:EBX bits 9:4, LbrV2StackSz: LbrExtV2 entries.
pub const CPUID_80000022_EBX_LBR_V2_DEPTH_SHIFT: u32 = 4;
/// Width of `LbrV2StackSz`.
pub const CPUID_80000022_EBX_LBR_V2_DEPTH_MASK: u32 = 0x3F;
/// AMD BRS depth (AMD PPR for family 19h: 16 branch records).
pub const AMD_BRS_DEPTH: u32 = 16;
/// CPUID leaf 0AH: architectural performance monitoring.
pub const CPUID_LEAF_PMU: u32 = 0x0A;
/// CPUID leaf 1CH: architectural LBR.
pub const CPUID_LEAF_ARCH_LBR: u32 = 0x1C;
/// CPUID.0AH:EBX bit: UnHalted Core Cycles NOT available.
pub const CPUID_A_EBX_NO_CORE_CYCLES: u32 = 1 << 0;
/// CPUID.0AH:EBX bit: Instructions Retired NOT available.
pub const CPUID_A_EBX_NO_INST_RETIRED: u32 = 1 << 1;
/// CPUID.0AH:EBX bit: UnHalted Reference Cycles NOT available.
pub const CPUID_A_EBX_NO_REF_CYCLES: u32 = 1 << 2;
/// CPUID.0AH:EBX bit: LLC Reference NOT available.
pub const CPUID_A_EBX_NO_LLC_REF: u32 = 1 << 3;
/// CPUID.0AH:EBX bit: LLC Misses NOT available.
pub const CPUID_A_EBX_NO_LLC_MISSES: u32 = 1 << 4;
/// CPUID.0AH:EBX bit: Branch Instructions Retired NOT available.
pub const CPUID_A_EBX_NO_BR_INST_RETIRED: u32 = 1 << 5;
/// CPUID.0AH:EBX bit: Branch Mispredicts Retired NOT available.
pub const CPUID_A_EBX_NO_BR_MISP_RETIRED: u32 = 1 << 6;
/// The number of architectural events CPUID.0AH:EBX describes (EAX bits 31:24).
pub const CPUID_A_EBX_EVENT_COUNT: u32 = 7;

// ---- Other architectural MSRs the tracer reads -------------------------------------------

/// IA32_TIME_STAMP_COUNTER.
pub const IA32_TSC: u32 = 0x10;
/// IA32_LSTAR: SYSCALL target RIP in 64-bit mode.
pub const IA32_LSTAR: u32 = 0xC000_0082;
/// IA32_SYSENTER_EIP.
pub const IA32_SYSENTER_EIP: u32 = 0x176;
