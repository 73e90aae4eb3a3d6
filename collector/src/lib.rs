//! `lbrprof-collector`: the capture side, everything between the machine and a recording.
//!
//! It owns host sampling with `perf_event_open` (per thread of a profiled command or of the
//! VMM shim, [`sampler`], with the event choice in [`host`]), recording a host command
//! ([`record`]) and driving the shim for `record --vm` ([`vm`]). What it captures it writes
//! into the data layer, `lbrprof-data`: its `model` events and the `lbrprof.data`
//! `recording` writer. Data flow: capture (here and `lbrprof-vmm`) → data → symbolize →
//! aggregate → render. Nothing of the data layer is re-exported here: readers of
//! recordings depend on `lbrprof-data` directly, which builds without KVM or
//! `perf_event_open`.
//!
//! Non-goals: the data model and file formats (`lbrprof-data`), symbolizing or aggregating
//! (`lbrprof-symbolizer` and `lbrprof-reports`), and running guests (`lbrprof-vmm`).

pub mod host;
pub mod record;
pub mod sampler;
pub mod vm;
pub mod vm_signals;
