//! The exact-mode profile: every ring-3 instruction a vCPU retired, folded into straight-line
//! runs, and every call with its inclusive cost, the way callgrind counts them.
//!
//! Exact mode sees every instruction and branch (the [tracer](super::tracer)), so it can
//! count each instruction's executions. Counting per instruction would cost a map update per
//! instruction; instead the profiler counts *runs*: a run starts where control arrived (a
//! taken branch's target, or the first traced instruction) and holds the `n` sequential
//! instructions that retired until the next taken branch (or exception, or the end). The
//! run `(start, n)` is fully determined by the code bytes, so a reader that has the code
//! (the ELF file the address maps to) decodes `n` instructions from `start` and credits
//! each with the run's count: one map update per taken branch.
//!
//! Calls are followed on a shadow stack the way callgrind does: a near CALL pushes its return
//! address; a near RET to the return address of an entry on the stack pops that entry (and
//! any above it, left by a longjmp) and charges the instructions retired since the call,
//! the RET included, to the call edge `(call site, target)` as its inclusive cost. A RET
//! that matches no entry (a return from a function entered before tracing, or RET used as
//! a jump) closes nothing. Frames still open when the vCPU stops are closed then, as
//! callgrind closes them at exit.
//!
//! Only the program's instructions are profiled (valgrind sees only user code): ring 3
//! in the lower half of the address space ([`is_user`]); the rest are counted in
//! [`ExactProfile::other_instructions`].

use super::addr_hash::FastMap;
use super::branch::BranchKind;
use super::vpmu::RetiredBranch;

/// Open calls deeper than this are dropped from the bottom of the shadow stack (their
/// inclusive cost is lost; a recursion this deep is rare).
const MAX_SHADOW_DEPTH: usize = 1 << 16;

/// A straight-line run of ring-3 instructions and how often it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileRun {
    /// Guest-virtual address of the first instruction.
    pub start: u64,
    /// Sequential instructions in the run (at least 1).
    pub instructions: u32,
    /// Whether the run's last instruction is a branch that was taken.
    pub ends_taken: bool,
    pub count: u64,
}

/// One call edge and the cost of its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileCall {
    /// The CALL instruction's address.
    pub site: u64,
    /// Where it went.
    pub target: u64,
    pub count: u64,
    /// What retired inside those calls (the callee and everything it called), ring 3:
    /// instructions, conditional branches, indirect branches (indirect jumps and calls,
    /// and returns).
    pub inclusive: [u64; 3],
}

/// What one vCPU's exact-mode profiler counted, in a stable order (runs and calls sorted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExactProfile {
    pub vcpu: u32,
    pub runs: Vec<ProfileRun>,
    pub calls: Vec<ProfileCall>,
    /// Ring-3 instructions (the sum over `runs` of `instructions * count`).
    pub instructions: u64,
    /// Instructions retired outside ring 3 (not in `runs`).
    pub other_instructions: u64,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    return_to: u64,
    site: u64,
    target: u64,
    /// The ring-3 counts (instructions, conditional, indirect) when the callee started.
    at: [u64; 3],
}

/// Whether an instruction at `addr` that retired at `cpl` is user code. CPL 3 alone does
/// not say it: on hosts that emulate ring 0 (nested ones), a Linux program's `syscall`
/// arrives at the shim's entry stub (LSTAR, in the supervisor-only trap area) still at
/// CPL 3 (`linux::cpu::SyscallMode::Ring3`), and that stub is the shim's, not the
/// program's. User space ends at 2^47 on x86-64 (4-level paging).
pub fn is_user(cpl: u8, addr: u64) -> bool {
    /// One past the highest user address with 4-level paging.
    const USER_END: u64 = 1 << 47;
    cpl == 3 && addr < USER_END
}

/// The accumulator the tracer feeds in exact mode.
#[derive(Debug, Default)]
pub struct Profiler {
    runs: FastMap<(u64, u32, bool), u64>,
    calls: FastMap<(u64, u64), (u64, [u64; 3])>,
    /// Start of the current run, and whether it is a ring-3 run.
    start: Option<u64>,
    user: bool,
    /// Instructions in the current run so far.
    pending: u64,
    user_instructions: u64,
    /// Ring-3 conditional and indirect branches retired.
    user_conditional: u64,
    user_indirect: u64,
    other_instructions: u64,
    stack: Vec<Frame>,
}

impl Profiler {
    /// `n` sequential instructions retired at `cpl`, the first at `rip`.
    pub fn retire(&mut self, n: u64, cpl: u8, rip: u64) {
        let user = is_user(cpl, rip);
        if self.start.is_none() {
            self.start = Some(rip);
            self.user = user;
        } else if self.user != user {
            // The privilege level changed without a branch (cannot happen): end the run.
            self.end_run(false);
            self.start = Some(rip);
            self.user = user;
        }
        self.pending += n;
        if self.user {
            self.user_instructions += n;
        } else {
            self.other_instructions += n;
        }
    }

    /// `extra` more executions of the ring-3 instruction at `rip`, as a one-instruction
    /// run of its own: the iterations of a REP string instruction after its first, which
    /// valgrind counts as instructions (the CPU retires the instruction once).
    pub fn repeat(&mut self, rip: u64, extra: u64) {
        if extra > 0 {
            *self.runs.entry((rip, 1, false)).or_default() += extra;
            self.user_instructions += extra;
        }
    }

    /// A retired branch (or an interrupt or exception, which is not an instruction).
    pub fn branch(&mut self, b: &RetiredBranch) {
        if b.kind.is_instruction() {
            self.retire(1, b.cpl_before, b.from);
            if is_user(b.cpl_before, b.from) {
                match b.kind {
                    BranchKind::Jcc => self.user_conditional += 1,
                    BranchKind::JmpInd | BranchKind::CallInd | BranchKind::Ret => {
                        self.user_indirect += 1
                    }
                    _ => {}
                }
            }
        }
        if !b.taken && b.kind.is_instruction() {
            return;
        }
        self.end_run(b.taken && b.kind.is_instruction());
        if is_user(b.cpl_before, b.from) && is_user(b.cpl_after, b.to) {
            match b.kind {
                BranchKind::CallRel | BranchKind::CallInd => {
                    if self.stack.len() >= MAX_SHADOW_DEPTH {
                        self.stack.remove(0);
                    }
                    self.stack.push(Frame {
                        return_to: b.fallthrough,
                        site: b.from,
                        target: b.to,
                        at: self.counts(),
                    });
                }
                BranchKind::Ret => {
                    if let Some(i) = self.stack.iter().rposition(|f| f.return_to == b.to) {
                        self.close_from(i);
                    }
                }
                _ => {}
            }
        }
        self.start = Some(b.to);
        self.user = is_user(b.cpl_after, b.to);
    }

    fn end_run(&mut self, taken: bool) {
        if let Some(start) = self.start.take()
            && self.user
            && self.pending > 0
        {
            let n = u32::try_from(self.pending).unwrap_or(u32::MAX);
            *self.runs.entry((start, n, taken)).or_default() += 1;
        }
        self.pending = 0;
    }

    fn counts(&self) -> [u64; 3] {
        [
            self.user_instructions,
            self.user_conditional,
            self.user_indirect,
        ]
    }

    /// Closes the frames from `i` up, charging each its cost so far.
    fn close_from(&mut self, i: usize) {
        let now = self.counts();
        for f in self.stack.drain(i..) {
            let e = self.calls.entry((f.site, f.target)).or_default();
            e.0 += 1;
            for ((e, now), at) in e.1.iter_mut().zip(now).zip(f.at) {
                *e += now - at;
            }
        }
    }

    /// The run is over (the vCPU stopped): close the current run and every open call.
    pub fn finish(&mut self, vcpu: u32) -> ExactProfile {
        self.end_run(false);
        self.close_from(0);
        let mut runs: Vec<ProfileRun> = self
            .runs
            .iter()
            .map(|(&(start, instructions, ends_taken), &count)| ProfileRun {
                start,
                instructions,
                ends_taken,
                count,
            })
            .collect();
        runs.sort_unstable_by_key(|r| (r.start, r.instructions, r.ends_taken));
        let mut calls: Vec<ProfileCall> = self
            .calls
            .iter()
            .map(|(&(site, target), &(count, inclusive))| ProfileCall {
                site,
                target,
                count,
                inclusive,
            })
            .collect();
        calls.sort_unstable_by_key(|c| (c.site, c.target));
        ExactProfile {
            vcpu,
            runs,
            calls,
            instructions: self.user_instructions,
            other_instructions: self.other_instructions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn br(from: u64, to: u64, len: u64, kind: BranchKind, taken: bool) -> RetiredBranch {
        RetiredBranch {
            from,
            to,
            fallthrough: from + len,
            kind,
            taken,
            cpl_before: 3,
            cpl_after: 3,
        }
    }

    #[test]
    fn runs_and_inclusive_costs_of_calls() {
        let mut p = Profiler::default();
        // main: 3 instructions at 0x100.., then call f at 0x10c.
        p.retire(3, 3, 0x100);
        p.branch(&br(0x10c, 0x200, 5, BranchKind::CallRel, true));
        // f: 2 instructions, a not-taken jcc, 1 more, ret.
        p.retire(2, 3, 0);
        p.branch(&br(0x206, 0x208, 2, BranchKind::Jcc, false));
        p.retire(1, 3, 0);
        p.branch(&br(0x20a, 0x111, 1, BranchKind::Ret, true));
        // main again: 2 instructions, then stop.
        p.retire(2, 3, 0);
        let prof = p.finish(0);
        assert_eq!(prof.instructions, 3 + 1 + 2 + 1 + 1 + 1 + 2);
        let runs: Vec<_> = prof
            .runs
            .iter()
            .map(|r| (r.start, r.instructions, r.ends_taken, r.count))
            .collect();
        assert_eq!(
            runs,
            vec![
                (0x100, 4, true, 1),
                (0x111, 2, false, 1),
                (0x200, 5, true, 1)
            ]
        );
        assert_eq!(
            prof.calls,
            vec![ProfileCall {
                site: 0x10c,
                target: 0x200,
                count: 1,
                inclusive: [5, 1, 1]
            }]
        );
        let sum: u64 = prof
            .runs
            .iter()
            .map(|r| u64::from(r.instructions) * r.count)
            .sum();
        assert_eq!(sum, prof.instructions);
    }

    #[test]
    fn a_longjmp_closes_the_frames_it_skips_and_open_frames_close_at_the_end() {
        let mut p = Profiler::default();
        p.retire(1, 3, 0x100);
        p.branch(&br(0x101, 0x200, 5, BranchKind::CallRel, true)); // main → a
        p.branch(&br(0x200, 0x300, 5, BranchKind::CallRel, true)); // a → b
        p.branch(&br(0x300, 0x400, 5, BranchKind::CallRel, true)); // b → c
        p.retire(4, 3, 0);
        // c returns straight to main's return address (as a longjmp-like unwind).
        p.branch(&br(0x404, 0x106, 1, BranchKind::Ret, true));
        p.branch(&br(0x106, 0x500, 5, BranchKind::CallRel, true)); // main → d, never returns
        p.retire(10, 3, 0);
        let prof = p.finish(0);
        let inc: Vec<_> = prof
            .calls
            .iter()
            .map(|c| (c.site, c.inclusive[0]))
            .collect();
        // a: b's call, c's call, 4, ret = 7; b: c's call, 4, ret = 6; c: 4 + ret = 5.
        assert_eq!(inc, vec![(0x101, 7), (0x106, 10), (0x200, 6), (0x300, 5)]);
    }

    #[test]
    fn ring0_instructions_are_counted_apart() {
        let mut p = Profiler::default();
        p.retire(2, 3, 0x100);
        let mut sys = br(0x102, 0xffff_0000, 2, BranchKind::Syscall, true);
        sys.cpl_after = 0;
        p.branch(&sys);
        p.retire(7, 0, 0);
        let mut ret = br(0xffff_0010, 0x104, 3, BranchKind::Sysret, true);
        ret.cpl_before = 0;
        p.branch(&ret);
        p.retire(1, 3, 0);
        let prof = p.finish(0);
        assert_eq!(prof.instructions, 4);
        assert_eq!(prof.other_instructions, 8);
        assert_eq!(prof.runs.len(), 2);
    }

    #[test]
    fn a_syscall_stub_reached_at_cpl3_is_not_the_programs_code() {
        // Nested hosts: `syscall` lands on the shim's stub in the trap area at CPL 3;
        // the stub's `out` is a CPL-3 instruction there, but not user code.
        let mut p = Profiler::default();
        p.retire(2, 3, 0x100);
        let stub = 0xffff_fe00_0000_3210;
        p.branch(&br(0x102, stub, 2, BranchKind::Syscall, true));
        p.retire(1, 3, stub);
        p.branch(&br(stub + 2, 0x104, 1, BranchKind::Sysret, true));
        p.retire(1, 3, 0x104);
        let prof = p.finish(0);
        assert_eq!(prof.instructions, 4);
        assert_eq!(prof.other_instructions, 2);
        assert!(
            prof.runs.iter().all(|r| r.start < 1 << 47),
            "{:?}",
            prof.runs
        );
        assert!(prof.calls.is_empty());
    }
}
