//! `graft fit` on text: a frozen sentence encoder (`minilm-l6`) whose embeddings go through the
//! feature store, and a head trained on them — neural (`linear`, `mlp:…`) or classic
//! (`logistic`, `svm`, `knn:K`, `prototype`).
//!
//! The run directory has the same files as an image run (`config.toml`, `model.json`,
//! `metrics.jsonl`, `tb/`, plots, `summary.json`), with the head alone in `best.safetensors` /
//! `last.safetensors` (or `classic.safetensors`): the encoder is the pulled one, checked by its
//! sha256 when the run is loaded. `model.json` says `"kind": "text"` ([`crate::manifest::RunManifest::Text`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::guard;
use super::config::FitConfig;
use super::engine::{self, Engine, EpochEnd, Iteration, Task, Validation};
use super::fit::{fit_phase, write_plots, CacheStats, DataSummary, EpochMetrics, FitReporter, FitSummary};
use super::loss::{argmax, cross_entropy};
use super::model::{Head, HeadSpec};
use super::run::{top1, Evaluation};
use super::schedule::LrPlan;
use super::semi::{Entry, SemiMethod, SemiTask, Views};
use crate::cache::store::Key;
use crate::cache::FeatureStore;
use crate::classic::Classic;
use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::text::features::{embed_cached, embed_to_store, open_store, preprocess_id, EmbedStats};
use crate::text::{stratified_split, SentenceEncoder, TextDataset};
use crate::zoo::layers::FreezeSpec;
use crate::{GraftError, Result};

/// What is needed to rebuild a text run's model without its training data (`model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextRunInfo {
    /// The sentence encoder, e.g. `minilm-l6`.
    pub model: String,
    pub classes: Vec<String>,
    pub head: HeadSpec,
    pub dropout: f64,
    /// sha256 of the encoder weights the embeddings came from.
    pub weights_sha256: String,
    /// Tokenizer, truncation, pooling and normalisation (the feature store's preprocessing id).
    pub text_preprocess: String,
    /// Width of one embedding (the head's input).
    pub embedding_width: usize,
    /// Multi-task runs: the tasks, in output order (the head's outputs are their classes one
    /// task after another, and `classes` names them `task/class`). Empty for one task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskHead>,
}

/// One task of a multi-task text run: its label column, classes and loss weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskHead {
    pub name: String,
    pub classes: Vec<String>,
    pub weight: f64,
}

impl TaskHead {
    /// Each task's range of the head's outputs.
    pub fn ranges(tasks: &[TaskHead]) -> Vec<std::ops::Range<usize>> {
        let mut start = 0;
        tasks
            .iter()
            .map(|t| {
                start += t.classes.len();
                start - t.classes.len()..start
            })
            .collect()
    }
}

/// The trained classifier on top of the embeddings.
pub enum TextHead {
    Neural(Head),
    Classic(Classic),
}

/// A text run's model ready for inference.
pub struct TextRunModel {
    pub info: TextRunInfo,
    pub encoder: SentenceEncoder,
    pub head: TextHead,
}

/// Loads a text run: the pulled encoder (its sha256 must be the run's) and the kept head.
pub fn load_text_run(run: &Path, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<TextRunModel> {
    let info = TextRunInfo::load(run)?;
    let encoder = SentenceEncoder::load(&info.model, None, home, reporter, device)?;
    if encoder.weights_sha256 != info.weights_sha256 {
        return Err(GraftError::Checksum { path: encoder.weights_path.clone(), expected: info.weights_sha256.clone(), found: encoder.weights_sha256.clone() });
    }
    let head = match &info.head {
        HeadSpec::Classic(_) => TextHead::Classic(Classic::load(&run.join("classic.safetensors"))?),
        spec => {
            let head = Head::init(spec, info.embedding_width, info.classes.len(), info.dropout, device);
            TextHead::Neural(checkpoint::load(head, &super::run::serving_checkpoint(run)?)?)
        }
    };
    Ok(TextRunModel { info, encoder, head })
}

impl TextRunModel {
    /// The feature-store namespace of this run's encoder.
    pub fn store(&self, home: &Path, reporter: &dyn Reporter) -> Result<FeatureStore> {
        open_store(home, &self.info.model, &self.encoder, crate::cache::StoreDtype::F32, reporter)
    }

    /// Class probabilities for `texts`, embeddings served from `store` when there.
    pub fn probabilities<S: AsRef<str>>(&self, texts: &[S], store: Option<&mut FeatureStore>, reporter: &dyn Reporter, stats: &mut EmbedStats, device: &Device) -> Result<Vec<Vec<f32>>> {
        let rows = embed_cached(&self.encoder, texts, store, reporter, stats)?;
        Ok(head_probabilities(&self.head, &self.info.tasks, &rows, device))
    }
}

/// Class probabilities per row; a multi-task head's row holds each task's probabilities (each
/// summing to 1) one task after another.
fn head_probabilities(head: &TextHead, tasks: &[TaskHead], rows: &[Vec<f32>], device: &Device) -> Vec<Vec<f32>> {
    if rows.is_empty() {
        return Vec::new();
    }
    let width = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    match head {
        TextHead::Classic(c) => c.predict_proba(&flat),
        TextHead::Neural(h) => {
            let x = Tensor::<2>::from_data(TensorData::new(flat, [rows.len(), width]), device);
            let logits = h.forward(x); // [N, outputs]
            let p = if tasks.is_empty() {
                softmax(logits, 1)
            } else {
                Tensor::cat(TaskHead::ranges(tasks).into_iter().map(|r| softmax(logits.clone().slice([0..rows.len(), r]), 1)).collect(), 1)
            };
            let p: Vec<f32> = p.into_data().try_to_vec::<f32>().unwrap_or_default();
            p.chunks((p.len() / rows.len()).max(1)).map(|r| r.to_vec()).collect()
        }
    }
}

/// Text runs support what a frozen encoder supports; anything else is named.
fn check_config(config: &FitConfig) -> Result<()> {
    let only = |flag: &str, value: String, why: &str| Err(GraftError::setting(flag, &value, format!("{why} (text models support only --freeze all: the encoder stays frozen and its embeddings are cached)")));
    if config.freeze != FreezeSpec::All {
        return only("freeze", config.freeze.to_string(), "fine-tuning the text encoder is not supported");
    }
    if !config.stages.is_empty() {
        return only("stages", String::new(), "staged fine-tuning is not supported for text");
    }
    if config.from_scratch {
        return only("from_scratch", String::new(), "a random text encoder is not supported");
    }
    if !config.augment.is_identity() {
        return only("augment", config.augment.to_string(), "augmentation is for images");
    }
    if config.train_bn {
        return only("train_bn", String::new(), "the text encoder has no BatchNorm");
    }
    if !config.tasks.is_empty() {
        if matches!(config.head, HeadSpec::Classic(_)) {
            return Err(GraftError::setting("head", &config.head.to_string(), "a multi-task fit trains one neural head per task (linear or mlp:…)"));
        }
        if config.semi.is_some() {
            return Err(GraftError::setting("tasks", &config.tasks.iter().map(|t| t.column.as_str()).collect::<Vec<_>>().join(","), "multi-task and semi-supervised training do not combine yet"));
        }
    }
    if let Some(semi) = &config.semi {
        if matches!(semi.method, SemiMethod::Fixmatch { .. }) {
            return Err(GraftError::setting("method", "fixmatch", "FixMatch learns from strong image augmentations; for text use pseudo-label or mean-teacher"));
        }
        if matches!(config.head, HeadSpec::Classic(_)) {
            return Err(GraftError::setting("head", &config.head.to_string(), "semi-supervised training trains a neural head (linear or mlp:…)"));
        }
    }
    Ok(())
}

/// Embeddings and labels of one split: keys into the feature store (read per batch), or the
/// embeddings themselves with `--cache off`.
struct Rows {
    x: Embeddings,
    labels: Vec<usize>,
    width: usize,
}

enum Embeddings {
    Stored { store: Arc<FeatureStore>, keys: Vec<Key> },
    Memory(Vec<Vec<f32>>),
}

impl super::semi::RowSource for Rows {
    fn gather(&self, rows: &[usize]) -> Result<Vec<f32>> {
        Rows::gather(self, rows)
    }
    fn width(&self) -> usize {
        self.width
    }
}

impl Embeddings {
    fn len(&self) -> usize {
        match self {
            Embeddings::Stored { keys, .. } => keys.len(),
            Embeddings::Memory(rows) => rows.len(),
        }
    }
}

impl Rows {
    fn gather(&self, idx: &[usize]) -> Result<Vec<f32>> {
        let mut data = Vec::with_capacity(idx.len() * self.width);
        match &self.x {
            Embeddings::Memory(x) => idx.iter().for_each(|&i| data.extend_from_slice(&x[i])),
            Embeddings::Stored { store, keys } => store.read_rows(keys, idx, "an embedding", &mut data)?,
        }
        Ok(data)
    }

    fn tensor(&self, idx: &[usize], device: &Device) -> Result<Tensor<2>> {
        Ok(Tensor::from_data(TensorData::new(self.gather(idx)?, [idx.len(), self.width]), device))
    }

    fn flat(&self) -> Result<Vec<f32>> {
        self.gather(&(0..self.labels.len()).collect::<Vec<_>>())
    }
}

/// Runs `graft fit` for a text model into `run`, or resumes it there (`resume`): a neural head
/// continues after its last completed epoch, a classic head is fitted again (it trains in one go).
pub fn fit_text(config: &FitConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn FitReporter, device: &Device) -> Result<FitSummary> {
    config.validate()?;
    check_config(config)?;
    if resume && !matches!(config.head, HeadSpec::Classic(_)) {
        engine::check_total(run, config.total_epochs(), "epochs")?;
    }
    engine::prepare_run_dir(run, resume)?;
    device.seed(config.seed);
    let started = Instant::now();

    // --- data -----------------------------------------------------------------------------------
    // Multi-task: a CSV with a label column per task; the first task's labels stand for the
    // dataset's (the split is stratified on them), the others go along by index.
    let columns: Vec<&str> = config.tasks.iter().map(|t| t.column.as_str()).collect();
    let (data, task_sets) = if columns.is_empty() {
        (TextDataset::open_any(&config.data)?, Vec::new())
    } else {
        read_tasks(&config.data, &columns)?
    };
    data.check_trainable()?;
    let (train, val, train_tasks, val_tasks) = match &config.val {
        Some(path) if columns.is_empty() => (data.clone(), TextDataset::open_any(path)?.with_classes(&data.classes)?, Vec::new(), Vec::new()),
        Some(path) => {
            let (val, val_sets) = read_tasks(path, &columns)?;
            let mut val_labels = Vec::new();
            for ((classes, _), (val_classes, labels)) in task_sets.iter().zip(val_sets) {
                let relabelled = TextDataset { source: path.clone(), classes: val_classes, texts: val.texts.clone(), labels, skipped: Vec::new() }.with_classes(classes)?;
                val_labels.push(relabelled.labels);
            }
            let first = val_labels.first().cloned().unwrap_or_default();
            let train_labels = task_sets.iter().map(|(_, l)| l.clone()).collect();
            (data.clone(), TextDataset { labels: first, classes: data.classes.clone(), ..val }, train_labels, val_labels)
        }
        None => {
            let (t, v) = if config.val_split == 0.0 { ((0..data.len()).collect(), Vec::new()) } else { stratified_split(&data.labels, config.val_split, config.seed)? };
            let pick = |idx: &[usize]| -> Vec<Vec<usize>> { task_sets.iter().map(|(_, labels)| idx.iter().map(|&i| labels[i]).collect()).collect() };
            (data.subset(&t), data.subset(&v), pick(&t), pick(&v))
        }
    };
    let classes = if columns.is_empty() {
        data.classes.clone()
    } else {
        config.tasks.iter().zip(&task_sets).flat_map(|(t, (classes, _))| classes.iter().map(move |c| format!("{}/{c}", t.column))).collect()
    };
    let task_heads: Vec<TaskHead> = config.tasks.iter().zip(&task_sets).map(|(t, (classes, _))| TaskHead { name: t.column.clone(), classes: classes.clone(), weight: t.weight }).collect();
    let skipped = data.skipped.clone();
    for s in &skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    let data_summary = DataSummary::new(data.classes.len(), &train.labels, &val.labels, skipped.len());
    reporter.message(&data_summary.line(&data.classes, "texts"));
    for (t, (task_classes, _)) in config.tasks.iter().zip(&task_sets).skip(1) {
        reporter.message(&format!("task {}: {} classes ({})", t.column, task_classes.len(), task_classes.join(", ")));
    }

    // --- embeddings (cached) --------------------------------------------------------------------
    let encoder = SentenceEncoder::load(&config.model, config.weights.as_deref(), home, reporter, device)?;
    let mut stats = EmbedStats::default();
    let store = match config.cache {
        super::config::CacheMode::Off => None,
        _ => Some(open_store(home, &config.model, &encoder, config.cache_dtype, reporter)?),
    };
    // Unlabelled texts (semi-supervised): embedded like the others, no labels.
    let unlabelled = config.semi.as_ref().map(|semi| crate::text::dataset::read_unlabelled(&semi.unlabelled)).transpose()?;
    let (train_rows, val_rows, unlabelled_rows) = match store {
        Some(mut store) => {
            let train_keys = embed_to_store(&encoder, &train.texts, &mut store, reporter, &mut stats)?;
            let val_keys = embed_to_store(&encoder, &val.texts, &mut store, reporter, &mut stats)?;
            let unlabelled_keys = unlabelled.as_ref().map(|u| embed_to_store(&encoder, u, &mut store, reporter, &mut stats)).transpose()?;
            let width = store.dim().unwrap_or(0);
            let store = Arc::new(store);
            (
                Rows { x: Embeddings::Stored { store: store.clone(), keys: train_keys }, labels: train.labels.clone(), width },
                Rows { x: Embeddings::Stored { store: store.clone(), keys: val_keys }, labels: val.labels.clone(), width },
                unlabelled_keys.map(|keys| Rows { x: Embeddings::Stored { store, keys }, labels: Vec::new(), width }),
            )
        }
        None => {
            let t = embed_cached(&encoder, &train.texts.to_vec()?, None, reporter, &mut stats)?;
            let v = embed_cached(&encoder, &val.texts.to_vec()?, None, reporter, &mut stats)?;
            let u = unlabelled.as_ref().map(|u| embed_cached(&encoder, &u.to_vec()?, None, reporter, &mut stats)).transpose()?;
            let width = t.first().map(Vec::len).unwrap_or(0);
            (
                Rows { x: Embeddings::Memory(t), labels: train.labels.clone(), width },
                Rows { x: Embeddings::Memory(v), labels: val.labels.clone(), width },
                u.map(|u| Rows { x: Embeddings::Memory(u), labels: Vec::new(), width }),
            )
        }
    };
    let width = train_rows.width;
    let info = TextRunInfo {
        model: config.model.clone(),
        classes: classes.clone(),
        head: config.head.clone(),
        dropout: config.dropout,
        weights_sha256: encoder.weights_sha256.clone(),
        text_preprocess: preprocess_id(&encoder)?,
        embedding_width: width,
        tasks: task_heads,
    };
    info.save(run, device)?;
    write_atomic(&run.join("config.toml"), config.to_toml().as_bytes())?;
    let cache = CacheStats { hits: stats.hits, misses: stats.misses };
    reporter.message(&format!("embeddings: {} from the cache, {} computed", stats.hits, stats.misses));

    // --- head -----------------------------------------------------------------------------------
    let trained = match &config.head {
        HeadSpec::Classic(kind) => train_classic(kind, config.seed, run, &info, &train_rows, &val_rows, reporter)?,
        _ => train_neural(config, run, resume, &info, &train_rows, &val_rows, unlabelled_rows.as_ref(), (&train_tasks, &val_tasks), reporter, device)?,
    };
    let metrics = super::fit::read_metrics(run)?;
    write_plots(run, &metrics, &classes, &trained.best_confusion)?;
    let summary = FitSummary {
        run: run.to_path_buf(),
        epochs: metrics.len(),
        best_epoch: trained.best_epoch,
        best_val_accuracy: (!val_rows.labels.is_empty()).then_some(trained.best_val_accuracy),
        train_seconds: started.elapsed().as_secs_f64(),
        skipped,
        cache,
        trunk_images: stats.misses,
        stopped_early: trained.stopped_early,
        trainable_params: trained.trainable_params,
        classes,
        data: data_summary,
        monitor: (!val_rows.labels.is_empty() && !matches!(config.head, HeadSpec::Classic(_))).then_some(config.monitor),
        best_val_loss: (!val_rows.labels.is_empty()).then_some(trained.best_val_loss),
    };
    write_atomic(&run.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("summary serializes"))?;
    Ok(summary)
}

struct Trained {
    best_epoch: usize,
    best_val_accuracy: f64,
    best_val_loss: f64,
    best_confusion: Vec<Vec<u64>>,
    stopped_early: bool,
    trainable_params: usize,
}

/// A classic head on the embeddings, trained in one go (one "epoch" in the metrics).
fn train_classic(kind: &crate::classic::ClassicKind, seed: u64, run: &Path, info: &TextRunInfo, train: &Rows, val: &Rows, reporter: &dyn FitReporter) -> Result<Trained> {
    let started = Instant::now();
    let head = Classic::fit_reporting(kind.clone(), &train.flat()?, &train.labels, info.embedding_width, info.classes.len(), seed, reporter)?;
    head.report_penalty(reporter);
    let score = |rows: &Rows| -> Result<(f64, Evaluation)> {
        let probs = head.predict_proba(&rows.flat()?);
        let loss = probs.iter().zip(&rows.labels).map(|(p, &l)| -(p[l].max(1e-12) as f64).ln()).sum::<f64>() / rows.labels.len().max(1) as f64;
        Ok((loss, Evaluation::from_predictions(&info.classes, &rows.labels, &top1(&probs))))
    };
    let (train_loss, train_eval) = score(train)?;
    let validation = if val.labels.is_empty() { None } else { Some(score(val)?) };
    head.save(&run.join("classic.safetensors"))?;
    let metrics = EpochMetrics {
        epoch: 1,
        stage: 1,
        lr: 0.0,
        train_loss,
        train_accuracy: train_eval.accuracy,
        val_loss: validation.as_ref().map(|v| v.0),
        val_accuracy: validation.as_ref().map(|v| v.1.accuracy),
        seconds: started.elapsed().as_secs_f64(),
    };
    engine::write_single_epoch(run, &serde_json::to_value(&metrics).expect("metrics serialize"), &super::fit::scalars(&metrics))?;
    reporter.epoch(&metrics, 1);
    Ok(Trained {
        best_epoch: 1,
        best_val_accuracy: metrics.val_accuracy.unwrap_or(0.0),
        best_val_loss: metrics.val_loss.unwrap_or(f64::INFINITY),
        best_confusion: validation.map(|v| v.1.confusion).unwrap_or_default(),
        stopped_early: false,
        trainable_params: 0,
    })
}

/// A linear or MLP head on stored embeddings as the engine's task.
struct HeadTask<'a> {
    config: &'a FitConfig,
    info: &'a TextRunInfo,
    train: &'a Rows,
    val: &'a Rows,
    plan: LrPlan,
    class_weights: Option<Vec<f32>>,
    reporter: &'a dyn FitReporter,
    device: &'a Device,
    train_device: Device,
    order: Vec<usize>,
    /// (loss sum, correct) over the epoch.
    sums: (f64, usize),
    /// Multi-task: each task's output range, weight and labels (train, validation); empty for
    /// one task.
    tasks: Vec<TaskLabels<'a>>,
    /// Multi-task: each task's validation accuracy in the epoch just measured.
    val_tasks: Vec<f64>,
}

struct TaskLabels<'a> {
    head: &'a TaskHead,
    range: std::ops::Range<usize>,
    train: &'a [usize],
    val: &'a [usize],
    /// Correct training predictions over the epoch.
    correct: usize,
}

/// The reading of a CSV with a label column per task: the first task's labels as a dataset,
/// and every task's classes and labels.
fn read_tasks(path: &Path, columns: &[&str]) -> Result<(TextDataset, Vec<(Vec<String>, Vec<usize>)>)> {
    let (texts, sets) = crate::text::dataset::read_csv_columns(path, columns)?;
    let (classes, labels) = sets[0].clone();
    Ok((TextDataset { source: path.to_path_buf(), classes, texts, labels, skipped: Vec::new() }, sets))
}

/// Σ weight × cross-entropy of each task's outputs against its labels (rows `rows` of the split).
fn task_loss(logits: Tensor<2>, tasks: &[TaskLabels], rows: &[usize], val: bool, device: &Device) -> (Tensor<1>, Vec<Vec<usize>>) {
    let n = rows.len();
    let mut total: Option<Tensor<1>> = None;
    let mut predicted = Vec::new();
    for t in tasks {
        let part = logits.clone().slice([0..n, t.range.clone()]); // [n, task classes]
        let labels = if val { t.val } else { t.train };
        let targets: Vec<usize> = rows.iter().map(|&i| labels[i]).collect();
        let loss = cross_entropy(part.clone(), &targets, 0.0, None, device).mul_scalar(t.head.weight as f32);
        predicted.push(argmax(part.detach()));
        total = Some(match total {
            Some(sum) => sum + loss,
            None => loss,
        });
    }
    (total.expect("at least one task"), predicted)
}

impl Task for HeadTask<'_> {
    type Model = Head;

    fn iterations(&self) -> usize {
        self.train.labels.len().div_ceil(self.config.batch_size)
    }

    fn begin_epoch(&mut self, _model: &Head, epoch: usize) -> Result<()> {
        self.order = engine::epoch_order(self.train.labels.len(), self.config.seed, epoch);
        self.sums = (0.0, 0);
        self.tasks.iter_mut().for_each(|t| t.correct = 0);
        Ok(())
    }

    fn lr(&self, it: &Iteration) -> f64 {
        self.plan.lr_at(it.step)
    }

    fn step(&mut self, head: &Head, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let bs = self.config.batch_size;
        let batch = &self.order[it.index * bs..((it.index + 1) * bs).min(self.order.len())];
        let targets: Vec<usize> = batch.iter().map(|&i| self.train.labels[i]).collect();
        let logits = head.forward(self.train.tensor(batch, &self.train_device)?); // [b, outputs]
        let loss = if self.tasks.is_empty() {
            self.sums.1 += argmax(logits.clone().detach()).iter().zip(&targets).filter(|(p, t)| p == t).count();
            cross_entropy(logits, &targets, self.config.label_smoothing, self.class_weights.as_deref(), &self.train_device)
        } else {
            let (loss, predicted) = task_loss(logits, &self.tasks, batch, false, &self.train_device);
            for (t, p) in self.tasks.iter_mut().zip(predicted) {
                t.correct += p.iter().zip(batch).filter(|(p, &i)| **p == t.train[i]).count();
            }
            self.sums.1 = self.tasks[0].correct;
            loss
        };
        let loss_value: f32 = loss.clone().into_scalar();
        guard::check_loss("training loss", loss_value as f64, it.epoch + 1, lr)?;
        self.sums.0 += loss_value as f64 * batch.len() as f64;
        Ok(vec![(GradientsParams::from_grads(loss.backward(), head), 1.0)])
    }

    fn end_epoch(&mut self, head: &Head, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let val = self.val;
        let validation = if val.labels.is_empty() {
            None
        } else {
            let all: Vec<usize> = (0..val.labels.len()).collect();
            let (mut loss, mut predicted) = (0f64, Vec::new());
            let mut per_task: Vec<Vec<usize>> = vec![Vec::new(); self.tasks.len()];
            for chunk in all.chunks(self.config.batch_size.max(256)) {
                let logits = head.forward(val.tensor(chunk, self.device)?);
                let targets: Vec<usize> = chunk.iter().map(|&i| val.labels[i]).collect();
                let l: f32 = if self.tasks.is_empty() {
                    predicted.extend(argmax(logits.clone()));
                    cross_entropy(logits, &targets, 0.0, None, self.device).into_scalar()
                } else {
                    let (l, p) = task_loss(logits, &self.tasks, chunk, true, self.device);
                    per_task.iter_mut().zip(p).for_each(|(all, p)| all.extend(p));
                    l.into_scalar()
                };
                loss += l as f64 * chunk.len() as f64;
            }
            let loss = loss / val.labels.len() as f64;
            if self.tasks.is_empty() {
                let eval = Evaluation::from_predictions(&self.info.classes, &val.labels, &predicted);
                Some(Validation { loss, accuracy: eval.accuracy, confusion: eval.confusion })
            } else {
                // The mean of the tasks' accuracies picks the kept epoch; the first task's
                // confusion matrix is the run's plot. Each task's figures go in its record.
                let evals: Vec<Evaluation> = self.tasks.iter().zip(&per_task).map(|(t, p)| Evaluation::from_predictions(&t.head.classes, t.val, p)).collect();
                let accuracy = evals.iter().map(|e| e.accuracy).sum::<f64>() / evals.len() as f64;
                self.val_tasks = evals.iter().map(|e| e.accuracy).collect();
                Some(Validation { loss, accuracy, confusion: evals[0].confusion.clone() })
            }
        };
        let n = self.train.labels.len().max(1) as f64;
        let metrics = EpochMetrics {
            epoch,
            stage: 1,
            lr,
            train_loss: self.sums.0 / n,
            train_accuracy: self.sums.1 as f64 / n,
            val_loss: validation.as_ref().map(|v| v.loss),
            val_accuracy: validation.as_ref().map(|v| v.accuracy),
            seconds,
        };
        let mut scalars = super::fit::scalars(&metrics);
        let mut record = serde_json::to_value(&metrics).expect("metrics serialize");
        if !self.tasks.is_empty() {
            let mut tasks = serde_json::Map::new();
            for (k, t) in self.tasks.iter().enumerate() {
                let train_accuracy = t.correct as f64 / n;
                let val_accuracy = validation.as_ref().and_then(|_| self.val_tasks.get(k).copied());
                tasks.insert(t.head.name.clone(), serde_json::json!({"train_accuracy": train_accuracy, "val_accuracy": val_accuracy}));
                scalars.push((format!("accuracy/train/{}", t.head.name), train_accuracy));
                if let Some(v) = val_accuracy {
                    scalars.push((format!("accuracy/val/{}", t.head.name), v));
                }
            }
            record["tasks"] = tasks.into();
        }
        Ok(EpochEnd { validation, scalars, record })
    }

    fn report(&self, _reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
        if let Ok(m) = serde_json::from_value::<EpochMetrics>(record.clone()) {
            self.reporter.epoch(&m, total);
        }
    }
}

/// A linear or MLP head trained with the run's optimizer, schedule and early stopping; the
/// epoch with the best monitored validation metric is kept (the last one without validation
/// data). A killed run resumes after its last completed epoch.
#[allow(clippy::too_many_arguments)]
fn train_neural(config: &FitConfig, run: &Path, resume: bool, info: &TextRunInfo, train: &Rows, val: &Rows, unlabelled: Option<&Rows>, task_labels: (&[Vec<usize>], &[Vec<usize>]), reporter: &dyn FitReporter, device: &Device) -> Result<Trained> {
    let classes = info.classes.len();
    let mut head = engine::stable_ids(Head::init(&config.head, info.embedding_width, classes, config.dropout, device).train());
    let mut engine = Engine::open(run, resume, config.seed, reporter, device)?;
    if let Some(dict) = &engine.resumed {
        head = checkpoint::import(head, dict, &run.join("last.safetensors"), "the text head")?;
    }
    if engine.state.finished(config.epochs) {
        reporter.message("the run had already finished");
    }
    let trainable_params = super::fit::count_trainable(&head);
    let steps_per_epoch = train.labels.len().div_ceil(config.batch_size);
    let class_weights = config.class_weights.weights(&train.labels, classes);
    let phase = fit_phase(config, 0, config.epochs, config.epochs);
    if let (Some(semi), Some(unlabelled)) = (&config.semi, unlabelled) {
        if unlabelled.x.len() == 0 {
            return Err(GraftError::Data { path: semi.unlabelled.clone(), reason: "no unlabelled texts".into() });
        }
        reporter.message(&format!("unlabelled: {} texts ({}, {} unlabelled per labelled text in a batch)", unlabelled.x.len(), semi.method.name(), semi.ratio));
        let steps_per_epoch = unlabelled.x.len().div_ceil(config.batch_size * semi.ratio);
        let trained = engine::param_ids(&head);
        let mut task: SemiTask<'_, Head> = SemiTask {
            semi,
            batch_size: config.batch_size,
            seed: config.seed,
            plan: LrPlan { base_lr: config.lr, schedule: config.schedule.clone(), warmup_epochs: config.warmup_epochs, steps_per_epoch, epochs: config.epochs },
            classes: &info.classes,
            entry: Entry::Head,
            labelled: Views { rows: train, items: train.labels.len(), views: 1 },
            labels: &train.labels,
            weak: Views { rows: unlabelled, items: unlabelled.x.len(), views: 1 },
            strong: None,
            val: Some((Views { rows: val, items: val.labels.len(), views: 1 }, &val.labels)),
            groups: vec![(trained, 1.0)],
            reporter,
            device: device.clone(),
            train_device: device.clone().autodiff(),
            teacher: None,
            labelled_order: Vec::new(),
            unlabelled_order: Vec::new(),
            sums: Default::default(),
            alignment: None,
        };
        engine.run_phase(&mut task, head, phase)?;
    } else {
        let mut task = HeadTask {
        config,
        info,
        train,
        val,
        plan: LrPlan { base_lr: config.lr, schedule: config.schedule.clone(), warmup_epochs: config.warmup_epochs, steps_per_epoch, epochs: config.epochs },
        class_weights,
        reporter,
        device,
        train_device: device.clone().autodiff(),
        order: Vec::new(),
        sums: (0.0, 0),
        tasks: info
            .tasks
            .iter()
            .zip(TaskHead::ranges(&info.tasks))
            .zip(task_labels.0.iter().zip(task_labels.1))
            .map(|((head, range), (train, val))| TaskLabels { head, range, train, val, correct: 0 })
            .collect(),
        val_tasks: Vec::new(),
        };
        engine.run_phase(&mut task, head, phase)?;
    }
    let state = engine.state;
    Ok(Trained {
        best_epoch: state.best_epoch,
        best_val_accuracy: state.best_val_accuracy,
        best_val_loss: state.best_val_loss,
        best_confusion: state.best_confusion,
        stopped_early: state.stopped_early,
        trainable_params,
    })
}

/// Where a text run's inputs come from: the labelled dataset for `eval`.
pub fn eval_dataset(path: &Path, classes: &[String]) -> Result<TextDataset> {
    TextDataset::open_any(path)?.with_classes(classes)
}

/// Reads `.txt` files for `predict` (one text per file); unreadable files are listed.
pub fn read_text_files(files: &[PathBuf]) -> (Vec<(PathBuf, String)>, Vec<crate::data::folder::Skipped>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => ok.push((f.clone(), crate::text::dataset::decode_text(&bytes))),
            Err(e) => bad.push(crate::data::folder::Skipped { path: f.clone(), reason: e.to_string() }),
        }
    }
    (ok, bad)
}
