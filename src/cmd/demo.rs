//! `lbrprof demo`: the README's first command. Records the built-in `sort` guest with the
//! emulated LBR (`record --vm builtin:sort --lbr emulated`) into a directory and writes
//! the report, the JSON branch histogram and the unified host+guest flame graph beside
//! the recording, by running the same subcommands a user would.
//!
//! Without /dev/kvm it says so and records a built-in host workload instead: lbrprof
//! itself, re-executed as the hidden `demo --host-workload`, which burns CPU in a few
//! functions with known names.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Writes DIR/lbrprof.data (the recording), DIR/report.txt (`lbrprof report`), \
DIR/branches.json (`lbrprof report --format json`), DIR/flamegraph.svg (`lbrprof flamegraph`: \
host frames, [guest vcpu0], guest frames in blue) and DIR/console.txt (the guest's console). \
Needs /dev/kvm for the guest; without it, a host workload is recorded instead.")]
pub struct Args {
    /// Where to write the demo's files.
    #[arg(short, long, value_name = "DIR", default_value = "lbrprof-demo")]
    pub output: PathBuf,
    /// Sampling frequency (host samples and guest snapshots per second).
    #[arg(short = 'F', long, default_value_t = 999)]
    pub freq: u64,
    /// Elements the guest sorts.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub n: u64,
    /// Run the built-in host workload (what the demo records without /dev/kvm).
    #[arg(long, hide = true)]
    pub host_workload: bool,
}

/// The arguments of `lbrprof NAME ARGS…`, parsed by that subcommand's own clap definition
/// as if typed: the demo runs what a user would, flag for flag.
fn parse_args<A: clap::Args>(name: &'static str, args: &[&str]) -> anyhow::Result<A> {
    let matches = A::augment_args(clap::Command::new(name))
        .try_get_matches_from(std::iter::once(name).chain(args.iter().copied()))
        .map_err(|e| anyhow!("{e}"))?;
    A::from_arg_matches(&matches).map_err(|e| anyhow!("{e}"))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", p.display()))
}

/// Whether KVM can be used, and if not, why. `LBRPROF_DEMO_NO_KVM=1` pretends it cannot
/// (to try, and test, the host-only demo on a machine with KVM).
fn kvm_usable() -> Result<(), String> {
    if std::env::var_os("LBRPROF_DEMO_NO_KVM").is_some() {
        return Err("LBRPROF_DEMO_NO_KVM is set".into());
    }
    let caps = lbrprof_vmm::caps::probe();
    match (caps.open_error, caps.api_version) {
        (Some(e), _) => Err(e),
        (None, Some(12)) => Ok(()),
        (None, v) => Err(format!("/dev/kvm does not speak the KVM API 12 ({v:?})")),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.host_workload {
        host_workload(Duration::from_millis(1500));
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let dir = &args.output;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let data = dir.join("lbrprof.data");
    let report = dir.join("report.txt");
    let json = dir.join("branches.json");
    let svg = dir.join("flamegraph.svg");
    let console = dir.join("console.txt");
    let freq = args.freq.to_string();
    let guest = match kvm_usable() {
        Ok(()) => {
            let n = format!("n={}", args.n);
            eprintln!("lbrprof: demo: recording the built-in guest `sort` with the emulated LBR");
            let code = crate::cmd::record_vm::run(parse_args(
                "record",
                &[
                    "--vm",
                    "builtin:sort",
                    "--lbr",
                    "emulated",
                    // The guest runs for a fraction of a second: within the default 10%
                    // overhead budget a host where guest traps are slow (nested
                    // virtualization: ~10 ms per snapshot window) would give it two or three
                    // snapshots. The demo is there to show the picture, so it takes them all.
                    "--lbr-overhead",
                    "0",
                    "-F",
                    &freq,
                    "-o",
                    path_str(&data)?,
                    "--serial",
                    path_str(&console)?,
                    "--",
                    &n,
                ],
            )?)
            .context("demo: recording the guest failed")?;
            if code != ExitCode::SUCCESS {
                anyhow::bail!("demo: the guest did not exit cleanly ({code:?})");
            }
            true
        }
        Err(why) => {
            eprintln!("lbrprof: demo: {why}: no guest; recording a built-in host workload instead");
            let exe = std::env::current_exe().context("cannot find the lbrprof executable")?;
            crate::cmd::record::run(parse_args(
                "record",
                &[
                    "-F",
                    &freq,
                    "-o",
                    path_str(&data)?,
                    "--",
                    path_str(&exe)?,
                    "demo",
                    "--host-workload",
                ],
            )?)
            .context("demo: recording the host workload failed")?;
            false
        }
    };
    let input = path_str(&data)?;
    crate::cmd::report::run(parse_args(
        "report",
        &["-i", input, "-o", path_str(&report)?],
    )?)
    .context("demo: writing the report failed")?;
    crate::cmd::report::run(parse_args(
        "report",
        &[
            "-i",
            input,
            "--format",
            "json",
            "--limit",
            "0",
            "-o",
            path_str(&json)?,
        ],
    )?)
    .context("demo: writing the JSON report failed")?;
    crate::cmd::flamegraph::run(parse_args(
        "flamegraph",
        &["-i", input, "-o", path_str(&svg)?],
    )?)
    .context("demo: drawing the flame graph failed")?;
    println!(
        "lbrprof demo ({}, {:.1} s):",
        if guest {
            "guest builtin:sort, emulated LBR"
        } else {
            "host workload, no /dev/kvm"
        },
        started.elapsed().as_secs_f64()
    );
    if let Some(line) = summary_line(&json) {
        println!("  {line}");
    }
    println!("  recording    {}", data.display());
    println!("  report       {}", report.display());
    println!("  branches     {}", json.display());
    println!("  flame graph  {}", svg.display());
    if guest {
        println!("  console      {}", console.display());
    }
    println!("next: lbrprof report -i {}", data.display());
    Ok(ExitCode::SUCCESS)
}

/// One line about what was recorded, from the JSON report.
fn summary_line(json: &Path) -> Option<String> {
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json).ok()?).ok()?;
    let meta = &report["meta"];
    let mut line = format!(
        "{} host samples, {} guest snapshots, {} branch records",
        meta["samples"].as_u64()?,
        meta["snapshots"].as_u64()?,
        meta["branch_entries"].as_u64()?
    );
    let p = &report["vm"]["pairing"];
    if let (Some(paired), Some(in_run)) = (p["paired"].as_u64(), p["in_kvm_run"].as_u64()) {
        line.push_str(&format!(
            "; {paired} of {in_run} host samples in KVM_RUN paired with a guest stack"
        ));
    }
    Some(line)
}

/// Burns CPU for `duration` in three functions a profile should show by name.
fn host_workload(duration: Duration) {
    let end = Instant::now() + duration;
    let mut acc = 0u64;
    while Instant::now() < end {
        acc = acc.wrapping_add(demo_hot_loop(black_box(20_000)));
        acc = acc.wrapping_add(demo_branchy(black_box(10_000), acc));
        acc = acc.wrapping_add(demo_sort(black_box(2_000), acc));
    }
    black_box(acc);
}

#[inline(never)]
fn demo_hot_loop(n: u64) -> u64 {
    (0..n).fold(0u64, |a, i| a.wrapping_mul(31).wrapping_add(i ^ (a >> 7)))
}

#[inline(never)]
fn demo_branchy(n: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    let mut taken = 0u64;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            taken += 1;
        } else if x.is_multiple_of(5) {
            taken += 2;
        }
    }
    taken
}

#[inline(never)]
fn demo_sort(n: usize, seed: u64) -> u64 {
    let mut x = seed | 1;
    let mut v: Vec<u64> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        })
        .collect();
    v.sort_unstable();
    v[n / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_functions_compute() {
        assert_eq!(demo_hot_loop(0), 0);
        assert!(demo_branchy(1000, 7) > 0);
        assert!(demo_sort(101, 3) < 1 << 31);
        host_workload(Duration::from_millis(1));
    }
}
