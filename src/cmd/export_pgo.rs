//! `lbrprof export --bolt-preagg` (and the binary choice the PGO exports share): which
//! binary a profile is for, checked by build-id against the one that was recorded.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::bolt;
use lbrprof_reports::loc::{ModuleId, ModuleKind};
use lbrprof_symbolizer::{FileOffset, Module, ModuleKey, SymbolizerOptions};

use super::export::Args;
use super::report::{Loaded, Naming, load, output};

/// The binary a one-binary profile is for: the one `--dso` names, else the file-backed
/// module with the most branch ends. Its file must be the recorded build.
pub fn choose_binary(loaded: &Loaded, dso: &[String]) -> anyhow::Result<(ModuleId, Module)> {
    let modules = &loaded.profile.spaces.modules;
    let code = |k: ModuleKind| matches!(k, ModuleKind::File | ModuleKind::Guest);
    let mut ends: Vec<(ModuleId, u64)> = modules
        .iter()
        .filter(|(_, m)| code(m.kind))
        .map(|(id, _)| (id, 0))
        .collect();
    for ((from, to), e) in &loaded.profile.edges {
        for l in [from, to] {
            if let Some(v) = ends.iter_mut().find(|(id, _)| *id == l.module) {
                v.1 += e.count;
            }
        }
    }
    ends.sort_by_key(|&(id, n)| (std::cmp::Reverse(n), id));
    let id = match dso {
        [] => match ends.first() {
            Some(&(id, n)) if n > 0 => id,
            _ => anyhow::bail!(
                "no branch in any binary's code: the recording has no branch stacks (record with --lbr, or perf record -b)"
            ),
        },
        [name] => {
            let m = ends.iter().find(|(id, _)| {
                let m = modules.get(*id);
                m.path == *name || m.short_name() == name
            });
            match m {
                Some(&(id, _)) => id,
                None => anyhow::bail!(
                    "no binary named {name} in the recording; binaries with branches: {}",
                    ends.iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(id, _)| modules.get(*id).short_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        _ => anyhow::bail!("a BOLT profile is for one binary: pass one --dso"),
    };
    let m = modules.get(id);
    let key = ModuleKey {
        path: m.path.clone().into(),
        build_id: m.build_id.clone(),
    };
    let opened = Module::open(&key, &SymbolizerOptions::default())
        .with_context(|| format!("cannot use {} for the profile", m.path))?;
    Ok((id, opened.module))
}

pub fn preagg(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.input, Naming::Mangled)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let (id, binary) = choose_binary(&loaded, &args.input.dso)?;
    let mut out = output(Some(&args.output))?;
    let svma = |off: u64| binary.svma_of(FileOffset(off)).map(|a| a.0);
    let stats = bolt::write_preagg(&loaded.profile, &loaded.syms, id, &svma, &mut out)
        .and_then(|s| out.flush().map(|()| s))
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let path = Path::new(&loaded.profile.spaces.modules.get(id).path);
    eprintln!(
        "lbrprof: wrote {} (perf2bolt pre-aggregated profile of {}: {} branch lines, {} fall-through lines, {} of them entered from other functions; read it with `perf2bolt -pa -p {} {}`)",
        args.output.display(),
        path.display(),
        stats.branch_lines,
        stats.fallthrough_lines + stats.external_lines,
        stats.external_lines,
        args.output.display(),
        path.display(),
    );
    if stats.unmapped > 0 {
        eprintln!(
            "lbrprof: warning: {} branch and range counts at file offsets no segment of {} loads were left out",
            stats.unmapped,
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
