#![no_main]
//! The lbrprof.data reader on arbitrary bytes: opening, streaming every event, and the
//! summary/warnings accessors must return errors, never panic or loop forever. The
//! mapped chunk path (what reports read) must agree with the stream: the same chunk
//! errors, and the hand-written sample decoder the same samples as postcard's.

use libfuzzer_sys::fuzz_target;
use lbrprof_data::model::{Event, HostSample};
use lbrprof_data::recording::{self, RecordingReader};

fuzz_target!(|data: &[u8]| {
    // The reader takes a path (it streams from the file), so give it one.
    let path = std::env::temp_dir().join(format!("lbrprof-fuzz-{}.data", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let mut streamed: Vec<HostSample> = Vec::new();
    let mut stream_error = None;
    let mut stream_warnings = Vec::new();
    if let Ok(mut reader) = RecordingReader::open(&path) {
        let _ = reader.header();
        // Every event decodes or errors; an error ends the stream for our purposes.
        for event in reader.by_ref() {
            match event {
                Ok(Event::Sample(s)) => streamed.push(s),
                Ok(_) => {}
                Err(e) => {
                    stream_error = Some(e.to_string());
                    break;
                }
            }
        }
        let _ = reader.summary();
        stream_warnings = reader.warnings().to_vec();
    }
    if let Ok(mut reader) = RecordingReader::open(&path)
        && let Some(mut mapped) = reader.mapped_chunks()
    {
        let mut samples: Vec<HostSample> = Vec::new();
        let mut error = None;
        for c in mapped.chunks() {
            let result = mapped.payload(c).and_then(|payload| {
                if c.is_summary() {
                    reader.read_summary(c.offset, payload)
                } else if c.is_samples() {
                    recording::for_each_sample_of(c.offset, c.kind, payload, |s| {
                        samples.push(s.clone())
                    })
                } else {
                    recording::decode_payload(c.offset, c.kind, payload).map(drop)
                }
            });
            if let Err(e) = result {
                error = Some(e.to_string());
                break;
            }
        }
        if error.is_none() {
            error = mapped.take_tail_error().map(|e| e.to_string());
        }
        assert_eq!(error, stream_error);
        if error.is_none() {
            assert_eq!(samples, streamed);
            assert_eq!(reader.warnings(), &stream_warnings[..]);
        }
    }
    let _ = std::fs::remove_file(&path);
});
