//! `graft export --run RUN --format onnx|safetensors --out PATH`: a fitted image run written
//! for other runtimes (see [`graft::export`]).

use serde_json::json;

use crate::cli::{ExportArgs, ExportFormat};
use crate::output::Output;

pub fn run(args: ExportArgs, out: &Output) -> anyhow::Result<()> {
    // Every flag is used below: a new one fails to compile until it is.
    let ExportArgs { run, format, out: path, allow_unfinished } = args;
    // Export reads the run's tensors; the CPU is enough and always there.
    let device = graft::device::default_device();
    match format {
        ExportFormat::Onnx => {
            let e = graft::export::write_onnx(&run, &path, &graft::zoo::graft_home(), allow_unfinished, &device)?;
            let value = json!({
                "format": "onnx", "path": e.path, "files": [e.path], "bytes": e.bytes, "opset": e.opset,
                "nodes": e.nodes, "initializers": e.initializers, "input": e.input, "output": e.output,
                "classes": e.classes, "metadata": e.metadata,
            });
            out.result(&value, || {
                format!(
                    "wrote {} ({:.1} MB, opset {}, {} nodes)\n  input   {}\n  output  {}\n  labels and preprocessing are in the model's metadata_props\n",
                    e.path.display(),
                    e.bytes as f64 / 1e6,
                    e.opset,
                    e.nodes,
                    e.input,
                    e.output
                )
            });
        }
        ExportFormat::Safetensors => {
            let e = graft::export::write_safetensors(&run, &path, allow_unfinished, &device)?;
            let value = json!({ "format": "safetensors", "files": [e.weights, e.config], "weights": e.weights, "config": e.config, "tensors": e.tensors });
            out.result(&value, || format!("wrote {} ({} tensors) and {}\n", e.weights.display(), e.tensors, e.config.display()));
        }
    }
    Ok(())
}
