//! What this host's KVM can do for lbrprof, as plain facts ([`KvmCaps`]). The guest-LBR
//! backend is decided from these facts in one place, [`crate::pmu::backend::decide`], for
//! `record`, `run` and `info` alike.

use std::fmt;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};

use crate::builtin;
use crate::error::VmError;
use crate::hook::{DebugExit, ExitKind, VcpuCtx, VcpuHook};
use crate::vm::{Vm, VmConfig};

/// The architectural PMU leaf (CPUID 0xA) as KVM reports it supports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmuLeaf {
    pub version: u8,
    pub gp_counters: u8,
    pub gp_width: u8,
    pub fixed_counters: u8,
    pub fixed_width: u8,
}

impl PmuLeaf {
    /// Decode CPUID.0AH EAX/EDX (SDM Vol. 2A, CPUID leaf 0AH).
    pub fn from_cpuid(eax: u32, edx: u32) -> PmuLeaf {
        PmuLeaf {
            version: eax as u8,
            gp_counters: (eax >> 8) as u8,
            gp_width: (eax >> 16) as u8,
            fixed_counters: (edx & 0x1f) as u8,
            fixed_width: (edx >> 5) as u8,
        }
    }
}

/// KVM facts for `lbrprof info` and for choosing a PMU backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvmCaps {
    /// Why /dev/kvm could not be opened (None = it could).
    pub open_error: Option<String>,
    pub api_version: Option<i32>,
    pub user_space_msr: bool,
    pub msr_filter: bool,
    pub guest_debug: bool,
    pub irqchip: bool,
    pub pit2: bool,
    pub immediate_exit: bool,
    pub max_vcpus: u32,
    /// /sys/module/kvm/parameters/enable_pmu (None = not readable).
    pub enable_pmu: Option<bool>,
    /// CPUID leaf 0xA from KVM_GET_SUPPORTED_CPUID (None = absent or version 0).
    pub pmu_leaf: Option<PmuLeaf>,
    /// CPU vendor string from KVM's CPUID leaf 0.
    pub vendor: Option<String>,
    /// Whether KVM's single-step reaches natively executed ring-3 guest code (measured by
    /// booting a guest, see [`probe_ring3_guest_debug`]; None = not measured). Some nested
    /// hosts honour KVM guest debugging only in (emulated) ring 0; the emulated LBR does
    /// not depend on it there, since it stops ring-3 code through the guest's own trap
    /// handlers and runs it in its interpreter.
    pub ring3_guest_debug: Option<bool>,
}

/// Probe /dev/kvm and sysfs.
pub fn probe() -> KvmCaps {
    let enable_pmu = std::fs::read_to_string("/sys/module/kvm/parameters/enable_pmu")
        .ok()
        .and_then(|s| parse_bool_param(&s));
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            return KvmCaps {
                open_error: Some(format!("cannot open /dev/kvm: {e}")),
                enable_pmu,
                ..Default::default()
            };
        }
    };
    let mut caps = KvmCaps {
        open_error: None,
        api_version: Some(kvm.get_api_version()),
        user_space_msr: kvm.check_extension(Cap::X86UserSpaceMsr),
        msr_filter: kvm.check_extension(Cap::X86MsrFilter),
        guest_debug: kvm.check_extension(Cap::SetGuestDebug),
        irqchip: kvm.check_extension(Cap::Irqchip),
        pit2: kvm.check_extension(Cap::Pit2),
        immediate_exit: kvm.check_extension(Cap::ImmediateExit),
        max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(0),
        enable_pmu,
        pmu_leaf: None,
        vendor: None,
        ring3_guest_debug: None,
    };
    if let Ok(cpuid) = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES) {
        for e in cpuid.as_slice() {
            match e.function {
                0 => {
                    let mut v = Vec::with_capacity(12);
                    for r in [e.ebx, e.edx, e.ecx] {
                        v.extend(r.to_le_bytes());
                    }
                    caps.vendor = Some(String::from_utf8_lossy(&v).into_owned());
                }
                0xa => {
                    let leaf = PmuLeaf::from_cpuid(e.eax, e.edx);
                    caps.pmu_leaf = (leaf.version > 0).then_some(leaf);
                }
                _ => {}
            }
        }
    }
    if caps.guest_debug && caps.irqchip {
        caps.ring3_guest_debug = probe_ring3_guest_debug().ok();
    }
    caps
}

/// Boot the built-in `calls` guest, single-step it from its first ring-3 exit on, and
/// tell whether debug exits arrive for ring-3 instructions (at least three: the first
/// step after an I/O exit can come from KVM's own instruction emulation). Takes one short
/// VM run (~20 ms).
pub fn probe_ring3_guest_debug() -> Result<bool, VmError> {
    struct Probe {
        ring3_steps: Arc<AtomicU32>,
        armed: bool,
    }
    fn in_ring3(ctx: &VcpuCtx<'_>) -> bool {
        ctx.sregs().is_ok_and(|s| s.cs.dpl == 3)
    }
    impl VcpuHook for Probe {
        fn on_exit(&mut self, ctx: &mut VcpuCtx<'_>, exit: &ExitKind) {
            if !self.armed && matches!(exit, ExitKind::IoOut { .. }) && in_ring3(ctx) {
                self.armed = true;
                ctx.set_single_step(true);
            }
        }
        fn on_debug(&mut self, ctx: &mut VcpuCtx<'_>, debug: &DebugExit) {
            if debug.is_single_step() && in_ring3(ctx) {
                let n = self.ring3_steps.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= RING3_STEPS {
                    ctx.set_single_step(false);
                }
            }
        }
    }
    const RING3_STEPS: u32 = 3;
    let image =
        builtin::image("calls").ok_or(VmError::Loader(crate::loader::LoaderError::NotAnImage))?;
    let steps = Arc::new(AtomicU32::new(0));
    let mut config = VmConfig::new(16 << 20, 1);
    config.cmdline = "n=0 depth=0".into();
    config.timeout = Some(Duration::from_secs(10));
    config.serial = Box::new(std::io::sink());
    config.warn = Box::new(|_| {});
    let s = steps.clone();
    let hooks = move |_: u32| -> Box<dyn VcpuHook> {
        Box::new(Probe {
            ring3_steps: s.clone(),
            armed: false,
        })
    };
    Vm::run(config, image, &hooks)?;
    Ok(steps.load(Ordering::Relaxed) >= RING3_STEPS)
}

fn parse_bool_param(s: &str) -> Option<bool> {
    match s.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

impl fmt::Display for KvmCaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.open_error {
            writeln!(f, "kvm: unavailable ({e})")?;
        } else {
            writeln!(
                f,
                "kvm: /dev/kvm ok, API version {}",
                self.api_version.unwrap_or(0)
            )?;
            if let Some(v) = &self.vendor {
                writeln!(f, "kvm: CPU vendor {v}, up to {} vCPUs", self.max_vcpus)?;
            }
            writeln!(f, "kvm: user-space MSR exits: {}", yes(self.user_space_msr))?;
            writeln!(f, "kvm: MSR filter: {}", yes(self.msr_filter))?;
            writeln!(
                f,
                "kvm: guest debug (single-step, DR0-DR3 breakpoints): {}",
                yes(self.guest_debug)
            )?;
            match self.ring3_guest_debug {
                Some(true) => writeln!(f, "kvm: guest debug reaches ring-3 code: yes")?,
                Some(false) => writeln!(
                    f,
                    "kvm: guest debug reaches ring-3 code: no (KVM single-steps only guest ring 0 here; the emulated LBR stops ring-3 code through the guest's trap handlers instead)"
                )?,
                None => writeln!(f, "kvm: guest debug reaches ring-3 code: not measured")?,
            }
            writeln!(
                f,
                "kvm: in-kernel irqchip: {}, PIT: {}, immediate exit: {}",
                yes(self.irqchip),
                yes(self.pit2),
                yes(self.immediate_exit)
            )?;
        }
        match self.enable_pmu {
            Some(b) => writeln!(f, "kvm: enable_pmu: {}", yes(b))?,
            None => writeln!(
                f,
                "kvm: enable_pmu: unknown (no /sys/module/kvm/parameters/enable_pmu)"
            )?,
        }
        match self.pmu_leaf {
            Some(l) => writeln!(
                f,
                "kvm: guest PMU leaf 0xA: version {}, {} GP counters ({} bits), {} fixed ({} bits)",
                l.version, l.gp_counters, l.gp_width, l.fixed_counters, l.fixed_width
            )?,
            None => writeln!(f, "kvm: guest PMU leaf 0xA: none")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> KvmCaps {
        KvmCaps {
            api_version: Some(12),
            user_space_msr: true,
            msr_filter: true,
            guest_debug: true,
            irqchip: true,
            enable_pmu: Some(true),
            pmu_leaf: Some(PmuLeaf::from_cpuid(0x0830_0804, 0x0603)),
            ..Default::default()
        }
    }

    #[test]
    fn pmu_leaf_decodes() {
        let l = PmuLeaf::from_cpuid(0x0830_0804, 0x0603);
        assert_eq!(
            (
                l.version,
                l.gp_counters,
                l.gp_width,
                l.fixed_counters,
                l.fixed_width
            ),
            (4, 8, 48, 3, 48)
        );
    }

    #[test]
    fn facts_print_without_contradicting_the_emulated_lbr() {
        let ring0_only = KvmCaps {
            ring3_guest_debug: Some(false),
            ..full()
        };
        let text = ring0_only.to_string();
        assert!(
            text.contains("guest debug reaches ring-3 code: no"),
            "{text}"
        );
        assert!(!text.contains("cannot see ring-3 branches"), "{text}");
        assert!(text.ends_with('\n'), "{text:?}");
        let closed = KvmCaps {
            open_error: Some("EACCES".into()),
            ..full()
        };
        assert!(closed.to_string().contains("unavailable"));
    }

    #[test]
    fn sysfs_bool() {
        assert_eq!(parse_bool_param("Y\n"), Some(true));
        assert_eq!(parse_bool_param("0"), Some(false));
        assert_eq!(parse_bool_param("maybe"), None);
    }
}
