//! Keras `.h5` weights: the three file layouts on a tiny committed model, and Keras
//! Applications' VGG16, VGG19, ResNet50, MobileNetV2 and EfficientNetB0 against Keras 3 itself, without
//! committed weights. `tests/fixtures/keras/make_keras_fixtures.py` fills each Keras model from
//! the seeded formula (`graft::zoo::seeded`, keyed by the Keras weight name `<layer>/<weight>`)
//! and commits only the logits Keras computed on the seeded input; here the architecture's
//! Keras flavour is filled from the same formula under the same names and shapes, loaded
//! through its layer table (Keras layouts: kernels `[kh, kw, in, out]`, `fc1`'s channels-last
//! rows, the BGR first convolution) and run on the same input: max |Δlogit| ≤ 1e-4 of the
//! largest logit. The tiny files tie the layer table's names to what each file format holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use graft::npy;
use graft::zoo::layers::summarize;
use graft::zoo::load::WeightSource;
use graft::zoo::efficientnet_b::EfficientNetConfig;
use graft::zoo::mobilenetv2::MobileNetV2Config;
use graft::zoo::resnet::ResNetConfig;
use graft::zoo::vgg::VggConfig;
use graft::zoo::{read_weights, seeded, ModelSpec, TrunkConfig};

use super::fit::fmnist;
use super::{assert_on_device, graft_in, isolated_home, json_of, scratch, test_device};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keras")
}

fn fixture(name: &str) -> PathBuf {
    let path = fixtures().join(name);
    assert!(path.is_file(), "missing fixture {} (made by make_keras_fixtures.py)", path.display());
    path
}

/// The tiny model's weights, by Keras name (each seeded under its own name).
const TINY: [&str; 11] = [
    "bn/beta",
    "bn/gamma",
    "bn/moving_mean",
    "bn/moving_variance",
    "conv/bias",
    "conv/kernel",
    "dw/bias",
    "dw/kernel",
    "fc/bias",
    "fc/kernel",
    "project/kernel",
];

/// Keras 3's `.weights.h5` (numbered variables under class-named groups, the layer name an
/// attribute), Keras 3's legacy `.h5` and Keras 2's `save_weights` layout all read as the same
/// `<layer>/<weight>` tensors, each holding the seeded values Keras was given.
#[test]
fn the_three_keras_file_layouts_read_as_the_same_layer_weights() {
    for file in ["tiny.weights.h5", "tiny.h5", "tiny_keras2.h5"] {
        let path = fixture(file);
        let dict = read_weights(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Keras 2 calls the depthwise kernel `depthwise_kernel`; the layer table reads either.
        let keras2 = |n: &str| if file == "tiny_keras2.h5" && n == "dw/kernel" { "dw/depthwise_kernel".to_string() } else { n.to_string() };
        let names: BTreeSet<String> = dict.tensors.keys().cloned().collect();
        let want: BTreeSet<String> = TINY.iter().map(|n| keras2(n)).collect();
        assert_eq!(names, want, "{file}");
        for name in TINY {
            let t = &dict.tensors[&keras2(name)];
            assert_eq!(t.data, seeded::values(name, &t.shape), "{file}: {name} (shape {:?})", t.shape);
        }
        assert_eq!(dict.tensors["conv/kernel"].shape, [3, 3, 3, 4], "{file}: Keras's [kh, kw, in, out]");
        assert_eq!(dict.tensors[&keras2("dw/kernel")].shape, [3, 3, 4, 1], "{file}");
        assert_eq!(dict.tensors["fc/kernel"].shape, [5, 2], "{file}: Dense [in, out]");
        assert_eq!(dict.metadata["format"], "keras-h5");
    }
}

/// Through the CLI: `inspect --weights` lists a Keras 3 `.weights.h5` by layer names; the file
/// given for an architecture it does not hold fails naming the file and the missing tensor; a
/// `.weights.h5` without layer names (older Keras 3) is refused naming the file and the group.
#[test]
fn keras_weights_files_through_the_cli_list_and_fail_by_name() {
    let path = fixture("tiny.weights.h5");
    let v = json_of(&super::graft(&["inspect", "--weights", path.to_str().unwrap(), "--json"]));
    assert_eq!(v["format"], "keras-h5", "{v}");
    let names: BTreeSet<String> = v["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, TINY.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>());
    // `--arch vgg16` with a Keras file: the Keras flavour, which misses `block1_conv1/kernel`.
    let out = super::graft(&["inspect", "--arch", "vgg16", "--weights", path.to_str().unwrap()]);
    super::assert_bad_input(&out, &["tiny.weights.h5", "block1_conv1/kernel"]);
    let nameless = fixture("tiny_nameless.weights.h5");
    let out = super::graft(&["inspect", "--weights", nameless.to_str().unwrap()]);
    super::assert_bad_input(&out, &["tiny_nameless.weights.h5", "/layers/", "/vars", "does not name its layers"]);
}

/// `--arch vgg16|vgg19|resnet50|mobilenetv2|efficientnet_b0 --weights FILE.h5` loads the
/// architecture's Keras flavour (its `_keras` twin, with Keras's preprocessing), told by the
/// file's names; a file under torchvision's names, torchvision's; a Keras file under neither
/// names, the Keras flavour (so that the error names a Keras tensor); a file under timm's
/// names (where timm names the architecture), torchvision's, read by timm's names.
#[test]
fn a_keras_h5_file_selects_the_keras_flavour_and_its_preprocessing() {
    use super::arch_parity::{dict_of, names_of};
    use graft::zoo::table::NameSet;
    let mut timm_named = 0;
    for arch in ["vgg16", "vgg19", "resnet50", "mobilenetv2", "efficientnet_b0"] {
        let spec = ModelSpec::find(arch).unwrap();
        let keras = format!("{arch}_keras");
        assert_eq!(spec.for_weights(&names_of(&keras)).id, keras, "{arch}");
        assert_eq!(spec.for_weights(&names_of(arch)).id, arch, "{arch}");
        let table = spec.config().table();
        let timm = table.file_tensors(NameSet::Timm);
        if !timm.is_empty() {
            let dict = dict_of(timm.into_iter().map(|(name, _)| name));
            assert_eq!(spec.for_weights(&dict).id, arch, "{arch}: a timm file");
            assert_eq!(table.name_set(&dict), NameSet::Timm, "{arch}");
            timm_named += 1;
        }
        let mut other = graft_weights::StateDict::default();
        other.metadata.insert("format".into(), "keras-h5".into());
        assert_eq!(spec.for_weights(&other).id, keras, "{arch}: a Keras file of other names");
        assert_eq!(spec.for_weights(&Default::default()).id, arch);
    }
    assert!(timm_named >= 3, "timm names only {timm_named} of the five");
    // An architecture without a Keras flavour stays itself.
    assert_eq!(ModelSpec::find("vgg11").unwrap().for_weights(&names_of("vgg16_keras")).id, "vgg11");
    let vgg_torch = ModelSpec::find("vgg16").unwrap().preprocess();
    // VGG: Keras names and Caffe-style input (mean in RGB order: the BGR swap is in the kernel).
    let spec = ModelSpec::find("vgg19_keras").unwrap();
    let pre = spec.preprocess();
    assert_eq!((pre.size, pre.mean, pre.std), (224, [123.68, 116.779, 103.939], [1.0; 3]));
    let rows = spec.layer_rows();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(&names[..5], ["input", "block1_conv1", "block1_conv2", "block1_pool", "block2_conv1"]);
    assert_eq!(&names[names.len() - 4..], ["flatten", "fc1", "fc2", "predictions"]);
    assert!(names.contains(&"block5_conv4"));
    assert_eq!(rows.iter().find(|r| r.name == "block5_pool").unwrap().output_shape, vec![512, 7, 7]);
    assert_eq!(rows.iter().find(|r| r.name == "block1_conv1").unwrap().params[0].path, "block1_conv1/kernel");
    // Keras counts VGG19's parameters as torchvision does: 143,667,240.
    assert_eq!(summarize(&rows, &Default::default()).total_params, 143_667_240);
    let mobilenet = ModelSpec::find("mobilenetv2_keras").unwrap().preprocess();
    assert_eq!((mobilenet.mean, mobilenet.std), ([127.5; 3], [127.5; 3]));
    // EfficientNet: Keras's in-model Rescaling and Normalization, for ImageNet weights.
    let effnet = ModelSpec::find("efficientnet_b0_keras").unwrap().preprocess();
    assert_eq!((effnet.mean, effnet.std), (vgg_torch.mean, vgg_torch.std));
    assert_eq!(effnet.crop, graft::data::image::Crop::Stretch);
}

/// Keras Applications' `arch` (an entry of `keras_reference.json`) against its Keras flavour
/// `config` at the reference's side. `bgr`: the file's network takes BGR images (Keras's
/// Caffe-style models), graft's RGB, so graft gets the seeded input with its channels reversed.
fn keras_logits_match(arch: &str, config: TrunkConfig, bgr: bool) {
    let path = fixture("keras_reference.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let want = &json["archs"][arch];
    assert!(want.is_object(), "keras_reference.json has no {arch}");
    let (on, device) = test_device();
    // Keras's count_params() counts BatchNorm's moving statistics too.
    let summary = summarize(&config.layer_rows(), &Default::default());
    assert_eq!((summary.total_params + summary.buffers) as u64, want["params"].as_u64().unwrap(), "{arch}: parameters");

    let dict = seeded::state_dict(&config.table());
    assert!(dict.tensors.keys().all(|k| k.contains('/')), "{arch}: Keras names");
    let file = PathBuf::from(format!("seeded-keras-{arch}.h5"));
    let source = WeightSource { dict: &dict, path: &file, model: arch, device: &device };
    let net = config.init(&device).load_weights(&source).unwrap();
    drop(dict);

    let batch = want["batch"].as_u64().unwrap() as usize;
    let side = want["side"].as_u64().unwrap() as usize;
    let shape = [batch, 3, side, side];
    let mut x = Tensor::<4>::from_data(TensorData::new(seeded::inputs("input", &shape), shape), &device);
    if bgr {
        x = x.flip([1]);
    }
    let logits = net.forward(x);
    assert_on_device(on, &logits);
    let logits = logits.into_data().try_to_vec::<f32>().unwrap();
    let reference = npy::read_f32(&fixture(&format!("keras_{arch}_logits.npy"))).unwrap();
    assert_eq!(reference.shape, vec![batch, 1000]);
    let d = logits.iter().zip(&reference.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = reference.data.iter().fold(0f32, |m, x| m.max(x.abs()));
    eprintln!("keras {arch}: max |Δlogit| = {d:e}, largest logit {scale:.3}, relative {:e}", d / scale);
    assert!(d / scale <= 1e-4, "{arch}: logits differ from Keras's by {d} (largest logit {scale})");
}

#[test]
fn keras_vgg16_seeded_logits_match_keras() {
    if super::in_child_process("cli::keras_parity::keras_vgg16_seeded_logits_match_keras") {
        keras_logits_match("vgg16", VggConfig::keras(16, 64).into(), true);
    }
}

#[test]
fn keras_vgg19_seeded_logits_match_keras() {
    if super::in_child_process("cli::keras_parity::keras_vgg19_seeded_logits_match_keras") {
        keras_logits_match("vgg19", VggConfig::keras(19, 64).into(), true);
    }
}

#[test]
fn keras_mobilenetv2_seeded_logits_match_keras() {
    keras_logits_match("mobilenetv2", MobileNetV2Config::keras(1.0, 96, 1000, "predictions").into(), false);
}

#[test]
fn keras_resnet50_seeded_logits_match_keras() {
    if super::in_child_process("cli::keras_parity::keras_resnet50_seeded_logits_match_keras") {
        keras_logits_match("resnet50", ResNetConfig::keras50(64).into(), true);
    }
}

/// EfficientNetB0 on 96-pixel inputs: Keras's model takes raw pixels and normalizes them itself
/// (given ImageNet's mean and std², see the fixture script); graft gets the normalized input.
#[test]
fn keras_efficientnetb0_seeded_logits_match_keras() {
    keras_logits_match("efficientnetb0", EfficientNetConfig::keras_b0(96).into(), false);
}

/// The seed's recipe on Keras VGG19 (`include_top=False`): `graft fit --arch vgg19_keras
/// --weights FILE --head-pool flatten --head mlp:1024,1024 --dropout 0.5 --freeze 5` (what
/// `--arch vgg19` becomes for a `.h5` file), here with seeded Keras-named weights written to
/// safetensors (the `.h5` layouts themselves are the tiny files' test). The file has no `fc1`:
/// it loads as a trunk; `--freeze 5` is Keras's `model.layers[:5]` (input, block1_conv1,
/// block1_conv2, block1_pool, block2_conv1); images are prepared Caffe-style.
#[test]
fn the_seeds_recipe_runs_on_keras_vgg19_notop_weights() {
    if !super::in_child_process("cli::keras_parity::the_seeds_recipe_runs_on_keras_vgg19_notop_weights") {
        return;
    }
    let dir = scratch("keras-vgg19-recipe");
    let home = isolated_home("keras-vgg19-recipe");
    let data = fmnist(&dir, 2, 17); // 3 classes × 2 images
    let table = ModelSpec::find("vgg19_keras").unwrap().config().table().as_ref().clone().without_head();
    let dict = seeded::state_dict(&table);
    assert!(!dict.tensors.contains_key("fc1/kernel") && dict.tensors.contains_key("block5_conv4/kernel"));
    let weights = dir.join("vgg19-notop-seeded.safetensors");
    graft_weights::save_safetensors(&weights, &dict).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = dir.join("run");
    let v = json_of(&graft_in(&home, &[
        "fit", "--arch", "vgg19_keras", "--weights", &s(&weights), "--head-pool", "flatten", "--head", "mlp:1024,1024",
        "--dropout", "0.5", "--freeze", "5", "--data", &s(&data), "--out", &s(&run), "--epochs", "1", "--batch-size", "6",
        "--val-split", "0", "--json",
    ]));
    assert_eq!(v["epochs"], 1, "{v}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"], "vgg19_keras", "{manifest}");
    assert_eq!(manifest["preprocess"]["mean"], serde_json::json!([123.68, 116.779, 103.939]), "{manifest}");
    let last = graft_weights::load(&run.join("last.safetensors")).unwrap();
    assert_eq!(last.tensors["head.layers.0.weight"].shape, vec![25088, 1024]);
    assert!(!last.tensors.keys().any(|k| k.contains("classifier")), "no ImageNet classifier");
    // Frozen: block1_conv1, block1_conv2, block2_conv1 keep the file's values (block1_conv1's
    // input channels reversed: the file's network reads BGR); block2_conv2 trained.
    let burn = |name: &str| &last.tensors[name].data;
    let keras_kernel = |name: &str| {
        let t = &dict.tensors[name];
        graft::zoo::keras::hwio_to_oihw(&t.data, [t.shape[0], t.shape[1], t.shape[2], t.shape[3]])
    };
    assert_eq!(burn("trunk.convs.1.weight"), &keras_kernel("block1_conv2/kernel"), "block1_conv2 moved although frozen");
    assert_eq!(burn("trunk.convs.2.weight"), &keras_kernel("block2_conv1/kernel"), "block2_conv1 moved although frozen");
    assert_eq!(burn("trunk.convs.0.bias"), &dict.tensors["block1_conv1/bias"].data);
    assert_ne!(burn("trunk.convs.3.weight"), &keras_kernel("block2_conv2/kernel"), "block2_conv2 did not train");
    let rgb = burn("trunk.convs.0.weight");
    let bgr = keras_kernel("block1_conv1/kernel");
    assert_eq!(rgb[..9], bgr[18..27], "block1_conv1's R input is the file's third (B, G, R) channel");

    let i = json_of(&graft_in(&home, &["inspect", "--arch", "vgg19_keras", "--freeze", "5", "--json"]));
    assert_eq!(i["total_params"], 143_667_240u64, "{i}");
}
