//! `graft bench`: speed figures (a benchmark, not a test). Each case has a PyTorch twin in
//! `bench/torch_reference.py`, run side by side by `bench/compare`.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Module, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use graft::train::loss::cross_entropy;
use graft::zoo::efficientnet::{global_avg_pool, EfficientNetLite, HEAD_CHANNELS};
use graft::zoo::trunk::TrunkConfig;
use graft::zoo::{graft_home, ModelSpec, Pretrained};
use serde_json::json;

use crate::cli::{BenchArgs, BenchCase};
use crate::output::Output;
use crate::reporter::TermReporter;

/// Classes of the new head in `tail-train` and `head-epoch`.
const CLASSES: usize = 3;
/// Cached feature rows in `head-epoch` (one epoch over them).
const HEAD_ROWS: usize = 10_000;

/// What to measure, resolved from the flags (nothing is loaded or run).
struct Bench {
    case: BenchCase,
    spec: &'static ModelSpec,
    weights: Option<PathBuf>,
    batch: usize,
    iters: usize,
    warmup: usize,
    layered: bool,
}

/// Every flag is named here, so a new one fails to compile until it is resolved.
fn resolve(args: BenchArgs) -> anyhow::Result<Bench> {
    let BenchArgs { device: _, case, model, arch, weights, batch, iters, warmup, layered } = args;
    if batch == 0 || iters == 0 {
        anyhow::bail!("--batch and --iters must be at least 1");
    }
    let spec = super::model_spec(&model, arch.as_deref(), weights.as_deref())?;
    anyhow::ensure!(weights.is_none() || matches!(case, BenchCase::Forward | BenchCase::Latency), "--weights is used by `graft bench forward` and `latency` only");
    Ok(Bench { case, spec, weights, batch, iters, warmup, layered })
}

pub fn run(args: BenchArgs, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let args = resolve(args)?;
    let spec = args.spec;
    let threads = graft::zoo::fold::batch_threads();
    let (value, text) = match args.case {
        BenchCase::Forward => {
            // Random weights unless --weights: the arithmetic is the same as with pretrained ones.
            let net = match &args.weights {
                Some(file) => Pretrained::load(spec, Some(file), &graft_home(), &TermReporter::new(), &device)?.net,
                None => spec.config().init(&device),
            };
            let size = spec.config().resolution();
            let input = Tensor::<4>::random([args.batch, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
            // What predict/extract/the frozen prefix run: BatchNorm folded, batch split across
            // threads; `--layered` measures the plain layer-by-layer network instead.
            let folded = (!args.layered).then(|| net.for_inference());
            let median = median_seconds(args.warmup, args.iters, || {
                let logits = match &folded {
                    Some(folded) => folded.forward(input.clone()),
                    None => net.forward(input.clone()),
                };
                let _ = logits.into_data(); // wait for the result
            });
            let images_per_s = args.batch as f64 / median;
            (
                json!({
                    "case": "forward", "model": spec.id, "batch": args.batch, "resolution": size, "weights": args.weights,
                    "iters": args.iters, "median_seconds": median, "images_per_second": images_per_s,
                    "threads": threads, "device": graft::device::record(&device), "simd": graft::kernels::simd().name(), "layered": args.layered,
                }),
                format!(
                    "{} forward{}, batch {}, {size}x{size}: {images_per_s:.1} images/s (median of {} runs, {median:.3} s per batch, {threads} threads)\n",
                    spec.id, if args.layered { " (layered)" } else { "" }, args.batch, args.iters
                ),
            )
        }
        BenchCase::Latency => {
            let net = match &args.weights {
                Some(file) => Pretrained::load(spec, Some(file), &graft_home(), &TermReporter::new(), &device)?.net,
                None => spec.config().init(&device),
            };
            let preprocess = spec.preprocess();
            let image = latency_image();
            let folded = net.for_inference();
            let median = median_seconds(args.warmup, args.iters, || {
                let pixels = preprocess.apply(&image);
                let size = preprocess.size as usize;
                let x = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, size, size]), &device);
                let probs = burn::tensor::activation::softmax(folded.forward(x), 1);
                let _ = probs.into_data(); // wait for the result
            });
            let ms = median * 1e3;
            (
                json!({
                    "case": "latency", "model": spec.id, "image": [LATENCY_W, LATENCY_H], "weights": args.weights,
                    "iters": args.iters, "median_seconds": median, "median_ms": ms,
                    "threads": threads, "device": graft::device::record(&device), "simd": graft::kernels::simd().name(),
                }),
                format!(
                    "{} latency, one {LATENCY_W}x{LATENCY_H} decoded image to probabilities: {ms:.1} ms (median of {} runs, {threads} threads)\n",
                    spec.id, args.iters
                ),
            )
        }
        BenchCase::FullTrain => {
            let (median, input) = tail_train(spec, &args, &device, true)?;
            let images_per_s = args.batch as f64 / median;
            (
                json!({
                    "case": "full_train", "model": spec.id, "batch": args.batch, "input": input,
                    "trained": "the whole network and a new 3-class linear (BatchNorm in inference mode)",
                    "optimizer": "adamw", "iters": args.iters, "median_seconds": median,
                    "images_per_second": images_per_s, "threads": threads, "device": graft::device::record(&device), "simd": graft::kernels::simd().name(),
                }),
                format!(
                    "{} full fine-tune (all stages + linear, forward+backward+AdamW), batch {}: {images_per_s:.1} images/s (median of {} steps, {median:.3} s per step, {threads} threads)\n",
                    spec.id, args.batch, args.iters
                ),
            )
        }
        BenchCase::TailTrain => {
            let (median, input) = tail_train(spec, &args, &device, false)?;
            let images_per_s = args.batch as f64 / median;
            (
                json!({
                    "case": "tail_train", "model": spec.id, "batch": args.batch, "input": input,
                    "trained": "blocks 13-15, head conv+BN, new 3-class linear (BatchNorm in inference mode)",
                    "optimizer": "adamw", "iters": args.iters, "median_seconds": median,
                    "images_per_second": images_per_s, "threads": threads, "device": graft::device::record(&device), "simd": graft::kernels::simd().name(),
                }),
                format!(
                    "{} tail train (blocks 13-15 + head + linear, forward+backward+AdamW), batch {}: {images_per_s:.1} images/s (median of {} steps, {median:.3} s per step, {threads} threads)\n",
                    spec.id, args.batch, args.iters
                ),
            )
        }
        BenchCase::HeadEpoch => {
            let median = head_epoch(&args, &device);
            let rows_per_s = HEAD_ROWS as f64 / median;
            (
                json!({
                    "case": "head_epoch", "rows": HEAD_ROWS, "dim": HEAD_CHANNELS, "classes": CLASSES,
                    "batch": args.batch, "optimizer": "adamw", "iters": args.iters, "median_seconds": median,
                    "rows_per_second": rows_per_s, "threads": threads, "device": graft::device::record(&device), "simd": graft::kernels::simd().name(),
                }),
                format!(
                    "linear head epoch on {HEAD_ROWS} cached {HEAD_CHANNELS}-d features, batch {}: {median:.3} s per epoch ({rows_per_s:.0} rows/s, median of {} epochs, {threads} threads)\n",
                    args.batch, args.iters
                ),
            )
        }
    };
    out.result(&value, || text);
    Ok(())
}

/// The decoded image of the `latency` case: a 500×375 photo-sized pattern (the same formula in
/// `bench/torch_reference.py`).
const LATENCY_W: u32 = 500;
const LATENCY_H: u32 = 375;

fn latency_image() -> image::RgbImage {
    image::RgbImage::from_fn(LATENCY_W, LATENCY_H, |x, y| image::Rgb([((x * 7 + y * 3) % 256) as u8, ((x * 2 + y * 5) % 256) as u8, ((x ^ y) % 256) as u8]))
}

/// Median wall time of `iters` calls of `step` after `warmup` untimed ones.
fn median_seconds(warmup: usize, iters: usize, mut step: impl FnMut()) -> f64 {
    let mut times = Vec::new();
    for i in 0..warmup + iters {
        let start = Instant::now();
        step();
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The trained tail of a fine-tune: the last three MBConv blocks, the head convolution and its
/// BatchNorm, and a new linear classifier. It runs through the network's own
/// `forward_stages`, as `fit` does (channels-last on the CPU).
#[derive(Module, Debug)]
struct Tail {
    net: EfficientNetLite,
    fc: Linear,
    first_stage: usize,
}

impl Tail {
    /// [N, C, h, w] (block 13's input) → [N, classes]
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.net.forward_stages(x, self.first_stage..self.net.num_stages()); // [N, 1280, h', w']
        self.fc.forward(global_avg_pool(x)) // [N, classes]
    }
}

/// Median seconds per training step of the tail (of the whole network when `whole`); also the
/// input shape it was fed.
fn tail_train(spec: &ModelSpec, args: &Bench, device: &Device, whole: bool) -> anyhow::Result<(f64, [usize; 4])> {
    let TrunkConfig::Lite(config) = spec.config() else {
        anyhow::bail!("--model {}: tail-train is defined for EfficientNet-Lite models", spec.id);
    };
    let size = config.resolution;
    let first = config.blocks().len().checked_sub(3).ok_or_else(|| anyhow::anyhow!("{} has fewer than 3 blocks", spec.id))?;
    // Block `first`'s input shape, from one image through the stages before it.
    let [_, c, h, w] = match whole {
        true => [1, 3, size, size],
        false => config.init(device).forward_stages(Tensor::<4>::zeros([1, 3, size, size], device), 0..first + 1).dims(),
    };
    let train_device = device.clone().autodiff();
    let mut net = config.init(&train_device);
    net._fc = None;
    let tail = Tail { net, fc: LinearConfig::new(HEAD_CHANNELS, CLASSES).init(&train_device), first_stage: if whole { 0 } else { first + 1 } };
    // graft's default when fine-tuning: BatchNorm keeps its running statistics (scale and
    // shift still train); the PyTorch twin runs its BatchNorm in eval mode likewise.
    let flags = ParamGroup::from_regex(r"\.training$").map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut tail = tail.freeze_group(flags);
    let mut optimizer = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.01).init();
    // The input to block 13 is precomputed (the frozen prefix's cached activations).
    let high = if whole { 1.0 } else { 6.0 };
    let input = Tensor::<4>::random([args.batch, c, h, w], Distribution::Uniform(0.0, high), &train_device);
    let targets: Vec<usize> = (0..args.batch).map(|i| i % CLASSES).collect();
    let median = median_seconds(args.warmup, args.iters, || {
        let logits = tail.forward(input.clone());
        let loss = cross_entropy(logits, &targets, 0.0, None, &train_device);
        let grads = GradientsParams::from_grads(loss.backward(), &tail);
        tail = optimizer.step(1e-4, tail.clone(), grads);
        let _ = tail.fc.bias.as_ref().map(|b| b.val().into_data()); // wait for the step
    });
    Ok((median, [args.batch, c, h, w]))
}

/// Median seconds of one epoch of a linear head over `HEAD_ROWS` cached feature rows.
fn head_epoch(args: &Bench, device: &Device) -> f64 {
    let train_device = device.clone().autodiff();
    let rows: Vec<f32> = Tensor::<2>::random([HEAD_ROWS, HEAD_CHANNELS], Distribution::Uniform(0.0, 2.0), device)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let labels: Vec<usize> = (0..HEAD_ROWS).map(|i| i % CLASSES).collect();
    let mut head = LinearConfig::new(HEAD_CHANNELS, CLASSES).init(&train_device);
    let mut optimizer = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.01).init();
    median_seconds(args.warmup, args.iters, || {
        for start in (0..HEAD_ROWS).step_by(args.batch) {
            let end = (start + args.batch).min(HEAD_ROWS);
            // Rows come from the cache as f32 slices, as in `fit`.
            let data = TensorData::new(rows[start * HEAD_CHANNELS..end * HEAD_CHANNELS].to_vec(), [end - start, HEAD_CHANNELS]);
            let x = Tensor::<2>::from_data(data, &train_device);
            let loss = cross_entropy(head.forward(x), &labels[start..end], 0.0, None, &train_device);
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            head = optimizer.step(1e-3, head.clone(), grads);
        }
        let _ = head.weight.val().into_data(); // wait for the last step
    })
}
