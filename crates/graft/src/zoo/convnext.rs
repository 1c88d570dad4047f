//! ConvNeXt-Tiny/Small/Base (Liu et al., 2022) exactly as torchvision builds them, so a user's
//! torchvision state dict loads without renaming.
//!
//! torchvision's layout: `features.0` the stem (4×4/4 convolution, LayerNorm over channels),
//! `features.1/3/5/7` the four stages of blocks, `features.2/4/6` the downsampling layers
//! (LayerNorm, 2×2/2 convolution), then a global average pool and `classifier` (LayerNorm,
//! flatten, linear: `classifier.0`, `classifier.2`). A block (`features.S.i`) is `block.0` a
//! depthwise 7×7 convolution, `block.2` a LayerNorm over channels (channels last), `block.3`
//! and `block.5` the 4× MLP with GELU (erf) between them, then `layer_scale` (`[C, 1, 1]`)
//! times the result added to the input. Every LayerNorm has eps 1e-6; stochastic depth is
//! off at inference.
//!
//! burn derives parameter paths from field names, so the network keeps readable fields
//! (`stages.0.1.dwconv`) and the layer table maps them to torchvision's names
//! ([`ConvNeXtConfig::table`]). Stages are torchvision's `features.0` … `features.7`: the output
//! of stage `features.K` is `model.features[:K+1](x)`.

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use super::backbone::{Backbone, BackboneNet};
use crate::kernels::{self, add_activation, depthwise_conv_nhwc, linear_rows, pointwise_rows, Act};
use crate::export::onnx::{ints, OnnxGraph};
use super::load::WeightSource;
use super::table::{Builder, Convention, Table};
use super::{InputCfg, ModelSpec, TimmInput, Trunk, TORCHVISION_INPUT};
use crate::data::image::{Crop, Interpolation};
use crate::Result;

/// torchvision's ConvNeXt eval transforms: Tiny resizes to 236, Small to 230, Base to 232
/// (bilinear), then centre crop 224.
const fn resize(shorter: u32) -> InputCfg {
    InputCfg { crop: Crop::ResizeCentre { shorter }, ..TORCHVISION_INPUT }
}

/// The registered ConvNeXts: torchvision's, for the user's own weights (`--weights FILE`).
pub const MODELS: &[ModelSpec] = &[
    ModelSpec { input: resize(236), ..super::user_weights("convnext_tiny", || ConvNeXtConfig::tiny().into()) },
    ModelSpec { input: resize(230), ..super::user_weights("convnext_small", || ConvNeXtConfig::small().into()) },
    ModelSpec { input: resize(232), ..super::user_weights("convnext_base", || ConvNeXtConfig::base().into()) },
];

const LN_EPS: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq)]
pub struct ConvNeXtConfig {
    /// Blocks per stage.
    pub depths: [usize; 4],
    /// Channels per stage.
    pub dims: [usize; 4],
    /// Native input side; torchvision's is 224.
    pub resolution: usize,
    pub num_classes: usize,
}

impl ConvNeXtConfig {
    pub fn tiny() -> Self {
        Self { depths: [3, 3, 9, 3], dims: [96, 192, 384, 768], resolution: 224, num_classes: 1000 }
    }
    pub fn small() -> Self {
        Self { depths: [3, 3, 27, 3], ..Self::tiny() }
    }
    pub fn base() -> Self {
        Self { depths: [3, 3, 27, 3], dims: [128, 256, 512, 1024], resolution: 224, num_classes: 1000 }
    }

    pub fn init(&self, device: &Device) -> ConvNeXt {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table under torchvision's names, with timm's as the second name set.
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1;
        let names = self.torch_names();
        table.renamed(Convention::Torch, |leaf| names.get(&leaf.module).cloned().unwrap_or_else(|| leaf.module.clone())).with_timm(timm_name)
    }

    /// burn's module path → torchvision's name.
    fn torch_names(&self) -> HashMap<String, String> {
        let mut names = HashMap::new();
        let mut put = |burn: String, torch: String| names.insert(burn, torch);
        put("stem_conv".into(), "features.0.0".into());
        put("stem_norm".into(), "features.0.1".into());
        for s in 0..4 {
            if s > 0 {
                put(format!("downsample.{}.0", s - 1), format!("features.{}.0", 2 * s));
                put(format!("downsample.{}.1", s - 1), format!("features.{}.1", 2 * s));
            }
            for i in 0..self.depths[s] {
                let (burn, torch) = (format!("stages.{s}.{i}"), format!("features.{}.{i}", 2 * s + 1));
                put(format!("{burn}.dwconv"), format!("{torch}.block.0"));
                put(format!("{burn}.norm"), format!("{torch}.block.2"));
                put(format!("{burn}.pwconv1"), format!("{torch}.block.3"));
                put(format!("{burn}.pwconv2"), format!("{torch}.block.5"));
                put(format!("{burn}.layer_scale"), format!("{torch}.layer_scale"));
            }
        }
        put("head_norm".into(), "classifier.0".into());
        put("fc".into(), "classifier.2".into());
        names
    }

    fn build(&self, b: &mut Builder) -> ConvNeXt {
        let d = self.dims;
        let mut hw = self.resolution / 4;
        b.stage(Some(0));
        let stem_conv = b.conv("stem_conv", Conv2dConfig::new([3, d[0]], [4, 4]).with_stride([4, 4]), [d[0], hw, hw]);
        let stem_norm = b.layer_norm("stem_norm", LayerNormConfig::new(d[0]).with_epsilon(LN_EPS), vec![d[0], hw, hw], false);
        let (mut downsample, mut stages) = (Vec::new(), Vec::new());
        for s in 0..4 {
            if s > 0 {
                b.stage(Some(2 * s));
                let mut all = b.pp("downsample");
                let mut p = all.pp(s - 1);
                let norm = p.layer_norm(0, LayerNormConfig::new(d[s - 1]).with_epsilon(LN_EPS), vec![d[s - 1], hw, hw], false);
                hw /= 2;
                let conv = p.conv(1, Conv2dConfig::new([d[s - 1], d[s]], [2, 2]).with_stride([2, 2]), [d[s], hw, hw]);
                downsample.push((norm, conv));
            }
            b.stage(Some(2 * s + 1));
            let mut p = b.pp("stages");
            let mut p = p.pp(s);
            stages.push((0..self.depths[s]).map(|i| Block::build(d[s], hw, &mut p.pp(i))).collect::<Vec<_>>());
        }
        b.stage(None);
        b.layer("avgpool", "GlobalAvgPool", vec![d[3], 1, 1]);
        let head_norm = b.layer_norm("head_norm", LayerNormConfig::new(d[3]).with_epsilon(LN_EPS), vec![d[3], 1, 1], true);
        let fc = b.classifier("fc", LinearConfig::new(d[3], self.num_classes));
        ConvNeXt { stem_conv, stem_norm, downsample, stages, head_norm: Some(head_norm), fc: Some(fc), config: self.clone() }
    }
}

/// timm's name (and shape) of torchvision's ConvNeXt tensor `torch` of `shape` (timm's
/// `convnext_tiny/small/base`, the same network): `features.0.K` → `stem.K`, `features.2S.K`
/// → `stages.S.downsample.K`, `features.(2S+1).I.block.{0,2,3,5}` →
/// `stages.S.blocks.I.{conv_dw,norm,mlp.fc1,mlp.fc2}`, `…layer_scale` `[C, 1, 1]` →
/// `…gamma` `[C]`, `classifier.{0,2}` → `head.{norm,fc}`.
fn timm_name(torch: &str, shape: &[usize]) -> (String, Vec<usize>) {
    let parts: Vec<&str> = torch.split('.').collect();
    let same = |name: String| (name, shape.to_vec());
    match parts.as_slice() {
        ["features", "0", rest @ ..] => same(format!("stem.{}", rest.join("."))),
        ["features", k, i, "layer_scale"] => (format!("stages.{}.blocks.{i}.gamma", k.parse::<usize>().unwrap_or(1) / 2), vec![shape[0]]),
        ["features", k, i, "block", layer, param] => {
            let layer = match *layer {
                "0" => "conv_dw",
                "2" => "norm",
                "3" => "mlp.fc1",
                _ => "mlp.fc2",
            };
            same(format!("stages.{}.blocks.{i}.{layer}.{param}", k.parse::<usize>().unwrap_or(1) / 2))
        }
        ["features", k, rest @ ..] => same(format!("stages.{}.downsample.{}", k.parse::<usize>().unwrap_or(0) / 2, rest.join("."))),
        ["classifier", "0", param] => same(format!("head.norm.{param}")),
        ["classifier", _, param] => same(format!("head.fc.{param}")),
        _ => same(torch.to_string()),
    }
}

/// LayerNorm over the channels of a map: [N, C, H, W] → the same (torchvision's `LayerNorm2d`).
fn norm2d(norm: &LayerNorm, x: Tensor<4>) -> Tensor<4> {
    norm.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
}

/// One ConvNeXt block (torchvision's `CNBlock`).
#[derive(Module, Debug)]
pub struct Block {
    pub dwconv: Conv2d,
    pub norm: LayerNorm,
    pub pwconv1: Linear,
    pub pwconv2: Linear,
    pub layer_scale: Param<Tensor<3>>,
}

impl Block {
    fn build(c: usize, hw: usize, b: &mut Builder) -> Self {
        let dw = Conv2dConfig::new([c, c], [7, 7]).with_groups(c).with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3));
        Self {
            dwconv: b.conv("dwconv", dw, [c, hw, hw]),
            norm: b.layer_norm("norm", LayerNormConfig::new(c).with_epsilon(LN_EPS), vec![hw, hw, c], false),
            pwconv1: b.linear("pwconv1", LinearConfig::new(c, 4 * c), vec![hw, hw, 4 * c]),
            pwconv2: b.linear("pwconv2", LinearConfig::new(4 * c, c), vec![hw, hw, c]),
            layer_scale: b.scale("layer_scale", [c, 1, 1], [c, hw, hw]),
        }
    }

    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let x = self.dwconv.forward(input.clone()).permute([0, 2, 3, 1]); // [N, H, W, C]
        let x = self.pwconv1.forward(self.norm.forward(x)); // [N, H, W, 4C]
        let x = self.pwconv2.forward(gelu(x)).permute([0, 3, 1, 2]); // [N, C, H, W]
        let scale = self.layer_scale.val().unsqueeze::<4>(); // [1, C, 1, 1]
        x * scale + input
    }

    /// The same block on a channels-last map with graft's kernels (the device must be
    /// [`kernels::supported`]): the depthwise convolution channels-last, the MLP as two matrix
    /// products on rows with bias and GELU fused, the layer scale folded into the second
    /// (γ·(hW + b) = h(W·diag γ) + γ·b, so γ still trains), the residual sum on every thread.
    /// [N, H, W, C] → [N, H, W, C]
    pub fn forward_channels_last(&self, input: Tensor<4>) -> Tensor<4> {
        let [n, h, w, c] = input.dims();
        let k = self.dwconv.kernel_size[0];
        let kernel = self.dwconv.weight.val().reshape([c, k * k]).transpose().reshape([k, k, c]); // [k, k, C]
        let bias = self.dwconv.bias.as_ref().map(|b| b.val()).unwrap_or_else(|| Tensor::zeros([c], &input.device())); // [C]
        let x = depthwise_conv_nhwc(input.clone(), kernel, bias, 1, Act::Identity); // [N, H, W, C]
        let rows = self.norm.forward(x.reshape([n * h * w, c])); // [N·H·W, C]
        let hidden = linear_rows(&self.pwconv1, rows, Act::Gelu); // [N·H·W, 4C]
        let scale = self.layer_scale.val().reshape([1, c]); // [1, C]
        let weight = self.pwconv2.weight.val() * scale.clone(); // [4C, C]
        let bias = match &self.pwconv2.bias {
            Some(b) => b.val() * scale.reshape([c]),
            None => scale.reshape([c]).zeros_like(),
        }; // [C]
        let out = pointwise_rows(hidden, weight, bias, Act::Identity).reshape([n, h, w, c]); // [N, H, W, C]
        add_activation(out, input, Act::Identity)
    }
}

/// A stage's blocks: channels-last with graft's kernels where the device has them, else burn's
/// layers as torchvision writes them. [N, C, H, W] → [N, C, H, W]
fn run_blocks(blocks: &[Block], x: Tensor<4>) -> Tensor<4> {
    if !kernels::supported(&x.device()) {
        return blocks.iter().fold(x, |x, block| block.forward(x));
    }
    let x = x.permute([0, 2, 3, 1]); // [N, H, W, C]
    blocks.iter().fold(x, |x, block| block.forward_channels_last(x)).permute([0, 3, 1, 2])
}

/// The whole network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct ConvNeXt {
    pub stem_conv: Conv2d,
    pub stem_norm: LayerNorm,
    /// Before stages 1–3: LayerNorm over channels, 2×2/2 convolution.
    pub downsample: Vec<(LayerNorm, Conv2d)>,
    pub stages: Vec<Vec<Block>>,
    /// The classifier's LayerNorm and linear layer; `None` once cut off for a new head.
    pub head_norm: Option<LayerNorm>,
    pub fc: Option<Linear>,
    #[module(skip)]
    pub config: ConvNeXtConfig,
}

impl ConvNeXt {
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
    }

    /// Runs stages `range` (torchvision's `features.K`, K in 0..8).
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        for k in range.start..range.end.min(8) {
            x = match k {
                0 => norm2d(&self.stem_norm, self.stem_conv.forward(x)), // [N, C0, H/4, W/4]
                k if k % 2 == 0 => {
                    let (norm, conv) = &self.downsample[k / 2 - 1];
                    conv.forward(norm2d(norm, x)) // [N, C, h/2, w/2]
                }
                k => run_blocks(&self.stages[k / 2], x),
            };
        }
        x
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = self.features(images); // [N, C]
        self.classify(features.clone()).unwrap_or(features)
    }
}

impl Backbone for ConvNeXtConfig {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn table(&self) -> Table {
        ConvNeXtConfig::table(self)
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    /// timm 1.0.31's `pretrained_cfg` (default tags): Tiny and Small `in12k_ft_in1k` crop_pct
    /// 0.95 (resize 235), Base `fb_in22k_ft_in1k` 0.875 (resize 256); 224, bicubic, ImageNet
    /// mean and std.
    fn timm_input(&self) -> Option<TimmInput> {
        let bicubic = Interpolation::Bicubic;
        Some(match (self.depths[2], self.dims[0]) {
            (9, _) => TimmInput::imagenet("convnext_tiny.in12k_ft_in1k", 224, 235, bicubic),
            (_, 96) => TimmInput::imagenet("convnext_small.in12k_ft_in1k", 224, 235, bicubic),
            _ => TimmInput::imagenet("convnext_base.fb_in22k_ft_in1k", 224, 256, bicubic),
        })
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_stages(&self) -> usize {
        8
    }
    fn stage_name(&self, stage: usize) -> String {
        format!("features.{stage}")
    }
}

impl BackboneNet for ConvNeXt {
    /// Its layers run the whole batch on every thread (graft's kernels).
    fn split_batch_for_inference(&self) -> bool {
        false
    }
    fn num_stages(&self) -> usize {
        8
    }
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        ConvNeXt::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        ConvNeXt::forward(self, images)
    }
    /// torchvision's classifier: LayerNorm over the pooled channels, then the linear layer.
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        match (&self.head_norm, &self.fc) {
            (Some(norm), Some(fc)) => Some(fc.forward(norm.forward(pooled))),
            _ => None,
        }
    }
    fn to_onnx(&self, g: &mut OnnxGraph, input: &str) -> Result<String> {
        // LayerNorm over channels on [N, C, H, W]: to channels-last, LayerNormalization, back.
        let norm = |g: &mut OnnxGraph, norm: &LayerNorm, x: &str, name: &str, back: bool| -> Result<String> {
            let beta = norm.beta.as_ref().map(|b| b.val()).unwrap_or_else(|| norm.gamma.val().zeros_like());
            let x = g.node("Transpose", &[x], vec![ints("perm", &[0, 2, 3, 1])], &format!("{name}.nhwc"));
            let y = g.layer_norm(norm.gamma.val(), beta, LN_EPS, &x, name)?;
            Ok(if back { g.node("Transpose", &[&y], vec![ints("perm", &[0, 3, 1, 2])], &format!("{name}.nchw")) } else { y })
        };
        let x = g.conv(&self.stem_conv, None, input, "stem_conv")?;
        let mut x = norm(g, &self.stem_norm, &x, "stem_norm", true)?;
        for k in 1..8 {
            if k % 2 == 0 {
                let (ln, conv) = &self.downsample[k / 2 - 1];
                let y = norm(g, ln, &x, &format!("downsample.{}.0", k / 2 - 1), true)?;
                x = g.conv(conv, None, &y, &format!("downsample.{}.1", k / 2 - 1))?;
                continue;
            }
            for (j, block) in self.stages[k / 2].iter().enumerate() {
                let p = format!("stages.{}.{j}", k / 2);
                let h = g.conv(&block.dwconv, None, &x, &format!("{p}.dwconv"))?; // [N, C, H, W]
                let h = norm(g, &block.norm, &h, &format!("{p}.norm"), false)?; // [N, H, W, C]
                let h = g.linear_nd(&block.pwconv1, &h, &format!("{p}.pwconv1"))?; // [N, H, W, 4C]
                let h = g.gelu(&h);
                let h = g.linear_nd(&block.pwconv2, &h, &format!("{p}.pwconv2"))?; // [N, H, W, C]
                let h = g.node("Transpose", &[&h], vec![ints("perm", &[0, 3, 1, 2])], &format!("{p}.nchw"));
                let scale = g.parameter(&format!("{p}.layer_scale"), block.layer_scale.val())?; // [C, 1, 1]
                let h = g.node("Mul", &[&h, &scale], vec![], &format!("{p}.scaled"));
                x = g.add(&h, &x);
            }
        }
        Ok(x)
    }
    fn drop_classifier(&mut self) {
        self.head_norm = None;
        self.fc = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::summarize;

    #[test]
    fn parameter_counts_and_names_match_torchvision() {
        // sum(p.numel() for p in torchvision.models.NAME().parameters()), torchvision 0.29.2.
        let total = |c: &ConvNeXtConfig| summarize(&c.table().rows(), &Default::default()).total_params;
        assert_eq!(total(&ConvNeXtConfig::tiny()), 28_589_128);
        assert_eq!(total(&ConvNeXtConfig::small()), 50_223_688);
        assert_eq!(total(&ConvNeXtConfig::base()), 88_591_464);
        let rows = ConvNeXtConfig::tiny().table().rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).take(8).collect();
        assert_eq!(names, ["features.0.0", "features.0.1", "features.1.0.block.0", "features.1.0.block.2", "features.1.0.block.3", "features.1.0.block.5", "features.1.0.layer_scale", "features.1.1.block.0"]);
        assert_eq!(rows.iter().find(|r| r.name == "features.1.0.layer_scale").unwrap().params[0].path, "features.1.0.layer_scale");
        assert!(rows.iter().any(|r| r.name == "features.6.1" && r.output_shape == [768, 7, 7]));
    }

    /// The channels-last block (graft's kernels, layer scale folded) equals torchvision's
    /// layout through burn's layers: outputs and the gradients of the input and of every
    /// parameter, on channel counts that are not a multiple of the vector width.
    #[test]
    fn channels_last_block_matches_the_layered_block() {
        use burn::tensor::Distribution;
        let device = Device::flex().autodiff();
        let config = ConvNeXtConfig { depths: [1, 1, 1, 1], dims: [8, 16, 24, 37], resolution: 64, num_classes: 5 };
        let mut block = config.init(&device).stages[3][0].clone();
        let c = 37;
        block.layer_scale = Param::from_tensor(Tensor::random([c, 1, 1], Distribution::Normal(0.0, 1.0), &device));
        let data = Tensor::<4>::random([2, c, 9, 6], Distribution::Normal(0.0, 1.0), &Device::flex()).into_data();
        let upstream = Tensor::<4>::random([2, c, 9, 6], Distribution::Normal(0.0, 1.0), &device);
        let run = |channels_last: bool| {
            let x = Tensor::<4>::from_data(data.clone(), &device).require_grad();
            let out = if channels_last { block.forward_channels_last(x.clone().permute([0, 2, 3, 1])).permute([0, 3, 1, 2]) } else { block.forward(x.clone()) };
            let grads = (out.clone() * upstream.clone()).sum().backward();
            let grad = |t: Tensor<4>| t.grad(&grads).expect("a gradient").reshape([-1]);
            let flat = |t: Tensor<1>| t.grad(&grads).expect("a gradient");
            let grads = vec![
                ("input", grad(x)),
                ("dwconv.weight", grad(block.dwconv.weight.val())),
                ("dwconv.bias", flat(block.dwconv.bias.as_ref().unwrap().val())),
                ("norm.gamma", flat(block.norm.gamma.val())),
                ("pwconv1.weight", block.pwconv1.weight.val().grad(&grads).unwrap().reshape([-1])),
                ("pwconv1.bias", flat(block.pwconv1.bias.as_ref().unwrap().val())),
                ("pwconv2.weight", block.pwconv2.weight.val().grad(&grads).unwrap().reshape([-1])),
                ("layer_scale", block.layer_scale.val().grad(&grads).unwrap().reshape([-1])),
            ];
            (out.inner(), grads)
        };
        let ((expected, expected_grads), (got, got_grads)) = (run(false), run(true));
        let diff: f32 = (got - expected.clone()).abs().max().into_scalar();
        assert!(diff < 1e-4 * expected.abs().max().into_scalar::<f32>().max(1.0), "output differs by {diff}");
        for ((name, got), (_, expected)) in got_grads.into_iter().zip(expected_grads) {
            let scale = expected.clone().abs().max().into_scalar::<f32>().max(1.0);
            let diff: f32 = (got - expected).abs().max().into_scalar();
            assert!(diff < 1e-4 * scale, "{name} gradient differs by {diff} (scale {scale})");
        }
    }

    #[test]
    fn timm_names_the_same_tensors_its_own_way() {
        use crate::zoo::table::{timm_names, NameSet};
        let table = ConvNeXtConfig::tiny().table();
        let timm = timm_names(&table);
        assert_eq!(timm.len(), 182, "timm 1.0.31 convnext_tiny's state dict");
        for (name, shape) in [
            ("stem.0.weight", vec![96, 3, 4, 4]),
            ("stem.1.bias", vec![96]),
            ("stages.0.blocks.2.conv_dw.weight", vec![96, 1, 7, 7]),
            ("stages.0.blocks.0.gamma", vec![96]),
            ("stages.1.downsample.0.weight", vec![96]),
            ("stages.3.downsample.1.weight", vec![768, 384, 2, 2]),
            ("stages.2.blocks.8.mlp.fc1.weight", vec![1536, 384]),
            ("stages.3.blocks.2.mlp.fc2.bias", vec![768]),
            ("head.norm.weight", vec![768]),
            ("head.fc.weight", vec![1000, 768]),
        ] {
            assert_eq!(timm.get(name), Some(&shape), "{name}");
        }
        // A file tells its set by its names: mostly timm's → timm's; otherwise the own.
        let mut dict = crate::zoo::seeded::state_dict_as(&table, NameSet::Timm);
        assert_eq!(table.name_set(&dict), NameSet::Timm);
        dict.tensors.remove("head.fc.weight");
        assert_eq!(table.name_set(&dict), NameSet::Timm, "one tensor short is still a timm file");
        assert_eq!(table.name_set(&crate::zoo::seeded::state_dict(&table)), NameSet::Own);
        assert_eq!(table.name_set(&Default::default()), NameSet::Own);
        // A few of timm's names alone (another architecture's file) do not make a timm file.
        dict.tensors.retain(|name, _| name.starts_with("stem.") || name.starts_with("head."));
        assert_eq!(table.name_set(&dict), NameSet::Own);
    }

    #[test]
    fn freeze_n_counts_features_and_takes_layer_scale() {
        use crate::zoo::layers::FreezeSpec;
        let rows = ConvNeXtConfig::tiny().table().rows();
        // `--freeze 2`: the stem and the first stage of blocks, layer scales included.
        let frozen = FreezeSpec::FirstBlocks(2).frozen_params(&rows).unwrap();
        assert!(frozen.contains("features.0.1.bias") && frozen.contains("features.1.2.layer_scale") && frozen.contains("features.1.2.block.5.weight"));
        assert!(!frozen.iter().any(|p| p.starts_with("features.2.")));
        // The classifier's LayerNorm is head, never frozen.
        let all = FreezeSpec::All.frozen_params(&rows).unwrap();
        assert!(all.contains("features.7.2.layer_scale") && !all.contains("classifier.0.weight"));
    }
}
