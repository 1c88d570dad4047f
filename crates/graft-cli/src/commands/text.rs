//! The text side of `pull`, `fit` and `data import`: a frozen sentence encoder (`minilm-l6`)
//! with cached embeddings and a head on top. The image commands dispatch here when the model is
//! a text one (`eval` and `predict` read text runs through `graft::predictor::Predictor`).

use std::path::Path;

use anyhow::Context;
use graft::device::default_device;
use graft::text::{pull, TextDataset};
use graft::train::config::FitConfig;
use graft::train::text::fit_text;
use graft::zoo::graft_home;
use serde_json::json;

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
