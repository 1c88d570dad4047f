//! The text side of `pull`, `fit`, `eval`, `predict` and `data import`: a frozen sentence encoder
//! (`minilm-l6`) with cached embeddings and a head on top. The image commands dispatch here when
//! the model or run is a text one.

use std::path::Path;

use anyhow::Context;
use graft::device::default_device;
use graft::report::Reporter;
use graft::text::features::EmbedStats;
use graft::text::{pull, TextDataset};
use graft::train::config::FitConfig;
use graft::train::run::{top1, Evaluation};
use graft::train::text::{eval_dataset, fit_text, load_text_run, read_text_files};
use graft::zoo::graft_home;
use serde_json::{json, Value};

use crate::cli::{EvalArgs, PredictArgs};
use crate::output::Output;
use crate::reporter::TermReporter;

/// `graft pull minilm-l6`: weights and tokenizer, both checked against their pinned sha256.
pub fn pull(force: bool, out: &Output) -> anyhow::Result<()> {
    let home = graft_home();
    let reporter = TermReporter::new();
    let pulled = match pull::cached_minilm(&home) {
        Some(cached) if !force => cached,
        _ => pull::pull_minilm(&home, &reporter)?,
    };
    let tokenizer = pull::tokenizer_path(&pulled);
    let value = json!({
        "model": pull::MINILM_ID, "path": pulled.path, "sha256": pulled.sha256,
        "tokenizer": tokenizer, "tokenizer_sha256": pull::MINILM_TOKENIZER_SHA256, "fetched": pulled.fetched,
    });
    out.result(&value, || {
        let verb = if pulled.fetched { "pulled" } else { "already cached" };
        format!(
            "{}: {verb}\n  path      {}\n  sha256    {}\n  tokenizer {}\n",
            pull::MINILM_ID,
            pulled.path.display(),
            pulled.sha256,
            tokenizer.display()
        )
    });
    Ok(())
}

/// `graft fit --model minilm-l6 --data FILE.csv|DIR`.
pub fn fit(config: &FitConfig, run_dir: &Path, resume: bool, out: &Output) -> anyhow::Result<()> {
    let reporter = TermReporter::new();
    let summary = fit_text(config, run_dir, resume, &graft_home(), &reporter, &default_device())?;
    let value = super::fit::summary_json(&summary);
    out.result(&value, || {
        let kept = match summary.best_val_accuracy {
            Some(acc) => format!("best val accuracy {acc:.4} at epoch {}", summary.best_epoch),
            None => format!("no validation data: keeping epoch {}", summary.best_epoch),
        };
        format!(
            "run {}: {} epochs, {kept} ({:.1} s); embeddings {} cached, {} computed\n",
            summary.run.display(),
            summary.epochs,
            summary.train_seconds,
            summary.cache.hits,
            summary.cache.misses
        )
    });
    Ok(())
}

/// `graft eval --run TEXT_RUN --data FILE.csv|DIR` (a `fit` or an `adapt` run on texts).
pub fn eval(args: &EvalArgs, out: &Output) -> anyhow::Result<()> {
    let device = default_device();
    let reporter = TermReporter::new();
    let home = graft_home();
    let view = super::eval::View::of(args);
    if graft::adapt::text::is_text_adapt_run(&args.run) {
        let model = graft::adapt::load_adapted(&args.run, &home, None, &reporter, &device)?;
        let (eval, skipped, stats) =
            model.evaluate_texts(&args.data.to_string_lossy(), &args.data_root, args.batch, &home, &reporter, &device)?;
        return super::eval::print_evaluation(out, &eval, &skipped, "texts", Some(stats), None, &view);
    }
    let model = load_text_run(&args.run, &home, &reporter, &device)?;
    let data = eval_dataset(&args.data, &model.info.classes)?;
    let mut store = model.store(&home, &reporter)?;
    let mut stats = EmbedStats::default();
    let probs = model.probabilities(&data.texts, Some(&mut store), &reporter, &mut stats, &device)?;
    let predicted = top1(&probs);
    let eval = Evaluation::from_predictions(&model.info.classes, &data.labels, &predicted);
    let inputs: Vec<String> = data.texts.iter().map(|t| text_excerpt(t)).collect();
    let misses = super::eval::Miss::collect(&inputs, &data.labels, &predicted, &probs);
    super::eval::print_evaluation(out, &eval, &data.skipped, "texts", Some(stats), Some(&misses), &view)
}

/// The start of a text, quoted, for lists of inputs.
pub(super) fn text_excerpt(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() { format!("\"{short}…\"") } else { format!("\"{short}\"") }
}

/// `graft predict --run TEXT_RUN [FILE.txt …] [--text "…" …]` (a `fit` or an `adapt` run on texts).
pub fn predict(run: &Path, args: &PredictArgs, out: &Output) -> anyhow::Result<()> {
    let device = default_device();
    let reporter = TermReporter::new();
    let home = graft_home();
    let (files, skipped) = read_text_files(&args.images);
    for s in &skipped {
        reporter.message(&format!("skipping {}: {}", s.path.display(), s.reason));
    }
    // (what to show as the input, the text)
    let mut inputs: Vec<(Value, String)> = files.into_iter().map(|(p, t)| (json!({"file": p}), t)).collect();
    inputs.extend(args.text.iter().map(|t| (json!({"text": t}), t.clone())));
    anyhow::ensure!(!inputs.is_empty(), "none of the {} text files could be read", args.images.len());
    let texts: Vec<&str> = inputs.iter().map(|(_, t)| t.as_str()).collect();
    let mut stats = EmbedStats::default();
    let (classes, probs) = if graft::adapt::text::is_text_adapt_run(run) {
        let model = graft::adapt::load_adapted(run, &home, None, &reporter, &device)?;
        let probs = model.text_probabilities(&texts, &home, &reporter, &mut stats, &device)?;
        (model.info.classes, probs)
    } else {
        let model = load_text_run(run, &home, &reporter, &device)?;
        let mut store = model.store(&home, &reporter)?;
        let probs = model.probabilities(&texts, Some(&mut store), &reporter, &mut stats, &device)?;
        (model.info.classes, probs)
    };
    let mut predictions = Vec::new();
    for ((source, _), row) in inputs.iter().zip(&probs) {
        let mut p = source.clone();
        p["top"] = json!(super::predict::top_k(row, args.top, |c| &classes[c]));
        predictions.push(p);
    }
    let skipped: Vec<Value> = skipped.iter().map(|s| json!({"file": s.path, "reason": s.reason})).collect();
    let value = json!({"run": run, "predictions": predictions, "skipped": skipped});
    super::predict::print_predictions(out, &value, &predictions, args)?;
    Ok(())
}

/// The text sets `graft data import` writes as `text,label` CSV.
pub const TEXT_DATASETS: &str = "sms-spam, rt-polarity, amazon:books, amazon:dvd, amazon:electronics, amazon:kitchen";

/// `graft data import sms-spam|rt-polarity|amazon:DOMAIN --out FILE.csv`: a seeded subset
/// (`--per-class`) of the set kept in `dir` as CSV. `None` when `dataset` is not a text set.
pub fn import(args: &super::data::Import, dir: &Path, dest: &Path, out: &Output) -> Option<anyhow::Result<()>> {
    let path = match args.dataset.as_str() {
        "sms-spam" => dir.join("SMSSpamCollection"),
        "rt-polarity" => dir.to_path_buf(),
        d if d.starts_with("amazon:") => dir.to_path_buf(),
        _ => return None,
    };
    Some((|| {
        let data = TextDataset::open_any(&path).with_context(|| format!("reading {} (text sets: {TEXT_DATASETS})", args.dataset))?;
        let data = match args.per_class {
            Some(n) => data.seeded_per_class(n, args.seed),
            None => data,
        };
        data.write_csv(dest)?;
        let value = json!({"dataset": args.dataset, "texts": data.len(), "classes": data.classes, "out": dest});
        out.result(&value, || format!("wrote {} texts to {}\n", data.len(), dest.display()));
        Ok(())
    })())
}
