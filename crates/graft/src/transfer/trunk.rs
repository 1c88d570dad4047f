//! Siamese and contrastive (SimCLR) pretraining of a pretrained trunk's unfrozen top, for
//! `graft pretrain --method siamese|contrastive --model M`: the trunk loads its pretrained
//! weights, everything below the trained top stays frozen (BatchNorm in inference mode, as in
//! `graft fit`), and the frozen part's activations are computed once, with `--cache-views K`
//! augmented views per image, by `fit`'s own activation cache ([`crate::train::fit`]). The top,
//! pooling and, for SimCLR, a projection head then train on the engine:
//!
//! - `contrastive`: the two views of an image are two different stored views (image-level
//!   augmentation, `--augment` as in `fit`); NT-Xent on the projected, unit-length codes
//!   ([`super::pairs::nt_xent`]). The projection head is dropped afterwards.
//! - `siamese`: pairs of images known only as the same or different; the contrastive loss on
//!   the unit-length pooled codes ([`super::pairs::contrastive_loss`]).
//!
//! The run writes the tuned trunk as `trunk.safetensors` under the original checkpoint's names
//! (the file `fit --weights` reads; the frozen tensors are the original's, byte for byte), so the
//! next step is `graft fit --model M --weights RUN/trunk.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{Module, ParamGroup};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use super::pairs::{contrastive_loss, normalize, nt_xent, PROJECTION};
use crate::data::augment::{sample_rng, Augment};
use crate::data::folder::Skipped;
use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::train::config::FitConfig;
use crate::train::engine::{self, Engine, EpochEnd, Iteration, Phase, Task};
use crate::train::fit::{activations, count_trainable, index_split, open_store, Cache, CacheStats, View};
use crate::train::guard;
use crate::train::model::{frozen_prefix, Grafted, Head, HeadPool, HeadSpec};
use crate::zoo::layers::FreezeSpec;
use crate::zoo::table::Layout;
use crate::zoo::{ModelSpec, Pretrained};
use crate::{GraftError, Result};

/// The file a trunk-pretraining run writes the tuned trunk to (original checkpoint names).
pub const TRUNK_FILE: &str = "trunk.safetensors";

/// Settings of `graft pretrain --model M`, saved in its `config.toml` and `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkPretrainConfig {
    /// `siamese` or `contrastive`.
    pub method: String,
    /// The zoo model (`efficientnet-lite0`, `resnet18`, …).
    pub model: String,
    /// Its weights file; `None`: the pulled pretrained weights.
    pub weights: Option<PathBuf>,
    pub data: PathBuf,
    /// Siamese: the CSV of `a,b,same` rows (paths relative to `data`).
    pub pairs: Option<PathBuf>,
    /// What stays frozen, as `fit --freeze` (the default: all but the last numbered block).
    pub freeze: FreezeSpec,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Siamese: how far apart (unit-length codes) different pairs are pushed.
    pub margin: f64,
    /// Contrastive: the NT-Xent temperature.
    pub temperature: f64,
    /// Contrastive: the projection head's hidden width (0: one linear layer to 128).
    pub projection_hidden: usize,
    /// Image-level augmentation of the stored views (as `fit --augment`).
    pub augment: Augment,
    /// Views stored per image at the cut (view 0 the plain image).
    pub cache_views: usize,
}

impl TrunkPretrainConfig {
    /// Reads a run's `config.toml` (size-checked before it is read).
    pub fn from_toml(path: &Path) -> Result<Self> {
        crate::fsutil::read_toml(path)
    }

    /// Every setting in range, naming the setting that is not.
    pub fn validate(&self) -> Result<()> {
        let contrastive = match self.method.as_str() {
            "contrastive" => true,
            "siamese" => false,
            other => return Err(GraftError::setting("method", other, "a pretrained trunk's top trains by siamese or contrastive")),
        };
        match (contrastive, &self.pairs) {
            (false, None) => return Err(GraftError::setting("pairs", "", "--method siamese learns from a CSV of a,b,same rows")),
            (true, Some(p)) => return Err(GraftError::setting("pairs", &p.display().to_string(), "applies to --method siamese")),
            _ => {}
        }
        if !(self.margin > 0.0 && self.margin <= 2.0) {
            return Err(GraftError::setting("margin", &self.margin.to_string(), "unit-length codes are at most 2 apart: a margin in (0, 2]"));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(GraftError::setting("temperature", &self.temperature.to_string(), "must be a positive number"));
        }
        if self.projection_hidden > 4096 {
            return Err(GraftError::setting("projection_hidden", &self.projection_hidden.to_string(), "a hidden width of at most 4096"));
        }
        match self.freeze {
            FreezeSpec::All => return Err(GraftError::setting("freeze", "all", "nothing of the trunk would train: freeze its lower part (e.g. all but the last block)")),
            FreezeSpec::None => return Err(GraftError::setting("freeze", "none", "the frozen part's activations are stored once: freeze at least the stem")),
            _ => {}
        }
        if contrastive && (self.augment.is_identity() || self.cache_views < 2) {
            let (setting, value) = if self.augment.is_identity() { ("augment", "none".to_string()) } else { ("cache_views", self.cache_views.to_string()) };
            return Err(GraftError::setting(setting, &value, "SimCLR pairs two different stored views of each image: give an --augment and --cache-views of at least 2"));
        }
        if self.cache_views > 64 {
            return Err(GraftError::setting("cache_views", &self.cache_views.to_string(), "at most 64 views per image"));
        }
        super::autoencoder::check_training(self.lr, self.epochs, self.batch_size)
    }

    /// The `fit` settings its activation cache reads (model, weights, augmentation, views, seed).
    fn fit_config(&self) -> FitConfig {
        let mut fit = FitConfig::new(&self.model, self.data.clone());
        fit.weights = self.weights.clone();
        fit.augment = self.augment.clone();
        fit.cache_views = self.cache_views;
        fit.seed = self.seed;
        // Images per trunk pass while the cache fills (fit's default batch).
        fit.batch_size = 32;
        fit
    }
}

/// What a trunk-pretraining run's `model.json` holds (kind `trunk-pretrain`): written as the
/// run starts (no `trunk_weights` yet) and again when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkPretrainSummary {
    pub run: PathBuf,
    pub config: TrunkPretrainConfig,
    /// Epochs completed.
    pub epochs: usize,
    /// Readable images (for siamese, those of the pairs).
    pub images: usize,
    /// Siamese: pairs whose two images are readable.
    pub pairs: Option<usize>,
    /// Where the stored activations are taken (the first trained stage's input).
    pub cut: String,
    pub trainable_params: usize,
    pub first_epoch_loss: Option<f64>,
    pub last_epoch_loss: Option<f64>,
    pub seconds: f64,
    /// sha256 of the weights the trunk started from.
    pub weights_sha256: String,
    /// The tuned trunk under the original names (`fit --weights` reads it); `None` until the run ends.
    pub trunk_weights: Option<PathBuf>,
    pub skipped: Vec<Skipped>,
}

/// Whether `run` is a trunk-pretraining run (its `model.json` says so).
pub fn is_trunk_run(run: &Path) -> bool {
    matches!(crate::manifest::RunManifest::load(run), Ok(crate::manifest::RunManifest::TrunkPretrain(_)))
}

/// Siamese or contrastive pretraining of `config.model`'s unfrozen top on the images of
/// `config.data` (labels never read) into `run`. With `resume`, the run continues after its last
/// completed epoch and ends as an uninterrupted run would.
pub fn pretrain_trunk(config: &TrunkPretrainConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<TrunkPretrainSummary> {
    engine::removing_a_failed_start(run, resume, || pretrain_trunk_run(config, run, resume, home, reporter, device))
}

fn pretrain_trunk_run(config: &TrunkPretrainConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<TrunkPretrainSummary> {
    config.validate()?;
    let spec = ModelSpec::find(&config.model)?;
    if config.weights.is_none() && spec.source.is_none() {
        return Err(GraftError::NeedsWeights { model: spec.id.into() });
    }
    plain_layout(spec)?;
    if !resume && crate::fsutil::holds_run(run) {
        return Err(GraftError::setting("out", &run.display().to_string(), "already holds a run"));
    }
    // The images (for siamese, those of the pairs).
    let (samples, pairs) = super::pairs::pretraining_images(config.pairs.as_deref(), &config.data)?;
    engine::prepare_run_dir(run, resume)?;
    device.seed(config.seed);
    let mut skipped = Vec::new();
    let split = index_split(&samples, "reading images", reporter, &mut skipped);
    for s in &skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    let pair_rows = pairs.map(|pairs| super::pairs::pair_rows(&pairs, split.paths.iter().map(PathBuf::as_path)));
    let images = split.len();
    if images == 0 || pair_rows.as_ref().is_some_and(|p| p.is_empty()) {
        return Err(GraftError::Data { path: config.pairs.clone().unwrap_or(config.data.clone()), reason: "no readable images".into() });
    }

    // --- model: the pretrained trunk, its lower part frozen, and the projection head --------
    let pretrained = Pretrained::load(spec, config.weights.as_deref(), home, reporter, device)?;
    let spec = pretrained.spec; // the file's flavour of the architecture
    plain_layout(spec)?;
    let trunk_config = spec.config();
    let (original, weights_sha256, preprocess) = (pretrained.weights_path.clone(), pretrained.weights_sha256.clone(), pretrained.preprocess());
    let width = Grafted::head_input_width(HeadPool::Avg, trunk_config.final_map());
    let head_spec = if config.projection_hidden > 0 { HeadSpec::Mlp(vec![config.projection_hidden]) } else { HeadSpec::Linear };
    let head = Head::init(&head_spec, width, PROJECTION, 0.0, device);
    let model = engine::stable_ids(Grafted::new(pretrained.net, head, HeadPool::Avg));
    let rows: Vec<_> = spec.layer_rows().into_iter().filter(|r| !r.is_head).collect();
    let frozen = config.freeze.frozen_params(&rows)?;
    let cut = frozen_prefix(&rows, &frozen, &trunk_config);
    if cut == 0 {
        return Err(GraftError::setting("freeze", &config.freeze.to_string(), "freezes none of the trunk's first stage: the frozen part's activations are stored once, so freeze at least the stem"));
    }
    let cut_name = trunk_config.cut_name(cut, HeadPool::Avg);
    let started = TrunkPretrainSummary {
        run: run.into(),
        config: config.clone(),
        epochs: 0,
        images,
        pairs: pair_rows.as_ref().map(Vec::len),
        cut: cut_name.clone(),
        trainable_params: 0,
        first_epoch_loss: None,
        last_epoch_loss: None,
        seconds: 0.0,
        weights_sha256: weights_sha256.clone(),
        trunk_weights: None,
        skipped: skipped.clone(),
    };
    if !resume {
        // config.toml first: a run counts as started once model.json exists.
        write_atomic(&run.join("config.toml"), toml::to_string(config).expect("config serializes").as_bytes())?;
        started.save(run, device)?;
    }

    // --- the frozen part's activations, once (fit's cache) -----------------------------------
    let fit = config.fit_config();
    let augmenting = !config.augment.is_identity();
    let views = if augmenting { config.cache_views.max(1) } else { 1 };
    let augment = if views > 1 { config.augment.to_string() } else { "none".into() };
    let mut store = open_store(home, spec.id, Some(&weights_sha256), &cut_name, &preprocess, &augment, &fit, reporter)?;
    let mut stats = CacheStats::default();
    let (filled, shape) = activations(&model.valid(), &split, &preprocess, cut, View::of(views, &config.augment), &fit, store.as_mut(), device, reporter, "caching frozen-trunk activations", &mut stats)?;
    let store = store.map(Arc::new);
    let cache = Cache::new(filled, store.as_ref(), images * views);
    reporter.message(&format!("activations at {cut_name}: {} from the cache, {} computed ({views} per image)", stats.hits, stats.misses));

    // --- training -----------------------------------------------------------------------------
    let mut engine = Engine::open(run, resume, config.seed, reporter, device)?;
    let phase = Phase::keep_last("", config.epochs, "pretrained.safetensors");
    // A finished run resumed gets its trained network back (not a fresh one to save).
    let model = engine.resume_phase(model, &phase, "the pretrained trunk")?;
    let mut model = model.freeze(&spec.layer_rows().into_iter().filter(|r| !r.is_head).collect::<Vec<_>>(), &frozen, &trunk_config)?;
    // BatchNorm in the trained blocks stays in inference mode (its scale and shift train), as
    // `graft fit` keeps it.
    let flags = ParamGroup::from_regex(r"^trunk\..*\.training$").map_err(|e| GraftError::setting("freeze", "", format!("{e:?}")))?;
    model = model.freeze_group(flags);
    if config.pairs.is_some() {
        // Siamese compares pooled codes: the projection head is never used.
        model.head = model.head.no_grad();
    }
    let model = model.train();
    let trainable_params = count_trainable(&model);
    let n = pair_rows.as_ref().map(Vec::len).unwrap_or(images);
    let mut task = TrunkTask { config, cache: &cache, views, pairs: pair_rows, n, cut, shape, train_device: device.clone().autodiff(), order: Vec::new(), sum: 0.0 };
    let trained = engine.run_phase(&mut task, model, phase)?.valid();

    let records: Vec<serde_json::Value> = engine::read_records(run)?;
    let losses: Vec<f64> = records.iter().filter_map(|r| r["train_loss"].as_f64()).collect();
    let trunk_file = run.join(TRUNK_FILE);
    write_trunk_weights(&trained, spec, &original, &trunk_file)?;
    let summary = TrunkPretrainSummary {
        epochs: engine.state.epoch,
        trainable_params,
        first_epoch_loss: losses.first().copied(),
        last_epoch_loss: losses.last().copied(),
        seconds: engine.state.train_seconds,
        trunk_weights: Some(trunk_file),
        ..started
    };
    summary.save(run, device)?;
    Ok(summary)
}

/// Writes `model`'s trunk to `out` under the names of the checkpoint it was loaded from
/// (`original`): the original file's tensors (its ImageNet classifier included), each trunk
/// tensor replaced by the model's, in the file's layout. `fit --weights out` reads it back.
/// trunk.safetensors is written under the weights file's names in PyTorch's layout: refuses a
/// model whose file stores a trunk tensor otherwise (Keras's kernels, Caffe's BGR convolution).
fn plain_layout(spec: &ModelSpec) -> Result<()> {
    let table = spec.config().table();
    match table.leaves.iter().filter(|l| !l.is_head).flat_map(|l| table.tensors(l)).find(|t| !matches!(t.layout, Layout::Same | Layout::Transposed)) {
        Some(t) => Err(GraftError::setting("model", spec.id, format!("its checkpoint stores `{}` in another layout than PyTorch's ({:?}); trunk pretraining writes PyTorch-layout checkpoints only", t.file, t.layout))),
        None => Ok(()),
    }
}

pub fn write_trunk_weights(model: &Grafted, spec: &ModelSpec, original: &Path, out: &Path) -> Result<()> {
    let mut dict = crate::zoo::read_weights(original)?;
    dict.metadata.clear();
    let state = crate::train::checkpoint::export(model);
    let table = spec.config().table();
    for t in table.leaves.iter().filter(|l| !l.is_head).flat_map(|l| table.tensors(l)) {
        let key = format!("trunk.{}", t.burn);
        let mut tensor = state.tensors.get(&key).cloned().ok_or_else(|| GraftError::Data { path: out.into(), reason: format!("the model has no tensor `{key}`") })?;
        if let (Layout::Transposed, &[d_in, d_out]) = (t.layout, tensor.shape.as_slice()) {
            let mut data = vec![0f32; tensor.data.len()];
            for i in 0..d_in {
                for o in 0..d_out {
                    data[o * d_in + i] = tensor.data[i * d_out + o];
                }
            }
            (tensor.data, tensor.shape) = (data, vec![d_out, d_in]);
        }
        dict.tensors.insert(t.file.clone(), tensor);
    }
    dict.metadata = BTreeMap::from([("graft.model".to_string(), spec.id.to_string())]);
    let tmp = out.with_extension("safetensors.tmp");
    graft_weights::save_safetensors(&tmp, &dict)?;
    std::fs::rename(&tmp, out).map_err(|e| GraftError::io(out, e))
}

/// The trained top as the engine's task: per step, stored views through the top and pooling.
struct TrunkTask<'a> {
    config: &'a TrunkPretrainConfig,
    cache: &'a Cache,
    /// Stored views per image.
    views: usize,
    /// (image a, image b, same) per pair; `None`: SimCLR on every image.
    pairs: Option<Vec<(usize, usize, bool)>>,
    n: usize,
    cut: usize,
    /// Per-sample shape of the stored activations.
    shape: [usize; 3],
    train_device: Device,
    order: Vec<usize>,
    sum: f64,
}

impl TrunkTask<'_> {
    /// Unit-length codes of stored rows `rows`: pooled (siamese) or projected (contrastive).
    fn embed(&self, model: &Grafted, rows: &[usize], project: bool) -> Result<Tensor<2>> {
        let features = model.features_from(self.cache.tensor(rows, &self.train_device)?, self.cut, self.shape); // [n, width]
        Ok(normalize(if project { model.head.forward(features) } else { features })) // [n, 128 or width]
    }

    /// The stored row of `image`'s view for this epoch (`salt` draws an independent one).
    fn view_row(&self, image: usize, epoch: usize, salt: u64) -> usize {
        let view = if self.views > 1 { (sample_rng(self.config.seed ^ salt, epoch as u64, image as u64).next_u64() % self.views as u64) as usize } else { 0 };
        image * self.views + view
    }
}

impl Task for TrunkTask<'_> {
    type Model = Grafted;

    fn iterations(&self) -> usize {
        self.n.div_ceil(self.config.batch_size.max(1))
    }

    fn begin_epoch(&mut self, _model: &Grafted, epoch: usize) -> Result<()> {
        self.order = engine::epoch_order(self.n, self.config.seed, epoch);
        self.sum = 0.0;
        Ok(())
    }

    fn lr(&self, _it: &Iteration) -> f64 {
        self.config.lr
    }

    fn step(&mut self, model: &Grafted, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let bs = self.config.batch_size;
        let batch = &self.order[it.index * bs..((it.index + 1) * bs).min(self.order.len())];
        let loss = match &self.pairs {
            Some(pairs) => {
                let a: Vec<usize> = batch.iter().map(|&p| self.view_row(pairs[p].0, it.epoch, 0xA)).collect();
                let b: Vec<usize> = batch.iter().map(|&p| self.view_row(pairs[p].1, it.epoch, 0xB)).collect();
                let same: Vec<bool> = batch.iter().map(|&p| pairs[p].2).collect();
                // Both sides in one pass through the top (BatchNorm uses its running statistics).
                let z = self.embed(model, &[a, b].concat(), false)?; // [2B, width]
                let k = batch.len();
                contrastive_loss(z.clone().narrow(0, 0, k), z.narrow(0, k, k), &same, self.config.margin)
            }
            None => {
                // Two different stored views of each image.
                let (mut a, mut b) = (Vec::with_capacity(batch.len()), Vec::with_capacity(batch.len()));
                for &i in batch {
                    let mut rng = sample_rng(self.config.seed, it.epoch as u64, i as u64);
                    let first = rng.random_range(0..self.views);
                    let second = (first + 1 + rng.random_range(0..self.views - 1)) % self.views;
                    a.push(i * self.views + first);
                    b.push(i * self.views + second);
                }
                let z = self.embed(model, &[a, b].concat(), true)?; // [2B, 128]
                let k = batch.len();
                nt_xent(z.clone().narrow(0, 0, k), z.narrow(0, k, k), self.config.temperature)
            }
        };
        let value = loss.clone().into_scalar::<f32>() as f64;
        guard::check_loss(&format!("{} loss", self.config.method), value, it.epoch + 1, lr)?;
        self.sum += value * batch.len() as f64;
        Ok(vec![(GradientsParams::from_grads(loss.backward(), model), 1.0)])
    }

    fn end_epoch(&mut self, _model: &Grafted, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let loss = self.sum / self.n.max(1) as f64;
        let record = serde_json::json!({"epoch": epoch, "phase": self.config.method, "lr": lr, "train_loss": loss, "seconds": seconds});
        Ok(EpochEnd { validation: None, record, scalars: vec![(format!("loss/{}", self.config.method), loss), ("lr".into(), lr)] })
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, _total: usize) {
        reporter.message(&format!("{} epoch {}/{}: loss {:.5}", self.config.method, record["epoch"].as_u64().unwrap_or(0), self.config.epochs, record["train_loss"].as_f64().unwrap_or(f64::NAN)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrunkPretrainConfig {
        TrunkPretrainConfig {
            method: "contrastive".into(),
            model: "efficientnet-lite0".into(),
            weights: None,
            data: "d".into(),
            pairs: None,
            freeze: FreezeSpec::FirstBlocks(15),
            epochs: 1,
            batch_size: 8,
            lr: 1e-4,
            seed: 0,
            margin: 1.0,
            temperature: 0.2,
            projection_hidden: 0,
            augment: "flip,crop:0.5-1".parse().unwrap(),
            cache_views: 4,
        }
    }

    #[test]
    fn settings_that_cannot_train_a_top_are_refused_by_name() {
        assert!(config().validate().is_ok());
        let refused = |c: TrunkPretrainConfig, setting: &str| {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(setting), "{e}");
        };
        refused(TrunkPretrainConfig { freeze: FreezeSpec::All, ..config() }, "freeze");
        refused(TrunkPretrainConfig { freeze: FreezeSpec::None, ..config() }, "freeze");
        refused(TrunkPretrainConfig { cache_views: 1, ..config() }, "cache_views");
        refused(TrunkPretrainConfig { augment: Augment::default(), ..config() }, "augment");
        refused(TrunkPretrainConfig { method: "siamese".into(), ..config() }, "pairs");
        refused(TrunkPretrainConfig { pairs: Some("p.csv".into()), ..config() }, "pairs");
        refused(TrunkPretrainConfig { method: "rbm".into(), ..config() }, "method");
        // Siamese needs no views: one plain view per image is enough.
        let siamese = TrunkPretrainConfig { method: "siamese".into(), pairs: Some("p.csv".into()), augment: Augment::default(), cache_views: 1, ..config() };
        assert!(siamese.validate().is_ok());
    }
}
