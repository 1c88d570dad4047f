//! `graft export`: a fitted image run written for other runtimes.
//!
//! - [`write_onnx`]: the whole model as one ONNX file (opset 17): preprocessed images
//!   `input` [N, 3, H, W] (float, N dynamic) in, class probabilities `probabilities`
//!   [N, classes] out. The trunk is each architecture's emitter
//!   ([`BackboneNet::to_onnx`](crate::zoo::backbone::BackboneNet::to_onnx), BatchNorm folded
//!   into the convolutions), then the run's pooling and head and a softmax. The labels and
//!   the preprocessing are in the model's `metadata_props` ([`metadata`]).
//! - [`write_safetensors`]: the weights (trunk under the original weights file's PyTorch names,
//!   head as `head.layers.i`) and a `config.json` describing how they fit together.
//!
//! A text run exports as ONNX too: `input_ids` and `attention_mask` (int64 [batch, sequence])
//! in, the MiniLM encoder ([`BertModel::to_onnx`](crate::zoo::bert::BertModel::to_onnx)), its
//! mean pooling and normalisation, the head and a softmax (one per task in a multi-task run).
//! Adaptation and digit-MLP runs and architectures without an emitter (none of the registered ones) are
//! refused with [`GraftError::Export`], naming what is refused; `--format safetensors` is for
//! image runs.

pub mod onnx;
pub mod proto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use crate::classic::{Classic, ClassicKind};
use crate::manifest::RunManifest;
use crate::train::model::{Head, HeadPool};
use crate::train::text::{load_text_run, TaskHead, TextHead};
use crate::train::run::{load_run_checked, RunInfo, RunModel};
use crate::zoo::table::{Convention, Layout};
use crate::zoo::ModelSpec;
use crate::{GraftError, Result};
use onnx::{float, int, ints, OnnxGraph};
use proto::{Dim, ModelProto, ValueInfoProto, FLOAT, INT64};

/// ONNX operator set written (LayerNormalization exists from 17).
pub const OPSET: i64 = 17;
/// ONNX IR version of opset 17 (ONNX 1.12).
pub const IR_VERSION: i64 = 8;
/// Name of the ONNX model's input and output.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "probabilities";

/// What `write_onnx` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxExport {
    pub path: PathBuf,
    pub bytes: u64,
    pub opset: i64,
    pub nodes: usize,
    pub initializers: usize,
    /// `[batch, 3, size, size]` (batch is symbolic).
    pub input: String,
    pub output: String,
    pub classes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
}

/// What `write_safetensors` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SafetensorsExport {
    pub weights: PathBuf,
    pub config: PathBuf,
    pub tensors: usize,
}

/// Loads an image run for export; any other kind is refused, naming it.
fn load_image_run(run: &Path, allow_unfinished: bool, device: &Device) -> Result<(RunInfo, RunModel)> {
    let manifest = RunManifest::load(run)?;
    if !matches!(manifest, RunManifest::Image(_)) {
        return Err(GraftError::Export {
            what: format!("{} (a {} run)", run.display(), manifest.describe()),
            reason: "graft exports classifiers made by `graft fit` (as ONNX: image and text runs; as safetensors: image runs)".into(),
        });
    }
    load_run_checked(run, allow_unfinished, device)
}

/// The ONNX model's `metadata_props`: labels, preprocessing (as a whole and field by field),
/// the graft model and head it came from, and what the input and output hold.
pub fn metadata(info: &RunInfo) -> BTreeMap<String, String> {
    let json = |v: serde_json::Value| v.to_string();
    let pre = serde_json::to_value(&info.preprocess).expect("preprocess serializes");
    let mut m = BTreeMap::new();
    m.insert("labels".into(), json(serde_json::json!(info.classes)));
    m.insert("preprocess".into(), json(pre.clone()));
    for key in ["size", "crop", "interpolation", "mean", "std"] {
        m.insert(format!("preprocess.{key}"), json(pre[key].clone()));
    }
    m.insert("graft.model".into(), info.model.clone());
    m.insert("graft.head".into(), info.head.to_string());
    m.insert("graft.head_pool".into(), json(serde_json::to_value(info.head_pool).expect("pool serializes")));
    m.insert(
        "input".into(),
        format!("{INPUT}: float32 [batch, 3, {s}, {s}], RGB planes after crop and resize, (pixel − mean) / std with pixel, mean and std on the 0–255 scale", s = info.preprocess.size),
    );
    m.insert("output".into(), format!("{OUTPUT}: float32 [batch, {}], softmax class probabilities in the order of `labels`", info.classes.len()));
    m
}

/// The whole fitted model of an image or text run as an ONNX model (see the module docs);
/// `home` is graft's home, where a text run's encoder was pulled.
pub fn onnx_model(run: &Path, home: &Path, allow_unfinished: bool, device: &Device) -> Result<ModelProto> {
    match RunManifest::load(run)? {
        RunManifest::Text(_) => text_onnx(run, home, device),
        _ => image_onnx(run, allow_unfinished, device),
    }
}

/// A neural head (linear layers, ReLU between them) and the softmax on features `x`.
fn neural_head(g: &mut OnnxGraph, head: &Head, x: &str) -> Result<String> {
    let logits = neural_logits(g, head, x)?;
    Ok(g.softmax(&logits, OUTPUT))
}

/// A neural head's logits: linear layers with ReLU between them (dropout is the identity in
/// inference).
fn neural_logits(g: &mut OnnxGraph, head: &Head, x: &str) -> Result<String> {
    let mut x = x.to_string();
    for (i, layer) in head.layers.iter().enumerate() {
        x = g.linear(layer, &x, &format!("head.layers.{i}"))?;
        if i + 1 < head.layers.len() {
            x = g.relu(&x);
        }
    }
    Ok(x)
}

/// A multi-task head: each task's slice of the logits through its own softmax, the tasks'
/// probabilities side by side in output order (as `predict` and `eval` read them).
fn multi_task_head(g: &mut OnnxGraph, head: &Head, tasks: &[TaskHead], x: &str) -> Result<String> {
    let logits = neural_logits(g, head, x)?;
    let axis = g.initializer_i64("task_axis", &[1], &[1]);
    let mut parts = Vec::new();
    for (task, range) in tasks.iter().zip(TaskHead::ranges(tasks)) {
        let start = g.initializer_i64(&format!("task.{}.start", task.name), &[1], &[range.start as i64]);
        let end = g.initializer_i64(&format!("task.{}.end", task.name), &[1], &[range.end as i64]);
        let slice = g.node("Slice", &[&logits, &start, &end, &axis], vec![], &format!("task.{}.logits", task.name));
        parts.push(g.softmax(&slice, &format!("task.{}.probabilities", task.name)));
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(g.node("Concat", &parts, vec![int("axis", 1)], OUTPUT))
}

fn model_proto(g: OnnxGraph, name: String, inputs: Vec<ValueInfoProto>, classes: usize, doc: String, metadata: BTreeMap<String, String>) -> ModelProto {
    let output = ValueInfoProto { name: OUTPUT.into(), elem_type: FLOAT, shape: vec![Dim::Param("batch".into()), Dim::Value(classes as i64)] };
    ModelProto {
        ir_version: IR_VERSION,
        opset: OPSET,
        producer_name: "graft".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc,
        graph: g.finish(&name, inputs, vec![output]),
        metadata: metadata.into_iter().collect(),
    }
}

fn image_onnx(run: &Path, allow_unfinished: bool, device: &Device) -> Result<ModelProto> {
    let (info, model) = load_image_run(run, allow_unfinished, device)?;
    let mut g = OnnxGraph::new();
    let map = model.net.trunk.net().to_onnx(&mut g, INPUT).map_err(|e| match e {
        GraftError::Export { what, reason } => GraftError::Export { what: format!("{what} (run {}, model {})", run.display(), info.model), reason },
        e => e,
    })?;
    let features = match model.net.pool {
        HeadPool::Avg => g.global_avg_pool(&map),
        HeadPool::Flatten => g.flatten(&map),
    };
    let probabilities = match &model.classic {
        None => neural_head(&mut g, &model.net.head, &features)?,
        Some(classic) => classic_head(&mut g, classic, &features)?,
    };
    debug_assert_eq!(probabilities, OUTPUT);
    let size = info.preprocess.size as i64;
    let input = ValueInfoProto { name: INPUT.into(), elem_type: FLOAT, shape: vec![Dim::Param("batch".into()), Dim::Value(3), Dim::Value(size), Dim::Value(size)] };
    let doc = format!("{} with a {} head on {} classes, exported by graft from {}", info.model, info.head, info.classes.len(), run.display());
    Ok(model_proto(g, format!("graft {} {}", info.model, info.head), vec![input], info.classes.len(), doc, metadata(&info)))
}

/// Inputs of an exported text model.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";

/// A text run: the sentence encoder (MiniLM), its mean pooling and normalisation, the head
/// and the softmax, on token ids and the attention mask (int64 [batch, sequence]).
fn text_onnx(run: &Path, home: &Path, device: &Device) -> Result<ModelProto> {
    crate::fsutil::check_run_dir(run)?;
    let model = load_text_run(run, home, &crate::report::Silent, device)?;
    let info = &model.info;
    let mut g = OnnxGraph::new();
    let embedding = model.encoder.model.to_onnx(&mut g, INPUT_IDS, ATTENTION_MASK)?;
    match (&model.head, info.tasks.is_empty()) {
        (TextHead::Neural(head), true) => neural_head(&mut g, head, &embedding)?,
        (TextHead::Neural(head), false) => multi_task_head(&mut g, head, &info.tasks, &embedding)?,
        (TextHead::Classic(classic), true) => classic_head(&mut g, classic, &embedding)?,
        (TextHead::Classic(_), false) => {
            return Err(GraftError::Export { what: format!("{} (a multi-task run with the classic {} head)", run.display(), info.head), reason: "multi-task runs export with neural heads only".into() })
        }
    };
    let tokens = || vec![Dim::Param("batch".into()), Dim::Param("sequence".into())];
    let inputs = vec![
        ValueInfoProto { name: INPUT_IDS.into(), elem_type: INT64, shape: tokens() },
        ValueInfoProto { name: ATTENTION_MASK.into(), elem_type: INT64, shape: tokens() },
    ];
    let mut m = BTreeMap::new();
    m.insert("labels".into(), serde_json::json!(info.classes).to_string());
    m.insert("graft.model".into(), info.model.clone());
    m.insert("graft.head".into(), info.head.to_string());
    m.insert("tokenizer".into(), info.text_preprocess.clone());
    m.insert("tokenizer.max_tokens".into(), model.encoder.tokenizer.max_tokens().to_string());
    m.insert(
        "input".into(),
        format!(
            "{INPUT_IDS}, {ATTENTION_MASK}: int64 [batch, sequence]: the ids of {}'s tokenizer.json (special tokens added, at most {} tokens), padded with 0 where the mask is 0",
            info.model,
            model.encoder.tokenizer.max_tokens()
        ),
    );
    let output = if info.tasks.is_empty() {
        format!("{OUTPUT}: float32 [batch, {}], softmax class probabilities in the order of `labels`", info.classes.len())
    } else {
        m.insert("tasks".into(), serde_json::json!(info.tasks.iter().map(|t| serde_json::json!({"name": t.name, "classes": t.classes})).collect::<Vec<_>>()).to_string());
        format!("{OUTPUT}: float32 [batch, {}], each task's softmax probabilities one task after another (`tasks`), labelled task/class in `labels`", info.classes.len())
    };
    m.insert("output".into(), output);
    let doc = format!("{} with a {} head on {} classes, exported by graft from {}", info.model, info.head, info.classes.len(), run.display());
    Ok(model_proto(g, format!("graft {} {}", info.model, info.head), inputs, info.classes.len(), doc, m))
}

/// A classic head on pooled features `x`: logistic regression and the linear SVM as
/// standardisation + `Gemm` + softmax, prototypes as L2 normalisation + `Gemm` + softmax, k-NN
/// as similarities to the stored rows + `TopK` + label votes.
fn classic_head(g: &mut OnnxGraph, classic: &Classic, x: &str) -> Result<String> {
    let (mean, std, params) = classic.parts();
    let (d, c) = (classic.dim, classic.classes);
    match classic.kind {
        ClassicKind::Logistic(_) | ClassicKind::Svm => {
            let m = g.initializer("classic.mean", &[d], mean);
            let s = g.initializer("classic.std", &[d], std);
            let centred = g.node("Sub", &[x, &m], vec![], "classic.centred");
            let z = g.node("Div", &[&centred, &s], vec![], "classic.standardised");
            // params: [c, d + 1], bias last → Gemm(z, W, b, transB = 1) with W [c, d].
            let rows: Vec<&[f32]> = params.chunks(d + 1).collect();
            let w: Vec<f32> = rows.iter().flat_map(|r| r[..d].iter().copied()).collect();
            let b: Vec<f32> = rows.iter().map(|r| r[d]).collect();
            let w = g.initializer("classic.weight", &[c, d], &w);
            let b = g.initializer("classic.bias", &[c], &b);
            let scores = g.node("Gemm", &[&z, &w, &b], vec![int("transB", 1)], "classic.scores");
            Ok(g.softmax(&scores, OUTPUT))
        }
        ClassicKind::Prototype => {
            // x / max(‖x‖₂, 1e-12), then cosine similarities × 10 (see `Classic`).
            let unit = unit_rows(g, x);
            let p = g.initializer("classic.prototypes", &[c, d], params);
            let scores = g.node("Gemm", &[&unit, &p], vec![int("transB", 1), float("alpha", 10.0)], "classic.scores");
            Ok(g.softmax(&scores, OUTPUT))
        }
        ClassicKind::Knn(k) => {
            // Cosine similarity to every stored training row, the k most similar (TopK keeps
            // the lower index first among equals, as graft's stable sort does), one vote each
            // plus 1e-3 · similarity / rank to break ties, normalised (see `Classic`).
            let labels = classic.labels();
            let m = labels.len();
            let k = k.min(m);
            let unit = unit_rows(g, x);
            let rows = g.initializer("classic.rows", &[m, d], params);
            let sims = g.node("Gemm", &[&unit, &rows], vec![int("transB", 1)], "classic.similarities"); // [N, M]
            let k_input = g.initializer_i64("classic.k", &[1], &[k as i64]);
            let top = g.fresh("classic.top");
            let indices = g.fresh("classic.top_indices");
            g.push_node("TopK", &[&sims, &k_input], &[&top, &indices], vec![int("axis", 1), int("largest", 1), int("sorted", 1)]);
            let mut one_hot = vec![0f32; m * c];
            for (i, &l) in labels.iter().enumerate() {
                one_hot[i * c + l] = 1.0;
            }
            let one_hot = g.initializer("classic.one_hot_labels", &[m, c], &one_hot);
            let votes = g.node("Gather", &[&one_hot, &indices], vec![int("axis", 0)], "classic.neighbour_labels"); // [N, k, C]
            let ranks: Vec<f32> = (1..=k).map(|r| r as f32).collect();
            let ranks = g.initializer("classic.ranks", &[k], &ranks);
            let share = g.node("Div", &[&top, &ranks], vec![], "classic.share");
            let milli = g.initializer("classic.tie_weight", &[], &[1e-3]);
            let share = g.node("Mul", &[&share, &milli], vec![], "classic.tie_share");
            let one = g.initializer("classic.one", &[], &[1.0]);
            let weight = g.node("Add", &[&share, &one], vec![], "classic.vote_weight"); // [N, k]
            let last = g.initializer_i64("classic.axis_2", &[1], &[2]);
            let weight = g.node("Unsqueeze", &[&weight, &last], vec![], "classic.vote_weight_3d");
            let weighted = g.node("Mul", &[&votes, &weight], vec![], "classic.weighted_votes");
            let axis = g.initializer_i64("classic.axis_1", &[1], &[1]);
            let votes = g.node("ReduceSum", &[&weighted, &axis], vec![int("keepdims", 0)], "classic.votes"); // [N, C]
            let total = g.node("ReduceSum", &[&votes, &axis], vec![int("keepdims", 1)], "classic.total");
            Ok(g.node("Div", &[&votes, &total], vec![], OUTPUT))
        }
    }
}

/// Rows of `x` [N, D] at unit length: x / max(‖x‖₂, 1e-12), as `Classic` normalises them.
fn unit_rows(g: &mut OnnxGraph, x: &str) -> String {
    let norm = g.node("ReduceL2", &[x], vec![ints("axes", &[1]), int("keepdims", 1)], "classic.norm");
    let eps = g.initializer("classic.eps", &[], &[1e-12]);
    let norm = g.node("Max", &[&norm, &eps], vec![], "classic.norm_clamped");
    g.node("Div", &[x, &norm], vec![], "classic.unit")
}

/// Writes the run's model as ONNX to `out` (atomically).
pub fn write_onnx(run: &Path, out: &Path, home: &Path, allow_unfinished: bool, device: &Device) -> Result<OnnxExport> {
    let model = onnx_model(run, home, allow_unfinished, device)?;
    let bytes = model.to_bytes();
    crate::fsutil::write_atomic(out, &bytes)?;
    let classes: Vec<String> = serde_json::from_str(&model.metadata.iter().find(|(k, _)| k == "labels").map(|(_, v)| v.clone()).unwrap_or_default()).unwrap_or_default();
    Ok(OnnxExport {
        path: out.to_path_buf(),
        bytes: bytes.len() as u64,
        opset: OPSET,
        nodes: model.graph.nodes.len(),
        initializers: model.graph.initializers.len(),
        input: model.graph.inputs.iter().map(|i| format!("{} [{}]", i.name, i.shape.iter().map(|d| match d { Dim::Value(v) => v.to_string(), Dim::Param(p) => p.clone() }).collect::<Vec<_>>().join(", "))).collect::<Vec<_>>().join(", "),
        output: format!("{OUTPUT} [batch, {}]", classes.len()),
        classes,
        metadata: model.metadata.into_iter().collect(),
    })
}

/// The PyTorch name of a trunk tensor: the original weights file's name for a PyTorch
/// checkpoint; for weights that came from Keras, burn's path (torchvision's module layout)
/// with BatchNorm's `gamma`/`beta` called `weight`/`bias` as PyTorch does.
fn pytorch_name(convention: Convention, file: &str, burn: &str) -> String {
    match convention {
        Convention::Torch | Convention::Caffe => file.to_string(),
        Convention::Keras => match burn.rsplit_once('.') {
            Some((module, "gamma")) => format!("{module}.weight"),
            Some((module, "beta")) => format!("{module}.bias"),
            _ => burn.to_string(),
        },
    }
}

/// `[rows, cols]` row-major → `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Writes `DIR/model.safetensors` (trunk tensors under PyTorch names, the head's linear layers
/// as `head.layers.i.weight` `[out, in]` and `.bias`, a classic head's tensors as `classic.*`)
/// and `DIR/config.json`; creates `DIR`.
pub fn write_safetensors(run: &Path, dir: &Path, allow_unfinished: bool, device: &Device) -> Result<SafetensorsExport> {
    let (info, model) = load_image_run(run, allow_unfinished, device)?;
    let config = ModelSpec::find(&info.model)?.config();
    let table = config.table();
    let state = crate::train::checkpoint::export(&model.net);
    let mut dict = graft_weights::StateDict::default();
    let missing = |name: &str| GraftError::Data { path: run.to_path_buf(), reason: format!("the run's model has no tensor `{name}`") };
    for leaf in table.leaves.iter().filter(|l| !l.is_head) {
        for t in table.tensors(leaf) {
            let key = format!("trunk.{}", t.burn);
            let mut tensor = state.tensors.get(&key).cloned().ok_or_else(|| missing(&key))?;
            if let (Layout::Transposed, &[d_in, d_out]) = (t.layout, t.shape.as_slice()) {
                tensor.data = transpose(&tensor.data, d_in, d_out);
                tensor.shape = vec![d_out, d_in];
            }
            dict.tensors.insert(pytorch_name(table.convention, &t.file, &t.burn), tensor);
        }
    }
    let mut layers = Vec::new();
    let hidden = model.net.head.layers.len();
    if model.classic.is_none() {
        for i in 0..hidden {
            let (wk, bk) = (format!("head.layers.{i}.weight"), format!("head.layers.{i}.bias"));
            let mut w = state.tensors.get(&wk).cloned().ok_or_else(|| missing(&wk))?;
            let [d_in, d_out] = [w.shape[0], w.shape[1]];
            w.data = transpose(&w.data, d_in, d_out);
            w.shape = vec![d_out, d_in];
            dict.tensors.insert(wk.clone(), w);
            dict.tensors.insert(bk.clone(), state.tensors.get(&bk).cloned().ok_or_else(|| missing(&bk))?);
            let activation = if i + 1 < hidden { Some("relu") } else { None };
            layers.push(serde_json::json!({ "weight": wk, "bias": bk, "in": d_in, "out": d_out, "activation": activation }));
        }
    } else {
        let classic = graft_weights::load(&run.join("classic.safetensors"))?;
        for (k, v) in classic.tensors {
            dict.tensors.insert(format!("classic.{k}"), v);
        }
    }
    crate::fsutil::create_dir_nofollow(dir)?;
    let weights = dir.join("model.safetensors");
    let tensors = dict.tensors.len();
    graft_weights::save_safetensors(&weights, &dict)?;
    let [c, h, w] = config.final_map();
    let head = match &model.classic {
        None => serde_json::json!({ "kind": info.head.to_string(), "pool": info.head_pool, "input": crate::train::model::Grafted::head_input_width(info.head_pool, [c, h, w]), "layers": layers, "output": "softmax" }),
        Some(classic) => serde_json::json!({
            "kind": info.head.to_string(), "pool": info.head_pool, "input": classic.dim,
            "tensors": "classic.mean, classic.std, classic.params ([classes, dim + 1], bias last, for logistic and svm; class means for prototype; training rows for knn), classic.labels",
            "output": "softmax",
        }),
    };
    let json = serde_json::json!({
        "format": "graft-export",
        "version": 1,
        "model": info.model,
        "weights": "model.safetensors",
        "trunk": {
            "names": match table.convention { Convention::Torch => "as in the original PyTorch state dict", Convention::Keras => "torchvision's module paths (the original file is Keras)", Convention::Caffe => "as in the original Caffe model (its first convolution reads RGB)" },
            "batch_norm": "unfolded: weight, bias, running_mean, running_var",
            "stages": config.num_stages(),
            "final_map": [c, h, w],
        },
        "head": head,
        "classes": info.classes,
        "preprocess": info.preprocess,
    });
    let config_path = dir.join("config.json");
    crate::fsutil::write_atomic(&config_path, &serde_json::to_vec_pretty(&json).expect("config serializes"))?;
    Ok(SafetensorsExport { weights, config: config_path, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::backbone::BackboneNet;
    use crate::zoo::convnext::ConvNeXtConfig;
    use crate::zoo::efficientnet::EfficientNetLiteConfig;
    use crate::zoo::table::LeafKind;

    /// A network that states only the required half of the contract.
    struct NoEmitter;

    impl BackboneNet for NoEmitter {
        fn num_stages(&self) -> usize {
            1
        }
        fn forward_stages(&self, x: burn::tensor::Tensor<4>, _: std::ops::Range<usize>) -> burn::tensor::Tensor<4> {
            x
        }
        fn forward(&self, images: burn::tensor::Tensor<4>) -> burn::tensor::Tensor<2> {
            images.flatten(1, 3)
        }
        fn classify(&self, _: burn::tensor::Tensor<2>) -> Option<burn::tensor::Tensor<2>> {
            None
        }
        fn drop_classifier(&mut self) {}
    }

    /// An architecture without an emitter refuses with a typed error naming it; every
    /// registered architecture has one (a small ConvNeXt writes its graph).
    #[test]
    fn architectures_without_an_emitter_refuse_naming_themselves() {
        let err = NoEmitter.to_onnx(&mut OnnxGraph::new(), INPUT).unwrap_err();
        assert!(matches!(err, GraftError::Export { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.starts_with("cannot export the NoEmitter architecture to ONNX"), "{err}");
        let device = Device::default();
        let net = ConvNeXtConfig { depths: [1; 4], dims: [8, 16, 32, 64], resolution: 32, num_classes: 2 }.init(&device);
        let mut g = OnnxGraph::new();
        net.to_onnx(&mut g, INPUT).unwrap();
        assert_eq!(g.nodes().iter().filter(|n| n.op_type == "LayerNormalization").count(), 1 + 3 + 4, "stem, downsampling and block norms");
    }

    /// Lite0's emitter writes one Conv per convolution of the layer table (BatchNorm folded
    /// into it: no BatchNormalization node, a bias per Conv), a Clip per ReLU6 sharing one
    /// pair of bounds, and an Add per residual block; every node input is defined before use.
    #[test]
    fn lite0_graph_has_a_conv_per_table_convolution_and_no_batch_norm() {
        let device = Device::default();
        let mut config = EfficientNetLiteConfig::lite(0).expect("lite0");
        config.resolution = 64;
        let net = config.init(&device);
        let mut g = OnnxGraph::new();
        let out = net.to_onnx(&mut g, INPUT).unwrap();
        let graph = g.finish("t", vec![], vec![]);
        let convs = config.table().leaves.iter().filter(|l| matches!(l.kind, LeafKind::Conv { .. })).count();
        let count = |op: &str| graph.nodes.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count("Conv"), convs);
        assert_eq!(count("BatchNormalization"), 0);
        assert!(graph.nodes.iter().filter(|n| n.op_type == "Conv").all(|n| n.inputs.len() == 3), "every Conv has its folded bias");
        let blocks = config.blocks();
        assert_eq!(count("Add"), blocks.iter().filter(|b| b.stride == 1 && b.input == b.output).count());
        assert_eq!(count("Clip"), 2 + blocks.len() + blocks.iter().filter(|b| b.expanded.is_some()).count());
        assert_eq!(graph.initializers.iter().filter(|t| t.name == "six" || t.name == "zero").count(), 2);
        let mut defined: std::collections::BTreeSet<&str> = graph.initializers.iter().map(|t| t.name.as_str()).collect();
        defined.insert(INPUT);
        for n in &graph.nodes {
            for i in &n.inputs {
                assert!(defined.contains(i.as_str()), "{} reads {i} before it exists", n.name);
            }
            assert!(defined.insert(&n.outputs[0]), "{} is written twice", n.outputs[0]);
        }
        assert_eq!(graph.nodes.last().map(|n| n.outputs[0].as_str()), Some(out.as_str()));
        // The stem convolution's folded weights: W·γ/√(σ² + ε), as fold_conv_bn computes them.
        let stem = graph.initializers.iter().find(|t| t.name == "_conv_stem.weight").unwrap();
        assert_eq!(stem.dims, vec![32, 3, 3, 3]);
        let folded = crate::zoo::fold::fold_conv_bn(&net._conv_stem, &net._bn0);
        let want: Vec<u8> = onnx::values(folded.weight.val(), "w").unwrap().iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(stem.raw_data, want);
    }
}
