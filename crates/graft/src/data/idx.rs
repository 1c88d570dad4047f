//! Readers for the IDX files of MNIST and Fashion-MNIST (gzip-compressed or plain), and export
//! of a subset to an image folder that [`super::folder::ImageFolder`] can scan.
//!
//! IDX layout: a 4-byte magic `0x00 0x00 <type> <ndims>` (type 0x08 = unsigned byte, so
//! images are 2051 = 3 dims and labels 2049 = 1 dim), then one big-endian u32 per dimension,
//! then the data, row-major. Every size is checked against the bytes actually present; the
//! decompressed stream is read with a cap, so a lying header cannot cause a huge allocation.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use image::GrayImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::{GraftError, Result};

/// Largest decompressed IDX file read (1 GiB; Fashion-MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Fashion-MNIST class names, by label (folder-safe spellings).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle_boot",
];

/// Digit class names (MNIST, USPS), by label.
pub const DIGIT_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Owned class names, as [`export_image_folder`] takes them.
pub fn class_names(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn data_err(path: &Path, reason: impl Into<String>) -> GraftError {
    GraftError::Data { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads a whole IDX file, decompressing it when it starts with the gzip magic.
fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let file = crate::fsutil::open_regular(path)?;
    let mut reader = std::io::BufReader::new(file);
    let gz = reader.fill_buf().map_err(|e| GraftError::io(path, e))?.starts_with(&[0x1f, 0x8b]);
    let mut buf = Vec::new();
    let result = if gz {
        MultiGzDecoder::new(reader).take(MAX_IDX_BYTES + 1).read_to_end(&mut buf)
    } else {
        reader.take(MAX_IDX_BYTES + 1).read_to_end(&mut buf)
    };
    if let Err(e) = result {
        return Err(if gz {
            data_err(path, format!("corrupt gzip stream: {e}"))
        } else {
            GraftError::io(path, e)
        });
    }
    if buf.len() as u64 > MAX_IDX_BYTES {
        return Err(data_err(path, format!("larger than {MAX_IDX_BYTES} bytes decompressed")));
    }
    Ok(buf)
}

/// Parses the header: checks the magic for `ndims` unsigned-byte dimensions and that the data
/// that follows has exactly the product of the dimensions. Returns (dims, data offset).
fn parse_header(path: &Path, buf: &[u8], ndims: u8, what: &str) -> Result<(Vec<usize>, usize)> {
    let magic = 0x0800 | ndims as u32;
    let header = 4 + 4 * ndims as usize;
    let too_short = || {
        data_err(path, format!("too short for an IDX {what} header ({} bytes)", buf.len()))
    };
    if buf.len() < 4 {
        return Err(too_short());
    }
    let found = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if found != magic {
        return Err(data_err(
            path,
            format!("IDX magic is {found}, expected {magic} for {what} (wrong file?)"),
        ));
    }
    if buf.len() < header {
        return Err(too_short());
    }
    let dims: Vec<usize> = (0..ndims as usize)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let actual = buf.len() - header;
    if expected != Some(actual) {
        return Err(data_err(
            path,
            format!(
                "header says {what} of dimensions {dims:?} ({} bytes) but {actual} bytes follow \
                 (truncated or corrupt file)",
                expected.map(|e| e.to_string()).unwrap_or_else(|| "overflowing".into())
            ),
        ));
    }
    Ok((dims, header))
}

/// Reads an IDX image file (magic 2051): (rows, cols, pixels of all n images, n·rows·cols).
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<(usize, usize, Vec<u8>)> {
    let path = path.as_ref();
    let mut buf = read_capped(path)?;
    let (dims, offset) = parse_header(path, &buf, 3, "images")?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(data_err(path, format!("images of size {}×{}", dims[1], dims[2])));
    }
    buf.drain(..offset);
    Ok((dims[1], dims[2], buf))
}

/// Reads an IDX label file (magic 2049).
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    let mut buf = read_capped(path)?;
    let (_, offset) = parse_header(path, &buf, 1, "labels")?;
    buf.drain(..offset);
    Ok(buf)
}

/// Indices of up to `per_class` samples of each label: all indices are shuffled with a
/// generator seeded by `seed`, then the first `per_class` of each label are kept. The result
/// is sorted ascending and depends only on the labels, `per_class` and the seed. A label with
/// fewer than `per_class` samples contributes all of them, so the result can be shorter than
/// `per_class` × number of labels (callers that need exact counts compare the length);
/// `per_class == 0` gives an empty result.
pub fn seeded_subset(labels: &[u8], per_class: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut taken = [0usize; 256];
    let mut out: Vec<usize> = order
        .into_iter()
        .filter(|&i| {
            let t = &mut taken[labels[i] as usize];
            if *t < per_class {
                *t += 1;
                true
            } else {
                false
            }
        })
        .collect();
    out.sort_unstable();
    out
}

fn check_class_name(out: &Path, name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.starts_with('.')
        || name.chars().any(|c| matches!(c, '/' | '\\' | '\0' | ':'));
    if bad {
        return Err(data_err(out, format!("class name `{name}` cannot be a folder name")));
    }
    Ok(())
}

/// Writes the images at `indices` as grey PNGs `out/<class>/<index:05>.png`, where `index` is
/// the image's position in the IDX file. Only the class folders that receive images are
/// created. Duplicate indices are written once. Returns the number of files written.
///
/// `images` holds `labels.len()` images of `rows`×`cols`; errors (naming `out`) on a size
/// mismatch, an index out of range, a label without a class name, or an unusable class name.
pub fn export_image_folder(
    images: &[u8],
    rows: usize,
    cols: usize,
    labels: &[u8],
    class_names: &[String],
    indices: &[usize],
    out: &Path,
) -> Result<usize> {
    let plane = rows.checked_mul(cols).filter(|&p| p > 0);
    let Some(plane) = plane else {
        return Err(data_err(out, format!("images of size {rows}×{cols}")));
    };
    if rows > u32::MAX as usize || cols > u32::MAX as usize {
        return Err(data_err(out, format!("images of size {rows}×{cols} are too large")));
    }
    if labels.len().checked_mul(plane) != Some(images.len()) {
        return Err(data_err(
            out,
            format!(
                "{} pixels do not make {} images of {rows}×{cols}",
                images.len(),
                labels.len()
            ),
        ));
    }
    let unique: BTreeSet<usize> = indices.iter().copied().collect();
    let mut used = BTreeSet::new();
    for &i in &unique {
        let Some(&label) = labels.get(i) else {
            return Err(data_err(out, format!("index {i} is out of range ({} images)", labels.len())));
        };
        let Some(name) = class_names.get(label as usize) else {
            return Err(data_err(
                out,
                format!("image {i} has label {label} but only {} class names", class_names.len()),
            ));
        };
        check_class_name(out, name)?;
        used.insert(label as usize);
    }
    for &label in &used {
        let dir = out.join(&class_names[label]);
        fs::create_dir_all(&dir).map_err(|e| GraftError::io(&dir, e))?;
    }
    let unique: Vec<usize> = unique.into_iter().collect();
    unique.par_iter().try_for_each(|&i| -> Result<()> {
        let path = out.join(&class_names[labels[i] as usize]).join(format!("{i:05}.png"));
        let pixels = images[i * plane..(i + 1) * plane].to_vec();
        let img = GrayImage::from_raw(cols as u32, rows as u32, pixels)
            .ok_or_else(|| data_err(out, "image buffer size mismatch"))?;
        img.save_with_format(&path, image::ImageFormat::Png).map_err(|e| match e {
            image::ImageError::IoError(io) => GraftError::io(&path, io),
            other => data_err(&path, other.to_string()),
        })
    })?;
    Ok(unique.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::folder::tests::TempDir;
    use crate::data::folder::ImageFolder;
    use std::io::Write;
    use std::path::PathBuf;

    /// The shared data folder: `GRAFT_SHARED`, else `../shared` next to the project root.
    fn shared() -> PathBuf {
        let dir = std::env::var_os("GRAFT_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
        let data = dir.join("data");
        assert!(
            data.is_dir(),
            "shared data folder {} is missing: set GRAFT_SHARED to the folder holding data/ \
             (these tests read the real MNIST/Fashion-MNIST files and must not be skipped)",
            data.display()
        );
        data
    }

    fn histogram(labels: &[u8]) -> Vec<usize> {
        let mut h = vec![0usize; 10];
        for &l in labels {
            assert!(l < 10, "label {l} out of range");
            h[l as usize] += 1;
        }
        h
    }

    #[test]
    fn fashion_mnist_train_and_test() {
        let dir = shared().join("fashion-mnist");
        let (r, c, px) = read_idx_images(dir.join("train-images-idx3-ubyte.gz")).unwrap();
        let labels = read_idx_labels(dir.join("train-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!((r, c), (28, 28));
        assert_eq!(labels.len(), 60_000);
        assert_eq!(px.len(), 60_000 * 28 * 28);
        assert_eq!(histogram(&labels), vec![6000; 10]);
        assert_eq!(labels[..10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
        // The first image (an ankle boot) is dark at the border and has bright pixels.
        assert_eq!(px[0], 0);
        assert!(px[..784].iter().filter(|&&p| p > 128).count() > 100);

        let (r, c, px) = read_idx_images(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
        let labels = read_idx_labels(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!((r, c, px.len()), (28, 28, 10_000 * 784));
        assert_eq!(histogram(&labels), vec![1000; 10]);
        assert_eq!(labels[..5], [9, 2, 1, 1, 6]);
    }

    #[test]
    fn mnist_digits() {
        let dir = shared().join("digits/mnist");
        let (r, c, px) = read_idx_images(dir.join("train-10k-images-idx3-ubyte.gz")).unwrap();
        let labels = read_idx_labels(dir.join("train-10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!((r, c, px.len(), labels.len()), (28, 28, 10_000 * 784, 10_000));
        let h = histogram(&labels);
        assert_eq!(h.iter().sum::<usize>(), 10_000);
        assert!(h.iter().all(|&n| (800..1_300).contains(&n)), "{h:?}");

        let (r, c, px) = read_idx_images(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
        let labels = read_idx_labels(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!((r, c, px.len()), (28, 28, 10_000 * 784));
        assert_eq!(histogram(&labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
        assert_eq!(labels[..10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    }

    #[test]
    fn subset_export_and_scan_back() {
        let dir = shared().join("fashion-mnist");
        let (r, c, px) = read_idx_images(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
        let labels = read_idx_labels(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let subset = seeded_subset(&labels, 5, 7);
        assert_eq!(subset.len(), 50);
        assert_eq!(subset, seeded_subset(&labels, 5, 7));
        assert_ne!(subset, seeded_subset(&labels, 5, 8));
        assert!(subset.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(histogram(&subset.iter().map(|&i| labels[i]).collect::<Vec<_>>()), vec![5; 10]);
        assert_eq!(seeded_subset(&labels, 2_000, 1).len(), 10_000);
        assert!(seeded_subset(&labels, 0, 1).is_empty());

        let tmp = TempDir::new("idx");
        let names = class_names(&FASHION_MNIST_CLASSES);
        let written = export_image_folder(&px, r, c, &labels, &names, &subset, &tmp.0).unwrap();
        assert_eq!(written, 50);
        let ds = ImageFolder::scan(&tmp.0).unwrap();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(ds.classes, sorted);
        assert_eq!(ds.samples.len(), 50);
        let i = subset[0];
        let file = tmp.0.join(&names[labels[i] as usize]).join(format!("{i:05}.png"));
        let back = image::open(&file).unwrap().to_luma8();
        assert_eq!(back.dimensions(), (28, 28));
        assert_eq!(back.as_raw()[..], px[i * 784..(i + 1) * 784]);

        let err = export_image_folder(&px, r, c, &labels, &names, &[10_000], &tmp.0).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = export_image_folder(&px, r, c, &labels, &names[..3], &subset, &tmp.0).unwrap_err();
        assert!(err.to_string().contains("class names"), "{err}");
        let err = export_image_folder(&px[1..], r, c, &labels, &names, &subset, &tmp.0).unwrap_err();
        assert!(matches!(err, GraftError::Data { .. }), "{err}");
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn bad_files_are_refused() {
        let tmp = TempDir::new("idxbad");
        let write = |name: &str, bytes: &[u8]| {
            let p = tmp.0.join(name);
            fs::write(&p, bytes).unwrap();
            p
        };
        let mut good = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
        good.extend((0..24).map(|i| i as u8));
        let (r, c, px) = read_idx_images(write("good.gz", &gz(&good))).unwrap();
        assert_eq!((r, c, px.len(), px[23]), (3, 4, 24, 23));
        // Plain (uncompressed) IDX is accepted too.
        assert_eq!(read_idx_images(write("plain.idx", &good)).unwrap(), (3, 4, px));

        // A header claiming 4 billion images must fail on the length, not allocate.
        let mut lying = good.clone();
        lying[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        lying[8..16].copy_from_slice(&[0xff; 8]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("lying.gz", gz(&lying), "follow"),
            ("truncated.gz", gz(&good[..30]), "follow"),
            ("trailing.gz", gz(&[good.as_slice(), &[1, 2]].concat()), "follow"),
            ("labels-as-images.gz", gz(&[0, 0, 8, 1, 0, 0, 0, 2, 5, 6]), "magic"),
            ("short.gz", gz(&[0, 0, 8]), "too short"),
            ("broken-gzip.gz", { let mut g = gz(&good); g.truncate(g.len() / 2); g }, "gzip"),
            ("empty.gz", vec![], "too short"),
        ];
        for (name, bytes, needle) in cases {
            let p = write(name, &bytes);
            match read_idx_images(&p) {
                Err(GraftError::Data { path, reason }) => {
                    assert_eq!(path, p);
                    assert!(reason.contains(needle), "{name}: {reason}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let labels = read_idx_labels(write("l.gz", &gz(&[0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 9]))).unwrap();
        assert_eq!(labels, [1, 2, 9]);
        let err = read_idx_labels(write("l2.gz", &gz(&[0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 9]))).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = read_idx_labels(tmp.0.join("missing.gz")).unwrap_err();
        assert!(matches!(err, GraftError::Io { .. }), "{err}");
    }
}
