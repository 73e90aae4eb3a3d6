//! A vCPU's x87/SSE/AVX registers through KVM_GET_XSAVE / KVM_SET_XSAVE, in the standard
//! (non-compacted) XSAVE layout: the 512-byte legacy region, the header, then each
//! component at the offset CPUID leaf 0xD gives it.
//!
//! Why not KVM_GET_FPU / KVM_SET_FPU: they copy the legacy region only and leave the
//! header's XSTATE_BV alone, so on a CPU that tracks SSE as "in its initial state" (AMD
//! does, whenever the XMM registers were all zero when last saved) the XMM registers a
//! KVM_SET_FPU wrote are dropped as the vCPU restores its state: the guest gets zeros.
//! Writing here marks what was written as in use.

use kvm_ioctls::VcpuFd;

/// Bytes of `kvm_xsave`'s region.
pub const XSAVE_BYTES: usize = 4096;
/// Offset of XSTATE_BV (the header follows the legacy region).
pub const XSTATE_BV: usize = 512;
/// Offset of XMM0 in the legacy region.
const XMM0: usize = 160;
/// XSTATE_BV bit of the SSE state (XMM registers and MXCSR).
const XFEATURE_SSE: u64 = 1 << 1;

/// The vCPU's XSAVE area (KVM fills components in their initial state with their
/// initial values).
pub fn read(vcpu: &VcpuFd) -> Result<Vec<u8>, kvm_ioctls::Error> {
    let x = vcpu.get_xsave()?;
    Ok(x.region.iter().flat_map(|w| w.to_le_bytes()).collect())
}

/// Load `area`, a whole XSAVE region as [`read`] returns it (bytes past
/// [`XSAVE_BYTES`] are ignored, missing ones are zero), as the vCPU's XSAVE area. The
/// caller keeps the header valid: XCOMP_BV and the reserved words zero, XSTATE_BV a
/// subset of what the vCPU saves.
pub fn write(vcpu: &VcpuFd, area: &[u8]) -> Result<(), kvm_ioctls::Error> {
    let mut x = kvm_bindings::kvm_xsave::default();
    for (word, chunk) in x.region.iter_mut().zip(area.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    // SAFETY: `x` is a whole 4096-byte `kvm_xsave` (no extra area): the VMM never
    // enables dynamic XSAVE features such as AMX for the guest, so KVM reads nothing past
    // the region. A header KVM refuses comes back as an error, not undefined behaviour.
    unsafe { vcpu.set_xsave(&x) }
}

/// XSTATE_BV bit of the AVX state (bits 255:128 of the YMM registers).
const XFEATURE_AVX: u64 = 1 << 2;

/// Offset of the AVX component in the standard layout (CPUID leaf 0xD sub-leaf 2, EBX;
/// read once), if it fits `kvm_xsave`'s region.
fn avx_offset() -> Option<usize> {
    static OFFSET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let at = *OFFSET.get_or_init(|| std::arch::x86_64::__cpuid_count(0xd, 2).ebx as usize);
    (at >= XSTATE_BV + 64 && at + 256 <= XSAVE_BYTES).then_some(at)
}

fn xstate_bv(area: &[u8]) -> u64 {
    u64::from_le_bytes(
        area[XSTATE_BV..XSTATE_BV + 8]
            .try_into()
            .unwrap_or_default(),
    )
}

/// The 16 registers of 16 bytes at `at`.
fn regs_at(area: &[u8], at: usize) -> [u128; 16] {
    std::array::from_fn(|i| {
        let at = at + 16 * i;
        u128::from_le_bytes(area[at..at + 16].try_into().unwrap_or_default())
    })
}

/// XMM0-15.
pub fn xmm(vcpu: &VcpuFd) -> Result<[u128; 16], kvm_ioctls::Error> {
    Ok(regs_at(&read(vcpu)?, XMM0))
}

/// Whether the vCPU keeps the AVX state written to it: KVM keeps only the XSAVE
/// components its CPUID enables (leaf 0xD sub-leaf 0, EAX), and drops the rest of an
/// area KVM_SET_XSAVE loads.
pub fn keeps_avx(vcpu: &VcpuFd) -> bool {
    vcpu.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .ok()
        .and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == 0xd && e.index == 0)
                .map(|e| u64::from(e.eax) & XFEATURE_AVX != 0)
        })
        .unwrap_or(false)
}

/// XMM0-15 and bits 255:128 of YMM0-15 (zero when the AVX state is in its initial
/// state), with one KVM_GET_XSAVE.
pub fn ymm(vcpu: &VcpuFd) -> Result<([u128; 16], [u128; 16]), kvm_ioctls::Error> {
    let area = read(vcpu)?;
    let hi = match avx_offset() {
        Some(at) if xstate_bv(&area) & XFEATURE_AVX != 0 => regs_at(&area, at),
        Some(_) => [0; 16],
        None => return Err(kvm_ioctls::Error::new(libc::EINVAL)),
    };
    Ok((regs_at(&area, XMM0), hi))
}

/// Set XMM0-15 and, when given, bits 255:128 of YMM0-15, marked in use (the rest of the
/// state as it is): a component saved in its initial state and written without its
/// XSTATE_BV bit would be dropped as the vCPU restores its state.
pub fn set_xmm(
    vcpu: &VcpuFd,
    xmm: &[u128; 16],
    ymm_hi: Option<&[u128; 16]>,
) -> Result<(), kvm_ioctls::Error> {
    let mut area = read(vcpu)?;
    let mut put = |at: usize, regs: &[u128; 16]| {
        for (i, v) in regs.iter().enumerate() {
            area[at + 16 * i..at + 16 * i + 16].copy_from_slice(&v.to_le_bytes());
        }
    };
    put(XMM0, xmm);
    let mut bits = XFEATURE_SSE;
    if let Some(hi) = ymm_hi {
        let at = avx_offset().ok_or_else(|| kvm_ioctls::Error::new(libc::EINVAL))?;
        put(at, hi);
        bits |= XFEATURE_AVX;
    }
    let bv = xstate_bv(&area) | bits;
    area[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&bv.to_le_bytes());
    write(vcpu, &area)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vCPU of a fresh VM, or None (with a message) without /dev/kvm, unless CI
    /// requires KVM.
    fn vcpu() -> Option<VcpuFd> {
        match kvm_ioctls::Kvm::new() {
            Ok(kvm) => {
                let vm = kvm.create_vm().expect("KVM_CREATE_VM");
                Some(vm.create_vcpu(0).expect("KVM_CREATE_VCPU"))
            }
            Err(e) => {
                if std::env::var_os("LBRPROF_REQUIRE_KVM").is_some() {
                    panic!("LBRPROF_REQUIRE_KVM is set but /dev/kvm cannot be opened: {e}");
                }
                eprintln!("skipped: needs /dev/kvm ({e})");
                None
            }
        }
    }

    #[test]
    fn xmm_registers_written_over_an_initial_sse_state_are_what_the_vcpu_gets() {
        let Some(vcpu) = vcpu() else { return };
        // SSE in its initial state (XSTATE_BV bit 1 clear), as a CPU that tracks it
        // saves all-zero XMM registers: KVM_SET_FPU's registers would be dropped.
        let mut area = read(&vcpu).unwrap();
        let bv = u64::from_le_bytes(area[XSTATE_BV..XSTATE_BV + 8].try_into().unwrap());
        area[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&(bv & !XFEATURE_SSE).to_le_bytes());
        write(&vcpu, &area).unwrap();
        let values: [u128; 16] =
            std::array::from_fn(|i| 0x0123_4567_89ab_cdef_u128 * (i as u128 + 1));
        set_xmm(&vcpu, &values, None).unwrap();
        assert_eq!(xmm(&vcpu).unwrap(), values);
        let fpu = vcpu.get_fpu().unwrap();
        assert_eq!(
            fpu.xmm.map(u128::from_le_bytes),
            values,
            "KVM_GET_FPU agrees"
        );
    }

    #[test]
    fn ymm_upper_halves_written_over_an_initial_avx_state_are_what_the_vcpu_gets() {
        let Some(vcpu) = vcpu() else { return };
        if avx_offset().is_none() || !std::arch::is_x86_feature_detected!("avx") {
            eprintln!("skipped: the host has no AVX state");
            return;
        }
        // Without CPUID the vCPU drops AVX state: the interpreter must not write any.
        assert!(!keeps_avx(&vcpu));
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        assert!(keeps_avx(&vcpu));
        // AVX in its initial state: the upper halves read as zero.
        let mut area = read(&vcpu).unwrap();
        let bv = xstate_bv(&area);
        area[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&(bv & !XFEATURE_AVX).to_le_bytes());
        write(&vcpu, &area).unwrap();
        let (xmm0, hi0) = ymm(&vcpu).unwrap();
        assert_eq!(hi0, [0; 16]);
        let hi: [u128; 16] = std::array::from_fn(|i| u128::MAX / (i as u128 + 3));
        set_xmm(&vcpu, &xmm0, Some(&hi)).unwrap();
        assert_eq!(ymm(&vcpu).unwrap(), (xmm0, hi));
        assert_ne!(xstate_bv(&read(&vcpu).unwrap()) & XFEATURE_AVX, 0);
        // Without upper halves the AVX state is left as it is.
        let values: [u128; 16] = std::array::from_fn(|i| i as u128 * 0x1111);
        set_xmm(&vcpu, &values, None).unwrap();
        assert_eq!(ymm(&vcpu).unwrap(), (values, hi));
    }
}
