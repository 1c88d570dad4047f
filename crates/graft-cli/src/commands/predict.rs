use burn::tensor::activation::softmax;
use graft::data::image;
use graft::device::default_device;
use graft::report::Reporter;
use graft::zoo::{graft_home, Pretrained};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use crate::cli::PredictArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(mut args: PredictArgs, out: &Output) -> anyhow::Result<()> {
    if args.top == 0 || args.batch == 0 {
        anyhow::bail!("--top and --batch must be at least 1");
    }
    graft::limits::check_setting("--batch", args.batch, graft::limits::MAX_BATCH_SIZE, "graft::limits::MAX_BATCH_SIZE")?;
    let text_run = args.run.as_deref().is_some_and(|run| graft::train::text::is_text_run(run) || graft::adapt::text::is_text_adapt_run(run));
    args.images = expand_folders(&args.images, text_run)?;
    if let Some(run) = &args.run {
        if text_run {
            return super::text::predict(run, &args, out);
        }
        anyhow::ensure!(args.text.is_empty(), "--text needs a text run (--run from `graft fit --model minilm-l6`)");
        return predict_run(run, &args, out);
    }
    anyhow::ensure!(args.text.is_empty(), "--text needs a text run (--run from `graft fit --model minilm-l6`)");
    let spec = super::model_spec(&args.model, args.arch.as_deref())?;
    let device = default_device();
    let reporter = TermReporter::new();
    let model = Pretrained::load(spec, args.weights.as_deref(), &graft_home(), &reporter, &device)?;
    let preprocess = spec.preprocess();
    let labels = spec.labels();

    // Unreadable files are skipped and reported, never fatal unless nothing is left.
    let mut inputs = Vec::new();
    let mut skipped = Vec::new();
    let mut first_error = None;
    for path in &args.images {
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
        anyhow::bail!("none of the {} images could be read ({})", args.images.len(), first_error.unwrap_or_default());
    }

    let mut predictions = Vec::new();
    let net = model.net.for_inference();
    for chunk in inputs.chunks(args.batch) {
        let pixels: Vec<Vec<f32>> = chunk.iter().map(|(_, x)| x.clone()).collect();
        let logits = net.forward(image::batch(&pixels, preprocess.size, &device));
        let probs: Vec<f32> = softmax(logits, 1).into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let classes = probs.len() / chunk.len();
        for ((path, _), row) in chunk.iter().zip(probs.chunks(classes)) {
            let top = top_k(row, args.top, |c| labels.get(c).copied().unwrap_or("?"));
            predictions.push(json!({"file": path, "top": top}));
        }
    }

    let value = json!({"model": spec.id, "predictions": predictions, "skipped": skipped});
    print_predictions(out, &value, &predictions, &args)
}

/// Top-k of a fitted run's classes.
fn predict_run(run: &std::path::Path, args: &PredictArgs, out: &Output) -> anyhow::Result<()> {
    let device = default_device();
    let samples: Vec<graft::data::folder::Sample> =
        args.images.iter().map(|p| graft::data::folder::Sample { path: p.clone(), label: 0 }).collect();
    let reporter = TermReporter::new();
    let (classes, probs, skipped) = if graft::adapt::is_adapt_run(run) {
        let model = graft::adapt::load_adapted(run, &graft_home(), None, &reporter, &device)?;
        let (probs, skipped) = model.predict_files(&samples, &device)?;
        (model.info.classes, probs, skipped)
    } else {
        let (info, model) = graft::train::run::load_run_checked(run, args.allow_unfinished, &device)?;
        let (probs, skipped) = graft::train::run::predict_files(&model, &info.preprocess, &samples, args.batch, &device, &reporter, None);
        (info.classes, probs, skipped)
    };
    for s in &skipped {
        reporter.message(&format!("skipping {}: {}", s.path.display(), s.reason));
    }
    let mut predictions = Vec::new();
    for (p, path) in probs.iter().zip(&args.images) {
        let Some(row) = p else { continue };
        predictions.push(json!({"file": path, "top": top_k(row, args.top, |c| &classes[c])}));
    }
    if predictions.is_empty() {
        let first = skipped.first().map(|s| format!("{}: {}", s.path.display(), s.reason)).unwrap_or_default();
        anyhow::bail!("none of the {} images could be read ({first})", args.images.len());
    }
    let skipped: Vec<Value> = skipped.iter().map(|s| json!({"file": s.path, "reason": s.reason})).collect();
    let value = json!({"run": run, "predictions": predictions, "skipped": skipped});
    print_predictions(out, &value, &predictions, args)
}

/// The `k` most probable classes of one row, most probable first.
pub(super) fn top_k<'a>(row: &[f32], k: usize, label: impl Fn(usize) -> &'a str) -> Vec<Value> {
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
    p["file"].as_str().map(String::from).unwrap_or_else(|| super::text::text_excerpt(p["text"].as_str().unwrap_or("?")))
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
pub(super) fn print_predictions(out: &Output, value: &Value, predictions: &[Value], args: &PredictArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.csv {
        write_csv(path, value, predictions, args.top)?;
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
