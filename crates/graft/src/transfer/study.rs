//! The transferability study (Yosinski, Clune, Bengio & Lipson, 2014, "How transferable are
//! features in deep neural networks?"), on a small CNN, LeNet-5 or ResNet-18 trained from
//! scratch.
//!
//! The classes are split at random into halves A and B (`split_seed`). Base networks baseA and
//! baseB train on their half. A network is a sequence of L groups ([`StudyArch::groups`]): the
//! weight layers of the small CNNs, and for ResNet-18 the residual network's stages (stem,
//! layer1 … layer4, fc). Then, for every boundary n (1 … L − 1):
//! - **AnB**: the first n layers copied from baseA and frozen, the rest fresh and trained on B;
//! - **BnB**: the same from baseB itself (the "selffer" control);
//! - **AnB+**, **BnB+**: the same, but every layer trains (fine-tuning the copied ones).
//!
//! A frozen group's BatchNorm (ResNet-18) is in inference mode: its running statistics stay
//! the base's. Every network of a study is a [`StudyNet`], so one loop serves all three.
//!
//! Every network is tested on B's test images, which never enter a training set (a test image
//! whose content equals a training image's is left out). Each training is a run of the one
//! training engine in its own folder, so a killed study resumes where it stopped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::autoencoder::{load_rows, INPUT, SIDE};
use crate::zoo::resnet::{ResNet, ResNetConfig};
use crate::adapt::losses::gather_rows;
use crate::data::folder::{ImageFolder, Sample};
use crate::fsutil::write_atomic;
use crate::report::plot::{line_plot, Series};
use crate::report::Reporter;
use crate::train::engine::{self, Engine, EpochEnd, Iteration, Phase, Task};
use crate::train::loss::{argmax, cross_entropy};
use crate::{GraftError, Result};

/// The networks the study trains from scratch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StudyArch {
    /// conv 3×3 → 32, conv 3×3 → 64, fc 256, fc 128, output.
    #[default]
    #[serde(rename = "small-cnn")]
    SmallCnn,
    /// LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling: conv 5×5 → 6 (padded, 28×28),
    /// conv 5×5 → 16 (10×10), fc 400 → 120, fc 84, output.
    #[serde(rename = "lenet")]
    Lenet,
    /// torchvision's ResNet-18 (the zoo's), studied at stage granularity: stem (conv1 + bn1),
    /// layer1 … layer4, fc. The grey 28×28 images enter at their own size, replicated to 3
    /// channels (maps 14, 7, 7, 4, 2, 1).
    #[serde(rename = "resnet18")]
    ResNet18,
}

impl StudyArch {
    /// The network's groups in order: boundary n copies (and with AnB/BnB freezes) the first n.
    pub fn groups(self) -> &'static [&'static str] {
        match self {
            StudyArch::SmallCnn | StudyArch::Lenet => &["conv1", "conv2", "fc1", "fc2", "out"],
            StudyArch::ResNet18 => &["stem (conv1, bn1)", "layer1", "layer2", "layer3", "layer4", "fc"],
        }
    }

    /// The boundaries studied: 1 … groups − 1.
    pub fn boundaries(self) -> std::ops::Range<usize> {
        1..self.groups().len()
    }
}

impl std::str::FromStr for StudyArch {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "small-cnn" => Ok(StudyArch::SmallCnn),
            "lenet" => Ok(StudyArch::Lenet),
            "resnet18" => Ok(StudyArch::ResNet18),
            _ => Err(GraftError::setting("arch", s, "expected small-cnn, lenet or resnet18")),
        }
    }
}

/// A small CNN on 28×28 grey images: conv 3×3 → 32, ReLU, max-pool; conv 3×3 → 64, ReLU,
/// max-pool; fc 3136 → 256, ReLU; fc 256 → 128, ReLU; fc 128 → classes. Five weight layers.
/// With [`StudyArch::Lenet`] the same five layers are LeNet-5's (see there).
#[derive(Module, Debug)]
pub struct SmallCnn {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pub out: Linear,
    pub pool: MaxPool2d,
}

impl SmallCnn {
    /// The small CNN's five layers, freshly initialised.
    pub fn init(classes: usize, device: &Device) -> Self {
        Self::init_five(false, classes, device)
    }

    /// LeNet-5's five layers ([`StudyArch::Lenet`]), freshly initialised.
    pub fn lenet(classes: usize, device: &Device) -> Self {
        Self::init_five(true, classes, device)
    }

    fn init_five(lenet: bool, classes: usize, device: &Device) -> Self {
        let conv = |i, o, k: usize, pad: usize| Conv2dConfig::new([i, o], [k, k]).with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad)).init(device);
        let pool = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
        match lenet {
            false => SmallCnn {
                conv1: conv(1, 32, 3, 1),
                conv2: conv(32, 64, 3, 1),
                fc1: LinearConfig::new(64 * 7 * 7, 256).init(device),
                fc2: LinearConfig::new(256, 128).init(device),
                out: LinearConfig::new(128, classes).init(device),
                pool,
            },
            true => SmallCnn {
                conv1: conv(1, 6, 5, 2),
                conv2: conv(6, 16, 5, 0),
                fc1: LinearConfig::new(16 * 5 * 5, 120).init(device),
                fc2: LinearConfig::new(120, 84).init(device),
                out: LinearConfig::new(84, classes).init(device),
                pool,
            },
        }
    }

    /// [n, 784] → [n, classes] logits (shapes for small-cnn; LeNet: 6 × 14 × 14, 16 × 5 × 5, 120, 84).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = codes([&self.conv1, &self.conv2], [&self.fc1, &self.fc2], &self.pool, x); // [n, 128]
        self.out.forward(x)
    }

    /// This network with its first four layers (conv1 … fc2) those of `encoder`.
    pub fn with_encoder(self, encoder: CnnEncoder) -> SmallCnn {
        let CnnEncoder { conv1, conv2, fc1, fc2, pool } = encoder;
        SmallCnn { conv1, conv2, fc1, fc2, pool, ..self }
    }

    /// Applies `f` to each of the first `n` weight layers (conv1, conv2, fc1, fc2, out), given
    /// the layer of `self` and the same layer of `other` (`self`'s own when `other` is `None`).
    fn for_first(mut self, n: usize, other: Option<&SmallCnn>, mut f: impl FnMut(Layer, Layer) -> Layer) -> SmallCnn {
        let other = other.unwrap_or(&self).clone();
        macro_rules! layers {
            ($($i:expr => $field:ident: $kind:ident),*) => {$(
                if n > $i {
                    if let Layer::$kind(layer) = f(Layer::$kind(self.$field.clone()), Layer::$kind(other.$field.clone())) {
                        self.$field = layer;
                    }
                }
            )*};
        }
        layers!(0 => conv1: Conv, 1 => conv2: Conv, 2 => fc1: Linear, 3 => fc2: Linear, 4 => out: Linear);
        self
    }

    /// This network with its first `n` weight layers taken from `base`.
    pub fn transplant(self, base: &SmallCnn, n: usize) -> SmallCnn {
        self.for_first(n, Some(base), |_, from_base| from_base)
    }

    /// This network with its first `n` weight layers frozen (no gradients).
    pub fn freeze_first(self, n: usize) -> SmallCnn {
        self.for_first(n, None, |own, _| match own {
            Layer::Conv(c) => Layer::Conv(c.no_grad()),
            Layer::Linear(l) => Layer::Linear(l.no_grad()),
        })
    }
}

/// One weight layer of [`SmallCnn`], as [`SmallCnn::for_first`] hands it over.
enum Layer {
    Conv(Conv2d),
    Linear(Linear),
}

/// The code of a small CNN's first four layers: [n, 784] → [n, 128] (ReLU after each, max-pool
/// after each convolution; shapes for small-cnn).
fn codes([conv1, conv2]: [&Conv2d; 2], [fc1, fc2]: [&Linear; 2], pool: &MaxPool2d, x: Tensor<2>) -> Tensor<2> {
    let [n, _] = x.dims();
    let x = x.reshape([n, 1, SIDE, SIDE]); // [n, 1, 28, 28]
    let x = pool.forward(relu(conv1.forward(x))); // [n, 32, 14, 14]
    let x = pool.forward(relu(conv2.forward(x))); // [n, 64, 7, 7]
    let x = relu(fc1.forward(x.flatten(1, 3))); // [n, 256]
    relu(fc2.forward(x)) // [n, 128]
}

/// Width of the small CNN's code (fc2's output).
pub const CNN_CODE: usize = 128;

/// The small CNN without its output layer: the encoder `graft pretrain --arch small-cnn` trains
/// (siamese, contrastive) and `graft fit --init` puts under a fresh output layer. Weight names
/// are [`SmallCnn`]'s (`conv1.weight`, …, `fc2.bias`).
#[derive(Module, Debug)]
pub struct CnnEncoder {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pub pool: MaxPool2d,
}

impl CnnEncoder {
    pub fn init(device: &Device) -> Self {
        let SmallCnn { conv1, conv2, fc1, fc2, pool, .. } = SmallCnn::init(1, device);
        Self { conv1, conv2, fc1, fc2, pool }
    }

    /// [n, 784] → [n, 128].
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        codes([&self.conv1, &self.conv2], [&self.fc1, &self.fc2], &self.pool, x)
    }
}

crate::zoo::mobilenetv2::transparent_module_enum! {
    /// A network of the study: what the study loop trains, transplants and freezes, whatever
    /// the architecture. burn's paths are the wrapped network's (`conv1.weight`,
    /// `layer2.0.bn1.running_mean`, …).
    pub enum StudyNet {
        /// small-cnn or LeNet-5: five weight layers.
        Plain(SmallCnn),
        /// ResNet-18 (the zoo's torchvision network), its `fc` giving the half's classes.
        ResNet(ResNet),
    }
}

impl StudyNet {
    /// `arch` freshly initialised for `classes` outputs.
    pub fn init(arch: StudyArch, classes: usize, device: &Device) -> Self {
        match arch {
            StudyArch::SmallCnn => StudyNet::Plain(SmallCnn::init(classes, device)),
            StudyArch::Lenet => StudyNet::Plain(SmallCnn::lenet(classes, device)),
            StudyArch::ResNet18 => {
                let config = ResNetConfig { resolution: SIDE, num_classes: classes, ..ResNetConfig::resnet(18).expect("18 is a ResNet depth") };
                StudyNet::ResNet(config.init(device))
            }
        }
    }

    /// [n, 784] grey 28×28 rows → [n, classes] logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            StudyNet::Plain(net) => net.forward(x),
            StudyNet::ResNet(net) => {
                let [n, _] = x.dims();
                let x = x.reshape([n, 1, SIDE, SIDE]).repeat_dim(1, 3); // [n, 3, 28, 28], grey replicated
                net.forward(x) // stem [n, 64, 7, 7], layer1 7×7, layer2 4×4, layer3 2×2, layer4 [n, 512, 1, 1] → [n, classes]
            }
        }
    }

    /// This network with its first `n` groups ([`StudyArch::groups`]) taken from `base`, a
    /// network of the same architecture: every parameter and BatchNorm statistic of those groups.
    pub fn transplant(self, base: &StudyNet, n: usize) -> StudyNet {
        match (self, base) {
            (StudyNet::Plain(net), StudyNet::Plain(base)) => StudyNet::Plain(net.transplant(base, n)),
            (StudyNet::ResNet(mut net), StudyNet::ResNet(base)) => {
                if n > 0 {
                    net.conv1 = base.conv1.clone();
                    net.bn1 = base.bn1.clone();
                }
                for (i, (layer, from)) in resnet_layers(&mut net).into_iter().zip([&base.layer1, &base.layer2, &base.layer3, &base.layer4]).enumerate() {
                    if n > i + 1 {
                        *layer = from.clone();
                    }
                }
                if n > 5 {
                    net.fc = base.fc.clone();
                }
                StudyNet::ResNet(net)
            }
            _ => unreachable!("the study builds every network of a study with one architecture"),
        }
    }

    /// This network with its first `n` groups frozen: no gradients, and BatchNorm in inference
    /// mode (running statistics unchanged by training).
    pub fn freeze_first(self, n: usize) -> StudyNet {
        match self {
            StudyNet::Plain(net) => StudyNet::Plain(net.freeze_first(n)),
            StudyNet::ResNet(mut net) => {
                if n > 0 {
                    net.conv1 = net.conv1.freeze();
                    net.bn1 = net.bn1.freeze();
                }
                for (i, layer) in resnet_layers(&mut net).into_iter().enumerate() {
                    if n > i + 1 {
                        *layer = std::mem::take(layer).freeze();
                    }
                }
                if n > 5 {
                    net.fc = net.fc.take().map(Module::freeze);
                }
                StudyNet::ResNet(net)
            }
        }
    }
}

/// ResNet's residual groups, layer1 first.
fn resnet_layers(net: &mut ResNet) -> [&mut Vec<crate::zoo::resnet::Block>; 4] {
    [&mut net.layer1, &mut net.layer2, &mut net.layer3, &mut net.layer4]
}

/// Settings of `graft study transferability`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Training images: class folders of 28×28 grey images (e.g. Fashion-MNIST's).
    pub data: PathBuf,
    /// Test images, the same classes.
    pub test: PathBuf,
    /// Seeds the class split into A and B.
    pub split_seed: u64,
    /// Seeds of the repeated trainings (initialisation and batch order).
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// The network (studies made before LeNet: small-cnn).
    #[serde(default)]
    pub arch: StudyArch,
}

impl StudyConfig {
    pub fn validate(&self) -> Result<()> {
        if self.seeds.is_empty() || self.seeds.len() > 100 {
            return Err(GraftError::setting("seeds", &self.seeds.len().to_string(), "give 1 to 100 seeds"));
        }
        super::autoencoder::check_training(self.lr, self.epochs, self.batch_size)
    }
}

/// One trained network's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `baseA`, `baseB`, `AnB`, `BnB`, `AnB+`, `BnB+`.
    pub variant: String,
    /// The layer boundary (0 for the bases).
    pub n: usize,
    pub seed: u64,
    /// Accuracy on the test images of the half it was trained on (B, but A for baseA).
    pub accuracy: f64,
}

/// The study's answer: every outcome and the findings read from their means.
#[derive(Debug, Clone, Serialize)]
pub struct StudySummary {
    pub out: PathBuf,
    pub arch: StudyArch,
    /// The network's groups in order; boundary n copies the first n (weight layers for
    /// small-cnn and lenet, stages for resnet18).
    pub groups: Vec<String>,
    pub classes_a: Vec<String>,
    pub classes_b: Vec<String>,
    pub outcomes: Vec<Outcome>,
    /// Mean test accuracy per variant and boundary: (variant, n, mean, std).
    pub means: Vec<(String, usize, f64, f64)>,
    /// The paper's three findings, each with whether it appears here and the numbers why.
    pub findings: Vec<(String, bool, String)>,
    /// Test images left out because a training image has the same content.
    pub test_duplicates_dropped: usize,
}

/// The classes of halves A and B: a seeded shuffle, the first ⌊k/2⌋ to A.
pub fn split_classes(classes: &[String], split_seed: u64) -> (Vec<String>, Vec<String>) {
    let mut shuffled = classes.to_vec();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(split_seed));
    let half = shuffled.len() / 2;
    let (mut a, mut b) = (shuffled[..half].to_vec(), shuffled[half..].to_vec());
    a.sort();
    b.sort();
    (a, b)
}

/// The test samples whose content is not that of any training sample (`train_hashes`), and how
/// many were left out.
pub fn disjoint_test(test: Vec<(Sample, [u8; 32])>, train_hashes: &HashSet<[u8; 32]>) -> (Vec<Sample>, usize) {
    let before = test.len();
    let kept: Vec<Sample> = test.into_iter().filter(|(_, h)| !train_hashes.contains(h)).map(|(s, _)| s).collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

/// One half's images as rows with labels 0.. in the half's class order.
struct Half {
    rows: Vec<f32>,
    labels: Vec<usize>,
}

fn half_of(samples: &[Sample], all: &[String], half: &[String]) -> Half {
    let picked: Vec<Sample> = samples
        .iter()
        .filter_map(|s| half.iter().position(|c| *c == all[s.label]).map(|label| Sample { path: s.path.clone(), label }))
        .collect();
    let (rows, kept, _) = load_rows(&picked);
    Half { rows, labels: kept.iter().map(|&i| picked[i].label).collect() }
}

/// Runs the study into `out` (one engine run per training in `out/runs/`); with `resume`,
/// finished trainings are read back and an interrupted one continues.
pub fn transferability(config: &StudyConfig, out: &Path, resume: bool, reporter: &dyn Reporter, device: &Device) -> Result<StudySummary> {
    config.validate()?;
    let record = out.join("study.json");
    if !resume && record.exists() {
        return Err(GraftError::setting("out", &out.display().to_string(), "already holds a study; pass --resume to continue it or choose another --out"));
    }
    let train = ImageFolder::scan(&config.data)?;
    let test = ImageFolder::scan_with_classes(&config.test, &train.classes)?;
    if train.classes.len() < 4 {
        return Err(GraftError::Data { path: config.data.clone(), reason: format!("{} classes: the study splits them into two halves of at least 2", train.classes.len()) });
    }
    let (classes_a, classes_b) = split_classes(&train.classes, config.split_seed);
    // No test image may be a training image (by content): the halves are tested on images no
    // network of the study trained on.
    let mut train_hashes = HashSet::new();
    for s in &train.samples {
        train_hashes.insert(crate::cache::store::content_hash(&s.path)?);
    }
    let hashed: Vec<(Sample, [u8; 32])> = test.samples.iter().map(|s| Ok((s.clone(), crate::cache::store::content_hash(&s.path)?))).collect::<Result<_>>()?;
    let (test_samples, dropped) = disjoint_test(hashed, &train_hashes);
    if dropped > 0 {
        reporter.message(&format!("{dropped} test images have the content of a training image: left out"));
    }
    std::fs::create_dir_all(out).map_err(|e| GraftError::io(out, e))?;
    write_atomic(&record, &serde_json::to_vec_pretty(&serde_json::json!({"config": config, "classes_a": classes_a, "classes_b": classes_b})).expect("serializes"))?;
    let (train_a, train_b) = (half_of(&train.samples, &train.classes, &classes_a), half_of(&train.samples, &train.classes, &classes_b));
    let (test_a, test_b) = (half_of(&test_samples, &train.classes, &classes_a), half_of(&test_samples, &train.classes, &classes_b));
    reporter.message(&format!("A: {} ({} images), B: {} ({} images)", classes_a.join(", "), train_a.labels.len(), classes_b.join(", "), train_b.labels.len()));

    let mut outcomes = Vec::new();
    for &seed in &config.seeds {
        let trainer = Trainer { config, out, seed, reporter, device };
        let (base_a, acc_a) = trainer.train("baseA", 0, &train_a, &test_a, None, classes_a.len())?;
        outcomes.push(Outcome { variant: "baseA".into(), n: 0, seed, accuracy: acc_a });
        let (base_b, acc_b) = trainer.train("baseB", 0, &train_b, &test_b, None, classes_b.len())?;
        outcomes.push(Outcome { variant: "baseB".into(), n: 0, seed, accuracy: acc_b });
        for n in config.arch.boundaries() {
            for (variant, base, freeze) in [("AnB", &base_a, true), ("BnB", &base_b, true), ("AnB+", &base_a, false), ("BnB+", &base_b, false)] {
                let (_, accuracy) = trainer.train(variant, n, &train_b, &test_b, Some((base, freeze)), classes_b.len())?;
                outcomes.push(Outcome { variant: variant.into(), n, seed, accuracy });
            }
        }
    }
    let mut lines = String::new();
    for o in &outcomes {
        lines.push_str(&serde_json::to_string(o).expect("serializes"));
        lines.push('\n');
    }
    write_atomic(&out.join("metrics.jsonl"), lines.as_bytes())?;
    let means = means(&outcomes);
    plot(&out.join("transferability.png"), &means)?;
    let findings = findings(&means);
    let groups = config.arch.groups().iter().map(|g| g.to_string()).collect();
    let summary = StudySummary { out: out.into(), arch: config.arch, groups, classes_a, classes_b, outcomes, means, findings, test_duplicates_dropped: dropped };
    write_atomic(&out.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("serializes"))?;
    Ok(summary)
}

/// Trains the study's networks, each an engine run in `out/runs/VARIANT-n-sSEED`.
struct Trainer<'a> {
    config: &'a StudyConfig,
    out: &'a Path,
    seed: u64,
    reporter: &'a dyn Reporter,
    device: &'a Device,
}

impl Trainer<'_> {
    /// Trains `variant` at boundary `n` on `train` (from `base`'s first n layers, frozen or not)
    /// and returns the network and its accuracy on `test`. A finished run is read back.
    fn train(&self, variant: &str, n: usize, train: &Half, test: &Half, base: Option<(&StudyNet, bool)>, classes: usize) -> Result<(StudyNet, f64)> {
        let Trainer { config, out, seed, reporter, device } = *self;
        let name = format!("{}-{n}-s{seed}", variant.replace('+', "plus"));
        let run = out.join("runs").join(&name);
        std::fs::create_dir_all(&run).map_err(|e| GraftError::io(&run, e))?;
        crate::fsutil::remove_stale_temps(&run)?;
        // The fresh layers are seeded by the seed, the variant and the boundary.
        device.seed(seed.wrapping_mul(1_000_003) ^ (n as u64) << 8 ^ variant.len() as u64);
        let mut net = StudyNet::init(config.arch, classes, device);
        if let Some((base, _)) = base {
            net = net.transplant(base, n);
        }
        let mut net = engine::stable_ids(net).train();
        if let Some((_, true)) = base {
            net = net.freeze_first(n);
        }
        let resume = run.join("last.safetensors").is_file();
        let mut engine = Engine::open(&run, resume, seed, reporter, device)?;
        let phase = Phase::keep_last("", config.epochs, "final.safetensors");
        let net = engine.resume_phase(net, &phase, "the study's network")?;
        let mut task = StudyTask { rows: &train.rows, labels: &train.labels, batch: config.batch_size, lr: config.lr, seed, train_device: device.clone().autodiff(), order: Vec::new(), sums: (0.0, 0, 0), name: name.clone() };
        let trained = engine.run_phase(&mut task, net, phase)?.valid();
        // A finished training is read back from its checkpoints alone: its optimiser state
        // (twice the network's size, 90 MB for ResNet-18) is not kept.
        remove_optimizer_states(&run)?;
        let accuracy = accuracy(&trained, test, config.batch_size, device);
        reporter.message(&format!("{name}: test accuracy {accuracy:.4}"));
        Ok((trained, accuracy))
    }
}

/// Removes the engine's `optim-E.bin` files from a finished run.
fn remove_optimizer_states(run: &Path) -> Result<()> {
    for entry in std::fs::read_dir(run).map_err(|e| GraftError::io(run, e))? {
        let path = entry.map_err(|e| GraftError::io(run, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("optim-") && name.ends_with(".bin") {
            std::fs::remove_file(&path).map_err(|e| GraftError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Accuracy of `net` on `half`.
fn accuracy(net: &StudyNet, half: &Half, batch: usize, device: &Device) -> f64 {
    let all: Vec<usize> = (0..half.labels.len()).collect();
    let mut correct = 0;
    for chunk in all.chunks(batch.max(1)) {
        let predicted = argmax(net.forward(gather_rows(&half.rows, INPUT, chunk, device)));
        correct += chunk.iter().zip(predicted).filter(|(&i, p)| half.labels[i] == *p).count();
    }
    correct as f64 / half.labels.len().max(1) as f64
}

/// One network's training on its half.
struct StudyTask<'a> {
    rows: &'a [f32],
    labels: &'a [usize],
    batch: usize,
    lr: f64,
    seed: u64,
    train_device: Device,
    order: Vec<usize>,
    /// (loss × rows, correct, rows) of the epoch.
    sums: (f64, usize, usize),
    name: String,
}

impl Task for StudyTask<'_> {
    type Model = StudyNet;

    fn iterations(&self) -> usize {
        self.labels.len().div_ceil(self.batch.max(1))
    }

    fn begin_epoch(&mut self, _model: &StudyNet, epoch: usize) -> Result<()> {
        self.order = engine::epoch_order(self.labels.len(), self.seed, epoch);
        self.sums = (0.0, 0, 0);
        Ok(())
    }

    fn lr(&self, _it: &Iteration) -> f64 {
        self.lr
    }

    fn step(&mut self, net: &StudyNet, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let idx = &self.order[it.index * self.batch..((it.index + 1) * self.batch).min(self.order.len())];
        let targets: Vec<usize> = idx.iter().map(|&i| self.labels[i]).collect();
        let logits = net.forward(gather_rows(self.rows, INPUT, idx, &self.train_device));
        let loss = cross_entropy(logits.clone(), &targets, 0.0, None, &self.train_device);
        let value = loss.clone().into_scalar::<f32>() as f64;
        crate::train::guard::check_loss("training loss", value, it.epoch + 1, lr)?;
        self.sums.0 += value * idx.len() as f64;
        self.sums.1 += argmax(logits.detach()).iter().zip(&targets).filter(|(p, t)| p == t).count();
        self.sums.2 += idx.len();
        Ok(vec![(GradientsParams::from_grads(loss.backward(), net), 1.0)])
    }

    fn end_epoch(&mut self, _model: &StudyNet, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let (loss, correct, rows) = self.sums;
        let (loss, acc) = (loss / rows.max(1) as f64, correct as f64 / rows.max(1) as f64);
        let record = serde_json::json!({"epoch": epoch, "run": self.name, "lr": lr, "train_loss": loss, "train_accuracy": acc, "seconds": seconds});
        Ok(EpochEnd { validation: None, record, scalars: vec![("loss/train".into(), loss)] })
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
        reporter.message(&format!("{} epoch {}/{total}: loss {:.4}", self.name, record["epoch"].as_u64().unwrap_or(0), record["train_loss"].as_f64().unwrap_or(f64::NAN)));
    }
}

/// Mean and sample standard deviation of each (variant, n).
fn means(outcomes: &[Outcome]) -> Vec<(String, usize, f64, f64)> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for o in outcomes {
        if !keys.contains(&(o.variant.clone(), o.n)) {
            keys.push((o.variant.clone(), o.n));
        }
    }
    keys.into_iter()
        .map(|(variant, n)| {
            let values: Vec<f64> = outcomes.iter().filter(|o| o.variant == variant && o.n == n).map(|o| o.accuracy).collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let std = if values.len() > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt() } else { 0.0 };
            (variant, n, mean, std)
        })
        .collect()
}

/// The deepest boundary in `means`.
fn last_boundary(means: &[(String, usize, f64, f64)]) -> usize {
    means.iter().map(|m| m.1).max().unwrap_or(0)
}

fn mean_of(means: &[(String, usize, f64, f64)], variant: &str, n: usize) -> f64 {
    means.iter().find(|m| m.0 == variant && m.1 == n).map(|m| m.2).unwrap_or(f64::NAN)
}

/// The paper's figure: accuracy on B's test images against n, a line per variant, baseB as a
/// horizontal reference.
fn plot(path: &Path, means: &[(String, usize, f64, f64)]) -> Result<()> {
    let base = mean_of(means, "baseB", 0);
    let last = last_boundary(means);
    let mut series = vec![Series { name: "baseB".into(), points: vec![(1.0, base), (last as f64, base)] }];
    for variant in ["BnB", "BnB+", "AnB", "AnB+"] {
        series.push(Series { name: variant.into(), points: (1..=last).map(|n| (n as f64, mean_of(means, variant, n))).collect() });
    }
    line_plot(path, "transferability: accuracy on B's test images", "layers transferred (n)", &series)
}

/// Reads the paper's three findings off the means: AnB falls as n grows (features become
/// specific), BnB dips in the middle (fragile co-adaptation), AnB+ stays at or above the base
/// (transfer plus fine-tuning helps). A finding "appears" when its difference exceeds one point.
pub fn findings(means: &[(String, usize, f64, f64)]) -> Vec<(String, bool, String)> {
    let base = mean_of(means, "baseB", 0);
    let at = |v: &str, n: usize| mean_of(means, v, n);
    let last = last_boundary(means);
    let anb_drop = at("AnB", 1) - at("AnB", last);
    let middle = (2..last).map(|n| at("BnB", n)).fold(f64::INFINITY, f64::min);
    let ends = at("BnB", 1).min(at("BnB", last));
    let plus: Vec<f64> = (1..=last).map(|n| at("AnB+", n)).collect();
    let plus_mean = plus.iter().sum::<f64>() / plus.len() as f64;
    vec![
        (
            "AnB falls as more layers are transferred".into(),
            anb_drop > 0.01,
            format!("AnB n=1 {:.4} → n={last} {:.4} ({:+.1} points)", at("AnB", 1), at("AnB", last), -anb_drop * 100.0),
        ),
        (
            "BnB dips in the middle (co-adapted layers split)".into(),
            middle < ends - 0.01 && middle < base - 0.01,
            format!("BnB lowest in the middle {middle:.4}, at the ends {:.4} / {:.4}, baseB {base:.4}", at("BnB", 1), at("BnB", last)),
        ),
        (
            "AnB+ at or above the base (transfer then fine-tune helps)".into(),
            plus_mean >= base,
            format!("AnB+ mean over n {plus_mean:.4} vs baseB {base:.4}"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_seeded_and_covers_every_class_once() {
        let classes: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let (a, b) = split_classes(&classes, 3);
        assert_eq!((a.len(), b.len()), (5, 5));
        let mut all: Vec<String> = a.iter().chain(&b).cloned().collect();
        all.sort();
        assert_eq!(all, classes);
        assert_eq!(split_classes(&classes, 3), (a.clone(), b.clone()));
        assert_ne!(split_classes(&classes, 4).0, a, "another seed, another split");
    }

    /// A test image with a training image's content never reaches the test set, whatever its
    /// path; the others all do.
    #[test]
    fn no_b_test_image_is_a_training_image() {
        let sample = |p: &str| Sample { path: p.into(), label: 0 };
        let train: HashSet<[u8; 32]> = [[1u8; 32], [2u8; 32]].into_iter().collect();
        let test = vec![(sample("t/x.png"), [1u8; 32]), (sample("t/y.png"), [3u8; 32]), (sample("t/z.png"), [2u8; 32])];
        let (kept, dropped) = disjoint_test(test, &train);
        assert_eq!(dropped, 2);
        assert_eq!(kept.iter().map(|s| s.path.to_string_lossy().into_owned()).collect::<Vec<_>>(), vec!["t/y.png"]);
    }

    /// The first n layers come from the base (frozen ones get no gradient), the rest are the
    /// new network's.
    #[test]
    fn transplant_takes_the_first_n_layers() {
        let device = Device::flex();
        let base = SmallCnn::init(5, &device);
        let fresh = SmallCnn::init(5, &device);
        let same = |a: &Linear, b: &Linear| (a.weight.val() - b.weight.val()).abs().max().into_scalar::<f32>() == 0.0;
        let t = fresh.transplant(&base, 3);
        let w = |c: &Conv2d| c.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(w(&t.conv1), w(&base.conv1));
        assert_eq!(w(&t.conv2), w(&base.conv2));
        assert!(same(&t.fc1, &base.fc1));
        assert!(!same(&t.fc2, &base.fc2) && !same(&t.out, &base.out), "the layers above n stay the new network's");
        // Frozen layers get no gradient; the others do.
        let device = device.autodiff();
        let net = SmallCnn::init(5, &device).train().freeze_first(2);
        let x = Tensor::<2>::ones([2, INPUT], &device);
        let grads = net.forward(x).sum().backward();
        assert!(net.conv1.weight.val().grad(&grads).is_none() && net.conv2.weight.val().grad(&grads).is_none());
        assert!(net.fc1.weight.val().grad(&grads).is_some());
    }

    /// LeNet-5's five layers have its shapes, and a batch of digits comes out as logits.
    #[test]
    fn lenet_has_lenet5_shapes() {
        let device = Device::flex();
        let net = SmallCnn::lenet(5, &device);
        assert_eq!(net.conv1.weight.dims(), [6, 1, 5, 5]);
        assert_eq!(net.conv2.weight.dims(), [16, 6, 5, 5]);
        assert_eq!(net.fc1.weight.dims(), [400, 120]);
        assert_eq!(net.fc2.weight.dims(), [120, 84]);
        assert_eq!(net.out.weight.dims(), [84, 5]);
        assert_eq!(net.forward(Tensor::<2>::ones([3, INPUT], &device)).dims(), [3, 5]);
        assert_eq!("lenet".parse::<StudyArch>().unwrap(), StudyArch::Lenet);
        assert_eq!("resnet18".parse::<StudyArch>().unwrap(), StudyArch::ResNet18);
        assert!("resnet50".parse::<StudyArch>().unwrap_err().to_string().contains("resnet18"));
    }

    /// Every float tensor of `m` (parameters and BatchNorm statistics), in visiting order.
    fn values<M: Module>(m: &M) -> Vec<f32> {
        struct Values(Vec<f32>);
        impl burn::module::ModuleVisitor for Values {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
                self.0.extend(p.val().into_data().try_to_vec::<f32>().unwrap());
            }
        }
        let mut v = Values(Vec::new());
        m.visit(&mut v);
        v.0
    }

    /// ResNet-18's six groups' values: stem, layer1 … layer4, fc.
    fn resnet_groups(net: &StudyNet) -> Vec<Vec<f32>> {
        let StudyNet::ResNet(r) = net else { panic!("not a ResNet") };
        vec![[values(&r.conv1), values(&r.bn1)].concat(), values(&r.layer1), values(&r.layer2), values(&r.layer3), values(&r.layer4), values(&r.fc)]
    }

    /// ResNet-18 at stage granularity: boundary n copies exactly the first n groups (weights and
    /// BatchNorm statistics), and freezing them stops their gradients and keeps their BatchNorm
    /// statistics through a training step while the groups above train.
    #[test]
    fn resnet18_transplant_copies_the_first_n_stages_and_freezing_holds_them() {
        let device = Device::flex();
        let train_device = device.clone().autodiff();
        assert_eq!(StudyArch::ResNet18.boundaries(), 1..6);
        let batch = || Tensor::<2>::random([4, INPUT], burn::tensor::Distribution::Uniform(0.0, 1.0), &train_device);
        // A base whose BatchNorm statistics have moved (one training-mode forward), so copying
        // them is visible.
        device.seed(1);
        let base = StudyNet::init(StudyArch::ResNet18, 5, &device).train();
        assert_eq!(base.forward(batch()).dims(), [4, 5]);
        let base = base.valid();
        device.seed(2);
        let fresh = StudyNet::init(StudyArch::ResNet18, 5, &device);
        let (b, f) = (resnet_groups(&base), resnet_groups(&fresh));
        assert_eq!(b.len(), StudyArch::ResNet18.groups().len());
        for n in StudyArch::ResNet18.boundaries() {
            let t = resnet_groups(&fresh.clone().transplant(&base, n));
            for g in 0..6 {
                if g < n {
                    assert!(t[g] == b[g], "n = {n}: group {g} is the base's");
                } else {
                    assert!(t[g] == f[g] && t[g] != b[g], "n = {n}: group {g} stays the new network's");
                }
            }
        }
        // Frozen stem and layer1: no gradients, and their BatchNorm statistics stay put through
        // a training-mode step; layer2 (trainable) gets gradients and moves its statistics.
        let net = engine::stable_ids(fresh.clone().transplant(&base, 2)).train().freeze_first(2);
        let before = resnet_groups(&net.valid());
        let grads = net.forward(batch()).sum().backward();
        let after = resnet_groups(&net.valid());
        assert!(before[0] == after[0] && before[1] == after[1], "frozen groups' BatchNorm statistics unchanged");
        assert!(before[2] != after[2], "layer2's BatchNorm trains");
        let StudyNet::ResNet(r) = &net else { unreachable!() };
        assert!(r.conv1.weight.val().grad(&grads).is_none() && r.bn1.gamma.val().grad(&grads).is_none());
        assert!(r.layer1.iter().all(|block| block.conv2.weight.val().grad(&grads).is_none() && block.bn2.gamma.val().grad(&grads).is_none()));
        assert!(r.layer2[0].conv1.weight.val().grad(&grads).is_some() && r.fc.as_ref().unwrap().weight.val().grad(&grads).is_some());
    }

    #[test]
    fn findings_read_the_three_patterns() {
        let mut means = vec![("baseB".to_string(), 0, 0.90, 0.0)];
        for (n, anb, bnb, plus) in [(1, 0.90, 0.90, 0.92), (2, 0.88, 0.85, 0.92), (3, 0.84, 0.86, 0.91), (4, 0.80, 0.90, 0.91)] {
            means.push(("AnB".into(), n, anb, 0.0));
            means.push(("BnB".into(), n, bnb, 0.0));
            means.push(("AnB+".into(), n, plus, 0.0));
        }
        let f = findings(&means);
        assert_eq!(f.iter().map(|x| x.1).collect::<Vec<_>>(), vec![true, true, true], "{f:?}");
        means.iter_mut().filter(|m| m.0 == "AnB+").for_each(|m| m.2 = 0.85);
        assert!(!findings(&means)[2].1);
    }
}
