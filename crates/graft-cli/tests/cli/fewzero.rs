//! `graft eval --episodes` (few-shot episodes on a backbone's or a run's features) and zero-shot
//! text classification (`graft predict --labels`, `graft eval --zero-shot`).

use std::path::{Path, PathBuf};

use super::{assert_bad_input, graft, graft_in, isolated_home, json_of, scratch, shared};

/// A seeded Fashion-MNIST test subset of `per_class` images per class (10 classes).
fn fashion_subset(name: &str, per_class: usize) -> PathBuf {
    let dir = scratch(name).join("data");
    let source = shared().join("data/fashion-mnist");
    let v = json_of(&graft(&["data", "import", "fashion-mnist", "--split", "test", "--per-class", &per_class.to_string(), "--source", source.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--json"]));
    assert_eq!(v["images"].as_u64(), Some(10 * per_class as u64), "{v}");
    dir
}

fn score<'a>(v: &'a serde_json::Value, classifier: &str) -> &'a serde_json::Value {
    v["classifiers"].as_array().unwrap().iter().find(|c| c["classifier"] == classifier).unwrap_or_else(|| panic!("no {classifier} in {v}"))
}

/// Episodes straight on Lite0's pooled features: every image goes through the trunk once, a
/// second evaluation reads the feature cache only and scores the same episodes; a frozen run's
/// trunk shares those cache entries.
#[test]
fn episodes_on_a_backbone_and_a_run_share_the_feature_cache() {
    let data = fashion_subset("fewshot-backbone", 8);
    let d = data.to_str().unwrap();
    let home = isolated_home("fewshot");
    let args = ["eval", "--episodes", "40", "--way", "3", "--shot", "2", "--query", "4", "--model", "efficientnet-lite0", "--data", d, "--json"];
    let first = json_of(&graft_in(&home, &args));
    assert_eq!(first["kind"], "few-shot");
    assert_eq!((first["images"].as_u64(), first["classes"].as_u64(), first["dim"].as_u64()), (Some(80), Some(10), Some(1280)), "{first}");
    assert_eq!(first["trunk_images"].as_u64(), Some(80), "{first}");
    for c in ["prototype", "1nn", "logistic"] {
        let s = score(&first, c);
        assert_eq!(s["episodes"].as_u64(), Some(40));
        let (mean, ci, std) = (s["mean"].as_f64().unwrap(), s["ci95"].as_f64().unwrap(), s["std"].as_f64().unwrap());
        // Lite0 features tell Fashion-MNIST classes apart far above chance (1/3).
        assert!(mean > 0.5 && mean <= 1.0, "{c}: {s}");
        assert!((ci - 1.96 * std / 40f64.sqrt()).abs() < 1e-9, "{c}: {s}");
    }
    let second = json_of(&graft_in(&home, &args));
    assert_eq!(second["trunk_images"].as_u64(), Some(0), "the second evaluation ran the trunk: {second}");
    assert_eq!(second["classifiers"], first["classifiers"], "the same seed scored other episodes");
    // Another seed draws other episodes.
    let mut other = args.to_vec();
    other.extend(["--seed", "1", "--classifier", "prototype"]);
    let other = json_of(&graft_in(&home, &other));
    assert_eq!(other["classifiers"].as_array().unwrap().len(), 1);
    assert_ne!(score(&other, "prototype"), score(&first, "prototype"), "another seed scored the same episodes");

    // A frozen-trunk run: its trunk is Lite0's, so its features come from the same entries.
    let run = data.parent().unwrap().join("run");
    json_of(&graft_in(&home, &["fit", "--data", d, "--out", run.to_str().unwrap(), "--epochs", "1", "--val-split", "0", "--json"]));
    let on_run = json_of(&graft_in(&home, &["eval", "--run", run.to_str().unwrap(), "--episodes", "40", "--way", "3", "--shot", "2", "--query", "4", "--data", d, "--json"]));
    assert_eq!(on_run["trunk_images"].as_u64(), Some(0), "{on_run}");
    assert_eq!(on_run["classifiers"], first["classifiers"]);
    assert_eq!(on_run["source"]["run"].as_str(), run.to_str());
}

/// Settings the data cannot satisfy are refused before any trunk runs, naming the flag.
#[test]
fn bad_episode_settings_name_the_flag() {
    let data = fashion_subset("fewshot-bad", 6);
    let d = data.to_str().unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--episodes", "10", "--data", d];
        args.extend_from_slice(extra);
        graft(&args)
    };
    assert_bad_input(&eval(&["--way", "11"]), &["--way", "`11`", "10 classes"]);
    assert_bad_input(&eval(&["--shot", "2", "--query", "5"]), &["--shot", "`2`", "2 + 5 = 7", "has 6"]);
    assert_bad_input(&eval(&["--way", "1"]), &["--way", "at least 2 classes"]);
    assert_bad_input(&eval(&["--query", "0"]), &["--query", "`0`"]);
    assert_bad_input(&eval(&["--classifier", "prototype,svm"]), &["--classifier", "`svm`", "1nn"]);
    assert_bad_input(&eval(&["--model", "minilm-l6"]), &["text encoder"]);
    assert_bad_input(&graft(&["eval", "--episodes", "0", "--data", d]), &["--episodes", "`0`"]);
    // The episode flags need --episodes; eval without a run needs --episodes or --zero-shot.
    assert_eq!(graft(&["eval", "--data", d, "--way", "3"]).status.code(), Some(2));
    assert_eq!(graft(&["eval", "--data", d]).status.code(), Some(2));
}

/// A labels file and a CSV of texts in a fresh folder.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The templated label is what is embedded: a text equal to one class's templated description
/// has cosine similarity 1 with it (and less with the bare description), and plain sentences go
/// to the class whose description fits.
#[test]
fn zero_shot_predict_embeds_the_templated_label() {
    super::text::minilm();
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--model", "minilm-l6", "--labels", "positive review,negative review", "--json"];
        args.extend_from_slice(extra);
        json_of(&graft(&args))
    };
    let v = predict(&["--template", "This is a {}.", "--text", "This is a negative review."]);
    assert_eq!(v["kind"], "zero-shot");
    assert_eq!(v["prompts"][0]["embedded"][0], "This is a positive review.");
    assert_eq!(v["prompts"][1]["embedded"][0], "This is a negative review.");
    let top = &v["predictions"][0]["top"];
    assert_eq!(top[0]["label"], "negative review", "{v}");
    assert!(top[0]["similarity"].as_f64().unwrap() > 0.9999, "the templated label was not the text embedded: {v}");
    // Bare labels: the same text is no longer identical to a label's embedded text.
    let bare = predict(&["--text", "This is a negative review."]);
    assert_eq!(bare["prompts"][1]["embedded"][0], "negative review");
    assert!(bare["predictions"][0]["top"][0]["similarity"].as_f64().unwrap() < 0.99, "{bare}");

    let v = predict(&["--text", "I loved this film: wonderful acting and a moving story.", "--text", "A dull, boring mess and a total waste of two hours."]);
    assert_eq!(v["predictions"][0]["top"][0]["label"], "positive review", "{v}");
    assert_eq!(v["predictions"][1]["top"][0]["label"], "negative review", "{v}");
    assert_bad_input(&graft(&["predict", "--labels", "spam,ham", "--template", "no slot", "--text", "x"]), &["--template", "`no slot`", "{}"]);
    assert_bad_input(&graft(&["predict", "--labels", "spam", "--text", "x"]), &["--labels", "at least 2 classes"]);
    assert_bad_input(&graft(&["predict", "--model", "efficientnet-lite0", "--labels", "a,b", "--text", "x"]), &["text encoder"]);
}

/// `eval --zero-shot` on a constructed CSV whose answers are known: accuracy 1, the labels
/// file maps the data's class names to descriptions, and a class it does not describe is an
/// error naming the class and the file.
#[test]
fn zero_shot_eval_on_a_constructed_set() {
    super::text::minilm();
    let dir = scratch("zero-shot-eval");
    let home = isolated_home("zero-shot-eval");
    let graft = |args: &[&str]| graft_in(&home, args);
    let labels = write(&dir, "labels.txt", "# class: description\npos: positive movie review\nneg: negative movie review\n");
    let csv = write(
        &dir,
        "test.csv",
        "text,label\n\"This is a positive movie review.\",pos\n\"This is a negative movie review.\",neg\n\"An absolute delight, beautifully acted and great fun.\",pos\n\"Terrible script, awful acting, I hated every minute.\",neg\n",
    );
    let v = json_of(&graft(&["eval", "--zero-shot", "--labels-file", &labels, "--data", &csv, "--template", "This is a {}.", "--json"]));
    assert_eq!(v["kind"], "zero-shot");
    assert_eq!(v["n"].as_u64(), Some(4));
    assert_eq!(v["accuracy"].as_f64(), Some(1.0), "{v}");
    assert_eq!(v["labels"], serde_json::json!(["pos", "neg"]));
    assert_eq!(v["prompts"][0]["embedded"][0], "This is a positive movie review.");
    assert_eq!(v["templates"], serde_json::json!(["This is a {}."]));
    // Two templates: each class embeds both.
    let two = json_of(&graft(&["eval", "--zero-shot", "--labels-file", &labels, "--data", &csv, "--template", "This is a {}.", "--template", "{}", "--json"]));
    assert_eq!(two["prompts"][1]["embedded"], serde_json::json!(["This is a negative movie review.", "negative movie review"]));
    // Only the two new prompts are embedded: the texts and the other prompts come from the cache.
    assert_eq!(v["cache"]["misses"].as_u64(), Some(4), "{v}");
    assert_eq!(two["cache"]["misses"].as_u64(), Some(2), "{two}");

    let one = write(&dir, "one.txt", "pos: positive movie review\nother: something else\n");
    assert_bad_input(&graft(&["eval", "--zero-shot", "--labels-file", &one, "--data", &csv]), &["`neg`", "one.txt"]);
    assert_bad_input(&graft(&["eval", "--zero-shot", "--labels-file", &labels, "--data", &csv, "--template", "{} {}"]), &["--template"]);
    assert_eq!(graft(&["eval", "--zero-shot", "--data", &csv]).status.code(), Some(2), "--zero-shot without --labels-file");
}
