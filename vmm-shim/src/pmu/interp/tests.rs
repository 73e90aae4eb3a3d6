//! The interpreter on a small fake machine: guest RAM with 4-level page tables mapping
//! 2 MiB pages (0–2 MiB supervisor-only, 2–4 MiB user code read-only, 4–6 MiB user
//! read-write, 6–8 MiB user read-only), code written in by hand (bytes checked with
//! objdump; the disassembly is beside each snippet).

use super::*;

pub(super) use super::harness::{CODE, DATA, Machine, PD, RO, state};

/// Steps until a halt; returns the steps, the halt and the final state.
fn run(m: &mut Machine, s: InterpState) -> (Vec<Step>, Halt, InterpState) {
    let mut interp = Interp::default();
    let mut session = interp.session(m, s);
    let mut steps = Vec::new();
    loop {
        match session.step() {
            Ok(st) => steps.push(st),
            Err(h) => return (steps, h, *session.state()),
        }
        assert!(steps.len() < 10_000, "runaway");
    }
}

/// Five rounds of a loop that calls a function, then a store and a HLT.
fn loop_program() -> Vec<u8> {
    let mut code = vec![
        0xb9, 5, 0, 0, 0, //          mov    $0x5,%ecx
        0x31, 0xc0, //                xor    %eax,%eax
        0x48, 0x01, 0xc8, //          add    %rcx,%rax          (0x200007)
        0xe8, 0x11, 0, 0, 0, //       call   0x200020
        0x48, 0xff, 0xc9, //          dec    %rcx
        0x75, 0xf3, //                jne    0x200007
        0x48, 0x89, 0x03, //          mov    %rax,(%rbx)
        0xf4, //                      hlt                        (0x200017)
    ];
    code.resize(0x20, 0xcc);
    code.extend([
        0x55, //                      push   %rbp               (0x200020)
        0x48, 0x89, 0xe5, //          mov    %rsp,%rbp
        0x48, 0x6b, 0xd0, 0x03, //    imul   $0x3,%rax,%rdx
        0x48, 0x01, 0xd2, //          add    %rdx,%rdx
        0x5d, //                      pop    %rbp
        0xc3, //                      ret
    ]);
    code
}

#[test]
fn a_loop_with_calls_runs_to_the_first_unsupported_instruction() {
    let code = loop_program();
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[3] = DATA + 0x100;
    s.gpr[5] = 0x1234;
    let sp = s.gpr[RSP];
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!(halt, Halt::Unsupported(Mnemonic::Hlt));
    assert_eq!(end.rip, CODE + 0x17);
    assert_eq!(end.gpr[0], 15);
    assert_eq!(end.gpr[1], 0);
    assert_eq!(end.gpr[2], 90);
    assert_eq!(end.gpr[5], 0x1234);
    assert_eq!(end.gpr[RSP], sp);
    assert_eq!(m.u64_at(DATA + 0x100), 15);
    // The return address of the last call is still below the stack pointer.
    assert_eq!(m.u64_at(sp - 8), CODE + 0xf);
    let branches: Vec<(BranchKind, bool)> = steps
        .iter()
        .filter_map(|st| match st.effect {
            Effect::Branch { kind, taken, .. } => Some((kind, taken)),
            Effect::Next | Effect::Repeat => None,
        })
        .collect();
    assert_eq!(branches.len(), 15);
    assert_eq!(
        branches
            .iter()
            .filter(|b| **b == (BranchKind::Jcc, true))
            .count(),
        4
    );
    assert_eq!(branches.last(), Some(&(BranchKind::Jcc, false)));
    assert_eq!(steps.len(), 2 + 5 * 10 + 1);
    // The writes set the accessed and dirty bits of the data page.
    assert_eq!(m.u64_at(PD + 16) & (PTE_A | PTE_D), PTE_A | PTE_D);
    assert_eq!(m.u64_at(PD + 8) & PTE_D, 0, "code was only fetched");
}

/// The loop program above, as the tracer runs it: batches of at most `max` non-branch
/// instructions ([`Session::run`]) must retire exactly what single steps retire, stop
/// at `max` on the dot (where a PMI is due), and leave the same state and memory.
#[test]
fn batches_run_the_same_instructions_as_single_steps_and_stop_at_their_limit() {
    let code = loop_program();
    let mut s = state();
    s.gpr[3] = DATA + 0x100;
    let mut stepped = Machine::new(&code);
    let (steps, halt, end) = run(&mut stepped, s);
    // What single steps retire: runs of non-branch instructions, each ended by a branch.
    let mut expected = Vec::new();
    let mut n = 0u64;
    for st in &steps {
        match st.effect {
            Effect::Next => n += 1,
            Effect::Repeat => {}
            Effect::Branch { .. } => {
                expected.push((n, Some(*st)));
                n = 0;
            }
        }
    }
    for max in [1, 2, 3, 7, u64::MAX] {
        let mut m = Machine::new(&code);
        let mut interp = Interp::default();
        let mut session = interp.session(&mut m, s);
        let mut got = Vec::new();
        let mut pending = 0u64;
        let last = loop {
            let rip = session.state().rip;
            let (n, r) = session.run(max);
            assert!(n <= max);
            pending += n;
            match r {
                Ok(None) => {
                    assert_eq!(n, max, "a batch ends early only at a branch or a halt");
                    assert_ne!(session.state().rip, rip);
                }
                Ok(Some(branch)) => {
                    got.push((pending, Some(branch)));
                    pending = 0;
                }
                Err(h) => break (pending, h, *session.state()),
            }
            assert!(got.len() < 10_000, "runaway");
        };
        assert_eq!(got, expected, "batches of {max}");
        assert_eq!(last, (n, halt, end), "batches of {max}");
        drop(session);
        assert_eq!(m.mem, stepped.mem, "batches of {max}");
    }
}

#[test]
fn undefined_flags_that_are_read_stop_the_interpreter_before_the_instruction() {
    let code = [
        0x48, 0x6b, 0xc1, 0x03, // imul   $3,%rcx,%rax (ZF undefined)
        0x74, 0x00, //             je     0x200006    (reads ZF)
        0xf4,
    ];
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[0] = 3;
    s.gpr[1] = 5;
    let (steps, halt, end) = run(&mut m, s);
    assert!(steps.is_empty());
    assert_eq!(halt, Halt::FlagsLive);
    assert_eq!(end, s, "nothing executed");
}

#[test]
fn partial_registers_memory_operands_and_conditions() {
    let code = [
        0xb4, 0x12, //             mov    $0x12,%ah
        0x00, 0x23, //             add    %ah,(%rbx)
        0x0f, 0xb6, 0x0b, //       movzbl (%rbx),%ecx
        0x48, 0x0f, 0xbe, 0xd1, // movsbq %cl,%rdx
        0x48, 0x39, 0xc8, //       cmp    %rcx,%rax
        0x0f, 0x45, 0xf9, //       cmovne %ecx,%edi
        0x0f, 0x92, 0xc0, //       setb   %al
        0xf4,
    ];
    let mut m = Machine::new(&code);
    m.mem[DATA as usize] = 0xf0;
    let mut s = state();
    s.gpr[0] = 0x1111_1111_2222_0033;
    s.gpr[3] = DATA;
    s.gpr[7] = u64::MAX;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps.len(), halt), (7, Halt::Unsupported(Mnemonic::Hlt)));
    assert_eq!(m.mem[DATA as usize], 0x02);
    assert_eq!(end.gpr[1], 2);
    assert_eq!(end.gpr[2], 2);
    assert_eq!(end.gpr[7], 2, "a 32-bit CMOV zero-extends");
    assert_eq!(end.gpr[0], 0x1111_1111_2222_1200);
    // cmp left CF clear and ZF clear.
    assert_eq!(end.rflags & (alu::CF | alu::ZF), 0);
}

#[test]
fn faults_and_protection_leave_the_state_untouched() {
    // mov %al,(%rsi): a read-only page. mov (%rdi),%rax: a supervisor page.
    for (code, reg, addr) in [
        (&[0x88u8, 0x06][..], 6, RO),
        (&[0x48, 0x8b, 0x07][..], 7, 0x1000),
        (&[0x48, 0x8b, 0x07][..], 7, 0x7f_0000_0000),
        (&[0x48, 0x8b, 0x07][..], 7, 0x8000_0000_0000),
    ] {
        let mut m = Machine::new(code);
        let mut s = state();
        s.gpr[reg] = addr;
        let (steps, halt, end) = run(&mut m, s);
        assert!(steps.is_empty(), "{addr:#x}");
        assert_eq!(halt, Halt::Memory, "{addr:#x}");
        assert_eq!(end, s);
    }
}

#[test]
fn prefetches_never_fault_and_change_nothing() {
    // prefetcht0 (%rdi) ; prefetchnta 0x40(%rdi) ; prefetchw (%rdi) ; hlt: a supervisor
    // page, an address nothing maps, a non-canonical one, a page no access touched yet
    // (its accessed bit stays clear: a hint is not an access the CPU must set it for).
    let code = [
        0x0f, 0x18, 0x0f, 0x0f, 0x18, 0x47, 0x40, 0x0f, 0x0d, 0x0f, 0xf4,
    ];
    for addr in [0x1000, 0x7f_0000_0000, 0x8000_0000_0000, RO + 0x10] {
        let mut m = Machine::new(&code);
        let pd = m.mem[PD as usize..PD as usize + 64].to_vec();
        let mut s = state();
        s.gpr[7] = addr;
        let (steps, halt, end) = run(&mut m, s);
        assert_eq!(
            (steps.len(), halt),
            (3, Halt::Unsupported(Mnemonic::Hlt)),
            "{addr:#x}"
        );
        assert!(
            steps
                .iter()
                .all(|st| st.effect == Effect::Next && st.undefined == 0)
        );
        assert_eq!(
            end,
            InterpState {
                rip: CODE + 10,
                ..s
            },
            "{addr:#x}"
        );
        assert_eq!(
            m.mem[PD as usize + 24..PD as usize + 64],
            pd[24..],
            "{addr:#x}"
        );
    }
}

#[test]
fn accesses_may_cross_pages_but_a_write_is_all_or_nothing() {
    // mov (%rdi),%rax ; mov %rax,(%rsi) ; hlt
    let code = [0x48, 0x8b, 0x07, 0x48, 0x89, 0x06, 0xf4];
    let mut m = Machine::new(&code);
    let at = RO - 4;
    m.mem[at as usize..at as usize + 8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    let mut s = state();
    s.gpr[7] = at; // read across the RW/RO boundary: fine
    s.gpr[6] = RO - 2; // write across it: faults on the second page
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps.len(), halt), (1, Halt::Memory));
    assert_eq!(end.gpr[0], 0x1122_3344_5566_7788);
    assert_eq!(end.rip, CODE + 3);
    assert_eq!(m.u64_at(at), 0x1122_3344_5566_7788, "nothing written");
}

#[test]
fn data_accesses_to_code_pages_are_left_to_the_cpu() {
    // mov 0x0(%rip),%rax ; hlt  (reads its own code)
    let code = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0xf4];
    let mut m = Machine::new(&code);
    let (steps, halt, _) = run(&mut m, state());
    assert!(steps.is_empty());
    assert_eq!(halt, Halt::CodePage);
}

#[test]
fn lock_prefixes_and_gs_accesses_are_not_interpreted() {
    // lock add %eax,(%rbx) ; mov %gs:0,%rax
    for code in [
        &[0xf0u8, 0x01, 0x03][..],
        &[0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0][..],
    ] {
        let mut m = Machine::new(code);
        let mut s = state();
        s.gpr[3] = DATA;
        let (steps, halt, _) = run(&mut m, s);
        assert!(steps.is_empty());
        assert!(matches!(halt, Halt::Unsupported(_)), "{halt:?}");
    }
}

#[test]
fn the_liveness_search_follows_returns_through_the_real_stack() {
    // 0x200000: rolq $7,(%rbx)   (OF undefined; a memory destination: no host stub)
    //           imul $3,%rdi,%rax (OF defined, AF undefined)
    //           ret              -> 0x200010 (from the stack)
    // 0x200010: add %rax,%rbx    (defines everything)
    let mut code = vec![0x48, 0xc1, 0x03, 0x07, 0x48, 0x6b, 0xc7, 0x03, 0xc3];
    code.resize(0x10, 0xcc);
    code.extend([0x48, 0x01, 0xc3, 0xf4]);
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[3] = DATA;
    let sp = s.gpr[RSP];
    m.mem[sp as usize..sp as usize + 8].copy_from_slice(&(CODE + 0x10).to_le_bytes());
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps.len(), halt), (4, Halt::Unsupported(Mnemonic::Hlt)));
    assert_eq!(end.rip, CODE + 0x13);
    // A return to code that reads AF first: the rotate may run (OF is rewritten by the
    // IMUL), the IMUL may not.
    let mut code = vec![0x48, 0xc1, 0x03, 0x07, 0x48, 0x6b, 0xc7, 0x03, 0xc3];
    code.resize(0x10, 0xcc);
    code.extend([0x9c, 0xf4]); // pushfq
    let mut m = Machine::new(&code);
    m.mem[sp as usize..sp as usize + 8].copy_from_slice(&(CODE + 0x10).to_le_bytes());
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps.len(), halt), (1, Halt::FlagsLive));
    assert_eq!(end.rip, CODE + 4);
}

/// Guest code is untrusted input: random bytes (biased towards the opcodes the interpreter
/// implements), from random registers pointing into and around the data page, never make
/// it panic, and every run ends in a halt or the step limit.
#[test]
fn random_code_never_panics_the_interpreter() {
    const HOT: [u8; 24] = [
        0x48, 0x49, 0x4c, 0x4d, 0x01, 0x03, 0x29, 0x31, 0x39, 0x85, 0x89, 0x8b, 0x8d, 0xc1, 0xd3,
        0xf7, 0xff, 0x0f, 0x50, 0x58, 0x74, 0x75, 0xe8, 0xc3,
    ];
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..3000 {
        let code: Vec<u8> = (0..96)
            .map(|_| match next() % 3 {
                0 => HOT[(next() % HOT.len() as u64) as usize],
                _ => next() as u8,
            })
            .collect();
        let mut m = Machine::new(&code);
        let mut s = state();
        for r in s.gpr.iter_mut() {
            *r = match next() % 4 {
                0 => DATA + next() % 0x20_0000,
                1 => next() % 64,
                2 => RO - 8 + next() % 16,
                _ => next(),
            };
        }
        s.gpr[RSP] = DATA + 0x1000 + next() % 0x1000;
        s.rflags = (next() & alu::STATUS) | 2;
        let mut interp = Interp::default();
        let mut session = interp.session(&mut m, s);
        for _ in 0..200 {
            if session.step().is_err() {
                break;
            }
        }
    }
}

/// An instruction that leaves a flag undefined and rewrites the return address a later RET
/// takes: the search must not follow the stale stack.
#[test]
fn the_liveness_search_does_not_trust_a_stack_the_instruction_rewrites() {
    // 0x200000: shlq $1,(%rsp)    (AF undefined; the return address becomes 0x400020,
    //                             where nothing proves AF dead)
    //           ret
    // 0x200010: add %rax,%rbx     (the stale return address: would prove AF dead)
    let mut code = vec![0x48, 0xd1, 0x24, 0x24, 0xc3];
    code.resize(0x10, 0xcc);
    code.extend([0x48, 0x01, 0xc3, 0xf4]);
    code.resize(0x20, 0xcc);
    code.extend([0x9c, 0xf4]);
    let mut m = Machine::new(&code);
    let s = state();
    let sp = s.gpr[RSP];
    m.mem[sp as usize..sp as usize + 8].copy_from_slice(&(CODE + 0x10).to_le_bytes());
    let (steps, halt, end) = run(&mut m, s);
    assert!(steps.is_empty());
    assert_eq!(halt, Halt::FlagsLive);
    assert_eq!(end, s);
}

/// A 2 MiB page whose entry sets a reserved address bit faults on the CPU: left to it.
#[test]
fn reserved_bits_in_a_large_page_entry_are_left_to_the_cpu() {
    let code = [0x48, 0x8b, 0x07, 0xf4]; // mov (%rdi),%rax ; hlt
    let mut m = Machine::new(&code);
    let e = m.u64_at(PD + 16) | 1 << 13;
    m.mem[PD as usize + 16..PD as usize + 24].copy_from_slice(&e.to_le_bytes());
    let mut s = state();
    s.gpr[7] = DATA + 8;
    let (steps, halt, _) = run(&mut m, s);
    assert!(steps.is_empty());
    assert_eq!(halt, Halt::Memory);
}

/// DIV/IDIV run as the host runs them; one that would raise #DE is left to the CPU, with
/// nothing changed.
#[test]
fn divides_run_unless_they_would_fault() {
    // div %rcx ; hlt
    let code = [0x48, 0xf7, 0xf1, 0xf4];
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[0] = 100;
    s.gpr[2] = 0;
    s.gpr[1] = 7;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps.len(), halt), (1, Halt::Unsupported(Mnemonic::Hlt)));
    assert_eq!((end.gpr[0], end.gpr[2]), (14, 2));
    for (rdx, rcx) in [(0, 0), (7, 7)] {
        s.gpr[2] = rdx;
        s.gpr[1] = rcx;
        let (steps, halt, end) = run(&mut m, s);
        assert!(steps.is_empty());
        assert_eq!(halt, Halt::Unsupported(Mnemonic::Div));
        assert_eq!(end, s, "nothing executed");
    }
    // idivl 0x10(%rbx) ; hlt   (-7 / 2 = -3 rem -1, EDX:EAX zero-extended)
    let code = [0xf7, 0x7b, 0x10, 0xf4];
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[3] = DATA;
    m.mem[DATA as usize + 0x10..DATA as usize + 0x14].copy_from_slice(&2u32.to_le_bytes());
    s.gpr[0] = (-7i32) as u32 as u64 | 0xffff_0000_0000_0000;
    s.gpr[2] = u64::MAX;
    let (steps, _, end) = run(&mut m, s);
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (end.gpr[0], end.gpr[2]),
        ((-3i32) as u32 as u64, (-1i32) as u32 as u64)
    );
}

/// A legacy SSE instruction with a misaligned 16-byte operand raises #GP on the CPU: left
/// to it. A VEX form the interpreter does not run is left to the CPU. XMM registers are
/// written back only when changed.
#[test]
fn sse_alignment_vex_and_write_back() {
    // movaps 0x8(%rbx),%xmm3 (misaligned) ; hlt
    let mut m = Machine::new(&[0x0f, 0x28, 0x5b, 0x08, 0xf4]);
    let mut s = state();
    s.gpr[3] = DATA;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps.len(), halt, end), (0, Halt::Memory, s));
    // vextracti128 $1,%ymm1,%xmm2 (c4 e3 7d 39 ca 01)
    let mut m = Machine::new(&[0xc4, 0xe3, 0x7d, 0x39, 0xca, 0x01, 0xf4]);
    let (steps, halt, _) = run(&mut m, state());
    assert_eq!(
        (steps.len(), halt),
        (0, Halt::Unsupported(Mnemonic::Vextracti128))
    );
    // movdqu (%rbx),%xmm1 ; pcmpeqb %xmm0,%xmm1 ; pmovmskb %xmm1,%eax ; hlt
    let code = [
        0xf3, 0x0f, 0x6f, 0x0b, 0x66, 0x0f, 0x74, 0xc8, 0x66, 0x0f, 0xd7, 0xc1, 0xf4,
    ];
    let mut m = Machine::new(&code);
    m.mem[DATA as usize..DATA as usize + 6].copy_from_slice(b"hello\0");
    let mut interp = Interp::default();
    let mut session = interp.session(&mut m, s);
    for _ in 0..3 {
        session.step().unwrap();
    }
    // The NUL is byte 5 and zero bytes 6..16 match too.
    assert_eq!(session.state().gpr[0], 0xffe0);
    let x = *session.xmm_to_write_back().unwrap();
    assert_eq!(x[1] & 0xff_ffff_ffff, 0);
    // Without SSE, nothing to write back.
    let mut m = Machine::new(&[0x48, 0x01, 0xc3, 0xf4]);
    let mut session = interp.session(&mut m, state());
    session.step().unwrap();
    assert!(session.xmm_to_write_back().is_none());
}

/// `%fs:` operands add FS.base (thread-local storage); `%gs:` ones are left to the CPU.
#[test]
fn fs_accesses_add_the_fs_base() {
    // mov %fs:0x28,%rax ; hlt
    let mut m = Machine::new(&[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, 0xf4]);
    m.mem[DATA as usize + 0x128..DATA as usize + 0x130].copy_from_slice(&0xfeed_u64.to_le_bytes());
    let mut s = state();
    s.fs_base = DATA + 0x100;
    let (steps, _, end) = run(&mut m, s);
    assert_eq!((steps.len(), end.gpr[0]), (1, 0xfeed));
    // mov %gs:0x28,%rax
    let mut m = Machine::new(&[0x65, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, 0xf4]);
    let (steps, halt, _) = run(&mut m, s);
    assert_eq!((steps.len(), halt), (0, Halt::Unsupported(Mnemonic::Mov)));
}

/// BSF with a zero source: ZF set and the destination as the CPU leaves it (the host ran
/// the same instruction on the same register).
#[test]
fn a_bit_scan_of_zero_sets_zf() {
    // bsf %rcx,%rax ; hlt
    let mut m = Machine::new(&[0x48, 0x0f, 0xbc, 0xc1, 0xf4]);
    let mut s = state();
    s.gpr[0] = 0x1234;
    s.gpr[1] = 0;
    let (steps, _, end) = run(&mut m, s);
    assert_eq!(steps.len(), 1);
    assert_ne!(end.rflags & alu::ZF, 0);
    s.gpr[1] = 0x80;
    let (_, _, end) = run(&mut m, s);
    assert_eq!((end.gpr[0], end.rflags & alu::ZF), (7, 0));
}
