//! The per-vCPU hook: where the virtual PMU (or any other per-vCPU extension) plugs into
//! the vCPU loop. One [`VcpuHook`] object per vCPU, created by the factory given to
//! [`crate::vm::Vm::run`], lives on that vCPU's thread.
//!
//! What a hook can do, in the order the vCPU loop calls it:
//!
//! 1. [`VcpuHook::msr_ranges`]: MSRs it wants to implement. The VM enables
//!    `KVM_CAP_X86_USER_SPACE_MSR` (reason `KVM_MSR_EXIT_REASON_FILTER`) and installs a
//!    `KVM_X86_SET_MSR_FILTER` that denies the union of all vCPUs' ranges, so every guest
//!    `rdmsr`/`wrmsr` of them exits to user space and reaches [`VcpuHook::rdmsr`] /
//!    [`VcpuHook::wrmsr`]. Returning `Err(GpFault)` injects #GP into the guest.
//! 2. [`VcpuHook::adjust_cpuid`]: edit the CPUID table (from `KVM_GET_SUPPORTED_CPUID`,
//!    already given this vCPU's APIC id) before `KVM_SET_CPUID2`; leaves may be added.
//!    Guest kernels only: a Linux program's vCPUs keep the host's CPUID as KVM offers it.
//! 3. [`VcpuHook::on_start`]: once, before the first `KVM_RUN`.
//! 4. [`VcpuHook::on_exit`]: after every exit (the shim has handled device I/O already).
//! 5. [`VcpuHook::on_debug`]: at `KVM_EXIT_DEBUG` (single-step or hardware breakpoint).
//! 6. [`VcpuHook::on_stop`]: once, when the vCPU stops for any reason.
//!
//! Every callback runs on the vCPU's own thread and gets a [`VcpuCtx`]: guest registers
//! and MSRs, guest memory by physical or virtual address (page walk from CR3), and
//! requests applied before the vCPU re-enters the guest: single-stepping, up to four
//! hardware execution breakpoints (`KVM_SET_GUEST_DEBUG`), NMI injection (`KVM_NMI`, how a
//! PMI reaches the guest), a one-shot exit timer, or stopping the VM.
//!
//! Guest-specific facts for hooks: lbrprof's runtime can take NMIs once it runs in ring 3
//! (an NMI injected before its IDT is loaded triple-faults the guest, as on hardware); its
//! console output and exits are ring-3 port I/O (`IoOut` on 0x3f8, 0xf4, 0x604), and its
//! system calls are a `ud2` in `rt_syscall_trap` taken as #UD into ring 0.

use std::time::Duration;

use kvm_bindings::{
    Msrs, kvm_cpuid_entry2, kvm_debug_exit_arch, kvm_msr_entry, kvm_regs, kvm_sregs,
};
use kvm_ioctls::VcpuFd;

use crate::arch::DR6_BS;
use crate::error::VmError;
use crate::memory::{GuestMemory, GuestPhysAddr, GuestVirtAddr, PagingMode};

/// MSRs `base..base + count` are routed to the hook (reads and writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrRange {
    pub base: u32,
    pub count: u32,
}

/// Tells the shim to inject #GP(0) for the guest's MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpFault;

/// A `KVM_EXIT_DEBUG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugExit {
    /// The exception vector (1 = #DB, 3 = #BP).
    pub exception: u32,
    /// Guest RIP of the instruction about to execute.
    pub pc: u64,
    pub dr6: u64,
    pub dr7: u64,
}

impl DebugExit {
    pub(crate) fn from_arch(a: &kvm_debug_exit_arch) -> DebugExit {
        DebugExit {
            exception: a.exception,
            pc: a.pc,
            dr6: a.dr6,
            dr7: a.dr7,
        }
    }

    /// The exit is a completed single step (DR6.BS).
    pub fn is_single_step(&self) -> bool {
        self.dr6 & DR6_BS != 0
    }

    /// The hardware breakpoint slot (0-3) that fired, if any (DR6.B0-B3).
    pub fn breakpoint(&self) -> Option<usize> {
        (0..4).find(|i| self.dr6 & (1 << i) != 0)
    }
}

/// Why the vCPU left the guest, as passed to [`VcpuHook::on_exit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitKind {
    IoIn {
        port: u16,
        len: usize,
    },
    IoOut {
        port: u16,
        len: usize,
    },
    MmioRead {
        addr: u64,
        len: usize,
    },
    MmioWrite {
        addr: u64,
        len: usize,
    },
    Rdmsr {
        msr: u32,
    },
    Wrmsr {
        msr: u32,
        value: u64,
    },
    Debug(DebugExit),
    Hlt,
    /// KVM_RUN returned early (signal / immediate_exit).
    Interrupted,
    /// Triple fault.
    Shutdown,
    InternalError {
        suberror: u32,
    },
    FailEntry {
        reason: u64,
    },
    SystemEvent {
        kind: u32,
    },
    /// Any other exit reason (raw `KVM_EXIT_*`).
    Other(u32),
}

impl ExitKind {
    /// A short name for statistics ("io", "mmio", "msr", "debug", ...).
    pub fn name(&self) -> &'static str {
        match self {
            ExitKind::IoIn { .. } | ExitKind::IoOut { .. } => "io",
            ExitKind::MmioRead { .. } | ExitKind::MmioWrite { .. } => "mmio",
            ExitKind::Rdmsr { .. } | ExitKind::Wrmsr { .. } => "msr",
            ExitKind::Debug(_) => "debug",
            ExitKind::Hlt => "hlt",
            ExitKind::Interrupted => "intr",
            ExitKind::Shutdown => "shutdown",
            ExitKind::InternalError { .. } => "internal_error",
            ExitKind::FailEntry { .. } => "fail_entry",
            ExitKind::SystemEvent { .. } => "system_event",
            ExitKind::Other(_) => "other",
        }
    }
}

/// The per-vCPU extension point. All methods have no-op defaults; see the module doc.
pub trait VcpuHook: Send {
    /// MSRs this hook implements (routed to [`rdmsr`](Self::rdmsr)/[`wrmsr`](Self::wrmsr)).
    fn msr_ranges(&self) -> Vec<MsrRange> {
        Vec::new()
    }
    /// I/O ports this hook handles itself (in [`on_exit`](Self::on_exit)): the VMM's devices
    /// do not see them, so they are neither emulated nor reported as unknown.
    fn io_ports(&self) -> Vec<u16> {
        Vec::new()
    }
    /// Edit this vCPU's CPUID table before it is set (not called for a Linux program's
    /// vCPUs).
    fn adjust_cpuid(&mut self, _vcpu: u32, _entries: &mut Vec<kvm_cpuid_entry2>) {}
    /// Before the first entry into the guest.
    fn on_start(&mut self, _ctx: &mut VcpuCtx<'_>) {}
    /// After every exit.
    fn on_exit(&mut self, _ctx: &mut VcpuCtx<'_>, _exit: &ExitKind) {}
    /// A guest `rdmsr` of a routed MSR: the value, or #GP.
    fn rdmsr(&mut self, _ctx: &mut VcpuCtx<'_>, _msr: u32) -> Result<u64, GpFault> {
        Err(GpFault)
    }
    /// A guest `wrmsr` of a routed MSR: accept, or #GP.
    fn wrmsr(&mut self, _ctx: &mut VcpuCtx<'_>, _msr: u32, _value: u64) -> Result<(), GpFault> {
        Err(GpFault)
    }
    /// A single-step or breakpoint exit.
    fn on_debug(&mut self, _ctx: &mut VcpuCtx<'_>, _debug: &DebugExit) {}
    /// The vCPU's thread is about to block outside the guest for an unknown time (a
    /// Linux program's futex wait, sleep or poll) while other vCPUs run the same code:
    /// take out anything they could trip over (code patches).
    fn on_block(&mut self, _ctx: &mut VcpuCtx<'_>) {}
    /// The vCPU runs another program from now on (a Linux program's execve, or the
    /// thread of another process on a vCPU whose thread ended): what was planned for
    /// the old address space (stops at code addresses) does not apply. Called after
    /// [`on_block`](Self::on_block) took the patches out of the old one.
    fn on_new_program(&mut self, _ctx: &mut VcpuCtx<'_>) {}
    /// The VMM moved the guest between two of its instructions, by no branch of its own
    /// (a Linux program's signal delivered at a kick: the vCPU now stands at the
    /// handler, its registers set): what was planned for where it stood does not apply.
    fn on_moved(&mut self, _ctx: &mut VcpuCtx<'_>) {}
    /// The vCPU stopped (end of run, fault, timeout); last chance to emit data.
    fn on_stop(&mut self, _ctx: &mut VcpuCtx<'_>) {}
    /// Whether this hook needs KVM's in-kernel LAPIC (a hardware vPMU delivers its PMIs
    /// through the LAPIC's LVTPC). A Linux program's VM goes without one when no hook
    /// needs it: the irqchip adds 6-8 ms to setting up guest memory on a nested host,
    /// and the shim injects its own NMIs with KVM_NMI, which works without it. Images
    /// always get one.
    fn needs_in_kernel_lapic(&self) -> bool {
        true
    }
}

/// The hook that does nothing: a plain VM.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopHook;

impl VcpuHook for NoopHook {
    fn needs_in_kernel_lapic(&self) -> bool {
        false
    }
}

/// Requests a hook made during a callback, applied before the next `KVM_RUN`.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    pub single_step: bool,
    pub breakpoints: [Option<GuestVirtAddr>; 4],
    pub debug_dirty: bool,
    pub nmi: bool,
    pub stop: Option<String>,
    /// Some(new setting) when the hook changed the exit timer.
    pub exit_timer: Option<Option<Duration>>,
    /// Facts for the hook, not requests: the VMM's own code in the guest (see
    /// [`VcpuCtx::shim_code`]) ...
    pub shim_code: Option<ShimCode>,
    /// ... and whether the last `Interrupted` exit was a kick that found the vCPU running
    /// guest code (see [`VcpuCtx::interrupted_in_guest`]).
    pub kick_in_guest: bool,
}

/// Guest code the VMM itself placed in the guest (the Linux personality's trap stubs):
/// time or a snapshot there belongs to the code the stub interrupted, which
/// [`ShimCode::interrupted`] finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimCode {
    /// All the stubs. Outside `syscall`, each runs on the CPU's trap frame (RIP, CS, RFLAGS,
    /// RSP, SS at RSP, above an error code for the vectors that push one).
    pub stubs: std::ops::Range<u64>,
    /// The SYSCALL entry stub: RCX holds the caller's return address, RSP is the caller's.
    pub syscall: std::ops::Range<u64>,
}

impl ShimCode {
    pub fn contains(&self, rip: u64) -> bool {
        self.stubs.contains(&rip) || self.syscall.contains(&rip)
    }

    /// Where the code a stub interrupted stands, as (RIP, RSP), for a vCPU at `rip` with
    /// `rsp` and `rcx`; `read` reads a guest u64 at a guest-virtual address. `None` when
    /// `rip` is not in a stub or its frame is unreadable or not a frame of ring-3 code.
    pub fn interrupted(
        &self,
        rip: u64,
        rsp: u64,
        rcx: u64,
        read: &mut dyn FnMut(u64) -> Option<u64>,
    ) -> Option<(u64, u64)> {
        if self.syscall.contains(&rip) {
            return Some((rcx, rsp));
        }
        if !self.stubs.contains(&rip) {
            return None;
        }
        // A user code selector has RPL 3 and is small; an error code below the frame
        // moves the frame up by one word (RIP there is an address, not a selector).
        let user_cs = |cs: u64| cs < 0x1_0000 && cs & 3 == 3;
        [0u64, 8].into_iter().find_map(|skip| {
            let at = rsp.checked_add(skip)?;
            let cs = read(at.checked_add(8)?)?;
            if !user_cs(cs) {
                return None;
            }
            Some((read(at)?, read(at.checked_add(24)?)?))
        })
    }
}

/// A hook's view of its vCPU during a callback.
pub struct VcpuCtx<'a> {
    pub(crate) index: u32,
    pub(crate) vcpu: &'a VcpuFd,
    pub(crate) mem: &'a GuestMemory,
    pub(crate) requests: &'a mut Requests,
}

impl VcpuCtx<'_> {
    /// This vCPU's index (0 = bootstrap processor). Callbacks run on the vCPU's own
    /// thread, so `gettid()` there is the thread a host profiler should watch.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn regs(&self) -> Result<kvm_regs, VmError> {
        self.vcpu.get_regs().map_err(|source| VmError::Kvm {
            op: "KVM_GET_REGS",
            source,
        })
    }

    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), VmError> {
        self.vcpu.set_regs(regs).map_err(|source| VmError::Kvm {
            op: "KVM_SET_REGS",
            source,
        })
    }

    pub fn sregs(&self) -> Result<kvm_sregs, VmError> {
        self.vcpu.get_sregs().map_err(|source| VmError::Kvm {
            op: "KVM_GET_SREGS",
            source,
        })
    }

    /// The vector of an exception KVM holds for the guest, queued or being injected, as
    /// KVM_GET_VCPU_EVENTS reports it. It does not report software exceptions (#BP, #OF):
    /// on hardware that re-executes `int3` they are simply raised again, but a host that
    /// traps `int3` with RIP already past it (PVM) keeps the #BP queued, unreported, with
    /// RIP one byte past the `int3` until the next entry delivers it.
    pub fn queued_exception(&self) -> Option<u8> {
        let ev = self.vcpu.get_vcpu_events().ok()?;
        (ev.exception.injected != 0 || ev.exception.pending != 0).then_some(ev.exception.nr)
    }

    /// Drops the exception KVM holds for the guest, reported or not (the events are read
    /// and written back without it; a #BP that KVM_GET_VCPU_EVENTS leaves out reads as
    /// none and so is written back as none). For a stop the VMM completes itself.
    pub fn drop_queued_exception(&self) -> Result<(), VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        let mut ev = self
            .vcpu
            .get_vcpu_events()
            .map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        ev.exception.injected = 0;
        ev.exception.pending = 0;
        ev.exception.has_error_code = 0;
        ev.exception_has_payload = 0;
        ev.exception_payload = 0;
        self.vcpu
            .set_vcpu_events(&ev)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))
    }

    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VmError> {
        self.vcpu.set_sregs(sregs).map_err(|source| VmError::Kvm {
            op: "KVM_SET_SREGS",
            source,
        })
    }

    /// Guest RAM (guest-physical addressing).
    pub fn memory(&self) -> &GuestMemory {
        self.mem
    }

    /// The vCPU's current paging mode and CR3.
    pub fn paging(&self) -> Result<(PagingMode, u64), VmError> {
        let s = self.sregs()?;
        Ok((PagingMode::from_regs(s.cr0, s.cr4, s.efer), s.cr3))
    }

    /// Translate a guest-virtual address the way the vCPU currently does (its paging
    /// mode and CR3; identity with paging off).
    pub fn translate(&self, addr: GuestVirtAddr) -> Result<GuestPhysAddr, VmError> {
        let (mode, cr3) = self.paging()?;
        self.mem
            .translate_in(mode, cr3, addr)
            .map_err(VmError::Memory)
    }

    /// Read guest memory at a guest-virtual address, translated as the vCPU would.
    pub fn read_virt(&self, addr: GuestVirtAddr, buf: &mut [u8]) -> Result<(), VmError> {
        let (mode, cr3) = self.paging()?;
        self.mem
            .read_virt_in(mode, cr3, addr, buf)
            .map_err(VmError::Memory)
    }

    /// Read a little-endian u64 at a guest-virtual address (current CR3).
    pub fn read_virt_u64(&self, addr: GuestVirtAddr) -> Result<u64, VmError> {
        let mut b = [0u8; 8];
        self.read_virt(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Single-step the guest from the next entry on (a [`DebugExit`] after each
    /// instruction), or stop doing so.
    pub fn set_single_step(&mut self, on: bool) {
        if self.requests.single_step != on {
            self.requests.single_step = on;
            self.requests.debug_dirty = true;
        }
    }

    pub fn single_step(&self) -> bool {
        self.requests.single_step
    }

    /// Turns KVM guest debug (single-step and hardware breakpoints) off at once, not at
    /// the next entry: while KVM single-steps it owns RFLAGS.TF and clears it when the
    /// step is turned off, so a hook that wants to set TF itself (a step through the
    /// guest's own #DB) turns KVM's off first.
    pub fn disable_guest_debug_now(&mut self) -> Result<(), VmError> {
        self.vcpu
            .set_guest_debug(&kvm_bindings::kvm_guest_debug::default())
            .map_err(|source| VmError::Kvm {
                op: "KVM_SET_GUEST_DEBUG",
                source,
            })?;
        self.requests.single_step = false;
        self.requests.breakpoints = [None; 4];
        self.requests.debug_dirty = false;
        Ok(())
    }

    /// Set (Some) or clear (None) hardware execution breakpoint `slot` (0-3).
    pub fn set_breakpoint(
        &mut self,
        slot: usize,
        addr: Option<GuestVirtAddr>,
    ) -> Result<(), VmError> {
        let b = self
            .requests
            .breakpoints
            .get_mut(slot)
            .ok_or(VmError::BreakpointSlot { slot })?;
        if *b != addr {
            *b = addr;
            self.requests.debug_dirty = true;
        }
        Ok(())
    }

    /// Set the hardware execution breakpoints to exactly `addrs` (at most four, slots in
    /// order; the other slots are cleared).
    pub fn set_breakpoints(&mut self, addrs: &[GuestVirtAddr]) -> Result<(), VmError> {
        if addrs.len() > 4 {
            return Err(VmError::BreakpointSlot {
                slot: addrs.len() - 1,
            });
        }
        for slot in 0..4 {
            self.set_breakpoint(slot, addrs.get(slot).copied())?;
        }
        Ok(())
    }

    /// The VMM's own code in this vCPU's guest, if it placed any (see [`ShimCode`]).
    pub fn shim_code(&self) -> Option<&ShimCode> {
        self.requests.shim_code.as_ref()
    }

    /// In [`VcpuHook::on_exit`] for an [`ExitKind::Interrupted`] exit: a kick (the exit
    /// timer, a stop) arrived while the vCPU ran guest code, so the guest stands where
    /// an asynchronous event found it; false when the kick arrived while the vCPU thread
    /// was outside `KVM_RUN` (serving an exit), which leaves the guest where its last
    /// exit did.
    pub fn interrupted_in_guest(&self) -> bool {
        self.requests.kick_in_guest
    }

    /// Read a guest MSR as KVM holds it (KVM_GET_MSRS), e.g. IA32_LSTAR.
    pub fn read_msr(&self, index: u32) -> Result<u64, VmError> {
        let op = "KVM_GET_MSRS";
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| VmError::Kvm {
            op,
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let n = self
            .vcpu
            .get_msrs(&mut msrs)
            .map_err(|source| VmError::Kvm { op, source })?;
        match msrs.as_slice().first() {
            Some(e) if n == 1 => Ok(e.data),
            _ => Err(VmError::Kvm {
                op,
                source: kvm_ioctls::Error::new(libc::EINVAL),
            }),
        }
    }

    /// Force an exit ([`ExitKind::Interrupted`]) after `after` of host time, e.g. to end
    /// a free-running stretch in sampled mode; `None` disarms. One timer per vCPU.
    pub fn set_exit_timer(&mut self, after: Option<Duration>) {
        self.requests.exit_timer = Some(after);
    }

    /// Inject an NMI before the next entry (KVM_NMI: through the in-kernel LAPIC where
    /// the VM has one, else straight into the vCPU).
    pub fn inject_nmi(&mut self) {
        self.requests.nmi = true;
    }

    /// Stop the whole VM; the run ends as a crash with this reason.
    pub fn request_stop(&mut self, reason: impl Into<String>) {
        self.requests.stop = Some(reason.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim() -> ShimCode {
        ShimCode {
            stubs: 0x4000..0x5000,
            syscall: 0x5000..0x5010,
        }
    }

    /// Guest memory of u64 words from `base`.
    fn words(base: u64, w: &[u64]) -> impl FnMut(u64) -> Option<u64> + '_ {
        move |a| {
            let i = a.checked_sub(base)? / 8;
            (a % 8 == 0).then_some(())?;
            w.get(i as usize).copied()
        }
    }

    #[test]
    fn the_interrupted_code_of_each_stub() {
        let s = shim();
        let frame = [0x40_1000, 0x33, 0x202, 0x7fff_0000, 0x2b];
        // SYSCALL: RCX and the caller's RSP, no memory read.
        assert_eq!(
            s.interrupted(0x5002, 0x7ff0, 0x40_2000, &mut |_| None),
            Some((0x40_2000, 0x7ff0))
        );
        // An exception without an error code: the frame at RSP.
        assert_eq!(
            s.interrupted(0x4012, 0x9000, 0, &mut words(0x9000, &frame)),
            Some((0x40_1000, 0x7fff_0000))
        );
        // With an error code (#PF), the frame is one word up.
        let with_code = [0x6, 0x40_1000, 0x33, 0x202, 0x7fff_0000, 0x2b];
        assert_eq!(
            s.interrupted(0x40e2, 0x9000, 0, &mut words(0x9000, &with_code)),
            Some((0x40_1000, 0x7fff_0000))
        );
        // No frame of ring-3 code, an unreadable stack, or not a stub: nothing.
        let kernel = [0x40_1000, 0x8, 0x202, 0x7fff_0000, 0x10];
        assert_eq!(
            s.interrupted(0x4012, 0x9000, 0, &mut words(0x9000, &kernel)),
            None
        );
        assert_eq!(s.interrupted(0x4012, 0x9000, 0, &mut |_| None), None);
        assert_eq!(s.interrupted(0x6000, 0x9000, 7, &mut |_| Some(0x33)), None);
        assert!(s.contains(0x4000) && s.contains(0x500f) && !s.contains(0x5010));
    }
}
