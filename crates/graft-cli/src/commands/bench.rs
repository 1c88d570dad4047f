use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use graft::device::{default_device, device_name};
use graft::zoo::ModelSpec;
use serde_json::json;

use crate::cli::{BenchArgs, BenchCase};
use crate::output::Output;

pub fn run(args: BenchArgs, out: &Output) -> anyhow::Result<()> {
    if args.batch == 0 || args.iters == 0 {
        anyhow::bail!("--batch and --iters must be at least 1");
    }
    let spec = ModelSpec::find(&args.model)?;
    let device = default_device();
    match args.case {
        BenchCase::Forward => {
            // Random weights: the arithmetic is the same as with the pretrained ones.
            let net = spec.config().init(&device);
            let size = spec.config().resolution();
            let input = Tensor::<4>::random([args.batch, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
            let mut times = Vec::new();
            for i in 0..args.warmup + args.iters {
                let start = Instant::now();
                let logits = net.forward(input.clone());
                let _ = logits.into_data(); // wait for the result
                if i >= args.warmup {
                    times.push(start.elapsed().as_secs_f64());
                }
            }
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let images_per_s = args.batch as f64 / median;
            let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse::<usize>().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let value = json!({
                "case": "forward", "model": spec.id, "batch": args.batch, "resolution": size,
                "iters": args.iters, "median_seconds": median, "images_per_second": images_per_s,
                "threads": threads, "device": device_name(&device),
            });
            out.result(&value, || {
                format!(
                    "{} forward, batch {}, {}x{}: {:.1} images/s (median of {} runs, {:.3} s per batch, {} threads)\n",
                    spec.id, args.batch, size, size, images_per_s, args.iters, median, threads
                )
            });
        }
    }
    Ok(())
}
