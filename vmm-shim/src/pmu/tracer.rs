//! The branch tracer: observes a vCPU's branches through breakpoints and single-steps and
//! feeds them to the [`VirtualPmu`].
//!
//! It is a state machine driven by the VMM's per-vCPU hook. After every stop it answers with
//! a [`Resume`]: what to program before the next KVM_RUN (single-step, hardware execute
//! breakpoints, an NMI to inject, or free running with a deadline). Guest state comes through
//! the small [`GuestAccess`] trait, so the whole machine is tested against a fake guest.
//!
//! ## How a branch is observed (≤ 2 exits per branch)
//! From the current RIP the tracer decodes straight-line code up to the next control
//! transfer (a *block*, cached per CR3 and address), puts one hardware breakpoint on that
//! branch and lets the guest run: one exit. Then it single-steps the branch: one exit, and
//! the RIP after the step says whether it was taken and where it went. When the next branch
//! starts right at the landing address, the breakpoint is skipped. Better still, a near
//! branch whose outcome the registers already decide at the breakpoint (a Jcc from RFLAGS, a
//! direct JMP/CALL, a RET from the stack) is accounted right there and the guest runs on to
//! the next branch after its target: one exit for that branch. Instructions between branches
//! are counted from the decoded block, so INST_RETIRED and BR_INST_RETIRED are exact.
//!
//! ## Or without stopping at all: the interpreter
//! At a *clean* stop (the VMM says so through [`GuestAccess::interp_state`]: the vCPU is at
//! an instruction boundary with nothing left for KVM to complete), ring-3 code is not
//! stopped branch by branch but run in the shim by [`super::interp`], which reports each
//! instruction and branch exactly as the breakpoints would have (same counters, same LBR
//! records, same PMI points) and writes the registers back. A sampled window that starts
//! at the free-run deadline is usually interpreted whole: no debug stop at all. The first
//! instruction the interpreter leaves to the CPU ([`super::interp::Halt`]) is where the
//! breakpoints below take over; the next clean stop interprets again. After a PMI the
//! tracer never interprets before the caller has seen the guest where it fired.
//!
//! Far transfers that clear TF on the way (SYSCALL, SYSENTER, INT n/INT3) would not trap
//! after one step, so the tracer also puts a breakpoint on their target (IA32_LSTAR,
//! IA32_SYSENTER_EIP, the IDT gate); IRET and SYSRET get one on the return address they
//! will load.
//!
//! ## Modes
//! * [`TraceMode::Exact`]: every instruction is traced. Counters count one core and one
//!   reference cycle per instruction (a CPI-1 clock), so runs are deterministic and a PMI
//!   lands on the exact instruction whose retirement overflows a counter: the tracer stops
//!   the guest there (a breakpoint mid-block) and asks for the NMI.
//! * [`TraceMode::Sampled`]: the guest runs free while the VMM feeds elapsed guest time as
//!   cycles ([`Tracer::on_free_run`]; instructions advance at a nominal IPC of 1). When
//!   the next overflow is due, the tracer traces a window of `window_branches` taken
//!   branches into the LBR without counting them, then charges the remaining cycles so the
//!   counter overflows right after the window: the PMI finds the last N branches before it.
//!   BR_INST_RETIRED only advances in exact mode.
//!
//! ## Moves the guest does not make
//! The VMM may move the guest between two of its instructions (a Linux program's signal
//! delivered to its handler, `rt_sigreturn` back): [`Tracer::moved`] drops the planned
//! stop and traces on from the new place, so a handler's instructions count like any
//! others and no stale breakpoint is left to find the program by chance later.
//!
//! ## Limitations (documented simplifications)
//! * Asynchronous interrupts other than the shim's own NMI are seen only if they arrive
//!   during a single-step (the step lands somewhere unexpected: recorded as an interrupt);
//!   one taken and returned from while running to a breakpoint goes unseen. The shim's guests
//!   run with interrupts off in exact mode.
//! * Self-modifying code is not detected (decoded blocks are cached).
//! * A Jcc whose target is its own fall-through counts as not taken.

use std::collections::HashMap;

use super::branch::{self, BranchKind, CodeSize, DecodedInsn, Flow, MAX_INSN_LEN};
use super::guest::{GuestAccess, GuestAccessError, GuestCpu};
use super::interp::outside::OutsideConfig;
use super::interp::{Effect, Halt, Interp};
use super::msr::{IA32_LSTAR, IA32_SYSENTER_EIP};
use super::profile::{ExactProfile, Profiler};
use super::vpmu::{RetiredBranch, VirtualPmu};

/// A tracing failure: the guest's registers could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("cannot trace the guest")]
    Guest(#[source] GuestAccessError),
}

impl From<GuestAccessError> for TraceError {
    fn from(e: GuestAccessError) -> Self {
        TraceError::Guest(e)
    }
}

/// The most hardware breakpoints (DR0–DR3) a [`Resume`] asks for.
pub const MAX_BREAKPOINTS: usize = 4;

/// What the VMM programs before re-entering the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Single-step (KVM_GUESTDBG_SINGLESTEP).
    pub single_step: bool,
    /// Hardware execute breakpoints at guest-virtual addresses (KVM_GUESTDBG_USE_HW_BP).
    pub breakpoints: Vec<u64>,
    /// A PMI fired at this stop (the model is frozen as the guest's DEBUGCTL asked).
    pub pmi: bool,
    /// Inject an NMI (KVM_NMI): the PMI, when PMIs go to the guest.
    pub inject_nmi: bool,
    /// The privilege level the guest will be at when it next stops (how the VMM may have to
    /// stop it differs between rings on some hosts).
    pub stop_cpl: u8,
    /// Sampled mode, running free: call [`Tracer::on_free_run`] once this many cycles of
    /// guest time have passed (the VMM arms a timer). `None`: no deadline.
    pub deadline_cycles: Option<u64>,
}

impl Resume {
    /// No guest debugging: the vCPU runs at full speed.
    pub fn is_free(&self) -> bool {
        !self.single_step && self.breakpoints.is_empty()
    }
}

/// How the tracer observes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    Exact,
    Sampled { window_branches: u32 },
}

/// Counts for reports and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracerStats {
    /// Debug exits handled.
    pub exits: u64,
    /// Instructions accounted for (including branches).
    pub instructions: u64,
    /// Taken branches and interrupts/exceptions offered to the LBR. (Between
    /// `instructions` and `branches`: a branch adds one to both, and adjacent the two
    /// adds became one 16-byte load and store, whose load waited for `retire`'s 8-byte
    /// store to `instructions` to reach the cache.)
    pub taken: u64,
    /// Branch instructions retired (taken or not).
    pub branches: u64,
    /// Blocks decoded (cache misses).
    pub blocks_decoded: u64,
    /// Branches whose outcome was computed at the stop before them (no step needed).
    pub predicted: u64,
    /// Stops at an address the tracer did not expect (untracked control flow).
    pub unexpected: u64,
    /// PMIs delivered as NMIs.
    pub nmis: u64,
    /// PMIs left to the caller (not injected).
    pub pmis_consumed: u64,
    /// Sampled mode: tracing windows run.
    pub windows: u64,
    /// Sampled mode: windows cut before their last branch (see [`Tracer::cut_window`]).
    pub windows_cut: u64,
    /// Sampled mode: cycles of guest time dropped because a window started late.
    pub late_cycles: u64,
    /// Instructions the shim's interpreter executed (included in `instructions`).
    pub interpreted: u64,
    /// Of those, instructions run from their pre-resolved fast form.
    pub interpreted_fast: u64,
    /// Interpreting stretches started.
    pub interp_runs: u64,
    /// Stretches that ended at an instruction the interpreter left to the CPU (the
    /// breakpoint machinery took over there).
    pub interp_halts: u64,
    /// Why those stretches ended (the instructions worth interpreting next).
    pub halt_reasons: HaltCounts,
    /// Instructions the pinned outside world answers that the CPU ran anyway (the
    /// interpreter could not run there: turned off, or a state it refuses), reading the
    /// host's values.
    pub outside_on_cpu: u64,
    /// Exact mode: the passes of REP string instructions in user code beyond the first
    /// of each, which valgrind counts as instructions and the CPU does not (`k`
    /// iterations are `k + 1` passes): `instructions` + this is valgrind's I refs.
    pub repeat_passes: u64,
}

/// Counts per [`Halt`] reason, for the first [`HaltCounts::SLOTS`] distinct reasons seen
/// (later ones are counted together): fixed size, so the statistics stay `Copy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HaltCounts {
    slots: [Option<(Halt, u64)>; HaltCounts::SLOTS],
    /// Halts whose reason found no free slot.
    pub other: u64,
}

impl HaltCounts {
    /// Distinct reasons counted apart.
    pub const SLOTS: usize = 32;

    pub fn add(&mut self, h: Halt) {
        for slot in self.slots.iter_mut() {
            match slot {
                Some((k, n)) if *k == h => {
                    *n += 1;
                    return;
                }
                None => {
                    *slot = Some((h, 1));
                    return;
                }
                Some(_) => {}
            }
        }
        self.other += 1;
    }

    /// The `n` most frequent reasons, most frequent first (ties by name, so the order is
    /// deterministic).
    pub fn top(&self, n: usize) -> Vec<(Halt, u64)> {
        let mut v: Vec<(Halt, u64)> = self.slots.iter().flatten().copied().collect();
        v.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        v.truncate(n);
        v
    }
}

/// A straight-line run of instructions ending at a control transfer (or a scan limit).
#[derive(Clone, Debug)]
struct Block {
    /// Addresses of the sequential instructions before the stop.
    insns: Vec<u64>,
    stop: Stop,
    /// The block is one REP-prefixed string instruction whose iterations are counted
    /// (exact-mode profiling).
    repeat: Option<Repeat>,
}

/// A REP-prefixed string instruction, as its iterations are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Repeat {
    /// The count register its address size uses: CX, ECX or RCX.
    mask: u64,
    /// REPE/REPNE CMPS/SCAS: the ZF value that lets it repeat; `None` for the others,
    /// which repeat until the count is zero.
    while_zf: Option<bool>,
}

impl Repeat {
    /// How many more times than once valgrind counts the instruction, given the count
    /// register before and after it ran and RFLAGS after. valgrind runs a REP string
    /// instruction as a loop of itself: each pass checks the count (zero: go on to the
    /// next instruction), does one iteration, and goes round again unless a REPE/REPNE
    /// condition failed. So `k` iterations are `k + 1` passes, or `k` when the condition
    /// cut the loop short (a zero count to begin with is one pass).
    fn extra_passes(self, before: u64, after: u64, rflags: Option<u64>) -> u64 {
        let after = after & self.mask;
        let iterations = before.wrapping_sub(after) & self.mask;
        let cut_short = match self.while_zf {
            None => false,
            Some(zf) => {
                after != 0 || rflags.is_some_and(|f| (f & super::interp::alu::ZF != 0) != zf)
            }
        };
        if cut_short {
            iterations.saturating_sub(1)
        } else {
            iterations
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// A branch or trap instruction to single-step.
    Insn(DecodedInsn),
    /// Decoding stopped (length limit or unreadable bytes) before this address; a new
    /// block starts there.
    Limit(u64),
    /// Before an instruction the pinned outside world answers (exact mode): the CPU must
    /// never run it, so the interpreter does ([`Tracer::plan_native`]).
    Outside(DecodedInsn),
}

impl Block {
    fn stop_addr(&self) -> u64 {
        match self.stop {
            Stop::Insn(i) | Stop::Outside(i) => i.ip,
            Stop::Limit(a) => a,
        }
    }

    /// The address of position `idx` (0..=insns.len(); the last is the stop).
    fn addr(&self, idx: usize) -> u64 {
        self.insns
            .get(idx)
            .copied()
            .unwrap_or_else(|| self.stop_addr())
    }

    fn index_of(&self, rip: u64, from: usize) -> Option<usize> {
        (from..=self.insns.len()).find(|&i| self.addr(i) == rip)
    }
}

/// Instructions one interpreting stretch may run in exact mode before the vCPU runs again
/// (so the VMM still gets to check for stop requests and timeouts).
const INTERP_EXACT_BUDGET: u64 = 1 << 20;
/// Instructions a sampled window may take in the interpreter (a window whose branches do
/// not come within this falls back to breakpoints).
const INTERP_WINDOW_BUDGET: u64 = 1 << 16;

/// Prints an interpreter halt (with [`Tracer::set_log_halts`], for finding the
/// instructions worth implementing next).
fn log_halt(rip: u64, h: Halt) {
    eprintln!("lbrprof: lbr: interpreter halted at {rip:#x}: {h:?}");
}

/// Longest block decoded in one go.
const MAX_BLOCK_INSNS: usize = 512;
/// Cached blocks before the cache is flushed.
const MAX_CACHED_BLOCKS: usize = 1 << 16;
const GUEST_PAGE: u64 = 4096;

#[derive(Clone, Debug)]
enum State {
    /// Not tracing: sampled mode between windows (or before `start`).
    Free,
    /// Running to a breakpoint at position `target` of `block`; positions before `done`
    /// have been accounted for.
    Running {
        block: usize,
        done: usize,
        target: usize,
        cpl: u8,
    },
    /// Single-stepping over `insn`.
    Stepping { insn: DecodedInsn, cpl: u8 },
    /// An NMI was injected at `from`; a breakpoint waits at `handler`.
    AwaitingNmi { from: u64, handler: u64, cpl: u8 },
    /// Exact mode, not following the NMI handler: an NMI was injected at `rip` and the
    /// handler runs untraced; a breakpoint at `rip` resumes tracing when it returns.
    AwaitingReturn { rip: u64 },
}

/// The per-vCPU branch tracer.
#[derive(Debug)]
pub struct Tracer {
    mode: TraceMode,
    state: State,
    blocks: Vec<Block>,
    index: HashMap<(u64, u64, CodeSize), usize>,
    /// Sampled mode: taken branches still to record in the current window (0 = no window).
    window_left: u32,
    /// Sampled mode: the window just recorded its last branch.
    window_done: bool,
    /// Whether PMIs are delivered to the guest as NMIs (else the caller consumes them).
    inject_pmis: bool,
    /// Whether the guest's NMI handler is traced after an injected PMI.
    follow_nmi: bool,
    /// Whether clean stops run the guest in the shim's interpreter.
    interpret: bool,
    interp: Interp,
    /// Sampled mode: end each window before its first branch (benchmarking only).
    empty_windows: bool,
    /// Print each interpreter halt on stderr.
    log_halts: bool,
    last: Resume,
    stats: TracerStats,
    /// Exact mode: the per-instruction and per-call profile, when asked for.
    profile: Option<Box<Profiler>>,
    /// A counted REP block running: its block index and the count register (masked)
    /// before its first iteration.
    repeat_from: Option<(usize, u64)>,
    /// Exact mode: what the interpreter answers from a pinned world (the blocks end before
    /// such an instruction, so the CPU never runs it where the interpreter can).
    outside: OutsideConfig,
}

impl Tracer {
    pub fn new(mode: TraceMode) -> Tracer {
        Tracer {
            mode,
            state: State::Free,
            blocks: Vec::new(),
            index: HashMap::new(),
            window_left: 0,
            window_done: false,
            inject_pmis: true,
            follow_nmi: true,
            interpret: false,
            interp: Interp::default(),
            empty_windows: false,
            log_halts: false,
            last: Resume::default(),
            stats: TracerStats::default(),
            profile: None,
            repeat_from: None,
            outside: OutsideConfig::default(),
        }
    }

    pub fn mode(&self) -> TraceMode {
        self.mode
    }

    /// Whether a PMI becomes an NMI in the guest (the default) or is only reported in
    /// [`Resume::pmi`] for the caller to consume (shim-driven sampling, where the guest has
    /// no PMI handler).
    pub fn set_inject_pmis(&mut self, inject: bool) {
        self.inject_pmis = inject;
    }

    /// Whether to trace the guest's NMI handler after injecting a PMI (the default): the
    /// interrupt is recorded as a far branch and the handler's instructions are counted.
    /// When off, the handler runs untraced and tracing picks up again in the interrupted
    /// code (for VMMs that cannot stop the guest inside the handler's context reliably).
    pub fn set_follow_nmi_handler(&mut self, follow: bool) {
        self.follow_nmi = follow;
    }

    /// Whether to run the guest in the shim's [interpreter](super::interp) at stops that
    /// allow it ([`GuestAccess::interp_state`]) instead of stopping it at every branch
    /// (default off here; the emulated backend turns it on).
    pub fn set_interpreter(&mut self, on: bool) {
        self.interpret = on;
    }

    /// Sampled mode, for measuring what a sample costs beyond its window: each window ends
    /// before its first branch (the PMI fires at once; snapshots hold no new branches).
    pub fn set_empty_windows(&mut self, on: bool) {
        self.empty_windows = on;
    }

    /// Whether to print every interpreter halt (each hand-back to breakpoints) on stderr.
    pub fn set_log_halts(&mut self, on: bool) {
        self.log_halts = on;
    }

    /// Exact mode: RDRAND, RDSEED, RDTSC, RDTSCP and RDPID read the pinned world `cfg`
    /// as vCPU `vcpu` ([`super::interp::outside`]) wherever the interpreter runs; the
    /// breakpoints stop the CPU before each one so that it does. Sampled mode leaves the
    /// guest on the CPU, which reads the host's.
    pub fn set_outside(&mut self, cfg: OutsideConfig, vcpu: u32) {
        if !self.counting() {
            return;
        }
        self.outside = cfg;
        self.interp.set_outside(cfg, vcpu);
        self.blocks.clear();
        self.index.clear();
    }

    /// Exact mode: also count every user-code instruction and call
    /// ([`super::profile::is_user`]) for a profile
    /// ([`super::profile`]); [`Tracer::take_profile`] hands it over at the end.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = (on && self.counting()).then(Box::default);
        // Profiling decodes blocks differently (REP string instructions alone).
        self.blocks.clear();
        self.index.clear();
    }

    /// The exact-mode profile counted so far (closing open calls), if profiling is on.
    pub fn take_profile(&mut self, vcpu: u32) -> Option<ExactProfile> {
        self.profile.take().map(|mut p| p.finish(vcpu))
    }

    pub fn stats(&self) -> TracerStats {
        self.stats
    }

    /// Whether the tracer is following the guest instruction by instruction right now.
    /// A sampled window stays open (`window_left`) across a stop that left the state
    /// `Free`; it must not be taken for free running, or the next exit would open a new
    /// window over it and the window would never close.
    pub fn tracing(&self) -> bool {
        !matches!(self.state, State::Free) || self.window_left > 0
    }

    /// Sampled mode, at a stop whose instructions and branches are accounted (after
    /// [`Tracer::on_debug_exit`], or [`Tracer::sync`] at another exit): ends the open
    /// window here with the branches it recorded so far, as if its last branch had come.
    /// The counter overflows now and the PMI follows (its snapshot holds fewer than the
    /// window's branches, all of them real and in order); `None` without an open window.
    /// For a caller whose window runs too long (a loop of exits, a long string copy).
    pub fn cut_window(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
    ) -> Result<Option<Resume>, TraceError> {
        if !matches!(self.mode, TraceMode::Sampled { .. }) || self.window_left == 0 {
            return Ok(None);
        }
        self.stats.windows_cut += 1;
        self.window_left = 0;
        self.window_done = true;
        self.state = State::Free;
        let cpu = g.cpu()?;
        let r = self.after_stop(g, pmu, &cpu)?;
        Ok(Some(self.remember(r)))
    }

    /// The vCPU runs another program: no stop planned in the old one's code holds, and
    /// its decoded blocks may name code that is gone (a new address space may even reuse
    /// a page-table root). Free running until [`Self::start`] plans again.
    pub fn forget_program(&mut self) {
        self.state = State::Free;
        self.window_left = 0;
        self.window_done = false;
        self.blocks.clear();
        self.index.clear();
        self.last = Resume::default();
    }

    /// Before the vCPU first runs.
    pub fn start(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
    ) -> Result<Resume, TraceError> {
        let cpu = g.cpu()?;
        let r = match self.mode {
            TraceMode::Exact => self.plan_at(g, pmu, &cpu)?,
            TraceMode::Sampled { .. } => self.free(pmu, cpu.cpl),
        };
        Ok(self.remember(r))
    }

    fn remember(&mut self, r: Resume) -> Resume {
        self.last = r.clone();
        r
    }

    fn free(&mut self, pmu: &VirtualPmu, cpl: u8) -> Resume {
        self.state = State::Free;
        // The deadline at the current privilege level, else at the other one: a PMI
        // handler (ring 0) re-arming a user-only counter must still get a deadline, or
        // the guest, back in ring 3 and making no exits, would never be sampled again.
        let other = if cpl == 0 { 3 } else { 0 };
        Resume {
            deadline_cycles: pmu
                .instructions_until_pmi(cpl)
                .or_else(|| pmu.instructions_until_pmi(other)),
            ..Resume::default()
        }
    }

    /// Sampled mode, running free: `cycles` of guest time passed at `cpl` since the last
    /// call. Counts them (and as many instructions, IPC 1); when the deadline is reached,
    /// opens a tracing window instead.
    pub fn on_free_run(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
        cycles: u64,
        cpl: u8,
    ) -> Result<Resume, TraceError> {
        let TraceMode::Sampled { window_branches } = self.mode else {
            return Ok(self.last.clone());
        };
        if self.tracing() {
            return Ok(self.last.clone());
        }
        let due = pmu.instructions_until_pmi(cpl);
        let r = match due {
            Some(due) if cycles + 1 >= due => {
                // Leave the counter one short of overflowing; the window's end tips it.
                let feed = due - 1;
                pmu.on_instructions(feed, cpl);
                pmu.on_cycles(feed, cpl);
                self.stats.late_cycles += cycles - feed;
                self.stats.windows += 1;
                self.window_left = window_branches.max(1);
                // The free run before the window was not traced: its first branch's
                // cycles since the previous entry are unknown, not the whole free run.
                pmu.forget_lbr_cycles();
                pmu.clear_lbr();
                let cpu = g.cpu()?;
                if self.empty_windows {
                    // The sample's stop without its window (see `set_empty_windows`).
                    self.window_left = 0;
                    self.window_done = true;
                    self.after_stop(g, pmu, &cpu)?
                } else {
                    self.plan_at(g, pmu, &cpu)?
                }
            }
            _ => {
                pmu.on_instructions(cycles, cpl);
                pmu.on_cycles(cycles, cpl);
                self.free(pmu, cpl)
            }
        };
        Ok(self.remember(r))
    }

    /// Any non-debug exit while tracing (MSR, I/O, HLT, ...), before the exit is served:
    /// accounts the instructions up to the current RIP so counters read exactly.
    pub fn sync(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
    ) -> Result<(), TraceError> {
        let State::Running {
            block,
            done,
            target,
            cpl,
        } = self.state
        else {
            return Ok(());
        };
        let cpu = g.cpu()?;
        match self.blocks[block].index_of(cpu.rip, done) {
            Some(i) if i <= target => {
                let at = self.blocks[block].addr(done);
                self.retire(pmu, (i - done) as u64, cpl, at);
                self.note_repeat(block, done, i, cpl, &cpu);
                self.state = State::Running {
                    block,
                    done: i,
                    target,
                    cpl,
                };
            }
            _ => self.stats.unexpected += 1,
        }
        Ok(())
    }

    /// After a non-debug exit was served (e.g. a WRMSR that reprogrammed a counter): the
    /// debug set-up for the next KVM_RUN, re-planned for the PMU's new state.
    pub fn replan(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
    ) -> Result<Resume, TraceError> {
        let r = match self.state {
            State::Running {
                block, done, cpl, ..
            } => {
                let cpu = g.cpu()?;
                if pmu.take_pmi() {
                    self.deliver_pmi(g, pmu, &cpu)?
                } else if self.blocks[block].index_of(cpu.rip, done) == Some(done)
                    && done < self.blocks[block].insns.len()
                {
                    self.plan_in(pmu, block, done, cpl, None)
                } else {
                    // At the block's stop (an exit on its last instruction left the guest
                    // there), or not where `sync` left it (an event moved the guest):
                    // start afresh from here.
                    self.plan_native(g, pmu, &cpu)?
                }
            }
            State::Free => {
                let cpu = g.cpu()?;
                if pmu.take_pmi() {
                    self.deliver_pmi(g, pmu, &cpu)?
                } else if self.mode == TraceMode::Exact || self.window_left > 0 {
                    self.plan_native(g, pmu, &cpu)?
                } else {
                    self.free(pmu, cpu.cpl)
                }
            }
            State::Stepping { .. } | State::AwaitingNmi { .. } | State::AwaitingReturn { .. } => {
                Resume {
                    // The same debug set-up; an NMI asked for earlier is not asked for again.
                    // (A PMI raised meanwhile stays pending until the guest is back.)
                    pmi: false,
                    inject_nmi: false,
                    ..self.last.clone()
                }
            }
        };
        Ok(self.remember(r))
    }

    /// The VMM moved the guest between two of its instructions, by no branch of its own
    /// (a signal delivered at a kick: the vCPU now stands at the handler): the stop
    /// planned for where it stood is dropped, and tracing goes on from where it stands,
    /// as from any stop whose instructions are accounted (the instructions up to the
    /// move were, at the exit that preceded it). No branch is recorded for the move: the
    /// guest took none (the kernel it stands for would have). `None` when nothing was
    /// planned: running free, or waiting for an injected NMI's handler to return.
    pub fn moved(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
    ) -> Result<Option<Resume>, TraceError> {
        match self.state {
            State::AwaitingNmi { .. } | State::AwaitingReturn { .. } => return Ok(None),
            State::Free if !self.counting() && self.window_left == 0 => return Ok(None),
            _ => {}
        }
        self.repeat_from = None;
        self.state = State::Free;
        let cpu = g.cpu()?;
        let r = self.after_stop(g, pmu, &cpu)?;
        Ok(Some(self.remember(r)))
    }

    /// A debug exit (breakpoint or single-step) of the traced vCPU.
    pub fn on_debug_exit(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
    ) -> Result<Resume, TraceError> {
        self.stats.exits += 1;
        let cpu = g.cpu()?;
        match std::mem::replace(&mut self.state, State::Free) {
            State::Free => {}
            State::Running {
                block,
                done,
                target,
                cpl,
            } => match self.blocks[block].index_of(cpu.rip, done) {
                Some(i) if i <= target => {
                    let at = self.blocks[block].addr(done);
                    self.retire(pmu, (i - done) as u64, cpl, at);
                    self.note_repeat(block, done, i, cpl, &cpu);
                }
                _ => {
                    self.repeat_from = None;
                    self.stats.unexpected += 1;
                }
            },
            State::Stepping { insn, cpl } => self.complete_step(pmu, insn, cpl, &cpu),
            State::AwaitingReturn { rip } => {
                if cpu.rip != rip {
                    self.stats.unexpected += 1;
                }
            }
            State::AwaitingNmi { from, handler, cpl } => {
                if cpu.rip == handler {
                    self.branch(
                        pmu,
                        RetiredBranch {
                            from,
                            to: handler,
                            fallthrough: from,
                            kind: BranchKind::Interrupt,
                            taken: true,
                            cpl_before: cpl,
                            cpl_after: cpu.cpl,
                        },
                    );
                } else {
                    self.stats.unexpected += 1;
                }
            }
        }
        let r = self.after_stop(g, pmu, &cpu)?;
        Ok(self.remember(r))
    }

    /// What follows a stop whose instructions and branches are accounted: the end of a
    /// sampled window, a PMI, or tracing on from `cpu`.
    fn after_stop(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
        cpu: &GuestCpu,
    ) -> Result<Resume, TraceError> {
        let closing = std::mem::take(&mut self.window_done);
        if closing && let Some(due) = pmu.instructions_until_pmi(cpu.cpl) {
            // The window recorded its branches: the time it stood for tips the counter.
            pmu.on_instructions(due, cpu.cpl);
            pmu.on_cycles(due, cpu.cpl);
        }
        let sampled = matches!(self.mode, TraceMode::Sampled { .. });
        if pmu.take_pmi() {
            self.deliver_pmi(g, pmu, cpu)
        } else if sampled && self.window_left == 0 {
            Ok(self.free(pmu, cpu.cpl))
        } else {
            self.plan_at(g, pmu, cpu)
        }
    }

    /// Runs the guest in the interpreter from a clean stop, accounting every instruction
    /// and branch as the breakpoints would. Returns the plan when the stretch ended the
    /// window or raised a PMI; otherwise `None` with `cpu` moved to where the interpreter
    /// stopped (an instruction it leaves to the CPU), for the breakpoints to go on from.
    /// At most `max` instructions run (fewer at the stretch's own budget).
    fn interpret(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
        cpu: &mut GuestCpu,
        max: u64,
    ) -> Result<Option<Resume>, TraceError> {
        if !self.interpret || cpu.cpl != 3 || (!self.counting() && self.window_left == 0) {
            return Ok(None);
        }
        let Some(state) = g.interp_state() else {
            return Ok(None);
        };
        if state.refusal().is_some() || state.rip != cpu.rip {
            return Ok(None);
        }
        let budget = if self.counting() {
            INTERP_EXACT_BUDGET
        } else {
            INTERP_WINDOW_BUDGET
        }
        .min(max);
        let mut interp = std::mem::take(&mut self.interp);
        let fast_before = interp.fast_steps();
        let mut session = interp.session(g, state);
        let mut ran = 0u64;
        let mut ended = false;
        let mut halt = None;
        // Exact mode retires straight-line instructions in batches (one counter update per
        // batch, not per instruction), each batch ending before the instruction that could
        // overflow a counter with PMI enabled, so a PMI still fires on that very
        // instruction. The interpreter runs a batch per call (`Session::run`): up to the
        // next branch, or as many as may retire before that instruction. `room`:
        // instructions that can retire before the one that overflows (room 1: the next one
        // does). Every interpreted instruction counts one instruction and one cycle, so it
        // shrinks by one per instruction; a PMI ends the stretch. Sampled windows count
        // nothing per instruction (no counter can overflow on one): their batches end only
        // at branches, where the window may end.
        let counting = self.counting();
        let until_pmi = |pmu: &VirtualPmu| {
            if counting {
                pmu.instructions_until_pmi(state.cpl)
                    .unwrap_or(u64::MAX)
                    .max(1)
            } else {
                u64::MAX
            }
        };
        let mut room = until_pmi(pmu);
        let (mut pending, mut pending_at) = (0u64, 0u64);
        while ran < budget {
            // (pending < room here: a batch that reaches room is retired below.)
            if pending == 0 {
                pending_at = session.rip();
            }
            session.set_retired(self.stats.instructions + pending);
            let (n, r) = session.run((budget - ran).min(room - pending));
            // REP string iterations: passes valgrind counts (see `interp/string.rs`).
            for (ip, extra) in session.take_repeats() {
                self.stats.repeat_passes += extra;
                if let Some(p) = &mut self.profile {
                    p.repeat(ip, extra);
                }
            }
            ran += n;
            pending += n;
            let step = match r {
                Ok(Some(step)) => step,
                Ok(None) => {
                    if pending < room {
                        continue; // The budget is spent.
                    }
                    // Room was reached: the instruction the PMI was due on retires now.
                    self.retire(pmu, pending, state.cpl, pending_at);
                    pending = 0;
                    if pmu.pmi_pending() {
                        ended = true;
                        break;
                    }
                    room = until_pmi(pmu);
                    continue;
                }
                Err(h) => {
                    halt = Some(h);
                    break;
                }
            };
            ran += 1;
            let Effect::Branch { kind, taken, to } = step.effect else {
                continue; // (run() returns branches only.)
            };
            let b = RetiredBranch {
                from: step.ip,
                to,
                fallthrough: step.next,
                kind,
                taken,
                cpl_before: state.cpl,
                cpl_after: state.cpl,
            };
            // The branch's LBR record counts the cycles before it.
            if counting {
                self.retire_then_branch(pmu, pending, pending_at, b);
            } else {
                if pending > 0 {
                    self.retire(pmu, pending, state.cpl, pending_at);
                }
                self.branch(pmu, b);
            }
            room -= pending;
            pending = 0;
            room = room.saturating_sub(1);
            if self.window_done || pmu.pmi_pending() {
                ended = true;
                break;
            }
            if room == 0 || !counting {
                room = until_pmi(pmu);
            }
        }
        if pending > 0 {
            self.retire(pmu, pending, state.cpl, pending_at);
        }
        let after = *session.state();
        let xmm = session.xmm_to_write_back().copied();
        let ymm_hi = session.ymm_hi_to_write_back().copied();
        drop(session);
        self.stats.interpreted_fast += interp.fast_steps() - fast_before;
        self.interp = interp;
        self.stats.interp_runs += 1;
        self.stats.interpreted += ran;
        if let Some(h) = halt {
            self.stats.interp_halts += 1;
            self.stats.halt_reasons.add(h);
            if self.log_halts {
                log_halt(after.rip, h);
            }
        }
        if ran == 0 {
            return Ok(None);
        }
        if let Some(x) = xmm {
            g.set_xmm(&x, ymm_hi.as_ref())?;
        }
        g.set_interp_state(&after)?;
        cpu.rip = after.rip;
        cpu.rsp = after.gpr[4];
        cpu.rbp = after.gpr[5];
        cpu.rcx = after.gpr[1];
        cpu.rflags = Some(after.rflags);
        if ended {
            return self.after_stop(g, pmu, cpu).map(Some);
        }
        Ok(None)
    }

    fn counting(&self) -> bool {
        self.mode == TraceMode::Exact
    }

    /// After positions `done..i` of `block` retired: when that retired a counted REP
    /// block's instruction, the passes valgrind counts beyond the first go to the profile
    /// as instructions of their own ([`Repeat::extra_passes`]; the PMU counts one
    /// instruction, as the CPU does). The count register fell by one per iteration from
    /// what it was when the block started (an exit inside the instruction, a page fault,
    /// leaves it counting).
    fn note_repeat(&mut self, block: usize, done: usize, i: usize, cpl: u8, cpu: &GuestCpu) {
        let Some(r) = self.blocks[block].repeat else {
            self.repeat_from = None;
            return;
        };
        match self.repeat_from {
            Some((b, before)) if b == block && done == 0 && i > 0 => {
                self.repeat_from = None;
                if super::profile::is_user(cpl, self.blocks[block].insns[0]) {
                    let extra = r.extra_passes(before, cpu.rcx, cpu.rflags);
                    self.stats.repeat_passes += extra;
                    if let Some(p) = &mut self.profile {
                        p.repeat(self.blocks[block].insns[0], extra);
                    }
                }
            }
            // Not run yet, or interrupted inside: goes on counting from where it began.
            _ if i == 0 => {}
            _ => self.repeat_from = None,
        }
    }

    /// `n` sequential instructions retired at `cpl`, the first at `at`.
    #[inline(always)]
    fn retire(&mut self, pmu: &mut VirtualPmu, n: u64, cpl: u8, at: u64) {
        self.note_retired(n, cpl, at);
        if self.counting() {
            pmu.on_instructions(n, cpl);
            pmu.on_cycles(n, cpl);
        } else {
            pmu.on_lbr_cycles(n);
        }
    }

    /// Exact mode: [`Tracer::retire`] of `n` instructions from `at`, then
    /// [`Tracer::branch`] of `b`, at `b.cpl_before`, with one call into the PMU for both.
    #[inline(always)]
    fn retire_then_branch(&mut self, pmu: &mut VirtualPmu, n: u64, at: u64, b: RetiredBranch) {
        debug_assert!(self.counting());
        self.note_retired(n, b.cpl_before, at);
        self.note_branch(&b);
        pmu.on_batch_then_branch(n, b);
    }

    #[inline(always)]
    fn branch(&mut self, pmu: &mut VirtualPmu, b: RetiredBranch) {
        self.note_branch(&b);
        if self.counting() {
            if b.kind.is_instruction() {
                pmu.on_cycles(1, b.cpl_before);
            }
            pmu.on_branch(b);
        } else {
            pmu.on_lbr_cycles(1);
            pmu.on_branch_lbr_only(b);
            if b.taken && self.window_left > 0 {
                self.window_left -= 1;
                self.window_done = self.window_left == 0;
            }
        }
    }

    /// The statistics' and the profile's part of [`Tracer::retire`].
    #[inline(always)]
    fn note_retired(&mut self, n: u64, cpl: u8, at: u64) {
        self.stats.instructions += n;
        if n > 0
            && let Some(p) = &mut self.profile
        {
            p.retire(n, cpl, at);
        }
    }

    /// The statistics' and the profile's part of [`Tracer::branch`].
    #[inline(always)]
    fn note_branch(&mut self, b: &RetiredBranch) {
        if let Some(p) = &mut self.profile {
            p.branch(b);
        }
        if b.kind.is_instruction() {
            self.stats.instructions += 1;
            self.stats.branches += 1;
        }
        if b.taken {
            self.stats.taken += 1;
        }
    }

    fn complete_step(&mut self, pmu: &mut VirtualPmu, insn: DecodedInsn, cpl: u8, cpu: &GuestCpu) {
        let fallthrough = insn.fallthrough();
        let to = cpu.rip;
        let mut b = RetiredBranch {
            from: insn.ip,
            to,
            fallthrough,
            kind: BranchKind::Exception,
            taken: true,
            cpl_before: cpl,
            cpl_after: cpu.cpl,
        };
        match insn.flow {
            Flow::Sequential | Flow::Trap if to == fallthrough => {
                self.retire(pmu, 1, cpl, insn.ip);
                return;
            }
            Flow::Sequential | Flow::Trap => {
                // The instruction faulted: an exception, from the faulting instruction.
            }
            Flow::Branch { kind, target } => {
                b.kind = kind;
                b.taken = match kind {
                    BranchKind::Jcc | BranchKind::SoftInt => to != fallthrough,
                    _ => true,
                };
                if let Some(t) = target
                    && to != t
                    && to != fallthrough
                {
                    // Neither path of a direct branch: an event intervened.
                    self.stats.unexpected += 1;
                    b.kind = BranchKind::Exception;
                    b.taken = true;
                }
            }
        }
        self.branch(pmu, b);
    }

    /// Queues the NMI for a PMI and waits for the guest at the NMI handler (exact mode and
    /// inside a window) or lets it run free (sampled mode after the window).
    fn deliver_pmi(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
        cpu: &GuestCpu,
    ) -> Result<Resume, TraceError> {
        let follow = self.counting() || self.window_left > 0;
        if !self.inject_pmis {
            // The caller consumes the PMI, re-arms the counters and then re-plans
            // ([`Tracer::replan`]) from the state left here. Planning now as well would
            // account a branch the plan predicts (`predict_over`) twice: once here and once
            // in the re-plan, since the guest has not moved in between.
            self.stats.pmis_consumed += 1;
            self.state = State::Free;
            return Ok(Resume {
                pmi: true,
                ..Resume::default()
            });
        }
        self.stats.nmis += 1;
        if follow
            && self.follow_nmi
            && let Some(handler) = idt_handler(g, cpu, 2)
        {
            self.state = State::AwaitingNmi {
                from: cpu.rip,
                handler,
                cpl: cpu.cpl,
            };
            return Ok(Resume {
                breakpoints: vec![handler],
                pmi: true,
                inject_nmi: true,
                stop_cpl: 0,
                ..Resume::default()
            });
        }
        // Not following the handler: it runs untraced, and tracing resumes in the
        // interrupted code once the handler returns to it. In exact mode a breakpoint at
        // the interrupted instruction makes sure of that: running free would lose the rest
        // of the run (the guest may make no exit until it ends), and a replan at one of
        // the handler's own MSR exits would start tracing a context that cannot be
        // followed (see `set_follow_nmi_handler`).
        if self.counting() {
            self.state = State::AwaitingReturn { rip: cpu.rip };
            return Ok(Resume {
                breakpoints: vec![cpu.rip],
                pmi: true,
                inject_nmi: true,
                stop_cpl: cpu.cpl,
                ..Resume::default()
            });
        }
        let mut r = if follow {
            self.plan_native(g, pmu, cpu)?
        } else {
            self.free(pmu, cpu.cpl)
        };
        r.pmi = true;
        r.inject_nmi = true;
        Ok(r)
    }

    /// Plans from the current RIP: interprets from there when the stop allows it, then
    /// plans the breakpoints from wherever that leaves the guest.
    fn plan_at(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
        cpu: &GuestCpu,
    ) -> Result<Resume, TraceError> {
        let mut cpu = *cpu;
        if let Some(r) = self.interpret(g, pmu, &mut cpu, u64::MAX)? {
            return Ok(r);
        }
        self.plan_native(g, pmu, &cpu)
    }

    /// Plans breakpoints from the current RIP, starting a block there (no interpreting:
    /// after a PMI the caller must see the guest exactly where it fired), except for an
    /// instruction the pinned world answers, which only the interpreter may run: wherever
    /// a stretch ended before one (its budget, a PMI, a fall-back, an exit), it runs it
    /// here before the breakpoints go on.
    fn plan_native(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
        cpu: &GuestCpu,
    ) -> Result<Resume, TraceError> {
        let mut cpu = *cpu;
        loop {
            let block = self.block_at(g, &cpu);
            if !self.blocks[block].insns.is_empty() {
                return Ok(self.plan_in(pmu, block, 0, cpu.cpl, Some(cpu.rcx)));
            }
            match self.blocks[block].stop {
                Stop::Insn(insn) => {
                    if let Some(r) = self.predict_over(g, pmu, insn, &cpu) {
                        return Ok(r);
                    }
                    return Ok(self.step_over(g, insn, &cpu));
                }
                Stop::Outside(insn) => {
                    let at = cpu.rip;
                    if let Some(r) = self.interpret(g, pmu, &mut cpu, 1)? {
                        return Ok(r);
                    }
                    if cpu.rip == at {
                        // The interpreter cannot run here (turned off, or a state it
                        // refuses): the CPU must, and reads the host's world. Counted.
                        self.stats.outside_on_cpu += 1;
                        return Ok(self.step_over(g, insn, &cpu));
                    }
                }
                Stop::Limit(_) => return Ok(self.plan_in(pmu, block, 0, cpu.cpl, Some(cpu.rcx))),
            }
        }
    }

    /// At a near branch whose outcome the registers already decide (Jcc from RFLAGS,
    /// direct JMP/CALL, RET from the stack), accounts it now and runs straight to the next
    /// stop after its target: one exit for this branch instead of two. Declined when the
    /// branch itself could raise a PMI (that must stop right after it), when the next stop
    /// would be the branch itself (a one-block loop), and for a sampled window's last branch.
    fn predict_over(
        &mut self,
        g: &mut dyn GuestAccess,
        pmu: &mut VirtualPmu,
        insn: DecodedInsn,
        cpu: &GuestCpu,
    ) -> Option<Resume> {
        let Flow::Branch { kind, target } = insn.flow else {
            return None;
        };
        let fallthrough = insn.fallthrough();
        let to = match kind {
            BranchKind::Jcc => {
                let taken = insn.cond?.holds(cpu.rflags?);
                if taken { target? } else { fallthrough }
            }
            BranchKind::JmpRel | BranchKind::CallRel => target?,
            BranchKind::Ret if cpu.code_size == CodeSize::Bits64 => read_u64(g, cpu.rsp)?,
            _ => return None,
        };
        // (In a sampled window nothing counts traced branches: no PMI can come from one.)
        let pmi_possible = if self.counting() {
            pmu.next_branch_may_pmi(cpu.cpl)
        } else {
            self.window_left <= 1
        };
        if pmi_possible || to == insn.ip {
            return None;
        }
        let at_target = GuestCpu { rip: to, ..*cpu };
        let next = self.block_at(g, &at_target);
        if self.blocks[next].addr(self.blocks[next].insns.len()) == insn.ip {
            return None;
        }
        let taken = kind != BranchKind::Jcc || to != fallthrough || target == Some(fallthrough);
        self.stats.predicted += 1;
        self.branch(
            pmu,
            RetiredBranch {
                from: insn.ip,
                to,
                fallthrough,
                kind,
                taken,
                cpl_before: cpu.cpl,
                cpl_after: cpu.cpl,
            },
        );
        if self.blocks[next].insns.is_empty() {
            // The target is itself a branch: stop there.
            self.state = State::Running {
                block: next,
                done: 0,
                target: 0,
                cpl: cpu.cpl,
            };
            return Some(Resume {
                breakpoints: vec![to],
                stop_cpl: cpu.cpl,
                ..Resume::default()
            });
        }
        Some(self.plan_in(pmu, next, 0, cpu.cpl, Some(cpu.rcx)))
    }

    /// Plans inside a known block, positions before `done` already accounted. `rcx`: the
    /// count register now, when this starts the block afresh (a counted REP block counts
    /// its iterations from it); `None` when re-planning where an exit interrupted it.
    fn plan_in(
        &mut self,
        pmu: &VirtualPmu,
        block: usize,
        done: usize,
        cpl: u8,
        rcx: Option<u64>,
    ) -> Resume {
        if done == 0
            && let (Some(r), Some(rcx)) = (self.blocks[block].repeat, rcx)
        {
            self.repeat_from = Some((block, rcx & r.mask));
        }
        let b = &self.blocks[block];
        let n = b.insns.len();
        let mut target = n;
        if let Some(k) = pmu.instructions_until_pmi(cpl)
            && self.counting()
            && k <= (n - done) as u64
        {
            target = done + k as usize;
        }
        if target == done {
            // At the stop already: only reachable for a Limit stop at the block start,
            // which `plan_at` turns into a new block. Be safe and step.
            self.state = State::Free;
            return Resume {
                single_step: true,
                stop_cpl: cpl,
                ..Resume::default()
            };
        }
        let addr = b.addr(target);
        self.state = State::Running {
            block,
            done,
            target,
            cpl,
        };
        Resume {
            breakpoints: vec![addr],
            stop_cpl: cpl,
            ..Resume::default()
        }
    }

    /// Single-steps the branch (or trap) at the current RIP, with breakpoints on far
    /// targets that a step would not stop at.
    fn step_over(&mut self, g: &mut dyn GuestAccess, insn: DecodedInsn, cpu: &GuestCpu) -> Resume {
        self.state = State::Stepping { insn, cpl: cpu.cpl };
        let mut breakpoints = Vec::new();
        let mut stop_cpl = cpu.cpl;
        if let Flow::Branch { kind, .. } = insn.flow {
            stop_cpl = match kind {
                BranchKind::Syscall | BranchKind::Sysenter | BranchKind::SoftInt => 0,
                BranchKind::Sysret | BranchKind::Sysexit => 3,
                BranchKind::Iret if cpu.code_size == CodeSize::Bits64 => {
                    read_u64(g, cpu.rsp.wrapping_add(8)).map_or(cpu.cpl, |cs| (cs & 3) as u8)
                }
                _ => cpu.cpl,
            };
            let target = match kind {
                BranchKind::Syscall => g.read_msr(IA32_LSTAR).ok(),
                BranchKind::Sysenter => g.read_msr(IA32_SYSENTER_EIP).ok(),
                BranchKind::Sysret => Some(cpu.rcx),
                BranchKind::Iret if cpu.code_size == CodeSize::Bits64 => read_u64(g, cpu.rsp),
                BranchKind::SoftInt => {
                    let mut bytes = [0u8; MAX_INSN_LEN];
                    let n = fetch(g, insn.ip, &mut bytes);
                    branch::soft_int_vector(&bytes[..n], insn.ip, cpu.code_size)
                        .and_then(|v| idt_handler(g, cpu, v))
                }
                _ => None,
            };
            breakpoints.extend(target);
        }
        if insn.flow == Flow::Trap
            && let Some(handler) = idt_handler(g, cpu, VECTOR_UD)
        {
            // A trap instruction (UD2 and friends) raises #UD: the exception clears TF on
            // its way into the handler, so without a breakpoint there the step would only
            // end after the handler's IRET and the instruction after it, folding the
            // exception, the handler's branches and the IRET into one bogus branch.
            breakpoints.push(handler);
            stop_cpl = 0;
        }
        Resume {
            single_step: true,
            breakpoints,
            stop_cpl,
            ..Resume::default()
        }
    }

    /// The cached block starting at the current RIP, decoding it on a miss.
    fn block_at(&mut self, g: &mut dyn GuestAccess, cpu: &GuestCpu) -> usize {
        let key = (cpu.cr3, cpu.rip, cpu.code_size);
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        if self.blocks.len() >= MAX_CACHED_BLOCKS {
            self.blocks.clear();
            self.index.clear();
        }
        self.stats.blocks_decoded += 1;
        let block = decode_block(
            g,
            cpu.rip,
            cpu.code_size,
            self.profile.is_some(),
            self.outside,
        );
        let end = block.stop_addr().saturating_add(MAX_INSN_LEN as u64);
        self.interp.note_code(cpu.cr3, cpu.rip, end);
        self.blocks.push(block);
        let i = self.blocks.len() - 1;
        self.index.insert(key, i);
        i
    }
}

/// Return addresses found by walking the guest's frame pointers from `fp` (innermost
/// first): each frame holds the caller's frame pointer at `[fp]` and the return address at
/// `[fp + 8]`. Stops after `max` frames, at a null or unreadable frame, at a return
/// address in the first page (never code: code built without frame pointers leaves small
/// integers where the walk looks, which would otherwise show up as frames), or when the
/// chain does not move strictly up the stack (so a corrupt chain cannot loop).
pub fn walk_frame_pointers(g: &mut dyn GuestAccess, fp: u64, max: usize) -> Vec<u64> {
    let mut frames = Vec::new();
    let mut fp = fp;
    while frames.len() < max && fp != 0 && fp.is_multiple_of(8) {
        let (Some(next), Some(ret)) = (read_u64(g, fp), read_u64(g, fp.wrapping_add(8))) else {
            break;
        };
        if ret < GUEST_PAGE {
            break;
        }
        frames.push(ret);
        if next <= fp {
            break;
        }
        fp = next;
    }
    frames
}

/// Reads up to 15 bytes at `gva`, stopping at the first unreadable page; returns the count.
fn fetch(g: &mut dyn GuestAccess, gva: u64, buf: &mut [u8; MAX_INSN_LEN]) -> usize {
    if g.read_virt(gva, buf).is_ok() {
        return buf.len();
    }
    let to_page_end = (GUEST_PAGE - gva % GUEST_PAGE) as usize;
    if to_page_end < buf.len() && g.read_virt(gva, &mut buf[..to_page_end]).is_ok() {
        return to_page_end;
    }
    0
}

fn read_u64(g: &mut dyn GuestAccess, gva: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    g.read_virt(gva, &mut b).ok().map(|_| u64::from_le_bytes(b))
}

/// The handler address of `vector` from a 64-bit IDT gate (offset 15:0 at +0, 31:16 at +6,
/// 63:32 at +8), or `None` outside 64-bit mode or beyond the IDT limit.
/// #UD, the exception a [`Flow::Trap`] instruction raises.
const VECTOR_UD: u8 = 6;

fn idt_handler(g: &mut dyn GuestAccess, cpu: &GuestCpu, vector: u8) -> Option<u64> {
    if cpu.code_size != CodeSize::Bits64 {
        return None;
    }
    let off = u64::from(vector) * 16;
    if off + 15 > u64::from(cpu.idt_limit) {
        return None;
    }
    let mut gate = [0u8; 16];
    g.read_virt(cpu.idt_base + off, &mut gate).ok()?;
    let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
    let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
    let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
    Some(lo | mid << 16 | hi << 32)
}

/// Decodes the block at `start`. With `count_repeats` (exact-mode profiling) a REP string
/// instruction is a block of its own: the block before it ends at it, and its block ends
/// right after it, so the count register is seen before and after it runs.
/// (`outside`: a block ends before an instruction the pinned world answers, and one that
/// starts there is empty: the interpreter runs it, never the CPU.)
fn decode_block(
    g: &mut dyn GuestAccess,
    start: u64,
    size: CodeSize,
    count_repeats: bool,
    outside: OutsideConfig,
) -> Block {
    let mut insns = Vec::new();
    let mut ip = start;
    let mut bytes = [0u8; MAX_INSN_LEN];
    let mut repeat = None;
    let stop = loop {
        if insns.len() >= MAX_BLOCK_INSNS {
            break Stop::Limit(ip);
        }
        let n = fetch(g, ip, &mut bytes);
        let insn = match branch::decode(&bytes[..n], ip, size) {
            Ok(insn) => insn,
            // Cut off by an unmapped page: executing it faults; step it and see.
            Err(_) => {
                break Stop::Insn(DecodedInsn {
                    ip,
                    len: 1,
                    flow: Flow::Trap,
                    cond: None,
                });
            }
        };
        match insn.flow {
            Flow::Sequential => {
                if size == CodeSize::Bits64 && reads_pinned_outside(&bytes[..n], ip, outside) {
                    break Stop::Outside(insn);
                }
                if count_repeats && let Some(r) = repeat_of(&bytes[..n], ip, size) {
                    if !insns.is_empty() {
                        break Stop::Limit(ip);
                    }
                    insns.push(ip);
                    repeat = Some(r);
                    break Stop::Limit(insn.fallthrough());
                }
                insns.push(ip);
                ip = insn.fallthrough();
            }
            Flow::Branch { .. } | Flow::Trap => break Stop::Insn(insn),
        }
    };
    Block {
        insns,
        stop,
        repeat,
    }
}

/// Whether the instruction in `bytes` (64-bit code) is one the pinned world `outside`
/// answers.
fn reads_pinned_outside(bytes: &[u8], ip: u64, outside: OutsideConfig) -> bool {
    if outside == OutsideConfig::default() {
        return false;
    }
    let insn = iced_x86::Decoder::with_ip(64, bytes, ip, iced_x86::DecoderOptions::NONE).decode();
    outside.owns(insn.mnemonic())
}

/// A REP/REPE/REPNE-prefixed string instruction as it repeats; `None` for anything else.
fn repeat_of(bytes: &[u8], ip: u64, size: CodeSize) -> Option<Repeat> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};
    let bitness = match size {
        CodeSize::Bits16 => 16,
        CodeSize::Bits32 => 32,
        CodeSize::Bits64 => 64,
    };
    let insn = Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE).decode();
    if !insn.is_string_instruction()
        || !(insn.has_rep_prefix() || insn.has_repe_prefix() || insn.has_repne_prefix())
    {
        return None;
    }
    let mask = (0..insn.op_count()).find_map(|i| match insn.op_kind(i) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => Some(0xffff),
        OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(0xffff_ffff),
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(u64::MAX),
        _ => None,
    })?;
    let compares = matches!(
        insn.mnemonic(),
        Mnemonic::Cmpsb
            | Mnemonic::Cmpsw
            | Mnemonic::Cmpsd
            | Mnemonic::Cmpsq
            | Mnemonic::Scasb
            | Mnemonic::Scasw
            | Mnemonic::Scasd
            | Mnemonic::Scasq
    );
    let while_zf = compares.then_some(!insn.has_repne_prefix());
    Some(Repeat { mask, while_zf })
}

#[cfg(test)]
mod tests;
