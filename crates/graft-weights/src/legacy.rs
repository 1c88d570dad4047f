//! PyTorch's legacy (pre-1.6, non-zip) `torch.save` format.
//!
//! The file is five pickles back to back, then the raw storages:
//!
//! 1. the magic number `0x1950a86a20f9469cfc6c`,
//! 2. the protocol version (1001),
//! 3. `sys_info` (`{'little_endian': bool, 'type_sizes': {...}, ...}`),
//! 4. the object itself (the state dict), whose tensors point at storages
//!    through persistent ids,
//! 5. the list of storage keys, in the order their data follows,
//!
//! and then, for each key in that order, a little-endian u64 element count
//! followed by that many little-endian elements of the storage's type.
//!
//! The element type of each storage is only known from the persistent ids in
//! pickle 4, so that pickle must be run before the data can be walked.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::error::{sanitize, WeightsError};
use crate::pickle::{unpickle, Obj};
use crate::tensor::{DType, StateDict};

/// `torch.serialization.MAGIC_NUMBER`.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// `torch.serialization.PROTOCOL_VERSION`.
const PROTOCOL_VERSION: i128 = 1001;

pub(crate) fn load(path: &Path) -> Result<StateDict, WeightsError> {
    // Reading the whole file bounds every later allocation by its real size.
    let data = crate::fsio::read_regular(path).map_err(|e| WeightsError::io(path, e))?;
    parse(path, &data)
}

/// Run the pickle starting at `*pos` and advance past it.
fn next_pickle(
    path: &Path,
    what: &str,
    data: &[u8],
    pos: &mut usize,
) -> Result<crate::pickle::Unpickled, WeightsError> {
    let rest = data.get(*pos..).unwrap_or(&[]);
    if rest.is_empty() {
        return Err(WeightsError::truncated(
            path,
            format!("file ends before the {what}"),
        ));
    }
    let (u, used) = unpickle(path, what, rest)?;
    *pos += used;
    Ok(u)
}

pub(crate) fn parse(path: &Path, data: &[u8]) -> Result<StateDict, WeightsError> {
    let mut pos = 0usize;

    let magic = next_pickle(path, "magic-number pickle", data, &mut pos)?;
    if magic.root() != &Obj::Int(MAGIC) {
        return Err(WeightsError::corrupt(
            path,
            "invalid magic number: a pickle, but not one written by torch.save",
        ));
    }
    let version = next_pickle(path, "protocol-version pickle", data, &mut pos)?;
    if version.root() != &Obj::Int(PROTOCOL_VERSION) {
        return Err(WeightsError::corrupt(
            path,
            format!("unsupported legacy protocol version {:?}", version.root()),
        ));
    }
    // sys_info records the writer's byte order, but torch's storage writer
    // has always emitted little-endian counts and data regardless (and its
    // reader ignores sys_info), so we only check that the pickle is there.
    let sys_info = next_pickle(path, "sys_info pickle", data, &mut pos)?;
    if !matches!(sys_info.root(), Obj::Dict(_)) {
        return Err(WeightsError::corrupt(path, "sys_info pickle is not a dict"));
    }

    let main = next_pickle(path, "main pickle", data, &mut pos)?;
    let keys_pickle = next_pickle(path, "storage-key pickle", data, &mut pos)?;

    // Element type and count of every root storage, from the persistent ids.
    let mut roots: HashMap<&str, (DType, u64)> = HashMap::new();
    for s in main.storages() {
        match roots.get(s.key.as_str()) {
            Some(&(dtype, numel)) if (dtype, numel) != (s.dtype, s.numel) => {
                return Err(WeightsError::corrupt(
                    path,
                    format!(
                        "storage `{}` is declared both as {numel} x {dtype} and as {} x {}",
                        sanitize(&s.key),
                        s.numel,
                        s.dtype
                    ),
                ));
            }
            _ => {
                roots.insert(&s.key, (s.dtype, s.numel));
            }
        }
    }

    // Walk the raw storage section: each storage's declared size is checked
    // against the bytes actually left before it is used.
    let Obj::List(key_ids) = keys_pickle.root() else {
        return Err(WeightsError::corrupt(
            path,
            "storage-key pickle is not a list",
        ));
    };
    let mut ranges: HashMap<&str, Range<usize>> = HashMap::new();
    let mut stored_elements: u64 = 0;
    for &id in key_ids {
        let key = keys_pickle
            .as_str(id)
            .ok_or_else(|| WeightsError::corrupt(path, "storage key is not a string"))?;
        let &(dtype, numel) = roots.get(key).ok_or_else(|| {
            WeightsError::corrupt(
                path,
                format!(
                    "storage `{}` has data but no tensor refers to it, so its element type is unknown",
                    sanitize(key)
                ),
            )
        })?;
        let header = data.get(pos..).and_then(|r| r.get(..8)).ok_or_else(|| {
            WeightsError::truncated(
                path,
                format!("file ends before storage `{}`", sanitize(key)),
            )
        })?;
        let mut count = [0u8; 8];
        count.copy_from_slice(header);
        let file_numel = u64::from_le_bytes(count);
        pos += 8;
        if file_numel != numel {
            return Err(WeightsError::corrupt(
                path,
                format!(
                    "storage `{}`: the pickle declares {numel} elements but its data header {file_numel}",
                    sanitize(key)
                ),
            ));
        }
        let remaining = data.len() - pos.min(data.len());
        let nbytes = numel
            .checked_mul(dtype.size_bytes() as u64)
            .filter(|&n| n <= remaining as u64)
            .ok_or_else(|| {
                WeightsError::truncated(
                    path,
                    format!(
                        "storage `{}` declares {numel} elements of {dtype} but only {remaining} bytes remain",
                        sanitize(key)
                    ),
                )
            })? as usize;
        if ranges.insert(key, pos..pos + nbytes).is_some() {
            return Err(WeightsError::corrupt(
                path,
                format!("storage `{}` is stored twice", sanitize(key)),
            ));
        }
        stored_elements = stored_elements.saturating_add(numel);
        pos += nbytes;
    }

    let tensors = main.state_dict_tensors(path)?;
    crate::check_budget(path, &tensors, stored_elements)?;

    let mut out = StateDict::default();
    for (name, t) in tensors {
        let s = &t.storage;
        let range = ranges
            .get(s.key.as_str())
            .ok_or_else(|| WeightsError::MissingStorage {
                path: path.to_path_buf(),
                key: sanitize(&s.key),
            })?;
        let root = data.get(range.clone()).unwrap_or(&[]);
        let es = s.dtype.size_bytes() as u64;
        // Old (torch < 0.4) files could point into a slice of a root storage.
        let bytes = match &s.view {
            None => root,
            Some(v) => {
                let start = v.offset.checked_mul(es);
                let end = v.offset.checked_add(v.size).and_then(|e| e.checked_mul(es));
                match (start, end) {
                    (Some(a), Some(b)) if b <= root.len() as u64 => &root[a as usize..b as usize],
                    _ => {
                        return Err(WeightsError::StorageTooSmall {
                            path: path.to_path_buf(),
                            tensor: sanitize(&name),
                            needed: end.unwrap_or(u64::MAX),
                            available: root.len() as u64,
                        })
                    }
                }
            }
        };
        let data = crate::tensor::gather(path, &name, s.dtype, bytes, false, &t.view)?;
        out.tensors.insert(
            name,
            crate::Tensor {
                shape: t.view.shape.clone(),
                dtype: s.dtype,
                data,
            },
        );
    }
    Ok(out)
}
