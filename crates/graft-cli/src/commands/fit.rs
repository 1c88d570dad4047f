use std::path::PathBuf;

use anyhow::Context;
use graft::device::default_device;
use graft::train::config::{CacheMode, ClassWeights, FitConfig, Optimizer, Stage};
use graft::train::fit::fit;
use graft::zoo::graft_home;
use serde_json::json;

use crate::cli::FitArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

/// Flags, then the config file, then defaults resolve into one FitConfig.
fn resolve(args: &FitArgs) -> anyhow::Result<(FitConfig, PathBuf, bool)> {
    if let Some(run) = &args.resume {
        let config = FitConfig::from_toml(&run.join("config.toml"))?;
        return Ok((config, run.clone(), true));
    }
    let mut c = match &args.config {
        Some(path) => FitConfig::from_toml(path)?,
        None => {
            let data = args.data.clone().context("--data is required (a folder of class sub-folders of images; for a text model a CSV with text,label columns or class folders of .txt)")?;
            FitConfig::new(args.model.as_deref().unwrap_or("efficientnet-lite0"), data)
        }
    };
    if let Some(arch) = &args.arch {
        c.model = super::model_spec("", Some(arch))?.id.to_string();
    }
    let out = args.out.clone().context("--out is required (the run directory to create)")?;
    if let Some(v) = &args.model { c.model = v.clone(); }
    if let Some(v) = &args.weights { c.weights = Some(v.clone()); }
    if args.from_scratch { c.from_scratch = true; }
    if args.train_bn { c.train_bn = true; }
    if let Some(v) = &args.data { c.data = v.clone(); }
    if let Some(v) = &args.val { c.val = Some(v.clone()); }
    if let Some(v) = args.val_split { c.val_split = v; }
    // The advisor's settings go in before the flags below, so flags given still win.
    match args.strategy.as_deref() {
        None => {}
        Some("auto") => {
            let advice = crate::commands::advise::measure(&c.model, c.weights.as_deref(), &c.data, 200, c.seed, 16)?;
            eprintln!("strategy auto: {} ({})", advice.strategy.name(), advice.reasons.join("; "));
            advice.apply(&mut c)?;
        }
        Some(other) => anyhow::bail!("invalid --strategy `{other}`: expected auto"),
    }
    if let Some(v) = &args.freeze { c.freeze = v.parse()?; }
    if let Some(v) = &args.head { c.head = v.parse()?; }
    if let Some(v) = &args.head_pool { c.head_pool = v.parse()?; }
    if let Some(v) = args.dropout { c.dropout = v; }
    if let Some(v) = args.epochs { c.epochs = v; }
    if let Some(v) = args.batch_size { c.batch_size = v; }
    if let Some(v) = args.lr { c.lr = v; }
    if let Some(v) = &args.optimizer { c.optimizer = v.parse()?; }
    match (&mut c.optimizer, args.momentum, args.weight_decay) {
        (Optimizer::Sgd { momentum, weight_decay }, m, w) => {
            if let Some(m) = m { *momentum = m; }
            if let Some(w) = w { *weight_decay = w; }
        }
        (Optimizer::Adamw { weight_decay }, m, w) => {
            anyhow::ensure!(m.is_none(), "--momentum applies to --optimizer sgd only");
            if let Some(w) = w { *weight_decay = w; }
        }
    }
    if let Some(v) = &args.schedule { c.schedule = v.parse()?; }
    if let Some(v) = args.warmup { c.warmup_epochs = v; }
    if let Some(v) = args.body_lr_mult { c.body_lr_mult = v; }
    if let Some(v) = &args.stages { c.stages = Stage::parse_list(v)?; }
    if let Some(v) = args.label_smoothing { c.label_smoothing = v; }
    if let Some(v) = &args.class_weights {
        c.class_weights = match v.as_str() {
            "none" => ClassWeights::None,
            "balanced" => ClassWeights::Balanced,
            _ => anyhow::bail!("invalid --class-weights `{v}`: expected none or balanced"),
        };
    }
    if let Some(v) = &args.augment { c.augment = v.parse()?; }
    if let Some(v) = &args.cache {
        c.cache = match v.as_str() {
            "auto" => CacheMode::Auto,
            "on" => CacheMode::On,
            "off" => CacheMode::Off,
            _ => anyhow::bail!("invalid --cache `{v}`: expected auto, on or off"),
        };
    }
    if let Some(v) = args.cache_views { c.cache_views = v; }
    if let Some(v) = &args.cache_dtype {
        c.cache_dtype = match v.as_str() {
            "f32" => graft::cache::StoreDtype::F32,
            "f16" => graft::cache::StoreDtype::F16,
            _ => anyhow::bail!("invalid --cache-dtype `{v}`: expected f32 or f16"),
        };
    }
    if let Some(v) = args.patience { c.patience = Some(v); }
    if let Some(v) = args.min_delta { c.min_delta = v; }
    if let Some(v) = args.reduce_on_plateau { c.reduce_on_plateau = Some(v); }
    if let Some(v) = args.seed { c.seed = v; }
    Ok((c, out, false))
}

pub fn run(args: FitArgs, out: &Output) -> anyhow::Result<()> {
    if args.init.is_some() || args.arch.as_deref().is_some_and(|a| a.starts_with("mlp")) {
        return fit_mlp(&args, out);
    }
    let (config, run_dir, resume) = resolve(&args)?;
    if args.overwrite && run_dir.join("model.json").is_file() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    }
    if graft::text::is_text_model(&config.model) {
        return super::text::fit(&config, &run_dir, resume, out);
    }
    let reporter = TermReporter::new();
    let summary = fit(&config, &run_dir, resume, &graft_home(), &reporter, &default_device())?;
    let value = summary_json(&summary);
    out.result(&value, || {
        let kept = match summary.best_val_accuracy {
            Some(acc) => format!("best val accuracy {acc:.4} at epoch {}", summary.best_epoch),
            None => format!("no validation data: keeping epoch {}", summary.best_epoch),
        };
        let mut t = format!("run {}: {} epochs, {kept} ({:.1} s training)\n", summary.run.display(), summary.epochs, summary.train_seconds);
        if !summary.skipped.is_empty() {
            t.push_str(&format!("skipped {} unreadable files:\n", summary.skipped.len()));
            for s in &summary.skipped {
                t.push_str(&format!("  {}: {}\n", s.path.display(), s.reason));
            }
        }
        t
    });
    Ok(())
}

/// `graft fit --init RUN` (a pretrained MLP) or `--arch mlp:…` (the same MLP, random init).
fn fit_mlp(args: &FitArgs, out: &Output) -> anyhow::Result<()> {
    use graft::transfer::autoencoder::{arch_of, fit_mlp, MlpFitConfig};
    let data = args.data.clone().context("--data is required (a folder of class sub-folders of images)")?;
    let run_dir = args.out.clone().context("--out is required (the run directory to create)")?;
    let arch = match (&args.init, &args.arch) {
        (_, Some(a)) => a.parse()?,
        (Some(init), None) => arch_of(init)?,
        (None, None) => unreachable!("called with --init or --arch"),
    };
    let config = MlpFitConfig {
        init: args.init.clone(),
        arch,
        data,
        val: args.val.clone(),
        val_split: args.val_split.unwrap_or(0.2),
        epochs: args.epochs.unwrap_or(30),
        batch_size: args.batch_size.unwrap_or(32),
        lr: args.lr.unwrap_or(1e-3),
        seed: args.seed.unwrap_or(0),
    };
    if args.overwrite && run_dir.join("mlp.json").is_file() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    }
    let s = fit_mlp(&config, &run_dir, &TermReporter::new(), &default_device())?;
    let value = json!({
        "run": run_dir,
        "kind": s.kind,
        "init": s.config.init,
        "arch": s.config.arch,
        "epochs": s.config.epochs,
        "best_epoch": s.best_epoch,
        "best_val_accuracy": s.best_val_accuracy,
        "train_accuracy": s.train_accuracy,
        "n_train": s.n_train,
        "n_val": s.n_val,
        "train_seconds": s.seconds,
    });
    out.result(&value, || {
        let from = match &s.config.init { Some(r) => format!("pretrained {}", r.display()), None => "random initialisation".into() };
        let kept = match s.best_val_accuracy {
            Some(acc) => format!("best val accuracy {acc:.4} at epoch {}", s.best_epoch),
            None => format!("no validation data: keeping epoch {}", s.best_epoch),
        };
        format!("run {}: {} from {from}, {kept}, train accuracy {:.4} ({:.1} s)\n", run_dir.display(), s.config.arch, s.train_accuracy, s.seconds)
    });
    Ok(())
}

/// `fit --json`'s document, for image and text runs alike.
pub(super) fn summary_json(summary: &graft::train::fit::FitSummary) -> serde_json::Value {
    let skipped: Vec<_> = summary.skipped.iter().map(|s| json!({"file": s.path, "reason": s.reason})).collect();
    json!({
        "run": summary.run,
        "epochs": summary.epochs,
        "best_epoch": summary.best_epoch,
        "best_val_accuracy": summary.best_val_accuracy,
        "train_seconds": summary.train_seconds,
        "skipped": skipped,
        "cache": summary.cache,
        "trunk_images": summary.trunk_images,
        "stopped_early": summary.stopped_early,
        "trainable_params": summary.trainable_params,
    })
}
