//! `graft fit`: train a new head (and optionally part of the trunk) on an image folder.
//!
//! The frozen prefix of the trunk is a fixed function, so when augmentation is off its output
//! is computed once per image and reused every epoch (the main speed trick). Checkpoints are
//! written atomically every epoch; `last.safetensors` carries the training state in its
//! metadata, so a run killed at any moment resumes from its last completed epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::guard;
use super::config::{CacheMode, ClassWeights, FitConfig, Optimizer};
use super::loss::{argmax, cross_entropy};
use super::model::{frozen_prefix, Grafted, Head, HeadSpec};
use crate::classic::{Classic, ClassicKind};
use super::run::{Evaluation, RunInfo};
use super::schedule::{EarlyStopping, LrPlan, ReduceOnPlateau};
use crate::cache::store::content_hash;
use crate::cache::{FeatureStore, Namespace};
use crate::data::augment::sample_rng;
use rand::RngCore;
use crate::data::folder::{decode_with, stratified_split, ImageFolder, Sample, Skipped};
use crate::data::image::Preprocess;
use crate::fsutil::write_atomic;
use crate::report::tensorboard::EventWriter;
use crate::report::{plot, Reporter};
use crate::zoo::layers::{numbered_blocks, FreezeSpec, LayerRow};
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

/// Training state saved in `last.safetensors`' metadata (image and text runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TrainState {
    /// Epochs completed (1-based count).
    pub(super) epoch: usize,
    pub(super) step: usize,
    pub(super) best_epoch: usize,
    pub(super) best_val_accuracy: f64,
    /// Infinite until a validation epoch (JSON writes it as null).
    #[serde(deserialize_with = "null_as_infinity")]
    pub(super) best_val_loss: f64,
    pub(super) early: Option<EarlyStopping>,
    pub(super) plateau: Option<ReduceOnPlateau>,
    pub(super) last_metrics: Option<EpochMetrics>,
    pub(super) best_confusion: Vec<Vec<u64>>,
    pub(super) train_seconds: f64,
    pub(super) stopped_early: bool,
}

fn null_as_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

impl Default for TrainState {
    fn default() -> Self {
        TrainState {
            epoch: 0,
            step: 0,
            best_epoch: 0,
            best_val_accuracy: 0.0,
            best_val_loss: f64::INFINITY,
            early: None,
            plateau: None,
            last_metrics: None,
            best_confusion: Vec::new(),
            train_seconds: 0.0,
            stopped_early: false,
        }
    }
}

impl TrainState {
    /// The state after the last completed epoch of `run` and its `last.safetensors`, or `None`
    /// when no epoch completed. The run directory is first made to agree with that state.
    pub(super) fn resume(run: &Path) -> Result<Option<(TrainState, graft_weights::StateDict)>> {
        let last = run.join("last.safetensors");
        if !last.is_file() {
            return Ok(None);
        }
        let dict = graft_weights::load(&last)?;
        let state: TrainState = dict
            .metadata
            .get("graft.train_state")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| GraftError::Data { path: last.clone(), reason: "no training state in the checkpoint".into() })?;
        repair_after_kill(run, &state)?;
        Ok(Some((state, dict)))
    }

    /// Refuses to resume `run` with a total of `total` epochs when it already completed more
    /// (read from `last.safetensors`' header), before anything in the run is rewritten.
    pub(super) fn check_total(run: &Path, total: usize) -> Result<()> {
        let last = run.join("last.safetensors");
        if !last.is_file() {
            return Ok(());
        }
        let done = checkpoint::read_metadata(&last)?.get("graft.epoch").and_then(|e| e.parse::<usize>().ok()).unwrap_or(0);
        if done > total {
            return Err(GraftError::spec("--epochs", &total.to_string(), format!("the run already completed {done} epochs; give at least {done}")));
        }
        Ok(())
    }

    /// `last.safetensors`' metadata carrying this state.
    pub(super) fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("graft.epoch".to_string(), self.epoch.to_string()),
            ("graft.train_state".to_string(), serde_json::to_string(self).expect("state serializes")),
        ])
    }
}

/// Images decoded once, cropped and resized to the model's input size.
struct Split {
    images: Vec<RgbImage>,
    labels: Vec<usize>,
    /// sha256 of each image file: its key in the feature store.
    hashes: Vec<[u8; 32]>,
}

/// Hooks for the caller: progress and the per-epoch line.
pub trait FitReporter: Reporter {
    fn epoch(&self, metrics: &EpochMetrics, epochs: usize);
}

/// Runs (or resumes) training into `run`. A fresh run that fails before its first epoch is
/// saved leaves no run directory behind (see [`crate::fsutil::fresh_run_state`]).
pub fn fit(config: &FitConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn FitReporter, device: &Device) -> Result<FitSummary> {
    let fresh = if resume { None } else { crate::fsutil::fresh_run_state(run) };
    let result = fit_run(config, run, resume, home, reporter, device);
    if let (Err(_), Some(created)) = (&result, fresh) {
        if !run.join("last.safetensors").exists() {
            crate::fsutil::remove_failed_run(run, created);
        }
    }
    result
}

fn fit_run(config: &FitConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn FitReporter, device: &Device) -> Result<FitSummary> {
    config.validate()?;
    // Everything that can be refused cheaply is checked before the run directory is created,
    // so a mistyped flag leaves nothing behind.
    let spec = ModelSpec::find(&config.model)?;
    if !config.from_scratch && config.weights.is_none() && spec.source.is_none() {
        return Err(GraftError::NeedsWeights { model: spec.id.into() });
    }
    let train_folder = ImageFolder::scan(&config.data)?;
    if resume {
        TrainState::check_total(run, config.total_epochs())?;
    }
    prepare_run_dir(run, resume)?;
    // Seeds burn's generator: the new head's initialisation and dropout masks.
    device.seed(config.seed);
    let preprocess = spec.preprocess();

    // --- data ---------------------------------------------------------------------------------
    let classes = train_folder.classes.clone();
    let (train_samples, val_samples) = match &config.val {
        Some(dir) => (train_folder.samples.clone(), ImageFolder::scan_with_classes(dir, &classes)?.samples),
        None => {
            // --val-split 0: train on everything and keep the last epoch (a fixed budget).
            let (t, v) = if config.val_split == 0.0 {
                ((0..train_folder.samples.len()).collect(), Vec::new())
            } else {
                stratified_split(&train_folder.samples, config.val_split, config.seed)?
            };
            (t.iter().map(|&i| train_folder.samples[i].clone()).collect(), v.iter().map(|&i| train_folder.samples[i].clone()).collect())
        }
    };
    let mut skipped = Vec::new();
    let train = decode_split(&train_samples, &preprocess, "decoding training images", reporter, &mut skipped);
    let val = decode_split(&val_samples, &preprocess, "decoding validation images", reporter, &mut skipped);
    for s in &skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    if train.images.is_empty() {
        return Err(GraftError::Data { path: config.data.clone(), reason: "no readable training images".into() });
    }
    if val.images.is_empty() && !val_samples.is_empty() {
        return Err(GraftError::Data { path: config.val.clone().unwrap_or(config.data.clone()), reason: "no readable validation images".into() });
    }
    let data = DataSummary::new(classes.len(), &train.labels, &val.labels, skipped.len());
    reporter.message(&data.line(&classes, "images"));
    let present: BTreeSet<usize> = train.labels.iter().copied().collect();
    if present.len() < 2 {
        return Err(GraftError::Data { path: config.data.clone(), reason: "fewer than 2 classes have readable training images".into() });
    }

    // --- model --------------------------------------------------------------------------------
    let trunk_config = spec.config();
    let (trunk, weights_sha256) = if config.from_scratch {
        (trunk_config.init(device), None)
    } else {
        let p = Pretrained::load(spec, config.weights.as_deref(), home, reporter, device)?;
        (p.net, Some(p.weights_sha256))
    };
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
        frozen_trunk: if config.stages.is_empty() { config.freeze == FreezeSpec::All } else { config.stages.iter().all(|s| s.train == "head") },
    };
    // config.toml first: a run counts as started once model.json exists, and `--resume`
    // needs both (a kill between the two then leaves a directory a fresh `fit` may reuse).
    write_atomic(&run.join("config.toml"), config.to_toml().as_bytes())?;
    info.save(run)?;

    let mut rows: Vec<LayerRow> = spec.layer_rows().into_iter().filter(|r| !r.is_head).collect();
    // `--stages topK` counts the numbered blocks of the layer table, as `--freeze N` does.
    let blocks = numbered_blocks(&rows);
    rows.extend(Head::rows(&config.head.neural(), head_width, classes.len()));

    if let HeadSpec::Classic(kind) = &config.head {
        return fit_classic(kind, config, run, home, &model, &info, &train, &val, skipped, reporter, device);
    }

    // (what is frozen, epochs, learning-rate factor relative to --lr) per stage.
    let stages: Vec<(FreezeSpec, usize, f64)> = if config.stages.is_empty() {
        vec![(config.freeze.clone(), config.epochs, 1.0)]
    } else {
        config.stages.iter().map(|s| Ok((s.freeze(blocks)?, s.epochs, s.lr.map(|lr| lr / config.lr).unwrap_or(1.0)))).collect::<Result<_>>()?
    };
    let total_epochs: usize = stages.iter().map(|s| s.1).sum();
    let steps_per_epoch = train.images.len().div_ceil(config.batch_size);
    let plan = LrPlan {
        base_lr: config.lr,
        schedule: config.schedule.clone(),
        warmup_epochs: config.warmup_epochs,
        steps_per_epoch,
        epochs: total_epochs,
    };
    let class_weights = match config.class_weights {
        ClassWeights::None => None,
        ClassWeights::Balanced => {
            let mut counts = vec![0usize; classes.len()];
            train.labels.iter().for_each(|&l| counts[l] += 1);
            let n = train.labels.len() as f32;
            Some(counts.iter().map(|&c| if c == 0 { 0.0 } else { n / (classes.len() as f32 * c as f32) }).collect::<Vec<f32>>())
        }
    };

    // --- resume -------------------------------------------------------------------------------
    let mut state = TrainState::default();
    if resume {
        if let Some((saved, dict)) = TrainState::resume(run)? {
            state = saved;
            model = checkpoint::import(model, &dict, &run.join("last.safetensors"), spec.id)?;
            reporter.message(&format!("resuming {} after epoch {}", run.display(), state.epoch));
        }
    }
    if state.stopped_early || state.epoch >= total_epochs {
        reporter.message("the run had already finished");
    }

    // --- training -----------------------------------------------------------------------------
    let mut tb = EventWriter::create(&run.join("tb"))?;
    let mut stats = CacheStats::default();
    let mut trunk_images = 0u64;
    let mut trainable_params = 0;
    let train_device = device.clone().autodiff();
    let mut epoch_offset = 0;
    for (stage_index, (freeze, stage_epochs, stage_lr_factor)) in stages.iter().enumerate() {
        let stage_end = epoch_offset + stage_epochs;
        if state.stopped_early || state.epoch >= stage_end {
            epoch_offset = stage_end;
            continue;
        }
        let frozen = freeze.frozen_params(&rows)?;
        model = model.unfreeze().freeze(&rows, &frozen, &trunk_config)?;
        if !(config.train_bn || config.from_scratch) {
            // BatchNorm in the unfrozen blocks stays in inference mode (its scale and shift
            // still train): on a small dataset, batch statistics of a few dozen images replace
            // ImageNet's running statistics poorly (Keras' fine-tuning advice).
            let flags = ParamGroup::from_regex(r"^trunk\..*\.training$").map_err(|e| GraftError::spec("--train-bn", "", format!("{e:?}")))?;
            model = model.freeze_group(flags);
        }
        let model_train = model.train();
        model = model_train;
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
        let (head_ids, body_ids) = split_param_ids(&model);
        let mut head_opt = make_optimizer(&config.optimizer);
        let mut body_opt = make_optimizer(&config.optimizer);

        // Activations of the frozen prefix, computed once for this stage.
        let prefix = model.valid();
        let caching = Instant::now();
        let (train_cache, val_cache, act_shape) = if use_cache {
            let augment = if views > 1 { config.augment.to_string() } else { "none".into() };
            let mut store = open_store(home, spec.id, info.weights_sha256.as_deref(), &trunk_config.cut_name(cut, config.head_pool), &preprocess, &augment, config, reporter)?;
            let misses_before = stats.misses;
            let mut fill = |split: &Split, task: &str| {
                activations(&prefix, split, &preprocess, cut, views, config, store.as_mut(), device, reporter, task, &mut stats)
            };
            let (t, shape) = fill(&train, "caching frozen-trunk activations")?;
            let (v, _) = fill(&val, "caching validation activations")?;
            trunk_images += stats.misses - misses_before;
            (Some(t), Some(v), shape)
        } else {
            (None, None, [0; 3])
        };
        let mut act_shape = act_shape;
        state.train_seconds += caching.elapsed().as_secs_f64();

        let mut plateau = state.plateau.clone().or_else(|| config.reduce_on_plateau.map(|p| ReduceOnPlateau::new(0.1, p, config.min_delta)));
        let mut early = state.early.clone().or_else(|| config.patience.map(|p| EarlyStopping::new(p, config.min_delta)));

        for epoch in state.epoch..stage_end {
            let started = Instant::now();
            let mut order: Vec<usize> = (0..train.images.len()).collect();
            order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
            let plateau_scale = plateau.as_ref().map(|p| p.scale).unwrap_or(1.0);
            // The frozen prefix, prepared for inference once per epoch (not per batch).
            let prefix = if use_cache || cut == 0 {
                None
            } else {
                let prefix = model.valid();
                let frozen = prefix.trunk.for_inference();
                Some((prefix, frozen))
            };
            reporter.start(&format!("epoch {}/{}", epoch + 1, total_epochs), Some(order.len() as u64));
            let mut lr = config.lr;
            for batch in order.chunks(config.batch_size) {
                guard::check_stop(run, state.epoch)?;
                let targets: Vec<usize> = batch.iter().map(|&i| train.labels[i]).collect();
                let input: Tensor<2> = match (&train_cache, &prefix) {
                    (Some(cache), _) => {
                        // One of the image's stored views per epoch, seeded.
                        let rows: Vec<usize> = batch
                            .iter()
                            .map(|&i| i * views + if views > 1 { (sample_rng(config.seed, epoch as u64, i as u64).next_u64() % views as u64) as usize } else { 0 })
                            .collect();
                        rows_tensor(cache, &rows, &train_device)
                    }
                    (None, Some((prefix, frozen))) => {
                        let x = image_batch(&train, batch, &preprocess, config, epoch, device);
                        trunk_images += batch.len() as u64;
                        stats.misses += batch.len() as u64;
                        let a = prefix.activations(frozen, x, cut);
                        act_shape = map_shape(prefix, cut, resolution);
                        Tensor::from_data(a.into_data(), &train_device)
                    }
                    (None, None) => {
                        trunk_images += batch.len() as u64;
                        let x = image_batch(&train, batch, &preprocess, config, epoch, &train_device);
                        x.flatten(1, 3)
                    }
                };
                let logits = if cut == 0 {
                    let [n, _] = input.dims();
                    let s = resolution;
                    model.forward(input.reshape([n, 3, s, s]))
                } else {
                    model.forward_from(input, cut, act_shape)
                };
                let loss = cross_entropy(logits.clone(), &targets, config.label_smoothing, class_weights.as_deref(), &train_device);
                let loss_value: f32 = loss.clone().into_scalar();
                lr = plan.lr_at(state.step) * plateau_scale * stage_lr_factor;
                guard::check_loss("training loss", loss_value as f64, epoch + 1, lr)?;
                let predicted = argmax(logits.detach());
                correct += predicted.iter().zip(&targets).filter(|(p, t)| p == t).count();
                seen += batch.len();
                loss_sum += loss_value as f64 * batch.len() as f64;

                let mut grads = loss.backward();
                let head_grads = GradientsParams::from_params(&mut grads, &model, &head_ids);
                let body_grads = GradientsParams::from_params(&mut grads, &model, &body_ids);
                model = head_opt.step(lr, model, head_grads);
                if !body_grads.is_empty() {
                    model = body_opt.step(lr * config.body_lr_mult, model, body_grads);
                }
                state.step += 1;
                reporter.progress(seen as u64);
            }
            reporter.finish();

            // Validation on the inference copy: frozen and trained BN alike use running stats.
            let eval_model = model.valid();
            let validation = if val.labels.is_empty() {
                None
            } else {
                let (loss, predicted) = match &val_cache {
                    Some(cache) => evaluate_cached(&eval_model, cache, &val.labels, cut, act_shape, config.batch_size, views, device),
                    None => {
                        trunk_images += val.images.len() as u64;
                        evaluate_images(&eval_model, &val, &preprocess, config.batch_size, device)
                    }
                };
                Some((loss, Evaluation::from_predictions(&classes, &val.labels, &predicted)))
            };
            // A diverged epoch stops the run before anything of it is saved. A frozen trunk
            // cannot change, so only the head is read then, not the trunk's millions of
            // weights every epoch (a cached epoch over 10,000 images takes ~0.1 s).
            if *freeze == FreezeSpec::All {
                guard::check_weights(&eval_model.head, epoch + 1, lr)?;
            } else {
                guard::check_weights(&eval_model, epoch + 1, lr)?;
            }
            if let Some((loss, _)) = &validation {
                guard::check_loss("validation loss", *loss, epoch + 1, lr)?;
            }
            let seconds = started.elapsed().as_secs_f64();
            state.train_seconds += seconds;
            let metrics = EpochMetrics {
                epoch: epoch + 1,
                stage: stage_index + 1,
                lr,
                train_loss: loss_sum / seen.max(1) as f64,
                train_accuracy: correct as f64 / seen.max(1) as f64,
                val_loss: validation.as_ref().map(|v| v.0),
                val_accuracy: validation.as_ref().map(|v| v.1.accuracy),
                seconds,
            };
            state.epoch = epoch + 1;
            let mut stop = false;
            match &validation {
                None => {
                    state.best_epoch = state.epoch;
                }
                Some((loss, eval)) => {
                    // Best by the monitored metric (--monitor).
                    let monitor = config.monitor;
                    let best = (state.best_epoch > 0).then_some((state.best_val_loss, state.best_val_accuracy));
                    if monitor.improves((*loss, eval.accuracy), best, config.min_delta) {
                        state.best_epoch = state.epoch;
                        state.best_val_accuracy = eval.accuracy;
                        state.best_val_loss = *loss;
                        state.best_confusion = eval.confusion.clone();
                    }
                    let watched = monitor.value(*loss, eval.accuracy);
                    if let Some(p) = plateau.as_mut() {
                        if p.observe(watched, monitor.higher_is_better()) {
                            reporter.message(&format!("{} plateaued: learning rate ×{:.3}", monitor.name(), p.scale));
                        }
                    }
                    stop = early.as_mut().is_some_and(|e| e.observe(watched, monitor.higher_is_better()));
                }
            }
            let improved = state.best_epoch == state.epoch;
            state.plateau = plateau.clone();
            state.early = early.clone();
            state.last_metrics = Some(metrics.clone());
            state.stopped_early = stop;

            // Crash-safe order: last (with state) → best → metrics line; see repair_after_kill.
            checkpoint::save(&model, &run.join("last.safetensors"), state.metadata())?;
            if improved {
                let mut meta = BTreeMap::new();
                meta.insert("graft.epoch".to_string(), state.epoch.to_string());
                checkpoint::save(&model, &run.join("best.safetensors"), meta)?;
            }
            append_metrics(run, &metrics)?;
            let scalars = [
                ("loss/train", Some(metrics.train_loss)),
                ("loss/val", metrics.val_loss),
                ("accuracy/train", Some(metrics.train_accuracy)),
                ("accuracy/val", metrics.val_accuracy),
                ("lr", Some(metrics.lr)),
            ];
            for (tag, value) in scalars {
                if let Some(value) = value {
                    tb.add_scalar(tag, value as f32, metrics.epoch as i64)?;
                }
            }
            tb.flush()?;
            reporter.epoch(&metrics, total_epochs);
            if stop {
                reporter.message(&format!("early stopping: no improvement for {} epochs", config.patience.unwrap_or(0)));
                break;
            }
        }
        epoch_offset = stage_end;
        state.early = None; // each stage gets its own patience
        if state.stopped_early {
            break;
        }
    }

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

/// Checks and creates (or reopens, with `resume`) a run directory; a symbolic link inside it
/// is refused. Returns whether a fresh run's directory was created here (see
/// [`crate::fsutil::prepare_fresh_run_dir`]), so a failed start can remove it.
pub(super) fn prepare_run_dir(run: &Path, resume: bool) -> Result<bool> {
    if !resume && run.join("model.json").exists() {
        return Err(GraftError::spec("--out", &run.display().to_string(), "already holds a run; pass --resume to continue it or choose another --out"));
    }
    if resume && !run.join("model.json").exists() {
        return Err(GraftError::spec("--resume", &run.display().to_string(), "is not a graft run directory (no model.json)"));
    }
    crate::fsutil::check_run_dir(run)?;
    // A kill during a write leaves its temporary file behind; the rename never happened, so
    // the file it was replacing is intact and the temporary is garbage.
    crate::fsutil::remove_stale_temps(run)?;
    if resume {
        return Ok(false);
    }
    // A start killed before model.json leaves only config.toml: an incomplete run, replaced.
    if let Ok(entries) = std::fs::read_dir(run) {
        let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        if names.len() == 1 && names[0] == "config.toml" {
            crate::fsutil::remove_failed_run(run, false);
        }
    }
    crate::fsutil::prepare_fresh_run_dir(run, "--out")
}

/// After a kill between writing `last.safetensors` and the metrics line (or `best`), make the
/// run directory agree with the state stored in `last`.
fn repair_after_kill(run: &Path, state: &TrainState) -> Result<()> {
    // metrics.jsonl: keep completed epochs only, and add the last one if its line is missing.
    // Kept lines are copied verbatim: a parse/print round trip may change a float's last digit.
    let path = run.join("metrics.jsonl");
    let old = crate::fsutil::read_run_text(&path, crate::limits::MAX_METRICS_FILE_BYTES)?.unwrap_or_default();
    let mut text = String::new();
    let mut epochs = Vec::new();
    for line in old.lines() {
        let Ok(m) = serde_json::from_str::<EpochMetrics>(line) else { continue }; // torn by a kill
        if m.epoch <= state.epoch {
            text.push_str(line);
            text.push('\n');
            epochs.push(m.epoch);
        }
    }
    if let Some(last) = &state.last_metrics {
        if !epochs.contains(&last.epoch) {
            text.push_str(&(serde_json::to_string(last).expect("metrics serialize") + "\n"));
        }
    }
    write_atomic(&path, text.as_bytes())?;
    // best.safetensors: when the last epoch was the best, `last` holds those weights.
    let best = run.join("best.safetensors");
    let best_epoch = graft_weights::load(&best).ok().and_then(|d| d.metadata.get("graft.epoch").and_then(|e| e.parse::<usize>().ok()));
    if state.best_epoch == state.epoch && best_epoch != Some(state.best_epoch) {
        let tmp = run.join(".best.safetensors.repair");
        std::fs::copy(run.join("last.safetensors"), &tmp).map_err(|e| GraftError::io(&tmp, e))?;
        std::fs::rename(&tmp, &best).map_err(|e| GraftError::io(&best, e))?;
    }
    Ok(())
}

fn append_metrics(run: &Path, m: &EpochMetrics) -> Result<()> {
    let path = run.join("metrics.jsonl");
    let mut file = crate::fsutil::append_nofollow(&path)?;
    let line = serde_json::to_string(m).expect("metrics serialize") + "\n";
    file.write_all(line.as_bytes()).and_then(|_| file.sync_data()).map_err(|e| GraftError::io(&path, e))
}

/// Reads `metrics.jsonl`; a torn last line (killed mid-write) is ignored.
pub fn read_metrics(run: &Path) -> Result<Vec<EpochMetrics>> {
    let path = run.join("metrics.jsonl");
    let text = crate::fsutil::read_run_text(&path, crate::limits::MAX_METRICS_FILE_BYTES)?.unwrap_or_default();
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
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
    Ok(())
}

fn decode_split(samples: &[Sample], preprocess: &Preprocess, task: &str, reporter: &dyn Reporter, skipped: &mut Vec<Skipped>) -> Split {
    reporter.start(task, Some(samples.len() as u64));
    let (images, bad) = decode_with(samples, &|done| reporter.progress(done as u64), |img| preprocess.crop_resize(&img));
    reporter.finish();
    skipped.extend(bad);
    let mut split = Split { images: Vec::new(), labels: Vec::new(), hashes: Vec::new() };
    for (img, s) in images.into_iter().zip(samples) {
        if let Some(img) = img {
            // Decoded fine, so the file is readable; a racing deletion just gets a zero key.
            split.hashes.push(content_hash(&s.path).unwrap_or([0; 32]));
            split.images.push(img);
            split.labels.push(s.label);
        }
    }
    split
}

/// A batch of normalised images, augmented when configured (seeded per run, epoch and sample).
fn image_batch(split: &Split, batch: &[usize], preprocess: &Preprocess, config: &FitConfig, epoch: usize, device: &Device) -> Tensor<4> {
    use rayon::prelude::*;
    let pixels: Vec<Vec<f32>> = batch
        .par_iter()
        .map(|&i| {
            if config.augment.is_identity() {
                preprocess.normalize(&split.images[i])
            } else {
                let mut rng = sample_rng(config.seed, epoch as u64, i as u64);
                preprocess.normalize(&config.augment.apply(&split.images[i], &mut rng))
            }
        })
        .collect();
    crate::data::image::batch(&pixels, preprocess.size, device)
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
/// read from the feature store when present there, computed (and stored) otherwise.
/// View 0 is the plain image; views 1.. are augmentations seeded by the image's content hash,
/// so the same file gets the same views in every run. Validation only ever reads view 0, but
/// its rows are laid out the same way for simplicity.
#[allow(clippy::too_many_arguments)]
fn activations(
    prefix: &Grafted,
    split: &Split,
    preprocess: &Preprocess,
    cut: usize,
    views: usize,
    config: &FitConfig,
    mut store: Option<&mut FeatureStore>,
    device: &Device,
    reporter: &dyn Reporter,
    task: &str,
    stats: &mut CacheStats,
) -> Result<(Cache, [usize; 3])> {
    let resolution = preprocess.size as usize;
    let shape = map_shape(prefix, cut, resolution);
    let n = split.images.len() * views;
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut missing = Vec::new();
    for (row, slot) in rows.iter_mut().enumerate() {
        let key = (split.hashes[row / views], (row % views) as u32);
        match store.as_ref().and_then(|s| s.get(&key)) {
            Some(features) => {
                *slot = Some(features);
                stats.hits += 1;
            }
            None => missing.push(row),
        }
    }
    let frozen = prefix.trunk.for_inference();
    reporter.start(task, Some(missing.len() as u64));
    for (done, chunk) in missing.chunks(config.batch_size).enumerate() {
        let pixels: Vec<Vec<f32>> = chunk
            .iter()
            .map(|&row| {
                let (image, view) = (row / views, row % views);
                if view == 0 {
                    preprocess.normalize(&split.images[image])
                } else {
                    let seed = u64::from_le_bytes(split.hashes[image][..8].try_into().expect("8 bytes"));
                    let mut rng = sample_rng(config.seed ^ seed, view as u64, 0);
                    preprocess.normalize(&config.augment.apply(&split.images[image], &mut rng))
                }
            })
            .collect();
        let x = crate::data::image::batch(&pixels, preprocess.size, device);
        let a: Vec<f32> = prefix.activations(&frozen, x, cut).into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: PathBuf::new(), reason: format!("{e:?}") })?;
        let width = a.len() / chunk.len();
        for (k, &row) in chunk.iter().enumerate() {
            let features = a[k * width..(k + 1) * width].to_vec();
            if let Some(store) = store.as_mut() {
                store.put((split.hashes[row / views], (row % views) as u32), features.clone())?;
            }
            rows[row] = Some(features);
        }
        stats.misses += chunk.len() as u64;
        reporter.progress(((done + 1) * config.batch_size).min(missing.len()) as u64);
    }
    reporter.finish();
    if let Some(store) = store {
        store.flush()?;
    }
    let width = rows.first().and_then(|r| r.as_ref()).map(|r| r.len()).unwrap_or(0);
    let data = rows.into_iter().flat_map(|r| r.unwrap_or_default()).collect();
    Ok((Cache { data, width }, shape))
}

/// The feature-store namespace for these activations; `None` (memory only) for a trunk without
/// a weights identity (random initialisation) or with `--cache off`.
#[allow(clippy::too_many_arguments)]
fn open_store(home: &Path, model: &str, weights_sha256: Option<&str>, cut: &str, preprocess: &Preprocess, augment: &str, config: &FitConfig, reporter: &dyn Reporter) -> Result<Option<FeatureStore>> {
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
        return Err(GraftError::spec("--head", &config.head.to_string(), "a classic head trains on stored features: use --freeze all, no --stages and no --augment"));
    }
    let started = Instant::now();
    let skipped_count = skipped.len();
    let cut = model.trunk.num_stages();
    let mut stats = CacheStats::default();
    let prefix = model.valid();
    let mut store = open_store(home, &info.model, info.weights_sha256.as_deref(), &crate::zoo::backbone::pooled_cut(config.head_pool), &info.preprocess, "none", config, reporter)?;
    let (train_rows, _) = activations(&prefix, train, &info.preprocess, cut, 1, config, store.as_mut(), device, reporter, "caching frozen-trunk activations", &mut stats)?;
    let (val_rows, _) = activations(&prefix, val, &info.preprocess, cut, 1, config, store.as_mut(), device, reporter, "caching validation activations", &mut stats)?;
    let classes = info.classes.len();
    let head = Classic::fit_reporting(kind.clone(), &train_rows.data, &train.labels, train_rows.width, classes, config.seed, reporter)?;
    head.report_penalty(reporter);
    let score = |rows: &Cache, labels: &[usize]| -> (f64, f64, Evaluation) {
        let probs = head.predict_proba(&rows.data);
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
    let text = serde_json::to_string(&metrics).expect("metrics serialize") + "\n";
    write_atomic(&run.join("metrics.jsonl"), text.as_bytes())?;
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

/// Activations kept in memory, one row per image.
struct Cache {
    data: Vec<f32>,
    width: usize,
}

fn rows_tensor(cache: &Cache, rows: &[usize], device: &Device) -> Tensor<2> {
    let mut data = Vec::with_capacity(rows.len() * cache.width);
    for &r in rows {
        data.extend_from_slice(&cache.data[r * cache.width..(r + 1) * cache.width]);
    }
    Tensor::from_data(TensorData::new(data, [rows.len(), cache.width]), device)
}

/// Validation from cached activations (view 0 of each image: the validation views are never
/// augmented, see `activations`).
#[allow(clippy::too_many_arguments)]
fn evaluate_cached(model: &Grafted, cache: &Cache, labels: &[usize], cut: usize, shape: [usize; 3], batch: usize, views: usize, device: &Device) -> (f64, Vec<usize>) {
    let all: Vec<usize> = (0..labels.len()).collect();
    let (mut loss, mut predicted) = (0f64, Vec::new());
    for chunk in all.chunks(batch) {
        let rows: Vec<usize> = chunk.iter().map(|&i| i * views).collect();
        let logits = model.forward_from(rows_tensor(cache, &rows, device), cut, shape);
        let targets: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
        let l: f32 = cross_entropy(logits.clone(), &targets, 0.0, None, device).into_scalar();
        loss += l as f64 * chunk.len() as f64;
        predicted.extend(argmax(logits));
    }
    (loss / labels.len().max(1) as f64, predicted)
}

fn evaluate_images(model: &Grafted, split: &Split, preprocess: &Preprocess, batch: usize, device: &Device) -> (f64, Vec<usize>) {
    let all: Vec<usize> = (0..split.labels.len()).collect();
    let (mut loss, mut predicted) = (0f64, Vec::new());
    for chunk in all.chunks(batch) {
        let pixels: Vec<Vec<f32>> = chunk.iter().map(|&i| preprocess.normalize(&split.images[i])).collect();
        let logits = model.forward(crate::data::image::batch(&pixels, preprocess.size, device));
        let targets: Vec<usize> = chunk.iter().map(|&i| split.labels[i]).collect();
        let l: f32 = cross_entropy(logits.clone(), &targets, 0.0, None, device).into_scalar();
        loss += l as f64 * chunk.len() as f64;
        predicted.extend(argmax(logits));
    }
    (loss / split.labels.len().max(1) as f64, predicted)
}

/// Parameter ids of the new head and of the trunk.
fn split_param_ids(model: &Grafted) -> (Vec<ParamId>, Vec<ParamId>) {
    (param_ids(&model.head), param_ids(&model.trunk))
}

fn param_ids<M: Module>(module: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_without_validation_survives_its_json() {
        // No validation epoch yet: the best loss is infinite, which JSON can only write as null.
        let state = TrainState { epoch: 3, step: 12, best_epoch: 3, ..Default::default() };
        let back: TrainState = serde_json::from_str(&state.metadata()["graft.train_state"]).unwrap();
        assert_eq!(back.best_val_loss, f64::INFINITY);
        assert_eq!((back.epoch, back.step, back.best_epoch), (3, 12, 3));
        let seen = TrainState { best_val_loss: 0.25, ..state };
        let back: TrainState = serde_json::from_str(&serde_json::to_string(&seen).unwrap()).unwrap();
        assert_eq!(back.best_val_loss, 0.25);
    }
}
