//! The emulated backend for one vCPU, without KVM: the [`VirtualPmu`], the [`Tracer`] and
//! the snapshot channel wired together the way the VMM's per-vCPU hook calls them. The hook
//! itself only translates between KVM and this type (guest access in, [`Resume`] out).
//!
//! Call order per exit, as the vCPU loop makes it:
//! * MSR exit: [`EmulatedVcpu::rdmsr`] / [`EmulatedVcpu::wrmsr`] (they first account the
//!   instructions up to the RDMSR/WRMSR, so counters read exactly), then
//!   [`EmulatedVcpu::on_exit`].
//! * Debug exit: [`EmulatedVcpu::on_debug`] only.
//! * Any other exit: [`EmulatedVcpu::on_exit`].
//!
//! Each returns the [`Resume`] to apply before re-entry. When it asks for an NMI (a PMI), the
//! shim-driven snapshot path (if enabled) has already sent the frozen LBR over the channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::cpuid::{self, CpuidEntry};
use super::guest::GuestAccess;
use super::interp::outside::OutsideConfig;
use super::msr::*;
use super::profile::ExactProfile;
use super::throttle::{Throttle, ThrottleStats};
use super::tracer::{Resume, TraceError, TraceMode, Tracer, TracerStats, walk_frame_pointers};
use super::vpmu::{COUNTER_WIDTH, Gp, PmuConfig, PmuStats, SnapshotContext, VirtualPmu};
use crate::hook::ShimCode;
use crate::phase::{self, ShimPhase};
use crate::snapshot::{LbrSnapshot, SnapshotReason};

/// The sending end of the snapshot channel, shared by all vCPUs. Never blocks: a full or
/// closed channel counts a loss. In exact mode it also collects each vCPU's
/// [`ExactProfile`] when the vCPU stops.
#[derive(Clone, Debug)]
pub struct SnapshotSink {
    tx: Sender<LbrSnapshot>,
    lost: Arc<AtomicU64>,
    profiles: Arc<Mutex<Vec<ExactProfile>>>,
}

impl SnapshotSink {
    /// A bounded channel of `capacity` snapshots.
    pub fn bounded(capacity: usize) -> (SnapshotSink, Receiver<LbrSnapshot>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (
            SnapshotSink {
                tx,
                lost: Arc::new(AtomicU64::new(0)),
                profiles: Arc::default(),
            },
            rx,
        )
    }

    pub fn send(&self, s: LbrSnapshot) {
        match self.tx.try_send(s) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Snapshots dropped because the channel was full (or its reader gone).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The exact-mode profiles of the vCPUs that stopped so far (taken: a second call
    /// returns only those that stopped since), in vCPU order.
    pub fn take_profiles(&self) -> Vec<ExactProfile> {
        let mut v = std::mem::take(&mut *self.profiles.lock().unwrap_or_else(|e| e.into_inner()));
        v.sort_by_key(|p| p.vcpu);
        v
    }

    fn send_profile(&self, p: ExactProfile) {
        self.profiles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }
}

/// Who programs the virtual PMU and handles its PMIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// The guest does (its PMU driver or lbrprof's LBR agent): PMIs are injected as NMIs.
    Guest,
    /// The shim does, for guests without an agent: it enables the LBR with
    /// FREEZE_LBRS_ON_PMI and arms a fixed counter (instructions in exact mode, core cycles
    /// in sampled mode) to overflow every `period` events. Each PMI snapshots the frozen LBR
    /// and re-arms, as a PMI handler would; the guest never sees an NMI.
    Shim { period: u64 },
}

/// How one vCPU's emulated LBR runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulatedConfig {
    pub vcpu: u32,
    pub pmu: PmuConfig,
    pub mode: TraceMode,
    pub sampling: Sampling,
    /// With [`Sampling::Guest`]: also snapshot the model at every PMI the guest gets.
    pub shim_snapshots: bool,
    /// Guest core cycles per second of host time (sampled mode's time-based counters).
    pub cycles_per_sec: u64,
    /// Frames of guest stack to walk for a shim-driven snapshot.
    pub max_stack_frames: usize,
    /// Shim-driven sampling in sampled mode: the percent of wall time tracing and
    /// snapshotting may take before the interval to the next snapshot is stretched (see
    /// [`Throttle`]); 0 (the default here) or 100 never throttle. Exact mode ignores it.
    pub overhead_percent: u32,
    /// Run the guest in the shim's interpreter where the tracer can (see
    /// [`super::interp`]) instead of stopping it at every branch. On by default; off for
    /// comparisons.
    pub interpret: bool,
    /// Benchmarking only: sampled-mode windows record no branches, so what remains is the
    /// cost of stopping the guest for a sample (used by `bench/lbr-emulation` to measure
    /// the host's floor).
    pub empty_windows: bool,
    /// Print every interpreter halt (hand-back to breakpoints) on stderr.
    pub log_halts: bool,
    /// Exact mode: what the interpreter answers from a pinned world instead of the CPU
    /// (RDRAND, RDSEED, RDTSC, RDTSCP, RDPID; [`super::interp::outside`]).
    pub outside: OutsideConfig,
    /// Shim-driven sampling in sampled mode: draw each interval to the next snapshot at
    /// random (exponentially distributed around the period, a Poisson process in time),
    /// so samples cannot lock onto a periodic program's rhythm. Off: every interval is the
    /// period (deterministic, for tests). Exact mode ignores it.
    pub random_intervals: bool,
    /// Shim-driven sampling in sampled mode: the time one sampling episode (its window
    /// and snapshot) may take, nanoseconds of [`EmulatedConfig::episode_clock`]; a window
    /// still open at a stop past it is cut there ([`Tracer::cut_window`]): its snapshot
    /// holds the branches recorded so far. Bounds what one costly window (a loop of
    /// exits, a long string copy) costs and, through the overhead budget, how long the
    /// next interval is stretched. 0: no cap. Exact mode ignores it.
    pub max_episode_ns: u64,
    /// The clock [`EmulatedConfig::max_episode_ns`] is measured on.
    pub episode_clock: EpisodeClock,
}

/// What an episode's cost is measured in, for the episode cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeClock {
    /// The CPU time of the calling (vCPU) thread, guest time included: what the episode
    /// really cost. Time the host spent running other threads does not count, so a
    /// loaded host does not cut windows that were merely preempted.
    ThreadCpu,
    /// The host times passed in with each exit (deterministic, for tests).
    Host,
}

/// The calling thread's CPU time, nanoseconds.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// The default [`EmulatedConfig::max_episode_ns`]: a few times what a window costs here
/// (one to two milliseconds in a debug build on the nested host).
pub const MAX_EPISODE_NS: u64 = 5_000_000;

/// Where an exit left the guest, for sampled mode's choice of where a sample may be taken.
///
/// A sample must be taken at a point in time independent of what the program does, so
/// that the share of samples in a function approximates its share of the guest's time.
/// Opened at the program's own exits (system calls, page faults), windows would credit
/// code near exits with the time the VMM spent serving them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitPoint {
    /// An asynchronous event (the exit timer's kick) found the vCPU running the guest's
    /// own code: a fair sample point.
    Async,
    /// Anything else: an exit the guest made, a kick that arrived while the VMM served
    /// an exit, a stop in the VMM's own code in the guest. A sample falling due here is
    /// skipped and the next one drawn (thinning the Poisson process of sample times
    /// leaves the accepted ones uniform over the guest's own running time).
    Sync,
}

impl EmulatedConfig {
    pub fn new(vcpu: u32, pmu: PmuConfig, mode: TraceMode) -> EmulatedConfig {
        EmulatedConfig {
            vcpu,
            pmu,
            mode,
            sampling: Sampling::Guest,
            shim_snapshots: false,
            cycles_per_sec: 2_000_000_000,
            max_stack_frames: 64,
            overhead_percent: 0,
            interpret: true,
            empty_windows: false,
            log_halts: false,
            outside: OutsideConfig::default(),
            random_intervals: false,
            max_episode_ns: MAX_EPISODE_NS,
            episode_clock: EpisodeClock::ThreadCpu,
        }
    }
}

/// The emulated PMU/LBR of one vCPU.
#[derive(Debug)]
pub struct EmulatedVcpu {
    cfg: EmulatedConfig,
    pmu: VirtualPmu,
    tracer: Tracer,
    sink: Option<SnapshotSink>,
    last_ns: Option<u64>,
    snapshots: u64,
    throttle: Throttle,
    /// When the current sampling window started tracing (sampled mode), host ns.
    window_started_ns: Option<u64>,
    /// The same moment on [`EmulatedConfig::episode_clock`], for the episode cap.
    window_started_cost_ns: Option<u64>,
    /// Shim-driven sampling: the requested mean interval between samples, cycles. After
    /// a window the overhead budget may add a dead time before it (in `after`); a skipped sample's redraw has none (it cost nothing).
    mean_period: u64,
    /// Draws random intervals ([`EmulatedConfig::random_intervals`]).
    rng: Option<fastrand::Rng>,
    /// Samples that fell due at a [`ExitPoint::Sync`] exit and were skipped.
    skipped_samples: u64,
    /// The VMM's code in the guest: a snapshot taken there is credited to the code it
    /// interrupted.
    shim_code: Option<ShimCode>,
    /// Shim-driven sampling in sampled mode: where the open window's sample point found
    /// the guest (see [`Origin`]).
    window_origin: Option<Origin>,
    /// The VM's smoothed sampling-episode cost, ns, shared by its vCPUs (see
    /// [`EmulatedVcpu::share_episode_costs`]).
    shared_cost_ns: Option<Arc<AtomicU64>>,
}

/// Where a sampled-mode window started: the guest's IP, SP, FP and stack at the sample
/// point. The snapshot is credited there, not to where the window's last branch left
/// the guest: the sample point is uniform in the guest's time, while the window's end
/// lies a fixed number of branches later, which would weight code by its branches
/// (a loop with few instructions per branch would gain at the expense of long blocks).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    ip: u64,
    sp: u64,
    fp: u64,
    stack: Vec<u64>,
}

impl EmulatedVcpu {
    pub fn new(cfg: EmulatedConfig, sink: Option<SnapshotSink>) -> EmulatedVcpu {
        let mut tracer = Tracer::new(cfg.mode);
        tracer.set_inject_pmis(cfg.sampling == Sampling::Guest);
        tracer.set_interpreter(cfg.interpret);
        tracer.set_empty_windows(cfg.empty_windows);
        tracer.set_log_halts(cfg.log_halts);
        tracer.set_outside(cfg.outside, cfg.vcpu);
        tracer.set_profiling(sink.is_some());
        let mut v = EmulatedVcpu {
            cfg,
            pmu: VirtualPmu::new(cfg.pmu),
            tracer,
            sink,
            last_ns: None,
            snapshots: 0,
            throttle: match (cfg.mode, cfg.sampling) {
                (TraceMode::Sampled { .. }, Sampling::Shim { .. }) => {
                    Throttle::new(cfg.overhead_percent)
                }
                // Exact mode's point is completeness; the guest drives its own PMU.
                _ => Throttle::disabled(),
            },
            window_started_ns: None,
            window_started_cost_ns: None,
            mean_period: 0,
            // Exact mode's samples are deterministic: never random.
            rng: (cfg.random_intervals && matches!(cfg.mode, TraceMode::Sampled { .. }))
                .then(fastrand::Rng::new),
            skipped_samples: 0,
            shim_code: None,
            window_origin: None,
            shared_cost_ns: None,
        };
        if let Sampling::Shim { period } = cfg.sampling {
            v.mean_period = period;
            let first = v.next_interval();
            v.arm_shim(first, true);
        }
        v
    }

    /// The VMM's own code in the guest (see [`ShimCode`]): snapshots taken there are
    /// credited to the code it interrupted, and no sample is taken there.
    pub fn set_shim_code(&mut self, shim: Option<ShimCode>) {
        self.shim_code = shim;
    }

    /// Shares the overhead budget's smoothed episode cost with the VM's other vCPUs
    /// through `cost_ns` (0 = none yet): a vCPU that starts later (a forked process, a
    /// new thread) starts from it. Starting from nothing, each new process would be
    /// sampled at the full rate until its first window, so the start-up of every process
    /// would weigh more than its time.
    pub fn share_episode_costs(&mut self, cost_ns: Arc<AtomicU64>) {
        self.throttle.seed(cost_ns.load(Ordering::Relaxed));
        if let Some(avg) = self.throttle.avg_cost_ns()
            && self.throttle.enabled()
        {
            // Seeded: the first interval is already the budget's.
            let cps = u128::from(self.cfg.cycles_per_sec.max(1));
            let pct = u128::from(self.throttle.percent());
            let needed = u128::from(avg) * (100 - pct) / pct * cps / 1_000_000_000;
            if needed > u128::from(self.mean_period) {
                // A random start at the VM's throttled rate (not a dead time: this vCPU
                // has had no window to pay for).
                let first = self.draw(needed.min(u128::from(u64::MAX)) as u64);
                self.arm_shim(first, false);
            }
        }
        self.shared_cost_ns = Some(cost_ns);
    }

    /// Whether `rip` is the VMM's own code in the guest.
    pub fn in_shim_code(&self, rip: u64) -> bool {
        self.shim_code.as_ref().is_some_and(|s| s.contains(rip))
    }

    /// Samples skipped because they fell due at a [`ExitPoint::Sync`] exit.
    pub fn skipped_samples(&self) -> u64 {
        self.skipped_samples
    }

    /// The interval to the next shim-driven sample, cycles: the mean period, or with
    /// random intervals an exponential draw around it (capped at 20 means, a 2e-9 tail).
    fn next_interval(&mut self) -> u64 {
        self.draw(self.mean_period)
    }

    /// An interval of mean `mean` cycles: exponential with random intervals, else `mean`.
    fn draw(&mut self, mean: u64) -> u64 {
        let mean = mean.max(1);
        let Some(rng) = &mut self.rng else {
            return mean;
        };
        exponential(1.0 - rng.f64(), mean)
    }

    /// The fixed counter shim-driven sampling uses: INST_RETIRED.ANY in exact mode (so
    /// samples are deterministic), CPU_CLK_UNHALTED.THREAD in sampled mode (time).
    fn shim_fixed(&self) -> u32 {
        match self.cfg.mode {
            TraceMode::Exact => 0,
            TraceMode::Sampled { .. } => 1,
        }
    }

    /// Programs (or, after a PMI, re-arms) the virtual PMU the way a guest PMI handler
    /// would. These writes are valid by construction.
    fn arm_shim(&mut self, period: u64, first: bool) {
        let fixed = self.shim_fixed();
        let period = period.clamp(1, (1 << COUNTER_WIDTH) - 1);
        let status = self.pmu.rdmsr(IA32_PERF_GLOBAL_STATUS).unwrap_or(0);
        let writes = [
            (IA32_PERF_GLOBAL_OVF_CTRL, status),
            (IA32_FIXED_CTR0 + fixed, (1 << COUNTER_WIDTH) - period),
            (
                IA32_FIXED_CTR_CTRL,
                (FIXED_CTRL_OS | FIXED_CTRL_USR | FIXED_CTRL_PMI)
                    << (fixed * FIXED_CTRL_FIELD_BITS),
            ),
            (IA32_PERF_GLOBAL_CTRL, 1 << (GLOBAL_FIXED0_BIT + fixed)),
            (IA32_DEBUGCTL, DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI),
        ];
        for (msr, value) in writes {
            if first && msr == IA32_PERF_GLOBAL_OVF_CTRL {
                continue;
            }
            let ok = self.pmu.wrmsr(msr, value);
            debug_assert!(ok.is_ok(), "shim PMU write {msr:#x} = {value:#x}: {ok:?}");
        }
    }

    pub fn mode(&self) -> TraceMode {
        self.cfg.mode
    }

    /// See [`Tracer::set_follow_nmi_handler`].
    pub fn set_follow_nmi_handler(&mut self, follow: bool) {
        self.tracer.set_follow_nmi_handler(follow);
    }

    pub fn pmu(&self) -> &VirtualPmu {
        &self.pmu
    }

    pub fn pmu_stats(&self) -> PmuStats {
        self.pmu.stats()
    }

    pub fn tracer_stats(&self) -> TracerStats {
        self.tracer.stats()
    }

    /// What the overhead budget measured and did.
    pub fn throttle_stats(&self) -> ThrottleStats {
        ThrottleStats {
            skipped: self.skipped_samples,
            ..self.throttle.stats()
        }
    }

    /// Snapshots sent (or lost) so far.
    pub fn snapshots(&self) -> u64 {
        self.snapshots
    }

    /// The MSR ranges to route to user space (inclusive).
    pub fn msr_ranges(&self) -> Vec<(u32, u32)> {
        VirtualPmu::msr_ranges()
    }

    pub fn adjust_cpuid(&self, entries: &mut Vec<CpuidEntry>) {
        cpuid::shape_for_emulation(entries, &self.cfg.pmu);
    }

    /// Before the first KVM_RUN.
    pub fn on_start(&mut self, g: &mut dyn GuestAccess, now_ns: u64) -> Result<Resume, TraceError> {
        self.last_ns = Some(now_ns);
        let r = self.tracer.start(g, &mut self.pmu)?;
        self.after(g, r, now_ns)
    }

    /// The vCPU runs another program (see [`crate::VcpuHook::on_new_program`]): the
    /// tracer forgets the old one's code and plans, the LBR its branches.
    pub fn forget_program(&mut self) {
        self.tracer.forget_program();
        self.pmu.clear_lbr();
        self.window_started_ns = None;
        self.window_started_cost_ns = None;
        self.window_origin = None;
    }

    /// A guest RDMSR of one of the routed MSRs.
    pub fn rdmsr(&mut self, g: &mut dyn GuestAccess, msr: u32) -> Result<u64, Gp> {
        // Best effort: if the registers cannot be read, the value is one block stale.
        let _ = self.tracer.sync(g, &mut self.pmu);
        self.pmu.rdmsr(msr)
    }

    /// A guest WRMSR of one of the routed MSRs.
    pub fn wrmsr(&mut self, g: &mut dyn GuestAccess, msr: u32, value: u64) -> Result<(), Gp> {
        let _ = self.tracer.sync(g, &mut self.pmu);
        self.pmu.wrmsr(msr, value)
    }

    /// Any exit but a debug exit, after the shim served it, taken as an
    /// [`ExitPoint::Async`] one (see [`EmulatedVcpu::on_exit_at`]).
    pub fn on_exit(&mut self, g: &mut dyn GuestAccess, now_ns: u64) -> Result<Resume, TraceError> {
        self.on_exit_at(g, now_ns, ExitPoint::Async)
    }

    /// Any exit but a debug exit, after the shim served it; `at` says whether a
    /// shim-driven sample may be taken here.
    pub fn on_exit_at(
        &mut self,
        g: &mut dyn GuestAccess,
        now_ns: u64,
        at: ExitPoint,
    ) -> Result<Resume, TraceError> {
        let r = if self.tracer.tracing() || self.cfg.mode == TraceMode::Exact {
            let _tracing = phase::scoped(ShimPhase::Tracing);
            self.tracer.sync(g, &mut self.pmu)?;
            match self.cut_long_episode(g, now_ns)? {
                Some(r) => r,
                None => self.tracer.replan(g, &mut self.pmu)?,
            }
        } else if at == ExitPoint::Sync && self.shim_sample_due(self.elapsed_cycles(now_ns)) {
            // Not a fair point for the sample (see `ExitPoint`): skip it, draw the next.
            // The counter's value means nothing to a guest that does not own the PMU.
            self.skipped_samples += 1;
            let next = self.next_interval();
            self.arm_shim(next, false);
            self.tracer.replan(g, &mut self.pmu)?
        } else {
            let cycles = self.elapsed_cycles(now_ns);
            let cpu = g.cpu()?;
            let cpl = cpu.cpl;
            if self.shim_sample_due(cycles) {
                // The sample point: a window opens here.
                self.window_origin = Some(Origin {
                    ip: cpu.rip,
                    sp: cpu.rsp,
                    fp: cpu.rbp,
                    stack: walk_frame_pointers(g, cpu.rbp, self.cfg.max_stack_frames),
                });
            }
            let windows = self.tracer.stats().windows;
            let started = std::time::Instant::now();
            let tracing = phase::scoped(ShimPhase::Tracing);
            let r = self.tracer.on_free_run(g, &mut self.pmu, cycles, cpl)?;
            drop(tracing);
            if self.tracer.tracing() {
                self.window_started_ns = Some(now_ns);
                self.window_started_cost_ns = Some(self.episode_clock_ns(now_ns));
            } else if self.tracer.stats().windows != windows {
                // The interpreter ran the whole window within this call: charge the
                // budget what it took.
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.window_started_ns = Some(now_ns.saturating_sub(took));
            }
            if r.is_free() && !r.inject_nmi && !r.pmi {
                // A PMI queued by a WRMSR or by the time just charged.
                self.tracer.replan(g, &mut self.pmu)?
            } else {
                r
            }
        };
        self.last_ns = Some(now_ns);
        self.after(g, r, now_ns)
    }

    /// The VMM moved the guest by no branch of its own (see [`Tracer::moved`]): the new
    /// plan, or `None` when nothing was planned (running free).
    pub fn on_moved(
        &mut self,
        g: &mut dyn GuestAccess,
        now_ns: u64,
    ) -> Result<Option<Resume>, TraceError> {
        match self.tracer.moved(g, &mut self.pmu)? {
            Some(r) => self.after(g, r, now_ns).map(Some),
            None => Ok(None),
        }
    }

    /// A single-step or breakpoint exit.
    pub fn on_debug(&mut self, g: &mut dyn GuestAccess, now_ns: u64) -> Result<Resume, TraceError> {
        let mut r = self.tracer.on_debug_exit(g, &mut self.pmu)?;
        if !r.pmi
            && let Some(cut) = self.cut_long_episode(g, now_ns)?
        {
            // The plan just made is dropped: the guest runs free from this stop.
            r = cut;
        }
        if !self.tracer.tracing() {
            // Back to free running: time spent tracing is not guest time.
            self.last_ns = Some(now_ns);
        }
        self.after(g, r, now_ns)
    }

    /// The vCPU stopped: a final snapshot so the tail of the run is not lost.
    pub fn on_stop(&mut self, g: &mut dyn GuestAccess, now_ns: u64) {
        let _ = self.tracer.sync(g, &mut self.pmu);
        if let (Some(sink), Some(p)) = (&self.sink, self.tracer.take_profile(self.cfg.vcpu)) {
            sink.send_profile(p);
        }
        // A sampled window still open holds only its first branches (the LBR was emptied
        // when it opened): not a snapshot worth its empty slots. With shim-driven
        // sampling in sampled mode no final snapshot at all: the LBR holds the last
        // window's branches, already sent, and the end of a program (`_exit`) is no
        // sample point (each process of a pipeline would add one there).
        let sampled = matches!(self.cfg.mode, TraceMode::Sampled { .. });
        let partial = sampled && self.tracer.tracing();
        let shim_sampled = sampled && matches!(self.cfg.sampling, Sampling::Shim { .. });
        if !partial
            && !shim_sampled
            && (self.cfg.shim_snapshots || matches!(self.cfg.sampling, Sampling::Shim { .. }))
        {
            self.send_snapshot(g, now_ns, Some(SnapshotReason::Final));
        }
    }

    /// Cuts the open sampling window at this (accounted) stop if its episode has taken
    /// longer than [`EmulatedConfig::max_episode_ns`] (shim-driven sampled mode only).
    fn cut_long_episode(
        &mut self,
        g: &mut dyn GuestAccess,
        now_ns: u64,
    ) -> Result<Option<Resume>, TraceError> {
        if self.cfg.max_episode_ns == 0
            || !matches!(self.cfg.sampling, Sampling::Shim { .. })
            || !self.tracer.tracing()
        {
            return Ok(None);
        }
        let Some(start) = self.window_started_cost_ns else {
            return Ok(None);
        };
        if self.episode_clock_ns(now_ns).saturating_sub(start) <= self.cfg.max_episode_ns {
            return Ok(None);
        }
        self.tracer.cut_window(g, &mut self.pmu)
    }

    /// Now on the episode cap's clock (`now_ns` is the host time of this exit).
    fn episode_clock_ns(&self, now_ns: u64) -> u64 {
        match self.cfg.episode_clock {
            EpisodeClock::ThreadCpu => thread_cpu_ns(),
            EpisodeClock::Host => now_ns,
        }
    }

    /// Shim-driven sampling: the next sample is due after `cycles` more.
    fn shim_sample_due(&self, cycles: u64) -> bool {
        matches!(self.cfg.sampling, Sampling::Shim { .. })
            && self
                .pmu
                .instructions_until_pmi(3)
                .is_some_and(|due| cycles.saturating_add(1) >= due)
    }

    fn elapsed_cycles(&self, now_ns: u64) -> u64 {
        let ns = now_ns.saturating_sub(self.last_ns.unwrap_or(now_ns));
        ((u128::from(ns) * u128::from(self.cfg.cycles_per_sec)) / 1_000_000_000) as u64
    }

    /// Handles a PMI the tracer reported: snapshot, and with shim-driven sampling, re-arm
    /// and re-plan (the counters changed).
    fn after(
        &mut self,
        g: &mut dyn GuestAccess,
        r: Resume,
        now_ns: u64,
    ) -> Result<Resume, TraceError> {
        if !r.pmi {
            return Ok(r);
        }
        match self.cfg.sampling {
            Sampling::Guest => {
                if self.cfg.shim_snapshots {
                    self.send_snapshot(g, now_ns, None);
                }
                Ok(r)
            }
            Sampling::Shim { period } => {
                self.send_snapshot(g, now_ns, None);
                // The budget's stretch is a dead time after this window, then samples
                // fall due at the requested rate again: a sample skipped later (outside
                // the guest's code) is redrawn at that rate, or a program that spends
                // most of its wall time in system calls would be sampled far below the
                // budget (short processes of a pipeline not at all).
                let dead = self.throttled_period(period, now_ns).saturating_sub(period);
                let next = dead.saturating_add(self.next_interval());
                self.arm_shim(next, false);
                let mut r = self.tracer.replan(g, &mut self.pmu)?;
                r.pmi = true;
                Ok(r)
            }
        }
    }

    /// The period to the next shim-driven snapshot: `period`, or longer when the window
    /// that just ended pushes the time spent tracing over the overhead budget.
    fn throttled_period(&mut self, period: u64, now_ns: u64) -> u64 {
        self.window_started_cost_ns = None;
        let Some(start) = self.window_started_ns.take() else {
            return period;
        };
        let cps = u128::from(self.cfg.cycles_per_sec.max(1));
        let requested_ns = (u128::from(period) * 1_000_000_000 / cps).min(u128::from(u64::MAX));
        let requested_ns = requested_ns as u64;
        let ns = self
            .throttle
            .next_interval_ns(now_ns.saturating_sub(start), requested_ns);
        if let (Some(shared), Some(avg)) = (&self.shared_cost_ns, self.throttle.avg_cost_ns()) {
            shared.store(avg, Ordering::Relaxed);
        }
        if ns == requested_ns {
            return period;
        }
        (u128::from(ns) * cps / 1_000_000_000).min(u128::from(u64::MAX)) as u64
    }

    fn send_snapshot(
        &mut self,
        g: &mut dyn GuestAccess,
        now_ns: u64,
        reason: Option<SnapshotReason>,
    ) {
        let _snapshot = phase::scoped(ShimPhase::Snapshot);
        let mut ctx = SnapshotContext {
            vcpu: self.cfg.vcpu,
            host_time_ns: now_ns,
            reason,
            ..SnapshotContext::default()
        };
        let origin = if reason.is_none() {
            self.window_origin.take()
        } else {
            None
        };
        if let Some(o) = origin {
            ctx.guest_ip = o.ip;
            ctx.guest_sp = o.sp;
            ctx.guest_fp = o.fp;
            ctx.guest_stack = o.stack;
            ctx.cr3 = g.cpu().map_or(0, |c| c.cr3);
        } else if let Ok(cpu) = g.cpu() {
            ctx.guest_ip = cpu.rip;
            ctx.guest_sp = cpu.rsp;
            // In the VMM's own code (a trap stub): the snapshot is the interrupted code's.
            if let Some(shim) = &self.shim_code
                && shim.contains(cpu.rip)
            {
                let mut read = |gva: u64| {
                    let mut b = [0u8; 8];
                    g.read_virt(gva, &mut b)
                        .ok()
                        .map(|()| u64::from_le_bytes(b))
                };
                if let Some((ip, sp)) = shim.interrupted(cpu.rip, cpu.rsp, cpu.rcx, &mut read) {
                    ctx.guest_ip = ip;
                    ctx.guest_sp = sp;
                }
            }
            ctx.guest_fp = cpu.rbp;
            ctx.cr3 = cpu.cr3;
            ctx.guest_stack = walk_frame_pointers(g, cpu.rbp, self.cfg.max_stack_frames);
        }
        ctx.guest_tsc = g.read_msr(IA32_TSC).unwrap_or(0);
        let snap = self.pmu.snapshot(ctx);
        self.snapshots += 1;
        if let Some(sink) = &self.sink {
            sink.send(snap);
        }
    }

    /// A snapshot the guest's own agent took (guest-driven path, see [`super::agent`]):
    /// counted with the shim's own and sent down the same channel.
    pub fn agent_snapshot(&mut self, snap: LbrSnapshot) {
        self.snapshots += 1;
        if let Some(sink) = &self.sink {
            sink.send(snap);
        }
    }

    /// Converts a free-run deadline in cycles to host nanoseconds (for the VMM's timer).
    pub fn deadline_ns(&self, r: &Resume) -> Option<u64> {
        r.deadline_cycles.map(|c| {
            ((u128::from(c) * 1_000_000_000) / u128::from(self.cfg.cycles_per_sec.max(1))) as u64
        })
    }
}

/// An exponentially distributed interval with mean `mean` from `u`, uniform in (0, 1],
/// capped at 20 means.
fn exponential(u: f64, mean: u64) -> u64 {
    let x = -u.clamp(f64::MIN_POSITIVE, 1.0).ln() * mean as f64;
    (x.min(20.0 * mean as f64) as u64).max(1)
}

#[cfg(test)]
mod tests;
