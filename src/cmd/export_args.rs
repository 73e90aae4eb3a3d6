//! The flags of `lbrprof export`, apart from the formats' modules (`export`,
//! `export_perf`, `export_firefox`, `export_callgrind`, `export_pgo`) that all read them.

use std::path::PathBuf;

use super::report::InputArgs;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("format").required(true).args(["bolt", "pprof", "bolt_preagg", "autofdo", "autofdo_raw", "perf_data", "firefox", "callgrind"])))]
pub struct Args {
    #[command(flatten)]
    pub input: InputArgs,
    /// Write a BOLT profile (the .fdata text `llvm-bolt -data=FILE` reads). With --dso,
    /// only the named binary's code counts as known (other code is `[unknown]`).
    #[arg(long)]
    pub bolt: bool,
    /// Write a pprof profile (gzip-compressed profile.proto, as `go tool pprof`, Parca and
    /// Pyroscope read): host and guest stacks with functions, lines and inlined frames,
    /// each sample labelled side=host|guest, pid, tid and comm (and vcpu for guest
    /// snapshots); values are samples and the event's count (nanoseconds for cpu-clock).
    /// Branch-stack entries are a third value, `branches`: one sample per edge whose leaf
    /// is the branch target and caller the source, labelled with the branch kind and
    /// mispredicts (`go tool pprof -sample_index=branches -traces`).
    #[arg(long)]
    pub pprof: bool,
    /// Write perf2bolt's pre-aggregated profile (B/F/f lines by address, for
    /// `perf2bolt -pa -p FILE BINARY`) of one binary: the one --dso names, else the one
    /// with the most branches. Its file must have the recorded build-id.
    #[arg(long)]
    pub bolt_preagg: bool,
    /// Write an LLVM sample profile (AutoFDO text format, for clang -fprofile-sample-use
    /// and llvm-profdata) of one binary, computed from branch stacks as AutoFDO's
    /// create_llvm_prof does; the binary (--dso, else the one with the most branches)
    /// needs DWARF lines (-g or -gline-tables-only).
    #[arg(long)]
    pub autofdo: bool,
    /// Write AutoFDO's raw text profile (fall-through ranges, sampled addresses and
    /// branches by address) of one binary, as `create_llvm_prof --profiler=text` and GCC's
    /// `create_gcov --profiler=text` read it.
    #[arg(long)]
    pub autofdo_raw: bool,
    /// Write a Linux perf.data file (as `perf report`, `perf script -F brstack` and
    /// perf2bolt read): host samples with call chains and branch stacks, and guest LBR
    /// snapshots as samples of event `guest-lbr` in a pseudo-process per VM (threads
    /// `guest-vcpuN`), with MMAP2/COMM records and build-ids.
    #[arg(long)]
    pub perf_data: bool,
    /// With --perf-data: leave call chains out of the file. perf2bolt reads `perf script
    /// -F pid,ip,brstack`, which prints a sample's call chain over several lines, and
    /// needs one line per sample.
    #[arg(long)]
    pub no_callchains: bool,
    /// With --perf-data: how the guest is written. `guest` (the default): a perf guest
    /// machine (guest user cpumode, the guest's own pids), as perf 6.0 and later read
    /// it. `host`: user-mode processes of the host with pids 10000000 + the guest's, for
    /// readers that know no guest machines (older perf, other perf.data parsers).
    #[arg(long, value_name = "MODE", value_parser = ["guest", "host"])]
    pub guest_cpumode: Option<String>,
    /// Write a Firefox Profiler profile (processed-profile JSON, as samply writes it;
    /// gzip-compressed when FILE ends in .gz): one track per sampled host thread and per
    /// guest vCPU, every sample at its time with its stack, guest LBR snapshots also as
    /// markers. Open it at profiler.firefox.com.
    #[arg(long)]
    pub firefox: bool,
    /// Write a callgrind profile (as `callgrind_annotate`, KCachegrind and QCachegrind
    /// read it). From an exact-mode recording (`record --vm --lbr-mode exact`): every
    /// ring-3 instruction's executions (Ir), conditional (Bc) and indirect (Bi) branches,
    /// per instruction and source line, and calls with inclusive costs, as callgrind
    /// counts them. From any other recording: samples, self per line and inclusive per
    /// call edge of the sampled stacks.
    #[arg(long)]
    pub callgrind: bool,
    /// Where to write the profile.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}
