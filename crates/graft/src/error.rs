//! graft's library error type. Every variant names the file, tensor, flag or model involved,
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

    #[error("invalid {flag} `{value}`: {reason}")]
    InvalidSpec { flag: String, value: String, reason: String },

    #[error("{path}: {reason}")]
    Data { path: PathBuf, reason: String },
}

impl GraftError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GraftError::Io { path: path.into(), source }
    }

    pub(crate) fn spec(flag: &str, value: &str, reason: impl Into<String>) -> Self {
        GraftError::InvalidSpec { flag: flag.into(), value: value.into(), reason: reason.into() }
    }
}

/// A flag's value as a unit variant of a serde enum, by the name serde gives it: a flag then
/// accepts exactly the names a saved `config.toml` holds, with no second list to keep in step.
/// Anything else is an [`GraftError::InvalidSpec`] naming the flag, with `expected` as reason.
pub(crate) fn unit_variant<T: serde::de::DeserializeOwned>(flag: &str, value: &str, expected: &str) -> Result<T> {
    use serde::de::IntoDeserializer;
    let name: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = value.into_deserializer();
    T::deserialize(name).map_err(|_| GraftError::spec(flag, value, expected))
}

#[cfg(test)]
mod tests {
    use crate::adapt::config::{AddaObjective, LambdaSchedule, LrSchedule};
    use crate::train::model::HeadPool;

    use super::*;

    /// Each variant's serde name (what config.toml holds) parses back as the flag value, and
    /// anything else is refused naming the flag.
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
            assert_eq!(err, format!("invalid --lambda-schedule `{bad}`: expected constant, dann or warm-start"));
        }
    }
}
