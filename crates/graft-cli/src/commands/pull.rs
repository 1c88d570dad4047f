use graft::zoo::{graft_home, pull, ModelSpec};
use serde_json::json;

use crate::cli::PullArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: PullArgs, out: &Output) -> anyhow::Result<()> {
    if args.model == graft::text::pull::MINILM_ID {
        return super::text::pull(&args, out);
    }
    let spec = ModelSpec::find(&args.model)?;
    let home = graft_home();
    let reporter = TermReporter::new();
    let pulled = match pull::cached(spec, &home) {
        Some(cached) if !args.force => cached,
        _ => pull::pull(spec, &home, &reporter)?,
    };
    let value = json!({"model": spec.id, "path": pulled.path, "sha256": pulled.sha256, "fetched": pulled.fetched});
    out.result(&value, || {
        let verb = if pulled.fetched { "pulled" } else { "already cached" };
        format!("{}: {verb}\n  path   {}\n  sha256 {}\n", spec.id, pulled.path.display(), pulled.sha256)
    });
    Ok(())
}
