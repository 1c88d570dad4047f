//! `graft inspect --run RUN`: what a trained run holds — its kind, model and classes, the
//! settings it was trained with, how far training got, and its checkpoints.

use std::path::Path;

use graft::manifest::RunManifest;

use serde_json::{json, Map, Value};

use crate::output::Output;

/// The run files `inspect --run` reports on, in the order shown.
const RUN_FILES: [&str; 10] = [
    "model.json", "config.toml", "metrics.jsonl", "summary.json", "best.safetensors", "last.safetensors", "classic.safetensors", "encoder.safetensors",
    // Where MLP and pretraining runs written before run format 2 kept their description.
    "mlp.json", "pretrain.json",
];

/// Largest run file read for display: model.json, config.toml and summary.json are a few KiB.
const MAX_RUN_FILE_BYTES: u64 = 16 << 20;

pub fn run(dir: &Path, out: &Output) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "{}: not a run directory", dir.display());
    // What made the run, from the description `eval` and `predict` read.
    let manifest = RunManifest::load(dir)?;
    let kind = manifest.describe();
    let model = serde_json::to_value(&manifest)?;
    // model.json, or for an older MLP or pretraining run its mlp.json / pretrain.json.
    let described_in = RunManifest::file(dir).and_then(|f| f.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "model.json".into());
    let config = match read_text(&dir.join("config.toml"))? {
        Some(text) => {
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                let msg = e.message().chars().take(200).collect::<String>();
                anyhow::anyhow!("{}: not a TOML config: {msg}", dir.join("config.toml").display())
            })?;
            serde_json::to_value(table)?
        }
        None => Value::Null,
    };
    let epochs_done = read_text(&dir.join("metrics.jsonl"))?.map(|m| m.lines().filter(|l| !l.trim().is_empty()).count()).unwrap_or(0);
    let summary = match dir.join("summary.json").is_file() {
        true => read_json(&dir.join("summary.json"))?,
        false => Value::Null,
    };
    let files: Vec<Value> = RUN_FILES
        .iter()
        .filter_map(|f| std::fs::symlink_metadata(dir.join(f)).ok().filter(|m| m.is_file()).map(|m| json!({"file": f, "bytes": m.len()})))
        .collect();
    // An MLP fit and a pretraining write their description last, and no summary.json.
    let finished = !summary.is_null()
        || matches!(manifest, RunManifest::Mlp(_) | RunManifest::Words(_))
        || matches!(&manifest, RunManifest::Pretrain(p) if !p.layers.is_empty())
        || matches!(&manifest, RunManifest::TextPretrain(p) if p.epochs > 0)
        || matches!(&manifest, RunManifest::TrunkPretrain(p) if p.trunk_weights.is_some());
    let value = json!({
        "run": dir, "kind": kind, "finished": finished, "epochs_done": epochs_done,
        "model": model, "config": config, "summary": summary, "files": files,
    });
    out.result(&value, || {
        let mut t = format!("run {}\n  kind        {kind}\n", dir.display());
        t.push_str(&format!("  state       {}\n", if finished { "finished" } else { "unfinished (no summary.json): resume it with `graft fit --resume`" }));
        t.push_str(&format!("  epochs done {epochs_done}\n"));
        if let Some(obj) = model.as_object() {
            t.push_str(&format!("{described_in}\n"));
            push_fields(&mut t, obj);
        }
        if let Some(obj) = summary.as_object() {
            t.push_str("summary.json\n");
            push_fields(&mut t, obj);
        }
        if let Some(obj) = config.as_object() {
            t.push_str("config.toml\n");
            push_fields(&mut t, obj);
        }
        t.push_str("files\n");
        for f in &files {
            t.push_str(&format!("  {:<18} {:>12} bytes\n", f["file"].as_str().unwrap_or("?"), f["bytes"]));
        }
        t
    });
    Ok(())
}

/// `key  value` lines; long values (lists of classes, nested tables) are cut to one line.
fn push_fields(t: &mut String, obj: &Map<String, Value>) {
    for (key, v) in obj {
        let shown = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let cut: String = shown.chars().take(100).collect();
        let ellipsis = if cut.len() < shown.len() { "…" } else { "" };
        t.push_str(&format!("  {key:<18} {cut}{ellipsis}\n"));
    }
}

fn read_text(path: &Path) -> anyhow::Result<Option<String>> {
    let Ok(meta) = std::fs::metadata(path) else { return Ok(None) };
    anyhow::ensure!(meta.is_file(), "{}: not a regular file", path.display());
    anyhow::ensure!(meta.len() <= MAX_RUN_FILE_BYTES, "{}: {} bytes, more than a run's file holds ({MAX_RUN_FILE_BYTES})", path.display(), meta.len());
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = read_text(path)?.ok_or_else(|| anyhow::anyhow!("{}: missing", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))
}
