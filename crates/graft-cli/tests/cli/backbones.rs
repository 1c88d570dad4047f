//! The backbone contract through the CLI on the torchvision trunks: `probe`, `advise`,
//! `extract --layer`, `fit --stages head:…,top2:…` and `bench forward` on `--arch resnet18` and
//! `--arch mobilenetv2` with the reference torchvision state dicts (randomly initialised, so
//! the accuracies mean nothing; the stage names, widths, cuts and cache keys do). Each stage and
//! cache key names the layer the architecture itself gives that output.

use std::path::{Path, PathBuf};

use super::fit::fmnist;
use super::{assert_bad_input, graft_in, isolated_home, json_of, reference, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The feature-cache cuts of `model` in `home`.
fn cached_cuts(home: &Path, model: &str) -> Vec<String> {
    let v = json_of(&graft_in(home, &["cache", "ls", "--json"]));
    let mut cuts: Vec<String> = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["namespace"]["model"] == model)
        .map(|n| n["namespace"]["cut"].as_str().unwrap().to_string())
        .collect();
    cuts.sort();
    cuts
}

/// Runs the five commands of the check on one architecture and returns the probe's JSON.
/// `layer`: a stage name for `extract --layer`, with the shape it must give; `top2_cut`: the
/// cache key of the frozen prefix under `--stages …,top2`.
pub(super) fn check(arch: &str, weights: &PathBuf, name: &str, layer: (&str, [usize; 3]), top2_cut: &str) -> serde_json::Value {
    let dir = scratch(&format!("backbone-{name}"));
    let home = isolated_home(&format!("backbone-{name}"));
    let data = fmnist(&dir, 2, 31); // 3 classes × 2 images
    let w = s(weights);

    // probe: every stage, named and sized by the contract; a rerun runs no trunk.
    let probe = ["probe", "--arch", arch, "--weights", w, "--data", s(&data), "--val-split", "0.5", "--batch", "6", "--json"];
    let p = json_of(&graft_in(&home, &probe));
    assert_eq!(p["trunk_images"], 6);
    let again = json_of(&graft_in(&home, &probe));
    assert_eq!(again["trunk_images"], 0, "every stage's pooled output is cached");
    assert_eq!(again["layers"], p["layers"]);

    // advise (and with it `fit --strategy auto`): the pretrained classifier on the last stage.
    let a = json_of(&graft_in(&home, &["advise", "--arch", arch, "--weights", w, "--data", s(&data), "--sample", "6", "--json"]));
    assert_eq!(a["model"], arch);
    assert_eq!(a["entropy_sample"], 6);
    assert_eq!(a["images_per_class"], 2.0);
    let entropy = a["mean_normalized_entropy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&entropy), "{entropy}");
    assert!(a["strategy"].as_str().unwrap().starts_with("small-"), "{}", a["strategy"]);

    // extract a stage by its own name.
    let out = dir.join("stage.npy");
    let x = json_of(&graft_in(&home, &["extract", "--arch", arch, "--weights", w, "--layer", layer.0, "--data", s(&data), "--out", s(&out), "--json"]));
    assert_eq!(x["shape"], serde_json::json!(layer.1), "{}", layer.0);
    assert_eq!(x["n"], 6);
    assert_eq!(graft::npy::read_f32(&out).unwrap().shape, vec![6, layer.1.iter().product::<usize>()]);
    assert_bad_input(
        &graft_in(&home, &["extract", "--arch", arch, "--weights", w, "--layer", "_blocks.3", "--data", s(&data), "--out", s(&out)]),
        &["--layer", "_blocks.3", p["layers"][0]["name"].as_str().unwrap()],
    );

    // fit in two stages: the head on the frozen trunk, then the top two blocks; each stage's
    // frozen prefix is cached under the real layer's name.
    let run = dir.join("run");
    let f = json_of(&graft_in(&home, &[
        "fit", "--arch", arch, "--weights", w, "--data", s(&data), "--out", s(&run), "--stages", "head:1,top2:1:1e-4",
        "--val-split", "0", "--batch-size", "6", "--json",
    ]));
    assert_eq!(f["epochs"], 2);
    let cuts = cached_cuts(&home, arch);
    assert!(cuts.contains(&top2_cut.to_string()), "no `{top2_cut}` namespace in {cuts:?}");
    assert!(cuts.contains(&"pooled:avg".to_string()), "{cuts:?}");
    assert!(cuts.iter().all(|c| !c.contains("_blocks")), "a Lite name in {cuts:?}");

    // bench forward with the real weights.
    let b = json_of(&graft_in(&home, &["bench", "forward", "--arch", arch, "--weights", w, "--batch", "1", "--iters", "1", "--warmup", "0", "--json"]));
    assert_eq!(b["model"], arch);
    assert_eq!(b["resolution"], 224);
    assert!(b["images_per_second"].as_f64().unwrap() > 0.0);
    p
}

pub(super) fn names_and_dims(p: &serde_json::Value) -> (Vec<String>, Vec<u64>) {
    let layers = p["layers"].as_array().unwrap();
    (layers.iter().map(|l| l["name"].as_str().unwrap().to_string()).collect(), layers.iter().map(|l| l["dim"].as_u64().unwrap()).collect())
}

#[test]
fn resnet18_probes_advises_extracts_fits_in_stages_and_benches() {
    let p = check("resnet18", &reference("torchvision/resnet18.pth"), "resnet18", ("layer3", [256, 14, 14]), "layer3");
    let (names, dims) = names_and_dims(&p);
    assert_eq!(names, ["maxpool", "layer1.0", "layer1", "layer2.0", "layer2", "layer3.0", "layer3", "layer4.0", "layer4"]);
    assert_eq!(dims, [64, 64, 64, 128, 128, 256, 256, 512, 512]);
}

#[test]
fn mobilenetv2_probes_advises_extracts_fits_in_stages_and_benches() {
    // torchvision counts 19 numbered `features.N`: top2 trains features.17 and features.18.
    let p = check("mobilenetv2", &reference("torchvision/mobilenet_v2.pth"), "mobilenetv2", ("features.14", [160, 7, 7]), "features.16");
    let (names, dims) = names_and_dims(&p);
    assert_eq!(names, (0..19).map(|i| format!("features.{i}")).collect::<Vec<_>>());
    assert_eq!(dims, [32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320, 1280]);
}
