//! The resolved settings of one `graft fit` run. Flags and an optional config file resolve
//! into this struct before anything runs; it is saved as `config.toml` in the run directory,
//! and `graft fit --config RUN/config.toml` reruns it.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::model::{HeadPool, HeadSpec};
use super::schedule::Schedule;
use crate::data::augment::Augment;
use crate::zoo::layers::FreezeSpec;
use crate::{GraftError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Optimizer {
    /// SGD with (PyTorch-style, undampened) momentum.
    Sgd { momentum: f64, weight_decay: f64 },
    /// AdamW with PyTorch's defaults (eps 1e-8, weight decay 0.01), not burn's.
    Adamw { weight_decay: f64 },
}

impl FromStr for Optimizer {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sgd" => Ok(Optimizer::Sgd { momentum: 0.9, weight_decay: 0.0 }),
            "adamw" => Ok(Optimizer::Adamw { weight_decay: 0.01 }),
            _ => Err(GraftError::spec("--optimizer", s, "expected sgd or adamw")),
        }
    }
}

/// One stage of staged fine-tuning (`--stages head:3,all:5:1e-4`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// What trains: `head` (trunk frozen), `all`, or `topK` (the last K blocks and the head conv).
    pub train: String,
    pub epochs: usize,
    /// This stage's learning rate (default: `--lr`); the trunk gets it × `--body-lr-mult`.
    #[serde(default)]
    pub lr: Option<f64>,
}

impl Stage {
    pub fn parse_list(s: &str) -> Result<Vec<Stage>> {
        let bad = |why: &str| GraftError::spec("--stages", s, why.to_string());
        s.split(',')
            .map(|item| {
                let mut parts = item.split(':');
                let (train, epochs, lr) = (parts.next().unwrap_or(""), parts.next(), parts.next());
                if parts.next().is_some() || epochs.is_none() {
                    return Err(bad("expected WHAT:EPOCHS[:LR] items, e.g. head:3,all:5:1e-4"));
                }
                let epochs = epochs.unwrap_or("").parse::<usize>().map_err(|_| bad("epochs must be a whole number"))?;
                let lr = lr
                    .map(|l| l.parse::<f64>().ok().filter(|l| *l > 0.0 && l.is_finite()).ok_or_else(|| bad("LR must be a positive number")))
                    .transpose()?;
                let ok = train == "head" || train == "all" || train.strip_prefix("top").is_some_and(|k| k.parse::<usize>().is_ok());
                if !ok {
                    return Err(bad("WHAT is head, all or topK (the last K blocks)"));
                }
                Ok(Stage { train: train.to_string(), epochs, lr })
            })
            .collect()
    }

    /// The freeze spec this stage trains under, for a trunk of `blocks` blocks.
    pub fn freeze(&self, blocks: usize) -> Result<FreezeSpec> {
        match self.train.as_str() {
            "head" => Ok(FreezeSpec::All),
            "all" => Ok(FreezeSpec::None),
            t => {
                let k: usize = t.trim_start_matches("top").parse().map_err(|_| GraftError::spec("--stages", t, "bad topK"))?;
                if k > blocks {
                    return Err(GraftError::spec("--stages", t, format!("the model has only {blocks} blocks")));
                }
                Ok(FreezeSpec::FirstBlocks(blocks - k))
            }
        }
    }
}

/// Which class weights the loss uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClassWeights {
    #[default]
    None,
    /// n_samples / (n_classes · n_class): rare classes count more.
    Balanced,
}

/// Whether frozen-trunk activations are computed once and reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Whenever the trunk's prefix is frozen and augmentation is off.
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitConfig {
    pub model: String,
    pub weights: Option<PathBuf>,
    /// Start from random weights instead of the pretrained ones (the "from scratch" baseline).
    pub from_scratch: bool,
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    pub val_split: f64,
    pub freeze: FreezeSpec,
    pub head: HeadSpec,
    pub head_pool: HeadPool,
    pub dropout: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub warmup_epochs: f64,
    /// The trunk's learning rate is `lr × body_lr_mult` (discriminative learning rates).
    pub body_lr_mult: f64,
    /// Staged fine-tuning; when set, it replaces `freeze` and `epochs`.
    pub stages: Vec<Stage>,
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
    pub augment: Augment,
    pub cache: CacheMode,
    /// With augmentation: store this many augmented views per image and use one per epoch
    /// (0: augmentation turns the cache off).
    pub cache_views: usize,
    pub cache_dtype: crate::cache::StoreDtype,
    /// Let BatchNorm in unfrozen blocks use batch statistics and update its running
    /// statistics (always on when training from scratch).
    #[serde(default)]
    pub train_bn: bool,
    /// Stop after this many epochs without improvement of the validation accuracy.
    pub patience: Option<usize>,
    pub min_delta: f64,
    /// Multiply the learning rate by 0.1 after this many epochs without improvement.
    pub reduce_on_plateau: Option<usize>,
    pub seed: u64,
    /// `graft fit --strategy auto`: the advisor's choice and its measures (record only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
}

impl FitConfig {
    /// Defaults for everything but the data and the model.
    pub fn new(model: &str, data: PathBuf) -> Self {
        Self {
            model: model.into(),
            weights: None,
            from_scratch: false,
            data,
            val: None,
            val_split: 0.2,
            freeze: FreezeSpec::All,
            head: HeadSpec::Linear,
            head_pool: HeadPool::Avg,
            dropout: 0.5,
            epochs: 10,
            batch_size: 32,
            lr: 1e-3,
            optimizer: Optimizer::Adamw { weight_decay: 0.01 },
            schedule: Schedule::Constant,
            warmup_epochs: 0.0,
            body_lr_mult: 1.0,
            stages: Vec::new(),
            label_smoothing: 0.0,
            class_weights: ClassWeights::None,
            augment: Augment::default(),
            cache: CacheMode::Auto,
            cache_views: 0,
            train_bn: false,
            cache_dtype: crate::cache::StoreDtype::F32,
            patience: None,
            min_delta: 0.0,
            reduce_on_plateau: None,
            seed: 0,
            strategy: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, flag: &str, value: String, why: &str| {
            if ok { Ok(()) } else { Err(GraftError::spec(flag, &value, why.to_string())) }
        };
        check(self.batch_size > 0, "--batch-size", self.batch_size.to_string(), "must be at least 1")?;
        check(self.lr > 0.0 && self.lr.is_finite(), "--lr", self.lr.to_string(), "must be a positive number")?;
        check((0.0..1.0).contains(&self.dropout), "--dropout", self.dropout.to_string(), "must be in [0, 1)")?;
        check((0.0..1.0).contains(&self.label_smoothing), "--label-smoothing", self.label_smoothing.to_string(), "must be in [0, 1)")?;
        check(self.body_lr_mult >= 0.0, "--body-lr-mult", self.body_lr_mult.to_string(), "must not be negative")?;
        check(self.val.is_some() || (self.val_split >= 0.0 && self.val_split < 1.0), "--val-split", self.val_split.to_string(), "must be in [0, 1); 0 trains on everything")?;
        let has_val = self.val.is_some() || self.val_split > 0.0;
        check(has_val || self.patience.is_none(), "--patience", String::new(), "early stopping needs validation data (--val or --val-split)")?;
        check(has_val || self.reduce_on_plateau.is_none(), "--reduce-on-plateau", String::new(), "needs validation data (--val or --val-split)")?;
        check(self.stages.is_empty() || self.stages.iter().all(|s| s.epochs > 0), "--stages", String::new(), "every stage needs at least one epoch")?;
        check(!self.stages.is_empty() || self.epochs > 0, "--epochs", self.epochs.to_string(), "must be at least 1")?;
        self.augment.validate()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("fit config serializes")
    }

    pub fn from_toml(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| GraftError::io(path, e))?;
        Self::from_toml_str(path, &text)
    }

    /// [`from_toml`](Self::from_toml) on text already in memory; `path` only names it in errors.
    pub fn from_toml_str(path: &std::path::Path, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| GraftError::Data { path: path.into(), reason: e.to_string() })
    }
}
