//! The clap definition of the whole command line and its dispatch. Each subcommand's
//! arguments are defined next to its implementation in `cmd/<name>.rs`; the command
//! modules know nothing of this file.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::cmd;

/// A host+guest Last Branch Record profiler, a companion to Linux perf.
#[derive(Debug, Parser)]
#[command(name = "lbrprof", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a host command, a running process, or a guest in the VMM shim.
    Record(cmd::record::Args),
    /// Summarize a recording (lbrprof.data or perf.data): hot functions, branches, ranges.
    Report(cmd::report::Args),
    /// Show one function's instructions with samples, source lines and, from branch
    /// stacks, execution and taken/not-taken counts.
    Annotate(cmd::annotate::Args),
    /// Draw a flame graph (SVG) of a recording.
    Flamegraph(cmd::flamegraph::Args),
    /// Compare two recordings and give a regression verdict (exit 0 none, 1 regression, 2 error).
    Diff(cmd::diff::Args),
    /// Export profiles for other tools: BOLT .fdata, pprof, perf.data, Firefox Profiler.
    Export(cmd::export::Args),
    /// Print this host's profiling capabilities, or a recording's header and totals.
    Info(cmd::info::Args),
    /// Record a built-in guest workload and write a report, a JSON histogram and a flame graph.
    Demo(cmd::demo::Args),
    /// Boot a guest image in the VMM shim and run it to completion, without profiling.
    Run(cmd::run::Args),
    /// Symbolize addresses of an ELF file, in the style of `addr2line -f -i -C`.
    Symbolize(cmd::symbolize::Args),
    /// Generate man pages or shell completions.
    Generate(cmd::generate::Args),
}

impl Cli {
    /// Run the parsed command line; the `ExitCode` is the command's own (e.g. the profiled
    /// program's status for `record`, the verdict for `diff`).
    pub fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Record(args) if args.guest.vm.is_some() => cmd::record_vm::run(args),
            Command::Record(args) => cmd::record::run(args),
            Command::Report(args) => cmd::report::run(args),
            Command::Annotate(args) => cmd::annotate::run(args),
            Command::Flamegraph(args) => cmd::flamegraph::run(args),
            Command::Diff(args) => cmd::diff::run(args),
            Command::Export(args) => cmd::export::run(args),
            Command::Info(args) => cmd::info::run(args),
            Command::Demo(args) => cmd::demo::run(args),
            Command::Run(args) => cmd::run::run(args),
            Command::Symbolize(args) => cmd::symbolize::run(args),
            Command::Generate(args) => cmd::generate::run(args, Cli::command()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The hidden guest-LBR switches (environment fallbacks `LBRPROF_LBR_*`) take the
    /// usual boolean spellings, on `run` and on `record --vm`, which has its own dispatch.
    #[test]
    fn lbr_tuning_switches_parse_on_run_and_record() {
        let cli = Cli::try_parse_from([
            "lbrprof",
            "run",
            "--vm",
            "builtin:calls",
            "--lbr",
            "emulated",
            "--lbr-interp",
            "0",
            "--lbr-empty-windows",
            "on",
            "--lbr-interp-debug",
            "true",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let t = args.lbr.tuning;
        assert!(!t.lbr_interp && t.lbr_empty_windows && t.lbr_interp_debug);
        let cli = Cli::try_parse_from([
            "lbrprof",
            "record",
            "--vm",
            "builtin:calls",
            "--lbr-interp",
            "off",
        ])
        .unwrap();
        let Command::Record(args) = cli.command else {
            panic!("not record")
        };
        assert!(!args.guest.tuning.lbr_interp);
        assert!(args.guest.vm.is_some());
        let bad = Cli::try_parse_from(["lbrprof", "run", "--vm", "x", "--lbr-interp", "maybe"]);
        assert!(bad.is_err());
    }

    /// The committed `man/` pages must match the CLI; regenerate with
    /// `cargo run -- generate man`.
    #[test]
    fn committed_man_pages_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        for (name, contents) in cmd::generate::man_pages(&Cli::command()).unwrap() {
            let committed = std::fs::read(dir.join(&name)).unwrap_or_default();
            assert!(
                committed == contents,
                "man/{name} is stale: run `cargo run -- generate man`"
            );
        }
    }
}
