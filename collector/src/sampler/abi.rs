//! The few raw perf ABI pieces the `perf-event-open` crate does not wrap.
//!
//! Names and values are from `include/uapi/linux/perf_event.h`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `PERF_EVENT_IOC_SET_OUTPUT`: `_IO('$', 5)`. Redirects an event's records into another
/// event's ring buffer (same CPU), so `-p PID` with many threads needs one buffer per CPU
/// rather than one per thread and CPU, as `perf record` does.
pub const PERF_EVENT_IOC_SET_OUTPUT: libc::c_ulong = 0x2405;

/// Send the records of `event` to the ring buffer mmapped on `target`.
pub fn set_output(event: &File, target: &File) -> io::Result<()> {
    // SAFETY: PERF_EVENT_IOC_SET_OUTPUT takes a file descriptor by value (no pointer);
    // both descriptors are open perf event fds owned by the `File`s borrowed for the call.
    let rc = unsafe {
        libc::ioctl(
            event.as_raw_fd(),
            PERF_EVENT_IOC_SET_OUTPUT,
            target.as_raw_fd() as libc::c_ulong,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
