//! Greedy layer-wise unsupervised pretraining (Bengio et al. 2007; Vincent et al. 2008): when no
//! similar pretrained network exists but unlabelled images do, train a small network one layer
//! at a time, each as an autoencoder that reconstructs the codes of the (frozen) layers below,
//! then add a classifier and fine-tune everything with the few labels there are.
//!
//! The network is an MLP on 28×28 grey images (784 inputs, pixels in [0, 1]) with sigmoid
//! hidden layers: `mlp:500,250` is 784 → 500 → 250. A run directory holds `model.json` (kind
//! `pretrain`; `pretrain.json` before format 2) and the encoder weights (`encoder.safetensors`);
//! `graft fit --init RUN` builds the same encoder from it, adds a linear classifier and
//! fine-tunes (`model.json` of kind `mlp`, `best.safetensors`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::adapt::data::InputSpec;
use crate::adapt::losses::gather_rows;
use crate::data::folder::{decode_with, stratified_split, ImageFolder, Sample, Skipped};
use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::train::checkpoint;
use crate::train::guard;
use crate::train::loss::{argmax, cross_entropy};
use crate::{GraftError, Result};

/// Side of the square grey input.
pub const SIDE: usize = 28;
/// Width of one input row.
pub const INPUT: usize = SIDE * SIDE;

/// `mlp:W1,W2,…`: the hidden widths of an MLP on 784 inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpArch {
    pub hidden: Vec<usize>,
}

impl FromStr for MlpArch {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| GraftError::spec("--arch", s, why.to_string());
        let widths = s.strip_prefix("mlp:").ok_or_else(|| bad("expected mlp:W1,W2,… (hidden widths of an MLP on 28×28 grey images), e.g. mlp:500,250"))?;
        let hidden = widths
            .split(',')
            .map(|w| w.trim().parse::<usize>().ok().filter(|w| *w > 0).ok_or_else(|| bad("each width is a positive whole number")))
            .collect::<Result<Vec<_>>>()?;
        crate::train::model::check_mlp_widths("--arch", s, &hidden)?;
        Ok(MlpArch { hidden })
    }
}

impl fmt::Display for MlpArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<String> = self.hidden.iter().map(|w| w.to_string()).collect();
        write!(f, "mlp:{}", widths.join(","))
    }
}

impl Serialize for MlpArch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MlpArch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl MlpArch {
    /// (input, output) width of each layer.
    fn shapes(&self) -> Vec<(usize, usize)> {
        let mut input = INPUT;
        self.hidden
            .iter()
            .map(|&w| {
                let shape = (input, w);
                input = w;
                shape
            })
            .collect()
    }
}

/// The stacked encoder: sigmoid(linear) per layer.
#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<Linear>,
}

impl Encoder {
    pub fn init(arch: &MlpArch, device: &Device) -> Self {
        Self { layers: arch.shapes().into_iter().map(|(i, o)| LinearConfig::new(i, o).init(device)).collect() }
    }

    /// [n, 784] → [n, last width].
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for layer in &self.layers {
            x = sigmoid(layer.forward(x)); // [n, width of this layer]
        }
        x
    }
}

/// One layer being pretrained: encode to a code, decode back to the input.
#[derive(Module, Debug)]
struct AutoencoderLayer {
    encode: Linear,
    decode: Linear,
}

impl AutoencoderLayer {
    /// [n, d_in] → (code [n, d_out], reconstruction [n, d_in]).
    fn forward(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let code = sigmoid(self.encode.forward(x));
        let reconstruction = self.decode.forward(code.clone());
        (code, reconstruction)
    }
}

/// Encoder + linear classifier.
#[derive(Module, Debug)]
pub struct MlpClassifier {
    pub encoder: Encoder,
    pub head: Linear,
}

impl MlpClassifier {
    pub fn init(arch: &MlpArch, classes: usize, device: &Device) -> Self {
        let width = arch.hidden.last().copied().unwrap_or(INPUT);
        Self { encoder: Encoder::init(arch, device), head: LinearConfig::new(width, classes).init(device) }
    }

    /// [n, 784] → logits [n, classes].
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head.forward(self.encoder.forward(x))
    }
}

/// Grey 28×28 rows in [0, 1] of the readable samples, with their indices.
pub fn load_rows(samples: &[Sample]) -> (Vec<f32>, Vec<usize>, Vec<Skipped>) {
    let spec = InputSpec::Grey { side: SIDE as u32, mean: 0.0, std: 1.0 };
    let (rows, skipped) = decode_with(samples, &|_| {}, |img| spec.rgb_row(&img));
    let mut values = Vec::with_capacity(samples.len() * INPUT);
    let mut kept = Vec::new();
    for (i, r) in rows.into_iter().enumerate() {
        if let Some(r) = r {
            values.extend(r);
            kept.push(i);
        }
    }
    (values, kept, skipped)
}

/// Settings of `graft pretrain --method autoencoder`, saved in its `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub method: String,
    pub arch: MlpArch,
    pub data: PathBuf,
    /// Epochs per layer.
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Denoising: the fraction of each input's values set to zero (0 = plain autoencoder).
    pub noise: f64,
    pub seed: u64,
}

impl PretrainConfig {
    /// Every setting in range (the numbers finite), naming the setting that is not.
    pub fn validate(&self) -> Result<()> {
        if self.method != "autoencoder" {
            return Err(GraftError::spec("--method", &self.method, "expected autoencoder"));
        }
        if !(0.0..1.0).contains(&self.noise) {
            return Err(GraftError::spec("--noise", &self.noise.to_string(), "the masked fraction lies in [0, 1)"));
        }
        check_training(self.lr, self.epochs, self.batch_size)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerReport {
    pub layer: usize,
    pub input: usize,
    pub output: usize,
    /// Mean squared reconstruction error over the first and the last epoch.
    pub first_epoch_loss: f64,
    pub last_epoch_loss: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSummary {
    pub run: PathBuf,
    pub config: PretrainConfig,
    pub images: usize,
    pub layers: Vec<LayerReport>,
    pub seconds: f64,
    pub skipped: Vec<Skipped>,
}

fn batches(n: usize, batch: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
}

/// Greedy layer-wise autoencoder pretraining of `config.arch` on the images of `config.data`
/// (their labels are never read); the encoder is saved in `run`.
pub fn pretrain(config: &PretrainConfig, run: &Path, reporter: &dyn Reporter, device: &Device) -> Result<PretrainSummary> {
    config.validate()?;
    if crate::manifest::RunManifest::file(run).is_some() {
        return Err(GraftError::spec("--out", &run.display().to_string(), "already holds a run"));
    }
    let started = Instant::now();
    device.seed(config.seed);
    let folder = ImageFolder::scan(&config.data)?;
    let (mut codes, kept, skipped) = load_rows(&folder.samples);
    let n = kept.len();
    if n == 0 {
        return Err(GraftError::Data { path: config.data.clone(), reason: "no readable images".into() });
    }
    let train_device = device.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut encoder = Encoder::init(&config.arch, device);
    let mut reports = Vec::new();
    for (l, (d_in, d_out)) in config.arch.shapes().into_iter().enumerate() {
        let mut ae = AutoencoderLayer { encode: LinearConfig::new(d_in, d_out).init(device), decode: LinearConfig::new(d_out, d_in).init(device) }.train();
        let mut optim = AdamConfig::new().init();
        let mut losses = Vec::new();
        for epoch in 0..config.epochs {
            reporter.start(&format!("layer {}/{} ({d_in} → {d_out}), epoch {}/{}", l + 1, config.arch.hidden.len(), epoch + 1, config.epochs), None);
            let mut sum = 0f64;
            for idx in batches(n, config.batch_size, &mut rng) {
                guard::check_stop(run, 0)?;
                let clean = gather_rows(&codes, d_in, &idx, &train_device); // [b, d_in]
                let input = if config.noise > 0.0 {
                    let mask: Vec<f32> = (0..idx.len() * d_in).map(|_| if rng.random::<f64>() < config.noise { 0.0 } else { 1.0 }).collect();
                    clean.clone() * Tensor::<2>::from_data(TensorData::new(mask, [idx.len(), d_in]), &train_device)
                } else {
                    clean.clone()
                };
                let (_, reconstruction) = ae.forward(input);
                let loss = (reconstruction - clean).powi_scalar(2).mean(); // mean squared error
                let value: f32 = loss.clone().into_scalar();
                guard::check_loss(&format!("layer {} reconstruction loss", l + 1), value as f64, epoch + 1, config.lr)?;
                sum += value as f64 * idx.len() as f64;
                let grads = GradientsParams::from_grads(loss.backward(), &ae);
                ae = optim.step(config.lr, ae, grads);
            }
            guard::check_weights(&ae, epoch + 1, config.lr)?;
            losses.push(sum / n as f64);
            reporter.finish();
            reporter.message(&format!("layer {}/{}, epoch {}/{}: reconstruction mse {:.5}", l + 1, config.arch.hidden.len(), epoch + 1, config.epochs, sum / n as f64));
        }
        let trained = ae.valid();
        // The next layer learns on this layer's codes, computed once with the layer frozen.
        let mut next = Vec::with_capacity(n * d_out);
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(1024) {
            let (code, _) = trained.forward(gather_rows(&codes, d_in, chunk, device));
            next.extend(code.into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: run.into(), reason: format!("{e:?}") })?);
        }
        codes = next;
        encoder.layers[l] = trained.encode;
        reports.push(LayerReport {
            layer: l,
            input: d_in,
            output: d_out,
            first_epoch_loss: losses.first().copied().unwrap_or(f64::NAN),
            last_epoch_loss: losses.last().copied().unwrap_or(f64::NAN),
        });
    }
    std::fs::create_dir_all(run).map_err(|e| GraftError::io(run, e))?;
    crate::fsutil::check_run_dir(run)?;
    checkpoint::save(&encoder, &run.join("encoder.safetensors"), BTreeMap::from([("graft.arch".to_string(), config.arch.to_string())]))?;
    let summary = PretrainSummary { run: run.into(), config: config.clone(), images: n, layers: reports, seconds: started.elapsed().as_secs_f64(), skipped };
    crate::manifest::RunManifest::Pretrain(summary.clone()).save(run)?;
    Ok(summary)
}

/// Settings of `graft fit --init RUN` / `graft fit --arch mlp:…`, saved in its `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpFitConfig {
    /// A `graft pretrain` run to start from; `None`: random initialisation.
    pub init: Option<PathBuf>,
    pub arch: MlpArch,
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    /// Used without `val`; 0 trains on everything and keeps the last epoch.
    pub val_split: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

impl MlpFitConfig {
    /// Every setting in range (the numbers finite), naming the setting that is not.
    pub fn validate(&self) -> Result<()> {
        check_training(self.lr, self.epochs, self.batch_size)?;
        if self.val.is_none() && !(0.0..1.0).contains(&self.val_split) {
            return Err(GraftError::spec("val_split", &self.val_split.to_string(), "must be in [0, 1); 0 trains on everything"));
        }
        Ok(())
    }
}

/// The settings every training config here shares: a positive finite learning rate, at least
/// one epoch and a batch of at least one, each refusal naming its setting.
fn check_training(lr: f64, epochs: usize, batch_size: usize) -> Result<()> {
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(GraftError::spec("lr", &lr.to_string(), "must be a positive number"));
    }
    if epochs == 0 {
        return Err(GraftError::spec("epochs", "0", "must be at least 1"));
    }
    if batch_size == 0 {
        return Err(GraftError::spec("batch_size", "0", "must be at least 1"));
    }
    Ok(())
}

/// What a fine-tuned MLP run's `model.json` holds (`"kind": "mlp"`; `mlp.json` before format 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpRun {
    pub config: MlpFitConfig,
    pub classes: Vec<String>,
    pub best_epoch: usize,
    pub best_val_accuracy: Option<f64>,
    pub train_accuracy: f64,
    pub n_train: usize,
    pub n_val: usize,
    pub seconds: f64,
}

/// The architecture a pretraining run saved.
pub fn arch_of(init: &Path) -> Result<MlpArch> {
    match crate::manifest::RunManifest::load(init)? {
        crate::manifest::RunManifest::Pretrain(summary) => Ok(summary.config.arch),
        other => Err(crate::manifest::wrong_kind(init, &other, "a pretraining run from `graft pretrain` (what --init takes)")),
    }
}

fn accuracy(net: &MlpClassifier, rows: &[f32], labels: &[usize], device: &Device) -> (f64, Vec<usize>) {
    let all: Vec<usize> = (0..labels.len()).collect();
    let mut predicted = Vec::with_capacity(labels.len());
    for chunk in all.chunks(1024) {
        predicted.extend(argmax(net.forward(gather_rows(rows, INPUT, chunk, device))));
    }
    let correct = predicted.iter().zip(labels).filter(|(p, t)| p == t).count();
    (correct as f64 / labels.len().max(1) as f64, predicted)
}

/// Fine-tunes an MLP (from a pretraining run, or random) with labels; the run is in `run`.
pub fn fit_mlp(config: &MlpFitConfig, run: &Path, reporter: &dyn Reporter, device: &Device) -> Result<MlpRun> {
    if crate::manifest::RunManifest::file(run).is_some() {
        return Err(GraftError::spec("--out", &run.display().to_string(), "already holds a run"));
    }
    config.validate()?;
    let started = Instant::now();
    device.seed(config.seed);
    let folder = ImageFolder::scan(&config.data)?;
    let (train, val): (Vec<Sample>, Vec<Sample>) = match (&config.val, config.val_split) {
        (Some(dir), _) => (folder.samples.clone(), ImageFolder::scan_with_classes(dir, &folder.classes)?.samples),
        (None, f) if f > 0.0 => {
            let (t, v) = stratified_split(&folder.samples, f, config.seed)?;
            (t.iter().map(|&i| folder.samples[i].clone()).collect(), v.iter().map(|&i| folder.samples[i].clone()).collect())
        }
        _ => (folder.samples.clone(), Vec::new()),
    };
    let (x_train, kept, _) = load_rows(&train);
    let y_train: Vec<usize> = kept.iter().map(|&i| train[i].label).collect();
    let (x_val, kept_val, _) = load_rows(&val);
    let y_val: Vec<usize> = kept_val.iter().map(|&i| val[i].label).collect();
    if y_train.is_empty() {
        return Err(GraftError::Data { path: config.data.clone(), reason: "no readable training images".into() });
    }
    let classes = folder.classes.len();
    let mut net = MlpClassifier::init(&config.arch, classes, device);
    if let Some(init) = &config.init {
        let saved = arch_of(init)?;
        if saved != config.arch {
            return Err(GraftError::spec("--arch", &config.arch.to_string(), format!("{} was pretrained as {saved}", init.display())));
        }
        net.encoder = checkpoint::load(Encoder::init(&saved, device), &init.join("encoder.safetensors"))?;
    }
    std::fs::create_dir_all(run).map_err(|e| GraftError::io(run, e))?;
    crate::fsutil::check_run_dir(run)?;
    let train_device = device.clone().autodiff();
    let mut model = net.train();
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0xF17);
    let (mut best_epoch, mut best_val): (usize, Option<f64>) = (0, None);
    let mut metrics = String::new();
    for epoch in 1..=config.epochs {
        let mut loss_sum = 0f64;
        for idx in batches(y_train.len(), config.batch_size, &mut rng) {
            guard::check_stop(run, epoch - 1)?;
            let x = gather_rows(&x_train, INPUT, &idx, &train_device); // [b, 784]
            let targets: Vec<usize> = idx.iter().map(|&i| y_train[i]).collect();
            let loss = cross_entropy(model.forward(x), &targets, 0.0, None, &train_device);
            let value = loss.clone().into_scalar::<f32>() as f64;
            guard::check_loss("training loss", value, epoch, config.lr)?;
            loss_sum += value * idx.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.lr, model, grads);
        }
        let current = model.valid();
        guard::check_weights(&current, epoch, config.lr)?;
        let val_acc = (!y_val.is_empty()).then(|| accuracy(&current, &x_val, &y_val, device).0);
        let line = serde_json::json!({"epoch": epoch, "train_loss": loss_sum / y_train.len() as f64, "val_accuracy": val_acc});
        metrics.push_str(&format!("{line}\n"));
        reporter.message(&format!("epoch {epoch}/{} - loss: {:.4}{}", config.epochs, loss_sum / y_train.len() as f64, val_acc.map(|a| format!(" - val_accuracy: {a:.4}")).unwrap_or_default()));
        // Keep the best validation epoch (the last one without validation data).
        if val_acc.is_none() || val_acc > best_val {
            best_epoch = epoch;
            best_val = val_acc;
            checkpoint::save(&current, &run.join("best.safetensors"), BTreeMap::from([("graft.epoch".to_string(), epoch.to_string())]))?;
        }
    }
    write_atomic(&run.join("metrics.jsonl"), metrics.as_bytes())?;
    let best = checkpoint::load(MlpClassifier::init(&config.arch, classes, device), &run.join("best.safetensors"))?;
    let info = MlpRun {
        config: config.clone(),
        classes: folder.classes.clone(),
        best_epoch,
        best_val_accuracy: best_val,
        train_accuracy: accuracy(&best, &x_train, &y_train, device).0,
        n_train: y_train.len(),
        n_val: y_val.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    crate::manifest::RunManifest::Mlp(info.clone()).save(run)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_parses_and_prints() {
        let a: MlpArch = "mlp:500,250".parse().unwrap();
        assert_eq!(a.hidden, vec![500, 250]);
        assert_eq!(a.to_string(), "mlp:500,250");
        assert_eq!(a.shapes(), vec![(784, 500), (500, 250)]);
        assert!("mlp:".parse::<MlpArch>().is_err());
        assert!("conv:3".parse::<MlpArch>().is_err());
        assert!("mlp:5,0".parse::<MlpArch>().is_err());
    }
}
