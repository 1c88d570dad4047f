use graft::report::Reporter;
use graft::data::folder::ImageFolder;
use graft::device::default_device;
use graft::train::run::{load_run, predict_files, run_store, top1, Evaluation};
use graft::zoo::graft_home;
use serde_json::json;

use crate::cli::EvalArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

pub fn run(args: EvalArgs, out: &Output) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    if graft::train::text::is_text_run(&args.run) || graft::adapt::text::is_text_adapt_run(&args.run) {
        return super::text::eval(&args, out);
    }
    if graft::adapt::is_adapt_run(&args.run) {
        return eval_adapted(&args, out);
    }
    let device = default_device();
    if graft::transfer::autoencoder::is_mlp_run(&args.run) {
        let (eval, skipped) = graft::transfer::autoencoder::evaluate_run(&args.run, &args.data, &device)?;
        return report(&eval, &skipped, out);
    }
    let (info, model) = load_run(&args.run, &device)?;
    let folder = ImageFolder::scan_with_classes(&args.data, &info.classes)?;
    let reporter = TermReporter::new();
    // A frozen-trunk run's features may already be in the cache (and are kept there).
    let mut store = run_store(&info, &graft_home())?;
    let (probs, skipped) = predict_files(&model, &info.preprocess, &folder.samples, args.batch, &device, &reporter, store.as_mut());
    let mut truth = Vec::new();
    let mut rows = Vec::new();
    for (p, s) in probs.into_iter().zip(&folder.samples) {
        if let Some(p) = p {
            truth.push(s.label);
            rows.push(p);
        }
    }
    anyhow::ensure!(!rows.is_empty(), "{}: no readable images", args.data.display());
    let eval = Evaluation::from_predictions(&info.classes, &truth, &top1(&rows));
    print_evaluation(out, &eval, &skipped, "images", None);
    Ok(())
}

/// A `graft adapt` run: its kept network on a labelled folder or a digit set.
fn eval_adapted(args: &EvalArgs, out: &Output) -> anyhow::Result<()> {
    let device = default_device();
    let reporter = TermReporter::new();
    let model = graft::adapt::load_adapted(&args.run, &graft_home(), None, &reporter, &device)?;
    let data = args.data.to_string_lossy();
    let spec = graft::adapt::data::DomainSpec::parse("--data", &data)?;
    let (eval, skipped) = model.evaluate_domain(&spec, "--data", &args.data_root, args.batch, &reporter, &device)?;
    for s in &skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    print_evaluation(out, &eval, &skipped, "images", None);
    Ok(())
}

fn report(eval: &Evaluation, skipped: &[graft::data::folder::Skipped], out: &Output) -> anyhow::Result<()> {
    print_evaluation(out, eval, skipped, "images", None);
    Ok(())
}

/// Prints the evaluation (accuracy, per class, confusion, skipped inputs; for texts also the
/// embedding cache's hits and misses) of `n` `noun`s.
pub(super) fn print_evaluation(out: &Output, eval: &Evaluation, skipped: &[graft::data::folder::Skipped], noun: &str, cache: Option<graft::text::features::EmbedStats>) {
    let skipped: Vec<_> = skipped.iter().map(|s| json!({"file": s.path, "reason": s.reason})).collect();
    let mut value = json!({
        "accuracy": eval.accuracy, "n": eval.n, "per_class": eval.per_class,
        "confusion": eval.confusion, "labels": eval.labels, "skipped": skipped,
    });
    if let Some(cache) = cache {
        value["cache"] = json!(cache);
    }
    out.result(&value, || {
        let mut t = format!("accuracy {:.4} on {} {noun}\n", eval.accuracy, eval.n);
        for (label, acc) in &eval.per_class {
            t.push_str(&format!("  {label:<20} {acc:.4}\n"));
        }
        t
    });
}
