//! The LBR stack itself: FROM/TO/INFO slots, the top-of-stack pointer and MSR_LBR_SELECT
//! filtering, as the SDM describes the non-architectural LBR of LBR format 5 (Skylake).
//!
//! * A recorded branch advances TOS by one modulo the depth, then fills the slot at TOS
//!   (so TOS always names the most recent entry).
//! * MSR_LBR_SELECT bits *suppress* what they name. CPL_EQ_0 / CPL_NEQ_0 look at the
//!   privilege level at which the branch *ends* (its target), as the SDM words it.
//! * Call-stack mode (EN_CALLSTACK): near calls push an entry, near returns pop the entry of
//!   the matching call. The SDM defines the mode only together with a filter that keeps
//!   just near calls and returns; other branch kinds that pass the filter are recorded like
//!   calls (pushed), which is what the SDM leaves undefined.
//!
//! Modelling choice (the SDM does not say): a pop clears the popped slot (FROM/TO/INFO = 0)
//! before TOS moves back, so a reader walking back from TOS until it finds FROM = 0 (what
//! Linux does in call-stack mode) sees exactly the live call chain; a pop on an empty stack
//! (the slot at TOS already 0) leaves TOS alone.

use super::branch::{BranchKind, LbrClass};
use super::msr::*;
use crate::snapshot::LbrEntry;

/// The LBR depths a non-architectural LBR comes in (8: Core/Atom, 16: Nehalem to Broadwell,
/// 32: Skylake and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LbrDepth {
    D8,
    D16,
    D32,
}

impl LbrDepth {
    /// From a slot count; `None` unless 8, 16 or 32.
    pub fn from_slots(n: u32) -> Option<LbrDepth> {
        match n {
            8 => Some(LbrDepth::D8),
            16 => Some(LbrDepth::D16),
            32 => Some(LbrDepth::D32),
            _ => None,
        }
    }

    pub fn slots(self) -> u32 {
        match self {
            LbrDepth::D8 => 8,
            LbrDepth::D16 => 16,
            LbrDepth::D32 => 32,
        }
    }
}

/// Whether MSR_LBR_SELECT lets a taken branch of `class` ending at privilege level
/// `cpl_after` into the LBR.
pub fn select_allows(select: u64, class: LbrClass, cpl_after: u8) -> bool {
    if cpl_after == 0 && select & LBR_SELECT_CPL_EQ_0 != 0 {
        return false;
    }
    if cpl_after != 0 && select & LBR_SELECT_CPL_NEQ_0 != 0 {
        return false;
    }
    let suppress = match class {
        LbrClass::Jcc => LBR_SELECT_JCC,
        LbrClass::NearRelCall => LBR_SELECT_NEAR_REL_CALL,
        LbrClass::NearIndCall => LBR_SELECT_NEAR_IND_CALL,
        LbrClass::NearRet => LBR_SELECT_NEAR_RET,
        LbrClass::NearIndJmp => LBR_SELECT_NEAR_IND_JMP,
        LbrClass::NearRelJmp => LBR_SELECT_NEAR_REL_JMP,
        LbrClass::Far => LBR_SELECT_FAR_BRANCH,
    };
    select & suppress == 0
}

/// The FROM/TO/INFO ring with TOS.
#[derive(Clone, Debug)]
pub struct LbrStack {
    entries: Vec<LbrEntry>,
    tos: u32,
}

/// What [`LbrStack::record`] did with a branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// A new entry is at TOS.
    Pushed,
    /// Call-stack mode: a return removed its call's entry.
    Popped,
    /// LBR_SELECT filtered the branch out.
    Filtered,
}

impl LbrStack {
    pub fn new(depth: LbrDepth) -> LbrStack {
        LbrStack {
            entries: vec![LbrEntry::default(); depth.slots() as usize],
            tos: 0,
        }
    }

    pub fn depth(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn tos(&self) -> u32 {
        self.tos
    }

    pub fn entries(&self) -> &[LbrEntry] {
        &self.entries
    }

    /// Slot `n`, or `None` at or beyond the depth.
    pub fn slot(&self, n: u32) -> Option<&LbrEntry> {
        self.entries.get(n as usize)
    }

    pub fn slot_mut(&mut self, n: u32) -> Option<&mut LbrEntry> {
        self.entries.get_mut(n as usize)
    }

    /// Empties every slot (TOS stays where it is).
    pub fn clear(&mut self) {
        self.entries.fill(LbrEntry::default());
    }

    /// Sets TOS; `false` (and no change) when `tos` is not below the depth.
    pub fn set_tos(&mut self, tos: u64) -> bool {
        if tos >= u64::from(self.depth()) {
            return false;
        }
        self.tos = tos as u32;
        true
    }

    /// Offers one taken branch to the stack under MSR_LBR_SELECT `select`.
    pub fn record(
        &mut self,
        select: u64,
        kind: BranchKind,
        from: u64,
        to: u64,
        info: u64,
        cpl_after: u8,
    ) -> RecordOutcome {
        let class = kind.lbr_class();
        if !select_allows(select, class, cpl_after) {
            return RecordOutcome::Filtered;
        }
        if select & LBR_SELECT_EN_CALLSTACK != 0 && class == LbrClass::NearRet {
            let top = &mut self.entries[self.tos as usize];
            if top.from != 0 || top.to != 0 {
                *top = LbrEntry::default();
                let depth = self.depth();
                self.tos = (self.tos + depth - 1) % depth;
            }
            return RecordOutcome::Popped;
        }
        self.tos = (self.tos + 1) % self.depth();
        self.entries[self.tos as usize] = LbrEntry { from, to, info };
        RecordOutcome::Pushed
    }

    /// The entries newest first (following TOS backwards), including empty slots.
    pub fn newest_first(&self) -> impl Iterator<Item = &LbrEntry> + '_ {
        let depth = self.entries.len();
        let tos = self.tos as usize;
        (0..depth).map(move |i| &self.entries[(tos + depth - i) % depth])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(s: &mut LbrStack, sel: u64, kind: BranchKind, from: u64) -> RecordOutcome {
        s.record(sel, kind, from, from + 0x100, 0, 3)
    }

    #[test]
    fn depth_parsing() {
        assert_eq!(LbrDepth::from_slots(16), Some(LbrDepth::D16));
        assert_eq!(LbrDepth::from_slots(12), None);
        assert_eq!(LbrDepth::D8.slots(), 8);
    }

    #[test]
    fn tos_wraps_modulo_depth_and_points_at_newest() {
        let mut s = LbrStack::new(LbrDepth::D8);
        for i in 1..=10u64 {
            push(&mut s, 0, BranchKind::JmpRel, i);
        }
        // 10 pushes starting from TOS 0: TOS = 10 mod 8 = 2.
        assert_eq!(s.tos(), 2);
        assert_eq!(s.slot(2).unwrap().from, 10);
        assert_eq!(
            s.slot(3).unwrap().from,
            3,
            "oldest surviving entry after wrap"
        );
        let order: Vec<u64> = s.newest_first().map(|e| e.from).collect();
        assert_eq!(order, vec![10, 9, 8, 7, 6, 5, 4, 3]);
    }

    #[test]
    fn set_tos_rejects_values_beyond_depth() {
        let mut s = LbrStack::new(LbrDepth::D16);
        assert!(s.set_tos(15));
        assert!(!s.set_tos(16));
        assert_eq!(s.tos(), 15);
    }

    #[test]
    fn each_type_filter_suppresses_only_its_kind() {
        use BranchKind::*;
        let cases: &[(u64, BranchKind)] = &[
            (LBR_SELECT_JCC, Jcc),
            (LBR_SELECT_NEAR_REL_CALL, CallRel),
            (LBR_SELECT_NEAR_IND_CALL, CallInd),
            (LBR_SELECT_NEAR_RET, Ret),
            (LBR_SELECT_NEAR_IND_JMP, JmpInd),
            (LBR_SELECT_NEAR_REL_JMP, JmpRel),
            (LBR_SELECT_FAR_BRANCH, FarJmp),
            (LBR_SELECT_FAR_BRANCH, Syscall),
            (LBR_SELECT_FAR_BRANCH, Iret),
            (LBR_SELECT_FAR_BRANCH, Interrupt),
            (LBR_SELECT_FAR_BRANCH, Exception),
        ];
        let all = [
            Jcc, CallRel, CallInd, Ret, JmpInd, JmpRel, FarJmp, FarCall, FarRet, Iret, Syscall,
            Sysret, SoftInt, Interrupt, Exception,
        ];
        for &(bit, suppressed) in cases {
            for &k in &all {
                let allowed = select_allows(bit, k.lbr_class(), 3);
                assert_eq!(
                    allowed,
                    k.lbr_class() != suppressed.lbr_class(),
                    "select {bit:#x} kind {k:?}"
                );
            }
        }
    }

    #[test]
    fn cpl_filters_look_at_the_branch_target() {
        let k = LbrClass::NearRelJmp;
        assert!(!select_allows(LBR_SELECT_CPL_EQ_0, k, 0));
        assert!(select_allows(LBR_SELECT_CPL_EQ_0, k, 3));
        assert!(select_allows(LBR_SELECT_CPL_NEQ_0, k, 0));
        assert!(!select_allows(LBR_SELECT_CPL_NEQ_0, k, 3));
        assert!(!select_allows(LBR_SELECT_CPL_NEQ_0, k, 1));
        // A SYSCALL from ring 3 ends in ring 0: user-only filtering drops it.
        let mut s = LbrStack::new(LbrDepth::D8);
        let out = s.record(
            LBR_SELECT_CPL_EQ_0,
            BranchKind::Syscall,
            0x401000,
            0xffff_8000,
            0,
            0,
        );
        assert_eq!(out, RecordOutcome::Filtered);
        assert_eq!(s.tos(), 0);
        assert_eq!(*s.slot(0).unwrap(), LbrEntry::default());
    }

    #[test]
    fn call_stack_mode_reflects_the_live_call_chain() {
        let sel = LBR_SELECT_EN_CALLSTACK
            | LBR_SELECT_JCC
            | LBR_SELECT_NEAR_IND_JMP
            | LBR_SELECT_NEAR_REL_JMP
            | LBR_SELECT_FAR_BRANCH;
        let mut s = LbrStack::new(LbrDepth::D8);
        // main calls a, a calls b, b returns, a calls c (indirect): chain main→a→c.
        assert_eq!(
            push(&mut s, sel, BranchKind::CallRel, 0x10),
            RecordOutcome::Pushed
        );
        assert_eq!(
            push(&mut s, sel, BranchKind::CallRel, 0x20),
            RecordOutcome::Pushed
        );
        assert_eq!(
            push(&mut s, sel, BranchKind::Jcc, 0x28),
            RecordOutcome::Filtered
        );
        assert_eq!(
            push(&mut s, sel, BranchKind::Ret, 0x30),
            RecordOutcome::Popped
        );
        assert_eq!(
            push(&mut s, sel, BranchKind::CallInd, 0x24),
            RecordOutcome::Pushed
        );
        let live: Vec<u64> = s
            .newest_first()
            .take_while(|e| e.from != 0)
            .map(|e| e.from)
            .collect();
        assert_eq!(live, vec![0x24, 0x10]);
        // Return twice, then once more than there were calls: stack empty, TOS stays.
        push(&mut s, sel, BranchKind::Ret, 0x40);
        push(&mut s, sel, BranchKind::Ret, 0x50);
        let tos = s.tos();
        push(&mut s, sel, BranchKind::Ret, 0x60);
        assert_eq!(s.tos(), tos);
        assert!(s.entries().iter().all(|e| *e == LbrEntry::default()));
    }

    #[test]
    fn returns_are_plain_entries_without_call_stack_mode() {
        let mut s = LbrStack::new(LbrDepth::D8);
        push(&mut s, 0, BranchKind::CallRel, 0x10);
        assert_eq!(
            push(&mut s, 0, BranchKind::Ret, 0x20),
            RecordOutcome::Pushed
        );
        assert_eq!(s.tos(), 2);
    }
}
