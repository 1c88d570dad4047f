//! Grad-CAM (Selvaraju et al., 2017): where in the image a class's score comes from.
//!
//! The last convolutional stage's map `A` ([C, h, w]) goes through the rest of the network
//! (pooling and head) to the class score `y`; the gradient `∂y/∂A` averaged over the map gives
//! each channel's weight `α_c`, and the heatmap is `ReLU(Σ_c α_c A_c)`, scaled to [0, 1].

use burn::tensor::{Device, Tensor};
use image::{Rgb, RgbImage};


/// A heatmap over the last stage's map: `values[y * width + x]` in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Cam {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

/// The Grad-CAM of class `class` for one input whose last-stage map is `map` ([1, C, h, w],
/// computed without gradients), through `rest` (the map to logits [1, K], built on `device`
/// with autodiff: e.g. a head moved there with `.train()`). An all-zero heatmap when no
/// position raises the score; `None` when `map` is not one input's, `class` is not one of the
/// logits, or the map gets no gradient (`device` without autodiff).
pub fn grad_cam(map: Tensor<4>, rest: impl Fn(Tensor<4>) -> Tensor<2>, class: usize, device: &Device) -> Option<Cam> {
    let [n, channels, height, width] = map.dims();
    if n != 1 {
        return None;
    }
    let leaf = Tensor::<4>::from_data(map.into_data(), device).require_grad();
    let logits = rest(leaf.clone());
    let [_, classes] = logits.dims();
    if class >= classes {
        return None;
    }
    let score = logits.narrow(1, class, 1).sum();
    let grads = score.backward();
    let gradient: Vec<f32> = leaf.grad(&grads)?.into_data().try_to_vec::<f32>().ok()?;
    let activations: Vec<f32> = leaf.into_data().try_to_vec::<f32>().ok()?;
    let plane = height * width;
    let mut values = vec![0f32; plane];
    for c in 0..channels {
        let g = &gradient[c * plane..(c + 1) * plane];
        let alpha = g.iter().sum::<f32>() / plane.max(1) as f32;
        for (v, a) in values.iter_mut().zip(&activations[c * plane..(c + 1) * plane]) {
            *v += alpha * a;
        }
    }
    let max = values.iter().copied().fold(0f32, f32::max);
    for v in &mut values {
        *v = if max > 0.0 { v.max(0.0) / max } else { 0.0 };
    }
    Some(Cam { width, height, values })
}

impl Cam {
    /// The heatmap's value at a point of the image, (u, v) in [0, 1]² (bilinear between cell
    /// centres).
    fn sample(&self, u: f32, v: f32) -> f32 {
        let x = (u * self.width as f32 - 0.5).clamp(0.0, (self.width - 1) as f32);
        let y = (v * self.height as f32 - 0.5).clamp(0.0, (self.height - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let at = |x: usize, y: usize| self.values[y * self.width + x];
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// `image` with the heatmap laid over it (the "jet" colours, half transparent where hot,
    /// the image alone where the map is zero).
    pub fn overlay(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = image.dimensions();
        let mut out = image.clone();
        if self.values.is_empty() {
            return out;
        }
        for (x, y, px) in out.enumerate_pixels_mut() {
            let t = self.sample((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
            let heat = jet(t);
            let alpha = 0.15 + 0.45 * t;
            *px = Rgb([0, 1, 2].map(|c| (px[c] as f32 * (1.0 - alpha) + heat[c] as f32 * alpha).round() as u8));
        }
        out
    }
}

/// Matplotlib's "jet" colour of t ∈ [0, 1]: blue, cyan, yellow, red.
fn jet(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let channel = |centre: f32| ((1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::TensorData;

    /// A network whose class 0 reads only red and class 1 only green, on an image that is red
    /// in its top-left quadrant and green in its bottom-right: each class's heatmap lights its
    /// own quadrant and nothing else.
    #[test]
    fn a_class_that_depends_on_one_quadrant_lights_that_quadrant() {
        let plain = Device::flex();
        let device = plain.clone().autodiff();
        let side = 8;
        let mut pixels = vec![0f32; 3 * side * side];
        for y in 0..side {
            for x in 0..side {
                if x < side / 2 && y < side / 2 {
                    pixels[y * side + x] = 1.0; // red plane
                }
                if x >= side / 2 && y >= side / 2 {
                    pixels[side * side + y * side + x] = 1.0; // green plane
                }
            }
        }
        // The "trunk": a fixed 1×1 convolution to two channels (red, green), ReLU.
        let mut conv = Conv2dConfig::new([3, 2], [1, 1]).with_bias(false).init(&plain);
        conv.weight = burn::module::Param::from_tensor(Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0], [2, 3, 1, 1]), &plain));
        let image = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, side, side]), &plain);
        let map = burn::tensor::activation::relu(conv.forward(image)); // [1, 2, 8, 8]
        // The rest: global average pooling and a head with class k ← channel k.
        let head = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 3.0], [2, 2]), &device);
        let rest = |a: Tensor<4>| {
            let pooled = a.mean_dim(2).mean_dim(3).flatten::<2>(1, 3); // [1, 2]
            pooled.matmul(head.clone()) // [1, 2 classes]
        };
        let quadrant_mean = |cam: &Cam, qx: usize, qy: usize| {
            let h = side / 2;
            let sum: f32 = (0..h).flat_map(|y| (0..h).map(move |x| (x, y))).map(|(x, y)| cam.values[(qy * h + y) * side + qx * h + x]).sum();
            sum / (h * h) as f32
        };
        let red = grad_cam(map.clone(), rest, 0, &device).unwrap();
        assert_eq!((red.width, red.height), (side, side));
        assert!((quadrant_mean(&red, 0, 0) - 1.0).abs() < 1e-6, "{:?}", red.values);
        for (qx, qy) in [(1, 0), (0, 1), (1, 1)] {
            assert_eq!(quadrant_mean(&red, qx, qy), 0.0, "class 0 lights quadrant ({qx}, {qy})");
        }
        let green = grad_cam(map.clone(), rest, 1, &device).unwrap();
        assert!((quadrant_mean(&green, 1, 1) - 1.0).abs() < 1e-6);
        assert_eq!(quadrant_mean(&green, 0, 0), 0.0);
        assert!(grad_cam(map, rest, 2, &device).is_none(), "a class the model has not");
    }

    #[test]
    fn overlay_keeps_cold_pixels_close_and_colours_hot_ones() {
        let image = RgbImage::from_pixel(4, 4, Rgb([100, 100, 100]));
        let cam = Cam { width: 2, height: 2, values: vec![1.0, 0.0, 0.0, 0.0] };
        let out = cam.overlay(&image);
        let hot = out.get_pixel(0, 0);
        let cold = out.get_pixel(3, 3);
        assert!(hot[0] > 110 && hot[2] < 50, "hot corner reddens: {hot:?}");
        assert!(cold[2] > cold[0], "cold corner leans blue: {cold:?}");
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
    }
}
