//! Domain Separation Networks (Bousmalis et al. 2016), the DSN-DANN variant: the shared encoder
//! is the adaptation network's LeNet (or, on a zoo or text backbone, nothing) and bottleneck
//! (what the head reads, and all that eval and predict load); each domain has a small private
//! encoder of its own, and one shared decoder reconstructs every input row from the sum of its
//! shared and private codes: the 28×28 image for LeNet, the frozen trunk's pooled features or
//! the sentence embedding for a zoo or text backbone (there the inputs are those rows, so the
//! private encoders are two-layer MLPs and the decoder rebuilds the features).
//!
//! The loss is task + λ·(α·L_recon + β·L_difference + γ·L_similarity):
//! * L_recon: the scale-invariant MSE of the reconstructions (the paper's eq. 3), per domain;
//! * L_difference: the soft orthogonality ‖H_cᵀ H_p‖²_F of each domain's shared and private
//!   codes (eq. 4), on codes centred over the batch (as the authors' released code does) and
//!   divided by ‖H_c‖²_F·‖H_p‖²_F, so that it lies in [0, 1] whatever the codes' size (the
//!   released code scales each row to unit length instead, which makes codes with orthogonal
//!   columns overlap again);
//! * L_similarity: DANN's adversarial loss on the shared codes through the ramped gradient
//!   reversal (the paper's DSN with DANN similarity).
//!
//! Defaults α = 0.01, β = 0.075, γ = 0.25: γ is the authors' MNIST→MNIST-M command (0.251175);
//! α and β as in the widely used PyTorch reimplementation of that experiment (the released code's
//! flags default to 1e-6, placeholders).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model::LENET_SIDE;

/// Hidden width of the shared decoder.
pub const DECODER_HIDDEN: usize = 512;
/// Hidden width of a private encoder on feature rows.
pub const PRIVATE_HIDDEN: usize = 256;

/// What the adaptation network reads: LeNet's 28×28 images, or feature rows of a width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnInput {
    Images,
    Features(usize),
}

impl DsnInput {
    /// The width of an input row (what the decoder rebuilds).
    pub fn width(self) -> usize {
        match self {
            DsnInput::Images => LENET_SIDE * LENET_SIDE,
            DsnInput::Features(width) => width,
        }
    }
}

/// A domain's private encoder, to the bottleneck's width: on images a LeNet-shaped conv net,
/// narrower (16 and 32 channels); on feature rows an MLP with one hidden layer.
#[derive(Module, Debug)]
pub struct PrivateEncoder {
    pub conv1: Option<Conv2d>,
    pub conv2: Option<Conv2d>,
    /// Feature rows: input → [`PRIVATE_HIDDEN`].
    pub hidden: Option<Linear>,
    pub fc: Linear,
    pub pool: MaxPool2d,
}

impl PrivateEncoder {
    pub fn init(input: DsnInput, width: usize, device: &Device) -> Self {
        let images = input == DsnInput::Images;
        Self {
            conv1: images.then(|| Conv2dConfig::new([1, 16], [5, 5]).init(device)),
            conv2: images.then(|| Conv2dConfig::new([16, 32], [5, 5]).init(device)),
            hidden: match input {
                DsnInput::Images => None,
                DsnInput::Features(d) => Some(LinearConfig::new(d, PRIVATE_HIDDEN).init(device)),
            },
            fc: LinearConfig::new(if images { 32 * 4 * 4 } else { PRIVATE_HIDDEN }, width).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }

    /// [n, 784] or [n, d] → [n, width].
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = match (&self.conv1, &self.conv2, &self.hidden) {
            (Some(conv1), Some(conv2), _) => {
                let [n, _] = x.dims();
                let x = x.reshape([n, 1, LENET_SIDE, LENET_SIDE]); // [n, 1, 28, 28]
                let x = relu(self.pool.forward(conv1.forward(x))); // [n, 16, 12, 12]
                relu(self.pool.forward(conv2.forward(x))).flatten(1, 3) // [n, 32·4·4]
            }
            (_, _, Some(hidden)) => relu(hidden.forward(x)), // [n, 256]
            _ => unreachable!("a private encoder is built for images or for feature rows"),
        };
        relu(self.fc.forward(x)) // [n, width]
    }
}

/// The shared decoder: an MLP from a code to an input row (the 28×28 image in the network's
/// normalised range, or the feature row).
#[derive(Module, Debug)]
pub struct Decoder {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Decoder {
    pub fn init(width: usize, output: usize, device: &Device) -> Self {
        Self { fc1: LinearConfig::new(width, DECODER_HIDDEN).init(device), fc2: LinearConfig::new(DECODER_HIDDEN, output).init(device) }
    }

    /// [n, width] → [n, output].
    pub fn forward(&self, code: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(code))) // [n, 512] → [n, output]
    }
}

/// What DSN trains besides the classifier and the discriminator.
#[derive(Module, Debug)]
pub struct DsnNets {
    pub source_private: PrivateEncoder,
    pub target_private: PrivateEncoder,
    pub decoder: Decoder,
}

/// The weights of DSN's three adaptation terms.
#[derive(Debug, Clone, Copy)]
pub struct DsnWeights {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
}

impl DsnNets {
    /// `input`: what the adaptation network reads; `width`: the bottleneck's (the shared
    /// code's) width.
    pub fn init(input: DsnInput, width: usize, device: &Device) -> Self {
        Self {
            source_private: PrivateEncoder::init(input, width, device),
            target_private: PrivateEncoder::init(input, width, device),
            decoder: Decoder::init(width, input.width(), device),
        }
    }

    /// α·L_recon + β·L_difference + γ·`similarity` for one iteration: `xs`, `xt` the input rows
    /// ([n, 784] images or [n, d] features) of each domain, `shared_s`, `shared_t` their shared codes (the bottleneck
    /// features). Adds the unweighted terms to `sums`.
    pub fn loss(&self, xs: Tensor<2>, xt: Tensor<2>, shared_s: Tensor<2>, shared_t: Tensor<2>, similarity: Tensor<1>, w: DsnWeights, sums: &mut DsnSums) -> Tensor<1> {
        let ns = xs.dims()[0];
        let private_s = self.source_private.forward(xs.clone()); // [ns, width]
        let private_t = self.target_private.forward(xt.clone()); // [nt, width]
        let codes = Tensor::cat(vec![shared_s.clone() + private_s.clone(), shared_t.clone() + private_t.clone()], 0);
        let recon = self.decoder.forward(codes); // [ns + nt, 784 or d]
        let (recon_s, recon_t) = super::losses::split_rows(recon, ns);
        let reconstruction = scale_invariant_mse(xs, recon_s) + scale_invariant_mse(xt, recon_t);
        let difference = difference(shared_s, private_s) + difference(shared_t, private_t);
        let value = |t: &Tensor<1>| {
            let v: f32 = t.clone().into_scalar();
            v as f64
        };
        sums.reconstruction += value(&reconstruction);
        sums.difference += value(&difference);
        sums.similarity += value(&similarity);
        reconstruction.mul_scalar(w.alpha) + difference.mul_scalar(w.beta) + similarity.mul_scalar(w.gamma)
    }
}

/// The scale-invariant mean squared error (the DSN paper's eq. 3), averaged over the rows:
/// per row, with d = x − x̂ over its k values, (1/k)·‖d‖² − (1/k²)·(dᵀ1)², i.e. the variance of
/// the error: a reconstruction off by a constant costs nothing, so the decoder spends itself on
/// the shape rather than the absolute intensity.
pub fn scale_invariant_mse(x: Tensor<2>, reconstruction: Tensor<2>) -> Tensor<1> {
    let d = x - reconstruction; // [n, k]
    let mse = d.clone().powi_scalar(2).mean_dim(1); // [n, 1]
    let offset = d.mean_dim(1).powi_scalar(2); // [n, 1]
    (mse - offset).mean()
}

/// The difference loss (the DSN paper's eq. 4) of one domain's shared and private codes, rows the
/// samples: ‖H_cᵀ H_p‖²_F / (‖H_c‖²_F·‖H_p‖²_F), each code centred over the batch first. 0 when
/// the columns of the two codes are orthogonal, 1 when they all point one way; the value does
/// not change with the codes' scale, so it cannot be lowered by shrinking a code.
pub fn difference(shared: Tensor<2>, private: Tensor<2>) -> Tensor<1> {
    let (shared, private) = (centred(shared), centred(private));
    let overlap = shared.clone().transpose().matmul(private.clone()).powi_scalar(2).sum(); // ‖H_cᵀ H_p‖²_F
    let scale = shared.powi_scalar(2).sum() * private.powi_scalar(2).sum();
    overlap / scale.add_scalar(1e-12)
}

/// `h` [n, d] minus its mean row.
fn centred(h: Tensor<2>) -> Tensor<2> {
    let [n, d] = h.dims();
    h.clone() - h.mean_dim(0).expand([n, d])
}

/// DSN's running sums over an epoch (unweighted terms).
#[derive(Debug, Default, Clone)]
pub struct DsnSums {
    pub reconstruction: f64,
    pub difference: f64,
    pub similarity: f64,
}

/// DSN's figures of one epoch (`metrics.jsonl`, `dsn`): the four loss terms, each the mean over
/// the epoch's iterations, unweighted (the reconstruction and difference summed over both
/// domains).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DsnEpoch {
    /// Source cross-entropy.
    pub task: f64,
    /// Scale-invariant MSE of the reconstructions.
    pub reconstruction: f64,
    /// Soft orthogonality of the shared and private codes.
    pub difference: f64,
    /// DANN's domain loss on the shared codes.
    pub similarity: f64,
}

impl DsnSums {
    /// The epoch's means over `steps` iterations, with the mean task loss `task`.
    pub fn epoch(&self, task: f64, steps: f64) -> DsnEpoch {
        DsnEpoch { task, reconstruction: self.reconstruction / steps, difference: self.difference / steps, similarity: self.similarity / steps }
    }
}

impl DsnEpoch {
    /// TensorBoard tags and values.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        vec![
            ("dsn/task".into(), self.task),
            ("dsn/reconstruction".into(), self.reconstruction),
            ("dsn/difference".into(), self.difference),
            ("dsn/similarity".into(), self.similarity),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn device() -> Device {
        crate::device::default_device()
    }

    fn matrix(rows: &[Vec<f32>]) -> Tensor<2> {
        let (n, d) = (rows.len(), rows[0].len());
        Tensor::from_data(TensorData::new(rows.concat(), [n, d]), &device())
    }

    fn scalar(t: Tensor<1>) -> f64 {
        let v: f32 = t.into_scalar();
        v as f64
    }

    /// Codes whose every column is a multiple of `pattern` (a zero-mean ±1 vector over 4 samples).
    fn codes(pattern: [f32; 4], scales: &[f32]) -> Vec<Vec<f32>> {
        pattern.iter().map(|&p| scales.iter().map(|&s| p * s).collect()).collect()
    }

    #[test]
    fn difference_is_zero_for_orthogonal_codes_and_grows_with_their_overlap() {
        // Three orthogonal zero-mean patterns over 4 samples.
        let u = [1.0, 1.0, -1.0, -1.0];
        let v = [1.0, -1.0, 1.0, -1.0];
        let w = [1.0, -1.0, -1.0, 1.0];
        let shared = matrix(&codes(u, &[1.0, 2.0, -0.5]));
        let both: Vec<Vec<f32>> = (0..4).map(|i| vec![3.0 * v[i], v[i] - 2.0 * w[i]]).collect();
        assert!(scalar(difference(shared.clone(), matrix(&both))) < 1e-10);
        // Private codes turned towards the shared ones by θ: cos θ·v + sin θ·u; the loss is sin²θ.
        let mut last = 0.0;
        for theta in [0.2f32, 0.5, 0.9, std::f32::consts::FRAC_PI_2] {
            let mixed: [f32; 4] = std::array::from_fn(|i| theta.cos() * v[i] + theta.sin() * u[i]);
            let d = scalar(difference(shared.clone(), matrix(&codes(mixed, &[3.0, 1.0]))));
            assert!(d > last + 1e-3, "θ = {theta}: {d} after {last}");
            assert!((d - (theta.sin() as f64).powi(2)).abs() < 1e-4, "θ = {theta}: {d}");
            last = d;
        }
        // A constant added to a code is centred away.
        let offset = matrix(&codes(v, &[3.0, 1.0])).add_scalar(5.0);
        assert!(scalar(difference(shared, offset)) < 1e-8);
        // Random codes sit in between, and the value does not depend on the codes' scale.
        let a = Tensor::<2>::random([32, 16], Distribution::Normal(0.0, 1.0), &device());
        let b = Tensor::<2>::random([32, 8], Distribution::Normal(0.0, 1.0), &device());
        let d = scalar(difference(a.clone(), b.clone()));
        assert!(d > 1e-3 && d < 0.2, "{d}");
        assert!((scalar(difference(a.mul_scalar(10.0), b)) - d).abs() < 1e-5);
    }

    #[test]
    fn scale_invariant_mse_ignores_a_constant_offset() {
        let x = Tensor::<2>::random([5, 784], Distribution::Uniform(-1.0, 1.0), &device());
        let noise = Tensor::<2>::random([5, 784], Distribution::Normal(0.0, 0.1), &device());
        let recon = x.clone() + noise;
        let base = scalar(scale_invariant_mse(x.clone(), recon.clone()));
        assert!(base > 0.005 && base < 0.015, "{base}"); // ≈ the noise's variance, 0.01
        let shifted = scalar(scale_invariant_mse(x.clone(), recon.clone().add_scalar(0.7)));
        assert!((shifted - base).abs() < 1e-5, "{shifted} vs {base}");
        // A reconstruction off by a constant alone: 0 up to f32 rounding (of squares ≈ 0.09).
        assert!(scalar(scale_invariant_mse(x.clone(), x.clone().add_scalar(-0.3))).abs() < 1e-6);
        // A plain MSE would count the offset; the scale-invariant one counts a change of shape.
        let scaled = scalar(scale_invariant_mse(x.clone(), recon.mul_scalar(0.5)));
        assert!(scaled > base * 2.0, "{scaled} vs {base}");
    }

    #[test]
    fn nets_shapes_and_loss_terms() {
        let dev = device();
        let nets = DsnNets::init(DsnInput::Images, 24, &dev);
        let xs = Tensor::<2>::random([3, 784], Distribution::Uniform(-1.0, 1.0), &dev);
        let xt = Tensor::<2>::random([2, 784], Distribution::Uniform(-1.0, 1.0), &dev);
        assert_eq!(nets.source_private.forward(xs.clone()).dims(), [3, 24]);
        assert_eq!(nets.decoder.forward(Tensor::zeros([2, 24], &dev)).dims(), [2, 784]);
        let (cs, ct) = (Tensor::<2>::ones([3, 24], &dev), Tensor::<2>::ones([2, 24], &dev));
        let mut sums = DsnSums::default();
        let similarity = Tensor::<1>::from_data(TensorData::new(vec![0.7f32], [1]), &dev);
        let w = DsnWeights { alpha: 0.5, beta: 2.0, gamma: 3.0 };
        let total = scalar(nets.loss(xs, xt, cs, ct, similarity, w, &mut sums));
        let expected = 0.5 * sums.reconstruction + 2.0 * sums.difference + 3.0 * 0.7;
        assert!((total - expected).abs() < 1e-4, "{total} vs {expected}");
        assert!(sums.reconstruction > 0.0 && (sums.similarity - 0.7).abs() < 1e-6, "{sums:?}");
        let e = sums.epoch(1.5, 2.0);
        assert_eq!((e.task, e.similarity), (1.5, sums.similarity / 2.0));

        // On feature rows (a zoo or text backbone): MLP private encoders, the decoder rebuilds
        // the rows' width, and the terms are the same.
        let nets = DsnNets::init(DsnInput::Features(40), 24, &dev);
        assert!(nets.source_private.conv1.is_none() && nets.source_private.hidden.is_some());
        let xs = Tensor::<2>::random([3, 40], Distribution::Uniform(0.0, 2.0), &dev);
        let xt = Tensor::<2>::random([2, 40], Distribution::Uniform(0.0, 2.0), &dev);
        assert_eq!(nets.target_private.forward(xt.clone()).dims(), [2, 24]);
        assert_eq!(nets.decoder.forward(Tensor::zeros([2, 24], &dev)).dims(), [2, 40]);
        let mut sums = DsnSums::default();
        let similarity = Tensor::<1>::from_data(TensorData::new(vec![0.7f32], [1]), &dev);
        let total = scalar(nets.loss(xs, xt, Tensor::ones([3, 24], &dev), Tensor::ones([2, 24], &dev), similarity, w, &mut sums));
        assert!((total - (0.5 * sums.reconstruction + 2.0 * sums.difference + 3.0 * 0.7)).abs() < 1e-4);
        assert!(sums.reconstruction > 0.0, "{sums:?}");
    }
}
