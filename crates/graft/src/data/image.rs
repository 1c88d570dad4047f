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
    /// torchvision's eval transforms: the shorter side resized to `shorter` (the longer to
    /// `int(shorter · long / short)`), then the centred `size`×`size` crop
    /// (`Resize(shorter)`, `CenterCrop(size)`; offsets `round((side − size) / 2)`, halves to
    /// even as Python rounds).
    ResizeCentre { shorter: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interpolation {
    /// PIL bilinear (antialiased when shrinking).
    Bilinear,
    /// PIL bicubic (Keys' cubic, a = −0.5; antialiased when shrinking), as timm's
    /// `interpolation: bicubic` configs resize.
    Bicubic,
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
            return resize(image, self.size, self.size, self.interpolation);
        }
        if let Crop::ResizeCentre { shorter } = self.crop {
            return resize_centre(image, shorter, self.size, self.interpolation);
        }
        let (w, h) = image.dimensions();
        let side = w.min(h);
        let (left, top) = ((w - side) / 2, (h - side) / 2);
        let square = image::imageops::crop_imm(image, left, top, side, side).to_image();
        resize(&square, self.size, self.size, self.interpolation)
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
/// A FIFO, device or socket is refused rather than read (see [`crate::fsutil::open_regular`]).
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_IMAGE_FILE_BYTES)?;
    decode_bytes(path, &bytes, &limits())
}

/// [`decode`] for a file already in memory, with explicit limits; `path` only names it in errors.
/// A PNG's ICC profile, text and EXIF chunks are dropped unread
/// ([`crate::limits::PNG_DROPPED_CHUNKS`]); a JPEG without its end-of-image marker after the
/// last scan (a truncated file, which the decoder would fill with grey) is refused.
pub fn decode_bytes(path: &Path, bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage> {
    let bad = |reason: &str| GraftError::Image { path: path.to_path_buf(), reason: reason.into() };
    if bytes.starts_with(b"\xFF\xD8") && !jpeg_is_complete(bytes) {
        return Err(bad("truncated JPEG: no end-of-image marker after the last scan"));
    }
    if bytes.starts_with(PNG_SIGNATURE) {
        let stripped = strip_png_chunks(bytes).ok_or_else(|| bad("truncated or malformed PNG: a chunk runs past the end of the file"))?;
        return decode_from(path, image::ImageReader::new(std::io::Cursor::new(stripped.as_slice())), limits);
    }
    decode_from(path, image::ImageReader::new(std::io::Cursor::new(bytes)), limits)
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The PNG without the chunks graft never uses ([`crate::limits::PNG_DROPPED_CHUNKS`]), or
/// `None` when a chunk's length runs past the end of the data. Stops after `IEND`.
fn strip_png_chunks(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(PNG_SIGNATURE);
    let mut at = PNG_SIGNATURE.len();
    while at < bytes.len() {
        let header = bytes.get(at..at + 8)?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let end = at.checked_add(12)?.checked_add(len)?;
        let chunk = bytes.get(at..end)?;
        if !crate::limits::PNG_DROPPED_CHUNKS.iter().any(|d| d.as_slice() == kind) {
            out.extend_from_slice(chunk);
        }
        at = end;
        if kind == b"IEND" {
            break;
        }
    }
    Some(out)
}

/// Whether a JPEG holds an end-of-image marker (FF D9) after its last start-of-scan (FF DA).
/// Entropy-coded data never holds FF followed by D9 or DA (an FF data byte is stuffed with
/// 00), and a thumbnail's markers come before the main image's scans, so a file cut anywhere
/// in or before its last scan fails this.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    matches!((last_sos, last_eoi), (Some(s), Some(e)) if e > s)
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

/// torchvision's `CenterCrop(size)(Resize(shorter)(image))` on a PIL image: the shorter side
/// to `shorter`, the longer to `int(shorter · long / short)`, PIL bilinear or bicubic; then the
/// centred square, offset `round((side − size) / 2)` (Python's round, halves to even), padded
/// with black where the resized image is smaller than `size` (as `CenterCrop` pads).
fn resize_centre(image: &RgbImage, shorter: u32, size: u32, interpolation: Interpolation) -> RgbImage {
    let (w, h) = image.dimensions();
    let long = |l: u32, s: u32| ((u64::from(shorter) * u64::from(l)) / u64::from(s.max(1))).max(1) as u32;
    let (rw, rh) = if w <= h { (shorter, long(h, w)) } else { (long(w, h), shorter) };
    let resized = resize(image, rw, rh, interpolation);
    // Python's round((side − size) / 2): x.5 goes to the even neighbour.
    let offset = |side: u32| -> i64 {
        let twice = i64::from(side) - i64::from(size);
        let (q, odd) = (twice.div_euclid(2), twice.rem_euclid(2) == 1);
        if odd && q % 2 != 0 { q + 1 } else { q }
    };
    let (left, top) = (offset(rw), offset(rh));
    let mut out = RgbImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let (sx, sy) = (i64::from(x) + left, i64::from(y) + top);
            if (0..i64::from(rw)).contains(&sx) && (0..i64::from(rh)).contains(&sy) {
                out.put_pixel(x, y, *resized.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's filters: the kernel at distance `t` (in input pixels, scaled when shrinking) and its
/// support (`Imaging.h`'s `bilinear_filter`, `bicubic_filter` with a = −0.5).
fn filter(interpolation: Interpolation, t: f64) -> f64 {
    let t = t.abs();
    match interpolation {
        Interpolation::Bilinear => if t < 1.0 { 1.0 - t } else { 0.0 },
        Interpolation::Bicubic => {
            const A: f64 = -0.5;
            if t < 1.0 {
                ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
            } else if t < 2.0 {
                (((t - 5.0) * t + 8.0) * t - 4.0) * A
            } else {
                0.0
            }
        }
    }
}

/// Fixed-point weights of PIL's resampling along one axis: for each output index, the first
/// input index and the weights of the inputs from there.
fn coefficients(in_size: u32, out_size: u32, interpolation: Interpolation) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let radius = match interpolation {
        Interpolation::Bilinear => 1.0,
        Interpolation::Bicubic => 2.0,
    };
    let support = radius * filter_scale; // widened when shrinking
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| filter(interpolation, (x as f64 - center + 0.5) / filter_scale))
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
    resize(src, width, height, Interpolation::Bilinear)
}

/// PIL-exact resize (`Image.resize(…, BILINEAR or BICUBIC)`): horizontal pass, round to 8
/// bits, vertical pass.
pub fn resize(src: &RgbImage, width: u32, height: u32, interpolation: Interpolation) -> RgbImage {
    let (sw, sh) = src.dimensions();
    let half = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if sw == width {
        src.clone()
    } else {
        let coeffs = coefficients(sw, width, interpolation);
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
    let coeffs = coefficients(sh, height, interpolation);
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

    fn encode(format: image::ImageFormat) -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]));
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn truncated_jpeg_and_png_are_errors() {
        let limits = ImageLimits::default();
        let jpeg = encode(image::ImageFormat::Jpeg);
        assert_eq!(decode_bytes(Path::new("ok.jpg"), &jpeg, &limits).unwrap().dimensions(), (64, 48));
        // Trailing bytes after EOI are allowed.
        let mut padded = jpeg.clone();
        padded.extend([0u8; 7]);
        assert!(decode_bytes(Path::new("padded.jpg"), &padded, &limits).is_ok());
        for cut in [jpeg.len() / 2, jpeg.len() - 2, jpeg.len() - 1] {
            let err = decode_bytes(Path::new("cut.jpg"), &jpeg[..cut], &limits).unwrap_err().to_string();
            assert!(err.contains("cut.jpg") && err.contains("truncated JPEG"), "{cut}: {err}");
        }
        let png = encode(image::ImageFormat::Png);
        assert!(decode_bytes(Path::new("ok.png"), &png, &limits).is_ok());
        for cut in [png.len() / 2, png.len() - 13] {
            assert!(decode_bytes(Path::new("cut.png"), &png[..cut], &limits).is_err(), "{cut}");
        }
    }

    /// A PNG whose iCCP chunk is a deflate stream of 1 GiB of zeros (about 1 MB compressed):
    /// dropped unread, the image decodes.
    #[test]
    fn png_icc_profile_is_dropped_unread() {
        use std::io::Write;
        let png = encode(image::ImageFormat::Png);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            z.write_all(&zeros).unwrap();
        }
        let mut data = b"bomb\0\0".to_vec();
        data.extend(z.finish().unwrap());
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend(b"iCCP");
        chunk.extend(&data);
        chunk.extend(crc32fast::hash(&chunk[4..]).to_be_bytes());
        // After IHDR: signature (8) + IHDR chunk (25).
        let mut bomb = png[..33].to_vec();
        bomb.extend(&chunk);
        bomb.extend(&png[33..]);
        let stripped = strip_png_chunks(&bomb).unwrap();
        assert_eq!(stripped, png);
        let img = decode_bytes(Path::new("icc.png"), &bomb, &ImageLimits::default()).unwrap();
        assert_eq!(img.dimensions(), (64, 48));
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
