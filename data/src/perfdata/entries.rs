//! The pieces of a perf sample every perf.data reader decodes the same way: call-chain
//! words with their context markers, and `struct perf_branch_entry`s with their flags.
//! Below both the perf.data reader ([`super`]) and the borrowed sample
//! ([`crate::sample`]), which use them.

use super::abi;
use crate::model::{Branch, BranchFlags, BranchKind, CpuMode, Frame};

/// The `PERF_BR_*` branch type as a model [`BranchKind`].
pub fn branch_kind(perf_br: u64) -> BranchKind {
    match perf_br {
        abi::PERF_BR_COND => BranchKind::Cond,
        abi::PERF_BR_UNCOND => BranchKind::Uncond,
        abi::PERF_BR_IND => BranchKind::IndJump,
        abi::PERF_BR_CALL | abi::PERF_BR_COND_CALL => BranchKind::Call,
        abi::PERF_BR_IND_CALL => BranchKind::IndCall,
        abi::PERF_BR_RET | abi::PERF_BR_COND_RET => BranchKind::Ret,
        abi::PERF_BR_SYSCALL => BranchKind::Syscall,
        abi::PERF_BR_SYSRET => BranchKind::Sysret,
        abi::PERF_BR_ERET => BranchKind::Eret,
        abi::PERF_BR_IRQ => BranchKind::Irq,
        abi::PERF_BR_SERROR => BranchKind::Exception,
        abi::PERF_BR_UNKNOWN | abi::PERF_BR_NO_TX => BranchKind::Unknown,
        _ => BranchKind::Unknown,
    }
}

/// Decodes a `perf_branch_entry.flags` word (little-endian bit-field layout).
pub fn branch_flags(word: u64) -> BranchFlags {
    BranchFlags {
        mispred: word & abi::PERF_BRANCH_MISPRED != 0,
        predicted: word & abi::PERF_BRANCH_PREDICTED != 0,
        in_tx: word & abi::PERF_BRANCH_IN_TX != 0,
        abort: word & abi::PERF_BRANCH_ABORT != 0,
        cycles: ((word >> abi::PERF_BRANCH_CYCLES_SHIFT) & abi::PERF_BRANCH_CYCLES_MASK) as u16,
        kind: branch_kind((word >> abi::PERF_BRANCH_TYPE_SHIFT) & abi::PERF_BRANCH_TYPE_MASK),
    }
}

/// Turns a raw callchain into frames: context markers set the mode of the frames after
/// them and are dropped.
pub fn callchain_frames(raw: impl IntoIterator<Item = u64>, sample_mode: CpuMode) -> Vec<Frame> {
    let mut mode = sample_mode;
    let mut guest = sample_mode.is_guest();
    let raw = raw.into_iter();
    let mut frames = Vec::with_capacity(raw.size_hint().0);
    for v in raw {
        if v >= abi::PERF_CONTEXT_MAX {
            mode = match v {
                abi::PERF_CONTEXT_HV => CpuMode::Hypervisor,
                abi::PERF_CONTEXT_KERNEL if guest => CpuMode::GuestKernel,
                abi::PERF_CONTEXT_KERNEL => CpuMode::Kernel,
                abi::PERF_CONTEXT_USER if guest => CpuMode::GuestUser,
                abi::PERF_CONTEXT_USER => CpuMode::User,
                abi::PERF_CONTEXT_GUEST => {
                    guest = true;
                    mode
                }
                abi::PERF_CONTEXT_GUEST_KERNEL => {
                    guest = true;
                    CpuMode::GuestKernel
                }
                abi::PERF_CONTEXT_GUEST_USER => {
                    guest = true;
                    CpuMode::GuestUser
                }
                _ => mode,
            };
            continue;
        }
        frames.push(Frame { addr: v, mode });
    }
    frames
}

/// Size of one `struct perf_branch_entry`.
pub const BRANCH_ENTRY_LEN: usize = 24;

/// One `struct perf_branch_entry` ([`BRANCH_ENTRY_LEN`] bytes) in the given byte order.
#[inline]
pub fn branch_entry(e: &[u8], le: bool) -> Branch {
    Branch {
        from: word(&e[0..8], le),
        to: word(&e[8..16], le),
        flags: branch_flags(word(&e[16..24], le)),
    }
}

/// A `u64` from 8 bytes in the given byte order.
pub fn word(w: &[u8], le: bool) -> u64 {
    let a = [w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]];
    if le {
        u64::from_le_bytes(a)
    } else {
        u64::from_be_bytes(a)
    }
}
