//! Which LBR backend a run gets: hardware passthrough or emulation, decided from plain host
//! facts so every branch of the decision is unit-tested.
//!
//! * Hardware: only on an Intel host whose perf reports a non-zero LBR count (KVM's
//!   `lbr.nr != 0`), that is not an Arch-LBR part (Sapphire Rapids and later: KVM gives
//!   those guests no legacy LBR), with `kvm.enable_pmu=Y`, and only in sampled mode (exact
//!   counts need the tracer).
//! * Emulated: any host whose KVM offers user-space MSR exits, MSR filters and guest debug
//!   (single-step and hardware breakpoints).
//! * `auto` takes hardware where it works, else emulation, and says why; `hw` refuses with
//!   the reason rather than promise what cannot be delivered; `emulated` refuses only when
//!   KVM lacks what the tracer needs.

use std::fmt;
use std::path::Path;

use super::cpuid::family_model;
use super::msr::CPUID_7_EDX_ARCH_LBR;
pub use crate::snapshot::LbrBackend;

/// The host CPU vendor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    Intel,
    Amd,
    Other(String),
}

impl fmt::Display for CpuVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuVendor::Intel => f.write_str("GenuineIntel"),
            CpuVendor::Amd => f.write_str("AuthenticAMD"),
            CpuVendor::Other(s) => f.write_str(s),
        }
    }
}

/// Everything the decision looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLbrFacts {
    pub vendor: CpuVendor,
    pub family: u32,
    pub model: u32,
    /// LBR entries the host kernel's perf exposes (`caps/branches` of the `cpu` PMU);
    /// 0 when it has none (no PMU, nested virtualization, AMD without LBR).
    pub host_lbr_nr: u32,
    /// CPUID.(7,0):EDX bit 19, architectural LBR.
    pub arch_lbr: bool,
    /// /dev/kvm can be opened.
    pub kvm: bool,
    /// `/sys/module/kvm/parameters/enable_pmu`; `None` when unreadable.
    pub kvm_enable_pmu: Option<bool>,
    /// KVM_CAP_X86_USER_SPACE_MSR.
    pub kvm_user_space_msr: bool,
    /// KVM_CAP_X86_MSR_FILTER.
    pub kvm_msr_filter: bool,
    /// KVM_CAP_SET_GUEST_DEBUG with single-step and hardware breakpoints.
    pub kvm_guest_debug: bool,
}

/// What the user asked for (`--lbr auto|hw|emulated`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbrRequest {
    #[default]
    Auto,
    Hw,
    Emulated,
}

/// How guest branches are observed (`--lbr-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbrMode {
    /// Every instruction traced; counts exact; deterministic.
    Exact,
    /// Free run between samples; the last branches before each overflow are traced.
    #[default]
    Sampled,
}

/// The chosen backend and, in words, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub backend: LbrBackend,
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.backend {
            LbrBackend::Hardware => "hardware",
            LbrBackend::Emulated => "emulated",
        };
        write!(f, "{name} ({})", self.reason)
    }
}

/// A `--lbr` or `--lbr-mode` value that is not one of the choices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{given}' is not one of: {choices}")]
pub struct ParseChoiceError {
    pub given: String,
    pub choices: &'static str,
}

impl std::str::FromStr for LbrRequest {
    type Err = ParseChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LbrRequest::Auto),
            "hw" | "hardware" => Ok(LbrRequest::Hw),
            "emulated" | "emu" => Ok(LbrRequest::Emulated),
            _ => Err(ParseChoiceError {
                given: s.into(),
                choices: "auto, hw, emulated",
            }),
        }
    }
}

impl std::str::FromStr for LbrMode {
    type Err = ParseChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(LbrMode::Exact),
            "sampled" => Ok(LbrMode::Sampled),
            _ => Err(ParseChoiceError {
                given: s.into(),
                choices: "exact, sampled",
            }),
        }
    }
}

/// The requested backend cannot be provided on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("no guest LBR: /dev/kvm is not available")]
    NoKvm,
    #[error("hardware LBR passthrough is not possible: {why}; use --lbr emulated or auto")]
    Hardware { why: String },
    #[error("LBR emulation is not possible: KVM lacks {missing}")]
    Emulation { missing: String },
}

impl HostLbrFacts {
    /// Why hardware passthrough cannot work here, or `None` if it can.
    pub fn hardware_obstacle(&self, mode: LbrMode) -> Option<String> {
        if self.vendor != CpuVendor::Intel {
            return Some(format!(
                "the host CPU is {}, not Intel; KVM passes only Intel LBRs through",
                self.vendor
            ));
        }
        if self.arch_lbr {
            return Some(format!(
                "the host has architectural LBR (family {} model {:#x}, Sapphire Rapids or \
                 later), for which KVM offers guests no legacy LBR",
                self.family, self.model
            ));
        }
        if self.host_lbr_nr == 0 {
            return Some(
                "the host kernel reports no LBR (perf cpu caps/branches is 0 or missing: no \
                 hardware PMU, or nested virtualization)"
                    .into(),
            );
        }
        match self.kvm_enable_pmu {
            Some(true) => {}
            Some(false) => return Some("kvm.enable_pmu is N".into()),
            None => return Some("kvm.enable_pmu cannot be read".into()),
        }
        if mode == LbrMode::Exact {
            return Some("exact mode counts every instruction, which needs the tracer".into());
        }
        None
    }

    /// What KVM lacks for emulation, or `None` if it has everything.
    pub fn emulation_obstacle(&self) -> Option<String> {
        let missing: Vec<&str> = [
            (self.kvm_user_space_msr, "KVM_CAP_X86_USER_SPACE_MSR"),
            (self.kvm_msr_filter, "KVM_CAP_X86_MSR_FILTER"),
            (self.kvm_guest_debug, "KVM_CAP_SET_GUEST_DEBUG"),
        ]
        .iter()
        .filter(|(have, _)| !have)
        .map(|(_, name)| *name)
        .collect();
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

/// Decides the backend for `request` in `mode`.
pub fn decide(
    facts: &HostLbrFacts,
    request: LbrRequest,
    mode: LbrMode,
) -> Result<Decision, Refusal> {
    if !facts.kvm {
        return Err(Refusal::NoKvm);
    }
    let hw = facts.hardware_obstacle(mode);
    let emu = facts.emulation_obstacle();
    match request {
        LbrRequest::Hw => match hw {
            None => Ok(Decision {
                backend: LbrBackend::Hardware,
                reason: format!(
                    "requested; the host has {} LBR entries and kvm.enable_pmu=Y",
                    facts.host_lbr_nr
                ),
            }),
            Some(why) => Err(Refusal::Hardware { why }),
        },
        LbrRequest::Emulated => match emu {
            None => Ok(Decision {
                backend: LbrBackend::Emulated,
                reason: "requested".into(),
            }),
            Some(missing) => Err(Refusal::Emulation { missing }),
        },
        LbrRequest::Auto => match (hw, emu) {
            (None, _) => Ok(Decision {
                backend: LbrBackend::Hardware,
                reason: format!(
                    "the host has {} LBR entries and kvm.enable_pmu=Y",
                    facts.host_lbr_nr
                ),
            }),
            (Some(why), None) => Ok(Decision {
                backend: LbrBackend::Emulated,
                reason: format!("hardware passthrough is not possible: {why}"),
            }),
            (Some(_), Some(missing)) => Err(Refusal::Emulation { missing }),
        },
    }
}

/// The host CPU facts, read from CPUID and sysfs. KVM capabilities are left false for the
/// caller to fill in from its own probe (the VMM's `caps::probe()`).
pub fn probe_host() -> HostLbrFacts {
    let (vendor, signature, arch_lbr) = host_cpuid();
    let (family, model) = family_model(signature);
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).ok();
    HostLbrFacts {
        vendor,
        family,
        model,
        host_lbr_nr: read("/sys/bus/event_source/devices/cpu/caps/branches")
            .and_then(|s| parse_lbr_nr(&s))
            .unwrap_or(0),
        arch_lbr,
        kvm: Path::new("/dev/kvm").exists(),
        kvm_enable_pmu: read("/sys/module/kvm/parameters/enable_pmu")
            .and_then(|s| parse_bool_param(&s)),
        kvm_user_space_msr: false,
        kvm_msr_filter: false,
        kvm_guest_debug: false,
    }
}

/// Parses perf's `caps/branches` (a decimal count).
pub fn parse_lbr_nr(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

/// Parses a kernel module bool parameter (`Y`/`N`, `1`/`0`).
pub fn parse_bool_param(s: &str) -> Option<bool> {
    match s.trim() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
fn host_cpuid() -> (CpuVendor, u32, bool) {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let l0 = __cpuid(0);
    let mut v = Vec::with_capacity(12);
    for r in [l0.ebx, l0.edx, l0.ecx] {
        v.extend_from_slice(&r.to_le_bytes());
    }
    let vendor = match &v[..] {
        b"GenuineIntel" => CpuVendor::Intel,
        b"AuthenticAMD" => CpuVendor::Amd,
        other => CpuVendor::Other(String::from_utf8_lossy(other).into_owned()),
    };
    let signature = __cpuid(1).eax;
    let arch_lbr = l0.eax >= 7 && __cpuid_count(7, 0).edx & CPUID_7_EDX_ARCH_LBR != 0;
    (vendor, signature, arch_lbr)
}

#[cfg(not(target_arch = "x86_64"))]
fn host_cpuid() -> (CpuVendor, u32, bool) {
    (CpuVendor::Other("non-x86".into()), 0, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Skylake host with everything.
    fn skylake() -> HostLbrFacts {
        HostLbrFacts {
            vendor: CpuVendor::Intel,
            family: 6,
            model: 0x5E,
            host_lbr_nr: 32,
            arch_lbr: false,
            kvm: true,
            kvm_enable_pmu: Some(true),
            kvm_user_space_msr: true,
            kvm_msr_filter: true,
            kvm_guest_debug: true,
        }
    }

    fn backend(f: &HostLbrFacts, r: LbrRequest, m: LbrMode) -> Result<LbrBackend, Refusal> {
        decide(f, r, m).map(|d| d.backend)
    }

    use LbrBackend::{Emulated, Hardware};
    use LbrMode::{Exact, Sampled};
    use LbrRequest::{Auto, Emulated as Emu, Hw};

    #[test]
    fn full_intel_host_gets_hardware_under_auto_and_hw() {
        assert_eq!(backend(&skylake(), Auto, Sampled), Ok(Hardware));
        assert_eq!(backend(&skylake(), Hw, Sampled), Ok(Hardware));
        assert_eq!(backend(&skylake(), Emu, Sampled), Ok(Emulated));
    }

    #[test]
    fn exact_mode_always_emulates() {
        assert_eq!(backend(&skylake(), Auto, Exact), Ok(Emulated));
        let err = decide(&skylake(), Hw, Exact).unwrap_err();
        assert!(err.to_string().contains("exact mode"), "{err}");
    }

    #[test]
    fn arch_lbr_hosts_get_emulation_under_auto_and_a_refusal_under_hw() {
        let f = HostLbrFacts {
            model: 0x8F,
            arch_lbr: true,
            ..skylake()
        };
        let d = decide(&f, Auto, Sampled).unwrap();
        assert_eq!(d.backend, Emulated);
        assert!(d.reason.contains("architectural LBR"), "{}", d.reason);
        let err = decide(&f, Hw, Sampled).unwrap_err();
        assert!(matches!(err, Refusal::Hardware { .. }));
        assert!(err.to_string().contains("Sapphire Rapids"), "{err}");
    }

    #[test]
    fn no_host_lbr_means_no_hardware_backend() {
        let f = HostLbrFacts {
            host_lbr_nr: 0,
            ..skylake()
        };
        assert_eq!(backend(&f, Auto, Sampled), Ok(Emulated));
        let err = decide(&f, Hw, Sampled).unwrap_err();
        assert!(err.to_string().contains("no LBR"), "{err}");
    }

    #[test]
    fn amd_hosts_emulate() {
        let f = HostLbrFacts {
            vendor: CpuVendor::Amd,
            family: 0x19,
            model: 0x21,
            host_lbr_nr: 16,
            ..skylake()
        };
        assert_eq!(backend(&f, Auto, Sampled), Ok(Emulated));
        assert!(
            decide(&f, Hw, Sampled)
                .unwrap_err()
                .to_string()
                .contains("AuthenticAMD")
        );
    }

    #[test]
    fn kvm_pmu_disabled_or_unknown_blocks_hardware() {
        for p in [Some(false), None] {
            let f = HostLbrFacts {
                kvm_enable_pmu: p,
                ..skylake()
            };
            assert_eq!(backend(&f, Auto, Sampled), Ok(Emulated));
            assert!(matches!(
                decide(&f, Hw, Sampled),
                Err(Refusal::Hardware { .. })
            ));
        }
    }

    #[test]
    fn emulation_needs_the_kvm_capabilities() {
        let f = HostLbrFacts {
            host_lbr_nr: 0,
            kvm_msr_filter: false,
            kvm_guest_debug: false,
            ..skylake()
        };
        let err = decide(&f, Auto, Sampled).unwrap_err();
        assert_eq!(
            err,
            Refusal::Emulation {
                missing: "KVM_CAP_X86_MSR_FILTER, KVM_CAP_SET_GUEST_DEBUG".into()
            }
        );
        assert!(decide(&f, Emu, Sampled).is_err());
        // Hardware does not need them.
        let f = HostLbrFacts {
            kvm_user_space_msr: false,
            ..skylake()
        };
        assert_eq!(backend(&f, Auto, Sampled), Ok(Hardware));
        assert!(decide(&f, Emu, Exact).is_err());
    }

    #[test]
    fn no_kvm_refuses_everything() {
        let f = HostLbrFacts {
            kvm: false,
            ..skylake()
        };
        for r in [Auto, Hw, Emu] {
            assert_eq!(decide(&f, r, Sampled), Err(Refusal::NoKvm));
        }
    }

    #[test]
    fn choices_parse_and_decisions_print() {
        assert_eq!("hw".parse::<LbrRequest>(), Ok(Hw));
        assert_eq!("emulated".parse::<LbrRequest>(), Ok(Emu));
        assert_eq!("exact".parse::<LbrMode>(), Ok(Exact));
        let err = "fast".parse::<LbrMode>().unwrap_err();
        assert_eq!(err.to_string(), "'fast' is not one of: exact, sampled");
        let d = decide(&skylake(), Auto, Exact).unwrap();
        assert!(
            d.to_string()
                .starts_with("emulated (hardware passthrough is not possible")
        );
    }

    #[test]
    fn sysfs_parsers() {
        assert_eq!(parse_lbr_nr("32\n"), Some(32));
        assert_eq!(parse_lbr_nr("x"), None);
        assert_eq!(parse_bool_param("Y\n"), Some(true));
        assert_eq!(parse_bool_param("0"), Some(false));
        assert_eq!(parse_bool_param(""), None);
    }

    #[test]
    fn probing_the_host_does_not_panic() {
        let f = probe_host();
        assert!(f.family > 0 || matches!(f.vendor, CpuVendor::Other(_)));
    }
}
