//! `lbrprof annotate FUNCTION`: one function's instructions with sample shares, source
//! lines, and from branch stacks the execution count of each instruction and the taken /
//! not-taken counts of each branch.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::annotate;

use super::report::{InputArgs, Naming, load, output};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Columns: Samples and Share (of the function's samples) count the samples whose IP is at \
the instruction, as perf annotate does. Exec, Taken and Not taken come from the branch \
stacks (perf record -b, lbrprof's guest LBR): Exec counts the executions the stacks' \
fall-through ranges saw, Taken the entries leaving from a branch, Not taken the executions \
of a conditional branch that fell through. A '>' before the offset marks a branch target. \
Use --dso when several modules have a function of that name.")]
pub struct Args {
    /// The function: its demangled name, or a C++ name without its parameter list.
    #[arg(value_name = "FUNCTION")]
    pub function: String,
    #[command(flatten)]
    pub input: InputArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = AnnotateFormat::Text)]
    pub format: AnnotateFormat,
    /// Write to FILE instead of standard output.
    #[arg(long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnnotateFormat {
    Text,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.input, Naming::Demangled)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let a = annotate::annotate(
        &loaded.profile,
        &loaded.syms,
        loaded.source.as_ref(),
        &args.function,
    )
    .with_context(|| format!("cannot annotate {}", args.input.input.display()))?;
    let mut out = output(args.output.as_deref())?;
    match args.format {
        AnnotateFormat::Text => out.write_all(annotate::render_text(&a).as_bytes())?,
        AnnotateFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &a)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
