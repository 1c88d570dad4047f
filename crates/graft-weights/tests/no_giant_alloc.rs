//! Hostile size claims must be rejected *before* anything is allocated for
//! them. A counting global allocator records the largest single request made
//! while each hostile file is loaded. (Its own test binary, with one test,
//! so no other test's allocations are counted.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use graft_weights::load;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LIMIT: usize = 1 << 20; // 1 MiB: far more than any of these tiny files needs

#[test]
fn hostile_sizes_do_not_allocate() {
    let d = tempfile::tempdir().unwrap();
    let huge = 1u64 << 40; // 2^40 elements = 4 TiB of f32
    let e = vec![Entry::new("w", "FloatStorage", "0", huge, 0, &[huge], &[1])];
    let small = f32_bytes(&[1., 2., 3., 4.]);

    let mut bin8 = b"\x80\x04\x8d".to_vec(); // BINUNICODE8 claiming 2^62 bytes
    bin8.extend((1u64 << 62).to_le_bytes());
    bin8.extend(b"abc.");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "legacy numel 2^40",
            legacy_file(&state_dict_pickle(&e, true), &[("0", huge, small.clone())]),
        ),
        (
            "zip numel 2^40",
            zip_file(&state_dict_pickle(&e, false), &[("0", small.clone())]),
        ),
        (
            "stride-0 broadcast",
            zip_file(
                &state_dict_pickle(
                    &[Entry::new(
                        "b",
                        "FloatStorage",
                        "0",
                        1,
                        0,
                        &[1 << 30, 1 << 30],
                        &[0, 0],
                    )],
                    false,
                ),
                &[("0", f32_bytes(&[1.]))],
            ),
        ),
        ("binunicode8 2^62", bin8),
    ];
    for (what, bytes) in cases {
        assert!(bytes.len() < 4096, "{what}: test file should be tiny");
        let p = write(d.path(), "f.pth", &bytes);
        LARGEST.store(0, Ordering::Relaxed);
        let r = load(&p);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(r.is_err(), "{what}: should fail");
        assert!(largest < LIMIT, "{what}: allocated {largest} bytes at once");
    }
}
