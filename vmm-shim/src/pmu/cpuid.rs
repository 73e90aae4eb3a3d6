//! Shaping the guest's CPUID so it advertises exactly the virtual PMU and LBR.
//!
//! Works on a plain list of [`CpuidEntry`] (function, index, registers) so it stays
//! independent of kvm-bindings; the VMM converts `kvm_cpuid_entry2` at the edge.
//!
//! What the emulated backend advertises:
//! * Leaf 0: "GenuineIntel", maximum basic leaf at least 0xA.
//! * Leaf 1: family 6 model 0x5E stepping 3 (Skylake client, the reference part for LBR
//!   format 5 with 32 entries; Linux's LBR driver keys off family/model), ECX.PDCM set (so
//!   software may read IA32_PERF_CAPABILITIES), DS/DTES64/DS-CPL clear (no BTS/PEBS).
//! * Leaf 7: Arch LBR and Hybrid clear; leaf 0x1C (Arch LBR) removed.
//! * Leaf 0xA: version 2 or 4, 4 GP counters of 48 bits, 3 fixed counters of 48 bits, and
//!   the event-availability mask: core cycles, instructions, reference cycles, branch
//!   instructions and branch mispredicts available; LLC reference/miss not (EBX bits set
//!   mean "not available").
//!
//! Simplification: the family/model is Skylake whatever `--lbr-depth` is. No real part has
//! LBR format 5 with 8 or 16 entries, so software that wants the depth must probe it (reads
//! of slots beyond the depth #GP), as lbrprof's guest agent does.

use super::msr::*;
use super::vpmu::{COUNTER_WIDTH, FIXED_COUNTERS, GP_COUNTERS, PmuConfig};

/// One CPUID leaf/subleaf result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Family 6, model 0x5E (extended model 5, model 0xE), stepping 3.
pub const SKYLAKE_SIGNATURE: u32 = 0x0005_06E3;
/// The bits of CPUID.1:EAX that hold stepping, model, family, extended model/family.
const SIGNATURE_MASK: u32 = 0x0FFF_3FFF;

/// EBX of leaf 0xA: events NOT available.
pub const ARCH_EVENTS_UNAVAILABLE: u32 = CPUID_A_EBX_NO_LLC_REF | CPUID_A_EBX_NO_LLC_MISSES;

/// The leaf 0xA this model advertises.
pub fn pmu_leaf(cfg: &PmuConfig) -> CpuidEntry {
    CpuidEntry {
        function: CPUID_LEAF_PMU,
        index: 0,
        eax: cfg.version.number()
            | (GP_COUNTERS as u32) << 8
            | COUNTER_WIDTH << 16
            | CPUID_A_EBX_EVENT_COUNT << 24,
        ebx: ARCH_EVENTS_UNAVAILABLE,
        ecx: 0,
        edx: FIXED_COUNTERS as u32 | COUNTER_WIDTH << 5,
    }
}

fn find(entries: &mut [CpuidEntry], function: u32, index: u32) -> Option<&mut CpuidEntry> {
    entries
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
}

fn upsert(entries: &mut Vec<CpuidEntry>, entry: CpuidEntry) {
    match find(entries, entry.function, entry.index) {
        Some(e) => *e = entry,
        None => entries.push(entry),
    }
}

/// Edits `entries` (as from KVM_GET_SUPPORTED_CPUID) for the emulated backend.
pub fn shape_for_emulation(entries: &mut Vec<CpuidEntry>, cfg: &PmuConfig) {
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax)
        .max(CPUID_LEAF_PMU);
    upsert(
        entries,
        CpuidEntry {
            function: 0,
            index: 0,
            eax: max_basic,
            ebx: u32::from_le_bytes(*b"Genu"),
            edx: u32::from_le_bytes(*b"ineI"),
            ecx: u32::from_le_bytes(*b"ntel"),
        },
    );
    match find(entries, 1, 0) {
        Some(e) => {
            e.eax = (e.eax & !SIGNATURE_MASK) | SKYLAKE_SIGNATURE;
            e.ecx = (e.ecx | CPUID_1_ECX_PDCM) & !(CPUID_1_ECX_DTES64 | CPUID_1_ECX_DS_CPL);
            e.edx &= !CPUID_1_EDX_DS;
        }
        None => entries.push(CpuidEntry {
            function: 1,
            index: 0,
            eax: SKYLAKE_SIGNATURE,
            ecx: CPUID_1_ECX_PDCM,
            ..Default::default()
        }),
    }
    if let Some(e) = find(entries, 7, 0) {
        e.edx &= !(CPUID_7_EDX_ARCH_LBR | CPUID_7_EDX_HYBRID);
    }
    entries.retain(|e| e.function != CPUID_LEAF_ARCH_LBR);
    upsert(entries, pmu_leaf(cfg));
}

/// Edits `entries` for the hardware backend: KVM's own leaf 0xA and PDCM stay as KVM
/// reports them (they describe what it can pass through); only the LBR promise is checked:
/// PDCM is cleared when the host has no usable LBR, so the guest never looks for one.
pub fn shape_for_hardware(entries: &mut [CpuidEntry], host_has_lbr: bool) {
    if !host_has_lbr && let Some(e) = find(entries, 1, 0) {
        e.ecx &= !CPUID_1_ECX_PDCM;
    }
    if let Some(e) = find(entries, 7, 0) {
        e.edx &= !CPUID_7_EDX_ARCH_LBR;
    }
}

/// The (family, model) a CPUID.1:EAX signature encodes, with the extended fields applied
/// as the SDM says (extended model for families 6 and 15, extended family for 15).
pub fn family_model(signature: u32) -> (u32, u32) {
    let family = (signature >> 8) & 0xF;
    let ext_family = (signature >> 20) & 0xFF;
    let model = (signature >> 4) & 0xF;
    let ext_model = (signature >> 16) & 0xF;
    let family = if family == 0xF {
        family + ext_family
    } else {
        family
    };
    let model = if family == 6 || family >= 0xF {
        (ext_model << 4) | model
    } else {
        model
    };
    (family, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd_host() -> Vec<CpuidEntry> {
        vec![
            CpuidEntry {
                function: 0,
                index: 0,
                eax: 0xD,
                ebx: u32::from_le_bytes(*b"Auth"),
                edx: u32::from_le_bytes(*b"enti"),
                ecx: u32::from_le_bytes(*b"cAMD"),
            },
            CpuidEntry {
                function: 1,
                index: 0,
                eax: 0x00A2_0F10,
                ebx: 0x0800,
                ecx: 0xFED8_3203 | CPUID_1_ECX_DTES64,
                edx: 0x178B_FBFF,
            },
            CpuidEntry {
                function: 7,
                index: 0,
                edx: CPUID_7_EDX_ARCH_LBR | 1,
                ..Default::default()
            },
            CpuidEntry {
                function: CPUID_LEAF_ARCH_LBR,
                index: 0,
                eax: 0xFF,
                ..Default::default()
            },
        ]
    }

    fn get(entries: &[CpuidEntry], f: u32) -> CpuidEntry {
        *entries.iter().find(|e| e.function == f).unwrap()
    }

    #[test]
    fn emulation_advertises_an_intel_lbr_part() {
        let mut e = amd_host();
        shape_for_emulation(&mut e, &PmuConfig::new(4, 32).unwrap());
        let l0 = get(&e, 0);
        let mut vendor = Vec::new();
        for r in [l0.ebx, l0.edx, l0.ecx] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(vendor, b"GenuineIntel");
        assert_eq!(l0.eax, 0xD, "max leaf kept when already >= 0xA");
        let l1 = get(&e, 1);
        assert_eq!(family_model(l1.eax), (6, 0x5E));
        assert_ne!(l1.ecx & CPUID_1_ECX_PDCM, 0);
        assert_eq!(l1.ecx & CPUID_1_ECX_DTES64, 0);
        assert_eq!(l1.edx & CPUID_1_EDX_DS, 0);
        assert_eq!(l1.ebx, 0x0800, "other fields untouched");
        assert_eq!(get(&e, 7).edx, 1, "Arch LBR cleared, rest kept");
        assert!(e.iter().all(|x| x.function != CPUID_LEAF_ARCH_LBR));
    }

    #[test]
    fn pmu_leaf_fields() {
        for version in [2, 4] {
            let mut e = amd_host();
            shape_for_emulation(&mut e, &PmuConfig::new(version, 16).unwrap());
            let a = get(&e, 0xA);
            assert_eq!(a.eax & 0xFF, version);
            assert_eq!((a.eax >> 8) & 0xFF, 4, "GP counters");
            assert_eq!((a.eax >> 16) & 0xFF, 48, "GP width");
            assert_eq!(a.eax >> 24, 7, "EBX length");
            assert_eq!(a.edx & 0x1F, 3, "fixed counters");
            assert_eq!((a.edx >> 5) & 0xFF, 48, "fixed width");
            // Available: core cycles, instructions, ref cycles, branches, mispredicts.
            for bit in [0, 1, 2, 5, 6] {
                assert_eq!(a.ebx & (1 << bit), 0, "event {bit} available");
            }
            assert_ne!(a.ebx & CPUID_A_EBX_NO_LLC_REF, 0);
            assert_ne!(a.ebx & CPUID_A_EBX_NO_LLC_MISSES, 0);
        }
    }

    #[test]
    fn missing_leaves_are_created_and_max_leaf_raised() {
        let mut e = vec![CpuidEntry {
            function: 0,
            index: 0,
            eax: 7,
            ..Default::default()
        }];
        shape_for_emulation(&mut e, &PmuConfig::default());
        assert_eq!(get(&e, 0).eax, 0xA);
        assert_eq!(get(&e, 1).eax, SKYLAKE_SIGNATURE);
        assert_eq!(get(&e, 0xA).eax & 0xFF, 4);
    }

    #[test]
    fn hardware_shaping_never_promises_missing_lbr() {
        let mut e = amd_host();
        shape_for_hardware(&mut e, false);
        assert_eq!(get(&e, 1).ecx & CPUID_1_ECX_PDCM, 0);
        assert_eq!(get(&e, 7).edx & CPUID_7_EDX_ARCH_LBR, 0);
        let mut e = amd_host();
        e[1].ecx |= CPUID_1_ECX_PDCM;
        shape_for_hardware(&mut e, true);
        assert_ne!(get(&e, 1).ecx & CPUID_1_ECX_PDCM, 0);
    }

    #[test]
    fn family_model_decoding() {
        assert_eq!(family_model(0x0005_06E3), (6, 0x5E));
        assert_eq!(family_model(0x0008_06F8), (6, 0x8F)); // Sapphire Rapids
        assert_eq!(family_model(0x00A2_0F10), (0x19, 0x21)); // AMD Zen 3
        assert_eq!(family_model(0x0000_0633), (6, 3));
    }
}
