//! Seeded image augmentation with the semantics of Keras' `ImageDataGenerator`
//! (`rotation_range`, `zoom_range`, `width_shift_range`, `height_shift_range`,
//! `horizontal_flip`, `fill_mode="nearest"`), plus torchvision-style random resized crop and
//! colour jitter.
//!
//! [`Augment::apply`] runs, in this order:
//! 1. random resized crop (if enabled): a crop covering a uniform fraction of the area in the
//!    given range, aspect ratio log-uniform in [3/4, 4/3] (torchvision `RandomResizedCrop`,
//!    10 tries then a centre crop), resized back to the input size with PIL-exact bilinear;
//! 2. one affine transform: rotation θ uniform in ±`rotation_deg`, zoom factors zx (rows) and
//!    zy (columns) independently uniform in [1−zoom, 1+zoom] (as in Keras, a factor above 1
//!    zooms out), shifts uniform in ±`height_shift`·height and ±`width_shift`·width, sampled
//!    around the image centre with bilinear interpolation and coordinates clamped to the
//!    border (Keras/scipy fill mode "nearest");
//! 3. horizontal flip with probability 1/2 (applied after the affine transform, as Keras does);
//! 4. colour jitter: brightness, contrast (towards the mean grey level) and saturation
//!    (towards each pixel's grey level), each by a factor uniform in [1−j, 1+j].
//!
//! Randomness comes only from the generator passed in. Training seeds one generator per
//! sample and epoch with [`sample_rng`]`(run seed, epoch, sample index)`, so a run is
//! reproducible whatever the thread scheduling and the batch order.

use std::fmt;
use std::str::FromStr;

use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::folder::splitmix64;
use super::image::resize_bilinear;
use crate::{GraftError, Result};

/// Augmentation settings; the default does nothing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Horizontal flip with probability 1/2.
    pub hflip: bool,
    /// Rotation uniform in ±degrees, 0–180.
    pub rotation_deg: f32,
    /// Keras zoom range z: zx, zy uniform in [1−z, 1+z]; 0 ≤ z < 1.
    pub zoom: f32,
    /// Horizontal shift, fraction of the width (uniform ±); 0–1.
    pub width_shift: f32,
    /// Vertical shift, fraction of the height (uniform ±); 0–1.
    pub height_shift: f32,
    /// Random resized crop: range of the crop's area as a fraction of the image, 0 < lo ≤ hi ≤ 1.
    pub random_resized_crop: Option<(f32, f32)>,
    /// Colour jitter strength j: brightness, contrast and saturation factors in [1−j, 1+j]; 0–1.
    pub color_jitter: f32,
    /// RandAugment as FixMatch uses it (Cubuk et al. 2020; Sohn et al. 2020): `n` operations
    /// drawn from [`RANDAUGMENT_OPS`], each applied with probability 1/2 at a magnitude uniform
    /// in [1, `m`] of 10.
    pub randaugment: Option<(u8, u8)>,
    /// Cutout: one square of side `cutout` × the shorter side, at a uniform position, filled with
    /// grey (128); 0–1.
    pub cutout: f32,
}

/// The operations RandAugment draws from (FixMatch's list).
pub const RANDAUGMENT_OPS: [&str; 14] = [
    "identity", "autocontrast", "equalize", "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
    "rotate", "shear-x", "shear-y", "translate-x", "translate-y",
];

const SETTING: &str = "augment";

const ACCEPTED: &str = "accepted: `none`, `keras` (= flip,rotate:30,zoom:0.3,shift:0.3), or a \
comma list of `flip`, `rotate:DEG` (0-180), `zoom:Z` (0 to <1), `shift:F`, `wshift:F`, \
`hshift:F` (fractions 0-1), `crop:LO-HI` (area fractions, 0 < LO <= HI <= 1), `jitter:J` (0-1), \
`randaugment:N:M` (N operations of 1-14, magnitude M of 1-10), `cutout:F` (side fraction 0-1)";

/// Seeds the generator of one sample in one epoch: independent streams for every
/// (run seed, epoch, sample index), mixed with splitmix64.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> StdRng {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ epoch);
    h = splitmix64(h ^ index.rotate_left(32));
    StdRng::seed_from_u64(h)
}

impl Augment {
    /// The Keras-style set used by the reference notebooks: flip, zoom 0.3, shift 0.3 both
    /// ways, rotation 30°.
    pub fn keras() -> Augment {
        Augment {
            hflip: true,
            rotation_deg: 30.0,
            zoom: 0.3,
            width_shift: 0.3,
            height_shift: 0.3,
            ..Augment::default()
        }
    }

    /// True when [`apply`](Self::apply) returns its input unchanged.
    pub fn is_identity(&self) -> bool {
        !self.hflip
            && !(self.rotation_deg > 0.0)
            && !(self.zoom > 0.0)
            && !(self.width_shift > 0.0)
            && !(self.height_shift > 0.0)
            && self.random_resized_crop.is_none()
            && !(self.color_jitter > 0.0)
            && self.randaugment.is_none()
            && !(self.cutout > 0.0)
    }

    /// Checks every range (for settings read from a file); the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(GraftError::setting(SETTING, &self.to_string(), format!("{what}; {ACCEPTED}")));
        let within = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        if !within(self.rotation_deg, 0.0, 180.0) {
            return bad("rotation must be 0-180 degrees");
        }
        if !(within(self.zoom, 0.0, 1.0) && self.zoom < 1.0) {
            return bad("zoom must be at least 0 and below 1");
        }
        if !within(self.width_shift, 0.0, 1.0) || !within(self.height_shift, 0.0, 1.0) {
            return bad("shifts must be fractions 0-1");
        }
        if let Some((lo, hi)) = self.random_resized_crop {
            if !(within(lo, 0.0, 1.0) && within(hi, 0.0, 1.0) && lo > 0.0 && lo <= hi) {
                return bad("crop area range must satisfy 0 < LO <= HI <= 1");
            }
        }
        if !within(self.color_jitter, 0.0, 1.0) {
            return bad("jitter must be 0-1");
        }
        if let Some((n, m)) = self.randaugment {
            if !(1..=RANDAUGMENT_OPS.len() as u8).contains(&n) || !(1..=10).contains(&m) {
                return bad("randaugment takes N of 1-14 operations and a magnitude M of 1-10");
            }
        }
        if !within(self.cutout, 0.0, 1.0) {
            return bad("cutout must be a side fraction 0-1");
        }
        Ok(())
    }

    /// Augments one image; the output has the same size. Deterministic for a given generator
    /// state. Out-of-range settings are clamped to their valid range rather than failing.
    pub fn apply(&self, img: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 || self.is_identity() {
            return img.clone();
        }
        let clean = |v: f32, hi: f32| if v.is_finite() { v.clamp(0.0, hi) as f64 } else { 0.0 };

        let mut out = match self.random_resized_crop {
            Some((lo, hi)) => {
                let lo = clean(lo, 1.0).max(1e-6);
                let hi = clean(hi, 1.0).max(lo);
                random_resized_crop(img, lo, hi, rng)
            }
            None => img.clone(),
        };

        let deg = clean(self.rotation_deg, 180.0);
        let zoom = clean(self.zoom, 0.99);
        let (ws, hs) = (clean(self.width_shift, 1.0), clean(self.height_shift, 1.0));
        let theta = uniform(rng, -deg, deg).to_radians();
        let tx = uniform(rng, -hs, hs) * h as f64; // rows, as Keras' tx
        let ty = uniform(rng, -ws, ws) * w as f64; // columns
        let (zx, zy) = if zoom > 0.0 {
            (uniform(rng, 1.0 - zoom, 1.0 + zoom), uniform(rng, 1.0 - zoom, 1.0 + zoom))
        } else {
            (1.0, 1.0)
        };
        let flip = self.hflip && rng.random_bool(0.5);
        if theta != 0.0 || tx != 0.0 || ty != 0.0 || zx != 1.0 || zy != 1.0 {
            out = affine(&out, theta, tx, ty, zx, zy);
        }
        if flip {
            image::imageops::flip_horizontal_in_place(&mut out);
        }

        let j = clean(self.color_jitter, 1.0);
        if j > 0.0 {
            let lo = (1.0 - j).max(0.0);
            let b = uniform(rng, lo, 1.0 + j) as f32;
            let c = uniform(rng, lo, 1.0 + j) as f32;
            let s = uniform(rng, lo, 1.0 + j) as f32;
            jitter(&mut out, b, c, s);
        }
        if let Some((n, m)) = self.randaugment {
            for _ in 0..n.min(RANDAUGMENT_OPS.len() as u8) {
                let op = RANDAUGMENT_OPS[rng.random_range(0..RANDAUGMENT_OPS.len())];
                // Magnitude uniform in [1, m] of 10, each operation applied half the time.
                let level = uniform(rng, 1.0, m.clamp(1, 10) as f64) / 10.0;
                if rng.random_bool(0.5) {
                    out = rand_op(&out, op, level, rng);
                }
            }
        }
        let side = clean(self.cutout, 1.0);
        if side > 0.0 {
            cutout(&mut out, side, rng);
        }
        out
    }
}

/// One RandAugment operation at `level` in (0, 1], with FixMatch's ranges: rotation ±30°,
/// shear ±0.3, translation ±0.3 of the side, enhancement factors 1 ± 0.9·level, posterize
/// down to 4 bits, solarize threshold 256 − 256·level. Geometric ones fill with grey (128).
fn rand_op(img: &RgbImage, op: &str, level: f64, rng: &mut impl Rng) -> RgbImage {
    let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    let (w, h) = img.dimensions();
    let factor = (1.0 + sign * 0.9 * level) as f32;
    let mut out = img.clone();
    match op {
        "autocontrast" => autocontrast(&mut out),
        "equalize" => equalize(&mut out),
        "brightness" => jitter(&mut out, factor, 1.0, 1.0),
        "contrast" => jitter(&mut out, 1.0, factor, 1.0),
        "color" => jitter(&mut out, 1.0, 1.0, factor),
        "sharpness" => sharpness(&mut out, factor),
        "posterize" => {
            let bits = 8 - (4.0 * level).round() as u32;
            let mask = (0xffu32 << (8 - bits)) as u8;
            out.pixels_mut().for_each(|p| p.0 = p.0.map(|v| v & mask));
        }
        "solarize" => {
            let threshold = (256.0 - 256.0 * level) as u32;
            out.pixels_mut().for_each(|p| p.0 = p.0.map(|v| if v as u32 >= threshold { 255 - v } else { v }));
        }
        "rotate" => {
            let (sin, cos) = (sign * 30.0 * level).to_radians().sin_cos();
            out = warp(img, |x, y| (cos * x + sin * y, -sin * x + cos * y));
        }
        "shear-x" => out = warp(img, |x, y| (x + sign * 0.3 * level * y, y)),
        "shear-y" => out = warp(img, |x, y| (x, y + sign * 0.3 * level * x)),
        "translate-x" => out = warp(img, |x, y| (x + sign * 0.3 * level * w as f64, y)),
        "translate-y" => out = warp(img, |x, y| (x, y + sign * 0.3 * level * h as f64)),
        _ => {} // identity
    }
    out
}

/// Inverse-maps every output pixel through `source` (centred coordinates x right, y down) and
/// samples bilinearly; outside the image is grey (128), as FixMatch's PIL transforms fill.
fn warp(img: &RgbImage, source: impl Fn(f64, f64) -> (f64, f64)) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let mut out = RgbImage::new(w, h);
    for (c, r, px) in out.enumerate_pixels_mut() {
        let (sx, sy) = source(c as f64 - cx, r as f64 - cy);
        let (sx, sy) = (sx + cx, sy + cy);
        let (fx, fy) = (sx.floor(), sy.floor());
        let (ax, ay) = (sx - fx, sy - fy);
        let tap = |x: f64, y: f64, k: usize| -> f64 {
            if x < 0.0 || y < 0.0 || x > w as f64 - 1.0 || y > h as f64 - 1.0 {
                128.0
            } else {
                img.get_pixel(x as u32, y as u32)[k] as f64
            }
        };
        for k in 0..3 {
            let top = tap(fx, fy, k) * (1.0 - ax) + tap(fx + 1.0, fy, k) * ax;
            let bottom = tap(fx, fy + 1.0, k) * (1.0 - ax) + tap(fx + 1.0, fy + 1.0, k) * ax;
            px[k] = (top * (1.0 - ay) + bottom * ay).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Stretches each channel to the full 0–255 range (PIL `autocontrast`).
fn autocontrast(img: &mut RgbImage) {
    for k in 0..3 {
        let (lo, hi) = img.pixels().fold((255u8, 0u8), |(lo, hi), p| (lo.min(p[k]), hi.max(p[k])));
        if hi > lo {
            let scale = 255.0 / (hi - lo) as f32;
            img.pixels_mut().for_each(|p| p[k] = ((p[k] - lo) as f32 * scale).round().clamp(0.0, 255.0) as u8);
        }
    }
}

/// Histogram equalisation per channel (PIL `equalize`).
fn equalize(img: &mut RgbImage) {
    let n = img.pixels().len().max(1) as f64;
    for k in 0..3 {
        let mut hist = [0usize; 256];
        img.pixels().for_each(|p| hist[p[k] as usize] += 1);
        let mut cdf = [0f64; 256];
        let mut run = 0usize;
        for (v, count) in hist.iter().enumerate() {
            run += count;
            cdf[v] = run as f64 / n;
        }
        img.pixels_mut().for_each(|p| p[k] = (cdf[p[k] as usize] * 255.0).round() as u8);
    }
}

/// Blends with a 3×3 smoothed copy (PIL `ImageEnhance.Sharpness`): `factor` 1 is the image,
/// 0 the smoothed one, above 1 sharper. The border stays as it is.
fn sharpness(img: &mut RgbImage, factor: f32) {
    let (w, h) = img.dimensions();
    if w < 3 || h < 3 {
        return;
    }
    let src = img.clone();
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for k in 0..3 {
                let mut sum = 0f32;
                for (dy, dx) in (0..3).flat_map(|dy| (0..3).map(move |dx| (dy, dx))) {
                    let weight = if (dy, dx) == (1, 1) { 5.0 } else { 1.0 };
                    sum += weight * src.get_pixel(x + dx - 1, y + dy - 1)[k] as f32;
                }
                let smooth = sum / 13.0;
                let v = src.get_pixel(x, y)[k] as f32;
                img.get_pixel_mut(x, y)[k] = (smooth + factor * (v - smooth)).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// Greys out one square of side `side` × the shorter side, centred uniformly in the image.
fn cutout(img: &mut RgbImage, side: f64, rng: &mut impl Rng) {
    let (w, h) = img.dimensions();
    let s = (side * w.min(h) as f64).round() as i64;
    let (cx, cy) = (rng.random_range(0..w) as i64, rng.random_range(0..h) as i64);
    let (x0, y0) = ((cx - s / 2).max(0) as u32, (cy - s / 2).max(0) as u32);
    let (x1, y1) = ((cx - s / 2 + s).min(w as i64) as u32, (cy - s / 2 + s).min(h as i64) as u32);
    for y in y0..y1 {
        for x in x0..x1 {
            img.put_pixel(x, y, image::Rgb([128, 128, 128]));
        }
    }
}

/// Uniform in [lo, hi]; exactly `lo` (no draw) for an empty range.
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    if hi > lo {
        lo + (hi - lo) * rng.random::<f64>()
    } else {
        lo
    }
}

/// Keras `apply_affine_transform` with order 1 and fill mode "nearest": the output pixel at
/// (row r, col c) samples the input at R·(Z·(p − o) + t) + o, where p = (r, c), o is the
/// centre ((h−1)/2, (w−1)/2), Z = diag(zx, zy), t = (tx, ty) and R the rotation by θ.
fn affine(img: &RgbImage, theta: f64, tx: f64, ty: f64, zx: f64, zy: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (or, oc) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (sin, cos) = theta.sin_cos();
    let src = img.as_raw();
    let stride = w as usize * 3;
    let (maxr, maxc) = (h as i64 - 1, w as i64 - 1);
    let mut out = RgbImage::new(w, h);
    for (c, r, px) in out.enumerate_pixels_mut() {
        let u = zx * (r as f64 - or) + tx;
        let v = zy * (c as f64 - oc) + ty;
        let sr = cos * u - sin * v + or;
        let sc = sin * u + cos * v + oc;
        let (fr, fc) = (sr.floor(), sc.floor());
        let (ar, ac) = (sr - fr, sc - fc);
        // Clamping each tap replicates the border ("nearest"); saturating casts keep
        // far-away coordinates finite.
        let r0 = (fr as i64).clamp(0, maxr) as usize;
        let r1 = (fr as i64).saturating_add(1).clamp(0, maxr) as usize;
        let c0 = (fc as i64).clamp(0, maxc) as usize;
        let c1 = (fc as i64).saturating_add(1).clamp(0, maxc) as usize;
        for k in 0..3 {
            let p = |r: usize, c: usize| src[r * stride + c * 3 + k] as f64;
            let top = p(r0, c0) * (1.0 - ac) + p(r0, c1) * ac;
            let bottom = p(r1, c0) * (1.0 - ac) + p(r1, c1) * ac;
            px[k] = (top * (1.0 - ar) + bottom * ar).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// torchvision `RandomResizedCrop.get_params` (ratio 3/4–4/3), then resize back.
fn random_resized_crop(img: &RgbImage, lo: f64, hi: f64, rng: &mut impl Rng) -> RgbImage {
    let (w, h) = img.dimensions();
    let area = w as f64 * h as f64;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut chosen = None;
    for _ in 0..10 {
        let target = area * uniform(rng, lo, hi);
        let ratio = uniform(rng, lr0, lr1).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            chosen = Some((left, top, cw, ch));
            break;
        }
    }
    let (left, top, cw, ch) = chosen.unwrap_or_else(|| {
        let in_ratio = w as f64 / h as f64;
        let (cw, ch) = if in_ratio < 3.0 / 4.0 {
            (w, ((w as f64 / (3.0 / 4.0)).round() as u32).clamp(1, h))
        } else if in_ratio > 4.0 / 3.0 {
            (((h as f64 * (4.0 / 3.0)).round() as u32).clamp(1, w), h)
        } else {
            (w, h)
        };
        ((w - cw) / 2, (h - ch) / 2, cw, ch)
    });
    if (cw, ch) == (w, h) {
        return img.clone();
    }
    let crop = image::imageops::crop_imm(img, left, top, cw, ch).to_image();
    resize_bilinear(&crop, w, h)
}

fn grey(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Brightness, contrast, saturation (torchvision's blends, clamped after each step).
fn jitter(img: &mut RgbImage, b: f32, c: f32, s: f32) {
    let mut px: Vec<[f32; 3]> = img
        .pixels()
        .map(|p| [0, 1, 2].map(|k| (p[k] as f32 * b).clamp(0.0, 255.0)))
        .collect();
    let mean = px.iter().map(|p| grey(*p) as f64).sum::<f64>() as f32 / px.len().max(1) as f32;
    for p in &mut px {
        *p = p.map(|v| (c * v + (1.0 - c) * mean).clamp(0.0, 255.0));
        let g = grey(*p);
        *p = p.map(|v| (s * v + (1.0 - s) * g).clamp(0.0, 255.0));
    }
    for (dst, p) in img.pixels_mut().zip(px) {
        dst.0 = p.map(|v| v.round() as u8);
    }
}

impl FromStr for Augment {
    type Err = GraftError;

    /// `none`, `keras`, or a comma list of items (see [`Augment`]); later items override
    /// earlier ones, so `keras,rotate:10` is the Keras set with a 10° rotation.
    fn from_str(spec: &str) -> Result<Augment> {
        let err = |reason: String| GraftError::setting(SETTING, spec, reason);
        let trimmed = spec.trim();
        if trimmed.is_empty() {
            return Err(err(format!("empty; {ACCEPTED}")));
        }
        if trimmed.eq_ignore_ascii_case("none") {
            return Ok(Augment::default());
        }
        let mut a = Augment::default();
        for raw in trimmed.split(',') {
            let item = raw.trim().to_ascii_lowercase();
            let (key, value) = match item.split_once(':') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item.as_str(), None),
            };
            let number = |v: Option<&str>| -> Result<f32> {
                let v = v.ok_or_else(|| err(format!("`{key}` needs a value, as `{key}:0.2`; {ACCEPTED}")))?;
                v.parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| err(format!("`{item}`: `{v}` is not a number; {ACCEPTED}")))
            };
            let no_value = |v: Option<&str>| match v {
                None => Ok(()),
                Some(_) => Err(err(format!("`{key}` takes no value; {ACCEPTED}"))),
            };
            match key {
                "keras" => {
                    no_value(value)?;
                    let k = Augment::keras();
                    a.hflip = k.hflip;
                    a.rotation_deg = k.rotation_deg;
                    a.zoom = k.zoom;
                    a.width_shift = k.width_shift;
                    a.height_shift = k.height_shift;
                }
                "flip" | "hflip" => {
                    no_value(value)?;
                    a.hflip = true;
                }
                "rotate" | "rotation" => a.rotation_deg = number(value)?,
                "zoom" => a.zoom = number(value)?,
                "shift" => {
                    let s = number(value)?;
                    a.width_shift = s;
                    a.height_shift = s;
                }
                "wshift" => a.width_shift = number(value)?,
                "hshift" => a.height_shift = number(value)?,
                "crop" => {
                    let v = value.ok_or_else(|| err(format!("`crop` needs a range, as `crop:0.5-1.0`; {ACCEPTED}")))?;
                    let parsed = v.split_once('-').and_then(|(lo, hi)| {
                        Some((lo.trim().parse::<f32>().ok()?, hi.trim().parse::<f32>().ok()?))
                    });
                    let Some(range) = parsed else {
                        return Err(err(format!("`{item}`: expected `crop:LO-HI`; {ACCEPTED}")));
                    };
                    a.random_resized_crop = Some(range);
                }
                "jitter" => a.color_jitter = number(value)?,
                "randaugment" => {
                    let v = value.ok_or_else(|| err(format!("`randaugment` needs N:M, as `randaugment:2:10`; {ACCEPTED}")))?;
                    let parsed = v.split_once(':').and_then(|(n, m)| Some((n.trim().parse::<u8>().ok()?, m.trim().parse::<u8>().ok()?)));
                    let Some(nm) = parsed else {
                        return Err(err(format!("`{item}`: expected `randaugment:N:M`; {ACCEPTED}")));
                    };
                    a.randaugment = Some(nm);
                }
                "cutout" => a.cutout = number(value)?,
                "none" => return Err(err(format!("`none` cannot be combined with other items; {ACCEPTED}"))),
                _ => return Err(err(format!("unknown item `{}`; {ACCEPTED}", raw.trim()))),
            }
        }
        a.validate().map_err(|e| match e {
            GraftError::InvalidSetting { reason, .. } => err(reason),
            other => other,
        })?;
        Ok(a)
    }
}

impl fmt::Display for Augment {
    /// Canonical form: `none`, or the items in a fixed order (`flip,rotate:…,zoom:…,shift:…`
    /// or `wshift:…,hshift:…`, `crop:…-…`, `jitter:…`); parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if self.hflip {
            items.push("flip".to_string());
        }
        if self.rotation_deg != 0.0 {
            items.push(format!("rotate:{}", self.rotation_deg));
        }
        if self.zoom != 0.0 {
            items.push(format!("zoom:{}", self.zoom));
        }
        if self.width_shift == self.height_shift {
            if self.width_shift != 0.0 {
                items.push(format!("shift:{}", self.width_shift));
            }
        } else {
            if self.width_shift != 0.0 {
                items.push(format!("wshift:{}", self.width_shift));
            }
            if self.height_shift != 0.0 {
                items.push(format!("hshift:{}", self.height_shift));
            }
        }
        if let Some((lo, hi)) = self.random_resized_crop {
            items.push(format!("crop:{lo}-{hi}"));
        }
        if self.color_jitter != 0.0 {
            items.push(format!("jitter:{}", self.color_jitter));
        }
        if let Some((n, m)) = self.randaugment {
            items.push(format!("randaugment:{n}:{m}"));
        }
        if self.cutout != 0.0 {
            items.push(format!("cutout:{}", self.cutout));
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 9 + y * 3) as u8, (y * 11) as u8, ((x * y) % 251) as u8])
        })
    }

    #[test]
    fn nothing_enabled_is_identity() {
        let img = test_image(17, 13);
        let mut rng = sample_rng(1, 0, 0);
        assert_eq!(Augment::default().apply(&img, &mut rng), img);
        let zeros = Augment { random_resized_crop: None, ..Augment::default() };
        assert!(zeros.is_identity());
    }

    #[test]
    fn zero_ranges_are_identity() {
        // Enabled but zero-width ranges: still goes through the transform code with jitter off.
        let img = test_image(20, 15);
        let a = Augment { rotation_deg: 0.0, zoom: 0.0, width_shift: 0.0, height_shift: 0.0, ..Default::default() };
        for seed in 0..5 {
            assert_eq!(a.apply(&img, &mut sample_rng(seed, 0, 0)), img);
        }
        // The affine sampler itself is exact for the identity transform.
        assert_eq!(affine(&img, 0.0, 0.0, 0.0, 1.0, 1.0), img);
        // Full-area crop is the identity too.
        let crop = Augment { random_resized_crop: Some((1.0, 1.0)), ..Default::default() };
        let square = test_image(16, 16);
        assert_eq!(crop.apply(&square, &mut sample_rng(3, 0, 0)), square);
    }

    #[test]
    fn flip_mirrors_exactly() {
        let img = test_image(19, 7);
        let mirrored = image::imageops::flip_horizontal(&img);
        let a = Augment { hflip: true, ..Default::default() };
        let (mut flipped, mut kept) = (0, 0);
        for seed in 0..40 {
            let out = a.apply(&img, &mut sample_rng(seed, 0, 0));
            if out == img {
                kept += 1;
            } else {
                assert_eq!(out, mirrored);
                flipped += 1;
            }
        }
        assert!(flipped > 5 && kept > 5, "flipped {flipped}, kept {kept}");
    }

    #[test]
    fn affine_matches_hand_computed_cases() {
        let img = test_image(8, 6);
        // Shift by exactly one column: out(r, c) = in(r, c + 1), border replicated.
        let shifted = affine(&img, 0.0, 0.0, 1.0, 1.0, 1.0);
        for y in 0..6 {
            for x in 0..8 {
                assert_eq!(shifted.get_pixel(x, y), img.get_pixel((x + 1).min(7), y));
            }
        }
        // 180° rotation of the centre grid maps (r, c) to (h−1−r, w−1−c).
        let rotated = affine(&img, std::f64::consts::PI, 0.0, 0.0, 1.0, 1.0);
        for y in 0..6 {
            for x in 0..8 {
                assert_eq!(rotated.get_pixel(x, y), img.get_pixel(7 - x, 5 - y));
            }
        }
    }

    #[test]
    fn size_preserved_and_seeded() {
        let img = test_image(33, 21);
        let all: Augment = "flip,rotate:30,zoom:0.3,shift:0.3,crop:0.3-1.0,jitter:0.3".parse().unwrap();
        for seed in 0..10 {
            let out = all.apply(&img, &mut sample_rng(seed, 1, 2));
            assert_eq!(out.dimensions(), img.dimensions());
        }
        let a = all.apply(&img, &mut sample_rng(7, 3, 11));
        let b = all.apply(&img, &mut sample_rng(7, 3, 11));
        assert_eq!(a, b);
        assert_ne!(a, all.apply(&img, &mut sample_rng(8, 3, 11)));
        assert_ne!(a, all.apply(&img, &mut sample_rng(7, 4, 11)));
        assert_ne!(a, all.apply(&img, &mut sample_rng(7, 3, 12)));
        // Tiny and degenerate images do not panic.
        for (w, h) in [(1, 1), (1, 9), (9, 1), (2, 2)] {
            let t = test_image(w, h);
            assert_eq!(all.apply(&t, &mut sample_rng(0, 0, 0)).dimensions(), (w, h));
        }
        // Unvalidated, out-of-range settings are clamped, not a panic.
        let wild = Augment {
            hflip: true,
            rotation_deg: f32::NAN,
            zoom: 5.0,
            width_shift: -3.0,
            height_shift: f32::INFINITY,
            random_resized_crop: Some((2.0, -1.0)),
            color_jitter: 9.0,
            randaugment: Some((200, 255)),
            cutout: 7.0,
        };
        assert_eq!(wild.apply(&img, &mut sample_rng(0, 0, 0)).dimensions(), (33, 21));
    }

    #[test]
    fn jitter_with_unit_factors_is_identity() {
        let mut img = test_image(9, 9);
        let orig = img.clone();
        jitter(&mut img, 1.0, 1.0, 1.0);
        assert_eq!(img, orig);
    }

    /// RandAugment changes images, reproducibly from the generator; every operation keeps the
    /// size; cutout greys a square of the asked side.
    #[test]
    fn randaugment_and_cutout() {
        let img = test_image(32, 24);
        let a: Augment = "randaugment:2:10".parse().unwrap();
        let views: Vec<RgbImage> = (0..8).map(|i| a.apply(&img, &mut sample_rng(5, 0, i))).collect();
        assert!(views.iter().any(|v| *v != img), "eight draws left every image unchanged");
        assert_eq!(a.apply(&img, &mut sample_rng(5, 0, 3)), views[3], "same generator, same view");
        for op in RANDAUGMENT_OPS {
            let out = rand_op(&img, op, 1.0, &mut sample_rng(1, 2, 3));
            assert_eq!(out.dimensions(), img.dimensions(), "{op}");
            if !matches!(op, "identity") {
                assert_ne!(out, img, "{op} at full magnitude changed nothing");
            }
        }
        let mut plain = RgbImage::from_pixel(20, 20, image::Rgb([10, 20, 30]));
        cutout(&mut plain, 0.5, &mut sample_rng(0, 0, 0));
        let grey = plain.pixels().filter(|p| p.0 == [128, 128, 128]).count();
        assert!((25..=100).contains(&grey), "a 10×10 square (clipped at the border): {grey} grey pixels");
    }

    #[test]
    fn parse_display_round_trip() {
        let k: Augment = "keras".parse().unwrap();
        assert_eq!(k, Augment::keras());
        assert_eq!(k.to_string(), "flip,rotate:30,zoom:0.3,shift:0.3");
        assert_eq!("none".parse::<Augment>().unwrap(), Augment::default());
        assert_eq!(Augment::default().to_string(), "none");
        let full: Augment = "flip, rotate:15,zoom:0.25,wshift:0.2,hshift:0.1,crop:0.5-1.0,jitter:0.2"
            .parse()
            .unwrap();
        assert_eq!(
            full,
            Augment {
                hflip: true,
                rotation_deg: 15.0,
                zoom: 0.25,
                width_shift: 0.2,
                height_shift: 0.1,
                random_resized_crop: Some((0.5, 1.0)),
                color_jitter: 0.2,
                ..Augment::default()
            }
        );
        let strong: Augment = "flip,shift:0.125,randaugment:2:10,cutout:0.5".parse().unwrap();
        assert_eq!((strong.randaugment, strong.cutout), (Some((2, 10)), 0.5));
        for a in [strong, k, full, Augment::default(), "jitter:0.1".parse().unwrap(), "crop:0.08-1".parse().unwrap()] {
            let s = a.to_string();
            assert_eq!(s.parse::<Augment>().unwrap(), a, "{s}");
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), a);
        }
        assert_eq!("keras,rotate:10".parse::<Augment>().unwrap().rotation_deg, 10.0);
        assert!(serde_json::from_str::<Augment>(r#"{"hflip":true,"typo":1}"#).is_err());
        assert_eq!(serde_json::from_str::<Augment>(r#"{"hflip":true}"#).unwrap().hflip, true);
    }

    #[test]
    fn bad_specs_error() {
        for bad in [
            "", "rotate", "rotate:abc", "zoom:1.5", "zoom:1", "shift:-0.1", "flip:1", "crop:0.5",
            "crop:0-1", "crop:0.9-0.5", "jitter:2", "spin:3", "none,flip", "rotate:200", "rotate:nan",
            "randaugment", "randaugment:2", "randaugment:0:10", "randaugment:2:11", "randaugment:15:5", "cutout:1.5",
        ] {
            match bad.parse::<Augment>() {
                Err(GraftError::InvalidSetting { setting, value, reason }) => {
                    assert_eq!(setting, "augment");
                    assert_eq!(value, bad);
                    assert!(reason.contains("accepted"), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let err = "flip,spin:3".parse::<Augment>().unwrap_err().to_string();
        assert!(err.contains("unknown item `spin:3`"), "{err}");
    }
}
