#![no_main]
//! perf.data import: whole files through `PerfDataReader` (the crate reads from a file,
//! so the input is written to a per-process temporary file), and sample bodies straight
//! through `decode_sample` with the attribute layout taken from the input's first bytes.

use libfuzzer_sys::fuzz_target;
use lbrprof_data::model::CpuMode;
use lbrprof_data::perfdata::{decode_sample, PerfDataReader, SampleLayout};
use lbrprof_data::perfdata::Endianness;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 25 {
        let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
        let layout = SampleLayout {
            sample_type: word(0),
            read_format: word(1),
            branch_sample_type: word(2),
            // BP, SP, IP: the registers the user-stack decoding looks for.
            regs_user: 0x1c0,
            // A period-less attribute's fixed period (perf record -c N), from the input.
            fixed_period: word(2) >> 32,
        };
        let endian = if data[24] & 1 == 0 {
            Endianness::LittleEndian
        } else {
            Endianness::BigEndian
        };
        let _ = decode_sample(&data[25..], endian, layout, CpuMode::User);
    }
    let path = std::env::temp_dir().join(format!("lbrprof-fuzz-{}.data", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        if let Ok(reader) = PerfDataReader::open(&path) {
            for event in reader.take(1 << 16) {
                if event.is_err() {
                    break;
                }
            }
        }
        // The mapped fast path of reports walks the same bytes in place, handing out
        // small chunks as it goes (decoded at once, as reports do on other threads).
        if let Ok(mut reader) = PerfDataReader::open(&path) {
            let visit = |s: lbrprof_data::perfdata::mapped::SampleRef<'_>| {
                let _ = s.callchain.perf_words().count();
                let _ = s.branches.iter().count();
            };
            if let Some(scan) = reader.mapped_scan_with(256, &mut |chunk| {
                let _ = chunk.for_each_sample(visit);
            }) {
                for chunk in 0..scan.chunks() {
                    let _ = scan.for_each_sample(chunk, visit);
                }
            }
        }
    }
});
