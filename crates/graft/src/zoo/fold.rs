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

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

/// `conv` followed by `bn` (inference mode) as one convolution with a bias.
pub fn fold_conv_bn(conv: &Conv2d, bn: &BatchNorm) -> Conv2d {
    let gamma = bn.gamma.val(); // [C_out]
    let [c_out] = gamma.dims();
    let scale = gamma / (bn.running_var.value() + bn.epsilon).sqrt(); // [C_out]
    let weight = conv.weight.val() * scale.clone().reshape([c_out, 1, 1, 1]); // [C_out, C_in/g, k, k]
    let mut bias = bn.beta.val() - bn.running_mean.value() * scale.clone(); // [C_out]
    if let Some(b) = &conv.bias {
        bias = bias + b.val() * scale;
    }
    Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
        stride: conv.stride,
        kernel_size: conv.kernel_size,
        dilation: conv.dilation,
        groups: conv.groups,
        padding: conv.padding.clone(),
    }
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
