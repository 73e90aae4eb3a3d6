//! A fake guest for the tracer's tests: code bytes in memory plus the path the "CPU" takes
//! through them. Running to a breakpoint advances along the path until a breakpoint
//! address comes up; a single-step advances one instruction; an injected NMI splices the
//! handler's path in. That is all the hardware behaviour the tracer relies on.

use super::branch::CodeSize;
use super::guest::{GuestAccess, GuestAccessError, GuestCpu};
use super::msr::*;
use super::tracer::{Resume, Tracer};
use super::vpmu::VirtualPmu;

pub const IDT: u64 = 0x3000;
pub const NMI_HANDLER: u64 = 0x2000;
pub const LSTAR: u64 = 0x5000;

pub struct Fake {
    pub mem: Vec<(u64, Vec<u8>)>,
    pub path: Vec<(u64, u8)>,
    pub pos: usize,
    pub nmi_path: Vec<(u64, u8)>,
    /// Path positions at which NMIs were injected (= instructions executed before).
    pub nmis_at: Vec<usize>,
    pub rcx: u64,
    /// RFLAGS reported at every stop (`None`: unknown, the tracer steps every Jcc).
    pub rflags: Option<u64>,
    pub debug_exits: u64,
}

pub enum Ran {
    Debug,
    Free,
    End,
}

impl Fake {
    pub fn new(code: Vec<(u64, Vec<u8>)>, path: Vec<(u64, u8)>) -> Fake {
        let mut gate = vec![0u8; 16];
        gate[0..2].copy_from_slice(&(NMI_HANDLER as u16).to_le_bytes());
        gate[2] = 0x08;
        gate[5] = 0x8e;
        gate[6..8].copy_from_slice(&((NMI_HANDLER >> 16) as u16).to_le_bytes());
        let mut mem = code;
        mem.push((IDT + 2 * 16, gate));
        mem.push((NMI_HANDLER, vec![0x48, 0xcf])); // iretq
        // Readable (INT3-filled) bytes after each piece, as real guest pages have.
        for (_, bytes) in &mut mem {
            bytes.resize(bytes.len() + 32, 0xcc);
        }
        Fake {
            mem,
            path,
            pos: 0,
            nmi_path: vec![(NMI_HANDLER, 0)],
            nmis_at: vec![],
            rcx: 0,
            rflags: None,
            debug_exits: 0,
        }
    }

    /// Applies `r` and runs to the next debug stop.
    pub fn run(&mut self, r: &Resume) -> Ran {
        if r.inject_nmi {
            self.nmis_at.push(self.pos);
            let handler = self.nmi_path.clone();
            let len = handler.len();
            self.path.splice(self.pos..self.pos, handler);
            if r.breakpoints.contains(&self.path[self.pos].0) {
                self.debug_exits += 1;
                return Ran::Debug;
            }
            // Not stopped at its entry: the handler runs with TF clear (interrupt delivery
            // clears it, IRET restores it) and returns to the interrupted instruction.
            self.pos += len;
            if !r.is_free() && !r.single_step && r.breakpoints.contains(&self.path[self.pos].0) {
                self.debug_exits += 1;
                return Ran::Debug;
            }
            if r.single_step {
                // The step applies to the interrupted instruction, as after the IRET.
                self.pos += 1;
                if self.pos >= self.path.len() {
                    return Ran::End;
                }
                self.debug_exits += 1;
                return Ran::Debug;
            }
        }
        if r.is_free() {
            return Ran::Free;
        }
        loop {
            self.pos += 1;
            if self.pos >= self.path.len() {
                return Ran::End;
            }
            if r.single_step || r.breakpoints.contains(&self.path[self.pos].0) {
                self.debug_exits += 1;
                return Ran::Debug;
            }
        }
    }

    /// Runs free for up to `n` instructions; returns how many ran.
    pub fn free_run(&mut self, n: u64) -> u64 {
        let left = (self.path.len() - 1 - self.pos) as u64;
        let n = n.min(left);
        self.pos += n as usize;
        n
    }
}

impl GuestAccess for Fake {
    fn cpu(&mut self) -> Result<GuestCpu, GuestAccessError> {
        let (rip, cpl) = self.path[self.pos.min(self.path.len() - 1)];
        Ok(GuestCpu {
            rip,
            rsp: 0,
            rbp: 0,
            rflags: self.rflags,
            rcx: self.rcx,
            cpl,
            code_size: CodeSize::Bits64,
            idt_base: IDT,
            idt_limit: 0xFFF,
            cr3: 0x9000,
        })
    }

    fn read_virt(&mut self, gva: u64, buf: &mut [u8]) -> Result<(), GuestAccessError> {
        for (base, bytes) in &self.mem {
            if gva >= *base && gva + buf.len() as u64 <= base + bytes.len() as u64 {
                let off = (gva - base) as usize;
                buf.copy_from_slice(&bytes[off..off + buf.len()]);
                return Ok(());
            }
        }
        Err(GuestAccessError::Unmapped { gva })
    }

    fn read_msr(&mut self, index: u32) -> Result<u64, GuestAccessError> {
        match index {
            IA32_LSTAR => Ok(LSTAR),
            IA32_TSC => Ok(self.pos as u64),
            _ => Err(GuestAccessError::Unavailable { what: "MSR" }),
        }
    }
}

/// Drives tracer and fake to the end of the path.
pub fn drive(t: &mut Tracer, g: &mut Fake, pmu: &mut VirtualPmu) {
    let r = t.start(g, pmu).unwrap();
    drive_from(t, g, pmu, r);
}

/// Drives tracer and fake to the end of the path from the plan `r`.
pub fn drive_from(t: &mut Tracer, g: &mut Fake, pmu: &mut VirtualPmu, mut r: Resume) {
    for _ in 0..1_000_000 {
        match g.run(&r) {
            Ran::End => return,
            Ran::Debug => r = t.on_debug_exit(g, pmu).unwrap(),
            Ran::Free => {
                let Some(d) = r.deadline_cycles else { return };
                let ran = g.free_run(d);
                if ran == 0 {
                    return;
                }
                let cpl = g.cpu().unwrap().cpl;
                r = t.on_free_run(g, pmu, ran, cpl).unwrap();
            }
        }
    }
    panic!("the tracer did not reach the end of the path");
}

/// Program A (user mode, at 0x1000):
/// ```text
/// 1000 mov ecx, ITERS   1005 xor eax, eax
/// 1007 add eax, ecx     1009 dec ecx       100b jnz 1007
/// 100d call 1020        1012 nop           1013 jmp 1013
/// 1020 nop              1021 ret
/// ```
/// The path runs the loop ITERS times, the call and return, then `spins` times the jmp.
pub fn program_a(iters: u32, spins: usize) -> Fake {
    let mut code = vec![0xb9];
    code.extend_from_slice(&iters.to_le_bytes());
    code.extend_from_slice(&[0x31, 0xc0, 0x01, 0xc8, 0xff, 0xc9, 0x75, 0xfa]);
    code.extend_from_slice(&[0xe8, 0x0e, 0, 0, 0, 0x90, 0xeb, 0xfe]);
    code.resize(0x20, 0xcc);
    code.extend_from_slice(&[0x90, 0xc3]);
    let mut path = vec![0x1000, 0x1005];
    for _ in 0..iters {
        path.extend_from_slice(&[0x1007, 0x1009, 0x100b]);
    }
    path.extend_from_slice(&[0x100d, 0x1020, 0x1021, 0x1012]);
    path.extend(std::iter::repeat_n(0x1013, spins));
    Fake::new(
        vec![(0x1000, code)],
        path.into_iter().map(|a| (a, 3)).collect(),
    )
}
