use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::Device;
use graft::cache::StoreDtype;
use graft::data::augment::Augment;
use graft::train::config::{CacheMode, ClassWeights, FitConfig, Monitor, Optimizer, Stage, TaskSpec};
use graft::train::model::{HeadPool, HeadSpec};
use graft::train::schedule::Schedule;
use graft::train::semi::{relabel, SemiConfig, SemiMethod};
use graft::transfer::autoencoder::{DigitArch, MlpFitConfig, PretrainSummary};
use graft::transfer::corrupt::WordFitConfig;
use graft::zoo::layers::FreezeSpec;
use graft::train::fit::fit_on;
use graft::zoo::graft_home;
use serde_json::json;

use crate::cli::{FitArgs, LrArg};
use crate::output::Output;
use crate::reporter::TermReporter;

/// What `graft fit` was asked to do, resolved from its flags with no work done yet.
enum Plan {
    /// An image or text fit. `config` holds the settings that come before the strategy (the
    /// config file's, the data and model flags); `flags` the flags that win over it.
    /// `lr_auto`: `--lr auto`, the rate is found by the range test before training.
    Fit { config: Box<FitConfig>, flags: Box<Flags>, auto: bool, lr_auto: bool, run_dir: PathBuf, resume: bool, overwrite: bool },
    /// `--init RUN` (a pretrained MLP or small CNN) or `--arch mlp:…|small-cnn` (random init).
    Mlp(MlpPlan),
}

/// An MLP fit: [`MlpFitConfig`] but for `arch`, which is `None` with `--init` alone (the run step
/// reads it from the pretrained run).
struct MlpPlan {
    init: Option<PathBuf>,
    activation: graft::transfer::autoencoder::Activation,
    weights: Option<PathBuf>,
    restore: Option<String>,
    /// A regex over the layer names (`--freeze regex:PATTERN`).
    freeze: Option<String>,
    /// `--freeze all`: only a corrupted-text run's classifier trains (its word encoder frozen).
    freeze_all: bool,
    arch: Option<DigitArch>,
    data: PathBuf,
    val: Option<PathBuf>,
    val_split: f64,
    epochs: usize,
    batch_size: usize,
    lr: f64,
    seed: u64,
    run_dir: PathBuf,
    overwrite: bool,
    /// With `--init` a corrupted-text run: its network from a random start.
    from_scratch: bool,
}

/// Training flags, parsed, applied over the config file's (and `--strategy auto`'s) settings.
#[derive(Default)]
struct Flags {
    freeze: Option<FreezeSpec>,
    head: Option<HeadSpec>,
    head_pool: Option<HeadPool>,
    dropout: Option<f64>,
    batch_size: Option<usize>,
    lr: Option<f64>,
    optimizer: Option<Optimizer>,
    momentum: Option<f64>,
    weight_decay: Option<f64>,
    schedule: Option<Schedule>,
    warmup: Option<f64>,
    body_lr_mult: Option<f64>,
    stages: Option<Vec<Stage>>,
    epochs: Option<usize>,
    label_smoothing: Option<f64>,
    class_weights: Option<ClassWeights>,
    augment: Option<Augment>,
    cache: Option<CacheMode>,
    cache_views: Option<usize>,
    cache_dtype: Option<StoreDtype>,
    monitor: Option<Monitor>,
    patience: Option<usize>,
    min_delta: Option<f64>,
    reduce_on_plateau: Option<usize>,
    seed: Option<u64>,
    semi: SemiFlags,
    tasks: Option<Vec<TaskSpec>>,
}

/// The semi-supervised flags, parsed; applied over a config file's `semi` table.
#[derive(Default)]
struct SemiFlags {
    unlabelled: Option<PathBuf>,
    method: Option<String>,
    threshold: Option<f64>,
    ema: Option<f64>,
    rampup_epochs: Option<f64>,
    ratio: Option<usize>,
    weight: Option<f64>,
    views: Option<usize>,
    weak: Option<Augment>,
    strong: Option<Augment>,
    align: Option<bool>,
}

impl SemiFlags {
    fn resolve(args: crate::cli::SemiArgs) -> anyhow::Result<Self> {
        let crate::cli::SemiArgs {
            unlabelled, method, threshold, ema, rampup_epochs, unlabelled_ratio, unlabelled_weight, unlabelled_views, weak_augment, strong_augment, align,
        } = args;
        Ok(SemiFlags {
            unlabelled,
            method,
            threshold,
            ema,
            rampup_epochs,
            ratio: unlabelled_ratio,
            weight: unlabelled_weight,
            views: unlabelled_views,
            weak: weak_augment.map(|v| relabel(v.parse(), "weak_augment")).transpose()?,
            strong: strong_augment.map(|v| relabel(v.parse(), "strong_augment")).transpose()?,
            align: match align.as_deref() {
                None => None,
                Some("on") => Some(true),
                Some("off") => Some(false),
                Some(v) => anyhow::bail!("invalid --align `{v}`: expected on or off"),
            },
        })
    }

    fn any(&self) -> bool {
        let SemiFlags { unlabelled, method, threshold, ema, rampup_epochs, ratio, weight, views, weak, strong, align } = self;
        align.is_some() || unlabelled.is_some() || method.is_some() || threshold.is_some() || ema.is_some() || rampup_epochs.is_some() || ratio.is_some() || weight.is_some() || views.is_some() || weak.is_some() || strong.is_some()
    }

    fn apply(self, c: &mut FitConfig) -> anyhow::Result<()> {
        if !self.any() {
            return Ok(());
        }
        let base = c.semi.take();
        let SemiFlags { unlabelled, method, threshold, ema, rampup_epochs, ratio, weight, views, weak, strong, align } = self;
        let unlabelled = unlabelled.or(base.as_ref().map(|b| b.unlabelled.clone())).context("the semi-supervised flags need --unlabelled DIR")?;
        let method = match (method, &base) {
            (Some(name), _) => SemiMethod::new(&name, threshold, ema, rampup_epochs)?,
            (None, Some(b)) => {
                let (t, e, r) = match b.method {
                    SemiMethod::PseudoLabel { threshold: t } | SemiMethod::Fixmatch { threshold: t } => (threshold.or(Some(t)), ema, rampup_epochs),
                    SemiMethod::MeanTeacher { ema: e, rampup_epochs: r } => (threshold, ema.or(Some(e)), rampup_epochs.or(Some(r))),
                };
                SemiMethod::new(b.method.name(), t, e, r)?
            }
            (None, None) => anyhow::bail!("--unlabelled needs --method ({})", graft::train::semi::METHODS),
        };
        let mut s = base.unwrap_or_else(|| SemiConfig::new(unlabelled.clone(), method.clone()));
        s.unlabelled = unlabelled;
        s.method = method;
        if let Some(v) = ratio { s.ratio = v; }
        if let Some(v) = weight { s.weight = v; }
        if let Some(v) = views { s.views = v; }
        if let Some(v) = weak { s.weak = v; }
        if let Some(v) = strong { s.strong = v; }
        if let Some(v) = align { s.align = v; }
        c.semi = Some(s);
        Ok(())
    }
}

impl Flags {
    /// Sets each flag given on `c`, in the order that lets `--epochs` follow `--stages`.
    fn apply(self, c: &mut FitConfig) -> anyhow::Result<()> {
        let Flags {
            freeze, head, head_pool, dropout, batch_size, lr, optimizer, momentum, weight_decay, schedule, warmup,
            body_lr_mult, stages, epochs, label_smoothing, class_weights, augment, cache, cache_views, cache_dtype,
            monitor, patience, min_delta, reduce_on_plateau, seed, semi, tasks,
        } = self;
        semi.apply(c)?;
        if let Some(v) = tasks { c.tasks = v; }
        if let Some(v) = freeze { c.freeze = v; }
        if let Some(v) = head { c.head = v; }
        if let Some(v) = head_pool { c.head_pool = v; }
        if let Some(v) = dropout { c.dropout = v; }
        if let Some(v) = batch_size { c.batch_size = v; }
        if let Some(v) = lr { c.lr = v; }
        if let Some(v) = optimizer { c.optimizer = v; }
        match &mut c.optimizer {
            Optimizer::Sgd { momentum: m, weight_decay: w } => {
                if let Some(v) = momentum { *m = v; }
                if let Some(v) = weight_decay { *w = v; }
            }
            Optimizer::Adamw { weight_decay: w } => {
                anyhow::ensure!(momentum.is_none(), "--momentum applies to --optimizer sgd only");
                if let Some(v) = weight_decay { *w = v; }
            }
        }
        if let Some(v) = schedule { c.schedule = v; }
        if let Some(v) = warmup { c.warmup_epochs = v; }
        if let Some(v) = body_lr_mult { c.body_lr_mult = v; }
        if let Some(v) = stages { c.stages = v; }
        // After the stages: with stages, --epochs is their total (the last stage takes the rest).
        if let Some(v) = epochs { c.set_total_epochs(v)?; }
        if let Some(v) = label_smoothing { c.label_smoothing = v; }
        if let Some(v) = class_weights { c.class_weights = v; }
        if let Some(v) = augment { c.augment = v; }
        if let Some(v) = cache { c.cache = v; }
        if let Some(v) = cache_views { c.cache_views = v; }
        if let Some(v) = cache_dtype { c.cache_dtype = v; }
        if let Some(v) = monitor { c.monitor = v; }
        if let Some(v) = patience { c.patience = Some(v); }
        if let Some(v) = min_delta { c.min_delta = v; }
        if let Some(v) = reduce_on_plateau { c.reduce_on_plateau = Some(v); }
        if let Some(v) = seed { c.seed = v; }
        Ok(())
    }
}

/// Flags, then the config file, then defaults resolve into a [`Plan`]. Every flag is named
/// here, so a new one fails to compile until it is resolved. The only file read is the config
/// a flag names (`--config FILE`, or `--resume RUN`'s saved config.toml): its values are the
/// base the flags override, and a bad one is refused before any work.
fn resolve(args: FitArgs) -> anyhow::Result<Plan> {
    let FitArgs {
        device: _,
        model, arch, weights, restore, activation, from_scratch, data, out, val, val_split, freeze, head, head_pool, dropout, epochs,
        batch_size, lr, optimizer, momentum, weight_decay, schedule, warmup, body_lr_mult, stages, label_smoothing,
        class_weights, augment, cache, cache_views, cache_dtype, train_bn, monitor, patience, min_delta,
        reduce_on_plateau, seed, config, overwrite, strategy, init, resume, semi, tasks, task_weights,
    } = args;
    let semi = SemiFlags::resolve(semi)?;
    if init.is_some() || arch.as_deref().is_some_and(DigitArch::names) {
        anyhow::ensure!(!semi.any() && tasks.is_none(), "--unlabelled and --tasks apply to image and text fits, not to an MLP fit (--init, --arch mlp:…)");
        let data = data.context("--data is required (a folder of class sub-folders of images)")?;
        let run_dir = out.context("--out is required (the run directory to create)")?;
        anyhow::ensure!(!(init.is_some() && weights.is_some()), "--init and --weights both give the MLP's starting weights; give one");
        let activation = match activation {
            Some(a) => a.parse()?,
            None if weights.is_some() => graft::transfer::autoencoder::Activation::Relu,
            None => graft::transfer::autoencoder::Activation::Sigmoid,
        };
        let freeze_all = freeze.as_deref() == Some("all");
        let freeze = match freeze.as_deref().filter(|f| *f != "all") {
            None | Some("none") => None,
            Some(f) => match f.strip_prefix("regex:") {
                Some(p) => Some(p.to_string()),
                None => anyhow::bail!("invalid --freeze `{f}`: an MLP fit takes none or regex:PATTERN over its layer names (hidden1 … hiddenN, output)"),
            },
        };
        return Ok(Plan::Mlp(MlpPlan {
            init,
            activation,
            weights,
            restore,
            freeze,
            freeze_all,
            arch: arch.map(|a| a.parse()).transpose()?,
            data,
            val,
            val_split: val_split.unwrap_or(0.2),
            epochs: epochs.unwrap_or(30),
            batch_size: batch_size.unwrap_or(32),
            lr: match lr {
                None => 1e-3,
                Some(LrArg::Value(v)) => v,
                Some(LrArg::Auto) => anyhow::bail!("--lr auto applies to image fits of a pretrained trunk, not to an MLP fit (--init, --arch mlp:…)"),
            },
            seed: seed.unwrap_or(0),
            run_dir,
            overwrite,
            from_scratch,
        }));
    }
    if let Some(run) = resume {
        // Any other flag would be silently ignored: the run continues with its saved config.
        // (--config and --out conflict with --resume: clap refuses them.)
        let mut ignored = Vec::new();
        for (given, flag) in [
            (model.is_some(), "--model"), (arch.is_some(), "--arch"), (weights.is_some(), "--weights"), (data.is_some(), "--data"),
            (val.is_some(), "--val"), (val_split.is_some(), "--val-split"), (freeze.is_some(), "--freeze"), (head.is_some(), "--head"),
            (head_pool.is_some(), "--head-pool"), (dropout.is_some(), "--dropout"), (batch_size.is_some(), "--batch-size"),
            (lr.is_some(), "--lr"), (optimizer.is_some(), "--optimizer"), (momentum.is_some(), "--momentum"),
            (weight_decay.is_some(), "--weight-decay"), (schedule.is_some(), "--schedule"), (warmup.is_some(), "--warmup"),
            (body_lr_mult.is_some(), "--body-lr-mult"), (stages.is_some(), "--stages"), (label_smoothing.is_some(), "--label-smoothing"),
            (class_weights.is_some(), "--class-weights"), (augment.is_some(), "--augment"), (cache.is_some(), "--cache"),
            (cache_views.is_some(), "--cache-views"), (cache_dtype.is_some(), "--cache-dtype"), (monitor.is_some(), "--monitor"),
            (patience.is_some(), "--patience"), (min_delta.is_some(), "--min-delta"), (reduce_on_plateau.is_some(), "--reduce-on-plateau"),
            (seed.is_some(), "--seed"), (strategy.is_some(), "--strategy"), (init.is_some(), "--init"),
            (restore.is_some(), "--restore"), (activation.is_some(), "--activation"),
            (from_scratch, "--from-scratch"), (train_bn, "--train-bn"), (overwrite, "--overwrite"),
            (semi.any(), "--unlabelled (and the semi-supervised flags)"), (tasks.is_some(), "--tasks"),
        ] {
            if given {
                ignored.push(flag);
            }
        }
        anyhow::ensure!(ignored.is_empty(), "--resume continues {} with its saved config.toml; {} cannot change it (only --epochs may be given: the run's new total)", run.display(), ignored.join(", "));
        // Read here: the saved config is what the run continues with (see above).
        let config = FitConfig::from_toml(&run.join("config.toml"))?;
        // A finished run trains on to the new total (Keras' initial_epoch).
        let flags = Flags { epochs, ..Flags::default() };
        return Ok(Plan::Fit { config: Box::new(config), flags: Box::new(flags), auto: false, lr_auto: false, run_dir: run, resume: true, overwrite: false });
    }
    anyhow::ensure!(restore.is_none() && activation.is_none(), "--restore and --activation apply to an MLP fit (--arch mlp:…) only");
    // Read here: the file's values are the base the flags below override.
    let mut c = match &config {
        Some(path) => FitConfig::from_toml(path)?,
        None => {
            let data = data.clone().context("--data is required (a folder of class sub-folders of images; for a text model a CSV with text,label columns or class folders of .txt)")?;
            FitConfig::new(model.as_deref().unwrap_or("efficientnet-lite0"), data)
        }
    };
    if let Some(arch) = &arch {
        c.model = super::model_spec("", Some(arch), weights.as_deref().or(c.weights.as_deref()))?.id.to_string();
    }
    let run_dir = out.context("--out is required (the run directory to create)")?;
    if let Some(v) = model { c.model = v; }
    if let Some(v) = weights { c.weights = Some(v); }
    if from_scratch { c.from_scratch = true; }
    if train_bn { c.train_bn = true; }
    if let Some(v) = data { c.data = v; }
    if let Some(v) = val { c.val = Some(v); }
    if let Some(v) = val_split { c.val_split = v; }
    // Only recorded: the run step asks the advisor, whose settings go in before the flags
    // below, so flags given still win.
    let auto = match strategy.as_deref() {
        None => false,
        Some("auto") => true,
        Some(other) => anyhow::bail!("invalid --strategy `{other}`: expected auto"),
    };
    let flags = Flags {
        freeze: freeze.map(|v| v.parse()).transpose()?,
        head: head.map(|v| v.parse()).transpose()?,
        head_pool: head_pool.map(|v| v.parse()).transpose()?,
        dropout,
        batch_size,
        lr: match lr {
            Some(LrArg::Value(v)) => Some(v),
            _ => None,
        },
        optimizer: optimizer.map(|v| v.parse()).transpose()?,
        momentum,
        weight_decay,
        schedule: schedule.map(|v| v.parse()).transpose()?,
        warmup,
        body_lr_mult,
        stages: stages.map(|v| Stage::parse_list(&v)).transpose()?,
        epochs,
        label_smoothing,
        class_weights: match class_weights.as_deref() {
            None => None,
            Some("none") => Some(ClassWeights::None),
            Some("balanced") => Some(ClassWeights::Balanced),
            Some(v) => anyhow::bail!("invalid --class-weights `{v}`: expected none or balanced"),
        },
        augment: augment.map(|v| v.parse()).transpose()?,
        cache: match cache.as_deref() {
            None => None,
            Some("auto") => Some(CacheMode::Auto),
            Some("on") => Some(CacheMode::On),
            Some("off") => Some(CacheMode::Off),
            Some(v) => anyhow::bail!("invalid --cache `{v}`: expected auto, on or off"),
        },
        cache_views,
        cache_dtype: match cache_dtype.as_deref() {
            None => None,
            Some("f32") => Some(StoreDtype::F32),
            Some("f16") => Some(StoreDtype::F16),
            Some(v) => anyhow::bail!("invalid --cache-dtype `{v}`: expected f32 or f16"),
        },
        monitor: monitor.map(|v| v.parse()).transpose()?,
        patience,
        min_delta,
        reduce_on_plateau,
        seed,
        semi,
        tasks: tasks.map(|t| TaskSpec::parse_list(&t, task_weights.as_deref())).transpose()?,
    };
    Ok(Plan::Fit { config: Box::new(c), flags: Box::new(flags), auto, lr_auto: lr == Some(LrArg::Auto), run_dir, resume: false, overwrite })
}

pub fn run(args: FitArgs, out: &Output) -> anyhow::Result<()> {
    crate::reporter::stop_on_ctrl_c();
    let devices = args.device.devices()?;
    let plan = resolve(args)?;
    let mlp = matches!(plan, Plan::Mlp(_));
    let result = match plan {
        Plan::Fit { config, flags, auto, lr_auto, run_dir, resume, overwrite } => fit_image_or_text(*config, *flags, auto, lr_auto, run_dir, resume, overwrite, &devices, out),
        Plan::Mlp(plan) => fit_mlp(plan, &one_device(&devices, "an MLP fit")?, out),
    };
    crate::reporter::exit_if_interrupted(result, |run| {
        if mlp {
            format!("{} is incomplete (an MLP fit cannot resume); run the same command again", run.display())
        } else {
            format!("resume with graft fit --resume {}", run.display())
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn fit_image_or_text(mut config: FitConfig, flags: Flags, auto: bool, lr_auto: bool, run_dir: PathBuf, resume: bool, overwrite: bool, devices: &[Device], out: &Output) -> anyhow::Result<()> {
    let device = &devices[0];
    if auto {
        let c = &config;
        let advice = crate::commands::advise::measure(&c.model, c.weights.as_deref(), &c.data, 200, c.seed, 16, device)?;
        eprintln!("strategy auto: {} ({})", advice.strategy.name(), advice.reasons.join("; "));
        advice.apply(&mut config)?;
    }
    flags.apply(&mut config)?;
    if overwrite && run_dir.join("model.json").is_file() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    }
    if graft::text::is_text_model(&config.model) {
        anyhow::ensure!(!lr_auto, "--lr auto applies to image fits (the range test sweeps a head on a frozen image trunk): give --lr a number for a text fit");
        return fit_text_run(&config, &run_dir, resume, &one_device(devices, "a text fit")?, out);
    }
    let reporter = TermReporter::new();
    // --lr auto: the range test of this head on the frozen trunk's features, before the run
    // exists (a refused configuration leaves nothing behind).
    let found = if lr_auto {
        let found = graft::train::fit::lr_find(&config, &graft::train::lr_find::LrSweep::default(), &graft_home(), &reporter, &devices[0])?;
        eprintln!("lr auto: {:.2e} (the range test's valley; minimum / 10 {:.2e})", found.suggested, found.min_div_10);
        config.lr = found.suggested;
        Some(found)
    } else {
        None
    };
    let summary = fit_on(&config, &run_dir, resume, &graft_home(), &reporter, devices)?;
    let mut value = summary_json(&summary);
    if let Some(found) = &found {
        let (json_path, png) = (run_dir.join("lr-find.json"), run_dir.join("lr-find.png"));
        found.plot(&png)?;
        graft::fsutil::write_atomic(&json_path, &serde_json::to_vec_pretty(found)?)?;
        value["lr_find"] = super::lr_find::found_json(found, &[json_path, png]);
        value["lr"] = json!(config.lr);
    }
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

/// `graft fit --init RUN` (a pretrained MLP or small CNN) or `--arch mlp:…|small-cnn` (random init).
fn fit_mlp(plan: MlpPlan, device: &Device, out: &Output) -> anyhow::Result<()> {
    let MlpPlan { init, activation, weights, restore, freeze, freeze_all, arch, data, val, val_split, epochs, batch_size, lr, seed, run_dir, overwrite, from_scratch } = plan;
    if let Some(init) = init.as_ref().filter(|r| matches!(graft::manifest::RunManifest::load(r), Ok(graft::manifest::RunManifest::TextPretrain(_)))) {
        anyhow::ensure!(arch.is_none() && restore.is_none() && freeze.is_none(), "--arch, --restore and --freeze regex:… apply to an MLP fit; a corrupted-text run's word encoder trains whole, or not at all with --freeze all");
        let config = WordFitConfig { init: init.clone(), from_scratch, freeze_encoder: freeze_all, data, val, val_split, epochs, batch_size, lr, seed };
        return fit_words(&config, &run_dir, overwrite, device, out);
    }
    anyhow::ensure!(!freeze_all, "invalid --freeze `all`: an MLP fit takes none or regex:PATTERN over its layer names (hidden1 … hiddenN, output)");
    anyhow::ensure!(!from_scratch, "--from-scratch with --init applies to a corrupted-text run; for a randomly initialised MLP give --arch mlp:… without --init");
    let arch = match (arch, &init) {
        (Some(a), _) => a,
        (None, Some(init)) => PretrainSummary::load(init)?.config.arch,
        (None, None) => anyhow::bail!("an MLP fit needs --init RUN or --arch mlp:W1,W2,… (or small-cnn)"),
    };
    let config = MlpFitConfig { init, arch, data, val, val_split, epochs, batch_size, lr, seed, activation, weights, restore, freeze };
    if overwrite && graft::manifest::RunManifest::file(&run_dir).is_some() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    }
    let s = graft::transfer::autoencoder::fit_mlp(&config, &run_dir, &TermReporter::new(), device)?;
    let value = json!({
        "run": run_dir,
        "kind": "mlp",
        "init": s.config.init,
        "weights": s.config.weights,
        "restore": s.config.restore,
        "freeze": s.config.freeze,
        "activation": s.config.activation,
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
        let from = match (&s.config.init, &s.config.weights) {
            (Some(r), _) => format!("pretrained {}", r.display()),
            (None, Some(w)) => format!("layers restored from {}", w.display()),
            (None, None) => "random initialisation".into(),
        };
        let kept = match s.best_val_accuracy {
            Some(acc) => format!("best val accuracy {acc:.4} at epoch {}", s.best_epoch),
            None => format!("no validation data: keeping epoch {}", s.best_epoch),
        };
        format!("run {}: {} from {from}, {kept}, train accuracy {:.4} ({:.1} s)\n", run_dir.display(), s.config.arch, s.train_accuracy, s.seconds)
    });
    Ok(())
}

/// `graft fit --init RUN` from a corrupted-text run (`--from-scratch`: the same network, random).
fn fit_words(config: &WordFitConfig, run_dir: &std::path::Path, overwrite: bool, device: &Device, out: &Output) -> anyhow::Result<()> {
    if overwrite && graft::manifest::RunManifest::file(run_dir).is_some() {
        std::fs::remove_dir_all(run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    }
    let s = graft::transfer::corrupt::fit_words(config, run_dir, &TermReporter::new(), device)?;
    let mut value = serde_json::to_value(&s)?;
    value["run"] = json!(run_dir);
    value["kind"] = json!("words");
    out.result(&value, || {
        let from = if s.config.from_scratch { format!("random initialisation (the shape of {})", s.config.init.display()) } else { format!("pretrained {}", s.config.init.display()) };
        let kept = match (s.best_val_accuracy, s.last_val_accuracy) {
            (Some(best), Some(last)) => format!("best val accuracy {best:.4} at epoch {}, last epoch {last:.4}", s.best_epoch),
            _ => format!("no validation data: keeping epoch {}", s.best_epoch),
        };
        format!("run {}: {} from {from}, {kept}, train accuracy {:.4} ({:.1} s)\n", run_dir.display(), s.arch, s.train_accuracy, s.seconds)
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

/// `graft fit --model minilm-l6 --data FILE.csv|DIR`.
fn fit_text_run(config: &FitConfig, run_dir: &std::path::Path, resume: bool, device: &Device, out: &Output) -> anyhow::Result<()> {
    let reporter = TermReporter::new();
    let summary = graft::train::text::fit_text(config, run_dir, resume, &graft_home(), &reporter, device)?;
    let value = summary_json(&summary);
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

/// `graft fit`'s devices: an image fit takes a list (`wgpu:0,1`, data-parallel training);
/// text and MLP fits run on one, and refuse a list naming the setting.
fn one_device(devices: &[Device], what: &str) -> anyhow::Result<Device> {
    match devices {
        [one] => Ok(one.clone()),
        _ => Err(graft::GraftError::InvalidSetting {
            setting: graft::device::SETTING.into(),
            value: devices.iter().map(graft::device::record).collect::<Vec<_>>().join(","),
            reason: format!("{what} trains on one device; name one (several: an image fit)"),
        }
        .into()),
    }
}
