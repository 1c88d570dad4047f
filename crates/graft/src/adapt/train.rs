//! The adaptation trainer behind `graft adapt`.
//!
//! Each iteration draws a batch from the source (with labels) and one from the target (without).
//! The joint methods run both batches through the network together (so BatchNorm sees both
//! domains, as in TLlib) and minimise ℓ = CE(source) + λ·ℓ_A(source, target); ADDA pre-trains
//! on the source, then trains a copy of the encoder on the target against a discriminator while
//! the classifier stays fixed.
//!
//! Model selection never reads target labels: after every epoch the model is scored on a held-out
//! stratified part of the source (`--val-split`), and the epoch chosen by `--select` is kept:
//! the best source validation accuracy (`source-val`, the default), the lowest DEV risk (`dev`:
//! the source validation loss weighted by p(target|x)/p(source|x) from a domain classifier on
//! the features, with a control variate; You et al. 2019) or the last epoch. ADDA's target
//! encoder is not meant to work on the source, so its adversarial phase keeps its last epoch
//! unless `--select` says otherwise (the source pre-training always picks its epoch on the source
//! validation split). The target test set, when given, is evaluated once, at the end, on the kept
//! model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::nn::DropoutConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::config::{AdaptConfig, AddaObjective, LambdaSchedule, LrSchedule, Method, Select, MDD_REVERSAL_MAX};
use super::data::{Domain, DomainSpec, Featurizer, InputSpec};
use super::autodial;
use super::dsn::{DsnEpoch, DsnInput, DsnNets, DsnSums, DsnWeights};
use super::losses;
use super::model::{AdaptNet, AdvHead, Discriminator, Trainable};
use crate::classic::{Classic, ClassicKind, Penalty};
use crate::data::augment::sample_rng;
use crate::data::folder::{stratified_split, Sample, Skipped};
use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::train::checkpoint;
use crate::train::config::Monitor;
use crate::train::engine::{self, Engine, EpochEnd, Iteration, Keep, Phase, Task, Validation};
use crate::train::guard;
use crate::train::loss::{argmax, cross_entropy};
use crate::train::run::{top1, Evaluation};
use crate::zoo::{ModelSpec, Pretrained};
use crate::{GraftError, Result};

/// CDAN uses the full multilinear map up to this many dimensions, a randomized one (of
/// [`CDAN_RANDOM_DIM`]) beyond (TLlib's rule).
pub const CDAN_FULL_MAX: usize = 4096;
pub const CDAN_RANDOM_DIM: usize = 1024;

/// Source training and target images DEV's domain classifier sees per epoch (each domain).
pub const DEV_SAMPLES: usize = 1000;

/// Learning rate of ADDA's adversarial phase with the GAN objective (Adam, as in the ADDA paper).
pub const ADDA_LR: f64 = 2e-4;

/// Where the reversed gradient's ramp ends in ADDA's reversal objective (TLlib's `hi`).
pub const ADDA_REVERSAL_MAX: f64 = 2.0;

/// What is needed to rebuild an adapted model without its training data (`model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptInfo {
    pub method: Method,
    /// `lenet` or the zoo model whose frozen trunk feeds the bottleneck.
    pub backbone: String,
    /// sha256 of the zoo weights the trunk came from.
    pub weights_sha256: Option<String>,
    pub classes: Vec<String>,
    pub input: InputSpec,
    /// Width of the rows the network takes (784 for LeNet, the trunk's feature width otherwise).
    pub input_width: usize,
    pub bottleneck: usize,
}

impl AdaptInfo {
    /// The network with fresh weights (to be overwritten by a checkpoint).
    pub fn build(&self, device: &Device) -> AdaptNet {
        let net = AdaptNet::init(self.backbone == "lenet", self.input_width, self.bottleneck, self.classes.len(), device);
        if self.method == Method::Autodial {
            net.with_dial(autodial::DEFAULT_ALPHA_INIT, device)
        } else {
            net
        }
    }
}

/// One epoch's figures (`metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdaptEpoch {
    pub epoch: usize,
    /// `pretrain` (ADDA's source phase) or `adapt`.
    pub phase: String,
    pub lr: f64,
    /// The adaptation weight at the end of the epoch (for adversarial methods: the coefficient
    /// of the reversed gradient times `--lambda`).
    pub lambda: f64,
    /// Source cross-entropy (ADDA's adversarial phase: the target encoder's GAN loss).
    pub cls_loss: f64,
    /// λ-weighted adaptation loss (ADDA's adversarial phase: the discriminator's loss).
    pub transfer_loss: f64,
    pub source_train_accuracy: f64,
    /// Discriminator accuracy on source + target batches (adversarial methods).
    pub domain_accuracy: Option<f64>,
    pub source_val_loss: Option<f64>,
    pub source_val_accuracy: Option<f64>,
    /// The criterion that picks the phase's kept epoch (`source-val`, `dev`, `last`).
    #[serde(default)]
    pub select: Option<String>,
    /// Its value at this epoch: the source validation accuracy (higher is better), the DEV risk
    /// (lower is better); none for `last`.
    #[serde(default)]
    pub select_value: Option<f64>,
    /// DAAN: the dynamic factor of this epoch and what its discriminators measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daan: Option<DaanEpoch>,
    /// AutoDIAL: each alignment layer's α and the target entropy of this epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autodial: Option<AutodialEpoch>,
    /// DSN: the epoch's four loss terms, unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn: Option<DsnEpoch>,
    pub seconds: f64,
}

/// AutoDIAL's figures of one epoch (`metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AutodialEpoch {
    /// α of each alignment layer at the end of the epoch (clamped to [0.5, 1]), by layer.
    pub alpha: BTreeMap<String, f64>,
    /// Mean entropy of the target predictions over the epoch (before the weight λ).
    pub entropy: f64,
}

/// DAAN's figures of one epoch (`metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaanEpoch {
    /// The factor ω this epoch trained with: (1 − ω)·global + ω·local.
    pub omega: f64,
    /// Proxy A-distance 2(1 − 2ε) of the global discriminator over the epoch.
    pub global_a_distance: f64,
    /// The same, averaged over the classes' local discriminators.
    pub local_a_distance: f64,
    /// The factor the next epoch trains with (the same as `omega` when it is fixed).
    pub next_omega: f64,
}

impl AdaptEpoch {
    pub fn line(&self, epochs: usize) -> String {
        let mut s = format!(
            "{} epoch {}/{} - {:.1}s - cls {:.4} - transfer {:.4} - src acc {:.4}",
            self.phase, self.epoch, epochs, self.seconds, self.cls_loss, self.transfer_loss, self.source_train_accuracy
        );
        if let Some(d) = self.domain_accuracy {
            s.push_str(&format!(" - domain acc {d:.3}"));
        }
        if let (Some(l), Some(a)) = (self.source_val_loss, self.source_val_accuracy) {
            s.push_str(&format!(" - src val loss {l:.4} - src val acc {a:.4}"));
        }
        if let (Some(c), Some(v)) = (&self.select, self.select_value) {
            if c != "source-val" {
                s.push_str(&format!(" - {c} {v:.4}"));
            }
        }
        if let Some(d) = &self.daan {
            s.push_str(&format!(" - ω {:.3} (A-distance global {:.3}, local {:.3})", d.omega, d.global_a_distance, d.local_a_distance));
        }
        if let Some(a) = &self.autodial {
            let alphas: Vec<String> = a.alpha.iter().map(|(layer, v)| format!("{layer} {v:.3}")).collect();
            s.push_str(&format!(" - entropy {:.4} - α {}", a.entropy, alphas.join(", ")));
        }
        s.push_str(&format!(" - lr {:.2e} - λ {:.3}", self.lr, self.lambda));
        s
    }
}

/// What `adapt` reports (`summary.json`, and `graft adapt --json`).
#[derive(Debug, Clone, Serialize)]
pub struct AdaptSummary {
    pub run: PathBuf,
    pub method: Method,
    pub backbone: String,
    pub source: String,
    pub target: String,
    pub target_test: Option<String>,
    pub epochs: usize,
    /// The kept epoch (for ADDA: of the adversarial phase, by default its last; see `--select`).
    pub best_epoch: usize,
    /// Accuracy of the kept model on the held-out source split (`None` with `--val-split 0`).
    pub source_val_accuracy: Option<f64>,
    /// Accuracy of the kept model on the target test set, when one was given.
    pub target_test_accuracy: Option<f64>,
    /// Per-class accuracy and confusion matrix on the target test set.
    pub target_test_evaluation: Option<Evaluation>,
    pub n_source_train: usize,
    pub n_source_val: usize,
    pub n_target: usize,
    pub n_target_test: usize,
    pub iterations: usize,
    pub lambda: f64,
    pub train_seconds: f64,
    pub wall_seconds: f64,
    pub skipped: Vec<Skipped>,
}

/// An endless, reshuffled stream of batches over `n` indices (each pass a new seeded order; a
/// pass ends when fewer than a batch remain, like PyTorch's `drop_last`).
struct Batches {
    order: Vec<usize>,
    pos: usize,
    rng: StdRng,
}

impl Batches {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        Self { order, pos: 0, rng }
    }

    fn next(&mut self, batch: usize) -> Vec<usize> {
        let b = batch.min(self.order.len());
        if self.pos + b > self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
        }
        let out = self.order[self.pos..self.pos + b].to_vec();
        self.pos += b;
        out
    }
}

fn sgd(config: &AdaptConfig) -> ModuleOptimizer {
    let mut cfg = SgdConfig::new().with_momentum(Some(MomentumConfig::new().with_momentum(config.momentum).with_dampening(0.0).with_nesterov(config.momentum > 0.0)));
    if config.weight_decay > 0.0 {
        cfg = cfg.with_weight_decay(Some(burn::optim::decay::WeightDecayConfig::new(config.weight_decay as f32)));
    }
    cfg.init()
}

use engine::param_ids;

/// Predictions and mean cross-entropy of `net` (an inference copy) on a labelled domain.
pub fn evaluate(net: &AdaptNet, domain: &Domain, batch: usize, device: &Device) -> Result<(f64, Vec<usize>)> {
    let all: Vec<usize> = (0..domain.len()).collect();
    let (mut loss, mut predicted) = (0f64, Vec::with_capacity(all.len()));
    for chunk in all.chunks(batch.max(1)) {
        let logits = net.logits(domain.tensor(chunk, device)?);
        if !domain.labels.is_empty() {
            let targets: Vec<usize> = chunk.iter().map(|&i| domain.labels[i]).collect();
            let l: f32 = cross_entropy(logits.clone(), &targets, 0.0, None, device).into_scalar();
            loss += l as f64 * chunk.len() as f64;
        }
        predicted.extend(argmax(logits));
    }
    Ok((loss / domain.len().max(1) as f64, predicted))
}

/// Everything a training phase needs besides the model.
struct Ctx<'a> {
    config: &'a AdaptConfig,
    source: &'a Domain,
    target: &'a Domain,
    val: &'a Domain,
    classes: &'a [String],
    device: &'a Device,
    train_device: Device,
    steps_per_epoch: usize,
    /// CDAN's fixed random matrices when the full map would be too wide.
    cdan_random: Option<(Tensor<2>, Tensor<2>)>,
}

/// Running sums over an epoch.
#[derive(Default)]
struct Sums {
    cls: f64,
    transfer: f64,
    correct: usize,
    seen: usize,
    domain_hits: usize,
    domain_seen: usize,
    steps: usize,
    /// DAAN: the factor ω of this epoch, and each class's local discriminator's right guesses
    /// (of `domain_seen` rows, as the global one).
    omega: f64,
    local_hits: Vec<usize>,
    /// AutoDIAL: the target entropy summed over the epoch's iterations.
    entropy: f64,
    /// DSN: its loss terms.
    dsn: DsnSums,
}

/// One phase of `graft adapt` as the engine's task: a joint method (or ADDA's source
/// pre-training as `Method::SourceOnly`), or ADDA's adversarial phase against the frozen
/// `source_net`.
struct AdaptTask<'a> {
    ctx: &'a Ctx<'a>,
    method: Method,
    phase: &'static str,
    source_net: Option<&'a AdaptNet>,
    /// ADDA's GAN objective: Adam at `ADDA_LR` (the ADDA paper's).
    gan: bool,
    /// ADDA's adversarial phase trains the target encoder and the discriminator, each on its
    /// own loss (GAN) or both on one (reversal), and never the head: (encoder, discriminator,
    /// both).
    adda_ids: Option<(Vec<ParamId>, Vec<ParamId>, Vec<ParamId>)>,
    source_batches: Batches,
    target_batches: Batches,
    sums: Sums,
    lambda: f64,
    /// How this phase keeps its epoch.
    select: Select,
    /// DAAN's dynamic factor for the coming epoch (0.5 at the start, as the authors').
    omega: f64,
}

impl<'a> AdaptTask<'a> {
    /// The task of a phase whose batch streams are seeded `seed`; a phase resumed after
    /// `steps_done` of its iterations replays its streams that far.
    #[allow(clippy::too_many_arguments)]
    fn new(ctx: &'a Ctx<'a>, model: &Trainable, method: Method, phase: &'static str, source_net: Option<&'a AdaptNet>, select: Select, seed: u64, steps_done: usize) -> Self {
        let gan = source_net.is_some() && ctx.config.adda_objective == AddaObjective::Gan;
        let adda_ids = source_net.map(|_| {
            let head = param_ids(&model.net.head);
            let encoder: Vec<ParamId> = param_ids(&model.net).into_iter().filter(|id| !head.contains(id)).collect();
            let disc = model.disc.as_ref().map(param_ids).unwrap_or_default();
            let both = encoder.iter().chain(&disc).copied().collect();
            (encoder, disc, both)
        });
        let mut source_batches = Batches::new(ctx.source.len(), seed ^ 0x5EED_0001);
        let mut target_batches = Batches::new(ctx.target.len(), seed ^ 0x5EED_0002);
        for _ in 0..steps_done {
            source_batches.next(ctx.config.batch_size);
            target_batches.next(ctx.config.batch_size);
        }
        let omega = ctx.config.daan_omega.unwrap_or(0.5);
        AdaptTask { ctx, method, phase, source_net, gan, adda_ids, source_batches, target_batches, sums: Sums::default(), lambda: 0.0, select, omega }
    }

    fn optimizer(&self) -> ModuleOptimizer {
        if self.gan {
            AdamConfig::new().with_beta_1(0.5).with_beta_2(0.999).with_epsilon(1e-8).init()
        } else {
            sgd(self.ctx.config)
        }
    }
}

impl Task for AdaptTask<'_> {
    type Model = Trainable;

    fn iterations(&self) -> usize {
        self.ctx.steps_per_epoch
    }

    fn begin_epoch(&mut self, model: &Trainable, _epoch: usize) -> Result<()> {
        self.sums = Sums { omega: self.omega, local_hits: vec![0; model.local.len()], ..Sums::default() };
        Ok(())
    }

    fn lr(&self, it: &Iteration) -> f64 {
        if self.gan {
            ADDA_LR
        } else {
            self.ctx.lr_at(it.phase_step, it.progress())
        }
    }

    fn step(&mut self, model: &Trainable, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let ctx = self.ctx;
        let ramp = ctx.schedule_at(it.phase_step, it.progress());
        self.lambda = ctx.config.lambda() * ramp;
        let s_idx = self.source_batches.next(ctx.config.batch_size);
        let t_idx = self.target_batches.next(ctx.config.batch_size);
        let sums = &mut self.sums;
        let updates = match (self.source_net, &self.adda_ids) {
            (Some(source_net), Some((_, _, both_ids))) if !self.gan => {
                let loss = ctx.adda_reversal_step(model, source_net, &s_idx, &t_idx, ramp, it.step, sums)?;
                let mut grads = loss.backward();
                vec![(GradientsParams::from_params(&mut grads, model, both_ids), 1.0)]
            }
            (Some(source_net), Some((encoder_ids, disc_ids, _))) => {
                let (loss_d, loss_e) = ctx.adda_step(model, source_net, &s_idx, &t_idx, self.lambda, it.step, sums)?;
                let mut grads_d = loss_d.backward();
                let grads_d = GradientsParams::from_params(&mut grads_d, model, disc_ids);
                let mut grads_e = loss_e.backward();
                let grads_e = GradientsParams::from_params(&mut grads_e, model, encoder_ids);
                // The discriminator steps first, then the encoder (both from this iteration's
                // forward pass).
                vec![(grads_d, 1.0), (grads_e, 1.0)]
            }
            _ => {
                let loss = ctx.step(model, self.method, &s_idx, &t_idx, self.lambda, it.step, sums)?;
                vec![(GradientsParams::from_grads(loss.backward(), model), 1.0)]
            }
        };
        // The sums carry a NaN or infinity on to the end of the epoch.
        guard::check_loss("classification loss", sums.cls, it.epoch + 1, lr)?;
        guard::check_loss("transfer loss (weighted by lambda)", sums.transfer, it.epoch + 1, lr)?;
        Ok(updates)
    }

    fn end_epoch(&mut self, model: &Trainable, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let ctx = self.ctx;
        let validation = if ctx.val.is_empty() {
            None
        } else {
            // AutoDIAL's alignment layers score the source split with the source's statistics.
            let (loss, predicted) = evaluate(&model.net.on_source(), ctx.val, 500, ctx.device)?;
            let eval = Evaluation::from_predictions(ctx.classes, &ctx.val.labels, &predicted);
            Some(Validation { loss, accuracy: eval.accuracy, confusion: eval.confusion })
        };
        // DEV's risk stands in for the validation loss: the phase keeps its lowest.
        let dev = match (&validation, self.select) {
            (Some(_), Select::Dev) => Some(ctx.dev_risk(&model.net, epoch)?),
            _ => None,
        };
        let reverse = match (&validation, self.select) {
            (Some(_), Select::Reverse) => Some(ctx.reverse_accuracy(&model.net, epoch)?),
            _ => None,
        };
        let select_value = match self.select {
            Select::SourceVal => validation.as_ref().map(|v| v.accuracy),
            Select::Dev => dev,
            Select::Reverse => reverse,
            Select::Last => None,
        };
        let sums = &self.sums;
        let n = sums.steps.max(1) as f64;
        let daan = (!model.local.is_empty()).then(|| {
            let error = |hits: usize| 1.0 - hits as f64 / sums.domain_seen.max(1) as f64;
            let local: Vec<f64> = sums.local_hits.iter().map(|&h| error(h)).collect();
            let next_omega = match ctx.config.daan_omega {
                Some(fixed) => fixed,
                None => losses::daan_omega(error(sums.domain_hits), &local, sums.omega),
            };
            DaanEpoch {
                omega: sums.omega,
                global_a_distance: losses::proxy_a_distance(error(sums.domain_hits)),
                local_a_distance: local.iter().map(|&e| losses::proxy_a_distance(e)).sum::<f64>() / local.len() as f64,
                next_omega,
            }
        });
        if let Some(d) = &daan {
            self.omega = d.next_omega;
        }
        let dsn = model.dsn.is_some().then(|| self.sums.dsn.epoch(self.sums.cls / n, n));
        let sums = &self.sums;
        let dial = model.net.dial.as_ref().map(|d| AutodialEpoch { alpha: d.alphas(), entropy: sums.entropy / n });
        let metrics = AdaptEpoch {
            epoch,
            phase: self.phase.into(),
            lr,
            lambda: self.lambda,
            cls_loss: sums.cls / n,
            transfer_loss: sums.transfer / n,
            source_train_accuracy: sums.correct as f64 / sums.seen.max(1) as f64,
            domain_accuracy: (sums.domain_seen > 0).then(|| sums.domain_hits as f64 / sums.domain_seen as f64),
            source_val_loss: validation.as_ref().map(|v| v.loss),
            source_val_accuracy: validation.as_ref().map(|v| v.accuracy),
            select: Some(self.select.to_string()),
            select_value,
            daan: daan.clone(),
            autodial: dial.clone(),
            dsn: dsn.clone(),
            seconds,
        };
        let mut scalars = vec![
            ("loss/classification".to_string(), metrics.cls_loss),
            ("loss/transfer".to_string(), metrics.transfer_loss),
            ("accuracy/source_train".to_string(), metrics.source_train_accuracy),
            ("lr".to_string(), lr),
            ("lambda".to_string(), metrics.lambda),
        ];
        scalars.extend(metrics.domain_accuracy.map(|d| ("accuracy/domain".to_string(), d)));
        scalars.extend(metrics.source_val_loss.map(|l| ("loss/source_val".to_string(), l)));
        scalars.extend(metrics.source_val_accuracy.map(|a| ("accuracy/source_val".to_string(), a)));
        scalars.extend(dev.map(|d| ("select/dev_risk".to_string(), d)));
        scalars.extend(reverse.map(|r| ("select/reverse_accuracy".to_string(), r)));
        if let Some(d) = &daan {
            scalars.push(("daan/omega".to_string(), d.omega));
            scalars.push(("daan/global_a_distance".to_string(), d.global_a_distance));
            scalars.push(("daan/local_a_distance".to_string(), d.local_a_distance));
        }
        if let Some(a) = &dial {
            scalars.push(("autodial/entropy".to_string(), a.entropy));
            scalars.extend(a.alpha.iter().map(|(layer, v)| (format!("autodial/alpha/{layer}"), *v)));
        }
        scalars.extend(dsn.iter().flat_map(DsnEpoch::scalars));
        // DEV's risk, or 1 − the reverse accuracy, stands in for the validation loss: the phase
        // keeps its lowest.
        let validation = match (validation, dev.or(reverse.map(|r| 1.0 - r))) {
            (Some(v), Some(criterion)) => Some(Validation { loss: criterion, ..v }),
            (v, _) => v,
        };
        Ok(EpochEnd { validation, record: serde_json::to_value(&metrics).expect("metrics serialize"), scalars })
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, total_epochs: usize) {
        if let Ok(m) = serde_json::from_value::<AdaptEpoch>(record.clone()) {
            reporter.message(&m.line(total_epochs));
        }
    }
}

impl Ctx<'_> {
    /// The learning rate at iteration `step` of a phase, `p` its progress (step / steps).
    fn lr_at(&self, step: usize, p: f64) -> f64 {
        match self.config.lr_schedule {
            LrSchedule::Anneal => losses::annealed_lr(self.config.lr, p),
            LrSchedule::Inv => losses::inv_lr(self.config.lr, self.config.lr_gamma, step),
            LrSchedule::Constant => self.config.lr,
        }
    }

    /// The ramp of the adaptation weight at iteration `step` of a phase, `p` its progress.
    fn schedule_at(&self, step: usize, p: f64) -> f64 {
        match self.config.lambda_schedule() {
            LambdaSchedule::Constant => 1.0,
            LambdaSchedule::Dann => losses::dann_lambda(p),
            LambdaSchedule::WarmStart => losses::warm_start_lambda(step, self.config.lambda_max_iters),
        }
    }

    /// The rows of `idx` in `domain` for a training step, each image transformed by
    /// `augment` (LeNet's grey 28×28 rows; seeded by the run seed, the run's iteration
    /// `step`, the domain and the position in the batch, so a resumed run draws the same).
    fn training_batch(&self, domain: &Domain, idx: &[usize], step: usize, domain_index: u64, device: &Device) -> Result<Tensor<2>> {
        let augment = &self.config.augment;
        if augment.is_identity() {
            return domain.tensor(idx, device);
        }
        // `validate` allows augmentation with LeNet only, whose rows are grey images.
        let input = InputSpec::lenet();
        let rows = domain.rows(idx)?;
        let mut data = Vec::with_capacity(idx.len() * domain.width);
        for (k, row) in rows.chunks(domain.width).enumerate() {
            let grey = input.grey_image(row).expect("LeNet input is grey");
            let img = image::DynamicImage::ImageLuma8(grey).to_rgb8();
            let mut rng = sample_rng(self.config.seed, step as u64 * 2 + domain_index, k as u64);
            data.extend(input.rgb_row(&augment.apply(&img, &mut rng)));
        }
        Ok(Tensor::from_data(TensorData::new(data, [idx.len(), domain.width]), device))
    }

    /// One iteration's loss; adds its figures to `sums`.
    #[allow(clippy::too_many_arguments)]
    fn step(&self, model: &Trainable, method: Method, s_idx: &[usize], t_idx: &[usize], lambda: f64, step: usize, sums: &mut Sums) -> Result<Tensor<1>> {
        let dev = &self.train_device;
        let xs = self.training_batch(self.source, s_idx, step, 0, dev)?;
        let ys: Vec<usize> = s_idx.iter().map(|&i| self.source.labels[i]).collect();
        let ns = s_idx.len();
        sums.steps += 1;

        if method == Method::SourceOnly {
            let logits = model.net.logits(xs);
            return Ok(self.classification(logits, &ys, sums));
        }

        let xt = self.training_batch(self.target, t_idx, step, 1, dev)?;
        let (f, logits) = model.net.forward_joint(Tensor::cat(vec![xs.clone(), xt.clone()], 0), Some(ns));
        let (f_s, f_t) = losses::split_rows(f.clone(), ns);
        let (logits_s, logits_t) = losses::split_rows(logits.clone(), ns);
        let cls = self.classification(logits_s.clone(), &ys, sums);
        let transfer = match method {
            Method::Ddc => losses::mmd(f_s, f_t, &[1.0]).mul_scalar(lambda),
            Method::Dan => (losses::mmd(f_s, f_t, &losses::DAN_ALPHAS) + losses::mmd(logits_s, logits_t, &losses::DAN_ALPHAS)).mul_scalar(lambda),
            Method::Coral => losses::coral(f_s, f_t).mul_scalar(lambda),
            Method::Dann => {
                // The ramp scales the reversed gradient; the loss itself is weighted by --lambda.
                let coeff = lambda / self.config.lambda().max(f64::MIN_POSITIVE);
                let z = model.disc.as_ref().expect("DANN has a discriminator").forward(losses::reverse_gradient(f, coeff));
                let (z_s, z_t) = losses::split_rows(z, ns);
                self.count_domain(&z_s, &z_t, sums);
                losses::domain_adversarial(z_s, z_t).mul_scalar(self.config.lambda())
            }
            Method::Cdan => {
                let coeff = lambda / self.config.lambda().max(f64::MIN_POSITIVE);
                let g = softmax(logits.clone(), 1).detach();
                let h = match &self.cdan_random {
                    None => losses::multilinear(f, g),
                    Some((rf, rg)) => losses::randomized_multilinear(f, g, rf.clone(), rg.clone()),
                };
                let z = model.disc.as_ref().expect("CDAN has a discriminator").forward(losses::reverse_gradient(h, coeff));
                let (z_s, z_t) = losses::split_rows(z.clone(), ns);
                self.count_domain(&z_s, &z_t, sums);
                let bce = Tensor::cat(vec![losses::bce_per_row(z_s, 1.0), losses::bce_per_row(z_t, 0.0)], 0);
                let loss = if self.config.entropy { (bce * losses::entropy_weights(logits)).mean() } else { bce.mean() };
                loss.mul_scalar(self.config.lambda())
            }
            Method::Mcc => losses::mcc(logits_t, self.config.mcc_temperature).mul_scalar(lambda),
            Method::Bsp => {
                // DANN's loss as above, plus the spectral penalty of each domain's features.
                let coeff = lambda / self.config.lambda().max(f64::MIN_POSITIVE);
                let z = model.disc.as_ref().expect("BSP has a discriminator").forward(losses::reverse_gradient(f, coeff));
                let (z_s, z_t) = losses::split_rows(z, ns);
                self.count_domain(&z_s, &z_t, sums);
                let penalty = losses::bsp_penalty(f_s, self.config.bsp_k)? + losses::bsp_penalty(f_t, self.config.bsp_k)?;
                losses::domain_adversarial(z_s, z_t).mul_scalar(self.config.lambda()) + penalty.mul_scalar(self.config.bsp_tradeoff)
            }
            Method::Afn => {
                let norm = (losses::afn(f_s, self.config.afn_delta) + losses::afn(f_t, self.config.afn_delta)).mul_scalar(lambda);
                if self.config.afn_entropy > 0.0 {
                    norm + losses::entropy(logits_t).mean().mul_scalar(self.config.afn_entropy)
                } else {
                    norm
                }
            }
            Method::Mdd => {
                // The ramp scales the reversed gradient (up to MDD_REVERSAL_MAX, TLlib's); the loss
                // is weighted by --lambda.
                let coeff = MDD_REVERSAL_MAX * lambda / self.config.lambda().max(f64::MIN_POSITIVE);
                let adv = model.adv.as_ref().expect("MDD has an adversarial head").forward(losses::reverse_gradient(f, coeff));
                let (adv_s, adv_t) = losses::split_rows(adv, ns);
                losses::mdd(logits_s, adv_s, logits_t, adv_t, self.config.mdd_margin).mul_scalar(self.config.lambda())
            }
            Method::Daan => {
                // DANN's global discriminator, and one local discriminator per class fed the
                // reversed features weighted by the (detached) probability of that class; the
                // factor ω of the epoch weighs the two (`--daan-omega` fixes it).
                let coeff = lambda / self.config.lambda().max(f64::MIN_POSITIVE);
                let reversed = losses::reverse_gradient(f, coeff); // [2n, bottleneck]
                let z = model.disc.as_ref().expect("DAAN has a global discriminator").forward(reversed.clone());
                let (z_s, z_t) = losses::split_rows(z, ns);
                self.count_domain(&z_s, &z_t, sums);
                let global = losses::domain_adversarial(z_s, z_t);
                let p = softmax(logits, 1).detach(); // [2n, classes]
                let rows = p.dims()[0];
                let mut local = Tensor::<1>::zeros([1], &reversed.device());
                for (c, disc) in model.local.iter().enumerate() {
                    let weight = p.clone().slice([0..rows, c..c + 1]); // [2n, 1]
                    let z = disc.forward(reversed.clone() * weight); // [2n, 1]
                    let (z_s, z_t) = losses::split_rows(z, ns);
                    sums.local_hits[c] += losses::domain_hits(z_s.clone().detach(), 1.0) + losses::domain_hits(z_t.clone().detach(), 0.0);
                    local = local + losses::domain_adversarial(z_s, z_t);
                }
                // The classes' losses are averaged, so both terms are on one scale (the authors'
                // code sums them and rescales the two terms by hand).
                let local = local.div_scalar(model.local.len().max(1) as f64);
                (global.mul_scalar(1.0 - sums.omega) + local.mul_scalar(sums.omega)).mul_scalar(self.config.lambda())
            }
            Method::Autodial => {
                // The alignment layers did their part in the forward pass; the loss adds the
                // target predictions' entropy.
                let entropy = losses::entropy(logits_t).mean();
                let e: f32 = entropy.clone().into_scalar();
                sums.entropy += e as f64;
                entropy.mul_scalar(lambda)
            }
            Method::Dsn => {
                // DSN with DANN's similarity loss on the shared codes (the bottleneck features),
                // through the ramped reversal; the private encoders and the decoder add the
                // reconstruction and difference losses (`adapt::dsn`).
                let coeff = lambda / self.config.lambda().max(f64::MIN_POSITIVE);
                let z = model.disc.as_ref().expect("DSN has a discriminator").forward(losses::reverse_gradient(f, coeff));
                let (z_s, z_t) = losses::split_rows(z, ns);
                self.count_domain(&z_s, &z_t, sums);
                let similarity = losses::domain_adversarial(z_s, z_t);
                let c = self.config;
                let weights = DsnWeights { alpha: c.dsn_alpha, beta: c.dsn_beta, gamma: c.dsn_gamma };
                let nets = model.dsn.as_ref().expect("DSN has private encoders and a decoder");
                nets.loss(xs, xt, f_s, f_t, similarity, weights, &mut sums.dsn).mul_scalar(c.lambda())
            }
            Method::SourceOnly | Method::Adda => unreachable!("handled above"),
        };
        let t: f32 = transfer.clone().into_scalar();
        sums.transfer += t as f64;
        Ok(cls + transfer)
    }

    /// ADDA's features of one iteration: the frozen source encoder's (a constant) and the target
    /// encoder's (tracked).
    fn adda_features(&self, model: &Trainable, source_net: &AdaptNet, s_idx: &[usize], t_idx: &[usize], step: usize, sums: &mut Sums) -> Result<(Tensor<2>, Tensor<2>)> {
        let dev = &self.train_device;
        sums.steps += 1;
        let xs = self.training_batch(self.source, s_idx, step, 0, self.device)?;
        let f_s = source_net.features(xs).autodiff();
        let f_t = model.net.features(self.training_batch(self.target, t_idx, step, 1, dev)?);
        Ok((f_s, f_t))
    }

    /// ADDA's adversarial iteration (the original paper's GAN objective with inverted labels):
    /// the discriminator learns source = 1, target = 0 on fixed features; the target encoder
    /// learns to make the discriminator call its features source (weight `lambda`). Both see
    /// the joint batch, so the discriminator's BatchNorm always normalises source and target
    /// together. Returns (discriminator loss, encoder loss).
    fn adda_step(&self, model: &Trainable, source_net: &AdaptNet, s_idx: &[usize], t_idx: &[usize], lambda: f64, step: usize, sums: &mut Sums) -> Result<(Tensor<1>, Tensor<1>)> {
        let ns = s_idx.len();
        let (f_s, f_t) = self.adda_features(model, source_net, s_idx, t_idx, step, sums)?;
        let disc = model.disc.as_ref().expect("ADDA has a discriminator");
        let z = disc.forward(Tensor::cat(vec![f_s.clone(), f_t.clone().detach()], 0));
        let (z_s, z_t) = losses::split_rows(z, ns);
        self.count_domain(&z_s, &z_t, sums);
        let loss_d = losses::domain_adversarial(z_s, z_t);
        let z = disc.forward(Tensor::cat(vec![f_s, f_t], 0));
        let (_, z_t) = losses::split_rows(z, ns);
        let loss_e = losses::bce_per_row(z_t, 1.0).mean().mul_scalar(lambda);
        let d: f32 = loss_d.clone().into_scalar();
        let e: f32 = loss_e.clone().into_scalar();
        sums.transfer += d as f64;
        sums.cls += e as f64;
        Ok((loss_d, loss_e))
    }

    /// ADDA's adversarial iteration with the reversal objective (TLlib's): one domain loss on the
    /// frozen source encoder's features and the target encoder's, through gradient reversal
    /// (coefficient `ADDA_REVERSAL_MAX` times the λ schedule's `ramp`), so that one step trains
    /// the discriminator to tell the domains apart and the target encoder to confuse it.
    fn adda_reversal_step(&self, model: &Trainable, source_net: &AdaptNet, s_idx: &[usize], t_idx: &[usize], ramp: f64, step: usize, sums: &mut Sums) -> Result<Tensor<1>> {
        let ns = s_idx.len();
        let (f_s, f_t) = self.adda_features(model, source_net, s_idx, t_idx, step, sums)?;
        let coeff = ADDA_REVERSAL_MAX * ramp;
        let disc = model.disc.as_ref().expect("ADDA has a discriminator");
        let z = disc.forward(losses::reverse_gradient(Tensor::cat(vec![f_s, f_t], 0), coeff));
        let (z_s, z_t) = losses::split_rows(z, ns);
        self.count_domain(&z_s, &z_t, sums);
        let loss = losses::domain_adversarial(z_s, z_t).mul_scalar(self.config.lambda());
        let l: f32 = loss.clone().into_scalar();
        sums.transfer += l as f64;
        Ok(loss)
    }

    /// DEV's risk of `net` (an inference copy) after epoch `epoch`: a domain classifier on the
    /// features of up to [`DEV_SAMPLES`] source training and target images (drawn per epoch,
    /// seeded) gives each source validation image its weight p(target|x)/p(source|x); the risk
    /// is the weighted validation cross-entropy with DEV's control variate.
    /// A seeded draw (per epoch, `salt` per criterion) of at most [`DEV_SAMPLES`] indices of `n`.
    fn draw(&self, n: usize, epoch: usize, salt: u64, rng: &mut Option<StdRng>) -> Vec<usize> {
        let rng = rng.get_or_insert_with(|| StdRng::seed_from_u64(self.config.seed ^ salt ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(rng);
        idx.truncate(DEV_SAMPLES);
        idx
    }

    /// The bottleneck features ([rows of `idx`, bottleneck], flat) and logits of `domain`'s rows.
    fn features_and_logits(&self, net: &AdaptNet, domain: &Domain, idx: &[usize]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut features, mut logits) = (Vec::new(), Vec::new());
        for chunk in idx.chunks(500) {
            let (f, l) = net.forward(domain.tensor(chunk, self.device)?);
            let data = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: PathBuf::from("select"), reason: format!("features: {e:?}") });
            features.extend(data(f)?);
            logits.extend(data(l)?);
        }
        Ok((features, logits))
    }

    fn dev_risk(&self, net: &AdaptNet, epoch: usize) -> Result<f64> {
        let mut rng = None;
        let s_idx = self.draw(self.source.len(), epoch, 0xDE5E_1EC7, &mut rng);
        let t_idx = self.draw(self.target.len(), epoch, 0xDE5E_1EC7, &mut rng);
        // AutoDIAL's alignment layers: each domain with its own statistics.
        let source_net = net.on_source();
        let features = |net: &AdaptNet, domain: &Domain, idx: &[usize]| self.features_and_logits(net, domain, idx).map(|(f, _)| f);
        let (fs, ft) = (features(&source_net, self.source, &s_idx)?, features(net, self.target, &t_idx)?);
        let all: Vec<usize> = (0..self.val.len()).collect();
        let (mut fv, mut val_losses) = (Vec::new(), Vec::new());
        for chunk in all.chunks(500) {
            let (f, logits) = source_net.forward(self.val.tensor(chunk, self.device)?);
            fv.extend(f.into_data().try_to_vec::<f32>().unwrap_or_default());
            let logp: Vec<f32> = log_softmax(logits, 1).into_data().try_to_vec::<f32>().unwrap_or_default();
            let c = self.classes.len();
            val_losses.extend(chunk.iter().enumerate().map(|(k, &i)| -(logp[k * c + self.val.labels[i]] as f64)));
        }
        let weights = losses::importance_weights(&fs, &ft, &fv, self.config.bottleneck);
        Ok(losses::dev_risk(&val_losses, &weights))
    }

    /// Reverse validation: the network's predictions on a seeded draw of target rows train a
    /// reverse classifier (softmax regression on standardised bottleneck features, C = 1), whose
    /// accuracy on the labelled source validation split is returned. Predictions of one class
    /// only make a classifier that always answers it.
    fn reverse_accuracy(&self, net: &AdaptNet, epoch: usize) -> Result<f64> {
        let t_idx = self.draw(self.target.len(), epoch, 0x5EE7_E25E, &mut None);
        let classes = self.classes.len();
        let (ft, logits) = self.features_and_logits(net, self.target, &t_idx)?;
        let pseudo = top1(&logits.chunks(classes).map(<[f32]>::to_vec).collect::<Vec<_>>());
        let val_idx: Vec<usize> = (0..self.val.len()).collect();
        let (fv, _) = self.features_and_logits(&net.on_source(), self.val, &val_idx)?;
        let width = self.config.bottleneck;
        let distinct: std::collections::BTreeSet<usize> = pseudo.iter().copied().collect();
        let predicted: Vec<usize> = if distinct.len() < 2 {
            vec![pseudo.first().copied().unwrap_or(0); val_idx.len()]
        } else {
            let reverse = Classic::fit(ClassicKind::Logistic(Penalty::C(1.0)), &ft, &pseudo, width, classes, self.config.seed)?;
            top1(&reverse.predict_proba(&fv))
        };
        let right = predicted.iter().zip(&val_idx).filter(|(p, &i)| **p == self.val.labels[i]).count();
        Ok(right as f64 / val_idx.len().max(1) as f64)
    }

    fn classification(&self, logits: Tensor<2>, ys: &[usize], sums: &mut Sums) -> Tensor<1> {
        let loss = cross_entropy(logits.clone(), ys, 0.0, None, &self.train_device);
        let l: f32 = loss.clone().into_scalar();
        sums.cls += l as f64;
        sums.correct += argmax(logits.detach()).iter().zip(ys).filter(|(p, y)| p == y).count();
        sums.seen += ys.len();
        loss
    }

    fn count_domain(&self, z_s: &Tensor<2>, z_t: &Tensor<2>, sums: &mut Sums) {
        sums.domain_hits += losses::domain_hits(z_s.clone().detach(), 1.0) + losses::domain_hits(z_t.clone().detach(), 0.0);
        sums.domain_seen += z_s.dims()[0] + z_t.dims()[0];
    }
}

/// Reads a run's `metrics.jsonl` (a torn last line is ignored).
pub fn read_metrics(run: &Path) -> Result<Vec<AdaptEpoch>> {
    engine::read_records(run)
}

/// Runs domain adaptation into the new run directory `run`, or continues the run there
/// (`resume`, with the run's saved config) from its last completed epoch. A fresh run that
/// fails before its first epoch is saved leaves no run directory behind.
pub fn adapt(config: &AdaptConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<AdaptSummary> {
    engine::removing_a_failed_start(run, resume, || adapt_run(config, run, resume, home, reporter, device))
}

fn adapt_run(config: &AdaptConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<AdaptSummary> {
    let wall = Instant::now();
    config.validate()?;
    let source_spec = DomainSpec::parse("source", &config.source)?;
    let target_spec = DomainSpec::parse("target", &config.target)?;
    let test_spec = config.target_test.as_deref().map(|t| DomainSpec::parse("target_test", t)).transpose()?;
    if resume {
        let pre = if config.method == Method::Adda { config.pretrain_epochs() } else { 0 };
        engine::check_total(run, pre + config.epochs, "epochs")?;
    }
    engine::prepare_run_dir(run, resume)?;
    device.seed(config.seed);

    // --- backbone and data ----------------------------------------------------------------------
    if crate::text::is_text_model(&config.backbone) {
        let loaded = super::text::load_text_domains(config, home, reporter, device)?;
        return train_loaded(config, run, resume, loaded, wall, reporter, device);
    }
    let (input, trunk) = if config.backbone == "lenet" {
        (InputSpec::lenet(), None)
    } else {
        let spec = ModelSpec::find(&config.backbone).map_err(|e| GraftError::setting("backbone", &config.backbone, format!("expected lenet or a zoo model ({e})")))?;
        let pretrained = Pretrained::load(spec, config.weights.as_deref(), home, reporter, device)?;
        let spec = pretrained.spec; // the file's flavour of the architecture
        (InputSpec::Zoo { model: spec.id.into(), preprocess: pretrained.preprocess() }, Some(pretrained))
    };
    let featurizer = Featurizer::new(input.clone(), trunk.as_ref(), home, device);
    let root = &config.data_root;
    let (source_all, classes, mut skipped) = featurizer.load(&source_spec, "source", root, None, true, reporter)?;
    let (target, _, bad) = featurizer.load(&target_spec, "target", root, Some(&classes), false, reporter)?;
    skipped.extend(bad);
    let test = match &test_spec {
        Some(spec) => {
            let (d, _, bad) = featurizer.load(spec, "target_test", root, Some(&classes), true, reporter)?;
            skipped.extend(bad);
            Some(d)
        }
        None => None,
    };
    let width = featurizer.width();
    let weights_sha256 = trunk.as_ref().map(|t| t.weights_sha256.clone());
    let loaded = Loaded { input, lenet: trunk.is_none(), weights_sha256, width, source_all, classes, target, test, skipped };
    train_loaded(config, run, resume, loaded, wall, reporter, device)
}

/// Domains as network rows, ready to train on: what [`adapt`] loads from images (and
/// `adapt::text` from texts).
pub(crate) struct Loaded {
    pub input: InputSpec,
    /// Whether the network starts with LeNet (rows are images) or takes the rows as features.
    pub lenet: bool,
    pub weights_sha256: Option<String>,
    /// Width of one row.
    pub width: usize,
    pub source_all: Domain,
    pub classes: Vec<String>,
    pub target: Domain,
    pub test: Option<Domain>,
    pub skipped: Vec<Skipped>,
}

/// The kept epoch of a phase (`Keep::Best`) is written here; the run's `best.safetensors` is
/// the adapted network alone, written from it at the end.
const PRETRAIN_BEST: &str = "pretrain-best.safetensors";
const ADAPT_BEST: &str = "adapt-best.safetensors";

/// Trains on loaded domains into the (prepared) run directory `run`.
pub(crate) fn train_loaded(config: &AdaptConfig, run: &Path, resume: bool, loaded: Loaded, wall: Instant, reporter: &dyn Reporter, device: &Device) -> Result<AdaptSummary> {
    let Loaded { input, lenet, weights_sha256, width, source_all, classes, target, test, skipped } = loaded;
    for s in &skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    let samples: Vec<Sample> = source_all.labels.iter().map(|&label| Sample { path: PathBuf::new(), label }).collect();
    let (train_idx, val_idx) = if config.val_split > 0.0 {
        stratified_split(&samples, config.val_split, config.seed)?
    } else {
        ((0..samples.len()).collect(), Vec::new())
    };
    let source = source_all.subset(&train_idx);
    let val = source_all.subset(&val_idx);
    let present: std::collections::BTreeSet<usize> = source.labels.iter().copied().collect();
    if present.len() < 2 {
        return Err(GraftError::setting("source", &config.source, "fewer than 2 classes have readable training images"));
    }
    drop(source_all);

    // --- model ----------------------------------------------------------------------------------
    let info = AdaptInfo {
        method: config.method,
        backbone: config.backbone.clone(),
        weights_sha256,
        classes: classes.clone(),
        input,
        input_width: width,
        bottleneck: config.bottleneck,
    };
    if resume {
        let saved = AdaptInfo::load(run)?;
        if saved != info {
            return Err(GraftError::Data { path: run.join("model.json"), reason: "the data or backbone changed since the run started (classes, input or weights differ); start a new run".into() });
        }
    } else {
        // config.toml first: a run counts as started once model.json exists.
        write_atomic(&run.join("config.toml"), config.to_toml().as_bytes())?;
        info.save(run, device)?;
    }

    let cdan_full = classes.len() * config.bottleneck;
    let disc_input = match config.method {
        Method::Cdan if cdan_full > CDAN_FULL_MAX => CDAN_RANDOM_DIM,
        Method::Cdan => cdan_full,
        _ => config.bottleneck,
    };
    let cdan_random = (config.method == Method::Cdan && cdan_full > CDAN_FULL_MAX).then(|| {
        let td = device.clone().autodiff();
        let rf = Tensor::<2>::random([config.bottleneck, CDAN_RANDOM_DIM], Distribution::Normal(0.0, 1.0), &td);
        let rg = Tensor::<2>::random([classes.len(), CDAN_RANDOM_DIM], Distribution::Normal(0.0, 1.0), &td);
        (rf, rg)
    });
    // burn initialises a parameter when it is first read: every network is materialised here,
    // in a fixed order after the seed, so its initial weights do not depend on what ran before
    // it is first used (ADDA's discriminator would otherwise differ between a run resumed at
    // the phase boundary and one that never stopped).
    let net = AdaptNet::init(lenet, width, config.bottleneck, classes.len(), device);
    let net = engine::stable_ids(if config.method == Method::Autodial { net.with_dial(config.autodial_alpha_init, device) } else { net });
    let disc = config.method.adversarial().then(|| engine::stable_ids(Discriminator::init(disc_input, config.disc_hidden, device)));
    let adv = (config.method == Method::Mdd).then(|| engine::stable_ids(AdvHead::init(config.bottleneck, config.disc_hidden, classes.len(), device)));
    let local: Vec<Discriminator> = if config.method == Method::Daan {
        (0..classes.len()).map(|_| engine::stable_ids(Discriminator::init(config.bottleneck, config.daan_local_hidden, device))).collect()
    } else {
        Vec::new()
    };
    let dsn_input = if lenet { DsnInput::Images } else { DsnInput::Features(width) };
    let dsn = (config.method == Method::Dsn).then(|| engine::stable_ids(DsnNets::init(dsn_input, config.bottleneck, device)));

    let steps_per_epoch = config.iters_per_epoch.unwrap_or_else(|| source.len().div_ceil(config.batch_size).max(1));
    let ctx = Ctx {
        config,
        source: &source,
        target: &target,
        val: &val,
        classes: &classes,
        device,
        train_device: device.clone().autodiff(),
        steps_per_epoch,
        cdan_random,
    };

    // --- training -------------------------------------------------------------------------------
    let mut engine = Engine::open(run, resume, config.seed, reporter, device)?;
    let keep_best = Keep::Best { monitor: Monitor::ValAccuracy, min_delta: 0.0 };
    // The adaptation phase's rule (the source pre-training of ADDA always keeps `keep_best`).
    let select = config.select();
    let keep_adapt = match select {
        Select::SourceVal => keep_best,
        Select::Dev | Select::Reverse => Keep::Best { monitor: Monitor::ValLoss, min_delta: 0.0 },
        Select::Last => Keep::Last,
    };
    let phase = |name: &str, offset: usize, epochs: usize, total: usize, keep: Keep, best_file: &str, optimizer: ModuleOptimizer| Phase {
        name: name.into(),
        offset,
        epochs,
        total,
        keep,
        best_file: best_file.into(),
        early_stopping: None,
        plateau: None,
        optimizer,
    };
    let (final_net, total_epochs) = if config.method == Method::Adda {
        let pre = config.pretrain_epochs();
        let total = pre + config.epochs;
        // Source pre-training: the kept epoch becomes the frozen source encoder and the target
        // encoder's start.
        let model = engine::stable_ids(Trainable { net, disc: None, adv: None, local: Vec::new(), dsn: None }.train());
        let model = engine.resume_into(model, 0, pre, "the adaptation network")?;
        let mut task = AdaptTask::new(&ctx, &model, Method::SourceOnly, "pretrain", None, Select::SourceVal, config.seed, steps_done(&engine, 0, steps_per_epoch));
        let optimizer = task.optimizer();
        let model = engine.run_phase(&mut task, model, phase("pretrain", 0, pre, total, keep_best, PRETRAIN_BEST, optimizer))?;
        let net = if pre > 0 { checkpoint::load(model, &run.join(PRETRAIN_BEST))?.net } else { model.net };
        let source_net = net.valid();
        // The frozen source encoder runs without dropout; so does the target encoder, or the
        // discriminator could tell the domains apart by the dropout noise alone.
        let mut target_net = net;
        if let Some(lenet) = target_net.lenet.as_mut() {
            lenet.channel_dropout = DropoutConfig::new(0.0).init();
            lenet.dropout = DropoutConfig::new(0.0).init();
        }
        let model = engine::stable_ids(Trainable { net: target_net, disc, adv: None, local: Vec::new(), dsn: None }.train());
        let model = engine.resume_into(model, pre, config.epochs, "the adaptation network")?;
        let mut task = AdaptTask::new(&ctx, &model, Method::Adda, "adapt", Some(&source_net), select, config.seed ^ 0xADDA, steps_done(&engine, pre, steps_per_epoch));
        let optimizer = task.optimizer();
        // The target encoder is not meant to work on the source: by default its last epoch is kept.
        let model = engine.run_phase(&mut task, model, phase("adapt", pre, config.epochs, total, keep_adapt, ADAPT_BEST, optimizer))?;
        (checkpoint::load(model, &run.join(ADAPT_BEST))?.net, total)
    } else {
        let model = engine::stable_ids(Trainable { net, disc, adv, local, dsn }.train());
        let model = engine.resume_into(model, 0, config.epochs, "the adaptation network")?;
        let mut task = AdaptTask::new(&ctx, &model, config.method, "adapt", None, select, config.seed, steps_done(&engine, 0, steps_per_epoch));
        if let Some(next) = resumed_omega(run, engine.state.epoch)? {
            // DAAN's factor is re-estimated after every epoch: a resumed run goes on with the
            // one its last completed epoch chose.
            task.omega = next;
        }
        let optimizer = task.optimizer();
        let model = engine.run_phase(&mut task, model, phase("adapt", 0, config.epochs, config.epochs, keep_adapt, ADAPT_BEST, optimizer))?;
        (checkpoint::load(model, &run.join(ADAPT_BEST))?.net, config.epochs)
    };
    let state = engine.state.clone();
    let mut meta = BTreeMap::new();
    meta.insert("graft.epoch".to_string(), state.best_epoch.to_string());
    checkpoint::save(&final_net, &run.join("best.safetensors"), meta)?;

    // --- the target test set, once ----------------------------------------------------------------
    let eval_net = final_net.valid();
    // ADDA's kept model is the adversarial phase's last epoch: its source accuracy is measured
    // here (the other methods kept their best source validation epoch).
    let source_val_accuracy = if val.is_empty() {
        None
    } else if config.method == Method::Adda {
        let (_, predicted) = evaluate(&eval_net, &val, 500, device)?;
        Some(Evaluation::from_predictions(&classes, &val.labels, &predicted).accuracy)
    } else {
        Some(state.best_val_accuracy)
    };
    let target_eval = match test.as_ref() {
        Some(t) => {
            let (_, predicted) = evaluate(&eval_net, t, 500, device)?;
            Some(Evaluation::from_predictions(&classes, &t.labels, &predicted))
        }
        None => None,
    };
    let summary = AdaptSummary {
        run: run.to_path_buf(),
        method: config.method,
        backbone: config.backbone.clone(),
        source: config.source.clone(),
        target: config.target.clone(),
        target_test: config.target_test.clone(),
        epochs: state.epoch,
        best_epoch: state.best_epoch,
        source_val_accuracy,
        target_test_accuracy: target_eval.as_ref().map(|e| e.accuracy),
        target_test_evaluation: target_eval,
        n_source_train: source.len(),
        n_source_val: val.len(),
        n_target: target.len(),
        n_target_test: test.as_ref().map(|t| t.len()).unwrap_or(0),
        iterations: total_epochs * steps_per_epoch,
        lambda: config.lambda(),
        train_seconds: state.train_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        skipped,
    };
    write_atomic(&run.join("summary.json"), &serde_json::to_vec_pretty(&summary).expect("summary serializes"))?;
    Ok(summary)
}

/// DAAN's factor for the epoch after `epoch` (the last completed one), from its metrics record.
fn resumed_omega(run: &Path, epoch: usize) -> Result<Option<f64>> {
    if epoch == 0 {
        return Ok(None);
    }
    Ok(read_metrics(run)?.into_iter().find(|m| m.epoch == epoch).and_then(|m| m.daan).map(|d| d.next_omega))
}

/// Iterations of the phase starting at epoch `offset` that a resumed run already did.
fn steps_done(engine: &Engine, offset: usize, steps_per_epoch: usize) -> usize {
    engine.state.epoch.saturating_sub(offset) * steps_per_epoch
}

/// An adapted run loaded for inference: the network, and the frozen trunk for a zoo backbone
/// or the sentence encoder for a text one.
pub struct AdaptedModel {
    pub info: AdaptInfo,
    pub net: AdaptNet,
    pub trunk: Option<Pretrained>,
    pub encoder: Option<crate::text::SentenceEncoder>,
    /// graft's home: the feature store that trunk features are computed into.
    pub home: PathBuf,
}

/// Loads an adapted run's kept model. A zoo trunk or text encoder is loaded from graft's cache
/// under `home` (or `weights`) and must have the sha256 recorded in the run.
pub fn load_adapted(run: &Path, home: &Path, weights: Option<&Path>, reporter: &dyn Reporter, device: &Device) -> Result<AdaptedModel> {
    let info = AdaptInfo::load(run)?;
    let net = checkpoint::load(info.build(device), &run.join("best.safetensors"))?.valid();
    let mismatch = |path: &Path, found: &str| GraftError::Checksum { path: path.to_path_buf(), expected: info.weights_sha256.clone().unwrap_or_default(), found: found.to_string() };
    let (mut trunk, mut encoder) = (None, None);
    match &info.input {
        InputSpec::Grey { .. } => {}
        InputSpec::Text { model, .. } => {
            let e = crate::text::SentenceEncoder::load(model, weights, home, reporter, device)?;
            if info.weights_sha256.as_deref().is_some_and(|s| s != e.weights_sha256) {
                return Err(mismatch(&e.weights_path, &e.weights_sha256));
            }
            encoder = Some(e);
        }
        InputSpec::Zoo { model, .. } => {
            let spec = ModelSpec::find(model)?;
            let p = Pretrained::load(spec, weights, home, reporter, device)?;
            if info.weights_sha256.as_deref().is_some_and(|s| s != p.weights_sha256) {
                return Err(mismatch(&p.weights_path, &p.weights_sha256));
            }
            trunk = Some(p);
        }
    }
    Ok(AdaptedModel { info, net, trunk, encoder, home: home.to_path_buf() })
}

impl AdaptedModel {
    /// Scores the kept model on a labelled domain — a class folder (classes named as in
    /// training) or a digit set such as `mnist:test`, read from `data_root` — and lists the
    /// files that could not be read. `flag` names the option the domain came from, for errors.
    pub fn evaluate_domain(&self, spec: &DomainSpec, flag: &str, data_root: &Path, batch: usize, reporter: &dyn Reporter, device: &Device) -> Result<(Evaluation, Vec<Skipped>)> {
        self.expect_images(flag)?;
        let featurizer = Featurizer::new(self.info.input.clone(), self.trunk.as_ref(), &self.home, device);
        let (domain, _, skipped) = featurizer.load(spec, flag, data_root, Some(&self.info.classes), true, reporter)?;
        let (_, predicted) = evaluate(&self.net, &domain, batch, device)?;
        Ok((Evaluation::from_predictions(&self.info.classes, &domain.labels, &predicted), skipped))
    }

    /// Class probabilities for image files; unreadable files are `None` and listed.
    pub fn predict_files(&self, files: &[Sample], device: &Device) -> Result<(Vec<Option<Vec<f32>>>, Vec<Skipped>)> {
        self.expect_images("run")?;
        let featurizer = Featurizer::new(self.info.input.clone(), self.trunk.as_ref(), &self.home, device);
        let mut out = Vec::with_capacity(files.len());
        let mut skipped = Vec::new();
        for chunk in files.chunks(256) {
            let (rows, bad) = crate::data::folder::decode_with(chunk, &|_| {}, |img| self.info.input.rgb_row(&img));
            skipped.extend(bad);
            let good: Vec<Vec<f32>> = rows.iter().flatten().cloned().collect();
            let mut probs = Vec::new().into_iter();
            if !good.is_empty() {
                probs = self.probabilities_with(&featurizer, good, device)?.into_iter();
            }
            out.extend(rows.iter().map(|r| r.as_ref().and_then(|_| probs.next())));
        }
        Ok((out, skipped))
    }

    /// Class probabilities of input rows (each [`InputSpec::rgb_row`] of an image).
    pub fn probabilities_of_rows(&self, rows: Vec<Vec<f32>>, device: &Device) -> Result<Vec<Vec<f32>>> {
        self.expect_images("run")?;
        let featurizer = Featurizer::new(self.info.input.clone(), self.trunk.as_ref(), &self.home, device);
        self.probabilities_with(&featurizer, rows, device)
    }

    fn probabilities_with(&self, featurizer: &Featurizer, rows: Vec<Vec<f32>>, device: &Device) -> Result<Vec<Vec<f32>>> {
        let x = featurizer.rows(rows)?;
        let n = x.len() / featurizer.width();
        let t = Tensor::<2>::from_data(TensorData::new(x, [n, featurizer.width()]), device);
        let p: Vec<f32> = softmax(self.net.logits(t), 1).into_data().try_to_vec::<f32>().unwrap_or_default();
        let c = self.info.classes.len();
        Ok(p.chunks(c).map(|r| r.to_vec()).collect())
    }

    /// Image inputs given to a text model are named, not decoded.
    fn expect_images(&self, flag: &str) -> Result<()> {
        match &self.info.input {
            InputSpec::Text { model, .. } => Err(GraftError::setting(flag, model, "this adaptation run classifies texts, not images")),
            _ => Ok(()),
        }
    }
}
