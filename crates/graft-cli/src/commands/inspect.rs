use graft::zoo::layers::{summarize, FreezeSpec};
use graft::train::model::{Grafted, Head, HeadPool, HeadSpec};
use graft::device::default_device;
use graft::zoo::{graft_home, Pretrained};
use serde_json::json;

use crate::cli::InspectArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: InspectArgs, out: &Output) -> anyhow::Result<()> {
    if let Some(run) = &args.run {
        return super::inspect_run::run(run, out);
    }
    let spec = super::model_spec(args.model.as_deref().unwrap_or(""), args.arch.as_deref())?;
    let freeze: FreezeSpec = args.freeze.parse()?;
    let config = spec.config();
    if let Some(weights) = &args.weights {
        // Loading checks every tensor's presence and shape; the numbers are not needed here.
        Pretrained::load(spec, Some(weights), &graft_home(), &TermReporter::new(), &default_device())?;
    }
    let mut rows = config.layer_rows();
    if let Some(classes) = args.classes {
        // The grafted model: ImageNet classifier cut off, the new head in its place.
        let head: HeadSpec = args.head.as_deref().unwrap_or("linear").parse()?;
        let pool: HeadPool = args.head_pool.parse()?;
        anyhow::ensure!(classes >= 2, "invalid --classes `{classes}`: a classifier needs at least 2 classes");
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
        "pretrained_cfg": spec.pretrained_cfg(),
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
