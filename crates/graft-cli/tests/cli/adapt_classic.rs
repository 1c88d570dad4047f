//! `graft adapt` with the classic methods (TCA, JDA, GFK, SA, CORAL and the NN / PCA
//! baselines) on a few hundred real digits: the JSON contract, the run directory, the JDA
//! protocol's transductive test, image folders, and bad input.

use std::path::{Path, PathBuf};

use super::{assert_bad_input, graft, json_of, scratch, shared};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn data_root() -> PathBuf {
    let root = shared().join("data");
    assert!(root.join("digits/usps/usps.h5").is_file(), "USPS is missing under {}", root.display());
    root
}

/// USPS → MNIST, 300 drawn images each, 16×16 raw pixels, tested on the drawn MNIST images.
fn classic(method: &str, run: &Path, extra: &[&str]) -> serde_json::Value {
    classic_seeded(method, run, "4", extra)
}

fn classic_seeded(method: &str, run: &Path, seed: &str, extra: &[&str]) -> serde_json::Value {
    let root = data_root();
    let mut args = vec![
        "adapt", "--method", method, "--source", "usps:train", "--target", "mnist:train", "--target-test", "mnist:train",
        "--source-samples", "300", "--target-samples", "300", "--features", "raw:16", "--data-root", s(&root),
        "--seed", seed, "--out", s(run), "--json",
    ];
    args.extend_from_slice(extra);
    json_of(&graft(&args))
}

#[test]
fn every_classic_method_runs_on_digits_with_the_deep_methods_fields() {
    let dir = scratch("adapt-classic-digits");
    let mut acc = std::collections::BTreeMap::new();
    for method in ["none", "pca", "tca", "jda", "gfk", "sa", "coral-shallow"] {
        let run = dir.join(method);
        let extra: &[&str] = match method {
            "jda" => &["--iterations", "3"],
            "pca" | "tca" => &["--dim", "30"],
            _ => &[],
        };
        let v = classic(method, &run, extra);
        assert_eq!(v["method"], method);
        assert_eq!(v["backbone"], "raw:16");
        assert_eq!(v["source"], "usps:train");
        assert_eq!(v["target_test"], "mnist:train");
        assert_eq!(v["transductive"], true);
        assert_eq!((v["n_source_train"].as_u64(), v["n_target"].as_u64(), v["n_target_test"].as_u64()), (Some(300), Some(300), Some(300)));
        assert_eq!(v["width"], 256);
        // --dim reached the method; the defaults are the JDA paper's (k = 100, GFK d = 20).
        let dim = match method {
            "pca" | "tca" => serde_json::json!(30),
            "jda" => serde_json::json!(100),
            "gfk" | "sa" => serde_json::json!(20),
            _ => serde_json::Value::Null,
        };
        assert_eq!(v["dim"], dim, "{method}");
        let a = v["target_test_accuracy"].as_f64().unwrap();
        // Ten classes: chance is 0.1; every method on these digits is well above it.
        assert!(a > 0.2 && a <= 1.0, "{method}: accuracy {a}");
        let confusion: u64 = v["target_test_evaluation"]["confusion"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|c| c.as_u64().unwrap()).sum();
        assert_eq!(confusion, 300);
        let iterations = v["per_iteration"].as_array().unwrap();
        assert_eq!(iterations.len(), if method == "jda" { 3 } else { 1 }, "{method}");
        assert_eq!(iterations.last().unwrap()["target_test_accuracy"].as_f64(), Some(a));
        // The run directory holds the same summary and one metrics line per iteration.
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(saved["target_test_accuracy"], v["target_test_accuracy"]);
        let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), iterations.len());
        acc.insert(method, a);
    }
    // Adaptation helps on USPS → MNIST even at 300 images: TCA and JDA above no transform.
    assert!(acc["tca"] > acc["none"] && acc["jda"] > acc["none"], "{acc:?}");
}

#[test]
fn classic_runs_are_seeded_and_draw_new_images_per_seed() {
    let dir = scratch("adapt-classic-seeds");
    let a = classic("tca", &dir.join("a"), &["--dim", "20"]);
    let b = classic("tca", &dir.join("b"), &["--dim", "20"]);
    assert_eq!(a["target_test_accuracy"], b["target_test_accuracy"]);
    assert_eq!(a["mmd_before"], b["mmd_before"]);
    let c = classic_seeded("tca", &dir.join("c"), "5", &["--dim", "20"]);
    assert_ne!(a["mmd_before"], c["mmd_before"], "another seed draws other images");
    // TCA's transform brings the domains' means together.
    for v in [&a, &c] {
        let after = v["per_iteration"][0]["mmd"].as_f64().unwrap();
        assert!(after < v["mmd_before"].as_f64().unwrap(), "{v}");
    }
}

#[test]
fn classic_methods_take_image_folders_rbf_and_logistic() {
    let dir = scratch("adapt-classic-folders");
    let source = super::adapt::mnist_folder(&dir, 20, 1);
    let root = data_root();
    let v = json_of(&graft(&[
        "adapt", "--method", "tca", "--source", s(&source), "--target", "usps:train", "--target-samples", "200",
        "--target-test", "usps:test", "--features", "raw:16:bilinear", "--kernel", "rbf", "--dim", "20",
        "--classifier", "logistic", "--data-root", s(&root), "--out", s(&dir.join("run")), "--json",
    ]));
    assert_eq!(v["n_source_train"], 200);
    assert_eq!(v["n_target"], 200);
    assert_eq!(v["n_target_test"], 2007);
    assert_eq!(v["transductive"], false);
    assert_eq!(v["kernel"], "rbf");
    assert_eq!(v["classifier"], "logistic");
    assert!(v["gamma"].as_f64().unwrap() > 0.0);
    let a = v["target_test_accuracy"].as_f64().unwrap();
    assert!(a > 0.2, "MNIST folder → USPS with TCA (rbf) and logistic regression: {a}");
}

#[test]
fn classic_bad_input_is_one_line_naming_the_flag() {
    let dir = scratch("adapt-classic-bad");
    let root = data_root();
    let run = |method: &str, extra: &[&str], name: &str| {
        let out = dir.join(name);
        let mut args = vec!["adapt", "--method", method, "--source", "usps:test", "--target", "mnist:train", "--data-root", s(&root), "--out", s(&out)];
        args.extend_from_slice(extra);
        graft(&args)
    };
    assert_bad_input(&run("tca", &["--features", "raw:x"], "a"), &["--features", "raw:x"]);
    assert_bad_input(&run("tca", &["--features", "vgg99"], "b"), &["--features", "vgg99"]);
    assert_bad_input(&run("tca", &["--mu", "0"], "c"), &["--mu", "0"]);
    assert_bad_input(&run("jda", &["--kernel", "poly"], "d"), &["--kernel", "poly"]);
    assert_bad_input(&run("jda", &["--iterations", "0"], "e"), &["--iterations"]);
    assert_bad_input(&run("gfk", &["--classifier", "svm"], "f"), &["--classifier", "svm"]);
    assert_bad_input(&run("sa", &["--normalize", "max"], "g"), &["--normalize", "max"]);
    assert_bad_input(&run("tca", &["--epochs", "3"], "h"), &["--epochs", "network"]);
    assert_bad_input(&run("dann", &["--features", "raw:16"], "i"), &["--features", "classic"]);
    assert_bad_input(&run("tca", &["--target-samples", "0"], "j"), &["--target-samples"]);
    // Nothing was left behind by a refused start.
    for name in ["a", "c", "d", "e", "h", "i"] {
        assert!(!dir.join(name).exists(), "{name}");
    }
}

#[test]
fn classic_methods_take_a_zoo_models_features_and_refuse_too_wide_rows() {
    let dir = scratch("adapt-classic-zoo");
    let root = data_root();
    let zoo = |method: &str, features: &str, name: &str| {
        graft(&[
            "adapt", "--method", method, "--source", "usps:test", "--target", "mnist:test", "--target-test", "mnist:test",
            "--source-samples", "40", "--target-samples", "40", "--features", features, "--dim", "10",
            "--data-root", s(&root), "--out", s(&dir.join(name)), "--json",
        ])
    };
    // The pooled features of EfficientNet-Lite0 (1,280 wide).
    let v = json_of(&zoo("tca", "efficientnet-lite0", "pooled"));
    assert_eq!(v["width"], 1280);
    assert_eq!(v["backbone"], "efficientnet-lite0");
    assert!(v["target_test_accuracy"].as_f64().unwrap() > 0.15, "{v}");
    // One stage's feature map, flattened (16 × 112 × 112): fine for SA (thin SVDs), refused by
    // GFK, whose kernel would be that wide squared.
    let v = json_of(&zoo("sa", "efficientnet-lite0:_blocks.0", "stage"));
    assert_eq!(v["width"], 16 * 112 * 112);
    assert_bad_input(&zoo("gfk", "efficientnet-lite0:_blocks.0", "wide"), &["--features", "200704 wide"]);
}
