//! The per-vCPU virtual PMU: the PMU and LBR MSRs with their exact #GP behaviour, counting,
//! counter overflow → PMI, and freeze-on-PMI as architectural performance monitoring
//! version 2 or 4 defines it.
//!
//! The model is pure state: callers feed it what the guest retired
//! ([`VirtualPmu::on_instructions`], [`VirtualPmu::on_cycles`], [`VirtualPmu::on_branch`]) and
//! route the guest's RDMSR/WRMSR to [`VirtualPmu::rdmsr`] / [`VirtualPmu::wrmsr`]. A PMI is
//! queued and collected with [`VirtualPmu::take_pmi`]; the caller delivers it as an NMI (the
//! way Linux programs LVTPC).
//!
//! What is modelled, and the simplifying choices:
//! * Counters are 48 bits wide. Legacy IA32_PMCx writes take bits 31:0 sign-extended;
//!   IA32_A_PMCx and the fixed counters take full-width writes (PERF_CAPABILITIES.FW_WRITE).
//! * Events: INST_RETIRED (0xC0, fixed 0), BR_INST_RETIRED.ALL_BRANCHES (0xC4),
//!   BR_MISP_RETIRED (0xC5, against the predictor model below), core cycles (0x3C, fixed 1)
//!   and reference cycles (0x3C umask 1, fixed 2), each qualified by USR/OS (fixed: the
//!   field's OS/USR bits), EN and IA32_PERF_GLOBAL_CTRL. Other event codes are accepted
//!   and count nothing. EDGE, INV, CMASK, PC and ANY are stored but do not change counting
//!   (a single-threaded core with at most one event per cycle).
//! * Overflow wraps the counter and sets its IA32_PERF_GLOBAL_STATUS bit; with INT (or
//!   the fixed field's PMI bit) it raises a PMI. One PMI per overflow batch.
//! * Freeze on PMI, v2 (legacy): FREEZE_LBRS_ON_PMI clears DEBUGCTL.LBR,
//!   FREEZE_PERFMON_ON_PMI clears IA32_PERF_GLOBAL_CTRL. v4 (streamlined): they set
//!   LBR_FRZ / CTR_FRZ in GLOBAL_STATUS instead; LBR and counters stay frozen until
//!   software clears the bits through IA32_PERF_GLOBAL_STATUS_RESET.
//! * Events while frozen are counted and reported ([`PmuStats`]; `frozen_events` in a
//!   snapshot is the branches lost since the previous snapshot).
//! * LBR_INFO: MISPRED from a small deterministic predictor (2-bit counters for Jcc, a
//!   last-target table for indirect branches, a 16-entry return stack); IN_TX and
//!   TSX_ABORT are always 0 (TSX is not advertised); CYC_CNT holds the core cycles since
//!   the previous LBR entry, at least 1 and saturating at 0xFFFF. CYC_CNT_VALID (bit 60)
//!   is an architectural-LBR field; in format 5 bits 60:16 are reserved, so it is never
//!   set, and an entry whose cycles are unknown has CYC_CNT 0, which is how Linux perf reads
//!   a format-5 entry without a count. The emulated LBR does not know them for the first
//!   entry of a sampled-mode window (the guest ran untraced before it: charging that time
//!   to one branch would make it look thousands of cycles slow).
//! * DEBUGCTL.BTF is stored and read back but not acted upon (the shim's own tracer uses
//!   the debug machinery; a guest wanting branch single-step gets none).
//! * IA32_PERF_GLOBAL_CTRL resets to all general-purpose enables set, as the SDM specifies
//!   for compatibility with version 1 software.

use super::branch::{BranchKind, LbrClass};
use super::lbr::{LbrDepth, LbrStack, RecordOutcome};
use super::msr::*;
use crate::snapshot::{LbrEntry, LbrSnapshot, SnapshotReason};

/// Number of general-purpose counters.
pub const GP_COUNTERS: usize = 4;
/// Number of fixed-function counters.
pub const FIXED_COUNTERS: usize = 3;
/// Counter width in bits.
pub const COUNTER_WIDTH: u32 = 48;
const COUNTER_MASK: u64 = (1 << COUNTER_WIDTH) - 1;
const GP_MASK: u64 = (1 << GP_COUNTERS) - 1;
const FIXED_MASK: u64 = ((1 << FIXED_COUNTERS) - 1) << GLOBAL_FIXED0_BIT;
const COUNTERS_MASK: u64 = GP_MASK | FIXED_MASK;

/// The architectural performance monitoring version the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PmuVersion {
    V2,
    V4,
}

impl PmuVersion {
    pub fn from_number(v: u32) -> Option<PmuVersion> {
        match v {
            2 => Some(PmuVersion::V2),
            4 => Some(PmuVersion::V4),
            _ => None,
        }
    }

    pub fn number(self) -> u32 {
        match self {
            PmuVersion::V2 => 2,
            PmuVersion::V4 => 4,
        }
    }
}

/// The shape of the virtual PMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmuConfig {
    pub version: PmuVersion,
    pub lbr_depth: LbrDepth,
}

impl Default for PmuConfig {
    fn default() -> Self {
        PmuConfig {
            version: PmuVersion::V4,
            lbr_depth: LbrDepth::D32,
        }
    }
}

/// An invalid PMU shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("PMU version {0} is not supported (choose 2 or 4)")]
    Version(u32),
    #[error("LBR depth {0} is not supported (choose 8, 16 or 32)")]
    Depth(u32),
}

impl PmuConfig {
    /// From the numbers a user gives (`--pmu-version`, `--lbr-depth`).
    pub fn new(version: u32, lbr_depth: u32) -> Result<PmuConfig, ConfigError> {
        Ok(PmuConfig {
            version: PmuVersion::from_number(version).ok_or(ConfigError::Version(version))?,
            lbr_depth: LbrDepth::from_slots(lbr_depth).ok_or(ConfigError::Depth(lbr_depth))?,
        })
    }
}

/// The RDMSR/WRMSR raises #GP(0). `why` is for logs and tests, not for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp {
    pub why: &'static str,
}

fn gp<T>(why: &'static str) -> Result<T, Gp> {
    Err(Gp { why })
}

/// One retired branch instruction (or interrupt/exception, which are far branches too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetiredBranch {
    /// The branch instruction's address (for interrupts: where execution was interrupted;
    /// for faults: the faulting instruction).
    pub from: u64,
    /// Where execution continued.
    pub to: u64,
    /// The address after the branch instruction (its not-taken path / return address).
    pub fallthrough: u64,
    pub kind: BranchKind,
    pub taken: bool,
    pub cpl_before: u8,
    pub cpl_after: u8,
}

/// Counts the model keeps for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmuStats {
    pub pmis: u64,
    /// Entries written into the LBR.
    pub lbr_records: u64,
    /// Taken branches that LBR_SELECT filtered out.
    pub lbr_filtered: u64,
    /// Taken branches that arrived while the LBR was frozen (lost to skid).
    pub frozen_branches: u64,
    /// Instructions that retired while counters were frozen.
    pub frozen_instructions: u64,
}

/// The per-vCPU virtual PMU and LBR.
#[derive(Clone, Debug)]
pub struct VirtualPmu {
    cfg: PmuConfig,
    debugctl: u64,
    lbr_select: u64,
    lbr: LbrStack,
    evtsel: [u64; GP_COUNTERS],
    pmc: [u64; GP_COUNTERS],
    fixed: [u64; FIXED_COUNTERS],
    fixed_ctrl: u64,
    global_ctrl: u64,
    global_status: u64,
    /// v2: the PMI cleared DEBUGCTL.LBR (frozen until software sets it again).
    v2_lbr_frozen: bool,
    /// v2: the PMI cleared GLOBAL_CTRL (frozen until software enables a counter again).
    v2_ctr_frozen: bool,
    pmi_pending: bool,
    last_overflow_bit: u8,
    cycles_since_lbr: u64,
    /// `cycles_since_lbr` measures the time since the previous entry (false after
    /// [`VirtualPmu::forget_lbr_cycles`], until the next entry).
    lbr_cycles_known: bool,
    frozen_since_snapshot: u64,
    stats: PmuStats,
    predictor: Predictor,
    /// Which counters count each [`Event`] at ring 0 (`[ev][0]`) and at rings 1–3
    /// (`[ev][1]`): bit i general-purpose counter i, bit 8 + i fixed counter i. What
    /// [`VirtualPmu::gp_counts`] and [`VirtualPmu::fixed_counts`] say, kept current by
    /// [`VirtualPmu::update_counting`] whenever the controls change (exact mode counts
    /// events several times per instruction).
    counting: [[u16; 2]; EVENTS],
    /// Whether any counter counts any event at ring 0 (`[0]`) and at rings 1–3 (`[1]`),
    /// kept with `counting`.
    counting_any: [bool; 2],
}

/// Number of [`Event`] kinds.
const EVENTS: usize = 6;

/// Which architectural event a counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Instructions,
    Branches,
    BranchMisses,
    CoreCycles,
    RefCycles,
    Other,
}

fn event_of_evtsel(sel: u64) -> Event {
    let code = (sel & EVTSEL_EVENT_MASK) as u8;
    let umask = (sel >> EVTSEL_UMASK_SHIFT) as u8;
    match (code, umask) {
        (EVENT_INST_RETIRED, 0) => Event::Instructions,
        (EVENT_BR_INST_RETIRED, 0) => Event::Branches,
        (EVENT_BR_MISP_RETIRED, 0) => Event::BranchMisses,
        (EVENT_CORE_CYCLES, 0) => Event::CoreCycles,
        (EVENT_CORE_CYCLES, UMASK_REF_CYCLES) => Event::RefCycles,
        _ => Event::Other,
    }
}

const FIXED_EVENTS: [Event; FIXED_COUNTERS] =
    [Event::Instructions, Event::CoreCycles, Event::RefCycles];

fn canonical(addr: u64) -> bool {
    let top = (addr as i64) >> 47;
    top == 0 || top == -1
}

impl VirtualPmu {
    pub fn new(cfg: PmuConfig) -> VirtualPmu {
        VirtualPmu {
            cfg,
            debugctl: 0,
            lbr_select: 0,
            lbr: LbrStack::new(cfg.lbr_depth),
            evtsel: [0; GP_COUNTERS],
            pmc: [0; GP_COUNTERS],
            fixed: [0; FIXED_COUNTERS],
            fixed_ctrl: 0,
            global_ctrl: GP_MASK,
            global_status: 0,
            v2_lbr_frozen: false,
            v2_ctr_frozen: false,
            pmi_pending: false,
            last_overflow_bit: 0,
            cycles_since_lbr: 0,
            lbr_cycles_known: true,
            frozen_since_snapshot: 0,
            stats: PmuStats::default(),
            predictor: Predictor::new(),
            counting: [[0; 2]; EVENTS],
            counting_any: [false; 2],
        }
        .with_counting()
    }

    pub fn config(&self) -> PmuConfig {
        self.cfg
    }

    pub fn stats(&self) -> PmuStats {
        self.stats
    }

    pub fn lbr(&self) -> &LbrStack {
        &self.lbr
    }

    /// The value IA32_PERF_CAPABILITIES reads as.
    pub fn perf_capabilities(&self) -> u64 {
        LBR_FORMAT_INFO | PERF_CAP_FW_WRITE
    }

    /// Every MSR index the model owns (including the ones it answers with #GP, such as LBR
    /// slots beyond the depth), as inclusive ranges: what the MSR filter routes to user space.
    pub fn msr_ranges() -> Vec<(u32, u32)> {
        vec![
            (IA32_PMC0, IA32_PMC0 + 7),
            (IA32_PERFEVTSEL0, IA32_PERFEVTSEL0 + 7),
            (MSR_LBR_SELECT, MSR_LBR_TOS),
            (IA32_DEBUGCTL, IA32_DEBUGCTL),
            (IA32_FIXED_CTR0, IA32_FIXED_CTR0 + 3),
            (IA32_PERF_CAPABILITIES, IA32_PERF_CAPABILITIES),
            (IA32_FIXED_CTR_CTRL, IA32_PERF_GLOBAL_INUSE),
            (IA32_A_PMC0, IA32_A_PMC0 + 7),
            (
                MSR_LASTBRANCH_0_FROM_IP,
                MSR_LASTBRANCH_0_FROM_IP + LBR_MAX_SLOTS - 1,
            ),
            (
                MSR_LASTBRANCH_0_TO_IP,
                MSR_LASTBRANCH_0_TO_IP + LBR_MAX_SLOTS - 1,
            ),
            (MSR_LBR_INFO_0, MSR_LBR_INFO_0 + LBR_MAX_SLOTS - 1),
        ]
    }

    /// Whether `index` is one of the model's MSRs.
    pub fn owns_msr(index: u32) -> bool {
        Self::msr_ranges()
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&index))
    }

    fn is_v4(&self) -> bool {
        self.cfg.version == PmuVersion::V4
    }

    /// Whether the LBR records right now.
    pub fn lbr_recording(&self) -> bool {
        self.debugctl & DEBUGCTL_LBR != 0 && self.global_status & GLOBAL_STATUS_LBR_FRZ == 0
    }

    /// Whether the LBR is held by a freeze (as opposed to simply disabled).
    pub fn lbr_frozen(&self) -> bool {
        self.v2_lbr_frozen
            || (self.global_status & GLOBAL_STATUS_LBR_FRZ != 0
                && self.debugctl & DEBUGCTL_LBR != 0)
    }

    fn counters_frozen(&self) -> bool {
        self.global_status & GLOBAL_STATUS_CTR_FRZ != 0 || self.v2_ctr_frozen
    }

    fn slot_index(index: u32, base: u32) -> Option<u32> {
        index.checked_sub(base).filter(|&n| n < LBR_MAX_SLOTS)
    }

    /// RDMSR of one of the model's MSRs.
    pub fn rdmsr(&self, index: u32) -> Result<u64, Gp> {
        if let Some(n) = Self::slot_index(index, MSR_LASTBRANCH_0_FROM_IP) {
            return self.lbr.slot(n).map(|e| e.from).ok_or(Gp {
                why: "LBR slot beyond depth",
            });
        }
        if let Some(n) = Self::slot_index(index, MSR_LASTBRANCH_0_TO_IP) {
            return self.lbr.slot(n).map(|e| e.to).ok_or(Gp {
                why: "LBR slot beyond depth",
            });
        }
        if let Some(n) = Self::slot_index(index, MSR_LBR_INFO_0) {
            return self.lbr.slot(n).map(|e| e.info).ok_or(Gp {
                why: "LBR slot beyond depth",
            });
        }
        match index {
            IA32_PERF_CAPABILITIES => Ok(self.perf_capabilities()),
            IA32_DEBUGCTL => Ok(self.debugctl),
            MSR_LBR_SELECT => Ok(self.lbr_select),
            MSR_LBR_TOS => Ok(u64::from(self.lbr.tos())),
            i if (IA32_PERFEVTSEL0..IA32_PERFEVTSEL0 + GP_COUNTERS as u32).contains(&i) => {
                Ok(self.evtsel[(i - IA32_PERFEVTSEL0) as usize])
            }
            i if (IA32_PMC0..IA32_PMC0 + GP_COUNTERS as u32).contains(&i) => {
                Ok(self.pmc[(i - IA32_PMC0) as usize])
            }
            i if (IA32_A_PMC0..IA32_A_PMC0 + GP_COUNTERS as u32).contains(&i) => {
                Ok(self.pmc[(i - IA32_A_PMC0) as usize])
            }
            i if (IA32_FIXED_CTR0..IA32_FIXED_CTR0 + FIXED_COUNTERS as u32).contains(&i) => {
                Ok(self.fixed[(i - IA32_FIXED_CTR0) as usize])
            }
            IA32_FIXED_CTR_CTRL => Ok(self.fixed_ctrl),
            IA32_PERF_GLOBAL_STATUS => Ok(self.global_status),
            IA32_PERF_GLOBAL_CTRL => Ok(self.global_ctrl),
            // Write-to-clear register: reads as 0 (as KVM's vPMU does).
            IA32_PERF_GLOBAL_OVF_CTRL => Ok(0),
            IA32_PERF_GLOBAL_STATUS_SET if self.is_v4() => Ok(0),
            IA32_PERF_GLOBAL_INUSE if self.is_v4() => Ok(self.global_inuse()),
            _ => gp("MSR not implemented by this PMU"),
        }
    }

    fn global_inuse(&self) -> u64 {
        let mut v = 0;
        for (i, sel) in self.evtsel.iter().enumerate() {
            if sel & EVTSEL_EVENT_MASK != 0 {
                v |= 1 << i;
            }
        }
        for i in 0..FIXED_COUNTERS {
            if self.fixed_field(i) & (FIXED_CTRL_OS | FIXED_CTRL_USR) != 0 {
                v |= 1 << (GLOBAL_FIXED0_BIT as usize + i);
            }
        }
        let pmi = self.evtsel.iter().any(|s| s & EVTSEL_INT != 0)
            || (0..FIXED_COUNTERS).any(|i| self.fixed_field(i) & FIXED_CTRL_PMI != 0);
        if pmi {
            v |= GLOBAL_INUSE_PMI;
        }
        v
    }

    fn fixed_field(&self, i: usize) -> u64 {
        (self.fixed_ctrl >> (i as u32 * FIXED_CTRL_FIELD_BITS)) & 0xF
    }

    fn status_reset_mask(&self) -> u64 {
        let mut m = COUNTERS_MASK | GLOBAL_STATUS_OVF_BUF | GLOBAL_STATUS_COND_CHGD;
        if self.is_v4() {
            m |= GLOBAL_STATUS_TRACE_TOPA_PMI
                | GLOBAL_STATUS_LBR_FRZ
                | GLOBAL_STATUS_CTR_FRZ
                | GLOBAL_STATUS_ASCI
                | GLOBAL_STATUS_OVF_UNCORE;
        }
        m
    }

    fn status_set_mask(&self) -> u64 {
        COUNTERS_MASK
            | GLOBAL_STATUS_TRACE_TOPA_PMI
            | GLOBAL_STATUS_LBR_FRZ
            | GLOBAL_STATUS_CTR_FRZ
            | GLOBAL_STATUS_ASCI
            | GLOBAL_STATUS_OVF_UNCORE
            | GLOBAL_STATUS_OVF_BUF
    }

    /// WRMSR of one of the model's MSRs.
    pub fn wrmsr(&mut self, index: u32, value: u64) -> Result<(), Gp> {
        if let Some(n) = Self::slot_index(index, MSR_LASTBRANCH_0_FROM_IP) {
            if !canonical(value) {
                return gp("non-canonical LBR address");
            }
            let slot = self.lbr.slot_mut(n).ok_or(Gp {
                why: "LBR slot beyond depth",
            })?;
            slot.from = value;
            return Ok(());
        }
        if let Some(n) = Self::slot_index(index, MSR_LASTBRANCH_0_TO_IP) {
            if !canonical(value) {
                return gp("non-canonical LBR address");
            }
            let slot = self.lbr.slot_mut(n).ok_or(Gp {
                why: "LBR slot beyond depth",
            })?;
            slot.to = value;
            return Ok(());
        }
        if let Some(n) = Self::slot_index(index, MSR_LBR_INFO_0) {
            if value & !LBR_INFO_WRITABLE != 0 {
                return gp("reserved LBR_INFO bits");
            }
            let slot = self.lbr.slot_mut(n).ok_or(Gp {
                why: "LBR slot beyond depth",
            })?;
            slot.info = value;
            return Ok(());
        }
        match index {
            IA32_PERF_CAPABILITIES => gp("IA32_PERF_CAPABILITIES is read-only"),
            IA32_DEBUGCTL => {
                let ok = DEBUGCTL_LBR
                    | DEBUGCTL_BTF
                    | DEBUGCTL_FREEZE_LBRS_ON_PMI
                    | DEBUGCTL_FREEZE_PERFMON_ON_PMI;
                if value & !ok != 0 {
                    return gp("unsupported DEBUGCTL bits");
                }
                if value & DEBUGCTL_LBR != 0 {
                    self.v2_lbr_frozen = false;
                }
                self.debugctl = value;
                Ok(())
            }
            MSR_LBR_SELECT => {
                if value & !LBR_SELECT_VALID != 0 {
                    return gp("reserved LBR_SELECT bits");
                }
                self.lbr_select = value;
                Ok(())
            }
            MSR_LBR_TOS => {
                if self.lbr.set_tos(value) {
                    Ok(())
                } else {
                    gp("LBR_TOS beyond depth")
                }
            }
            i if (IA32_PERFEVTSEL0..IA32_PERFEVTSEL0 + GP_COUNTERS as u32).contains(&i) => {
                if value & !EVTSEL_VALID != 0 {
                    return gp("reserved PERFEVTSEL bits");
                }
                self.evtsel[(i - IA32_PERFEVTSEL0) as usize] = value;
                self.update_counting();
                Ok(())
            }
            i if (IA32_PMC0..IA32_PMC0 + GP_COUNTERS as u32).contains(&i) => {
                // Legacy alias: bits 31:0 written, sign-extended to the counter width.
                let v = (value as u32 as i32 as i64 as u64) & COUNTER_MASK;
                self.pmc[(i - IA32_PMC0) as usize] = v;
                Ok(())
            }
            i if (IA32_A_PMC0..IA32_A_PMC0 + GP_COUNTERS as u32).contains(&i) => {
                if value & !COUNTER_MASK != 0 {
                    return gp("value wider than the counter");
                }
                self.pmc[(i - IA32_A_PMC0) as usize] = value;
                Ok(())
            }
            i if (IA32_FIXED_CTR0..IA32_FIXED_CTR0 + FIXED_COUNTERS as u32).contains(&i) => {
                if value & !COUNTER_MASK != 0 {
                    return gp("value wider than the counter");
                }
                self.fixed[(i - IA32_FIXED_CTR0) as usize] = value;
                Ok(())
            }
            IA32_FIXED_CTR_CTRL => {
                if value >> (FIXED_COUNTERS as u32 * FIXED_CTRL_FIELD_BITS) != 0 {
                    return gp("reserved FIXED_CTR_CTRL bits");
                }
                self.fixed_ctrl = value;
                self.update_counting();
                Ok(())
            }
            IA32_PERF_GLOBAL_STATUS => gp("IA32_PERF_GLOBAL_STATUS is read-only"),
            IA32_PERF_GLOBAL_CTRL => {
                if value & !COUNTERS_MASK != 0 {
                    return gp("reserved PERF_GLOBAL_CTRL bits");
                }
                if value != 0 {
                    self.v2_ctr_frozen = false;
                }
                self.global_ctrl = value;
                self.update_counting();
                Ok(())
            }
            IA32_PERF_GLOBAL_OVF_CTRL => {
                if value & !self.status_reset_mask() != 0 {
                    return gp("reserved GLOBAL_STATUS_RESET bits");
                }
                self.global_status &= !value;
                Ok(())
            }
            IA32_PERF_GLOBAL_STATUS_SET if self.is_v4() => {
                if value & !self.status_set_mask() != 0 {
                    return gp("reserved GLOBAL_STATUS_SET bits");
                }
                self.global_status |= value;
                Ok(())
            }
            IA32_PERF_GLOBAL_INUSE if self.is_v4() => gp("IA32_PERF_GLOBAL_INUSE is read-only"),
            _ => gp("MSR not implemented by this PMU"),
        }
    }

    /// GP counter `i` counts `ev` at `cpl` right now.
    fn gp_counts(&self, i: usize, ev: Event, cpl: u8) -> bool {
        let sel = self.evtsel[i];
        sel & EVTSEL_EN != 0
            && self.global_ctrl & (1 << i) != 0
            && event_of_evtsel(sel) == ev
            && if cpl == 0 {
                sel & EVTSEL_OS != 0
            } else {
                sel & EVTSEL_USR != 0
            }
    }

    fn fixed_counts(&self, i: usize, ev: Event, cpl: u8) -> bool {
        let field = self.fixed_field(i);
        FIXED_EVENTS[i] == ev
            && self.global_ctrl & (1 << (GLOBAL_FIXED0_BIT as usize + i)) != 0
            && if cpl == 0 {
                field & FIXED_CTRL_OS != 0
            } else {
                field & FIXED_CTRL_USR != 0
            }
    }

    /// Recomputes [`VirtualPmu::counting`] from the controls.
    fn update_counting(&mut self) {
        const ALL: [Event; EVENTS] = [
            Event::Instructions,
            Event::Branches,
            Event::BranchMisses,
            Event::CoreCycles,
            Event::RefCycles,
            Event::Other,
        ];
        for ev in ALL {
            for (ring, cpl) in [(0, 0u8), (1, 3u8)] {
                let mut m = 0u16;
                for i in 0..GP_COUNTERS {
                    if self.gp_counts(i, ev, cpl) {
                        m |= 1 << i;
                    }
                }
                for i in 0..FIXED_COUNTERS {
                    if self.fixed_counts(i, ev, cpl) {
                        m |= 1 << (8 + i);
                    }
                }
                self.counting[ev as usize][ring] = m;
            }
        }
        for ring in 0..2 {
            self.counting_any[ring] = self.counting.iter().any(|c| c[ring] != 0);
        }
    }

    fn with_counting(mut self) -> VirtualPmu {
        self.update_counting();
        self
    }

    /// Adds `n` occurrences of `ev` at `cpl` to every counter counting it. (Inlined: in
    /// exact mode it runs several times per retired batch and per branch, and mostly finds
    /// nothing counting the event.)
    #[inline]
    fn count(&mut self, ev: Event, n: u64, cpl: u8) {
        if n == 0 {
            return;
        }
        if self.counting[ev as usize][usize::from(cpl != 0)] == 0 {
            if ev == Event::Instructions && self.counters_frozen() {
                self.stats.frozen_instructions += n;
            }
            return;
        }
        self.count_in_counters(ev, n, cpl);
    }

    /// [`VirtualPmu::count`] when some counter counts `ev` at `cpl`.
    #[inline(never)]
    fn count_in_counters(&mut self, ev: Event, n: u64, cpl: u8) {
        if self.counters_frozen() {
            if ev == Event::Instructions {
                self.stats.frozen_instructions += n;
            }
            return;
        }
        let counting = self.counting[ev as usize][usize::from(cpl != 0)];
        let mut pmi = false;
        for i in 0..GP_COUNTERS {
            if counting & (1 << i) != 0 {
                let (v, ovf) = add48(self.pmc[i], n);
                self.pmc[i] = v;
                if ovf {
                    self.global_status |= 1 << i;
                    self.last_overflow_bit = i as u8;
                    pmi |= self.evtsel[i] & EVTSEL_INT != 0;
                }
            }
        }
        for i in 0..FIXED_COUNTERS {
            if counting & (1 << (8 + i)) != 0 {
                let (v, ovf) = add48(self.fixed[i], n);
                self.fixed[i] = v;
                if ovf {
                    let bit = GLOBAL_FIXED0_BIT as usize + i;
                    self.global_status |= 1 << bit;
                    self.last_overflow_bit = bit as u8;
                    pmi |= self.fixed_field(i) & FIXED_CTRL_PMI != 0;
                }
            }
        }
        if pmi {
            self.raise_pmi();
        }
    }

    /// The PMI: freeze as the version and DEBUGCTL say, and queue the interrupt.
    fn raise_pmi(&mut self) {
        self.stats.pmis += 1;
        self.pmi_pending = true;
        let lbrs = self.debugctl & DEBUGCTL_FREEZE_LBRS_ON_PMI != 0;
        let perfmon = self.debugctl & DEBUGCTL_FREEZE_PERFMON_ON_PMI != 0;
        match self.cfg.version {
            PmuVersion::V2 => {
                if lbrs && self.debugctl & DEBUGCTL_LBR != 0 {
                    self.debugctl &= !DEBUGCTL_LBR;
                    self.v2_lbr_frozen = true;
                }
                if perfmon {
                    self.global_ctrl = 0;
                    self.update_counting();
                    self.v2_ctr_frozen = true;
                }
            }
            PmuVersion::V4 => {
                if lbrs {
                    self.global_status |= GLOBAL_STATUS_LBR_FRZ;
                }
                if perfmon {
                    self.global_status |= GLOBAL_STATUS_CTR_FRZ;
                }
            }
        }
    }

    /// Takes the queued PMI, if any: the caller injects an NMI.
    pub fn take_pmi(&mut self) -> bool {
        std::mem::take(&mut self.pmi_pending)
    }

    /// Whether a PMI is waiting to be delivered.
    #[inline]
    pub fn pmi_pending(&self) -> bool {
        self.pmi_pending
    }

    /// The IA32_PERF_GLOBAL_STATUS bit of the counter that overflowed last.
    pub fn last_overflow_bit(&self) -> u8 {
        self.last_overflow_bit
    }

    /// `n` non-branch instructions retired at `cpl`.
    #[inline]
    pub fn on_instructions(&mut self, n: u64, cpl: u8) {
        self.count(Event::Instructions, n, cpl);
    }

    /// `n` core clock cycles passed at `cpl` (reference cycles advance with them: the
    /// model runs at its nominal frequency).
    #[inline]
    pub fn on_cycles(&mut self, n: u64, cpl: u8) {
        self.cycles_since_lbr = self.cycles_since_lbr.saturating_add(n);
        self.count(Event::CoreCycles, n, cpl);
        self.count(Event::RefCycles, n, cpl);
    }

    /// A branch retired (taken or not), or an interrupt/exception was delivered. Records it
    /// in the LBR first, then counts it, so the branch that overflows a counter is the
    /// newest LBR entry at the PMI.
    #[inline]
    pub fn on_branch(&mut self, b: RetiredBranch) {
        let mispred = self.predictor.predict_and_update(&b);
        if b.taken {
            self.record_lbr(&b, mispred);
        }
        if b.kind.is_instruction() {
            self.count(Event::Instructions, 1, b.cpl_before);
            self.count(Event::Branches, 1, b.cpl_before);
            if mispred {
                self.count(Event::BranchMisses, 1, b.cpl_before);
            }
        }
    }

    /// `n` non-branch instructions retired at `b.cpl_before`, then the branch `b`, each
    /// instruction a core (and reference) cycle: what [`Self::on_instructions`]`(n)`,
    /// [`Self::on_cycles`]`(n)`, `on_cycles(1)` for a branch instruction and
    /// [`Self::on_branch`]`(b)` do in that order, in one call (exact mode's interpreter
    /// retires its batches this way, a branch every few instructions). With no counter
    /// counting at that ring, what is left is the time since the last LBR entry, the
    /// predictor, the LBR and the instructions a freeze kept from the counters.
    pub fn on_batch_then_branch(&mut self, n: u64, b: RetiredBranch) {
        let cpl = b.cpl_before;
        let insn = b.kind.is_instruction();
        if self.counting_any[usize::from(cpl != 0)] {
            self.on_instructions(n, cpl);
            self.on_cycles(n, cpl);
            if insn {
                self.on_cycles(1, cpl);
            }
            self.on_branch(b);
            return;
        }
        let cycles = n + u64::from(insn);
        self.cycles_since_lbr = self.cycles_since_lbr.saturating_add(cycles);
        let mispred = self.predictor.predict_and_update(&b);
        if b.taken {
            self.record_lbr(&b, mispred);
        }
        // (What `count` does when nothing counts: neither the predictor nor the LBR
        // changes a freeze.)
        if self.counters_frozen() {
            self.stats.frozen_instructions += cycles;
        }
    }

    /// Sampled mode's tracing window: the branch enters the LBR (and trains the predictor)
    /// but no counter counts it; the window's cost is charged to the counters afterwards as
    /// time.
    pub fn on_branch_lbr_only(&mut self, b: RetiredBranch) {
        let mispred = self.predictor.predict_and_update(&b);
        if b.taken {
            self.record_lbr(&b, mispred);
        }
    }

    /// Cycles that pass for LBR_INFO.CYC_CNT only (see [`Self::on_branch_lbr_only`]).
    pub fn on_lbr_cycles(&mut self, n: u64) {
        self.cycles_since_lbr = self.cycles_since_lbr.saturating_add(n);
    }

    /// The time since the previous LBR entry is not known (it ran untraced, as before a
    /// sampled-mode window): the next entry's CYC_CNT is 0, "no count" (see the module doc).
    pub fn forget_lbr_cycles(&mut self) {
        self.lbr_cycles_known = false;
    }

    /// Sampled mode, a window opens: the entries still in the LBR are an earlier
    /// window's, separated from the new ones by untraced code. Paired with them, the
    /// window's oldest entry would make a fall-through "range" across code nobody saw
    /// run (a snapshot taken before the window is full, such as the last one of a run,
    /// showed it to BOLT as traces that do not match the code). Empty slots (all zero)
    /// make no range.
    pub fn clear_lbr(&mut self) {
        self.lbr.clear();
    }

    fn record_lbr(&mut self, b: &RetiredBranch, mispred: bool) {
        if !self.lbr_recording() {
            if self.lbr_frozen() {
                self.stats.frozen_branches += 1;
                self.frozen_since_snapshot += 1;
            }
            return;
        }
        let mut info = if self.lbr_cycles_known {
            self.cycles_since_lbr.clamp(1, LBR_INFO_CYC_CNT)
        } else {
            0
        };
        if mispred {
            info |= LBR_INFO_MISPRED;
        }
        match self
            .lbr
            .record(self.lbr_select, b.kind, b.from, b.to, info, b.cpl_after)
        {
            RecordOutcome::Pushed | RecordOutcome::Popped => {
                self.stats.lbr_records += 1;
                self.cycles_since_lbr = 0;
                self.lbr_cycles_known = true;
            }
            RecordOutcome::Filtered => self.stats.lbr_filtered += 1,
        }
    }

    /// How many more instructions retiring at `cpl` (each also one core and reference
    /// cycle, as in exact mode) until a counter with PMI enabled overflows; `None` if none
    /// would. 1 means the very next instruction overflows one.
    pub fn instructions_until_pmi(&self, cpl: u8) -> Option<u64> {
        self.until_pmi(
            &[Event::Instructions, Event::CoreCycles, Event::RefCycles],
            cpl,
        )
    }

    /// Whether retiring one more branch instruction at `cpl` could raise a PMI (through an
    /// instruction, cycle, branch or branch-miss counter one event from overflowing).
    pub fn next_branch_may_pmi(&self, cpl: u8) -> bool {
        self.until_pmi(
            &[
                Event::Instructions,
                Event::CoreCycles,
                Event::RefCycles,
                Event::Branches,
                Event::BranchMisses,
            ],
            cpl,
        ) == Some(1)
    }

    /// How many more core cycles at `cpl` until a cycle counter with PMI enabled overflows.
    pub fn cycles_until_pmi(&self, cpl: u8) -> Option<u64> {
        self.until_pmi(&[Event::CoreCycles, Event::RefCycles], cpl)
    }

    fn until_pmi(&self, events: &[Event], cpl: u8) -> Option<u64> {
        if self.counters_frozen() {
            return None;
        }
        let mut best: Option<u64> = None;
        for &ev in events {
            for i in 0..GP_COUNTERS {
                if self.gp_counts(i, ev, cpl) && self.evtsel[i] & EVTSEL_INT != 0 {
                    let left = (1 << COUNTER_WIDTH) - self.pmc[i];
                    best = Some(best.map_or(left, |b| b.min(left)));
                }
            }
            for i in 0..FIXED_COUNTERS {
                if self.fixed_counts(i, ev, cpl) && self.fixed_field(i) & FIXED_CTRL_PMI != 0 {
                    let left = (1 << COUNTER_WIDTH) - self.fixed[i];
                    best = Some(best.map_or(left, |b| b.min(left)));
                }
            }
        }
        best
    }

    /// The LBR as a snapshot, and the count of branches lost to a freeze since the previous
    /// snapshot (which this resets).
    pub fn snapshot(&mut self, ctx: SnapshotContext) -> LbrSnapshot {
        let reason = ctx.reason.unwrap_or(SnapshotReason::Pmi {
            counter: self.last_overflow_bit,
        });
        LbrSnapshot {
            vcpu: ctx.vcpu,
            host_time_ns: ctx.host_time_ns,
            guest_tsc: ctx.guest_tsc,
            reason,
            tos: self.lbr.tos(),
            entries: self.lbr.entries().to_vec(),
            guest_ip: ctx.guest_ip,
            guest_sp: ctx.guest_sp,
            guest_fp: ctx.guest_fp,
            cr3: ctx.cr3,
            guest_stack: ctx.guest_stack,
            frozen_events: std::mem::take(&mut self.frozen_since_snapshot),
        }
    }

    /// The LBR entries newest first.
    pub fn lbr_newest_first(&self) -> Vec<LbrEntry> {
        self.lbr.newest_first().copied().collect()
    }
}

/// What the caller knows about the moment of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotContext {
    pub vcpu: u32,
    pub host_time_ns: u64,
    pub guest_tsc: u64,
    /// `None`: a PMI snapshot naming the counter that overflowed last.
    pub reason: Option<SnapshotReason>,
    pub guest_ip: u64,
    pub guest_sp: u64,
    pub guest_fp: u64,
    pub cr3: u64,
    pub guest_stack: Vec<u64>,
}

/// Adds `n` to a 48-bit counter: the wrapped value and whether it overflowed.
fn add48(v: u64, n: u64) -> (u64, bool) {
    let sum = u128::from(v) + u128::from(n);
    (
        (sum & u128::from(COUNTER_MASK)) as u64,
        sum > u128::from(COUNTER_MASK),
    )
}

/// A small deterministic branch predictor, so MISPRED and BR_MISP_RETIRED mean something:
/// 2-bit saturating counters for conditional branches, a last-target table for indirect
/// jumps and calls, and a return stack for near returns (direct-mapped tables, aliasing
/// like real ones).
#[derive(Clone, Debug)]
struct Predictor {
    counters: Vec<u8>,
    targets: Vec<u64>,
    ras: Vec<u64>,
}

const PREDICTOR_ENTRIES: usize = 4096;
const RAS_DEPTH: usize = 16;

impl Predictor {
    fn new() -> Predictor {
        Predictor {
            counters: vec![1; PREDICTOR_ENTRIES],
            targets: vec![0; PREDICTOR_ENTRIES],
            ras: Vec::with_capacity(RAS_DEPTH),
        }
    }

    fn slot(addr: u64) -> usize {
        ((addr ^ (addr >> 12)) as usize) % PREDICTOR_ENTRIES
    }

    /// Whether `b` was mispredicted; trains the tables.
    #[inline(always)]
    fn predict_and_update(&mut self, b: &RetiredBranch) -> bool {
        match b.kind.lbr_class() {
            LbrClass::Jcc => {
                let c = &mut self.counters[Self::slot(b.from)];
                let predicted_taken = *c >= 2;
                *c = if b.taken {
                    (*c + 1).min(3)
                } else {
                    c.saturating_sub(1)
                };
                predicted_taken != b.taken
            }
            LbrClass::NearIndJmp | LbrClass::NearIndCall => {
                if b.kind == BranchKind::CallInd {
                    self.push_return(b.fallthrough);
                }
                let t = &mut self.targets[Self::slot(b.from)];
                let miss = *t != b.to;
                *t = b.to;
                miss
            }
            LbrClass::NearRelCall => {
                self.push_return(b.fallthrough);
                false
            }
            LbrClass::NearRet => self.ras.pop() != Some(b.to),
            LbrClass::NearRelJmp | LbrClass::Far => false,
        }
    }

    fn push_return(&mut self, addr: u64) {
        if self.ras.len() == RAS_DEPTH {
            self.ras.remove(0);
        }
        self.ras.push(addr);
    }
}

#[cfg(test)]
mod tests;
