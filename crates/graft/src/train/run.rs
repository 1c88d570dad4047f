//! A run directory, the unit a user keeps: `config.toml`, `model.json`, `metrics.jsonl`,
//! TensorBoard events under `tb/`, `best.safetensors` / `last.safetensors`, plots and
//! `summary.json`. Also evaluation of a run's model on a dataset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::model::{Grafted, Head, HeadPool, HeadSpec};
use crate::data::folder::{decode_with, Sample, Skipped};
use crate::data::image::{self, Preprocess};
use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::zoo::ModelSpec;
use crate::{GraftError, Result};

/// What is needed to rebuild a run's model without its training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    pub model: String,
    pub classes: Vec<String>,
    pub head: HeadSpec,
    pub head_pool: HeadPool,
    pub dropout: f64,
    pub preprocess: Preprocess,
    /// sha256 of the pretrained weights the trunk started from (`None`: random init).
    pub weights_sha256: Option<String>,
}

impl RunInfo {
    pub fn save(&self, run: &Path) -> Result<()> {
        write_atomic(&run.join("model.json"), &serde_json::to_vec_pretty(self).expect("run info serializes"))
    }

    pub fn load(run: &Path) -> Result<Self> {
        let path = run.join("model.json");
        let bytes = std::fs::read(&path).map_err(|e| GraftError::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| GraftError::Data { path, reason: format!("not a graft run's model.json: {e}") })
    }

    /// The architecture with fresh weights (to be overwritten by a checkpoint).
    pub fn build(&self, device: &Device) -> Result<Grafted> {
        let spec = ModelSpec::find(&self.model)?;
        let resolution = spec.config().resolution;
        let head = Head::init(&self.head, Grafted::head_input_width(self.head_pool, resolution), self.classes.len(), self.dropout, device);
        Ok(Grafted::new(spec.config().init(device), head, self.head_pool))
    }
}

/// The checkpoint a finished run serves: the best one, else the last.
pub fn serving_checkpoint(run: &Path) -> Result<PathBuf> {
    ["best.safetensors", "last.safetensors"]
        .iter()
        .map(|f| run.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| GraftError::Data { path: run.to_path_buf(), reason: "no best.safetensors or last.safetensors: not a finished graft run".into() })
}

/// Loads a run's model for inference.
pub fn load_run(run: &Path, device: &Device) -> Result<(RunInfo, Grafted)> {
    let info = RunInfo::load(run)?;
    let model = checkpoint::load(info.build(device)?, &serving_checkpoint(run)?)?;
    Ok((info, model.valid()))
}

/// Class probabilities for image files, in batches; unreadable files are skipped and listed.
pub fn predict_files(
    model: &Grafted,
    preprocess: &Preprocess,
    files: &[Sample],
    batch: usize,
    device: &Device,
    reporter: &dyn Reporter,
) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>) {
    let mut out = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    reporter.start("predicting", Some(files.len() as u64));
    for (i, chunk) in files.chunks(batch.max(1)).enumerate() {
        let (pixels, bad) = decode_with(chunk, &|_| {}, |img| preprocess.apply(&img));
        skipped.extend(bad);
        let good: Vec<Vec<f32>> = pixels.iter().flatten().cloned().collect();
        let mut probs = Vec::new();
        if !good.is_empty() {
            let logits = model.forward(image::batch(&good, preprocess.size, device));
            let p: Vec<f32> = burn::tensor::activation::softmax(logits, 1).into_data().try_to_vec::<f32>().unwrap_or_default();
            let c = p.len() / good.len();
            probs = p.chunks(c).map(|r| r.to_vec()).collect();
        }
        let mut probs = probs.into_iter();
        out.extend(pixels.iter().map(|p| p.as_ref().and_then(|_| probs.next())));
        reporter.progress(((i + 1) * batch).min(files.len()) as u64);
    }
    reporter.finish();
    (out, skipped)
}

/// Accuracy, per-class accuracy and the confusion matrix (rows: true, columns: predicted).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub accuracy: f64,
    pub n: usize,
    pub per_class: BTreeMap<String, f64>,
    pub confusion: Vec<Vec<u64>>,
    pub labels: Vec<String>,
}

impl Evaluation {
    pub fn from_predictions(labels: &[String], truth: &[usize], predicted: &[usize]) -> Self {
        let k = labels.len();
        let mut confusion = vec![vec![0u64; k]; k];
        for (&t, &p) in truth.iter().zip(predicted) {
            if t < k && p < k {
                confusion[t][p] += 1;
            }
        }
        let n = truth.len();
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let per_class = labels
            .iter()
            .enumerate()
            .filter(|(i, _)| confusion[*i].iter().sum::<u64>() > 0)
            .map(|(i, l)| (l.clone(), confusion[i][i] as f64 / confusion[i].iter().sum::<u64>() as f64))
            .collect();
        Self { accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 }, n, per_class, confusion, labels: labels.to_vec() }
    }
}

/// Predicted class per row of probabilities.
pub fn top1(probs: &[Vec<f32>]) -> Vec<usize> {
    probs.iter().map(|p| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)).collect()
}
