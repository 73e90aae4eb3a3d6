//! Ring 3: the workload's side of the runtime — system calls, console output, arguments,
//! time, and the panic handler.

use core::arch::asm;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::abi::{self, BootInfo};
use crate::handoff::{self, COM1, EXIT_PORT, POWEROFF_PORT, POWEROFF_VALUE};

/// Raw system call: a call to the kernel's trap stub (see `abi`).
#[inline(always)]
fn syscall3(nr: u64, a0: u64, a1: u64, a2: u64) -> (u64, u64) {
    let ret: u64;
    let rdx: u64;
    // SAFETY: the trap stub raises #UD, which the kernel turns into the system call; it
    // preserves every register except RAX and RDX (results) and reads memory only
    // through the ranges passed in. The call pushes a return address (no `nostack`).
    unsafe {
        asm!("call {trap}", trap = sym crate::handoff::rt_syscall_trap,
             inlateout("rax") nr => ret, in("rdi") a0, in("rsi") a1, inlateout("rdx") a2 => rdx);
    }
    (ret, rdx)
}

/// Held while a vCPU writes to the console, so `rt.smp` workers' lines do not mix.
static CONSOLE_LOCK: AtomicBool = AtomicBool::new(false);

/// Write bytes to the console: straight to the UART from ring 3 (the TSS I/O bitmap
/// allows it), one VM exit per call.
pub fn write(bytes: &[u8]) {
    while CONSOLE_LOCK.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    // SAFETY: rep outsb reads exactly bytes.len() bytes from a valid slice.
    unsafe {
        asm!("rep outsb", in("dx") COM1, inout("rsi") bytes.as_ptr() => _,
             inout("rcx") bytes.len() => _, options(nostack, readonly, preserves_flags));
    }
    CONSOLE_LOCK.store(false, Ordering::Release);
}

/// Stop the machine with `code` (0 = clean power-off, others through isa-debug-exit,
/// which makes lbrprof exit with `(code << 1) | 1`).
pub fn exit(code: u32) -> ! {
    // SAFETY: port writes the shim turns into the end of the run.
    unsafe {
        if code == 0 {
            asm!("out dx, ax", in("dx") POWEROFF_PORT, in("ax") POWEROFF_VALUE, options(nomem, nostack));
        } else {
            asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") code, options(nomem, nostack));
        }
    }
    // Not reached: fall back to the system call, then spin.
    syscall3(abi::SYS_EXIT, u64::from(code), 0, 0);
    unreachable_loop()
}

fn unreachable_loop() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Nanoseconds of TSC time, computed in ring 3 (no system call: those cost ~100 µs on
/// nested hosts); 0 when the TSC frequency is unknown. `SYS_TIME_NS` gives the same.
pub fn time_ns() -> u64 {
    let info = handoff::boot_info();
    match info.map_or(0, |i| i.tsc_khz) {
        0 => 0,
        khz => (u128::from(tsc()) * 1_000_000 / u128::from(khz)) as u64,
    }
}

/// The time-stamp counter, read directly in ring 3.
#[inline(always)]
pub fn tsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the counter; CR4.TSD is clear so ring 3 may use it.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Read an MSR through the kernel; `None` when it raised #GP.
pub fn rdmsr(msr: u32) -> Option<u64> {
    let (v, faulted) = syscall3(abi::SYS_RDMSR, u64::from(msr), 0, 0);
    (faulted == 0).then_some(v)
}

/// Write an MSR through the kernel; `false` when it raised #GP.
pub fn wrmsr(msr: u32, value: u64) -> bool {
    syscall3(abi::SYS_WRMSR, u64::from(msr), value, 0).0 == 0
}

/// CPUID `(eax, ebx, ecx, edx)` for `leaf`/`subleaf` as ring 0 sees it.
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let (a, d) = syscall3(abi::SYS_CPUID, u64::from(leaf), u64::from(subleaf), 0);
    (a as u32, (a >> 32) as u32, d as u32, (d >> 32) as u32)
}

/// NMIs taken by the kernel so far.
pub fn nmi_count() -> u64 {
    syscall3(abi::SYS_NMI_COUNT, 0, 0, 0).0
}

/// A line-buffered console writer: one system call per line (or per 256 bytes).
pub struct Console {
    buf: [u8; 256],
    len: usize,
}

impl Console {
    pub const fn new() -> Self {
        Console {
            buf: [0; 256],
            len: 0,
        }
    }
    pub fn flush(&mut self) {
        if self.len > 0 {
            write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut c = Console::new();
    let _ = c.write_fmt(args);
}

/// `print!` for guests.
#[macro_export]
macro_rules! print {
    ($($t:tt)*) => { $crate::user::print_fmt(format_args!($($t)*)) };
}

/// `println!` for guests.
#[macro_export]
macro_rules! println {
    () => { $crate::user::write(b"\n") };
    ($($t:tt)*) => { $crate::user::print_fmt(format_args!("{}\n", format_args!($($t)*))) };
}

/// The guest command line (`lbrprof run --vm IMAGE -- key=value ...`) and boot facts.
pub struct Args {
    cmdline: &'static str,
    ncpus: u32,
    tsc_khz: u64,
    cpu: u32,
}

impl Args {
    fn from_boot(info: Option<&'static BootInfo>, cpu: u32) -> Args {
        let Some(info) = info else {
            return Args {
                cmdline: "",
                ncpus: 1,
                tsc_khz: 0,
                cpu,
            };
        };
        // SAFETY: the shim placed cmdline_len bytes at cmdline_addr inside guest RAM,
        // identity-mapped and never written again.
        let bytes = unsafe {
            core::slice::from_raw_parts(info.cmdline_addr as *const u8, info.cmdline_len as usize)
        };
        Args {
            cmdline: core::str::from_utf8(bytes).unwrap_or(""),
            ncpus: info.ncpus,
            tsc_khz: info.tsc_khz,
            cpu,
        }
    }

    /// The vCPU running this copy of the workload (0 unless `rt.smp`).
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// vCPUs running the workload at once: those that came up under `rt.smp`, else 1.
    pub fn workers(&self) -> u32 {
        if self.flag("rt.smp") {
            self.ncpus.clamp(1, crate::MAX_CPUS as u32)
        } else {
            1
        }
    }

    /// The whole command line.
    pub fn cmdline(&self) -> &'static str {
        self.cmdline
    }

    /// Words of the command line.
    pub fn words(&self) -> impl Iterator<Item = &'static str> {
        self.cmdline.split_ascii_whitespace()
    }

    /// The value of the last `key=value` word for `key`.
    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.words()
            .filter_map(|w| w.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .last()
    }

    /// `key=N` (decimal or 0x hex), or `default` when absent or malformed.
    pub fn u64(&self, key: &str, default: u64) -> u64 {
        self.get(key).and_then(parse_u64).unwrap_or(default)
    }

    /// Whether the bare word `flag` is present.
    pub fn flag(&self, flag: &str) -> bool {
        self.words().any(|w| w == flag)
    }

    /// vCPUs the shim started.
    pub fn ncpus(&self) -> u32 {
        self.ncpus
    }

    /// TSC frequency in kHz (0 = unknown).
    pub fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    /// Convert a TSC delta to nanoseconds (0 when the frequency is unknown).
    pub fn tsc_to_ns(&self, ticks: u64) -> u64 {
        if self.tsc_khz == 0 {
            0
        } else {
            (u128::from(ticks) * 1_000_000 / u128::from(self.tsc_khz)) as u64
        }
    }
}

/// Parse a decimal or `0x` hexadecimal number.
pub fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

unsafe extern "Rust" {
    /// Defined by each workload binary through [`crate::workload!`].
    fn lbrprof_workload_main(args: &Args) -> i32;
}

/// `rt.smp` workers (vCPUs 1..) that finished, their exit codes, and their agents'
/// (written, dropped) counts.
static SMP_DONE: AtomicU32 = AtomicU32::new(0);
static SMP_CODES: [AtomicU32; crate::MAX_CPUS] = [const { AtomicU32::new(0) }; crate::MAX_CPUS];
static SMP_AGENT: [[AtomicU64; 2]; crate::MAX_CPUS] =
    [const { [AtomicU64::new(0), AtomicU64::new(0)] }; crate::MAX_CPUS];

fn boot_args(boot: u64, cpu: u32) -> Args {
    let info = handoff::boot_info_at(boot);
    Args::from_boot(info, cpu)
}

/// Starts the LBR agent on this vCPU when `rt.agent=PERIOD` asks for it; the period.
fn agent_start(args: &Args) -> Option<u64> {
    let period = args.get("rt.agent").and_then(parse_u64)?;
    let (r, _) = syscall3(abi::SYS_AGENT_START, period, 0, 0);
    if r != 0 {
        println!(
            "lbrprof-guest: rt.agent: no PMU/LBR to sample on vCPU {} (or period 0)",
            args.cpu()
        );
        exit(2);
    }
    Some(period)
}

/// Stops this vCPU's agent: (snapshots written, dropped).
fn agent_stop() -> (u64, u64) {
    syscall3(abi::SYS_AGENT_STOP, 0, 0, 0)
}

/// Waits (bounded, ~2 s at 2 GHz worth of TSC) for the other vCPUs to check in; how many
/// are online then.
fn wait_online(expected: u32) -> u32 {
    let start = tsc();
    while handoff::CPUS_ONLINE.load(Ordering::Acquire) < expected
        && tsc().wrapping_sub(start) < 4_000_000_000
    {
        core::hint::spin_loop();
    }
    handoff::CPUS_ONLINE.load(Ordering::Acquire)
}

/// First ring-3 code of an `rt.smp` worker (vCPUs 1..): the workload, under the agent if
/// asked, then park.
pub(crate) extern "C" fn rt_user_entry_ap(cpu: u64, boot: u64) -> ! {
    let cpu = (cpu as usize).min(crate::MAX_CPUS - 1);
    let args = boot_args(boot, cpu as u32);
    let agent = agent_start(&args);
    // SAFETY: every workload binary defines this symbol with this signature (workload!).
    let code = unsafe { lbrprof_workload_main(&args) };
    if agent.is_some() {
        let (written, dropped) = agent_stop();
        SMP_AGENT[cpu][0].store(written, Ordering::Relaxed);
        SMP_AGENT[cpu][1].store(dropped, Ordering::Relaxed);
    }
    SMP_CODES[cpu].store(code as u32, Ordering::Relaxed);
    SMP_DONE.fetch_add(1, Ordering::Release);
    syscall3(abi::SYS_PARK, 0, 0, 0);
    unreachable_loop()
}

/// First ring-3 code on vCPU 0.
pub(crate) extern "C" fn rt_user_entry(_cpu: u64, boot: u64) -> ! {
    let args = boot_args(boot, 0);
    let smp = args.flag("rt.smp");
    let expected = args.ncpus().min(crate::MAX_CPUS as u32);
    let online = if args.flag("rt.cpus") || smp {
        wait_online(expected)
    } else {
        1
    };
    if args.flag("rt.cpus") {
        println!(
            "lbrprof-guest: {online} of {} vCPUs online{}",
            args.ncpus(),
            if args.ncpus() > expected {
                " (the runtime sets up at most 8)"
            } else {
                ""
            }
        );
    }
    if args.flag("rt.stats") {
        // The cost of ring 0 here: the boot (entry to first ring-3 instruction) and a
        // system-call round trip (trap into ring 0 and back).
        let boot = tsc().wrapping_sub(handoff::BOOT_TSC.load(Ordering::Relaxed));
        const CALLS: u64 = 100;
        let t0 = tsc();
        for _ in 0..CALLS {
            nmi_count();
        }
        let per_call = tsc().wrapping_sub(t0) / CALLS;
        println!(
            "lbrprof-guest: ring-0 boot {} ns, system call {} ns",
            args.tsc_to_ns(boot),
            args.tsc_to_ns(per_call)
        );
    }
    let agent = agent_start(&args);
    // SAFETY: every workload binary defines this symbol with this signature (workload!).
    let mut code = unsafe { lbrprof_workload_main(&args) } as u32;
    let own = if agent.is_some() {
        agent_stop()
    } else {
        (0, 0)
    };
    let workers = if smp { online.max(1) - 1 } else { 0 };
    if workers > 0 {
        while SMP_DONE.load(Ordering::Acquire) < workers {
            core::hint::spin_loop();
        }
        if code == 0 {
            code = (1..=workers as usize)
                .map(|c| SMP_CODES[c].load(Ordering::Relaxed))
                .find(|&c| c != 0)
                .unwrap_or(0);
        }
    }
    if agent.is_some() {
        let counts = |c: usize| {
            if c == 0 {
                own
            } else {
                (
                    SMP_AGENT[c][0].load(Ordering::Relaxed),
                    SMP_AGENT[c][1].load(Ordering::Relaxed),
                )
            }
        };
        let cpus = 0..=workers as usize;
        let (written, dropped) = cpus
            .clone()
            .map(counts)
            .fold((0, 0), |(w, d), (a, b)| (w + a, d + b));
        println!("lbrprof-guest: agent: {written} snapshots, {dropped} dropped");
        if workers > 0 {
            for c in cpus {
                let (w, d) = counts(c);
                println!("lbrprof-guest: agent on vCPU {c}: {w} snapshots, {d} dropped");
            }
        }
    }
    let code = args
        .get("exit")
        .and_then(parse_u64)
        .map_or(code, |c| c as u32);
    exit(code)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut c = Console::new();
    let _ = writeln!(c, "lbrprof-guest: panic: {info}");
    c.flush();
    exit(0x7f)
}
