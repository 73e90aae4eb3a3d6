//! Basic blocks of one function, cut the way BOLT cuts them, so that fall-through ranges
//! become the fall-through edges `perf2bolt` would write.
//!
//! BOLT (`BinaryFunction::buildCFG`, LLVM 16) starts a block at the function entry, at
//! every target of a direct branch inside the function, and after every terminator
//! (conditional or unconditional jump, indirect jump, return, trap), except that a direct
//! unconditional jump right after a conditional one (with no label on it) stays in the
//! conditional's block. Calls do not end blocks. A block falls through to the next one
//! when it does not end in a terminator or ends in a conditional branch; a block ending
//! in a jump still has the next block as successor when the jump goes there. Padding nops
//! belong to the block before them and can be its "last instruction" (the offset a
//! fall-through edge is written from), as in BOLT 16's aggregation.
//!
//! A fall-through trace `[from, to]` (the code run between two taken branches) then
//! crosses the blocks from the one holding `from` to the one holding `to`, each boundary
//! one edge `(last instruction of the block, start of the next)`. A trace that would
//! cross a boundary without a fall-through successor cannot have happened in this code
//! (a stale or damaged LBR): BOLT drops all of it, and so does [`Blocks::fallthroughs`].
//!
//! Not modelled: jump tables (their targets are leaders only when the caller passes them,
//! e.g. the indirect-jump targets seen in the profile), exception landing pads, and the
//! calls BOLT knows never return.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};

/// The basic blocks of one function (offsets relative to its start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    /// Start offset of each block, ascending; the first is 0.
    starts: Vec<u64>,
    /// Offset of each block's last instruction (padding nops included, as BOLT 16 has
    /// them when it aggregates).
    last: Vec<u64>,
    /// Whether the next block is a successor of this one.
    falls: Vec<bool>,
    /// Whether the block's last instruction is a call.
    calls: Vec<bool>,
}

/// Why a trace gives no fall-through edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadTrace {
    /// It starts after it ends, or outside the function.
    Range,
    /// It crosses from a block into the next where the code cannot fall through.
    Mismatch,
}

impl Blocks {
    /// Cuts `code` (the whole function, starting at offset 0) into blocks; `leaders` are
    /// extra block starts (jump-table targets). `None` when the bytes do not decode as
    /// instructions or a branch target is not on an instruction boundary (BOLT leaves
    /// such functions without a CFG too).
    pub fn build(code: &[u8], leaders: &[u64]) -> Option<Blocks> {
        let size = code.len() as u64;
        let mut insns = Vec::new();
        let mut labels: Vec<u64> = vec![0];
        labels.extend(leaders.iter().copied().filter(|&l| l < size));
        let mut dec = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        while dec.can_decode() {
            let insn = dec.decode();
            if insn.is_invalid() {
                return None;
            }
            if matches!(
                insn.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            ) {
                let t = insn.near_branch_target();
                if t < size {
                    labels.push(t);
                }
            }
            insns.push(insn);
        }
        labels.sort_unstable();
        labels.dedup();
        // Every label must start an instruction.
        {
            let mut ips = insns.iter().map(|i| i.ip()).peekable();
            for &l in &labels {
                while ips.next_if(|&ip| ip < l).is_some() {}
                if ips.peek() != Some(&l) {
                    return None;
                }
            }
        }
        let mut b = Blocks {
            starts: Vec::new(),
            last: Vec::new(),
            falls: Vec::new(),
            calls: Vec::new(),
        };
        // Targets of the current block's jumps (its successors by a taken branch).
        let mut targets: Vec<Vec<u64>> = Vec::new();
        // Whether the block ends in an indirect jump.
        let mut indirect: Vec<bool> = Vec::new();
        // The current block has ended with this terminator.
        let mut ended: Option<&iced_x86::Instruction> = None;
        let mut open = false;
        for insn in &insns {
            let ip = insn.ip();
            let labelled = labels.binary_search(&ip).is_ok();
            let joins = !labelled
                && ended.is_some_and(|t| t.flow_control() == FlowControl::ConditionalBranch)
                && insn.flow_control() == FlowControl::UnconditionalBranch;
            if labelled || (!open && !joins) {
                b.starts.push(ip);
                b.last.push(ip);
                b.falls.push(false);
                b.calls.push(false);
                targets.push(Vec::new());
                indirect.push(false);
            }
            let i = b.starts.len() - 1;
            b.last[i] = ip;
            b.calls[i] = matches!(
                insn.flow_control(),
                FlowControl::Call | FlowControl::IndirectCall
            );
            let flow = insn.flow_control();
            if matches!(
                flow,
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            ) {
                targets[i].push(insn.near_branch_target());
            }
            indirect[i] = flow == FlowControl::IndirectBranch;
            let terminator = is_terminator(insn);
            // Falls through unless it ends in a terminator other than a conditional.
            b.falls[i] = !terminator || flow == FlowControl::ConditionalBranch;
            open = !terminator;
            ended = terminator.then_some(insn);
        }
        for i in 0..b.starts.len().saturating_sub(1) {
            // A jump (direct, or indirect through a table the caller knows) to the next
            // block keeps it a successor.
            let next = b.starts[i + 1];
            if targets[i].contains(&next) || indirect[i] && leaders.contains(&next) {
                b.falls[i] = true;
            }
        }
        if let Some(l) = b.falls.last_mut() {
            *l = false;
        }
        Some(b)
    }

    /// The number of blocks.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Never: a function has an entry block.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn containing(&self, off: u64) -> usize {
        self.starts.partition_point(|&s| s <= off).saturating_sub(1)
    }

    /// The fall-through edges `(from, to)` of the trace that runs from `from` to `to`
    /// (function offsets) without a taken branch. `external`: the branch that started
    /// the trace came from outside the function; when it lands on a block start right
    /// after a call, it is that call's return, and the call's block falling through to
    /// this one is an edge too (BOLT's rule).
    pub fn fallthroughs(
        &self,
        from: u64,
        to: u64,
        external: bool,
    ) -> Result<Vec<(u64, u64)>, BadTrace> {
        if from > to {
            return Err(BadTrace::Range);
        }
        let (mut a, z) = (self.containing(from), self.containing(to));
        if external && a > 0 && self.starts[a] == from && self.falls[a - 1] && self.calls[a - 1] {
            a -= 1;
        }
        let mut out = Vec::with_capacity(z - a);
        for i in a..z {
            if !self.falls[i] {
                return Err(BadTrace::Mismatch);
            }
            out.push((self.last[i], self.starts[i + 1]));
        }
        Ok(out)
    }
}

/// What LLVM's x86 instruction descriptions call terminators: jumps, returns, traps.
fn is_terminator(insn: &iced_x86::Instruction) -> bool {
    match insn.flow_control() {
        FlowControl::ConditionalBranch
        | FlowControl::UnconditionalBranch
        | FlowControl::IndirectBranch
        | FlowControl::Return => true,
        _ => matches!(insn.mnemonic(), Mnemonic::Ud2 | Mnemonic::Hlt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `main` loop of the shared propeller_sample fixture, reduced: a loop head with
    /// an exit test, a call (calls never end blocks), a conditional skipping code that
    /// falls into a join label, a jump to the next instruction, and the back edge.
    fn code() -> Vec<u8> {
        vec![
            0x83, 0xf8, 0x05, // 0: cmp eax,5
            0x7d, 0x10, // 3: jge 0x15
            0xe8, 0x00, 0x00, 0x00, 0x00, // 5: call next
            0x74, 0x03, // a: je 0xf
            0xff, 0xc0, // c: inc eax
            0x90, // e: nop
            0xff, 0xc1, // f: inc ecx (label)
            0xeb, 0x00, // 11: jmp 0x13 (to next)
            0xeb, 0xeb, // 13: jmp 0x0
            0xc3, // 15: ret
        ]
    }

    #[test]
    fn cuts_blocks_like_bolt() {
        let b = Blocks::build(&code(), &[]).unwrap();
        assert_eq!(b.starts, vec![0, 5, 0xc, 0xf, 0x13, 0x15]);
        // The nop at 0xe (padding before the label) is its block's last instruction.
        assert_eq!(b.last, vec![3, 0xa, 0xe, 0x11, 0x13, 0x15]);
        assert_eq!(b.falls, vec![true, true, true, true, false, false]);
        // From the loop head through the skipped code to the back edge.
        assert_eq!(
            b.fallthroughs(0, 0x13, false),
            Ok(vec![(3, 5), (0xa, 0xc), (0xe, 0xf), (0x11, 0x13)])
        );
        // One block: nothing.
        assert_eq!(b.fallthroughs(5, 0xa, false), Ok(vec![]));
        // The back-edge block does not fall into `ret`.
        assert_eq!(b.fallthroughs(0xf, 0x15, false), Err(BadTrace::Mismatch));
        assert_eq!(b.fallthroughs(0xa, 5, false), Err(BadTrace::Range));
    }

    #[test]
    fn a_return_onto_a_block_start_adds_the_call_blocks_fall_through() {
        // 0: je 7; 2: call 7 (5 bytes); 7: ret (label: the je's target)
        let code = [0x74, 0x05, 0xe8, 0x00, 0x00, 0x00, 0x00, 0xc3];
        let b = Blocks::build(&code, &[]).unwrap();
        assert_eq!(b.starts, vec![0, 2, 7]);
        // Entered by the je: nothing crossed.
        assert_eq!(b.fallthroughs(7, 7, false), Ok(vec![]));
        // Entered by the return from the call at 2.
        assert_eq!(b.fallthroughs(7, 7, true), Ok(vec![(2, 7)]));
        // Not at a block start: no adjustment.
        assert_eq!(b.fallthroughs(3, 3, true), Ok(vec![]));
    }

    #[test]
    fn jump_after_conditional_joins_its_block() {
        // 0: je 5; 2: jmp 0 ; 4: ret ; 5: ret
        let code = [0x74, 0x03, 0xeb, 0xfc, 0xc3, 0xc3];
        let b = Blocks::build(&code, &[]).unwrap();
        assert_eq!(b.starts, vec![0, 4, 5]);
        assert_eq!(b.last, vec![2, 4, 5]);
        assert_eq!(b.falls, vec![false, false, false]);
    }

    #[test]
    fn bad_code_or_targets_give_no_blocks() {
        assert_eq!(Blocks::build(&[0x06], &[]), None, "invalid in 64-bit mode");
        // jmp into the middle of the cmp.
        assert_eq!(Blocks::build(&[0x83, 0xf8, 0x05, 0xeb, 0xfc], &[]), None);
        assert_eq!(Blocks::build(&[0x90, 0xc3], &[1]).map(|b| b.len()), Some(2));
    }
}
