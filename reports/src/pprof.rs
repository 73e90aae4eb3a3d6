//! `export --pprof`: the profile as pprof's `profile.proto`, gzip-compressed, the format
//! `go tool pprof`, Parca, Pyroscope and Google Cloud Profiler read.
//!
//! What goes in, from the stacks every other output uses (per thread when the profile has
//! a timeline, as `lbrprof export --pprof` asks for):
//!
//! * Two sample values per stack: `samples/count` and the event's weight
//!   (`cpu-clock/nanoseconds` for time events, `<event>/count` otherwise); the weight is
//!   the default.
//! * Host stacks and guest snapshot stacks, each sample labelled `side=host|guest`; a guest
//!   sample also carries `vcpu` (numeric, unit `vcpu`, so that pprof keeps vCPU 0) and
//!   its root frame `[guest vcpuN]`, so the guest stacks sit under their vCPU as in
//!   lbrprof's flame graphs. Filter with `go tool pprof -tagfocus side=guest`.
//! * One mapping per module (path and build-id, starting at 0: addresses are lbrprof's
//!   module offsets, file offsets for files and the run-time address for the kernel, so
//!   pprof never re-symbolizes them), one location per code address with
//!   its function and, where DWARF gives it, file and line; functions unknown to the symbol
//!   tables keep lbrprof's `<module>+0x<offset>` names.
//! * With the aggregator's timeline ([`crate::aggregate::Timeline`]), samples are also
//!   kept apart by thread and labelled `pid`, `tid` and `comm` (the thread's command),
//!   so `-tagfocus comm=NAME` or `-tagroot pid` split a profile by process. A guest
//!   snapshot taken in a guest process the recording names (a Linux program's fork or
//!   exec, by its CR3) has that process's guest pid and command (`tid` = `pid`: guest
//!   threads are not named), else its vCPU thread's. These are
//!   string labels, as fleet profilers (Pyroscope, Parca) index them (and pprof would
//!   drop a unitless numeric label of value 0, the idle task's).
//! * A location in inlined code has one line per function of the inline chain, innermost
//!   first, as pprof expects (its mapping says `has_inline_frames`).
//!
//! The encoding is `prost`'s; no `.proto` file is compiled, the messages below mirror
//! `perftools.profiles` field for field.

use std::collections::HashMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

use lbrprof_data::model::BranchKind;

use crate::aggregate::{Count, Profile};
use crate::loc::{Loc, ModuleTable};
use crate::report::{Side, stack_side};
use crate::symbols::SymbolTable;

/// `perftools.profiles.Profile` (the fields lbrprof writes).
#[derive(Clone, PartialEq, Message)]
pub struct PbProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<PbValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PbSample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<PbMapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<PbLocation>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<PbFunction>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<PbValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbSample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<PbLabel>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLabel {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbMapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLocation {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<PbLine>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLine {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbFunction {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// What the export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PprofStats {
    pub samples: usize,
    pub locations: usize,
    pub functions: usize,
    pub mappings: usize,
    pub guest_samples: usize,
    /// Branch edges written as samples of the `branches` value.
    pub branch_edges: usize,
}

/// The interning tables a profile.proto is made of.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<PbFunction>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<PbLocation>,
    location_ids: HashMap<Loc, u64>,
    mappings: Vec<PbMapping>,
    mapping_ids: HashMap<u32, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn mapping(&mut self, modules: &ModuleTable, l: &Loc) -> u64 {
        if let Some(&id) = self.mapping_ids.get(&l.module.0) {
            let m = &mut self.mappings[id as usize - 1];
            m.memory_limit = m.memory_limit.max(l.offset.saturating_add(1));
            return id;
        }
        let module = modules.get(l.module);
        let build_id = module
            .build_id
            .as_ref()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            .unwrap_or_default();
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&module.path);
        let build_id = self.string(&build_id);
        self.mappings.push(PbMapping {
            id,
            memory_start: 0,
            memory_limit: l.offset.saturating_add(1),
            file_offset: 0,
            filename,
            build_id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: false,
        });
        self.mapping_ids.insert(l.module.0, id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_owned(), file.to_owned());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name_id = self.string(name);
        let file_id = self.string(file);
        self.functions.push(PbFunction {
            id,
            name: name_id,
            system_name: name_id,
            filename: file_id,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, modules: &ModuleTable, syms: &SymbolTable, l: &Loc) -> u64 {
        if let Some(&id) = self.location_ids.get(l) {
            return id;
        }
        let mapping_id = self.mapping(modules, l);
        let sym = syms.get(l);
        let name = syms.function_name(modules, l);
        let inline = sym.map_or(&[][..], |s| s.inline.as_slice());
        let line = if inline.is_empty() {
            let file = sym.and_then(|s| s.file.as_deref()).unwrap_or_default();
            let line = sym.and_then(|s| s.line).map_or(0, i64::from);
            vec![PbLine {
                function_id: self.function(&name, file),
                line,
            }]
        } else {
            // One line per function of the inline chain, innermost first: pprof's order
            // ("the last entry represents the caller into which the preceding entries
            // were inlined"). The outermost keeps the name the symbol table gives.
            let last = inline.len() - 1;
            inline
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let fname = match (&f.function, i == last) {
                        (_, true) => name.clone(),
                        (Some(n), false) => n.clone(),
                        (None, false) => "[inlined]".to_owned(),
                    };
                    PbLine {
                        function_id: self.function(&fname, f.file.as_deref().unwrap_or_default()),
                        line: f.line.map_or(0, i64::from),
                    }
                })
                .collect()
        };
        if line.len() > 1
            && let Some(m) = self.mappings.get_mut(mapping_id as usize - 1)
        {
            m.has_inline_frames = true;
        }
        let id = self.locations.len() as u64 + 1;
        self.locations.push(PbLocation {
            id,
            mapping_id,
            address: l.offset,
            line,
            is_folded: false,
        });
        self.location_ids.insert(*l, id);
        id
    }
}

/// The sample value types for `event`: (type, unit) of the weight.
fn weight_type(event: &str) -> (&str, &str) {
    match event {
        "cpu-clock" | "task-clock" => (event, "nanoseconds"),
        _ => (event, "count"),
    }
}

/// Builds the profile.proto message for `profile`'s stacks.
pub fn build(
    profile: &Profile,
    syms: &SymbolTable,
    event: &str,
    period: u64,
) -> (PbProfile, PprofStats) {
    let modules = &profile.spaces.modules;
    let mut b = Builder::default();
    b.string("");
    let samples_type = PbValueType {
        r#type: b.string("samples"),
        unit: b.string("count"),
    };
    let (wt, wu) = weight_type(event);
    let weight_type = PbValueType {
        r#type: b.string(wt),
        unit: b.string(wu),
    };
    // Branch-stack entries, as a third value: a sample per edge with the target as its
    // leaf and the source as its caller (see `--pprof`'s help).
    let branches_type = PbValueType {
        r#type: b.string("branches"),
        unit: b.string("count"),
    };
    let branch_kind_key = b.string("branch");
    let mispredicts_key = b.string("mispredicts");
    let side_key = b.string("side");
    let host = b.string("host");
    let guest = b.string("guest");
    let vcpu_key = b.string("vcpu");
    let pid_key = b.string("pid");
    let tid_key = b.string("tid");
    let comm_key = b.string("comm");
    // A unit keeps vCPU 0's label: pprof drops a numeric label of value 0 without one.
    let vcpu_unit = b.string("vcpu");
    let mut stats = PprofStats::default();
    // pprof takes the first mapping for the profile's main binary: make it the module with
    // the most self weight (kernel and pseudo-modules aside).
    let mut self_weight: HashMap<u32, u64> = HashMap::new();
    for (stack, count) in &profile.stacks {
        if let Some(leaf) = stack.first()
            && leaf.module.0 > ModuleTable::GUEST_ROOT.0
        {
            *self_weight.entry(leaf.module.0).or_default() += count.weight;
        }
    }
    if let Some((&main, _)) = self_weight
        .iter()
        .max_by_key(|(m, w)| (**w, std::cmp::Reverse(**m)))
    {
        b.mapping(
            modules,
            &Loc {
                module: crate::loc::ModuleId(main),
                offset: 0,
            },
        );
    }
    // Deterministic output: stacks in a stable order.
    let stacks = labelled_stacks(profile);
    let mut samples = Vec::with_capacity(stacks.len());
    for ((stack, thread), count) in stacks {
        let side = stack_side(&stack);
        let location_id: Vec<u64> = stack.iter().map(|l| b.location(modules, syms, l)).collect();
        let mut label = vec![PbLabel {
            key: side_key,
            str: if side == Side::Guest { guest } else { host },
            ..PbLabel::default()
        }];
        if side == Side::Guest {
            stats.guest_samples += 1;
            if let Some(root) = stack.last() {
                label.push(PbLabel {
                    key: vcpu_key,
                    num: root.offset as i64,
                    num_unit: vcpu_unit,
                    ..PbLabel::default()
                });
            }
        }
        if let Some((pid, tid, comm)) = thread {
            label.push(PbLabel {
                key: pid_key,
                str: b.string(&pid.to_string()),
                ..PbLabel::default()
            });
            label.push(PbLabel {
                key: tid_key,
                str: b.string(&tid.to_string()),
                ..PbLabel::default()
            });
            if let Some(comm) = comm {
                label.push(PbLabel {
                    key: comm_key,
                    str: b.string(&comm),
                    ..PbLabel::default()
                });
            }
        }
        samples.push(PbSample {
            location_id,
            value: vec![count.samples as i64, count.weight as i64, 0],
            label,
        });
    }
    let mut edges: Vec<_> = profile.edges.iter().collect();
    edges.sort_unstable_by(|a, b| a.0.cmp(b.0));
    // Kinds the branch stacks did not record come from the code, as in the report.
    let mut code = crate::decode::CodeReader::default();
    for ((from, to), e) in edges {
        let location_id = vec![
            b.location(modules, syms, to),
            b.location(modules, syms, from),
        ];
        let kind = match e.kind {
            BranchKind::Unknown => code.classify(modules, *from).unwrap_or(BranchKind::Unknown),
            k => k,
        };
        let kind = b.string(crate::render::kind_name(kind));
        let mut label = vec![
            PbLabel {
                key: side_key,
                str: if from.module == ModuleTable::GUEST_UNKNOWN
                    || modules.get(from.module).kind == crate::loc::ModuleKind::Guest
                {
                    guest
                } else {
                    host
                },
                ..PbLabel::default()
            },
            PbLabel {
                key: branch_kind_key,
                str: kind,
                ..PbLabel::default()
            },
        ];
        if e.mispred > 0 {
            label.push(PbLabel {
                key: mispredicts_key,
                num: e.mispred as i64,
                num_unit: mispredicts_key,
                ..PbLabel::default()
            });
        }
        stats.branch_edges += 1;
        samples.push(PbSample {
            location_id,
            value: vec![0, 0, e.count as i64],
            label,
        });
    }
    stats.samples = samples.len();
    stats.locations = b.locations.len();
    stats.functions = b.functions.len();
    stats.mappings = b.mappings.len();
    let t = &profile.totals;
    let duration = t
        .first_time_ns
        .map_or(0, |f| t.last_time_ns.saturating_sub(f)) as i64;
    let pb = PbProfile {
        sample_type: vec![samples_type, weight_type.clone(), branches_type],
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos: 0,
        duration_nanos: duration,
        period_type: Some(weight_type.clone()),
        period: period as i64,
        comment: Vec::new(),
        default_sample_type: weight_type.r#type,
    };
    (pb, stats)
}

/// The stacks to write, each with its (pid, tid, comm) when the profile has a timeline,
/// in a stable order: a host sample's thread; a guest snapshot's guest process (pid =
/// tid = its guest pid) when the recording names it, else its vCPU thread's. Guest
/// stacks end in their `[guest vcpuN]` root, as in [`Profile::stacks`].
type ThreadStack = (Vec<Loc>, Option<(u32, u32, Option<String>)>);
fn labelled_stacks(profile: &Profile) -> Vec<(ThreadStack, Count)> {
    let mut out: Vec<(ThreadStack, Count)> = match &profile.timeline {
        None => profile
            .stacks
            .iter()
            .map(|(s, c)| ((s.clone(), None), *c))
            .collect(),
        Some(tl) => {
            type Key = (u32, Option<u32>, u32, u32, Option<u32>);
            let mut groups: HashMap<Key, Count> = HashMap::new();
            for s in &tl.samples {
                groups
                    .entry((s.stack, s.vcpu, s.pid, s.tid, s.guest_process))
                    .or_default()
                    .add_n(1, s.weight);
            }
            groups
                .into_iter()
                .map(|((stack, vcpu, pid, tid, guest), c)| {
                    let mut locs = tl.stacks[stack as usize].clone();
                    if let Some(vcpu) = vcpu {
                        locs.push(Loc {
                            module: ModuleTable::GUEST_ROOT,
                            offset: u64::from(vcpu),
                        });
                    }
                    let thread = match guest.map(|g| &tl.guest_processes[g as usize]) {
                        Some(p) => Some((p.pid, p.pid, Some(p.comm.clone()))),
                        None => (pid != 0 || tid != 0)
                            .then(|| (pid, tid, profile.comms.get(&tid).cloned())),
                    };
                    ((locs, thread), c)
                })
                .collect()
        }
    };
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes `profile`'s stacks as gzip-compressed profile.proto.
pub fn write(
    profile: &Profile,
    syms: &SymbolTable,
    event: &str,
    period: u64,
    out: impl Write,
) -> std::io::Result<PprofStats> {
    let (pb, stats) = build(profile, syms, event, period);
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&pb.encode_to_vec())?;
    gz.finish()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_wire_format() {
        let p = PbProfile {
            sample_type: vec![PbValueType { r#type: 1, unit: 2 }],
            sample: vec![PbSample {
                location_id: vec![1, 2],
                value: vec![3, 4000],
                label: vec![PbLabel {
                    key: 3,
                    str: 4,
                    ..PbLabel::default()
                }],
            }],
            string_table: vec![
                "".into(),
                "samples".into(),
                "count".into(),
                "side".into(),
                "host".into(),
            ],
            default_sample_type: 1,
            ..PbProfile::default()
        };
        let bytes = p.encode_to_vec();
        assert_eq!(PbProfile::decode(bytes.as_slice()).unwrap(), p);
        // Field 6 (string_table) is a length-delimited field: tag byte (6 << 3) | 2.
        assert!(bytes.contains(&((6 << 3) | 2)));
    }
}
