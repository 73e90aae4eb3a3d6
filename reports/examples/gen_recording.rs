//! Writes a large synthetic lbrprof.data through the real recording writer, for
//! `bench/report`: `gen_recording OUT SAMPLES [BINARY]`.
//!
//! Each sample has a 32-entry branch stack and a call chain drawn from a fixed pool (a few
//! thousand unique stacks and edges), the way a real hot loop looks, so aggregation
//! memory should stay flat however many samples there are. Addresses fall in one
//! mapping of BINARY (default: /proc/self/exe) so symbolization has real work to do.

use std::path::PathBuf;

use lbrprof_data::model::*;
use lbrprof_data::recording::{RecordingWriter, Summary};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: gen_recording OUT SAMPLES [BINARY]")?,
    );
    let samples: u64 = args.next().ok_or("missing SAMPLES")?.parse()?;
    let binary = match args.next() {
        Some(b) => PathBuf::from(b),
        None => std::env::current_exe()?,
    };
    let text_len = std::fs::metadata(&binary)?.len().clamp(0x1000, 0x40_0000);
    let base = 0x5555_0000_0000u64;
    let header = Header {
        writer: "gen_recording".into(),
        start_unix: 0,
        start_monotonic_ns: 0,
        host: HostInfo {
            pmu: "cpu".into(),
            lbr_depth: 32,
            ..HostInfo::default()
        },
        sampling: SamplingConfig {
            event: "cycles".into(),
            period: 100_000,
            branch_stacks: true,
            call_graph: "fp".into(),
            ..SamplingConfig::default()
        },
        target: Target::Command {
            argv: vec![binary.display().to_string()],
        },
    };
    let w = RecordingWriter::create(&out, &header)?;
    let sink = w.sink();
    sink.send(Event::Mapping(Mapping {
        time_ns: 0,
        space: AddressSpace::HostUser,
        pid: 1000,
        start: base,
        len: text_len,
        pgoff: 0,
        path: binary.display().to_string(),
        build_id: None,
    }));
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Pools: 4096 branch sites, 2048 stacks of depth 8..24.
    let sites: Vec<(u64, u64)> = (0..4096)
        .map(|_| (base + rng.next() % text_len, base + rng.next() % text_len))
        .collect();
    let stacks: Vec<Vec<Frame>> = (0..2048)
        .map(|_| {
            let depth = 8 + rng.next() % 16;
            (0..depth)
                .map(|_| Frame {
                    addr: base + rng.next() % text_len,
                    mode: CpuMode::User,
                })
                .collect()
        })
        .collect();
    for i in 0..samples {
        let stack = &stacks[(rng.next() % 2048) as usize];
        let first = rng.next() % 4096;
        let branches = (0..32)
            .map(|k| {
                let (from, to) = sites[((first + k * 7) % 4096) as usize];
                let r = rng.next();
                Branch {
                    from,
                    to,
                    flags: BranchFlags {
                        mispred: r.is_multiple_of(17),
                        predicted: !r.is_multiple_of(17),
                        cycles: (r >> 8) as u16 % 64,
                        kind: BranchKind::Cond,
                        ..BranchFlags::default()
                    },
                }
            })
            .collect();
        sink.send(Event::Sample(HostSample {
            event: 0,
            time_ns: i * 10_000,
            pid: 1000,
            tid: 1000,
            cpu: 0,
            period: 100_000,
            ip: stack[0].addr,
            mode: CpuMode::User,
            callchain: stack.clone(),
            branches,
            branch_hw_index: None,
        }));
    }
    drop(sink);
    let stats = w.finish(&Summary {
        duration_ns: samples * 10_000,
        samples,
        ..Summary::default()
    })?;
    eprintln!(
        "wrote {} ({} samples, {} bytes)",
        out.display(),
        samples,
        stats.bytes
    );
    Ok(())
}
