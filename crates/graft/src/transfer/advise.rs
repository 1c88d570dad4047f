//! `graft advise`: which of the four classic transfer scenarios is this dataset in, measured
//! rather than guessed, and what `graft fit` should do about it.
//!
//! * Size: the median number of images per class.
//! * Similarity to the pretraining data: the mean normalised entropy H(p)/ln K of the pretrained
//!   K-way (ImageNet) classifier's predictions on a sample of the images. On natural photos the
//!   classifier is confident (low entropy); on images unlike anything in ImageNet (digits, X-rays,
//!   spectrograms) it spreads its mass over many classes. It needs no reference data set, only the
//!   model's own classifier, and costs one forward pass on a small sample (shared with
//!   `graft probe` and `graft fit` through the feature cache).
//!
//! The four answers (the CS231n transfer-learning notes, after Yosinski et al. 2014):
//! small & similar → a linear classifier on the frozen top features; large & similar →
//! fine-tune everything gently; small & different → keep the generic early blocks frozen, retrain
//! the specific top blocks gently; large & different → fine-tune the whole network at full rate.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::stages::stage_features;
use crate::data::folder::{ImageFolder, Sample, Skipped};
use crate::report::Reporter;
use crate::train::config::{FitConfig, Stage};
use crate::zoo::layers::{numbered_blocks, FreezeSpec};
use crate::zoo::Pretrained;
use crate::{GraftError, Result};

/// Below this median number of images per class a dataset counts as small. A convention (the
/// order of magnitude where fine-tuning millions of weights starts to overfit), not a measurement.
pub const SMALL_BELOW: f64 = 100.0;

/// Below this mean normalised prediction entropy a dataset counts as similar to ImageNet.
/// Measured with efficientnet-lite0 (docs/transferability.md): the four reference photos
/// 0.372, Fashion-MNIST 0.564 (200 training images) and 0.584 (200 test images), MNIST 0.688
/// and 0.691; the threshold is the midpoint between the photos and Fashion-MNIST. Single images
/// overlap (two of the photos score 0.57 and 0.59): only a dataset's mean is meaningful.
pub const SIMILAR_BELOW: f64 = 0.47;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    SmallSimilar,
    SmallDifferent,
    LargeSimilar,
    LargeDifferent,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::SmallSimilar => "small-similar",
            Strategy::SmallDifferent => "small-different",
            Strategy::LargeSimilar => "large-similar",
            Strategy::LargeDifferent => "large-different",
        }
    }
}

/// The `graft fit` settings a strategy maps to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitSettings {
    pub freeze: String,
    pub stages: Vec<Stage>,
    pub body_lr_mult: f64,
    pub lr: f64,
    pub epochs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    pub strategy: Strategy,
    pub reasons: Vec<String>,
    pub model: String,
    pub classes: usize,
    pub images: usize,
    /// Median images per class.
    pub images_per_class: f64,
    pub min_images_per_class: usize,
    /// Mean H(p)/ln K of the pretrained classifier on `entropy_sample` images.
    pub mean_normalized_entropy: f64,
    pub entropy_sample: usize,
    pub small_below: f64,
    pub similar_below: f64,
    pub settings: FitSettings,
    pub skipped: Vec<Skipped>,
}

/// Up to `n` samples, spread evenly over the classes, seeded.
fn sample_per_class(samples: &[Sample], classes: usize, n: usize, seed: u64) -> Vec<Sample> {
    let per = n.div_ceil(classes.max(1)).max(1);
    let mut by_class: BTreeMap<usize, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_class.entry(s.label).or_default().push(s);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (_, mut list) in by_class {
        list.shuffle(&mut rng);
        out.extend(list.into_iter().take(per).cloned());
    }
    out
}

/// Mean normalised entropy of softmax(logits) rows, logits [n, K].
fn mean_normalized_entropy(logits: Tensor<2>) -> f64 {
    let [n, k] = logits.dims();
    let p: Vec<f32> = softmax(logits, 1).into_data().try_to_vec::<f32>().unwrap_or_default();
    let total: f64 = p.chunks(k).map(|row| -row.iter().filter(|&&q| q > 0.0).map(|&q| q as f64 * (q as f64).ln()).sum::<f64>()).sum();
    total / n.max(1) as f64 / (k as f64).ln()
}

/// Which scenario a dataset is in, from its two measures.
pub fn decide(images_per_class: f64, entropy: f64) -> Strategy {
    match (images_per_class < SMALL_BELOW, entropy < SIMILAR_BELOW) {
        (true, true) => Strategy::SmallSimilar,
        (true, false) => Strategy::SmallDifferent,
        (false, true) => Strategy::LargeSimilar,
        (false, false) => Strategy::LargeDifferent,
    }
}

/// The fit settings of a strategy, for a trunk of `blocks` blocks.
pub fn settings(strategy: Strategy, blocks: usize) -> FitSettings {
    let stage = |train: &str, epochs: usize| Stage { train: train.into(), epochs, lr: None };
    match strategy {
        // Features already fit the task and there is too little data to move them: linear head.
        Strategy::SmallSimilar => FitSettings { freeze: "all".into(), stages: vec![], body_lr_mult: 1.0, lr: 1e-3, epochs: 20 },
        // The top blocks are ImageNet-specific: retrain them, gently, on top of frozen generic ones.
        Strategy::SmallDifferent => FitSettings {
            freeze: "all".into(),
            stages: vec![stage("head", 5), stage(&format!("top{}", (blocks / 4).max(1)), 10)],
            body_lr_mult: 0.1,
            lr: 1e-3,
            epochs: 15,
        },
        // Enough data to adapt everything without overfitting, and good weights to start from.
        Strategy::LargeSimilar => FitSettings { freeze: "all".into(), stages: vec![stage("head", 3), stage("all", 7)], body_lr_mult: 0.1, lr: 1e-3, epochs: 10 },
        // The pretrained weights are only an initialisation: fine-tune everything at full rate.
        Strategy::LargeDifferent => FitSettings { freeze: "all".into(), stages: vec![stage("head", 2), stage("all", 10)], body_lr_mult: 1.0, lr: 1e-3, epochs: 12 },
    }
}

impl Advice {
    /// Writes the strategy's settings into a fit config (flags given by the user are applied
    /// after this, so they still win) and records the choice.
    pub fn apply(&self, config: &mut FitConfig) -> Result<()> {
        config.freeze = self.settings.freeze.parse::<FreezeSpec>()?;
        config.stages = self.settings.stages.clone();
        config.body_lr_mult = self.settings.body_lr_mult;
        config.lr = self.settings.lr;
        config.epochs = self.settings.epochs;
        config.strategy = Some(format!(
            "auto:{} ({:.0} images per class, mean normalised entropy {:.3})",
            self.strategy.name(),
            self.images_per_class,
            self.mean_normalized_entropy
        ));
        Ok(())
    }
}

/// Measures `data` and advises. `sample`: images (spread over classes) for the entropy.
#[allow(clippy::too_many_arguments)]
pub fn advise(model: &Pretrained, data: &Path, sample: usize, seed: u64, home: &Path, batch: usize, device: &Device, reporter: &dyn Reporter) -> Result<Advice> {
    let folder = ImageFolder::scan(data)?;
    let counts = folder.class_counts();
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    let median = match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0,
    };
    let picked = sample_per_class(&folder.samples, folder.classes.len(), sample.max(1), seed);
    // `--stages topK` counts the numbered blocks of the layer table, as `graft fit` does.
    let blocks = numbered_blocks(&model.config.layer_rows());
    let last = model.config.num_stages() - 1;
    let features = stage_features(model, &picked, &[last], home, batch, device, reporter)?;
    let (width, rows) = &features.stages[0];
    let n = features.kept.len();
    if n == 0 {
        return Err(GraftError::Data { path: data.into(), reason: "no readable images to measure".into() });
    }
    let pooled = Tensor::<2>::from_data(TensorData::new(rows.clone(), [n, *width]), device); // [n, D]
    let logits = model
        .net
        .classify(pooled) // [n, K]
        .ok_or_else(|| GraftError::setting("model", model.spec.id, "the model has no pretrained classifier to measure similarity with"))?;
    let k = logits.dims()[1];
    let entropy = mean_normalized_entropy(logits);
    let strategy = decide(median, entropy);
    let small = median < SMALL_BELOW;
    let similar = entropy < SIMILAR_BELOW;
    let settings = settings(strategy, blocks);
    let mut reasons = vec![
        format!(
            "{median} images per class (median of {} classes, smallest {}) is {} the {SMALL_BELOW} that counts as small: {}",
            counts.len(),
            sorted.first().copied().unwrap_or(0),
            if small { "below" } else { "at or above" },
            if small { "too little data to fine-tune many weights without overfitting" } else { "enough data to fine-tune the trunk" }
        ),
        format!(
            "mean normalised entropy of the pretrained {k}-way classifier on {n} images is {entropy:.3}, {} the {SIMILAR_BELOW} threshold: {}",
            if similar { "below" } else { "at or above" },
            if similar { "the images look like its pretraining data, so its top features fit" } else { "the images are unlike its pretraining data, so its top (specific) features fit poorly" }
        ),
    ];
    reasons.push(match strategy {
        Strategy::SmallSimilar => "train a linear classifier on the frozen top features".to_string(),
        Strategy::SmallDifferent => format!("keep the generic early blocks frozen; train the head, then the top {} blocks at 0.1× the learning rate (`graft probe` shows which depth transfers best)", (blocks / 4).max(1)),
        Strategy::LargeSimilar => "train the head, then fine-tune the whole network at 0.1× the learning rate".to_string(),
        Strategy::LargeDifferent => "train the head, then fine-tune the whole network at the full learning rate (the weights are an initialisation)".to_string(),
    });
    Ok(Advice {
        strategy,
        reasons,
        model: model.spec.id.into(),
        classes: counts.len(),
        images: folder.samples.len(),
        images_per_class: median,
        min_images_per_class: sorted.first().copied().unwrap_or(0),
        mean_normalized_entropy: entropy,
        entropy_sample: n,
        small_below: SMALL_BELOW,
        similar_below: SIMILAR_BELOW,
        settings,
        skipped: features.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_scenarios() {
        assert_eq!(decide(20.0, 0.2), Strategy::SmallSimilar);
        assert_eq!(decide(20.0, 0.8), Strategy::SmallDifferent);
        assert_eq!(decide(500.0, 0.2), Strategy::LargeSimilar);
        assert_eq!(decide(500.0, 0.8), Strategy::LargeDifferent);
    }

    #[test]
    fn entropy_is_zero_for_certain_and_one_for_uniform() {
        let device = crate::device::default_device();
        let certain = Tensor::<2>::from_data(TensorData::new(vec![100f32, 0.0, 0.0, 0.0], [1, 4]), &device);
        assert!(mean_normalized_entropy(certain) < 1e-6);
        let uniform = Tensor::<2>::from_data(TensorData::new(vec![1f32; 8], [2, 4]), &device);
        assert!((mean_normalized_entropy(uniform) - 1.0).abs() < 1e-6);
    }
}
