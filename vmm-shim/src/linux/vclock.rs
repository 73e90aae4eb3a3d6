//! The clocks of the vDSO's data page ([`super::vdso`]): what the shim writes there so
//! that guest code turns its TSC into the host's `CLOCK_*` values without a VM exit.
//!
//! Each clock the page serves is a line `ns = ns_base + ((tsc - cycle_base) * mult >>
//! SHIFT)` in the guest's TSC. The shim:
//! * offers the fast path only when the host trusts its TSC (its clocksource is `tsc`:
//!   the kernel checked it is invariant and synchronized across CPUs) and the clocks are
//!   the host's (not pinned, see [`super::clock`]), and KVM reports the guest's TSC rate
//!   ([`decide`], a pure function of [`Facts`]);
//! * learns the guest TSC's offset from the host's (KVM_GET_MSRS of IA32_TSC between two
//!   host `rdtsc`; under PVM and with KVM's default offset of 0 it is 0);
//! * anchors each clock at a host TSC reading taken right around a `clock_gettime` of it,
//!   with the rate from KVM's TSC frequency at first, and re-anchors every
//!   [`REANCHOR_NS`] at the next system call any thread makes ([`VClock::tick`]): the new
//!   line starts where the old one is (so no clock steps back) and its slope is the rate
//!   measured since the first anchor plus what closes the remaining error over
//!   [`SLEW_NS`], as NTP slews a clock. A realtime clock that moved by more than
//!   [`STEP_NS`] (the host's time was set) jumps, as it does on the host.
//!
//! The page is a seqlock: the sequence count is odd while the shim writes; the guest
//! retries a read that saw an odd count or a count that changed.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};

use crate::linux::host;
use crate::memory::{GuestMemory, GuestPhysAddr};

/// The data page's layout (drawn in [`super::vdso`]'s module doc): what the shim writes
/// here and the vDSO's code reads.
pub mod vvar {
    /// u32 sequence count: odd while the shim updates the page.
    pub const SEQ: u64 = 0;
    /// The first clock's entry.
    pub const CLOCKS: u64 = 64;
    /// Bytes per clock entry.
    pub const ENTRY: u64 = 32;
    /// Offsets in an entry.
    pub const CYCLE_BASE: u64 = 0;
    pub const NS_BASE: u64 = 8;
    pub const MULT: u64 = 16;
    pub const SHIFT: u64 = 24;
    /// The highest clock id with an entry (`CLOCK_TAI`).
    pub const MAX_CLOCK: u32 = libc::CLOCK_TAI as u32;
}

/// Fixed-point shift of every line's `mult`.
pub const SHIFT: u32 = 32;
/// How often the lines are re-anchored (at the next system call after that long).
pub const REANCHOR_NS: u64 = 50_000_000;
/// Over how long a re-anchored line closes its error.
pub const SLEW_NS: u64 = 1_000_000_000;
/// A realtime clock more than this off its line was set: it jumps.
pub const STEP_NS: i64 = 1_000_000;

/// The clocks the page serves, by id: the host clock its line follows, and whether it
/// may step (the realtime ones). The coarse clocks follow the fine ones (a coarse clock
/// reads a value finer than its resolution, never an earlier one).
const SERVED: [(u32, u32, bool); 7] = {
    use libc::*;
    [
        (CLOCK_REALTIME as u32, CLOCK_REALTIME as u32, true),
        (CLOCK_MONOTONIC as u32, CLOCK_MONOTONIC as u32, false),
        (
            CLOCK_MONOTONIC_RAW as u32,
            CLOCK_MONOTONIC_RAW as u32,
            false,
        ),
        (CLOCK_REALTIME_COARSE as u32, CLOCK_REALTIME as u32, true),
        (CLOCK_MONOTONIC_COARSE as u32, CLOCK_MONOTONIC as u32, false),
        (CLOCK_BOOTTIME as u32, CLOCK_BOOTTIME as u32, false),
        (CLOCK_TAI as u32, CLOCK_TAI as u32, true),
    ]
};

/// What decides whether the vDSO may read the TSC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The host's current clocksource (`/sys/devices/system/clocksource/clocksource0`).
    pub clocksource: String,
    /// The guest TSC's rate as KVM reports it (KVM_GET_TSC_KHZ), 0 if unknown.
    pub tsc_khz: u64,
    /// The program's clocks are pinned (exact mode): only the system call reads them.
    pub pinned: bool,
}

/// Whether the data page may serve clocks: Ok, or why not.
pub fn decide(f: &Facts) -> Result<(), &'static str> {
    if f.pinned {
        return Err("the clocks are pinned");
    }
    if f.clocksource.trim() != "tsc" {
        return Err("the host does not use the TSC as its clocksource");
    }
    if f.tsc_khz == 0 {
        return Err("KVM does not report the TSC frequency");
    }
    Ok(())
}

/// The host's facts (the clocksource from sysfs).
pub fn host_facts(tsc_khz: u64, pinned: bool) -> Facts {
    let clocksource =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    Facts {
        clocksource,
        tsc_khz,
        pinned,
    }
}

/// The guest TSC's offset from the host's, from a KVM reading `guest` of the guest TSC
/// taken between host readings `before` and `after`: 0 when 0 is within the bracket
/// (no offset), else the bracket's middle.
pub fn tsc_offset(before: u64, guest: u64, after: u64) -> i64 {
    let lo = guest.wrapping_sub(after) as i64;
    let hi = guest.wrapping_sub(before) as i64;
    if lo <= 0 && 0 <= hi {
        0
    } else {
        lo + (hi - lo) / 2
    }
}

/// One clock's line (see the module doc), in guest TSC cycles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    pub cycle_base: u64,
    pub ns_base: u64,
    pub mult: u64,
}

impl Line {
    /// The clock's value at guest TSC `tsc`, as the vDSO computes it.
    pub fn at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.cycle_base);
        let ns = ((u128::from(delta) * u128::from(self.mult)) >> SHIFT) as u64;
        self.ns_base.wrapping_add(ns)
    }

    /// `mult` for `ns_per_cycle`.
    fn mult(ns_per_cycle: f64) -> u64 {
        (ns_per_cycle * (1u64 << SHIFT) as f64).max(0.0) as u64
    }

    /// The line after a re-anchor: the clock read `ns` at `tsc`; `rate` is the measured
    /// ns per cycle; a clock that may `step` jumps to a far-off reading.
    pub fn reanchor(&self, tsc: u64, ns: u64, rate: f64, step: bool) -> Line {
        let here = self.at(tsc);
        let err = ns.wrapping_sub(here) as i64;
        if (step && err.abs() > STEP_NS) || err > STEP_NS {
            // Set (realtime), or far behind: go there. Never backward for the others.
            return Line {
                cycle_base: tsc,
                ns_base: ns,
                mult: Line::mult(rate),
            };
        }
        let horizon = SLEW_NS as f64 / rate;
        let slope = (rate + err as f64 / horizon).max(rate / 2.0);
        Line {
            cycle_base: tsc,
            ns_base: here,
            mult: Line::mult(slope),
        }
    }
}

/// The host's `rdtsc`.
pub fn host_tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions (user mode may read the TSC on Linux x86-64).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `clock` read between two host TSC readings: (the readings' middle, ns).
fn sample(clock: u32) -> Option<(u64, u64)> {
    let t0 = host_tsc();
    let (s, ns) = host::clock_gettime(clock as i32).ok()?;
    let t1 = host_tsc();
    let ns = u64::try_from(s).ok()?.checked_mul(1_000_000_000)? + u64::try_from(ns).ok()?;
    Some((t0 + (t1.wrapping_sub(t0)) / 2, ns))
}

#[derive(Debug)]
struct State {
    /// Guest TSC minus host TSC.
    offset: i64,
    /// The first anchor of each served clock: (host tsc, ns).
    first: [Option<(u64, u64)>; SERVED.len()],
    lines: [Option<Line>; SERVED.len()],
    seq: u32,
    /// ns per cycle from KVM's TSC frequency.
    nominal: f64,
}

/// The data page's clocks (see the module doc).
#[derive(Debug)]
pub struct VClock {
    mem: Arc<GuestMemory>,
    page: GuestPhysAddr,
    state: Mutex<Option<State>>,
    /// Host TSC at which to re-anchor next (u64::MAX: the fast path is off).
    next: AtomicU64,
    /// Host TSC cycles between re-anchors.
    period: AtomicU64,
}

impl VClock {
    /// The clocks of the data page at guest-physical `page` (zero: nothing served, every
    /// vDSO function makes its system call) until [`Self::start`].
    pub fn new(mem: Arc<GuestMemory>, page: GuestPhysAddr) -> VClock {
        VClock {
            mem,
            page,
            state: Mutex::new(None),
            next: AtomicU64::new(u64::MAX),
            period: AtomicU64::new(u64::MAX),
        }
    }

    /// Serve the clocks from now on: the guest TSC is the host's plus `offset` and runs
    /// at `tsc_khz`.
    pub fn start(&self, offset: i64, tsc_khz: u64) {
        let nominal = 1e6 / tsc_khz as f64;
        let mut st = State {
            offset,
            first: [None; SERVED.len()],
            lines: [None; SERVED.len()],
            seq: 0,
            nominal,
        };
        for (i, &(_, source, _)) in SERVED.iter().enumerate() {
            if let Some((tsc, ns)) = sample(source) {
                st.first[i] = Some((tsc, ns));
                st.lines[i] = Some(Line {
                    cycle_base: tsc.wrapping_add_signed(offset),
                    ns_base: ns,
                    mult: Line::mult(nominal),
                });
            }
        }
        self.publish(&mut st);
        let period = (REANCHOR_NS as f64 / nominal) as u64;
        self.period.store(period, Ordering::Relaxed);
        self.next
            .store(host_tsc().saturating_add(period), Ordering::Relaxed);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
    }

    /// At a system call: re-anchor the lines when it is time (see the module doc).
    pub fn tick(&self) {
        let now = host_tsc();
        if now < self.next.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut guard) = self.state.try_lock() else {
            return; // another vCPU is at it
        };
        let Some(st) = guard.as_mut() else {
            return;
        };
        self.next.store(
            now.saturating_add(self.period.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        // The monotonic rate (measured since the first anchor) for every clock but the
        // raw one, which has its own.
        let rate_of = |first: Option<(u64, u64)>, tsc: u64, ns: u64| -> Option<f64> {
            let (t0, n0) = first?;
            let dt = tsc.checked_sub(t0)?;
            (dt > 0 && ns > n0).then(|| (ns - n0) as f64 / dt as f64)
        };
        let mono = SERVED
            .iter()
            .position(|&(c, ..)| c == libc::CLOCK_MONOTONIC as u32);
        let mut mono_rate = None;
        let samples: Vec<_> = SERVED
            .iter()
            .map(|&(_, source, _)| sample(source))
            .collect();
        if let (Some(m), Some(Some((tsc, ns)))) = (mono, mono.map(|m| samples[m])) {
            mono_rate = rate_of(st.first[m], tsc, ns);
        }
        for (i, &(_, source, step)) in SERVED.iter().enumerate() {
            let (Some(line), Some((tsc, ns))) = (st.lines[i], samples[i]) else {
                continue;
            };
            let rate = if source == libc::CLOCK_MONOTONIC_RAW as u32 {
                rate_of(st.first[i], tsc, ns)
            } else {
                mono_rate
            }
            .unwrap_or(st.nominal);
            st.lines[i] = Some(line.reanchor(tsc.wrapping_add_signed(st.offset), ns, rate, step));
        }
        self.publish(st);
    }

    /// Write the lines to the page under the sequence count.
    fn publish(&self, st: &mut State) {
        let at = |off: u64| GuestPhysAddr(self.page.0 + off);
        let seq = at(vvar::SEQ);
        // Single-copy atomic stores: the guest reads the page while it changes.
        let seq_len = std::mem::size_of_val(&st.seq);
        st.seq = st.seq.wrapping_add(1) | 1;
        let _ = self.mem.store_aligned(seq, seq_len, u64::from(st.seq));
        fence(Ordering::SeqCst);
        for (i, &(clock, ..)) in SERVED.iter().enumerate() {
            let Some(l) = st.lines[i] else { continue };
            let e = vvar::CLOCKS + u64::from(clock) * vvar::ENTRY;
            for (field, v) in [
                (vvar::CYCLE_BASE, l.cycle_base),
                (vvar::NS_BASE, l.ns_base),
                (vvar::SHIFT, u64::from(SHIFT)),
                (vvar::MULT, l.mult),
            ] {
                let _ = self.mem.store_aligned(at(e + field), 8, v);
            }
        }
        fence(Ordering::SeqCst);
        st.seq = st.seq.wrapping_add(1);
        let _ = self.mem.store_aligned(seq, seq_len, u64::from(st.seq));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_needs_a_trusted_tsc_and_real_clocks() {
        let ok = Facts {
            clocksource: "tsc\n".into(),
            tsc_khz: 2_600_000,
            pinned: false,
        };
        assert_eq!(decide(&ok), Ok(()));
        for bad in [
            Facts {
                pinned: true,
                ..ok.clone()
            },
            Facts {
                clocksource: "hpet\n".into(),
                ..ok.clone()
            },
            Facts {
                tsc_khz: 0,
                ..ok.clone()
            },
        ] {
            assert!(decide(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_offset_is_zero_when_the_guest_reading_is_inside_the_bracket() {
        assert_eq!(tsc_offset(1000, 1500, 2000), 0);
        // KVM's usual offset on VMX: the guest TSC started at 0 when the vCPU was made.
        assert_eq!(tsc_offset(10_000_000, 5_000, 10_000_100), -9_995_050);
        assert_eq!(tsc_offset(1000, 1_000_000, 1100), 998_950);
    }

    #[test]
    fn a_line_converts_cycles_like_the_vdso() {
        // 2 GHz: 0.5 ns per cycle.
        let l = Line {
            cycle_base: 1000,
            ns_base: 5_000_000_000,
            mult: Line::mult(0.5),
        };
        assert_eq!(l.at(1000), 5_000_000_000);
        assert_eq!(l.at(3000), 5_000_001_000);
        // A TSC behind the anchor reads the anchor.
        assert_eq!(l.at(10), 5_000_000_000);
        // Hours of cycles do not overflow.
        assert_eq!(
            l.at(1000 + 2 * 3_600_000_000_000),
            5_000_000_000 + 3_600_000_000_000
        );
    }

    #[test]
    fn reanchoring_never_steps_a_monotonic_clock_back_and_closes_the_error() {
        let rate = 0.5;
        let l = Line {
            cycle_base: 0,
            ns_base: 0,
            mult: Line::mult(rate),
        };
        // The line is 10 µs ahead of the clock at 1 s.
        let tsc = 2_000_000_000;
        let truth = 1_000_000_000 - 10_000;
        let n = l.reanchor(tsc, truth, rate, false);
        assert_eq!(n.at(tsc), l.at(tsc), "continuous");
        assert!(n.mult < l.mult, "slower until it meets the clock");
        // After the slew time it reads the clock to within a few ns.
        let later = tsc + (SLEW_NS as f64 / rate) as u64;
        let want = truth + SLEW_NS;
        assert!(n.at(later).abs_diff(want) < 10, "{} vs {want}", n.at(later));
        // A realtime clock that was set jumps; a monotonic one far behind jumps forward.
        let set = l.reanchor(tsc, 5_000_000_000, rate, true);
        assert_eq!(set.at(tsc), 5_000_000_000);
        let behind = l.reanchor(tsc, 3_000_000_000, rate, false);
        assert_eq!(behind.at(tsc), 3_000_000_000);
        // ...but a monotonic clock far ahead of its reading is never stepped back.
        let ahead = l.reanchor(tsc, 10, rate, false);
        assert!(ahead.at(tsc) >= l.at(tsc));
    }
}
