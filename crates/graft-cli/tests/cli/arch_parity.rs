//! torchvision's VGG, AlexNet and ConvNeXt-Tiny against PyTorch, without committed weights: both sides fill
//! every tensor from the same seeded formula (`graft::zoo::seeded`, and `seeded.py` beside the
//! references), run the same seeded inputs, and only the logits (KB) are committed, with the
//! script that made them (`tests/fixtures/seeded/make_reference.py`). Also torchvision's eval
//! transforms (resize 256, centre crop 224) on a seeded image.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use graft::npy;
use graft::zoo::layers::summarize;
use graft::zoo::load::WeightSource;
use graft::zoo::{seeded, ModelSpec};

use super::{assert_on_device, test_device};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seeded")
}

fn reference() -> serde_json::Value {
    let path = fixtures().join("reference.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Seeded weights into `arch`, seeded inputs through it, logits against torchvision's:
/// max |Δlogit| ≤ 1e-4 of the largest logit. Also the parameter count against torchvision's.
fn seeded_logits_match_torchvision(arch: &str) {
    let name = format!("cli::arch_parity::{}_seeded_logits_match_torchvision", arch);
    if !super::in_child_process(&name) {
        return;
    }
    let (on, device) = test_device();
    let want = reference()["archs"][arch].clone();
    assert!(want.is_object(), "reference.json has no {arch}");
    let spec = ModelSpec::find(arch).unwrap();
    let config = spec.config();
    let rows = config.layer_rows();
    assert_eq!(summarize(&rows, &Default::default()).total_params as u64, want["params"].as_u64().unwrap(), "{arch}: parameters");

    let dict = seeded::state_dict(&config.table());
    let path = PathBuf::from(format!("seeded-{arch}.pth"));
    let source = WeightSource { dict: &dict, path: &path, model: arch, device: &device };
    let net = config.init(&device).load_weights(&source).unwrap();
    drop(dict);

    let batch = want["batch"].as_u64().unwrap() as usize;
    let shape = [batch, 3, 224, 224];
    let x = Tensor::<4>::from_data(TensorData::new(seeded::inputs("input", &shape), shape), &device);
    let start = std::time::Instant::now();
    let logits = net.forward(x);
    assert_on_device(on, &logits);
    let logits = logits.into_data().try_to_vec::<f32>().unwrap();
    let elapsed = start.elapsed();
    let reference = npy::read_f32(&fixtures().join(format!("{arch}_logits.npy"))).unwrap();
    assert_eq!(reference.shape, vec![batch, 1000]);
    let d = logits.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = reference.data.iter().fold(0f32, |m, x| m.max(x.abs()));
    eprintln!("{arch}: max |Δlogit| = {d:e}, largest logit {scale:.3}, relative {:e} (forward of {batch} in {elapsed:.2?})", d / scale);
    assert!(d / scale <= 1e-4, "{arch}: logits differ from torchvision's by {d} (largest logit {scale})");
}

#[test]
fn vgg11_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("vgg11");
}

#[test]
fn vgg11_bn_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("vgg11_bn");
}

#[test]
fn vgg19_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("vgg19");
}

#[test]
fn alexnet_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("alexnet");
}

#[test]
fn convnext_tiny_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("convnext_tiny");
}

/// `--arch vgg16`'s preparation is torchvision's `VGG16_Weights.IMAGENET1K_V1.transforms()`:
/// the same 8-bit crop of a seeded 320×250 image (resize 256 → 327×256, crop offsets 52, 16);
/// AlexNet, ResNet and MobileNetV2 (their `IMAGENET1K_V1` weights) prepare images the same way.
#[test]
fn torchvision_archs_prepare_images_with_torchvisions_resize_and_centre_crop() {
    let want = reference()["preprocess"].clone();
    for arch in ["alexnet", "vgg19_bn", "resnet18", "resnet50", "mobilenetv2"] {
        assert_eq!(ModelSpec::find(arch).unwrap().preprocess(), ModelSpec::find("vgg16").unwrap().preprocess(), "{arch}");
    }
    // ConvNeXt's weights resize to 236 (Tiny), 230 (Small), 232 (Base), then crop 224.
    for (arch, shorter) in [("convnext_tiny", 236), ("convnext_small", 230), ("convnext_base", 232)] {
        let pre = ModelSpec::find(arch).unwrap().preprocess();
        assert_eq!((pre.size, pre.crop), (224, graft::data::image::Crop::ResizeCentre { shorter }), "{arch}");
    }
    let spec = ModelSpec::find("vgg16").unwrap();
    let pre = spec.preprocess();
    assert_eq!((pre.size, pre.crop), (224, graft::data::image::Crop::ResizeCentre { shorter: 256 }));
    assert_eq!(pre.mean, [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0]);
    let (w, h) = (320u32, 250u32);
    assert_eq!(want["image"], serde_json::json!([w, h]));
    let image = image::RgbImage::from_raw(w, h, seeded::bytes("image", (w * h * 3) as usize)).unwrap();
    let crop = pre.crop_resize(&image);
    assert_eq!(crop.dimensions(), (224, 224));
    let bytes = crop.into_raw();
    let sums: Vec<u64> = (0..3).map(|c| bytes.iter().skip(c).step_by(3).map(|&b| u64::from(b)).sum()).collect();
    let weighted: u64 = bytes.iter().enumerate().map(|(i, &b)| (i as u64 + 1) * u64::from(b)).sum();
    let want_sums: Vec<u64> = want["channel_sums"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(sums, want_sums, "per-channel sums of the crop");
    assert_eq!(weighted, want["weighted_sum"].as_u64().unwrap(), "position-weighted sum of the crop");
}
