//! The boot and system-call ABI between the VMM shim and lbrprof's guest runtime.
//!
//! This file is shared verbatim by both sides: the guest includes it as a module and the
//! host crate (`lbrprof-vmm`) includes it with `#[path]`, so the two can never disagree.
//! It must stay `no_std`-clean: plain constants and `#[repr(C)]` structs only.
//!
//! # Boot protocol (ELF64 images)
//!
//! Every vCPU starts at the image's entry point in 64-bit long mode, ring 0, with
//! interrupts disabled and paging on: the shim identity-maps all guest RAM with 2 MiB
//! pages (user-accessible, writable), loads a flat GDT (code 0x08, data 0x10, a TSS at
//! 0x18) and sets CR0.MP/NE, CR4.OSFXSR/OSXMMEXCPT so SSE works. Registers:
//!
//! * `RDI` = the vCPU index (0 for the bootstrap processor, 1.. for the others),
//! * `RSI` = guest-physical address of a `BootInfo`,
//! * `RSP` = top of a small (4 KiB) per-vCPU boot stack in low memory.
//!
//! # System calls
//!
//! Ring 3 calls the kernel's trap stub `rt_syscall_trap` (a `ud2` at a known address;
//! the #UD handler runs the call and resumes after it). `RAX` = number, arguments in
//! `RDI`, `RSI`, `RDX`; the result comes back in `RAX` (and `RDX` where noted). Neither
//! SYSCALL nor `int 0x80` is relied on: on nested hosts that emulate guest ring 0, KVM's
//! instruction emulator cannot deliver `int n` in protected mode (#UD), and SYSCALL was
//! seen to leave the CPL at 3; a hardware exception is delivered correctly everywhere.
//! (`int 0x80` is still accepted where it works.)
//!
//! Guest arguments the runtime itself understands (all built-ins): `exit=N` overrides the
//! workload's exit code, `rt.cpus` reports the vCPUs that came up, `rt.stats` the cost of
//! ring 0, `rt.agent=PERIOD` runs the workload under the LBR agent (`SYS_AGENT_START`, on
//! every vCPU that runs ring-3 code) and reports its snapshot counts at the end, `rt.smp`
//! runs the workload on every vCPU at once, with the same arguments (vCPU 0 waits for the
//! others; the run's exit code is vCPU 0's, or else the first non-zero one).
//!
//! The console (0x3f8-0x3ff), the exit ports (0xf4, 0x604) and fw_cfg (0x510-0x511) are
//! open to ring 3 through the TSS I/O bitmap, so printing and exiting need no system call.

/// The console: a 16550 UART's registers at `COM1..COM1 + 8` (output through its
/// transmit holding register at `COM1`).
pub const COM1: u16 = 0x3f8;
/// isa-debug-exit: a write of `v` ends the run with exit code `(v << 1) | 1`.
pub const EXIT_PORT: u16 = 0xf4;
/// A 16-bit write of [`POWEROFF_VALUE`] here (QEMU's ACPI PM1a S5) ends the run with 0.
pub const POWEROFF_PORT: u16 = 0x604;
pub const POWEROFF_VALUE: u16 = 0x2000;

/// `BootInfo::magic`: "LBRPBOOT" in little-endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"LBRPBOOT");
/// `BootInfo::version` of this layout.
pub const BOOT_VERSION: u32 = 1;

/// What the shim tells the guest at boot. Lives at [`BootInfo`]'s address in `RSI`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootInfo {
    pub magic: u64,
    pub version: u32,
    /// Number of vCPUs started.
    pub ncpus: u32,
    /// Bytes of guest RAM, starting at guest-physical 0.
    pub mem_bytes: u64,
    /// The guest TSC frequency in kHz (0 when KVM could not say).
    pub tsc_khz: u64,
    /// Guest-physical address and length of the command line (`-- GUEST ARGS`, joined by
    /// single spaces; not NUL-terminated).
    pub cmdline_addr: u64,
    pub cmdline_len: u64,
}

/// Write `RSI` bytes at `RDI` to the console. Returns the byte count.
pub const SYS_WRITE: u64 = 0;
/// Stop the machine with the exit code in `RDI`: 0 is a clean power-off, anything else
/// leaves through the isa-debug-exit port (lbrprof then exits with `(code << 1) | 1`).
pub const SYS_EXIT: u64 = 1;
/// Nanoseconds since boot, from the TSC and `BootInfo::tsc_khz`.
pub const SYS_TIME_NS: u64 = 2;
/// Read the MSR in `RDI` in ring 0. Returns its value and sets `RDX` to 0, or sets `RDX`
/// to 1 when the read raised #GP. (For the PMU agent and for tests of the MSR plumbing.)
pub const SYS_RDMSR: u64 = 3;
/// Write `RSI` to the MSR in `RDI` in ring 0. Returns 0, or -1 when the write raised #GP.
pub const SYS_WRMSR: u64 = 4;
/// NMIs the kernel has taken so far (the PMI path).
pub const SYS_NMI_COUNT: u64 = 5;
/// CPUID leaf `RDI`, subleaf `RSI`, executed in ring 0: `RAX` = EAX | EBX << 32,
/// `RDX` = ECX | EDX << 32. (On the development host ring-3 CPUID is answered without the
/// shim's table — see `lbrcheck` — so guests that need the advertised CPUID ask ring 0.)
pub const SYS_CPUID: u64 = 6;
/// Numbers from here on are reserved for the PMU/LBR agent.
pub const SYS_PMU_BASE: u64 = 16;
/// Start the LBR agent on the calling vCPU: sample the LBR every `RDI` ring-3
/// instructions (fixed counter 0, PMI, freeze on PMI; LBR_SELECT = user branches). The
/// runtime's NMI handler then writes each frozen LBR into this vCPU's [`AgentRing`] (at
/// [`agent_ring_addr`]) and acks the freeze (v4: STATUS_RESET of the overflow and freeze
/// bits; v2: OVF_CTRL, then DEBUGCTL.LBR and GLOBAL_CTRL again), re-armed. Returns 0, or
/// `u64::MAX` when there is no PMU/LBR (#GP), `RDI` is 0, or the vCPU has no ring.
pub const SYS_AGENT_START: u64 = SYS_PMU_BASE;
/// Stop the agent on the calling vCPU. Returns the snapshots written; `RDX` = those
/// dropped (ring full).
pub const SYS_AGENT_STOP: u64 = SYS_PMU_BASE + 1;
/// Park the calling vCPU for good (halt in ring 0): what a vCPU does when it has no
/// more ring-3 work (`rt.smp` workers when they finish). Does not return.
pub const SYS_PARK: u64 = 7;

/// # The agent's snapshot rings (guest-driven snapshots)
///
/// One single-producer ring per vCPU in low guest memory, exported by the shim's memory
/// layout (free RAM below 640 KiB the shim never uses): vCPU `n`'s ring is at
/// [`agent_ring_addr`]`(n)`, for the first [`AGENT_MAX_RINGS`] vCPUs. The vCPU's PMI
/// handler produces (`head`), the shim's hook of the same vCPU consumes (`tail`): the
/// emulated backend whenever the guest acks a freeze (its write of
/// IA32_PERF_GLOBAL_STATUS_RESET / OVF_CTRL), the hardware backend (whose MSRs never exit)
/// on a timer; both when the vCPU stops. Producer and consumer never run at the same time
/// (the consumer runs while its vCPU is out of KVM_RUN).
///
/// `magic` is written last at start, so the shim never reads a ring the guest has not
/// set up; `epoch` counts the agent's starts on this vCPU (a restart zeroes the ring).
///
/// Losses are counted exactly with sequence numbers: every PMI the handler takes gets the
/// next `pmi` number, whether its record fits or not. A full ring (`head - tail ==`
/// [`AGENT_RING_SLOTS`]) drops the record and counts it in `dropped`; the consumer sees
/// the gap in the `pmi` numbers of the records it reads, and `pmis - ` (records read) at
/// the end.
pub const AGENT_RING_ADDR: u64 = 0x6_0000;
/// `AgentRing::magic`: "LBRPRING".
pub const AGENT_RING_MAGIC: u64 = u64::from_le_bytes(*b"LBRPRING");
/// Records in each ring.
pub const AGENT_RING_SLOTS: u64 = 32;
/// Most LBR slots a record holds.
pub const AGENT_MAX_DEPTH: usize = 32;
/// vCPUs that have a ring (lbrprof's runtime sets up at most this many).
pub const AGENT_MAX_RINGS: u32 = 8;
/// Bytes from one vCPU's ring to the next.
pub const AGENT_RING_STRIDE: u64 = 0x7000;

/// A ring's header at [`agent_ring_addr`]; [`AGENT_RING_SLOTS`] [`AgentRecord`]s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentRing {
    pub magic: u64,
    /// Records written so far (the guest increments it after writing one).
    pub head: u64,
    /// Records consumed so far (the shim's).
    pub tail: u64,
    /// Records the guest dropped because the ring was full.
    pub dropped: u64,
    /// PMIs the handler took since the agent started (records written + dropped).
    pub pmis: u64,
    /// The agent's starts on this vCPU (1 for the first).
    pub epoch: u64,
    pub _reserved: [u64; 2],
}

/// One frozen LBR as the guest's PMI handler read it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AgentRecord {
    /// `head` at the time of writing (the record's place in the ring).
    pub seq: u64,
    /// The PMI's sequence number (0 for the agent's first PMI), dropped ones included.
    pub pmi: u64,
    /// The guest TSC in the handler.
    pub tsc: u64,
    /// IA32_PERF_GLOBAL_STATUS in the handler (which counter overflowed; freeze bits).
    pub status: u64,
    /// MSR_LBR_TOS.
    pub tos: u64,
    /// LBR slots read (the depth the guest found: FROM_IP slots up to the first #GP).
    pub depth: u64,
    /// The interrupted context (NMI frame) and its frame pointer.
    pub rip: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// `[from, to, info]` per slot, in MSR index order.
    pub entries: [[u64; 3]; AGENT_MAX_DEPTH],
}

/// Words of an [`AgentRecord`] before its entries.
pub const AGENT_RECORD_HEADER_WORDS: usize = 9;

/// Guest-physical address of vCPU `vcpu`'s ring (meaningful for `vcpu <` [`AGENT_MAX_RINGS`]).
pub const fn agent_ring_addr(vcpu: u32) -> u64 {
    AGENT_RING_ADDR + vcpu as u64 * AGENT_RING_STRIDE
}

/// Guest-physical address of record `seq` in vCPU `vcpu`'s ring.
pub const fn agent_record_addr(vcpu: u32, seq: u64) -> u64 {
    agent_ring_addr(vcpu)
        + core::mem::size_of::<AgentRing>() as u64
        + (seq % AGENT_RING_SLOTS) * core::mem::size_of::<AgentRecord>() as u64
}

const _: () = {
    assert!(
        core::mem::size_of::<AgentRecord>()
            == (AGENT_RECORD_HEADER_WORDS + 3 * AGENT_MAX_DEPTH) * 8
    );
    assert!(
        core::mem::size_of::<AgentRing>() as u64
            + AGENT_RING_SLOTS * core::mem::size_of::<AgentRecord>() as u64
            <= AGENT_RING_STRIDE
    );
};
