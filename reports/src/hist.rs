//! perf's grouped table (`perf report --sort comm,dso,...`): one row per distinct tuple
//! of sort keys, with the share of the event count whose sampled instruction has that
//! tuple (Self) and, with call chains, the share of samples that have it anywhere on
//! their stack, each sample counted once per tuple (Children).
//!
//! Built from [`Profile::task_stacks`] (aggregate with [`crate::AggregateOptions::tasks`])
//! after symbolization. Keys follow perf: `comm` is the sampled thread's command name
//! when sampled, `pid` the thread (perf prints `TID:COMM` under `Pid:Command`, one row per
//! thread named by its last command name, so a rename or exec does not split it), `dso`
//! the frame's module, `sym` its function. Guest snapshots are not host threads: they get
//! a table of their own ([`build_guest`]), keyed by the guest's processes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Count, Profile, Task};
use crate::hash::FastMap;
use crate::loc::{Loc, ModuleTable};
use crate::loc::{Side, stack_side};
use crate::symbols::SymbolTable;

/// One perf sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistKey {
    /// The sampled thread's command name.
    Comm,
    /// The sampled thread, as `TID:COMM` (perf's `pid` key is per thread).
    Pid,
    /// The module of the frame.
    Dso,
    /// The function of the frame.
    Sym,
}

impl HistKey {
    /// The key's name on the command line (perf's).
    pub fn name(self) -> &'static str {
        match self {
            HistKey::Comm => "comm",
            HistKey::Pid => "pid",
            HistKey::Dso => "dso",
            HistKey::Sym => "sym",
        }
    }

    /// The key from its command-line name (perf's names and aliases).
    pub fn parse(s: &str) -> Option<HistKey> {
        Some(match s {
            "comm" => HistKey::Comm,
            "pid" | "tid" => HistKey::Pid,
            "dso" => HistKey::Dso,
            "sym" | "symbol" => HistKey::Sym,
            _ => return None,
        })
    }

    /// The column heading, as perf prints it.
    pub fn heading(self) -> &'static str {
        match self {
            HistKey::Comm => "Command",
            HistKey::Pid => "Pid:Command",
            HistKey::Dso => "Shared Object",
            HistKey::Sym => "Symbol",
        }
    }

    /// Whether the key differs between frames of one sample (else it is the thread's).
    fn per_frame(self) -> bool {
        matches!(self, HistKey::Dso | HistKey::Sym)
    }
}

/// One distinct tuple of keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistRow {
    /// The keys' values, in the order of [`Hist::keys`].
    pub keys: Vec<String>,
    pub self_samples: u64,
    pub self_weight: u64,
    /// `self_weight` as a percentage of all host weight.
    pub self_pct: f64,
    pub children_samples: u64,
    pub children_weight: u64,
    /// `children_weight` as a percentage of all host weight.
    pub children_pct: f64,
}

/// The grouped table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hist {
    pub keys: Vec<HistKey>,
    /// Whether rows are ordered and cut by their children share (`--children`).
    pub children: bool,
    /// The host samples' event count: the denominator of the shares.
    pub weight: u64,
    pub rows: Vec<HistRow>,
}

/// Builds the table for `keys` (at least one) from the host samples
/// (`profile.task_stacks`), rows ordered by children (with `children`) or self weight,
/// then by their keys.
pub fn build(profile: &Profile, syms: &SymbolTable, keys: &[HistKey], children: bool) -> Hist {
    build_from(
        profile,
        &profile.task_stacks,
        &profile.comms,
        Side::Host,
        syms,
        keys,
        children,
    )
}

/// The same table for the guest snapshots of a `record --vm` recording
/// (`profile.guest_task_stacks`): `comm` is the guest process's command at the
/// snapshot, `pid` the guest process (`PID:COMM`, its last command), shares are of the
/// guest snapshots' weight. `None` without guest snapshots.
pub fn build_guest(
    profile: &Profile,
    syms: &SymbolTable,
    keys: &[HistKey],
    children: bool,
) -> Option<Hist> {
    if profile.guest_task_stacks.is_empty() {
        return None;
    }
    Some(build_from(
        profile,
        &profile.guest_task_stacks,
        &profile.guest_comms,
        Side::Guest,
        syms,
        keys,
        children,
    ))
}

fn build_from(
    profile: &Profile,
    tables: &FastMap<Task, FastMap<Vec<Loc>, Count>>,
    last_comms: &HashMap<u32, String>,
    side: Side,
    syms: &SymbolTable,
    keys: &[HistKey],
    children: bool,
) -> Hist {
    let modules = &profile.spaces.modules;
    let mut rows: HashMap<Vec<String>, [u64; 4]> = HashMap::new();
    let mut seen: Vec<Vec<String>> = Vec::new();
    let mut total = 0u64;
    for (task, stacks) in tables {
        let comm = profile
            .task_comms
            .get(task.comm as usize)
            .map_or("", String::as_str);
        // perf's `pid` key is the thread, printed with the command it ended with.
        let thread = format!(
            "{}:{}",
            task.tid,
            last_comms.get(&task.tid).map_or(comm, String::as_str)
        );
        for (stack, c) in stacks {
            if side == Side::Host && stack_side(stack) == Side::Guest {
                continue;
            }
            // Command root frames are not code.
            let stack = match stack.last() {
                Some(l) if Some(l.module) == profile.comm_root_module => &stack[..stack.len() - 1],
                _ => &stack[..],
            };
            total += c.weight;
            seen.clear();
            let frames = if keys.iter().any(|k| k.per_frame()) {
                stack.len()
            } else {
                stack.len().min(1)
            };
            for (i, l) in stack.iter().take(frames).enumerate() {
                let tuple: Vec<String> = keys
                    .iter()
                    .map(|k| match k {
                        HistKey::Comm => comm.to_owned(),
                        HistKey::Pid => thread.clone(),
                        HistKey::Dso => dso_name(modules, l.module),
                        HistKey::Sym => syms.function_name(modules, l),
                    })
                    .collect();
                let first = !seen.contains(&tuple);
                if i > 0 && !first {
                    continue;
                }
                let e = rows.entry(tuple.clone()).or_default();
                if i == 0 {
                    e[0] += c.samples;
                    e[1] += c.weight;
                }
                if first {
                    e[2] += c.samples;
                    e[3] += c.weight;
                    seen.push(tuple);
                }
            }
            // A sample with no frame at all still counts for its thread's keys.
            if stack.is_empty() && !keys.iter().any(|k| k.per_frame()) {
                let tuple: Vec<String> = keys
                    .iter()
                    .map(|k| match k {
                        HistKey::Pid => thread.clone(),
                        _ => comm.to_owned(),
                    })
                    .collect();
                let e = rows.entry(tuple).or_default();
                e[0] += c.samples;
                e[1] += c.weight;
                e[2] += c.samples;
                e[3] += c.weight;
            }
        }
    }
    let pct = |w: u64| crate::share::pct(w, total);
    let mut rows: Vec<HistRow> = rows
        .into_iter()
        .map(|(keys, [ss, sw, cs, cw])| HistRow {
            keys,
            self_samples: ss,
            self_weight: sw,
            self_pct: pct(sw),
            children_samples: cs,
            children_weight: cw,
            children_pct: pct(cw),
        })
        .collect();
    rows.sort_by(|a, b| {
        let (ka, kb) = if children {
            (
                (a.children_weight, a.self_weight),
                (b.children_weight, b.self_weight),
            )
        } else {
            (
                (a.self_weight, a.children_weight),
                (b.self_weight, b.children_weight),
            )
        };
        kb.cmp(&ka).then_with(|| a.keys.cmp(&b.keys))
    });
    Hist {
        keys: keys.to_vec(),
        children,
        weight: total,
        rows,
    }
}

/// The module name perf's `dso` key shows.
fn dso_name(modules: &ModuleTable, id: crate::loc::ModuleId) -> String {
    modules.get(id).short_name().to_owned()
}

impl Hist {
    /// Drops rows below `percent_limit` percent of their ordering share (children with
    /// [`Hist::children`], else self), and rows with no share of that column, then keeps
    /// at most `limit` (0 = all).
    pub fn truncate(&mut self, limit: usize, percent_limit: f64) {
        let children = self.children;
        self.rows.retain(|r| {
            let (pct, weight) = if children {
                (r.children_pct, r.children_weight)
            } else {
                (r.self_pct, r.self_weight)
            };
            weight > 0 && pct >= percent_limit
        });
        if limit > 0 {
            self.rows.truncate(limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use crate::symbols::NoSymbols;
    use lbrprof_data::model::{
        AddressSpace, CpuMode, Event, Frame, HostSample, Mapping, TaskEvent,
    };

    fn profile() -> Profile {
        let mut a = Aggregator::new(AggregateOptions {
            tasks: true,
            ..AggregateOptions::default()
        });
        for (path, start) in [("/bin/w", 0x400000), ("/lib/libc.so.6", 0x700000)] {
            a.add(&Event::Mapping(Mapping {
                time_ns: 0,
                space: AddressSpace::HostUser,
                pid: 1,
                start,
                len: 0x10000,
                pgoff: 0,
                path: path.into(),
                build_id: None,
            }));
        }
        a.add(&Event::Task(TaskEvent::Comm {
            time_ns: 0,
            pid: 1,
            tid: 1,
            comm: "w".into(),
        }));
        a.add(&Event::Task(TaskEvent::Comm {
            time_ns: 0,
            pid: 1,
            tid: 2,
            comm: "worker".into(),
        }));
        let frame = |addr| Frame {
            addr,
            mode: CpuMode::User,
        };
        // Thread 1: 3 samples in libc called from w; thread 2: 1 sample in w.
        for (tid, ip, chain) in [
            (1, 0x700010, vec![frame(0x700010), frame(0x400020)]),
            (1, 0x700010, vec![frame(0x700010), frame(0x400020)]),
            (1, 0x700010, vec![frame(0x700010), frame(0x400020)]),
            (2, 0x400030, vec![frame(0x400030), frame(0x400020)]),
        ] {
            a.add(&Event::Sample(HostSample {
                pid: 1,
                tid,
                period: 10,
                ip,
                mode: CpuMode::User,
                callchain: chain,
                ..HostSample::default()
            }));
        }
        a.finish()
    }

    fn rows(h: &Hist) -> Vec<(String, f64, f64)> {
        h.rows
            .iter()
            .map(|r| (r.keys.join(" "), r.self_pct, r.children_pct))
            .collect()
    }

    #[test]
    fn comm_dso_self_and_children() {
        let p = profile();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let h = build(&p, &syms, &[HistKey::Comm, HistKey::Dso], false);
        assert_eq!(h.weight, 40);
        assert_eq!(
            rows(&h),
            [
                ("w libc.so.6".to_owned(), 75.0, 75.0),
                ("worker w".to_owned(), 25.0, 25.0),
                // w is on every stack of thread 1, never the sampled frame.
                ("w w".to_owned(), 0.0, 75.0),
            ]
        );
        let mut ch = build(&p, &syms, &[HistKey::Comm, HistKey::Dso], true);
        assert_eq!(ch.rows[0].keys, ["w", "libc.so.6"]);
        ch.truncate(0, 50.0);
        assert_eq!(ch.rows.len(), 2, "{:?}", rows(&ch));
        // Self ordering drops rows with no self share.
        let mut s = build(&p, &syms, &[HistKey::Comm, HistKey::Dso], false);
        s.truncate(0, 0.0);
        assert_eq!(s.rows.len(), 2);
    }

    #[test]
    fn a_renamed_thread_is_one_pid_row_named_as_it_ended() {
        // As perf: `comm` splits at the rename (the command when sampled), `pid` keeps
        // the thread together under its last command name.
        let mut a = Aggregator::new(AggregateOptions {
            tasks: true,
            ..AggregateOptions::default()
        });
        for comm in ["sk", "child"] {
            a.add(&Event::Task(TaskEvent::Comm {
                time_ns: 0,
                pid: 3,
                tid: 3,
                comm: comm.into(),
            }));
            a.add(&Event::Sample(HostSample {
                pid: 3,
                tid: 3,
                period: 1,
                ip: 0x1000,
                mode: CpuMode::User,
                ..HostSample::default()
            }));
        }
        let p = a.finish();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let pid = build(&p, &syms, &[HistKey::Pid], false);
        assert_eq!(rows(&pid), [("3:child".to_owned(), 100.0, 100.0)]);
        let comm = build(&p, &syms, &[HistKey::Comm], false);
        assert_eq!(
            rows(&comm),
            [
                ("child".to_owned(), 50.0, 50.0),
                ("sk".to_owned(), 50.0, 50.0)
            ]
        );
    }

    #[test]
    fn thread_keys_count_each_sample_once() {
        let p = profile();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let h = build(&p, &syms, &[HistKey::Pid], true);
        assert_eq!(
            rows(&h),
            [
                ("1:w".to_owned(), 75.0, 75.0),
                ("2:worker".to_owned(), 25.0, 25.0)
            ]
        );
        let h = build(&p, &syms, &[HistKey::Sym], true);
        // The caller at w+0x20 is on every stack, never sampled itself.
        let w = h.rows.iter().find(|r| r.keys[0] == "w+0x20").unwrap();
        assert_eq!((w.self_samples, w.children_samples), (0, 4));
    }

    #[test]
    fn guest_snapshots_get_their_own_table_by_guest_process() {
        let mut a = Aggregator::new(AggregateOptions {
            tasks: true,
            ..AggregateOptions::default()
        });
        // Guest pid 7 starts as sh and execs gzip (a new address space, same pid).
        for (space, comm, root) in [(0, "sh", 0x1000), (1, "gzip", 0x2000), (2, "wc", 0x3000)] {
            a.add(&Event::GuestProcess(lbrprof_data::model::GuestProcess {
                time_ns: 0,
                vm: 0,
                space,
                pid: if space == 2 { 8 } else { 7 },
                ppid: 1,
                comm: comm.into(),
                exe: format!("/bin/{comm}"),
                roots: vec![root],
            }));
        }
        for (cr3, n) in [(0x1000, 1), (0x2000, 3), (0x3000, 2)] {
            for _ in 0..n {
                let mut snap = crate::lbr::tests::snapshot(0, &[(0x400020, 0x400200, 0)]);
                snap.cr3 = cr3;
                snap.guest_ip = 0x400100;
                a.add(&Event::Snapshot(snap));
            }
        }
        // A host sample with the same number as a guest pid stays on the host side.
        a.add(&Event::Sample(HostSample {
            pid: 7,
            tid: 7,
            period: 1,
            ip: 0x1000,
            mode: CpuMode::User,
            ..HostSample::default()
        }));
        let p = a.finish();
        let syms = SymbolTable::build(&p, &NoSymbols);
        let g = build_guest(&p, &syms, &[HistKey::Comm], false).unwrap();
        let pct = |x: f64| (x * 100.0).round() / 100.0;
        let got: Vec<_> = rows(&g).into_iter().map(|(k, s, _)| (k, pct(s))).collect();
        assert_eq!(
            got,
            [
                ("gzip".to_owned(), 50.0),
                ("wc".to_owned(), 33.33),
                ("sh".to_owned(), 16.67)
            ]
        );
        // `pid` names the guest process by its last command.
        let g = build_guest(&p, &syms, &[HistKey::Pid], false).unwrap();
        let keys: Vec<_> = g.rows.iter().map(|r| r.keys[0].clone()).collect();
        assert_eq!(keys, ["7:gzip", "8:wc"]);
        let host = build(&p, &syms, &[HistKey::Comm], false);
        assert_eq!(host.weight, 1);
        // No snapshots, no guest table.
        assert!(build_guest(&profile(), &syms, &[HistKey::Comm], false).is_none());
    }

    #[test]
    fn key_names_parse_like_perf() {
        for k in [HistKey::Comm, HistKey::Pid, HistKey::Dso, HistKey::Sym] {
            assert_eq!(HistKey::parse(k.name()), Some(k));
        }
        assert_eq!(HistKey::parse("symbol"), Some(HistKey::Sym));
        assert_eq!(HistKey::parse("cpu"), None);
    }
}
