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

/// The widest vector extension graft's own kernels use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Baseline x86-64 (SSE2) or another architecture: 4 floats wide.
    Baseline,
    /// AVX2 + FMA: 8 floats wide.
    Avx2,
    /// AVX-512 (F, BW, VL) + FMA: 16 floats wide.
    Avx512,
}

impl Simd {
    pub fn name(self) -> &'static str {
        match self {
            Simd::Baseline => "baseline",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
        }
    }
}

/// The environment variable that caps [`simd`] below what the CPU has (`avx2` or `baseline`),
/// to compare the paths on one machine.
pub const SIMD_ENV: &str = "GRAFT_SIMD";

/// The extension the kernels run with: the widest the CPU has, capped by `GRAFT_SIMD` when it
/// names a narrower one (an unknown value is ignored). Read once per process.
pub fn simd() -> Simd {
    static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var(SIMD_ENV).as_deref() {
            Ok("baseline") => Simd::Baseline,
            Ok("avx2") => Simd::Avx2,
            _ => Simd::Avx512,
        };
        detected().min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detected() -> Simd {
    use std::arch::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("fma") {
        Simd::Avx512
    } else if has!("avx2") && has!("fma") {
        Simd::Avx2
    } else {
        Simd::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected() -> Simd {
    Simd::Baseline
}

/// Compiles a kernel body three times on x86-64, for AVX-512, for AVX2 + FMA and for the
/// baseline, and picks the variant at run time ([`simd`]): graft's release build targets
/// baseline x86-64 (SSE2), where the channel loops would run 4 floats wide instead of 8 or 16.
macro_rules! simd_variants {
    ($($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block)*) => {$(
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
                match simd() {
                    // SAFETY: `simd` returns a level only where the CPU has its features.
                    Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    Simd::Baseline => {}
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

/// The most taps a depthwise kernel may have (k ≤ 7).
const MAX_TAPS: usize = 49;

/// Channels `c0..c0 + N` of one output pixel: `acc = relu6(acc + Σ_taps x · w)`, the N sums in
/// registers across the taps.
#[inline(always)]
fn depthwise_block<const N: usize>(acc: &mut [f32], x: &[f32], w: &[f32], taps: &[(usize, usize)], c0: usize) {
    let mut sum: [f32; N] = acc[c0..c0 + N].try_into().expect("N channels");
    for &(xo, wo) in taps {
        let (xs, ws) = (&x[xo + c0..xo + c0 + N], &w[wo + c0..wo + c0 + N]);
        for l in 0..N {
            sum[l] += xs[l] * ws[l];
        }
    }
    for l in 0..N {
        acc[c0 + l] = sum[l].clamp(0.0, 6.0); // NaN stays NaN
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
    /// One output row `oh` of one image:
    /// `out[ow, :] = relu6(bias + Σ_taps x[ih, iw, :] · w[kh, kw, :])`.
    /// Channels go in blocks of 64, then 16, then one by one, each block's sums kept in
    /// registers over all taps (not re-read from `out` per tap).
    fn depthwise_forward_row(x: &[f32], w: &[f32], out: &mut [f32], g: &DepthwiseGeometry, oh: usize) {
        let c = g.channels;
        let mut taps = [(0usize, 0usize); MAX_TAPS];
        for ow in 0..g.out_w {
            // (input offset, weight offset) of the taps inside the image.
            let mut n = 0;
            for kh in 0..g.kernel {
                let Some(ih) = input_index(oh, kh, g.stride, g.pad_top, g.in_h) else { continue };
                for kw in 0..g.kernel {
                    let Some(iw) = input_index(ow, kw, g.stride, g.pad_left, g.in_w) else { continue };
                    taps[n] = ((ih * g.in_w + iw) * c, (kh * g.kernel + kw) * c);
                    n += 1;
                }
            }
            let (taps, acc) = (&taps[..n], &mut out[ow * c..][..c]); // acc holds the bias
            let mut c0 = 0;
            while c0 + 64 <= c {
                depthwise_block::<64>(acc, x, w, taps, c0);
                c0 += 64;
            }
            while c0 + 16 <= c {
                depthwise_block::<16>(acc, x, w, taps, c0);
                c0 += 16;
            }
            while c0 < c {
                depthwise_block::<1>(acc, x, w, taps, c0);
                c0 += 1;
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

    /// In place on whole rows: `y = min(max(y + bias, 0), 6)`.
    fn bias_relu6_rows(values: &mut [f32], bias: &[f32]) {
        for row in values.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            clamp_relu6(row);
        }
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
    if columns > 0 {
        // Whole rows per task, each written as a slice copy (a `cycle()` over the row ran one
        // scalar store per element: 16 % of a forward pass in a profile).
        values.spare_capacity_mut()[..rows * columns]
            .par_chunks_mut((ELEMENTWISE_CHUNK / columns).max(1) * columns)
            .for_each(|chunk| {
                for slots in chunk.chunks_exact_mut(columns) {
                    for (slot, value) in slots.iter_mut().zip(row) {
                        slot.write(*value);
                    }
                }
            });
    }
    // SAFETY: every one of the `rows × columns` slots was written just above.
    unsafe { values.set_len(rows * columns) };
    values
}

/// One image's k×k patches as rows: x `[C, H, W]` → `[H'·W', k·k·C]`, taps in (kh, kw, c)
/// order, zeros where a tap falls in the padding.
fn patch_rows_image(x: &[f32], rows: &mut [f32], g: &DepthwiseGeometry) {
    let (c, k) = (g.channels, g.kernel);
    let plane = g.in_h * g.in_w;
    for (pixel, row) in rows.chunks_exact_mut(k * k * c).enumerate() {
        let (oh, ow) = (pixel / g.out_w, pixel % g.out_w);
        for kh in 0..k {
            let ih = input_index(oh, kh, g.stride, g.pad_top, g.in_h);
            for kw in 0..k {
                let tap = &mut row[(kh * k + kw) * c..][..c];
                match (ih, input_index(ow, kw, g.stride, g.pad_left, g.in_w)) {
                    (Some(ih), Some(iw)) => tap.iter_mut().enumerate().for_each(|(ch, t)| *t = x[ch * plane + ih * g.in_w + iw]),
                    _ => tap.fill(0.0),
                }
            }
        }
    }
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
        // One task per output row (of any image), so that a single image also runs on every
        // thread (`predict`'s batch of one).
        let image = g.in_h * g.in_w * g.channels;
        out.par_chunks_mut(g.out_w * g.channels)
            .with_min_len(2)
            .enumerate()
            .for_each(|(row, out)| depthwise_forward_row(&x[row / g.out_h * image..][..image], w, out, &g, row % g.out_h));
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

    fn patch_rows(x: FloatTensor<Self>, g: DepthwiseGeometry) -> FloatTensor<Self> {
        assert_eq!(x.dtype(), DType::F32, "patch_rows computes in f32");
        let x = contiguous(x);
        let x = f32s(&x);
        let width = g.kernel * g.kernel * g.channels;
        let mut rows = vec![0.0f32; g.batch * g.out_h * g.out_w * width];
        rows.par_chunks_mut(g.out_h * g.out_w * width)
            .zip(x.par_chunks(g.channels * g.in_h * g.in_w))
            .for_each(|(rows, x)| patch_rows_image(x, rows, &g));
        flex(rows, [g.batch * g.out_h * g.out_w, width])
    }

    fn pointwise_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, relu6: bool) -> FloatTensor<Self> {
        assert_eq!(x.dtype(), DType::F32, "pointwise_rows computes in f32");
        let bias = contiguous(bias);
        let b = f32s(&bias);
        let (rows, inner) = (x.layout().shape()[0], x.layout().shape()[1]);
        let columns = b.len();
        let (x_rs, x_cs) = strides_2d(&x);
        let (w_rs, w_cs) = strides_2d(&weight);
        let parallelism = if rows * columns * inner >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        // With ReLU6 (the expansions and the head: the largest outputs) the product is written
        // as is and one pass adds the bias and clamps. Without, the output starts as the bias
        // on every row and the product is added to it. Either way one pass over the output
        // besides the product's own (these maps are tens of MB: each pass is memory-bound).
        let fresh = relu6 && inner > 0 && columns > 0; // (a product over nothing writes nothing)
        let mut out = if fresh { Vec::with_capacity(rows * columns) } else { repeat_rows(b, rows) };
        // SAFETY: the pointers cover `rows × inner`, `inner × columns` and `rows × columns`
        // elements at the given strides (flex layouts of live tensors; `out` is ours, with room
        // for `rows × columns`). With `read_dst` false gemm writes every element of the output
        // without reading it, so the uninitialised buffer is never read and is whole after.
        unsafe {
            let x_ptr = x.storage::<f32>().as_ptr().add(x.layout().start_offset());
            let w_ptr = weight.storage::<f32>().as_ptr().add(weight.layout().start_offset());
            gemm::gemm(rows, columns, inner, out.as_mut_ptr(), 1, columns as isize, !fresh, x_ptr, x_cs, x_rs, w_ptr, w_cs, w_rs, 1.0f32, 1.0f32, false, false, false, parallelism);
            out.set_len(rows * columns);
        }
        if fresh {
            out.par_chunks_mut((ELEMENTWISE_CHUNK / columns).max(1) * columns).for_each(|chunk| bias_relu6_rows(chunk, b));
        } else if relu6 {
            out.par_chunks_mut(ELEMENTWISE_CHUNK).for_each(clamp_relu6);
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
