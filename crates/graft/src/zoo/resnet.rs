//! ResNet-18/34/50/101/152 (He et al., 2016) exactly as torchvision builds them, so a user's
//! torchvision state dict (`torch.save(model.state_dict())`, zip `.pth` or safetensors) loads
//! without renaming.
//!
//! torchvision semantics kept here: symmetric padding (`k / 2`), BatchNorm eps 1e-5, ReLU, a
//! 3×3/2 max-pool after the stem, the 1×1 projection shortcut (`downsample`) only where the
//! shape changes, and for the bottleneck variants the stride on the 3×3 convolution ("v1.5";
//! the paper put it on the first 1×1).
//!
//! **Keras** (`keras.applications.ResNet50`, [`ResNetConfig::keras50`]): Keras's ResNet50 is
//! ResNet v1, so it is a flavour of the network, not only other names: the stride sits on each
//! stack's first 1×1 convolution (`conv3_block1_1_conv`), every convolution has a bias, BatchNorm
//! eps is 1.001e-5, and its Caffe-style `preprocess_input` feeds BGR images (the stem's input
//! channels are reversed on loading, see [`super::table::FileInput::Bgr`]). Layers are named as
//! Keras names them (`conv1_conv`, `conv2_block1_0_conv` for the shortcut, `conv2_block1_1_bn`,
//! `predictions`); burn's module paths stay torchvision's. It is the registered
//! `resnet50_keras`, which `--arch resnet50` loads a Keras `.h5` file into (by its names).
//!
//! Field names are the checkpoint's (`conv1`, `layer2.0.downsample.0`, …): burn's module paths
//! then equal the names users see in `inspect` and write in `--freeze`. torchvision's
//! `downsample` is an `nn.Sequential(conv, bn)`; a tuple gives the same `.0` / `.1` paths.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use super::fold::{conv_bn, fold_conv_bn};
use crate::kernels::{activation, add_activation, Act};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::backbone::{Backbone, BackboneNet};
use crate::export::onnx::OnnxGraph;
use super::layers::LayerRow;
use super::load::WeightSource;
use super::table::{Builder, Convention, FileInput, Table};
use super::{user_weights, ModelSpec, Trunk, TrunkConfig, KERAS_CAFFE_INPUT};
use crate::Result;

/// The registered ResNets: torchvision's, for the user's own weights (`--weights FILE`).
pub const MODELS: &[ModelSpec] = &[
    user_weights("resnet18", || torchvision(18)),
    user_weights("resnet34", || torchvision(34)),
    user_weights("resnet50", || torchvision(50)),
    user_weights("resnet101", || torchvision(101)),
    user_weights("resnet152", || torchvision(152)),
    super::flavour("resnet50_keras", "resnet50", KERAS_CAFFE_INPUT, || ResNetConfig::keras50(224).into()),
];

fn torchvision(depth: usize) -> TrunkConfig {
    ResNetConfig::resnet(depth).expect("registry holds valid depths").into()
}

/// PyTorch's BatchNorm defaults (eps; momentum used when BN trains).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;
/// Keras Applications' ResNet BatchNorm eps; its momentum 0.99 is burn's 0.01.
const KERAS_BN_EPS: f64 = 1.001e-5;
const STEM_CHANNELS: usize = 64;

/// The residual unit: two 3×3 convolutions (18/34) or 1×1 → 3×3 → 1×1 (50 and deeper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes` (torchvision's `expansion`).
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Shape of one residual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    /// Checkpoint prefix, e.g. `layer2.0`.
    pub layer: usize,
    pub index: usize,
    pub input: usize,
    /// Channels inside the block (`planes`).
    pub width: usize,
    pub output: usize,
    pub stride: usize,
    pub kind: BlockKind,
}

impl BlockSpec {
    pub fn prefix(&self) -> String {
        format!("layer{}.{}", self.layer, self.index)
    }
    /// torchvision adds the projection shortcut whenever the residual's shape changes.
    fn downsample(&self) -> bool {
        self.stride != 1 || self.input != self.output
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Blocks in `layer1` … `layer4`.
    pub layers: [usize; 4],
    pub block: BlockKind,
    /// Native input side (for the layer table's output shapes); torchvision's is 224.
    pub resolution: usize,
    pub num_classes: usize,
    /// Keras Applications' ResNet v1 (see the module docs).
    #[serde(default)]
    pub keras: bool,
}

impl ResNetConfig {
    /// torchvision's `resnet{depth}`: 18, 34, 50, 101 or 152.
    pub fn resnet(depth: usize) -> Option<Self> {
        let (layers, block) = match depth {
            18 => ([2, 2, 2, 2], BlockKind::Basic),
            34 => ([3, 4, 6, 3], BlockKind::Basic),
            50 => ([3, 4, 6, 3], BlockKind::Bottleneck),
            101 => ([3, 4, 23, 3], BlockKind::Bottleneck),
            152 => ([3, 8, 36, 3], BlockKind::Bottleneck),
            _ => return None,
        };
        Some(Self { layers, block, resolution: 224, num_classes: 1000, keras: false })
    }

    /// `keras.applications.ResNet50` at `resolution` px.
    pub fn keras50(resolution: usize) -> Self {
        Self { resolution, keras: true, ..Self::resnet(50).expect("50 is a ResNet depth") }
    }

    /// Width of the pooled feature vector: 512 (18/34) or 2048.
    pub fn feature_dim(&self) -> usize {
        512 * self.block.expansion()
    }

    /// Every block in order (`layer1.0` first).
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut blocks = Vec::new();
        let mut input = STEM_CHANNELS;
        for (l, &repeats) in self.layers.iter().enumerate() {
            let width = STEM_CHANNELS << l;
            let output = width * self.block.expansion();
            for index in 0..repeats {
                // The first block of layers 2–4 halves the resolution.
                let stride = if index == 0 && l > 0 { 2 } else { 1 };
                blocks.push(BlockSpec { layer: l + 1, index, input, width, output, stride, kind: self.block });
                input = output;
            }
        }
        blocks
    }

    /// Builds the network with freshly initialised weights.
    pub fn init(&self, device: &Device) -> ResNet {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table (see [`table`](super::table)), recorded by the walk that builds the
    /// network; for Keras, renamed by [`keras_layer_name`].
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1;
        if !self.keras {
            return table;
        }
        table.renamed(Convention::Keras, |leaf| keras_layer_name(&leaf.module).unwrap_or_else(|| leaf.module.clone())).with_input("conv1_conv", FileInput::Bgr)
    }

    /// The layer table for `inspect`: leaf layers with their output shape for one image at the
    /// native resolution and their parameters under checkpoint names.
    pub fn layer_rows(&self) -> Vec<LayerRow> {
        self.table().rows()
    }

    /// The network, each layer named once: stage 0 the stem (`conv1`, `bn1`, `maxpool`), stage
    /// 1 + i the i-th residual block (`layerL.i`), then the pool and the classifier.
    fn build(&self, b: &mut Builder) -> ResNet {
        b.stage(Some(0));
        let mut hw = conv_out(self.resolution, 7, 2, 3);
        // Keras: ZeroPadding2D(3) then a 7×7/2 'valid' convolution, the same padding.
        let conv1 = b.conv("conv1", self.conv(3, STEM_CHANNELS, 7, 2), [STEM_CHANNELS, hw, hw]);
        let bn1 = b.batch_norm("bn1", self.bn(STEM_CHANNELS), [STEM_CHANNELS, hw, hw]);
        // Keras pads with zeros (ZeroPadding2D(1)), PyTorch with −∞: the same after a ReLU.
        hw = conv_out(hw, 3, 2, 1);
        b.layer("maxpool", "MaxPool2d 3x3", vec![STEM_CHANNELS, hw, hw]);
        let maxpool = MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init();
        let mut layers: [Vec<Block>; 4] = Default::default();
        for (i, spec) in self.blocks().iter().enumerate() {
            b.stage(Some(i + 1));
            let block = Block::build(self, spec, hw, &mut b.pp(format!("layer{}", spec.layer)).pp(spec.index));
            layers[spec.layer - 1].push(block);
            hw = conv_out(hw, 3, spec.stride, 1);
        }
        let [layer1, layer2, layer3, layer4] = layers;
        b.stage(None);
        b.layer("avgpool", "GlobalAvgPool", vec![self.feature_dim()]);
        let fc = b.classifier("fc", LinearConfig::new(self.feature_dim(), self.num_classes));
        ResNet { conv1, bn1, maxpool, layer1, layer2, layer3, layer4, fc: Some(fc), config: *self, folded: false }
    }

    /// A convolution with symmetric `k / 2` padding (Keras's 'same' for its stride-1 3×3 and
    /// 'valid' for its 1×1 convolutions); with a bias in Keras's flavour only.
    fn conv(&self, input: usize, output: usize, kernel: usize, stride: usize) -> Conv2dConfig {
        conv(input, output, kernel, stride).with_bias(self.keras)
    }

    fn bn(&self, channels: usize) -> BatchNormConfig {
        match self.keras {
            false => bn(channels),
            true => BatchNormConfig::new(channels).with_epsilon(KERAS_BN_EPS).with_momentum(0.01),
        }
    }
}

/// The Keras (`keras.applications.ResNet50`) name of a layer given its torchvision module path:
/// `conv1` → `conv1_conv`, `layer2.0.conv1` → `conv3_block1_1_conv`, `layer2.0.downsample.1` →
/// `conv3_block1_0_bn`, `fc` → `predictions`.
pub fn keras_layer_name(path: &str) -> Option<String> {
    let fixed = match path {
        "conv1" => Some("conv1_conv"),
        "bn1" => Some("conv1_bn"),
        "maxpool" => Some("pool1_pool"),
        "avgpool" => Some("avg_pool"),
        "fc" => Some("predictions"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.into());
    }
    let rest = path.strip_prefix("layer")?;
    let (layer, rest) = rest.split_once('.')?;
    let (index, part) = rest.split_once('.')?;
    let (layer, index): (usize, usize) = (layer.parse().ok()?, index.parse().ok()?);
    let part = match part {
        "conv1" => "1_conv",
        "bn1" => "1_bn",
        "conv2" => "2_conv",
        "bn2" => "2_bn",
        "conv3" => "3_conv",
        "bn3" => "3_bn",
        "downsample.0" => "0_conv",
        "downsample.1" => "0_bn",
        _ => return None,
    };
    Some(format!("conv{}_block{}_{part}", layer + 1, index + 1))
}

/// `(n + 2p − k) / s + 1`: output side of a convolution or pooling window.
fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// A bias-free convolution with torchvision's symmetric `k / 2` padding.
fn conv(input: usize, output: usize, kernel: usize, stride: usize) -> Conv2dConfig {
    let p = kernel / 2;
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
}

fn bn(channels: usize) -> BatchNormConfig {
    BatchNormConfig::new(channels).with_epsilon(BN_EPS).with_momentum(BN_MOMENTUM)
}

/// One residual block, BasicBlock or Bottleneck (the latter has `conv3`/`bn3`).
#[derive(Module, Debug)]
pub struct Block {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<BatchNorm>,
    /// Projection shortcut `nn.Sequential(conv 1×1/s, bn)`: paths `downsample.0`, `downsample.1`.
    pub downsample: Option<(Conv2d, BatchNorm)>,
    /// Whether each convolution already holds its BatchNorm ([`ResNet::folded`], for
    /// inference): the BatchNorms are then skipped.
    #[module(skip)]
    pub folded: bool,
}

impl Block {
    /// The block on an input of side `hw` at the native resolution. Keras's (v1) puts the
    /// stride on the first 1×1 convolution, torchvision's (v1.5) on the 3×3.
    fn build(cfg: &ResNetConfig, spec: &BlockSpec, hw: usize, b: &mut Builder) -> Self {
        let out = conv_out(hw, 3, spec.stride, 1);
        let (width, output) = (spec.width, spec.output);
        let (conv, bn) = (|i, o, k, s| cfg.conv(i, o, k, s), |c| cfg.bn(c));
        let (stride1, stride2, hw1) = if cfg.keras { (spec.stride, 1, out) } else { (1, spec.stride, hw) };
        let mut block = match spec.kind {
            BlockKind::Basic => Self {
                conv1: b.conv("conv1", conv(spec.input, width, 3, spec.stride), [width, out, out]),
                bn1: b.batch_norm("bn1", bn(width), [width, out, out]),
                conv2: b.conv("conv2", conv(width, output, 3, 1), [output, out, out]),
                bn2: b.batch_norm("bn2", bn(output), [output, out, out]),
                conv3: None,
                bn3: None,
                downsample: None,
                folded: false,
            },
            BlockKind::Bottleneck => Self {
                conv1: b.conv("conv1", conv(spec.input, width, 1, stride1), [width, hw1, hw1]),
                bn1: b.batch_norm("bn1", bn(width), [width, hw1, hw1]),
                conv2: b.conv("conv2", conv(width, width, 3, stride2), [width, out, out]),
                bn2: b.batch_norm("bn2", bn(width), [width, out, out]),
                conv3: Some(b.conv("conv3", conv(width, output, 1, 1), [output, out, out])),
                bn3: Some(b.batch_norm("bn3", bn(output), [output, out, out])),
                downsample: None,
                folded: false,
            },
        };
        if spec.downsample() {
            let mut d = b.pp("downsample");
            block.downsample = Some((d.conv(0, conv(spec.input, output, 1, spec.stride), [output, out, out]), d.batch_norm(1, bn(output), [output, out, out])));
        }
        block
    }

    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        // [N, C_in, H, W]
        // BatchNorm in inference mode is folded into its convolution (`conv_bn`); ReLU and the
        // residual sum run on every thread (graft's kernels on the CPU).
        let conv_bn = |conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>| if self.folded { conv.forward(x) } else { conv_bn(conv, bn, x) };
        let shortcut = match &self.downsample {
            Some((conv, bn)) => conv_bn(conv, bn, input.clone()), // [N, C_out, H/s, W/s]
            None => input.clone(),
        };
        let x = activation(conv_bn(&self.conv1, &self.bn1, input), Act::Relu); // [N, width, H or H/s, …]
        let x = conv_bn(&self.conv2, &self.bn2, x); // [N, width or C_out, H/s, W/s]
        let x = match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => conv_bn(conv3, bn3, activation(x, Act::Relu)), // [N, C_out, H/s, W/s]
            _ => x,
        };
        add_activation(x, shortcut, Act::Relu)
    }

    /// This block with each BatchNorm folded into its convolution once (inference only).
    fn folded(&self) -> Self {
        if self.folded {
            return self.clone();
        }
        Self {
            conv1: fold_conv_bn(&self.conv1, &self.bn1),
            conv2: fold_conv_bn(&self.conv2, &self.bn2),
            conv3: self.conv3.as_ref().zip(self.bn3.as_ref()).map(|(conv, bn)| fold_conv_bn(conv, bn)),
            downsample: self.downsample.as_ref().map(|(conv, bn)| (fold_conv_bn(conv, bn), bn.clone())),
            folded: true,
            ..self.clone()
        }
    }
}

/// The whole network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub maxpool: MaxPool2d,
    pub layer1: Vec<Block>,
    pub layer2: Vec<Block>,
    pub layer3: Vec<Block>,
    pub layer4: Vec<Block>,
    /// The ImageNet classifier; `None` once cut off for a new head.
    pub fc: Option<Linear>,
    /// What was built (its layer table drives [`load_weights`](Self::load_weights)).
    #[module(skip)]
    pub config: ResNetConfig,
    /// Whether the stem's convolution already holds its BatchNorm ([`ResNet::folded`]).
    #[module(skip)]
    pub folded: bool,
}

impl ResNet {
    /// Replaces every parameter and BatchNorm statistic with the checkpoint's, checking that
    /// each tensor exists and has the shape this architecture needs (so a ResNet-50 file given
    /// for a ResNet-18 fails naming the first tensor that differs).
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
    }

    /// Stem: [N, 3, H, W] → [N, 64, H/4, W/4] (conv 7×7/2, BN, ReLU, max-pool 3×3/2).
    pub fn stem(&self, images: Tensor<4>) -> Tensor<4> {
        let x = if self.folded { self.conv1.forward(images) } else { conv_bn(&self.conv1, &self.bn1, images) };
        let x = activation(x, Act::Relu); // [N, 64, H/2, W/2]
        self.maxpool.forward(x) // [N, 64, H/4, W/4]
    }

    /// The network for inference with every BatchNorm (in inference mode) folded into its
    /// convolution once, so that no forward pass recomputes the fold ([`Trunk::for_inference`]:
    /// a batch split image by image would fold 25 M weights per image). Not for training.
    pub fn folded(&self) -> Self {
        let fold = |blocks: &[Block]| blocks.iter().map(Block::folded).collect::<Vec<_>>();
        Self {
            conv1: if self.folded { self.conv1.clone() } else { fold_conv_bn(&self.conv1, &self.bn1) },
            layer1: fold(&self.layer1),
            layer2: fold(&self.layer2),
            layer3: fold(&self.layer3),
            layer4: fold(&self.layer4),
            folded: true,
            ..self.clone()
        }
    }

    /// The residual blocks in order, `layer1.0` first.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.layer1.iter().chain(&self.layer2).chain(&self.layer3).chain(&self.layer4)
    }

    /// Stages are the units a cut can fall between: 0 is the stem, 1..=B the residual blocks
    /// (ResNet has no head convolution).
    pub fn num_stages(&self) -> usize {
        1 + self.blocks().count()
    }

    /// Runs stages `range` (see [`num_stages`](Self::num_stages)) on a feature map; stages past
    /// the end are ignored.
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        if range.contains(&0) {
            x = self.stem(x);
        }
        let first = range.start.max(1);
        for block in self.blocks().skip(first - 1).take(range.end.saturating_sub(first)) {
            x = block.forward(x);
        }
        x
    }

    /// ImageNet logits: [N, 3, H, W] → [N, num_classes]; without the classifier, the pooled
    /// features.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.features(images);
        match &self.fc {
            Some(fc) => fc.forward(features),
            None => features,
        }
    }
}

/// ResNet's contract: stage 0 the stem (its output is `maxpool`'s), 1..=B the residual blocks,
/// named as torchvision's modules: `layerL.i`, and `layerL` for the last block of a layer (the
/// output of the whole `layerL`). No head convolution.
impl Backbone for ResNetConfig {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn table(&self) -> Table {
        ResNetConfig::table(self)
    }
    fn num_stages(&self) -> usize {
        1 + self.layers.iter().sum::<usize>()
    }
    fn stage_name(&self, stage: usize) -> String {
        if self.keras {
            // Keras's layers whose outputs the stages are: the stem's pool, each block's ReLU.
            return match self.blocks().get(stage.wrapping_sub(1)) {
                _ if stage == 0 => "pool1_pool".into(),
                Some(b) => format!("conv{}_block{}_out", b.layer + 1, b.index + 1),
                None => format!("stage{stage}"),
            };
        }
        if stage == 0 {
            return "maxpool".into();
        }
        match self.blocks().get(stage - 1) {
            Some(b) if b.index + 1 == self.layers[b.layer - 1] => format!("layer{}", b.layer),
            Some(b) => b.prefix(),
            None => format!("stage{stage}"),
        }
    }
    fn stage_named(&self, name: &str) -> Option<usize> {
        // `layer3` is the last block of layer 3; `layer3.5` is also accepted for it.
        (0..Backbone::num_stages(self)).find(|&s| self.stage_name(s) == name || (s > 0 && self.blocks()[s - 1].prefix() == name))
    }
}

impl BackboneNet for ResNet {
    /// Its layers run the whole batch on every thread (graft's kernels).
    fn split_batch_for_inference(&self) -> bool {
        false
    }
    fn num_stages(&self) -> usize {
        ResNet::num_stages(self)
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        ResNet::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        ResNet::forward(self, images)
    }
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.fc.as_ref().map(|fc| fc.forward(pooled))
    }
    fn drop_classifier(&mut self) {
        self.fc = None;
    }
    fn to_onnx(&self, g: &mut OnnxGraph, input: &str) -> Result<String> {
        let x = g.conv(&self.conv1, Some(&self.bn1), input, "conv1")?;
        let x = g.relu(&x);
        let mut x = g.max_pool(&self.maxpool, &x, "maxpool")?;
        for (spec, block) in self.config.blocks().iter().zip(self.blocks()) {
            let p = spec.prefix();
            let shortcut = match &block.downsample {
                Some((conv, bn)) => g.conv(conv, Some(bn), &x, &format!("{p}.downsample.0"))?,
                None => x.clone(),
            };
            let h = g.conv(&block.conv1, Some(&block.bn1), &x, &format!("{p}.conv1"))?;
            let h = g.relu(&h);
            let mut h = g.conv(&block.conv2, Some(&block.bn2), &h, &format!("{p}.conv2"))?;
            if let (Some(conv3), Some(bn3)) = (&block.conv3, &block.bn3) {
                let r = g.relu(&h);
                h = g.conv(conv3, Some(bn3), &r, &format!("{p}.conv3"))?;
            }
            let sum = g.add(&h, &shortcut);
            x = g.relu(&sum);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::{summarize, FreezeSpec};

    fn total_params(cfg: &ResNetConfig) -> usize {
        summarize(&cfg.layer_rows(), &Default::default()).total_params
    }

    #[test]
    fn keras_resnet50_is_v1_under_keras_names() {
        let cfg = ResNetConfig::keras50(224);
        let rows = cfg.layer_rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).take(5).collect();
        assert_eq!(names, ["conv1_conv", "conv1_bn", "pool1_pool", "conv2_block1_1_conv", "conv2_block1_1_bn"]);
        let find = |n: &str| rows.iter().find(|r| r.name == n).unwrap_or_else(|| panic!("no row {n}"));
        // v1: the stride is on the first 1×1 convolution; every convolution has a bias.
        assert_eq!(find("conv3_block1_1_conv").output_shape, vec![128, 28, 28]);
        assert_eq!(find("conv3_block1_0_conv").output_shape, vec![512, 28, 28]);
        assert_eq!(find("conv3_block1_2_conv").params.iter().map(|p| p.path.as_str()).collect::<Vec<_>>(), ["conv3_block1_2_conv/kernel", "conv3_block1_2_conv/bias"]);
        assert_eq!(rows.last().unwrap().name, "predictions");
        // Keras's count_params() (BatchNorm statistics included) for ResNet50.
        let s = summarize(&rows, &Default::default());
        assert_eq!(s.total_params + s.buffers, 25_636_712);
        assert_eq!(Backbone::stage_name(&cfg, 16), "conv5_block3_out");
        assert_eq!(Backbone::stage_named(&cfg, "conv3_block1_out"), Some(4));
    }

    #[test]
    fn parameter_counts_match_torchvision() {
        // torchvision's published counts (sum of p.numel() over model.parameters()).
        assert_eq!(total_params(&ResNetConfig::resnet(18).unwrap()), 11_689_512);
        assert_eq!(total_params(&ResNetConfig::resnet(34).unwrap()), 21_797_672);
        assert_eq!(total_params(&ResNetConfig::resnet(50).unwrap()), 25_557_032);
        assert_eq!(total_params(&ResNetConfig::resnet(101).unwrap()), 44_549_160);
        assert!(ResNetConfig::resnet(19).is_none());
    }

    #[test]
    fn rows_name_checkpoint_tensors_and_shapes() {
        let rows = ResNetConfig::resnet(50).unwrap().layer_rows();
        let find = |n: &str| rows.iter().find(|r| r.name == n).unwrap_or_else(|| panic!("no row {n}"));
        assert_eq!(find("maxpool").output_shape, vec![64, 56, 56]);
        assert_eq!(find("layer1.0.downsample.0").output_shape, vec![256, 56, 56]);
        // v1.5: the stride sits on the 3×3.
        assert_eq!(find("layer2.0.conv1").output_shape, vec![128, 56, 56]);
        assert_eq!(find("layer2.0.conv2").output_shape, vec![128, 28, 28]);
        assert_eq!(find("layer4.2.bn3").output_shape, vec![2048, 7, 7]);
        assert!(rows.iter().all(|r| r.name != "layer1.1.downsample.0"));
        assert!(find("fc").is_head);
        // `--freeze 2` = stem + layer1.0 + layer1.1.
        let frozen = FreezeSpec::FirstBlocks(2).frozen_params(&rows).unwrap();
        assert!(frozen.contains("conv1.weight") && frozen.contains("layer1.1.bn3.running_var"));
        assert!(!frozen.contains("layer1.2.conv1.weight"));
    }

    #[test]
    fn stages_cover_every_trunk_layer() {
        let cfg = ResNetConfig::resnet(34).unwrap();
        assert_eq!(cfg.stage_of("conv1"), Some(0));
        assert_eq!(cfg.stage_of("layer1.0.conv1"), Some(1));
        assert_eq!(cfg.stage_of("layer2.0.downsample.1"), Some(4));
        assert_eq!(cfg.stage_of("layer4.2.bn2"), Some(16));
        assert_eq!(cfg.stage_of("layer4.3.bn2"), None);
        assert_eq!(cfg.stage_of("fc"), None);
        for row in cfg.layer_rows().iter().filter(|r| !r.is_head && r.name != "avgpool") {
            assert!(cfg.stage_of(&row.name).is_some(), "{} has no stage", row.name);
        }
    }

    #[test]
    fn module_paths_are_checkpoint_names() {
        // burn's parameter paths must equal the checkpoint names so freeze regexes written
        // against `inspect` hit the right tensors (BN weight/bias are burn's gamma/beta).
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
        let device = Default::default();
        let cfg = ResNetConfig { layers: [1, 1, 1, 1], ..ResNetConfig::resnet(50).unwrap() };
        let mut paths = Paths(vec![], vec![]);
        cfg.init(&device).visit(&mut paths);
        for p in ["conv1.weight", "bn1.gamma", "layer2.0.conv3.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var", "fc.weight"] {
            assert!(paths.0.iter().any(|q| q == p), "no parameter {p} in {:?}", &paths.0[..8]);
        }
    }

    #[test]
    fn forward_shapes_and_stage_cuts() {
        let device = Default::default();
        let cfg = ResNetConfig { layers: [1, 1, 1, 1], num_classes: 7, ..ResNetConfig::resnet(50).unwrap() };
        let net = cfg.init(&device);
        assert_eq!(net.num_stages(), 5);
        let x = Tensor::<4>::ones([1, 3, 64, 64], &device);
        assert_eq!(net.forward(x.clone()).dims(), [1, 7]);
        let mid = net.forward_stages(x.clone(), 0..2);
        assert_eq!(mid.dims(), [1, 256, 16, 16]);
        let end = net.forward_stages(mid, 2..5);
        let whole = net.forward_stages(x, 0..5);
        assert_eq!(end.dims(), [1, 2048, 2, 2]);
        let diff: f32 = (end - whole).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }
}
