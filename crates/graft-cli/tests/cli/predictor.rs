//! One run format and one predictor: every kind of run (image fit with a neural or a classic
//! head, text fit, adapt on digits and on texts, an MLP fit after `pretrain`) is read by `eval`,
//! `predict` and `inspect --run` through its `model.json`, which says its `kind`; runs written
//! before the format (no `kind`, `mlp.json`) still load, and a bad `kind` is named.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::fit::fmnist;
use super::{assert_bad_input, graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

use super::transfer::import;

/// The image files below a class folder, sorted.
fn files_below(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for class in std::fs::read_dir(folder).unwrap() {
        for file in std::fs::read_dir(class.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files.sort();
    files
}

/// `eval --json` on `data` (with `extra` flags) reads `run`, reports its `kind` and scores `n`
/// inputs; the confusion matrix counts each once.
fn eval_reads(run: &Path, data: &str, extra: &[&str], kind: &str, n: u64) -> Value {
    let mut args = vec!["eval", "--run", s(run), "--data", data, "--json"];
    args.extend_from_slice(extra);
    let e = json_of(&graft(&args));
    assert_eq!(e["kind"], kind, "eval of {}: {e}", run.display());
    assert_eq!(e["n"], n, "{e}");
    let counted: u64 = e["confusion"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|c| c.as_u64().unwrap()).sum();
    assert_eq!(counted, n);
    let accuracy = e["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy), "{e}");
    e
}

/// `predict --json` with `inputs` reads `run`, reports its `kind` and ranks the run's classes
/// for each of the `n` inputs.
fn predict_reads(run: &Path, inputs: &[&str], kind: &str, n: usize) -> Value {
    let mut args = vec!["predict", "--run", s(run), "--top", "2", "--json"];
    args.extend_from_slice(inputs);
    let p = json_of(&graft(&args));
    assert_eq!(p["kind"], kind, "predict with {}: {p}", run.display());
    let predictions = p["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), n, "{p}");
    for prediction in predictions {
        let top = prediction["top"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{prediction}");
        assert!(top[0]["prob"].as_f64().unwrap() >= top[1]["prob"].as_f64().unwrap(), "{prediction}");
    }
    p
}

/// `inspect --run` names the kind and shows the run's description with its format.
fn inspect_reads(run: &Path, described: &str, kind: &str) -> Value {
    let v = json_of(&graft(&["inspect", "--run", s(run), "--json"]));
    assert_eq!(v["kind"], described, "{v}");
    assert_eq!(v["model"]["kind"], kind, "{v}");
    v
}

#[test]
fn image_runs_with_neural_and_classic_heads_old_and_bad_manifests() {
    let dir = scratch("predictor-image");
    let train = fmnist(&dir.join("train"), 4, 1);
    let test = fmnist(&dir.join("test"), 3, 2);
    let files = files_below(&test);
    let one = s(&files[0]);
    for (name, head) in [("neural", "linear"), ("classic", "prototype")] {
        let run = dir.join(name);
        json_of(&graft(&["fit", "--data", s(&train), "--out", s(&run), "--head", head, "--epochs", "1", "--val-split", "0", "--json"]));
        let manifest = read_json(&run.join("model.json"));
        assert_eq!((manifest["format"].as_u64(), manifest["kind"].as_str()), (Some(2), Some("image")), "{manifest}");
        eval_reads(&run, s(&test), &[], "image", 9);
        predict_reads(&run, &[one, s(&test.join("Bag"))], "image", 4);
        inspect_reads(&run, "image classifier (graft fit)", "image");
    }
    assert!(dir.join("classic/classic.safetensors").is_file(), "the classic head is a classic one");

    // A run from before the format: no `kind`, no `format`. It evaluates as before.
    let neural = dir.join("neural");
    let now = eval_reads(&neural, s(&test), &[], "image", 9);
    let old = dir.join("old");
    std::fs::create_dir_all(&old).unwrap();
    for entry in std::fs::read_dir(&neural).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, old.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut manifest = read_json(&old.join("model.json"));
    manifest.as_object_mut().unwrap().retain(|k, _| k != "kind" && k != "format");
    std::fs::write(old.join("model.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let before = eval_reads(&old, s(&test), &[], "image", 9);
    assert_eq!(before["accuracy"], now["accuracy"]);
    assert_eq!(before["confusion"], now["confusion"]);

    // An unknown kind, and a missing field, are named with the file.
    manifest["kind"] = "bogus".into();
    std::fs::write(old.join("model.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    for command in [&["eval", "--run", s(&old), "--data", s(&test)][..], &["predict", "--run", s(&old), one], &["inspect", "--run", s(&old)]] {
        assert_bad_input(&graft(command), &["model.json", "unknown kind \"bogus\"", "`kind`"]);
    }
    manifest["kind"] = "image".into();
    manifest.as_object_mut().unwrap().remove("classes");
    std::fs::write(old.join("model.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert_bad_input(&graft(&["eval", "--run", s(&old), "--data", s(&test)]), &["model.json", "missing field `classes`"]);
}

#[test]
fn adapt_runs_on_digits_are_read_like_any_run() {
    let dir = scratch("predictor-adapt");
    let source = import("mnist", "train", 6, 1, &dir.join("source"));
    let target = import("usps", "train", 4, 2, &dir.join("target"));
    let test = import("usps", "test", 2, 3, &dir.join("test"));
    let run = dir.join("run");
    json_of(&graft(&[
        "adapt", "--method", "dann", "--source", s(&source), "--target", s(&target), "--out", s(&run),
        "--epochs", "1", "--iters-per-epoch", "4", "--batch-size", "16", "--seed", "3", "--json",
    ]));
    assert_eq!(read_json(&run.join("model.json"))["format"], 2);
    let e = eval_reads(&run, s(&test), &[], "adapt", 20);
    assert_eq!(e["labels"].as_array().unwrap().len(), 10);
    let files = files_below(&test);
    let p = predict_reads(&run, &[s(&files[0]), s(&files[1])], "adapt", 2);
    assert!(p["predictions"][0]["top"][0]["label"].is_string());
    inspect_reads(&run, "image adaptation (graft adapt)", "adapt");
    // Texts are not what this run reads.
    assert_bad_input(&graft(&["predict", "--run", s(&run), "--text", "a digit"]), &["--text needs a text run"]);
}

#[test]
fn an_mlp_run_is_read_like_any_run_and_a_pretrain_run_is_refused() {
    let dir = scratch("predictor-mlp");
    let unlabelled = import("mnist", "train", 5, 1, &dir.join("unlabelled"));
    let labelled = import("mnist", "train", 3, 2, &dir.join("labelled"));
    let test = import("mnist", "test", 2, 0, &dir.join("test"));
    let pre = dir.join("pre");
    json_of(&graft(&["pretrain", "--method", "autoencoder", "--data", s(&unlabelled), "--arch", "mlp:16", "--epochs", "1", "--out", s(&pre), "--json"]));
    assert_eq!(read_json(&pre.join("model.json"))["kind"], "pretrain");
    let run = dir.join("run");
    let f = json_of(&graft(&["fit", "--init", s(&pre), "--data", s(&labelled), "--val-split", "0", "--epochs", "1", "--out", s(&run), "--json"]));
    assert_eq!(f["kind"], "mlp");
    assert_eq!(read_json(&run.join("model.json"))["kind"], "mlp");
    let now = eval_reads(&run, s(&test), &[], "mlp", 20);
    let files = files_below(&test);
    predict_reads(&run, &[s(&files[0]), s(&files[5]), s(&files[9])], "mlp", 3);
    let v = inspect_reads(&run, "digit MLP (graft pretrain / fit --init)", "mlp");
    assert_eq!(v["finished"], true, "an MLP run has no summary.json: {v}");
    inspect_reads(&pre, "pretrained encoder (graft pretrain; fine-tune it with graft fit --init)", "pretrain");

    // A pretraining run holds an encoder, not a classifier.
    assert_bad_input(&graft(&["eval", "--run", s(&pre), "--data", s(&test)]), &["not a classifier", "fit --init"]);
    assert_bad_input(&graft(&["predict", "--run", s(&pre), s(&files[0])]), &["not a classifier", "fit --init"]);

    // Runs from before the format kept their description in mlp.json / pretrain.json.
    let mut manifest = read_json(&run.join("model.json"));
    manifest.as_object_mut().unwrap().remove("format");
    std::fs::write(run.join("mlp.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    std::fs::remove_file(run.join("model.json")).unwrap();
    let before = eval_reads(&run, s(&test), &[], "mlp", 20);
    assert_eq!(before["confusion"], now["confusion"]);
    let mut manifest = read_json(&pre.join("model.json"));
    manifest.as_object_mut().unwrap().retain(|k, _| k != "kind" && k != "format");
    std::fs::write(pre.join("pretrain.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    std::fs::remove_file(pre.join("model.json")).unwrap();
    let again = dir.join("again");
    let f = json_of(&graft(&["fit", "--init", s(&pre), "--data", s(&labelled), "--val-split", "0", "--epochs", "1", "--out", s(&again), "--json"]));
    assert_eq!(f["arch"], "mlp:16", "--init reads an old pretraining run's architecture");
}

#[test]
fn text_runs_from_fit_and_adapt_are_read_like_any_run() {
    super::text::minilm();
    let dir = scratch("predictor-text");
    let (sms, books, kitchen) = (dir.join("sms.csv"), dir.join("books.csv"), dir.join("kitchen.csv"));
    super::text::import_csv("sms-spam", 10, &sms);
    super::text::import_csv("amazon:books", 8, &books);
    super::text::import_csv("amazon:kitchen", 8, &kitchen);
    let fitted = dir.join("fit");
    json_of(&graft(&["fit", "--model", "minilm-l6", "--data", s(&sms), "--out", s(&fitted), "--head", "logistic", "--val-split", "0", "--json"]));
    let adapted = dir.join("adapt");
    json_of(&graft(&[
        "adapt", "--method", "coral", "--backbone", "minilm-l6", "--source", s(&books), "--target", s(&kitchen),
        "--epochs", "1", "--batch-size", "8", "--out", s(&adapted), "--json",
    ]));
    let note = dir.join("note.txt");
    std::fs::write(&note, "Call now to claim your free prize").unwrap();
    for (run, data, kind, described, n) in [
        (&fitted, &sms, "text", "text classifier (graft fit --model minilm-l6)", 20),
        (&adapted, &kitchen, "adapt", "text adaptation (graft adapt --backbone minilm-l6)", 16),
    ] {
        let e = eval_reads(run, s(data), &[], kind, n);
        assert!(e["cache"]["hits"].is_u64(), "text eval reports the embedding cache: {e}");
        let p = predict_reads(run, &[s(&note), "--text", "Works well, would buy again"], kind, 2);
        assert_eq!(p["predictions"][1]["text"], "Works well, would buy again");
        inspect_reads(run, described, kind);
        assert_eq!(read_json(&run.join("model.json"))["format"], 2);
    }
}
