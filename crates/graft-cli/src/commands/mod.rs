pub mod adapt;
mod bench;
mod cache;
mod extract;
mod data;
mod eval;
mod fit;
mod inspect;
mod predict;
mod pull;
mod text;

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
    }
}
