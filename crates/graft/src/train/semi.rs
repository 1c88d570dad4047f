//! Semi-supervised training of a head on frozen features, or of the head and the trunk's last
//! blocks on the frozen prefix's activations: a few labelled rows and many unlabelled ones
//! (cached trunk activations of images, or stored text embeddings).
//!
//! Every iteration takes a labelled batch of B rows and an unlabelled batch of μ·B rows; an
//! epoch is one pass over the unlabelled set (the labelled set is cycled through in shuffled
//! passes). The loss is the labelled cross-entropy plus λ_u times the method's unlabelled loss:
//! - **pseudo-label** (Lee 2013): the model's own class for an unlabelled row, where its
//!   probability reaches the threshold, is that row's target (on a weak view of it);
//! - **FixMatch** (Sohn et al. 2020): the class predicted on a weak view (flip and shift),
//!   where confident, is the target for a strong view (RandAugment and cutout) of the same image;
//! - **mean teacher** (Tarvainen & Valpola 2017): the squared distance between the student's
//!   class probabilities on one view and those of an exponential moving average of its weights
//!   (the teacher) on another, ramped up over the first epochs; the teacher is what is kept.
//!
//! Views of images are stored activations ([`crate::cache`]): view 0 is the plain image and
//! views 1..=K augmentations, drawn one per row and epoch from a seeded stream; texts have the
//! plain embedding only (the head's dropout is then the only noise). With trainable trunk
//! blocks (`--freeze N`), the stored rows are the frozen prefix's activations ([`Entry::Stage`]):
//! every loss, the unlabelled one included, goes through the trainable blocks, so the strong
//! views change the features themselves and not only the head; the mean teacher then averages
//! every trainable parameter (blocks and head).

use std::path::PathBuf;

use burn::module::{Module, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::engine::{self, EpochEnd, Iteration, Task, Validation};
use super::fit::{EpochMetrics, FitReporter};
use super::guard;
use super::loss::{argmax, cross_entropy};
use super::model::{Grafted, Head};
use super::run::Evaluation;
use super::schedule::LrPlan;
use crate::data::augment::{sample_rng, Augment};
use crate::report::Reporter;
use crate::{GraftError, Result};

/// The semi-supervised method and its own hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SemiMethod {
    /// Targets: the model's confident classes on (weak views of) the unlabelled rows.
    PseudoLabel { threshold: f64 },
    /// Targets from weak views, learnt on strong views.
    Fixmatch { threshold: f64 },
    /// Consistency with an exponential moving average of the weights (`ema` decay), its weight
    /// ramped up as exp(−5(1−t)²) over `rampup_epochs`.
    MeanTeacher { ema: f64, rampup_epochs: f64 },
}

pub const METHODS: &str = "pseudo-label, fixmatch, mean-teacher";

impl SemiMethod {
    /// The method named `name` with the paper's defaults for what `threshold`, `ema` and
    /// `rampup_epochs` leave unset.
    pub fn new(name: &str, threshold: Option<f64>, ema: Option<f64>, rampup_epochs: Option<f64>) -> Result<Self> {
        let unused = |setting: &str, given: bool, method: &str| {
            if given { Err(GraftError::setting(setting, "", format!("the {method} method does not use it"))) } else { Ok(()) }
        };
        match name {
            "pseudo-label" | "pseudo_label" => {
                unused("ema", ema.is_some(), name)?;
                unused("rampup_epochs", rampup_epochs.is_some(), name)?;
                Ok(SemiMethod::PseudoLabel { threshold: threshold.unwrap_or(0.95) })
            }
            "fixmatch" => {
                unused("ema", ema.is_some(), name)?;
                unused("rampup_epochs", rampup_epochs.is_some(), name)?;
                Ok(SemiMethod::Fixmatch { threshold: threshold.unwrap_or(0.95) })
            }
            "mean-teacher" | "mean_teacher" => {
                unused("threshold", threshold.is_some(), name)?;
                Ok(SemiMethod::MeanTeacher { ema: ema.unwrap_or(0.99), rampup_epochs: rampup_epochs.unwrap_or(5.0) })
            }
            _ => Err(GraftError::setting("method", name, format!("expected one of {METHODS}"))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SemiMethod::PseudoLabel { .. } => "pseudo-label",
            SemiMethod::Fixmatch { .. } => "fixmatch",
            SemiMethod::MeanTeacher { .. } => "mean-teacher",
        }
    }
}

/// `graft fit --unlabelled DIR --method …`: everything semi-supervised training adds to a fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemiConfig {
    /// Unlabelled images (a folder, searched recursively; class sub-folders are ignored) or
    /// texts (a `.txt` folder, or a CSV with a `text` column).
    pub unlabelled: PathBuf,
    pub method: SemiMethod,
    /// λ_u: the unlabelled loss's weight.
    pub weight: f64,
    /// μ: unlabelled rows per labelled row in an iteration.
    pub ratio: usize,
    /// Augmented views stored per unlabelled image (images only), for each of weak and strong.
    pub views: usize,
    /// The weak views (pseudo-label's and mean teacher's inputs, FixMatch's targets); the
    /// identity reads the plain rows and stores no views.
    pub weak: Augment,
    /// FixMatch's strong views.
    pub strong: Augment,
    /// Distribution alignment (Berthelot et al. 2020, ReMixMatch) for pseudo-label and FixMatch:
    /// each unlabelled row's predicted class distribution is multiplied by the labelled class
    /// frequencies over the model's mean prediction on the unlabelled set (measured at the start
    /// of each epoch) and renormalised, before the confident class is taken. Counters the drift
    /// of pseudo-labels towards the classes the model already favours — when the labelled
    /// frequencies are the unlabelled data's; a balanced labelled sample of imbalanced data is
    /// pulled the wrong way. Off unless asked for.
    #[serde(default)]
    pub align: bool,
}

impl SemiConfig {
    pub fn new(unlabelled: PathBuf, method: SemiMethod) -> Self {
        SemiConfig {
            unlabelled,
            method,
            weight: 1.0,
            ratio: 7,
            views: 2,
            weak: "flip,shift:0.125".parse().expect("a valid spec"),
            strong: "flip,shift:0.125,randaugment:2:10,cutout:0.5".parse().expect("a valid spec"),
            align: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, setting: &str, value: String, why: &str| if ok { Ok(()) } else { Err(GraftError::setting(setting, &value, why.to_string())) };
        check(self.weight.is_finite() && self.weight >= 0.0, "unlabelled_weight", self.weight.to_string(), "must be a number, 0 or more")?;
        check((1..=64).contains(&self.ratio), "unlabelled_ratio", self.ratio.to_string(), "must be 1-64 unlabelled rows per labelled row")?;
        check((1..=crate::limits::MAX_CACHE_VIEWS).contains(&self.views), "unlabelled_views", self.views.to_string(), "must be at least 1 (and within graft::limits::MAX_CACHE_VIEWS)")?;
        match self.method {
            SemiMethod::PseudoLabel { threshold } | SemiMethod::Fixmatch { threshold } => {
                check(threshold.is_finite() && (0.0..=1.0).contains(&threshold), "threshold", threshold.to_string(), "must be a probability in [0, 1]")
            }
            SemiMethod::MeanTeacher { ema, rampup_epochs } => {
                check(ema.is_finite() && (0.0..1.0).contains(&ema), "ema", ema.to_string(), "must be in [0, 1)")?;
                check(rampup_epochs.is_finite() && rampup_epochs >= 0.0, "rampup_epochs", rampup_epochs.to_string(), "must be a number of epochs, 0 or more")
            }
        }?;
        relabel(self.weak.validate(), "weak_augment")?;
        relabel(self.strong.validate(), "strong_augment")
    }
}

/// An augmentation error under the name of the setting that holds the spec.
pub fn relabel<T>(result: Result<T>, setting: &str) -> Result<T> {
    result.map_err(|e| match e {
        GraftError::InvalidSetting { value, reason, .. } => GraftError::setting(setting, &value, reason),
        other => other,
    })
}

/// Rows of stored features, read per batch.
pub trait RowSource {
    /// The rows `rows`, concatenated.
    fn gather(&self, rows: &[usize]) -> Result<Vec<f32>>;
    fn width(&self) -> usize;
}

/// Items laid out `views` rows each (row `item·views + view`; view 0 is the plain item).
#[derive(Clone, Copy)]
pub struct Views<'a> {
    pub rows: &'a dyn RowSource,
    pub items: usize,
    pub views: usize,
}

impl Views<'_> {
    /// Rows of `items`: a seeded augmented view each (`stream` tells draws apart), or the plain
    /// row when there are none.
    fn pick(&self, items: &[usize], seed: u64, epoch: usize, stream: u64) -> Vec<usize> {
        items
            .iter()
            .map(|&i| {
                let view = if self.views > 1 { 1 + (sample_rng(seed ^ stream, epoch as u64, i as u64).next_u64() % (self.views as u64 - 1)) as usize } else { 0 };
                i * self.views + view
            })
            .collect()
    }

    fn tensor(&self, rows: &[usize], device: &Device) -> Result<Tensor<2>> {
        Ok(Tensor::from_data(TensorData::new(self.rows.gather(rows)?, [rows.len(), self.rows.width()]), device))
    }
}

/// Where the stored rows enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The head's input: pooled trunk features (a trunk frozen whole) or text embeddings.
    Head,
    /// The activations after the trunk's first `cut` stages (frozen), `shape` ([C, h, w]) per
    /// row: the trainable stages run on them before the head.
    Stage { cut: usize, shape: [usize; 3] },
}

/// A model whose classifier reads a stored row.
pub trait FeatureClassifier: Module {
    /// [N, D] rows entering at `entry` → [N, classes] logits.
    fn classify(&self, x: Tensor<2>, entry: Entry) -> Tensor<2>;
}

/// A head alone reads its input only.
impl FeatureClassifier for Head {
    fn classify(&self, x: Tensor<2>, _entry: Entry) -> Tensor<2> {
        self.forward(x)
    }
}

/// A grafted network: its head reads the pooled features, or its trainable stages the frozen
/// prefix's activations.
impl FeatureClassifier for Grafted {
    fn classify(&self, x: Tensor<2>, entry: Entry) -> Tensor<2> {
        match entry {
            Entry::Head => self.head.forward(x),
            Entry::Stage { cut, shape } => self.forward_from(x, cut, shape),
        }
    }
}

/// The semi-supervised step on features, as the engine's task.
pub struct SemiTask<'a, M: FeatureClassifier> {
    pub semi: &'a SemiConfig,
    pub batch_size: usize,
    pub seed: u64,
    pub plan: LrPlan,
    pub classes: &'a [String],
    /// Where every stored row below enters the model.
    pub entry: Entry,
    pub labelled: Views<'a>,
    pub labels: &'a [usize],
    /// Unlabelled rows: weak views (view 0 plain).
    pub weak: Views<'a>,
    /// Unlabelled rows: strong views (FixMatch; view 0 unused).
    pub strong: Option<Views<'a>>,
    /// Validation rows (view 0 read) and labels.
    pub val: Option<(Views<'a>, &'a [usize])>,
    /// The parameters that train, in groups with their learning-rate multipliers (the head's
    /// at 1; trainable trunk blocks at `body_lr_mult`).
    pub groups: Vec<(Vec<ParamId>, f64)>,
    pub reporter: &'a dyn FitReporter,
    pub device: Device,
    pub train_device: Device,
    /// The mean teacher's averaged weights, for inference.
    pub teacher: Option<M>,
    pub labelled_order: Vec<usize>,
    pub unlabelled_order: Vec<usize>,
    /// Loss sums (labelled, unlabelled), labelled correct and seen, unlabelled confident and seen.
    pub sums: SemiSums,
    /// Distribution alignment's per-class factor this epoch (labelled frequency over the model's
    /// mean prediction on the unlabelled rows).
    pub alignment: Option<Vec<f32>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SemiSums {
    labelled_loss: f64,
    unlabelled_loss: f64,
    correct: usize,
    seen: usize,
    confident: usize,
    unlabelled_seen: usize,
    iterations: usize,
}

impl<M: FeatureClassifier> SemiTask<'_, M> {
    fn unlabelled_batch(&self) -> usize {
        self.batch_size * self.semi.ratio
    }

    /// The teacher's (mean teacher) or the model's own class probabilities for `rows` of
    /// `views`, computed without gradients: [rows × classes], row-major.
    fn targets(&self, model: &M, views: &Views, rows: &[usize]) -> Result<Vec<f32>> {
        let x = views.tensor(rows, &self.device)?;
        let logits = match &self.teacher {
            Some(teacher) => teacher.classify(x, self.entry),
            None => model.valid().classify(x, self.entry),
        };
        Ok(softmax(logits, 1).into_data().try_to_vec::<f32>().unwrap_or_default())
    }

    /// Distribution alignment's factors: the labelled class frequencies over the model's mean
    /// class probabilities on the plain unlabelled rows.
    fn alignment_factors(&self, model: &M) -> Result<Vec<f32>> {
        let classes = self.classes.len();
        let mut mean = vec![0f64; classes];
        let items: Vec<usize> = (0..self.weak.items).collect();
        for chunk in items.chunks(1024) {
            let rows: Vec<usize> = chunk.iter().map(|&i| i * self.weak.views).collect();
            for row in self.targets(model, &self.weak, &rows)?.chunks(classes.max(1)) {
                row.iter().zip(&mut mean).for_each(|(&p, m)| *m += p as f64);
            }
        }
        let mut labelled = vec![0f64; classes];
        self.labels.iter().for_each(|&l| labelled[l] += 1.0);
        let n = self.labels.len().max(1) as f64;
        Ok(mean.iter().zip(&labelled).map(|(&m, &l)| ((l / n) / (m / self.weak.items.max(1) as f64).max(1e-6)) as f32).collect())
    }
}

/// Multiplies each row of probabilities by `factors` and renormalises it.
fn align(probs: &mut [f32], factors: &[f32]) {
    for row in probs.chunks_mut(factors.len().max(1)) {
        row.iter_mut().zip(factors).for_each(|(p, f)| *p *= f);
        let sum: f32 = row.iter().sum();
        if sum > 0.0 {
            row.iter_mut().for_each(|p| *p /= sum);
        }
    }
}

/// Cross-entropy against hard `targets`, each row weighted by `mask` (0 or 1), averaged over
/// all rows (FixMatch's normalisation: unconfident rows count as zero loss).
fn masked_cross_entropy(logits: Tensor<2>, targets: &[usize], mask: &[f32], device: &Device) -> Tensor<1> {
    let [b, c] = logits.dims();
    let mut q = vec![0f32; b * c];
    for (i, (&t, &m)) in targets.iter().zip(mask).enumerate() {
        q[i * c + t] = m;
    }
    let q = Tensor::<2>::from_data(TensorData::new(q, [b, c]), device);
    (q * log_softmax(logits, 1)).sum().neg().div_scalar(b.max(1) as f32)
}

/// Mean teacher's consistency ramp: exp(−5(1−t)²), t the fraction of `rampup_epochs` done.
pub fn rampup(progress_epochs: f64, rampup_epochs: f64) -> f64 {
    if rampup_epochs <= 0.0 {
        return 1.0;
    }
    let t = (progress_epochs / rampup_epochs).clamp(0.0, 1.0);
    (-5.0 * (1.0 - t) * (1.0 - t)).exp()
}

impl<M: FeatureClassifier> Task for SemiTask<'_, M> {
    type Model = M;

    fn iterations(&self) -> usize {
        self.weak.items.div_ceil(self.unlabelled_batch())
    }

    fn begin_epoch(&mut self, model: &M, epoch: usize) -> Result<()> {
        self.alignment = match self.semi.method {
            SemiMethod::PseudoLabel { .. } | SemiMethod::Fixmatch { .. } if self.semi.align => Some(self.alignment_factors(model)?),
            _ => None,
        };
        self.unlabelled_order = engine::epoch_order(self.weak.items, self.seed, epoch);
        // Enough shuffled passes over the labelled rows for the epoch's iterations.
        let need = self.iterations() * self.batch_size;
        self.labelled_order.clear();
        let mut pass = 0;
        while self.labelled_order.len() < need {
            let salt = (epoch as u64).wrapping_mul(1_000_003).wrapping_add(pass);
            self.labelled_order.extend(engine::epoch_order(self.labelled.items, self.seed ^ 0x5e11, salt as usize));
            pass += 1;
        }
        self.sums = SemiSums::default();
        Ok(())
    }

    fn lr(&self, it: &Iteration) -> f64 {
        self.plan.lr_at(it.step)
    }

    fn step(&mut self, model: &M, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let (bs, ub, seed, epoch) = (self.batch_size, self.unlabelled_batch(), self.seed, it.epoch);
        let device = self.train_device.clone();
        let labelled: Vec<usize> = self.labelled_order[it.index * bs..(it.index + 1) * bs].to_vec();
        let unlabelled: Vec<usize> = self.unlabelled_order[it.index * ub..((it.index + 1) * ub).min(self.unlabelled_order.len())].to_vec();
        let targets: Vec<usize> = labelled.iter().map(|&i| self.labels[i]).collect();

        // Labelled: cross-entropy on a (view of a) labelled row.
        let rows = self.labelled.pick(&labelled, seed, epoch, 0);
        let logits = model.classify(self.labelled.tensor(&rows, &device)?, self.entry); // [B, classes]
        let supervised = cross_entropy(logits.clone(), &targets, 0.0, None, &device);
        self.sums.correct += argmax(logits.detach()).iter().zip(&targets).filter(|(p, t)| p == t).count();
        self.sums.seen += labelled.len();

        // Unlabelled: the method's loss on μ·B rows.
        let weak_rows = self.weak.pick(&unlabelled, seed, epoch, 1);
        let weak = self.weak.tensor(&weak_rows, &device)?; // [μB, D]
        let unsupervised = match &self.semi.method {
            SemiMethod::PseudoLabel { threshold } | SemiMethod::Fixmatch { threshold } => {
                let mut probs = self.targets(model, &self.weak, &weak_rows)?;
                if let Some(factors) = &self.alignment {
                    align(&mut probs, factors);
                }
                let classes = self.classes.len();
                let (mut pseudo, mut mask) = (Vec::with_capacity(unlabelled.len()), Vec::with_capacity(unlabelled.len()));
                for row in probs.chunks(classes.max(1)) {
                    let (best, p) = row.iter().enumerate().fold((0, f32::MIN), |acc, (k, &p)| if p > acc.1 { (k, p) } else { acc });
                    pseudo.push(best);
                    mask.push(if p as f64 >= *threshold { 1.0 } else { 0.0 });
                }
                self.sums.confident += mask.iter().filter(|&&m| m > 0.0).count();
                let input = match (&self.semi.method, &self.strong) {
                    (SemiMethod::Fixmatch { .. }, Some(strong)) => strong.tensor(&strong.pick(&unlabelled, seed, epoch, 2), &device)?,
                    _ => weak,
                };
                masked_cross_entropy(model.classify(input, self.entry), &pseudo, &mask, &device)
            }
            SemiMethod::MeanTeacher { rampup_epochs, .. } => {
                // Another weak view for the teacher than for the student.
                let other = self.weak.pick(&unlabelled, seed, epoch, 3);
                let student = softmax(model.classify(weak, self.entry), 1); // [μB, classes]
                let [n, classes] = student.dims();
                // The teacher's probabilities: a constant of the loss.
                let teacher = Tensor::<2>::from_data(TensorData::new(self.targets(model, &self.weak, &other)?, [n, classes]), &device);
                let progress = epoch as f64 + it.index as f64 / self.iterations().max(1) as f64;
                let ramp = rampup(progress, *rampup_epochs);
                (student - teacher).powi_scalar(2).sum().div_scalar(n.max(1) as f32).mul_scalar(ramp as f32)
            }
        };
        self.sums.unlabelled_seen += unlabelled.len();
        let loss = supervised.clone() + unsupervised.clone().mul_scalar(self.semi.weight as f32);
        let (sup, unsup): (f32, f32) = (supervised.into_scalar(), unsupervised.into_scalar());
        guard::check_loss("training loss", (sup + self.semi.weight as f32 * unsup) as f64, epoch + 1, lr)?;
        self.sums.labelled_loss += sup as f64;
        self.sums.unlabelled_loss += unsup as f64;
        self.sums.iterations += 1;
        let mut grads = loss.backward();
        Ok(self.groups.iter().map(|(ids, mult)| (GradientsParams::from_params(&mut grads, model, ids), *mult)).collect())
    }

    fn end_epoch(&mut self, model: &M, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let validation = match &self.val {
            Some((val, labels)) if !labels.is_empty() => {
                let all: Vec<usize> = (0..labels.len()).collect();
                let (mut loss, mut predicted) = (0f64, Vec::new());
                for chunk in all.chunks(256) {
                    let rows: Vec<usize> = chunk.iter().map(|&i| i * val.views).collect();
                    let logits = model.valid().classify(val.tensor(&rows, &self.device)?, self.entry);
                    let targets: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
                    let l: f32 = cross_entropy(logits.clone(), &targets, 0.0, None, &self.device).into_scalar();
                    loss += l as f64 * chunk.len() as f64;
                    predicted.extend(argmax(logits));
                }
                let eval = Evaluation::from_predictions(self.classes, labels, &predicted);
                Some(Validation { loss: loss / labels.len() as f64, accuracy: eval.accuracy, confusion: eval.confusion })
            }
            _ => None,
        };
        let s = self.sums;
        let iterations = s.iterations.max(1) as f64;
        let metrics = EpochMetrics {
            epoch,
            stage: 1,
            lr,
            train_loss: s.labelled_loss / iterations,
            train_accuracy: s.correct as f64 / s.seen.max(1) as f64,
            val_loss: validation.as_ref().map(|v| v.loss),
            val_accuracy: validation.as_ref().map(|v| v.accuracy),
            seconds,
        };
        let mut scalars = super::fit::scalars(&metrics);
        let mut record = serde_json::to_value(&metrics).expect("metrics serialize");
        let unlabelled_loss = s.unlabelled_loss / iterations;
        record["semi_method"] = self.semi.method.name().into();
        record["unlabelled_loss"] = unlabelled_loss.into();
        scalars.push(("loss/unlabelled".into(), unlabelled_loss));
        if matches!(self.semi.method, SemiMethod::PseudoLabel { .. } | SemiMethod::Fixmatch { .. }) {
            // The fraction of unlabelled rows confident enough to be learnt from.
            let confident = s.confident as f64 / s.unlabelled_seen.max(1) as f64;
            record["confident"] = confident.into();
            scalars.push(("unlabelled/confident".into(), confident));
        }
        Ok(EpochEnd { validation, scalars, record })
    }

    fn report(&self, _reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
        if let Ok(m) = serde_json::from_value::<EpochMetrics>(record.clone()) {
            self.reporter.epoch(&m, total);
        }
    }

    fn ema_decay(&self) -> Option<f64> {
        match self.semi.method {
            SemiMethod::MeanTeacher { ema, .. } => Some(ema),
            _ => None,
        }
    }

    fn see_teacher(&mut self, teacher: &M) {
        self.teacher = Some(teacher.valid());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alignment moves probability towards the classes the model under-predicts.
    #[test]
    fn alignment_rebalances_and_keeps_rows_normalised() {
        let mut probs = vec![0.6f32, 0.4, 0.5, 0.5];
        // The model predicts class 0 twice as often as the labels have it: halve it.
        align(&mut probs, &[0.5, 1.5]);
        assert!((probs[0] - 0.3 / 0.9).abs() < 1e-6 && (probs[0] + probs[1] - 1.0).abs() < 1e-6, "{probs:?}");
        assert!(probs[2] < probs[3]);
    }

    #[test]
    fn rampup_goes_from_small_to_one() {
        assert!(rampup(0.0, 5.0) < 0.01);
        assert!((rampup(5.0, 5.0) - 1.0).abs() < 1e-12);
        assert!((rampup(9.0, 5.0) - 1.0).abs() < 1e-12);
        assert!(rampup(2.0, 5.0) < rampup(3.0, 5.0));
        assert_eq!(rampup(0.0, 0.0), 1.0);
    }

    #[test]
    fn methods_parse_with_their_defaults_and_refuse_foreign_settings() {
        assert_eq!(SemiMethod::new("fixmatch", None, None, None).unwrap(), SemiMethod::Fixmatch { threshold: 0.95 });
        assert_eq!(SemiMethod::new("pseudo-label", Some(0.9), None, None).unwrap(), SemiMethod::PseudoLabel { threshold: 0.9 });
        assert_eq!(SemiMethod::new("mean-teacher", None, None, None).unwrap(), SemiMethod::MeanTeacher { ema: 0.99, rampup_epochs: 5.0 });
        let err = SemiMethod::new("mean-teacher", Some(0.9), None, None).unwrap_err().to_string();
        assert!(err.contains("threshold"), "{err}");
        let err = SemiMethod::new("fixmatch", None, Some(0.9), None).unwrap_err().to_string();
        assert!(err.contains("ema"), "{err}");
        assert!(SemiMethod::new("mixmatch", None, None, None).unwrap_err().to_string().contains("pseudo-label"));
        let mut c = SemiConfig::new("u".into(), SemiMethod::Fixmatch { threshold: 1.5 });
        assert!(c.validate().unwrap_err().to_string().contains("threshold"));
        c.method = SemiMethod::Fixmatch { threshold: 0.95 };
        c.ratio = 0;
        assert!(c.validate().unwrap_err().to_string().contains("unlabelled_ratio"));
        c.ratio = 7;
        assert!(c.validate().is_ok());
        let toml = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<SemiConfig>(&toml).unwrap(), c, "{toml}");
    }

    /// Unconfident rows add nothing; the loss is the confident rows' cross-entropy over all rows.
    #[test]
    fn masked_cross_entropy_counts_only_confident_rows() {
        let device = Device::default();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 2.0], [2, 2]), &device);
        let both: f32 = masked_cross_entropy(logits.clone(), &[0, 0], &[1.0, 1.0], &device).into_scalar();
        let first: f32 = masked_cross_entropy(logits.clone(), &[0, 0], &[1.0, 0.0], &device).into_scalar();
        let none: f32 = masked_cross_entropy(logits, &[0, 0], &[0.0, 0.0], &device).into_scalar();
        let (good, bad) = ((1.0 + (-2f32).exp()).ln(), (1.0 + 2f32.exp()).ln());
        assert!((both - (good + bad) / 2.0).abs() < 1e-5, "{both}");
        assert!((first - good / 2.0).abs() < 1e-5, "{first}");
        assert_eq!(none, 0.0);
    }
}
