//! `annotate`: one function's machine code, instruction by instruction, with what the
//! recording says about each — the samples whose IP is there, and, from branch stacks,
//! how often it ran (fall-through ranges cover every instruction executed between two
//! taken branches), how often each branch was taken and, for conditional branches, not
//! taken. Source lines from DWARF are interleaved where the module has them.
//!
//! Sample counts are what `perf annotate` shows. Execution and taken/not-taken counts are
//! what it cannot show: they come from the LBR, so they count the executions the branch
//! stacks saw (each stack holds the last N taken branches before its sample), not every
//! execution; their ratios are what matter.

use std::collections::HashMap;
use std::fmt::Write as _;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction};
use serde::Serialize;

use crate::aggregate::Profile;
use crate::decode::CodeReader;
use crate::loc::{Loc, ModuleId, ModuleKind};
use crate::symbols::{SymbolSource, SymbolTable};

/// Longest function we disassemble.
const MAX_FUNCTION_BYTES: u64 = 1 << 20;

/// Without a symbol size: decode this far past the last location the recording has in it.
const UNSIZED_TAIL: u64 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotateError {
    #[error("no function named '{function}' has samples or branches in the recording{hint}")]
    NotFound { function: String, hint: String },
    #[error("cannot read the code of '{function}' from {path}")]
    Unreadable { function: String, path: String },
}

/// The annotated function.
#[derive(Clone, Debug, Serialize)]
pub struct Annotation {
    pub function: String,
    /// The module's path.
    pub module: String,
    /// File offset of the function's first instruction.
    pub start: u64,
    pub size: u64,
    /// The symbol table gave no size: the code shown ends after the last instruction the
    /// recording has in the function.
    pub size_estimated: bool,
    /// Samples whose IP is in the function (and their summed periods).
    pub samples: u64,
    pub weight: u64,
    /// Samples of the whole recording (after filters).
    pub total_samples: u64,
    /// Instructions counted in the branch stacks' fall-through ranges, over the function.
    pub executions: u64,
    /// Branch-stack entries in the whole recording (0: no branch stacks, no Exec column).
    pub branch_entries: u64,
    /// Other modules with a function of that name, and their samples.
    pub others: Vec<(String, u64)>,
    pub instructions: Vec<AnnotatedInsn>,
}

/// One instruction.
#[derive(Clone, Debug, Serialize)]
pub struct AnnotatedInsn {
    /// From the function's start.
    pub offset: u64,
    /// AT&T syntax, as objdump and perf print it; branch targets inside the function as
    /// `+0xOFF`.
    pub text: String,
    pub samples: u64,
    pub weight: u64,
    /// Times the branch stacks saw it execute.
    pub exec: u64,
    /// A branch: times it was taken (entries with this `from`).
    pub taken: Option<u64>,
    /// A conditional branch: of its executions the ranges saw, those that fell through.
    pub not_taken: Option<u64>,
    /// Taken branches that landed here.
    pub entered: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// One function of the wanted name: where it is and its samples.
#[derive(Clone, Copy)]
struct Candidate {
    module: ModuleId,
    start: u64,
    size: u64,
    estimated: bool,
    samples: u64,
    weight: u64,
}

/// The function named `function` (its demangled name, or that name without its
/// parameter list) in the module where the recording has most samples of it.
pub fn annotate(
    profile: &Profile,
    syms: &SymbolTable,
    source: &dyn SymbolSource,
    function: &str,
) -> Result<Annotation, AnnotateError> {
    let modules = &profile.spaces.modules;
    // Every location the recording has, with its function's start and size.
    let locs = profile
        .ips
        .keys()
        .chain(profile.edges.keys().flat_map(|(a, b)| [a, b]))
        .chain(profile.ranges.keys().flat_map(|(a, b)| [a, b]));
    let mut found: HashMap<(ModuleId, u64), (Option<u64>, u64)> = HashMap::new();
    let mut names: Vec<&str> = Vec::new();
    for l in locs {
        let Some(sym) = syms.get(l) else { continue };
        let (Some(name), Some(off)) = (&sym.function, sym.function_offset) else {
            continue;
        };
        if !names_match(name, function) {
            if names.len() < 2000 {
                names.push(name);
            }
            continue;
        }
        if !matches!(
            modules.get(l.module).kind,
            ModuleKind::File | ModuleKind::Guest
        ) {
            continue;
        }
        let entry = found
            .entry((l.module, l.offset - off))
            .or_insert((sym.function_size, 0));
        entry.1 = entry.1.max(off);
    }
    if found.is_empty() {
        return Err(AnnotateError::NotFound {
            function: function.to_owned(),
            hint: near_names(&names, function),
        });
    }
    let samples_in = |module: ModuleId, start: u64, end: u64| {
        profile
            .ips
            .iter()
            .filter(|(l, _)| l.module == module && (start..end).contains(&l.offset))
            .fold((0, 0), |(s, w), (_, c)| (s + c.samples, w + c.weight))
    };
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .map(|((module, start), (size, last))| {
            let (size, estimated) = match size {
                Some(s) if s > 0 => (s.min(MAX_FUNCTION_BYTES), false),
                _ => ((last + UNSIZED_TAIL).min(MAX_FUNCTION_BYTES), true),
            };
            let (samples, weight) = samples_in(module, start, start + size);
            Candidate {
                module,
                start,
                size,
                estimated,
                samples,
                weight,
            }
        })
        .collect();
    // Most samples first, then the module path, for a stable choice.
    candidates.sort_by(|a, b| {
        b.samples
            .cmp(&a.samples)
            .then_with(|| modules.get(a.module).path.cmp(&modules.get(b.module).path))
    });
    let Candidate {
        module,
        start,
        size,
        estimated: size_estimated,
        samples,
        weight,
    } = candidates[0];
    let others = candidates[1..]
        .iter()
        .map(|c| (modules.get(c.module).path.clone(), c.samples))
        .collect();
    let path = modules.get(module).path.clone();
    let mut reader = CodeReader::default();
    let code =
        reader
            .bytes(modules, module, start, size)
            .ok_or_else(|| AnnotateError::Unreadable {
                function: function.to_owned(),
                path: path.clone(),
            })?;
    let end = start + code.len() as u64;

    let mut decoder = Decoder::with_ip(64, &code, start, DecoderOptions::NONE);
    let mut formatter = GasFormatter::new();
    let mut insns: Vec<(Instruction, String)> = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            // Padding or data after the code: stop at the first byte that is no
            // instruction.
            break;
        }
        let mut text = String::new();
        formatter.format(&insn, &mut text);
        insns.push((insn, text));
    }
    let index_of = |off: u64| insns.binary_search_by_key(&off, |(i, _)| i.ip()).ok();

    // Executions: +count over each fall-through range's instructions (a difference array
    // over instruction indices).
    let mut delta = vec![0i64; insns.len() + 1];
    // Ranges that end at an instruction: the taken executions of a branch that the
    // ranges saw (its other executions in them fell through).
    let mut ends: HashMap<u64, u64> = HashMap::new();
    for ((a, b), &count) in &profile.ranges {
        if a.module != module || b.module != module || b.offset < start || a.offset >= end {
            continue;
        }
        let first = insns.partition_point(|(i, _)| i.ip() < a.offset);
        let last = insns.partition_point(|(i, _)| i.ip() <= b.offset);
        if first < last {
            delta[first] += count as i64;
            delta[last] -= count as i64;
            *ends.entry(b.offset).or_default() += count;
        }
    }
    let mut taken: HashMap<u64, u64> = HashMap::new();
    let mut entered: HashMap<u64, u64> = HashMap::new();
    for ((from, to), e) in &profile.edges {
        if from.module == module && (start..end).contains(&from.offset) {
            *taken.entry(from.offset).or_default() += e.count;
        }
        if to.module == module && (start..end).contains(&to.offset) {
            *entered.entry(to.offset).or_default() += e.count;
        }
    }
    let offsets: Vec<u64> = insns.iter().map(|(i, _)| i.ip()).collect();
    let lines = source.symbolize(modules.get(module), &offsets);
    // Names of the direct branch targets outside the function (calls, tail jumps).
    let outside: Vec<u64> = insns
        .iter()
        .filter_map(|(i, _)| near_target(i))
        .filter(|t| !(start..end).contains(t))
        .collect();
    let target_names: HashMap<u64, String> = outside
        .iter()
        .copied()
        .zip(source.symbolize_functions(modules.get(module), &outside))
        .filter_map(|(t, sym)| {
            let name = sym.function?;
            Some(match sym.function_offset {
                Some(0) | None => (t, name),
                Some(off) => (t, format!("{name}+{off:#x}")),
            })
        })
        .collect();

    let mut out = Vec::with_capacity(insns.len());
    let mut running = 0i64;
    let mut executions = 0u64;
    for (k, (insn, text)) in insns.iter().enumerate() {
        running += delta[k];
        let exec = running.max(0) as u64;
        executions += exec;
        let ip = insn.ip();
        let count = profile.ips.get(&Loc { module, offset: ip });
        let flow = insn.flow_control();
        let is_branch = !matches!(
            flow,
            FlowControl::Next | FlowControl::Exception | FlowControl::Interrupt
        );
        let took = taken.get(&ip).copied();
        let conditional = flow == FlowControl::ConditionalBranch;
        let text = match near_target(insn) {
            Some(t) if (start..end).contains(&t) && index_of(t).is_some() => {
                let mnemonic = text.split_whitespace().next().unwrap_or(text);
                format!("{mnemonic} +{:#x}", t - start)
            }
            Some(t) => match target_names.get(&t) {
                Some(name) => format!("{text} <{name}>"),
                None => text.clone(),
            },
            None => text.clone(),
        };
        out.push(AnnotatedInsn {
            offset: ip - start,
            text,
            samples: count.map_or(0, |c| c.samples),
            weight: count.map_or(0, |c| c.weight),
            exec,
            taken: (is_branch && (took.is_some() || exec > 0)).then(|| took.unwrap_or(0)),
            // (Not `exec - taken`: a stack's oldest entry is taken without a range before
            // it, so `taken` counts entries the ranges do not.)
            not_taken: (conditional && exec > 0)
                .then(|| exec.saturating_sub(ends.get(&ip).copied().unwrap_or(0))),
            entered: entered.get(&ip).copied().unwrap_or(0),
            file: lines.get(k).and_then(|s| s.file.clone()),
            line: lines.get(k).and_then(|s| s.line),
        });
    }
    Ok(Annotation {
        function: function.to_owned(),
        module: path,
        start,
        size: code.len() as u64,
        size_estimated,
        samples,
        weight,
        total_samples: profile.totals.samples,
        executions,
        branch_entries: profile.totals.branch_entries,
        others,
        instructions: out,
    })
}

/// The target of a direct near branch.
fn near_target(insn: &Instruction) -> Option<u64> {
    match insn.flow_control() {
        FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch | FlowControl::Call => {
            let t = insn.near_branch_target();
            (t != 0).then_some(t)
        }
        _ => None,
    }
}

/// `name` is `wanted`, or `wanted` is `name` without its parameter list (C++), or
/// `name` without a Rust hash suffix.
fn names_match(name: &str, wanted: &str) -> bool {
    if name == wanted {
        return true;
    }
    let bare = name.split_once('(').map_or(name, |(head, _)| head);
    if bare == wanted {
        return true;
    }
    name.rsplit_once("::h")
        .is_some_and(|(head, hash)| head == wanted && hash.len() == 16)
}

/// " (did you mean: a, b?)" for names that contain what was asked for.
fn near_names(names: &[&str], wanted: &str) -> String {
    let lower = wanted.to_lowercase();
    let mut near: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.to_lowercase().contains(&lower))
        .collect();
    near.sort_unstable();
    near.dedup();
    if near.is_empty() {
        return String::new();
    }
    near.truncate(5);
    format!(" (did you mean: {}?)", near.join(", "))
}

/// The annotation as text: a header, then one row per instruction, with each new source
/// line (and its text, when the source file is readable) above the first instruction of it.
pub fn render_text(a: &Annotation) -> String {
    let mut o = String::new();
    let short = a.module.rsplit('/').next().unwrap_or(&a.module);
    let pct = |n: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            100.0 * n as f64 / of as f64
        }
    };
    let _ = writeln!(
        o,
        "# lbrprof annotate: {} in {short} (file offset {:#x}, {} bytes{})",
        a.function,
        a.start,
        a.size,
        if a.size_estimated {
            ", no symbol size: up to the last recorded instruction"
        } else {
            ""
        }
    );
    let branches = if a.branch_entries == 0 {
        "no branch stacks in the recording: no Exec, Taken or Not taken".to_owned()
    } else {
        format!(
            "branch stacks: {} executions of its instructions in fall-through ranges",
            a.executions
        )
    };
    let _ = writeln!(
        o,
        "# samples: {} ({:.2}% of {}); {branches}",
        a.samples,
        pct(a.samples, a.total_samples),
        a.total_samples,
    );
    for (path, n) in &a.others {
        let _ = writeln!(o, "# also in {path}: {n} samples (--dso to choose)");
    }
    let _ = writeln!(o, "#");
    let _ = writeln!(
        o,
        "#  Samples   Share       Exec      Taken  Not taken    Offset  Instruction"
    );
    let mut sources = SourceFiles::default();
    let mut last_line: Option<(Option<&str>, Option<u32>)> = None;
    for i in &a.instructions {
        let here = (i.file.as_deref(), i.line);
        if i.line.is_some() && last_line != Some(here) {
            let file = i.file.as_deref().unwrap_or("?");
            let line = i.line.unwrap_or(0);
            let base = file.rsplit('/').next().unwrap_or(file);
            match sources.line(file, line) {
                Some(text) => {
                    let _ = writeln!(o, "{:>49}{base}:{line}  {}", "", text.trim_end());
                }
                None => {
                    let _ = writeln!(o, "{:>49}{base}:{line}", "");
                }
            }
        }
        last_line = Some(here);
        let share = if i.samples > 0 {
            format!("{:6.2}%", pct(i.samples, a.samples))
        } else {
            String::new()
        };
        let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
        let exec = if i.exec > 0 {
            i.exec.to_string()
        } else {
            String::new()
        };
        let mark = if i.entered > 0 { ">" } else { " " };
        let _ = writeln!(
            o,
            "{:>10} {:>7} {:>10} {:>10} {:>10} {mark}{:>8}  {}",
            if i.samples > 0 {
                i.samples.to_string()
            } else {
                String::new()
            },
            share,
            exec,
            num(i.taken),
            num(i.not_taken),
            format!("+{:#x}", i.offset),
            i.text
        );
    }
    o
}

/// Source files read once each, for the source lines shown above their code.
#[derive(Default)]
struct SourceFiles {
    files: HashMap<String, Option<Vec<String>>>,
}

impl SourceFiles {
    fn line(&mut self, path: &str, line: u32) -> Option<&str> {
        let lines = self
            .files
            .entry(path.to_owned())
            .or_insert_with(|| {
                std::fs::read_to_string(path)
                    .ok()
                    .map(|t| t.lines().map(str::to_owned).collect())
            })
            .as_ref()?;
        lines
            .get((line as usize).checked_sub(1)?)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_plain_cpp_and_rust_hash() {
        assert!(names_match("hot_loop", "hot_loop"));
        assert!(names_match("ns::f(int, char)", "ns::f"));
        assert!(names_match(
            "core::fmt::write::h0123456789abcdef",
            "core::fmt::write"
        ));
        assert!(!names_match("hot_loop2", "hot_loop"));
        assert!(!names_match("a::hb", "a"));
    }

    #[test]
    fn near_names_suggest_what_contains_the_request() {
        let names = ["hot_loop", "main", "do_hot_work", "hot_loop"];
        assert_eq!(
            near_names(&names, "HOT"),
            " (did you mean: do_hot_work, hot_loop?)"
        );
        assert_eq!(near_names(&names, "zzz"), "");
    }
}
