//! Large hostile files (the shapes an outside probe used: a 64 MiB pickle creating tens of
//! millions of objects, a 20 MB zip whose `data.pkl` is deflated) are refused early, with the
//! limit named, and the heap never holds more than a small multiple of the file: a counting
//! global allocator records the peak of live heap bytes while each one is loaded. (Its own
//! test binary, with one test, so no other test's allocations are counted.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use graft_weights::{load, WeightsError};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Old and new blocks both exist while the data is copied.
        let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
        PEAK.fetch_max(now, Ordering::Relaxed);
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ONE_GB: usize = 1 << 30;

/// `None`, then TUPLE1 `n` times (each byte wraps the top of the stack in a new tuple: the
/// most objects per byte a pickle can make), then STOP.
fn tuple_tower(n: usize) -> Vec<u8> {
    let mut p = b"\x80\x02N".to_vec();
    p.extend(std::iter::repeat_n(0x85u8, n));
    p.push(b'.');
    p
}

#[test]
fn large_hostile_pickles_are_refused_early_within_a_small_multiple_of_their_size() {
    let d = tempfile::tempdir().unwrap();

    // 1. A legacy .pth whose main pickle is 64 MiB of object-creating opcodes (~67 million
    //    objects if it ran to the end).
    let legacy = legacy_file(&tuple_tower(64 << 20), &[]);
    let legacy_path = write(d.path(), "objects.pth", &legacy);
    let legacy_len = legacy.len();
    drop(legacy);

    // 2. A 20 MB zip: `data.pkl` is 60 MiB of the same, deflated to ~60 KB, beside a 20 MB
    //    incompressible entry that makes the archive large enough for the inflate ratio
    //    to allow it; the pickle VM's budget is what stops it.
    let pkl = tuple_tower(60 << 20);
    let mut noise = vec![0u8; 20 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", deflated).unwrap();
        z.write_all(&pkl).unwrap();
        z.start_file("archive/padding", stored).unwrap();
        z.write_all(&noise).unwrap();
        z.finish().unwrap();
    }
    let zip_bytes = buf.into_inner();
    let zip_path = write(d.path(), "deflated.pth", &zip_bytes);
    let zip_len = zip_bytes.len();
    drop((pkl, noise, zip_bytes));

    for (path, file_len, limit) in [
        (&legacy_path, legacy_len, "MAX_PICKLE_MEMORY"),
        (&zip_path, zip_len, "MAX_PICKLE_MEMORY"),
    ] {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let start = Instant::now();
        let result = load(path);
        let elapsed = start.elapsed();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        eprintln!(
            "{}: {} MB file, refused in {:.2} s, peak heap {} MB: {}",
            path.file_name().unwrap().to_string_lossy(),
            file_len >> 20,
            elapsed.as_secs_f64(),
            peak >> 20,
            result.as_ref().map(|_| "loaded".to_string()).unwrap_or_else(|e| e.to_string())
        );
        match result {
            Err(e @ WeightsError::LimitExceeded { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(limit) && msg.contains(&*path.to_string_lossy()), "{msg}");
            }
            other => panic!("{}: {:?}", path.display(), other.map(|d| d.tensors.len())),
        }
        assert!(peak < ONE_GB, "peak heap {peak} bytes");
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}
