//! Call trees of the host samples' stacks, by function (`report -g caller|callee`).
//!
//! * `caller` (top-down): the roots are the outermost frames (`_start`, thread entry
//!   points); a node's children are the functions it called on the sampled stacks. A
//!   node's total is the event count of the samples whose stack begins with the path to
//!   it, its self the part that was sampled in it.
//! * `callee` (bottom-up): the roots are the sampled functions (their totals are their
//!   self shares); a node's children are its callers, so each path reads from the
//!   sampled function out to the callers that led to it.
//!
//! Shares are of all host samples' event count, as perf's `--percentage absolute`.
//! Frames are merged by function name and module, not by address, so a node is one
//! function at one place in the tree; recursion gives one node per level.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Count, FastMap, Profile};
use crate::loc::{Loc, ModuleTable};
use crate::loc::{Side, stack_side};
use crate::symbols::SymbolTable;

/// Which way the tree grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// From the outermost callers down to the sampled functions.
    Caller,
    /// From the sampled functions out to their callers.
    Callee,
}

/// One function at one place of the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub function: String,
    pub module: String,
    pub total_samples: u64,
    pub total_weight: u64,
    /// `total_weight` as a percentage of [`CallTree::weight`].
    pub total_pct: f64,
    /// Samples whose path ends here: sampled in this function (caller order) or
    /// called from nowhere further out (callee order).
    pub self_samples: u64,
    pub self_weight: u64,
    pub self_pct: f64,
    pub children: Vec<Node>,
}

/// The whole tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallTree {
    pub order: Order,
    /// The host samples' event count: the denominator of the shares.
    pub weight: u64,
    pub roots: Vec<Node>,
}

/// A node while building: children keyed by (module, function).
#[derive(Default)]
struct Building {
    total: Count,
    end: Count,
    children: HashMap<(String, String), Building>,
}

/// Builds the call tree of `stacks` (innermost frame first, as [`Profile::stacks`]).
pub fn build(
    profile: &Profile,
    stacks: &FastMap<Vec<Loc>, Count>,
    syms: &SymbolTable,
    order: Order,
) -> CallTree {
    let modules = &profile.spaces.modules;
    let mut root = Building::default();
    let mut names: HashMap<Loc, (String, String)> = HashMap::new();
    let mut path: Vec<(String, String)> = Vec::new();
    for (stack, c) in stacks {
        if stack_side(stack) == Side::Guest {
            continue;
        }
        let stack = match stack.last() {
            Some(l) if Some(l.module) == profile.comm_root_module => &stack[..stack.len() - 1],
            _ => &stack[..],
        };
        path.clear();
        for l in stack {
            let name = names
                .entry(*l)
                .or_insert_with(|| (module_name(modules, l), syms.function_name(modules, l)));
            path.push(name.clone());
        }
        if order == Order::Caller {
            path.reverse();
        }
        root.total.add_n(c.samples, c.weight);
        let mut node = &mut root;
        for key in &path {
            node = node.children.entry(key.clone()).or_default();
            node.total.add_n(c.samples, c.weight);
        }
        node.end.add_n(c.samples, c.weight);
    }
    let weight = root.total.weight;
    CallTree {
        order,
        weight,
        roots: finish(root.children, weight),
    }
}

fn module_name(modules: &ModuleTable, l: &Loc) -> String {
    modules.get(l.module).short_name().to_owned()
}

fn finish(children: HashMap<(String, String), Building>, whole: u64) -> Vec<Node> {
    let pct = |w: u64| crate::share::pct(w, whole);
    let mut nodes: Vec<Node> = children
        .into_iter()
        .map(|((module, function), b)| Node {
            function,
            module,
            total_samples: b.total.samples,
            total_weight: b.total.weight,
            total_pct: pct(b.total.weight),
            self_samples: b.end.samples,
            self_weight: b.end.weight,
            self_pct: pct(b.end.weight),
            children: finish(b.children, whole),
        })
        .collect();
    nodes.sort_by(|a, b| {
        b.total_weight
            .cmp(&a.total_weight)
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.module.cmp(&b.module))
    });
    nodes
}

impl CallTree {
    /// Drops nodes under `percent_limit` percent of the total and keeps at most `limit`
    /// children per node (0 = all).
    pub fn truncate(&mut self, limit: usize, percent_limit: f64) {
        fn cut(nodes: &mut Vec<Node>, limit: usize, percent_limit: f64) {
            nodes.retain(|n| n.total_pct >= percent_limit);
            if limit > 0 {
                nodes.truncate(limit);
            }
            for n in nodes {
                cut(&mut n.children, limit, percent_limit);
            }
        }
        cut(&mut self.roots, limit, percent_limit);
    }

    /// Every root-to-node path with the node's total weight, `;`-separated as folded
    /// stacks (for tests and comparisons).
    pub fn paths(&self) -> Vec<(String, u64)> {
        fn walk(nodes: &[Node], prefix: &str, out: &mut Vec<(String, u64)>) {
            for n in nodes {
                let p = if prefix.is_empty() {
                    n.function.clone()
                } else {
                    format!("{prefix};{}", n.function)
                };
                out.push((p.clone(), n.total_weight));
                walk(&n.children, &p, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.roots, "", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use crate::symbols::NoSymbols;
    use lbrprof_data::model::{AddressSpace, CpuMode, Event, Frame, HostSample, Mapping};

    /// main(0x10) calls a(0x20) which calls b(0x30); samples: 2 in b, 1 in a, 1 in main.
    fn profile() -> Profile {
        let mut a = Aggregator::new(AggregateOptions::default());
        a.add(&Event::Mapping(Mapping {
            time_ns: 0,
            space: AddressSpace::HostUser,
            pid: 1,
            start: 0x400000,
            len: 0x10000,
            pgoff: 0,
            path: "/bin/w".into(),
            build_id: None,
        }));
        let f = |o: u64| Frame {
            addr: 0x400000 + o,
            mode: CpuMode::User,
        };
        for chain in [
            vec![f(0x30), f(0x20), f(0x10)],
            vec![f(0x30), f(0x20), f(0x10)],
            vec![f(0x20), f(0x10)],
            vec![f(0x10)],
        ] {
            a.add(&Event::Sample(HostSample {
                pid: 1,
                tid: 1,
                period: 5,
                ip: chain[0].addr,
                mode: CpuMode::User,
                callchain: chain,
                ..HostSample::default()
            }));
        }
        a.finish()
    }

    #[test]
    fn caller_and_callee_trees() {
        let p = profile();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let t = build(&p, &p.stacks, &syms, Order::Caller);
        assert_eq!(t.weight, 20);
        assert_eq!(
            t.paths(),
            [
                ("w+0x10".to_owned(), 20),
                ("w+0x10;w+0x20".to_owned(), 15),
                ("w+0x10;w+0x20;w+0x30".to_owned(), 10),
            ]
        );
        let main = &t.roots[0];
        assert_eq!((main.self_pct, main.total_pct), (25.0, 100.0));
        let t = build(&p, &p.stacks, &syms, Order::Callee);
        let mut paths = t.paths();
        paths.sort();
        assert_eq!(
            paths,
            [
                ("w+0x10".to_owned(), 5),
                ("w+0x20".to_owned(), 5),
                ("w+0x20;w+0x10".to_owned(), 5),
                ("w+0x30".to_owned(), 10),
                ("w+0x30;w+0x20".to_owned(), 10),
                ("w+0x30;w+0x20;w+0x10".to_owned(), 10),
            ]
        );
        // Callee roots are ordered by their self share.
        assert_eq!(t.roots[0].function, "w+0x30");
        let mut cut = t.clone();
        cut.truncate(1, 0.0);
        assert_eq!(cut.paths().len(), 3);
        let mut cut = t;
        cut.truncate(0, 30.0);
        assert_eq!(cut.roots.len(), 1);
    }
}
