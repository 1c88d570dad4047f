//! PyTorch's zip format (`torch.save` since 1.6).
//!
//! A zip archive whose entries all sit under one directory `<prefix>/`:
//! `<prefix>/data.pkl` is the pickled object, `<prefix>/data/<key>` the raw
//! bytes of each storage, `<prefix>/byteorder` (torch >= 2.1) "little" or
//! "big". Persistent ids are `('storage', storage_type, key, location, numel)`.
//! torch writes entries uncompressed and 64-byte aligned (so they can be
//! mmapped); we also accept deflated entries, but then bound what we inflate:
//! each entry by its declared size (checked against deflate's maximum ratio,
//! [`MAX_DEFLATE_RATIO`], before anything is inflated, and enforced while
//! inflating), and all of them together by [`MAX_ARCHIVE_INFLATE_RATIO`] times
//! the archive's size. Every entry read is read whole and its CRC-32 checked
//! against the archive's record, storages included.

use std::collections::BTreeMap;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use ::zip::result::ZipError;
use ::zip::{CompressionMethod, ZipArchive};

use crate::error::{sanitize, WeightsError};
use crate::limits::{
    ARCHIVE_INFLATE_BASE, MAX_ARCHIVE_INFLATE_RATIO, MAX_BYTEORDER_BYTES, MAX_DEFLATE_RATIO,
    MAX_PICKLE_BYTES,
};
use crate::pickle::{unpickle, TensorRef};
use crate::tensor::StateDict;

const RESAVE: &str = "re-saving the checkpoint with torch.save, which stores entries uncompressed, gets under it";

/// Bytes inflated so far from the archive's compressed entries, against
/// [`MAX_ARCHIVE_INFLATE_RATIO`] x the archive's size (+ [`ARCHIVE_INFLATE_BASE`]).
#[derive(Clone, Copy)]
struct InflateBudget {
    used: u64,
    max: u64,
}

impl InflateBudget {
    fn new(file_len: u64) -> Self {
        InflateBudget {
            used: 0,
            max: file_len
                .saturating_mul(MAX_ARCHIVE_INFLATE_RATIO)
                .saturating_add(ARCHIVE_INFLATE_BASE),
        }
    }

    fn charge(&mut self, path: &Path, entry: &str, bytes: u64) -> Result<(), WeightsError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.max {
            return Err(WeightsError::limit(
                path,
                format!(
                    "compressed zip entries would inflate to more than {} bytes (at entry `{}`), over {MAX_ARCHIVE_INFLATE_RATIO} times the archive's size",
                    self.max,
                    sanitize(entry)
                ),
                "MAX_ARCHIVE_INFLATE_RATIO",
                MAX_ARCHIVE_INFLATE_RATIO,
                RESAVE,
            ));
        }
        Ok(())
    }
}


fn zip_error(path: &Path, e: ZipError) -> WeightsError {
    match e {
        ZipError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            WeightsError::truncated(path, format!("zip archive: {e}"))
        }
        ZipError::Io(e) => WeightsError::io(path, e),
        other => WeightsError::corrupt(path, format!("zip archive: {other}")),
    }
}

pub(crate) fn load(path: &Path) -> Result<StateDict, WeightsError> {
    let file = crate::fsio::open_regular(path).map_err(|e| WeightsError::io(path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| WeightsError::io(path, e))?
        .len();
    read(path, BufReader::new(file), file_len)
}

/// An archive already in memory; `path` only names it in errors.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<StateDict, WeightsError> {
    read(path, Cursor::new(bytes), bytes.len() as u64)
}

fn read<R: Read + Seek>(path: &Path, reader: R, file_len: u64) -> Result<StateDict, WeightsError> {
    let mut archive = ZipArchive::new(reader).map_err(|e| zip_error(path, e))?;

    // torch's reader uses the directory of the archive's records; we take the
    // first `<dir>/data.pkl`, which is the same thing for any file torch wrote.
    let pkl_name = archive
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        // A zip without one is some other zip (a wheel, a dataset...).
        .ok_or_else(|| WeightsError::NotAWeightsFile {
            path: path.to_path_buf(),
        })?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let mut inflate = InflateBudget::new(file_len);

    let pkl = read_entry(
        path,
        &mut archive,
        &pkl_name,
        file_len,
        Some((MAX_PICKLE_BYTES, "MAX_PICKLE_BYTES")),
        &mut inflate,
    )?;

    let big_endian = match archive.index_for_name(&format!("{prefix}byteorder")) {
        None => false, // written before torch 2.1: always little-endian
        Some(_) => {
            let b = read_entry(
                path,
                &mut archive,
                &format!("{prefix}byteorder"),
                file_len,
                Some((MAX_BYTEORDER_BYTES, "MAX_BYTEORDER_BYTES")),
                &mut inflate,
            )?;
            match String::from_utf8_lossy(&b).trim() {
                "little" => false,
                "big" => true,
                other => {
                    return Err(WeightsError::corrupt(
                        path,
                        format!("unknown byteorder `{}`", sanitize(other)),
                    ))
                }
            }
        }
    };

    let (graph, _) = unpickle(path, "data.pkl", &pkl)?;
    let tensors = graph.state_dict_tensors(path)?;

    // Group tensors by storage so that each storage is read once and shared
    // storages (tied weights) stay consistent.
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        if t.storage.view.is_some() {
            return Err(WeightsError::corrupt(
                path,
                format!(
                    "tensor `{}`: storage views do not exist in zip checkpoints",
                    sanitize(name)
                ),
            ));
        }
        by_key.entry(t.storage.key.as_str()).or_default().push(i);
    }

    // First pass, metadata only: every storage exists, matches its declared
    // size, and the total output is bounded, all before reading any data.
    let mut stored_elements = 0u64;
    // What inflating the compressed storages will cost, checked before any is.
    let mut inflate_check = inflate;
    for (&key, users) in &by_key {
        let (first_name, first) = &tensors[users[0]];
        for &u in users {
            let s = &tensors[u].1.storage;
            if (s.dtype, s.numel) != (first.storage.dtype, first.storage.numel) {
                return Err(WeightsError::corrupt(
                    path,
                    format!(
                        "storage `{}` is declared with two different types or sizes",
                        sanitize(key)
                    ),
                ));
            }
        }
        let entry = storage_entry(path, &mut archive, prefix, key, file_len)?;
        if entry.compressed {
            inflate_check.charge(path, &format!("{prefix}data/{key}"), entry.size)?;
        }
        let needed = first
            .storage
            .numel
            .checked_mul(first.storage.dtype.size_bytes() as u64)
            .ok_or_else(|| {
                WeightsError::corrupt(path, format!("storage `{}`: size overflows", sanitize(key)))
            })?;
        if entry.size < needed {
            return Err(WeightsError::StorageTooSmall {
                path: path.to_path_buf(),
                tensor: sanitize(first_name),
                needed,
                available: entry.size,
            });
        }
        stored_elements = stored_elements.saturating_add(first.storage.numel);
    }
    crate::check_budget(path, &tensors, stored_elements)?;

    // Second pass: read each storage once, gather its tensors, drop it.
    let mut out = StateDict::default();
    for (&key, users) in &by_key {
        let first: &TensorRef = &tensors[users[0]].1;
        let needed = first
            .storage
            .numel
            .saturating_mul(first.storage.dtype.size_bytes() as u64); // no overflow: checked in the first pass
        let name = format!("{prefix}data/{key}");
        // The whole entry, so that its CRC-32 is checked; a storage may be
        // larger than its tensors need.
        let bytes = read_entry(path, &mut archive, &name, file_len, None, &mut inflate)?;
        let bytes = bytes.get(..needed as usize).unwrap_or(&bytes);
        if (bytes.len() as u64) < needed {
            return Err(WeightsError::truncated(
                path,
                format!(
                    "storage `{}` holds {} of its {needed} bytes",
                    sanitize(key),
                    bytes.len()
                ),
            ));
        }
        for &u in users {
            let (tname, t) = &tensors[u];
            let data =
                crate::tensor::gather(path, tname, t.storage.dtype, bytes, big_endian, &t.view)?;
            out.tensors.insert(
                tname.clone(),
                crate::Tensor {
                    shape: t.view.shape.clone(),
                    dtype: t.storage.dtype,
                    data,
                },
            );
        }
    }
    Ok(out)
}

struct EntryInfo {
    /// Uncompressed size as declared by the archive, validated by `check_entry`.
    size: u64,
    /// Whether reading it inflates (anything but stored).
    compressed: bool,
}

fn storage_entry<R: Read + Seek>(
    path: &Path,
    archive: &mut ZipArchive<R>,
    prefix: &str,
    key: &str,
    file_len: u64,
) -> Result<EntryInfo, WeightsError> {
    let name = format!("{prefix}data/{key}");
    let entry = match archive.by_name(&name) {
        Ok(e) => e,
        Err(ZipError::FileNotFound) => {
            return Err(WeightsError::MissingStorage {
                path: path.to_path_buf(),
                key: sanitize(key),
            })
        }
        Err(e) => return Err(zip_error(path, e)),
    };
    check_entry(path, &entry, file_len)?;
    Ok(EntryInfo {
        size: entry.size(),
        compressed: entry.compression() != CompressionMethod::Stored,
    })
}

/// Declared sizes come from the archive and could be anything; make sure
/// they are physically possible for this file before trusting them.
fn check_entry<R: Read>(
    path: &Path,
    entry: &::zip::read::ZipFile<'_, R>,
    file_len: u64,
) -> Result<(), WeightsError> {
    let name = sanitize(entry.name());
    if entry.compressed_size() > file_len {
        return Err(WeightsError::truncated(
            path,
            format!(
                "zip entry `{name}` claims {} bytes, more than the whole file",
                entry.compressed_size()
            ),
        ));
    }
    let plausible = match entry.compression() {
        CompressionMethod::Stored => entry.size() == entry.compressed_size(),
        _ => {
            entry.size()
                <= entry
                    .compressed_size()
                    .saturating_mul(MAX_DEFLATE_RATIO)
                    .saturating_add(1024)
        }
    };
    if !plausible {
        if entry.compression() == CompressionMethod::Stored {
            return Err(WeightsError::corrupt(
                path,
                format!(
                    "zip entry `{name}`: declared size {} is impossible for {} stored bytes",
                    entry.size(),
                    entry.compressed_size()
                ),
            ));
        }
        return Err(WeightsError::limit(
            path,
            format!(
                "zip entry `{name}`: declared size {} is impossible for {} compressed bytes (more than deflate's maximum ratio)",
                entry.size(),
                entry.compressed_size()
            ),
            "MAX_DEFLATE_RATIO",
            MAX_DEFLATE_RATIO,
            "",
        ));
    }
    Ok(())
}

/// Read a whole entry and check it: its declared size against `cap` (a
/// limit's value and name) before anything is read, compressed entries against
/// the archive's inflate budget, the bytes actually produced against the
/// declared size (inflating stops one byte past it), and their CRC-32 against
/// the archive's record. Memory grows with the bytes actually produced, never
/// past the declared size, which `check_entry` has tied to the real file.
fn read_entry<R: Read + Seek>(
    path: &Path,
    archive: &mut ZipArchive<R>,
    name: &str,
    file_len: u64,
    cap: Option<(u64, &'static str)>,
    inflate: &mut InflateBudget,
) -> Result<Vec<u8>, WeightsError> {
    let mut entry = archive.by_name(name).map_err(|e| match e {
        ZipError::FileNotFound => {
            WeightsError::corrupt(path, format!("zip entry `{}` is missing", sanitize(name)))
        }
        e => zip_error(path, e),
    })?;
    check_entry(path, &entry, file_len)?;
    let declared = entry.size();
    if let Some((max, limit)) = cap {
        if declared > max {
            return Err(WeightsError::limit(
                path,
                format!(
                    "zip entry `{}` is {declared} bytes uncompressed, more than expected",
                    sanitize(name)
                ),
                limit,
                max,
                "",
            ));
        }
    }
    if entry.compression() != CompressionMethod::Stored {
        inflate.charge(path, name, declared)?;
    }
    let expected_crc = entry.crc32();
    let mut buf = Vec::new();
    // Bounded by the file's size (stored) or the checks above (compressed).
    buf.reserve_exact(declared as usize);
    let damaged = |detail: String| {
        WeightsError::corrupt(
            path,
            format!("zip entry `{}` is damaged: {detail}", sanitize(name)),
        )
    };
    (&mut entry)
        .take(declared.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => WeightsError::truncated(
                path,
                format!("zip entry `{}` is cut short", sanitize(name)),
            ),
            // The zip crate's own CRC check, when it gets to run first.
            std::io::ErrorKind::InvalidData if e.to_string().contains("checksum") => damaged(
                format!("its CRC-32 does not match the archive's record {expected_crc:#010x}"),
            ),
            _ => WeightsError::corrupt(path, format!("zip entry `{}`: {e}", sanitize(name))),
        })?;
    let got = buf.len() as u64;
    if got > declared {
        return Err(damaged(format!(
            "it inflates to more than its declared {declared} bytes"
        )));
    }
    if got < declared {
        return Err(WeightsError::truncated(
            path,
            format!(
                "zip entry `{}` holds {got} of its declared {declared} bytes",
                sanitize(name)
            ),
        ));
    }
    let crc = crc32fast::hash(&buf);
    if crc != expected_crc {
        return Err(damaged(format!(
            "its CRC-32 is {crc:#010x}, the archive records {expected_crc:#010x}"
        )));
    }
    Ok(buf)
}
