//! `lbrprof-reports`: aggregation of recordings into branch histograms, fall-through
//! ranges, hot functions and stacks, and their rendering as text, JSON, Markdown, folded
//! stacks and SVG flame graphs; `diff` verdicts and BOLT `.fdata` export.
//!
//! Non-goals: capture (the collector) and address lookup (the symbolizer); it never parses
//! CLI flags.
pub mod diff;
