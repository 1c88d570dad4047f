//! Weight formats beyond PyTorch: `graft inspect --weights` on TensorFlow checkpoints and Caffe
//! models, and the seed's TensorFlow recipe (restore hidden1–3 of an MNIST MLP trained by
//! TensorFlow on digits 0–4, freeze them, train hidden4 and a new output on digits 5–9).

use std::path::{Path, PathBuf};

use super::{assert_bad_input, graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The TensorFlow checkpoint `make_tf_mnist_mlp.py` wrote (its prefix).
fn tf_mlp() -> PathBuf {
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf-mnist-mlp/model.ckpt");
    let mut index = prefix.clone().into_os_string();
    index.push(".index");
    assert!(Path::new(&index).is_file(), "fixture missing: {}", prefix.display());
    prefix
}

fn caffe_fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../graft-weights/tests/fixtures/caffe").join(name);
    assert!(p.is_file(), "fixture missing: {}", p.display());
    p
}

/// (name, dtype, shape) of each tensor `graft inspect --weights` lists.
fn listed(v: &serde_json::Value) -> Vec<(String, String, Vec<u64>)> {
    v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            (t["name"].as_str().unwrap().to_string(), t["dtype"].as_str().unwrap().to_string(), shape)
        })
        .collect()
}

#[test]
fn inspect_lists_a_tensorflow_checkpoint_by_prefix_or_index() {
    let prefix = tf_mlp();
    let v = json_of(&graft(&["inspect", "--weights", s(&prefix), "--json"]));
    assert_eq!(v["format"], "tf-checkpoint");
    let f = |n: &str, shape: &[u64]| (n.to_string(), "float32".to_string(), shape.to_vec());
    assert_eq!(
        listed(&v),
        [
            f("hidden1/bias", &[300]),
            f("hidden1/kernel", &[784, 300]),
            f("hidden2/bias", &[50]),
            f("hidden2/kernel", &[300, 50]),
            f("hidden3/bias", &[50]),
            f("hidden3/kernel", &[50, 50]),
            f("hidden4/bias", &[50]),
            f("hidden4/kernel", &[50, 50]),
            f("outputs/bias", &[5]),
            f("outputs/kernel", &[50, 5]),
        ]
    );
    assert_eq!(v["total_values"], 784 * 300 + 300 + 300 * 50 + 50 + 2 * (50 * 50 + 50) + 50 * 5 + 5);
    let index = prefix.with_file_name("model.ckpt.index");
    let by_index = json_of(&graft(&["inspect", "--weights", s(&index), "--json"]));
    assert_eq!(listed(&by_index), listed(&v));
    // The human table names every variable.
    let out = graft(&["inspect", "--weights", s(&prefix)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("hidden4/kernel") && text.contains("[784, 300]"), "{text}");
}

#[test]
fn inspect_lists_caffe_blobs_of_both_layer_formats() {
    let v = json_of(&graft(&["inspect", "--weights", s(&caffe_fixture("v1.caffemodel")), "--json"]));
    assert_eq!(v["format"], "caffemodel");
    let f = |n: &str, shape: &[u64]| (n.to_string(), "float32".to_string(), shape.to_vec());
    assert_eq!(listed(&v), [f("conv1.bias", &[2]), f("conv1.weight", &[2, 3, 3, 3]), f("fc.bias", &[5]), f("fc.weight", &[5, 8])]);
    let v = json_of(&graft(&["inspect", "--weights", s(&caffe_fixture("layer.caffemodel")), "--json"]));
    let names: Vec<String> = listed(&v).into_iter().map(|t| t.0).collect();
    assert_eq!(names, ["bn.blobs.0", "bn.blobs.1", "bn.blobs.2", "conv1.bias", "conv1.weight", "fc.bias", "fc.weight"]);
}

#[test]
fn damaged_checkpoints_and_caffe_files_exit_2_naming_the_file() {
    let dir = scratch("formats-damaged");
    let index = std::fs::read(tf_mlp().with_file_name("model.ckpt.index")).unwrap();
    let cut = dir.join("cut.ckpt.index");
    std::fs::write(&cut, &index[..index.len() - 10]).unwrap();
    assert_bad_input(&graft(&["inspect", "--weights", s(&dir.join("cut.ckpt"))]), &["cut.ckpt.index", "not a TensorFlow checkpoint index"]);
    let mut flipped = index.clone();
    flipped[20] ^= 0x40;
    std::fs::write(dir.join("flip.ckpt.index"), &flipped).unwrap();
    assert_bad_input(&graft(&["inspect", "--weights", s(&dir.join("flip.ckpt"))]), &["flip.ckpt.index", "checksum mismatch"]);
    // The index alone lists; restoring needs the data shard, which is missing here.
    std::fs::write(dir.join("nodata.ckpt.index"), &index).unwrap();
    assert!(graft(&["inspect", "--weights", s(&dir.join("nodata.ckpt"))]).status.success());
    let bad_caffe = dir.join("bad.caffemodel");
    std::fs::write(&bad_caffe, b"\xa2\x06\x05\x0a\x09abc").unwrap();
    assert_bad_input(&graft(&["inspect", "--weights", s(&bad_caffe)]), &["bad.caffemodel", "Caffe"]);
}

/// `per_class` seeded MNIST training digits of classes 5–9 as an image folder.
fn digits_5_to_9(dir: &Path, per_class: usize, seed: u64) -> PathBuf {
    let out = super::adapt::mnist_folder(dir, per_class, seed);
    let mut kept = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let digit: usize = path.file_name().unwrap().to_str().unwrap().parse().expect("class folders named by digit");
        if digit < 5 {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            kept.push(digit);
        }
    }
    kept.sort();
    assert_eq!(kept, [5, 6, 7, 8, 9]);
    out
}

#[test]
fn tf_recipe_restores_hidden_1_to_3_bit_exact_and_keeps_them_frozen() {
    let dir = scratch("formats-tf-recipe");
    let data = digits_5_to_9(&dir, 8, 3);
    let run = dir.join("run");
    let ckpt = tf_mlp();
    let v = json_of(&graft(&[
        "fit", "--arch", "mlp:300,50,50,50", "--weights", s(&ckpt), "--restore", "hidden[123]", "--freeze", "regex:hidden[123]",
        "--data", s(&data), "--out", s(&run), "--epochs", "3", "--lr", "0.01", "--val-split", "0", "--json",
    ]));
    assert_eq!(v["kind"], "mlp");
    assert_eq!(v["activation"], "relu");
    assert_eq!(v["restore"], "hidden[123]");
    let tf = graft_weights::load(&ckpt).unwrap();
    let best = graft_weights::load(&run.join("best.safetensors")).unwrap();
    let key = |layer: usize, part: &str| format!("encoder.layers.{layer}.{part}");
    for layer in 0..3 {
        for (tf_part, part) in [("kernel", "weight"), ("bias", "bias")] {
            let ours = best.tensors.get(&key(layer, part)).unwrap_or_else(|| panic!("no {} in {:?}", key(layer, part), best.tensors.keys()));
            let theirs = &tf.tensors[&format!("hidden{}/{tf_part}", layer + 1)];
            assert_eq!(ours.shape, theirs.shape);
            let same = ours.data.iter().zip(&theirs.data).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "hidden{} {tf_part} changed: restored layers must stay frozen and bit-exact", layer + 1);
        }
    }
    // hidden4 was neither restored nor frozen: it is not the checkpoint's.
    let h4 = &best.tensors[&key(3, "weight")];
    assert_ne!(h4.data, tf.tensors["hidden4/kernel"].data);
    assert_eq!(best.tensors["head.weight"].shape, [50, 5]);
    // eval runs the saved network as fit did (ReLU, not the sigmoid of other MLP runs): on the
    // training images it scores exactly fit's training accuracy.
    let e = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&data), "--json"]));
    assert_eq!(e["n"], 40);
    assert_eq!(e["accuracy"].as_f64(), v["train_accuracy"].as_f64(), "eval {e} vs fit {v}");
}

#[test]
fn tf_recipe_bad_settings_exit_2() {
    let dir = scratch("formats-tf-bad");
    let data = digits_5_to_9(&dir, 2, 4);
    let ckpt = tf_mlp();
    let fit = |extra: &[&str]| {
        let mut args = vec!["fit", "--data", s(&data)];
        let out = dir.join("run");
        args.extend_from_slice(&["--out", s(&out), "--epochs", "1"]);
        args.extend_from_slice(extra);
        let o = graft(&args);
        let _ = std::fs::remove_dir_all(&out);
        o
    };
    assert_bad_input(&fit(&["--arch", "mlp:300,50,50,50", "--weights", s(&ckpt), "--restore", "outputs"]), &["restore", "no hidden layer"]);
    assert_bad_input(&fit(&["--arch", "mlp:300,50", "--weights", s(&ckpt), "--restore", "hidden[123]"]), &["hidden3", "2 hidden layers"]);
    assert_bad_input(&fit(&["--arch", "mlp:200,50,50,50", "--weights", s(&ckpt)]), &["hidden1/kernel", "[784, 200]"]);
    assert_bad_input(&fit(&["--arch", "mlp:300,50,50,50", "--weights", s(&ckpt), "--freeze", "all"]), &["--freeze", "regex:PATTERN"]);
    assert_bad_input(&fit(&["--arch", "mlp:300,50,50,50", "--weights", s(&ckpt), "--freeze", "regex:hidden9"]), &["freeze", "hidden9"]);
    assert_bad_input(&fit(&["--arch", "resnet18", "--weights", s(&ckpt), "--restore", "hidden1"]), &["--restore", "mlp"]);
}
