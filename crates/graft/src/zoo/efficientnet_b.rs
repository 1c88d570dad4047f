//! EfficientNet-B0 … B4 (Tan & Le, 2019) exactly as torchvision builds them
//! (`torchvision.models.efficientnet_b0` …), so a user's torchvision state dict loads without
//! renaming. (EfficientNet-Lite, graft's registry models, is [`super::efficientnet`].)
//!
//! torchvision's layout: `features.0` the stem (3×3/2 convolution, BatchNorm, SiLU),
//! `features.1` … `features.7` the seven MBConv stages of the paper's Table 1 scaled by the
//! width and depth multipliers, `features.8` the 1×1 head convolution to 4 × the last width
//! (1280 for B0), then a global average pool and `classifier.1` (after `Dropout`). An MBConv
//! block `features.S.i` is `block` = [1×1 expansion (absent when the ratio is 1), depthwise
//! k×k, squeeze-excite (`fc1`, `fc2`: 1×1 convolutions with bias, SiLU then sigmoid), 1×1
//! projection without activation], each convolution with its BatchNorm (`.0`, `.1`), the input
//! added when stride 1 and widths agree. Padding is symmetric (`(k − 1) / 2`), BatchNorm eps
//! 1e-5 (torchvision's default for B0–B4), stochastic depth is off (its identity at inference).
//!
//! **Keras** (`keras.applications.EfficientNetB0`, [`EfficientNetConfig::keras_b0`], the
//! registered `efficientnet_b0_keras` that `--arch efficientnet_b0` loads a Keras `.h5` into):
//! Keras layer names (`stem_conv`, `block2a_expand_conv`, `block2a_dwconv`, `block2a_se_reduce`,
//! `block2a_project_bn`, `top_conv`, `predictions`; [`keras_layer_name`]), BatchNorm eps 1e-3,
//! and Keras's stride-2 padding: `ZeroPadding2D(correct_pad)` then 'valid', one row and column
//! more at the bottom and right than at the top and left for an even side. Keras's model starts
//! with `Rescaling(1/255)` and `Normalization` (and, built with `weights="imagenet"`, a
//! `Rescaling(1/sqrt(std))` correcting the stored variance): for ImageNet weights that is
//! `(x/255 − mean) / std` with ImageNet's mean and std, which graft does in preprocessing
//! ([`KERAS_EFFICIENTNET_INPUT`]); the file's `normalization/mean` and `variance` are not read.
//!
//! burn's parameter paths are torchvision's names (`features.2.1.block.2.fc1.weight`): the
//! `features` Sequential and each block's `block` Sequential are `Vec`s of
//! [`transparent_module_enum!`](super::mobilenetv2) entries, which add no path level. Stages
//! are `features.0` … `features.8`: the output of stage `features.K` is
//! `model.features[:K+1](x)`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::{Device, Tensor};

use super::backbone::{Backbone, BackboneNet};
use super::efficientnet::BASE_STAGES;
use super::load::WeightSource;
use super::mobilenetv2::{transparent_module_enum, ConvNormAct};
use super::table::{Builder, Convention, Table};
use super::{InputCfg, ModelSpec, TimmInput, Trunk, TrunkConfig, TORCHVISION_INPUT};
use crate::data::image::{Crop, Interpolation};
use crate::Result;

/// torchvision's `EfficientNet_B*_Weights.IMAGENET1K_V1.transforms()`: resize the shorter side
/// to `shorter` with PIL bicubic, centre crop the native side, ImageNet mean and std.
const fn bicubic(shorter: u32) -> InputCfg {
    InputCfg { crop: Crop::ResizeCentre { shorter }, interpolation: Interpolation::Bicubic, ..TORCHVISION_INPUT }
}

/// The registered EfficientNets: torchvision's, for the user's own weights (`--weights FILE`).
/// Resize / crop as torchvision's `IMAGENET1K_V1` weights give them: B0 256 / 224, B1 256 /
/// 240, B2 288 / 288, B3 320 / 300, B4 384 / 380, all bicubic.
pub const MODELS: &[ModelSpec] = &[
    ModelSpec { input: bicubic(256), ..super::user_weights("efficientnet_b0", || b(0)) },
    ModelSpec { input: bicubic(256), ..super::user_weights("efficientnet_b1", || b(1)) },
    ModelSpec { input: bicubic(288), ..super::user_weights("efficientnet_b2", || b(2)) },
    ModelSpec { input: bicubic(320), ..super::user_weights("efficientnet_b3", || b(3)) },
    ModelSpec { input: bicubic(384), ..super::user_weights("efficientnet_b4", || b(4)) },
    super::flavour("efficientnet_b0_keras", "efficientnet_b0", KERAS_EFFICIENTNET_INPUT, || EfficientNetConfig::keras_b0(224).into()),
];

/// What Keras's EfficientNet does to an image before its stem, for ImageNet weights (see the
/// module docs): ImageNet's mean and std on the 0–255 scale; the whole image resized to the
/// square input (`keras.utils.load_img(target_size=…)`), bilinear.
pub const KERAS_EFFICIENTNET_INPUT: InputCfg = InputCfg { crop: Crop::Stretch, interpolation: Interpolation::Bilinear, ..TORCHVISION_INPUT };

fn b(variant: u8) -> TrunkConfig {
    EfficientNetConfig::b(variant).expect("registry holds valid variants").into()
}

/// PyTorch's BatchNorm defaults, which torchvision keeps for B0–B4.
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;
/// Keras's BatchNormalization defaults (momentum 0.99 is burn's 0.01).
const KERAS_BN_EPS: f64 = 1e-3;
const KERAS_BN_MOMENTUM: f64 = 0.01;
const STEM_CHANNELS: usize = 32;

/// Shape of one MBConv block after scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub input: usize,
    pub output: usize,
    /// Channels after the 1×1 expansion (the input's when the ratio is 1: no expansion).
    pub expanded: usize,
    /// Squeeze-excite width: a quarter of the block's input, at least 1.
    pub squeeze: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl BlockSpec {
    fn expands(&self) -> bool {
        self.expanded != self.input
    }
    fn residual(&self) -> bool {
        self.stride == 1 && self.input == self.output
    }
}

/// One of torchvision's `efficientnet_b*` builders.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetConfig {
    pub width: f64,
    pub depth: f64,
    /// Native input side: the crop of the weights' eval transforms.
    pub resolution: usize,
    /// Dropout before the classifier (only active when the classifier itself trains).
    pub dropout: f64,
    pub num_classes: usize,
    /// Keras Applications' names, padding and BatchNorm eps (see the module docs).
    pub keras: bool,
}

impl EfficientNetConfig {
    /// `variant` 0–4: torchvision's `efficientnet_b0` … `efficientnet_b4`.
    pub fn b(variant: u8) -> Option<Self> {
        let (width, depth, resolution, dropout) = match variant {
            0 => (1.0, 1.0, 224, 0.2),
            1 => (1.0, 1.1, 240, 0.2),
            2 => (1.1, 1.2, 288, 0.3),
            3 => (1.2, 1.4, 300, 0.3),
            4 => (1.4, 1.8, 380, 0.4),
            _ => return None,
        };
        Some(Self { width, depth, resolution, dropout, num_classes: 1000, keras: false })
    }

    /// `keras.applications.EfficientNetB0` at `resolution` px.
    pub fn keras_b0(resolution: usize) -> Self {
        Self { resolution, keras: true, ..Self::b(0).expect("B0 is a variant") }
    }

    /// torchvision's `_make_divisible(channels · width, 8)`.
    fn adjust(&self, channels: usize) -> usize {
        make_divisible(channels as f64 * self.width)
    }

    /// The blocks of each of the seven MBConv stages, in order.
    pub fn stages(&self) -> Vec<Vec<BlockSpec>> {
        BASE_STAGES
            .iter()
            .map(|stage| {
                let (input, output) = (self.adjust(stage.input), self.adjust(stage.output));
                let repeats = (stage.repeats as f64 * self.depth).ceil() as usize;
                (0..repeats)
                    .map(|r| {
                        let input = if r == 0 { input } else { output };
                        BlockSpec {
                            input,
                            output,
                            expanded: make_divisible((input * stage.expand) as f64),
                            squeeze: (input / 4).max(1),
                            kernel: stage.kernel,
                            stride: if r == 0 { stage.stride } else { 1 },
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Width of the head convolution and of the pooled features: 4 × the last stage's width.
    pub fn head_channels(&self) -> usize {
        4 * self.adjust(BASE_STAGES[BASE_STAGES.len() - 1].output)
    }

    pub fn init(&self, device: &Device) -> EfficientNet {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table, under torchvision's names (burn's paths are torchvision's) with timm's
    /// as the second name set, or Keras's.
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1;
        if self.keras {
            return table.renamed(Convention::Keras, |leaf| keras_layer_name(self, &leaf.module).unwrap_or_else(|| leaf.module.clone()));
        }
        let stages = self.stages();
        table.with_timm(|torch, shape| (timm_name(&stages, torch), shape.to_vec()))
    }

    /// A k×k convolution's padding on an input of side `hw`: torchvision's symmetric
    /// `(k − 1) / 2`; Keras's 'same' at stride 1 (the same) and `correct_pad` at stride 2.
    fn padding(&self, kernel: usize, stride: usize, hw: usize) -> PaddingConfig2d {
        let p = (kernel - 1) / 2;
        if self.keras && stride == 2 {
            let top = kernel / 2 - (1 - hw % 2);
            return PaddingConfig2d::Explicit(top, top, kernel / 2, kernel / 2);
        }
        PaddingConfig2d::Explicit(p, p, p, p)
    }

    fn bn(&self, channels: usize) -> BatchNormConfig {
        let (eps, momentum) = if self.keras { (KERAS_BN_EPS, KERAS_BN_MOMENTUM) } else { (BN_EPS, BN_MOMENTUM) };
        BatchNormConfig::new(channels).with_epsilon(eps).with_momentum(momentum)
    }

    fn build(&self, b: &mut Builder) -> EfficientNet {
        let stem = self.adjust(STEM_CHANNELS);
        let stem_conv = conv(3, stem, 3, 2, 1, false).with_padding(self.padding(3, 2, self.resolution));
        let mut hw = conv_out(self.resolution, 3, 2);
        let mut f = b.pp("features");
        f.stage(Some(0));
        let mut features = vec![Feature::ConvNormAct(self.conv_norm(&mut f.pp(0), stem_conv, [stem, hw, hw]))];
        let stages = self.stages();
        for (s, blocks) in stages.iter().enumerate() {
            f.stage(Some(s + 1));
            let mut stage = f.pp(s + 1);
            let mut built = Vec::with_capacity(blocks.len());
            for (i, spec) in blocks.iter().enumerate() {
                built.push(MBConv::build(self, spec, hw, &mut stage.pp(i).pp("block")));
                hw = conv_out(hw, spec.kernel, spec.stride);
            }
            features.push(Feature::Stage(built));
        }
        let (last, head) = (stages.last().and_then(|s| s.last()).map_or(stem, |b| b.output), self.head_channels());
        f.stage(Some(stages.len() + 1));
        features.push(Feature::ConvNormAct(self.conv_norm(&mut f.pp(stages.len() + 1), conv(last, head, 1, 1, 1, false), [head, hw, hw])));
        b.stage(None);
        b.layer("avgpool", "GlobalAvgPool", vec![head]);
        let linear = b.pp("classifier").classifier(1, LinearConfig::new(head, self.num_classes));
        let dropout = if (0.0..1.0).contains(&self.dropout) { self.dropout } else { 0.0 };
        EfficientNet { features, classifier: Some((DropoutConfig::new(dropout).init(), linear)), config: self.clone() }
    }
}

/// timm's name of torchvision's EfficientNet tensor `torch` (timm's `efficientnet_b0` … `b4`,
/// the same networks: same widths, depths, squeeze-excite widths, BatchNorm eps 1e-5 and
/// symmetric padding): `features.0.{0,1}` → `conv_stem`, `bn1`; `features.8.{0,1}` →
/// `conv_head`, `bn2`; `classifier.1` → `classifier`; block `features.S.I` → `blocks.(S−1).I`
/// with its `block.J` entries named by kind: an expanding block (timm's `InvertedResidual`)
/// `conv_pw`/`bn1`, `conv_dw`/`bn2`, `se.conv_reduce`/`se.conv_expand`, `conv_pwl`/`bn3`; a
/// block without expansion (timm's `DepthwiseSeparableConv`) `conv_dw`/`bn1`, the SE,
/// `conv_pw`/`bn2`. Shapes are the same.
fn timm_name(stages: &[Vec<BlockSpec>], torch: &str) -> String {
    let parts: Vec<&str> = torch.split('.').collect();
    let head = stages.len() + 1;
    let index = |s: &str| s.parse::<usize>().unwrap_or(usize::MAX);
    match parts.as_slice() {
        ["features", "0", "0", param] => format!("conv_stem.{param}"),
        ["features", "0", "1", param] => format!("bn1.{param}"),
        ["features", k, "0", param] if index(k) == head => format!("conv_head.{param}"),
        ["features", k, "1", param] if index(k) == head => format!("bn2.{param}"),
        ["features", s, i, "block", j, layer, param] => {
            let expands = stages.get(index(s).wrapping_sub(1)).and_then(|b| b.get(index(i))).is_some_and(BlockSpec::expands);
            let (j, layer) = (index(j), *layer);
            let name = match (expands, j, layer) {
                (_, _, "fc1") => "se.conv_reduce",
                (_, _, "fc2") => "se.conv_expand",
                (true, 0, "0") => "conv_pw",
                (true, 0, _) => "bn1",
                (true, 1, "0") => "conv_dw",
                (true, 1, _) => "bn2",
                (true, _, "0") => "conv_pwl",
                (true, _, _) => "bn3",
                (false, 0, "0") => "conv_dw",
                (false, 0, _) => "bn1",
                (false, _, "0") => "conv_pw",
                (false, _, _) => "bn2",
            };
            format!("blocks.{}.{i}.{name}.{param}", index(s) - 1)
        }
        ["classifier", _, param] => format!("classifier.{param}"),
        _ => torch.to_string(),
    }
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8 (at least 8), never more
/// than 10% below `v`.
fn make_divisible(v: f64) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

/// Output side of a k×k convolution with torchvision's `(k − 1) / 2` padding and `stride`.
fn conv_out(size: usize, kernel: usize, stride: usize) -> usize {
    (size + 2 * ((kernel - 1) / 2) - kernel) / stride + 1
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, groups: usize, bias: bool) -> Conv2dConfig {
    let p = (kernel - 1) / 2;
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(bias)
}

impl EfficientNetConfig {
    /// torchvision's `Conv2dNormActivation` under `b`: the convolution (`.0`) with output `out`
    /// and its BatchNorm (`.1`).
    fn conv_norm(&self, b: &mut Builder, conv: Conv2dConfig, out: [usize; 3]) -> ConvNormAct {
        (b.conv(0, conv, out), b.batch_norm(1, self.bn(out[0]), out))
    }
}

/// The Keras (`keras.applications.EfficientNetB0`) name of a layer given its torchvision module
/// path: `features.0.0` → `stem_conv`, `features.2.0.block.0.0` → `block2a_expand_conv`,
/// `features.2.0.block.2.fc1` → `block2a_se_reduce`, `features.8.1` → `top_bn`, `classifier.1`
/// → `predictions`.
pub fn keras_layer_name(cfg: &EfficientNetConfig, path: &str) -> Option<String> {
    let stages = cfg.stages();
    let top = stages.len() + 1;
    match path {
        "avgpool" => return Some("avg_pool".into()),
        "classifier.1" => return Some("predictions".into()),
        _ => {}
    }
    let rest = path.strip_prefix("features.")?;
    let (stage, rest) = rest.split_once('.')?;
    let stage: usize = stage.parse().ok()?;
    match (stage, rest) {
        (0, "0") => return Some("stem_conv".into()),
        (0, "1") => return Some("stem_bn".into()),
        (s, "0") if s == top => return Some("top_conv".into()),
        (s, "1") if s == top => return Some("top_bn".into()),
        _ => {}
    }
    let (index, rest) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let layer = rest.strip_prefix("block.")?;
    let spec = stages.get(stage.checked_sub(1)?)?.get(index)?;
    // Without an expansion the block's children shift down by one.
    let (k, part) = layer.split_once('.')?;
    let k: usize = k.parse().ok()?;
    let k = if spec.expands() { k } else { k + 1 };
    let part = match (k, part) {
        (0, "0") => "expand_conv",
        (0, "1") => "expand_bn",
        (1, "0") => "dwconv",
        (1, "1") => "bn",
        (2, "fc1") => "se_reduce",
        (2, "fc2") => "se_expand",
        (3, "0") => "project_conv",
        (3, "1") => "project_bn",
        _ => return None,
    };
    let letter = char::from(b'a' + u8::try_from(index).ok()?);
    Some(format!("block{stage}{letter}_{part}"))
}

/// Convolution, BatchNorm, then SiLU when `act`.
fn conv_bn(layer: &ConvNormAct, x: Tensor<4>, act: bool) -> Tensor<4> {
    let (conv, bn) = layer;
    let x = bn.forward(conv.forward(x));
    if act {
        silu(x)
    } else {
        x
    }
}

/// torchvision's `SqueezeExcitation`: pooled channels → `fc1` → activation (EfficientNet's
/// SiLU, RegNet's ReLU) → `fc2` → sigmoid, the input scaled by the result.
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
}

impl SqueezeExcitation {
    /// `fc1` and `fc2` (1×1 convolutions with bias) under `b`, on `channels` squeezed to `squeeze`.
    pub(crate) fn build(channels: usize, squeeze: usize, b: &mut Builder) -> Self {
        Self { fc1: b.conv("fc1", conv(channels, squeeze, 1, 1, 1, true), [squeeze, 1, 1]), fc2: b.conv("fc2", conv(squeeze, channels, 1, 1, 1, true), [channels, 1, 1]) }
    }

    pub fn forward(&self, x: Tensor<4>, activation: fn(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
        let pooled = x.clone().mean_dim(3).mean_dim(2); // [N, C, 1, 1]
        let scale = sigmoid(self.fc2.forward(activation(self.fc1.forward(pooled)))); // [N, C, 1, 1]
        x * scale // [N, C, H, W]
    }
}

transparent_module_enum! {
    /// One entry of an MBConv block's `block` Sequential.
    pub enum Layer {
        ConvNormAct(ConvNormAct),
        SqueezeExcitation(SqueezeExcitation),
    }
}

transparent_module_enum! {
    /// One entry of `features`: the stem and head convolutions, or a stage of MBConv blocks.
    pub enum Feature {
        ConvNormAct(ConvNormAct),
        Stage(Vec<MBConv>),
    }
}

/// torchvision's `MBConv`: expand → depthwise → squeeze-excite → project, residual when the
/// shape is kept.
#[derive(Module, Debug)]
pub struct MBConv {
    pub block: Vec<Layer>,
    pub residual: bool,
}

impl MBConv {
    /// The block on an input of side `hw` at the native resolution, under its `block` path.
    fn build(cfg: &EfficientNetConfig, spec: &BlockSpec, hw: usize, b: &mut Builder) -> Self {
        let (e, out) = (spec.expanded, conv_out(hw, spec.kernel, spec.stride));
        let mut block = Vec::with_capacity(4);
        if spec.expands() {
            block.push(Layer::ConvNormAct(cfg.conv_norm(&mut b.pp(0), conv(spec.input, e, 1, 1, 1, false), [e, hw, hw])));
        }
        let k = block.len();
        let depthwise = conv(e, e, spec.kernel, spec.stride, e, false).with_padding(cfg.padding(spec.kernel, spec.stride, hw));
        block.push(Layer::ConvNormAct(cfg.conv_norm(&mut b.pp(k), depthwise, [e, out, out])));
        block.push(Layer::SqueezeExcitation(SqueezeExcitation::build(e, spec.squeeze, &mut b.pp(k + 1))));
        block.push(Layer::ConvNormAct(cfg.conv_norm(&mut b.pp(k + 2), conv(e, spec.output, 1, 1, 1, false), [spec.output, out, out])));
        Self { block, residual: spec.residual() }
    }

    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        // [N, C_in, H, W]
        let last = self.block.len() - 1;
        let mut x = input.clone();
        for (k, layer) in self.block.iter().enumerate() {
            x = match layer {
                // expand [N, C_e, H, W], depthwise [N, C_e, H/s, W/s] (SiLU); project [N, C_out, H/s, W/s]
                Layer::ConvNormAct(cna) => conv_bn(cna, x, k != last),
                Layer::SqueezeExcitation(se) => se.forward(x, silu), // [N, C_e, H/s, W/s]
            };
        }
        if self.residual {
            x + input
        } else {
            x
        }
    }
}

impl Feature {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Feature::ConvNormAct(layer) => conv_bn(layer, x, true),
            Feature::Stage(blocks) => blocks.iter().fold(x, |x, block| block.forward(x)),
        }
    }
}

/// The whole network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct EfficientNet {
    pub features: Vec<Feature>,
    /// torchvision's `classifier` Sequential: `Dropout` (`.0`), `Linear` (`.1`); `None` once
    /// cut off for a new head.
    pub classifier: Option<(Dropout, Linear)>,
    #[module(skip)]
    pub config: EfficientNetConfig,
}

impl EfficientNet {
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
    }

    /// Runs stages `range` (torchvision's `features.K`).
    pub fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        let end = range.end.min(self.features.len());
        self.features[range.start.min(end)..end].iter().fold(x, |x, f| f.forward(x))
    }

    /// ImageNet logits: [N, 3, H, W] → [N, classes]; the pooled features without the classifier.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.features(images); // [N, C]
        self.classify(features.clone()).unwrap_or(features)
    }
}

impl Backbone for EfficientNetConfig {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn table(&self) -> Table {
        EfficientNetConfig::table(self)
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    /// timm 1.0.31's `pretrained_cfg` (default tags), all bicubic: B0 `ra_in1k` 224 crop_pct
    /// 0.875 (resize 256); B1 `ra4_e3600_r240_in1k` 240, 0.9 (266), mean and std 0.5; B2
    /// `ra_in1k` 256, 0.875 (292); B3 `ra2_in1k` 288, 0.875 (329); B4 `ra2_in1k` 320, 0.875
    /// (365); the others ImageNet mean and std. timm's sides for B2–B4 are below torchvision's.
    fn timm_input(&self) -> Option<TimmInput> {
        let bicubic = Interpolation::Bicubic;
        Some(match self.resolution {
            224 => TimmInput::imagenet("efficientnet_b0.ra_in1k", 224, 256, bicubic),
            240 => TimmInput {
                input: InputCfg { mean: [127.5; 3], std: [127.5; 3], ..TimmInput::imagenet("", 0, 266, bicubic).input },
                ..TimmInput::imagenet("efficientnet_b1.ra4_e3600_r240_in1k", 240, 266, bicubic)
            },
            288 => TimmInput::imagenet("efficientnet_b2.ra_in1k", 256, 292, bicubic),
            300 => TimmInput::imagenet("efficientnet_b3.ra2_in1k", 288, 329, bicubic),
            _ => TimmInput::imagenet("efficientnet_b4.ra2_in1k", 320, 365, bicubic),
        })
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_stages(&self) -> usize {
        BASE_STAGES.len() + 2
    }
    fn stage_name(&self, stage: usize) -> String {
        if self.keras {
            // The Keras layers whose outputs the stages are.
            let stages = self.stages();
            return match stage {
                0 => "stem_activation".into(),
                s if s == stages.len() + 1 => "top_activation".into(),
                s => match stages.get(s - 1).and_then(|blocks| blocks.last().map(|b| (blocks.len(), b.residual()))) {
                    Some((n, residual)) => format!("block{s}{}_{}", char::from(b'a' + (n - 1) as u8), if residual { "add" } else { "project_bn" }),
                    None => format!("stage{s}"),
                },
            };
        }
        format!("features.{stage}")
    }
}

impl BackboneNet for EfficientNet {
    fn num_stages(&self) -> usize {
        self.features.len()
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        EfficientNet::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        EfficientNet::forward(self, images)
    }
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.classifier.as_ref().map(|(_, fc)| fc.forward(pooled))
    }
    fn drop_classifier(&mut self) {
        self.classifier = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::{numbered_blocks, summarize, FreezeSpec};

    #[test]
    fn keras_b0_has_keras_names_and_counts() {
        let cfg = EfficientNetConfig::keras_b0(224);
        let rows = cfg.table().rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).take(9).collect();
        assert_eq!(names, ["stem_conv", "stem_bn", "block1a_dwconv", "block1a_bn", "block1a_se_reduce", "block1a_se_expand", "block1a_project_conv", "block1a_project_bn", "block2a_expand_conv"]);
        let last: Vec<&str> = rows.iter().rev().take(4).map(|r| r.name.as_str()).collect();
        assert_eq!(last, ["predictions", "avg_pool", "top_bn", "top_conv"]);
        assert!(rows.iter().any(|r| r.name == "block7a_project_bn") && rows.iter().any(|r| r.name == "block6d_se_expand"));
        // Keras's count_params() less its Normalization layer's 7 values.
        let s = summarize(&rows, &Default::default());
        assert_eq!(s.total_params + s.buffers, 5_330_564);
        assert_eq!((Backbone::stage_name(&cfg, 0), Backbone::stage_name(&cfg, 1), Backbone::stage_name(&cfg, 2)), ("stem_activation".into(), "block1a_project_bn".into(), "block2b_add".into()));
        // Keras's correct_pad on an even side: one more row and column at the bottom and right.
        assert_eq!(cfg.padding(3, 2, 224), PaddingConfig2d::Explicit(0, 0, 1, 1));
        assert_eq!(cfg.padding(5, 2, 28), PaddingConfig2d::Explicit(1, 1, 2, 2));
        assert_eq!(cfg.padding(3, 2, 7), PaddingConfig2d::Explicit(1, 1, 1, 1));
        assert_eq!(cfg.padding(5, 1, 14), PaddingConfig2d::Explicit(2, 2, 2, 2));
    }

    #[test]
    fn timm_names_blocks_by_kind() {
        let timm = crate::zoo::table::timm_names(&EfficientNetConfig::b(1).unwrap().table());
        assert_eq!(timm.len(), 439, "timm 1.0.31 efficientnet_b1's state dict, num_batches_tracked left out");
        for (name, shape) in [
            ("conv_stem.weight", vec![32, 3, 3, 3]),
            ("bn1.running_var", vec![32]),
            ("blocks.0.0.conv_dw.weight", vec![32, 1, 3, 3]),
            ("blocks.0.0.se.conv_reduce.weight", vec![8, 32, 1, 1]),
            ("blocks.0.0.conv_pw.weight", vec![16, 32, 1, 1]),
            ("blocks.0.1.bn2.bias", vec![16]),
            ("blocks.1.0.conv_pw.weight", vec![96, 16, 1, 1]),
            ("blocks.1.0.conv_dw.weight", vec![96, 1, 3, 3]),
            ("blocks.1.0.se.conv_expand.bias", vec![96]),
            ("blocks.1.0.conv_pwl.weight", vec![24, 96, 1, 1]),
            ("blocks.6.1.bn3.running_mean", vec![320]),
            ("conv_head.weight", vec![1280, 320, 1, 1]),
            ("bn2.weight", vec![1280]),
            ("classifier.weight", vec![1000, 1280]),
        ] {
            assert_eq!(timm.get(name), Some(&shape), "{name}");
        }
    }

    #[test]
    fn parameter_counts_and_names_match_torchvision() {
        // sum(p.numel() for p in torchvision.models.efficientnet_bN().parameters()), torchvision
        // 0.29.2 (also the weights enums' `num_params`).
        let total = |v: u8| summarize(&EfficientNetConfig::b(v).unwrap().table().rows(), &Default::default()).total_params;
        assert_eq!([total(0), total(1), total(2), total(3), total(4)], [5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616]);
        let b0 = EfficientNetConfig::b(0).unwrap();
        let rows = b0.table().rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).take(9).collect();
        assert_eq!(names, ["features.0.0", "features.0.1", "features.1.0.block.0.0", "features.1.0.block.0.1", "features.1.0.block.1.fc1", "features.1.0.block.1.fc2", "features.1.0.block.2.0", "features.1.0.block.2.1", "features.2.0.block.0.0"]);
        assert_eq!(rows.iter().find(|r| r.name == "features.2.0.block.2.fc1").unwrap().params[1].path, "features.2.0.block.2.fc1.bias");
        assert_eq!(rows.last().unwrap().name, "classifier.1");
        assert_eq!((b0.head_channels(), EfficientNetConfig::b(4).unwrap().head_channels()), (1280, 1792));
        // Stage widths and depths: B4 (width 1.4, depth 1.8) has 2, 4, 4, 6, 6, 8, 2 blocks.
        let b4 = EfficientNetConfig::b(4).unwrap();
        assert_eq!(b4.stages().iter().map(Vec::len).collect::<Vec<_>>(), [2, 4, 4, 6, 6, 8, 2]);
        assert_eq!(b4.stages().iter().map(|s| s[0].output).collect::<Vec<_>>(), [24, 32, 56, 112, 160, 272, 448]);
        assert_eq!(Backbone::stage_shape(&b0, 8), [1280, 7, 7]);
        assert_eq!(Backbone::stage_shape(&b4, 8), [1792, 12, 12]);
        // `--freeze N` counts `features.K`: `--freeze 2` is the stem and `features.1`.
        assert_eq!(numbered_blocks(&rows), 9);
        let frozen = FreezeSpec::FirstBlocks(2).frozen_params(&rows).unwrap();
        assert!(frozen.contains("features.0.1.running_var") && frozen.contains("features.1.0.block.2.1.weight"));
        assert!(!frozen.iter().any(|p| p.starts_with("features.2.") || p.starts_with("classifier")));
    }
}
