//! Adaptation losses and schedules: MMD (one Gaussian kernel, DDC) and multi-kernel MMD (DAN),
//! Deep CORAL, gradient reversal (DANN, CDAN, ADDA), the domain discriminator's binary
//! cross-entropy, CDAN's multilinear conditioning and entropy weights; MCC's class confusion,
//! BSP's spectral penalty, AFN's feature-norm step, MDD's margin disparity; DEV's
//! importance-weighted validation risk.
//!
//! All functions take row-major batches `[n, d]`; source and target batches may differ in size.

use burn::tensor::activation::{log_sigmoid, log_softmax, softmax};
use burn::tensor::{Device, Tensor, TensorData};

/// The DANN paper's ramp of the adaptation weight: λ_p = 2 / (1 + exp(−γ·p)) − 1 with γ = 10,
/// where p ∈ [0, 1] is the training progress. 0 at the start, 0.987 at p = 0.5, → 1.
pub fn dann_lambda(p: f64) -> f64 {
    2.0 / (1.0 + (-10.0 * p.clamp(0.0, 1.0)).exp()) - 1.0
}

/// The DANN paper's learning-rate annealing: lr_p = lr₀ · (1 + 10·p)^−0.75.
pub fn annealed_lr(lr0: f64, p: f64) -> f64 {
    lr0 * (1.0 + 10.0 * p.clamp(0.0, 1.0)).powf(-0.75)
}

/// TLlib's per-iteration decay: lr_i = lr₀ · (1 + γ·i)^−0.75.
pub fn inv_lr(lr0: f64, gamma: f64, iteration: usize) -> f64 {
    lr0 * (1.0 + gamma * iteration as f64).powf(-0.75)
}

/// TLlib's warm-start ramp of the reversed gradient: 2/(1 + e^−i/M) − 1 (0 at i = 0, → 1).
pub fn warm_start_lambda(iteration: usize, max_iters: usize) -> f64 {
    2.0 / (1.0 + (-(iteration as f64) / max_iters.max(1) as f64).exp()) - 1.0
}

/// Gradient reversal: the value of `x`, and −`coeff` times the gradient on the way back.
/// Written without a custom op: `x̄ − coeff·(x − x̄)` with `x̄ = x.detach()`.
pub fn reverse_gradient<const D: usize>(x: Tensor<D>, coeff: f64) -> Tensor<D> {
    let frozen = x.clone().detach();
    frozen.clone() - (x - frozen).mul_scalar(coeff)
}

/// Squared Euclidean distances between the rows of `z` ([n, d] → [n, n]), clamped at 0.
fn squared_distances(z: Tensor<2>) -> Tensor<2> {
    let [n, _] = z.dims();
    let norms = z.clone().powi_scalar(2).sum_dim(1); // [n, 1]
    let gram = z.clone().matmul(z.transpose()); // [n, n]
    let d = norms.clone().expand([n, n]) + norms.transpose().expand([n, n]) - gram.mul_scalar(2.0);
    d.clamp_min(0.0)
}

/// Maximum mean discrepancy between the rows of `source` and `target` with a sum of Gaussian
/// kernels k_α(x, y) = exp(−‖x − y‖² / (2·α·σ̂²)), one per `alphas` entry, where σ̂² is the mean
/// squared distance over the joint batch (the bandwidth heuristic of DAN/TLlib; not
/// differentiated). Kernel values are added up, as TLlib does. The biased (V-statistic)
/// estimate: mean k(s, s′) + mean k(t, t′) − 2·mean k(s, t), which is never negative.
pub fn mmd(source: Tensor<2>, target: Tensor<2>, alphas: &[f64]) -> Tensor<1> {
    let [ns, _] = source.dims();
    let [nt, _] = target.dims();
    let n = ns + nt;
    let z = Tensor::cat(vec![source, target], 0);
    let d = squared_distances(z);
    // Mean over the n² entries, diagonal zeros included (TLlib's GaussianKernel).
    let mean_d: f32 = d.clone().detach().mean().into_scalar();
    let mean_d = (mean_d as f64).max(1e-12);
    let mut k: Option<Tensor<2>> = None;
    for &alpha in alphas {
        let ka = d.clone().div_scalar(-2.0 * alpha * mean_d).exp();
        k = Some(match k {
            Some(acc) => acc + ka,
            None => ka,
        });
    }
    let k = k.expect("at least one kernel");
    let ss = k.clone().slice([0..ns, 0..ns]).mean();
    let tt = k.clone().slice([ns..n, ns..n]).mean();
    let st = k.slice([0..ns, ns..n]).mean();
    ss + tt - st.mul_scalar(2.0)
}

/// DAN's five kernels (TLlib): bandwidth multipliers 2⁻³ … 2¹.
pub const DAN_ALPHAS: [f64; 5] = [0.125, 0.25, 0.5, 1.0, 2.0];

/// Covariance of the rows of `x` ([n, d] → [d, d]), with the n − 1 denominator.
pub fn covariance(x: Tensor<2>) -> Tensor<2> {
    let [n, _] = x.dims();
    let centred = x.clone() - x.mean_dim(0);
    centred.clone().transpose().matmul(centred).div_scalar((n.max(2) - 1) as f64)
}

/// Deep CORAL (Sun & Saenko 2016): ‖C_s − C_t‖²_F / (4·d²).
pub fn coral(source: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let [_, d] = source.dims();
    let diff = covariance(source) - covariance(target);
    diff.powi_scalar(2).sum().div_scalar((4 * d * d) as f64)
}

/// Binary cross-entropy of discriminator logits `z` ([n, 1]) against one domain label
/// (1 = source, 0 = target), stable for any logit: −log σ(z) or −log σ(−z). Per row, [n, 1].
pub fn bce_per_row(z: Tensor<2>, label: f32) -> Tensor<2> {
    if label >= 0.5 {
        log_sigmoid(z).neg()
    } else {
        log_sigmoid(z.neg()).neg()
    }
}

/// Rows whose discriminator logit is on the right side of 0, for the domain accuracy.
pub fn domain_hits(z: Tensor<2>, label: f32) -> usize {
    let v: Vec<f32> = z.into_data().try_to_vec::<f32>().unwrap_or_default();
    v.iter().filter(|&&x| (x > 0.0) == (label >= 0.5)).count()
}

/// The proxy A-distance of a domain discriminator that errs on a fraction `error` of the rows
/// (Ben-David et al. 2007): 2·(1 − 2ε), clamped to [0, 2] (a discriminator no better than chance
/// sees no distance).
pub fn proxy_a_distance(error: f64) -> f64 {
    (2.0 * (1.0 - 2.0 * error)).clamp(0.0, 2.0)
}

/// DAAN's dynamic factor ω from the epoch's error of the global discriminator and of each class's
/// local one: with d_g and d_l (the mean over classes) their proxy A-distances,
/// ω = d_l / (d_g + d_l), the share of the conditional (local) alignment in
/// (1 − ω)·L_global + ω·L_local. Domains whose marginal distributions are far apart (large d_g)
/// get mostly global alignment; once they are close, the class-conditional alignment takes over.
/// This is the direction of the authors' released code. `previous` is kept when neither
/// discriminator sees any distance (or there are no local errors).
pub fn daan_omega(global_error: f64, local_errors: &[f64], previous: f64) -> f64 {
    if local_errors.is_empty() {
        return previous;
    }
    let d_g = proxy_a_distance(global_error);
    let d_l = local_errors.iter().map(|&e| proxy_a_distance(e)).sum::<f64>() / local_errors.len() as f64;
    if d_g + d_l <= 1e-12 {
        previous
    } else {
        d_l / (d_g + d_l)
    }
}

/// The domain-adversarial loss on discriminator logits: ½·(BCE(source, 1) + BCE(target, 0)),
/// each averaged over its rows (TLlib's `DomainAdversarialLoss`).
pub fn domain_adversarial(z_source: Tensor<2>, z_target: Tensor<2>) -> Tensor<1> {
    (bce_per_row(z_source, 1.0).mean() + bce_per_row(z_target, 0.0).mean()).mul_scalar(0.5)
}

/// Entropy of the softmax of each row of `logits`: [n, c] → [n, 1].
pub fn entropy(logits: Tensor<2>) -> Tensor<2> {
    let p = softmax(logits.clone(), 1);
    (p * log_softmax(logits, 1)).sum_dim(1).neg()
}

/// CDAN's multilinear map: the outer product g ⊗ f of each row, [n, c] × [n, d] → [n, c·d].
pub fn multilinear(f: Tensor<2>, g: Tensor<2>) -> Tensor<2> {
    let [n, d] = f.dims();
    let [_, c] = g.dims();
    let outer = g.unsqueeze_dim::<3>(2).expand([n, c, d]) * f.unsqueeze_dim::<3>(1).expand([n, c, d]);
    outer.reshape([n, c * d])
}

/// CDAN's randomized multilinear map (used when c·d is large): (f·R_f) ⊙ (g·R_g) / √m with
/// fixed random matrices R_f [d, m], R_g [c, m].
pub fn randomized_multilinear(f: Tensor<2>, g: Tensor<2>, rf: Tensor<2>, rg: Tensor<2>) -> Tensor<2> {
    let [_, m] = rf.dims();
    (f.matmul(rf) * g.matmul(rg)).div_scalar((m as f64).sqrt())
}

/// CDAN+E weights: w = 1 + exp(−H(p)), normalised so they add up to the batch size.
/// Computed without gradient. [n, c] logits → [n, 1].
pub fn entropy_weights(logits: Tensor<2>) -> Tensor<2> {
    let [n, _] = logits.dims();
    let w = entropy(logits.detach()).neg().exp().add_scalar(1.0);
    let total: f32 = w.clone().sum().into_scalar();
    w.mul_scalar(n as f64 / total.max(1e-12) as f64)
}

/// Row-wise one-hot [n, c] of `classes` on `device`.
fn one_hot(classes: &[usize], c: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0f32; classes.len() * c];
    for (i, &k) in classes.iter().enumerate() {
        v[i * c + k] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [classes.len(), c]), device)
}

/// Minimum Class Confusion (Jin et al. 2020, as TLlib computes it) on target logits [n, c]:
/// p = softmax(logits / T); certainty weights w = 1 + e^−H(p) (H with TLlib's 1e-5 inside the
/// log, not differentiated), scaled to add up to n; the class confusion C = (w·p)ᵀ p, each
/// column j divided by the sum of row j; loss = (ΣC − tr C) / c. Low when each prediction is
/// confident and the batch spreads over the classes.
pub fn mcc(logits: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [n, c] = logits.dims();
    let device = logits.device();
    let p = softmax(logits.div_scalar(temperature), 1);
    let h = (p.clone().detach() * p.clone().detach().add_scalar(1e-5).log()).sum_dim(1).neg(); // [n, 1]
    let w = h.neg().exp().add_scalar(1.0);
    let total: f32 = w.clone().sum().into_scalar();
    let w = w.mul_scalar(n as f64 / (total as f64).max(1e-12));
    let confusion = (p.clone() * w.expand([n, c])).transpose().matmul(p); // [c, c]
    let rows = confusion.clone().sum_dim(1).transpose().expand([c, c]); // [c, c]: column j holds row j's sum
    let confusion = confusion / rows;
    let eye = one_hot(&(0..c).collect::<Vec<_>>(), c, &device);
    let trace = (confusion.clone() * eye).sum();
    (confusion.sum() - trace).div_scalar(c as f64)
}

/// Batch Spectral Penalization (Chen et al. 2019): the sum of the `k` largest squared singular
/// values of a feature batch [n, d]. Written as Σᵢ ‖F vᵢ‖² with vᵢ the top right singular
/// vectors of F (from the Gram matrix's eigenvectors, not differentiated): equal in value, and its gradient 2·F vᵢvᵢᵀ
/// is σᵢ²'s (the vᵢ maximise the sum, so their own change does not count at first order).
pub fn bsp_penalty(f: Tensor<2>, k: usize) -> crate::Result<Tensor<1>> {
    let [n, d] = f.dims();
    let values: Vec<f32> = f.clone().detach().into_data().try_to_vec::<f32>().map_err(|e| svd_error(format!("{e:?}")))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(svd_error("the features are not finite".into()));
    }
    let m = super::shallow::dense::Mat::from_fn(n, d, |i, j| values[i * d + j] as f64);
    // Singular values largest first, the right singular vectors as columns of v.
    let (s, v) = super::shallow::linalg::right_singular(m.as_ref(), k).map_err(|e| svd_error(e.to_string()))?;
    let k = k.min(s.len());
    let mut top = vec![0f32; d * k];
    for col in 0..k {
        for r in 0..d {
            top[r * k + col] = v[(r, col)] as f32;
        }
    }
    let vk = Tensor::<2>::from_data(TensorData::new(top, [d, k]), &f.device());
    Ok(f.matmul(vk).powi_scalar(2).sum())
}

fn svd_error(reason: String) -> crate::GraftError {
    crate::GraftError::Data { path: "bsp".into(), reason: format!("the SVD of a feature batch failed: {reason}") }
}

/// Stepwise Adaptive Feature Norm (Xu et al. 2019): mean over rows of (‖f‖ − (‖f‖̄ + Δr))², the
/// target norm ‖f‖̄ + Δr a constant taken from this step's features, so that every step pushes
/// each norm up by Δr.
pub fn afn(f: Tensor<2>, delta: f64) -> Tensor<1> {
    let norm = f.powi_scalar(2).sum_dim(1).add_scalar(1e-12).sqrt(); // [n, 1]
    let radius = norm.clone().detach().add_scalar(delta);
    (norm - radius).powi_scalar(2).mean()
}

/// The loss MDD minimises (TLlib's `ClassificationMarginDisparityDiscrepancy`, negated):
/// γ·CE(adv_s, ŷ_s) − log(1 − softmax(adv_t)[ŷ_t]), averaged over the rows, where ŷ are the main
/// head's predictions (argmax, no gradient) and adv the adversarial head's logits; the log is
/// TLlib's `shift_log` (offset 1e-6, at most 0). The adversarial head minimises it (agree on the
/// source, disagree on the target); the features, behind gradient reversal, maximise it.
pub fn mdd(logits_s: Tensor<2>, adv_s: Tensor<2>, logits_t: Tensor<2>, adv_t: Tensor<2>, margin: f64) -> Tensor<1> {
    let [_, c] = adv_s.dims();
    let device = adv_s.device();
    let pred_s = crate::train::loss::argmax(logits_s.detach());
    let pred_t = crate::train::loss::argmax(logits_t.detach());
    let source = (one_hot(&pred_s, c, &device) * log_softmax(adv_s, 1)).sum_dim(1).neg().mean();
    let p_t = (softmax(adv_t, 1) * one_hot(&pred_t, c, &device)).sum_dim(1);
    let target = p_t.neg().add_scalar(1.0 + 1e-6).clamp_max(1.0).log().neg().mean();
    source.mul_scalar(margin) + target
}

/// DEV's domain classifier (You et al. 2019): L2-regularised logistic regression, source = 0,
/// target = 1, on standardised features (rows of `d` values), fitted by gradient descent; returns
/// the density ratio w(x) = p(target|x)/p(source|x) · (n_s/n_t) of each row of `query`.
pub fn importance_weights(source: &[f32], target: &[f32], query: &[f32], d: usize) -> Vec<f64> {
    let (ns, nt) = (source.len() / d.max(1), target.len() / d.max(1));
    if d == 0 || ns == 0 || nt == 0 {
        return vec![1.0; query.len() / d.max(1)];
    }
    let n = (ns + nt) as f64;
    let (mut mean, mut var) = (vec![0f64; d], vec![0f64; d]);
    for row in source.chunks(d).chain(target.chunks(d)) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64 / n;
        }
    }
    for row in source.chunks(d).chain(target.chunks(d)) {
        for (j, &v) in row.iter().enumerate() {
            var[j] += (v as f64 - mean[j]).powi(2) / n;
        }
    }
    let scale: Vec<f64> = var.iter().map(|v| 1.0 / v.sqrt().max(1e-6)).collect();
    let standard = |row: &[f32]| -> Vec<f64> { row.iter().enumerate().map(|(j, &v)| (v as f64 - mean[j]) * scale[j]).collect() };
    let rows: Vec<(Vec<f64>, f64)> = source.chunks(d).map(|r| (standard(r), 0.0)).chain(target.chunks(d).map(|r| (standard(r), 1.0))).collect();
    // Each domain weighs half, whatever its size; the prior ratio is put back below.
    let class_weight = [0.5 / ns as f64, 0.5 / nt as f64];
    let (mut w, mut b) = (vec![0f64; d], 0f64);
    let (l2, step) = (1e-2, 1.0);
    for _ in 0..300 {
        let (mut gw, mut gb) = (vec![0f64; d], 0f64);
        for (x, y) in &rows {
            let z = b + x.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
            let r = (1.0 / (1.0 + (-z).exp()) - y) * class_weight[*y as usize];
            gb += r;
            for (g, a) in gw.iter_mut().zip(x) {
                *g += r * a;
            }
        }
        for (wj, gj) in w.iter_mut().zip(&gw) {
            *wj -= step * (gj + l2 * *wj);
        }
        b -= step * gb;
    }
    // Trained with balanced classes, e^z is p(t|x)/p(s|x) at equal priors; TLlib/DEV's ratio
    // also carries n_s/n_t, which for balanced training is what the classifier's prior would be.
    query.chunks(d).map(|r| (b + standard(r).iter().zip(&w).map(|(a, c)| a * c).sum::<f64>()).clamp(-30.0, 30.0).exp()).collect()
}

/// DEV's risk: the mean of the weighted losses W·L plus η·(mean W − 1), with the control variate
/// η = −Cov(W·L, W)/Var(W) (0 when the weights do not vary).
pub fn dev_risk(losses: &[f64], weights: &[f64]) -> f64 {
    let n = losses.len().min(weights.len());
    if n == 0 {
        return f64::INFINITY;
    }
    let wl: Vec<f64> = (0..n).map(|i| losses[i] * weights[i]).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (m_wl, m_w) = (mean(&wl), mean(&weights[..n]));
    let denom = (n.max(2) - 1) as f64;
    let cov = (0..n).map(|i| (wl[i] - m_wl) * (weights[i] - m_w)).sum::<f64>() / denom;
    let var = (0..n).map(|i| (weights[i] - m_w).powi(2)).sum::<f64>() / denom;
    let eta = if var > 1e-12 { -cov / var } else { 0.0 };
    m_wl + eta * m_w - eta
}

/// Rows of `values` ([rows·width]) at `indices` as a [len, width] tensor on `device`.
/// The first `n` rows of `x` and the rest: a joint batch's source and target parts.
pub fn split_rows(x: Tensor<2>, n: usize) -> (Tensor<2>, Tensor<2>) {
    let [rows, cols] = x.dims();
    (x.clone().slice([0..n, 0..cols]), x.slice([n..rows, 0..cols]))
}

pub fn gather_rows(values: &[f32], width: usize, indices: &[usize], device: &Device) -> Tensor<2> {
    let mut data = Vec::with_capacity(indices.len() * width);
    for &i in indices {
        data.extend_from_slice(&values[i * width..(i + 1) * width]);
    }
    Tensor::from_data(TensorData::new(data, [indices.len(), width]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn device() -> Device {
        crate::device::default_device()
    }

    /// n×d standard normal samples (Box–Muller, seeded) times `scale` plus `shift`.
    fn normal(n: usize, d: usize, seed: u64, shift: f32, scale: f32) -> Tensor<2> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..n * d)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * scale + shift
            })
            .collect();
        Tensor::from_data(TensorData::new(v, [n, d]), &device())
    }

    fn scalar(t: Tensor<1>) -> f32 {
        t.into_scalar()
    }

    #[test]
    fn mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift() {
        let (n, d) = (200, 8);
        let same = scalar(mmd(normal(n, d, 1, 0.0, 1.0), normal(n, d, 2, 0.0, 1.0), &[1.0]));
        let small = scalar(mmd(normal(n, d, 1, 0.0, 1.0), normal(n, d, 3, 0.5, 1.0), &[1.0]));
        let large = scalar(mmd(normal(n, d, 1, 0.0, 1.0), normal(n, d, 4, 2.0, 1.0), &[1.0]));
        assert!(same >= 0.0 && same < 0.02, "MMD of one distribution: {same}");
        assert!(small > 3.0 * same, "shift 0.5: {small} vs {same}");
        assert!(large > 2.0 * small, "shift 2: {large} vs {small}");
        // Identical samples: exactly 0 (up to rounding).
        let x = normal(50, d, 5, 0.0, 1.0);
        assert!(scalar(mmd(x.clone(), x, &DAN_ALPHAS)).abs() < 1e-5);
        // Multi-kernel: the same ordering, with the five kernels added up.
        let mk_same = scalar(mmd(normal(n, d, 1, 0.0, 1.0), normal(n, d, 2, 0.0, 1.0), &DAN_ALPHAS));
        let mk_shift = scalar(mmd(normal(n, d, 1, 0.0, 1.0), normal(n, d, 4, 2.0, 1.0), &DAN_ALPHAS));
        assert!(mk_same < 0.1 && mk_shift > 10.0 * mk_same, "{mk_same} {mk_shift}");
        // Unequal batch sizes work.
        let uneven = scalar(mmd(normal(30, d, 6, 0.0, 1.0), normal(70, d, 7, 2.0, 1.0), &[1.0]));
        assert!(uneven > small);
    }

    #[test]
    fn coral_is_zero_for_equal_covariances_and_positive_otherwise() {
        let (n, d) = (100, 6);
        let x = normal(n, d, 11, 0.0, 1.0);
        // A shifted copy has exactly the same covariance: CORAL ignores the mean.
        let shifted = x.clone().add_scalar(3.0);
        let zero = scalar(coral(x.clone(), shifted));
        assert!(zero.abs() < 1e-6, "CORAL of equal covariances: {zero}");
        // Scaling by 2 multiplies the covariance by 4: ‖4C − C‖² / 4d² = 9‖C‖² / 4d².
        let c: f32 = covariance(x.clone()).powi_scalar(2).sum().into_scalar();
        let scaled = scalar(coral(x.clone(), x.clone().mul_scalar(2.0)));
        let want = 9.0 * c / (4.0 * (d * d) as f32);
        assert!((scaled - want).abs() < 1e-3 * want, "{scaled} vs {want}");
        // The covariance itself, against a hand computation on two columns.
        let t = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 2.0, 4.0, 3.0, 9.0], [3, 2]), &device());
        let cov: Vec<f32> = covariance(t).into_data().try_to_vec().unwrap();
        // col0 = 1,2,3 (var 1); col1 = 2,4,9 (mean 5, var (9+1+16)/2 = 13); cov = (−1·−3 + 0 + 1·4)/2 = 3.5
        for (a, b) in cov.iter().zip([1.0, 3.5, 3.5, 13.0]) {
            assert!((a - b).abs() < 1e-5, "{cov:?}");
        }
    }

    #[test]
    fn gradient_reversal_flips_the_sign_of_the_gradient() {
        let dev = device().autodiff();
        let values = vec![0.3f32, -1.2, 2.0, 0.7];
        let x = Tensor::<2>::from_data(TensorData::new(values.clone(), [2, 2]), &dev).require_grad();
        // f(x) = Σ x³; ∂f/∂x = 3x². Through the reversal with coefficient 0.5: −1.5·x².
        let y = reverse_gradient(x.clone(), 0.5);
        let forward: Vec<f32> = y.clone().into_data().try_to_vec().unwrap();
        assert_eq!(forward, values, "the forward value is unchanged");
        let grads = y.powi_scalar(3).sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        // Numeric check of the plain function's gradient by central differences.
        let f = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(3)).sum::<f64>();
        for i in 0..values.len() {
            let (mut up, mut down) = (values.clone(), values.clone());
            up[i] += 1e-3;
            down[i] -= 1e-3;
            let numeric = (f(&up) - f(&down)) / 2e-3;
            assert!((g[i] as f64 + 0.5 * numeric).abs() < 1e-3 * numeric.abs().max(1.0), "element {i}: {} vs −0.5·{numeric}", g[i]);
        }
    }

    #[test]
    fn schedules_follow_the_dann_paper() {
        assert_eq!(dann_lambda(0.0), 0.0);
        assert!((dann_lambda(0.5) - 0.986_614).abs() < 1e-5);
        assert!(dann_lambda(1.0) < 1.0 && dann_lambda(1.0) > 0.9999);
        assert_eq!(annealed_lr(0.01, 0.0), 0.01);
        assert!((annealed_lr(0.01, 1.0) - 0.01 * 11f64.powf(-0.75)).abs() < 1e-12);
    }

    #[test]
    fn tllib_schedules_follow_their_formulas() {
        assert_eq!(inv_lr(0.1, 0.001, 0), 0.1);
        // i = 1000, γ = 0.001: 0.1 · 2^−0.75.
        assert!((inv_lr(0.1, 0.001, 1000) - 0.1 * 2f64.powf(-0.75)).abs() < 1e-12);
        assert!(inv_lr(0.01, 0.001, 50_000) < inv_lr(0.01, 0.001, 49_999));
        assert_eq!(inv_lr(0.01, 0.0, 10_000), 0.01);
        assert_eq!(warm_start_lambda(0, 1000), 0.0);
        let e = std::f64::consts::E;
        assert!((warm_start_lambda(1000, 1000) - (2.0 / (1.0 + 1.0 / e) - 1.0)).abs() < 1e-12);
        assert!((warm_start_lambda(500, 500) - warm_start_lambda(1000, 1000)).abs() < 1e-12);
        assert!(warm_start_lambda(20_000, 1000) > 0.9999 && warm_start_lambda(20_000, 1000) < 1.0);
    }

    #[test]
    fn bce_is_stable_and_matches_the_formula() {
        let z = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 2.0, -200.0, 200.0], [4, 1]), &device());
        let one: Vec<f32> = bce_per_row(z.clone(), 1.0).into_data().try_to_vec().unwrap();
        let zero: Vec<f32> = bce_per_row(z, 0.0).into_data().try_to_vec().unwrap();
        assert!((one[0] - 2f32.ln()).abs() < 1e-6);
        assert!((one[1] - (1.0 + (-2f32).exp()).ln()).abs() < 1e-6);
        assert!((one[2] - 200.0).abs() < 1e-3 && one[3].abs() < 1e-6);
        assert!(zero[2].abs() < 1e-6 && (zero[3] - 200.0).abs() < 1e-3);
        assert!(one.iter().chain(&zero).all(|v| v.is_finite()));
    }

    fn tensor(values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, shape), &device())
    }

    #[test]
    fn mcc_is_lower_for_confident_balanced_predictions() {
        let (n, c) = (20, 4);
        // Confident and balanced: each row sure of its own class, classes taken in turn.
        let balanced: Vec<f32> = (0..n * c).map(|i| if i % c == (i / c) % c { 12.0 } else { 0.0 }).collect();
        // Equally confident, all on class 0: the confusion matrix is one column.
        let collapsed: Vec<f32> = (0..n * c).map(|i| if i % c == 0 { 12.0 } else { 0.0 }).collect();
        // Unsure: nearly uniform rows.
        let unsure: Vec<f32> = (0..n * c).map(|i| ((i * 7) % 5) as f32 * 0.05).collect();
        let t = 2.5;
        let l_bal = scalar(mcc(tensor(balanced, [n, c]), t));
        let l_col = scalar(mcc(tensor(collapsed, [n, c]), t));
        let l_uns = scalar(mcc(tensor(unsure, [n, c]), t));
        assert!(l_bal < l_col && l_bal < l_uns, "balanced {l_bal}, collapsed {l_col}, unsure {l_uns}");
        assert!(l_bal < 0.05, "{l_bal}");
        // Uniform predictions: every entry of the normalised confusion is 1/c, so the loss is
        // (c − 1)/c.
        let uniform = scalar(mcc(Tensor::<2>::zeros([n, c], &device()), t));
        assert!((uniform - (c as f32 - 1.0) / c as f32).abs() < 1e-5, "{uniform}");
        // A hand computation, T = 1, two rows, two classes: p = [[0.5, 0.5], [e/(1+e), 1/(1+e)]].
        let e = std::f64::consts::E;
        let rows = [[0.5f64, 0.5], [e / (1.0 + e), 1.0 / (1.0 + e)]];
        let h: Vec<f64> = rows.iter().map(|r| -r.iter().map(|p| p * (p + 1e-5).ln()).sum::<f64>()).collect();
        let w: Vec<f64> = h.iter().map(|h| 1.0 + (-h).exp()).collect();
        let w: Vec<f64> = w.iter().map(|x| 2.0 * x / (w[0] + w[1])).collect();
        let mut cm = [[0f64; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                cm[i][j] = (0..2).map(|k| rows[k][i] * w[k] * rows[k][j]).sum();
            }
        }
        let sums = [cm[0][0] + cm[0][1], cm[1][0] + cm[1][1]];
        let want = (cm[0][1] / sums[1] + cm[1][0] / sums[0]) / 2.0;
        let got = scalar(mcc(tensor(vec![0.0, 0.0, 1.0, 0.0], [2, 2]), 1.0));
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// An n×d matrix with singular values `s` (n, d ≥ len): Q₁ diag(s) Q₂ᵀ with orthonormal
    /// columns from Gram–Schmidt on seeded random vectors.
    fn with_singular_values(n: usize, d: usize, s: &[f64], seed: u64) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut basis = |len: usize| {
            let mut q: Vec<Vec<f64>> = Vec::new();
            while q.len() < s.len() {
                let mut v: Vec<f64> = (0..len).map(|_| rng.random::<f64>() - 0.5).collect();
                for u in &q {
                    let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                    v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
                }
                let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                q.push(v.into_iter().map(|a| a / norm).collect());
            }
            q
        };
        let (u, v) = (basis(n), basis(d));
        let mut m = vec![0f64; n * d];
        for (k, &sk) in s.iter().enumerate() {
            for i in 0..n {
                for j in 0..d {
                    m[i * d + j] += sk * u[k][i] * v[k][j];
                }
            }
        }
        m
    }

    #[test]
    fn bsp_penalty_is_the_sum_of_the_top_squared_singular_values() {
        let (n, d) = (12, 7);
        let s = [5.0, 3.0, 2.0, 0.5];
        let m = with_singular_values(n, d, &s, 3);
        let f = tensor(m.iter().map(|&v| v as f32).collect(), [n, d]);
        for k in 1..=3 {
            let want: f64 = s[..k].iter().map(|x| x * x).sum();
            let got = scalar(bsp_penalty(f.clone(), k).unwrap()) as f64;
            assert!((got - want).abs() < 1e-3 * want, "k = {k}: {got} vs {want}");
        }
        // k beyond the rank: all of them, ‖F‖²_F.
        let got = scalar(bsp_penalty(f.clone(), 20).unwrap()) as f64;
        assert!((got - s.iter().map(|x| x * x).sum::<f64>()).abs() < 1e-2, "{got}");
        // Its gradient is σ₁²'s, 2·σ₁·u₁v₁ᵀ = 2·F·v₁v₁ᵀ: checked by central differences of the
        // largest eigenvalue of FᵀF (power iteration, independent of the SVD).
        let dev = device().autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(m.iter().map(|&v| v as f32).collect(), [n, d]), &dev).require_grad();
        let grads = bsp_penalty(x.clone(), 1).unwrap().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        let top = |m: &[f64]| {
            let mut v = vec![1.0f64; d];
            let mut lambda = 0.0;
            for _ in 0..500 {
                let fv: Vec<f64> = (0..n).map(|i| (0..d).map(|j| m[i * d + j] * v[j]).sum()).collect();
                let w: Vec<f64> = (0..d).map(|j| (0..n).map(|i| m[i * d + j] * fv[i]).sum()).collect();
                lambda = w.iter().map(|a| a * a).sum::<f64>().sqrt();
                v = w.iter().map(|a| a / lambda).collect();
            }
            lambda
        };
        assert!((top(&m) - 25.0).abs() < 1e-6);
        for idx in [0, 5, 17, 40, n * d - 1] {
            let (mut up, mut down) = (m.clone(), m.clone());
            up[idx] += 1e-4;
            down[idx] -= 1e-4;
            let numeric = (top(&up) - top(&down)) / 2e-4;
            assert!((g[idx] as f64 - numeric).abs() < 2e-3 * numeric.abs().max(1.0), "element {idx}: {} vs {numeric}", g[idx]);
        }
    }

    #[test]
    fn afn_pushes_every_norm_up_by_delta() {
        let dev = device().autodiff();
        let values = vec![3.0f32, 4.0, 0.0, 1.0, 0.0, 0.0];
        let x = Tensor::<2>::from_data(TensorData::new(values, [2, 3]), &dev).require_grad();
        let loss = afn(x.clone(), 1.0);
        // (‖f‖ − (‖f‖ + Δr))² = Δr² for every row.
        assert!((scalar(loss.clone()) - 1.0).abs() < 1e-6);
        let g: Vec<f32> = x.grad(&loss.backward()).unwrap().into_data().try_to_vec().unwrap();
        // ∂/∂f of mean (‖f‖ − r)² = 2(‖f‖ − r)·f/‖f‖ / n = −Δr·f/‖f‖: along −f, so descent grows the norm.
        let want = [-0.6f32, -0.8, 0.0, -1.0, 0.0, 0.0];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{g:?}");
        }
    }

    #[test]
    fn mdd_rewards_agreement_on_the_source_and_disagreement_on_the_target() {
        // Main head predicts class 0 on both rows of each domain.
        let main = tensor(vec![5.0, 0.0, 5.0, 0.0], [2, 2]);
        let agree = tensor(vec![4.0, 0.0, 4.0, 0.0], [2, 2]);
        let disagree = tensor(vec![0.0, 4.0, 0.0, 4.0], [2, 2]);
        let good = scalar(mdd(main.clone(), agree.clone(), main.clone(), disagree.clone(), 4.0));
        let bad = scalar(mdd(main.clone(), disagree.clone(), main.clone(), agree.clone(), 4.0));
        assert!(good < bad, "{good} vs {bad}");
        // By hand: the agreeing source rows cost −ln σ(4) each (times γ), the disagreeing target
        // rows −ln(1 − σ(−4)).
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let want = 4.0 * -(sig(4.0)).ln() - (1.0 - sig(-4.0) + 1e-6).min(1.0).ln();
        assert!((good as f64 - want).abs() < 1e-4, "{good} vs {want}");
    }

    #[test]
    fn dev_weights_follow_the_density_ratio_and_the_control_variate_removes_the_weights_noise() {
        // Source features around 0, target around 1 (1-d): a point near the target gets a
        // larger weight than one near the source, and the weights of a point halfway are ≈ 1.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut draw = |mu: f32, n: usize| (0..n).map(|_| mu + (rng.random::<f32>() - 0.5)).collect::<Vec<f32>>();
        let (s, t) = (draw(0.0, 400), draw(1.0, 400));
        let w = importance_weights(&s, &t, &[0.0, 0.5, 1.0], 1);
        assert!(w[0] < 0.2 && w[2] > 5.0 && (w[1] - 1.0).abs() < 0.5, "{w:?}");
        // Equal weights: DEV is the plain mean loss.
        assert!((dev_risk(&[1.0, 2.0, 3.0], &[1.0, 1.0, 1.0]) - 2.0).abs() < 1e-12);
        // Constant loss L with any weights: W·L = L·W, so η = −L and the risk is exactly L.
        let r = dev_risk(&[0.7; 4], &[0.1, 3.0, 0.5, 2.0]);
        assert!((r - 0.7).abs() < 1e-12, "{r}");
        // By hand: L = [1, 2], W = [1, 3]: WL = [1, 6], Cov = (−2.5·−1 + 2.5·1)/1 = 5, Var = 2,
        // η = −2.5; risk = 3.5 + (−2.5)(2) + 2.5 = 1.
        assert!((dev_risk(&[1.0, 2.0], &[1.0, 3.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn multilinear_map_is_the_outer_product() {
        let dev = device();
        let f = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]), &dev);
        let g = Tensor::<2>::from_data(TensorData::new(vec![0.5f32, 2.0, 1.0, 0.0], [2, 2]), &dev);
        let h: Vec<f32> = multilinear(f, g).into_data().try_to_vec().unwrap();
        assert_eq!(h, vec![0.5, 1.0, 1.5, 2.0, 4.0, 6.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0]);
        // Entropy weights: a confident row weighs more than a uniform one; they add up to n.
        let logits = Tensor::<2>::from_data(TensorData::new(vec![10.0f32, 0.0, 0.0, 0.0], [2, 2]), &dev);
        let w: Vec<f32> = entropy_weights(logits).into_data().try_to_vec().unwrap();
        assert!(w[0] > w[1] && ((w[0] + w[1]) - 2.0).abs() < 1e-5, "{w:?}");
    }

    #[test]
    fn daan_omega_weighs_the_farther_alignment() {
        // Chance-level discriminators see no distance; a perfect one sees 2.
        assert_eq!(proxy_a_distance(0.5), 0.0);
        assert_eq!(proxy_a_distance(0.7), 0.0);
        assert_eq!(proxy_a_distance(0.0), 2.0);
        assert!((proxy_a_distance(0.25) - 1.0).abs() < 1e-12);
        // Marginals far apart (global error 0), classes barely (local errors near chance):
        // almost all weight on the global loss.
        assert!(daan_omega(0.0, &[0.45, 0.5], 0.5) < 0.1);
        // The reverse: mostly local.
        assert!(daan_omega(0.5, &[0.1, 0.0], 0.5) > 0.9);
        // Equal distances: half and half; the value is d_l / (d_g + d_l).
        assert!((daan_omega(0.25, &[0.25, 0.25], 0.3) - 0.5).abs() < 1e-12);
        assert!((daan_omega(0.0, &[0.25], 0.3) - 1.0 / 3.0).abs() < 1e-12);
        // No distance at all, or no local figures: the previous factor stays.
        assert_eq!(daan_omega(0.5, &[0.5, 0.6], 0.3), 0.3);
        assert_eq!(daan_omega(0.1, &[], 0.7), 0.7);
    }
}
