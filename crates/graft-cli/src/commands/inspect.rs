use graft::zoo::layers::{summarize, FreezeSpec};
use graft::train::model::{Grafted, Head, HeadPool, HeadSpec};
use std::path::PathBuf;

use graft::zoo::{graft_home, ModelSpec, Pretrained};
use serde_json::json;

use crate::cli::InspectArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

/// What to inspect, resolved from the flags (nothing is read).
enum Inspect {
    /// `--run RUN`: what a run directory holds.
    Run(PathBuf),
    /// `--weights FILE` alone: the tensors a weights file holds.
    Weights(PathBuf),
    Model {
        spec: &'static ModelSpec,
        /// A weights file to check against the architecture.
        weights: Option<PathBuf>,
        freeze: FreezeSpec,
        /// With --classes: the new head, its pooling and the number of classes.
        grafted: Option<(HeadSpec, HeadPool, usize)>,
    },
}

/// Every flag is named here, so a new one fails to compile until it is resolved.
fn resolve(args: InspectArgs) -> anyhow::Result<Inspect> {
    let InspectArgs { device: _, model, run, arch, weights, freeze, head, classes, head_pool } = args;
    if let Some(run) = run {
        return Ok(Inspect::Run(run));
    }
    if let (None, None, Some(weights)) = (&model, &arch, &weights) {
        anyhow::ensure!(classes.is_none(), "--classes needs a model or --arch (with --weights alone, inspect lists the file's tensors)");
        return Ok(Inspect::Weights(weights.clone()));
    }
    let spec = super::model_spec(model.as_deref().unwrap_or(""), arch.as_deref())?;
    let freeze: FreezeSpec = freeze.parse()?;
    let grafted = match classes {
        None => None,
        Some(classes) => {
            let head: HeadSpec = head.as_deref().unwrap_or("linear").parse()?;
            let pool: HeadPool = head_pool.parse()?;
            anyhow::ensure!(classes >= 2, "invalid --classes `{classes}`: a classifier needs at least 2 classes");
            Some((head, pool, classes))
        }
    };
    Ok(Inspect::Model { spec, weights, freeze, grafted })
}

pub fn run(args: InspectArgs, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let (spec, weights, freeze, grafted) = match resolve(args)? {
        Inspect::Run(run) => return super::inspect_run::run(&run, out),
        Inspect::Weights(path) => return list_weights(&path, out),
        Inspect::Model { spec, weights, freeze, grafted } => (spec, weights, freeze, grafted),
    };
    // Loading checks every tensor's presence and shape, and tells which flavour of the
    // architecture (Keras's, Caffe's) and which name set (timm's) the file uses: its layers are
    // listed under that flavour's names, with its input configuration. The numbers are not
    // needed here.
    let loaded = match &weights {
        Some(weights) => Some(Pretrained::load(spec, Some(weights), &graft_home(), &TermReporter::new(), &device)?),
        None => None,
    };
    let spec = loaded.as_ref().map_or(spec, |p| p.spec);
    let config = spec.config();
    let mut rows = config.layer_rows();
    if let Some((head, pool, classes)) = grafted {
        // The grafted model: ImageNet classifier cut off, the new head in its place.
        rows.retain(|r| !r.is_head);
        let width = Grafted::head_input_width(pool, config.final_map());
        rows.extend(Head::rows(&head, width, classes));
    }
    let frozen = freeze.frozen_params(&rows)?;
    let summary = summarize(&rows, &frozen);

    let layers: Vec<_> = rows
        .iter()
        .map(|r| {
            let trainable: usize = r.params.iter().filter(|p| !p.buffer && !frozen.contains(&p.path)).map(|p| p.numel).sum();
            json!({
                "name": r.name,
                "kind": r.kind,
                "stage": config.stage_of(&r.name),
                "output_shape": r.output_shape,
                "params": r.num_params(),
                "buffers": r.num_buffers(),
                "trainable": trainable > 0,
                "trainable_params": trainable,
            })
        })
        .collect();
    let value = json!({
        "model": spec.id,
        "input_shape": [3, config.resolution(), config.resolution()],
        "freeze": freeze.to_string(),
        "layers": layers,
        "total_params": summary.total_params,
        "trainable_params": summary.trainable_params,
        "frozen_params": summary.frozen_params,
        "buffers": summary.buffers,
        "pretrained_cfg": loaded.as_ref().map_or_else(|| spec.pretrained_cfg(), Pretrained::pretrained_cfg),
    });
    out.result(&value, || {
        let mut t = format!("{:<34} {:<20} {:<18} {:>10}  {}\n", "layer", "kind", "output shape", "params", "state");
        t.push_str(&format!("{}\n", "-".repeat(94)));
        for (r, l) in rows.iter().zip(&layers) {
            let shape = format!("{:?}", r.output_shape);
            let state = match (r.num_params(), l["trainable"].as_bool() == Some(true)) {
                (0, _) => "",
                (_, true) => "trainable",
                (_, false) => "frozen",
            };
            t.push_str(&format!("{:<34} {:<20} {:<18} {:>10}  {state}\n", r.name, r.kind, shape, r.num_params()));
        }
        t.push_str(&format!("{}\n", "-".repeat(94)));
        t.push_str(&format!(
            "total params: {}\ntrainable params: {}\nfrozen params: {}\nnon-trainable buffers (BN running statistics): {}\n",
            summary.total_params, summary.trainable_params, summary.frozen_params, summary.buffers
        ));
        t
    });
    Ok(())
}

/// `graft inspect --weights FILE`: the file's tensors, dtypes and shapes.
fn list_weights(path: &std::path::Path, out: &Output) -> anyhow::Result<()> {
    let listing = graft::zoo::list_weights(path)?;
    let total: usize = listing.tensors.iter().fold(0usize, |a, t| a.saturating_add(t.numel));
    let value = json!({
        "file": path,
        "format": listing.format,
        "tensors": listing.tensors,
        "total_values": total,
    });
    out.result(&value, || {
        let width = listing.tensors.iter().map(|t| t.name.chars().count()).max().unwrap_or(4).clamp(4, 80);
        let mut t = format!("{} ({}): {} tensors, {total} values\n", path.display(), listing.format, listing.tensors.len());
        t.push_str(&format!("{:<width$}  {:<8}  {:<20}  {:>10}\n", "name", "dtype", "shape", "values"));
        for x in &listing.tensors {
            t.push_str(&format!("{:<width$}  {:<8}  {:<20}  {:>10}\n", x.name, x.dtype, format!("{:?}", x.shape), x.numel));
        }
        t
    });
    Ok(())
}
