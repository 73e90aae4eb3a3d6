//! `export --firefox`: the profile in the Firefox Profiler's processed-profile JSON
//! format (the one samply writes, through the same `fxprof-processed-profile` crate),
//! which <https://profiler.firefox.com> opens (drop the file on the page, or load it
//! from a URL).
//!
//! What goes in, from the aggregator's [`crate::aggregate::Timeline`] (every sample with
//! its time, thread and stack):
//!
//! * One process per host process (named after its command) and one thread track per
//!   sampled host thread, with every host sample at its time and its symbolized stack.
//! * One track per guest vCPU (`guest vcpuN`), in the process of the vCPU's host thread
//!   when the recording names it, with every guest LBR snapshot as a sample (guest IP and
//!   frame-pointer walk) and as an instant marker `LBR snapshot` (with its number of
//!   branch entries) in the marker chart. A Linux program's guest processes (named by
//!   the recording, a snapshot's by its CR3) have a track per process and vCPU
//!   (`guest COMM [PID] vcpuN`).
//! * Frames are labels (function names, `module+0xoffset` where no symbol is known), in
//!   the categories User, Kernel and Guest, so the profile needs no symbol server: it is
//!   marked symbolicated.
//! * Times are relative to the recording's start (CLOCK_MONOTONIC at
//!   `start_monotonic_ns`, wall clock `start_unix`); for cpu-clock/task-clock samples the
//!   period is the sample's CPU delta, so the activity graph shows CPU use.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use fxprof_processed_profile::{
    CategoryColor, CategoryHandle, CategoryPairHandle, CpuDelta, Frame, FrameFlags, FrameInfo,
    MarkerFieldFlags, MarkerFieldFormat, MarkerTiming, ProcessHandle, Profile as FxProfile,
    ReferenceTimestamp, SamplingInterval, StaticSchemaMarker, StaticSchemaMarkerField,
    StringHandle, ThreadHandle, Timestamp,
};

use crate::aggregate::Profile;
use crate::loc::{ModuleKind, ModuleTable};
use crate::symbols::SymbolTable;

/// Why the profile could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirefoxError {
    #[error("the profile was aggregated without its timeline (AggregateOptions::timeline)")]
    NoTimeline,
    #[error("cannot write the profile")]
    Io(#[from] std::io::Error),
    #[error("cannot encode the profile as JSON")]
    Json(#[from] serde_json::Error),
}

/// Facts about the recording for the profile's header.
#[derive(Clone, Debug, Default)]
pub struct FirefoxMeta {
    /// Shown as the profile's product name.
    pub product: String,
    /// Wall-clock start, seconds since the Unix epoch (0 when unknown).
    pub start_unix: u64,
    /// The sample times' clock at the start.
    pub start_ns: u64,
    /// Nanoseconds between samples (the sampling interval).
    pub interval_ns: u64,
    /// The host event: cpu-clock and task-clock samples carry their period as CPU time.
    pub event: String,
}

/// What went in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirefoxStats {
    pub processes: usize,
    pub threads: usize,
    pub host_samples: u64,
    pub guest_samples: u64,
    pub markers: u64,
}

/// The marker of one guest LBR snapshot.
struct SnapshotMarker {
    name: StringHandle,
    category: CategoryHandle,
    branches: u16,
}

impl StaticSchemaMarker for SnapshotMarker {
    const UNIQUE_MARKER_TYPE_NAME: &'static str = "LbrSnapshot";
    const DESCRIPTION: Option<&'static str> =
        Some("A guest LBR snapshot: the last taken branches of the vCPU at this moment");
    const CHART_LABEL: Option<&'static str> = Some("{marker.data.branches} branches");
    const TOOLTIP_LABEL: Option<&'static str> =
        Some("LBR snapshot, {marker.data.branches} branch entries");
    const TABLE_LABEL: Option<&'static str> = Some("{marker.data.branches} branch entries");
    const FIELDS: &'static [StaticSchemaMarkerField] = &[StaticSchemaMarkerField {
        key: "branches",
        label: "Branch entries",
        format: MarkerFieldFormat::Integer,
        flags: MarkerFieldFlags::empty(),
    }];

    fn name(&self, _profile: &mut FxProfile) -> StringHandle {
        self.name
    }

    fn category(&self, _profile: &mut FxProfile) -> CategoryHandle {
        self.category
    }

    fn string_field_value(&self, _field_index: u32) -> StringHandle {
        unreachable!("the LBR snapshot marker has no string field")
    }

    fn number_field_value(&self, _field_index: u32) -> f64 {
        f64::from(self.branches)
    }
}

/// A track: a host thread, or a guest vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Track {
    Host {
        pid: u32,
        tid: u32,
    },
    /// A vCPU, in the guest process its snapshots were taken in (an index into
    /// [`crate::aggregate::Timeline::guest_processes`]) when the recording names it.
    Guest {
        vcpu: u32,
        process: Option<u32>,
    },
}

/// Builds the Firefox Profiler profile of `profile`'s timeline.
pub fn build(
    profile: &Profile,
    syms: &SymbolTable,
    meta: &FirefoxMeta,
) -> Result<(FxProfile, FirefoxStats), FirefoxError> {
    let timeline = profile.timeline.as_ref().ok_or(FirefoxError::NoTimeline)?;
    let modules = &profile.spaces.modules;
    let mut fx = FxProfile::new(
        &meta.product,
        ReferenceTimestamp::from_millis_since_unix_epoch(meta.start_unix as f64 * 1000.0),
        SamplingInterval::from_nanos(meta.interval_ns.max(1)),
    );
    fx.set_os_name("Linux");
    fx.set_symbolicated(true);
    let user = CategoryPairHandle::from(fx.add_category("User", CategoryColor::Yellow));
    let kernel = CategoryPairHandle::from(fx.add_category("Kernel", CategoryColor::Orange));
    let guest_cat = fx.add_category("Guest", CategoryColor::Green);
    let guest = CategoryPairHandle::from(guest_cat);
    let other = CategoryPairHandle::from(CategoryHandle::OTHER);
    let snapshot_name = fx.intern_string("LBR snapshot");
    let cpu_time = matches!(meta.event.as_str(), "cpu-clock" | "task-clock");
    let at = |t: u64| Timestamp::from_nanos_since_reference(t.saturating_sub(meta.start_ns));

    // Tracks in a stable order, each starting at its first sample.
    let mut first: BTreeMap<Track, u64> = BTreeMap::new();
    let mut vcpu_pid: HashMap<u32, u32> = HashMap::new();
    let track_of = |s: &crate::aggregate::TimedSample| match s.vcpu {
        Some(vcpu) => Track::Guest {
            vcpu,
            process: s.guest_process,
        },
        None => Track::Host {
            pid: s.pid,
            tid: s.tid,
        },
    };
    for s in &timeline.samples {
        if let (Some(vcpu), true) = (s.vcpu, s.pid != 0) {
            vcpu_pid.insert(vcpu, s.pid);
        }
        let track = track_of(s);
        let t = first.entry(track).or_insert(s.time_ns);
        *t = (*t).min(s.time_ns);
    }
    let comm = |id: u32| profile.comms.get(&id).cloned();
    let mut processes: BTreeMap<u32, ProcessHandle> = BTreeMap::new();
    let mut threads: HashMap<Track, ThreadHandle> = HashMap::new();
    let mut stats = FirefoxStats::default();
    for (&track, &start) in &first {
        let (pid, tid, name) = match track {
            Track::Host { pid, tid } => (
                pid,
                tid,
                comm(tid).unwrap_or_else(|| format!("thread {tid}")),
            ),
            Track::Guest { vcpu, process } => {
                let (gpid, gtid) = crate::perfdata_out::guest_ids(0, vcpu);
                let pid = vcpu_pid.get(&vcpu).copied().unwrap_or(gpid);
                match process.map(|i| (i, &timeline.guest_processes[i as usize])) {
                    // Pseudo tids, one per (guest process, vCPU).
                    Some((i, p)) => (
                        pid,
                        gtid.saturating_add(1000u32.saturating_mul(i.saturating_add(1))),
                        format!("guest {} [{}] vcpu{vcpu}", p.comm, p.pid),
                    ),
                    None => (pid, gtid, format!("guest vcpu{vcpu}")),
                }
            }
        };
        let process = *processes.entry(pid).or_insert_with(|| {
            let name = comm(pid)
                .or_else(|| comm(tid))
                .unwrap_or_else(|| format!("process {pid}"));
            fx.add_process(&name, pid, at(start))
        });
        let thread = fx.add_thread(process, tid, at(start), tid == pid);
        fx.set_thread_name(thread, &name);
        threads.insert(track, thread);
    }
    stats.processes = processes.len();
    stats.threads = threads.len();

    // Stacks are interned per thread (the format keeps one stack table per thread).
    let mut stack_handles: HashMap<(ThreadHandle, u32), Option<_>> = HashMap::new();
    let mut names: HashMap<crate::loc::Loc, StringHandle> = HashMap::new();
    for s in &timeline.samples {
        let thread = threads[&track_of(s)];
        let stack = *stack_handles.entry((thread, s.stack)).or_insert_with(|| {
            let frames: Vec<FrameInfo> = timeline.stacks[s.stack as usize]
                .iter()
                .rev()
                .map(|l| {
                    let label = *names
                        .entry(*l)
                        .or_insert_with(|| fx.intern_string(&syms.function_name(modules, l)));
                    let category_pair = if l.module == ModuleTable::GUEST_UNKNOWN {
                        guest
                    } else {
                        match modules.get(l.module).kind {
                            ModuleKind::File | ModuleKind::PerfMap => user,
                            ModuleKind::PerfMapIfAny => guest,
                            ModuleKind::Kernel => kernel,
                            ModuleKind::Guest => guest,
                            ModuleKind::Unknown => other,
                        }
                    };
                    FrameInfo {
                        frame: Frame::Label(label),
                        category_pair,
                        flags: FrameFlags::empty(),
                    }
                })
                .collect();
            fx.intern_stack_frames(thread, frames.into_iter())
        });
        let cpu = if cpu_time && s.vcpu.is_none() {
            CpuDelta::from_nanos(s.weight)
        } else {
            CpuDelta::ZERO
        };
        fx.add_sample(thread, at(s.time_ns), stack, cpu, 1);
        if s.vcpu.is_some() {
            stats.guest_samples += 1;
            fx.add_marker(
                thread,
                MarkerTiming::Instant(at(s.time_ns)),
                SnapshotMarker {
                    name: snapshot_name,
                    category: guest_cat,
                    branches: s.branches,
                },
            );
            stats.markers += 1;
        } else {
            stats.host_samples += 1;
        }
    }
    Ok((fx, stats))
}

/// Writes the profile as JSON, gzip-compressed when `gzip` (the profiler opens both).
pub fn write(
    profile: &Profile,
    syms: &SymbolTable,
    meta: &FirefoxMeta,
    gzip: bool,
    out: impl Write,
) -> Result<FirefoxStats, FirefoxError> {
    let (fx, stats) = build(profile, syms, meta)?;
    let mut fx = serde_json::to_value(&fx)?;
    conform_meta(&mut fx);
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        serde_json::to_writer(&mut gz, &fx)?;
        gz.finish()?.flush()?;
    } else {
        let mut out = std::io::BufWriter::new(out);
        serde_json::to_writer(&mut out, &fx)?;
        out.flush()?;
    }
    Ok(stats)
}

/// Makes the crate's `meta` what the profiler's types for its version declare
/// (`ProfileMeta` of `src/types/profile.js`, an exact object type): `stackwalk` is
/// required (0: the stacks are not native stack walks the profiler could re-walk), and
/// `pausedRanges` belongs to threads, not to `meta`.
fn conform_meta(fx: &mut serde_json::Value) {
    if let Some(meta) = fx.get_mut("meta").and_then(|m| m.as_object_mut()) {
        meta.entry("stackwalk")
            .or_insert(serde_json::Value::from(0));
        meta.remove("pausedRanges");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{AggregateOptions, Aggregator};
    use lbrprof_data::model::{CpuMode, Event, HostSample, TaskEvent};

    fn sample(tid: u32, time_ns: u64) -> Event {
        Event::Sample(HostSample {
            time_ns,
            pid: 7,
            tid,
            period: 1_000_000,
            ip: 0x1234,
            mode: CpuMode::User,
            ..HostSample::default()
        })
    }

    #[test]
    fn one_track_per_thread_with_its_samples_in_time() {
        let mut a = Aggregator::new(AggregateOptions {
            timeline: true,
            ..AggregateOptions::default()
        });
        a.add(&Event::Task(TaskEvent::Comm {
            time_ns: 0,
            pid: 7,
            tid: 7,
            comm: "main".into(),
        }));
        for (tid, t) in [(7, 2_000_000), (8, 3_000_000), (7, 4_000_000)] {
            a.add(&sample(tid, t));
        }
        let profile = a.finish();
        let meta = FirefoxMeta {
            product: "t".into(),
            start_ns: 1_000_000,
            interval_ns: 1_000_000,
            event: "cpu-clock".into(),
            ..FirefoxMeta::default()
        };
        let (fx, stats) = build(&profile, &SymbolTable::default(), &meta).unwrap();
        assert_eq!(
            (stats.processes, stats.threads, stats.host_samples),
            (1, 2, 3)
        );
        let v = serde_json::to_value(&fx).unwrap();
        let threads = v["threads"].as_array().unwrap();
        assert_eq!(threads[0]["name"], "main");
        assert_eq!(threads[0]["processName"], "main");
        assert_eq!(threads[0]["samples"]["length"], 2);
        // Times are relative to the start: 1 ms, then 2 ms later.
        let deltas: Vec<f64> = threads[0]["samples"]["timeDeltas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap())
            .collect();
        assert_eq!(deltas, vec![1.0, 2.0]);
        assert_eq!(threads[1]["name"], "thread 8");
    }

    #[test]
    fn a_profile_without_timeline_is_an_error() {
        let profile = Aggregator::new(AggregateOptions::default()).finish();
        let err = build(&profile, &SymbolTable::default(), &FirefoxMeta::default());
        assert!(matches!(err, Err(FirefoxError::NoTimeline)));
    }
}
