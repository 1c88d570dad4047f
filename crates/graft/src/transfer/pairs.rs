//! Pretraining the whole encoder on a task whose labels come for free, for `graft pretrain`:
//!
//! - `siamese` (Bromley et al., 1993; Hadsell, Chopra & LeCun, 2006): pairs of images known only
//!   to be the same or different (a row `a,b,same` of a CSV); both go through the same encoder,
//!   and the contrastive loss pulls same pairs together and pushes different ones at least a
//!   margin apart: `y·d² + (1 − y)·max(0, m − d)²`, `d` the distance of the unit-length codes.
//! - `contrastive` (SimCLR, Chen et al., 2020): two random views of each unlabelled image
//!   (shifted, scaled and rotated; or, with `crop`, a random resized crop, rotated),
//!   encoded and projected by a small head (Linear–ReLU–Linear, or one linear layer); the NT-Xent
//!   loss makes each view pick its partner among the batch's 2B − 1 other views (cosine
//!   similarity / τ). The projection head is dropped afterwards: the encoder's codes, the
//!   representation before the head, are what `fit --init` starts from.
//!
//! The encoder is the network `fit --init` starts from: the MLP of the layer-wise methods, or
//! the transferability study's small CNN (`small-cnn`).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{rngs::StdRng, Rng};

use super::autoencoder::{DigitArch, DigitEncoder, SIDE};
use crate::adapt::losses::gather_rows;
use crate::data::folder::{ImageFolder, Sample};
use crate::train::loss::cross_entropy;
use crate::{GraftError, Result};

/// The SimCLR projection head's output width.
pub const PROJECTION: usize = 128;

/// The encoder and, for `contrastive`, the projection head trained with it: `hidden` (when the
/// head has a hidden layer) then `projection` to [`PROJECTION`] wide.
#[derive(Module, Debug)]
pub struct PairNet {
    pub encoder: DigitEncoder,
    pub hidden: Option<Linear>,
    pub projection: Option<Linear>,
}

impl PairNet {
    /// With `projection`, a head whose hidden layer is `hidden` wide (0: one linear layer).
    pub fn init(arch: &DigitArch, projection: bool, hidden: usize, device: &Device) -> Self {
        let width = arch.code_width();
        let hidden_layer = (projection && hidden > 0).then(|| LinearConfig::new(width, hidden).init(device));
        let into = if hidden > 0 { hidden } else { width };
        Self { encoder: DigitEncoder::init(arch, device), hidden: hidden_layer, projection: projection.then(|| LinearConfig::new(into, PROJECTION).init(device)) }
    }

    /// Unit-length embeddings: the codes, through the projection head when there is one.
    pub fn embed(&self, x: Tensor<2>) -> Tensor<2> {
        let mut z = self.encoder.forward(x);
        if let Some(h) = &self.hidden {
            z = h.forward(z);
        }
        if let Some(p) = &self.projection {
            z = p.forward(burn::tensor::activation::relu(z));
        }
        normalize(z)
    }
}

/// Rows scaled to unit length.
pub fn normalize(z: Tensor<2>) -> Tensor<2> {
    let norm = z.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8); // [n, 1]
    z / norm
}

/// The contrastive loss of unit-length embeddings `a`, `b` ([n, d]) whose rows are the same
/// (`same[i]`) or different, with margin `margin` on their distance.
pub fn contrastive_loss(a: Tensor<2>, b: Tensor<2>, same: &[bool], margin: f64) -> Tensor<1> {
    let device = a.device();
    let n = same.len();
    let d2 = (a - b).powi_scalar(2).sum_dim(1); // [n, 1]
    let d = d2.clone().clamp_min(1e-12).sqrt();
    let y = Tensor::<2>::from_data(TensorData::new(same.iter().map(|&s| if s { 1f32 } else { 0.0 }).collect::<Vec<_>>(), [n, 1]), &device);
    let push = (d.neg() + margin).clamp_min(0.0).powi_scalar(2);
    (y.clone() * d2 + (y.neg() + 1.0) * push).mean()
}

/// NT-Xent of two views' unit-length embeddings `z1`, `z2` ([B, d], row i of each the same
/// image) at temperature `tau`: the mean over the 2B views of the cross-entropy of picking the
/// partner among the other 2B − 1.
pub fn nt_xent(z1: Tensor<2>, z2: Tensor<2>, tau: f64) -> Tensor<1> {
    let device = z1.device();
    let [b, _] = z1.dims();
    let z = Tensor::cat(vec![z1, z2], 0); // [2B, d]
    let sim = z.clone().matmul(z.transpose()) / tau; // [2B, 2B]
    // A view is never its own candidate.
    let mut mask = vec![0f32; 4 * b * b];
    for i in 0..2 * b {
        mask[i * 2 * b + i] = -1e9;
    }
    let logits = sim + Tensor::<2>::from_data(TensorData::new(mask, [2 * b, 2 * b]), &device);
    let targets: Vec<usize> = (0..2 * b).map(|i| if i < b { i + b } else { i - b }).collect();
    cross_entropy(logits, &targets, 0.0, None, &device)
}

/// A random view of a 28×28 digit row (bilinear, zeros outside), rotated by up to ±15°. With
/// `crop` (the smallest area fraction), a random resized crop: a window of `crop`–1 of the
/// frame's area, aspect ratio 3/4–4/3, anywhere inside the frame, stretched back to 28×28.
/// Without (the default), scaled by 0.85–1.15 and shifted by up to ±3 pixels.
pub fn digit_view(row: &[f32], crop: Option<f32>, rng: &mut StdRng) -> Vec<f32> {
    let side = SIDE as f32;
    // Magnification along x and y and the centre of the window the view shows.
    let (zx, zy, dx, dy) = match crop {
        Some(min_area) => {
            let area = rng.random_range(min_area.min(1.0)..=1.0);
            let aspect = rng.random_range((0.75f32).ln()..=(4.0f32 / 3.0).ln()).exp();
            let (w, h) = ((side * (area * aspect).sqrt()).min(side), (side * (area / aspect).sqrt()).min(side));
            let (mx, my) = ((side - w) / 2.0, (side - h) / 2.0);
            let (dx, dy) = (if mx > 0.0 { rng.random_range(-mx..=mx) } else { 0.0 }, if my > 0.0 { rng.random_range(-my..=my) } else { 0.0 });
            (side / w, side / h, -dx, -dy)
        }
        None => {
            let scale = rng.random_range(0.85f32..1.15);
            (scale, scale, 0.0, 0.0)
        }
    };
    let angle = rng.random_range(-15f32..15.0).to_radians();
    let (dx, dy) = if crop.is_some() { (dx, dy) } else { (rng.random_range(-3f32..3.0), rng.random_range(-3f32..3.0)) };
    let (sin, cos) = angle.sin_cos();
    let c = (side - 1.0) / 2.0;
    let at = |x: i32, y: i32| if x < 0 || y < 0 || x >= SIDE as i32 || y >= SIDE as i32 { 0.0 } else { row[y as usize * SIDE + x as usize] };
    let mut out = vec![0f32; SIDE * SIDE];
    for y in 0..SIDE {
        for x in 0..SIDE {
            // The source of output pixel (x, y): the inverse of shift ∘ rotation ∘ scale about the
            // centre (with a crop, the shift is minus the window's centre, applied before the zoom).
            let (sx, sy) = if crop.is_some() {
                let (u, v) = (x as f32 - c, y as f32 - c);
                ((cos * u + sin * v) / zx + c - dx, (-sin * u + cos * v) / zy + c - dy)
            } else {
                let (u, v) = (x as f32 - c - dx, y as f32 - c - dy);
                ((cos * u + sin * v) / zx + c, (-sin * u + cos * v) / zy + c)
            };
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i32, y0 as i32);
            out[y * SIDE + x] = at(x0, y0) * (1.0 - fx) * (1.0 - fy) + at(x0 + 1, y0) * fx * (1.0 - fy) + at(x0, y0 + 1) * (1.0 - fx) * fy + at(x0 + 1, y0 + 1) * fx * fy;
        }
    }
    out
}

/// One row of a pairs CSV: the two images (relative to `base` unless absolute) and whether they
/// show the same thing.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub a: PathBuf,
    pub b: PathBuf,
    pub same: bool,
}

/// The images a pretraining reads: with a pairs CSV (siamese), every image of its pairs once
/// (sorted), and the pairs; otherwise every image of the folder `data`.
pub fn pretraining_images(pairs: Option<&Path>, data: &Path) -> Result<(Vec<Sample>, Option<Vec<Pair>>)> {
    Ok(match pairs {
        Some(csv) => {
            let pairs = read_pairs(csv, data)?;
            let mut files: Vec<PathBuf> = pairs.iter().flat_map(|p| [p.a.clone(), p.b.clone()]).collect();
            files.sort();
            files.dedup();
            (files.into_iter().map(|path| Sample { path, label: 0 }).collect(), Some(pairs))
        }
        None => (ImageFolder::scan(data)?.samples, None),
    })
}

/// The pairs as (row of a, row of b, same), given the row of each readable image (`rows`:
/// its path, in row order); a pair with an unreadable image is left out.
pub fn pair_rows<'a>(pairs: &[Pair], rows: impl Iterator<Item = &'a Path>) -> Vec<(usize, usize, bool)> {
    let row_of: std::collections::HashMap<&Path, usize> = rows.enumerate().map(|(row, path)| (path, row)).collect();
    pairs.iter().filter_map(|p| Some((*row_of.get(p.a.as_path())?, *row_of.get(p.b.as_path())?, p.same))).collect()
}

/// Reads `a,b,same` rows (an `a,b,same` header is allowed; `same` is 1/0, true/false or same/different),
/// checking its size first; a bad row is named with its line.
pub fn read_pairs(csv: &Path, base: &Path) -> Result<Vec<Pair>> {
    // An input the user names (not a file of a run): a symbolic link is followed.
    let bytes = crate::fsutil::read_regular(csv, crate::limits::MAX_TEXT_FILE_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| GraftError::Data { path: csv.into(), reason: "not UTF-8 text".into() })?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |why: &str| GraftError::Data { path: csv.into(), reason: format!("line {}: {why} (expected a,b,same)", i + 1) };
        if fields.len() != 3 {
            return Err(bad(&format!("{} fields", fields.len())));
        }
        if i == 0 && fields[0].eq_ignore_ascii_case("a") && fields[1].eq_ignore_ascii_case("b") {
            continue; // the header
        }
        let same = match fields[2].to_ascii_lowercase().as_str() {
            "1" | "true" | "same" => true,
            "0" | "false" | "different" => false,
            other => return Err(bad(&format!("`{}` is not 1/0, true/false or same/different", crate::limits::truncate_str(other, 40)))),
        };
        let path = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
        pairs.push(Pair { a: path(fields[0]), b: path(fields[1]), same });
    }
    if pairs.is_empty() {
        return Err(GraftError::Data { path: csv.into(), reason: "no pairs".into() });
    }
    Ok(pairs)
}

/// A batch's two views as tensors: rows `idx` of `rows` (784 wide) through [`digit_view`].
pub fn views(rows: &[f32], idx: &[usize], crop: Option<f32>, rng: &mut StdRng, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let width = SIDE * SIDE;
    let mut a = Vec::with_capacity(idx.len() * width);
    let mut b = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        let row = &rows[i * width..(i + 1) * width];
        a.extend(digit_view(row, crop, rng));
        b.extend(digit_view(row, crop, rng));
    }
    (Tensor::from_data(TensorData::new(a, [idx.len(), width]), device), Tensor::from_data(TensorData::new(b, [idx.len(), width]), device))
}

/// One step's loss for a batch of pairs (`idx` into `pairs`, whose images are rows `index` of `rows`).
pub fn pair_batch(rows: &[f32], index: &[(usize, usize, bool)], idx: &[usize], device: &Device) -> (Tensor<2>, Tensor<2>, Vec<bool>) {
    let width = SIDE * SIDE;
    let left: Vec<usize> = idx.iter().map(|&i| index[i].0).collect();
    let right: Vec<usize> = idx.iter().map(|&i| index[i].1).collect();
    (gather_rows(rows, width, &left, device), gather_rows(rows, width, &right, device), idx.iter().map(|&i| index[i].2).collect())
}

/// The gradients of `loss` for `net`.
pub fn grads(loss: Tensor<1>, net: &PairNet) -> GradientsParams {
    GradientsParams::from_grads(loss.backward(), net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use rand::SeedableRng;

    /// NT-Xent is smallest when each view's embedding is its partner's: any perturbation of the
    /// second views raises it.
    #[test]
    fn nt_xent_is_minimal_when_the_two_views_coincide() {
        let device = Device::flex();
        let z1 = normalize(Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 1.0), &device));
        let same: f32 = nt_xent(z1.clone(), z1.clone(), 0.5).into_scalar();
        for k in 0..5 {
            let noise = Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 0.3 + 0.3 * k as f64), &device);
            let other: f32 = nt_xent(z1.clone(), normalize(z1.clone() + noise), 0.5).into_scalar();
            assert!(same < other, "coinciding views {same} vs perturbed {other}");
        }
        // Swapped partners (row i paired with row i+1) are worse still than coinciding ones.
        let shifted = Tensor::cat(vec![z1.clone().narrow(0, 1, 7), z1.clone().narrow(0, 0, 1)], 0);
        let wrong: f32 = nt_xent(z1, shifted, 0.5).into_scalar();
        assert!(same < wrong);
    }

    #[test]
    fn contrastive_loss_pulls_same_pairs_and_pushes_different_ones_to_the_margin() {
        let device = Device::flex();
        let row = |v: [f32; 2]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [1, 2]), &device);
        let (a, b) = (row([1.0, 0.0]), row([0.0, 1.0])); // distance √2
        let l = |x: Tensor<2>, y: Tensor<2>, same: bool, m: f64| -> f32 { contrastive_loss(x, y, &[same], m).into_scalar() };
        assert!((l(a.clone(), a.clone(), true, 1.0)).abs() < 1e-6, "same and equal: no loss");
        assert!((l(a.clone(), b.clone(), true, 1.0) - 2.0).abs() < 1e-5, "same but apart: d²");
        assert!(l(a.clone(), b.clone(), false, 1.0).abs() < 1e-6, "different and beyond the margin");
        assert!((l(a.clone(), a, false, 1.0) - 1.0).abs() < 1e-5, "different but equal: m²");
        let _ = b;
    }

    #[test]
    fn a_view_keeps_a_digit_inside_the_frame_and_differs_from_it() {
        let mut row = vec![0f32; SIDE * SIDE];
        for y in 10..18 {
            for x in 12..16 {
                row[y * SIDE + x] = 1.0;
            }
        }
        let mut rng = StdRng::seed_from_u64(1);
        let v = digit_view(&row, None, &mut rng);
        let (mass, view_mass): (f32, f32) = (row.iter().sum(), v.iter().sum());
        assert!((view_mass / mass - 1.0).abs() < 0.4, "the stroke survives: {mass} → {view_mass}");
        assert!(v.iter().zip(&row).any(|(a, b)| (a - b).abs() > 0.1), "the view moved it");
        assert!(v.iter().all(|p| (0.0..=1.0 + 1e-6).contains(p)));
        // A crop of at least half the frame magnifies by at most √2 (and √(4/3) for the aspect
        // ratio): the stroke's mass grows by at most that area factor, never vanishes from a
        // centred digit, and the view differs from the original.
        for _ in 0..20 {
            let v = digit_view(&row, Some(0.5), &mut rng);
            let view_mass: f32 = v.iter().sum();
            assert!(view_mass > 0.1 * mass && view_mass < 2.0 * 4.0 / 3.0 * mass + 1e-3, "{mass} → {view_mass}");
            assert!(v.iter().all(|p| (0.0..=1.0 + 1e-6).contains(p)));
        }
        // A crop of the whole frame (crop 1: only the aspect ratio and the rotation vary) keeps
        // the centre of a centred bar and leaves the empty corner empty.
        let v = digit_view(&row, Some(1.0), &mut rng);
        assert!(v[14 * SIDE + 13] > 0.5 && v[2 * SIDE + 2] == 0.0);
    }

    #[test]
    fn pairs_are_read_with_a_header_and_bad_rows_are_named() {
        let dir = std::env::temp_dir().join(format!("graft-pairs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("pairs.csv");
        std::fs::write(&csv, "a,b,same\nx/1.png,y/2.png,1\n/abs/3.png,y/4.png,different\n").unwrap();
        let pairs = read_pairs(&csv, Path::new("/data")).unwrap();
        assert_eq!(pairs, vec![
            Pair { a: "/data/x/1.png".into(), b: "/data/y/2.png".into(), same: true },
            Pair { a: "/abs/3.png".into(), b: "/data/y/4.png".into(), same: false },
        ]);
        // A link to the CSV is read as the CSV (it is an input, not a file of a run).
        #[cfg(unix)]
        {
            let link = dir.join("link.csv");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&csv, &link).unwrap();
            assert_eq!(read_pairs(&link, Path::new("/data")).unwrap(), pairs);
        }
        std::fs::write(&csv, "x.png,y.png,1\nx.png,y.png,maybe\n").unwrap();
        let err = read_pairs(&csv, Path::new("/data")).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("maybe"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
