//! Flags the SDM leaves *undefined*, taken from the host CPU itself.
//!
//! Guest ring-3 code runs natively on the host's CPU, so what that CPU leaves in an
//! undefined flag (AF after TEST, OF after a multi-bit shift, SF/ZF/PF after IMUL, ...) is
//! what the guest would have seen had it run the instruction itself. The interpreter runs
//! the same operation on the same operands here (between POPFQ and PUSHFQ) and takes the
//! undefined flags from the result, instead of halting or proving them dead. The defined
//! flags still come from [`mod@super::alu`] (differentially tested against the CPU).

use std::arch::asm;

use super::alu::{AF, CF, OF, Op, PF, SF, STATUS, ZF};

/// Whether the host has LAHF/SAHF in 64-bit mode (CPUID.80000001H:ECX.LAHF-SAHF[bit 0]),
/// which load and store the status flags here. (Every x86-64 CPU KVM runs on has them;
/// without them nothing here answers, and the interpreter proves undefined flags dead or
/// leaves the instruction to the CPU.)
fn have_lahf() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| {
        // (Leaf 0x80000000 says how far the extended leaves go.)
        let max = std::arch::x86_64::__cpuid(0x8000_0000).eax;
        max >= 0x8000_0001 && std::arch::x86_64::__cpuid(0x8000_0001).ecx & 1 != 0
    })
}

/// The status flags of `rflags` as the asm blocks load them: AH for SAHF (SF, ZF, AF, PF,
/// CF) in RAX, and OF as 0/1 (`add $0x7f` of it sets OF exactly when it is 1).
fn flags_in(rflags: u64) -> (u64, u8) {
    ((rflags & 0xff) << 8, u8::from(rflags & OF != 0))
}

/// The status flags back from LAHF's AH (in RAX) and SETO's byte.
fn flags_out(rax: u64, of: u8) -> u64 {
    ((rax >> 8) & (SF | ZF | AF | PF | CF)) | (u64::from(of) << 11) | 2
}

/// `INSN dst, src` on two registers; returns the status flags afterwards. The flags go in
/// and out through SAHF/LAHF and an `add`/`seto` for OF: a POPFQ/PUSHFQ round trip costs
/// several times more, and these run for many interpreted instructions.
macro_rules! rr {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut r: u64 = $a;
        let (mut ax, mut of) = flags_in($f);
        // SAFETY: pure register arithmetic; SAHF loads only status flags, so DF stays clear
        // as Rust requires.
        unsafe {
            asm!(
                "add {of}, 0x7f",
                "sahf",
                concat!($insn, " {r:", $m, "}, {b:", $m, "}"),
                "lahf",
                "seto {of}",
                r = inout(reg) r,
                b = in(reg) $b,
                of = inout(reg_byte) of,
                inout("rax") ax,
                options(nomem, nostack),
            );
        }
        let _ = r;
        flags_out(ax, of)
    }};
}

/// `INSN dst, cl`; returns the status flags afterwards (as rr!).
macro_rules! rcl {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut r: u64 = $a;
        let (mut ax, mut of) = flags_in($f);
        // SAFETY: as in rr!.
        unsafe {
            asm!(
                "add {of}, 0x7f",
                "sahf",
                concat!($insn, " {r:", $m, "}, cl"),
                "lahf",
                "seto {of}",
                r = inout(reg) r,
                in("cl") $b as u8,
                of = inout(reg_byte) of,
                inout("rax") ax,
                options(nomem, nostack),
            );
        }
        let _ = r;
        flags_out(ax, of)
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

/// One instruction at each operand size but 8 bits (IMUL, the bit tests).
macro_rules! sized16 {
    ($kind:ident, $insn:literal, $bits:expr, $a:expr, $b:expr, $f:expr) => {
        match $bits {
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
    if !have_lahf() {
        return None;
    }
    let f = rflags;
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
        Op::Imul if bits >= 16 => sized16!(rr, "imul", bits, a, b, f),
        Op::Bt if bits >= 16 => sized16!(rr, "bt", bits, a, b, f),
        Op::Bts if bits >= 16 => sized16!(rr, "bts", bits, a, b, f),
        Op::Btr if bits >= 16 => sized16!(rr, "btr", bits, a, b, f),
        Op::Btc if bits >= 16 => sized16!(rr, "btc", bits, a, b, f),
        _ => return None,
    };
    Some(out & STATUS)
}

/// Shifts, rotates and BT by an immediate count, run on the host in the *same encoding*
/// as the guest's instruction (C0/C1 ib, D0/D1, 0F BA /4 ib), with the operand in
/// AL/AX/EAX/RAX: undefined flags may depend on the encoding (on Intel, `rol $7` and
/// `rol %cl` with CL = 7 leave OF differently).
/// The instructions are built here, one stub per (operation, size, count), never copied
/// from the guest: [`ImmForm`] names what may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImmForm {
    /// A shift or rotate by an immediate (C0/C1): /digit of the group-2 opcode.
    ShiftImm { digit: u8, count: u8 },
    /// A shift or rotate by one (D0/D1).
    ShiftOne { digit: u8 },
    /// BT/BTS/BTR/BTC r/m, imm8 (0F BA /4, /5, /6, /7).
    BtImm { digit: u8, offset: u8 },
}

/// Bytes per stub: at most 5 instruction bytes and a RET.
const STUB: usize = 8;
/// Group-2 /digits this module builds: ROL, ROR, SHL, SHR, SAR.
const DIGITS: [u8; 5] = [0, 1, 4, 5, 7];
const SIZES: [u32; 4] = [8, 16, 32, 64];

fn size_index(bits: u32) -> Option<usize> {
    SIZES.iter().position(|&b| b == bits)
}

/// The stub's index in the table.
fn stub_index(form: ImmForm, bits: u32) -> Option<usize> {
    let size = size_index(bits)?;
    Some(match form {
        ImmForm::ShiftImm { digit, count } => {
            let d = DIGITS.iter().position(|&x| x == digit)?;
            (d * 4 + size) * 256 + usize::from(count)
        }
        ImmForm::ShiftOne { digit } => {
            let d = DIGITS.iter().position(|&x| x == digit)?;
            5 * 4 * 256 + d * 4 + size
        }
        ImmForm::BtImm { digit, offset } => {
            if bits == 8 || !(4..=7).contains(&digit) {
                return None;
            }
            let d = usize::from(digit - 4);
            5 * 4 * 256 + 5 * 4 + (d * 3 + size - 1) * 256 + usize::from(offset)
        }
    })
}

/// Slots in the table (the tests check every one).
#[cfg(test)]
const STUBS: usize = 5 * 4 * 256 + 5 * 4 + 4 * 3 * 256;

/// The instruction bytes of a stub (operand: AL/AX/EAX/RAX, ModRM 11 digit 000) and RET:
/// what the assembled table holds (the tests compare the two).
#[cfg(test)]
fn stub_bytes(form: ImmForm, bits: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(STUB);
    match bits {
        16 => b.push(0x66),
        64 => b.push(0x48),
        _ => {}
    }
    match form {
        ImmForm::ShiftImm { digit, count } => {
            b.extend([
                if bits == 8 { 0xc0 } else { 0xc1 },
                0xc0 | (digit << 3),
                count,
            ]);
        }
        ImmForm::ShiftOne { digit } => {
            b.extend([if bits == 8 { 0xd0 } else { 0xd1 }, 0xc0 | (digit << 3)])
        }
        ImmForm::BtImm { digit, offset } => b.extend([0x0f, 0xba, 0xc0 | (digit << 3), offset]),
    }
    b.push(0xc3);
    b
}

// The stub table, in lbrprof's own code (`.text`), laid out as `stub_index` numbers the
// stubs: each stub the bytes `stub_bytes` gives, zero-padded to STUB bytes. Assembled
// here rather than written into an executable anonymous mapping at run time: anonymous
// executable memory is what JITs leave, so perf (and lbrprof's own report of a `record
// --vm`) took samples in it for JIT code and looked for a perf map of lbrprof's pid; in
// `.text` the stubs are named by the symbol `lbrprof_host_flag_stubs`.
// (The unit test `static_stubs_are_the_stub_bytes` compares every slot with stub_bytes.)
std::arch::global_asm!(
    r#"
    .pushsection .text.lbrprof_host_flag_stubs,"ax",@progbits
    .balign 4096
    .globl lbrprof_host_flag_stubs
    .hidden lbrprof_host_flag_stubs
    .type lbrprof_host_flag_stubs,@function
lbrprof_host_flag_stubs:
    .macro lbrprof_stub_prefix size
    .if \size == 16
    .byte 0x66
    .elseif \size == 64
    .byte 0x48
    .endif
    .endm
    .irp digit, 0, 1, 4, 5, 7
    .irp size, 8, 16, 32, 64
    .set lbrprof_count, 0
    .rept 256
    lbrprof_stub_prefix \size
    .if \size == 8
    .byte 0xc0
    .else
    .byte 0xc1
    .endif
    .byte 0xc0 | (\digit << 3), lbrprof_count, 0xc3
    .balign 8, 0
    .set lbrprof_count, lbrprof_count + 1
    .endr
    .endr
    .endr
    .irp digit, 0, 1, 4, 5, 7
    .irp size, 8, 16, 32, 64
    lbrprof_stub_prefix \size
    .if \size == 8
    .byte 0xd0
    .else
    .byte 0xd1
    .endif
    .byte 0xc0 | (\digit << 3), 0xc3
    .balign 8, 0
    .endr
    .endr
    .irp digit, 4, 5, 6, 7
    .irp size, 16, 32, 64
    .set lbrprof_count, 0
    .rept 256
    lbrprof_stub_prefix \size
    .byte 0x0f, 0xba, 0xc0 | (\digit << 3), lbrprof_count, 0xc3
    .balign 8, 0
    .set lbrprof_count, lbrprof_count + 1
    .endr
    .endr
    .endr
    .size lbrprof_host_flag_stubs, . - lbrprof_host_flag_stubs
    .purgem lbrprof_stub_prefix
    .popsection
"#
);

unsafe extern "C" {
    /// The first byte of the stub table above (8212 slots of STUB bytes).
    #[link_name = "lbrprof_host_flag_stubs"]
    safe static HOST_FLAG_STUBS: u8;
}

/// The stub table: `stub_index` slots of STUB bytes, read+execute, in the binary.
fn stubs() -> *const u8 {
    &raw const HOST_FLAG_STUBS
}

/// RFLAGS' status flags after the host CPU runs `form` at `bits` on `a` with the status
/// flags of `rflags` coming in; `None` if the form has no stub (or the table could not be
/// mapped).
pub fn status_after_imm(form: ImmForm, bits: u32, a: u64, rflags: u64) -> Option<u64> {
    if !have_lahf() {
        return None;
    }
    let i = stub_index(form, bits)?;
    // SAFETY: i < STUBS: a stub within the table.
    let stub = unsafe { stubs().add(i * STUB) };
    let (mut ax, mut of) = flags_in(rflags);
    // SAFETY: the stub is one register-only instruction on RAX built by stub_bytes and a
    // RET; the call's return address uses the stack, which asm! may (no `nostack`). The
    // flags are loaded before RAX takes the operand (MOV leaves them) and read back with
    // LAHF once the stub is done with RAX; as in rr!.
    unsafe {
        asm!(
            "add {of}, 0x7f",
            "sahf",
            "mov rax, {a}",
            "call {stub}",
            "lahf",
            "seto {of}",
            a = in(reg) a,
            stub = in(reg) stub,
            of = inout(reg_byte) of,
            inout("rax") ax,
        );
    }
    Some(flags_out(ax, of) & STATUS)
}

/// The bit scans and counts (`dst ← f(src)`, register destination).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitScan {
    Bsf,
    Bsr,
    Tzcnt,
    Lzcnt,
    Popcnt,
}

/// `INSN dst, src` on two registers; returns (dst, RFLAGS).
macro_rules! rrv {
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
        (r, fl)
    }};
}

/// The host CPU's destination register (all 64 bits: a BSF/BSR with a zero source leaves
/// it as the CPU does) and status flags after `op` at `bits` (16, 32 or 64) with the
/// guest's full destination register `dst`, source `src` and status flags. (A host without
/// TZCNT/LZCNT runs them as BSF/BSR, as the guest on it would.)
pub fn bit_scan(op: BitScan, bits: u32, dst: u64, src: u64, rflags: u64) -> Option<(u64, u64)> {
    let f = (rflags & STATUS) | 2;
    macro_rules! by_size {
        ($insn:literal) => {
            match bits {
                16 => rrv!($insn, "x", dst, src, f),
                32 => rrv!($insn, "e", dst, src, f),
                64 => rrv!($insn, "r", dst, src, f),
                _ => return None,
            }
        };
    }
    let (v, fl) = match op {
        BitScan::Bsf => by_size!("bsf"),
        BitScan::Bsr => by_size!("bsr"),
        BitScan::Tzcnt => by_size!("tzcnt"),
        BitScan::Lzcnt => by_size!("lzcnt"),
        BitScan::Popcnt => by_size!("popcnt"),
    };
    Some((v, fl & STATUS))
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
        // that a divide neither divides by zero nor overflows (no #DE). Flags as in rrv!.
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
            Op::Bts,
            Op::Btr,
            Op::Btc,
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
                        assert!(
                            matches!(op, Op::Imul | Op::Bt | Op::Bts | Op::Btr | Op::Btc)
                                && bits == 8
                        );
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

    /// The flags go in and out through SAHF/LAHF and OF on the side: every status flag,
    /// the undefined ones included, is what a POPFQ/PUSHFQ round trip around the same
    /// instruction gives, from every combination of incoming flags.
    #[test]
    fn flags_through_lahf_are_those_of_a_pushfq_round_trip() {
        let mut x = 0x0bad_cafe_1234_5677u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Every combination of the six status flags, spread over bits 0, 2, 4, 6, 7, 11.
        let flags = |i: u64| {
            [CF, PF, AF, ZF, SF, OF]
                .iter()
                .enumerate()
                .fold(0, |f, (k, &bit)| if i >> k & 1 != 0 { f | bit } else { f })
        };
        for i in 0..64 {
            let f = flags(i);
            for _ in 0..20 {
                let (a, b) = (next(), next());
                let count = b % 70;
                let reference = [
                    (Op::And, 8, b, rrv!("and", "l", a, b, f | 2).1),
                    (Op::Xor, 32, b, rrv!("xor", "e", a, b, f | 2).1),
                    (Op::Adc, 64, b, rrv!("adc", "r", a, b, f | 2).1),
                    (Op::Imul, 16, b, rrv!("imul", "x", a, b, f | 2).1),
                ];
                for (op, bits, b, want) in reference {
                    assert_eq!(
                        status_after(op, bits, a, b, f),
                        Some(want & STATUS),
                        "{op:?}/{bits} {a:#x} {b:#x} from {f:#x}"
                    );
                }
                let mut fl = f | 2;
                // SAFETY: as in rrv!.
                unsafe {
                    asm!(
                        "push {fl}",
                        "popfq",
                        "shr {r}, cl",
                        "pushfq",
                        "pop {fl}",
                        r = inout(reg) a => _,
                        in("cl") count as u8,
                        fl = inout(reg) fl,
                    );
                }
                assert_eq!(status_after(Op::Shr, 64, a, count, f), Some(fl & STATUS));
                // The same encoding as the stub (C1 /5 ib).
                fl = f | 2;
                // SAFETY: as in rrv!.
                unsafe {
                    asm!(
                        "push {fl}",
                        "popfq",
                        "shr {r}, 13",
                        "pushfq",
                        "pop {fl}",
                        r = inout(reg) a => _,
                        fl = inout(reg) fl,
                    );
                }
                let form = ImmForm::ShiftImm {
                    digit: 5,
                    count: 13,
                };
                assert_eq!(status_after_imm(form, 64, a, f), Some(fl & STATUS));
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

    /// Every form a stub may exist for: shifts by one and by each count, bit tests by
    /// each offset (BT* at 8 bits has none).
    fn immediate_forms() -> Vec<ImmForm> {
        let mut forms = vec![];
        for digit in DIGITS {
            forms.push(ImmForm::ShiftOne { digit });
            forms.extend((0..=255u8).map(|count| ImmForm::ShiftImm { digit, count }));
        }
        for digit in 4..=7 {
            forms.extend((0..=255u8).map(|offset| ImmForm::BtImm { digit, offset }));
        }
        forms
    }

    /// Every stub has its own slot in the table, and its bytes fit the slot.
    #[test]
    fn stubs_have_distinct_slots() {
        let mut seen = vec![false; STUBS];
        for bits in SIZES {
            for f in immediate_forms() {
                let Some(i) = stub_index(f, bits) else {
                    assert!(matches!(f, ImmForm::BtImm { .. }) && bits == 8);
                    continue;
                };
                assert!(!seen[i], "{f:?}/{bits}");
                seen[i] = true;
                assert!(stub_bytes(f, bits).len() <= STUB);
            }
        }
        assert!(seen.iter().all(|&x| x));
        assert_eq!(stub_index(ImmForm::ShiftOne { digit: 6 }, 32), None);
    }

    /// The table assembled into the binary holds, in every slot, the bytes stub_bytes
    /// gives for its form, then zeros.
    #[test]
    fn static_stubs_are_the_stub_bytes() {
        // SAFETY: the table is STUBS * STUB bytes of the binary's read-only code.
        let table = unsafe { std::slice::from_raw_parts(stubs(), STUBS * STUB) };
        let mut checked = 0;
        for bits in SIZES {
            for f in immediate_forms() {
                let Some(i) = stub_index(f, bits) else {
                    continue;
                };
                let mut want = stub_bytes(f, bits);
                want.resize(STUB, 0);
                assert_eq!(&table[i * STUB..(i + 1) * STUB], &want[..], "{f:?}/{bits}");
                checked += 1;
            }
        }
        assert_eq!(checked, STUBS);
    }
}

/// The BMI1/BMI2 instructions that leave AF and PF undefined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bmi {
    /// `ANDN dst, a, b`.
    Andn,
    /// `BLSR dst, a`.
    Blsr,
    /// `BLSMSK dst, a`.
    Blsmsk,
    /// `BLSI dst, a`.
    Blsi,
    /// `BZHI dst, a, b` (`b`: the index).
    Bzhi,
}

/// `INSN dst, a, b` on three registers; returns RFLAGS afterwards.
macro_rules! rrr {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut fl: u64 = $f;
        let _r: u64;
        // SAFETY: as in rrv!; the caller checked that the host has the instruction.
        unsafe {
            asm!(
                "push {fl}",
                "popfq",
                concat!($insn, " {r:", $m, "}, {a:", $m, "}, {b:", $m, "}"),
                "pushfq",
                "pop {fl}",
                r = out(reg) _r,
                a = in(reg) $a,
                b = in(reg) $b,
                fl = inout(reg) fl,
            );
        }
        fl
    }};
}

/// `INSN dst, a` (`b` unused); returns RFLAGS afterwards.
macro_rules! rr1 {
    ($insn:literal, $m:literal, $a:expr, $b:expr, $f:expr) => {{
        let mut fl: u64 = $f;
        let _r: u64;
        let _ = $b;
        // SAFETY: as in rrr!.
        unsafe {
            asm!(
                "push {fl}",
                "popfq",
                concat!($insn, " {r:", $m, "}, {a:", $m, "}"),
                "pushfq",
                "pop {fl}",
                r = out(reg) _r,
                a = in(reg) $a,
                fl = inout(reg) fl,
            );
        }
        fl
    }};
}

/// RFLAGS' status flags after the host CPU runs `op` at `bits` (32 or 64) on `a` and `b`
/// with the status flags of `rflags` coming in; `None` for another size or where the
/// host lacks the instruction (BMI1, BMI2 for BZHI).
pub fn bmi_status(op: Bmi, bits: u32, a: u64, b: u64, rflags: u64) -> Option<u64> {
    let has = if op == Bmi::Bzhi {
        std::arch::is_x86_feature_detected!("bmi2")
    } else {
        std::arch::is_x86_feature_detected!("bmi1")
    };
    if !has || !matches!(bits, 32 | 64) {
        return None;
    }
    let f = (rflags & STATUS) | 2;
    macro_rules! by_size {
        ($kind:ident, $insn:literal) => {
            if bits == 32 {
                $kind!($insn, "e", a, b, f)
            } else {
                $kind!($insn, "r", a, b, f)
            }
        };
    }
    let fl = match op {
        Bmi::Andn => by_size!(rrr, "andn"),
        Bmi::Blsr => by_size!(rr1, "blsr"),
        Bmi::Blsmsk => by_size!(rr1, "blsmsk"),
        Bmi::Blsi => by_size!(rr1, "blsi"),
        Bmi::Bzhi => by_size!(rrr, "bzhi"),
    };
    Some(fl & STATUS)
}
