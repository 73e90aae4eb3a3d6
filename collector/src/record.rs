//! `record`: host recording, start to finish.
//!
//! [`Recorder::prepare`] does everything that can fail before the workload runs: decide
//! the sampling (from [`HostFacts`]), find the command, create the output file with its
//! header (so an unwritable `-o` fails first and the file is valid from the start).
//! [`Recorder::run`] then starts the command the way `perf record` does — fork, the child
//! waits on a pipe, the events are opened on it with `inherit` + `enable_on_exec`, the
//! child execs — or attaches to the threads of `-p`/`-t`, drains the ring buffers into
//! the recording's writer thread until the target ends, the duration passes or
//! SIGINT/SIGTERM arrives, and finalizes the file with a [`Summary`]. With
//! [`RecordOptions::repeat`] the command is run that many times, one after the other,
//! each run with its own events; the summary keeps each run's time window
//! ([`RunInfo`]), and repeating stops at the first run that fails or is interrupted.

pub(crate) mod sys;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::host::{DecisionError, EventKind, HostFacts, SamplingChoice, SamplingRequest, decide};
use crate::sampler::{HostSampler, SampleTarget, SamplerConfig, SamplerError, procfs};
use lbrprof_data::model::{Event, Header, SamplingConfig, Target};
use lbrprof_data::recording::{EventSink, FormatError, RecordingWriter, Replace, RunInfo, Summary};

pub use sys::ChildExit;

/// How often the ring buffers are drained when nothing wakes us earlier.
const DRAIN_INTERVAL_MS: i32 = 100;
/// After a stop request (Ctrl-C, SIGTERM, `--duration`) the command gets this long to end
/// by itself, then SIGTERM, then as long again before SIGKILL: a recording stops within
/// about a second even when the command defers or ignores the signal.
pub(crate) const STOP_GRACE: Duration = Duration::from_millis(500);

/// How a stop request (Ctrl-C, SIGTERM, `--duration`) escalates while the program does
/// not end: the request's own signal at once (SIGTERM for the duration), SIGTERM after
/// [`STOP_GRACE`], SIGKILL after twice that; a second request is SIGKILL at once (as
/// perf ends its workload). Shared by host commands and Linux programs in the VM (where
/// SIGKILL stops the VM).
///
/// The same signal again within [`SAME_REQUEST`] of the first is the same request, not a
/// second one: coreutils `timeout` sends its SIGTERM both to lbrprof and to lbrprof's
/// process group, and took the VM down before the program could end by itself.
#[derive(Debug, Default)]
pub(crate) struct Escalation {
    /// When the program was first asked to stop, and the last signal it was sent.
    stopping: Option<(Instant, i32)>,
    /// The signal of the first request.
    first: Option<i32>,
}

/// How close together two deliveries of one signal are one request (see [`Escalation`]):
/// far shorter than a person can press Ctrl-C twice.
const SAME_REQUEST: Duration = Duration::from_millis(100);

impl Escalation {
    /// The signal to send the program at `now`, given this pass's stop request
    /// (`requested`, a signal lbrprof received) and whether the duration is over.
    pub(crate) fn next(
        &mut self,
        requested: Option<i32>,
        timed_out: bool,
        now: Instant,
    ) -> Option<i32> {
        let next = match (self.stopping, requested) {
            (None, Some(sig)) => {
                self.first = Some(sig);
                Some(sig)
            }
            (Some((since, _)), Some(sig))
                if self.first == Some(sig)
                    && now.saturating_duration_since(since) < SAME_REQUEST =>
            {
                None
            }
            (None, None) if timed_out => Some(libc::SIGTERM),
            (Some(_), Some(_)) => Some(libc::SIGKILL),
            (Some((since, last)), None) => {
                let waited = now.saturating_duration_since(since);
                if waited >= 2 * STOP_GRACE && last != libc::SIGKILL {
                    Some(libc::SIGKILL)
                } else if waited >= STOP_GRACE && last != libc::SIGTERM && last != libc::SIGKILL {
                    Some(libc::SIGTERM)
                } else {
                    None
                }
            }
            (None, None) => None,
        };
        if let Some(sig) = next {
            let since = self.stopping.map_or(now, |(t, _)| t);
            self.stopping = Some((since, sig));
        }
        next
    }
}

/// What to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordTarget {
    /// Run this command (argv\[0\] searched in `PATH`) and record it and its descendants.
    Command(Vec<String>),
    /// Attach to all threads of a running process (and what they start later).
    Pid(u32),
    /// Attach to one running thread.
    Tid(u32),
    /// Every task on these CPUs (all online CPUs when `None`), system-wide like perf's
    /// `-a`/`-C`: while `command` runs when one is given, else until stopped (signal or
    /// `duration`).
    System {
        cpus: Option<Vec<u32>>,
        command: Vec<String>,
    },
}

/// Everything `record` needs, as plain data (the CLI builds it from its flags).
#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub output: PathBuf,
    pub frequency: u64,
    /// Sample every this many events instead of at `frequency` (`-c`), when set.
    pub period: Option<u64>,
    pub request: SamplingRequest,
    pub target: RecordTarget,
    /// Stop after this long (the command is then sent SIGTERM).
    pub duration: Option<Duration>,
    /// Ring buffer pages per CPU (a power of two).
    pub mmap_pages: u32,
    /// What happens to a recording already at `output` (kept as `NAME.old` by default).
    pub replace: Replace,
    /// Runs of the command (one after the other, each kept apart in the recording's
    /// summary); 1 for one run. Ignored for `-p`/`-t`. `duration` applies to each run.
    pub repeat: u32,
}

/// Why a recording could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error(transparent)]
    Decision(#[from] DecisionError),
    #[error("the sample period (-c) must be at least 1")]
    BadPeriod,
    #[error("cannot run '{command}': {reason}")]
    CannotRun {
        command: String,
        reason: String,
        errno: i32,
    },
    #[error("no command given (use `record -- CMD ARGS`, `-p PID` or `-t TID`)")]
    NoCommand,
    #[error("argument {0:?} contains a NUL byte")]
    NulInArgument(String),
    #[error("sampling frequency must be between 1 and {max} Hz, not {given}")]
    BadFrequency { given: u64, max: u64 },
    #[error("--mmap-pages must be a power of two between 1 and {max}, not {given}")]
    BadMmapPages { given: u32, max: u32 },
    #[error("no such process {0}")]
    NoSuchProcess(u32),
    #[error("no such thread {0}")]
    NoSuchThread(u32),
    #[error("cannot create the recording {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("cannot finish the recording {}", path.display())]
    Finish {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error("cannot run the guest")]
    Vm(#[source] lbrprof_vmm::vm::VmError),
    #[error("cannot {what}")]
    System {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RecordError {
    /// The process exit code a shell would use: 127 for a command that does not exist,
    /// 126 for one that cannot be executed, `None` for other errors.
    pub fn exit_code(&self) -> Option<u8> {
        match self {
            RecordError::CannotRun { errno, .. } if *errno == libc::ENOENT => Some(127),
            RecordError::CannotRun { .. } => Some(126),
            _ => None,
        }
    }
}

/// The result of a finished recording.
#[derive(Clone, Debug)]
pub struct RecordOutcome {
    pub summary: Summary,
    pub choice: SamplingChoice,
    /// How the recorded command ended (`None` for `-p`/`-t`).
    pub exit: Option<ChildExit>,
    /// Stopped by SIGINT/SIGTERM.
    pub interrupted: bool,
    pub output: PathBuf,
}

/// A recording ready to start: decision made, output created, command found.
pub struct Recorder {
    opts: RecordOptions,
    choice: SamplingChoice,
    writer: RecordingWriter,
    /// For a command: the resolved executable and argv.
    exec: Option<(CString, Vec<CString>)>,
    start_monotonic_ns: u64,
    warnings: Vec<String>,
}

/// Largest ring buffer accepted, in pages per CPU (256 MiB with 4 KiB pages).
pub const MAX_MMAP_PAGES: u32 = 1 << 16;

/// Highest `-F` accepted (perf's default `perf_event_max_sample_rate` is 100000).
pub const MAX_FREQUENCY: u64 = 100_000;

impl Recorder {
    /// Decide, validate the target and create the output (header written). Nothing runs
    /// yet, so every error here leaves no workload behind.
    pub fn prepare(opts: RecordOptions, facts: &HostFacts) -> Result<Recorder, RecordError> {
        if opts.frequency == 0 || opts.frequency > MAX_FREQUENCY {
            return Err(RecordError::BadFrequency {
                given: opts.frequency,
                max: MAX_FREQUENCY,
            });
        }
        if !opts.mmap_pages.is_power_of_two() || opts.mmap_pages > MAX_MMAP_PAGES {
            return Err(RecordError::BadMmapPages {
                given: opts.mmap_pages,
                max: MAX_MMAP_PAGES,
            });
        }
        let mut opts = opts;
        let mut warnings = Vec::new();
        // Like perf: above the kernel's limit, sample at the limit rather than fail.
        if let Some(max) = max_sample_rate().filter(|&max| max > 0 && opts.frequency > max) {
            warnings.push(format!(
                "-F {} is above kernel.perf_event_max_sample_rate; sampling at {max} Hz",
                opts.frequency
            ));
            opts.frequency = max;
        }
        if opts.period == Some(0) {
            return Err(RecordError::BadPeriod);
        }
        let choice = decide(facts, opts.request.clone())?;
        let exec = match &opts.target {
            RecordTarget::Command(argv) => Some(resolve_command(argv)?),
            RecordTarget::System { command, .. } if !command.is_empty() => {
                Some(resolve_command(command)?)
            }
            RecordTarget::System { .. } => None,
            RecordTarget::Pid(pid) => {
                if !Path::new(&format!("/proc/{pid}")).is_dir() || *pid == 0 {
                    return Err(RecordError::NoSuchProcess(*pid));
                }
                None
            }
            RecordTarget::Tid(tid) => {
                if procfs::tgid_of(*tid).is_err() || *tid == 0 {
                    return Err(RecordError::NoSuchThread(*tid));
                }
                None
            }
        };
        let start_monotonic_ns = sys::monotonic_ns();
        let target = match &opts.target {
            RecordTarget::Command(argv) => Target::Command { argv: argv.clone() },
            RecordTarget::Pid(pid) => Target::Pid { pid: *pid },
            RecordTarget::Tid(tid) => Target::Tid { tid: *tid },
            RecordTarget::System { cpus, command } => Target::System {
                cpus: match cpus {
                    Some(cpus) => cpus.clone(),
                    None => crate::sampler::online_cpus().unwrap_or_default(),
                },
                argv: command.clone(),
            },
        };
        let header = header(
            facts,
            &choice,
            opts.frequency,
            opts.period,
            start_monotonic_ns,
            target,
        );
        let writer = RecordingWriter::create_with(&opts.output, &header, opts.replace).map_err(
            |source| RecordError::Output {
                path: opts.output.clone(),
                source,
            },
        )?;
        Ok(Recorder {
            opts,
            choice,
            writer,
            exec,
            start_monotonic_ns,
            warnings,
        })
    }

    /// The sampling decision (to tell the user before the run starts).
    pub fn choice(&self) -> &SamplingChoice {
        &self.choice
    }

    /// Adjustments made to the request (e.g. a frequency above the kernel's limit).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Run the recording to its end and finalize the file.
    pub fn run(self) -> Result<RecordOutcome, RecordError> {
        let Recorder {
            opts,
            choice,
            writer,
            exec,
            start_monotonic_ns,
            warnings,
        } = self;
        let sink = writer.sink();
        let config = SamplerConfig {
            event: choice.event.clone(),
            more_events: choice.more_events.clone(),
            frequency: opts.frequency,
            period: opts.period,
            branch_stacks: choice.branch_stacks,
            call_graph: choice.call_graph,
            kernel: choice.kernel,
            ring_pages_exp: opts.mmap_pages.trailing_zeros() as u8,
        };
        let signals = match sys::SignalPipe::install() {
            Ok(signals) => signals,
            Err(source) => {
                writer.abandon();
                return Err(RecordError::System {
                    what: "install signal handlers",
                    source,
                });
            }
        };
        // Only a command can be run again.
        let repeat = match opts.target {
            RecordTarget::Command(_) => opts.repeat.max(1),
            _ => 1,
        };
        let mut send = |e: Event| sink.send(e);
        let mut totals = crate::sampler::RingStats::default();
        let mut event_samples: Vec<u64> = Vec::new();
        let mut unwind_totals: Option<lbrprof_data::dwarf::UnwindStats> = None;
        let mut runs: Vec<RunInfo> = Vec::new();
        let mut run_notes: Vec<String> = Vec::new();
        let (mut exit, mut interrupted, mut loop_error) = (None, false, None);
        for index in 0..repeat {
            let run_start = sys::monotonic_ns();
            let mut running = match start(&opts, &config, exec.clone(), &sink) {
                Ok(running) => running,
                Err(e) if index == 0 => {
                    // Nothing was recorded: leave no file behind, and the target as it was.
                    drop(signals);
                    writer.abandon();
                    return Err(e);
                }
                Err(e) => {
                    // The runs already recorded are kept.
                    loop_error = Some(e);
                    break;
                }
            };
            let ended = drain_until_done(&opts, &mut running, &signals, &mut send);
            // Whatever ended the loop, keep what the kernel still holds.
            let disabled = running.sampler.disable();
            running.sampler.drain(&mut send);
            let stats = running.sampler.stats();
            if let Some(u) = running.sampler.unwind_stats() {
                let t = unwind_totals.get_or_insert_with(Default::default);
                t.samples += u.samples;
                t.complete += u.complete;
                t.truncated += u.truncated;
                t.frames += u.frames;
                t.unknown_process += u.unknown_process;
                t.unusable_mappings += u.unusable_mappings;
            }
            if !choice.more_events.is_empty() {
                let per_event = running.sampler.samples_per_event();
                event_samples.resize(per_event.len().max(event_samples.len()), 0);
                for (total, n) in event_samples.iter_mut().zip(per_event) {
                    *total += n;
                }
            }
            totals.samples += stats.samples;
            totals.lost += stats.lost;
            totals.throttled += stats.throttled;
            if let Err(e) = &disabled {
                run_notes.push(format!("could not disable the events at the end: {e}"));
            }
            match ended {
                Ok((e, i)) => (exit, interrupted) = (e, i),
                Err(e) => (exit, loop_error) = (None, Some(e)),
            }
            if repeat > 1 {
                runs.push(RunInfo {
                    start_ns: run_start,
                    end_ns: sys::monotonic_ns(),
                    exit_status: exit.map(ChildExit::shell_code),
                    samples: stats.samples,
                });
            }
            let failed = exit.is_some_and(|e| e.shell_code() != 0);
            if interrupted || loop_error.is_some() || failed {
                if repeat > 1 && index + 1 < repeat {
                    run_notes.push(format!(
                        "stopped repeating after run {} of {repeat}",
                        index + 1
                    ));
                }
                break;
            }
        }
        drop(signals);

        let stats = totals;
        let mut notes = vec![format!("sampling: {}", choice.reason)];
        notes.extend(warnings);
        if repeat > 1 {
            notes.push(format!(
                "{} runs of the command (--repeat {repeat})",
                runs.len()
            ));
        }
        if stats.lost > 0 {
            notes.push(format!(
                "{} records lost: the ring buffers overflowed (lower -F or raise -m)",
                stats.lost
            ));
        }
        if let Some(u) = &unwind_totals {
            notes.push(lbrprof_data::dwarf::summary(u));
        }
        if stats.throttled > 0 {
            notes.push(format!(
                "sampling throttled {} times by the kernel (perf_event_max_sample_rate)",
                stats.throttled
            ));
        }
        if let Some(ChildExit::Signal(sig)) = exit {
            notes.push(format!("the command was killed by signal {sig}"));
        }
        if interrupted {
            notes.push("stopped by a signal to lbrprof".into());
        }
        notes.extend(run_notes);
        if let Some(e) = &loop_error {
            notes.push(format!("recording ended early: {e}"));
        }
        let summary = Summary {
            duration_ns: sys::monotonic_ns().saturating_sub(start_monotonic_ns),
            samples: stats.samples,
            snapshots: 0,
            lost: stats.lost,
            throttled: stats.throttled,
            exit_status: exit.map(ChildExit::shell_code),
            notes,
            runs,
            event_samples,
        };
        writer
            .finish(&summary)
            .map_err(|source| RecordError::Finish {
                path: opts.output.clone(),
                source,
            })?;
        if let Some(e) = loop_error {
            return Err(e);
        }
        Ok(RecordOutcome {
            summary,
            choice,
            exit,
            interrupted,
            output: opts.output,
        })
    }
}

/// A started target and its open events.
struct Running {
    sampler: HostSampler,
    /// The recorded command, once it has exec'ed.
    child: Option<u32>,
    /// For `-p`/`-t`: the process and the threads attached to.
    attached: Option<(u32, Vec<u32>)>,
}

/// Start the command (events opened on it before it execs) or attach to the threads.
fn start(
    opts: &RecordOptions,
    config: &SamplerConfig,
    exec: Option<(CString, Vec<CString>)>,
    sink: &EventSink,
) -> Result<Running, RecordError> {
    let running = match (&opts.target, exec) {
        (RecordTarget::Command(argv), Some((path, cargv))) => {
            let blocked =
                sys::spawn_blocked(&path, &cargv).map_err(|source| RecordError::System {
                    what: "fork",
                    source,
                })?;
            let target = SampleTarget::Process {
                pid: blocked.pid,
                enable_on_exec: true,
            };
            let sampler = match HostSampler::open(config, &target) {
                Ok(s) => s,
                Err(e) => {
                    blocked.abort();
                    return Err(e.into());
                }
            };
            let pid = blocked.release().map_err(|errno| RecordError::CannotRun {
                command: argv.first().cloned().unwrap_or_default(),
                reason: strerror(errno),
                errno,
            })?;
            Running {
                sampler,
                child: Some(pid),
                attached: None,
            }
        }
        (RecordTarget::Command(_), None) => return Err(RecordError::NoCommand),
        (RecordTarget::System { cpus, command }, exec) => {
            let cpus = match cpus {
                Some(cpus) => cpus.clone(),
                None => crate::sampler::online_cpus().map_err(|source| RecordError::System {
                    what: "read the online CPUs",
                    source,
                })?,
            };
            let mut sampler = HostSampler::open(config, &SampleTarget::Cpus { cpus })?;
            // Start, then describe every process that exists, dated before the start (as
            // for -p: what changes between the two is also in the kernel's records).
            let now = sys::monotonic_ns();
            sampler.enable()?;
            for pid in procfs::all_pids() {
                let Ok(tids) = procfs::threads_of(pid) else {
                    continue;
                };
                if let Ok(events) = procfs::synthesize(pid, &tids, now, sampler.converter()) {
                    for e in events {
                        sampler.observe(&e);
                        sink.send(e);
                    }
                }
            }
            let child = match exec {
                Some((path, cargv)) => {
                    let blocked = sys::spawn_blocked(&path, &cargv).map_err(|source| {
                        RecordError::System {
                            what: "fork",
                            source,
                        }
                    })?;
                    Some(blocked.release().map_err(|errno| RecordError::CannotRun {
                        command: command.first().cloned().unwrap_or_default(),
                        reason: strerror(errno),
                        errno,
                    })?)
                }
                None => None,
            };
            return Ok(Running {
                sampler,
                child,
                attached: None,
            });
        }
        (RecordTarget::Pid(pid), _) => {
            let tids = procfs::threads_of(*pid).map_err(|_| RecordError::NoSuchProcess(*pid))?;
            // One event per thread and CPU. (Not for commands: the child would inherit it.)
            sys::raise_open_file_limit();
            let target = SampleTarget::Threads {
                tids: tids.clone(),
                inherit: true,
            };
            let sampler = HostSampler::open(config, &target).map_err(|e| match e {
                SamplerError::NoSuchTask(_) => RecordError::NoSuchProcess(*pid),
                e => e.into(),
            })?;
            Running {
                sampler,
                child: None,
                attached: Some((*pid, tids)),
            }
        }
        (RecordTarget::Tid(tid), _) => {
            let pid = procfs::tgid_of(*tid).map_err(|_| RecordError::NoSuchThread(*tid))?;
            let target = SampleTarget::Threads {
                tids: vec![*tid],
                inherit: false,
            };
            let sampler = HostSampler::open(config, &target).map_err(|e| match e {
                SamplerError::NoSuchTask(_) => RecordError::NoSuchThread(*tid),
                e => e.into(),
            })?;
            Running {
                sampler,
                child: None,
                attached: Some((pid, vec![*tid])),
            }
        }
    };
    let mut running = running;
    if let Some((pid, tids)) = &running.attached {
        // Start sampling, then describe what existed before, dated before the start: a
        // mapping or exec between the two is then both in /proc and in the kernel's
        // records, which come later and win, rather than in neither.
        let now = sys::monotonic_ns();
        running.sampler.enable()?;
        if let Ok(events) = procfs::synthesize(*pid, tids, now, running.sampler.converter()) {
            for e in events {
                running.sampler.observe(&e);
                sink.send(e);
            }
        }
    }
    Ok(running)
}

/// Drain the rings until the command exits, the attached task is gone, the duration
/// passes or SIGINT/SIGTERM arrives. Returns how the command ended and whether we were
/// interrupted.
fn drain_until_done(
    opts: &RecordOptions,
    running: &mut Running,
    signals: &sys::SignalPipe,
    send: &mut dyn FnMut(Event),
) -> Result<(Option<ChildExit>, bool), RecordError> {
    let started = Instant::now();
    let mut fds = running.sampler.poll_fds();
    fds.push(signals.fd());
    let mut interrupted = false;
    let mut escalation = Escalation::default();
    loop {
        let hung_up =
            sys::poll_readable(&fds, DRAIN_INTERVAL_MS).map_err(|source| RecordError::System {
                what: "poll the perf ring buffers",
                source,
            })?;
        // Rings whose owning task exited are drained on the timer from now on.
        fds.retain(|fd| *fd == signals.fd() || !hung_up.contains(fd));
        running.sampler.drain(send);
        let stop_signal = signals
            .take()
            .into_iter()
            .find(|&s| s == libc::SIGINT || s == libc::SIGTERM);
        let timed_out = opts.duration.is_some_and(|d| started.elapsed() >= d);
        if let Some(pid) = running.child {
            let exit = sys::try_wait(pid).map_err(|source| RecordError::System {
                what: "wait for the command",
                source,
            })?;
            if let Some(exit) = exit {
                return Ok((Some(exit), interrupted));
            }
            // Ctrl-C reaches the child through the terminal too, but a signal sent to us
            // alone must reach it as well; a command that defers or ignores it is sent
            // SIGTERM, then SIGKILL ([`Escalation`]).
            interrupted |= stop_signal.is_some();
            if let Some(sig) = escalation.next(stop_signal, timed_out, Instant::now()) {
                sys::kill(pid, sig);
            }
            continue;
        }
        if stop_signal.is_some() {
            return Ok((None, true));
        }
        let gone = match (&opts.target, &running.attached) {
            (RecordTarget::Tid(tid), Some((pid, _))) => !procfs::thread_alive(*pid, *tid),
            // System-wide without a command: until stopped.
            (RecordTarget::System { .. }, _) => false,
            (_, Some((pid, _))) => !procfs::alive(*pid),
            _ => true,
        };
        if timed_out || gone {
            return Ok((None, false));
        }
    }
}

/// `/proc/sys/kernel/perf_event_max_sample_rate` (the kernel lowers it by itself when
/// sampling interrupts take too long).
fn max_sample_rate() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Find argv\[0\] like `execvp` would (a name with a `/` is used as is) and build the
/// C strings the child needs before it forks.
fn resolve_command(argv: &[String]) -> Result<(CString, Vec<CString>), RecordError> {
    let Some(name) = argv.first() else {
        return Err(RecordError::NoCommand);
    };
    let cannot_run = |errno: i32| RecordError::CannotRun {
        command: name.clone(),
        reason: strerror(errno),
        errno,
    };
    let path: PathBuf = if name.contains('/') {
        PathBuf::from(name)
    } else if name.is_empty() {
        return Err(cannot_run(libc::ENOENT));
    } else {
        let search =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let mut found = None;
        let mut denied = false;
        for dir in std::env::split_paths(&search) {
            let candidate = dir.join(name);
            match std::fs::metadata(&candidate) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                    found = Some(candidate);
                    break;
                }
                Ok(m) if m.is_file() => denied = true,
                _ => {}
            }
        }
        match found {
            Some(p) => p,
            None if denied => return Err(cannot_run(libc::EACCES)),
            None => return Err(cannot_run(libc::ENOENT)),
        }
    };
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RecordError::NulInArgument(name.clone()))?;
    let cargv = argv
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| RecordError::NulInArgument(a.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((cpath, cargv))
}

/// The C library's message for an errno, without std's " (os error N)" suffix.
fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The header of a recording made on this host, sampled as `choice` decided.
pub(crate) fn header(
    facts: &HostFacts,
    choice: &SamplingChoice,
    frequency: u64,
    period: Option<u64>,
    start_monotonic_ns: u64,
    target: Target,
) -> Header {
    Header {
        writer: format!("lbrprof {}", env!("CARGO_PKG_VERSION")),
        start_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        start_monotonic_ns,
        host: facts.host_info(choice),
        sampling: SamplingConfig {
            events: match choice.more_events.is_empty() {
                true => Vec::new(),
                false => choice.events().iter().map(EventKind::name).collect(),
            },
            event: choice.event.name(),
            event_reason: choice.reason.clone(),
            // One or the other, as perf's attr (sample_freq or sample_period).
            frequency: if period.is_some() { 0 } else { frequency },
            period: period.unwrap_or(0),
            branch_stacks: choice.branch_stacks,
            call_graph: choice.call_graph.name().to_owned(),
        },
        target,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_resolve_through_path() {
        let (path, argv) = resolve_command(&["sh".into(), "-c".into(), "true".into()]).unwrap();
        assert!(path.to_str().unwrap().ends_with("/sh"), "{path:?}");
        assert_eq!(argv.len(), 3);
        let err = resolve_command(&["lbrprof-no-such-command".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot run 'lbrprof-no-such-command': No such file or directory"
        );
        assert_eq!(err.exit_code(), Some(127));
        // A path is used as is; exec reports whether it works.
        assert!(resolve_command(&["./x".into()]).is_ok());
        assert!(matches!(resolve_command(&[]), Err(RecordError::NoCommand)));
        assert!(matches!(
            resolve_command(&["./a\0b".into()]),
            Err(RecordError::NulInArgument(_))
        ));
    }

    #[test]
    fn strerror_has_no_suffix() {
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
        assert_eq!(strerror(libc::EACCES), "Permission denied");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let e = |errno| RecordError::CannotRun {
            command: "x".into(),
            reason: String::new(),
            errno,
        };
        assert_eq!(e(libc::ENOENT).exit_code(), Some(127));
        assert_eq!(e(libc::EACCES).exit_code(), Some(126));
        assert_eq!(RecordError::NoSuchProcess(1).exit_code(), None);
    }

    #[test]
    fn a_stop_request_escalates_to_sigterm_then_sigkill() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut e = Escalation::default();
        assert_eq!(e.next(None, false, at(0)), None);
        // Ctrl-C: SIGINT at once, SIGTERM after the grace, SIGKILL after twice it, once.
        assert_eq!(
            e.next(Some(libc::SIGINT), false, at(10)),
            Some(libc::SIGINT)
        );
        assert_eq!(e.next(None, false, at(10 + 499)), None);
        assert_eq!(e.next(None, false, at(10 + 500)), Some(libc::SIGTERM));
        assert_eq!(e.next(None, false, at(10 + 600)), None);
        assert_eq!(e.next(None, true, at(10 + 1000)), Some(libc::SIGKILL));
        assert_eq!(e.next(None, true, at(10 + 5000)), None);
        // The duration: SIGTERM, then SIGKILL (no second SIGTERM); a second request
        // kills at once.
        let mut e = Escalation::default();
        assert_eq!(e.next(None, true, at(0)), Some(libc::SIGTERM));
        assert_eq!(e.next(None, true, at(700)), None);
        assert_eq!(e.next(None, true, at(1000)), Some(libc::SIGKILL));
        let mut e = Escalation::default();
        assert_eq!(
            e.next(Some(libc::SIGTERM), false, at(0)),
            Some(libc::SIGTERM)
        );
        assert_eq!(
            e.next(Some(libc::SIGINT), false, at(1)),
            Some(libc::SIGKILL)
        );
        // `timeout`'s SIGTERM to lbrprof and to its process group: one request; the same
        // signal later is a second one.
        let mut e = Escalation::default();
        assert_eq!(
            e.next(Some(libc::SIGTERM), false, at(0)),
            Some(libc::SIGTERM)
        );
        assert_eq!(e.next(Some(libc::SIGTERM), false, at(2)), None);
        assert_eq!(e.next(None, false, at(50)), None);
        assert_eq!(
            e.next(Some(libc::SIGTERM), false, at(300)),
            Some(libc::SIGKILL)
        );
    }
}
