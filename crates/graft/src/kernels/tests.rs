//! graft's kernels against burn's own operations: outputs and gradients.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Tensor};

use super::*;

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Output and input, weight and bias gradients of the channels-last kernel equal those of
/// burn's grouped convolution with SAME padding (the one the layered EfficientNet-Lite uses)
/// followed by bias and `clamp(0, 6)`, for odd and even sizes, strides 1 and 2, kernels 3 and
/// 5 and channel counts that are not a multiple of the vector width.
#[test]
fn depthwise_nhwc_matches_burns_grouped_convolution() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    // Fresh leaves on the autodiff device, from data made without it.
    let leaf = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), &device).require_grad();
    for (size, kernel, stride, channels) in [(7, 3, 1, 5), (8, 3, 2, 11), (9, 5, 2, 3), (14, 5, 1, 16), (6, 5, 2, 8)] {
        let x_data = Tensor::<4>::random([2, channels, size, size], Distribution::Normal(0.0, 1.0), &plain);
        let w_data = Tensor::<4>::random([channels, 1, kernel, kernel], Distribution::Normal(0.0, 1.0), &plain);
        let b_data = Tensor::<1>::random([channels], Distribution::Normal(0.0, 2.0), &plain).into_data();
        let x = leaf(x_data.clone());
        let b = Tensor::<1>::from_data(b_data.clone(), &device).require_grad();
        let mut conv = Conv2dConfig::new([channels, channels], [kernel, kernel])
            .with_stride([stride, stride])
            .with_groups(channels)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(&device);
        conv.weight = Param::from_tensor(leaf(w_data.clone()));
        let reference = (conv.forward(x.clone()) + b.clone().reshape([1, channels, 1, 1])).clamp(0.0, 6.0); // [N, C, Ho, Wo]
        let upstream = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads = (reference.clone() * upstream.clone()).sum().backward();
        let (x_grad_ref, w_grad_ref, b_grad_ref) = (x.grad(&grads).unwrap(), conv.weight.val().grad(&grads).unwrap(), b.grad(&grads).unwrap());

        let x_nhwc = leaf(x_data.permute([0, 2, 3, 1]));
        // [C, 1, k, k] → [k, k, C]
        let w = Tensor::<3>::from_data(w_data.reshape([channels, kernel * kernel]).transpose().reshape([kernel, kernel, channels]).into_data(), &device).require_grad();
        let b2 = Tensor::<1>::from_data(b_data, &device).require_grad();
        let out = depthwise_conv_nhwc_relu6(x_nhwc.clone(), w.clone(), b2.clone(), stride);
        let grads = (out.clone() * upstream.clone().permute([0, 2, 3, 1])).sum().backward();
        let case = format!("size {size}, kernel {kernel}, stride {stride}, {channels} channels");
        assert_eq!(out.dims(), [2, size.div_ceil(stride), size.div_ceil(stride), channels], "{case}");
        assert!(max_abs_diff(out.permute([0, 3, 1, 2]), reference.inner()) < 1e-4, "output differs: {case}");
        let x_grad = x_nhwc.grad(&grads).unwrap().permute([0, 3, 1, 2]);
        assert!(max_abs_diff(x_grad, x_grad_ref) < 1e-4, "input gradient differs: {case}");
        let w_grad = w.grad(&grads).unwrap().reshape([kernel * kernel, channels]).transpose().reshape([channels, 1, kernel, kernel]);
        assert!(max_abs_diff(w_grad, w_grad_ref) < 1e-3, "weight gradient differs: {case}");
        assert!(max_abs_diff(b2.grad(&grads).unwrap(), b_grad_ref) < 1e-3, "bias gradient differs: {case}");
    }
}

/// The 1×1 convolution on rows, with and without ReLU6, and its gradients equal burn's
/// `x·w + b` (then `clamp(0, 6)`), for a plain and a transposed (strided) weight.
#[test]
fn pointwise_rows_matches_matmul_bias_clamp() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    for (relu6, transposed) in [(true, false), (false, false), (true, true)] {
        let x_data = Tensor::<2>::random([37, 13], Distribution::Uniform(-1.0, 2.0), &plain).into_data();
        let w_data = Tensor::<2>::random([13, 21], Distribution::Uniform(-1.0, 1.5), &plain);
        let b_data = Tensor::<1>::random([21], Distribution::Uniform(-1.0, 1.0), &plain).into_data();
        let x = Tensor::<2>::from_data(x_data.clone(), &device).require_grad();
        let w = Tensor::<2>::from_data(w_data.clone().into_data(), &device).require_grad();
        let b = Tensor::<1>::from_data(b_data.clone(), &device).require_grad();
        let upstream = Tensor::<2>::random([37, 21], Distribution::Normal(0.0, 1.0), &device);

        let mut reference = x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>();
        if relu6 {
            reference = reference.clamp(0.0, 6.0);
        }
        let grads = (reference.clone() * upstream.clone()).sum().backward();
        let expected = [x.grad(&grads).unwrap().reshape([-1]), w.grad(&grads).unwrap().reshape([-1]), b.grad(&grads).unwrap()];

        let x = Tensor::<2>::from_data(x_data, &device).require_grad();
        let b = Tensor::<1>::from_data(b_data, &device).require_grad();
        // The transposed case passes the same matrix as a strided view of a [21, 13] leaf.
        let w = Tensor::<2>::from_data(w_data.clone().into_data(), &device).require_grad();
        let w_t = Tensor::<2>::from_data(w_data.transpose().into_data(), &device).require_grad();
        let weight = if transposed { w_t.clone().transpose() } else { w.clone() };
        let out = pointwise_rows(x.clone(), weight, b.clone(), relu6);
        let grads = (out.clone() * upstream).sum().backward();
        let w_grad = if transposed { w_t.grad(&grads).unwrap().transpose() } else { w.grad(&grads).unwrap() };
        let case = format!("relu6 {relu6}, transposed weight {transposed}");
        assert!(max_abs_diff(out.clone().inner(), reference.inner()) < 1e-5, "output differs: {case}");
        let got = [x.grad(&grads).unwrap().reshape([-1]), w_grad.reshape([-1]), b.grad(&grads).unwrap()];
        for ((name, got), expected) in ["input", "weight", "bias"].iter().zip(got).zip(expected) {
            assert!(max_abs_diff(got, expected) < 1e-4, "{name} gradient differs: {case}");
        }
        if relu6 {
            // Some outputs were clamped on each side, so the masks were exercised.
            assert!(out.clone().equal_elem(0.0).any().into_scalar() && out.equal_elem(6.0).any().into_scalar(), "{case}");
        }
    }
}

#[test]
fn same_padding_follows_tensorflow() {
    // 14 → 7 with a 3×3 kernel, stride 2: one row of padding, after (TF puts the odd one last).
    let g = DepthwiseGeometry::same(1, [14, 14], 8, 3, 2);
    assert_eq!((g.out_h, g.pad_top), (7, 0));
    // 7 → 7, 5×5, stride 1: two before, two after.
    let g = DepthwiseGeometry::same(1, [7, 7], 8, 5, 1);
    assert_eq!((g.out_h, g.pad_top), (7, 2));
    // 15 → 8, 5×5, stride 2: total 4, two before.
    let g = DepthwiseGeometry::same(1, [15, 15], 8, 5, 2);
    assert_eq!((g.out_h, g.pad_left), (8, 2));
    assert!(supported(&Device::flex()) && supported(&Device::flex().autodiff()));
}

/// A k×k convolution as patch rows times its weight laid out `[k·k·C_in, C_out]` equals burn's
/// convolution with SAME padding (the stem of EfficientNet-Lite), for odd and even sizes,
/// strides 1 and 2, kernels 3 and 5; the rows come out channels-last.
#[test]
fn patch_rows_times_weight_is_burns_convolution() {
    let device = Device::flex();
    for (h, w, kernel, stride, c_in, c_out) in [(224, 224, 3, 2, 3, 32), (9, 7, 3, 2, 3, 5), (8, 8, 5, 1, 2, 4), (11, 6, 5, 2, 4, 3)] {
        let x = Tensor::<4>::random([2, c_in, h, w], Distribution::Normal(0.0, 1.0), &device);
        let mut conv = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(&device);
        conv.weight = Param::from_tensor(Tensor::<4>::random([c_out, c_in, kernel, kernel], Distribution::Normal(0.0, 1.0), &device));
        let reference = conv.forward(x.clone()).permute([0, 2, 3, 1]); // [N, Ho, Wo, C_out]
        let rows = patch_rows(x, kernel, stride); // [N·Ho·Wo, k·k·C_in]
        let [n, ho, wo, _] = reference.dims();
        assert_eq!(rows.dims(), [n * ho * wo, kernel * kernel * c_in]);
        let weight = conv.weight.val().permute([2, 3, 1, 0]).reshape([kernel * kernel * c_in, c_out]);
        let out = pointwise_rows(rows, weight, Tensor::zeros([c_out], &device), false).reshape([n, ho, wo, c_out]);
        let case = format!("{h}×{w}, kernel {kernel}, stride {stride}, {c_in} → {c_out}");
        assert!(max_abs_diff(out, reference) < 1e-4, "differs: {case}");
    }
}
