//! Host and guest in one picture: what a `record --vm` recording adds to a report.
//!
//! The aggregator keeps, for VM recordings only, a compact trace of every host sample
//! (time, thread, cpumode, interned stack) and every guest snapshot (time, vCPU, interned
//! guest stack), plus the vCPU threads and the shim's accounting ([`VmTrace`]). After
//! symbolization, [`analyze`] turns it into:
//!
//! * **pairing**: each host sample taken on a vCPU thread while it was inside KVM_RUN is
//!   paired with that vCPU's nearest snapshot within a window, by
//!   [`lbrprof_data::pairing::pair`] (the rules are documented there and in
//!   `lbrprof report --help`). *In KVM_RUN* is decided from the sample: its cpumode is a
//!   guest mode (the host interrupted the running guest), or one of its kernel frames is
//!   `kvm_arch_vcpu_ioctl_run` (the host kernel is entering the guest or handling an exit
//!   in the kernel). The default window is one guest sampling period as the host saw it:
//!   twice the mean time between consecutive snapshots of a vCPU ([`default_window`]);
//! * **host activity**: where the vCPU threads and the rest of the shim spent their
//!   samples (guest running, KVM in the host kernel, the shim's exit handling by kind,
//!   other), each with its hottest host stacks, next to the shim's own accounting (exits
//!   by reason, time in KVM_RUN, tracing and snapshot time). What the shim was doing at
//!   a sample is a fact it recorded (its phase marks, [`ShimPhase`]), not a guess from
//!   function names; the host kernel's frames tell KVM_RUN and KVM's other ioctls apart;
//! * **unified stacks**: host frames (root → vCPU loop → KVM_RUN → kernel) → a
//!   `[guest vcpuN]` frame → the paired snapshot's guest frames (frame-pointer walk) →
//!   the guest leaf; `--host-only` and `--guest-only` views come from the same data.
//!
//! Guest-mode host samples carry no host call chain (the kernel does not walk a guest's
//! stack, nor the host user stack behind it), only the guest IP; their host part is the
//! thread's vCPU loop as seen in its last in-kernel KVM_RUN sample (or another vCPU
//! thread's; `[KVM_RUN]` when none was seen) and an `[in guest]` frame. Unpaired, they end in the guest IP's function.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use lbrprof_data::model::ShimPhase;
use lbrprof_data::pairing::{self, GuestPoint, HostPoint, Outcome, PairingStats};
use serde::{Deserialize, Serialize};

use crate::loc::{Loc, ModuleKind, ModuleTable};
use crate::share::pct;
use crate::symbols::SymbolTable;
pub use crate::vmtrace::{VmSample, VmSnapshot, VmTrace};

/// Kernel functions that mean "this thread is inside the KVM_RUN ioctl" (`kvm_vcpu_ioctl`
/// alone is not enough: the shim's KVM_GET_REGS and friends go through it too).
pub const KVM_RUN_FRAMES: [&str; 1] = ["kvm_arch_vcpu_ioctl_run"];

/// Where host samples went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// A vCPU thread, the guest running (guest cpumode).
    GuestRunning,
    /// A vCPU thread in the host kernel inside KVM_RUN (entry, in-kernel exit handling).
    KvmKernel,
    /// A vCPU thread in the shim handling an exit: tracing guest branches (debug exits,
    /// the LBR tracer).
    ShimTracing,
    /// ... emulating the PMU/LBR MSRs or taking snapshots.
    ShimPmu,
    /// ... emulating devices (port and MMIO I/O).
    ShimDevices,
    /// ... serving a Linux program's system calls, exceptions and signals.
    ShimLinux,
    /// ... anything else in the vCPU loop.
    ShimOther,
    /// ... a recording without the shim's phase marks: which of the above is not known.
    ShimUnknown,
    /// A vCPU thread in KVM's other vCPU ioctls (the shim reading or writing registers).
    KvmStateIoctls,
    /// A vCPU thread in the host kernel for a Linux program's system call (the shim's
    /// own system calls on the program's behalf: file and socket I/O, memory, ...).
    LinuxKernel,
    /// A vCPU thread in the host kernel outside KVM's vCPU ioctls (page faults, ...).
    VcpuKernelOther,
    /// Threads that are not vCPU threads (VM set-up and tear-down, ...).
    OtherThreads,
}

impl Activity {
    pub fn describe(self) -> &'static str {
        match self {
            Activity::GuestRunning => "guest running (in KVM_RUN, guest mode)",
            Activity::KvmKernel => "KVM in the host kernel (in KVM_RUN)",
            Activity::ShimTracing => "shim: tracing guest branches (debug exits)",
            Activity::ShimPmu => "shim: PMU/LBR MSR emulation and snapshots",
            Activity::ShimDevices => "shim: device I/O emulation",
            Activity::ShimLinux => "shim: the Linux program's system calls and signals",
            Activity::ShimOther => "shim: vCPU loop (KVM_RUN entry and return, exit dispatch)",
            Activity::ShimUnknown => "shim: exit handling (phase not recorded)",
            Activity::KvmStateIoctls => "KVM register and state ioctls of the shim (GET_REGS, ...)",
            Activity::LinuxKernel => "host kernel serving the Linux program's system calls",
            Activity::VcpuKernelOther => "vCPU thread in the kernel, not in KVM (faults, ...)",
            Activity::OtherThreads => "other threads (VM set-up, tear-down)",
        }
    }

    /// A vCPU thread's sample in user mode, outside KVM_RUN, by the phase the shim marked.
    fn of_shim_phase(phase: Option<ShimPhase>) -> Activity {
        match phase {
            Some(ShimPhase::Run | ShimPhase::Loop) => Activity::ShimOther,
            Some(ShimPhase::Tracing) => Activity::ShimTracing,
            Some(ShimPhase::Snapshot | ShimPhase::Msr) => Activity::ShimPmu,
            Some(ShimPhase::Devices) => Activity::ShimDevices,
            Some(ShimPhase::LinuxTrap | ShimPhase::Blocked) => Activity::ShimLinux,
            None => Activity::ShimUnknown,
        }
    }
}

/// One row of the host activity table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityRow {
    pub activity: Activity,
    pub description: String,
    pub samples: u64,
    pub pct: f64,
    /// The hottest host stacks of this activity (root first, `;`-separated), with
    /// their sample counts.
    pub top_stacks: Vec<(String, u64)>,
}

/// The shim's accounting for one vCPU, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShimRow {
    pub vcpu: u32,
    pub tid: Option<u32>,
    pub exits: BTreeMap<String, u64>,
    pub run_ns: u64,
    pub trace_ns: u64,
    pub snapshot_ns: u64,
    pub instructions: Option<u64>,
    pub branches: Option<u64>,
    pub snapshots: u64,
    /// Snapshots in the recording taken by the guest's LBR agent (the rest are the shim's).
    #[serde(default)]
    pub agent_snapshots: u64,
    pub lost_snapshots: u64,
    pub frozen_events: u64,
    /// Host samples on this vCPU's thread, and how many of them were paired.
    pub samples: u64,
    pub paired: u64,
}

/// Pairing, checked per vCPU: `pairs[(sample vcpu, snapshot vcpu)]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairCheck {
    /// Paired samples whose snapshot came from another vCPU than the sample's thread
    /// runs (always 0 by construction; reported so tests and users can see it).
    pub cross_vcpu: u64,
}

/// The VM part of a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmReport {
    pub image: String,
    pub vcpus: u32,
    pub backend: String,
    pub mode: String,
    pub pairing: PairingStats,
    pub paired_pct: f64,
    pub check: PairCheck,
    pub activities: Vec<ActivityRow>,
    pub shim: Vec<ShimRow>,
}

/// Which stacks a flame graph of a VM recording draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Host frames, then `[guest vcpuN]` and the paired guest stack.
    Unified,
    /// Host samples only.
    HostOnly,
    /// Guest snapshots only: `[guest vcpuN]` and the guest stack.
    GuestOnly,
}

/// The result of [`analyze`]: the report tables and the stacks for flame graphs.
#[derive(Clone, Debug)]
pub struct VmAnalysis {
    pub report: VmReport,
    /// Folded lines (`root;...;leaf`) with sample counts, per view.
    pub unified: BTreeMap<String, u64>,
    pub host_only: BTreeMap<String, u64>,
    pub guest_only: BTreeMap<String, u64>,
    /// Frame names that belong to the guest (for colouring).
    pub guest_frames: std::collections::BTreeSet<String>,
}

impl VmAnalysis {
    pub fn folded(&self, view: View) -> Vec<String> {
        let map = match view {
            View::Unified => &self.unified,
            View::HostOnly => &self.host_only,
            View::GuestOnly => &self.guest_only,
        };
        map.iter().map(|(s, n)| format!("{s} {n}")).collect()
    }
}

/// The target facts the analysis prints.
#[derive(Clone, Debug, Default)]
pub struct VmTarget {
    pub image: String,
    pub vcpus: u32,
    pub backend: String,
    pub mode: String,
}

fn frame_name(modules: &ModuleTable, syms: &SymbolTable, l: &Loc) -> String {
    syms.function_name(modules, l).replace([';', '\n'], ":")
}

/// The default pairing window: twice the mean interval between consecutive snapshots of
/// the same vCPU (the shorter 90% of intervals, so idle stretches do not widen it), and
/// at least `host_period_ns` (one host sampling period).
///
/// Why twice the mean: the shim takes snapshots at random (exponentially distributed)
/// sample points, so the distance from a host sample to the nearest snapshot of its vCPU
/// is exponential with half the mean interval: a window of one mean interval pairs
/// 1 - e^-2 = 86% of the samples in KVM_RUN, two pair 98% (the trimmed mean is about
/// 0.75 of the true one, so about 95%). Snapshots at a regular period P are never more
/// than P/2 from a sample, well inside the window.
pub fn default_window(trace: &VmTrace, host_period_ns: u64) -> u64 {
    let mut by_vcpu: HashMap<u32, Vec<u64>> = HashMap::new();
    for s in &trace.snapshots {
        by_vcpu.entry(s.vcpu).or_default().push(s.time_ns);
    }
    let mut gaps: Vec<u64> = Vec::new();
    for times in by_vcpu.values_mut() {
        times.sort_unstable();
        gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
    }
    gaps.sort_unstable();
    let keep = (gaps.len() * 9).div_ceil(10);
    let shorter = &gaps[..keep];
    let mean = match shorter.len() as u64 {
        0 => 0,
        n => shorter.iter().sum::<u64>() / n,
    };
    mean.saturating_mul(2).max(host_period_ns)
}

/// Pairs, classifies and builds the unified stacks. `window_ns` is the pairing window.
pub fn analyze(
    trace: &VmTrace,
    modules: &ModuleTable,
    syms: &SymbolTable,
    target: &VmTarget,
    window_ns: u64,
) -> VmAnalysis {
    let names: Vec<Vec<String>> = trace
        .stacks
        .iter()
        .map(|s| s.iter().map(|l| frame_name(modules, syms, l)).collect())
        .collect();
    let is_kernel = |l: &Loc| modules.get(l.module).kind == ModuleKind::Kernel;
    let in_kvm_run_kernel = |stack: u32| -> bool {
        let locs = &trace.stacks[stack as usize];
        locs.iter()
            .zip(&names[stack as usize])
            .any(|(l, n)| is_kernel(l) && KVM_RUN_FRAMES.iter().any(|k| n == k))
    };
    let in_vcpu_ioctl = |stack: u32| -> bool {
        let locs = &trace.stacks[stack as usize];
        locs.iter()
            .zip(&names[stack as usize])
            .any(|(l, n)| is_kernel(l) && n == "kvm_vcpu_ioctl")
    };
    let vcpu_of: HashMap<u32, u32> = trace.vcpus.iter().map(|v| (v.tid, v.vcpu)).collect();

    let points: Vec<HostPoint> = trace
        .samples
        .iter()
        .map(|s| HostPoint {
            time_ns: s.time_ns,
            tid: s.tid,
            in_kvm_run: s.mode.is_guest() || in_kvm_run_kernel(s.stack),
        })
        .collect();
    let guest: Vec<GuestPoint> = trace
        .snapshots
        .iter()
        .map(|g| GuestPoint {
            time_ns: g.time_ns,
            vm: 0,
            vcpu: g.vcpu,
        })
        .collect();
    let pairing = pairing::pair(&points, &guest, &trace.vcpus, window_ns);

    // The host part of guest-mode samples: the thread's vCPU loop up to KVM_RUN, from its
    // in-kernel KVM_RUN samples (root first, kernel frames below the ioctl dropped).
    let mut kvm_run_prefix: HashMap<u32, Vec<String>> = HashMap::new();
    let mut any_prefix: Option<Vec<String>> = None;
    for s in &trace.samples {
        if s.mode.is_guest() || !vcpu_of.contains_key(&s.tid) || !in_kvm_run_kernel(s.stack) {
            continue;
        }
        let locs = &trace.stacks[s.stack as usize];
        let n = &names[s.stack as usize];
        // Root first: user frames, then kernel frames up to and including the ioctl.
        let mut prefix = Vec::new();
        for (l, name) in locs.iter().zip(n).rev() {
            prefix.push(name.clone());
            if is_kernel(l) && name == "kvm_arch_vcpu_ioctl_run" {
                break;
            }
        }
        any_prefix = Some(prefix.clone());
        kvm_run_prefix.insert(s.tid, prefix);
    }
    // vCPU threads run the same loop: one thread's ioctl path stands for another's.
    let fallback_prefix = any_prefix.unwrap_or_else(|| vec!["[KVM_RUN]".to_owned()]);

    let mut unified: BTreeMap<String, u64> = BTreeMap::new();
    let mut host_only: BTreeMap<String, u64> = BTreeMap::new();
    let mut guest_only: BTreeMap<String, u64> = BTreeMap::new();
    let mut guest_frames = std::collections::BTreeSet::new();
    let mut by_activity: BTreeMap<Activity, BTreeMap<String, u64>> = BTreeMap::new();
    let mut check = PairCheck::default();
    let mut per_vcpu: HashMap<u32, (u64, u64)> = HashMap::new();

    let guest_part = |vcpu: u32, stack: u32, out: &mut Vec<String>| {
        out.push(format!("[guest vcpu{vcpu}]"));
        out.extend(names[stack as usize].iter().rev().cloned());
    };
    for (s, outcome) in trace.samples.iter().zip(&pairing.outcomes) {
        let n = &names[s.stack as usize];
        let mut host: Vec<String> = if s.mode.is_guest() {
            let mut h = kvm_run_prefix
                .get(&s.tid)
                .unwrap_or(&fallback_prefix)
                .clone();
            h.push("[in guest]".to_owned());
            h
        } else {
            n.iter().rev().cloned().collect()
        };
        if let Some(&vcpu) = vcpu_of.get(&s.tid) {
            host.insert(0, format!("[vcpu{vcpu} thread]"));
            per_vcpu.entry(vcpu).or_default().0 += 1;
        }
        // What the shim marked for this sample; the kernel's own frames say whether a
        // kernel-mode sample was inside KVM's ioctls.
        let phase = trace.phases.get(&(s.tid, s.time_ns)).copied();
        let linux_call = matches!(phase, Some(ShimPhase::LinuxTrap | ShimPhase::Blocked));
        let activity = match (vcpu_of.get(&s.tid), s.mode) {
            (None, _) => Activity::OtherThreads,
            (Some(_), m) if m.is_guest() => Activity::GuestRunning,
            (Some(_), _) if in_kvm_run_kernel(s.stack) => Activity::KvmKernel,
            (Some(_), m) if m.is_kernel() && in_vcpu_ioctl(s.stack) => Activity::KvmStateIoctls,
            (Some(_), m) if m.is_kernel() && linux_call => Activity::LinuxKernel,
            (Some(_), m) if m.is_kernel() => Activity::VcpuKernelOther,
            (Some(_), _) => Activity::of_shim_phase(phase),
        };
        *by_activity
            .entry(activity)
            .or_default()
            .entry(host.join(";"))
            .or_default() += 1;
        *host_only.entry(host.join(";")).or_default() += 1;
        let mut line = host;
        match *outcome {
            Outcome::Paired { snapshot, .. } => {
                let g = trace.snapshots[snapshot];
                if let Some(&vcpu) = vcpu_of.get(&s.tid) {
                    if vcpu != g.vcpu {
                        check.cross_vcpu += 1;
                    }
                    per_vcpu.entry(vcpu).or_default().1 += 1;
                }
                guest_part(g.vcpu, g.stack, &mut line);
            }
            // No snapshot near: the sample's own guest IP is the only guest frame.
            Outcome::Unpaired(_) if s.mode.is_guest() => {
                if let Some(leaf) = n.first() {
                    guest_frames.insert(leaf.clone());
                    line.push(leaf.clone());
                }
            }
            Outcome::Unpaired(_) => {}
        }
        *unified.entry(line.join(";")).or_default() += 1;
    }
    for g in &trace.snapshots {
        let mut line = Vec::new();
        guest_part(g.vcpu, g.stack, &mut line);
        for f in &line {
            guest_frames.insert(f.clone());
        }
        *guest_only.entry(line.join(";")).or_default() += 1;
    }

    let total = trace.samples.len() as u64;
    let activities = by_activity
        .into_iter()
        .map(|(activity, stacks)| {
            let samples: u64 = stacks.values().sum();
            let mut top: Vec<(String, u64)> = stacks.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            top.truncate(3);
            ActivityRow {
                activity,
                description: activity.describe().to_owned(),
                samples,
                pct: pct(samples, total),
                top_stacks: top,
            }
        })
        .collect();
    let shim = trace
        .stats
        .iter()
        .map(|v| {
            let (samples, paired) = per_vcpu.get(&v.vcpu).copied().unwrap_or_default();
            ShimRow {
                vcpu: v.vcpu,
                tid: trace.vcpus.iter().find(|t| t.vcpu == v.vcpu).map(|t| t.tid),
                exits: v.exits.iter().cloned().collect(),
                run_ns: v.run_ns,
                trace_ns: v.trace_ns,
                snapshot_ns: v.snapshot_ns,
                instructions: v.instructions,
                branches: v.branches,
                snapshots: v.snapshots,
                agent_snapshots: trace
                    .snapshots
                    .iter()
                    .filter(|s| s.vcpu == v.vcpu && s.agent)
                    .count() as u64,
                lost_snapshots: v.lost_snapshots,
                frozen_events: v.frozen_events,
                samples,
                paired,
            }
        })
        .collect();
    let paired_pct = pairing.stats.paired_share() * 100.0;
    VmAnalysis {
        report: VmReport {
            image: target.image.clone(),
            vcpus: target.vcpus,
            backend: target.backend.clone(),
            mode: target.mode.clone(),
            pairing: pairing.stats,
            paired_pct,
            check,
            activities,
            shim,
        },
        unified,
        host_only,
        guest_only,
        guest_frames,
    }
}

fn ms(ns: u64) -> String {
    format!("{:.2} ms", ns as f64 / 1e6)
}

fn us(ns: u64) -> String {
    format!("{:.1} us", ns as f64 / 1e3)
}

/// The VM sections of the text report.
pub fn text(r: &VmReport, mut w: impl Write) -> io::Result<()> {
    writeln!(w, "#")?;
    writeln!(
        w,
        "# Guest: {} ({} vCPU{}, {} LBR, {} mode)",
        r.image,
        r.vcpus,
        if r.vcpus == 1 { "" } else { "s" },
        r.backend,
        r.mode
    )?;
    writeln!(w, "#")?;
    writeln!(w, "# Where the host spent its time (share of host samples)")?;
    writeln!(w, "#")?;
    writeln!(w, "#   Share    Samples  Activity")?;
    for a in &r.activities {
        writeln!(w, "  {:6.2}%  {:9}  {}", a.pct, a.samples, a.description)?;
        for (stack, n) in &a.top_stacks {
            writeln!(w, "  {:>17}    {n:>6}  {}", "", shorten(stack))?;
        }
    }
    writeln!(w, "#")?;
    writeln!(w, "# Shim accounting per vCPU")?;
    writeln!(w, "#")?;
    for s in &r.shim {
        let exits: Vec<String> = s.exits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let total: u64 = s.exits.values().sum();
        writeln!(
            w,
            "  vcpu{} (tid {}): {} in KVM_RUN, {} exits ({}), {} in the LBR hook (tracing{}), {} snapshots ({}{} lost), {} branches frozen{}",
            s.vcpu,
            s.tid.map_or_else(|| "-".to_owned(), |t| t.to_string()),
            ms(s.run_ns),
            total,
            if exits.is_empty() {
                "none".to_owned()
            } else {
                exits.join(", ")
            },
            ms(s.trace_ns),
            if s.snapshot_ns > 0 {
                format!(", snapshots {}", ms(s.snapshot_ns))
            } else {
                " and snapshots".to_owned()
            },
            s.snapshots,
            if s.agent_snapshots > 0 {
                format!("{} by the guest agent, ", s.agent_snapshots)
            } else {
                String::new()
            },
            s.lost_snapshots,
            s.frozen_events,
            match (s.instructions, s.branches) {
                (Some(i), Some(b)) => format!(", {i} instructions, {b} branches retired"),
                _ => String::new(),
            }
        )?;
    }
    let p = &r.pairing;
    writeln!(w, "#")?;
    writeln!(
        w,
        "# Pairing (host samples in KVM_RUN with the same vCPU's nearest snapshot, window {})",
        us(p.window_ns)
    )?;
    writeln!(w, "#")?;
    writeln!(
        w,
        "  {} of {} samples in KVM_RUN paired ({:.1}%); distance p50 {}, p90 {}, p99 {}, max {}",
        p.paired,
        p.in_kvm_run,
        r.paired_pct,
        us(p.distance_p50_ns),
        us(p.distance_p90_ns),
        us(p.distance_p99_ns),
        us(p.distance_max_ns)
    )?;
    writeln!(
        w,
        "  unpaired: {} with no snapshot in the window, {} on a vCPU thread outside KVM_RUN, {} not on a vCPU thread",
        p.no_snapshot_in_window, p.outside_kvm_run, p.not_vcpu_thread
    )?;
    Ok(())
}

/// A long folded stack shortened for the text table: its root, the innermost Rust frame
/// (the shim code that made a system call, say) and the last three frames.
fn shorten(stack: &str) -> String {
    let frames: Vec<&str> = stack.split(';').collect();
    if frames.len() <= 6 {
        return frames.join(" > ");
    }
    let tail = frames.len() - 3;
    let mut out = vec![frames[0]];
    if let Some(i) = (1..tail).rev().find(|&i| frames[i].contains("::")) {
        if i > 1 {
            out.push("...");
        }
        out.push(frames[i]);
        if i + 1 < tail {
            out.push("...");
        }
    } else {
        out.push("...");
    }
    out.extend(&frames[tail..]);
    out.join(" > ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use crate::lbr::tests::snapshot;
    use crate::symbols::NoSymbols;
    use lbrprof_data::model::{CpuMode, Event, Frame, HostSample, VcpuStats, VcpuThread};

    fn vcpu(vcpu: u32, tid: u32) -> Event {
        Event::Vcpu(VcpuThread {
            time_ns: 0,
            vm: 0,
            vcpu,
            pid: 1,
            tid,
        })
    }

    fn guest_sample(time_ns: u64, tid: u32, ip: u64) -> Event {
        Event::Sample(HostSample {
            time_ns,
            pid: 1,
            tid,
            period: 1,
            ip,
            mode: CpuMode::GuestUser,
            callchain: vec![],
            ..HostSample::default()
        })
    }

    fn user_sample(time_ns: u64, tid: u32) -> Event {
        Event::Sample(HostSample {
            time_ns,
            pid: 1,
            tid,
            period: 1,
            ip: 0x1000,
            mode: CpuMode::User,
            callchain: vec![Frame {
                addr: 0x1000,
                mode: CpuMode::User,
            }],
            ..HostSample::default()
        })
    }

    fn snap(time_ns: u64, vcpu: u32, ip: u64) -> Event {
        let mut s = snapshot(0, &[(0x10, 0x20, 0)]);
        s.host_time_ns = time_ns;
        s.vcpu = vcpu;
        s.guest_ip = ip;
        s.guest_stack = vec![0x500];
        Event::Snapshot(s)
    }

    fn analyzed(events: &[Event], window: u64) -> VmAnalysis {
        let mut a = Aggregator::new(AggregateOptions {
            vm: true,
            ..AggregateOptions::default()
        });
        for e in events {
            a.add(e);
        }
        let p = a.finish();
        let syms = SymbolTable::build(&p, &NoSymbols);
        analyze(
            p.vm.as_ref().unwrap(),
            &p.spaces.modules,
            &syms,
            &VmTarget::default(),
            window,
        )
    }

    #[test]
    fn guest_mode_samples_pair_with_their_own_vcpus_snapshots() {
        let events = [
            vcpu(0, 10),
            vcpu(1, 11),
            snap(1_000, 0, 0xa00),
            snap(1_050, 1, 0xb00),
            guest_sample(1_040, 10, 0xa01),
            guest_sample(1_040, 11, 0xb01),
            user_sample(1_040, 10),
            user_sample(1_040, 99),
            guest_sample(9_000, 10, 0xa02),
        ];
        let a = analyzed(&events, 100);
        let p = &a.report.pairing;
        assert_eq!((p.samples, p.in_kvm_run, p.paired), (5, 3, 2));
        assert_eq!(
            (
                p.outside_kvm_run,
                p.not_vcpu_thread,
                p.no_snapshot_in_window
            ),
            (1, 1, 1)
        );
        assert_eq!(a.report.check.cross_vcpu, 0);
        // Unified: vcpu0's guest sample carries vcpu0's guest stack (snapshot ip 0xa00).
        let lines = a.folded(View::Unified);
        assert!(
            lines.iter().any(|l| l
                .starts_with("[vcpu0 thread];[KVM_RUN];[in guest];[guest vcpu0];")
                && l.contains("0xa00")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("[guest vcpu1]")
                && l.contains("0xb00")
                && l.starts_with("[vcpu1 thread]")),
            "{lines:#?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("[vcpu0") && l.contains("[guest vcpu1]"))
        );
        // Guest-only: one stack per snapshot; host-only: no guest frames.
        assert_eq!(a.folded(View::GuestOnly).len(), 2);
        assert!(
            a.folded(View::HostOnly)
                .iter()
                .all(|l| !l.contains("[guest"))
        );
        let act: Vec<Activity> = a.report.activities.iter().map(|r| r.activity).collect();
        assert!(act.contains(&Activity::GuestRunning) && act.contains(&Activity::OtherThreads));
        let mut text_out = Vec::new();
        text(&a.report, &mut text_out).unwrap();
        let t = String::from_utf8(text_out).unwrap();
        assert!(t.contains("2 of 3 samples in KVM_RUN paired"), "{t}");
    }

    #[test]
    fn the_shim_table_counts_agent_snapshots_per_vcpu() {
        let agent = |time_ns, vcpu| {
            let Event::Snapshot(mut s) = snap(time_ns, vcpu, 0xa00) else {
                unreachable!()
            };
            s.reason = lbrprof_data::model::SnapshotReason::Agent;
            Event::Snapshot(s)
        };
        let stats = |vcpu, snapshots| {
            Event::VcpuStats(VcpuStats {
                vcpu,
                snapshots,
                ..VcpuStats::default()
            })
        };
        let events = [
            vcpu(0, 10),
            vcpu(1, 11),
            agent(1_000, 0),
            agent(2_000, 0),
            snap(3_000, 0, 0xa00),
            agent(1_500, 1),
            stats(0, 3),
            stats(1, 1),
        ];
        let a = analyzed(&events, 100);
        let rows: Vec<(u32, u64, u64)> = a
            .report
            .shim
            .iter()
            .map(|r| (r.vcpu, r.snapshots, r.agent_snapshots))
            .collect();
        assert_eq!(rows, [(0, 3, 2), (1, 1, 1)]);
        let mut out = Vec::new();
        text(&a.report, &mut out).unwrap();
        let t = String::from_utf8(out).unwrap();
        assert!(
            t.contains("3 snapshots (2 by the guest agent, 0 lost)"),
            "{t}"
        );
    }

    #[test]
    fn default_window_is_twice_the_trimmed_mean_snapshot_interval_or_the_host_period() {
        let mut t = VmTrace::default();
        assert_eq!(default_window(&t, 1_000), 1_000);
        for (time_ns, vcpu) in [(0, 0), (10_000, 0), (30_000, 0), (5, 1), (12_005, 1)] {
            t.snapshots.push(VmSnapshot {
                time_ns,
                vcpu,
                stack: 0,
                agent: false,
            });
        }
        // Gaps 10000, 20000 (vCPU 0) and 12000 (vCPU 1): all three kept (90% of 3,
        // rounded up), mean 14000, window 28000.
        assert_eq!(default_window(&t, 1_000), 28_000);
        assert_eq!(default_window(&t, 50_000), 50_000);
        // An idle stretch (the longest tenth of the gaps) does not widen the window.
        let mut t = VmTrace::default();
        let mut time_ns = 0;
        for i in 0..20u64 {
            time_ns += if i == 10 { 1_000_000_000 } else { 1_000 };
            t.snapshots.push(VmSnapshot {
                time_ns,
                vcpu: 0,
                stack: 0,
                agent: false,
            });
        }
        // 19 gaps, 18 kept (ceil 17.1): all 1000 ns.
        assert_eq!(default_window(&t, 1), 2_000);
    }

    #[test]
    fn shim_time_is_classified_by_the_phase_the_shim_marked() {
        let kernel_sample = |time_ns: u64, tid: u32| {
            Event::Sample(HostSample {
                time_ns,
                pid: 1,
                tid,
                period: 1,
                ip: 0xffff_ffff_8100_0000,
                mode: CpuMode::Kernel,
                ..HostSample::default()
            })
        };
        let phases = |tid: u32, samples: &[(u64, ShimPhase)]| {
            Event::SamplePhases(lbrprof_data::model::SamplePhases {
                vm: 0,
                tid,
                samples: samples.to_vec(),
            })
        };
        let events = [
            vcpu(0, 10),
            user_sample(100, 10),
            user_sample(200, 10),
            user_sample(300, 10),
            user_sample(400, 10),
            user_sample(500, 10),
            kernel_sample(600, 10),
            kernel_sample(700, 10),
            user_sample(800, 10),
            phases(
                10,
                &[
                    (100, ShimPhase::Tracing),
                    (200, ShimPhase::Snapshot),
                    (300, ShimPhase::Devices),
                    (400, ShimPhase::LinuxTrap),
                    (500, ShimPhase::Loop),
                    (600, ShimPhase::LinuxTrap),
                    (700, ShimPhase::Loop),
                ],
            ),
            // Another thread's phase at the same time says nothing about thread 10.
            phases(11, &[(800, ShimPhase::Tracing)]),
        ];
        let a = analyzed(&events, 100);
        let rows: Vec<(Activity, u64)> = a
            .report
            .activities
            .iter()
            .map(|r| (r.activity, r.samples))
            .collect();
        assert_eq!(
            rows,
            [
                (Activity::ShimTracing, 1),
                (Activity::ShimPmu, 1),
                (Activity::ShimDevices, 1),
                (Activity::ShimLinux, 1),
                (Activity::ShimOther, 1),
                (Activity::ShimUnknown, 1),
                (Activity::LinuxKernel, 1),
                (Activity::VcpuKernelOther, 1),
            ]
        );
    }

    #[test]
    fn long_stacks_keep_root_innermost_rust_frame_and_leaf() {
        assert_eq!(shorten("a;b;c"), "a > b > c");
        assert_eq!(
            shorten("[vcpu0 thread];start;x::run_loop;y::regs;ioctl;entry;sys;kvm_get_regs;load"),
            "[vcpu0 thread] > ... > y::regs > ... > sys > kvm_get_regs > load"
        );
        assert_eq!(shorten("r;a;b;c;d;e;f;g"), "r > ... > e > f > g");
    }

    #[test]
    fn empty_vm_trace() {
        let a = analyzed(&[], 1_000);
        assert_eq!(a.report.pairing.samples, 0);
        assert_eq!(a.report.paired_pct, 100.0);
        assert!(a.unified.is_empty() && a.guest_only.is_empty());
    }
}
