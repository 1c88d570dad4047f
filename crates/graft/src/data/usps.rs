//! The USPS handwritten digits as distributed in `usps.h5` (the Kaggle/`bistaumanga` layout):
//! `train/data` 7291×256 and `test/data` 2007×256 f32 grey levels in [0, 1] (16×16 images,
//! row-major), `train/target` and `test/target` the digit labels 0–9.
//!
//! Read with `hdf5-pure` (pure Rust; no libhdf5). Every shape, value and label is checked before
//! it is used: a file that is not this layout gives a [`GraftError::Data`] naming it.

use std::path::Path;

use super::idx::{self, class_names, DIGIT_CLASSES};
use crate::{GraftError, Result};

/// Side of a USPS image in pixels.
pub const USPS_SIDE: usize = 16;

/// One split of USPS.
#[derive(Debug, Clone, PartialEq)]
pub struct Usps {
    /// `labels.len()` images of 16×16 grey levels in [0, 1], row-major.
    pub pixels: Vec<f32>,
    /// Digit labels 0–9.
    pub labels: Vec<u8>,
}

impl Usps {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Grey levels as bytes (round(x·255)), the form the digits are usually stored in as images.
    pub fn pixels_u8(&self) -> Vec<u8> {
        self.pixels.iter().map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect()
    }
}

fn data_err(path: &Path, reason: impl Into<String>) -> GraftError {
    GraftError::Data { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads split `train` or `test` of a `usps.h5` file.
pub fn read_usps(path: &Path, split: &str) -> Result<Usps> {
    if split != "train" && split != "test" {
        return Err(GraftError::setting("split", split, "USPS has the splits train and test"));
    }
    let bytes = crate::fsutil::read_regular(path, MAX_READ_BYTES as u64)?;
    usps_from_bytes(path, bytes, split)
}

/// [`read_usps`] for a file already in memory; `path` only names it in errors.
pub fn usps_from_bytes(path: &Path, bytes: Vec<u8>, split: &str) -> Result<Usps> {
    if split != "train" && split != "test" {
        return Err(GraftError::setting("split", split, "USPS has the splits train and test"));
    }
    // The HDF5 parser is third-party code reading untrusted bytes: a panic there is a bad file,
    // not a crash.
    let parsed = std::panic::catch_unwind(|| read_split(bytes, split));
    let (pixels, shape, labels) = match parsed {
        Ok(r) => r.map_err(|e| data_err(path, format!("not a readable USPS HDF5 file: {e}")))?,
        Err(_) => return Err(data_err(path, "the HDF5 reader failed on this file (corrupt?)")),
    };
    let plane = USPS_SIDE * USPS_SIDE;
    let shape: Vec<usize> = shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    if shape.len() != 2 || shape[1] != plane {
        return Err(data_err(path, format!("{split}/data has shape {shape:?}, expected [n, {plane}]")));
    }
    if shape[0] != labels.len() || pixels.len() != shape[0] * plane {
        return Err(data_err(path, format!("{split}/data holds {} images but {split}/target {} labels", shape[0], labels.len())));
    }
    if let Some(v) = pixels.iter().find(|v| !(v.is_finite() && (-1e-3..=1.0 + 1e-3).contains(*v))) {
        return Err(data_err(path, format!("{split}/data holds the value {v}, outside [0, 1]")));
    }
    let labels = labels
        .iter()
        .map(|&l| u8::try_from(l).ok().filter(|&l| l < 10).ok_or_else(|| data_err(path, format!("{split}/target holds the label {l}, not a digit 0–9"))))
        .collect::<Result<Vec<u8>>>()?;
    let pixels = pixels.into_iter().map(|v| v.clamp(0.0, 1.0)).collect();
    Ok(Usps { pixels, labels })
}

type Split = (Vec<f32>, Vec<u64>, Vec<i64>);

/// Largest number of bytes read from the file for one dataset (USPS train is 7.5 MB).
const MAX_READ_BYTES: usize = 256 << 20;

fn read_split(bytes: Vec<u8>, split: &str) -> std::result::Result<Split, String> {
    use hdf5_reader::{Datatype, Hdf5File, OpenOptions};
    // Extents come from the file: check them before allocating. Deflate expands at most
    // ~1032:1, so no dataset can honestly decode to more than that over the whole file.
    let max_bytes = (bytes.len() as u64).saturating_mul(1032).saturating_add(1 << 20).min(MAX_READ_BYTES as u64);
    let budget = |name: &str, ds: &hdf5_reader::Dataset| -> std::result::Result<usize, String> {
        let n = ds.num_elements().map_err(|e| format!("{name}: {e}"))?;
        let size = match ds.dtype() {
            Datatype::FloatingPoint { size, .. } | Datatype::FixedPoint { size, .. } => *size as u64,
            _ => 1,
        };
        if n.saturating_mul(size) > max_bytes {
            return Err(format!("{name}: {n} elements is impossible for a file of this size"));
        }
        usize::try_from(n).map_err(|_| format!("{name}: {n} elements"))
    };
    let file = Hdf5File::from_vec_with_options(bytes, OpenOptions::default().with_max_read_bytes(MAX_READ_BYTES)).map_err(|e| e.to_string())?;
    let name = format!("{split}/data");
    let data = file.dataset(&name).map_err(|e| format!("{name}: {e}"))?;
    let shape: Vec<u64> = data.shape().to_vec();
    let n = budget(&name, &data)?;
    let pixels = match data.dtype() {
        Datatype::FloatingPoint { size: 4, .. } => {
            let mut v = vec![0f32; n];
            data.read_into(&mut v).map_err(|e| format!("{name}: {e}"))?;
            v
        }
        Datatype::FloatingPoint { size: 8, .. } => {
            let mut v = vec![0f64; n];
            data.read_into(&mut v).map_err(|e| format!("{name}: {e}"))?;
            v.into_iter().map(|x| x as f32).collect()
        }
        other => return Err(format!("{name} holds {other:?}, expected 32- or 64-bit floats")),
    };
    let name = format!("{split}/target");
    let target = file.dataset(&name).map_err(|e| format!("{name}: {e}"))?;
    let n = budget(&name, &target)?;
    let err = |e: hdf5_reader::error::Error| format!("{name}: {e}");
    let labels: Vec<i64> = match target.dtype() {
        Datatype::FixedPoint { size: 1, signed: false, .. } => read_as::<u8>(&target, n).map_err(err)?.into_iter().map(i64::from).collect(),
        Datatype::FixedPoint { size: 4, signed: true, .. } => read_as::<i32>(&target, n).map_err(err)?.into_iter().map(i64::from).collect(),
        Datatype::FixedPoint { size: 4, signed: false, .. } => read_as::<u32>(&target, n).map_err(err)?.into_iter().map(i64::from).collect(),
        Datatype::FixedPoint { size: 8, signed: true, .. } => read_as::<i64>(&target, n).map_err(err)?,
        Datatype::FixedPoint { size: 8, signed: false, .. } => read_as::<u64>(&target, n).map_err(err)?.into_iter().map(|v| i64::try_from(v).unwrap_or(-1)).collect(),
        Datatype::FloatingPoint { size: 8, .. } => read_as::<f64>(&target, n).map_err(err)?.into_iter().map(|v| if v.fract() == 0.0 { v as i64 } else { -1 }).collect(),
        Datatype::FloatingPoint { size: 4, .. } => read_as::<f32>(&target, n).map_err(err)?.into_iter().map(|v| if v.fract() == 0.0 { v as i64 } else { -1 }).collect(),
        other => return Err(format!("{name} holds {other:?}, expected integer labels")),
    };
    Ok((pixels, shape, labels))
}

fn read_as<T: hdf5_reader::H5Type + Default + Clone>(ds: &hdf5_reader::Dataset, n: usize) -> hdf5_reader::error::Result<Vec<T>> {
    let mut v = vec![T::default(); n];
    ds.read_into(&mut v)?;
    Ok(v)
}

/// Writes split `split` of `usps.h5` (the images at `indices`, all when `None`) as grey 16×16
/// PNGs `out/<digit>/<index:05>.png`, the image-folder layout every graft command reads.
/// Returns the number of files written.
pub fn export_image_folder(h5: &Path, split: &str, indices: Option<&[usize]>, out: &Path) -> Result<usize> {
    let usps = read_usps(h5, split)?;
    let all: Vec<usize>;
    let indices = match indices {
        Some(i) => i,
        None => {
            all = (0..usps.len()).collect();
            &all
        }
    };
    idx::export_image_folder(&usps.pixels_u8(), USPS_SIDE, USPS_SIDE, &usps.labels, &class_names(&DIGIT_CLASSES), indices, out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::folder::tests::TempDir;
    use crate::data::folder::ImageFolder;
    use std::path::PathBuf;

    /// `../shared/data/digits/usps/usps.h5` (or under `$GRAFT_SHARED`); missing data fails loudly.
    pub(crate) fn usps_h5() -> PathBuf {
        let dir = std::env::var_os("GRAFT_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
        let path = dir.join("data/digits/usps/usps.h5");
        assert!(path.is_file(), "{} is missing: set GRAFT_SHARED to the folder holding data/ (these tests read the real USPS file and must not be skipped)", path.display());
        path
    }

    #[test]
    fn reads_both_splits_of_the_real_file() {
        let path = usps_h5();
        let train = read_usps(&path, "train").unwrap();
        let test = read_usps(&path, "test").unwrap();
        assert_eq!(train.len(), 7291);
        assert_eq!(test.len(), 2007);
        assert_eq!(train.pixels.len(), 7291 * 256);
        // Known first labels of the file, and every digit present.
        assert_eq!(&train.labels[..5], &[6, 5, 4, 7, 3]);
        assert_eq!(&test.labels[..5], &[9, 6, 3, 6, 6]);
        let mut counts = [0usize; 10];
        train.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert!(counts.iter().all(|&c| c > 500), "{counts:?}");
        // Real images: ink in [0, 1], mostly background, none blank.
        for img in train.pixels.chunks(256).take(200) {
            let ink = img.iter().filter(|&&v| v > 0.5).count();
            assert!((10..200).contains(&ink), "an image with {ink} inked pixels");
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let dir = TempDir::new("usps-bad");
        let junk = dir.0.join("junk.h5");
        std::fs::write(&junk, b"\x89HDF\r\n\x1a\nthis is not really hdf5").unwrap();
        let e = read_usps(&junk, "train").unwrap_err().to_string();
        assert!(e.contains("junk.h5"), "{e}");
        let e = read_usps(&dir.0.join("missing.h5"), "train").unwrap_err().to_string();
        assert!(e.contains("missing.h5"), "{e}");
        assert!(read_usps(&usps_h5(), "validation").is_err());
    }

    #[test]
    fn exports_an_image_folder() {
        let dir = TempDir::new("usps-export");
        let out = dir.0.join("usps");
        let n = export_image_folder(&usps_h5(), "test", Some(&[0, 1, 2, 3, 4, 5]), &out).unwrap();
        assert_eq!(n, 6);
        let folder = ImageFolder::scan(&out).unwrap();
        assert_eq!(folder.samples.len(), 6);
        // test labels 9, 6, 3, 6, 6, 0
        assert_eq!(folder.classes, vec!["0", "3", "6", "9"]);
        let img = image::open(out.join("9/00000.png")).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (16, 16));
        let usps = read_usps(&usps_h5(), "test").unwrap();
        assert_eq!(img.as_raw(), &usps.pixels_u8()[..256]);
    }
}
