//! `load_bytes` (what the fuzz targets call) reads exactly what `load` reads from a file.

mod common;

use std::path::Path;

use common::*;

#[test]
fn load_bytes_matches_load_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut dict = graft_weights::StateDict::default();
    dict.tensors.insert("w".into(), graft_weights::Tensor { shape: vec![2], dtype: graft_weights::DType::F32, data: vec![1.5, -2.0] });
    let st = dir.path().join("w.safetensors");
    graft_weights::save_safetensors(&st, &dict).unwrap();
    for (name, bytes) in [("legacy.pth", sample_legacy()), ("zip.pt", sample_zip()), ("w.safetensors", std::fs::read(&st).unwrap())] {
        let path = write(dir.path(), name, &bytes);
        let from_file = graft_weights::load(&path).unwrap();
        let from_bytes = graft_weights::load_bytes(Path::new(name), &bytes).unwrap();
        assert_eq!(from_file.tensors.len(), from_bytes.tensors.len(), "{name}");
        for (k, t) in &from_file.tensors {
            let u = &from_bytes.tensors[k];
            assert_eq!((&t.shape, t.dtype, &t.data), (&u.shape, u.dtype, &u.data), "{name}: {k}");
        }
    }
    let err = graft_weights::load_bytes(Path::new("junk.bin"), b"hello").unwrap_err().to_string();
    assert!(err.contains("junk.bin") && err.contains("not a weights file"), "{err}");
}
