//! Vision Transformers: torchvision's `vit_b_16` and `vit_b_32` and timm's
//! `vit_small_patch16_224` and `vit_base_patch16_224` against PyTorch on seeded weights (both
//! sides fill every tensor from its name, `graft::zoo::seeded` and `seeded.py`; only the logits
//! are committed, with `tests/fixtures/seeded/make_vit_reference.py`), and `--arch vit_b_16`
//! through inspect, probe, advise, extract, fit, bench and export (ONNX).

use std::path::Path;

use graft::zoo::{seeded, ModelSpec};
use serde_json::json;

use super::arch_parity::fixtures;
use super::{assert_bad_input, graft_in, isolated_home, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Seeded weights into each ViT, seeded inputs through it, logits against torchvision's or
/// timm's: max |Δlogit| ≤ 1e-4 of the largest logit; parameter counts as PyTorch counts them.
#[test]
fn vit_seeded_logits_match_torchvision_and_timm() {
    if !super::in_child_process("cli::vit_cli::vit_seeded_logits_match_torchvision_and_timm") {
        return;
    }
    super::arch_parity::seeded_logits_match("vit_reference.json", &["vit_b_16", "vit_b_32", "vit_small_patch16_224", "vit_base_patch16_224"]);
}

/// `--arch vit_b_16 --weights FILE` (seeded, torchvision's names) on every command: inspect
/// lists torchvision's layers and counts; probe, advise, extract by stage name, fit in two
/// stages (a new head on the frozen trunk, then the top two stages) and bench forward; export to
/// ONNX that onnxruntime runs as `graft predict` does; a ViT-B/32 file is refused as ViT-B/16
/// weights.
#[test]
fn vit_b_16_inspects_probes_extracts_fits_benches_and_exports() {
    if !super::in_child_process("cli::vit_cli::vit_b_16_inspects_probes_extracts_fits_benches_and_exports") {
        return;
    }
    let dir = scratch("vit-cli");
    let home = isolated_home("vit-cli");
    let weights = dir.join("vit_b_16-seeded.safetensors");
    let config = ModelSpec::find("vit_b_16").unwrap().config();
    graft_weights::save_safetensors(&weights, &seeded::state_dict(&config.table())).unwrap();

    // inspect: torchvision's names, shapes and counts (sum(p.numel()) = 86,567,656).
    let i = json_of(&graft_in(&home, &["inspect", "--arch", "vit_b_16", "--weights", s(&weights), "--json"]));
    assert_eq!(i["total_params"], 86_567_656u64);
    let layers = i["layers"].as_array().unwrap();
    let layer = |name: &str| layers.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no layer {name}")).clone();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names[..6], ["conv_proj", "class_token", "encoder.pos_embedding", "encoder.layers.encoder_layer_0.ln_1", "encoder.layers.encoder_layer_0.self_attention.in_proj", "encoder.layers.encoder_layer_0.self_attention.out_proj"]);
    assert_eq!(names[names.len() - 2..], ["encoder.ln", "heads.head"]);
    assert_eq!(layer("conv_proj")["params"], 768 * 3 * 16 * 16 + 768);
    assert_eq!(layer("conv_proj")["output_shape"], json!([768, 14, 14]));
    assert_eq!(layer("encoder.pos_embedding")["params"], 197 * 768);
    assert_eq!(layer("encoder.layers.encoder_layer_11.self_attention.in_proj")["params"], 2304 * 768 + 2304);
    assert_eq!(layer("encoder.layers.encoder_layer_11.mlp.0")["output_shape"], json!([197, 3072]));
    assert_eq!(layer("heads.head")["params"], 768 * 1000 + 1000);
    let cfg = &i["pretrained_cfg"];
    assert_eq!(cfg["input"]["crop"], json!({"resize-centre": {"shorter": 256}}), "ViT_B_16_Weights.IMAGENET1K_V1: resize 256, crop 224");
    assert_eq!((cfg["feature_dim"].clone(), cfg["stages"].as_array().unwrap().len()), (json!(768), 14));

    // Probe, advise, extract a stage by name, fit (head, then the top two stages), bench.
    let p = super::backbones::check("vit_b_16", &weights, "vit_b_16", ("encoder.layers.encoder_layer_5", [768, 1, 197]), "encoder.layers.encoder_layer_10");
    let (names, dims) = super::backbones::names_and_dims(&p);
    let mut want = vec!["conv_proj".to_string()];
    want.extend((0..12).map(|i| format!("encoder.layers.encoder_layer_{i}")));
    want.push("encoder.ln".into());
    assert_eq!(names, want);
    assert!(dims.iter().all(|&d| d == 768), "{dims:?}");

    // export: the fitted run (top two stages fine-tuned, a new head) as ONNX, run by
    // onnxruntime like `graft predict`.
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/graft-test-scratch/backbone-vit_b_16/run");
    assert!(run.join("model.json").is_file(), "check() left no run at {}", run.display());
    let data = super::fit::fmnist(&dir, 2, 31);
    let (_, report) = super::export::check_onnx_parity(&home, &run, &super::export::images(&data), "vit_b_16");
    let ops = report["ops"].as_array().unwrap();
    for op in ["LayerNormalization", "Softmax", "Erf", "Expand", "MatMul"] {
        assert!(ops.contains(&json!(op)), "no {op} in {report}");
    }

    // A ViT-B/32 file is not ViT-B/16 weights: the first tensor that differs is named.
    let b32 = dir.join("vit_b_32-seeded.safetensors");
    let config = ModelSpec::find("vit_b_32").unwrap().config();
    graft_weights::save_safetensors(&b32, &seeded::state_dict(&config.table())).unwrap();
    assert_bad_input(&graft_in(&home, &["inspect", "--arch", "vit_b_16", "--weights", s(&b32)]), &["conv_proj.weight", "vit_b_16"]);
}

/// timm's ViTs prepare images as timm's eval transform does (`crop_pct` 0.9: PIL bicubic resize
/// of the shorter side to 248, centre crop 224, mean and std 0.5): the same 8-bit crop of the
/// seeded 320×250 image as `make_vit_reference.py` records; torchvision's ViTs resize to 256.
#[test]
fn vits_prepare_images_as_timm_and_torchvision_do() {
    use graft::data::image::{Crop, Interpolation};
    let path = fixtures().join("vit_reference.json");
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap();
    let want = &reference["preprocess_timm"];
    for arch in ["vit_b_16", "vit_b_32"] {
        assert_eq!(ModelSpec::find(arch).unwrap().preprocess(), ModelSpec::find("vgg16").unwrap().preprocess(), "{arch}");
    }
    let pre = ModelSpec::find("vit_small_patch16_224").unwrap().preprocess();
    assert_eq!(pre, ModelSpec::find("vit_base_patch16_224").unwrap().preprocess());
    assert_eq!((pre.size, pre.crop, pre.interpolation), (224, Crop::ResizeCentre { shorter: 248 }, Interpolation::Bicubic));
    assert_eq!((pre.mean, pre.std), ([127.5; 3], [127.5; 3]));
    let (w, h) = (320u32, 250u32);
    assert_eq!(want["image"], json!([w, h]));
    let image = image::RgbImage::from_raw(w, h, seeded::bytes("image", (w * h * 3) as usize)).unwrap();
    let bytes = pre.crop_resize(&image).into_raw();
    assert_eq!(bytes.len(), 224 * 224 * 3);
    let sums: Vec<u64> = (0..3).map(|c| bytes.iter().skip(c).step_by(3).map(|&b| u64::from(b)).sum()).collect();
    let weighted: u64 = bytes.iter().enumerate().map(|(i, &b)| (i as u64 + 1) * u64::from(b)).sum();
    let want_sums: Vec<u64> = want["channel_sums"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(sums, want_sums, "per-channel sums of the crop");
    assert_eq!(weighted, want["weighted_sum"].as_u64().unwrap(), "position-weighted sum of the crop");
}
