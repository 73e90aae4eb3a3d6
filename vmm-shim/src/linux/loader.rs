//! Loading an x86-64 Linux ELF program (and its PT_INTERP interpreter) into an
//! [`AddressSpace`], the way fs/binfmt_elf.c does: every PT_LOAD mapped from the file at
//! its page-aligned offset, the rest of its memory size zero-filled, position-
//! independent images placed at a load bias. ELF headers are parsed with `object`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::LittleEndian as LE;
use object::elf::{
    EM_X86_64, ET_DYN, ET_EXEC, FileHeader64, PF_R, PF_W, PF_X, PT_INTERP, PT_LOAD, PT_PHDR,
};
use object::read::elf::{FileHeader, ProgramHeader};

use crate::linux::abi::{PAGE, PIE_BASE};
use crate::linux::error::LinuxError;
use crate::linux::mm::{AddressSpace, FileBacking, Prot};

/// Where one ELF image ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    /// Load bias (0 for ET_EXEC).
    pub bias: u64,
    /// Address of the program headers in memory (AT_PHDR), 0 if not mapped.
    pub phdr: u64,
    pub phnum: u64,
    pub phent: u64,
    /// End of the highest segment (where the heap starts).
    pub end: u64,
}

/// One PT_LOAD, in file terms.
#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
    memsz: u64,
    flags: u32,
}

/// A parsed, checked ELF image (nothing mapped yet).
#[derive(Debug)]
pub struct Elf {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub is_dyn: bool,
    pub interp: Option<PathBuf>,
    entry: u64,
    phoff: u64,
    phnum: u64,
    phent: u64,
    phdr_vaddr: Option<u64>,
    segments: Vec<Segment>,
}

fn page_down(v: u64) -> u64 {
    v & !(PAGE - 1)
}

impl Elf {
    /// Parse and check `data` (the contents of `path`).
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<Elf, LinuxError> {
        let bad = |why: &str| LinuxError::BadElf {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err(LinuxError::NotElf {
                path: path.to_owned(),
            });
        }
        if data.len() > 4 && data[4] != object::elf::ELFCLASS64.0 {
            return Err(LinuxError::WrongArch {
                path: path.to_owned(),
                what: "a 32-bit ELF".into(),
            });
        }
        let header =
            FileHeader64::<LE>::parse(&*data).map_err(|e| bad(&format!("bad ELF header ({e})")))?;
        let machine = header.e_machine(LE);
        if machine != EM_X86_64 {
            return Err(LinuxError::WrongArch {
                path: path.to_owned(),
                what: format!("an ELF for machine {}, not x86-64", machine.0),
            });
        }
        let is_dyn = match header.e_type(LE) {
            ET_EXEC => false,
            ET_DYN => true,
            t => {
                return Err(bad(&format!(
                    "ELF type {} is neither an executable nor a shared object",
                    t.0
                )));
            }
        };
        let phdrs = header
            .program_headers(LE, &*data)
            .map_err(|e| bad(&format!("bad program headers ({e})")))?;
        let mut interp = None;
        let mut phdr_vaddr = None;
        let mut segments = Vec::new();
        for ph in phdrs {
            match ph.p_type(LE) {
                PT_LOAD => {
                    let s = Segment {
                        vaddr: ph.p_vaddr(LE),
                        offset: ph.p_offset(LE),
                        filesz: ph.p_filesz(LE),
                        memsz: ph.p_memsz(LE),
                        flags: ph.p_flags(LE).0,
                    };
                    let file_end = s.offset.checked_add(s.filesz);
                    if s.filesz > s.memsz || file_end.is_none_or(|e| e > data.len() as u64) {
                        return Err(bad("a PT_LOAD segment lies outside the file (truncated?)"));
                    }
                    if s.vaddr % PAGE != s.offset % PAGE {
                        return Err(bad(
                            "a PT_LOAD segment's address and offset differ modulo the page size",
                        ));
                    }
                    if s.vaddr
                        .checked_add(s.memsz)
                        .is_none_or(|e| e > crate::linux::abi::USER_END)
                    {
                        return Err(bad("a PT_LOAD segment lies outside user space"));
                    }
                    if s.memsz > 0 {
                        segments.push(s);
                    }
                }
                PT_INTERP => {
                    let raw = ph
                        .data(LE, &*data)
                        .map_err(|_| bad("PT_INTERP lies outside the file"))?;
                    let name = raw.split(|&b| b == 0).next().unwrap_or_default();
                    if name.is_empty() {
                        return Err(bad("empty PT_INTERP"));
                    }
                    use std::os::unix::ffi::OsStrExt;
                    interp = Some(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
                }
                PT_PHDR => phdr_vaddr = Some(ph.p_vaddr(LE)),
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(bad("no PT_LOAD segment"));
        }
        segments.sort_by_key(|s| s.vaddr);
        Ok(Elf {
            path: path.to_owned(),
            is_dyn,
            interp,
            entry: header.e_entry(LE),
            phoff: header.e_phoff(LE),
            phnum: u64::from(header.e_phnum(LE)),
            phent: u64::from(header.e_phentsize(LE)),
            phdr_vaddr,
            segments,
            data,
        })
    }

    /// Bytes of address space the image spans (page-aligned).
    pub fn span(&self) -> u64 {
        let lo = page_down(self.segments[0].vaddr);
        let hi = self
            .segments
            .iter()
            .map(|s| s.vaddr + s.memsz)
            .max()
            .unwrap_or(lo);
        hi.div_ceil(PAGE) * PAGE - lo
    }

    fn min_vaddr(&self) -> u64 {
        page_down(self.segments[0].vaddr)
    }

    /// Map the image. `main` decides where a position-independent image goes: the
    /// program's fixed PIE base, or (for the interpreter) the top free range.
    pub fn load(&self, mm: &mut AddressSpace, main: bool) -> Result<Loaded, LinuxError> {
        let oom = |_| LinuxError::OutOfMemory;
        let bias = if !self.is_dyn {
            0
        } else if main {
            PIE_BASE - self.min_vaddr()
        } else {
            mm.find_free(self.span()).ok_or(LinuxError::OutOfMemory)? - self.min_vaddr()
        };
        let file =
            Arc::new(std::fs::File::open(&self.path).map_err(|e| LinuxError::io(&self.path, e))?);
        let mut end = 0;
        for s in &self.segments {
            let mut prot = 0u32;
            if s.flags & PF_R.0 != 0 {
                prot |= libc::PROT_READ as u32;
            }
            if s.flags & PF_W.0 != 0 {
                prot |= libc::PROT_WRITE as u32;
            }
            if s.flags & PF_X.0 != 0 {
                prot |= libc::PROT_EXEC as u32;
            }
            let prot = Prot(prot);
            let start = page_down(s.vaddr + bias);
            let file_end = (s.vaddr + bias + s.filesz).div_ceil(PAGE) * PAGE;
            let mem_end = (s.vaddr + bias + s.memsz).div_ceil(PAGE) * PAGE;
            if file_end > start {
                let backing = FileBacking {
                    path: self.path.clone(),
                    file: file.clone(),
                    offset: page_down(s.offset),
                };
                mm.map(start, file_end - start, prot, Some(backing), "")
                    .map_err(oom)?;
                // The bytes of the last file page past the segment's file size are bss.
                let tail_start = s.vaddr + bias + s.filesz;
                if s.memsz > s.filesz && tail_start < file_end && !prot.is_none() {
                    let zeros = vec![0u8; (file_end - tail_start) as usize];
                    mm.poke(tail_start, &zeros).map_err(oom)?;
                }
            }
            if mem_end > file_end.max(start) {
                let a = file_end.max(start);
                mm.map(a, mem_end - a, prot, None, "").map_err(oom)?;
            }
            end = end.max(s.vaddr + bias + s.memsz);
        }
        let phdr = match self.phdr_vaddr {
            Some(v) => v + bias,
            None => self
                .segments
                .iter()
                .find(|s| s.offset <= self.phoff && self.phoff < s.offset + s.filesz)
                .map_or(0, |s| s.vaddr + (self.phoff - s.offset) + bias),
        };
        Ok(Loaded {
            entry: self.entry + bias,
            bias,
            phdr,
            phnum: self.phnum,
            phent: self.phent,
            end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Elf, LinuxError> {
        Elf::parse(Path::new("t"), bytes.to_vec())
    }

    #[test]
    fn non_elf_wrong_arch_and_truncated_files_are_refused_without_panicking() {
        assert!(matches!(
            parse(b"#!/bin/sh\n"),
            Err(LinuxError::NotElf { .. })
        ));
        assert!(matches!(parse(b""), Err(LinuxError::NotElf { .. })));
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 1;
        assert!(matches!(parse(&h), Err(LinuxError::WrongArch { .. })));
        h[4] = 2;
        h[5] = 1;
        h[6] = 1;
        h[18] = 183; // EM_AARCH64
        h[16] = 2;
        assert!(matches!(parse(&h), Err(LinuxError::WrongArch { .. })));
        h[18] = 62;
        assert!(
            matches!(parse(&h), Err(LinuxError::BadElf { .. })),
            "no segments"
        );
        // Every truncation of a real program is an error or a valid parse, never a panic.
        let real = std::fs::read("/bin/true").unwrap();
        for len in (0..real.len().min(8192)).step_by(7) {
            let _ = parse(&real[..len]);
        }
        let e = parse(&real[..real.len() / 2]);
        assert!(matches!(e, Err(LinuxError::BadElf { .. })), "{e:?}");
    }

    #[test]
    fn a_dynamic_program_names_its_interpreter() {
        let e = Elf::parse(Path::new("/bin/true"), std::fs::read("/bin/true").unwrap()).unwrap();
        assert!(e.is_dyn);
        let interp = e.interp.unwrap();
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
    }
}
