pub mod adapt;
pub mod advise;
mod bench;
mod cache;
mod extract;
mod data;
mod eval;
mod fit;
mod inspect;
mod predict;
pub mod pretrain;
pub mod probe;
mod pull;

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
    }
}
