//! Adaptation losses and schedules: MMD (one Gaussian kernel, DDC) and multi-kernel MMD (DAN),
//! Deep CORAL, gradient reversal (DANN, CDAN, ADDA), the domain discriminator's binary
//! cross-entropy, CDAN's multilinear conditioning and entropy weights.
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

/// Rows of `values` ([rows·width]) at `indices` as a [len, width] tensor on `device`.
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
}
