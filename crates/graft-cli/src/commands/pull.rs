use graft::zoo::{graft_home, pull, ModelSpec};
use serde_json::json;

use crate::cli::PullArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: PullArgs, out: &Output) -> anyhow::Result<()> {
    // Every flag is named here, so a new one fails to compile until it is used.
    let PullArgs { model, force } = args;
    if model == graft::text::pull::MINILM_ID {
        return super::text::pull(force, out);
    }
    let spec = ModelSpec::find(&model)?;
    let home = graft_home();
    let reporter = TermReporter::new();
    let pulled = match pull::cached(spec, &home) {
        Some(cached) if !force => cached,
        _ => pull::pull(spec, &home, &reporter)?,
    };
    let value = json!({"model": spec.id, "path": pulled.path, "sha256": pulled.sha256, "fetched": pulled.fetched});
    out.result(&value, || {
        let verb = if pulled.fetched { "pulled" } else { "already cached" };
        format!("{}: {verb}\n  path   {}\n  sha256 {}\n", spec.id, pulled.path.display(), pulled.sha256)
    });
    Ok(())
}
