use std::path::PathBuf;

use graft::cache::extract::{extract, parse_shard};
use graft::data::folder::ImageFolder;
use graft::zoo::{graft_home, ModelSpec, Pretrained};
use serde_json::json;

use crate::cli::ExtractArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

/// What to extract, resolved from the flags (nothing is read or run).
struct Settings {
    spec: &'static ModelSpec,
    weights: Option<PathBuf>,
    layer: String,
    data: PathBuf,
    out: PathBuf,
    /// (i, n): part i of n.
    shard: Option<(usize, usize)>,
    batch: usize,
}

/// Every flag is named here, so a new one fails to compile until it is resolved. A bad
/// --layer or --shard fails here, before any work.
fn resolve(args: ExtractArgs) -> anyhow::Result<Settings> {
    let ExtractArgs { device: _, model, arch, weights, layer, data, out, shard, batch } = args;
    let spec = super::model_spec(&model, arch.as_deref())?;
    graft::cache::extract::Cut::parse(&layer, &spec.config())?;
    let shard = shard.as_deref().map(parse_shard).transpose()?;
    Ok(Settings { spec, weights, layer, data, out, shard, batch })
}

pub fn run(args: ExtractArgs, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let Settings { spec, weights, layer, data, out: file, shard, batch } = resolve(args)?;
    let folder = ImageFolder::scan(&data)?;
    let reporter = TermReporter::new();
    let model = Pretrained::load(spec, weights.as_deref(), &graft_home(), &reporter, &device)?;
    let s = extract(&model.net, &model.config, spec.id, &layer, &spec.preprocess(), &folder, shard, &file, batch, &device, &reporter)?;
    let skipped: Vec<_> = s.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect();
    let value = json!({"out": s.out, "n": s.n, "dim": s.dim, "shape": s.shape, "layer": layer, "skipped": skipped});
    out.result(&value, || format!("{}: {} images × {} values ({:?} each), {} skipped\n", s.out.display(), s.n, s.dim, s.shape, s.skipped.len()));
    Ok(())
}
