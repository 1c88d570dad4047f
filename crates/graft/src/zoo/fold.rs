//! Inference-only speed-ups for frozen layers: BatchNorm folded into the convolution before it,
//! and a batch split across threads.
//!
//! A frozen BatchNorm in inference mode is an affine map per channel, y = γ·(x − μ)/√(σ² + ε) + β,
//! so it can be folded into the preceding bias-free convolution: W' = W·s, b' = β − μ·s with
//! s = γ/√(σ² + ε). That removes four full passes over every activation tensor (and their
//! allocations) per BatchNorm; burn-flex adds a convolution's bias inside the convolution kernel.
//!
//! burn-flex runs many operations (elementwise ops, the depthwise convolution on small batches)
//! on one thread; a profile of Lite0's forward on 2 cores showed ~1 core busy on average. Frozen
//! layers have no autodiff graph, so the batch can be split into one part per thread and the
//! parts run side by side.

use burn::module::{Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

/// `conv` followed by `bn` (inference mode) as one convolution with a bias.
pub fn fold_conv_bn(conv: &Conv2d, bn: &BatchNorm) -> Conv2d {
    let (weight, bias) = folded_weights(conv, bn);
    with_weights(conv, Param::from_tensor(weight), Param::from_tensor(bias))
}

/// `conv`'s geometry (stride, kernel, dilation, groups, padding) with other weights.
fn with_weights(conv: &Conv2d, weight: Param<Tensor<4>>, bias: Param<Tensor<1>>) -> Conv2d {
    Conv2d {
        weight,
        bias: Some(bias),
        stride: conv.stride,
        kernel_size: conv.kernel_size,
        dilation: conv.dilation,
        groups: conv.groups,
        padding: conv.padding.clone(),
    }
}

/// BatchNorm (inference mode) as a per-channel scale and shift, differentiable in γ and β:
/// s = γ/√(σ² + ε), t = β − μ·s.
pub fn bn_scale_shift(bn: &BatchNorm) -> (Tensor<1>, Tensor<1>) {
    let scale = bn.gamma.val() / (bn.running_var.value() + bn.epsilon).sqrt(); // [C]
    let shift = bn.beta.val() - bn.running_mean.value() * scale.clone(); // [C]
    (scale, shift)
}

/// The weight and bias of `conv` with `bn` (inference mode) folded in, as tensors computed from
/// the layers' own: W·s and b·s + β − μ·s, s = γ/√(σ² + ε). Differentiable in W, b, γ and β.
fn folded_weights(conv: &Conv2d, bn: &BatchNorm) -> (Tensor<4>, Tensor<1>) {
    let (scale, mut bias) = bn_scale_shift(bn); // [C_out], [C_out]
    let [c_out] = scale.dims();
    let weight = conv.weight.val() * scale.clone().reshape([c_out, 1, 1, 1]); // [C_out, C_in/g, k, k]
    if let Some(b) = &conv.bias {
        bias = bias + b.val() * scale;
    }
    (weight, bias)
}

/// `bn(conv(x))` as one convolution where `bn` runs in inference mode (burn's rule: not
/// training, or not on an autodiff device): the fold is recomputed from the layers' tensors on
/// each call, so a trainable convolution, γ and β still get their gradients and the running
/// statistics stay as they are. A BatchNorm in training mode runs as it is.
pub fn conv_bn(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if x.device().is_autodiff() && bn.training.is_enabled() {
        return bn.forward(conv.forward(x));
    }
    let (weight, bias) = folded_weights(conv, bn);
    // `Param::initialized` keeps the computed tensors as they are (`from_tensor` would make
    // them leaves of their own and cut the gradients off).
    let folded = with_weights(
        conv,
        Param::initialized(ParamId::new(), weight),
        Param::initialized(ParamId::new(), bias),
    );
    folded.forward(x)
}

/// Images per forward call inside one thread's part of a batch.
const MICRO_BATCH: usize = 1;

/// Threads to split a batch over: rayon's pool size (RAYON_NUM_THREADS or the core count).
pub fn batch_threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Runs `f` on parts of the batch (dimension 0) on separate threads, image by image, and
/// concatenates the results in order. Only for inference: the parts share no autodiff graph.
/// On the CPU only: on any other device (a GPU) `f` gets the whole batch in one call.
/// [N, …] → [N, …]
pub fn split_batch<const D: usize, const E: usize, F>(x: Tensor<D>, f: F) -> Tensor<E>
where
    F: Fn(Tensor<D>) -> Tensor<E> + Sync,
{
    if !crate::device::is_cpu(&x.device()) {
        return f(x);
    }
    let n = x.dims()[0];
    let parts = batch_threads().min(n);
    if parts <= 1 {
        return f(x);
    }
    let chunks = x.chunk(parts, 0);
    // Each thread runs its part one image at a time: per-image activations stay small enough
    // for the allocator to reuse, where batch-sized ones (tens of MB) went back to the kernel
    // and came back as fresh zeroed pages every layer (16% of the time in a profile).
    let run = |chunk: Tensor<D>| -> Tensor<E> {
        let m = chunk.dims()[0];
        if m <= MICRO_BATCH {
            return f(chunk);
        }
        Tensor::cat(chunk.chunk(m.div_ceil(MICRO_BATCH), 0).into_iter().map(&f).collect(), 0)
    };
    let outputs: Vec<Tensor<E>> = std::thread::scope(|scope| {
        let f = &run;
        let handles: Vec<_> = chunks.into_iter().map(|chunk| scope.spawn(move || f(chunk))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    Tensor::cat(outputs, 0)
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ParamGroup};
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{BatchNormConfig, PaddingConfig2d};
    use burn::tensor::{Device, Distribution};

    use super::*;
    use crate::zoo::efficientnet::tests::randomize_bn;

    /// A convolution with its BatchNorm folded in (`conv_bn`, BatchNorm frozen in inference
    /// mode) equals the two layers run one after the other, in its output and in the gradients
    /// of the input, the convolution's weight and bias, γ and β: fine-tuning through a folded
    /// layer trains what the layered one does.
    #[test]
    fn folded_conv_bn_trains_like_the_two_layers() {
        let device = Device::flex().autodiff();
        for (stride, padding, bias) in [(1, PaddingConfig2d::Explicit(1, 1, 1, 1), false), (2, PaddingConfig2d::Explicit(1, 1, 1, 1), true), (2, PaddingConfig2d::Same, false)] {
            let conv = Conv2dConfig::new([5, 7], [3, 3]).with_stride([stride, stride]).with_padding(padding.clone()).with_bias(bias).init(&device);
            let mut bn = BatchNormConfig::new(7).init(&device);
            randomize_bn(&mut bn, &device);
            let bn = bn.freeze_group(ParamGroup::from_regex(r"training$").unwrap());
            assert!(!bn.training.is_enabled());
            let data = Tensor::<4>::random([2, 5, 9, 8], Distribution::Normal(0.0, 1.0), &Device::flex()).into_data();
            let run = |folded: bool| {
                let x = Tensor::<4>::from_data(data.clone(), &device).require_grad();
                let out = if folded { conv_bn(&conv, &bn, x.clone()) } else { bn.forward(conv.forward(x.clone())) };
                let upstream = Tensor::<4>::from_data(out.clone().inner().cos().into_data(), &device);
                let grads = (out.clone() * upstream).sum().backward();
                let mut all = vec![out.inner().reshape([-1]), x.grad(&grads).unwrap().reshape([-1]), conv.weight.val().grad(&grads).unwrap().reshape([-1])];
                all.extend(conv.bias.as_ref().map(|b| b.val().grad(&grads).unwrap()));
                all.extend([bn.gamma.val().grad(&grads).unwrap(), bn.beta.val().grad(&grads).unwrap()]);
                all
            };
            for (i, (got, expected)) in run(true).into_iter().zip(run(false)).enumerate() {
                let diff: f32 = (got - expected).abs().max().into_scalar();
                assert!(diff < 1e-4, "stride {stride}, {padding:?}, bias {bias}: tensor {i} (output, input, weight, [bias], gamma, beta) differs by {diff}");
            }
        }
    }
}
