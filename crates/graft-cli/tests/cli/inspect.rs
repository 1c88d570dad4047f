use super::{assert_bad_input, graft, json_of};

#[test]
fn lite0_parameter_count_matches_the_checkpoint() {
    let v = json_of(&graft(&["inspect", "efficientnet-lite0", "--json"]));
    assert_eq!(v["total_params"], 4652008);
    assert_eq!(v["trainable_params"], 4652008);
    assert_eq!(v["frozen_params"], 0);
    let layers = v["layers"].as_array().unwrap();
    let head = layers.iter().find(|l| l["name"] == "_conv_head").unwrap();
    assert_eq!(head["output_shape"], serde_json::json!([1280, 7, 7]));
    let dw = layers.iter().find(|l| l["name"] == "_blocks.12._depthwise_conv").unwrap();
    assert_eq!(dw["params"], 1152 * 25);
}

#[test]
fn freeze_specs_select_the_expected_layers() {
    let all = json_of(&graft(&["inspect", "efficientnet-lite0", "--freeze", "all", "--json"]));
    // Only the classifier stays trainable.
    assert_eq!(all["trainable_params"], 1280 * 1000 + 1000);

    let until = json_of(&graft(&["inspect", "efficientnet-lite0", "--freeze", "until:_blocks.12", "--json"]));
    let n13 = json_of(&graft(&["inspect", "efficientnet-lite0", "--freeze", "13", "--json"]));
    assert_eq!(until["frozen_params"], n13["frozen_params"], "until:_blocks.12 == stem + first 13 blocks");
    let layers = until["layers"].as_array().unwrap();
    let state = |name: &str| layers.iter().find(|l| l["name"] == name).unwrap()["trainable"].as_bool().unwrap();
    assert!(!state("_blocks.12._project_conv"));
    assert!(state("_blocks.13._expand_conv"));

    let bn = json_of(&graft(&["inspect", "efficientnet-lite0", "--freeze", r"regex:_bn\d\.(weight|bias)$", "--json"]));
    let frozen = bn["frozen_params"].as_u64().unwrap();
    // Every BatchNorm scale and shift: 2 × (sum of BN channels); nothing else.
    let bn_channels: u64 = bn["layers"].as_array().unwrap().iter()
        .filter(|l| l["kind"] == "BatchNorm2d").map(|l| l["params"].as_u64().unwrap()).sum();
    assert_eq!(frozen, bn_channels);
}

#[test]
fn bad_specs_and_models_exit_2() {
    assert_bad_input(&graft(&["inspect", "efficientnet-lite0", "--freeze", "until:_blocks.99"]), &["--freeze", "_blocks.99"]);
    assert_bad_input(&graft(&["inspect", "efficientnet-lite0", "--freeze", "regex:("]), &["--freeze"]);
    assert_bad_input(&graft(&["inspect", "efficientnet-lite0", "--freeze", "17"]), &["16 blocks"]);
    assert_bad_input(&graft(&["inspect", "resnet-9000"]), &["unknown model", "resnet-9000"]);
}
