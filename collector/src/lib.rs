//! `lbrprof-collector`: everything between the machine and a recording.
//!
//! It owns host sampling with `perf_event_open` (per thread of a profiled command or of the
//! VMM shim), driving the shim for `record --vm` ([`vm`]), pairing host samples with guest LBR
//! snapshots, the `lbrprof.data` recording format (writer and streaming reader), and the
//! import of `perf.data` files into the same [`model::Event`] stream.
//!
//! Everything downstream (symbolization, reports) sees recordings only through
//! [`model`]: a [`model::Header`] and a stream of [`model::Event`]s, whatever file they
//! came from.
//!
//! Non-goals: symbolizing or aggregating (that is `lbrprof-symbolizer` and
//! `lbrprof-reports`), and running guests (that is `lbrprof-vmm`).

pub mod dwarf;
pub mod host;
pub mod input;
pub mod model;
pub mod pairing;
pub mod perfdata;
pub mod record;
pub mod recording;
pub mod sampler;
pub mod vm;
