//! Decoding images and preparing them the way a model was trained to see them.
//!
//! Resizing reproduces PIL's `Image.resize(..., BILINEAR)` exactly (separable triangle filter
//! whose support widens when shrinking, 22-bit fixed-point weights, rounding to 8 bits after
//! each pass), because the reference outputs — and most PyTorch pipelines — use PIL.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::{GraftError, Result};

/// How images are cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Crop {
    /// The largest centred square, then resize to `size`×`size`.
    CentreSquare,
    /// The whole image resized to `size`×`size`, aspect ratio not kept (Keras/PIL
    /// `img.resize((size, size))`).
    Stretch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interpolation {
    /// PIL bilinear (antialiased when shrinking).
    Bilinear,
}

/// A model's input preparation; stored with the model and in every run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Side of the square input in pixels.
    pub size: u32,
    pub crop: Crop,
    pub interpolation: Interpolation,
    /// Per-channel mean and std on the 0–255 scale: input = (pixel − mean) / std.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    pub fn centre_square(size: u32, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self { size, crop: Crop::CentreSquare, interpolation: Interpolation::Bilinear, mean, std }
    }

    pub fn stretch(size: u32, mean: [f32; 3], std: [f32; 3]) -> Self {
        Self { size, crop: Crop::Stretch, interpolation: Interpolation::Bilinear, mean, std }
    }

    /// Decoded RGB image → normalised CHW floats, length 3·size².
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        self.normalize(&self.crop_resize(image))
    }

    /// The geometric part: the largest centred square (or the whole image for
    /// [`Crop::Stretch`]), resized to `size`×`size`.
    pub fn crop_resize(&self, image: &RgbImage) -> RgbImage {
        if self.crop == Crop::Stretch {
            return resize_bilinear(image, self.size, self.size);
        }
        let (w, h) = image.dimensions();
        let side = w.min(h);
        let (left, top) = ((w - side) / 2, (h - side) / 2);
        let square = image::imageops::crop_imm(image, left, top, side, side).to_image();
        resize_bilinear(&square, self.size, self.size)
    }

    /// The numeric part, on an image already `size`×`size`: RGB → (x − mean) / std, CHW.
    pub fn normalize(&self, image: &RgbImage) -> Vec<f32> {
        let plane = (image.width() * image.height()) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (px[c] as f32 - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// What graft agrees to decode. Checked against the image's header, before any pixel buffer
/// exists, so a small file claiming enormous dimensions (a decompression bomb) costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height.
    pub max_pixels: u64,
}

impl ImageLimits {
    /// 50 megapixels: any camera photo, far below what fits in memory.
    pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

    /// Largest buffer a decoder may allocate: the full image at 16 bits × 4 channels, plus
    /// slack for decoder state.
    pub fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8).saturating_add(64 << 20)
    }
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self { max_pixels: Self::DEFAULT_MAX_PIXELS }
    }
}

static LIMITS: std::sync::RwLock<ImageLimits> = std::sync::RwLock::new(ImageLimits { max_pixels: ImageLimits::DEFAULT_MAX_PIXELS });

/// The limits [`decode`] applies, for the whole process (the CLI sets them from
/// `--max-image-pixels` / `GRAFT_MAX_IMAGE_PIXELS`).
pub fn set_limits(limits: ImageLimits) {
    *LIMITS.write().unwrap_or_else(|e| e.into_inner()) = limits;
}

/// The process-wide limits (see [`set_limits`]).
pub fn limits() -> ImageLimits {
    *LIMITS.read().unwrap_or_else(|e| e.into_inner())
}

/// Decodes any supported image file (png, jpeg, bmp, gif, webp, tiff) to RGB, whatever its
/// channels: grey is replicated, alpha dropped, 16-bit scaled down. Refuses images over the
/// process-wide [`limits`] before decoding them.
pub fn decode(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path).map_err(|e| GraftError::io(path, e))?;
    decode_from(path, reader, &limits())
}

/// [`decode`] for a file already in memory, with explicit limits; `path` only names it in errors.
pub fn decode_bytes(path: &Path, bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage> {
    decode_from(path, image::ImageReader::new(std::io::Cursor::new(bytes)), limits)
}

fn decode_from<R: std::io::BufRead + std::io::Seek>(path: &Path, reader: image::ImageReader<R>, limits: &ImageLimits) -> Result<RgbImage> {
    use image::ImageDecoder;
    let bad = |reason: String| GraftError::Image { path: path.to_path_buf(), reason };
    let mut reader = reader.with_guessed_format().map_err(|e| GraftError::io(path, e))?;
    if reader.format().is_none() {
        return Err(bad("not a recognised image format".into()));
    }
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_alloc());
    reader.limits(decoder_limits);
    // Reads the header only.
    let decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if pixels > limits.max_pixels {
        return Err(bad(format!(
            "{width}×{height} is {pixels} pixels, over the limit of {} (raise it with --max-image-pixels or GRAFT_MAX_IMAGE_PIXELS)",
            limits.max_pixels
        )));
    }
    if pixels == 0 {
        return Err(bad("image has no pixels".into()));
    }
    let image = image::DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    Ok(image.to_rgb8())
}

/// Decodes and preprocesses one file.
pub fn load(path: &Path, preprocess: &Preprocess) -> Result<Vec<f32>> {
    Ok(preprocess.apply(&decode(path)?))
}

/// Stacks preprocessed CHW images into a [N, 3, size, size] tensor.
pub fn batch(images: &[Vec<f32>], size: u32, device: &Device) -> Tensor<4> {
    let s = size as usize;
    let data: Vec<f32> = images.iter().flat_map(|i| i.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [images.len(), 3, s, s]), device)
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights of PIL's bilinear resampling along one axis: for each output index, the
/// first input index and the weights of the inputs from there.
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // bilinear support 1.0, widened when shrinking
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                    if t < 1.0 { 1.0 - t } else { 0.0 }
                })
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|w| {
                    let k = if total != 0.0 { w / total } else { 0.0 };
                    let scaled = k * (1i64 << PRECISION_BITS) as f64;
                    (if k < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i64
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL-exact bilinear resize: horizontal pass, round to 8 bits, vertical pass.
pub fn resize_bilinear(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = src.dimensions();
    let half = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if sw == width {
        src.clone()
    } else {
        let coeffs = coefficients(sw, width);
        let mut out = RgbImage::new(width, sh);
        for y in 0..sh {
            for (x, (start, weights)) in coeffs.iter().enumerate() {
                let mut acc = [half; 3];
                for (i, w) in weights.iter().enumerate() {
                    let px = src.get_pixel((start + i) as u32, y);
                    for c in 0..3 {
                        acc[c] += px[c] as i64 * w;
                    }
                }
                out.put_pixel(x as u32, y, image::Rgb([clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]));
            }
        }
        out
    };
    if sh == height {
        return horizontal;
    }
    let coeffs = coefficients(sh, height);
    let mut out = RgbImage::new(width, height);
    for (y, (start, weights)) in coeffs.iter().enumerate() {
        for x in 0..width {
            let mut acc = [half; 3];
            for (i, w) in weights.iter().enumerate() {
                let px = horizontal.get_pixel(x, (start + i) as u32);
                for c in 0..3 {
                    acc[c] += px[c] as i64 * w;
                }
            }
            out.put_pixel(x, y as u32, image::Rgb([clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_a_flat_image_flat() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([10, 200, 77]));
        let out = resize_bilinear(&src, 11, 5);
        assert!(out.pixels().all(|p| p.0 == [10, 200, 77]));
    }

    #[test]
    fn centre_square_shapes_and_normalises() {
        let src = RgbImage::from_pixel(300, 200, image::Rgb([255, 127, 0]));
        let p = Preprocess::centre_square(224, [127.0; 3], [128.0; 3]);
        let out = p.apply(&src);
        assert_eq!(out.len(), 3 * 224 * 224);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[224 * 224], 0.0);
        assert_eq!(out[2 * 224 * 224], -127.0 / 128.0);
    }
}
