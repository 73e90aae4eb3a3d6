//! The per-vCPU hook plumbing, end to end on KVM with the `msrprobe` guest: routed MSRs
//! get their values from the hook, #GP reaches the guest, single-step and hardware
//! breakpoint exits arrive at `on_debug`, and an injected NMI is taken by the guest.

use std::io::Write;
use std::sync::{Arc, Mutex};

use lbrprof_vmm::hook::{DebugExit, ExitKind, GpFault, MsrRange, VcpuCtx, VcpuHook};
use lbrprof_vmm::vm::{Outcome, Vm, VmConfig};
use lbrprof_vmm::{GuestVirtAddr, builtin};

/// Skip (with a message) where /dev/kvm is missing, unless CI requires KVM.
fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var_os("LBRPROF_REQUIRE_KVM").is_some() {
                panic!("LBRPROF_REQUIRE_KVM is set but /dev/kvm cannot be opened: {e}");
            }
            eprintln!("skipped: needs /dev/kvm ({e})");
            false
        }
    }
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const VALUE_MSR: u32 = 0x4c42_5200;
const GP_MSR: u32 = 0x4c42_5201;
const STEPS: u32 = 50;

#[derive(Default, Debug)]
struct Seen {
    rdmsr: Vec<u32>,
    wrmsr: Vec<(u32, u64)>,
    exits: u64,
    steps: u32,
    step_pcs: Vec<u64>,
    breakpoint_hits: Vec<u64>,
    cpuid_adjusted: bool,
    started: bool,
    stopped: bool,
}

struct TestHook {
    seen: Arc<Mutex<Seen>>,
    stored: u64,
    nmi_sent: bool,
    breakpoint: Option<u64>,
}

impl VcpuHook for TestHook {
    fn msr_ranges(&self) -> Vec<MsrRange> {
        vec![MsrRange {
            base: VALUE_MSR,
            count: 2,
        }]
    }

    fn adjust_cpuid(&mut self, _vcpu: u32, entries: &mut Vec<kvm_bindings::kvm_cpuid_entry2>) {
        assert!(entries.iter().any(|e| e.function == 1));
        self.seen.lock().unwrap().cpuid_adjusted = true;
    }

    fn on_start(&mut self, ctx: &mut VcpuCtx<'_>) {
        assert_eq!(ctx.index(), 0);
        self.seen.lock().unwrap().started = true;
    }

    fn on_exit(&mut self, ctx: &mut VcpuCtx<'_>, exit: &ExitKind) {
        self.seen.lock().unwrap().exits += 1;
        // Once the guest prints (it is in ring 3 with its IDT loaded), send one NMI.
        if matches!(exit, ExitKind::IoOut { port: 0x3f8, .. }) && !self.nmi_sent {
            self.nmi_sent = true;
            ctx.inject_nmi();
        }
    }

    fn rdmsr(&mut self, ctx: &mut VcpuCtx<'_>, msr: u32) -> Result<u64, GpFault> {
        let mut seen = self.seen.lock().unwrap();
        seen.rdmsr.push(msr);
        if seen.rdmsr.len() == 1 {
            // First read: single-step the next STEPS instructions, and put a breakpoint
            // on this rdmsr so the next read hits it.
            let rip = ctx.regs().unwrap().rip;
            let mut insn = [0u8; 2];
            ctx.read_virt(GuestVirtAddr(rip), &mut insn).unwrap();
            assert_eq!(insn, [0x0f, 0x32], "rip points at rdmsr");
            self.breakpoint = Some(rip);
            ctx.set_single_step(true);
        }
        match msr {
            VALUE_MSR => Ok(self.stored),
            _ => Err(GpFault),
        }
    }

    fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, msr: u32, value: u64) -> Result<(), GpFault> {
        self.seen.lock().unwrap().wrmsr.push((msr, value));
        if msr == VALUE_MSR {
            self.stored = value;
            Ok(())
        } else {
            Err(GpFault)
        }
    }

    fn on_debug(&mut self, ctx: &mut VcpuCtx<'_>, debug: &DebugExit) {
        let mut seen = self.seen.lock().unwrap();
        if debug.is_single_step() && ctx.single_step() {
            seen.steps += 1;
            seen.step_pcs.push(debug.pc);
            if seen.steps == STEPS {
                ctx.set_single_step(false);
                ctx.set_breakpoint(0, self.breakpoint.map(GuestVirtAddr))
                    .unwrap();
            }
        } else if debug.breakpoint() == Some(0) {
            seen.breakpoint_hits.push(debug.pc);
            ctx.set_breakpoint(0, None).unwrap();
        }
    }

    fn on_stop(&mut self, _ctx: &mut VcpuCtx<'_>) {
        self.seen.lock().unwrap().stopped = true;
    }
}

#[test]
fn hook_routes_msrs_debug_exits_and_nmis() {
    if !kvm_available() {
        return;
    }
    let console = Console::default();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let cmdline = format!(
        "rd={VALUE_MSR:#x} wr={VALUE_MSR:#x}:0x1234 rd={VALUE_MSR:#x} rd={GP_MSR:#x} wr={GP_MSR:#x}:1 nmis"
    );
    let (threads_tx, threads_rx) = crossbeam_channel::unbounded();
    let mut config = VmConfig::new(64 << 20, 1);
    config.cmdline = cmdline;
    config.timeout = Some(std::time::Duration::from_secs(60));
    config.serial = Box::new(console.clone());
    config.vcpu_threads = Some(threads_tx);
    let s = seen.clone();
    let hooks = move |_i: u32| -> Box<dyn VcpuHook> {
        Box::new(TestHook {
            seen: s.clone(),
            stored: 7,
            nmi_sent: false,
            breakpoint: None,
        })
    };
    let report = Vm::run(config, builtin::image("msrprobe").unwrap(), &hooks).unwrap();
    let out = String::from_utf8(console.0.lock().unwrap().clone()).unwrap();
    assert!(
        matches!(report.outcome, Outcome::PowerOff),
        "{:?}\n{out}",
        report.outcome
    );
    let expected = format!(
        "rdmsr {VALUE_MSR:#x} = 0x7\nwrmsr {VALUE_MSR:#x} = 0x1234: ok\nrdmsr {VALUE_MSR:#x} = 0x1234\n\
         rdmsr {GP_MSR:#x} = #GP\nwrmsr {GP_MSR:#x} = 0x1: #GP\nnmis=1\n"
    );
    assert_eq!(out, expected);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.rdmsr, vec![VALUE_MSR, VALUE_MSR, GP_MSR]);
    assert_eq!(seen.wrmsr, vec![(VALUE_MSR, 0x1234), (GP_MSR, 1)]);
    assert_eq!(seen.steps, STEPS, "single steps");
    assert!(
        seen.step_pcs.windows(2).any(|w| w[0] != w[1]),
        "stepping advances"
    );
    assert_eq!(
        seen.breakpoint_hits.len(),
        1,
        "the second rdmsr hits the breakpoint"
    );
    assert!(seen.cpuid_adjusted && seen.started && seen.stopped);
    assert!(seen.exits as usize >= STEPS as usize + 5);
    let thread = threads_rx.try_recv().expect("vCPU thread announced");
    assert_eq!((thread.vcpu, thread.pid), (0, std::process::id()));
    assert_ne!(thread.tid, thread.pid, "a thread of its own");
    let stats = &report.vcpus[0];
    assert_eq!(stats.tid, thread.tid);
    assert_eq!(stats.exits.get("msr"), Some(&5), "{:?}", stats.exits);
    assert_eq!(
        stats.exits.get("debug").copied(),
        Some(u64::from(STEPS) + 1)
    );
    assert!(stats.run_ns > 0 && stats.total_exits() == seen.exits);
}

#[test]
fn default_hook_gives_gp_for_nothing_routed() {
    if !kvm_available() {
        return;
    }
    let console = Console::default();
    let mut config = VmConfig::new(16 << 20, 1);
    config.cmdline = "rd=0x10 rd=0x4c425201".into();
    config.timeout = Some(std::time::Duration::from_secs(60));
    config.serial = Box::new(console.clone());
    config.warn = Box::new(|_| {});
    let hooks = |_i: u32| -> Box<dyn VcpuHook> { Box::new(lbrprof_vmm::NoopHook) };
    let report = Vm::run(config, builtin::image("msrprobe").unwrap(), &hooks).unwrap();
    assert!(matches!(report.outcome, Outcome::PowerOff));
    let out = String::from_utf8(console.0.lock().unwrap().clone()).unwrap();
    assert!(out.starts_with("rdmsr 0x10 = 0x"), "TSC readable: {out}");
    assert!(out.contains("rdmsr 0x4c425201 = #GP"), "{out}");
}

struct TimerHook {
    interrupts: Arc<Mutex<u32>>,
    efer: Arc<Mutex<Option<u64>>>,
}

impl VcpuHook for TimerHook {
    fn on_start(&mut self, ctx: &mut VcpuCtx<'_>) {
        ctx.set_exit_timer(Some(std::time::Duration::from_millis(10)));
    }

    fn on_exit(&mut self, ctx: &mut VcpuCtx<'_>, exit: &ExitKind) {
        if *exit == ExitKind::Interrupted {
            let mut n = self.interrupts.lock().unwrap();
            *n += 1;
            *self.efer.lock().unwrap() = Some(ctx.read_msr(0xc000_0080).unwrap());
            if *n < 5 {
                ctx.set_exit_timer(Some(std::time::Duration::from_millis(10)));
            }
        }
    }
}

#[test]
fn exit_timer_interrupts_a_busy_guest_and_msrs_are_readable() {
    if !kvm_available() {
        return;
    }
    let interrupts = Arc::new(Mutex::new(0));
    let efer = Arc::new(Mutex::new(None));
    let console = Console::default();
    let mut config = VmConfig::new(64 << 20, 1);
    config.cmdline = "n=100000".into();
    config.serial = Box::new(console.clone());
    config.timeout = Some(std::time::Duration::from_secs(60));
    let (i, e) = (interrupts.clone(), efer.clone());
    let hooks = move |_: u32| -> Box<dyn VcpuHook> {
        Box::new(TimerHook {
            interrupts: i.clone(),
            efer: e.clone(),
        })
    };
    let report = Vm::run(config, builtin::image("interp").unwrap(), &hooks).unwrap();
    assert!(
        matches!(report.outcome, Outcome::PowerOff),
        "{:?}",
        report.outcome
    );
    let out = String::from_utf8(console.0.lock().unwrap().clone()).unwrap();
    assert!(out.starts_with("interp: n=100000 steps="), "{out}");
    assert_eq!(
        *interrupts.lock().unwrap(),
        5,
        "the timer fired and was re-armed 4 times"
    );
    let efer = efer.lock().unwrap().expect("EFER read");
    assert_eq!(efer & 0x500, 0x500, "long mode active: {efer:#x}");
}

#[test]
fn a_panicking_hook_ends_the_run_with_an_error_not_a_hang() {
    if !kvm_available() {
        return;
    }
    // vCPU 1 of the runtime halts in ring 0 and never exits on its own; vCPU 0's hook
    // panics at its first exit. The run must end with an error, vCPU 1 kicked out.
    struct P0;
    impl VcpuHook for P0 {
        fn on_exit(&mut self, ctx: &mut VcpuCtx<'_>, _exit: &ExitKind) {
            assert_ne!(ctx.index(), 0, "hook bug on vCPU 0");
        }
    }
    let mut config = VmConfig::new(16 << 20, 2);
    config.serial = Box::new(std::io::sink());
    config.timeout = Some(std::time::Duration::from_secs(60));
    let hooks = |_: u32| -> Box<dyn VcpuHook> { Box::new(P0) };
    let started = std::time::Instant::now();
    let err = Vm::run(config, builtin::image("calls").unwrap(), &hooks).unwrap_err();
    assert!(err.to_string().contains("vCPU 0 thread panicked"), "{err}");
    assert!(err.to_string().contains("hook bug on vCPU 0"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn a_stop_handle_ends_a_busy_guest() {
    if !kvm_available() {
        return;
    }
    let mut config = VmConfig::new(16 << 20, 2);
    config.cmdline = "n=100000000".into();
    config.serial = Box::new(std::io::sink());
    let stop = config.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        stop.stop();
    });
    let hooks = |_: u32| -> Box<dyn VcpuHook> { Box::new(lbrprof_vmm::NoopHook) };
    let started = std::time::Instant::now();
    let report = Vm::run(config, builtin::image("interp").unwrap(), &hooks).unwrap();
    stopper.join().unwrap();
    assert!(
        matches!(report.outcome, Outcome::Stopped),
        "{:?}",
        report.outcome
    );
    assert_eq!(report.outcome.exit_code(), 130);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn ring3_guest_debug_probe_gives_an_answer() {
    if !kvm_available() {
        return;
    }
    // The answer depends on the host (no on some nested hosts); it must not error.
    let works = lbrprof_vmm::caps::probe_ring3_guest_debug().unwrap();
    eprintln!("guest debug reaches ring 3 on this host: {works}");
    let caps = lbrprof_vmm::caps::probe();
    assert_eq!(caps.ring3_guest_debug, Some(works));
    assert!(caps.to_string().contains("guest debug reaches ring-3 code"));
}

#[test]
fn emulated_lbr_trial_sees_branches() {
    if !kvm_available() {
        return;
    }
    // `info` says "works" only from this run; on any host whose KVM can run the built-in
    // guests it must see snapshots full of branches.
    let outcome = lbrprof_vmm::pmu::trial::emulated_lbr().unwrap();
    eprintln!("trial: {outcome}");
    assert!(outcome.works(), "{outcome:?}");
    assert!(outcome.snapshots >= 5, "{outcome:?}");
    assert!(outcome.branches >= 5 * 16, "{outcome:?}");
}
