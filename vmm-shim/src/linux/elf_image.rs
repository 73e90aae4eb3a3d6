//! The pieces every ELF image the shim writes for code it gives the guest has in common
//! (the vDSO, [`super::vdso`], and the trap stubs' symbol image, [`super::trapsyms`]):
//! an x86-64 `ET_DYN` at address 0 whose file offsets are its addresses, one `PT_LOAD`
//! over all of it, a GNU build-id note, and a `.text` section.

use object::elf;
use object::write::StringId;
use object::write::elf::{FileHeader, ProgramHeader, SectionHeader, Writer};

use crate::linux::abi::PAGE;

/// A build-id for `bytes`: two 64-bit FxHashes of them (with different seeds).
pub(crate) fn build_id(bytes: &[u8]) -> Vec<u8> {
    use std::hash::Hasher;
    let mut out = Vec::with_capacity(16);
    for seed in [0x6c62_7270_726f_6601u64, 0x7664_736f_2d69_6d67] {
        let mut h = rustc_hash::FxHasher::default();
        h.write_u64(seed);
        h.write(bytes);
        out.extend_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// The image's file header.
pub(crate) fn file_header() -> FileHeader {
    FileHeader {
        os_abi: elf::ELFOSABI_NONE,
        abi_version: 0,
        e_type: elf::ET_DYN,
        e_machine: elf::EM_X86_64,
        e_entry: 0,
        e_flags: elf::FileFlags(0),
    }
}

/// The one `PT_LOAD`: the first `end` bytes, readable and executable, at address 0.
pub(crate) fn load_segment(end: u64) -> ProgramHeader {
    ProgramHeader {
        p_type: elf::PT_LOAD,
        p_flags: elf::PF_R | elf::PF_X,
        p_offset: 0,
        p_vaddr: 0,
        p_paddr: 0,
        p_filesz: end,
        p_memsz: end,
        p_align: PAGE,
    }
}

/// Bytes of the build-id note of `id`.
pub(crate) fn note_len(id: &[u8]) -> u64 {
    16 + id.len() as u64
}

/// The `PT_NOTE` of the build-id note at `offset`.
pub(crate) fn note_segment(offset: u64, id: &[u8]) -> ProgramHeader {
    ProgramHeader {
        p_type: elf::PT_NOTE,
        p_flags: elf::PF_R,
        p_offset: offset,
        p_vaddr: offset,
        p_paddr: offset,
        p_filesz: note_len(id),
        p_memsz: note_len(id),
        p_align: 4,
    }
}

/// Writes the build-id note (namesz, descsz, type, "GNU\0", the id), 4-aligned.
pub(crate) fn write_note(w: &mut Writer<'_>, id: &[u8]) {
    w.write_align(4);
    let mut note = Vec::with_capacity(note_len(id) as usize);
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&(id.len() as u32).to_le_bytes());
    note.extend_from_slice(&elf::NT_GNU_BUILD_ID.0.to_le_bytes());
    note.extend_from_slice(b"GNU\0");
    note.extend_from_slice(id);
    w.write(&note);
}

/// The section header of the build-id note (named `name`, at `offset`).
pub(crate) fn write_note_header(w: &mut Writer<'_>, name: StringId, offset: u64, id: &[u8]) {
    w.write_section_header(&SectionHeader {
        sh_name: w.section_name_offset(Some(name)),
        sh_type: elf::SHT_NOTE,
        sh_flags: elf::SHF_ALLOC,
        sh_addr: offset,
        sh_offset: offset,
        sh_size: note_len(id),
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 4,
        sh_entsize: 0,
    });
}

/// The section header of `.text` (named `name`, `len` bytes at `offset`).
pub(crate) fn write_text_header(w: &mut Writer<'_>, name: StringId, offset: u64, len: u64) {
    w.write_section_header(&SectionHeader {
        sh_name: w.section_name_offset(Some(name)),
        sh_type: elf::SHT_PROGBITS,
        sh_flags: elf::SHF_ALLOC | elf::SHF_EXECINSTR,
        sh_addr: offset,
        sh_offset: offset,
        sh_size: len,
        sh_link: 0,
        sh_info: 0,
        sh_addralign: 16,
        sh_entsize: 0,
    });
}
