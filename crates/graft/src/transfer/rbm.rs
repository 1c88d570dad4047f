//! Restricted Boltzmann machines (Hinton, 2002; Hinton et al., 2006), trained with contrastive
//! divergence (CD-k) and stacked layer by layer as `graft pretrain --method rbm` does.
//!
//! An RBM has visible units `v` (the layer's input, [d_in]), hidden units `h` ([d_out]),
//! weights `W` ([d_in, d_out]), a hidden bias `c` and a visible bias `b`. Hidden units are
//! Bernoulli: p(h = 1 | v) = σ(vW + c). Visible units are Bernoulli (p(v = 1 | h) =
//! σ(hWᵀ + b), for inputs in [0, 1] such as pixels or the layer below's probabilities) or
//! Gaussian with unit variance (v | h ~ N(hWᵀ + b, 1), for real-valued, standardised inputs).
//!
//! CD-k: from the data `v0`, k steps of block Gibbs sampling (binary hidden samples; visible
//! means, as Hinton's practical guide advises) give `vk`; the parameters move along the gradient
//! of `F(v0) − F(vk)`, where `F` is the free energy
//! (Bernoulli: −v·b − Σ softplus(vW + c); Gaussian: ½‖v − b‖² − Σ softplus(vW + c)) and
//! `vk` is held constant, which is exactly the CD update. Its hidden layer, σ(vW + c), is the
//! layer `fit --init` starts from (the same sigmoid layer the autoencoder gives).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{rngs::StdRng, Rng};
use serde::{Deserialize, Serialize};

/// What the visible units of the first RBM are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visible {
    /// Binary units (inputs in [0, 1]).
    #[default]
    Bernoulli,
    /// Unit-variance Gaussian units (real-valued inputs, standardised).
    Gaussian,
}

/// One RBM: `encode` holds W and the hidden bias, `visible_bias` b.
#[derive(Module, Debug)]
pub struct Rbm {
    pub encode: Linear,
    pub visible_bias: Param<Tensor<1>>,
}

impl Rbm {
    /// Weights as burn's `Linear` draws them; zero visible bias.
    pub fn init(d_in: usize, d_out: usize, device: &Device) -> Self {
        Rbm { encode: LinearConfig::new(d_in, d_out).init(device), visible_bias: Param::from_tensor(Tensor::zeros([d_in], device)) }
    }

    /// The parameters as tensors (W, c, b), attached to the graph or, `detached`, constants.
    fn weights(&self, detached: bool) -> Weights {
        let w = self.encode.weight.val();
        let c = self.encode.bias.as_ref().map(|b| b.val()).unwrap_or_else(|| Tensor::zeros([w.dims()[1]], &w.device()));
        let b = self.visible_bias.val();
        if detached {
            Weights { w: w.detach(), c: c.detach(), b: b.detach() }
        } else {
            Weights { w, c, b }
        }
    }

    /// p(h = 1 | v): [n, d_in] → [n, d_out].
    pub fn hidden(&self, v: Tensor<2>) -> Tensor<2> {
        self.weights(false).hidden(v)
    }

    /// The visible mean given `h`: [n, d_out] → [n, d_in].
    pub fn visible(&self, h: Tensor<2>, kind: Visible) -> Tensor<2> {
        self.weights(false).visible(h, kind)
    }

    /// Free energy of each row of `v`: [n, d_in] → [n].
    pub fn free_energy(&self, v: Tensor<2>, kind: Visible) -> Tensor<1> {
        let Weights { w, c, b } = self.weights(false);
        let hidden_term = softplus(v.clone().matmul(w) + c.unsqueeze::<2>(), 1.0).sum_dim(1); // [n, 1]
        let b = b.unsqueeze::<2>(); // [1, d_in]
        let visible_term = match kind {
            Visible::Bernoulli => -(v * b).sum_dim(1),
            Visible::Gaussian => (v - b).powi_scalar(2).sum_dim(1) * 0.5,
        }; // [n, 1]
        (visible_term - hidden_term).flatten(0, 1)
    }

    /// One CD-k step's surrogate loss (its gradient is the CD update) and the batch's
    /// reconstruction error (mean squared difference between `v0` and the visible mean after one
    /// deterministic up-down pass). `rng` draws the hidden samples.
    pub fn cd_loss(&self, v0: Tensor<2>, k: usize, kind: Visible, rng: &mut StdRng) -> (Tensor<1>, f64) {
        let device = v0.device();
        // The chain runs on constants: no gradient flows through the sampling.
        let frozen = self.weights(true);
        let data = v0.clone().detach();
        let reconstruction = frozen.visible(frozen.hidden(data.clone()), kind);
        let error: f32 = (reconstruction - data.clone()).powi_scalar(2).mean().into_scalar();
        let mut v = data;
        for _ in 0..k.max(1) {
            let h = bernoulli(frozen.hidden(v), rng, &device);
            v = frozen.visible(h, kind);
        }
        let loss = (self.free_energy(v0, kind) - self.free_energy(v.detach(), kind)).mean();
        (loss, error as f64)
    }
}

/// An RBM's parameters as plain tensors.
struct Weights {
    /// [d_in, d_out]
    w: Tensor<2>,
    /// Hidden bias [d_out].
    c: Tensor<1>,
    /// Visible bias [d_in].
    b: Tensor<1>,
}

impl Weights {
    fn hidden(&self, v: Tensor<2>) -> Tensor<2> {
        sigmoid(v.matmul(self.w.clone()) + self.c.clone().unsqueeze::<2>()) // [n, d_out]
    }

    fn visible(&self, h: Tensor<2>, kind: Visible) -> Tensor<2> {
        let pre = h.matmul(self.w.clone().transpose()) + self.b.clone().unsqueeze::<2>(); // [n, d_in]
        match kind {
            Visible::Bernoulli => sigmoid(pre),
            Visible::Gaussian => pre,
        }
    }
}

/// Binary samples with probabilities `p`, drawn from `rng` (so a resumed run draws what an
/// uninterrupted one would).
fn bernoulli(p: Tensor<2>, rng: &mut StdRng, device: &Device) -> Tensor<2> {
    let dims = p.dims();
    let probs: Vec<f32> = p.into_data().try_to_vec::<f32>().unwrap_or_default();
    let samples: Vec<f32> = probs.iter().map(|&q| if rng.random::<f32>() < q { 1.0 } else { 0.0 }).collect();
    Tensor::from_data(TensorData::new(samples, dims), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamConfig, GradientsParams};
    use rand::SeedableRng;

    /// Four 16-bit patterns with 5 % of the bits flipped: data an 8-unit RBM can fit.
    fn patterns(n: usize, rng: &mut StdRng) -> Vec<f32> {
        let protos: [[u8; 16]; 4] = [
            [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1],
            [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0],
            [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1],
        ];
        (0..n)
            .flat_map(|i| protos[i % 4].map(|b| if rng.random::<f64>() < 0.05 { 1.0 - b as f32 } else { b as f32 }))
            .collect::<Vec<_>>()
    }

    fn reconstruction_error(rbm: &Rbm, v: Tensor<2>, kind: Visible) -> f32 {
        (rbm.visible(rbm.hidden(v.clone()), kind) - v).powi_scalar(2).mean().into_scalar()
    }

    #[test]
    fn cd1_lowers_the_reconstruction_error_of_data_the_rbm_fits() {
        let device = Device::flex().autodiff();
        device.seed(7);
        let mut rng = StdRng::seed_from_u64(3);
        let data = patterns(64, &mut rng);
        let v = Tensor::<2>::from_data(TensorData::new(data, [64, 16]), &device);
        let mut rbm = Rbm::init(16, 8, &device).train();
        let before = reconstruction_error(&rbm, v.clone(), Visible::Bernoulli);
        let mut optimizer = AdamConfig::new().init();
        let mut last = f64::NAN;
        for _ in 0..300 {
            let (loss, error) = rbm.cd_loss(v.clone(), 1, Visible::Bernoulli, &mut rng);
            last = error;
            let grads = GradientsParams::from_grads(loss.backward(), &rbm);
            rbm = optimizer.step(0.05, rbm, grads);
        }
        let after = reconstruction_error(&rbm, v, Visible::Bernoulli);
        assert!(after < 0.3 * before, "reconstruction error {before} → {after}");
        assert!((last - after as f64).abs() < 0.05, "the reported error is the reconstruction error ({last} vs {after})");
    }

    /// Gaussian visible units: the free energy's visible term is ½‖v − b‖², and CD-1 also learns
    /// real-valued data (two clusters).
    #[test]
    fn gaussian_visible_units_learn_real_valued_data() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let mut rng = StdRng::seed_from_u64(5);
        let data: Vec<f32> = (0..64).flat_map(|i| {
            let centre = if i % 2 == 0 { 1.5f32 } else { -1.5 };
            let mut row = [0f32; 6];
            for (j, x) in row.iter_mut().enumerate() {
                *x = if j < 3 { centre } else { -centre } + (rng.random::<f32>() - 0.5) * 0.2;
            }
            row
        }).collect();
        let v = Tensor::<2>::from_data(TensorData::new(data, [64, 6]), &device);
        let rbm = Rbm::init(6, 4, &device);
        // F(v) at zero weights: ½‖v − b‖² − d_out·ln 2 (softplus(0) = ln 2).
        let mut zero = Rbm::init(6, 4, &device);
        zero.encode.weight = Param::from_tensor(Tensor::zeros([6, 4], &device));
        zero.encode.bias = Some(Param::from_tensor(Tensor::zeros([4], &device)));
        let row = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 0.0, 0.0, 0.0, 0.0], [1, 6]), &device);
        let f: f32 = zero.free_energy(row, Visible::Gaussian).into_scalar();
        assert!((f - (2.5 - 4.0 * 2f32.ln())).abs() < 1e-5, "{f}");
        let mut rbm = rbm.train();
        let before = reconstruction_error(&rbm, v.clone(), Visible::Gaussian);
        let mut optimizer = AdamConfig::new().init();
        for _ in 0..300 {
            let (loss, _) = rbm.cd_loss(v.clone(), 1, Visible::Gaussian, &mut rng);
            let grads = GradientsParams::from_grads(loss.backward(), &rbm);
            rbm = optimizer.step(0.02, rbm, grads);
        }
        let after = reconstruction_error(&rbm, v, Visible::Gaussian);
        assert!(after < 0.3 * before, "reconstruction error {before} → {after}");
    }
}
