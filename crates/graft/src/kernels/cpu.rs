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

use super::{Act, DepthwiseGeometry, GraftOps};

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

/// e^y for y ≤ 0, in plain arithmetic that compiles to vector instructions: y = n·ln 2 + r
/// with |r| ≤ ln 2 / 2, e^r by its Taylor series to r⁶ (relative error below 1.2e-7), 2^n
/// written into the exponent bits. Below −87 (where e^y leaves f32's normal range) it is
/// e^−87.
#[inline(always)]
fn exp_nonpositive(y: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer, left in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 = LN2_HI − LN2_LO, LN2_HI with 9 significant bits so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = 2.121_944_4e-4;
    let y = y.max(-87.0);
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (y - n * LN2_HI) + n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    p * f32::from_bits(exponent << 23)
}

/// The standard normal distribution at x: (Φ(x), φ(x)). erfc(z) for z = |x|/√2 ≥ 0 by
/// Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), Φ from it by symmetry.
#[inline(always)]
fn normal_cdf_density(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_592, -0.284_496_736, 1.421_413_741, -1.453_152_027, 1.061_405_429];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let gauss = exp_nonpositive(-z * z); // e^{−x²/2}
    let half_erfc = 0.5 * t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4])))) * gauss;
    let cdf = if x >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    (cdf, gauss * 0.398_942_28) // 1/√(2π)
}

/// Exact GELU, x·Φ(x).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    x * normal_cdf_density(x).0
}

/// `act` on every value in place; the match is outside the loops, so each loop is one vector
/// expression.
#[inline(always)]
fn apply(values: &mut [f32], act: Act) {
    match act {
        Act::Identity => {}
        Act::Relu => values.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v }), // NaN stays NaN
        Act::Relu6 => clamp_relu6(values),
        Act::Gelu => values.iter_mut().for_each(|v| *v = gelu(*v)),
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

/// Channels `c0..c0 + N` of one output pixel: `acc = act(acc + Σ_taps x · w)`, the N sums in
/// registers across the taps.
#[inline(always)]
fn depthwise_block<const N: usize>(acc: &mut [f32], x: &[f32], w: &[f32], taps: &[(usize, usize)], c0: usize, act: Act) {
    let mut sum: [f32; N] = acc[c0..c0 + N].try_into().expect("N channels");
    for &(xo, wo) in taps {
        let (xs, ws) = (&x[xo + c0..xo + c0 + N], &w[wo + c0..wo + c0 + N]);
        for l in 0..N {
            sum[l] += xs[l] * ws[l];
        }
    }
    apply(&mut sum, act);
    acc[c0..c0 + N].copy_from_slice(&sum);
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
    /// `out[ow, :] = act(bias + Σ_taps x[ih, iw, :] · w[kh, kw, :])`.
    /// Channels go in blocks of 64, then 16, then one by one, each block's sums kept in
    /// registers over all taps (not re-read from `out` per tap).
    fn depthwise_forward_row(x: &[f32], w: &[f32], out: &mut [f32], g: &DepthwiseGeometry, oh: usize, act: Act) {
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
                depthwise_block::<64>(acc, x, w, taps, c0, act);
                c0 += 64;
            }
            while c0 + 16 <= c {
                depthwise_block::<16>(acc, x, w, taps, c0, act);
                c0 += 16;
            }
            while c0 < c {
                depthwise_block::<1>(acc, x, w, taps, c0, act);
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

    /// In place on whole rows: `y = act(y + bias)`.
    fn bias_act_rows(values: &mut [f32], bias: &[f32], act: Act) {
        for row in values.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            apply(row, act);
        }
    }

    /// In place: `values = act(values)`.
    fn act_in_place(values: &mut [f32], act: Act) {
        apply(values, act);
    }

    /// `out = act(a)`, into fresh memory.
    fn act_into(a: &[f32], out: &mut [std::mem::MaybeUninit<f32>], act: Act) {
        // Copy, then the activation on the same (cache-resident) chunk.
        for chunk in 0..a.len().div_ceil(1024) {
            let range = chunk * 1024..((chunk + 1) * 1024).min(a.len());
            let out = &mut out[range.clone()];
            for (o, v) in out.iter_mut().zip(&a[range]) {
                o.write(*v);
            }
            // SAFETY: every element of `out` was written just above.
            apply(unsafe { &mut *(out as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }, act);
        }
    }

    /// In place: `a = act(a + b)`.
    fn add_act(a: &mut [f32], b: &[f32], act: Act) {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        apply(a, act);
    }

    /// In place on the gradient of `act`'s output, given its output (ReLU, ReLU6) or its input
    /// (GELU): ReLU's passes where the output is positive, ReLU6's where it is strictly
    /// between 0 and 6, GELU's is multiplied by Φ(x) + x·φ(x).
    fn act_grad(saved: &[f32], grad: &mut [f32], act: Act) {
        match act {
            Act::Identity => {}
            Act::Relu => grad.iter_mut().zip(saved).for_each(|(g, y)| if !(*y > 0.0) { *g = 0.0 }),
            Act::Relu6 => grad.iter_mut().zip(saved).for_each(|(g, y)| if !(*y > 0.0 && *y < 6.0) { *g = 0.0 }),
            Act::Gelu => grad.iter_mut().zip(saved).for_each(|(g, x)| {
                let (cdf, density) = normal_cdf_density(*x);
                *g *= cdf + x * density;
            }),
        }
    }
}

simd_variants! {
    /// Softmax of one row of attention scores, in place: e^(x − max) over their sum. A row
    /// holding a NaN comes out all NaN (as burn's softmax would leave it), so that a diverged
    /// network still shows.
    fn softmax_row(row: &mut [f32]) {
        const LANES: usize = 16;
        let (mut max, mut total) = ([f32::NEG_INFINITY; LANES], [0.0f32; LANES]);
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for l in 0..LANES {
                max[l] = if chunk[l] > max[l] { chunk[l] } else { max[l] };
                total[l] += chunk[l];
            }
        }
        let tail = chunks.remainder();
        let mut max = max.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
        if (total.iter().sum::<f32>() + tail.iter().sum::<f32>()).is_nan() {
            max = f32::NAN;
        }
        let mut sum = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for l in 0..LANES {
                chunk[l] = exp_nonpositive(chunk[l] - max);
                sum[l] += chunk[l];
            }
        }
        let mut sum = sum.iter().sum::<f32>();
        for x in chunks.into_remainder() {
            *x = exp_nonpositive(*x - max);
            sum += *x;
        }
        let scale = if max.is_nan() { f32::NAN } else { 1.0 / sum };
        row.iter_mut().for_each(|x| *x *= scale);
    }
}

/// One image's multi-head self-attention: `qkv` its tokens' fused projections `[T, 3D]` (q, k
/// and v side by side, each `[T, D]` of `heads` column blocks of `hd`), `out` its result
/// `[T, D]`, head by head `softmax(q·kᵀ/√hd)·v` into the head's columns. Both products read q,
/// k and v in place through strides (no per-head copies); `scores` is a `[T, T]` scratch buffer.
fn attention_image(qkv: &[f32], out: &mut [f32], scores: &mut [f32], tokens: usize, heads: usize, parallelism: gemm::Parallelism) {
    let d = out.len() / tokens;
    let hd = d / heads;
    assert!(qkv.len() == tokens * 3 * d && out.len() == tokens * d && scores.len() == tokens * tokens && hd * heads == d, "attention_image: buffers do not fit {tokens} tokens of {heads} heads");
    let (t, stride) = (tokens as isize, 3 * d as isize);
    let scale = 1.0 / (hd as f32).sqrt();
    for h in 0..heads {
        // SAFETY: q, k and v of head h are the column blocks h·hd, D + h·hd and 2D + h·hd of
        // `qkv`'s T rows (row stride 3D), all inside it; `scores` is T×T (row stride T) and the
        // head's output the column block h·hd of `out`'s T rows (row stride D). With `read_dst`
        // false gemm writes every element of its output without reading it.
        unsafe {
            let q = qkv.as_ptr().add(h * hd);
            let (k, v) = (q.add(d), q.add(2 * d));
            // scores = q · kᵀ / √hd, [T, T]: kᵀ's element (c, j) is k's (j, c).
            gemm::gemm(tokens, tokens, hd, scores.as_mut_ptr(), 1, t, false, q, 1, stride, k, stride, 1, 0.0f32, scale, false, false, false, parallelism);
            for row in scores.chunks_exact_mut(tokens) {
                softmax_row(row);
            }
            // out[:, h·hd..] = softmax(scores) · v, [T, hd].
            gemm::gemm(tokens, hd, tokens, out.as_mut_ptr().add(h * hd), 1, d as isize, false, scores.as_ptr(), 1, t, v, 1, stride, 0.0f32, 1.0f32, false, false, false, parallelism);
        }
    }
}

/// A fresh tensor of `x`'s shape: `f` writes its every element from `x`'s, chunk by chunk
/// across rayon's threads.
fn map_fresh(x: &FlexTensor, f: impl Fn(&[f32], &mut [std::mem::MaybeUninit<f32>]) + Sync) -> FlexTensor {
    let src = f32s(x);
    let mut out = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()].par_chunks_mut(ELEMENTWISE_CHUNK).zip(src.par_chunks(ELEMENTWISE_CHUNK)).for_each(|(out, src)| f(src, out));
    // SAFETY: `f` wrote every slot (each kernel passed to it writes its whole output chunk).
    unsafe { out.set_len(src.len()) };
    flex(out, x.layout().shape().clone())
}

/// Whether the tensor's buffer can be written in place: held once, contiguous from its start
/// to its end.
fn writable(tensor: &FlexTensor) -> bool {
    let elements = tensor.layout().num_elements();
    tensor.is_unique() && tensor.layout().contiguous_offsets() == Some((0, elements)) && tensor.bytes().len() == elements * 4
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
    if writable(&tensor) {
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
    fn depthwise_nhwc(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, g: DepthwiseGeometry, act: Act) -> FloatTensor<Self> {
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
            .for_each(|(row, out)| depthwise_forward_row(&x[row / g.out_h * image..][..image], w, out, &g, row % g.out_h, act));
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

    fn pointwise_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        assert_eq!(x.dtype(), DType::F32, "pointwise_rows computes in f32");
        let bias = contiguous(bias);
        let b = f32s(&bias);
        let (rows, inner) = (x.layout().shape()[0], x.layout().shape()[1]);
        let columns = b.len();
        let (x_rs, x_cs) = strides_2d(&x);
        let (w_rs, w_cs) = strides_2d(&weight);
        let parallelism = if rows * columns * inner >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
        // With an activation (the expansions and the head: the largest outputs) the product is
        // written as is and one pass adds the bias and applies it. Without, the output starts
        // as the bias on every row and the product is added to it. Either way one pass over the
        // output besides the product's own (these maps are tens of MB: each pass is
        // memory-bound).
        let fresh = act != Act::Identity && inner > 0 && columns > 0; // (a product over nothing writes nothing)
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
            out.par_chunks_mut((ELEMENTWISE_CHUNK / columns).max(1) * columns).for_each(|chunk| bias_act_rows(chunk, b, act));
        } else if act != Act::Identity {
            out.par_chunks_mut(ELEMENTWISE_CHUNK).for_each(|chunk| act_in_place(chunk, act));
        }
        flex(out, [rows, columns])
    }

    fn attention_rows(qkv: FloatTensor<Self>, batch: usize, heads: usize) -> FloatTensor<Self> {
        assert_eq!(qkv.dtype(), DType::F32, "attention_rows computes in f32");
        let qkv = contiguous(qkv);
        let (rows, width) = (qkv.layout().shape()[0], qkv.layout().shape()[1]);
        let (tokens, d) = (rows / batch.max(1), width / 3);
        let qkv = f32s(&qkv);
        let mut out = vec![0.0f32; rows * d];
        if rows == 0 || d == 0 {
            return flex(out, [rows, d]);
        }
        // One task per image; with fewer images than threads, each product uses them all.
        let parallelism = if batch >= rayon::current_num_threads() { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(0) };
        out.par_chunks_mut(tokens * d).zip(qkv.par_chunks(tokens * width)).for_each_init(
            || vec![0.0f32; tokens * tokens],
            |scores, (out, qkv)| attention_image(qkv, out, scores, tokens, heads, parallelism),
        );
        flex(out, [rows, d])
    }

    fn activation(x: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        assert_eq!(x.dtype(), DType::F32, "graft's activations compute in f32");
        let mut x = contiguous(x);
        if !writable(&x) {
            return map_fresh(&x, |src, out| act_into(src, out, act));
        }
        storage_mut(&mut x).par_chunks_mut(ELEMENTWISE_CHUNK).for_each(|chunk| act_in_place(chunk, act));
        x
    }

    fn add_activation(a: FloatTensor<Self>, b: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        assert_eq!(a.dtype(), DType::F32, "graft's activations compute in f32");
        // Into whichever operand is free to overwrite (the residual branch's fresh output,
        // usually), else into a copy of `a`.
        let (a, b) = (contiguous(a), contiguous(b));
        let (mut into, other) = if writable(&a) || !writable(&b) { (owned(a), b) } else { (b, a) };
        let other = f32s(&other);
        storage_mut(&mut into).par_chunks_mut(ELEMENTWISE_CHUNK).zip(other.par_chunks(ELEMENTWISE_CHUNK)).for_each(|(x, y)| add_act(x, y, act));
        into
    }

    fn activation_backward(saved: FloatTensor<Self>, grad: FloatTensor<Self>, act: Act) -> FloatTensor<Self> {
        let saved = contiguous(saved);
        let y = f32s(&saved);
        let mut grad = owned(grad);
        storage_mut(&mut grad)
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(y.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(g, y)| act_grad(y, g, act));
        grad
    }
}
