//! timm's parameter names for graft's CNN architectures: ConvNeXt, EfficientNet-B0…B4,
//! RegNetY-400MF/1.6GF/3.2GF, VGG and MobileNetV2 read timm's files under the same `--arch` (the file's
//! tensor names tell which set it uses), and prepare images with timm's `pretrained_cfg` when
//! they do; DenseNet's and ResNet's timm names are torchvision's. Checked against timm on
//! seeded weights: timm's model filled by `seeded.py` under timm's names, graft's file made by
//! `graft::zoo::seeded` under the same names and loaded through `Pretrained::load` (the path
//! `--weights` takes); logits within 1e-4 of the largest, the set of names and shapes exactly
//! timm's, the crop of a seeded image exactly timm's eval transform's. Only the logits (KB) and
//! `timm_reference.json` are committed, with `tests/fixtures/seeded/make_timm_reference.py`.

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use graft::npy;
use graft::report::Silent;
use graft::zoo::layers::summarize;
use graft::zoo::table::NameSet;
use graft::zoo::{seeded, ModelSpec, Pretrained};
use serde_json::json;

use super::arch_parity::fixtures;
use super::{assert_bad_input, assert_on_device, graft_in, isolated_home, json_of, scratch, test_device};

fn reference() -> serde_json::Value {
    let path = fixtures().join("timm_reference.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// graft's file for timm's `model`: its architecture's seeded tensors under timm's names
/// (the architecture's own where they are timm's too), as safetensors in `dir`.
fn timm_file(dir: &Path, model: &str) -> (std::path::PathBuf, NameSet) {
    let want = &reference()["archs"][model];
    let table = ModelSpec::find(want["arch"].as_str().unwrap()).unwrap().config().table();
    let names = if table.timm.is_some() { NameSet::Timm } else { NameSet::Own };
    let file = dir.join(format!("{model}-timm-seeded.safetensors"));
    graft_weights::save_safetensors(&file, &seeded::state_dict_as(&table, names)).unwrap();
    (file, names)
}

/// For each of timm's `models` (keys of `timm_reference.json`): graft's timm name set equals
/// timm's state dict (count and FNV-1a of the sorted `name shape` lines), the parameter count
/// equals timm's, the seeded timm file loads through `Pretrained::load` as a timm file, seeded
/// inputs give timm's logits (max |Δlogit| ≤ 1e-4 of the largest logit) and the images are
/// prepared as timm's eval transform prepares them.
fn timm_logits_match(models: &[&str]) {
    let json = reference();
    let (on, device) = test_device();
    let dir = scratch(&format!("timm-parity-{}", models[0]));
    for &model in models {
        let want = &json["archs"][model];
        assert!(want.is_object(), "timm_reference.json has no {model}");
        let spec = ModelSpec::find(want["arch"].as_str().unwrap()).unwrap();
        let config = spec.config();
        let table = config.table();
        let names = if table.timm.is_some() { NameSet::Timm } else { NameSet::Own };
        let mut lines: Vec<String> = table.file_tensors(names).iter().map(|(n, s)| format!("{n} {}", s.iter().map(usize::to_string).collect::<Vec<_>>().join(","))).collect();
        lines.sort();
        assert_eq!(lines.len() as u64, want["tensors"].as_u64().unwrap(), "{model}: tensors");
        assert_eq!(format!("{:016x}", seeded::fnv1a64(lines.join("\n").as_bytes())), want["names_fnv1a64"].as_str().unwrap(), "{model}: timm's names and shapes");
        assert_eq!(summarize(&config.layer_rows(), &Default::default()).total_params as u64, want["params"].as_u64().unwrap(), "{model}: parameters");

        let (file, names) = timm_file(&dir, model);
        let loaded = Pretrained::load(spec, Some(&file), &dir, &Silent, &device).unwrap_or_else(|e| panic!("{model}: {e}"));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(loaded.names, names, "{model}: name set");
        let batch = want["batch"].as_u64().unwrap() as usize;
        let side = want.get("side").map_or(224, |s| s.as_u64().unwrap() as usize);
        let shape = [batch, 3, side, side];
        let x = Tensor::<4>::from_data(TensorData::new(seeded::inputs("input", &shape), shape), &device);
        let start = std::time::Instant::now();
        let logits = loaded.net.forward(x);
        assert_on_device(on, &logits);
        let logits = logits.into_data().try_to_vec::<f32>().unwrap();
        let elapsed = start.elapsed();
        let reference = npy::read_f32(&fixtures().join(format!("timm_{model}_logits.npy"))).unwrap();
        assert_eq!(reference.shape, vec![batch, 1000]);
        let d = logits.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let scale = reference.data.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("{model} ({}): max |Δlogit| = {d:e}, largest logit {scale:.3}, relative {:e} (forward of {batch} at {side} px in {elapsed:.2?})", spec.id, d / scale);
        assert!(d / scale <= 1e-4, "{model}: logits differ from timm's by {d} (largest logit {scale})");

        // Images: timm's eval transform for a timm file (the 8-bit crop of the seeded image).
        let cfg = &want["pretrained_cfg"];
        let pre = loaded.preprocess();
        if names == NameSet::Own {
            assert_eq!(pre, spec.preprocess(), "{model}: a file with torchvision's names is prepared torchvision's way");
            continue;
        }
        let timm = loaded.timm_input().unwrap();
        assert_eq!(timm.model, format!("{model}.{}", cfg["tag"].as_str().unwrap()), "{model}: tag");
        let side = cfg["input_size"][1].as_u64().unwrap() as u32;
        let shorter = (f64::from(side) / cfg["crop_pct"].as_f64().unwrap()).floor() as u32;
        assert_eq!((pre.size, pre.crop), (side, graft::data::image::Crop::ResizeCentre { shorter }), "{model}: side and resize");
        assert_eq!(json!(pre.interpolation), cfg["interpolation"], "{model}: interpolation");
        for c in 0..3 {
            let (mean, std) = (cfg["mean"][c].as_f64().unwrap() * 255.0, cfg["std"][c].as_f64().unwrap() * 255.0);
            assert!((f64::from(pre.mean[c]) - mean).abs() < 1e-4 && (f64::from(pre.std[c]) - std).abs() < 1e-4, "{model}: mean/std {:?} {:?}", pre.mean, pre.std);
        }
        let crop = &want["preprocess"];
        let (w, h) = (320u32, 250u32);
        assert_eq!(crop["image"], json!([w, h]));
        let image = image::RgbImage::from_raw(w, h, seeded::bytes("image", (w * h * 3) as usize)).unwrap();
        let bytes = pre.crop_resize(&image).into_raw();
        assert_eq!(bytes.len(), (side * side * 3) as usize, "{model}: crop side");
        let sums: Vec<u64> = (0..3).map(|c| bytes.iter().skip(c).step_by(3).map(|&b| u64::from(b)).sum()).collect();
        let weighted: u64 = bytes.iter().enumerate().map(|(i, &b)| (i as u64 + 1) * u64::from(b)).sum();
        assert_eq!(json!(sums), crop["channel_sums"], "{model}: per-channel sums of timm's crop");
        assert_eq!(json!(weighted), crop["weighted_sum"], "{model}: position-weighted sum of timm's crop");
    }
}

/// [`timm_logits_match`] in a child process (`test` is the calling test's name).
fn in_child(test: &str, models: &[&str]) {
    if super::in_child_process(&format!("cli::timm_parity::{test}")) {
        timm_logits_match(models);
    }
}

#[test]
fn convnext_tiny_loads_timms_names_and_matches_timm() {
    in_child("convnext_tiny_loads_timms_names_and_matches_timm", &["convnext_tiny"]);
}

/// B1 … B4 on 96- and 64-pixel inputs, one image each.
#[test]
fn efficientnet_b0_to_b4_load_timms_names_and_match_timm() {
    in_child("efficientnet_b0_to_b4_load_timms_names_and_match_timm", &["efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4"]);
}

/// `regnety_004`, `_016` and `_032` (timm's `regnety_008` is a different network).
#[test]
fn regnety_load_timms_names_and_match_timm() {
    in_child("regnety_load_timms_names_and_match_timm", &["regnety_004", "regnety_016", "regnety_032"]);
}

#[test]
fn vgg11_bn_loads_timms_names_and_matches_timm() {
    in_child("vgg11_bn_loads_timms_names_and_matches_timm", &["vgg11_bn"]);
}

/// timm's `mobilenetv2_100` as `--arch mobilenetv2` (and its alias `mobilenetv2_100`).
#[test]
fn mobilenetv2_100_loads_timms_names_and_matches_timm() {
    in_child("mobilenetv2_100_loads_timms_names_and_matches_timm", &["mobilenetv2_100"]);
    assert_eq!(ModelSpec::find("mobilenetv2_100").unwrap().config(), ModelSpec::find("mobilenetv2").unwrap().config());
}

/// timm's DenseNet-121 and ResNet-18 name every tensor as torchvision does: the file loads as
/// a torchvision file and gives timm's logits.
#[test]
fn densenet121_and_resnet18_timm_names_are_torchvisions() {
    in_child("densenet121_and_resnet18_timm_names_are_torchvisions", &["densenet121", "resnet18"]);
}

/// `graft inspect` says which name set a file uses and shows its input configuration; the
/// timm alias `regnety_004` is the same architecture; a timm file short of one tensor fails
/// with the typed missing-tensor error naming timm's tensor, a file with neither name set
/// naming torchvision's first; timm's `regnety_008` (another network) is no alias.
#[test]
fn inspect_shows_the_name_set_and_timms_input_and_bad_files_name_the_tensor() {
    let dir = scratch("timm-inspect");
    let home = isolated_home("timm-inspect");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (timm, names) = timm_file(&dir, "regnety_004");
    assert_eq!(names, NameSet::Timm);
    let torch = dir.join("regnet_y_400mf.safetensors");
    let table = ModelSpec::find("regnet_y_400mf").unwrap().config().table();
    graft_weights::save_safetensors(&torch, &seeded::state_dict(&table)).unwrap();

    for arch in ["regnet_y_400mf", "regnety_004"] {
        let i = json_of(&graft_in(&home, &["inspect", "--arch", arch, "--weights", &s(&timm), "--json"]));
        let cfg = &i["pretrained_cfg"];
        assert_eq!(cfg["names"], "timm", "{arch}: {cfg}");
        assert_eq!(cfg["input"]["crop"], json!({"resize-centre": {"shorter": 232}}), "regnety_004.tv2_in1k: crop_pct 0.965");
        assert_eq!(cfg["input"]["interpolation"], "bicubic");
        assert_eq!(i["total_params"], 4_344_144u64);
        // The layer table keeps torchvision's names.
        assert!(i["layers"].as_array().unwrap().iter().any(|l| l["name"] == "trunk_output.block1.block1-0.f.se.fc1"));
        let i = json_of(&graft_in(&home, &["inspect", "--arch", arch, "--weights", &s(&torch), "--json"]));
        assert_eq!(i["pretrained_cfg"]["names"], "own");
        assert_eq!(i["pretrained_cfg"]["input"]["crop"], json!({"resize-centre": {"shorter": 256}}));
    }

    // fit on the timm file: the run's model.json records the name set and timm's preparation.
    let data = super::fit::fmnist(&dir, 2, 31);
    let run = dir.join("run");
    json_of(&graft_in(&home, &["fit", "--arch", "regnety_004", "--weights", &s(&timm), "--data", &s(&data), "--out", &s(&run), "--epochs", "1", "--val-split", "0", "--json"]));
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    let info = if info.get("preprocess").is_some() { info } else { info["image"].clone() };
    assert_eq!(info["weights_names"], "timm", "{info}");
    assert_eq!(info["preprocess"]["crop"], json!({"resize-centre": {"shorter": 232}}), "{info}");
    assert_eq!(info["preprocess"]["interpolation"], "bicubic", "{info}");

    // A timm file short of one tensor: timm's name in the error.
    let mut dict = seeded::state_dict_as(&table, NameSet::Timm);
    assert!(dict.tensors.remove("s3.b2.conv2.bn.running_var").is_some());
    let short = dir.join("timm-short.safetensors");
    graft_weights::save_safetensors(&short, &dict).unwrap();
    assert_bad_input(&graft_in(&home, &["inspect", "--arch", "regnet_y_400mf", "--weights", &s(&short)]), &["s3.b2.conv2.bn.running_var", "timm-short.safetensors"]);
    // Neither set (a ConvNeXt's torchvision file): torchvision's first tensor named.
    let other = dir.join("convnext.safetensors");
    graft_weights::save_safetensors(&other, &seeded::state_dict(&ModelSpec::find("convnext_tiny").unwrap().config().table())).unwrap();
    assert_bad_input(&graft_in(&home, &["inspect", "--arch", "regnet_y_400mf", "--weights", &s(&other)]), &["stem.0.weight", "convnext.safetensors"]);
    assert!(ModelSpec::find("regnety_008").is_err(), "timm's regnety_008 is not RegNetY-800MF");
}
