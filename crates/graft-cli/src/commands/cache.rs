use graft::cache::parts::{find_parts, merge};
use graft::cache::store::list;
use graft::zoo::graft_home;
use serde_json::json;

use crate::cli::CacheCommand;
use crate::output::Output;

pub fn run(cmd: CacheCommand, out: &Output) -> anyhow::Result<()> {
    let root = graft_home().join("cache").join("features");
    // Each subcommand's fields are destructured completely (no `..`): a new flag fails to
    // compile until it is used. There is nothing else to resolve.
    match cmd {
        CacheCommand::Ls => {
            let spaces = list(&root)?;
            let value = json!({"root": root, "namespaces": spaces});
            out.result(&value, || {
                let mut t = format!("{}\n", root.display());
                for s in &spaces {
                    let (model, cut) = s.namespace.as_ref().map(|n| (n.model.as_str(), n.cut.as_str())).unwrap_or(("?", "?"));
                    t.push_str(&format!("  {}  {model:<20} {cut:<16} {} shards, {:.1} MB\n", s.id, s.shards, s.bytes as f64 / 1e6));
                }
                t
            });
        }
        CacheCommand::Clear { model } => {
            let mut removed = Vec::new();
            for s in list(&root)? {
                let matches = match (&model, &s.namespace) {
                    (None, _) => true,
                    (Some(m), Some(n)) => &n.model == m,
                    (Some(_), None) => false,
                };
                if matches {
                    let dir = root.join(&s.id);
                    std::fs::remove_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
                    removed.push(s.id);
                }
            }
            let value = json!({"removed": removed});
            out.result(&value, || format!("removed {} namespaces\n", removed.len()));
        }
        CacheCommand::Merge { out: file, parts } => {
            // Without a list, the parts are the ones `extract --shard … --out FILE` wrote beside FILE.
            let parts = if parts.is_empty() { find_parts(&file)? } else { parts };
            let m = merge(&parts, &file)?;
            let value = json!({"out": m.out, "n": m.n, "dim": m.dim, "parts": m.parts.len(), "files": m.parts});
            out.result(&value, || format!("{}: {} rows from {} parts\n", m.out.display(), m.n, m.parts.len()));
        }
    }
    Ok(())
}
