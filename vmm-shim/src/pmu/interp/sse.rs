//! SSE/SSE2 moves and integer/bitwise operations on XMM registers (legacy encodings; the
//! VEX forms are `interp/avx.rs`'s, EVEX ones are left to the CPU), the forms compiled hot loops and libc's string
//! and memory functions use: MOVUPS/MOVAPS/MOVDQU/MOVDQA (and the PD forms), MOVD/MOVQ,
//! MOVLPx/MOVHPx, the 128-bit logic group, PCMPEQ/PCMPGT, PMINUB/PMAXUB, PADD/PSUB, PMULUDQ,
//! PMOVMSKB, PUNPCKL*/PUNPCKH*, PACKUSWB, PSHUFD, PSLL/PSRL (W/D/Q/DQ) by an immediate,
//! the non-temporal stores, and where the host has them SSSE3's PALIGNR and SSE4.1's
//! PMINUD. None of them touches RFLAGS or raises SIMD floating-point exceptions. A legacy SSE instruction whose 16-byte memory operand is not 16-byte
//! aligned (other than the unaligned moves) raises #GP on the CPU: left to it.
//!
//! XMM registers are fetched from the vCPU at the first such instruction of a session and
//! written back once at its end ([`super::Session::xmm_to_write_back`]).

use iced_x86::{Code, EncodingKind, Mnemonic, OpKind, Register};

use super::{Effect, Exec, Halt, PendingWrite, get_reg, set_reg};
use crate::pmu::guest::InterpState;

/// XMM register index of `reg`.
pub(super) fn xmm_index(reg: Register) -> Option<usize> {
    let i = (reg as usize).checked_sub(Register::XMM0 as usize)?;
    (i < 16).then_some(i)
}

/// `a` and `b` lane by lane (`width` bytes per lane).
fn lanes(a: u128, b: u128, width: u32, f: impl Fn(u64, u64) -> u64) -> u128 {
    let bits = width * 8;
    let m: u128 = if bits == 64 {
        u128::from(u64::MAX)
    } else {
        (1u128 << bits) - 1
    };
    let mut out = 0u128;
    for i in 0..(16 / width) {
        let sh = i * bits;
        let x = ((a >> sh) & m) as u64;
        let y = ((b >> sh) & m) as u64;
        out |= (u128::from(f(x, y)) & m) << sh;
    }
    out
}

/// Interleaves the low halves of `a` and `b` (`width`-byte elements), `a`'s first.
fn unpack_low(a: u128, b: u128, width: u32) -> u128 {
    let bits = width * 8;
    let m: u128 = if bits == 64 {
        u128::from(u64::MAX)
    } else {
        (1u128 << bits) - 1
    };
    let mut out = 0u128;
    for i in 0..(8 / width) {
        let x = (a >> (i * bits)) & m;
        let y = (b >> (i * bits)) & m;
        out |= x << (2 * i * bits);
        out |= y << ((2 * i + 1) * bits);
    }
    out
}

/// Interleaves the high halves of `a` and `b` (`width`-byte elements), `a`'s first.
fn unpack_high(a: u128, b: u128, width: u32) -> u128 {
    unpack_low(a >> 64, b >> 64, width)
}

/// PACKUSWB: the signed words of `a`, then of `b`, saturated to unsigned bytes.
fn pack_unsigned_words(a: u128, b: u128) -> u128 {
    let mut out = 0u128;
    for (i, w) in (0..8)
        .map(|i| (a >> (16 * i)) as u16)
        .chain((0..8).map(|i| (b >> (16 * i)) as u16))
        .enumerate()
    {
        let byte = (w as i16).clamp(0, 255) as u128;
        out |= byte << (8 * i);
    }
    out
}

/// PALIGNR: bytes `n..n + 16` of `hi:lo` (32 bytes), zeros past its end.
fn align_right(hi: u128, lo: u128, n: u32) -> u128 {
    match 8 * n {
        0 => lo,
        bits @ 1..=127 => (lo >> bits) | (hi << (128 - bits)),
        bits @ 128..=255 => hi >> (bits - 128),
        _ => 0,
    }
}

fn sext_lane(v: u64, bits: u32) -> i64 {
    super::sext(v, bits)
}

impl Exec<'_, '_, '_> {
    fn xmm(&mut self, i: usize) -> Result<u128, Halt> {
        if self.session.xmm.is_none() {
            self.session.xmm = Some(self.session.g.xmm().ok_or_else(|| self.unsupported())?);
        }
        Ok(self.session.xmm.map_or(0, |x| x[i]))
    }

    /// Operand `i` as `bytes` bytes (an XMM register's low bytes, a general-purpose
    /// register, or memory; `aligned`: a 16-byte memory operand must be 16-byte aligned).
    fn read_x(&mut self, s: &InterpState, i: u32, bytes: u32, aligned: bool) -> Result<u128, Halt> {
        let m: u128 = if bytes == 16 {
            u128::MAX
        } else {
            (1u128 << (bytes * 8)) - 1
        };
        match self.insn.op_kind(i) {
            OpKind::Register => {
                let reg = self.insn.op_register(i);
                if let Some(x) = xmm_index(reg) {
                    return Ok(self.xmm(x)? & m);
                }
                let v = get_reg(s, reg).ok_or_else(|| self.unsupported())?;
                Ok(u128::from(v) & m)
            }
            OpKind::Memory => {
                let addr = self.address(s, i)?;
                if aligned && bytes == 16 && !addr.is_multiple_of(16) {
                    return Err(Halt::Memory);
                }
                if bytes == 16 {
                    self.session.read_mem128(addr)
                } else {
                    Ok(u128::from(self.session.read_mem(addr, bytes as usize)?))
                }
            }
            _ => Err(self.unsupported()),
        }
    }

    /// Writes operand `i`: an XMM register (the whole register: the caller merges), a
    /// general-purpose register (`bytes` 4 or 8, zero-extended as a 32-bit write is), or
    /// `bytes` of memory.
    fn write_x(
        &mut self,
        s: &mut InterpState,
        i: u32,
        bytes: u32,
        v: u128,
        aligned: bool,
    ) -> Result<(), Halt> {
        match self.insn.op_kind(i) {
            OpKind::Register => {
                let reg = self.insn.op_register(i);
                if let Some(x) = xmm_index(reg) {
                    self.xmm(x)?;
                    self.xmm_write = Some((x, v));
                    return Ok(());
                }
                if reg.size() as u32 != bytes {
                    return Err(self.unsupported());
                }
                set_reg(s, reg, v as u64).ok_or_else(|| self.unsupported())
            }
            OpKind::Memory => {
                let addr = self.address(s, i)?;
                if aligned && bytes == 16 && !addr.is_multiple_of(16) {
                    return Err(Halt::Memory);
                }
                if self.write.is_some() {
                    return Err(self.unsupported());
                }
                let m: u128 = if bytes == 16 {
                    u128::MAX
                } else {
                    (1u128 << (bytes * 8)) - 1
                };
                self.write = Some(PendingWrite {
                    addr,
                    bytes: bytes as usize,
                    value: v & m,
                    value_hi: 0,
                });
                Ok(())
            }
            _ => Err(self.unsupported()),
        }
    }

    /// Runs the instruction if it is one of this module's; `None` if it is not.
    pub(super) fn run_sse(&mut self, s: &mut InterpState) -> Option<Result<Effect, Halt>> {
        let insn = self.insn;
        if insn.encoding() != EncodingKind::Legacy {
            return None;
        }
        let r = match insn.code() {
            Code::Movups_xmm_xmmm128
            | Code::Movupd_xmm_xmmm128
            | Code::Movdqu_xmm_xmmm128
            | Code::Movups_xmmm128_xmm
            | Code::Movupd_xmmm128_xmm
            | Code::Movdqu_xmmm128_xmm => self.mov128(s, false),
            Code::Movaps_xmm_xmmm128
            | Code::Movapd_xmm_xmmm128
            | Code::Movdqa_xmm_xmmm128
            | Code::Movaps_xmmm128_xmm
            | Code::Movapd_xmmm128_xmm
            | Code::Movdqa_xmmm128_xmm
            // The non-temporal stores: a cache hint and weaker ordering, which a plain
            // store (ordered more strictly) satisfies; aligned as MOVDQA.
            | Code::Movntdq_m128_xmm
            | Code::Movntps_m128_xmm
            | Code::Movntpd_m128_xmm => self.mov128(s, true),
            // To an XMM register: zero-extended.
            Code::Movd_xmm_rm32 | Code::Movq_xmm_rm64 | Code::Movq_xmm_xmmm64 => {
                let bytes = if insn.code() == Code::Movd_xmm_rm32 {
                    4
                } else {
                    8
                };
                self.read_x(s, 1, bytes, false)
                    .and_then(|v| self.write_x(s, 0, 16, v, false))
            }
            // From an XMM register: to a GPR or memory (or, for MOVQ xmm/m64, xmm: the
            // upper half zeroed).
            Code::Movd_rm32_xmm | Code::Movq_rm64_xmm | Code::Movq_xmmm64_xmm => {
                let bytes = if insn.code() == Code::Movd_rm32_xmm {
                    4
                } else {
                    8
                };
                self.read_x(s, 1, bytes, false).and_then(|v| {
                    let dst_xmm = insn.op0_kind() == OpKind::Register
                        && xmm_index(insn.op0_register()).is_some();
                    self.write_x(s, 0, if dst_xmm { 16 } else { bytes }, v, false)
                })
            }
            Code::Movlps_xmm_m64 | Code::Movlpd_xmm_m64 => self.half_load(s, false),
            Code::Movhps_xmm_m64 | Code::Movhpd_xmm_m64 => self.half_load(s, true),
            Code::Movlps_m64_xmm | Code::Movlpd_m64_xmm => self.half_store(s, false),
            Code::Movhps_m64_xmm | Code::Movhpd_m64_xmm => self.half_store(s, true),
            Code::Pmovmskb_r32_xmm | Code::Pmovmskb_r64_xmm => {
                self.read_x(s, 1, 16, true).and_then(|v| {
                    let mut mask = 0u64;
                    for b in 0..16 {
                        if (v >> (b * 8 + 7)) & 1 != 0 {
                            mask |= 1 << b;
                        }
                    }
                    let reg = insn.op0_register();
                    set_reg(s, reg, mask).ok_or_else(|| self.unsupported())
                })
            }
            Code::Pshufd_xmm_xmmm128_imm8 => self.read_x(s, 1, 16, true).and_then(|v| {
                let imm = insn.immediate8();
                let mut out = 0u128;
                for i in 0..4 {
                    let sel = (imm >> (2 * i)) & 3;
                    out |= ((v >> (32 * sel)) & 0xffff_ffff) << (32 * i);
                }
                self.write_x(s, 0, 16, out, false)
            }),
            Code::Psllw_xmm_imm8
            | Code::Pslld_xmm_imm8
            | Code::Psllq_xmm_imm8
            | Code::Psrlw_xmm_imm8
            | Code::Psrld_xmm_imm8
            | Code::Psrlq_xmm_imm8
            | Code::Pslldq_xmm_imm8
            | Code::Psrldq_xmm_imm8 => self.read_x(s, 0, 16, false).and_then(|v| {
                let n = u32::from(insn.immediate8());
                let out = match insn.code() {
                    Code::Pslldq_xmm_imm8 => v.checked_shl(8 * n).unwrap_or(0),
                    Code::Psrldq_xmm_imm8 => v.checked_shr(8 * n).unwrap_or(0),
                    code => {
                        let (width, left) = match code {
                            Code::Psllw_xmm_imm8 => (2, true),
                            Code::Pslld_xmm_imm8 => (4, true),
                            Code::Psllq_xmm_imm8 => (8, true),
                            Code::Psrlw_xmm_imm8 => (2, false),
                            Code::Psrld_xmm_imm8 => (4, false),
                            _ => (8, false),
                        };
                        // A count at or past the lane width clears the lane.
                        lanes(v, 0, width, |x, _| {
                            if n >= width * 8 {
                                0
                            } else if left {
                                x << n
                            } else {
                                x >> n
                            }
                        })
                    }
                };
                self.write_x(s, 0, 16, out, false)
            }),
            // SSSE3: run where the host has it (the guest's ring 3 runs on the host CPU,
            // so the program could run it).
            Code::Palignr_xmm_xmmm128_imm8 if std::is_x86_feature_detected!("ssse3") => {
                let n = u32::from(insn.immediate8());
                self.read_x(s, 0, 16, false).and_then(|hi| {
                    let lo = self.read_x(s, 1, 16, true)?;
                    self.write_x(s, 0, 16, align_right(hi, lo, n), false)
                })
            }
            _ => match self.binary_op() {
                Some(f) => self.binary(s, f),
                None => return None,
            },
        };
        Some(r.map(|()| Effect::Next))
    }

    fn mov128(&mut self, s: &mut InterpState, aligned: bool) -> Result<(), Halt> {
        let v = self.read_x(s, 1, 16, aligned)?;
        self.write_x(s, 0, 16, v, aligned)
    }

    /// MOVLPx/MOVHPx xmm, m64: one half loaded, the other kept.
    fn half_load(&mut self, s: &mut InterpState, high: bool) -> Result<(), Halt> {
        let m = self.read_x(s, 1, 8, false)?;
        let x = self.read_x(s, 0, 16, false)?;
        let v = if high {
            (x & u128::from(u64::MAX)) | (m << 64)
        } else {
            (x & !u128::from(u64::MAX)) | m
        };
        self.write_x(s, 0, 16, v, false)
    }

    /// MOVLPx/MOVHPx m64, xmm.
    fn half_store(&mut self, s: &mut InterpState, high: bool) -> Result<(), Halt> {
        let x = self.read_x(s, 1, 16, false)?;
        let v = if high {
            x >> 64
        } else {
            x & u128::from(u64::MAX)
        };
        self.write_x(s, 0, 8, v, false)
    }

    /// The two-operand `xmm ← xmm op xmm/m128` operations.
    fn binary_op(&self) -> Option<fn(u128, u128) -> u128> {
        let two_xmm = self.insn.op_count() == 2
            && self.insn.op0_kind() == OpKind::Register
            && xmm_index(self.insn.op0_register()).is_some();
        if !two_xmm {
            return None;
        }
        match self.insn.mnemonic() {
            // SSE4.1 (its VEX form goes through `lane_op`): where the host has it.
            Mnemonic::Pminud if std::is_x86_feature_detected!("sse4.1") => {
                Some(|a, b| lanes(a, b, 4, |x, y| x.min(y)))
            }
            Mnemonic::Packuswb => Some(pack_unsigned_words),
            Mnemonic::Punpckhbw => Some(|a, b| unpack_high(a, b, 1)),
            Mnemonic::Punpckhwd => Some(|a, b| unpack_high(a, b, 2)),
            Mnemonic::Punpckhdq => Some(|a, b| unpack_high(a, b, 4)),
            Mnemonic::Punpckhqdq => Some(|a, b| unpack_high(a, b, 8)),
            m => lane_op(m),
        }
    }

    fn binary(&mut self, s: &mut InterpState, f: fn(u128, u128) -> u128) -> Result<(), Halt> {
        let a = self.read_x(s, 0, 16, true)?;
        let b = self.read_x(s, 1, 16, true)?;
        self.write_x(s, 0, 16, f(a, b), true)
    }
}

/// The lane-local operation of a two-operand SSE instruction `xmm ← xmm op xmm/m128`
/// (legacy `mnemonic`) or of its three-operand VEX form (`V`-prefixed: `dst ← src1 op
/// src2`, applied to each 128-bit lane), if it is one the interpreter runs.
pub(super) fn lane_op(mnemonic: Mnemonic) -> Option<fn(u128, u128) -> u128> {
    use Mnemonic as M;
    let f: fn(u128, u128) -> u128 = match mnemonic {
        M::Pxor | M::Vpxor | M::Xorps | M::Vxorps | M::Xorpd | M::Vxorpd => |a, b| a ^ b,
        M::Por | M::Vpor | M::Orps | M::Vorps | M::Orpd | M::Vorpd => |a, b| a | b,
        M::Pand | M::Vpand | M::Andps | M::Vandps | M::Andpd | M::Vandpd => |a, b| a & b,
        M::Pandn | M::Vpandn | M::Andnps | M::Vandnps | M::Andnpd | M::Vandnpd => |a, b| !a & b,
        M::Pcmpeqb | M::Vpcmpeqb => |a, b| lanes(a, b, 1, |x, y| if x == y { !0 } else { 0 }),
        M::Pcmpeqw | M::Vpcmpeqw => |a, b| lanes(a, b, 2, |x, y| if x == y { !0 } else { 0 }),
        M::Pcmpeqd | M::Vpcmpeqd => |a, b| lanes(a, b, 4, |x, y| if x == y { !0 } else { 0 }),
        M::Pcmpgtb | M::Vpcmpgtb => |a, b| {
            lanes(a, b, 1, |x, y| {
                if sext_lane(x, 8) > sext_lane(y, 8) {
                    !0
                } else {
                    0
                }
            })
        },
        M::Pcmpgtw | M::Vpcmpgtw => |a, b| {
            lanes(a, b, 2, |x, y| {
                if sext_lane(x, 16) > sext_lane(y, 16) {
                    !0
                } else {
                    0
                }
            })
        },
        M::Pcmpgtd | M::Vpcmpgtd => |a, b| {
            lanes(a, b, 4, |x, y| {
                if sext_lane(x, 32) > sext_lane(y, 32) {
                    !0
                } else {
                    0
                }
            })
        },
        M::Pminub | M::Vpminub => |a, b| lanes(a, b, 1, |x, y| x.min(y)),
        M::Pmaxub | M::Vpmaxub => |a, b| lanes(a, b, 1, |x, y| x.max(y)),
        // (Its legacy form: `binary_op`.)
        M::Vpminud => |a, b| lanes(a, b, 4, |x, y| x.min(y)),
        M::Paddb | M::Vpaddb => |a, b| lanes(a, b, 1, u64::wrapping_add),
        M::Paddw | M::Vpaddw => |a, b| lanes(a, b, 2, u64::wrapping_add),
        M::Paddd | M::Vpaddd => |a, b| lanes(a, b, 4, u64::wrapping_add),
        M::Paddq | M::Vpaddq => |a, b| lanes(a, b, 8, u64::wrapping_add),
        // The low unsigned doubleword of each quadword, multiplied to 64 bits.
        M::Pmuludq | M::Vpmuludq => {
            |a, b| lanes(a, b, 8, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff))
        }
        M::Psubb | M::Vpsubb => |a, b| lanes(a, b, 1, u64::wrapping_sub),
        M::Psubw | M::Vpsubw => |a, b| lanes(a, b, 2, u64::wrapping_sub),
        M::Psubd | M::Vpsubd => |a, b| lanes(a, b, 4, u64::wrapping_sub),
        M::Psubq | M::Vpsubq => |a, b| lanes(a, b, 8, u64::wrapping_sub),
        M::Punpcklbw | M::Vpunpcklbw => |a, b| unpack_low(a, b, 1),
        M::Punpcklwd | M::Vpunpcklwd => |a, b| unpack_low(a, b, 2),
        M::Punpckldq | M::Vpunpckldq => |a, b| unpack_low(a, b, 4),
        M::Punpcklqdq | M::Vpunpcklqdq => |a, b| unpack_low(a, b, 8),
        _ => return None,
    };
    Some(f)
}
