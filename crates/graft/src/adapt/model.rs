//! The networks domain adaptation trains: LeNet (digits, from scratch), the classifier
//! (backbone → bottleneck → head, as TLlib's `ImageClassifier`) and the domain discriminator.
//!
//! Every network takes flat rows `[n, width]`: LeNet reshapes them to 1×28×28 images; with a zoo
//! backbone the rows are the frozen trunk's pooled features and the backbone is skipped.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::autodial::DialLayers;

/// Side of LeNet's square grey input.
pub const LENET_SIDE: usize = 28;
/// Width of LeNet's output (its fc layer).
pub const LENET_FEATURES: usize = 500;

/// LeNet as in TLlib's digit experiments (Caffe's LeNet without padding): conv 5×5 → 20,
/// max-pool, ReLU, conv 5×5 → 50, channel dropout 0.5, max-pool, ReLU, fc 800 → 500, ReLU,
/// dropout 0.5.
#[derive(Module, Debug)]
pub struct LeNet {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc: Linear,
    pub pool: MaxPool2d,
    /// Drops whole channels of conv2's output (PyTorch's `Dropout2d`): applied to a [n, 50, 1, 1]
    /// mask of ones, broadcast over the map.
    pub channel_dropout: Dropout,
    pub dropout: Dropout,
}

impl LeNet {
    pub fn init(device: &Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([1, 20], [5, 5]).init(device),
            conv2: Conv2dConfig::new([20, 50], [5, 5]).init(device),
            fc: LinearConfig::new(50 * 4 * 4, LENET_FEATURES).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            channel_dropout: DropoutConfig::new(0.5).init(),
            dropout: DropoutConfig::new(0.5).init(),
        }
    }

    /// [n, 784] → [n, 500].
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, _] = x.dims();
        let x = x.reshape([n, 1, LENET_SIDE, LENET_SIDE]); // [n, 1, 28, 28]
        let x = relu(self.pool.forward(self.conv1.forward(x))); // [n, 20, 12, 12]
        let x = self.conv2.forward(x); // [n, 50, 8, 8]
        let mask = self.channel_dropout.forward(Tensor::<4>::ones([n, 50, 1, 1], &x.device()));
        let x = x * mask.expand([n, 50, 8, 8]);
        let x = relu(self.pool.forward(x)); // [n, 50, 4, 4]
        let x = relu(self.fc.forward(x.flatten(1, 3))); // [n, 500]
        self.dropout.forward(x)
    }
}

/// Backbone (LeNet, or none for precomputed features) → bottleneck (linear, BatchNorm, ReLU) →
/// linear head. The bottleneck's output is the feature every adaptation loss aligns.
#[derive(Module, Debug)]
pub struct AdaptNet {
    pub lenet: Option<LeNet>,
    pub bottleneck: Linear,
    pub bottleneck_bn: BatchNorm,
    pub head: Linear,
    /// AutoDIAL's domain alignment layers (`--method autodial`), which replace the bottleneck's
    /// BatchNorm and follow LeNet's layers and the head.
    pub dial: Option<DialLayers>,
}

impl AdaptNet {
    /// `input`: width of the rows when there is no LeNet (the trunk's feature width).
    pub fn init(lenet: bool, input: usize, bottleneck: usize, classes: usize, device: &Device) -> Self {
        let width = if lenet { LENET_FEATURES } else { input };
        Self {
            lenet: lenet.then(|| LeNet::init(device)),
            bottleneck: LinearConfig::new(width, bottleneck).init(device),
            bottleneck_bn: BatchNormConfig::new(bottleneck).init(device),
            head: LinearConfig::new(bottleneck, classes).init(device),
            dial: None,
        }
    }

    /// Rows → bottleneck features [n, bottleneck].
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        if let Some(dial) = &self.dial {
            return dial.features(self, x, dial.rows(None));
        }
        let x = match &self.lenet {
            Some(lenet) => lenet.forward(x),
            None => x,
        };
        relu(self.bottleneck_bn.forward(self.bottleneck.forward(x)))
    }

    /// Rows → (bottleneck features, logits).
    pub fn forward(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        self.forward_joint(x, None)
    }

    /// A training batch of both domains, the first `source` rows the source's, → (features,
    /// logits); only AutoDIAL's alignment layers read the split (`None`: one domain's rows).
    pub fn forward_joint(&self, x: Tensor<2>, source: Option<usize>) -> (Tensor<2>, Tensor<2>) {
        let f = match &self.dial {
            Some(dial) => dial.features(self, x, dial.rows(source)),
            None => self.features(x),
        };
        let logits = self.head.forward(f.clone()); // [n, classes]
        let logits = match &self.dial {
            Some(dial) => dial.logits.forward(logits, dial.rows(source)),
            None => logits,
        };
        (f, logits)
    }

    pub fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward(x).1
    }
}

/// TLlib's `DomainDiscriminator`: linear → BatchNorm → ReLU, twice (hidden width 1024), then one
/// logit (source = 1, target = 0; the sigmoid is inside the loss).
#[derive(Module, Debug)]
pub struct Discriminator {
    pub fc1: Linear,
    pub bn1: BatchNorm,
    pub fc2: Linear,
    pub bn2: BatchNorm,
    pub out: Linear,
}

impl Discriminator {
    pub fn init(input: usize, hidden: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(input, hidden).init(device),
            bn1: BatchNormConfig::new(hidden).init(device),
            fc2: LinearConfig::new(hidden, hidden).init(device),
            bn2: BatchNormConfig::new(hidden).init(device),
            out: LinearConfig::new(hidden, 1).init(device),
        }
    }

    /// [n, input] → [n, 1] logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = relu(self.bn1.forward(self.fc1.forward(x)));
        let x = relu(self.bn2.forward(self.fc2.forward(x)));
        self.out.forward(x)
    }
}

/// MDD's adversarial head (TLlib's `adv_head`): linear → ReLU → dropout 0.5 → linear to the
/// classes, fed the bottleneck features through gradient reversal.
#[derive(Module, Debug)]
pub struct AdvHead {
    pub fc1: Linear,
    pub dropout: Dropout,
    pub fc2: Linear,
}

impl AdvHead {
    pub fn init(input: usize, hidden: usize, classes: usize, device: &Device) -> Self {
        Self { fc1: LinearConfig::new(input, hidden).init(device), dropout: DropoutConfig::new(0.5).init(), fc2: LinearConfig::new(hidden, classes).init(device) }
    }

    /// [n, input] → [n, classes] logits.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.dropout.forward(relu(self.fc1.forward(x))))
    }
}

/// What one optimizer trains: the classifier and, for the adversarial methods, a discriminator
/// (MDD: an adversarial head; DAAN: also one local discriminator per class; DSN: also its
/// private encoders and decoder).
#[derive(Module, Debug)]
pub struct Trainable {
    pub net: AdaptNet,
    pub disc: Option<Discriminator>,
    pub adv: Option<AdvHead>,
    pub local: Vec<Discriminator>,
    /// DSN: the private encoders and the shared decoder.
    pub dsn: Option<super::dsn::DsnNets>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn shapes_and_modes() {
        let device = crate::device::default_device();
        let net = AdaptNet::init(true, 784, 256, 10, &device);
        let x = Tensor::<2>::random([3, 784], Distribution::Uniform(-1.0, 1.0), &device);
        let (f, logits) = net.forward(x.clone());
        assert_eq!(f.dims(), [3, 256]);
        assert_eq!(logits.dims(), [3, 10]);
        // Inference is deterministic (no dropout off the autodiff device).
        let a: Vec<f32> = net.logits(x.clone()).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = net.logits(x).into_data().try_to_vec().unwrap();
        assert_eq!(a, b);
        let features = AdaptNet::init(false, 1280, 64, 3, &device);
        let (f, l) = features.forward(Tensor::<2>::zeros([2, 1280], &device));
        assert_eq!((f.dims(), l.dims()), ([2, 64], [2, 3]));
        let d = Discriminator::init(64, 32, &device);
        assert_eq!(d.forward(Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 128], [2, 64]), &device)).dims(), [2, 1]);
        let adv = AdvHead::init(64, 32, 3, &device);
        assert_eq!(adv.forward(Tensor::<2>::zeros([5, 64], &device)).dims(), [5, 3]);
    }
}

