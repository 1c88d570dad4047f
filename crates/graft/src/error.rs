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
