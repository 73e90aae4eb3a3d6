#![no_main]
//! The live sampler's decoding of kernel ring-buffer records
//! (`sampler::convert::Converter::sample`, the data crate's decoder of perf's sample
//! layout, and `perfdata::decode_ring_sideband`, its decoder of side-band records): any
//! record bytes, under any sample layout the attribute may describe, decode or give an
//! error, never a panic, and what comes out stays within the record (no frame or branch
//! invented).

use lbrprof_data::perfdata::abi::{PERF_SAMPLE_BRANCH_HW_INDEX, PERF_SAMPLE_REGS_USER};
use lbrprof_collector::sampler::convert::Converter;
use libfuzzer_sys::fuzz_target;
use perf_event_open::sample::record::Parser;

fuzz_target!(|data: &[u8]| {
    // The attribute (sample_type, read_format, branch_sample_type, fixed period), then
    // the record: its header and body.
    let Some((attr, record)) = data.split_first_chunk::<18>() else {
        return;
    };
    let word = |at: usize| u64::from_le_bytes(attr[at..at + 8].try_into().unwrap());
    let sample_type = word(0);
    let parser = Parser {
        sample_id_all: true,
        sample_type,
        read_format: word(8) & 0x1f,
        user_regs: if sample_type & PERF_SAMPLE_REGS_USER != 0 {
            3
        } else {
            0
        },
        intr_regs: 0,
        branch_sample_type: if attr[16] & 1 != 0 {
            PERF_SAMPLE_BRANCH_HW_INDEX
        } else {
            0
        },
    };
    let converter = Converter::with_fixed_period((attr[17] & 1 != 0).then_some(1000));
    let layout = converter.layout(&parser);
    // (The converter's side-band path would read the files mappings name.)
    let _ = lbrprof_data::perfdata::decode_ring_sideband(record, &layout);
    if let Ok(r) = converter.sample(record, &layout) {
        // Each frame is a word of the record, each branch 24 bytes of it.
        assert!(
            r.sample.callchain.len() * 8 <= record.len(),
            "a frame invented"
        );
        assert!(
            r.sample.branches.len() * 24 <= record.len(),
            "a branch invented"
        );
        if let Some(copy) = &r.stack_copy {
            assert!(copy.stack.len() <= record.len(), "stack bytes invented");
        }
    }
});
