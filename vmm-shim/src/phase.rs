//! Where each vCPU thread is, as a fact: the vCPU loop and the LBR emulation mark the
//! phase they enter ([`ShimPhase`]: in KVM_RUN, serving a Linux system call, tracing
//! branches, taking a snapshot, ...), and a profiler that samples the vCPU threads looks
//! up the phase at each sample's time instead of guessing it from function names.
//!
//! Each vCPU thread writes its transitions (CLOCK_MONOTONIC, the timebase of host
//! samples) into its own bounded ring ([`PhaseLog`]), registered by thread id on the
//! VM's [`PhaseBoard`]. The ring keeps the last [`RING_CAPACITY`] transitions: a reader
//! that looks up samples every few tens of milliseconds finds them all (a vCPU makes at
//! most a few hundred thousand transitions a second here, where one VM exit costs
//! 10-130 µs); an older sample gets `None`. The thread's own log is found through a
//! thread-local, so code deep in a hook marks its phase without plumbing.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

pub use lbrprof_data::model::ShimPhase;

use lbrprof_data::clock::monotonic_ns;

/// Transitions a vCPU's ring keeps (16 bytes each).
pub const RING_CAPACITY: usize = 1 << 16;

/// One vCPU thread's recent phase transitions.
#[derive(Debug)]
pub struct PhaseLog {
    ring: Mutex<VecDeque<(u64, ShimPhase)>>,
    capacity: usize,
}

impl PhaseLog {
    fn with_capacity(capacity: usize) -> PhaseLog {
        PhaseLog {
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(u64, ShimPhase)>> {
        // Entries are plain values: a panic while holding the lock leaves them valid.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, time_ns: u64, phase: ShimPhase) {
        let mut ring = self.lock();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back((time_ns, phase));
    }

    /// The phase the thread was in at `time_ns`: that of the last transition at or
    /// before it. `None` when the ring no longer (or not yet) covers that time.
    pub fn phase_at(&self, time_ns: u64) -> Option<ShimPhase> {
        let ring = self.lock();
        let after = ring.partition_point(|&(t, _)| t <= time_ns);
        // The oldest entry kept starts the covered stretch: before it, the phase is
        // whatever an evicted transition said.
        after.checked_sub(1).map(|i| ring[i].1)
    }
}

/// The phase logs of a VM's vCPU threads, by host thread id.
#[derive(Debug, Default)]
pub struct PhaseBoard {
    logs: Mutex<HashMap<u32, Arc<PhaseLog>>>,
}

impl PhaseBoard {
    pub fn new() -> PhaseBoard {
        PhaseBoard::default()
    }

    fn logs(&self) -> MutexGuard<'_, HashMap<u32, Arc<PhaseLog>>> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new log for the vCPU thread `tid`.
    pub fn register(&self, tid: u32) -> Arc<PhaseLog> {
        self.register_with(tid, RING_CAPACITY)
    }

    fn register_with(&self, tid: u32, capacity: usize) -> Arc<PhaseLog> {
        let log = Arc::new(PhaseLog::with_capacity(capacity));
        self.logs().insert(tid, log.clone());
        log
    }

    /// The log of thread `tid`, if it is a vCPU thread of this VM.
    pub fn log(&self, tid: u32) -> Option<Arc<PhaseLog>> {
        self.logs().get(&tid).cloned()
    }
}

thread_local! {
    /// This thread's log and its current phase.
    static CURRENT: RefCell<Option<(Arc<PhaseLog>, ShimPhase)>> = const { RefCell::new(None) };
}

/// Makes `log` this thread's, starting in `phase`.
pub fn install(log: Arc<PhaseLog>, phase: ShimPhase) {
    log.push(monotonic_ns(), phase);
    CURRENT.with(|c| *c.borrow_mut() = Some((log, phase)));
}

/// This thread enters `phase` (nothing happens on threads without a log, or when it is
/// already there). Returns the phase it left.
pub fn enter(phase: ShimPhase) -> Option<ShimPhase> {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let (log, current) = c.as_mut()?;
        let left = *current;
        if left != phase {
            log.push(monotonic_ns(), phase);
            *current = phase;
        }
        Some(left)
    })
}

/// Enters `phase` until the guard drops, then returns to the phase it left.
pub fn scoped(phase: ShimPhase) -> PhaseGuard {
    PhaseGuard(enter(phase))
}

/// Returns its thread to the phase it left when dropped ([`scoped`]).
#[must_use = "the phase ends when the guard drops"]
pub struct PhaseGuard(Option<ShimPhase>);

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        if let Some(left) = self.0 {
            enter(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_gets_the_phase_of_the_last_transition_at_or_before_it() {
        let log = PhaseLog::with_capacity(8);
        log.push(100, ShimPhase::Run);
        log.push(200, ShimPhase::Loop);
        log.push(300, ShimPhase::LinuxTrap);
        assert_eq!(log.phase_at(99), None);
        assert_eq!(log.phase_at(100), Some(ShimPhase::Run));
        assert_eq!(log.phase_at(199), Some(ShimPhase::Run));
        assert_eq!(log.phase_at(200), Some(ShimPhase::Loop));
        assert_eq!(log.phase_at(10_000), Some(ShimPhase::LinuxTrap));
    }

    #[test]
    fn the_ring_forgets_the_oldest_transitions() {
        let log = PhaseLog::with_capacity(2);
        log.push(100, ShimPhase::Run);
        log.push(200, ShimPhase::Loop);
        log.push(300, ShimPhase::Tracing);
        // 150 fell in the evicted Run stretch: not known any more.
        assert_eq!(log.phase_at(150), None);
        assert_eq!(log.phase_at(250), Some(ShimPhase::Loop));
        assert_eq!(log.phase_at(300), Some(ShimPhase::Tracing));
    }

    #[test]
    fn threads_mark_their_own_log_and_guards_restore_the_phase() {
        let board = Arc::new(PhaseBoard::new());
        let b = board.clone();
        std::thread::spawn(move || {
            install(b.register_with(7, 16), ShimPhase::Loop);
            enter(ShimPhase::Run);
            {
                let _g = scoped(ShimPhase::Snapshot);
                // Entering the current phase again adds nothing.
                enter(ShimPhase::Snapshot);
            }
            assert_eq!(enter(ShimPhase::Run), Some(ShimPhase::Run));
        })
        .join()
        .unwrap();
        // Other threads (this one) have no log: marking is a no-op.
        assert_eq!(enter(ShimPhase::Run), None);
        let log = board.log(7).unwrap();
        let phases: Vec<ShimPhase> = log.lock().iter().map(|&(_, p)| p).collect();
        assert_eq!(
            phases,
            [
                ShimPhase::Loop,
                ShimPhase::Run,
                ShimPhase::Snapshot,
                ShimPhase::Run
            ]
        );
        assert!(board.log(8).is_none());
    }
}
