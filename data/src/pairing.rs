//! Pairing host samples with guest LBR snapshots.
//!
//! The rules (also in `lbrprof report`'s man page):
//!
//! 1. Both sides are on the host's CLOCK_MONOTONIC: host samples carry the sample time,
//!    snapshots the time the (virtual) PMU froze the guest LBR.
//! 2. A host sample is a candidate only if its thread is a vCPU thread of the recorded VM
//!    (known from the recording's vCPU records) and it was taken while that thread was
//!    inside KVM_RUN (decided by the caller, from the sample's kernel frames or its guest
//!    cpumode).
//! 3. A candidate pairs with the snapshot *of the same vCPU* nearest in time, if that
//!    snapshot is at most `window_ns` away; the boundary is inclusive. Of two snapshots
//!    equally near, the earlier one wins, so the result does not depend on input order.
//! 4. A snapshot may pair with several samples (the host may sample faster than the guest
//!    snapshots), and a sample pairs with at most one snapshot.
//!
//! Pairing runs at report time on raw data, so the policy can change without recording again.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::VcpuThread;

/// What pairing needs to know about a host sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPoint {
    pub time_ns: u64,
    pub tid: u32,
    pub in_kvm_run: bool,
}

/// What pairing needs to know about a guest snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPoint {
    pub time_ns: u64,
    pub vm: u32,
    pub vcpu: u32,
}

/// Why a host sample got no guest snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unpaired {
    /// The sample's thread is not a vCPU thread (the shim's main thread, the writer, …).
    NotVcpuThread,
    /// The vCPU thread was in the shim's user space (handling an exit), not in KVM_RUN.
    OutsideKvmRun,
    /// No snapshot of that vCPU within the window.
    NoSnapshotInWindow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Paired with `snapshots[snapshot]`; `distance_ns` is snapshot time minus sample time.
    Paired {
        snapshot: usize,
        distance_ns: i64,
    },
    Unpaired(Unpaired),
}

/// Totals of a pairing, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingStats {
    pub samples: u64,
    pub vcpu_samples: u64,
    pub in_kvm_run: u64,
    pub paired: u64,
    pub not_vcpu_thread: u64,
    pub outside_kvm_run: u64,
    pub no_snapshot_in_window: u64,
    pub window_ns: u64,
    /// |distance| quantiles of the paired samples, in ns: p50, p90, p99, max.
    pub distance_p50_ns: u64,
    pub distance_p90_ns: u64,
    pub distance_p99_ns: u64,
    pub distance_max_ns: u64,
}

impl PairingStats {
    /// Share of the in-KVM_RUN samples that were paired (1.0 when there were none).
    pub fn paired_share(&self) -> f64 {
        if self.in_kvm_run == 0 {
            1.0
        } else {
            self.paired as f64 / self.in_kvm_run as f64
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pairing {
    /// One outcome per host sample, in input order.
    pub outcomes: Vec<Outcome>,
    pub stats: PairingStats,
}

/// Pairs `samples` with `snapshots` by the rules in the module docs.
pub fn pair(
    samples: &[HostPoint],
    snapshots: &[GuestPoint],
    vcpus: &[VcpuThread],
    window_ns: u64,
) -> Pairing {
    let vcpu_of_tid: HashMap<u32, (u32, u32)> =
        vcpus.iter().map(|v| (v.tid, (v.vm, v.vcpu))).collect();
    // Snapshot indices per vCPU, sorted by (time, index).
    let mut by_vcpu: HashMap<(u32, u32), Vec<(u64, usize)>> = HashMap::new();
    for (i, s) in snapshots.iter().enumerate() {
        by_vcpu
            .entry((s.vm, s.vcpu))
            .or_default()
            .push((s.time_ns, i));
    }
    for list in by_vcpu.values_mut() {
        list.sort_unstable();
    }

    let mut stats = PairingStats {
        samples: samples.len() as u64,
        window_ns,
        ..PairingStats::default()
    };
    let mut distances = Vec::new();
    let outcomes = samples
        .iter()
        .map(|s| {
            let Some(vcpu) = vcpu_of_tid.get(&s.tid) else {
                stats.not_vcpu_thread += 1;
                return Outcome::Unpaired(Unpaired::NotVcpuThread);
            };
            stats.vcpu_samples += 1;
            if !s.in_kvm_run {
                stats.outside_kvm_run += 1;
                return Outcome::Unpaired(Unpaired::OutsideKvmRun);
            }
            stats.in_kvm_run += 1;
            let nearest = by_vcpu
                .get(vcpu)
                .and_then(|list| nearest(list, s.time_ns, window_ns));
            match nearest {
                Some((snapshot, distance_ns)) => {
                    stats.paired += 1;
                    distances.push(distance_ns.unsigned_abs());
                    Outcome::Paired {
                        snapshot,
                        distance_ns,
                    }
                }
                None => {
                    stats.no_snapshot_in_window += 1;
                    Outcome::Unpaired(Unpaired::NoSnapshotInWindow)
                }
            }
        })
        .collect();
    distances.sort_unstable();
    let quantile = |q: f64| -> u64 {
        if distances.is_empty() {
            0
        } else {
            distances[((distances.len() - 1) as f64 * q).round() as usize]
        }
    };
    stats.distance_p50_ns = quantile(0.5);
    stats.distance_p90_ns = quantile(0.9);
    stats.distance_p99_ns = quantile(0.99);
    stats.distance_max_ns = distances.last().copied().unwrap_or(0);
    Pairing { outcomes, stats }
}

/// The entry of `list` (sorted by time) nearest to `t` within `window`, earlier on a tie,
/// as (snapshot index, snapshot time - t).
fn nearest(list: &[(u64, usize)], t: u64, window: u64) -> Option<(usize, i64)> {
    let after = list.partition_point(|&(time, _)| time < t);
    let before = after.checked_sub(1).map(|i| list[i]);
    let at_or_after = list.get(after).copied();
    let dist = |time: u64| time.abs_diff(t);
    let best = match (before, at_or_after) {
        (Some(b), Some(a)) => {
            if dist(b.0) <= dist(a.0) {
                // For equal times in `before`, take the first of them (lowest index).
                Some(first_at(list, b.0))
            } else {
                Some(a)
            }
        }
        (Some(b), None) => Some(first_at(list, b.0)),
        (None, Some(a)) => Some(a),
        (None, None) => None,
    }?;
    (dist(best.0) <= window).then(|| (best.1, best.0 as i64 - t as i64))
}

fn first_at(list: &[(u64, usize)], time: u64) -> (u64, usize) {
    list[list.partition_point(|&(x, _)| x < time)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vcpu(vcpu: u32, tid: u32) -> VcpuThread {
        VcpuThread {
            time_ns: 0,
            vm: 0,
            vcpu,
            pid: 100,
            tid,
        }
    }

    fn host(time_ns: u64, tid: u32) -> HostPoint {
        HostPoint {
            time_ns,
            tid,
            in_kvm_run: true,
        }
    }

    fn guest(time_ns: u64, vcpu: u32) -> GuestPoint {
        GuestPoint {
            time_ns,
            vm: 0,
            vcpu,
        }
    }

    fn paired(snapshot: usize, distance_ns: i64) -> Outcome {
        Outcome::Paired {
            snapshot,
            distance_ns,
        }
    }

    #[test]
    fn nearest_snapshot_of_the_same_vcpu_within_the_window() {
        let vcpus = [vcpu(0, 11), vcpu(1, 12)];
        let snaps = [
            guest(1_000, 0),
            guest(1_900, 1),
            guest(2_000, 0),
            guest(5_000, 0),
        ];
        let samples = [
            host(1_100, 11), // nearest vcpu0 snapshot: 1000
            host(1_600, 11), // 2000 is nearer than 1000
            host(1_950, 12), // vcpu1: 1900, never vcpu0's 2000
            host(3_600, 11), // 2000 and 5000 are 1600 and 1400 away: out of a 1000 window
            host(9_000, 12), // no vcpu1 snapshot near
        ];
        let p = pair(&samples, &snaps, &vcpus, 1_000);
        assert_eq!(
            p.outcomes,
            vec![
                paired(0, -100),
                paired(2, 400),
                paired(1, -50),
                Outcome::Unpaired(Unpaired::NoSnapshotInWindow),
                Outcome::Unpaired(Unpaired::NoSnapshotInWindow),
            ]
        );
        assert_eq!(p.stats.paired, 3);
        assert_eq!(p.stats.no_snapshot_in_window, 2);
        assert_eq!(p.stats.distance_max_ns, 400);
    }

    #[test]
    fn window_boundary_is_inclusive() {
        let vcpus = [vcpu(0, 7)];
        let snaps = [guest(2_000, 0)];
        let at = pair(&[host(1_000, 7)], &snaps, &vcpus, 1_000);
        assert_eq!(at.outcomes, vec![paired(0, 1_000)]);
        let past = pair(&[host(999, 7)], &snaps, &vcpus, 1_000);
        assert_eq!(
            past.outcomes,
            vec![Outcome::Unpaired(Unpaired::NoSnapshotInWindow)]
        );
        let after = pair(&[host(3_000, 7)], &snaps, &vcpus, 1_000);
        assert_eq!(after.outcomes, vec![paired(0, -1_000)]);
    }

    #[test]
    fn ties_go_to_the_earlier_snapshot_whatever_the_input_order() {
        let vcpus = [vcpu(0, 7)];
        let snaps = [guest(2_000, 0), guest(1_000, 0)];
        let p = pair(&[host(1_500, 7)], &snaps, &vcpus, 1_000);
        assert_eq!(p.outcomes, vec![paired(1, -500)]);
        // Two snapshots at the same instant: the first recorded one.
        let same = [guest(1_000, 0), guest(1_000, 0)];
        let p = pair(&[host(1_000, 7)], &same, &vcpus, 0);
        assert_eq!(p.outcomes, vec![paired(0, 0)]);
    }

    #[test]
    fn samples_off_vcpu_threads_or_outside_kvm_run_are_not_paired() {
        let vcpus = [vcpu(0, 7)];
        let snaps = [guest(1_000, 0)];
        let mut outside = host(1_000, 7);
        outside.in_kvm_run = false;
        let p = pair(&[host(1_000, 99), outside], &snaps, &vcpus, 1_000);
        assert_eq!(
            p.outcomes,
            vec![
                Outcome::Unpaired(Unpaired::NotVcpuThread),
                Outcome::Unpaired(Unpaired::OutsideKvmRun)
            ]
        );
        assert_eq!(p.stats.vcpu_samples, 1);
        assert_eq!(p.stats.in_kvm_run, 0);
        assert_eq!(p.stats.paired_share(), 1.0);
    }

    #[test]
    fn empty_streams() {
        let p = pair(&[], &[], &[], 1_000);
        assert!(p.outcomes.is_empty());
        assert_eq!(p.stats.samples, 0);
        let p = pair(&[host(5, 7)], &[], &[vcpu(0, 7)], 1_000);
        assert_eq!(
            p.outcomes,
            vec![Outcome::Unpaired(Unpaired::NoSnapshotInWindow)]
        );
        assert_eq!(p.stats.paired_share(), 0.0);
        let p = pair(&[], &[guest(1, 0)], &[vcpu(0, 7)], 1_000);
        assert!(p.outcomes.is_empty());
    }

    #[test]
    fn many_vcpus_only_pair_with_their_own_snapshots() {
        let vcpus: Vec<VcpuThread> = (0..4).map(|v| vcpu(v, 100 + v)).collect();
        // vCPU v snapshots every 1000 ns starting at offset v * 10.
        let snaps: Vec<GuestPoint> = (0..4u32)
            .flat_map(|v| (0..100u64).map(move |k| guest(k * 1_000 + u64::from(v) * 10, v)))
            .collect();
        let samples: Vec<HostPoint> = (0..4u32)
            .flat_map(|v| (0..100u64).map(move |k| host(k * 1_000 + 3, 100 + v)))
            .collect();
        let p = pair(&samples, &snaps, &vcpus, 500);
        assert_eq!(p.stats.paired, 400);
        for (s, o) in samples.iter().zip(&p.outcomes) {
            let Outcome::Paired { snapshot, .. } = *o else {
                panic!("unpaired {s:?}")
            };
            assert_eq!(snaps[snapshot].vcpu + 100, s.tid);
        }
    }
}
