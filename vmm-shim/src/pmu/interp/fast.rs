//! The fast path: hot instruction forms resolved once, when their block is decoded, into
//! a [`Fast`] record (the handler, register numbers, the immediate, the effective-address
//! form), and run from it without going back to iced's [`Instruction`] and without
//! copying the register file.
//!
//! Forms: MOV, MOVZX/MOVSX/MOVSXD, LEA, the ALU group with CMP and TEST, INC/DEC/NEG/NOT,
//! shifts and rotates, two-operand IMUL, one-operand MUL/IMUL/DIV/IDIV (run by the host, as
//! the generic path runs them), register BT/BTS/BTR/BTC, CMOVcc, SETcc, near Jcc/JMP/CALL
//! (direct and indirect), RET, PUSH, POP, LEAVE, the NOPs and the PREFETCH hints — with
//! register, immediate and 64-bit-addressed memory operands (FS-relative included). Everything else, and any
//! of these whose result leaves flags undefined that the host cannot supply (those need
//! the liveness proof), goes through the generic path, which stays the reference: the
//! tests run every form both ways and against the host CPU.
//!
//! Transactional as the generic path: all reads and checks first (they may halt; a halt
//! leaves registers, memory and accessed/dirty bits as they were), then the accessed and
//! dirty bits, then at most one memory write, then the register file — in place, at most
//! three registers, once nothing can halt any more (so there is nothing to undo).

use iced_x86::{Code, ConditionCode, Instruction, Mnemonic, OpKind, Register};

use super::alu::{AF, Op, STATUS, alu, mask, sext};
use super::host_flags::{self, ImmForm};
use super::{
    Access, BranchKind, Effect, Halt, PendingWrite, RFLAGS_RF, RSP, Session, Step, bit_test_op,
    cond_holds, gpr_index, host_form, imm_form, is_cmovcc, is_immediate, is_prefetch, is_setcc,
    operand_bits,
};

/// "No register" in [`Ea`].
const NO_REG: u8 = 0xff;

/// A memory operand's effective-address form: `base + index * scale + disp` (+ FS.base).
/// A RIP-relative operand has no base and its absolute address as `disp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
struct Ea {
    disp: u64,
    base: u8,
    index: u8,
    scale: u8,
    fs: bool,
}

/// Where an operand is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    None,
    /// A general-purpose register: its index, whether it is AH/CH/DH/BH, its size in bytes.
    Reg {
        idx: u8,
        high: bool,
        bytes: u8,
    },
    /// [`Fast::imm`].
    Imm,
    /// [`Fast::ea`].
    Mem,
}

/// How an ALU form gets the flags the SDM leaves undefined (as the generic path does:
/// from the host running the same encoding, or not at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Host {
    None,
    Op,
    Imm(ImmForm),
}

/// The handler, chosen once at decode time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Handler {
    Mov,
    Movx {
        signed: bool,
    },
    Lea,
    /// `dst op= src` (no write-back for CMP, TEST and BT; `src` is [`Loc::None`], read as
    /// 0, for INC/DEC/NEG/NOT).
    Alu {
        op: Op,
        write: bool,
        host: Host,
    },
    /// One-operand MUL/IMUL/DIV/IDIV: RDX:RAX (or AX) against the source, run by the
    /// host ([`host_flags::wide`]).
    Wide(host_flags::Wide),
    Cmov(ConditionCode),
    Setcc(ConditionCode),
    Jcc(ConditionCode),
    Jmp,
    JmpInd,
    Call,
    CallInd,
    Ret,
    Push,
    Pop,
    Leave,
    Nop,
}

/// A pre-resolved instruction (see the module doc). Word fields first and 16-byte
/// aligned (four to a cache line). [`Session::run_block`] runs it in place, by reference:
/// a copy out of the block per instruction cost about a tenth of the time per
/// instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub(super) struct Fast {
    imm: u64,
    /// The address after the instruction.
    next: u64,
    /// A direct branch's target.
    target: u64,
    ea: Ea,
    pub(super) handler: Handler,
    dst: Loc,
    src: Loc,
    /// The operation size (the destination's), and the source's for MOVZX/MOVSX.
    bits: u8,
    src_bits: u8,
}

impl Fast {
    /// The address after the instruction.
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// The fast form of `insn`, if it has one. `bytes`: its encoding; `osize_branch`: a
    /// near branch with an operand-size prefix (never interpreted).
    pub(super) fn new(insn: &Instruction, bytes: &[u8], osize_branch: bool) -> Option<Fast> {
        if insn.has_lock_prefix()
            || insn.has_xacquire_prefix()
            || insn.has_xrelease_prefix()
            || osize_branch
            || has_asize_prefix(bytes)
        {
            return None;
        }
        let mut f = Fast {
            handler: Handler::Nop,
            dst: Loc::None,
            src: Loc::None,
            bits: 64,
            src_bits: 64,
            imm: 0,
            ea: Ea {
                base: NO_REG,
                index: NO_REG,
                scale: 1,
                fs: false,
                disp: 0,
            },
            next: insn.next_ip(),
            target: 0,
        };
        let m = insn.mnemonic();
        if insn.op_count() == 1 {
            let wide = match m {
                Mnemonic::Mul => Some(host_flags::Wide::Mul),
                Mnemonic::Imul => Some(host_flags::Wide::Imul),
                Mnemonic::Div => Some(host_flags::Wide::Div),
                Mnemonic::Idiv => Some(host_flags::Wide::Idiv),
                _ => None,
            };
            if let Some(op) = wide {
                f.bits = bits(insn, 0)?;
                f.src = f.src_loc(insn, 0)?;
                f.handler = Handler::Wide(op);
                return Some(f);
            }
        }
        let alu_op = match m {
            Mnemonic::Imul if insn.op_count() == 2 => Some(Op::Imul),
            Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
                if insn.op0_kind() == OpKind::Register =>
            {
                bit_test_op(m)
            }
            _ => Op::of_two_operand(m),
        };
        if let Some(op) = alu_op {
            if insn.op_count() != 2 {
                return None;
            }
            f.bits = bits(insn, 0)?;
            f.dst = f.dst_loc(insn, 0)?;
            f.src = f.src_loc(insn, 1)?;
            let write = !matches!(m, Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Bt);
            f.handler = Handler::Alu {
                op,
                write,
                host: host(insn),
            };
            return Some(f);
        }
        let cc = insn.condition_code();
        match m {
            Mnemonic::Inc | Mnemonic::Dec | Mnemonic::Neg | Mnemonic::Not => {
                let op = match m {
                    Mnemonic::Inc => Op::Inc,
                    Mnemonic::Dec => Op::Dec,
                    Mnemonic::Neg => Op::Neg,
                    _ => Op::Not,
                };
                f.bits = bits(insn, 0)?;
                f.dst = f.dst_loc(insn, 0)?;
                f.handler = Handler::Alu {
                    op,
                    write: true,
                    host: host(insn),
                };
            }
            Mnemonic::Mov => {
                f.bits = bits(insn, 0)?;
                f.dst = f.dst_loc(insn, 0)?;
                f.src = f.src_loc(insn, 1)?;
                f.handler = Handler::Mov;
            }
            Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
                f.bits = bits(insn, 0)?;
                f.src_bits = bits(insn, 1)?;
                f.dst = f.dst_loc(insn, 0)?;
                f.src = f.src_loc(insn, 1)?;
                f.handler = Handler::Movx {
                    signed: m != Mnemonic::Movzx,
                };
            }
            Mnemonic::Lea => {
                // (LEA adds no segment base: leave the unusual FS/GS-prefixed forms to the
                // generic path.)
                if !matches!(
                    insn.memory_segment(),
                    Register::DS | Register::SS | Register::ES | Register::CS
                ) {
                    return None;
                }
                f.bits = bits(insn, 0)?;
                f.dst = f.dst_loc(insn, 0)?;
                if !matches!(f.dst, Loc::Reg { .. }) || insn.op1_kind() != OpKind::Memory {
                    return None;
                }
                f.ea = ea(insn)?;
                f.handler = Handler::Lea;
            }
            _ if is_cmovcc(m) => {
                cond_holds(cc, 0)?;
                f.bits = bits(insn, 0)?;
                f.dst = f.dst_loc(insn, 0)?;
                f.src = f.src_loc(insn, 1)?;
                if !matches!(f.dst, Loc::Reg { .. }) {
                    return None;
                }
                f.handler = Handler::Cmov(cc);
            }
            _ if is_setcc(m) => {
                cond_holds(cc, 0)?;
                f.bits = 8;
                f.dst = f.dst_loc(insn, 0)?;
                f.handler = Handler::Setcc(cc);
            }
            _ if insn.is_jcc_short_or_near() => {
                cond_holds(cc, 0)?;
                f.target = insn.near_branch_target();
                f.handler = Handler::Jcc(cc);
            }
            Mnemonic::Jmp if insn.is_jmp_short_or_near() => {
                f.target = insn.near_branch_target();
                f.handler = Handler::Jmp;
            }
            Mnemonic::Call if insn.is_call_near() => {
                f.target = insn.near_branch_target();
                f.handler = Handler::Call;
            }
            Mnemonic::Jmp | Mnemonic::Call
                if matches!(insn.code(), Code::Jmp_rm64 | Code::Call_rm64) =>
            {
                f.src = f.src_loc(insn, 0)?;
                f.handler = if m == Mnemonic::Jmp {
                    Handler::JmpInd
                } else {
                    Handler::CallInd
                };
            }
            Mnemonic::Ret if insn.code() == Code::Retnq => f.handler = Handler::Ret,
            Mnemonic::Push if insn.stack_pointer_increment() == -8 => {
                f.src = f.src_loc(insn, 0)?;
                f.handler = Handler::Push;
            }
            Mnemonic::Pop
                if insn.stack_pointer_increment() == 8
                    && insn.op0_kind() == OpKind::Register
                    && insn.op0_register() != Register::RSP =>
            {
                f.dst = f.dst_loc(insn, 0)?;
                f.handler = Handler::Pop;
            }
            Mnemonic::Leave if insn.code() == Code::Leaveq => f.handler = Handler::Leave,
            Mnemonic::Nop | Mnemonic::Endbr64 | Mnemonic::Pause => f.handler = Handler::Nop,
            _ if is_prefetch(m) => f.handler = Handler::Nop,
            _ => return None,
        }
        Some(f)
    }

    /// Operand `i` as a source: any general-purpose register (read at its own size, as
    /// the generic path reads it), an immediate or memory.
    fn src_loc(&mut self, insn: &Instruction, i: u32) -> Option<Loc> {
        match insn.op_kind(i) {
            OpKind::Register => reg_loc(insn.op_register(i)),
            OpKind::Memory => {
                self.ea = ea(insn)?;
                Some(Loc::Mem)
            }
            k if is_immediate(k) => {
                self.imm = insn.immediate(i);
                Some(Loc::Imm)
            }
            _ => None,
        }
    }

    /// Operand `i` as a destination of `self.bits`: a register of exactly that size, or
    /// memory.
    fn dst_loc(&mut self, insn: &Instruction, i: u32) -> Option<Loc> {
        match insn.op_kind(i) {
            OpKind::Register => {
                let l = reg_loc(insn.op_register(i))?;
                matches!(l, Loc::Reg { bytes, .. } if u32::from(bytes) * 8 == u32::from(self.bits))
                    .then_some(l)
            }
            OpKind::Memory => {
                self.ea = ea(insn)?;
                Some(Loc::Mem)
            }
            _ => None,
        }
    }
}

fn bits(insn: &Instruction, i: u32) -> Option<u8> {
    operand_bits(insn, i).map(|b| b as u8)
}

fn reg_loc(reg: Register) -> Option<Loc> {
    let (idx, high) = gpr_index(reg)?;
    Some(Loc::Reg {
        idx: idx as u8,
        high,
        bytes: reg.size() as u8,
    })
}

/// The effective-address form of `insn`'s memory operand: 64-bit addressing, a flat
/// segment or FS.
fn ea(insn: &Instruction) -> Option<Ea> {
    let fs = match insn.memory_segment() {
        Register::DS | Register::SS | Register::ES | Register::CS => false,
        Register::FS => true,
        _ => return None,
    };
    let reg64 = |r: Register| -> Option<u8> {
        if r == Register::None {
            return Some(NO_REG);
        }
        if r.size() != 8 {
            return None;
        }
        gpr_index(r).map(|(i, _)| i as u8)
    };
    let base = match insn.memory_base() {
        Register::RIP => NO_REG,
        r => reg64(r)?,
    };
    Some(Ea {
        base,
        index: reg64(insn.memory_index())?,
        scale: u8::try_from(insn.memory_index_scale()).ok()?,
        fs,
        disp: insn.memory_displacement64(),
    })
}

/// Whether the legacy prefixes (and REX) in front of the opcode include 0x67 (32-bit
/// addressing: left to the generic path).
fn has_asize_prefix(bytes: &[u8]) -> bool {
    for &b in bytes {
        match b {
            0x67 => return true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f => {}
            _ => return false,
        }
    }
    false
}

/// The generic path's choice of where undefined flags come from ([`super::Exec`]'s
/// `apply_alu`), made once.
fn host(insn: &Instruction) -> Host {
    let logic = matches!(
        insn.mnemonic(),
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test
    );
    let reg_dst = insn.op0_kind() == OpKind::Register;
    match imm_form(insn).filter(|_| reg_dst) {
        Some(form) => Host::Imm(form),
        None if (reg_dst || logic) && host_form(insn) => Host::Op,
        None => Host::None,
    }
}

/// A logic operation whose AF (undefined by the SDM, taken from the host) is not computed
/// yet. AF is read by no condition code, so most of them never need it: the next
/// arithmetic operation defines AF again. [`Session::settle_af`] computes it before
/// anything could read it or make the host's answer depend on it: the generic path, an
/// operation that keeps AF (rotates, shifts by zero, NOT) or leaves it undefined too,
/// and the state handed out ([`Session::state`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct LazyAf {
    op: Op,
    bits: u32,
    a: u64,
    b: u64,
    /// RFLAGS before the operation (all its flags exact).
    rflags: u64,
}

/// Whether running `h` leaves a lazy AF as it is (the handler does not touch AF) or
/// replaces it with a defined AF (the arithmetic operations).
fn keeps_lazy_af(h: Handler) -> bool {
    match h {
        // (The host's flags after it may depend on the flags before.)
        Handler::Wide(_) => false,
        Handler::Alu { op, .. } => matches!(
            op,
            Op::Add | Op::Adc | Op::Sub | Op::Sbb | Op::Inc | Op::Dec | Op::Neg
        ),
        _ => true,
    }
}

/// Register values to write once the instruction can no longer halt: at most one
/// general destination and RSP and RBP (PUSH/POP/CALL/RET/LEAVE), or RAX and RDX
/// (MUL/DIV). Fixed slots, not a
/// counted array: an indexed store kept the whole array in memory, a store and a reload
/// for every instruction.
struct Staged {
    dst: (Loc, u64),
    rsp: Option<u64>,
    rbp: Option<u64>,
    rdx: Option<u64>,
}

impl Staged {
    fn new() -> Staged {
        Staged {
            dst: (Loc::None, 0),
            rsp: None,
            rbp: None,
            rdx: None,
        }
    }

    fn push(&mut self, loc: Loc, v: u64) {
        self.dst = (loc, v);
    }
}

impl Session<'_> {
    /// Computes a lazy AF ([`LazyAf`]) into `state.rflags`.
    pub(super) fn settle_af(&mut self) {
        if let Some(l) = self.lazy_af.take() {
            // (The host answers for every logic operation at every size.)
            if let Some(h) = host_flags::status_after(l.op, l.bits, l.a, l.b, l.rflags) {
                self.state.rflags = (self.state.rflags & !AF) | (h & AF);
            }
        }
    }

    #[inline(always)]
    fn ea(&self, e: &Ea) -> u64 {
        let s = &self.state;
        let mut a = e.disp;
        if e.base != NO_REG {
            a = a.wrapping_add(s.gpr[e.base as usize]);
        }
        if e.index != NO_REG {
            a = a.wrapping_add(s.gpr[e.index as usize].wrapping_mul(u64::from(e.scale)));
        }
        if e.fs {
            a = a.wrapping_add(s.fs_base);
        }
        a
    }

    /// Reads an operand of `bits` (a register at its own size, as the generic path does).
    #[inline(always)]
    fn get(&mut self, f: &Fast, loc: Loc, bits: u32) -> Result<u64, Halt> {
        match loc {
            Loc::Reg { idx, high, bytes } => {
                let v = self.state.gpr[idx as usize];
                Ok(if high {
                    (v >> 8) & 0xff
                } else {
                    v & mask(u32::from(bytes) * 8)
                })
            }
            Loc::Imm => Ok(f.imm & mask(bits)),
            Loc::Mem => {
                let addr = self.ea(&f.ea);
                Ok(self.read_mem(addr, (bits / 8) as usize)? & mask(bits))
            }
            Loc::None => Ok(0),
        }
    }

    /// Where a value for `loc` goes: a register (staged) or the instruction's one write.
    #[inline(always)]
    fn put(
        &self,
        f: &Fast,
        loc: Loc,
        bits: u32,
        v: u64,
        staged: &mut Staged,
        write: &mut Option<PendingWrite>,
    ) {
        match loc {
            Loc::Mem => {
                *write = Some(PendingWrite {
                    addr: self.ea(&f.ea),
                    bytes: (bits / 8) as usize,
                    value: u128::from(v & mask(bits)),
                    value_hi: 0,
                })
            }
            _ => staged.push(loc, v),
        }
    }

    /// Runs the instruction at `ip` from its fast form: `Ok(None)` when it must go through
    /// the generic path after all (undefined flags the host does not supply), with nothing
    /// changed.
    /// (Inlined into `Session::try_step`: it runs most instructions.)
    #[inline(always)]
    pub(super) fn run_fast(&mut self, ip: u64, f: &Fast) -> Result<Option<Step>, Halt> {
        if self.lazy_af.is_some() && !keeps_lazy_af(f.handler) {
            self.settle_af();
        }
        let bits = u32::from(f.bits);
        let mut staged = Staged::new();
        // An ALU operation's lazy AF, `Some(None)` when it computed AF (or settled it first).
        let mut lazy_after = None;
        let mut write = None;
        let mut rflags = self.state.rflags;
        let mut rip = f.next;
        let mut effect = Effect::Next;
        let rsp = self.state.gpr[RSP];
        match f.handler {
            Handler::Mov => {
                let v = self.get(f, f.src, bits)?;
                self.put(f, f.dst, bits, v, &mut staged, &mut write);
            }
            Handler::Movx { signed } => {
                let sb = u32::from(f.src_bits);
                let v = self.get(f, f.src, sb)?;
                let v = if signed { sext(v, sb) as u64 } else { v };
                self.put(f, f.dst, bits, v & mask(bits), &mut staged, &mut write);
            }
            Handler::Lea => {
                let v = self.ea(&f.ea) & mask(bits);
                staged.push(f.dst, v);
            }
            Handler::Alu {
                op,
                write: wb,
                host,
            } => {
                let a = self.get(f, f.dst, bits)?;
                let b = self.get(f, f.src, bits)?;
                let out = alu(op, bits, a, b, rflags);
                let mut status = out.rflags & STATUS;
                let mut lazy = None;
                let logic = matches!(op, Op::And | Op::Or | Op::Xor);
                if out.undefined == AF && host == Host::Op && logic {
                    lazy = Some(LazyAf {
                        op,
                        bits,
                        a,
                        b,
                        rflags,
                    });
                } else if out.undefined != 0 {
                    let from_host = match host {
                        Host::Imm(form) => host_flags::status_after_imm(form, bits, a, rflags),
                        Host::Op => host_flags::status_after(op, bits, a, b, rflags),
                        Host::None => None,
                    };
                    match from_host {
                        Some(h) => status = (status & !out.undefined) | (h & out.undefined),
                        None => return Ok(None),
                    }
                }
                rflags = (rflags & !STATUS) | status;
                lazy_after = Some(lazy);
                if wb {
                    self.put(f, f.dst, bits, out.value, &mut staged, &mut write);
                }
            }
            Handler::Wide(op) => {
                let src = self.get(f, f.src, bits)?;
                let s = &*self.state;
                // (As the generic path: the host's values and flags, all of them defined
                // by the host; a divide that would raise #DE goes back to the generic path,
                // which leaves it to the CPU.)
                let Some((rax, rdx, status)) =
                    host_flags::wide(op, bits, s.gpr[0], s.gpr[2], src, rflags)
                else {
                    return Ok(None);
                };
                rflags = (rflags & !STATUS) | status;
                lazy_after = Some(None);
                staged.push(
                    Loc::Reg {
                        idx: 0,
                        high: false,
                        bytes: 8,
                    },
                    rax,
                );
                staged.rdx = Some(rdx);
            }
            Handler::Cmov(cc) => {
                let taken = cond_holds(cc, rflags).unwrap_or(false);
                // The source is read (and may fault) whatever the condition; a 32-bit
                // destination is zero-extended even when nothing moves.
                let v = self.get(f, f.src, bits)?;
                let old = self.get(f, f.dst, bits)?;
                staged.push(f.dst, if taken { v } else { old });
            }
            Handler::Setcc(cc) => {
                let taken = cond_holds(cc, rflags).unwrap_or(false);
                self.put(f, f.dst, 8, u64::from(taken), &mut staged, &mut write);
            }
            Handler::Jcc(cc) => {
                let taken = cond_holds(cc, rflags).unwrap_or(false);
                if taken {
                    rip = f.target;
                }
                effect = branch(BranchKind::Jcc, taken, rip);
            }
            Handler::Jmp => {
                rip = f.target;
                effect = branch(BranchKind::JmpRel, true, rip);
            }
            Handler::JmpInd => {
                rip = self.get(f, f.src, 64)?;
                effect = branch(BranchKind::JmpInd, true, rip);
            }
            Handler::Call | Handler::CallInd => {
                let (to, kind) = if f.handler == Handler::Call {
                    (f.target, BranchKind::CallRel)
                } else {
                    (self.get(f, f.src, 64)?, BranchKind::CallInd)
                };
                let sp = rsp.wrapping_sub(8);
                write = Some(PendingWrite {
                    addr: sp,
                    bytes: 8,
                    value: u128::from(f.next),
                    value_hi: 0,
                });
                staged.rsp = Some(sp);
                rip = to;
                effect = branch(kind, true, to);
            }
            Handler::Ret => {
                rip = self.read_mem(rsp, 8)?;
                staged.rsp = Some(rsp.wrapping_add(8));
                effect = branch(BranchKind::Ret, true, rip);
            }
            Handler::Push => {
                let v = self.get(f, f.src, 64)?;
                let sp = rsp.wrapping_sub(8);
                write = Some(PendingWrite {
                    addr: sp,
                    bytes: 8,
                    value: u128::from(v),
                    value_hi: 0,
                });
                staged.rsp = Some(sp);
            }
            Handler::Pop => {
                let v = self.read_mem(rsp, 8)?;
                staged.rsp = Some(rsp.wrapping_add(8));
                staged.push(f.dst, v);
            }
            Handler::Leave => {
                let rbp = self.state.gpr[5];
                let v = self.read_mem(rbp, 8)?;
                staged.rsp = Some(rbp.wrapping_add(8));
                staged.rbp = Some(v);
            }
            Handler::Nop => {}
        }
        if let Effect::Branch { to, .. } = effect
            && sext(to, 48) as u64 != to
        {
            // A near branch to a non-canonical address raises #GP on the branch itself.
            return Err(Halt::Memory);
        }
        // A naturally aligned store to a page that passed every write check before
        // ([`Session::host_ptr`]: nothing about it can have changed since, and committing
        // the walks below leaves it so) is one store to host memory, with no page-by-page
        // check ([`Session::write_targets`]) and no call through [`Session::write_mem`].
        let mut direct = None;
        let mut targets = None;
        if let Some(w) = write {
            if w.addr.is_multiple_of(w.bytes as u64) {
                direct = self.host_ptr(w.addr, Access::Write);
            }
            if direct.is_none() {
                targets = Some(self.write_targets(w)?);
            }
        }
        // Every check passed: from here on the instruction happens.
        if !self.pending_ad.is_empty() || !self.pending_tlb.is_empty() {
            self.commit_walks()?;
        }
        if let Some(w) = write {
            match (direct, targets) {
                // SAFETY: as in `Session::write_mem`: guest RAM that `ram_page` keeps
                // mapped while the session lives; aligned to the store's 1, 2, 4 or 8
                // bytes (a fast form stores at most 8), so within the page.
                (Some(p), _) => unsafe {
                    crate::memory::store_aligned_at(p, w.bytes, w.value as u64)
                },
                (None, Some(targets)) => self.write_mem(w, targets)?,
                (None, None) => {}
            }
        }
        let s = &mut *self.state;
        // In the order the instructions write them: RSP, then RBP (LEAVE), then the
        // destination (POP RSP keeps the popped value).
        if let Some(v) = staged.rsp {
            s.gpr[RSP] = v;
        }
        if let Some(v) = staged.rbp {
            s.gpr[5] = v;
        }
        if let Some(v) = staged.rdx {
            s.gpr[2] = v;
        }
        if let (Loc::Reg { idx, high, bytes }, v) = staged.dst {
            let r = &mut s.gpr[idx as usize];
            *r = match bytes {
                8 => v,
                4 => v & 0xffff_ffff,
                2 => (*r & !0xffff) | (v & 0xffff),
                _ if high => (*r & !0xff00) | ((v & 0xff) << 8),
                _ => (*r & !0xff) | (v & 0xff),
            };
        }
        s.rflags = rflags & !RFLAGS_RF;
        s.rip = rip;
        if let Some(l) = lazy_after {
            self.lazy_af = l;
        }
        Ok(Some(Step {
            ip,
            next: f.next,
            effect,
            undefined: 0,
        }))
    }
}

fn branch(kind: BranchKind, taken: bool, to: u64) -> Effect {
    Effect::Branch { kind, taken, to }
}
