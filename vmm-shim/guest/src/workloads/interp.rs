//! `interp`: a small stack-machine bytecode interpreter with an indirect dispatch (the
//! `match` on the opcode compiles to a jump table).
//!
//! [`COLLATZ`] sums the Collatz step counts of 1..=n, so tests can check the result with
//! plain arithmetic.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// push the immediate
    Push = 0,
    /// push register `imm`
    Load = 1,
    /// pop into register `imm`
    Store = 2,
    Add = 3,
    Sub = 4,
    Mul = 5,
    And = 6,
    /// shift right by one
    Shr = 7,
    /// pop; jump to `imm` if zero
    Jz = 8,
    /// jump to `imm`
    Jmp = 9,
    Dup = 10,
    Halt = 11,
}

#[derive(Clone, Copy, Debug)]
pub struct Insn {
    pub op: Op,
    pub imm: u64,
}

const fn i(op: Op, imm: u64) -> Insn {
    Insn { op, imm }
}

/// r0 = i (starts at n), r1 = x, r2 = total steps.
pub static COLLATZ: [Insn; 40] = [
    // 0: outer: if i == 0 goto done
    i(Op::Load, 0),
    i(Op::Jz, 37),
    // 2: x = i
    i(Op::Load, 0),
    i(Op::Store, 1),
    // 4: inner: if x - 1 == 0 goto next
    i(Op::Load, 1),
    i(Op::Push, 1),
    i(Op::Sub, 0),
    i(Op::Jz, 31),
    // 8: if x & 1 == 0 goto even
    i(Op::Load, 1),
    i(Op::Push, 1),
    i(Op::And, 0),
    i(Op::Jz, 21),
    // 12: odd: x = 3x + 1
    i(Op::Load, 1),
    i(Op::Push, 3),
    i(Op::Mul, 0),
    i(Op::Push, 1),
    i(Op::Add, 0),
    i(Op::Store, 1),
    i(Op::Jmp, 24),
    i(Op::Halt, 0),
    i(Op::Halt, 0),
    // 21: even: x = x >> 1
    i(Op::Load, 1),
    i(Op::Shr, 0),
    i(Op::Store, 1),
    // 24: total += 1; goto inner
    i(Op::Load, 2),
    i(Op::Push, 1),
    i(Op::Add, 0),
    i(Op::Store, 2),
    i(Op::Jmp, 4),
    i(Op::Halt, 0),
    i(Op::Halt, 0),
    // 31: next: i -= 1; goto outer
    i(Op::Load, 0),
    i(Op::Push, 1),
    i(Op::Sub, 0),
    i(Op::Store, 0),
    i(Op::Jmp, 0),
    i(Op::Halt, 0),
    // 37: done: push total; halt
    i(Op::Load, 2),
    i(Op::Dup, 0),
    i(Op::Halt, 0),
];

/// Run `prog` with registers `regs`; returns the top of the stack at `Halt` and the
/// number of instructions executed.
#[inline(never)]
pub fn execute(prog: &[Insn], regs: &mut [u64; 4]) -> (u64, u64) {
    let mut stack = [0u64; 16];
    let mut sp = 0usize;
    let mut pc = 0usize;
    let mut executed = 0u64;
    while let Some(insn) = prog.get(pc) {
        executed += 1;
        pc += 1;
        let imm = insn.imm;
        match insn.op {
            Op::Push => {
                stack[sp % 16] = imm;
                sp += 1;
            }
            Op::Load => {
                stack[sp % 16] = regs[(imm % 4) as usize];
                sp += 1;
            }
            Op::Store => {
                sp -= 1;
                regs[(imm % 4) as usize] = stack[sp % 16];
            }
            Op::Add | Op::Sub | Op::Mul | Op::And => {
                sp -= 1;
                let b = stack[sp % 16];
                let a = &mut stack[(sp - 1) % 16];
                *a = match insn.op {
                    Op::Add => a.wrapping_add(b),
                    Op::Sub => a.wrapping_sub(b),
                    Op::Mul => a.wrapping_mul(b),
                    _ => *a & b,
                };
            }
            Op::Shr => stack[(sp - 1) % 16] >>= 1,
            Op::Jz => {
                sp -= 1;
                if stack[sp % 16] == 0 {
                    pc = imm as usize;
                }
            }
            Op::Jmp => pc = imm as usize,
            Op::Dup => {
                stack[sp % 16] = stack[(sp - 1) % 16];
                sp += 1;
            }
            Op::Halt => return (if sp == 0 { 0 } else { stack[(sp - 1) % 16] }, executed),
        }
    }
    (0, executed)
}

/// Sum of Collatz step counts for 1..=n, by bytecode.
pub fn run(n: u64) -> (u64, u64) {
    let mut regs = [n, 0, 0, 0];
    execute(&COLLATZ, &mut regs)
}
