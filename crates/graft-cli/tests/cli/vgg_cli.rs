//! VGG and AlexNet through the CLI. The seed's Keras recipe as one command: VGG without its top (`include_top=False`), then
//! Flatten → Dense 1024 → Dropout 0.5 → Dense 1024 → softmax, the first 5 layers frozen:
//! `graft fit --arch vgg11 --weights FILE --head-pool flatten --head mlp:1024,1024 --dropout 0.5
//! --freeze 5`, on seeded torchvision-named weights written by `graft::zoo::seeded` (VGG-11
//! rather than the seed's VGG-19 to keep the test short; the layer counting is the same). And
//! `graft inspect --arch` with torchvision's layer names and parameter counts.

use std::path::Path;

use graft::zoo::{seeded, ModelSpec};

use super::fit::fmnist;
use serde_json::json;

use super::{graft, graft_in, isolated_home, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_seeds_vgg_recipe_is_one_fit_command() {
    // The seeded VGG-11 weights are built in this process: keep them out of the test binary.
    if !super::in_child_process("cli::vgg_cli::the_seeds_vgg_recipe_is_one_fit_command") {
        return;
    }
    let dir = scratch("vgg-recipe");
    let home = isolated_home("vgg-recipe");
    let data = fmnist(&dir, 2, 17); // 3 classes × 2 images
    let config = ModelSpec::find("vgg11").unwrap().config();
    let weights = dir.join("vgg11-seeded.safetensors");
    let dict = seeded::state_dict(&config.table());
    graft_weights::save_safetensors(&weights, &dict).unwrap();

    let run = dir.join("run");
    let v = json_of(&graft_in(&home, &[
        "fit", "--arch", "vgg11", "--weights", s(&weights), "--head-pool", "flatten", "--head", "mlp:1024,1024",
        "--dropout", "0.5", "--freeze", "5", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--batch-size", "6",
        "--val-split", "0", "--json",
    ]));
    assert_eq!(v["epochs"], 1, "{v}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!((&manifest["model"], &manifest["head"], &manifest["head_pool"], &manifest["dropout"]), (&json!("vgg11"), &json!("mlp:1024,1024"), &json!("flatten"), &json!(0.5)), "{manifest}");
    assert_eq!(manifest["preprocess"]["crop"], json!({"resize-centre": {"shorter": 256}}), "torchvision's resize 256, crop 224");
    assert_eq!(manifest["preprocess"]["size"], 224);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("freeze = \"5\""), "{config}");

    // The head: Flatten (512 · 7 · 7 = 25088) → 1024 → 1024 → 3 classes.
    let last = graft_weights::load(&run.join("last.safetensors")).unwrap();
    let shape = |name: &str| last.tensors.get(name).unwrap_or_else(|| panic!("run checkpoint lacks {name}")).shape.clone();
    assert_eq!(shape("head.layers.0.weight"), vec![25088, 1024]);
    assert_eq!(shape("head.layers.1.weight"), vec![1024, 1024]);
    assert_eq!(shape("head.layers.2.weight"), vec![1024, 3]);
    assert!(!last.tensors.keys().any(|k| k.contains("classifier")), "the ImageNet classifier was cut off");

    // `--freeze 5` = input, features.0, features.2 (pool), features.3, features.5 (pool), as
    // Keras counts `model.layers[:5]`: the first two convolutions keep the file's values, the
    // third trained.
    let same = |burn: &str, file: &str| last.tensors[burn].data == dict.tensors[file].data;
    assert!(same("trunk.convs.0.weight", "features.0.weight") && same("trunk.convs.0.bias", "features.0.bias"), "features.0 moved although frozen");
    assert!(same("trunk.convs.1.weight", "features.3.weight"), "features.3 moved although frozen");
    assert!(!same("trunk.convs.2.weight", "features.6.weight"), "features.6 did not train");

    // inspect checks the file against the architecture and counts as torchvision does.
    let i = json_of(&graft_in(&home, &["inspect", "--arch", "vgg11", "--weights", s(&weights), "--json"]));
    assert_eq!(i["total_params"], 132_863_336u64);
}

/// torchvision's names, shapes and parameter counts (`sum(p.numel() for p in
/// torchvision.models.NAME().parameters())`, torchvision 0.29.2), and the recipe's grafted model.
#[test]
fn inspect_lists_vgg_alexnet_and_convnext_as_torchvision_counts_them() {
    for (arch, params) in [("vgg19", 143_667_240u64), ("vgg19_bn", 143_678_248), ("vgg16", 138_357_544), ("alexnet", 61_100_840)] {
        let i = json_of(&graft(&["inspect", "--arch", arch, "--json"]));
        assert_eq!(i["total_params"], params, "{arch}");
        assert_eq!(i["pretrained_cfg"]["input"]["crop"], json!({"resize-centre": {"shorter": 256}}), "{arch}");
    }
    // ConvNeXt-Tiny: torchvision's count, names and its own resize (236).
    let i = json_of(&graft(&["inspect", "--arch", "convnext_tiny", "--json"]));
    assert_eq!(i["total_params"], 28_589_128u64);
    assert_eq!(i["pretrained_cfg"]["input"]["crop"], json!({"resize-centre": {"shorter": 236}}));
    let names: Vec<&str> = i["layers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"features.5.8.layer_scale") && names.contains(&"classifier.2"), "{names:?}");

    let i = json_of(&graft(&["inspect", "--arch", "vgg19", "--json"]));
    let layers = i["layers"].as_array().unwrap();
    let layer = |name: &str| layers.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no layer {name}")).clone();
    assert_eq!(layers[0]["name"], "input");
    assert_eq!((layer("features.0")["kind"].clone(), layer("features.0")["params"].clone()), (json!("Conv2d 3x3"), json!(1792)));
    assert_eq!(layer("features.36")["output_shape"], json!([512, 7, 7]));
    assert_eq!(layer("classifier.0")["params"], 25088 * 4096 + 4096);
    assert_eq!(layer("classifier.6")["output_shape"], json!([1000]));
    let stages: Vec<&str> = i["pretrained_cfg"]["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!((stages.len(), stages[0], stages[2], stages[20]), (21, "features.1", "features.4", "features.36"));

    // The seed's model: 25088 → 1024 → 1024 → 2, the first 5 layers frozen (3 convolutions).
    let i = json_of(&graft(&["inspect", "--arch", "vgg19", "--head-pool", "flatten", "--head", "mlp:1024,1024", "--classes", "2", "--freeze", "5", "--json"]));
    let frozen = 1792 + 36_928 + 73_856;
    let head = 25088 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 2 + 2;
    let trunk = 143_667_240 - (25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000);
    assert_eq!(i["frozen_params"], frozen);
    assert_eq!(i["total_params"], trunk + head);
    let layers = i["layers"].as_array().unwrap();
    let frozen_layers: Vec<&str> = layers.iter().filter(|l| l["params"].as_u64().unwrap() > 0 && l["trainable"] == false).map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(frozen_layers, ["features.0", "features.2", "features.5"]);
}

/// A Caffe Model Zoo file given to torchvision's architecture names loads into its Caffe
/// flavour (Caffe's layer names and preparation; for AlexNet Caffe's own network): seeded
/// weights under Caffe's names, written by `graft::zoo::seeded`, stand in for the Model Zoo's
/// files. `fit --arch alexnet` with CaffeNet-shaped weights trains on `bvlc_alexnet`, records it
/// in the run, and `eval` rebuilds it from the run; `inspect --arch vgg19` with a Caffe VGG19 and
/// the seed's recipe flags freezes conv1_1, conv1_2, conv2_1.
#[test]
fn caffe_files_load_through_torchvisions_arch_names() {
    if !super::in_child_process("cli::vgg_cli::caffe_files_load_through_torchvisions_arch_names") {
        return;
    }
    let dir = scratch("caffe-archs");
    let home = isolated_home("caffe-archs");
    let data = fmnist(&dir, 2, 23); // 3 classes × 2 images
    let write = |id: &str| {
        let path = dir.join(format!("{id}-seeded.safetensors"));
        graft_weights::save_safetensors(&path, &seeded::state_dict(&ModelSpec::find(id).unwrap().config().table())).unwrap();
        path
    };

    let alexnet = write("bvlc_alexnet");
    let run = dir.join("run");
    let v = json_of(&graft_in(&home, &[
        "fit", "--arch", "alexnet", "--weights", s(&alexnet), "--data", s(&data), "--out", s(&run), "--epochs", "1", "--batch-size", "6",
        "--val-split", "0", "--json",
    ]));
    assert_eq!(v["epochs"], 1, "{v}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"], "bvlc_alexnet", "{manifest}");
    assert_eq!((&manifest["preprocess"]["size"], &manifest["preprocess"]["std"]), (&json!(227), &json!([1.0, 1.0, 1.0])), "{manifest}");
    let e = json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&data), "--json"]));
    assert_eq!(e["n"], 6, "{e}");
    std::fs::remove_file(&alexnet).unwrap();

    let vgg19 = write("vgg19_caffe");
    let i = json_of(&graft_in(&home, &[
        "inspect", "--arch", "vgg19", "--weights", s(&vgg19), "--head-pool", "flatten", "--head", "mlp:1024,1024", "--classes", "2", "--freeze", "5", "--json",
    ]));
    assert_eq!(i["model"], "vgg19_caffe", "{i}");
    let frozen: Vec<&str> = i["layers"].as_array().unwrap().iter().filter(|l| l["params"].as_u64().unwrap() > 0 && l["trainable"] == false).map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(frozen, ["conv1_1", "conv1_2", "conv2_1"]);
    assert_eq!(i["frozen_params"], 1792 + 36_928 + 73_856);
}
