//! `builtin:lbrcheck depth=N version=V [only=CHECK]`: the guest checks the virtual PMU and LBR against
//! the architecture (Intel SDM Vol. 3B "Last Branch, Interrupt, and Exception Recording",
//! "Performance Monitoring" v2/v4) and exits 1 naming the first failed check, 0 when all
//! pass. `depth` and `version` are what the host was told (`--lbr-depth`, `--pmu-version`);
//! the guest checks that the machine it finds matches them. Run it with `--lbr emulated
//! --lbr-mode exact`: the counter, freeze and LBR_INFO checks rely on exact counting
//! (sampled mode counts no branches and its clock follows host time).
//!
//! The branches under test are hand-written ring-3 assembly (`lbrcheck_seq`,
//! `lbrcheck_cs`) whose labels are global symbols, so every expected FROM/TO is an address
//! the guest knows exactly. The LBR is switched on and off *inside* the sequence, by the
//! system calls it makes, so the only ring-3 branches recorded are the sequence's own and
//! the system-call stub's (`call rt_syscall_trap`, its `ret`, and the kernel's `iretq`).
//!
//! Checks, in order: `caps` (CPUID.1 PDCM, leaf 0xA, PERF_CAPABILITIES), `gp` (#GP on
//! unsupported DEBUGCTL bits, LBR slots at or beyond the depth, reserved LBR_SELECT bits,
//! read-only MSRs, STATUS_SET on v2), `types` (each LBR_SELECT branch-type filter alone and
//! all together: exact FROM/TO lists and TOS), `wrap` (TOS wraps modulo the depth), `cpl`
//! (the CPL filters look at the branch target), `callstack` (EN_CALLSTACK leaves exactly
//! the live call chain), `status` (GLOBAL_STATUS_SET/RESET, v4), `freeze` (a counter
//! overflow's PMI freezes LBR and counters the way the version says, and software
//! resumes them). Every LBR entry read along the way must lie in the guest's own code
//! (`rt_text_start..rt_text_end`): host branches never leak into the guest's LBR.
#![no_std]
#![no_main]

use core::arch::global_asm;
use core::arch::x86_64::__cpuid;

use lbrprof_guest::pmu::*;
use lbrprof_guest::{Args, abi, println, user};

// The branches under test. `lbrcheck_seq(seq)`: system call `seq.start`, then one branch of
// each near kind (Jcc, JMP rel, JMP indirect, CALL rel, RET, CALL indirect, RET), then
// `seq.loops` rounds of a JMP rel (each followed by a Jcc back), then system call
// `seq.end`, whose result it returns. `lbrcheck_cs(seq)`: system call `seq.start`, then a
// call chain cs → a → b → c, c returns, and b makes system call `seq.end`.
global_asm!(
    r#"
    .text
    .global lbrcheck_seq
lbrcheck_seq:
    push rbx
    push r12
    mov rbx, rdi
    mov rax, [rbx]
    mov rdi, [rbx + 8]
    mov rsi, [rbx + 16]
    xor edx, edx
    call rt_syscall_trap
    .global lbrcheck_start_ret
lbrcheck_start_ret:
    mov r12, [rbx + 24]
    lea r8, [rip + lbrcheck_ind_to]
    lea r9, [rip + lbrcheck_leaf]
    xor eax, eax
    .global lbrcheck_jcc
lbrcheck_jcc:
    jz lbrcheck_jcc_to
    ud2
    .global lbrcheck_jcc_to
lbrcheck_jcc_to:
    jmp lbrcheck_jmp_to
    ud2
    .global lbrcheck_jmp_to
lbrcheck_jmp_to:
    jmp r8
    ud2
    .global lbrcheck_ind_to
lbrcheck_ind_to:
    call lbrcheck_leaf
    .global lbrcheck_call_ret
lbrcheck_call_ret:
    call r9
    .global lbrcheck_icall_ret
lbrcheck_icall_ret:
    test r12, r12
    .global lbrcheck_loop_jz
lbrcheck_loop_jz:
    jz lbrcheck_loop_done
    .global lbrcheck_loop_jmp
lbrcheck_loop_jmp:
    jmp lbrcheck_loop_to
    ud2
    .global lbrcheck_loop_to
lbrcheck_loop_to:
    dec r12
    jnz lbrcheck_loop_jmp
    .global lbrcheck_loop_done
lbrcheck_loop_done:
    mov rax, [rbx + 32]
    mov rdi, [rbx + 40]
    mov rsi, [rbx + 48]
    xor edx, edx
    .global lbrcheck_end_call
lbrcheck_end_call:
    call rt_syscall_trap
    pop r12
    pop rbx
    ret
    .global lbrcheck_leaf
lbrcheck_leaf:
    ret
    .global lbrcheck_seq_end
lbrcheck_seq_end:
    int3

    .global lbrcheck_cs
lbrcheck_cs:
    push rbx
    mov rbx, rdi
    mov rax, [rbx]
    mov rdi, [rbx + 8]
    mov rsi, [rbx + 16]
    xor edx, edx
    call rt_syscall_trap
    .global lbrcheck_cs_call_a
lbrcheck_cs_call_a:
    call lbrcheck_cs_a
    pop rbx
    ret
    .global lbrcheck_cs_a
lbrcheck_cs_a:
    call lbrcheck_cs_b
    ret
    .global lbrcheck_cs_b
lbrcheck_cs_b:
    call lbrcheck_cs_c
    mov rax, [rbx + 32]
    mov rdi, [rbx + 40]
    mov rsi, [rbx + 48]
    xor edx, edx
    .global lbrcheck_cs_end_call
lbrcheck_cs_end_call:
    call rt_syscall_trap
    ret
    .global lbrcheck_cs_c
lbrcheck_cs_c:
    ret
"#
);

/// What `lbrcheck_seq` / `lbrcheck_cs` do: system calls `[nr, rdi, rsi]` at the start and
/// the end, and the number of extra JMP rounds.
#[repr(C)]
struct Seq {
    start: [u64; 3],
    loops: u64,
    end: [u64; 3],
}

unsafe extern "C" {
    fn lbrcheck_seq(seq: *const Seq) -> u64;
    fn lbrcheck_cs(seq: *const Seq) -> u64;
    static lbrcheck_start_ret: u8;
    static lbrcheck_jcc: u8;
    static lbrcheck_jcc_to: u8;
    static lbrcheck_jmp_to: u8;
    static lbrcheck_ind_to: u8;
    static lbrcheck_call_ret: u8;
    static lbrcheck_icall_ret: u8;
    static lbrcheck_loop_jz: u8;
    static lbrcheck_loop_jmp: u8;
    static lbrcheck_loop_to: u8;
    static lbrcheck_loop_done: u8;
    static lbrcheck_end_call: u8;
    static lbrcheck_leaf: u8;
    static lbrcheck_seq_end: u8;
    static lbrcheck_cs_call_a: u8;
    static lbrcheck_cs_a: u8;
    static lbrcheck_cs_b: u8;
    static lbrcheck_cs_end_call: u8;
    // The runtime's kernel (vmm-shim/guest/src/kernel.rs).
    /// `rt_syscall_trap: rt_syscall_ud2: ud2; ret` (one address, two names; the trap's
    /// own name cannot be declared here as well, the asm above calls it).
    static rt_syscall_ud2: u8;
    static rt_trap_iretq: u8;
    static rt_vec6: u8;
    static rt_wrmsr: u8;
    // The image's code (link.ld).
    static rt_text_start: u8;
    static rt_text_end: u8;
}

macro_rules! addr {
    ($sym:ident) => {
        (&raw const $sym) as u64
    };
}

fn run_seq(seq: &Seq) -> u64 {
    // SAFETY: lbrcheck_seq follows the C ABI (saves rbx/r12), reads only *seq, and its
    // system calls preserve every register but rax/rdx.
    unsafe { lbrcheck_seq(seq) }
}

fn run_cs(seq: &Seq) -> u64 {
    // SAFETY: as run_seq; lbrcheck_cs saves rbx.
    unsafe { lbrcheck_cs(seq) }
}

/// A system call that changes nothing (a no-op `start`/`end`).
const NOP: [u64; 3] = [abi::SYS_NMI_COUNT, 0, 0];

fn wr_debugctl(v: u64) -> [u64; 3] {
    [abi::SYS_WRMSR, u64::from(IA32_DEBUGCTL), v]
}

/// The LBR branch classes MSR_LBR_SELECT filters.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Jcc,
    RelCall,
    IndCall,
    Ret,
    IndJmp,
    RelJmp,
    Far,
}

const CLASSES: [Class; 7] = [
    Class::Jcc,
    Class::RelCall,
    Class::IndCall,
    Class::Ret,
    Class::IndJmp,
    Class::RelJmp,
    Class::Far,
];

impl Class {
    /// The LBR_SELECT bit that suppresses this class.
    fn select_bit(self) -> u64 {
        match self {
            Class::Jcc => LBR_SELECT_JCC,
            Class::RelCall => LBR_SELECT_NEAR_REL_CALL,
            Class::IndCall => LBR_SELECT_NEAR_IND_CALL,
            Class::Ret => LBR_SELECT_NEAR_RET,
            Class::IndJmp => LBR_SELECT_NEAR_IND_JMP,
            Class::RelJmp => LBR_SELECT_NEAR_REL_JMP,
            Class::Far => LBR_SELECT_FAR_BRANCH,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct Entry {
    from: u64,
    to: u64,
    info: u64,
}

#[derive(Clone, Copy, Debug)]
struct Branch {
    from: u64,
    to: u64,
    class: Class,
}

/// The taken ring-3 branches `lbrcheck_seq` retires with `loops = 0` between the `start`
/// system call's WRMSR and the `end` one's, oldest first.
fn seq_branches() -> [Branch; 11] {
    let b = |from, to, class| Branch { from, to, class };
    [
        // The start system call returns: the kernel's iretq, then the stub's ret.
        b(addr!(rt_trap_iretq), addr!(rt_syscall_ud2) + 2, Class::Far),
        b(
            addr!(rt_syscall_ud2) + 2,
            addr!(lbrcheck_start_ret),
            Class::Ret,
        ),
        b(addr!(lbrcheck_jcc), addr!(lbrcheck_jcc_to), Class::Jcc),
        b(
            addr!(lbrcheck_jcc_to),
            addr!(lbrcheck_jmp_to),
            Class::RelJmp,
        ),
        b(
            addr!(lbrcheck_jmp_to),
            addr!(lbrcheck_ind_to),
            Class::IndJmp,
        ),
        b(addr!(lbrcheck_ind_to), addr!(lbrcheck_leaf), Class::RelCall),
        b(addr!(lbrcheck_leaf), addr!(lbrcheck_call_ret), Class::Ret),
        b(
            addr!(lbrcheck_call_ret),
            addr!(lbrcheck_leaf),
            Class::IndCall,
        ),
        b(addr!(lbrcheck_leaf), addr!(lbrcheck_icall_ret), Class::Ret),
        // loops = 0: the Jcc skips the loop.
        b(
            addr!(lbrcheck_loop_jz),
            addr!(lbrcheck_loop_done),
            Class::Jcc,
        ),
        // The end system call: the call (its #UD ends in ring 0, filtered by CPL_EQ_0).
        b(
            addr!(lbrcheck_end_call),
            addr!(rt_syscall_ud2),
            Class::RelCall,
        ),
    ]
}

/// A failed check: its name (printed by `main`).
struct Fail(&'static str);

type Check = Result<(), Fail>;
type CheckFn = fn(&Ctx) -> Check;

/// `ensure!(name, cond, "detail {}", ...)`: print the failure and return from the check.
macro_rules! ensure {
    ($name:expr, $cond:expr, $($fmt:tt)*) => {
        if !$cond {
            println!("lbrcheck: FAIL {}: {}", $name, format_args!($($fmt)*));
            return Err(Fail($name));
        }
    };
}

fn rd(name: &'static str, msr: u32) -> Result<u64, Fail> {
    match user::rdmsr(msr) {
        Some(v) => Ok(v),
        None => {
            println!("lbrcheck: FAIL {name}: rdmsr {msr:#x} raised #GP");
            Err(Fail(name))
        }
    }
}

fn wr(name: &'static str, msr: u32, value: u64) -> Check {
    ensure!(
        name,
        user::wrmsr(msr, value),
        "wrmsr {msr:#x} = {value:#x} raised #GP"
    );
    Ok(())
}

struct Ctx {
    depth: u32,
    version: u32,
}

impl Ctx {
    /// Every GLOBAL_STATUS bit this PMU has: 4 counter and 3 fixed overflows, and (v4)
    /// LBR_FRZ/CTR_FRZ.
    fn status_bits(&self) -> u64 {
        let ovf = 0xF | (0x7 << 32);
        if self.version >= 4 {
            ovf | GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ
        } else {
            ovf
        }
    }

    /// Empty the LBR (every slot zero) and point TOS at slot 0.
    fn clear_lbr(&self, name: &'static str) -> Check {
        for i in 0..self.depth {
            wr(name, MSR_LASTBRANCH_0_FROM_IP + i, 0)?;
            wr(name, MSR_LASTBRANCH_0_TO_IP + i, 0)?;
            wr(name, MSR_LBR_INFO_0 + i, 0)?;
        }
        wr(name, MSR_LBR_TOS, 0)
    }

    /// TOS and the slots newest first.
    fn read_lbr(&self, name: &'static str) -> Result<(u64, [Entry; 32]), Fail> {
        let tos = rd(name, MSR_LBR_TOS)?;
        ensure!(
            name,
            tos < u64::from(self.depth),
            "TOS {tos} beyond depth {}",
            self.depth
        );
        let mut out = [Entry::default(); 32];
        for (i, e) in out.iter_mut().take(self.depth as usize).enumerate() {
            let slot = (tos as u32 + self.depth - i as u32) % self.depth;
            *e = Entry {
                from: rd(name, MSR_LASTBRANCH_0_FROM_IP + slot)?,
                to: rd(name, MSR_LASTBRANCH_0_TO_IP + slot)?,
                info: rd(name, MSR_LBR_INFO_0 + slot)?,
            };
            // Only guest code ever appears: no host addresses, no shim trampolines.
            let code = addr!(rt_text_start)..addr!(rt_text_end);
            ensure!(
                name,
                *e == Entry::default() || (code.contains(&e.from) && code.contains(&e.to)),
                "slot {slot}: {:#x} -> {:#x} is not guest code ({:#x}..{:#x})",
                e.from,
                e.to,
                code.start,
                code.end
            );
        }
        Ok((tos, out))
    }

    /// Run `lbrcheck_seq` from an empty LBR with `select`, LBR on for its duration; check
    /// that the LBR holds exactly `expected` (oldest first; the newest `depth` of them) and
    /// TOS moved by its length.
    fn expect_seq(
        &self,
        name: &'static str,
        select: u64,
        loops: u64,
        expected: &[(u64, u64)],
    ) -> Check {
        wr(name, MSR_LBR_SELECT, select)?;
        self.clear_lbr(name)?;
        run_seq(&Seq {
            start: wr_debugctl(DEBUGCTL_LBR),
            loops,
            end: wr_debugctl(0),
        });
        self.expect_lbr(name, expected)
    }

    /// The LBR (which started empty with TOS 0) holds `expected`, oldest first.
    fn expect_lbr(&self, name: &'static str, expected: &[(u64, u64)]) -> Check {
        let (tos, got) = self.read_lbr(name)?;
        let depth = self.depth as usize;
        let n = expected.len();
        if tos != (n % depth) as u64 {
            for (i, e) in got.iter().take(depth.min(n + 2)).enumerate() {
                println!("lbrcheck:   entry {i}: {:#x} -> {:#x}", e.from, e.to);
            }
        }
        ensure!(
            name,
            tos == (n % depth) as u64,
            "TOS {tos} after {n} recorded branches at depth {depth} (want {})",
            n % depth
        );
        for (i, e) in got.iter().take(depth).enumerate() {
            let want = if i < n { expected[n - 1 - i] } else { (0, 0) };
            ensure!(
                name,
                (e.from, e.to) == want,
                "entry {i} (newest = 0) is {:#x} -> {:#x}, want {:#x} -> {:#x}",
                e.from,
                e.to,
                want.0,
                want.1
            );
            // Format 5 LBR_INFO: bits 60:16 reserved; no TSX.
            ensure!(
                name,
                e.info & 0x7FFF_FFFF_FFFF_0000 == 0,
                "entry {i} LBR_INFO {:#x} has reserved/TSX bits",
                e.info
            );
        }
        Ok(())
    }
}

/// CPUID and PERF_CAPABILITIES as advertised.
fn check_caps(c: &Ctx) -> Check {
    const NAME: &str = "caps";
    // Ring 0's CPUID (the shim's table). Ring-3 CPUID is reported when it disagrees: on
    // the development host (nested, AMD) it returns the host's values, not the table.
    let (_, vendor, _, _) = user::cpuid(0, 0);
    let (_, _, l1_ecx, _) = user::cpuid(1, 0);
    let (la_eax, _, _, la_edx) = user::cpuid(0xA, 0);
    let native = __cpuid(1).ecx;
    if native != l1_ecx {
        println!(
            "lbrcheck: note: ring-3 CPUID.1:ECX is {native:#x}, ring 0 sees {l1_ecx:#x} (the shim's CPUID reaches ring 0 only)"
        );
    }
    ensure!(
        NAME,
        vendor == u32::from_le_bytes(*b"Genu"),
        "CPUID.0 vendor EBX {vendor:#x}, want GenuineIntel"
    );
    ensure!(
        NAME,
        l1_ecx & (1 << 15) != 0,
        "CPUID.1:ECX {l1_ecx:#x}: PDCM clear"
    );
    let version = la_eax & 0xff;
    ensure!(
        NAME,
        version == c.version,
        "CPUID.0AH version {version}, want {}",
        c.version
    );
    ensure!(
        NAME,
        (la_eax >> 8) & 0xff == 4 && (la_eax >> 16) & 0xff == 48,
        "CPUID.0AH EAX {la_eax:#x}: want 4 counters of 48 bits"
    );
    ensure!(
        NAME,
        la_edx & 0x1f == 3 && (la_edx >> 5) & 0xff == 48,
        "CPUID.0AH EDX {la_edx:#x}: want 3 fixed counters of 48 bits"
    );
    let caps = rd(NAME, IA32_PERF_CAPABILITIES)?;
    ensure!(
        NAME,
        caps & 0x3f == 5,
        "PERF_CAPABILITIES {caps:#x}: LBR format {} (want 5)",
        caps & 0x3f
    );
    ensure!(
        NAME,
        caps & (1 << 13) != 0,
        "PERF_CAPABILITIES {caps:#x}: no full-width writes"
    );
    ensure!(
        NAME,
        !user::wrmsr(IA32_PERF_CAPABILITIES, caps),
        "PERF_CAPABILITIES is writable"
    );
    Ok(())
}

/// #GP exactly where the SDM (and the advertised shape) says.
fn check_gp(c: &Ctx) -> Check {
    const NAME: &str = "gp";
    let supported =
        DEBUGCTL_LBR | DEBUGCTL_BTF | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI;
    for bit in 0..64 {
        let v = 1u64 << bit;
        let ok = user::wrmsr(IA32_DEBUGCTL, v);
        ensure!(
            NAME,
            ok == (v & supported != 0),
            "DEBUGCTL bit {bit}: write {}",
            if ok { "accepted" } else { "raised #GP" }
        );
        if ok {
            ensure!(
                NAME,
                user::rdmsr(IA32_DEBUGCTL) == Some(v),
                "DEBUGCTL bit {bit} does not read back"
            );
        }
    }
    wr(NAME, IA32_DEBUGCTL, 0)?;
    for base in [
        MSR_LASTBRANCH_0_FROM_IP,
        MSR_LASTBRANCH_0_TO_IP,
        MSR_LBR_INFO_0,
    ] {
        let last = base + c.depth - 1;
        ensure!(
            NAME,
            user::rdmsr(last).is_some() && user::wrmsr(last, 0),
            "LBR MSR {last:#x} (slot {}) raised #GP",
            c.depth - 1
        );
        for slot in c.depth..32 {
            ensure!(
                NAME,
                user::rdmsr(base + slot).is_none() && !user::wrmsr(base + slot, 0),
                "LBR MSR {:#x} (slot {slot}, depth {}) did not raise #GP",
                base + slot,
                c.depth
            );
        }
    }
    ensure!(
        NAME,
        user::wrmsr(MSR_LBR_TOS, u64::from(c.depth) - 1)
            && !user::wrmsr(MSR_LBR_TOS, c.depth.into()),
        "LBR_TOS accepts {}",
        c.depth
    );
    ensure!(
        NAME,
        !user::wrmsr(MSR_LBR_SELECT, 1 << 10),
        "LBR_SELECT reserved bit 10 accepted"
    );
    ensure!(
        NAME,
        !user::wrmsr(IA32_PERF_GLOBAL_STATUS, 1),
        "PERF_GLOBAL_STATUS is writable"
    );
    let set_ok = user::wrmsr(IA32_PERF_GLOBAL_STATUS_SET, 0);
    ensure!(
        NAME,
        set_ok == (c.version >= 4),
        "PERF_GLOBAL_STATUS_SET {} in version {}",
        if set_ok { "exists" } else { "raises #GP" },
        c.version
    );
    Ok(())
}

/// Each branch-type filter alone, and none: exact FROM/TO lists.
fn check_types(c: &Ctx) -> Check {
    const NAME: &str = "types";
    let all = seq_branches();
    let mut want = [(0u64, 0u64); 11];
    // All classes, ring 3 only.
    for (w, b) in want.iter_mut().zip(all.iter()) {
        *w = (b.from, b.to);
    }
    c.expect_seq(NAME, LBR_SELECT_CPL_EQ_0, 0, &want)?;
    for class in CLASSES {
        let select = LBR_SELECT_CPL_EQ_0 | (LBR_SELECT_ALL_TYPES & !class.select_bit());
        let mut n = 0;
        for b in all.iter().filter(|b| b.class == class) {
            want[n] = (b.from, b.to);
            n += 1;
        }
        if let Err(f) = c.expect_seq(NAME, select, 0, &want[..n]) {
            println!("lbrcheck: (while recording only {class:?}, LBR_SELECT {select:#x})");
            return Err(f);
        }
    }
    Ok(())
}

/// TOS wraps modulo the depth: exactly `depth` recorded branches bring it back to 0, and
/// more overwrite the oldest.
fn check_wrap(c: &Ctx) -> Check {
    const NAME: &str = "wrap";
    let select = LBR_SELECT_CPL_EQ_0 | (LBR_SELECT_ALL_TYPES & !LBR_SELECT_NEAR_REL_JMP);
    let first = (addr!(lbrcheck_jcc_to), addr!(lbrcheck_jmp_to));
    let lp = (addr!(lbrcheck_loop_jmp), addr!(lbrcheck_loop_to));
    let mut want = [lp; 100];
    want[0] = first;
    let d = u64::from(c.depth);
    for loops in [d - 1, d, 2 * d + 3] {
        c.expect_seq(NAME, select, loops, &want[..1 + loops as usize])?;
    }
    // LBR_INFO of the last run's loop jumps: never mispredicted (direct), and CYC_CNT is
    // the 3 instructions since the previous one (jnz, dec, jmp; exact mode's clock is one
    // cycle per instruction).
    let (_, got) = c.read_lbr(NAME)?;
    for (i, e) in got.iter().take(c.depth as usize).enumerate() {
        ensure!(
            NAME,
            e.info == 3,
            "entry {i} LBR_INFO {:#x}: want CYC_CNT 3 and no MISPRED",
            e.info
        );
    }
    Ok(())
}

/// The CPL filters look at the privilege level the branch ends in.
fn check_cpl(c: &Ctx) -> Check {
    const NAME: &str = "cpl";
    // Both rings suppressed: nothing.
    c.expect_seq(NAME, LBR_SELECT_CPL_EQ_0 | LBR_SELECT_CPL_NEQ_0, 0, &[])?;
    // Only far branches ending in ring 0: the end system call's #UD.
    c.expect_seq(
        NAME,
        LBR_SELECT_CPL_NEQ_0 | (LBR_SELECT_ALL_TYPES & !LBR_SELECT_FAR_BRANCH),
        0,
        &[(addr!(rt_syscall_ud2), addr!(rt_vec6))],
    )?;
    // Everything ending in ring 0: the kernel's own branches, the newest being its call
    // of the WRMSR helper that switched the LBR off; nothing lands in the ring-3 sequence.
    wr(NAME, MSR_LBR_SELECT, LBR_SELECT_CPL_NEQ_0)?;
    c.clear_lbr(NAME)?;
    run_seq(&Seq {
        start: wr_debugctl(DEBUGCTL_LBR),
        loops: 3,
        end: wr_debugctl(0),
    });
    let (tos, got) = c.read_lbr(NAME)?;
    ensure!(
        NAME,
        got[0].to == addr!(rt_wrmsr),
        "newest ring-0 entry {:#x} -> {:#x}, want a call of rt_wrmsr {:#x} (TOS {tos})",
        got[0].from,
        got[0].to,
        addr!(rt_wrmsr)
    );
    let seq = addr!(lbrcheck_start_ret)..addr!(lbrcheck_seq_end);
    for (i, e) in got.iter().take(c.depth as usize).enumerate() {
        ensure!(
            NAME,
            !seq.contains(&e.to) && e.to != addr!(rt_syscall_ud2) + 2,
            "entry {i} {:#x} -> {:#x} ends in ring 3 with CPL_NEQ_0 set",
            e.from,
            e.to
        );
    }
    Ok(())
}

/// Call-stack mode: calls push, returns pop, so the LBR holds the live call chain
/// (cs → a → b → rt_syscall_trap) and nothing else.
fn check_callstack(c: &Ctx) -> Check {
    const NAME: &str = "callstack";
    let select = LBR_SELECT_EN_CALLSTACK
        | LBR_SELECT_CPL_EQ_0
        | LBR_SELECT_JCC
        | LBR_SELECT_NEAR_IND_JMP
        | LBR_SELECT_NEAR_REL_JMP
        | LBR_SELECT_FAR_BRANCH;
    wr(NAME, MSR_LBR_SELECT, select)?;
    c.clear_lbr(NAME)?;
    run_cs(&Seq {
        start: wr_debugctl(DEBUGCTL_LBR),
        loops: 0,
        end: wr_debugctl(0),
    });
    c.expect_lbr(
        NAME,
        &[
            (addr!(lbrcheck_cs_call_a), addr!(lbrcheck_cs_a)),
            (addr!(lbrcheck_cs_a), addr!(lbrcheck_cs_b)),
            (addr!(lbrcheck_cs_end_call), addr!(rt_syscall_ud2)),
        ],
    )
}

/// v4: GLOBAL_STATUS_SET sets bits, STATUS_RESET clears them, and LBR_FRZ set by software
/// freezes the LBR too.
fn check_status(c: &Ctx) -> Check {
    const NAME: &str = "status";
    if c.version < 4 {
        return Ok(());
    }
    wr(NAME, IA32_PERF_GLOBAL_STATUS_RESET, c.status_bits())?;
    ensure!(
        NAME,
        rd(NAME, IA32_PERF_GLOBAL_STATUS)? == 0,
        "STATUS not clear after reset"
    );
    let bits = 0b10 | (1 << 33) | GLOBAL_STATUS_LBR_FRZ;
    wr(NAME, IA32_PERF_GLOBAL_STATUS_SET, bits)?;
    let st = rd(NAME, IA32_PERF_GLOBAL_STATUS)?;
    ensure!(
        NAME,
        st == bits,
        "STATUS {st:#x} after STATUS_SET {bits:#x}"
    );
    // Frozen by software: recording nothing.
    c.expect_seq(NAME, LBR_SELECT_CPL_EQ_0, 0, &[])?;
    wr(NAME, IA32_PERF_GLOBAL_STATUS_RESET, 0b10)?;
    let st = rd(NAME, IA32_PERF_GLOBAL_STATUS)?;
    ensure!(
        NAME,
        st == bits & !0b10,
        "STATUS {st:#x} after resetting bit 1 of {bits:#x}"
    );
    wr(NAME, IA32_PERF_GLOBAL_STATUS_RESET, bits)?;
    ensure!(
        NAME,
        rd(NAME, IA32_PERF_GLOBAL_STATUS)? == 0,
        "STATUS not clear after reset"
    );
    // Unfrozen: recording again (the REL_JMP only, to keep the list short).
    c.expect_seq(
        NAME,
        LBR_SELECT_CPL_EQ_0 | (LBR_SELECT_ALL_TYPES & !LBR_SELECT_NEAR_REL_JMP),
        0,
        &[(addr!(lbrcheck_jcc_to), addr!(lbrcheck_jmp_to))],
    )
}

/// A counter overflow's PMI freezes LBR and counters as the version says (v2: DEBUGCTL.LBR
/// and GLOBAL_CTRL cleared; v4: LBR_FRZ and CTR_FRZ set), and software resumes them.
fn check_freeze(c: &Ctx) -> Check {
    const NAME: &str = "freeze";
    const PRESET: u64 = 40;
    let v4 = c.version >= 4;
    let rel_jmp_only = LBR_SELECT_CPL_EQ_0 | (LBR_SELECT_ALL_TYPES & !LBR_SELECT_NEAR_REL_JMP);
    let loop_entry = (addr!(lbrcheck_loop_jmp), addr!(lbrcheck_loop_to));
    let debugctl = DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI;

    wr(NAME, IA32_PERF_GLOBAL_CTRL, 0)?;
    wr(NAME, IA32_PERF_GLOBAL_STATUS_RESET, c.status_bits())?;
    wr(
        NAME,
        IA32_PERFEVTSEL0,
        EVTSEL_EN | EVTSEL_USR | EVTSEL_INT | u64::from(EVENT_BR_INST_RETIRED),
    )?;
    wr(NAME, IA32_A_PMC0, (1 << 48) - PRESET)?;
    wr(NAME, MSR_LBR_SELECT, rel_jmp_only)?;
    c.clear_lbr(NAME)?;
    let nmis = user::nmi_count();
    wr(NAME, IA32_PERF_GLOBAL_CTRL, 1)?;
    // PRESET ring-3 branches from here overflow PMC0 inside the 200 rounds of the loop.
    let end_debugctl = run_seq(&Seq {
        start: wr_debugctl(debugctl),
        loops: 200,
        end: [abi::SYS_RDMSR, u64::from(IA32_DEBUGCTL), 0],
    });
    let nmis = user::nmi_count() - nmis;
    ensure!(NAME, nmis == 1, "{nmis} NMIs for one overflow");
    let pmc = rd(NAME, IA32_A_PMC0)?;
    ensure!(
        NAME,
        pmc == 0,
        "PMC0 = {pmc} after overflowing with FREEZE_PERFMON_ON_PMI (want 0: frozen at the overflow)"
    );
    let status = rd(NAME, IA32_PERF_GLOBAL_STATUS)?;
    let ctrl = rd(NAME, IA32_PERF_GLOBAL_CTRL)?;
    let frz = GLOBAL_STATUS_LBR_FRZ | GLOBAL_STATUS_CTR_FRZ;
    if v4 {
        ensure!(
            NAME,
            status == 1 | frz,
            "v4 STATUS {status:#x} after the PMI, want PMC0 overflow | LBR_FRZ | CTR_FRZ"
        );
        ensure!(
            NAME,
            end_debugctl == debugctl && ctrl == 1,
            "v4 freeze touched DEBUGCTL ({end_debugctl:#x}) or GLOBAL_CTRL ({ctrl:#x})"
        );
    } else {
        ensure!(
            NAME,
            status == 1,
            "v2 STATUS {status:#x} after the PMI, want PMC0 overflow only"
        );
        ensure!(
            NAME,
            end_debugctl == debugctl & !DEBUGCTL_LBR && ctrl == 0,
            "v2 freeze: DEBUGCTL {end_debugctl:#x}, GLOBAL_CTRL {ctrl:#x}; want LBR and the enables cleared"
        );
    }
    // The LBR stopped at the PMI: some of the loop's jumps, the newest a loop jump.
    let (tos, got) = c.read_lbr(NAME)?;
    ensure!(
        NAME,
        (got[0].from, got[0].to) == loop_entry,
        "newest entry {:#x} -> {:#x} (TOS {tos}) is not a loop jump",
        got[0].from,
        got[0].to
    );
    // Frozen: more branches change nothing (no LBR entries, no counts, no PMI).
    run_seq(&Seq {
        start: NOP,
        loops: 50,
        end: NOP,
    });
    let (tos2, got2) = c.read_lbr(NAME)?;
    let pmc2 = rd(NAME, IA32_A_PMC0)?;
    ensure!(
        NAME,
        tos2 == tos && got2 == got && pmc2 == 0,
        "frozen LBR/counters moved: TOS {tos} -> {tos2}, PMC0 0 -> {pmc2}"
    );
    // Resume. v4: STATUS_RESET of the overflow and freeze bits, made by the sequence's
    // own start system call, resumes LBR and counters at once. v2: clear the overflow,
    // enable the counter again and set DEBUGCTL.LBR (the sequence's start). Either way the
    // LBR then holds exactly the sequence's 1 + 5 REL_JMPs and PMC0 counts again.
    let start = if v4 {
        [
            abi::SYS_WRMSR,
            u64::from(IA32_PERF_GLOBAL_STATUS_RESET),
            1 | frz,
        ]
    } else {
        wr(NAME, IA32_PERF_GLOBAL_STATUS_RESET, 1)?;
        wr(NAME, IA32_PERF_GLOBAL_CTRL, 1)?;
        wr_debugctl(debugctl)
    };
    c.clear_lbr(NAME)?;
    let pmc0 = rd(NAME, IA32_A_PMC0)?;
    run_seq(&Seq {
        start,
        loops: 5,
        end: wr_debugctl(0),
    });
    let pmc = rd(NAME, IA32_A_PMC0)? - pmc0;
    let status = rd(NAME, IA32_PERF_GLOBAL_STATUS)?;
    wr(NAME, IA32_PERF_GLOBAL_CTRL, 0)?;
    wr(NAME, IA32_PERFEVTSEL0, 0)?;
    ensure!(
        NAME,
        status == 0,
        "STATUS {status:#x} after the STATUS_RESET"
    );
    // The sequence alone retires 19 ring-3 branches with loops = 5 (ret, jz, jmp, jmp,
    // call, ret, call, ret, jz, 5 × (jmp, jnz), call), plus the glue around it.
    ensure!(
        NAME,
        (19..PRESET).contains(&pmc),
        "PMC0 counted {pmc} branches over the resumed sequence (want 19 plus the glue)"
    );
    let mut want = [loop_entry; 6];
    want[0] = (addr!(lbrcheck_jcc_to), addr!(lbrcheck_jmp_to));
    c.expect_lbr(NAME, &want)
}

fn main(args: &Args) -> i32 {
    let depth = args.u64("depth", 32);
    let version = args.u64("version", 4);
    if ![8, 16, 32].contains(&depth) || ![2, 4].contains(&version) {
        println!("lbrcheck: depth must be 8, 16 or 32 and version 2 or 4");
        return 2;
    }
    let c = Ctx {
        depth: depth as u32,
        version: version as u32,
    };
    let checks: [(&str, CheckFn); 8] = [
        ("caps", check_caps),
        ("gp", check_gp),
        ("types", check_types),
        ("wrap", check_wrap),
        ("cpl", check_cpl),
        ("callstack", check_callstack),
        ("status", check_status),
        ("freeze", check_freeze),
    ];
    let only = args.get("only");
    let mut ran = 0;
    for (name, check) in checks {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        if let Err(Fail(failed)) = check(&c) {
            println!("lbrcheck: first failed check: {failed}");
            // Leave the PMU quiet for whatever runs next.
            user::wrmsr(IA32_DEBUGCTL, 0);
            user::wrmsr(IA32_PERF_GLOBAL_CTRL, 0);
            return 1;
        }
        println!("lbrcheck: ok {name}");
        ran += 1;
    }
    println!("lbrcheck: {ran} checks passed (PMU version {version}, LBR depth {depth})");
    0
}

lbrprof_guest::workload!(main);
