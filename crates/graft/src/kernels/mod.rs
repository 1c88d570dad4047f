//! graft's own tensor operations, added to burn through its backend-extension mechanism:
//! a channels-last depthwise convolution and a 1×1 convolution on rows, each with bias and an
//! activation fused in, and elementwise activations (ReLU, ReLU6, exact GELU, and a residual
//! sum followed by one), each with a handwritten backward pass.
//!
//! Why: fine-tuning the tail of a MobileNet-style network on burn-flex spent most of a step in
//! layout shuffles around the 1×1 convolutions, in the depthwise convolution's backward
//! (a transposed convolution), and in ReLU6's backward (two masks). Kept channels-last
//! (`[N·H·W, C]` rows), a 1×1 convolution is one large matrix product, and these two kernels
//! cover the rest. See [`crate::zoo::efficientnet`]'s channels-last training path.
//!
//! burn-flex runs elementwise operations on one thread and GELU through a scalar `erf`: in
//! ConvNeXt and ViT forward passes GELU alone took a fifth of the samples, and in ResNet-50
//! BatchNorm's separate scale-and-shift passes and ReLU most of what was not a matrix product.
//! Here every elementwise pass is split across rayon's threads and compiled for the CPU's
//! vector width, GELU's `erf` included (Abramowitz & Stegun 7.1.26 over a polynomial e^x;
//! within 1e-6 of burn's GELU, test `activations_match_burns`).
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

/// The activation fused into a kernel's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Identity,
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// Exact GELU, `x·Φ(x)` (erf, not tanh), as torchvision's and timm's ConvNeXt and ViT use.
    Gelu,
}

impl Act {
    /// Whether the gradient is a function of the output (ReLU, ReLU6: a mask), so that a
    /// backward pass keeps the output rather than the input.
    pub fn grad_from_output(self) -> bool {
        matches!(self, Act::Relu | Act::Relu6)
    }
}

/// The operations graft adds to burn's backends.
#[backend_extension(Flex, Autodiff)]
pub trait GraftOps: Backend {
    /// Depthwise convolution, channels-last, with bias and an activation (not GELU): x
    /// `[N, H, W, C]`, weight `[k, k, C]`, bias `[C]` → `act(conv(x) + bias)`,
    /// `[N, H_out, W_out, C]`.
    fn depthwise_nhwc(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, geometry: DepthwiseGeometry, act: Act) -> FloatTensor<Self>;
    /// Gradient of the (linear) depthwise convolution with respect to its input.
    fn depthwise_nhwc_input_grad(grad: FloatTensor<Self>, weight: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self>;
    /// Gradient of the (linear) depthwise convolution with respect to its weight.
    fn depthwise_nhwc_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self>;
    /// The k×k patches of x `[N, C, H, W]` (SAME padding, zeros outside) as rows
    /// `[N·H'·W', k·k·C]`, taps in (kh, kw, c) order: a k×k convolution is then one matrix
    /// product with its weight laid out `[k·k·C, C_out]`, its output channels-last. For
    /// inference: no gradient flows back through it.
    fn patch_rows(x: FloatTensor<Self>, geometry: DepthwiseGeometry) -> FloatTensor<Self>;
    /// A 1×1 convolution (or a linear layer) on rows: x `[R, C_in]` × weight `[C_in, C_out]`
    /// + bias `[C_out]`, then `act`. Without an activation the product accumulates into the
    /// bias (no zeroed buffer, no separate bias pass); with one, one pass adds the bias and
    /// applies it.
    fn pointwise_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, act: Act) -> FloatTensor<Self>;
    /// Multi-head self-attention of `batch` images' tokens from their fused q/k/v projections:
    /// qkv `[N·T, 3D]` (q, k, v side by side, each of `heads` column blocks) →
    /// `softmax(q·kᵀ/√hd)·v` per image and head, heads side by side, `[N·T, D]`. For inference:
    /// no gradient flows back through it.
    fn attention_rows(qkv: FloatTensor<Self>, batch: usize, heads: usize) -> FloatTensor<Self>;
    /// `act(x)`, elementwise, any shape.
    fn activation(x: FloatTensor<Self>, act: Act) -> FloatTensor<Self>;
    /// `act(a + b)`, elementwise, same shapes (a residual sum and its activation); not GELU.
    fn add_activation(a: FloatTensor<Self>, b: FloatTensor<Self>, act: Act) -> FloatTensor<Self>;
    /// The gradient through `act` given what its backward needs ([`Act::grad_from_output`]:
    /// the output for ReLU and ReLU6, the input for GELU).
    fn activation_backward(saved: FloatTensor<Self>, grad: FloatTensor<Self>, act: Act) -> FloatTensor<Self>;
}

/// Whether tensors on `device` can use graft's kernels (the flex CPU backend, with or
/// without autodiff).
pub fn supported(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// Depthwise convolution on channels-last maps with bias and an activation (identity, ReLU or
/// ReLU6): x `[N, H, W, C]`, weight `[k, k, C]`, bias `[C]`, SAME padding →
/// `[N, ⌈H/s⌉, ⌈W/s⌉, C]`. The device must be [`supported`].
pub fn depthwise_conv_nhwc(x: Tensor<4>, weight: Tensor<3>, bias: Tensor<1>, stride: usize, act: Act) -> Tensor<4> {
    let [n, h, w, c] = x.dims();
    let [k, k2, cw] = weight.dims();
    assert!(k == k2 && cw == c && bias.dims() == [c], "depthwise weight [{k}, {k2}, {cw}] / bias {:?} do not fit a map with {c} channels", bias.dims());
    assert!(k <= 7, "depthwise_conv_nhwc takes kernels up to 7×7, not {k}×{k}");
    assert!(act != Act::Gelu, "depthwise_conv_nhwc fuses identity, ReLU or ReLU6");
    let geometry = DepthwiseGeometry::same(n, [h, w], c, k, stride);
    Tensor::from_dispatch(<Dispatch as GraftOps>::depthwise_nhwc(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), geometry, act))
}

/// The k×k patches of images `[N, C, H, W]` with SAME padding as rows `[N·H'·W', k·k·C]`
/// ([`GraftOps::patch_rows`]); the device must be [`supported`]. No gradient flows through it.
pub fn patch_rows(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    let geometry = DepthwiseGeometry::same(n, [h, w], c, kernel, stride);
    Tensor::from_dispatch(<Dispatch as GraftOps>::patch_rows(x.into_dispatch(), geometry))
}

/// A 1×1 convolution on rows: `act(x · weight + bias)` (`[R, C_in]`, `[C_in, C_out]`,
/// `[C_out]`). The device must be [`supported`].
pub fn pointwise_rows(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>, act: Act) -> Tensor<2> {
    let ([_, c_in], [k, c_out]) = (x.dims(), weight.dims());
    assert!(c_in == k && bias.dims() == [c_out], "pointwise_rows: x {:?}, weight {:?}, bias {:?} do not fit", x.dims(), weight.dims(), bias.dims());
    Tensor::from_dispatch(<Dispatch as GraftOps>::pointwise_rows(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), act))
}

/// A linear layer on rows, then `act`: `act(x · W + b)`, `[R, C_in]` → `[R, C_out]`; one matrix
/// product with the bias and the activation fused where the device is [`supported`], burn's
/// `Linear` and activation elsewhere.
pub fn linear_rows(linear: &burn::nn::Linear, x: Tensor<2>, act: Act) -> Tensor<2> {
    match &linear.bias {
        Some(bias) if supported(&x.device()) => pointwise_rows(x, linear.weight.val(), bias.val(), act),
        _ => activation(linear.forward(x), act),
    }
}

/// Multi-head self-attention from fused q/k/v projections: qkv `[N·T, 3D]` (q, k and v side
/// by side, each `[N·T, D]` of `heads` column blocks) → `softmax(q·kᵀ/√hd)·v` per image and
/// head, heads side by side again, `[N·T, D]`. Where the device is [`supported`] and `qkv` is
/// on no autodiff graph (a frozen trunk, inference), graft's kernel: both products read q, k
/// and v in place and the softmax is one pass over the scores, one image per thread. Else
/// burn's own operations (head-major copies, matmuls, softmax), which carry gradients.
pub fn multi_head_attention(qkv: Tensor<2>, batch: usize, heads: usize) -> Tensor<2> {
    let [rows, width] = qkv.dims();
    let d = width / 3;
    assert!(width == 3 * d && heads > 0 && d % heads == 0 && batch > 0 && rows % batch == 0, "multi_head_attention: qkv {:?} does not split into {batch} images of q, k, v with {heads} heads", qkv.dims());
    if supported(&qkv.device()) && !qkv.is_tracked() {
        return Tensor::from_dispatch(<Dispatch as GraftOps>::attention_rows(qkv.into_dispatch(), batch, heads));
    }
    let (n, t, h, hd) = (batch, rows / batch, heads, d / heads);
    let mut qkv = qkv.reshape([n, t, 3 * d]).chunk(3, 2).into_iter().map(|part| part.reshape([n, t, h, hd]).swap_dims(1, 2)); // 3 × [N, H, T, hd]
    let (q, k, v) = (qkv.next().expect("q"), qkv.next().expect("k"), qkv.next().expect("v"));
    // 1/√hd scales q, the smaller operand, before the scores.
    let scores = (q * (1.0 / (hd as f64).sqrt())).matmul(k.swap_dims(2, 3)); // [N, H, T, T]
    let attended = burn::tensor::activation::softmax(scores, 3).matmul(v); // [N, H, T, hd]
    attended.swap_dims(1, 2).reshape([rows, d]) // [N·T, D]
}

/// `act(x)` on every element, on all threads where the device is [`supported`]; burn's own
/// operation elsewhere.
pub fn activation<const D: usize>(x: Tensor<D>, act: Act) -> Tensor<D> {
    use burn::tensor::activation as burn_act;
    if !supported(&x.device()) {
        return match act {
            Act::Identity => x,
            Act::Relu => burn_act::relu(x),
            Act::Relu6 => burn_act::relu6(x),
            Act::Gelu => burn_act::gelu(x),
        };
    }
    Tensor::from_dispatch(<Dispatch as GraftOps>::activation(x.into_dispatch(), act))
}

/// `act(a + b)` (a residual sum and its ReLU), on all threads where the device is
/// [`supported`]; burn's own operations elsewhere. Not GELU.
pub fn add_activation<const D: usize>(a: Tensor<D>, b: Tensor<D>, act: Act) -> Tensor<D> {
    assert!(act != Act::Gelu, "add_activation fuses identity, ReLU or ReLU6");
    assert_eq!(a.dims(), b.dims(), "add_activation takes two tensors of one shape");
    if !supported(&a.device()) {
        return activation(a + b, act);
    }
    Tensor::from_dispatch(<Dispatch as GraftOps>::add_activation(a.into_dispatch(), b.into_dispatch(), act))
}

#[cfg(test)]
mod tests;
