//! PNG plots drawn in pure Rust: training curves and confusion matrices.
//!
//! graft runs on headless training machines where matplotlib may not exist, so plots are
//! rasterised directly into an [`image::RgbImage`] with a tiny built-in 5×7 bitmap font
//! (drawn at 2× so it stays readable). Only what graft needs is implemented: anti-aliased
//! polylines, filled rectangles, horizontal and vertical text.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use crate::fsutil::write_atomic;
use crate::{GraftError, Result};

/// One named curve of a line plot, e.g. `"train"` loss per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points are skipped (they break the line).
    pub points: Vec<(f64, f64)>,
}

const LINE_WIDTH: u32 = 800;
const LINE_HEIGHT: u32 = 500;
/// Text scale: 5×7 glyphs become 10×14 pixels, 12 pixels apart.
const SCALE: u32 = 2;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const AXIS: Rgb<u8> = Rgb([60, 60, 60]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);

/// Matplotlib's "tab10" palette: distinct, colour-blind friendly enough, familiar to users.
const PALETTE: [Rgb<u8>; 10] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
    Rgb([227, 119, 194]),
    Rgb([127, 127, 127]),
    Rgb([188, 189, 34]),
    Rgb([23, 190, 207]),
];

/// The colour of series `i` in [`line_plot`].
pub fn series_color(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()].0
}

// ---------------------------------------------------------------------------------------------
// Line plot
// ---------------------------------------------------------------------------------------------

/// Draws `series` as lines on shared axes with tick labels and a legend, and saves an
/// 800×500 PNG at `path`. Empty, one-point, constant and non-finite data all produce a plot.
pub fn line_plot(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    save_png(path, &render_line_plot(title, x_label, series))
}

/// [`line_plot`]'s picture as PNG bytes (for pages that inline their images).
pub fn line_plot_png(title: &str, x_label: &str, series: &[Series]) -> Result<Vec<u8>> {
    png_bytes(Path::new(title), &render_line_plot(title, x_label, series))
}

/// The plot area inside the image, in pixels.
#[derive(Debug, Clone, Copy)]
struct Rect {
    left: i32,
    top: i32,
    right: i32,
    bottom: i32,
}

impl Rect {
    fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.left && x <= self.right && y >= self.top && y <= self.bottom
    }
}

fn render_line_plot(title: &str, x_label: &str, series: &[Series]) -> RgbImage {
    let mut img = RgbImage::from_pixel(LINE_WIDTH, LINE_HEIGHT, WHITE);
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let points = || series.iter().flat_map(|s| s.points.iter().filter(finite));
    let integer_x = points().all(|p| p.0.fract() == 0.0);
    let x_axis = Axis::new(range(points().map(|p| p.0)), integer_x);
    let y_axis = Axis::new(range(points().map(|p| p.1)), false);

    let y_labels: Vec<String> = y_axis.ticks.iter().map(|&v| y_axis.format(v)).collect();
    let y_label_w = y_labels.iter().map(|l| text_width(l, SCALE)).max().unwrap_or(0) as i32;
    let area = Rect { left: 16 + y_label_w + 8, top: 44, right: LINE_WIDTH as i32 - 24, bottom: LINE_HEIGHT as i32 - 64 };

    draw_text_centered(&mut img, LINE_WIDTH as i32 / 2, 14, &fit(title, LINE_WIDTH - 20), SCALE, BLACK);
    draw_axes(&mut img, area, &x_axis, &y_axis, &y_labels);
    let label_y = area.bottom + 36;
    draw_text_centered(&mut img, (area.left + area.right) / 2, label_y, &fit(x_label, LINE_WIDTH - 20), SCALE, BLACK);

    let to_px = |(x, y): (f64, f64)| {
        let px = area.left as f64 + x_axis.frac(x) * (area.right - area.left) as f64;
        let py = area.bottom as f64 - y_axis.frac(y) * (area.bottom - area.top) as f64;
        (px, py)
    };
    for (i, s) in series.iter().enumerate() {
        draw_series(&mut img, area, &s.points, PALETTE[i % PALETTE.len()], to_px);
    }
    let pixels: Vec<(f64, f64)> = points().map(|&p| to_px(p)).collect();
    draw_legend(&mut img, area, series, &pixels);
    img
}

/// Smallest and largest value, or `None` when there are none.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A linear axis whose ends are multiples of a "nice" tick step (1, 2 or 5 × 10^k).
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

impl Axis {
    /// About this many ticks are aimed for; fewer when the data range is small.
    const TARGET_TICKS: f64 = 6.0;

    /// `integer` keeps ticks on whole numbers (epochs are never 2.5).
    fn new(data: Option<(f64, f64)>, integer: bool) -> Axis {
        let (mut lo, mut hi) = data.unwrap_or((0.0, 1.0));
        if hi - lo <= 0.0 {
            // A constant series: open the range around the value instead of dividing by zero.
            let pad = if integer { 1.0 } else if lo != 0.0 { lo.abs() * 0.1 } else { 1.0 };
            lo -= pad;
            hi += pad;
        }
        let mut step = nice_step((hi - lo) / Self::TARGET_TICKS);
        if integer {
            step = step.max(1.0);
        }
        let (tlo, thi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        let count = ((thi - tlo) / step).round();
        if !(step.is_finite() && tlo.is_finite() && thi.is_finite() && count <= 50.0 && thi > tlo) {
            // Ranges near f64::MAX overflow the arithmetic above; two plain ticks still work.
            return Axis { lo, hi, step: hi - lo, ticks: vec![lo, hi] };
        }
        let ticks = (0..=count as usize).map(|i| tlo + i as f64 * step).collect();
        Axis { lo: tlo, hi: thi, step, ticks }
    }

    /// Position of `v` along the axis: 0 at `lo`, 1 at `hi`.
    fn frac(&self, v: f64) -> f64 {
        let f = (v - self.lo) / (self.hi - self.lo);
        if f.is_finite() { f } else { 0.5 }
    }

    /// A tick label with just enough decimals to tell neighbouring ticks apart.
    fn format(&self, v: f64) -> String {
        let v = if v.abs() < self.step.abs() * 1e-9 { 0.0 } else { v }; // no "-0.0"
        let big = self.lo.abs().max(self.hi.abs());
        if !(big < 1e6 && self.step >= 1e-4) && v != 0.0 {
            return format!("{v:.1e}");
        }
        let decimals = (0..=6)
            .find(|&d| {
                let scaled = self.step * 10f64.powi(d);
                (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
            })
            .unwrap_or(6) as usize;
        format!("{v:.decimals$}")
    }
}

/// Rounds `raw` up to 1, 2 or 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return raw;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn draw_axes(img: &mut RgbImage, area: Rect, x_axis: &Axis, y_axis: &Axis, y_labels: &[String]) {
    let (w, h) = ((area.right - area.left) as f64, (area.bottom - area.top) as f64);
    for (tick, label) in y_axis.ticks.iter().zip(y_labels) {
        let y = (area.bottom as f64 - y_axis.frac(*tick) * h).round() as i32;
        fill_rect(img, area.left, y, area.right, y, GRID);
        fill_rect(img, area.left - 5, y, area.left - 1, y, AXIS);
        let lw = text_width(label, SCALE) as i32;
        draw_text(img, area.left - 8 - lw, y - 7, label, SCALE, BLACK);
    }
    for tick in &x_axis.ticks {
        let x = (area.left as f64 + x_axis.frac(*tick) * w).round() as i32;
        fill_rect(img, x, area.top, x, area.bottom, GRID);
        fill_rect(img, x, area.bottom + 1, x, area.bottom + 5, AXIS);
        draw_text_centered(img, x, area.bottom + 10, &x_axis.format(*tick), SCALE, BLACK);
    }
    // Frame drawn last so grid lines do not cover it.
    fill_rect(img, area.left, area.top, area.right, area.top, AXIS);
    fill_rect(img, area.left, area.bottom, area.right, area.bottom, AXIS);
    fill_rect(img, area.left, area.top, area.left, area.bottom, AXIS);
    fill_rect(img, area.right, area.top, area.right, area.bottom, AXIS);
}

/// Draws one series as a polyline; non-finite points break the line. Markers are drawn on
/// short series (so each epoch is visible) and on isolated points (which have no line).
fn draw_series(img: &mut RgbImage, area: Rect, points: &[(f64, f64)], color: Rgb<u8>, to_px: impl Fn((f64, f64)) -> (f64, f64)) {
    let ok = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let short = points.iter().filter(|p| ok(p)).count() <= 40;
    for (i, p) in points.iter().enumerate() {
        if !ok(p) {
            continue;
        }
        let a = to_px(*p);
        let next = points.get(i + 1).filter(|q| ok(q));
        if let Some(q) = next {
            draw_segment(img, area, a, to_px(*q), 2.5, color);
        }
        let prev_ok = i > 0 && ok(&points[i - 1]);
        if short || (next.is_none() && !prev_ok) {
            draw_segment(img, area, a, a, 7.0, color);
        }
    }
}

/// Draws the legend in whichever corner of the plot area covers the fewest data points.
fn draw_legend(img: &mut RgbImage, area: Rect, series: &[Series], data_px: &[(f64, f64)]) {
    if series.is_empty() {
        return;
    }
    let names: Vec<String> = series.iter().map(|s| fit(&s.name, 300)).collect();
    let name_w = names.iter().map(|n| text_width(n, SCALE)).max().unwrap_or(0) as i32;
    let (row_h, pad, swatch) = (20, 8, 24);
    let (w, h) = (pad + swatch + 8 + name_w + pad, pad + row_h * names.len() as i32 - 4 + pad);
    let corners = [
        (area.right - 10 - w, area.top + 10),
        (area.left + 10, area.top + 10),
        (area.right - 10 - w, area.bottom - 10 - h),
        (area.left + 10, area.bottom - 10 - h),
    ];
    let covered = |&(x, y): &(i32, i32)| {
        data_px.iter().filter(|p| p.0 >= x as f64 && p.0 <= (x + w) as f64 && p.1 >= y as f64 && p.1 <= (y + h) as f64).count()
    };
    let (x, y) = corners.iter().copied().min_by_key(covered).unwrap_or(corners[0]);
    fill_rect(img, x, y, x + w, y + h, WHITE);
    for (x0, y0, x1, y1) in [(x, y, x + w, y), (x, y + h, x + w, y + h), (x, y, x, y + h), (x + w, y, x + w, y + h)] {
        fill_rect(img, x0, y0, x1, y1, AXIS);
    }
    for (i, name) in names.iter().enumerate() {
        let row_y = y + pad + i as i32 * row_h;
        let color = PALETTE[i % PALETTE.len()];
        fill_rect(img, x + pad, row_y + 6, x + pad + swatch, row_y + 8, color);
        draw_text(img, x + pad + swatch + 8, row_y, name, SCALE, BLACK);
    }
}

// ---------------------------------------------------------------------------------------------
// Confusion matrix
// ---------------------------------------------------------------------------------------------

/// Longest class label drawn; longer ones are cut to keep the grid large.
const MAX_LABEL_CHARS: usize = 12;

/// Draws `matrix` (rows: true class, columns: predicted class) as a heatmap with the count in
/// each cell and class names on both axes, and saves it as PNG at `path`.
///
/// Cells are shaded by their share of the row (per-class recall), so a rare class that is
/// always confused stands out as clearly as a common one; the printed numbers are raw counts.
pub fn confusion_matrix_plot(path: &Path, labels: &[String], matrix: &[Vec<u64>]) -> Result<()> {
    let n = labels.len();
    let bad_shape = matrix.len() != n || matrix.iter().any(|row| row.len() != n);
    if n == 0 || bad_shape {
        let shape = matrix.iter().map(|r| r.len().to_string()).collect::<Vec<_>>().join(",");
        return Err(GraftError::Data {
            path: path.to_path_buf(),
            reason: format!("confusion matrix needs {n}×{n} counts for {n} labels, got rows of lengths [{shape}]"),
        });
    }
    save_png(path, &render_confusion(labels, matrix))
}

fn render_confusion(labels: &[String], matrix: &[Vec<u64>]) -> RgbImage {
    let n = labels.len();
    // Cells shrink with the class count; beyond 200 classes the image would get huge.
    let cell = if n <= 200 { (800 / n as u32).clamp(9, 64) } else { (1800 / n as u32).max(1) };
    // Labels need a little air between neighbours (glyphs are 7 rows plus a descender).
    let label_scale = if cell >= 20 { 2 } else if cell >= 9 { 1 } else { 0 };
    let names: Vec<String> = labels.iter().map(|l| truncate(l, MAX_LABEL_CHARS)).collect();
    let label_len = if label_scale == 0 { 0 } else { names.iter().map(|l| text_width(l, label_scale)).max().unwrap_or(0) };
    let grid = n as u32 * cell;
    let title = "Confusion matrix";
    let (margin, axis_title) = (20u32, 24u32);
    let grid_left = margin + axis_title + label_len + 8;
    let grid_top = margin + 30 + axis_title + label_len + 8;
    let width = (grid_left + grid + margin).max(text_width(title, SCALE) + 2 * margin);
    let height = grid_top + grid + margin;
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    let (gl, gt, g, c) = (grid_left as i32, grid_top as i32, grid as i32, cell as i32);

    draw_text_centered(&mut img, width as i32 / 2, margin as i32 - 6, title, SCALE, BLACK);
    draw_text_centered(&mut img, gl + g / 2, margin as i32 + 30, "predicted", SCALE, BLACK);
    let true_w = text_width("true", SCALE) as i32;
    draw_text_up(&mut img, margin as i32, gt + g / 2 + true_w / 2, "true", SCALE, BLACK);

    for (i, name) in names.iter().enumerate().filter(|_| label_scale > 0) {
        let center = i as i32 * c + c / 2;
        let glyph_h = 7 * label_scale as i32;
        let w = text_width(name, label_scale) as i32;
        draw_text(&mut img, gl - 8 - w, gt + center - glyph_h / 2, name, label_scale, BLACK);
        draw_text_up(&mut img, gl + center - glyph_h / 2, gt - 8, name, label_scale, BLACK);
    }
    let widest = matrix.iter().flatten().max().map(|m| m.to_string()).unwrap_or_default();
    let count_scale = count_scale(&widest, c);
    for (r, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (col, &count) in row.iter().enumerate() {
            let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
            let (x, y) = (gl + col as i32 * c, gt + r as i32 * c);
            let bg = heat(share);
            fill_rect(&mut img, x, y, x + c - 1, y + c - 1, bg);
            if let Some(scale) = count_scale {
                draw_count(&mut img, x, y, c, count, scale, bg);
            }
        }
    }
    // Thin separators so neighbouring cells of equal shade stay distinguishable.
    if cell >= 9 {
        for k in 0..=n as i32 {
            fill_rect(&mut img, gl + k * c, gt, gl + k * c, gt + g, GRID);
            fill_rect(&mut img, gl, gt + k * c, gl + g, gt + k * c, GRID);
        }
    }
    img
}

/// The largest text scale at which `widest` fits in a cell, so all counts share one size;
/// `None` when even 1× does not fit (the shading alone must do).
fn count_scale(widest: &str, cell: i32) -> Option<u32> {
    [2, 1].into_iter().find(|&scale| {
        let (w, h) = (text_width(widest, scale) as i32, 7 * scale as i32);
        w + 4 <= cell && h + 4 <= cell
    })
}

/// Writes `count` centred in a cell, in black or white for contrast with the shading.
fn draw_count(img: &mut RgbImage, x: i32, y: i32, cell: i32, count: u64, scale: u32, bg: Rgb<u8>) {
    let text = count.to_string();
    let luma = 0.299 * bg[0] as f64 + 0.587 * bg[1] as f64 + 0.114 * bg[2] as f64;
    let color = if luma < 128.0 { WHITE } else { BLACK };
    let (w, h) = (text_width(&text, scale) as i32, 7 * scale as i32);
    draw_text(img, x + (cell - w) / 2, y + (cell - h) / 2, &text, scale, color);
}

/// White → dark blue ("Blues"), `share` in 0..=1.
fn heat(share: f64) -> Rgb<u8> {
    const STOPS: [(f64, [f64; 3]); 3] =
        [(0.0, [247.0, 251.0, 255.0]), (0.5, [107.0, 174.0, 214.0]), (1.0, [8.0, 48.0, 107.0])];
    let s = share.clamp(0.0, 1.0);
    let (i, j) = if s <= 0.5 { (0, 1) } else { (1, 2) };
    let t = (s - STOPS[i].0) / (STOPS[j].0 - STOPS[i].0);
    let mix = |k: usize| (STOPS[i].1[k] + (STOPS[j].1[k] - STOPS[i].1[k]) * t).round() as u8;
    Rgb([mix(0), mix(1), mix(2)])
}

// ---------------------------------------------------------------------------------------------
// Raster primitives
// ---------------------------------------------------------------------------------------------

/// Encodes to PNG in memory, then writes atomically so a viewer never sees half a file.
fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_atomic(path, &png_bytes(path, img)?)
}

/// `img` encoded as PNG in memory; `what` names it in the error.
pub fn png_bytes(what: &Path, img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)
        .map_err(|e| GraftError::Data { path: what.to_path_buf(), reason: format!("cannot encode PNG: {e}") })?;
    Ok(bytes)
}

/// Fills the inclusive rectangle, clipped to the image.
fn fill_rect(img: &mut RgbImage, x0: i32, y0: i32, x1: i32, y1: i32, color: Rgb<u8>) {
    let (w, h) = (img.width() as i32, img.height() as i32);
    for y in y0.max(0)..=y1.min(h - 1) {
        for x in x0.max(0)..=x1.min(w - 1) {
            img.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// An anti-aliased segment of `width` pixels with round caps (a disc when `a == b`), clipped to
/// `clip`. Coverage comes from each pixel's distance to the segment.
fn draw_segment(img: &mut RgbImage, clip: Rect, a: (f64, f64), b: (f64, f64), width: f64, color: Rgb<u8>) {
    let r = width / 2.0;
    let x0 = (a.0.min(b.0) - r - 1.0).floor().max(clip.left as f64) as i32;
    let x1 = (a.0.max(b.0) + r + 1.0).ceil().min(clip.right as f64) as i32;
    let y0 = (a.1.min(b.1) - r - 1.0).floor().max(clip.top as f64) as i32;
    let y1 = (a.1.max(b.1) + r + 1.0).ceil().min(clip.bottom as f64) as i32;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let coverage = (r + 0.5 - distance_to_segment((x as f64, y as f64), a, b)).clamp(0.0, 1.0);
            if coverage > 0.0 && clip.contains(x, y) {
                blend(img, x, y, color, coverage);
            }
        }
    }
}

fn distance_to_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    let (cx, cy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (cx * cx + cy * cy).sqrt()
}

fn blend(img: &mut RgbImage, x: i32, y: i32, color: Rgb<u8>, alpha: f64) {
    if x < 0 || y < 0 || x >= img.width() as i32 || y >= img.height() as i32 {
        return;
    }
    let px = img.get_pixel_mut(x as u32, y as u32);
    for k in 0..3 {
        px[k] = (px[k] as f64 * (1.0 - alpha) + color[k] as f64 * alpha).round() as u8;
    }
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

/// Glyph rows including the descender row; layout uses 7 (descenders may hang below).
const GLYPH_ROWS: i32 = 8;

/// Horizontal distance between glyph origins, in font pixels (5 wide + 1 space).
const ADVANCE: u32 = 6;

fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    if n == 0 { 0 } else { (n * ADVANCE - 1) * scale }
}

/// Cuts `text` to `max` characters, marking the cut with "..".
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(2)).collect();
    format!("{kept}..")
}

/// Cuts `text` so it is at most `max_px` wide at [`SCALE`].
fn fit(text: &str, max_px: u32) -> String {
    truncate(text, ((max_px / SCALE + 1) / ADVANCE) as usize)
}

/// Column bitmaps of the glyph for `c` (bit 0 = top row); `?` for anything outside ASCII.
fn glyph(c: char) -> &'static [u8; 5] {
    let code = c as u32;
    let index = if (32..=126).contains(&code) { code - 32 } else { '?' as u32 - 32 };
    &FONT[index as usize]
}

/// Draws `text` with its top-left corner at `(x, y)`.
fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, scale: u32, color: Rgb<u8>) {
    let s = scale as i32;
    for (i, c) in text.chars().enumerate() {
        let gx0 = x + i as i32 * ADVANCE as i32 * s;
        for (col, bits) in glyph(c).iter().enumerate() {
            for row in 0..GLYPH_ROWS {
                if bits >> row & 1 == 1 {
                    let (px, py) = (gx0 + col as i32 * s, y + row * s);
                    fill_rect(img, px, py, px + s - 1, py + s - 1, color);
                }
            }
        }
    }
}

/// Draws `text` horizontally centred on `cx`, top at `y`.
fn draw_text_centered(img: &mut RgbImage, cx: i32, y: i32, text: &str, scale: u32, color: Rgb<u8>) {
    draw_text(img, cx - text_width(text, scale) as i32 / 2, y, text, scale, color);
}

/// Draws `text` rotated 90° counter-clockwise (reading bottom to top), starting at the
/// bottom-left point `(x, bottom)`; used for the y-axis title and column labels.
fn draw_text_up(img: &mut RgbImage, x: i32, bottom: i32, text: &str, scale: u32, color: Rgb<u8>) {
    let s = scale as i32;
    for (i, c) in text.chars().enumerate() {
        for (col, bits) in glyph(c).iter().enumerate() {
            let along = i as i32 * ADVANCE as i32 + col as i32; // distance from the start
            for row in 0..GLYPH_ROWS {
                if bits >> row & 1 == 1 {
                    let (px, py) = (x + row * s, bottom - (along + 1) * s);
                    fill_rect(img, px, py, px + s - 1, py + s - 1, color);
                }
            }
        }
    }
}

/// Classic 5×7 font for ASCII 32..=126: five column bytes per glyph, bit 0 at the top.
/// g, j, p, q and y use bit 7 as a one-row descender below the baseline (row 6).
#[rustfmt::skip]
const FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00], // ' '
    [0x00, 0x00, 0x5F, 0x00, 0x00], // !
    [0x00, 0x07, 0x00, 0x07, 0x00], // "
    [0x14, 0x7F, 0x14, 0x7F, 0x14], // #
    [0x24, 0x2A, 0x7F, 0x2A, 0x12], // $
    [0x23, 0x13, 0x08, 0x64, 0x62], // %
    [0x36, 0x49, 0x55, 0x22, 0x50], // &
    [0x00, 0x05, 0x03, 0x00, 0x00], // '
    [0x00, 0x1C, 0x22, 0x41, 0x00], // (
    [0x00, 0x41, 0x22, 0x1C, 0x00], // )
    [0x14, 0x08, 0x3E, 0x08, 0x14], // *
    [0x08, 0x08, 0x3E, 0x08, 0x08], // +
    [0x00, 0x50, 0x30, 0x00, 0x00], // ,
    [0x08, 0x08, 0x08, 0x08, 0x08], // -
    [0x00, 0x60, 0x60, 0x00, 0x00], // .
    [0x20, 0x10, 0x08, 0x04, 0x02], // /
    [0x3E, 0x51, 0x49, 0x45, 0x3E], // 0
    [0x00, 0x42, 0x7F, 0x40, 0x00], // 1
    [0x42, 0x61, 0x51, 0x49, 0x46], // 2
    [0x21, 0x41, 0x45, 0x4B, 0x31], // 3
    [0x18, 0x14, 0x12, 0x7F, 0x10], // 4
    [0x27, 0x45, 0x45, 0x45, 0x39], // 5
    [0x3C, 0x4A, 0x49, 0x49, 0x30], // 6
    [0x01, 0x71, 0x09, 0x05, 0x03], // 7
    [0x36, 0x49, 0x49, 0x49, 0x36], // 8
    [0x06, 0x49, 0x49, 0x29, 0x1E], // 9
    [0x00, 0x36, 0x36, 0x00, 0x00], // :
    [0x00, 0x56, 0x36, 0x00, 0x00], // ;
    [0x08, 0x14, 0x22, 0x41, 0x00], // <
    [0x14, 0x14, 0x14, 0x14, 0x14], // =
    [0x00, 0x41, 0x22, 0x14, 0x08], // >
    [0x02, 0x01, 0x51, 0x09, 0x06], // ?
    [0x32, 0x49, 0x79, 0x41, 0x3E], // @
    [0x7E, 0x11, 0x11, 0x11, 0x7E], // A
    [0x7F, 0x49, 0x49, 0x49, 0x36], // B
    [0x3E, 0x41, 0x41, 0x41, 0x22], // C
    [0x7F, 0x41, 0x41, 0x22, 0x1C], // D
    [0x7F, 0x49, 0x49, 0x49, 0x41], // E
    [0x7F, 0x09, 0x09, 0x09, 0x01], // F
    [0x3E, 0x41, 0x49, 0x49, 0x7A], // G
    [0x7F, 0x08, 0x08, 0x08, 0x7F], // H
    [0x00, 0x41, 0x7F, 0x41, 0x00], // I
    [0x20, 0x40, 0x41, 0x3F, 0x01], // J
    [0x7F, 0x08, 0x14, 0x22, 0x41], // K
    [0x7F, 0x40, 0x40, 0x40, 0x40], // L
    [0x7F, 0x02, 0x0C, 0x02, 0x7F], // M
    [0x7F, 0x04, 0x08, 0x10, 0x7F], // N
    [0x3E, 0x41, 0x41, 0x41, 0x3E], // O
    [0x7F, 0x09, 0x09, 0x09, 0x06], // P
    [0x3E, 0x41, 0x51, 0x21, 0x5E], // Q
    [0x7F, 0x09, 0x19, 0x29, 0x46], // R
    [0x46, 0x49, 0x49, 0x49, 0x31], // S
    [0x01, 0x01, 0x7F, 0x01, 0x01], // T
    [0x3F, 0x40, 0x40, 0x40, 0x3F], // U
    [0x1F, 0x20, 0x40, 0x20, 0x1F], // V
    [0x3F, 0x40, 0x38, 0x40, 0x3F], // W
    [0x63, 0x14, 0x08, 0x14, 0x63], // X
    [0x07, 0x08, 0x70, 0x08, 0x07], // Y
    [0x61, 0x51, 0x49, 0x45, 0x43], // Z
    [0x00, 0x7F, 0x41, 0x41, 0x00], // [
    [0x02, 0x04, 0x08, 0x10, 0x20], // backslash
    [0x00, 0x41, 0x41, 0x7F, 0x00], // ]
    [0x04, 0x02, 0x01, 0x02, 0x04], // ^
    [0x40, 0x40, 0x40, 0x40, 0x40], // _
    [0x00, 0x01, 0x02, 0x04, 0x00], // `
    [0x20, 0x54, 0x54, 0x54, 0x78], // a
    [0x7F, 0x48, 0x44, 0x44, 0x38], // b
    [0x38, 0x44, 0x44, 0x44, 0x20], // c
    [0x38, 0x44, 0x44, 0x48, 0x7F], // d
    [0x38, 0x54, 0x54, 0x54, 0x18], // e
    [0x08, 0x7E, 0x09, 0x01, 0x02], // f
    [0x98, 0xA4, 0xA4, 0xA4, 0x7C], // g
    [0x7F, 0x08, 0x04, 0x04, 0x78], // h
    [0x00, 0x44, 0x7D, 0x40, 0x00], // i
    [0x40, 0x80, 0x84, 0x7D, 0x00], // j
    [0x7F, 0x10, 0x28, 0x44, 0x00], // k
    [0x00, 0x41, 0x7F, 0x40, 0x00], // l
    [0x7C, 0x04, 0x18, 0x04, 0x78], // m
    [0x7C, 0x08, 0x04, 0x04, 0x78], // n
    [0x38, 0x44, 0x44, 0x44, 0x38], // o
    [0xFC, 0x24, 0x24, 0x24, 0x18], // p
    [0x18, 0x24, 0x24, 0x24, 0xFC], // q
    [0x7C, 0x08, 0x04, 0x04, 0x08], // r
    [0x48, 0x54, 0x54, 0x54, 0x20], // s
    [0x04, 0x3F, 0x44, 0x40, 0x20], // t
    [0x3C, 0x40, 0x40, 0x20, 0x7C], // u
    [0x1C, 0x20, 0x40, 0x20, 0x1C], // v
    [0x3C, 0x40, 0x30, 0x40, 0x3C], // w
    [0x44, 0x28, 0x10, 0x28, 0x44], // x
    [0x9C, 0xA0, 0xA0, 0xA0, 0x7C], // y
    [0x44, 0x64, 0x54, 0x4C, 0x44], // z
    [0x00, 0x08, 0x36, 0x41, 0x00], // {
    [0x00, 0x00, 0x7F, 0x00, 0x00], // |
    [0x00, 0x41, 0x36, 0x08, 0x00], // }
    [0x08, 0x04, 0x08, 0x10, 0x08], // ~
];

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("graft-plot-{}-{name}.png", std::process::id()))
    }

    fn load(path: &Path) -> RgbImage {
        let bytes = std::fs::read(path).expect("read png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).expect("decode").to_rgb8()
    }

    fn has_color(img: &RgbImage, color: [u8; 3]) -> bool {
        img.pixels().any(|p| p.0 == color)
    }

    fn loss_series() -> Vec<Series> {
        let train = (1..=10).map(|e| (e as f64, 2.0 / e as f64)).collect();
        let val = (1..=10).map(|e| (e as f64, 2.2 / e as f64 + 0.05 * e as f64)).collect();
        vec![Series { name: "train".into(), points: train }, Series { name: "val".into(), points: val }]
    }

    #[test]
    fn line_plot_is_png_with_both_series() {
        let path = temp("loss");
        line_plot(&path, "loss", "epoch", &loss_series()).expect("plot");
        let img = load(&path);
        assert_eq!(img.dimensions(), (LINE_WIDTH, LINE_HEIGHT));
        assert!(has_color(&img, series_color(0)) && has_color(&img, series_color(1)));
        assert!(!has_color(&img, series_color(2)));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn degenerate_line_plots_do_not_panic() {
        let s = |points: Vec<(f64, f64)>| vec![Series { name: "s".into(), points }];
        let cases = [
            vec![],
            s(vec![]),
            s(vec![(1.0, 0.5)]),
            s(vec![(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]),
            s(vec![(0.0, 0.0), (0.0, 0.0)]),
            s(vec![(1.0, f64::NAN), (2.0, f64::INFINITY), (3.0, 1.0), (f64::NEG_INFINITY, 2.0)]),
            s(vec![(1.0, f64::NAN)]),
            s(vec![(-1e308, -1e308), (1e308, 1e308)]),
            s(vec![(0.0, 1e-12), (1.0, 2e-12)]),
            s(vec![(0.0, 1e9), (1.0, 3e9)]),
        ];
        let path = temp("degenerate");
        for (i, series) in cases.iter().enumerate() {
            line_plot(&path, "", "", series).unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(load(&path).dimensions(), (LINE_WIDTH, LINE_HEIGHT));
        }
        // A single finite point still shows up as a marker.
        line_plot(&path, "t", "x", &s(vec![(1.0, 0.5)])).unwrap();
        assert!(has_color(&load(&path), series_color(0)));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn axis_ticks_are_nice() {
        let a = Axis::new(Some((1.0, 10.0)), true);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 10.0, 2.0));
        assert_eq!(a.format(4.0), "4");
        let a = Axis::new(Some((0.13, 0.92)), false);
        assert_eq!((a.step, a.format(0.2)), (0.2, "0.2".to_string()));
        let a = Axis::new(Some((3.0, 3.0)), false);
        assert!(a.lo < 3.0 && a.hi > 3.0);
        let a = Axis::new(Some((-0.5, 0.5)), false);
        assert!(a.ticks.iter().all(|&t| a.format(t) != "-0.0"));
    }

    #[test]
    fn confusion_plot_handles_ten_classes() {
        let labels: Vec<String> = (0..10).map(|i| format!("class_with_long_name_{i}")).collect();
        let matrix: Vec<Vec<u64>> =
            (0..10).map(|r| (0..10).map(|c| if r == c { 90 + r as u64 } else { (r * c % 7) as u64 }).collect()).collect();
        let path = temp("confusion10");
        confusion_matrix_plot(&path, &labels, &matrix).expect("plot");
        let img = load(&path);
        assert!(img.width() >= 600 && img.height() >= 600, "{:?}", img.dimensions());
        assert!(has_color(&img, heat(0.0).0) && img.pixels().any(|p| p.0[2] > 100 && p.0[0] < 20));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn confusion_plot_degenerate_inputs() {
        let path = temp("confusion-degenerate");
        let err = confusion_matrix_plot(&path, &["a".into()], &[vec![1, 2]]).unwrap_err();
        assert!(matches!(err, GraftError::Data { .. }), "{err}");
        assert!(confusion_matrix_plot(&path, &[], &[]).is_err());
        confusion_matrix_plot(&path, &["only".into()], &[vec![0]]).expect("1 class, zero counts");
        confusion_matrix_plot(&path, &["a".into(), "é漢".into()], &[vec![u64::MAX, 0], vec![0, 0]]).expect("huge");
        let labels: Vec<String> = (0..300).map(|i| i.to_string()).collect();
        let matrix = vec![vec![1u64; 300]; 300];
        confusion_matrix_plot(&path, &labels, &matrix).expect("300 classes");
        assert!(load(&path).width() <= 2200);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let err = line_plot(Path::new("/proc/graft-cannot-write/x.png"), "t", "x", &[]).unwrap_err();
        assert!(matches!(err, GraftError::Io { .. }), "{err}");
    }

    /// Writes samples to /tmp for looking at by eye. Run with `-- --ignored`.
    #[test]
    #[ignore]
    fn write_samples() {
        let mut series = loss_series();
        series.push(Series { name: "val accuracy (gappy)".into(), points: vec![(1.0, 0.3), (2.0, f64::NAN), (3.0, 0.5), (4.0, 0.6)] });
        line_plot(Path::new("/tmp/graft-sample-loss.png"), "Loss per epoch: resnet18 -> flowers", "epoch", &series).unwrap();
        let acc = |k: f64| (1..=30).map(|e| (e as f64, 1.0 - 0.9 * (-(e as f64) / k).exp())).collect();
        let acc = [Series { name: "train".into(), points: acc(5.0) }, Series { name: "val".into(), points: acc(7.0) }];
        line_plot(Path::new("/tmp/graft-sample-acc.png"), "accuracy", "epoch", &acc).unwrap();
        line_plot(Path::new("/tmp/graft-sample-one.png"), "one point", "epoch", &[Series { name: "train".into(), points: vec![(1.0, 0.6931)] }]).unwrap();
        let labels: Vec<String> = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck_and_trailer"].iter().map(|s| s.to_string()).collect();
        let matrix: Vec<Vec<u64>> = (0..10).map(|r| (0..10).map(|c| if r == c { 850 + 10 * r as u64 } else { ((r * 7 + c * 3) % 23) as u64 }).collect()).collect();
        confusion_matrix_plot(Path::new("/tmp/graft-sample-confusion.png"), &labels, &matrix).unwrap();
        let labels: Vec<String> = (0..40).map(|i| format!("species_{i}")).collect();
        let matrix: Vec<Vec<u64>> = (0..40).map(|r| (0..40).map(|c| if r == c { 40 } else { ((r + c) % 3) as u64 }).collect()).collect();
        confusion_matrix_plot(Path::new("/tmp/graft-sample-confusion40.png"), &labels, &matrix).unwrap();
        confusion_matrix_plot(Path::new("/tmp/graft-sample-confusion2.png"), &["cat".into(), "dog".into()], &[vec![5, 1], vec![0, 0]]).unwrap();
        let text: String = (32u8..127).map(|b| b as char).collect();
        let mut img = RgbImage::from_pixel(620, 80, WHITE);
        draw_text(&mut img, 4, 4, &text[..48], SCALE, BLACK);
        draw_text(&mut img, 4, 40, &text[48..], SCALE, BLACK);
        save_png(Path::new("/tmp/graft-sample-font.png"), &img).unwrap();
    }
}
