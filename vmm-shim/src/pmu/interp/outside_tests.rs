//! RDRAND, RDSEED, RDTSC, RDTSCP and RDPID from the pinned world (`interp/outside.rs`):
//! the values are the world's, the shape of the result (which registers and bits change,
//! the flags) is the host CPU's, checked differentially.

use super::alu::{CF, STATUS};
use super::harness::{CodePage, Machine, state};
use super::outside::{Outside, OutsideConfig, TSC_AT_START, TSC_AUX};
use super::*;

const PINNED: OutsideConfig = OutsideConfig {
    random_seed: Some(7),
    pinned_clock: true,
};

/// Registers a form writes and how wide: (index, bits).
type Writes = &'static [(usize, u32)];

/// (text, bytes, registers it writes).
const FORMS: &[(&str, &[u8], Writes)] = &[
    ("rdrand %ax", &[0x66, 0x0f, 0xc7, 0xf0], &[(0, 16)]),
    ("rdrand %eax", &[0x0f, 0xc7, 0xf0], &[(0, 32)]),
    ("rdrand %rax", &[0x48, 0x0f, 0xc7, 0xf0], &[(0, 64)]),
    ("rdrand %r9", &[0x49, 0x0f, 0xc7, 0xf1], &[(9, 64)]),
    ("rdseed %ecx", &[0x0f, 0xc7, 0xf9], &[(1, 32)]),
    ("rdseed %r12", &[0x49, 0x0f, 0xc7, 0xfc], &[(12, 64)]),
    ("rdtsc", &[0x0f, 0x31], &[(0, 32), (2, 32)]),
    ("rdtscp", &[0x0f, 0x01, 0xf9], &[(0, 32), (1, 32), (2, 32)]),
    ("rdpid %rax", &[0xf3, 0x0f, 0xc7, 0xf8], &[(0, 64)]),
    ("rdpid %r10", &[0xf3, 0x41, 0x0f, 0xc7, 0xfa], &[(10, 64)]),
];

fn host_has(leaf: u32, reg: fn(std::arch::x86_64::CpuidResult) -> u32, bit: u32) -> bool {
    let r = std::arch::x86_64::__cpuid_count(leaf, 0);
    reg(r) & (1 << bit) != 0
}

/// Whether the host CPU runs the form (the test cannot compare what it cannot run).
fn host_runs(text: &str) -> bool {
    if text.starts_with("rdrand") {
        host_has(1, |r| r.ecx, 30)
    } else if text.starts_with("rdseed") {
        host_has(7, |r| r.ebx, 18)
    } else if text == "rdtscp" {
        host_has(0x8000_0001, |r| r.edx, 27)
    } else if text.starts_with("rdpid") {
        host_has(7, |r| r.ecx, 22)
    } else {
        true
    }
}

/// One form in the interpreter from `regs`/`flags` with `retired` instructions before it.
fn interpret(
    code: &[u8],
    regs: [u64; 16],
    flags: u64,
    world: &mut Interp,
    retired: u64,
) -> Result<InterpState, Halt> {
    let mut bytes = code.to_vec();
    bytes.push(0xf4);
    let mut m = Machine::new(&bytes);
    let mut s = state();
    let sp = s.gpr[RSP];
    s.gpr = regs;
    s.gpr[RSP] = sp;
    s.rflags = flags;
    let mut session = world.session(&mut m, s);
    session.set_retired(retired);
    session.step()?;
    Ok(*session.state())
}

#[test]
fn every_outside_form_changes_what_the_cpu_changes() {
    let page = CodePage::new();
    let mut seed = 0x5851_f42d_4c95_7f2du64;
    let mut next = || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut interp = Interp::default();
    interp.set_outside(PINNED, 0);
    for &(text, code, writes) in FORMS {
        if !host_runs(text) {
            eprintln!("skipped {text}: the host CPU does not have it");
            continue;
        }
        for _ in 0..50 {
            let regs: [u64; 16] = std::array::from_fn(|_| next());
            let flags = (next() & STATUS) | 2;
            // The host's generator may run dry for a moment (CF=0): draw again.
            let (mut native_regs, mut native_flags) = (regs, flags);
            for _ in 0..100 {
                (native_regs, native_flags) = (regs, flags);
                native_regs[RSP] = 0;
                page.run(code, &mut native_regs, &mut native_flags);
                if !text.starts_with("rdrand") && !text.starts_with("rdseed")
                    || native_flags & CF != 0
                {
                    break;
                }
            }
            let after = interpret(code, regs, flags, &mut interp, 5).unwrap();
            for i in (0..16).filter(|&i| i != RSP) {
                let (got, host) = (after.gpr[i], native_regs[i]);
                match writes.iter().find(|w| w.0 == i) {
                    None => assert_eq!(got, host, "{text}: register {i} changed"),
                    Some(&(_, 16)) => assert_eq!(got >> 16, host >> 16, "{text}: reg {i}"),
                    Some(&(_, 32)) => assert!(
                        got >> 32 == 0 && host >> 32 == 0,
                        "{text}: register {i} is {got:#x} interpreted, {host:#x} on the CPU"
                    ),
                    // RDPID's TSC_AUX: Linux keeps it below 2^32 (node << 12 | cpu).
                    Some(_) if text.starts_with("rdpid") => {
                        assert!(got >> 32 == 0 && host >> 32 == 0, "{text}")
                    }
                    Some(_) => {}
                }
            }
            assert_eq!(
                after.rflags & STATUS,
                native_flags & STATUS,
                "{text}: flags (from {flags:#x})"
            );
        }
    }
}

#[test]
fn the_values_are_the_pinned_worlds() {
    let mut interp = Interp::default();
    interp.set_outside(PINNED, 3);
    let mut expected = Outside::new(PINNED, 3);
    let regs = [0x1111_2222_3333_4444u64; 16];
    // RDRAND and RDSEED take turns on one stream.
    for (code, mask) in [
        (&[0x48, 0x0f, 0xc7, 0xf0][..], u64::MAX),
        (&[0x0f, 0xc7, 0xf0][..], 0xffff_ffff),
        (&[0x49, 0x0f, 0xc7, 0xfc][..], u64::MAX),
    ] {
        let after = interpret(code, regs, 2 | STATUS, &mut interp, 0).unwrap();
        let v = expected.random().unwrap() & mask;
        let reg = if code[0] == 0x49 { 12 } else { 0 };
        assert_eq!(after.gpr[reg], v);
        assert_eq!(after.rflags & STATUS, CF);
    }
    // RDTSC: the instructions retired before it, from TSC_AT_START.
    let after = interpret(&[0x0f, 0x31], regs, 2, &mut interp, 0x1_0000_0123).unwrap();
    let tsc = TSC_AT_START + 0x1_0000_0123;
    assert_eq!((after.gpr[0], after.gpr[2]), (tsc & 0xffff_ffff, tsc >> 32));
    assert_eq!(after.gpr[1], regs[1], "RDTSC leaves RCX");
    let after = interpret(&[0x0f, 0x01, 0xf9], regs, 2, &mut interp, 9).unwrap();
    assert_eq!(after.gpr[0], (TSC_AT_START + 9) & 0xffff_ffff);
    assert_eq!(after.gpr[1], TSC_AUX);
    let after = interpret(&[0xf3, 0x41, 0x0f, 0xc7, 0xfa], regs, 2, &mut interp, 0).unwrap();
    assert_eq!(after.gpr[10], TSC_AUX);
}

#[test]
fn a_batch_counts_the_instructions_before_the_rdtsc() {
    // nop; xor %ecx,%ecx; nop; rdtsc; hlt
    let code = [0x90, 0x31, 0xc9, 0x90, 0x0f, 0x31, 0xf4];
    let mut m = Machine::new(&code);
    let mut interp = Interp::default();
    interp.set_outside(PINNED, 0);
    let mut session = interp.session(&mut m, state());
    session.set_retired(1000);
    let (n, r) = session.run(u64::MAX);
    assert_eq!((n, r), (4, Err(Halt::Unsupported(Mnemonic::Hlt))));
    let after = session.state();
    assert_eq!(after.gpr[2] << 32 | after.gpr[0], TSC_AT_START + 1003);
}

#[test]
fn a_seed_and_a_vcpu_give_one_stream() {
    let draw = |cfg, vcpu| {
        let mut o = Outside::new(cfg, vcpu);
        [o.random(), o.random(), o.random()]
    };
    assert_eq!(draw(PINNED, 0), draw(PINNED, 0));
    assert_ne!(draw(PINNED, 0), draw(PINNED, 1));
    let other = OutsideConfig {
        random_seed: Some(8),
        ..PINNED
    };
    assert_ne!(draw(PINNED, 0), draw(other, 0));
    // Not getrandom's stream of the same seed.
    let mut getrandom =
        crate::linux::entropy::Entropy::new(crate::linux::entropy::EntropySource::Seeded(7));
    let mut bytes = [0u8; 8];
    getrandom.fill(&mut bytes, 0).unwrap();
    assert_ne!(draw(PINNED, 0)[0], Some(u64::from_le_bytes(bytes)));
}

#[test]
fn without_a_pinned_world_the_cpu_answers() {
    let regs = [0u64; 16];
    let mut host = Interp::default();
    for (code, m) in [
        (&[0x0f, 0x31][..], Mnemonic::Rdtsc),
        (&[0x48, 0x0f, 0xc7, 0xf0][..], Mnemonic::Rdrand),
        (&[0xf3, 0x0f, 0xc7, 0xf8][..], Mnemonic::Rdpid),
    ] {
        assert_eq!(
            interpret(code, regs, 2, &mut host, 0).unwrap_err(),
            Halt::Unsupported(m)
        );
    }
    // Only the clock pinned: RDRAND stays the CPU's; only the seed: RDTSC does.
    let mut clock = Interp::default();
    clock.set_outside(
        OutsideConfig {
            random_seed: None,
            pinned_clock: true,
        },
        0,
    );
    let rdrand = [0x48, 0x0f, 0xc7, 0xf0];
    assert_eq!(
        interpret(&rdrand, regs, 2, &mut clock, 0).unwrap_err(),
        Halt::Unsupported(Mnemonic::Rdrand)
    );
    assert!(interpret(&[0x0f, 0x31], regs, 2, &mut clock, 0).is_ok());
    let mut random = Interp::default();
    random.set_outside(
        OutsideConfig {
            random_seed: Some(1),
            pinned_clock: false,
        },
        0,
    );
    assert!(interpret(&rdrand, regs, 2, &mut random, 0).is_ok());
    assert_eq!(
        interpret(&[0x0f, 0x31], regs, 2, &mut random, 0).unwrap_err(),
        Halt::Unsupported(Mnemonic::Rdtsc)
    );
}
