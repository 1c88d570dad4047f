//! `graft study transferability`: the layer-transfer study writes its table, plot and findings,
//! every variant at every boundary, and resumes without retraining what finished.

use std::path::Path;

use super::transfer::import;
use super::{assert_bad_input, graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_study_trains_every_variant_at_every_boundary_and_resumes() {
    let dir = scratch("study");
    let train = import("fashion-mnist", "train", 12, 1, &dir.join("train"));
    let test = import("fashion-mnist", "test", 6, 2, &dir.join("test"));
    let out = dir.join("study");
    let args = ["study", "transferability", "--data", s(&train), "--test", s(&test), "--out", s(&out), "--seeds", "0", "--epochs", "1", "--json"];
    let v = json_of(&graft(&args));
    let (a, b) = (v["classes_a"].as_array().unwrap(), v["classes_b"].as_array().unwrap());
    assert_eq!((a.len(), b.len()), (5, 5));
    assert!(a.iter().all(|c| !b.contains(c)), "A and B are disjoint");
    let outcomes = v["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2 + 4 * 4, "two bases and four variants at n = 1..4");
    for variant in ["AnB", "BnB", "AnB+", "BnB+"] {
        let ns: Vec<u64> = outcomes.iter().filter(|o| o["variant"] == variant).map(|o| o["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, vec![1, 2, 3, 4], "{variant}");
    }
    assert!(outcomes.iter().all(|o| (0.0..=1.0).contains(&o["accuracy"].as_f64().unwrap())));
    assert_eq!(v["findings"].as_array().unwrap().len(), 3);
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), 18);
    assert_eq!(&std::fs::read(out.join("transferability.png")).unwrap()[..4], b"\x89PNG");

    // Again without --resume: refused; with it, every training is read back, same answers.
    assert_bad_input(&graft(&args[..args.len() - 1]), &["--out", "already holds a study"]);
    let mut again = args.to_vec();
    again.push("--resume");
    let w = json_of(&graft(&again));
    assert_eq!(w["outcomes"], v["outcomes"], "finished trainings are read back, not retrained");
    assert_bad_input(&graft(&["study", "transferability", "--data", s(&train), "--test", s(&test), "--out", s(&dir.join("x")), "--arch", "resnet50"]), &["--arch", "resnet50", "resnet18"]);
}

/// `--arch lenet`: LeNet-5's five layers give the same table, and the saved config names it.
#[test]
fn the_study_runs_on_lenet() {
    let dir = scratch("study-lenet");
    let train = import("fashion-mnist", "train", 8, 1, &dir.join("train"));
    let test = import("fashion-mnist", "test", 4, 2, &dir.join("test"));
    let out = dir.join("study");
    let v = json_of(&graft(&["study", "transferability", "--data", s(&train), "--test", s(&test), "--out", s(&out), "--arch", "lenet", "--seeds", "0", "--epochs", "1", "--json"]));
    let outcomes = v["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2 + 4 * 4, "two bases and four variants at n = 1..4");
    assert!(outcomes.iter().all(|o| (0.0..=1.0).contains(&o["accuracy"].as_f64().unwrap())));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("study.json")).unwrap()).unwrap();
    assert_eq!(saved["config"]["arch"], "lenet");
    // LeNet's first layer: 6 filters of 5×5 (small-cnn's: 32 of 3×3), in baseA's saved weights.
    let weights = std::fs::read(out.join("runs/baseA-0-s0/final.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&weights[8..8 + header_len]).unwrap();
    let conv1 = header.as_object().unwrap().iter().find(|(k, _)| k.contains("conv1") && k.contains("weight")).map(|(_, v)| v["shape"].clone());
    assert_eq!(conv1, Some(serde_json::json!([6, 1, 5, 5])), "{header}");
}

/// `--arch resnet18`: ResNet-18 at stage granularity (stem, layer1 … layer4, fc), so every
/// variant at n = 1..5, the plot written, and the groups named in the answer.
#[test]
fn the_study_runs_on_resnet18_by_stage() {
    let dir = scratch("study-resnet18");
    // Two training images per class (10 per half, one step per training): 22 trainings of an
    // 11.7 M-parameter network.
    let train = import("fashion-mnist", "train", 2, 1, &dir.join("train"));
    let test = import("fashion-mnist", "test", 1, 2, &dir.join("test"));
    let out = dir.join("study");
    let v = json_of(&graft(&["study", "transferability", "--data", s(&train), "--test", s(&test), "--out", s(&out), "--arch", "resnet18", "--seeds", "0", "--epochs", "1", "--json"]));
    assert_eq!(v["arch"], "resnet18");
    assert_eq!(v["groups"], serde_json::json!(["stem (conv1, bn1)", "layer1", "layer2", "layer3", "layer4", "fc"]));
    let outcomes = v["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2 + 4 * 5, "two bases and four variants at n = 1..5");
    for variant in ["AnB", "BnB", "AnB+", "BnB+"] {
        let ns: Vec<u64> = outcomes.iter().filter(|o| o["variant"] == variant).map(|o| o["n"].as_u64().unwrap()).collect();
        assert_eq!(ns, vec![1, 2, 3, 4, 5], "{variant}");
    }
    assert!(outcomes.iter().all(|o| (0.0..=1.0).contains(&o["accuracy"].as_f64().unwrap())));
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), 22);
    assert_eq!(&std::fs::read(out.join("transferability.png")).unwrap()[..4], b"\x89PNG");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(saved["groups"].as_array().map(Vec::len), Some(6));
    // A finished training keeps its checkpoints, not its optimiser state.
    let run = std::fs::read_dir(out.join("runs/AnBplus-3-s0")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect::<Vec<_>>();
    assert!(run.contains(&"final.safetensors".to_string()) && !run.iter().any(|f| f.starts_with("optim-")), "{run:?}");
}
