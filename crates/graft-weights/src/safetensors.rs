//! safetensors: an 8-byte little-endian header length, a JSON header, then
//! raw little-endian tensor data. Parsing and validation (offsets inside the
//! buffer, sizes matching shapes) are the `safetensors` crate's; this module
//! converts to and from our [`StateDict`] and writes files atomically.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ::safetensors::tensor::{Dtype, TensorView};
use ::safetensors::SafeTensors;

use crate::error::{sanitize, WeightsError};
use crate::tensor::{decode_all, numel, DType, StateDict, Tensor};

fn st_error(path: &Path, reason: impl Into<String>) -> WeightsError {
    WeightsError::Safetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

pub(crate) fn load(path: &Path) -> Result<StateDict, WeightsError> {
    let bytes = crate::fsio::read_regular(path).map_err(|e| WeightsError::io(path, e))?;
    parse(path, &bytes)
}

pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<StateDict, WeightsError> {
    let fail = |e: ::safetensors::SafeTensorError| match e {
        // The crate does not say which tensor; find it.
        ::safetensors::SafeTensorError::TensorInvalidInfo
        | ::safetensors::SafeTensorError::MisalignedSlice => {
            st_error(path, explain_size_mismatch(bytes).unwrap_or_else(|| e.to_string()))
        }
        e => st_error(path, e.to_string()),
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(fail)?;
    let st = SafeTensors::deserialize(bytes).map_err(fail)?;

    let mut out = StateDict::default();
    if let Some(meta) = header.metadata() {
        out.metadata = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::I16 => DType::I16,
            Dtype::I8 => DType::I8,
            Dtype::U8 => DType::U8,
            Dtype::BOOL => DType::Bool,
            other => {
                return Err(st_error(
                    path,
                    format!(
                        "tensor `{}` has unsupported dtype {other:?}",
                        sanitize(&name)
                    ),
                ))
            }
        };
        let shape = view.shape().to_vec();
        // The crate has already checked data length against shape x dtype;
        // check again so a crate bug cannot hand us a mis-sized tensor.
        let n = numel(&shape);
        let expected = n.and_then(|n| n.checked_mul(dtype.size_bytes()));
        if expected != Some(view.data().len()) {
            return Err(st_error(
                path,
                format!(
                    "tensor `{}`: {} data bytes do not match shape {shape:?}",
                    sanitize(&name),
                    view.data().len()
                ),
            ));
        }
        let data = decode_all(dtype, view.data(), false);
        out.tensors.insert(name, Tensor { shape, dtype, data });
    }
    Ok(out)
}

/// The first tensor of the header whose byte range disagrees with its dtype
/// and shape, described; `None` if the header cannot be read or none does.
/// Only called once the safetensors crate has refused the file, to name the
/// tensor in the error (its own message does not).
fn explain_size_mismatch(bytes: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let value: serde_json::Value = serde_json::from_slice(header).ok()?;
    for (name, info) in value.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype")?.as_str()?;
        let bits: u64 = match dtype {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
            "I16" | "U16" | "F16" | "BF16" => 16,
            "I32" | "U32" | "F32" => 32,
            "I64" | "U64" | "F64" => 64,
            _ => continue,
        };
        let shape: Vec<u64> = info
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()?;
        let offsets = info.get("data_offsets")?.as_array()?;
        let (s, e) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        let needed = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(bits / 8));
        let have = e.checked_sub(s);
        if needed != have {
            return Some(format!(
                "tensor `{}`: its data is {} bytes, but {dtype} x shape {shape:?} needs {}",
                sanitize(name),
                have.map_or_else(|| "a negative number of".to_string(), |h| h.to_string()),
                needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
            ));
        }
    }
    None
}

/// Write `dict` as f32 safetensors with its metadata in `__metadata__`.
/// The file appears at `path` complete or not at all (see [`atomic_write`]).
pub(crate) fn save(path: &Path, dict: &StateDict) -> Result<(), WeightsError> {
    let mut buffers: Vec<(&str, &[usize], Vec<u8>)> = Vec::with_capacity(dict.tensors.len());
    for (name, t) in &dict.tensors {
        if name == "__metadata__" {
            return Err(st_error(
                path,
                "`__metadata__` is reserved and cannot name a tensor",
            ));
        }
        let n = numel(&t.shape)
            .filter(|&n| n.checked_mul(4).is_some())
            .ok_or_else(|| {
                st_error(
                    path,
                    format!("tensor `{}`: shape {:?} overflows", sanitize(name), t.shape),
                )
            })?;
        if n != t.data.len() {
            return Err(st_error(
                path,
                format!(
                    "tensor `{}`: shape {:?} needs {n} values but it has {}",
                    sanitize(name),
                    t.shape,
                    t.data.len()
                ),
            ));
        }
        let bytes: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
        buffers.push((name, &t.shape, bytes));
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (name, shape, bytes) in &buffers {
        let view = TensorView::new(Dtype::F32, shape.to_vec(), bytes)
            .map_err(|e| st_error(path, format!("tensor `{}`: {e}", sanitize(name))))?;
        views.push((*name, view));
    }
    let metadata: Option<HashMap<String, String>> = if dict.metadata.is_empty() {
        None
    } else {
        Some(
            dict.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    let bytes =
        ::safetensors::serialize(views, metadata).map_err(|e| st_error(path, e.to_string()))?;
    drop(buffers);
    atomic_write(path, &bytes)
}

/// Write to a fresh temporary file in the destination's directory, fsync it,
/// then rename it over the destination (atomic on POSIX and on NTFS), so a
/// crash or a full disk never leaves a half-written weights file behind. On
/// failure the temporary file is removed.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |e| WeightsError::io(path, e);

    let file_name = path.file_name().ok_or_else(|| {
        io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "destination has no file name",
        ))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let write = || -> std::io::Result<()> {
        // create_new: never clobber (or follow a symlink planted at) the temp name.
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // Persist the rename itself. Best effort: not every platform or file
    // system lets a directory be opened and synced, and the data is safe.
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
