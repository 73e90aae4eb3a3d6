//! The guest LBR of every command that boots a VM (`record --vm`, `run`, and `demo`
//! through `record`): their flags, turned into the VMM's one guest-LBR setup
//! ([`lbrprof_vmm::pmu::setup::LbrSetup`]), and for `record --vm` the [`GuestLbr`] the
//! collector drives.
//!
//! Snapshots of `record --vm` come at `-F` (`--lbr-freq`) per vCPU from one of two sources
//! (`--lbr-snapshots`):
//! * **shim-driven** (emulated LBR only; any guest): in sampled mode, sample points come
//!   at random (exponential) intervals averaging `1 / F` of guest time; a point counts
//!   only when a timer kick finds the guest running its own code (not at one of its
//!   exits or in the shim's stubs), and the window of branches traced from there is one
//!   snapshot credited to that point. In exact mode a fixed counter overflows every
//!   `10,000,000 / F` retired instructions. In sampled mode an overhead budget
//!   (`--lbr-overhead`, see [`lbrprof_vmm::pmu::throttle`]) adds a dead time after each
//!   window, so the emulation's share of wall time stays within the budget.
//! * **guest-driven** (either backend; the only one with the hardware LBR): lbrprof's
//!   guest runtime is booted with `rt.agent=PERIOD` (ring-3 instructions, the same
//!   `period` as above: in sampled mode the emulated instruction counter follows guest
//!   cycles) and its PMI handler writes each frozen LBR into its vCPU's ring, which that
//!   vCPU's hook drains ([`lbrprof_vmm::pmu::agent`]). The guest sets its own rate, so
//!   the overhead budget does not apply.
//!
//! `run` drives the PMU itself only with `--lbr-sample N`; otherwise the guest does.
//!
//! The environment variables `LBRPROF_LBR_INTERP`, `LBRPROF_LBR_EMPTY_WINDOWS` and
//! `LBRPROF_LBR_INTERP_DEBUG` are read here, as fallbacks of hidden flags ([`TuningArgs`]),
//! and passed on as typed options: the libraries read no environment.

use lbrprof_collector::vm::{GuestLbr, LbrCounters, SnapshotBudget, SnapshotSource};
use lbrprof_vmm::VcpuHook;
use lbrprof_vmm::caps;
use lbrprof_vmm::pmu::backend::{LbrBackend, LbrMode, LbrRequest};
use lbrprof_vmm::pmu::emulated::{Sampling, SnapshotSink};
use lbrprof_vmm::pmu::kvm_hook;
use lbrprof_vmm::pmu::setup::{GUEST_CYCLES_PER_SEC, LbrOptions, LbrSetup, SetupError};
use lbrprof_vmm::snapshot;

/// Exact mode: guest instructions per second of the snapshot rate (`-F`).
pub const EXACT_INSTRUCTIONS_PER_SEC: u64 = 10_000_000;

/// Switches for comparing the emulated LBR's fast paths with the plain ones (tests and
/// `bench/lbr-emulation` use them). Hidden; each has an environment fallback.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TuningArgs {
    /// Run the guest in the shim's interpreter where the tracer can (default); false
    /// stops it at every branch instead.
    #[arg(long, hide = true, env = "LBRPROF_LBR_INTERP", value_name = "BOOL",
          default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub lbr_interp: bool,
    /// Sampled-mode windows record no branches: what remains is the cost of stopping the
    /// guest for a sample (benchmarking only).
    #[arg(long, hide = true, env = "LBRPROF_LBR_EMPTY_WINDOWS", value_name = "BOOL",
          default_value_t = false, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub lbr_empty_windows: bool,
    /// Print every hand-back from the interpreter to breakpoints on stderr.
    #[arg(long, hide = true, env = "LBRPROF_LBR_INTERP_DEBUG", value_name = "BOOL",
          default_value_t = false, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub lbr_interp_debug: bool,
}

impl TuningArgs {
    fn apply(&self, opts: &mut LbrOptions) {
        opts.interpret = self.lbr_interp;
        opts.empty_windows = self.lbr_empty_windows;
        opts.log_halts = self.lbr_interp_debug;
    }
}

/// `record --lbr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbrChoice {
    Auto,
    Hw,
    Emulated,
}

/// `record --lbr-snapshots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotChoice {
    Auto,
    Shim,
    Agent,
}

/// `--lbr-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbrModeChoice {
    Sampled,
    Exact,
}

impl LbrModeChoice {
    fn mode(self) -> LbrMode {
        match self {
            LbrModeChoice::Exact => LbrMode::Exact,
            LbrModeChoice::Sampled => LbrMode::Sampled,
        }
    }
}

/// The VMM's guest-LBR setup for `opts` on this host.
fn setup(opts: LbrOptions) -> anyhow::Result<LbrSetup> {
    let facts = kvm_hook::host_facts(&caps::probe());
    Ok(LbrSetup::new(opts, &facts)?)
}

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
    #[arg(long, value_enum, default_value_t = LbrModeChoice::Sampled)]
    pub lbr_mode: LbrModeChoice,

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

    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// `run --lbr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbrFlag {
    Off,
    Auto,
    Hw,
    Emulated,
}

impl LbrArgs {
    /// `None` for `--lbr off`; an error when the request cannot be met on this host.
    pub fn setup(&self, vcpus: u32) -> anyhow::Result<Option<LbrSetup>> {
        let request = match self.lbr {
            LbrFlag::Off => return Ok(None),
            LbrFlag::Auto => LbrRequest::Auto,
            LbrFlag::Hw => LbrRequest::Hw,
            LbrFlag::Emulated => LbrRequest::Emulated,
        };
        let mut opts = LbrOptions::new(request, self.lbr_mode.mode());
        opts.pmu_version = self.pmu_version;
        opts.depth = self.lbr_depth;
        opts.sampling = match self.lbr_sample {
            0 => Sampling::Guest,
            period => Sampling::Shim { period },
        };
        opts.overhead_percent = self.lbr_overhead;
        opts.vcpus = vcpus;
        self.tuning.apply(&mut opts);
        setup(opts).map(Some)
    }

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
    pub tuning: TuningArgs,
}

/// The shim's guest LBR for one recording.
pub struct ShimLbr {
    setup: LbrSetup,
    frequency: u64,
    source: SnapshotSource,
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
pub fn record_setup(req: &LbrRequestArgs) -> anyhow::Result<Box<ShimLbr>> {
    let request = match req.lbr {
        LbrChoice::Auto => LbrRequest::Auto,
        LbrChoice::Hw => LbrRequest::Hw,
        LbrChoice::Emulated => LbrRequest::Emulated,
    };
    let mode = req.mode.mode();
    let mut opts = LbrOptions::new(request, mode);
    opts.depth = req.depth;
    opts.overhead_percent = req.overhead_percent;
    opts.vcpus = req.vcpus;
    req.tuning.apply(&mut opts);
    let setup = setup(opts).map_err(|e| match e.downcast_ref::<SetupError>() {
        Some(SetupError::Pmu(_)) => e.context("bad --lbr-depth"),
        _ => e,
    })?;
    let period = snapshot_period(mode, req.frequency);
    let source = snapshot_source(req.snapshots, setup.backend(), period)?;
    let sampling = match source {
        SnapshotSource::Shim => Sampling::Shim { period },
        // The guest programs the PMU; its PMIs are injected as NMIs.
        SnapshotSource::Agent { .. } => Sampling::Guest,
    };
    Ok(Box::new(ShimLbr {
        setup: setup.with_sampling(sampling),
        frequency: req.frequency,
        source,
    }))
}

/// Who takes the snapshots, given the backend: `auto` is the agent with the hardware LBR
/// (the shim cannot see it) and the shim with the emulated one (any guest).
pub fn snapshot_source(
    choice: SnapshotChoice,
    backend: LbrBackend,
    period: u64,
) -> anyhow::Result<SnapshotSource> {
    let hardware = backend == LbrBackend::Hardware;
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
            self.setup.decision(),
            self.setup.pmu().lbr_depth.slots()
        )
    }

    fn lbr_mode(&self) -> LbrMode {
        self.setup.options().mode
    }

    /// Exact mode: the interpreter answers what `outside` pins.
    pub fn set_outside(&mut self, outside: lbrprof_vmm::pmu::interp::outside::OutsideConfig) {
        self.setup.set_outside(outside);
    }

    /// Whether the guest runs in exact mode (every instruction counted).
    pub fn counts_exactly(&self) -> bool {
        counts_exactly(&self.setup)
    }
}

/// Whether `setup` counts every guest instruction: the emulated LBR in exact mode.
pub fn counts_exactly(setup: &LbrSetup) -> bool {
    setup.backend() == LbrBackend::Emulated && setup.options().mode == LbrMode::Exact
}

impl GuestLbr for ShimLbr {
    fn backend(&self) -> snapshot::LbrBackend {
        match self.setup.backend() {
            LbrBackend::Hardware => snapshot::LbrBackend::Hardware,
            LbrBackend::Emulated => snapshot::LbrBackend::Emulated,
        }
    }

    fn mode(&self) -> &str {
        match self.lbr_mode() {
            LbrMode::Exact => "exact",
            LbrMode::Sampled => "sampled",
        }
    }

    fn snapshot_source(&self) -> SnapshotSource {
        self.source
    }

    fn hook(&self, vcpu: u32, sink: &SnapshotSink) -> Box<dyn VcpuHook> {
        self.setup.hook(vcpu, Some(sink))
    }

    fn counters(&self, vcpu: u32) -> LbrCounters {
        let Some(s) = self.setup.run_stats(vcpu) else {
            return LbrCounters::default();
        };
        let exact = self.lbr_mode() == LbrMode::Exact;
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
        if self.setup.backend() != LbrBackend::Emulated && !agent {
            return None;
        }
        // The agent sets its own rate: nothing to throttle.
        let overhead_percent = self.setup.options().overhead_percent;
        let throttled =
            !agent && self.lbr_mode() == LbrMode::Sampled && (1..100).contains(&overhead_percent);
        let exact = !agent && self.lbr_mode() == LbrMode::Exact;
        Some(SnapshotBudget {
            requested_hz: self.frequency,
            overhead_percent: throttled.then_some(overhead_percent),
            instruction_period: exact.then(|| snapshot_period(LbrMode::Exact, self.frequency)),
        })
    }
}

/// Prints the per-vCPU LBR statistics (for `--stats`).
pub fn print_stats(setup: &LbrSetup) {
    eprintln!("lbrprof: lbr: backend {}", setup.decision());
    let stats = setup.stats();
    // The hardware LBR traces nothing in the shim: only the agent's counts are its own.
    let traced = setup.backend() == LbrBackend::Emulated;
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
        if s.tracer.repeat_passes > 0 {
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} instructions counting each REP iteration, as \
                 valgrind and recordings do ({} passes beyond the first of REP instructions)",
                s.vcpu,
                s.tracer.instructions + s.tracer.repeat_passes,
                s.tracer.repeat_passes,
            );
        }
        if s.stepping_stops > 0 || s.shared_int3_stops > 0 {
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} single-steps towards breakpoints in shared code, \
                 {} stops with int3 breakpoints in shared code",
                s.vcpu, s.stepping_stops, s.shared_int3_stops,
            );
        }
        if s.stops_in_flight > 0 {
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} breakpoint or single-step stops completed by the \
                 shim (a kick came before their exception reached the guest)",
                s.vcpu, s.stops_in_flight,
            );
        }
        if s.tracer.interp_runs > 0 {
            let share = if s.tracer.instructions > 0 {
                100.0 * s.tracer.interpreted as f64 / s.tracer.instructions as f64
            } else {
                0.0
            };
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} instructions interpreted ({share:.1}% of traced) in \
                 {} stretches, {} handed back to breakpoints; {} from pre-resolved forms",
                s.vcpu,
                s.tracer.interpreted,
                s.tracer.interp_runs,
                s.tracer.interp_halts,
                s.tracer.interpreted_fast,
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
        if s.tracer.outside_on_cpu > 0 {
            eprintln!(
                "lbrprof: lbr: vCPU {}: {} RDTSC/RDRAND-class instructions ran on the CPU and \
                 read the host's values (the interpreter could not run there)",
                s.vcpu, s.tracer.outside_on_cpu,
            );
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
                 stretched by the overhead budget, {} samples skipped outside the guest's \
                 own code, {} windows cut short at the episode cap",
                s.vcpu,
                s.throttle.episodes,
                s.throttle.episode_ns as f64 / 1e9,
                s.throttle.stretched,
                s.throttle.skipped,
                s.tracer.windows_cut,
            );
        }
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
        use LbrBackend::{Emulated, Hardware};
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
