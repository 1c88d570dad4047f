//! Command-line definitions (clap derive; doc comments become `--help`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Transfer learning: reuse a network trained on ImageNet for your own small dataset.
#[derive(Debug, Parser)]
#[command(name = "graft", version, about)]
pub struct Cli {
    /// Print one JSON document on stdout (progress and logs go to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch and verify a model's pretrained weights into graft's cache ($GRAFT_HOME).
    Pull(PullArgs),
    /// Classify images with a pretrained model (ImageNet top-k).
    Predict(PredictArgs),
    /// Show a model's layers, output shapes, parameters and what a freeze spec freezes.
    Inspect(InspectArgs),
    /// Measure speed (a benchmark, not a test).
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Model id, e.g. efficientnet-lite0.
    pub model: String,
    /// Download again even when a verified copy is cached.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Model id, e.g. efficientnet-lite0.
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    /// Use this weights file (.pth, safetensors) instead of the cached pull.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// How many classes to list per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model id, e.g. efficientnet-lite0.
    pub model: String,
    /// Freeze spec: all, none, N (stem + first N blocks), regex:PATTERN, until:LAYER.
    #[arg(long, default_value = "none")]
    pub freeze: String,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub case: BenchCase,
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchCase {
    /// Full forward pass, random weights of the model's architecture, images/s.
    Forward,
}
