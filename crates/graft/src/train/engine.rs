//! The one training loop under every command (`fit` on images and texts, every `adapt` method,
//! `pretrain`, the MLP fine-tune).
//!
//! A command contributes only its [`Task`]: what one iteration computes (its gradients, with a
//! learning-rate multiplier per parameter group), the learning rate at an iteration, and what an
//! epoch's end measures. The [`Engine`] owns everything they share: epochs and iterations, the
//! optimiser (its state saved with every epoch), best-epoch selection by a [`Monitor`] or the
//! last epoch, early stopping and reduce-on-plateau, divergence and Ctrl-C checks, the run
//! directory's files and their crash-safe order, `metrics.jsonl`, TensorBoard scalars and
//! progress through the [`Reporter`].
//!
//! A run is a sequence of [`Phase`]s (fit's stages, ADDA's source pre-training and adversarial
//! phase, one per autoencoder layer), numbered by a global epoch count. After every epoch:
//! `optim-E.bin` (the optimiser's state) → `last.safetensors` (the model, and the run state in
//! its metadata) → the best checkpoint → the `metrics.jsonl` line. A run killed at any moment
//! resumes from its last completed epoch, and — since each epoch reseeds the device's generator
//! and tasks draw their batches from seeded streams — finishes with the same weights and
//! metrics as a run that was never interrupted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::config::Monitor;
use super::guard;
use super::schedule::{EarlyStopping, ReduceOnPlateau};
use crate::fsutil::write_atomic;
use crate::report::tensorboard::EventWriter;
use crate::report::Reporter;
use crate::{GraftError, Result};

/// The validation figures of one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub loss: f64,
    pub accuracy: f64,
    pub confusion: Vec<Vec<u64>>,
}

/// Where an iteration falls.
#[derive(Debug, Clone, Copy)]
pub struct Iteration {
    /// 0-based epoch over the whole run.
    pub epoch: usize,
    /// 0-based iteration within the epoch.
    pub index: usize,
    /// Optimiser steps since the phase began (iteration count, 0-based).
    pub phase_step: usize,
    /// Iterations of the whole phase.
    pub phase_steps: usize,
    /// Iterations since the run began (0-based).
    pub step: usize,
}

impl Iteration {
    /// Progress through the phase, in [0, 1).
    pub fn progress(&self) -> f64 {
        self.phase_step as f64 / self.phase_steps.max(1) as f64
    }
}

/// What a task measured at the end of an epoch.
pub struct EpochEnd {
    /// Scores the kept-epoch choice, early stopping and reduce-on-plateau read; `None` without
    /// validation data.
    pub validation: Option<Validation>,
    /// The `metrics.jsonl` line (a JSON object with at least `epoch`).
    pub record: serde_json::Value,
    /// TensorBoard scalars (`loss/train`, …).
    pub scalars: Vec<(String, f64)>,
}

/// What one command trains: the step that differs between commands.
pub trait Task {
    /// The trained module (on the autodiff device).
    type Model: Module;

    /// Iterations per epoch.
    fn iterations(&self) -> usize;

    /// Called before an epoch's first iteration (a new shuffled order, say). `epoch` counts the
    /// whole run from 0.
    fn begin_epoch(&mut self, _model: &Self::Model, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// The learning rate at `it`, before reduce-on-plateau's factor.
    fn lr(&self, it: &Iteration) -> f64;

    /// One iteration: the gradients to apply, each with its learning-rate multiplier (one
    /// entry per parameter group that trains). `lr` is the rate this iteration uses (for
    /// divergence messages).
    fn step(&mut self, model: &Self::Model, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>>;

    /// Measures the epoch that just ended; `model` is the inference copy (`Module::valid`).
    fn end_epoch(&mut self, model: &Self::Model, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd>;

    /// Checks the trained weights for NaN or infinity after an epoch (by default all of them).
    fn check_weights(&self, model: &Self::Model, epoch: usize, lr: f64) -> Result<()> {
        guard::check_weights(model, epoch, lr)
    }

    /// Reports an epoch's line (the engine has written it already).
    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, total_epochs: usize);

    /// A task that learns from an exponential moving average of its own weights (mean teacher)
    /// returns the decay: the engine then keeps that average after every optimiser step
    /// (trained parameters only), saves it with every epoch, measures and keeps it instead of
    /// the raw weights, and hands it to [`see_teacher`](Self::see_teacher) before every step.
    fn ema_decay(&self) -> Option<f64> {
        None
    }

    /// The averaged weights before an iteration (only called when [`ema_decay`](Self::ema_decay)
    /// is set).
    fn see_teacher(&mut self, _teacher: &Self::Model) {}
}

/// Which epoch of a phase is kept as its best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Keep {
    /// The best by the monitored metric (ties in accuracy go to the lower loss). Without
    /// validation data the last epoch is kept.
    Best { monitor: Monitor, min_delta: f64 },
    /// The last epoch.
    Last,
}

/// A stretch of epochs with one optimiser and one set of trained parameters.
pub struct Phase {
    /// Names the phase in progress lines (`epoch 3/10`, `pretrain epoch 3/10`).
    pub name: String,
    /// Epochs of the run before this phase.
    pub offset: usize,
    pub epochs: usize,
    /// Epochs of the whole run.
    pub total: usize,
    pub keep: Keep,
    /// The file the kept epoch is written to (`best.safetensors`, or a phase's own).
    pub best_file: String,
    pub early_stopping: Option<EarlyStopping>,
    pub plateau: Option<ReduceOnPlateau>,
    pub optimizer: ModuleOptimizer,
}

impl Phase {
    /// A phase of `epochs` alone in its run (offset 0, total `epochs`) that keeps its last epoch
    /// in `best_file`, with Adam's defaults, no early stopping and no plateau; a phase later in
    /// a run sets `offset` and `total` over it (`Phase { offset, total, ..Phase::keep_last(…) }`).
    pub fn keep_last(name: &str, epochs: usize, best_file: &str) -> Phase {
        Phase {
            name: name.into(),
            offset: 0,
            epochs,
            total: epochs,
            keep: Keep::Last,
            best_file: best_file.into(),
            early_stopping: None,
            plateau: None,
            optimizer: burn::optim::AdamConfig::new().init(),
        }
    }

    pub fn end(&self) -> usize {
        self.offset + self.epochs
    }
}

/// The state of a run after its last completed epoch, saved in `last.safetensors`' metadata
/// (`graft.train_state`). Fields added since the first release default, so older runs resume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed over the whole run.
    pub epoch: usize,
    /// Iterations completed over the whole run.
    pub step: usize,
    /// The kept epoch (0: none yet) and its validation figures.
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    /// Infinite until a validation epoch (JSON writes it as null).
    #[serde(deserialize_with = "null_as_infinity")]
    pub best_val_loss: f64,
    pub early: Option<EarlyStopping>,
    pub plateau: Option<ReduceOnPlateau>,
    /// The last epoch's `metrics.jsonl` line.
    pub last_metrics: Option<serde_json::Value>,
    pub best_confusion: Vec<Vec<u64>>,
    pub train_seconds: f64,
    pub stopped_early: bool,
    /// The file the current phase keeps its best epoch in.
    #[serde(default = "best_file")]
    pub best_file: String,
    /// The task's own figures that must survive a kill (e.g. a phase's kept accuracy).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn best_file() -> String {
    "best.safetensors".into()
}

fn null_as_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
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
            best_file: best_file(),
            extra: BTreeMap::new(),
        }
    }
}

impl RunState {
    /// `last.safetensors`' metadata carrying this state.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("graft.epoch".to_string(), self.epoch.to_string()),
            ("graft.train_state".to_string(), serde_json::to_string(self).expect("state serializes")),
        ])
    }

    /// Whether the run stopped (early stopping) or finished `total` epochs.
    pub fn finished(&self, total: usize) -> bool {
        self.stopped_early || self.epoch >= total
    }
}

/// Refuses to resume `run` with a total of `total` epochs when it already completed more (read
/// from `last.safetensors`' header), before anything in the run is rewritten. `setting` names
/// the setting that gave the total.
pub fn check_total(run: &Path, total: usize, setting: &str) -> Result<()> {
    let last = run.join("last.safetensors");
    if !last.is_file() {
        return Ok(());
    }
    let done = checkpoint::read_metadata(&last)?.get("graft.epoch").and_then(|e| e.parse::<usize>().ok()).unwrap_or(0);
    if done > total {
        return Err(GraftError::setting(setting, &total.to_string(), format!("the run already completed {done} epochs; give at least {done}")));
    }
    Ok(())
}

/// The generator seed of epoch `epoch` of a run seeded `seed`: dropout masks and any other
/// draw from the device's generator repeat exactly when a killed run resumes.
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Gives every parameter of `module` an id derived from its path, so the optimiser state saved
/// with a run (keyed by parameter id) finds its parameters again in the rebuilt model of a
/// resumed process.
pub fn stable_ids<M: Module>(module: M) -> M {
    struct Ids {
        path: Vec<String>,
    }
    impl ModuleMapper for Ids {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            // FNV-1a of the dotted path.
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in self.path.join(".").bytes() {
                hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
            }
            let (_, value, mapper) = param.consume();
            Param::from_mapped_value(ParamId::from(hash), value, mapper)
        }
    }
    module.map(&mut Ids { path: Vec::new() })
}

/// Parameter ids of `module`, in visiting order.
pub fn param_ids<M: Module>(module: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl burn::module::ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

/// The training loop over one run directory.
pub struct Engine<'a> {
    pub run: &'a Path,
    pub reporter: &'a dyn Reporter,
    pub device: &'a Device,
    pub seed: u64,
    pub state: RunState,
    /// The state dict of `last.safetensors` when the run resumed (the model of the phase that
    /// was in progress; the command imports it).
    pub resumed: Option<graft_weights::StateDict>,
    tb: Option<EventWriter>,
}

impl<'a> Engine<'a> {
    /// Opens the engine on a run directory. With `resume`, the state after the last completed
    /// epoch is read from `last.safetensors` (when an epoch completed) and the directory is made
    /// to agree with it; otherwise the run starts from nothing (`metrics.jsonl` is emptied).
    pub fn open(run: &'a Path, resume: bool, seed: u64, reporter: &'a dyn Reporter, device: &'a Device) -> Result<Self> {
        let mut engine = Engine { run, reporter, device, seed, state: RunState::default(), resumed: None, tb: None };
        let last = run.join("last.safetensors");
        if resume && last.is_file() {
            let dict = graft_weights::load(&last)?;
            let state: RunState = dict
                .metadata
                .get("graft.train_state")
                .and_then(|s| serde_json::from_str(s).ok())
                .ok_or_else(|| GraftError::Data { path: last.clone(), reason: "no training state in the checkpoint".into() })?;
            repair_after_kill(run, &state)?;
            reporter.message(&format!("resuming {} after epoch {}", run.display(), state.epoch));
            engine.state = state;
            engine.resumed = Some(dict);
        } else {
            // A fresh run, or one resumed before any epoch completed (or written by a graft
            // without resume): no epoch counts, so no line of an earlier attempt may stay.
            for name in ["metrics.jsonl", "last.safetensors"] {
                let path = run.join(name);
                if path.exists() {
                    std::fs::remove_file(&path).map_err(|e| GraftError::io(&path, e))?;
                }
            }
        }
        Ok(engine)
    }

    /// Where a phase stands: not begun, in progress (resumed), or done.
    pub fn status(&self, offset: usize, epochs: usize) -> PhaseStatus {
        if self.state.epoch >= offset + epochs || self.state.stopped_early {
            PhaseStatus::Done
        } else if self.state.epoch > offset {
            PhaseStatus::InProgress
        } else {
            PhaseStatus::Fresh
        }
    }

    /// The model of the phase at `offset` (`epochs` long) when the run resumed inside it, read
    /// from `last.safetensors` into `model`; `model` as built for any other phase. `name` names
    /// the model in errors.
    pub fn resume_into<M: Module>(&self, model: M, offset: usize, epochs: usize, name: &str) -> Result<M> {
        match (&self.resumed, self.status(offset, epochs)) {
            (Some(dict), PhaseStatus::InProgress) => checkpoint::import(model, dict, &self.run.join("last.safetensors"), name),
            _ => Ok(model),
        }
    }

    /// The model to run the single `phase` on: as built when it has not begun, its last completed
    /// epoch's (see [`resume_into`](Self::resume_into)) when the run stopped inside it, and the
    /// epoch it kept (its `best_file`) when it is done, so that a finished run resumed hands
    /// back its trained model rather than a fresh one.
    pub fn resume_phase<M: Module>(&self, model: M, phase: &Phase, name: &str) -> Result<M> {
        match self.status(phase.offset, phase.epochs) {
            PhaseStatus::Done => checkpoint::load(model, &self.run.join(&phase.best_file)),
            _ => self.resume_into(model, phase.offset, phase.epochs, name),
        }
    }

    /// Sets a figure of the task's own that must survive a kill (saved with the next epoch).
    pub fn set_extra(&mut self, key: &str, value: serde_json::Value) {
        self.state.extra.insert(key.into(), value);
    }

    /// Runs what is left of `phase` on `model` and returns the model after its last epoch.
    pub fn run_phase<T: Task>(&mut self, task: &mut T, mut model: T::Model, mut phase: Phase) -> Result<T::Model> {
        let start = self.state.epoch.max(phase.offset);
        if self.state.stopped_early || start >= phase.end() {
            return Ok(model);
        }
        let iterations = task.iterations().max(1);
        let resuming_within = self.state.epoch > phase.offset;
        if resuming_within {
            phase.optimizer = load_optimizer(self.run, self.state.epoch, phase.optimizer)?;
        } else {
            // A new phase: its own patience, and (for a phase keeping its own file) its own best.
            self.state.early = None;
            if phase.best_file != self.state.best_file {
                self.state.best_epoch = 0;
                self.state.best_val_accuracy = 0.0;
                self.state.best_val_loss = f64::INFINITY;
                self.state.best_confusion.clear();
            }
        }
        self.state.best_file = phase.best_file.clone();
        let mut plateau = self.state.plateau.clone().or(phase.plateau.take());
        let mut early = self.state.early.clone().or(phase.early_stopping.take());
        if self.tb.is_none() {
            self.tb = Some(EventWriter::create(&self.run.join("tb"))?);
        }
        let prefix = if phase.name.is_empty() { String::new() } else { format!("{} ", phase.name) };
        // The averaged weights (mean teacher): saved beside the optimiser state of each epoch.
        let ema = task.ema_decay();
        let mut teacher = match ema {
            None => None,
            Some(_) if resuming_within => Some(checkpoint::load(model.clone(), &teacher_path(self.run, self.state.epoch))?),
            Some(_) => Some(model.clone()),
        };
        for epoch in start..phase.end() {
            let started = Instant::now();
            self.device.seed(epoch_seed(self.seed, epoch));
            task.begin_epoch(&model, epoch)?;
            let scale = plateau.as_ref().map(|p| p.scale).unwrap_or(1.0);
            self.reporter.start(&format!("{prefix}epoch {}/{}", epoch + 1, phase.total), Some(iterations as u64));
            let mut lr = 0.0;
            for index in 0..iterations {
                guard::check_stop(self.run, self.state.epoch)?;
                let it = Iteration {
                    epoch,
                    index,
                    phase_step: (epoch - phase.offset) * iterations + index,
                    phase_steps: phase.epochs * iterations,
                    step: self.state.step,
                };
                lr = task.lr(&it) * scale;
                if let Some(t) = &teacher {
                    task.see_teacher(t);
                }
                for (grads, mult) in task.step(&model, &it, lr)? {
                    if !grads.is_empty() {
                        model = phase.optimizer.step(lr * mult, model, grads);
                    }
                }
                if let (Some(decay), Some(t)) = (ema, teacher.take()) {
                    teacher = Some(ema_update(t, &model, decay));
                }
                self.state.step += 1;
                self.reporter.progress(index as u64 + 1);
            }
            self.reporter.finish();

            // What is measured and kept: the averaged weights when the task has them.
            let kept = teacher.as_ref().unwrap_or(&model);
            let eval = kept.valid();
            task.check_weights(&eval, epoch + 1, lr)?;
            let seconds = started.elapsed().as_secs_f64();
            let end = task.end_epoch(&eval, epoch + 1, lr, seconds)?;
            if let Some(v) = &end.validation {
                guard::check_loss("validation loss", v.loss, epoch + 1, lr)?;
            }
            self.state.epoch = epoch + 1;
            self.state.train_seconds += seconds;
            let mut stop = false;
            let improved = match (&end.validation, phase.keep) {
                (None, _) | (_, Keep::Last) => true,
                (Some(v), Keep::Best { monitor, min_delta }) => {
                    let best = (self.state.best_epoch > 0).then_some((self.state.best_val_loss, self.state.best_val_accuracy));
                    let improved = monitor.improves((v.loss, v.accuracy), best, min_delta);
                    let watched = monitor.value(v.loss, v.accuracy);
                    if let Some(p) = plateau.as_mut() {
                        if p.observe(watched, monitor.higher_is_better()) {
                            self.reporter.message(&format!("{} plateaued: learning rate ×{:.3}", monitor.name(), p.scale));
                        }
                    }
                    stop = early.as_mut().is_some_and(|e| e.observe(watched, monitor.higher_is_better()));
                    improved
                }
            };
            if improved {
                self.state.best_epoch = self.state.epoch;
                if let Some(v) = &end.validation {
                    self.state.best_val_accuracy = v.accuracy;
                    self.state.best_val_loss = v.loss;
                    self.state.best_confusion = v.confusion.clone();
                }
            }
            self.state.plateau = plateau.clone();
            self.state.early = early.clone();
            self.state.stopped_early = stop;
            self.state.last_metrics = Some(end.record.clone());

            // Crash-safe order: optimiser → last (with state) → best → metrics line; see
            // repair_after_kill.
            save_optimizer(self.run, self.state.epoch, &phase.optimizer)?;
            if let Some(t) = &teacher {
                checkpoint::save(t, &teacher_path(self.run, self.state.epoch), BTreeMap::new())?;
            }
            checkpoint::save(&model, &self.run.join("last.safetensors"), self.state.metadata())?;
            remove_old_optimizers(self.run, self.state.epoch);
            if improved {
                let meta = BTreeMap::from([("graft.epoch".to_string(), self.state.epoch.to_string())]);
                checkpoint::save(teacher.as_ref().unwrap_or(&model), &self.run.join(&phase.best_file), meta)?;
            }
            append_metrics(self.run, &end.record)?;
            let tb = self.tb.as_mut().expect("opened above");
            for (tag, value) in &end.scalars {
                tb.add_scalar(tag, *value as f32, self.state.epoch as i64)?;
            }
            tb.flush()?;
            task.report(self.reporter, &end.record, phase.total);
            if stop {
                self.reporter.message(&format!("early stopping: no improvement for {} epochs", early.as_ref().map(|e| e.patience()).unwrap_or(0)));
                break;
            }
        }
        Ok(model)
    }
}

/// Writes the one `metrics.jsonl` line (and TensorBoard scalars) of work done in one go (a
/// classic head's fit), which the run counts as its one epoch.
pub fn write_single_epoch(run: &Path, record: &serde_json::Value, scalars: &[(String, f64)]) -> Result<()> {
    write_atomic(&run.join("metrics.jsonl"), (record.to_string() + "\n").as_bytes())?;
    let mut tb = EventWriter::create(&run.join("tb"))?;
    for (tag, value) in scalars {
        tb.add_scalar(tag, *value as f32, 1)?;
    }
    tb.flush()
}

/// Where a phase stands in a (possibly resumed) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseStatus {
    Fresh,
    InProgress,
    Done,
}

fn optimizer_path(run: &Path, epoch: usize) -> PathBuf {
    run.join(format!("optim-{epoch}.bin"))
}

fn save_optimizer(run: &Path, epoch: usize, optimizer: &ModuleOptimizer) -> Result<()> {
    let path = optimizer_path(run, epoch);
    let bytes = optimizer.into_bytes().map_err(|e| GraftError::Data { path: path.clone(), reason: format!("cannot serialize the optimiser state: {e:?}") })?;
    write_atomic(&path, &bytes[..])
}

/// Removes optimiser states (and averaged weights) of other epochs than `epoch` (the one
/// `last.safetensors` names).
fn remove_old_optimizers(run: &Path, epoch: usize) {
    let keep = [format!("optim-{epoch}.bin"), format!("teacher-{epoch}.safetensors")];
    if let Ok(entries) = std::fs::read_dir(run) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = (name.starts_with("optim-") && name.ends_with(".bin")) || (name.starts_with("teacher-") && name.ends_with(".safetensors"));
            if ours && !keep.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// The averaged weights (mean teacher) after `epoch`.
fn teacher_path(run: &Path, epoch: usize) -> PathBuf {
    run.join(format!("teacher-{epoch}.safetensors"))
}

/// `teacher ← decay · teacher + (1 − decay) · student` for every trained parameter of
/// `student` (matched by id: the teacher started as the student's copy); frozen ones are equal.
pub fn ema_update<M: Module>(teacher: M, student: &M, decay: f64) -> M {
    struct Trained(std::collections::HashMap<ParamId, Tensor<1>>);
    impl burn::module::ModuleVisitor for Trained {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val();
            if value.is_require_grad() {
                let n = value.shape().num_elements();
                self.0.insert(param.id, value.detach().reshape([n]));
            }
        }
    }
    struct Average(std::collections::HashMap<ParamId, Tensor<1>>, f64);
    impl ModuleMapper for Average {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(s) = self.0.remove(&param.id) else { return param };
            let (id, value, mapper) = param.consume();
            let dims = value.dims();
            let mixed = value.detach().mul_scalar(self.1) + s.reshape(dims).mul_scalar(1.0 - self.1);
            Param::from_mapped_value(id, mixed, mapper)
        }
    }
    let mut trained = Trained(Default::default());
    student.visit(&mut trained);
    teacher.map(&mut Average(trained.0, decay))
}

/// The optimiser state saved after `epoch`. Its size is checked before it is read (at most a few
/// times the model's checkpoint); a missing or unreadable state is an error naming the file.
fn load_optimizer(run: &Path, epoch: usize, optimizer: ModuleOptimizer) -> Result<ModuleOptimizer> {
    let path = optimizer_path(run, epoch);
    let model_bytes = std::fs::metadata(run.join("last.safetensors")).map(|m| m.len()).unwrap_or(0);
    let limit = model_bytes.saturating_mul(4).saturating_add(1 << 20);
    let file = crate::fsutil::open_regular(&path)?;
    let len = file.metadata().map_err(|e| GraftError::io(&path, e))?.len();
    if len > limit {
        return Err(GraftError::Data { path, reason: format!("optimiser state of {len} bytes, over {limit} (4× the model's checkpoint)") });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit), &mut bytes).map_err(|e| GraftError::io(&path, e))?;
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| optimizer.from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))));
    match loaded {
        Ok(Ok(optimizer)) => Ok(optimizer),
        Ok(Err(e)) => Err(GraftError::Data { path, reason: format!("not an optimiser state: {e:?}") }),
        Err(_) => Err(GraftError::Data { path, reason: "not an optimiser state (malformed)".into() }),
    }
}

/// Runs `train` on the run directory `run`; a fresh run (not `resume`) that fails before its
/// first epoch is saved leaves no run directory behind (see [`crate::fsutil::fresh_run_state`]).
pub fn removing_a_failed_start<T>(run: &Path, resume: bool, train: impl FnOnce() -> Result<T>) -> Result<T> {
    let fresh = if resume { None } else { crate::fsutil::fresh_run_state(run) };
    let result = train();
    if let (Err(_), Some(created)) = (&result, fresh) {
        if !run.join("last.safetensors").exists() {
            crate::fsutil::remove_failed_run(run, created);
        }
    }
    result
}

/// The order of `n` examples in epoch `epoch` of a run seeded `seed` (a fresh shuffle per epoch,
/// the same in a resumed run).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    order
}

/// Checks and creates (or reopens, with `resume`) a run directory; a symbolic link inside it
/// is refused. `out` and `resume` name the settings that gave the directory, for errors.
/// Returns whether a fresh run's directory was created here (see
/// [`crate::fsutil::prepare_fresh_run_dir`]), so a failed start can remove it.
pub fn prepare_run_dir(run: &Path, resume: bool) -> Result<bool> {
    if !resume && run.join("model.json").exists() {
        return Err(GraftError::setting("out", &run.display().to_string(), "already holds a run; pass --resume to continue it or choose another --out"));
    }
    if resume && !run.join("model.json").exists() {
        return Err(GraftError::setting("resume", &run.display().to_string(), "is not a graft run directory (no model.json)"));
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
    crate::fsutil::prepare_fresh_run_dir(run, "out")
}

/// After a kill between writing `last.safetensors` and the metrics line (or the best
/// checkpoint), make the run directory agree with the state stored in `last`.
fn repair_after_kill(run: &Path, state: &RunState) -> Result<()> {
    // metrics.jsonl: keep completed epochs only, and add the last one if its line is missing.
    // Kept lines are copied verbatim: a parse/print round trip may change a float's last digit.
    let path = run.join("metrics.jsonl");
    let old = crate::fsutil::read_run_text(&path, crate::limits::MAX_METRICS_FILE_BYTES)?.unwrap_or_default();
    let mut text = String::new();
    let mut epochs = Vec::new();
    for line in old.lines() {
        let Some(epoch) = record_epoch(line) else { continue }; // torn by a kill
        if epoch <= state.epoch {
            text.push_str(line);
            text.push('\n');
            epochs.push(epoch);
        }
    }
    if let Some(last) = &state.last_metrics {
        let epoch = last.get("epoch").and_then(|e| e.as_u64()).map(|e| e as usize);
        if epoch.is_some_and(|e| !epochs.contains(&e)) {
            text.push_str(&(last.to_string() + "\n"));
        }
    }
    write_atomic(&path, text.as_bytes())?;
    // The best checkpoint: when the last epoch was the best, `last` holds those weights.
    let best = run.join(&state.best_file);
    let best_epoch = checkpoint::read_metadata(&best).ok().and_then(|m| m.get("graft.epoch").and_then(|e| e.parse::<usize>().ok()));
    if state.best_epoch == state.epoch && best_epoch != Some(state.best_epoch) {
        let tmp = run.join(format!(".{}.repair", state.best_file));
        std::fs::copy(run.join("last.safetensors"), &tmp).map_err(|e| GraftError::io(&tmp, e))?;
        std::fs::rename(&tmp, &best).map_err(|e| GraftError::io(&best, e))?;
    }
    Ok(())
}

/// The `epoch` of a `metrics.jsonl` line; `None` for a torn line.
fn record_epoch(line: &str) -> Option<usize> {
    serde_json::from_str::<serde_json::Value>(line).ok()?.get("epoch")?.as_u64().map(|e| e as usize)
}

fn append_metrics(run: &Path, record: &serde_json::Value) -> Result<()> {
    let path = run.join("metrics.jsonl");
    let mut file = crate::fsutil::append_nofollow(&path)?;
    let line = record.to_string() + "\n";
    file.write_all(line.as_bytes()).and_then(|_| file.sync_data()).map_err(|e| GraftError::io(&path, e))
}

/// Reads `metrics.jsonl` as records of type `R` (lines of another shape, or torn by a kill, are
/// left out).
pub fn read_records<R: serde::de::DeserializeOwned>(run: &Path) -> Result<Vec<R>> {
    let path = run.join("metrics.jsonl");
    let text = crate::fsutil::read_run_text(&path, crate::limits::MAX_METRICS_FILE_BYTES)?.unwrap_or_default();
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The teacher moves (1 − decay) of the way to the student, parameter by parameter; a
    /// parameter that does not train stays as it is.
    #[test]
    fn ema_update_moves_the_teacher_towards_the_student() {
        use crate::train::model::{Head, HeadSpec};
        let device = Device::default();
        let student = stable_ids(Head::init(&HeadSpec::Linear, 3, 2, 0.0, &device).train());
        let teacher = student.clone();
        struct AddOne;
        impl ModuleMapper for AddOne {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (id, value, mapper) = param.consume();
                let device = value.device();
                Param::from_mapped_value(id, Tensor::from_data(value.detach().add_scalar(1.0).into_data(), &device).require_grad(), mapper)
            }
        }
        let moved = student.clone().map(&mut AddOne);
        let values = |m: &Head| -> Vec<f32> { m.layers[0].weight.val().into_data().try_to_vec::<f32>().unwrap() };
        let averaged = ema_update(teacher.clone(), &moved, 0.9);
        for (a, t) in values(&averaged).iter().zip(values(&teacher)) {
            assert!((a - (t + 0.1)).abs() < 1e-6, "{a} vs {t} + 0.1");
        }
        // A student whose parameters do not train leaves the teacher unchanged.
        let frozen = moved.no_grad();
        assert_eq!(values(&ema_update(teacher.clone(), &frozen, 0.9)), values(&teacher));
    }

    #[test]
    fn a_state_without_validation_survives_its_json() {
        // No validation epoch yet: the best loss is infinite, which JSON can only write as null.
        let state = RunState { epoch: 3, step: 12, best_epoch: 3, ..Default::default() };
        let back: RunState = serde_json::from_str(&state.metadata()["graft.train_state"]).unwrap();
        assert_eq!(back.best_val_loss, f64::INFINITY);
        assert_eq!((back.epoch, back.step, back.best_epoch), (3, 12, 3));
        let seen = RunState { best_val_loss: 0.25, ..state };
        let back: RunState = serde_json::from_str(&serde_json::to_string(&seen).unwrap()).unwrap();
        assert_eq!(back.best_val_loss, 0.25);
    }

    #[test]
    fn a_state_written_before_phases_existed_still_reads() {
        // The state an earlier graft wrote (EpochMetrics as last_metrics, no best_file/extra).
        let old = r#"{"epoch":2,"step":8,"best_epoch":2,"best_val_accuracy":0.5,"best_val_loss":0.7,"early":null,"plateau":null,"last_metrics":{"epoch":2,"stage":1,"lr":0.001,"train_loss":0.9,"train_accuracy":0.5,"val_loss":0.7,"val_accuracy":0.5,"seconds":1.0},"best_confusion":[],"train_seconds":2.0,"stopped_early":false}"#;
        let state: RunState = serde_json::from_str(old).unwrap();
        assert_eq!(state.best_file, "best.safetensors");
        assert_eq!(state.last_metrics.unwrap()["epoch"], 2);
    }

    #[test]
    fn a_resume_without_a_completed_epoch_starts_clean() {
        let run = std::env::temp_dir().join(format!("graft-engine-clean-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("metrics.jsonl"), "{\"epoch\":1}\n{\"epoch\":2}\n").unwrap();
        let device = Device::default();
        let engine = Engine::open(&run, true, 0, &crate::report::Silent, &device).unwrap();
        assert_eq!(engine.state.epoch, 0);
        assert!(engine.resumed.is_none());
        assert!(!run.join("metrics.jsonl").exists(), "lines of epochs no checkpoint records would be kept twice");
        std::fs::remove_dir_all(&run).unwrap();
    }

    #[test]
    fn stable_ids_follow_paths_not_processes() {
        let device = Device::default();
        let a = stable_ids(burn::nn::LinearConfig::new(3, 2).init(&device));
        let b = stable_ids(burn::nn::LinearConfig::new(3, 2).init(&device));
        assert_eq!(param_ids(&a), param_ids(&b));
        let ids = param_ids(&a);
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1], "weight and bias get different ids");
    }

    #[test]
    fn epoch_seeds_differ_by_epoch_and_seed() {
        assert_ne!(epoch_seed(0, 0), epoch_seed(0, 1));
        assert_ne!(epoch_seed(0, 0), epoch_seed(1, 0));
    }
}
