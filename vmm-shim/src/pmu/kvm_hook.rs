//! The emulated PMU/LBR as the VMM's per-vCPU hook ([`VcpuHook`]).
//!
//! A translation layer: KVM state in (registers, guest memory through the guest page
//! tables, guest MSRs) as a [`GuestAccess`], each [`Resume`] out as a way to stop the guest
//! again. All policy lives in [`EmulatedVcpu`]; see its docs for the call order.
//!
//! ## Two ways to stop the guest
//! * **KVM guest debug** (KVM_SET_GUEST_DEBUG single-step and hardware breakpoints), used
//!   until the guest has an IDT.
//! * **Traps through the guest's own IDT**, used from then on. The shim rewrites the first
//!   bytes of the guest's #DB (vector 1) and #BP (vector 3) handlers to
//!   `out TRAP_PORT, al; iretq`: a breakpoint is an `int3` written over the first byte of
//!   the instruction (the original is shown to the tracer and put back when the breakpoint
//!   goes), a single-step is RFLAGS.TF in the trap frame. Each trap reaches the shim as an
//!   I/O exit at the handler; the shim reads the interrupted context from the trap frame,
//!   lets the tracer decide, edits the frame (RIP, TF) and lets the handler's `iretq` return.
//!
//! The second way exists because under nested virtualization KVM's own #DB/#BP intercepts
//! may never fire for guest code that runs natively (ring 3 here: single-steps and
//! breakpoints are silently lost), while exceptions delivered to the guest always work.
//! It also costs the same: one exit per stop. Its price: the guest's own #DB/#BP handlers
//! are replaced for the run (restored at the end), and `TRAP_PORT` (0x80, the legacy POST
//! port) is taken.
//!
//! The tracer's interpreter may run the guest inside a callback: the hook offers it the
//! register file only at clean stops (an interrupted KVM_RUN, a trap, a KVM debug exit,
//! before the first entry), never at an I/O or MSR exit whose instruction KVM completes on
//! the next entry, and writes what the interpreter leaves back with KVM_SET_REGS (at a
//! trap: the general-purpose registers, and RIP/RSP/RFLAGS into the trap frame).
//!
//! Sampled mode needs the vCPU to leave KVM_RUN when the next sample is due even if the
//! guest makes no exits of its own: the hook arms the vCPU's exit timer
//! ([`VcpuCtx::set_exit_timer`]) for the free-run deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvm_bindings::{Msrs, kvm_cpuid_entry2, kvm_msr_entry, kvm_regs, kvm_sregs};

use super::agent::{AgentRingError, AgentRingReader, DrainClock};
use super::backend::{self, HostLbrFacts};
use super::branch::CodeSize;
use super::cpuid::{self, CpuidEntry};
use super::emulated::{EmulatedConfig, EmulatedVcpu, ExitPoint, SnapshotSink};
use super::guest::{GuestAccess, GuestAccessError, GuestCpu, InterpState};
use super::msr::{IA32_PERF_GLOBAL_STATUS_RESET, IA32_TSC};
use super::throttle::ThrottleStats;
use super::tracer::{MAX_BREAKPOINTS, Resume, TraceError, TracerStats, walk_frame_pointers};
use super::vpmu::PmuStats;
use crate::arch::RFLAGS_TF;
use crate::caps::KvmCaps;
use crate::hook::{DebugExit, ExitKind, GpFault, MsrRange, VcpuCtx, VcpuHook};
use crate::int3::INT3_ORIGINALS;
use crate::memory::{GuestMemory, GuestPhysAddr, GuestVirtAddr};
use crate::snapshot::LbrSnapshot;
use crate::vm::monotonic_ns;

/// The I/O port the patched #DB/#BP handlers write to.
pub const TRAP_PORT: u8 = 0x80;
/// `out TRAP_PORT, al; iretq`.
const HANDLER_PATCH: [u8; 4] = [0xE6, TRAP_PORT, 0x48, 0xCF];
const INT3: u8 = 0xCC;
const VECTOR_DB: u8 = 1;
const VECTOR_BP: u8 = 3;
/// Frames of guest stack walked for an agent snapshot.
const AGENT_STACK_FRAMES: usize = 64;
/// Single-steps towards a breakpoint address (several vCPUs) after which the guest is
/// taken to have gone another way (a signal handler that resumed elsewhere) or to sit in
/// a long `rep` string instruction (a step per iteration), and runs on unstepped until its
/// next exit. A planned stop is at most one block (≤ 512 instructions) and one predicted
/// branch away.
const MAX_STEPS_TO_BREAKPOINT: u32 = 1024;
/// How long a vCPU that joins an address space waits, before it runs there, for the
/// `int3` breakpoints the space's other vCPUs placed while they ran alone in it to be
/// taken out (each goes at that vCPU's next stop; a vCPU blocked in a system call has
/// none).
const JOIN_WAIT: Duration = Duration::from_millis(500);

/// Which address space each vCPU of a VM runs in, and whether it has `int3`s placed
/// there: vCPUs in one address space (a Linux program's threads) share its code, so
/// while there are two none of them may patch it. Processes (fork, exec) have address
/// spaces of their own, with code pages of their own, and keep their `int3`s.
///
/// One per VM, shared by its hooks ([`EmulatedPmuHook::with_spaces`]); a vCPU enters
/// the map before it first runs, and moves at each stop to the space it stands in.
#[derive(Clone, Debug, Default)]
pub struct VcpuSpaces(Arc<Mutex<HashMap<u32, SpaceUse>>>);

/// One vCPU in [`VcpuSpaces`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SpaceUse {
    /// The address space (see [`address_space`]).
    space: u64,
    /// The vCPU has `int3`s placed in it.
    patched: bool,
}

impl VcpuSpaces {
    fn lock(&self) -> MutexGuard<'_, HashMap<u32, SpaceUse>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a vCPU other than `vcpu` runs in `space` (`patched_only`: one with `int3`s).
fn space_shared(
    spaces: &HashMap<u32, SpaceUse>,
    vcpu: u32,
    space: u64,
    patched_only: bool,
) -> bool {
    spaces
        .iter()
        .any(|(&v, u)| v != vcpu && u.space == space && (u.patched || !patched_only))
}

/// The address space of page-table root `cr3`: the physical address of the table that
/// the first present PML4 entry points to. The two roots of one space (the Linux
/// personality gives each space twin PML4s) share those tables; another process has
/// its own. Falls back to the root itself.
fn address_space(mem: &GuestMemory, cr3: u64) -> u64 {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let root = cr3 & ADDR;
    let mut pml4 = [0u8; 256 * 8];
    if mem.read(GuestPhysAddr(root), &mut pml4).is_err() {
        return root;
    }
    pml4.chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap_or_default()))
        .find(|e| e & 1 != 0)
        .map_or(root, |e| e & ADDR)
}

/// The backend decision's facts: the host CPU (CPUID, perf's LBR count) and what KVM offers.
pub fn host_facts(caps: &KvmCaps) -> HostLbrFacts {
    let mut f = backend::probe_host();
    f.kvm = caps.open_error.is_none();
    f.kvm_enable_pmu = caps.enable_pmu;
    f.kvm_user_space_msr = caps.user_space_msr;
    f.kvm_msr_filter = caps.msr_filter;
    f.kvm_guest_debug = caps.guest_debug;
    f
}

/// How often the hardware backend's hook drains the guest agent's ring: with passthrough
/// LBR MSRs the agent's acks never exit, so a timer makes the vCPU leave KVM_RUN. At the
/// agent's ring size (`abi::AGENT_RING_SLOTS`) this keeps up with 3,200 snapshots/s per vCPU.
pub const AGENT_DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// The guest agent's ring of one vCPU, as that vCPU's hook drains it (both backends):
/// each record becomes a snapshot with the vCPU's CR3 and the guest stack walked from the
/// record's frame pointer, sent down the snapshot channel.
#[derive(Debug)]
struct AgentDrain {
    reader: AgentRingReader,
    /// The guest TSC frequency (KVM_GET_TSC_KHZ), 0 until known.
    tsc_khz: u64,
}

impl AgentDrain {
    fn new() -> AgentDrain {
        AgentDrain {
            reader: AgentRingReader::new(0),
            tsc_khz: 0,
        }
    }

    /// At the vCPU's start: whose ring, and its TSC rate.
    fn start(&mut self, ctx: &VcpuCtx<'_>) {
        self.reader = AgentRingReader::new(ctx.index());
        self.tsc_khz = ctx.vcpu.get_tsc_khz().map_or(0, u64::from);
    }

    /// The clock a drain dates records with: now, and the vCPU's TSC now.
    fn clock(&self, ctx: &VcpuCtx<'_>) -> DrainClock {
        DrainClock {
            now_ns: monotonic_ns(),
            guest_tsc: ctx.read_msr(IA32_TSC).ok(),
            tsc_khz: self.tsc_khz,
        }
    }

    /// Drains the ring in `mem`; `walk` walks the guest stack from a frame pointer.
    fn drain(
        &mut self,
        mem: &GuestMemory,
        clock: &DrainClock,
        cr3: u64,
        walk: &mut dyn FnMut(u64) -> Vec<u64>,
        send: &mut dyn FnMut(LbrSnapshot),
    ) -> Result<(), AgentRingError> {
        let d = self.reader.drain(mem, clock)?;
        for mut snap in d.snapshots {
            snap.cr3 = cr3;
            snap.guest_stack = walk(snap.guest_fp);
            send(snap);
        }
        Ok(())
    }

    /// What the ring gave and lost over the run.
    fn counts(&self) -> (u64, u64) {
        (self.reader.snapshots(), self.reader.lost())
    }
}

/// The hardware backend: KVM passes the host's LBR MSRs through; the shim makes sure
/// CPUID never promises an LBR the host does not have, and (with a snapshot sink) drains
/// the guest agent's ring, the only snapshot source there: every
/// [`AGENT_DRAIN_INTERVAL`], at any other exit once that much time has passed, and when the
/// vCPU stops.
#[derive(Debug)]
pub struct HardwarePmuHook {
    pub host_has_lbr: bool,
    sink: Option<SnapshotSink>,
    stats: Option<LbrStatsSink>,
    agent: AgentDrain,
    /// Host time of the next drain.
    due_ns: u64,
    failed: bool,
}

impl HardwarePmuHook {
    pub fn new(host_has_lbr: bool) -> HardwarePmuHook {
        HardwarePmuHook {
            host_has_lbr,
            sink: None,
            stats: None,
            agent: AgentDrain::new(),
            due_ns: 0,
            failed: false,
        }
    }

    /// Drain the guest agent's ring into `sink`.
    pub fn with_agent(mut self, sink: SnapshotSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Also report this vCPU's agent counts into `sink` when it stops.
    pub fn with_stats(mut self, sink: LbrStatsSink) -> Self {
        self.stats = Some(sink);
        self
    }

    /// Whether an exit at `now_ns` drains (and re-arms the timer): when the timer fired,
    /// or the interval has passed anyway.
    fn drain_due(&mut self, now_ns: u64, timer_fired: bool) -> bool {
        if !timer_fired && now_ns < self.due_ns {
            return false;
        }
        self.due_ns = now_ns.saturating_add(AGENT_DRAIN_INTERVAL.as_nanos() as u64);
        true
    }

    /// One drain of the ring in `mem` (the hook's work, apart from KVM).
    fn drain_from(
        &mut self,
        mem: &GuestMemory,
        clock: &DrainClock,
        cr3: u64,
        walk: &mut dyn FnMut(u64) -> Vec<u64>,
    ) -> Result<(), AgentRingError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        self.agent
            .drain(mem, clock, cr3, walk, &mut |s| sink.send(s))
    }

    fn drain_ctx(&mut self, ctx: &mut VcpuCtx<'_>) {
        if self.sink.is_none() || self.failed {
            return;
        }
        let clock = self.agent.clock(ctx);
        let cr3 = ctx.sregs().map_or(0, |s| s.cr3);
        let traps = IdtTraps::default();
        let r = {
            let mut g = CtxGuest::new(ctx, &traps, None, None);
            let mut walk = |fp| walk_frame_pointers(&mut g, fp, AGENT_STACK_FRAMES);
            let mem = ctx.memory();
            self.drain_from(mem, &clock, cr3, &mut walk)
        };
        if let Err(e) = r {
            self.failed = true;
            ctx.request_stop(format!("LBR agent: {e}"));
        }
    }
}

impl VcpuHook for HardwarePmuHook {
    fn adjust_cpuid(&mut self, _vcpu: u32, entries: &mut Vec<kvm_cpuid_entry2>) {
        let mut plain: Vec<CpuidEntry> = entries.iter().map(to_plain).collect();
        cpuid::shape_for_hardware(&mut plain, self.host_has_lbr);
        for (e, p) in entries.iter_mut().zip(plain) {
            e.ecx = p.ecx;
            e.edx = p.edx;
        }
    }

    fn on_start(&mut self, ctx: &mut VcpuCtx<'_>) {
        if self.sink.is_none() {
            return;
        }
        self.agent.start(ctx);
        self.drain_due(monotonic_ns(), true);
        ctx.set_exit_timer(Some(AGENT_DRAIN_INTERVAL));
    }

    fn on_exit(&mut self, ctx: &mut VcpuCtx<'_>, exit: &ExitKind) {
        if self.sink.is_none()
            || !self.drain_due(monotonic_ns(), matches!(exit, ExitKind::Interrupted))
        {
            return;
        }
        self.drain_ctx(ctx);
        ctx.set_exit_timer(Some(AGENT_DRAIN_INTERVAL));
    }

    fn on_stop(&mut self, ctx: &mut VcpuCtx<'_>) {
        self.drain_ctx(ctx);
        if let Some(sink) = &self.stats {
            let (agent_snapshots, agent_lost) = self.agent.counts();
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(LbrRunStats {
                    vcpu: ctx.index(),
                    tracer: TracerStats::default(),
                    pmu: PmuStats::default(),
                    snapshots: agent_snapshots,
                    stepping_stops: 0,
                    shared_int3_stops: 0,
                    stops_in_flight: 0,
                    throttle: ThrottleStats::default(),
                    agent_snapshots,
                    agent_lost,
                });
        }
    }
}

/// What one vCPU's emulated LBR did, reported when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbrRunStats {
    pub vcpu: u32,
    pub tracer: TracerStats,
    pub pmu: PmuStats,
    pub snapshots: u64,
    /// Extra stops: single-steps towards breakpoints (several vCPUs, IDT traps).
    pub stepping_stops: u64,
    /// Stops that placed `int3`s while other vCPUs could run the code (0 unless KVM's
    /// single-step could not be turned off for one).
    pub shared_int3_stops: u64,
    /// Trap stops a kick caught before their exception reached the guest, completed by
    /// the shim (see `EmulatedPmuHook::stop_in_flight`).
    pub stops_in_flight: u64,
    /// The overhead budget of shim-driven sampling (sampled mode).
    pub throttle: ThrottleStats,
    /// Snapshots taken from the guest agent's ring (included in `snapshots`).
    pub agent_snapshots: u64,
    /// Snapshots the guest agent dropped because its ring was full (exact, from the
    /// ring's sequence numbers).
    pub agent_lost: u64,
}

/// Where the hooks of a VM put their [`LbrRunStats`].
pub type LbrStatsSink = Arc<Mutex<Vec<LbrRunStats>>>;

/// The emulated backend of one vCPU, as a VMM hook.
pub struct EmulatedPmuHook {
    core: EmulatedVcpu,
    stats: Option<LbrStatsSink>,
    traps: IdtTraps,
    /// The exit timer is armed.
    armed: bool,
    failed: bool,
    /// KVM guest debug is on (its single-step owns RFLAGS.TF while it is).
    kvm_debug: bool,
    /// vCPUs in the VM, as told at start (a built-in guest's boot info). With more than
    /// one, code is shared, so breakpoints are not `int3` patches (another vCPU would
    /// trap on them, and a trap that races with the patch's removal resumes inside an
    /// instruction) but single-steps until an address comes up.
    vcpus: u32,
    /// The VM's vCPUs by address space, for VMs that add vCPUs as they run (a Linux
    /// program's threads): code is shared where another vCPU runs in this one's space.
    spaces: Option<VcpuSpaces>,
    /// The address space of each page-table root seen (see [`address_space`]).
    space_of: HashMap<u64, u64>,
    /// Breakpoints being reached by single-stepping (multi-vCPU IDT mode).
    pending_bps: Vec<u64>,
    /// Single-steps taken towards `pending_bps` so far.
    steps_to_bp: u32,
    /// See [`LbrRunStats::shared_int3_stops`].
    shared_int3_stops: u64,
    /// See [`LbrRunStats::stops_in_flight`].
    stops_in_flight: u64,
    stepping_stops: u64,
    /// This vCPU's guest agent ring (guest-driven snapshots).
    agent: AgentDrain,
    /// Drain the ring when the guest acks a freeze (else only when the vCPU stops, as
    /// the tests of the guest's overflow path want).
    drain_on_ack: bool,
}

/// A stop through one of the patched handlers: the interrupted context's trap frame.
#[derive(Clone, Copy, Debug)]
struct Trap {
    vector: u8,
    /// Guest-virtual address of the frame (RSP at the handler).
    frame_addr: u64,
    /// RIP, CS, RFLAGS, RSP, SS as pushed by the CPU.
    frame: [u64; 5],
}

impl Trap {
    /// Where the interrupted code stands: an `int3` trap reports the byte after it.
    fn rip(&self) -> u64 {
        if self.vector == VECTOR_BP {
            self.frame[0].wrapping_sub(1)
        } else {
            self.frame[0]
        }
    }

    /// Moves the interrupted code to `rip` (the inverse of [`Trap::rip`]).
    fn set_rip(&mut self, rip: u64) {
        self.frame[0] = if self.vector == VECTOR_BP {
            rip.wrapping_add(1)
        } else {
            rip
        };
    }
}

/// The IDT-trap machinery: patched handlers and `int3` breakpoints.
#[derive(Default)]
struct IdtTraps {
    /// (vector, handler address) once installed; the original bytes are in
    /// [`HANDLER_ORIGINALS`], shared by the VM's vCPUs.
    handlers: Vec<(u8, u64)>,
    /// `int3` breakpoints: address → original byte and the byte's [`INT3_ORIGINALS`] key
    /// (its physical address, fixed when placed: the vCPU may run another address
    /// space by the time it takes the breakpoint out).
    patches: HashMap<u64, (u8, HandlerKey)>,
    /// TF was set by the shim for the current run, so a #DB is the shim's.
    stepping: bool,
    /// Host address of the VM's guest memory (tells VMs apart in [`HANDLER_ORIGINALS`]).
    mem_base: u64,
}

/// The original first bytes of patched handlers, per (guest memory, handler address), with
/// the number of vCPUs using the patch: the last one to stop puts the bytes back.
static HANDLER_ORIGINALS: Mutex<BTreeMap<HandlerKey, HandlerPatch>> = Mutex::new(BTreeMap::new());

/// (host address of the guest memory, handler address).
type HandlerKey = (u64, u64);

/// The table key of the code byte at `addr` in the address space of `cr3`.
fn int3_key(ctx: &VcpuCtx<'_>, cr3: u64, addr: u64) -> Result<HandlerKey, String> {
    let pa = ctx
        .memory()
        .translate(cr3, GuestVirtAddr(addr))
        .map_err(|e| format!("cannot patch guest code at {addr:#x}: {e}"))?;
    Ok((ctx.memory().host_base(), pa.0))
}

/// Drops one user of the breakpoint at `addr`; the last puts the original byte back,
/// unless the guest wrote over the `int3` meanwhile (a JIT rewriting its code): then
/// the byte there is the guest's newer one, and the saved original is stale.
fn release_int3(
    shared: &mut BTreeMap<HandlerKey, (u8, u32)>,
    ctx: &VcpuCtx<'_>,
    key: HandlerKey,
) -> Result<(), String> {
    if let Some((orig, users)) = shared.get_mut(&key) {
        *users -= 1;
        if *users == 0 {
            let orig = *orig;
            shared.remove(&key);
            let mut now = [0u8];
            let at = GuestPhysAddr(key.1);
            if ctx.memory().read(at, &mut now).is_ok() && now[0] != INT3 {
                return Ok(());
            }
            ctx.memory()
                .write(at, &[orig])
                .map_err(|e| format!("cannot restore guest code at {:#x}: {e}", key.1))?;
        }
    }
    Ok(())
}
/// (original bytes, vCPUs using the patch).
type HandlerPatch = ([u8; 4], u32);

impl IdtTraps {
    fn installed(&self) -> bool {
        !self.handlers.is_empty()
    }

    /// Installs the handler patches if the guest has an IDT with present 64-bit gates for
    /// #DB and #BP; `true` when the traps are usable.
    fn install(&mut self, ctx: &VcpuCtx<'_>, sregs: &kvm_sregs) -> bool {
        if self.installed() {
            return true;
        }
        self.mem_base = ctx.memory().host_base();
        if sregs.cs.l == 0 || u64::from(sregs.idt.limit) < u64::from(VECTOR_BP) * 16 + 15 {
            return false;
        }
        let mut found = Vec::new();
        for vector in [VECTOR_DB, VECTOR_BP] {
            let mut gate = [0u8; 16];
            if ctx
                .memory()
                .read_virt(
                    sregs.cr3,
                    GuestVirtAddr(sregs.idt.base + u64::from(vector) * 16),
                    &mut gate,
                )
                .is_err()
                || gate[5] & 0x80 == 0
            {
                return false;
            }
            let handler = u64::from(u16::from_le_bytes([gate[0], gate[1]]))
                | u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16
                | u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]])) << 32;
            found.push((vector, handler));
        }
        if found[0].1 == found[1].1 {
            return false; // one shared handler: cannot tell the vectors apart
        }
        let base = ctx.memory().host_base();
        let mut shared = HANDLER_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
        for (vector, handler) in found {
            let key = (base, handler);
            if let Some((_, users)) = shared.get_mut(&key) {
                // Another vCPU of this VM patched it already.
                *users += 1;
                self.handlers.push((vector, handler));
                continue;
            }
            let mut orig = [0u8; 4];
            let Ok(pa) = ctx.memory().translate(sregs.cr3, GuestVirtAddr(handler)) else {
                drop(shared);
                self.uninstall(ctx, sregs.cr3);
                return false;
            };
            if ctx.memory().read(pa, &mut orig).is_err()
                || ctx.memory().write(pa, &HANDLER_PATCH).is_err()
            {
                drop(shared);
                self.uninstall(ctx, sregs.cr3);
                return false;
            }
            shared.insert(key, (orig, 1));
            self.handlers.push((vector, handler));
        }
        true
    }

    /// The vector whose patched handler `rip` stands in, just after its `out`.
    fn trap_vector(&self, rip: u64) -> Option<u8> {
        self.handlers
            .iter()
            .find(|(_, h)| h.wrapping_add(2) == rip)
            .map(|(v, _)| *v)
    }

    /// Makes the `int3` set exactly `want`.
    fn set_patches(&mut self, ctx: &VcpuCtx<'_>, cr3: u64, want: &[u64]) -> Result<(), String> {
        let stale: Vec<u64> = self
            .patches
            .keys()
            .copied()
            .filter(|a| !want.contains(a))
            .collect();
        let mut shared = INT3_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
        for addr in stale {
            if let Some((_, key)) = self.patches.remove(&addr) {
                release_int3(&mut shared, ctx, key)?;
            }
        }
        for &addr in want {
            if self.patches.contains_key(&addr)
                || self.handlers.iter().any(|(_, h)| addr.wrapping_sub(*h) < 4)
            {
                continue;
            }
            let key = int3_key(ctx, cr3, addr)?;
            let orig = match shared.get_mut(&key) {
                Some((orig, users)) => {
                    *users += 1;
                    *orig
                }
                None => {
                    let orig = read_byte(ctx, cr3, addr)?;
                    write_byte(ctx, cr3, addr, INT3)?;
                    shared.insert(key, (orig, 1));
                    orig
                }
            };
            self.patches.insert(addr, (orig, key));
        }
        Ok(())
    }

    /// Puts every original byte back.
    fn uninstall(&mut self, ctx: &VcpuCtx<'_>, cr3: u64) {
        let mut int3 = INT3_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
        for (_, key) in std::mem::take(&mut self.patches).into_values() {
            let _ = release_int3(&mut int3, ctx, key);
        }
        drop(int3);
        let base = ctx.memory().host_base();
        let mut shared = HANDLER_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
        for (_, handler) in std::mem::take(&mut self.handlers) {
            let key = (base, handler);
            let Some((orig, users)) = shared.get_mut(&key) else {
                continue;
            };
            *users -= 1;
            if *users == 0 {
                let orig = *orig;
                shared.remove(&key);
                if let Ok(pa) = ctx.memory().translate(cr3, GuestVirtAddr(handler)) {
                    let _ = ctx.memory().write(pa, &orig);
                }
            }
        }
    }

    /// Replaces patched bytes in `buf` (read at `gva` while `int3`, the VM-wide table,
    /// was held, so no vCPU patched or restored a byte in between) by the originals.
    fn unpatch(
        &self,
        int3: &BTreeMap<HandlerKey, (u8, u32)>,
        translate: impl Fn(u64) -> Option<u64>,
        gva: u64,
        buf: &mut [u8],
    ) {
        let end = gva.wrapping_add(buf.len() as u64);
        let inside = |a: u64| a >= gva && a < end;
        for (&addr, &(orig, _)) in &self.patches {
            if inside(addr) {
                buf[(addr - gva) as usize] = orig;
            }
        }
        // Other vCPUs' breakpoints too (shared code), by physical address, page by page.
        let mut a = gva;
        while a < end {
            let stop = (a | 0xfff).checked_add(1).map_or(end, |p| p.min(end));
            if let Some(pa) = translate(a) {
                let range = (self.mem_base, pa)..(self.mem_base, pa + (stop - a));
                for (&(_, p), &(orig, _)) in int3.range(range) {
                    buf[(a + (p - pa) - gva) as usize] = orig;
                }
            }
            a = stop;
        }
        if self.handlers.is_empty() {
            return;
        }
        let shared = HANDLER_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
        for (_, handler) in &self.handlers {
            let Some((orig, _)) = shared.get(&(self.mem_base, *handler)) else {
                continue;
            };
            for (i, &b) in orig.iter().enumerate() {
                let a = handler.wrapping_add(i as u64);
                if inside(a) {
                    buf[(a - gva) as usize] = b;
                }
            }
        }
    }
}

/// Rewrites the trap frame so the handler's IRETQ resumes the interrupted code at the
/// instruction that trapped (after an `int3`, the breakpointed one), with TF as wanted
/// (and RSP as the interpreter may have moved it).
fn write_frame(ctx: &VcpuCtx<'_>, cr3: u64, t: &Trap, tf: bool) -> Result<(), String> {
    let rflags = (t.frame[2] & !RFLAGS_TF) | if tf { RFLAGS_TF } else { 0 };
    let mut bytes = [0u8; 32];
    bytes[0..8].copy_from_slice(&t.rip().to_le_bytes());
    bytes[8..16].copy_from_slice(&t.frame[1].to_le_bytes());
    bytes[16..24].copy_from_slice(&rflags.to_le_bytes());
    bytes[24..32].copy_from_slice(&t.frame[3].to_le_bytes());
    let pa = ctx
        .memory()
        .translate(cr3, GuestVirtAddr(t.frame_addr))
        .map_err(|e| format!("cannot write the trap frame: {e}"))?;
    ctx.memory()
        .write(pa, &bytes)
        .map_err(|e| format!("cannot write the trap frame: {e}"))
}

/// Whether the `int3` that trapped at `addr` was a breakpoint of some vCPU of this VM:
/// it still is one, or the byte is no longer `int3` (its owner took it out meanwhile).
/// Only an `int3` of the program's own is still there and in nobody's table.
fn foreign_int3(ctx: &VcpuCtx<'_>, cr3: u64, addr: u64) -> bool {
    let int3 = INT3_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
    int3_key(ctx, cr3, addr).is_ok_and(|k| int3.contains_key(&k))
        || read_byte(ctx, cr3, addr).is_ok_and(|b| b != INT3)
}

fn read_byte(ctx: &VcpuCtx<'_>, cr3: u64, addr: u64) -> Result<u8, String> {
    let mut b = [0u8];
    ctx.memory()
        .read_virt(cr3, GuestVirtAddr(addr), &mut b)
        .map_err(|e| format!("cannot read guest code at {addr:#x}: {e}"))?;
    Ok(b[0])
}

fn write_byte(ctx: &VcpuCtx<'_>, cr3: u64, addr: u64, b: u8) -> Result<(), String> {
    let pa = ctx
        .memory()
        .translate(cr3, GuestVirtAddr(addr))
        .map_err(|e| format!("cannot patch guest code at {addr:#x}: {e}"))?;
    ctx.memory()
        .write(pa, &[b])
        .map_err(|e| format!("cannot patch guest code at {addr:#x}: {e}"))
}

impl EmulatedPmuHook {
    pub fn new(cfg: EmulatedConfig, sink: Option<SnapshotSink>) -> EmulatedPmuHook {
        EmulatedPmuHook {
            core: EmulatedVcpu::new(cfg, sink),
            stats: None,
            traps: IdtTraps::default(),
            armed: false,
            failed: false,
            kvm_debug: false,
            vcpus: 1,
            spaces: None,
            space_of: HashMap::new(),
            pending_bps: Vec::new(),
            steps_to_bp: 0,
            shared_int3_stops: 0,
            stops_in_flight: 0,
            stepping_stops: 0,
            agent: AgentDrain::new(),
            drain_on_ack: true,
        }
    }

    /// Share the overhead budget's episode cost with the VM's other vCPUs (see
    /// [`EmulatedVcpu::share_episode_costs`]).
    pub fn with_episode_costs(mut self, cost_ns: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.core.share_episode_costs(cost_ns);
        self
    }

    /// The number of vCPUs in the VM (default 1); see [`EmulatedPmuHook`]'s breakpoints.
    pub fn with_vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = vcpus.max(1);
        self
    }

    /// Learn at every stop which of the VM's vCPUs run in this one's address space
    /// (`spaces` is the VM's, shared by all its hooks): the moment a second one does
    /// (a thread started), no vCPU there places `int3`s any more.
    pub fn with_spaces(mut self, spaces: VcpuSpaces) -> Self {
        self.spaces = Some(spaces);
        self
    }

    /// The address space of root `cr3`, cached.
    fn space(&mut self, ctx: &VcpuCtx<'_>, cr3: u64) -> u64 {
        if self.space_of.len() > 64 {
            self.space_of.clear();
        }
        *self
            .space_of
            .entry(cr3)
            .or_insert_with(|| address_space(ctx.memory(), cr3))
    }

    /// Enters this vCPU in the VM's space map and waits (at most [`JOIN_WAIT`]) until no
    /// other vCPU in its address space has `int3`s placed: before the vCPU first runs
    /// in a space (a new thread's, or the next program's).
    fn join_space(&mut self, ctx: &VcpuCtx<'_>) {
        let Some(spaces) = self.spaces.clone() else {
            return;
        };
        let Ok(sregs) = ctx.sregs() else {
            return;
        };
        self.space_of.clear();
        let space = self.space(ctx, sregs.cr3);
        let vcpu = ctx.index();
        let patched = !self.traps.patches.is_empty();
        spaces.lock().insert(vcpu, SpaceUse { space, patched });
        let started = Instant::now();
        while space_shared(&spaces.lock(), vcpu, space, true) && started.elapsed() < JOIN_WAIT {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Also report this vCPU's statistics into `sink` when it stops.
    pub fn with_stats(mut self, sink: LbrStatsSink) -> Self {
        self.stats = Some(sink);
        self
    }

    /// Drain the guest agent's ring only when the vCPU stops, so the guest fills it (the
    /// tests of its overflow path).
    #[cfg(test)]
    fn drain_only_at_stop(mut self) -> Self {
        self.drain_on_ack = false;
        self
    }

    /// The model and tracer behind the hook (statistics, final state).
    pub fn core(&self) -> &EmulatedVcpu {
        &self.core
    }

    /// Guest-driven snapshots: take what this vCPU's guest agent wrote into its ring,
    /// with the guest stack walked from the interrupted frame pointer.
    fn drain_agent(&mut self, ctx: &mut VcpuCtx<'_>) {
        let clock = self.agent.clock(ctx);
        let cr3 = ctx.sregs().map_or(0, |s| s.cr3);
        let mut got = Vec::new();
        let r = {
            let mut g = CtxGuest::new(ctx, &self.traps, None, None);
            let mut walk = |fp| walk_frame_pointers(&mut g, fp, AGENT_STACK_FRAMES);
            self.agent
                .drain(ctx.memory(), &clock, cr3, &mut walk, &mut |s| got.push(s))
        };
        for mut snap in got {
            self.at_trapped_code(ctx, cr3, &mut snap);
            self.core.agent_snapshot(snap);
        }
        if let Err(e) = r {
            self.fail(ctx, e.to_string());
        }
    }

    /// An agent snapshot taken while its vCPU sat in one of the patched trap handlers
    /// (where the PMI the tracer injects at a stop is delivered) describes the shim's
    /// trap, not the guest: its context becomes the trap frame's, the code the handler
    /// returns to, as the shim's own snapshots see it. The frame pointer is the
    /// interrupted code's already (the patched handler does not touch it).
    fn at_trapped_code(&self, ctx: &VcpuCtx<'_>, cr3: u64, snap: &mut LbrSnapshot) {
        let in_handler = self
            .traps
            .handlers
            .iter()
            .any(|(_, h)| snap.guest_ip.wrapping_sub(*h) < HANDLER_PATCH.len() as u64);
        if !in_handler {
            return;
        }
        // The handler's stack holds the CPU's frame: RIP, CS, RFLAGS, RSP, SS.
        let mut raw = [0u8; 32];
        if ctx
            .memory()
            .read_virt(cr3, GuestVirtAddr(snap.guest_sp), &mut raw)
            .is_ok()
        {
            let word =
                |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            snap.guest_ip = word(0);
            snap.guest_sp = word(3);
        }
    }

    fn fail(&mut self, ctx: &mut VcpuCtx<'_>, why: String) {
        if !self.failed {
            self.failed = true;
            ctx.request_stop(format!("LBR emulation: {why}"));
        }
    }

    /// Programs the next stop.
    /// `state` is the vCPU's registers as read at the start of this callback (nothing
    /// in between changes them).
    fn apply(
        &mut self,
        ctx: &mut VcpuCtx<'_>,
        r: Result<Resume, TraceError>,
        trap: Option<Trap>,
        state: Option<(kvm_regs, kvm_sregs)>,
    ) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.fail(ctx, e.to_string());
                Resume::default()
            }
        };
        let Some((regs, sregs)) = state.or_else(|| cpu_state(ctx)) else {
            return self.fail(ctx, "cannot read the vCPU registers".into());
        };
        // Ring-3 stops go through the guest's IDT once it has one; ring-0 code (which KVM
        // may be emulating, where `int3` is not supported) is stopped with KVM guest debug.
        // A step over a far branch comes with breakpoints on its targets: through the IDT,
        // or when leaving a trap, those alone are the reliable stop.
        let tf = r.single_step && r.breakpoints.is_empty();
        let ring3 = r.stop_cpl != 0 && !r.is_free();
        // TF can be set directly unless KVM's single-step, which owns it, is being turned off.
        let can_tf = trap.is_some() || !self.kvm_debug;
        let idt = ring3 && (!tf || can_tf) && self.traps.install(ctx, &sregs);
        // With several vCPUs in the address space, breakpoints are reached by stepping
        // (see `vcpus`), decided and placed with the VM's space map held, so that no
        // vCPU joins the space in between. Where KVM's single-step still owns TF, it is
        // turned off first; only if that fails does this one stop use an `int3`.
        let space = self.space(ctx, sregs.cr3);
        let spaces = self.spaces.clone();
        let mut map = spaces.as_ref().map(VcpuSpaces::lock);
        let shared = self.vcpus > 1
            || map
                .as_ref()
                .is_some_and(|m| space_shared(m, ctx.index(), space, false));
        let mut can_tf = can_tf;
        if idt && !tf && !can_tf && !r.breakpoints.is_empty() && shared {
            can_tf = ctx.disable_guest_debug_now().is_ok();
            self.kvm_debug = !can_tf;
        }
        let by_steps = idt && shared && !tf && !r.breakpoints.is_empty() && can_tf;
        let tf = tf || by_steps;
        let patches: &[u64] = if idt && !by_steps {
            &r.breakpoints
        } else {
            &[]
        };
        if !patches.is_empty() && shared {
            self.shared_int3_stops += 1;
        }
        let placed = self.traps.set_patches(ctx, sregs.cr3, patches);
        if let Some(m) = map.as_mut() {
            let patched = !self.traps.patches.is_empty();
            m.insert(ctx.index(), SpaceUse { space, patched });
        }
        drop(map);
        if let Err(e) = placed {
            return self.fail(ctx, e);
        }
        self.pending_bps = if by_steps {
            r.breakpoints.clone()
        } else {
            Vec::new()
        };
        self.steps_to_bp = 0;
        if idt {
            // An injected PMI's handler would run in a context these traps cannot follow
            // (it returns into the trap handler's IRETQ): let it run untraced.
            self.core.set_follow_nmi_handler(false);
            ctx.set_single_step(false);
            for slot in 0..MAX_BREAKPOINTS {
                let _ = ctx.set_breakpoint(slot, None);
            }
            self.kvm_debug = false;
            self.traps.stepping = tf;
            match trap {
                Some(t) => {
                    if let Err(e) = write_frame(ctx, sregs.cr3, &t, tf) {
                        return self.fail(ctx, e);
                    }
                }
                None => {
                    let want_tf = if tf { RFLAGS_TF } else { 0 };
                    if regs.rflags & RFLAGS_TF != want_tf {
                        let mut regs = regs;
                        regs.rflags = (regs.rflags & !RFLAGS_TF) | want_tf;
                        if ctx.set_regs(&regs).is_err() {
                            return self.fail(ctx, "cannot set RFLAGS.TF".into());
                        }
                    }
                }
            }
        } else {
            // Leaving a trap, a single-step would stop in the handler's IRETQ: rely on the
            // breakpoints when there are any.
            let step = r.single_step && (trap.is_none() || r.breakpoints.is_empty());
            if let Some(t) = trap
                && let Err(e) = write_frame(ctx, sregs.cr3, &t, false)
            {
                return self.fail(ctx, e);
            }
            self.traps.stepping = false;
            ctx.set_single_step(step);
            for slot in 0..MAX_BREAKPOINTS {
                let addr = r.breakpoints.get(slot).copied().map(GuestVirtAddr);
                if let Err(e) = ctx.set_breakpoint(slot, addr) {
                    return self.fail(ctx, e.to_string());
                }
            }
            self.kvm_debug = step || !r.breakpoints.is_empty();
        }
        if r.inject_nmi {
            ctx.inject_nmi();
        }
        let after = self.core.deadline_ns(&r).map(Duration::from_nanos);
        if after.is_some() || self.armed {
            ctx.set_exit_timer(after);
            self.armed = after.is_some();
        }
    }

    /// A stop through a patched handler, if this exit is one.
    fn trap(
        &self,
        ctx: &VcpuCtx<'_>,
        exit: &ExitKind,
        (regs, sregs): &(kvm_regs, kvm_sregs),
    ) -> Option<Trap> {
        let ExitKind::IoOut { port, .. } = exit else {
            return None;
        };
        if *port != u16::from(TRAP_PORT) || !self.traps.installed() {
            return None;
        }
        let vector = self.traps.trap_vector(regs.rip)?;
        let mut raw = [0u8; 40];
        ctx.memory()
            .read_virt(sregs.cr3, GuestVirtAddr(regs.rsp), &mut raw)
            .ok()?;
        let mut frame = [0u64; 5];
        for (i, f) in frame.iter_mut().enumerate() {
            *f = u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().ok()?);
        }
        Some(Trap {
            vector,
            frame_addr: regs.rsp,
            frame,
        })
    }

    /// At an interrupted KVM_RUN: a stop of the IDT traps that the kick caught between
    /// the instruction that raised it and its delivery to the patched handler. On a host
    /// that traps ring-3 `int3`s and single-steps itself and queues the exception for the
    /// next entry (PVM), a kick landing in between returns to user space with the vCPU
    /// still in ring 3: after a single-step, the #DB is queued (and reported); after an
    /// `int3`, RIP is one byte past it and the #BP is queued but not reported. Neither is
    /// a place to plan from: the tracer would decode from the middle of the
    /// breakpointed instruction (and patch an `int3` into the middle of another), and
    /// anything that sets the registers (the interpreter, a signal frame) drops the
    /// queued exception, so the guest would resume inside the instruction.
    fn stop_in_flight(
        &self,
        ctx: &VcpuCtx<'_>,
        (regs, sregs): &(kvm_regs, kvm_sregs),
    ) -> Option<InFlight> {
        if !self.traps.installed() || sregs.cs.dpl != 3 {
            return None;
        }
        // (Nothing else puts a ring-3 vCPU right after one of these: each stands on the
        // first byte of an instruction the guest reaches only through it.)
        let at = regs.rip.wrapping_sub(1);
        if self.traps.patches.contains_key(&at) {
            return Some(InFlight::Breakpoint { ours: true });
        }
        let placed = {
            let int3 = INT3_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
            int3_key(ctx, sregs.cr3, at).is_ok_and(|k| int3.contains_key(&k))
        };
        if placed && read_byte(ctx, sregs.cr3, at).is_ok_and(|b| b == INT3) {
            return Some(InFlight::Breakpoint { ours: false });
        }
        if self.traps.stepping && ctx.queued_exception() == Some(VECTOR_DB) {
            return Some(InFlight::Step);
        }
        None
    }

    /// Completes a stop [`Self::stop_in_flight`] found in user space, as its trap would
    /// have: the queued exception is dropped, RIP goes back onto a breakpoint's
    /// instruction, and the stop is taken as the trap's (the tracer accounts it; another
    /// vCPU's breakpoint or a step towards a breakpoint is only run on). The guest is at an
    /// instruction boundary with nothing queued afterwards, and its registers and the
    /// tracer agree, so what follows (the interpreter, a signal frame) starts from there.
    fn finish_in_flight(
        &mut self,
        ctx: &mut VcpuCtx<'_>,
        (mut regs, sregs): (kvm_regs, kvm_sregs),
        stop: InFlight,
        now: u64,
    ) {
        self.stops_in_flight += 1;
        if let Err(e) = ctx.drop_queued_exception() {
            return self.fail(ctx, e.to_string());
        }
        if let InFlight::Breakpoint { .. } = stop {
            regs.rip = regs.rip.wrapping_sub(1);
            if ctx.set_regs(&regs).is_err() {
                return self.fail(ctx, "cannot move RIP back onto a breakpoint".into());
            }
        }
        match stop {
            InFlight::Breakpoint { ours: false } => return,
            InFlight::Step
                if !self.pending_bps.is_empty() && !self.pending_bps.contains(&regs.rip) =>
            {
                // As at a trap: on towards the breakpoint address, stepping while in reach.
                self.stepping_stops += 1;
                self.steps_to_bp += 1;
                if self.steps_to_bp >= MAX_STEPS_TO_BREAKPOINT {
                    self.pending_bps.clear();
                    self.traps.stepping = false;
                    regs.rflags &= !RFLAGS_TF;
                    if ctx.set_regs(&regs).is_err() {
                        self.fail(ctx, "cannot clear RFLAGS.TF".into());
                    }
                }
                return;
            }
            _ => {}
        }
        let state = Some((regs, sregs));
        let mut g = CtxGuest::new(ctx, &self.traps, None, state).interpretable(true);
        let r = self.core.on_debug(&mut g, now);
        let state = g.state;
        self.apply(ctx, r, None, state);
    }
}

/// A stop of the IDT traps caught in flight (see [`EmulatedPmuHook::stop_in_flight`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InFlight {
    /// An `int3` of this vCPU's (`ours`) or of another's: RIP is one byte past it.
    Breakpoint { ours: bool },
    /// A single-step of this vCPU's: RIP is after the stepped instruction.
    Step,
}

impl VcpuHook for EmulatedPmuHook {
    fn io_ports(&self) -> Vec<u16> {
        vec![u16::from(TRAP_PORT)]
    }

    fn needs_in_kernel_lapic(&self) -> bool {
        // Its PMIs are NMIs injected with KVM_NMI (see `VcpuCtx::inject_nmi`).
        false
    }

    fn msr_ranges(&self) -> Vec<MsrRange> {
        self.core
            .msr_ranges()
            .into_iter()
            .map(|(lo, hi)| MsrRange {
                base: lo,
                count: hi - lo + 1,
            })
            .collect()
    }

    fn adjust_cpuid(&mut self, _vcpu: u32, entries: &mut Vec<kvm_cpuid_entry2>) {
        let mut plain: Vec<CpuidEntry> = entries.iter().map(to_plain).collect();
        self.core.adjust_cpuid(&mut plain);
        let old = std::mem::take(entries);
        for p in plain {
            let flags = old
                .iter()
                .find(|e| e.function == p.function && e.index == p.index)
                .map_or(0, |e| e.flags);
            entries.push(kvm_cpuid_entry2 {
                function: p.function,
                index: p.index,
                flags,
                eax: p.eax,
                ebx: p.ebx,
                ecx: p.ecx,
                edx: p.edx,
                ..Default::default()
            });
        }
    }

    fn on_start(&mut self, ctx: &mut VcpuCtx<'_>) {
        self.agent.start(ctx);
        self.core.set_shim_code(ctx.shim_code().cloned());
        let state = cpu_state(ctx);
        if let Some((regs, _)) = &state {
            self.vcpus = self.vcpus.max(boot_info_vcpus(ctx, regs.rsi));
        }
        self.join_space(ctx);
        let mut g = CtxGuest::new(ctx, &self.traps, None, state).interpretable(true);
        let r = self.core.on_start(&mut g, monotonic_ns());
        let state = g.state;
        self.apply(ctx, r, None, state);
    }

    fn rdmsr(&mut self, ctx: &mut VcpuCtx<'_>, msr: u32) -> Result<u64, GpFault> {
        self.core
            .rdmsr(&mut CtxGuest::new(ctx, &self.traps, None, None), msr)
            .map_err(|_| GpFault)
    }

    fn wrmsr(&mut self, ctx: &mut VcpuCtx<'_>, msr: u32, value: u64) -> Result<(), GpFault> {
        self.core
            .wrmsr(&mut CtxGuest::new(ctx, &self.traps, None, None), msr, value)
            .map_err(|_| GpFault)?;
        if msr == IA32_PERF_GLOBAL_STATUS_RESET && self.drain_on_ack {
            // A PMI handler acks a freeze: a guest agent has just written its snapshot.
            self.drain_agent(ctx);
        }
        Ok(())
    }

    fn on_exit(&mut self, ctx: &mut VcpuCtx<'_>, exit: &ExitKind) {
        if matches!(exit, ExitKind::Debug(_)) || self.failed {
            return;
        }
        let now = monotonic_ns();
        let state = cpu_state(ctx);
        if let Some(st) = &state
            && matches!(exit, ExitKind::IoOut { port, .. } if *port == u16::from(TRAP_PORT))
            && !self.traps.installed()
        {
            // Another vCPU patched the VM's shared #DB/#BP handlers and this one, which
            // has not stopped through them yet, ran into them (most often another
            // vCPU's `int3` in shared code). Join the patch so the trap is recognised:
            // left alone, the handler's IRETQ would resume after the `int3`, in the middle
            // of the instruction under it.
            self.traps.install(ctx, &st.1);
        }
        if let Some(st) = &state
            && let Some(trap) = self.trap(ctx, exit, st)
        {
            let ours = match trap.vector {
                VECTOR_BP => self.traps.patches.contains_key(&trap.rip()),
                _ => self.traps.stepping,
            };
            if ours
                && trap.vector == VECTOR_DB
                && !self.pending_bps.is_empty()
                && !self.pending_bps.contains(&trap.rip())
            {
                self.stepping_stops += 1;
                self.steps_to_bp += 1;
                // Still stepping towards a breakpoint address, or (past the limit) the
                // guest went another way or sits in a long `rep` instruction: it runs on
                // unstepped and, as after a block (`on_block`), the window loses the
                // branches until the next stop, where the tracer plans again.
                let more = self.steps_to_bp < MAX_STEPS_TO_BREAKPOINT;
                if !more {
                    self.pending_bps.clear();
                    self.traps.stepping = false;
                }
                if let Err(e) = write_frame(ctx, st.1.cr3, &trap, more) {
                    self.fail(ctx, e);
                }
                return;
            }
            if !ours && trap.vector == VECTOR_BP && foreign_int3(ctx, st.1.cr3, trap.rip()) {
                // Another vCPU's breakpoint (or one that was there when this vCPU hit it):
                // run the instruction again (it is gone once that vCPU stops there or
                // moves on).
                if let Err(e) = write_frame(ctx, st.1.cr3, &trap, self.traps.stepping) {
                    self.fail(ctx, e);
                }
                return;
            }
            if ours {
                // A trap is a clean stop: the interrupted context is whole in the frame.
                let mut g = CtxGuest::new(ctx, &self.traps, Some(trap), state).interpretable(true);
                let r = self.core.on_debug(&mut g, now);
                let (trap, state) = (g.trap, g.state);
                return self.apply(ctx, r, trap, state);
            }
            // The guest's own #DB/#BP: its handler is gone for the run; skip the event.
            // A #DB of TF that is nobody's now (a step of this hook's that outlived its
            // stepping, e.g. in flags a system call saved, or the program's own) would
            // come back at every instruction: the frame's IRETQ resumes without it.
            if trap.vector == VECTOR_DB
                && trap.frame[2] & RFLAGS_TF != 0
                && let Err(e) = write_frame(ctx, st.1.cr3, &trap, false)
            {
                self.fail(ctx, e);
            }
        }
        if matches!(exit, ExitKind::Interrupted)
            && let Some(st) = state
            && let Some(stop) = self.stop_in_flight(ctx, &st)
        {
            return self.finish_in_flight(ctx, st, stop, now);
        }
        // Only an interrupted KVM_RUN leaves nothing for KVM to complete on re-entry (an
        // I/O or MSR exit's instruction is finished by the next KVM_RUN).
        let clean = matches!(exit, ExitKind::Interrupted);
        // A sample may be taken only where a kick found the guest in its own code.
        let at = match &state {
            Some((regs, _))
                if clean && ctx.interrupted_in_guest() && !self.core.in_shim_code(regs.rip) =>
            {
                ExitPoint::Async
            }
            _ => ExitPoint::Sync,
        };
        let mut g = CtxGuest::new(ctx, &self.traps, None, state).interpretable(clean);
        let r = self.core.on_exit_at(&mut g, now, at);
        let state = g.state;
        self.apply(ctx, r, None, state);
    }

    fn on_block(&mut self, ctx: &mut VcpuCtx<'_>) {
        // The other vCPUs must not wait on this one's breakpoints while it is blocked:
        // the window loses the branches until its next stop.
        if let Ok(sregs) = ctx.sregs()
            && let Err(e) = self.traps.set_patches(ctx, sregs.cr3, &[])
        {
            self.fail(ctx, e);
        }
        if let Some(spaces) = &self.spaces
            && let Some(u) = spaces.lock().get_mut(&ctx.index())
        {
            u.patched = false;
        }
        self.pending_bps.clear();
    }

    fn on_new_program(&mut self, ctx: &mut VcpuCtx<'_>) {
        if self.failed {
            return;
        }
        self.pending_bps.clear();
        self.core.forget_program();
        self.core.set_shim_code(ctx.shim_code().cloned());
        self.join_space(ctx);
        let state = cpu_state(ctx);
        let mut g = CtxGuest::new(ctx, &self.traps, None, state).interpretable(true);
        let r = self.core.on_start(&mut g, monotonic_ns());
        let state = g.state;
        self.apply(ctx, r, None, state);
    }

    fn on_moved(&mut self, ctx: &mut VcpuCtx<'_>) {
        if self.failed {
            return;
        }
        let state = cpu_state(ctx);
        let mut g = CtxGuest::new(ctx, &self.traps, None, state).interpretable(true);
        let r = self.core.on_moved(&mut g, monotonic_ns());
        let state = g.state;
        if let Some(r) = r.transpose() {
            self.apply(ctx, r, None, state);
        }
    }

    fn on_debug(&mut self, ctx: &mut VcpuCtx<'_>, _debug: &DebugExit) {
        if self.failed {
            return;
        }
        let state = cpu_state(ctx);
        let mut g = CtxGuest::new(ctx, &self.traps, None, state).interpretable(true);
        let r = self.core.on_debug(&mut g, monotonic_ns());
        let state = g.state;
        self.apply(ctx, r, None, state);
    }

    fn on_stop(&mut self, ctx: &mut VcpuCtx<'_>) {
        self.drain_agent(ctx);
        self.core.on_stop(
            &mut CtxGuest::new(ctx, &self.traps, None, None),
            monotonic_ns(),
        );
        if let Ok(sregs) = ctx.sregs() {
            self.traps.uninstall(ctx, sregs.cr3);
        }
        if let Some(sink) = &self.stats {
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(LbrRunStats {
                    vcpu: ctx.index(),
                    tracer: self.core.tracer_stats(),
                    pmu: self.core.pmu_stats(),
                    snapshots: self.core.snapshots(),
                    stepping_stops: self.stepping_stops,
                    shared_int3_stops: self.shared_int3_stops,
                    stops_in_flight: self.stops_in_flight,
                    throttle: self.core.throttle_stats(),
                    agent_snapshots: self.agent.counts().0,
                    agent_lost: self.agent.counts().1,
                });
        }
    }
}

/// The vCPU count lbrprof's guest runtime is told at boot (RSI points at its
/// [`crate::abi::BootInfo`]), or 1 for other images: hooks made without
/// [`EmulatedPmuHook::with_vcpus`] still learn that code is shared.
fn boot_info_vcpus(ctx: &VcpuCtx<'_>, rsi: u64) -> u32 {
    let mut head = [0u8; 16];
    if ctx.memory().read(GuestPhysAddr(rsi), &mut head).is_err()
        || u64::from_le_bytes(head[0..8].try_into().unwrap_or_default()) != crate::abi::BOOT_MAGIC
    {
        return 1;
    }
    u32::from_le_bytes(head[12..16].try_into().unwrap_or_default()).max(1)
}

/// The vCPU's registers and segment registers, read once per callback.
fn cpu_state(ctx: &VcpuCtx<'_>) -> Option<(kvm_regs, kvm_sregs)> {
    Some((ctx.regs().ok()?, ctx.sregs().ok()?))
}

fn to_plain(e: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}

/// The vCPU as the tracer sees it; registers are read once per callback. At a trap, the
/// interrupted context (from the trap frame) stands in for the handler's. The interpreter's
/// register writes land in `state` (and KVM) and `trap` (the frame to write back).
struct CtxGuest<'c, 'v> {
    ctx: &'c VcpuCtx<'v>,
    traps: &'c IdtTraps,
    trap: Option<Trap>,
    state: Option<(kvm_regs, kvm_sregs)>,
    /// This stop allows interpreting (see [`GuestAccess::interp_state`]).
    interp_ok: bool,
}

impl<'c, 'v> CtxGuest<'c, 'v> {
    fn new(
        ctx: &'c VcpuCtx<'v>,
        traps: &'c IdtTraps,
        trap: Option<Trap>,
        state: Option<(kvm_regs, kvm_sregs)>,
    ) -> Self {
        CtxGuest {
            ctx,
            traps,
            trap,
            state,
            interp_ok: false,
        }
    }

    fn interpretable(mut self, ok: bool) -> Self {
        self.interp_ok = ok;
        self
    }

    fn state(&mut self) -> Result<(kvm_regs, kvm_sregs), GuestAccessError> {
        if let Some(s) = self.state {
            return Ok(s);
        }
        let regs = self
            .ctx
            .regs()
            .map_err(|_| GuestAccessError::Unavailable { what: "registers" })?;
        let sregs = self
            .ctx
            .sregs()
            .map_err(|_| GuestAccessError::Unavailable {
                what: "segment registers",
            })?;
        self.state = Some((regs, sregs));
        Ok((regs, sregs))
    }
}

impl GuestAccess for CtxGuest<'_, '_> {
    fn cpu(&mut self) -> Result<GuestCpu, GuestAccessError> {
        let (regs, sregs) = self.state()?;
        let code_size = if sregs.cs.l != 0 {
            CodeSize::Bits64
        } else if sregs.cs.db != 0 {
            CodeSize::Bits32
        } else {
            CodeSize::Bits16
        };
        let mut cpu = GuestCpu {
            rip: regs.rip,
            rsp: regs.rsp,
            rbp: regs.rbp,
            rflags: Some(regs.rflags),
            rcx: regs.rcx,
            cpl: sregs.cs.dpl,
            code_size,
            idt_base: sregs.idt.base,
            idt_limit: sregs.idt.limit,
            cr3: sregs.cr3,
        };
        if let Some(t) = self.trap {
            cpu.rip = t.rip();
            cpu.rsp = t.frame[3];
            cpu.rflags = Some(t.frame[2]);
            cpu.cpl = (t.frame[1] & 3) as u8;
        }
        Ok(cpu)
    }

    fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        let cr3 = self.state()?.1.cr3;
        let int3 = INT3_ORIGINALS.lock().unwrap_or_else(|e| e.into_inner());
        self.ctx
            .memory()
            .read_virt(cr3, GuestVirtAddr(gva), buf)
            .map_err(|_| GuestAccessError::Unmapped { gva })?;
        let mem = self.ctx.memory();
        let translate = |a: u64| mem.translate(cr3, GuestVirtAddr(a)).ok().map(|p| p.0);
        self.traps.unpatch(&int3, translate, gva, buf);
        Ok(())
    }

    fn interp_state(&mut self) -> Option<InterpState> {
        if !self.interp_ok {
            return None;
        }
        if self.trap.is_none() {
            // An event KVM has yet to deliver (an exception re-queued across the exit, an
            // interrupt or NMI being injected) belongs at this RIP, not at the
            // interpreter's. (At a trap such an event belongs to the handler's context,
            // which the interpreter leaves alone.)
            let ev = self.ctx.vcpu.get_vcpu_events().ok()?;
            if ev.exception.injected != 0
                || ev.exception.pending != 0
                || ev.interrupt.injected != 0
                || ev.nmi.injected != 0
                || ev.nmi.pending != 0
            {
                return None;
            }
        }
        let (r, sregs) = self.state().ok()?;
        let mut s = InterpState {
            gpr: [
                r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            cpl: sregs.cs.dpl,
            long_mode: sregs.cs.l != 0,
            // The guest's own breakpoints (KVM keeps the shim's guest-debug ones apart).
            dr7: self.ctx.vcpu.get_debug_regs().ok()?.dr7,
            // At a trap too: the patched handler (`out`, `iretq`) does not touch FS.
            fs_base: sregs.fs.base,
        };
        if let Some(t) = self.trap {
            // TF in the frame is the shim's stepping, not the guest's.
            s.rip = t.rip();
            s.gpr[4] = t.frame[3];
            s.rflags = t.frame[2] & !RFLAGS_TF;
            s.cpl = (t.frame[1] & 3) as u8;
        }
        Some(s)
    }

    fn set_interp_state(&mut self, s: &InterpState) -> Result<(), GuestAccessError> {
        let (mut r, sregs) = self.state()?;
        let g = &s.gpr;
        (r.rax, r.rcx, r.rdx, r.rbx, r.rbp, r.rsi, r.rdi) =
            (g[0], g[1], g[2], g[3], g[5], g[6], g[7]);
        (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) =
            (g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
        match &mut self.trap {
            Some(t) => {
                // The handler's own RIP/RSP/RFLAGS stay; the interrupted context's are in
                // the frame its IRETQ pops (written back by `apply`).
                t.set_rip(s.rip);
                t.frame[2] = s.rflags;
                t.frame[3] = g[4];
            }
            None => {
                r.rip = s.rip;
                r.rsp = g[4];
                r.rflags = s.rflags;
            }
        }
        self.ctx
            .set_regs(&r)
            .map_err(|_| GuestAccessError::Unavailable { what: "registers" })?;
        self.state = Some((r, sregs));
        Ok(())
    }

    fn xmm(&mut self) -> Option<[u128; 16]> {
        // At a trap the shim's patched handler has not run a single SSE instruction, so the
        // registers are still the interrupted context's.
        crate::xsave::xmm(self.ctx.vcpu).ok()
    }

    fn ymm(&mut self) -> Option<([u128; 16], [u128; 16])> {
        // As for `xmm`: at a trap the handler has not touched them. Upper halves the
        // vCPU would drop when written back are not the interpreter's to change.
        if !crate::xsave::keeps_avx(self.ctx.vcpu) {
            return None;
        }
        crate::xsave::ymm(self.ctx.vcpu).ok()
    }

    fn set_xmm(
        &mut self,
        xmm: &[u128; 16],
        ymm_hi: Option<&[u128; 16]>,
    ) -> Result<(), GuestAccessError> {
        let unavailable = GuestAccessError::Unavailable {
            what: "XMM registers",
        };
        // Through XSAVE, marked in use: KVM_SET_FPU's XMM registers are dropped when the
        // SSE state was last saved in its initial state (see crate::xsave).
        crate::xsave::set_xmm(self.ctx.vcpu, xmm, ymm_hi).map_err(|_| unavailable)
    }

    fn read_phys(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        self.ctx
            .memory()
            .read(GuestPhysAddr(gpa), buf)
            .map_err(|_| GuestAccessError::NotRam { gpa })
    }

    fn write_phys(&mut self, gpa: u64, data: &[u8]) -> Result<(), GuestAccessError> {
        self.ctx
            .memory()
            .write(GuestPhysAddr(gpa), data)
            .map_err(|_| GuestAccessError::NotRam { gpa })
    }

    fn ram_page(&mut self, gpa: u64) -> Option<std::ptr::NonNull<u8>> {
        // (The VM's guest memory outlives every hook context made over it.)
        self.ctx.memory().page_ptr(GuestPhysAddr(gpa))
    }

    fn read_phys_aligned(&mut self, gpa: u64, len: usize) -> Result<u64, GuestAccessError> {
        self.ctx
            .memory()
            .load_aligned(GuestPhysAddr(gpa), len)
            .map_err(|_| GuestAccessError::NotRam { gpa })
    }

    fn write_phys_aligned(
        &mut self,
        gpa: u64,
        len: usize,
        value: u64,
    ) -> Result<(), GuestAccessError> {
        self.ctx
            .memory()
            .store_aligned(GuestPhysAddr(gpa), len, value)
            .map_err(|_| GuestAccessError::NotRam { gpa })
    }

    fn cmpxchg_phys_u64(&mut self, gpa: u64, old: u64, new: u64) -> Result<bool, GuestAccessError> {
        self.ctx
            .memory()
            .compare_exchange_u64(GuestPhysAddr(gpa), old, new)
            .map_err(|_| GuestAccessError::NotRam { gpa })
    }

    fn read_msr(&mut self, index: u32) -> Result<u64, GuestAccessError> {
        let unavailable = GuestAccessError::Unavailable { what: "MSR" };
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| unavailable.clone())?;
        match self.ctx.vcpu.get_msrs(&mut msrs) {
            Ok(1) => Ok(msrs.as_slice()[0].data),
            _ => Err(unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::builtin;
    use crate::pmu::emulated::Sampling;
    use crate::pmu::tracer::TraceMode;
    use crate::pmu::vpmu::PmuConfig;
    use crate::snapshot::{LbrSnapshot, SnapshotReason};
    use crate::vm::{Vm, VmConfig};

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

    fn kvm() -> bool {
        let ok = std::path::Path::new("/dev/kvm").exists();
        if !ok {
            eprintln!("skipped: /dev/kvm is not available");
        }
        ok
    }

    /// Runs a built-in guest with the emulated PMU; returns (exit code, console).
    fn run(
        name: &str,
        args: &str,
        cfg: EmulatedConfig,
        sink: Option<SnapshotSink>,
    ) -> (u8, String) {
        run_on(1, name, args, cfg, sink)
    }

    fn run_on(
        vcpus: u32,
        name: &str,
        args: &str,
        cfg: EmulatedConfig,
        sink: Option<SnapshotSink>,
    ) -> (u8, String) {
        let console = Console::default();
        let mut config = VmConfig::new(64 << 20, vcpus);
        config.cmdline = args.into();
        config.serial = Box::new(console.clone());
        config.timeout = Some(Duration::from_secs(120));
        config.warn = Box::new(|_| {});
        let image = builtin::image(name).unwrap();
        let hooks = move |i: u32| -> Box<dyn VcpuHook> {
            let mut c = cfg;
            c.vcpu = i;
            Box::new(EmulatedPmuHook::new(c, sink.clone()))
        };
        let report = Vm::run(config, image, &hooks).unwrap();
        let out = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
        (report.outcome.exit_code(), out)
    }

    /// A guest agent's PMI as the runtime writes it (`guest/src/kernel.rs`): record `pmi`
    /// into the ring of `vcpu` unless full, with an 8-deep LBR, TOS 2, interrupted at
    /// `rip` with frame pointer `fp`.
    fn agent_pmi(mem: &GuestMemory, vcpu: u32, rip: u64, fp: u64, tsc: u64) {
        use crate::abi::{AGENT_RING_MAGIC, AGENT_RING_SLOTS, agent_record_addr, agent_ring_addr};
        let ring = agent_ring_addr(vcpu);
        let r = |o: u64| mem.read_u64(GuestPhysAddr(ring + o)).unwrap();
        let w = |a: u64, v: u64| mem.write_u64(GuestPhysAddr(a), v).unwrap();
        if r(0) != AGENT_RING_MAGIC {
            w(ring + 40, 1);
            w(ring, AGENT_RING_MAGIC);
        }
        let (head, tail, pmi) = (r(8), r(16), r(32));
        w(ring + 32, pmi + 1);
        if head - tail >= AGENT_RING_SLOTS {
            w(ring + 24, r(24) + 1);
            return;
        }
        let base = agent_record_addr(vcpu, head);
        for (i, v) in [head, pmi, tsc, 1, 2, 8, rip, 0x9000, fp]
            .into_iter()
            .enumerate()
        {
            w(base + 8 * i as u64, v);
        }
        w(ring + 8, head + 1);
    }

    /// The hardware backend's drain (untestable end to end on a host without LBR): what
    /// the guest agent wrote reaches the snapshot channel with its stack, losses are
    /// counted exactly, and only this vCPU's ring is read.
    #[test]
    fn the_hardware_hook_drains_its_vcpus_agent_ring() {
        let mem = GuestMemory::new(1 << 20).unwrap();
        let (sink, rx) = SnapshotSink::bounded(1024);
        let mut hook = HardwarePmuHook::new(true).with_agent(sink);
        hook.agent.reader = AgentRingReader::new(1);
        let clock = DrainClock {
            now_ns: 1_000_000,
            guest_tsc: Some(2_000_000),
            tsc_khz: 2_000_000,
        };
        let mut walk = |fp: u64| vec![fp + 1, fp + 2];
        // Nothing set up yet: nothing drained, no error.
        hook.drain_from(&mem, &clock, 0x1000, &mut walk).unwrap();
        assert!(rx.try_recv().is_err());
        agent_pmi(&mem, 0, 0xdead, 0, 0); // vCPU 0's ring: not this hook's
        for i in 0..40 {
            agent_pmi(&mem, 1, 0x40_0000 + i, 0x8000, 1_000_000 + i);
        }
        hook.drain_from(&mem, &clock, 0x1000, &mut walk).unwrap();
        let got: Vec<LbrSnapshot> = rx.try_iter().collect();
        assert_eq!(got.len(), 32, "the ring holds 32");
        let s = &got[3];
        assert_eq!(
            (s.vcpu, s.reason),
            (1, crate::snapshot::SnapshotReason::Agent)
        );
        assert_eq!((s.guest_ip, s.cr3), (0x40_0003, 0x1000));
        assert_eq!(s.guest_stack, [0x8001, 0x8002]);
        // 2 GHz guest TSC: 999,997 ticks before the drain's TSC is 499,998 ns (rounded
        // down) before the drain.
        assert_eq!(s.host_time_ns, 1_000_000 - 499_998);
        assert_eq!(hook.agent.counts(), (32, 8));
        for i in 0..3 {
            agent_pmi(&mem, 1, 0x50_0000 + i, 0, 1_999_000);
        }
        hook.drain_from(&mem, &clock, 0x1000, &mut walk).unwrap();
        assert_eq!(rx.try_iter().count(), 3);
        assert_eq!(hook.agent.counts(), (35, 8));
        // A malformed ring is an error (the hook then stops the VM, naming it).
        mem.write_u64(GuestPhysAddr(crate::abi::agent_ring_addr(1) + 8), 1000)
            .unwrap();
        let err = hook
            .drain_from(&mem, &clock, 0x1000, &mut walk)
            .unwrap_err();
        assert!(err.to_string().contains("vCPU 1"), "{err}");
    }

    #[test]
    fn the_hardware_hook_drains_on_its_timer_or_when_an_exit_comes_late() {
        let mut hook = HardwarePmuHook::new(false);
        let interval = AGENT_DRAIN_INTERVAL.as_nanos() as u64;
        assert!(hook.drain_due(100, true), "the first");
        assert!(!hook.drain_due(101, false), "an exit soon after: not yet");
        assert!(hook.drain_due(102, true), "the timer fired");
        assert!(!hook.drain_due(102 + interval - 1, false));
        assert!(
            hook.drain_due(102 + interval, false),
            "an exit after the interval"
        );
    }

    #[test]
    fn guest_sees_the_virtual_pmu_msrs() {
        if !kvm() {
            return;
        }
        let cfg = EmulatedConfig::new(
            0,
            PmuConfig::new(4, 16).unwrap(),
            TraceMode::Sampled {
                window_branches: 16,
            },
        );
        let (code, out) = run(
            "msrprobe",
            "rd=0x345 wr=0x1d9:0x1801 rd=0x1d9 wr=0x1d9:0x40 rd=0x68f rd=0x690 wr=0x6c0:0x1234 rd=0x6c0 wr=0x345:0",
            cfg,
            None,
        );
        eprintln!("{out}");
        assert_eq!(code, 0);
        assert!(out.contains("rdmsr 0x345 = 0x2005"), "{out}");
        assert!(out.contains("wrmsr 0x1d9 = 0x1801: ok"), "{out}");
        assert!(out.contains("rdmsr 0x1d9 = 0x1801"), "{out}");
        assert!(out.contains("wrmsr 0x1d9 = 0x40: #GP"), "{out}");
        assert!(out.contains("rdmsr 0x68f = 0x0"), "{out}");
        assert!(out.contains("rdmsr 0x690 = #GP"), "{out}");
        assert!(out.contains("rdmsr 0x6c0 = 0x1234"), "{out}");
        assert!(out.contains("wrmsr 0x345 = 0x0: #GP"), "{out}");
    }

    /// Where the image's code lives (its ELF load range).
    const GUEST_CODE: std::ops::Range<u64> = 0x20_0000..0x40_0000;

    fn exact_shim(period: u64) -> EmulatedConfig {
        let mut cfg = EmulatedConfig::new(0, PmuConfig::new(4, 32).unwrap(), TraceMode::Exact);
        cfg.sampling = Sampling::Shim { period };
        cfg
    }

    #[test]
    fn exact_mode_traces_ring3_workloads_deterministically() {
        if !kvm() {
            return;
        }
        let once = || {
            let (sink, rx) = SnapshotSink::bounded(1024);
            let (code, out) = run("branchy", "n=300", exact_shim(2003), Some(sink));
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("branchy: n=300"), "{out}");
            rx.try_iter().collect::<Vec<LbrSnapshot>>()
        };
        let a = once();
        assert!(a.len() >= 3, "{} snapshots", a.len());
        assert_eq!(a.last().unwrap().reason, SnapshotReason::Final);
        for s in &a[..a.len() - 1] {
            assert_eq!(s.reason, SnapshotReason::Pmi { counter: 32 });
            assert_eq!(s.entries.len(), 32);
            // Only guest code addresses, never the host's.
            for e in s.newest_first() {
                assert!(GUEST_CODE.contains(&e.from), "from {:#x}", e.from);
                assert!(GUEST_CODE.contains(&e.to), "to {:#x}", e.to);
            }
            assert_eq!(s.newest_first().count(), 32, "the LBR is full by then");
        }
        let b = once();
        let key = |v: &[LbrSnapshot]| {
            v.iter()
                .map(|s| {
                    (
                        s.reason,
                        s.tos,
                        s.entries.clone(),
                        s.guest_ip,
                        s.guest_tsc != 0,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b), "two exact runs give identical snapshots");
    }

    #[test]
    fn sampled_mode_records_windows_before_each_overflow() {
        if !kvm() {
            return;
        }
        let (sink, rx) = SnapshotSink::bounded(1024);
        let mut cfg = EmulatedConfig::new(
            0,
            PmuConfig::new(2, 16).unwrap(),
            TraceMode::Sampled {
                window_branches: 16,
            },
        );
        // One sample per 5 ms of guest time.
        cfg.sampling = Sampling::Shim {
            period: cfg.cycles_per_sec / 200,
        };
        // Whole windows only: a window of this debug build's tracer can cost more than
        // the episode cap's CPU time and be cut (the cap is tested apart, in `emulated`).
        cfg.max_episode_ns = 0;
        let (code, out) = run("branchy", "n=3000000", cfg, Some(sink));
        assert_eq!(code, 0, "{out}");
        let snaps: Vec<LbrSnapshot> = rx.try_iter().collect();
        let pmis: Vec<&LbrSnapshot> = snaps
            .iter()
            .filter(|s| matches!(s.reason, SnapshotReason::Pmi { .. }))
            .collect();
        assert!(!pmis.is_empty(), "no samples in {} snapshots", snaps.len());
        for s in pmis {
            assert_eq!(s.reason, SnapshotReason::Pmi { counter: 33 });
            assert_eq!(s.newest_first().count(), 16);
            for e in s.newest_first() {
                assert!(GUEST_CODE.contains(&e.from) && GUEST_CODE.contains(&e.to));
            }
        }
    }

    /// The real guest agent's overflow path, end to end: with its ring drained only at the
    /// end, each vCPU's agent fills its 32 slots and drops the rest; the shim receives
    /// exactly the 32 and counts exactly what the guest says it dropped, per vCPU.
    #[test]
    fn a_full_agent_ring_loses_exactly_what_the_guest_dropped() {
        if !kvm() {
            return;
        }
        let console = Console::default();
        let mut config = VmConfig::new(64 << 20, 2);
        config.cmdline = "n=200000 rt.smp rt.agent=150000".into();
        config.serial = Box::new(console.clone());
        config.timeout = Some(Duration::from_secs(120));
        config.warn = Box::new(|_| {});
        let (sink, rx) = SnapshotSink::bounded(1024);
        let stats: LbrStatsSink = Arc::new(Mutex::new(Vec::new()));
        let cfg = EmulatedConfig::new(
            0,
            PmuConfig::new(4, 16).unwrap(),
            TraceMode::Sampled {
                window_branches: 16,
            },
        );
        let hooks = |i: u32| -> Box<dyn VcpuHook> {
            let mut c = cfg;
            c.vcpu = i;
            Box::new(
                EmulatedPmuHook::new(c, Some(sink.clone()))
                    .with_stats(Arc::clone(&stats))
                    .drain_only_at_stop(),
            )
        };
        let report = Vm::run(config, builtin::image("branchy").unwrap(), &hooks).unwrap();
        let out = String::from_utf8_lossy(&console.0.lock().unwrap()).into_owned();
        assert_eq!(report.outcome.exit_code(), 0, "{out}");
        let snaps: Vec<LbrSnapshot> = rx.try_iter().collect();
        let stats = stats.lock().unwrap().clone();
        for vcpu in 0..2u32 {
            let prefix = format!("lbrprof-guest: agent on vCPU {vcpu}: ");
            let line = out
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("{out}"));
            let nums: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            let (written, dropped) = (nums[0], nums[1]);
            assert_eq!(written, crate::abi::AGENT_RING_SLOTS, "{out}");
            assert!(dropped > 0, "the ring overflowed: {out}");
            let got = snaps
                .iter()
                .filter(|s| s.vcpu == vcpu && s.reason == SnapshotReason::Agent)
                .count() as u64;
            assert_eq!(got, written, "vCPU {vcpu}");
            let s = stats.iter().find(|s| s.vcpu == vcpu).unwrap();
            assert_eq!(
                (s.agent_snapshots, s.agent_lost),
                (written, dropped),
                "{out}"
            );
            // Oldest first: the first 32 PMIs, in order.
            let tscs: Vec<u64> = snaps
                .iter()
                .filter(|s| s.vcpu == vcpu)
                .map(|s| s.guest_tsc)
                .collect();
            assert!(tscs.windows(2).all(|w| w[0] <= w[1]), "{tscs:?}");
        }
    }

    #[test]
    fn hooks_learn_the_vcpu_count_from_the_boot_info() {
        if !kvm() {
            return;
        }
        // No with_vcpus: the hooks must still avoid int3 in code both vCPUs run.
        let (sink, rx) = SnapshotSink::bounded(1024);
        let (code, out) = run_on(2, "branchy", "n=100", exact_shim(2003), Some(sink));
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("branchy: n=100"), "{out}");
        let finals = rx
            .try_iter()
            .filter(|s| s.reason == SnapshotReason::Final)
            .count();
        assert_eq!(finals, 2);
    }
}
