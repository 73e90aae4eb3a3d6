//! The guest LBR of `record --vm` and `demo`: the backend decision (hardware passthrough
//! or emulation, from the host's facts), who takes the snapshots, and the per-vCPU hooks
//! that send them into the recorder's channel, as a [`GuestLbr`] the collector drives.
//!
//! Snapshots come at `-F` (`--lbr-freq`) per vCPU from one of two sources
//! (`--lbr-snapshots`):
//! * **shim-driven** (emulated LBR only; any guest): the shim arms a fixed counter that
//!   overflows every `period` events — guest core cycles of a time-based counter in
//!   sampled mode (`2e9 / F`, so `-F` snapshots per second of guest time), retired
//!   instructions in exact mode (`10,000,000 / F`). In sampled mode an overhead budget
//!   (`--lbr-overhead`, see [`lbrprof_vmm::pmu::throttle`]) stretches the interval after a
//!   snapshot whose tracing window took too long, so the emulation's share of wall time
//!   stays within the budget.
//! * **guest-driven** (either backend; the only one with the hardware LBR): lbrprof's
//!   guest runtime is booted with `rt.agent=PERIOD` (ring-3 instructions, the same
//!   `period` as above: in sampled mode the emulated instruction counter follows guest
//!   cycles) and its PMI handler writes each frozen LBR into its vCPU's ring, which that
//!   vCPU's hook drains ([`lbrprof_vmm::pmu::agent`]). The guest sets its own rate, so
//!   the overhead budget does not apply.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use lbrprof_collector::vm::{GuestLbr, LbrCounters, SnapshotBudget, SnapshotSource};
use lbrprof_vmm::VcpuHook;
use lbrprof_vmm::caps;
use lbrprof_vmm::pmu::backend::{self, Decision, LbrMode, LbrRequest};
use lbrprof_vmm::pmu::emulated::{EmulatedConfig, Sampling, SnapshotSink};
use lbrprof_vmm::pmu::kvm_hook::{
    self, EmulatedPmuHook, HardwarePmuHook, LbrRunStats, LbrStatsSink,
};
use lbrprof_vmm::pmu::tracer::TraceMode;
use lbrprof_vmm::pmu::vpmu::PmuConfig;
use lbrprof_vmm::snapshot::LbrBackend;

use crate::cmd::record::{LbrChoice, LbrModeChoice, SnapshotChoice};

/// Guest cycles per second the emulated PMU's time-based counters assume.
pub const GUEST_CYCLES_PER_SEC: u64 = 2_000_000_000;
/// Exact mode: guest instructions per second of the snapshot rate (`-F`).
pub const EXACT_INSTRUCTIONS_PER_SEC: u64 = 10_000_000;

/// What the user asked for.
#[derive(Clone, Copy, Debug)]
pub struct LbrRequestArgs {
    pub lbr: LbrChoice,
    pub mode: LbrModeChoice,
    pub depth: u32,
    /// Snapshots per second (`-F`).
    pub frequency: u64,
    /// vCPUs of the VM (the hooks must know when code is shared between vCPUs).
    pub vcpus: u32,
    /// Percent of wall time the emulated LBR may take in sampled mode (0 or 100: no limit).
    pub overhead_percent: u32,
    /// Who takes the snapshots.
    pub snapshots: SnapshotChoice,
}

/// The shim's guest LBR for one recording.
pub struct ShimLbr {
    decision: Decision,
    mode: LbrMode,
    pmu: PmuConfig,
    period: u64,
    frequency: u64,
    overhead_percent: u32,
    host_has_lbr: bool,
    vcpus: u32,
    source: SnapshotSource,
    stats: LbrStatsSink,
}

/// The counter period that gives `frequency` snapshots per second in `mode`.
pub fn snapshot_period(mode: LbrMode, frequency: u64) -> u64 {
    let per_sec = match mode {
        LbrMode::Sampled => GUEST_CYCLES_PER_SEC,
        LbrMode::Exact => EXACT_INSTRUCTIONS_PER_SEC,
    };
    (per_sec / frequency.max(1)).max(1)
}

/// Decides the backend; an error when the request cannot be met on this host.
pub fn setup(req: &LbrRequestArgs) -> anyhow::Result<Box<ShimLbr>> {
    let request = match req.lbr {
        LbrChoice::Auto => LbrRequest::Auto,
        LbrChoice::Hw => LbrRequest::Hw,
        LbrChoice::Emulated => LbrRequest::Emulated,
    };
    let mode = match req.mode {
        LbrModeChoice::Exact => LbrMode::Exact,
        LbrModeChoice::Sampled => LbrMode::Sampled,
    };
    let pmu = PmuConfig::new(4, req.depth).context("bad --lbr-depth")?;
    let facts = kvm_hook::host_facts(&caps::probe());
    let decision =
        backend::decide(&facts, request, mode).context("cannot give the guest an LBR")?;
    let period = snapshot_period(mode, req.frequency);
    let source = snapshot_source(req.snapshots, decision.backend, period)?;
    Ok(Box::new(ShimLbr {
        decision,
        mode,
        pmu,
        source,
        period,
        frequency: req.frequency,
        overhead_percent: req.overhead_percent,
        host_has_lbr: facts.host_lbr_nr != 0,
        vcpus: req.vcpus,
        stats: Arc::new(Mutex::new(Vec::new())),
    }))
}

/// Who takes the snapshots, given the backend: `auto` is the agent with the hardware LBR
/// (the shim cannot see it) and the shim with the emulated one (any guest).
pub fn snapshot_source(
    choice: SnapshotChoice,
    backend: backend::LbrBackend,
    period: u64,
) -> anyhow::Result<SnapshotSource> {
    let hardware = backend == backend::LbrBackend::Hardware;
    Ok(match choice {
        SnapshotChoice::Agent => SnapshotSource::Agent { period },
        SnapshotChoice::Auto if hardware => SnapshotSource::Agent { period },
        SnapshotChoice::Auto => SnapshotSource::Shim,
        SnapshotChoice::Shim if hardware => anyhow::bail!(
            "--lbr-snapshots shim needs the emulated LBR (the shim cannot read the hardware \
             LBR); use --lbr-snapshots agent with a guest that runs lbrprof's LBR agent, or \
             --lbr emulated"
        ),
        SnapshotChoice::Shim => SnapshotSource::Shim,
    })
}

impl ShimLbr {
    /// The decision in words, for the user.
    pub fn describe(&self) -> String {
        let source = match self.source {
            SnapshotSource::Shim => "snapshots by the shim".to_owned(),
            SnapshotSource::Agent { period } => {
                format!("snapshots by the guest's agent (rt.agent={period})")
            }
        };
        format!(
            "{} mode, {}, {} entries, {source}",
            self.mode(),
            self.decision,
            self.pmu.lbr_depth.slots()
        )
    }

    fn run_stats(&self, vcpu: u32) -> Option<LbrRunStats> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.iter().find(|s| s.vcpu == vcpu).copied()
    }
}

impl GuestLbr for ShimLbr {
    fn backend(&self) -> LbrBackend {
        match self.decision.backend {
            backend::LbrBackend::Hardware => LbrBackend::Hardware,
            backend::LbrBackend::Emulated => LbrBackend::Emulated,
        }
    }

    fn mode(&self) -> &str {
        match self.mode {
            LbrMode::Exact => "exact",
            LbrMode::Sampled => "sampled",
        }
    }

    fn snapshot_source(&self) -> SnapshotSource {
        self.source
    }

    fn hook(&self, vcpu: u32, sink: &SnapshotSink) -> Box<dyn VcpuHook> {
        match self.decision.backend {
            backend::LbrBackend::Hardware => Box::new(
                HardwarePmuHook::new(self.host_has_lbr)
                    .with_agent(sink.clone())
                    .with_stats(Arc::clone(&self.stats)),
            ),
            backend::LbrBackend::Emulated => {
                let mode = match self.mode {
                    LbrMode::Exact => TraceMode::Exact,
                    LbrMode::Sampled => TraceMode::Sampled {
                        window_branches: self.pmu.lbr_depth.slots(),
                    },
                };
                let mut cfg = EmulatedConfig::new(vcpu, self.pmu, mode);
                cfg.sampling = match self.source {
                    SnapshotSource::Shim => Sampling::Shim {
                        period: self.period,
                    },
                    // The guest programs the PMU; its PMIs are injected as NMIs.
                    SnapshotSource::Agent { .. } => Sampling::Guest,
                };
                cfg.cycles_per_sec = GUEST_CYCLES_PER_SEC;
                cfg.overhead_percent = self.overhead_percent;
                Box::new(
                    EmulatedPmuHook::new(cfg, Some(sink.clone()))
                        .with_vcpus(self.vcpus)
                        .with_stats(Arc::clone(&self.stats)),
                )
            }
        }
    }

    fn counters(&self, vcpu: u32) -> LbrCounters {
        let Some(s) = self.run_stats(vcpu) else {
            return LbrCounters::default();
        };
        let exact = self.mode == LbrMode::Exact;
        LbrCounters {
            trace_ns: 0,
            snapshot_ns: 0,
            instructions: exact.then_some(s.tracer.instructions),
            branches: exact.then_some(s.tracer.branches),
            frozen_events: s.pmu.frozen_branches,
            stretched_intervals: s.throttle.stretched,
            agent_lost: s.agent_lost,
        }
    }

    fn snapshot_budget(&self) -> Option<SnapshotBudget> {
        let agent = matches!(self.source, SnapshotSource::Agent { .. });
        if self.decision.backend != backend::LbrBackend::Emulated && !agent {
            return None;
        }
        // The agent sets its own rate: nothing to throttle.
        let throttled =
            !agent && self.mode == LbrMode::Sampled && (1..100).contains(&self.overhead_percent);
        Some(SnapshotBudget {
            requested_hz: self.frequency,
            overhead_percent: throttled.then_some(self.overhead_percent),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_frequency() {
        assert_eq!(snapshot_period(LbrMode::Sampled, 1000), 2_000_000);
        assert_eq!(snapshot_period(LbrMode::Exact, 1000), 10_000);
        assert_eq!(snapshot_period(LbrMode::Exact, 100_000_000), 1);
        assert_eq!(snapshot_period(LbrMode::Sampled, 0), GUEST_CYCLES_PER_SEC);
    }

    #[test]
    fn snapshot_sources_follow_the_backend() {
        use backend::LbrBackend::{Emulated, Hardware};
        let pick = |c, b| snapshot_source(c, b, 7).map_err(|e| e.to_string());
        assert_eq!(
            pick(SnapshotChoice::Auto, Emulated),
            Ok(SnapshotSource::Shim)
        );
        assert_eq!(
            pick(SnapshotChoice::Auto, Hardware),
            Ok(SnapshotSource::Agent { period: 7 })
        );
        assert_eq!(
            pick(SnapshotChoice::Agent, Emulated),
            Ok(SnapshotSource::Agent { period: 7 })
        );
        assert_eq!(
            pick(SnapshotChoice::Shim, Emulated),
            Ok(SnapshotSource::Shim)
        );
        let err = pick(SnapshotChoice::Shim, Hardware).unwrap_err();
        assert!(
            err.contains("--lbr-snapshots shim needs the emulated LBR"),
            "{err}"
        );
    }
}
