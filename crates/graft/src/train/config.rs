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
            _ => Err(GraftError::setting("optimizer", s, "expected sgd or adamw")),
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
        let bad = |why: &str| GraftError::setting("stages", s, why.to_string());
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
                let k: usize = t.trim_start_matches("top").parse().map_err(|_| GraftError::setting("stages", t, "bad topK"))?;
                if k > blocks {
                    return Err(GraftError::setting("stages", t, format!("the model has only {blocks} blocks")));
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

impl ClassWeights {
    /// The loss weight of each of `classes` classes for training labels `labels` (`None`: all
    /// equal). A class without training examples weighs 0.
    pub fn weights(self, labels: &[usize], classes: usize) -> Option<Vec<f32>> {
        match self {
            ClassWeights::None => None,
            ClassWeights::Balanced => {
                let mut counts = vec![0usize; classes];
                labels.iter().for_each(|&l| counts[l] += 1);
                let n = labels.len() as f32;
                Some(counts.iter().map(|&c| if c == 0 { 0.0 } else { n / (classes as f32 * c as f32) }).collect())
            }
        }
    }
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

/// The validation metric that picks the kept epoch and drives early stopping and
/// `--reduce-on-plateau` (Keras' `monitor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    /// Lower is better; keeps improving after accuracy saturates (Keras' default).
    #[default]
    ValLoss,
    /// Higher is better; ties go to the lower validation loss.
    ValAccuracy,
}

impl Monitor {
    /// What a `config.toml` written before `monitor` existed was trained with.
    fn legacy() -> Self {
        Monitor::ValAccuracy
    }

    /// The monitored figure of an epoch's validation loss and accuracy.
    pub fn value(self, loss: f64, accuracy: f64) -> f64 {
        match self {
            Monitor::ValLoss => loss,
            Monitor::ValAccuracy => accuracy,
        }
    }

    pub fn higher_is_better(self) -> bool {
        self == Monitor::ValAccuracy
    }

    /// Whether an epoch with validation `(loss, accuracy)` beats the best so far by more than
    /// `min_delta`; `best` is `None` before the first validation epoch. On the accuracy, an
    /// exact tie goes to the lower loss.
    pub fn improves(self, (loss, accuracy): (f64, f64), best: Option<(f64, f64)>, min_delta: f64) -> bool {
        let Some((best_loss, best_accuracy)) = best else { return true };
        match self {
            Monitor::ValLoss => loss < best_loss - min_delta,
            Monitor::ValAccuracy => accuracy > best_accuracy + min_delta || (accuracy == best_accuracy && loss < best_loss),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
        }
    }
}

impl FromStr for Monitor {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::unit_variant("monitor", s, "expected val_loss or val_accuracy")
    }
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
    /// The validation metric that picks the kept epoch, early stopping and plateau reduction
    /// watch. A config.toml without it predates the setting and was trained on `val_accuracy`.
    #[serde(default = "Monitor::legacy")]
    pub monitor: Monitor,
    /// Stop after this many epochs without improvement of the monitored metric.
    pub patience: Option<usize>,
    pub min_delta: f64,
    /// Multiply the learning rate by 0.1 after this many epochs without improvement.
    pub reduce_on_plateau: Option<usize>,
    pub seed: u64,
    /// `graft fit --strategy auto`: the advisor's choice and its measures (record only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Semi-supervised training on unlabelled data (`--unlabelled DIR --method …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semi: Option<super::semi::SemiConfig>,
    /// Multi-task training: one head per label column of a text CSV (`--tasks a,b`). Empty: one
    /// task, the `label` column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSpec>,
}

/// One task of a multi-task fit: its label column and its loss weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub column: String,
    pub weight: f64,
}

impl TaskSpec {
    /// `--tasks a,b` with `--task-weights 1,0.5` (default: 1 each).
    pub fn parse_list(columns: &str, weights: Option<&str>) -> Result<Vec<TaskSpec>> {
        let names: Vec<String> = columns.split(',').map(|c| c.trim().to_string()).collect();
        let weights: Vec<f64> = match weights {
            None => vec![1.0; names.len()],
            Some(w) => w
                .split(',')
                .map(|x| x.trim().parse::<f64>().map_err(|_| GraftError::setting("task_weights", w, format!("`{x}` is not a number"))))
                .collect::<Result<_>>()?,
        };
        if weights.len() != names.len() {
            return Err(GraftError::setting("task_weights", &weights.len().to_string(), format!("{} weights for {} tasks", weights.len(), names.len())));
        }
        let tasks: Vec<TaskSpec> = names.into_iter().zip(weights).map(|(column, weight)| TaskSpec { column, weight }).collect();
        TaskSpec::validate(&tasks)?;
        Ok(tasks)
    }

    pub fn validate(tasks: &[TaskSpec]) -> Result<()> {
        let list = || tasks.iter().map(|t| t.column.as_str()).collect::<Vec<_>>().join(",");
        for (i, t) in tasks.iter().enumerate() {
            if t.column.is_empty() || tasks[..i].iter().any(|u| u.column == t.column) {
                return Err(GraftError::setting("tasks", &list(), "each task is a distinct, non-empty CSV column name"));
            }
            if !(t.weight.is_finite() && t.weight >= 0.0) {
                return Err(GraftError::setting("task_weights", &t.weight.to_string(), "a task's loss weight is a number, 0 or more"));
            }
        }
        if tasks.len() > 64 {
            return Err(GraftError::setting("tasks", &list(), "at most 64 tasks"));
        }
        Ok(())
    }
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
            monitor: Monitor::ValLoss,
            patience: None,
            min_delta: 0.0,
            reduce_on_plateau: None,
            seed: 0,
            strategy: None,
            semi: None,
            tasks: Vec::new(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, setting: &str, value: String, why: &str| {
            if ok { Ok(()) } else { Err(GraftError::setting(setting, &value, why.to_string())) }
        };
        check(self.batch_size > 0, "batch_size", self.batch_size.to_string(), "must be at least 1")?;
        crate::limits::check_setting("batch_size", self.batch_size, crate::limits::MAX_BATCH_SIZE, "graft::limits::MAX_BATCH_SIZE")?;
        crate::limits::check_setting("cache_views", self.cache_views, crate::limits::MAX_CACHE_VIEWS, "graft::limits::MAX_CACHE_VIEWS")?;
        check(self.lr > 0.0 && self.lr.is_finite(), "lr", self.lr.to_string(), "must be a positive number")?;
        check((0.0..1.0).contains(&self.dropout), "dropout", self.dropout.to_string(), "must be in [0, 1)")?;
        check((0.0..1.0).contains(&self.label_smoothing), "label_smoothing", self.label_smoothing.to_string(), "must be in [0, 1)")?;
        check(self.body_lr_mult >= 0.0, "body_lr_mult", self.body_lr_mult.to_string(), "must not be negative")?;
        check(self.val.is_some() || (self.val_split >= 0.0 && self.val_split < 1.0), "val_split", self.val_split.to_string(), "must be in [0, 1); 0 trains on everything")?;
        let has_val = self.val.is_some() || self.val_split > 0.0;
        check(has_val || self.patience.is_none(), "patience", String::new(), "early stopping needs validation data (--val or --val-split)")?;
        check(has_val || self.reduce_on_plateau.is_none(), "reduce_on_plateau", String::new(), "needs validation data (--val or --val-split)")?;
        check(self.stages.is_empty() || self.stages.iter().all(|s| s.epochs > 0), "stages", String::new(), "every stage needs at least one epoch")?;
        check(!self.stages.is_empty() || self.epochs > 0, "epochs", self.epochs.to_string(), "must be at least 1")?;
        // Settings a config.toml can hold that the checks above do not cover: each finite and
        // in range, named as in the file.
        check(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0, "warmup_epochs", self.warmup_epochs.to_string(), "must be a number of epochs, 0 or more")?;
        check(self.min_delta.is_finite() && self.min_delta >= 0.0, "min_delta", self.min_delta.to_string(), "must be a number, 0 or more")?;
        check(self.val_split.is_finite(), "val_split", self.val_split.to_string(), "must be a number in [0, 1)")?;
        check(self.body_lr_mult.is_finite(), "body_lr_mult", self.body_lr_mult.to_string(), "must be a finite number")?;
        match self.optimizer {
            Optimizer::Sgd { momentum, weight_decay } => {
                check((0.0..1.0).contains(&momentum), "momentum", momentum.to_string(), "must be in [0, 1)")?;
                check(weight_decay.is_finite() && weight_decay >= 0.0, "weight_decay", weight_decay.to_string(), "must be a number, 0 or more")?;
            }
            Optimizer::Adamw { weight_decay } => {
                check(weight_decay.is_finite() && weight_decay >= 0.0, "weight_decay", weight_decay.to_string(), "must be a number, 0 or more")?;
            }
        }
        self.schedule.validate().map_err(|why| GraftError::setting("schedule", &self.schedule.to_string(), why))?;
        if let Some(semi) = &self.semi {
            semi.validate()?;
        }
        TaskSpec::validate(&self.tasks)?;
        for stage in &self.stages {
            if let Some(lr) = stage.lr {
                check(lr > 0.0 && lr.is_finite(), "stages", lr.to_string(), "a stage's lr must be a positive number")?;
            }
        }
        self.augment.validate()
    }

    /// Epochs the run trains in all: the stages' sum, or `epochs`.
    pub fn total_epochs(&self) -> usize {
        if self.stages.is_empty() { self.epochs } else { self.stages.iter().map(|s| s.epochs).sum() }
    }

    /// Sets the run's length to `total` epochs (`--epochs` with `--resume` or `--config`): the
    /// epochs themselves, or with stages the last stage's, so the stages add up to `total`.
    pub fn set_total_epochs(&mut self, total: usize) -> Result<()> {
        let Some((last, earlier)) = self.stages.split_last_mut() else {
            self.epochs = total;
            return Ok(());
        };
        let before: usize = earlier.iter().map(|s| s.epochs).sum();
        if total <= before {
            return Err(GraftError::setting("epochs", &total.to_string(), format!("the stages before the last take {before} epochs; give more to leave the last stage at least one")));
        }
        last.epochs = total - before;
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("fit config serializes")
    }

    pub fn from_toml(path: &std::path::Path) -> Result<Self> {
        let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_CONFIG_FILE_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| GraftError::Data { path: path.into(), reason: "not UTF-8 text".into() })?;
        Self::from_toml_str(path, &text)
    }

    /// [`from_toml`](Self::from_toml) on text already in memory; `path` only names it in errors.
    pub fn from_toml_str(path: &std::path::Path, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| GraftError::Data { path: path.into(), reason: crate::limits::shorten_message(&e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FitConfig {
        FitConfig::new("efficientnet-lite0", PathBuf::from("data"))
    }

    /// Every float setting a config.toml holds is refused when NaN (or out of range), and the
    /// error names the setting.
    #[test]
    fn float_settings_are_finite_and_in_range() {
        assert!(config().validate().is_ok());
        let cases: Vec<(&str, Box<dyn Fn(&mut FitConfig)>)> = vec![
            ("warmup_epochs", Box::new(|c| c.warmup_epochs = f64::NAN)),
            ("warmup_epochs", Box::new(|c| c.warmup_epochs = -1.0)),
            ("min_delta", Box::new(|c| c.min_delta = f64::NAN)),
            ("min_delta", Box::new(|c| c.min_delta = f64::INFINITY)),
            ("lr", Box::new(|c| c.lr = f64::NAN)),
            ("dropout", Box::new(|c| c.dropout = f64::NAN)),
            ("label_smoothing", Box::new(|c| c.label_smoothing = f64::NAN)),
            ("body_lr_mult", Box::new(|c| c.body_lr_mult = f64::NAN)),
            ("body_lr_mult", Box::new(|c| c.body_lr_mult = f64::INFINITY)),
            ("val_split", Box::new(|c| c.val_split = f64::NAN)),
            ("weight_decay", Box::new(|c| c.optimizer = Optimizer::Adamw { weight_decay: f64::NAN })),
            ("momentum", Box::new(|c| c.optimizer = Optimizer::Sgd { momentum: f64::NAN, weight_decay: 0.0 })),
            ("weight_decay", Box::new(|c| c.optimizer = Optimizer::Sgd { momentum: 0.9, weight_decay: -0.1 })),
            ("schedule", Box::new(|c| c.schedule = Schedule::OneCycle { pct_start: f64::NAN })),
            ("schedule", Box::new(|c| c.schedule = Schedule::Cosine { min_factor: f64::NAN })),
            ("stages", Box::new(|c| c.stages = vec![Stage { train: "head".into(), epochs: 1, lr: Some(f64::NAN) }])),
        ];
        for (name, set) in cases {
            let mut c = config();
            set(&mut c);
            let err = c.validate().expect_err(name).to_string();
            assert!(err.starts_with(&format!("invalid {name} ")), "{name}: {err}");
        }
    }

    /// `nan` in a config.toml parses (TOML has it) and is then refused by validate.
    #[test]
    fn nan_from_a_config_file_is_refused() {
        let text = config().to_toml().replace("min_delta = 0.0", "min_delta = nan");
        let parsed: FitConfig = toml::from_str(&text).unwrap();
        assert!(parsed.min_delta.is_nan());
        assert!(parsed.validate().unwrap_err().to_string().contains("min_delta"));
    }

    /// New runs watch the validation loss; a config.toml written before `monitor` existed was
    /// trained on the validation accuracy and keeps it.
    #[test]
    fn monitor_defaults_to_val_loss_and_old_configs_keep_val_accuracy() {
        let new = config();
        assert_eq!(new.monitor, Monitor::ValLoss);
        let text = new.to_toml();
        assert!(text.contains("monitor = \"val_loss\""), "{text}");
        let old: String = text.lines().filter(|l| !l.starts_with("monitor")).map(|l| format!("{l}\n")).collect();
        let parsed: FitConfig = toml::from_str(&old).unwrap();
        assert_eq!(parsed.monitor, Monitor::ValAccuracy);
        assert_eq!("val_accuracy".parse::<Monitor>().unwrap(), Monitor::ValAccuracy);
        assert!("accuracy".parse::<Monitor>().is_err());
    }

    #[test]
    fn monitor_improvement() {
        let (l, a) = (Monitor::ValLoss, Monitor::ValAccuracy);
        assert!(l.improves((0.5, 0.9), None, 0.0));
        assert!(l.improves((0.4, 0.8), Some((0.5, 0.9)), 0.0));
        assert!(!l.improves((0.45, 1.0), Some((0.5, 0.9)), 0.1));
        assert!(!a.improves((0.4, 0.9), Some((0.5, 0.95)), 0.0));
        assert!(a.improves((0.4, 0.9), Some((0.5, 0.9)), 0.0), "a tie on accuracy goes to the lower loss");
        assert!(!l.improves((f64::NAN, 0.9), Some((0.5, 0.9)), 0.0));
    }

    #[test]
    fn total_epochs_with_stages_extends_the_last_stage() {
        let mut c = config();
        c.set_total_epochs(8).unwrap();
        assert_eq!((c.epochs, c.total_epochs()), (8, 8));
        c.stages = Stage::parse_list("head:3,all:5:1e-4").unwrap();
        c.set_total_epochs(12).unwrap();
        assert_eq!(c.stages[1].epochs, 9);
        assert_eq!(c.total_epochs(), 12);
        let err = c.set_total_epochs(3).unwrap_err().to_string();
        assert!(err.contains("epochs") && err.contains("3"), "{err}");
    }
}
