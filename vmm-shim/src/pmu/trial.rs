//! A short real run of the emulated LBR, so that `lbrprof info` says the backend works only
//! after seeing it work on this host: the built-in `calls` guest runs in ring 3 under the
//! same hook `record --vm` uses ([`EmulatedPmuHook`] with shim-driven sampling), and the
//! snapshots that come back are counted and checked.
//!
//! Capability bits alone cannot tell: on nested hosts KVM may advertise guest debugging
//! that never reaches ring-3 code, while the emulated LBR still works there through its
//! guest trap handlers and interpreter. Only a run settles it.

use std::fmt;
use std::time::{Duration, Instant};

use super::emulated::{EmulatedConfig, Sampling, SnapshotSink};
use super::kvm_hook::EmulatedPmuHook;
use super::tracer::TraceMode;
use super::vpmu::PmuConfig;
use crate::builtin;
use crate::hook::VcpuHook;
use crate::vm::{Outcome, Vm, VmConfig};

/// The trial's guest: enough calls for a few dozen snapshots, a few ms in ring 3.
const GUEST: &str = "calls";
const GUEST_ARGS: &str = "n=300 depth=6";
/// Exact mode, a snapshot every this many guest instructions.
const PERIOD: u64 = 1_000;
/// Snapshots the trial waits for at most (the channel never fills).
const CHANNEL: usize = 4096;

/// What a trial run saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialOutcome {
    /// Snapshots taken.
    pub snapshots: u64,
    /// Branch records in them.
    pub branches: u64,
    pub elapsed: Duration,
}

impl TrialOutcome {
    /// The backend works: snapshots arrived and they hold branches.
    pub fn works(&self) -> bool {
        self.snapshots > 0 && self.branches > 0
    }
}

impl fmt::Display for TrialOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trial run ({:.0} ms): the built-in `{GUEST}` guest in exact mode gave {} snapshots \
             with {} branch records",
            self.elapsed.as_secs_f64() * 1e3,
            self.snapshots,
            self.branches,
        )
    }
}

/// Why a trial could not be run to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrialError {
    #[error("the trial guest could not be started: {0}")]
    Vm(#[from] crate::vm::VmError),
    #[error("the trial guest did not finish cleanly: {0}")]
    Outcome(String),
}

/// Runs the trial (about 10–100 ms, most of it the guest's emulated ring-0 boot).
pub fn emulated_lbr() -> Result<TrialOutcome, TrialError> {
    let image = builtin::image(GUEST)
        .ok_or_else(|| TrialError::Outcome(format!("no built-in guest `{GUEST}` in this build")))?;
    let pmu = PmuConfig::new(4, 32).map_err(|e| TrialError::Outcome(e.to_string()))?;
    let (sink, rx) = SnapshotSink::bounded(CHANNEL);
    let mut config = VmConfig::new(16 << 20, 1);
    config.cmdline = GUEST_ARGS.into();
    config.timeout = Some(Duration::from_secs(20));
    config.serial = Box::new(std::io::sink());
    config.warn = Box::new(|_| {});
    let hooks = move |vcpu: u32| -> Box<dyn VcpuHook> {
        let mut cfg = EmulatedConfig::new(vcpu, pmu, TraceMode::Exact);
        cfg.sampling = Sampling::Shim { period: PERIOD };
        Box::new(EmulatedPmuHook::new(cfg, Some(sink.clone())))
    };
    let started = Instant::now();
    let report = Vm::run(config, image, &hooks)?;
    let elapsed = started.elapsed();
    match report.outcome {
        Outcome::Exited(0) | Outcome::PowerOff => {}
        Outcome::Exited(code) => {
            return Err(TrialError::Outcome(format!("the guest exited with {code}")));
        }
        Outcome::TimedOut(after) => {
            return Err(TrialError::Outcome(format!("timed out after {after:?}")));
        }
        Outcome::Crashed(crash) | Outcome::Signaled { crash, .. } => {
            return Err(TrialError::Outcome(format!(
                "vCPU {} crashed: {}",
                crash.vcpu, crash.reason
            )));
        }
        Outcome::Stopped => return Err(TrialError::Outcome("stopped".into())),
    }
    let mut outcome = TrialOutcome {
        snapshots: 0,
        branches: 0,
        elapsed,
    };
    for snapshot in rx.try_iter() {
        outcome.snapshots += 1;
        outcome.branches += snapshot.newest_first().count() as u64;
    }
    Ok(outcome)
}
