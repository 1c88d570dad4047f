//! What `graft adapt` is asked to do, resolved into one struct (saved as the run's
//! `config.toml`), with every default stated.
//!
//! Defaults follow TLlib's digit experiments and the papers, where they can run on a CPU:
//! LeNet from scratch, bottleneck 256 (linear → BatchNorm → ReLU), SGD momentum 0.9 (Nesterov),
//! weight decay 1e-3, lr 0.01 annealed as lr₀·(1 + 10p)^−0.75 over the whole run, batches of 32
//! per domain, discriminator 1024-1024 with BatchNorm; DANN/CDAN/ADDA ramp the reversed
//! gradient with λ_p = 2/(1 + e^−10p) − 1. TLlib's own schedules, which count iterations instead
//! of the run's progress, are flags: `--lr-schedule inv` (lr₀·(1 + 0.001·i)^−0.75) and
//! `--lambda-schedule warm-start` (2/(1 + e^−i/1000) − 1); they stay opt-in because they assume
//! TLlib's long runs (the ramp needs thousands of iterations to reach 1). TLlib trains 20 × 2,500 iterations of batch 128; the
//! default here is 20 passes over the source training data, and `--iters-per-epoch` sets it.
//!
//! ADDA: source pre-training as above (`--pretrain-epochs`), then the target encoder (a copy,
//! dropout off) and the discriminator train with the ADDA paper's GAN objective (inverted labels)
//! and its optimiser, Adam lr 2e-4, β₁ 0.5. The classifier head stays fixed. TLlib's variant (one
//! minimax loss through gradient reversal ramped to 2, SGD) is `--adda-objective reversal`; on
//! MNIST→USPS at 2,000 iterations it let the discriminator win (domain accuracy 0.9–0.95) and
//! reached 74–75 % where the GAN objective reached 85 %, so it is not the default.
//!
//! MCC, BSP, AFN and MDD take TLlib's and their papers' defaults: MCC temperature 2.5 and weight
//! 1; BSP on DANN with k = 1 and weight 2e-4; AFN Δr = 1 and weight 0.05 (TLlib's digit
//! commands use Δr 0.3/0.1 and an entropy weight 0.03: flags); MDD margin 4, weight 1, gradient
//! reversal ramped per iteration to 0.1. TLlib's MDD and AFN also have classifiers of their own
//! (MDD a two-layer head of width 1024, AFN a 1000-wide bottleneck with dropout); graft keeps
//! its one classifier for every method, so that eval and predict read every run alike.
//!
//! `--augment` (LeNet only, `fit`'s syntax) transforms every training image of both domains;
//! off by default, as in TLlib. On MNIST→USPS it is the largest lever we measured: our 10,000
//! MNIST digits are a sixth of TLlib's 60,000, and random zoom and shifts stand in for the rest.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::augment::Augment;
use crate::error::unit_variant;
use crate::{GraftError, Result};

/// An adaptation method (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// No adaptation: the same network trained on the source only (the baseline).
    SourceOnly,
    /// Deep Domain Confusion (Tzeng et al. 2014): MMD with one Gaussian kernel on the bottleneck.
    Ddc,
    /// Deep Adaptation Network (Long et al. 2015): multi-kernel MMD (5 Gaussian kernels) on the
    /// bottleneck features and on the logits.
    Dan,
    /// Deep CORAL (Sun & Saenko 2016): distance of the feature covariances.
    Coral,
    /// Domain-adversarial training (Ganin et al. 2016): a domain discriminator through gradient
    /// reversal.
    Dann,
    /// Adversarial discriminative adaptation (Tzeng et al. 2017): source pre-training, then a
    /// separate target encoder trained against a discriminator; the classifier stays fixed.
    Adda,
    /// Conditional adversarial adaptation (Long et al. 2018): the discriminator sees features ⊗
    /// predictions; `--entropy` weighs confident examples more (CDAN+E).
    Cdan,
    /// Minimum Class Confusion (Jin et al. 2020): the target predictions' class confusion,
    /// softened by a temperature and weighted by their certainty, is minimised.
    Mcc,
    /// Batch Spectral Penalization (Chen et al. 2019) on DANN: DANN's adversarial loss plus the
    /// squared top-k singular values of each domain's feature batch, penalised.
    Bsp,
    /// Stepwise Adaptive Feature Norm (Xu et al. 2019): each feature's L2 norm is pushed Δr
    /// above its value at the previous step, on both domains.
    Afn,
    /// Margin Disparity Discrepancy (Zhang et al. 2019): an adversarial head, fed the features
    /// through gradient reversal, agrees with the head on the source (margin γ) and disagrees on
    /// the target.
    Mdd,
    /// Dynamic Adversarial Adaptation Network (Yu et al. 2019): DANN's global discriminator plus
    /// one local discriminator per class, fed the features weighted by that class's predicted
    /// probability; the dynamic factor ω, re-estimated after every epoch from the discriminators'
    /// proxy A-distances, weighs conditional (ω) against marginal (1 − ω) alignment.
    Daan,
    /// AutoDIAL (Carlucci et al. 2017): domain alignment layers after the network's layers, each
    /// a BatchNorm whose per-domain statistics are mixed by a learned α ∈ [0.5, 1]; the target
    /// predictions' entropy is minimised (`adapt::autodial`).
    Autodial,
    /// Domain Separation Networks (Bousmalis et al. 2016), with DANN's similarity loss: a private
    /// encoder per domain and a shared decoder reconstructing each image from its shared and
    /// private codes; reconstruction (α), difference (β) and similarity (γ) losses (LeNet only).
    Dsn,
}

pub const METHODS: &str = "source-only, ddc, dan, coral, dann, adda, cdan, mcc, bsp, afn, mdd, daan, autodial, dsn";

impl FromStr for Method {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "source-only" | "source_only" => Method::SourceOnly,
            "ddc" => Method::Ddc,
            "dan" => Method::Dan,
            "coral" => Method::Coral,
            "dann" => Method::Dann,
            "adda" => Method::Adda,
            "cdan" => Method::Cdan,
            "mcc" => Method::Mcc,
            "bsp" => Method::Bsp,
            "afn" => Method::Afn,
            "mdd" => Method::Mdd,
            "daan" => Method::Daan,
            "autodial" => Method::Autodial,
            "dsn" => Method::Dsn,
            _ => return Err(GraftError::setting("method", s, format!("expected one of {METHODS}"))),
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        f.write_str(&s)
    }
}

impl Method {
    /// Methods with a domain discriminator.
    pub fn adversarial(self) -> bool {
        matches!(self, Method::Dann | Method::Adda | Method::Cdan | Method::Bsp | Method::Daan | Method::Dsn)
    }

    /// Methods whose adversary reverses the gradient with a ramp (the λ schedule scales the
    /// reversal, not the loss): the discriminator methods and MDD's adversarial head.
    pub fn ramped(self) -> bool {
        self.adversarial() || self == Method::Mdd
    }

    /// Default weight of the adaptation loss. MMD and adversarial losses: 1 (TLlib's trade-off).
    /// CORAL: the paper weighs its loss so that it is about as large as the classification loss
    /// at the end of training; with the 1/(4d²) normalisation on a 256-wide bottleneck the raw
    /// CORAL loss of LeNet digits is ≈ 0.003 against a classification loss of 0.2–1, so 100.
    /// MCC, MDD: 1 (TLlib's trade-off). BSP: 1 for its DANN loss (the penalty's weight is
    /// `--bsp-tradeoff`). AFN: 0.05 (the paper's λ, TLlib's `--trade-off-norm`). AutoDIAL: 0.1,
    /// the weight of its target entropy in the authors' networks.
    pub fn default_lambda(self) -> f64 {
        match self {
            Method::SourceOnly => 0.0,
            Method::Coral => 100.0,
            Method::Afn => 0.05,
            Method::Autodial => crate::adapt::autodial::DEFAULT_LAMBDA,
            _ => 1.0,
        }
    }

    /// Default schedule: adversarial methods ramp the reversed gradient (DANN paper); MDD ramps
    /// its reversal per iteration as TLlib does (warm-start, towards [`MDD_REVERSAL_MAX`]); the
    /// discrepancy and self-training losses use a constant weight (TLlib).
    pub fn default_lambda_schedule(self) -> LambdaSchedule {
        if self == Method::Mdd {
            LambdaSchedule::WarmStart
        } else if self.adversarial() {
            LambdaSchedule::Dann
        } else {
            LambdaSchedule::Constant
        }
    }
}

/// How the adaptation weight evolves (`--lambda-schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LambdaSchedule {
    Constant,
    /// λ·(2/(1 + e^−10p) − 1), p the progress of the (adaptation) training.
    Dann,
    /// λ·(2/(1 + e^−i/M) − 1) per iteration i, M = `--lambda-max-iters` (TLlib's
    /// `WarmStartGradientReverseLayer`, alpha 1): independent of the run's length.
    WarmStart,
}

impl FromStr for LambdaSchedule {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("lambda_schedule", s, "expected constant, dann or warm-start")
    }
}

/// The learning rate over training (`--lr-schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    Constant,
    /// lr₀·(1 + 10p)^−0.75 over the run's progress p (DANN paper).
    Anneal,
    /// lr₀·(1 + γ·i)^−0.75 per iteration i, γ = `--lr-gamma` (TLlib's digit scripts): independent
    /// of the run's length.
    Inv,
}

impl FromStr for LrSchedule {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("lr_schedule", s, "expected anneal, inv or constant")
    }
}

/// What ADDA's adversarial phase optimises (`--adda-objective`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddaObjective {
    /// The ADDA paper's GAN objective: the discriminator and the target encoder take turns, the
    /// encoder with inverted labels; Adam, lr 2e-4, β₁ 0.5.
    #[default]
    Gan,
    /// TLlib's variant: one minimax loss through gradient reversal (coefficient ramped to 2 by
    /// the λ schedule), discriminator and target encoder in one SGD step at `--lr` and its schedule.
    Reversal,
}

impl FromStr for AddaObjective {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("adda_objective", s, "expected gan or reversal")
    }
}

/// How the kept epoch is chosen without target labels (`--select`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Select {
    /// The best accuracy on the held-out source split (ties: the lower loss).
    SourceVal,
    /// Deep Embedded Validation (You et al. 2019): the lowest importance-weighted source
    /// validation loss, weights p(target|x)/p(source|x) from a domain classifier on the
    /// features, with the control variate η = −Cov(WL, W)/Var(W).
    Dev,
    /// Reverse validation (Zhong et al. 2010, as the DANN paper selects): the network labels a
    /// draw of target images, a reverse classifier (logistic regression on the features) learns
    /// those labels, and its accuracy on the labelled source split is the criterion (the higher,
    /// the better).
    Reverse,
    /// The last epoch.
    Last,
}

impl FromStr for Select {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("select", s, "expected source-val, dev, reverse or last")
    }
}

impl std::fmt::Display for Select {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Select::SourceVal => "source-val",
            Select::Dev => "dev",
            Select::Reverse => "reverse",
            Select::Last => "last",
        })
    }
}

/// MDD: where the reversed gradient's warm-start ramp ends (TLlib's `hi` of MDD's
/// `WarmStartGradientReverseLayer`).
pub const MDD_REVERSAL_MAX: f64 = 0.1;

fn default_mcc_temperature() -> f64 {
    2.5
}

fn default_bsp_k() -> usize {
    1
}

fn default_bsp_tradeoff() -> f64 {
    2e-4
}

fn default_afn_delta() -> f64 {
    1.0
}

fn default_mdd_margin() -> f64 {
    4.0
}

/// DAAN: hidden width of each class's local discriminator (the DAAN authors' discriminator).
fn default_daan_local_hidden() -> usize {
    256
}

fn default_autodial_alpha_init() -> f64 {
    crate::adapt::autodial::DEFAULT_ALPHA_INIT
}

/// DSN: weights of the reconstruction, difference and similarity losses (see `adapt::dsn`).
fn default_dsn_alpha() -> f64 {
    0.01
}

fn default_dsn_beta() -> f64 {
    0.075
}

fn default_dsn_gamma() -> f64 {
    0.25
}

fn default_lr_gamma() -> f64 {
    0.001
}

fn default_lambda_max_iters() -> usize {
    1000
}

/// Every setting of an adaptation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptConfig {
    pub method: Method,
    /// Labelled source: a folder or `mnist:train`-style shorthand.
    pub source: String,
    /// Unlabelled target training data (labels, if any, are never read).
    pub target: String,
    /// Labelled target test data, evaluated once at the end.
    pub target_test: Option<String>,
    /// Where the shorthand datasets live (`$GRAFT_HOME/data` unless set).
    pub data_root: PathBuf,
    /// `lenet` or a zoo model id (frozen trunk, pooled features).
    pub backbone: String,
    /// Weights file for a zoo backbone instead of the cached pull.
    pub weights: Option<PathBuf>,
    pub bottleneck: usize,
    pub epochs: usize,
    /// Iterations per epoch; `None`: one pass over the source training data.
    pub iters_per_epoch: Option<usize>,
    /// Images per domain per iteration.
    pub batch_size: usize,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    /// γ of `--lr-schedule inv`.
    #[serde(default = "default_lr_gamma")]
    pub lr_gamma: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Weight of the adaptation loss; `None`: the method's default.
    pub lambda: Option<f64>,
    /// `None`: the method's default.
    pub lambda_schedule: Option<LambdaSchedule>,
    /// M of `--lambda-schedule warm-start`: iterations to reach 2/(1 + e^−1) − 1 ≈ 0.46.
    #[serde(default = "default_lambda_max_iters")]
    pub lambda_max_iters: usize,
    /// CDAN+E: entropy conditioning.
    pub entropy: bool,
    /// Hidden width of the domain discriminator.
    pub disc_hidden: usize,
    /// ADDA: epochs of source pre-training before the adversarial phase (`None`: `epochs / 2`).
    pub pretrain_epochs: Option<usize>,
    /// ADDA: the adversarial phase's objective and optimiser.
    #[serde(default)]
    pub adda_objective: AddaObjective,
    /// Random transforms of the training images of both domains (LeNet only; `fit`'s syntax).
    #[serde(default)]
    pub augment: Augment,
    /// MCC: temperature of the target softmax.
    #[serde(default = "default_mcc_temperature")]
    pub mcc_temperature: f64,
    /// BSP: how many of the largest singular values are penalised.
    #[serde(default = "default_bsp_k")]
    pub bsp_k: usize,
    /// BSP: weight of the spectral penalty.
    #[serde(default = "default_bsp_tradeoff")]
    pub bsp_tradeoff: f64,
    /// AFN: the step Δr by which each feature norm is pushed up.
    #[serde(default = "default_afn_delta")]
    pub afn_delta: f64,
    /// AFN: weight of the target entropy (0: none, TLlib's default).
    #[serde(default)]
    pub afn_entropy: f64,
    /// MDD: the margin γ.
    #[serde(default = "default_mdd_margin")]
    pub mdd_margin: f64,
    /// DAAN: hidden width of the per-class local discriminators.
    #[serde(default = "default_daan_local_hidden")]
    pub daan_local_hidden: usize,
    /// DAAN: a fixed ω (0: DANN's marginal alignment only, 1: the local discriminators only);
    /// `None`: the dynamic factor, re-estimated after every epoch.
    #[serde(default)]
    pub daan_omega: Option<f64>,
    /// AutoDIAL: α of every alignment layer at the start (1: BatchNorm per domain).
    #[serde(default = "default_autodial_alpha_init")]
    pub autodial_alpha_init: f64,
    /// DSN: weight α of the scale-invariant reconstruction loss.
    #[serde(default = "default_dsn_alpha")]
    pub dsn_alpha: f64,
    /// DSN: weight β of the difference (shared/private orthogonality) loss.
    #[serde(default = "default_dsn_beta")]
    pub dsn_beta: f64,
    /// DSN: weight γ of the similarity (DANN adversarial) loss on the shared codes.
    #[serde(default = "default_dsn_gamma")]
    pub dsn_gamma: f64,
    /// How the kept epoch (of ADDA: of its adversarial phase) is chosen; `None`: source-val, or
    /// last for ADDA's adversarial phase.
    #[serde(default)]
    pub select: Option<Select>,
    /// Fraction of the source held out (stratified, seeded) to pick the epoch.
    pub val_split: f64,
    pub seed: u64,
}

impl AdaptConfig {
    pub fn new(method: Method, source: &str, target: &str) -> Self {
        Self {
            method,
            source: source.into(),
            target: target.into(),
            target_test: None,
            data_root: crate::data::fetch::default_data_root(),
            backbone: "lenet".into(),
            weights: None,
            bottleneck: 256,
            epochs: 20,
            iters_per_epoch: None,
            batch_size: 32,
            lr: 0.01,
            lr_schedule: LrSchedule::Anneal,
            lr_gamma: default_lr_gamma(),
            momentum: 0.9,
            weight_decay: 1e-3,
            lambda: None,
            lambda_schedule: None,
            lambda_max_iters: default_lambda_max_iters(),
            entropy: false,
            disc_hidden: 1024,
            pretrain_epochs: None,
            adda_objective: AddaObjective::Gan,
            augment: Augment::default(),
            mcc_temperature: default_mcc_temperature(),
            bsp_k: default_bsp_k(),
            bsp_tradeoff: default_bsp_tradeoff(),
            afn_delta: default_afn_delta(),
            afn_entropy: 0.0,
            mdd_margin: default_mdd_margin(),
            daan_local_hidden: default_daan_local_hidden(),
            daan_omega: None,
            autodial_alpha_init: default_autodial_alpha_init(),
            dsn_alpha: default_dsn_alpha(),
            dsn_beta: default_dsn_beta(),
            dsn_gamma: default_dsn_gamma(),
            select: None,
            val_split: 0.1,
            seed: 0,
        }
    }

    pub fn lambda(&self) -> f64 {
        self.lambda.unwrap_or(self.method.default_lambda())
    }

    pub fn lambda_schedule(&self) -> LambdaSchedule {
        self.lambda_schedule.unwrap_or(self.method.default_lambda_schedule())
    }

    /// How the adaptation phase keeps its epoch: `--select`, else source-val (ADDA's adversarial
    /// phase: last, since its target encoder is not meant to work on the source).
    pub fn select(&self) -> Select {
        self.select.unwrap_or(if self.method == Method::Adda { Select::Last } else { Select::SourceVal })
    }

    pub fn pretrain_epochs(&self) -> usize {
        self.pretrain_epochs.unwrap_or((self.epochs / 2).max(1))
    }

    pub fn validate(&self) -> Result<()> {
        let positive = |setting: &str, v: usize| if v == 0 { Err(GraftError::setting(setting, "0", "must be at least 1")) } else { Ok(()) };
        positive("epochs", self.epochs)?;
        positive("batch_size", self.batch_size)?;
        positive("bottleneck", self.bottleneck)?;
        positive("disc_hidden", self.disc_hidden)?;
        positive("lambda_max_iters", self.lambda_max_iters)?;
        if let Some(i) = self.iters_per_epoch {
            positive("iters_per_epoch", i)?;
        }
        if self.method == Method::Adda {
            positive("pretrain_epochs", self.pretrain_epochs())?;
        }
        let finite = |setting: &str, v: f64, ok: bool, why: &str| if v.is_finite() && ok { Ok(()) } else { Err(GraftError::setting(setting, &v.to_string(), why)) };
        finite("lr", self.lr, self.lr > 0.0, "must be a positive number")?;
        finite("lr_gamma", self.lr_gamma, self.lr_gamma >= 0.0, "must not be negative")?;
        finite("momentum", self.momentum, (0.0..1.0).contains(&self.momentum), "must lie in [0, 1)")?;
        finite("weight_decay", self.weight_decay, self.weight_decay >= 0.0, "must not be negative")?;
        finite("lambda", self.lambda(), self.lambda() >= 0.0, "must not be negative")?;
        finite("val_split", self.val_split, (0.0..1.0).contains(&self.val_split), "must lie in [0, 1)")?;
        if self.batch_size < 2 && self.method != Method::SourceOnly {
            return Err(GraftError::setting("batch_size", &self.batch_size.to_string(), "adaptation losses need at least 2 images per domain"));
        }
        if self.adda_objective != AddaObjective::Gan && self.method != Method::Adda {
            return Err(GraftError::setting("adda_objective", &self.method.to_string(), "applies to --method adda only"));
        }
        self.augment.validate()?;
        if !self.augment.is_identity() && self.backbone != "lenet" {
            return Err(GraftError::setting("augment", &self.augment.to_string(), "applies to the lenet backbone only (a zoo backbone adapts cached features)"));
        }
        finite("mcc_temperature", self.mcc_temperature, self.mcc_temperature > 0.0, "must be a positive number")?;
        positive("bsp_k", self.bsp_k)?;
        finite("bsp_tradeoff", self.bsp_tradeoff, self.bsp_tradeoff >= 0.0, "must not be negative")?;
        finite("afn_delta", self.afn_delta, self.afn_delta >= 0.0, "must not be negative")?;
        finite("afn_entropy", self.afn_entropy, self.afn_entropy >= 0.0, "must not be negative")?;
        finite("mdd_margin", self.mdd_margin, self.mdd_margin > 0.0, "must be a positive number")?;
        positive("daan_local_hidden", self.daan_local_hidden)?;
        if let Some(omega) = self.daan_omega {
            finite("daan_omega", omega, (0.0..=1.0).contains(&omega), "must lie in [0, 1]")?;
        }
        finite("autodial_alpha_init", self.autodial_alpha_init, (0.5..=1.0).contains(&self.autodial_alpha_init), "must lie in [0.5, 1]")?;
        finite("dsn_alpha", self.dsn_alpha, self.dsn_alpha >= 0.0, "must not be negative")?;
        finite("dsn_beta", self.dsn_beta, self.dsn_beta >= 0.0, "must not be negative")?;
        finite("dsn_gamma", self.dsn_gamma, self.dsn_gamma >= 0.0, "must not be negative")?;
        let defaults = AdaptConfig::new(self.method, "", "");
        let own: [(&str, bool, Method); 12] = [
            ("mcc_temperature", self.mcc_temperature != defaults.mcc_temperature, Method::Mcc),
            ("bsp_k", self.bsp_k != defaults.bsp_k, Method::Bsp),
            ("bsp_tradeoff", self.bsp_tradeoff != defaults.bsp_tradeoff, Method::Bsp),
            ("afn_delta", self.afn_delta != defaults.afn_delta, Method::Afn),
            ("afn_entropy", self.afn_entropy != defaults.afn_entropy, Method::Afn),
            ("mdd_margin", self.mdd_margin != defaults.mdd_margin, Method::Mdd),
            ("daan_local_hidden", self.daan_local_hidden != defaults.daan_local_hidden, Method::Daan),
            ("daan_omega", self.daan_omega.is_some(), Method::Daan),
            ("autodial_alpha_init", self.autodial_alpha_init != defaults.autodial_alpha_init, Method::Autodial),
            ("dsn_alpha", self.dsn_alpha != defaults.dsn_alpha, Method::Dsn),
            ("dsn_beta", self.dsn_beta != defaults.dsn_beta, Method::Dsn),
            ("dsn_gamma", self.dsn_gamma != defaults.dsn_gamma, Method::Dsn),
        ];
        if let Some((setting, _, m)) = own.iter().find(|(_, changed, m)| *changed && *m != self.method) {
            return Err(GraftError::setting(setting, &self.method.to_string(), format!("applies to --method {m} only")));
        }
        if self.select.is_some_and(|s| s != Select::Last) && self.val_split == 0.0 {
            return Err(GraftError::setting("select", &self.select().to_string(), "needs a source validation split (--val-split above 0)"));
        }
        if self.entropy && self.method != Method::Cdan {
            return Err(GraftError::setting("entropy", &self.method.to_string(), "entropy conditioning applies to --method cdan only"));
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }

    /// Reads a run's `config.toml` (size-checked before it is read).
    pub fn from_toml(path: &std::path::Path) -> Result<Self> {
        crate::fsutil::read_toml(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        for m in METHODS.split(", ") {
            let method: Method = m.parse().unwrap();
            assert_eq!(method.to_string(), m);
        }
        assert!("mmd".parse::<Method>().unwrap_err().to_string().contains("ddc"));
        let c = AdaptConfig::new(Method::Dann, "a", "b");
        c.validate().unwrap();
        assert_eq!(c.lambda_schedule(), LambdaSchedule::Dann);
        assert_eq!(AdaptConfig::new(Method::Dan, "a", "b").lambda_schedule(), LambdaSchedule::Constant);
        let back: AdaptConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let mut bad = c.clone();
        bad.val_split = 1.0;
        assert!(bad.validate().unwrap_err().to_string().contains("val_split"));
        let mut bad = c.clone();
        bad.entropy = true;
        assert!(bad.validate().unwrap_err().to_string().contains("entropy"));
        let mut bad = c.clone();
        bad.adda_objective = AddaObjective::Reversal;
        assert!(bad.validate().unwrap_err().to_string().contains("adda_objective"));
        assert_eq!("reversal".parse::<AddaObjective>().unwrap(), AddaObjective::Reversal);
        assert!("minimax".parse::<AddaObjective>().unwrap_err().to_string().contains("gan or reversal"));
        let mut adda = AdaptConfig::new(Method::Adda, "a", "b");
        adda.adda_objective = AddaObjective::Reversal;
        adda.validate().unwrap();
        assert!(adda.to_toml().contains("adda_objective = \"reversal\""));
        let mut aug = c.clone();
        aug.augment = "rotate:10,zoom:0.2".parse().unwrap();
        aug.validate().unwrap();
        let back: AdaptConfig = toml::from_str(&aug.to_toml()).unwrap();
        assert_eq!(back, aug);
        aug.backbone = "efficientnet-lite0".into();
        assert!(aug.validate().unwrap_err().to_string().contains("augment"));
        let mut bad = c.clone();
        bad.lr_gamma = -1.0;
        assert!(bad.validate().unwrap_err().to_string().contains("lr_gamma"));
        let mut bad = c.clone();
        bad.lambda_max_iters = 0;
        assert!(bad.validate().unwrap_err().to_string().contains("lambda_max_iters"));
        let mut bad = c;
        bad.lr = f64::NAN;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn tllib_schedules_parse_and_round_trip() {
        assert_eq!("inv".parse::<LrSchedule>().unwrap(), LrSchedule::Inv);
        assert_eq!("warm-start".parse::<LambdaSchedule>().unwrap(), LambdaSchedule::WarmStart);
        assert!("inverse".parse::<LrSchedule>().unwrap_err().to_string().contains("inv"));
        assert!("warm".parse::<LambdaSchedule>().unwrap_err().to_string().contains("warm-start"));
        let mut c = AdaptConfig::new(Method::Cdan, "a", "b");
        c.lr_schedule = LrSchedule::Inv;
        c.lr_gamma = 0.002;
        c.lambda_schedule = Some(LambdaSchedule::WarmStart);
        c.lambda_max_iters = 500;
        c.validate().unwrap();
        let text = c.to_toml();
        assert!(text.contains("lr_schedule = \"inv\"") && text.contains("lambda_schedule = \"warm-start\""), "{text}");
        assert!(text.contains("lr_gamma = 0.002") && text.contains("lambda_max_iters = 500"), "{text}");
        let back: AdaptConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        // A config saved before these fields existed still loads, with the defaults.
        let old: String = text.lines().filter(|l| !l.starts_with("lr_gamma") && !l.starts_with("lambda_max_iters")).collect::<Vec<_>>().join("\n");
        let back: AdaptConfig = toml::from_str(&old).unwrap();
        assert_eq!((back.lr_gamma, back.lambda_max_iters), (0.001, 1000));
    }
}
