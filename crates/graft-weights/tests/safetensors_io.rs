//! safetensors: round trip, atomic save, reading other dtypes.

use std::collections::BTreeMap;
use std::path::Path;

use graft_weights::{
    detect_format, load, load_safetensors, save_safetensors, DType, Format, StateDict, Tensor,
    WeightsError,
};

fn sample() -> StateDict {
    let mut sd = StateDict::default();
    sd.tensors.insert(
        "layer.weight".into(),
        Tensor {
            shape: vec![2, 3],
            dtype: DType::F32,
            data: vec![0.5, -1.0, 3.25, f32::MIN_POSITIVE, 1e30, -0.0],
        },
    );
    sd.tensors.insert(
        "layer.bias".into(),
        Tensor {
            shape: vec![2],
            dtype: DType::F32,
            data: vec![7.0, 8.0],
        },
    );
    sd.tensors.insert(
        "scalar".into(),
        Tensor {
            shape: vec![],
            dtype: DType::F32,
            data: vec![42.0],
        },
    );
    sd.tensors.insert(
        "empty".into(),
        Tensor {
            shape: vec![0, 4],
            dtype: DType::F32,
            data: vec![],
        },
    );
    sd.metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "graft.base".to_string(),
            "efficientnet-lite0 \"quoted\" ünïcode".to_string(),
        ),
    ]);
    sd
}

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_is_exact_and_leaves_no_temp_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("out.safetensors");
    let sd = sample();
    save_safetensors(&p, &sd).unwrap();
    assert_eq!(dir_listing(d.path()), vec!["out.safetensors"]);
    assert_eq!(detect_format(&p).unwrap(), Format::Safetensors);
    let back = load(&p).unwrap();
    assert_eq!(back, sd);
    // bit-exact, including -0.0
    assert_eq!(
        back.tensors["layer.weight"].data[5].to_bits(),
        (-0.0f32).to_bits()
    );
    assert_eq!(load_safetensors(&p).unwrap(), sd);

    // Overwriting replaces the file in one step, still without leftovers.
    let mut sd2 = sd.clone();
    sd2.tensors.remove("scalar");
    sd2.metadata.clear();
    save_safetensors(&p, &sd2).unwrap();
    assert_eq!(dir_listing(d.path()), vec!["out.safetensors"]);
    assert_eq!(load(&p).unwrap(), sd2);
}

#[test]
fn saved_file_is_readable_by_the_safetensors_crate() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.safetensors");
    save_safetensors(&p, &sample()).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("layer.weight").unwrap();
    assert_eq!(w.dtype(), safetensors::Dtype::F32);
    assert_eq!(w.shape(), &[2, 3]);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
}

#[test]
fn bad_tensor_is_rejected_and_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.safetensors");
    let mut sd = sample();
    sd.tensors.get_mut("layer.bias").unwrap().data.push(1.0); // 3 values for shape [2]
    match save_safetensors(&p, &sd) {
        Err(e @ WeightsError::Safetensors { .. }) => {
            assert!(e.to_string().contains("layer.bias"), "{e}");
            assert_eq!(e.path(), p.as_path());
        }
        other => panic!("expected Safetensors error, got {other:?}"),
    }
    assert!(dir_listing(d.path()).is_empty());
}

#[test]
fn save_into_missing_directory_is_an_io_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("no/such/dir/x.safetensors");
    assert!(matches!(
        save_safetensors(&p, &sample()),
        Err(WeightsError::Io { .. })
    ));
}

#[test]
fn reads_other_dtypes() {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let f16: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [0.25f32]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let i64s: Vec<u8> = [-3i64, 9].iter().flat_map(|x| x.to_le_bytes()).collect();
    let f64s: Vec<u8> = 0.125f64.to_le_bytes().to_vec();
    let bools = vec![0u8, 1, 1];
    let views = vec![
        ("h", TensorView::new(Dtype::F16, vec![2], &f16).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![1], &bf16).unwrap()),
        ("i", TensorView::new(Dtype::I64, vec![2, 1], &i64s).unwrap()),
        ("d", TensorView::new(Dtype::F64, vec![], &f64s).unwrap()),
        ("m", TensorView::new(Dtype::BOOL, vec![3], &bools).unwrap()),
    ];
    let bytes = safetensors::serialize(views, None).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("mixed.st");
    std::fs::write(&p, bytes).unwrap();
    let sd = load(&p).unwrap();
    let get = |k: &str| {
        (
            sd.tensors[k].dtype,
            sd.tensors[k].shape.clone(),
            sd.tensors[k].data.clone(),
        )
    };
    assert_eq!(get("h"), (DType::F16, vec![2], vec![1.5, -2.0]));
    assert_eq!(get("b"), (DType::BF16, vec![1], vec![0.25]));
    assert_eq!(get("i"), (DType::I64, vec![2, 1], vec![-3.0, 9.0]));
    assert_eq!(get("d"), (DType::F64, vec![], vec![0.125]));
    assert_eq!(get("m"), (DType::Bool, vec![3], vec![0.0, 1.0, 1.0]));
    assert!(sd.metadata.is_empty());
}

#[test]
fn corrupt_safetensors_is_an_error_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.safetensors");
    // header claims 1000 bytes of JSON, file has 2
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    std::fs::write(&p, bytes).unwrap();
    match load(&p) {
        Err(e @ WeightsError::Safetensors { .. }) => {
            assert!(e.to_string().starts_with(&p.display().to_string()))
        }
        other => panic!("expected Safetensors error, got {other:?}"),
    }
}
