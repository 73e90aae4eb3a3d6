//! Instruction-level differential tests: each instruction form the interpreter implements
//! (register operands; encodings made with GNU as, the AT&T text beside each) runs on the
//! host CPU from random registers and flags, and in the interpreter from the same state;
//! every general-purpose register and every flag the instruction defines must agree.

use super::harness::CodePage;
use super::tests::Machine;
use super::*;

pub(super) const FORMS: &[(&str, &[u8])] = &[
    ("mov %rcx,%rax", &[0x48, 0x89, 0xc8]),
    ("mov %r9d,%ebx", &[0x44, 0x89, 0xcb]),
    ("mov %si,%r10w", &[0x66, 0x41, 0x89, 0xf2]),
    ("mov %dl,%r11b", &[0x41, 0x88, 0xd3]),
    ("mov %bh,%al", &[0x88, 0xf8]),
    ("mov %ah,%ch", &[0x88, 0xe5]),
    ("mov $0x89abcdef,%edx", &[0xba, 0xef, 0xcd, 0xab, 0x89]),
    (
        "movabs $0x123456789abcdef0,%r12",
        &[0x49, 0xbc, 0xf0, 0xde, 0xbc, 0x9a, 0x78, 0x56, 0x34, 0x12],
    ),
    ("movq $-5,%rsi", &[0x48, 0xc7, 0xc6, 0xfb, 0xff, 0xff, 0xff]),
    ("mov $0x7f,%dil", &[0x40, 0xb7, 0x7f]),
    ("mov $0xfe,%ah", &[0xb4, 0xfe]),
    ("mov $0x8001,%r13w", &[0x66, 0x41, 0xbd, 0x01, 0x80]),
    ("movzbl %cl,%eax", &[0x0f, 0xb6, 0xc1]),
    ("movzbl %ah,%edx", &[0x0f, 0xb6, 0xd4]),
    ("movzwq %r14w,%rdx", &[0x49, 0x0f, 0xb7, 0xd6]),
    ("movsbq %sil,%rax", &[0x48, 0x0f, 0xbe, 0xc6]),
    ("movswl %dx,%r15d", &[0x44, 0x0f, 0xbf, 0xfa]),
    ("movsbw %bl,%cx", &[0x66, 0x0f, 0xbe, 0xcb]),
    ("movslq %r10d,%r11", &[0x4d, 0x63, 0xda]),
    (
        "lea 0x12(%rax,%rcx,8),%rdx",
        &[0x48, 0x8d, 0x54, 0xc8, 0x12],
    ),
    (
        "lea -0x80(%rbx,%rsi,2),%r9d",
        &[0x44, 0x8d, 0x4c, 0x73, 0x80],
    ),
    ("lea (%r12,%r13,1),%r14", &[0x4f, 0x8d, 0x34, 0x2c]),
    (
        "lea 0x7fff(%rdi),%si",
        &[0x66, 0x8d, 0xb7, 0xff, 0x7f, 0x00, 0x00],
    ),
    ("add %rcx,%rax", &[0x48, 0x01, 0xc8]),
    ("add $0x7f,%ebx", &[0x83, 0xc3, 0x7f]),
    ("add $-3,%r8b", &[0x41, 0x80, 0xc0, 0xfd]),
    ("add $0x1234,%ax", &[0x66, 0x05, 0x34, 0x12]),
    ("add $0x12345678,%eax", &[0x05, 0x78, 0x56, 0x34, 0x12]),
    ("adc %r9,%r10", &[0x4d, 0x11, 0xca]),
    ("adc $0x7,%cl", &[0x80, 0xd1, 0x07]),
    ("sbb %esi,%edi", &[0x19, 0xf7]),
    ("sbb $-1,%r11", &[0x49, 0x83, 0xdb, 0xff]),
    ("sub %dx,%bx", &[0x66, 0x29, 0xd3]),
    ("sub $0x40,%r15", &[0x49, 0x83, 0xef, 0x40]),
    ("sub %ah,%bl", &[0x28, 0xe3]),
    ("and %r13,%r12", &[0x4d, 0x21, 0xec]),
    ("and $0xf0,%al", &[0x24, 0xf0]),
    ("and $-0x10,%rcx", &[0x48, 0x83, 0xe1, 0xf0]),
    ("or %ebx,%edx", &[0x09, 0xda]),
    ("or $0x1,%bh", &[0x80, 0xcf, 0x01]),
    ("xor %r15,%r14", &[0x4d, 0x31, 0xfe]),
    ("xor %eax,%eax", &[0x31, 0xc0]),
    ("xor $0x5a,%sil", &[0x40, 0x80, 0xf6, 0x5a]),
    ("cmp %rcx,%rdx", &[0x48, 0x39, 0xca]),
    ("cmp $0x20,%r10", &[0x49, 0x83, 0xfa, 0x20]),
    ("cmp $0x80,%al", &[0x3c, 0x80]),
    ("test %rax,%rax", &[0x48, 0x85, 0xc0]),
    ("test $0x1,%cl", &[0xf6, 0xc1, 0x01]),
    ("test $0x100,%edi", &[0xf7, 0xc7, 0x00, 0x01, 0x00, 0x00]),
    ("test %ah,%dh", &[0x84, 0xe6]),
    ("inc %r8", &[0x49, 0xff, 0xc0]),
    ("inc %ecx", &[0xff, 0xc1]),
    ("dec %dx", &[0x66, 0xff, 0xca]),
    ("dec %bl", &[0xfe, 0xcb]),
    ("neg %rax", &[0x48, 0xf7, 0xd8]),
    ("neg %r9d", &[0x41, 0xf7, 0xd9]),
    ("not %si", &[0x66, 0xf7, 0xd6]),
    ("not %r12", &[0x49, 0xf7, 0xd4]),
    ("shl $0x4,%rax", &[0x48, 0xc1, 0xe0, 0x04]),
    ("shl %cl,%ebx", &[0xd3, 0xe3]),
    ("shl %r8w", &[0x66, 0x41, 0xd1, 0xe0]),
    ("shr $0x1b,%rcx", &[0x48, 0xc1, 0xe9, 0x1b]),
    ("shr %cl,%dl", &[0xd2, 0xea]),
    ("shr %rdi", &[0x48, 0xd1, 0xef]),
    ("sar $0x3f,%r11", &[0x49, 0xc1, 0xfb, 0x3f]),
    ("sar %cl,%ax", &[0x66, 0xd3, 0xf8]),
    ("sar $0x9,%bh", &[0xc0, 0xff, 0x09]),
    ("rol $0x7,%rax", &[0x48, 0xc1, 0xc0, 0x07]),
    ("rol %cl,%r9d", &[0x41, 0xd3, 0xc1]),
    ("ror $0x11,%r13w", &[0x66, 0x41, 0xc1, 0xcd, 0x11]),
    ("ror %cl,%sil", &[0x40, 0xd2, 0xce]),
    ("ror %r14", &[0x49, 0xd1, 0xce]),
    ("imul %rcx,%rax", &[0x48, 0x0f, 0xaf, 0xc1]),
    // SSE/SSE2 (issue 14): moves, logic, compares, lane arithmetic, shuffles.
    ("movups %xmm1,%xmm2", &[0x0f, 0x10, 0xd1]),
    ("movaps %xmm9,%xmm3", &[0x41, 0x0f, 0x28, 0xd9]),
    ("movdqa %xmm4,%xmm12", &[0x66, 0x44, 0x0f, 0x6f, 0xe4]),
    ("movdqu %xmm15,%xmm0", &[0xf3, 0x41, 0x0f, 0x6f, 0xc7]),
    ("movapd %xmm5,%xmm6", &[0x66, 0x0f, 0x28, 0xf5]),
    ("movd %eax,%xmm3", &[0x66, 0x0f, 0x6e, 0xd8]),
    ("movd %r9d,%xmm10", &[0x66, 0x45, 0x0f, 0x6e, 0xd1]),
    ("movq %rcx,%xmm5", &[0x66, 0x48, 0x0f, 0x6e, 0xe9]),
    ("movd %xmm7,%edx", &[0x66, 0x0f, 0x7e, 0xfa]),
    ("movq %xmm11,%r8", &[0x66, 0x4d, 0x0f, 0x7e, 0xd8]),
    ("movq %xmm2,%xmm9", &[0xf3, 0x44, 0x0f, 0x7e, 0xca]),
    ("pxor %xmm1,%xmm1", &[0x66, 0x0f, 0xef, 0xc9]),
    ("pxor %xmm3,%xmm4", &[0x66, 0x0f, 0xef, 0xe3]),
    ("por %xmm8,%xmm2", &[0x66, 0x41, 0x0f, 0xeb, 0xd0]),
    ("pand %xmm5,%xmm6", &[0x66, 0x0f, 0xdb, 0xf5]),
    ("pandn %xmm7,%xmm1", &[0x66, 0x0f, 0xdf, 0xcf]),
    ("xorps %xmm2,%xmm3", &[0x0f, 0x57, 0xda]),
    ("andpd %xmm4,%xmm5", &[0x66, 0x0f, 0x54, 0xec]),
    ("pcmpeqb %xmm1,%xmm2", &[0x66, 0x0f, 0x74, 0xd1]),
    ("pcmpeqw %xmm3,%xmm4", &[0x66, 0x0f, 0x75, 0xe3]),
    ("pcmpeqd %xmm5,%xmm14", &[0x66, 0x44, 0x0f, 0x76, 0xf5]),
    ("pcmpgtb %xmm6,%xmm7", &[0x66, 0x0f, 0x64, 0xfe]),
    ("pcmpgtd %xmm8,%xmm9", &[0x66, 0x45, 0x0f, 0x66, 0xc8]),
    ("pminub %xmm10,%xmm11", &[0x66, 0x45, 0x0f, 0xda, 0xda]),
    ("pmaxub %xmm12,%xmm13", &[0x66, 0x45, 0x0f, 0xde, 0xec]),
    ("paddb %xmm1,%xmm2", &[0x66, 0x0f, 0xfc, 0xd1]),
    ("paddq %xmm3,%xmm4", &[0x66, 0x0f, 0xd4, 0xe3]),
    ("pmuludq %xmm3,%xmm4", &[0x66, 0x0f, 0xf4, 0xe3]),
    ("pmuludq %xmm9,%xmm2", &[0x66, 0x41, 0x0f, 0xf4, 0xd1]),
    ("psubw %xmm5,%xmm6", &[0x66, 0x0f, 0xf9, 0xf5]),
    ("psubd %xmm7,%xmm8", &[0x66, 0x44, 0x0f, 0xfa, 0xc7]),
    ("pmovmskb %xmm3,%eax", &[0x66, 0x0f, 0xd7, 0xc3]),
    ("pmovmskb %xmm12,%r10d", &[0x66, 0x45, 0x0f, 0xd7, 0xd4]),
    ("punpcklbw %xmm1,%xmm2", &[0x66, 0x0f, 0x60, 0xd1]),
    ("punpcklwd %xmm3,%xmm4", &[0x66, 0x0f, 0x61, 0xe3]),
    ("punpckldq %xmm5,%xmm6", &[0x66, 0x0f, 0x62, 0xf5]),
    ("punpcklqdq %xmm7,%xmm8", &[0x66, 0x44, 0x0f, 0x6c, 0xc7]),
    ("punpckhbw %xmm1,%xmm2", &[0x66, 0x0f, 0x68, 0xd1]),
    ("punpckhwd %xmm3,%xmm4", &[0x66, 0x0f, 0x69, 0xe3]),
    ("punpckhdq %xmm5,%xmm6", &[0x66, 0x0f, 0x6a, 0xf5]),
    ("punpckhqdq %xmm7,%xmm8", &[0x66, 0x44, 0x0f, 0x6d, 0xc7]),
    ("packuswb %xmm4,%xmm5", &[0x66, 0x0f, 0x67, 0xec]),
    ("pminud %xmm1,%xmm2", &[0x66, 0x0f, 0x38, 0x3b, 0xd1]),
    (
        "palignr $0x5,%xmm1,%xmm2",
        &[0x66, 0x0f, 0x3a, 0x0f, 0xd1, 0x05],
    ),
    (
        "palignr $0x0,%xmm3,%xmm4",
        &[0x66, 0x0f, 0x3a, 0x0f, 0xe3, 0x00],
    ),
    (
        "palignr $0x1f,%xmm9,%xmm10",
        &[0x66, 0x45, 0x0f, 0x3a, 0x0f, 0xd1, 0x1f],
    ),
    (
        "palignr $0x13,%xmm5,%xmm6",
        &[0x66, 0x0f, 0x3a, 0x0f, 0xf5, 0x13],
    ),
    ("pshufd $0x1b,%xmm1,%xmm2", &[0x66, 0x0f, 0x70, 0xd1, 0x1b]),
    (
        "pshufd $0x0,%xmm9,%xmm3",
        &[0x66, 0x41, 0x0f, 0x70, 0xd9, 0x00],
    ),
    ("psrlq $0x7,%xmm1", &[0x66, 0x0f, 0x73, 0xd1, 0x07]),
    ("psrlq $0x40,%xmm2", &[0x66, 0x0f, 0x73, 0xd2, 0x40]),
    ("psllq $0x21,%xmm3", &[0x66, 0x0f, 0x73, 0xf3, 0x21]),
    ("psrld $0x5,%xmm9", &[0x66, 0x41, 0x0f, 0x72, 0xd1, 0x05]),
    ("pslld $0x1f,%xmm4", &[0x66, 0x0f, 0x72, 0xf4, 0x1f]),
    ("psrlw $0x3,%xmm5", &[0x66, 0x0f, 0x71, 0xd5, 0x03]),
    ("psllw $0x11,%xmm6", &[0x66, 0x0f, 0x71, 0xf6, 0x11]),
    ("pslldq $0x3,%xmm7", &[0x66, 0x0f, 0x73, 0xff, 0x03]),
    ("psrldq $0x9,%xmm12", &[0x66, 0x41, 0x0f, 0x73, 0xdc, 0x09]),
    ("psrldq $0x10,%xmm0", &[0x66, 0x0f, 0x73, 0xd8, 0x10]),
    // Bit scans and counts (issue 14), run as the host runs them.
    ("bsf %rcx,%rax", &[0x48, 0x0f, 0xbc, 0xc1]),
    ("bsr %edx,%ebx", &[0x0f, 0xbd, 0xda]),
    ("tzcnt %r9,%r10", &[0xf3, 0x4d, 0x0f, 0xbc, 0xd1]),
    ("lzcnt %esi,%edi", &[0xf3, 0x0f, 0xbd, 0xfe]),
    ("popcnt %rax,%rcx", &[0xf3, 0x48, 0x0f, 0xb8, 0xc8]),
    ("bsf %cx,%dx", &[0x66, 0x0f, 0xbc, 0xd1]),
    // One-operand multiplies (issue 14): RDX:RAX, EDX:EAX, DX:AX and AX.
    ("mul %rcx", &[0x48, 0xf7, 0xe1]),
    ("imul %ebx", &[0xf7, 0xeb]),
    ("mul %cl", &[0xf6, 0xe1]),
    ("imul %si", &[0x66, 0xf7, 0xee]),
    ("imul %r9", &[0x49, 0xf7, 0xe9]),
    ("imul %r8d,%ebx", &[0x41, 0x0f, 0xaf, 0xd8]),
    (
        "imul $0x51eb851f,%rax,%rcx",
        &[0x48, 0x69, 0xc8, 0x1f, 0x85, 0xeb, 0x51],
    ),
    ("imul $0x64,%ecx,%ecx", &[0x6b, 0xc9, 0x64]),
    ("imul $-7,%dx,%si", &[0x66, 0x6b, 0xf2, 0xf9]),
    ("cmove %rcx,%rax", &[0x48, 0x0f, 0x44, 0xc1]),
    ("cmovne %r9d,%ebx", &[0x41, 0x0f, 0x45, 0xd9]),
    ("cmovb %si,%di", &[0x66, 0x0f, 0x42, 0xfe]),
    ("cmova %r10,%r11", &[0x4d, 0x0f, 0x47, 0xda]),
    ("cmovl %eax,%edx", &[0x0f, 0x4c, 0xd0]),
    ("cmovge %r12,%r13", &[0x4d, 0x0f, 0x4d, 0xec]),
    ("cmovs %ecx,%r14d", &[0x44, 0x0f, 0x48, 0xf1]),
    ("cmovp %rbx,%rax", &[0x48, 0x0f, 0x4a, 0xc3]),
    ("sete %al", &[0x0f, 0x94, 0xc0]),
    ("setne %bh", &[0x0f, 0x95, 0xc7]),
    ("setb %r8b", &[0x41, 0x0f, 0x92, 0xc0]),
    ("setg %dil", &[0x40, 0x0f, 0x9f, 0xc7]),
    ("seto %cl", &[0x0f, 0x90, 0xc1]),
    ("xchg %rcx,%rdx", &[0x48, 0x87, 0xca]),
    ("xchg %eax,%r9d", &[0x41, 0x91]),
    ("xchg %bl,%ah", &[0x86, 0xdc]),
    ("xchg %ax,%ax", &[0x66, 0x90]),
    ("bt %rcx,%rax", &[0x48, 0x0f, 0xa3, 0xc8]),
    ("bt $0x21,%rdx", &[0x48, 0x0f, 0xba, 0xe2, 0x21]),
    ("bt %esi,%edi", &[0x0f, 0xa3, 0xf7]),
    ("bt $0x3,%bx", &[0x66, 0x0f, 0xba, 0xe3, 0x03]),
    ("cbtw", &[0x66, 0x98]),
    ("cwtl", &[0x98]),
    ("cltq", &[0x48, 0x98]),
    ("cwtd", &[0x66, 0x99]),
    ("cltd", &[0x99]),
    ("cqto", &[0x48, 0x99]),
    ("nop", &[0x90]),
    ("nopw 0x0(%rax,%rax,1)", &[0x66, 0x0f, 0x1f, 0x04, 0x00]),
    ("endbr64", &[0xf3, 0x0f, 0x1e, 0xfa]),
    ("mfence", &[0x0f, 0xae, 0xf0]),
    ("bts %rcx,%rax", &[0x48, 0x0f, 0xab, 0xc8]),
    ("btr %edx,%ebx", &[0x0f, 0xb3, 0xd3]),
    ("btc %si,%di", &[0x66, 0x0f, 0xbb, 0xf7]),
    ("bts $0x3f,%rdx", &[0x48, 0x0f, 0xba, 0xea, 0x3f]),
    ("btr $0x5,%ecx", &[0x0f, 0xba, 0xf1, 0x05]),
    ("btc $0x11,%r9w", &[0x66, 0x41, 0x0f, 0xba, 0xf9, 0x11]),
    ("bswap %eax", &[0x0f, 0xc8]),
    ("bswap %r12", &[0x49, 0x0f, 0xcc]),
    ("lfence", &[0x0f, 0xae, 0xe8]),
    ("sfence", &[0x0f, 0xae, 0xf8]),
    // From the review (issue 6): count masking and counts at/over the operand size,
    // self-XCHG zero-extension, high-byte registers, every condition code.
    ("rol $0x8,%al", &[0xc0, 0xc0, 0x08]),
    ("shl $0x8,%al", &[0xc0, 0xe0, 0x08]),
    ("shl $0x9,%al", &[0xc0, 0xe0, 0x09]),
    ("shr $0x10,%ax", &[0x66, 0xc1, 0xe8, 0x10]),
    ("sar $0x1f,%al", &[0xc0, 0xf8, 0x1f]),
    ("rol %cl,%ax", &[0x66, 0xd3, 0xc0]),
    ("ror $0x9,%al", &[0xc0, 0xc8, 0x09]),
    ("rol $0x20,%eax", &[0xc1, 0xc0, 0x20]),
    ("shl $0x40,%rax", &[0x48, 0xc1, 0xe0, 0x40]),
    ("shr $0x0,%eax", &[0xc1, 0xe8, 0x00]),
    ("shl $0x21,%rax", &[0x48, 0xc1, 0xe0, 0x21]),
    ("xchg %eax,%eax", &[0x87, 0xc0]),
    ("xchg %rax,%rax", &[0x48, 0x87, 0xc0]),
    ("xchg %r8d,%r8d", &[0x45, 0x87, 0xc0]),
    ("imul %cx,%dx", &[0x66, 0x0f, 0xaf, 0xd1]),
    ("imul $-1,%r8,%r8", &[0x4d, 0x6b, 0xc0, 0xff]),
    ("imul $0x7fff,%ax,%ax", &[0x66, 0x69, 0xc0, 0xff, 0x7f]),
    ("neg %al", &[0xf6, 0xd8]),
    ("neg %ah", &[0xf6, 0xdc]),
    ("inc %ah", &[0xfe, 0xc4]),
    ("dec %bpl", &[0x40, 0xfe, 0xcd]),
    ("adc %ah,%ch", &[0x10, 0xe5]),
    ("sbb %bh,%dl", &[0x18, 0xfa]),
    ("movzbw %ah,%si", &[0x66, 0x0f, 0xb6, 0xf4]),
    ("movsbl %ah,%edi", &[0x0f, 0xbe, 0xfc]),
    ("movslq %eax,%rcx", &[0x48, 0x63, 0xc8]),
    ("movsxd %eax,%ecx", &[0x63, 0xc8]),
    ("cmovo %ax,%bx", &[0x66, 0x0f, 0x40, 0xd8]),
    ("cmovno %ecx,%edx", &[0x0f, 0x41, 0xd1]),
    ("cmovbe %rsi,%rdi", &[0x48, 0x0f, 0x46, 0xfe]),
    ("cmovae %r8d,%r9d", &[0x45, 0x0f, 0x43, 0xc8]),
    ("cmovns %r10,%r11", &[0x4d, 0x0f, 0x49, 0xda]),
    ("cmovnp %ax,%cx", &[0x66, 0x0f, 0x4b, 0xc8]),
    ("cmovle %edx,%esi", &[0x0f, 0x4e, 0xf2]),
    ("cmovg %rdi,%rax", &[0x48, 0x0f, 0x4f, 0xc7]),
    ("cmove %eax,%eax", &[0x0f, 0x44, 0xc0]),
    ("setno %al", &[0x0f, 0x91, 0xc0]),
    ("setae %cl", &[0x0f, 0x93, 0xc1]),
    ("setbe %dl", &[0x0f, 0x96, 0xc2]),
    ("seta %bl", &[0x0f, 0x97, 0xc3]),
    ("sets %bh", &[0x0f, 0x98, 0xc7]),
    ("setns %bpl", &[0x40, 0x0f, 0x99, 0xc5]),
    ("setp %sil", &[0x40, 0x0f, 0x9a, 0xc6]),
    ("setnp %ah", &[0x0f, 0x9b, 0xc4]),
    ("setl %r9b", &[0x41, 0x0f, 0x9c, 0xc1]),
    ("setge %r10b", &[0x41, 0x0f, 0x9d, 0xc2]),
    ("setle %ch", &[0x0f, 0x9e, 0xc5]),
    ("bt %cx,%dx", &[0x66, 0x0f, 0xa3, 0xca]),
    ("bt $0x45,%eax", &[0x0f, 0xba, 0xe0, 0x45]),
    ("xchg %ah,%al", &[0x86, 0xe0]),
    ("mov %ah,%ah", &[0x88, 0xe4]),
    ("test %bh,%ch", &[0x84, 0xfd]),
];

/// Branches and stack operations, run on the host as a balanced sequence (the stack is the
/// host's own; RSP is not compared) and stepped through in the interpreter.
pub(super) const SEQUENCES: &[(&str, &[u8])] = &[
    ("push %rbx; pop %rdx", &[0x53, 0x5a]),
    ("pushq $-5; pop %rsi", &[0x6a, 0xfb, 0x5e]),
    (
        "pushq $0x12345678; pop %r9",
        &[0x68, 0x78, 0x56, 0x34, 0x12, 0x41, 0x59],
    ),
    (
        "push %rbp; mov %rsp,%rbp; push %rax; leave",
        &[0x55, 0x48, 0x89, 0xe5, 0x50, 0xc9],
    ),
    ("jz 1f; inc %ecx; 1:", &[0x74, 0x02, 0xff, 0xc1]),
    ("jnz 1f; inc %ecx; 1:", &[0x75, 0x02, 0xff, 0xc1]),
    ("jb 1f; inc %ecx; 1:", &[0x72, 0x02, 0xff, 0xc1]),
    ("jbe 1f; inc %ecx; 1:", &[0x76, 0x02, 0xff, 0xc1]),
    ("jl 1f; inc %ecx; 1:", &[0x7c, 0x02, 0xff, 0xc1]),
    ("jle 1f; inc %ecx; 1:", &[0x7e, 0x02, 0xff, 0xc1]),
    ("jg 1f; inc %ecx; 1:", &[0x7f, 0x02, 0xff, 0xc1]),
    ("jae 1f; inc %ecx; 1:", &[0x73, 0x02, 0xff, 0xc1]),
    ("ja 1f; inc %ecx; 1:", &[0x77, 0x02, 0xff, 0xc1]),
    ("jge 1f; inc %ecx; 1:", &[0x7d, 0x02, 0xff, 0xc1]),
    ("js 1f; inc %ecx; 1:", &[0x78, 0x02, 0xff, 0xc1]),
    ("jns 1f; inc %ecx; 1:", &[0x79, 0x02, 0xff, 0xc1]),
    ("jo 1f; inc %ecx; 1:", &[0x70, 0x02, 0xff, 0xc1]),
    ("jno 1f; inc %ecx; 1:", &[0x71, 0x02, 0xff, 0xc1]),
    ("jp 1f; inc %ecx; 1:", &[0x7a, 0x02, 0xff, 0xc1]),
    ("jnp 1f; inc %ecx; 1:", &[0x7b, 0x02, 0xff, 0xc1]),
    (
        "jz.d32 1f; inc %ecx; 1:",
        &[0x0f, 0x84, 0x02, 0x00, 0x00, 0x00, 0xff, 0xc1],
    ),
    ("jmp 1f; inc %ecx; 1:", &[0xeb, 0x02, 0xff, 0xc1]),
    (
        "call 1f; jmp 2f; 1: inc %ecx; ret; 2:",
        &[0xe8, 0x02, 0x00, 0x00, 0x00, 0xeb, 0x03, 0xff, 0xc1, 0xc3],
    ),
    (
        "lea 1f(%rip),%rax; jmp *%rax; inc %ecx; 1: xor %eax,%eax",
        &[
            0x48, 0x8d, 0x05, 0x04, 0x00, 0x00, 0x00, 0xff, 0xe0, 0xff, 0xc1, 0x31, 0xc0,
        ],
    ),
    (
        "lea 1f(%rip),%rax; call *%rax; jmp 2f; 1: inc %ecx; ret; 2: xor %eax,%eax",
        &[
            0x48, 0x8d, 0x05, 0x04, 0x00, 0x00, 0x00, 0xff, 0xd0, 0xeb, 0x03, 0xff, 0xc1, 0xc3,
            0x31, 0xc0,
        ],
    ),
];

/// Steps until RIP reaches `end` (the end of the code under test); the steps taken.
pub(super) fn run_to(session: &mut Session<'_>, end: u64, text: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    while session.state().rip != end {
        assert!(steps.len() < 64, "{text}: did not reach the end");
        match session.step() {
            Ok(step) => steps.push(step),
            Err(h) => panic!(
                "{text}: the interpreter halted: {h:?} at {:#x}",
                session.state().rip
            ),
        }
    }
    steps
}

/// How many of `steps` the fast path must have run: those with a fast form that left no
/// flag undefined (a form whose undefined flags need the liveness proof goes through the
/// generic path). `code` is at `tests::CODE`.
fn expected_fast(code: &[u8], steps: &[Step]) -> u64 {
    steps
        .iter()
        .filter(|s| {
            let at = (s.ip - tests::CODE) as usize;
            let insn = Decoder::with_ip(64, &code[at..], s.ip, DecoderOptions::NONE).decode();
            s.undefined == 0 && fast::Fast::new(&insn, &code[at..at + insn.len()], false).is_some()
        })
        .count() as u64
}

#[test]
fn every_register_form_matches_the_cpu() {
    let page = CodePage::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for (text, code) in FORMS.iter().chain(SEQUENCES) {
        for round in 0..200 {
            let mut regs = [0u64; 16];
            for r in regs.iter_mut() {
                *r = match next() % 4 {
                    0 => next() & 0xff,
                    1 => next() | (1 << 63),
                    _ => next(),
                };
            }
            if round % 5 == 0 {
                regs[1] = next() % 70; // CL: small and edge shift counts
            }
            let flags_in = (next() & STATUS) | 2;
            let mut native_regs = regs;
            let mut native_flags = flags_in;
            let xmm_in: [u128; 16] = std::array::from_fn(|i| {
                // Equal lanes now and then, so compares see both outcomes.
                let v = u128::from(next()) | (u128::from(next()) << 64);
                if i % 3 == 0 {
                    v & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff
                } else {
                    v
                }
            });
            let mut native_xmm = xmm_in;
            page.run_xmm(code, &mut native_regs, &mut native_flags, &mut native_xmm);

            // The interpreter: the same instruction, then `cmp %eax,%eax` so that flags
            // it leaves undefined are provably dead.
            let mut bytes = code.to_vec();
            bytes.extend([0x39, 0xc0, 0xf4]);
            let mut m = Machine::new(&bytes);
            m.xmm = xmm_in;
            let mut s = tests::state();
            let sp = s.gpr[RSP];
            s.gpr = regs;
            s.gpr[RSP] = sp;
            s.rflags = flags_in;
            let mut interp = Interp::default();
            let mut session = interp.session(&mut m, s);
            let steps = run_to(&mut session, tests::CODE + code.len() as u64, text);
            let undefined = steps.iter().fold(0, |u, s| u | s.undefined);
            let after = *session.state();
            let after_xmm = session.xmm_to_write_back().copied().unwrap_or(xmm_in);
            drop(session);
            assert_eq!(
                interp.fast_steps(),
                expected_fast(code, &steps),
                "{text}: instructions the fast path ran"
            );
            assert_eq!(
                after_xmm, native_xmm,
                "{text}: XMM registers from {xmm_in:x?}"
            );
            // Forms whose undefined flags come from the host leave none undefined: every
            // flag is compared below.
            let insn = Decoder::with_ip(64, code, 0, DecoderOptions::NONE).decode();
            let reg_dst = insn.op0_kind() == OpKind::Register;
            if reg_dst && (host_form(&insn) || imm_form(&insn).is_some()) {
                assert_eq!(undefined, 0, "{text}: undefined flags left");
            }
            for i in (0..16).filter(|&i| i != RSP) {
                assert_eq!(
                    after.gpr[i], native_regs[i],
                    "{text}: register {i} from {regs:x?}, flags {flags_in:#x}"
                );
            }
            let defined = STATUS & !undefined;
            assert_eq!(
                after.rflags & defined,
                native_flags & defined,
                "{text}: flags from {regs:x?}, flags {flags_in:#x}"
            );
        }
    }
}

/// Memory-operand forms (encodings made with GNU as), natively against a buffer mapped at
/// the fake machine's data address and in the interpreter against the same bytes there.
pub(super) const MEMORY_FORMS: &[(&str, &[u8])] = &[
    ("mov (%rbx),%rax", &[0x48, 0x8b, 0x03]),
    ("mov 0x8(%rbx,%rcx,8),%edx", &[0x8b, 0x54, 0xcb, 0x08]),
    ("mov %r9,(%rbx)", &[0x4c, 0x89, 0x0b]),
    ("mov %si,0x3(%rbx)", &[0x66, 0x89, 0x73, 0x03]),
    ("mov %ah,0x7(%rbx)", &[0x88, 0x63, 0x07]),
    (
        "movq $-2,0x10(%rbx)",
        &[0x48, 0xc7, 0x43, 0x10, 0xfe, 0xff, 0xff, 0xff],
    ),
    (
        "movl $0x12345678,0x4(%rbx)",
        &[0xc7, 0x43, 0x04, 0x78, 0x56, 0x34, 0x12],
    ),
    ("movb $0x80,0x5(%rbx)", &[0xc6, 0x43, 0x05, 0x80]),
    ("movzbl 0x1(%rbx),%eax", &[0x0f, 0xb6, 0x43, 0x01]),
    ("movzwq 0x2(%rbx),%r8", &[0x4c, 0x0f, 0xb7, 0x43, 0x02]),
    ("movsbq 0x3(%rbx),%rdx", &[0x48, 0x0f, 0xbe, 0x53, 0x03]),
    ("movslq 0x4(%rbx),%r10", &[0x4c, 0x63, 0x53, 0x04]),
    ("add (%rbx),%rax", &[0x48, 0x03, 0x03]),
    ("add %rcx,0x8(%rbx)", &[0x48, 0x01, 0x4b, 0x08]),
    ("add $0x7f,0x10(%rbx)", &[0x83, 0x43, 0x10, 0x7f]),
    ("addl $-1,0xc(%rbx)", &[0x83, 0x43, 0x0c, 0xff]),
    ("adc 0x18(%rbx),%r11d", &[0x44, 0x13, 0x5b, 0x18]),
    ("sub %dl,0x9(%rbx)", &[0x28, 0x53, 0x09]),
    ("sbb $0x3,0x6(%rbx)", &[0x83, 0x5b, 0x06, 0x03]),
    ("and 0x20(%rbx),%rsi", &[0x48, 0x23, 0x73, 0x20]),
    ("or %edi,0x24(%rbx)", &[0x09, 0x7b, 0x24]),
    ("xor $0x55,0x1(%rbx)", &[0x83, 0x73, 0x01, 0x55]),
    ("cmp (%rbx),%rcx", &[0x48, 0x3b, 0x0b]),
    ("cmpq $0x10,0x8(%rbx)", &[0x48, 0x83, 0x7b, 0x08, 0x10]),
    ("cmpb $0x0,0x7(%rbx)", &[0x80, 0x7b, 0x07, 0x00]),
    ("test %eax,0x4(%rbx)", &[0x85, 0x43, 0x04]),
    ("testb $0x1,0x3(%rbx)", &[0xf6, 0x43, 0x03, 0x01]),
    ("incq 0x10(%rbx)", &[0x48, 0xff, 0x43, 0x10]),
    ("decl 0x14(%rbx)", &[0xff, 0x4b, 0x14]),
    ("negw 0x2(%rbx)", &[0x66, 0xf7, 0x5b, 0x02]),
    ("notq 0x8(%rbx)", &[0x48, 0xf7, 0x53, 0x08]),
    ("shlq $0x3,(%rbx)", &[0x48, 0xc1, 0x23, 0x03]),
    ("shrl %cl,0x4(%rbx)", &[0xd3, 0x6b, 0x04]),
    ("sarw 0x6(%rbx)", &[0x66, 0xd1, 0x7b, 0x06]),
    ("rolb $0x5,0x1(%rbx)", &[0xc0, 0x43, 0x01, 0x05]),
    ("rorq %cl,0x18(%rbx)", &[0x48, 0xd3, 0x4b, 0x18]),
    ("imul 0x8(%rbx),%rax", &[0x48, 0x0f, 0xaf, 0x43, 0x08]),
    ("imul $0x11,0x4(%rbx),%edx", &[0x6b, 0x53, 0x04, 0x11]),
    ("cmove 0x8(%rbx),%rcx", &[0x48, 0x0f, 0x44, 0x4b, 0x08]),
    ("cmovne 0x4(%rbx),%esi", &[0x0f, 0x45, 0x73, 0x04]),
    ("setb 0x3(%rbx)", &[0x0f, 0x92, 0x43, 0x03]),
    ("sete 0xf(%rbx)", &[0x0f, 0x94, 0x43, 0x0f]),
    ("mov 0x3(%rbx),%rax", &[0x48, 0x8b, 0x43, 0x03]),
    ("mulq 0x8(%rbx)", &[0x48, 0xf7, 0x63, 0x08]),
    ("bsr 0x8(%rbx),%rax", &[0x48, 0x0f, 0xbd, 0x43, 0x08]),
    // The logic group with a memory destination: AF from the host (compared here).
    ("testb $0x2,0x9(%rbx)", &[0xf6, 0x43, 0x09, 0x02]),
    ("test %rax,0x10(%rbx)", &[0x48, 0x85, 0x43, 0x10]),
    ("and %eax,0x4(%rbx)", &[0x21, 0x43, 0x04]),
    (
        "orw $0x101,0x6(%rbx)",
        &[0x66, 0x81, 0x4b, 0x06, 0x01, 0x01],
    ),
    ("xor %cl,0x3(%rbx)", &[0x30, 0x4b, 0x03]),
    // The software prefetches: hints, nothing changes.
    ("prefetchnta 0x40(%rbx)", &[0x0f, 0x18, 0x43, 0x40]),
    ("prefetcht0 0x40(%rbx)", &[0x0f, 0x18, 0x4b, 0x40]),
    ("prefetcht1 (%rbx,%rcx,8)", &[0x0f, 0x18, 0x14, 0xcb]),
    ("prefetcht2 -0x80(%rbx)", &[0x0f, 0x18, 0x5b, 0x80]),
    (
        "prefetchw 0x100(%rbx)",
        &[0x0f, 0x0d, 0x8b, 0x00, 0x01, 0x00, 0x00],
    ),
    // SSE/SSE2 (issue 14): aligned, unaligned and page-crossing loads and stores.
    ("movups 0x3(%rbx),%xmm1", &[0x0f, 0x10, 0x4b, 0x03]),
    ("movups %xmm2,0x5(%rbx)", &[0x0f, 0x11, 0x53, 0x05]),
    ("movaps 0x20(%rbx),%xmm3", &[0x0f, 0x28, 0x5b, 0x20]),
    ("movdqa %xmm4,0x30(%rbx)", &[0x66, 0x0f, 0x7f, 0x63, 0x30]),
    (
        "movdqu 0xff9(%rbx),%xmm5",
        &[0xf3, 0x0f, 0x6f, 0xab, 0xf9, 0x0f, 0x00, 0x00],
    ),
    ("movq 0x8(%rbx),%xmm6", &[0xf3, 0x0f, 0x7e, 0x73, 0x08]),
    ("movq %xmm7,0x18(%rbx)", &[0x66, 0x0f, 0xd6, 0x7b, 0x18]),
    (
        "movd 0x4(%rbx),%xmm8",
        &[0x66, 0x44, 0x0f, 0x6e, 0x43, 0x04],
    ),
    (
        "movd %xmm9,0xc(%rbx)",
        &[0x66, 0x44, 0x0f, 0x7e, 0x4b, 0x0c],
    ),
    ("movlpd 0x10(%rbx),%xmm1", &[0x66, 0x0f, 0x12, 0x4b, 0x10]),
    ("movhpd 0x18(%rbx),%xmm2", &[0x66, 0x0f, 0x16, 0x53, 0x18]),
    ("movlps %xmm3,0x28(%rbx)", &[0x0f, 0x13, 0x5b, 0x28]),
    ("movhps %xmm4,0x38(%rbx)", &[0x0f, 0x17, 0x63, 0x38]),
    ("pcmpeqb 0x40(%rbx),%xmm0", &[0x66, 0x0f, 0x74, 0x43, 0x40]),
    ("pxor 0x50(%rbx),%xmm1", &[0x66, 0x0f, 0xef, 0x4b, 0x50]),
    ("pminub 0x60(%rbx),%xmm2", &[0x66, 0x0f, 0xda, 0x53, 0x60]),
    (
        "pminud 0x20(%rbx),%xmm3",
        &[0x66, 0x0f, 0x38, 0x3b, 0x5b, 0x20],
    ),
    ("packuswb 0x30(%rbx),%xmm6", &[0x66, 0x0f, 0x67, 0x73, 0x30]),
    (
        "palignr $0x9,0x40(%rbx),%xmm7",
        &[0x66, 0x0f, 0x3a, 0x0f, 0x7b, 0x40, 0x09],
    ),
    ("movntdq %xmm4,0x30(%rbx)", &[0x66, 0x0f, 0xe7, 0x63, 0x30]),
    ("movntps %xmm2,0x40(%rbx)", &[0x0f, 0x2b, 0x53, 0x40]),
    ("movntpd %xmm3,0x50(%rbx)", &[0x66, 0x0f, 0x2b, 0x5b, 0x50]),
    (
        "add %rax,0x3ffd(%rbx)",
        &[0x48, 0x01, 0x83, 0xfd, 0x3f, 0x00, 0x00],
    ),
];

/// Like [`SEQUENCES`], with memory operands (run by the memory-form test).
pub(super) const MEMORY_SEQUENCES: &[(&str, &[u8])] = &[
    ("pushq 0x8(%rbx); pop %rax", &[0xff, 0x73, 0x08, 0x58]),
    ("push %rcx; pop %r8", &[0x51, 0x41, 0x58]),
    (
        "lea 1f(%rip),%rax; mov %rax,0x10(%rbx); call *0x10(%rbx); jmp 2f; 1: inc %ecx; ret; 2: xor %eax,%eax; mov %rax,0x10(%rbx)",
        &[
            0x48, 0x8d, 0x05, 0x09, 0x00, 0x00, 0x00, 0x48, 0x89, 0x43, 0x10, 0xff, 0x53, 0x10,
            0xeb, 0x03, 0xff, 0xc1, 0xc3, 0x31, 0xc0, 0x48, 0x89, 0x43, 0x10,
        ],
    ),
    (
        "lea 1f(%rip),%rax; mov %rax,0x18(%rbx); jmp *0x18(%rbx); inc %ecx; 1: xor %eax,%eax; mov %rax,0x18(%rbx)",
        &[
            0x48, 0x8d, 0x05, 0x09, 0x00, 0x00, 0x00, 0x48, 0x89, 0x43, 0x18, 0xff, 0x63, 0x18,
            0xff, 0xc1, 0x31, 0xc0, 0x48, 0x89, 0x43, 0x18,
        ],
    ),
    (
        "push %rbp; mov %rsp,%rbp; push 0x8(%rbx); pop %rdx; leave",
        &[0x55, 0x48, 0x89, 0xe5, 0xff, 0x73, 0x08, 0x5a, 0xc9],
    ),
];

/// Bytes of data both sides see at `tests::DATA`.
pub(super) const DATA_LEN: usize = 0x1_0000;

/// Held while a test has the data buffer mapped at `tests::DATA` (one at a time).
static DATA_MAPPED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The host's data buffer at `tests::DATA` (the fake machine's data address), mapped
/// while this lives; one test at a time has it.
pub(super) struct DataBuffer {
    p: *mut libc::c_void,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl DataBuffer {
    pub(super) fn map() -> DataBuffer {
        let one = DATA_MAPPED.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: a new private anonymous mapping at a fixed low address, refused (not
        // replaced) if anything is mapped there already.
        let p = unsafe {
            libc::mmap(
                tests::DATA as *mut libc::c_void,
                DATA_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(
            p as u64,
            tests::DATA,
            "cannot map the data buffer at {:#x}",
            tests::DATA
        );
        DataBuffer { p, _one: one }
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is DATA_LEN bytes long and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.p.cast::<u8>(), DATA_LEN) }
    }
}

impl Drop for DataBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map(), no longer referenced (bytes() borrows self).
        unsafe { libc::munmap(self.p, DATA_LEN) };
    }
}

#[test]
fn every_memory_form_matches_the_cpu() {
    let mut buffer = DataBuffer::map();
    let page = CodePage::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut data = vec![0u8; DATA_LEN];
    for (text, code) in MEMORY_FORMS.iter().chain(MEMORY_SEQUENCES) {
        for _ in 0..50 {
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            let mut regs = [0u64; 16];
            for r in regs.iter_mut() {
                *r = next();
            }
            regs[3] = tests::DATA + 0x1000; // the base
            regs[1] = next() % 16; // the index, and shift counts
            let flags_in = (next() & STATUS) | 2;

            buffer.bytes().copy_from_slice(&data);
            let mut native_regs = regs;
            let mut native_flags = flags_in;
            let xmm_in: [u128; 16] =
                std::array::from_fn(|_| u128::from(next()) | (u128::from(next()) << 64));
            let mut native_xmm = xmm_in;
            page.run_xmm(code, &mut native_regs, &mut native_flags, &mut native_xmm);

            let mut bytes = code.to_vec();
            bytes.extend([0x39, 0xc0, 0xf4]); // cmp %eax,%eax ; hlt
            let mut m = Machine::new(&bytes);
            m.xmm = xmm_in;
            let at = tests::DATA as usize;
            m.mem[at..at + DATA_LEN].copy_from_slice(&data);
            let mut s = tests::state();
            let sp = s.gpr[RSP];
            s.gpr = regs;
            s.gpr[RSP] = sp;
            s.rflags = flags_in;
            let mut interp = Interp::default();
            let mut session = interp.session(&mut m, s);
            let steps = run_to(&mut session, tests::CODE + code.len() as u64, text);
            let undefined = steps.iter().fold(0, |u, s| u | s.undefined);
            let after = *session.state();
            let after_xmm = session.xmm_to_write_back().copied().unwrap_or(xmm_in);
            drop(session);
            assert_eq!(
                interp.fast_steps(),
                expected_fast(code, &steps),
                "{text}: instructions the fast path ran"
            );
            if ["test", "and", "or", "xor"]
                .iter()
                .any(|m| text.starts_with(m))
            {
                assert_eq!(undefined, 0, "{text}: undefined flags left");
            }
            assert_eq!(after_xmm, native_xmm, "{text}: XMM registers");
            for i in (0..16).filter(|&i| i != RSP) {
                assert_eq!(after.gpr[i], native_regs[i], "{text}: register {i}");
            }
            let defined = STATUS & !undefined;
            assert_eq!(
                after.rflags & defined,
                native_flags & defined,
                "{text}: flags, from {flags_in:#x}"
            );
            assert!(
                m.mem[at..at + DATA_LEN] == buffer.bytes()[..],
                "{text}: memory differs"
            );
        }
    }
}

/// The fuzz target's entry point agrees on every form above, refuses what the interpreter
/// leaves to the CPU, and skips what it must not run on the host.
#[test]
fn the_differential_entry_point_agrees_refuses_and_skips() {
    use super::harness::{Verdict, differential};
    let regs: [u64; 16] =
        std::array::from_fn(|i| 0x0123_4567_89ab_cdef_u64.rotate_left(i as u32 * 5));
    let xmm: [u128; 16] = std::array::from_fn(|i| u128::from(regs[i]) << 64 | u128::from(!regs[i]));
    for (text, code) in FORMS {
        assert_eq!(
            differential(code, regs, 0x202, xmm),
            Ok(Verdict::Agreed),
            "{text}"
        );
    }
    // cpuid: registers only, but the interpreter leaves it to the CPU.
    assert_eq!(
        differential(&[0x0f, 0xa2], regs, 2, xmm),
        Ok(Verdict::Refused)
    );
    // A store, a push, a branch, a segment register, nothing decodable: not tried.
    for code in [
        &[0x48, 0x89, 0x03][..],
        &[0x50],
        &[0xeb, 0xfe],
        &[0x8c, 0xd8],
        &[0x0f, 0xff],
    ] {
        assert_eq!(
            differential(code, regs, 2, xmm),
            Ok(Verdict::Skipped),
            "{code:02x?}"
        );
    }
}

/// Every handler of the fast path has forms in the tables above, so each is compared with
/// the host CPU (and `fast_tests.rs` compares each with the generic path).
#[test]
fn every_fast_handler_is_compared_with_the_cpu() {
    use fast::Handler;
    use iced_x86::ConditionCode;
    use std::mem::discriminant;
    let mut seen = Vec::new();
    for (_, code) in FORMS
        .iter()
        .chain(SEQUENCES)
        .chain(MEMORY_FORMS)
        .chain(MEMORY_SEQUENCES)
    {
        let mut d = Decoder::with_ip(64, code, tests::CODE, DecoderOptions::NONE);
        while d.can_decode() {
            let at = (d.ip() - tests::CODE) as usize;
            let insn = d.decode();
            if let Some(f) = fast::Fast::new(&insn, &code[at..at + insn.len()], false) {
                seen.push(discriminant(&f.handler));
            }
        }
    }
    let cc = ConditionCode::e;
    let every = [
        Handler::Mov,
        Handler::Movx { signed: false },
        Handler::Lea,
        Handler::Alu {
            op: Op::Add,
            write: true,
            host: fast::Host::None,
        },
        Handler::Cmov(cc),
        Handler::Setcc(cc),
        Handler::Jcc(cc),
        Handler::Jmp,
        Handler::JmpInd,
        Handler::Call,
        Handler::CallInd,
        Handler::Ret,
        Handler::Push,
        Handler::Pop,
        Handler::Leave,
        Handler::Nop,
    ];
    for h in every {
        assert!(
            seen.contains(&discriminant(&h)),
            "{h:?}: no form in the tables"
        );
    }
}

/// MOVS and STOS with and without REP (`interp/string.rs`) against the CPU, every element
/// size: counts of zero, one, a few and several pages (several steps, each up to a page),
/// unaligned within a page, and a copy over its own source with the destination below
/// it. The steps before the last repeat, the last completes the instruction, and the
/// iterations kept for the profile add up to the count (none without REP).
#[test]
fn movs_and_stos_match_the_cpu() {
    const FORMS: [(&str, &[u8]); 12] = [
        ("movsb", &[0xa4]),
        ("movsq", &[0x48, 0xa5]),
        ("stosw", &[0x66, 0xab]),
        ("stosl", &[0xab]),
        ("rep movsb", &[0xf3, 0xa4]),
        ("rep movsw", &[0x66, 0xf3, 0xa5]),
        ("rep movsl", &[0xf3, 0xa5]),
        ("rep movsq", &[0xf3, 0x48, 0xa5]),
        ("rep stosb", &[0xf3, 0xaa]),
        ("rep stosw", &[0x66, 0xf3, 0xab]),
        ("rep stosl", &[0xf3, 0xab]),
        ("rep stosq", &[0xf3, 0x48, 0xab]),
    ];
    // (source offset, destination offset, count) in the data buffer.
    const CASES: [(u64, u64, u64); 6] = [
        (0x100, 0x2000, 0),
        (0x100, 0x2000, 1),
        (0x103, 0x2005, 37),
        (0x10, 0x3ff0, 1000),
        (0x2000, 0x1ff8, 600),
        (0x0, 0x8000, 0x1000),
    ];
    let mut buffer = DataBuffer::map();
    let page = CodePage::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    let mut data = vec![0u8; DATA_LEN];
    for (text, code) in FORMS {
        for (src, dst, count) in CASES {
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            let mut regs: [u64; 16] = std::array::from_fn(|_| next());
            regs[6] = tests::DATA + src;
            regs[7] = tests::DATA + dst;
            regs[1] = count;
            let flags_in = (next() & STATUS) | 2;

            buffer.bytes().copy_from_slice(&data);
            let mut native_regs = regs;
            let mut native_flags = flags_in;
            page.run(code, &mut native_regs, &mut native_flags);

            let mut bytes = code.to_vec();
            bytes.push(0xf4); // hlt
            let mut m = Machine::new(&bytes);
            let at = tests::DATA as usize;
            m.mem[at..at + DATA_LEN].copy_from_slice(&data);
            let mut s = tests::state();
            let sp = s.gpr[RSP];
            s.gpr = regs;
            s.gpr[RSP] = sp;
            s.rflags = flags_in;
            let mut interp = Interp::default();
            let mut session = interp.session(&mut m, s);
            let what = format!("{text} from +{src:#x} to +{dst:#x}, {count} times");
            let steps = run_to(&mut session, tests::CODE + code.len() as u64, &what);
            let iterations: u64 = session.take_repeats().map(|(_, k)| k).sum();
            let after = *session.state();
            drop(session);
            let (last, before) = steps.split_last().expect("a step");
            assert_eq!(last.effect, Effect::Next, "{what}");
            assert!(before.iter().all(|s| s.effect == Effect::Repeat), "{what}");
            let repeated = text.starts_with("rep");
            assert_eq!(iterations, if repeated { count } else { 0 }, "{what}");
            assert!(repeated || steps.len() == 1, "{what}");
            for i in (0..16).filter(|&i| i != RSP) {
                assert_eq!(after.gpr[i], native_regs[i], "{what}: register {i}");
            }
            assert_eq!(
                after.rflags & STATUS,
                native_flags & STATUS,
                "{what}: flags"
            );
            assert!(
                m.mem[at..at + DATA_LEN] == buffer.bytes()[..],
                "{what}: memory differs"
            );
        }
    }
}

/// What REP MOVS/STOS leaves to the CPU halts before anything changes: DF set, a copy
/// whose destination overlaps its source ahead of it, an element straddling a page
/// boundary, a destination on a read-only page.
#[test]
fn rep_movs_and_stos_leave_the_rest_to_the_cpu() {
    use super::harness::RO;
    const DF: u64 = 1 << 10;
    for (code, src, dst, flags) in [
        (&[0xf3, 0xa4][..], tests::DATA, tests::DATA + 0x10, 2 | DF),
        (&[0xf3, 0xa4][..], tests::DATA, tests::DATA + 0x10, 2),
        (&[0xf3, 0x48, 0xab][..], 0, tests::DATA + 0xffc, 2),
        (&[0xf3, 0xaa][..], 0, RO + 0x100, 2),
    ] {
        let mut bytes = code.to_vec();
        bytes.push(0xf4);
        let mut m = Machine::new(&bytes);
        let before = m.mem.clone();
        let mut s = tests::state();
        s.gpr[6] = src;
        s.gpr[7] = dst;
        s.gpr[1] = 0x100;
        s.rflags = flags;
        let mut interp = Interp::default();
        let mut session = interp.session(&mut m, s);
        let r = session.step();
        assert!(r.is_err(), "{code:02x?} at {dst:#x}: {r:?}");
        assert_eq!(*session.state(), s);
        assert_eq!(session.take_repeats().count(), 0);
        drop(session);
        assert!(m.mem == before, "{code:02x?}: memory changed");
    }
}

/// Every condition code (SETcc AL, `0f 90+cc c0`) under every combination of the five
/// flags the conditions read, on the host CPU and in [`cond_holds`], which Jcc, CMOVcc
/// and SETcc share.
#[test]
fn every_condition_code_matches_the_cpu_under_every_flag_combination() {
    use super::alu::{CF, OF, PF, SF, ZF};
    let page = CodePage::new();
    for n in 0u8..16 {
        let code = [0x0f, 0x90 + n, 0xc0];
        let cc = Decoder::with_ip(64, &code, 0, DecoderOptions::NONE)
            .decode()
            .condition_code();
        for combo in 0u32..32 {
            let flags = [CF, PF, ZF, SF, OF]
                .iter()
                .enumerate()
                .filter(|&(i, _)| combo & (1 << i) != 0)
                .fold(0x2, |f, (_, &b)| f | b);
            let mut regs = [0u64; 16];
            let mut after = flags;
            page.run(&code, &mut regs, &mut after);
            assert_eq!(
                cond_holds(cc, flags),
                Some(regs[0] & 0xff == 1),
                "{cc:?} with RFLAGS {flags:#x}"
            );
        }
    }
    assert_eq!(cond_holds(ConditionCode::None, u64::MAX), None);
}
