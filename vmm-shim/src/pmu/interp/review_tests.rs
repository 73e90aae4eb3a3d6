//! Regression tests from the adversarial review of the interpreter (issue 6): each pins a
//! way the interpreter could once diverge from the CPU, on the fake machine of `tests.rs`
//! (bytes checked with objdump; the disassembly is beside each snippet).

use super::tests::{CODE, DATA, Machine, state};
use super::*;

/// Steps until a halt; returns the steps, the halt and the final state.
fn run_with(interp: &mut Interp, m: &mut Machine, s: InterpState) -> (usize, Halt, InterpState) {
    let mut session = interp.session(m, s);
    let mut steps = 0;
    loop {
        match session.step() {
            Ok(_) => steps += 1,
            Err(h) => return (steps, h, *session.state()),
        }
        assert!(steps < 10_000, "runaway");
    }
}

fn run(m: &mut Machine, s: InterpState) -> (usize, Halt, InterpState) {
    run_with(&mut Interp::default(), m, s)
}

fn put(m: &mut Machine, at: u64, v: u64) {
    m.mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// `code` at CODE, then `add %rax,%rbx ; hlt` at CODE+0x10 (defines every flag) and
/// `pushfq ; hlt` at CODE+0x20 (reads every flag).
fn with_targets(code: &[u8]) -> Vec<u8> {
    let mut c = code.to_vec();
    c.resize(0x10, 0xcc);
    c.extend([0x48, 0x01, 0xc3, 0xf4]);
    c.resize(0x20, 0xcc);
    c.extend([0x9c, 0xf4]);
    c
}

/// A POP then a PUSH rewrite the slot at the original stack pointer: a later RET goes
/// where the PUSH said, not where the stack said before the instruction.
#[test]
fn a_push_after_a_pop_rewrites_the_return_slot_the_search_reads() {
    // sal $2,%rax (C1 /6) (OF, AF undefined) ; pop %rcx ; push %rdx ; ret
    let code = with_targets(&[0x48, 0xc1, 0xf0, 0x02, 0x59, 0x52, 0xc3]);
    let mut m = Machine::new(&code);
    let mut s = state();
    put(&mut m, s.gpr[RSP], CODE + 0x10);
    s.gpr[2] = CODE + 0x20;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    assert_eq!(end, s);
}

/// Two paths meeting at a RET, one of which rewrote memory: the second to arrive must not
/// be taken as proven because the first (with the untouched stack) was.
#[test]
fn a_path_that_wrote_memory_is_not_merged_with_one_that_did_not() {
    // 0x200000: sal $2,%rax (C1 /6)        (OF, AF undefined; ZF from the result)
    // 0x200004: je 0x200007
    // 0x200006: ret
    // 0x200007: mov %rbx,(%rsp)
    // 0x20000b: jmp 0x200006
    let code = with_targets(&[
        0x48, 0xc1, 0xf0, 0x02, 0x74, 0x01, 0xc3, 0x48, 0x89, 0x1c, 0x24, 0xeb, 0xf9,
    ]);
    let mut m = Machine::new(&code);
    let mut s = state();
    put(&mut m, s.gpr[RSP], CODE + 0x10);
    s.gpr[0] = 0; // ZF set: the path through the store is the one taken
    s.gpr[3] = CODE + 0x20;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    assert_eq!(end, s);
}

/// `xchg %rdx,%rsp` writes RSP through its second operand.
#[test]
fn an_xchg_into_rsp_is_not_a_static_stack_move() {
    // sal $2,%rax (C1 /6) ; xchg %rsp,%rdx ; ret
    let code = with_targets(&[0x48, 0xc1, 0xf0, 0x02, 0x48, 0x87, 0xe2, 0xc3]);
    let mut m = Machine::new(&code);
    let mut s = state();
    put(&mut m, s.gpr[RSP], CODE + 0x10);
    s.gpr[2] = DATA + 0x2000;
    put(&mut m, DATA + 0x2000, CODE + 0x20);
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    assert_eq!(end, s);
}

/// SHLD/SHRD with a count above the operand size leave every flag undefined.
#[test]
fn a_double_shift_past_the_operand_size_defines_no_flag() {
    // shld $20,%bx,%cx (66 0f a4 d9 14): 16-bit, count 20 > 16
    let mut d = Decoder::with_ip(64, &[0x66, 0x0f, 0xa4, 0xd9, 0x14], 0, DecoderOptions::NONE);
    let insn = d.decode();
    assert_eq!(insn.mnemonic(), Mnemonic::Shld);
    assert_eq!(defined_writes(&insn), 0);
    // imul $3,%rcx,%rax (SF/ZF/AF/PF undefined) ; shld $20,%bx,%cx ; pushfq
    let code = with_targets(&[0x48, 0x6b, 0xc1, 0x03, 0x66, 0x0f, 0xa4, 0xd9, 0x14, 0x9c]);
    let mut m = Machine::new(&code);
    let (steps, halt, _) = run(&mut m, state());
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
}

/// Flags read by instructions the search must treat as readers.
#[test]
fn pushfq_lahf_and_flag_consumers_count_as_reads() {
    for (bytes, want) in [
        (&[0x9cu8][..], alu::STATUS),                           // pushfq
        (&[0x9f][..], alu::STATUS & !alu::OF),                  // lahf
        (&[0x48, 0x11, 0xc8][..], alu::CF),                     // adc %rcx,%rax
        (&[0x0f, 0x4f, 0xc1][..], alu::ZF | alu::SF | alu::OF), // cmovg
    ] {
        let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        let insn = d.decode();
        assert_eq!(arch_flags(insn.rflags_read()) & want, want, "{insn}");
    }
    // SYSCALL saves RFLAGS in R11: never a plain fall-through for the search.
    let mut d = Decoder::with_ip(64, &[0x0f, 0x05], 0, DecoderOptions::NONE);
    assert_ne!(d.decode().flow_control(), FlowControl::Next);
}

/// A write across a page boundary that faults on its second page, or an instruction left to
/// the CPU for its flags after it read memory, changes nothing: no accessed or dirty bit.
#[test]
fn a_halted_instruction_sets_no_accessed_or_dirty_bit() {
    // mov %rax,(%rsi) across the RW/RO boundary
    let mut m = Machine::new(&[0x48, 0x89, 0x06, 0xf4]);
    let before = m.mem.clone();
    let mut s = state();
    s.gpr[6] = 0x60_0000 - 2;
    let (steps, halt, _) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::Memory));
    assert!(m.mem == before, "the page tables changed");
    // imul $3,(%rbx),%rax (ZF undefined) ; je
    let mut m = Machine::new(&[0x48, 0x6b, 0x03, 0x03, 0x74, 0x00, 0xf4]);
    let before = m.mem.clone();
    let mut s = state();
    s.gpr[3] = DATA + 0x100;
    let (steps, halt, _) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    assert!(m.mem == before, "the page tables changed");
}

/// Code the guest rewrote between two stretches (JIT, loader) is decoded again.
#[test]
fn code_rewritten_between_stretches_is_decoded_again() {
    // add %rcx,%rax ; hlt   then   sub %rcx,%rax ; hlt
    let mut m = Machine::new(&[0x48, 0x01, 0xc8, 0xf4]);
    let mut interp = Interp::default();
    let mut s = state();
    s.gpr[0] = 10;
    s.gpr[1] = 3;
    let (_, _, end) = run_with(&mut interp, &mut m, s);
    assert_eq!(end.gpr[0], 13);
    m.mem[CODE as usize + 1] = 0x29;
    let (_, _, end) = run_with(&mut interp, &mut m, s);
    assert_eq!(end.gpr[0], 7, "the stale decode ran");
}

/// A liveness verdict cached from code that changed since is not reused.
#[test]
fn a_cached_liveness_verdict_follows_rewritten_code() {
    // sal $2,%rax (C1 /6) ; add %rax,%rbx ; hlt   then the ADD becomes pushfq ; nop ; nop
    let mut m = Machine::new(&[0x48, 0xc1, 0xf0, 0x02, 0x48, 0x01, 0xc3, 0xf4]);
    let mut interp = Interp::default();
    let s = state();
    let (steps, _, _) = run_with(&mut interp, &mut m, s);
    assert_eq!(steps, 2);
    m.mem[CODE as usize + 4..CODE as usize + 7].copy_from_slice(&[0x9c, 0x90, 0x90]);
    let (steps, halt, _) = run_with(&mut interp, &mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
}

/// A near branch with an operand-size prefix: Intel ignores it in 64-bit mode, AMD
/// truncates the target to 16 bits. Which one runs the guest is not ours to guess.
#[test]
fn near_branches_with_an_operand_size_prefix_are_left_to_the_cpu() {
    for code in [
        &[0x66u8, 0xeb, 0x00, 0xf4][..],     // jmpw .+2
        &[0x66, 0xe8, 0x00, 0x00, 0xf4][..], // callw .+3 (rel16)
        &[0x66, 0x74, 0x00, 0xf4][..],       // jew .+2
        &[0x66, 0x48, 0xeb, 0x00, 0xf4][..], // REX after 0x66
    ] {
        let mut m = Machine::new(code);
        let (steps, halt, end) = run(&mut m, state());
        assert_eq!(steps, 0, "{code:x?}");
        assert!(matches!(halt, Halt::Unsupported(_)), "{code:x?}: {halt:?}");
        assert_eq!(end, state());
    }
}

/// 5-level paging (CR4.LA57) walks five levels; the interpreter knows four.
#[test]
fn five_level_paging_is_refused() {
    let mut s = state();
    s.cr4 |= 1 << 12;
    assert!(s.refusal().is_some());
}

/// 32-bit addressing (0x67) truncates the effective address, for memory and for LEA.
#[test]
fn address_size_prefix_truncates_effective_addresses() {
    // mov (%ebx),%eax ; lea 0x10(%ecx,%ebx),%rdx ; hlt
    let code = [0x67, 0x8b, 0x03, 0x67, 0x48, 0x8d, 0x54, 0x19, 0x10, 0xf4];
    let mut m = Machine::new(&code);
    put(&mut m, DATA + 0x40, 0x1122_3344_5566_7788);
    let mut s = state();
    s.gpr[3] = 0xdead_beef_0000_0000 | (DATA + 0x40);
    s.gpr[1] = 0xffff_ffff_ffff_fff0;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (2, Halt::Unsupported(Mnemonic::Hlt)));
    assert_eq!(end.gpr[0], 0x5566_7788);
    assert_eq!(end.gpr[2], DATA + 0x40);
}

/// Stack forms: `push %rsp` pushes the old value, `push 8(%rsp)` addresses before the
/// decrement, `ret $16` pops then releases, `leave` restores RBP; 16-bit push/pop and
/// `pop %rsp` are left to the CPU.
#[test]
fn stack_forms_with_rsp_as_an_operand() {
    // push %rsp ; push 0x8(%rsp) ; pop %rax ; pop %rcx ; hlt
    let code = [0x54, 0xff, 0x74, 0x24, 0x08, 0x58, 0x59, 0xf4];
    let mut m = Machine::new(&code);
    let mut s = state();
    let sp = s.gpr[RSP];
    put(&mut m, sp, 0xabcd);
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (4, Halt::Unsupported(Mnemonic::Hlt)));
    assert_eq!(end.gpr[0], 0xabcd, "push 8(%rsp) read above the pushed RSP");
    assert_eq!(end.gpr[1], sp, "push %rsp pushed the old value");
    assert_eq!(end.gpr[RSP], sp);

    // call 0x200008 ; hlt ... 0x200008: push %rbp ; mov %rsp,%rbp ; leave ; ret $0x10
    let mut code = vec![0xe8, 0x03, 0, 0, 0, 0xf4];
    code.resize(8, 0xcc);
    code.extend([0x55, 0x48, 0x89, 0xe5, 0xc9, 0xc2, 0x10, 0x00]);
    let mut m = Machine::new(&code);
    s.gpr[5] = 0x5555;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (5, Halt::Unsupported(Mnemonic::Hlt)));
    assert_eq!(end.rip, CODE + 5);
    assert_eq!(end.gpr[5], 0x5555);
    assert_eq!(end.gpr[RSP], sp + 0x10);

    // pushw %ax ; popw %ax ; pop %rsp ; pop (%rsp)
    for code in [
        &[0x66u8, 0x50][..],
        &[0x66, 0x58],
        &[0x5c],
        &[0x8f, 0x04, 0x24],
    ] {
        let mut m = Machine::new(code);
        let (steps, halt, _) = run(&mut m, s);
        assert_eq!(steps, 0, "{code:x?}");
        assert!(matches!(halt, Halt::Unsupported(_)), "{code:x?}: {halt:?}");
    }
}

/// Code reached through a second, writable mapping of its physical page (JITs with dual
/// mappings): a data access through the alias must not bypass the decode cache or read the
/// tracer's `int3` patches.
#[test]
fn data_accesses_to_code_through_an_alias_are_left_to_the_cpu() {
    const ALIAS: u64 = 0x80_0000;
    // mov %rax,0x10(%rbx) ; mov (%rbx),%rcx ; hlt
    for code in [
        &[0x48u8, 0x89, 0x43, 0x10, 0xf4][..],
        &[0x48, 0x8b, 0x0b, 0xf4],
    ] {
        let mut m = Machine::new(code);
        put(&mut m, 0x3000 + 32, CODE | PTE_P | PTE_RW | PTE_US | PTE_PS);
        let before = m.mem.clone();
        let mut s = state();
        s.gpr[3] = ALIAS;
        let (steps, halt, _) = run(&mut m, s);
        assert_eq!((steps, halt), (0, Halt::CodePage), "{code:x?}");
        assert!(m.mem == before);
    }
    // Code the tracer decoded (not the interpreter) counts too.
    let mut m = Machine::new(&[0x48, 0x8b, 0x0b, 0xf4]);
    put(&mut m, 0x3000 + 32, CODE | PTE_P | PTE_RW | PTE_US | PTE_PS);
    let mut interp = Interp::default();
    interp.note_code(state().cr3, CODE + 0x10_0000, CODE + 0x10_0010);
    let mut s = state();
    s.gpr[3] = ALIAS + 0x10_0000;
    let (steps, halt, _) = run_with(&mut interp, &mut m, s);
    assert_eq!((steps, halt), (0, Halt::CodePage));
}

/// The fake machine, with another vCPU that unmaps the data page (clears its PDE) just as
/// the interpreter sets accessed/dirty bits.
struct Racy<'m>(&'m mut Machine);

impl GuestAccess for Racy<'_> {
    fn cpu(&mut self) -> Result<crate::pmu::guest::GuestCpu, crate::pmu::guest::GuestAccessError> {
        self.0.cpu()
    }
    fn read_virt(
        &mut self,
        gva: u64,
        buf: &mut [u8],
    ) -> Result<(), crate::pmu::guest::GuestAccessError> {
        self.0.read_virt(gva, buf)
    }
    fn read_msr(&mut self, index: u32) -> Result<u64, crate::pmu::guest::GuestAccessError> {
        self.0.read_msr(index)
    }
    fn read_phys(
        &mut self,
        gpa: u64,
        buf: &mut [u8],
    ) -> Result<(), crate::pmu::guest::GuestAccessError> {
        self.0.read_phys(gpa, buf)
    }
    fn write_phys(
        &mut self,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), crate::pmu::guest::GuestAccessError> {
        self.0.write_phys(gpa, data)
    }
    fn cmpxchg_phys_u64(
        &mut self,
        gpa: u64,
        old: u64,
        new: u64,
    ) -> Result<bool, crate::pmu::guest::GuestAccessError> {
        put(self.0, 0x3000 + 16, 0);
        self.0.cmpxchg_phys_u64(gpa, old, new)
    }
}

/// Accessed/dirty bits are set with a compare-and-exchange: a page-table entry another
/// vCPU cleared meanwhile is not resurrected, and the instruction is left to the CPU.
#[test]
fn accessed_and_dirty_bits_do_not_resurrect_an_entry_cleared_meanwhile() {
    // mov %rax,(%rbx) ; hlt
    let mut m = Machine::new(&[0x48, 0x89, 0x03, 0xf4]);
    let mut s = state();
    s.gpr[0] = 0x1234_5678;
    s.gpr[3] = DATA + 0x100;
    let mut interp = Interp::default();
    let mut racy = Racy(&mut m);
    let mut session = interp.session(&mut racy, s);
    assert_eq!(session.step(), Err(Halt::Memory));
    assert_eq!(*session.state(), s);
    drop(session);
    assert_eq!(
        m.mem[0x3000 + 16..0x3000 + 24],
        [0u8; 8],
        "the entry came back"
    );
    assert_eq!(
        m.mem[(DATA + 0x100) as usize..(DATA + 0x108) as usize],
        [0u8; 8]
    );
}

/// A near branch to a non-canonical address faults on the branch (#GP, nothing pushed or
/// popped): left to the CPU, not executed into a RIP no VM entry accepts.
#[test]
fn a_branch_to_a_non_canonical_address_is_left_to_the_cpu() {
    // jmp *%rax ; call *%rax ; ret
    for code in [&[0xffu8, 0xe0][..], &[0xff, 0xd0], &[0xc3]] {
        let mut m = Machine::new(code);
        let mut s = state();
        s.gpr[0] = 0x8000_0000_0000;
        put(&mut m, s.gpr[RSP], 0x0000_9000_0000_0000);
        let before = m.mem.clone();
        let (steps, halt, end) = run(&mut m, s);
        assert_eq!((steps, halt), (0, Halt::Memory), "{code:x?}");
        assert_eq!(end, s);
        assert!(m.mem == before);
    }
}

/// A guest debugging itself with hardware breakpoints or watchpoints (DR7 enables): an
/// interpreted instruction would not raise its #DB.
#[test]
fn armed_guest_breakpoints_are_refused() {
    let mut s = state();
    s.dr7 = 0x400;
    assert_eq!(s.refusal(), None);
    for enable in 0..8 {
        s.dr7 = 0x400 | 1 << enable;
        assert!(s.refusal().is_some(), "DR7 bit {enable}");
    }
}

/// Inside a call the search follows, `xchg %rdx,%rsp` moves the stack: the RET returns
/// through the new stack, not to the call's shadow return address.
#[test]
fn a_stack_switch_inside_a_followed_call_is_not_a_shadow_return() {
    // 0x200000: sal $2,%rax (C1 /6) ; call 0x200030 ; add %rax,%rbx ; hlt
    // 0x200030: xchg %rsp,%rdx ; ret
    let mut code = with_targets(&[
        0x48, 0xc1, 0xf0, 0x02, 0xe8, 0x27, 0, 0, 0, 0x48, 0x01, 0xc3, 0xf4,
    ]);
    code.resize(0x30, 0xcc);
    code.extend([0x48, 0x87, 0xe2, 0xc3]);
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[2] = DATA + 0x2000;
    put(&mut m, DATA + 0x2000, CODE + 0x20);
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    assert_eq!(end, s);
}

/// Stores the search must see although their first operand is a register: MASKMOVDQU
/// writes at [RDI] (here the return address).
#[test]
fn implicit_stores_count_as_memory_writes() {
    // sal $2,%rax (C1 /6) ; maskmovdqu %xmm1,%xmm0 ; ret
    let code = with_targets(&[0x48, 0xc1, 0xf0, 0x02, 0x66, 0x0f, 0xf7, 0xc1, 0xc3]);
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[7] = s.gpr[RSP];
    put(&mut m, s.gpr[RSP], CODE + 0x10);
    let (steps, halt, _) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
}

/// A callee that drops its own return address before returning (`lea 8(%rsp),%rsp ; ret`)
/// returns through the caller's stack, not to the call's shadow return address.
#[test]
fn an_unbalanced_callee_does_not_return_to_the_shadow_address() {
    // 0x200000: sal $2,%rax (C1 /6) ; call 0x200030 ; add %rax,%rbx ; hlt
    // 0x200030: lea 0x8(%rsp),%rsp ; ret
    let mut code = with_targets(&[
        0x48, 0xc1, 0xf0, 0x02, 0xe8, 0x27, 0, 0, 0, 0x48, 0x01, 0xc3, 0xf4,
    ]);
    code.resize(0x30, 0xcc);
    code.extend([0x48, 0x8d, 0x64, 0x24, 0x08, 0xc3]);
    let mut m = Machine::new(&code);
    let s = state();
    put(&mut m, s.gpr[RSP], CODE + 0x20);
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    assert_eq!(end, s);
}

/// A callee that rewrites its own return address (`mov %rdx,(%rsp) ; ret`) returns there,
/// not to the call's shadow return address.
#[test]
fn a_callee_that_rewrites_its_return_address_does_not_return_to_the_shadow_address() {
    // 0x200000: sal $2,%rax (C1 /6) ; call 0x200030 ; add %rax,%rbx ; hlt
    // 0x200030: mov %rdx,(%rsp) ; ret
    let mut code = with_targets(&[
        0x48, 0xc1, 0xf0, 0x02, 0xe8, 0x27, 0, 0, 0, 0x48, 0x01, 0xc3, 0xf4,
    ]);
    code.resize(0x30, 0xcc);
    code.extend([0x48, 0x89, 0x14, 0x24, 0xc3]);
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[2] = CODE + 0x20;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    assert_eq!(end, s);
}

/// With CET on, CALL/RET also push/pop the shadow stack and indirect branches must land on
/// ENDBR64: a CALL interpreted without it would make the guest's next RET raise #CP.
#[test]
fn control_flow_enforcement_is_refused() {
    let mut s = state();
    s.cr4 |= 1 << 23;
    assert!(s.refusal().is_some());
}

/// A REP-prefixed CMPS/SCAS with RCX = 0 does nothing, flags included: it defines none.
#[test]
fn a_rep_string_compare_may_leave_the_flags_alone() {
    // imul $3,%rcx,%rax (SF/ZF/AF/PF undefined) ; repz cmpsb ; pushfq
    let code = with_targets(&[0x48, 0x6b, 0xc1, 0x03, 0xf3, 0xa6, 0x9c]);
    let mut m = Machine::new(&code);
    let mut s = state();
    s.gpr[1] = 0;
    let (steps, halt, _) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
    // repnz scasb likewise
    let code = with_targets(&[0x48, 0x6b, 0xc1, 0x03, 0xf2, 0xae, 0x9c]);
    let mut m = Machine::new(&code);
    let (steps, halt, _) = run(&mut m, s);
    assert_eq!((steps, halt), (0, Halt::FlagsLive));
}

/// The physical code-page set is rebuilt when the decode cache is flushed: a page that
/// held code once does not stop data accesses through another mapping forever, while the
/// pages the tracer noted are still covered.
#[test]
fn the_physical_code_page_set_is_rebuilt_with_the_cache() {
    const ALIAS: u64 = 0x80_0000;
    let mut m = Machine::new(&[0x48, 0x8b, 0x0b, 0xf4]); // mov (%rbx),%rcx ; hlt
    put(&mut m, 0x3000 + 32, CODE | PTE_P | PTE_RW | PTE_US | PTE_PS);
    let mut interp = Interp::default();
    let s = state();
    interp.note_code(s.cr3, CODE + 0x10_0000, CODE + 0x10_0010);
    run_with(&mut interp, &mut m, s);
    // Pretend the executed code page (CODE) was freed: flush by filling the cache.
    interp.code_phys.insert(DATA + 0x1000);
    for i in 0..MAX_CACHED_INSNS as u64 {
        let insn = interp.cache[&(s.cr3, CODE)];
        interp.cache.insert((s.cr3, 0x1_0000_0000 + i), insn);
    }
    interp.decode(&mut m, s.cr3, CODE + 1);
    assert!(
        !interp.code_phys.contains(&(DATA + 0x1000)),
        "stale entry kept"
    );
    let mut s2 = s;
    s2.gpr[3] = ALIAS + 0x10_0000;
    let (steps, halt, _) = run_with(&mut interp, &mut m, s2);
    assert_eq!((steps, halt), (0, Halt::CodePage), "the tracer's page lost");
}

/// The fake machine, counting single-access (aligned) reads and writes.
struct Counting<'m> {
    m: &'m mut Machine,
    aligned_reads: Vec<(u64, usize)>,
    aligned_writes: Vec<(u64, usize)>,
}

impl GuestAccess for Counting<'_> {
    fn cpu(&mut self) -> Result<crate::pmu::guest::GuestCpu, crate::pmu::guest::GuestAccessError> {
        self.m.cpu()
    }
    fn read_virt(
        &mut self,
        gva: u64,
        buf: &mut [u8],
    ) -> Result<(), crate::pmu::guest::GuestAccessError> {
        self.m.read_virt(gva, buf)
    }
    fn read_msr(&mut self, index: u32) -> Result<u64, crate::pmu::guest::GuestAccessError> {
        self.m.read_msr(index)
    }
    fn read_phys(
        &mut self,
        gpa: u64,
        buf: &mut [u8],
    ) -> Result<(), crate::pmu::guest::GuestAccessError> {
        self.m.read_phys(gpa, buf)
    }
    fn write_phys(
        &mut self,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), crate::pmu::guest::GuestAccessError> {
        self.m.write_phys(gpa, data)
    }
    fn read_phys_aligned(
        &mut self,
        gpa: u64,
        len: usize,
    ) -> Result<u64, crate::pmu::guest::GuestAccessError> {
        self.aligned_reads.push((gpa, len));
        self.m.read_phys_aligned(gpa, len)
    }
    fn write_phys_aligned(
        &mut self,
        gpa: u64,
        len: usize,
        value: u64,
    ) -> Result<(), crate::pmu::guest::GuestAccessError> {
        self.aligned_writes.push((gpa, len));
        self.m.write_phys_aligned(gpa, len, value)
    }
}

/// Naturally aligned loads and stores are single-copy atomic for the guest: the
/// interpreter makes them as one access, not a byte copy another vCPU could see torn.
#[test]
fn aligned_accesses_are_made_as_one_access() {
    // mov (%rbx),%rax ; mov %eax,0xc(%rbx) ; mov 0x3(%rbx),%ecx ; push %rax ; hlt
    let code = [
        0x48, 0x8b, 0x03, 0x89, 0x43, 0x0c, 0x8b, 0x4b, 0x03, 0x50, 0xf4,
    ];
    let mut m = Machine::new(&code);
    put(&mut m, DATA + 0x100, 0x1122_3344_5566_7788);
    let mut s = state();
    s.gpr[3] = DATA + 0x100;
    let sp = s.gpr[RSP];
    let mut c = Counting {
        m: &mut m,
        aligned_reads: Vec::new(),
        aligned_writes: Vec::new(),
    };
    let mut interp = Interp::default();
    let mut session = interp.session(&mut c, s);
    for _ in 0..4 {
        session.step().unwrap();
    }
    let end = *session.state();
    drop(session);
    assert_eq!(
        c.aligned_reads,
        vec![(DATA + 0x100, 8)],
        "the misaligned read is not one"
    );
    assert_eq!(c.aligned_writes, vec![(DATA + 0x10c, 4), (sp - 8, 8)]);
    assert_eq!(end.gpr[1], 0x2233_4455);
    assert_eq!(m.u64_at(DATA + 0x108) >> 32, 0x5566_7788);
    assert_eq!(m.u64_at(sp - 8), 0x1122_3344_5566_7788);
}

/// The decoded-block cache: an instruction inside a cached block (not its first) that the
/// guest rewrote between two stretches is decoded again, and so is a block that a rewrite
/// ends earlier (a jump put in the middle of it).
#[test]
fn a_block_rewritten_inside_between_stretches_is_decoded_again() {
    // add %rcx,%rax (three times) ; hlt
    let code = [0x48, 0x01, 0xc8, 0x48, 0x01, 0xc8, 0x48, 0x01, 0xc8, 0xf4];
    let mut m = Machine::new(&code);
    let mut interp = Interp::default();
    let mut s = state();
    s.gpr[0] = 10;
    s.gpr[1] = 3;
    let (steps, _, end) = run_with(&mut interp, &mut m, s);
    assert_eq!((steps, end.gpr[0]), (3, 19));
    // The third ADD becomes SUB.
    m.mem[CODE as usize + 7] = 0x29;
    let (steps, _, end) = run_with(&mut interp, &mut m, s);
    assert_eq!((steps, end.gpr[0]), (3, 13), "the stale block ran");
    // The second becomes `jmp .+4 ; nop` to the HLT.
    m.mem[CODE as usize + 3..CODE as usize + 6].copy_from_slice(&[0xeb, 0x04, 0x90]);
    let (steps, _, end) = run_with(&mut interp, &mut m, s);
    assert_eq!(
        (steps, end.gpr[0], end.rip),
        (2, 13, CODE + 9),
        "the stale block ran"
    );
}

/// A block entered again and again in one stretch (a loop) runs from the cache with the
/// right count, and a write to a page the block came from still halts.
#[test]
fn a_loop_runs_from_cached_blocks_and_code_writes_still_halt() {
    // mov $5,%ecx ; 1: add %rcx,%rax ; dec %ecx ; jnz 1b ; mov %rax,(%rbx) ; hlt
    let code = [
        0xb9, 0x05, 0x00, 0x00, 0x00, 0x48, 0x01, 0xc8, 0xff, 0xc9, 0x75, 0xf9, 0x48, 0x89, 0x03,
        0xf4,
    ];
    let mut m = Machine::new(&code);
    let mut interp = Interp::default();
    let mut s = state();
    s.gpr[3] = DATA;
    let (steps, halt, end) = run_with(&mut interp, &mut m, s);
    assert_eq!((steps, end.gpr[0]), (1 + 5 * 3 + 1, 15));
    assert!(matches!(halt, Halt::Unsupported(_)), "{halt:?}");
    // The same loop storing into its own code page: the store halts before it happens.
    s.gpr[3] = CODE + 0x100;
    let (steps, halt, end) = run_with(&mut interp, &mut m, s);
    assert_eq!((steps, halt, end.gpr[0]), (1 + 5 * 3, Halt::CodePage, 15));
}

/// Chained blocks (a block's link to the block execution went on to, followed without a
/// map lookup) are still checked against guest memory once per stretch: a loop whose
/// second block the guest rewrote between two stretches runs the new code.
#[test]
fn a_chained_block_rewritten_between_stretches_is_decoded_again() {
    // mov $5,%ecx ; 1: add %rcx,%rax ; jmp 2f ; 2: dec %ecx ; jnz 1b ; hlt
    let code = [
        0xb9, 0x05, 0x00, 0x00, 0x00, 0x48, 0x01, 0xc8, 0xeb, 0x00, 0xff, 0xc9, 0x75, 0xf7, 0xf4,
    ];
    let mut m = Machine::new(&code);
    let mut interp = Interp::default();
    let s = state();
    let (steps, halt, end) = run_with(&mut interp, &mut m, s);
    assert_eq!((steps, end.gpr[0], end.rip), (1 + 5 * 4, 15, CODE + 14));
    assert!(matches!(halt, Halt::Unsupported(_)), "{halt:?}");
    // `dec %ecx` becomes `shr %ecx`: 5, 2, 1.
    m.mem[CODE as usize + 10..CODE as usize + 12].copy_from_slice(&[0xd1, 0xe9]);
    let (steps, _, end) = run_with(&mut interp, &mut m, s);
    assert_eq!(
        (steps, end.gpr[0]),
        (1 + 3 * 4, 8),
        "the stale chained block ran"
    );
    // And back, in the same interpreter: the slot decoded again holds the new code.
    m.mem[CODE as usize + 10..CODE as usize + 12].copy_from_slice(&[0xff, 0xc9]);
    let (steps, _, end) = run_with(&mut interp, &mut m, s);
    assert_eq!(
        (steps, end.gpr[0]),
        (1 + 5 * 4, 15),
        "the stale chained block ran"
    );
}

/// A data page that passed the checks (and is remembered for the next accesses) is
/// checked again once code runs from it: the next read halts before it happens.
#[test]
fn a_data_page_that_becomes_code_in_a_stretch_halts_the_next_read() {
    // mov (%rbx),%rax (twice: the second from the remembered page) ; jmp *%rdx ;
    // (CODE+8) mov (%rbx),%rax ; hlt
    let code = [
        0x48, 0x8b, 0x03, 0x48, 0x8b, 0x03, 0xff, 0xe2, 0x48, 0x8b, 0x03, 0xf4,
    ];
    let mut m = Machine::new(&code);
    // At DATA+0x200, on the page just read: jmp *%rsi.
    m.mem[DATA as usize + 0x200..DATA as usize + 0x202].copy_from_slice(&[0xff, 0xe6]);
    put(&mut m, DATA + 0x100, 0x1234);
    let mut s = state();
    s.gpr[3] = DATA + 0x100;
    s.gpr[2] = DATA + 0x200;
    s.gpr[6] = CODE + 8;
    let (steps, halt, end) = run(&mut m, s);
    assert_eq!(end.gpr[0], 0x1234);
    assert_eq!((steps, halt, end.rip), (4, Halt::CodePage, CODE + 8));
}
