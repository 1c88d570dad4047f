//! Hand-made PyTorch files, valid and hostile, in both the legacy stream
//! layout and the zip layout.

mod common;

use common::*;
use graft_weights::{detect_format, load, load_pytorch, DType, Format, WeightsError};
use std::path::Path;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn assert_sample(path: &Path) {
    let sd = load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sd.tensors.len(), 3);
    let w = &sd.tensors["w"];
    assert_eq!(w.shape, vec![2, 3]);
    assert_eq!(w.dtype, DType::F32);
    assert_eq!(
        w.data,
        vec![0., 2., 4., 1., 3., 5.],
        "strided view gathered row-major"
    );
    assert_eq!(sd.tensors["b"].data, vec![4., 5.]);
    let n = &sd.tensors["n"];
    assert_eq!(
        (n.shape.clone(), n.dtype, n.data.clone()),
        (vec![], DType::I64, vec![7.])
    );
    assert!(sd.metadata.is_empty());
}

#[test]
fn valid_legacy_and_zip_load_identically() {
    let d = tmp();
    let legacy = write(d.path(), "a.bin", &sample_legacy());
    let zip = write(d.path(), "b.safetensors", &sample_zip()); // extension is ignored
    assert_eq!(detect_format(&legacy).unwrap(), Format::PytorchLegacy);
    assert_eq!(detect_format(&zip).unwrap(), Format::PytorchZip);
    assert_sample(&legacy);
    assert_sample(&zip);
    assert_eq!(load_pytorch(&legacy).unwrap(), load_pytorch(&zip).unwrap());
}

fn hostile_call(module: &str, name: &str) -> Vec<u8> {
    Pickle::new()
        .global(module, name)
        .mark()
        .str("touch /tmp/pwned")
        .tuple()
        .reduce()
        .stop()
        .bytes()
}

fn expect_forbidden(path: &Path, module: &str, name: &str) {
    match load(path) {
        Err(e @ WeightsError::ForbiddenGlobal { .. }) => {
            let msg = e.to_string();
            assert_eq!(
                msg,
                format!(
                    "{}: refusing to load: pickle calls forbidden global `{module}.{name}` (a state dict needs only tensors)",
                    path.display()
                )
            );
            let WeightsError::ForbiddenGlobal {
                module: m,
                name: n,
                path: p,
            } = e
            else {
                unreachable!()
            };
            assert_eq!((m.as_str(), n.as_str(), p.as_path()), (module, name, path));
        }
        other => panic!(
            "{}: expected ForbiddenGlobal {module}.{name}, got {other:?}",
            path.display()
        ),
    }
}

#[test]
fn forbidden_globals_bare_pickle() {
    let d = tmp();
    for (m, n) in [
        ("os", "system"),
        ("builtins", "eval"),
        ("posix", "system"),
        ("subprocess", "Popen"),
    ] {
        let p = write(d.path(), &format!("{m}.{n}.pth"), &hostile_call(m, n));
        expect_forbidden(&p, m, n);
    }
}

#[test]
fn forbidden_global_as_main_pickle_of_legacy_file() {
    let d = tmp();
    let bytes = legacy_file(&hostile_call("os", "system"), &[]);
    let p = write(d.path(), "legacy.pth", &bytes);
    expect_forbidden(&p, "os", "system");
}

#[test]
fn forbidden_global_nested_inside_a_state_dict() {
    // A real-looking state dict whose second value is eval('...').
    let d = tmp();
    let mut p = Pickle::new()
        .global("collections", "OrderedDict")
        .empty_tuple()
        .reduce();
    p = push_tensor(p.str("w"), &sample_entries()[0], false).setitem();
    p = p
        .str("evil")
        .global("builtins", "eval")
        .mark()
        .str("1+1")
        .tuple()
        .reduce()
        .setitem();
    let pkl = p.stop().bytes();
    let storages: Vec<(&str, Vec<u8>)> = vec![("0", f32_bytes(&[0.; 6]))];
    let path = write(d.path(), "evil.pth", &zip_file(&pkl, &storages));
    expect_forbidden(&path, "builtins", "eval");
}

#[test]
fn forbidden_global_in_zip_data_pkl() {
    let d = tmp();
    let p = write(
        d.path(),
        "zip.pth",
        &zip_file(&hostile_call("os", "system"), &[]),
    );
    expect_forbidden(&p, "os", "system");
    // protocol-4 STACK_GLOBAL spelling of the same thing
    let stack_global = Pickle(vec![0x80, 0x04])
        .op(0x8c)
        .op(10)
        .raw(b"subprocess")
        .op(0x8c)
        .op(5)
        .raw(b"Popen")
        .op(0x93)
        .mark()
        .str("id")
        .tuple()
        .reduce()
        .stop()
        .bytes();
    let p = write(d.path(), "zip4.pth", &zip_file(&stack_global, &[]));
    expect_forbidden(&p, "subprocess", "Popen");
}

#[test]
fn missing_storage_key_zip() {
    let d = tmp();
    let mut e = sample_entries();
    e[2].key = "does-not-exist".into();
    let pkl = state_dict_pickle(&e, false);
    let storages: Vec<(&str, Vec<u8>)> = vec![("0", f32_bytes(&[0.; 6])), ("1", i64_bytes(&[7]))];
    let p = write(d.path(), "m.pth", &zip_file(&pkl, &storages));
    match load(&p) {
        Err(WeightsError::MissingStorage { key, path }) => {
            assert_eq!(key, "does-not-exist");
            assert_eq!(path, p);
        }
        other => panic!("expected MissingStorage, got {other:?}"),
    }
}

#[test]
fn missing_storage_key_legacy() {
    let d = tmp();
    let main = state_dict_pickle(&sample_entries(), true);
    // Storage "1" (used by tensor `n`) is left out of the key list and data.
    let storages = vec![("0", 6, f32_bytes(&[0.; 6]))];
    let p = write(d.path(), "m.pth", &legacy_file(&main, &storages));
    match load(&p) {
        Err(WeightsError::MissingStorage { key, .. }) => assert_eq!(key, "1"),
        other => panic!("expected MissingStorage, got {other:?}"),
    }
}

#[test]
fn storage_declared_larger_than_file_legacy() {
    let d = tmp();
    let huge = 1u64 << 40;
    let e = vec![Entry::new("w", "FloatStorage", "0", huge, 0, &[4], &[1])];
    let main = state_dict_pickle(&e, true);
    let p = write(
        d.path(),
        "big.pth",
        &legacy_file(&main, &[("0", huge, f32_bytes(&[1., 2., 3., 4.]))]),
    );
    match load(&p) {
        Err(e @ WeightsError::Truncated { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&p.display().to_string()), "{msg}");
            assert!(msg.contains("storage `0`"), "{msg}");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn storage_declared_larger_than_entry_zip() {
    let d = tmp();
    let huge = 1u64 << 40;
    let e = vec![Entry::new("w", "FloatStorage", "0", huge, 0, &[4], &[1])];
    let pkl = state_dict_pickle(&e, false);
    let p = write(
        d.path(),
        "big.pth",
        &zip_file(&pkl, &[("0", f32_bytes(&[1., 2., 3., 4.]))]),
    );
    match load(&p) {
        Err(WeightsError::StorageTooSmall {
            tensor,
            needed,
            available,
            ..
        }) => {
            assert_eq!(tensor, "w");
            assert_eq!(needed, huge * 4);
            assert_eq!(available, 16);
        }
        other => panic!("expected StorageTooSmall, got {other:?}"),
    }
}

#[test]
fn view_past_end_of_storage() {
    let d = tmp();
    // Storage has 6 floats; the view wants elements 4..=9.
    let e = vec![Entry::new(
        "late",
        "FloatStorage",
        "0",
        6,
        4,
        &[2, 3],
        &[3, 1],
    )];
    for legacy in [true, false] {
        let bytes = if legacy {
            legacy_file(
                &state_dict_pickle(&e, true),
                &[("0", 6, f32_bytes(&[0.; 6]))],
            )
        } else {
            zip_file(&state_dict_pickle(&e, false), &[("0", f32_bytes(&[0.; 6]))])
        };
        let p = write(d.path(), "v.pth", &bytes);
        match load(&p) {
            Err(WeightsError::StorageTooSmall {
                tensor,
                needed,
                available,
                ..
            }) => assert_eq!((tensor.as_str(), needed, available), ("late", 40, 24)),
            other => panic!("legacy={legacy}: expected StorageTooSmall, got {other:?}"),
        }
    }
}

#[test]
fn broadcast_bomb_is_refused() {
    // One stored float, viewed with stride 0 as a 2^20 x 2^20 tensor.
    let d = tmp();
    let e = vec![Entry::new(
        "bomb",
        "FloatStorage",
        "0",
        1,
        0,
        &[1 << 20, 1 << 20],
        &[0, 0],
    )];
    let p = write(
        d.path(),
        "bomb.pth",
        &zip_file(&state_dict_pickle(&e, false), &[("0", f32_bytes(&[1.]))]),
    );
    match load(&p) {
        Err(e @ WeightsError::Corrupt { .. }) => assert!(e.to_string().contains("expand"), "{e}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn small_broadcast_buffer_is_fine() {
    // Like HF's `position_ids = arange(4).expand(1, -1)`, plus a stride-0 row.
    let d = tmp();
    let e = vec![
        Entry::new("pos", "LongStorage", "0", 4, 0, &[1, 4], &[0, 1]),
        Entry::new("rep", "LongStorage", "0", 4, 1, &[3, 2], &[0, 1]),
    ];
    let p = write(
        d.path(),
        "b.pth",
        &zip_file(
            &state_dict_pickle(&e, false),
            &[("0", i64_bytes(&[0, 1, 2, 3]))],
        ),
    );
    let sd = load(&p).unwrap();
    assert_eq!(sd.tensors["pos"].data, vec![0., 1., 2., 3.]);
    assert_eq!(sd.tensors["rep"].data, vec![1., 2., 1., 2., 1., 2.]);
}

#[test]
fn checkpoint_dict_and_parameters() {
    // {'epoch': 3, 'state_dict': {'w': Parameter(tensor)}, 'optimizer': None}
    let d = tmp();
    let e = &sample_entries()[1];
    let mut p = Pickle::new().empty_dict().str("epoch").int(3).setitem();
    p = p.str("state_dict").empty_dict().str("w");
    p = p.global("torch._utils", "_rebuild_parameter");
    p = push_tensor(p.mark(), e, false)
        .op(0x88)
        .global("collections", "OrderedDict")
        .empty_tuple()
        .reduce()
        .tuple()
        .reduce();
    p = p.setitem().setitem().str("optimizer").none().setitem();
    let path = write(
        d.path(),
        "ckpt.pth",
        &zip_file(
            &p.stop().bytes(),
            &[("0", f32_bytes(&[0., 1., 2., 3., 4., 5.]))],
        ),
    );
    let sd = load(&path).unwrap();
    assert_eq!(sd.tensors.len(), 1);
    assert_eq!(sd.tensors["w"].data, vec![4., 5.]);
}

#[test]
fn non_storage_persistent_id_is_refused() {
    let d = tmp();
    // Legacy whole-module pickles use ('module', cls, source_file, source).
    let pkl = Pickle::new()
        .mark()
        .str("module")
        .none()
        .str("model.py")
        .str("import os")
        .tuple()
        .op(b'Q')
        .stop()
        .bytes();
    let p = write(d.path(), "mod.pth", &zip_file(&pkl, &[]));
    match load(&p) {
        Err(e @ WeightsError::Corrupt { .. }) => {
            assert!(e.to_string().contains("persistent id"), "{e}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn top_level_must_be_a_dict() {
    let d = tmp();
    let pkl = Pickle::new().op(b']').stop().bytes();
    let p = write(d.path(), "list.pth", &zip_file(&pkl, &[]));
    assert!(matches!(load(&p), Err(WeightsError::Corrupt { .. })));
}

#[test]
fn allowlisted_global_cannot_be_misused() {
    // Calling a storage class, or REDUCE with a non-tuple argument.
    let d = tmp();
    let pkl = Pickle::new()
        .global("torch", "FloatStorage")
        .mark()
        .int(10)
        .tuple()
        .reduce()
        .stop()
        .bytes();
    let p = write(d.path(), "s.pth", &zip_file(&pkl, &[]));
    assert!(matches!(load(&p), Err(WeightsError::Corrupt { .. })));
    let pkl = Pickle::new()
        .global("collections", "OrderedDict")
        .none()
        .reduce()
        .stop()
        .bytes();
    let p = write(d.path(), "o.pth", &zip_file(&pkl, &[]));
    assert!(matches!(load(&p), Err(WeightsError::Corrupt { .. })));
}

#[test]
fn non_weights_files() {
    let d = tmp();
    for (name, bytes) in [
        ("empty", Vec::new()),
        ("text", b"hello, I am not a model".to_vec()),
        ("wheel", {
            // a zip without <dir>/data.pkl, e.g. a Python wheel
            let mut buf = std::io::Cursor::new(Vec::new());
            let mut z = zip::ZipWriter::new(&mut buf);
            z.start_file("pkg/__init__.py", zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut z, b"").unwrap();
            z.finish().unwrap();
            buf.into_inner()
        }),
    ] {
        let p = write(d.path(), name, &bytes);
        match load(&p) {
            Err(e @ WeightsError::NotAWeightsFile { .. }) => {
                assert!(e.to_string().starts_with(&p.display().to_string()))
            }
            other => panic!("{name}: expected NotAWeightsFile, got {other:?}"),
        }
    }
    let missing = d.path().join("nope.pth");
    assert!(matches!(load(&missing), Err(WeightsError::Io { .. })));
}

#[test]
fn plain_pickle_without_magic_is_corrupt() {
    let d = tmp();
    let p = write(
        d.path(),
        "plain.pkl",
        &Pickle::new().empty_dict().stop().bytes(),
    );
    match load(&p) {
        Err(e @ WeightsError::Corrupt { .. }) => assert!(e.to_string().contains("magic"), "{e}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn big_endian_zip() {
    let d = tmp();
    let e = vec![
        Entry::new("w", "FloatStorage", "0", 3, 0, &[3], &[1]),
        Entry::new("n", "LongStorage", "1", 1, 0, &[], &[]),
    ];
    let be_f32: Vec<u8> = [1.5f32, -2.0, 1e-3]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let be_i64 = 300i64.to_be_bytes().to_vec();
    let p = write(
        d.path(),
        "be.pth",
        &zip_file_with_byteorder(
            &state_dict_pickle(&e, false),
            &[("0", be_f32), ("1", be_i64)],
            "big",
        ),
    );
    let sd = load(&p).unwrap();
    assert_eq!(sd.tensors["w"].data, vec![1.5, -2.0, 1e-3]);
    assert_eq!(sd.tensors["n"].data, vec![300.0]);
    let p = write(
        d.path(),
        "odd.pth",
        &zip_file_with_byteorder(&state_dict_pickle(&e, false), &[], "middle"),
    );
    assert!(matches!(load(&p), Err(WeightsError::Corrupt { .. })));
}

#[test]
fn reduced_precision_and_integer_storages() {
    let d = tmp();
    let e = vec![
        Entry::new("h", "HalfStorage", "0", 2, 0, &[2], &[1]),
        Entry::new("bf", "BFloat16Storage", "1", 2, 0, &[2], &[1]),
        Entry::new("dbl", "DoubleStorage", "2", 1, 0, &[1], &[1]),
        Entry::new("i8", "CharStorage", "3", 2, 0, &[2], &[1]),
        Entry::new("u8", "ByteStorage", "4", 2, 0, &[2], &[1]),
        Entry::new("mask", "BoolStorage", "5", 2, 0, &[2], &[1]),
        Entry::new("i16", "ShortStorage", "6", 1, 0, &[1], &[1]),
        Entry::new("i32", "IntStorage", "7", 1, 0, &[1], &[1]),
    ];
    let h: Vec<u8> = [0.5f32, -3.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf: Vec<u8> = [2.0f32, -0.125]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let storages: Vec<(&str, Vec<u8>)> = vec![
        ("0", h),
        ("1", bf),
        ("2", 0.75f64.to_le_bytes().to_vec()),
        ("3", vec![0xff, 0x05]),
        ("4", vec![0xff, 0x05]),
        ("5", vec![0, 1]),
        ("6", (-300i16).to_le_bytes().to_vec()),
        ("7", 70000i32.to_le_bytes().to_vec()),
    ];
    let p = write(
        d.path(),
        "types.pth",
        &zip_file(&state_dict_pickle(&e, false), &storages),
    );
    let sd = load(&p).unwrap();
    let got = |k: &str| (sd.tensors[k].dtype, sd.tensors[k].data.clone());
    assert_eq!(got("h"), (DType::F16, vec![0.5, -3.0]));
    assert_eq!(got("bf"), (DType::BF16, vec![2.0, -0.125]));
    assert_eq!(got("dbl"), (DType::F64, vec![0.75]));
    assert_eq!(got("i8"), (DType::I8, vec![-1.0, 5.0]));
    assert_eq!(got("u8"), (DType::U8, vec![255.0, 5.0]));
    assert_eq!(got("mask"), (DType::Bool, vec![0.0, 1.0]));
    assert_eq!(got("i16"), (DType::I16, vec![-300.0]));
    assert_eq!(got("i32"), (DType::I32, vec![70000.0]));
}

#[test]
fn legacy_storage_view_metadata() {
    // torch < 0.4 could serialize a storage that is a slice of another:
    // ('storage', FloatStorage, root_key, 'cpu', root_numel, (view_key, offset, size)).
    let d = tmp();
    let view_pid = |view: &str, offset: u64, size: u64| {
        Pickle::default()
            .mark()
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .int(6)
            .mark()
            .str(view)
            .int(offset)
            .int(size)
            .tuple()
            .tuple()
            .op(b'Q')
    };
    let build = |offset: u64, size: u64, shape: u64| {
        let mut p = Pickle::new()
            .empty_dict()
            .str("v")
            .global("torch._utils", "_rebuild_tensor_v2")
            .mark();
        p.0.extend(view_pid("v0", offset, size).0);
        p = p
            .int(0)
            .ints_tuple(&[shape])
            .ints_tuple(&[1])
            .op(0x89)
            .empty_dict()
            .tuple()
            .reduce()
            .setitem()
            .stop();
        legacy_file(
            &p.bytes(),
            &[("0", 6, f32_bytes(&[0., 1., 2., 3., 4., 5.]))],
        )
    };
    let p = write(d.path(), "view.pth", &build(2, 3, 3));
    assert_eq!(load(&p).unwrap().tensors["v"].data, vec![2., 3., 4.]);
    // A view reaching past its root storage...
    let p = write(d.path(), "view-oob.pth", &build(4, 3, 3));
    assert!(matches!(
        load(&p),
        Err(WeightsError::StorageTooSmall { .. })
    ));
    // ...or a tensor reaching past its view, even though the root is big enough.
    let p = write(d.path(), "view-short.pth", &build(1, 2, 3));
    assert!(matches!(
        load(&p),
        Err(WeightsError::StorageTooSmall { .. })
    ));
}
