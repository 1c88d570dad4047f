use burn::tensor::activation::softmax;
use graft::data::image;
use graft::device::default_device;
use graft::report::Reporter;
use graft::zoo::{graft_home, Pretrained};
use serde_json::{json, Value};

use crate::cli::PredictArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: PredictArgs, out: &Output) -> anyhow::Result<()> {
    if args.top == 0 || args.batch == 0 {
        anyhow::bail!("--top and --batch must be at least 1");
    }
    graft::limits::check_setting("--batch", args.batch, graft::limits::MAX_BATCH_SIZE, "graft::limits::MAX_BATCH_SIZE")?;
    if let Some(run) = &args.run {
        if graft::train::text::is_text_run(run) || graft::adapt::text::is_text_adapt_run(run) {
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
    print_predictions(out, &value, &predictions);
    Ok(())
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
    print_predictions(out, &value, &predictions);
    Ok(())
}

/// The `k` most probable classes of one row, most probable first.
pub(super) fn top_k<'a>(row: &[f32], k: usize, label: impl Fn(usize) -> &'a str) -> Vec<Value> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.iter().take(k).map(|&c| json!({"class": c, "label": label(c), "prob": row[c]})).collect()
}

/// Prints `value` (JSON) or each prediction's input — its `file`, or the start of its `text` —
/// and top classes.
pub(super) fn print_predictions(out: &Output, value: &Value, predictions: &[Value]) {
    out.result(value, || {
        let mut text = String::new();
        for p in predictions {
            let name = p["file"].as_str().map(String::from).unwrap_or_else(|| {
                let t = p["text"].as_str().unwrap_or("?");
                let short: String = t.chars().take(60).collect();
                if short.len() < t.len() { format!("\"{short}…\"") } else { format!("\"{short}\"") }
            });
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
}
