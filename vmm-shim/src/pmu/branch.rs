//! Branch classification: decode one guest instruction with iced-x86 and say whether it
//! transfers control, of which kind (in the SDM's MSR_LBR_SELECT vocabulary), and where a
//! direct branch goes. This is what the tracer needs to place a breakpoint "at the next
//! branch" and to step over it.
//!
//! Kinds follow the SDM's LBR filtering classes: conditional branches (Jcc, and also JCXZ,
//! LOOP/LOOPcc, as Linux's branch classifier does), near relative/indirect jumps and calls,
//! near returns, and everything else that changes CS or privilege (far JMP/CALL/RET, IRET,
//! SYSCALL/SYSRET, SYSENTER/SYSEXIT, INT n/INT3/INTO/INT1, interrupts and exceptions) as far
//! branches.

use iced_x86::{ConditionCode, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};

/// What kind of control transfer a retired branch was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BranchKind {
    /// Conditional near branch: Jcc, JCXZ/JECXZ/JRCXZ, LOOP, LOOPE, LOOPNE.
    Jcc,
    /// Near relative JMP.
    JmpRel,
    /// Near indirect JMP (register or memory).
    JmpInd,
    /// Near relative CALL.
    CallRel,
    /// Near indirect CALL.
    CallInd,
    /// Near RET.
    Ret,
    /// Far JMP (direct or indirect).
    FarJmp,
    /// Far CALL (direct or indirect).
    FarCall,
    /// Far RET.
    FarRet,
    /// IRET/IRETD/IRETQ.
    Iret,
    Syscall,
    Sysret,
    Sysenter,
    Sysexit,
    /// INT n, INT3, INTO, INT1.
    SoftInt,
    /// An external interrupt or NMI delivered between instructions.
    Interrupt,
    /// An exception raised by an instruction.
    Exception,
}

/// The MSR_LBR_SELECT class a kind falls into (one filter bit each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LbrClass {
    Jcc,
    NearRelCall,
    NearIndCall,
    NearRet,
    NearIndJmp,
    NearRelJmp,
    Far,
}

impl BranchKind {
    pub fn lbr_class(self) -> LbrClass {
        match self {
            BranchKind::Jcc => LbrClass::Jcc,
            BranchKind::JmpRel => LbrClass::NearRelJmp,
            BranchKind::JmpInd => LbrClass::NearIndJmp,
            BranchKind::CallRel => LbrClass::NearRelCall,
            BranchKind::CallInd => LbrClass::NearIndCall,
            BranchKind::Ret => LbrClass::NearRet,
            _ => LbrClass::Far,
        }
    }

    /// Whether the branch is always taken when it retires (everything but Jcc).
    pub fn is_unconditional(self) -> bool {
        self != BranchKind::Jcc
    }

    /// Whether a branch of this kind is an instruction (interrupts and exceptions are not,
    /// so they do not count as BR_INST_RETIRED or INST_RETIRED).
    pub fn is_instruction(self) -> bool {
        !matches!(self, BranchKind::Interrupt | BranchKind::Exception)
    }
}

/// How execution continues after an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Falls through to the next instruction.
    Sequential,
    /// A control transfer; `target` is known for direct near branches (Jcc, JMP rel,
    /// CALL rel) and is `None` when it depends on run-time state.
    Branch {
        kind: BranchKind,
        target: Option<u64>,
    },
    /// Not a branch but cannot be run past blindly: UD0/UD1/UD2, invalid encodings, and
    /// rare control instructions (RSM, XBEGIN, VMLAUNCH, ...). The tracer single-steps these
    /// and records an exception if execution does not continue at the next instruction.
    Trap,
}

/// The condition of a Jcc, evaluated on RFLAGS (SDM Vol. 1, "Jcc" condition table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    O,
    No,
    B,
    Ae,
    E,
    Ne,
    Be,
    A,
    S,
    Ns,
    P,
    Np,
    L,
    Ge,
    Le,
    G,
}

const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;

impl Cond {
    fn from_iced(c: ConditionCode) -> Option<Cond> {
        Some(match c {
            ConditionCode::o => Cond::O,
            ConditionCode::no => Cond::No,
            ConditionCode::b => Cond::B,
            ConditionCode::ae => Cond::Ae,
            ConditionCode::e => Cond::E,
            ConditionCode::ne => Cond::Ne,
            ConditionCode::be => Cond::Be,
            ConditionCode::a => Cond::A,
            ConditionCode::s => Cond::S,
            ConditionCode::ns => Cond::Ns,
            ConditionCode::p => Cond::P,
            ConditionCode::np => Cond::Np,
            ConditionCode::l => Cond::L,
            ConditionCode::ge => Cond::Ge,
            ConditionCode::le => Cond::Le,
            ConditionCode::g => Cond::G,
            _ => return None,
        })
    }

    /// Whether the branch is taken with these flags.
    pub fn holds(self, rflags: u64) -> bool {
        let f = |bit: u64| rflags & bit != 0;
        let lt = f(SF) != f(OF);
        match self {
            Cond::O => f(OF),
            Cond::No => !f(OF),
            Cond::B => f(CF),
            Cond::Ae => !f(CF),
            Cond::E => f(ZF),
            Cond::Ne => !f(ZF),
            Cond::Be => f(CF) || f(ZF),
            Cond::A => !f(CF) && !f(ZF),
            Cond::S => f(SF),
            Cond::Ns => !f(SF),
            Cond::P => f(PF),
            Cond::Np => !f(PF),
            Cond::L => lt,
            Cond::Ge => !lt,
            Cond::Le => lt || f(ZF),
            Cond::G => !lt && !f(ZF),
        }
    }
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedInsn {
    pub ip: u64,
    pub len: u8,
    pub flow: Flow,
    /// For a plain Jcc (not LOOP/JCXZ): its condition.
    pub cond: Option<Cond>,
}

impl DecodedInsn {
    /// The address of the next instruction in memory (the not-taken path).
    pub fn fallthrough(&self) -> u64 {
        self.ip.wrapping_add(u64::from(self.len))
    }
}

/// The code size the instruction is decoded in (CS.L / CS.D).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CodeSize {
    Bits16,
    Bits32,
    #[default]
    Bits64,
}

impl CodeSize {
    fn bitness(self) -> u32 {
        match self {
            CodeSize::Bits16 => 16,
            CodeSize::Bits32 => 32,
            CodeSize::Bits64 => 64,
        }
    }
}

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Why an instruction could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end inside the instruction (`have` bytes were given).
    #[error("instruction at {ip:#x} is cut off after {have} bytes")]
    Truncated { ip: u64, have: usize },
}

/// Decodes the instruction at the start of `bytes`, which sit at `ip`. Invalid encodings
/// decode as [`Flow::Trap`] (executing them raises #UD); only a too-short buffer is an error.
pub fn decode(bytes: &[u8], ip: u64, size: CodeSize) -> Result<DecodedInsn, DecodeError> {
    let mut decoder = Decoder::with_ip(size.bitness(), bytes, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        if decoder.last_error() == iced_x86::DecoderError::NoMoreBytes && bytes.len() < MAX_INSN_LEN
        {
            return Err(DecodeError::Truncated {
                ip,
                have: bytes.len(),
            });
        }
        return Ok(DecodedInsn {
            ip,
            len: insn.len().max(1) as u8,
            flow: Flow::Trap,
            cond: None,
        });
    }
    let cond = if insn.is_jcc_short_or_near() {
        Cond::from_iced(insn.condition_code())
    } else {
        None
    };
    Ok(DecodedInsn {
        ip,
        len: insn.len() as u8,
        flow: classify(&insn),
        cond,
    })
}

/// The flow of a decoded iced-x86 instruction.
pub fn classify(insn: &Instruction) -> Flow {
    let branch = |kind, target| Flow::Branch { kind, target };
    match insn.flow_control() {
        FlowControl::Next => Flow::Sequential,
        FlowControl::ConditionalBranch => branch(BranchKind::Jcc, Some(insn.near_branch_target())),
        FlowControl::UnconditionalBranch if insn.is_jmp_far() => branch(BranchKind::FarJmp, None),
        FlowControl::UnconditionalBranch => {
            branch(BranchKind::JmpRel, Some(insn.near_branch_target()))
        }
        FlowControl::IndirectBranch if insn.is_jmp_far_indirect() => {
            branch(BranchKind::FarJmp, None)
        }
        FlowControl::IndirectBranch => branch(BranchKind::JmpInd, None),
        FlowControl::Call if insn.is_call_near() => {
            branch(BranchKind::CallRel, Some(insn.near_branch_target()))
        }
        FlowControl::Call if insn.is_call_far() => branch(BranchKind::FarCall, None),
        FlowControl::Call => match insn.mnemonic() {
            Mnemonic::Syscall => branch(BranchKind::Syscall, None),
            Mnemonic::Sysenter => branch(BranchKind::Sysenter, None),
            // VMCALL and friends exit to the hypervisor and come back (or #UD): not a
            // guest branch, but not safe to run past either.
            _ => Flow::Trap,
        },
        FlowControl::IndirectCall if insn.is_call_far_indirect() => {
            branch(BranchKind::FarCall, None)
        }
        FlowControl::IndirectCall => branch(BranchKind::CallInd, None),
        FlowControl::Return => match insn.mnemonic() {
            Mnemonic::Ret => branch(BranchKind::Ret, None),
            Mnemonic::Retf => branch(BranchKind::FarRet, None),
            Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => branch(BranchKind::Iret, None),
            Mnemonic::Sysret | Mnemonic::Sysretq => branch(BranchKind::Sysret, None),
            Mnemonic::Sysexit | Mnemonic::Sysexitq => branch(BranchKind::Sysexit, None),
            _ => Flow::Trap,
        },
        FlowControl::Interrupt => match insn.mnemonic() {
            Mnemonic::Int | Mnemonic::Int3 | Mnemonic::Into | Mnemonic::Int1 => {
                branch(BranchKind::SoftInt, None)
            }
            _ => Flow::Trap,
        },
        FlowControl::XbeginXabortXend | FlowControl::Exception => Flow::Trap,
    }
}

/// The vector of a software interrupt instruction (INT n → n, INT3 → 3, INTO → 4,
/// INT1 → 1), or `None` for anything else.
pub fn soft_int_vector(bytes: &[u8], ip: u64, size: CodeSize) -> Option<u8> {
    let mut decoder = Decoder::with_ip(size.bitness(), bytes, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    match insn.mnemonic() {
        Mnemonic::Int => Some(insn.immediate8()),
        Mnemonic::Int3 => Some(3),
        Mnemonic::Into => Some(4),
        Mnemonic::Int1 => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: u64 = 0x40_1000;

    fn flow(bytes: &[u8]) -> Flow {
        decode(bytes, IP, CodeSize::Bits64).unwrap().flow
    }

    fn kind(bytes: &[u8]) -> (BranchKind, Option<u64>) {
        match flow(bytes) {
            Flow::Branch { kind, target } => (kind, target),
            other => panic!("{bytes:02x?} decoded as {other:?}"),
        }
    }

    #[test]
    fn sequential_instructions() {
        assert_eq!(flow(&[0x48, 0x89, 0xd8]), Flow::Sequential); // mov rax, rbx
        assert_eq!(flow(&[0x90]), Flow::Sequential); // nop
        assert_eq!(flow(&[0xf3, 0x48, 0xa5]), Flow::Sequential); // rep movsq
        let d = decode(&[0x48, 0x05, 0x78, 0x56, 0x34, 0x12], IP, CodeSize::Bits64).unwrap();
        assert_eq!(d.len, 6); // add rax, imm32
        assert_eq!(d.fallthrough(), IP + 6);
    }

    #[test]
    fn conditional_branches_with_targets() {
        assert_eq!(kind(&[0x74, 0x10]), (BranchKind::Jcc, Some(IP + 2 + 0x10))); // je +0x10
        assert_eq!(kind(&[0x75, 0xfe]), (BranchKind::Jcc, Some(IP))); // jne self
        // jg rel32 backwards
        assert_eq!(
            kind(&[0x0f, 0x8f, 0x00, 0xff, 0xff, 0xff]),
            (BranchKind::Jcc, Some(IP + 6 - 0x100))
        );
        assert_eq!(kind(&[0xe3, 0x05]), (BranchKind::Jcc, Some(IP + 7))); // jrcxz
        assert_eq!(kind(&[0xe2, 0xfe]), (BranchKind::Jcc, Some(IP))); // loop
    }

    #[test]
    fn near_jumps_and_calls() {
        assert_eq!(kind(&[0xeb, 0x03]), (BranchKind::JmpRel, Some(IP + 5)));
        assert_eq!(
            kind(&[0xe9, 0x00, 0x10, 0x00, 0x00]),
            (BranchKind::JmpRel, Some(IP + 5 + 0x1000))
        );
        assert_eq!(kind(&[0xff, 0xe0]), (BranchKind::JmpInd, None)); // jmp rax
        assert_eq!(
            kind(&[0xff, 0x24, 0xc5, 0, 0, 0, 0]),
            (BranchKind::JmpInd, None)
        ); // jmp [rax*8]
        assert_eq!(
            kind(&[0xe8, 0xfb, 0xff, 0xff, 0xff]),
            (BranchKind::CallRel, Some(IP))
        );
        assert_eq!(kind(&[0xff, 0xd0]), (BranchKind::CallInd, None)); // call rax
        assert_eq!(kind(&[0xff, 0x13]), (BranchKind::CallInd, None)); // call [rbx]
        assert_eq!(kind(&[0xc3]), (BranchKind::Ret, None));
        assert_eq!(kind(&[0xc2, 0x08, 0x00]), (BranchKind::Ret, None)); // ret 8
    }

    #[test]
    fn far_transfers() {
        assert_eq!(kind(&[0xff, 0x2b]).0, BranchKind::FarJmp); // jmp far [rbx]
        assert_eq!(kind(&[0xff, 0x1b]).0, BranchKind::FarCall); // call far [rbx]
        assert_eq!(kind(&[0xcb]).0, BranchKind::FarRet); // retf
        assert_eq!(kind(&[0x48, 0xcf]).0, BranchKind::Iret); // iretq
        assert_eq!(kind(&[0x0f, 0x05]).0, BranchKind::Syscall);
        assert_eq!(kind(&[0x48, 0x0f, 0x07]).0, BranchKind::Sysret); // sysretq
        assert_eq!(kind(&[0x0f, 0x34]).0, BranchKind::Sysenter);
        assert_eq!(kind(&[0xcd, 0x80]).0, BranchKind::SoftInt);
        assert_eq!(kind(&[0xcc]).0, BranchKind::SoftInt);
        assert_eq!(kind(&[0xf1]).0, BranchKind::SoftInt); // int1
        // Far direct jmp ptr16:32 only exists outside 64-bit mode.
        let d = decode(&[0xea, 0, 0x10, 0, 0, 0x08, 0], 0x1000, CodeSize::Bits32).unwrap();
        assert!(matches!(
            d.flow,
            Flow::Branch {
                kind: BranchKind::FarJmp,
                ..
            }
        ));
    }

    #[test]
    fn jcc_conditions_follow_the_flags() {
        let cond = |b: &[u8]| decode(b, IP, CodeSize::Bits64).unwrap().cond.unwrap();
        assert_eq!(cond(&[0x74, 0x00]), Cond::E);
        assert!(cond(&[0x74, 0x00]).holds(ZF));
        assert!(!cond(&[0x75, 0x00]).holds(ZF)); // jne
        // jl: SF != OF; jg: ZF = 0 and SF = OF.
        assert!(cond(&[0x7c, 0x00]).holds(SF));
        assert!(!cond(&[0x7c, 0x00]).holds(SF | OF));
        assert!(cond(&[0x7f, 0x00]).holds(SF | OF));
        assert!(!cond(&[0x7f, 0x00]).holds(SF | OF | ZF));
        assert!(cond(&[0x0f, 0x87, 0, 0, 0, 0]).holds(0)); // ja
        assert!(!cond(&[0x0f, 0x87, 0, 0, 0, 0]).holds(CF));
        assert!(cond(&[0x7a, 0x00]).holds(PF)); // jp
        // LOOP and JRCXZ depend on RCX, not on a flag condition.
        assert_eq!(
            decode(&[0xe2, 0xfe], IP, CodeSize::Bits64).unwrap().cond,
            None
        );
        assert_eq!(
            decode(&[0xe3, 0x00], IP, CodeSize::Bits64).unwrap().cond,
            None
        );
        assert_eq!(
            decode(&[0xeb, 0x00], IP, CodeSize::Bits64).unwrap().cond,
            None
        );
    }

    #[test]
    fn soft_int_vectors() {
        assert_eq!(
            soft_int_vector(&[0xcd, 0x80], IP, CodeSize::Bits64),
            Some(0x80)
        );
        assert_eq!(soft_int_vector(&[0xcc], IP, CodeSize::Bits64), Some(3));
        assert_eq!(soft_int_vector(&[0xce], 0x1000, CodeSize::Bits32), Some(4));
        assert_eq!(soft_int_vector(&[0x90], IP, CodeSize::Bits64), None);
    }

    #[test]
    fn traps_and_invalid_bytes() {
        assert_eq!(flow(&[0x0f, 0x0b]), Flow::Trap); // ud2
        assert_eq!(flow(&[0x0f, 0x01, 0xc1]), Flow::Trap); // vmcall
        // 0x06 (push es) is invalid in 64-bit mode.
        assert_eq!(flow(&[0x06, 0x90, 0x90]), Flow::Trap);
    }

    #[test]
    fn truncated_buffers_are_errors_not_panics() {
        assert_eq!(
            decode(&[0xe8, 0x00], IP, CodeSize::Bits64),
            Err(DecodeError::Truncated { ip: IP, have: 2 })
        );
        assert!(decode(&[], IP, CodeSize::Bits64).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift64: deterministic garbage.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 16) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for size in [CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64] {
                if let Ok(d) = decode(&bytes, next(), size) {
                    assert!(d.len >= 1 && usize::from(d.len) <= MAX_INSN_LEN);
                }
                let _ = soft_int_vector(&bytes, 0, size);
            }
        }
    }

    #[test]
    fn sixteen_and_thirty_two_bit_code() {
        // jmp short in 16-bit code wraps within IP's width as iced computes it.
        let d = decode(&[0xeb, 0x02], 0x7c00, CodeSize::Bits16).unwrap();
        assert_eq!(
            d.flow,
            Flow::Branch {
                kind: BranchKind::JmpRel,
                target: Some(0x7c04)
            }
        );
        let d = decode(&[0xe8, 0x00, 0x00, 0x00, 0x00], 0x10_0000, CodeSize::Bits32).unwrap();
        assert_eq!(
            d.flow,
            Flow::Branch {
                kind: BranchKind::CallRel,
                target: Some(0x10_0005)
            }
        );
    }
}
