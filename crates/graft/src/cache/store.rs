//! Activations at a cut layer, stored once per image as shards on disk and read through
//! memory maps.
//!
//! A namespace (one folder) holds the features of one model + weights + cut + preprocessing +
//! augmentation; inside it an entry is keyed by the image file's content hash and the
//! augmentation view. Editing one image changes its hash and so misses only that image;
//! changing anything else changes the namespace and misses cleanly.
//!
//! Shard layout (little-endian), written whole to a temporary name and renamed:
//! `GRAFTFS1`, u32 version, u32 dtype (0 f32, 1 f16), u32 dim, u32 count,
//! count × (32-byte sha256, u32 view), count × dim values, u32 CRC32 of all preceding bytes.
//! A shard that fails any check is reported, removed, and its images are recomputed.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{GraftError, Result};

const MAGIC: &[u8; 8] = b"GRAFTFS1";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 * 4;
const ENTRY: usize = 32 + 4;

/// (sha256 of the image file, augmentation view; 0 = not augmented).
pub type Key = ([u8; 32], u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StoreDtype {
    #[default]
    F32,
    /// Half the disk, ~3 significant digits: plenty for features feeding a head.
    F16,
}

impl StoreDtype {
    fn code(self) -> u32 {
        match self {
            StoreDtype::F32 => 0,
            StoreDtype::F16 => 1,
        }
    }
    fn size(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::F16 => 2,
        }
    }
}

/// Everything the stored activations depend on, besides the image itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    pub model: String,
    pub weights_sha256: String,
    /// Where the trunk is cut, e.g. `pooled:avg` or `_blocks.12`.
    pub cut: String,
    /// The preprocessing, serialised (any change misses).
    pub preprocess: String,
    /// The augmentation spec the views were made with (`none` for view 0 only).
    pub augment: String,
    pub dtype: StoreDtype,
}

impl Namespace {
    /// A short stable id: the folder name.
    pub fn id(&self) -> String {
        let json = serde_json::to_string(self).expect("namespace serializes");
        let digest = Sha256::digest(json.as_bytes());
        digest[..10].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// sha256 of a file's bytes: the image part of a key.
pub fn content_hash(path: &Path) -> Result<[u8; 32]> {
    let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_IMAGE_FILE_BYTES)?;
    Ok(Sha256::digest(&bytes).into())
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Rows are read from the file with positioned reads (see [`Shard::read_into`]).
    file: std::fs::File,
    dim: usize,
    dtype: StoreDtype,
    count: usize,
}

impl Shard {
    fn data_offset(&self) -> usize {
        HEADER + self.count * ENTRY
    }

    /// Appends the features of `row` to `out`. Read with a positioned read, not through the
    /// map: on a fault the kernel maps the whole page-cache folio (up to megabytes on current
    /// kernels, e.g. for pages just written), so reading rows at random through the map grew
    /// the resident set by hundreds of MB between releases; the page cache itself is not
    /// counted in the process's memory.
    fn read_into(&self, row: usize, out: &mut Vec<f32>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let size = self.dtype.size();
        let start = self.data_offset() + row * self.dim * size;
        let mut bytes = vec![0u8; self.dim * size];
        self.file.read_exact_at(&mut bytes, start as u64)?;
        match self.dtype {
            StoreDtype::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            StoreDtype::F16 => out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        }
        Ok(())
    }

    /// Drops the mapped pages from this process's resident set (they stay in the page cache):
    /// the map is read whole once, for the checksum, when the shard is opened.
    fn release(&self) {
        #[cfg(unix)]
        // SAFETY: a read-only shared mapping of a file that is never modified in place
        // (shards are written whole and renamed): dropped pages read back the same bytes.
        unsafe {
            let _ = self.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed);
        }
    }
}

/// One namespace of the store, open for reading and appending.
pub struct FeatureStore {
    pub dir: PathBuf,
    pub namespace: Namespace,
    shards: Vec<Shard>,
    index: HashMap<Key, (usize, usize)>,
    pending: Vec<(Key, Vec<f32>)>,
    pending_bytes: usize,
    dim: Option<usize>,
    /// Shards found damaged on open (path and reason); they were removed.
    pub repaired: Vec<(PathBuf, String)>,
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStore").field("dir", &self.dir).field("rows", &self.index.len()).field("dim", &self.dim).finish_non_exhaustive()
    }
}

/// Pending features are written as a shard once they pass this size, keeping memory flat
/// (the shard is streamed to disk, not assembled in memory first).
const FLUSH_BYTES: usize = 16 << 20;

impl FeatureStore {
    /// Opens (creating) the namespace folder under `root`, checking every shard.
    pub fn open(root: &Path, namespace: Namespace) -> Result<Self> {
        let dir = root.join(namespace.id());
        std::fs::create_dir_all(root).map_err(|e| GraftError::io(root, e))?;
        // Shards are written and read by name: a planted link would redirect them.
        crate::fsutil::create_dir_nofollow(&dir)?;
        crate::fsutil::check_run_dir(&dir)?;
        // A process killed while writing a shard leaves its temporary file; the shard itself
        // was never renamed into place. Only where a writer's liveness can be checked (Linux):
        // other graft processes may be writing into the same cache right now.
        if cfg!(target_os = "linux") {
            crate::fsutil::remove_stale_temps(&dir)?;
        }
        let meta = dir.join("namespace.json");
        if !meta.exists() {
            crate::fsutil::write_atomic(&meta, &serde_json::to_vec_pretty(&namespace).expect("namespace serializes"))?;
        }
        let mut store = Self {
            dir: dir.clone(),
            namespace,
            shards: Vec::new(),
            index: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            dim: None,
            repaired: Vec::new(),
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| GraftError::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "shard"))
            .collect();
        paths.sort();
        for path in paths {
            match store.open_shard(&path) {
                Ok(()) => {}
                Err(reason) => {
                    let _ = std::fs::remove_file(&path);
                    store.repaired.push((path, reason));
                }
            }
        }
        Ok(store)
    }

    fn open_shard(&mut self, path: &Path) -> std::result::Result<(), String> {
        let file = crate::fsutil::open_regular_nofollow(path).map_err(|e| e.to_string())?;
        // SAFETY: shards are only ever created whole and renamed into place, never modified.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
        if map.len() < HEADER + 4 || &map[..8] != MAGIC {
            return Err("not a feature shard (bad magic or too short)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes([map[o], map[o + 1], map[o + 2], map[o + 3]]);
        let (version, dtype, dim, count) = (u32_at(8), u32_at(12), u32_at(16) as usize, u32_at(20) as usize);
        if version != VERSION {
            return Err(format!("unknown shard version {version}"));
        }
        let dtype = match dtype {
            0 => StoreDtype::F32,
            1 => StoreDtype::F16,
            d => return Err(format!("unknown dtype code {d}")),
        };
        if dtype != self.namespace.dtype {
            return Err("dtype differs from the namespace".into());
        }
        let expected = count
            .checked_mul(ENTRY)
            .and_then(|e| count.checked_mul(dim)?.checked_mul(dtype.size())?.checked_add(e))
            .and_then(|b| b.checked_add(HEADER + 4))
            .ok_or("sizes overflow")?;
        if map.len() != expected {
            return Err(format!("truncated or padded: {} bytes, header says {expected}", map.len()));
        }
        let body = &map[..map.len() - 4];
        let crc_ok = crc32fast::hash(body) == u32_at(map.len() - 4);
        if !crc_ok {
            return Err("checksum mismatch (corrupted)".into());
        }
        if let Some(d) = self.dim {
            if d != dim {
                return Err(format!("feature width {dim} differs from the store's {d}"));
            }
        }
        self.dim = Some(dim);
        let shard_index = self.shards.len();
        for row in 0..count {
            let o = HEADER + row * ENTRY;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&map[o..o + 32]);
            self.index.insert((hash, u32_at(o + 32)), (shard_index, row));
        }
        let shard = Shard { path: path.to_path_buf(), map, file, dim, dtype, count };
        // The checksum read every page: let them go (see `Shard::release`).
        shard.release();
        self.shards.push(shard);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.index.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stored features of `key`, if present.
    pub fn get(&self, key: &Key) -> Option<Vec<f32>> {
        let mut out = Vec::new();
        self.read_into(key, &mut out).then_some(out)
    }

    /// Appends the stored features of `key` to `out`; false (and `out` unchanged) if absent
    /// or if its shard can no longer be read (a shard removed under a running process: the
    /// caller reports the missing row).
    pub fn read_into(&self, key: &Key, out: &mut Vec<f32>) -> bool {
        if let Some(&(s, row)) = self.index.get(key) {
            let before = out.len();
            if self.shards[s].read_into(row, out).is_err() {
                out.truncate(before);
                return false;
            }
            return true;
        }
        match self.pending.iter().find(|(k, _)| k == key) {
            Some((_, v)) => {
                out.extend_from_slice(v);
                true
            }
            None => false,
        }
    }

    /// Appends the features of `keys[r]` for each `r` of `rows` to `out`, in that order; a key
    /// missing from the store is an error naming the store and `what` (e.g. "an activation").
    pub fn read_rows(&self, keys: &[Key], rows: &[usize], what: &str, out: &mut Vec<f32>) -> Result<()> {
        for &r in rows {
            if !self.read_into(&keys[r], out) {
                return Err(GraftError::Data { path: self.dir.clone(), reason: format!("{what} written this run is missing from the feature cache") });
            }
        }
        Ok(())
    }

    /// Width of the stored features (`None` while the store is empty).
    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.index.contains_key(key) || self.pending.iter().any(|(k, _)| k == key)
    }

    /// Adds features; they reach disk at the next [`flush`](Self::flush) (or automatically
    /// once enough are pending).
    pub fn put(&mut self, key: Key, features: Vec<f32>) -> Result<()> {
        match self.dim {
            Some(d) if d != features.len() => {
                return Err(GraftError::Data {
                    path: self.dir.clone(),
                    reason: format!("feature width {} differs from the store's {d}", features.len()),
                })
            }
            _ => self.dim = Some(features.len()),
        }
        self.pending_bytes += features.len() * 4;
        self.pending.push((key, features));
        if self.pending_bytes >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending features as one new shard (temporary name, fsync, rename).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let dim = self.dim.unwrap_or(0);
        let dtype = self.namespace.dtype;
        let pending = &self.pending;
        let write_body = |w: &mut dyn Write| -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            for v in [VERSION, dtype.code(), dim as u32, pending.len() as u32] {
                w.write_all(&v.to_le_bytes())?;
            }
            for ((hash, view), _) in pending {
                w.write_all(hash)?;
                w.write_all(&view.to_le_bytes())?;
            }
            let mut row = Vec::with_capacity(dim * dtype.size());
            for (_, values) in pending {
                row.clear();
                match dtype {
                    StoreDtype::F32 => values.iter().for_each(|v| row.extend_from_slice(&v.to_le_bytes())),
                    StoreDtype::F16 => values.iter().for_each(|v| row.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
                }
                w.write_all(&row)?;
            }
            Ok(())
        };
        let name = format!("{:06}-{}.shard", self.shards.len(), std::process::id());
        let path = self.dir.join(name);
        // `.NAME.tmp-PID`, the pattern `fsutil::remove_stale_temps` recognises.
        let tmp = self.dir.join(format!(".shard.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut w = CrcWriter { inner: std::io::BufWriter::with_capacity(1 << 20, crate::fsutil::create_temp(&tmp)?), crc: crc32fast::Hasher::new() };
            write_body(&mut w)?;
            let crc = w.crc.finalize();
            w.inner.write_all(&crc.to_le_bytes())?;
            let f = w.inner.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            GraftError::io(&path, e)
        })?;
        self.pending.clear();
        self.pending_bytes = 0;
        self.open_shard(&path).map_err(|reason| GraftError::Data { path: path.clone(), reason })
    }

    /// Files of this namespace's shards.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }
}

/// Passes writes on, keeping the CRC32 of everything written.
struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One namespace as listed by `graft cache ls`.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceInfo {
    pub id: String,
    pub namespace: Option<Namespace>,
    pub shards: usize,
    pub bytes: u64,
}

/// Every namespace under `root`.
pub fn list(root: &Path) -> Result<Vec<NamespaceInfo>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(GraftError::io(root, e)),
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let namespace = crate::fsutil::read_run_file(&dir.join("namespace.json"), crate::limits::MAX_CONFIG_FILE_BYTES).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let (mut shards, mut bytes) = (0, 0);
        for f in std::fs::read_dir(&dir).map_err(|e| GraftError::io(&dir, e))?.filter_map(|e| e.ok()) {
            if f.path().extension().is_some_and(|x| x == "shard") {
                shards += 1;
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        out.push(NamespaceInfo { id: entry.file_name().to_string_lossy().into_owned(), namespace, shards, bytes });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(cut: &str, dtype: StoreDtype) -> Namespace {
        Namespace {
            model: "m".into(),
            weights_sha256: "w".into(),
            cut: cut.into(),
            preprocess: "p".into(),
            augment: "none".into(),
            dtype,
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("graft-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_reopen() {
        let root = tmp("rt");
        let mut s = FeatureStore::open(&root, ns("pooled", StoreDtype::F32)).unwrap();
        s.put(([1; 32], 0), vec![1.0, 2.0, 3.5]).unwrap();
        s.put(([2; 32], 0), vec![-1.0, 0.0, 9.0]).unwrap();
        s.flush().unwrap();
        let s = FeatureStore::open(&root, ns("pooled", StoreDtype::F32)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(&([2; 32], 0)).unwrap(), vec![-1.0, 0.0, 9.0]);
        assert!(s.get(&([2; 32], 1)).is_none());
        // Another cut is another namespace: nothing there.
        assert!(FeatureStore::open(&root, ns("_blocks.3", StoreDtype::F32)).unwrap().is_empty());
    }

    /// A temporary file of a writer that is gone is removed on open; one of a live writer (this
    /// process) is left alone.
    #[test]
    #[cfg(target_os = "linux")]
    fn stale_shard_temporaries_are_removed_on_open() {
        let root = tmp("stale");
        let s = FeatureStore::open(&root, ns("pooled", StoreDtype::F32)).unwrap();
        let dead = s.dir.join(".shard.tmp-999999999");
        let live = s.dir.join(format!(".shard.tmp-{}", std::process::id()));
        std::fs::write(&dead, b"half a shard").unwrap();
        std::fs::write(&live, b"being written").unwrap();
        drop(s);
        let s = FeatureStore::open(&root, ns("pooled", StoreDtype::F32)).unwrap();
        assert!(!dead.exists(), "the dead writer's temporary is removed");
        assert!(live.exists(), "a live writer's temporary stays");
        assert!(s.is_empty());
    }

    #[test]
    fn f16_halves_the_values_bytes() {
        let root = tmp("f16");
        let mut s = FeatureStore::open(&root, ns("pooled", StoreDtype::F16)).unwrap();
        s.put(([3; 32], 0), vec![0.1, 1000.0]).unwrap();
        s.flush().unwrap();
        let v = s.get(&([3; 32], 0)).unwrap();
        assert!((v[0] - 0.1).abs() < 1e-3 && v[1] == 1000.0);
    }

    #[test]
    fn corrupted_and_truncated_shards_are_detected_and_removed() {
        for damage in ["flip", "truncate"] {
            let root = tmp(damage);
            let mut s = FeatureStore::open(&root, ns("pooled", StoreDtype::F32)).unwrap();
            s.put(([4; 32], 0), vec![1.0; 100]).unwrap();
            s.flush().unwrap();
            let shard = s.shard_paths()[0].to_path_buf();
            drop(s);
            let mut bytes = std::fs::read(&shard).unwrap();
            match damage {
                "flip" => bytes[HEADER + ENTRY + 10] ^= 0xff,
                _ => bytes.truncate(bytes.len() - 17),
            }
            std::fs::write(&shard, &bytes).unwrap();
            let s = FeatureStore::open(&root, ns("pooled", StoreDtype::F32)).unwrap();
            assert!(s.is_empty(), "{damage}: damaged shard must not serve features");
            assert_eq!(s.repaired.len(), 1, "{damage}: damage is reported");
            assert!(!shard.exists(), "{damage}: damaged shard is removed so it gets rebuilt");
        }
    }
}
