//! The callgrind profile format (what `valgrind --tool=callgrind` writes and
//! `callgrind_annotate`, KCachegrind and QCachegrind read).
//!
//! Two sources of costs:
//! * **Exact-mode recordings** ([`exact_costs`]): the shim counted every ring-3
//!   instruction in straight-line runs and every call with its inclusive cost
//!   (`lbrprof_data::model::ExactProfile`). Each run is decoded from the module's
//!   file to credit its instructions one by one, so the events are callgrind's with
//!   `--branch-sim=yes` minus the mispredict columns: `Ir` (instructions executed), `Bc`
//!   (conditional branches executed) and `Bi` (indirect branches executed: indirect jumps
//!   and calls, and returns).
//! * **Sampled recordings** ([`sampled_costs`]): one event, `Samples`; a sample's leaf is
//!   its self cost and every caller → callee pair of its stack gets the sample once as
//!   inclusive cost (a recursive pair counts once per sample, as callgrind counts a cycle).
//!
//! The file ([`write()`]) uses `positions: instr line` (the file offset in the object of
//! each instruction, and its source line), one `ob=`/`fl=`/`fn=` block per function with
//! `fi=` for lines of inlined code from other files, and `calls=` lines whose cost is the
//! inclusive cost of those calls. Names are written in full (no name compression), and
//! `totals:` ends the file.

use std::collections::BTreeMap;
use std::io::{self, Write};

use iced_x86::{Decoder, DecoderOptions, FlowControl};
use lbrprof_data::model::ExactProfile;

use crate::aggregate::{FastMap, Profile};
use crate::decode::CodeReader;
use crate::loc::{AddressSpaces, Loc, ModuleTable};
use crate::symbols::SymbolTable;

/// Longest x86-64 instruction (bytes).
const MAX_INSN_LEN: u64 = 15;

/// Costs per instruction and per call edge, with the names of their events.
#[derive(Clone, Debug, Default)]
pub struct Costs {
    /// Event names, in column order (callgrind `events:`).
    pub events: Vec<(&'static str, &'static str)>,
    /// Self cost per instruction.
    pub insns: FastMap<Loc, Vec<u64>>,
    /// Per call edge `(call site, a location in the callee)`: calls and inclusive costs.
    pub calls: FastMap<(Loc, Loc), (u64, Vec<u64>)>,
    /// Instructions whose run could not be decoded (module file missing or different):
    /// credited to the run's first instruction.
    pub unplaced: u64,
    /// The recording's own instruction total (exact mode), to check the sum against.
    pub counted: u64,
}

impl Costs {
    /// The sum of each event over all instructions.
    pub fn totals(&self) -> Vec<u64> {
        let mut t = vec![0; self.events.len()];
        for c in self.insns.values() {
            for (t, c) in t.iter_mut().zip(c) {
                *t += c;
            }
        }
        t
    }

    /// Every location the file will name (for symbolization).
    pub fn locs(&self) -> impl Iterator<Item = Loc> + '_ {
        self.insns
            .keys()
            .copied()
            .chain(self.calls.keys().flat_map(|&(a, b)| [a, b]))
    }
}

/// Exact-mode profiles (one per vCPU) as callgrind costs: `Ir`, `Bc`, `Bi`.
pub fn exact_costs(
    profiles: &[ExactProfile],
    spaces: &mut AddressSpaces,
    code: &mut CodeReader,
) -> Costs {
    let mut costs = Costs {
        events: vec![
            ("Ir", "Instructions executed"),
            ("Bc", "Conditional branches executed"),
            ("Bi", "Indirect branches executed"),
        ],
        ..Costs::default()
    };
    for p in profiles {
        costs.counted += p.instructions;
        for &(start, n, _taken, count) in &p.runs {
            let loc = spaces.resolve_guest(p.vm, start);
            let placed = decode_run(&spaces.modules, code, loc, n).map(|insns| {
                for (off, kind) in insns {
                    let c = costs
                        .insns
                        .entry(Loc {
                            module: loc.module,
                            offset: off,
                        })
                        .or_insert_with(|| vec![0; 3]);
                    c[0] += count;
                    match kind {
                        Some(BranchClass::Conditional) => c[1] += count,
                        Some(BranchClass::Indirect) => c[2] += count,
                        None => {}
                    }
                }
            });
            if placed.is_none() {
                let c = costs.insns.entry(loc).or_insert_with(|| vec![0; 3]);
                c[0] += count * u64::from(n);
                costs.unplaced += count * u64::from(n);
            }
        }
        for &(site, target, calls, inclusive) in &p.calls {
            let site = spaces.resolve_guest(p.vm, site);
            let target = spaces.resolve_guest(p.vm, target);
            let e = costs
                .calls
                .entry((site, target))
                .or_insert_with(|| (0, vec![0; 3]));
            e.0 += calls;
            for (e, i) in e.1.iter_mut().zip(inclusive) {
                *e += i;
            }
        }
    }
    costs
}

enum BranchClass {
    Conditional,
    Indirect,
}

/// The offsets of the `n` sequential instructions from `start` and the branch class of
/// each, when the module's code is readable and decodes.
fn decode_run(
    modules: &ModuleTable,
    code: &mut CodeReader,
    start: Loc,
    n: u32,
) -> Option<Vec<(u64, Option<BranchClass>)>> {
    let len = u64::from(n).checked_mul(MAX_INSN_LEN)?.min(1 << 20);
    let bytes = code.bytes(modules, start.module, start.offset, len)?;
    let mut dec = Decoder::with_ip(64, &bytes, start.offset, DecoderOptions::NONE);
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if !dec.can_decode() {
            return None;
        }
        let ip = dec.ip();
        let insn = dec.decode();
        if insn.is_invalid() {
            return None;
        }
        let class = match insn.flow_control() {
            FlowControl::ConditionalBranch => Some(BranchClass::Conditional),
            FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return => {
                Some(BranchClass::Indirect)
            }
            _ => None,
        };
        out.push((ip, class));
    }
    Some(out)
}

/// A sampled profile's stacks as callgrind costs: `Samples`.
pub fn sampled_costs(profile: &Profile, syms: &SymbolTable) -> Costs {
    let mut costs = Costs {
        events: vec![("Samples", "Samples")],
        ..Costs::default()
    };
    let modules = &profile.spaces.modules;
    let fkey = |l: &Loc| (l.module, syms.function_name(modules, l));
    let stacks = if profile.stacks.is_empty() {
        &profile.lbr_stacks
    } else {
        &profile.stacks
    };
    for (stack, count) in stacks.iter() {
        // Innermost first; pseudo frames (the `[guest vcpuN]` root) carry no code.
        let frames: Vec<Loc> = stack
            .iter()
            .copied()
            .filter(|l| l.module != ModuleTable::GUEST_ROOT)
            .collect();
        let Some(&leaf) = frames.first() else {
            continue;
        };
        costs.insns.entry(leaf).or_insert_with(|| vec![0])[0] += count.samples;
        let mut seen = std::collections::HashSet::new();
        for w in frames.windows(2) {
            let (callee, site) = (w[0], w[1]);
            if !seen.insert((fkey(&site), fkey(&callee))) {
                continue;
            }
            let e = costs
                .calls
                .entry((site, callee))
                .or_insert_with(|| (0, vec![0]));
            e.0 += count.samples;
            e.1[0] += count.samples;
        }
    }
    costs
}

/// What [`write()`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub functions: usize,
    pub instructions: usize,
    pub call_edges: usize,
    pub totals: Vec<u64>,
}

/// What a callgrind file's header says about the run.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub cmd: String,
    /// `desc:` lines.
    pub desc: Vec<String>,
}

/// A function as callgrind keys it: object, primary file, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FnKey {
    object: String,
    file: String,
    name: String,
}

/// Writes `costs` in the callgrind format.
pub fn write(
    costs: &Costs,
    modules: &ModuleTable,
    syms: &SymbolTable,
    header: &Header,
    out: &mut dyn Write,
) -> io::Result<WriteStats> {
    let name = |l: &Loc| syms.function_name(modules, l);
    let file = |l: &Loc| {
        syms.get(l)
            .and_then(|s| s.file.clone())
            .unwrap_or_else(|| "???".to_owned())
    };
    let line = |l: &Loc| syms.get(l).and_then(|s| s.line).unwrap_or(0);
    // A function's primary file: that of its lowest-addressed instruction here.
    let mut primary: BTreeMap<(u32, String), (u64, String)> = BTreeMap::new();
    for l in costs.locs() {
        let k = (l.module.0, name(&l));
        let e = primary
            .entry(k)
            .or_insert_with(|| (u64::MAX, String::new()));
        if l.offset < e.0 {
            *e = (l.offset, file(&l));
        }
    }
    let key = |l: &Loc| {
        let n = name(l);
        FnKey {
            object: modules.get(l.module).path.clone(),
            file: primary
                .get(&(l.module.0, n.clone()))
                .map(|p| p.1.clone())
                .unwrap_or_else(|| "???".to_owned()),
            name: n,
        }
    };
    // Instructions and outgoing calls, by function, in address order.
    enum Item<'a> {
        Insn(&'a [u64]),
        Call(Loc, u64, &'a [u64]),
    }
    let mut fns: BTreeMap<FnKey, Vec<(Loc, Item)>> = BTreeMap::new();
    for (l, c) in &costs.insns {
        fns.entry(key(l)).or_default().push((*l, Item::Insn(c)));
    }
    for ((site, target), (n, c)) in &costs.calls {
        fns.entry(key(site))
            .or_default()
            .push((*site, Item::Call(*target, *n, c)));
    }
    let events: Vec<&str> = costs.events.iter().map(|e| e.0).collect();
    writeln!(out, "# callgrind format")?;
    writeln!(out, "version: 1")?;
    writeln!(out, "creator: lbrprof {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "cmd: {}", one_line(&header.cmd))?;
    writeln!(out, "part: 1")?;
    for d in &header.desc {
        writeln!(out, "desc: {}", one_line(d))?;
    }
    writeln!(out)?;
    writeln!(out, "positions: instr line")?;
    for (e, long) in &costs.events {
        writeln!(out, "event: {e} : {long}")?;
    }
    writeln!(out, "events: {}", events.join(" "))?;
    writeln!(out)?;
    let mut stats = WriteStats {
        functions: fns.len(),
        instructions: costs.insns.len(),
        call_edges: costs.calls.len(),
        totals: costs.totals(),
    };
    let cost_cols = |c: &[u64]| {
        c.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (k, mut items) in fns {
        items.sort_by_key(|(l, it)| (l.offset, matches!(it, Item::Call(..))));
        writeln!(out, "ob={}", k.object)?;
        writeln!(out, "fl={}", k.file)?;
        writeln!(out, "fn={}", k.name)?;
        let mut cur_file = k.file.clone();
        for (l, it) in items {
            let f = file(&l);
            if f != cur_file {
                if f == k.file {
                    writeln!(out, "fe={f}")?;
                } else {
                    writeln!(out, "fi={f}")?;
                }
                cur_file = f;
            }
            match it {
                Item::Insn(c) => {
                    writeln!(out, "{:#x} {} {}", l.offset, line(&l), cost_cols(c))?;
                }
                Item::Call(target, n, c) => {
                    let ck = key(&target);
                    writeln!(out, "cob={}", ck.object)?;
                    writeln!(out, "cfi={}", ck.file)?;
                    writeln!(out, "cfn={}", ck.name)?;
                    writeln!(out, "calls={n} {:#x}", target.offset)?;
                    writeln!(out, "{:#x} {} {}", l.offset, line(&l), cost_cols(c))?;
                }
            }
        }
        writeln!(out)?;
    }
    writeln!(out, "totals: {}", cost_cols(&stats.totals))?;
    stats.totals.shrink_to_fit();
    Ok(stats)
}

/// Header values must stay on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loc::ModuleKind;
    use crate::symbols::Sym;

    #[test]
    fn a_file_callgrind_annotate_can_total() {
        let mut modules = ModuleTable::default();
        let m = modules.intern("/bin/prog", None, ModuleKind::Guest);
        let at = |o| Loc {
            module: m,
            offset: o,
        };
        let mut costs = Costs {
            events: vec![("Ir", "Instructions executed")],
            ..Costs::default()
        };
        costs.insns.insert(at(0x10), vec![5]);
        costs.insns.insert(at(0x14), vec![5]);
        costs.insns.insert(at(0x40), vec![7]);
        costs.calls.insert((at(0x14), at(0x40)), (1, vec![7]));
        let mut syms = SymbolTable::default();
        for (o, f, line) in [(0x10, "main", 3), (0x14, "main", 4), (0x40, "f", 9)] {
            syms.insert(
                at(o),
                Sym {
                    function: Some(f.into()),
                    file: Some("p.c".into()),
                    line: Some(line),
                    ..Sym::default()
                },
            );
        }
        let mut out = Vec::new();
        let st = write(&costs, &modules, &syms, &Header::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(st.totals, vec![17]);
        let main = "fl=p.c\nfn=main\n0x10 3 5\n0x14 4 5\n\
                    cob=/bin/prog\ncfi=p.c\ncfn=f\ncalls=1 0x40\n0x14 4 7\n";
        assert!(text.contains(main), "{text}");
        assert!(
            text.contains("positions: instr line\nevent: Ir : Instructions executed\nevents: Ir\n"),
            "{text}"
        );
        assert!(text.ends_with("totals: 17\n"), "{text}");
    }
}
