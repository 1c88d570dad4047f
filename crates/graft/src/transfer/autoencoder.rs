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
use crate::train::engine::{self, Engine, EpochEnd, Iteration, Keep, Phase, Task, Validation};
use crate::train::guard;
use crate::train::loss::{argmax, cross_entropy};
use crate::train::run::Evaluation;
use super::pairs::PairNet;
use super::rbm::{Rbm, Visible};
use super::study::{CnnEncoder, SmallCnn, CNN_CODE};
use crate::{GraftError, Result};

/// Side of the square grey input.
pub const SIDE: usize = 28;
/// Width of one input row.
pub const INPUT: usize = SIDE * SIDE;

/// How an image becomes an MLP's input row: grey, [`SIDE`]×[`SIDE`], values 0–1.
pub const GREY_INPUT: InputSpec = InputSpec::Grey { side: SIDE as u32, mean: 0.0, std: 1.0 };

/// `mlp:W1,W2,…`: the hidden widths of an MLP on 784 inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpArch {
    pub hidden: Vec<usize>,
}

impl FromStr for MlpArch {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| GraftError::setting("arch", s, why.to_string());
        let widths = s.strip_prefix("mlp:").ok_or_else(|| bad("expected mlp:W1,W2,… (hidden widths of an MLP on 28×28 grey images), e.g. mlp:500,250"))?;
        let hidden = widths
            .split(',')
            .map(|w| w.trim().parse::<usize>().ok().filter(|w| *w > 0).ok_or_else(|| bad("each width is a positive whole number")))
            .collect::<Result<Vec<_>>>()?;
        crate::train::model::check_mlp_widths("arch", s, &hidden)?;
        Ok(MlpArch { hidden })
    }
}

impl fmt::Display for MlpArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<String> = self.hidden.iter().map(|w| w.to_string()).collect();
        write!(f, "mlp:{}", widths.join(","))
    }
}

/// The network of a pretraining and of the fit that starts from it: an MLP (`mlp:W1,W2,…`) or,
/// for the siamese and contrastive methods, the transferability study's small CNN (`small-cnn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigitArch {
    Mlp(MlpArch),
    /// conv 3×3 → 32, conv 3×3 → 64, fc 256, fc 128 (ReLU, max-pooling; [`SmallCnn`]).
    SmallCnn,
}

/// `--arch` of the small CNN.
pub const SMALL_CNN: &str = "small-cnn";

impl DigitArch {
    /// Whether `arch` names one of these networks rather than a zoo architecture.
    pub fn names(arch: &str) -> bool {
        arch.starts_with("mlp") || arch == SMALL_CNN
    }

    /// The MLP, or an error naming `arch` for what only an MLP does (`what`).
    pub fn mlp(&self, what: &str) -> Result<&MlpArch> {
        match self {
            DigitArch::Mlp(arch) => Ok(arch),
            DigitArch::SmallCnn => Err(GraftError::setting("arch", SMALL_CNN, format!("{what} needs an MLP (mlp:W1,W2,…)"))),
        }
    }

    /// Width of the encoder's code.
    pub fn code_width(&self) -> usize {
        match self {
            DigitArch::Mlp(arch) => arch.hidden.last().copied().unwrap_or(INPUT),
            DigitArch::SmallCnn => CNN_CODE,
        }
    }
}

impl FromStr for DigitArch {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            SMALL_CNN => Ok(DigitArch::SmallCnn),
            _ if s.starts_with("mlp:") => Ok(DigitArch::Mlp(s.parse()?)),
            _ => Err(GraftError::setting("arch", s, "expected mlp:W1,W2,… (hidden widths of an MLP on 28×28 grey images, e.g. mlp:500,250) or small-cnn")),
        }
    }
}

impl fmt::Display for DigitArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigitArch::Mlp(arch) => arch.fmt(f),
            DigitArch::SmallCnn => f.write_str(SMALL_CNN),
        }
    }
}

impl Serialize for DigitArch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DigitArch {
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

/// The hidden layers' nonlinearity: sigmoid for `graft pretrain`'s autoencoders, ReLU for an
/// MLP restored from a TensorFlow checkpoint (the seed's recipe uses `tf.nn.relu`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Sigmoid,
    Relu,
}

impl FromStr for Activation {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sigmoid" => Ok(Activation::Sigmoid),
            "relu" => Ok(Activation::Relu),
            _ => Err(GraftError::setting("activation", s, "expected sigmoid or relu")),
        }
    }
}

impl Activation {
    fn apply(self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Activation::Sigmoid => sigmoid(x),
            Activation::Relu => burn::tensor::activation::relu(x),
        }
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
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, Activation::Sigmoid)
    }

    /// [`forward`](Self::forward) with `act` after every layer.
    pub fn forward_with(&self, mut x: Tensor<2>, act: Activation) -> Tensor<2> {
        for layer in &self.layers {
            x = act.apply(layer.forward(x)); // [n, width of this layer]
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
        self.forward_with(x, Activation::Sigmoid)
    }

    /// [`forward`](Self::forward) with `act` after every hidden layer.
    pub fn forward_with(&self, x: Tensor<2>, act: Activation) -> Tensor<2> {
        self.head.forward(self.encoder.forward_with(x, act))
    }
}

crate::zoo::mobilenetv2::transparent_module_enum! {
    /// The encoder of a [`DigitArch`]; its weight names are the wrapped network's.
    pub enum DigitEncoder {
        Mlp(Encoder),
        Cnn(CnnEncoder),
    }
}

impl DigitEncoder {
    pub fn init(arch: &DigitArch, device: &Device) -> Self {
        match arch {
            DigitArch::Mlp(arch) => DigitEncoder::Mlp(Encoder::init(arch, device)),
            DigitArch::SmallCnn => DigitEncoder::Cnn(CnnEncoder::init(device)),
        }
    }

    /// [n, 784] → codes [n, `arch.code_width()`].
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            DigitEncoder::Mlp(encoder) => encoder.forward(x),
            DigitEncoder::Cnn(encoder) => encoder.forward(x),
        }
    }
}

crate::zoo::mobilenetv2::transparent_module_enum! {
    /// The classifier `graft fit --init` / `--arch mlp:…|small-cnn` trains: an encoder and a
    /// linear output layer.
    pub enum DigitNet {
        Mlp(MlpClassifier),
        Cnn(SmallCnn),
    }
}

impl DigitNet {
    pub fn init(arch: &DigitArch, classes: usize, device: &Device) -> Self {
        match arch {
            DigitArch::Mlp(arch) => DigitNet::Mlp(MlpClassifier::init(arch, classes, device)),
            DigitArch::SmallCnn => DigitNet::Cnn(SmallCnn::init(classes, device)),
        }
    }

    /// [n, 784] → logits [n, classes]; `act` after an MLP's hidden layers (the CNN's are ReLU).
    pub fn forward_with(&self, x: Tensor<2>, act: Activation) -> Tensor<2> {
        match self {
            DigitNet::Mlp(net) => net.forward_with(x, act),
            DigitNet::Cnn(net) => net.forward(x),
        }
    }

    /// This network with `encoder`'s layers under its output layer.
    fn with_encoder(self, encoder: DigitEncoder) -> Result<DigitNet> {
        match (self, encoder) {
            (DigitNet::Mlp(net), DigitEncoder::Mlp(encoder)) => Ok(DigitNet::Mlp(MlpClassifier { encoder, ..net })),
            (DigitNet::Cnn(net), DigitEncoder::Cnn(encoder)) => Ok(DigitNet::Cnn(net.with_encoder(encoder))),
            (net, _) => Err(GraftError::setting("arch", if matches!(net, DigitNet::Mlp(_)) { "mlp" } else { SMALL_CNN }, "the pretrained encoder is another network")),
        }
    }

    /// The MLP, or an error naming `setting` (which only an MLP takes).
    fn into_mlp(self, setting: &str) -> Result<MlpClassifier> {
        match self {
            DigitNet::Mlp(net) => Ok(net),
            DigitNet::Cnn(_) => Err(GraftError::setting(setting, "", format!("applies to an MLP (mlp:W1,W2,…), not to {SMALL_CNN}"))),
        }
    }
}

/// Grey 28×28 rows in [0, 1] of the readable samples, with their indices.
pub fn load_rows(samples: &[Sample]) -> (Vec<f32>, Vec<usize>, Vec<Skipped>) {
    let (rows, skipped) = decode_with(samples, &|_| {}, |img| GREY_INPUT.rgb_row(&img));
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

/// Settings of `graft pretrain --method autoencoder`, saved in its `config.toml` and `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub method: String,
    /// An MLP; for siamese and contrastive also the small CNN.
    pub arch: DigitArch,
    pub data: PathBuf,
    /// Epochs per layer.
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Denoising: the fraction of each input's values set to zero (0 = plain autoencoder).
    pub noise: f64,
    pub seed: u64,
    /// RBMs: Gibbs steps of contrastive divergence (CD-k).
    #[serde(default = "one")]
    pub cd_k: usize,
    /// RBMs: the first layer's visible units (the layers above are Bernoulli).
    #[serde(default)]
    pub visible: Visible,
    /// Siamese: the CSV of `a,b,same` rows (paths relative to `data`).
    #[serde(default)]
    pub pairs: Option<PathBuf>,
    /// Siamese: how far apart (unit-length codes) different pairs are pushed.
    #[serde(default = "default_margin")]
    pub margin: f64,
    /// Contrastive (SimCLR): the NT-Xent temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Contrastive: the smallest area fraction of a view's random resized crop; absent (the
    /// default, and runs made before crops): views scaled 0.85–1.15 and shifted ±3 pixels instead.
    #[serde(default)]
    pub crop: Option<f64>,
    /// Contrastive: the projection head's hidden width (Linear–ReLU–Linear to 128); 0, as in runs
    /// made before it, is one linear layer.
    #[serde(default)]
    pub projection_hidden: usize,
}

fn default_margin() -> f64 {
    1.0
}

fn default_temperature() -> f64 {
    0.5
}

fn one() -> usize {
    1
}

/// The methods of `graft pretrain`.
pub const PRETRAIN_METHODS: &str = "autoencoder, rbm, siamese or contrastive";

impl PretrainConfig {
    /// Reads a run's `config.toml` (size-checked before it is read).
    pub fn from_toml(path: &Path) -> Result<Self> {
        crate::fsutil::read_toml(path)
    }

    /// Every setting in range (the numbers finite), naming the setting that is not.
    pub fn validate(&self) -> Result<()> {
        if matches!(self.method.as_str(), "autoencoder" | "rbm") {
            self.arch.mlp("layer-wise pretraining (autoencoder, rbm)")?;
        }
        match self.method.as_str() {
            "autoencoder" => {
                if self.visible != Visible::Bernoulli {
                    return Err(GraftError::setting("visible", "gaussian", "applies to --method rbm"));
                }
            }
            "rbm" => {
                if self.noise != 0.0 {
                    return Err(GraftError::setting("noise", &self.noise.to_string(), "denoising applies to --method autoencoder"));
                }
                if !(1..=100).contains(&self.cd_k) {
                    return Err(GraftError::setting("cd_k", &self.cd_k.to_string(), "Gibbs steps lie in 1..=100"));
                }
            }
            "siamese" | "contrastive" => {
                if self.noise != 0.0 || self.visible != Visible::Bernoulli {
                    let (setting, value) = if self.noise != 0.0 { ("noise", self.noise.to_string()) } else { ("visible", "gaussian".to_string()) };
                    return Err(GraftError::setting(setting, &value, "applies to --method autoencoder (noise) or rbm (visible)"));
                }
                if !(self.margin > 0.0 && self.margin <= 2.0) {
                    return Err(GraftError::setting("margin", &self.margin.to_string(), "unit-length codes are at most 2 apart: a margin in (0, 2]"));
                }
                if !(self.temperature > 0.0 && self.temperature.is_finite()) {
                    return Err(GraftError::setting("temperature", &self.temperature.to_string(), "must be a positive number"));
                }
                if let Some(crop) = self.crop.filter(|c| !(*c > 0.0 && *c <= 1.0)) {
                    return Err(GraftError::setting("crop", &crop.to_string(), "the smallest crop is a fraction of the image's area in (0, 1]"));
                }
                if self.projection_hidden > 4096 {
                    return Err(GraftError::setting("projection_hidden", &self.projection_hidden.to_string(), "a hidden width of at most 4096"));
                }
            }
            _ => return Err(GraftError::setting("method", &self.method, format!("expected {PRETRAIN_METHODS}"))),
        }
        match (self.method.as_str(), &self.pairs) {
            ("siamese", None) => return Err(GraftError::setting("pairs", "", "--method siamese learns from a CSV of a,b,same rows")),
            ("siamese", Some(_)) | (_, None) => {}
            (_, Some(p)) => return Err(GraftError::setting("pairs", &p.display().to_string(), "applies to --method siamese")),
        }
        if !(0.0..1.0).contains(&self.noise) {
            return Err(GraftError::setting("noise", &self.noise.to_string(), "the masked fraction lies in [0, 1)"));
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

/// What a pretraining run's `model.json` holds (kind `pretrain`): written as the run starts
/// (no `layers` yet) and again when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainSummary {
    pub run: PathBuf,
    pub config: PretrainConfig,
    /// Epochs completed over all layers (absent from runs written before resume existed).
    #[serde(default)]
    pub epochs: usize,
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

/// The seed of layer `layer`'s epoch `epoch` (batch order and noise masks): each epoch draws
/// from its own stream, so a resumed run draws exactly what an uninterrupted one would.
fn epoch_rng(seed: u64, layer: usize, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ ((layer as u64 + 1) << 32) ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// What one layer of greedy pretraining learns from a batch of the codes below it.
trait LayerObjective: Module {
    /// The loss to descend and the batch's reconstruction error (mean squared) for the record.
    fn objective(&self, clean: Tensor<2>, config: &PretrainConfig, first: bool, rng: &mut StdRng) -> (Tensor<1>, f64);
    /// The trained layer's encoder: codes = sigmoid(encode(x)).
    fn into_encode(self) -> Linear;
}

impl LayerObjective for AutoencoderLayer {
    fn objective(&self, clean: Tensor<2>, config: &PretrainConfig, _first: bool, rng: &mut StdRng) -> (Tensor<1>, f64) {
        let [b, d_in] = clean.dims();
        let input = if config.noise > 0.0 {
            let mask: Vec<f32> = (0..b * d_in).map(|_| if rng.random::<f64>() < config.noise { 0.0 } else { 1.0 }).collect();
            clean.clone() * Tensor::<2>::from_data(TensorData::new(mask, [b, d_in]), &clean.device())
        } else {
            clean.clone()
        };
        let (_, reconstruction) = self.forward(input);
        let loss = (reconstruction - clean).powi_scalar(2).mean(); // mean squared error
        let value: f32 = loss.clone().into_scalar();
        (loss, value as f64)
    }

    fn into_encode(self) -> Linear {
        self.encode
    }
}

impl LayerObjective for Rbm {
    fn objective(&self, clean: Tensor<2>, config: &PretrainConfig, first: bool, rng: &mut StdRng) -> (Tensor<1>, f64) {
        let visible = if first { config.visible } else { Visible::Bernoulli };
        self.cd_loss(clean, config.cd_k, visible, rng)
    }

    fn into_encode(self) -> Linear {
        self.encode
    }
}

/// One layer as the engine's task: learn the objective on `codes` (the frozen layers' output).
struct LayerTask<'a, M> {
    config: &'a PretrainConfig,
    layer: usize,
    layers: usize,
    codes: &'a [f32],
    d_in: usize,
    n: usize,
    train_device: Device,
    batches: Vec<Vec<usize>>,
    rng: StdRng,
    sum: f64,
    _model: std::marker::PhantomData<M>,
}

impl<M: LayerObjective> Task for LayerTask<'_, M> {
    type Model = M;

    fn iterations(&self) -> usize {
        self.n.div_ceil(self.config.batch_size.max(1))
    }

    fn begin_epoch(&mut self, _model: &M, epoch: usize) -> Result<()> {
        self.rng = epoch_rng(self.config.seed, self.layer, epoch);
        self.batches = batches(self.n, self.config.batch_size, &mut self.rng);
        self.sum = 0.0;
        Ok(())
    }

    fn lr(&self, _it: &Iteration) -> f64 {
        self.config.lr
    }

    fn step(&mut self, model: &M, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let idx = &self.batches[it.index];
        let clean = gather_rows(self.codes, self.d_in, idx, &self.train_device); // [b, d_in]
        let (loss, error) = model.objective(clean, self.config, self.layer == 0, &mut self.rng);
        let what = if self.config.method == "rbm" { "contrastive-divergence loss" } else { "reconstruction loss" };
        guard::check_loss(&format!("layer {} {what}", self.layer + 1), loss.clone().into_scalar::<f32>() as f64, it.epoch + 1, lr)?;
        self.sum += error * idx.len() as f64;
        Ok(vec![(GradientsParams::from_grads(loss.backward(), model), 1.0)])
    }

    fn end_epoch(&mut self, _model: &M, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let mse = self.sum / self.n.max(1) as f64;
        let record = serde_json::json!({
            "epoch": epoch,
            "phase": format!("layer {}", self.layer + 1),
            "layer": self.layer + 1,
            "lr": lr,
            "train_loss": mse,
            "seconds": seconds,
        });
        Ok(EpochEnd { validation: None, record, scalars: vec![(format!("loss/reconstruction_layer{}", self.layer + 1), mse), ("lr".into(), lr)] })
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, _total: usize) {
        let epoch = record["epoch"].as_u64().unwrap_or(0) as usize;
        let within = epoch - self.layer * self.config.epochs;
        reporter.message(&format!("layer {}/{}, epoch {within}/{}: reconstruction mse {:.5}", self.layer + 1, self.layers, self.config.epochs, record["train_loss"].as_f64().unwrap_or(f64::NAN)));
    }
}

/// A layer's model before training.
enum LayerNet {
    Autoencoder(AutoencoderLayer),
    Rbm(Rbm),
}

/// One layer of a pretraining run, trained (or read back when done before a resume).
struct Layer<'a> {
    config: &'a PretrainConfig,
    run: &'a Path,
    l: usize,
    layers: usize,
    d_in: usize,
    n: usize,
    total: usize,
    codes: &'a [f32],
    device: &'a Device,
}

impl Layer<'_> {
    /// Trains `model` for the layer's epochs (resuming where the run stopped) and returns its
    /// encoder, off the autodiff graph.
    fn train<M: LayerObjective>(&self, engine: &mut Engine, model: M) -> Result<Linear> {
        let Layer { config, run, l, layers, d_in, n, total, codes, device } = *self;
        let offset = l * config.epochs;
        let trained = match engine.status(offset, config.epochs) {
            // Completed before this process started: its last epoch is on disk.
            engine::PhaseStatus::Done => checkpoint::load(model, &run.join(layer_file(l)))?,
            _ => {
                let model = engine.resume_into(model, offset, config.epochs, "the pretrained layer")?;
                let mut task = LayerTask { config, layer: l, layers, codes, d_in, n, train_device: device.clone().autodiff(), batches: Vec::new(), rng: epoch_rng(config.seed, l, 0), sum: 0.0, _model: std::marker::PhantomData };
                let phase = Phase { offset, total, ..Phase::keep_last("", config.epochs, &layer_file(l)) };
                engine.run_phase(&mut task, model, phase)?
            }
        };
        Ok(trained.valid().into_encode())
    }
}

/// The file a pretraining run keeps layer `layer`'s trained autoencoder in.
fn layer_file(layer: usize) -> String {
    format!("layer{}.safetensors", layer + 1)
}

/// Greedy layer-wise autoencoder pretraining of `config.arch` on the images of `config.data`
/// (their labels are never read) into `run`; the encoder is saved there. With `resume`, the run
/// continues after its last completed epoch and ends as an uninterrupted run would.
pub fn pretrain(config: &PretrainConfig, run: &Path, resume: bool, reporter: &dyn Reporter, device: &Device) -> Result<PretrainSummary> {
    engine::removing_a_failed_start(run, resume, || pretrain_run(config, run, resume, reporter, device))
}

fn pretrain_run(config: &PretrainConfig, run: &Path, resume: bool, reporter: &dyn Reporter, device: &Device) -> Result<PretrainSummary> {
    config.validate()?;
    if !resume && crate::fsutil::holds_run(run) {
        return Err(GraftError::setting("out", &run.display().to_string(), "already holds a run"));
    }
    // (A resumed run keeps its saved config, epochs included, so there is no new total to check.)
    // The images (for siamese, those of the pairs) and, for siamese, the pairs as row indices.
    let (samples, pairs) = super::pairs::pretraining_images(config.pairs.as_deref(), &config.data)?;
    engine::prepare_run_dir(run, resume)?;
    device.seed(config.seed);
    let (mut codes, kept, skipped) = load_rows(&samples);
    let pair_rows = pairs.map(|pairs| super::pairs::pair_rows(&pairs, kept.iter().map(|&i| samples[i].path.as_path())));
    let n = kept.len();
    if n == 0 || pair_rows.as_ref().is_some_and(|p| p.is_empty()) {
        return Err(GraftError::Data { path: config.pairs.clone().unwrap_or(config.data.clone()), reason: "no readable images".into() });
    }
    if !resume {
        // config.toml first: a run counts as started once model.json exists (its layers are
        // filled in when the run ends).
        write_atomic(&run.join("config.toml"), toml::to_string(config).expect("config serializes").as_bytes())?;
        let started = PretrainSummary { run: run.into(), config: config.clone(), epochs: 0, images: n, layers: Vec::new(), seconds: 0.0, skipped: skipped.clone() };
        started.save(run, device)?;
    }
    let mut engine = Engine::open(run, resume, config.seed, reporter, device)?;
    if matches!(config.method.as_str(), "siamese" | "contrastive") {
        return pretrain_whole(config, run, engine, &codes, pair_rows, n, skipped, device);
    }
    let arch = config.arch.mlp("layer-wise pretraining")?;
    let layers = arch.hidden.len();
    let mut encoder = Encoder::init(arch, device);
    let total = layers * config.epochs;
    // Every layer's model is built (and its weights drawn: burn initialises lazily) before any
    // training, so a layer's start does not depend on whether the run was resumed.
    let shapes = arch.shapes();
    let models: Vec<LayerNet> = shapes
        .iter()
        .map(|&(d_in, d_out)| match config.method.as_str() {
            "rbm" => LayerNet::Rbm(engine::stable_ids(Rbm::init(d_in, d_out, device).train())),
            _ => LayerNet::Autoencoder(engine::stable_ids(AutoencoderLayer { encode: LinearConfig::new(d_in, d_out).init(device), decode: LinearConfig::new(d_out, d_in).init(device) }.train())),
        })
        .collect();
    for ((l, &(d_in, d_out)), model) in shapes.iter().enumerate().zip(models) {
        let layer = Layer { config, run, l, layers, d_in, n, total, codes: &codes, device };
        let encode = match model {
            LayerNet::Autoencoder(ae) => layer.train(&mut engine, ae)?,
            LayerNet::Rbm(rbm) => layer.train(&mut engine, rbm)?,
        };
        // The next layer learns on this layer's codes, computed once with the layer frozen.
        let mut next = Vec::with_capacity(n * d_out);
        let all: Vec<usize> = (0..n).collect();
        for chunk in all.chunks(1024) {
            let code = sigmoid(encode.forward(gather_rows(&codes, d_in, chunk, device)));
            next.extend(code.into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: run.into(), reason: format!("{e:?}") })?);
        }
        codes = next;
        encoder.layers[l] = encode;
    }
    // Per layer, the reconstruction error of its first and last epoch.
    let records: Vec<serde_json::Value> = engine::read_records(run)?;
    let reports = shapes
        .into_iter()
        .enumerate()
        .map(|(l, (d_in, d_out))| {
            let losses: Vec<f64> = records.iter().filter(|r| r["layer"].as_u64() == Some(l as u64 + 1)).filter_map(|r| r["train_loss"].as_f64()).collect();
            LayerReport {
                layer: l,
                input: d_in,
                output: d_out,
                first_epoch_loss: losses.first().copied().unwrap_or(f64::NAN),
                last_epoch_loss: losses.last().copied().unwrap_or(f64::NAN),
            }
        })
        .collect();
    checkpoint::save(&encoder, &run.join("encoder.safetensors"), BTreeMap::from([("graft.arch".to_string(), config.arch.to_string())]))?;
    let summary = PretrainSummary { run: run.into(), config: config.clone(), epochs: engine.state.epoch, images: n, layers: reports, seconds: engine.state.train_seconds, skipped };
    summary.save(run, device)?;
    Ok(summary)
}

/// The whole encoder trained at once on pairs (siamese) or on two views of each image
/// (contrastive): one phase of `config.epochs`, the encoder saved as the layer-wise methods save it.
#[allow(clippy::too_many_arguments)]
fn pretrain_whole(config: &PretrainConfig, run: &Path, mut engine: Engine, rows: &[f32], pairs: Option<Vec<(usize, usize, bool)>>, images: usize, skipped: Vec<Skipped>, device: &Device) -> Result<PretrainSummary> {
    let contrastive = pairs.is_none();
    let net = engine::stable_ids(PairNet::init(&config.arch, contrastive, config.projection_hidden, device).train());
    let phase = Phase::keep_last("", config.epochs, "pretrained.safetensors");
    // A finished run resumed gets its trained network back (not a fresh one to save).
    let net = engine.resume_phase(net, &phase, "the pretrained encoder")?;
    let n = pairs.as_ref().map(|p| p.len()).unwrap_or(images);
    let mut task = WholeTask { config, rows, pairs, n, train_device: device.clone().autodiff(), batches: Vec::new(), rng: epoch_rng(config.seed, 0, 0), sum: 0.0 };
    let trained = engine.run_phase(&mut task, net, phase)?.valid();
    let records: Vec<serde_json::Value> = engine::read_records(run)?;
    let losses: Vec<f64> = records.iter().filter_map(|r| r["train_loss"].as_f64()).collect();
    let report = LayerReport {
        layer: 0,
        input: INPUT,
        output: config.arch.code_width(),
        first_epoch_loss: losses.first().copied().unwrap_or(f64::NAN),
        last_epoch_loss: losses.last().copied().unwrap_or(f64::NAN),
    };
    checkpoint::save(&trained.encoder, &run.join("encoder.safetensors"), BTreeMap::from([("graft.arch".to_string(), config.arch.to_string())]))?;
    let summary = PretrainSummary { run: run.into(), config: config.clone(), epochs: engine.state.epoch, images, layers: vec![report], seconds: engine.state.train_seconds, skipped };
    summary.save(run, device)?;
    Ok(summary)
}

/// The whole encoder's task: pairs through the contrastive loss, or two views of each image
/// through NT-Xent.
struct WholeTask<'a> {
    config: &'a PretrainConfig,
    rows: &'a [f32],
    /// (row a, row b, same) per pair; `None`: contrastive views of every row.
    pairs: Option<Vec<(usize, usize, bool)>>,
    n: usize,
    train_device: Device,
    batches: Vec<Vec<usize>>,
    rng: StdRng,
    sum: f64,
}

impl Task for WholeTask<'_> {
    type Model = PairNet;

    fn iterations(&self) -> usize {
        self.n.div_ceil(self.config.batch_size.max(1))
    }

    fn begin_epoch(&mut self, _model: &PairNet, epoch: usize) -> Result<()> {
        self.rng = epoch_rng(self.config.seed, 0, epoch);
        self.batches = batches(self.n, self.config.batch_size, &mut self.rng);
        self.sum = 0.0;
        Ok(())
    }

    fn lr(&self, _it: &Iteration) -> f64 {
        self.config.lr
    }

    fn step(&mut self, net: &PairNet, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let idx = &self.batches[it.index];
        let dev = &self.train_device;
        let loss = match &self.pairs {
            Some(pairs) => {
                let (a, b, same) = super::pairs::pair_batch(self.rows, pairs, idx, dev);
                super::pairs::contrastive_loss(net.embed(a), net.embed(b), &same, self.config.margin)
            }
            None => {
                let (a, b) = super::pairs::views(self.rows, idx, self.config.crop.map(|c| c as f32), &mut self.rng, dev);
                super::pairs::nt_xent(net.embed(a), net.embed(b), self.config.temperature)
            }
        };
        let value = loss.clone().into_scalar::<f32>() as f64;
        guard::check_loss(&format!("{} loss", self.config.method), value, it.epoch + 1, lr)?;
        self.sum += value * idx.len() as f64;
        Ok(vec![(super::pairs::grads(loss, net), 1.0)])
    }

    fn end_epoch(&mut self, _model: &PairNet, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let loss = self.sum / self.n.max(1) as f64;
        let record = serde_json::json!({"epoch": epoch, "phase": self.config.method, "layer": 1, "lr": lr, "train_loss": loss, "seconds": seconds});
        Ok(EpochEnd { validation: None, record, scalars: vec![(format!("loss/{}", self.config.method), loss), ("lr".into(), lr)] })
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, _total: usize) {
        reporter.message(&format!("{} epoch {}/{}: loss {:.5}", self.config.method, record["epoch"].as_u64().unwrap_or(0), self.config.epochs, record["train_loss"].as_f64().unwrap_or(f64::NAN)));
    }
}

/// Settings of `graft fit --init RUN` / `graft fit --arch mlp:…`, saved in its `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpFitConfig {
    /// A `graft pretrain` run to start from; `None`: random initialisation.
    pub init: Option<PathBuf>,
    pub arch: DigitArch,
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    /// Used without `val`; 0 trains on everything and keeps the last epoch.
    pub val_split: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// The hidden layers' nonlinearity (runs before it: sigmoid).
    #[serde(default)]
    pub activation: Activation,
    /// A weights file (a TensorFlow checkpoint: its prefix or `.index`) whose hidden layers
    /// are restored into the MLP (see [`restore_layers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// Which of its variables: a regex searched in their names. `None`: every hidden layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<String>,
    /// Layers kept frozen: a regex searched in the layer names `hidden1` … `hiddenN`, `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<String>,
}

impl MlpFitConfig {
    /// Every setting in range (the numbers finite), naming the setting that is not.
    pub fn validate(&self) -> Result<()> {
        check_training(self.lr, self.epochs, self.batch_size)?;
        if self.val.is_none() && !(0.0..1.0).contains(&self.val_split) {
            return Err(GraftError::setting("val_split", &self.val_split.to_string(), "must be in [0, 1); 0 trains on everything"));
        }
        if self.arch == DigitArch::SmallCnn {
            // What only an MLP has: TensorFlow layers to restore, hidden layers to freeze by name,
            // a choice of nonlinearity.
            let relu = (self.activation == Activation::Relu).then(|| "relu".to_string());
            let mlp_only = [("weights", self.weights.as_ref().map(|p| p.display().to_string())), ("restore", self.restore.clone()), ("freeze", self.freeze.clone()), ("activation", relu)];
            if let Some((setting, value)) = mlp_only.into_iter().find_map(|(setting, value)| Some((setting, value?))) {
                return Err(GraftError::setting(setting, &value, format!("applies to an MLP (mlp:W1,W2,…), not to {SMALL_CNN}")));
            }
        }
        Ok(())
    }
}

/// The settings every training config here shares: a positive finite learning rate, at least
/// one epoch and a batch of at least one, each refusal naming its setting.
pub(crate) fn check_training(lr: f64, epochs: usize, batch_size: usize) -> Result<()> {
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(GraftError::setting("lr", &lr.to_string(), "must be a positive number"));
    }
    if epochs == 0 {
        return Err(GraftError::setting("epochs", "0", "must be at least 1"));
    }
    if batch_size == 0 {
        return Err(GraftError::setting("batch_size", "0", "must be at least 1"));
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


fn accuracy(net: &DigitNet, act: Activation, rows: &[f32], labels: &[usize], device: &Device) -> (f64, Vec<usize>) {
    let all: Vec<usize> = (0..labels.len()).collect();
    let mut predicted = Vec::with_capacity(labels.len());
    for chunk in all.chunks(1024) {
        predicted.extend(argmax(net.forward_with(gather_rows(rows, INPUT, chunk, device), act)));
    }
    let correct = predicted.iter().zip(labels).filter(|(p, t)| p == t).count();
    (correct as f64 / labels.len().max(1) as f64, predicted)
}

/// The MLP fine-tune as the engine's task.
struct MlpTask<'a> {
    x_train: &'a [f32],
    y_train: &'a [usize],
    x_val: &'a [f32],
    y_val: &'a [usize],
    classes: &'a [String],
    config: &'a MlpFitConfig,
    device: &'a Device,
    train_device: Device,
    batches: Vec<Vec<usize>>,
    loss_sum: f64,
    correct: usize,
}

impl Task for MlpTask<'_> {
    type Model = DigitNet;

    fn iterations(&self) -> usize {
        self.y_train.len().div_ceil(self.config.batch_size.max(1))
    }

    fn begin_epoch(&mut self, _model: &DigitNet, epoch: usize) -> Result<()> {
        self.batches = batches(self.y_train.len(), self.config.batch_size, &mut epoch_rng(self.config.seed ^ 0xF17, 0, epoch));
        (self.loss_sum, self.correct) = (0.0, 0);
        Ok(())
    }

    fn lr(&self, _it: &Iteration) -> f64 {
        self.config.lr
    }

    fn step(&mut self, model: &DigitNet, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let idx = &self.batches[it.index];
        let x = gather_rows(self.x_train, INPUT, idx, &self.train_device); // [b, 784]
        let targets: Vec<usize> = idx.iter().map(|&i| self.y_train[i]).collect();
        let logits = model.forward_with(x, self.config.activation);
        let loss = cross_entropy(logits.clone(), &targets, 0.0, None, &self.train_device);
        let value = loss.clone().into_scalar::<f32>() as f64;
        guard::check_loss("training loss", value, it.epoch + 1, lr)?;
        self.loss_sum += value * idx.len() as f64;
        self.correct += argmax(logits.detach()).iter().zip(&targets).filter(|(p, t)| p == t).count();
        Ok(vec![(GradientsParams::from_grads(loss.backward(), model), 1.0)])
    }

    fn end_epoch(&mut self, model: &DigitNet, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let validation = (!self.y_val.is_empty()).then(|| {
            let (loss, predicted) = score(model, self.config.activation, self.x_val, self.y_val, self.device);
            let eval = Evaluation::from_predictions(self.classes, self.y_val, &predicted);
            Validation { loss, accuracy: eval.accuracy, confusion: eval.confusion }
        });
        Ok(crate::train::fit::classifier_epoch_end(epoch, lr, seconds, self.loss_sum, self.correct, self.y_train.len(), validation))
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
        crate::train::fit::report_classifier_epoch(reporter, record, total);
    }
}

/// Mean cross-entropy and predictions of `net` on labelled rows.
fn score(net: &DigitNet, act: Activation, rows: &[f32], labels: &[usize], device: &Device) -> (f64, Vec<usize>) {
    let all: Vec<usize> = (0..labels.len()).collect();
    let (mut loss, mut predicted) = (0f64, Vec::with_capacity(labels.len()));
    for chunk in all.chunks(1024) {
        let logits = net.forward_with(gather_rows(rows, INPUT, chunk, device), act);
        let targets: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
        let l: f32 = cross_entropy(logits.clone(), &targets, 0.0, None, device).into_scalar();
        loss += l as f64 * chunk.len() as f64;
        predicted.extend(argmax(logits));
    }
    (loss / labels.len().max(1) as f64, predicted)
}

/// The hidden layer (0-based) a checkpoint variable belongs to, and whether it is the kernel
/// (`true`) or the bias: TF1 `hidden2/kernel` (or `weights`, `bias`, `biases`) is layer 1,
/// TF2 `…/layer_with_weights-1/kernel/.ATTRIBUTES/VARIABLE_VALUE` too. `None` for anything else
/// (optimizer slots, counters, other layers).
pub fn checkpoint_layer(name: &str) -> Option<(String, usize, bool)> {
    let name = name.strip_suffix("/.ATTRIBUTES/VARIABLE_VALUE").unwrap_or(name);
    let mut parts = name.rsplit('/');
    let kernel = match parts.next()? {
        "kernel" | "weights" => true,
        "bias" | "biases" => false,
        _ => return None,
    };
    let layer = parts.next()?;
    let index = if let Some(n) = layer.strip_prefix("hidden") {
        n.parse::<usize>().ok().filter(|&n| n >= 1)? - 1
    } else {
        layer.strip_prefix("layer_with_weights-")?.parse::<usize>().ok()?
    };
    Some((layer.to_string(), index, kernel))
}

/// Restores hidden layers of `net` from the weights file `path` (a TensorFlow checkpoint, or
/// any file whose names follow TensorFlow's): every variable whose name `restore` matches (a
/// regex, searched; `None`: all) and that names a hidden layer's kernel or bias (see
/// [`checkpoint_layer`]). Kernels are `[in, out]`, as TensorFlow and burn both store them.
/// Returns the net and the variable names restored, sorted. A pattern that matches no hidden
/// layer, a layer past the MLP's depth, a missing kernel or bias and a shape that differs from
/// the MLP's are errors naming the file and the variable.
pub fn restore_layers(mut net: MlpClassifier, arch: &MlpArch, path: &Path, restore: Option<&str>, device: &Device) -> Result<(MlpClassifier, Vec<String>)> {
    let re = match restore {
        Some(p) => Some(regex::Regex::new(p).map_err(|e| GraftError::setting("restore", p, format!("not a regex: {e}")))?),
        None => None,
    };
    let wanted = |name: &str| checkpoint_layer(name).is_some() && re.as_ref().is_none_or(|re| re.is_match(name));
    let dict = match graft_weights::tfckpt::index_of(path) {
        // Only the chosen variables are read (and need a readable dtype).
        Some(index) => graft_weights::tfckpt::load_index(&graft_weights::tfckpt::read_index(&index)?, &wanted)?,
        None => crate::zoo::read_weights(path)?,
    };
    let shapes = arch.shapes();
    let model = arch.to_string();
    // layer index -> (kernel name, bias name)
    let mut layers: BTreeMap<usize, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for name in dict.tensors.keys().filter(|n| wanted(n)) {
        let Some((layer, index, kernel)) = checkpoint_layer(name) else { continue };
        if index >= shapes.len() {
            return Err(GraftError::setting(
                "restore",
                restore.unwrap_or(""),
                format!("{}: variable `{name}` is layer `{layer}`, but {model} has {} hidden layers", path.display(), shapes.len()),
            ));
        }
        let slot = layers.entry(index).or_default();
        if kernel { slot.0 = Some(name) } else { slot.1 = Some(name) }
    }
    if layers.is_empty() {
        let names: Vec<&str> = dict.tensors.keys().map(String::as_str).take(12).collect();
        return Err(GraftError::setting(
            "restore",
            restore.unwrap_or(""),
            format!("{}: matches no hidden layer's kernel or bias (names such as hidden1/kernel or layer_with_weights-0/kernel; the file has {})", path.display(), names.join(", ")),
        ));
    }
    let mut restored = Vec::new();
    for (index, (kernel, bias)) in layers {
        let (d_in, d_out) = shapes[index];
        let (Some(kernel), Some(bias)) = (kernel, bias) else {
            let have = kernel.or(bias).unwrap_or("");
            return Err(GraftError::setting(
                "restore",
                restore.unwrap_or(""),
                format!("{}: `{have}` is restored without its layer's {}: restore both", path.display(), if kernel.is_none() { "kernel" } else { "bias" }),
            ));
        };
        let source = crate::zoo::load::WeightSource { dict: &dict, path, model: &model, device };
        let w = source.tensor(kernel, [d_in, d_out])?;
        let b = source.tensor(bias, [d_out])?;
        let layer = &mut net.encoder.layers[index];
        layer.weight = burn::module::Param::from_tensor(w);
        layer.bias = Some(burn::module::Param::from_tensor(b));
        restored.push(kernel.to_string());
        restored.push(bias.to_string());
    }
    restored.sort();
    Ok((net, restored))
}

/// Freezes the layers of `net` whose names (`hidden1` … `hiddenN`, `output`) the regex
/// `pattern` matches (searched): their weights get no gradient, so training leaves them
/// bit-for-bit as they were. A pattern matching no layer is an error.
pub fn freeze_layers(mut net: MlpClassifier, pattern: &str) -> Result<MlpClassifier> {
    let re = regex::Regex::new(pattern).map_err(|e| GraftError::setting("freeze", pattern, format!("not a regex: {e}")))?;
    let mut any = false;
    let layers = std::mem::take(&mut net.encoder.layers);
    for (i, layer) in layers.into_iter().enumerate() {
        let frozen = re.is_match(&format!("hidden{}", i + 1));
        any |= frozen;
        net.encoder.layers.push(if frozen { layer.no_grad() } else { layer });
    }
    if re.is_match("output") {
        any = true;
        net.head = net.head.no_grad();
    }
    if !any {
        let names: Vec<String> = (1..=net.encoder.layers.len()).map(|i| format!("hidden{i}")).chain(["output".to_string()]).collect();
        return Err(GraftError::setting("freeze", pattern, format!("matches none of the MLP's layers ({})", names.join(", "))));
    }
    Ok(net)
}

/// Fine-tunes an MLP (from a pretraining run, or random) with labels; the run is in `run`.
pub fn fit_mlp(config: &MlpFitConfig, run: &Path, reporter: &dyn Reporter, device: &Device) -> Result<MlpRun> {
    if crate::fsutil::holds_run(run) {
        return Err(GraftError::setting("out", &run.display().to_string(), "already holds a run"));
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
    let mut net = DigitNet::init(&config.arch, classes, device);
    if let Some(init) = &config.init {
        let saved = PretrainSummary::load(init)?.config.arch;
        if saved != config.arch {
            return Err(GraftError::setting("arch", &config.arch.to_string(), format!("{} was pretrained as {saved}", init.display())));
        }
        net = net.with_encoder(checkpoint::load(DigitEncoder::init(&saved, device), &init.join("encoder.safetensors"))?)?;
    }
    if let Some(weights) = &config.weights {
        let arch = config.arch.mlp("restoring TensorFlow layers")?;
        net = DigitNet::Mlp(restore_layers(net.into_mlp("weights")?, arch, weights, config.restore.as_deref(), device)?.0);
    }
    if let Some(pattern) = &config.freeze {
        net = DigitNet::Mlp(freeze_layers(net.into_mlp("freeze")?, pattern)?);
    }
    std::fs::create_dir_all(run).map_err(|e| GraftError::io(run, e))?;
    crate::fsutil::check_run_dir(run)?;
    let mut engine = Engine::open(run, false, config.seed, reporter, device)?;
    let mut task = MlpTask {
        x_train: &x_train,
        y_train: &y_train,
        x_val: &x_val,
        y_val: &y_val,
        classes: &folder.classes,
        config,
        device,
        train_device: device.clone().autodiff(),
        batches: Vec::new(),
        loss_sum: 0.0,
        correct: 0,
    };
    let phase = Phase {
        name: String::new(),
        offset: 0,
        epochs: config.epochs,
        total: config.epochs,
        // The best validation accuracy (the last epoch without validation data).
        keep: Keep::Best { monitor: crate::train::config::Monitor::ValAccuracy, min_delta: 0.0 },
        best_file: "best.safetensors".into(),
        early_stopping: None,
        plateau: None,
        optimizer: AdamConfig::new().init(),
    };
    engine.run_phase(&mut task, engine::stable_ids(net.train()), phase)?;
    let state = engine.state;
    let best = checkpoint::load(DigitNet::init(&config.arch, classes, device), &run.join("best.safetensors"))?;
    let info = MlpRun {
        config: config.clone(),
        classes: folder.classes.clone(),
        best_epoch: state.best_epoch,
        best_val_accuracy: (!y_val.is_empty()).then_some(state.best_val_accuracy),
        train_accuracy: accuracy(&best, config.activation, &x_train, &y_train, device).0,
        n_train: y_train.len(),
        n_val: y_val.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    info.save(run, device)?;
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
