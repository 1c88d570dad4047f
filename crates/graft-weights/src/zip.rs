//! PyTorch's zip format (`torch.save` since 1.6).
//!
//! A zip archive whose entries all sit under one directory `<prefix>/`:
//! `<prefix>/data.pkl` is the pickled object, `<prefix>/data/<key>` the raw
//! bytes of each storage, `<prefix>/byteorder` (torch >= 2.1) "little" or
//! "big". Persistent ids are `('storage', storage_type, key, location, numel)`.
//! torch writes entries uncompressed and 64-byte aligned (so they can be
//! mmapped); we also accept deflated entries, but then bound what we inflate.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;

use ::zip::result::ZipError;
use ::zip::{CompressionMethod, ZipArchive};

use crate::error::{sanitize, WeightsError};
use crate::pickle::{unpickle, TensorRef};
use crate::tensor::StateDict;

/// data.pkl is a few hundred bytes per tensor; a gigabyte of it is an attack.
const MAX_PICKLE_BYTES: u64 = 1 << 30;
/// Deflate cannot expand data by more than about 1032:1; a larger declared
/// ratio is a lie (or a bomb), refused before inflating anything.
const MAX_DEFLATE_RATIO: u64 = 1032;


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
    let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
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

    let pkl = read_entry(
        path,
        &mut archive,
        &pkl_name,
        file_len,
        Limit::Whole(MAX_PICKLE_BYTES),
    )?;

    let big_endian = match archive.index_for_name(&format!("{prefix}byteorder")) {
        None => false, // written before torch 2.1: always little-endian
        Some(_) => {
            let b = read_entry(
                path,
                &mut archive,
                &format!("{prefix}byteorder"),
                file_len,
                Limit::Whole(16),
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
        let bytes = read_entry(path, &mut archive, &name, file_len, Limit::Prefix(needed))?;
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
                crate::tensor::gather(path, tname, t.storage.dtype, &bytes, big_endian, &t.view)?;
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
    Ok(EntryInfo { size: entry.size() })
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
        return Err(WeightsError::corrupt(
            path,
            format!(
                "zip entry `{name}`: declared size {} is impossible for {} stored bytes",
                entry.size(),
                entry.compressed_size()
            ),
        ));
    }
    Ok(())
}

/// How much of an entry `read_entry` reads.
#[derive(Clone, Copy)]
enum Limit {
    /// All of it; an entry declared larger than this is an error.
    Whole(u64),
    /// Its first n bytes (a storage may be larger than its tensors need).
    Prefix(u64),
}

/// Read (part of) an entry. Memory grows with the bytes actually produced,
/// never with a declared size, except for stored entries whose size
/// `check_entry` has tied to the real file length.
fn read_entry<R: Read + Seek>(
    path: &Path,
    archive: &mut ZipArchive<R>,
    name: &str,
    file_len: u64,
    limit: Limit,
) -> Result<Vec<u8>, WeightsError> {
    let entry = archive.by_name(name).map_err(|e| match e {
        ZipError::FileNotFound => {
            WeightsError::corrupt(path, format!("zip entry `{}` is missing", sanitize(name)))
        }
        e => zip_error(path, e),
    })?;
    check_entry(path, &entry, file_len)?;
    let limit = match limit {
        Limit::Whole(max) if entry.size() > max => {
            return Err(WeightsError::corrupt(
                path,
                format!(
                    "zip entry `{}` is {} bytes, more than the {max} expected",
                    sanitize(name),
                    entry.size()
                ),
            ));
        }
        Limit::Whole(max) | Limit::Prefix(max) => max,
    };
    let mut buf = Vec::new();
    if entry.compression() == CompressionMethod::Stored {
        buf.reserve_exact(entry.size().min(limit) as usize);
    }
    entry
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => WeightsError::truncated(
                path,
                format!("zip entry `{}` is cut short", sanitize(name)),
            ),
            _ => WeightsError::corrupt(path, format!("zip entry `{}`: {e}", sanitize(name))),
        })?;
    Ok(buf)
}
