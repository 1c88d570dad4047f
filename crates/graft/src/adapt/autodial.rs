//! AutoDIAL (Carlucci, Porzi, Caputo, Ricci, Rota Bulò, ICCV 2017): domain alignment layers.
//!
//! A domain alignment layer is a BatchNorm whose statistics are computed per domain and then
//! mixed: source rows are normalised with the statistics of the mixture α·source + (1 − α)·target,
//! target rows with α·target + (1 − α)·source. α ∈ [0.5, 1] is learned, one per layer: α = 1 is
//! BatchNorm per domain (full alignment of the first two moments), α = 0.5 gives both domains the
//! same statistics (plain BatchNorm over the joint batch, no alignment). As in the authors' Caffe
//! networks, α starts at 1 and each alignment layer is followed by a learned scale and shift
//! (BatchNorm's affine part, γ = 1 and β = 0 at the start). The training loss is the source
//! cross-entropy plus λ times the mean entropy of the target predictions (the authors' λ, 0.1).
//!
//! Where the layers go: after LeNet's conv1, conv2 and fc, after the bottleneck's linear layer
//! (in place of its BatchNorm) and after the head (on the logits, as the authors do on AlexNet's
//! fc8). A zoo backbone or a text encoder is frozen and its pooled features are the rows, so
//! there the bottleneck and the logits are aligned.
//!
//! α is clamped to [0.5, 1] in the forward pass; the gradient passes the clamp unchanged
//! (straight-through), so an α held at a bound moves back as soon as its gradient turns. The
//! reported α is the clamped one.
//!
//! At evaluation and prediction time a layer normalises with its running statistics of the
//! target mixture (α·target + (1 − α)·source): an AutoDIAL run is a model for the target domain.
//! The source validation split that picks the epoch is scored with the source mixture.

use std::collections::BTreeMap;

use burn::module::{Module, Param, RunningState};
use burn::nn::Initializer;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::model::{AdaptNet, LENET_FEATURES, LENET_SIDE};

/// The bounds of α.
pub const ALPHA_MIN: f64 = 0.5;
pub const ALPHA_MAX: f64 = 1.0;
/// α at the start (the authors' constant filler).
pub const DEFAULT_ALPHA_INIT: f64 = 1.0;
/// Weight of the target entropy (the authors' `loss_weight` of their entropy loss).
pub const DEFAULT_LAMBDA: f64 = 0.1;

/// Which statistics normalise the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// A training batch: the first `source` rows are the source's, the rest the target's; each
    /// part is normalised with its mixture of the batch's statistics.
    Joint { source: usize },
    /// Rows of one domain, normalised with the running statistics of its mixture.
    Source,
    Target,
}

impl Rows {
    /// The same rows after each was expanded into `k` rows (the positions of a feature map).
    fn times(self, k: usize) -> Rows {
        match self {
            Rows::Joint { source } => Rows::Joint { source: source * k },
            other => other,
        }
    }
}

/// A domain alignment layer's settings.
#[derive(Debug, Clone)]
pub struct DialConfig {
    pub num_features: usize,
    pub alpha_init: f64,
    pub epsilon: f64,
    /// Weight of the newest batch in the running statistics (BatchNorm's).
    pub momentum: f64,
}

impl DialConfig {
    pub fn new(num_features: usize) -> Self {
        Self { num_features, alpha_init: DEFAULT_ALPHA_INIT, epsilon: 1e-5, momentum: 0.1 }
    }

    pub fn with_alpha_init(mut self, alpha: f64) -> Self {
        self.alpha_init = alpha;
        self
    }

    pub fn init(&self, device: &Device) -> Dial {
        let c = self.num_features;
        Dial {
            alpha: Initializer::Constant { value: self.alpha_init }.init([1], device),
            gamma: Initializer::Ones.init([c], device),
            beta: Initializer::Zeros.init([c], device),
            source_mean: RunningState::new(Tensor::zeros([c], device)),
            source_var: RunningState::new(Tensor::ones([c], device)),
            target_mean: RunningState::new(Tensor::zeros([c], device)),
            target_var: RunningState::new(Tensor::ones([c], device)),
            epsilon: self.epsilon,
            momentum: self.momentum,
        }
    }
}

/// One domain alignment layer (with BatchNorm's affine part after it).
#[derive(Module, Debug)]
pub struct Dial {
    /// α before the clamp, [1].
    pub alpha: Param<Tensor<1>>,
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    /// Running mean and (biased) variance of each domain's own rows.
    pub source_mean: RunningState<Tensor<1>>,
    pub source_var: RunningState<Tensor<1>>,
    pub target_mean: RunningState<Tensor<1>>,
    pub target_var: RunningState<Tensor<1>>,
    pub epsilon: f64,
    pub momentum: f64,
}

/// Mean and biased variance of each column: [n, c] → ([1, c], [1, c]).
fn moments(x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let mean = x.clone().mean_dim(0); // [1, c]
    let var = (x - mean.clone()).powi_scalar(2).mean_dim(0); // [1, c]
    (mean, var)
}

/// The mean and variance of the mixture a·p + b·q of two distributions with the given moments
/// (b = 1 − a): m = a·m_p + b·m_q, v = a·v_p + b·v_q + a·b·(m_p − m_q)².
fn mix(a: Tensor<2>, b: Tensor<2>, (mp, vp): (Tensor<2>, Tensor<2>), (mq, vq): (Tensor<2>, Tensor<2>)) -> (Tensor<2>, Tensor<2>) {
    let gap = (mp.clone() - mq.clone()).powi_scalar(2); // [1, c]
    let mean = mp * a.clone() + mq * b.clone();
    let var = vp * a.clone() + vq * b.clone() + gap * (a * b);
    (mean, var)
}

impl Dial {
    /// α as it is used: clamped to [0.5, 1], the gradient passing straight through. [1, 1].
    fn alpha_used(&self) -> Tensor<2> {
        let raw = self.alpha.val();
        let clamped = raw.clone().clamp(ALPHA_MIN, ALPHA_MAX);
        (raw.clone() + (clamped - raw).detach()).reshape([1, 1])
    }

    /// The clamped α.
    pub fn alpha(&self) -> f64 {
        let a: f32 = self.alpha.val().into_scalar();
        (a as f64).clamp(ALPHA_MIN, ALPHA_MAX)
    }

    /// [n, c] → [n, c].
    pub fn forward(&self, x: Tensor<2>, rows: Rows) -> Tensor<2> {
        let [_, c] = x.dims();
        let a = self.alpha_used(); // [1, 1]
        let b = a.clone().neg().add_scalar(1.0); // [1, 1]
        let normalised = match rows {
            Rows::Joint { source } => {
                let (xs, xt) = super::losses::split_rows(x, source); // [ns, c], [nt, c]
                let (ps, pt) = (moments(xs.clone()), moments(xt.clone()));
                if xs.device().is_autodiff() {
                    self.remember(&ps, &pt);
                }
                let (ms, vs) = mix(a.clone(), b.clone(), ps.clone(), pt.clone()); // source: α·s + (1 − α)·t
                let (mt, vt) = mix(a, b, pt, ps); // target: α·t + (1 − α)·s
                let ys = (xs - ms) / vs.add_scalar(self.epsilon).sqrt();
                let yt = (xt - mt) / vt.add_scalar(self.epsilon).sqrt();
                Tensor::cat(vec![ys, yt], 0) // [n, c]
            }
            Rows::Source | Rows::Target => {
                let device = x.device();
                let running = |s: &RunningState<Tensor<1>>| s.value().to_device(&device).reshape([1, c]);
                let source = (running(&self.source_mean), running(&self.source_var));
                let target = (running(&self.target_mean), running(&self.target_var));
                let (own, other) = if rows == Rows::Source { (source, target) } else { (target, source) };
                let (m, v) = mix(a.detach(), b.detach(), own, other);
                (x - m) / v.add_scalar(self.epsilon).sqrt()
            }
        };
        normalised * self.gamma.val().reshape([1, c]) + self.beta.val().reshape([1, c])
    }

    /// Feature maps, each channel normalised over its positions: [n, c, h, w] → [n, c, h, w].
    pub fn forward_map(&self, x: Tensor<4>, rows: Rows) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let flat = x.swap_dims(1, 3).reshape([n * w * h, c]); // [n·w·h, c], image by image
        let y = self.forward(flat, rows.times(h * w));
        y.reshape([n, w, h, c]).swap_dims(1, 3) // [n, c, h, w]
    }

    /// Moves the running statistics towards this batch's.
    fn remember(&self, (ms, vs): &(Tensor<2>, Tensor<2>), (mt, vt): &(Tensor<2>, Tensor<2>)) {
        let m = self.momentum;
        let update = |state: &RunningState<Tensor<1>>, batch: &Tensor<2>| {
            let batch = batch.clone().detach();
            let [_, c] = batch.dims();
            let old = state.value_sync().to_device(&batch.device());
            state.update(old.mul_scalar(1.0 - m).add(batch.reshape([c]).mul_scalar(m)).detach());
        };
        update(&self.source_mean, ms);
        update(&self.source_var, vs);
        update(&self.target_mean, mt);
        update(&self.target_var, vt);
    }
}

/// LeNet's alignment layers: after conv1, conv2 and fc.
#[derive(Module, Debug)]
pub struct LenetDial {
    pub conv1: Dial,
    pub conv2: Dial,
    pub fc: Dial,
}

/// The alignment layers of an AutoDIAL network ([`AdaptNet::dial`]).
#[derive(Module, Debug)]
pub struct DialLayers {
    pub lenet: Option<LenetDial>,
    /// After the bottleneck's linear layer (its BatchNorm is not used).
    pub bottleneck: Dial,
    /// After the head.
    pub logits: Dial,
    /// Inference normalises with the source's mixture instead of the target's (the source
    /// validation split).
    pub on_source: bool,
}

impl DialLayers {
    pub fn init(lenet: bool, bottleneck: usize, classes: usize, alpha_init: f64, device: &Device) -> Self {
        let dial = |c: usize| DialConfig::new(c).with_alpha_init(alpha_init).init(device);
        Self {
            lenet: lenet.then(|| LenetDial { conv1: dial(20), conv2: dial(50), fc: dial(LENET_FEATURES) }),
            bottleneck: dial(bottleneck),
            logits: dial(classes),
            on_source: false,
        }
    }

    /// What a batch's rows are: a joint training batch with `source` rows of the source first,
    /// else one domain (the target, unless [`Self::on_source`]).
    pub fn rows(&self, source: Option<usize>) -> Rows {
        match source {
            Some(source) => Rows::Joint { source },
            None if self.on_source => Rows::Source,
            None => Rows::Target,
        }
    }

    /// Each layer's clamped α, by name.
    pub fn alphas(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        if let Some(l) = &self.lenet {
            out.insert("conv1".to_string(), l.conv1.alpha());
            out.insert("conv2".to_string(), l.conv2.alpha());
            out.insert("fc".to_string(), l.fc.alpha());
        }
        out.insert("bottleneck".to_string(), self.bottleneck.alpha());
        out.insert("logits".to_string(), self.logits.alpha());
        out
    }

    /// `net`'s rows → its bottleneck features [n, bottleneck], aligned after every layer.
    pub fn features(&self, net: &AdaptNet, x: Tensor<2>, rows: Rows) -> Tensor<2> {
        let x = match (&net.lenet, &self.lenet) {
            (Some(lenet), Some(dial)) => {
                // LeNet's forward (model.rs) with an alignment layer after each of its layers.
                let [n, _] = x.dims();
                let x = x.reshape([n, 1, LENET_SIDE, LENET_SIDE]); // [n, 1, 28, 28]
                let x = dial.conv1.forward_map(lenet.conv1.forward(x), rows); // [n, 20, 24, 24]
                let x = relu(lenet.pool.forward(x)); // [n, 20, 12, 12]
                let x = dial.conv2.forward_map(lenet.conv2.forward(x), rows); // [n, 50, 8, 8]
                let mask = lenet.channel_dropout.forward(Tensor::<4>::ones([n, 50, 1, 1], &x.device()));
                let x = x * mask.expand([n, 50, 8, 8]);
                let x = relu(lenet.pool.forward(x)); // [n, 50, 4, 4]
                let x = relu(dial.fc.forward(lenet.fc.forward(x.flatten(1, 3)), rows)); // [n, 500]
                lenet.dropout.forward(x)
            }
            _ => x,
        };
        relu(self.bottleneck.forward(net.bottleneck.forward(x), rows)) // [n, bottleneck]
    }
}

impl AdaptNet {
    /// The network with AutoDIAL's alignment layers (α starting at `alpha_init`).
    pub fn with_dial(mut self, alpha_init: f64, device: &Device) -> Self {
        let [_, bottleneck] = self.bottleneck.weight.dims();
        let [_, classes] = self.head.weight.dims();
        self.dial = Some(DialLayers::init(self.lenet.is_some(), bottleneck, classes, alpha_init, device));
        self
    }

    /// A copy whose alignment layers normalise with the source's statistics at inference (the
    /// same network when it has none).
    pub fn on_source(&self) -> Self {
        let mut net = self.clone();
        if let Some(d) = net.dial.as_mut() {
            d.on_source = true;
        }
        net
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    fn layer(alpha: f64, c: usize, device: &Device) -> Dial {
        DialConfig::new(c).with_alpha_init(alpha).init(device)
    }

    fn close(a: Tensor<2>, b: Tensor<2>) {
        let gap: f32 = (a - b).abs().max().into_scalar();
        assert!(gap < 1e-4, "largest difference {gap}");
    }

    #[test]
    fn alpha_one_is_batchnorm_per_domain_and_one_half_shares_the_statistics() {
        let device = crate::device::default_device().autodiff();
        let (ns, nt, c) = (6, 9, 4);
        // The domains differ in mean and scale.
        let xs = Tensor::<2>::random([ns, c], Distribution::Normal(2.0, 3.0), &device);
        let xt = Tensor::<2>::random([nt, c], Distribution::Normal(-1.0, 0.5), &device);
        let joint = Tensor::cat(vec![xs.clone(), xt.clone()], 0);
        let rows = Rows::Joint { source: ns };

        // α = 1: each domain normalised by its own batch statistics, as BatchNorm on it alone.
        let bn = BatchNormConfig::new(c).init(&device);
        let per_domain = Tensor::cat(vec![bn.forward(xs.clone()), bn.forward(xt.clone())], 0);
        close(layer(1.0, c, &device).forward(joint.clone(), rows), per_domain);

        // α = 0.5 with domains of equal size: both take the statistics of the joint batch.
        let xt_even = xt.clone().slice([0..ns, 0..c]);
        let even = Tensor::cat(vec![xs.clone(), xt_even], 0);
        close(layer(0.5, c, &device).forward(even.clone(), rows), bn.forward(even));

        // α = 0.5 with unequal sizes: the same statistics for both domains, so one row put in
        // both domains comes out the same.
        let row = Tensor::<2>::from_floats([[0.3, -1.0, 2.0, 5.0]], &device);
        let xs_with = Tensor::cat(vec![row.clone(), xs.clone().slice([1..ns, 0..c])], 0);
        let xt_with = Tensor::cat(vec![row, xt.clone().slice([1..nt, 0..c])], 0);
        let y = layer(0.5, c, &device).forward(Tensor::cat(vec![xs_with.clone(), xt_with.clone()], 0), rows);
        close(y.clone().slice([0..1, 0..c]), y.clone().slice([ns..ns + 1, 0..c]));
        // ...which α = 1 does not do (the domains differ).
        let y1 = layer(1.0, c, &device).forward(Tensor::cat(vec![xs_with, xt_with], 0), rows);
        let gap: f32 = (y1.clone().slice([0..1, 0..c]) - y1.slice([ns..ns + 1, 0..c])).abs().sum().into_scalar();
        assert!(gap > 0.1, "{gap}");
    }

    #[test]
    fn alpha_stays_in_its_bounds() {
        let device = crate::device::default_device().autodiff();
        let c = 3;
        let x = Tensor::<2>::random([10, c], Distribution::Normal(0.0, 2.0), &device);
        let rows = Rows::Joint { source: 4 };
        for (raw, used) in [(1.7, 1.0), (0.2, 0.5), (0.8, 0.8)] {
            let l = layer(raw, c, &device);
            assert!((l.alpha() - used).abs() < 1e-6, "{raw} → {}", l.alpha());
            close(l.forward(x.clone(), rows), layer(used, c, &device).forward(x.clone(), rows));
        }
        // The gradient reaches α through the clamp (straight-through).
        let l = layer(1.3, c, &device);
        let grads = l.forward(x.clone(), rows).powi_scalar(3).sum().backward();
        let g = l.alpha.val().grad(&grads).expect("α has a gradient");
        let g: f32 = g.into_scalar();
        assert!(g.is_finite() && g != 0.0, "{g}");
    }

    #[test]
    fn inference_uses_the_running_statistics_of_each_domains_mixture() {
        let device = crate::device::default_device().autodiff();
        let c = 2;
        let l = DialConfig { momentum: 1.0, ..DialConfig::new(c) }.with_alpha_init(0.75).init(&device);
        let xs = Tensor::<2>::random([8, c], Distribution::Normal(3.0, 1.0), &device);
        let xt = Tensor::<2>::random([8, c], Distribution::Normal(-2.0, 2.0), &device);
        // With momentum 1 the running statistics are the last batch's: inference reproduces
        // the training normalisation of each domain.
        let y = l.forward(Tensor::cat(vec![xs.clone(), xt.clone()], 0), Rows::Joint { source: 8 });
        let valid = l.valid();
        let plain = |t: Tensor<2>| Tensor::<2>::from_data(t.into_data(), &crate::device::default_device());
        let ys = valid.forward(plain(xs), Rows::Source);
        let yt = valid.forward(plain(xt), Rows::Target);
        let back = |t: Tensor<2>| Tensor::<2>::from_data(t.into_data(), &device);
        close(y.clone().slice([0..8, 0..c]), back(ys));
        close(y.slice([8..16, 0..c]), back(yt));
    }

    #[test]
    fn a_dial_network_aligns_lenet_and_features() {
        let device = crate::device::default_device();
        let net = AdaptNet::init(true, 784, 16, 10, &device).with_dial(1.0, &device);
        let alphas = net.dial.as_ref().unwrap().alphas();
        assert_eq!(alphas.keys().cloned().collect::<Vec<_>>(), ["bottleneck", "conv1", "conv2", "fc", "logits"]);
        assert!(alphas.values().all(|&a| a == 1.0));
        let x = Tensor::<2>::random([3, 784], Distribution::Uniform(0.0, 1.0), &device);
        let (f, logits) = net.forward(x.clone());
        assert_eq!((f.dims(), logits.dims()), ([3, 16], [3, 10]));
        // The source view normalises differently once the domains' running statistics differ;
        // at the start both are (0, 1), so they agree.
        let (_, on_source) = net.on_source().forward(x);
        close(logits, on_source);
        let features = AdaptNet::init(false, 32, 8, 3, &device).with_dial(1.0, &device);
        assert_eq!(features.dial.as_ref().unwrap().alphas().len(), 2);
        let (f, l) = features.forward(Tensor::<2>::zeros([2, 32], &device));
        assert_eq!((f.dims(), l.dims()), ([2, 8], [2, 3]));
    }
}
