//! A program checked and ready to load ([`Program`]): its ELF file and interpreter, or
//! a `#!` script's, and how it is laid out in a fresh address space (segments, stack
//! with argv, envp and auxv, trap area).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_bindings::kvm_regs;

use crate::linux::abi::*;
use crate::linux::cpu::{self, TrapArea};
use crate::linux::error::LinuxError;
use crate::linux::host;
use crate::linux::loader::Elf;
use crate::linux::mm::{AddressSpace, ExecInfo, Prot};
use crate::linux::stack;
use crate::linux::vdso::Vdso;
use crate::memory::{GuestPhysAddr, GuestVirtAddr};

/// A checked program, ready to be loaded into a VM.
#[derive(Debug)]
pub struct Program {
    pub path: PathBuf,
    pub argv: Vec<OsString>,
    pub envp: Vec<OsString>,
    main: Elf,
    interp: Option<Elf>,
}

/// The interpreter and optional argument of a `#!` line (at most 255 bytes, as Linux).
fn shebang(data: &[u8]) -> Option<(PathBuf, Option<OsString>)> {
    let rest = data.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(rest);
    let line = &line[..line.len().min(255)];
    let trimmed: Vec<&[u8]> = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|w| !w.is_empty())
        .collect();
    let (interp, tail) = trimmed.split_first()?;
    let interp = PathBuf::from(std::ffi::OsStr::from_bytes(interp));
    // Linux passes everything after the interpreter as one argument.
    let arg = (!tail.is_empty()).then(|| {
        let joined = tail.join(&b' ');
        OsString::from(std::ffi::OsStr::from_bytes(&joined))
    });
    Some((interp, arg))
}

fn read_executable(path: &Path) -> Result<Vec<u8>, LinuxError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| LinuxError::io(path, e))?;
    if meta.is_dir() {
        return Err(LinuxError::Directory {
            path: path.to_owned(),
        });
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(LinuxError::NotExecutable {
            path: path.to_owned(),
        });
    }
    std::fs::read(path).map_err(|e| LinuxError::io(path, e))
}

/// Map `program` (and its interpreter), its stack with argv, envp and auxv, a trap area
/// and the VM's `vdso` (if any) into the empty `mm`: the trap area and the registers of
/// its first instruction.
pub(crate) fn build_image(
    mm: &mut AddressSpace,
    program: &Program,
    random: [u8; 16],
    stubs: Option<GuestPhysAddr>,
    vdso: Option<&Vdso>,
) -> Result<(TrapArea, kvm_regs), LinuxError> {
    let oom = |_| LinuxError::OutOfMemory;
    let trap = cpu::build_trap_area(mm, stubs).map_err(oom)?;
    let sysinfo = vdso.map(|v| v.map(mm)).transpose().map_err(oom)?;
    let main = program.main.load(mm, true)?;
    let heap = main.end.div_ceil(PAGE) * PAGE;
    mm.brk_start = heap;
    mm.brk = heap;
    let (entry, base) = match &program.interp {
        Some(i) => {
            let l = i.load(mm, false)?;
            (l.entry, l.bias)
        }
        None => (main.entry, 0),
    };
    // The stack: reserved fully, populated (eagerly, like every mapping).
    let stack_lo = STACK_TOP - STACK_SIZE;
    mm.map(stack_lo, STACK_SIZE, Prot::RW, None, "[stack]")
        .map_err(oom)?;
    let ids = host::ids();
    let spec = stack::StackSpec {
        argv: program.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        envp: program.envp.iter().map(|a| a.as_bytes().to_vec()).collect(),
        execfn: program.path.as_os_str().as_bytes().to_vec(),
        random,
        auxv: vec![
            (AT_PHDR, main.phdr),
            (AT_PHENT, main.phent),
            (AT_PHNUM, main.phnum),
            (AT_PAGESZ, PAGE),
            (AT_BASE, base),
            (AT_FLAGS, 0),
            (AT_ENTRY, main.entry),
            (AT_UID, ids[2]),
            (AT_EUID, ids[3]),
            (AT_GID, ids[4]),
            (AT_EGID, ids[5]),
            (AT_SECURE, 0),
            (AT_CLKTCK, 100),
            (AT_HWCAP, host::hwcap()),
            (AT_HWCAP2, 0),
            (AT_MINSIGSTKSZ, cpu::min_signal_stack()),
        ]
        .into_iter()
        .chain(sysinfo.map(|a| (AT_SYSINFO_EHDR, a)))
        .collect(),
    };
    let st = stack::build(&spec, STACK_TOP, STACK_SIZE / 4).ok_or(LinuxError::ArgsTooLong)?;
    mm.write(GuestVirtAddr(STACK_TOP - st.bytes.len() as u64), &st.bytes)
        .map_err(oom)?;
    mm.exec_info = ExecInfo {
        auxv: st.auxv,
        args: st.args,
        env: st.env,
    };
    Ok((trap, cpu::entry_regs(entry, st.sp)))
}

impl Program {
    /// Check `path` (an executable file) and its interpreter. `argv[0]` is the program's
    /// name as given; `envp` its environment.
    pub fn new(
        path: &Path,
        argv: Vec<OsString>,
        envp: Vec<OsString>,
    ) -> Result<Program, LinuxError> {
        let data = read_executable(path)?;
        if let Some((interp, arg)) = shebang(&data) {
            // `#!INTERP [ARG]`: run INTERP [ARG] PATH ARGS... (argv[0] replaced), as
            // binfmt_script does; the interpreter must be an ELF program itself.
            let mut args = vec![interp.clone().into_os_string()];
            args.extend(arg);
            args.push(path.as_os_str().to_owned());
            args.extend(argv.into_iter().skip(1));
            let data = read_executable(&interp).map_err(|e| match e {
                LinuxError::NotFound { .. } => LinuxError::InterpreterMissing {
                    path: path.to_owned(),
                    interp: interp.clone(),
                },
                e => e,
            })?;
            return Program::from_elf(&interp, Elf::parse(&interp, data)?, args, envp);
        }
        Program::from_elf(path, Elf::parse(path, data)?, argv, envp)
    }

    fn from_elf(
        path: &Path,
        main: Elf,
        argv: Vec<OsString>,
        envp: Vec<OsString>,
    ) -> Result<Program, LinuxError> {
        let interp = match &main.interp {
            None => None,
            Some(ip) => {
                let data = std::fs::read(ip).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => LinuxError::InterpreterMissing {
                        path: path.to_owned(),
                        interp: ip.clone(),
                    },
                    _ => LinuxError::io(ip, e),
                })?;
                let elf = Elf::parse(ip, data)?;
                if elf.interp.is_some() {
                    return Err(LinuxError::BadElf {
                        path: ip.clone(),
                        why: "the interpreter has an interpreter itself".into(),
                    });
                }
                Some(elf)
            }
        };
        Ok(Program {
            path: path.to_owned(),
            argv,
            envp,
            main,
            interp,
        })
    }

    /// The program that really runs (the interpreter of a `#!` script).
    pub fn executable(&self) -> &Path {
        &self.path
    }

    /// Whether an ELF file looks like a Linux program rather than a bootable kernel:
    /// position-independent or with an interpreter.
    pub fn looks_like_program(bytes: &[u8]) -> bool {
        Elf::parse(Path::new(""), bytes.to_vec()).is_ok_and(|e| e.is_dyn || e.interp.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines_are_split_like_binfmt_script() {
        let (i, a) = shebang(b"#!/bin/sh\necho").unwrap();
        assert_eq!((i, a), (PathBuf::from("/bin/sh"), None));
        let (i, a) = shebang(b"#! /usr/bin/env  python3 -u\n").unwrap();
        assert_eq!(i, PathBuf::from("/usr/bin/env"));
        assert_eq!(a, Some(OsString::from("python3 -u")));
        assert!(shebang(b"#!\n").is_none());
        assert!(shebang(b"\x7fELF").is_none());
        assert!(shebang(b"#!").is_none());
    }
}
