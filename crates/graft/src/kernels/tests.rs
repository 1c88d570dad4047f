//! graft's kernels against burn's own operations: outputs and gradients.

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::{Distribution, Tensor, TensorData};

use super::*;

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Output and input, weight and bias gradients of the channels-last kernel equal those of
/// burn's grouped convolution with SAME padding (the one the layered EfficientNet-Lite uses)
/// followed by bias and `clamp(0, 6)` (or nothing: ConvNeXt's 7×7), for odd and even sizes,
/// strides 1 and 2, kernels 3, 5 and 7 and channel counts that are not a multiple of the vector
/// width.
#[test]
fn depthwise_nhwc_matches_burns_grouped_convolution() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    // Fresh leaves on the autodiff device, from data made without it.
    let leaf = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), &device).require_grad();
    for (size, kernel, stride, channels, act) in [(7, 3, 1, 5, Act::Relu6), (8, 3, 2, 11, Act::Relu6), (9, 5, 2, 3, Act::Relu6), (14, 5, 1, 16, Act::Relu6), (6, 5, 2, 8, Act::Relu6), (9, 7, 1, 70, Act::Identity), (8, 7, 1, 16, Act::Relu)] {
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
        let reference = burns_activation(conv.forward(x.clone()) + b.clone().reshape([1, channels, 1, 1]), act); // [N, C, Ho, Wo]
        let upstream = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads = (reference.clone() * upstream.clone()).sum().backward();
        let (x_grad_ref, w_grad_ref, b_grad_ref) = (x.grad(&grads).unwrap(), conv.weight.val().grad(&grads).unwrap(), b.grad(&grads).unwrap());

        let x_nhwc = leaf(x_data.permute([0, 2, 3, 1]));
        // [C, 1, k, k] → [k, k, C]
        let w = Tensor::<3>::from_data(w_data.reshape([channels, kernel * kernel]).transpose().reshape([kernel, kernel, channels]).into_data(), &device).require_grad();
        let b2 = Tensor::<1>::from_data(b_data, &device).require_grad();
        let out = depthwise_conv_nhwc(x_nhwc.clone(), w.clone(), b2.clone(), stride, act);
        let grads = (out.clone() * upstream.clone().permute([0, 2, 3, 1])).sum().backward();
        let case = format!("size {size}, kernel {kernel}, stride {stride}, {channels} channels, {act:?}");
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
/// `x·w + b` (then `clamp(0, 6)`, ReLU or GELU), for a plain and a transposed (strided) weight.
#[test]
fn pointwise_rows_matches_matmul_bias_clamp() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    for (act, transposed) in [(Act::Relu6, false), (Act::Identity, false), (Act::Relu6, true), (Act::Gelu, false), (Act::Relu, true)] {
        let relu6 = act == Act::Relu6;
        let x_data = Tensor::<2>::random([37, 13], Distribution::Uniform(-1.0, 2.0), &plain).into_data();
        let w_data = Tensor::<2>::random([13, 21], Distribution::Uniform(-1.0, 1.5), &plain);
        let b_data = Tensor::<1>::random([21], Distribution::Uniform(-1.0, 1.0), &plain).into_data();
        let x = Tensor::<2>::from_data(x_data.clone(), &device).require_grad();
        let w = Tensor::<2>::from_data(w_data.clone().into_data(), &device).require_grad();
        let b = Tensor::<1>::from_data(b_data.clone(), &device).require_grad();
        let upstream = Tensor::<2>::random([37, 21], Distribution::Normal(0.0, 1.0), &device);

        let reference = burns_activation(x.clone().matmul(w.clone()) + b.clone().unsqueeze::<2>(), act);
        let grads = (reference.clone() * upstream.clone()).sum().backward();
        let expected = [x.grad(&grads).unwrap().reshape([-1]), w.grad(&grads).unwrap().reshape([-1]), b.grad(&grads).unwrap()];

        let x = Tensor::<2>::from_data(x_data, &device).require_grad();
        let b = Tensor::<1>::from_data(b_data, &device).require_grad();
        // The transposed case passes the same matrix as a strided view of a [21, 13] leaf.
        let w = Tensor::<2>::from_data(w_data.clone().into_data(), &device).require_grad();
        let w_t = Tensor::<2>::from_data(w_data.transpose().into_data(), &device).require_grad();
        let weight = if transposed { w_t.clone().transpose() } else { w.clone() };
        let out = pointwise_rows(x.clone(), weight, b.clone(), act);
        let grads = (out.clone() * upstream).sum().backward();
        let w_grad = if transposed { w_t.grad(&grads).unwrap().transpose() } else { w.grad(&grads).unwrap() };
        let case = format!("{act:?}, transposed weight {transposed}");
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
        let out = pointwise_rows(rows, weight, Tensor::zeros([c_out], &device), Act::Identity).reshape([n, ho, wo, c_out]);
        let case = format!("{h}×{w}, kernel {kernel}, stride {stride}, {c_in} → {c_out}");
        assert!(max_abs_diff(out, reference) < 1e-4, "differs: {case}");
    }
}

/// burn's own operations for `act` (the reference the kernels are held to).
fn burns_activation<const D: usize>(x: Tensor<D>, act: Act) -> Tensor<D> {
    use burn::tensor::activation::{gelu, relu, relu6};
    match act {
        Act::Identity => x,
        Act::Relu => relu(x),
        Act::Relu6 => relu6(x),
        Act::Gelu => gelu(x),
    }
}

/// The elementwise kernels and their gradients equal burn's ReLU, ReLU6 and exact GELU (erf),
/// on values from −12 to 12 (off the kinks at 0 and 6, where a subgradient is a choice; GELU's
/// tails, where its erf approximation and e^x are tested hardest) and on a tensor that is shared
/// (so the kernel writes a fresh one) or a strided view; `add_activation` equals `act(a + b)`
/// with the gradient reaching both operands.
#[test]
fn activations_match_burns() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    let values = Tensor::<1>::from_floats((0..24_001).map(|i| -12.0003 + i as f32 * 0.001).collect::<Vec<_>>().as_slice(), &plain);
    let random = Tensor::<1>::random([70_002], Distribution::Normal(0.0, 3.0), &plain);
    let data = Tensor::cat(vec![values, random], 0).reshape([-1, 7]).into_data();
    for act in [Act::Relu, Act::Relu6, Act::Gelu, Act::Identity] {
        let leaf = || Tensor::<2>::from_data(data.clone(), &device).require_grad();
        let upstream = Tensor::<2>::random(Tensor::<2>::from_data(data.clone(), &device).dims(), Distribution::Normal(0.0, 1.0), &device);
        let x = leaf();
        let reference = burns_activation(x.clone(), act);
        let grads = (reference.clone() * upstream.clone()).sum().backward();
        let grad_ref = x.grad(&grads).unwrap();

        let x = leaf();
        // Shared (x is kept) and transposed (strided): the kernel may not write in place.
        let out = activation(x.clone().transpose(), act).transpose();
        let grads = (out.clone() * upstream.clone()).sum().backward();
        let tolerance = if act == Act::Gelu { 1e-6 } else { 0.0 };
        let diff = max_abs_diff(out.inner(), reference.clone().inner());
        assert!(diff <= tolerance, "{act:?}: output differs by {diff}");
        let diff = max_abs_diff(x.grad(&grads).unwrap(), grad_ref);
        assert!(diff <= 2.0 * tolerance, "{act:?}: gradient differs by {diff}");
        // The input is untouched.
        assert_eq!(x.clone().inner().into_data(), Tensor::<2>::from_data(data.clone(), &plain).into_data(), "{act:?}");

        if act == Act::Gelu {
            continue;
        }
        let (a, b) = (leaf(), Tensor::<2>::from_data(data.clone(), &device).flip([0]).require_grad());
        let reference = burns_activation(a.clone() + b.clone(), act);
        let grads = (reference.clone() * upstream.clone()).sum().backward();
        let (a_ref, b_ref) = (a.grad(&grads).unwrap(), b.grad(&grads).unwrap());
        let (a, b2) = (leaf(), Tensor::<2>::from_data(data.clone(), &device).require_grad());
        let out = add_activation(a.clone(), b2.clone().flip([0]), act);
        let grads = (out.clone() * upstream).sum().backward();
        assert!(max_abs_diff(out.inner(), reference.inner()) < 1e-6, "{act:?}: sum differs");
        assert!(max_abs_diff(a.grad(&grads).unwrap(), a_ref) < 1e-6, "{act:?}: gradient of a differs");
        assert!(max_abs_diff(b2.grad(&grads).unwrap().flip([0]), b_ref) < 1e-6, "{act:?}: gradient of b differs");
    }
    // Plain (not autodiff) tensors held once are written in place and give the same values.
    let x = Tensor::<2>::from_data(data.clone(), &plain);
    let diff = max_abs_diff(activation(x.clone() * 1.0, Act::Gelu), burns_activation(x, Act::Gelu));
    assert!(diff <= 1e-6, "GELU in place differs by {diff}");
}

/// Multi-head attention written out with burn's operations: per image and head
/// softmax(q·kᵀ/√hd)·v, heads side by side. qkv [N·T, 3D] → [N·T, D].
fn burns_attention(qkv: Tensor<2>, batch: usize, heads: usize) -> Tensor<2> {
    let [rows, width] = qkv.dims();
    let (t, d) = (rows / batch, width / 3);
    let hd = d / heads;
    let mut out = Vec::new();
    for image in 0..batch {
        let x = qkv.clone().slice([image * t..(image + 1) * t, 0..width]); // [T, 3D]
        let per_head = (0..heads)
            .map(|h| {
                let part = |k: usize| x.clone().slice([0..t, k * d + h * hd..k * d + (h + 1) * hd]); // [T, hd]
                let scores = part(0).matmul(part(1).transpose()) / (hd as f64).sqrt(); // [T, T]
                burn::tensor::activation::softmax(scores, 1).matmul(part(2)) // [T, hd]
            })
            .collect();
        out.push(Tensor::cat(per_head, 1)); // [T, D]
    }
    Tensor::cat(out, 0)
}

/// graft's attention kernel (inference) and the tracked path (burn's operations, with
/// gradients) both equal attention written out head by head; rows longer than the softmax's
/// 16 lanes and shorter; one image (the products then use every thread) and several; a NaN
/// score leaves its image's rows NaN, as burn's softmax does.
#[test]
fn multi_head_attention_matches_burns() {
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    for (batch, tokens, d, heads) in [(1, 7, 12, 3), (3, 20, 16, 2), (4, 17, 8, 1)] {
        let qkv = Tensor::<2>::random([batch * tokens, 3 * d], Distribution::Normal(0.0, 2.0), &plain);
        let reference = burns_attention(qkv.clone(), batch, heads);
        let case = format!("{batch} images of {tokens} tokens, D {d}, {heads} heads");
        let fast = multi_head_attention(qkv.clone(), batch, heads);
        assert_eq!(fast.dims(), [batch * tokens, d], "{case}");
        assert!(max_abs_diff(fast, reference.clone()) < 1e-5, "kernel differs: {case}");
        // Untracked on the autodiff device: the kernel too.
        let untracked = multi_head_attention(Tensor::<2>::from_data(qkv.to_data(), &device), batch, heads);
        assert!(max_abs_diff(untracked.inner(), reference.clone()) < 1e-5, "untracked autodiff differs: {case}");
        // Tracked: burn's operations, and a gradient reaches qkv.
        let leaf = Tensor::<2>::from_data(qkv.to_data(), &device).require_grad();
        let tracked = multi_head_attention(leaf.clone() * 1.0, batch, heads);
        let upstream = Tensor::<2>::random([batch * tokens, d], Distribution::Normal(0.0, 1.0), &device);
        let grads = (tracked.clone() * upstream.clone()).sum().backward();
        assert!(max_abs_diff(tracked.inner(), reference.clone()) < 1e-5, "tracked path differs: {case}");
        let reference_leaf = Tensor::<2>::from_data(qkv.to_data(), &device).require_grad();
        let reference_grads = (burns_attention(reference_leaf.clone(), batch, heads) * upstream).sum().backward();
        let (grad, reference_grad) = (leaf.grad(&grads).expect("qkv's gradient"), reference_leaf.grad(&reference_grads).unwrap());
        assert!(reference_grad.clone().abs().max().into_scalar::<f32>() > 0.0, "{case}");
        assert!(max_abs_diff(grad, reference_grad) < 1e-4, "gradient differs: {case}");
    }
    let mut values = vec![0.5f32; 2 * 3 * 6];
    values[3 * 6] = f32::NAN; // image 1, token 0, q
    let qkv = Tensor::<2>::from_data(TensorData::new(values, [6, 6]), &plain);
    let out = multi_head_attention(qkv, 2, 1).into_data().try_to_vec::<f32>().unwrap(); // [6, 2]
    assert!(out[..6].iter().all(|v| v.is_finite()), "image 0 stays finite: {out:?}");
    assert!(out[6..8].iter().all(|v| v.is_nan()), "image 1's first token (a NaN query) is NaN: {out:?}");
}
