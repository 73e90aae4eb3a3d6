//! Reading machine code of the profiled modules back (x86-64, with iced-x86): counting the
//! instructions of a fall-through range and classifying the branch at an edge's source.
//!
//! Offsets are file offsets (what [`crate::loc::Loc`] holds for file-backed modules), so
//! the bytes are read straight from the file at that offset; no ELF parsing is needed.
//! A module whose file is missing simply gives `None`, and callers fall back to estimates.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};
use lbrprof_data::model::BranchKind;

use crate::loc::{Loc, ModuleId, ModuleKind, ModuleTable};

/// Average x86-64 instruction length used when the code cannot be read (bytes).
pub const AVG_INSN_BYTES: f64 = 4.0;

/// Instruction bytes longer than this are not decoded (a range that long is suspicious).
const MAX_DECODE_BYTES: u64 = 1 << 16;

/// Reads code from module files, opening each file once.
#[derive(Default)]
pub struct CodeReader {
    files: HashMap<ModuleId, Option<Code>>,
}

/// Where a module's code is read from: its file, or the image of a pseudo-module
/// (`[vdso]`, `[lbrprof_shim]`) the symbolizer was given.
enum Code {
    File(File),
    Image(&'static [u8]),
}

impl Code {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        match self {
            Code::File(f) => f.read_at(buf, off),
            Code::Image(bytes) => {
                let rest = usize::try_from(off)
                    .ok()
                    .and_then(|o| bytes.get(o..))
                    .unwrap_or_default();
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                Ok(n)
            }
        }
    }
}

impl CodeReader {
    fn file(&mut self, modules: &ModuleTable, id: ModuleId) -> Option<&Code> {
        self.files
            .entry(id)
            .or_insert_with(|| {
                let m = modules.get(id);
                if !matches!(m.kind, ModuleKind::File | ModuleKind::Guest) {
                    return None;
                }
                let path = std::path::Path::new(&m.path);
                match lbrprof_symbolizer::pseudo_module_image(path, m.build_id.as_deref()) {
                    Some(image) => Some(Code::Image(image)),
                    None => File::open(path).ok().map(Code::File),
                }
            })
            .as_ref()
    }

    /// Up to `len` bytes of `id`'s file from offset `off` (fewer at its end), when the
    /// module is a readable file.
    pub fn bytes(
        &mut self,
        modules: &ModuleTable,
        id: ModuleId,
        off: u64,
        len: u64,
    ) -> Option<Vec<u8>> {
        let f = self.file(modules, id)?;
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(_) => return None,
            }
        }
        buf.truncate(got);
        (!buf.is_empty()).then_some(buf)
    }

    /// `len` bytes of module `id`'s code from `off` (fewer at the end of the file); `None`
    /// when the file cannot be read.
    pub fn read(
        &mut self,
        modules: &ModuleTable,
        id: ModuleId,
        off: u64,
        len: u64,
    ) -> Option<Vec<u8>> {
        self.bytes(modules, id, off, len)
    }

    /// Instructions from `start` through the one at `end` (both in one module), decoded.
    pub fn count_instructions(
        &mut self,
        modules: &ModuleTable,
        start: Loc,
        end: Loc,
    ) -> Option<u64> {
        if start.module != end.module || end.offset < start.offset {
            return None;
        }
        let span = end.offset - start.offset;
        if span > MAX_DECODE_BYTES {
            return None;
        }
        let code = self.bytes(modules, start.module, start.offset, span + 16)?;
        let mut dec = Decoder::with_ip(64, &code, start.offset, DecoderOptions::NONE);
        let mut n = 0;
        while dec.can_decode() {
            let ip = dec.ip();
            if ip > end.offset {
                break;
            }
            let insn = dec.decode();
            if insn.is_invalid() {
                return None;
            }
            n += 1;
            if ip == end.offset {
                return Some(n);
            }
        }
        // `end` was not on an instruction boundary: the bytes do not match the recording.
        None
    }

    /// The kind of the branch instruction at `at`, when its module's code is readable.
    pub fn classify(&mut self, modules: &ModuleTable, at: Loc) -> Option<BranchKind> {
        let code = self.bytes(modules, at.module, at.offset, 16)?;
        let insn = Decoder::with_ip(64, &code, at.offset, DecoderOptions::NONE).decode();
        if insn.is_invalid() {
            return None;
        }
        Some(match insn.flow_control() {
            FlowControl::ConditionalBranch => BranchKind::Cond,
            FlowControl::UnconditionalBranch => BranchKind::Uncond,
            FlowControl::IndirectBranch => BranchKind::IndJump,
            FlowControl::Call => BranchKind::Call,
            FlowControl::IndirectCall => BranchKind::IndCall,
            FlowControl::Return => match insn.mnemonic() {
                Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => BranchKind::Eret,
                Mnemonic::Sysret | Mnemonic::Sysretq => BranchKind::Sysret,
                _ => BranchKind::Ret,
            },
            FlowControl::Interrupt => match insn.mnemonic() {
                Mnemonic::Syscall | Mnemonic::Sysenter => BranchKind::Syscall,
                _ => BranchKind::Exception,
            },
            FlowControl::XbeginXabortXend | FlowControl::Exception | FlowControl::Next => {
                BranchKind::Unknown
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_and_classifies_real_bytes() {
        // 0: nop; 1: mov eax,1 (5 bytes); 6: jne +0 (2 bytes); 8: call rel32; 13: ret
        let code = [0x90, 0xb8, 1, 0, 0, 0, 0x75, 0x00, 0xe8, 0, 0, 0, 0, 0xc3];
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&code).unwrap();
        let mut modules = ModuleTable::default();
        let m = modules.intern(f.path().to_str().unwrap(), None, ModuleKind::File);
        let l = |o| Loc {
            module: m,
            offset: o,
        };
        let mut r = CodeReader::default();
        assert_eq!(r.count_instructions(&modules, l(0), l(6)), Some(3));
        assert_eq!(r.count_instructions(&modules, l(0), l(13)), Some(5));
        assert_eq!(
            r.count_instructions(&modules, l(0), l(3)),
            None,
            "not a boundary"
        );
        assert_eq!(r.classify(&modules, l(6)), Some(BranchKind::Cond));
        assert_eq!(r.classify(&modules, l(8)), Some(BranchKind::Call));
        assert_eq!(r.classify(&modules, l(13)), Some(BranchKind::Ret));
        let missing = modules.intern("/nonexistent/x", None, ModuleKind::File);
        assert_eq!(
            r.classify(
                &modules,
                Loc {
                    module: missing,
                    offset: 0
                }
            ),
            None
        );
    }
}
