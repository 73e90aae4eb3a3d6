//! The error of setting up or running a VM ([`VmError`]), apart from the VM itself so
//! that every layer under it (hooks, the Linux personality) can return it.

use crate::linux::error::LinuxError;
use crate::loader::LoaderError;
use crate::memory::MemoryError;

/// What went wrong setting up or running a VM (guest crashes are an `Outcome` of the run).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmError {
    #[error("cannot open /dev/kvm")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    #[error("KVM {op} failed")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(
        "guest RAM of {bytes} bytes is out of range (must be {min} to {max} bytes, i.e. 4M to 3G)"
    )]
    MemSize { bytes: u64, min: u64, max: u64 },
    #[error("{n} vCPUs requested; must be 1 to {max}")]
    VcpuCount { n: u32, max: u32 },
    #[error("guest command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("hooks ask for {n} MSR ranges; KVM filters at most 16")]
    TooManyMsrRanges { n: usize },
    #[error("hardware breakpoint slot {slot} does not exist (0-3)")]
    BreakpointSlot { slot: usize },
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Linux(#[from] LinuxError),
    #[error("a Linux program starts on one vCPU and gets one more per thread ({n} requested)")]
    LinuxVcpus { n: u32 },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error("vCPU {vcpu} thread panicked (a bug in lbrprof or its vCPU hook): {message}")]
    VcpuPanicked { vcpu: u32, message: String },
    #[error("cannot arm the vCPU exit timer")]
    Timer(#[source] std::io::Error),
}

pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}
