//! The kick: how a vCPU thread is made to leave `KVM_RUN` (a real-time signal whose
//! handler sets the thread's `kvm_run.immediate_exit`), and the stop flag of the VM a
//! vCPU thread runs. The VM's vCPU loop arms both on each vCPU thread; the Linux
//! personality asks them whether to restart a host call, and kicks the vCPUs of a
//! process a signal is sent to.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
thread_local! {
    /// The VM's stop flag, on a vCPU thread (see [`stopping`]).
    pub(crate) static STOP: std::cell::RefCell<Option<Arc<AtomicBool>>> = const { std::cell::RefCell::new(None) };
    pub(crate) static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
    /// The kick signal arrived since the last interrupted KVM_RUN (the VM's stop, a hook's
    /// exit timer).
    pub(crate) static KICKED: Cell<bool> = const { Cell::new(false) };
    /// The watchdog's tick arrived since the last interrupted KVM_RUN.
    pub(crate) static WATCHDOG: Cell<bool> = const { Cell::new(false) };
}

/// The stop flag of the VM this vCPU thread runs (None off vCPU threads), for helper
/// threads of its guest (interval timers) to end with it.
pub(crate) fn stop_flag() -> Option<Arc<AtomicBool>> {
    STOP.with(|s| s.borrow().clone())
}

/// Whether the VM this vCPU thread runs is stopping (false off vCPU threads): a host
/// call the kick interrupted is then not restarted.
pub(crate) fn stopping() -> bool {
    STOP.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Acquire))
    })
}

/// Clears this thread's IMMEDIATE_EXIT pointer on drop.
pub(crate) struct ClearImmediateExit;

impl Drop for ClearImmediateExit {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

pub(crate) fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

pub(crate) fn watchdog_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn kick_handler(sig: libc::c_int) {
    // Const-initialized thread locals: no allocation or lazy set-up in the handler.
    if sig == watchdog_signal() {
        WATCHDOG.with(|c| c.set(true));
    } else {
        KICKED.with(|c| c.set(true));
    }
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run.immediate_exit, set while its
        // VcpuFd (and so the kvm_run mapping) is alive and cleared before it is dropped.
        unsafe { p.write_volatile(1) };
    }
}

pub(crate) fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs an async-signal-safe handler (one volatile byte store) for a
        // real-time signal lbrprof uses for nothing else; no SA_RESTART so KVM_RUN returns.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = kick_handler as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
            libc::sigaction(watchdog_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Kick `thread` (a vCPU thread) out of `KVM_RUN`, as the VM's stop does.
pub(crate) fn kick_thread(thread: libc::pthread_t) {
    // SAFETY: callers pass the pthread_t of a vCPU thread that is still running (a
    // Linux program's thread is unregistered under the process lock before it ends);
    // the handler only sets immediate_exit (see kick_handler).
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
