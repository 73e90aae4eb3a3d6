//! Signals to lbrprof while it runs a guest (`run --vm`, `record --vm`).
//!
//! A Linux program in the VM gets them as it would on the host, through the Linux
//! personality's signal path ([`SignalHandle`]): SIGINT, SIGTERM, SIGHUP, SIGQUIT,
//! SIGUSR1 and SIGUSR2 (the last four only when lbrprof does not ignore them, so `nohup`
//! still works). One the terminal sent (Ctrl-C, `Ctrl-\`, a hang-up) goes to every guest
//! process, the terminal's foreground group; one sent to lbrprof alone (`kill`) to the
//! program's first process. SIGINT and SIGTERM also ask the run to stop, as for a host
//! command (the escalation of `record -- CMD`): a program that does not end is sent
//! SIGTERM after 0.5 s, and the VM is stopped after twice that (where a host command
//! would be sent SIGKILL); a second request stops it at once. A `--duration` sends the
//! program SIGTERM and escalates the same way.
//!
//! The program starts with the signals lbrprof was started ignoring ignored, as a host
//! child inherits them across exec (`nohup`'s SIGHUP, a background job's SIGINT).
//!
//! A bootable image (`builtin:`, a kernel) has no processes to pass signals to: SIGINT
//! and SIGTERM stop the VM at once, and the duration is the VM's timeout.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lbrprof_vmm::vm::{
    Guest, HookFactory, Outcome, OutsideSignal, RunReport, SignalHandle, StopHandle, Vm, VmConfig,
};

use crate::record::sys::{self, SignalPipe};
use crate::record::{Escalation, RecordError};

/// How often the signal pipe and the clock are looked at when nothing wakes us earlier.
const PASS_INTERVAL_MS: i32 = 20;

/// Signals a Linux program gets only when lbrprof does not ignore them.
const PASSED_ON: [libc::c_int; 4] = [libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// The signals of one guest run, watched from installation to drop (the previous
/// dispositions come back then).
pub struct GuestSignals {
    pipe: SignalPipe,
    /// For a Linux program: where its signals go.
    program: Option<SignalHandle>,
    stop: StopHandle,
    escalation: Escalation,
    /// A Linux program's `--duration`, from the installation.
    duration: Option<(Instant, Duration)>,
    /// The first SIGINT or SIGTERM lbrprof received.
    stop_signal: Option<i32>,
    /// The duration started the escalation (no stop request came before it).
    by_duration: bool,
}

impl GuestSignals {
    /// Watch the signals of the run `config` is for: a Linux program's (`linux`) or a
    /// bootable image's. `duration` bounds the run (for an image it becomes
    /// `config.timeout`).
    pub fn install(
        config: &mut VmConfig,
        linux: bool,
        duration: Option<Duration>,
    ) -> std::io::Result<GuestSignals> {
        let stops = [libc::SIGINT, libc::SIGTERM];
        if linux {
            config.ignored_signals = inherited_ignored();
        }
        let pipe = if linux {
            SignalPipe::install_for(&stops, &PASSED_ON)?
        } else {
            config.timeout = duration.or(config.timeout);
            SignalPipe::install_for(&stops, &[])?
        };
        Ok(GuestSignals {
            pipe,
            program: linux.then(|| config.signal_handle()),
            stop: config.stop_handle(),
            escalation: Escalation::default(),
            duration: duration.filter(|_| linux).map(|d| (Instant::now(), d)),
            stop_signal: None,
            by_duration: false,
        })
    }

    /// The descriptor that becomes readable when a signal came (poll it, then call
    /// [`Self::pass`]).
    pub fn fd(&self) -> RawFd {
        self.pipe.fd()
    }

    /// Pass on the signals that came, and escalate a stop that is taking too long; call
    /// it when [`Self::fd`] is readable and every few tens of milliseconds.
    pub fn pass(&mut self) {
        let now = Instant::now();
        for r in self.pipe.take_received() {
            let stop_request = r.signo == libc::SIGINT || r.signo == libc::SIGTERM;
            if stop_request {
                self.stop_signal = self.stop_signal.or(Some(r.signo));
            }
            match &self.program {
                None if stop_request => self.stop.stop(),
                None => {}
                Some(_) if stop_request => {
                    let step = self.escalation.next(Some(r.signo), false, now);
                    self.act(step, r.from_terminal);
                }
                Some(program) => program.send(OutsideSignal {
                    signo: r.signo,
                    from_terminal: r.from_terminal,
                }),
            }
        }
        if self.program.is_some() {
            let timed_out = self
                .duration
                .is_some_and(|(since, d)| now.saturating_duration_since(since) >= d);
            let step = self.escalation.next(None, timed_out, now);
            if step.is_some() && timed_out && self.stop_signal.is_none() {
                self.by_duration = true;
            }
            self.act(step, false);
        }
    }

    /// Carry out an escalation step: SIGKILL stops the VM, any other signal goes to the
    /// program.
    fn act(&self, step: Option<i32>, from_terminal: bool) {
        match (step, &self.program) {
            (Some(libc::SIGKILL), _) | (Some(_), None) => self.stop.stop(),
            (Some(signo), Some(program)) => program.send(OutsideSignal {
                signo,
                from_terminal,
            }),
            (None, _) => {}
        }
    }

    /// The first SIGINT or SIGTERM lbrprof received, if one came.
    pub fn stop_signal(&self) -> Option<i32> {
        self.stop_signal
    }

    /// How the run ended, said as the user asked for it: a Linux program the
    /// `--duration`'s escalation stopped timed out.
    pub fn outcome(&self, outcome: Outcome) -> Outcome {
        match (outcome, self.duration) {
            (Outcome::Stopped, Some((_, d))) if self.by_duration => Outcome::TimedOut(d),
            (outcome, _) => outcome,
        }
    }
}

/// The standard signals lbrprof was started with ignored, which a program it runs
/// inherits ignored (bit `n - 1` for signal `n`). Not SIGPIPE: the Rust runtime ignores
/// it in lbrprof itself, and gives children the default, as here.
fn inherited_ignored() -> u64 {
    (1..32)
        .filter(|&sig| sig != libc::SIGPIPE && sys::is_ignored(sig))
        .fold(0, |mask, sig| mask | 1 << (sig - 1))
}

/// Run `guest` on this thread with its signals handled as the module says, a helper
/// thread passing them on; the run's report (its outcome as [`GuestSignals::outcome`]
/// says) and the first SIGINT or SIGTERM lbrprof received.
pub fn run_guest(
    mut config: VmConfig,
    guest: Guest<'_>,
    hooks: HookFactory<'_>,
    duration: Option<Duration>,
) -> Result<(RunReport, Option<i32>), RecordError> {
    let linux = matches!(guest, Guest::Linux(_));
    let mut signals = GuestSignals::install(&mut config, linux, duration).map_err(|source| {
        RecordError::System {
            what: "install signal handlers",
            source,
        }
    })?;
    let done = AtomicBool::new(false);
    let done = &done;
    // Readable once the run is over: the helper ends at once rather than at its next
    // poll interval (every run would otherwise end up to that much later).
    let (over, over_writer) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(|e| {
            RecordError::System {
                what: "start the signal thread",
                source: e.into(),
            }
        })?;
    std::thread::scope(|scope| {
        let passer = std::thread::Builder::new()
            .name("lbrprof-signals".into())
            .spawn_scoped(scope, move || {
                let fd = [signals.fd(), std::os::fd::AsRawFd::as_raw_fd(&over)];
                while !done.load(Ordering::Acquire) {
                    // Errors of poll only shorten the wait.
                    let _ = sys::poll_readable(&fd, PASS_INTERVAL_MS);
                    signals.pass();
                }
                signals
            })
            .map_err(|source| RecordError::System {
                what: "start the signal thread",
                source,
            })?;
        let report = Vm::run_guest(config, guest, hooks);
        done.store(true, Ordering::Release);
        // (Should the write fail, the helper still ends at its next interval.)
        let _ = rustix::io::write(&over_writer, &[1]);
        let signals = passer.join().map_err(|_| RecordError::System {
            what: "pass signals on to the guest",
            source: std::io::Error::other("the signal thread panicked"),
        })?;
        let mut report = report.map_err(RecordError::Vm)?;
        report.outcome = signals.outcome(report.outcome);
        Ok((report, signals.stop_signal()))
    })
}
