//! `graft eval --run RUN --data …`: any run (image or text fit, adapt, MLP) through the one
//! [`Predictor`], with precision, recall, F1, the confusion matrix and the worst errors.

use graft::predictor::Predictor;
use graft::train::run::{top1, Evaluation};
use graft::zoo::graft_home;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::EvalArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: EvalArgs, out: &Output) -> anyhow::Result<()> {
    // Every flag is used below: a new one fails to compile until it is.
    let EvalArgs { device, run, model, data, batch, data_root, errors, out_dir, allow_unfinished, tta, report, top_losses, episodes, zero_shot } = args;
    anyhow::ensure!(batch > 0, "--batch must be at least 1");
    graft::limits::check_setting("--batch", batch, graft::limits::MAX_BATCH_SIZE, "graft::limits::MAX_BATCH_SIZE")?;
    let device = device.device()?;
    let mut view = View { errors, out_dir, report: None, predictions: None };
    let episodic = episodes.episodes.is_some() || zero_shot.zero_shot;
    anyhow::ensure!(!(episodic && (tta || report)), "--tta and --report evaluate a run: they do not go with --episodes or --zero-shot");
    if let Some(n) = episodes.episodes {
        return super::fewshot::run(episodes, n, run, model, allow_unfinished, &data, batch, &device, out);
    }
    if zero_shot.zero_shot {
        let z = super::zeroshot::eval(zero_shot, model, &data, &device)?;
        return print_evaluation(out, "zero-shot", &z.evaluation, &z.skipped, "texts", Some(z.cache), None, &view, Some(z.extra));
    }
    let run = run.ok_or_else(|| anyhow::anyhow!("--run is required (unless --episodes or --zero-shot)"))?;
    anyhow::ensure!(model.is_none(), "--model goes with --episodes or --zero-shot: a run evaluates its own model");
    let reporter = TermReporter::new();
    let predictor = Predictor::load(&run, &graft_home(), None, allow_unfinished, &reporter, &device)?;
    let scored = predictor.evaluate(&data, &data_root, batch, tta, &reporter, &device)?;
    if report {
        let dir = view.out_dir.clone().unwrap_or_else(|| run.clone());
        view.report = Some(write_report(&predictor, &run, &data, &dir, &scored, top_losses, tta, &reporter, &device)?);
    }
    let misses = scored.scored.as_ref().map(|s| Miss::collect(&s.inputs, &s.truth, &top1(&s.probs), &s.probs));
    if let (Some(dir), Some(s)) = (&view.out_dir, &scored.scored) {
        view.predictions = Some(write_predictions(dir, &scored.evaluation.labels, s)?);
    }
    let noun = match predictor.input() {
        graft::manifest::InputKind::Images => "images",
        graft::manifest::InputKind::Texts => "texts",
    };
    // A multi-task run: the first task's report, and every task's figures beside it.
    let extra = (!scored.tasks.is_empty()).then(|| {
        let tasks: serde_json::Map<String, serde_json::Value> = scored
            .tasks
            .iter()
            .map(|(name, e)| (name.clone(), json!({"accuracy": e.accuracy, "n": e.n, "macro_f1": e.macro_f1, "classes": e.classes, "confusion": e.confusion, "labels": e.labels})))
            .collect();
        json!({"tasks": tasks})
    });
    print_evaluation(out, predictor.kind(), &scored.evaluation, &scored.skipped, noun, scored.cache, misses.as_deref(), &view, extra)
}

/// What `eval` shows beside the accuracy: how many errors to list, where to write the
/// confusion-matrix plot and the full error list, and the report written.
struct View {
    errors: usize,
    out_dir: Option<PathBuf>,
    report: Option<PathBuf>,
    predictions: Option<PathBuf>,
}

/// Writes `predictions.csv` into `dir`: every scored input with its true and predicted class
/// and the probability of each class (columns `p:CLASS`, in the run's class order).
fn write_predictions(dir: &Path, labels: &[String], s: &graft::predictor::Scored) -> anyhow::Result<PathBuf> {
    let mut csv = String::from("input,true,predicted");
    for l in labels {
        csv.push_str(&format!(",{}", csv_field(&format!("p:{l}"))));
    }
    csv.push('\n');
    let label = |c: usize| labels.get(c).map(String::as_str).unwrap_or("?");
    for ((input, &truth), (probs, predicted)) in s.inputs.iter().zip(&s.truth).zip(s.probs.iter().zip(top1(&s.probs))) {
        csv.push_str(&format!("{},{},{}", csv_field(input), csv_field(label(truth)), csv_field(label(predicted))));
        for p in probs {
            csv.push_str(&format!(",{p}"));
        }
        csv.push('\n');
    }
    let path = dir.join("predictions.csv");
    graft::fsutil::write_atomic(&path, csv.as_bytes())?;
    Ok(path)
}

/// Writes `report.html` into `dir`: the run's training curves, this evaluation, and the
/// `top_losses` inputs of largest loss (images as the model saw them, with the Grad-CAM heatmap
/// of the predicted class where the run has one). Returns the file written.
#[allow(clippy::too_many_arguments)]
fn write_report(
    predictor: &Predictor,
    run: &Path,
    data: &Path,
    dir: &Path,
    scored: &graft::predictor::Evaluated,
    top_losses: usize,
    tta: bool,
    reporter: &dyn graft::report::Reporter,
    device: &burn::tensor::Device,
) -> anyhow::Result<PathBuf> {
    use graft::report::html::{Page, Section, TopLoss, REPORT_FILE};
    let metrics = graft::train::fit::read_metrics(run).unwrap_or_default();
    let mut page = Page::for_run(run, &metrics);
    let labels = &scored.evaluation.labels;
    let label = |c: usize| labels.get(c).cloned().unwrap_or_else(|| "?".into());
    let mut items = Vec::new();
    let mut heatmaps = 0;
    let note = match &scored.scored {
        Some(s) => {
            let predicted = top1(&s.probs);
            let p = |i: usize, c: usize| s.probs[i].get(c).copied().unwrap_or(0.0);
            let loss = |i: usize| -p(i, s.truth[i]).max(1e-12).ln();
            let mut order: Vec<usize> = (0..s.truth.len()).collect();
            order.sort_by(|&a, &b| loss(b).total_cmp(&loss(a)).then_with(|| s.inputs[a].cmp(&s.inputs[b])));
            order.truncate(top_losses);
            let images = predictor.input() == graft::manifest::InputKind::Images;
            if images {
                reporter.start("explaining the top losses", Some(order.len() as u64));
            }
            for (done, &i) in order.iter().enumerate() {
                let mut picture = None;
                if images {
                    let explained = predictor.explain_image(Path::new(&s.inputs[i]), predicted[i], device)?;
                    heatmaps += usize::from(explained.cam.is_some());
                    picture = Some(graft::report::plot::png_bytes(Path::new(&s.inputs[i]), &explained.picture)?);
                    reporter.progress(done as u64 + 1);
                }
                items.push(TopLoss {
                    input: s.inputs[i].clone(),
                    truth: label(s.truth[i]),
                    predicted: label(predicted[i]),
                    p_truth: p(i, s.truth[i]),
                    p_predicted: p(i, predicted[i]),
                    loss: loss(i),
                    picture,
                });
            }
            if images {
                reporter.finish();
            }
            Some(match (images, heatmaps) {
                (false, _) => "the texts with the largest loss (cross-entropy of the true class), largest first".to_string(),
                (true, 0) => "the images with the largest loss, as the model saw them; no heatmaps: this run's head has no gradients (a classic head) or its model has no convolutional stages".to_string(),
                (true, _) => "the images with the largest loss, as the model saw them, with the Grad-CAM heatmap of the predicted class over the trunk's last stage (red: where the score comes from)".to_string(),
            })
        }
        None => Some("this kind of run gives predictions only: no gallery".to_string()),
    };
    let tta_note = if tta { " (test-time augmentation)" } else { "" };
    page.sections.push(Section { heading: format!("Evaluation on {}{tta_note}", data.display()), evaluation: scored.evaluation.clone(), top_losses: items, gallery_note: note });
    let path = dir.join(REPORT_FILE);
    page.write(&path)?;
    Ok(path)
}

/// One misclassified input: what it is (a file, or the start of a text), its true and
/// predicted classes and their probabilities.
struct Miss {
    input: String,
    truth: usize,
    predicted: usize,
    p_truth: f32,
    p_predicted: f32,
}

impl Miss {
    /// The misclassified rows, the lowest probability of the true class (the largest loss) first.
    fn collect(inputs: &[String], truth: &[usize], predicted: &[usize], probs: &[Vec<f32>]) -> Vec<Miss> {
        let mut misses: Vec<Miss> = (0..truth.len())
            .filter(|&i| truth[i] != predicted[i])
            .map(|i| Miss {
                input: inputs[i].clone(),
                truth: truth[i],
                predicted: predicted[i],
                p_truth: probs[i].get(truth[i]).copied().unwrap_or(0.0),
                p_predicted: probs[i].get(predicted[i]).copied().unwrap_or(0.0),
            })
            .collect();
        misses.sort_by(|a, b| a.p_truth.total_cmp(&b.p_truth).then_with(|| a.input.cmp(&b.input)));
        misses
    }
}

/// Classes beyond this are left out of the printed confusion matrix (it is in `--json` and
/// `eval.png` whatever the count).
const MAX_PRINTED_CONFUSION: usize = 20;

/// Prints the evaluation (the run's kind, accuracy, per class, confusion, skipped inputs; for
/// texts also the embedding cache's hits and misses) of `n` `noun`s, with per-class precision,
/// recall and F1, the confusion matrix, the worst misclassified inputs when known, and writes
/// `eval.png` and `errors.csv` into `view.out_dir`; `extra`'s keys are added to `--json`.
#[allow(clippy::too_many_arguments)]
fn print_evaluation(
    out: &Output,
    kind: &str,
    eval: &Evaluation,
    skipped: &[graft::data::folder::Skipped],
    noun: &str,
    cache: Option<graft::text::features::EmbedStats>,
    misses: Option<&[Miss]>,
    view: &View,
    extra: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let label = |c: usize| eval.labels.get(c).map(String::as_str).unwrap_or("?");
    let mut written: Vec<PathBuf> = view.report.iter().chain(&view.predictions).cloned().collect();
    if let Some(dir) = &view.out_dir {
        let png = dir.join("eval.png");
        graft::report::plot::confusion_matrix_plot(&png, &eval.labels, &eval.confusion)?;
        written.push(png);
        if let Some(misses) = misses {
            let mut csv = String::from("input,true,predicted,p_true,p_predicted\n");
            for m in misses {
                csv.push_str(&format!("{},{},{},{},{}\n", csv_field(&m.input), csv_field(label(m.truth)), csv_field(label(m.predicted)), m.p_truth, m.p_predicted));
            }
            let path = dir.join("errors.csv");
            graft::fsutil::write_atomic(&path, csv.as_bytes())?;
            written.push(path);
        }
    }
    let shown: &[Miss] = misses.map(|m| &m[..m.len().min(view.errors)]).unwrap_or(&[]);
    let errors: Vec<_> = shown
        .iter()
        .map(|m| json!({"input": m.input, "true": label(m.truth), "predicted": label(m.predicted), "p_true": m.p_truth, "p_predicted": m.p_predicted}))
        .collect();
    let skipped: Vec<_> = skipped.iter().map(|s| json!({"file": s.path, "reason": s.reason})).collect();
    let mut value = json!({
        "kind": kind, "accuracy": eval.accuracy, "n": eval.n, "per_class": eval.per_class, "classes": eval.classes,
        "macro_f1": eval.macro_f1, "confusion": eval.confusion, "labels": eval.labels, "skipped": skipped,
        "errors": errors, "misclassified": misses.map(|m| m.len()), "written": written,
    });
    if let Some(cache) = cache {
        value["cache"] = json!(cache);
    }
    if let Some(serde_json::Value::Object(extra)) = extra {
        for (k, v) in extra {
            value[k] = v;
        }
    }
    out.result(&value, || {
        let mut t = String::new();
        if let Some(tasks) = value["tasks"].as_object() {
            for (name, e) in tasks {
                t.push_str(&format!("task {name}: accuracy {:.4} (macro F1 {:.4})\n", e["accuracy"].as_f64().unwrap_or(0.0), e["macro_f1"].as_f64().unwrap_or(0.0)));
            }
            t.push_str(&format!("\nthe first task, {}:\n", tasks.keys().next().map(String::as_str).unwrap_or("?")));
        }
        t.push_str(&format!("accuracy {:.4} on {} {noun} (macro F1 {:.4})\n\n", eval.accuracy, eval.n, eval.macro_f1));
        let width = eval.labels.iter().map(|l| l.chars().count()).max().unwrap_or(5).clamp(5, 24);
        t.push_str(&format!("  {:<width$}  precision  recall      f1  support\n", "class"));
        for c in &eval.classes {
            t.push_str(&format!("  {:<width$}  {:>9.4}  {:>6.4}  {:>6.4}  {:>7}\n", c.label, c.precision, c.recall, c.f1, c.support));
        }
        let k = eval.labels.len();
        if k <= MAX_PRINTED_CONFUSION {
            t.push_str("\nconfusion (rows: true class, columns: predicted class)\n");
            let cell = eval.confusion.iter().flatten().max().map(|m| m.to_string().len()).unwrap_or(1).max(k.to_string().len()) + 1;
            // Row names are "INDEX LABEL".
            let width = width + k.to_string().len() + 1;
            t.push_str(&format!("  {:<width$} ", ""));
            for c in 0..k {
                t.push_str(&format!("{c:>cell$}"));
            }
            t.push('\n');
            for (r, row) in eval.confusion.iter().enumerate() {
                let name: String = format!("{r} {}", label(r)).chars().take(width).collect();
                t.push_str(&format!("  {name:<width$} "));
                for count in row {
                    t.push_str(&format!("{count:>cell$}"));
                }
                t.push('\n');
            }
        } else {
            t.push_str(&format!("\n{k} classes: the confusion matrix is in --json and --out-dir's eval.png\n"));
        }
        if let Some(all) = misses {
            if !shown.is_empty() {
                t.push_str(&format!("\n{} of {} misclassified, lowest probability of the true class first:\n", shown.len(), all.len()));
                for m in shown {
                    t.push_str(&format!(
                        "  {}  true {} ({:.1} %), predicted {} ({:.1} %)\n",
                        m.input,
                        label(m.truth),
                        m.p_truth * 100.0,
                        label(m.predicted),
                        m.p_predicted * 100.0
                    ));
                }
            }
        }
        for path in &written {
            t.push_str(&format!("wrote {}\n", path.display()));
        }
        t
    });
    Ok(())
}

/// A CSV field, quoted when it holds a comma, quote or line break.
pub(super) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
