//! Any bytes through graft-weights' reader: errors are fine, panics, hangs and huge
//! allocations are bugs. `load_bytes` picks the reader by content like `load` does; the
//! seed corpus (fuzz/seeds/TARGET) keeps this target on its own format.
//!
//! Every zip entry's CRC-32 is checked (storages included), so a mutation inside an entry
//! almost always stops at the CRC check. To reach the code behind it (the pickle VM, the
//! storage and view checks, the decoders) with mutated content too, an input that the zip
//! crate can read is also re-packed with fresh CRCs (same names, same compression) and
//! loaded again.
#![no_main]

use std::io::{Cursor, Read, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// At most this many bytes are re-packed, so that a highly compressed entry cannot make the
/// harness itself (not the reader under test) allocate without bound.
const REPACK_LIMIT: u64 = 16 << 20;

fn repack(data: &[u8]) -> Option<Vec<u8>> {
    let mut archive = ZipArchive::new(Cursor::new(data)).ok()?;
    let mut out = ZipWriter::new(Cursor::new(Vec::new()));
    let mut total = 0u64;
    for i in 0..archive.len().min(64) {
        let mut entry = archive.by_index(i).ok()?;
        let method = match entry.compression() {
            CompressionMethod::Stored => CompressionMethod::Stored,
            _ => CompressionMethod::Deflated,
        };
        let name = entry.name().to_string();
        let mut bytes = Vec::new();
        // Reading past a bad CRC fails; the bytes read so far are what the mutation made.
        let _ = (&mut entry).take(REPACK_LIMIT - total).read_to_end(&mut bytes);
        total += bytes.len() as u64;
        out.start_file(name, SimpleFileOptions::default().compression_method(method)).ok()?;
        out.write_all(&bytes).ok()?;
        if total >= REPACK_LIMIT {
            break;
        }
    }
    Some(out.finish().ok()?.into_inner())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = graft_weights::load_bytes(Path::new("fuzz-input"), data);
    if data.starts_with(b"PK") {
        if let Some(repacked) = repack(data) {
            let _ = graft_weights::load_bytes(Path::new("fuzz-input-repacked"), &repacked);
        }
    }
});
