//! Any bytes through graft-weights' reader: errors are fine, panics, hangs and huge
//! allocations are bugs. `load_bytes` picks the reader by content like `load` does; the
//! seed corpus (fuzz/seeds/TARGET) keeps this target on its own format.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = graft_weights::load_bytes(Path::new("fuzz-input"), data);
});
