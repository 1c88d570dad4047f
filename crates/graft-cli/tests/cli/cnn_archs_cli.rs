//! torchvision's EfficientNet-B0…B4, DenseNet-121/169 and RegNetY-400MF…3.2GF through the CLI
//! on seeded weights (`graft::zoo::seeded`, written to a temporary safetensors file): `inspect
//! --weights` lists torchvision's names and parameter counts; `--arch efficientnet_b0` runs
//! probe, advise, extract, a two-stage fit and bench; DenseNet's legacy `norm.1`-style names
//! load as torchvision loads them; a file for another architecture is refused naming a tensor.
//! (The logits against PyTorch are `arch_parity`'s.)

use std::path::{Path, PathBuf};

use graft::zoo::{seeded, ModelSpec};
use serde_json::json;

use super::{assert_bad_input, graft_in, isolated_home, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `arch`'s seeded weights as a safetensors file in `dir`.
fn seeded_file(dir: &Path, arch: &str) -> PathBuf {
    let path = dir.join(format!("{arch}-seeded.safetensors"));
    let config = ModelSpec::find(arch).unwrap().config();
    graft_weights::save_safetensors(&path, &seeded::state_dict(&config.table())).unwrap();
    path
}

/// `inspect --arch A --weights FILE --json` on seeded weights: the total is torchvision's
/// `sum(p.numel() for p in model.parameters())` (torchvision 0.29.2), the layers are named as
/// torchvision names them, and the pretrained configuration is torchvision's eval transform.
#[test]
fn new_torchvision_archs_inspect_with_torchvisions_names_and_counts() {
    let dir = scratch("cnn-archs-inspect");
    let home = isolated_home("cnn-archs-inspect");
    let want = [
        ("efficientnet_b0", 5_288_548u64, "features.3.1.block.2.fc1", 9, 1280),
        ("efficientnet_b4", 19_341_616, "features.6.7.block.3.1", 9, 1792),
        ("densenet121", 7_978_856, "features.denseblock3.denselayer24.conv2", 9, 1024),
        ("densenet169", 14_149_480, "features.denseblock4.denselayer32.norm1", 9, 1664),
        ("regnet_y_400mf", 4_344_144, "trunk_output.block4.block4-5.f.se.fc2", 17, 440),
        ("regnet_y_3_2gf", 19_436_338, "trunk_output.block3.block3-12.f.b.0", 22, 1512),
    ];
    for (arch, params, layer, stages, dim) in want {
        let weights = seeded_file(&dir, arch);
        let i = json_of(&graft_in(&home, &["inspect", "--arch", arch, "--weights", s(&weights), "--json"]));
        assert_eq!(i["total_params"], params, "{arch}");
        let layers = i["layers"].as_array().unwrap();
        assert!(layers.iter().any(|l| l["name"] == layer), "{arch}: no layer {layer}");
        let cfg = &i["pretrained_cfg"];
        assert_eq!((cfg["stages"].as_array().unwrap().len(), cfg["feature_dim"].as_u64().unwrap()), (stages, dim), "{arch}");
        std::fs::remove_file(&weights).unwrap();
    }
    // A DenseNet-169 file is not DenseNet-121 weights: the first tensor that differs is named.
    let d169 = seeded_file(&dir, "densenet169");
    assert_bad_input(&graft_in(&home, &["inspect", "--arch", "densenet121", "--weights", s(&d169)]), &["features.denseblock4.denselayer1.norm1.weight", "densenet121"]);
}

/// A DenseNet file with the first torchvision files' names (`denselayer1.norm.1.weight`) loads
/// as torchvision loads it, renamed to `norm1`: `predict` gives the same scores as the same
/// weights under today's names.
#[test]
fn densenet_legacy_names_load_as_torchvision_renames_them() {
    let dir = scratch("densenet-legacy");
    let home = isolated_home("densenet-legacy");
    let config = ModelSpec::find("densenet121").unwrap().config();
    let dict = seeded::state_dict(&config.table());
    let modern = dir.join("modern.safetensors");
    graft_weights::save_safetensors(&modern, &dict).unwrap();
    let mut legacy = graft_weights::StateDict::default();
    for (name, t) in dict.tensors {
        let mut old = name.clone();
        if name.contains(".denselayer") {
            for (new, was) in [(".norm1.", ".norm.1."), (".norm2.", ".norm.2."), (".conv1.", ".conv.1."), (".conv2.", ".conv.2.")] {
                old = old.replace(new, was);
            }
        }
        legacy.tensors.insert(old, t);
    }
    assert!(legacy.tensors.contains_key("features.denseblock1.denselayer1.norm.1.weight"));
    let old = dir.join("legacy.safetensors");
    graft_weights::save_safetensors(&old, &legacy).unwrap();
    assert!(legacy.tensors.contains_key("features.denseblock4.denselayer16.conv.2.weight") && legacy.tensors.contains_key("features.transition1.conv.weight"));
    let img = super::reference("efficientnet-lite0/images/chelsea.png").display().to_string();
    let top = |w: &Path| json_of(&graft_in(&home, &["predict", "--arch", "densenet121", "--weights", s(w), &img, "--top", "5", "--json"]))["predictions"][0]["top"].clone();
    let (a, b) = (top(&modern), top(&old));
    assert_eq!(a.as_array().map(Vec::len), Some(5), "{a}");
    assert_eq!(a, b, "legacy and modern names give different predictions");
}

/// `--arch efficientnet_b0 --weights FILE` on every command: probe (nine stages named
/// `features.0` … `features.8` with torchvision's widths), advise, extract a stage by name, fit
/// (a new head, then the top two stages: `features.7` and `features.8`, the frozen prefix cached
/// as `features.6`) and bench forward.
#[test]
fn efficientnet_b0_probes_advises_extracts_fits_in_stages_and_benches() {
    let dir = scratch("cnn-archs-b0");
    let weights = seeded_file(&dir, "efficientnet_b0");
    let p = super::backbones::check("efficientnet_b0", &weights, "efficientnet_b0", ("features.4", [80, 14, 14]), "features.6");
    let (names, dims) = super::backbones::names_and_dims(&p);
    assert_eq!(names, (0..9).map(|i| format!("features.{i}")).collect::<Vec<_>>());
    assert_eq!(dims, [32, 16, 24, 40, 80, 112, 192, 320, 1280]);
    assert_eq!(p["layers"][8]["name"], json!("features.8"));
}
