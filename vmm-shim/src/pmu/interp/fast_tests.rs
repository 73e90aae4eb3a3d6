//! The fast path against the generic one: every form with a fast handler (the native
//! tests' tables and the forms below: RIP- and FS-relative operands, stack operations,
//! indirect branches, faults) runs from the same random state on two fake machines, once
//! with the fast path and once without; the results (step or halt), the registers and all
//! of memory (page tables' accessed and dirty bits included) must be identical.

use std::mem::discriminant;

use iced_x86::{Decoder, DecoderOptions};

use super::tests::{CODE, DATA, Machine, RO, state};
use super::*;

/// Forms the native tables do not have (encodings checked with objdump).
const EXTRA: &[(&str, &[u8])] = &[
    // 0x200007 + 0x200ff9 = DATA + 0x1000.
    (
        "mov 0x200ff9(%rip),%rax",
        &[0x48, 0x8b, 0x05, 0xf9, 0x0f, 0x20, 0x00],
    ),
    (
        "mov %rcx,0x200ff9(%rip)",
        &[0x48, 0x89, 0x0d, 0xf9, 0x0f, 0x20, 0x00],
    ),
    (
        "lea 0x200ff9(%rip),%rdx",
        &[0x48, 0x8d, 0x15, 0xf9, 0x0f, 0x20, 0x00],
    ),
    (
        "mov %fs:0x10,%rax",
        &[0x64, 0x48, 0x8b, 0x04, 0x25, 0x10, 0x00, 0x00, 0x00],
    ),
    ("mov %fs:(%rbx),%eax", &[0x64, 0x8b, 0x03]),
    ("addl $0x3,%fs:0x8(%rbx)", &[0x64, 0x83, 0x43, 0x08, 0x03]),
    ("lea (%rbx,%rcx,4),%ax", &[0x66, 0x8d, 0x04, 0x8b]),
    ("lea -0x8(%rsp),%rsp", &[0x48, 0x8d, 0x64, 0x24, 0xf8]),
    ("movzbl (%rbx,%rcx,2),%eax", &[0x0f, 0xb6, 0x04, 0x4b]),
    ("ret", &[0xc3]),
    ("call .+5", &[0xe8, 0x00, 0x00, 0x00, 0x00]),
    ("call .-0x1000", &[0xe8, 0xfb, 0xef, 0xff, 0xff]),
    ("jmp *(%rbx)", &[0xff, 0x23]),
    ("call *(%rbx)", &[0xff, 0x13]),
    ("jmp *%rax", &[0xff, 0xe0]),
    ("call *%rsi", &[0xff, 0xd6]),
    ("push (%rbx)", &[0xff, 0x33]),
    ("push %rsp", &[0x54]),
    ("pop %rbx", &[0x5b]),
    ("pop %r12", &[0x41, 0x5c]),
    ("leave", &[0xc9]),
    ("cmovne (%rbx),%eax", &[0x0f, 0x45, 0x03]),
    ("cmovg %rsi,%rdi", &[0x48, 0x0f, 0x4f, 0xfe]),
    ("setg (%rbx)", &[0x0f, 0x9f, 0x03]),
    ("shlq $0x3,(%rbx)", &[0x48, 0xc1, 0x23, 0x03]),
    ("shll %cl,(%rbx)", &[0xd3, 0x23]),
    ("shl %cl,%esi", &[0xd3, 0xe6]),
    ("incl 0xffd(%rbx)", &[0xff, 0x83, 0xfd, 0x0f, 0x00, 0x00]),
    (
        "movq $0x1,(%rdi)",
        &[0x48, 0xc7, 0x07, 0x01, 0x00, 0x00, 0x00],
    ),
    ("xor %eax,%eax", &[0x31, 0xc0]),
    ("cmp %rsi,%rdi", &[0x48, 0x39, 0xf7]),
    ("test %rax,%rax", &[0x48, 0x85, 0xc0]),
    ("jz .+0x10", &[0x74, 0x0e]),
    ("jl .-0x30", &[0x7c, 0xce]),
    ("jmp .+0x100", &[0xe9, 0xfb, 0x00, 0x00, 0x00]),
    // One-operand multiplies and divides (a divide that faults goes back to the generic
    // path, which leaves it to the CPU).
    ("div %rcx", &[0x48, 0xf7, 0xf1]),
    ("idiv %ecx", &[0xf7, 0xf9]),
    ("div %bl", &[0xf6, 0xf3]),
    ("idiv %si", &[0x66, 0xf7, 0xfe]),
    ("divl 0x4(%rbx)", &[0xf7, 0x73, 0x04]),
    ("idivq (%rbx)", &[0x48, 0xf7, 0x3b]),
    ("div %ah", &[0xf6, 0xf4]),
    ("idiv %r8d", &[0x41, 0xf7, 0xf8]),
    ("imulb (%rbx)", &[0xf6, 0x2b]),
    ("mul %r10", &[0x49, 0xf7, 0xe2]),
    // No fast form: the generic path takes them (or refuses them) either way.
    ("lock add %eax,(%rbx)", &[0xf0, 0x01, 0x03]),
    ("mov %gs:(%rbx),%eax", &[0x65, 0x8b, 0x03]),
    ("addr32 mov (%ebx),%eax", &[0x67, 0x8b, 0x03]),
    ("imul $0x11,%eax,%edx", &[0x6b, 0xd0, 0x11]),
    ("pop %rsp", &[0x5c]),
    ("pushw %ax", &[0x66, 0x50]),
    ("ret $0x8", &[0xc2, 0x08, 0x00]),
    ("rcl $1,%eax", &[0xd1, 0xd0]),
    ("jmpw *%ax", &[0x66, 0xff, 0xe0]),
];

/// Every instruction of the native tests' tables and of [`EXTRA`], alone.
fn instructions() -> Vec<(String, Vec<u8>)> {
    use super::native_tests::{FORMS, MEMORY_FORMS, MEMORY_SEQUENCES, SEQUENCES};
    let mut all = Vec::new();
    for (text, code) in FORMS
        .iter()
        .chain(SEQUENCES)
        .chain(MEMORY_FORMS)
        .chain(MEMORY_SEQUENCES)
        .chain(EXTRA)
    {
        let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        while d.can_decode() {
            let at = d.ip() as usize;
            let insn = d.decode();
            all.push((format!("{text} [{at}]"), code[at..at + insn.len()].to_vec()));
        }
    }
    all
}

/// A pointer the next operand goes through: mostly good data, sometimes a page boundary,
/// a read-only, supervisor, unmapped or non-canonical address.
fn pointer(r: u64) -> u64 {
    match r % 16 {
        0 => RO + (r >> 8) % 0x100,
        1 => RO - 1 - (r >> 8) % 8,
        2 => 0x1000 + (r >> 8) % 0x100,
        3 => 0x7f_0000_0000,
        4 => 0x8000_0000_0000,
        5 => DATA + 0xffc + (r >> 8) % 8,
        _ => DATA + 0x1000 + (r >> 8) % 0x2000,
    }
}

#[test]
fn fast_and_generic_paths_agree() {
    let mut seed = 0x853c_49e6_748f_ea9bu64;
    let mut next = || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut ran_fast = Vec::new();
    for (text, code) in instructions() {
        let insn = Decoder::with_ip(64, &code, CODE, DecoderOptions::NONE).decode();
        let fast = fast::Fast::new(&insn, &code, false);
        for _ in 0..30 {
            let mut s = state();
            for r in s.gpr.iter_mut() {
                *r = match next() % 4 {
                    0 => next() & 0xff,
                    1 => pointer(next()),
                    _ => next(),
                };
            }
            s.gpr[1] = next() % 70; // CL: shift counts; also a small index
            s.gpr[RSP] = match next() % 8 {
                0 => RO + 0x100,
                1 => RO + 4,
                2 => DATA + 4,
                _ => DATA + 0x8_0000 + (next() % 0x100) * 8,
            };
            s.rflags = (next() & STATUS) | 2;
            s.fs_base = if next() % 2 == 0 { DATA } else { 0 };
            let fill: Vec<u8> = (0..0x4000).map(|_| next() as u8).collect();
            let ret = match next() % 3 {
                0 => 0x8000_0000_0000,
                _ => CODE + 0x40,
            };
            let setup = |m: &mut Machine| {
                let at = (DATA + 0x1000) as usize;
                m.mem[at..at + fill.len()].copy_from_slice(&fill);
                let sp = s.gpr[RSP] as usize;
                if sp + 8 <= m.mem.len() {
                    m.mem[sp..sp + 8].copy_from_slice(&ret.to_le_bytes());
                }
            };
            let mut bytes = code.clone();
            bytes.push(0xf4);
            let mut m_fast = Machine::new(&bytes);
            let mut m_generic = Machine::new(&bytes);
            setup(&mut m_fast);
            setup(&mut m_generic);

            let mut fast_interp = Interp::default();
            let mut session = fast_interp.session(&mut m_fast, s);
            let r_fast = session.step();
            let after_fast = *session.state();
            drop(session);
            let mut generic_interp = Interp::generic_only();
            let mut session = generic_interp.session(&mut m_generic, s);
            let r_generic = session.step();
            let after_generic = *session.state();
            drop(session);

            assert_eq!(r_fast, r_generic, "{text}: from {s:x?}");
            assert_eq!(after_fast, after_generic, "{text}: state from {s:x?}");
            // (Everything writable: the page tables and the read-write data pages.)
            for range in [0..0x4000, DATA as usize..RO as usize] {
                if m_fast.mem[range.clone()] != m_generic.mem[range.clone()] {
                    let at = range
                        .clone()
                        .find(|&i| m_fast.mem[i] != m_generic.mem[i])
                        .unwrap_or(0);
                    panic!("{text}: memory differs at {at:#x} from {s:x?} ({r_fast:?})");
                }
            }
            assert_eq!(generic_interp.fast_steps(), 0);
            if fast_interp.fast_steps() > 0 {
                let f = fast.unwrap_or_else(|| panic!("{text}: ran fast without a fast form"));
                ran_fast.push(discriminant(&f.handler));
            } else if let (Some(f), Ok(step)) = (fast, r_generic) {
                // Only undefined flags for the liveness proof send a fast form back.
                assert!(
                    step.undefined != 0 && matches!(f.handler, fast::Handler::Alu { .. }),
                    "{text}: a fast form that did not run fast ({step:?})"
                );
            }
        }
    }
    // Every handler completed at least once on the fast path.
    for (text, code) in instructions() {
        let insn = Decoder::with_ip(64, &code, CODE, DecoderOptions::NONE).decode();
        if let Some(f) = fast::Fast::new(&insn, &code, false) {
            assert!(
                ran_fast.contains(&discriminant(&f.handler)),
                "{text}: its handler never ran"
            );
        }
    }
}

#[test]
fn forms_without_a_fast_handler_are_left_to_the_generic_path() {
    for (text, code) in EXTRA.iter().skip_while(|(t, _)| !t.starts_with("lock")) {
        let insn = Decoder::with_ip(64, code, CODE, DecoderOptions::NONE).decode();
        let osize = has_osize_prefix(code) && insn.flow_control() != FlowControl::Next;
        assert_eq!(fast::Fast::new(&insn, code, osize), None, "{text}");
    }
}
