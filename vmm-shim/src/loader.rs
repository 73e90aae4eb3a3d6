//! Guest image loaders: static ELF64 (entered in long mode) and multiboot v1 (ELF32, or
//! any file with the multiboot a.out kludge; entered in 32-bit protected mode).
//!
//! [`parse`] is pure (bytes in, a validated [`Image`] out), so it can be fuzzed and
//! table-tested without KVM. ELF headers are read with `object`; the multiboot header is
//! found by a scan of the first 8 KiB. Every header field is bounds-checked against the file and
//! against the RAM the image may use ([`RamLayout`]); each way an image can be wrong has
//! its own [`LoaderError`] variant. [`Image::load`] then copies the segments into guest
//! memory and zeroes their bss.
//!
//! ELF64 images are loaded at their physical addresses (`p_paddr`) and must be identity
//! mapped (`p_vaddr == p_paddr`), because the shim's page tables are an identity map.

use object::LittleEndian;
use object::read::elf::{FileHeader, ProgramHeader};

use crate::arch::*;
use crate::memory::{GuestMemory, GuestPhysAddr, MemoryError};

const LE: LittleEndian = LittleEndian;

/// The kind of image found, which decides how the vCPUs are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// Static ELF64 x86-64: long mode, identity paging, lbrprof's boot protocol.
    Elf64,
    /// Multiboot v1 ELF32 i386: 32-bit protected mode, EAX = 0x2BADB002, EBX = info.
    MultibootElf32,
    /// Multiboot v1 with the a.out kludge (header fields give the load addresses).
    MultibootAout,
    /// An x86-64 Linux program run by the shim's Linux personality ([`crate::linux`]).
    Linux,
}

impl ImageKind {
    pub fn is_multiboot(self) -> bool {
        matches!(self, ImageKind::MultibootElf32 | ImageKind::MultibootAout)
    }
}

/// One loadable range of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub gpa: GuestPhysAddr,
    /// Bytes copied from the file: `file_offset..file_offset + file_size`.
    pub file_offset: usize,
    pub file_size: usize,
    /// Bytes occupied in memory (the tail past `file_size` is zeroed).
    pub mem_size: u64,
    pub executable: bool,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.gpa.0 + self.mem_size
    }
}

/// A parsed, validated image borrowing the file's bytes.
#[derive(Clone, Debug)]
pub struct Image<'a> {
    pub kind: ImageKind,
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// The multiboot header flags, for multiboot images.
    pub multiboot_flags: Option<u32>,
    bytes: &'a [u8],
}

/// Where an image may be loaded: guest-physical `load_start..ram_end`. Memory below
/// `load_start` holds the shim's boot structures (page tables, GDT, boot info).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    pub load_start: u64,
    pub ram_end: u64,
}

impl RamLayout {
    /// The layout the VM uses for `mem_bytes` of RAM (images from 1 MiB up).
    pub fn for_ram(mem_bytes: u64) -> RamLayout {
        RamLayout {
            load_start: crate::boot::LOAD_START,
            ram_end: mem_bytes,
        }
    }
}

/// What is wrong with an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoaderError {
    #[error("not a guest image: neither an ELF file nor a multiboot header in the first 8 KiB")]
    NotAnImage,
    #[error(
        "truncated image: the {what} at offset {offset:#x} (+{len:#x}) runs past the end of the {file_len}-byte file"
    )]
    Truncated {
        what: &'static str,
        offset: u64,
        len: u64,
        file_len: usize,
    },
    #[error("unsupported ELF file: {0}")]
    UnsupportedElf(&'static str),
    #[error("wrong machine: ELF{class} e_machine {machine} (expected {expected})")]
    WrongMachine {
        class: u8,
        machine: u16,
        expected: &'static str,
    },
    #[error(
        "ELF type {e_type} is not a static executable (ET_EXEC); position-independent or relocatable images cannot be booted"
    )]
    NotExecutable { e_type: u16 },
    #[error(
        "32-bit ELF image without a multiboot header: only multiboot v1 images can be booted in 32-bit mode"
    )]
    NoMultibootHeader,
    #[error(
        "multiboot header at offset {offset:#x} has a bad checksum (magic + flags + checksum != 0)"
    )]
    BadMultibootChecksum { offset: usize },
    #[error(
        "multiboot header requires features this loader lacks (flags {flags:#x}, unsupported {unsupported:#x}; e.g. bit 2 = video mode)"
    )]
    UnsupportedMultibootFlags { flags: u32, unsupported: u32 },
    #[error("bad multiboot a.out kludge addresses: {0}")]
    BadAoutKludge(&'static str),
    #[error(
        "segment {index} has a virtual address {vaddr:#x} different from its physical address {paddr:#x} (the shim identity-maps RAM)"
    )]
    NotIdentityMapped {
        index: usize,
        vaddr: u64,
        paddr: u64,
    },
    #[error(
        "segment {index} is larger in the file ({file_size:#x}) than in memory ({mem_size:#x})"
    )]
    FileSizeExceedsMemSize {
        index: usize,
        file_size: u64,
        mem_size: u64,
    },
    #[error("the image has no loadable segments")]
    NoLoadableSegments,
    #[error(
        "segment {index} ({start:#x}..{end:#x}) lies outside the guest RAM usable for images ({ram_start:#x}..{ram_end:#x}); try a larger --mem"
    )]
    SegmentOutsideRam {
        index: usize,
        start: u64,
        end: u64,
        ram_start: u64,
        ram_end: u64,
    },
    #[error(
        "segments {first} ({first_start:#x}..{first_end:#x}) and {second} ({second_start:#x}..{second_end:#x}) overlap"
    )]
    SegmentsOverlap {
        first: usize,
        first_start: u64,
        first_end: u64,
        second: usize,
        second_start: u64,
        second_end: u64,
    },
    #[error("entry point {entry:#x} is outside every loadable segment")]
    EntryOutsideSegments { entry: u64 },
    #[error("cannot copy the image into guest memory")]
    Memory(#[source] MemoryError),
}

impl From<MemoryError> for LoaderError {
    fn from(e: MemoryError) -> Self {
        LoaderError::Memory(e)
    }
}

/// A bounds-checked little-endian reader over the file.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn slice(&self, what: &'static str, offset: u64, len: u64) -> Result<&[u8], LoaderError> {
        let err = || LoaderError::Truncated {
            what,
            offset,
            len,
            file_len: self.0.len(),
        };
        let start = usize::try_from(offset).map_err(|_| err())?;
        let l = usize::try_from(len).map_err(|_| err())?;
        let end = start.checked_add(l).ok_or_else(err)?;
        self.0.get(start..end).ok_or_else(err)
    }
    fn u32(&self, what: &'static str, off: u64) -> Result<u32, LoaderError> {
        let b = self.slice(what, off, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The multiboot v1 header, if any.
struct MultibootHeader {
    offset: usize,
    flags: u32,
    header_addr: u32,
    load_addr: u32,
    load_end_addr: u32,
    bss_end_addr: u32,
    entry_addr: u32,
}

fn find_multiboot(bytes: &[u8]) -> Result<Option<MultibootHeader>, LoaderError> {
    let b = Bytes(bytes);
    let limit = bytes.len().min(MULTIBOOT_SEARCH);
    let mut bad_checksum = None;
    let mut off = 0usize;
    while off + 12 <= limit {
        let magic = b.u32("multiboot header", off as u64)?;
        if magic == MULTIBOOT_HEADER_MAGIC {
            let flags = b.u32("multiboot header", off as u64 + 4)?;
            let checksum = b.u32("multiboot header", off as u64 + 8)?;
            if magic.wrapping_add(flags).wrapping_add(checksum) == 0 {
                let mut h = MultibootHeader {
                    offset: off,
                    flags,
                    header_addr: 0,
                    load_addr: 0,
                    load_end_addr: 0,
                    bss_end_addr: 0,
                    entry_addr: 0,
                };
                if flags & MULTIBOOT_AOUT_KLUDGE != 0 {
                    let o = off as u64;
                    h.header_addr = b.u32("multiboot a.out kludge", o + 12)?;
                    h.load_addr = b.u32("multiboot a.out kludge", o + 16)?;
                    h.load_end_addr = b.u32("multiboot a.out kludge", o + 20)?;
                    h.bss_end_addr = b.u32("multiboot a.out kludge", o + 24)?;
                    h.entry_addr = b.u32("multiboot a.out kludge", o + 28)?;
                }
                return Ok(Some(h));
            }
            bad_checksum.get_or_insert(off);
        }
        off += 4;
    }
    match bad_checksum {
        Some(offset) => Err(LoaderError::BadMultibootChecksum { offset }),
        None => Ok(None),
    }
}

/// Parse and validate an image for the given RAM layout.
pub fn parse<'a>(bytes: &'a [u8], layout: RamLayout) -> Result<Image<'a>, LoaderError> {
    let is_elf = bytes.len() >= 4 && bytes[..4] == ELFMAG;
    let class = if is_elf { bytes.get(4).copied() } else { None };
    let image = if class == Some(ELFCLASS64) {
        parse_elf(bytes, 64)?
    } else {
        let mb = find_multiboot(bytes)?;
        match (mb, is_elf) {
            (Some(h), _) if h.flags & MULTIBOOT_AOUT_KLUDGE != 0 => parse_aout(bytes, &h)?,
            (Some(h), true) => {
                check_multiboot_flags(h.flags)?;
                let mut img = parse_elf(bytes, 32)?;
                img.kind = ImageKind::MultibootElf32;
                img.multiboot_flags = Some(h.flags);
                img
            }
            (None, true) => {
                // Report the ELF problem (truncation, machine) before the missing header.
                parse_elf(bytes, 32)?;
                return Err(LoaderError::NoMultibootHeader);
            }
            (Some(_), false) => return Err(LoaderError::NotAnImage),
            (None, false) => return Err(LoaderError::NotAnImage),
        }
    };
    validate(&image, layout)?;
    Ok(image)
}

fn check_multiboot_flags(flags: u32) -> Result<(), LoaderError> {
    let required = flags & 0xffff;
    let supported = MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO;
    let unsupported = required & !supported;
    if unsupported != 0 {
        return Err(LoaderError::UnsupportedMultibootFlags { flags, unsupported });
    }
    Ok(())
}

fn parse_aout<'a>(bytes: &'a [u8], h: &MultibootHeader) -> Result<Image<'a>, LoaderError> {
    check_multiboot_flags(h.flags)?;
    if h.load_addr > h.header_addr {
        return Err(LoaderError::BadAoutKludge("load_addr is above header_addr"));
    }
    let header_delta = u64::from(h.header_addr - h.load_addr);
    let file_offset =
        (h.offset as u64)
            .checked_sub(header_delta)
            .ok_or(LoaderError::BadAoutKludge(
                "header_addr - load_addr is larger than the header's file offset",
            ))?;
    let load_end = if h.load_end_addr == 0 {
        u64::from(h.load_addr) + (bytes.len() as u64 - file_offset)
    } else {
        u64::from(h.load_end_addr)
    };
    if load_end < u64::from(h.load_addr) {
        return Err(LoaderError::BadAoutKludge(
            "load_end_addr is below load_addr",
        ));
    }
    let file_size = load_end - u64::from(h.load_addr);
    Bytes(bytes).slice("a.out kludge load range", file_offset, file_size)?;
    let mem_end = if h.bss_end_addr == 0 {
        load_end
    } else {
        u64::from(h.bss_end_addr)
    };
    if mem_end < load_end {
        return Err(LoaderError::BadAoutKludge(
            "bss_end_addr is below load_end_addr",
        ));
    }
    Ok(Image {
        kind: ImageKind::MultibootAout,
        entry: u64::from(h.entry_addr),
        segments: vec![Segment {
            gpa: GuestPhysAddr(u64::from(h.load_addr)),
            file_offset: file_offset as usize,
            file_size: file_size as usize,
            mem_size: mem_end - u64::from(h.load_addr),
            executable: true,
        }],
        multiboot_flags: Some(h.flags),
        bytes,
    })
}

fn parse_elf(bytes: &[u8], class: u8) -> Result<Image<'_>, LoaderError> {
    use object::elf::{FileHeader32, FileHeader64};
    let b = Bytes(bytes);
    let ident = b.slice("ELF identification", 0, 16)?;
    if ident[5] != ELFDATA2LSB {
        return Err(LoaderError::UnsupportedElf("not little-endian"));
    }
    let wide = class == 64;
    if ident[4] != if wide { ELFCLASS64 } else { ELFCLASS32 } {
        return Err(LoaderError::UnsupportedElf("unknown ELF class"));
    }
    if wide {
        parse_elf_as::<FileHeader64<LittleEndian>>(bytes, class)
    } else {
        parse_elf_as::<FileHeader32<LittleEndian>>(bytes, class)
    }
}

/// The ELF headers of one class, read with `object` (which bounds-checks every table
/// against the file); what it cannot read becomes this loader's own errors.
fn parse_elf_as<H: FileHeader<Endian = LittleEndian>>(
    bytes: &[u8],
    class: u8,
) -> Result<Image<'_>, LoaderError> {
    let wide = class == 64;
    let truncated = |what, offset: u64, len: u64| LoaderError::Truncated {
        what,
        offset,
        len,
        file_len: bytes.len(),
    };
    let header = H::parse(bytes).map_err(|_| truncated("ELF header", 0, size_of::<H>() as u64))?;
    let e_type = header.e_type(LE).0;
    let machine = header.e_machine(LE).0;
    let expected = if wide { EM_X86_64 } else { EM_386 };
    if machine != expected {
        return Err(LoaderError::WrongMachine {
            class,
            machine,
            expected: if wide { "x86-64 (62)" } else { "i386 (3)" },
        });
    }
    if e_type != ET_EXEC {
        return Err(LoaderError::NotExecutable { e_type });
    }
    let entry: u64 = header.e_entry(LE).into();
    let (phoff, phnum): (u64, u64) = (header.e_phoff(LE).into(), header.e_phnum(LE).into());
    let phentsize = u64::from(header.e_phentsize(LE));
    if phnum > 0 && phentsize < size_of::<H::ProgramHeader>() as u64 {
        return Err(LoaderError::UnsupportedElf(
            "program header entries are too small",
        ));
    }
    let table = || truncated("program header table", phoff, phentsize * phnum);
    Bytes(bytes).slice("program header table", phoff, phentsize * phnum)?;
    let headers = header.program_headers(LE, bytes).map_err(|_| table())?;
    let mut segments = Vec::new();
    for (index, ph) in headers.iter().enumerate() {
        if ph.p_type(LE).0 != PT_LOAD {
            continue;
        }
        let offset: u64 = ph.p_offset(LE).into();
        let vaddr: u64 = ph.p_vaddr(LE).into();
        let paddr: u64 = ph.p_paddr(LE).into();
        let filesz: u64 = ph.p_filesz(LE).into();
        let memsz: u64 = ph.p_memsz(LE).into();
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(LoaderError::FileSizeExceedsMemSize {
                index,
                file_size: filesz,
                mem_size: memsz,
            });
        }
        Bytes(bytes).slice("segment", offset, filesz)?;
        if wide && vaddr != paddr {
            return Err(LoaderError::NotIdentityMapped {
                index,
                vaddr,
                paddr,
            });
        }
        segments.push(Segment {
            gpa: GuestPhysAddr(paddr),
            file_offset: offset as usize,
            file_size: filesz as usize,
            mem_size: memsz,
            executable: ph.p_flags(LE).0 & PF_X != 0,
        });
    }
    Ok(Image {
        kind: ImageKind::Elf64,
        entry,
        segments,
        multiboot_flags: None,
        bytes,
    })
}

fn validate(image: &Image<'_>, layout: RamLayout) -> Result<(), LoaderError> {
    if image.segments.is_empty() {
        return Err(LoaderError::NoLoadableSegments);
    }
    for (index, s) in image.segments.iter().enumerate() {
        let end = s.gpa.0.checked_add(s.mem_size);
        let inside = s.gpa.0 >= layout.load_start && end.is_some_and(|e| e <= layout.ram_end);
        if !inside {
            return Err(LoaderError::SegmentOutsideRam {
                index,
                start: s.gpa.0,
                end: end.unwrap_or(u64::MAX),
                ram_start: layout.load_start,
                ram_end: layout.ram_end,
            });
        }
    }
    let mut order: Vec<usize> = (0..image.segments.len()).collect();
    order.sort_by_key(|&i| image.segments[i].gpa);
    for w in order.windows(2) {
        let (a, b) = (&image.segments[w[0]], &image.segments[w[1]]);
        if b.gpa.0 < a.end() {
            let (first, second) = (w[0].min(w[1]), w[0].max(w[1]));
            let (f, s) = (&image.segments[first], &image.segments[second]);
            return Err(LoaderError::SegmentsOverlap {
                first,
                first_start: f.gpa.0,
                first_end: f.end(),
                second,
                second_start: s.gpa.0,
                second_end: s.end(),
            });
        }
    }
    if !image
        .segments
        .iter()
        .any(|s| (s.gpa.0..s.end()).contains(&image.entry))
    {
        return Err(LoaderError::EntryOutsideSegments { entry: image.entry });
    }
    Ok(())
}

impl Image<'_> {
    /// Copy the segments into guest memory and zero their bss.
    pub fn load(&self, mem: &GuestMemory) -> Result<(), LoaderError> {
        for s in &self.segments {
            let data = &self.bytes[s.file_offset..s.file_offset + s.file_size];
            mem.write(s.gpa, data)?;
            let bss = s.mem_size - s.file_size as u64;
            if bss > 0 {
                mem.zero(GuestPhysAddr(s.gpa.0 + s.file_size as u64), bss)?;
            }
        }
        Ok(())
    }

    /// Lowest and highest guest-physical address the image occupies.
    pub fn extent(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.gpa.0).min().unwrap_or(0);
        let hi = self.segments.iter().map(Segment::end).max().unwrap_or(0);
        (lo, hi)
    }
}

#[cfg(test)]
mod tests;
