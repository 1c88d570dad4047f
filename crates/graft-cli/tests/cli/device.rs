//! `--device` (and `GRAFT_DEVICE`): on every command that computes, refused with one line naming
//! the setting when unknown, a list, or not built in; recorded in a run's `model.json`.

use std::process::Command;

use super::{assert_bad_input, graft, reference, test_home};

/// Every command that computes.
const COMPUTING: [&str; 10] = ["predict", "inspect", "fit", "eval", "adapt", "extract", "bench", "probe", "advise", "pretrain"];

#[test]
fn every_computing_command_takes_device_with_its_default() {
    for command in COMPUTING {
        let out = graft(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command} --help");
        assert!(help.contains("--device <DEVICE>"), "{command} has no --device:\n{help}");
        assert!(help.contains("[default: $GRAFT_DEVICE, else cpu]"), "{command} --help states no default for --device:\n{help}");
    }
}

#[test]
fn unknown_devices_and_lists_are_refused_naming_the_flag() {
    let image = reference("efficientnet-lite0/images/chelsea.png");
    let image = image.to_str().unwrap();
    let out = graft(&["predict", "--device", "metal", image]);
    assert_bad_input(&out, &["invalid --device `metal`", "expected cpu, wgpu, wgpu:N, cuda or cuda:N"]);
    let out = graft(&["predict", "--device", "wgpu:0,1", image]);
    assert_bad_input(&out, &["invalid --device `wgpu:0,1`", "runs on one device"]);
    let out = graft(&["bench", "forward", "--device", "cpu:1"]);
    assert_bad_input(&out, &["invalid --device `cpu:1`"]);
    // fit takes a list; here cuda is not built in, and the message names the feature.
    if !cfg!(feature = "cuda") {
        let out = graft(&["fit", "--device", "cuda:0,1", "--data", image]);
        assert_bad_input(&out, &["invalid --device `cuda:0`", "without the `cuda` feature"]);
    }
    let out = graft(&["fit", "--device", "wgpu:0,0", "--data", image]);
    assert_bad_input(&out, &["invalid --device `wgpu:0,0`", "named twice"]);
    let out = graft(&["fit", "--device", "wgpu:0,cuda:1", "--data", image]);
    assert_bad_input(&out, &["invalid --device `wgpu:0,cuda:1`", "one kind"]);
}

/// Without `--device`, `GRAFT_DEVICE` is read, and a bad value there names the variable.
#[test]
fn graft_device_is_the_default_and_named_when_refused() {
    let image = reference("efficientnet-lite0/images/chelsea.png");
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["predict", image.to_str().unwrap()])
        .env("GRAFT_HOME", test_home())
        .env("GRAFT_DEVICE", "tpu")
        .output()
        .unwrap();
    assert_bad_input(&out, &["invalid GRAFT_DEVICE `tpu`", "expected cpu"]);
    // The flag wins over the variable.
    let out = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["predict", "--device", "cpu", "--json", image.to_str().unwrap()])
        .env("GRAFT_HOME", test_home())
        .env("GRAFT_DEVICE", "tpu")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A GPU this binary was built without is refused naming the flag and the cargo feature; one it
/// was built with is accepted (the command then fails on its missing run, not on the device).
#[test]
fn a_device_not_built_in_names_the_feature() {
    let data = reference("efficientnet-lite0/images");
    for (value, feature, built) in [("cuda:1", "cuda", cfg!(feature = "cuda")), ("wgpu", "wgpu", cfg!(feature = "wgpu"))] {
        let out = graft(&["eval", "--device", value, "--run", "no-such-run", "--data", data.to_str().unwrap()]);
        if built {
            assert_bad_input(&out, &["no-such-run"]);
        } else {
            assert_bad_input(&out, &[&format!("invalid --device `{value}`"), &format!("without the `{feature}` feature"), &format!("--features graft-cli/{feature}")]);
        }
    }
}

/// A fine-tune on the test device (`GRAFT_TEST_DEVICE`, else the CPU): a frozen prefix run for
/// inference every batch (`--cache off`), its activations fed to the trained last blocks and
/// head, one epoch; the run records that device and has a finite, positive training loss.
#[test]
fn a_fit_trains_on_the_test_device_and_records_it() {
    let (spec, _) = super::test_device();
    let dir = super::scratch("device-fit");
    let data = super::fit::fmnist(&dir, 2, 3);
    let run = dir.join("run");
    let device = spec.to_string();
    let v = super::json_of(&graft(&[
        "fit", "--device", &device, "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--epochs", "1",
        "--freeze", "14", "--cache", "off", "--val-split", "0", "--batch-size", "6", "--json",
    ]));
    assert_eq!(v["epochs"], 1, "{v}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(manifest["device"], device.as_str());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let loss = line["train_loss"].as_f64().unwrap_or_else(|| panic!("no train_loss in {line}"));
    assert!(loss.is_finite() && loss > 0.0, "{line}");
}

/// Data-parallel fit (`--device cpu,cpu`: two replicas, each batch split 3 + 3) trains the same
/// network as one device: the combined gradient is the whole batch's, so every epoch's training
/// loss agrees to float rounding, and the kept weights too. The trunk's last blocks train
/// (frozen BatchNorm) on a frozen prefix run every batch (`--cache off`).
#[test]
fn data_parallel_fit_on_two_replicas_trains_what_one_device_trains() {
    let dir = super::scratch("device-dp");
    let data = super::fit::fmnist(&dir, 2, 3);
    let fit = |device: &str| {
        let run = dir.join(format!("run-{device}"));
        let v = super::json_of(&graft(&[
            "fit", "--device", device, "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--epochs", "3",
            "--freeze", "14", "--cache", "off", "--val-split", "0", "--batch-size", "6", "--lr", "0.01",
            // SGD: an update linear in the gradient (AdamW divides by its root mean square, so a
            // parameter whose gradient is ~0 would turn rounding into a full step).
            "--optimizer", "sgd", "--json",
        ]));
        assert_eq!(v["epochs"], 3, "{v}");
        let losses: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
            .collect();
        let weights: std::collections::BTreeMap<String, Vec<f32>> =
            graft_weights::load(&run.join("best.safetensors")).unwrap().tensors.into_iter().map(|(k, t)| (k, t.data)).collect();
        (losses, weights)
    };
    let (one, w1) = fit("cpu");
    let (two, w2) = fit("cpu,cpu");
    assert_eq!(one.len(), 3);
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "training losses differ: {one:?} vs {two:?}");
    }
    // The losses moved: the epochs trained something.
    assert!((one[0] - one[2]).abs() > 1e-3, "{one:?}");
    let mut compared = 0;
    for (name, t1) in &w1 {
        let (a, b) = (t1, &w2[name]);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-4 * scale.max(1.0), "{name}: max |Δ| {diff} (scale {scale})");
        compared += 1;
    }
    assert!(compared > 10, "{compared} tensors compared");
}
