//! Ring 0: the entry point, per-vCPU GDT/TSS/IDT, the trap and system-call path.
//!
//! Kept deliberately small: under nested virtualization every ring-0 instruction may be
//! emulated by the host. Measured on the development host with `-- rt.stats`: the whole
//! ring-0 boot of vCPU 0 takes about 0.8 ms, a system call (the #UD trap into ring 0 and
//! the iretq back) about 140 µs, which is why console output and exits do not use one.
//!
//! System calls arrive as #UD at `rt_syscall_ud2` (see `abi`); vector 0x80 is also wired
//! (a DPL-3 gate) for hosts where `int 0x80` is not emulated.
//!
//! On the development host, guest ring 0 is run by KVM's x86 instruction emulator: that
//! is why it is slow, why `int n` fails (the emulator cannot deliver it in protected
//! mode) and why guest debugging reaches ring 0 but not ring 3. It also means ring-0
//! code must stay within what that emulator implements: no SSE/AVX beyond
//! fxsave/fxrstor (an unsupported instruction ends the run with a KVM internal error).
//! So ring-0 paths here are integer-only and do no formatting.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::MAX_CPUS;
use crate::abi;
use crate::handoff::{
    BOOT_INFO, BOOT_TSC, COM1, CPUS_ONLINE, EXIT_PORT, POWEROFF_PORT, POWEROFF_VALUE, boot_info,
    boot_info_at,
};

const KSTACK: usize = 16 * 1024;
const ISTACK: usize = 8 * 1024;
const USTACK: usize = 512 * 1024;

// GDT selectors, in the order SYSCALL/SYSRET need (user data just below user code).
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_DS: u16 = 0x18 | 3;
const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

/// x86 exception vectors we treat specially.
const VEC_UD: u64 = 6;
const VEC_NMI: u64 = 2;
const VEC_GP: u64 = 13;
/// The vector system calls are dispatched under (the trap stub raises #UD).
const VEC_SYSCALL: u64 = 0x80;

#[repr(C, align(16))]
struct Stack<const N: usize>([u8; N]);

#[unsafe(no_mangle)]
static mut RT_KSTACKS: [Stack<KSTACK>; MAX_CPUS] = [const { Stack([0; KSTACK]) }; MAX_CPUS];
static mut NMI_STACKS: [Stack<ISTACK>; MAX_CPUS] = [const { Stack([0; ISTACK]) }; MAX_CPUS];
static mut DF_STACKS: [Stack<ISTACK>; MAX_CPUS] = [const { Stack([0; ISTACK]) }; MAX_CPUS];
static mut GP_STACKS: [Stack<ISTACK>; MAX_CPUS] = [const { Stack([0; ISTACK]) }; MAX_CPUS];
static mut UD_STACKS: [Stack<ISTACK>; MAX_CPUS] = [const { Stack([0; ISTACK]) }; MAX_CPUS];
static mut USER_STACKS: [Stack<USTACK>; MAX_CPUS] = [const { Stack([0; USTACK]) }; MAX_CPUS];

/// The 64-bit TSS (SDM Vol. 3 Figure 8-11).
#[repr(C, packed)]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
    /// I/O permission bitmap for ports 0..IOMAP_PORTS (a clear bit allows ring 3), then
    /// the all-ones terminator byte the architecture requires.
    iomap: [u8; IOMAP_PORTS / 8 + 1],
}

/// Ports below this are covered by the TSS I/O bitmap (all others are denied to ring 3).
const IOMAP_PORTS: usize = 0x800;
/// Ports ring 3 may use directly: the console, the exit ports, fw_cfg. Direct port I/O
/// from ring 3 avoids a ring-0 round trip per line of output.
const USER_PORTS: &[(u16, u16)] = &[
    (COM1, COM1 + 7),
    (EXIT_PORT, EXIT_PORT + 3),
    (0x510, 0x511),
    (POWEROFF_PORT, POWEROFF_PORT + 1),
];

#[repr(C, align(16))]
#[derive(Clone, Copy)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}

const IDT_MISSING: IdtEntry = IdtEntry {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    _reserved: 0,
};

struct PerCpu {
    gdt: [u64; 7],
    tss: Tss,
    idt: [IdtEntry; 256],
}

static mut PERCPU: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        gdt: [0; 7],
        tss: Tss {
            _reserved0: 0,
            rsp: [0; 3],
            _reserved1: 0,
            ist: [0; 7],
            _reserved2: 0,
            _reserved3: 0,
            iomap_base: 104,
            iomap: [0xff; IOMAP_PORTS / 8 + 1],
        },
        idt: [IDT_MISSING; 256],
    }
}; MAX_CPUS];

/// NMIs taken, all vCPUs (the LBR agent's PMI handler hangs here).
pub(crate) static NMIS: AtomicU64 = AtomicU64::new(0);

/// The LBR agent's state on one vCPU (each vCPU has its own PMU and ring).
struct AgentCpu {
    /// The sampling period (0: the agent is off).
    period: AtomicU64,
    depth: AtomicU64,
    v4: AtomicU64,
    /// Starts so far (the ring's `epoch`).
    starts: AtomicU64,
}

static AGENT: [AgentCpu; MAX_CPUS] = [const {
    AgentCpu {
        period: AtomicU64::new(0),
        depth: AtomicU64::new(0),
        v4: AtomicU64::new(0),
        starts: AtomicU64::new(0),
    }
}; MAX_CPUS];

global_asm!(
    r#"
    .section .text.boot,"ax"
    .global _start
_start:
    cli
    cld
    cmp rdi, {max_cpus}
    jae 3f
    /* SSE on: CR0.EM=0, CR0.MP=1; CR4.OSFXSR|OSXMMEXCPT. */
    mov rax, cr0
    and rax, -5
    or rax, 2
    mov cr0, rax
    mov rax, cr4
    or rax, 0x600
    mov cr4, rax
    lea rsp, [rip + {kstacks}]
    mov rax, rdi
    inc rax
    imul rax, rax, {kstack}
    add rsp, rax
    xor ebp, ebp
    call {kmain}
3:
    cli
    hlt
    jmp 3b

    .text
    /* Exception and system-call stubs: push a zero error code where the CPU does not,
       then the vector, then share one path. */
    .macro TRAP_NOERR n
    .global rt_vec\n
rt_vec\n:
    push 0
    push \n
    jmp rt_trap_common
    .endm
    .macro TRAP_ERR n
    .global rt_vec\n
rt_vec\n:
    push \n
    jmp rt_trap_common
    .endm

    TRAP_NOERR 0
    TRAP_NOERR 1
    TRAP_NOERR 2
    TRAP_NOERR 3
    TRAP_NOERR 4
    TRAP_NOERR 5
    TRAP_NOERR 6
    TRAP_NOERR 7
    TRAP_ERR 8
    TRAP_NOERR 9
    TRAP_ERR 10
    TRAP_ERR 11
    TRAP_ERR 12
    TRAP_ERR 13
    TRAP_ERR 14
    TRAP_NOERR 15
    TRAP_NOERR 16
    TRAP_ERR 17
    TRAP_NOERR 18
    TRAP_NOERR 19
    TRAP_NOERR 20
    TRAP_ERR 21
    TRAP_NOERR 22
    TRAP_NOERR 23
    TRAP_NOERR 24
    TRAP_NOERR 25
    TRAP_NOERR 26
    TRAP_NOERR 27
    TRAP_NOERR 28
    TRAP_ERR 29
    TRAP_ERR 30
    TRAP_NOERR 31
    TRAP_NOERR 128

rt_trap_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rbp, rsp
    sub rsp, 512
    and rsp, -16
    fxsave64 [rsp]
    cld
    mov rdi, rbp
    call {trap}
    fxrstor64 [rsp]
    mov rsp, rbp
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    /* Named so guest tests can find this far branch's FROM address in the LBR. */
    .global rt_trap_iretq
rt_trap_iretq:
    iretq

    .section .rodata
    .balign 8
    .global rt_vectors
rt_vectors:
    .quad rt_vec0, rt_vec1, rt_vec2, rt_vec3, rt_vec4, rt_vec5, rt_vec6, rt_vec7
    .quad rt_vec8, rt_vec9, rt_vec10, rt_vec11, rt_vec12, rt_vec13, rt_vec14, rt_vec15
    .quad rt_vec16, rt_vec17, rt_vec18, rt_vec19, rt_vec20, rt_vec21, rt_vec22, rt_vec23
    .quad rt_vec24, rt_vec25, rt_vec26, rt_vec27, rt_vec28, rt_vec29, rt_vec30, rt_vec31
    .quad rt_vec128

    .text
    /* MSR access that may raise #GP: the #GP handler resumes at the *_fault label. */
    .global rt_rdmsr
rt_rdmsr:
    mov ecx, edi
    .global rt_rdmsr_insn
rt_rdmsr_insn:
    rdmsr
    shl rdx, 32
    or rax, rdx
    xor edx, edx
    ret
    .global rt_rdmsr_fault
rt_rdmsr_fault:
    xor eax, eax
    mov edx, 1
    ret

    .global rt_wrmsr
rt_wrmsr:
    mov ecx, edi
    mov eax, esi
    mov rdx, rsi
    shr rdx, 32
    .global rt_wrmsr_insn
rt_wrmsr_insn:
    wrmsr
    xor eax, eax
    ret
    .global rt_wrmsr_fault
rt_wrmsr_fault:
    mov rax, -1
    ret

    /* The system-call trap, called from ring 3 with RAX = number, RDI/RSI/RDX = args.
       The #UD handler recognises this exact ud2, runs the call and resumes after it. */
    .global rt_syscall_trap
rt_syscall_trap:
    .global rt_syscall_ud2
rt_syscall_ud2:
    ud2
    ret

    /* rt_enter_user(rip, rsp, arg0, arg1): iretq to ring 3 with IF=0. */
    .global rt_enter_user
rt_enter_user:
    mov rax, rdi
    mov r8, rsi
    mov rdi, rdx
    mov rsi, rcx
    push {user_ds}
    push r8
    push 0x2
    push {user_cs}
    push rax
    xor ebp, ebp
    iretq
"#,
    max_cpus = const MAX_CPUS,
    kstacks = sym RT_KSTACKS,
    kstack = const KSTACK,
    kmain = sym rt_kmain,
    trap = sym rt_trap,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
);

unsafe extern "C" {
    static rt_vectors: [u64; 33];
    fn rt_rdmsr(msr: u32) -> MsrRead;
    fn rt_wrmsr(msr: u32, value: u64) -> i64;
    fn rt_enter_user(rip: u64, rsp: u64, arg0: u64, arg1: u64) -> !;
    static rt_syscall_ud2: u8;
    static rt_rdmsr_insn: u8;
    static rt_rdmsr_fault: u8;
    static rt_wrmsr_insn: u8;
    static rt_wrmsr_fault: u8;
}

#[repr(C)]
struct MsrRead {
    value: u64,
    faulted: u64,
}

/// What the trap stubs leave on the kernel stack, lowest address first.
#[repr(C)]
struct TrapFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

fn stack_top<const N: usize>(stacks: *mut [Stack<N>; MAX_CPUS], cpu: usize) -> u64 {
    // Only the address is computed; nothing is dereferenced.
    stacks as u64 + ((cpu + 1) * N) as u64
}

fn segment(access: u64, flags: u64) -> u64 {
    // Base 0, limit 0xfffff (ignored in 64-bit mode for code/data).
    0xffff | (access << 40) | (0xf << 48) | (flags << 52)
}

fn gate(handler: u64, ist: u8, dpl: u8) -> IdtEntry {
    IdtEntry {
        offset_low: handler as u16,
        selector: KERNEL_CS,
        ist,
        type_attr: 0x8e | (dpl << 5),
        offset_mid: (handler >> 16) as u16,
        offset_high: (handler >> 32) as u32,
        _reserved: 0,
    }
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Ring-0 set-up of one vCPU, then off to ring 3 (vCPU 0) or halt (the others).
extern "C" fn rt_kmain(cpu: u64, boot: u64) -> ! {
    let cpu = cpu as usize;
    if cpu == 0 {
        BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
    }
    // SAFETY: each vCPU touches only its own PERCPU slot (cpu < MAX_CPUS, checked by
    // _start), and nothing else runs on this vCPU yet.
    let pc = unsafe { &mut *(&raw mut PERCPU).cast::<PerCpu>().add(cpu) };

    pc.tss.rsp[0] = stack_top(&raw mut RT_KSTACKS, cpu);
    pc.tss.ist[0] = stack_top(&raw mut NMI_STACKS, cpu);
    pc.tss.ist[1] = stack_top(&raw mut DF_STACKS, cpu);
    pc.tss.ist[2] = stack_top(&raw mut GP_STACKS, cpu);
    pc.tss.ist[3] = stack_top(&raw mut UD_STACKS, cpu);
    for &(first, last) in USER_PORTS {
        for port in first..=last {
            pc.tss.iomap[usize::from(port) / 8] &= !(1 << (port % 8));
        }
    }
    let tss = (&raw const pc.tss) as u64;
    pc.gdt = [
        0,
        segment(0x9a, 0xa), // kernel code: P, DPL0, code, L=1, G=1
        segment(0x92, 0xc), // kernel data
        segment(0xf2, 0xc), // user data: DPL3
        segment(0xfa, 0xa), // user code: DPL3, L=1
        // 64-bit available TSS, 16 bytes.
        (core::mem::size_of::<Tss>() as u64 - 1)
            | ((tss & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((tss >> 24) & 0xff) << 56),
        tss >> 32,
    ];
    // SAFETY: rt_vectors is the table of stub addresses defined in the global_asm above.
    let vectors = unsafe { &rt_vectors };
    for (v, &handler) in vectors[..32].iter().enumerate() {
        let ist = match v as u64 {
            VEC_NMI => 1,
            8 => 2,
            VEC_GP => 3,
            // #UD carries system calls; its own stack keeps them off the caller's stack
            // should ring-0 code ever make one.
            VEC_UD => 4,
            _ => 0,
        };
        pc.idt[v] = gate(handler, ist, 0);
    }
    pc.idt[VEC_SYSCALL as usize] = gate(vectors[32], 0, 3);

    let gdtr = DescriptorPointer {
        limit: (core::mem::size_of_val(&pc.gdt) - 1) as u16,
        base: pc.gdt.as_ptr() as u64,
    };
    let idtr = DescriptorPointer {
        limit: (core::mem::size_of_val(&pc.idt) - 1) as u16,
        base: pc.idt.as_ptr() as u64,
    };
    // SAFETY: the GDT/IDT/TSS live in statics for the life of the guest; the selectors
    // match the GDT built above; the far return reloads CS with the same flat code.
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "lidt [{idtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:e}",
            "mov es, {ds:e}",
            "mov ss, {ds:e}",
            "xor {tmp:e}, {tmp:e}",
            "mov fs, {tmp:e}",
            "mov gs, {tmp:e}",
            "ltr {tss:x}",
            gdtr = in(reg) &gdtr,
            idtr = in(reg) &idtr,
            cs = const KERNEL_CS,
            ds = in(reg) u32::from(KERNEL_DS),
            tss = in(reg) TSS_SEL,
            tmp = out(reg) _,
        );
    }

    CPUS_ONLINE.fetch_add(1, Ordering::Release);
    let entry = if cpu == 0 {
        // (`rt.smp` workers may run before vCPU 0 gets here; they read `boot` directly.)
        BOOT_INFO.store(boot, Ordering::Release);
        crate::user::rt_user_entry as *const () as u64
    } else if cmdline_has_word(boot, b"rt.smp") {
        // An `rt.smp` worker: the workload runs here too.
        crate::user::rt_user_entry_ap as *const () as u64
    } else {
        park()
    };
    let rsp = stack_top(&raw mut USER_STACKS, cpu) - 8;
    // SAFETY: both entries are ring-3-safe extern "C" functions; the user stack is this
    // vCPU's and mapped user-accessible by the shim.
    unsafe { rt_enter_user(entry, rsp, cpu as u64, boot) }
}

/// Halts this vCPU for good (interrupts off: only the host ends it).
fn park() -> ! {
    loop {
        // SAFETY: halting with interrupts off parks this vCPU; the host stops it.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Whether the boot command line holds `word` as a whole word. Byte by byte with volatile
/// reads (ring 0 must not be vectorized, see the module doc); before `BOOT_INFO` is set.
fn cmdline_has_word(boot: u64, word: &[u8]) -> bool {
    let Some(info) = boot_info_at(boot) else {
        return false;
    };
    let (base, len) = (info.cmdline_addr as *const u8, info.cmdline_len as usize);
    // SAFETY: the command line lies in guest RAM at cmdline_addr (written by the shim,
    // never written again); every index is below cmdline_len.
    let at = |i: usize| unsafe { core::ptr::read_volatile(base.add(i)) };
    let mut start = 0;
    while start < len {
        let mut end = start;
        while end < len && at(end) != b' ' {
            end += 1;
        }
        if end - start == word.len() {
            let mut same = true;
            let mut i = 0;
            while i < word.len() {
                same &= at(start + i) == word[i];
                i += 1;
            }
            if same {
                return true;
            }
        }
        start = end + 1;
    }
    false
}

/// The index of the vCPU running this (ring-0) code: each vCPU has its own IDT.
fn this_cpu() -> usize {
    let mut idtr = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: SIDT stores 10 bytes into the local descriptor pointer.
    unsafe { asm!("sidt [{}]", in(reg) &raw mut idtr, options(nostack, preserves_flags)) };
    let first = (&raw const PERCPU).cast::<PerCpu>() as u64;
    let idt_offset = core::mem::offset_of!(PerCpu, idt) as u64;
    let cpu = (idtr.base.wrapping_sub(first + idt_offset) / core::mem::size_of::<PerCpu>() as u64)
        as usize;
    cpu.min(MAX_CPUS - 1)
}

fn rdtsc() -> u64 {
    let tsc: u64;
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe {
        asm!("rdtsc", "shl rdx, 32", "or rax, rdx", out("rax") tsc, out("rdx") _, options(nomem, nostack));
    }
    tsc
}

fn console_write(bytes: &[u8]) {
    // SAFETY: rep outsb reads exactly bytes.len() bytes from a valid slice.
    unsafe {
        asm!("rep outsb", in("dx") COM1, inout("rsi") bytes.as_ptr() => _,
             inout("rcx") bytes.len() => _, options(nostack, readonly));
    }
}

/// Leave the machine: exit code 0 powers off, others go out through isa-debug-exit.
fn machine_exit(code: u64) -> ! {
    // SAFETY: port writes the shim turns into the end of the run.
    unsafe {
        if code == 0 {
            asm!("out dx, ax", in("dx") POWEROFF_PORT, in("ax") POWEROFF_VALUE, options(nomem, nostack));
        } else {
            asm!("out dx, eax", in("dx") EXIT_PORT, in("eax") code as u32, options(nomem, nostack));
        }
        loop {
            asm!("cli", "hlt", options(nomem, nostack));
        }
    }
}

fn hex(mut v: u64, out: &mut [u8; 18]) -> &[u8] {
    out[0] = b'0';
    out[1] = b'x';
    for i in (2..18).rev() {
        out[i] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
    &out[..]
}

/// An exception nothing handles: say where, then triple-fault so the host stops the VM,
/// dumps the registers and exits non-zero.
fn fatal(frame: &TrapFrame) -> ! {
    let mut buf = [0u8; 18];
    console_write(b"\nlbrprof-guest: unhandled exception vector ");
    console_write(hex(frame.vector, &mut buf));
    console_write(b" error ");
    console_write(hex(frame.error, &mut buf));
    console_write(b" at rip ");
    console_write(hex(frame.rip, &mut buf));
    console_write(b" rsp ");
    console_write(hex(frame.rsp, &mut buf));
    console_write(b" rflags ");
    console_write(hex(frame.rflags, &mut buf));
    console_write(b" cs ");
    console_write(hex(frame.cs, &mut buf));
    console_write(b" ring ");
    console_write(&[b'0' + (frame.cs & 3) as u8]);
    if frame.vector == 14 {
        let cr2: u64;
        // SAFETY: reading CR2 has no side effects.
        unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
        console_write(b" cr2 ");
        console_write(hex(cr2, &mut buf));
    }
    console_write(b"\n");
    triple_fault()
}

fn triple_fault() -> ! {
    let null = DescriptorPointer { limit: 0, base: 0 };
    // SAFETY: deliberately loads an empty IDT and raises an exception: the CPU shuts down.
    unsafe {
        asm!("lidt [{}]", "ud2", in(reg) &null, options(nostack));
    }
    loop {
        core::hint::spin_loop();
    }
}

fn user_range_ok(ptr: u64, len: u64) -> bool {
    let mem = boot_info().map_or(0, |b| b.mem_bytes);
    ptr.checked_add(len).is_some_and(|end| end <= mem)
}

extern "C" fn rt_trap(frame: &mut TrapFrame) {
    match frame.vector {
        VEC_SYSCALL => syscall(frame),
        VEC_UD if frame.rip == (&raw const rt_syscall_ud2) as u64 => {
            syscall(frame);
            frame.rip += 2;
        }
        VEC_NMI => {
            NMIS.fetch_add(1, Ordering::Relaxed);
            let cpu = this_cpu();
            if AGENT[cpu].period.load(Ordering::Relaxed) != 0 {
                agent::on_pmi(cpu, frame.rip, frame.rsp, frame.rbp);
            }
        }
        VEC_GP if frame.rip == (&raw const rt_rdmsr_insn) as u64 => {
            frame.rip = (&raw const rt_rdmsr_fault) as u64;
        }
        VEC_GP if frame.rip == (&raw const rt_wrmsr_insn) as u64 => {
            frame.rip = (&raw const rt_wrmsr_fault) as u64;
        }
        _ => fatal(frame),
    }
}

fn syscall(f: &mut TrapFrame) {
    f.rax = match f.rax {
        abi::SYS_WRITE => {
            let (ptr, len) = (f.rdi, f.rsi);
            if user_range_ok(ptr, len) {
                // SAFETY: the range lies inside guest RAM, which is identity-mapped.
                console_write(unsafe {
                    core::slice::from_raw_parts(ptr as *const u8, len as usize)
                });
                len
            } else {
                u64::MAX
            }
        }
        abi::SYS_EXIT => machine_exit(f.rdi),
        abi::SYS_TIME_NS => {
            let khz = boot_info().map_or(0, |b| b.tsc_khz);
            let tsc = rdtsc();
            if khz == 0 {
                0
            } else {
                (u128::from(tsc) * 1_000_000 / u128::from(khz)) as u64
            }
        }
        abi::SYS_RDMSR => {
            // SAFETY: rt_rdmsr recovers from #GP through the fixup in rt_trap.
            let r = unsafe { rt_rdmsr(f.rdi as u32) };
            f.rdx = r.faulted;
            r.value
        }
        // SAFETY: rt_wrmsr recovers from #GP through the fixup in rt_trap.
        abi::SYS_WRMSR => (unsafe { rt_wrmsr(f.rdi as u32, f.rsi) }) as u64,
        abi::SYS_NMI_COUNT => NMIS.load(Ordering::Relaxed),
        abi::SYS_AGENT_START => agent::start(this_cpu(), f.rdi),
        abi::SYS_AGENT_STOP => {
            let (written, dropped) = agent::stop(this_cpu());
            f.rdx = dropped;
            written
        }
        abi::SYS_PARK => park(),
        abi::SYS_CPUID => {
            let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
            // SAFETY: CPUID has no side effects; RBX is saved and restored around it
            // because LLVM reserves it.
            unsafe {
                asm!("mov {b:r}, rbx", "cpuid", "xchg {b:r}, rbx",
                     b = out(reg) ebx, inout("eax") f.rdi as u32 => eax,
                     inout("ecx") f.rsi as u32 => ecx, out("edx") edx,
                     options(nomem, nostack, preserves_flags));
            }
            f.rdx = u64::from(ecx) | u64::from(edx) << 32;
            u64::from(eax) | u64::from(ebx) << 32
        }
        _ => u64::MAX,
    };
}

/// The LBR agent (guest-driven snapshots, see `abi::SYS_AGENT_START`): ring 0 only, integer
/// only, MSR access through the #GP-safe helpers. Per vCPU: its own PMU, its own ring.
mod agent {
    use super::*;
    use crate::abi::{
        AGENT_MAX_DEPTH, AGENT_MAX_RINGS, AGENT_RING_MAGIC, AGENT_RING_SLOTS, AgentRing,
        agent_record_addr, agent_ring_addr,
    };
    use crate::msr::{
        DEBUGCTL_FREEZE_LBRS_ON_PMI, DEBUGCTL_FREEZE_PERFMON_ON_PMI, DEBUGCTL_LBR, IA32_DEBUGCTL,
        IA32_FIXED_CTR_CTRL, IA32_FIXED_CTR0, IA32_PERF_GLOBAL_CTRL, IA32_PERF_GLOBAL_STATUS,
        IA32_PERF_GLOBAL_STATUS_RESET, MSR_LASTBRANCH_0_FROM_IP, MSR_LASTBRANCH_0_TO_IP,
        MSR_LBR_INFO_0, MSR_LBR_SELECT, MSR_LBR_TOS,
    };

    const _: () = assert!(AGENT_MAX_RINGS as usize >= MAX_CPUS);

    /// LBR | FREEZE_LBRS_ON_PMI | FREEZE_PERFMON_ON_PMI.
    const DEBUGCTL_AGENT: u64 =
        DEBUGCTL_LBR | DEBUGCTL_FREEZE_LBRS_ON_PMI | DEBUGCTL_FREEZE_PERFMON_ON_PMI;
    /// LBR_SELECT CPL_EQ_0: user branches only (the handler's own are not wanted).
    const LBR_SELECT_USER: u64 = 1;
    /// Fixed counter 0 (INST_RETIRED.ANY): USR (bit 1) and PMI (bit 3).
    const FIXED0_USR_PMI: u64 = 0b1010;
    const GLOBAL_FIXED0: u64 = 1 << 32;
    const OVERFLOW_BITS: u64 = 0xF | (0x7 << 32);
    const FREEZE_BITS: u64 = (1 << 58) | (1 << 59);
    const COUNTER_SPAN: u64 = 1 << 48;

    fn rd(msr: u32) -> Option<u64> {
        // SAFETY: rt_rdmsr recovers from #GP through the fixup in rt_trap.
        let r = unsafe { rt_rdmsr(msr) };
        (r.faulted == 0).then_some(r.value)
    }

    fn wr(msr: u32, value: u64) -> bool {
        // SAFETY: rt_wrmsr recovers from #GP through the fixup in rt_trap.
        (unsafe { rt_wrmsr(msr, value) }) == 0
    }

    fn ring(cpu: usize) -> *mut AgentRing {
        agent_ring_addr(cpu as u32) as *mut AgentRing
    }

    pub(super) fn start(cpu: usize, period: u64) -> u64 {
        if period == 0 || period >= COUNTER_SPAN {
            return u64::MAX;
        }
        let mut depth = 0;
        while depth < AGENT_MAX_DEPTH as u32 && rd(MSR_LASTBRANCH_0_FROM_IP + depth).is_some() {
            depth += 1;
        }
        if depth == 0 {
            return u64::MAX;
        }
        let (eax, _, _, _) = cpuid(0xA);
        let a = &AGENT[cpu];
        let r = ring(cpu);
        // The rings lie in guest RAM below 640 KiB, identity-mapped, which nothing else in
        // the guest uses (see abi); only this vCPU writes its ring, the shim reads it.
        // Word by word: ring-0 code must not use SSE (see the module doc).
        let words = r.cast::<u64>();
        for i in 0..core::mem::size_of::<AgentRing>() / 8 {
            // SAFETY: as above, inside the header.
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
        }
        let epoch = a.starts.load(Ordering::Relaxed) + 1;
        a.starts.store(epoch, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&raw mut (*r).epoch, epoch) };
        a.depth.store(u64::from(depth), Ordering::Relaxed);
        a.v4.store(u64::from(eax & 0xff >= 4), Ordering::Relaxed);
        let ok = wr(IA32_PERF_GLOBAL_CTRL, 0)
            && wr(MSR_LBR_SELECT, LBR_SELECT_USER)
            && wr(IA32_FIXED_CTR_CTRL, FIXED0_USR_PMI)
            && wr(IA32_FIXED_CTR0, COUNTER_SPAN - period)
            && wr(IA32_DEBUGCTL, DEBUGCTL_AGENT);
        if !ok {
            return u64::MAX;
        }
        a.period.store(period, Ordering::Release);
        // SAFETY: as above; the magic goes last so the shim only reads a ring set up.
        unsafe { core::ptr::write_volatile(&raw mut (*r).magic, AGENT_RING_MAGIC) };
        if wr(IA32_PERF_GLOBAL_CTRL, GLOBAL_FIXED0) {
            0
        } else {
            u64::MAX
        }
    }

    pub(super) fn stop(cpu: usize) -> (u64, u64) {
        wr(IA32_PERF_GLOBAL_CTRL, 0);
        wr(IA32_DEBUGCTL, 0);
        wr(IA32_FIXED_CTR_CTRL, 0);
        AGENT[cpu].period.store(0, Ordering::Release);
        let r = ring(cpu);
        // SAFETY: see start.
        unsafe {
            (
                core::ptr::read_volatile(&raw const (*r).head),
                core::ptr::read_volatile(&raw const (*r).dropped),
            )
        }
    }

    fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
        let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
        // SAFETY: CPUID has no side effects; RBX (reserved by LLVM) is saved around it.
        unsafe {
            asm!("mov {b:r}, rbx", "cpuid", "xchg {b:r}, rbx",
                 b = out(reg) ebx, inout("eax") leaf => eax, inout("ecx") 0u32 => ecx,
                 out("edx") edx, options(nomem, nostack, preserves_flags));
        }
        (eax, ebx, ecx, edx)
    }

    /// The PMI on vCPU `cpu`: snapshot the frozen LBR into its ring (or count the drop
    /// when the ring is full), re-arm, ack the freeze.
    pub(super) fn on_pmi(cpu: usize, rip: u64, rsp: u64, rbp: u64) {
        let Some(status) = rd(IA32_PERF_GLOBAL_STATUS) else {
            return;
        };
        let ovf = status & OVERFLOW_BITS;
        if ovf == 0 {
            return;
        }
        let a = &AGENT[cpu];
        let depth = a.depth.load(Ordering::Relaxed) as u32;
        let r = ring(cpu);
        // SAFETY: see start; the record slot lies inside this vCPU's ring (seq % SLOTS).
        unsafe {
            let head = core::ptr::read_volatile(&raw const (*r).head);
            let tail = core::ptr::read_volatile(&raw const (*r).tail);
            let pmi = core::ptr::read_volatile(&raw const (*r).pmis);
            if head.wrapping_sub(tail) >= AGENT_RING_SLOTS {
                let d = core::ptr::read_volatile(&raw const (*r).dropped);
                core::ptr::write_volatile(&raw mut (*r).dropped, d + 1);
            } else {
                let words = agent_record_addr(cpu as u32, head) as *mut u64;
                // Word by word, no arrays: ring-0 code must not use SSE.
                core::ptr::write_volatile(words, head);
                core::ptr::write_volatile(words.add(1), pmi);
                core::ptr::write_volatile(words.add(2), rdtsc());
                core::ptr::write_volatile(words.add(3), status);
                core::ptr::write_volatile(words.add(4), rd(MSR_LBR_TOS).unwrap_or(0));
                core::ptr::write_volatile(words.add(5), u64::from(depth));
                core::ptr::write_volatile(words.add(6), rip);
                core::ptr::write_volatile(words.add(7), rsp);
                core::ptr::write_volatile(words.add(8), rbp);
                let entries = words.add(crate::abi::AGENT_RECORD_HEADER_WORDS);
                for i in 0..depth {
                    let w = entries.add(3 * i as usize);
                    core::ptr::write_volatile(w, rd(MSR_LASTBRANCH_0_FROM_IP + i).unwrap_or(0));
                    core::ptr::write_volatile(
                        w.add(1),
                        rd(MSR_LASTBRANCH_0_TO_IP + i).unwrap_or(0),
                    );
                    core::ptr::write_volatile(w.add(2), rd(MSR_LBR_INFO_0 + i).unwrap_or(0));
                }
                core::sync::atomic::fence(Ordering::Release);
                core::ptr::write_volatile(&raw mut (*r).head, head.wrapping_add(1));
            }
            core::ptr::write_volatile(&raw mut (*r).pmis, pmi + 1);
        }
        // Re-arm, then ack: the shim drains the ring on the STATUS_RESET write.
        let period = a.period.load(Ordering::Relaxed);
        wr(IA32_FIXED_CTR0, COUNTER_SPAN - period);
        if a.v4.load(Ordering::Relaxed) != 0 {
            wr(IA32_PERF_GLOBAL_STATUS_RESET, ovf | (status & FREEZE_BITS));
        } else {
            wr(IA32_PERF_GLOBAL_STATUS_RESET, ovf);
            wr(IA32_DEBUGCTL, DEBUGCTL_AGENT);
            wr(IA32_PERF_GLOBAL_CTRL, GLOBAL_FIXED0);
        }
    }
}
