//! `lbrprof flamegraph`: an SVG flame graph of a recording (inferno). For `record --vm`
//! recordings the stacks are unified: host frames, `[guest vcpuN]`, the paired guest stack
//! (or only one side with `--host-only` / `--guest-only`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::flame::{self, FlameOptions};
use lbrprof_reports::render::StackSource;

use lbrprof_reports::vm::View;

use super::report::{InputArgs, Naming, PairArgs, load_functions, output, vm_analysis};

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
    /// Root each stack in the sampled thread's command name, as the
    /// `perf script | inferno-collapse-perf | inferno-flamegraph` pipeline draws it.
    #[arg(long, conflicts_with_all = ["guest_only", "host_only"])]
    pub comm_root: bool,
    /// record --vm recordings: only the guest's stacks (one per LBR snapshot, under
    /// `[guest vcpuN]`), instead of the unified host+guest stacks.
    #[arg(long, conflicts_with_all = ["host_only", "branches"])]
    pub guest_only: bool,
    /// record --vm recordings: only the host's stacks (the shim's threads), without the
    /// paired guest frames.
    #[arg(long, conflicts_with = "branches")]
    pub host_only: bool,
    #[command(flatten)]
    pub pairing: PairArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load_functions(&args.input, Naming::Demangled, args.comm_root)?;
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
    let vm = if args.branches {
        None
    } else {
        vm_analysis(&loaded, &args.pairing)
    };
    if vm.is_none() && (args.guest_only || args.host_only) {
        anyhow::bail!(
            "--guest-only and --host-only need a recording of `record --vm` ({} is not one)",
            args.input.input.display()
        );
    }
    let mut out = output(Some(&args.output))?;
    let drawn = match &vm {
        // Unified stacks: host frames, [guest vcpuN], the paired guest stack.
        Some(vm) => {
            let view = if args.guest_only {
                View::GuestOnly
            } else if args.host_only {
                View::HostOnly
            } else {
                View::Unified
            };
            let mut opts = opts;
            let p = &vm.report.pairing;
            opts.subtitle = Some(format!(
                "{} host samples, {} guest snapshots, {} of {} samples in KVM_RUN paired \
                 with a guest stack",
                t.samples, t.snapshots, p.paired, p.in_kvm_run
            ));
            flame::write_svg_lines(&vm.folded(view), &vm.guest_frames, &opts, &mut out)
        }
        None => flame::write_svg(&loaded.profile, &loaded.syms, &opts, &mut out),
    };
    drawn.with_context(|| format!("cannot draw {}", args.output.display()))?;
    out.flush()
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    Ok(ExitCode::SUCCESS)
}
