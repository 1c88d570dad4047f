//! graft's own tensor operations, added to burn through its backend-extension mechanism:
//! a channels-last depthwise convolution and a 1×1 convolution on rows, each with bias and
//! (optional) ReLU6 fused in and a handwritten backward pass.
//!
//! Why: fine-tuning the tail of a MobileNet-style network on burn-flex spent most of a step in
//! layout shuffles around the 1×1 convolutions, in the depthwise convolution's backward
//! (a transposed convolution), and in ReLU6's backward (two masks). Kept channels-last
//! (`[N·H·W, C]` rows), a 1×1 convolution is one large matrix product, and these two kernels
//! cover the rest. See [`crate::zoo::efficientnet`]'s channels-last training path.
//!
//! The kernels exist for the flex (CPU) backend and its autodiff wrapper only;
//! [`supported`] says whether a device can use them, and callers fall back to burn's own
//! operations elsewhere (CUDA).

mod autodiff;
mod cpu;

pub use cpu::{SIMD_ENV, Simd, simd};

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::{Device, Tensor};

/// The shape of a depthwise convolution on `[N, H, W, C]` maps, with TensorFlow's SAME
/// padding (`pad_top`/`pad_left` before; the rest after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseGeometry {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl DepthwiseGeometry {
    /// SAME padding as TensorFlow computes it: output `⌈in/stride⌉`, total padding
    /// `max((out−1)·stride + k − in, 0)`, the smaller half before.
    pub fn same(batch: usize, [in_h, in_w]: [usize; 2], channels: usize, kernel: usize, stride: usize) -> Self {
        let (out_h, out_w) = (in_h.div_ceil(stride), in_w.div_ceil(stride));
        let pad = |out: usize, input: usize| ((out - 1) * stride + kernel).saturating_sub(input) / 2;
        Self { batch, channels, in_h, in_w, kernel, stride, out_h, out_w, pad_top: pad(out_h, in_h), pad_left: pad(out_w, in_w) }
    }
}

/// The operations graft adds to burn's backends.
#[backend_extension(Flex, Autodiff)]
pub trait GraftOps: Backend {
    /// Depthwise convolution, channels-last, with bias and ReLU6: x `[N, H, W, C]`, weight
    /// `[k, k, C]`, bias `[C]` → `relu6(conv(x) + bias)`, `[N, H_out, W_out, C]`.
    fn depthwise_nhwc(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self>;
    /// Gradient of the (linear) depthwise convolution with respect to its input.
    fn depthwise_nhwc_input_grad(grad: FloatTensor<Self>, weight: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self>;
    /// Gradient of the (linear) depthwise convolution with respect to its weight.
    fn depthwise_nhwc_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self>;
    /// The k×k patches of x `[N, C, H, W]` (SAME padding, zeros outside) as rows
    /// `[N·H'·W', k·k·C]`, taps in (kh, kw, c) order: a k×k convolution is then one matrix
    /// product with its weight laid out `[k·k·C, C_out]`, its output channels-last. For
    /// inference: no gradient flows back through it.
    fn patch_rows(x: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self>;
    /// A 1×1 convolution on rows: x `[R, C_in]` × weight `[C_in, C_out]` + bias `[C_out]`,
    /// then ReLU6 if `relu6`. The product accumulates into the bias (no zeroed buffer, no
    /// separate bias pass).
    fn pointwise_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, relu6: bool) -> FloatTensor<Self>;
    /// The gradient through ReLU6 given its output: `grad` where `0 < output < 6`, else 0.
    fn relu6_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether tensors on `device` can use graft's kernels (the flex CPU backend, with or
/// without autodiff).
pub fn supported(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// Depthwise convolution on channels-last maps with bias and ReLU6: x `[N, H, W, C]`, weight
/// `[k, k, C]`, bias `[C]`, SAME padding → `[N, ⌈H/s⌉, ⌈W/s⌉, C]`. The device must be
/// [`supported`].
pub fn depthwise_conv_nhwc_relu6(x: Tensor<4>, weight: Tensor<3>, bias: Tensor<1>, stride: usize) -> Tensor<4> {
    let [n, h, w, c] = x.dims();
    let [k, k2, cw] = weight.dims();
    assert!(k == k2 && cw == c && bias.dims() == [c], "depthwise weight [{k}, {k2}, {cw}] / bias {:?} do not fit a map with {c} channels", bias.dims());
    assert!(k <= 7, "depthwise_conv_nhwc_relu6 takes kernels up to 7×7, not {k}×{k}");
    let geometry = DepthwiseGeometry::same(n, [h, w], c, k, stride);
    Tensor::from_dispatch(<Dispatch as GraftOps>::depthwise_nhwc(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), geometry))
}

/// The k×k patches of images `[N, C, H, W]` with SAME padding as rows `[N·H'·W', k·k·C]`
/// ([`GraftOps::patch_rows`]); the device must be [`supported`]. No gradient flows through it.
pub fn patch_rows(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    let geometry = DepthwiseGeometry::same(n, [h, w], c, kernel, stride);
    Tensor::from_dispatch(<Dispatch as GraftOps>::patch_rows(x.into_dispatch(), geometry))
}

/// A 1×1 convolution on rows: `x · weight + bias` (`[R, C_in]`, `[C_in, C_out]`, `[C_out]`),
/// then ReLU6 if `relu6`. The device must be [`supported`].
pub fn pointwise_rows(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>, relu6: bool) -> Tensor<2> {
    let ([_, c_in], [k, c_out]) = (x.dims(), weight.dims());
    assert!(c_in == k && bias.dims() == [c_out], "pointwise_rows: x {:?}, weight {:?}, bias {:?} do not fit", x.dims(), weight.dims(), bias.dims());
    Tensor::from_dispatch(<Dispatch as GraftOps>::pointwise_rows(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), relu6))
}

#[cfg(test)]
mod tests;
