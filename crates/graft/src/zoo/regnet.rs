//! RegNetY-400MF, 800MF, 1.6GF and 3.2GF (Radosavovic et al., 2020) exactly as torchvision
//! builds them, so a user's torchvision state dict loads without renaming.
//!
//! torchvision's layout: `stem` (3×3/2 convolution to 32 channels, BatchNorm, ReLU), then four
//! stages `trunk_output.blockS` of residual bottleneck blocks `blockS-i`: `f.a` (1×1, BN, ReLU),
//! `f.b` (3×3 grouped convolution, stride 2 in a stage's first block, BN, ReLU), `f.se`
//! (squeeze-excite to a quarter of the block's input width, ReLU then sigmoid), `f.c` (1×1, BN),
//! added to the input (through `proj`, a 1×1 convolution and BN, where the shape changes), then
//! ReLU; global average pooling and `fc`. Bottleneck ratio 1, BatchNorm eps 1e-5.
//!
//! The stage widths, depths and group widths are what torchvision's
//! `BlockParams.from_init_params` computes from each builder's `(depth, w_0, w_a, w_m,
//! group_width)` (the quantised linear width rule); they are written out here.
//!
//! burn derives parameter paths from field names, which cannot hold `block1-0`, so the
//! network keeps `stages.0.0.f.a.0` and the layer table maps it to torchvision's
//! `trunk_output.block1.block1-0.f.a.0` ([`torch_name`]). Stages are the stem and each block, as
//! for ResNet: named by the block (`trunk_output.block2.block2-0`), a stage's last block by the
//! stage (`trunk_output.block2`); `--freeze N` freezes the first N of them, the stem first.

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::backbone::{Backbone, BackboneNet};
use super::efficientnet_b::SqueezeExcitation;
use super::load::WeightSource;
use super::mobilenetv2::ConvNormAct;
use super::table::{Builder, Convention, Table};
use super::{user_weights, ModelSpec, TimmInput, Trunk, TrunkConfig};
use crate::data::image::Interpolation;
use crate::Result;

/// The registered RegNetYs: torchvision's, for the user's own weights (`--weights FILE`);
/// `IMAGENET1K_V1`'s transforms are torchvision's usual resize 256, crop 224 (the later
/// `IMAGENET1K_V2` weights resize to 232). timm's model names of the same networks are
/// aliases (`--arch regnety_004`): the same architecture, which reads either name set and
/// prepares images as the file's names say (timm's `pretrained_cfg` for a timm file).
pub const MODELS: &[ModelSpec] = &[
    user_weights("regnet_y_400mf", || regnet("400mf")),
    user_weights("regnet_y_800mf", || regnet("800mf")),
    user_weights("regnet_y_1_6gf", || regnet("1_6gf")),
    user_weights("regnet_y_3_2gf", || regnet("3_2gf")),
    user_weights("regnety_004", || regnet("400mf")),
    user_weights("regnety_016", || regnet("1_6gf")),
    user_weights("regnety_032", || regnet("3_2gf")),
];

fn regnet(size: &str) -> TrunkConfig {
    RegNetConfig::regnet_y(size).expect("registry holds valid sizes").into()
}

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;
const STEM_CHANNELS: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct RegNetConfig {
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Output width per stage.
    pub widths: [usize; 4],
    /// Channels per group of the 3×3 convolutions.
    pub group_width: usize,
    pub resolution: usize,
    pub num_classes: usize,
}

/// One residual bottleneck block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub stage: usize,
    pub index: usize,
    pub input: usize,
    pub output: usize,
    pub stride: usize,
}

impl BlockSpec {
    /// torchvision's module path of the block, `trunk_output.block2.block2-0`.
    pub fn torch_path(&self) -> String {
        format!("trunk_output.block{s}.block{s}-{}", self.index, s = self.stage + 1)
    }
}

impl RegNetConfig {
    /// torchvision's `regnet_y_400mf`, `_800mf`, `_1_6gf` or `_3_2gf` (`size` without the
    /// prefix). Widths and depths as `BlockParams.from_init_params` gives them for
    /// (16, 48, 27.89, 2.09, 8), (14, 56, 38.84, 2.4, 16), (27, 48, 20.71, 2.65, 24) and
    /// (21, 80, 42.63, 2.66, 24), SE ratio 0.25.
    pub fn regnet_y(size: &str) -> Option<Self> {
        let (depths, widths, group_width) = match size {
            "400mf" => ([1, 3, 6, 6], [48, 104, 208, 440], 8),
            "800mf" => ([1, 3, 8, 2], [64, 144, 320, 784], 16),
            "1_6gf" => ([2, 6, 17, 2], [48, 120, 336, 888], 24),
            "3_2gf" => ([2, 5, 13, 1], [72, 216, 576, 1512], 24),
            _ => return None,
        };
        Some(Self { depths, widths, group_width, resolution: 224, num_classes: 1000 })
    }

    /// Every block in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut blocks = Vec::new();
        let mut input = STEM_CHANNELS;
        for (stage, (&depth, &output)) in self.depths.iter().zip(&self.widths).enumerate() {
            for index in 0..depth {
                blocks.push(BlockSpec { stage, index, input, output, stride: if index == 0 { 2 } else { 1 } });
                input = output;
            }
        }
        blocks
    }

    pub fn feature_dim(&self) -> usize {
        self.widths[3]
    }

    pub fn init(&self, device: &Device) -> RegNet {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table under torchvision's names, with timm's as the second name set where
    /// timm builds the same network.
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1.renamed(Convention::Torch, |leaf| torch_name(&leaf.module));
        if self.timm_builds_it() {
            table.with_timm(|torch, shape| (timm_name(torch), shape.to_vec()))
        } else {
            table
        }
    }

    /// Whether timm's `regnety_*` of the same size is this network. timm's `regnety_004`,
    /// `_016` and `_032` are (same widths, depths, groups and SE widths, parameter counts
    /// equal); its `regnety_008` quantises the widths differently from the same parameters
    /// (64, 128, 320, 768 against torchvision's 64, 144, 320, 784; 6 263 168 parameters
    /// against 6 432 512), so it is a different network and its files do not load here.
    pub fn timm_builds_it(&self) -> bool {
        self.widths != [64, 144, 320, 784]
    }

    fn build(&self, b: &mut Builder) -> RegNet {
        let mut hw = conv_out(self.resolution, 3, 2);
        b.stage(Some(0));
        b.block(Some("stem".into()));
        let mut s = b.pp("stem");
        let stem = conv_norm(&mut s, conv(3, STEM_CHANNELS, 3, 2, 1), [STEM_CHANNELS, hw, hw]);
        let mut stages: Vec<Vec<Block>> = vec![Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for (i, spec) in self.blocks().iter().enumerate() {
            b.stage(Some(i + 1));
            b.block(Some(spec.torch_path()));
            let mut p = b.pp("stages");
            let mut p = p.pp(spec.stage);
            let block = Block::build(spec, self.group_width, hw, &mut p.pp(spec.index));
            stages[spec.stage].push(block);
            hw = conv_out(hw, 3, spec.stride);
        }
        b.block(None);
        b.stage(None);
        b.layer("avgpool", "GlobalAvgPool", vec![self.feature_dim()]);
        let fc = b.classifier("fc", LinearConfig::new(self.feature_dim(), self.num_classes));
        RegNet { stem, stages, fc: Some(fc), config: self.clone() }
    }
}

/// torchvision's name of the layer at burn's module path `module`: `stages.1.0.f.a.0` →
/// `trunk_output.block2.block2-0.f.a.0`; `stem.*`, `fc` and the pool keep theirs.
pub fn torch_name(module: &str) -> String {
    let parts: Vec<&str> = module.split('.').collect();
    match parts.as_slice() {
        ["stages", s, i, rest @ ..] => {
            let stage = s.parse::<usize>().map_or(0, |s| s + 1);
            format!("trunk_output.block{stage}.block{stage}-{i}.{}", rest.join("."))
        }
        _ => module.to_string(),
    }
}

/// timm's name of torchvision's RegNetY tensor `torch` (timm's `regnety_004/008/016/032`,
/// the same networks): `stem.{0,1}` → `stem.{conv,bn}`, block
/// `trunk_output.blockS.blockS-I` → `sS.b(I+1)` with `proj` → `downsample`, `f.{a,b,c}` →
/// `conv{1,2,3}` (each `.{0,1}` → `.{conv,bn}`), `f.se.fc{1,2}` → `se.fc{1,2}`; `fc` →
/// `head.fc`. Shapes are the same.
fn timm_name(torch: &str) -> String {
    let parts: Vec<&str> = torch.split('.').collect();
    let conv_bn = |k: &str| if k == "0" { "conv" } else { "bn" };
    match parts.as_slice() {
        ["stem", k, param] => format!("stem.{}.{param}", conv_bn(k)),
        ["trunk_output", _, block, rest @ ..] => {
            let (stage, i) = block.trim_start_matches("block").split_once('-').unwrap_or(("0", "0"));
            let i = i.parse::<usize>().map_or(0, |i| i + 1);
            let layer = match rest {
                ["proj", k, param] => format!("downsample.{}.{param}", conv_bn(k)),
                ["f", "se", fc, param] => format!("se.{fc}.{param}"),
                ["f", ab, k, param] => format!("conv{}.{}.{param}", match *ab { "a" => 1, "b" => 2, _ => 3 }, conv_bn(k)),
                _ => rest.join("."),
            };
            format!("s{stage}.b{i}.{layer}")
        }
        ["fc", param] => format!("head.fc.{param}"),
        _ => torch.to_string(),
    }
}

/// Output side of a k×k convolution with `(k − 1) / 2` padding and `stride`.
fn conv_out(size: usize, kernel: usize, stride: usize) -> usize {
    (size + 2 * ((kernel - 1) / 2) - kernel) / stride + 1
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, groups: usize) -> Conv2dConfig {
    let p = (kernel - 1) / 2;
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
}

/// torchvision's `Conv2dNormActivation` under `b`: convolution (`.0`), BatchNorm (`.1`).
fn conv_norm(b: &mut Builder, conv: Conv2dConfig, out: [usize; 3]) -> ConvNormAct {
    let bn = BatchNormConfig::new(out[0]).with_epsilon(BN_EPS).with_momentum(BN_MOMENTUM);
    (b.conv(0, conv, out), b.batch_norm(1, bn, out))
}

fn conv_bn((conv, bn): &ConvNormAct, x: Tensor<4>) -> Tensor<4> {
    bn.forward(conv.forward(x))
}

/// torchvision's `BottleneckTransform` (`f`): a, b, se, c.
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub a: ConvNormAct,
    pub b: ConvNormAct,
    pub se: SqueezeExcitation,
    pub c: ConvNormAct,
}

/// torchvision's `ResBottleneckBlock`.
#[derive(Module, Debug)]
pub struct Block {
    pub proj: Option<ConvNormAct>,
    pub f: Bottleneck,
}

impl Block {
    fn build(spec: &BlockSpec, group_width: usize, hw: usize, b: &mut Builder) -> Self {
        let (w, out) = (spec.output, conv_out(hw, 3, spec.stride));
        let proj = (spec.input != w || spec.stride != 1).then(|| conv_norm(&mut b.pp("proj"), conv(spec.input, w, 1, spec.stride, 1), [w, out, out]));
        let mut f = b.pp("f");
        let a = conv_norm(&mut f.pp("a"), conv(spec.input, w, 1, 1, 1), [w, hw, hw]);
        let bb = conv_norm(&mut f.pp("b"), conv(w, w, 3, spec.stride, w / group_width), [w, out, out]);
        // The SE width is a quarter of the block's input (`round(0.25 · width_in)`, exact here).
        let se = SqueezeExcitation::build(w, spec.input / 4, &mut f.pp("se"));
        let c = conv_norm(&mut f.pp("c"), conv(w, w, 1, 1, 1), [w, out, out]);
        Self { proj, f: Bottleneck { a, b: bb, se, c } }
    }

    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        // [N, C_in, H, W]
        let shortcut = match &self.proj {
            Some(proj) => conv_bn(proj, input.clone()), // [N, C, H/s, W/s]
            None => input.clone(),
        };
        let x = relu(conv_bn(&self.f.a, input)); // [N, C, H, W]
        let x = relu(conv_bn(&self.f.b, x)); // [N, C, H/s, W/s]
        let x = self.f.se.forward(x, relu); // [N, C, H/s, W/s]
        relu(conv_bn(&self.f.c, x) + shortcut)
    }
}

/// The whole network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct RegNet {
    pub stem: ConvNormAct,
    pub stages: Vec<Vec<Block>>,
    /// The ImageNet classifier; `None` once cut off for a new head.
    pub fc: Option<Linear>,
    #[module(skip)]
    pub config: RegNetConfig,
}

impl RegNet {
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
    }

    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.stages.iter().flatten()
    }

    /// Runs stages `range`: 0 the stem, 1 + i the i-th block.
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        if range.start == 0 && range.end > 0 {
            x = relu(conv_bn(&self.stem, x)); // [N, 32, H/2, W/2]
        }
        let (from, to) = (range.start.max(1) - 1, range.end.saturating_sub(1));
        self.blocks().skip(from).take(to.saturating_sub(from)).fold(x, |x, block| block.forward(x))
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.features(images); // [N, C]
        self.classify(features.clone()).unwrap_or(features)
    }
}

impl Backbone for RegNetConfig {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn table(&self) -> Table {
        RegNetConfig::table(self)
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    /// timm 1.0.31's `pretrained_cfg` (default tags), 224, bicubic, ImageNet mean and std:
    /// `regnety_004.tv2_in1k` and `regnety_016.tv2_in1k` crop_pct 0.965 (resize 232),
    /// `regnety_032.ra_in1k` 0.95 (235). None for 800MF (see [`RegNetConfig::timm_builds_it`]).
    fn timm_input(&self) -> Option<TimmInput> {
        let bicubic = Interpolation::Bicubic;
        match self.widths[0] {
            _ if !self.timm_builds_it() => None,
            72 => Some(TimmInput::imagenet("regnety_032.ra_in1k", 224, 235, bicubic)),
            _ if self.depths[2] == 6 => Some(TimmInput::imagenet("regnety_004.tv2_in1k", 224, 232, bicubic)),
            _ => Some(TimmInput::imagenet("regnety_016.tv2_in1k", 224, 232, bicubic)),
        }
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_stages(&self) -> usize {
        1 + self.depths.iter().sum::<usize>()
    }
    fn stage_name(&self, stage: usize) -> String {
        if stage == 0 {
            return "stem".into();
        }
        let blocks = self.blocks();
        let spec = blocks[(stage - 1).min(blocks.len() - 1)];
        if spec.index + 1 == self.depths[spec.stage] {
            format!("trunk_output.block{}", spec.stage + 1)
        } else {
            spec.torch_path()
        }
    }
}

impl BackboneNet for RegNet {
    fn num_stages(&self) -> usize {
        1 + self.blocks().count()
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        RegNet::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        RegNet::forward(self, images)
    }
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.fc.as_ref().map(|fc| fc.forward(pooled))
    }
    fn drop_classifier(&mut self) {
        self.fc = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::{summarize, FreezeSpec};

    #[test]
    fn timm_names_stages_and_blocks_from_one() {
        let timm = crate::zoo::table::timm_names(&RegNetConfig::regnet_y("400mf").unwrap().table());
        assert_eq!(timm.len(), 331, "timm 1.0.31 regnety_004's state dict, num_batches_tracked left out");
        for (name, shape) in [
            ("stem.conv.weight", vec![32, 3, 3, 3]),
            ("stem.bn.running_mean", vec![32]),
            ("s1.b1.downsample.conv.weight", vec![48, 32, 1, 1]),
            ("s1.b1.conv1.bn.weight", vec![48]),
            ("s1.b1.conv2.conv.weight", vec![48, 8, 3, 3]),
            ("s1.b1.se.fc1.weight", vec![8, 48, 1, 1]),
            ("s2.b3.conv3.bn.bias", vec![104]),
            ("s4.b6.se.fc2.bias", vec![440]),
            ("head.fc.weight", vec![1000, 440]),
        ] {
            assert_eq!(timm.get(name), Some(&shape), "{name}");
        }
        // timm's regnety_008 is another network: no timm names for 800MF.
        let r800 = RegNetConfig::regnet_y("800mf").unwrap();
        assert!(!r800.timm_builds_it() && r800.table().timm.is_none() && Backbone::timm_input(&r800).is_none());
    }

    #[test]
    fn parameter_counts_and_names_match_torchvision() {
        // sum(p.numel() for p in torchvision.models.NAME().parameters()), torchvision 0.29.2
        // (also the weights enums' `num_params`).
        let total = |s: &str| summarize(&RegNetConfig::regnet_y(s).unwrap().table().rows(), &Default::default()).total_params;
        assert_eq!([total("400mf"), total("800mf"), total("1_6gf"), total("3_2gf")], [4_344_144, 6_432_512, 11_202_430, 19_436_338]);
        let c = RegNetConfig::regnet_y("400mf").unwrap();
        let rows = c.table().rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).take(8).collect();
        assert_eq!(names, ["stem.0", "stem.1", "trunk_output.block1.block1-0.proj.0", "trunk_output.block1.block1-0.proj.1", "trunk_output.block1.block1-0.f.a.0", "trunk_output.block1.block1-0.f.a.1", "trunk_output.block1.block1-0.f.b.0", "trunk_output.block1.block1-0.f.b.1"]);
        let se = rows.iter().find(|r| r.name == "trunk_output.block2.block2-1.f.se.fc1").unwrap();
        assert_eq!((se.output_shape.clone(), se.params[1].path.as_str()), (vec![26, 1, 1], "trunk_output.block2.block2-1.f.se.fc1.bias"));
        assert_eq!(rows.last().unwrap().name, "fc");
        let b = c.backbone_names();
        assert_eq!(b[..4], ["stem", "trunk_output.block1", "trunk_output.block2.block2-0", "trunk_output.block2.block2-1"]);
        assert_eq!(b.len(), 17);
        assert_eq!(Backbone::stage_shape(&c, 16), [440, 7, 7]);
        // `--freeze 2`: the stem and the first block.
        let frozen = FreezeSpec::FirstBlocks(2).frozen_params(&rows).unwrap();
        assert!(frozen.contains("stem.1.running_var") && frozen.contains("trunk_output.block1.block1-0.f.c.1.bias"));
        assert!(!frozen.iter().any(|p| p.starts_with("trunk_output.block2")));
    }

    impl RegNetConfig {
        fn backbone_names(&self) -> Vec<String> {
            Backbone::stage_names(self)
        }
    }
}
