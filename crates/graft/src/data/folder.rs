//! Image-folder datasets: `DIR/<class>/<image>`, the layout of Keras'
//! `flow_from_directory` and torchvision's `ImageFolder`.
//!
//! * Class names are the names of the sub-folders of `DIR`, sorted (byte order); a sample's
//!   label is the index of its class in that list.
//! * Image files are recognised by extension, case-insensitively: png, jpg, jpeg, bmp, gif,
//!   webp, tif, tiff. Other files are ignored (and not counted as skipped).
//! * Hidden files and folders (name starting with `.`) are ignored, at every level.
//! * Inside a class folder, sub-folders are searched too (as torchvision does); symlinked
//!   class folders and symlinked files are followed, symlinked sub-folders inside a class are
//!   not (no loops). Files are sorted by their path within the class.
//!
//! Decoding is parallel (rayon) and forgiving: a file that cannot be decoded is skipped and
//! reported as a [`Skipped`] entry instead of failing the whole dataset.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::image::{decode, Preprocess};
use crate::{GraftError, Result};

/// Extensions (lower case) recognised as image files.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// Deepest level searched below a class folder.
const MAX_DEPTH: usize = 32;

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub path: PathBuf,
    /// Index into [`ImageFolder::classes`].
    pub label: usize,
}

/// A scanned image-folder dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    pub root: PathBuf,
    /// Sorted class names (sub-folder names).
    pub classes: Vec<String>,
    /// Samples grouped by class (in class order), files sorted within a class.
    pub samples: Vec<Sample>,
}

/// A file that could not be decoded, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Whether `path` has one of the [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        .unwrap_or(false)
}

fn data_err(path: &Path, reason: impl Into<String>) -> GraftError {
    GraftError::Data { path: path.to_path_buf(), reason: reason.into() }
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().map(|n| n.starts_with('.')).unwrap_or(false)
}

fn check_root(root: &Path) -> Result<()> {
    match fs::metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(data_err(root, "dataset folder does not exist"))
        }
        Err(e) => Err(GraftError::io(root, e)),
        Ok(m) if !m.is_dir() => Err(data_err(
            root,
            "not a folder (a dataset is a folder of class sub-folders holding images)",
        )),
        Ok(_) => Ok(()),
    }
}

/// The non-hidden sub-folders of `root` (symlinks followed) as (name, path), sorted by name.
fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| GraftError::io(root, e))? {
        let entry = entry.map_err(|e| GraftError::io(root, e))?;
        let name = entry.file_name();
        if is_hidden(&name) {
            continue;
        }
        let path = entry.path();
        // fs::metadata follows symlinks; a dangling link is just not a folder.
        if !fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            continue;
        }
        let Some(name) = name.to_str() else {
            return Err(data_err(&path, "class folder name is not valid UTF-8"));
        };
        dirs.push((name.to_string(), path));
        if dirs.len() > crate::limits::MAX_CLASSES {
            return Err(data_err(root, format!("more than {} class sub-folders (graft::limits::MAX_CLASSES)", crate::limits::MAX_CLASSES)));
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        return Err(data_err(
            root,
            "no class sub-folders (expected DIR/<class>/<image files>)",
        ));
    }
    Ok(dirs)
}

/// Image files below a class folder, sorted by path.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    files_below(dir, &is_image_file)
}

/// The files below `dir` (hidden entries skipped, at most `MAX_DEPTH` folders deep) that `keep`
/// accepts, sorted by path.
pub fn files_below(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).map_err(|e| GraftError::io(dir, e))? {
            let entry = entry.map_err(|e| GraftError::io(dir, e))?;
            if is_hidden(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            let file_type = entry.file_type().map_err(|e| GraftError::io(&path, e))?;
            if file_type.is_dir() {
                if depth < MAX_DEPTH {
                    walk(&path, depth + 1, keep, out)?;
                }
            } else if keep(&path) {
                // Regular files, and symlinks that resolve to regular files.
                if fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
                    out.push(path);
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, 0, keep, &mut out)?;
    out.sort();
    Ok(out)
}

impl ImageFolder {
    /// Scans a training folder: classes are its sub-folders. Errors when `root` is missing or
    /// not a folder, has no class sub-folders or only one, holds no image files at all, or a
    /// class folder holds no image files.
    pub fn scan(root: impl AsRef<Path>) -> Result<ImageFolder> {
        let root = root.as_ref();
        check_root(root)?;
        let dirs = class_dirs(root)?;
        if dirs.len() < 2 {
            return Err(data_err(
                root,
                format!("needs at least 2 classes, found 1: `{}`", dirs[0].0),
            ));
        }
        let mut per_class = Vec::with_capacity(dirs.len());
        for (_, dir) in &dirs {
            per_class.push(image_files(dir)?);
        }
        if per_class.iter().all(|f| f.is_empty()) {
            return Err(data_err(
                root,
                format!("no image files ({}) in any class folder", IMAGE_EXTENSIONS.join(", ")),
            ));
        }
        if let Some(i) = per_class.iter().position(|f| f.is_empty()) {
            return Err(data_err(
                &dirs[i].1,
                format!(
                    "class folder `{}` holds no image files ({})",
                    dirs[i].0,
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        let classes: Vec<String> = dirs.into_iter().map(|(n, _)| n).collect();
        let samples = per_class
            .into_iter()
            .enumerate()
            .flat_map(|(label, files)| files.into_iter().map(move |path| Sample { path, label }))
            .collect();
        Ok(ImageFolder { root: root.to_path_buf(), classes, samples })
    }

    /// Scans a validation or test folder against the training class list: every sub-folder
    /// must be one of `classes` (labels are indices into it); classes may be missing or empty,
    /// but the folder must hold at least one image.
    pub fn scan_with_classes(root: impl AsRef<Path>, classes: &[String]) -> Result<ImageFolder> {
        let root = root.as_ref();
        check_root(root)?;
        let dirs = class_dirs(root)?;
        let mut samples = Vec::new();
        let mut labelled = Vec::with_capacity(dirs.len());
        for (name, dir) in &dirs {
            let Some(label) = classes.iter().position(|c| c == name) else {
                let mut known = classes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>();
                if known.len() > 20 {
                    known.truncate(20);
                    known.push("…".into());
                }
                return Err(data_err(
                    dir,
                    format!(
                        "unknown class folder `{name}`; the training classes are {}",
                        known.join(", ")
                    ),
                ));
            };
            labelled.push((label, image_files(dir)?));
        }
        labelled.sort_by_key(|(label, _)| *label);
        for (label, files) in labelled {
            samples.extend(files.into_iter().map(|path| Sample { path, label }));
        }
        if samples.is_empty() {
            return Err(data_err(
                root,
                format!("no image files ({}) in any class folder", IMAGE_EXTENSIONS.join(", ")),
            ));
        }
        Ok(ImageFolder { root: root.to_path_buf(), classes: classes.to_vec(), samples })
    }

    /// Number of samples of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for s in &self.samples {
            if let Some(c) = counts.get_mut(s.label) {
                *c += 1;
            }
        }
        counts
    }
}

/// splitmix64 finaliser, used to derive independent seeds.
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Splits sample indices into (train, val), stratified by label.
///
/// Each class is shuffled with a generator seeded from `seed` and the label, and
/// `round(n · val_fraction)` of its `n` samples go to validation, clamped so that a class with
/// at least 2 samples keeps at least one sample on each side (a class with 1 sample stays in
/// train). Both index lists are returned sorted ascending; the result depends only on the
/// labels, the fraction and the seed. `val_fraction` must lie strictly between 0 and 1
/// (`GraftError::InvalidSetting` for `val_split` otherwise).
pub fn stratified_split(
    samples: &[Sample],
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(GraftError::setting(
            "val_split",
            &val_fraction.to_string(),
            "the validation fraction must lie strictly between 0 and 1",
        ));
    }
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        by_class.entry(s.label).or_default().push(i);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (label, mut idx) in by_class {
        let n = idx.len();
        let mut rng = StdRng::seed_from_u64(splitmix64(seed ^ splitmix64(label as u64)));
        idx.shuffle(&mut rng);
        let n_val = if n < 2 { 0 } else { ((n as f64 * val_fraction).round() as usize).clamp(1, n - 1) };
        val.extend_from_slice(&idx[..n_val]);
        train.extend_from_slice(&idx[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((train, val))
}

/// The reason of a decoding error, without the path (the [`Skipped`] entry has it).
pub(crate) fn reason_of(e: GraftError) -> String {
    match e {
        GraftError::Image { reason, .. } | GraftError::Data { reason, .. } => reason,
        GraftError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Decodes one file, turning decoder panics (bugs on hostile input) into errors.
fn decode_guarded(path: &Path) -> std::result::Result<RgbImage, String> {
    guarded(|| decode(path))
}

/// Runs a decoder, turning its panics (bugs on hostile input) into errors.
fn guarded(decode: impl FnOnce() -> Result<RgbImage>) -> std::result::Result<RgbImage, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(reason_of(e)),
        Err(_) => Err("the image decoder failed on this file".into()),
    }
}

/// An image file's bytes already in memory (an upload), with the name its errors give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBytes {
    pub name: PathBuf,
    pub bytes: Vec<u8>,
}

/// [`decode_with`] for images in memory: the same decoder, with the process-wide
/// [`super::image::limits`] and [`crate::limits::MAX_IMAGE_FILE_BYTES`] a file gets, in
/// parallel; undecodable ones are `None` and listed under their name.
pub fn decode_bytes_with<T: Send>(images: &[ImageBytes], f: impl Fn(RgbImage) -> T + Sync) -> (Vec<Option<T>>, Vec<Skipped>) {
    let limits = super::image::limits();
    let results: Vec<std::result::Result<T, String>> = images
        .par_iter()
        .map(|i| {
            if i.bytes.len() as u64 > crate::limits::MAX_IMAGE_FILE_BYTES {
                let max = crate::limits::MAX_IMAGE_FILE_BYTES;
                return Err(format!("{} bytes, over the limit of {max} bytes for an image (MAX_IMAGE_FILE_BYTES)", i.bytes.len()));
            }
            guarded(|| super::image::decode_bytes(&i.name, &i.bytes, &limits)).map(&f)
        })
        .collect();
    let mut skipped = Vec::new();
    let out = results
        .into_iter()
        .zip(images)
        .map(|(r, i)| match r {
            Ok(v) => Some(v),
            Err(reason) => {
                skipped.push(Skipped { path: i.name.clone(), reason });
                None
            }
        })
        .collect();
    (out, skipped)
}

/// Decodes every sample in parallel and maps the image through `f`; unreadable files are
/// skipped and listed.
pub fn decode_with<T: Send>(
    samples: &[Sample],
    progress: &(dyn Fn(usize) + Sync),
    f: impl Fn(RgbImage) -> T + Sync,
) -> (Vec<Option<T>>, Vec<Skipped>) {
    let done = AtomicUsize::new(0);
    let results: Vec<std::result::Result<T, String>> = samples
        .par_iter()
        .map(|s| {
            let r = decode_guarded(&s.path).map(&f);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            r
        })
        .collect();
    let mut skipped = Vec::new();
    let out = results
        .into_iter()
        .zip(samples)
        .map(|(r, s)| match r {
            Ok(v) => Some(v),
            Err(reason) => {
                skipped.push(Skipped { path: s.path.clone(), reason });
                None
            }
        })
        .collect();
    (out, skipped)
}

/// Decodes and preprocesses every sample in parallel. The result is in sample order: `None`
/// where the file could not be decoded, and each of those is listed in the returned
/// [`Skipped`] entries (in sample order). `progress` is called once per sample, from worker
/// threads, with the number of samples finished so far.
pub fn decode_all(
    samples: &[Sample],
    preprocess: &Preprocess,
    progress: &(dyn Fn(usize) + Sync),
) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>) {
    decode_with(samples, progress, |img| preprocess.apply(&img))
}

/// Like [`decode_all`] but keeps the decoded RGB images, for augmentation before
/// preprocessing.
pub fn decode_images(
    samples: &[Sample],
    progress: &(dyn Fn(usize) + Sync),
) -> (Vec<Option<RgbImage>>, Vec<Skipped>) {
    decode_with(samples, progress, |img| img)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A fresh, unique temporary folder, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "graft-test-{tag}-{}-{}-{nanos}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write_png(path: &Path, w: u32, h: u32, seed: u8) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x as u8).wrapping_mul(7) ^ seed, (y as u8).wrapping_mul(13), seed])
        });
        img.save_with_format(path, image::ImageFormat::Png).unwrap();
    }

    /// 3 classes: ant (4 images), bee (6), cat (5), plus noise to ignore.
    fn three_classes(root: &Path) {
        for i in 0..4 {
            write_png(&root.join(format!("ant/a{i}.png")), 10, 8, i);
        }
        for i in 0..6 {
            // Mixed-case extension and a nested folder.
            let name = if i == 0 { "bee/nested/b0.PNG".to_string() } else { format!("bee/b{i}.png") };
            write_png(&root.join(name), 12, 12, 50 + i);
        }
        for i in 0..5 {
            write_png(&root.join(format!("cat/c{i}.png")), 9, 11, 100 + i);
        }
        fs::write(root.join("cat/notes.txt"), "not an image").unwrap();
        fs::write(root.join("README.md"), "top-level file").unwrap();
        write_png(&root.join(".hidden/h.png"), 4, 4, 1);
        write_png(&root.join("cat/.h.png"), 4, 4, 1);
    }

    #[test]
    fn scan_orders_classes_and_files() {
        let tmp = TempDir::new("scan");
        three_classes(&tmp.0);
        let ds = ImageFolder::scan(&tmp.0).unwrap();
        assert_eq!(ds.classes, ["ant", "bee", "cat"]);
        assert_eq!(ds.class_counts(), [4, 6, 5]);
        assert_eq!(ds.samples.len(), 15);
        let names: Vec<String> = ds
            .samples
            .iter()
            .map(|s| s.path.strip_prefix(&tmp.0).unwrap().to_string_lossy().replace('\\', "/"))
            .collect();
        assert_eq!(names[..4], ["ant/a0.png", "ant/a1.png", "ant/a2.png", "ant/a3.png"]);
        assert_eq!(names[4..6], ["bee/b1.png", "bee/b2.png"]);
        assert_eq!(names[9], "bee/nested/b0.PNG");
        assert_eq!(names[10], "cat/c0.png");
        let labels: Vec<usize> = ds.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn scan_with_training_classes() {
        let tmp = TempDir::new("scanval");
        write_png(&tmp.0.join("cat/x.png"), 5, 5, 1);
        write_png(&tmp.0.join("ant/y.png"), 5, 5, 2);
        let classes: Vec<String> = ["ant", "bee", "cat"].iter().map(|s| s.to_string()).collect();
        let ds = ImageFolder::scan_with_classes(&tmp.0, &classes).unwrap();
        assert_eq!(ds.classes, classes);
        assert_eq!(ds.samples.iter().map(|s| s.label).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(ds.class_counts(), [1, 0, 1]);

        write_png(&tmp.0.join("dog/z.png"), 5, 5, 3);
        let err = ImageFolder::scan_with_classes(&tmp.0, &classes).unwrap_err().to_string();
        assert!(err.contains("unknown class folder `dog`"), "{err}");
        assert!(err.contains("dog"), "{err}");
    }

    #[test]
    fn scan_errors() {
        let tmp = TempDir::new("scanerr");
        let missing = tmp.0.join("nope");
        let err = ImageFolder::scan(&missing).unwrap_err();
        assert!(matches!(&err, GraftError::Data { path, .. } if path == &missing), "{err}");

        let file = tmp.0.join("file.png");
        write_png(&file, 3, 3, 0);
        let err = ImageFolder::scan(&file).unwrap_err().to_string();
        assert!(err.contains("not a folder"), "{err}");

        let empty = tmp.0.join("empty");
        fs::create_dir_all(&empty).unwrap();
        let err = ImageFolder::scan(&empty).unwrap_err().to_string();
        assert!(err.contains("no class sub-folders"), "{err}");

        let single = tmp.0.join("single");
        write_png(&single.join("cats/a.png"), 3, 3, 0);
        let err = ImageFolder::scan(&single).unwrap_err().to_string();
        assert!(err.contains("needs at least 2 classes, found 1: `cats`"), "{err}");

        let no_images = tmp.0.join("noimg");
        fs::create_dir_all(no_images.join("a")).unwrap();
        fs::create_dir_all(no_images.join("b")).unwrap();
        fs::write(no_images.join("a/readme.txt"), "x").unwrap();
        let err = ImageFolder::scan(&no_images).unwrap_err().to_string();
        assert!(err.contains("no image files"), "{err}");

        let one_empty = tmp.0.join("oneempty");
        write_png(&one_empty.join("a/1.png"), 3, 3, 0);
        fs::create_dir_all(one_empty.join("b")).unwrap();
        let err = ImageFolder::scan(&one_empty).unwrap_err();
        match &err {
            GraftError::Data { path, reason } => {
                assert_eq!(path, &one_empty.join("b"));
                assert!(reason.contains("class folder `b` holds no image files"), "{reason}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    fn labelled(counts: &[usize]) -> Vec<Sample> {
        counts
            .iter()
            .enumerate()
            .flat_map(|(label, &n)| {
                (0..n).map(move |i| Sample { path: PathBuf::from(format!("{label}/{i}.png")), label })
            })
            .collect()
    }

    #[test]
    fn split_is_stratified_and_deterministic() {
        let samples = labelled(&[100, 40, 2, 1, 7]);
        let (train, val) = stratified_split(&samples, 0.2, 42).unwrap();
        assert_eq!(train.len() + val.len(), samples.len());
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort();
        assert_eq!(all, (0..samples.len()).collect::<Vec<_>>());
        let mut val_counts = [0usize; 5];
        for &i in &val {
            val_counts[samples[i].label] += 1;
        }
        assert_eq!(val_counts, [20, 8, 1, 0, 1]);

        assert_eq!(stratified_split(&samples, 0.2, 42).unwrap(), (train.clone(), val.clone()));
        let (_, val2) = stratified_split(&samples, 0.2, 43).unwrap();
        assert_ne!(val, val2);

        for bad in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
            let err = stratified_split(&samples, bad, 1).unwrap_err();
            assert!(matches!(err, GraftError::InvalidSetting { .. }), "{err}");
        }
    }

    /// A folder with one class sub-folder too many is refused while listing, naming the limit.
    #[test]
    fn too_many_class_folders_are_refused() {
        let tmp = TempDir::new("many-classes");
        for i in 0..=crate::limits::MAX_CLASSES {
            fs::create_dir(tmp.0.join(format!("c{i}"))).unwrap();
        }
        let err = ImageFolder::scan(&tmp.0).unwrap_err().to_string();
        assert!(err.contains("more than 10000 class sub-folders (graft::limits::MAX_CLASSES)"), "{err}");
    }

    #[test]
    fn broken_files_are_skipped_and_named() {
        let tmp = TempDir::new("broken");
        three_classes(&tmp.0);
        let zero = tmp.0.join("ant/zero.png");
        fs::write(&zero, b"").unwrap();
        let text = tmp.0.join("bee/text.jpg");
        fs::write(&text, "this is not a jpeg, just some text\n").unwrap();
        let truncated = tmp.0.join("cat/truncated.png");
        write_png(&truncated, 64, 64, 9);
        let bytes = fs::read(&truncated).unwrap();
        fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

        let ds = ImageFolder::scan(&tmp.0).unwrap();
        assert_eq!(ds.samples.len(), 18);
        let calls = AtomicUsize::new(0);
        let max_seen = AtomicUsize::new(0);
        let progress = |n: usize| {
            calls.fetch_add(1, Ordering::Relaxed);
            max_seen.fetch_max(n, Ordering::Relaxed);
        };
        let pre = Preprocess::centre_square(8, [0.0; 3], [1.0; 3]);
        let (out, skipped) = decode_all(&ds.samples, &pre, &progress);
        assert_eq!(calls.load(Ordering::Relaxed), 18);
        assert_eq!(max_seen.load(Ordering::Relaxed), 18);
        assert_eq!(out.len(), 18);
        assert_eq!(out.iter().filter(|o| o.is_none()).count(), 3);
        let mut paths: Vec<&PathBuf> = skipped.iter().map(|s| &s.path).collect();
        paths.sort();
        let mut expected = vec![&zero, &text, &truncated];
        expected.sort();
        assert_eq!(paths, expected);
        for s in &skipped {
            assert!(!s.reason.is_empty());
            let i = ds.samples.iter().position(|x| x.path == s.path).unwrap();
            assert!(out[i].is_none());
        }
        for (o, s) in out.iter().zip(&ds.samples) {
            if let Some(v) = o {
                assert_eq!(v.len(), 3 * 8 * 8, "{}", s.path.display());
            }
        }
        let json = serde_json::to_string(&skipped[0]).unwrap();
        assert!(json.contains("\"reason\""));

        let (imgs, skipped2) = decode_images(&ds.samples, &|_| {});
        assert_eq!(skipped2, skipped);
        let first = imgs[0].as_ref().unwrap();
        assert_eq!(first.dimensions(), (10, 8));
        assert_eq!(first.get_pixel(3, 2).0, [21, 26, 0]);
    }

    #[test]
    fn images_in_memory_decode_as_their_files_do_and_bad_ones_are_named() {
        let tmp = TempDir::new("bytes");
        three_classes(&tmp.0);
        let ds = ImageFolder::scan(&tmp.0).unwrap();
        let pre = Preprocess::centre_square(8, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]);
        let (from_files, none_skipped) = decode_all(&ds.samples, &pre, &|_| {});
        assert!(none_skipped.is_empty());
        let mut images: Vec<ImageBytes> = ds.samples.iter().map(|s| ImageBytes { name: s.path.clone(), bytes: fs::read(&s.path).unwrap() }).collect();
        // Not an image, and a PNG cut after its header: skipped under their names, in order.
        let cut = images[0].bytes[..40].to_vec();
        images.insert(1, ImageBytes { name: "upload: notes".into(), bytes: b"plain text".to_vec() });
        images.push(ImageBytes { name: "upload: cut.png".into(), bytes: cut });
        let (from_bytes, skipped) = decode_bytes_with(&images, |img| pre.apply(&img));
        assert_eq!(from_bytes.len(), ds.samples.len() + 2);
        assert!(from_bytes[1].is_none() && from_bytes.last().unwrap().is_none());
        let names: Vec<&Path> = skipped.iter().map(|s| s.path.as_path()).collect();
        assert_eq!(names, [Path::new("upload: notes"), Path::new("upload: cut.png")]);
        assert!(skipped[0].reason.contains("not a recognised image format"), "{}", skipped[0].reason);
        let decoded: Vec<Vec<f32>> = from_bytes.into_iter().flatten().collect();
        let files: Vec<Vec<f32>> = from_files.into_iter().flatten().collect();
        assert_eq!(decoded, files);
    }

    #[test]
    fn an_image_in_memory_over_the_pixel_limit_is_refused_by_its_header() {
        // A 64-byte PNG whose header claims 100000×100000 pixels: refused unread.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8; 4], data: &[u8]| {
            png.extend((data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend(data);
            png.extend(&body);
            png.extend(crc32fast::hash(&body).to_be_bytes());
        };
        let mut ihdr = 100_000u32.to_be_bytes().to_vec();
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(b"IEND", &[]);
        let (out, skipped) = decode_bytes_with(&[ImageBytes { name: "bomb.png".into(), bytes: png }], |img| img.len());
        assert_eq!(out, [None]);
        assert_eq!(skipped[0].path, Path::new("bomb.png"));
        assert!(skipped[0].reason.contains("100000×100000 is 10000000000 pixels, over the limit"), "{}", skipped[0].reason);
    }
}
