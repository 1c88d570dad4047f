use graft::cache::extract::{extract, parse_shard};
use graft::data::folder::ImageFolder;
use graft::device::default_device;
use graft::zoo::{graft_home, Pretrained};
use serde_json::json;

use crate::cli::ExtractArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: ExtractArgs, out: &Output) -> anyhow::Result<()> {
    let spec = super::model_spec(&args.model, args.arch.as_deref())?;
    // A bad --layer fails before any work.
    graft::cache::extract::Cut::parse(&args.layer, &spec.config())?;
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let folder = ImageFolder::scan(&args.data)?;
    let device = default_device();
    let reporter = TermReporter::new();
    let model = Pretrained::load(spec, args.weights.as_deref(), &graft_home(), &reporter, &device)?;
    let s = extract(&model.net, &model.config, spec.id, &args.layer, &spec.preprocess(), &folder, shard, &args.out, args.batch, &device, &reporter)?;
    let skipped: Vec<_> = s.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect();
    let value = json!({"out": s.out, "n": s.n, "dim": s.dim, "shape": s.shape, "layer": args.layer, "skipped": skipped});
    out.result(&value, || format!("{}: {} images × {} values ({:?} each), {} skipped\n", s.out.display(), s.n, s.dim, s.shape, s.skipped.len()));
    Ok(())
}
