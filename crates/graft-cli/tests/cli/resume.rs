//! Resume after `kill -9` through the one training engine: `graft adapt` (DANN; ADDA with its two
//! phases) and `graft pretrain` continue from their last completed epoch and end exactly where
//! an uninterrupted run of the same seed ends — the same metrics line for every epoch, the same
//! kept weights, the same final figures.

use std::path::Path;
use std::time::Duration;

use super::{graft, json_of, scratch, shared, test_home};


fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every `metrics.jsonl` line of `run`, without its wall time.
fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// The tensors of a checkpoint, by name.
fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    graft_weights::load(path).unwrap().tensors.into_iter().map(|(k, t)| (k, t.data)).collect()
}

/// Starts `graft args`, SIGKILLs it as soon as `epochs` epochs are on disk (polled every 10 ms,
/// so the kill lands early in the next epoch whatever the machine's speed) and returns how many
/// epochs the run had completed by then.
fn kill_after_epochs(args: &[&str], metrics: &Path, epochs: usize) -> usize {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_HOME", test_home())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let done = || std::fs::read_to_string(metrics).map(|m| m.lines().count()).unwrap_or(0);
    for _ in 0..12_000 {
        if done() >= epochs || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    done()
}

/// Runs `args` (which write `run`) to the end; runs them again into `killed`, SIGKILLs that run
/// once `kill_after` epochs are on disk and resumes it with `resume` (`graft CMD --resume`).
/// Returns the two runs' JSON summaries after checking that the kill interrupted training.
fn uninterrupted_and_resumed(args: &dyn Fn(&Path) -> Vec<String>, run: &Path, killed: &Path, resume: &str, epochs: usize, kill_after: usize) -> (serde_json::Value, serde_json::Value) {
    let full: Vec<String> = args(run);
    let full = json_of(&graft(&full.iter().map(String::as_str).collect::<Vec<_>>()));
    let interrupted: Vec<String> = args(killed);
    let interrupted: Vec<&str> = interrupted.iter().map(String::as_str).collect();
    let before = kill_after_epochs(&interrupted, &killed.join("metrics.jsonl"), kill_after);
    assert!((1..epochs).contains(&before), "the kill landed after {before} of {epochs} epochs");
    let resumed = json_of(&graft(&[resume, "--resume", s(killed), "--json"]));
    assert_eq!(resumed["epochs"].as_u64(), Some(epochs as u64), "the summary counts every epoch: {resumed}");
    assert_eq!(records(killed), records(run), "the resumed run's epochs match the uninterrupted run's");
    let leftovers: Vec<String> = std::fs::read_dir(killed).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.contains(".tmp") || n.contains(".repair")).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    (full, resumed)
}

fn adapt_args(method: &str, source: &Path, extra: &'static [&'static str]) -> impl Fn(&Path) -> Vec<String> {
    let source = source.to_path_buf();
    let method = method.to_string();
    move |out: &Path| {
        let mut args: Vec<String> = [
            "adapt", "--method", &method, "--source", s(&source), "--target", "usps:train", "--target-test", "usps:test",
            "--data-root", s(&shared().join("data")), "--iters-per-epoch", "20", "--seed", "3", "--out", s(out), "--json",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }
}

#[test]
fn dann_resumes_after_kill_with_the_same_result() {
    let dir = scratch("resume-dann");
    let source = super::adapt::mnist_folder(&dir, 20, 1);
    let (full, resumed) = uninterrupted_and_resumed(&adapt_args("dann", &source, &["--epochs", "5"]), &dir.join("full"), &dir.join("killed"), "adapt", 5, 2);
    for key in ["target_test_accuracy", "source_val_accuracy", "best_epoch", "iterations"] {
        assert_eq!(resumed[key], full[key], "{key}");
    }
    assert_eq!(tensors(&dir.join("killed/best.safetensors")), tensors(&dir.join("full/best.safetensors")));
}

#[test]
fn adda_resumes_in_either_phase_with_the_same_result() {
    let dir = scratch("resume-adda");
    let source = super::adapt::mnist_folder(&dir, 20, 1);
    let args = adapt_args("adda", &source, &["--pretrain-epochs", "3", "--epochs", "3"]);
    let (full, _) = uninterrupted_and_resumed(&args, &dir.join("full"), &dir.join("killed-pre"), "adapt", 6, 1);
    // A second kill lands in the adversarial phase (after the source encoder is kept).
    let interrupted: Vec<String> = args(&dir.join("killed-adv"));
    let interrupted: Vec<&str> = interrupted.iter().map(String::as_str).collect();
    let before = kill_after_epochs(&interrupted, &dir.join("killed-adv/metrics.jsonl"), 4);
    let resumed = json_of(&graft(&["adapt", "--resume", s(&dir.join("killed-adv")), "--json"]));
    assert!((4..6).contains(&before), "the second kill landed after {before} epochs, not in the adversarial phase");
    assert_eq!(resumed["epochs"], 6);
    for run in ["killed-pre", "killed-adv"] {
        assert_eq!(records(&dir.join(run)), records(&dir.join("full")), "{run}: epochs match the uninterrupted run");
        assert_eq!(tensors(&dir.join(run).join("best.safetensors")), tensors(&dir.join("full/best.safetensors")), "{run}: the kept network");
    }
    assert_eq!(resumed["target_test_accuracy"], full["target_test_accuracy"]);
    assert_eq!(resumed["source_val_accuracy"], full["source_val_accuracy"]);
}

#[test]
fn pretrain_resumes_after_kill_with_the_same_encoder() {
    let dir = scratch("resume-pretrain");
    let data = dir.join("digits");
    json_of(&graft(&["data", "import", "mnist", "--per-class", "200", "--seed", "1", "--source", s(&shared().join("data")), "--out", s(&data), "--json"]));
    let args = |out: &Path| -> Vec<String> {
        ["pretrain", "--method", "autoencoder", "--data", s(&data), "--arch", "mlp:1000,500", "--epochs", "3", "--batch-size", "32", "--noise", "0.2", "--seed", "4", "--out", s(out), "--json"]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    let (full, resumed) = uninterrupted_and_resumed(&args, &dir.join("full"), &dir.join("killed"), "pretrain", 6, 4);
    assert_eq!(resumed["layers"], full["layers"], "first and last reconstruction error of every layer");
    assert_eq!(tensors(&dir.join("killed/encoder.safetensors")), tensors(&dir.join("full/encoder.safetensors")));
}

/// SimCLR on a pretrained trunk's top (Lite0's last block and head convolution on cached views).
#[test]
fn trunk_pretraining_resumes_after_kill_with_the_same_trunk() {
    let dir = scratch("resume-pretrain-trunk");
    let data = super::transfer::import("fashion-mnist", "train", 2, 3, &dir.join("images"));
    let args = |out: &Path| -> Vec<String> {
        [
            "pretrain", "--method", "contrastive", "--model", "efficientnet-lite0", "--data", s(&data), "--epochs", "3", "--batch-size", "5",
            "--cache-views", "2", "--lr", "0.001", "--seed", "5", "--out", s(out), "--json",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let (full, resumed) = uninterrupted_and_resumed(&args, &dir.join("full"), &dir.join("killed"), "pretrain", 3, 1);
    assert_eq!((resumed["first_epoch_loss"].clone(), resumed["last_epoch_loss"].clone()), (full["first_epoch_loss"].clone(), full["last_epoch_loss"].clone()));
    assert_eq!(tensors(&dir.join("killed/trunk.safetensors")), tensors(&dir.join("full/trunk.safetensors")));
}

#[test]
fn corrupted_text_pretraining_resumes_after_kill_with_the_same_encoder() {
    let dir = scratch("resume-corrupt-text");
    let (corpus, tokenizer) = (super::corrupt_text::fixture("corpus.csv"), super::corrupt_text::fixture("tokenizer.json"));
    let args = |out: &Path| -> Vec<String> {
        [
            "pretrain", "--method", "corrupted-text", "--data", s(&corpus), "--tokenizer", s(&tokenizer), "--arch", "words:32,64,3", "--epochs", "30",
            "--batch-size", "16", "--seed", "2", "--out", s(out), "--json",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let (full, resumed) = uninterrupted_and_resumed(&args, &dir.join("full"), &dir.join("killed"), "pretrain", 30, 3);
    for key in ["first_epoch_loss", "last_epoch_loss", "last_epoch_ranked"] {
        assert_eq!(resumed[key], full[key], "{key}");
    }
    assert_eq!(tensors(&dir.join("killed/encoder.safetensors")), tensors(&dir.join("full/encoder.safetensors")));
}
