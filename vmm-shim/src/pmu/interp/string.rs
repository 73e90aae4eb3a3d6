//! MOVS and STOS, with a REP prefix up to a page of iterations per step.
//!
//! The CPU may stop a REP string instruction between iterations (an interrupt, a fault)
//! with RCX, RSI and RDI advanced and RIP still on the instruction, which then goes on
//! where it stopped. The interpreter does the same on purpose: one step runs the
//! iterations that stay on the current source and destination pages (at most a page of
//! bytes) as one transaction (checks and reads first, then the accessed/dirty bits, then
//! the write, then the registers) and reports [`Effect::Repeat`] until the count is
//! zero; the step that ends the instruction reports [`Effect::Next`], so the instruction
//! retires once, as on the CPU. The iterations are also kept for the profile
//! ([`Session::take_repeats`]): valgrind counts a REP string instruction once per pass,
//! `k` iterations as `k + 1` passes (a zero count: one pass). Without REP the instruction
//! is one iteration, one step.
//!
//! Left to the CPU: DF = 1, 32-bit addressing, a segment override, an element that
//! straddles a page boundary, and a copy whose destination overlaps the source ahead of
//! it (each iteration would read what an earlier one wrote).

use iced_x86::{Code, Instruction, OpKind, Register};

use super::{Access, Effect, Halt, PAGE, RFLAGS_RF, Session, Step};

/// RFLAGS.DF.
const DF: u64 = 1 << 10;

/// Indices in [`super::InterpState::gpr`].
const RAX: usize = 0;
const RCX: usize = 1;
const RSI: usize = 6;
const RDI: usize = 7;

/// A MOVS/STOS form: element size in bytes, and whether it copies (MOVS) or fills
/// (STOS). `None` for anything else.
fn string_form(insn: &Instruction) -> Option<(u64, bool)> {
    let form = match insn.code() {
        Code::Movsb_m8_m8 => (1, true),
        Code::Movsw_m16_m16 => (2, true),
        Code::Movsd_m32_m32 => (4, true),
        Code::Movsq_m64_m64 => (8, true),
        Code::Stosb_m8_AL => (1, false),
        Code::Stosw_m16_AX => (2, false),
        Code::Stosd_m32_EAX => (4, false),
        Code::Stosq_m64_RAX => (8, false),
        _ => return None,
    };
    let plain = !insn.has_lock_prefix()
        && !insn.has_repne_prefix()
        && insn.segment_prefix() == Register::None
        && insn.op0_kind() == OpKind::MemoryESRDI
        && (!form.1 || insn.op1_kind() == OpKind::MemorySegRSI);
    plain.then_some(form)
}

impl Session<'_> {
    /// Runs a step of the MOVS/STOS at `ip` (`insn`); `None` when `insn` is not one of
    /// the forms run here (see the module doc).
    pub(super) fn run_string(&mut self, ip: u64, insn: &Instruction) -> Option<Result<Step, Halt>> {
        let (size, movs) = string_form(insn)?;
        Some(self.string_step(ip, insn, size, movs))
    }

    fn string_step(
        &mut self,
        ip: u64,
        insn: &Instruction,
        size: u64,
        movs: bool,
    ) -> Result<Step, Halt> {
        let s = &*self.state;
        if s.rflags & DF != 0 {
            return Err(Halt::Unsupported(insn.mnemonic()));
        }
        let repeat = insn.has_rep_prefix();
        let (rsi, rdi) = (s.gpr[RSI], s.gpr[RDI]);
        let count = if repeat { s.gpr[RCX] } else { 1 };
        let mut k = 0;
        let mut buf = [0u8; PAGE as usize];
        if count != 0 {
            // Whole elements left on the page of `a`.
            let room = |a: u64| (PAGE - a % PAGE) / size;
            k = count.min(PAGE / size).min(room(rdi));
            if movs {
                k = k.min(room(rsi));
            }
            if k == 0 {
                // The next element straddles a page boundary.
                return Err(Halt::Unsupported(insn.mnemonic()));
            }
            let len = (k * size) as usize;
            let dst = self.data_pa(rdi, Access::Write)?;
            if movs {
                let src = self.data_pa(rsi, Access::Read)?;
                if src < dst && dst < src + len as u64 {
                    return Err(Halt::Unsupported(insn.mnemonic()));
                }
                self.g
                    .read_phys(src, &mut buf[..len])
                    .map_err(|_| Halt::Memory)?;
            } else {
                let v = self.state.gpr[RAX].to_le_bytes();
                for element in buf[..len].chunks_exact_mut(size as usize) {
                    element.copy_from_slice(&v[..size as usize]);
                }
            }
            // Every check passed: from here on the iterations happen.
            self.commit_walks()?;
            self.g
                .write_phys(dst, &buf[..len])
                .map_err(|_| Halt::Memory)?;
            if repeat {
                self.repeats.push((ip, k));
            }
        }
        let s = &mut *self.state;
        let bytes = k * size;
        if repeat {
            s.gpr[RCX] = count - k;
        }
        s.gpr[RDI] = rdi.wrapping_add(bytes);
        if movs {
            s.gpr[RSI] = rsi.wrapping_add(bytes);
        }
        s.rflags &= !RFLAGS_RF;
        let effect = if count == k {
            s.rip = insn.next_ip();
            Effect::Next
        } else {
            Effect::Repeat
        };
        Ok(Step {
            ip,
            next: insn.next_ip(),
            effect,
            undefined: 0,
        })
    }

    /// The REP string iterations run since the last call, as (instruction address,
    /// iterations): each is one pass valgrind counts beyond the instruction's own (the
    /// tracer adds them to the profile).
    pub fn take_repeats(&mut self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.repeats.drain(..)
    }
}
