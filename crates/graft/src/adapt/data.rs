//! Domains for adaptation: image folders or the digit sets named by shorthand (`mnist:train`,
//! `mnist:test`, `usps:train`, `usps:test`, read from `--data-root`, by default
//! `$GRAFT_HOME/data` where `graft data import` keeps them), turned into the rows a network takes.
//!
//! * LeNet: grey, the largest centred square resized to 28×28 (PIL-exact bilinear; USPS's 16×16
//!   grey levels are first rounded to bytes, as when they are stored as images), scaled to [0, 1]
//!   then (x − 0.5) / 0.5: 784 values per image.
//! * A zoo model: the model's own preprocessing (grey images replicated to RGB), then the frozen
//!   trunk's pooled features, computed once per image into the feature store under
//!   `$GRAFT_HOME/cache/features` (the namespace `graft fit` uses for the same model, weights and
//!   preprocessing) and read back per batch: a domain holds keys, not features.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use image::{GrayImage, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::model::LENET_SIDE;
use crate::cache::{FeatureStore, Key, Namespace, StoreDtype};
use crate::data::fetch;
use crate::data::folder::{is_image_file, ImageFolder, Sample, Skipped};
use crate::data::stream::index_images;
use crate::data::idx::{self, DIGIT_CLASSES};
use crate::data::image::{resize_bilinear, Preprocess};
use crate::data::usps::{self, USPS_SIDE};
use crate::report::Reporter;
use crate::zoo::Pretrained;
use crate::{GraftError, Result};

/// The digit sets graft reads directly from a data root (see [`crate::data::fetch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digits {
    /// MNIST: `train` is the 10,000-digit subset in `digits/mnist/train-10k-*`, `test` the official
    /// 10,000 (`t10k-*`).
    Mnist,
    /// USPS (`digits/usps/usps.h5`): `train` 7,291, `test` 2,007.
    Usps,
}

/// Where a domain's images come from (`--source`, `--target`, `--target-test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainSpec {
    Digits { set: Digits, train: bool },
    Folder(PathBuf),
}

impl DomainSpec {
    /// `mnist:train`, `mnist:test`, `usps:train`, `usps:test`, or a folder path. A value with a
    /// colon whose first part names a digit set must be one of those four.
    pub fn parse(setting: &str, value: &str) -> Result<Self> {
        if let Some((set, split)) = value.split_once(':') {
            let set = match set {
                "mnist" => Some(Digits::Mnist),
                "usps" => Some(Digits::Usps),
                _ => None,
            };
            if let Some(set) = set {
                let train = match split {
                    "train" => true,
                    "test" => false,
                    _ => return Err(GraftError::setting(setting, value, "expected mnist:train, mnist:test, usps:train, usps:test or a folder")),
                };
                return Ok(DomainSpec::Digits { set, train });
            }
        }
        if value.is_empty() {
            return Err(GraftError::setting(setting, value, "expected a dataset (mnist:train, usps:test, …) or a folder"));
        }
        Ok(DomainSpec::Folder(PathBuf::from(value)))
    }

    pub fn name(&self) -> String {
        match self {
            DomainSpec::Digits { set, train } => format!("{}:{}", if *set == Digits::Mnist { "mnist" } else { "usps" }, if *train { "train" } else { "test" }),
            DomainSpec::Folder(p) => p.display().to_string(),
        }
    }
}

/// How images become network input rows (stored in the run's `model.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum InputSpec {
    /// Grey `side`×`side`, (x/255 − mean) / std.
    Grey { side: u32, mean: f32, std: f32 },
    /// A zoo model's preprocessing; the rows are then its trunk's pooled features.
    Zoo { model: String, preprocess: Preprocess },
    /// A text encoder's embeddings (see `adapt::text`); `preprocess` is its preprocessing id.
    /// Text domains never become image rows: the image methods below give nothing for it.
    Text { model: String, preprocess: String },
}

impl InputSpec {
    pub fn lenet() -> Self {
        InputSpec::Grey { side: LENET_SIDE as u32, mean: 0.5, std: 0.5 }
    }

    /// Width of one preprocessed image (before any trunk).
    pub fn image_width(&self) -> usize {
        match self {
            InputSpec::Grey { side, .. } => (*side as usize).pow(2),
            InputSpec::Zoo { preprocess, .. } => 3 * (preprocess.size as usize).pow(2),
            InputSpec::Text { .. } => 0,
        }
    }

    /// A decoded RGB image → one row.
    pub fn rgb_row(&self, img: &RgbImage) -> Vec<f32> {
        match self {
            InputSpec::Grey { side, mean, std } => {
                let grey = image::DynamicImage::ImageRgb8(img.clone()).to_luma8();
                grey_row(&grey, *side, *mean, *std)
            }
            InputSpec::Zoo { preprocess, .. } => preprocess.apply(img),
            InputSpec::Text { .. } => Vec::new(),
        }
    }

    /// A row of `Grey` input back to its 8-bit image (x·std + mean, ×255, rounded); `None` for
    /// the other inputs, whose rows are not images.
    pub fn grey_image(&self, row: &[f32]) -> Option<GrayImage> {
        let InputSpec::Grey { side, mean, std } = self else { return None };
        Some(GrayImage::from_fn(*side, *side, |c, r| {
            let v = row[(r * side + c) as usize] * std + mean;
            image::Luma([(v * 255.0).round().clamp(0.0, 255.0) as u8])
        }))
    }

    /// A grey image → one row.
    pub fn grey_row(&self, img: &GrayImage) -> Vec<f32> {
        match self {
            InputSpec::Grey { side, mean, std } => grey_row(img, *side, *mean, *std),
            InputSpec::Zoo { preprocess, .. } => preprocess.apply(&image::DynamicImage::ImageLuma8(img.clone()).to_rgb8()),
            InputSpec::Text { .. } => Vec::new(),
        }
    }
}

/// Centre square, PIL bilinear resize to `side`, (x/255 − mean) / std.
fn grey_row(img: &GrayImage, side: u32, mean: f32, std: f32) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let s = w.min(h);
    let square = image::imageops::crop_imm(img, (w - s) / 2, (h - s) / 2, s, s).to_image();
    let resized = if s == side {
        square
    } else {
        // PIL-exact bilinear works on RGB; grey in, channel 0 out.
        let rgb = image::DynamicImage::ImageLuma8(square).to_rgb8();
        let out = resize_bilinear(&rgb, side, side);
        GrayImage::from_fn(side, side, |x, y| image::Luma([out.get_pixel(x, y)[0]]))
    };
    resized.as_raw().iter().map(|&v| (v as f32 / 255.0 - mean) / std).collect()
}

/// One domain, ready for a network: `len()` rows of `width` values, made per batch from
/// where the images are ([`Domain::rows`]): image files are decoded when a batch needs them,
/// digit sets stay as their bytes, and rows that cost a network pass to make (a zoo trunk's
/// features, a text encoder's embeddings) are computed once into the feature store and read
/// from it per batch.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub width: usize,
    /// Labels (indices into the source classes); empty for unlabelled data.
    pub labels: Vec<usize>,
    /// Item of `source` behind each row (a subset picks some).
    items: Arc<Vec<usize>>,
    source: Arc<RowSource>,
}

/// Where a domain's rows come from.
#[derive(Debug)]
enum RowSource {
    /// Rows in the feature store (trunk features, text embeddings): item `i` is `keys[i]`.
    Stored { store: FeatureStore, keys: Vec<Key> },
    /// Grey `side`×`side` byte images (a digit set), made into rows by `input`.
    Grey { side: u32, pixels: Vec<u8>, input: InputSpec },
    /// Image files, decoded and made into rows by `input`.
    Files { paths: Vec<PathBuf>, input: InputSpec },
}

impl Domain {
    /// A domain of rows in `store` (flushed), one per key, `width` wide.
    pub fn from_store(name: String, store: FeatureStore, keys: Vec<Key>, width: usize, labels: Vec<usize>) -> Domain {
        let n = keys.len();
        Domain { name, width, labels, items: Arc::new((0..n).collect()), source: Arc::new(RowSource::Stored { store, keys }) }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows at `indices` (labels too when present); shares the images, copies nothing.
    pub fn subset(&self, indices: &[usize]) -> Domain {
        let labels = if self.labels.is_empty() { Vec::new() } else { indices.iter().map(|&i| self.labels[i]).collect() };
        Domain { name: self.name.clone(), width: self.width, labels, items: Arc::new(indices.iter().map(|&i| self.items[i]).collect()), source: self.source.clone() }
    }

    /// Rows `indices`, concatenated (`indices.len() × width` values). Image files are decoded
    /// here, in parallel; one that no longer decodes (changed since it was read) is an error
    /// naming it.
    pub fn rows(&self, indices: &[usize]) -> Result<Vec<f32>> {
        let w = self.width;
        match &*self.source {
            RowSource::Stored { store, keys } => {
                let items: Vec<usize> = indices.iter().map(|&i| self.items[i]).collect();
                let mut out = Vec::with_capacity(indices.len() * w);
                store.read_rows(keys, &items, &format!("a row of {}", self.name), &mut out)?;
                Ok(out)
            }
            RowSource::Grey { side, pixels, input } => {
                let plane = (*side as usize).pow(2);
                let rows: Vec<Vec<f32>> = indices
                    .par_iter()
                    .map(|&i| {
                        let item = self.items[i];
                        let img = GrayImage::from_raw(*side, *side, pixels[item * plane..(item + 1) * plane].to_vec()).expect("sizes checked");
                        input.grey_row(&img)
                    })
                    .collect();
                Ok(rows.concat())
            }
            RowSource::Files { paths, input } => {
                let rows: Vec<Vec<f32>> = indices
                    .par_iter()
                    .map(|&i| crate::data::image::decode(&paths[self.items[i]]).map(|img| input.rgb_row(&img)))
                    .collect::<Result<_>>()?;
                Ok(rows.concat())
            }
        }
    }

    /// Every row, in order.
    pub fn all_rows(&self) -> Result<Vec<f32>> {
        self.rows(&(0..self.len()).collect::<Vec<_>>())
    }

    /// Rows `indices` as a `[n, width]` tensor.
    pub fn tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor<2>> {
        Ok(Tensor::from_data(TensorData::new(self.rows(indices)?, [indices.len(), self.width]), device))
    }
}

/// Images of a domain before preprocessing.
enum Items {
    /// Grey byte images, `side`×`side`, with labels.
    Grey { side: u32, pixels: Vec<u8>, labels: Vec<usize> },
    /// Image files; `labels` false for an unlabelled (flat or ignored) folder.
    Files { samples: Vec<Sample>, labelled: bool },
}

/// Reads a domain's images: `classes` names the source classes (a labelled folder must use
/// them; `None` for the source itself, whose class list is returned); `labelled` says whether
/// labels are needed (target training data is read without them).
struct Raw {
    classes: Vec<String>,
    items: Items,
}

fn digits_classes() -> Vec<String> {
    DIGIT_CLASSES.iter().map(|s| s.to_string()).collect()
}

fn read_raw(spec: &DomainSpec, setting: &str, data_root: &Path, classes: Option<&[String]>, labelled: bool) -> Result<Raw> {
    match spec {
        DomainSpec::Digits { set, train } => {
            let digit_classes = digits_classes();
            if let Some(c) = classes {
                if labelled && c != digit_classes.as_slice() {
                    return Err(GraftError::setting(setting, &spec.name(), format!("the digit classes 0–9 differ from the source classes ({})", c.join(", "))));
                }
            }
            let (side, pixels, labels) = match set {
                Digits::Mnist => {
                    let prefix = if *train { "train-10k" } else { "t10k" };
                    let base = fetch::require(&fetch::MNIST, data_root)?;
                    let (rows, cols, pixels) = idx::read_idx_images(base.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
                    let labels = idx::read_idx_labels(base.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
                    if rows != cols || labels.len() * rows * cols != pixels.len() {
                        return Err(GraftError::Data { path: base, reason: format!("{} labels for {} pixels of {rows}×{cols} images", labels.len(), pixels.len()) });
                    }
                    (rows as u32, pixels, labels)
                }
                Digits::Usps => {
                    let dir = fetch::require(&fetch::USPS, data_root)?;
                    let u = usps::read_usps(&dir.join("usps.h5"), if *train { "train" } else { "test" })?;
                    (USPS_SIDE as u32, u.pixels_u8(), u.labels)
                }
            };
            if let Some(&bad) = labels.iter().find(|&&l| l >= 10) {
                return Err(GraftError::Data { path: data_root.to_path_buf(), reason: format!("{}: label {bad} is not a digit", spec.name()) });
            }
            Ok(Raw { classes: digit_classes, items: Items::Grey { side, pixels, labels: labels.into_iter().map(usize::from).collect() } })
        }
        DomainSpec::Folder(dir) => {
            if labelled {
                let folder = match classes {
                    None => ImageFolder::scan(dir)?,
                    Some(c) => ImageFolder::scan_with_classes(dir, c)?,
                };
                return Ok(Raw { classes: folder.classes, items: Items::Files { samples: folder.samples, labelled: true } });
            }
            // Unlabelled: class sub-folders (names ignored) or image files directly in `dir`.
            let samples = match ImageFolder::scan(dir) {
                Ok(folder) => folder.samples,
                Err(scan_err) => {
                    let entries = std::fs::read_dir(dir).map_err(|e| GraftError::io(dir, e))?;
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && is_image_file(p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                        .collect();
                    files.sort();
                    if files.is_empty() {
                        return Err(scan_err);
                    }
                    files.into_iter().map(|path| Sample { path, label: 0 }).collect()
                }
            };
            Ok(Raw { classes: classes.map(|c| c.to_vec()).unwrap_or_default(), items: Items::Files { samples, labelled: false } })
        }
    }
}

/// Turns images into network rows: preprocessing, then (zoo) the frozen trunk's features.
pub struct Featurizer<'a> {
    pub input: InputSpec,
    /// The frozen trunk for a zoo backbone (run in inference mode).
    pub trunk: Option<&'a Pretrained>,
    pub device: Device,
    /// Width of the trunk's pooled features (0 without a trunk).
    feature_width: usize,
    /// graft's home: the trunk's features go to its feature store.
    home: PathBuf,
}

/// Rows computed per chunk (bounds memory for large zoo inputs).
const CHUNK: usize = 256;

impl<'a> Featurizer<'a> {
    pub fn new(input: InputSpec, trunk: Option<&'a Pretrained>, home: &Path, device: &Device) -> Self {
        let feature_width = trunk
            .map(|t| {
                let size = match &input {
                    InputSpec::Zoo { preprocess, .. } => preprocess.size as usize,
                    InputSpec::Grey { side, .. } => *side as usize,
                    InputSpec::Text { .. } => 0,
                };
                let probe = burn::tensor::Tensor::<4>::zeros([1, 3, size, size], device);
                t.net.features(probe).dims()[1]
            })
            .unwrap_or(0);
        Featurizer { input, trunk, device: device.clone(), feature_width, home: home.to_path_buf() }
    }

    /// Width of the rows the networks see.
    pub fn width(&self) -> usize {
        match self.trunk {
            Some(_) => self.feature_width,
            None => self.input.image_width(),
        }
    }

    /// Preprocessed image rows → network rows (runs the trunk for a zoo backbone).
    pub fn rows(&self, rows: Vec<Vec<f32>>) -> Result<Vec<f32>> {
        match self.trunk {
            None => Ok(rows.into_iter().flatten().collect()),
            Some(t) => {
                let InputSpec::Zoo { preprocess, .. } = &self.input else { unreachable!("a trunk always comes with zoo preprocessing") };
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let x = crate::data::image::batch(&rows, preprocess.size, &self.device);
                t.net.features(x).into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: PathBuf::new(), reason: format!("trunk features: {e:?}") })
            }
        }
    }

    /// Loads a domain. Returns it, its class list and the files that could not be read.
    /// Without a trunk, nothing is decoded to keep: files are checked (decoded once, in
    /// parallel, then dropped) and their rows made per batch later; with a trunk, its
    /// features are computed here, a chunk at a time.
    pub fn load(&self, spec: &DomainSpec, setting: &str, data_root: &Path, classes: Option<&[String]>, labelled: bool, reporter: &dyn Reporter) -> Result<(Domain, Vec<String>, Vec<Skipped>)> {
        let raw = read_raw(spec, setting, data_root, classes, labelled)?;
        let name = spec.name();
        let mut skipped = Vec::new();
        let domain = match raw.items {
            Items::Grey { side, pixels, labels } => {
                let n = labels.len();
                let labels = if labelled { labels } else { Vec::new() };
                let grey = Domain {
                    name: name.clone(),
                    width: self.input.image_width(),
                    labels,
                    items: Arc::new((0..n).collect()),
                    source: Arc::new(RowSource::Grey { side, pixels, input: self.input.clone() }),
                };
                match self.trunk {
                    None => grey,
                    Some(t) => {
                        // A digit has no file: its key is the sha256 of its side and bytes.
                        let RowSource::Grey { pixels, .. } = &*grey.source else { unreachable!("made above") };
                        let plane = (side as usize).pow(2);
                        let keys = (0..n).map(|i| grey_key(side, &pixels[i * plane..(i + 1) * plane])).collect();
                        self.through_trunk(t, &grey, keys, &name, reporter)?
                    }
                }
            }
            Items::Files { samples, labelled: has_labels } => {
                reporter.start(&format!("reading {name}"), Some(samples.len() as u64));
                let (hashes, bad) = index_images(&samples, &|done| reporter.progress(done as u64));
                reporter.finish();
                skipped.extend(bad);
                let good: Vec<&Sample> = hashes.iter().zip(&samples).filter(|(h, _)| h.is_some()).map(|(_, s)| s).collect();
                let keys: Vec<Key> = hashes.iter().flatten().map(|h| (*h, 0)).collect();
                let labels = if has_labels && labelled { good.iter().map(|s| s.label).collect() } else { Vec::new() };
                let files = Domain {
                    name: name.clone(),
                    width: self.input.image_width(),
                    labels,
                    items: Arc::new((0..good.len()).collect()),
                    source: Arc::new(RowSource::Files { paths: good.iter().map(|s| s.path.clone()).collect(), input: self.input.clone() }),
                };
                match self.trunk {
                    None => files,
                    Some(t) => self.through_trunk(t, &files, keys, &name, reporter)?,
                }
            }
        };
        if domain.is_empty() {
            let path = match spec {
                DomainSpec::Folder(p) => p.clone(),
                _ => data_root.to_path_buf(),
            };
            return Err(GraftError::Data { path, reason: format!("no readable images (the {} domain)", crate::error::setting_name(setting)) });
        }
        Ok((domain, raw.classes, skipped))
    }

    /// The trunk's features of every image of `images` (keyed by `keys`) in the feature store:
    /// those missing are computed a chunk at a time and written; the domain reads them back per
    /// batch.
    fn through_trunk(&self, trunk: &Pretrained, images: &Domain, keys: Vec<Key>, name: &str, reporter: &dyn Reporter) -> Result<Domain> {
        let InputSpec::Zoo { model, preprocess } = &self.input else { unreachable!("a trunk always comes with zoo preprocessing") };
        let namespace = Namespace {
            model: model.clone(),
            weights_sha256: trunk.weights_sha256.clone(),
            cut: crate::zoo::backbone::pooled_cut(crate::train::model::HeadPool::Avg),
            preprocess: serde_json::to_string(preprocess).expect("preprocess serializes"),
            augment: "none".into(),
            dtype: StoreDtype::F32,
        };
        let mut store = FeatureStore::open(&self.home.join("cache").join("features"), namespace)?;
        for (path, reason) in &store.repaired {
            reporter.message(&format!("feature cache: {} was damaged ({reason}); rebuilding its entries", path.display()));
        }
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<usize> = (0..images.len()).filter(|&i| !store.contains(&keys[i]) && seen.insert(keys[i])).collect();
        if !missing.is_empty() {
            reporter.start(&format!("preparing {name}"), Some(missing.len() as u64));
            let w = images.width;
            for (done, chunk) in missing.chunks(CHUNK).enumerate() {
                let rows = images.rows(chunk)?;
                let features = self.rows(rows.chunks(w).map(<[f32]>::to_vec).collect())?;
                let d = self.width();
                for (k, &i) in chunk.iter().enumerate() {
                    store.put(keys[i], features[k * d..(k + 1) * d].to_vec())?;
                }
                reporter.progress(((done + 1) * CHUNK).min(missing.len()) as u64);
            }
            reporter.finish();
        }
        store.flush()?;
        Ok(Domain::from_store(name.to_string(), store, keys, self.width(), images.labels.clone()))
    }
}

/// The store key of a grey digit image (no file behind it): sha256 of its side and bytes.
fn grey_key(side: u32, pixels: &[u8]) -> Key {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"grey");
    h.update(side.to_le_bytes());
    h.update(pixels);
    (h.finalize().into(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shorthands_and_folders() {
        assert_eq!(DomainSpec::parse("source", "mnist:train").unwrap(), DomainSpec::Digits { set: Digits::Mnist, train: true });
        assert_eq!(DomainSpec::parse("source", "usps:test").unwrap(), DomainSpec::Digits { set: Digits::Usps, train: false });
        assert_eq!(DomainSpec::parse("source", "data/x").unwrap(), DomainSpec::Folder("data/x".into()));
        assert_eq!(DomainSpec::parse("source", "C:x").unwrap(), DomainSpec::Folder("C:x".into()));
        let e = DomainSpec::parse("target", "usps:val").unwrap_err().to_string();
        assert!(e.contains("target") && e.contains("usps:val"), "{e}");
        assert!(DomainSpec::parse("target", "").is_err());
    }

    #[test]
    fn grey_rows_go_back_to_their_images() {
        let img = GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * 9 + y * 3) as u8]));
        let spec = InputSpec::lenet();
        let row = spec.grey_row(&img);
        assert_eq!(spec.grey_image(&row).unwrap(), img);
        let zoo = InputSpec::Text { model: "minilm-l6".into(), preprocess: String::new() };
        assert!(zoo.grey_image(&row).is_none());
    }

    #[test]
    fn grey_rows_are_normalised_and_resized() {
        let input = InputSpec::lenet();
        // A 28×28 image keeps its pixels: 0 → −1, 255 → 1.
        let img = GrayImage::from_fn(28, 28, |x, _| image::Luma([if x < 14 { 0 } else { 255 }]));
        let row = input.grey_row(&img);
        assert_eq!(row.len(), 784);
        assert_eq!((row[0], row[27]), (-1.0, 1.0));
        // 16×16 → 28×28, a flat image stays flat.
        let flat = GrayImage::from_pixel(16, 16, image::Luma([51]));
        let row = input.grey_row(&flat);
        assert_eq!(row.len(), 784);
        assert!(row.iter().all(|&v| (v - (51.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6));
        // RGB input goes through luma.
        let rgb = RgbImage::from_pixel(28, 28, image::Rgb([200, 200, 200]));
        assert!(input.rgb_row(&rgb).iter().all(|&v| (v - (200.0 / 255.0 - 0.5) / 0.5).abs() < 1e-6));
    }
}
