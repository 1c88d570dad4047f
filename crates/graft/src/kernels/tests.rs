//! graft's kernels against burn's own operations: outputs and gradients.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Tensor};

use super::*;

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Output, input gradient and weight gradient of the channels-last kernel equal those of
/// burn's grouped convolution with SAME padding (the one the layered EfficientNet-Lite uses),
/// for odd and even sizes, strides 1 and 2, kernels 3 and 5 and channel counts that are not
/// a multiple of the vector width.
#[test]
fn depthwise_nhwc_matches_burns_grouped_convolution() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    // Fresh leaves on the autodiff device, from data made without it.
    let leaf = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), &device).require_grad();
    for (size, kernel, stride, channels) in [(7, 3, 1, 5), (8, 3, 2, 11), (9, 5, 2, 3), (14, 5, 1, 16), (6, 5, 2, 8)] {
        let x_data = Tensor::<4>::random([2, channels, size, size], Distribution::Normal(0.0, 1.0), &plain);
        let w_data = Tensor::<4>::random([channels, 1, kernel, kernel], Distribution::Normal(0.0, 1.0), &plain);
        let x = leaf(x_data.clone());
        let mut conv = Conv2dConfig::new([channels, channels], [kernel, kernel])
            .with_stride([stride, stride])
            .with_groups(channels)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(&device);
        conv.weight = Param::from_tensor(leaf(w_data.clone()));
        let reference = conv.forward(x.clone()); // [N, C, Ho, Wo]
        let upstream = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads = (reference.clone() * upstream.clone()).sum().backward();
        let (x_grad_ref, w_grad_ref) = (x.grad(&grads).unwrap(), conv.weight.val().grad(&grads).unwrap());

        let x_nhwc = leaf(x_data.permute([0, 2, 3, 1]));
        // [C, 1, k, k] → [k, k, C]
        let w = Tensor::<3>::from_data(w_data.reshape([channels, kernel * kernel]).transpose().reshape([kernel, kernel, channels]).into_data(), &device).require_grad();
        let out = depthwise_conv_nhwc(x_nhwc.clone(), w.clone(), stride);
        let grads = (out.clone() * upstream.clone().permute([0, 2, 3, 1])).sum().backward();
        let case = format!("size {size}, kernel {kernel}, stride {stride}, {channels} channels");
        assert_eq!(out.dims(), [2, size.div_ceil(stride), size.div_ceil(stride), channels], "{case}");
        assert!(max_abs_diff(out.permute([0, 3, 1, 2]), reference.inner()) < 1e-4, "output differs: {case}");
        let x_grad = x_nhwc.grad(&grads).unwrap().permute([0, 3, 1, 2]);
        assert!(max_abs_diff(x_grad, x_grad_ref) < 1e-4, "input gradient differs: {case}");
        let w_grad = w.grad(&grads).unwrap().reshape([kernel * kernel, channels]).transpose().reshape([channels, 1, kernel, kernel]);
        assert!(max_abs_diff(w_grad, w_grad_ref) < 1e-3, "weight gradient differs: {case}");
    }
}

/// The fused bias + ReLU6 and its gradients equal burn's `clamp(x + b, 0, 6)`.
#[test]
fn bias_relu6_matches_clamp_and_its_gradients() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    let x_data = Tensor::<2>::random([37, 13], Distribution::Uniform(-3.0, 9.0), &plain).into_data();
    let b_data = Tensor::<1>::random([13], Distribution::Uniform(-1.0, 1.0), &plain).into_data();
    let x = Tensor::<2>::from_data(x_data.clone(), &device).require_grad();
    let bias = Tensor::<1>::from_data(b_data.clone(), &device).require_grad();
    let upstream = Tensor::<2>::random([37, 13], Distribution::Normal(0.0, 1.0), &device);

    let reference = (x.clone() + bias.clone().unsqueeze::<2>()).clamp(0.0, 6.0);
    let grads = (reference.clone() * upstream.clone()).sum().backward();
    let (x_grad_ref, b_grad_ref) = (x.grad(&grads).unwrap(), bias.grad(&grads).unwrap());

    let x2 = Tensor::<2>::from_data(x_data, &device).require_grad();
    let b2 = Tensor::<1>::from_data(b_data, &device).require_grad();
    let out = bias_relu6(x2.clone(), b2.clone());
    let grads = (out.clone() * upstream).sum().backward();
    assert!(max_abs_diff(out.inner(), reference.inner()) < 1e-6);
    assert!(max_abs_diff(x2.grad(&grads).unwrap(), x_grad_ref) < 1e-6);
    assert!(max_abs_diff(b2.grad(&grads).unwrap(), b_grad_ref) < 1e-5);
    // Some of the inputs were clamped on each side, so the masks were exercised.
    let y = bias_relu6(x.detach(), bias.detach());
    assert!(y.clone().equal_elem(0.0).any().into_scalar() && y.equal_elem(6.0).any().into_scalar());
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
