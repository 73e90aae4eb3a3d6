//! `lbrprof flamegraph`: an SVG flame graph of a recording (inferno).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::flame::{self, FlameOptions};
use lbrprof_reports::render::StackSource;

use super::report::{InputArgs, Naming, load, output};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub input: InputArgs,
    /// Where to write the SVG.
    #[arg(short, long, value_name = "FILE", default_value = "flamegraph.svg")]
    pub output: PathBuf,
    /// Draw stacks rebuilt from LBR call-stack data (perf --call-graph lbr, guest
    /// snapshots) instead of the sampled call chains.
    #[arg(long)]
    pub branches: bool,
    /// Title of the graph (default: the file name and event).
    #[arg(long)]
    pub title: Option<String>,
    /// Draw an icicle graph (roots at the top).
    #[arg(long)]
    pub inverted: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.input, Naming::Demangled)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let t = &loaded.profile.totals;
    let opts = FlameOptions {
        title: args.title.clone().unwrap_or_else(|| {
            format!(
                "{} ({}{})",
                args.input.input.display(),
                loaded.header.sampling.event,
                if args.branches {
                    ", LBR call stacks"
                } else {
                    ""
                }
            )
        }),
        subtitle: Some(format!(
            "{} samples, {} guest snapshots, {} lost",
            t.samples, t.snapshots, t.lost
        )),
        source: if args.branches {
            StackSource::Lbr
        } else {
            StackSource::CallChains
        },
        inverted: args.inverted,
    };
    let mut out = output(Some(&args.output))?;
    flame::write_svg(&loaded.profile, &loaded.syms, &opts, &mut out)
        .with_context(|| format!("cannot draw {}", args.output.display()))?;
    out.flush()
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(ExitCode::SUCCESS)
}
