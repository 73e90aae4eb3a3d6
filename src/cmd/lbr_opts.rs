//! The guest-LBR options shared by the commands that boot a VM (`run`, and `record --vm`):
//! which backend, which mode, the PMU's shape; turned into per-vCPU VMM hooks.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use lbrprof_vmm::VcpuHook;
use lbrprof_vmm::caps;
use lbrprof_vmm::pmu::backend::{self, Decision, LbrBackend, LbrMode, LbrRequest};
use lbrprof_vmm::pmu::emulated::{EmulatedConfig, Sampling, SnapshotSink};
use lbrprof_vmm::pmu::kvm_hook::{self, EmulatedPmuHook, HardwarePmuHook, LbrStatsSink};
use lbrprof_vmm::pmu::tracer::TraceMode;
use lbrprof_vmm::pmu::vpmu::PmuConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct LbrArgs {
    /// Give the guest a PMU with LBR: `emulated` (the shim implements the PMU and LBR MSRs
    /// and traces the guest's branches), `hw` (KVM passes the host's LBR through), `auto`
    /// (hardware where the host really has it, else emulated), or `off`.
    #[arg(long, value_enum, default_value_t = LbrFlag::Off)]
    pub lbr: LbrFlag,

    /// How the emulated LBR observes branches: `exact` traces every guest instruction
    /// (exact counts, deterministic), `sampled` lets the guest run free and traces only the
    /// branches before each counter overflow.
    #[arg(long, value_enum, default_value_t = ModeFlag::Sampled)]
    pub lbr_mode: ModeFlag,

    /// The architectural performance-monitoring version the guest sees (2 or 4).
    #[arg(long, default_value_t = 4, value_name = "2|4")]
    pub pmu_version: u32,

    /// LBR entries (8, 16 or 32).
    #[arg(long, default_value_t = 32, value_name = "8|16|32")]
    pub lbr_depth: u32,

    /// Snapshot the LBR every N guest instructions (exact mode) or N guest cycles (sampled
    /// mode) with the shim as the PMU's driver, for guests without an LBR agent; 0 leaves
    /// the PMU to the guest.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub lbr_sample: u64,

    /// With --lbr-sample in sampled mode: the percent of wall time the emulated LBR's
    /// tracing and snapshots may take; past it the interval to the next snapshot is
    /// stretched. 0 or 100 disables the budget; exact mode is never throttled.
    #[arg(long, default_value_t = 10, value_name = "PCT",
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub lbr_overhead: u32,
}

/// `--lbr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbrFlag {
    Off,
    Auto,
    Hw,
    Emulated,
}

/// `--lbr-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeFlag {
    Exact,
    Sampled,
}

/// The hooks for a VM's vCPUs, with what was decided and where statistics go.
pub struct LbrSetup {
    pub decision: Decision,
    pub stats: LbrStatsSink,
    make: Box<dyn Fn(u32) -> Box<dyn VcpuHook>>,
}

impl LbrSetup {
    pub fn hook(&self, vcpu: u32) -> Box<dyn VcpuHook> {
        (self.make)(vcpu)
    }
}

impl LbrArgs {
    /// `None` for `--lbr off`; an error when the request cannot be met on this host.
    pub fn setup(
        &self,
        sink: Option<SnapshotSink>,
        vcpus: u32,
    ) -> anyhow::Result<Option<LbrSetup>> {
        let request = match self.lbr {
            LbrFlag::Off => return Ok(None),
            LbrFlag::Auto => LbrRequest::Auto,
            LbrFlag::Hw => LbrRequest::Hw,
            LbrFlag::Emulated => LbrRequest::Emulated,
        };
        let lbr_mode = match self.lbr_mode {
            ModeFlag::Exact => LbrMode::Exact,
            ModeFlag::Sampled => LbrMode::Sampled,
        };
        let pmu = PmuConfig::new(self.pmu_version, self.lbr_depth)?;
        let facts = kvm_hook::host_facts(&caps::probe());
        let decision =
            backend::decide(&facts, request, lbr_mode).context("cannot give the guest an LBR")?;
        let stats: LbrStatsSink = Arc::new(Mutex::new(Vec::new()));
        let make: Box<dyn Fn(u32) -> Box<dyn VcpuHook>> = match decision.backend {
            LbrBackend::Hardware => {
                let host_has_lbr = facts.host_lbr_nr != 0;
                let stats = Arc::clone(&stats);
                Box::new(move |_| {
                    let hook = HardwarePmuHook::new(host_has_lbr).with_stats(Arc::clone(&stats));
                    Box::new(match &sink {
                        Some(sink) => hook.with_agent(sink.clone()),
                        None => hook,
                    })
                })
            }
            LbrBackend::Emulated => {
                let mode = match lbr_mode {
                    LbrMode::Exact => TraceMode::Exact,
                    LbrMode::Sampled => TraceMode::Sampled {
                        window_branches: self.lbr_depth,
                    },
                };
                let sampling = match self.lbr_sample {
                    0 => Sampling::Guest,
                    period => Sampling::Shim { period },
                };
                let stats = Arc::clone(&stats);
                let overhead_percent = self.lbr_overhead;
                Box::new(move |vcpu| {
                    let mut cfg = EmulatedConfig::new(vcpu, pmu, mode);
                    cfg.sampling = sampling;
                    cfg.overhead_percent = overhead_percent;
                    Box::new(
                        EmulatedPmuHook::new(cfg, sink.clone())
                            .with_vcpus(vcpus)
                            .with_stats(Arc::clone(&stats)),
                    )
                })
            }
        };
        Ok(Some(LbrSetup {
            decision,
            stats,
            make,
        }))
    }
}

impl LbrArgs {
    /// Refuses guest arguments that start lbrprof's LBR agent (`rt.agent=`) while the shim
    /// drives the PMU (`--lbr-sample`): the shim would take the agent's PMIs for its own.
    pub fn check_guest_args(&self, guest_args: &[String]) -> anyhow::Result<()> {
        if self.lbr != LbrFlag::Off
            && self.lbr_sample != 0
            && guest_args.iter().any(|a| a.starts_with("rt.agent="))
        {
            anyhow::bail!(
                "the guest arguments start the guest's LBR agent (rt.agent=), which needs the \
                 PMU to itself: drop --lbr-sample (the shim's own sampling)"
            );
        }
        Ok(())
    }
}

/// Prints the per-vCPU LBR statistics (for `--stats`).
pub fn print_stats(setup: &LbrSetup) {
    eprintln!("lbrprof: lbr: backend {}", setup.decision);
    let stats = setup.stats.lock().unwrap_or_else(|e| e.into_inner());
    // The hardware LBR traces nothing in the shim: only the agent's counts are its own.
    let traced = setup.decision.backend == LbrBackend::Emulated;
    for s in stats.iter() {
        if !traced {
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} snapshots from the guest agent's ring, {} lost to \
                 a full ring",
                s.vcpu, s.agent_snapshots, s.agent_lost,
            );
            continue;
        }
        let stops = s.tracer.exits + s.stepping_stops;
        let per_branch = if s.tracer.taken > 0 {
            stops as f64 / s.tracer.taken as f64
        } else {
            0.0
        };
        eprintln!(
            "lbrprof: lbr: vCPU {}: {} instructions and {} branches ({} taken) traced, \
             {} debug stops ({per_branch:.2} per taken branch), {} PMIs, {} snapshots, \
             {} branches lost to freezes",
            s.vcpu,
            s.tracer.instructions,
            s.tracer.branches,
            s.tracer.taken,
            stops,
            s.pmu.pmis,
            s.snapshots,
            s.pmu.frozen_branches,
        );
        if s.tracer.interp_runs > 0 {
            let share = if s.tracer.instructions > 0 {
                100.0 * s.tracer.interpreted as f64 / s.tracer.instructions as f64
            } else {
                0.0
            };
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} instructions interpreted ({share:.1}% of traced) in \
                 {} stretches, {} handed back to breakpoints",
                s.vcpu, s.tracer.interpreted, s.tracer.interp_runs, s.tracer.interp_halts,
            );
            let top = s.tracer.halt_reasons.top(8);
            if !top.is_empty() {
                let list: Vec<String> = top.iter().map(|(h, n)| format!("{h} {n}")).collect();
                eprintln!(
                    "lbrprof: lbr: vCPU {}: top fall-backs to breakpoints: {}",
                    s.vcpu,
                    list.join(", ")
                );
            }
        }
        if s.agent_snapshots > 0 || s.agent_lost > 0 {
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} snapshots from the guest agent's ring, {} lost to \
                 a full ring",
                s.vcpu, s.agent_snapshots, s.agent_lost,
            );
        }
        if s.throttle.episodes > 0 {
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} sampling windows took {:.3} s, {} intervals \
                 stretched by the overhead budget",
                s.vcpu,
                s.throttle.episodes,
                s.throttle.episode_ns as f64 / 1e9,
                s.throttle.stretched,
            );
        }
    }
}
