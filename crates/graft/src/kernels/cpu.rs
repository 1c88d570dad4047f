//! The CPU kernels behind [`GraftOps`](super::GraftOps) on burn's flex backend, on plain
//! slices.
//!
//! Every map is channels-last (`[N, H, W, C]`), so the innermost loop of each kernel runs over
//! `C` contiguous floats: one vector instruction per 8 channels once the loop is compiled for
//! AVX2 (see [`simd_variants!`]). Work is split across images with rayon.

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{DepthwiseGeometry, GraftOps};

/// Compiles a kernel body twice on x86-64, once for AVX2 + FMA, and picks the variant at run
/// time: graft's release build targets baseline x86-64 (SSE2), where the channel loops would
/// run 4 floats wide instead of 8.
macro_rules! simd_variants {
    ($($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block)*) => {$(
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    )*};
}

/// `acc[c] += x[c] · w[c]` over one pixel's channels.
#[inline(always)]
fn multiply_add(acc: &mut [f32], x: &[f32], w: &[f32]) {
    for ((a, x), w) in acc.iter_mut().zip(x).zip(w) {
        *a += x * w;
    }
}

#[inline(always)]
fn clamp_relu6(values: &mut [f32]) {
    for v in values {
        *v = v.clamp(0.0, 6.0); // NaN stays NaN, so a diverged run still shows in its loss
    }
}

/// The input row `i` (height or width) that output row `o` reads through kernel tap `k`.
#[inline(always)]
fn input_index(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// The output row that reads input row `i` through tap `k`, if any.
#[inline(always)]
fn output_index(i: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let t = (i + pad).checked_sub(k)?;
    (t % stride == 0 && t / stride < size).then_some(t / stride)
}

simd_variants! {
    /// One image: `out[oh, ow, :] = relu6(bias + Σ_taps x[ih, iw, :] · w[kh, kw, :])`.
    fn depthwise_forward_image(x: &[f32], w: &[f32], out: &mut [f32], g: &DepthwiseGeometry) {
        let c = g.channels;
        for oh in 0..g.out_h {
            for ow in 0..g.out_w {
                let acc = &mut out[(oh * g.out_w + ow) * c..][..c]; // holds the bias
                for kh in 0..g.kernel {
                    let Some(ih) = input_index(oh, kh, g.stride, g.pad_top, g.in_h) else { continue };
                    for kw in 0..g.kernel {
                        let Some(iw) = input_index(ow, kw, g.stride, g.pad_left, g.in_w) else { continue };
                        multiply_add(acc, &x[(ih * g.in_w + iw) * c..][..c], &w[(kh * g.kernel + kw) * c..][..c]);
                    }
                }
                clamp_relu6(acc);
            }
        }
    }

    /// One image's input gradient, gathered per input pixel (no write conflicts):
    /// `dx[ih, iw, :] = Σ_taps dy[oh, ow, :] · w[kh, kw, :]`.
    fn depthwise_input_grad_image(dy: &[f32], w: &[f32], dx: &mut [f32], g: &DepthwiseGeometry) {
        let c = g.channels;
        for ih in 0..g.in_h {
            for iw in 0..g.in_w {
                let acc = &mut dx[(ih * g.in_w + iw) * c..][..c];
                for kh in 0..g.kernel {
                    let Some(oh) = output_index(ih, kh, g.stride, g.pad_top, g.out_h) else { continue };
                    for kw in 0..g.kernel {
                        let Some(ow) = output_index(iw, kw, g.stride, g.pad_left, g.out_w) else { continue };
                        multiply_add(acc, &dy[(oh * g.out_w + ow) * c..][..c], &w[(kh * g.kernel + kw) * c..][..c]);
                    }
                }
            }
        }
    }

    /// One image's contribution to the weight gradient, added to `dw`:
    /// `dw[kh, kw, :] += Σ_pixels x[ih, iw, :] · dy[oh, ow, :]`.
    fn depthwise_weight_grad_image(x: &[f32], dy: &[f32], dw: &mut [f32], g: &DepthwiseGeometry) {
        let c = g.channels;
        for oh in 0..g.out_h {
            for ow in 0..g.out_w {
                let grad = &dy[(oh * g.out_w + ow) * c..][..c];
                for kh in 0..g.kernel {
                    let Some(ih) = input_index(oh, kh, g.stride, g.pad_top, g.in_h) else { continue };
                    for kw in 0..g.kernel {
                        let Some(iw) = input_index(ow, kw, g.stride, g.pad_left, g.in_w) else { continue };
                        multiply_add(&mut dw[(kh * g.kernel + kw) * c..][..c], &x[(ih * g.in_w + iw) * c..][..c], grad);
                    }
                }
            }
        }
    }

    /// In place: `y = min(max(y, 0), 6)`.
    fn relu6_in_place(values: &mut [f32]) {
        clamp_relu6(values);
    }

    /// In place on the gradient: it passes where the ReLU6 output was strictly between 0 and 6.
    fn relu6_grad(output: &[f32], grad: &mut [f32]) {
        for (g, y) in grad.iter_mut().zip(output) {
            if !(*y > 0.0 && *y < 6.0) {
                *g = 0.0;
            }
        }
    }
}

/// Elements per rayon task for elementwise kernels (whole rows where rows are involved).
const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// A contiguous f32 view of a flex tensor (copying only when it is a strided view).
fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.layout().contiguous_offsets().is_some() { tensor } else { tensor.to_contiguous() }
}

fn f32s(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("graft kernels take contiguous f32 tensors (checked by the Tensor-level wrappers)")
}

fn flex(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}

/// The float tensor's storage for writing in place; a copy when it is shared or strided.
fn owned(tensor: FlexTensor) -> FlexTensor {
    let tensor = contiguous(tensor);
    let elements = tensor.layout().num_elements();
    let whole_buffer = tensor.layout().contiguous_offsets() == Some((0, elements)) && tensor.bytes().len() == elements * 4;
    if tensor.is_unique() && whole_buffer {
        return tensor;
    }
    let shape = tensor.layout().shape().clone();
    flex(f32s(&tensor).to_vec(), shape)
}

/// `rows` copies of `row`, written once in parallel: the starting value of outputs that
/// kernels then accumulate into. (Zeroed buffers first cost a memset plus the kernel clearing
/// fresh pages: ~10 % of a forward pass on 10–80 MB activations.)
fn repeat_rows(row: &[f32], rows: usize) -> Vec<f32> {
    let columns = row.len();
    let mut values = Vec::with_capacity(rows * columns);
    values.spare_capacity_mut()[..rows * columns]
        .par_chunks_mut((ELEMENTWISE_CHUNK / columns.max(1)).max(1) * columns.max(1))
        .for_each(|chunk| {
            for (slot, value) in chunk.iter_mut().zip(row.iter().cycle()) {
                slot.write(*value);
            }
        });
    // SAFETY: every one of the `rows × columns` slots was written just above.
    unsafe { values.set_len(rows * columns) };
    values
}

/// (row stride, column stride) of a 2-D flex tensor, in elements.
fn strides_2d(tensor: &FlexTensor) -> (isize, isize) {
    let strides = tensor.layout().strides();
    (strides[0], strides[1])
}

fn storage_mut(tensor: &mut FlexTensor) -> &mut [f32] {
    tensor.try_storage_mut::<f32>().expect("`owned` returns a uniquely held tensor")
}

impl GraftOps for Flex {
    fn depthwise_nhwc(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, g: DepthwiseGeometry) -> FloatTensor<Self> {
        assert_eq!(x.dtype(), DType::F32, "depthwise_nhwc computes in f32");
        let (x, weight, bias) = (contiguous(x), contiguous(weight), contiguous(bias));
        let (x, w, b) = (f32s(&x), f32s(&weight), f32s(&bias));
        let mut out = repeat_rows(b, g.batch * g.out_h * g.out_w);
        out.par_chunks_mut(g.out_h * g.out_w * g.channels)
            .zip(x.par_chunks(g.in_h * g.in_w * g.channels))
            .for_each(|(out, x)| depthwise_forward_image(x, w, out, &g));
        flex(out, [g.batch, g.out_h, g.out_w, g.channels])
    }

    fn depthwise_nhwc_input_grad(grad: FloatTensor<Self>, weight: FloatTensor<Self>, g: DepthwiseGeometry) -> FloatTensor<Self> {
        let (grad, weight) = (contiguous(grad), contiguous(weight));
        let (dy, w) = (f32s(&grad), f32s(&weight));
        let mut dx = vec![0.0f32; g.batch * g.in_h * g.in_w * g.channels];
        dx.par_chunks_mut(g.in_h * g.in_w * g.channels)
            .zip(dy.par_chunks(g.out_h * g.out_w * g.channels))
            .for_each(|(dx, dy)| depthwise_input_grad_image(dy, w, dx, &g));
        flex(dx, [g.batch, g.in_h, g.in_w, g.channels])
    }

    fn depthwise_nhwc_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, g: DepthwiseGeometry) -> FloatTensor<Self> {
        let (x, grad) = (contiguous(x), contiguous(grad));
        let (x, dy) = (f32s(&x), f32s(&grad));
        let taps = g.kernel * g.kernel * g.channels;
        // One accumulator per rayon task, summed at the end.
        let dw = x
            .par_chunks(g.in_h * g.in_w * g.channels)
            .zip(dy.par_chunks(g.out_h * g.out_w * g.channels))
            .fold(
                || vec![0.0f32; taps],
                |mut dw, (x, dy)| {
                    depthwise_weight_grad_image(x, dy, &mut dw, &g);
                    dw
                },
            )
            .reduce(
                || vec![0.0f32; taps],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        flex(dw, [g.kernel, g.kernel, g.channels])
    }

    fn pointwise_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, relu6: bool) -> FloatTensor<Self> {
        assert_eq!(x.dtype(), DType::F32, "pointwise_rows computes in f32");
        let bias = contiguous(bias);
        let b = f32s(&bias);
        let (rows, inner) = (x.layout().shape()[0], x.layout().shape()[1]);
        let columns = b.len();
        // The output starts as the bias on every row; the product is added to it.
        let mut out = repeat_rows(b, rows);
        let (x_rs, x_cs) = strides_2d(&x);
        let (w_rs, w_cs) = strides_2d(&weight);
        let parallelism = if rows * columns * inner >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        // SAFETY: the pointers cover `rows × inner`, `inner × columns` and `rows × columns`
        // elements at the given strides (flex layouts of live tensors; `out` is ours).
        unsafe {
            let x_ptr = x.storage::<f32>().as_ptr().add(x.layout().start_offset());
            let w_ptr = weight.storage::<f32>().as_ptr().add(weight.layout().start_offset());
            gemm::gemm(rows, columns, inner, out.as_mut_ptr(), 1, columns as isize, true, x_ptr, x_cs, x_rs, w_ptr, w_cs, w_rs, 1.0f32, 1.0f32, false, false, false, parallelism);
        }
        if relu6 {
            out.par_chunks_mut(ELEMENTWISE_CHUNK).for_each(relu6_in_place);
        }
        flex(out, [rows, columns])
    }

    fn relu6_backward(output: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let output = contiguous(output);
        let y = f32s(&output);
        let mut grad = owned(grad);
        storage_mut(&mut grad)
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(y.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(g, y)| relu6_grad(y, g));
        grad
    }
}
