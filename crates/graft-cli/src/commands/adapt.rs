//! `graft adapt` (owned by the domain-adaptation work).

use crate::output::Output;

/// Arguments of `graft adapt`.
#[derive(Debug, clap::Args)]
pub struct AdaptArgs {}

pub fn run(_args: AdaptArgs, _out: &Output) -> anyhow::Result<()> {
    anyhow::bail!("graft adapt is not implemented yet")
}
