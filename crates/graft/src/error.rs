//! graft's library error type. Every variant names the file, tensor, setting or model involved,
//! so the CLI can print one line a user can act on.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = GraftError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum GraftError {
    #[error(transparent)]
    Weights(#[from] graft_weights::WeightsError),

    #[error("{path}: tensor `{tensor}` is missing (the file does not hold weights for {model})")]
    MissingTensor { path: PathBuf, tensor: String, model: String },

    #[error("{path}: tensor `{tensor}` has shape {found:?}, {model} needs {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        model: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{path}: cannot read image: {reason}")]
    Image { path: PathBuf, reason: String },

    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel { name: String, known: String },

    #[error("cannot fetch weights for {model}: {reason}. Pass --weights FILE with a local copy instead")]
    Pull { model: String, reason: String },

    #[error("{model} has no published weights graft can pull: pass --weights FILE (a torchvision state dict, zip .pth or safetensors)")]
    NeedsWeights { model: String },

    /// Training diverged: a loss or the weights went NaN or infinite. Nothing from that epoch
    /// is saved.
    #[error("training diverged in epoch {epoch}: the {what} at learning rate {lr:e}; try a lower --lr (e.g. {suggest:.0e})", suggest = lr / 10.0)]
    NonFinite { what: String, epoch: usize, lr: f64 },

    /// A stop was requested (Ctrl-C) between two batches; `run` holds the last completed epoch.
    #[error("{run}: interrupted after {epochs_done} completed epochs", run = run.display())]
    Interrupted { run: PathBuf, epochs_done: usize },

    #[error("{path}: sha256 is {found}, expected {expected} (corrupt or wrong download)")]
    Checksum { path: PathBuf, expected: String, found: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A setting's value is refused. `setting` is the setting's name as `config.toml` spells it
    /// (`epochs`, `freeze`, `head`, …; one of [`SETTINGS`]), never a command-line flag: the CLI
    /// maps it to the flag of the command that ran.
    #[error("invalid {setting} `{value}`: {reason}")]
    InvalidSetting { setting: String, value: String, reason: String },

    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },

    /// `graft export` of something it has no writer for: `what` names the architecture, head
    /// or run kind.
    #[error("cannot export {what}: {reason}")]
    Export { what: String, reason: String },
}

impl GraftError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GraftError::Io { path: path.into(), source }
    }

    /// [`GraftError::InvalidSetting`] for `setting` (one of [`SETTINGS`]).
    pub(crate) fn setting(setting: &str, value: &str, reason: impl Into<String>) -> Self {
        GraftError::InvalidSetting { setting: setting_name(setting), value: value.into(), reason: reason.into() }
    }
}

/// A setting's name from a name or a legacy flag spelling: `--batch-size` → `batch_size`.
/// Callers that still pass flags (a few training modules, until they are rewritten) thereby
/// build the same errors as those that pass the setting.
pub(crate) fn setting_name(name: &str) -> String {
    match name.strip_prefix("--") {
        Some(flag) => flag.replace('-', "_"),
        None => name.to_string(),
    }
}

/// Every setting an [`GraftError::InvalidSetting`] can name, as `config.toml` (or the library's
/// own config structs) spell them. The CLI maps each to a flag, or prints it as is; a library
/// test checks that every setting named in the sources is listed here.
pub const SETTINGS: &[&str] = &[
    // FitConfig (config.toml of `graft fit`) and the run directory.
    "model", "weights", "data", "val", "val_split", "freeze", "head", "head_pool", "dropout", "epochs",
    "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "warmup_epochs",
    "body_lr_mult", "stages", "label_smoothing", "class_weights", "augment", "cache_views", "monitor",
    "patience", "min_delta", "reduce_on_plateau", "train_bn", "out", "resume",
    // AdaptConfig (`graft adapt`), and the run an adapted model is loaded from.
    "method", "source", "target", "target_test", "backbone", "bottleneck", "iters_per_epoch",
    "lr_schedule", "lr_gamma", "lambda", "lambda_schedule", "lambda_max_iters", "entropy",
    "disc_hidden", "pretrain_epochs", "adda_objective", "run",
    "mcc_temperature", "bsp_k", "bsp_tradeoff", "afn_delta", "afn_entropy", "mdd_margin", "daan_local_hidden", "daan_omega", "autodial_alpha_init", "dsn_alpha", "dsn_beta", "dsn_gamma", "select",
    // The classic methods of `graft adapt` (`adapt::shallow::ShallowConfig`).
    "features", "classifier", "kernel", "gamma", "mu", "dim", "iterations", "normalize", "source_samples",
    "target_samples",
    // `graft pretrain` and MLP fits (`restore`, `activation`: an MLP restored from a checkpoint).
    "arch", "noise", "restore", "activation", "cd_k", "visible", "pairs", "margin", "temperature",
    "crop", "projection_hidden",
    // `graft pretrain --method corrupted-text` (`transfer::corrupt::CorruptTextConfig`).
    "corruption",
    // `graft extract`, `graft cache merge`, `graft data import`, `graft probe`.
    "layer", "shard", "parts", "split", "stage",
    // Every command that computes (`--device`, `GRAFT_DEVICE`; a list for data-parallel fit).
    "device",
    // Text models: limits of the tokenizer and encoder, set by the library (max_tokens also by
    // `graft pretrain --method corrupted-text --max-tokens`).
    "max_tokens", "token_batch",
    // Few-shot episodes and zero-shot classification (`graft eval`, `graft predict`).
    "episodes", "way", "shot", "query", "labels", "template",
    // Semi-supervised fits (`graft fit --unlabelled`, `train::semi::SemiConfig`).
    "threshold", "ema", "rampup_epochs", "unlabelled_ratio", "unlabelled_weight", "unlabelled_views",
    "weak_augment", "strong_augment",
    // Multi-task fits (`graft fit --tasks`).
    "tasks", "task_weights",
    // Evaluation (`graft eval`): test-time augmentation.
    "tta",
    // `graft study transferability` (`transfer::study::StudyConfig`).
    "seeds",
    // The learning-rate range test (`graft lr-find`, `train::lr_find::LrSweep`).
    "lr_start", "lr_end", "lr_steps",
];

/// A setting's value as a unit variant of a serde enum, by the name serde gives it: a flag then
/// accepts exactly the names a saved `config.toml` holds, with no second list to keep in step.
/// Anything else is an [`GraftError::InvalidSetting`] naming `setting`, with `expected` as reason.
pub(crate) fn unit_variant<T: serde::de::DeserializeOwned>(setting: &str, value: &str, expected: &str) -> Result<T> {
    use serde::de::IntoDeserializer;
    let name: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = value.into_deserializer();
    T::deserialize(name).map_err(|_| GraftError::setting(setting, value, expected))
}

#[cfg(test)]
mod tests {
    use crate::adapt::config::{AddaObjective, LambdaSchedule, LrSchedule};
    use crate::train::model::HeadPool;

    use super::*;

    /// Each variant's serde name (what config.toml holds) parses back as the value, and
    /// anything else is refused naming the setting.
    #[test]
    fn flag_values_are_the_serde_names() {
        fn round_trip<T: serde::Serialize + std::str::FromStr<Err = GraftError> + PartialEq + std::fmt::Debug>(variants: &[T]) {
            for v in variants {
                let name = serde_json::to_value(v).unwrap();
                assert_eq!(&name.as_str().unwrap().parse::<T>().unwrap(), v);
            }
        }
        round_trip(&[LambdaSchedule::Constant, LambdaSchedule::Dann, LambdaSchedule::WarmStart]);
        round_trip(&[LrSchedule::Constant, LrSchedule::Anneal, LrSchedule::Inv]);
        round_trip(&[AddaObjective::Gan, AddaObjective::Reversal]);
        round_trip(&[HeadPool::Avg, HeadPool::Flatten]);
        assert_eq!("warm-start".parse::<LambdaSchedule>().unwrap(), LambdaSchedule::WarmStart);
        for bad in ["warm_start", "WarmStart", "", "dann "] {
            let err = bad.parse::<LambdaSchedule>().unwrap_err().to_string();
            assert_eq!(err, format!("invalid lambda_schedule `{bad}`: expected constant, dann or warm-start"));
        }
    }

    /// A legacy flag spelling becomes its setting; a setting stays as it is.
    #[test]
    fn setting_names_come_from_flags_or_settings() {
        assert_eq!(setting_name("--batch-size"), "batch_size");
        assert_eq!(setting_name("batch_size"), "batch_size");
        let err = GraftError::setting("--epochs", "0", "must be at least 1");
        assert_eq!(err.to_string(), "invalid epochs `0`: must be at least 1");
        assert!(matches!(err, GraftError::InvalidSetting { ref setting, .. } if setting == "epochs"));
    }

    /// Every setting the library's sources name where they build an `InvalidSetting` (directly
    /// or through a helper taking the setting) is listed in `SETTINGS`, which the CLI maps to
    /// flags; none is empty or a flag once normalised.
    #[test]
    fn every_setting_named_in_the_sources_is_listed() {
        let patterns = [
            r#"GraftError::(?:setting|spec)\(\s*"([^"]*)""#,
            r#"\b(?:unit_variant|check_setting|check_mlp_widths|positive|finite|DomainSpec::parse)\(\s*"([^"]*)""#,
            r#"\bcheck\([^"\n]*?, "([^"]*)", "#,
            r#"\b(?:prepare_fresh_run_dir|\.load)\([^,"()]+, "([^"]*)""#,
            r#"\b(?:read|embed|text_encoder)\("([^"]*)""#,
            r#"(?:let setting|const SETTING: &str) = "([^"]*)""#,
        ];
        let patterns: Vec<regex::Regex> = patterns.iter().map(|p| regex::Regex::new(p).unwrap()).collect();
        let mut found = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for p in &patterns {
                        for c in p.captures_iter(&text) {
                            found.push((path.display().to_string(), c[1].to_string()));
                        }
                    }
                }
            }
        }
        assert!(found.len() > 80, "the patterns found only {} settings: {found:?}", found.len());
        let missing: Vec<_> = found.iter().filter(|(_, s)| !SETTINGS.contains(&setting_name(s).as_str())).collect();
        assert!(missing.is_empty(), "settings named in the sources but not in SETTINGS: {missing:?}");
        for s in SETTINGS {
            assert!(!s.is_empty() && !s.starts_with('-') && !s.contains(' ') && !s.contains('-'), "`{s}`");
        }
    }
}
