//! Crafted weight files: each must give exit 2 and a message naming the file and the tensor
//! or global at fault.

use super::{assert_bad_input, graft, lite0_weights, reference, scratch};

fn chelsea() -> String {
    reference("efficientnet-lite0/images/chelsea.png").display().to_string()
}

fn predict_with(weights: &std::path::Path) -> std::process::Output {
    graft(&["predict", "--model", "efficientnet-lite0", "--weights", weights.to_str().unwrap(), &chelsea()])
}

#[test]
fn truncated_weights() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(lite0_weights()).unwrap();
    let file = dir.join("truncated.safetensors");
    std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
    assert_bad_input(&predict_with(&file), &["truncated.safetensors"]);
}

#[test]
fn missing_tensor() {
    let dir = scratch("missing");
    let mut dict = graft_weights::load(&lite0_weights()).unwrap();
    dict.tensors.remove("_blocks.3._bn1.running_var").unwrap();
    let file = dir.join("missing.safetensors");
    graft_weights::save_safetensors(&file, &dict).unwrap();
    assert_bad_input(&predict_with(&file), &["missing.safetensors", "_blocks.3._bn1.running_var", "missing"]);
}

#[test]
fn wrong_shape_tensor() {
    let dir = scratch("shape");
    let mut dict = graft_weights::load(&lite0_weights()).unwrap();
    let fc = dict.tensors.get_mut("_fc.weight").unwrap();
    fc.shape = vec![1280, 1000];
    let file = dir.join("shape.safetensors");
    graft_weights::save_safetensors(&file, &dict).unwrap();
    assert_bad_input(&predict_with(&file), &["shape.safetensors", "_fc.weight", "[1000, 1280]"]);
}

#[test]
fn pickle_with_forbidden_global() {
    // A legacy torch file whose state dict is `os.system("touch PWNED")`.
    let dir = scratch("pickle");
    let marker = dir.join("PWNED");
    let mut bytes = Vec::new();
    // magic number, protocol version, sys info: the legacy header pickles
    bytes.extend_from_slice(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.");
    bytes.extend_from_slice(b"\x80\x02M\xe9\x03.");
    bytes.extend_from_slice(b"\x80\x02}q\x00.");
    let cmd = format!("touch {}", marker.display());
    bytes.extend_from_slice(b"\x80\x02cos\nsystem\nq\x00X");
    bytes.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    bytes.extend_from_slice(cmd.as_bytes());
    bytes.extend_from_slice(b"q\x01\x85q\x02Rq\x03.");
    let file = dir.join("evil.pth");
    std::fs::write(&file, &bytes).unwrap();
    assert_bad_input(&predict_with(&file), &["evil.pth", "os.system"]);
    assert!(!marker.exists(), "the pickle's payload ran");
}
