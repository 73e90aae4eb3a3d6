//! Differential tests of the VEX forms (`interp/avx.rs`): each runs on the host CPU with
//! all sixteen YMM registers, the general-purpose registers and the flags random, and in
//! the interpreter from the same state; every general-purpose register, both halves of
//! every YMM register, every flag the instruction defines and (for the memory forms) the
//! data must agree. Encodings made with GNU as, the AT&T text beside each. Skipped, with
//! the reason printed, on a host without AVX2, BMI1 and BMI2 (the interpreter leaves
//! these forms to the CPU there: the last test checks that).

use super::harness::CodePage;
use super::native_tests::{DATA_LEN, DataBuffer, run_to};
use super::tests::Machine;
use super::*;

/// Register forms.
const FORMS: &[(&str, &[u8])] = &[
    ("vmovdqu %ymm1,%ymm2", &[0xc5, 0xfe, 0x6f, 0xd1]),
    ("vmovdqa %xmm3,%xmm4", &[0xc5, 0xf9, 0x6f, 0xe3]),
    ("vmovups %ymm5,%ymm6", &[0xc5, 0xfc, 0x10, 0xf5]),
    ("vmovaps %xmm7,%xmm8", &[0xc5, 0x78, 0x28, 0xc7]),
    ("vmovupd %ymm9,%ymm10", &[0xc4, 0x41, 0x7d, 0x10, 0xd1]),
    ("vmovapd %ymm11,%ymm12", &[0xc4, 0x41, 0x7d, 0x28, 0xe3]),
    ("vmovd %eax,%xmm1", &[0xc5, 0xf9, 0x6e, 0xc8]),
    ("vmovq %rcx,%xmm9", &[0xc4, 0x61, 0xf9, 0x6e, 0xc9]),
    ("vmovd %xmm2,%edx", &[0xc5, 0xf9, 0x7e, 0xd2]),
    ("vmovq %xmm10,%r11", &[0xc4, 0x41, 0xf9, 0x7e, 0xd3]),
    ("vmovq %xmm3,%xmm4", &[0xc5, 0xfa, 0x7e, 0xe3]),
    ("vmovq %xmm12,%xmm13", &[0xc4, 0x41, 0x7a, 0x7e, 0xec]),
    ("vzeroupper", &[0xc5, 0xf8, 0x77]),
    ("vzeroall", &[0xc5, 0xfc, 0x77]),
    ("vpxor %ymm1,%ymm2,%ymm3", &[0xc5, 0xed, 0xef, 0xd9]),
    ("vpxor %xmm1,%xmm2,%xmm3", &[0xc5, 0xe9, 0xef, 0xd9]),
    ("vpor %ymm4,%ymm5,%ymm6", &[0xc5, 0xd5, 0xeb, 0xf4]),
    ("vpand %xmm7,%xmm8,%xmm9", &[0xc5, 0x39, 0xdb, 0xcf]),
    (
        "vpandn %ymm10,%ymm11,%ymm12",
        &[0xc4, 0x41, 0x25, 0xdf, 0xe2],
    ),
    ("vxorps %xmm0,%xmm0,%xmm0", &[0xc5, 0xf8, 0x57, 0xc0]),
    ("vxorps %ymm1,%ymm2,%ymm3", &[0xc5, 0xec, 0x57, 0xd9]),
    ("vxorpd %xmm4,%xmm5,%xmm6", &[0xc5, 0xd1, 0x57, 0xf4]),
    ("vorps %ymm7,%ymm8,%ymm9", &[0xc5, 0x3c, 0x56, 0xcf]),
    (
        "vorpd %xmm10,%xmm11,%xmm12",
        &[0xc4, 0x41, 0x21, 0x56, 0xe2],
    ),
    (
        "vandps %ymm13,%ymm14,%ymm15",
        &[0xc4, 0x41, 0x0c, 0x54, 0xfd],
    ),
    ("vandpd %xmm0,%xmm1,%xmm2", &[0xc5, 0xf1, 0x54, 0xd0]),
    ("vandnps %ymm3,%ymm4,%ymm5", &[0xc5, 0xdc, 0x55, 0xeb]),
    ("vandnpd %xmm6,%xmm7,%xmm8", &[0xc5, 0x41, 0x55, 0xc6]),
    ("vpcmpeqb %ymm1,%ymm0,%ymm3", &[0xc5, 0xfd, 0x74, 0xd9]),
    ("vpcmpeqb %xmm4,%xmm3,%xmm5", &[0xc5, 0xe1, 0x74, 0xec]),
    ("vpcmpeqw %xmm6,%xmm3,%xmm7", &[0xc5, 0xe1, 0x75, 0xfe]),
    (
        "vpcmpeqd %ymm9,%ymm6,%ymm8",
        &[0xc4, 0x41, 0x4d, 0x76, 0xc1],
    ),
    ("vpcmpgtb %ymm1,%ymm0,%ymm3", &[0xc5, 0xfd, 0x64, 0xd9]),
    ("vpcmpgtw %xmm4,%xmm3,%xmm5", &[0xc5, 0xe1, 0x65, 0xec]),
    (
        "vpcmpgtd %ymm9,%ymm6,%ymm8",
        &[0xc4, 0x41, 0x4d, 0x66, 0xc1],
    ),
    ("vpminub %ymm1,%ymm0,%ymm2", &[0xc5, 0xfd, 0xda, 0xd1]),
    ("vpminub %xmm3,%xmm4,%xmm5", &[0xc5, 0xd9, 0xda, 0xeb]),
    ("vpminud %ymm1,%ymm2,%ymm3", &[0xc4, 0xe2, 0x6d, 0x3b, 0xd9]),
    ("vpminud %xmm4,%xmm5,%xmm6", &[0xc4, 0xe2, 0x51, 0x3b, 0xf4]),
    ("vpmaxub %ymm6,%ymm7,%ymm8", &[0xc5, 0x45, 0xde, 0xc6]),
    ("vpaddb %ymm1,%ymm2,%ymm3", &[0xc5, 0xed, 0xfc, 0xd9]),
    ("vpaddw %xmm4,%xmm5,%xmm6", &[0xc5, 0xd1, 0xfd, 0xf4]),
    ("vpaddd %ymm7,%ymm8,%ymm9", &[0xc5, 0x3d, 0xfe, 0xcf]),
    (
        "vpaddq %ymm10,%ymm11,%ymm12",
        &[0xc4, 0x41, 0x25, 0xd4, 0xe2],
    ),
    ("vpsubb %ymm1,%ymm2,%ymm3", &[0xc5, 0xed, 0xf8, 0xd9]),
    ("vpsubw %ymm4,%ymm5,%ymm6", &[0xc5, 0xd5, 0xf9, 0xf4]),
    ("vpsubd %xmm7,%xmm8,%xmm9", &[0xc5, 0x39, 0xfa, 0xcf]),
    (
        "vpsubq %ymm10,%ymm11,%ymm12",
        &[0xc4, 0x41, 0x25, 0xfb, 0xe2],
    ),
    (
        "vpmuludq %ymm13,%ymm14,%ymm15",
        &[0xc4, 0x41, 0x0d, 0xf4, 0xfd],
    ),
    ("vpunpcklbw %ymm1,%ymm2,%ymm3", &[0xc5, 0xed, 0x60, 0xd9]),
    ("vpunpcklwd %xmm4,%xmm5,%xmm6", &[0xc5, 0xd1, 0x61, 0xf4]),
    ("vpunpckldq %ymm7,%ymm8,%ymm9", &[0xc5, 0x3d, 0x62, 0xcf]),
    (
        "vpunpcklqdq %ymm10,%ymm11,%ymm12",
        &[0xc4, 0x41, 0x25, 0x6c, 0xe2],
    ),
    ("vpmovmskb %ymm1,%eax", &[0xc5, 0xfd, 0xd7, 0xc1]),
    ("vpmovmskb %xmm2,%ecx", &[0xc5, 0xf9, 0xd7, 0xca]),
    ("vpmovmskb %ymm9,%r10", &[0xc4, 0x41, 0x7d, 0xd7, 0xd1]),
    ("vptest %ymm1,%ymm0", &[0xc4, 0xe2, 0x7d, 0x17, 0xc1]),
    ("vptest %ymm2,%ymm2", &[0xc4, 0xe2, 0x7d, 0x17, 0xd2]),
    ("vptest %xmm3,%xmm4", &[0xc4, 0xe2, 0x79, 0x17, 0xe3]),
    ("vptest %ymm0,%ymm3", &[0xc4, 0xe2, 0x7d, 0x17, 0xd8]),
    ("vpbroadcastb %xmm1,%ymm2", &[0xc4, 0xe2, 0x7d, 0x78, 0xd1]),
    ("vpbroadcastb %xmm3,%xmm4", &[0xc4, 0xe2, 0x79, 0x78, 0xe3]),
    ("vpbroadcastw %xmm5,%ymm6", &[0xc4, 0xe2, 0x7d, 0x79, 0xf5]),
    ("vpbroadcastd %xmm7,%ymm8", &[0xc4, 0x62, 0x7d, 0x58, 0xc7]),
    ("vpbroadcastq %xmm9,%xmm10", &[0xc4, 0x42, 0x79, 0x59, 0xd1]),
    (
        "vpbroadcastq %xmm11,%ymm12",
        &[0xc4, 0x42, 0x7d, 0x59, 0xe3],
    ),
    ("vpshufb %ymm1,%ymm2,%ymm3", &[0xc4, 0xe2, 0x6d, 0x00, 0xd9]),
    ("vpshufb %xmm4,%xmm5,%xmm6", &[0xc4, 0xe2, 0x51, 0x00, 0xf4]),
    (
        "vpalignr $5,%ymm1,%ymm2,%ymm3",
        &[0xc4, 0xe3, 0x6d, 0x0f, 0xd9, 0x05],
    ),
    (
        "vpalignr $17,%xmm4,%xmm5,%xmm6",
        &[0xc4, 0xe3, 0x51, 0x0f, 0xf4, 0x11],
    ),
    (
        "vpalignr $0,%ymm7,%ymm8,%ymm9",
        &[0xc4, 0x63, 0x3d, 0x0f, 0xcf, 0x00],
    ),
    (
        "vpalignr $16,%ymm10,%ymm11,%ymm12",
        &[0xc4, 0x43, 0x25, 0x0f, 0xe2, 0x10],
    ),
    (
        "vpalignr $40,%ymm13,%ymm14,%ymm15",
        &[0xc4, 0x43, 0x0d, 0x0f, 0xfd, 0x28],
    ),
    ("andn %rax,%rcx,%rdx", &[0xc4, 0xe2, 0xf0, 0xf2, 0xd0]),
    ("andn %r8d,%r9d,%r10d", &[0xc4, 0x42, 0x30, 0xf2, 0xd0]),
    ("blsr %rax,%rcx", &[0xc4, 0xe2, 0xf0, 0xf3, 0xc8]),
    ("blsr %edx,%esi", &[0xc4, 0xe2, 0x48, 0xf3, 0xca]),
    ("blsmsk %rbx,%rdx", &[0xc4, 0xe2, 0xe8, 0xf3, 0xd3]),
    ("blsmsk %ecx,%eax", &[0xc4, 0xe2, 0x78, 0xf3, 0xd1]),
    ("blsi %rcx,%rax", &[0xc4, 0xe2, 0xf8, 0xf3, 0xd9]),
    ("blsi %r9d,%r11d", &[0xc4, 0xc2, 0x20, 0xf3, 0xd9]),
    ("bzhi %rcx,%rax,%rdx", &[0xc4, 0xe2, 0xf0, 0xf5, 0xd0]),
    ("bzhi %ecx,%ebx,%esi", &[0xc4, 0xe2, 0x70, 0xf5, 0xf3]),
    ("shlx %rcx,%rax,%rdx", &[0xc4, 0xe2, 0xf1, 0xf7, 0xd0]),
    ("shrx %ecx,%esi,%edi", &[0xc4, 0xe2, 0x73, 0xf7, 0xfe]),
    ("sarx %rcx,%r8,%r9", &[0xc4, 0x42, 0xf2, 0xf7, 0xc8]),
    ("sarx %ecx,%eax,%ebx", &[0xc4, 0xe2, 0x72, 0xf7, 0xd8]),
    ("rorx $13,%rax,%rdx", &[0xc4, 0xe3, 0xfb, 0xf0, 0xd0, 0x0d]),
    ("rorx $5,%ecx,%esi", &[0xc4, 0xe3, 0x7b, 0xf0, 0xf1, 0x05]),
    ("pdep %rax,%rbx,%rcx", &[0xc4, 0xe2, 0xe3, 0xf5, 0xc8]),
    ("pext %rdx,%rsi,%rdi", &[0xc4, 0xe2, 0xca, 0xf5, 0xfa]),
    ("pdep %ecx,%edx,%r8d", &[0xc4, 0x62, 0x6b, 0xf5, 0xc1]),
    ("pext %r9d,%r10d,%r11d", &[0xc4, 0x42, 0x2a, 0xf5, 0xd9]),
];

/// Memory forms (`%rbx` points into the data buffer; aligned, unaligned and
/// page-crossing loads and stores).
const MEMORY_FORMS: &[(&str, &[u8])] = &[
    ("vmovdqu (%rbx),%ymm1", &[0xc5, 0xfe, 0x6f, 0x0b]),
    ("vmovdqu 0x3(%rbx),%ymm2", &[0xc5, 0xfe, 0x6f, 0x53, 0x03]),
    ("vmovdqu %ymm3,0x5(%rbx)", &[0xc5, 0xfe, 0x7f, 0x5b, 0x05]),
    (
        "vmovdqu 0xff1(%rbx),%ymm4",
        &[0xc5, 0xfe, 0x6f, 0xa3, 0xf1, 0x0f, 0x00, 0x00],
    ),
    (
        "vmovdqu %ymm5,0xff9(%rbx)",
        &[0xc5, 0xfe, 0x7f, 0xab, 0xf9, 0x0f, 0x00, 0x00],
    ),
    ("vmovdqa 0x20(%rbx),%ymm6", &[0xc5, 0xfd, 0x6f, 0x73, 0x20]),
    ("vmovdqa %ymm7,0x40(%rbx)", &[0xc5, 0xfd, 0x7f, 0x7b, 0x40]),
    ("vmovntdq %ymm7,0x40(%rbx)", &[0xc5, 0xfd, 0xe7, 0x7b, 0x40]),
    ("vmovntdq %xmm2,0x20(%rbx)", &[0xc5, 0xf9, 0xe7, 0x53, 0x20]),
    ("vmovntps %ymm3,0x60(%rbx)", &[0xc5, 0xfc, 0x2b, 0x5b, 0x60]),
    ("vmovaps 0x30(%rbx),%xmm1", &[0xc5, 0xf8, 0x28, 0x4b, 0x30]),
    ("vmovups 0x7(%rbx),%xmm8", &[0xc5, 0x78, 0x10, 0x43, 0x07]),
    ("vmovdqu %xmm9,0x11(%rbx)", &[0xc5, 0x7a, 0x7f, 0x4b, 0x11]),
    ("vmovd 0x4(%rbx),%xmm1", &[0xc5, 0xf9, 0x6e, 0x4b, 0x04]),
    ("vmovq %xmm2,0x8(%rbx)", &[0xc5, 0xf9, 0xd6, 0x53, 0x08]),
    ("vmovq 0x10(%rbx),%xmm3", &[0xc5, 0xfa, 0x7e, 0x5b, 0x10]),
    ("vmovd %xmm4,0xc(%rbx)", &[0xc5, 0xf9, 0x7e, 0x63, 0x0c]),
    (
        "vpcmpeqb 0x20(%rbx),%ymm1,%ymm2",
        &[0xc5, 0xf5, 0x74, 0x53, 0x20],
    ),
    (
        "vpminub 0x1(%rbx),%ymm3,%ymm4",
        &[0xc5, 0xe5, 0xda, 0x63, 0x01],
    ),
    (
        "vpminud 0x20(%rbx),%ymm1,%ymm2",
        &[0xc4, 0xe2, 0x75, 0x3b, 0x53, 0x20],
    ),
    (
        "vpxor 0x30(%rbx),%xmm5,%xmm6",
        &[0xc5, 0xd1, 0xef, 0x73, 0x30],
    ),
    ("vpor (%rbx),%ymm7,%ymm8", &[0xc5, 0x45, 0xeb, 0x03]),
    (
        "vptest 0x40(%rbx),%ymm1",
        &[0xc4, 0xe2, 0x7d, 0x17, 0x4b, 0x40],
    ),
    (
        "vpbroadcastb 0x3(%rbx),%ymm1",
        &[0xc4, 0xe2, 0x7d, 0x78, 0x4b, 0x03],
    ),
    (
        "vpbroadcastd 0x4(%rbx),%xmm2",
        &[0xc4, 0xe2, 0x79, 0x58, 0x53, 0x04],
    ),
    (
        "vpbroadcastq 0x8(%rbx),%ymm3",
        &[0xc4, 0xe2, 0x7d, 0x59, 0x5b, 0x08],
    ),
    (
        "vpshufb 0x20(%rbx),%ymm1,%ymm2",
        &[0xc4, 0xe2, 0x75, 0x00, 0x53, 0x20],
    ),
    (
        "vpalignr $3,0x10(%rbx),%ymm1,%ymm2",
        &[0xc4, 0xe3, 0x75, 0x0f, 0x53, 0x10, 0x03],
    ),
    (
        "andn 0x8(%rbx),%rax,%rdx",
        &[0xc4, 0xe2, 0xf8, 0xf2, 0x53, 0x08],
    ),
    (
        "blsr 0x10(%rbx),%rcx",
        &[0xc4, 0xe2, 0xf0, 0xf3, 0x4b, 0x10],
    ),
    (
        "shlx %rcx,0x8(%rbx),%rax",
        &[0xc4, 0xe2, 0xf1, 0xf7, 0x43, 0x08],
    ),
    (
        "bzhi %ecx,0x4(%rbx),%edx",
        &[0xc4, 0xe2, 0x70, 0xf5, 0x53, 0x04],
    ),
    (
        "pext 0x18(%rbx),%rsi,%rdi",
        &[0xc4, 0xe2, 0xca, 0xf5, 0x7b, 0x18],
    ),
    (
        "rorx $7,0x8(%rbx),%rax",
        &[0xc4, 0xe3, 0xfb, 0xf0, 0x43, 0x08, 0x07],
    ),
];

/// Whether the host runs every form here; prints why not.
fn host_runs_them() -> bool {
    let ok = std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2");
    if !ok {
        eprintln!("skipped: the host CPU lacks AVX2, BMI1 or BMI2");
    }
    ok
}

/// A xorshift generator.
fn rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Random vector registers: every third one has only its even bytes, the next its odd
/// bytes, set (equal bytes and disjoint registers now and then, so that compares and
/// VPTEST see both outcomes); now and then one is zero.
fn vectors(next: &mut impl FnMut() -> u64) -> [u128; 16] {
    std::array::from_fn(|i| {
        let v = u128::from(next()) | (u128::from(next()) << 64);
        match (i % 3, next() % 8) {
            (_, 0) => 0,
            (0, _) => v & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff,
            (1, _) => v & 0xff00_ff00_ff00_ff00_ff00_ff00_ff00_ff00,
            _ => v,
        }
    })
}

/// Runs `code` (followed by `cmp %eax,%eax; hlt`, so flags it leaves undefined are
/// provably dead) in the interpreter on `m` from `regs`/`flags`; the registers, flags,
/// XMM and YMM-upper registers after it, and the flags it left undefined.
fn interpret(
    m: &mut Machine,
    code_len: usize,
    regs: [u64; 16],
    flags: u64,
    text: &str,
) -> (InterpState, [u128; 16], [u128; 16], u64) {
    let (xmm, hi) = (m.xmm, m.ymm_hi);
    let mut s = tests::state();
    let sp = s.gpr[RSP];
    s.gpr = regs;
    s.gpr[RSP] = sp;
    s.rflags = flags;
    let mut interp = Interp::default();
    let mut session = interp.session(m, s);
    let steps = run_to(&mut session, tests::CODE + code_len as u64, text);
    let undefined = steps.iter().fold(0, |u, s| u | s.undefined);
    let after = *session.state();
    let after_xmm = session.xmm_to_write_back().copied().unwrap_or(xmm);
    let after_hi = session.ymm_hi_to_write_back().copied().unwrap_or(hi);
    (after, after_xmm, after_hi, undefined)
}

#[allow(clippy::too_many_arguments, reason = "both sides of one comparison")]
fn compare(
    text: &str,
    after: &InterpState,
    xmm: &[u128; 16],
    hi: &[u128; 16],
    undefined: u64,
    native_regs: &[u64; 16],
    native_xmm: &[u128; 16],
    native_hi: &[u128; 16],
    native_flags: u64,
) {
    for i in (0..16).filter(|&i| i != RSP) {
        assert_eq!(after.gpr[i], native_regs[i], "{text}: register {i}");
    }
    assert_eq!(xmm, native_xmm, "{text}: XMM registers (bits 127:0)");
    assert_eq!(hi, native_hi, "{text}: YMM bits 255:128");
    let defined = STATUS & !undefined;
    assert_eq!(
        after.rflags & defined,
        native_flags & defined,
        "{text}: flags"
    );
}

#[test]
fn every_vex_register_form_matches_the_cpu() {
    if !host_runs_them() {
        return;
    }
    let page = CodePage::new();
    let mut next = rng(0x51af_d7ed_558c_cd1d);
    for (text, code) in FORMS {
        for round in 0..200 {
            let mut regs: [u64; 16] = std::array::from_fn(|_| next());
            if round % 4 == 0 {
                regs[1] = next() % 80; // CL/RCX: small and edge counts and indices
            }
            if round % 7 == 0 {
                regs[0] = 0; // zero sources for BLS*
                regs[3] = 0;
            }
            let flags = (next() & STATUS) | 2;
            let (xmm, hi) = (vectors(&mut next), vectors(&mut next));
            let (mut nr, mut nf, mut nx, mut nh) = (regs, flags, xmm, hi);
            page.run_ymm(code, &mut nr, &mut nf, &mut nx, &mut nh);

            let mut bytes = code.to_vec();
            bytes.extend([0x39, 0xc0, 0xf4]);
            let mut m = Machine::new(&bytes);
            (m.xmm, m.ymm_hi) = (xmm, hi);
            let (after, ax, ah, undefined) = interpret(&mut m, code.len(), regs, flags, text);
            // AF and PF after ANDN, BLS* and BZHI are the host's: every flag is compared.
            assert_eq!(undefined, 0, "{text}: undefined flags left");
            compare(text, &after, &ax, &ah, undefined, &nr, &nx, &nh, nf);
        }
    }
}

#[test]
fn every_vex_memory_form_matches_the_cpu() {
    if !host_runs_them() {
        return;
    }
    let mut buffer = DataBuffer::map();
    let page = CodePage::new();
    let mut next = rng(0x9e37_79b9_7f4a_7c15);
    let mut data = vec![0u8; DATA_LEN];
    for (text, code) in MEMORY_FORMS {
        for _ in 0..50 {
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            let mut regs: [u64; 16] = std::array::from_fn(|_| next());
            regs[3] = tests::DATA + 0x1000; // the base
            regs[1] = next() % 40; // counts and indices
            let flags = (next() & STATUS) | 2;
            let (xmm, hi) = (vectors(&mut next), vectors(&mut next));
            buffer.bytes().copy_from_slice(&data);
            let (mut nr, mut nf, mut nx, mut nh) = (regs, flags, xmm, hi);
            page.run_ymm(code, &mut nr, &mut nf, &mut nx, &mut nh);

            let mut bytes = code.to_vec();
            bytes.extend([0x39, 0xc0, 0xf4]);
            let mut m = Machine::new(&bytes);
            (m.xmm, m.ymm_hi) = (xmm, hi);
            let at = tests::DATA as usize;
            m.mem[at..at + DATA_LEN].copy_from_slice(&data);
            let (after, ax, ah, undefined) = interpret(&mut m, code.len(), regs, flags, text);
            compare(text, &after, &ax, &ah, undefined, &nr, &nx, &nh, nf);
            assert!(
                m.mem[at..at + DATA_LEN] == buffer.bytes()[..],
                "{text}: memory differs"
            );
        }
    }
}

/// VMOVDQA with a misaligned operand raises #GP on the CPU: the interpreter leaves it
/// to it (state, memory and vector registers untouched).
#[test]
fn a_misaligned_vmovdqa_is_left_to_the_cpu() {
    if !host_runs_them() {
        return;
    }
    // vmovdqa 0x10(%rbx),%ymm6 (16- but not 32-byte aligned); vmovdqa %ymm7,0x8(%rbx)
    for code in [
        &[0xc5, 0xfd, 0x6f, 0x73, 0x10][..],
        &[0xc5, 0xfd, 0x7f, 0x7b, 0x08],
    ] {
        let mut m = Machine::new(code);
        m.ymm_hi = [7; 16];
        let before = m.mem.clone();
        let mut s = tests::state();
        s.gpr[3] = tests::DATA;
        let mut interp = Interp::default();
        let mut session = interp.session(&mut m, s);
        assert_eq!(session.step(), Err(Halt::Memory), "{code:02x?}");
        assert_eq!(*session.state(), s);
        assert!(session.xmm_to_write_back().is_none());
        assert!(session.ymm_hi_to_write_back().is_none());
        drop(session);
        assert!(m.mem == before);
    }
}

/// A session's YMM state is read once and written back only when changed: VZEROUPPER
/// over zero upper halves and a VEX.128 write over a zero upper half change nothing;
/// a VEX.256 write does, and the halves written back are the CPU's.
#[test]
fn ymm_upper_halves_are_written_back_only_when_changed() {
    if !host_runs_them() {
        return;
    }
    // vzeroupper; vpxor %xmm1,%xmm1,%xmm1; hlt
    let mut m = Machine::new(&[0xc5, 0xf8, 0x77, 0xc5, 0xf1, 0xef, 0xc9, 0xf4]);
    m.xmm = [5; 16];
    let mut interp = Interp::default();
    let mut session = interp.session(&mut m, tests::state());
    assert_eq!(session.run(10).0, 2);
    assert!(session.ymm_hi_to_write_back().is_none());
    assert_eq!(session.xmm_to_write_back().map(|x| x[1]), Some(0));
    drop(session);
    // vpcmpeqb %ymm2,%ymm2,%ymm2 (all ones); vzeroupper; hlt
    let mut m = Machine::new(&[0xc5, 0xed, 0x74, 0xd2, 0xc5, 0xf8, 0x77, 0xf4]);
    let mut interp = Interp::default();
    let mut session = interp.session(&mut m, tests::state());
    assert_eq!(session.step().map(|s| s.effect), Ok(Effect::Next));
    assert_eq!(
        session.ymm_hi_to_write_back().map(|h| h[2]),
        Some(u128::MAX)
    );
    assert_eq!(session.step().map(|s| s.effect), Ok(Effect::Next));
    // Changed and changed back: still written (the vCPU's copy is the old one only by
    // chance).
    assert_eq!(session.ymm_hi_to_write_back(), Some(&[0; 16]));
    assert_eq!(session.xmm_to_write_back().map(|x| x[2]), Some(u128::MAX));
}
