use burn::tensor::activation::softmax;
use graft::data::image;
use burn::tensor::Device;
use graft::manifest::InputKind;
use graft::predictor::Predictor;
use graft::report::Reporter;
use graft::zoo::{graft_home, Pretrained};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::cli::PredictArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

/// How predictions are shown: the classes per input, and the `--csv` file.
struct Shown {
    top: usize,
    csv: Option<PathBuf>,
}

pub fn run(args: PredictArgs, out: &Output) -> anyhow::Result<()> {
    // Every flag is used below: a new one fails to compile until it is.
    let PredictArgs { device, model, arch, run, weights, top, batch, images, csv, text, allow_unfinished, labels, template } = args;
    if top == 0 || batch == 0 {
        anyhow::bail!("--top and --batch must be at least 1");
    }
    graft::limits::check_setting("--batch", batch, graft::limits::MAX_BATCH_SIZE, "graft::limits::MAX_BATCH_SIZE")?;
    let shown = Shown { top, csv };
    let device = device.device()?;
    if let Some(run) = &run {
        return predict_run(run, &images, &text, batch, allow_unfinished, &shown, &device, out);
    }
    // --allow-unfinished is about runs; a zoo model is always complete.
    let _ = allow_unfinished;
    if let Some(labels) = &labels {
        anyhow::ensure!(shown.csv.is_none(), "--csv is not written for zero-shot --labels (use --json)");
        let files = expand_folders(&images, true)?;
        return super::zeroshot::predict(&model, labels, &template, &text, &files, top, &device, out);
    }
    let images = expand_folders(&images, false)?;
    anyhow::ensure!(text.is_empty(), "--text needs a text run (--run from `graft fit --model minilm-l6`)");
    let spec = super::model_spec(&model, arch.as_deref())?;
    let reporter = TermReporter::new();
    let model = Pretrained::load(spec, weights.as_deref(), &graft_home(), &reporter, &device)?;
    let spec = model.spec; // the file's flavour of the architecture
    let preprocess = model.preprocess();
    let labels = spec.labels();

    // Unreadable files are skipped and reported, never fatal unless nothing is left.
    let mut inputs = Vec::new();
    let mut skipped = Vec::new();
    let mut first_error = None;
    for path in &images {
        match image::load(path, &preprocess) {
            Ok(x) => inputs.push((path, x)),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                reporter.message(&format!("skipping {e}"));
                skipped.push(json!({"file": path, "reason": e.to_string()}));
            }
        }
    }
    if inputs.is_empty() {
        anyhow::bail!("none of the {} images could be read ({})", images.len(), first_error.unwrap_or_default());
    }

    let mut predictions = Vec::new();
    let net = model.net.for_inference();
    for chunk in inputs.chunks(batch) {
        let pixels: Vec<Vec<f32>> = chunk.iter().map(|(_, x)| x.clone()).collect();
        let logits = net.forward(image::batch(&pixels, preprocess.size, &device));
        let probs: Vec<f32> = softmax(logits, 1).into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let classes = probs.len() / chunk.len();
        for ((path, _), row) in chunk.iter().zip(probs.chunks(classes)) {
            let top = top_k(row, top, |c| labels.get(c).copied().unwrap_or("?"));
            predictions.push(json!({"file": path, "top": top}));
        }
    }

    let value = json!({"model": spec.id, "predictions": predictions, "skipped": skipped});
    print_predictions(out, &value, &predictions, &shown)
}

/// Top-k of a run's classes (any kind, through the one [`Predictor`]) for image files, or for
/// `.txt` files and `--text`s with a run on texts.
#[allow(clippy::too_many_arguments)]
fn predict_run(run: &Path, inputs: &[PathBuf], texts: &[String], batch: usize, allow_unfinished: bool, shown: &Shown, device: &Device, out: &Output) -> anyhow::Result<()> {
    let reporter = TermReporter::new();
    let predictor = Predictor::load(run, &graft_home(), None, allow_unfinished, &reporter, &device)?;
    let text_run = predictor.input() == InputKind::Texts;
    let files = expand_folders(inputs, text_run)?;
    let classes = predictor.classes();
    let (predictions, skipped) = if text_run {
        let (read, skipped) = graft::train::text::read_text_files(&files);
        for s in &skipped {
            reporter.message(&format!("skipping {}: {}", s.path.display(), s.reason));
        }
        // (what to show as the input, the text)
        let mut inputs: Vec<(Value, String)> = read.into_iter().map(|(p, t)| (json!({"file": p}), t)).collect();
        inputs.extend(texts.iter().map(|t| (json!({"text": t}), t.clone())));
        anyhow::ensure!(!inputs.is_empty(), "none of the {} text files could be read", files.len());
        let rows: Vec<&str> = inputs.iter().map(|(_, t)| t.as_str()).collect();
        let probs = predictor.predict_texts(&rows, &reporter, &device)?;
        let tasks = predictor.tasks();
        let predictions = inputs.iter().zip(&probs).map(|((source, _), row)| text_prediction(source.clone(), row, classes, tasks, shown.top)).collect();
        (predictions, skipped)
    } else {
        anyhow::ensure!(texts.is_empty(), "--text needs a text run (--run from `graft fit --model minilm-l6`)");
        let samples: Vec<graft::data::folder::Sample> = files.iter().map(|p| graft::data::folder::Sample { path: p.clone(), label: 0 }).collect();
        let (probs, skipped) = predictor.predict_images(&samples, batch, &reporter, &device)?;
        for s in &skipped {
            reporter.message(&format!("skipping {}: {}", s.path.display(), s.reason));
        }
        let mut predictions = Vec::new();
        for (p, path) in probs.iter().zip(&files) {
            let Some(row) = p else { continue };
            predictions.push(json!({"file": path, "top": top_k(row, shown.top, |c| &classes[c])}));
        }
        if predictions.is_empty() {
            let first = skipped.first().map(|s| format!("{}: {}", s.path.display(), s.reason)).unwrap_or_default();
            anyhow::bail!("none of the {} images could be read ({first})", files.len());
        }
        (predictions, skipped)
    };
    let skipped: Vec<Value> = skipped.iter().map(|s| json!({"file": s.path, "reason": s.reason})).collect();
    let value = json!({"run": run, "kind": predictor.kind(), "predictions": predictions, "skipped": skipped});
    print_predictions(out, &value, &predictions, shown)
}

/// One text's prediction: `source` (what names the input) with its `top` classes; a
/// multi-task run's every task's top classes (labelled `task/class`), task after task, and
/// `tasks` holding them by task.
pub(crate) fn text_prediction(source: Value, row: &[f32], classes: &[String], tasks: &[graft::train::text::TaskHead], k: usize) -> Value {
    let mut p = source;
    if tasks.is_empty() {
        p["top"] = json!(top_k(row, k, |c| &classes[c]));
    } else {
        let mut top = Vec::new();
        let mut by_task = serde_json::Map::new();
        for (task, range) in tasks.iter().zip(graft::train::text::TaskHead::ranges(tasks)) {
            let start = range.start;
            let best = top_k(&row[range], k, |c| &classes[start + c]);
            top.extend(best.iter().cloned());
            by_task.insert(task.name.clone(), json!(best));
        }
        p["top"] = json!(top);
        p["tasks"] = by_task.into();
    }
    p
}

/// The `k` most probable classes of one row, most probable first.
pub(crate) fn top_k<'a>(row: &[f32], k: usize, label: impl Fn(usize) -> &'a str) -> Vec<Value> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.iter().take(k).map(|&c| json!({"class": c, "label": label(c), "prob": row[c]})).collect()
}

/// The inputs with every folder among them replaced by the files below it (image files, or
/// `.txt` files for a text run), sorted; an empty folder is an error naming it.
fn expand_folders(inputs: &[PathBuf], text_run: bool) -> anyhow::Result<Vec<PathBuf>> {
    let is_text = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt"));
    let keep: &dyn Fn(&Path) -> bool = if text_run { &is_text } else { &graft::data::folder::is_image_file };
    let mut files = Vec::new();
    for input in inputs {
        // A text run would classify an image's bytes as text, an image model a text file's as
        // pixels (or skip it): refuse the mix up front, naming the file.
        if text_run && graft::data::folder::is_image_file(input) {
            anyhow::bail!("{}: an image file, but this run classifies texts (pass .txt files or --text)", input.display());
        }
        if !text_run && is_text(input) {
            anyhow::bail!("{}: a text file, but this model classifies images (a text run comes from `graft fit --model minilm-l6`)", input.display());
        }
        if input.is_dir() {
            let found = graft::data::folder::files_below(input, keep)?;
            let kind = if text_run { ".txt files" } else { "image files" };
            anyhow::ensure!(!found.is_empty(), "{}: no {kind} in this folder", input.display());
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// A prediction's input for people: its `file`, or the start of its `text`, quoted.
fn input_name(p: &Value) -> String {
    p["file"].as_str().map(String::from).unwrap_or_else(|| graft::predictor::text_excerpt(p["text"].as_str().unwrap_or("?")))
}

/// Writes `--csv`: a header, one row per prediction (input, then label and probability of each
/// top class), then one row per skipped input with its error.
fn write_csv(path: &Path, value: &Value, predictions: &[Value], top: usize) -> anyhow::Result<()> {
    use super::eval::csv_field;
    let mut csv = String::from("input");
    for k in 1..=top {
        csv.push_str(&format!(",label_{k},prob_{k}"));
    }
    csv.push_str(",error\n");
    for p in predictions {
        let mut row = csv_field(&p["file"].as_str().map(String::from).unwrap_or_else(|| p["text"].as_str().unwrap_or("").to_string()));
        let tops = p["top"].as_array().cloned().unwrap_or_default();
        for k in 0..top {
            match tops.get(k) {
                Some(t) => row.push_str(&format!(",{},{}", csv_field(t["label"].as_str().unwrap_or("?")), t["prob"].as_f64().unwrap_or(0.0))),
                None => row.push_str(",,"),
            }
        }
        csv.push_str(&row);
        csv.push_str(",\n");
    }
    for s in value["skipped"].as_array().into_iter().flatten() {
        csv.push_str(&csv_field(s["file"].as_str().unwrap_or("?")));
        csv.push_str(&",".repeat(2 * top));
        csv.push_str(&format!(",{}\n", csv_field(s["reason"].as_str().unwrap_or(""))));
    }
    graft::fsutil::write_atomic(path, csv.as_bytes())?;
    Ok(())
}

/// Prints `value` (JSON) or each prediction's input — its `file`, or the start of its `text` —
/// and top classes; writes `--csv` when given.
fn print_predictions(out: &Output, value: &Value, predictions: &[Value], shown: &Shown) -> anyhow::Result<()> {
    if let Some(path) = &shown.csv {
        write_csv(path, value, predictions, shown.top)?;
    }
    out.result(value, || {
        let mut text = String::new();
        for p in predictions {
            let name = input_name(p);
            text.push_str(&format!("{name}\n"));
            for t in p["top"].as_array().into_iter().flatten() {
                text.push_str(&format!(
                    "  {:>6.2}%  {:>4}  {}\n",
                    t["prob"].as_f64().unwrap_or(0.0) * 100.0,
                    t["class"],
                    t["label"].as_str().unwrap_or("?")
                ));
            }
        }
        text
    });
    Ok(())
}
