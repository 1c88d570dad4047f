//! The on-disk feature cache and `graft extract`.

use std::path::Path;

use super::fit::fmnist;
use super::{graft_in, isolated_home, json_of, lite0_weights, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fit(home: &Path, data: &Path, run: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["fit", "--data", s(data), "--out", s(run), "--epochs", "3", "--json"];
    args.extend_from_slice(extra);
    json_of(&graft_in(home, &args))
}

#[test]
fn a_frozen_trunk_sees_each_image_once_and_a_second_fit_misses_nothing() {
    let dir = scratch("cache-once");
    let home = isolated_home("cache-once");
    let data = fmnist(&dir, 4, 11);
    let first = fit(&home, &data, &dir.join("run1"), &[]);
    assert_eq!(first["cache"]["misses"], 12, "12 images computed once for 3 epochs");
    assert_eq!(first["cache"]["hits"], 0);
    assert_eq!(first["trunk_images"], 12);
    let second = fit(&home, &data, &dir.join("run2"), &[]);
    assert_eq!(second["cache"]["misses"], 0);
    assert_eq!(second["cache"]["hits"], 12);
    assert_eq!(second["trunk_images"], 0);
    // The cached features give the same training as computed ones.
    assert_eq!(first["best_val_accuracy"], second["best_val_accuracy"]);

    let ls = json_of(&graft_in(&home, &["cache", "ls", "--json"]));
    let spaces = ls["namespaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 1);
    assert_eq!(spaces[0]["namespace"]["cut"], "pooled:avg");
    json_of(&graft_in(&home, &["cache", "clear", "--json"]));
    assert_eq!(fit(&home, &data, &dir.join("run3"), &[])["cache"]["misses"], 12, "clear empties the cache");
}

#[test]
fn every_part_of_the_key_invalidates() {
    let dir = scratch("cache-key");
    let home = isolated_home("cache-key");
    let data = fmnist(&dir, 4, 12);
    let run = |name: &str, extra: &[&str]| fit(&home, &data, &dir.join(name), extra)["cache"]["misses"].as_u64().unwrap();
    assert_eq!(run("base", &[]), 12);
    assert_eq!(run("again", &[]), 0);
    // Another cut: the head convolution stays trainable, activations of _blocks.15 are cached.
    assert_eq!(run("cut", &["--freeze", "16"]), 12);
    // Another pooling of the same cut is another key.
    assert_eq!(run("pool", &["--head-pool", "flatten"]), 12);
    // Other weights (same architecture, a tensor changed): a different sha256.
    let mut dict = graft_weights::load(&lite0_weights()).unwrap();
    dict.tensors.get_mut("_bn1.bias").unwrap().data[0] += 0.5;
    let other = dir.join("other.safetensors");
    graft_weights::save_safetensors(&other, &dict).unwrap();
    assert_eq!(run("weights", &["--weights", s(&other)]), 12);
    // Another model.
    assert_eq!(run("model", &["--model", "efficientnet-lite1"]), 12);
    // One edited image: only it is recomputed.
    let victim = std::fs::read_dir(data.join("Bag")).unwrap().next().unwrap().unwrap().path();
    let mut img = image::open(&victim).unwrap().to_luma8();
    img.put_pixel(3, 3, image::Luma([255 - img.get_pixel(3, 3)[0]]));
    img.save(&victim).unwrap();
    assert_eq!(run("edited", &[]), 1);
}

#[test]
fn preprocessing_is_part_of_the_key() {
    use graft::cache::{FeatureStore, Namespace, StoreDtype};
    let root = scratch("cache-preprocess");
    let ns = |size: u32| Namespace {
        model: "efficientnet-lite0".into(),
        weights_sha256: "abc".into(),
        cut: "pooled:avg".into(),
        preprocess: serde_json::to_string(&graft::data::image::Preprocess::centre_square(size, [127.0; 3], [128.0; 3])).unwrap(),
        augment: "none".into(),
        dtype: StoreDtype::F32,
    };
    let mut store = FeatureStore::open(&root, ns(224)).unwrap();
    store.put(([7; 32], 0), vec![1.0, 2.0]).unwrap();
    store.flush().unwrap();
    assert_eq!(FeatureStore::open(&root, ns(224)).unwrap().len(), 1);
    assert!(FeatureStore::open(&root, ns(240)).unwrap().is_empty());
}

#[test]
fn a_damaged_shard_is_detected_rebuilt_and_reported() {
    let dir = scratch("cache-damage");
    let home = isolated_home("cache-damage");
    let data = fmnist(&dir, 4, 13);
    fit(&home, &data, &dir.join("run1"), &[]);
    let root = home.join("cache/features");
    let ns = std::fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
    let shard = std::fs::read_dir(&ns).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().unwrap() == "shard").unwrap();
    let bytes = std::fs::read(&shard).unwrap();
    let entries = u32::from_le_bytes(bytes[20..24].try_into().unwrap()); // header: images in the shard
    assert!(entries > 0);
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap(); // truncated
    let out = graft_in(&home, &["fit", "--data", s(&data), "--out", s(&dir.join("run2")), "--epochs", "1", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = json_of(&out);
    assert_eq!(v["cache"]["misses"], entries, "exactly the damaged shard's images are recomputed");
    assert!(stderr.contains("damaged") && stderr.contains(shard.file_name().unwrap().to_str().unwrap()), "not reported: {stderr}");
    let v = fit(&home, &data, &dir.join("run3"), &[]);
    assert_eq!(v["cache"]["misses"], 0, "rebuilt");
}

#[test]
fn augmented_views_are_cached_too() {
    let dir = scratch("cache-views");
    let home = isolated_home("cache-views");
    let data = fmnist(&dir, 4, 14);
    let v = fit(&home, &data, &dir.join("run1"), &["--augment", "flip,rotate:10", "--cache-views", "3"]);
    // 9 training images × 3 views + 3 validation images × 3 rows laid out alike.
    assert_eq!(v["cache"]["misses"], 36);
    let v = fit(&home, &data, &dir.join("run2"), &["--augment", "flip,rotate:10", "--cache-views", "3"]);
    assert_eq!(v["cache"]["misses"], 0);
    // Without --cache-views augmentation runs the trunk every epoch (and says so).
    let out = graft_in(&home, &["fit", "--data", s(&data), "--out", s(&dir.join("run3")), "--epochs", "2", "--augment", "flip", "--json"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("augmentation turns the activation cache off"));
    assert_eq!(json_of(&out)["trunk_images"], 2 * 12);
}

#[test]
fn extract_writes_every_format_and_shards_merge_back() {
    let dir = scratch("extract");
    let home = isolated_home("extract");
    let data = fmnist(&dir, 3, 15);
    let whole = dir.join("all.safetensors");
    let v = json_of(&graft_in(&home, &["extract", "--data", s(&data), "--out", s(&whole), "--json"]));
    assert_eq!(v["n"], 9);
    assert_eq!(v["dim"], 1280);
    // Each part goes beside the merged name; `cache merge --out` finds them (tests/cli/shard.rs
    // tests the parts and the merge further).
    let merged = dir.join("merged.safetensors");
    for i in 1..=2 {
        let v = json_of(&graft_in(&home, &["extract", "--data", s(&data), "--out", s(&merged), "--shard", &format!("{i}/2"), "--json"]));
        assert_eq!(v["out"], s(&dir.join(format!("merged.part-{i}-of-2.safetensors"))));
    }
    let m = json_of(&graft_in(&home, &["cache", "merge", "--out", s(&merged), "--json"]));
    assert_eq!(m["n"], 9);
    let a = graft_weights::load(&whole).unwrap();
    let b = graft_weights::load(&merged).unwrap();
    assert_eq!(a.tensors["features"].data, b.tensors["features"].data, "shards merge back to the whole, in order");
    assert_eq!(a.tensors["labels"].data, b.tensors["labels"].data);
    assert_eq!(a.metadata["paths"], b.metadata["paths"]);

    // An early block, as .npy with a JSON sidecar, and CSV.
    let npy = dir.join("b5.npy");
    let v = json_of(&graft_in(&home, &["extract", "--data", s(&data), "--layer", "_blocks.5", "--out", s(&npy), "--json"]));
    assert_eq!(v["shape"], serde_json::json!([80, 14, 14]));
    let arr = graft::npy::read_f32(&npy).unwrap();
    assert_eq!(arr.shape, vec![9, 80 * 14 * 14]);
    let side: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("b5.json")).unwrap()).unwrap();
    assert_eq!(side["labels"].as_array().unwrap().len(), 9);
    let csv = dir.join("f.csv");
    json_of(&graft_in(&home, &["extract", "--data", s(&data), "--out", s(&csv), "--json"]));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 10);
    assert_eq!(text.lines().nth(1).unwrap().split(',').count(), 3 + 1280);
    super::assert_bad_input(&graft_in(&home, &["extract", "--data", s(&data), "--layer", "_blocks.99", "--out", s(&csv)]), &["--layer"]);
}
