use graft::zoo::{graft_home, pull, ModelSpec};
use serde_json::json;

use crate::cli::PullArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: PullArgs, out: &Output) -> anyhow::Result<()> {
    // Every flag is named here, so a new one fails to compile until it is used.
    let PullArgs { model, force } = args;
    if model == graft::text::pull::MINILM_ID {
        return pull_text(force, out);
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

/// `graft pull minilm-l6`: weights and tokenizer, both checked against their pinned sha256.
fn pull_text(force: bool, out: &Output) -> anyhow::Result<()> {
    let home = graft_home();
    let reporter = TermReporter::new();
    let pulled = match graft::text::pull::cached_minilm(&home) {
        Some(cached) if !force => cached,
        _ => graft::text::pull::pull_minilm(&home, &reporter)?,
    };
    let tokenizer = graft::text::pull::tokenizer_path(&pulled);
    let value = json!({
        "model": graft::text::pull::MINILM_ID, "path": pulled.path, "sha256": pulled.sha256,
        "tokenizer": tokenizer, "tokenizer_sha256": graft::text::pull::MINILM_TOKENIZER_SHA256, "fetched": pulled.fetched,
    });
    out.result(&value, || {
        let verb = if pulled.fetched { "pulled" } else { "already cached" };
        format!(
            "{}: {verb}\n  path      {}\n  sha256    {}\n  tokenizer {}\n",
            graft::text::pull::MINILM_ID,
            pulled.path.display(),
            pulled.sha256,
            tokenizer.display()
        )
    });
    Ok(())
}
