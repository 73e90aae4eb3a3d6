//! The machine state of a Linux program's vCPU: a supervisor-only trap area (GDT, TSS,
//! IDT, one stub per exception vector, a ring-0 stack) and the ring-3 entry state.
//!
//! The system-call path keeps guest ring 0 to two instructions: `syscall` enters ring 0
//! at LSTAR, the stub `out 0xd0, al; sysretq`. The `out` exits to the shim, which reads
//! the call from the registers (RCX and R11 already hold the return RIP and RFLAGS, as
//! SYSCALL left them), services it and writes RAX with KVM_SET_REGS; the `sysretq` then
//! returns to ring 3. No guest kernel code runs, no segment state is reloaded from the
//! shim (KVM_SET_SREGS would reset KVM's MMU context on every call), and it is the
//! architectural path, so it works the same with hardware VMX/SVM.
//!
//! On the nested development host (guest ring 0 emulated; its KVM is the `kvm_pvm`
//! module, PVM, which runs guests without VMX), `syscall` does not raise #UD with
//! EFER.SCE clear and does not enter ring 0 with it set: it sets RCX/R11 and jumps to
//! LSTAR *in ring 3*. So the stub page is user-executable and the TSS I/O bitmap lets
//! ring 3 use port 0xd0 (only that one): the stub's `out` then exits straight from ring
//! 3, with no guest ring-0 instruction at all, and the shim resumes the program itself
//! (RIP = RCX, RFLAGS = R11) instead of letting `sysretq` fault in ring 3. Which of the
//! two the vCPU does is read from CS at the first system call ([`SyscallMode`]).
//! A program that executes `out 0xd0` itself only makes a system call.
//!
//! Exceptions go through their own stubs (`out 0xe0 + vector, al; iretq`) on the IST1
//! stack and end the program with the signal Linux would send.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

use crate::arch::{
    CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PAE, EFER_LMA,
    EFER_LME, PTE_P, PTE_RW, PTE_US, RFLAGS_RESERVED, SEG_TYPE_CODE_XR_ACCESSED,
    SEG_TYPE_DATA_RW_ACCESSED, SEG_TYPE_TSS_BUSY,
};
use crate::boot::segment;
use crate::linux::abi::*;
use crate::linux::errno::Errno;
use crate::linux::mm::{AddressSpace, PTE_NX};
use crate::linux::signal::{FpuImage, MAX_XSTATE, XFEATURES_X87_SSE, XSAVE_HEADER};
use crate::memory::GuestPhysAddr;
use crate::xsave;

/// IA32_EFER.SCE: SYSCALL/SYSRET enabled.
pub const EFER_SCE: u64 = 1 << 0;
/// IA32_EFER.NXE: execute-disable bits in page tables are honoured.
pub const EFER_NXE: u64 = 1 << 11;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// One vCPU's TSS and ring-0 stack (each vCPU has its own: traps on two vCPUs at once
/// must not push their frames onto one stack), to read trap frames without a page walk.
#[derive(Clone, Copy, Debug)]
pub struct TrapArea {
    pub stack_phys: GuestPhysAddr,
    /// The stub page's frame: one for every process of the VM (see [`build_trap_area`]).
    pub stubs: GuestPhysAddr,
    /// Guest-virtual address of the ring-0 stack's page.
    pub stack: u64,
    /// Guest-virtual address of the TSS (TR.base).
    pub tss: u64,
}

impl TrapArea {
    /// Guest-virtual top of the ring-0 stack (TSS.RSP0 and IST1).
    pub fn stack_top(&self) -> u64 {
        self.stack + PAGE
    }

    /// Guest-physical address of ring-0 stack address `va`, if it is on that stack.
    pub fn stack_phys_of(&self, va: u64, len: u64) -> Option<GuestPhysAddr> {
        let base = self.stack;
        let end = va.checked_add(len)?;
        (va >= base && end <= base + PAGE).then(|| GuestPhysAddr(self.stack_phys.0 + (va - base)))
    }
}

/// The TSS: RSP0 and IST1 at `stack_top`, the I/O bitmap letting ring 3 reach only the
/// system-call ports.
fn tss_bytes(stack_top: u64) -> Vec<u8> {
    let mut t = vec![0xffu8; (TSS_LIMIT + 1) as usize];
    t[..TSS_IOMAP_BASE as usize].fill(0);
    t[4..12].copy_from_slice(&stack_top.to_le_bytes());
    for port in [TRAP_PORT_SYSCALL, TRAP_PORT_NULL] {
        let port = usize::from(port);
        t[TSS_IOMAP_BASE as usize + port / 8] &= !(1 << (port % 8));
    }
    // IST1 (offset 0x24): every gate uses it, so a trap taken in ring 0 (the syscall
    // stub runs on the program's stack) still lands on the trap stack.
    t[0x24..0x2c].copy_from_slice(&stack_top.to_le_bytes());
    t[0x66..0x68].copy_from_slice(&(TSS_IOMAP_BASE as u16).to_le_bytes());
    t
}

/// A TSS and ring-0 stack for the vCPU of thread number `slot` (1 and up; the first
/// thread's are in the trap area), supervisor-only, past the trap area's pages.
pub fn build_thread_trap(mm: &mut AddressSpace, slot: u64) -> Result<TrapArea, Errno> {
    let tss = TRAP_AREA.0 + (TRAP_PAGES + 2 * slot) * PAGE;
    let stack = tss + PAGE;
    let tss_frame = mm.alloc_frame()?;
    let stack_frame = mm.alloc_frame()?;
    mm.map_page(tss, tss_frame, PTE_P | PTE_RW | PTE_NX)?;
    mm.map_page(stack, stack_frame, PTE_P | PTE_RW | PTE_NX)?;
    mm.memory()
        .write(tss_frame, &tss_bytes(stack + PAGE))
        .map_err(|_| Errno::EFAULT)?;
    Ok(TrapArea {
        stack_phys: stack_frame,
        stubs: mm.trap_stubs().unwrap_or(GuestPhysAddr(0)),
        stack,
        tss,
    })
}

/// The stub page's code, from its start: one [`STUB_SLOT`] per exception vector
/// (`out TRAP_PORT_BASE + v, al; iretq`: E6 ib, 48 CF), one for every vector from 32 up
/// (port [`TRAP_PORT_OTHER`]), then the SYSCALL entry (`out TRAP_PORT_SYSCALL, al;
/// sysretq`: E6 ib, 48 0F 07) at [`SYSCALL_SLOT`]; zeros between stubs.
pub fn stub_code() -> Vec<u8> {
    let mut code = vec![0u8; ((SYSCALL_SLOT + 1) * STUB_SLOT) as usize];
    let mut put = |slot: u64, bytes: &[u8]| {
        let at = (slot * STUB_SLOT) as usize;
        code[at..at + bytes.len()].copy_from_slice(bytes);
    };
    for v in 0..=32u64 {
        let port = if v < 32 {
            TRAP_PORT_BASE + v as u16
        } else {
            TRAP_PORT_OTHER
        };
        put(v, &[0xe6, port as u8, 0x48, 0xcf]);
    }
    put(
        SYSCALL_SLOT,
        &[0xe6, TRAP_PORT_SYSCALL as u8, 0x48, 0x0f, 0x07],
    );
    code
}

fn descriptor(access: u64, flags: u64) -> u64 {
    0xffff | (0xf << 48) | (access << 40) | (flags << 52)
}

/// Build the trap area in `mm` (see the module doc). `stubs`: the stub page of the VM's
/// other processes, mapped here too (None: the first process's, made here). Every
/// process shares the one stub page, so a patch made to a handler there (the emulated
/// LBR's #DB/#BP traps, see `pmu::kvm_hook`) holds in every process.
pub fn build_trap_area(
    mm: &mut AddressSpace,
    stubs: Option<GuestPhysAddr>,
) -> Result<TrapArea, Errno> {
    let mut frames = [GuestPhysAddr(0); TRAP_PAGES as usize];
    for (i, f) in frames.iter_mut().enumerate() {
        *f = match stubs {
            Some(s) if i as u64 == TRAP_STUBS => s,
            _ => mm.alloc_frame()?,
        };
        // The stub page is user-executable (see the module doc) and read-only; its
        // stubs' ports are denied to ring 3 except the system-call port.
        let flags = if i as u64 == TRAP_STUBS {
            PTE_P | PTE_US
        } else {
            PTE_P | PTE_RW | PTE_NX
        };
        mm.map_page(TRAP_AREA.0 + i as u64 * PAGE, *f, flags)?;
    }
    let mem = mm.memory();
    let w = |pa: GuestPhysAddr, off: u64, v: u64| {
        mem.write_u64(GuestPhysAddr(pa.0 + off), v)
            .map_err(|_| Errno::EFAULT)
    };
    // GDT (Linux's layout, see abi).
    let tss_va = TRAP_AREA.0 + TRAP_TSS * PAGE;
    let tss_limit = TSS_LIMIT;
    let gdt = frames[TRAP_GDT as usize];
    w(gdt, u64::from(KERNEL_CS), descriptor(0x9b, 0xa))?;
    w(gdt, u64::from(KERNEL_DS), descriptor(0x93, 0xc))?;
    w(gdt, u64::from(USER32_CS & !3), descriptor(0xfb, 0xc))?;
    w(gdt, u64::from(USER_DS & !3), descriptor(0xf3, 0xc))?;
    w(gdt, u64::from(USER_CS & !3), descriptor(0xfb, 0xa))?;
    let tss_low =
        tss_limit | ((tss_va & 0xff_ffff) << 16) | (0x89 << 40) | (((tss_va >> 24) & 0xff) << 56);
    w(gdt, u64::from(TSS_SEL), tss_low)?;
    w(gdt, u64::from(TSS_SEL) + 8, tss_va >> 32)?;
    let area = TrapArea {
        stack_phys: frames[TRAP_STACK as usize],
        stubs: frames[TRAP_STUBS as usize],
        stack: TRAP_AREA.0 + TRAP_STACK * PAGE,
        tss: tss_va,
    };
    let tss = frames[TRAP_TSS as usize];
    mem.write(tss, &tss_bytes(area.stack_top()))
        .map_err(|_| Errno::EFAULT)?;
    let shared = stubs.is_some();
    let stubs = frames[TRAP_STUBS as usize];
    if !shared {
        mem.write(stubs, &stub_code()).map_err(|_| Errno::EFAULT)?;
    }
    // IDT: 64-bit interrupt gates (type 0xE, DPL 0, IST1) to the stubs.
    let idt = frames[TRAP_IDT as usize];
    for v in 0..256u64 {
        let target = TRAP_AREA.0 + TRAP_STUBS * PAGE + v.min(32) * STUB_SLOT;
        let low = (target & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (1 << 32)
            | (0x8e << 40)
            | (((target >> 16) & 0xffff) << 48);
        w(idt, v * 16, low)?;
        w(idt, v * 16 + 8, target >> 32)?;
    }
    // The stub page lives as long as the VM: no address space frees it.
    mm.share_stubs(stubs);
    map_vsyscall(mm)?;
    Ok(area)
}

/// The legacy vsyscall page at [`VSYSCALL_PAGE`], as Linux's `vsyscall=native` had it:
/// `mov $nr, %rax; syscall; ret` for gettimeofday (+0), time (+0x400) and getcpu
/// (+0x800), int3 everywhere else. A call into it is an ordinary system call from a
/// user-executable, read-only page (what `vsyscall=emulate` gives a program, without
/// the fault). The page is the address space's own (freed with it).
fn map_vsyscall(mm: &mut AddressSpace) -> Result<(), Errno> {
    let mut page = vec![0xccu8; PAGE as usize];
    for (off, nr) in [
        (0x000, libc::SYS_gettimeofday),
        (0x400, libc::SYS_time),
        (0x800, libc::SYS_getcpu),
    ] {
        let n = (nr as u32).to_le_bytes();
        let code = [0x48, 0xc7, 0xc0, n[0], n[1], n[2], n[3], 0x0f, 0x05, 0xc3];
        page[off..off + code.len()].copy_from_slice(&code);
    }
    let frame = mm.alloc_frame()?;
    mm.memory().write(frame, &page).map_err(|_| Errno::EFAULT)?;
    mm.map_page(VSYSCALL_PAGE, frame, PTE_P | PTE_US)
}

/// XCR0 bit of AVX's state (YMM upper halves).
const XFEATURE_AVX: u64 = 1 << 2;
/// CPUID.1:ECX.XSAVE.
const CPUID_1_ECX_XSAVE: u32 = 1 << 26;

/// The XCR0 a program's vCPUs run with (CR4.OSXSAVE set), with `cpuid` (the table they
/// will be given) made to offer XSAVE: x87, SSE and AVX where the host's kernel enabled
/// AVX (`xgetbv`) and KVM can give it (leaf 0xD). `None` when the host has no XSAVE: the
/// program sees no AVX, as on such a CPU. With XCR0 left at x87|SSE, CPUID answers
/// OSXSAVE = 0 and the program's libraries take their SSE2 code on a host with AVX2.
/// (KVM under PVM, nested, leaves XSAVE out of its supported leaf 1 although leaf 0xD
/// offers the components; without the bit KVM refuses CR4.OSXSAVE.)
///
/// AVX-512 stays off in XCR0, so libraries find it unusable and take their AVX2 code, as
/// under valgrind: the shim's interpreter (the emulated LBR's windows, exact mode) runs
/// no EVEX instructions. Where the guest's ring 3 runs on the host's XCR0 (PVM), its
/// XGETBV still shows AVX-512 and libraries use it; the interpreter hands those
/// instructions to breakpoints (exact, slower).
pub fn program_xcr0(cpuid: &mut [kvm_bindings::kvm_cpuid_entry2]) -> Option<u64> {
    if std::arch::x86_64::__cpuid(1).ecx & CPUID_1_ECX_XSAVE == 0 {
        return None;
    }
    let d = cpuid.iter().find(|e| e.function == 0xd && e.index == 0)?;
    let offered = u64::from(d.eax) | u64::from(d.edx) << 32;
    let leaf1 = cpuid.iter_mut().find(|e| e.function == 1 && e.index == 0)?;
    leaf1.ecx |= CPUID_1_ECX_XSAVE;
    Some((offered & crate::linux::host::xcr0() & XFEATURE_AVX) | XFEATURES_X87_SSE)
}

/// XCR0's AVX-512 components: opmask, ZMM_Hi256, Hi16_ZMM.
const XFEATURES_AVX512: u64 = 0b111 << 5;

/// Whether a program will see AVX-512 as usable whatever XCR0 the shim gives its vCPUs:
/// where the host runs guest ring 3 natively on its own XCR0 (the `kvm_pvm` module, as on
/// the nested development host) and that XCR0 enables AVX-512 state, the program's
/// XGETBV reads the host's, and glibc picks its EVEX functions, which the shim's
/// interpreter does not run. Elsewhere [`program_xcr0`] already hides AVX-512.
pub fn guest_sees_host_avx512() -> bool {
    crate::linux::host::xcr0() & XFEATURES_AVX512 == XFEATURES_AVX512
        && std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// The XCR0 a vCPU that ran a program keeps for the next thread it runs (`None` when
/// it runs without CR4.OSXSAVE): [`program_xcr0`] as it was given; ring 3 cannot change it.
pub fn kept_xcr0(vcpu: &VcpuFd) -> Option<u64> {
    let cr4 = vcpu.get_sregs().ok()?.cr4;
    (cr4 & crate::arch::CR4_OSXSAVE != 0).then(|| guest_xcr0(vcpu))
}

/// XCR0 bits of the user state a signal frame carries: x87, SSE, AVX, MPX, AVX-512 and
/// PKRU. (AMX tile data, enabled on request only, would not fit `kvm_xsave`.)
const USER_XFEATURES: u64 = 0x2ff;
const XFEATURE_PKRU: u64 = 1 << 9;

/// The end of the last component of `features` in the standard XSAVE layout (CPUID leaf
/// 0xD: sub-leaf i gives component i's size in EAX and offset in EBX, read once), at
/// least the legacy region and header, at most what `kvm_xsave` holds.
fn xstate_size(features: u64) -> usize {
    static ENDS: std::sync::OnceLock<[usize; 63]> = std::sync::OnceLock::new();
    let ends = ENDS.get_or_init(|| {
        std::array::from_fn(|i| match i {
            0 | 1 => 0,
            _ => {
                let leaf = std::arch::x86_64::__cpuid_count(0xd, i as u32);
                leaf.ebx as usize + leaf.eax as usize
            }
        })
    });
    let last = (2..63)
        .filter(|&i| features & (1 << i) != 0)
        .map(|i| ends[i]);
    last.fold(XSAVE_HEADER + 64, usize::max).min(MAX_XSTATE)
}

/// The guest's XCR0 (x87 and SSE when KVM does not say).
fn guest_xcr0(vcpu: &VcpuFd) -> u64 {
    vcpu.get_xcrs()
        .ok()
        .and_then(|x| {
            let n = (x.nr_xcrs as usize).min(x.xcrs.len());
            x.xcrs[..n].iter().find(|r| r.xcr == 0).map(|r| r.value)
        })
        .unwrap_or(XFEATURES_X87_SSE)
}

/// `AT_MINSIGSTKSZ`: the most one signal frame takes on a stack (the frame, its FPU
/// area with magic2, up to 63 + 15 bytes of alignment and the pretcode slot), as Linux
/// derives it from its XSAVE size; at least the 2048 bytes of `MINSIGSTKSZ`.
pub fn min_signal_stack() -> u64 {
    let features = (crate::linux::host::xcr0() & USER_XFEATURES) | XFEATURES_X87_SSE;
    let fpu = xstate_size(features) as u64 + 4;
    (crate::linux::signal::SIGFRAME_BYTES + fpu + 128).max(2048)
}

/// The XSAVE components of a program's state: the guest's XCR0 as KVM keeps it, and the
/// host's, since a host that runs guest ring 3 natively (nested, `kvm_pvm`) runs it with
/// the host's XCR0 whatever the guest's says (the program sees AVX there). On other
/// hosts the extra components stay in their initial state: frames carry them unused.
fn program_xfeatures(vcpu: &VcpuFd) -> u64 {
    ((guest_xcr0(vcpu) | crate::linux::host::xcr0()) & USER_XFEATURES) | XFEATURES_X87_SSE
}

/// The vCPU's FPU state as a signal frame saves it: the XSAVE area of the user
/// components the program can use (KVM_GET_FPU would leave MXCSR and AVX out).
pub fn fpu_image(vcpu: &VcpuFd) -> Result<FpuImage, kvm_ioctls::Error> {
    let mut area = xsave::read(vcpu)?;
    let features = program_xfeatures(vcpu);
    area.truncate(xstate_size(features));
    Ok(FpuImage { area, features })
}

/// Load `image` as the vCPU's FPU state: its bytes over the vCPU's XSAVE area (but the
/// software-reserved bytes, which are not state), XSTATE_BV from the image limited to
/// its features, with x87 and SSE always loaded: a component the image leaves out (a
/// legacy image: everything but x87/SSE) goes back to its initial state, as Linux's
/// restore of such a frame does.
pub fn set_fpu_image(vcpu: &VcpuFd, image: &FpuImage) -> Result<(), kvm_ioctls::Error> {
    let current = xsave::read(vcpu)?;
    let mut bytes = current.clone();
    let len = image.area.len().min(MAX_XSTATE).min(bytes.len());
    bytes[..len].copy_from_slice(&image.area[..len]);
    bytes[464..XSAVE_HEADER].copy_from_slice(&current[464..XSAVE_HEADER]);
    let at = XSAVE_HEADER;
    let word = |b: &[u8]| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    // PKRU is not FPU state to a program: an image without it (the handler's initial
    // state, a legacy frame) leaves the thread's protection keys as they are.
    let kept = word(&current) & XFEATURE_PKRU & !image.features;
    let bv = (word(&bytes) & image.features) | XFEATURES_X87_SSE | kept;
    bytes[at..at + 8].copy_from_slice(&bv.to_le_bytes());
    // XCOMP_BV and the reserved words: zero in the standard format KVM takes.
    bytes[at + 8..at + 64].fill(0);
    xsave::write(vcpu, &bytes)
}

/// Where `syscall` leaves the vCPU on this host (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallMode {
    /// Ring 0 at LSTAR (the architecture): the stub's `sysretq` returns.
    Ring0,
    /// Ring 3 at LSTAR (nested hosts that emulate ring 0): the shim returns.
    Ring3,
}

/// The SYSCALL entry point (LSTAR).
pub fn syscall_entry() -> u64 {
    TRAP_AREA.0 + TRAP_STUBS * PAGE + SYSCALL_SLOT * STUB_SLOT
}

/// The MSRs of the SYSCALL path: (index, value).
pub fn syscall_msrs() -> [(u32, u64); 3] {
    [
        (MSR_STAR, STAR_VALUE),
        (MSR_LSTAR, syscall_entry()),
        (MSR_SYSCALL_MASK, SYSCALL_MASK_VALUE),
    ]
}

/// The program's CS and SS, as an IRETQ to ring 3 loads them (the other segments, FS
/// and GS bases among them, stay as they are).
pub fn user_cs_ss(sregs: &mut kvm_sregs) {
    sregs.cs = segment(USER_CS, SEG_TYPE_CODE_XR_ACCESSED, 3, true);
    sregs.ss = segment(USER_DS, SEG_TYPE_DATA_RW_ACCESSED, 3, false);
}

/// Ring 3, long mode, the program's page tables, SYSCALL enabled, the TSS at `tss`.
pub fn user_sregs(sregs: &mut kvm_sregs, cr3: u64, tss: u64) {
    user_cs_ss(sregs);
    let data = sregs.ss;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.tr = kvm_segment {
        base: tss,
        limit: TSS_LIMIT as u32,
        selector: TSS_SEL,
        type_: SEG_TYPE_TSS_BUSY,
        present: 1,
        s: 0,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = TRAP_AREA.0 + TRAP_GDT * PAGE;
    sregs.gdt.limit = (GDT_ENTRIES * 8 - 1) as u16;
    sregs.idt.base = TRAP_AREA.0 + TRAP_IDT * PAGE;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    // CR4.OSXSAVE stays as set up with the vCPU's XCR0 ([`program_xcr0`]).
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | (sregs.cr4 & crate::arch::CR4_OSXSAVE);
    sregs.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
}

/// Registers at the program's entry: RSP at argc, RDX 0 (no atexit function), IF set.
pub fn entry_regs(entry: u64, sp: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: sp,
        rflags: RFLAGS_RESERVED | RFLAGS_IF,
        ..Default::default()
    }
}

/// The frame the CPU pushed on the ring-0 stack when a trap left ring 3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapFrame {
    pub error_code: Option<u64>,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// Parse the words at the stack pointer (the error code first when the vector has
    /// one).
    pub fn parse(vector: u8, words: &[u64; 6]) -> TrapFrame {
        let (error_code, w) = if has_error_code(vector) {
            (Some(words[0]), &words[1..6])
        } else {
            (None, &words[0..5])
        };
        TrapFrame {
            error_code,
            rip: w[0],
            cs: w[1],
            rflags: w[2],
            rsp: w[3],
            ss: w[4],
        }
    }

    /// Whether the trap came from ring 3.
    pub fn from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// The signal Linux sends for an exception from ring 3, and its name.
pub fn signal_for(vector: u8) -> (i32, &'static str) {
    match vector {
        VEC_DE | VEC_MF | VEC_XM => (libc::SIGFPE, "SIGFPE"),
        VEC_DB | VEC_BP => (libc::SIGTRAP, "SIGTRAP"),
        VEC_UD => (libc::SIGILL, "SIGILL"),
        VEC_AC => (libc::SIGBUS, "SIGBUS"),
        VEC_GP | VEC_PF => (libc::SIGSEGV, "SIGSEGV"),
        _ => (libc::SIGSEGV, "SIGSEGV"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn trap_frames_with_and_without_error_codes() {
        let w = [1, 2, 3, 4, 5, 6];
        let f = TrapFrame::parse(VEC_UD, &w);
        assert_eq!((f.error_code, f.rip, f.rsp, f.ss), (None, 1, 4, 5));
        let f = TrapFrame::parse(VEC_PF, &w);
        assert_eq!((f.error_code, f.rip, f.rsp, f.ss), (Some(1), 2, 5, 6));
        assert!(
            TrapFrame {
                cs: u64::from(USER_CS),
                ..Default::default()
            }
            .from_user()
        );
        assert!(
            !TrapFrame {
                cs: u64::from(KERNEL_CS),
                ..Default::default()
            }
            .from_user()
        );
    }

    #[test]
    fn the_trap_area_is_supervisor_only_and_the_stubs_exit_then_return() {
        let mem = Arc::new(crate::memory::GuestMemory::new(8 << 20).unwrap());
        let mut mm = AddressSpace::new(mem.clone(), 1 << 20).unwrap();
        let area = build_trap_area(&mut mm, None).unwrap();
        let mut b = [0u8; 4];
        // Not the program's memory as far as system-call arguments go.
        assert!(mm.read(TRAP_AREA, &mut b).is_err());
        assert!(
            mm.read(crate::memory::GuestVirtAddr(syscall_entry()), &mut b)
                .is_err()
        );
        // The #UD stub, through the CPU's page walk.
        let stub = TRAP_AREA.0 + TRAP_STUBS * PAGE + u64::from(VEC_UD) * STUB_SLOT;
        let pa = mem
            .translate(mm.cr3(), crate::memory::GuestVirtAddr(stub))
            .unwrap();
        mem.read(pa, &mut b).unwrap();
        assert_eq!(b, [0xe6, 0xe6, 0x48, 0xcf]);
        let top = area.stack_top();
        assert!(area.stack_phys_of(top - 40, 40).is_some());
        assert!(area.stack_phys_of(top - 8, 16).is_none());
        assert!(area.stack_phys_of(u64::MAX - 4, 8).is_none());
        // The vsyscall page: time() at +0x400 is `mov $201, %rax; syscall; ret`.
        let pa = mem
            .translate(
                mm.cr3(),
                crate::memory::GuestVirtAddr(VSYSCALL_PAGE + 0x400),
            )
            .unwrap();
        let mut code = [0u8; 11];
        mem.read(pa, &mut code).unwrap();
        assert_eq!(
            code,
            [0x48, 0xc7, 0xc0, 201, 0, 0, 0, 0x0f, 0x05, 0xc3, 0xcc]
        );
    }
}
