//! Stage three: the named, sorted tables a user reads ([`Report`]), built from a
//! [`Profile`] and its [`SymbolTable`].
//!
//! [`Report`] keeps complete tables (every function, edge and range); `limit` and
//! `percent_limit` apply when rendering. `functions` and `branches` are the diff-friendly
//! aggregate that `lbrprof diff` compares: per-function self/total counts keyed by
//! `(module, function)`, per-edge counts keyed by the two rendered places.

use std::collections::HashMap;

use lbrprof_data::model::{BranchKind, Header, Target};
use serde::{Deserialize, Serialize};

use crate::aggregate::Profile;
use crate::decode::{AVG_INSN_BYTES, CodeReader};
use crate::loc::{Loc, ModuleKind, ModuleTable};
use crate::share::pct;
use crate::symbols::SymbolTable;

/// How rows are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    /// Functions by self share, branches and ranges by count (the default).
    #[default]
    #[serde(rename = "self")]
    SelfShare,
    /// Functions by total (children) share; branches and ranges by count.
    Total,
    /// Functions by name, branches and ranges by source place.
    Name,
    /// Branches by mispredictions (functions by self share).
    Mispred,
    /// Branches by average cycles (functions by self share).
    Cycles,
}

/// A code location with its names, as rendered in the branch and range tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Place {
    /// Short module name (file name, `[kernel.kallsyms]`, `[unknown]`).
    pub module: String,
    /// File offset in the module (or the address, for the kernel and unknown code).
    pub offset: u64,
    pub function: Option<String>,
    pub function_offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.function {
            Some(func) => write!(f, "{func}+{:#x}", self.function_offset.unwrap_or(0))?,
            None if self.module.starts_with('[') => write!(f, "{:#x}", self.offset)?,
            None => write!(f, "{}+{:#x}", self.module, self.offset)?,
        }
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            let short = file.rsplit('/').next().unwrap_or(file);
            write!(f, " ({short}:{line})")?;
        }
        Ok(())
    }
}

pub use crate::loc::{Side, stack_side};

/// Self and total (children) counts of one function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionRow {
    pub function: String,
    pub module: String,
    /// What the counts are of; the shares are of that side's total only.
    #[serde(default)]
    pub side: Side,
    pub self_samples: u64,
    pub self_weight: u64,
    pub total_samples: u64,
    pub total_weight: u64,
    /// `self_weight` as a percentage of its side's weight.
    pub self_pct: f64,
    /// `total_weight` as a percentage of its side's weight.
    pub total_pct: f64,
}

/// The samples of one process under one name (a process that execs has a row per
/// program).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    /// The process's command name when sampled (empty when the recording has none).
    pub command: String,
    pub samples: u64,
    pub weight: u64,
    /// `weight` as a percentage of all weight.
    pub pct: f64,
}

/// One taken-branch edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BranchRow {
    pub from: Place,
    pub to: Place,
    pub count: u64,
    /// `count` as a percentage of all branch entries.
    pub pct: f64,
    pub kind: BranchKind,
    pub mispredicts: u64,
    /// Mispredicted share, in percent, of the entries that say whether they were predicted;
    /// `None` when none does (the LBR gives no prediction information).
    pub mispredict_pct: Option<f64>,
    /// Average cycles of the entries that carry a cycle count.
    pub avg_cycles: Option<f64>,
    pub in_tx: u64,
    pub aborts: u64,
    /// The locations of `from` and `to` (for [`Report::refresh_places`]; not serialized).
    #[serde(skip)]
    pub locs: Option<(Loc, Loc)>,
}

/// One fall-through range (straight-line code between two taken branches).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeRow {
    pub start: Place,
    pub end: Place,
    pub count: u64,
    /// `count` as a percentage of all ranges.
    pub pct: f64,
    pub bytes: u64,
    /// Instructions in one pass through the range.
    pub instructions: f64,
    /// `true` when `instructions` is `bytes / 4` rather than decoded.
    pub estimated: bool,
    /// `count * instructions`.
    pub executed: f64,
    /// The locations of `start` and `end` (for [`Report::refresh_places`]; not serialized).
    #[serde(skip)]
    pub locs: Option<(Loc, Loc)>,
}

/// The report header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// `lbrprof.data` or `perf.data`.
    pub source: String,
    pub path: String,
    pub event: String,
    pub samples: u64,
    /// The host samples' event count: the denominator of host function shares.
    pub weight: u64,
    pub snapshots: u64,
    /// The guest snapshots' weight in the stack tables: the denominator of guest function
    /// shares (0 without snapshots).
    #[serde(default)]
    pub guest_weight: u64,
    pub lost: u64,
    pub throttled: u64,
    pub frozen: u64,
    pub filtered_out: u64,
    pub duration_ns: u64,
    /// `host LBR (perf branch stacks)`, `guest LBR (snapshots)`, both, or `none`.
    pub branch_source: String,
    pub branch_depth: u64,
    pub branch_entries: u64,
    /// How fall-through instruction counts were obtained.
    pub range_method: String,
    /// What the recorder noted about the recording (e.g. which event it chose and why).
    pub notes: Vec<String>,
    /// Problems found while reading or symbolizing.
    pub warnings: Vec<String>,
    /// Samples in code no symbol names (functions known only by their extent, shown as
    /// `module+0x<start>`, and code in no known function), per module, most first.
    #[serde(default)]
    pub unnamed: Vec<UnnamedCode>,
}

/// Samples that fell in one module's code with no function name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnnamedCode {
    /// The module's path.
    pub module: String,
    pub samples: u64,
    /// Share of all samples.
    pub pct: f64,
    /// Where `--debug-dir DIR` would find the module's debug file: `.build-id/xx/rest.debug`
    /// under DIR (from the recorded build-id).
    pub debug_file: Option<String>,
    /// The distribution package that ships the module, if known (its debug package
    /// names the code); filled in by the caller, which may ask the package manager.
    pub package: Option<String>,
    /// The module file is not where it was recorded (nothing could be read from it).
    #[serde(default)]
    pub missing: bool,
}

impl UnnamedCode {
    /// What would name the code, for the user.
    pub fn hint(&self) -> String {
        if self.missing {
            return "the file is not here: pass --symfs DIR with a copy of it".to_owned();
        }
        let install = match &self.package {
            Some(p) => format!("install {p}-dbgsym"),
            None => "install its debug package".to_owned(),
        };
        match &self.debug_file {
            Some(f) => format!("{install}, or pass --debug-dir DIR with DIR/{f}"),
            None => format!("{install}, or pass --debug-dir DIR with its debug file"),
        }
    }
}

/// Samples whose instruction is in a function with no name, per file-backed module.
fn unnamed_code(profile: &Profile, syms: &SymbolTable) -> Vec<UnnamedCode> {
    let modules = &profile.spaces.modules;
    let mut per_module: HashMap<crate::loc::ModuleId, u64> = HashMap::new();
    for (l, c) in &profile.ips {
        let m = modules.get(l.module);
        if !matches!(m.kind, ModuleKind::File | ModuleKind::Guest)
            || l.module == ModuleTable::GUEST_ROOT
        {
            continue;
        }
        let named = syms
            .get(l)
            .is_some_and(|s| s.function.is_some() && !s.unnamed);
        if !named {
            *per_module.entry(l.module).or_default() += c.samples;
        }
    }
    let mut out: Vec<UnnamedCode> = per_module
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, samples)| {
            let m = modules.get(id);
            let debug_file = m.build_id.as_deref().filter(|id| id.len() >= 2).map(|id| {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                format!(".build-id/{}/{}.debug", &hex[..2], &hex[2..])
            });
            UnnamedCode {
                module: m.path.clone(),
                samples,
                pct: pct(samples, profile.totals.samples),
                debug_file,
                package: None,
                missing: !std::path::Path::new(&m.path).is_file(),
            }
        })
        .collect();
    out.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.module.cmp(&b.module)));
    out
}

/// The complete, named and sorted report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub meta: Meta,
    /// Where each process spent the samples, when they come from more than one process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessRow>,
    pub functions: Vec<FunctionRow>,
    pub branches: Vec<BranchRow>,
    pub ranges: Vec<RangeRow>,
    /// Host and guest of a `record --vm` recording ([`crate::vm`]); `null` otherwise.
    #[serde(default)]
    pub vm: Option<crate::vm::VmReport>,
    /// perf's grouped table (`--sort comm,dso,...`), when asked for: the text report then
    /// shows it instead of the function, branch and range tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist: Option<crate::hist::Hist>,
    /// The same table for the guest snapshots of a `record --vm` recording, by guest
    /// process and guest code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_hist: Option<crate::hist::Hist>,
    /// The call tree (`-g caller|callee`), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_tree: Option<crate::tree::CallTree>,
}

/// The short module name shown in tables.
fn module_name(modules: &ModuleTable, id: crate::loc::ModuleId) -> String {
    if id == ModuleTable::GUEST_ROOT {
        "[guest]".to_owned()
    } else {
        modules.get(id).short_name().to_owned()
    }
}

pub(crate) fn place(modules: &ModuleTable, syms: &SymbolTable, l: &Loc) -> Place {
    let s = syms.get(l);
    Place {
        module: module_name(modules, l.module),
        offset: l.offset,
        function: s.and_then(|s| s.function.clone()),
        function_offset: s.and_then(|s| s.function_offset),
        file: s.and_then(|s| s.file.clone()),
        line: s.and_then(|s| s.line),
    }
}

/// Where the input came from, for the header.
pub struct Source<'a> {
    pub format: &'a str,
    pub path: &'a str,
    pub header: &'a Header,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Self and total counts per function (side, module id and name) of a stack table:
/// `[self samples, self weight, total samples, total weight]`, self from the leaf frame,
/// total once per function per stack. `stacks` is `profile.stacks` or one of its per-run
/// tables (`profile.run_stacks`).
pub fn function_counts(
    profile: &Profile,
    stacks: &crate::aggregate::FastMap<Vec<Loc>, crate::aggregate::Count>,
    syms: &SymbolTable,
) -> HashMap<(Side, u32, String), [u64; 4]> {
    let modules = &profile.spaces.modules;
    // Each location is named once: a function id per location, one per (module, name).
    let mut id_of_loc: crate::hash::FastMap<Loc, usize> = Default::default();
    let mut id_of_name: HashMap<(u32, String), usize> = HashMap::new();
    // Per function id, its key and counts per side (host, guest; `None`: not met).
    type SideCounts = [Option<[u64; 4]>; 2];
    let mut funcs: Vec<((u32, String), SideCounts)> = Vec::new();
    let mut seen: Vec<(usize, usize)> = Vec::new();
    for (stack, c) in crate::aggregate::in_memory_order(stacks) {
        seen.clear();
        // Command root frames are not functions.
        let stack = match stack.last() {
            Some(l) if Some(l.module) == profile.comm_root_module => &stack[..stack.len() - 1],
            _ => &stack[..],
        };
        // Host and guest apart: a guest snapshot's stack ends in the guest root frame.
        let side = match stack_side(stack) {
            Side::Host => 0,
            Side::Guest => 1,
        };
        for (i, l) in stack.iter().enumerate() {
            let id = *id_of_loc.entry(*l).or_insert_with(|| {
                let key = (l.module.0, syms.function_name(modules, l));
                *id_of_name.entry(key.clone()).or_insert_with(|| {
                    funcs.push((key, [None; 2]));
                    funcs.len() - 1
                })
            });
            let e = funcs[id].1[side].get_or_insert_default();
            if i == 0 {
                e[0] += c.samples;
                e[1] += c.weight;
            }
            if !seen.contains(&(id, side)) {
                e[2] += c.samples;
                e[3] += c.weight;
                seen.push((id, side));
            }
        }
    }
    let mut out = HashMap::new();
    for ((module, name), sides) in funcs {
        for (side, counts) in [Side::Host, Side::Guest].into_iter().zip(sides) {
            if let Some(counts) = counts {
                out.insert((side, module, name.clone()), counts);
            }
        }
    }
    out
}

/// A report of `p` for tests: an empty `lbrprof.data` header of a command, no notes.
#[cfg(test)]
pub(crate) fn build_for_test(p: &Profile, syms: &SymbolTable) -> Report {
    let header = Header {
        writer: String::new(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: lbrprof_data::model::HostInfo::default(),
        sampling: lbrprof_data::model::SamplingConfig::default(),
        target: Target::Command { argv: Vec::new() },
    };
    let source = Source {
        format: "lbrprof.data",
        path: "x",
        header: &header,
        notes: Vec::new(),
        warnings: Vec::new(),
    };
    build(p, syms, source, &mut CodeReader::default())
}

/// Builds every table. `code` reads module bytes for instruction counts and branch
/// classification (pass a fresh [`CodeReader`]).
pub fn build(
    profile: &Profile,
    syms: &SymbolTable,
    source: Source<'_>,
    code: &mut CodeReader,
) -> Report {
    let modules = &profile.spaces.modules;
    let t = &profile.totals;

    let funcs = function_counts(profile, &profile.stacks, syms);
    // The guest side's denominator: the weight of the snapshots' stacks.
    let guest_weight: u64 = profile
        .stacks
        .iter()
        .filter(|(stack, _)| stack_side(stack) == Side::Guest)
        .map(|(_, c)| c.weight)
        .sum();
    let functions = funcs
        .into_iter()
        .map(|((side, m, name), [ss, sw, ts, tw])| {
            let whole = match side {
                Side::Host => t.weight,
                Side::Guest => guest_weight,
            };
            FunctionRow {
                module: module_name(modules, crate::loc::ModuleId(m)),
                function: name,
                side,
                self_samples: ss,
                self_weight: sw,
                total_samples: ts,
                total_weight: tw,
                self_pct: pct(sw, whole),
                total_pct: pct(tw, whole),
            }
        })
        .collect();

    let processes = if profile.processes.len() > 1 {
        profile
            .processes
            .iter()
            .flat_map(|(pid, names)| {
                names.iter().map(|(command, c)| ProcessRow {
                    pid: *pid,
                    command: command.clone(),
                    samples: c.samples,
                    weight: c.weight,
                    pct: pct(c.weight, t.weight),
                })
            })
            .collect()
    } else {
        Vec::new()
    };

    let branches = profile
        .edges
        .iter()
        .map(|((from, to), e)| {
            let mut kind = e.kind;
            if kind == BranchKind::Unknown
                && let Some(k) = code.classify(modules, *from)
            {
                kind = k;
            }
            BranchRow {
                from: place(modules, syms, from),
                to: place(modules, syms, to),
                count: e.count,
                pct: pct(e.count, t.branch_entries),
                kind,
                mispredicts: e.mispred,
                mispredict_pct: (e.mispred + e.predicted > 0)
                    .then(|| pct(e.mispred, e.mispred + e.predicted)),
                avg_cycles: (e.cycles_n > 0).then(|| e.cycles_sum as f64 / e.cycles_n as f64),
                in_tx: e.in_tx,
                aborts: e.abort,
                locs: Some((*from, *to)),
            }
        })
        .collect();

    let range_total: u64 = profile.ranges.values().sum();
    let mut decoded = 0usize;
    let mut estimated = 0usize;
    let ranges = profile
        .ranges
        .iter()
        .map(|((start, end), &count)| {
            let bytes = end.offset - start.offset;
            let (instructions, est) = match code.count_instructions(modules, *start, *end) {
                Some(n) => {
                    decoded += 1;
                    (n as f64, false)
                }
                None => {
                    estimated += 1;
                    ((bytes as f64 / AVG_INSN_BYTES).floor() + 1.0, true)
                }
            };
            RangeRow {
                start: place(modules, syms, start),
                end: place(modules, syms, end),
                count,
                pct: pct(count, range_total),
                bytes,
                instructions,
                estimated: est,
                executed: instructions * count as f64,
                locs: Some((*start, *end)),
            }
        })
        .collect();

    let host_lbr = t.samples_with_branches > t.snapshots;
    let branch_source = match (host_lbr, t.snapshots > 0) {
        (true, true) => "host LBR (perf branch stacks) and guest LBR (snapshots)",
        (true, false) => "host LBR (perf branch stacks)",
        (false, true) => "guest LBR (snapshots)",
        (false, false) => "none",
    };
    let range_method = match (decoded, estimated) {
        (0, 0) => "none",
        (_, 0) => "decoded (iced-x86)",
        (0, _) => "estimated (bytes / 4: module code not available)",
        _ => "decoded where the module code is available, else estimated (bytes / 4)",
    };
    let path = match &source.header.target {
        Target::PerfData { path } => path.clone(),
        _ => source.path.to_owned(),
    };
    let (notes, warnings) = (source.notes, source.warnings);
    let mut report = Report {
        meta: Meta {
            source: source.format.to_owned(),
            path,
            event: source.header.sampling.event.clone(),
            samples: t.samples,
            weight: t.weight,
            snapshots: t.snapshots,
            guest_weight,
            lost: t.lost,
            throttled: t.throttled,
            frozen: t.frozen,
            filtered_out: t.filtered_out,
            duration_ns: t.first_time_ns.map_or(0, |f| t.last_time_ns - f),
            branch_source: branch_source.to_owned(),
            branch_depth: t.max_branch_depth,
            branch_entries: t.branch_entries,
            range_method: range_method.to_owned(),
            notes,
            warnings,
            unnamed: unnamed_code(profile, syms),
        },
        processes,
        functions,
        branches,
        ranges,
        vm: None,
        hist: None,
        guest_hist: None,
        call_tree: None,
    };
    report.sort(SortKey::default());
    report
}

impl Report {
    /// The locations shown in the branch and range tables (after [`Report::truncate`]):
    /// what needs file and line (see [`SymbolTable::add_lines`]).
    pub fn shown_locs(&self) -> Vec<Loc> {
        self.branches
            .iter()
            .filter_map(|b| b.locs)
            .chain(self.ranges.iter().filter_map(|r| r.locs))
            .flat_map(|(a, b)| [a, b])
            .collect()
    }

    /// Renders the places of the branch and range tables again from `syms` (after
    /// [`SymbolTable::add_lines`]).
    pub fn refresh_places(&mut self, profile: &Profile, syms: &SymbolTable) {
        let modules = &profile.spaces.modules;
        for b in &mut self.branches {
            if let Some((from, to)) = b.locs {
                b.from = place(modules, syms, &from);
                b.to = place(modules, syms, &to);
            }
        }
        for r in &mut self.ranges {
            if let Some((start, end)) = r.locs {
                r.start = place(modules, syms, &start);
                r.end = place(modules, syms, &end);
            }
        }
    }

    /// Orders every table by `key`; ties are broken by names, so output is deterministic.
    pub fn sort(&mut self, key: SortKey) {
        let name_cmp = |a: &FunctionRow, b: &FunctionRow| {
            a.function
                .cmp(&b.function)
                .then_with(|| a.module.cmp(&b.module))
        };
        // Host rows first, then guest rows: their weights are not comparable.
        match key {
            SortKey::Total => self.functions.sort_by(|a, b| {
                a.side
                    .cmp(&b.side)
                    .then_with(|| b.total_weight.cmp(&a.total_weight))
                    .then_with(|| b.self_weight.cmp(&a.self_weight))
                    .then_with(|| name_cmp(a, b))
            }),
            SortKey::Name => self
                .functions
                .sort_by(|a, b| a.side.cmp(&b.side).then_with(|| name_cmp(a, b))),
            _ => self.functions.sort_by(|a, b| {
                a.side
                    .cmp(&b.side)
                    .then_with(|| b.self_weight.cmp(&a.self_weight))
                    .then_with(|| b.total_weight.cmp(&a.total_weight))
                    .then_with(|| name_cmp(a, b))
            }),
        }
        let place_key = |p: &Place| (p.module.clone(), p.offset);
        let edge_tie = |a: &BranchRow, b: &BranchRow| {
            place_key(&a.from)
                .cmp(&place_key(&b.from))
                .then_with(|| place_key(&a.to).cmp(&place_key(&b.to)))
        };
        match key {
            SortKey::Name => self.branches.sort_by(edge_tie),
            SortKey::Mispred => self.branches.sort_by(|a, b| {
                b.mispredicts
                    .cmp(&a.mispredicts)
                    .then_with(|| b.count.cmp(&a.count))
                    .then_with(|| edge_tie(a, b))
            }),
            SortKey::Cycles => self.branches.sort_by(|a, b| {
                b.avg_cycles
                    .unwrap_or(0.0)
                    .total_cmp(&a.avg_cycles.unwrap_or(0.0))
                    .then_with(|| b.count.cmp(&a.count))
                    .then_with(|| edge_tie(a, b))
            }),
            _ => self
                .branches
                .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| edge_tie(a, b))),
        }
        let range_tie = |a: &RangeRow, b: &RangeRow| {
            place_key(&a.start)
                .cmp(&place_key(&b.start))
                .then_with(|| place_key(&a.end).cmp(&place_key(&b.end)))
        };
        let process_tie =
            |a: &ProcessRow, b: &ProcessRow| (a.pid, &a.command).cmp(&(b.pid, &b.command));
        match key {
            SortKey::Name => self.processes.sort_by(process_tie),
            _ => self
                .processes
                .sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| process_tie(a, b))),
        }
        match key {
            SortKey::Name => self.ranges.sort_by(range_tie),
            _ => self
                .ranges
                .sort_by(|a, b| b.count.cmp(&a.count).then_with(|| range_tie(a, b))),
        }
    }

    /// Keeps at most `limit` rows per table (0 = all) and drops rows under
    /// `percent_limit` percent (self or total share for functions).
    pub fn truncate(&mut self, limit: usize, percent_limit: f64) {
        self.functions
            .retain(|f| f.self_pct.max(f.total_pct) >= percent_limit);
        self.branches.retain(|b| b.pct >= percent_limit);
        self.ranges.retain(|r| r.pct >= percent_limit);
        self.processes.retain(|p| p.pct >= percent_limit);
        if limit > 0 {
            self.processes.truncate(limit);
            // `limit` rows for each side's function table.
            let mut kept = [0usize; 2];
            self.functions.retain(|f| {
                let n = &mut kept[f.side as usize];
                *n += 1;
                *n <= limit
            });
            self.branches.truncate(limit);
            self.ranges.truncate(limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the header suggests: the package when known, the build-id path for
    /// `--debug-dir`, and `--symfs` when the file itself is missing.
    #[test]
    fn unnamed_code_hints_name_what_would_help() {
        let mut u = UnnamedCode {
            module: "/usr/lib/x86_64-linux-gnu/liblzma.so.5".into(),
            samples: 10,
            pct: 50.0,
            debug_file: Some(".build-id/d5/108d.debug".into()),
            package: Some("liblzma5".into()),
            missing: false,
        };
        assert_eq!(
            u.hint(),
            "install liblzma5-dbgsym, or pass --debug-dir DIR with DIR/.build-id/d5/108d.debug"
        );
        u.package = None;
        u.debug_file = None;
        assert_eq!(
            u.hint(),
            "install its debug package, or pass --debug-dir DIR with its debug file"
        );
        u.missing = true;
        assert!(u.hint().contains("--symfs"), "{}", u.hint());
    }
}
