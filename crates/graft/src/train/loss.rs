//! Classification loss and accuracy.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};

/// Cross-entropy with label smoothing and per-class weights, averaged like PyTorch's
/// `CrossEntropyLoss(weight=w, label_smoothing=s)`: Σ_b w_{y_b}·ℓ_b / Σ_b w_{y_b}.
/// logits [B, C], targets B class indices → scalar.
pub fn cross_entropy(
    logits: Tensor<2>,
    targets: &[usize],
    smoothing: f64,
    class_weights: Option<&[f32]>,
    device: &Device,
) -> Tensor<1> {
    let [b, c] = logits.dims();
    let off = (smoothing / c as f64) as f32;
    let on = (1.0 - smoothing) as f32 + off;
    let mut q = vec![off; b * c];
    let mut w = vec![1f32; b];
    for (i, &t) in targets.iter().enumerate() {
        q[i * c + t] = on;
        if let Some(cw) = class_weights {
            w[i] = cw[t];
        }
    }
    let total: f32 = w.iter().sum();
    let q = Tensor::<2>::from_data(TensorData::new(q, [b, c]), device);
    let w = Tensor::<2>::from_data(TensorData::new(w, [b, 1]), device);
    let per_sample = (q * log_softmax(logits, 1)).sum_dim(1).neg(); // [B, 1]
    (per_sample * w).sum().div_scalar(total)
}

/// Predicted class per row of logits [B, C].
pub fn argmax(logits: Tensor<2>) -> Vec<usize> {
    let [_, c] = logits.dims();
    let values: Vec<f32> = logits.into_data().try_to_vec::<f32>().unwrap_or_default();
    values
        .chunks(c.max(1))
        .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hand_computed_values() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 0.0, 0.0, 0.0, 1.0, 0.0], [2, 3]), &device);
        let l: f32 = cross_entropy(logits.clone(), &[0, 1], 0.0, None, &device).into_scalar();
        let lse0 = (2f32.exp() + 2.0).ln();
        let lse1 = (1f32.exp() + 2.0).ln();
        let want = ((lse0 - 2.0) + (lse1 - 1.0)) / 2.0;
        assert!((l - want).abs() < 1e-5, "{l} vs {want}");
        // Weighting the second sample ×3.
        let lw: f32 = cross_entropy(logits.clone(), &[0, 1], 0.0, Some(&[1.0, 3.0, 1.0]), &device).into_scalar();
        let want_w = ((lse0 - 2.0) + 3.0 * (lse1 - 1.0)) / 4.0;
        assert!((lw - want_w).abs() < 1e-5);
        // Smoothing spreads mass: the loss of a confident correct prediction grows.
        let ls: f32 = cross_entropy(logits.clone(), &[0, 1], 0.3, None, &device).into_scalar();
        assert!(ls > l);
        assert_eq!(argmax(logits), vec![0, 1]);
    }
}
