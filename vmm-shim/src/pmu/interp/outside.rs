//! The instructions that read the world outside the program: RDRAND, RDSEED, RDTSC,
//! RDTSCP and RDPID, answered from a pinned world in exact mode.
//!
//! Exact mode promises the same counts on every run, and the shim pins what a program's
//! system calls read (the clocks, `getrandom`, `AT_RANDOM`, pids: `crate::linux::clock`,
//! `crate::linux::entropy`). A program can also read the CPU's random number generator
//! and time-stamp counter without a system call, and where KVM cannot edit the CPUID the
//! program sees (this host's PVM runs guest ring 3 with the host's CPUID) it finds RDRAND
//! and RDSEED advertised whatever the shim hides. So in exact mode the interpreter owns
//! these instructions ([`Outside`]), and the tracer stops the CPU before each one it would
//! otherwise run natively, so the interpreter answers it:
//!
//! * **RDRAND, RDSEED**: the next 16, 32 or 64 bits of one stream per vCPU, seeded from
//!   the run's entropy seed (the one `getrandom` draws from) and the vCPU's index, never
//!   the same bytes as `getrandom`'s stream; CF=1 (a number was delivered), OF, SF, ZF, AF
//!   and PF cleared, as the SDM defines for a successful draw.
//! * **RDTSC, RDTSCP**: [`TSC_AT_START`] plus the instructions the vCPU has retired before
//!   this one (exact mode's cycle counter counts one cycle per instruction; the TSC ticks
//!   at a nominal 1 GHz, so it reads the pinned `CLOCK_MONOTONIC`'s origin, 1000 s, in ns
//!   at the start and then advances with the work done, never with the host's time).
//!   Each vCPU counts its own instructions: a thread or a forked process starts again at
//!   [`TSC_AT_START`].
//! * **RDTSCP, RDPID**: `IA32_TSC_AUX` reads 0 (CPU 0, node 0, in Linux's encoding).
//!
//! With the host's outside world (`--vm-outside host`), or where the interpreter does not
//! run (outside exact mode, or a state it refuses), these instructions run on the CPU and
//! read the host's values.

use fastrand::Rng;
use iced_x86::{Code, Mnemonic};

use super::alu::{CF, STATUS};
use super::{Effect, Exec, Halt, set_reg};
use crate::pmu::guest::InterpState;

/// What an exact-mode run pins of the outside world the CPU shows a program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutsideConfig {
    /// RDRAND and RDSEED draw from a stream with this seed (the run's entropy seed); `None`:
    /// the host's generator.
    pub random_seed: Option<u64>,
    /// RDTSC and RDTSCP read a clock pinned to the instruction count, RDTSCP and RDPID a
    /// pinned `IA32_TSC_AUX`; `false`: the host's.
    pub pinned_clock: bool,
}

impl OutsideConfig {
    /// Whether the pinned world answers `m` (the CPU must not run it).
    pub fn owns(&self, m: Mnemonic) -> bool {
        match m {
            Mnemonic::Rdrand | Mnemonic::Rdseed => self.random_seed.is_some(),
            Mnemonic::Rdtsc | Mnemonic::Rdtscp | Mnemonic::Rdpid => self.pinned_clock,
            _ => false,
        }
    }
}

/// The time-stamp counter when a pinned run starts: the pinned `CLOCK_MONOTONIC` origin
/// (1000 s, `crate::linux::clock::BOOT`) in ticks of a nominal 1 GHz TSC.
pub const TSC_AT_START: u64 = 1_000_000_000_000;

/// The pinned `IA32_TSC_AUX` (Linux writes `node << 12 | cpu` there): CPU 0, node 0.
pub const TSC_AUX: u64 = 0;

/// Keeps the RDRAND stream apart from the `getrandom` stream of the same seed.
const RANDOM_SALT: u64 = 0x5244_5241_4e44_0000; // "RDRAND"

/// The pinned world one vCPU's interpreter answers from.
#[derive(Clone, Debug)]
pub struct Outside {
    random: Option<Rng>,
    pinned_clock: bool,
}

impl Outside {
    /// vCPU `vcpu`'s world under `cfg`.
    pub fn new(cfg: OutsideConfig, vcpu: u32) -> Outside {
        Outside {
            random: cfg.random_seed.map(|seed| {
                Rng::with_seed(
                    seed ^ RANDOM_SALT ^ u64::from(vcpu).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
            }),
            pinned_clock: cfg.pinned_clock,
        }
    }

    /// The next random number (RDRAND, RDSEED), if randomness is pinned.
    pub fn random(&mut self) -> Option<u64> {
        self.random.as_mut().map(|r| r.u64(..))
    }

    /// The time-stamp counter after `retired` instructions (RDTSC, RDTSCP), if the clock
    /// is pinned.
    pub fn tsc(&self, retired: u64) -> Option<u64> {
        self.pinned_clock
            .then(|| TSC_AT_START.wrapping_add(retired))
    }

    /// `IA32_TSC_AUX` (RDTSCP, RDPID), if the clock is pinned.
    pub fn tsc_aux(&self) -> Option<u64> {
        self.pinned_clock.then_some(TSC_AUX)
    }
}

impl Exec<'_, '_, '_> {
    /// RDRAND, RDSEED, RDTSC, RDTSCP and RDPID from the session's pinned world; `None`
    /// for any other instruction.
    pub(super) fn run_outside(&mut self, s: &mut InterpState) -> Option<Result<Effect, Halt>> {
        let code = self.insn.code();
        let r = match code {
            Code::Rdrand_r16
            | Code::Rdrand_r32
            | Code::Rdrand_r64
            | Code::Rdseed_r16
            | Code::Rdseed_r32
            | Code::Rdseed_r64 => self.random(s),
            Code::Rdtsc => self.tsc(s, false),
            Code::Rdtscp => self.tsc(s, true),
            Code::Rdpid_r64 => self.rdpid(s),
            _ => return None,
        };
        Some(r.map(|()| Effect::Next))
    }

    fn world(&mut self) -> Result<&mut Outside, Halt> {
        let m = self.insn.mnemonic();
        self.session
            .interp
            .outside
            .as_mut()
            .ok_or(Halt::Unsupported(m))
    }

    /// RDRAND/RDSEED: a number was delivered (CF=1, OF/SF/ZF/AF/PF=0).
    fn random(&mut self, s: &mut InterpState) -> Result<(), Halt> {
        let v = self.world()?.random().ok_or_else(|| self.unsupported())?;
        let reg = self.insn.op0_register();
        // (set_reg keeps the register's width.)
        set_reg(s, reg, v).ok_or_else(|| self.unsupported())?;
        s.rflags = (s.rflags & !STATUS) | CF;
        Ok(())
    }

    /// RDTSC (EDX:EAX), RDTSCP (and ECX = TSC_AUX); flags unchanged.
    fn tsc(&mut self, s: &mut InterpState, aux: bool) -> Result<(), Halt> {
        let retired = self.session.retired_before();
        let world = self.world()?;
        let (Some(tsc), Some(tsc_aux)) = (world.tsc(retired), world.tsc_aux()) else {
            return Err(self.unsupported());
        };
        s.gpr[0] = tsc & 0xffff_ffff;
        s.gpr[2] = tsc >> 32;
        if aux {
            s.gpr[1] = tsc_aux & 0xffff_ffff;
        }
        Ok(())
    }

    /// RDPID: TSC_AUX into a 64-bit register; flags unchanged.
    fn rdpid(&mut self, s: &mut InterpState) -> Result<(), Halt> {
        let v = self.world()?.tsc_aux().ok_or_else(|| self.unsupported())?;
        set_reg(s, self.insn.op0_register(), v).ok_or_else(|| self.unsupported())
    }
}
