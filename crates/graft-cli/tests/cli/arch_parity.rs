//! torchvision's VGG, AlexNet, ConvNeXt-Tiny, EfficientNet-B0…B4, DenseNet-121/169 and
//! RegNetY-400MF…3.2GF against PyTorch, without committed weights: both sides fill
//! every tensor from the same seeded formula (`graft::zoo::seeded`, and `seeded.py` beside the
//! references), run the same seeded inputs, and only the logits (KB) are committed, with the
//! script that made them (`tests/fixtures/seeded/make_reference.py`). Also torchvision's eval
//! transforms (resize 256, centre crop 224; EfficientNet's bicubic ones) on a seeded image.

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

/// Seeded weights into each of `archs`, seeded inputs through it, logits against PyTorch's from
/// the reference file `reference` (`reference.json`, `vit_reference.json`): max |Δlogit| ≤ 1e-4
/// of the largest logit. Also the parameter count against PyTorch's. Each architecture's batch
/// and input side (224 unless the reference says `side`) are the reference's.
pub fn seeded_logits_match(reference: &str, archs: &[&str]) {
    let path = fixtures().join(reference);
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap();
    let (on, device) = test_device();
    for &arch in archs {
        let want = &json["archs"][arch];
        assert!(want.is_object(), "{reference} has no {arch}");
        let config = ModelSpec::find(arch).unwrap().config();
        let rows = config.layer_rows();
        assert_eq!(summarize(&rows, &Default::default()).total_params as u64, want["params"].as_u64().unwrap(), "{arch}: parameters");

        let dict = seeded::state_dict(&config.table());
        let file = PathBuf::from(format!("seeded-{arch}.pth"));
        let source = WeightSource { dict: &dict, path: &file, model: arch, device: &device };
        let net = config.init(&device).load_weights(&source).unwrap();
        drop(dict);

        let batch = want["batch"].as_u64().unwrap() as usize;
        let side = want.get("side").map_or(224, |s| s.as_u64().unwrap() as usize);
        let shape = [batch, 3, side, side];
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
        eprintln!("{arch}: max |Δlogit| = {d:e}, largest logit {scale:.3}, relative {:e} (forward of {batch} at {side} px in {elapsed:.2?})", d / scale);
        assert!(d / scale <= 1e-4, "{arch}: logits differ from PyTorch's by {d} (largest logit {scale})");
    }
}

/// [`seeded_logits_match`] on torchvision's `arch` (`reference.json`), in a child process.
fn seeded_logits_match_torchvision(arch: &str) {
    let name = format!("cli::arch_parity::{}_seeded_logits_match_torchvision", arch);
    if super::in_child_process(&name) {
        seeded_logits_match("reference.json", &[arch]);
    }
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

#[test]
fn efficientnet_b0_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("efficientnet_b0");
}

/// B1 … B4 on 96-pixel inputs (EfficientNet takes any side), one image each.
#[test]
fn efficientnet_b1_to_b4_seeded_logits_match_torchvision() {
    if super::in_child_process("cli::arch_parity::efficientnet_b1_to_b4_seeded_logits_match_torchvision") {
        seeded_logits_match("reference.json", &["efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4"]);
    }
}

#[test]
fn densenet121_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("densenet121");
}

/// DenseNet-169 on a 128-pixel input.
#[test]
fn densenet169_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("densenet169");
}

#[test]
fn regnet_y_400mf_seeded_logits_match_torchvision() {
    seeded_logits_match_torchvision("regnet_y_400mf");
}

/// The larger RegNetYs on 128-pixel inputs, one image each.
#[test]
fn regnet_y_800mf_to_3_2gf_seeded_logits_match_torchvision() {
    if super::in_child_process("cli::arch_parity::regnet_y_800mf_to_3_2gf_seeded_logits_match_torchvision") {
        seeded_logits_match("reference.json", &["regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf"]);
    }
}

/// The 8-bit crop `arch`'s preparation makes of the seeded 320×250 image against the
/// reference's entry `key` (torchvision's transform on the same image).
fn crop_matches(arch: &str, key: &str) {
    let want = reference()[key].clone();
    assert!(want.is_object(), "reference.json has no {key}");
    let pre = ModelSpec::find(arch).unwrap().preprocess();
    assert_eq!(want["crop"], serde_json::json!([pre.size]), "{arch}: crop side");
    let (w, h) = (320u32, 250u32);
    assert_eq!(want["image"], serde_json::json!([w, h]));
    let image = image::RgbImage::from_raw(w, h, seeded::bytes("image", (w * h * 3) as usize)).unwrap();
    let crop = pre.crop_resize(&image);
    assert_eq!(crop.dimensions(), (pre.size, pre.size));
    let bytes = crop.into_raw();
    let sums: Vec<u64> = (0..3).map(|c| bytes.iter().skip(c).step_by(3).map(|&b| u64::from(b)).sum()).collect();
    let weighted: u64 = bytes.iter().enumerate().map(|(i, &b)| (i as u64 + 1) * u64::from(b)).sum();
    let want_sums: Vec<u64> = want["channel_sums"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(sums, want_sums, "{arch}: per-channel sums of the crop");
    assert_eq!(weighted, want["weighted_sum"].as_u64().unwrap(), "{arch}: position-weighted sum of the crop");
}

/// `--arch vgg16`'s preparation is torchvision's `VGG16_Weights.IMAGENET1K_V1.transforms()`:
/// the same 8-bit crop of a seeded 320×250 image (resize 256 → 327×256, crop offsets 52, 16);
/// AlexNet, ResNet and MobileNetV2 (their `IMAGENET1K_V1` weights) prepare images the same way.
#[test]
fn torchvision_archs_prepare_images_with_torchvisions_resize_and_centre_crop() {
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
    crop_matches("vgg16", "preprocess");
}

/// EfficientNet-B0 … B4 prepare images as `EfficientNet_B*_Weights.IMAGENET1K_V1.transforms()`:
/// PIL bicubic resize of the shorter side (B0 256, B1 256, B2 288, B3 320, B4 384), centre crop
/// of the native side (224, 240, 288, 300, 380), ImageNet mean and std; B0's and B3's 8-bit
/// crops of the seeded image equal torchvision's. DenseNet and RegNetY take the usual 256 / 224.
#[test]
fn efficientnets_prepare_images_with_torchvisions_bicubic_resize_and_crop() {
    use graft::data::image::{Crop, Interpolation};
    let want = [("efficientnet_b0", 256, 224), ("efficientnet_b1", 256, 240), ("efficientnet_b2", 288, 288), ("efficientnet_b3", 320, 300), ("efficientnet_b4", 384, 380)];
    for (arch, shorter, side) in want {
        let pre = ModelSpec::find(arch).unwrap().preprocess();
        assert_eq!((pre.size, pre.crop, pre.interpolation), (side, Crop::ResizeCentre { shorter }, Interpolation::Bicubic), "{arch}");
        let vgg = ModelSpec::find("vgg16").unwrap().preprocess();
        assert_eq!((pre.mean, pre.std), (vgg.mean, vgg.std), "{arch}");
    }
    assert_eq!(reference()["preprocess_efficientnet_b0"]["interpolation"], "bicubic");
    crop_matches("efficientnet_b0", "preprocess_efficientnet_b0");
    crop_matches("efficientnet_b3", "preprocess_efficientnet_b3");
    for arch in ["densenet121", "densenet169", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf"] {
        assert_eq!(ModelSpec::find(arch).unwrap().preprocess(), ModelSpec::find("vgg16").unwrap().preprocess(), "{arch}");
    }
}

/// The Caffe Model Zoo's networks (`vgg16_caffe`, `vgg19_caffe`, `bvlc_alexnet`, `caffenet`;
/// `caffe_reference.json`, made by `make_caffe_reference.py`): seeded weights under Caffe's layer
/// names, Caffe's first convolution reversed to read RGB on load, against PyTorch twins of the
/// Caffe networks (AlexNet's grouped convolutions and LRN, Caffe's rounded-up pooling) fed the
/// channel-reversed input. Also their parameter counts (AlexNet's 60,965,224 is Caffe's).
#[test]
fn caffe_flavours_seeded_logits_match_pytorch() {
    if super::in_child_process("cli::arch_parity::caffe_flavours_seeded_logits_match_pytorch") {
        seeded_logits_match("caffe_reference.json", &["vgg16_caffe", "vgg19_caffe", "bvlc_alexnet", "caffenet"]);
    }
}

/// A real `.caffemodel` through graft's Caffe reader: `caffenet-tiny.caffemodel`, CaffeNet's layer
/// list in the legacy `layers` form of the 2014 Model Zoo files (num/channels/height/width blob
/// shapes; ReLU, pooling and LRN layers without blobs), tiny widths, seeded weights, written with
/// Caffe's schema by `make_caffe_reference.py`; logits against PyTorch's on the same weights.
#[test]
fn a_legacy_caffemodel_loads_into_caffes_alexnet_and_matches_pytorch() {
    use graft::zoo::vgg::{Feature, VggConfig};
    let want = &serde_json::from_slice::<serde_json::Value>(&std::fs::read(fixtures().join("caffe_reference.json")).unwrap()).unwrap()["caffenet_tiny"];
    let file = fixtures().join(want["file"].as_str().unwrap());
    let dict = graft::zoo::read_weights(&file).unwrap();
    assert_eq!(dict.metadata["format"], "caffemodel");
    assert_eq!(dict.tensors["conv2.weight"].shape, vec![16, 4, 5, 5], "grouped: 8 inputs in 2 groups");
    assert_eq!(dict.tensors["fc6.weight"].shape, vec![16, 8], "legacy [1, 1, out, in] squeezed");

    let u = |k: &str| want[k].as_u64().unwrap() as usize;
    let widths: Vec<usize> = want["widths"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap() as usize).collect();
    let mut config = VggConfig { hidden: u("hidden"), num_classes: u("classes"), resolution: u("side"), pool_side: 1, ..VggConfig::caffe_alexnet(true) };
    let mut convs = widths.iter();
    for f in &mut config.features {
        if let Feature::Conv { output, .. } = f {
            *output = *convs.next().unwrap();
        }
    }
    let (on, device) = test_device();
    let source = WeightSource { dict: &dict, path: &file, model: "caffenet (tiny)", device: &device };
    let net = config.init(&device).load_weights(&source).unwrap();
    let shape = [u("batch"), 3, u("side"), u("side")];
    let x = Tensor::<4>::from_data(TensorData::new(seeded::inputs("input", &shape), shape), &device);
    let logits = net.forward(x);
    assert_on_device(on, &logits);
    let logits = logits.into_data().try_to_vec::<f32>().unwrap();
    let reference = npy::read_f32(&fixtures().join("caffenet_tiny_logits.npy")).unwrap();
    assert_eq!(reference.shape, vec![u("batch"), u("classes")]);
    let d = logits.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = reference.data.iter().fold(0f32, |m, x| m.max(x.abs()));
    eprintln!("caffenet-tiny.caffemodel: max |Δlogit| = {d:e}, largest logit {scale:.3}, relative {:e}", d / scale);
    assert!(d / scale <= 1e-4, "tiny CaffeNet: logits differ from PyTorch's by {d} (largest {scale})");
    // The reversal is what makes them agree: without it (the weights as Caffe stores them, BGR)
    // the same input gives other logits.
    let mut bgr = config.table();
    for leaf in &mut bgr.leaves {
        leaf.input = graft::zoo::table::FileInput::Same;
    }
    let plain = bgr.load(config.init(&device), &source).unwrap();
    let other = plain.forward(Tensor::<4>::from_data(TensorData::new(seeded::inputs("input", &shape), shape), &device)).into_data().try_to_vec::<f32>().unwrap();
    let d_plain = other.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d_plain / scale > 1e-3, "reading BGR weights unreversed should change the logits ({d_plain})");
}

/// A state dict holding every tensor name of `id`'s layer table (empty tensors): what
/// `ModelSpec::for_weights` reads to pick a flavour.
pub fn names_of(id: &str) -> graft_weights::StateDict {
    let table = ModelSpec::find(id).unwrap().config().table();
    dict_of(table.leaves.iter().flat_map(|l| table.tensors(l)).map(|t| t.file))
}

/// A state dict holding empty tensors under `names` (for the name-matching rules).
pub fn dict_of(names: impl IntoIterator<Item = String>) -> graft_weights::StateDict {
    let tensors = names.into_iter().map(|name| (name, graft_weights::Tensor { shape: vec![0], dtype: graft_weights::DType::F32, data: vec![] }));
    graft_weights::StateDict { tensors: tensors.collect(), ..Default::default() }
}

/// `--arch vgg16|vgg19|alexnet` with a file under Caffe's layer names loads Caffe's flavour of
/// the network (its names, its layers and its preparation: BGR mean pixel, std 1); a file under
/// torchvision's names stays with torchvision's.
#[test]
fn a_caffe_file_given_to_a_torchvision_arch_loads_its_caffe_flavour() {
    for (arch, caffe) in [("vgg16", "vgg16_caffe"), ("vgg19", "vgg19_caffe"), ("alexnet", "bvlc_alexnet")] {
        let spec = ModelSpec::find(arch).unwrap();
        assert_eq!(spec.for_weights(&names_of(caffe)).id, caffe);
        assert_eq!(spec.for_weights(&names_of(arch)).id, arch);
        let pre = ModelSpec::find(caffe).unwrap().preprocess();
        assert_eq!(pre.std, [1.0; 3], "{caffe}: Caffe does not scale");
        assert!(pre.mean[0] > pre.mean[2], "{caffe}: the BGR mean pixel, in RGB order (R 123.7 / 122.7 first)");
    }
    assert!(ModelSpec::find("alexnet").unwrap().flavours().contains(&"caffenet"));
    assert_eq!(ModelSpec::find("bvlc_alexnet").unwrap().preprocess().size, 227);
    // A file of neither stays with the architecture asked for (and fails naming its tensor).
    assert_eq!(ModelSpec::find("vgg16").unwrap().for_weights(&Default::default()).id, "vgg16");
}
