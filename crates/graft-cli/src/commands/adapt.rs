//! `graft adapt`: domain adaptation from a labelled source to an unlabelled target.

use std::path::PathBuf;

use graft::adapt::config::{AdaptConfig, Method};
use graft::zoo::graft_home;
use serde_json::json;

use crate::output::Output;
use crate::reporter::TermReporter;

/// Arguments of `graft adapt`.
///
/// Domains are image folders (class sub-folders; the target's may also be a flat folder of
/// images, its labels are never read) or the digit sets: mnist:train (10,000), mnist:test
/// (10,000), usps:train (7,291), usps:test (2,007), read from --data-root (where
/// `graft data import mnist|usps --source …` keeps them). Images are grey
/// 28×28, (x − 0.5)/0.5 for LeNet; a zoo model's frozen trunk gives pooled features otherwise.
/// The epoch is picked on a held-out part of the source (--select); the target test set is
/// evaluated once, at the end.
#[derive(Debug, clap::Args)]
pub struct AdaptArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// source-only, ddc, dan, coral, dann, adda, cdan, mcc, bsp, afn, mdd, daan, autodial or dsn (LeNet only); or a classic method on fixed features
    /// (--features): tca, jda, gfk, sa, coral-shallow, and the baselines none (the classifier
    /// alone) and pca. [default: none; required without --resume]
    #[arg(long, required_unless_present = "resume")]
    pub method: Option<String>,
    /// Labelled source domain: a folder or mnist:train, usps:train, ….
    /// [default: none; required without --resume]
    #[arg(long, required_unless_present = "resume")]
    pub source: Option<String>,
    /// Unlabelled target training domain (its labels are never read).
    /// [default: none; required without --resume]
    #[arg(long, required_unless_present = "resume")]
    pub target: Option<String>,
    /// Labelled target test set (a folder or mnist:test, usps:test, …), evaluated once with the
    /// kept model. [default: none]
    #[arg(long)]
    pub target_test: Option<String>,
    /// Run directory to create. [default: none; required without --resume]
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory after its last completed epoch, with its saved
    /// config.toml (a run killed at any moment finishes as if never interrupted); only --epochs
    /// may be given with it (the new total of the adversarial phase). [default: none]
    #[arg(long, conflicts_with_all = ["method", "source", "target", "target_test", "out", "backbone", "weights", "data_root", "bottleneck", "iters_per_epoch", "batch_size", "lr", "lr_schedule", "lr_gamma", "momentum", "weight_decay", "lambda", "lambda_schedule", "lambda_max_iters", "entropy", "disc_hidden", "pretrain_epochs", "adda_objective", "augment", "mcc_temperature", "bsp_k", "bsp_tradeoff", "afn_delta", "afn_entropy", "mdd_margin", "daan_local_hidden", "daan_omega", "autodial_alpha_init", "dsn_alpha", "dsn_beta", "dsn_gamma", "select", "val_split", "seed"])]
    pub resume: Option<PathBuf>,
    /// lenet (trained from scratch), a zoo model id (frozen trunk, trainable bottleneck), or
    /// minilm-l6: text domains (CSV text,label, class folders of .txt, amazon:DOMAIN from
    /// --data-root) embedded once by the frozen encoder (cached), trainable bottleneck.
    #[arg(long, default_value = "lenet")]
    pub backbone: String,
    /// Weights file (.pth, safetensors, Keras .h5) for a zoo backbone instead of the cached pull.
    /// [default: the cached pull]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Where mnist:…, usps:… and amazon:… are read from; `graft data import` keeps sets in
    /// $GRAFT_HOME/data.
    #[arg(long, default_value_os_t = graft::data::fetch::default_data_root())]
    pub data_root: PathBuf,
    /// Width of the bottleneck (linear → BatchNorm → ReLU) whose features are aligned.
    #[arg(long, default_value_t = 256)]
    pub bottleneck: usize,
    /// Training epochs (ADDA: of the adversarial phase); with --resume, the run's new total.
    /// [default: 20, or the resumed run's]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Iterations per epoch [default: one pass over the source training data].
    #[arg(long)]
    pub iters_per_epoch: Option<usize>,
    /// Images (or texts) per domain per training step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Initial learning rate (SGD, Nesterov momentum).
    #[arg(long, default_value_t = 0.01)]
    pub lr: f64,
    /// anneal (lr·(1 + 10p)^−0.75, p the progress), inv (lr·(1 + γi)^−0.75 per iteration i,
    /// TLlib's) or constant.
    #[arg(long, default_value = "anneal")]
    pub lr_schedule: String,
    /// γ of --lr-schedule inv.
    #[arg(long, default_value_t = 0.001)]
    pub lr_gamma: f64,
    /// Momentum of the SGD optimiser (Nesterov).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay (L2) of the SGD optimiser.
    #[arg(long, default_value_t = 1e-3)]
    pub weight_decay: f64,
    /// Weight of the adaptation loss [default: 1; coral 100, afn 0.05, autodial 0.1].
    #[arg(long)]
    pub lambda: Option<f64>,
    /// constant, dann (2/(1 + e^−10p) − 1) or warm-start (2/(1 + e^−i/M) − 1 per iteration i,
    /// TLlib's) [default: dann for dann, cdan, adda; constant otherwise].
    #[arg(long)]
    pub lambda_schedule: Option<String>,
    /// M of --lambda-schedule warm-start.
    #[arg(long, default_value_t = 1000)]
    pub lambda_max_iters: usize,
    /// CDAN+E: weigh examples by the confidence of their prediction.
    #[arg(long)]
    pub entropy: bool,
    /// Hidden width of the domain discriminator (MDD: of its adversarial head).
    #[arg(long, default_value_t = 1024)]
    pub disc_hidden: usize,
    /// ADDA: epochs of source pre-training before the adversarial phase [default: epochs / 2].
    /// The adversarial phase (--epochs) follows --adda-objective.
    #[arg(long)]
    pub pretrain_epochs: Option<usize>,
    /// ADDA's adversarial phase: gan (the paper's inverted-label GAN loss, Adam lr 2e-4) or
    /// reversal (TLlib's: one minimax loss through gradient reversal ramped to 2, SGD at --lr).
    #[arg(long, default_value = "gan")]
    pub adda_objective: String,
    /// Random transforms of each training image of both domains, LeNet only (`fit`'s syntax,
    /// e.g. rotate:10,zoom:0.2,shift:0.1); validation and test images are never transformed.
    #[arg(long, default_value = "none")]
    pub augment: String,
    /// MCC: temperature of the target softmax (the paper's 2.5); the loss's weight is --lambda
    /// (default 1).
    #[arg(long, default_value_t = 2.5)]
    pub mcc_temperature: f64,
    /// BSP: how many of the largest singular values of each domain's feature batch are penalised.
    #[arg(long, default_value_t = 1)]
    pub bsp_k: usize,
    /// BSP: weight of the spectral penalty (the paper's 2e-4); BSP trains on DANN, whose
    /// adversarial loss keeps --lambda (default 1) and its ramp.
    #[arg(long, default_value_t = 2e-4)]
    pub bsp_tradeoff: f64,
    /// AFN: the step Δr by which each feature norm is pushed up per iteration; the norm loss's
    /// weight is --lambda (default 0.05).
    #[arg(long, default_value_t = 1.0)]
    pub afn_delta: f64,
    /// AFN: weight of the target prediction entropy added to the loss (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub afn_entropy: f64,
    /// MDD: the margin γ; the loss's weight is --lambda (default 1), its gradient reversal ramps
    /// per iteration to 0.1 (warm-start, --lambda-max-iters).
    #[arg(long, default_value_t = 4.0)]
    pub mdd_margin: f64,
    /// DAAN: hidden width of each class's local discriminator (the global one has
    /// --disc-hidden); the adversarial loss keeps --lambda (default 1) and DANN's ramp.
    #[arg(long, default_value_t = 256)]
    pub daan_local_hidden: usize,
    /// DAAN: a fixed factor ω in [0, 1] weighing the local (class-conditional) against the
    /// global alignment, (1 − ω)·global + ω·local (0 is DANN). [default: dynamic, re-estimated
    /// after every epoch from the discriminators' proxy A-distances, starting at 0.5]
    #[arg(long)]
    pub daan_omega: Option<f64>,
    /// AutoDIAL: α of every domain alignment layer at the start, in [0.5, 1] (1: BatchNorm per
    /// domain, 0.5: shared statistics); α is then learned per layer. The target entropy's weight
    /// is --lambda (default 0.1). The run is a model for the target domain: eval and predict
    /// normalise with the target's statistics.
    #[arg(long, default_value_t = 1.0)]
    pub autodial_alpha_init: f64,
    /// DSN: weight α of the scale-invariant reconstruction loss (each image rebuilt by a shared
    /// decoder from its shared and private codes); all three DSN weights are times --lambda
    /// (default 1), the similarity's reversal ramps as DANN's.
    #[arg(long, default_value_t = 0.01)]
    pub dsn_alpha: f64,
    /// DSN: weight β of the difference loss (orthogonality of each domain's shared and private
    /// codes).
    #[arg(long, default_value_t = 0.075)]
    pub dsn_beta: f64,
    /// DSN: weight γ of the similarity loss (DANN's domain discriminator on the shared codes).
    #[arg(long, default_value_t = 0.25)]
    pub dsn_gamma: f64,
    /// How the kept epoch is chosen without target labels: source-val (best accuracy on the
    /// source split), dev (lowest importance-weighted source validation loss, DEV), reverse
    /// (reverse validation: a classifier trained on the network's target predictions, scored on
    /// the source split) or last [default: source-val; last for ADDA's adversarial phase].
    #[arg(long)]
    pub select: Option<String>,
    /// Fraction of the source held out (stratified, seeded) to pick the epoch; 0 keeps the last.
    #[arg(long, default_value_t = 0.1)]
    pub val_split: f64,
    /// Random seed (validation split, initialisation, shuffling, augmentation; the classic
    /// methods' --source-samples and --target-samples draws).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub classic: crate::commands::adapt_classic::ClassicArgs,
}

/// The flags as the library's [`AdaptConfig`], the run directory and whether it resumes. Every
/// flag is named here, so a new one fails to compile until it is resolved; nothing is run. With
/// `--resume`, the run's own config.toml is read (the one file read during resolution).
fn resolve(args: AdaptArgs) -> anyhow::Result<(AdaptConfig, PathBuf, bool)> {
    let AdaptArgs {
        device: _,
        method, source, target, target_test, out, resume, backbone, weights, data_root, bottleneck, epochs, iters_per_epoch,
        batch_size, lr, lr_schedule, lr_gamma, momentum, weight_decay, lambda, lambda_schedule, lambda_max_iters,
        entropy, disc_hidden, pretrain_epochs, adda_objective, augment, mcc_temperature, bsp_k, bsp_tradeoff, afn_delta,
        afn_entropy, mdd_margin, daan_local_hidden, daan_omega, autodial_alpha_init, dsn_alpha, dsn_beta, dsn_gamma, select, val_split, seed, classic,
    } = args;
    // The classic methods' flags mean nothing to a network method (nor to a resumed run).
    if let Some(flag) = classic.first_given() {
        anyhow::bail!("{flag} applies to the classic methods only (--method {})", graft::adapt::shallow::SHALLOW_METHODS);
    }
    if let Some(run) = resume {
        let mut config = AdaptConfig::from_toml(&run.join("config.toml"))?;
        if let Some(epochs) = epochs {
            // ADDA's pre-training keeps its length when the adversarial phase grows.
            config.pretrain_epochs = Some(config.pretrain_epochs());
            config.epochs = epochs;
        }
        return Ok((config, run, true));
    }
    let (Some(method), Some(source), Some(target), Some(out)) = (method, source, target, out) else {
        anyhow::bail!("--method, --source, --target and --out are required (or --resume RUN)");
    };
    let method: Method = method.parse()?;
    let mut c = AdaptConfig::new(method, &source, &target);
    c.target_test = target_test;
    c.data_root = data_root;
    c.backbone = backbone;
    c.weights = weights;
    c.bottleneck = bottleneck;
    c.epochs = epochs.unwrap_or(20);
    c.iters_per_epoch = iters_per_epoch;
    c.batch_size = batch_size;
    c.lr = lr;
    c.lr_schedule = lr_schedule.parse()?;
    c.lr_gamma = lr_gamma;
    c.momentum = momentum;
    c.weight_decay = weight_decay;
    c.lambda = lambda;
    c.lambda_schedule = lambda_schedule.as_deref().map(str::parse).transpose()?;
    c.lambda_max_iters = lambda_max_iters;
    c.entropy = entropy;
    c.disc_hidden = disc_hidden;
    c.pretrain_epochs = pretrain_epochs;
    c.adda_objective = adda_objective.parse()?;
    c.augment = augment.parse()?;
    c.mcc_temperature = mcc_temperature;
    c.bsp_k = bsp_k;
    c.bsp_tradeoff = bsp_tradeoff;
    c.afn_delta = afn_delta;
    c.afn_entropy = afn_entropy;
    c.mdd_margin = mdd_margin;
    c.daan_local_hidden = daan_local_hidden;
    c.daan_omega = daan_omega;
    c.autodial_alpha_init = autodial_alpha_init;
    c.dsn_alpha = dsn_alpha;
    c.dsn_beta = dsn_beta;
    c.dsn_gamma = dsn_gamma;
    c.select = select.as_deref().map(str::parse).transpose()?;
    c.val_split = val_split;
    c.seed = seed;
    Ok((c, out, false))
}

pub fn run(args: AdaptArgs, out: &Output) -> anyhow::Result<()> {
    if let Some(method) = args.method.as_deref().and_then(graft::adapt::shallow::ShallowMethod::parse) {
        return crate::commands::adapt_classic::run(args, method, out);
    }
    let device = args.device.device()?;
    let (config, run_dir, resume) = resolve(args)?;
    let reporter = TermReporter::new();
    crate::reporter::stop_on_ctrl_c();
    let s = match graft::adapt::adapt(&config, &run_dir, resume, &graft_home(), &reporter, &device) {
        Ok(s) => s,
        Err(e) => {
            drop(reporter);
            let next = |run: &std::path::Path| format!("resume with graft adapt --resume {}", run.display());
            return crate::reporter::exit_if_interrupted(Err(e.into()), next);
        }
    };
    let skipped: Vec<_> = s.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect();
    let mut value = json!({
        "run": s.run,
        "method": s.method,
        "backbone": s.backbone,
        "source": s.source,
        "target": s.target,
        "epochs": s.epochs,
        "best_epoch": s.best_epoch,
        "iterations": s.iterations,
        "lambda": s.lambda,
        "source_val_accuracy": s.source_val_accuracy,
        "n_source_train": s.n_source_train,
        "n_source_val": s.n_source_val,
        "n_target": s.n_target,
        "train_seconds": s.train_seconds,
        "wall_seconds": s.wall_seconds,
        "skipped": skipped,
    });
    if let Some(acc) = s.target_test_accuracy {
        value["target_test"] = json!(s.target_test);
        value["target_test_evaluation"] = json!(s.target_test_evaluation);
        value["target_test_accuracy"] = json!(acc);
        value["n_target_test"] = json!(s.n_target_test);
    }
    out.result(&value, || {
        let val = match s.source_val_accuracy {
            Some(a) => format!("source val accuracy {a:.4} at epoch {}", s.best_epoch),
            None => format!("no source validation: keeping epoch {}", s.best_epoch),
        };
        let mut t = format!("run {}: {} {} → {}, {val} ({:.1} s training)\n", s.run.display(), s.method, s.source, s.target, s.train_seconds);
        if let Some(acc) = s.target_test_accuracy {
            t.push_str(&format!("target test accuracy {acc:.4} on {} images\n", s.n_target_test));
        }
        if !s.skipped.is_empty() {
            t.push_str(&format!("skipped {} unreadable files\n", s.skipped.len()));
        }
        t
    });
    Ok(())
}
