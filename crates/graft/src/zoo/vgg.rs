//! VGG-11/13/16/19 with and without BatchNorm (Simonyan & Zisserman, 2015) and AlexNet
//! (Krizhevsky et al., 2012), exactly as torchvision builds them, so a user's torchvision state
//! dict (`torch.save(torchvision.models.vgg19(weights=...).state_dict(), 'vgg19.pth')`) loads
//! without renaming. One family: a plain stack of convolutions (each with ReLU, BatchNorm in
//! the `_bn` variants) and max-pools (`features`), an adaptive average pool to a fixed map
//! (7×7, AlexNet 6×6) and a three-layer classifier (`classifier`, dropout off at inference).
//!
//! Names are torchvision's: `features.N` counts every module of its `nn.Sequential`, ReLU and
//! BatchNorm included (vgg19's convolutions are `features.0`, `features.2`, `features.5`, …;
//! vgg19_bn's `features.0`, `features.3`, …, with BatchNorm `features.1`), and the classifier's
//! linear layers are `classifier.0/3/6` (AlexNet `classifier.1/4/6`). burn derives parameter
//! paths from field names, so the network keeps its convolutions in `convs` and BatchNorms in
//! `norms`; the layer table maps each to its torchvision name ([`VggConfig::table`]).
//!
//! The trunk ends where Keras's `include_top=False` ends: after the last max-pool ([512, 7, 7]
//! for VGG at 224, [256, 6, 6] for AlexNet), so `--head-pool flatten` gives 25088 (9216).
//!
//! **Stages** are the layers as Keras counts them: one per convolution (with its BatchNorm and
//! ReLU) and one per max-pool, named by the torchvision module whose output the stage is (a
//! convolution's ReLU, `features.1` for the convolution `features.0`; a pool, `features.4`):
//! the output of stage `features.K` is torchvision's `model.features[:K+1](x)`.
//!
//! **Keras** (`keras.applications.VGG16/VGG19`, [`VggConfig::keras`]): the same network under
//! Keras layer names (`block1_conv1` … `block5_conv4`, `block1_pool`, `fc1`, `fc2`,
//! `predictions`) and layouts, for Keras `.h5` files (see [`super::keras`]), the registered
//! `vgg16_keras` and `vgg19_keras` that `--arch vgg16|vgg19` loads such a file into. Two
//! things differ beyond names: Keras flattens the last `[h, w, 512]` map channels-last, so
//! `fc1`'s rows are permuted into torchvision's (c, h, w) order, and Keras's Caffe-style
//! `preprocess_input` feeds BGR images, so `block1_conv1`'s input channels are reversed and the
//! network takes RGB minus the ImageNet mean like the others ([`KERAS_CAFFE_INPUT`]). The top
//! flattens the map at the native side (no adaptive pool: the pool side is resolution / 32);
//! `include_top=False` files (`…_notop.h5`) load as a trunk without the classifier.
//!
//! **`--freeze N`** counts layers as Keras's `model.layers[:N]` does, the input layer first:
//! the layer table begins with a parameterless `input` row, then one block per convolution (its
//! BatchNorm with it) and per pool. So `--freeze 5` freezes input, `features.0`, `features.2`,
//! `features.4` (pool) and `features.5`: Keras VGG19's input, block1_conv1, block1_conv2,
//! block1_pool and block2_conv1, the seed's recipe.
//!
//! **Caffe flavours** ([`VggNames`]): the Caffe Model Zoo's VGG ILSVRC-16/19 are torchvision's
//! `vgg16`/`vgg19` under Caffe's names (`conv1_1`, `relu1_1`, `pool1`, `fc6`); its AlexNet
//! (`bvlc_alexnet`) and the reference CaffeNet are the two-GPU network of the paper (96, 256,
//! 384, 384, 256 filters, conv2/4/5 in two groups, LRN after conv1 and conv2, 227×227 input),
//! not torchvision's. Their first convolution reads BGR in the file and is reversed to read RGB
//! on load ([`Convention::Caffe`]). A `.caffemodel` given to `--arch vgg16|vgg19|alexnet` loads
//! into these by its names ([`ModelSpec::for_weights`](super::ModelSpec::for_weights)).

use std::collections::HashMap;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::backbone::{Backbone, BackboneNet};
use crate::export::onnx::{float, int, ints, OnnxGraph};
use super::load::WeightSource;
use super::resnet::{BN_EPS, BN_MOMENTUM};
use super::table::{Builder, Convention, FileInput, Table};
use super::{flavour, user_weights, InputCfg, ModelSpec, TimmInput, Trunk, KERAS_CAFFE_INPUT};
use crate::data::image::{Crop, Interpolation};
use graft_weights::caffe::{rgb_mean, ALEXNET_MEAN_BGR, VGG16_MEAN_BGR};
use crate::Result;

/// The registered VGGs and AlexNet: torchvision's, for the user's own weights (`--weights
/// FILE`), with torchvision's eval transforms (resize 256, centre crop 224, bilinear).
pub const MODELS: &[ModelSpec] = &[
    user_weights("vgg11", || VggConfig::vgg(11, false).into()),
    user_weights("vgg11_bn", || VggConfig::vgg(11, true).into()),
    user_weights("vgg13", || VggConfig::vgg(13, false).into()),
    user_weights("vgg13_bn", || VggConfig::vgg(13, true).into()),
    user_weights("vgg16", || VggConfig::vgg(16, false).into()),
    user_weights("vgg16_bn", || VggConfig::vgg(16, true).into()),
    user_weights("vgg19", || VggConfig::vgg(19, false).into()),
    user_weights("vgg19_bn", || VggConfig::vgg(19, true).into()),
    user_weights("alexnet", || VggConfig::alexnet().into()),
    // Caffe Model Zoo files (`graft_weights::caffe`): a `.caffemodel` given to `--arch vgg16`,
    // `vgg19` or `alexnet` loads into these by its layer names.
    flavour("vgg16_caffe", "vgg16", CAFFE_VGG_INPUT, || VggConfig::caffe_vgg(16).into()),
    flavour("vgg19_caffe", "vgg19", CAFFE_VGG_INPUT, || VggConfig::caffe_vgg(19).into()),
    flavour("bvlc_alexnet", "alexnet", CAFFE_ALEXNET_INPUT, || VggConfig::caffe_alexnet(false).into()),
    flavour("caffenet", "alexnet", CAFFE_ALEXNET_INPUT, || VggConfig::caffe_alexnet(true).into()),
    // Keras Applications files (`super::keras`): an `.h5` given to `--arch vgg16|vgg19` loads
    // into these by its layer names.
    flavour("vgg16_keras", "vgg16", KERAS_CAFFE_INPUT, || VggConfig::keras(16, 224).into()),
    flavour("vgg19_keras", "vgg19", KERAS_CAFFE_INPUT, || VggConfig::keras(19, 224).into()),
];

/// Caffe's VGG preparation: BGR on the 0–255 scale, the VGG mean pixel subtracted, no scaling
/// (std 1), 224×224 centre crops; the images read RGB here as the first convolution's channels
/// are reversed on load ([`Convention::Caffe`]), so the means are given in RGB order. The
/// shorter side goes to 256 first, as the VGG authors' single-scale evaluation did.
const CAFFE_VGG_INPUT: InputCfg = InputCfg {
    crop: Crop::ResizeCentre { shorter: 256 },
    interpolation: Interpolation::Bilinear,
    mean: rgb_mean(VGG16_MEAN_BGR),
    std: [1.0; 3],
};

/// Caffe's AlexNet / CaffeNet preparation: the BVLC mean pixel subtracted (RGB order, as
/// above), no scaling, the 227×227 centre crop of an image brought to 256. (Caffe's ImageNet
/// images were warped to 256×256, aspect not kept; here the shorter side goes to 256, the same
/// for square images.)
const CAFFE_ALEXNET_INPUT: InputCfg = InputCfg {
    crop: Crop::ResizeCentre { shorter: 256 },
    interpolation: Interpolation::Bilinear,
    mean: rgb_mean(ALEXNET_MEAN_BGR),
    std: [1.0; 3],
};

/// One module of `features` with parameters or a pool (ReLUs follow every convolution).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feature {
    /// A convolution with bias, square kernel, symmetric padding, its channels in `groups`
    /// independent groups (Caffe's AlexNet: 2, the two GPUs of the paper; otherwise 1).
    Conv { output: usize, kernel: usize, stride: usize, padding: usize, groups: usize },
    /// A max-pool without padding (floor mode; Caffe rounds up, which is the same at the
    /// sides these networks are built for: 224 for VGG, 227 for Caffe's AlexNet).
    Pool { kernel: usize, stride: usize },
    /// Caffe's local response normalisation across channels (`LRN`, `ACROSS_CHANNELS`):
    /// x / (k + α/n · Σ x²)^β over the `size` channels centred on each one, zeros beyond the
    /// edges (PyTorch's `nn.LocalResponseNorm`, ONNX's `LRN`).
    Lrn { size: usize, alpha: f32, beta: f32, k: f32 },
}

/// Whose names the layers carry, and so the weights files they load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VggNames {
    /// torchvision's: `features.N` (every module of its `nn.Sequential` counted),
    /// `classifier.N`.
    Torchvision,
    /// The Caffe Model Zoo's VGG ILSVRC-16/19 prototxts: `conv{block}_{i}`, `relu{block}_{i}`,
    /// `pool{block}`, `fc6`…`fc8`.
    CaffeVgg,
    /// The Caffe Model Zoo's `bvlc_alexnet` / `bvlc_reference_caffenet` prototxts: `conv1`…
    /// `conv5`, `relu{i}`, `norm{i}` and `pool{i}` after convolution `i`, `fc6`…`fc8`.
    CaffeAlexNet,
    /// `keras.applications.VGG16/VGG19`: `block{b}_conv{i}` (the ReLU inside), `block{b}_pool`,
    /// `flatten`, `fc1`, `fc2`, `predictions`, in Keras's layouts.
    Keras,
}

/// A VGG or AlexNet.
#[derive(Debug, Clone, PartialEq)]
pub struct VggConfig {
    pub features: Vec<Feature>,
    /// BatchNorm after every convolution (torchvision's `vgg*_bn`).
    pub batch_norm: bool,
    /// Side of the adaptive average pool before the classifier (VGG 7, AlexNet 6).
    pub pool_side: usize,
    /// Width of the classifier's two hidden layers (4096).
    pub hidden: usize,
    /// torchvision's indices of the classifier's three linear layers in `classifier`.
    pub classifier_index: [usize; 3],
    /// Native input side (for the layer table's output shapes); torchvision's is 224.
    pub resolution: usize,
    pub num_classes: usize,
    pub names: VggNames,
}

impl VggConfig {
    /// torchvision's `vgg{depth}` (11, 13, 16 or 19), `_bn` with `batch_norm`.
    pub fn vgg(depth: usize, batch_norm: bool) -> Self {
        // torchvision's cfgs "A", "B", "D", "E": channels, 0 a max-pool.
        let plan: &[usize] = match depth {
            11 => &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
            13 => &[64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
            16 => &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0],
            _ => &[64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0],
        };
        let features = plan
            .iter()
            .map(|&c| if c == 0 { Feature::Pool { kernel: 2, stride: 2 } } else { Feature::Conv { output: c, kernel: 3, stride: 1, padding: 1, groups: 1 } })
            .collect();
        Self { features, batch_norm, pool_side: 7, hidden: 4096, classifier_index: [0, 3, 6], resolution: 224, num_classes: 1000, names: VggNames::Torchvision }
    }

    /// The Caffe Model Zoo's VGG ILSVRC-16 or -19 (`VGG_ILSVRC_16_layers.caffemodel`): the same
    /// network as torchvision's `vgg16` / `vgg19`, under Caffe's layer names.
    pub fn caffe_vgg(depth: usize) -> Self {
        Self { names: VggNames::CaffeVgg, ..Self::vgg(depth, false) }
    }

    /// Caffe's AlexNet as the Model Zoo's files were trained: 96, 256, 384, 384, 256 filters,
    /// conv2, conv4 and conv5 in two groups, LRN (size 5, α 1e-4, β 0.75, k 1) after conv1 and
    /// conv2, 227×227 input. `bvlc_alexnet` normalises before pooling; the reference CaffeNet
    /// (`bvlc_reference_caffenet`, which DeCAF and the transferability study used) pools first
    /// (`pool_first`).
    pub fn caffe_alexnet(pool_first: bool) -> Self {
        let conv = |output, kernel, stride, padding, groups| Feature::Conv { output, kernel, stride, padding, groups };
        let pool = Feature::Pool { kernel: 3, stride: 2 };
        let lrn = Feature::Lrn { size: 5, alpha: 1e-4, beta: 0.75, k: 1.0 };
        let (a, b) = if pool_first { (pool, lrn) } else { (lrn, pool) };
        Self {
            features: vec![conv(96, 11, 4, 0, 1), a, b, conv(256, 5, 1, 2, 2), a, b, conv(384, 3, 1, 1, 1), conv(384, 3, 1, 1, 2), conv(256, 3, 1, 1, 2), pool],
            batch_norm: false,
            pool_side: 6,
            hidden: 4096,
            classifier_index: [0, 1, 2],
            resolution: 227,
            num_classes: 1000,
            names: VggNames::CaffeAlexNet,
        }
    }

    /// `keras.applications.VGG16/VGG19` (`depth` 16 or 19) at `resolution` px (a multiple of
    /// 32; Keras's top flattens the `resolution / 32` map).
    pub fn keras(depth: usize, resolution: usize) -> Self {
        Self { resolution, pool_side: resolution / 32, names: VggNames::Keras, ..Self::vgg(depth, false) }
    }

    /// torchvision's `alexnet` (the one-GPU variant of the paper: 64, 192, 384, 256, 256).
    pub fn alexnet() -> Self {
        let conv = |output, kernel, stride, padding| Feature::Conv { output, kernel, stride, padding, groups: 1 };
        let pool = Feature::Pool { kernel: 3, stride: 2 };
        Self {
            features: vec![conv(64, 11, 4, 2), pool, conv(192, 5, 1, 2), pool, conv(384, 3, 1, 1), conv(256, 3, 1, 1), conv(256, 3, 1, 1), pool],
            batch_norm: false,
            pool_side: 6,
            hidden: 4096,
            classifier_index: [1, 4, 6],
            resolution: 224,
            num_classes: 1000,
            names: VggNames::Torchvision,
        }
    }

    /// torchvision's `features` index of each feature (ReLUs and BatchNorms counted).
    fn torch_index(&self) -> Vec<usize> {
        let mut index = 0;
        self.features
            .iter()
            .map(|f| {
                let at = index;
                index += match f {
                    Feature::Conv { .. } if self.batch_norm => 3,
                    Feature::Conv { .. } => 2,
                    Feature::Pool { .. } | Feature::Lrn { .. } => 1,
                };
                at
            })
            .collect()
    }

    /// Builds the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Vgg {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table (see [`table`](super::table)) under torchvision's, Caffe's or Keras's
    /// names. Caffe's and Keras's first convolution reads BGR ([`FileInput::Bgr`]); Keras's `fc1`
    /// reads the last map flattened channels-last ([`FileInput::ChannelsLast`]).
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1;
        let names = self.file_names();
        let convention = match self.names {
            VggNames::Torchvision => Convention::Torch,
            VggNames::CaffeVgg | VggNames::CaffeAlexNet => Convention::Caffe,
            VggNames::Keras => Convention::Keras,
        };
        let table = table.renamed(convention, |leaf| names.get(&leaf.module).cloned().unwrap_or_else(|| leaf.module.clone()));
        if self.names == VggNames::Torchvision {
            // A VGG's timm names are the second name set (timm has no AlexNet).
            return if self.classifier_index == [0, 3, 6] { table.with_timm(|torch, shape| self.timm_name(torch, shape)) } else { table };
        }
        let first = names.get("convs.0").cloned().unwrap_or_default();
        let table = table.with_input(&first, FileInput::Bgr);
        if self.names != VggNames::Keras {
            return table;
        }
        let channels = self.features.iter().rev().find_map(|f| if let Feature::Conv { output, .. } = f { Some(*output) } else { None }).unwrap_or(3);
        let side = self.pool_side;
        table.with_input("fc1", FileInput::ChannelsLast { channels, h: side, w: side })
    }

    /// timm's name and shape of torchvision's VGG tensor `torch` of `shape` (timm's
    /// `vgg11` … `vgg19_bn`, the same networks): `features.*` keep their names; the classifier's
    /// first two linear layers are timm's `pre_logits` convolutions, `classifier.0` →
    /// `pre_logits.fc1` (`[4096, 512 · 7 · 7]` as `[4096, 512, 7, 7]`: torchvision flattens the
    /// 7×7 map in the kernel's order) and `classifier.3` → `pre_logits.fc2` (`[4096, 4096, 1,
    /// 1]`); `classifier.6` → `head.fc`. At the 224-pixel native side the two are the same
    /// function: the last map is 7×7, the 7×7 convolution leaves 1×1, timm's global pool of that
    /// is the value itself.
    fn timm_name(&self, torch: &str, shape: &[usize]) -> (String, Vec<usize>) {
        let k = self.pool_side;
        match (torch.split_once('.'), shape) {
            (Some(("classifier", rest)), _) => {
                let (layer, param) = rest.split_once('.').unwrap_or((rest, ""));
                match (layer, shape) {
                    ("0", &[out, input]) => (format!("pre_logits.fc1.{param}"), vec![out, input / (k * k), k, k]),
                    ("0", _) => (format!("pre_logits.fc1.{param}"), shape.to_vec()),
                    ("3", &[out, input]) => (format!("pre_logits.fc2.{param}"), vec![out, input, 1, 1]),
                    ("3", _) => (format!("pre_logits.fc2.{param}"), shape.to_vec()),
                    _ => (format!("head.fc.{param}"), shape.to_vec()),
                }
            }
            _ => (torch.to_string(), shape.to_vec()),
        }
    }

    /// Per feature: its name in the weights file (torchvision's `features.N`, Caffe's
    /// `conv1_1`, `pool1`, `norm1`) and the name of the stage output it ends (a convolution's
    /// ReLU: `features.N+1`, `relu1_1`; otherwise the feature itself).
    fn feature_names(&self) -> Vec<(String, String)> {
        let relu = if self.batch_norm { 2 } else { 1 };
        let (mut block, mut in_block, mut conv) = (1, 0, 0);
        self.features
            .iter()
            .zip(self.torch_index())
            .map(|(f, at)| match (self.names, f) {
                (VggNames::Torchvision, Feature::Conv { .. }) => (format!("features.{at}"), format!("features.{}", at + relu)),
                (VggNames::Torchvision, _) => (format!("features.{at}"), format!("features.{at}")),
                (VggNames::CaffeVgg, Feature::Conv { .. }) => {
                    in_block += 1;
                    (format!("conv{block}_{in_block}"), format!("relu{block}_{in_block}"))
                }
                (VggNames::CaffeVgg, _) => {
                    let name = format!("pool{block}");
                    (block, in_block) = (block + 1, 0);
                    (name.clone(), name)
                }
                (VggNames::CaffeAlexNet, Feature::Conv { .. }) => {
                    conv += 1;
                    (format!("conv{conv}"), format!("relu{conv}"))
                }
                (VggNames::CaffeAlexNet, Feature::Pool { .. }) => (format!("pool{conv}"), format!("pool{conv}")),
                (VggNames::CaffeAlexNet, Feature::Lrn { .. }) => (format!("norm{conv}"), format!("norm{conv}")),
                // Keras's convolutions hold their ReLU: a stage's output is its layer's.
                (VggNames::Keras, Feature::Conv { .. }) => {
                    in_block += 1;
                    let name = format!("block{block}_conv{in_block}");
                    (name.clone(), name)
                }
                (VggNames::Keras, _) => {
                    let name = format!("block{block}_pool");
                    (block, in_block) = (block + 1, 0);
                    (name.clone(), name)
                }
            })
            .collect()
    }

    /// The classifier's three linear layers in the weights file.
    fn classifier_names(&self) -> [String; 3] {
        match self.names {
            VggNames::Torchvision => self.classifier_index.map(|at| format!("classifier.{at}")),
            VggNames::CaffeVgg | VggNames::CaffeAlexNet => ["fc6".into(), "fc7".into(), "fc8".into()],
            VggNames::Keras => ["fc1".into(), "fc2".into(), "predictions".into()],
        }
    }

    /// burn's module path → the file's name, for the layers with parameters.
    fn file_names(&self) -> HashMap<String, String> {
        let mut names = HashMap::new();
        let mut conv = 0;
        for (f, (name, _)) in self.features.iter().zip(self.feature_names()) {
            if let Feature::Conv { .. } = f {
                if self.batch_norm {
                    // torchvision's BatchNorm is the module after its convolution.
                    let at: usize = name.trim_start_matches("features.").parse().expect("torchvision names");
                    names.insert(format!("norms.{conv}"), format!("features.{}", at + 1));
                }
                names.insert(format!("convs.{conv}"), name);
                conv += 1;
            }
        }
        for (i, name) in self.classifier_names().into_iter().enumerate() {
            names.insert(format!("classifier.{i}"), name);
        }
        names
    }

    /// The walk: `input`, then one stage per convolution and per pool, then the adaptive pool
    /// and the classifier. Convolutions are recorded under burn's paths (`convs.i`,
    /// `norms.i`), renamed by [`table`](Self::table).
    fn build(&self, b: &mut Builder) -> Vgg {
        let (mut channels, mut hw) = (3, self.resolution);
        let (mut convs, mut norms) = (Vec::new(), Vec::new());
        for (stage, (f, (name, _))) in self.features.iter().zip(self.feature_names()).enumerate() {
            b.stage(Some(stage));
            if stage == 0 {
                b.block(Some("input".into()));
                b.layer("input", "InputLayer", vec![3, hw, hw]);
            }
            b.block(Some(name.clone()));
            match *f {
                Feature::Conv { output, kernel, stride, padding, groups } => {
                    hw = (hw + 2 * padding).saturating_sub(kernel) / stride + 1;
                    let config = Conv2dConfig::new([channels, output], [kernel, kernel])
                        .with_stride([stride, stride])
                        .with_groups(groups)
                        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding));
                    convs.push(b.pp("convs").conv(convs.len(), config, [output, hw, hw]));
                    if self.batch_norm {
                        let bn = BatchNormConfig::new(output).with_epsilon(BN_EPS).with_momentum(BN_MOMENTUM);
                        norms.push(b.pp("norms").batch_norm(norms.len(), bn, [output, hw, hw]));
                    }
                    channels = output;
                }
                Feature::Pool { kernel, stride } => {
                    hw = hw.saturating_sub(kernel) / stride + 1;
                    b.layer(name, if kernel == 2 { "MaxPool2d 2x2" } else { "MaxPool2d 3x3" }, vec![channels, hw, hw]);
                }
                Feature::Lrn { .. } => b.layer(name, "LRN", vec![channels, hw, hw]),
            }
        }
        b.block(None);
        b.stage(None);
        let side = self.pool_side;
        // Keras's top flattens the last map (its side is the pool's at the native resolution).
        let pool = if self.names == VggNames::Keras { "flatten" } else { "avgpool" };
        b.layer(pool, if side == 7 { "AdaptiveAvgPool2d 7x7" } else { "AdaptiveAvgPool2d 6x6" }, vec![channels, side, side]);
        let flat = channels * side * side;
        let mut c = b.pp("classifier");
        let classifier = vec![
            c.classifier(0, LinearConfig::new(flat, self.hidden)),
            c.classifier(1, LinearConfig::new(self.hidden, self.hidden)),
            c.classifier(2, LinearConfig::new(self.hidden, self.num_classes)),
        ];
        Vgg { convs, norms, classifier: Some(classifier), config: self.clone() }
    }
}

/// The network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct Vgg {
    /// `features`' convolutions in order (torchvision's `features.0`, `features.2`, …).
    pub convs: Vec<Conv2d>,
    /// Their BatchNorms (`_bn` variants; empty otherwise).
    pub norms: Vec<BatchNorm>,
    /// The ImageNet classifier's three linear layers; `None` once cut off for a new head.
    pub classifier: Option<Vec<Linear>>,
    /// What was built (its layer table drives [`load_weights`](Self::load_weights)).
    #[module(skip)]
    pub config: VggConfig,
}

impl Vgg {
    /// Replaces every parameter and BatchNorm statistic with the checkpoint's, checking that
    /// each tensor exists and has the shape this architecture needs.
    /// A Keras file without the classifier (`include_top=False`) loads as a trunk: the
    /// classifier is dropped.
    pub fn load_weights(mut self, w: &WeightSource) -> Result<Self> {
        let table = self.config.table();
        if self.config.names == VggNames::Keras && !w.dict.tensors.contains_key("fc1/kernel") {
            self.classifier = None;
            return table.without_head().load(self, w);
        }
        table.load(self, w)
    }

    /// Runs stages `range` (one per convolution and per pool) on a feature map; stages past
    /// the end are ignored.
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        // The convolutions before `range.start`.
        let mut conv = self.config.features[..range.start.min(self.config.features.len())].iter().filter(|f| matches!(f, Feature::Conv { .. })).count();
        for f in self.config.features.iter().take(range.end).skip(range.start) {
            match *f {
                Feature::Conv { .. } => {
                    x = self.convs[conv].forward(x); // [N, C_out, h, w]
                    if let Some(bn) = self.norms.get(conv) {
                        x = bn.forward(x);
                    }
                    x = relu(x);
                    conv += 1;
                }
                Feature::Pool { kernel, stride } => {
                    x = MaxPool2dConfig::new([kernel, kernel]).with_strides([stride, stride]).init().forward(x); // [N, C, h/2, w/2]
                }
                Feature::Lrn { size, alpha, beta, k } => x = local_response_norm(x, size, alpha, beta, k), // [N, C, h, w]
            }
        }
        x
    }

    /// The classifier on the last feature map: adaptive average pool to 7×7 (6×6), flatten,
    /// three linear layers with ReLU between them. [N, C, h, w] → [N, classes].
    fn classify_map(&self, classifier: &[Linear], x: Tensor<4>) -> Tensor<2> {
        let side = self.config.pool_side;
        let x = AdaptiveAvgPool2dConfig::new([side, side]).init().forward(x).flatten(1, 3); // [N, C·side²]
        let x = relu(classifier[0].forward(x)); // [N, 4096]
        let x = relu(classifier[1].forward(x)); // [N, 4096]
        classifier[2].forward(x) // [N, classes]
    }

    /// ImageNet logits: [N, 3, H, W] → [N, num_classes]; without the classifier, the globally
    /// average-pooled features.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match &self.classifier {
            Some(classifier) => {
                let x = self.forward_stages(images, 0..self.config.features.len());
                self.classify_map(classifier, x)
            }
            None => self.features(images),
        }
    }
}

/// Local response normalisation across channels (see [`Feature::Lrn`]): [N, C, h, w] → the
/// same shape.
pub fn local_response_norm(x: Tensor<4>, size: usize, alpha: f32, beta: f32, k: f32) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let (before, after) = ((size - 1) / 2, size / 2);
    let squares = x.clone().powi_scalar(2); // [N, C, h, w]
    let device = x.device();
    let padded = Tensor::cat(vec![Tensor::zeros([n, before, h, w], &device), squares, Tensor::zeros([n, after, h, w], &device)], 1); // [N, C + size − 1, h, w]
    let mut sum = padded.clone().narrow(1, 0, c); // [N, C, h, w]
    for offset in 1..size {
        sum = sum + padded.clone().narrow(1, offset, c);
    }
    x / sum.mul_scalar(alpha / size as f32).add_scalar(k).powf_scalar(beta)
}

/// VGG's contract: one stage per convolution and per pool, named as torchvision's module whose
/// output it is (see the module docs). No head convolution.
impl Backbone for VggConfig {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn table(&self) -> Table {
        VggConfig::table(self)
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    /// timm 1.0.31's `pretrained_cfg` for its VGGs (`vggN[_bn].tv_in1k`, torchvision's own
    /// weights): 224, crop_pct 0.875 (resize 256), bilinear, ImageNet mean and std, the same
    /// preparation as torchvision's. None for AlexNet.
    fn timm_input(&self) -> Option<TimmInput> {
        let convs = self.features.iter().filter(|f| matches!(f, Feature::Conv { .. })).count();
        let model = match (convs, self.batch_norm, self.classifier_index) {
            (_, _, i) if i != [0, 3, 6] => return None,
            (8, false, _) => "vgg11.tv_in1k",
            (8, true, _) => "vgg11_bn.tv_in1k",
            (10, false, _) => "vgg13.tv_in1k",
            (10, true, _) => "vgg13_bn.tv_in1k",
            (13, false, _) => "vgg16.tv_in1k",
            (13, true, _) => "vgg16_bn.tv_in1k",
            (_, false, _) => "vgg19.tv_in1k",
            (_, true, _) => "vgg19_bn.tv_in1k",
        };
        Some(TimmInput::imagenet(model, 224, 256, Interpolation::Bilinear))
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_stages(&self) -> usize {
        self.features.len()
    }
    fn stage_name(&self, stage: usize) -> String {
        self.feature_names().into_iter().nth(stage).map_or_else(|| format!("stage{stage}"), |(_, output)| output)
    }
}

impl BackboneNet for Vgg {
    fn num_stages(&self) -> usize {
        self.config.features.len()
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        Vgg::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        Vgg::forward(self, images)
    }
    /// The classifier on pooled features taken as a 1×1 map, which torchvision's adaptive pool
    /// spreads over 7×7 (6×6): what torchvision's VGG computes for an input whose last map is
    /// 1×1 (32×32 images).
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        let [n, c] = pooled.dims();
        self.classifier.as_ref().map(|classifier| self.classify_map(classifier, pooled.reshape([n, c, 1, 1])))
    }
    fn drop_classifier(&mut self) {
        self.classifier = None;
    }
    fn to_onnx(&self, g: &mut OnnxGraph, input: &str) -> Result<String> {
        let mut x = input.to_string();
        let mut conv = 0;
        for (i, f) in self.config.features.iter().enumerate() {
            x = match *f {
                Feature::Conv { .. } => {
                    let y = g.conv(&self.convs[conv], self.norms.get(conv), &x, &format!("convs.{conv}"))?;
                    conv += 1;
                    g.relu(&y)
                }
                Feature::Pool { kernel, stride } => {
                    let (k, s) = (kernel as i64, stride as i64);
                    g.node("MaxPool", &[&x], vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s]), ints("pads", &[0, 0, 0, 0])], &format!("features.{i}"))
                }
                Feature::Lrn { size, alpha, beta, k } => {
                    g.node("LRN", &[&x], vec![int("size", size as i64), float("alpha", alpha), float("beta", beta), float("bias", k)], &format!("features.{i}"))
                }
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::{numbered_blocks, summarize, FreezeSpec};

    #[test]
    fn timm_names_the_classifier_as_convolutions() {
        let timm = crate::zoo::table::timm_names(&VggConfig::vgg(16, true).table());
        assert_eq!(timm.len(), 84, "timm 1.0.31 vgg16_bn's state dict, num_batches_tracked left out");
        assert_eq!(timm["features.0.weight"], [64, 3, 3, 3]);
        assert_eq!(timm["features.1.running_var"], [64]);
        assert_eq!(timm["pre_logits.fc1.weight"], [4096, 512, 7, 7]);
        assert_eq!(timm["pre_logits.fc2.weight"], [4096, 4096, 1, 1]);
        assert_eq!(timm["pre_logits.fc2.bias"], [4096]);
        assert_eq!(timm["head.fc.weight"], [1000, 4096]);
        assert!(VggConfig::alexnet().table().timm.is_none(), "timm has no AlexNet");
    }

    fn total_params(cfg: &VggConfig) -> usize {
        summarize(&cfg.table().rows(), &Default::default()).total_params
    }

    #[test]
    fn parameter_counts_match_torchvision() {
        // sum(p.numel() for p in torchvision.models.NAME().parameters()), torchvision 0.29.2.
        assert_eq!(total_params(&VggConfig::vgg(11, false)), 132_863_336);
        assert_eq!(total_params(&VggConfig::vgg(11, true)), 132_868_840);
        assert_eq!(total_params(&VggConfig::vgg(13, false)), 133_047_848);
        assert_eq!(total_params(&VggConfig::vgg(13, true)), 133_053_736);
        assert_eq!(total_params(&VggConfig::vgg(16, false)), 138_357_544);
        assert_eq!(total_params(&VggConfig::vgg(16, true)), 138_365_992);
        assert_eq!(total_params(&VggConfig::vgg(19, false)), 143_667_240);
        assert_eq!(total_params(&VggConfig::vgg(19, true)), 143_678_248);
        assert_eq!(total_params(&VggConfig::alexnet()), 61_100_840);
    }

    #[test]
    fn names_stages_and_shapes_are_torchvisions() {
        let vgg19 = VggConfig::vgg(19, false);
        let rows = vgg19.table().rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(&names[..6], ["input", "features.0", "features.2", "features.4", "features.5", "features.7"]);
        assert_eq!(&names[names.len() - 4..], ["avgpool", "classifier.0", "classifier.3", "classifier.6"]);
        let find = |n: &str| rows.iter().find(|r| r.name == n).unwrap_or_else(|| panic!("no row {n}"));
        assert_eq!(find("features.34").params[0].path, "features.34.weight");
        assert_eq!(find("features.36").output_shape, vec![512, 7, 7]);
        assert_eq!(vgg19.num_stages(), 21);
        assert_eq!((vgg19.stage_name(0), vgg19.stage_name(2), vgg19.stage_name(20)), ("features.1".into(), "features.4".into(), "features.36".into()));
        let bn = VggConfig::vgg(11, true);
        let rows = bn.table().rows();
        assert_eq!(rows.iter().find(|r| r.name == "features.1").unwrap().kind, "BatchNorm2d");
        assert_eq!(bn.stage_name(0), "features.2");
        assert_eq!(bn.stage_name(1), "features.3");
        let alex = VggConfig::alexnet();
        let rows = alex.table().rows();
        assert_eq!(rows.iter().find(|r| r.name == "features.12").unwrap().output_shape, vec![256, 6, 6]);
        assert!(rows.iter().any(|r| r.name == "classifier.1") && rows.iter().any(|r| r.name == "classifier.4"));
        assert_eq!(alex.stage_name(1), "features.2");
    }

    #[test]
    fn caffe_flavours_name_layers_and_stages_as_caffes_prototxts_do() {
        let vgg = VggConfig::caffe_vgg(16);
        let rows = vgg.table().rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(&names[..6], ["input", "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2"]);
        assert_eq!(names[names.len() - 6..], ["conv5_3", "pool5", "avgpool", "fc6", "fc7", "fc8"]);
        assert_eq!(rows.iter().find(|r| r.name == "fc6").unwrap().params[0].path, "fc6.weight");
        assert_eq!((vgg.stage_name(0), vgg.stage_name(2), vgg.num_stages()), ("relu1_1".into(), "pool1".into(), 18));
        assert_eq!(vgg.table().convention, Convention::Caffe);
        let alex = VggConfig::caffe_alexnet(true);
        let stages: Vec<String> = (0..alex.num_stages()).map(|s| alex.stage_name(s)).collect();
        assert_eq!(stages, ["relu1", "pool1", "norm1", "relu2", "pool2", "norm2", "relu3", "relu4", "relu5", "pool5"]);
        assert_eq!(alex.table().stage_shape(9), [256, 6, 6]);
        assert_eq!(total_params(&alex), 60_965_224, "Caffe's AlexNet");
        // Only the image-reading convolution is stored BGR.
        let table = alex.table();
        let layouts: Vec<_> = table.leaves.iter().flat_map(|l| table.tensors(l)).filter(|t| t.file.ends_with(".weight")).map(|t| (t.file, t.layout)).collect();
        assert_eq!(layouts[0], ("conv1.weight".to_string(), crate::zoo::table::Layout::ReversedInput));
        assert!(layouts[1..].iter().all(|(_, l)| *l != crate::zoo::table::Layout::ReversedInput), "{layouts:?}");
    }

    #[test]
    fn local_response_norm_divides_by_the_windowed_sum_of_squares() {
        let device = Default::default();
        // One pixel, 3 channels, window 3: channel 0 sees x0² + x1², channel 1 all three.
        let x = Tensor::<4>::from_data(burn::tensor::TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 3, 1, 1]), &device);
        let y: Vec<f32> = local_response_norm(x, 3, 0.3, 0.5, 2.0).into_data().try_to_vec::<f32>().unwrap();
        let want = [1.0 / (2.0 + 0.1 * 5.0f32).sqrt(), 2.0 / (2.0 + 0.1 * 14.0f32).sqrt(), 3.0 / (2.0 + 0.1 * 13.0f32).sqrt()];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn freeze_n_counts_layers_as_keras_does() {
        // Keras VGG19's model.layers[:5]: input, block1_conv1, block1_conv2, block1_pool,
        // block2_conv1.
        let rows = VggConfig::vgg(19, false).table().rows();
        let frozen = FreezeSpec::FirstBlocks(5).frozen_params(&rows).unwrap();
        let want: std::collections::BTreeSet<String> = ["features.0", "features.2", "features.5"].iter().flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")]).collect();
        assert_eq!(frozen, want);
        assert_eq!(numbered_blocks(&rows), 1 + 16 + 5, "input, 16 convolutions, 5 pools");
        // With BatchNorm the convolution and its BatchNorm are one layer.
        let rows = VggConfig::vgg(11, true).table().rows();
        let frozen = FreezeSpec::FirstBlocks(2).frozen_params(&rows).unwrap();
        assert!(frozen.contains("features.0.weight") && frozen.contains("features.1.running_var"));
        assert!(!frozen.iter().any(|p| p.starts_with("features.4")));
    }

    #[test]
    fn forward_shapes_and_stage_cuts() {
        let device = Default::default();
        // A small VGG-11 (32×32 input: a 1×1 last map).
        let cfg = VggConfig { resolution: 32, hidden: 16, num_classes: 5, ..VggConfig::vgg(11, true) };
        let net = cfg.init(&device);
        let x = Tensor::<4>::ones([2, 3, 32, 32], &device);
        assert_eq!(net.forward(x.clone()).dims(), [2, 5]);
        let mid = net.forward_stages(x.clone(), 0..4);
        assert_eq!(mid.dims(), [2, 128, 8, 8]);
        let end = net.forward_stages(mid, 4..13);
        let whole = net.forward_stages(x.clone(), 0..13);
        assert_eq!(end.dims(), [2, 512, 1, 1]);
        let diff: f32 = (end - whole.clone()).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
        // On a 1×1 map, the classifier on pooled features is the forward.
        let [n, c, _, _] = whole.dims();
        let pooled = net.classify(whole.reshape([n, c])).unwrap();
        let diff: f32 = (pooled - net.forward(x)).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }
}
