#![no_main]
//! The lbrprof.data reader on arbitrary bytes: opening, streaming every event, and the
//! summary/warnings accessors must return errors, never panic or loop forever.

use libfuzzer_sys::fuzz_target;
use lbrprof_collector::recording::RecordingReader;

fuzz_target!(|data: &[u8]| {
    // The reader takes a path (it streams from the file), so give it one.
    let path = std::env::temp_dir().join(format!("lbrprof-fuzz-{}.data", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(mut reader) = RecordingReader::open(&path) {
        let _ = reader.header();
        // Every event decodes or errors; an error ends the stream for our purposes.
        for event in reader.by_ref() {
            if event.is_err() {
                break;
            }
        }
        let _ = reader.summary();
        let _ = reader.warnings();
    }
    let _ = std::fs::remove_file(&path);
});
