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
use super::msr::{
    AMD_BRS_DEPTH, CPUID_1_ECX_HYPERVISOR, CPUID_1_ECX_VMX, CPUID_7_EDX_ARCH_LBR,
    CPUID_80000001_ECX_SVM, CPUID_80000008_EBX_BRS, CPUID_80000022_EAX_LBR_PMC_FREEZE,
    CPUID_80000022_EAX_LBR_V2, CPUID_80000022_EBX_LBR_V2_DEPTH_MASK,
    CPUID_80000022_EBX_LBR_V2_DEPTH_SHIFT, CPUID_LEAF_AMD_PERFMON_V2, CPUID_LEAF_ARCH_LBR,
    CPUID_LEAF_PMU,
};
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
    /// `/sys/module/kvm/parameters/enable_mediated_pmu`; `None` when the kernel has no
    /// mediated vPMU (the parameter is absent).
    pub kvm_mediated_pmu: Option<bool>,
    /// The LBR format from `IA32_PERF_CAPABILITIES[5:0]`, when `/dev/cpu/0/msr` is readable.
    pub lbr_format: Option<u8>,
    /// What the host CPU's CPUID says about branch records and virtualization.
    pub cpuid: CpuidLbrFacts,
    /// The loaded KVM vendor module (`kvm_intel`, `kvm_amd`, `kvm_pvm`), when one is.
    pub kvm_module: Option<String>,
}

/// The CPUID bits about branch records and virtualization (SDM vol. 2A, CPUID; AMD APM
/// vol. 3, CPUID 80000008H and 80000022H). A plain struct so each host flavour is a test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidLbrFacts {
    /// `CPUID.01H:ECX[31]`: this host is itself a guest of a hypervisor.
    pub hypervisor: bool,
    /// `CPUID.01H:ECX[5]` (VMX) or `CPUID.80000001H:ECX[2]` (SVM).
    pub hw_virt: bool,
    /// `CPUID.0AH:EAX[7:0]`, the architectural PMU version (0: none).
    pub pmu_version: u8,
    /// `CPUID.(1CH,0):EAX[7:0]`: the Arch LBR depths (bit n: 8·(n+1) entries).
    pub arch_lbr_depths: u8,
    /// `CPUID.80000022H:EAX[1]` LbrExtV2, with `EBX[9:4]` its number of entries.
    pub amd_lbr_v2_depth: Option<u32>,
    /// `CPUID.80000022H:EAX[2]` LbrAndPmcFreeze.
    pub amd_lbr_freeze: bool,
    /// `CPUID.80000008H:EBX[31]` BRS (Zen 3 branch sampling).
    pub amd_brs: bool,
}

/// The host's own branch-record facility.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbrFlavour {
    /// Intel's model-specific LBR (MSR_LASTBRANCH_x, DEBUGCTL.LBR), `format` from
    /// IA32_PERF_CAPABILITIES when readable.
    Legacy { depth: u32, format: Option<u8> },
    /// Intel architectural LBR (Sapphire Rapids and later; IA32_LBR_x, IA32_LBR_CTL).
    Arch { depth: u32 },
    /// AMD LbrExtV2 (Zen 4 and later).
    AmdLbrV2 { depth: u32 },
    /// AMD Branch Sampling (Zen 3): a one-shot buffer, not a continuous LBR.
    AmdBrs { depth: u32 },
    /// No branch records this host can use.
    None,
}

impl fmt::Display for LbrFlavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbrFlavour::Legacy { depth, format } => {
                write!(f, "legacy LBR, {depth} entries, ")?;
                match format {
                    Some(fmt) => write!(f, "format {fmt} (IA32_PERF_CAPABILITIES)"),
                    None => f.write_str("format unknown (/dev/cpu/0/msr not readable)"),
                }
            }
            LbrFlavour::Arch { depth } => write!(f, "architectural LBR, {depth} entries"),
            LbrFlavour::AmdLbrV2 { depth } => write!(f, "AMD LbrExtV2, {depth} entries"),
            LbrFlavour::AmdBrs { depth } => {
                write!(
                    f,
                    "AMD BRS (branch sampling, not a continuous LBR), {depth} entries"
                )
            }
            LbrFlavour::None => f.write_str("none"),
        }
    }
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
    /// The host's branch-record facility, from CPUID and what the host kernel's perf exposes.
    pub fn lbr_flavour(&self) -> LbrFlavour {
        let c = &self.cpuid;
        match self.vendor {
            CpuVendor::Intel if self.arch_lbr && c.arch_lbr_depths != 0 => LbrFlavour::Arch {
                depth: 8 * (8 - c.arch_lbr_depths.leading_zeros()),
            },
            CpuVendor::Intel if self.host_lbr_nr != 0 => LbrFlavour::Legacy {
                depth: self.host_lbr_nr,
                format: self.lbr_format,
            },
            CpuVendor::Amd => match (c.amd_lbr_v2_depth, c.amd_brs) {
                (Some(depth), _) => LbrFlavour::AmdLbrV2 { depth },
                (None, true) => LbrFlavour::AmdBrs {
                    depth: AMD_BRS_DEPTH,
                },
                (None, false) => LbrFlavour::None,
            },
            _ => LbrFlavour::None,
        }
    }

    /// Whether the host's branch records stop on a counter overflow (freeze-on-PMI), in
    /// words: the mechanism, or why there is none.
    pub fn lbr_freeze(&self) -> (bool, String) {
        match self.lbr_flavour() {
            LbrFlavour::Legacy { .. } => (true, "yes (DEBUGCTL.FREEZE_LBRS_ON_PMI)".into()),
            LbrFlavour::Arch { .. } if self.cpuid.pmu_version >= 4 => (
                true,
                "yes (PERF_GLOBAL_STATUS.LBR_FRZ, PMU version 4 or later)".into(),
            ),
            LbrFlavour::Arch { .. } => (
                false,
                format!("no (PMU version {} has no LBR_FRZ)", self.cpuid.pmu_version),
            ),
            LbrFlavour::AmdLbrV2 { .. } if self.cpuid.amd_lbr_freeze => {
                (true, "yes (CPUID 0x80000022 EAX[2] LbrAndPmcFreeze)".into())
            }
            LbrFlavour::AmdLbrV2 { .. } => (
                false,
                "no (CPUID 0x80000022 EAX[2] LbrAndPmcFreeze is clear: entries recorded \
                 between the overflow and the PMI handler push older ones out)"
                    .into(),
            ),
            LbrFlavour::AmdBrs { .. } => (
                false,
                "no (BRS stops when its buffer fills, not on the overflow)".into(),
            ),
            LbrFlavour::None => (false, "not applicable (no host LBR)".into()),
        }
    }

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
        if self.kvm_mediated_pmu == Some(true) {
            return Some(
                "KVM's mediated vPMU is on (kvm.enable_mediated_pmu=Y): the guest owns the \
                 PMU while it runs, so KVM offers guests no LBR and the host cannot sample \
                 inside the guest"
                    .into(),
            );
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
        kvm_mediated_pmu: read("/sys/module/kvm/parameters/enable_mediated_pmu")
            .and_then(|s| parse_bool_param(&s)),
        lbr_format: read_lbr_format(),
        cpuid: host_cpuid_lbr(),
        kvm_module: KVM_MODULES
            .iter()
            .find(|m| Path::new("/sys/module").join(m).exists())
            .map(|m| (*m).to_owned()),
    }
}

/// KVM's vendor modules, one of which backs /dev/kvm.
const KVM_MODULES: [&str; 3] = ["kvm_intel", "kvm_amd", "kvm_pvm"];

impl HostLbrFacts {
    /// How guests run on this host, in words: hardware virtualization or not, nested or not.
    pub fn virtualization(&self) -> String {
        let module = self
            .kvm_module
            .as_deref()
            .unwrap_or("no KVM vendor module loaded");
        let cpu = match (self.cpuid.hypervisor, self.cpuid.hw_virt) {
            (true, true) => "this host is itself a guest (CPUID.1:ECX[31]) with VMX/SVM: nested",
            (true, false) => {
                "this host is itself a guest (CPUID.1:ECX[31]) without VMX/SVM: guest ring-0 \
                 code may be emulated (slow), guest ring-3 code runs natively"
            }
            (false, true) => "bare metal with VMX/SVM",
            (false, false) => "no VMX/SVM in CPUID",
        };
        format!("{module}; {cpu}")
    }
}

/// `IA32_PERF_CAPABILITIES[5:0]` (SDM vol. 4, MSR 0x345) through the msr driver, when it is
/// loaded and readable (root).
fn read_lbr_format() -> Option<u8> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open("/dev/cpu/0/msr").ok()?;
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, u64::from(super::msr::IA32_PERF_CAPABILITIES))
        .ok()?;
    Some((u64::from_le_bytes(buf) & super::msr::PERF_CAP_LBR_FMT_MASK) as u8)
}

#[cfg(target_arch = "x86_64")]
fn host_cpuid_lbr() -> CpuidLbrFacts {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    let max = __cpuid(0).eax;
    let max_ext = __cpuid(0x8000_0000).eax;
    let leaf1 = __cpuid(1);
    let ext1_ecx = if max_ext >= 0x8000_0001 {
        __cpuid(0x8000_0001).ecx
    } else {
        0
    };
    let mut c = CpuidLbrFacts {
        hypervisor: leaf1.ecx & CPUID_1_ECX_HYPERVISOR != 0,
        hw_virt: leaf1.ecx & CPUID_1_ECX_VMX != 0 || ext1_ecx & CPUID_80000001_ECX_SVM != 0,
        ..Default::default()
    };
    if max >= CPUID_LEAF_PMU {
        c.pmu_version = __cpuid(CPUID_LEAF_PMU).eax as u8;
    }
    if max >= CPUID_LEAF_ARCH_LBR {
        c.arch_lbr_depths = __cpuid_count(CPUID_LEAF_ARCH_LBR, 0).eax as u8;
    }
    if max_ext >= 0x8000_0008 {
        c.amd_brs = __cpuid(0x8000_0008).ebx & CPUID_80000008_EBX_BRS != 0;
    }
    if max_ext >= CPUID_LEAF_AMD_PERFMON_V2 {
        let l = __cpuid(CPUID_LEAF_AMD_PERFMON_V2);
        if l.eax & CPUID_80000022_EAX_LBR_V2 != 0 {
            c.amd_lbr_v2_depth = Some(
                (l.ebx >> CPUID_80000022_EBX_LBR_V2_DEPTH_SHIFT)
                    & CPUID_80000022_EBX_LBR_V2_DEPTH_MASK,
            );
        }
        c.amd_lbr_freeze = l.eax & CPUID_80000022_EAX_LBR_PMC_FREEZE != 0;
    }
    c
}

#[cfg(not(target_arch = "x86_64"))]
fn host_cpuid_lbr() -> CpuidLbrFacts {
    CpuidLbrFacts::default()
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
            kvm_mediated_pmu: None,
            lbr_format: Some(5),
            cpuid: CpuidLbrFacts {
                pmu_version: 4,
                hw_virt: true,
                ..Default::default()
            },
            kvm_module: Some("kvm_intel".into()),
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
    fn host_flavours_and_their_freeze() {
        // Intel legacy LBR (Skylake).
        let f = skylake();
        assert_eq!(
            f.lbr_flavour(),
            LbrFlavour::Legacy {
                depth: 32,
                format: Some(5)
            }
        );
        assert!(f.lbr_freeze().0);
        assert!(f.lbr_flavour().to_string().contains("format 5"));
        let unreadable = HostLbrFacts {
            lbr_format: None,
            ..skylake()
        };
        assert!(
            unreadable
                .lbr_flavour()
                .to_string()
                .contains("format unknown")
        );
        // Intel Arch LBR (Sapphire Rapids: depths 8..32, PMU v5).
        let spr = HostLbrFacts {
            model: 0x8F,
            arch_lbr: true,
            cpuid: CpuidLbrFacts {
                pmu_version: 5,
                arch_lbr_depths: 0b1111,
                ..skylake().cpuid
            },
            ..skylake()
        };
        assert_eq!(spr.lbr_flavour(), LbrFlavour::Arch { depth: 32 });
        assert!(spr.lbr_freeze().1.contains("LBR_FRZ"));
        // AMD Zen 3: BRS only.
        let zen3 = HostLbrFacts {
            vendor: CpuVendor::Amd,
            family: 0x19,
            model: 0x01,
            host_lbr_nr: 16,
            lbr_format: None,
            cpuid: CpuidLbrFacts {
                amd_brs: true,
                pmu_version: 0,
                ..skylake().cpuid
            },
            ..skylake()
        };
        assert_eq!(zen3.lbr_flavour(), LbrFlavour::AmdBrs { depth: 16 });
        assert!(!zen3.lbr_freeze().0);
        // AMD Zen 4: LbrExtV2, with and without the freeze bit.
        let zen4 = HostLbrFacts {
            model: 0x11,
            cpuid: CpuidLbrFacts {
                amd_lbr_v2_depth: Some(16),
                amd_lbr_freeze: true,
                ..zen3.cpuid
            },
            ..zen3.clone()
        };
        assert_eq!(zen4.lbr_flavour(), LbrFlavour::AmdLbrV2 { depth: 16 });
        assert!(zen4.lbr_freeze().0);
        assert!(zen4.lbr_freeze().1.contains("0x80000022"));
        let zen4_no_freeze = HostLbrFacts {
            cpuid: CpuidLbrFacts {
                amd_lbr_freeze: false,
                ..zen4.cpuid
            },
            ..zen4.clone()
        };
        assert!(!zen4_no_freeze.lbr_freeze().0);
        // Every AMD flavour still emulates: KVM passes only Intel LBRs through.
        for f in [&zen3, &zen4, &zen4_no_freeze] {
            assert_eq!(backend(f, Auto, Sampled), Ok(Emulated));
        }
        // No PMU (this kind of nested host): no flavour, no freeze.
        let none = HostLbrFacts {
            host_lbr_nr: 0,
            lbr_format: None,
            kvm_enable_pmu: Some(false),
            cpuid: CpuidLbrFacts {
                hypervisor: true,
                hw_virt: false,
                ..Default::default()
            },
            ..skylake()
        };
        assert_eq!(none.lbr_flavour(), LbrFlavour::None);
        assert!(!none.lbr_freeze().0);
        assert_eq!(backend(&none, Auto, Sampled), Ok(Emulated));
    }

    #[test]
    fn mediated_vpmu_blocks_hardware_and_says_why() {
        let f = HostLbrFacts {
            kvm_mediated_pmu: Some(true),
            ..skylake()
        };
        let err = decide(&f, Hw, Sampled).unwrap_err();
        assert!(err.to_string().contains("mediated vPMU"), "{err}");
        assert_eq!(backend(&f, Auto, Sampled), Ok(Emulated));
        let off = HostLbrFacts {
            kvm_mediated_pmu: Some(false),
            ..skylake()
        };
        assert_eq!(backend(&off, Auto, Sampled), Ok(Hardware));
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
