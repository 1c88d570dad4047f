//! `graft probe`: a logistic probe at every stage of a pretrained trunk.

use std::path::PathBuf;

use graft::transfer::probe::{plot, probe, Validation};
use graft::zoo::{graft_home, ModelSpec, Pretrained};
use serde_json::json;

use crate::output::Output;
use crate::reporter::TermReporter;

/// Arguments of `graft probe`.
///
/// Each image goes through the trunk once; the globally-average-pooled activations after every
/// stage (the stem, every block, the head convolution where there is one; named as the
/// architecture names those layers) are stored in the feature cache (a rerun runs no trunk),
/// and a logistic regression (L-BFGS, L2, C = 1) per layer is scored on the validation
/// images. The recommended cut is the best accuracy, the shallower layer on a tie.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Pretrained model id (see `graft pull`).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    // The architectures are listed from the registry (`graft::zoo::MODELS`).
    #[arg(long, conflicts_with = "model", help = crate::help::arch_help())]
    pub arch: Option<String>,
    /// Weights file (.pth, safetensors, Keras .h5) instead of the cached pull. [default: the
    /// cached pull]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Training images: a folder of class sub-folders.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation folder (same class names). [default: hold out --val-split of --data]
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Fraction of each class held out for validation (stratified, seeded).
    #[arg(long, default_value_t = 0.3, conflicts_with = "val")]
    pub val_split: f64,
    /// Random seed (validation split, probe training).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a PNG plot of accuracy against depth here. [default: none: no plot]
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, visible_alias = "batch-size", default_value_t = 16)]
    pub batch: usize,
}

/// What to probe, resolved from the flags (nothing is loaded or run).
struct Settings {
    spec: &'static ModelSpec,
    weights: Option<PathBuf>,
    data: PathBuf,
    validation: Validation,
    plot_file: Option<PathBuf>,
    batch: usize,
}

/// Every flag is named here, so a new one fails to compile until it is resolved.
fn resolve(args: ProbeArgs) -> anyhow::Result<Settings> {
    let ProbeArgs { device: _, model, arch, weights, data, val, val_split, seed, plot, batch } = args;
    let spec = super::model_spec(&model, arch.as_deref(), weights.as_deref())?;
    let validation = match val {
        Some(dir) => Validation::Folder(dir),
        None => Validation::Split { fraction: val_split, seed },
    };
    Ok(Settings { spec, weights, data, validation, plot_file: plot, batch })
}

pub fn run(args: ProbeArgs, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let Settings { spec, weights, data, validation, plot_file, batch } = resolve(args)?;
    let reporter = TermReporter::new();
    let home = graft_home();
    let model = Pretrained::load(spec, weights.as_deref(), &home, &reporter, &device)?;
    let s = probe(&model, &data, &validation, &home, batch, &device, &reporter)?;
    if let Some(path) = &plot_file {
        plot(&s, path)?;
    }
    let best = &s.layers[s.best];
    let skipped: Vec<_> = s.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect();
    let value = json!({
        "model": s.model,
        "layers": s.layers.iter().map(|l| json!({"name": l.name, "stage": l.stage, "dim": l.dim, "accuracy": l.accuracy})).collect::<Vec<_>>(),
        "best": {"name": best.name, "stage": best.stage, "dim": best.dim, "accuracy": best.accuracy},
        "n_train": s.n_train,
        "n_val": s.n_val,
        "trunk_images": s.trunk_images,
        "plot": plot_file,
        "skipped": skipped,
    });
    out.result(&value, || {
        let mut t = format!("{}: logistic probe, {} training / {} validation images\n", s.model, s.n_train, s.n_val);
        t.push_str(&format!("{:<6} {:<26} {:>5} {:>9}\n", "stage", "layer", "dim", "accuracy"));
        for l in &s.layers {
            let mark = if l.stage == best.stage { "  ← best" } else { "" };
            t.push_str(&format!("{:<6} {:<26} {:>5} {:>9.4}{mark}\n", l.stage, l.name, l.dim, l.accuracy));
        }
        t.push_str(&format!("recommended cut: {} (stage {}, accuracy {:.4})\n", best.name, best.stage, best.accuracy));
        if let Some(p) = &plot_file {
            t.push_str(&format!("plot: {}\n", p.display()));
        }
        t
    });
    Ok(())
}
