//! `graft fit`, `eval` and `predict --run` on a small real dataset (Fashion-MNIST exported as
//! an image folder).

use std::path::{Path, PathBuf};
use std::time::Duration;

use graft::report::tensorboard::read_events;

use super::{assert_bad_input, graft, graft_in, isolated_home, json_of, lite0_weights, scratch, shared, test_home};

/// `per_class` seeded Fashion-MNIST training images of three classes, as an image folder.
pub(super) fn fmnist(dir: &Path, per_class: usize, seed: u64) -> PathBuf {
    let data = dir.join("data");
    let source = shared().join("data");
    let out = graft(&[
        "data", "import", "fashion-mnist", "--per-class", &per_class.to_string(), "--seed", &seed.to_string(),
        "--source", source.to_str().unwrap(), "--out", data.to_str().unwrap(), "--json",
    ]);
    json_of(&out);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let keep = ["Bag", "Sneaker", "Trouser"].iter().any(|c| path.ends_with(c));
        if !keep {
            std::fs::remove_dir_all(path).unwrap();
        }
    }
    data
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn load(path: &Path) -> graft_weights::StateDict {
    graft_weights::load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The run's tensors whose pretrained name (Lite0's) starts with `prefix`, beside the
/// pretrained ones: (name, pretrained, run). BatchNorm's scale and shift go by burn's names in
/// the run (`gamma`, `beta`); the pretrained classifier and BN counters are left out.
pub(crate) fn trunk_pairs<'a>(pretrained: &'a graft_weights::StateDict, run: &'a graft_weights::StateDict, prefix: &str) -> Vec<(String, &'a [f32], &'a [f32])> {
    let mut pairs = Vec::new();
    for (name, t) in &pretrained.tensors {
        if !name.starts_with(prefix) || name.starts_with("_fc") || name.ends_with("num_batches_tracked") {
            continue;
        }
        let is_bn = name.contains("._bn") || name.starts_with("_bn");
        let burn_name = match (is_bn, name.rsplit('.').next().unwrap()) {
            (true, "weight") => name.replace(".weight", ".gamma"),
            (true, "bias") => name.replace(".bias", ".beta"),
            _ => name.clone(),
        };
        let theirs = run.tensors.get(&format!("trunk.{burn_name}")).unwrap_or_else(|| panic!("run checkpoint lacks trunk.{burn_name}"));
        pairs.push((name.clone(), t.data.as_slice(), theirs.data.as_slice()));
    }
    pairs
}

#[test]
fn freeze_all_keeps_the_trunk_bit_identical_and_trains_the_head() {
    let dir = scratch("fit-freeze-all");
    // A feature cache of its own, so that the counts below are this test's.
    let home = isolated_home("fit-freeze-all");
    let data = fmnist(&dir, 6, 1);
    let run1 = dir.join("run1");
    let run2 = dir.join("run2");
    let v1 = json_of(&graft_in(&home, &["fit", "--data", s(&data), "--out", s(&run1), "--epochs", "2", "--seed", "5", "--json"]));
    let v2 = json_of(&graft_in(&home, &["fit", "--data", s(&data), "--out", s(&run2), "--epochs", "1", "--seed", "5", "--json"]));
    for key in ["run", "epochs", "best_epoch", "best_val_accuracy", "train_seconds", "skipped"] {
        assert!(v1.get(key).is_some(), "fit --json lacks `{key}`: {v1}");
    }
    assert_eq!(v1["epochs"], 2);
    // Cached trunk: each of the 18 images went through the trunk once over both epochs, and
    // the second run read them all from the cache.
    assert_eq!(v1["trunk_images"], 18);
    assert_eq!(v1["cache"]["misses"], 18);
    assert_eq!(v2["cache"]["misses"], 0);
    assert_eq!(v2["trunk_images"], 0);

    let pretrained = load(&lite0_weights());
    let last1 = load(&run2.join("last.safetensors")); // 1 epoch
    let last2 = load(&run1.join("last.safetensors")); // 2 epochs
    let pairs = trunk_pairs(&pretrained, &last2, "");
    // 296 tensors: minus _fc weight and bias, minus 49 BatchNorm num_batches_tracked counters.
    assert_eq!(pairs.len(), 296 - 2 - 49, "every trunk tensor is compared");
    for (name, a, b) in pairs {
        assert!(a == b, "{name} changed although the trunk was frozen");
    }
    // Same seed: same head after epoch 1; the second epoch moved it.
    let h1 = &last1.tensors["head.layers.0.weight"].data;
    let h2 = &last2.tensors["head.layers.0.weight"].data;
    assert_eq!(h1.len(), 1280 * 3);
    assert!(h1 != h2, "the head did not change between epochs");

    // The run directory a user keeps.
    for f in ["config.toml", "model.json", "metrics.jsonl", "best.safetensors", "summary.json", "loss.png", "accuracy.png", "confusion.png"] {
        assert!(run1.join(f).is_file(), "run directory lacks {f}");
    }
    let metrics = std::fs::read_to_string(run1.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    // The device the run computed on (the default: no --device, no GRAFT_DEVICE) is recorded.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run1.join("model.json")).unwrap()).unwrap();
    assert_eq!(manifest["device"], "cpu");

    // TensorBoard: a valid record stream (lengths, masked CRC32C, Event protos) with our scalars.
    let tb = std::fs::read_dir(run1.join("tb")).unwrap().next().unwrap().unwrap().path();
    let events = read_events(&tb).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let val_acc: Vec<i64> = events.iter().filter(|e| e.scalars.iter().any(|(t, _)| t == "accuracy/val")).map(|e| e.step).collect();
    assert_eq!(val_acc, vec![1, 2]);

    // Rerun from the saved config into a new directory.
    let run3 = dir.join("run3");
    let v3 = json_of(&graft_in(&home, &["fit", "--config", s(&run1.join("config.toml")), "--out", s(&run3), "--epochs", "1", "--json"]));
    assert_eq!(v3["epochs"], 1);
    assert_bad_input(&graft(&["fit", "--data", s(&data), "--out", s(&run3)]), &["--out", "already holds a run"]);
}

#[test]
fn a_frozen_block_inside_a_trained_network_keeps_its_batchnorm_statistics() {
    let dir = scratch("fit-frozen-middle");
    let data = fmnist(&dir, 4, 2);
    let run = dir.join("run");
    let spec = r"regex:^_blocks\.14\.";
    let v = json_of(&graft(&[
        "fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--freeze", spec, "--batch-size", "6",
        "--lr", "1e-3", "--train-bn", "--json",
    ]));
    let pretrained = load(&lite0_weights());
    let last = load(&run.join("last.safetensors"));
    for (name, a, b) in trunk_pairs(&pretrained, &last, "_blocks.14.") {
        assert!(a == b, "{name} changed although _blocks.14 was frozen");
    }
    // Its trained neighbour's BatchNorm did update its statistics (training mode).
    let neighbour = trunk_pairs(&pretrained, &last, "_blocks.13._bn1.running_mean");
    assert_eq!(neighbour.len(), 1);
    assert!(neighbour[0].1 != neighbour[0].2, "_blocks.13 trained but its BN statistics did not move");

    // By default BatchNorm in trained blocks stays in inference mode: statistics fixed, scale
    // and shift trained.
    let run2 = dir.join("run-bn-inference");
    json_of(&graft(&["fit", "--data", s(&data), "--out", s(&run2), "--epochs", "1", "--freeze", spec, "--batch-size", "6", "--lr", "1e-3", "--json"]));
    let last2 = load(&run2.join("last.safetensors"));
    let stats = trunk_pairs(&pretrained, &last2, "_blocks.13._bn1.running_");
    assert_eq!(stats.len(), 2);
    assert!(stats.iter().all(|(_, a, b)| a == b), "BN statistics moved without --train-bn");
    let gamma = trunk_pairs(&pretrained, &last2, "_blocks.13._bn1.weight");
    assert!(gamma[0].1 != gamma[0].2, "BN scale did not train");

    // inspect counts the same trainable parameters fit trained.
    let inspect = json_of(&graft(&["inspect", "efficientnet-lite0", "--freeze", spec, "--head", "linear", "--classes", "3", "--json"]));
    assert_eq!(inspect["trainable_params"], v["trainable_params"]);
    assert_eq!(inspect["total_params"].as_u64().unwrap() - inspect["frozen_params"].as_u64().unwrap(), v["trainable_params"].as_u64().unwrap());
}

#[test]
fn early_stopping_stops_after_patience_epochs_without_improvement() {
    let dir = scratch("fit-early");
    let data = fmnist(&dir, 4, 3);
    let run = dir.join("run");
    // A learning rate too small to change any prediction: epoch 1 stays the best.
    let v = json_of(&graft(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "30", "--lr", "1e-12", "--patience", "3", "--json"]));
    assert_eq!(v["stopped_early"], true);
    assert_eq!(v["best_epoch"], 1);
    assert_eq!(v["epochs"], 4, "1 best epoch + 3 epochs of patience");
}

#[test]
fn unreadable_files_are_skipped_and_named() {
    let dir = scratch("fit-skip");
    let data = fmnist(&dir, 4, 4);
    let class = data.join("Bag");
    std::fs::write(class.join("empty.png"), b"").unwrap();
    std::fs::write(class.join("text.jpg"), b"not a jpeg at all").unwrap();
    let png = std::fs::read(std::fs::read_dir(&class).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().unwrap() == "png" && std::fs::metadata(p).unwrap().len() > 0).unwrap()).unwrap();
    std::fs::write(class.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    let run = dir.join("run");
    let v = json_of(&graft(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--json"]));
    let mut skipped: Vec<String> = v["skipped"].as_array().unwrap().iter().map(|s| s["file"].as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect();
    skipped.sort();
    assert_eq!(skipped, vec!["empty.png", "text.jpg", "truncated.png"]);

    // eval and predict --run work on the run.
    let e = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&data), "--json"]));
    assert_eq!(e["n"], 12);
    assert_eq!(e["skipped"].as_array().unwrap().len(), 3);
    assert_eq!(e["labels"], serde_json::json!(["Bag", "Sneaker", "Trouser"]));
    assert_eq!(e["confusion"].as_array().unwrap().len(), 3);
    let img = std::fs::read_dir(data.join("Trouser")).unwrap().next().unwrap().unwrap().path();
    let p = json_of(&graft(&["predict", "--run", s(&run), "--top", "2", s(&img), "--json"]));
    let top = p["predictions"][0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 2);
    assert!(["Bag", "Sneaker", "Trouser"].contains(&top[0]["label"].as_str().unwrap()));

    // A folder with one class is a clear error.
    let single = dir.join("single");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::rename(data.join("Trouser"), single.join("Trouser")).unwrap();
    assert_bad_input(&graft(&["fit", "--data", s(&single), "--out", s(&dir.join("run-single"))]), &["2 classes"]);
}

#[test]
fn sigkill_then_resume_finishes_a_valid_run() {
    let dir = scratch("fit-kill");
    let data = fmnist(&dir, 4, 5);
    let run = dir.join("run");
    // Augmentation turns the activation cache off, so each epoch runs the trunk (~seconds).
    let args = ["fit", "--data", s(&data), "--out", s(&run), "--epochs", "4", "--augment", "flip", "--batch-size", "4", "--json"];
    // Kill mid-training: once the first epoch is on disk, plus a little.
    let metrics = run.join("metrics.jsonl");
    let before = super::kill_after_first_epoch(&test_home(), &args, &metrics, Duration::from_millis(700));
    assert!(before >= 1 && before < 4, "kill landed after {before} epochs");

    let v = json_of(&graft(&["fit", "--resume", s(&run), "--json"]));
    assert_eq!(v["epochs"], 4);
    let epochs: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![1, 2, 3, 4], "metrics continue from the last completed epoch");
    for f in ["last.safetensors", "best.safetensors"] {
        load(&run.join(f)); // complete, loadable checkpoints
    }
    let leftovers: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    json_of(&graft(&["eval", "--run", s(&run), "--data", s(&data), "--json"]));
}

#[test]
fn a_logistic_head_on_images_picks_its_c_on_the_training_split_or_takes_one() {
    let dir = scratch("fit-logistic-c");
    let data = fmnist(&dir, 12, 3);
    let saved_c = |run: &Path| -> f64 {
        let dict = load(&run.join("classic.safetensors"));
        let kind: serde_json::Value = serde_json::from_str(&dict.metadata["graft.classic"]).unwrap();
        kind["Logistic"]["C"].as_f64().unwrap_or_else(|| panic!("not a logistic head with its C: {kind}"))
    };
    let fit = |name: &str, head: &str| {
        let run = dir.join(name);
        let out = graft(&["fit", "--data", s(&data), "--out", s(&run), "--head", head, "--val-split", "0.25", "--seed", "1", "--json"]);
        let v = json_of(&out);
        assert!(v["best_val_accuracy"].as_f64().unwrap() >= 0.8, "{head}: {v}");
        (run, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (auto, log) = fit("auto", "logistic");
    let c = saved_c(&auto);
    assert!(graft::classic::C_GRID.contains(&c), "C = {c} is not one of the grid's");
    assert!(log.contains(&format!("C = {c}, chosen by 5-fold cross-validation")), "{log}");
    let (fixed, log) = fit("fixed", "logistic:c=0.5");
    assert_eq!(saved_c(&fixed), 0.5);
    assert!(!log.contains("cross-validation"), "{log}");
    assert!(std::fs::read_to_string(fixed.join("config.toml")).unwrap().contains("logistic:c=0.5"));
    for run in [&auto, &fixed] {
        let e = json_of(&graft(&["eval", "--run", s(run), "--data", s(&data), "--json"]));
        assert_eq!(e["n"], 36);
        assert!(e["accuracy"].as_f64().unwrap() >= 0.9, "{e}");
    }
}
