//! EfficientNet-Lite's trainable layers run channels-last, for fine-tuning on the CPU.
//!
//! burn's convolutions take `[N, C, H, W]`. Fine-tuning the last blocks that way spent most of
//! each step outside arithmetic: 1×1 convolutions repacked their operands, the depthwise
//! convolution's input gradient ran as a transposed convolution, and ReLU6's backward built
//! two masks (profile in docs/speed.md). Here activations are rows `[N·H·W, C]`:
//! - a 1×1 convolution is one matrix product `[N·H·W, C_in] × [C_in, C_out]`;
//! - the depthwise convolution and bias + ReLU6 are graft's kernels ([`crate::kernels`]),
//!   with their own backward passes;
//! - BatchNorm, in inference mode as graft fine-tunes by default, is folded into the
//!   convolution before it *as a function of γ and β*, so its scale and shift still train and
//!   the running statistics stay as they are.
//!
//! The result equals the layered network (test `channels_last_matches_the_layered_network`,
//! outputs and gradients); [`EfficientNetLite::forward_stages`] takes this path when it
//! applies ([`EfficientNetLite::channels_last_applies`]).

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use super::efficientnet::{EfficientNetLite, MBConvBlock};
use super::fold::bn_scale_shift;
use crate::kernels::{self, depthwise_conv_nhwc, patch_rows, pointwise_rows, Act};

/// A 1×1 convolution followed by its BatchNorm as a matrix `[C_in, C_out]` and a bias `[C_out]`.
fn pointwise(conv: &Conv2d, bn: &BatchNorm) -> (Tensor<2>, Tensor<1>) {
    let [c_out, c_in, _, _] = conv.weight.dims();
    let (scale, shift) = bn_scale_shift(bn);
    let weight = conv.weight.val().reshape([c_out, c_in]) * scale.reshape([c_out, 1]); // [C_out, C_in]
    (weight.transpose(), shift) // [C_in, C_out], [C_out]
}

/// A k×k convolution followed by its BatchNorm as a matrix `[k·k·C_in, C_out]` over
/// [`patch_rows`] (rows in (kh, kw, c) order) and a bias `[C_out]`.
fn patches(conv: &Conv2d, bn: &BatchNorm) -> (Tensor<2>, Tensor<1>) {
    let [c_out, c_in, k, _] = conv.weight.dims();
    let (scale, shift) = bn_scale_shift(bn);
    let weight = conv.weight.val() * scale.reshape([c_out, 1, 1, 1]); // [C_out, C_in, k, k]
    (weight.permute([2, 3, 1, 0]).reshape([k * k * c_in, c_out]), shift) // [k·k·C_in, C_out], [C_out]
}

/// A depthwise convolution followed by its BatchNorm as a kernel `[k, k, C]` and a bias `[C]`.
fn depthwise(conv: &Conv2d, bn: &BatchNorm) -> (Tensor<3>, Tensor<1>) {
    let [c, _, k, _] = conv.weight.dims();
    let (scale, shift) = bn_scale_shift(bn);
    let weight = conv.weight.val().reshape([c, k * k]) * scale.reshape([c, 1]); // [C, k·k]
    (weight.transpose().reshape([k, k, c]), shift)
}

/// An MBConv block's weights laid out for rows, BatchNorm folded in: computed from the block on
/// every training step (so gradients reach the convolutions, γ and β), or once for inference.
#[derive(Debug, Clone)]
pub struct RowsBlock {
    /// 1×1 expansion `[C_in, C_hidden]` and its bias.
    expand: Option<(Tensor<2>, Tensor<1>)>,
    /// Depthwise kernel `[k, k, C_hidden]` and its bias.
    depthwise: (Tensor<3>, Tensor<1>),
    stride: usize,
    /// 1×1 projection `[C_hidden, C_out]` and its bias.
    project: (Tensor<2>, Tensor<1>),
    residual: bool,
}

impl RowsBlock {
    /// The block on a channels-last map: [N, H, W, C_in] → [N, H/s, W/s, C_out].
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let [n, h, w, c_in] = input.dims();
        let rows = input.clone().reshape([n * h * w, c_in]); // [N·H·W, C_in]
        let expanded = match &self.expand {
            Some((weight, bias)) => pointwise_rows(rows, weight.clone(), bias.clone(), Act::Relu6), // [N·H·W, C_hidden]
            None => rows,
        };
        let hidden = expanded.dims()[1];
        let (kernel, bias) = &self.depthwise;
        let activated = depthwise_conv_nhwc(expanded.reshape([n, h, w, hidden]), kernel.clone(), bias.clone(), self.stride, Act::Relu6); // [N, h', w', C_hidden]
        let [_, h_out, w_out, _] = activated.dims();
        let (weight, bias) = &self.project;
        let projected = pointwise_rows(activated.reshape([n * h_out * w_out, hidden]), weight.clone(), bias.clone(), Act::Identity); // [N·h'·w', C_out]
        let c_out = projected.dims()[1];
        let out = projected.reshape([n, h_out, w_out, c_out]);
        if self.residual {
            out + input
        } else {
            out
        }
    }
}

impl MBConvBlock {
    /// This block's weights for the channels-last path (differentiable in every parameter).
    pub fn rows(&self) -> RowsBlock {
        RowsBlock {
            expand: match (&self._expand_conv, &self._bn0) {
                (Some(conv), Some(bn)) => Some(pointwise(conv, bn)),
                _ => None,
            },
            depthwise: depthwise(&self._depthwise_conv, &self._bn1),
            stride: self._depthwise_conv.stride[0],
            project: pointwise(&self._project_conv, &self._bn2),
            residual: self.residual,
        }
    }

    /// The block on a channels-last map: [N, H, W, C_in] → [N, H/s, W/s, C_out].
    pub fn forward_channels_last(&self, input: Tensor<4>) -> Tensor<4> {
        self.rows().forward(input)
    }

    fn batch_norms(&self) -> impl Iterator<Item = &BatchNorm> {
        self._bn0.iter().chain([&self._bn1, &self._bn2])
    }
}

impl EfficientNetLite {
    /// Whether stages `range` can run channels-last: a training (autodiff) flex device, at
    /// least one block in the range, and every BatchNorm in it in inference mode.
    pub fn channels_last_applies(&self, range: &std::ops::Range<usize>, device: &Device) -> bool {
        let head = self.num_stages() - 1;
        let blocks = range.start.max(1)..range.end.min(head);
        device.is_autodiff()
            && kernels::supported(device)
            && !blocks.is_empty()
            && self._blocks[blocks.start - 1..blocks.end - 1].iter().flat_map(MBConvBlock::batch_norms).chain(range.contains(&head).then_some(&self._bn1)).all(|bn| !bn.training.is_enabled())
    }

    /// Stages `range` with the blocks and the head convolution channels-last; the stem (if in
    /// the range) runs as usual. [N, C, H, W] → [N, C', H', W'].
    pub fn forward_stages_channels_last(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        let head = self.num_stages() - 1;
        if range.start == 0 {
            x = self.stem(x);
        }
        let mut x = x.permute([0, 2, 3, 1]); // [N, H, W, C]
        for stage in range.start.max(1)..range.end.min(head) {
            x = self._blocks[stage - 1].forward_channels_last(x);
        }
        if range.contains(&head) {
            x = head_channels_last(x, &pointwise(&self._conv_head, &self._bn1));
        }
        x.permute([0, 3, 1, 2]) // [N, C', H', W']
    }

    /// The network prepared for channels-last inference (BatchNorm folded once).
    pub fn rows(&self) -> RowsLite {
        RowsLite {
            stem: patches(&self._conv_stem, &self._bn0),
            stem_kernel: self._conv_stem.kernel_size[0],
            stem_stride: self._conv_stem.stride[0],
            blocks: self._blocks.iter().map(MBConvBlock::rows).collect(),
            head: pointwise(&self._conv_head, &self._bn1),
        }
    }
}

/// The head convolution (1×1, folded BatchNorm, ReLU6) on a channels-last map:
/// [N, h, w, C] → [N, h, w, 1280].
fn head_channels_last(x: Tensor<4>, (weight, bias): &(Tensor<2>, Tensor<1>)) -> Tensor<4> {
    let [n, h, w, c] = x.dims();
    let c_out = weight.dims()[1];
    pointwise_rows(x.reshape([n * h * w, c]), weight.clone(), bias.clone(), Act::Relu6).reshape([n, h, w, c_out])
}

/// EfficientNet-Lite prepared for channels-last inference; see [`EfficientNetLite::rows`].
#[derive(Debug, Clone)]
pub struct RowsLite {
    /// The stem convolution over patch rows `[k·k·3, 32]` and its bias.
    stem: (Tensor<2>, Tensor<1>),
    stem_kernel: usize,
    stem_stride: usize,
    blocks: Vec<RowsBlock>,
    head: (Tensor<2>, Tensor<1>),
}

impl RowsLite {
    /// The stem (convolution, folded BatchNorm, ReLU6) as one matrix product over the images'
    /// patch rows, its output channels-last: [N, 3, H, W] → [N, H/2, W/2, 32]. (As a
    /// convolution on `[N, C, H, W]` followed by a permute, the layout change alone was 9 % of
    /// a forward pass.)
    pub fn stem(&self, images: Tensor<4>) -> Tensor<4> {
        let [n, _, h, w] = images.dims();
        let (weight, bias) = &self.stem;
        let rows = patch_rows(images, self.stem_kernel, self.stem_stride); // [N·H'·W', k·k·3]
        let out = pointwise_rows(rows, weight.clone(), bias.clone(), Act::Relu6); // [N·H'·W', 32]
        let c_out = out.dims()[1];
        out.reshape([n, h.div_ceil(self.stem_stride), w.div_ceil(self.stem_stride), c_out])
    }

    /// Stages `range` without the stem (`range.start ≥ 1`) on a channels-last map:
    /// [N, H, W, C] → [N, H', W', C'].
    pub fn forward_stages(&self, mut x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4> {
        let head = self.blocks.len() + 1;
        debug_assert!(range.start >= 1, "the stem is not channels-last");
        for stage in range.start..range.end.min(head) {
            x = self.blocks[stage - 1].forward(x);
        }
        if range.contains(&head) {
            x = head_channels_last(x, &self.head);
        }
        x
    }
}

/// [N, H, W, C] → [N, C]: mean over the pixels of each image.
pub fn global_avg_pool_channels_last(x: Tensor<4>) -> Tensor<2> {
    let [n, h, w, c] = x.dims();
    x.reshape([n, h * w, c]).mean_dim(1).reshape([n, c])
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ParamGroup};
    use burn::tensor::Distribution;

    use super::super::efficientnet::EfficientNetLiteConfig;
    use super::*;

    /// The channels-last path gives the layered network's output and parameter gradients
    /// (BatchNorm in inference mode, randomised statistics), over the last blocks (stride 1
    /// and 2, with and without residual) and the head.
    ///
    /// Gradients are compared by relative Frobenius norm, not element by element: the two
    /// paths round differently, so now and then one of the ~10⁵ ReLU6 inputs lands on the
    /// other side of 0 or 6 and that one pixel's gradient is cut in one path and not the
    /// other. Measured over 60 random draws: 58 agree to < 1e-6, 2 had such a flip, which
    /// moves single elements by up to 1.4 % of the largest but the whole gradient by
    /// 0.25–0.35 %. A real mistake moves it much further: cutting the ReLU6 mask at 5.5
    /// instead of 6 in the fused kernel's backward moves the expand gradient by 8.7 %.
    #[test]
    fn channels_last_matches_the_layered_network() {
        let device = Device::flex().autodiff();
        let mut net = EfficientNetLiteConfig::lite(0).unwrap().init(&device);
        for block in &mut net._blocks {
            for bn in [block._bn0.as_mut(), Some(&mut block._bn1), Some(&mut block._bn2)].into_iter().flatten() {
                super::super::efficientnet::tests::randomize_bn(bn, &device);
            }
        }
        super::super::efficientnet::tests::randomize_bn(&mut net._bn1, &device);
        let net = net.freeze_group(ParamGroup::from_regex(r"\.training$").unwrap());
        // Stages 11.. of Lite0: block 10 (112 → 112, residual), block 11 (stride 2, 112 → 192),
        // blocks 12–15, and the head convolution.
        let range = 11..net.num_stages();
        assert!(net.channels_last_applies(&range, &device));
        let x = Tensor::<4>::random([2, 112, 14, 14], Distribution::Uniform(0.0, 3.0), &device);
        let layered = net.forward_stages(x.clone(), range.clone()); // takes the channels-last path
        let reference = {
            let mut y = x.clone();
            for stage in range.clone() {
                y = if stage == net.num_stages() - 1 { net.head(y) } else { net._blocks[stage - 1].forward(y) };
            }
            y
        };
        assert_eq!(layered.dims(), reference.dims());
        let diff = (layered.clone() - reference.clone()).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-3, "outputs differ by {diff}");
        let upstream = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads_fast = (layered * upstream.clone()).sum().backward();
        let grads_ref = (reference * upstream).sum().backward();
        let block = &net._blocks[11];
        for (name, param) in [
            ("expand", block._expand_conv.as_ref().unwrap().weight.val()),
            ("depthwise", block._depthwise_conv.weight.val()),
            ("project", block._project_conv.weight.val()),
            ("head", net._conv_head.weight.val()),
        ] {
            let (fast, reference) = (param.grad(&grads_fast).unwrap(), param.grad(&grads_ref).unwrap());
            let relative = relative_difference(fast, reference);
            assert!(relative < 2e-2, "{name} weight gradient differs by {relative} (relative norm)");
        }
        for (name, param) in [("bn1 gamma", block._bn1.gamma.val()), ("bn2 beta", block._bn2.beta.val())] {
            let (fast, reference) = (param.grad(&grads_fast).unwrap(), param.grad(&grads_ref).unwrap());
            let relative = relative_difference(fast, reference);
            assert!(relative < 2e-2, "{name} gradient differs by {relative} (relative norm)");
        }
    }

    /// ‖a − b‖ / ‖b‖ over all elements.
    fn relative_difference<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let norm = |t: Tensor<D>| t.powf_scalar(2.0).sum().sqrt().into_scalar::<f32>();
        norm(a - b.clone()) / norm(b).max(1e-12)
    }
}
