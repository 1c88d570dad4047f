//! Safe, pure-Rust readers for model weight files.
//!
//! * PyTorch legacy `.pth` (torch < 1.6, a stream of pickles + raw storages),
//! * PyTorch zip `.pth`/`.pt` (torch >= 1.6),
//! * safetensors (read and write),
//! * TensorFlow checkpoints (`model.ckpt.index` + `.data-*` shards, [`tfckpt`]),
//! * Caffe `.caffemodel` ([`caffe`]).
//!
//! PyTorch files are pickles, and unpickling with Python runs whatever code
//! the file names. Here the pickle is interpreted by a small VM
//! ([`pickle`](crate::pickle)) that only knows the handful of globals a state
//! dict needs and refuses every other one ([`WeightsError::ForbiddenGlobal`]);
//! it never executes anything. Every size read from a file is checked against
//! the bytes actually present before it is used to slice or allocate, and
//! malformed input of any kind gives an error naming the file, not a panic.
//!
//! All tensors come out as contiguous row-major `f32` ([`Tensor`]), with the
//! original element type kept in [`Tensor::dtype`]. Tensors holding NaN or an
//! infinity are refused ([`WeightsError::NonFinite`], see
//! [`StateDict::check_finite`]), and every size limit is in [`limits`].
//! Files are opened with [`fsio::open_regular`], so a FIFO or a device given as
//! a weights file is refused instead of blocking or reading forever.

use std::io::Read;
use std::path::Path;

pub mod caffe;
mod error;
pub mod fsio;
mod legacy;
pub mod limits;
mod pickle;
mod proto;
mod safetensors;
mod tensor;
pub mod tfckpt;
mod zip;

pub use error::WeightsError;
pub use tensor::{DType, StateDict, Tensor};

/// The on-disk formats this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` before 1.6 (or with `_use_new_zipfile_serialization=False`).
    PytorchLegacy,
    /// `torch.save` since 1.6: a zip archive.
    PytorchZip,
    Safetensors,
}

/// Identify a file's format from its first bytes; the extension is ignored
/// (`.pth`, `.pt`, `.bin` and `.ckpt` are all used for both PyTorch formats).
pub fn detect_format(path: &Path) -> Result<Format, WeightsError> {
    let mut head = [0u8; 16];
    let mut file = fsio::open_regular(path).map_err(|e| WeightsError::io(path, e))?;
    let mut n = 0;
    // `read` may return short counts; loop until 16 bytes or end of file.
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WeightsError::io(path, e)),
        }
    }
    format_of(&head[..n]).ok_or_else(|| WeightsError::NotAWeightsFile {
        path: path.to_path_buf(),
    })
}

fn format_of(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"PK\x03\x04") {
        return Some(Format::PytorchZip);
    }
    // safetensors: u64 header length, then the JSON header's opening brace.
    if head.len() >= 9 && head[8] == b'{' {
        return Some(Format::Safetensors);
    }
    // A pickle opening with PROTO 2 (what torch.save always wrote; accept up
    // to 5 and let the magic-number check decide).
    if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Some(Format::PytorchLegacy);
    }
    None
}

/// `dict`, if all its values are finite (see [`StateDict::check_finite`]).
fn finite(path: &Path, dict: StateDict) -> Result<StateDict, WeightsError> {
    dict.check_finite(path)?;
    Ok(dict)
}

/// Load any supported weights file, choosing the reader by content. A TensorFlow checkpoint
/// is recognised by its name first (its prefix `model.ckpt`, which is no file, its `.index` or
/// a `.data-*` shard, see [`tfckpt::index_of`]), and a Caffe model by its `.caffemodel`
/// extension (protobuf has no magic number).
pub fn load(path: &Path) -> Result<StateDict, WeightsError> {
    if let Some(index) = tfckpt::index_of(path) {
        return tfckpt::load(&index);
    }
    if caffe::is_caffemodel(path) {
        return caffe::load(path);
    }
    let dict = match detect_format(path)? {
        Format::PytorchLegacy => legacy::load(path),
        Format::PytorchZip => zip::load(path),
        Format::Safetensors => safetensors::load(path),
    }?;
    finite(path, dict)
}

/// Like [`load`], for a file already in memory; `name` only labels errors.
pub fn load_bytes(name: &Path, bytes: &[u8]) -> Result<StateDict, WeightsError> {
    let dict = match format_of(&bytes[..bytes.len().min(16)]) {
        Some(Format::PytorchLegacy) => legacy::parse(name, bytes),
        Some(Format::PytorchZip) => zip::parse(name, bytes),
        Some(Format::Safetensors) => safetensors::parse(name, bytes),
        None => Err(WeightsError::NotAWeightsFile {
            path: name.to_path_buf(),
        }),
    }?;
    finite(name, dict)
}

/// Load a PyTorch checkpoint, legacy or zip. The top-level object may be the
/// state dict or a dict holding it under `state_dict`, `model_state_dict` or
/// `model`; non-tensor entries are ignored.
pub fn load_pytorch(path: &Path) -> Result<StateDict, WeightsError> {
    let dict = match detect_format(path)? {
        Format::PytorchLegacy => legacy::load(path),
        Format::PytorchZip => zip::load(path),
        Format::Safetensors => Err(WeightsError::corrupt(
            path,
            "expected a PyTorch checkpoint, but this is a safetensors file",
        )),
    }?;
    finite(path, dict)
}

/// Load a safetensors file. Metadata (`__metadata__`) goes to
/// [`StateDict::metadata`].
pub fn load_safetensors(path: &Path) -> Result<StateDict, WeightsError> {
    finite(path, safetensors::load(path)?)
}

/// Write `dict` as a safetensors file, every tensor as f32 (so integer
/// tensors come back with `dtype == F32`), metadata in `__metadata__`.
/// Atomic: the data goes to a temporary file in the same directory, is
/// fsynced, then renamed over `path`.
pub fn save_safetensors(path: &Path, dict: &StateDict) -> Result<(), WeightsError> {
    safetensors::save(path, dict)
}

/// Refuse files whose tensors would expand to far more elements than the
/// file stores. Overlapping or broadcast views (stride 0) let a tiny file
/// describe enormous tensors; legitimate state dicts share storage at most a
/// few times over (tied weights), so [`limits::MAX_VIEW_EXPANSION`] plus
/// [`limits::VIEW_EXPANSION_SLACK`] for small broadcast buffers is generous,
/// and it bounds memory by the file's real size.
fn check_budget(
    path: &Path,
    tensors: &[(String, pickle::TensorRef)],
    stored_elements: u64,
) -> Result<(), WeightsError> {
    let mut total: u64 = 0;
    for (name, t) in tensors {
        let n = t.view.numel().ok_or_else(|| {
            WeightsError::corrupt(
                path,
                format!(
                    "tensor `{}`: shape {:?} overflows",
                    error::sanitize(name),
                    t.view.shape
                ),
            )
        })?;
        total = total.saturating_add(n as u64);
    }
    let limit = stored_elements
        .saturating_mul(limits::MAX_VIEW_EXPANSION)
        .saturating_add(limits::VIEW_EXPANSION_SLACK);
    if total > limit {
        return Err(WeightsError::corrupt(
            path,
            format!(
                "tensors would expand to {total} elements from {stored_elements} stored ones; refusing to allocate that (limits MAX_VIEW_EXPANSION, VIEW_EXPANSION_SLACK)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_detection_by_content() {
        assert_eq!(format_of(b"PK\x03\x04rest"), Some(Format::PytorchZip));
        assert_eq!(
            format_of(b"\x10\0\0\0\0\0\0\0{\"a\":1}"),
            Some(Format::Safetensors)
        );
        assert_eq!(
            format_of(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9"),
            Some(Format::PytorchLegacy)
        );
        assert_eq!(format_of(b"\x80\x07"), None);
        assert_eq!(format_of(b""), None);
        assert_eq!(format_of(b"hello world, not weights"), None);
    }
}
