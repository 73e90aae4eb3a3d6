//! `lbrprof export --callgrind`: a callgrind-format profile for `callgrind_annotate`,
//! KCachegrind and QCachegrind. Exact-mode recordings give callgrind's own counts
//! (instructions, conditional and indirect branches per instruction, calls with inclusive
//! costs); any other recording gives its samples.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_data::input::{InputFormat, open_any};
use lbrprof_data::model::{Event, ExactProfile, Target};
use lbrprof_data::sample::SampleRef;
use lbrprof_data::source::{SampleVisitor, visit_input};
use lbrprof_reports::callgrind::{self, Costs, Header};
use lbrprof_reports::decode::CodeReader;

use super::export_args::Args;
use super::report::{Loaded, Naming, load_functions, output};

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path = &args.input.input;
    let profiles = exact_profiles(path)?;
    let mut loaded = load_functions(&args.input, Naming::Demangled, false)?;
    let costs = if profiles.is_empty() {
        callgrind::sampled_costs(&loaded.profile, &loaded.syms)
    } else {
        let mut code = CodeReader::default();
        callgrind::exact_costs(&profiles, &mut loaded.profile.spaces, &mut code)
    };
    if costs.insns.is_empty() {
        anyhow::bail!("nothing to export: {} has no samples", path.display());
    }
    loaded.syms.add_lines(
        &loaded.profile.spaces.modules,
        costs.locs().collect::<Vec<_>>(),
        loaded.source.as_ref(),
    );
    for w in loaded.warnings.iter().chain(&loaded.source.take_warnings()) {
        eprintln!("lbrprof: warning: {w}");
    }
    if costs.unplaced > 0 {
        eprintln!(
            "lbrprof: warning: {} instructions ran in code that cannot be read back (module file missing or changed): credited to the first instruction of their run",
            costs.unplaced
        );
    }
    let header = Header {
        cmd: match &loaded.header.target {
            Target::Command { argv } => argv.join(" "),
            Target::Vm { image, .. } => image.clone(),
            Target::Pid { pid } => format!("pid {pid}"),
            Target::Tid { tid } => format!("tid {tid}"),
            Target::PerfData { path } => path.clone(),
            Target::System { cpus, argv } => crate::cmd::info::system_target(cpus, argv),
        },
        desc: vec![if profiles.is_empty() {
            format!(
                "Source: lbrprof sampled recording {} (event {})",
                path.display(),
                loaded.header.sampling.event
            )
        } else {
            format!(
                "Source: lbrprof exact-mode recording {} (every ring-3 instruction counted)",
                path.display()
            )
        }],
    };
    let mut out = output(Some(&args.output))?;
    let stats = callgrind::write(
        &costs,
        &loaded.profile.spaces.modules,
        &loaded.syms,
        &header,
        &mut out,
    )
    .and_then(|s| out.flush().map(|()| s))
    .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "lbrprof: wrote {} (callgrind, {}: {}; {} functions, {} instructions, {} call edges)",
        args.output.display(),
        if profiles.is_empty() {
            "sampled"
        } else {
            "exact"
        },
        totals_text(&costs, &stats.totals),
        stats.functions,
        stats.instructions,
        stats.call_edges
    );
    if !profiles.is_empty() && stats.totals.first() != Some(&costs.counted) {
        // The runs' sum is the count by construction; say so if it ever is not.
        eprintln!(
            "lbrprof: warning: the file's Ir total {} differs from the {} instructions the recording counted",
            stats.totals.first().copied().unwrap_or(0),
            costs.counted
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn totals_text(costs: &Costs, totals: &[u64]) -> String {
    costs
        .events
        .iter()
        .zip(totals)
        .map(|((e, _), t)| format!("{e} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Instructions retired per function (and in all) by an exact-mode recording, from its
/// exact profiles (`None` when it has none): what `diff --metric instructions` compares.
pub fn exact_function_counts(
    path: &std::path::Path,
    loaded: &mut Loaded,
) -> anyhow::Result<Option<(u64, std::collections::BTreeMap<String, u64>)>> {
    let profiles = exact_profiles(path)?;
    if profiles.is_empty() {
        return Ok(None);
    }
    let mut code = CodeReader::default();
    let costs = callgrind::exact_costs(&profiles, &mut loaded.profile.spaces, &mut code);
    let modules = &loaded.profile.spaces.modules;
    let missing: Vec<_> = costs
        .insns
        .keys()
        .filter(|l| loaded.syms.get(l).is_none())
        .copied()
        .collect();
    loaded
        .syms
        .add_lines(modules, missing, loaded.source.as_ref());
    let mut rows = std::collections::BTreeMap::new();
    for (l, c) in &costs.insns {
        *rows
            .entry(loaded.syms.function_name(modules, l))
            .or_default() += c[0];
    }
    Ok(Some((costs.totals()[0], rows)))
}

/// The exact-mode profiles of an lbrprof recording (none for other recordings and for
/// perf.data files), read in place in file order like every other input.
fn exact_profiles(path: &std::path::Path) -> anyhow::Result<Vec<ExactProfile>> {
    /// Keeps the exact-mode profiles of the side band; samples are not needed.
    struct Profiles(Vec<ExactProfile>);
    impl SampleVisitor for Profiles {
        fn sideband(&mut self, event: &Event) {
            if let Event::ExactProfile(p) = event {
                self.0.push(p.clone());
            }
        }
        fn sample(&mut self, _: &SampleRef<'_>) {}
    }
    let mut input = match open_any(path) {
        Ok(input) if input.format() == InputFormat::Lbrprof => input,
        // Not an lbrprof recording (perf.data), or unreadable: the sampled load says why.
        _ => return Ok(Vec::new()),
    };
    let mut profiles = Profiles(Vec::new());
    visit_input(&mut input, false, &mut profiles)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(profiles.0)
}
