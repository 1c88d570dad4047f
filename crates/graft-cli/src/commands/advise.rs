//! `graft advise`: the transfer strategy for a dataset, from measured size and similarity.

use std::path::PathBuf;

use graft::transfer::advise::{advise, Advice};
use graft::zoo::{graft_home, ModelSpec, Pretrained};
use serde_json::json;

use crate::output::Output;
use crate::reporter::TermReporter;

/// Arguments of `graft advise`.
///
/// Size: the median number of images per class (small below 100). Similarity: the mean
/// normalised entropy of the pretrained classifier's predictions on --sample images
/// (similar below 0.47; see docs/transferability.md for the measurements behind the threshold).
#[derive(Debug, clap::Args)]
pub struct AdviseArgs {
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
    /// A folder of class sub-folders.
    #[arg(long)]
    pub data: PathBuf,
    /// Images (spread over the classes, seeded) on which the similarity is measured.
    #[arg(long, default_value_t = 200)]
    pub sample: usize,
    /// Random seed (which images are sampled).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, visible_alias = "batch-size", default_value_t = 16)]
    pub batch: usize,
}

/// Measures and advises (shared with `graft fit --strategy auto`).
pub fn measure(model: &str, weights: Option<&std::path::Path>, data: &std::path::Path, sample: usize, seed: u64, batch: usize, device: &burn::tensor::Device) -> anyhow::Result<Advice> {
    let spec = ModelSpec::find(model)?;
    let reporter = TermReporter::new();
    let home = graft_home();
    let pretrained = Pretrained::load(spec, weights, &home, &reporter, device)?;
    Ok(advise(&pretrained, data, sample, seed, &home, batch, device, &reporter)?)
}

/// What to measure, resolved from the flags (nothing is loaded or run).
struct Settings {
    model: &'static str,
    weights: Option<PathBuf>,
    data: PathBuf,
    sample: usize,
    seed: u64,
    batch: usize,
}

/// Every flag is named here, so a new one fails to compile until it is resolved.
fn resolve(args: AdviseArgs) -> anyhow::Result<Settings> {
    let AdviseArgs { device: _, model, arch, weights, data, sample, seed, batch } = args;
    let model = super::model_spec(&model, arch.as_deref(), weights.as_deref())?.id;
    Ok(Settings { model, weights, data, sample, seed, batch })
}

pub fn run(args: AdviseArgs, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let Settings { model, weights, data, sample, seed, batch } = resolve(args)?;
    let a = measure(model, weights.as_deref(), &data, sample, seed, batch, &device)?;
    let mut value = serde_json::to_value(&a)?;
    value["skipped"] = json!(a.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect::<Vec<_>>());
    out.result(&value, || {
        let mut t = format!("strategy: {}\n", a.strategy.name());
        t.push_str(&format!("images per class: {} (median; smallest {}), {} classes, {} images\n", a.images_per_class, a.min_images_per_class, a.classes, a.images));
        t.push_str(&format!("mean normalised entropy: {:.3} (on {} images)\n", a.mean_normalized_entropy, a.entropy_sample));
        t.push_str("because:\n");
        for r in &a.reasons {
            t.push_str(&format!("  - {r}\n"));
        }
        let stages: Vec<String> = a.settings.stages.iter().map(|s| format!("{}:{}", s.train, s.epochs)).collect();
        t.push_str(&format!(
            "graft fit --strategy auto uses: --freeze {} {}--body-lr-mult {} --lr {} --epochs {}\n",
            a.settings.freeze,
            if stages.is_empty() { String::new() } else { format!("--stages {} ", stages.join(",")) },
            a.settings.body_lr_mult,
            a.settings.lr,
            a.settings.epochs
        ));
        t
    });
    Ok(())
}
