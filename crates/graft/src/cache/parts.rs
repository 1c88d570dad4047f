//! `graft extract --shard`: one part of an extraction per process, and `graft cache merge`,
//! which joins the parts into the file one process would have written.
//!
//! Part `I` of `N` of `DIR/NAME.safetensors` is `DIR/NAME.part-I-of-N.safetensors` (I counts
//! from 1, like `--shard i/n`; a scheduler's index 0 writes part 1). Every extract file records
//! what its rows depend on in its safetensors metadata: model, weights sha256, layer,
//! preprocessing and a digest of the dataset listing (classes, every file's path under the data
//! folder and its label); a part also records `shard` = `I/N`. The merge refuses a part that is
//! missing or differs in any of these, naming it, and writes a file whose bytes equal a
//! one-process extraction's: the same header (the metadata without `shard`) and the same rows.

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::folder::ImageFolder;
use crate::{GraftError, Result};

/// Part `index` (from 0) of `count`: the samples `index`, `index + count`, … of the folder's
/// listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// The largest safetensors header a part may have (it lists every image's path).
const MAX_PART_HEADER_BYTES: u64 = 1 << 30;

/// The metadata keys that must agree between parts, in the order a difference is reported.
const IDENTITY: [&str; 6] = ["model", "weights_sha256", "layer", "preprocess", "listing_sha256", "classes"];

impl Shard {
    /// Part `index` (from 0) of `count`; refused unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(GraftError::setting("shard", &format!("{}/{count}", index + 1), "need 1 ≤ i ≤ n (i counts from 1)"));
        }
        Ok(Shard { index, count })
    }

    /// `i/n` as `--shard` takes it: i counts from 1.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = |why: &str| GraftError::setting("shard", s, why.to_string());
        let (i, n) = s.split_once('/').ok_or_else(|| bad("expected i/n (e.g. 1/4) or auto"))?;
        let (i, n) = (i.parse::<usize>().map_err(|_| bad("i is a whole number"))?, n.parse::<usize>().map_err(|_| bad("n is a whole number"))?);
        if n == 0 || i == 0 || i > n {
            return Err(bad("need 1 ≤ i ≤ n (i counts from 1)"));
        }
        Ok(Shard { index: i - 1, count: n })
    }

    /// Whether the sample at `position` of the listing belongs to this part.
    pub fn takes(self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// The part's number as file names and `--shard` write it (from 1).
    pub fn number(self) -> usize {
        self.index + 1
    }

    /// `DIR/NAME.part-I-of-N.safetensors` beside the merged file `DIR/NAME.safetensors`; a merged
    /// name that is not `.safetensors` is refused (the parts and the merge are safetensors).
    pub fn part_path(self, merged: &Path) -> Result<PathBuf> {
        let stem = merged_stem(merged)?;
        Ok(merged.with_file_name(format!("{stem}.part-{}-of-{}.safetensors", self.number(), self.count)))
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.number(), self.count)
    }
}

/// `NAME` of `DIR/NAME.safetensors`.
fn merged_stem(merged: &Path) -> Result<String> {
    let name = merged.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.len().checked_sub(".safetensors".len()).filter(|&k| k > 0 && name.is_char_boundary(k)) {
        Some(k) if name[k..].eq_ignore_ascii_case(".safetensors") => Ok(name[..k].to_string()),
        _ => Err(GraftError::setting("out", &merged.display().to_string(), "with --shard the merged file must end in .safetensors (its parts are written beside it)")),
    }
}

/// `(I, N)` when `name` is `STEM.part-I-of-N.safetensors`.
fn part_numbers(name: &str, stem: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix(stem)?.strip_prefix(".part-")?.strip_suffix(".safetensors")?;
    let (i, n) = rest.split_once("-of-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(i) && digits(n)).then(|| Some((i.parse().ok()?, n.parse().ok()?))).flatten()
}

/// sha256 of the dataset listing: the class names, then every sample's path under the folder
/// and its label, in listing order. Two processes agree on it exactly when they split the same
/// listing (wherever the folder is mounted).
pub fn listing_sha256(folder: &ImageFolder) -> String {
    let mut h = Sha256::new();
    h.update((folder.classes.len() as u64).to_le_bytes());
    for class in &folder.classes {
        h.update(class.as_bytes());
        h.update([0]);
    }
    for s in &folder.samples {
        let rel = s.path.strip_prefix(&folder.root).unwrap_or(&s.path);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        h.update((s.label as u64).to_le_bytes());
    }
    crate::zoo::pull::hex(&h.finalize())
}

/// Writes a safetensors header holding `metadata`, `features` (F32, [n, dim]) and `labels`
/// (I64, [n]); the data follows it. One writer for extract and merge, so equal metadata and
/// rows give equal bytes.
pub(crate) fn write_header(file: &mut impl Write, metadata: &BTreeMap<String, String>, n: usize, dim: usize) -> std::io::Result<u64> {
    let features_bytes = n * dim * 4;
    let header = serde_json::json!({
        "__metadata__": metadata,
        "features": {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, features_bytes]},
        "labels": {"dtype": "I64", "shape": [n], "data_offsets": [features_bytes, features_bytes + n * 8]},
    });
    let mut text = serde_json::to_string(&header).expect("json");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    file.write_all(&(text.len() as u64).to_le_bytes())?;
    file.write_all(text.as_bytes())?;
    Ok(8 + text.len() as u64)
}

/// One part, as its header describes it.
struct Part {
    path: PathBuf,
    metadata: BTreeMap<String, String>,
    shard: Shard,
    n: usize,
    dim: usize,
    /// Where the features start.
    data_start: u64,
    indices: Vec<usize>,
    paths: Vec<String>,
}

fn not_a_part(path: &Path, why: impl Into<String>) -> GraftError {
    GraftError::Data { path: path.to_path_buf(), reason: format!("not a `graft extract --shard` part: {}", why.into()) }
}

fn read_part(path: &Path) -> Result<Part> {
    let mut file = crate::fsutil::open_regular_nofollow(path)?;
    let len = file.metadata().map_err(|e| GraftError::io(path, e))?.len();
    let mut word = [0u8; 8];
    file.read_exact(&mut word).map_err(|_| not_a_part(path, "shorter than a safetensors header"))?;
    let header_len = u64::from_le_bytes(word);
    if header_len > MAX_PART_HEADER_BYTES || 8 + header_len > len {
        return Err(not_a_part(path, format!("header length {header_len} does not fit the file's {len} bytes")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| GraftError::io(path, e))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| not_a_part(path, format!("header is not JSON: {e}")))?;
    let metadata: BTreeMap<String, String> = serde_json::from_value(header.get("__metadata__").cloned().unwrap_or_default()).map_err(|_| not_a_part(path, "no string metadata"))?;
    let meta = |k: &str| metadata.get(k).ok_or_else(|| not_a_part(path, format!("no `{k}` metadata")));
    let tensor = |name: &str, dtype: &str| -> Result<(Vec<usize>, [u64; 2])> {
        let t = header.get(name).ok_or_else(|| not_a_part(path, format!("no `{name}` tensor")))?;
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).map_err(|_| not_a_part(path, format!("`{name}` has no shape")))?;
        let offsets: [u64; 2] = serde_json::from_value(t["data_offsets"].clone()).map_err(|_| not_a_part(path, format!("`{name}` has no data offsets")))?;
        if t["dtype"] != dtype {
            return Err(not_a_part(path, format!("`{name}` is {}, not {dtype}", t["dtype"])));
        }
        Ok((shape, offsets))
    };
    let (fshape, foffsets) = tensor("features", "F32")?;
    let (lshape, loffsets) = tensor("labels", "I64")?;
    let (n, dim) = match (fshape.as_slice(), lshape.as_slice()) {
        (&[n, dim], &[m]) if n == m => (n, dim),
        _ => return Err(not_a_part(path, format!("features {fshape:?} and labels {lshape:?} disagree"))),
    };
    let features_bytes = n.checked_mul(dim).and_then(|v| v.checked_mul(4)).map(|v| v as u64);
    let total = features_bytes.and_then(|f| f.checked_add(n as u64 * 8)?.checked_add(8 + header_len));
    match (features_bytes, total) {
        (Some(f), Some(t)) if foffsets == [0, f] && loffsets == [f, f + n as u64 * 8] && t == len => {}
        _ => return Err(not_a_part(path, "tensor sizes or offsets do not match the file (truncated or damaged)")),
    }
    let shard = Shard::parse(meta("shard")?).map_err(|_| not_a_part(path, format!("bad `shard` metadata `{}`", metadata["shard"])))?;
    // A part renamed to another part's name is not that part.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if let Some((i, count)) = name.find(".part-").and_then(|k| part_numbers(&name, &name[..k])) {
        if (i, count) != (shard.number(), shard.count) {
            return Err(GraftError::Data { path: path.to_path_buf(), reason: format!("foreign part: its name says part {i} of {count}, its metadata part {shard}") });
        }
    }
    let indices: Vec<usize> = serde_json::from_str(meta("indices")?).map_err(|e| not_a_part(path, format!("`indices`: {e}")))?;
    let paths: Vec<String> = serde_json::from_str(meta("paths")?).map_err(|e| not_a_part(path, format!("`paths`: {e}")))?;
    if indices.len() != n || paths.len() != n {
        return Err(not_a_part(path, format!("{} indices and {} paths for {n} rows", indices.len(), paths.len())));
    }
    if indices.windows(2).any(|w| w[0] >= w[1]) || indices.iter().any(|&i| !shard.takes(i)) {
        return Err(GraftError::Data { path: path.to_path_buf(), reason: format!("foreign part: its image indices are not those of part {shard}") });
    }
    for k in IDENTITY.iter().chain(&["shape"]) {
        meta(k)?;
    }
    Ok(Part { path: path.to_path_buf(), metadata, shard, n, dim, data_start: 8 + header_len, indices, paths })
}

/// The parts of `merged` in its folder (`NAME.part-I-of-N.safetensors`), part 1 first; refused
/// when none are there, when parts of different splits (N) are there, or when one of 1..N is
/// missing, naming it.
pub fn find_parts(merged: &Path) -> Result<Vec<PathBuf>> {
    let stem = merged_stem(merged)?;
    let dir = merged.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut found: BTreeMap<usize, BTreeMap<usize, PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| GraftError::io(dir, e))? {
        let entry = entry.map_err(|e| GraftError::io(dir, e))?;
        if let Some((i, n)) = part_numbers(&entry.file_name().to_string_lossy(), &stem) {
            found.entry(n).or_default().insert(i, entry.path());
        }
    }
    let pattern = format!("{stem}.part-I-of-N.safetensors");
    let mut splits = found.into_iter();
    let (n, parts) = splits.next().ok_or_else(|| GraftError::Data { path: dir.to_path_buf(), reason: format!("no parts {pattern} to merge (written by `graft extract --shard … --out {}`)", merged.display()) })?;
    if let Some((m, _)) = splits.next() {
        return Err(GraftError::Data { path: dir.to_path_buf(), reason: format!("parts of two splits: {stem}.part-…-of-{n} and …-of-{m}; remove the stale ones") });
    }
    if let Some(i) = (1..=n).find(|i| !parts.contains_key(i)) {
        let missing = Shard { index: i - 1, count: n }.part_path(merged)?;
        return Err(GraftError::Data { path: missing, reason: format!("missing: part {i} of {n} is not there ({} of {n} found)", parts.len()) });
    }
    if let Some((&i, path)) = parts.iter().find(|(&i, _)| i == 0 || i > n) {
        return Err(GraftError::Data { path: path.clone(), reason: format!("not a part of 1..{n} (part {i})") });
    }
    Ok(parts.into_values().collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct MergeSummary {
    pub out: PathBuf,
    /// Rows in the merged file.
    pub n: usize,
    pub dim: usize,
    /// The parts read, part 1 first.
    pub parts: Vec<PathBuf>,
}

/// A metadata value as an error quotes it.
fn quoted(value: &str) -> String {
    let max = crate::limits::MAX_QUOTED_CHARS;
    if value.chars().count() > max {
        format!("`{}…`", value.chars().take(max).collect::<String>())
    } else {
        format!("`{value}`")
    }
}

/// Joins the parts of one split into `out`: every part 1..N exactly once, all from the same
/// model, weights, layer, preprocessing and listing (else refused, naming the missing or foreign
/// part). The result is what one process extracting everything writes, byte for byte. Rows are
/// copied part by part, so memory holds the paths and indices, never the features.
pub fn merge(part_files: &[PathBuf], out: &Path) -> Result<MergeSummary> {
    if part_files.is_empty() {
        return Err(GraftError::setting("parts", "", "no parts given"));
    }
    let mut parts = part_files.iter().map(|p| read_part(p)).collect::<Result<Vec<_>>>()?;
    parts.sort_by_key(|p| p.shard.index);
    // The identity most parts share is the reference (a tie goes to the lowest part): the
    // others are foreign. A part with no rows (every image of it unreadable, or fewer images
    // than parts) has no feature shape of its own, so shapes are compared among the others.
    let key = |p: &Part| (IDENTITY.map(|k| p.metadata[k].clone()), p.shard.count);
    let reference = parts.iter().map(key).max_by_key(|k| (parts.iter().filter(|p| key(p) == *k).count(), std::cmp::Reverse(parts.iter().position(|p| key(p) == *k)))).expect("parts");
    let first = parts.iter().filter(|p| key(p) == reference).max_by_key(|p| (p.n > 0, std::cmp::Reverse(p.shard.index))).expect("reference part");
    let foreign: Vec<&Part> = parts.iter().filter(|p| key(p) != reference || (p.n > 0 && first.n > 0 && (p.dim, &p.metadata["shape"]) != (first.dim, &first.metadata["shape"]))).collect();
    if let Some(p) = foreign.first() {
        let what = match IDENTITY.iter().chain(["shape"].iter()).find(|k| p.metadata[**k] != first.metadata[**k]) {
            Some(k) => format!("its {k} {} differs from {}'s {}", quoted(&p.metadata[*k]), first.path.display(), quoted(&first.metadata[*k])),
            None if p.shard.count != first.shard.count => format!("it is part {} of a split into {} parts, {} is of {}", p.shard, p.shard.count, first.path.display(), first.shard.count),
            None => format!("its features have {} values, {}'s {}", p.dim, first.path.display(), first.dim),
        };
        let also = if foreign.len() > 1 { format!(" (also foreign: {})", foreign[1..].iter().map(|p| p.path.display().to_string()).collect::<Vec<_>>().join(", ")) } else { String::new() };
        return Err(GraftError::Data { path: p.path.clone(), reason: format!("foreign part: {what}{also}") });
    }
    let count = first.shard.count;
    for w in parts.windows(2) {
        if w[0].shard == w[1].shard {
            return Err(GraftError::Data { path: w[1].path.clone(), reason: format!("part {} given twice (also {})", w[1].shard, w[0].path.display()) });
        }
    }
    if let Some(i) = (0..count).find(|i| !parts.iter().any(|p| p.shard.index == *i)) {
        let missing = Shard { index: i, count };
        let path = missing.part_path(out).unwrap_or_else(|_| out.to_path_buf());
        return Err(GraftError::Data { path, reason: format!("missing: part {missing} was not given ({} of {count} parts)", parts.len()) });
    }
    let dim = first.dim;
    // Merged row of every part's rows: rows in the order of their listing index.
    let mut order: Vec<(usize, usize, usize)> = parts.iter().enumerate().flat_map(|(p, part)| part.indices.iter().enumerate().map(move |(r, &i)| (i, p, r))).collect();
    order.sort_unstable();
    let n = order.len();
    let mut target: Vec<Vec<usize>> = parts.iter().map(|p| vec![0; p.n]).collect();
    for (row, &(_, p, r)) in order.iter().enumerate() {
        target[p][r] = row;
    }
    let mut metadata = first.metadata.clone();
    metadata.remove("shard");
    let indices: Vec<usize> = order.iter().map(|o| o.0).collect();
    let paths: Vec<&String> = order.iter().map(|&(_, p, r)| &parts[p].paths[r]).collect();
    metadata.insert("indices".into(), serde_json::to_string(&indices).expect("json"));
    metadata.insert("paths".into(), serde_json::to_string(&paths).expect("json"));
    drop((indices, paths));

    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| GraftError::io(dir, e))?;
    let tmp = out.with_file_name(format!(".{}.tmp-{}", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    let write = || -> Result<()> {
        let io = |e: std::io::Error| GraftError::io(&tmp, e);
        let mut file = crate::fsutil::create_temp(&tmp).map_err(io)?;
        let mut head = Vec::new();
        let base = write_header(&mut head, &metadata, n, dim).map_err(io)?;
        file.write_all(&head).map_err(io)?;
        let row_bytes = dim * 4;
        let labels_base = base + (n * row_bytes) as u64;
        for (part, target) in parts.iter().zip(&target) {
            let mut src = crate::fsutil::open_regular_nofollow(&part.path)?;
            std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(part.data_start)).map_err(|e| GraftError::io(&part.path, e))?;
            let mut src = BufReader::with_capacity(1 << 20, src);
            let mut row = vec![0u8; row_bytes];
            for &t in target {
                src.read_exact(&mut row).map_err(|e| GraftError::io(&part.path, e))?;
                file.write_all_at(&row, base + (t * row_bytes) as u64).map_err(io)?;
            }
            let mut label = [0u8; 8];
            for &t in target {
                src.read_exact(&mut label).map_err(|e| GraftError::io(&part.path, e))?;
                file.write_all_at(&label, labels_base + t as u64 * 8).map_err(io)?;
            }
        }
        file.set_len(labels_base + n as u64 * 8).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, out).map_err(|e| GraftError::io(out, e))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(MergeSummary { out: out.to_path_buf(), n, dim, parts: parts.into_iter().map(|p| p.path).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_name_their_parts_and_split_the_listing() {
        let s = Shard::parse("2/3").unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!(s.to_string(), "2/3");
        assert_eq!(s.part_path(Path::new("out/feats.safetensors")).unwrap(), Path::new("out/feats.part-2-of-3.safetensors"));
        assert_eq!((0..9).filter(|&i| s.takes(i)).collect::<Vec<_>>(), vec![1, 4, 7]);
        for bad in ["0/3", "4/3", "1/0", "x/3", "3", "auto"] {
            assert!(matches!(Shard::parse(bad), Err(GraftError::InvalidSetting { .. })), "{bad}");
        }
        assert!(Shard::new(3, 3).is_err() && Shard::new(2, 3).is_ok());
        assert!(s.part_path(Path::new("feats.npy")).is_err() && s.part_path(Path::new(".safetensors")).is_err());
        assert_eq!(part_numbers("feats.part-12-of-40.safetensors", "feats"), Some((12, 40)));
        for other in ["feats.part-1-of-.safetensors", "feats2.part-1-of-2.safetensors", "feats.part-+1-of-2.safetensors", "feats.part-1-of-2.safetensors.tmp"] {
            assert_eq!(part_numbers(other, "feats"), None, "{other}");
        }
    }
}
