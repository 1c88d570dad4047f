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
//! **`--freeze N`** counts layers as Keras's `model.layers[:N]` does, the input layer first:
//! the layer table begins with a parameterless `input` row, then one block per convolution (its
//! BatchNorm with it) and per pool. So `--freeze 5` freezes input, `features.0`, `features.2`,
//! `features.4` (pool) and `features.5`: Keras VGG19's input, block1_conv1, block1_conv2,
//! block1_pool and block2_conv1, the seed's recipe.

use std::collections::HashMap;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::backbone::{Backbone, BackboneNet};
use crate::export::onnx::{ints, OnnxGraph};
use super::load::WeightSource;
use super::resnet::{BN_EPS, BN_MOMENTUM};
use super::table::{Builder, Convention, Table};
use super::{user_weights, ModelSpec, TimmInput, Trunk};
use crate::data::image::Interpolation;
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
];

/// One module of `features` with parameters or a pool (ReLUs follow every convolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// A convolution with bias, square kernel, symmetric padding.
    Conv { output: usize, kernel: usize, stride: usize, padding: usize },
    /// A max-pool without padding (floor mode).
    Pool { kernel: usize, stride: usize },
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
            .map(|&c| if c == 0 { Feature::Pool { kernel: 2, stride: 2 } } else { Feature::Conv { output: c, kernel: 3, stride: 1, padding: 1 } })
            .collect();
        Self { features, batch_norm, pool_side: 7, hidden: 4096, classifier_index: [0, 3, 6], resolution: 224, num_classes: 1000 }
    }

    /// torchvision's `alexnet` (the one-GPU variant of the paper: 64, 192, 384, 256, 256).
    pub fn alexnet() -> Self {
        let conv = |output, kernel, stride, padding| Feature::Conv { output, kernel, stride, padding };
        let pool = Feature::Pool { kernel: 3, stride: 2 };
        Self {
            features: vec![conv(64, 11, 4, 2), pool, conv(192, 5, 1, 2), pool, conv(384, 3, 1, 1), conv(256, 3, 1, 1), conv(256, 3, 1, 1), pool],
            batch_norm: false,
            pool_side: 6,
            hidden: 4096,
            classifier_index: [1, 4, 6],
            resolution: 224,
            num_classes: 1000,
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
                    Feature::Pool { .. } => 1,
                };
                at
            })
            .collect()
    }

    /// Builds the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Vgg {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table (see [`table`](super::table)) under torchvision's names; a VGG's with
    /// timm's as the second name set (timm has no AlexNet).
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1;
        let names = self.torch_names();
        let table = table.renamed(Convention::Torch, |leaf| names.get(&leaf.module).cloned().unwrap_or_else(|| leaf.module.clone()));
        if self.classifier_index == [0, 3, 6] {
            table.with_timm(|torch, shape| self.timm_name(torch, shape))
        } else {
            table
        }
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

    /// burn's module path → torchvision's name, for the layers with parameters.
    fn torch_names(&self) -> HashMap<String, String> {
        let mut names = HashMap::new();
        let mut conv = 0;
        for (f, at) in self.features.iter().zip(self.torch_index()) {
            if let Feature::Conv { .. } = f {
                names.insert(format!("convs.{conv}"), format!("features.{at}"));
                if self.batch_norm {
                    names.insert(format!("norms.{conv}"), format!("features.{}", at + 1));
                }
                conv += 1;
            }
        }
        for (i, at) in self.classifier_index.iter().enumerate() {
            names.insert(format!("classifier.{i}"), format!("classifier.{at}"));
        }
        names
    }

    /// The walk: `input`, then one stage per convolution and per pool, then the adaptive pool
    /// and the classifier. Convolutions are recorded under burn's paths (`convs.i`,
    /// `norms.i`), renamed by [`table`](Self::table).
    fn build(&self, b: &mut Builder) -> Vgg {
        let (mut channels, mut hw) = (3, self.resolution);
        let (mut convs, mut norms) = (Vec::new(), Vec::new());
        for (stage, (f, at)) in self.features.iter().zip(self.torch_index()).enumerate() {
            b.stage(Some(stage));
            if stage == 0 {
                b.block(Some("input".into()));
                b.layer("input", "InputLayer", vec![3, hw, hw]);
            }
            b.block(Some(format!("features.{at}")));
            match *f {
                Feature::Conv { output, kernel, stride, padding } => {
                    hw = (hw + 2 * padding).saturating_sub(kernel) / stride + 1;
                    let config = Conv2dConfig::new([channels, output], [kernel, kernel])
                        .with_stride([stride, stride])
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
                    b.layer(format!("features.{at}"), if kernel == 2 { "MaxPool2d 2x2" } else { "MaxPool2d 3x3" }, vec![channels, hw, hw]);
                }
            }
        }
        b.block(None);
        b.stage(None);
        let side = self.pool_side;
        b.layer("avgpool", if side == 7 { "AdaptiveAvgPool2d 7x7" } else { "AdaptiveAvgPool2d 6x6" }, vec![channels, side, side]);
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
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
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
        let relu = if self.batch_norm { 2 } else { 1 };
        match (self.features.get(stage), self.torch_index().get(stage)) {
            (Some(Feature::Conv { .. }), Some(at)) => format!("features.{}", at + relu),
            (Some(Feature::Pool { .. }), Some(at)) => format!("features.{at}"),
            _ => format!("stage{stage}"),
        }
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
