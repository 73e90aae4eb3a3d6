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

/// The one-operand multiplies and divides (RDX:RAX or AX against a source operand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wide {
    Mul,
    Imul,
    Div,
    Idiv,
}

/// `INSN src` with RAX and RDX in and out; returns (RAX, RDX, RFLAGS).
macro_rules! wide {
    ($insn:literal, $m:literal, $rax:expr, $rdx:expr, $src:expr, $f:expr) => {{
        let mut rax: u64 = $rax;
        let mut rdx: u64 = $rdx;
        let mut fl: u64 = $f;
        // SAFETY: register arithmetic on RAX/RDX and the source; the caller has checked
        // that a divide neither divides by zero nor overflows (no #DE). Flags as in rr!.
        unsafe {
            asm!(
                "push {fl}",
                "popfq",
                concat!($insn, " {s:", $m, "}"),
                "pushfq",
                "pop {fl}",
                s = in(reg) $src,
                fl = inout(reg) fl,
                inout("rax") rax,
                inout("rdx") rdx,
            );
        }
        (rax, rdx, fl)
    }};
}

/// Whether a divide of the guest's RDX:RAX (AX at 8 bits) by `src` raises #DE (a zero
/// divisor, or a quotient that does not fit the operand size).
fn divide_faults(op: Wide, bits: u32, rax: u64, rdx: u64, src: u64) -> bool {
    let m = super::alu::mask(bits);
    let src = src & m;
    if src == 0 {
        return true;
    }
    let dividend: u128 = if bits == 8 {
        u128::from(rax & 0xffff)
    } else {
        (u128::from(rdx & m) << bits) | u128::from(rax & m)
    };
    if op == Wide::Div {
        return dividend / u128::from(src) > u128::from(m);
    }
    // Signed: the dividend is 2×bits wide, sign-extended to 128 bits.
    let shift = 128 - 2 * bits;
    let n = ((dividend << shift) as i128) >> shift;
    let d = i128::from(super::alu::sext(src, bits));
    match n.checked_div(d) {
        Some(q) => {
            let lim = 1i128 << (bits - 1);
            q < -lim || q >= lim
        }
        None => true,
    }
}

/// The host CPU's RAX, RDX and status flags after the one-operand `op` at `bits` with the
/// guest's RAX, RDX, source operand and status flags; `None` when the divide would raise
/// #DE (the guest's CPU must raise it).
pub fn wide(
    op: Wide,
    bits: u32,
    rax: u64,
    rdx: u64,
    src: u64,
    rflags: u64,
) -> Option<(u64, u64, u64)> {
    if matches!(op, Wide::Div | Wide::Idiv) && divide_faults(op, bits, rax, rdx, src) {
        return None;
    }
    let f = (rflags & STATUS) | 2;
    let (a, d, fl) = match (op, bits) {
        (Wide::Mul, 8) => wide!("mul", "l", rax, rdx, src, f),
        (Wide::Mul, 16) => wide!("mul", "x", rax, rdx, src, f),
        (Wide::Mul, 32) => wide!("mul", "e", rax, rdx, src, f),
        (Wide::Mul, _) => wide!("mul", "r", rax, rdx, src, f),
        (Wide::Imul, 8) => wide!("imul", "l", rax, rdx, src, f),
        (Wide::Imul, 16) => wide!("imul", "x", rax, rdx, src, f),
        (Wide::Imul, 32) => wide!("imul", "e", rax, rdx, src, f),
        (Wide::Imul, _) => wide!("imul", "r", rax, rdx, src, f),
        (Wide::Div, 8) => wide!("div", "l", rax, rdx, src, f),
        (Wide::Div, 16) => wide!("div", "x", rax, rdx, src, f),
        (Wide::Div, 32) => wide!("div", "e", rax, rdx, src, f),
        (Wide::Div, _) => wide!("div", "r", rax, rdx, src, f),
        (Wide::Idiv, 8) => wide!("idiv", "l", rax, rdx, src, f),
        (Wide::Idiv, 16) => wide!("idiv", "x", rax, rdx, src, f),
        (Wide::Idiv, 32) => wide!("idiv", "e", rax, rdx, src, f),
        (Wide::Idiv, _) => wide!("idiv", "r", rax, rdx, src, f),
    };
    Some((a, d, fl & STATUS))
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

    /// Divides that would raise #DE are refused before the host runs them (a #DE here
    /// would kill the VMM); the rest agree with 128-bit arithmetic.
    #[test]
    fn divides_check_for_faults_first() {
        assert_eq!(wide(Wide::Div, 64, 5, 0, 0, 0), None);
        assert_eq!(wide(Wide::Div, 64, 0, 1, 1, 0), None); // quotient 2^64
        assert_eq!(wide(Wide::Idiv, 64, 0, 1 << 63, u64::MAX, 0), None); // -2^127 / -1
        assert_eq!(wide(Wide::Idiv, 32, 0x8000_0000, 0, 1, 0), None); // 2^31 / 1
        assert_eq!(wide(Wide::Div, 8, 0x1000, 0, 0x10, 0), None); // quotient 256
        let (a, d, _) = wide(Wide::Div, 64, 100, 0, 7, 0).unwrap();
        assert_eq!((a, d), (14, 2));
        let (a, d, _) = wide(Wide::Idiv, 64, (-100i64) as u64, u64::MAX, 7, 0).unwrap();
        assert_eq!((a as i64, d as i64), (-14, -2));
        // 8 bits: AX / src -> AL quotient, AH remainder; the rest of RAX and RDX stay.
        let (a, d, _) = wide(Wide::Div, 8, 0xdead_0000_0000_0107, 9, 0x10, 0).unwrap();
        assert_eq!((a, d), (0xdead_0000_0000_0710, 9));
        // 32 bits zero-extends both halves.
        let (a, d, _) = wide(Wide::Mul, 32, u64::MAX, 0x1234 << 48, 2, 0).unwrap();
        assert_eq!((a, d), (0xffff_fffe, 1));
        let mut x = 99u64;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (rax, src, rdx) = (x, (x >> 17) | 1, x >> 40);
            if let Some((q, r, _)) = wide(Wide::Div, 64, rax, rdx, src, 0) {
                let n = (u128::from(rdx) << 64) | u128::from(rax);
                let want = (n / u128::from(src), n % u128::from(src));
                assert_eq!((u128::from(q), u128::from(r)), want);
            }
            let (lo, hi, _) = wide(Wide::Mul, 64, rax, rdx, src, 0).unwrap();
            let p = u128::from(rax) * u128::from(src);
            assert_eq!((u128::from(hi) << 64) | u128::from(lo), p);
        }
    }
}
