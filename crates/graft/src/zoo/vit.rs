//! Vision Transformers (Dosovitskiy et al., 2021): torchvision's ViT-B/16 and ViT-B/32 under
//! torchvision's parameter names, and timm's `vit_base_patch16_224` and
//! `vit_small_patch16_224` under timm's, so either file loads without renaming.
//!
//! The network: a `P×P/P` convolution cuts the image into patches (`conv_proj`, timm's
//! `patch_embed.proj`), a learned class token is put before them (`class_token`, `cls_token`)
//! and a learned position embedding added (`encoder.pos_embedding`, `pos_embed`); then L
//! pre-norm encoder layers, each `x + attention(ln_1(x))` then `x + mlp(ln_2(x))` (multi-head
//! self-attention with one fused q/k/v projection, torchvision's `self_attention.in_proj_*`,
//! timm's `attn.qkv`; an MLP of two linear layers with exact GELU between them); a final
//! LayerNorm (`encoder.ln`, `norm`) and the classifier (`heads.head`, `head`) on the class token.
//! Every LayerNorm has eps 1e-6; dropout is off at inference.
//!
//! Stages: 0 the patch embedding (class token and position embedding included), 1…L the
//! encoder layers, L+1 the final LayerNorm. Between stages the tokens travel as a map
//! `[N, D, 1, T]` (T = 1 + patches, the class token first), so probes and `extract` see the
//! width D at every cut (and average over the tokens where they pool). The last stage keeps
//! only the class token, `[N, D, 1, 1]`: the trunk's output, what a new head sees, is the
//! final LayerNorm'd class token, as torchvision's and timm's classifiers see it. Global
//! average pooling and flattening of that 1×1 map are the same vector, so `--head-pool` makes
//! no difference for a ViT.
//!
//! burn derives parameter paths from field names, so the network keeps readable fields
//! (`layers.3.in_proj`) and the layer table maps them to the file's names
//! ([`VitConfig::table`]).

use std::ops::Range;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::backbone::{Backbone, BackboneNet};
use crate::kernels::{add_activation, linear_rows, multi_head_attention, Act};
use crate::export::onnx::{int, ints, OnnxGraph};
use super::load::WeightSource;
use super::table::{Builder, Convention, Table};
use super::{InputCfg, ModelSpec, Trunk};
use crate::data::image::{Crop, Interpolation};
use crate::Result;

/// timm's `pretrained_cfg` for its ImageNet ViTs (`vit_small_patch16_224.augreg_in21k_ft_in1k`,
/// `vit_base_patch16_224.augreg2_in21k_ft_in1k`): mean and std 0.5, `crop_pct` 0.9 (shorter
/// side resized to ⌊224 / 0.9⌋ = 248 with PIL bicubic, centre crop 224).
pub const TIMM_VIT_INPUT: InputCfg = InputCfg { crop: Crop::ResizeCentre { shorter: 248 }, interpolation: Interpolation::Bicubic, mean: [127.5; 3], std: [127.5; 3] };

/// The registered ViTs, for the user's own weights (`--weights FILE`): torchvision's
/// (`ViT_B_16_Weights.IMAGENET1K_V1` eval transforms: resize 256 bilinear, centre crop 224,
/// ImageNet mean/std) and timm's.
pub const MODELS: &[ModelSpec] = &[
    super::user_weights("vit_b_16", || VitConfig::b_16().into()),
    super::user_weights("vit_b_32", || VitConfig::b_32().into()),
    ModelSpec { input: TIMM_VIT_INPUT, ..super::user_weights("vit_base_patch16_224", || VitConfig::timm_base_patch16().into()) },
    ModelSpec { input: TIMM_VIT_INPUT, ..super::user_weights("vit_small_patch16_224", || VitConfig::timm_small_patch16().into()) },
];

const LN_EPS: f64 = 1e-6;

/// Whose parameter names a ViT's weights file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitNames {
    /// torchvision's `VisionTransformer`: `conv_proj`, `encoder.layers.encoder_layer_N.…`.
    Torchvision,
    /// timm's `VisionTransformer`: `patch_embed.proj`, `blocks.N.…`.
    Timm,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    /// Side of a patch in pixels.
    pub patch: usize,
    /// Token width D.
    pub hidden: usize,
    /// Encoder layers L.
    pub depth: usize,
    pub heads: usize,
    /// Width of each MLP's hidden layer.
    pub mlp: usize,
    /// Native input side; 224 for all of these.
    pub resolution: usize,
    pub num_classes: usize,
    pub names: VitNames,
}

impl VitConfig {
    pub fn b_16() -> Self {
        Self { patch: 16, hidden: 768, depth: 12, heads: 12, mlp: 3072, resolution: 224, num_classes: 1000, names: VitNames::Torchvision }
    }
    pub fn b_32() -> Self {
        Self { patch: 32, ..Self::b_16() }
    }
    pub fn timm_base_patch16() -> Self {
        Self { names: VitNames::Timm, ..Self::b_16() }
    }
    pub fn timm_small_patch16() -> Self {
        Self { hidden: 384, heads: 6, mlp: 1536, ..Self::timm_base_patch16() }
    }

    /// Patches per side.
    fn grid(&self) -> usize {
        self.resolution / self.patch
    }

    /// Tokens: the class token and one per patch.
    fn tokens(&self) -> usize {
        1 + self.grid() * self.grid()
    }

    pub fn init(&self, device: &Device) -> Vit {
        Table::build(device, |b| self.build(b)).0
    }

    /// The layer table under the file's names (torchvision's or timm's).
    pub fn table(&self) -> Table {
        let table = Table::build(&Default::default(), |b| self.build(b)).1;
        table.renamed(Convention::Torch, |leaf| self.file_name(&leaf.module))
    }

    /// burn's module path → the name in a torchvision or timm state dict.
    fn file_name(&self, module: &str) -> String {
        let torch = self.names == VitNames::Torchvision;
        if let Some(rest) = module.strip_prefix("layers.") {
            let (i, leaf) = rest.split_once('.').unwrap_or((rest, ""));
            let leaf = match (torch, leaf) {
                (true, "in_proj") => "self_attention.in_proj",
                (true, "out_proj") => "self_attention.out_proj",
                (true, "mlp_0") => "mlp.0",
                (true, "mlp_3") => "mlp.3",
                (true, other) => other,
                (false, "ln_1") => "norm1",
                (false, "in_proj") => "attn.qkv",
                (false, "out_proj") => "attn.proj",
                (false, "ln_2") => "norm2",
                (false, "mlp_0") => "mlp.fc1",
                (false, "mlp_3") => "mlp.fc2",
                (false, other) => other,
            };
            return if torch { format!("encoder.layers.encoder_layer_{i}.{leaf}") } else { format!("blocks.{i}.{leaf}") };
        }
        let name = match (torch, module) {
            (true, "pos_embedding") => "encoder.pos_embedding",
            (true, "ln") => "encoder.ln",
            (true, "head") => "heads.head",
            (false, "conv_proj") => "patch_embed.proj",
            (false, "class_token") => "cls_token",
            (false, "pos_embedding") => "pos_embed",
            (false, "ln") => "norm",
            (_, other) => other,
        };
        name.to_string()
    }

    fn stage_name(&self, stage: usize) -> String {
        match (self.names, stage) {
            (VitNames::Torchvision, 0) => "conv_proj".into(),
            (VitNames::Torchvision, s) if s <= self.depth => format!("encoder.layers.encoder_layer_{}", s - 1),
            (VitNames::Torchvision, _) => "encoder.ln".into(),
            (VitNames::Timm, 0) => "patch_embed".into(),
            (VitNames::Timm, s) if s <= self.depth => format!("blocks.{}", s - 1),
            (VitNames::Timm, _) => "norm".into(),
        }
    }

    fn build(&self, b: &mut Builder) -> Vit {
        let (d, g, t) = (self.hidden, self.grid(), self.tokens());
        b.stage(Some(0));
        b.block(Some(self.stage_name(0)));
        let conv = Conv2dConfig::new([3, d], [self.patch, self.patch]).with_stride([self.patch, self.patch]);
        let conv_proj = b.conv("conv_proj", conv, [d, g, g]);
        let class_token = b.embedding("class_token", [1, 1, d], vec![t, d]);
        let pos_embedding = b.embedding("pos_embedding", [1, t, d], vec![t, d]);
        let mut layers = Vec::new();
        for i in 0..self.depth {
            b.stage(Some(i + 1));
            b.block(Some(self.stage_name(i + 1)));
            let mut all = b.pp("layers");
            let mut p = all.pp(i);
            let ln = |p: &mut Builder, name: &str| p.layer_norm(name, LayerNormConfig::new(d).with_epsilon(LN_EPS), vec![t, d], false);
            let ln_1 = ln(&mut p, "ln_1");
            let in_proj = match self.names {
                VitNames::Torchvision => p.in_proj("in_proj", LinearConfig::new(d, 3 * d), vec![t, 3 * d]),
                VitNames::Timm => p.linear("in_proj", LinearConfig::new(d, 3 * d), vec![t, 3 * d]),
            };
            let out_proj = p.linear("out_proj", LinearConfig::new(d, d), vec![t, d]);
            let ln_2 = ln(&mut p, "ln_2");
            let mlp_0 = p.linear("mlp_0", LinearConfig::new(d, self.mlp), vec![t, self.mlp]);
            let mlp_3 = p.linear("mlp_3", LinearConfig::new(self.mlp, d), vec![t, d]);
            layers.push(EncoderBlock { ln_1, in_proj, out_proj, ln_2, mlp_0, mlp_3, heads: self.heads });
        }
        b.stage(Some(self.depth + 1));
        b.block(Some(self.stage_name(self.depth + 1)));
        let ln = b.layer_norm("ln", LayerNormConfig::new(d).with_epsilon(LN_EPS), vec![t, d], false);
        b.block(None);
        b.stage(None);
        let head = b.classifier("head", LinearConfig::new(d, self.num_classes));
        Vit { conv_proj, class_token, pos_embedding, layers, ln, head: Some(head), config: self.clone() }
    }
}

/// One pre-norm encoder layer (torchvision's `EncoderBlock`, timm's `Block`).
#[derive(Module, Debug)]
pub struct EncoderBlock {
    pub ln_1: LayerNorm,
    /// The fused q, k, v projection: [.., D] → [.., 3D], q first.
    pub in_proj: Linear,
    pub out_proj: Linear,
    pub ln_2: LayerNorm,
    pub mlp_0: Linear,
    pub mlp_3: Linear,
    #[module(skip)]
    pub heads: usize,
}

impl EncoderBlock {
    /// [N, T, D] → [N, T, D].
    ///
    /// The tokens of the whole batch are one matrix of rows for the projections (one matrix
    /// product each, bias and GELU fused on the CPU: [`linear_rows`]) and for attention
    /// ([`multi_head_attention`]: on the CPU at inference q, k and v are read in place).
    /// (burn's fused `attention` measured slower here.)
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [n, t, d] = x.dims();
        let x = x.reshape([n * t, d]); // [N·T, D]
        let qkv = linear_rows(&self.in_proj, self.ln_1.forward(x.clone()), Act::Identity); // [N·T, 3D]
        let attended = multi_head_attention(qkv, n, self.heads); // [N·T, D]
        let x = add_activation(linear_rows(&self.out_proj, attended, Act::Identity), x, Act::Identity); // [N·T, D]
        let hidden = linear_rows(&self.mlp_0, self.ln_2.forward(x.clone()), Act::Gelu); // [N·T, M]
        let y = linear_rows(&self.mlp_3, hidden, Act::Identity); // [N·T, D]
        add_activation(y, x, Act::Identity).reshape([n, t, d])
    }
}

/// Tokens [N, T, D] → the map between stages, [N, D, 1, T].
fn to_map(tokens: Tensor<3>) -> Tensor<4> {
    tokens.swap_dims(1, 2).unsqueeze_dim(2)
}

/// The map between stages [N, D, 1, T] → tokens [N, T, D].
fn to_tokens(map: Tensor<4>) -> Tensor<3> {
    let [n, d, h, w] = map.dims();
    map.reshape([n, d, h * w]).swap_dims(1, 2)
}

/// The whole network, ImageNet classifier included.
#[derive(Module, Debug)]
pub struct Vit {
    pub conv_proj: Conv2d,
    /// [1, 1, D].
    pub class_token: Param<Tensor<3>>,
    /// [1, T, D].
    pub pos_embedding: Param<Tensor<3>>,
    pub layers: Vec<EncoderBlock>,
    /// The final LayerNorm.
    pub ln: LayerNorm,
    /// The classifier; `None` once cut off for a new head.
    pub head: Option<Linear>,
    #[module(skip)]
    pub config: VitConfig,
}

impl Vit {
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        self.config.table().load(self, w)
    }

    /// Patches, class token and position embedding: images [N, 3, H, W] → tokens [N, T, D].
    fn embed(&self, images: Tensor<4>) -> Tensor<3> {
        let x = self.conv_proj.forward(images); // [N, D, g, g]
        let [n, d, gh, gw] = x.dims();
        let patches = x.reshape([n, d, gh * gw]).swap_dims(1, 2); // [N, g², D]
        let class = self.class_token.val().expand([n, 1, d]); // [N, 1, D]
        Tensor::cat(vec![class, patches], 1) + self.pos_embedding.val() // [N, T, D]
    }

    /// Runs stages `range` (0 the patch embedding, 1…L the encoder layers, L+1 the final
    /// LayerNorm on the class token); see the module docs for the maps between stages.
    pub fn forward_stages(&self, x: Tensor<4>, range: Range<usize>) -> Tensor<4> {
        let last = self.layers.len() + 1;
        let (start, end) = (range.start, range.end.min(last + 1));
        if start >= end {
            return x;
        }
        let mut tokens = if start == 0 { self.embed(x) } else { to_tokens(x) }; // [N, T, D]
        for k in start.max(1)..end.min(last) {
            tokens = self.layers[k - 1].forward(tokens);
        }
        if end <= last {
            return to_map(tokens); // [N, D, 1, T]
        }
        let [n, _, d] = tokens.dims();
        let class = self.ln.forward(tokens.slice([0..n, 0..1, 0..d])); // [N, 1, D]
        class.reshape([n, d, 1, 1])
    }

    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let features = BackboneNet::features(self, images); // [N, D]
        self.classify(features.clone()).unwrap_or(features)
    }
}

impl Backbone for VitConfig {
    fn init_trunk(&self, device: &Device) -> Trunk {
        self.init(device).into()
    }
    fn table(&self) -> Table {
        VitConfig::table(self)
    }
    fn resolution(&self) -> usize {
        self.resolution
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn num_stages(&self) -> usize {
        self.depth + 2
    }
    fn stage_name(&self, stage: usize) -> String {
        VitConfig::stage_name(self, stage)
    }
    /// Tokens as a `[D, 1, T]` map after the embedding and each encoder layer; the class
    /// token alone, `[D, 1, 1]`, after the final LayerNorm.
    fn stage_shape(&self, stage: usize) -> [usize; 3] {
        if stage > self.depth {
            [self.hidden, 1, 1]
        } else {
            [self.hidden, 1, self.tokens()]
        }
    }
}

impl BackboneNet for Vit {
    /// Its layers run the whole batch on every thread (graft's kernels).
    fn split_batch_for_inference(&self) -> bool {
        false
    }
    fn num_stages(&self) -> usize {
        self.layers.len() + 2
    }
    fn forward_stages(&self, x: Tensor<4>, range: Range<usize>) -> Tensor<4> {
        Vit::forward_stages(self, x, range)
    }
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        Vit::forward(self, images)
    }
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.head.as_ref().map(|head| head.forward(pooled))
    }
    fn drop_classifier(&mut self) {
        self.head = None;
    }
    /// The trunk as ONNX (opset 17): the patch convolution, the class token `Expand`ed to the
    /// batch (its size read with `Shape`), `Concat`, the position embedding `Add`ed; in each
    /// encoder layer `LayerNormalization`, the q/k/v `MatMul`, `Reshape`/`Transpose` to heads,
    /// `Gather` of q, k and v, `MatMul`, `Mul` by 1/√d, `Softmax`, `MatMul`, back to tokens,
    /// the output projection and the MLP with exact GELU (`Erf`); then the class token `Slice`d
    /// out, the final LayerNorm, and `Reshape` to `[N, D, 1, 1]`.
    fn to_onnx(&self, g: &mut OnnxGraph, input: &str) -> Result<String> {
        let c = &self.config;
        let (d, t, h) = (c.hidden as i64, c.tokens() as i64, c.heads as i64);
        let hd = d / h;
        let dims = |g: &mut OnnxGraph, hint: &str, v: &[i64]| g.initializer_i64(hint, &[v.len()], v);
        let norm = |g: &mut OnnxGraph, norm: &LayerNorm, x: &str, name: &str| -> Result<String> {
            let beta = norm.beta.as_ref().map(|b| b.val()).unwrap_or_else(|| norm.gamma.val().zeros_like());
            g.layer_norm(norm.gamma.val(), beta, LN_EPS, x, name)
        };
        let x = g.conv(&self.conv_proj, None, input, "conv_proj")?; // [N, D, g, g]
        let flat = dims(g, "shape.patches", &[0, d, -1]);
        let x = g.node("Reshape", &[&x, &flat], vec![], "patches.flat"); // [N, D, g²]
        let patches = g.node("Transpose", &[&x], vec![ints("perm", &[0, 2, 1])], "patches"); // [N, g², D]
        let input_shape = g.node("Shape", &[input], vec![], "input.shape");
        let (zero, one) = (dims(g, "zero", &[0]), dims(g, "one", &[1]));
        let batch = g.node("Slice", &[&input_shape, &zero, &one], vec![], "batch"); // [N]
        let rest = dims(g, "class_token.dims", &[1, d]);
        let class_shape = g.node("Concat", &[&batch, &rest], vec![int("axis", 0)], "class_token.shape"); // [N, 1, D]
        let class = g.parameter("class_token", self.class_token.val())?;
        let class = g.node("Expand", &[&class, &class_shape], vec![], "class_token.batch");
        let x = g.node("Concat", &[&class, &patches], vec![int("axis", 1)], "tokens"); // [N, T, D]
        let pos = g.parameter("pos_embedding", self.pos_embedding.val())?;
        let mut x = g.add(&x, &pos);
        let scale = g.initializer("attention.scale", &[], &[(1.0 / (hd as f64).sqrt()) as f32]);
        let heads_shape = dims(g, "shape.qkv", &[0, t, 3, h, hd]);
        let tokens_shape = dims(g, "shape.tokens", &[0, t, d]);
        let index: Vec<String> = (0..3).map(|k| g.initializer_i64("qkv.index", &[], &[k])).collect();
        for (i, block) in self.layers.iter().enumerate() {
            let p = format!("layers.{i}");
            let y = norm(g, &block.ln_1, &x, &format!("{p}.ln_1"))?;
            let qkv = g.linear_nd(&block.in_proj, &y, &format!("{p}.in_proj"))?; // [N, T, 3D]
            let qkv = g.node("Reshape", &[&qkv, &heads_shape], vec![], &format!("{p}.qkv")); // [N, T, 3, H, hd]
            let qkv = g.node("Transpose", &[&qkv], vec![ints("perm", &[2, 0, 3, 1, 4])], &format!("{p}.qkv.heads")); // [3, N, H, T, hd]
            let [q, k, v] = [(0, "q"), (1, "k"), (2, "v")].map(|(j, part)| g.node("Gather", &[&qkv, &index[j]], vec![int("axis", 0)], &format!("{p}.{part}"))); // [N, H, T, hd]
            let kt = g.node("Transpose", &[&k], vec![ints("perm", &[0, 1, 3, 2])], &format!("{p}.kT"));
            let scores = g.node("MatMul", &[&q, &kt], vec![], &format!("{p}.scores"));
            let scores = g.node("Mul", &[&scores, &scale], vec![], &format!("{p}.scaled"));
            let weights = g.node("Softmax", &[&scores], vec![int("axis", -1)], &format!("{p}.attention")); // [N, H, T, T]
            let y = g.node("MatMul", &[&weights, &v], vec![], &format!("{p}.attended")); // [N, H, T, hd]
            let y = g.node("Transpose", &[&y], vec![ints("perm", &[0, 2, 1, 3])], &format!("{p}.attended.tokens"));
            let y = g.node("Reshape", &[&y, &tokens_shape], vec![], &format!("{p}.merged")); // [N, T, D]
            let y = g.linear_nd(&block.out_proj, &y, &format!("{p}.out_proj"))?;
            x = g.add(&y, &x);
            let y = norm(g, &block.ln_2, &x, &format!("{p}.ln_2"))?;
            let y = g.linear_nd(&block.mlp_0, &y, &format!("{p}.mlp_0"))?;
            let y = g.gelu(&y);
            let y = g.linear_nd(&block.mlp_3, &y, &format!("{p}.mlp_3"))?;
            x = g.add(&y, &x);
        }
        let axis = dims(g, "axis.tokens", &[1]);
        let class = g.node("Slice", &[&x, &zero, &one, &axis], vec![], "class"); // [N, 1, D]
        let class = norm(g, &self.ln, &class, "ln")?;
        let map = dims(g, "shape.class", &[0, d, 1, 1]);
        Ok(g.node("Reshape", &[&class, &map], vec![], "class.map")) // [N, D, 1, 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::layers::summarize;

    #[test]
    fn parameter_counts_and_names_match_torchvision_and_timm() {
        // sum(p.numel() for p in torchvision.models.NAME().parameters()), torchvision 0.29.2;
        // timm 1.0.31 `timm.create_model(NAME)`.
        let total = |c: &VitConfig| summarize(&c.table().rows(), &Default::default()).total_params;
        assert_eq!(total(&VitConfig::b_16()), 86_567_656);
        assert_eq!(total(&VitConfig::b_32()), 88_224_232);
        assert_eq!(total(&VitConfig::timm_base_patch16()), 86_567_656);
        assert_eq!(total(&VitConfig::timm_small_patch16()), 22_050_664);
        let table = VitConfig::b_16().table();
        let files: Vec<String> = table.leaves.iter().flat_map(|l| table.tensors(l)).map(|t| t.file).take(12).collect();
        assert_eq!(
            files,
            [
                "conv_proj.weight",
                "conv_proj.bias",
                "class_token",
                "encoder.pos_embedding",
                "encoder.layers.encoder_layer_0.ln_1.weight",
                "encoder.layers.encoder_layer_0.ln_1.bias",
                "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                "encoder.layers.encoder_layer_0.self_attention.in_proj_bias",
                "encoder.layers.encoder_layer_0.self_attention.out_proj.weight",
                "encoder.layers.encoder_layer_0.self_attention.out_proj.bias",
                "encoder.layers.encoder_layer_0.ln_2.weight",
                "encoder.layers.encoder_layer_0.ln_2.bias",
            ]
        );
        let in_proj = table.leaves.iter().flat_map(|l| table.tensors(l)).find(|t| t.file.ends_with("encoder_layer_11.self_attention.in_proj_weight")).unwrap();
        assert_eq!(in_proj.file_shape(), [2304, 768]);
        let timm = VitConfig::timm_small_patch16().table();
        let files: Vec<String> = timm.leaves.iter().flat_map(|l| timm.tensors(l)).map(|t| t.file).collect();
        for name in ["patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.11.attn.proj.bias", "blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias", "norm.weight", "head.weight"] {
            assert!(files.iter().any(|f| f == name), "timm names: {name} missing");
        }
        let last = files.iter().rev().take(2).cloned().collect::<Vec<_>>();
        assert_eq!(last, ["head.bias", "head.weight"]);
    }

    #[test]
    fn stages_freeze_blocks_and_the_class_token_output() {
        use crate::zoo::layers::FreezeSpec;
        let cfg = VitConfig::b_32();
        let b: &dyn Backbone = &cfg;
        assert_eq!(b.num_stages(), 14);
        assert_eq!(b.stage_names()[..2], ["conv_proj".to_string(), "encoder.layers.encoder_layer_0".to_string()]);
        assert_eq!(b.stage_name(13), "encoder.ln");
        assert_eq!(b.stage_shape(12), [768, 1, 50]);
        assert_eq!(b.stage_shape(13), [768, 1, 1]);
        // `--freeze 2`: the patch embedding (class token, position embedding) and layer 0.
        let rows = cfg.table().rows();
        let frozen = FreezeSpec::FirstBlocks(2).frozen_params(&rows).unwrap();
        assert!(frozen.contains("class_token") && frozen.contains("encoder.pos_embedding") && frozen.contains("encoder.layers.encoder_layer_0.mlp.3.bias"));
        assert!(!frozen.iter().any(|p| p.contains("encoder_layer_1.")));
        let all = FreezeSpec::All.frozen_params(&rows).unwrap();
        assert!(all.contains("encoder.ln.weight") && !all.contains("heads.head.weight"));

        // Stages compose: any split of the stages gives the whole forward; the trunk's output
        // is the class token after the final LayerNorm.
        let device = Device::default();
        let small = VitConfig { resolution: 64, depth: 2, hidden: 32, heads: 4, mlp: 64, num_classes: 5, ..VitConfig::b_32() };
        let net = small.init(&device);
        let x = Tensor::<4>::random([2, 3, 64, 64], burn::tensor::Distribution::Uniform(-1.0, 1.0), &device);
        let whole = net.forward_stages(x.clone(), 0..4);
        assert_eq!(whole.dims(), [2, 32, 1, 1]);
        let split = net.forward_stages(net.forward_stages(net.forward_stages(x.clone(), 0..1), 1..2), 2..4);
        assert_eq!(net.forward_stages(x.clone(), 0..2).dims(), [2, 32, 1, 5]);
        let diff = (whole.clone() - split).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "split stages differ by {diff}");
        let features = BackboneNet::features(&net, x.clone());
        let diff = (features - whole.reshape([2, 32])).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "pooled features are not the class token: {diff}");
        assert_eq!(net.forward(x).dims(), [2, 5]);
    }
}
