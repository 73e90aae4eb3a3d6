//! VEX-encoded instructions: the AVX/AVX2 forms glibc's `*_avx2` string and memory
//! functions and `-O2`/`-O3` compiler output run (VEX.128 and VEX.256), and the BMI1/BMI2
//! instructions on general-purpose registers.
//!
//! * Vector: VMOVDQU/VMOVDQA/VMOVUPS/VMOVAPS/VMOVUPD/VMOVAPD loads, stores and register
//!   moves, VMOVD/VMOVQ, the lane-local integer and logic operations of `interp/sse.rs`
//!   in their three-operand VEX forms (VPXOR, VPCMPEQB, VPMINUB, VPADDD, VXORPS, ...),
//!   VPMOVMSKB, VPTEST, VPBROADCASTB/W/D/Q, VPSHUFB, VPALIGNR, VZEROUPPER and VZEROALL.
//!   A VEX.128 instruction that writes an XMM register zeroes bits 255:128 of its YMM
//!   register; a VEX.256 one writes all 256 bits. VEX memory operands need no alignment,
//!   but for VMOVDQA/VMOVAPS/VMOVAPD (#GP on the CPU otherwise: left to it).
//! * BMI1/BMI2: ANDN, BLSR, BLSMSK, BLSI, BZHI, SHLX/SHRX/SARX, RORX, PDEP, PEXT. The
//!   flags the SDM leaves undefined (AF and PF after ANDN, BLS*, BZHI) are the host CPU's
//!   running the same instruction ([`mod@host_flags`]), as for the logic group.
//!
//! The guest's ring 3 runs these on the host CPU, so they are interpreted only where the
//! host runs them (AVX2 for the vector forms, BMI1/BMI2): elsewhere they are left to the
//! CPU, which raises #UD as the guest expects. The YMM upper halves are read from the
//! vCPU with the XMM registers at the session's first VEX vector instruction
//! ([`crate::pmu::guest::GuestAccess::ymm`]) and written back once at its end, with the
//! XMM registers, only if an instruction changed them
//! ([`super::Session::ymm_hi_to_write_back`]).

use iced_x86::{EncodingKind, Mnemonic, OpKind, Register};

use super::alu::{AF, CF, PF, SF, STATUS, ZF};
use super::host_flags::{self, Bmi};
use super::{Effect, Exec, Halt, PendingWrite, get_reg, mask, set_reg, sse};
use crate::pmu::guest::InterpState;

/// A YMM register's value: bits 127:0, then bits 255:128.
type Ymm = [u128; 2];

/// Index of XMM/YMM register `reg`, and whether it is a YMM register.
fn vreg_index(reg: Register) -> Option<(usize, bool)> {
    if reg.is_xmm() {
        sse::xmm_index(reg).map(|i| (i, false))
    } else if reg.is_ymm() {
        let i = (reg as usize).checked_sub(Register::YMM0 as usize)?;
        (i < 16).then_some((i, true))
    } else {
        None
    }
}

/// The host CPU runs the VEX vector forms here (AVX2 enabled by its kernel).
fn host_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// `v` (`bytes` wide, at most 8) repeated across all 32 bytes.
fn broadcast(v: u64, bytes: u32) -> Ymm {
    let mut lane = 0u128;
    for i in 0..(16 / bytes) {
        lane |= u128::from(v & mask(bytes * 8)) << (i * bytes * 8);
    }
    [lane, lane]
}

/// PSHUFB on one 128-bit lane.
fn shuffle_bytes(a: u128, b: u128) -> u128 {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let out: [u8; 16] = std::array::from_fn(|i| {
        if b[i] & 0x80 != 0 {
            0
        } else {
            a[usize::from(b[i] & 15)]
        }
    });
    u128::from_le_bytes(out)
}

/// PALIGNR on one 128-bit lane: `hi:lo` (32 bytes) shifted right by `n` bytes, the low 16.
fn align_right(hi: u128, lo: u128, n: u32) -> u128 {
    match n {
        0 => lo,
        1..=15 => (lo >> (8 * n)) | (hi << (8 * (16 - n))),
        16..=31 => hi >> (8 * (n - 16)),
        _ => 0,
    }
}

/// PDEP: the low bits of `src` deposited at the set bits of `m`.
fn deposit(src: u64, m: u64) -> u64 {
    let (mut out, mut k, mut m) = (0u64, 0u32, m);
    while m != 0 {
        let bit = m & m.wrapping_neg();
        if (src >> k) & 1 != 0 {
            out |= bit;
        }
        k += 1;
        m &= m - 1;
    }
    out
}

/// PEXT: the bits of `src` at the set bits of `m`, packed at the low end.
fn extract(src: u64, m: u64) -> u64 {
    let (mut out, mut k, mut m) = (0u64, 0u32, m);
    while m != 0 {
        let bit = m & m.wrapping_neg();
        if src & bit != 0 {
            out |= 1 << k;
        }
        k += 1;
        m &= m - 1;
    }
    out
}

impl Exec<'_, '_, '_> {
    /// YMM register `i` (XMM and upper half), fetched from the vCPU at the session's first
    /// VEX vector instruction. XMM registers an earlier legacy SSE instruction of the
    /// session fetched (and may have changed) stay as the session has them.
    fn ymm(&mut self, i: usize) -> Result<Ymm, Halt> {
        if self.session.ymm_hi.is_none() {
            let (lo, hi) = self.session.g.ymm().ok_or_else(|| self.unsupported())?;
            self.session.xmm.get_or_insert(lo);
            self.session.ymm_hi = Some(hi);
        }
        let lo = self.session.xmm.map_or(0, |x| x[i]);
        let hi = self.session.ymm_hi.map_or(0, |x| x[i]);
        Ok([lo, hi])
    }

    /// The address of memory operand `i`, `bytes` wide. VMOVDQA/VMOVAPS/VMOVAPD and the
    /// non-temporal stores raise #GP on an operand not aligned to its size: left to the CPU.
    fn vector_address(&self, s: &InterpState, i: u32, bytes: u32) -> Result<u64, Halt> {
        let addr = self.address(s, i)?;
        let aligned = matches!(
            self.insn.mnemonic(),
            Mnemonic::Vmovdqa
                | Mnemonic::Vmovaps
                | Mnemonic::Vmovapd
                | Mnemonic::Vmovntdq
                | Mnemonic::Vmovntps
                | Mnemonic::Vmovntpd
        );
        if aligned && !addr.is_multiple_of(u64::from(bytes)) {
            return Err(Halt::Memory);
        }
        Ok(addr)
    }

    /// Operand `i`, `bytes` (1 to 32) of it: an XMM/YMM register's low bytes, a
    /// general-purpose register, or memory.
    fn read_v(&mut self, s: &InterpState, i: u32, bytes: u32) -> Result<Ymm, Halt> {
        let v = match self.insn.op_kind(i) {
            OpKind::Register => {
                let reg = self.insn.op_register(i);
                match vreg_index(reg) {
                    Some((x, _)) => self.ymm(x)?,
                    None => {
                        let v = get_reg(s, reg).ok_or_else(|| self.unsupported())?;
                        [u128::from(v), 0]
                    }
                }
            }
            OpKind::Memory => {
                let addr = self.vector_address(s, i, bytes)?;
                match bytes {
                    32 => [
                        self.session.read_mem128(addr)?,
                        self.session.read_mem128(addr.wrapping_add(16))?,
                    ],
                    16 => [self.session.read_mem128(addr)?, 0],
                    _ => [u128::from(self.session.read_mem(addr, bytes as usize)?), 0],
                }
            }
            _ => return Err(self.unsupported()),
        };
        Ok(match bytes {
            32 => v,
            16 => [v[0], 0],
            _ => [v[0] & ((1u128 << (bytes * 8)) - 1), 0],
        })
    }

    /// Writes operand `i` as a VEX instruction does: an XMM destination gets `v[0]` and
    /// its YMM upper half is zeroed, a YMM one gets both halves; a general-purpose
    /// register gets `v[0]` (its size must be `bytes`); memory gets `bytes` of `v`.
    fn write_v(&mut self, s: &mut InterpState, i: u32, bytes: u32, v: Ymm) -> Result<(), Halt> {
        match self.insn.op_kind(i) {
            OpKind::Register => {
                let reg = self.insn.op_register(i);
                if let Some((x, wide)) = vreg_index(reg) {
                    self.ymm(x)?;
                    self.xmm_write = Some((x, v[0]));
                    self.ymm_hi_write = Some((x, if wide { v[1] } else { 0 }));
                    return Ok(());
                }
                if reg.size() as u32 != bytes {
                    return Err(self.unsupported());
                }
                set_reg(s, reg, v[0] as u64).ok_or_else(|| self.unsupported())
            }
            OpKind::Memory => {
                let addr = self.vector_address(s, i, bytes)?;
                if self.write.is_some() || bytes > 32 {
                    return Err(self.unsupported());
                }
                let lo = if bytes >= 16 {
                    v[0]
                } else {
                    v[0] & ((1u128 << (bytes * 8)) - 1)
                };
                self.write = Some(PendingWrite {
                    addr,
                    bytes: bytes as usize,
                    value: lo,
                    value_hi: if bytes == 32 { v[1] } else { 0 },
                });
                Ok(())
            }
            _ => Err(self.unsupported()),
        }
    }

    /// The vector width of operand `i` in bytes (16 for XMM, 32 for YMM), from the
    /// instruction's register operands.
    fn width(&self, i: u32) -> Result<u32, Halt> {
        match self.insn.op_kind(i) {
            OpKind::Register => match vreg_index(self.insn.op_register(i)) {
                Some((_, true)) => Ok(32),
                Some((_, false)) => Ok(16),
                None => Err(self.unsupported()),
            },
            _ => Err(self.unsupported()),
        }
    }

    /// Runs the instruction if it is one of this module's; `None` if it is not.
    pub(super) fn run_avx(&mut self, s: &mut InterpState) -> Option<Result<Effect, Halt>> {
        if self.insn.encoding() != EncodingKind::VEX {
            return None;
        }
        let m = self.insn.mnemonic();
        let r = match m {
            Mnemonic::Andn
            | Mnemonic::Blsr
            | Mnemonic::Blsmsk
            | Mnemonic::Blsi
            | Mnemonic::Bzhi
            | Mnemonic::Shlx
            | Mnemonic::Shrx
            | Mnemonic::Sarx
            | Mnemonic::Rorx
            | Mnemonic::Pdep
            | Mnemonic::Pext => self.bmi(s, m),
            _ => {
                if !host_avx2() {
                    return Some(Err(self.unsupported()));
                }
                self.vector(s, m)?
            }
        };
        Some(r.map(|()| Effect::Next))
    }

    /// The VEX vector forms; `None` for any other instruction.
    fn vector(&mut self, s: &mut InterpState, m: Mnemonic) -> Option<Result<(), Halt>> {
        let insn = self.insn;
        Some(match m {
            Mnemonic::Vmovdqu
            | Mnemonic::Vmovdqa
            | Mnemonic::Vmovups
            | Mnemonic::Vmovaps
            | Mnemonic::Vmovupd
            | Mnemonic::Vmovapd
            // (Non-temporal stores, memory destination only: a plain store, see `sse.rs`.)
            | Mnemonic::Vmovntdq
            | Mnemonic::Vmovntps
            | Mnemonic::Vmovntpd
                if insn.op_count() == 2 =>
            {
                let reg = if insn.op0_kind() == OpKind::Register {
                    0
                } else {
                    1
                };
                self.width(reg)
                    .and_then(|w| self.read_v(s, 1, w).and_then(|v| self.write_v(s, 0, w, v)))
            }
            Mnemonic::Vmovd | Mnemonic::Vmovq => {
                let bytes = if m == Mnemonic::Vmovd { 4 } else { 8 };
                self.read_v(s, 1, bytes).and_then(|v| {
                    let to_vector = insn.op0_kind() == OpKind::Register
                        && vreg_index(insn.op0_register()).is_some();
                    // To an XMM register: zero-extended through bit 255.
                    self.write_v(s, 0, if to_vector { 16 } else { bytes }, v)
                })
            }
            Mnemonic::Vzeroupper | Mnemonic::Vzeroall => self.ymm(0).map(|_| {
                self.zero_upper = Some(m == Mnemonic::Vzeroall);
            }),
            Mnemonic::Vpmovmskb => self.width(1).and_then(|w| {
                let v = self.read_v(s, 1, w)?;
                let mut bits = 0u64;
                for (half, lane) in v.iter().enumerate() {
                    for b in 0..16 {
                        if (lane >> (b * 8 + 7)) & 1 != 0 {
                            bits |= 1 << (16 * half + b);
                        }
                    }
                }
                set_reg(s, insn.op0_register(), bits).ok_or_else(|| self.unsupported())
            }),
            Mnemonic::Vptest => self.width(0).and_then(|w| {
                let a = self.read_v(s, 0, w)?;
                let b = self.read_v(s, 1, w)?;
                let zf = (a[0] & b[0]) | (a[1] & b[1]) == 0;
                let cf = (!a[0] & b[0]) | (!a[1] & b[1]) == 0;
                let mut f = 0;
                if zf {
                    f |= ZF;
                }
                if cf {
                    f |= CF;
                }
                s.rflags = (s.rflags & !STATUS) | f;
                Ok(())
            }),
            Mnemonic::Vpbroadcastb
            | Mnemonic::Vpbroadcastw
            | Mnemonic::Vpbroadcastd
            | Mnemonic::Vpbroadcastq => self.width(0).and_then(|w| {
                let bytes = match m {
                    Mnemonic::Vpbroadcastb => 1,
                    Mnemonic::Vpbroadcastw => 2,
                    Mnemonic::Vpbroadcastd => 4,
                    _ => 8,
                };
                // Only the XMM-or-memory source forms (the register forms are AVX-512).
                if insn.op_kind(1) == OpKind::Register && vreg_index(insn.op1_register()).is_none()
                {
                    return Err(self.unsupported());
                }
                let v = self.read_v(s, 1, bytes)?;
                self.write_v(s, 0, w, broadcast(v[0] as u64, bytes))
            }),
            Mnemonic::Vpshufb | Mnemonic::Vpalignr => self.width(0).and_then(|w| {
                let a = self.read_v(s, 1, w)?;
                let b = self.read_v(s, 2, w)?;
                let n = u32::from(insn.immediate8());
                let f = |a: u128, b: u128| {
                    if m == Mnemonic::Vpshufb {
                        shuffle_bytes(a, b)
                    } else {
                        align_right(a, b, n)
                    }
                };
                self.write_v(s, 0, w, [f(a[0], b[0]), f(a[1], b[1])])
            }),
            _ if insn.op_count() == 3 => {
                let f = sse::lane_op(m)?;
                self.width(0).and_then(|w| {
                    let a = self.read_v(s, 1, w)?;
                    let b = self.read_v(s, 2, w)?;
                    self.write_v(s, 0, w, [f(a[0], b[0]), f(a[1], b[1])])
                })
            }
            _ => return None,
        })
    }

    /// The BMI1/BMI2 instructions on general-purpose registers.
    fn bmi(&mut self, s: &mut InterpState, m: Mnemonic) -> Result<(), Halt> {
        let bmi2 = matches!(
            m,
            Mnemonic::Bzhi
                | Mnemonic::Shlx
                | Mnemonic::Shrx
                | Mnemonic::Sarx
                | Mnemonic::Rorx
                | Mnemonic::Pdep
                | Mnemonic::Pext
        );
        let host = if bmi2 {
            std::arch::is_x86_feature_detected!("bmi2")
        } else {
            std::arch::is_x86_feature_detected!("bmi1")
        };
        if !host || self.insn.op0_kind() != OpKind::Register {
            return Err(self.unsupported());
        }
        let bits = self.bits(0)?;
        let sign = 1u64 << (bits - 1);
        // The operands as the SDM names them: SRC1 is operand 1 and SRC2 operand 2 for
        // the three-operand forms (the VEX.vvvv register is SRC1 of ANDN, SRC2 of BZHI
        // and the shifts, and the only source of BLS*).
        let src1 = self.read(s, 1, bits)?;
        let src2 = if self.insn.op_count() == 3 && self.insn.op_kind(2) != OpKind::Immediate8 {
            self.read(s, 2, bits)?
        } else {
            0
        };
        let (v, flags) = match m {
            Mnemonic::Andn => (!src1 & src2 & mask(bits), Some(0)),
            Mnemonic::Blsr => (
                src1 & src1.wrapping_sub(1) & mask(bits),
                Some(cf(src1 == 0)),
            ),
            Mnemonic::Blsmsk => (
                (src1 ^ src1.wrapping_sub(1)) & mask(bits),
                Some(cf(src1 == 0)),
            ),
            Mnemonic::Blsi => (src1 & src1.wrapping_neg() & mask(bits), Some(cf(src1 != 0))),
            Mnemonic::Bzhi => match (src2 & 0xff) as u32 {
                0 => (0, Some(0)),
                n if n < bits => (src1 & mask(n), Some(0)),
                _ => (src1, Some(CF)),
            },
            Mnemonic::Shlx | Mnemonic::Shrx | Mnemonic::Sarx => {
                let n = (src2 & u64::from(bits - 1)) as u32;
                let v = match m {
                    Mnemonic::Shlx => src1 << n,
                    Mnemonic::Shrx => src1 >> n,
                    _ => (super::sext(src1, bits) >> n) as u64,
                };
                (v & mask(bits), None)
            }
            Mnemonic::Rorx => {
                let n = u32::from(self.insn.immediate8()) & (bits - 1);
                let v = if bits == 64 {
                    src1.rotate_right(n)
                } else {
                    (src1 as u32).rotate_right(n).into()
                };
                (v, None)
            }
            Mnemonic::Pdep | Mnemonic::Pext => {
                let v = if m == Mnemonic::Pdep {
                    deposit(src1, src2)
                } else {
                    extract(src1, src2)
                };
                (v & mask(bits), None)
            }
            _ => return Err(self.unsupported()),
        };
        if let Some(cf_bit) = flags {
            // ZF and SF from the result (BLSMSK clears ZF), CF as computed, OF cleared;
            // AF and PF undefined.
            let mut f = cf_bit;
            if v == 0 && m != Mnemonic::Blsmsk {
                f |= ZF;
            }
            if v & sign != 0 {
                f |= SF;
            }
            // AF and PF: what the host CPU, which runs the guest's ring 3, leaves in them.
            let op = match m {
                Mnemonic::Andn => Bmi::Andn,
                Mnemonic::Blsr => Bmi::Blsr,
                Mnemonic::Blsmsk => Bmi::Blsmsk,
                Mnemonic::Blsi => Bmi::Blsi,
                _ => Bmi::Bzhi,
            };
            let undefined = AF | PF;
            match host_flags::bmi_status(op, bits, src1, src2, s.rflags) {
                Some(host) => f |= host & undefined,
                None => self.undefined |= undefined,
            }
            s.rflags = (s.rflags & !STATUS) | f;
        }
        self.write_op(s, 0, bits, v)
    }
}

/// CF if `set`.
fn cf(set: bool) -> u64 {
    if set { CF } else { 0 }
}
