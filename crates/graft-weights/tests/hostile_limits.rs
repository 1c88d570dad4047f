//! The limits of `graft_weights::limits`, the CRC-32 of every zip entry, the refusal of
//! non-finite weights and of non-regular files, each on a crafted file: a typed error that
//! names the file and the tensor, entry or limit. (Peak memory on the large hostile inputs is
//! measured in `tests/peak_memory.rs`, a binary of its own.)

mod common;

use std::io::Write;

use common::*;
use graft_weights::{load, load_bytes, WeightsError};

/// A zip checkpoint whose entries are deflated (`data.pkl` and storages).
fn deflated_zip(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(pkl).unwrap();
        for (key, bytes) in storages {
            z.start_file(format!("archive/data/{key}"), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

fn one_tensor(name: &str, values: &[f32]) -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
    let n = values.len() as u64;
    let pkl = state_dict_pickle(&[Entry::new(name, "FloatStorage", "0", n, 0, &[n], &[1])], false);
    (pkl, vec![("0", f32_bytes(values))])
}

fn expect_limit(r: Result<graft_weights::StateDict, WeightsError>, limit: &str, needles: &[&str]) {
    match r {
        Err(e @ WeightsError::LimitExceeded { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(limit), "{msg}");
            for n in needles {
                assert!(msg.contains(n), "`{n}` not in: {msg}");
            }
        }
        other => panic!("expected {limit}: {:?}", other.map(|d| d.tensors.len())),
    }
}

#[test]
fn a_bit_flipped_in_a_storage_with_a_stale_crc_is_refused_naming_the_entry() {
    let values = [0.25f32, -1.5, 3.0, 7.75, 1e-3, 42.0];
    let (pkl, storages) = one_tensor("fc.weight", &values);
    let good = zip_file(&pkl, &storages);
    assert_eq!(load_bytes("ok.pth".as_ref(), &good).unwrap().tensors["fc.weight"].data, values);

    // Stored entries keep their bytes verbatim: find the storage, flip one bit of its
    // third float's mantissa (3.0 -> 3.0000002, still finite), leave the CRC as it was.
    let raw = f32_bytes(&values);
    let at = good.windows(raw.len()).position(|w| w == raw.as_slice()).unwrap();
    let mut bad = good.clone();
    bad[at + 8] ^= 0x01;
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "flipped.pth", &bad);
    match load(&p) {
        Err(e @ WeightsError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("flipped.pth") && msg.contains("archive/data/0") && msg.contains("CRC-32"), "{msg}");
        }
        other => panic!("{:?}", other.map(|d| d.tensors["fc.weight"].data.clone())),
    }
}

#[test]
fn a_bit_flipped_in_a_deflated_storage_is_refused_too() {
    // Deflated entries: corrupt the compressed stream's last byte before the central
    // directory of entry `archive/data/0`. Either inflating fails or the CRC does; both
    // must name the entry.
    let values: Vec<f32> = (0..256).map(|i| i as f32 * 0.5).collect();
    let (pkl, storages) = one_tensor("w", &values);
    let good = deflated_zip(&pkl, &storages);
    assert_eq!(load_bytes("ok.pth".as_ref(), &good).unwrap().tensors["w"].data, values);
    let name = b"archive/data/0";
    // The entry's local header (the first occurrence of its name), then its compressed
    // data after the name and the extra field.
    let name_at = good.windows(name.len()).position(|w| w == name).unwrap();
    let header = name_at - 30;
    assert_eq!(&good[header..header + 4], b"PK\x03\x04");
    let extra = u16::from_le_bytes([good[header + 28], good[header + 29]]) as usize;
    let at = name_at + name.len() + extra;
    let mut hit = 0;
    for off in [at + 4, at + 20, at + 40] {
        let mut bad = good.clone();
        bad[off] ^= 0x10;
        let msg = match load_bytes("bad.pth".as_ref(), &bad) {
            Err(e) => e.to_string(),
            Ok(d) => panic!("flip at {off} loaded: {:?}", &d.tensors["w"].data[..8]),
        };
        assert!(msg.contains("archive/data/0"), "{msg}");
        hit += 1;
    }
    assert_eq!(hit, 3);
}

#[test]
fn a_deflated_pickle_larger_than_max_pickle_bytes_is_refused_before_inflating() {
    // 80 MiB of MEMOIZE-free padding (POP of None... all zeros is not a pickle, but the
    // size is refused before a byte is run): deflates to ~80 KB.
    let mut pkl = vec![0u8; 80 << 20];
    pkl[0] = 0x80;
    let z = deflated_zip(&pkl, &[]);
    assert!(z.len() < 1 << 20, "{}", z.len());
    let start = std::time::Instant::now();
    expect_limit(load_bytes("bomb.pth".as_ref(), &z), "MAX_PICKLE_BYTES", &["bomb.pth", "archive/data.pkl"]);
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
}

#[test]
fn compressed_entries_inflating_past_the_archive_ratio_are_refused_naming_the_entry() {
    // A 16 MiB zero storage deflates to ~16 KB: over 64x the archive + 16 MiB once two
    // such storages are declared, refused before either is inflated.
    let n = 4u64 << 20; // floats
    let pkl = state_dict_pickle(
        &[
            Entry::new("a", "FloatStorage", "0", n, 0, &[n], &[1]),
            Entry::new("b", "FloatStorage", "1", n, 0, &[n], &[1]),
        ],
        false,
    );
    let zeros = vec![0u8; (n * 4) as usize];
    let z = deflated_zip(&pkl, &[("0", zeros.clone()), ("1", zeros)]);
    expect_limit(
        load_bytes("zeros.pth".as_ref(), &z),
        "MAX_ARCHIVE_INFLATE_RATIO",
        &["zeros.pth", "archive/data/1", "torch.save"],
    );
    // One of them is within the base allowance and loads.
    let pkl = state_dict_pickle(&[Entry::new("a", "FloatStorage", "0", n, 0, &[n], &[1])], false);
    let z = deflated_zip(&pkl, &[("0", vec![0u8; (n * 4) as usize])]);
    assert_eq!(load_bytes("one.pth".as_ref(), &z).unwrap().tensors["a"].data.len(), n as usize);
}

/// Rewrites the uncompressed size of the entry named `name` in its local header and in the
/// central directory (both 32-bit fields; the entry must not use zip64).
fn patch_uncompressed_size(zip: &mut [u8], name: &[u8], size: u32) {
    let mut patched = 0;
    let mut i = 0;
    while i + 46 <= zip.len() {
        let sig = &zip[i..i + 4];
        if sig == b"PK\x03\x04" {
            let n = u16::from_le_bytes([zip[i + 26], zip[i + 27]]) as usize;
            if &zip[i + 30..i + 30 + n] == name {
                zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        } else if sig == b"PK\x01\x02" {
            let n = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
            if &zip[i + 46..i + 46 + n] == name {
                zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
        i += 1;
    }
    assert_eq!(patched, 2, "local header and central directory");
}

#[test]
fn an_entry_inflating_past_its_declared_size_is_refused() {
    let (pkl, storages) = one_tensor("w", &[1.0, 2.0]);
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(&pkl).unwrap();
        z.start_file("archive/data/0", opts).unwrap();
        z.write_all(&storages[0].1).unwrap();
        z.finish().unwrap();
    }
    let mut z = buf.into_inner();
    // data.pkl claims 20 bytes fewer than it inflates to.
    patch_uncompressed_size(&mut z, b"archive/data.pkl", pkl.len() as u32 - 20);
    let msg = load_bytes("lies.pth".as_ref(), &z).unwrap_err().to_string();
    assert!(msg.contains("lies.pth") && msg.contains("archive/data.pkl") && msg.contains("more than its declared"), "{msg}");
}

#[test]
fn nan_and_infinite_weights_are_refused_naming_file_and_tensor() {
    let d = tempfile::tempdir().unwrap();
    // zip
    let (pkl, storages) = one_tensor("layer1.0.conv1.weight", &[0.5, f32::NAN, 1.0, f32::NAN]);
    let p = write(d.path(), "nan.pth", &zip_file(&pkl, &storages));
    match load(&p) {
        Err(e @ WeightsError::NonFinite { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("nan.pth") && msg.contains("`layer1.0.conv1.weight`"), "{msg}");
            assert!(msg.contains("2 non-finite") && msg.contains("NaN at element 1"), "{msg}");
        }
        other => panic!("{:?}", other.map(|d| d.tensors.len())),
    }
    assert!(matches!(graft_weights::load_pytorch(&p), Err(WeightsError::NonFinite { .. })));
    // legacy, -inf
    let n = 3;
    let legacy = legacy_file(
        &state_dict_pickle(&[Entry::new("bias", "FloatStorage", "0", n, 0, &[n], &[1])], true),
        &[("0", n, f32_bytes(&[1.0, 2.0, f32::NEG_INFINITY]))],
    );
    let msg = load(&write(d.path(), "old.pth", &legacy)).unwrap_err().to_string();
    assert!(msg.contains("old.pth") && msg.contains("`bias`") && msg.contains("-inf at element 2"), "{msg}");
    // safetensors, +inf (through the writer, which does not judge values)
    let mut dict = graft_weights::StateDict::default();
    dict.tensors.insert(
        "head.weight".into(),
        graft_weights::Tensor { shape: vec![2], dtype: graft_weights::DType::F32, data: vec![f32::INFINITY, 0.0] },
    );
    let st = d.path().join("inf.safetensors");
    graft_weights::save_safetensors(&st, &dict).unwrap();
    for r in [load(&st), graft_weights::load_safetensors(&st)] {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("inf.safetensors") && msg.contains("`head.weight`") && msg.contains("inf at element 0"), "{msg}");
    }
    // float64 beyond f32's range becomes an infinity: refused as well.
    let n = 1;
    let pkl = state_dict_pickle(&[Entry::new("big", "DoubleStorage", "0", n, 0, &[n], &[1])], false);
    let z = zip_file(&pkl, &[("0", 1e300f64.to_le_bytes().to_vec())]);
    assert!(matches!(load_bytes("f64.pth".as_ref(), &z), Err(WeightsError::NonFinite { .. })));
}

/// A safetensors file with a hand-written header (the writer would refuse a bad one).
fn safetensors_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

#[test]
fn safetensors_bytes_disagreeing_with_dtype_and_shape_are_refused_naming_the_tensor() {
    // Four F32 values (16 bytes) declared as four F16 (8 bytes).
    let data = f32_bytes(&[0.1, 0.2, 0.3, 0.4]);
    let header = r#"{"classifier.weight":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#;
    let msg = load_bytes("f16.safetensors".as_ref(), &safetensors_raw(header, &data)).unwrap_err().to_string();
    assert!(msg.contains("f16.safetensors") && msg.contains("classifier.weight"), "{msg}");
    // Declared F32 but only half the bytes.
    let header = r#"{"classifier.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,16]}}"#;
    let msg = load_bytes("short.safetensors".as_ref(), &safetensors_raw(header, &data)).unwrap_err().to_string();
    assert!(msg.contains("short.safetensors") && msg.contains("classifier.weight"), "{msg}");
    // When the shape is doubled to match, the halves of F32 values decode as F16; those that
    // come out NaN or infinite (here the high half of a float near f32::MAX) are refused.
    let data = f32_bytes(&[1.0, 3.0e38]);
    let header = r#"{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}"#;
    let msg = load_bytes("halves.safetensors".as_ref(), &safetensors_raw(header, &data)).unwrap_err().to_string();
    assert!(msg.contains("halves.safetensors") && msg.contains("`w`") && msg.contains("non-finite"), "{msg}");
}

#[cfg(unix)]
#[test]
fn a_fifo_given_as_weights_is_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("weights.pth");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let start = std::time::Instant::now();
    for r in [load(&fifo), graft_weights::load_pytorch(&fifo), graft_weights::load_safetensors(&fifo)] {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("weights.pth") && msg.contains("FIFO") && msg.contains("not a regular file"), "{msg}");
    }
    assert!(graft_weights::detect_format(&fifo).is_err());
    assert!(start.elapsed().as_secs() < 5);
    let msg = load("/dev/zero".as_ref()).unwrap_err().to_string();
    assert!(msg.contains("/dev/zero") && msg.contains("character device"), "{msg}");
}
