//! The output model (a state dict of f32 tensors) and the one routine every
//! PyTorch reader shares: turning a (storage, offset, size, stride) view into a
//! contiguous row-major `Vec<f32>`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::error::WeightsError;

/// Element type a tensor had in the file. The data is always converted to
/// f32; this records what it was, so callers can tell e.g. an integer
/// `num_batches_tracked` counter from a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element in the file.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// PyTorch's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dense, contiguous, row-major tensor. `data.len()` equals the product of
/// `shape` (1 for a scalar with `shape == []`).
#[derive(Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Number of elements implied by the shape, `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        numel(&self.shape)
    }
}

// Hand-written so that printing a state dict does not dump millions of floats.
impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 6;
        let head = &self.data[..self.data.len().min(SHOWN)];
        let more = if self.data.len() > SHOWN { ", …" } else { "" };
        write!(
            f,
            "Tensor {{ shape: {:?}, dtype: {}, data: {:?}{} ({} values) }}",
            self.shape,
            self.dtype,
            head,
            more,
            self.data.len()
        )
    }
}

/// Named tensors plus free-form string metadata (safetensors `__metadata__`;
/// empty for PyTorch files).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: BTreeMap<String, String>,
}

impl StateDict {
    /// Refuses a dict in which any tensor holds NaN or an infinity, naming the file
    /// (`path`) and the first such tensor (in name order). Every loader of this crate runs
    /// it before returning, so weights with NaN never reach a model: a single NaN weight
    /// makes every prediction NaN. Integer tensors are converted to `f32` and cannot hold
    /// either; a float64 value beyond `f32`'s range becomes an infinity and is refused too.
    pub fn check_finite(&self, path: &std::path::Path) -> Result<(), crate::WeightsError> {
        for (name, t) in &self.tensors {
            let Some(index) = t.data.iter().position(|x| !x.is_finite()) else {
                continue;
            };
            let count = t.data[index..].iter().filter(|x| !x.is_finite()).count();
            let v = t.data[index];
            let first = if v.is_nan() {
                "NaN"
            } else if v > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            return Err(crate::WeightsError::NonFinite {
                path: path.to_path_buf(),
                tensor: crate::error::sanitize(name),
                count,
                first: first.to_string(),
                index,
            });
        }
        Ok(())
    }
}

/// Product of the dimensions, `None` on overflow. The empty shape is a scalar.
pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Decode one element. `bytes` is exactly `dtype.size_bytes()` long when
/// called from this module; a shorter slice decodes as if zero-padded rather
/// than panicking.
#[inline]
fn decode(dtype: DType, bytes: &[u8], big_endian: bool) -> f32 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[..n].copy_from_slice(&bytes[..n]);
    if big_endian {
        a[..n].reverse();
    }
    match dtype {
        DType::F32 => f32::from_le_bytes([a[0], a[1], a[2], a[3]]),
        DType::F64 => f64::from_le_bytes(a) as f32,
        DType::F16 => half::f16::from_le_bytes([a[0], a[1]]).to_f32(),
        DType::BF16 => half::bf16::from_le_bytes([a[0], a[1]]).to_f32(),
        // Integers beyond 2^24 lose precision; state dicts only hold small
        // counters and masks, and the original type is kept in `Tensor::dtype`.
        DType::I64 => i64::from_le_bytes(a) as f32,
        DType::I32 => i32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f32,
        DType::I16 => i16::from_le_bytes([a[0], a[1]]) as f32,
        DType::I8 => a[0] as i8 as f32,
        DType::U8 => a[0] as f32,
        DType::Bool => {
            if a[0] != 0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Decode a whole contiguous byte run (length a multiple of the element size).
pub(crate) fn decode_all(dtype: DType, bytes: &[u8], big_endian: bool) -> Vec<f32> {
    bytes
        .chunks_exact(dtype.size_bytes())
        .map(|c| decode(dtype, c, big_endian))
        .collect()
}

/// A strided view into a storage, as `_rebuild_tensor_v2` describes it.
/// All quantities are in elements, not bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViewSpec {
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl ViewSpec {
    /// Elements the view yields, `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        numel(&self.shape)
    }

    /// Highest storage element index the view touches (`None` for an empty
    /// view, where nothing is read, or on overflow, see `reach`).
    fn max_index(&self) -> Option<Option<usize>> {
        if self.shape.contains(&0) {
            return Some(None);
        }
        let mut max = self.offset;
        for (&size, &stride) in self.shape.iter().zip(&self.stride) {
            max = max.checked_add((size - 1).checked_mul(stride)?)?;
        }
        Some(Some(max))
    }

    /// True when the view is the plain row-major layout, so it can be copied
    /// in one run. Dimensions of size 1 may carry any stride.
    fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&size, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if size != 1 && stride != expected {
                return false;
            }
            match expected.checked_mul(size) {
                Some(e) => expected = e,
                None => return false,
            }
        }
        true
    }
}

/// Gather a (possibly strided, e.g. channels-last) view of `storage` into a
/// contiguous row-major f32 buffer. Every index is checked against the
/// storage length before anything is read; the output is allocated only
/// after that check, and its size was already bounded by the caller's budget.
pub(crate) fn gather(
    path: &Path,
    tensor: &str,
    dtype: DType,
    storage: &[u8],
    big_endian: bool,
    view: &ViewSpec,
) -> Result<Vec<f32>, WeightsError> {
    let es = dtype.size_bytes();
    let overflow = || {
        WeightsError::corrupt(
            path,
            format!(
                "tensor `{}`: size {:?} / stride {:?} / offset {} overflow",
                crate::error::sanitize(tensor),
                view.shape,
                view.stride,
                view.offset
            ),
        )
    };
    if view.shape.len() != view.stride.len() {
        return Err(WeightsError::corrupt(
            path,
            format!(
                "tensor `{}`: size has {} dimensions but stride has {}",
                crate::error::sanitize(tensor),
                view.shape.len(),
                view.stride.len()
            ),
        ));
    }
    let n = view.numel().ok_or_else(overflow)?;
    let max = match view.max_index().ok_or_else(overflow)? {
        None => return Ok(Vec::new()), // some dimension is 0: nothing to read
        Some(m) => m,
    };
    let needed = max
        .checked_add(1)
        .and_then(|x| x.checked_mul(es))
        .ok_or_else(overflow)?;
    if needed > storage.len() {
        return Err(WeightsError::StorageTooSmall {
            path: path.to_path_buf(),
            tensor: crate::error::sanitize(tensor),
            needed: needed as u64,
            available: storage.len() as u64,
        });
    }

    if view.is_contiguous() {
        // n * es <= needed here: a contiguous view's last element is offset + n - 1.
        let start = view.offset.checked_mul(es).ok_or_else(overflow)?;
        let end = n
            .checked_mul(es)
            .and_then(|b| b.checked_add(start))
            .ok_or_else(overflow)?;
        let bytes = storage.get(start..end).ok_or_else(overflow)?;
        return Ok(decode_all(dtype, bytes, big_endian));
    }

    // Strided walk: an odometer over the multi-index, keeping the storage
    // position `pos` in step. Size-1 dimensions are dropped first; they do not
    // move the position and their stride is arbitrary.
    let dims: Vec<(usize, usize)> = view
        .shape
        .iter()
        .zip(&view.stride)
        .filter(|(&s, _)| s != 1)
        .map(|(&s, &st)| (s, st))
        .collect();
    let mut idx = vec![0usize; dims.len()];
    let mut pos = view.offset;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let at = pos.checked_mul(es).ok_or_else(overflow)?;
        let end = at.checked_add(es).ok_or_else(overflow)?;
        let bytes = storage.get(at..end).ok_or_else(overflow)?;
        out.push(decode(dtype, bytes, big_endian));
        for d in (0..dims.len()).rev() {
            let (size, stride) = dims[d];
            if idx[d] + 1 < size {
                idx[d] += 1;
                pos = pos.checked_add(stride).ok_or_else(overflow)?;
                break;
            }
            // Wrap this digit back to 0 and carry into the next one.
            let back = stride.checked_mul(size - 1).ok_or_else(overflow)?;
            pos = pos.checked_sub(back).ok_or_else(overflow)?;
            idx[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn transposed_view_is_gathered_row_major() {
        let storage = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
        // A [2,3] view of a [3,2] row-major buffer, i.e. its transpose.
        let view = ViewSpec {
            offset: 0,
            shape: vec![2, 3],
            stride: vec![1, 2],
        };
        let out = gather(Path::new("t"), "x", DType::F32, &storage, false, &view).unwrap();
        assert_eq!(out, vec![0., 2., 4., 1., 3., 5.]);
    }

    #[test]
    fn offset_and_size_one_dims() {
        let storage = f32_bytes(&[9., 9., 1., 2., 3., 4.]);
        let view = ViewSpec {
            offset: 2,
            shape: vec![1, 2, 2],
            stride: vec![12345, 2, 1],
        };
        let out = gather(Path::new("t"), "x", DType::F32, &storage, false, &view).unwrap();
        assert_eq!(out, vec![1., 2., 3., 4.]);
    }

    #[test]
    fn out_of_range_view_is_an_error() {
        let storage = f32_bytes(&[0., 1., 2.]);
        let view = ViewSpec {
            offset: 1,
            shape: vec![3],
            stride: vec![1],
        };
        match gather(Path::new("f.pth"), "w", DType::F32, &storage, false, &view) {
            Err(WeightsError::StorageTooSmall {
                tensor,
                needed,
                available,
                ..
            }) => {
                assert_eq!(tensor, "w");
                assert_eq!(needed, 16);
                assert_eq!(available, 12);
            }
            other => panic!("expected StorageTooSmall, got {other:?}"),
        }
    }

    #[test]
    fn overflowing_view_is_an_error() {
        let storage = f32_bytes(&[0.]);
        let view = ViewSpec {
            offset: 0,
            shape: vec![usize::MAX, 2],
            stride: vec![usize::MAX, 1],
        };
        assert!(gather(Path::new("f"), "w", DType::F32, &storage, false, &view).is_err());
    }

    #[test]
    fn decodes_all_dtypes() {
        assert_eq!(
            decode(DType::F16, &half::f16::from_f32(1.5).to_le_bytes(), false),
            1.5
        );
        assert_eq!(
            decode(
                DType::BF16,
                &half::bf16::from_f32(-2.0).to_le_bytes(),
                false
            ),
            -2.0
        );
        assert_eq!(decode(DType::F64, &0.25f64.to_le_bytes(), false), 0.25);
        assert_eq!(decode(DType::I64, &(-7i64).to_le_bytes(), false), -7.0);
        assert_eq!(decode(DType::I32, &(-7i32).to_be_bytes(), true), -7.0);
        assert_eq!(decode(DType::I16, &300i16.to_le_bytes(), false), 300.0);
        assert_eq!(decode(DType::I8, &[0xff], false), -1.0);
        assert_eq!(decode(DType::U8, &[0xff], false), 255.0);
        assert_eq!(decode(DType::Bool, &[2], false), 1.0);
        assert_eq!(decode(DType::F32, &1.0f32.to_be_bytes(), true), 1.0);
    }
}
