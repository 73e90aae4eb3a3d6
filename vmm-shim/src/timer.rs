//! A one-shot timer that forces the current vCPU thread out of `KVM_RUN`: a POSIX timer
//! (CLOCK_MONOTONIC) that delivers the VM's kick signal to this very thread
//! (SIGEV_THREAD_ID); the signal handler sets `kvm_run.immediate_exit`, so the vCPU loop
//! sees an `Interrupted` exit. Hooks use it for time-based work such as sampled-mode
//! tracing windows ([`crate::hook::VcpuCtx::set_exit_timer`]).

use std::time::Duration;

/// An owning POSIX timer aimed at the thread that created it.
pub(crate) struct ExitTimer {
    id: libc::timer_t,
}

impl ExitTimer {
    /// A disarmed timer that will signal the calling thread with `signal`.
    pub(crate) fn for_current_thread(signal: libc::c_int) -> std::io::Result<ExitTimer> {
        // SAFETY: sigevent is a plain C struct for which all-zero is a valid value.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = signal;
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: both pointers are valid for the call; the kernel fills `id`.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ExitTimer { id })
    }

    /// Fire once after `after`, or disarm with `None`.
    pub(crate) fn arm(&self, after: Option<Duration>) -> std::io::Result<()> {
        let d = after.unwrap_or_default();
        // A zero it_value disarms, so round a zero request up to 1 ns.
        let ns = if after.is_some() {
            d.subsec_nanos().max(u32::from(d.as_secs() == 0))
        } else {
            0
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: ns as libc::c_long,
            },
        };
        // SAFETY: `id` is a live timer owned by self; `spec` is valid for the call.
        if unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl ExitTimer {
    /// Fire every `period` from now on (a watchdog's tick).
    pub(crate) fn arm_every(&self, period: Duration) -> std::io::Result<()> {
        let ts = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos().max(u32::from(period.is_zero())) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: `id` is a live timer owned by self; `spec` is valid for the call.
        if unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ExitTimer {
    fn drop(&mut self) {
        // SAFETY: `id` was created by timer_create and is deleted exactly once.
        unsafe { libc::timer_delete(self.id) };
    }
}
