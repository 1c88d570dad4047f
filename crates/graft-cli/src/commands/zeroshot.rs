//! Zero-shot text classification from label descriptions ([`graft::text::zeroshot`]):
//! `graft eval --zero-shot --labels-file FILE --data test.csv` and
//! `graft predict --model minilm-l6 --labels "a,b" --text …`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use graft::text::features::{open_store, EmbedStats};
use graft::text::zeroshot::{self, LabelDescription, ZeroShot};
use graft::text::{SentenceEncoder, TextDataset};
use graft::zoo::graft_home;
use serde_json::{json, Value};

use crate::output::Output;
use crate::reporter::TermReporter;

/// The zero-shot flags of `graft eval`.
#[derive(Debug, clap::Args)]
pub struct ZeroShotArgs {
    /// Zero-shot text classification instead of a run: each text of --data goes to the class
    /// whose description (from --labels-file, put in each --template) is most similar to it
    /// (cosine similarity of mean-pooled, L2-normalised --model embeddings); no labelled example
    /// is used. [default: off]
    #[arg(long, requires = "labels_file", conflicts_with = "run")]
    pub zero_shot: bool,
    /// The classes for --zero-shot, one a line: `NAME: description` (NAME as the labels of
    /// --data spell it, then the text to embed), or a description that is also the class name;
    /// blank lines and lines starting with # are skipped. [default: none]
    #[arg(long, value_name = "FILE", requires = "zero_shot")]
    pub labels_file: Option<PathBuf>,
    /// A prompt template for --zero-shot: `{}` marks where a label description goes, e.g.
    /// "This is a {}."; repeat it to average each class's embedding over several templates.
    /// [default: {} (the bare description)]
    #[arg(long, value_name = "TEMPLATE", requires = "zero_shot")]
    pub template: Vec<String>,
}

/// The text encoder of a zero-shot classification, with its cache.
fn encoder(model: &str, home: &Path, reporter: &TermReporter, device: &Device) -> anyhow::Result<SentenceEncoder> {
    anyhow::ensure!(graft::text::is_text_model(model), "zero-shot classification needs a text encoder: --model {model} is not one (use --model minilm-l6)");
    Ok(SentenceEncoder::load(model, None, home, reporter, device)?)
}

/// A zero-shot evaluation, for `eval` to print: the scores, the unreadable inputs, what was
/// embedded (for `--json`) and the embedding cache's hits and misses.
pub struct Evaluated {
    pub evaluation: graft::train::run::Evaluation,
    pub skipped: Vec<graft::data::folder::Skipped>,
    pub extra: Value,
    pub cache: EmbedStats,
}

/// `graft eval --zero-shot`: zero-shot classification of the labelled texts of `data`.
pub fn eval(args: ZeroShotArgs, model: Option<String>, data: &Path, device: &Device) -> anyhow::Result<Evaluated> {
    // Every flag is used below: a new one fails to compile until it is.
    let ZeroShotArgs { zero_shot: _, labels_file, template } = args;
    let labels_file = labels_file.ok_or_else(|| anyhow::anyhow!("--zero-shot needs --labels-file"))?;
    let labels = zeroshot::read_labels_file(&labels_file)?;
    let model = model.unwrap_or_else(|| graft::text::pull::MINILM_ID.into());
    let set = TextDataset::open_any(data)?;
    // Each class of the data must be one of the described classes.
    let mut to_label = Vec::with_capacity(set.classes.len());
    for class in &set.classes {
        let Some(i) = labels.iter().position(|l| &l.name == class) else {
            let names: Vec<String> = labels.iter().map(|l| format!("`{}`", l.name)).collect();
            anyhow::bail!("{}: the data's class `{class}` has no description in {} (it describes {})", data.display(), labels_file.display(), names.join(", "));
        };
        to_label.push(i);
    }
    let home = graft_home();
    let reporter = TermReporter::new();
    let encoder = encoder(&model, &home, &reporter, device)?;
    let mut store = open_store(&home, &model, &encoder, graft::cache::StoreDtype::F32, &reporter)?;
    let mut cache = EmbedStats::default();
    let classifier = ZeroShot::new(&encoder, &labels, &template, Some(&mut store), &reporter, &mut cache)?;
    let similarities = classifier.classify(&encoder, &set.texts.to_vec()?, Some(&mut store), &reporter, &mut cache)?;
    let truth: Vec<usize> = set.labels.iter().map(|&l| to_label[l]).collect();
    let evaluation = graft::train::run::Evaluation::from_predictions(&classifier.classes, &truth, &zeroshot::argmax(&similarities));
    let extra = json!({
        "model": model,
        "labels_file": labels_file,
        "templates": templates_shown(&template),
        "prompts": classifier.classes.iter().zip(&classifier.prompts).map(|(c, p)| json!({"class": c, "embedded": p})).collect::<Vec<_>>(),
    });
    Ok(Evaluated { evaluation, skipped: set.skipped, extra, cache })
}

/// The templates as used: the bare one when none was given.
fn templates_shown(template: &[String]) -> Vec<String> {
    if template.is_empty() {
        vec![zeroshot::BARE_TEMPLATE.to_string()]
    } else {
        template.to_vec()
    }
}

/// `graft predict --model minilm-l6 --labels "a,b" --text …`: the most similar classes of each
/// text (given with --text, or read from `.txt` files).
#[allow(clippy::too_many_arguments)]
pub fn predict(model: &str, labels: &str, template: &[String], texts: &[String], files: &[PathBuf], top: usize, device: &Device, out: &Output) -> anyhow::Result<()> {
    let labels: Vec<LabelDescription> = zeroshot::parse_labels(labels)?;
    let home = graft_home();
    let reporter = TermReporter::new();
    let (read, skipped) = graft::train::text::read_text_files(files);
    for s in &skipped {
        eprintln!("skipping {}: {}", s.path.display(), s.reason);
    }
    let mut inputs: Vec<(Value, String)> = read.into_iter().map(|(p, t)| (json!({"file": p}), t)).collect();
    inputs.extend(texts.iter().map(|t| (json!({"text": t}), t.clone())));
    anyhow::ensure!(!inputs.is_empty(), "nothing to classify: give --text TEXT or .txt files");
    let encoder = encoder(model, &home, &reporter, device)?;
    let mut store = open_store(&home, model, &encoder, graft::cache::StoreDtype::F32, &reporter)?;
    let mut stats = EmbedStats::default();
    let classifier = ZeroShot::new(&encoder, &labels, template, Some(&mut store), &reporter, &mut stats)?;
    let rows: Vec<&str> = inputs.iter().map(|(_, t)| t.as_str()).collect();
    let similarities = classifier.classify(&encoder, &rows, Some(&mut store), &reporter, &mut stats)?;
    let mut predictions = Vec::new();
    for ((source, _), row) in inputs.iter().zip(&similarities) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut p = source.clone();
        p["top"] = json!(order.iter().take(top).map(|&c| json!({"class": c, "label": classifier.classes[c], "similarity": row[c]})).collect::<Vec<_>>());
        predictions.push(p);
    }
    let skipped: Vec<Value> = skipped.iter().map(|s| json!({"file": s.path, "reason": s.reason})).collect();
    let value = json!({
        "model": model,
        "kind": "zero-shot",
        "templates": templates_shown(template),
        "prompts": classifier.classes.iter().zip(&classifier.prompts).map(|(c, p)| json!({"class": c, "embedded": p})).collect::<Vec<_>>(),
        "predictions": predictions,
        "skipped": skipped,
    });
    out.result(&value, || {
        let mut t = String::new();
        for p in &predictions {
            let name = p["file"].as_str().map(String::from).unwrap_or_else(|| graft::predictor::text_excerpt(p["text"].as_str().unwrap_or("?")));
            t.push_str(&format!("{name}\n"));
            for c in p["top"].as_array().into_iter().flatten() {
                t.push_str(&format!("  {:>7.4}  {}\n", c["similarity"].as_f64().unwrap_or(0.0), c["label"].as_str().unwrap_or("?")));
            }
        }
        t.push_str("(cosine similarity of each text with each label description)\n");
        t
    });
    Ok(())
}
