pub mod adapt;
mod adapt_classic;
pub mod advise;
mod bench;
mod cache;
mod extract;
pub mod fewshot;
mod data;
mod eval;
mod export;
mod fit;
mod inspect;
mod inspect_run;
pub mod lr_find;
mod predict;
pub mod pretrain;
pub mod probe;
mod pull;
mod serve;
pub mod study;
pub mod zeroshot;

use crate::cli::Command;
use crate::output::Output;

pub fn run(command: Command, out: &Output) -> anyhow::Result<()> {
    match command {
        Command::Pull(args) => pull::run(args, out),
        Command::Predict(args) => predict::run(args, out),
        Command::Inspect(args) => inspect::run(args, out),
        Command::Fit(args) => fit::run(*args, out),
        Command::Eval(args) => eval::run(args, out),
        Command::Adapt(args) => adapt::run(*args, out),
        Command::Data(cmd) => data::run(cmd, out),
        Command::Extract(args) => extract::run(args, out),
        Command::Cache(cmd) => cache::run(cmd, out),
        Command::Bench(args) => bench::run(args, out),
        Command::Probe(args) => probe::run(args, out),
        Command::Advise(args) => advise::run(args, out),
        Command::Pretrain(args) => pretrain::run(args, out),
        Command::LrFind(args) => lr_find::run(args, out),
        Command::Serve(args) => serve::run(args, out),
        Command::Export(args) => export::run(args, out),
        Command::Study(cmd) => study::run(cmd, out),
    }
}

/// The model a command runs: `--arch NAME` (an architecture for the user's own weights; a file
/// in another framework's names loads into that flavour of it, see `ModelSpec::for_weights`)
/// when given, else `--model ID`.
pub(crate) fn model_spec(model: &str, arch: Option<&str>) -> anyhow::Result<&'static graft::zoo::ModelSpec> {
    match arch {
        Some(arch) => {
            let archs = graft::zoo::user_archs();
            anyhow::ensure!(archs.contains(&arch), "invalid --arch `{arch}`: expected one of {}", archs.join(", "));
            Ok(graft::zoo::ModelSpec::find(arch)?)
        }
        None => Ok(graft::zoo::ModelSpec::find(model)?),
    }
}
