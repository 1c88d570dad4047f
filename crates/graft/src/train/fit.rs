//! `graft fit`: train a new head (and optionally part of the trunk) on an image folder.
//!
//! The frozen prefix of the trunk is a fixed function, so when augmentation is off its output
//! is computed once per image and reused every epoch (the main speed trick). Checkpoints are
//! written atomically every epoch; `last.safetensors` carries the training state in its
//! metadata, so a run killed at any moment resumes from its last completed epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Module, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::engine::{self, param_ids, Engine, EpochEnd, Iteration, Keep, Phase, PhaseStatus, Task, Validation};
use super::guard;
use super::parallel::{loss_weight, split_groups, DataParallel, ShardLoss};
use super::config::{CacheMode, FitConfig, Optimizer};
use super::loss::{argmax, cross_entropy};
use super::model::{frozen_prefix, Grafted, Head, HeadSpec};
use crate::classic::{Classic, ClassicKind};
use super::run::{Evaluation, RunInfo};
use super::schedule::{EarlyStopping, LrPlan, ReduceOnPlateau};
use super::lr_find::{LrFound, LrSweep};
use super::semi::{Entry, SemiConfig, SemiMethod, SemiTask, Views};
use crate::cache::store::Key;
use crate::cache::{FeatureStore, Namespace};
use crate::data::augment::{sample_rng, Augment};
use rand::RngCore;
use crate::data::folder::{stratified_split, ImageFolder, Sample, Skipped};
use crate::data::stream::{index_images, pixels_tensor, ImageSource, Item, Prefetch};
use crate::data::image::Preprocess;
use crate::fsutil::write_atomic;
use crate::report::{html, plot, Reporter};
use crate::zoo::layers::{numbered_blocks, FreezeSpec, LayerRow};
use crate::zoo::table::NameSet;
use crate::zoo::trunk::InferenceTrunk;
use crate::zoo::{ModelSpec, Pretrained};
use crate::{GraftError, Result};

/// One epoch's figures, as written to `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub stage: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// `None` when the run has no validation data (`--val-split 0`).
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub seconds: f64,
}

/// Images that went through the frozen trunk prefix vs served from computed activations.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// What a fit trained on: readable images (or texts) per class in each split, in the order of
/// the run's classes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataSummary {
    pub train_per_class: Vec<usize>,
    pub val_per_class: Vec<usize>,
    /// Unreadable files left out (each named once, as the fit starts).
    pub skipped: usize,
}

impl DataSummary {
    pub fn new(classes: usize, train_labels: &[usize], val_labels: &[usize], skipped: usize) -> Self {
        let count = |labels: &[usize]| {
            let mut counts = vec![0; classes];
            labels.iter().filter(|&&l| l < classes).for_each(|&l| counts[l] += 1);
            counts
        };
        DataSummary { train_per_class: count(train_labels), val_per_class: count(val_labels), skipped }
    }

    /// One line for a person: `data: 3 classes, 12 images (9 train, 3 validation): Bag 3+1, …`.
    pub fn line(&self, classes: &[String], noun: &str) -> String {
        let (train, val): (usize, usize) = (self.train_per_class.iter().sum(), self.val_per_class.iter().sum());
        let per_class: Vec<String> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let t = self.train_per_class.get(i).copied().unwrap_or(0);
                if val > 0 { format!("{c} {t}+{}", self.val_per_class.get(i).copied().unwrap_or(0)) } else { format!("{c} {t}") }
            })
            .collect();
        let split = if val > 0 { format!("{train} train + {val} validation") } else { format!("{train} train, no validation") };
        let mut line = format!("data: {} classes, {} {noun} ({split}): {}", classes.len(), train + val, per_class.join(", "));
        if self.skipped > 0 {
            line.push_str(&format!("; {} unreadable files skipped", self.skipped));
        }
        line
    }
}

/// What `fit` reports at the end (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitSummary {
    pub run: PathBuf,
    pub epochs: usize,
    pub best_epoch: usize,
    /// `None` without validation data; the last epoch is then the one kept.
    pub best_val_accuracy: Option<f64>,
    pub train_seconds: f64,
    pub skipped: Vec<Skipped>,
    pub cache: CacheStats,
    /// Images run through the trunk (a frozen prefix counts once per image when cached).
    pub trunk_images: u64,
    pub stopped_early: bool,
    pub trainable_params: usize,
    pub classes: Vec<String>,
    /// Images per class in each split (absent from summaries written before it existed).
    #[serde(default)]
    pub data: DataSummary,
    /// The metric that picked `best_epoch`; `None` without validation data or for a classic head
    /// (one "epoch").
    #[serde(default)]
    pub monitor: Option<super::config::Monitor>,
    /// The validation loss of `best_epoch`.
    #[serde(default)]
    pub best_val_loss: Option<f64>,
}

/// The readable images of a split, as an index: paths, labels and content hashes. Pixels are
/// decoded batch by batch when needed ([`ImageSource::stream`]), never held all at once.
pub(crate) struct Split {
    pub(crate) paths: Arc<Vec<PathBuf>>,
    labels: Vec<usize>,
    /// sha256 of each image file: its key in the feature store.
    hashes: Vec<[u8; 32]>,
}

impl Split {
    pub(crate) fn len(&self) -> usize {
        self.labels.len()
    }

    /// The split's images through `preprocess` (and `augment` where an item asks for a view).
    fn source(&self, preprocess: &Preprocess, augment: &Augment) -> ImageSource {
        ImageSource { paths: self.paths.clone(), preprocess: preprocess.clone(), augment: augment.clone() }
    }
}

/// The TensorBoard scalars of an epoch of `fit`.
/// The end of a classifier's epoch in `metrics.jsonl`'s format: the training loss and accuracy
/// over `n` examples from their sums, and the validation figures if there are any. Shared by
/// the tasks that train a classifier outside `fit` (the MLP on stored features, the word
/// encoder of corrupted-text pretraining).
pub(crate) fn classifier_epoch_end(epoch: usize, lr: f64, seconds: f64, loss_sum: f64, correct: usize, n: usize, validation: Option<super::engine::Validation>) -> super::engine::EpochEnd {
    let n = n.max(1) as f64;
    let metrics = EpochMetrics {
        epoch,
        stage: 1,
        lr,
        train_loss: loss_sum / n,
        train_accuracy: correct as f64 / n,
        val_loss: validation.as_ref().map(|v| v.loss),
        val_accuracy: validation.as_ref().map(|v| v.accuracy),
        seconds,
    };
    super::engine::EpochEnd { validation, record: serde_json::to_value(&metrics).expect("metrics serialize"), scalars: scalars(&metrics) }
}

/// The one-line report of an epoch written by [`classifier_epoch_end`].
pub(crate) fn report_classifier_epoch(reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
    let val = record["val_accuracy"].as_f64().map(|a| format!(" - val_accuracy: {a:.4}")).unwrap_or_default();
    reporter.message(&format!("epoch {}/{total} - loss: {:.4}{val}", record["epoch"], record["train_loss"].as_f64().unwrap_or(f64::NAN)));
}

pub fn scalars(m: &EpochMetrics) -> Vec<(String, f64)> {
    let all = [
        ("loss/train", Some(m.train_loss)),
        ("loss/val", m.val_loss),
        ("accuracy/train", Some(m.train_accuracy)),
        ("accuracy/val", m.val_accuracy),
        ("lr", Some(m.lr)),
    ];
    all.into_iter().filter_map(|(tag, v)| v.map(|v| (tag.to_string(), v))).collect()
}

/// One stage of an image fit as the engine's task: a batch goes through the trunk (or comes
/// from the frozen prefix's stored activations) and the unfrozen rest; the new head and the
/// trunk are two parameter groups (the trunk's at `body_lr_mult` × the rate).
struct FitTask<'a> {
    config: &'a FitConfig,
    classes: &'a [String],
    train: &'a Split,
    val: &'a Split,
    preprocess: &'a Preprocess,
    train_cache: Option<Cache>,
    val_cache: Option<Cache>,
    views: usize,
    /// Stages of the frozen prefix (0: none).
    cut: usize,
    /// Per-sample shape of the activations at `cut`.
    act_shape: [usize; 3],
    resolution: usize,
    freeze: &'a FreezeSpec,
    stage: usize,
    stage_lr_factor: f64,
    plan: &'a LrPlan,
    class_weights: Option<&'a [f32]>,
    head_ids: Vec<ParamId>,
    body_ids: Vec<ParamId>,
    reporter: &'a dyn FitReporter,
    device: &'a Device,
    train_device: Device,
    /// This epoch's shuffled image order.
    order: Vec<usize>,
    /// Several devices: each batch split across them (when the trunk runs in the step).
    parallel: Option<DataParallel<Grafted>>,
    /// This epoch's batches of pixels, decoded ahead on worker threads (when the trunk runs).
    loader: Option<Prefetch<Result<Vec<f32>>>>,
    /// The iteration of the loader's first batch.
    loader_base: usize,
    /// The frozen prefix, prepared for inference once per epoch (not per batch), when it runs.
    prefix: Option<(Grafted, InferenceTrunk)>,
    /// (loss sum, correct, seen) over the epoch.
    sums: (f64, usize, usize),
    /// Images run through the trunk (training and validation).
    trunk_images: u64,
}

impl FitTask<'_> {
    /// The pixels of iteration `it`'s batch, from the epoch's prefetching loader (started at
    /// the first batch the epoch needs, so a resumed or restarted epoch streams from there).
    fn next_images(&mut self, it: &Iteration, device: &Device) -> Result<Tensor<4>> {
        let bs = self.config.batch_size;
        let in_step = self.loader.as_ref().is_some_and(|l| self.loader_base + l.position() == it.index);
        if !in_step {
            let (seed, epoch, augmenting) = (self.config.seed, it.epoch as u64, !self.config.augment.is_identity());
            let jobs: Vec<Vec<Item>> = self.order[it.index * bs..]
                .chunks(bs)
                .map(|batch| batch.iter().map(|&i| (i, augmenting.then_some((seed, epoch, i as u64)))).collect())
                .collect();
            self.loader = Some(self.train.source(self.preprocess, &self.config.augment).stream(jobs));
            self.loader_base = it.index;
        }
        let loader = self.loader.as_mut().expect("started above");
        let pixels = loader.next().ok_or_else(|| GraftError::Data { path: self.config.data.clone(), reason: "the image loader stopped".into() })??;
        Ok(pixels_tensor(pixels, self.preprocess.size, device))
    }
}

impl Task for FitTask<'_> {
    type Model = Grafted;

    fn iterations(&self) -> usize {
        self.train.len().div_ceil(self.config.batch_size)
    }

    fn begin_epoch(&mut self, model: &Grafted, epoch: usize) -> Result<()> {
        self.order = engine::epoch_order(self.train.len(), self.config.seed, epoch);
        if let Some(dp) = &self.parallel {
            dp.seed(engine::epoch_seed(self.config.seed, epoch));
        }
        self.sums = (0.0, 0, 0);
        self.loader = None;
        self.prefix = if self.train_cache.is_some() || self.cut == 0 {
            None
        } else {
            let prefix = model.valid();
            let frozen = prefix.trunk.for_inference();
            Some((prefix, frozen))
        };
        Ok(())
    }

    fn lr(&self, it: &Iteration) -> f64 {
        self.plan.lr_at(it.step) * self.stage_lr_factor
    }

    fn step(&mut self, model: &Grafted, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let (config, views, epoch) = (self.config, self.views, it.epoch);
        let bs = config.batch_size;
        let batch: Vec<usize> = self.order[it.index * bs..((it.index + 1) * bs).min(self.order.len())].to_vec();
        let targets: Vec<usize> = batch.iter().map(|&i| self.train.labels[i]).collect();
        // Pixels when the trunk runs: on the inference device for a frozen prefix, else for training.
        let images = match (&self.train_cache, &self.prefix) {
            (Some(_), _) => None,
            (None, Some(_)) => Some(self.next_images(it, &self.device.clone())?),
            (None, None) => {
                let device = self.train_device.clone();
                Some(self.next_images(it, &device)?)
            }
        };
        let input: Tensor<2> = match (&self.train_cache, &self.prefix) {
            (Some(cache), _) => {
                // One of the image's stored views per epoch, seeded.
                let rows: Vec<usize> = batch
                    .iter()
                    .map(|&i| i * views + if views > 1 { (sample_rng(config.seed, epoch as u64, i as u64).next_u64() % views as u64) as usize } else { 0 })
                    .collect();
                cache.tensor(&rows, &self.train_device)?
            }
            (None, Some((prefix, frozen))) => {
                let x = images.expect("decoded above");
                self.trunk_images += batch.len() as u64;
                let a = prefix.activations(frozen, x, self.cut);
                self.act_shape = map_shape(prefix, self.cut, self.resolution);
                // Onto the autodiff graph as a constant, on the device (no copy through the host).
                a.autodiff()
            }
            (None, None) => {
                self.trunk_images += batch.len() as u64;
                images.expect("decoded above").flatten(1, 3)
            }
        };
        if let Some(dp) = self.parallel.as_mut() {
            // Data-parallel: each device's replica takes its rows of the batch.
            let (cut, act_shape, s, smoothing, weights) = (self.cut, self.act_shape, self.resolution, config.label_smoothing, self.class_weights);
            let (input, targets) = (&input, &targets);
            let out = dp.step(model, batch.len(), |replica, shard| {
                let x = shard.take(input);
                let t = &targets[shard.rows.clone()];
                let logits = if cut == 0 {
                    let [n, _] = x.dims();
                    replica.forward(x.reshape([n, 3, s, s])) // [n, classes]
                } else {
                    replica.forward_from(x, cut, act_shape)
                };
                let loss = cross_entropy(logits.clone(), t, smoothing, weights, &shard.device);
                let correct = argmax(logits.detach()).iter().zip(t).filter(|(p, t)| p == t).count();
                Ok(ShardLoss { loss, weight: loss_weight(t, weights), output: correct })
            })?;
            guard::check_loss("training loss", out.loss, epoch + 1, lr)?;
            self.sums.1 += out.outputs.iter().map(|(_, c)| c).sum::<usize>();
            self.sums.2 += batch.len();
            self.sums.0 += out.loss * batch.len() as f64;
            let mut groups = split_groups(out.grads, model, &[&self.head_ids, &self.body_ids]).into_iter();
            let (head, body) = (groups.next().expect("two groups"), groups.next().expect("two groups"));
            return Ok(vec![(head, 1.0), (body, config.body_lr_mult)]);
        }
        let logits = if self.cut == 0 {
            let [n, _] = input.dims();
            let s = self.resolution;
            model.forward(input.reshape([n, 3, s, s])) // [n, classes]
        } else {
            model.forward_from(input, self.cut, self.act_shape)
        };
        let loss = cross_entropy(logits.clone(), &targets, config.label_smoothing, self.class_weights, &self.train_device);
        let loss_value: f32 = loss.clone().into_scalar();
        guard::check_loss("training loss", loss_value as f64, epoch + 1, lr)?;
        let predicted = argmax(logits.detach());
        self.sums.1 += predicted.iter().zip(&targets).filter(|(p, t)| p == t).count();
        self.sums.2 += batch.len();
        self.sums.0 += loss_value as f64 * batch.len() as f64;
        let mut grads = loss.backward();
        let head = GradientsParams::from_params(&mut grads, model, &self.head_ids);
        let body = GradientsParams::from_params(&mut grads, model, &self.body_ids);
        Ok(vec![(head, 1.0), (body, config.body_lr_mult)])
    }

    fn end_epoch(&mut self, model: &Grafted, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let (config, val) = (self.config, self.val);
        // Validation on the inference copy: frozen and trained BN alike use running stats.
        let validation = if val.labels.is_empty() {
            None
        } else {
            let (loss, predicted) = match &self.val_cache {
                Some(cache) => evaluate_cached(model, cache, &val.labels, self.cut, self.act_shape, config.batch_size, self.views, self.device)?,
                None => {
                    self.trunk_images += val.len() as u64;
                    evaluate_images(model, val, self.preprocess, config.batch_size, self.device)?
                }
            };
            let eval = Evaluation::from_predictions(self.classes, &val.labels, &predicted);
            Some(Validation { loss, accuracy: eval.accuracy, confusion: eval.confusion })
        };
        let (loss_sum, correct, seen) = self.sums;
        let metrics = EpochMetrics {
            epoch,
            stage: self.stage,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss: validation.as_ref().map(|v| v.loss),
            val_accuracy: validation.as_ref().map(|v| v.accuracy),
            seconds,
        };
        Ok(EpochEnd { validation, scalars: scalars(&metrics), record: serde_json::to_value(&metrics).expect("metrics serialize") })
    }

    /// A frozen trunk cannot change, so only the head is read then, not the trunk's millions of
    /// weights every epoch (a cached epoch over 10,000 images takes ~0.1 s).
    fn check_weights(&self, model: &Grafted, epoch: usize, lr: f64) -> Result<()> {
        if *self.freeze == FreezeSpec::All {
            guard::check_weights(&model.head, epoch, lr)
        } else {
            guard::check_weights(model, epoch, lr)
        }
    }

    fn report(&self, _reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
        if let Ok(m) = serde_json::from_value::<EpochMetrics>(record.clone()) {
            self.reporter.epoch(&m, total);
        }
    }
}

/// Hooks for the caller: progress and the per-epoch line.
pub trait FitReporter: Reporter {
    fn epoch(&self, metrics: &EpochMetrics, epochs: usize);
}

/// Runs (or resumes) training into `run`. A fresh run that fails before its first epoch is
/// saved leaves no run directory behind (see [`crate::fsutil::fresh_run_state`]).
pub fn fit(config: &FitConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn FitReporter, device: &Device) -> Result<FitSummary> {
    fit_on(config, run, resume, home, reporter, std::slice::from_ref(device))
}

/// [`fit`] on several devices (the first is the main one): where the trunk runs in each step
/// (no activation cache), every batch is split across them and trained data-parallel
/// ([`DataParallel`]); a cached frozen trunk trains its head on the main device alone.
pub fn fit_on(config: &FitConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn FitReporter, devices: &[Device]) -> Result<FitSummary> {
    let device = devices.first().ok_or_else(|| GraftError::setting(crate::device::SETTING, "", "no device given"))?;
    engine::removing_a_failed_start(run, resume, || fit_run(config, run, resume, home, reporter, device, devices))
}

#[allow(clippy::too_many_arguments)]
fn fit_run(config: &FitConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn FitReporter, device: &Device, devices: &[Device]) -> Result<FitSummary> {
    config.validate()?;
    if !config.tasks.is_empty() {
        let list = config.tasks.iter().map(|t| t.column.as_str()).collect::<Vec<_>>().join(",");
        return Err(GraftError::setting("tasks", &list, "multi-task fits read a text CSV with a label column per task (a text model such as minilm-l6); image folders have one label"));
    }
    // Everything that can be refused cheaply is checked before the run directory is created,
    // so a mistyped flag leaves nothing behind.
    let spec = ModelSpec::find(&config.model)?;
    if !config.from_scratch && config.weights.is_none() && spec.source.is_none() {
        return Err(GraftError::NeedsWeights { model: spec.id.into() });
    }
    let train_folder = ImageFolder::scan(&config.data)?;
    if resume {
        engine::check_total(run, config.total_epochs(), "epochs")?;
    }
    engine::prepare_run_dir(run, resume)?;
    // Seeds burn's generator: the new head's initialisation and dropout masks.
    device.seed(config.seed);

    // --- data ---------------------------------------------------------------------------------
    let classes = train_folder.classes.clone();
    let (train_samples, val_samples) = split_samples(config, &train_folder)?;
    let mut skipped = Vec::new();
    let train = index_split(&train_samples, "reading training images", reporter, &mut skipped);
    let val = index_split(&val_samples, "reading validation images", reporter, &mut skipped);
    for s in &skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    if train.len() == 0 {
        return Err(GraftError::Data { path: config.data.clone(), reason: "no readable training images".into() });
    }
    if val.len() == 0 && !val_samples.is_empty() {
        return Err(GraftError::Data { path: config.val.clone().unwrap_or(config.data.clone()), reason: "no readable validation images".into() });
    }
    let data = DataSummary::new(classes.len(), &train.labels, &val.labels, skipped.len());
    reporter.message(&data.line(&classes, "images"));
    let present: BTreeSet<usize> = train.labels.iter().copied().collect();
    if present.len() < 2 {
        return Err(GraftError::Data { path: config.data.clone(), reason: "fewer than 2 classes have readable training images".into() });
    }

    // --- model --------------------------------------------------------------------------------
    // A file in another framework's names loads into that flavour of the architecture
    // (Keras's, Caffe's); its name set decides the preparation (timm's `pretrained_cfg` for a
    // timm file).
    let (spec, trunk, weights_sha256, preprocess, names) = if config.from_scratch {
        (spec, spec.config().init(device), None, spec.preprocess(), None)
    } else {
        let p = Pretrained::load(spec, config.weights.as_deref(), home, reporter, device)?;
        let (preprocess, names) = (p.preprocess(), (p.names == NameSet::Timm).then_some(p.names));
        (p.spec, p.net, Some(p.weights_sha256), preprocess, names)
    };
    let trunk_config = spec.config();
    let resolution = trunk_config.resolution();
    let head_width = Grafted::head_input_width(config.head_pool, trunk_config.final_map());
    let head = Head::init(&config.head.neural(), head_width, classes.len(), config.dropout, device);
    let mut model = Grafted::new(trunk, head, config.head_pool);
    let info = RunInfo {
        model: spec.id.into(),
        classes: classes.clone(),
        head: config.head.clone(),
        head_pool: config.head_pool,
        dropout: config.dropout,
        preprocess: preprocess.clone(),
        weights_sha256,
        weights_names: names,
        frozen_trunk: if config.stages.is_empty() { config.freeze == FreezeSpec::All } else { config.stages.iter().all(|s| s.train == "head") },
    };
    // config.toml first: a run counts as started once model.json exists, and `--resume`
    // needs both (a kill between the two then leaves a directory a fresh `fit` may reuse).
    write_atomic(&run.join("config.toml"), config.to_toml().as_bytes())?;
    info.save(run, device)?;

    let mut rows: Vec<LayerRow> = spec.layer_rows().into_iter().filter(|r| !r.is_head).collect();
    // `--stages topK` counts the numbered blocks of the layer table, as `--freeze N` does.
    let blocks = numbered_blocks(&rows);
    rows.extend(Head::rows(&config.head.neural(), head_width, classes.len()));

    if let HeadSpec::Classic(kind) = &config.head {
        return fit_classic(kind, config, run, home, &model, &info, &train, &val, skipped, reporter, device);
    }
    if let Some(semi) = &config.semi {
        return fit_semi(semi, config, run, resume, home, model, &info, &rows, &trunk_config, &train, &val, skipped, reporter, device);
    }

    // (what is frozen, epochs, learning-rate factor relative to --lr) per stage.
    let stages: Vec<(FreezeSpec, usize, f64)> = if config.stages.is_empty() {
        vec![(config.freeze.clone(), config.epochs, 1.0)]
    } else {
        config.stages.iter().map(|s| Ok((s.freeze(blocks)?, s.epochs, s.lr.map(|lr| lr / config.lr).unwrap_or(1.0)))).collect::<Result<_>>()?
    };
    let total_epochs: usize = stages.iter().map(|s| s.1).sum();
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let plan = LrPlan {
        base_lr: config.lr,
        schedule: config.schedule.clone(),
        warmup_epochs: config.warmup_epochs,
        steps_per_epoch,
        epochs: total_epochs,
    };
    let class_weights = config.class_weights.weights(&train.labels, classes.len());

    // --- resume -------------------------------------------------------------------------------
    let mut engine = Engine::open(run, resume, config.seed, reporter, device)?;
    model = engine::stable_ids(model);
    if let Some(dict) = &engine.resumed {
        model = checkpoint::import(model, dict, &run.join("last.safetensors"), spec.id)?;
    }
    if engine.state.finished(total_epochs) {
        reporter.message("the run had already finished");
    }

    // --- training -----------------------------------------------------------------------------
    let mut stats = CacheStats::default();
    let mut trunk_images = 0u64;
    let mut trainable_params = 0;
    let train_device = device.clone().autodiff();
    let mut epoch_offset = 0;
    for (stage_index, (freeze, stage_epochs, stage_lr_factor)) in stages.iter().enumerate() {
        let stage_end = epoch_offset + stage_epochs;
        if engine.status(epoch_offset, *stage_epochs) == PhaseStatus::Done {
            epoch_offset = stage_end;
            continue;
        }
        let frozen = freeze.frozen_params(&rows)?;
        model = keep_bn_statistics(model.unfreeze().freeze(&rows, &frozen, &trunk_config)?, config)?.train();
        trainable_params = count_trainable(&model);
        let cut = frozen_prefix(&rows, &frozen, &trunk_config);
        let augmenting = !config.augment.is_identity();
        let use_cache = match config.cache {
            CacheMode::Off => false,
            _ if cut == 0 => false,
            _ if augmenting && config.cache_views == 0 => {
                if stage_index == 0 {
                    reporter.message("augmentation turns the activation cache off (the frozen trunk runs every epoch); --cache-views K stores K augmented views per image instead");
                }
                false
            }
            _ => true,
        };
        // Views per image in the cache: K augmented ones, or the plain image.
        let views = if augmenting { config.cache_views.max(1) } else { 1 };

        // Activations of the frozen prefix, computed once for this stage.
        let prefix = model.valid();
        let caching = Instant::now();
        let (train_cache, val_cache, act_shape) = if use_cache {
            let augment = if views > 1 { config.augment.to_string() } else { "none".into() };
            let mut store = open_store(home, spec.id, info.weights_sha256.as_deref(), &trunk_config.cut_name(cut, config.head_pool), &preprocess, &augment, config, reporter)?;
            let misses_before = stats.misses;
            let mut fill = |split: &Split, task: &str| {
                activations(&prefix, split, &preprocess, cut, View::of(views, &config.augment), config, store.as_mut(), device, reporter, task, &mut stats)
            };
            let (t, shape) = fill(&train, "caching frozen-trunk activations")?;
            let (v, _) = fill(&val, "caching validation activations")?;
            trunk_images += stats.misses - misses_before;
            let store = store.map(Arc::new);
            let (t, v) = (Cache::new(t, store.as_ref(), train.len() * views), Cache::new(v, store.as_ref(), val.len() * views));
            (Some(t), Some(v), shape)
        } else {
            (None, None, [0; 3])
        };
        engine.state.train_seconds += caching.elapsed().as_secs_f64();

        let (head_ids, body_ids) = (param_ids(&model.head), param_ids(&model.trunk));
        let mut task = FitTask {
            config,
            classes: &classes,
            train: &train,
            val: &val,
            preprocess: &preprocess,
            train_cache,
            val_cache,
            views,
            cut,
            act_shape,
            resolution,
            freeze,
            stage: stage_index + 1,
            stage_lr_factor: *stage_lr_factor,
            plan: &plan,
            class_weights: class_weights.as_deref(),
            head_ids,
            body_ids,
            reporter,
            device,
            train_device: train_device.clone(),
            order: Vec::new(),
            parallel: if devices.len() > 1 && !use_cache { Some(DataParallel::new(devices.to_vec())?) } else { None },
            loader: None,
            loader_base: 0,
            prefix: None,
            sums: (0.0, 0, 0),
            trunk_images: 0,
        };
        // Each stage gets its own patience; a plateau's reduced rate carries over.
        let phase = fit_phase(config, epoch_offset, *stage_epochs, total_epochs);
        model = engine.run_phase(&mut task, model, phase)?;
        trunk_images += task.trunk_images;
        if !use_cache {
            stats.misses += task.trunk_images;
        }
        epoch_offset = stage_end;
        if engine.state.stopped_early {
            break;
        }
    }
    let state = engine.state;

    // --- wrap up ------------------------------------------------------------------------------
    let metrics = read_metrics(run)?;
    write_plots(run, &metrics, &classes, &state.best_confusion)?;
    let summary = FitSummary {
        run: run.to_path_buf(),
        epochs: state.epoch,
        best_epoch: state.best_epoch,
        best_val_accuracy: (!val.labels.is_empty()).then_some(state.best_val_accuracy),
        train_seconds: state.train_seconds,
        skipped,
        cache: stats,
        trunk_images,
        stopped_early: state.stopped_early,
        trainable_params,
        classes,
        data,
        monitor: (!val.labels.is_empty()).then_some(config.monitor),
        best_val_loss: (!val.labels.is_empty()).then_some(state.best_val_loss),
    };
    write_atomic(&run.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("summary serializes"))?;
    Ok(summary)
}

/// The training and validation images: `--val`'s folder, or a seeded stratified split of the
/// training folder (`--val-split 0`: all of it trains, nothing validates).
fn split_samples(config: &FitConfig, train_folder: &ImageFolder) -> Result<(Vec<Sample>, Vec<Sample>)> {
    Ok(match &config.val {
        Some(dir) => (train_folder.samples.clone(), ImageFolder::scan_with_classes(dir, &train_folder.classes)?.samples),
        None => {
            // --val-split 0: train on everything and keep the last epoch (a fixed budget).
            let (t, v) = if config.val_split == 0.0 {
                ((0..train_folder.samples.len()).collect(), Vec::new())
            } else {
                stratified_split(&train_folder.samples, config.val_split, config.seed)?
            };
            (t.iter().map(|&i| train_folder.samples[i].clone()).collect(), v.iter().map(|&i| train_folder.samples[i].clone()).collect())
        }
    })
}

/// The learning-rate range test ([`lr_find`](super::lr_find)) of `config`'s head on the frozen
/// trunk's pooled features of the training images (from the feature store, as `fit` reads
/// them): a fresh head, `config`'s optimizer, batch size, label smoothing and class weights,
/// one mini-batch per rate. Only a neural head on a frozen trunk (`freeze = all`, no stages)
/// is swept. Nothing is written but the feature store.
pub fn lr_find(config: &FitConfig, sweep: &LrSweep, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<LrFound> {
    config.validate()?;
    sweep.validate()?;
    if let HeadSpec::Classic(_) = &config.head {
        return Err(GraftError::setting("head", &config.head.to_string(), "a classic head trains in one go, without a learning rate: the range test needs a linear or MLP head"));
    }
    if config.freeze != FreezeSpec::All || !config.stages.is_empty() || config.semi.is_some() || config.from_scratch {
        let (setting, value) = if !config.stages.is_empty() { ("stages", String::new()) } else { ("freeze", config.freeze.to_string()) };
        return Err(GraftError::setting(setting, &value, "the learning-rate range test sweeps the head on the frozen trunk's stored features: use a pretrained trunk with freeze all (the default), no stages and no unlabelled data"));
    }
    let spec = ModelSpec::find(&config.model)?;
    if config.weights.is_none() && spec.source.is_none() {
        return Err(GraftError::NeedsWeights { model: spec.id.into() });
    }
    let folder = ImageFolder::scan(&config.data)?;
    let (train_samples, _) = split_samples(config, &folder)?;
    let mut skipped = Vec::new();
    let train = index_split(&train_samples, "reading training images", reporter, &mut skipped);
    for s in &skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    if train.len() == 0 {
        return Err(GraftError::Data { path: config.data.clone(), reason: "no readable training images".into() });
    }
    device.seed(config.seed);
    let pretrained = Pretrained::load(spec, config.weights.as_deref(), home, reporter, device)?;
    let spec = pretrained.spec;
    let preprocess = pretrained.preprocess();
    let trunk_config = spec.config();
    let head_width = Grafted::head_input_width(config.head_pool, trunk_config.final_map());
    let classes = folder.classes.len();
    let model = Grafted::new(pretrained.net, Head::init(&config.head.neural(), head_width, classes, config.dropout, device), config.head_pool);
    let cut = model.trunk.num_stages();
    let pooled = crate::zoo::backbone::pooled_cut(config.head_pool);
    let mut store = open_store(home, spec.id, Some(&pretrained.weights_sha256), &pooled, &preprocess, "none", config, reporter)?;
    let mut stats = CacheStats::default();
    let none = Augment::default();
    let (filled, _) = activations(&model.valid(), &train, &preprocess, cut, View::of(1, &none), config, store.as_mut(), device, reporter, "caching frozen-trunk activations", &mut stats)?;
    let store = store.map(Arc::new);
    let cache = Cache::new(filled, store.as_ref(), train.len());

    let train_device = device.clone().autodiff();
    let mut head = Some(model.head.train());
    let mut optimizer = make_optimizer(&config.optimizer);
    let class_weights = config.class_weights.clone().weights(&train.labels, classes);
    let (bs, per_epoch) = (config.batch_size, train.len().div_ceil(config.batch_size));
    let mut order = Vec::new();
    reporter.start("sweeping the learning rate", Some(sweep.steps as u64));
    let found = super::lr_find::sweep(
        sweep,
        |i, lr| {
            if i % per_epoch == 0 {
                order = engine::epoch_order(train.len(), config.seed, i / per_epoch);
            }
            let k = i % per_epoch;
            let batch = &order[k * bs..((k + 1) * bs).min(order.len())];
            let targets: Vec<usize> = batch.iter().map(|&r| train.labels[r]).collect();
            let net = head.take().expect("the head is back after every step");
            let logits = net.forward(cache.tensor(batch, &train_device)?); // [B, classes]
            let loss = cross_entropy(logits, &targets, config.label_smoothing, class_weights.as_deref(), &train_device);
            let value = loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            head = Some(optimizer.step(lr, net, grads));
            Ok(value)
        },
        |done| reporter.progress(done as u64),
    );
    reporter.finish();
    found
}

/// Reads `metrics.jsonl`; a torn last line (killed mid-write) is ignored.
pub fn read_metrics(run: &Path) -> Result<Vec<EpochMetrics>> {
    engine::read_records(run)
}

pub(crate) fn write_plots(run: &Path, metrics: &[EpochMetrics], classes: &[String], confusion: &[Vec<u64>]) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let series = |name: &str, f: fn(&EpochMetrics) -> Option<f64>| plot::Series {
        name: name.into(),
        points: metrics.iter().filter_map(|m| f(m).map(|v| (m.epoch as f64, v))).collect(),
    };
    let with_val = |train: plot::Series, val: plot::Series| if val.points.is_empty() { vec![train] } else { vec![train, val] };
    plot::line_plot(&run.join("loss.png"), "loss", "epoch", &with_val(series("train", |m| Some(m.train_loss)), series("val", |m| m.val_loss)))?;
    plot::line_plot(&run.join("accuracy.png"), "accuracy", "epoch", &with_val(series("train", |m| Some(m.train_accuracy)), series("val", |m| m.val_accuracy)))?;
    if !confusion.is_empty() {
        plot::confusion_matrix_plot(&run.join("confusion.png"), classes, confusion)?;
    }
    let mut page = html::Page::for_run(run, metrics);
    if !confusion.is_empty() {
        let evaluation = Evaluation::from_confusion(classes, confusion.to_vec());
        page.sections.push(html::Section { heading: "Validation (the kept epoch)".into(), evaluation, top_losses: Vec::new(), gallery_note: None });
    }
    page.write(&run.join(html::REPORT_FILE))
}

/// Indexes a split: every file is read once (hash, and a decode to find unreadable ones, which
/// are skipped and listed); no pixels are kept.
pub(crate) fn index_split(samples: &[Sample], task: &str, reporter: &dyn Reporter, skipped: &mut Vec<Skipped>) -> Split {
    reporter.start(task, Some(samples.len() as u64));
    let (hashes, bad) = index_images(samples, &|done| reporter.progress(done as u64));
    reporter.finish();
    skipped.extend(bad);
    let (mut paths, mut labels, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for (hash, s) in hashes.into_iter().zip(samples) {
        if let Some(hash) = hash {
            paths.push(s.path.clone());
            labels.push(s.label);
            keys.push(hash);
        }
    }
    Split { paths: Arc::new(paths), labels, hashes: keys }
}

/// Per-sample shape of the activation map at `cut` (ignored after the last stage).
fn map_shape(model: &Grafted, cut: usize, resolution: usize) -> [usize; 3] {
    if cut >= model.trunk.num_stages() {
        return [0; 3];
    }
    let device = model.head.layers[0].weight.val().device();
    let probe = Tensor::<4>::zeros([1, 3, resolution, resolution], &device);
    let [_, c, h, w] = model.trunk.forward_stages(probe, 0..cut).dims();
    [c, h, w]
}

/// The frozen prefix's activations for every image (× `views`), row `image·views + view`:
/// read from the feature store when present there, computed (and stored) otherwise; with a
/// store, the rows stay on disk (read per batch through its memory maps), without one (a trunk
/// without a weights identity, or `--cache off` for a classic head) they are kept in memory.
/// View 0 is the plain image; views 1.. are augmentations seeded by the image's content hash,
/// so the same file gets the same views in every run. Validation only ever reads view 0, but
/// its rows are laid out the same way for simplicity.
#[allow(clippy::too_many_arguments)]
pub(crate) fn activations(
    prefix: &Grafted,
    split: &Split,
    preprocess: &Preprocess,
    cut: usize,
    views: View<'_>,
    config: &FitConfig,
    mut store: Option<&mut FeatureStore>,
    device: &Device,
    reporter: &dyn Reporter,
    task: &str,
    stats: &mut CacheStats,
) -> Result<(Filled, [usize; 3])> {
    let View { count: views, augment, skip_plain } = views;
    let resolution = preprocess.size as usize;
    let shape = map_shape(prefix, cut, resolution);
    let n = split.len() * views;
    let key = |row: usize| (split.hashes[row / views], (row % views) as u32);
    // Plain rows are left out only where a store keeps the layout (memory rows are dense).
    let skip_plain = skip_plain && store.is_some();
    let wanted = |row: usize| !(skip_plain && row % views == 0);
    let missing: Vec<usize> = match store.as_deref() {
        Some(s) => (0..n).filter(|&row| wanted(row) && !s.contains(&key(row))).collect(),
        None => (0..n).collect(),
    };
    stats.hits += (0..n).filter(|&row| wanted(row)).count().saturating_sub(missing.len()) as u64;
    let frozen = prefix.trunk.for_inference();
    let jobs: Vec<Vec<Item>> = missing
        .chunks(config.batch_size)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&row| {
                    let (image, view) = (row / views, row % views);
                    let seed = u64::from_le_bytes(split.hashes[image][..8].try_into().expect("8 bytes"));
                    (image, (view > 0).then_some((config.seed ^ seed, view as u64, 0)))
                })
                .collect()
        })
        .collect();
    let mut loader = split.source(preprocess, augment).stream(jobs);
    let mut memory = Vec::new();
    reporter.start(task, Some(missing.len() as u64));
    for (done, chunk) in missing.chunks(config.batch_size).enumerate() {
        let pixels = loader.next().ok_or_else(|| GraftError::Data { path: config.data.clone(), reason: "the image loader stopped".into() })??;
        let x = pixels_tensor(pixels, preprocess.size, device);
        let a: Vec<f32> = prefix.activations(&frozen, x, cut).into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: PathBuf::new(), reason: format!("{e:?}") })?;
        let width = a.len() / chunk.len();
        match store.as_mut() {
            Some(store) => {
                for (k, &row) in chunk.iter().enumerate() {
                    store.put(key(row), a[k * width..(k + 1) * width].to_vec())?;
                }
            }
            None => memory.extend(a),
        }
        stats.misses += chunk.len() as u64;
        reporter.progress(((done + 1) * config.batch_size).min(missing.len()) as u64);
    }
    reporter.finish();
    Ok(match store {
        Some(store) => {
            store.flush()?;
            (Filled::Stored((0..n).map(key).collect()), shape)
        }
        None => (Filled::Memory(memory), shape),
    })
}

/// Which views of each image [`activations`] lays out: `count` rows per image, view 0 plain and
/// the others `augment`ed; `skip_plain` leaves view 0 uncomputed (a store of strong views).
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    count: usize,
    augment: &'a Augment,
    skip_plain: bool,
}

impl<'a> View<'a> {
    pub(crate) fn of(count: usize, augment: &'a Augment) -> Self {
        View { count, augment, skip_plain: false }
    }
}

/// Activations as [`activations`] left them: keys into the store, or the rows themselves.
pub(crate) enum Filled {
    Stored(Vec<Key>),
    Memory(Vec<f32>),
}

/// The feature-store namespace for these activations; `None` (memory only) for a trunk without
/// a weights identity (random initialisation) or with `--cache off`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_store(home: &Path, model: &str, weights_sha256: Option<&str>, cut: &str, preprocess: &Preprocess, augment: &str, config: &FitConfig, reporter: &dyn Reporter) -> Result<Option<FeatureStore>> {
    let (Some(sha), false) = (weights_sha256, config.cache == CacheMode::Off) else {
        return Ok(None);
    };
    let namespace = Namespace {
        model: model.into(),
        weights_sha256: sha.into(),
        cut: cut.into(),
        preprocess: serde_json::to_string(preprocess).expect("preprocess serializes"),
        augment: augment.into(),
        dtype: config.cache_dtype,
    };
    let store = FeatureStore::open(&home.join("cache").join("features"), namespace)?;
    for (path, reason) in &store.repaired {
        reporter.message(&format!("feature cache: {} was damaged ({reason}); rebuilding its entries", path.display()));
    }
    Ok(Some(store))
}

/// A classic head (logistic, SVM, k-NN, prototype) on the pooled features of the frozen trunk:
/// features come from the store, the head trains in one go, and the run directory looks like a
/// neural run's (one "epoch").
#[allow(clippy::too_many_arguments)]
fn fit_classic(
    kind: &ClassicKind,
    config: &FitConfig,
    run: &Path,
    home: &Path,
    model: &Grafted,
    info: &RunInfo,
    train: &Split,
    val: &Split,
    skipped: Vec<Skipped>,
    reporter: &dyn FitReporter,
    device: &Device,
) -> Result<FitSummary> {
    if config.freeze != FreezeSpec::All || !config.stages.is_empty() || !config.augment.is_identity() {
        return Err(GraftError::setting("head", &config.head.to_string(), "a classic head trains on stored features: use --freeze all, no --stages and no --augment"));
    }
    let started = Instant::now();
    let skipped_count = skipped.len();
    let cut = model.trunk.num_stages();
    let mut stats = CacheStats::default();
    let prefix = model.valid();
    let mut store = open_store(home, &info.model, info.weights_sha256.as_deref(), &crate::zoo::backbone::pooled_cut(config.head_pool), &info.preprocess, "none", config, reporter)?;
    let plain = View::of(1, &config.augment);
    let (train_rows, _) = activations(&prefix, train, &info.preprocess, cut, plain, config, store.as_mut(), device, reporter, "caching frozen-trunk activations", &mut stats)?;
    let (val_rows, _) = activations(&prefix, val, &info.preprocess, cut, plain, config, store.as_mut(), device, reporter, "caching validation activations", &mut stats)?;
    // A classic head fits on the whole matrix at once: the one place the rows are all in memory.
    let store = store.map(Arc::new);
    let all = |filled: Filled, n: usize| -> Result<(Vec<f32>, usize)> {
        let cache = Cache::new(filled, store.as_ref(), n);
        Ok((cache.gather(&(0..n).collect::<Vec<_>>())?, cache.width))
    };
    let (train_rows, width) = all(train_rows, train.len())?;
    let (val_rows, _) = all(val_rows, val.len())?;
    let classes = info.classes.len();
    let head = Classic::fit_reporting(kind.clone(), &train_rows, &train.labels, width, classes, config.seed, reporter)?;
    head.report_penalty(reporter);
    let score = |rows: &[f32], labels: &[usize]| -> (f64, f64, Evaluation) {
        let probs = head.predict_proba(rows);
        let loss = probs.iter().zip(labels).map(|(p, &l)| -(p[l].max(1e-12) as f64).ln()).sum::<f64>() / labels.len().max(1) as f64;
        let eval = Evaluation::from_predictions(&info.classes, labels, &super::run::top1(&probs));
        (loss, eval.accuracy, eval)
    };
    let (train_loss, train_accuracy, _) = score(&train_rows, &train.labels);
    let validation = (!val.labels.is_empty()).then(|| score(&val_rows, &val.labels));
    let seconds = started.elapsed().as_secs_f64();
    let metrics = EpochMetrics {
        epoch: 1,
        stage: 1,
        lr: 0.0,
        train_loss,
        train_accuracy,
        val_loss: validation.as_ref().map(|v| v.0),
        val_accuracy: validation.as_ref().map(|v| v.1),
        seconds,
    };
    head.save(&run.join("classic.safetensors"))?;
    // The trunk (and an unused placeholder head) so the run is self-contained.
    checkpoint::save(model, &run.join("best.safetensors"), BTreeMap::from([("graft.epoch".to_string(), "1".to_string())]))?;
    engine::write_single_epoch(run, &serde_json::to_value(&metrics).expect("metrics serialize"), &scalars(&metrics))?;
    reporter.epoch(&metrics, 1);
    let confusion = validation.as_ref().map(|v| v.2.confusion.clone()).unwrap_or_default();
    write_plots(run, &[metrics.clone()], &info.classes, &confusion)?;
    let summary = FitSummary {
        run: run.to_path_buf(),
        epochs: 1,
        best_epoch: 1,
        best_val_accuracy: metrics.val_accuracy,
        train_seconds: seconds,
        skipped,
        cache: stats,
        trunk_images: stats.misses,
        stopped_early: false,
        trainable_params: 0,
        classes: info.classes.clone(),
        data: DataSummary::new(info.classes.len(), &train.labels, &val.labels, skipped_count),
        monitor: None,
        best_val_loss: metrics.val_loss,
    };
    write_atomic(&run.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("summary serializes"))?;
    Ok(summary)
}

/// `fit --unlabelled DIR --method …`: the head (and the trunk's blocks `--freeze` leaves
/// trainable) trains on the frozen prefix's stored activations of the labelled images and of
/// weak (and, for FixMatch, strong) views of the unlabelled ones ([`super::semi`]): with
/// `--freeze all` these are the pooled features, with `--freeze N` the activations the first
/// trainable block reads, and every loss goes through the trainable blocks. The run directory
/// is an image run's like any other. `rows` is the layer table (trunk and head) of the trunk
/// `trunk_config` describes.
#[allow(clippy::too_many_arguments)]
fn fit_semi(
    semi: &SemiConfig,
    config: &FitConfig,
    run: &Path,
    resume: bool,
    home: &Path,
    model: Grafted,
    info: &RunInfo,
    rows: &[LayerRow],
    trunk_config: &crate::zoo::TrunkConfig,
    train: &Split,
    val: &Split,
    mut skipped: Vec<Skipped>,
    reporter: &dyn FitReporter,
    device: &Device,
) -> Result<FitSummary> {
    if !config.stages.is_empty() {
        return Err(GraftError::setting("stages", "", format!("{} trains in one stage: leave the last blocks trainable with --freeze N (or --freeze all for the head alone) instead of --stages", semi.method.name())));
    }
    // What trains: the frozen prefix (stages 0..cut) is stored per view; the rest trains.
    let frozen = config.freeze.frozen_params(rows)?;
    let cut = frozen_prefix(rows, &frozen, trunk_config);
    if cut == 0 {
        return Err(GraftError::setting("freeze", &config.freeze.to_string(), format!("{} stores the unlabelled views as the frozen trunk prefix's activations, so the trunk's first stage must stay frozen: --freeze all (the head alone), or --freeze N leaving only the last blocks trainable", semi.method.name())));
    }
    let started = Instant::now();
    let files = crate::data::folder::files_below(&semi.unlabelled, &crate::data::folder::is_image_file)?;
    if files.is_empty() {
        return Err(GraftError::Data { path: semi.unlabelled.clone(), reason: "no image files (png, jpg, jpeg, bmp, gif, webp) for semi-supervised training".into() });
    }
    let samples: Vec<Sample> = files.into_iter().map(|path| Sample { path, label: 0 }).collect();
    let before = skipped.len();
    let unlabelled = index_split(&samples, "reading unlabelled images", reporter, &mut skipped);
    for s in &skipped[before..] {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    if unlabelled.len() == 0 {
        return Err(GraftError::Data { path: semi.unlabelled.clone(), reason: "no readable unlabelled images".into() });
    }
    reporter.message(&format!("unlabelled: {} images ({}, {} unlabelled per labelled image in a batch)", unlabelled.len(), semi.method.name(), semi.ratio));

    // Stored activations at the cut (the pooled features when the trunk is frozen whole):
    // labelled and validation images (a view per epoch when augmenting), weak views of the
    // unlabelled images (view 0 plain), and FixMatch's strong views.
    let head_only = cut >= model.trunk.num_stages();
    let prefix = model.valid();
    let preprocess = &info.preprocess;
    let cut_name = trunk_config.cut_name(cut, config.head_pool);
    let shape = map_shape(&prefix, cut, preprocess.size as usize); // as `activations` lays the rows out
    let mut stats = CacheStats::default();
    let labelled_views = if config.augment.is_identity() { 1 } else { config.cache_views.max(1) };
    let augment_id = |views: usize, augment: &Augment| if views > 1 { augment.to_string() } else { "none".to_string() };
    let fill = |split: &Split, view: View, task: &str, stats: &mut CacheStats| -> Result<(Cache, usize)> {
        let mut store = open_store(home, &info.model, info.weights_sha256.as_deref(), &cut_name, preprocess, &augment_id(view.count, view.augment), config, reporter)?;
        let (filled, _) = activations(&prefix, split, preprocess, cut, view, config, store.as_mut(), device, reporter, task, stats)?;
        let store = store.map(Arc::new);
        Ok((Cache::new(filled, store.as_ref(), split.len() * view.count), view.count))
    };
    let (train_cache, _) = fill(train, View::of(labelled_views, &config.augment), "caching frozen-trunk activations", &mut stats)?;
    let (val_cache, _) = fill(val, View::of(labelled_views, &config.augment), "caching validation activations", &mut stats)?;
    // An identity weak transform (`none`: pseudo-labelling as Lee 2013 has it) reads the plain
    // rows, as the labelled set does without augmentation, instead of storing copies of them.
    let weak_count = if semi.weak.is_identity() { 1 } else { 1 + semi.views };
    let (weak_cache, weak_views) = fill(&unlabelled, View::of(weak_count, &semi.weak), "caching unlabelled activations (weak views)", &mut stats)?;
    let strong_cache = match semi.method {
        SemiMethod::Fixmatch { .. } => Some(fill(&unlabelled, View { count: 1 + semi.views, augment: &semi.strong, skip_plain: true }, "caching unlabelled activations (strong views)", &mut stats)?),
        _ => None,
    };
    reporter.message(&format!("features: {} from the cache, {} computed", stats.hits, stats.misses));

    // --- training -----------------------------------------------------------------------------
    let mut engine = Engine::open(run, resume, config.seed, reporter, device)?;
    let mut model = engine::stable_ids(model);
    if let Some(dict) = &engine.resumed {
        model = checkpoint::import(model, dict, &run.join("last.safetensors"), &info.model)?;
    }
    if engine.state.finished(config.epochs) {
        reporter.message("the run had already finished");
    }
    let (model, groups) = if head_only {
        // Only the head trains: the trunk is left out of the gradients (and of the graph).
        let mut model = model.train();
        model.trunk = model.trunk.no_grad();
        let head = param_ids(&model.head);
        (model, vec![(head, 1.0)])
    } else {
        // The trainable blocks as supervised fit trains them: BatchNorm statistics kept, the
        // trunk's rate `body_lr_mult` × the head's.
        let model = keep_bn_statistics(model.freeze(rows, &frozen, trunk_config)?, config)?.train();
        let groups = vec![(param_ids(&model.head), 1.0), (param_ids(&model.trunk), config.body_lr_mult)];
        (model, groups)
    };
    let trainable_params = count_trainable(&model);
    let entry = if head_only { Entry::Head } else { Entry::Stage { cut, shape } };
    let steps_per_epoch = unlabelled.len().div_ceil(config.batch_size * semi.ratio);
    let mut task: SemiTask<'_, Grafted> = SemiTask {
        semi,
        batch_size: config.batch_size,
        seed: config.seed,
        plan: LrPlan { base_lr: config.lr, schedule: config.schedule.clone(), warmup_epochs: config.warmup_epochs, steps_per_epoch, epochs: config.epochs },
        classes: &info.classes,
        entry,
        labelled: Views { rows: &train_cache, items: train.len(), views: labelled_views },
        labels: &train.labels,
        weak: Views { rows: &weak_cache, items: unlabelled.len(), views: weak_views },
        strong: strong_cache.as_ref().map(|(c, views)| Views { rows: c, items: unlabelled.len(), views: *views }),
        val: Some((Views { rows: &val_cache, items: val.len(), views: labelled_views }, &val.labels)),
        groups,
        reporter,
        device: device.clone(),
        train_device: device.clone().autodiff(),
        teacher: None,
        labelled_order: Vec::new(),
        unlabelled_order: Vec::new(),
        sums: Default::default(),
        alignment: None,
    };
    engine.run_phase(&mut task, model, fit_phase(config, 0, config.epochs, config.epochs))?;
    let state = engine.state;
    let metrics = read_metrics(run)?;
    write_plots(run, &metrics, &info.classes, &state.best_confusion)?;
    let summary = FitSummary {
        run: run.to_path_buf(),
        epochs: state.epoch,
        best_epoch: state.best_epoch,
        best_val_accuracy: (!val.labels.is_empty()).then_some(state.best_val_accuracy),
        train_seconds: started.elapsed().as_secs_f64(),
        data: DataSummary::new(info.classes.len(), &train.labels, &val.labels, skipped.len()),
        skipped,
        cache: stats,
        trunk_images: stats.misses,
        stopped_early: state.stopped_early,
        trainable_params,
        classes: info.classes.clone(),
        monitor: (!val.labels.is_empty()).then_some(config.monitor),
        best_val_loss: (!val.labels.is_empty()).then_some(state.best_val_loss),
    };
    write_atomic(&run.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("summary serializes"))?;
    Ok(summary)
}

impl super::semi::RowSource for Cache {
    fn gather(&self, rows: &[usize]) -> Result<Vec<f32>> {
        Cache::gather(self, rows)
    }
    fn width(&self) -> usize {
        self.width
    }
}

/// The frozen prefix's activations of a split, one row per image view: in the feature store
/// (read per batch, never copied whole) or, without a store, in memory.
pub(crate) struct Cache {
    rows: CacheRows,
    width: usize,
}

enum CacheRows {
    Stored { store: Arc<FeatureStore>, keys: Vec<Key> },
    Memory(Vec<f32>),
}

impl Cache {
    pub(crate) fn new(filled: Filled, store: Option<&Arc<FeatureStore>>, rows: usize) -> Cache {
        match (filled, store) {
            (Filled::Stored(keys), Some(store)) => Cache { width: store.dim().unwrap_or(0), rows: CacheRows::Stored { store: store.clone(), keys } },
            (Filled::Memory(data), _) => Cache { width: data.len() / rows.max(1), rows: CacheRows::Memory(data) },
            (Filled::Stored(_), None) => unreachable!("stored rows come with their store"),
        }
    }

    /// Rows `rows`, concatenated.
    fn gather(&self, rows: &[usize]) -> Result<Vec<f32>> {
        let mut data = Vec::with_capacity(rows.len() * self.width);
        match &self.rows {
            CacheRows::Memory(all) => rows.iter().for_each(|&r| data.extend_from_slice(&all[r * self.width..(r + 1) * self.width])),
            CacheRows::Stored { store, keys } => store.read_rows(keys, rows, "an activation", &mut data)?,
        }
        Ok(data)
    }

    pub(crate) fn tensor(&self, rows: &[usize], device: &Device) -> Result<Tensor<2>> {
        Ok(Tensor::from_data(TensorData::new(self.gather(rows)?, [rows.len(), self.width]), device))
    }
}

/// Validation from cached activations (view 0 of each image: the validation views are never
/// augmented, see `activations`).
#[allow(clippy::too_many_arguments)]
fn evaluate_cached(model: &Grafted, cache: &Cache, labels: &[usize], cut: usize, shape: [usize; 3], batch: usize, views: usize, device: &Device) -> Result<(f64, Vec<usize>)> {
    let all: Vec<usize> = (0..labels.len()).collect();
    let (mut loss, mut predicted) = (0f64, Vec::new());
    for chunk in all.chunks(batch) {
        let rows: Vec<usize> = chunk.iter().map(|&i| i * views).collect();
        let logits = model.forward_from(cache.tensor(&rows, device)?, cut, shape);
        let targets: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
        let l: f32 = cross_entropy(logits.clone(), &targets, 0.0, None, device).into_scalar();
        loss += l as f64 * chunk.len() as f64;
        predicted.extend(argmax(logits));
    }
    Ok((loss / labels.len().max(1) as f64, predicted))
}

fn evaluate_images(model: &Grafted, split: &Split, preprocess: &Preprocess, batch: usize, device: &Device) -> Result<(f64, Vec<usize>)> {
    let all: Vec<usize> = (0..split.len()).collect();
    let jobs: Vec<Vec<Item>> = all.chunks(batch).map(|c| c.iter().map(|&i| (i, None)).collect()).collect();
    let mut loader = split.source(preprocess, &Augment::default()).stream(jobs);
    let (mut loss, mut predicted) = (0f64, Vec::new());
    for chunk in all.chunks(batch) {
        let pixels = loader.next().ok_or_else(|| GraftError::Data { path: PathBuf::new(), reason: "the image loader stopped".into() })??;
        let logits = model.forward(pixels_tensor(pixels, preprocess.size, device));
        let targets: Vec<usize> = chunk.iter().map(|&i| split.labels[i]).collect();
        let l: f32 = cross_entropy(logits.clone(), &targets, 0.0, None, device).into_scalar();
        loss += l as f64 * chunk.len() as f64;
        predicted.extend(argmax(logits));
    }
    Ok((loss / split.len().max(1) as f64, predicted))
}

/// BatchNorm in the unfrozen blocks stays in inference mode (its scale and shift still train)
/// unless `--train-bn` or `--from-scratch`: on a small dataset, batch statistics of a few dozen
/// images replace ImageNet's running statistics poorly (Keras' fine-tuning advice).
fn keep_bn_statistics(model: Grafted, config: &FitConfig) -> Result<Grafted> {
    if config.train_bn || config.from_scratch {
        return Ok(model);
    }
    let flags = ParamGroup::from_regex(r"^trunk\..*\.training$").map_err(|e| GraftError::setting("train_bn", "", format!("{e:?}")))?;
    Ok(model.freeze_group(flags))
}

/// Parameters that will receive gradients.
pub fn count_trainable<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                self.0 += param.lazy_shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// A fit's phase of `epochs` epochs after `offset` (of `total`): the best epoch by the monitored
/// metric kept in `best.safetensors`, with the config's early stopping, plateau and optimiser.
pub(crate) fn fit_phase(config: &FitConfig, offset: usize, epochs: usize, total: usize) -> Phase {
    Phase {
        name: String::new(),
        offset,
        epochs,
        total,
        keep: Keep::Best { monitor: config.monitor, min_delta: config.min_delta },
        best_file: "best.safetensors".into(),
        early_stopping: config.patience.map(|p| EarlyStopping::new(p, config.min_delta)),
        plateau: config.reduce_on_plateau.map(|p| ReduceOnPlateau::new(0.1, p, config.min_delta)),
        optimizer: make_optimizer(&config.optimizer),
    }
}

pub(crate) fn make_optimizer(optimizer: &Optimizer) -> ModuleOptimizer {
    match optimizer {
        Optimizer::Sgd { momentum, weight_decay } => {
            let mut cfg = SgdConfig::new().with_momentum(Some(burn::optim::momentum::MomentumConfig::new().with_momentum(*momentum).with_dampening(0.0)));
            if *weight_decay > 0.0 {
                cfg = cfg.with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(*weight_decay as f32)));
            }
            cfg.init()
        }
        Optimizer::Adamw { weight_decay } => AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(*weight_decay as f32).init(),
    }
}
