//! `graft lr-find --data DIR`: the learning-rate range test of a new head on the frozen trunk's
//! features; prints the suggested rate (what `fit --lr auto` uses) and draws the loss curve.

use std::path::{Path, PathBuf};

use graft::train::config::{FitConfig, Optimizer};
use graft::train::lr_find::{LrFound, LrSweep};
use graft::zoo::graft_home;
use serde_json::json;

use crate::output::Output;
use crate::reporter::TermReporter;

#[derive(Debug, clap::Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Training images: a folder of class sub-folders (as for `graft fit`).
    #[arg(long)]
    pub data: PathBuf,
    /// Pretrained model id (see `graft pull`).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    /// Weights file instead of the cached pull [default: the cached pull].
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The head to sweep: linear or mlp:W1,W2,… (as `fit --head`; a classic head has no
    /// learning rate).
    #[arg(long, default_value = "linear")]
    pub head: String,
    /// Images per step (as `fit --batch-size`).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// sgd (momentum 0.9) or adamw (as `fit --optimizer`).
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// Fraction of the images held out as `fit --val-split` holds them out (they are not swept).
    #[arg(long, default_value_t = 0.2)]
    pub val_split: f64,
    /// Seed of the split, the head's initialisation and the batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// First learning rate of the sweep.
    #[arg(long, default_value_t = 1e-7)]
    pub lr_start: f64,
    /// Last learning rate of the sweep.
    #[arg(long, default_value_t = 10.0)]
    pub lr_end: f64,
    /// Steps (mini-batches) of the sweep; it stops earlier once the smoothed loss exceeds 4×
    /// its minimum.
    #[arg(long, default_value_t = 100)]
    pub lr_steps: usize,
    /// Where to draw the smoothed loss against the learning rate (PNG).
    #[arg(long, default_value = "lr-find.png", value_name = "FILE")]
    pub plot: PathBuf,
}

pub fn run(args: LrFindArgs, out: &Output) -> anyhow::Result<()> {
    // Every flag is used below: a new one fails to compile until it is.
    let LrFindArgs { device, data, model, weights, head, batch_size, optimizer, val_split, seed, lr_start, lr_end, lr_steps, plot } = args;
    let device = device.device()?;
    let mut config = FitConfig::new(&model, data);
    config.weights = weights;
    config.head = head.parse()?;
    config.batch_size = batch_size;
    config.optimizer = optimizer.parse::<Optimizer>()?;
    config.val_split = val_split;
    config.seed = seed;
    let sweep = LrSweep { start: lr_start, end: lr_end, steps: lr_steps, ..LrSweep::default() };
    let reporter = TermReporter::new();
    let found = graft::train::fit::lr_find(&config, &sweep, &graft_home(), &reporter, &device)?;
    found.plot(&plot)?;
    print_found(out, &found, &[plot]);
    Ok(())
}

/// The sweep's suggestion (and `written` files) for people, and the whole record in `--json`.
pub(crate) fn print_found(out: &Output, found: &LrFound, written: &[PathBuf]) {
    out.result(&found_json(found, written), || {
        let mut t = format!("suggested learning rate {:.2e} (valley)\n", found.suggested);
        t.push_str(&format!("  minimum / 10 {:.2e}, steepest descent {:.2e}\n", found.min_div_10, found.steepest));
        let stop = if found.diverged { "stopped where the loss blew up" } else { "no blow-up" };
        t.push_str(&format!(
            "  {} steps from {:.0e} to {:.2e} ({stop})\n",
            found.lrs.len(),
            found.sweep.start,
            found.lrs.last().copied().unwrap_or(found.sweep.start)
        ));
        for path in written {
            t.push_str(&format!("wrote {}\n", path.display()));
        }
        t
    });
}

pub(crate) fn found_json(found: &LrFound, written: &[PathBuf]) -> serde_json::Value {
    let mut v = json!(found);
    v["written"] = json!(written.iter().map(|p: &PathBuf| p.as_path()).collect::<Vec<&Path>>());
    v
}
