//! One guest-LBR setup for every command that boots a VM (`record --vm`, `run`, `demo`):
//! the backend decision from the host's facts ([`super::backend::decide`]), the PMU's
//! shape, who drives the PMU, and the per-vCPU hooks built from them, with the statistics
//! the hooks leave behind.
//!
//! Configuration comes in as a typed [`LbrOptions`]; nothing here reads the environment or
//! parses flags (the binary does both and fills in the options). The host's facts are a
//! plain [`HostLbrFacts`], so the whole decision is testable without /dev/kvm.

use std::sync::{Arc, Mutex};

use super::backend::{self, Decision, HostLbrFacts, LbrBackend, LbrMode, LbrRequest, Refusal};
use super::emulated::{EmulatedConfig, Sampling, SnapshotSink};
use super::interp::outside::OutsideConfig;
use super::kvm_hook::{EmulatedPmuHook, HardwarePmuHook, LbrRunStats, LbrStatsSink, VcpuSpaces};
use super::tracer::TraceMode;
use super::vpmu::{ConfigError, PmuConfig};
use crate::hook::VcpuHook;

/// Guest core cycles per second of host time that the emulated PMU's time-based counters
/// assume (sampled mode).
pub const GUEST_CYCLES_PER_SEC: u64 = 2_000_000_000;

/// What the guest's LBR should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbrOptions {
    /// Which backend (`--lbr auto|hw|emulated`).
    pub request: LbrRequest,
    /// How the emulated LBR observes branches.
    pub mode: LbrMode,
    /// The architectural PMU version the guest sees (2 or 4).
    pub pmu_version: u32,
    /// LBR entries (8, 16 or 32).
    pub depth: u32,
    /// Who programs the emulated PMU: the guest (its PMIs are injected as NMIs), or the
    /// shim every `period` events (see [`Sampling`]).
    pub sampling: Sampling,
    /// Shim-driven sampling in sampled mode: the percent of wall time the emulated LBR may
    /// take before the interval to the next snapshot is stretched; 0 or 100: no budget.
    pub overhead_percent: u32,
    /// vCPUs the VM starts with (the hooks must know when code is shared between vCPUs;
    /// those a VM adds as it runs, a Linux program's threads, they learn by address
    /// space).
    pub vcpus: u32,
    /// Run guest code in the shim's interpreter where the tracer can (the default); off
    /// for comparisons.
    pub interpret: bool,
    /// Benchmarking only: sampled-mode windows record no branches.
    pub empty_windows: bool,
    /// Print every interpreter halt (hand-back to breakpoints) on stderr.
    pub log_halts: bool,
    /// Exact mode: what of the outside world the CPU shows a program (RDRAND, RDSEED,
    /// RDTSC, RDTSCP, RDPID) the interpreter answers from a pinned world
    /// ([`super::interp::outside`]); by default nothing.
    pub outside: OutsideConfig,
}

impl LbrOptions {
    /// `request` in `mode` on a v4 PMU with a 32-entry LBR, driven by the guest, on one
    /// vCPU, with the interpreter on and no overhead budget.
    pub fn new(request: LbrRequest, mode: LbrMode) -> LbrOptions {
        LbrOptions {
            request,
            mode,
            pmu_version: 4,
            depth: 32,
            sampling: Sampling::Guest,
            overhead_percent: 0,
            vcpus: 1,
            interpret: true,
            empty_windows: false,
            log_halts: false,
            outside: OutsideConfig::default(),
        }
    }
}

/// Why the guest cannot have the LBR it asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// An unsupported PMU version or LBR depth.
    #[error(transparent)]
    Pmu(#[from] ConfigError),
    /// Neither backend can run on this host as asked.
    #[error("cannot give the guest an LBR")]
    Backend(#[source] Refusal),
}

/// The guest LBR of one VM: what was decided, and the hooks that provide it.
#[derive(Debug)]
pub struct LbrSetup {
    opts: LbrOptions,
    pmu: PmuConfig,
    decision: Decision,
    host_has_lbr: bool,
    stats: LbrStatsSink,
    /// The emulated LBR's smoothed sampling-episode cost, shared by the VM's vCPUs.
    episode_cost_ns: Arc<std::sync::atomic::AtomicU64>,
    /// Which address space each vCPU runs in, shared by the VM's hooks: a Linux program
    /// starts on one vCPU and gets one per thread, after the hooks were made.
    spaces: VcpuSpaces,
}

impl LbrSetup {
    /// Decides the backend for `opts` on a host with `facts` (see
    /// [`super::kvm_hook::host_facts`]).
    pub fn new(opts: LbrOptions, facts: &HostLbrFacts) -> Result<LbrSetup, SetupError> {
        let pmu = PmuConfig::new(opts.pmu_version, opts.depth)?;
        let decision =
            backend::decide(facts, opts.request, opts.mode).map_err(SetupError::Backend)?;
        Ok(LbrSetup {
            opts,
            pmu,
            decision,
            host_has_lbr: facts.host_lbr_nr != 0,
            stats: Arc::new(Mutex::new(Vec::new())),
            episode_cost_ns: Arc::default(),
            spaces: VcpuSpaces::default(),
        })
    }

    /// Who drives the emulated PMU, when that depends on the backend decided here (the
    /// guest's agent with the hardware LBR, the shim with the emulated one).
    pub fn with_sampling(mut self, sampling: Sampling) -> LbrSetup {
        self.opts.sampling = sampling;
        self
    }

    /// Exact mode: the interpreter answers what `outside` pins (a Linux program's world,
    /// once the program's outside world is decided).
    pub fn set_outside(&mut self, outside: OutsideConfig) {
        self.opts.outside = outside;
    }

    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    pub fn backend(&self) -> LbrBackend {
        self.decision.backend
    }

    pub fn options(&self) -> &LbrOptions {
        &self.opts
    }

    pub fn pmu(&self) -> PmuConfig {
        self.pmu
    }

    /// The hook of vCPU `vcpu`. Snapshots (the emulated model's at each shim-driven PMI,
    /// or the guest agent's from its ring) go to `sink`, when there is one.
    pub fn hook(&self, vcpu: u32, sink: Option<&SnapshotSink>) -> Box<dyn VcpuHook> {
        match self.decision.backend {
            LbrBackend::Hardware => {
                let hook =
                    HardwarePmuHook::new(self.host_has_lbr).with_stats(Arc::clone(&self.stats));
                Box::new(match sink {
                    Some(sink) => hook.with_agent(sink.clone()),
                    None => hook,
                })
            }
            LbrBackend::Emulated => Box::new(
                EmulatedPmuHook::new(self.emulated_config(vcpu), sink.cloned())
                    .with_vcpus(self.opts.vcpus)
                    .with_spaces(self.spaces.clone())
                    .with_stats(Arc::clone(&self.stats))
                    .with_episode_costs(Arc::clone(&self.episode_cost_ns)),
            ),
        }
    }

    /// The emulated backend's configuration for vCPU `vcpu`.
    fn emulated_config(&self, vcpu: u32) -> EmulatedConfig {
        let mode = match self.opts.mode {
            LbrMode::Exact => TraceMode::Exact,
            LbrMode::Sampled => TraceMode::Sampled {
                window_branches: self.pmu.lbr_depth.slots(),
            },
        };
        let mut cfg = EmulatedConfig::new(vcpu, self.pmu, mode);
        cfg.sampling = self.opts.sampling;
        cfg.cycles_per_sec = GUEST_CYCLES_PER_SEC;
        cfg.overhead_percent = self.opts.overhead_percent;
        cfg.interpret = self.opts.interpret;
        cfg.empty_windows = self.opts.empty_windows;
        cfg.log_halts = self.opts.log_halts;
        cfg.outside = self.opts.outside;
        // A real vCPU's samples must not lock onto the program's rhythm (sampled mode;
        // exact mode's stay deterministic).
        cfg.random_intervals = true;
        cfg
    }

    /// What each vCPU's hook counted, as far as the vCPUs have ended.
    pub fn stats(&self) -> Vec<LbrRunStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What vCPU `vcpu`'s hook counted, once it has ended.
    pub fn run_stats(&self, vcpu: u32) -> Option<LbrRunStats> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.iter().find(|s| s.vcpu == vcpu).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AMD host under nested KVM: no host LBR, every capability emulation needs.
    fn facts() -> HostLbrFacts {
        HostLbrFacts {
            vendor: backend::CpuVendor::Amd,
            family: 0x19,
            model: 1,
            host_lbr_nr: 0,
            arch_lbr: false,
            kvm: true,
            kvm_enable_pmu: Some(false),
            kvm_user_space_msr: true,
            kvm_msr_filter: true,
            kvm_guest_debug: true,
            kvm_mediated_pmu: None,
            lbr_format: None,
            cpuid: Default::default(),
            kvm_module: Some("kvm_amd".into()),
        }
    }

    #[test]
    fn every_option_reaches_the_emulated_vcpu() {
        let mut opts = LbrOptions::new(LbrRequest::Emulated, LbrMode::Sampled);
        opts.depth = 16;
        opts.sampling = Sampling::Shim { period: 1234 };
        opts.overhead_percent = 7;
        opts.interpret = false;
        opts.empty_windows = true;
        opts.log_halts = true;
        opts.outside = OutsideConfig {
            random_seed: Some(9),
            pinned_clock: true,
        };
        let setup = LbrSetup::new(opts, &facts()).unwrap();
        assert_eq!(setup.backend(), LbrBackend::Emulated);
        let cfg = setup.emulated_config(3);
        assert_eq!(cfg.vcpu, 3);
        assert_eq!(
            cfg.mode,
            TraceMode::Sampled {
                window_branches: 16
            }
        );
        assert_eq!(cfg.sampling, Sampling::Shim { period: 1234 });
        assert_eq!(cfg.overhead_percent, 7);
        assert_eq!(cfg.cycles_per_sec, GUEST_CYCLES_PER_SEC);
        assert!(!cfg.interpret && cfg.empty_windows && cfg.log_halts);
        assert_eq!(cfg.outside.random_seed, Some(9));
        let exact = LbrSetup::new(
            LbrOptions::new(LbrRequest::Emulated, LbrMode::Exact),
            &facts(),
        )
        .unwrap()
        .emulated_config(0);
        assert_eq!(exact.mode, TraceMode::Exact);
        assert!(exact.interpret && !exact.empty_windows && !exact.log_halts);
    }

    #[test]
    fn bad_shapes_and_refusals_are_errors() {
        let mut opts = LbrOptions::new(LbrRequest::Emulated, LbrMode::Sampled);
        opts.depth = 7;
        let err = LbrSetup::new(opts, &facts()).unwrap_err();
        assert!(
            matches!(err, SetupError::Pmu(ConfigError::Depth(7))),
            "{err:?}"
        );
        let opts = LbrOptions::new(LbrRequest::Emulated, LbrMode::Sampled);
        let no_kvm = HostLbrFacts {
            kvm: false,
            ..facts()
        };
        let err = LbrSetup::new(opts, &no_kvm).unwrap_err();
        assert!(matches!(err, SetupError::Backend(_)), "{err:?}");
        assert_eq!(err.to_string(), "cannot give the guest an LBR");
    }
}
