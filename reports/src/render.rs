//! Rendering a [`Report`] as text, Markdown or JSON, and a [`Profile`]'s stacks as folded
//! lines. Renderers only format: sorting and truncation happen on the [`Report`].

use std::io::{self, Write};

use serde::Serialize;

use crate::aggregate::{Count, FastMap, Profile};
use crate::loc::Loc;
use crate::report::{BranchRow, FunctionRow, Report, Side};
use crate::symbols::SymbolTable;

/// The JSON schema identifier and version (see the crate docs for the schema).
pub const JSON_SCHEMA: &str = "lbrprof-report";
pub const JSON_SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct JsonReport<'a> {
    schema: &'static str,
    version: u32,
    #[serde(flatten)]
    report: &'a Report,
}

/// Writes the report as one JSON document (schema `lbrprof-report`, version 1).
pub fn json(report: &Report, mut w: impl Write) -> io::Result<()> {
    serde_json::to_writer_pretty(
        &mut w,
        &JsonReport {
            schema: JSON_SCHEMA,
            version: JSON_SCHEMA_VERSION,
            report,
        },
    )?;
    writeln!(w)
}

fn duration(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

/// The short name of a branch kind, as the text report's Type column prints it.
pub fn kind_name(k: lbrprof_data::model::BranchKind) -> &'static str {
    use lbrprof_data::model::BranchKind::*;
    match k {
        Unknown => "-",
        Cond => "cond",
        Uncond => "uncond",
        IndJump => "ind_jmp",
        Call => "call",
        IndCall => "ind_call",
        Ret => "ret",
        Syscall => "syscall",
        Sysret => "sysret",
        Irq => "irq",
        Exception => "exception",
        Eret => "eret",
        Far => "far",
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}%"))
}

fn opt_f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
}

fn header_lines(r: &Report) -> Vec<String> {
    let m = &r.meta;
    let mut v = vec![
        format!("source:   {} ({})", m.source, m.path),
        format!("event:    {}", m.event),
        format!(
            "samples:  {} (event count {}), guest snapshots {}, lost {}, throttled {}{}",
            m.samples,
            m.weight,
            m.snapshots,
            m.lost,
            m.throttled,
            if m.filtered_out > 0 {
                format!(", {} filtered out", m.filtered_out)
            } else {
                String::new()
            }
        ),
        format!("duration: {}", duration(m.duration_ns)),
        format!(
            "branches: {}, depth {}, {} entries",
            m.branch_source, m.branch_depth, m.branch_entries
        ),
    ];
    if m.frozen > 0 {
        v.push(format!(
            "frozen:   {} branches retired while the LBR was frozen",
            m.frozen
        ));
    }
    for n in &m.notes {
        v.push(format!("note:     {n}"));
    }
    for u in &m.unnamed {
        v.push(format!(
            "unnamed:  {} samples ({:.1}%) in {} code with no function name: {}",
            u.samples,
            u.pct,
            u.module,
            u.hint()
        ));
    }
    for w in &m.warnings {
        v.push(format!("warning:  {w}"));
    }
    v
}

/// The function tables with their titles: one over host samples, and where the recording
/// has guest snapshots, one over those, each titled with its own denominator (a host
/// sample and a guest snapshot are different measurements, so their shares never mix).
fn function_tables(r: &Report) -> Vec<(String, Vec<&FunctionRow>)> {
    let (host, guest): (Vec<&FunctionRow>, Vec<&FunctionRow>) =
        r.functions.iter().partition(|f| f.side == Side::Host);
    if guest.is_empty() && r.meta.snapshots == 0 {
        return vec![("Hot functions (share of the event count)".to_owned(), host)];
    }
    vec![
        (
            format!(
                "Hot host functions (share of the host event count, {} samples)",
                r.meta.samples
            ),
            host,
        ),
        (
            format!(
                "Hot guest functions (share of {} guest LBR snapshots, by the guest IP and \
                 stack at each snapshot)",
                r.meta.snapshots
            ),
            guest,
        ),
    ]
}

/// perf's grouped table (`--sort comm,dso,...`), with a Children column when the rows
/// are ordered by it.
fn hist_text(h: &crate::hist::Hist, mut w: impl Write) -> io::Result<()> {
    let widths: Vec<usize> = h
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            h.rows
                .iter()
                .map(|r| r.keys[i].chars().count())
                .chain([k.heading().len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let headings: Vec<String> = h
        .keys
        .iter()
        .zip(&widths)
        .map(|(k, &n)| format!("{:<n$}", k.heading()))
        .collect();
    writeln!(w, "#")?;
    let pcts = if h.children {
        "# Children      Self"
    } else {
        "# Overhead"
    };
    writeln!(w, "{pcts}  {}", headings.join("  ").trim_end())?;
    writeln!(w, "#")?;
    for r in &h.rows {
        let cells: Vec<String> = r
            .keys
            .iter()
            .zip(&widths)
            .map(|(v, &n)| format!("{v:<n$}"))
            .collect();
        let cells = cells.join("  ");
        if h.children {
            writeln!(
                w,
                "  {:7.2}%  {:7.2}%  {}",
                r.children_pct,
                r.self_pct,
                cells.trim_end()
            )?;
        } else {
            writeln!(w, "  {:7.2}%  {}", r.self_pct, cells.trim_end())?;
        }
    }
    Ok(())
}

/// The call tree, one node per line, indented by depth. Caller trees show each node's
/// self share too; in a callee tree the roots' totals are the self shares.
fn tree_text(t: &crate::tree::CallTree, mut w: impl Write) -> io::Result<()> {
    fn nodes(
        ns: &[crate::tree::Node],
        depth: usize,
        with_self: bool,
        w: &mut impl Write,
    ) -> io::Result<()> {
        for n in ns {
            let module = if n.module.starts_with('[') {
                n.module.clone()
            } else {
                format!("[{}]", n.module)
            };
            let self_col = if with_self {
                format!("{:7.2}%  ", n.self_pct)
            } else {
                String::new()
            };
            writeln!(
                w,
                "  {:7.2}%  {self_col}{:indent$}{} {module}",
                n.total_pct,
                "",
                n.function,
                indent = depth * 2
            )?;
            nodes(&n.children, depth + 1, with_self, w)?;
        }
        Ok(())
    }
    let caller = t.order == crate::tree::Order::Caller;
    writeln!(w, "#")?;
    if caller {
        writeln!(
            w,
            "# Call tree (caller: outermost callers first, callees below; share of the event count)"
        )?;
        writeln!(w, "#")?;
        writeln!(w, "#    Total      Self  Function [module]")?;
    } else {
        writeln!(
            w,
            "# Call tree (callee: sampled functions first, their callers below; share of the event count)"
        )?;
        writeln!(w, "#")?;
        writeln!(w, "#    Total  Function [module]")?;
    }
    nodes(&t.roots, 0, caller, &mut w)
}

/// Plain text tables, `perf report --stdio` style.
pub fn text(r: &Report, mut w: impl Write) -> io::Result<()> {
    writeln!(w, "# lbrprof report")?;
    for l in header_lines(r) {
        writeln!(w, "# {l}")?;
    }
    if r.hist.is_some() || r.guest_hist.is_some() || r.call_tree.is_some() {
        if let Some(h) = &r.hist {
            hist_text(h, &mut w)?;
        }
        if let Some(h) = &r.guest_hist {
            writeln!(w, "#")?;
            writeln!(
                w,
                "# Guest (share of {} guest LBR snapshots, by the guest process and the guest IP and stack at each)",
                r.meta.snapshots
            )?;
            hist_text(h, &mut w)?;
        }
        if let Some(t) = &r.call_tree {
            tree_text(t, &mut w)?;
        }
        return Ok(());
    }
    if !r.processes.is_empty() {
        writeln!(w, "#")?;
        writeln!(w, "# Processes (share of the event count)")?;
        writeln!(w, "#")?;
        writeln!(w, "#   Share    Samples  Pid      Command")?;
        for p in &r.processes {
            writeln!(
                w,
                "  {:6.2}%  {:9}  {:<7}  {}",
                p.pct, p.samples, p.pid, p.command
            )?;
        }
    }
    for (title, rows) in function_tables(r) {
        writeln!(w, "#")?;
        writeln!(w, "# {title}")?;
        writeln!(w, "#")?;
        writeln!(
            w,
            "#    Self    Total    Samples  Module                Function"
        )?;
        for f in rows {
            writeln!(
                w,
                "  {:6.2}%  {:6.2}%  {:9}  {:<20}  {}",
                f.self_pct, f.total_pct, f.self_samples, f.module, f.function
            )?;
        }
    }
    if !r.branches.is_empty() {
        writeln!(w, "#")?;
        writeln!(w, "# Hot branches (share of all branch entries)")?;
        writeln!(w, "#")?;
        writeln!(
            w,
            "#   Share      Count  Type       Mispred   Cycles  From -> To"
        )?;
        for b in &r.branches {
            writeln!(
                w,
                "  {:6.2}%  {:9}  {:<9}  {:>7}  {:>7}  {} -> {}",
                b.pct,
                b.count,
                kind_name(b.kind),
                opt_pct(b.mispredict_pct),
                opt_f(b.avg_cycles),
                b.from,
                b.to
            )?;
        }
    }
    if !r.ranges.is_empty() {
        writeln!(w, "#")?;
        writeln!(
            w,
            "# Hot fall-through ranges (instructions: {})",
            r.meta.range_method
        )?;
        writeln!(w, "#")?;
        writeln!(w, "#   Share      Count   Insns      Executed  Range")?;
        for x in &r.ranges {
            writeln!(
                w,
                "  {:6.2}%  {:9}  {:>6}{}  {:12.0}  [{}, {}]",
                x.pct,
                x.count,
                x.instructions,
                if x.estimated { "~" } else { " " },
                x.executed,
                x.start,
                x.end
            )?;
        }
    }
    if let Some(vm) = &r.vm {
        crate::vm::text(vm, &mut w)?;
    }
    Ok(())
}

/// perf's grouped table as a Markdown table.
fn hist_markdown(h: &crate::hist::Hist, mut w: impl Write) -> io::Result<()> {
    let keys: Vec<&str> = h.keys.iter().map(|k| k.heading()).collect();
    writeln!(w)?;
    if h.children {
        writeln!(w, "| Children | Self | {} |", keys.join(" | "))?;
        writeln!(w, "|---:|---:|{}", "---|".repeat(keys.len()))?;
    } else {
        writeln!(w, "| Overhead | {} |", keys.join(" | "))?;
        writeln!(w, "|---:|{}", "---|".repeat(keys.len()))?;
    }
    for r in &h.rows {
        let cells: Vec<String> = r
            .keys
            .iter()
            .map(|k| format!("`{}`", md_escape(k)))
            .collect();
        if h.children {
            writeln!(
                w,
                "| {:.2}% | {:.2}% | {} |",
                r.children_pct,
                r.self_pct,
                cells.join(" | ")
            )?;
        } else {
            writeln!(w, "| {:.2}% | {} |", r.self_pct, cells.join(" | "))?;
        }
    }
    Ok(())
}

/// The call tree as a nested Markdown list.
fn tree_markdown(t: &crate::tree::CallTree, mut w: impl Write) -> io::Result<()> {
    fn nodes(ns: &[crate::tree::Node], depth: usize, w: &mut impl Write) -> io::Result<()> {
        for n in ns {
            writeln!(
                w,
                "{:indent$}- {:.2}% `{}` ({})",
                "",
                n.total_pct,
                md_escape(&n.function),
                md_escape(&n.module),
                indent = depth * 2
            )?;
            nodes(&n.children, depth + 1, w)?;
        }
        Ok(())
    }
    let order = match t.order {
        crate::tree::Order::Caller => "caller",
        crate::tree::Order::Callee => "callee",
    };
    writeln!(w, "\n### Call tree ({order}, share of the event count)\n")?;
    nodes(&t.roots, 0, &mut w)
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_branch(b: &BranchRow) -> String {
    format!(
        "| {:.2}% | {} | {} | {} | {} | `{}` | `{}` |",
        b.pct,
        b.count,
        kind_name(b.kind),
        opt_pct(b.mispredict_pct),
        opt_f(b.avg_cycles),
        md_escape(&b.from.to_string()),
        md_escape(&b.to.to_string())
    )
}

/// GitHub-flavoured Markdown (for CI summaries).
pub fn markdown(r: &Report, mut w: impl Write) -> io::Result<()> {
    writeln!(w, "## lbrprof report\n")?;
    for l in header_lines(r) {
        writeln!(w, "- {}", md_escape(&l))?;
    }
    if r.hist.is_some() || r.guest_hist.is_some() || r.call_tree.is_some() {
        if let Some(h) = &r.hist {
            hist_markdown(h, &mut w)?;
        }
        if let Some(h) = &r.guest_hist {
            writeln!(
                w,
                "\n### Guest (share of {} guest LBR snapshots)",
                r.meta.snapshots
            )?;
            hist_markdown(h, &mut w)?;
        }
        if let Some(t) = &r.call_tree {
            tree_markdown(t, &mut w)?;
        }
        return Ok(());
    }
    if !r.processes.is_empty() {
        writeln!(w, "\n### Processes\n")?;
        writeln!(w, "| Share | Samples | Pid | Command |")?;
        writeln!(w, "|---:|---:|---:|---|")?;
        for p in &r.processes {
            writeln!(
                w,
                "| {:.2}% | {} | {} | `{}` |",
                p.pct,
                p.samples,
                p.pid,
                md_escape(&p.command)
            )?;
        }
    }
    for (title, rows) in function_tables(r) {
        writeln!(w, "\n### {title}\n")?;
        writeln!(w, "| Self | Total | Samples | Module | Function |")?;
        writeln!(w, "|---:|---:|---:|---|---|")?;
        for f in rows {
            writeln!(
                w,
                "| {:.2}% | {:.2}% | {} | {} | `{}` |",
                f.self_pct,
                f.total_pct,
                f.self_samples,
                md_escape(&f.module),
                md_escape(&f.function)
            )?;
        }
    }
    if !r.branches.is_empty() {
        writeln!(w, "\n### Hot branches\n")?;
        writeln!(
            w,
            "| Share | Count | Type | Mispredicted | Avg cycles | From | To |"
        )?;
        writeln!(w, "|---:|---:|---|---:|---:|---|---|")?;
        for b in &r.branches {
            writeln!(w, "{}", md_branch(b))?;
        }
    }
    if !r.ranges.is_empty() {
        writeln!(w, "\n### Hot fall-through ranges\n")?;
        writeln!(w, "Instructions: {}.\n", r.meta.range_method)?;
        writeln!(
            w,
            "| Share | Count | Instructions | Executed | Start | End |"
        )?;
        writeln!(w, "|---:|---:|---:|---:|---|---|")?;
        for x in &r.ranges {
            writeln!(
                w,
                "| {:.2}% | {} | {}{} | {:.0} | `{}` | `{}` |",
                x.pct,
                x.count,
                if x.estimated { "~" } else { "" },
                x.instructions,
                x.executed,
                md_escape(&x.start.to_string()),
                md_escape(&x.end.to_string())
            )?;
        }
    }
    if let Some(vm) = &r.vm {
        writeln!(w, "\n### Host and guest\n")?;
        writeln!(w, "```text")?;
        crate::vm::text(vm, &mut w)?;
        writeln!(w, "```")?;
    }
    Ok(())
}

/// Which stacks to fold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackSource {
    /// Sampled call chains (and guest frame-pointer stacks).
    CallChains,
    /// Stacks rebuilt from LBR call-stack data.
    Lbr,
}

/// Folded stack lines (`root;...;leaf count`, counts in samples), sorted, as
/// inferno/FlameGraph read them. Each line's frames are function names.
pub fn folded_lines(profile: &Profile, syms: &SymbolTable, source: StackSource) -> Vec<String> {
    let stacks: &FastMap<Vec<Loc>, Count> = match source {
        StackSource::CallChains => &profile.stacks,
        StackSource::Lbr => &profile.lbr_stacks,
    };
    let modules = &profile.spaces.modules;
    let mut merged: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut line = String::new();
    for (stack, c) in stacks {
        line.clear();
        for (i, l) in stack.iter().rev().enumerate() {
            if i > 0 {
                line.push(';');
            }
            let name = syms.function_name(modules, l);
            line.push_str(&name.replace([';', '\n'], ":"));
        }
        *merged.entry(line.clone()).or_default() += c.samples;
    }
    merged
        .into_iter()
        .map(|(stack, n)| format!("{stack} {n}"))
        .collect()
}

/// Writes folded stack lines.
pub fn folded(
    profile: &Profile,
    syms: &SymbolTable,
    source: StackSource,
    mut w: impl Write,
) -> io::Result<()> {
    for l in folded_lines(profile, syms, source) {
        writeln!(w, "{l}")?;
    }
    Ok(())
}
