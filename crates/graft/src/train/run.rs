//! A run directory, the unit a user keeps: `config.toml`, `model.json`, `metrics.jsonl`,
//! TensorBoard events under `tb/`, `best.safetensors` / `last.safetensors`, plots and
//! `summary.json`. Also evaluation of a run's model on a dataset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use crate::cache::store::content_hash;
use crate::cache::{FeatureStore, Namespace};
use crate::classic::Classic;
use super::model::{Grafted, Head, HeadPool, HeadSpec};
use crate::data::folder::{decode_with, Sample, Skipped};
use crate::data::image::{self, Preprocess};
use crate::report::Reporter;
use crate::zoo::trunk::InferenceTrunk;
use crate::zoo::ModelSpec;
use crate::report::gradcam::{grad_cam, Cam};
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
    /// The whole trunk stayed frozen, so its pooled features are the pretrained weights' and
    /// can be served from the feature store.
    #[serde(default)]
    pub frozen_trunk: bool,
    /// `timm` when the pretrained weights file used timm's tensor names (`preprocess` is then
    /// timm's `pretrained_cfg`); absent for the architecture's own names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_names: Option<crate::zoo::table::NameSet>,
}

impl RunInfo {
    /// The architecture with fresh weights (to be overwritten by a checkpoint).
    pub fn build(&self, device: &Device) -> Result<Grafted> {
        let config = ModelSpec::find(&self.model)?.config();
        let head = Head::init(&self.head.neural(), Grafted::head_input_width(self.head_pool, config.final_map()), self.classes.len(), self.dropout, device);
        Ok(Grafted::new(config.init(device), head, self.head_pool))
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

/// A run's model ready for inference: the grafted network, and the classic head when the run
/// trained one on the trunk's pooled features.
pub struct RunModel {
    pub net: Grafted,
    pub classic: Option<Classic>,
    /// `net.trunk` prepared once for inference (BatchNorm folded, batch split across threads).
    frozen: InferenceTrunk,
}

impl RunModel {
    /// Class probabilities from the trunk's head input (pooled features) [N, D].
    pub fn probabilities_from_features(&self, rows: &[f32], n: usize, device: &Device) -> Vec<Vec<f32>> {
        if let Some(head) = &self.classic {
            return head.predict_proba(rows);
        }
        let x = Tensor::<2>::from_data(burn::tensor::TensorData::new(rows.to_vec(), [n, rows.len() / n.max(1)]), device);
        let p: Vec<f32> = softmax(self.net.head.forward(x), 1).into_data().try_to_vec::<f32>().unwrap_or_default();
        p.chunks((p.len() / n.max(1)).max(1)).map(|r| r.to_vec()).collect()
    }

    /// The head's input for a batch of images: [N, 3, H, W] → [N, D].
    fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.net.pool_map(self.frozen.forward_stages(images, 0..self.net.trunk.num_stages()))
    }

    /// The Grad-CAM heatmap of `class` for one image [1, 3, H, W] over the trunk's last stage
    /// (see [`grad_cam`](crate::report::gradcam::grad_cam)); `None` for a classic head, which
    /// has no gradients.
    pub fn grad_cam(&self, image: Tensor<4>, class: usize, device: &Device) -> Option<Cam> {
        if self.classic.is_some() {
            return None;
        }
        let map = self.frozen.forward_stages(image, 0..self.net.trunk.num_stages()); // [1, C, h, w]
        // The head's weights as constants on the autodiff device (no dropout: inference).
        let autodiff = device.clone().without_autodiff().autodiff();
        let layers: Vec<(Tensor<2>, Option<Tensor<1>>)> = self
            .net
            .head
            .layers
            .iter()
            .map(|l| (Tensor::from_data(l.weight.val().into_data(), &autodiff), l.bias.as_ref().map(|b| Tensor::from_data(b.val().into_data(), &autodiff))))
            .collect();
        let rest = |a: Tensor<4>| {
            let mut x = self.net.pool_map(a); // [1, D]
            for (i, (w, b)) in layers.iter().enumerate() {
                x = x.matmul(w.clone()); // [1, out]
                if let Some(b) = b {
                    x = x + b.clone().unsqueeze::<2>();
                }
                if i + 1 < layers.len() {
                    x = burn::tensor::activation::relu(x);
                }
            }
            x
        };
        grad_cam(map, rest, class, &autodiff)
    }

    /// Class probabilities for a batch of images [N, 3, H, W].
    pub fn probabilities(&self, images: Tensor<4>) -> Vec<Vec<f32>> {
        let (values, classes) = match &self.classic {
            Some(head) => {
                let features = self.features(images);
                let rows: Vec<f32> = features.into_data().try_to_vec::<f32>().unwrap_or_default();
                return head.predict_proba(&rows);
            }
            None => {
                let p: Vec<f32> = softmax(self.net.head.forward(self.features(images)), 1).into_data().try_to_vec::<f32>().unwrap_or_default();
                let classes = self.net.head.layers.last().map(|l| l.weight.lazy_shape().dims::<2>()[1]).unwrap_or(1);
                (p, classes)
            }
        };
        values.chunks(classes.max(1)).map(|r| r.to_vec()).collect()
    }
}

/// Whether `fit` finished `run`: it writes `summary.json` last. A run whose fit died keeps
/// `last.safetensors` (and maybe a `best.safetensors` of an early epoch) but no summary.
pub fn is_finished(run: &Path) -> bool {
    run.join("summary.json").is_file()
}

/// Loads a run's model for inference. An unfinished run ([`is_finished`]) is refused unless
/// `allow_unfinished`, and then serves its best checkpoint so far, else its last. A run
/// directory holding a symbolic link is refused ([`crate::fsutil::check_run_dir`]).
pub fn load_run_checked(run: &Path, allow_unfinished: bool, device: &Device) -> Result<(RunInfo, RunModel)> {
    crate::fsutil::check_run_dir(run)?;
    if run.join("model.json").is_file() && !is_finished(run) && !allow_unfinished {
        return Err(GraftError::Data {
            path: run.to_path_buf(),
            reason: "the run is unfinished (its fit stopped before writing summary.json); resume it with `graft fit --resume`, or pass --allow-unfinished to use its last checkpoint".into(),
        });
    }
    load_run(run, device)
}

/// Loads a run's model for inference.
pub fn load_run(run: &Path, device: &Device) -> Result<(RunInfo, RunModel)> {
    crate::fsutil::check_run_dir(run)?;
    let info = RunInfo::load(run)?;
    let net = checkpoint::load(info.build(device)?, &serving_checkpoint(run)?)?.valid();
    let classic = match &info.head {
        HeadSpec::Classic(_) => Some(Classic::load(&run.join("classic.safetensors"))?),
        _ => None,
    };
    let frozen = net.trunk.for_inference();
    Ok((info, RunModel { net, classic, frozen }))
}

/// Class probabilities for image files, in batches; unreadable files are skipped and listed.
pub fn predict_files(
    model: &RunModel,
    preprocess: &Preprocess,
    files: &[Sample],
    batch: usize,
    device: &Device,
    reporter: &dyn Reporter,
    store: Option<&mut FeatureStore>,
) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>) {
    let mut out = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    reporter.start("predicting", Some(files.len() as u64));
    if let Some(store) = store {
        return predict_via_store(model, preprocess, files, batch, device, reporter, store);
    }
    for (i, chunk) in files.chunks(batch.max(1)).enumerate() {
        let (pixels, bad) = decode_with(chunk, &|_| {}, |img| preprocess.apply(&img));
        skipped.extend(bad);
        let good: Vec<Vec<f32>> = pixels.iter().flatten().cloned().collect();
        let mut probs = Vec::new();
        if !good.is_empty() {
            probs = model.probabilities(image::batch(&good, preprocess.size, device));
        }
        let mut probs = probs.into_iter();
        out.extend(pixels.iter().map(|p| p.as_ref().and_then(|_| probs.next())));
        reporter.progress(((i + 1) * batch).min(files.len()) as u64);
    }
    reporter.finish();
    (out, skipped)
}

/// Views of test-time augmentation: the image, its mirror image, and its four corners
/// (each [`TTA_CORNER`] of the width and height), each prepared as the model's input.
pub const TTA_VIEWS: usize = 6;

/// Side of a corner view of test-time augmentation, as a fraction of the image's.
pub const TTA_CORNER: f64 = 0.9;

/// The [`TTA_VIEWS`] views of `img`, preprocessed.
pub fn tta_views(img: &::image::RgbImage, preprocess: &Preprocess) -> Vec<Vec<f32>> {
    let (w, h) = img.dimensions();
    let (cw, ch) = (((w as f64 * TTA_CORNER).round() as u32).clamp(1, w), ((h as f64 * TTA_CORNER).round() as u32).clamp(1, h));
    let mut views = vec![preprocess.apply(img), preprocess.apply(&::image::imageops::flip_horizontal(img))];
    for (x, y) in [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)] {
        views.push(preprocess.apply(&::image::imageops::crop_imm(img, x, y, cw, ch).to_image()));
    }
    views
}

/// [`predict_files`] with test-time augmentation: each file's probabilities are the mean over
/// its [`TTA_VIEWS`] views (through the whole model: the feature store is not used).
pub fn predict_files_tta(model: &RunModel, preprocess: &Preprocess, files: &[Sample], batch: usize, device: &Device, reporter: &dyn Reporter) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>) {
    let mut out = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    reporter.start("predicting (test-time augmentation)", Some(files.len() as u64));
    // A batch holds `batch` views.
    let per_chunk = (batch / TTA_VIEWS).max(1);
    for (i, chunk) in files.chunks(per_chunk).enumerate() {
        let (views, bad) = decode_with(chunk, &|_| {}, |img| tta_views(&img, preprocess));
        skipped.extend(bad);
        let good: Vec<Vec<f32>> = views.iter().flatten().flatten().cloned().collect();
        let mut probs = if good.is_empty() { Vec::new() } else { model.probabilities(image::batch(&good, preprocess.size, device)) }.into_iter();
        for v in &views {
            out.push(v.as_ref().map(|v| {
                let rows: Vec<Vec<f32>> = probs.by_ref().take(v.len()).collect();
                let mut mean = vec![0f32; rows.first().map(Vec::len).unwrap_or(0)];
                for row in &rows {
                    for (m, p) in mean.iter_mut().zip(row) {
                        *m += p / rows.len() as f32;
                    }
                }
                mean
            }));
        }
        reporter.progress(((i + 1) * per_chunk).min(files.len()) as u64);
    }
    reporter.finish();
    (out, skipped)
}

/// `predict_files` for a frozen-trunk run: pooled features come from the feature store when
/// there (computed and stored otherwise), then only the head runs.
fn predict_via_store(
    model: &RunModel,
    preprocess: &Preprocess,
    files: &[Sample],
    batch: usize,
    device: &Device,
    reporter: &dyn Reporter,
    store: &mut FeatureStore,
) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>) {
    let mut out = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    for (i, chunk) in files.chunks(batch.max(1)).enumerate() {
        let keys: Vec<Option<[u8; 32]>> = chunk.iter().map(|s| content_hash(&s.path).ok()).collect();
        let cached: Vec<Option<Vec<f32>>> = keys.iter().map(|k| k.and_then(|k| store.get(&(k, 0)))).collect();
        let todo: Vec<Sample> = chunk.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(s, _)| s.clone()).collect();
        let (pixels, bad) = decode_with(&todo, &|_| {}, |img| preprocess.apply(&img));
        skipped.extend(bad);
        let good: Vec<Vec<f32>> = pixels.iter().flatten().cloned().collect();
        let mut computed = Vec::new();
        if !good.is_empty() {
            let features = model.features(image::batch(&good, preprocess.size, device));
            let rows: Vec<f32> = features.into_data().try_to_vec::<f32>().unwrap_or_default();
            let width = rows.len() / good.len();
            computed = rows.chunks(width).map(|r| r.to_vec()).collect();
        }
        let mut computed = computed.into_iter();
        let mut pixels = pixels.into_iter();
        let mut features: Vec<Option<Vec<f32>>> = Vec::with_capacity(chunk.len());
        for (c, key) in cached.into_iter().zip(&keys) {
            features.push(match c {
                Some(f) => Some(f),
                None => match pixels.next().flatten() {
                    Some(_) => {
                        let f = computed.next();
                        if let (Some(f), Some(k)) = (&f, key) {
                            let _ = store.put((*k, 0), f.clone());
                        }
                        f
                    }
                    None => None,
                },
            });
        }
        let rows: Vec<f32> = features.iter().flatten().flat_map(|f| f.iter().copied()).collect();
        let n = features.iter().flatten().count();
        let mut probs = if n > 0 { model.probabilities_from_features(&rows, n, device) } else { Vec::new() }.into_iter();
        out.extend(features.iter().map(|f| f.as_ref().and_then(|_| probs.next())));
        reporter.progress(((i + 1) * batch).min(files.len()) as u64);
    }
    let _ = store.flush();
    reporter.finish();
    (out, skipped)
}

/// The feature-store namespace of a frozen-trunk run's pooled features, if it has one.
pub fn run_store(info: &RunInfo, home: &Path) -> Result<Option<FeatureStore>> {
    match (&info.weights_sha256, info.frozen_trunk) {
        (Some(sha), true) => {
            let namespace = Namespace {
                model: info.model.clone(),
                weights_sha256: sha.clone(),
                cut: crate::zoo::backbone::pooled_cut(info.head_pool),
                preprocess: serde_json::to_string(&info.preprocess).expect("preprocess serializes"),
                augment: "none".into(),
                dtype: crate::cache::StoreDtype::F32,
            };
            Ok(Some(FeatureStore::open(&home.join("cache").join("features"), namespace)?))
        }
        _ => Ok(None),
    }
}

/// Accuracy, per-class accuracy and the confusion matrix (rows: true, columns: predicted).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub accuracy: f64,
    pub n: usize,
    /// Recall of each class with at least one example (kept for older readers of `--json`).
    pub per_class: BTreeMap<String, f64>,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    pub labels: Vec<String>,
    /// Precision, recall, F1 and support of every class, in label order.
    pub classes: Vec<ClassReport>,
    /// Unweighted mean of the classes' F1 over classes with support.
    pub macro_f1: f64,
}

/// One class's row of a classification report (scikit-learn's `classification_report`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassReport {
    pub label: String,
    /// Of the inputs predicted as this class, the fraction that are (0 when none is).
    pub precision: f64,
    /// Of the inputs of this class, the fraction predicted as it (0 when there are none).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Inputs of this class.
    pub support: u64,
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
        // Every prediction counts in `n`, also one outside the labels (then it is wrong).
        let mut evaluation = Self::from_confusion(labels, confusion);
        let correct: u64 = (0..k).map(|i| evaluation.confusion[i][i]).sum();
        evaluation.n = truth.len();
        evaluation.accuracy = if truth.is_empty() { 0.0 } else { correct as f64 / truth.len() as f64 };
        evaluation
    }

    /// The report of a confusion matrix (`confusion[truth][predicted]`, `labels.len()` square).
    /// Rows or columns beyond the labels are dropped, missing ones count zero.
    pub fn from_confusion(labels: &[String], mut confusion: Vec<Vec<u64>>) -> Self {
        let k = labels.len();
        confusion.resize(k, Vec::new());
        for row in &mut confusion {
            row.resize(k, 0);
        }
        let n = confusion.iter().flatten().sum::<u64>() as usize;
        let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
        let per_class = labels
            .iter()
            .enumerate()
            .filter(|(i, _)| confusion[*i].iter().sum::<u64>() > 0)
            .map(|(i, l)| (l.clone(), confusion[i][i] as f64 / confusion[i].iter().sum::<u64>() as f64))
            .collect();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let classes: Vec<ClassReport> = labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let hits = confusion[i][i];
                let support: u64 = confusion[i].iter().sum();
                let predicted: u64 = (0..k).map(|t| confusion[t][i]).sum();
                let (precision, recall) = (ratio(hits, predicted), ratio(hits, support));
                let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
                ClassReport { label: label.clone(), precision, recall, f1, support }
            })
            .collect();
        let supported: Vec<f64> = classes.iter().filter(|c| c.support > 0).map(|c| c.f1).collect();
        let macro_f1 = if supported.is_empty() { 0.0 } else { supported.iter().sum::<f64>() / supported.len() as f64 };
        Self {
            accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
            n,
            per_class,
            confusion,
            labels: labels.to_vec(),
            classes,
            macro_f1,
        }
    }
}

/// Predicted class per row of probabilities.
pub fn top1(probs: &[Vec<f32>]) -> Vec<usize> {
    probs.iter().map(|p| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scikit-learn's `classification_report` on the same six predictions gives these rows.
    #[test]
    fn classification_report_matches_hand_counts() {
        let labels: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let eval = Evaluation::from_predictions(&labels, &[0, 0, 0, 1, 1, 2], &[0, 0, 1, 1, 2, 2]);
        assert_eq!(eval.confusion, vec![vec![2, 1, 0, 0], vec![0, 1, 1, 0], vec![0, 0, 1, 0], vec![0, 0, 0, 0]]);
        let rows: Vec<(f64, f64, f64, u64)> = eval.classes.iter().map(|c| (c.precision, c.recall, c.f1, c.support)).collect();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        for (got, want) in rows.iter().zip([(1.0, 2.0 / 3.0, 0.8, 3), (0.5, 0.5, 0.5, 2), (0.5, 1.0, 2.0 / 3.0, 1), (0.0, 0.0, 0.0, 0)]) {
            assert!(close(got.0, want.0) && close(got.1, want.1) && close(got.2, want.2) && got.3 == want.3, "{got:?} vs {want:?}");
        }
        // The class with no examples does not pull the macro average down.
        assert!(close(eval.macro_f1, (0.8 + 0.5 + 2.0 / 3.0) / 3.0), "{}", eval.macro_f1);
        assert!(close(eval.accuracy, 4.0 / 6.0));
    }
}
