//! One VM: create it, load an image, run one thread per vCPU until the guest exits, a
//! vCPU crashes, or the timeout expires.
//!
//! Threads: each vCPU runs `KVM_RUN` in its own thread and reports how it ended over a
//! channel. The first decisive end (exit port, power-off, crash, hook stop) or the
//! deadline ends the run: the VM sets a stop flag and kicks every vCPU thread out of
//! `KVM_RUN` with a signal whose handler sets `kvm_run.immediate_exit` (re-sent every
//! 10 ms until the thread is out, so no race can lose the kick).
//!
//! Callers build a [`VmConfig`] with [`VmConfig::new`], may ask for a [`StopHandle`] and
//! for [`VcpuThreadInfo`] notifications (to attach perf events to vCPU threads), and get a
//! [`RunReport`]: the [`Outcome`] plus per-vCPU accounting ([`VcpuRunStats`]).
//!
//! Start-up per image kind (see [`crate::boot`]):
//! * ELF64: every vCPU enters long mode at the entry with its index in RDI (APs are made
//!   runnable directly, no INIT/SIPI).
//! * multiboot: vCPU 0 enters 32-bit protected mode at the entry; the other vCPUs wait in
//!   the in-kernel LAPIC for INIT/SIPI from the guest, as on a PC.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::thread::JoinHandleExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use kvm_bindings::{
    CpuId, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_MSR_EXIT_REASON_FILTER,
    KVM_PIT_SPEAKER_DUMMY, kvm_enable_cap, kvm_guest_debug, kvm_mp_state, kvm_pit_config, kvm_regs,
    kvm_sregs, kvm_userspace_memory_region,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuExit, VcpuFd, VmFd,
};

use crate::arch::DR7_L0;
use crate::boot;
use crate::devices::{Devices, IoAction, SerialSink, UnknownAccesses, WarnFn};
pub use crate::error::VmError;
use crate::error::kvm_err;
use crate::hook::{DebugExit, ExitKind, MsrRange, Requests, VcpuCtx, VcpuHook};
use crate::kick::{
    ClearImmediateExit, IMMEDIATE_EXIT, KICKED, STOP, WATCHDOG, install_kick_handler, kick_signal,
    watchdog_signal,
};
pub use crate::linux::proc::OutsideSignal;
use crate::linux::thread::{NewThread, Task};
use crate::linux::{self, LinuxReport, Process, TrapAction};
use crate::loader::{self, ImageKind, RamLayout};
use crate::memory::GuestMemory;
use crate::phase::{self, ShimPhase};
use crate::timer::ExitTimer;

/// Smallest and largest guest RAM (below the 3 GiB PCI/LAPIC hole, so no split is needed).
pub const MIN_MEM: u64 = 4 << 20;
pub const MAX_MEM: u64 = 3 << 30;
/// Where KVM puts its real-mode TSS on Intel (three pages below the BIOS area).
const KVM_TSS_ADDR: usize = 0xfffb_d000;

/// Everything about a VM except the image and the hooks.
pub struct VmConfig {
    pub mem_bytes: u64,
    pub vcpus: u32,
    /// The guest command line (`-- GUEST ARGS` joined by spaces).
    pub cmdline: String,
    pub timeout: Option<Duration>,
    /// Where the guest console goes.
    pub serial: SerialSink,
    /// One-time warnings (unknown ports and MMIO).
    pub warn: WarnFn,
    /// Told about each vCPU thread as it starts.
    pub vcpu_threads: Option<crossbeam_channel::Sender<VcpuThreadInfo>>,
    /// A Linux program's processes and file mappings, as they are made (its image and
    /// interpreter at load, its libraries as it maps them), and which address space each
    /// vCPU runs when that changes, so a recorder can write each one before the samples
    /// that need it.
    pub guest_events: Option<crate::linux::GuestEventSink>,
    /// A Linux program's randomness (getrandom, AT_RANDOM, /dev/urandom): the host's, or
    /// a fixed stream so that exact-mode runs repeat; a fixed stream also hides RDRAND and
    /// RDSEED from the CPUID KVM answers (a host that runs guest ring 3 natively may let
    /// the program execute CPUID itself) ([`crate::linux::entropy`]).
    pub guest_entropy: crate::linux::entropy::EntropySource,
    /// A Linux program's clocks and process ids are pinned: a virtual clock
    /// ([`crate::linux::clock`]) and pids from [`crate::linux::proc::PINNED_PID`], so
    /// that exact-mode runs repeat; otherwise the host's time and lbrprof's pid.
    pub guest_pinned: bool,
    /// Where each vCPU thread logs its phases ([`crate::phase`]), for a profiler that
    /// samples the vCPU threads.
    pub phases: Option<Arc<crate::phase::PhaseBoard>>,
    /// Fed by [`StopHandle`]s (see [`VmConfig::stop_handle`]).
    stop_requests: Option<crossbeam_channel::Receiver<()>>,
    /// Fed by [`SignalHandle`]s (see [`VmConfig::signal_handle`]).
    signal_requests: Option<crossbeam_channel::Receiver<OutsideSignal>>,
    /// Signals a Linux program starts with ignored (bit `n - 1` for signal `n`), as a
    /// host child inherits them ignored across exec (`nohup`'s SIGHUP, a background
    /// job's SIGINT and SIGQUIT).
    pub ignored_signals: u64,
}

impl VmConfig {
    /// A configuration with `mem_bytes` of RAM and `vcpus` vCPUs, an empty command line,
    /// no timeout, the console on stderr, warnings on stderr, no thread notifications.
    pub fn new(mem_bytes: u64, vcpus: u32) -> VmConfig {
        VmConfig {
            mem_bytes,
            vcpus,
            cmdline: String::new(),
            timeout: None,
            serial: Box::new(std::io::stderr()),
            warn: Box::new(|m| eprintln!("lbrprof: warning: {m}")),
            vcpu_threads: None,
            guest_events: None,
            guest_entropy: Default::default(),
            guest_pinned: false,
            phases: None,
            stop_requests: None,
            signal_requests: None,
            ignored_signals: 0,
        }
    }

    /// A handle that stops the VM this configuration will run.
    pub fn stop_handle(&mut self) -> StopHandle {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.stop_requests = Some(rx);
        StopHandle(tx)
    }
}

impl VmConfig {
    /// A handle that passes signals on to the Linux program this configuration will
    /// run (a bootable image has no use for them: they are dropped).
    pub fn signal_handle(&mut self) -> SignalHandle {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.signal_requests = Some(rx);
        SignalHandle(tx)
    }
}

/// Sent on [`VmConfig::vcpu_threads`] as each vCPU thread starts, before its first
/// `KVM_RUN`, so a profiler can attach to the thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuThreadInfo {
    pub vcpu: u32,
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub time_ns: u64,
}

/// Where one vCPU's host time went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuRunStats {
    pub vcpu: u32,
    pub tid: u32,
    /// VM exits by reason ("io", "mmio", "msr", "debug", "hlt", "intr", ...).
    pub exits: BTreeMap<&'static str, u64>,
    /// Wall time inside KVM_RUN.
    pub run_ns: u64,
    /// Wall time inside the vCPU hook's callbacks.
    pub hook_ns: u64,
}

impl VcpuRunStats {
    /// All exits.
    pub fn total_exits(&self) -> u64 {
        self.exits.values().sum()
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the timebase host samples and snapshots share).
pub use lbrprof_data::clock::monotonic_ns;

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Validate a `--mem` value.
pub fn check_mem_size(bytes: u64) -> Result<(), VmError> {
    if (MIN_MEM..=MAX_MEM).contains(&bytes) {
        Ok(())
    } else {
        Err(VmError::MemSize {
            bytes,
            min: MIN_MEM,
            max: MAX_MEM,
        })
    }
}

/// A guest crash: which vCPU, why, and its registers.
#[derive(Clone, Debug)]
pub struct CrashReport {
    pub vcpu: u32,
    pub reason: String,
    /// A multi-line register dump (empty when the registers could not be read).
    pub registers: String,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The guest wrote to the isa-debug-exit port; the process exit status.
    Exited(u8),
    /// The guest powered off cleanly.
    PowerOff,
    /// `timeout` expired.
    TimedOut(Duration),
    /// Triple fault, KVM internal error, failed entry, or a hook stopped the VM.
    Crashed(CrashReport),
    /// A Linux program was killed by a signal (a fault, abort(), an unsupported call).
    Signaled { signal: i32, crash: CrashReport },
    /// The caller stopped the VM through a [`StopHandle`] (e.g. on Ctrl-C).
    Stopped,
}

/// Stops a running VM from another thread ([`VmConfig::stop_handle`]).
#[derive(Clone, Debug)]
pub struct StopHandle(crossbeam_channel::Sender<()>);

impl StopHandle {
    /// Ask the VM to stop: every vCPU is kicked out of the guest and the run ends with
    /// [`Outcome::Stopped`]. Harmless after the run ended.
    pub fn stop(&self) {
        let _ = self.0.try_send(());
    }
}

/// Passes signals lbrprof received on to a running Linux program from another thread
/// ([`VmConfig::signal_handle`]); each goes through the Linux personality's own signal
/// path ([`linux::proc::Kernel::signal_from_outside`]): the program's handlers, masks
/// and interrupted system calls, as on Linux.
#[derive(Clone, Debug)]
pub struct SignalHandle(crossbeam_channel::Sender<OutsideSignal>);

impl SignalHandle {
    /// Send `signal` to the program's processes (those still running when the VM's
    /// loop takes it; before the program starts, as soon as it does). Harmless after
    /// the run ended.
    pub fn send(&self, signal: OutsideSignal) {
        let _ = self.0.send(signal);
    }
}

/// The result of [`Vm::run`].
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    pub kind: ImageKind,
    /// From VM creation to the end of the run.
    pub elapsed: Duration,
    /// From VM creation until the vCPU threads were started.
    pub setup: Duration,
    /// Per-vCPU exit counts and time accounting, by vCPU index.
    pub vcpus: Vec<VcpuRunStats>,
    pub unknown: UnknownAccesses,
    /// What the Linux personality reports (Linux programs only).
    pub linux: Option<LinuxReport>,
}

/// What a VM runs: a bootable image, or a Linux program under the shim's personality.
#[derive(Clone, Copy, Debug)]
pub enum Guest<'a> {
    Image(&'a [u8]),
    Linux(&'a linux::Program),
}

/// Creates a vCPU's hook from its index.
pub type HookFactory<'a> = &'a dyn Fn(u32) -> Box<dyn VcpuHook>;

/// How one vCPU thread ended.
enum VcpuEnd {
    /// A Linux program's thread ended; the program goes on.
    ThreadExit,
    Exit(u8),
    Killed {
        signal: i32,
        crash: CrashReport,
    },
    PowerOff,
    Crash(CrashReport),
    /// Stopped by the VM (another vCPU ended the run, or the timeout).
    Stopped,
    Error(VmError),
}

/// The namespace for running VMs.
pub struct Vm;

impl Vm {
    /// Boot `image` and run it to the end. Hooks come from `hooks(index)`, one per vCPU.
    pub fn run(
        config: VmConfig,
        image: &[u8],
        hooks: HookFactory<'_>,
    ) -> Result<RunReport, VmError> {
        Vm::run_guest(config, Guest::Image(image), hooks)
    }

    /// Run `guest` to the end: an image is booted, a Linux program is loaded and run
    /// under the shim's Linux personality (one vCPU).
    pub fn run_guest(
        config: VmConfig,
        guest: Guest<'_>,
        hooks: HookFactory<'_>,
    ) -> Result<RunReport, VmError> {
        let started = Instant::now();
        check_mem_size(config.mem_bytes)?;
        if config.vcpus == 0 || config.vcpus > boot::MAX_VCPUS {
            return Err(VmError::VcpuCount {
                n: config.vcpus,
                max: boot::MAX_VCPUS,
            });
        }
        if config.cmdline.len() >= boot::CMDLINE_MAX {
            return Err(VmError::CmdlineTooLong {
                len: config.cmdline.len(),
                max: boot::CMDLINE_MAX - 1,
            });
        }
        let parsed = match guest {
            Guest::Image(image) => {
                Some(loader::parse(image, RamLayout::for_ram(config.mem_bytes))?)
            }
            Guest::Linux(_) if config.vcpus != 1 => {
                return Err(VmError::LinuxVcpus { n: config.vcpus });
            }
            Guest::Linux(_) => None,
        };
        let kind = parsed.as_ref().map_or(ImageKind::Linux, |p| p.kind);

        let kvm = Kvm::new().map_err(VmError::KvmUnavailable)?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        let mut vcpu_hooks: Vec<Box<dyn VcpuHook>> = (0..config.vcpus).map(hooks).collect();
        if parsed.is_some() || vcpu_hooks.iter().any(|h| h.needs_in_kernel_lapic()) {
            vm.create_irq_chip()
                .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        }
        if parsed.is_some() {
            // A kernel image may program the PIT. A Linux program cannot reach it (ring
            // 3's I/O bitmap opens only the system-call ports, the ring-0 stubs never
            // touch it), and an in-kernel PIT is the dearest part of a VM's life on a
            // nested host: destroying it waits for several SRCU grace periods, 13-20 ms
            // of a `run --vm -- /bin/true` that takes ~40 ms.
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        }

        let mem = Arc::new(GuestMemory::new(config.mem_bytes)?);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mem.host_base(),
        };
        // SAFETY: the region describes `mem`, a live mapping that outlives the VM: the
        // vCPU threads hold an Arc to it and are joined before this function returns.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;

        let mut ranges: Vec<MsrRange> = vcpu_hooks.iter().flat_map(|h| h.msr_ranges()).collect();
        // Every vCPU's hook usually asks for the same ranges: filter each once.
        ranges.sort_by_key(|r| (r.base, r.count));
        ranges.dedup();
        install_msr_filter(&vm, &ranges)?;

        let mut process = None;
        match (&parsed, guest) {
            (Some(parsed), _) => {
                parsed.load(&mem)?;
                boot::write_tables(&mem)?;
                if parsed.kind.is_multiboot() {
                    boot::write_multiboot_info(&mem, &config.cmdline)?;
                }
            }
            (None, Guest::Linux(program)) => {
                // Guest-physical page 0 stays unused; the program's frames start above.
                let (mut p, task, regs) = Process::load(
                    mem.clone(),
                    0x1000,
                    program,
                    config.guest_entropy,
                    config.guest_pinned,
                )?;
                p.inherit_ignored(config.ignored_signals);
                if let Some(tx) = &config.guest_events {
                    p.send_maps_to(tx.clone());
                }
                process = Some((p, task, regs));
            }
            (None, Guest::Image(_)) => unreachable!("images are parsed above"),
        }

        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        if process.is_some() && config.guest_entropy != Default::default() {
            hide_hardware_random(supported.as_mut_slice());
        }
        let program_xcr0 = match process {
            Some(_) => linux::cpu::program_xcr0(supported.as_mut_slice()),
            None => None,
        };
        let mut vcpus = Vec::new();
        for (index, hook) in (0..config.vcpus).zip(vcpu_hooks.iter_mut()) {
            let program = process.is_some();
            let vcpu = create_vcpu(&vm, &supported, index, hook.as_mut(), program)?;
            match (&parsed, &process) {
                (Some(parsed), _) => setup_registers(&vcpu, parsed.kind, parsed.entry, index)?,
                (None, Some((_, task, regs))) => {
                    setup_linux_registers(&vcpu, task, None, regs, program_xcr0)?
                }
                (None, None) => {}
            }
            vcpus.push(vcpu);
        }
        let tsc_khz = vcpus[0].get_tsc_khz().map_or(0, u64::from);
        if let Some((p, ..)) = &process {
            start_vdso_clock(&p.kernel, &vcpus[0], tsc_khz);
        }
        if parsed.as_ref().is_some_and(|p| !p.kind.is_multiboot()) {
            boot::write_boot_info(&mem, config.vcpus, tsc_khz, &config.cmdline)?;
        }
        let sync_regs = kvm.check_extension(Cap::SyncRegs);
        let mut main_task = None;
        let process = process.map(|(p, task, _)| {
            main_task = Some(task);
            LinuxShared::new(p)
        });
        // Where signals from outside go: the processes of the program.
        let kernel = process.as_ref().map(|l| lock(&l.process).kernel.clone());
        // vCPUs whose Linux thread ended, waiting for the next one.
        let idle: IdleVcpus = Arc::default();
        // Threads of a Linux program ask the loop below for their vCPUs.
        let (spawn_tx, spawn_rx) = crossbeam_channel::unbounded::<SpawnRequest>();

        let devices = Arc::new(Devices::new(
            config.serial,
            mem.size(),
            config.vcpus,
            &config.cmdline,
            config.warn,
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let parked = Arc::new(AtomicUsize::new(0));
        install_kick_handler();
        let (tx, rx) = crossbeam_channel::unbounded::<(u32, VcpuEnd, VcpuRunStats)>();
        let setup = started.elapsed();
        let mut threads = Vec::new();
        let mut spawn_error = None;
        let start = |index: u32,
                     vcpu: VcpuFd,
                     hook: Box<dyn VcpuHook>,
                     task: Option<(LinuxShared, Task)>|
         -> std::io::Result<std::thread::JoinHandle<()>> {
            let mut vcpu = vcpu;
            let linux = match task {
                Some((shared, mut task)) => {
                    if sync_regs {
                        Process::use_sync_regs(&mut task, &mut vcpu);
                    }
                    Some(LinuxVcpu {
                        shared,
                        task,
                        spawn: spawn_tx.clone(),
                        execed: false,
                    })
                }
                None => None,
            };
            let (idle, spawn_tx) = (idle.clone(), spawn_tx.clone());
            let (mem, devices, stop) = (mem.clone(), devices.clone(), stop.clone());
            let parked = parked.clone();
            let events = config.guest_events.clone();
            // Built on its thread (the exit timer belongs to the thread).
            let runner = move || VcpuRunner {
                index,
                vcpu,
                hook_ports: hook.io_ports(),
                hook,
                linux,
                idle,
                spawn: spawn_tx,
                sync_regs,
                mem,
                devices,
                stop,
                parked,
                is_parked: false,
                stepped: false,
                events,
                stats: VcpuRunStats {
                    vcpu: index,
                    ..Default::default()
                },
                timer: None,
            };
            let notify = (config.vcpu_threads.clone(), config.phases.clone());
            spawn_vcpu_thread(index, runner, tx.clone(), notify)
        };
        for ((index, vcpu), hook) in (0..config.vcpus).zip(vcpus).zip(vcpu_hooks) {
            let task = match (index, &process) {
                (0, Some(shared)) => main_task.take().map(|t| (shared.clone(), t)),
                _ => None,
            };
            match start(index, vcpu, hook, task) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(VmError::Thread(e));
                    break;
                }
            }
        }

        let deadline = config.timeout.map(|t| Instant::now() + t);
        let mut stats: Vec<VcpuRunStats> = (0..config.vcpus)
            .map(|vcpu| VcpuRunStats {
                vcpu,
                ..Default::default()
            })
            .collect();
        let mut running = threads.len();
        let mut decisive: Option<Result<Outcome, VmError>> = spawn_error.map(Err);
        let poll = crossbeam_channel::tick(PARKED_POLL);
        let mut signal_rx = config.signal_requests.clone();
        // The first process's end, while the processes it left behind have
        // [`ORPHANS_GRACE`] to end on their own.
        let mut first_ended: Option<(Result<Outcome, VmError>, Instant)> = None;
        let orphans_left = || {
            kernel
                .as_ref()
                .is_some_and(|k| !k.still_running().is_empty())
        };
        while running > 0 && decisive.is_none() {
            if first_ended.is_some() && !orphans_left() {
                decisive = first_ended.take().map(|(o, _)| o);
                break;
            }
            let timeout = deadline.map_or(crossbeam_channel::never(), crossbeam_channel::at);
            let grace = first_ended
                .as_ref()
                .map_or(crossbeam_channel::never(), |(_, at)| {
                    crossbeam_channel::at(*at)
                });
            let stop_rx = config
                .stop_requests
                .clone()
                .unwrap_or_else(crossbeam_channel::never);
            let signals = signal_rx.clone().unwrap_or_else(crossbeam_channel::never);
            let msg = crossbeam_channel::select! {
                recv(rx) -> m => m.map_err(|_| RecvTimeoutError::Disconnected),
                recv(spawn_rx) -> req => {
                    // A Linux program's thread or process: an idle vCPU, or a new one
                    // with its own hook.
                    let Ok(req) = req else { continue };
                    let SpawnRequest { child, shared, reply } = req;
                    let mut assignment = Some((shared, child));
                    while let Some(a) = assignment.take() {
                        let Some(tx) = lock_idle(&idle).pop() else {
                            assignment = Some(a);
                            break;
                        };
                        // A vCPU that stopped waiting gives the assignment back.
                        if let Err(e) = tx.send(a) {
                            assignment = Some(e.into_inner());
                        }
                    }
                    let Some((shared, child)) = assignment else {
                        let _ = reply.send(true);
                        continue;
                    };
                    let index = stats.len() as u32;
                    let started = (|| {
                        let mut hook = hooks(index);
                        let vcpu = create_vcpu(&vm, &supported, index, hook.as_mut(), true)?;
                        let NewThread { task, regs, fpu } = *child;
                        setup_linux_registers(&vcpu, &task, fpu.as_ref(), &regs, program_xcr0)?;
                        start(index, vcpu, hook, Some((shared, task))).map_err(VmError::Thread)
                    })();
                    let ok = started.is_ok();
                    if let Ok(t) = started {
                        threads.push(t);
                        running += 1;
                        stats.push(VcpuRunStats {
                            vcpu: index,
                            ..Default::default()
                        });
                    }
                    let _ = reply.send(ok);
                    continue;
                }
                recv(stop_rx) -> _ => {
                    decisive = Some(Ok(Outcome::Stopped));
                    break;
                }
                recv(signals) -> signal => {
                    match (signal, &kernel) {
                        (Ok(signal), Some(kernel)) => {
                            kernel.signal_from_outside(signal);
                        }
                        (Ok(_), None) => {}
                        // Every handle is gone: no more signals.
                        (Err(_), _) => signal_rx = None,
                    }
                    continue;
                }
                recv(timeout) -> _ => Err(RecvTimeoutError::Timeout),
                recv(grace) -> _ => {
                    decisive = first_ended.take().map(|(o, _)| o);
                    break;
                }
                recv(poll) -> _ => {
                    if parked.load(Ordering::Acquire) >= running {
                        // Every vCPU still running is halted for good: stopping them
                        // makes the parked ones report it (see `run_loop`).
                        break;
                    }
                    continue;
                }
            };
            match msg {
                Ok((index, end, n)) => {
                    running -= 1;
                    stats[index as usize] = n;
                    let exited = matches!(end, VcpuEnd::Exit(_) | VcpuEnd::Killed { .. });
                    match end_to_outcome(end) {
                        // The first process ended (only its end is an exit here):
                        // what it left running may finish on its own first, as on
                        // Linux where it would go on, orphaned.
                        Some(o) if exited && first_ended.is_none() && orphans_left() => {
                            first_ended = Some((o, Instant::now() + ORPHANS_GRACE));
                        }
                        o => decisive = o.or(decisive),
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    decisive = Some(Ok(Outcome::TimedOut(config.timeout.unwrap_or_default())));
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Stop and collect every other vCPU thread.
        stop.store(true, Ordering::SeqCst);
        while running > 0 {
            // A thread being created now is not: its parent gets EAGAIN and stops.
            for req in spawn_rx.try_iter() {
                let _ = req.reply.send(false);
            }
            for t in &threads {
                if !t.is_finished() {
                    // SAFETY: the pthread_t comes from a live (not yet joined) JoinHandle;
                    // the signal's handler only sets immediate_exit (see kick_handler).
                    unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
                }
            }
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok((index, end, n)) => {
                    running -= 1;
                    stats[index as usize] = n;
                    if decisive.is_none() {
                        decisive = end_to_outcome(end);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for t in threads {
            let _ = t.join();
        }
        let outcome = match decisive {
            Some(r) => r?,
            None => Outcome::Crashed(CrashReport {
                vcpu: 0,
                reason: "every vCPU stopped without an exit".into(),
                registers: String::new(),
            }),
        };
        let linux = process.map(|l| match l.process.lock() {
            Ok(mut p) => p.take_report(),
            Err(poisoned) => poisoned.into_inner().take_report(),
        });
        Ok(RunReport {
            linux,
            outcome,
            kind,
            elapsed: started.elapsed(),
            setup,
            vcpus: stats,
            unknown: devices.unknown_accesses(),
        })
    }
}

fn end_to_outcome(end: VcpuEnd) -> Option<Result<Outcome, VmError>> {
    match end {
        VcpuEnd::ThreadExit => None,
        VcpuEnd::Exit(code) => Some(Ok(Outcome::Exited(code))),
        VcpuEnd::Killed { signal, crash } => Some(Ok(Outcome::Signaled { signal, crash })),
        VcpuEnd::PowerOff => Some(Ok(Outcome::PowerOff)),
        VcpuEnd::Crash(c) => Some(Ok(Outcome::Crashed(c))),
        VcpuEnd::Error(e) => Some(Err(e)),
        VcpuEnd::Stopped => None,
    }
}

/// Start vCPU `index`'s host thread, which runs the runner `make` builds; it reports
/// its end on `tx`, and its start and phases to whoever `notify` names.
fn spawn_vcpu_thread(
    index: u32,
    make: impl FnOnce() -> VcpuRunner + Send + 'static,
    tx: crossbeam_channel::Sender<(u32, VcpuEnd, VcpuRunStats)>,
    notify: (
        Option<crossbeam_channel::Sender<VcpuThreadInfo>>,
        Option<Arc<crate::phase::PhaseBoard>>,
    ),
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            let tid = gettid();
            let (threads, phases) = notify;
            if let Some(board) = phases {
                crate::phase::install(board.register(tid), ShimPhase::Loop);
            }
            let mut runner = make();
            runner.stats.tid = tid;
            if let Some(n) = threads {
                let _ = n.send(VcpuThreadInfo {
                    vcpu: index,
                    pid: std::process::id(),
                    tid,
                    time_ns: monotonic_ns(),
                });
            }
            // A panic (a bug in the shim or a hook) must not leave the VM waiting
            // for this vCPU forever: report it like any other end.
            let result = std::panic::catch_unwind(AssertUnwindSafe(move || {
                let end = runner.run();
                (end, runner.stats)
            }));
            let (end, stats) = result.unwrap_or_else(|payload| {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let end = VcpuEnd::Error(VmError::VcpuPanicked {
                    vcpu: index,
                    message,
                });
                (
                    end,
                    VcpuRunStats {
                        vcpu: index,
                        tid,
                        ..Default::default()
                    },
                )
            });
            let _ = tx.send((index, end, stats));
        })
}

/// Route the hooks' MSR ranges to user space (deny them in a filter, exit on denial).
fn install_msr_filter(vm: &VmFd, ranges: &[MsrRange]) -> Result<(), VmError> {
    if ranges.is_empty() {
        return Ok(());
    }
    if ranges.len() > 16 {
        return Err(VmError::TooManyMsrRanges { n: ranges.len() });
    }
    let cap = kvm_enable_cap {
        cap: Cap::X86UserSpaceMsr as u32,
        args: [u64::from(KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap)
        .map_err(kvm_err("KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)"))?;
    // A cleared bit denies the access; denied accesses exit with KVM_MSR_EXIT_REASON_FILTER.
    let bitmaps: Vec<Vec<u8>> = ranges
        .iter()
        .map(|r| vec![0u8; r.count.div_ceil(8) as usize])
        .collect();
    let filter: Vec<MsrFilterRange<'_>> = ranges
        .iter()
        .zip(&bitmaps)
        .map(|(r, bitmap)| MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: r.base,
            msr_count: r.count,
            bitmap,
        })
        .collect();
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &filter)
        .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))
}

/// CPUID leaf 1 EBX[31:24] and leaves 0xB/0x1F EDX carry the (x2)APIC id.
fn set_apic_id(entries: &mut [kvm_bindings::kvm_cpuid_entry2], index: u32) {
    for e in entries.iter_mut() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24),
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
}

fn setup_registers(vcpu: &VcpuFd, kind: ImageKind, entry: u64, index: u32) -> Result<(), VmError> {
    let mut fpu = vcpu.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?;
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
    if kind.is_multiboot() && index != 0 {
        // Application processors wait for INIT/SIPI in the in-kernel LAPIC.
        return Ok(());
    }
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let regs = if kind.is_multiboot() {
        boot::protected_mode_sregs(&mut sregs);
        boot::multiboot_regs(entry)
    } else {
        boot::long_mode_sregs(&mut sregs);
        boot::elf64_regs(entry, index)
    };
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    if index != 0 {
        let runnable = kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        };
        vcpu.set_mp_state(runnable)
            .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    }
    Ok(())
}

/// Clear RDRAND (leaf 1, ECX bit 30) and RDSEED (leaf 7.0, EBX bit 18) from CPUID, so a
/// program whose randomness is a fixed stream does not take the CPU's instead.
fn hide_hardware_random(entries: &mut [kvm_bindings::kvm_cpuid_entry2]) {
    for e in entries {
        match (e.function, e.index) {
            (1, _) => e.ecx &= !(1 << 30),
            (7, 0) => e.ebx &= !(1 << 18),
            _ => {}
        }
    }
}

/// Let the program's vDSO read the clocks without exits when the host's TSC allows it
/// ([`linux::vclock::decide`]); otherwise its functions make the system calls (silently:
/// the program's output must not change).
fn start_vdso_clock(kernel: &linux::proc::Kernel, vcpu: &VcpuFd, tsc_khz: u64) {
    let Some(vdso) = &kernel.vdso else {
        return;
    };
    let facts = linux::vclock::host_facts(tsc_khz, kernel.clock.is_pinned());
    if linux::vclock::decide(&facts).is_err() {
        return;
    }
    // The guest TSC against the host's: the tightest of a few brackets.
    let mut best: Option<(u64, i64)> = None;
    let Ok(mut msrs) = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: linux::abi::MSR_IA32_TSC,
        ..Default::default()
    }]) else {
        return;
    };
    for _ in 0..5 {
        let before = linux::vclock::host_tsc();
        let read = vcpu.get_msrs(&mut msrs);
        let after = linux::vclock::host_tsc();
        if read != Ok(1) {
            return;
        }
        let guest = msrs.as_slice()[0].data;
        let width = after.wrapping_sub(before);
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, linux::vclock::tsc_offset(before, guest, after)));
        }
    }
    if let Some((_, offset)) = best {
        vdso.clock.start(offset, tsc_khz);
    }
}

/// Create vCPU `index` with the host's CPUID as `hook` adjusts it: for a guest kernel.
/// A Linux `program` gets the host's CPUID as KVM offers it, unadjusted. The hooks'
/// edits describe a PMU (the emulated one is an Intel model, vendor and family
/// included) to a kernel that drives it through MSRs; a ring-3 program cannot, and a
/// disguised vendor would only steer its libraries away from what they choose natively
/// (glibc sizes its memcpy/memset strategies from the vendor's cache leaves: on an AMD
/// host posing as Intel it read no cache sizes and took non-temporal stores from 16 KiB).
fn create_vcpu(
    vm: &VmFd,
    supported: &CpuId,
    index: u32,
    hook: &mut dyn VcpuHook,
    program: bool,
) -> Result<VcpuFd, VmError> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let mut entries = supported.as_slice().to_vec();
    set_apic_id(&mut entries, index);
    if !program {
        hook.adjust_cpuid(index, &mut entries);
    }
    let cpuid = CpuId::from_entries(&entries).map_err(|_| VmError::Kvm {
        op: "KVM_SET_CPUID2",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    Ok(vcpu)
}

/// A Linux thread's first state: ring 3 at `regs`, the task's page tables, TLS and
/// TSS, SSE usable (with `fpu`, the creating thread's, or the initial state).
fn setup_linux_registers(
    vcpu: &VcpuFd,
    task: &Task,
    fpu: Option<&kvm_bindings::kvm_fpu>,
    regs: &kvm_regs,
    xcr0: Option<u64>,
) -> Result<(), VmError> {
    let fpu = match fpu {
        Some(f) => *f,
        None => {
            let mut fpu = vcpu.get_fpu().map_err(kvm_err("KVM_GET_FPU"))?;
            fpu.fcw = 0x37f;
            fpu.mxcsr = 0x1f80;
            fpu
        }
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    if xcr0.is_some() {
        sregs.cr4 |= crate::arch::CR4_OSXSAVE;
    }
    linux::cpu::user_sregs(&mut sregs, task.cr3, task.trap.tss);
    sregs.fs.base = task.fs_base;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    if let Some(value) = xcr0 {
        let mut xcrs = kvm_bindings::kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0] = kvm_bindings::kvm_xcr {
            xcr: 0,
            value,
            ..Default::default()
        };
        vcpu.set_xcrs(&xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    }
    // With the in-kernel LAPIC, vCPUs other than the first wait for INIT/SIPI: a
    // thread's vCPU is runnable at once.
    let runnable = kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    };
    vcpu.set_mp_state(runnable)
        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    let entries: Vec<kvm_bindings::kvm_msr_entry> = linux::cpu::syscall_msrs()
        .iter()
        .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = kvm_bindings::Msrs::from_entries(&entries).map_err(|_| VmError::Kvm {
        op: "KVM_SET_MSRS",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(VmError::Kvm {
            op: "KVM_SET_MSRS",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    vcpu.set_regs(regs).map_err(kvm_err("KVM_SET_REGS"))
}

/// The Linux personality's trap stubs in every process's address space.
fn linux_shim_code() -> crate::hook::ShimCode {
    use crate::linux::abi::{PAGE, STUB_SLOT, TRAP_AREA, TRAP_STUBS};
    use crate::linux::cpu::syscall_entry;
    let stubs = TRAP_AREA.0 + TRAP_STUBS * PAGE;
    crate::hook::ShimCode {
        stubs: stubs..stubs + PAGE,
        syscall: syscall_entry()..syscall_entry() + STUB_SLOT,
    }
}

/// How often a vCPU that makes no exits is checked for a halt it can never leave.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

/// How often the VM looks whether every running vCPU is halted for good.
const PARKED_POLL: Duration = Duration::from_millis(200);

/// How long processes a Linux program's first process left running when it ended have
/// to end on their own (a helper whose input pipe closed with it, such as the
/// `llvm-symbolizer` AddressSanitizer starts, a job sent to the background) before the
/// VM stops with them.
pub const ORPHANS_GRACE: Duration = Duration::from_secs(1);
/// How soon a vCPU is kicked again when a signal could not be delivered where a kick
/// found it.
const SIGNAL_RETRY: Duration = Duration::from_micros(200);

/// The [`VcpuCtx`] a hook callback gets, from a runner's fields (a macro, not a method:
/// the hook itself is borrowed beside them).
macro_rules! vcpu_ctx {
    ($runner:ident, $req:expr) => {
        VcpuCtx {
            index: $runner.index,
            vcpu: &$runner.vcpu,
            mem: &$runner.mem,
            requests: $req,
        }
    };
}

struct VcpuRunner {
    index: u32,
    vcpu: VcpuFd,
    hook: Box<dyn VcpuHook>,
    /// Ports the hook handles itself; the devices never see them.
    hook_ports: Vec<u16>,
    /// The Linux program's thread this vCPU runs, if it runs one (its traps exit on
    /// I/O ports).
    linux: Option<LinuxVcpu>,
    /// Where this vCPU waits for the next Linux thread when its own ends.
    idle: IdleVcpus,
    /// For the threads it runs next.
    spawn: crossbeam_channel::Sender<SpawnRequest>,
    /// KVM_CAP_SYNC_REGS is there.
    sync_regs: bool,
    mem: Arc<GuestMemory>,
    devices: Arc<Devices>,
    stop: Arc<AtomicBool>,
    /// How many vCPUs are halted with interrupts disabled and nothing pending; the VM ends
    /// the run when that is all of them.
    parked: Arc<AtomicUsize>,
    /// This vCPU counts in `parked`.
    is_parked: bool,
    /// KVM single-stepped this vCPU at some point (the emulated LBR's tracer): a TF in
    /// flags the guest saved (R11 at a system call, an exception frame) may be KVM's.
    stepped: bool,
    stats: VcpuRunStats,
    timer: Option<ExitTimer>,
    /// Where a Linux program's events go: this vCPU tells which address space it runs.
    events: Option<crate::linux::GuestEventSink>,
}

impl VcpuRunner {
    fn run(&mut self) -> VcpuEnd {
        STOP.with(|s| *s.borrow_mut() = Some(self.stop.clone()));
        if let Some(l) = &self.linux {
            let mut p = lock(&l.shared.process);
            p.register_thread(&l.task);
            tell_space(self.events.as_ref(), self.index, p.space());
        }
        let run = self.vcpu.get_kvm_run();
        IMMEDIATE_EXIT.with(|c| c.set(&raw mut run.immediate_exit));
        // Cleared when run() returns or unwinds, before the VcpuFd can be dropped.
        let _clear = ClearImmediateExit;
        let mut requests = Requests {
            shim_code: self.linux.as_ref().map(|_| linux_shim_code()),
            ..Requests::default()
        };
        let mut ctx = vcpu_ctx!(self, &mut requests);
        self.hook.on_start(&mut ctx);
        // Without it a guest that halts for good (`cli; hlt`) would hang the run: with an
        // in-kernel LAPIC a halt never exits to user space. Best effort: no watchdog, no
        // diagnosis, but the run itself is unaffected.
        let watchdog = ExitTimer::for_current_thread(watchdog_signal())
            .and_then(|t| t.arm_every(WATCHDOG_PERIOD).map(|()| t))
            .ok();
        let end = loop {
            let end = self.run_loop(&mut requests);
            // A Linux thread ended, its program goes on: wait for the next thread.
            if matches!(end, VcpuEnd::ThreadExit) && self.linux.is_some() {
                // The emulated LBR's breakpoints leave the thread's address space (it
                // may be gone soon, and the next thread's is another).
                let mut ctx = vcpu_ctx!(self, &mut requests);
                self.hook.on_block(&mut ctx);
                self.linux = None;
                if self.next_thread() {
                    requests.shim_code = self.linux.as_ref().map(|_| linux_shim_code());
                    let mut ctx = vcpu_ctx!(self, &mut requests);
                    self.hook.on_new_program(&mut ctx);
                    continue;
                }
            }
            break end;
        };
        drop(watchdog);
        if self.is_parked {
            self.parked.fetch_sub(1, Ordering::AcqRel);
        }
        let mut ctx = vcpu_ctx!(self, &mut requests);
        self.hook.on_stop(&mut ctx);
        end
    }

    /// Offer this vCPU for the next Linux thread or process and wait for one (true) or
    /// for the VM to stop (false).
    fn next_thread(&mut self) -> bool {
        let (tx, rx) = crossbeam_channel::bounded::<Assignment>(1);
        lock_idle(&self.idle).push(tx);
        let (shared, child) = loop {
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(a) => break a,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        };
        let NewThread {
            mut task,
            regs,
            fpu,
        } = *child;
        // The thread that ended here may have had a call's result written to the run
        // page (KVM_CAP_SYNC_REGS, marked dirty) for an entry that never came: KVM
        // would load those registers over the new thread's at its first KVM_RUN, and
        // the new thread would go on as the old one, on the new program's memory.
        for reg in [
            kvm_ioctls::SyncReg::Register,
            kvm_ioctls::SyncReg::SystemRegister,
            kvm_ioctls::SyncReg::VcpuEvents,
        ] {
            self.vcpu.clear_sync_dirty_reg(reg);
        }
        let xcr0 = linux::cpu::kept_xcr0(&self.vcpu);
        if setup_linux_registers(&self.vcpu, &task, fpu.as_ref(), &regs, xcr0).is_err() {
            // The parent was told the child runs: it ends at once instead.
            lock(&shared.process).end(task.tid, linux::proc::killed(libc::SIGKILL));
            return self.next_thread();
        }
        if self.sync_regs {
            Process::use_sync_regs(&mut task, &mut self.vcpu);
        }
        {
            let mut p = lock(&shared.process);
            p.register_thread(&task);
            tell_space(self.events.as_ref(), self.index, p.space());
        }
        self.linux = Some(LinuxVcpu {
            shared,
            task,
            spawn: self.spawn.clone(),
            execed: false,
        });
        true
    }

    fn crash(&self, reason: String) -> VcpuEnd {
        VcpuEnd::Crash(CrashReport {
            vcpu: self.index,
            reason,
            registers: self.register_dump(),
        })
    }

    /// Halted with interrupts disabled and no event pending: only an NMI or INIT from
    /// another vCPU could ever wake it.
    fn halted_for_good(&self) -> bool {
        const RFLAGS_IF: u64 = 1 << 9;
        let halted = self
            .vcpu
            .get_mp_state()
            .is_ok_and(|m| m.mp_state == kvm_bindings::KVM_MP_STATE_HALTED);
        halted
            && self
                .vcpu
                .get_regs()
                .is_ok_and(|r| r.rflags & RFLAGS_IF == 0)
            && self.vcpu.get_vcpu_events().is_ok_and(|e| {
                e.nmi.pending == 0
                    && e.nmi.injected == 0
                    && e.interrupt.injected == 0
                    && e.exception.injected == 0
            })
    }

    /// A watchdog tick: (un)counts this vCPU as parked.
    fn check_parked(&mut self) {
        let parked = self.halted_for_good();
        if parked != self.is_parked {
            self.is_parked = parked;
            if parked {
                self.parked.fetch_add(1, Ordering::AcqRel);
            } else {
                self.parked.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// How a Linux trap's final action ends this vCPU's loop (`None`: run on). Blocks,
    /// clones, forks and execs are finished before (`Process::block`, `settle`,
    /// `process_op`).
    fn trap_end(&self, action: Result<TrapAction, VmError>) -> Option<VcpuEnd> {
        match action {
            Ok(TrapAction::Resume) => None,
            Ok(TrapAction::ThreadExit) => Some(VcpuEnd::ThreadExit),
            Ok(TrapAction::Exit(code)) => Some(VcpuEnd::Exit(code as u8)),
            Ok(TrapAction::Killed { signal, reason }) => Some(VcpuEnd::Killed {
                signal,
                crash: CrashReport {
                    vcpu: self.index,
                    reason,
                    // As a core file: for a fault or abort(), not for Ctrl-C.
                    registers: if linux::signal::dumps_core(signal) {
                        self.register_dump()
                    } else {
                        String::new()
                    },
                },
            }),
            Ok(
                TrapAction::Block { .. }
                | TrapAction::Clone { .. }
                | TrapAction::Fork { .. }
                | TrapAction::Exec { .. }
                | TrapAction::ProcessOp { .. },
            ) => unreachable!("blocks, clones, forks and execs are finished before"),
            Err(e) => Some(VcpuEnd::Error(e)),
        }
    }

    fn register_dump(&self) -> String {
        match (self.vcpu.get_regs(), self.vcpu.get_sregs()) {
            (Ok(r), Ok(s)) => format_registers(&r, &s),
            _ => String::new(),
        }
    }

    fn apply_requests(&mut self, req: &mut Requests) -> Result<(), VmError> {
        if req.debug_dirty {
            let mut dbg = kvm_guest_debug::default();
            let mut dr7 = 0;
            for (i, bp) in req.breakpoints.iter().enumerate() {
                if let Some(addr) = bp {
                    dbg.arch.debugreg[i] = addr.0;
                    dr7 |= DR7_L0 << (2 * i);
                }
            }
            dbg.arch.debugreg[7] = dr7;
            if req.single_step || dr7 != 0 {
                dbg.control = KVM_GUESTDBG_ENABLE;
                if req.single_step {
                    dbg.control |= KVM_GUESTDBG_SINGLESTEP;
                    self.stepped = true;
                }
                if dr7 != 0 {
                    dbg.control |= KVM_GUESTDBG_USE_HW_BP;
                }
            }
            self.vcpu
                .set_guest_debug(&dbg)
                .map_err(kvm_err("KVM_SET_GUEST_DEBUG"))?;
            req.debug_dirty = false;
        }
        if req.nmi {
            self.vcpu.nmi().map_err(kvm_err("KVM_NMI"))?;
            req.nmi = false;
        }
        if let Some(after) = req.exit_timer.take() {
            if self.timer.is_none() {
                self.timer =
                    Some(ExitTimer::for_current_thread(kick_signal()).map_err(VmError::Timer)?);
            }
            if let Some(t) = &self.timer {
                t.arm(after).map_err(VmError::Timer)?;
            }
        }
        Ok(())
    }

    /// The guest registers in the run page, where KVM keeps them (KVM_CAP_SYNC_REGS,
    /// used for Linux programs' system calls): after an exit, and as the shim's
    /// system-call service left them for the next entry.
    fn entry_regs(&mut self) -> Option<kvm_bindings::kvm_regs> {
        let l = self.linux.as_ref()?;
        l.task.sync_regs.then(|| self.vcpu.sync_regs().regs)
    }

    fn run_loop(&mut self, req: &mut Requests) -> VcpuEnd {
        loop {
            phase::enter(ShimPhase::Loop);
            if self.stop.load(Ordering::Acquire) {
                if self.is_parked {
                    return self.crash(
                        "halted with interrupts disabled and nothing pending (as after \
                         `cli; hlt`): no vCPU could ever run again"
                            .into(),
                    );
                }
                return VcpuEnd::Stopped;
            }
            if let Some(reason) = req.stop.take() {
                return self.crash(format!("stopped by the vCPU hook: {reason}"));
            }
            if let Err(e) = self.apply_requests(req) {
                return VcpuEnd::Error(e);
            }
            if let Some(l) = &mut self.linux {
                // Its process ended (another thread's exit_group, a fatal signal), or
                // another thread's execve ended this one.
                if l.shared.proc_shared.ended(&l.task) {
                    return VcpuEnd::ThreadExit;
                }
                // Another thread changed the page tables (and kicked this one out).
                let generation = l.shared.tlb.load(Ordering::Acquire);
                if let Err(e) =
                    linux::catch_up_tlb(&mut l.task, &self.vcpu, generation, l.shared.roots)
                {
                    return VcpuEnd::Error(e);
                }
            }
            let mut action = IoAction::Continue;
            // A kick that arrived before this entry (while an exit was served) makes the
            // entry return at once: it did not find the guest running.
            let kicked_before_entry = KICKED.with(Cell::get);
            // Nor did one that arrived on KVM_RUN's way in (on a nested host that way is
            // long): the guest did not move. Where the run page holds the registers
            // (a Linux program's vCPU) they tell: all of them, as the RIP alone would
            // also stand still for a tight loop interrupted at the same instruction.
            let entry_regs = self.entry_regs();
            phase::enter(ShimPhase::Run);
            let entered = Instant::now();
            let result = self.vcpu.run();
            self.stats.run_ns += entered.elapsed().as_nanos() as u64;
            phase::enter(ShimPhase::Loop);
            let kind = match result {
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.vcpu.set_kvm_immediate_exit(0);
                    let kicked = KICKED.with(|c| c.replace(false));
                    req.kick_in_guest = kicked
                        && !kicked_before_entry
                        && entry_regs.is_none_or(|r| Some(r) != self.entry_regs());
                    if WATCHDOG.with(|c| c.replace(false)) {
                        self.check_parked();
                        if !kicked {
                            // The watchdog's own tick: the hook never sees it.
                            continue;
                        }
                    }
                    ExitKind::Interrupted
                }
                Err(e) => {
                    return VcpuEnd::Error(VmError::Kvm {
                        op: "KVM_RUN",
                        source: e,
                    });
                }
                Ok(exit) => match exit {
                    VcpuExit::IoOut(port, data) => {
                        let trap = self.linux.is_some() && Process::is_trap_port(port);
                        if !trap && !self.hook_ports.contains(&port) {
                            phase::enter(ShimPhase::Devices);
                            action = self.devices.io_out(port, data);
                        }
                        ExitKind::IoOut {
                            port,
                            len: data.len(),
                        }
                    }
                    VcpuExit::IoIn(port, data) => {
                        phase::enter(ShimPhase::Devices);
                        self.devices.io_in(port, data);
                        ExitKind::IoIn {
                            port,
                            len: data.len(),
                        }
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        let len = data.len();
                        phase::enter(ShimPhase::Devices);
                        self.devices.mmio(addr, Some(data));
                        ExitKind::MmioRead { addr, len }
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        phase::enter(ShimPhase::Devices);
                        self.devices.mmio(addr, None);
                        ExitKind::MmioWrite {
                            addr,
                            len: data.len(),
                        }
                    }
                    VcpuExit::X86Rdmsr(m) => ExitKind::Rdmsr { msr: m.index },
                    VcpuExit::X86Wrmsr(m) => ExitKind::Wrmsr {
                        msr: m.index,
                        value: m.data,
                    },
                    VcpuExit::Debug(d) => ExitKind::Debug(DebugExit::from_arch(&d)),
                    VcpuExit::Hlt => ExitKind::Hlt,
                    VcpuExit::Intr => ExitKind::Interrupted,
                    VcpuExit::Shutdown => ExitKind::Shutdown,
                    VcpuExit::InternalError => ExitKind::InternalError { suberror: 0 },
                    VcpuExit::FailEntry(reason, _cpu) => ExitKind::FailEntry { reason },
                    VcpuExit::SystemEvent(kind, _) => ExitKind::SystemEvent { kind },
                    VcpuExit::Unsupported(r) => ExitKind::Other(r),
                    _ => ExitKind::Other(u32::MAX),
                },
            };
            let kind = match kind {
                ExitKind::InternalError { .. } => {
                    let run = self.vcpu.get_kvm_run();
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the exit union.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    ExitKind::InternalError { suberror }
                }
                k => k,
            };
            *self.stats.exits.entry(kind.name()).or_insert(0) += 1;
            let hook_started = Instant::now();
            let mut ctx = vcpu_ctx!(self, req);
            // The hook's part: MSR emulation, branch tracing at debug exits, the rest of
            // the loop otherwise (the LBR emulation marks its tracing and snapshots).
            phase::enter(match kind {
                ExitKind::Rdmsr { .. } | ExitKind::Wrmsr { .. } => ShimPhase::Msr,
                ExitKind::Debug(_) => ShimPhase::Tracing,
                _ => ShimPhase::Loop,
            });
            match kind {
                ExitKind::Rdmsr { msr } => {
                    let result = self.hook.rdmsr(&mut ctx, msr);
                    self.hook.on_exit(&mut ctx, &kind);
                    let run = self.vcpu.get_kvm_run();
                    // SAFETY: the exit was KVM_EXIT_X86_RDMSR, so `msr` is the active union
                    // member; KVM reads data/error from it on the next KVM_RUN.
                    unsafe {
                        let m = &mut run.__bindgen_anon_1.msr;
                        m.error = u8::from(result.is_err());
                        m.data = result.unwrap_or(0);
                    }
                }
                ExitKind::Wrmsr { msr, value } => {
                    let result = self.hook.wrmsr(&mut ctx, msr, value);
                    self.hook.on_exit(&mut ctx, &kind);
                    let run = self.vcpu.get_kvm_run();
                    // The exit was KVM_EXIT_X86_WRMSR, so `msr` is the active union member.
                    run.__bindgen_anon_1.msr.error = u8::from(result.is_err());
                }
                ExitKind::Debug(d) => {
                    self.hook.on_debug(&mut ctx, &d);
                    self.hook.on_exit(&mut ctx, &kind);
                }
                _ => self.hook.on_exit(&mut ctx, &kind),
            }
            self.stats.hook_ns += hook_started.elapsed().as_nanos() as u64;
            phase::enter(ShimPhase::Loop);
            // A kick may bring a signal for the Linux program: delivered now.
            if let (ExitKind::Interrupted, Some(linux)) = (kind, &mut self.linux) {
                phase::enter(ShimPhase::LinuxTrap);
                let action = linux.interrupt(&mut self.vcpu);
                let moved = linux.task.take_moved();
                let waiting = linux.task.signal_waiting();
                if let Some(end) = self.trap_end(action) {
                    return end;
                }
                if moved {
                    let mut ctx = vcpu_ctx!(self, req);
                    self.hook.on_moved(&mut ctx);
                } else if waiting {
                    // Not deliverable where the kick found the vCPU (an event queued, a
                    // ring-0 instruction other than a stub's return): try again soon,
                    // not at the next system call, which a busy program may never make.
                    req.exit_timer = Some(Some(SIGNAL_RETRY));
                }
            }
            if let (ExitKind::IoOut { port, .. }, Some(linux)) = (kind, &mut self.linux)
                && Process::is_trap_port(port)
            {
                phase::enter(ShimPhase::LinuxTrap);
                // KVM's TF in saved flags is stale once its single-step is off (while it
                // is on, KVM owns TF and the flags go back as they are).
                linux.task.shim_stepped = self.stepped && !req.single_step;
                let mut action = linux.trap(&mut self.vcpu, port);
                if let Ok(TrapAction::ProcessOp { .. }) = action {
                    // The emulated LBR's breakpoints leave the address space first: a
                    // fork would copy them, an exec replaces the space under them.
                    let mut ctx = vcpu_ctx!(self, req);
                    self.hook.on_block(&mut ctx);
                    if let Ok(TrapAction::ProcessOp { pending, op }) = action {
                        action = linux.process_op(&mut self.vcpu, pending, op);
                    }
                    if matches!(action, Ok(TrapAction::Resume)) && linux.execed() {
                        let space = lock(&linux.shared.process).space();
                        tell_space(self.events.as_ref(), self.index, space);
                        let mut ctx = vcpu_ctx!(self, req);
                        self.hook.on_new_program(&mut ctx);
                    }
                }
                let action = match action {
                    Ok(TrapAction::Block { pending, block }) => {
                        let mut ctx = vcpu_ctx!(self, req);
                        self.hook.on_block(&mut ctx);
                        let _blocked = phase::scoped(ShimPhase::Blocked);
                        linux.block(&mut self.vcpu, pending, block, &self.stop)
                    }
                    action => action,
                };
                let moved = linux.task.take_moved();
                if let Some(end) = self.trap_end(action) {
                    return end;
                }
                if moved {
                    // A signal's handler, or the frame rt_sigreturn read: the hook plans
                    // from there, with the registers the call left in the run page
                    // moved to KVM first (where the hook reads and may set them).
                    let run = self.vcpu.get_kvm_run();
                    if run.kvm_dirty_regs & u64::from(kvm_bindings::KVM_SYNC_X86_REGS) != 0 {
                        let regs = self.vcpu.sync_regs().regs;
                        self.vcpu
                            .clear_sync_dirty_reg(kvm_ioctls::SyncReg::Register);
                        if let Err(source) = self.vcpu.set_regs(&regs) {
                            return VcpuEnd::Error(VmError::Kvm {
                                op: "KVM_SET_REGS",
                                source,
                            });
                        }
                    }
                    let mut ctx = vcpu_ctx!(self, req);
                    self.hook.on_moved(&mut ctx);
                }
                continue;
            }
            match (kind, action) {
                (_, IoAction::Exit(code)) => return VcpuEnd::Exit(code),
                (_, IoAction::PowerOff) => return VcpuEnd::PowerOff,
                (ExitKind::Shutdown, _) => {
                    return self.crash("triple fault (KVM_EXIT_SHUTDOWN)".into());
                }
                (ExitKind::InternalError { suberror }, _) => {
                    return self.crash(format!(
                        "KVM internal error, suberror {suberror} (KVM_EXIT_INTERNAL_ERROR)"
                    ));
                }
                (ExitKind::FailEntry { reason }, _) => {
                    return self.crash(format!(
                        "VM entry failed, hardware reason {reason:#x} (KVM_EXIT_FAIL_ENTRY)"
                    ));
                }
                (ExitKind::SystemEvent { kind: 1 }, _) => return VcpuEnd::PowerOff,
                (ExitKind::SystemEvent { kind }, _) => {
                    return self.crash(format!("system event {kind} (KVM_EXIT_SYSTEM_EVENT)"));
                }
                (ExitKind::Hlt, _) => return VcpuEnd::PowerOff,
                (ExitKind::Other(r), _) => {
                    return self.crash(format!("unexpected exit reason {r}"));
                }
                _ => {}
            }
        }
    }
}

/// What the vCPUs of one Linux process share.
#[derive(Clone)]
struct LinuxShared {
    process: Arc<Mutex<Process>>,
    /// [`Process::tlb_generation`], readable without the lock.
    tlb: Arc<std::sync::atomic::AtomicU64>,
    /// The twin PML4s ([`crate::linux::mm::AddressSpace::roots`]).
    roots: [u64; 2],
    /// What other processes change without the lock (its `dead` flag ends the
    /// process's other threads).
    proc_shared: Arc<linux::proc::Shared>,
}

impl LinuxShared {
    fn new(p: Process) -> LinuxShared {
        LinuxShared {
            tlb: p.tlb_generation(),
            roots: p.mm.roots(),
            proc_shared: p.shared(),
            process: Arc::new(Mutex::new(p)),
        }
    }
}

/// Tells the recorder (if any) that vCPU `vcpu` runs a thread of address space `space`
/// from now on.
fn tell_space(events: Option<&linux::GuestEventSink>, vcpu: u32, space: u32) {
    if let Some(tx) = events {
        tx.send(linux::GuestEvent::Runs { vcpu, space });
    }
}

/// A new thread's or process's vCPU, asked of the VM's loop, which answers whether it
/// started.
struct SpawnRequest {
    child: Box<NewThread>,
    /// The process it belongs to.
    shared: LinuxShared,
    reply: crossbeam_channel::Sender<bool>,
}

/// A thread for an idle vCPU to run.
type Assignment = (LinuxShared, Box<NewThread>);

/// vCPUs whose Linux thread ended, each waiting on its channel for the next thread.
type IdleVcpus = Arc<Mutex<Vec<crossbeam_channel::Sender<Assignment>>>>;

fn lock_idle(
    idle: &Mutex<Vec<crossbeam_channel::Sender<Assignment>>>,
) -> std::sync::MutexGuard<'_, Vec<crossbeam_channel::Sender<Assignment>>> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

/// One thread of a Linux program on this vCPU.
struct LinuxVcpu {
    shared: LinuxShared,
    task: Task,
    spawn: crossbeam_channel::Sender<SpawnRequest>,
    /// An execve replaced the program since [`Self::execed`] last looked.
    execed: bool,
}

/// The process, even if a thread panicked holding it (its state is still consistent
/// enough to report on and stop).
fn lock(p: &Mutex<Process>) -> std::sync::MutexGuard<'_, Process> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl LinuxVcpu {
    /// Whether an execve replaced the program since the last call.
    fn execed(&mut self) -> bool {
        std::mem::take(&mut self.execed)
    }

    /// Service a trap; clones are finished here, blocks (futex waits, sleeps, polls)
    /// are left to [`Self::block`].
    fn trap(&mut self, vcpu: &mut VcpuFd, port: u16) -> Result<TrapAction, VmError> {
        let process = self.shared.process.clone();
        let mut p = lock(&process);
        let action = p.on_trap(&mut self.task, vcpu, port)?;
        self.settle(&mut p, vcpu, action)
    }

    /// A kick out of the guest: deliver the signals it brought
    /// ([`Process::deliver_async`]).
    fn interrupt(&mut self, vcpu: &mut VcpuFd) -> Result<TrapAction, VmError> {
        let process = self.shared.process.clone();
        let mut p = lock(&process);
        let action = p.deliver_async(&mut self.task, vcpu)?;
        self.settle(&mut p, vcpu, action)
    }

    /// Finish a fork or exec ([`TrapAction::ProcessOp`]).
    fn process_op(
        &mut self,
        vcpu: &mut VcpuFd,
        pending: linux::Pending,
        op: linux::ProcessOp,
    ) -> Result<TrapAction, VmError> {
        let process = self.shared.process.clone();
        let mut p = lock(&process);
        let action = p.finish_process_op(&mut self.task, vcpu, pending, op)?;
        self.settle(&mut p, vcpu, action)
    }

    /// What is left of `action` for the run loop: clones and forks started, execs and
    /// ends of processes taken into account.
    fn settle(
        &mut self,
        p: &mut Process,
        vcpu: &mut VcpuFd,
        action: TrapAction,
    ) -> Result<TrapAction, VmError> {
        match action {
            TrapAction::Clone { pending, child } => {
                let tid = child.task.tid;
                let (reply, answer) = crossbeam_channel::bounded(1);
                let shared = self.shared.clone();
                let asked = self
                    .spawn
                    .send(SpawnRequest {
                        child,
                        shared,
                        reply,
                    })
                    .is_ok();
                let started = asked && answer.recv().unwrap_or(false);
                p.finish_clone(vcpu, pending, tid, started)?;
                Ok(TrapAction::Resume)
            }
            TrapAction::Fork { pending, child } => {
                let linux::NewProcess {
                    process,
                    thread,
                    vfork,
                    lent,
                } = *child;
                let pid = process.pid();
                let shared = LinuxShared::new(process);
                let (reply, answer) = crossbeam_channel::bounded(1);
                let request = SpawnRequest {
                    child: Box::new(thread),
                    shared,
                    reply,
                };
                let asked = self.spawn.send(request).is_ok();
                let started = asked && answer.recv().unwrap_or(false);
                if !started {
                    p.forget_child(pid);
                }
                match p.finish_fork(vcpu, pending, pid, vfork, lent, started)? {
                    None => Ok(TrapAction::Resume),
                    Some((pending, block)) => Ok(TrapAction::Block { pending, block }),
                }
            }
            TrapAction::Exec { roots } => {
                self.shared.roots = roots;
                self.execed = true;
                Ok(TrapAction::Resume)
            }
            TrapAction::Exit(code) => {
                p.end(self.task.tid, linux::proc::exited(code));
                Ok(if p.is_initial() {
                    TrapAction::Exit(code)
                } else {
                    TrapAction::ThreadExit
                })
            }
            TrapAction::Killed { signal, reason } => {
                p.end(self.task.tid, linux::proc::killed(signal));
                Ok(if p.is_initial() {
                    TrapAction::Killed { signal, reason }
                } else {
                    TrapAction::ThreadExit
                })
            }
            action => Ok(action),
        }
    }

    /// Wait with the process released (the other threads go on, and wake this one),
    /// then resume the program with the call's result.
    fn block(
        &mut self,
        vcpu: &mut VcpuFd,
        mut pending: linux::Pending,
        mut block: linux::block::Block,
        stop: &AtomicBool,
    ) -> Result<TrapAction, VmError> {
        let process = self.shared.process.clone();
        loop {
            let woken = block.wait(&self.task.waiter, stop);
            let mut p = lock(&process);
            match p.finish_block(&mut self.task, vcpu, pending, block, woken)? {
                // Woken for nothing that ends the call: wait again.
                TrapAction::Block {
                    pending: again,
                    block: b,
                } => (pending, block) = (again, b),
                action => return self.settle(&mut p, vcpu, action),
            }
        }
    }
}

/// A register dump in the style of a kernel oops.
pub fn format_registers(r: &kvm_regs, s: &kvm_sregs) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  rip {:016x}  rsp {:016x}  rflags {:016x}",
        r.rip, r.rsp, r.rflags
    );
    let _ = writeln!(
        o,
        "  rax {:016x}  rbx {:016x}  rcx {:016x}  rdx {:016x}",
        r.rax, r.rbx, r.rcx, r.rdx
    );
    let _ = writeln!(
        o,
        "  rsi {:016x}  rdi {:016x}  rbp {:016x}  r8  {:016x}",
        r.rsi, r.rdi, r.rbp, r.r8
    );
    let _ = writeln!(
        o,
        "  r9  {:016x}  r10 {:016x}  r11 {:016x}  r12 {:016x}",
        r.r9, r.r10, r.r11, r.r12
    );
    let _ = writeln!(
        o,
        "  r13 {:016x}  r14 {:016x}  r15 {:016x}",
        r.r13, r.r14, r.r15
    );
    let _ = writeln!(
        o,
        "  cr0 {:016x}  cr2 {:016x}  cr3 {:016x}  cr4 {:016x}",
        s.cr0, s.cr2, s.cr3, s.cr4
    );
    let _ = writeln!(
        o,
        "  efer {:016x}  cs {:04x} (dpl {} l {})  ss {:04x}",
        s.efer, s.cs.selector, s.cs.dpl, s.cs.l, s.ss.selector
    );
    let _ = write!(
        o,
        "  gdt {:x}/{:x}  idt {:x}/{:x}  tr {:04x}",
        s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit, s.tr.selector
    );
    o
}

impl Outcome {
    /// The process exit status lbrprof uses for this outcome: the guest's own for the
    /// exit port, 0 for power-off, 124 for a timeout, 4 for a crash, 130 when stopped by
    /// the caller (the exit port only produces odd values, so these even codes cannot be
    /// confused with a guest's status).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Exited(c) => *c,
            Outcome::PowerOff => 0,
            Outcome::Stopped => 130,
            Outcome::TimedOut(_) => 124,
            Outcome::Crashed(_) => 4,
            Outcome::Signaled { signal, .. } => 128u8.wrapping_add(*signal as u8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_size_limits() {
        assert!(check_mem_size(256 << 20).is_ok());
        assert!(matches!(
            check_mem_size(1 << 20),
            Err(VmError::MemSize { .. })
        ));
        assert!(matches!(
            check_mem_size(1 << 40),
            Err(VmError::MemSize { .. })
        ));
    }

    #[test]
    fn exit_codes_of_outcomes_never_collide_with_the_exit_port() {
        let crash = Outcome::Crashed(CrashReport {
            vcpu: 0,
            reason: String::new(),
            registers: String::new(),
        });
        let ours = [
            Outcome::PowerOff.exit_code(),
            Outcome::TimedOut(Duration::from_secs(1)).exit_code(),
            crash.exit_code(),
            Outcome::Stopped.exit_code(),
        ];
        assert_eq!(ours, [0, 124, 4, 130]);
        assert!(
            ours.iter().all(|c| c % 2 == 0),
            "the exit port only makes odd codes"
        );
        assert_eq!(Outcome::Exited(7).exit_code(), 7);
    }

    #[test]
    fn register_dump_names_every_register() {
        let r = kvm_regs {
            rip: 0x1234,
            rsp: 0x8000,
            ..Default::default()
        };
        let dump = format_registers(&r, &kvm_sregs::default());
        for name in [
            "rip", "rsp", "rflags", "rax", "r15", "cr0", "cr3", "efer", "gdt", "idt",
        ] {
            assert!(dump.contains(name), "{name} missing from {dump}");
        }
        assert!(dump.contains("0000000000001234"));
    }

    #[test]
    fn apic_ids_go_into_cpuid() {
        let mut e = vec![
            kvm_bindings::kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0012_3456,
                ..Default::default()
            },
            kvm_bindings::kvm_cpuid_entry2 {
                function: 0xb,
                edx: 0,
                ..Default::default()
            },
        ];
        set_apic_id(&mut e, 3);
        assert_eq!(e[0].ebx, 0x0312_3456);
        assert_eq!(e[1].edx, 3);
    }
}
