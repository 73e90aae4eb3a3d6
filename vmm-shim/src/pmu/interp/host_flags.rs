//! Flags the SDM leaves *undefined*, taken from the host CPU itself.
//!
//! Guest ring-3 code runs natively on the host's CPU, so what that CPU leaves in an
//! undefined flag (AF after TEST, OF after a multi-bit shift, SF/ZF/PF after IMUL, ...) is
//! what the guest would have seen had it run the instruction itself. The interpreter runs
//! the same operation on the same operands here (between POPFQ and PUSHFQ) and takes the
//! undefined flags from the result, instead of halting or proving them dead. The defined
//! flags still come from [`super::alu`] (differentially tested against the CPU).

use std::arch::asm;

use super::alu::{Op, STATUS};

/// `INSN dst, src` on two registers; returns RFLAGS afterwards.
macro_rules! rr {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut r: u64 = $a;
        let mut fl: u64 = $f;
        // SAFETY: pure register arithmetic; the flags round-trip through the stack, which
        // asm! may use (no `nostack`). POPFQ only loads status flags and the reserved bit 1
        // (the caller masks the rest), so DF stays clear as Rust requires.
        unsafe {
            asm!(
                "push {fl}",
                "popfq",
                concat!($insn, " {r:", $m, "}, {b:", $m, "}"),
                "pushfq",
                "pop {fl}",
                r = inout(reg) r,
                b = in(reg) $b,
                fl = inout(reg) fl,
            );
        }
        let _ = r;
        fl
    }};
}

/// `INSN dst, cl`; returns RFLAGS afterwards.
macro_rules! rcl {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut r: u64 = $a;
        let mut fl: u64 = $f;
        // SAFETY: as in rr!.
        unsafe {
            asm!(
                "push {fl}",
                "popfq",
                concat!($insn, " {r:", $m, "}, cl"),
                "pushfq",
                "pop {fl}",
                r = inout(reg) r,
                in("cl") $b as u8,
                fl = inout(reg) fl,
            );
        }
        let _ = r;
        fl
    }};
}

/// One instruction at each operand size.
macro_rules! sized {
    ($kind:ident, $insn:literal, $bits:expr, $a:expr, $b:expr, $f:expr) => {
        match $bits {
            8 => $kind!($insn, "l", $a, $b, $f),
            16 => $kind!($insn, "x", $a, $b, $f),
            32 => $kind!($insn, "e", $a, $b, $f),
            _ => $kind!($insn, "r", $a, $b, $f),
        }
    };
}

/// RFLAGS' status flags after the host CPU runs `op` at `bits` on `a` and `b` (for shifts
/// and rotates `b` is the count; for BT the bit offset) with the status flags of `rflags`
/// coming in. `None` for an operation or size with no register form here.
pub fn status_after(op: Op, bits: u32, a: u64, b: u64, rflags: u64) -> Option<u64> {
    let f = (rflags & STATUS) | 2;
    let out = match op {
        Op::Add => sized!(rr, "add", bits, a, b, f),
        Op::Adc => sized!(rr, "adc", bits, a, b, f),
        Op::Sub => sized!(rr, "sub", bits, a, b, f),
        Op::Sbb => sized!(rr, "sbb", bits, a, b, f),
        Op::And => sized!(rr, "and", bits, a, b, f),
        Op::Or => sized!(rr, "or", bits, a, b, f),
        Op::Xor => sized!(rr, "xor", bits, a, b, f),
        Op::Shl => sized!(rcl, "shl", bits, a, b, f),
        Op::Shr => sized!(rcl, "shr", bits, a, b, f),
        Op::Sar => sized!(rcl, "sar", bits, a, b, f),
        Op::Rol => sized!(rcl, "rol", bits, a, b, f),
        Op::Ror => sized!(rcl, "ror", bits, a, b, f),
        // No 8-bit register forms.
        Op::Imul if bits >= 16 => match bits {
            16 => rr!("imul", "x", a, b, f),
            32 => rr!("imul", "e", a, b, f),
            _ => rr!("imul", "r", a, b, f),
        },
        Op::Bt if bits >= 16 => match bits {
            16 => rr!("bt", "x", a, b, f),
            32 => rr!("bt", "e", a, b, f),
            _ => rr!("bt", "r", a, b, f),
        },
        _ => return None,
    };
    Some(out & STATUS)
}

#[cfg(test)]
mod tests {
    use super::super::alu::alu;
    use super::*;

    /// Where the SDM defines a flag, the host agrees with the ALU model (so taking the
    /// undefined ones from the host never changes a defined one).
    #[test]
    fn defined_flags_agree_with_the_model() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ops = [
            Op::Add,
            Op::Adc,
            Op::Sub,
            Op::Sbb,
            Op::And,
            Op::Or,
            Op::Xor,
            Op::Shl,
            Op::Shr,
            Op::Sar,
            Op::Rol,
            Op::Ror,
            Op::Imul,
            Op::Bt,
        ];
        for op in ops {
            for bits in [8, 16, 32, 64] {
                for _ in 0..500 {
                    let a = next();
                    let b = if matches!(op, Op::Shl | Op::Shr | Op::Sar | Op::Rol | Op::Ror) {
                        next() % 70
                    } else {
                        next()
                    };
                    let f = next() & STATUS;
                    let Some(host) = status_after(op, bits, a, b, f) else {
                        assert!(matches!(op, Op::Imul | Op::Bt) && bits == 8);
                        continue;
                    };
                    let m = alu(op, bits, a, b, f | 2);
                    let defined = STATUS & !m.undefined;
                    assert_eq!(
                        host & defined,
                        m.rflags & defined,
                        "{op:?}/{bits} {a:#x} {b:#x}"
                    );
                }
            }
        }
    }
}
