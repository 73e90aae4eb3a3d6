//! Host capability facts and the sampling decision made from them.
//!
//! [`HostFacts::probe`] gathers what this machine offers for host sampling (is there a
//! hardware PMU, how deep is its LBR, may we see kernel call chains, …) into a plain
//! struct. [`decide`] is a pure function from those facts and the user's request to a
//! [`SamplingChoice`] *with the reason for it*, so every branch of the policy is unit-tested
//! with synthetic facts and no PMU.

use std::fmt;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where the kernel and the CPU expose the facts, under their header/SDM names.
mod abi {
    /// The core PMU's sysfs directory (x86 `cpu`).
    pub const CPU_PMU_SYSFS: &str = "/sys/bus/event_source/devices/cpu";
    /// The LBR depth the kernel's PMU driver exports (`x86_pmu.lbr_nr`).
    pub const LBR_DEPTH_SYSFS: &str = "/sys/bus/event_source/devices/cpu/caps/branches";
    /// `IA32_PERF_CAPABILITIES` (SDM vol. 4, MSR 0x345), read through the msr driver.
    pub const MSR_IA32_PERF_CAPABILITIES: u64 = 0x345;
    /// `IA32_PERF_CAPABILITIES[5:0]`: LBR format.
    pub const PERF_CAP_LBR_FMT_MASK: u64 = 0x3f;
    /// `CAP_SYS_ADMIN` (linux/capability.h).
    pub const CAP_SYS_ADMIN: u32 = 21;
    /// `CAP_PERFMON` (linux/capability.h).
    pub const CAP_PERFMON: u32 = 38;
}

use abi::*;

/// What this host offers for sampling. Plain data: fill it by hand in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    pub hostname: String,
    pub cpu_vendor: String,
    pub cpu_model: String,
    /// The core PMU's sysfs directory exists.
    pub pmu_sysfs: bool,
    /// A hardware `cycles` event could be opened on this process.
    pub cycles_opens: bool,
    /// LBR depth from `caps/branches`, 0 when absent.
    pub lbr_depth: u32,
    /// LBR format from `IA32_PERF_CAPABILITIES[5:0]`, when `/dev/cpu/0/msr` was readable.
    pub lbr_format: Option<u8>,
    /// `/proc/sys/kernel/perf_event_paranoid`.
    pub perf_event_paranoid: Option<i32>,
    /// Root, CAP_PERFMON or CAP_SYS_ADMIN: paranoid settings do not apply.
    pub privileged: bool,
    /// `/proc/sys/kernel/kptr_restrict`.
    pub kptr_restrict: Option<i32>,
}

impl HostFacts {
    /// Look at this machine. Never fails: what cannot be read is recorded as absent.
    pub fn probe() -> HostFacts {
        let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        let (cpu_vendor, cpu_model) = cpuinfo();
        let pmu_sysfs = Path::new(CPU_PMU_SYSFS).is_dir();
        HostFacts {
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
            cpu_vendor,
            cpu_model,
            pmu_sysfs,
            cycles_opens: pmu_sysfs && cycles_event_opens(),
            lbr_depth: read(LBR_DEPTH_SYSFS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            lbr_format: read_perf_capabilities().map(|c| (c & PERF_CAP_LBR_FMT_MASK) as u8),
            perf_event_paranoid: read("/proc/sys/kernel/perf_event_paranoid")
                .and_then(|s| s.parse().ok()),
            privileged: privileged(),
            kptr_restrict: read("/proc/sys/kernel/kptr_restrict").and_then(|s| s.parse().ok()),
        }
    }

    /// A hardware PMU we can sample with.
    pub fn pmu_present(&self) -> bool {
        self.pmu_sysfs && self.cycles_opens
    }

    /// May this process sample other processes at all?
    pub fn sampling_allowed(&self) -> bool {
        // Debian's perf_event_paranoid=3 (and above) forbids perf_event_open to
        // unprivileged users altogether.
        self.privileged || self.perf_event_paranoid.is_none_or(|p| p <= 2)
    }

    /// May samples include kernel call chains (and kernel IPs)?
    pub fn kernel_callchains_allowed(&self) -> bool {
        self.privileged || self.perf_event_paranoid.is_some_and(|p| p <= 1)
    }

    /// Are kernel addresses visible in /proc/kallsyms (for symbolizing them later)?
    pub fn kernel_symbols_visible(&self) -> bool {
        match self.kptr_restrict {
            Some(0) => true,
            Some(1) => self.privileged,
            _ => false,
        }
    }

    /// The model's [`lbrprof_data::model::HostInfo`] for a recording header.
    pub fn host_info(&self, choice: &SamplingChoice) -> lbrprof_data::model::HostInfo {
        lbrprof_data::model::HostInfo {
            hostname: self.hostname.clone(),
            kernel: self.kernel.clone(),
            cpu_vendor: self.cpu_vendor.clone(),
            cpu_model: self.cpu_model.clone(),
            pmu: match choice.event {
                EventKind::Cycles | EventKind::Hardware(_) => "cpu".into(),
                EventKind::CpuClock | EventKind::Software(_) => "software".into(),
                EventKind::Tracepoint { .. } => "tracepoint".into(),
            },
            lbr_depth: self.lbr_depth,
            lbr_format: self.lbr_format,
        }
    }
}

impl fmt::Display for HostFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        writeln!(f, "kernel:                 {}", self.kernel)?;
        writeln!(
            f,
            "cpu:                    {} {}",
            self.cpu_vendor, self.cpu_model
        )?;
        writeln!(
            f,
            "hardware PMU:           {}",
            match (self.pmu_sysfs, self.cycles_opens) {
                (true, true) => "yes (cycles opens)".to_owned(),
                (true, false) => format!("{CPU_PMU_SYSFS} exists but cycles does not open"),
                (false, _) => format!("no ({CPU_PMU_SYSFS} missing): software cpu-clock only"),
            }
        )?;
        if self.lbr_depth > 0 {
            writeln!(f, "LBR depth:              {}", self.lbr_depth)?;
        } else {
            writeln!(f, "LBR depth:              none (no caps/branches)")?;
        }
        match self.lbr_format {
            Some(fmt) => writeln!(
                f,
                "LBR format:             {fmt:#x} (IA32_PERF_CAPABILITIES[5:0])"
            )?,
            None => writeln!(
                f,
                "LBR format:             unknown (/dev/cpu/0/msr not readable)"
            )?,
        }
        match self.perf_event_paranoid {
            Some(p) => writeln!(f, "perf_event_paranoid:    {p}")?,
            None => writeln!(f, "perf_event_paranoid:    unknown")?,
        }
        writeln!(f, "privileged:             {}", yes_no(self.privileged))?;
        writeln!(
            f,
            "sampling other tasks:   {}",
            yes_no(self.sampling_allowed())
        )?;
        writeln!(
            f,
            "kernel call chains:     {}",
            yes_no(self.kernel_callchains_allowed())
        )?;
        match self.kptr_restrict {
            Some(k) => write!(
                f,
                "kptr_restrict:          {k} (kernel symbols {})",
                if self.kernel_symbols_visible() {
                    "visible"
                } else {
                    "hidden"
                }
            ),
            None => write!(f, "kptr_restrict:          unknown"),
        }
    }
}

/// The user's request (`--event`, `--branches`, `--call-graph`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplingRequest {
    pub event: EventRequest,
    /// Further events sampled beside `event` (`-e A,B,...`), in order; each sample
    /// records which one took it.
    pub more_events: Vec<EventKind>,
    pub branches: BranchRequest,
    pub call_graph: CallGraph,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventRequest {
    Auto,
    Cycles,
    CpuClock,
    /// Any other event by name ([`EventKind::parse`]).
    Event(EventKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchRequest {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallGraph {
    /// Frame-pointer call chains from the kernel (PERF_SAMPLE_CALLCHAIN).
    Fp,
    /// LBR call-stack mode (PERF_SAMPLE_BRANCH_CALL_STACK).
    Lbr,
    /// User registers and a copy of the top `stack_size` bytes of the user stack
    /// (PERF_SAMPLE_REGS_USER | PERF_SAMPLE_STACK_USER), unwound with the binaries' CFI
    /// ([`lbrprof_data::dwarf`]); kernel frames still come from the kernel.
    Dwarf { stack_size: u32 },
}

impl CallGraph {
    pub fn name(self) -> &'static str {
        match self {
            CallGraph::Fp => "fp",
            CallGraph::Lbr => "lbr",
            CallGraph::Dwarf { .. } => "dwarf",
        }
    }
}

/// The sampling event actually used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// PERF_COUNT_HW_CPU_CYCLES.
    Cycles,
    /// PERF_COUNT_SW_CPU_CLOCK.
    CpuClock,
    /// Another generic hardware event (PERF_TYPE_HARDWARE).
    Hardware(HardwareEvent),
    /// Another software event (PERF_TYPE_SOFTWARE).
    Software(SoftwareEvent),
    /// A kernel tracepoint (PERF_TYPE_TRACEPOINT), by its tracefs id.
    Tracepoint {
        /// `SUBSYSTEM:NAME`, as perf writes it.
        name: String,
        id: u64,
    },
}

/// The generic hardware events perf names (`perf list hw`), other than cycles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardwareEvent {
    /// PERF_COUNT_HW_INSTRUCTIONS.
    Instructions,
    /// PERF_COUNT_HW_BRANCH_INSTRUCTIONS.
    Branches,
    /// PERF_COUNT_HW_BRANCH_MISSES.
    BranchMisses,
    /// PERF_COUNT_HW_CACHE_REFERENCES.
    CacheReferences,
    /// PERF_COUNT_HW_CACHE_MISSES.
    CacheMisses,
    /// PERF_COUNT_HW_BUS_CYCLES.
    BusCycles,
    /// PERF_COUNT_HW_REF_CPU_CYCLES.
    RefCycles,
}

/// The software events perf names (`perf list sw`), other than cpu-clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftwareEvent {
    /// PERF_COUNT_SW_TASK_CLOCK.
    TaskClock,
    /// PERF_COUNT_SW_PAGE_FAULTS.
    PageFaults,
    /// PERF_COUNT_SW_PAGE_FAULTS_MIN.
    MinorFaults,
    /// PERF_COUNT_SW_PAGE_FAULTS_MAJ.
    MajorFaults,
    /// PERF_COUNT_SW_CONTEXT_SWITCHES.
    ContextSwitches,
    /// PERF_COUNT_SW_CPU_MIGRATIONS.
    CpuMigrations,
    /// PERF_COUNT_SW_ALIGNMENT_FAULTS.
    AlignmentFaults,
    /// PERF_COUNT_SW_EMULATION_FAULTS.
    EmulationFaults,
}

/// perf's names of the generic hardware events (and their aliases).
const HARDWARE_NAMES: &[(&str, Option<HardwareEvent>)] = &[
    ("cycles", None),
    ("cpu-cycles", None),
    ("instructions", Some(HardwareEvent::Instructions)),
    ("branches", Some(HardwareEvent::Branches)),
    ("branch-instructions", Some(HardwareEvent::Branches)),
    ("branch-misses", Some(HardwareEvent::BranchMisses)),
    ("cache-references", Some(HardwareEvent::CacheReferences)),
    ("cache-misses", Some(HardwareEvent::CacheMisses)),
    ("bus-cycles", Some(HardwareEvent::BusCycles)),
    ("ref-cycles", Some(HardwareEvent::RefCycles)),
];

/// perf's names of the software events (and their aliases).
const SOFTWARE_NAMES: &[(&str, Option<SoftwareEvent>)] = &[
    ("cpu-clock", None),
    ("task-clock", Some(SoftwareEvent::TaskClock)),
    ("page-faults", Some(SoftwareEvent::PageFaults)),
    ("faults", Some(SoftwareEvent::PageFaults)),
    ("minor-faults", Some(SoftwareEvent::MinorFaults)),
    ("major-faults", Some(SoftwareEvent::MajorFaults)),
    ("context-switches", Some(SoftwareEvent::ContextSwitches)),
    ("cs", Some(SoftwareEvent::ContextSwitches)),
    ("cpu-migrations", Some(SoftwareEvent::CpuMigrations)),
    ("migrations", Some(SoftwareEvent::CpuMigrations)),
    ("alignment-faults", Some(SoftwareEvent::AlignmentFaults)),
    ("emulation-faults", Some(SoftwareEvent::EmulationFaults)),
];

/// Where tracefs is usually mounted (`/sys/kernel/tracing`, or under debugfs).
pub const TRACEFS_ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// An event name lbrprof cannot sample.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventNameError {
    #[error(
        "unknown event '{0}': use a software event ({sw}), a hardware event ({hw}; needs a \
         hardware PMU) or a tracepoint SUBSYSTEM:NAME",
        sw = SOFTWARE_NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        hw = HARDWARE_NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    Unknown(String),
    #[error("no tracepoint '{name}' on this kernel (no {path})")]
    NoTracepoint { name: String, path: String },
    #[error(
        "tracepoint '{name}': tracefs is not mounted (mount it with `mount -t tracefs nodev \
         /sys/kernel/tracing`, as perf does)"
    )]
    NoTracefs { name: String },
    #[error("cannot read the tracepoint id of '{name}' ({path}): tracefs is not readable here")]
    BadTracepoint { name: String, path: String },
}

impl EventKind {
    /// The name perf uses.
    pub fn name(&self) -> String {
        match self {
            EventKind::Cycles => "cycles".into(),
            EventKind::CpuClock => "cpu-clock".into(),
            EventKind::Hardware(h) => HARDWARE_NAMES
                .iter()
                .find(|(_, e)| *e == Some(*h))
                .map_or("hardware", |(n, _)| n)
                .into(),
            EventKind::Software(s) => SOFTWARE_NAMES
                .iter()
                .find(|(_, e)| *e == Some(*s))
                .map_or("software", |(n, _)| n)
                .into(),
            EventKind::Tracepoint { name, .. } => name.clone(),
        }
    }

    /// Whether the event needs a hardware PMU.
    pub fn is_hardware(&self) -> bool {
        matches!(self, EventKind::Cycles | EventKind::Hardware(_))
    }

    /// The event perf calls `name`: a software or hardware event (perf's names and
    /// aliases), or a tracepoint `SUBSYSTEM:NAME`, whose id is read from
    /// `TRACEFS/events/SUBSYSTEM/NAME/id` under the first of `tracefs_roots` that has an
    /// `events` directory.
    pub fn parse(name: &str, tracefs_roots: &[&Path]) -> Result<EventKind, EventNameError> {
        if let Some((_, e)) = SOFTWARE_NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(e.map_or(EventKind::CpuClock, EventKind::Software));
        }
        if let Some((_, e)) = HARDWARE_NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(e.map_or(EventKind::Cycles, EventKind::Hardware));
        }
        let Some((subsystem, event)) = name.split_once(':') else {
            return Err(EventNameError::Unknown(name.into()));
        };
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !plain(subsystem) || !plain(event) {
            return Err(EventNameError::Unknown(name.into()));
        }
        let Some(root) = tracefs_roots.iter().find(|r| r.join("events").is_dir()) else {
            return Err(EventNameError::NoTracefs { name: name.into() });
        };
        let path = root.join("events").join(subsystem).join(event).join("id");
        let shown = path.display().to_string();
        match fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse() {
                Ok(id) => Ok(EventKind::Tracepoint {
                    name: name.into(),
                    id,
                }),
                Err(_) => Err(EventNameError::BadTracepoint {
                    name: name.into(),
                    path: shown,
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(EventNameError::NoTracepoint {
                    name: name.into(),
                    path: shown,
                })
            }
            Err(_) => Err(EventNameError::BadTracepoint {
                name: name.into(),
                path: shown,
            }),
        }
    }
}

/// What to sample, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplingChoice {
    pub event: EventKind,
    /// Further events, sampled beside `event` on the same ring buffers.
    pub more_events: Vec<EventKind>,
    pub branch_stacks: bool,
    pub call_graph: CallGraph,
    /// Sample kernel IPs and kernel call chains.
    pub kernel: bool,
    /// One line: why this event, branch setting and kernel setting.
    pub reason: String,
}

impl SamplingChoice {
    /// Every sampled event, `event` first: a sample's event index is its place here.
    pub fn events(&self) -> Vec<EventKind> {
        std::iter::once(self.event.clone())
            .chain(self.more_events.iter().cloned())
            .collect()
    }

    /// The sampled events by perf's name, joined with commas.
    pub fn event_names(&self) -> String {
        self.events()
            .iter()
            .map(EventKind::name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A request this host cannot satisfy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecisionError {
    #[error(
        "perf_event_open is not allowed for unprivileged users here (perf_event_paranoid is \
         {0}); run as root or with CAP_PERFMON, or lower it with `sysctl \
         kernel.perf_event_paranoid=1` (lbrprof report/info on existing recordings still work)"
    )]
    NotPermitted(i32),
    #[error(
        "--event cycles needs a hardware PMU, and this host has none ({0}); use --event cpu-clock"
    )]
    NoPmu(&'static str),
    #[error(
        "the hardware event '{event}' needs a hardware PMU, and this host has none ({why}); \
         software events and tracepoints work here (e.g. -e cpu-clock, -e page-faults, \
         -e sched:sched_switch)"
    )]
    NoPmuFor { event: String, why: &'static str },
    #[error("--branches on needs a hardware PMU with LBR: {0}")]
    NoBranches(&'static str),
    #[error("--call-graph lbr needs LBR branch stacks: {0}")]
    NoLbrCallGraph(&'static str),
}

/// Choose the event, branch stacks and kernel visibility for a recording.
pub fn decide(facts: &HostFacts, req: SamplingRequest) -> Result<SamplingChoice, DecisionError> {
    if !facts.sampling_allowed() {
        return Err(DecisionError::NotPermitted(
            facts.perf_event_paranoid.unwrap_or_default(),
        ));
    }
    let no_pmu_why = if !facts.pmu_sysfs {
        "no /sys/bus/event_source/devices/cpu"
    } else {
        "the cycles event does not open"
    };
    let (event, event_why) = match req.event {
        EventRequest::Auto if facts.pmu_present() => {
            (EventKind::Cycles, "hardware PMU present".to_owned())
        }
        EventRequest::Auto => (
            EventKind::CpuClock,
            format!("no hardware PMU: {no_pmu_why}"),
        ),
        EventRequest::Cycles if facts.pmu_present() => (EventKind::Cycles, "requested".into()),
        EventRequest::Cycles => return Err(DecisionError::NoPmu(no_pmu_why)),
        EventRequest::CpuClock => (EventKind::CpuClock, "requested".into()),
        EventRequest::Event(e) if e.is_hardware() && !facts.pmu_present() => {
            return Err(DecisionError::NoPmuFor {
                event: e.name(),
                why: no_pmu_why,
            });
        }
        EventRequest::Event(e) => (e, "requested".into()),
    };
    if let Some(e) = req
        .more_events
        .iter()
        .find(|e| e.is_hardware() && !facts.pmu_present())
    {
        return Err(DecisionError::NoPmuFor {
            event: e.name(),
            why: no_pmu_why,
        });
    }
    let lbr_missing_why = if !req.more_events.is_empty() {
        "branch stacks need the cycles event alone"
    } else if event != EventKind::Cycles {
        if facts.pmu_present() {
            "branch stacks need the cycles event"
        } else {
            "no hardware PMU"
        }
    } else if facts.lbr_depth == 0 {
        "the PMU has no LBR (caps/branches missing or 0)"
    } else {
        ""
    };
    let lbr_usable = lbr_missing_why.is_empty();
    let (branch_stacks, branch_why) = match req.branches {
        BranchRequest::Off => (false, "branch stacks off (requested)".to_owned()),
        BranchRequest::On | BranchRequest::Auto if lbr_usable => (
            true,
            format!("branch stacks on (LBR depth {})", facts.lbr_depth),
        ),
        BranchRequest::On => return Err(DecisionError::NoBranches(lbr_missing_why)),
        BranchRequest::Auto => (false, format!("no branch stacks: {lbr_missing_why}")),
    };
    if req.call_graph == CallGraph::Lbr && !lbr_usable {
        return Err(DecisionError::NoLbrCallGraph(lbr_missing_why));
    }
    let kernel = facts.kernel_callchains_allowed();
    let kernel_why = if kernel {
        "kernel call chains on"
    } else {
        "user space only (perf_event_paranoid >= 2 and not privileged)"
    };
    let names = std::iter::once(&event)
        .chain(&req.more_events)
        .map(EventKind::name)
        .collect::<Vec<_>>();
    let reason = format!(
        "event{} {} ({event_why}); {branch_why}; {kernel_why}",
        if names.len() > 1 { "s" } else { "" },
        names.join(", ")
    );
    Ok(SamplingChoice {
        event,
        more_events: req.more_events,
        branch_stacks,
        call_graph: req.call_graph,
        kernel,
        reason,
    })
}

fn cpuinfo() -> (String, String) {
    let text = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    (field("vendor_id"), field("model name"))
}

/// Whether a hardware `cycles` sampling event opens on this process (a PMU is present
/// and usable).
fn cycles_event_opens() -> bool {
    use perf_event_open::config::{Cpu, Opts, Proc, SampleOn};
    use perf_event_open::count::Counter;
    use perf_event_open::event::hw::Hardware;

    let mut opts = Opts::default();
    opts.exclude.kernel = true;
    opts.exclude.hv = true;
    opts.sample_on = SampleOn::Freq(1000);
    Counter::new(Hardware::CpuCycle, (Proc::CURRENT, Cpu::ALL), opts).is_ok()
}

/// IA32_PERF_CAPABILITIES through the msr driver, when loaded and readable (root).
fn read_perf_capabilities() -> Option<u64> {
    let file = fs::File::open("/dev/cpu/0/msr").ok()?;
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, MSR_IA32_PERF_CAPABILITIES)
        .ok()?;
    Some(u64::from_le_bytes(buf))
}

/// Root, or CAP_PERFMON / CAP_SYS_ADMIN in the effective set (from /proc/self/status).
fn privileged() -> bool {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let uid_root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    uid_root || cap_eff & (1 << CAP_PERFMON) != 0 || cap_eff & (1 << CAP_SYS_ADMIN) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intel_with_lbr() -> HostFacts {
        HostFacts {
            pmu_sysfs: true,
            cycles_opens: true,
            lbr_depth: 32,
            lbr_format: Some(5),
            perf_event_paranoid: Some(2),
            privileged: true,
            kptr_restrict: Some(0),
            ..HostFacts::default()
        }
    }

    fn no_pmu() -> HostFacts {
        HostFacts {
            pmu_sysfs: false,
            cycles_opens: false,
            lbr_depth: 0,
            perf_event_paranoid: Some(2),
            privileged: true,
            ..HostFacts::default()
        }
    }

    fn req(event: EventRequest, branches: BranchRequest, call_graph: CallGraph) -> SamplingRequest {
        SamplingRequest {
            event,
            more_events: Vec::new(),
            branches,
            call_graph,
        }
    }

    const AUTO: SamplingRequest = SamplingRequest {
        event: EventRequest::Auto,
        more_events: Vec::new(),
        branches: BranchRequest::Auto,
        call_graph: CallGraph::Fp,
    };

    #[test]
    fn auto_picks_cycles_and_branches_with_lbr() {
        let c = decide(&intel_with_lbr(), AUTO).unwrap();
        assert_eq!(c.event, EventKind::Cycles);
        assert!(c.branch_stacks);
        assert!(c.kernel);
        assert!(c.reason.contains("hardware PMU present"), "{}", c.reason);
        assert!(c.reason.contains("LBR depth 32"), "{}", c.reason);
    }

    #[test]
    fn auto_falls_back_to_cpu_clock_without_pmu() {
        let c = decide(&no_pmu(), AUTO).unwrap();
        assert_eq!(c.event, EventKind::CpuClock);
        assert!(!c.branch_stacks);
        assert!(c.reason.contains("no hardware PMU"), "{}", c.reason);
        assert!(
            c.reason.contains("/sys/bus/event_source/devices/cpu"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn auto_explains_a_pmu_whose_cycles_do_not_open() {
        let facts = HostFacts {
            cycles_opens: false,
            ..intel_with_lbr()
        };
        let c = decide(&facts, AUTO).unwrap();
        assert_eq!(c.event, EventKind::CpuClock);
        assert!(
            c.reason.contains("cycles event does not open"),
            "{}",
            c.reason
        );
    }

    #[test]
    fn pmu_without_lbr_gives_cycles_without_branches() {
        let facts = HostFacts {
            lbr_depth: 0,
            ..intel_with_lbr()
        };
        let c = decide(&facts, AUTO).unwrap();
        assert_eq!(c.event, EventKind::Cycles);
        assert!(!c.branch_stacks);
        assert!(c.reason.contains("no LBR"), "{}", c.reason);
        assert_eq!(
            decide(
                &facts,
                req(EventRequest::Auto, BranchRequest::On, CallGraph::Fp)
            ),
            Err(DecisionError::NoBranches(
                "the PMU has no LBR (caps/branches missing or 0)"
            ))
        );
    }

    #[test]
    fn explicit_event_choices() {
        let c = decide(
            &intel_with_lbr(),
            req(EventRequest::CpuClock, BranchRequest::Auto, CallGraph::Fp),
        )
        .unwrap();
        assert_eq!(c.event, EventKind::CpuClock);
        assert!(!c.branch_stacks, "cpu-clock cannot carry branch stacks");
        assert!(c.reason.contains("need the cycles event"), "{}", c.reason);

        let c = decide(
            &intel_with_lbr(),
            req(EventRequest::Cycles, BranchRequest::Auto, CallGraph::Fp),
        )
        .unwrap();
        assert_eq!(c.event, EventKind::Cycles);

        let err = decide(
            &no_pmu(),
            req(EventRequest::Cycles, BranchRequest::Auto, CallGraph::Fp),
        )
        .unwrap_err();
        assert_eq!(
            err,
            DecisionError::NoPmu("no /sys/bus/event_source/devices/cpu")
        );
        assert!(err.to_string().contains("--event cpu-clock"));
    }

    #[test]
    fn branches_off_and_on() {
        let c = decide(
            &intel_with_lbr(),
            req(EventRequest::Auto, BranchRequest::Off, CallGraph::Fp),
        )
        .unwrap();
        assert!(!c.branch_stacks);
        assert!(c.reason.contains("off (requested)"));
        let c = decide(
            &intel_with_lbr(),
            req(EventRequest::Auto, BranchRequest::On, CallGraph::Fp),
        )
        .unwrap();
        assert!(c.branch_stacks);
        assert_eq!(
            decide(
                &no_pmu(),
                req(EventRequest::Auto, BranchRequest::On, CallGraph::Fp)
            ),
            Err(DecisionError::NoBranches("no hardware PMU"))
        );
    }

    #[test]
    fn lbr_call_graph_needs_lbr() {
        let c = decide(
            &intel_with_lbr(),
            req(EventRequest::Auto, BranchRequest::Auto, CallGraph::Lbr),
        )
        .unwrap();
        assert_eq!(c.call_graph, CallGraph::Lbr);
        assert_eq!(
            decide(
                &no_pmu(),
                req(EventRequest::Auto, BranchRequest::Auto, CallGraph::Lbr)
            ),
            Err(DecisionError::NoLbrCallGraph("no hardware PMU"))
        );
    }

    #[test]
    fn paranoid_levels() {
        let user = |p| HostFacts {
            privileged: false,
            perf_event_paranoid: Some(p),
            ..no_pmu()
        };
        let c = decide(&user(1), AUTO).unwrap();
        assert!(c.kernel);
        let c = decide(&user(2), AUTO).unwrap();
        assert!(!c.kernel);
        assert!(c.reason.contains("user space only"), "{}", c.reason);
        let err = decide(&user(3), AUTO).unwrap_err();
        assert_eq!(err, DecisionError::NotPermitted(3));
        assert!(err.to_string().contains("CAP_PERFMON"));
        // Privilege overrides every paranoid level.
        let root = HostFacts {
            privileged: true,
            perf_event_paranoid: Some(4),
            ..no_pmu()
        };
        assert!(decide(&root, AUTO).unwrap().kernel);
    }

    #[test]
    fn kernel_symbol_visibility_follows_kptr_restrict() {
        let f = |k, privileged| HostFacts {
            kptr_restrict: Some(k),
            privileged,
            ..HostFacts::default()
        };
        assert!(f(0, false).kernel_symbols_visible());
        assert!(f(1, true).kernel_symbols_visible());
        assert!(!f(1, false).kernel_symbols_visible());
        assert!(!f(2, true).kernel_symbols_visible());
    }

    #[test]
    fn display_mentions_every_fact() {
        let text = intel_with_lbr().to_string();
        for needle in [
            "hardware PMU",
            "LBR depth:              32",
            "0x5",
            "perf_event_paranoid:    2",
            "kernel call chains:     yes",
            "kptr_restrict",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let text = no_pmu().to_string();
        assert!(text.contains("software cpu-clock only"), "{text}");
    }

    #[test]
    fn probe_does_not_panic() {
        let facts = HostFacts::probe();
        assert!(!facts.to_string().is_empty());
    }

    #[test]
    fn event_names_parse_as_perf_writes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let tp = tmp.path().join("events/sched/sched_switch");
        std::fs::create_dir_all(&tp).unwrap();
        std::fs::write(tp.join("id"), "316\n").unwrap();
        let roots = [Path::new("/nonexistent-tracefs"), tmp.path()];
        let parse = |n: &str| EventKind::parse(n, &roots);
        assert_eq!(parse("cpu-clock"), Ok(EventKind::CpuClock));
        assert_eq!(parse("cycles"), Ok(EventKind::Cycles));
        assert_eq!(parse("cpu-cycles"), Ok(EventKind::Cycles));
        assert_eq!(
            parse("cs"),
            Ok(EventKind::Software(SoftwareEvent::ContextSwitches))
        );
        assert_eq!(
            parse("instructions"),
            Ok(EventKind::Hardware(HardwareEvent::Instructions))
        );
        let sw = parse("sched:sched_switch").unwrap();
        assert_eq!(
            sw,
            EventKind::Tracepoint {
                name: "sched:sched_switch".into(),
                id: 316
            }
        );
        assert_eq!(sw.name(), "sched:sched_switch");
        assert_eq!(parse("faults").unwrap().name(), "page-faults");
        assert!(matches!(
            parse("sched:nope"),
            Err(EventNameError::NoTracepoint { .. })
        ));
        assert!(matches!(parse("bogus"), Err(EventNameError::Unknown(_))));
        assert!(matches!(parse("../x:y"), Err(EventNameError::Unknown(_))));
        assert!(matches!(
            EventKind::parse("sched:sched_switch", &[Path::new("/nonexistent-tracefs")]),
            Err(EventNameError::NoTracefs { .. })
        ));
    }

    #[test]
    fn hardware_events_need_a_pmu() {
        let req = SamplingRequest {
            event: EventRequest::Event(EventKind::Hardware(HardwareEvent::Instructions)),
            ..AUTO
        };
        let err = decide(&no_pmu(), req.clone()).unwrap_err();
        assert!(
            err.to_string()
                .contains("'instructions' needs a hardware PMU"),
            "{err}"
        );
        let sw = SamplingRequest {
            event: EventRequest::Event(EventKind::Software(SoftwareEvent::PageFaults)),
            ..AUTO
        };
        let c = decide(&no_pmu(), sw).unwrap();
        assert_eq!(c.event.name(), "page-faults");
        assert!(!c.branch_stacks);
    }

    #[test]
    fn several_events_are_checked_each_and_named_in_order() {
        let two = SamplingRequest {
            event: EventRequest::CpuClock,
            more_events: vec![EventKind::Software(SoftwareEvent::TaskClock)],
            ..AUTO
        };
        let c = decide(&no_pmu(), two.clone()).unwrap();
        assert_eq!(c.event_names(), "cpu-clock,task-clock");
        assert!(
            c.reason.contains("events cpu-clock, task-clock"),
            "{}",
            c.reason
        );
        // Branch stacks come with cycles alone, even where the PMU has LBR.
        let with_cycles = SamplingRequest {
            event: EventRequest::Cycles,
            ..two.clone()
        };
        let c = decide(&intel_with_lbr(), with_cycles).unwrap();
        assert!(
            !c.branch_stacks && c.reason.contains("alone"),
            "{}",
            c.reason
        );
        // A hardware event among them needs a PMU, and the error names it.
        let hw = SamplingRequest {
            more_events: vec![EventKind::Hardware(HardwareEvent::BranchMisses)],
            ..two
        };
        let err = decide(&no_pmu(), hw).unwrap_err();
        assert!(err.to_string().contains("'branch-misses'"), "{err}");
    }
}
