//! `graft study transferability`: Yosinski et al.'s layer-transfer study on a small CNN, LeNet-5
//! or ResNet-18.

use std::path::PathBuf;

use clap::Subcommand;
use graft::transfer::study::{transferability, StudyConfig};
use serde_json::json;

use crate::output::Output;
use crate::reporter::TermReporter;

#[derive(Debug, Subcommand)]
pub enum StudyCommand {
    /// Where features stop transferring (Yosinski et al., 2014): the classes split into halves
    /// A and B; base networks on each; for every layer boundary n, AnB, BnB (first n layers
    /// copied and frozen, the rest trained on B) and AnB+, BnB+ (all fine-tuned); tested on B's
    /// test images. Writes metrics.jsonl, transferability.png and summary.json into --out.
    Transferability(TransferabilityArgs),
}

#[derive(Debug, clap::Args)]
pub struct TransferabilityArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Training images: class folders of 28×28 grey images (at least 4 classes).
    #[arg(long)]
    pub data: PathBuf,
    /// Test images of the same classes (an image with a training image's content is left out).
    #[arg(long)]
    pub test: PathBuf,
    /// The study's folder (one engine run per training in runs/).
    #[arg(long)]
    pub out: PathBuf,
    /// The network, trained from scratch: small-cnn (conv 3×3 → 32, conv 3×3 → 64, fc 256, fc
    /// 128, output) or lenet (LeNet-5 with ReLU and max-pooling: conv 5×5 → 6, conv 5×5 → 16, fc
    /// 120, fc 84, output): 5 weight layers each, boundaries n = 1..4 between them; or resnet18
    /// (torchvision's ResNet-18, the grey images replicated to 3 channels at 28×28), studied at
    /// stage granularity: stem (conv1+bn1), layer1, layer2, layer3, layer4, fc, so n = 1..5
    /// (a frozen stage's BatchNorm keeps the base's running statistics).
    #[arg(long, default_value = "small-cnn")]
    pub arch: String,
    /// Seeds the split of the classes into A and B.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Seeds of the repeated trainings, comma-separated.
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
    /// Epochs of every training.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Images per training step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Learning rate (Adam) of every training.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Continue the study in --out: finished trainings are read back, an interrupted one
    /// continues [default: off; a folder holding a study is refused].
    #[arg(long)]
    pub resume: bool,
}

pub fn run(command: StudyCommand, out: &Output) -> anyhow::Result<()> {
    let StudyCommand::Transferability(args) = command;
    // Every flag is used below: a new one fails to compile until it is.
    let TransferabilityArgs { device, data, test, out: dir, arch, split_seed, seeds, epochs, batch_size, lr, resume } = args;
    let arch: graft::transfer::study::StudyArch = arch.parse()?;
    let seeds = seeds
        .split(',')
        .map(|s| s.trim().parse::<u64>().map_err(|_| anyhow::anyhow!("invalid --seeds `{seeds}`: expected whole numbers separated by commas")))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let device = device.device()?;
    let config = StudyConfig { data, test, split_seed, seeds, epochs, batch_size, lr, arch };
    crate::reporter::stop_on_ctrl_c();
    let summary = match transferability(&config, &dir, resume, &TermReporter::new(), &device) {
        Ok(s) => s,
        Err(e) => return crate::reporter::exit_if_interrupted(Err(e.into()), |run| format!("resume with the same command and --resume ({})", run.display())),
    };
    let written: Vec<PathBuf> = ["metrics.jsonl", "transferability.png", "summary.json"].iter().map(|f| dir.join(f)).collect();
    let mut value = serde_json::to_value(&summary)?;
    value["written"] = json!(written);
    out.result(&value, || {
        let mut t = format!("A: {}\nB: {}\n", summary.classes_a.join(", "), summary.classes_b.join(", "));
        t.push_str(&format!("groups (n copies the first n): {}\n\n", summary.groups.join(", ")));
        t.push_str("accuracy on B's test images (mean ± std over seeds)\n  n  ");
        let variants = ["BnB", "BnB+", "AnB", "AnB+"];
        for v in variants {
            t.push_str(&format!("{v:>16}"));
        }
        t.push('\n');
        let find = |v: &str, n: usize| summary.means.iter().find(|m| m.0 == v && m.1 == n).map(|m| format!("{:.4} ± {:.4}", m.2, m.3)).unwrap_or_default();
        for n in summary.arch.boundaries() {
            t.push_str(&format!("  {n}  "));
            for v in variants {
                t.push_str(&format!("{:>16}", find(v, n)));
            }
            t.push('\n');
        }
        t.push_str(&format!("  baseB {}, baseA (on A) {}\n\n", find("baseB", 0), find("baseA", 0)));
        for (finding, appears, why) in &summary.findings {
            t.push_str(&format!("{} {finding}: {why}\n", if *appears { "yes" } else { "no " }));
        }
        for path in &written {
            t.push_str(&format!("wrote {}\n", path.display()));
        }
        t
    });
    Ok(())
}
