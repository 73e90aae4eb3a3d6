//! Decoding guest LBR snapshots into the same [`Branch`] form perf gives for host branch
//! stacks, so both feed one branch/range aggregation.

use lbrprof_data::model::{Branch, BranchFlags, LbrSnapshot};

/// `MSR_LBR_INFO_x` bits, as the Intel SDM (vol. 3B, "LBR stack") names them.
pub mod lbr_info {
    /// MISPRED: the branch was mispredicted.
    pub const LBR_INFO_MISPRED: u64 = 1 << 63;
    /// IN_TX: the branch retired inside a TSX transaction.
    pub const LBR_INFO_IN_TX: u64 = 1 << 62;
    /// TSX_ABORT: the entry records a transaction abort.
    pub const LBR_INFO_TSX_ABORT: u64 = 1 << 61;
    /// CYC_CNT: core cycles since the previous LBR entry (saturating).
    pub const LBR_INFO_CYC_CNT_MASK: u64 = 0xffff;
}

/// The snapshot's branches, newest first (perf's order), with LBR_INFO decoded.
/// The branch kind is left unknown (the LBR does not record it); reports classify it by
/// decoding the source instruction when the guest image is available.
pub fn snapshot_branches(s: &LbrSnapshot) -> Vec<Branch> {
    use lbr_info::*;
    s.newest_first()
        .map(|e| Branch {
            from: e.from,
            to: e.to,
            flags: BranchFlags {
                mispred: e.info & LBR_INFO_MISPRED != 0,
                predicted: e.info & LBR_INFO_MISPRED == 0,
                in_tx: e.info & LBR_INFO_IN_TX != 0,
                abort: e.info & LBR_INFO_TSX_ABORT != 0,
                cycles: (e.info & LBR_INFO_CYC_CNT_MASK) as u16,
                ..BranchFlags::default()
            },
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lbrprof_data::model::{LbrEntry, SnapshotReason};

    /// A snapshot whose slots hold `(from, to, info)` in MSR index order.
    pub fn snapshot(tos: u32, slots: &[(u64, u64, u64)]) -> LbrSnapshot {
        LbrSnapshot {
            vcpu: 0,
            host_time_ns: 0,
            guest_tsc: 0,
            reason: SnapshotReason::Pmi { counter: 0 },
            tos,
            entries: slots
                .iter()
                .map(|&(from, to, info)| LbrEntry { from, to, info })
                .collect(),
            guest_ip: 0x1010,
            guest_sp: 0,
            guest_fp: 0,
            cr3: 0,
            guest_stack: vec![0x2000],
            frozen_events: 0,
        }
    }

    #[test]
    fn decodes_order_and_info_bits() {
        let s = snapshot(
            1,
            &[
                (0x10, 0x20, 5),
                (0x30, 0x40, lbr_info::LBR_INFO_MISPRED | 7),
                (0, 0, 0),
                (
                    0x50,
                    0x60,
                    lbr_info::LBR_INFO_IN_TX | lbr_info::LBR_INFO_TSX_ABORT,
                ),
            ],
        );
        let b = snapshot_branches(&s);
        let froms: Vec<u64> = b.iter().map(|b| b.from).collect();
        assert_eq!(froms, vec![0x30, 0x10, 0x50]);
        assert!(b[0].flags.mispred && !b[0].flags.predicted);
        assert_eq!(b[0].flags.cycles, 7);
        assert!(!b[1].flags.mispred && b[1].flags.predicted);
        assert_eq!(b[1].flags.cycles, 5);
        assert!(b[2].flags.in_tx && b[2].flags.abort);
    }
}
