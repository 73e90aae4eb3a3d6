//! `lbrprof-data`: the one home of a sample.
//!
//! It owns the data and nothing else:
//! * the in-memory model of a recording ([`model`]: a [`model::Header`] and a stream of
//!   [`model::Event`]s) and of a guest LBR snapshot ([`snapshot`]);
//! * the `lbrprof.data` recording format, writer and streaming/mapped reader ([`recording`]);
//! * `perf.data` reading into the same model ([`perfdata`]);
//! * input detection by magic number ([`input::open_any`]);
//! * the borrowed sample every source hands out ([`sample::SampleRef`]), and the one way
//!   to read samples from any input: a [`source::SampleSource`] (a mapped perf.data file,
//!   a mapped recording, or any event stream such as a live capture);
//! * host/guest pairing policy ([`pairing`]).
//!
//! In the data flow capture → **data** → symbolize → aggregate → render, the capture crates
//! (`lbrprof-vmm` produces [`snapshot::LbrSnapshot`]s, `lbrprof-collector` samples the host
//! and writes recordings) depend on this crate, and so do the readers (`lbrprof-reports`).
//!
//! Design constraints: no dependency on KVM, `perf_event_open` or any other capture
//! machinery, so a reader of recordings builds and runs on any host; readers never panic
//! on malformed input (a corrupt chunk is an error naming its offset). The recording format
//! is positional postcard: serialized enums only ever gain variants at the end.
//!
//! Non-goals: capturing (that is `lbrprof-collector` and `lbrprof-vmm`), symbolizing or
//! aggregating (that is `lbrprof-symbolizer` and `lbrprof-reports`), and reading
//! environment variables or command-line flags.

pub mod clock;
pub mod dwarf;
pub mod input;
pub mod model;
pub mod pairing;
pub mod perfdata;
pub mod recording;
pub mod sample;
pub mod snapshot;
pub mod source;
