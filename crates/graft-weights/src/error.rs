//! The one error type of this crate.
//!
//! Every variant carries the path of the file being read, and every message
//! starts with it, so an error printed on its own tells the user which file is
//! at fault. Variants that concern one tensor, storage or pickle global also
//! name it.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading or writing a weights file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The operating system refused a read, write, rename, ...
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The content matches none of the supported formats.
    #[error(
        "{}: not a weights file (expected a PyTorch .pth/.pt checkpoint, legacy or zip, or a safetensors file)",
        path.display()
    )]
    NotAWeightsFile { path: PathBuf },

    /// The file ends before the data it declares.
    #[error("{}: file is truncated: {what}", path.display())]
    Truncated { path: PathBuf, what: String },

    /// The file is structurally invalid.
    #[error("{}: corrupt or unsupported weights file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    /// The pickle asks for a Python global outside the state-dict allowlist.
    /// Loading it with Python's `torch.load` could run arbitrary code; we
    /// refuse it before doing anything else with the file.
    #[error(
        "{}: refusing to load: pickle calls forbidden global `{module}.{name}` (a state dict needs only tensors)",
        path.display()
    )]
    ForbiddenGlobal {
        path: PathBuf,
        module: String,
        name: String,
    },

    /// A tensor refers to a storage that the file does not contain.
    #[error("{}: tensor data refers to storage `{key}`, which is not in the file", path.display())]
    MissingStorage { path: PathBuf, key: String },

    /// A tensor's view (offset, size, stride) reaches past the end of its storage.
    #[error(
        "{}: tensor `{tensor}` needs {needed} bytes of storage but only {available} are present",
        path.display()
    )]
    StorageTooSmall {
        path: PathBuf,
        tensor: String,
        needed: u64,
        available: u64,
    },

    /// The file would make the reader go over one of the limits in [`crate::limits`]
    /// (named in the message by its constant's name). `remedy`, possibly empty, says how a
    /// genuine file can get under it.
    #[error("{}: {what} (limit `{limit}` = {max}){remedy}", path.display())]
    LimitExceeded {
        path: PathBuf,
        what: String,
        /// The constant's name in [`crate::limits`].
        limit: &'static str,
        max: u64,
        remedy: String,
    },

    /// A floating-point tensor holds NaN or an infinity: every prediction made with it
    /// would be NaN (or meaningless), so it is refused where it is loaded.
    #[error(
        "{}: tensor `{tensor}` holds {count} non-finite value(s) (first: {first} at element {index}); refusing weights with NaN or infinity",
        path.display()
    )]
    NonFinite {
        path: PathBuf,
        tensor: String,
        /// How many of its elements are NaN or infinite.
        count: usize,
        /// The first one: `NaN`, `inf` or `-inf`.
        first: String,
        /// Its flat (row-major) index.
        index: usize,
    },

    /// The safetensors crate rejected the file, or writing one failed.
    #[error("{}: safetensors: {reason}", path.display())]
    Safetensors { path: PathBuf, reason: String },
}

impl WeightsError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            WeightsError::Io { path, .. }
            | WeightsError::NotAWeightsFile { path }
            | WeightsError::Truncated { path, .. }
            | WeightsError::Corrupt { path, .. }
            | WeightsError::ForbiddenGlobal { path, .. }
            | WeightsError::MissingStorage { path, .. }
            | WeightsError::StorageTooSmall { path, .. }
            | WeightsError::LimitExceeded { path, .. }
            | WeightsError::NonFinite { path, .. }
            | WeightsError::Safetensors { path, .. } => path,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        WeightsError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn limit(
        path: &Path,
        what: impl Into<String>,
        limit: &'static str,
        max: u64,
        remedy: &str,
    ) -> Self {
        WeightsError::LimitExceeded {
            path: path.to_path_buf(),
            what: what.into(),
            limit,
            max,
            remedy: if remedy.is_empty() { String::new() } else { format!("; {remedy}") },
        }
    }

    pub(crate) fn truncated(path: &Path, what: impl Into<String>) -> Self {
        WeightsError::Truncated {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// Strings taken from a file end up in error messages; escape control
/// characters so a hostile file cannot forge extra lines in a log, and cap the
/// length so it cannot flood one.
pub(crate) fn sanitize(s: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
