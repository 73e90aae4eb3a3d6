//! `lbrprof export --bolt-preagg` (and the binary choice the PGO exports share): which
//! binary a profile is for, checked by build-id against the one that was recorded.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_reports::autofdo::{self, Frame};
use lbrprof_reports::bolt;
use lbrprof_reports::loc::{ModuleId, ModuleKind};
use lbrprof_symbolizer::{FileOffset, Module, ModuleKey, SymbolizerOptions};

use super::export_args::Args;
use super::report::{InputArgs, Loaded, Naming, load, output};

/// Loads a recording for a profile of one binary: `--dso` names that binary, it does not
/// drop samples (a sample anywhere may have branches in the binary, and guest
/// snapshots pass no sample filter).
pub fn load_for_binaries(input: &InputArgs) -> anyhow::Result<Loaded> {
    let mut all = input.clone();
    all.dso.clear();
    load(&all, Naming::Mangled)
}

/// BOLT's names for the local functions of every binary in the profile (see
/// [`bolt::BoltNames`]); binaries that cannot be read keep their symbols' names.
pub fn bolt_names(loaded: &Loaded) -> bolt::BoltNames {
    let mut names = bolt::BoltNames::new();
    for (id, m) in loaded.profile.spaces.modules.iter() {
        if !matches!(m.kind, ModuleKind::File | ModuleKind::Guest) {
            continue;
        }
        for f in lbrprof_symbolizer::local_functions(Path::new(&m.path)) {
            names.insert((id, f.offset.0), format!("{}/{}", f.name, f.ordinal));
        }
    }
    names
}

/// The binary a one-binary profile is for: the one `--dso` names, else the file-backed
/// module with the most branch ends. Its file must be the recorded build.
pub fn choose_binary(loaded: &Loaded, input: &InputArgs) -> anyhow::Result<(ModuleId, Module)> {
    let dso = &input.dso[..];
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
    // Mangled names (what compilers and BOLT match), every inlined frame.
    let opts = SymbolizerOptions {
        debug_dirs: input.debug_dir.clone(),
        debuginfod_cache: super::symbolize::debuginfod_cache(),
        build_id_cache: super::symbolize::build_id_cache(),
        demangle: false,
        inlines: true,
        ..SymbolizerOptions::default()
    };
    let opened = Module::open(&key, &opts)
        .with_context(|| format!("cannot use {} for the profile", m.path))?;
    Ok((id, opened.module))
}

pub fn preagg(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load_for_binaries(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let (id, binary) = choose_binary(&loaded, &args.input)?;
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

pub fn autofdo(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load_for_binaries(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let (id, binary) = choose_binary(&loaded, &args.input)?;
    let path = loaded.profile.spaces.modules.get(id).path.clone();
    if !binary.has_debug_info() {
        anyhow::bail!(
            "{path} has no DWARF line tables: build it with -g or -gline-tables-only (or pass --debug-dir with its debug file)"
        );
    }
    let decl = binary.decl_lines();
    let mut symbolize = |offs: &[u64]| {
        let offs: Vec<FileOffset> = offs.iter().map(|&o| FileOffset(o)).collect();
        let mut stacks = Vec::with_capacity(offs.len());
        let _ = binary.visit(
            &offs,
            |m, a| m.svma_of(a),
            |frames| {
                // A stack with a frame of no name is unusable; line 0 (code the
                // compiler gave no line) is kept for the totals.
                let stack: Option<Vec<Frame>> = frames
                    .iter()
                    .map(|f| {
                        Some(Frame {
                            function: f.function?.to_owned(),
                            line: f.line.unwrap_or(0),
                            discriminator: f.discriminator.unwrap_or(0),
                        })
                    })
                    .collect();
                stacks.push(stack.unwrap_or_default());
                Ok::<(), std::convert::Infallible>(())
            },
        );
        stacks
    };
    let (funcs, stats) = autofdo::build(
        &loaded.profile,
        &loaded.syms,
        id,
        &mut symbolize,
        &|f: &str| decl.get(f).copied(),
    );
    if funcs.is_empty() {
        anyhow::bail!(
            "no samples in {path} to write an AutoFDO profile from: it needs branch stacks (record with --lbr, or perf record -b)"
        );
    }
    let mut out = output(Some(&args.output))?;
    autofdo::write_text(&funcs, &mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let total: u64 = funcs.iter().map(|f| f.total).sum();
    eprintln!(
        "lbrprof: wrote {} (LLVM sample profile of {path}: {} functions, {total} samples; use with clang -fprofile-sample-use={})",
        args.output.display(),
        funcs.len(),
        args.output.display(),
    );
    if stats.no_line > 0 || stats.ranges_outside > 0 {
        eprintln!(
            "lbrprof: warning: left out {} sampled addresses with no debug info and {} range counts outside named functions",
            stats.no_line, stats.ranges_outside
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn autofdo_raw(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load_for_binaries(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("lbrprof: warning: {w}");
    }
    let (id, binary) = choose_binary(&loaded, &args.input)?;
    let path = loaded.profile.spaces.modules.get(id).path.clone();
    let mut out = output(Some(&args.output))?;
    let svma = |off: u64| binary.svma_of(FileOffset(off)).map(|a| a.0);
    let lines = autofdo::write_raw(&loaded.profile, id, &svma, &mut out)
        .and_then(|n| out.flush().map(|()| n))
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "lbrprof: wrote {} (AutoFDO raw profile of {path}, {lines} entries; read it with `create_llvm_prof --profiler=text --profile={} --binary={path}`)",
        args.output.display(),
        args.output.display(),
    );
    Ok(ExitCode::SUCCESS)
}
