//! `graft adapt` end to end on a few hundred real digits (MNIST and USPS from the shared data),
//! a couple of epochs each: the JSON contract, the run directory, every method, bad input.

use std::path::{Path, PathBuf};

use graft::data::idx::seeded_subset;
use graft::data::usps;

use super::{assert_bad_input, graft, graft_in, isolated_home, json_of, scratch, shared};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn data_root() -> PathBuf {
    let root = shared().join("data");
    assert!(root.join("digits/usps/usps.h5").is_file(), "USPS is missing under {}", root.display());
    root
}

/// `per_class` seeded MNIST training digits as an image folder.
pub(super) fn mnist_folder(dir: &Path, per_class: usize, seed: u64) -> PathBuf {
    let out = dir.join("mnist");
    json_of(&graft(&[
        "data", "import", "mnist", "--per-class", &per_class.to_string(), "--seed", &seed.to_string(),
        "--source", s(&data_root()), "--out", s(&out), "--json",
    ]));
    out
}

/// `per_class` seeded USPS digits of `split` as an image folder.
fn usps_folder(dir: &Path, split: &str, per_class: usize, seed: u64) -> PathBuf {
    let h5 = data_root().join("digits/usps/usps.h5");
    let labels = usps::read_usps(&h5, split).unwrap().labels;
    let indices = seeded_subset(&labels, per_class, seed);
    let out = dir.join(format!("usps-{split}"));
    let n = usps::export_image_folder(&h5, split, Some(&indices), &out).unwrap();
    assert_eq!(n, 10 * per_class);
    out
}

/// Moves every image of a class-folder dataset into one flat folder (an unlabelled target).
fn flatten(folder: &Path, out: &Path) -> usize {
    std::fs::create_dir_all(out).unwrap();
    let mut n = 0;
    for class in std::fs::read_dir(folder).unwrap() {
        let class = class.unwrap().path();
        for file in std::fs::read_dir(&class).unwrap() {
            let file = file.unwrap().path();
            let name = format!("{}-{}", class.file_name().unwrap().to_string_lossy(), file.file_name().unwrap().to_string_lossy());
            std::fs::rename(&file, out.join(name)).unwrap();
            n += 1;
        }
    }
    n
}

fn adapt(method: &str, source: &Path, target: &Path, test: &Path, run: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "adapt", "--method", method, "--source", s(source), "--target", s(target), "--target-test", s(test), "--out", s(run),
        "--epochs", "2", "--iters-per-epoch", "15", "--batch-size", "16", "--seed", "3", "--json",
    ];
    args.extend_from_slice(extra);
    json_of(&graft(&args))
}

#[test]
fn dann_on_image_folders_writes_a_complete_run() {
    let dir = scratch("adapt-dann-folders");
    let source = mnist_folder(&dir, 30, 1);
    let target = dir.join("target-flat");
    assert_eq!(flatten(&usps_folder(&dir, "train", 20, 2), &target), 200);
    let test = usps_folder(&dir, "test", 20, 3);
    let run = dir.join("run");
    let dann = |run: &Path| {
        json_of(&graft(&[
            "adapt", "--method", "dann", "--source", s(&source), "--target", s(&target), "--target-test", s(&test), "--out", s(run),
            "--epochs", "3", "--iters-per-epoch", "15", "--batch-size", "16", "--seed", "3", "--json",
        ]))
    };
    let v = dann(&run);

    for key in ["run", "method", "epochs", "best_epoch", "source_val_accuracy", "target_test_accuracy", "train_seconds", "skipped"] {
        assert!(v.get(key).is_some(), "adapt --json lacks `{key}`: {v}");
    }
    assert_eq!(v["method"], "dann");
    assert_eq!(v["n_source_train"].as_u64().unwrap() + v["n_source_val"].as_u64().unwrap(), 300);
    assert_eq!(v["n_source_val"], 30, "10% of each class is held out");
    assert_eq!(v["n_target"], 200);
    assert_eq!(v["n_target_test"], 200);
    assert_eq!(v["iterations"], 45);
    let val = v["source_val_accuracy"].as_f64().unwrap();
    let test_acc = v["target_test_accuracy"].as_f64().unwrap();
    // 45 steps of 16 digits train LeNet well above chance (0.1) on its own domain.
    assert!(val > 0.3, "source val accuracy {val}");
    assert!((0.0..=1.0).contains(&test_acc));
    assert_eq!(v["target_test_evaluation"]["confusion"].as_array().unwrap().len(), 10);

    // The run directory.
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["kind"], "adapt");
    assert_eq!(info["backbone"], "lenet");
    assert_eq!(info["classes"].as_array().unwrap().len(), 10);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|m| m["domain_accuracy"].is_number() && m["source_val_accuracy"].is_number()));
    // The DANN ramp: λ grows from epoch 1 to epoch 2.
    assert!(lines[1]["lambda"].as_f64().unwrap() > lines[0]["lambda"].as_f64().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["target_test_accuracy"], v["target_test_accuracy"]);
    assert!(run.join("config.toml").is_file());
    let best = graft_weights::load(&run.join("best.safetensors")).unwrap();
    assert!(best.tensors.contains_key("lenet.conv1.weight") && best.tensors.contains_key("head.weight"));
    // The run can be loaded back and predicts the same accuracy on the test folder.
    let device = graft::device::default_device();
    let model = graft::adapt::load_adapted(&run, Path::new("/nonexistent"), None, &graft::report::Silent, &device).unwrap();
    let folder = graft::data::folder::ImageFolder::scan_with_classes(&test, &model.info.classes).unwrap();
    let (probs, skipped) = model.predict_files(&folder.samples, &device).unwrap();
    assert!(skipped.is_empty());
    let correct = probs.iter().zip(&folder.samples).filter(|(p, s)| {
        let p = p.as_ref().unwrap();
        p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 == s.label
    });
    assert!((correct.count() as f64 / 200.0 - test_acc).abs() < 1e-9);

    // Same seed, same result; and --out never overwrites a run.
    let again = dann(&dir.join("run2"));
    assert_eq!(again["target_test_accuracy"], v["target_test_accuracy"]);
    let out = graft(&["adapt", "--method", "dann", "--source", s(&source), "--target", s(&target), "--out", s(&run), "--json"]);
    assert_bad_input(&out, &["--out", "already holds a run"]);
}

#[test]
fn every_method_runs_on_a_small_task() {
    let dir = scratch("adapt-every-method");
    let source = mnist_folder(&dir, 20, 4);
    let target = usps_folder(&dir, "train", 10, 5);
    let test = usps_folder(&dir, "test", 10, 6);
    for (name, method, extra) in [
        ("source-only", "source-only", &[][..]),
        ("ddc", "ddc", &[][..]),
        ("dan", "dan", &[][..]),
        ("coral", "coral", &[][..]),
        ("cdan", "cdan", &["--entropy"][..]),
        ("adda", "adda", &["--pretrain-epochs", "1"][..]),
        ("adda-reversal", "adda", &["--pretrain-epochs", "1", "--adda-objective", "reversal"][..]),
        ("dann-augment", "dann", &["--augment", "rotate:10,zoom:0.2,shift:0.1"][..]),
    ] {
        let v = adapt(method, &source, &target, &test, &dir.join(name), extra);
        let acc = v["target_test_accuracy"].as_f64().unwrap_or_else(|| panic!("{method}: {v}"));
        assert!((0.0..=1.0).contains(&acc), "{method}: {acc}");
        assert!(v["source_val_accuracy"].as_f64().is_some(), "{method}: {v}");
        let epochs = if method == "adda" { 3 } else { 2 };
        assert_eq!(v["epochs"], epochs, "{method}");
        let metrics = std::fs::read_to_string(dir.join(name).join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count(), epochs, "{name}");
        if name == "dann-augment" {
            let config = std::fs::read_to_string(dir.join(name).join("config.toml")).unwrap();
            assert!(config.contains("[augment]") && config.contains("rotation_deg = 10"), "{config}");
        }
        if method == "adda" {
            // The adversarial epoch trained a discriminator, with the objective the config names.
            let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
            assert!(last["domain_accuracy"].as_f64().is_some(), "{name}: {last}");
            let objective = if name == "adda" { "gan" } else { "reversal" };
            let config = std::fs::read_to_string(dir.join(name).join("config.toml")).unwrap();
            assert!(config.contains(&format!("adda_objective = \"{objective}\"")), "{name}:\n{config}");
        }
    }
}

#[test]
fn shorthand_datasets_and_the_json_contract() {
    let dir = scratch("adapt-shorthand");
    let root = data_root();
    let run = dir.join("run");
    let v = json_of(&graft(&[
        "adapt", "--method", "source-only", "--source", "usps:test", "--target", "mnist:train", "--target-test", "mnist:test",
        "--data-root", s(&root), "--epochs", "1", "--iters-per-epoch", "5", "--out", s(&run), "--json",
    ]));
    assert_eq!(v["n_source_train"].as_u64().unwrap() + v["n_source_val"].as_u64().unwrap(), 2007);
    assert_eq!(v["n_target"], 10000);
    assert_eq!(v["n_target_test"], 10000);
    assert!(v["target_test_accuracy"].as_f64().is_some() && v["source_val_accuracy"].as_f64().is_some());
    // Without --target-test there is no target accuracy.
    let v = json_of(&graft(&[
        "adapt", "--method", "source-only", "--source", "usps:test", "--target", "usps:train",
        "--data-root", s(&root), "--epochs", "1", "--iters-per-epoch", "2", "--out", s(&dir.join("run2")), "--json",
    ]));
    assert!(v.get("target_test_accuracy").is_none(), "{v}");
    assert!(v["source_val_accuracy"].as_f64().is_some());
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = scratch("adapt-bad");
    let root = data_root();
    let base = |method: &str, source: &str, target: &str, root: &Path| {
        let out = dir.join(format!("run-{method}-{}", source.replace([':', '/'], "_")));
        graft(&["adapt", "--method", method, "--source", source, "--target", target, "--data-root", s(root), "--out", s(&out), "--json"])
    };
    assert_bad_input(&base("mmd", "mnist:train", "usps:train", &root), &["--method", "mmd", "ddc"]);
    assert_bad_input(&base("dann", "usps:val", "mnist:train", &root), &["--source", "usps:val"]);
    assert_bad_input(&base("dann", "mnist:train", "usps:train", &dir.join("nowhere")), &["nowhere"]);
    assert_bad_input(&base("dann", &dir.join("missing").display().to_string(), "usps:train", &root), &["missing"]);
    let out = graft(&["adapt", "--method", "dann", "--source", "usps:test", "--target", "usps:train", "--data-root", s(&root), "--out", s(&dir.join("x")), "--val-split", "1.5"]);
    assert_bad_input(&out, &["--val-split"]);
    let out = graft(&["adapt", "--method", "dann", "--source", "usps:test", "--target", "usps:train", "--data-root", s(&root), "--out", s(&dir.join("y")), "--entropy"]);
    assert_bad_input(&out, &["--entropy"]);
    let out = graft(&["adapt", "--method", "dann", "--source", "usps:test", "--target", "usps:train", "--data-root", s(&root), "--out", s(&dir.join("z")), "--backbone", "vgg99"]);
    assert_bad_input(&out, &["--backbone", "vgg99"]);
    let out = graft(&["adapt", "--method", "dann", "--source", "usps:test", "--target", "usps:train", "--data-root", s(&root), "--out", s(&dir.join("w")), "--augment", "rotate:500"]);
    assert_bad_input(&out, &["--augment", "rotation"]);
}

#[test]
fn a_zoo_backbone_adapts_its_frozen_features() {
    let dir = scratch("adapt-zoo");
    let home = isolated_home("adapt-zoo");
    let source = mnist_folder(&dir, 4, 7);
    let target = usps_folder(&dir, "train", 2, 8);
    let test = usps_folder(&dir, "test", 2, 9);
    let run = dir.join("run");
    let zoo = ["--backbone", "efficientnet-lite0", "--bottleneck", "64", "--val-split", "0.25"];
    let adapt_in = |method: &str, run: &Path| {
        let mut args = vec![
            "adapt", "--method", method, "--source", s(&source), "--target", s(&target), "--target-test", s(&test), "--out", s(run),
            "--epochs", "2", "--iters-per-epoch", "15", "--batch-size", "16", "--seed", "3", "--json",
        ];
        args.extend_from_slice(&zoo);
        json_of(&graft_in(&home, &args))
    };
    let v = adapt_in("dann", &run);
    assert_eq!(v["backbone"], "efficientnet-lite0");
    assert_eq!(v["n_target_test"], 20);
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["input_width"], 1280, "the trunk's pooled features feed the bottleneck");
    assert_eq!(info["input"]["type"], "zoo");
    let best = graft_weights::load(&run.join("best.safetensors")).unwrap();
    assert!(!best.tensors.keys().any(|k| k.starts_with("lenet")), "no LeNet with a zoo backbone");
    assert_eq!(best.tensors["bottleneck.weight"].shape, vec![1280, 64]);

    // The trunk's features went to the feature store (not held in memory), in the namespace
    // fit uses for pooled Lite0 features; a second method on the same domains computes none.
    let stored = || -> u64 {
        let v = json_of(&graft_in(&home, &["cache", "ls", "--json"]));
        let spaces: Vec<&serde_json::Value> = v["namespaces"].as_array().unwrap().iter().filter(|n| n["namespace"]["model"] == "efficientnet-lite0").collect();
        assert_eq!(spaces.len(), 1, "{v}");
        assert_eq!(spaces[0]["namespace"]["cut"], "pooled:avg");
        spaces[0]["bytes"].as_u64().unwrap()
    };
    let bytes = stored();
    assert!(bytes > 80 * 1280 * 4, "80 images' features are stored: {bytes} bytes");
    let again = adapt_in("dan", &dir.join("run-dan"));
    assert_eq!(again["n_target_test"], 20);
    assert_eq!(stored(), bytes, "the second run read every feature from the store");
    // AutoDIAL on the frozen features: alignment layers on the bottleneck and the logits.
    let dial = adapt_in("autodial", &dir.join("run-autodial"));
    assert_eq!(dial["n_target_test"], 20);
    let alpha = metrics_of(&dir.join("run-autodial"))[1]["autodial"]["alpha"].clone();
    assert_eq!(alpha.as_object().unwrap().keys().map(String::as_str).collect::<Vec<_>>(), ["bottleneck", "logits"], "{alpha}");
    // DSN on the frozen features: MLP private encoders, a decoder that rebuilds the 1280-wide
    // features; its four terms are recorded, and eval reads the shared encoder and head only.
    let dsn_run = dir.join("run-dsn");
    let dsn = adapt_in("dsn", &dsn_run);
    assert_eq!(dsn["n_target_test"], 20);
    for m in metrics_of(&dsn_run) {
        let term = |t: &str| m["dsn"][t].as_f64().unwrap_or_else(|| panic!("no dsn {t} in {m}"));
        assert!(term("reconstruction") > 0.0 && (0.0..=2.0).contains(&term("difference")) && term("similarity") > 0.0, "{m}");
    }
    let e = json_of(&graft_in(&home, &["eval", "--run", s(&dsn_run), "--data", s(&test), "--json"]));
    assert!((e["accuracy"].as_f64().unwrap() - dsn["target_test_accuracy"].as_f64().unwrap()).abs() < 1e-12, "{e}");
    assert_eq!(stored(), bytes);
}

#[test]
fn eval_and_predict_read_an_adapted_run() {
    let dir = scratch("adapt-eval-predict");
    let root = data_root();
    let source = mnist_folder(&dir, 20, 5);
    let target = usps_folder(&dir, "train", 10, 6);
    let run = dir.join("run");
    let v = json_of(&graft(&[
        "adapt", "--method", "cdan", "--source", s(&source), "--target", s(&target), "--target-test", "usps:test",
        "--data-root", s(&root), "--epochs", "2", "--iters-per-epoch", "10", "--batch-size", "16", "--seed", "2", "--out", s(&run), "--json",
    ]));
    let adapted = v["target_test_accuracy"].as_f64().unwrap();

    // The digit-set shorthand: the same number adapt reported, on all 2,007 USPS test digits.
    let e = json_of(&graft(&["eval", "--run", s(&run), "--data", "usps:test", "--data-root", s(&root), "--json"]));
    assert_eq!(e["n"], 2007);
    assert!((e["accuracy"].as_f64().unwrap() - adapted).abs() < 1e-12, "eval {} vs adapt {adapted}", e["accuracy"]);

    // An image folder from `graft data import mnist` (the source): the fit-run JSON shape.
    let e = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&source), "--json"]));
    assert_eq!(e["n"], 200);
    assert_eq!(e["labels"].as_array().unwrap().len(), 10);
    assert_eq!(e["confusion"].as_array().unwrap().len(), 10);
    assert_eq!(e["per_class"].as_object().unwrap().len(), 10);
    let total: u64 = e["confusion"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(total, 200);

    // predict on a USPS test folder agrees with eval on it, file by file in aggregate.
    let test = usps_folder(&dir, "test", 5, 7);
    let e = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&test), "--json"]));
    let mut files = Vec::new();
    for class in std::fs::read_dir(&test).unwrap() {
        let class = class.unwrap().path();
        for f in std::fs::read_dir(&class).unwrap() {
            files.push((f.unwrap().path(), class.file_name().unwrap().to_string_lossy().to_string()));
        }
    }
    files.sort();
    let mut args = vec!["predict", "--run", s(&run), "--top", "2", "--json"];
    args.extend(files.iter().map(|(p, _)| s(p)));
    let p = json_of(&graft(&args));
    let predictions = p["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 50);
    let mut correct = 0;
    for (pred, (path, label)) in predictions.iter().zip(&files) {
        assert_eq!(pred["file"].as_str().unwrap(), s(path));
        let top = pred["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["prob"].as_f64().unwrap() >= top[1]["prob"].as_f64().unwrap());
        correct += usize::from(top[0]["label"].as_str().unwrap() == label);
    }
    assert!((correct as f64 / 50.0 - e["accuracy"].as_f64().unwrap()).abs() < 1e-12);

    // Bad input: a digit split that does not exist, a file that is not an image.
    assert_bad_input(&graft(&["eval", "--run", s(&run), "--data", "usps:val", "--data-root", s(&root), "--json"]), &["--data", "usps:val"]);
    let junk = dir.join("junk.png");
    std::fs::write(&junk, b"not a png").unwrap();
    let p = json_of(&graft(&["predict", "--run", s(&run), "--json", s(&files[0].0), s(&junk)]));
    assert_eq!(p["predictions"].as_array().unwrap().len(), 1);
    assert_eq!(p["skipped"].as_array().unwrap().len(), 1);
}

#[test]
fn tllib_schedules_are_flags_saved_in_the_config() {
    let dir = scratch("adapt-tllib-schedules");
    let root = data_root();
    let run = dir.join("run");
    json_of(&graft(&[
        "adapt", "--method", "dann", "--source", "usps:test", "--target", "usps:train", "--data-root", s(&root),
        "--epochs", "2", "--iters-per-epoch", "5", "--batch-size", "8", "--lr", "0.1", "--lr-schedule", "inv", "--lr-gamma", "0.1",
        "--lambda-schedule", "warm-start", "--lambda-max-iters", "4", "--out", s(&run), "--json",
    ]));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for line in ["lr_schedule = \"inv\"", "lr_gamma = 0.1", "lambda_schedule = \"warm-start\"", "lambda_max_iters = 4", "batch_size = 8"] {
        assert!(config.lines().any(|l| l == line), "config.toml lacks `{line}`:\n{config}");
    }
    // metrics.jsonl records lr and λ at each epoch's last iteration (i = 4, then 9).
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(metrics.len(), 2);
    for (m, i) in metrics.iter().zip([4.0f64, 9.0]) {
        let lr = 0.1 * (1.0 + 0.1 * i).powf(-0.75);
        let lambda = 2.0 / (1.0 + (-i / 4.0).exp()) - 1.0;
        assert!((m["lr"].as_f64().unwrap() - lr).abs() < 1e-12, "iteration {i}: {m}");
        assert!((m["lambda"].as_f64().unwrap() - lambda).abs() < 1e-12, "iteration {i}: {m}");
    }
    let bad = |flag: &str, name: &str| {
        graft(&["adapt", "--method", "dann", "--source", "usps:test", "--target", "usps:train", "--data-root", s(&root), "--out", s(&dir.join(name)), flag])
    };
    assert_bad_input(&bad("--lr-schedule=cosine", "a"), &["--lr-schedule", "cosine", "inv"]);
    assert_bad_input(&bad("--lambda-schedule=warm", "b"), &["--lambda-schedule", "warm-start"]);
    assert_bad_input(&bad("--lambda-max-iters=0", "c"), &["--lambda-max-iters"]);
    assert_bad_input(&bad("--lr-gamma=-1", "d"), &["--lr-gamma"]);
}

/// `part`, a run stopped after its second epoch, resumed to a third ends as the uninterrupted
/// three-epoch run did (its result `whole` and metrics `metrics`; only the seconds differ).
fn assert_resumes_to_the_same_end(part: &Path, whole: &serde_json::Value, metrics: &[serde_json::Value]) {
    let resumed = json_of(&graft(&["adapt", "--resume", s(part), "--epochs", "3", "--json"]));
    assert_eq!(resumed["target_test_accuracy"], whole["target_test_accuracy"]);
    let without_time = |mut m: serde_json::Value| {
        m.as_object_mut().unwrap().remove("seconds");
        m
    };
    assert_eq!(without_time(metrics_of(part)[2].clone()), without_time(metrics[2].clone()));
}

/// `graft eval` of the run `run` on the USPS test digits gives the target accuracy its
/// adaptation reported (`result`).
fn assert_eval_gives_the_target_accuracy(run: &Path, result: &serde_json::Value) {
    let root = data_root();
    let e = json_of(&graft(&["eval", "--run", s(run), "--data", "usps:test", "--data-root", s(&root), "--json"]));
    assert!((e["accuracy"].as_f64().unwrap() - result["target_test_accuracy"].as_f64().unwrap()).abs() < 1e-12);
}

/// `graft adapt` from USPS test to USPS training digits into `out` with `args` (settings meant to
/// be refused: the caller checks the error).
fn bad_digits_run(out: &Path, args: &[&str]) -> std::process::Output {
    let root = data_root();
    let mut a = vec!["adapt", "--source", "usps:test", "--target", "usps:train", "--data-root", s(&root), "--out", s(out)];
    a.extend_from_slice(args);
    graft(&a)
}

/// `graft adapt` on USPS test digits (source) and USPS training digits (target), a few steps.
fn quick(method: &str, run: &Path, epochs: &str, extra: &[&str]) -> serde_json::Value {
    let root = data_root();
    let mut args = vec![
        "adapt", "--method", method, "--source", "usps:test", "--target", "usps:train", "--target-test", "usps:test",
        "--data-root", s(&root), "--epochs", epochs, "--iters-per-epoch", "10", "--batch-size", "16", "--seed", "4", "--out", s(run), "--json",
    ];
    args.extend_from_slice(extra);
    json_of(&graft(&args))
}

fn metrics_of(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn mcc_bsp_afn_mdd_train_resume_and_evaluate() {
    let dir = scratch("adapt-mcc-bsp-afn-mdd");
    let root = data_root();
    for (method, flag, line) in [
        ("mcc", ["--mcc-temperature", "2"], "mcc_temperature = 2.0"),
        ("bsp", ["--bsp-k", "2"], "bsp_k = 2"),
        ("afn", ["--afn-entropy", "0.03"], "afn_entropy = 0.03"),
        ("mdd", ["--mdd-margin", "3"], "mdd_margin = 3.0"),
    ] {
        let run = dir.join(method);
        let v = quick(method, &run, "2", &flag);
        assert_eq!(v["method"], method);
        let acc = v["target_test_accuracy"].as_f64().unwrap_or_else(|| panic!("{method}: {v}"));
        assert!((0.0..=1.0).contains(&acc));
        // 20 steps of 16 digits are enough to rise above chance (0.1) on the source split.
        assert!(v["source_val_accuracy"].as_f64().unwrap() > 0.2, "{method}: {v}");
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.lines().any(|l| l == line), "{method}: config.toml lacks `{line}`:\n{config}");
        let metrics = metrics_of(&run);
        assert_eq!(metrics.len(), 2);
        for m in &metrics {
            assert_eq!(m["select"], "source-val", "{method}: {m}");
            assert_eq!(m["select_value"], m["source_val_accuracy"], "{method}: {m}");
            // Every method adds a loss of its own (MDD's may be of either sign).
            let transfer = m["transfer_loss"].as_f64().unwrap();
            assert!(transfer.is_finite() && transfer != 0.0, "{method}: {m}");
        }
        if method == "bsp" {
            // BSP trains on DANN: a discriminator, its ramp.
            assert!(metrics[1]["domain_accuracy"].is_number() && metrics[1]["lambda"].as_f64().unwrap() > metrics[0]["lambda"].as_f64().unwrap());
        }
        if method == "afn" {
            // AFN's norm loss is Δr² = 1 per domain, weighted by its default λ 0.05, plus the entropy term.
            let t = metrics[0]["transfer_loss"].as_f64().unwrap();
            assert!(t > 0.1 && t < 0.1 + 0.03 * 2.31, "{t}");
        }
        // eval reads the run: the same accuracy as adapt reported.
        let e = json_of(&graft(&["eval", "--run", s(&run), "--data", "usps:test", "--data-root", s(&root), "--json"]));
        assert!((e["accuracy"].as_f64().unwrap() - acc).abs() < 1e-12, "{method}: eval {} vs adapt {acc}", e["accuracy"]);
    }

    // MDD's adversarial head is saved with each epoch: a run stopped after epoch 1 and resumed to 2
    // ends where the uninterrupted run ended (a per-iteration lr schedule, so that the first
    // epoch does not depend on the run's length).
    let whole = dir.join("mdd-whole");
    let v = quick("mdd", &whole, "2", &["--lr-schedule", "inv"]);
    let part = dir.join("mdd-resumed");
    quick("mdd", &part, "1", &["--lr-schedule", "inv"]);
    let resumed = json_of(&graft(&["adapt", "--resume", s(&part), "--epochs", "2", "--json"]));
    assert_eq!(resumed["target_test_accuracy"], v["target_test_accuracy"]);
    assert_eq!(metrics_of(&part)[1]["transfer_loss"], metrics_of(&whole)[1]["transfer_loss"]);

    // Bad settings: one line, exit 2, naming the flag.
    let bad = |args: &[&str], name: &str| bad_digits_run(&dir.join(name), args);
    assert_bad_input(&bad(&["--method", "mcc", "--mcc-temperature", "0"], "b1"), &["--mcc-temperature"]);
    assert_bad_input(&bad(&["--method", "mcc", "--bsp-k", "2"], "b2"), &["--bsp-k", "bsp"]);
    assert_bad_input(&bad(&["--method", "dann", "--mdd-margin", "2"], "b3"), &["--mdd-margin", "mdd"]);
    assert_bad_input(&bad(&["--method", "dann", "--select", "backwards"], "b4"), &["--select", "backwards", "reverse"]);
    assert_bad_input(&bad(&["--method", "dann", "--select", "dev", "--val-split", "0"], "b5"), &["--select", "--val-split"]);
}

#[test]
fn daan_weighs_global_and_local_alignment_by_its_dynamic_factor() {
    let dir = scratch("adapt-daan");
    let whole = dir.join("whole");
    let v = quick("daan", &whole, "3", &["--lr-schedule", "inv", "--lambda-schedule", "warm-start"]);
    assert_eq!(v["method"], "daan");
    assert!(v["source_val_accuracy"].as_f64().unwrap() > 0.2, "{v}");
    let metrics = metrics_of(&whole);
    assert_eq!(metrics.len(), 3);
    // The first epoch trains at ω = 0.5; each later one with the factor the previous chose from
    // its discriminators' proxy A-distances, ω = d_local / (d_global + d_local).
    assert_eq!(metrics[0]["daan"]["omega"], 0.5);
    for (i, m) in metrics.iter().enumerate() {
        let d = &m["daan"];
        let (g, l, next) = (d["global_a_distance"].as_f64().unwrap(), d["local_a_distance"].as_f64().unwrap(), d["next_omega"].as_f64().unwrap());
        assert!((0.0..=2.0).contains(&g) && (0.0..=2.0).contains(&l), "{m}");
        let expected = if g + l > 1e-12 { l / (g + l) } else { d["omega"].as_f64().unwrap() };
        assert!((next - expected).abs() < 1e-9, "{m}");
        if i > 0 {
            assert_eq!(d["omega"], metrics[i - 1]["daan"]["next_omega"], "{m}");
        }
        assert!(m["domain_accuracy"].is_number() && m["transfer_loss"].as_f64().unwrap() > 0.0, "{m}");
    }
    // The local discriminators and the factor survive a stop: a run stopped after epoch 2 and
    // resumed ends where the uninterrupted run ended (per-iteration schedules, so that the
    // first epochs do not depend on the run's length).
    let part = dir.join("part");
    quick("daan", &part, "2", &["--lr-schedule", "inv", "--lambda-schedule", "warm-start"]);
    assert_resumes_to_the_same_end(&part, &v, &metrics);
    // A fixed factor stays fixed; ω = 0 is DANN's loss with the local discriminators idle.
    let fixed = dir.join("fixed");
    quick("daan", &fixed, "2", &["--daan-omega", "0", "--daan-local-hidden", "32"]);
    for m in metrics_of(&fixed) {
        assert_eq!((m["daan"]["omega"].as_f64(), m["daan"]["next_omega"].as_f64()), (Some(0.0), Some(0.0)), "{m}");
    }
    let config = std::fs::read_to_string(fixed.join("config.toml")).unwrap();
    assert!(config.contains("daan_omega = 0.0") && config.contains("daan_local_hidden = 32"), "{config}");
    assert_eval_gives_the_target_accuracy(&whole, &v);
    let bad = |args: &[&str], name: &str| bad_digits_run(&dir.join(name), args);
    assert_bad_input(&bad(&["--method", "daan", "--daan-omega", "1.5"], "b1"), &["--daan-omega"]);
    assert_bad_input(&bad(&["--method", "dann", "--daan-omega", "0.5"], "b2"), &["--daan-omega", "daan"]);
}

#[test]
fn autodial_learns_its_alignment_per_layer_and_resumes() {
    let dir = scratch("adapt-autodial");
    let whole = dir.join("whole");
    // α starts below 1 so that both bounds are in reach; a per-iteration lr schedule, so that
    // the first epochs do not depend on the run's length.
    let extra = ["--lr-schedule", "inv", "--autodial-alpha-init", "0.75"];
    let v = quick("autodial", &whole, "3", &extra);
    assert_eq!(v["method"], "autodial");
    assert!(v["source_val_accuracy"].as_f64().unwrap() > 0.2, "{v}");
    let metrics = metrics_of(&whole);
    assert_eq!(metrics.len(), 3);
    let mut moved = false;
    for m in &metrics {
        let a = &m["autodial"];
        let alpha = a["alpha"].as_object().unwrap();
        assert_eq!(alpha.keys().map(String::as_str).collect::<Vec<_>>(), ["bottleneck", "conv1", "conv2", "fc", "logits"], "{m}");
        for value in alpha.values() {
            let value = value.as_f64().unwrap();
            assert!((0.5..=1.0).contains(&value), "{m}");
            moved |= (value - 0.75).abs() > 1e-7;
        }
        // The transfer loss is the target entropy weighted by the default λ, 0.1.
        let entropy = a["entropy"].as_f64().unwrap();
        assert!(entropy > 0.0 && entropy <= 10f64.ln() + 1e-6, "{m}");
        assert!((m["transfer_loss"].as_f64().unwrap() - 0.1 * entropy).abs() < 1e-6 * entropy.max(1.0), "{m}");
        assert_eq!(m["lambda"], 0.1, "{m}");
    }
    assert!(moved, "α is learned: {metrics:?}");
    let config = std::fs::read_to_string(whole.join("config.toml")).unwrap();
    assert!(config.contains("autodial_alpha_init = 0.75"), "{config}");
    // α per layer and the entropy reach TensorBoard too.
    let tb = std::fs::read_dir(whole.join("tb")).unwrap().next().unwrap().unwrap().path();
    let events = graft::report::tensorboard::read_events(&tb).unwrap_or_else(|e| panic!("{e}"));
    for tag in ["autodial/alpha/conv1", "autodial/alpha/logits", "autodial/entropy"] {
        let steps: Vec<i64> = events.iter().filter(|e| e.scalars.iter().any(|(t, _)| t == tag)).map(|e| e.step).collect();
        assert_eq!(steps, vec![1, 2, 3], "{tag}");
    }
    // The alignment layers' running statistics and α survive a stop: a run stopped after epoch
    // 2 and resumed ends where the uninterrupted run ended.
    let part = dir.join("part");
    quick("autodial", &part, "2", &extra);
    assert_resumes_to_the_same_end(&part, &v, &metrics);
    // eval and predict read the run as a model for the target (its statistics).
    assert_eval_gives_the_target_accuracy(&whole, &v);
    let bad = |args: &[&str], name: &str| bad_digits_run(&dir.join(name), args);
    assert_bad_input(&bad(&["--method", "autodial", "--autodial-alpha-init", "0.3"], "b1"), &["--autodial-alpha-init", "[0.5, 1]"]);
    assert_bad_input(&bad(&["--method", "dann", "--autodial-alpha-init", "0.9"], "b2"), &["--autodial-alpha-init", "autodial"]);
}

#[test]
fn dsn_records_its_four_losses_resumes_and_evaluates_with_the_shared_encoder() {
    let dir = scratch("adapt-dsn");
    let whole = dir.join("whole");
    let schedules = ["--lr-schedule", "inv", "--lambda-schedule", "warm-start"];
    let v = quick("dsn", &whole, "3", &schedules);
    assert_eq!(v["method"], "dsn");
    assert!(v["source_val_accuracy"].as_f64().unwrap() > 0.2, "{v}");
    let metrics = metrics_of(&whole);
    assert_eq!(metrics.len(), 3);
    let term = |m: &serde_json::Value, t: &str| m["dsn"][t].as_f64().unwrap_or_else(|| panic!("no dsn {t} in {m}"));
    for m in &metrics {
        // The task term is the classification loss; the transfer loss is the default-weighted
        // sum of the other three, 0.01·reconstruction + 0.075·difference + 0.25·similarity.
        assert!((term(m, "task") - m["cls_loss"].as_f64().unwrap()).abs() < 1e-12, "{m}");
        let (rec, diff, sim) = (term(m, "reconstruction"), term(m, "difference"), term(m, "similarity"));
        assert!(rec > 0.0 && (0.0..=2.0).contains(&diff) && sim > 0.0, "{m}");
        let expected = 0.01 * rec + 0.075 * diff + 0.25 * sim;
        assert!((m["transfer_loss"].as_f64().unwrap() - expected).abs() < 1e-5, "{m}: expected transfer {expected}");
        assert!(m["domain_accuracy"].is_number(), "{m}");
    }
    // The private encoders and the decoder survive a stop: a run stopped after epoch 2 and
    // resumed ends where the uninterrupted run ended.
    let part = dir.join("part");
    quick("dsn", &part, "2", &schedules);
    assert_resumes_to_the_same_end(&part, &v, &metrics);
    // eval reads the shared encoder and head only.
    assert_eval_gives_the_target_accuracy(&whole, &v);
    // The weights are flags, saved with the run; with the reconstruction alone weighed, the
    // decoder learns: the epoch's mean reconstruction error falls.
    let recon = dir.join("recon");
    quick("dsn", &recon, "2", &["--dsn-alpha", "1", "--dsn-beta", "0", "--dsn-gamma", "0"]);
    let config = std::fs::read_to_string(recon.join("config.toml")).unwrap();
    assert!(config.contains("dsn_alpha = 1.0") && config.contains("dsn_beta = 0.0") && config.contains("dsn_gamma = 0.0"), "{config}");
    let m = metrics_of(&recon);
    for e in &m {
        assert!((e["transfer_loss"].as_f64().unwrap() - term(e, "reconstruction")).abs() < 1e-5, "{e}");
    }
    assert!(term(&m[1], "reconstruction") < term(&m[0], "reconstruction"), "{m:?}");
    let bad = |args: &[&str], name: &str| bad_digits_run(&dir.join(name), args);
    assert_bad_input(&bad(&["--method", "dsn", "--dsn-beta=-1"], "b1"), &["--dsn-beta"]);
    assert_bad_input(&bad(&["--method", "dann", "--dsn-alpha", "0.5"], "b2"), &["--dsn-alpha", "dsn"]);
}

#[test]
fn dev_and_last_selection_are_recorded_and_followed() {
    let dir = scratch("adapt-select");
    // ADDA's adversarial phase with DEV: each adaptation epoch records its DEV risk, and the
    // kept epoch is the one with the lowest.
    let run = dir.join("adda-dev");
    let v = quick("adda", &run, "3", &["--pretrain-epochs", "1", "--select", "dev"]);
    let metrics = metrics_of(&run);
    assert_eq!(metrics.len(), 4);
    assert_eq!((metrics[0]["phase"].as_str(), metrics[0]["select"].as_str()), (Some("pretrain"), Some("source-val")));
    let adapt: Vec<&serde_json::Value> = metrics.iter().filter(|m| m["phase"] == "adapt").collect();
    assert_eq!(adapt.len(), 3);
    let risks: Vec<f64> = adapt.iter().map(|m| {
        assert_eq!(m["select"], "dev", "{m}");
        let r = m["select_value"].as_f64().unwrap_or_else(|| panic!("no DEV risk: {m}"));
        assert!(r.is_finite(), "{m}");
        r
    }).collect();
    let best = (0..3).min_by(|&a, &b| risks[a].total_cmp(&risks[b])).unwrap();
    assert_eq!(v["best_epoch"].as_u64().unwrap() as usize, adapt[best]["epoch"].as_u64().unwrap() as usize, "risks {risks:?}: {v}");
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().lines().any(|l| l == "select = \"dev\""));

    // Reverse validation: each epoch records the reverse classifier's source accuracy (a
    // fraction of the source split, so a multiple of 1/n), and the kept epoch has the highest.
    let run = dir.join("dann-reverse");
    let v = quick("dann", &run, "3", &["--select", "reverse"]);
    let metrics = metrics_of(&run);
    let n_val = v["n_source_val"].as_f64().unwrap();
    let scores: Vec<f64> = metrics.iter().map(|m| {
        assert_eq!(m["select"], "reverse", "{m}");
        let r = m["select_value"].as_f64().unwrap_or_else(|| panic!("no reverse accuracy: {m}"));
        assert!((0.0..=1.0).contains(&r) && ((r * n_val) - (r * n_val).round()).abs() < 1e-6, "{m}");
        r
    }).collect();
    let best = (0..3).rev().max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
    assert_eq!(v["best_epoch"].as_u64().unwrap() as usize, best + 1, "reverse accuracies {scores:?}: {v}");
    // The summary's source accuracy is the kept epoch's own, not the criterion.
    assert_eq!(v["source_val_accuracy"], metrics[best]["source_val_accuracy"], "{v}");

    // --select last keeps the last epoch, whatever the source split says.
    let run = dir.join("mcc-last");
    let v = quick("mcc", &run, "3", &["--select", "last"]);
    assert_eq!(v["best_epoch"], 3);
    assert!(metrics_of(&run).iter().all(|m| m["select"] == "last" && m["select_value"].is_null()));
    // By default ADDA's adversarial phase keeps its last epoch too (and says so).
    let run = dir.join("adda-default");
    let v = quick("adda", &run, "2", &["--pretrain-epochs", "1"]);
    assert_eq!(v["best_epoch"], 3);
    assert_eq!(metrics_of(&run)[2]["select"], "last");
}
