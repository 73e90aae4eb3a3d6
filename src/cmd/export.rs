//! `lbrprof export`: branch profiles for optimizers (BOLT `.fdata`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::bolt;
use lbrprof_reports::decode::CodeReader;

use super::report::{InputArgs, Naming, load, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub input: InputArgs,
    /// Write a BOLT profile (the .fdata text `llvm-bolt -data=FILE` reads). With --dso,
    /// only the named binary's code counts as known (other code is `[unknown]`).
    #[arg(long, required = true)]
    pub bolt: bool,
    /// Where to write the profile.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.input, Naming::Mangled)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let mut out = output(Some(&args.output))?;
    let mut code = CodeReader::default();
    let stats = bolt::write_fdata(
        &loaded.profile,
        &loaded.syms,
        &mut code,
        &loaded.header.sampling.event,
        &args.input.dso,
        &mut out,
    )
    .and_then(|s| out.flush().map(|()| s))
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    if stats.unnamed > 0 {
        eprintln!(
            "lbrprof: warning: {} {} in code with no function name (stripped, no symbols) left out of the profile as [unknown]; install the debug package or pass --debug-dir to name them",
            stats.unnamed,
            if stats.no_lbr {
                "samples"
            } else {
                "branch ends"
            }
        );
    }
    if stats.no_lbr {
        eprintln!(
            "lbrprof: wrote {} ({} no_lbr sample lines: the recording has no branch stacks)",
            args.output.display(),
            stats.branch_lines
        );
    } else {
        eprintln!(
            "lbrprof: wrote {} ({} branch lines, {} fall-through lines; skipped {} edges outside known functions, {} ranges in unreadable code)",
            args.output.display(),
            stats.branch_lines,
            stats.fallthrough_lines,
            stats.skipped_edges,
            stats.skipped_ranges
        );
    }
    Ok(ExitCode::SUCCESS)
}
