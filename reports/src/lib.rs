//! `lbrprof-reports`: aggregation of recordings into branch histograms, fall-through
//! ranges, hot functions and stacks, and their rendering as text, JSON, Markdown, folded
//! stacks and SVG flame graphs; `diff` verdicts and BOLT `.fdata` export.
//!
//! In the data flow capture → data → symbolize → aggregate → render, this crate is the
//! last two steps: it reads recordings and perf.data files only through the data layer,
//! `lbrprof-data` (never the collector or the VMM, so it builds without KVM or
//! `perf_event_open`), and names locations through the symbolizer.
//!
//! Non-goals: capture (`lbrprof-collector`, `lbrprof-vmm`), file formats and the sample
//! model (`lbrprof-data`) and address lookup (the symbolizer, reached through
//! [`symbols::SymbolSource`]); it never parses CLI flags.
//!
//! # Pipeline
//!
//! [`load()`] runs steps 1 and 2 for every reading subcommand (`report`, `flamegraph`,
//! `diff`, `annotate`, `export`): the binary only turns its flags into [`LoadOptions`].
//!
//! 1. [`aggregate`]: the event stream (host samples with call chains and branch stacks,
//!    guest LBR snapshots, mappings, losses) is folded into counts keyed by
//!    [`loc::Loc`] — a module and a file offset — with one entry per unique stack, edge
//!    and fall-through range. Memory grows with the variety of the data, not its length.
//!    When the options allow it (not for timelines or `record --vm` pairing, which need
//!    every sample on its own, nor for `--dso` on samples with branch stacks), one
//!    folder (`fold/`) takes the borrowed samples ([`lbrprof_data::sample::SampleRef`])
//!    of any [`lbrprof_data::source::SampleSource`] (perf.data or lbrprof.data mapped,
//!    or an event stream) on every core, by raw stack, and only unique stacks are
//!    resolved, through the same [`Aggregator`]. Otherwise the [`Aggregator`] visits the
//!    same source's samples in stream order, still read in place (a recording in file
//!    order, perf.data in perf's order); only an event stream is read on a second
//!    thread while it is visited.
//! 2. [`symbols`]: each unique location is symbolized once, batched per module, modules
//!    in parallel (rayon). Reports and flame graphs name functions from symbol tables
//!    only ([`SymbolTable::build_functions`]); file:line (DWARF, loaded lazily per
//!    module) is looked up afterwards for the places the branch and range tables show.
//! 3. [`report`]: named, sorted tables ([`report::Report`]); instruction counts of
//!    fall-through ranges are decoded from the module's code with iced-x86 when the file
//!    is readable ([`decode`]), else estimated as `bytes / 4` (and marked so).
//! 4. Rendering: [`render`] (text, Markdown, JSON, folded), [`flame`] (SVG via inferno),
//!    [`bolt`] (BOLT `.fdata`).
//! 5. For `record --vm` recordings, [`vm`]: host samples paired with guest snapshots
//!    (after symbolization, which decides "in KVM_RUN"), where the host spent its time,
//!    and the unified host → `[guest vcpuN]` → guest stacks of the flame graph.
//!
//! # Branch semantics
//!
//! Branch stacks are newest first. Edge `from → to` counts every entry, including
//! all-zero entries (perf counts those too, as `[unknown] 0 → 0`), so shares match
//! `perf report -b`. A fall-through range is `[to of entry i+1, from of entry i]`: the
//! straight-line code executed between two consecutive taken branches; ranges that cross
//! modules, run backwards or are longer than 64 KiB are dropped as unreliable.
//!
//! # JSON schema (`--format json`), version 1
//!
//! The machine-readable schema is `reports/schema/report-v1.json` (JSON Schema draft
//! 2020-12). Documents look like this; every field is always present, optional values
//! are `null`:
//!
//! ```text
//! {
//!   "schema": "lbrprof-report",  "version": 1,
//!   "meta": { "source": "perf.data" | "lbrprof.data", "path": str, "event": str,
//!             "samples": u64, "weight": u64, "snapshots": u64, "guest_weight": u64,
//!             "lost": u64,
//!             "throttled": u64, "frozen": u64, "filtered_out": u64, "duration_ns": u64,
//!             "branch_source": str, "branch_depth": u64, "branch_entries": u64,
//!             "range_method": str, "warnings": [str] },
//!   "functions": [ { "function": str, "module": str, "side": "host" | "guest",
//!                    "self_samples": u64,
//!                    "self_weight": u64, "total_samples": u64, "total_weight": u64,
//!                    "self_pct": f64, "total_pct": f64 } ],
//!   "branches":  [ { "from": Place, "to": Place, "count": u64, "pct": f64,
//!                    "kind": "Unknown"|"Cond"|"Uncond"|"IndJump"|"Call"|"IndCall"|"Ret"|
//!                            "Syscall"|"Sysret"|"Irq"|"Exception"|"Eret"|"Far",
//!                    "mispredicts": u64, "mispredict_pct": f64|null,
//!                    "avg_cycles": f64|null, "in_tx": u64, "aborts": u64 } ],
//!   "ranges":    [ { "start": Place, "end": Place, "count": u64, "pct": f64,
//!                    "bytes": u64, "instructions": f64, "estimated": bool,
//!                    "executed": f64 } ],
//!   "vm": null | { "image": str, "vcpus": u32, "backend": str, "mode": str,
//!                  "pairing": { "samples", "vcpu_samples", "in_kvm_run", "paired",
//!                               "not_vcpu_thread", "outside_kvm_run",
//!                               "no_snapshot_in_window", "window_ns", "distance_p50_ns",
//!                               "distance_p90_ns", "distance_p99_ns",
//!                               "distance_max_ns": u64 },
//!                  "paired_pct": f64, "check": { "cross_vcpu": u64 },
//!                  "activities": [ { "activity": str, "description": str,
//!                                    "samples": u64, "pct": f64,
//!                                    "top_stacks": [[str, u64]] } ],
//!                  "shim": [ { "vcpu": u32, "tid": u32|null, "exits": {str: u64},
//!                              "run_ns", "trace_ns", "snapshot_ns": u64,
//!                              "instructions", "branches": u64|null, "snapshots",
//!                              "agent_snapshots", "lost_snapshots", "frozen_events", "samples",
//!                              "paired": u64 } ] },
//!   // Only when asked for (`--sort comm,dso,...`, `-g caller|callee`):
//!   "hist": { "keys": ["comm"|"pid"|"dso"|"sym"], "children": bool, "weight": u64,
//!             "rows": [ { "keys": [str], "self_samples", "self_weight": u64,
//!                         "self_pct": f64, "children_samples", "children_weight": u64,
//!                         "children_pct": f64 } ] },
//!   "call_tree": { "order": "caller"|"callee", "weight": u64, "roots": [Node] }
//! }
//! Node = { "function": str, "module": str, "total_samples", "total_weight": u64,
//!          "total_pct": f64, "self_samples", "self_weight": u64, "self_pct": f64,
//!          "children": [Node] }
//! Place = { "module": str, "offset": u64, "function": str|null,
//!           "function_offset": u64|null, "file": str|null, "line": u32|null }
//! ```
//!
//! Percentages: functions are shares of the total event count (`meta.weight`, the sum
//! of sample periods), branches of `meta.branch_entries`, ranges of all ranges.
//! Tables are sorted (see [`report::SortKey`]) and cut by `--limit`/`--percent-limit`.
//! A change that removes or retypes a field bumps `version`; adding fields does not.

pub mod aggregate;
pub mod annotate;
pub mod autofdo;
pub mod bolt;
pub mod callgrind;
pub mod cfg;
pub mod decode;
pub mod diff;
pub mod firefox;
pub mod flame;
mod fold;
pub mod hash;
pub mod hist;
pub mod lbr;
pub mod load;
pub mod loc;
pub mod perfdata_out;
pub mod pprof;
pub mod render;
pub mod report;
pub mod share;
pub mod symbols;
pub mod time;
pub mod tree;
pub mod vm;
pub mod vmtrace;

pub use aggregate::{AggregateOptions, Aggregator, Filter, Profile, aggregate_events};
pub use load::{LoadError, LoadOptions, Loaded, Naming, load};
pub use report::{Report, SortKey};
pub use symbols::{NoSymbols, SymbolSource, SymbolTable};
