//! `--call-graph dwarf` on the recording model: [`lbrprof_unwind`] fed with the model's
//! side-band events and applied to its samples.
//!
//! Where unwinding happens: while *recording*, the sampler unwinds each sample's stack
//! copy as it passes the sample on (in time order, after the mappings it needs), and
//! stores only the resulting call chain. The recording format, `report`, `diff`,
//! flame graphs and every export stay unchanged, a recording keeps ~200 bytes per
//! sample (the call chain) instead of the ~8.4 KB of registers and stack copy perf
//! keeps, and the binaries are read on the machine and at the moment they ran (a later
//! upgrade cannot mislead the unwinder). A `perf.data` recorded with `perf record
//! --call-graph dwarf` carries the raw stack copies, so it is unwound while it is read,
//! with the same code: by the event stream ([`EventUnwinder`], in
//! [`crate::perfdata::PerfDataReader`]), by the mapped walk in perf's order (an
//! [`EventUnwinder`] following the side-band events it meets,
//! [`crate::source::PerfSource`]) or by the mapped fast path ([`ScanUnwinder`], one
//! snapshot of a process's mappings per epoch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use lbrprof_unwind::Unwinder;

use crate::model::{AddressSpace, CpuMode, Event, Frame, HostSample, TaskEvent};

pub use lbrprof_unwind::{Cache, Outcome, Regs, UnwindStats, abi::SAMPLE_REGS_USER};

/// A sample's user registers and the copy of its user stack (`PERF_SAMPLE_REGS_USER`,
/// `PERF_SAMPLE_STACK_USER`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackCopy {
    pub regs: Regs,
    pub stack: Vec<u8>,
}

/// The unwinder, kept current by the events that pass through it.
#[derive(Default)]
pub struct EventUnwinder {
    unwinder: Unwinder,
    scratch: Vec<u64>,
}

impl EventUnwinder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follow a side-band event (mappings, fork, exec, exit); samples are ignored here.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Mapping(m) if m.space == AddressSpace::HostUser => self.unwinder.add_mapping(
                m.pid,
                m.start,
                m.len,
                m.pgoff,
                &m.path,
                m.build_id.as_deref(),
            ),
            Event::Task(TaskEvent::Fork { pid, ppid, .. }) => self.unwinder.fork(*ppid, *pid),
            Event::Task(TaskEvent::Exec { pid, .. }) => self.unwinder.exec(*pid),
            Event::Task(TaskEvent::Exit { pid, tid, .. }) if pid == tid => self.unwinder.exit(*pid),
            _ => {}
        }
    }

    /// Replace the user part of `sample`'s call chain with the walk of its stack copy;
    /// the kernel part (from the kernel) stays in front of it.
    pub fn apply(&mut self, sample: &mut HostSample, regs: Regs, stack: &[u8]) -> Outcome {
        self.apply_to_chain(sample.pid, &mut sample.callchain, regs, stack)
    }

    /// [`EventUnwinder::apply`] on the call chain `chain` of a sample of process `pid`.
    pub fn apply_to_chain(
        &mut self,
        pid: u32,
        chain: &mut Vec<Frame>,
        regs: Regs,
        stack: &[u8],
    ) -> Outcome {
        self.scratch.clear();
        let outcome = self.unwinder.unwind(pid, regs, stack, &mut self.scratch);
        chain.retain(|f| f.mode != CpuMode::User);
        chain.extend(self.scratch.iter().map(|&addr| Frame {
            addr,
            mode: CpuMode::User,
        }));
        outcome
    }

    pub fn stats(&self) -> UnwindStats {
        self.unwinder.stats()
    }
}

/// Unwinding for the mapped fast path through a perf.data file
/// ([`crate::perfdata::mapped`]): samples are decoded chunk by chunk, on any thread, each
/// tagged with its epoch (the last state-changing side-band event of its process). The
/// side-band events are replayed once, in perf's order, through an [`EventUnwinder`]
/// ([`ScanUnwinder::observe`], chunk by chunk while the walk goes on), and the process's
/// mappings are kept as they were at each epoch, so a sample unwinds against exactly the
/// mappings the event stream would have given it.
#[derive(Default)]
pub struct ScanUnwinder {
    epochs: RwLock<HashMap<u64, lbrprof_unwind::Snapshot>>,
    replay: Mutex<EventUnwinder>,
    /// How many events were observed.
    observed: AtomicUsize,
}

/// A thread's state for [`ScanUnwinder::unwind`]: framehop's cache, and the snapshot of
/// the last epoch met (samples come in runs of one process and epoch).
#[derive(Default)]
pub struct ScanCache {
    cache: lbrprof_unwind::Cache,
    last: Option<(u64, Option<lbrprof_unwind::Snapshot>)>,
}

impl ScanUnwinder {
    /// Follows the next side-band event in perf's order, with the epoch it starts
    /// ([`crate::perfdata::mapped::Scan::sideband_epochs`]). Samples of an epoch may be
    /// unwound once its event has been observed.
    pub fn observe(&self, ev: &Event, epoch: Option<u64>) {
        self.observed.fetch_add(1, Ordering::Relaxed);
        let pid = match ev {
            Event::Mapping(m) => m.pid,
            Event::Task(
                TaskEvent::Comm { pid, .. }
                | TaskEvent::Exec { pid, .. }
                | TaskEvent::Fork { pid, .. },
            ) => *pid,
            _ => {
                lock(&self.replay).observe(ev);
                return;
            }
        };
        let snapshot = {
            let mut u = lock(&self.replay);
            u.observe(ev);
            epoch.and_then(|_| u.unwinder.snapshot(pid))
        };
        if let (Some(epoch), Some(snapshot)) = (epoch, snapshot) {
            let mut epochs = self.epochs.write().unwrap_or_else(|e| e.into_inner());
            epochs.insert(epoch, snapshot);
        }
    }

    /// How many events [`ScanUnwinder::observe`] has followed.
    pub fn observed(&self) -> usize {
        self.observed.load(Ordering::Relaxed)
    }

    /// Walk a sample's stack copy against its process's mappings at its `epoch`,
    /// pushing the frames onto `out`.
    pub fn unwind(
        &self,
        cache: &mut ScanCache,
        epoch: u64,
        regs: Regs,
        stack: &[u8],
        out: &mut Vec<u64>,
    ) -> Outcome {
        if cache.last.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let epochs = self.epochs.read().unwrap_or_else(|e| e.into_inner());
            cache.last = Some((epoch, epochs.get(&epoch).cloned()));
        }
        match cache.last.as_ref().and_then(|(_, s)| s.as_ref()) {
            Some(s) => s.unwind(&mut cache.cache, regs, stack, out),
            None => {
                out.push(regs.ip);
                Outcome::UnknownProcess
            }
        }
    }

    /// The mapped files that could not be read for their unwind tables.
    pub fn unusable_mappings(&self) -> u64 {
        lock(&self.replay).stats().unusable_mappings
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One line for a recording's notes: how the walks went.
pub fn summary(stats: &UnwindStats) -> String {
    let pct = |n: u64| 100.0 * n as f64 / stats.samples.max(1) as f64;
    format!(
        "--call-graph dwarf: {} user stacks unwound, {:.1}% to their outermost frame, \
         {:.1}% stopped early (the stack copy ended, or no unwind rule), {:.1} frames on \
         average{}",
        stats.samples,
        pct(stats.complete),
        pct(stats.truncated),
        stats.frames as f64 / stats.samples.max(1) as f64,
        match stats.unusable_mappings {
            0 => String::new(),
            n => format!("; {n} mapped files could not be read for their unwind tables"),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mapping;

    #[test]
    fn the_walk_replaces_user_frames_and_keeps_kernel_ones() {
        let mut u = EventUnwinder::new();
        let exe = std::env::current_exe().unwrap();
        u.observe(&Event::Mapping(Mapping {
            time_ns: 1,
            space: AddressSpace::HostUser,
            pid: 5,
            start: 0x1000,
            len: 0x1000,
            pgoff: 0,
            path: exe.to_string_lossy().into_owned(),
            build_id: None,
        }));
        let mut s = HostSample {
            pid: 5,
            tid: 5,
            ip: 0xffff_ffff_8100_0000,
            mode: CpuMode::Kernel,
            callchain: vec![
                Frame {
                    addr: 0xffff_ffff_8100_0000,
                    mode: CpuMode::Kernel,
                },
                Frame {
                    addr: 0x1,
                    mode: CpuMode::User,
                },
            ],
            ..HostSample::default()
        };
        let copy = StackCopy {
            regs: Regs {
                ip: 0x1010,
                sp: 0x8000,
                bp: 0x8010,
            },
            stack: vec![0; 8],
        };
        u.apply(&mut s, copy.regs, &copy.stack);
        assert_eq!(s.callchain.len(), 2, "{:?}", s.callchain);
        assert_eq!(s.callchain[0].mode, CpuMode::Kernel);
        assert_eq!(
            s.callchain[1],
            Frame {
                addr: 0x1010,
                mode: CpuMode::User
            }
        );
        assert_eq!(u.stats().samples, 1);
        assert!(summary(&u.stats()).contains("1 user stacks unwound"));
    }
}
