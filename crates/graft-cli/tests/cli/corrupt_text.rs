//! `graft pretrain --method corrupted-text` (a word encoder that scores real sentences above
//! corrupted copies) and `graft fit --init RUN` on its run, on the tiny fixture of
//! `tests/fixtures/corrupt-text/make_fixture.py` (its own 25-token tokenizer, 200 sentences).

use std::path::{Path, PathBuf};

use super::{assert_bad_input, graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub(super) fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corrupt-text").join(name);
    assert!(path.is_file(), "fixture missing: {}", path.display());
    path
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn corrupted_text_pretrains_and_fit_init_fine_tunes_it() {
    let dir = scratch("corrupt-text");
    let (corpus, tokenizer, labelled) = (fixture("corpus.csv"), fixture("tokenizer.json"), fixture("labelled.csv"));
    let pre = dir.join("pre");
    let v = json_of(&graft(&[
        "pretrain", "--method", "corrupted-text", "--data", s(&corpus), "--tokenizer", s(&tokenizer), "--arch", "words:16,32,3", "--epochs", "8",
        "--batch-size", "32", "--lr", "0.003", "--out", s(&pre), "--json",
    ]));
    assert_eq!((v["sentences"].as_u64(), v["too_short"].as_u64(), v["epochs"].as_u64()), (Some(200), Some(0), Some(8)), "{v}");
    assert_eq!(v["vocab"], 25, "4 special tokens and 21 words");
    let (first, last) = (v["first_epoch_loss"].as_f64().unwrap(), v["last_epoch_loss"].as_f64().unwrap());
    assert!(last < first, "the hinge loss falls: {first} → {last}");
    assert!(v["last_epoch_ranked"].as_f64().unwrap() > 0.6, "real sentences mostly outscore their copies: {v}");
    assert_eq!(read_json(&pre.join("model.json"))["kind"], "text-pretrain");
    assert_eq!(std::fs::read_to_string(pre.join("metrics.jsonl")).unwrap().lines().count(), 8);
    for file in ["encoder.safetensors", "tokenizer.json", "config.toml", "last.safetensors"] {
        assert!(pre.join(file).is_file(), "{file} written");
    }
    // A finished run resumed trains nothing more, reports the same figures and keeps its
    // trained encoder (not a fresh one).
    let encoder = std::fs::read(pre.join("encoder.safetensors")).unwrap();
    let again = json_of(&graft(&["pretrain", "--resume", s(&pre), "--json"]));
    assert_eq!((&again["last_epoch_loss"], &again["epochs"]), (&v["last_epoch_loss"], &v["epochs"]));
    assert!(std::fs::read(pre.join("encoder.safetensors")).unwrap() == encoder, "the resumed finished run rewrote its encoder");

    // The encoder feeds a text classifier; --from-scratch trains the same network from random.
    let fit = |out: &Path, extra: &[&str]| {
        let mut args = vec!["fit", "--init", s(&pre), "--data", s(&labelled), "--val-split", "0.25", "--epochs", "3", "--out", s(out), "--json"];
        args.extend(extra);
        json_of(&graft(&args))
    };
    let tuned = fit(&dir.join("tuned"), &[]);
    assert_eq!((tuned["kind"].as_str(), tuned["arch"].as_str()), (Some("words"), Some("words:16,32,3")), "{tuned}");
    assert_eq!((tuned["n_train"].as_u64(), tuned["n_val"].as_u64()), (Some(30), Some(10)));
    assert_eq!(tuned["classes"], serde_json::json!(["animal", "machine"]));
    assert!(tuned["last_val_accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{tuned}");
    assert_eq!(read_json(&dir.join("tuned/model.json"))["kind"], "words");
    let random = fit(&dir.join("random"), &["--from-scratch"]);
    assert_eq!(random["config"]["from_scratch"], true);
    // The pretrained start differs from the random one: the first epoch's loss is not the same.
    let loss = |run: &str| -> f64 {
        let line = std::fs::read_to_string(dir.join(run).join("metrics.jsonl")).unwrap();
        serde_json::from_str::<serde_json::Value>(line.lines().next().unwrap()).unwrap()["train_loss"].as_f64().unwrap()
    };
    assert_ne!(loss("tuned"), loss("random"));
    // --freeze all trains the classifier alone: the encoder stays the pretrained one, bit for bit.
    fit(&dir.join("frozen"), &["--freeze", "all"]);
    let tensors = |path: &Path| graft_weights::load(path).unwrap().tensors;
    let (frozen, pretrained) = (tensors(&dir.join("frozen/best.safetensors")), tensors(&pre.join("encoder.safetensors")));
    for name in ["embed.weight", "conv.weight", "conv.bias"] {
        assert_eq!(frozen[&format!("encoder.{name}")].data, pretrained[name].data, "{name}");
    }
    let tuned_weights = tensors(&dir.join("tuned/best.safetensors"));
    assert_ne!(tuned_weights["encoder.conv.weight"].data, pretrained["conv.weight"].data, "without --freeze the encoder trains");
    // eval and predict read the run like any text run. On the whole labelled file (the 30
    // training and 10 validation texts) eval counts what the kept epoch got right on each part.
    let eval = json_of(&graft(&["eval", "--run", s(&dir.join("tuned")), "--data", s(&labelled), "--json"]));
    assert_eq!((eval["kind"].as_str(), eval["n"].as_u64()), (Some("words"), Some(40)), "{eval}");
    let parts = tuned["train_accuracy"].as_f64().unwrap() * 30.0 + tuned["best_val_accuracy"].as_f64().unwrap() * 10.0;
    assert!((eval["accuracy"].as_f64().unwrap() * 40.0 - parts).abs() < 1e-6, "eval {eval} vs fit {tuned}");
    let p = json_of(&graft(&["predict", "--run", s(&dir.join("tuned")), "--text", "the big dog likes a cat .", "--text", "a robot hears the car .", "--top", "2", "--json"]));
    let predictions = p["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2, "{p}");
    let probs: f64 = predictions[0]["top"].as_array().unwrap().iter().map(|t| t["prob"].as_f64().unwrap()).sum();
    assert!((probs - 1.0).abs() < 1e-4, "two classes' probabilities sum to 1: {p}");
}

#[test]
fn corrupted_text_refuses_what_does_not_apply() {
    let dir = scratch("corrupt-text-bad");
    let (corpus, tokenizer) = (fixture("corpus.csv"), fixture("tokenizer.json"));
    let x = dir.join("x");
    let base = |extra: &[&str]| {
        let mut args = vec!["pretrain", "--method", "corrupted-text", "--data", s(&corpus), "--tokenizer", s(&tokenizer)];
        args.extend(extra);
        args.extend(["--out", s(&x)]);
        graft(&args)
    };
    assert_bad_input(&base(&["--noise", "0.2"]), &["--noise", "image methods"]);
    assert_bad_input(&base(&["--arch", "mlp:16"]), &["--arch", "words:E,W,K"]);
    assert_bad_input(&base(&["--corruption", "shuffle"]), &["--corruption", "replace, swap or both"]);
    assert_bad_input(&base(&["--max-tokens", "2"]), &["--max-tokens"]);
    assert!(!x.exists(), "a refused start leaves no run behind");
    // The text-only flags are refused by the image methods.
    assert_bad_input(&graft(&["pretrain", "--method", "autoencoder", "--data", s(&dir), "--corruption", "swap", "--out", s(&dir.join("y"))]), &["--corruption"]);
    // A corpus without sentences of two words is named.
    let short = dir.join("short.csv");
    std::fs::write(&short, "text\ncat\ndog\n").unwrap();
    assert_bad_input(&graft(&["pretrain", "--method", "corrupted-text", "--data", s(&short), "--tokenizer", s(&tokenizer), "--out", s(&dir.join("z"))]), &["short.csv", "two word tokens"]);
}
