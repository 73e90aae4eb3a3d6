//! Differential tests: every ALU operation at every operand size against the host CPU
//! executing the same instruction (`asm!` between POPFQ and PUSHFQ), on random and edge
//! operands with random incoming flags. Only the flags the SDM defines are compared.

use std::arch::asm;

use super::*;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Mostly random values, with a share of edge values (0, 1, sign boundaries, ...).
    fn operand(&mut self, bits: u32) -> u64 {
        const EDGES: [u64; 8] = [0, 1, 2, 0x7f, 0x80, 0xff, 0x10, 0x0f];
        let m = mask(bits);
        match self.next() % 8 {
            0 => EDGES[(self.next() % 8) as usize],
            1 => m,
            2 => sign_bit_of(bits),
            3 => sign_bit_of(bits) - 1,
            _ => self.next(),
        }
    }

    /// Random status flags (bit 1 is always set in RFLAGS).
    fn flags(&mut self) -> u64 {
        (self.next() & STATUS) | 2
    }
}

fn sign_bit_of(bits: u32) -> u64 {
    1 << (bits - 1)
}

const ROUNDS: usize = 3000;

/// Runs `native` and the interpreter's `op` on the same inputs and compares the result
/// and every defined status flag.
fn check(op: Op, bits: u32, count_range: Option<u64>, native: fn(u64, u64, u64) -> (u64, u64)) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(bits) ^ (op as u64) << 8);
    for _ in 0..ROUNDS {
        let a = rng.operand(bits);
        let b = match count_range {
            Some(n) => rng.next() % n,
            None => rng.operand(bits),
        };
        let f = rng.flags();
        let (nv, nf) = native(a, b, f);
        let out = alu(op, bits, a, b, f);
        let m = mask(bits);
        assert_eq!(
            out.value & m,
            nv & m,
            "{op:?}/{bits}: {a:#x}, {b:#x} (flags in {f:#x}): value"
        );
        let defined = STATUS & !out.undefined;
        assert_eq!(
            out.rflags & defined,
            nf & defined,
            "{op:?}/{bits}: {a:#x}, {b:#x} (flags in {f:#x}): flags, undefined {:#x}",
            out.undefined
        );
        // Bits other than the status flags pass through untouched.
        assert_eq!(out.rflags & !STATUS, f & !STATUS);
    }
}

/// `INSN dst, src` on two registers of the size given by the operand modifier.
macro_rules! native_rr {
    ($name:ident, $insn:literal, $m:literal) => {
        fn $name(a: u64, b: u64, f: u64) -> (u64, u64) {
            let mut r = a;
            let mut fl = f;
            // SAFETY: pure register arithmetic; the flags round-trip through the stack,
            // which asm! may use (no `nostack`), and only status flags are set by POPFQ.
            unsafe {
                asm!(
                    "push {fl}",
                    "popfq",
                    concat!($insn, " {r:", $m, "}, {b:", $m, "}"),
                    "pushfq",
                    "pop {fl}",
                    r = inout(reg) r,
                    b = in(reg) b,
                    fl = inout(reg) fl,
                );
            }
            (r, fl)
        }
    };
}

/// `INSN dst` on one register.
macro_rules! native_r {
    ($name:ident, $insn:literal, $m:literal) => {
        fn $name(a: u64, _b: u64, f: u64) -> (u64, u64) {
            let mut r = a;
            let mut fl = f;
            // SAFETY: as in native_rr.
            unsafe {
                asm!(
                    "push {fl}",
                    "popfq",
                    concat!($insn, " {r:", $m, "}"),
                    "pushfq",
                    "pop {fl}",
                    r = inout(reg) r,
                    fl = inout(reg) fl,
                );
            }
            (r, fl)
        }
    };
}

/// `INSN dst, cl`.
macro_rules! native_cl {
    ($name:ident, $insn:literal, $m:literal) => {
        fn $name(a: u64, b: u64, f: u64) -> (u64, u64) {
            let mut r = a;
            let mut fl = f;
            // SAFETY: as in native_rr.
            unsafe {
                asm!(
                    "push {fl}",
                    "popfq",
                    concat!($insn, " {r:", $m, "}, cl"),
                    "pushfq",
                    "pop {fl}",
                    r = inout(reg) r,
                    in("cl") b as u8,
                    fl = inout(reg) fl,
                );
            }
            (r, fl)
        }
    };
}

macro_rules! sizes_rr {
    ($test:ident, $op:expr, $insn:literal, [$(($bits:literal, $m:literal, $f:ident)),*]) => {
        #[test]
        fn $test() {
            $(
                native_rr!($f, $insn, $m);
                check($op, $bits, None, $f);
            )*
        }
    };
}

macro_rules! sizes_r {
    ($test:ident, $op:expr, $insn:literal, [$(($bits:literal, $m:literal, $f:ident)),*]) => {
        #[test]
        fn $test() {
            $(
                native_r!($f, $insn, $m);
                check($op, $bits, None, $f);
            )*
        }
    };
}

macro_rules! sizes_cl {
    ($test:ident, $op:expr, $insn:literal, [$(($bits:literal, $m:literal, $f:ident)),*]) => {
        #[test]
        fn $test() {
            $(
                native_cl!($f, $insn, $m);
                // Counts beyond the mask, beyond the size, 0 and 1 all come up.
                check($op, $bits, Some(80), $f);
            )*
        }
    };
}

macro_rules! all_sizes {
    ($kind:ident, $test:ident, $op:expr, $insn:literal) => {
        $kind!(
            $test,
            $op,
            $insn,
            [(8, "l", n8), (16, "x", n16), (32, "e", n32), (64, "r", n64)]
        );
    };
}

all_sizes!(sizes_rr, add_matches_the_cpu, Op::Add, "add");
all_sizes!(sizes_rr, adc_matches_the_cpu, Op::Adc, "adc");
all_sizes!(sizes_rr, sub_matches_the_cpu, Op::Sub, "sub");
all_sizes!(sizes_rr, sbb_matches_the_cpu, Op::Sbb, "sbb");
all_sizes!(sizes_rr, and_matches_the_cpu, Op::And, "and");
all_sizes!(sizes_rr, or_matches_the_cpu, Op::Or, "or");
all_sizes!(sizes_rr, xor_matches_the_cpu, Op::Xor, "xor");
all_sizes!(sizes_r, inc_matches_the_cpu, Op::Inc, "inc");
all_sizes!(sizes_r, dec_matches_the_cpu, Op::Dec, "dec");
all_sizes!(sizes_r, neg_matches_the_cpu, Op::Neg, "neg");
all_sizes!(sizes_r, not_matches_the_cpu, Op::Not, "not");
all_sizes!(sizes_cl, shl_matches_the_cpu, Op::Shl, "shl");
all_sizes!(sizes_cl, shr_matches_the_cpu, Op::Shr, "shr");
all_sizes!(sizes_cl, sar_matches_the_cpu, Op::Sar, "sar");
all_sizes!(sizes_cl, rol_matches_the_cpu, Op::Rol, "rol");
all_sizes!(sizes_cl, ror_matches_the_cpu, Op::Ror, "ror");

// IMUL and BT have no 8-bit register forms.
sizes_rr!(
    imul_matches_the_cpu,
    Op::Imul,
    "imul",
    [(16, "x", n16), (32, "e", n32), (64, "r", n64)]
);
sizes_rr!(
    bt_matches_the_cpu,
    Op::Bt,
    "bt",
    [(16, "x", n16), (32, "e", n32), (64, "r", n64)]
);
sizes_rr!(
    bts_matches_the_cpu,
    Op::Bts,
    "bts",
    [(16, "x", n16), (32, "e", n32), (64, "r", n64)]
);
sizes_rr!(
    btr_matches_the_cpu,
    Op::Btr,
    "btr",
    [(16, "x", n16), (32, "e", n32), (64, "r", n64)]
);
sizes_rr!(
    btc_matches_the_cpu,
    Op::Btc,
    "btc",
    [(16, "x", n16), (32, "e", n32), (64, "r", n64)]
);

/// CMP and TEST are SUB and AND without the write-back: same flags.
#[test]
fn cmp_and_test_flags_match_the_cpu() {
    native_rr!(cmp64, "cmp", "r");
    native_rr!(test32, "test", "e");
    let mut rng = Rng(7);
    for _ in 0..ROUNDS {
        let (a, b, f) = (rng.operand(64), rng.operand(64), rng.flags());
        let (v, nf) = cmp64(a, b, f);
        assert_eq!(v, a);
        let out = alu(Op::Sub, 64, a, b, f);
        assert_eq!(out.rflags & STATUS, nf & STATUS, "cmp {a:#x}, {b:#x}");
        let (a, b) = (a & 0xffff_ffff, b & 0xffff_ffff);
        let (_, nf) = test32(a, b, f);
        let out = alu(Op::And, 32, a, b, f);
        let defined = STATUS & !AF;
        assert_eq!(out.rflags & defined, nf & defined, "test {a:#x}, {b:#x}");
    }
}

/// Shifts and rotates by an immediate count of 1 (the D1 forms) define OF.
#[test]
fn shifts_by_one_define_overflow() {
    let out = alu(Op::Shl, 8, 0x80, 1, 2);
    assert_eq!(out.value, 0);
    assert_eq!(out.undefined & OF, 0);
    assert_eq!(out.rflags & (CF | OF | ZF), CF | OF | ZF);
    let out = alu(Op::Shl, 8, 0x80, 2, 2);
    assert_ne!(out.undefined & OF, 0);
    // A zero count changes nothing at all.
    let out = alu(Op::Shl, 32, 5, 32, 2 | CF);
    assert_eq!((out.value, out.rflags, out.undefined), (5, 2 | CF, 0));
}
