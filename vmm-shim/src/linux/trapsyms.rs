//! The trap stub page ([`super::cpu::stub_code`]) as a small ELF image with a symbol per
//! stub, so that profiles name the time a program's vCPU spends at them: a host sample
//! taken while the guest sat at the SYSCALL entry's `out` (the system call's round trip
//! through the shim) reads `[lbrprof_shim] entry_SYSCALL_64`, not a bare address. The
//! names are Linux's for the same entry points (`arch/x86/entry`), so a profile of a
//! program in the VM reads like one of the program on Linux.
//!
//! A recorder maps [`MODULE`] over the stub page of every guest address space, with
//! [`image`]'s build-id; the symbolizer is given the image the way it is given the vDSO.
//! Layout: ELF header, PT_LOAD (all of it, at address 0) and PT_NOTE; the build-id note;
//! `.text` (the stub code) at [`TEXT_OFFSET`]; `.symtab`, `.strtab`, section headers.

use std::sync::OnceLock;

use object::elf;
use object::write::elf::{Sym, Writer};

use crate::linux::elf_image;
/// An image and its build-id (here a hash of the stub code), as the vDSO's.
pub use crate::linux::vdso::Image;

use crate::linux::abi::{PAGE, STUB_SLOT, SYSCALL_SLOT, TRAP_AREA, TRAP_STUBS};

/// The module name of the stub page in recordings (bracketed, as perf names what is no
/// file; perf.data exports keep it out of their build-id table, see `reports`).
pub const MODULE: &str = "[lbrprof_shim]";

/// File offset (= address offset) of `.text`: the stub page's first byte. A page, so that
/// the mapping's offset is page-aligned as perf expects of MMAP2 records.
pub const TEXT_OFFSET: u64 = PAGE;

/// Guest-virtual address of the stub page in every address space.
pub const STUBS_VA: u64 = TRAP_AREA.0 + TRAP_STUBS * PAGE;

/// Names of the stubs by slot: the exception vectors 0–31 (Linux's `asm_exc_*`, vectors
/// Linux gives no entry named after their own number), every interrupt vector from 32
/// up, then the SYSCALL entry.
const NAMES: [&str; 34] = [
    "asm_exc_divide_error",
    "asm_exc_debug",
    "asm_exc_nmi",
    "asm_exc_int3",
    "asm_exc_overflow",
    "asm_exc_bounds",
    "asm_exc_invalid_op",
    "asm_exc_device_not_available",
    "asm_exc_double_fault",
    "asm_exc_coproc_segment_overrun",
    "asm_exc_invalid_tss",
    "asm_exc_segment_not_present",
    "asm_exc_stack_segment",
    "asm_exc_general_protection",
    "asm_exc_page_fault",
    "asm_exc_spurious_interrupt_bug",
    "asm_exc_coprocessor_error",
    "asm_exc_alignment_check",
    "asm_exc_machine_check",
    "asm_exc_simd_coprocessor_error",
    "asm_exc_virtualization_exception",
    "asm_exc_control_protection",
    "asm_exc_vector_22",
    "asm_exc_vector_23",
    "asm_exc_vector_24",
    "asm_exc_vector_25",
    "asm_exc_vector_26",
    "asm_exc_vector_27",
    "asm_exc_hv_injection",
    "asm_exc_vmm_communication",
    "asm_exc_security",
    "asm_exc_vector_31",
    "asm_common_interrupt",
    "entry_SYSCALL_64",
];

/// The stub page's image (built on first use).
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| build().expect("the trap stub image is built from constants"))
}

fn build() -> Result<Image, String> {
    const _: () = assert!(NAMES.len() as u64 == SYSCALL_SLOT + 1);
    let code = super::cpu::stub_code();
    let id = elf_image::build_id(&code);
    let mut bytes = Vec::new();
    let mut w = Writer::new(object::Endianness::Little, true, &mut bytes);
    w.reserve_file_header();
    w.reserve_program_headers(2);
    w.reserve_null_section_index();
    let note_name = w.add_section_name(b".note.gnu.build-id");
    w.reserve_section_index();
    let text_name = w.add_section_name(b".text");
    let text_index = w.reserve_section_index();
    w.reserve_symtab_section_index();
    w.reserve_strtab_section_index();
    w.reserve_shstrtab_section_index();
    let names: Vec<_> = NAMES.iter().map(|n| w.add_string(n.as_bytes())).collect();
    w.reserve_null_symbol_index();
    for _ in &names {
        w.reserve_symbol_index(Some(text_index));
    }
    let note_offset = w.reserve(elf_image::note_len(&id), 4);
    if w.reserved_len() > TEXT_OFFSET {
        return Err("the trap image's headers outgrew .text's offset".into());
    }
    w.reserve_until(TEXT_OFFSET);
    let text_offset = w.reserve(code.len() as u64, 16);
    let end = text_offset + code.len() as u64;
    w.reserve_symtab();
    w.reserve_strtab().map_err(|e| e.to_string())?;
    w.reserve_shstrtab().map_err(|e| e.to_string())?;
    w.reserve_section_headers();

    w.write_file_header(&elf_image::file_header())
        .map_err(|e| e.to_string())?;
    w.write_align_program_headers();
    w.write_program_header(&elf_image::load_segment(end));
    w.write_program_header(&elf_image::note_segment(note_offset, &id));
    elf_image::write_note(&mut w, &id);
    w.pad_until(text_offset);
    w.write(&code);
    w.write_null_symbol();
    for (slot, name) in names.iter().enumerate() {
        w.write_symbol(&Sym {
            st_name: w.string_offset(Some(*name)),
            section: Some(text_index.0),
            st_info: elf::SymbolInfo::new(elf::STB_GLOBAL, elf::STT_FUNC),
            st_other: elf::STV_DEFAULT.into(),
            st_shndx: elf::SymbolSection(0),
            st_value: text_offset + slot as u64 * STUB_SLOT,
            st_size: STUB_SLOT,
        });
    }
    w.write_strtab();
    w.write_shstrtab();

    w.write_null_section_header();
    elf_image::write_note_header(&mut w, note_name, note_offset, &id);
    elf_image::write_text_header(&mut w, text_name, text_offset, code.len() as u64);
    w.write_symtab_section_header(1);
    w.write_strtab_section_header();
    w.write_shstrtab_section_header();
    Ok(Image {
        bytes,
        build_id: id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection, ObjectSymbol};

    #[test]
    fn every_stub_has_its_name_at_its_slot_and_the_image_holds_the_code() {
        let img = image();
        let file = object::File::parse(&*img.bytes).unwrap();
        assert_eq!(file.build_id().unwrap(), Some(&img.build_id[..]));
        let text = file.section_by_name(".text").unwrap();
        assert_eq!(text.address(), TEXT_OFFSET);
        assert_eq!(text.data().unwrap(), &super::super::cpu::stub_code()[..]);
        let at = |name: &str| {
            file.symbols()
                .find(|s| s.name() == Ok(name))
                .map(|s| (s.address() - TEXT_OFFSET) / STUB_SLOT)
        };
        assert_eq!(at("entry_SYSCALL_64"), Some(SYSCALL_SLOT));
        assert_eq!(at("asm_exc_page_fault"), Some(14));
        assert_eq!(at("asm_exc_invalid_op"), Some(6));
        assert_eq!(at("asm_common_interrupt"), Some(32));
        // The SYSCALL entry's address is the one the vCPUs use (LSTAR).
        assert_eq!(
            STUBS_VA + SYSCALL_SLOT * STUB_SLOT,
            super::super::cpu::syscall_entry()
        );
    }
}
