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
        // Any other flag would be silently ignored: the run continues with its saved config.
        let ignored = settings_given(args);
        anyhow::ensure!(ignored.is_empty(), "--resume continues {} with its saved config.toml; {} cannot change it (only --epochs may be given: the run's new total)", run.display(), ignored.join(", "));
        let mut config = FitConfig::from_toml(&run.join("config.toml"))?;
        // A finished run trains on to the new total (Keras' initial_epoch).
        if let Some(v) = args.epochs { config.set_total_epochs(v)?; }
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
    // After the stages: with stages, --epochs is their total (the last stage takes the rest).
    if let Some(v) = args.epochs { c.set_total_epochs(v)?; }
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
    if let Some(v) = &args.monitor { c.monitor = v.parse()?; }
    if let Some(v) = args.patience { c.patience = Some(v); }
    if let Some(v) = args.min_delta { c.min_delta = v; }
    if let Some(v) = args.reduce_on_plateau { c.reduce_on_plateau = Some(v); }
    if let Some(v) = args.seed { c.seed = v; }
    Ok((c, out, false))
}

/// The flags given that set a training setting, other than `--epochs`.
fn settings_given(args: &FitArgs) -> Vec<&'static str> {
    let mut given = Vec::new();
    macro_rules! given {
        ($($field:ident => $flag:literal),* $(,)?) => {
            $(if args.$field.is_some() { given.push($flag); })*
        };
    }
    given!(
        model => "--model", arch => "--arch", weights => "--weights", data => "--data", val => "--val",
        val_split => "--val-split", freeze => "--freeze", head => "--head", head_pool => "--head-pool",
        dropout => "--dropout", batch_size => "--batch-size", lr => "--lr", optimizer => "--optimizer",
        momentum => "--momentum", weight_decay => "--weight-decay", schedule => "--schedule", warmup => "--warmup",
        body_lr_mult => "--body-lr-mult", stages => "--stages", label_smoothing => "--label-smoothing",
        class_weights => "--class-weights", augment => "--augment", cache => "--cache", cache_views => "--cache-views",
        cache_dtype => "--cache-dtype", monitor => "--monitor", patience => "--patience", min_delta => "--min-delta",
        reduce_on_plateau => "--reduce-on-plateau", seed => "--seed", strategy => "--strategy", init => "--init",
    );
    for (set, flag) in [(args.from_scratch, "--from-scratch"), (args.train_bn, "--train-bn"), (args.overwrite, "--overwrite")] {
        if set {
            given.push(flag);
        }
    }
    given
}

pub fn run(args: FitArgs, out: &Output) -> anyhow::Result<()> {
    crate::reporter::stop_on_ctrl_c();
    let mlp = args.init.is_some() || args.arch.as_deref().is_some_and(|a| a.starts_with("mlp"));
    let result = fit_any(args, out);
    crate::reporter::exit_if_interrupted(result, |run| {
        if mlp {
            format!("{} is incomplete (an MLP fit cannot resume); run the same command again", run.display())
        } else {
            format!("resume with graft fit --resume {}", run.display())
        }
    })
}

fn fit_any(args: FitArgs, out: &Output) -> anyhow::Result<()> {
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
        let kept = kept_line(&summary);
        let mut t = format!("run {}: {} epochs, {kept} ({:.1} s training)\n", summary.run.display(), summary.epochs, summary.train_seconds);
        if !summary.skipped.is_empty() {
            // Each was named on stderr as the fit started.
            t.push_str(&format!("skipped {} unreadable files (named above)\n", summary.skipped.len()));
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
    if args.overwrite && graft::manifest::RunManifest::file(&run_dir).is_some() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    }
    let s = fit_mlp(&config, &run_dir, &TermReporter::new(), &default_device())?;
    let value = json!({
        "run": run_dir,
        "kind": "mlp",
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

/// Which epoch was kept and why, for the human summary of image and text runs.
pub(super) fn kept_line(summary: &graft::train::fit::FitSummary) -> String {
    match (summary.best_val_accuracy, summary.monitor, summary.best_val_loss) {
        (Some(acc), Some(monitor), Some(loss)) => {
            format!("kept epoch {} by {} (val loss {loss:.4}, val accuracy {acc:.4})", summary.best_epoch, monitor.name())
        }
        (Some(acc), _, _) => format!("best val accuracy {acc:.4} at epoch {}", summary.best_epoch),
        (None, _, _) => format!("no validation data: keeping epoch {}", summary.best_epoch),
    }
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
        "monitor": summary.monitor,
        "best_val_loss": summary.best_val_loss,
        "data": {
            "classes": summary.classes,
            "train": summary.data.train_per_class.iter().sum::<usize>(),
            "val": summary.data.val_per_class.iter().sum::<usize>(),
            "train_per_class": summary.data.train_per_class,
            "val_per_class": summary.data.val_per_class,
            "skipped": summary.data.skipped,
        },
    })
}
