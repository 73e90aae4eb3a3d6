//! Integer ALU results and status flags (CF, PF, AF, ZF, SF, OF) as the SDM defines them
//! for each operation and operand size, plus which flags the SDM leaves *undefined* for the
//! given operands (the interpreter must prove those dead before it may use its result).
//!
//! Pure functions of (operation, size, operands, incoming RFLAGS); the differential tests in
//! `alu_tests.rs` compare every defined bit with the host CPU executing the same instruction.

/// RFLAGS.CF.
pub const CF: u64 = 1 << 0;
/// RFLAGS.PF.
pub const PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub const AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub const ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub const SF: u64 = 1 << 7;
/// RFLAGS.OF.
pub const OF: u64 = 1 << 11;
/// The six arithmetic status flags.
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// An ALU operation. CMP and TEST are [`Op::Sub`] and [`Op::And`] without the write-back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Adc,
    Sub,
    Sbb,
    And,
    Or,
    Xor,
    Inc,
    Dec,
    Neg,
    Not,
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
    /// Two/three-operand IMUL: the product truncated to the operand size.
    Imul,
    /// BT with a register operand: CF ← the selected bit.
    Bt,
    /// BTS/BTR/BTC with a register operand: BT, then the bit is set, cleared or
    /// complemented.
    Bts,
    Btr,
    Btc,
}

impl Op {
    /// The two-operand operation of an ALU-group, shift or rotate mnemonic (CMP and TEST
    /// as SUB and AND); `None` for anything else.
    pub fn of_two_operand(m: iced_x86::Mnemonic) -> Option<Op> {
        use iced_x86::Mnemonic as M;
        Some(match m {
            M::Add => Op::Add,
            M::Adc => Op::Adc,
            M::Sub | M::Cmp => Op::Sub,
            M::Sbb => Op::Sbb,
            M::And | M::Test => Op::And,
            M::Or => Op::Or,
            M::Xor => Op::Xor,
            M::Shl | M::Sal => Op::Shl,
            M::Shr => Op::Shr,
            M::Sar => Op::Sar,
            M::Rol => Op::Rol,
            M::Ror => Op::Ror,
            _ => return None,
        })
    }
}

/// The result of an ALU operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Out {
    /// The result, truncated to the operand size (the first operand for CMP/TEST/BT).
    pub value: u64,
    /// RFLAGS after the operation. Undefined flags keep their incoming value.
    pub rflags: u64,
    /// Status flags the SDM leaves undefined for these operands.
    pub undefined: u64,
}

/// All ones in the low `bits` bits.
pub fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn sign_bit(bits: u32) -> u64 {
    1u64 << (bits - 1)
}

/// `v` (of `bits` bits) sign-extended to 64 bits.
pub fn sext(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

/// ZF, SF and PF of a result.
fn szp(r: u64, bits: u32) -> u64 {
    let mut f = 0;
    if r & mask(bits) == 0 {
        f |= ZF;
    }
    if r & sign_bit(bits) != 0 {
        f |= SF;
    }
    if (r as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

fn flag(cond: bool, bit: u64) -> u64 {
    if cond { bit } else { 0 }
}

/// `a + b + c` (operands already `bits` wide, `c` 0 or 1) and the status flags it writes.
#[inline(always)]
fn add(a: u64, b: u64, c: u64, bits: u32) -> (u64, u64) {
    let full = u128::from(a) + u128::from(b) + u128::from(c);
    let r = full as u64 & mask(bits);
    let f = szp(r, bits)
        | flag(full >> bits != 0, CF)
        | flag((a ^ r) & (b ^ r) & sign_bit(bits) != 0, OF)
        | flag((a ^ b ^ r) & 0x10 != 0, AF);
    (r, f)
}

/// `a - (b + c)` (operands already `bits` wide, `c` 0 or 1) and the status flags it writes.
#[inline(always)]
fn sub(a: u64, b: u64, c: u64, bits: u32) -> (u64, u64) {
    let sub = u128::from(b) + u128::from(c);
    let r = (u128::from(a).wrapping_sub(sub)) as u64 & mask(bits);
    let f = szp(r, bits)
        | flag(u128::from(a) < sub, CF)
        | flag((a ^ b) & (a ^ r) & sign_bit(bits) != 0, OF)
        | flag((a ^ b ^ r) & 0x10 != 0, AF);
    (r, f)
}

/// AND, OR or XOR and the status flags it writes (AF is undefined).
#[inline(always)]
fn logic(op: Op, a: u64, b: u64, bits: u32) -> (u64, u64) {
    let r = match op {
        Op::And => a & b,
        Op::Or => a | b,
        _ => a ^ b,
    };
    (r, szp(r, bits))
}

/// RFLAGS after an operation that wrote `written` to the `affected` flags, of which the
/// `undefined` ones keep their incoming value.
#[inline(always)]
fn out(value: u64, rflags: u64, written: u64, affected: u64, undefined: u64) -> Out {
    let defined = affected & !undefined;
    Out {
        value,
        rflags: (rflags & !defined) | (written & defined),
        undefined: undefined & affected,
    }
}

/// Computes `op` on `a` and `b` (for shifts and rotates `b` is the count, before
/// masking; for BT the bit offset) at `bits` = 8, 16, 32 or 64. The forms hot code runs
/// most (ADD, SUB and CMP, AND and TEST, OR, XOR) are inlined into the caller; the rest
/// is a call.
#[inline(always)]
pub fn alu(op: Op, bits: u32, a: u64, b: u64, rflags: u64) -> Out {
    let m = mask(bits);
    let (a, b) = (a & m, b & m);
    match op {
        Op::Add => {
            let (r, f) = add(a, b, 0, bits);
            out(r, rflags, f, STATUS, 0)
        }
        Op::Sub => {
            let (r, f) = sub(a, b, 0, bits);
            out(r, rflags, f, STATUS, 0)
        }
        Op::And | Op::Or | Op::Xor => {
            let (r, f) = logic(op, a, b, bits);
            out(r, rflags, f, STATUS, AF)
        }
        _ => alu_rest(op, bits, a, b, rflags),
    }
}

/// [`alu`] out of line, for the operations it does not take inline (it covers every
/// operation, so the hot ones have one definition to check against); `a` and `b` already
/// `bits` wide.
#[inline(never)]
fn alu_rest(op: Op, bits: u32, a: u64, b: u64, rflags: u64) -> Out {
    let m = mask(bits);
    let sign = sign_bit(bits);
    let carry_in = u64::from(rflags & CF != 0);
    // (value, flags written, which flags are written, undefined)
    let (value, written, affected, undefined) = match op {
        Op::Add | Op::Adc | Op::Inc => {
            let (r, f) = match op {
                Op::Inc => add(a, 1, 0, bits),
                Op::Add => add(a, b, 0, bits),
                _ => add(a, b, carry_in, bits),
            };
            let affected = if op == Op::Inc { STATUS & !CF } else { STATUS };
            (r, f, affected, 0)
        }
        Op::Sub | Op::Sbb | Op::Dec | Op::Neg => {
            let (r, f) = match op {
                Op::Dec => sub(a, 1, 0, bits),
                Op::Neg => sub(0, a, 0, bits),
                Op::Sub => sub(a, b, 0, bits),
                _ => sub(a, b, carry_in, bits),
            };
            let affected = if op == Op::Dec { STATUS & !CF } else { STATUS };
            (r, f, affected, 0)
        }
        Op::And | Op::Or | Op::Xor => {
            let (r, f) = logic(op, a, b, bits);
            (r, f, STATUS, AF)
        }
        Op::Not => (!a & m, 0, 0, 0),
        Op::Shl | Op::Shr | Op::Sar => {
            let cnt = u32::try_from(b & if bits == 64 { 0x3f } else { 0x1f }).unwrap_or(0);
            if cnt == 0 {
                (a, 0, 0, 0)
            } else {
                let (r, cf, cf_defined) = match op {
                    Op::Shl => {
                        let r = if cnt < bits { (a << cnt) & m } else { 0 };
                        let cf = cnt <= bits && (a >> (bits - cnt)) & 1 != 0;
                        (r, cf, cnt < bits)
                    }
                    Op::Shr => {
                        let r = if cnt < bits { a >> cnt } else { 0 };
                        (r, (a >> (cnt - 1).min(63)) & 1 != 0, cnt < bits)
                    }
                    _ => {
                        let sa = sext(a, bits);
                        let r = (sa >> cnt.min(63)) as u64 & m;
                        (r, (sa >> (cnt - 1).min(63)) & 1 != 0, true)
                    }
                };
                let of = match op {
                    Op::Shl => (r & sign != 0) != cf,
                    Op::Shr => a & sign != 0,
                    _ => false,
                };
                let mut undefined = AF;
                if cnt != 1 {
                    undefined |= OF;
                }
                if !cf_defined {
                    undefined |= CF;
                }
                let f = szp(r, bits) | flag(cf, CF) | flag(of, OF);
                (r, f, STATUS, undefined)
            }
        }
        Op::Rol | Op::Ror => {
            let cnt = u32::try_from(b & if bits == 64 { 0x3f } else { 0x1f }).unwrap_or(0);
            if cnt == 0 {
                (a, 0, 0, 0)
            } else {
                let rc = cnt % bits;
                let r = if rc == 0 {
                    a
                } else if op == Op::Rol {
                    ((a << rc) | (a >> (bits - rc))) & m
                } else {
                    ((a >> rc) | (a << (bits - rc))) & m
                };
                let msb = r & sign != 0;
                let (cf, of) = if op == Op::Rol {
                    let cf = r & 1 != 0;
                    (cf, msb != cf)
                } else {
                    (msb, msb != (r & (sign >> 1) != 0))
                };
                let undefined = if cnt == 1 { 0 } else { OF };
                (r, flag(cf, CF) | flag(of, OF), CF | OF, undefined)
            }
        }
        Op::Imul => {
            let full = i128::from(sext(a, bits)) * i128::from(sext(b, bits));
            let r = full as u64 & m;
            let overflow = i128::from(sext(r, bits)) != full;
            let f = flag(overflow, CF) | flag(overflow, OF);
            (r, f, STATUS, SF | ZF | AF | PF)
        }
        Op::Bt | Op::Bts | Op::Btr | Op::Btc => {
            let bit = 1u64 << (b % u64::from(bits));
            let f = flag(a & bit != 0, CF);
            let r = match op {
                Op::Bts => a | bit,
                Op::Btr => a & !bit,
                Op::Btc => a ^ bit,
                _ => a,
            };
            (r, f, STATUS & !ZF, OF | SF | AF | PF)
        }
    };
    out(value, rflags, written, affected, undefined)
}

#[cfg(test)]
#[path = "alu_tests.rs"]
mod tests;
