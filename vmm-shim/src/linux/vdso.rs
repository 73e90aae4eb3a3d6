//! The program's vDSO: a small ELF shared object the shim maps into every process (and
//! again after `execve`), announced with `AT_SYSINFO_EHDR`, so that libc and Go's runtime
//! read the clocks without leaving the VM.
//!
//! On a host that emulates guest ring 0 every system call is a VM exit (tens of µs), and
//! programs read the clock a lot: `python3 -c pass` makes 226 `clock_gettime` calls of its
//! 587 system calls. Linux answers those from its vDSO in user space; so do we. The guest's
//! ring 3 runs natively, `rdtsc` included, so the functions here compute the time from the
//! TSC and a data page the shim keeps current from the host ([`super::vclock`]).
//!
//! ```text
//!  VDSO_BASE - PAGE  [vvar]  one read-only data page (the shim writes it from the host):
//!                      +0    u32 sequence count, odd while the shim updates the page
//!                      +64   for each clock id 0..=MAX_CLOCK, 32 bytes:
//!                              u64 cycle_base  guest TSC at the anchor
//!                              u64 ns_base     the clock's value then, in ns
//!                              u64 mult        ns = ns_base + ((tsc - cycle_base) * mult >> shift)
//!                              u64 shift       (mult 0: not served here, make the system call)
//!  VDSO_BASE         [vdso]  the ELF image, read-only and executable:
//!                      ELF header, PT_LOAD (all of it) / PT_DYNAMIC / PT_NOTE /
//!                      PT_GNU_EH_FRAME
//!                      .hash .dynsym .dynstr .gnu.version .gnu.version_d .dynamic
//!                      .note (GNU build-id) .eh_frame_hdr .eh_frame (CFI: CFA = rsp+8)
//!                      .text at TEXT_OFFSET  section headers
//! ```
//!
//! The image is laid out like Linux's x86-64 vDSO (SONAME `linux-vdso.so.1`, base address
//! 0, no relocations) and exports what it exports, each `__vdso_NAME` with a weak `NAME`
//! alias, all of version `LINUX_2.6` (glibc's `dl_vdso_vsym` and Go's
//! `vdso_linux_amd64.go` look them up by that version):
//! `clock_gettime`, `gettimeofday` and `time` take the fast path for the clocks the data
//! page serves; `clock_getres`, `getcpu` (the vCPU a thread runs on is not known in ring 3
//! here: RDTSCP/RDPID read the host's TSC_AUX under some hypervisors) and every clock or
//! argument the fast path does not serve (CPU-time clocks, bad ids, a time zone) make the
//! `syscall` the libc would have made. When the data page serves no clock (pinned clocks in
//! exact mode, a TSC the host does not trust) every function is that system call.
//!
//! The code is assembled with iced-x86's code assembler and the ELF written with the
//! `object` crate's writer, once per lbrprof process ([`image`]).

use std::sync::OnceLock;

use iced_x86::code_asm::*;
use object::elf;
use object::write::elf::{ProgramHeader, SectionHeader, Sym, Verdef, Writer};

use crate::linux::abi::{MMAP_TOP, PAGE};
use crate::linux::elf_image;
use crate::linux::errno::Errno;
use crate::linux::frames::FramePool;
use crate::linux::mm::{AddressSpace, Prot};
use crate::linux::shm::{SharedObject, ShmRef};
use crate::linux::vclock::{VClock, vvar};
use crate::memory::GuestMemory;
use std::sync::Arc;

/// Where the data page goes (the vDSO image is the page after it): the top of the mmap
/// area, below the stack, where Linux without ASLR puts them too.
pub const VVAR_BASE: u64 = MMAP_TOP;
/// Where the vDSO image goes (`AT_SYSINFO_EHDR`).
pub const VDSO_BASE: u64 = VVAR_BASE + PAGE;

/// File offset (= address offset) of `.text` in the image.
const TEXT_OFFSET: u64 = 0x800;

/// System call numbers the functions fall back to.
const SYS_GETTIMEOFDAY: u32 = libc::SYS_gettimeofday as u32;
const SYS_TIME: u32 = libc::SYS_time as u32;
const SYS_CLOCK_GETTIME: u32 = libc::SYS_clock_gettime as u32;
const SYS_CLOCK_GETRES: u32 = libc::SYS_clock_getres as u32;
const SYS_GETCPU: u32 = libc::SYS_getcpu as u32;

const CLOCK_REALTIME: u32 = libc::CLOCK_REALTIME as u32;

/// The functions the image exports, by their unprefixed name.
pub const FUNCTIONS: [&str; 5] = [
    "clock_gettime",
    "gettimeofday",
    "time",
    "clock_getres",
    "getcpu",
];

/// The version every symbol has.
pub const VERSION: &str = "LINUX_2.6";
/// The image's SONAME (the base version's name).
pub const SONAME: &str = "linux-vdso.so.1";

/// The generated image.
#[derive(Debug)]
pub struct Image {
    /// The ELF file, as mapped at [`VDSO_BASE`].
    pub bytes: Vec<u8>,
    /// Its GNU build-id (a hash of its code).
    pub build_id: Vec<u8>,
}

impl Image {
    /// Pages the image takes.
    pub fn pages(&self) -> u64 {
        (self.bytes.len() as u64).div_ceil(PAGE)
    }
}

/// The vDSO image (built on first use).
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| build().expect("the vDSO image is built from constants"))
}

/// The vDSO of a VM's processes: the frames of the image and of the data page, shared
/// by every process (each maps them, read-only), and the clocks the shim keeps there.
#[derive(Debug)]
pub struct Vdso {
    code: Arc<SharedObject>,
    data: Arc<SharedObject>,
    pub clock: VClock,
}

impl Vdso {
    /// The image in fresh frames of `pool`, and a data page that serves no clock yet.
    pub fn new(mem: Arc<GuestMemory>, pool: FramePool) -> Result<Vdso, Errno> {
        let img = image();
        let code = SharedObject::anonymous(mem.clone(), pool.clone());
        for (i, chunk) in img.bytes.chunks(PAGE as usize).enumerate() {
            let f = code.frame(i as u64)?;
            mem.write(f, chunk).map_err(|_| Errno::EFAULT)?;
        }
        let data = SharedObject::anonymous(mem.clone(), pool);
        let page = data.frame(0)?;
        Ok(Vdso {
            code,
            data,
            clock: VClock::new(mem, page),
        })
    }

    /// Map `[vvar]` and `[vdso]` into `mm`; the image's address (`AT_SYSINFO_EHDR`).
    pub fn map(&self, mm: &mut AddressSpace) -> Result<u64, Errno> {
        let read = Prot(libc::PROT_READ as u32);
        let exec = Prot((libc::PROT_READ | libc::PROT_EXEC) as u32);
        let shm = |obj: &Arc<SharedObject>| ShmRef {
            obj: obj.clone(),
            offset: 0,
            may_write: false,
        };
        mm.map_special(VVAR_BASE, PAGE, read, shm(&self.data), "[vvar]")?;
        mm.map_special(
            VDSO_BASE,
            image().pages() * PAGE,
            exec,
            shm(&self.code),
            "[vdso]",
        )?;
        Ok(VDSO_BASE)
    }
}

/// Why the image could not be built (a bug: it is built from constants).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("assembling the vDSO code: {0}")]
    Asm(#[from] iced_x86::IcedError),
    #[error("writing the vDSO ELF: {0}")]
    Elf(#[from] object::write::Error),
    #[error("the vDSO headers overflow into .text")]
    Layout,
}

/// The code and where each function starts in it (offsets from `.text`).
struct Code {
    bytes: Vec<u8>,
    /// (name without prefix, offset, size), in [`FUNCTIONS`] order.
    functions: Vec<(&'static str, u64, u64)>,
}

/// At `label`: system call `nr` with the caller's arguments, and return its result.
fn system_call(
    a: &mut CodeAssembler,
    label: &mut CodeLabel,
    nr: u32,
) -> Result<(), iced_x86::IcedError> {
    a.set_label(label)?;
    a.mov(eax, nr)?;
    a.syscall()?;
    a.ret()
}

/// `ns` in rax → seconds in rax, nanoseconds in rdx (clobbers rcx).
fn split_ns(a: &mut CodeAssembler) -> Result<(), iced_x86::IcedError> {
    a.xor(edx, edx)?;
    a.mov(ecx, 1_000_000_000u32)?;
    a.div(rcx)
}

/// The clock read, inlined in each function (so a profile names the function, and no
/// call frame is in between): clock id in eax (at most MAX_CLOCK); falls through with the
/// clock in ns in rax, or jumps to `unserved` when the data page does not serve it.
/// Clobbers rcx, rdx, r8-r11; keeps rdi and rsi. `text` labels the start of `.text`.
fn read_ns(
    a: &mut CodeAssembler,
    text: CodeLabel,
    unserved: CodeLabel,
) -> Result<(), iced_x86::IcedError> {
    // The data page, from the address of .text (both are fixed in the image's layout).
    let vvar_from_text = (TEXT_OFFSET + PAGE) as i32;
    let (mut retry, mut pause, mut positive) =
        (a.create_label(), a.create_label(), a.create_label());
    a.lea(r8, ptr(text))?;
    a.sub(r8, vvar_from_text)?;
    a.mov(r9d, eax)?;
    a.shl(r9, 5)?;
    a.lea(r9, ptr(r8 + r9 + vvar::CLOCKS as i32))?;
    a.jmp(retry)?;
    a.set_label(&mut pause)?;
    a.pause()?;
    a.set_label(&mut retry)?;
    a.mov(r10d, dword_ptr(r8 + vvar::SEQ as i32))?;
    a.test(r10d, 1)?;
    a.jnz(pause)?;
    a.mov(r11, qword_ptr(r9 + vvar::MULT as i32))?;
    a.test(r11, r11)?;
    a.jz(unserved)?;
    a.mov(rcx, qword_ptr(r9 + vvar::SHIFT as i32))?;
    // rdtsc is not ordered with the loads above without a fence (Linux's rdtsc_ordered).
    a.lfence()?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.sub(rax, qword_ptr(r9 + vvar::CYCLE_BASE as i32))?;
    // A TSC a little behind the anchor (another vCPU's): the anchor's time.
    a.jae(positive)?;
    a.xor(eax, eax)?;
    a.set_label(&mut positive)?;
    a.mul(r11)?;
    a.shrd(rax, rdx, cl)?;
    a.add(rax, qword_ptr(r9 + vvar::NS_BASE as i32))?;
    a.cmp(r10d, dword_ptr(r8 + vvar::SEQ as i32))?;
    a.jne(retry)
}

/// Assemble the functions (see the module doc for what each does).
fn assemble() -> Result<Code, iced_x86::IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut labels = [(); 5].map(|()| a.create_label());
    // clock_gettime is the first function: its label is also the start of .text.
    let text = labels[0];

    // clock_gettime(clockid_t rdi, struct timespec *rsi)
    {
        let mut sys = a.create_label();
        a.set_label(&mut labels[0])?;
        a.cmp(edi, vvar::MAX_CLOCK)?;
        a.ja(sys)?;
        a.mov(eax, edi)?;
        read_ns(&mut a, text, sys)?;
        split_ns(&mut a)?;
        a.mov(qword_ptr(rsi), rax)?;
        a.mov(qword_ptr(rsi + 8), rdx)?;
        a.xor(eax, eax)?;
        a.ret()?;
        system_call(&mut a, &mut sys, SYS_CLOCK_GETTIME)?;
    }
    // gettimeofday(struct timeval *rdi, struct timezone *rsi)
    {
        let mut sys = a.create_label();
        a.set_label(&mut labels[1])?;
        a.test(rsi, rsi)?;
        a.jnz(sys)?;
        a.test(rdi, rdi)?;
        a.jz(sys)?;
        a.mov(eax, CLOCK_REALTIME)?;
        read_ns(&mut a, text, sys)?;
        split_ns(&mut a)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(rax, rdx)?;
        a.xor(edx, edx)?;
        a.mov(ecx, 1000u32)?;
        a.div(rcx)?;
        a.mov(qword_ptr(rdi + 8), rax)?;
        a.xor(eax, eax)?;
        a.ret()?;
        system_call(&mut a, &mut sys, SYS_GETTIMEOFDAY)?;
    }
    // time(time_t *rdi)
    {
        let (mut sys, mut done) = (a.create_label(), a.create_label());
        a.set_label(&mut labels[2])?;
        a.mov(eax, CLOCK_REALTIME)?;
        read_ns(&mut a, text, sys)?;
        split_ns(&mut a)?;
        a.test(rdi, rdi)?;
        a.jz(done)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.set_label(&mut done)?;
        a.ret()?;
        system_call(&mut a, &mut sys, SYS_TIME)?;
    }
    // clock_getres and getcpu: the system call.
    for (label, nr) in labels[3..].iter_mut().zip([SYS_CLOCK_GETRES, SYS_GETCPU]) {
        system_call(&mut a, label, nr)?;
    }
    let mut end = a.create_label();
    a.set_label(&mut end)?;
    a.nop()?;

    let r = a.assemble_options(
        TEXT_OFFSET,
        iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let mut starts = Vec::new();
    for l in labels.iter().chain([&end]) {
        starts.push(r.label_ip(l)? - TEXT_OFFSET);
    }
    let functions = FUNCTIONS
        .iter()
        .zip(starts.windows(2))
        .map(|(&name, w)| (name, w[0], w[1] - w[0]))
        .collect();
    let mut bytes = r.inner.code_buffer;
    // The trailing nop only marked the end.
    bytes.pop();
    Ok(Code { bytes, functions })
}

/// `.eh_frame` (at address `frame`) and `.eh_frame_hdr` (at `hdr`) for `functions`
/// (name, offset in `.text`, size; `.text` at `text`), so unwinders (libgcc's, gdb's, a
/// profiler's) step out of them as out of Linux's vDSO. No function moves rsp (no push,
/// no frame), so one rule holds at every instruction: CFA = rsp + 8, the return address
/// at CFA - 8. One CIE, an FDE per function, the header's search table sorted by address.
fn unwind_tables(
    frame: u64,
    hdr: u64,
    text: u64,
    functions: &[(&str, u64, u64)],
) -> (Vec<u8>, Vec<u8>) {
    const DW_EH_PE_PCREL_SDATA4: u8 = 0x1b;
    const DW_EH_PE_UDATA4: u8 = 0x03;
    const DW_EH_PE_DATAREL_SDATA4: u8 = 0x3b;
    const DW_CFA_DEF_CFA: u8 = 0x0c;
    const DW_CFA_OFFSET_RA: u8 = 0x80 | 16;
    const RSP: u8 = 7;
    const RA: u8 = 16;
    // A record: its length, its body, DW_CFA_nop up to an 8-byte multiple.
    let record = |out: &mut Vec<u8>, body: &[u8]| {
        let len = (4 + body.len()).next_multiple_of(8) - 4;
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + len - body.len(), 0);
    };
    let rel = |to: u64, from: u64| (to.wrapping_sub(from) as i32).to_le_bytes();
    let mut eh = Vec::new();
    // CIE: id 0, version 1, "zR", code alignment 1, data alignment -8, RA register, one
    // byte of augmentation data (the FDE pointer encoding), the initial rules.
    record(
        &mut eh,
        &[
            0,
            0,
            0,
            0,
            1,
            b'z',
            b'R',
            0,
            1,
            0x78,
            RA,
            1,
            DW_EH_PE_PCREL_SDATA4,
            DW_CFA_DEF_CFA,
            RSP,
            8,
            DW_CFA_OFFSET_RA,
            1,
        ],
    );
    let mut table = Vec::new();
    for &(_, off, size) in functions {
        let at = frame + eh.len() as u64;
        let mut body = Vec::new();
        body.extend_from_slice(&((at + 4 - frame) as u32).to_le_bytes());
        body.extend_from_slice(&rel(text + off, at + 8));
        body.extend_from_slice(&(size as u32).to_le_bytes());
        body.push(0); // no augmentation data
        record(&mut eh, &body);
        table.push((text + off, at));
    }
    eh.extend_from_slice(&[0; 4]);
    let mut h = vec![
        1,
        DW_EH_PE_PCREL_SDATA4,
        DW_EH_PE_UDATA4,
        DW_EH_PE_DATAREL_SDATA4,
    ];
    h.extend_from_slice(&rel(frame, hdr + 4));
    h.extend_from_slice(&(table.len() as u32).to_le_bytes());
    for (pc, fde) in table {
        h.extend_from_slice(&rel(pc, hdr));
        h.extend_from_slice(&rel(fde, hdr));
    }
    (eh, h)
}

/// Build the image (see the module doc for its layout).
fn build() -> Result<Image, BuildError> {
    let code = assemble()?;
    let id = elf_image::build_id(&code.bytes);
    // Symbols: __vdso_NAME (global) then NAME (weak), for each function.
    let names: Vec<(String, bool, u64, u64)> = code
        .functions
        .iter()
        .flat_map(|&(name, off, size)| {
            [
                (format!("__vdso_{name}"), true, off, size),
                (name.to_string(), false, off, size),
            ]
        })
        .collect();

    let mut bytes = Vec::new();
    let mut w = Writer::new(object::Endianness::Little, true, &mut bytes);
    w.reserve_file_header();
    w.reserve_program_headers(4);
    w.reserve_null_section_index();
    w.reserve_hash_section_index();
    w.reserve_dynsym_section_index();
    w.reserve_dynstr_section_index();
    w.reserve_gnu_versym_section_index();
    w.reserve_gnu_verdef_section_index();
    w.reserve_dynamic_section_index();
    let note_name = w.add_section_name(b".note");
    w.reserve_section_index();
    let hdr_name = w.add_section_name(b".eh_frame_hdr");
    w.reserve_section_index();
    let frame_name = w.add_section_name(b".eh_frame");
    w.reserve_section_index();
    let text_name = w.add_section_name(b".text");
    let text_index = w.reserve_section_index();
    w.reserve_shstrtab_section_index();

    let soname = w.add_dynamic_string(SONAME.as_bytes());
    let version = w.add_dynamic_string(VERSION.as_bytes());
    let sym_names: Vec<_> = names
        .iter()
        .map(|(n, ..)| w.add_dynamic_string(n.as_bytes()))
        .collect();
    w.reserve_null_dynamic_symbol_index();
    for _ in &names {
        w.reserve_dynamic_symbol_index();
    }
    let nsyms = names.len() as u32 + 1;
    let buckets = nsyms / 2 + 1;
    let hash_offset = w.reserve_hash(buckets, nsyms);
    let dynsym_offset = w.reserve_dynsym();
    let dynstr_offset = w.reserve_dynstr()?;
    let versym_offset = w.reserve_gnu_versym();
    let verdef_offset = w.reserve_gnu_verdef(2, 2);
    const DYNAMIC: usize = 11;
    let dynamic_offset = w.reserve_dynamic(DYNAMIC);
    let note_offset = w.reserve(elf_image::note_len(&id), 4);
    // The unwind tables' sizes do not depend on where they go.
    let sizes = unwind_tables(0, 0, TEXT_OFFSET, &code.functions);
    let hdr_offset = w.reserve(sizes.1.len() as u64, 4);
    let frame_offset = w.reserve(sizes.0.len() as u64, 8);
    let (frame, hdr) = unwind_tables(frame_offset, hdr_offset, TEXT_OFFSET, &code.functions);
    if w.reserved_len() > TEXT_OFFSET {
        return Err(BuildError::Layout);
    }
    w.reserve_until(TEXT_OFFSET);
    let text_offset = w.reserve(code.bytes.len() as u64, 16);
    w.reserve_shstrtab()?;
    w.reserve_section_headers();
    let end = text_offset + code.bytes.len() as u64;

    w.write_file_header(&elf_image::file_header())?;
    w.write_align_program_headers();
    w.write_program_header(&elf_image::load_segment(end));
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_DYNAMIC,
        p_flags: elf::PF_R,
        p_offset: dynamic_offset,
        p_vaddr: dynamic_offset,
        p_paddr: dynamic_offset,
        p_filesz: (DYNAMIC * 16) as u64,
        p_memsz: (DYNAMIC * 16) as u64,
        p_align: 8,
    });
    w.write_program_header(&elf_image::note_segment(note_offset, &id));
    w.write_program_header(&ProgramHeader {
        p_type: elf::PT_GNU_EH_FRAME,
        p_flags: elf::PF_R,
        p_offset: hdr_offset,
        p_vaddr: hdr_offset,
        p_paddr: hdr_offset,
        p_filesz: hdr.len() as u64,
        p_memsz: hdr.len() as u64,
        p_align: 4,
    });

    w.write_hash(buckets, nsyms, |i| {
        let i = i.checked_sub(1)? as usize;
        names.get(i).map(|(n, ..)| elf::hash(n.as_bytes()))
    });
    w.write_null_dynamic_symbol();
    for ((_, global, off, size), name) in names.iter().zip(&sym_names) {
        let bind = if *global {
            elf::STB_GLOBAL
        } else {
            elf::STB_WEAK
        };
        w.write_dynamic_symbol(&Sym {
            st_name: w.dynamic_string_offset(Some(*name)),
            section: Some(text_index.0),
            st_info: elf::SymbolInfo::new(bind, elf::STT_FUNC),
            st_other: elf::STV_DEFAULT.into(),
            st_shndx: elf::SymbolSection(0),
            st_value: text_offset + off,
            st_size: *size,
        });
    }
    w.write_dynstr();
    w.write_null_gnu_versym();
    for _ in &names {
        w.write_gnu_versym(elf::VersymIndex(2));
    }
    w.write_align_gnu_verdef();
    w.write_gnu_verdef(&Verdef {
        version: elf::VER_DEF_CURRENT,
        flags: elf::VER_FLG_BASE,
        index: elf::VersionIndex(1),
        aux_count: 1,
        name: w.dynamic_string_offset(Some(soname)),
        hash: elf::hash(SONAME.as_bytes()),
    });
    w.write_gnu_verdef(&Verdef {
        version: elf::VER_DEF_CURRENT,
        flags: elf::VersionFlags(0),
        index: elf::VersionIndex(2),
        aux_count: 1,
        name: w.dynamic_string_offset(Some(version)),
        hash: elf::hash(VERSION.as_bytes()),
    });
    w.write_align_dynamic();
    w.write_dynamic_string(elf::DT_SONAME, soname)?;
    w.write_dynamic(elf::DT_HASH, hash_offset)?;
    w.write_dynamic(elf::DT_STRTAB, dynstr_offset)?;
    w.write_dynamic(elf::DT_SYMTAB, dynsym_offset)?;
    w.write_dynamic(elf::DT_STRSZ, u64::from(w.dynstr_len()))?;
    w.write_dynamic(elf::DT_SYMENT, 24)?;
    w.write_dynamic(elf::DT_VERDEF, verdef_offset)?;
    w.write_dynamic(elf::DT_VERDEFNUM, 2)?;
    w.write_dynamic(elf::DT_VERSYM, versym_offset)?;
    w.write_dynamic(elf::DT_FLAGS_1, elf::DF_1_NOW.0)?;
    w.write_dynamic(elf::DT_NULL, 0)?;
    elf_image::write_note(&mut w, &id);
    w.pad_until(hdr_offset);
    w.write(&hdr);
    w.pad_until(frame_offset);
    w.write(&frame);
    w.pad_until(text_offset);
    w.write(&code.bytes);
    w.write_shstrtab();

    w.write_null_section_header();
    w.write_hash_section_header(hash_offset);
    w.write_dynsym_section_header(dynsym_offset, 1);
    w.write_dynstr_section_header(dynstr_offset);
    w.write_gnu_versym_section_header(versym_offset);
    w.write_gnu_verdef_section_header(verdef_offset);
    w.write_dynamic_section_header(dynamic_offset);
    elf_image::write_note_header(&mut w, note_name, note_offset, &id);
    for (name, offset, len, align) in [
        (hdr_name, hdr_offset, hdr.len(), 4),
        (frame_name, frame_offset, frame.len(), 8),
    ] {
        w.write_section_header(&SectionHeader {
            sh_name: w.section_name_offset(Some(name)),
            sh_type: elf::SHT_PROGBITS,
            sh_flags: elf::SHF_ALLOC,
            sh_addr: offset,
            sh_offset: offset,
            sh_size: len as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: align,
            sh_entsize: 0,
        });
    }
    elf_image::write_text_header(&mut w, text_name, text_offset, code.bytes.len() as u64);
    w.write_shstrtab_section_header();
    Ok(Image {
        bytes,
        build_id: id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::elf::{ElfFile64, FileHeader as _, ProgramHeader as _, SectionHeader as _};
    use object::{Object, ObjectSection, ObjectSymbol};

    #[test]
    fn the_image_exports_every_function_at_version_linux_2_6() {
        let img = image();
        let file = ElfFile64::<object::Endianness>::parse(&img.bytes[..]).unwrap();
        assert_eq!(file.build_id().unwrap(), Some(&img.build_id[..]));
        let endian = file.endian();
        let sections = file.elf_header().sections(endian, &img.bytes[..]).unwrap();
        let versions = sections
            .versions(endian, &img.bytes[..])
            .unwrap()
            .expect("versioned");
        let text = file.section_by_name(".text").unwrap();
        for f in FUNCTIONS {
            for (name, weak) in [(format!("__vdso_{f}"), false), (f.to_string(), true)] {
                let sym = file
                    .dynamic_symbols()
                    .find(|s| s.name() == Ok(name.as_str()))
                    .unwrap_or_else(|| panic!("{name} missing"));
                assert_eq!(sym.is_weak(), weak, "{name}");
                assert_eq!(sym.kind(), object::SymbolKind::Text);
                let addr = sym.address();
                assert!(addr >= text.address() && addr < text.address() + text.size());
                // Its version is LINUX_2.6, as glibc and Go look it up.
                let index = versions.version_index(endian, sym.index());
                let v = versions.version(index.index()).unwrap().expect("a version");
                assert_eq!(v.name(), VERSION.as_bytes(), "{name}");
            }
        }
        // The base version is the SONAME; the hash table finds the names.
        assert!(
            img.bytes
                .windows(SONAME.len())
                .any(|w| w == SONAME.as_bytes())
        );
        let dynamic = sections
            .iter()
            .find(|s| s.sh_type(endian) == elf::SHT_DYNAMIC)
            .unwrap();
        assert!(dynamic.sh_size(endian) > 0);
    }

    #[test]
    fn every_function_unwinds_to_its_caller_with_the_cfi() {
        use gimli::{
            BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
            UnwindSection, X86_64,
        };
        let img = image();
        let file = object::File::parse(&img.bytes[..]).unwrap();
        let section = |name| {
            let s = file.section_by_name(name).unwrap();
            (s.address(), s.data().unwrap())
        };
        let (hdr_at, hdr) = section(".eh_frame_hdr");
        let (frame_at, frame) = section(".eh_frame");
        let (text_at, _) = section(".text");
        // PT_GNU_EH_FRAME points at the header.
        let header = ElfFile64::<object::Endianness>::parse(&img.bytes[..]).unwrap();
        let endian = header.endian();
        let phdr = header
            .elf_program_headers()
            .iter()
            .find(|p| p.p_type(endian) == elf::PT_GNU_EH_FRAME)
            .unwrap();
        assert_eq!(phdr.p_vaddr(endian), hdr_at);
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(hdr_at)
            .set_eh_frame(frame_at)
            .set_text(text_at);
        let table = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8).unwrap();
        let eh = EhFrame::new(frame, LittleEndian);
        let table = table.table().unwrap();
        let mut ctx = UnwindContext::new();
        for f in FUNCTIONS {
            let sym = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(format!("__vdso_{f}").as_str()))
                .unwrap();
            for pc in [sym.address(), sym.address() + sym.size() - 1] {
                let row = table
                    .unwind_info_for_address(&eh, &bases, &mut ctx, pc, EhFrame::cie_from_offset)
                    .unwrap_or_else(|e| panic!("{f} at {pc:#x}: {e}"));
                assert_eq!(
                    *row.cfa(),
                    CfaRule::RegisterAndOffset {
                        register: X86_64::RSP,
                        offset: 8
                    }
                );
                assert_eq!(row.register(X86_64::RA), Some(RegisterRule::Offset(-8)));
            }
        }
    }

    /// The image and a data page in host memory, laid out as in the guest.
    struct Mapped {
        base: *mut u8,
        len: usize,
    }

    impl Mapped {
        fn new() -> Mapped {
            let img = image();
            let len = ((1 + img.pages()) * PAGE) as usize;
            // SAFETY: a fresh anonymous mapping; checked below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            let base = base.cast::<u8>();
            // SAFETY: the image fits in the pages after the data page.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    img.bytes.as_ptr(),
                    base.add(PAGE as usize),
                    img.bytes.len(),
                );
                assert_eq!(
                    libc::mprotect(
                        base.add(PAGE as usize).cast(),
                        len - PAGE as usize,
                        libc::PROT_READ | libc::PROT_EXEC,
                    ),
                    0
                );
            }
            Mapped { base, len }
        }

        fn set(&self, off: u64, v: u64) {
            // SAFETY: `off` is within the writable data page.
            unsafe { self.base.add(off as usize).cast::<u64>().write_volatile(v) }
        }

        fn function(&self, name: &str) -> *const u8 {
            let img = image();
            let file = object::File::parse(&img.bytes[..]).unwrap();
            let sym = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(name))
                .unwrap();
            // SAFETY: within the mapped image.
            unsafe { self.base.add(PAGE as usize + sym.address() as usize) }
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`.
            unsafe { libc::munmap(self.base.cast(), self.len) };
        }
    }

    fn gettime(m: &Mapped, clock: i32) -> (i32, libc::timespec) {
        type F = unsafe extern "C" fn(i32, *mut libc::timespec) -> i32;
        let mut ts = libc::timespec {
            tv_sec: -1,
            tv_nsec: -1,
        };
        // SAFETY: the function is clock_gettime's ABI; `ts` is live.
        let r = unsafe {
            let f: F = std::mem::transmute(m.function("__vdso_clock_gettime"));
            f(clock, &mut ts)
        };
        (r, ts)
    }

    fn ns(ts: &libc::timespec) -> i128 {
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }

    #[test]
    fn the_code_falls_back_to_the_system_call_and_reads_the_data_page() {
        let m = Mapped::new();
        // An empty data page: every call is the system call (the host's answer here).
        let (r, ts) = gettime(&m, libc::CLOCK_MONOTONIC);
        let host = crate::linux::host::clock_gettime(libc::CLOCK_MONOTONIC).unwrap();
        assert_eq!(r, 0);
        let host_ns = i128::from(host.0) * 1_000_000_000 + i128::from(host.1);
        assert!((host_ns - ns(&ts)).abs() < 1_000_000_000);
        // A bad clock id is the system call's EINVAL.
        assert_eq!(gettime(&m, 1000).0, -libc::EINVAL);
        assert_eq!(gettime(&m, -1).0, -libc::EINVAL);

        // A line for CLOCK_TAI: 1 ns per 2 cycles from 7 s at TSC 0.
        let e = vvar::CLOCKS + 11 * vvar::ENTRY;
        m.set(e + vvar::CYCLE_BASE, 0);
        m.set(e + vvar::NS_BASE, 7_000_000_000);
        m.set(e + vvar::SHIFT, 1);
        m.set(e + vvar::MULT, 1);
        let tsc = crate::linux::vclock::host_tsc();
        let (r, ts) = gettime(&m, libc::CLOCK_TAI);
        assert_eq!(r, 0);
        let want = 7_000_000_000 + i128::from(tsc / 2);
        let got = ns(&ts);
        assert!(got >= want && got - want < 1_000_000_000, "{got} vs {want}");
        assert!((0..1_000_000_000).contains(&ts.tv_nsec));
        // An odd sequence count holds the reader until it is even again.
        m.set(vvar::SEQ, 0);

        // time() and gettimeofday() read CLOCK_REALTIME's line.
        let e = vvar::CLOCKS;
        m.set(e + vvar::CYCLE_BASE, u64::MAX);
        m.set(e + vvar::NS_BASE, 42_123_456_789);
        m.set(e + vvar::SHIFT, 0);
        m.set(e + vvar::MULT, 1);
        type T = unsafe extern "C" fn(*mut i64) -> i64;
        type G = unsafe extern "C" fn(*mut libc::timeval, *mut u8) -> i32;
        let mut t = 0i64;
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: the functions' ABIs; the pointers are live.
        let (rt, rg) = unsafe {
            let time: T = std::mem::transmute(m.function("time"));
            let gtod: G = std::mem::transmute(m.function("gettimeofday"));
            (time(&mut t), gtod(&mut tv, std::ptr::null_mut()))
        };
        // The TSC is behind the anchor: the anchor's time.
        assert_eq!((rt, t), (42, 42));
        assert_eq!((rg, tv.tv_sec, tv.tv_usec), (0, 42, 123_456));
    }
}
