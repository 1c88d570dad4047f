//! Any bytes through the labelled-text CSV reader (`graft::text::dataset::TextDataset::
//! read_csv_bytes`, what `read_csv` runs on a file's bytes): header lookup, records, the
//! UTF-8/Latin-1 decoding of every field. Errors are fine; panics, hangs and huge
//! allocations are bugs.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(d) = graft::text::dataset::TextDataset::read_csv_bytes(Path::new("fuzz-input.csv"), data) {
        // What every command does next with a dataset.
        let _ = d.class_counts();
        let _ = d.check_trainable();
    }
});
