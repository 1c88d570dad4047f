//! TensorFlow checkpoints (tensor bundles), read in pure Rust: what `tf.compat.v1.train.Saver`
//! (TF1) and `tf.train.Checkpoint` / Keras (TF2) write.
//!
//! A checkpoint named by its prefix `model.ckpt` is two or more files:
//!
//! * `model.ckpt.index`: a LevelDB-format table (an SSTable). Its last 48 bytes are the footer
//!   (the metaindex and index block handles, padded to 40 bytes, then the magic number
//!   `0xdb4775248b80fb57`); the index block maps the last key of each data block to that
//!   block's handle; a block holds prefix-compressed entries (`shared`, `non_shared`, value
//!   length, key suffix, value), then its restart points and their count, and is followed by
//!   a 5-byte trailer: a compression type byte (TensorFlow writes 0, uncompressed) and the
//!   masked CRC-32C of the block and that byte, checked here. Keys are variable names in
//!   sorted order; values are `BundleEntryProto` messages (dtype, shape, shard, offset, size,
//!   masked CRC-32C of the bytes), except the empty key's, a `BundleHeaderProto` (number of
//!   shards, endianness).
//! * `model.ckpt.data-00000-of-0000N`: the shards, raw tensor bytes in row-major order.
//!
//! Names are TensorFlow's, unchanged: `hidden1/kernel` (TF1) or
//! `model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE` (TF2's object graph). Dense
//! kernels keep TensorFlow's layout, `[in, out]`.
//!
//! float32 variables are read, and float64, int32 and int64 ones (counters such as
//! `global_step`) are converted to f32 keeping their dtype, as the PyTorch readers do; string
//! tensors (TF2's `_CHECKPOINTABLE_OBJECT_GRAPH`) are listed but not loaded; any other dtype
//! (float16, bfloat16, complex, ...) and partitioned variables are refused with an error
//! naming the variable. Every length and offset is checked before it is used, every tensor's
//! CRC is checked, and tensors may not overlap in a shard, so memory never exceeds the bytes
//! the files really hold.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{sanitize, WeightsError};
use crate::limits;
use crate::proto::{crc32c, mask_crc, Reader};
use crate::tensor::{decode_all, numel, DType, StateDict, Tensor};

/// The LevelDB table magic number, the footer's last 8 bytes (little-endian).
const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// Footer size: two block handles padded to 40 bytes, then the magic.
const FOOTER_LEN: usize = 48;
/// Block trailer: compression type + masked CRC-32C.
const TRAILER_LEN: usize = 5;

/// A TensorFlow `DataType`, as stored in a `BundleEntryProto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TfDType(pub u32);

impl TfDType {
    /// TensorFlow's name for it (`float32`, `int64`, `string`, ...).
    pub fn name(self) -> String {
        let known = match self.0 {
            1 => "float32",
            2 => "float64",
            3 => "int32",
            4 => "uint8",
            5 => "int16",
            6 => "int8",
            7 => "string",
            8 => "complex64",
            9 => "int64",
            10 => "bool",
            11 => "qint8",
            12 => "quint8",
            13 => "qint32",
            14 => "bfloat16",
            15 => "qint16",
            16 => "quint16",
            17 => "uint16",
            18 => "complex128",
            19 => "float16",
            20 => "resource",
            21 => "variant",
            22 => "uint32",
            23 => "uint64",
            _ => return format!("DataType {}", self.0),
        };
        known.to_string()
    }

    /// The element type graft converts from, for the dtypes it reads.
    fn readable(self) -> Option<DType> {
        match self.0 {
            1 => Some(DType::F32),
            2 => Some(DType::F64),
            3 => Some(DType::I32),
            9 => Some(DType::I64),
            _ => None,
        }
    }

    fn is_string(self) -> bool {
        self.0 == 7
    }
}

/// One variable of a checkpoint, as its index describes it (nothing of the data is read).
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    pub dtype: TfDType,
    /// Empty for a scalar.
    pub shape: Vec<usize>,
    pub shard: u32,
    pub offset: u64,
    pub size: u64,
    /// Masked CRC-32C of its bytes, as stored.
    crc32c: u32,
    /// Saved in this many slices (a partitioned variable); 0 for a whole tensor.
    pub slices: usize,
}

/// A checkpoint's index: its variables in name order, the number of data shards and their
/// byte order.
#[derive(Debug, Clone)]
pub struct Index {
    /// The `.index` file.
    pub path: PathBuf,
    pub variables: Vec<Variable>,
    pub num_shards: u32,
    pub big_endian: bool,
}

impl Index {
    /// The data file of shard `shard`: `<prefix>.data-0000s-of-0000n`.
    pub fn shard_path(&self, shard: u32) -> PathBuf {
        let prefix = prefix_of(&self.path);
        let mut name = prefix.into_os_string();
        name.push(format!(".data-{shard:05}-of-{:05}", self.num_shards));
        PathBuf::from(name)
    }
}

/// The `.index` file of the checkpoint `path` names, if it names one: the index itself, a data
/// shard (`….data-00000-of-00001`), or the prefix TensorFlow prints (`model.ckpt`, `ckpt-3`),
/// which is no file itself, with `<prefix>.index` next to it.
pub fn index_of(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(".index") {
        return Some(path.to_path_buf());
    }
    if let Some(at) = name.rfind(".data-") {
        let tail = &name[at + ".data-".len()..];
        let shard_form = tail.len() == 14
            && tail.as_bytes()[5..9] == *b"-of-"
            && tail[..5].bytes().chain(tail[9..].bytes()).all(|b| b.is_ascii_digit());
        if shard_form {
            return Some(path.with_file_name(format!("{}.index", &name[..at])));
        }
    }
    if path.is_file() {
        return None;
    }
    let mut index = path.as_os_str().to_os_string();
    index.push(".index");
    let index = PathBuf::from(index);
    index.is_file().then_some(index)
}

/// The checkpoint prefix of an `.index` path (the path without `.index`).
fn prefix_of(index: &Path) -> PathBuf {
    let s = index.as_os_str().to_string_lossy();
    PathBuf::from(s.strip_suffix(".index").unwrap_or(&s).to_string())
}

/// Reads a checkpoint's index (`path` as [`index_of`] accepts it).
pub fn read_index(path: &Path) -> Result<Index, WeightsError> {
    let index = index_of(path).unwrap_or_else(|| path.to_path_buf());
    let mut file = crate::fsio::open_regular(&index).map_err(|e| WeightsError::io(&index, e))?;
    let len = file.metadata().map_err(|e| WeightsError::io(&index, e))?.len();
    if len > limits::MAX_TF_INDEX_BYTES {
        return Err(WeightsError::limit(
            &index,
            format!("checkpoint index is {len} bytes"),
            "MAX_TF_INDEX_BYTES",
            limits::MAX_TF_INDEX_BYTES,
            "",
        ));
    }
    let mut bytes = Vec::new();
    (&mut file).take(limits::MAX_TF_INDEX_BYTES).read_to_end(&mut bytes).map_err(|e| WeightsError::io(&index, e))?;
    parse_index(&index, &bytes)
}

/// Parses an `.index` file's bytes; `path` names it in errors and locates the shards.
pub fn parse_index(path: &Path, bytes: &[u8]) -> Result<Index, WeightsError> {
    let entries = read_table(path, bytes)?;
    let mut header = None;
    let mut variables = Vec::new();
    for (key, value) in entries {
        if key.is_empty() {
            header = Some(parse_header(value).map_err(|e| WeightsError::corrupt(path, format!("bundle header: {e}")))?);
            continue;
        }
        // Slices of partitioned variables are stored under keys starting with a zero byte
        // (TensorFlow's ordered-code encoding); their full entry names them.
        if key[0] == 0 {
            continue;
        }
        let name = String::from_utf8_lossy(&key).into_owned();
        let v = parse_entry(name.clone(), value)
            .map_err(|e| WeightsError::corrupt(path, format!("variable `{}`: {e}", sanitize(&name))))?;
        variables.push(v);
    }
    let (num_shards, big_endian) =
        header.ok_or_else(|| WeightsError::corrupt(path, "no bundle header (the empty key): not a TensorFlow checkpoint index"))?;
    if num_shards == 0 {
        return Err(WeightsError::corrupt(path, "bundle header says 0 shards"));
    }
    if let Some(v) = variables.iter().find(|v| v.shard >= num_shards) {
        return Err(WeightsError::corrupt(
            path,
            format!("variable `{}` is in shard {} of a {num_shards}-shard checkpoint", sanitize(&v.name), v.shard),
        ));
    }
    Ok(Index { path: path.to_path_buf(), variables, num_shards, big_endian })
}

/// `(num_shards, big_endian)` from a `BundleHeaderProto`.
fn parse_header(bytes: &[u8]) -> Result<(u32, bool), String> {
    let mut r = Reader::new(bytes);
    let (mut shards, mut big) = (None, false);
    while let Some((field, value)) = r.next_field()? {
        match field {
            1 => shards = Some(u32::try_from(value.varint("num_shards")?).map_err(|_| "num_shards out of range")?),
            2 => {
                big = match value.varint("endianness")? {
                    0 => false,
                    1 => true,
                    e => return Err(format!("unknown endianness {e}")),
                }
            }
            _ => {}
        }
    }
    // proto3: an absent num_shards is 0, which the caller refuses.
    Ok((shards.unwrap_or(0), big))
}

/// A `BundleEntryProto`.
fn parse_entry(name: String, bytes: &[u8]) -> Result<Variable, String> {
    let mut r = Reader::new(bytes);
    let mut v = Variable { name, dtype: TfDType(0), shape: Vec::new(), shard: 0, offset: 0, size: 0, crc32c: 0, slices: 0 };
    while let Some((field, value)) = r.next_field()? {
        match field {
            1 => v.dtype = TfDType(u32::try_from(value.varint("dtype")?).map_err(|_| "dtype out of range")?),
            2 => v.shape = parse_shape(value.bytes("shape")?)?,
            3 => v.shard = u32::try_from(value.varint("shard_id")?).map_err(|_| "shard_id out of range")?,
            4 => v.offset = value.varint("offset")?,
            5 => v.size = value.varint("size")?,
            6 => v.crc32c = value.fixed32("crc32c")?,
            7 => v.slices += 1,
            _ => {}
        }
    }
    Ok(v)
}

/// A `TensorShapeProto`: repeated `Dim { int64 size = 1; string name = 2; }` in field 2.
fn parse_shape(bytes: &[u8]) -> Result<Vec<usize>, String> {
    let mut r = Reader::new(bytes);
    let mut shape = Vec::new();
    while let Some((field, value)) = r.next_field()? {
        match field {
            2 => {
                if shape.len() == limits::MAX_TENSOR_DIMS {
                    return Err(format!("more than {} dimensions", limits::MAX_TENSOR_DIMS));
                }
                let mut d = Reader::new(value.bytes("dim")?);
                let mut size = 0u64;
                while let Some((f, v)) = d.next_field()? {
                    if f == 1 {
                        size = v.varint("dim.size")?;
                    }
                }
                // An int64 on the wire: -1 (unknown) arrives as 2^64 - 1.
                let size = usize::try_from(size).ok().filter(|&s| s as u64 <= i64::MAX as u64).ok_or_else(|| {
                    format!("dimension {} is not a known size", size as i64)
                })?;
                shape.push(size);
            }
            3 if value.varint("unknown_rank")? != 0 => return Err("shape of unknown rank".into()),
            _ => {}
        }
    }
    Ok(shape)
}

/// Every `(key, value)` of a LevelDB-format table, keys strictly increasing.
fn read_table<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<(Vec<u8>, &'a [u8])>, WeightsError> {
    if bytes.len() < FOOTER_LEN {
        return Err(WeightsError::truncated(path, format!("checkpoint index is {} bytes, shorter than its 48-byte footer", bytes.len())));
    }
    let footer = &bytes[bytes.len() - FOOTER_LEN..];
    let magic = u64::from_le_bytes(footer[40..].try_into().unwrap_or_default());
    if magic != TABLE_MAGIC {
        return Err(WeightsError::corrupt(path, "no table magic number at the end: not a TensorFlow checkpoint index (or truncated)"));
    }
    let mut r = Reader::new(&footer[..40]);
    let handle = |r: &mut Reader<'_>| -> Result<(u64, u64), WeightsError> {
        let off = r.varint().map_err(|e| WeightsError::corrupt(path, format!("footer: {e}")))?;
        let size = r.varint().map_err(|e| WeightsError::corrupt(path, format!("footer: {e}")))?;
        Ok((off, size))
    };
    let _metaindex = handle(&mut r)?;
    let index_handle = handle(&mut r)?;
    let body = &bytes[..bytes.len() - FOOTER_LEN];
    let mut key_bytes = 0u64;
    let key_budget = (bytes.len() as u64).saturating_mul(limits::TF_KEY_EXPANSION).saturating_add(1 << 20);
    let index = block_entries(path, body, index_handle, "index block", &mut key_bytes, key_budget)?;
    let mut out: Vec<(Vec<u8>, &[u8])> = Vec::new();
    for (i, (_, handle)) in index.iter().enumerate() {
        let mut r = Reader::new(handle);
        let h = r
            .varint()
            .and_then(|off| Ok((off, r.varint()?)))
            .map_err(|e| WeightsError::corrupt(path, format!("index entry {i}: bad block handle: {e}")))?;
        for (key, value) in block_entries(path, body, h, &format!("data block {i}"), &mut key_bytes, key_budget)? {
            if let Some((last, _)) = out.last() {
                if key <= *last {
                    return Err(WeightsError::corrupt(path, format!("data block {i}: keys out of order")));
                }
            }
            out.push((key, value));
        }
    }
    Ok(out)
}

/// The entries of the block at `(offset, size)` of `body`, after checking its trailer.
fn block_entries<'a>(
    path: &Path,
    body: &'a [u8],
    (offset, size): (u64, u64),
    what: &str,
    key_bytes: &mut u64,
    key_budget: u64,
) -> Result<Vec<(Vec<u8>, &'a [u8])>, WeightsError> {
    let corrupt = |reason: String| WeightsError::corrupt(path, format!("{what}: {reason}"));
    let end = offset.checked_add(size).and_then(|e| e.checked_add(TRAILER_LEN as u64));
    let (start, len) = match (end, usize::try_from(offset), usize::try_from(size)) {
        (Some(end), Ok(start), Ok(len)) if end <= body.len() as u64 => (start, len),
        _ => {
            return Err(WeightsError::truncated(
                path,
                format!("{what} at byte {offset} of {size} bytes (plus its 5-byte trailer) reaches past the table's {} bytes", body.len()),
            ))
        }
    };
    let block = &body[start..start + len];
    let kind = body[start + len];
    let stored = u32::from_le_bytes(body[start + len + 1..start + len + TRAILER_LEN].try_into().unwrap_or_default());
    let actual = mask_crc(crc32c(&[block, &[kind]]));
    if stored != actual {
        return Err(corrupt(format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x}): the index is damaged")));
    }
    match kind {
        0 => {}
        1 => return Err(corrupt("Snappy-compressed block: TensorFlow writes checkpoint indexes uncompressed, and graft reads only those".into())),
        k => return Err(corrupt(format!("unknown compression type {k}"))),
    }
    if block.len() < 4 {
        return Err(corrupt(format!("{} bytes, too short for its restart count", block.len())));
    }
    let restarts = u32::from_le_bytes(block[block.len() - 4..].try_into().unwrap_or_default()) as u64;
    let restarts_len = restarts.checked_mul(4).filter(|&n| n <= block.len() as u64 - 4).ok_or_else(|| {
        corrupt(format!("{restarts} restart points do not fit in its {} bytes", block.len()))
    })?;
    let data = &block[..block.len() - 4 - restarts_len as usize];
    let mut r = Reader::new(data);
    let mut key: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    while !r.at_end() {
        let n = out.len();
        let mut field = |name: &str| r.varint().map_err(|e| corrupt(format!("entry {n}: {name}: {e}")));
        let shared = field("shared")?;
        let non_shared = field("non_shared")?;
        let value_len = field("value length")?;
        if shared > key.len() as u64 {
            return Err(corrupt(format!("entry {n} shares {shared} bytes of a {}-byte key", key.len())));
        }
        let new_len = shared.saturating_add(non_shared);
        if new_len > limits::MAX_TF_KEY_BYTES {
            return Err(WeightsError::limit(
                path,
                format!("{what}: entry {n} has a {new_len}-byte key"),
                "MAX_TF_KEY_BYTES",
                limits::MAX_TF_KEY_BYTES,
                "",
            ));
        }
        *key_bytes = key_bytes.saturating_add(new_len);
        if *key_bytes > key_budget {
            return Err(WeightsError::limit(
                path,
                format!("keys expand to over {key_budget} bytes"),
                "TF_KEY_EXPANSION",
                limits::TF_KEY_EXPANSION,
                "",
            ));
        }
        let too_long = |e: String| corrupt(format!("entry {n}: {e}"));
        let suffix = r.take(usize::try_from(non_shared).unwrap_or(usize::MAX)).map_err(too_long)?;
        let value = r.take(usize::try_from(value_len).unwrap_or(usize::MAX)).map_err(too_long)?;
        key.truncate(shared as usize);
        key.extend_from_slice(suffix);
        out.push((key.clone(), value));
    }
    Ok(out)
}

/// Reads every float32 (and float64, int32, int64) variable of the checkpoint `path` names
/// (see [`index_of`]); string tensors are skipped. Names are TensorFlow's.
pub fn load(path: &Path) -> Result<StateDict, WeightsError> {
    let index = read_index(path)?;
    load_index(&index, |_| true)
}

/// [`load`] for the variables of `index` that `wanted` accepts (by name); only those are read,
/// and only those need a readable dtype.
pub fn load_index(index: &Index, wanted: impl Fn(&str) -> bool) -> Result<StateDict, WeightsError> {
    let mut chosen: Vec<(&Variable, DType)> = Vec::new();
    for v in index.variables.iter().filter(|v| wanted(&v.name)) {
        if v.dtype.is_string() {
            continue;
        }
        if v.slices > 0 {
            return Err(WeightsError::corrupt(
                &index.path,
                format!("variable `{}` is partitioned ({} slices); graft reads whole variables only", sanitize(&v.name), v.slices),
            ));
        }
        let Some(dtype) = v.dtype.readable() else {
            return Err(WeightsError::corrupt(
                &index.path,
                format!(
                    "variable `{}` is {}; graft reads float32 variables (and float64, int32, int64 counters): cast it to float32 in TensorFlow first",
                    sanitize(&v.name),
                    v.dtype.name()
                ),
            ));
        };
        let n = numel(&v.shape).ok_or_else(|| {
            WeightsError::corrupt(&index.path, format!("variable `{}`: shape {:?} overflows", sanitize(&v.name), v.shape))
        })?;
        if (n as u64).checked_mul(dtype.size_bytes() as u64) != Some(v.size) {
            return Err(WeightsError::corrupt(
                &index.path,
                format!(
                    "variable `{}`: {} {} of shape {:?} need {} bytes but the index says {}",
                    sanitize(&v.name),
                    n,
                    v.dtype.name(),
                    v.shape,
                    n.saturating_mul(dtype.size_bytes()),
                    v.size
                ),
            ));
        }
        chosen.push((v, dtype));
    }
    // No two tensors may share bytes: then the memory used is at most the shards' real size.
    let mut spans: Vec<(u32, u64, u64, &str)> = chosen.iter().map(|(v, _)| (v.shard, v.offset, v.size, v.name.as_str())).collect();
    spans.sort();
    for w in spans.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.0 == b.0 && a.2 > 0 && b.2 > 0 && a.1.saturating_add(a.2) > b.1 {
            return Err(WeightsError::corrupt(
                &index.path,
                format!("variables `{}` and `{}` overlap in shard {}", sanitize(a.3), sanitize(b.3), a.0),
            ));
        }
    }
    let mut shards: Vec<Option<(std::fs::File, u64, PathBuf)>> = (0..index.num_shards.min(1 << 16)).map(|_| None).collect();
    let mut dict = StateDict::default();
    for (v, dtype) in chosen {
        let slot = shards.get_mut(v.shard as usize).ok_or_else(|| {
            WeightsError::corrupt(&index.path, format!("variable `{}` is in shard {}", sanitize(&v.name), v.shard))
        })?;
        if slot.is_none() {
            let p = index.shard_path(v.shard);
            let f = crate::fsio::open_regular(&p).map_err(|e| WeightsError::io(&p, e))?;
            let len = f.metadata().map_err(|e| WeightsError::io(&p, e))?.len();
            *slot = Some((f, len, p));
        }
        let Some((file, len, shard_path)) = slot.as_mut() else { continue };
        if v.offset.checked_add(v.size).map_or(true, |end| end > *len) {
            return Err(WeightsError::truncated(
                shard_path,
                format!("variable `{}` needs bytes {}..{} but the shard has {len}", sanitize(&v.name), v.offset, v.offset.saturating_add(v.size)),
            ));
        }
        // Checked above against the shard's real length, so this allocation is backed by bytes.
        let mut bytes = vec![0u8; v.size as usize];
        file.seek(SeekFrom::Start(v.offset)).map_err(|e| WeightsError::io(shard_path, e))?;
        file.read_exact(&mut bytes).map_err(|e| WeightsError::io(shard_path, e))?;
        let crc = mask_crc(crc32c(&[&bytes]));
        if crc != v.crc32c {
            return Err(WeightsError::corrupt(
                shard_path,
                format!("variable `{}`: checksum mismatch (stored {:#010x}, computed {crc:#010x}): the data file is damaged", sanitize(&v.name), v.crc32c),
            ));
        }
        let data = decode_all(dtype, &bytes, index.big_endian);
        dict.tensors.insert(v.name.clone(), Tensor { shape: v.shape.clone(), dtype, data });
    }
    dict.metadata.insert("format".into(), "tf-checkpoint".into());
    dict.check_finite(&index.path)?;
    Ok(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf").join(rel)
    }

    /// The values `make_tf_fixtures.py` wrote: sin(0.1 i + k), rounded to f32.
    fn expected(n: usize, k: usize) -> Vec<f32> {
        (0..n).map(|i| (0.1 * i as f64 + k as f64).sin() as f32).collect()
    }

    fn err_text(r: Result<impl std::fmt::Debug, WeightsError>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn tf1_saver_checkpoint_lists_and_loads_by_prefix() {
        let prefix = fixture("tf1/model.ckpt");
        assert_eq!(index_of(&prefix), Some(fixture("tf1/model.ckpt.index")));
        assert_eq!(index_of(&fixture("tf1/model.ckpt.data-00000-of-00001")), Some(fixture("tf1/model.ckpt.index")));
        assert_eq!(index_of(&fixture("make_tf_fixtures.py")), None);
        let index = read_index(&prefix).unwrap();
        assert_eq!((index.num_shards, index.big_endian), (1, false));
        let listed: Vec<(&str, String, Vec<usize>)> =
            index.variables.iter().map(|v| (v.name.as_str(), v.dtype.name(), v.shape.clone())).collect();
        assert_eq!(
            listed,
            [
                ("global_step", "int64".to_string(), vec![]),
                ("half/w", "float16".to_string(), vec![2]),
                ("hidden1/bias", "float32".to_string(), vec![4]),
                ("hidden1/kernel", "float32".to_string(), vec![3, 4]),
            ]
        );
        // float16 is refused by name...
        let e = err_text(load(&prefix));
        assert!(e.contains("`half/w` is float16") && e.contains("model.ckpt.index"), "{e}");
        // ...but only when it is asked for.
        let dict = load_index(&index, |n| n != "half/w").unwrap();
        assert_eq!(dict.tensors.len(), 3);
        let k = &dict.tensors["hidden1/kernel"];
        assert_eq!((k.shape.as_slice(), k.dtype), ([3usize, 4].as_slice(), DType::F32));
        assert_eq!(k.data, expected(12, 0));
        assert_eq!(dict.tensors["hidden1/bias"].data, expected(4, 1));
        let step = &dict.tensors["global_step"];
        assert_eq!((step.dtype, step.data.as_slice(), step.shape.len()), (DType::I64, [7.0f32].as_slice(), 0));
    }

    #[test]
    fn tf2_object_graph_checkpoint_loads_and_skips_the_graph_string() {
        let dict = load(&fixture("tf2/ckpt-1.index")).unwrap();
        let index = read_index(&fixture("tf2/ckpt-1")).unwrap();
        assert!(index.variables.iter().any(|v| v.name == "_CHECKPOINTABLE_OBJECT_GRAPH" && v.dtype.name() == "string"));
        assert!(!dict.tensors.contains_key("_CHECKPOINTABLE_OBJECT_GRAPH"));
        let suffix = "/.ATTRIBUTES/VARIABLE_VALUE";
        let mut floats: Vec<(&String, &Tensor)> = dict.tensors.iter().filter(|(n, _)| n.ends_with(suffix)).collect();
        floats.sort_by_key(|(n, _)| n.replace("_kernel", "a_kernel"));
        let shapes: Vec<Vec<usize>> = floats.iter().map(|(_, t)| t.shape.clone()).collect();
        assert_eq!(shapes, [vec![3, 4], vec![4], vec![4, 2], vec![2]], "{:?}", dict.tensors.keys());
        for (k, (name, t)) in floats.iter().enumerate() {
            assert_eq!(t.data, expected(t.data.len(), k), "{name}");
        }
    }

    #[test]
    fn every_truncation_and_byte_flip_of_an_index_fails_cleanly() {
        let path = fixture("tf1/model.ckpt.index");
        let bytes = std::fs::read(&path).unwrap();
        assert!(parse_index(&path, &bytes).is_ok());
        for n in 0..bytes.len() {
            assert!(parse_index(&path, &bytes[..n]).is_err(), "truncated to {n} bytes");
        }
        // Every single-bit change either fails or still describes the same variables (the
        // footer's padding is not checksummed); none panics.
        let good = parse_index(&path, &bytes).unwrap().variables;
        let mut caught = 0;
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                match parse_index(&path, &b) {
                    Err(_) => caught += 1,
                    Ok(ix) => assert_eq!(ix.variables, good, "byte {i} bit {bit:#x} changed the index silently"),
                }
            }
        }
        assert!(caught > bytes.len(), "{caught} of {} flips caught", 2 * bytes.len());
    }

    #[test]
    fn corrupt_data_and_snappy_blocks_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["model.ckpt.index", "model.ckpt.data-00000-of-00001"] {
            std::fs::copy(fixture(&format!("tf1/{f}")), dir.path().join(f)).unwrap();
        }
        let prefix = dir.path().join("model.ckpt");
        // A flipped data byte: the tensor's CRC catches it.
        let data = dir.path().join("model.ckpt.data-00000-of-00001");
        let mut d = std::fs::read(&data).unwrap();
        let index = read_index(&prefix).unwrap();
        let kernel = index.variables.iter().find(|v| v.name == "hidden1/kernel").unwrap();
        d[kernel.offset as usize + 5] ^= 0x10;
        std::fs::write(&data, &d).unwrap();
        let e = err_text(load_index(&index, |n| n.starts_with("hidden1")));
        assert!(e.contains("`hidden1/kernel`: checksum mismatch"), "{e}");
        // A data file cut short.
        std::fs::write(&data, &d[..kernel.offset as usize]).unwrap();
        let e = err_text(load_index(&index, |n| n == "hidden1/kernel"));
        assert!(e.contains("truncated") && e.contains("hidden1/kernel"), "{e}");
        // A missing shard names the file.
        std::fs::remove_file(&data).unwrap();
        let e = err_text(load_index(&index, |n| n == "hidden1/kernel"));
        assert!(e.contains("data-00000-of-00001"), "{e}");

        // The first block marked Snappy-compressed, with a checksum that matches.
        let path = fixture("tf1/model.ckpt.index");
        let mut b = std::fs::read(&path).unwrap();
        let footer = b.len() - FOOTER_LEN;
        let mut r = Reader::new(&b[footer..footer + 40]);
        let (_, _) = (r.varint().unwrap(), r.varint().unwrap());
        let (io, is) = (r.varint().unwrap() as usize, r.varint().unwrap() as usize);
        let mut ir = Reader::new(&b[io..io + is]);
        // The index block's first entry: header varints, key, then the data block's handle.
        let (_, ks, _) = (ir.varint().unwrap(), ir.varint().unwrap(), ir.varint().unwrap());
        ir.take(ks as usize).unwrap();
        let (off, size) = (ir.varint().unwrap() as usize, ir.varint().unwrap() as usize);
        b[off + size] = 1;
        let crc = mask_crc(crc32c(&[&b[off..off + size], &[1]]));
        b[off + size + 1..off + size + 5].copy_from_slice(&crc.to_le_bytes());
        let e = err_text(parse_index(&path, &b));
        assert!(e.contains("Snappy-compressed"), "{e}");

        let e = err_text(parse_index(&path, &[0u8; 100]));
        assert!(e.contains("not a TensorFlow checkpoint index"), "{e}");
    }
}
