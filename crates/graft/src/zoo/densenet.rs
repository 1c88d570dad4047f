//! DenseNet-121 and DenseNet-169 (Huang et al., 2017; "DenseNet-BC") exactly as torchvision
//! builds them, so a user's torchvision state dict loads without renaming.
//!
//! torchvision's layout, all under `features`: `conv0` (7×7/2), `norm0`, ReLU, `pool0` (max
//! 3×3/2), then four dense blocks `denseblockB` of `denselayerL` (`norm1`, ReLU, `conv1` 1×1 to
//! 4 × 32 channels, `norm2`, ReLU, `conv2` 3×3 to 32; each layer's output is concatenated to
//! its input), a `transitionB` after each of the first three (`norm`, ReLU, `conv` 1×1 halving
//! the channels, average pool 2×2/2), and `norm5`; the forward then applies ReLU, global average
//! pooling and `classifier` (linear). BatchNorm eps 1e-5, dropout 0.
//!
//! torchvision's first DenseNet files name a layer's children `norm.1`, `conv.2`, …; torchvision
//! renames them (`norm1`, `conv2`) when it loads such a file, and so does [`DenseNet::load_weights`].
//!
//! burn derives parameter paths from field names, which cannot be `denseblock1`/`denselayer3`
//! lists, so the network keeps readable fields (`blocks.0.2.conv1`) and the layer table maps
//! them to torchvision's names ([`torch_name`]). Stages: the stem (`features.pool0`), each
//! dense block and transition (`features.denseblock1`, `features.transition1`, …) and
//! `features.norm5`, whose output is after the final ReLU, the features torchvision's
//! classifier sees. `--freeze N` freezes the first N stages.

use std::sync::LazyLock;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use graft_weights::StateDict;

use super::backbone::{Backbone, BackboneNet};
use super::load::WeightSource;
use super::table::{Builder, Convention, Table};
use super::{user_weights, ModelSpec, Trunk, TrunkConfig};
use crate::Result;

/// The registered DenseNets: torchvision's, for the user's own weights (`--weights FILE`);
/// `IMAGENET1K_V1`'s transforms are torchvision's usual resize 256, crop 224.
pub const MODELS: &[ModelSpec] = &[user_weights("densenet121", || densenet(121)), user_weights("densenet169", || densenet(169))];

fn densenet(depth: usize) -> TrunkConfig {
    DenseNetConfig::densenet(depth).expect("registry holds valid depths").into()
}

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

#[derive(Debug, Clone, PartialEq)]
pub struct DenseNetConfig {
    /// Channels each dense layer adds (torchvision's `growth_rate`).
    pub growth: usize,
    /// Dense layers per block (torchvision's `block_config`).
    pub blocks: [usize; 4],
    /// Channels of the stem (`num_init_features`).
    pub init_features: usize,
    /// Bottleneck width per growth (`bn_size`).
    pub bn_size: usize,
    pub resolution: usize,
    pub num_classes: usize,
}

impl DenseNetConfig {
    /// torchvision's `densenet121` or `densenet169`.
    pub fn densenet(depth: usize) -> Option<Self> {
        let blocks = match depth {
            121 => [6, 12, 24, 16],
            169 => [6, 12, 32, 32],
            _ => return None,
        };
        Some(Self { growth: 32, blocks, init_features: 64, bn_size: 4, resolution: 224, num_classes: 1000 })
    }

    /// Channels entering each dense block, and after the last one.
    fn widths(&self) -> ([usize; 4], usize) {
        let mut input = [0; 4];
        let mut c = self.init_features;
        for (b, &layers) in self.blocks.iter().enumerate() {
            input[b] = c;
            c += layers * self.growth;
            if b < 3 {
                c /= 2;
            }
        }
        (input, c)
    }

    /// Width of the pooled features: 1024 (121), 1664 (169).
    pub fn feature_dim(&self) -> usize {
        self.widths().1
    }

    pub fn init(&self, device: &Device) -> DenseNet {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table under torchvision's names.
    pub fn table(&self) -> Table {
        Table::build(&Default::default(), |b| self.build(b)).1.renamed(Convention::Torch, |leaf| torch_name(&leaf.module))
    }

    fn build(&self, b: &mut Builder) -> DenseNet {
        let bn = |c: usize| BatchNormConfig::new(c).with_epsilon(BN_EPS).with_momentum(BN_MOMENTUM);
        let c0 = self.init_features;
        let mut hw = (self.resolution + 6 - 7) / 2 + 1;
        b.stage(Some(0));
        b.block(Some(stage_name(0)));
        let conv0 = b.conv("conv0", conv(3, c0, 7, 2, 3), [c0, hw, hw]);
        let norm0 = b.batch_norm("norm0", bn(c0), [c0, hw, hw]);
        hw = (hw + 2 - 3) / 2 + 1;
        b.layer("pool0", "MaxPool2d 3x3", vec![c0, hw, hw]);
        let (inputs, out) = self.widths();
        let (mut blocks, mut transitions) = (Vec::new(), Vec::new());
        for (i, &layers) in self.blocks.iter().enumerate() {
            b.stage(Some(2 * i + 1));
            b.block(Some(stage_name(2 * i + 1)));
            let mut block = b.pp("blocks");
            let mut block = block.pp(i);
            let mut built = Vec::with_capacity(layers);
            for l in 0..layers {
                let (input, mid, g) = (inputs[i] + l * self.growth, self.bn_size * self.growth, self.growth);
                let mut p = block.pp(l);
                built.push(DenseLayer {
                    norm1: p.batch_norm("norm1", bn(input), [input, hw, hw]),
                    conv1: p.conv("conv1", conv(input, mid, 1, 1, 0), [mid, hw, hw]),
                    norm2: p.batch_norm("norm2", bn(mid), [mid, hw, hw]),
                    conv2: p.conv("conv2", conv(mid, g, 3, 1, 1), [g, hw, hw]),
                });
            }
            // The block's output: its input and every layer's new channels, concatenated.
            let c = inputs[i] + layers * self.growth;
            b.pp("blocks").layer(i, "DenseBlock (concat)", vec![c, hw, hw]);
            blocks.push(built);
            if i < 3 {
                b.stage(Some(2 * i + 2));
                b.block(Some(stage_name(2 * i + 2)));
                let mut t = b.pp("transitions");
                let mut t = t.pp(i);
                let norm = t.batch_norm("norm", bn(c), [c, hw, hw]);
                let conv = t.conv("conv", conv(c, c / 2, 1, 1, 0), [c / 2, hw, hw]);
                hw /= 2;
                t.layer("pool", "AvgPool2d 2x2", vec![c / 2, hw, hw]);
                transitions.push(Transition { norm, conv });
            }
        }
        b.stage(Some(8));
        b.block(Some(stage_name(8)));
        let norm5 = b.batch_norm("norm5", bn(out), [out, hw, hw]);
        b.block(None);
        b.stage(None);
        b.layer("avgpool", "GlobalAvgPool", vec![out]);
        let classifier = b.classifier("classifier", LinearConfig::new(out, self.num_classes));
        DenseNet {
            conv0,
            norm0,
            pool0: MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(),
            blocks,
            transitions,
            pool: AvgPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            norm5,
            classifier: Some(classifier),
            config: self.clone(),
        }
    }
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, padding: usize) -> Conv2dConfig {
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
        .with_bias(false)
}

/// torchvision's name of stage `stage` (0 … 8).
fn stage_name(stage: usize) -> String {
    match stage {
        0 => "features.pool0".into(),
        8 => "features.norm5".into(),
        s if s % 2 == 1 => format!("features.denseblock{}", s / 2 + 1),
        s => format!("features.transition{}", s / 2),
    }
}

/// torchvision's name of the layer at burn's module path `module`: `blocks.0.2.conv1` →
/// `features.denseblock1.denselayer3.conv1`, `transitions.1.norm` → `features.transition2.norm`,
/// `blocks.0` (the block's concatenated output) → `features.denseblock1`, `norm0` →
/// `features.norm0`; `classifier` and the global pool keep theirs.
pub fn torch_name(module: &str) -> String {
    let parts: Vec<&str> = module.split('.').collect();
    let index = |s: &str| s.parse::<usize>().map_or(0, |i| i + 1);
    match parts.as_slice() {
        ["blocks", b] => format!("features.denseblock{}", index(b)),
        ["blocks", b, l, rest @ ..] => format!("features.denseblock{}.denselayer{}.{}", index(b), index(l), rest.join(".")),
        ["transitions", t, rest @ ..] => format!("features.transition{}.{}", index(t), rest.join(".")),
        ["classifier" | "avgpool"] => module.to_string(),
        _ => format!("features.{module}"),
    }
}

/// torchvision's pattern for the first DenseNet files' layer children (`denselayer1.norm.1.weight`),
/// which it renames to `denselayer1.norm1.weight` when loading them.
static LEGACY: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$").expect("valid regex")
});

/// `dict` with the legacy names renamed as torchvision renames them; `None` when it has none.
fn renamed_legacy(dict: &StateDict) -> Option<StateDict> {
    if !dict.tensors.keys().any(|k| LEGACY.is_match(k)) {
        return None;
    }
    let mut out = StateDict { tensors: Default::default(), metadata: dict.metadata.clone() };
    for (key, tensor) in &dict.tensors {
        let key = match LEGACY.captures(key) {
            Some(c) => format!("{}{}", &c[1], &c[2]),
            None => key.clone(),
        };
        out.tensors.insert(key, tensor.clone());
    }
    Some(out)
}

/// One dense layer: BN, ReLU, 1×1 convolution, BN, ReLU, 3×3 convolution (32 new channels).
#[derive(Module, Debug)]
pub struct DenseLayer {
    pub norm1: BatchNorm,
    pub conv1: Conv2d,
    pub norm2: BatchNorm,
    pub conv2: Conv2d,
}

impl DenseLayer {
    /// [N, C, H, W] → [N, C + 32, H, W]: the input with the layer's new channels after it.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(relu(self.norm1.forward(x.clone()))); // [N, 128, H, W]
        let h = self.conv2.forward(relu(self.norm2.forward(h))); // [N, 32, H, W]
        Tensor::cat(vec![x, h], 1)
    }
}

/// A transition: BN, ReLU, 1×1 convolution halving the channels (the pool is the network's).
#[derive(Module, Debug)]
pub struct Transition {
    pub norm: BatchNorm,
    pub conv: Conv2d,
}

/// The whole network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct DenseNet {
    pub conv0: Conv2d,
    pub norm0: BatchNorm,
    pub pool0: MaxPool2d,
    pub blocks: Vec<Vec<DenseLayer>>,
    pub transitions: Vec<Transition>,
    /// The transitions' 2×2/2 average pool.
    pub pool: AvgPool2d,
    pub norm5: BatchNorm,
    /// The ImageNet classifier; `None` once cut off for a new head.
    pub classifier: Option<Linear>,
    #[module(skip)]
    pub config: DenseNetConfig,
}

impl DenseNet {
    /// Loads torchvision's names, and the first DenseNet files' `norm.1`-style names as
    /// torchvision renames them.
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        let table = self.config.table();
        match renamed_legacy(w.dict) {
            Some(dict) => table.load(self, &WeightSource { dict: &dict, ..*w }),
            None => table.load(self, w),
        }
    }

    /// Runs stages `range` (see [`stage_name`]).
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        for stage in range.start..range.end.min(9) {
            x = match stage {
                0 => self.pool0.forward(relu(self.norm0.forward(self.conv0.forward(x)))), // [N, 64, H/4, W/4]
                8 => relu(self.norm5.forward(x)),                                         // [N, C, h, w]
                s if s % 2 == 1 => self.blocks[s / 2].iter().fold(x, |x, layer| layer.forward(x)), // [N, C + L·32, h, w]
                s => {
                    let t = &self.transitions[s / 2 - 1];
                    self.pool.forward(t.conv.forward(relu(t.norm.forward(x)))) // [N, C/2, h/2, w/2]
                }
            };
        }
        x
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.features(images); // [N, C]
        self.classify(features.clone()).unwrap_or(features)
    }
}

impl Backbone for DenseNetConfig {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn table(&self) -> Table {
        DenseNetConfig::table(self)
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_stages(&self) -> usize {
        9
    }
    fn stage_name(&self, stage: usize) -> String {
        stage_name(stage)
    }
}

impl BackboneNet for DenseNet {
    fn num_stages(&self) -> usize {
        9
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        DenseNet::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        DenseNet::forward(self, images)
    }
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.classifier.as_ref().map(|fc| fc.forward(pooled))
    }
    fn drop_classifier(&mut self) {
        self.classifier = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::{summarize, FreezeSpec};

    #[test]
    fn parameter_counts_and_names_match_torchvision() {
        // sum(p.numel() for p in torchvision.models.NAME().parameters()), torchvision 0.29.2.
        let total = |d: usize| summarize(&DenseNetConfig::densenet(d).unwrap().table().rows(), &Default::default()).total_params;
        assert_eq!((total(121), total(169)), (7_978_856, 14_149_480));
        let c = DenseNetConfig::densenet(121).unwrap();
        assert_eq!((c.feature_dim(), DenseNetConfig::densenet(169).unwrap().feature_dim()), (1024, 1664));
        let rows = c.table().rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).take(7).collect();
        assert_eq!(names, ["features.conv0", "features.norm0", "features.pool0", "features.denseblock1.denselayer1.norm1", "features.denseblock1.denselayer1.conv1", "features.denseblock1.denselayer1.norm2", "features.denseblock1.denselayer1.conv2"]);
        assert!(rows.iter().any(|r| r.name == "features.transition3.conv" && r.output_shape == [512, 14, 14]));
        assert_eq!(rows.last().unwrap().name, "classifier");
        assert_eq!(Backbone::stage_shape(&c, 8), [1024, 7, 7]);
        // `--freeze 2`: the stem and the first dense block, nothing of the first transition.
        let frozen = FreezeSpec::FirstBlocks(2).frozen_params(&rows).unwrap();
        assert!(frozen.contains("features.norm0.running_var") && frozen.contains("features.denseblock1.denselayer6.conv2.weight"));
        assert!(!frozen.iter().any(|p| p.starts_with("features.transition1")));
    }

    #[test]
    fn legacy_names_are_renamed_as_torchvision_renames_them() {
        let mut dict = StateDict::default();
        let t = graft_weights::Tensor { shape: vec![1], dtype: graft_weights::DType::F32, data: vec![1.0] };
        for key in ["features.denseblock1.denselayer1.norm.1.weight", "features.denseblock2.denselayer12.conv.2.weight", "features.norm0.weight", "features.transition1.conv.weight"] {
            dict.tensors.insert(key.into(), t.clone());
        }
        let renamed = renamed_legacy(&dict).unwrap();
        let keys: Vec<&str> = renamed.tensors.keys().map(String::as_str).collect();
        assert_eq!(keys, ["features.denseblock1.denselayer1.norm1.weight", "features.denseblock2.denselayer12.conv2.weight", "features.norm0.weight", "features.transition1.conv.weight"]);
        dict.tensors.retain(|k, _| !k.contains("denselayer"));
        assert!(renamed_legacy(&dict).is_none(), "a file without legacy names is used as it is");
    }
}
