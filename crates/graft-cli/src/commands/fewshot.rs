//! `graft eval --episodes N --way W --shot K`: few-shot episodes on a run's trunk features or
//! straight on a backbone's ([`graft::fewshot`]).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use graft::data::folder::ImageFolder;
use graft::fewshot::{self, EpisodeSpec, FewShotClassifier};
use graft::report::Reporter;
use graft::zoo::{graft_home, ModelSpec, Pretrained};
use serde_json::json;

use crate::output::Output;
use crate::reporter::TermReporter;

/// The few-shot flags of `graft eval`.
#[derive(Debug, clap::Args)]
pub struct EpisodeArgs {
    /// Few-shot evaluation instead of the run's own classifier: draw this many random episodes
    /// from --data (a folder of class sub-folders), each of --way classes with --shot support and
    /// --query query images per class (never a support image in its own query), fit each
    /// --classifier on the support images' features and score it on the queries; prints the
    /// mean accuracy with its 95 % confidence interval (1.96 · std / √N). Features come from
    /// --run's trunk or --model's, through the feature cache. [default: none: no episodes]
    #[arg(long, value_name = "N", conflicts_with = "zero_shot")]
    pub episodes: Option<usize>,
    /// Classes per episode.
    #[arg(long, value_name = "W", default_value_t = 5, requires = "episodes")]
    pub way: usize,
    /// Support (training) images per class in an episode.
    #[arg(long, value_name = "K", default_value_t = 1, requires = "episodes")]
    pub shot: usize,
    /// Query (test) images per class in an episode.
    #[arg(long, value_name = "Q", default_value_t = fewshot::DEFAULT_QUERY, requires = "episodes")]
    pub query: usize,
    /// Classifiers fitted on each episode, comma-separated: prototype (nearest class mean,
    /// cosine), 1nn (nearest support image, cosine), logistic (L2 penalty, C = 1, on L2-normalised
    /// features).
    #[arg(long, value_delimiter = ',', default_value = "prototype,1nn,logistic", requires = "episodes")]
    pub classifier: Vec<String>,
    /// Random seed of the episodes.
    #[arg(long, default_value_t = 0, requires = "episodes")]
    pub seed: u64,
    /// The layer whose globally-average-pooled activations the episodes use: pooled, or a stage
    /// as `graft probe` names it (_blocks.12 for EfficientNet-Lite).
    #[arg(long, default_value = "pooled", requires = "episodes")]
    pub layer: String,
}

/// Where the features come from.
enum Source {
    Run { run: PathBuf, allow_unfinished: bool },
    Model(&'static ModelSpec),
}

/// Runs the episodes of `args` on `data`, with features of `run`'s trunk, else of `model`
/// (efficientnet-lite0 when neither is given).
#[allow(clippy::too_many_arguments)]
pub fn run(args: EpisodeArgs, episodes: usize, run: Option<PathBuf>, model: Option<String>, allow_unfinished: bool, data: &Path, batch: usize, device: &Device, out: &Output) -> anyhow::Result<()> {
    // Every flag is used below: a new one fails to compile until it is.
    let EpisodeArgs { episodes: _, way, shot, query, classifier, seed, layer } = args;
    let spec = EpisodeSpec { episodes, way, shot, query, seed };
    let mut classifiers = Vec::new();
    for c in &classifier {
        let c = FewShotClassifier::parse(c.trim())?;
        if !classifiers.contains(&c) {
            classifiers.push(c);
        }
    }
    let source = match (run, model) {
        (Some(run), _) => Source::Run { run, allow_unfinished },
        (None, model) => {
            let id = model.unwrap_or_else(|| "efficientnet-lite0".into());
            anyhow::ensure!(!graft::text::is_text_model(&id), "few-shot episodes run on image features: --model {id} is a text encoder (give an image model such as efficientnet-lite0)");
            Source::Model(ModelSpec::find(&id)?)
        }
    };
    let folder = ImageFolder::scan(data)?;
    // The settings are checked against the folder's counts before any image goes through a trunk.
    let counts: Vec<usize> = folder.samples.iter().map(|s| s.label).collect();
    spec.check(&counts, &folder.classes)?;
    let reporter = TermReporter::new();
    let home = graft_home();
    let (trunk, described) = match &source {
        Source::Run { run, allow_unfinished } => (fewshot::run_trunk(run, *allow_unfinished, device)?, json!({"run": run})),
        Source::Model(spec) => (Pretrained::load(spec, None, &home, &reporter, device)?, json!({"model": spec.id})),
    };
    let features = fewshot::image_features(&trunk, &folder, &layer, &home, batch, device, &reporter)?;
    for s in &features.skipped {
        reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    let scores = fewshot::evaluate(&features.rows, features.dim, &features.labels, &folder.classes, &spec, &classifiers, &reporter)?;
    let skipped: Vec<_> = features.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect();
    let value = json!({
        "kind": "few-shot",
        "source": described,
        "model": trunk.spec.id,
        "layer": layer,
        "data": data,
        "classes": folder.classes.len(),
        "images": features.labels.len(),
        "dim": features.dim,
        "episodes": spec.episodes, "way": spec.way, "shot": spec.shot, "query": spec.query, "seed": spec.seed,
        "classifiers": scores,
        "trunk_images": features.trunk_images,
        "skipped": skipped,
    });
    out.result(&value, || {
        let from = match &source {
            Source::Run { run, .. } => format!("the trunk of {}", run.display()),
            Source::Model(spec) => spec.id.to_string(),
        };
        let mut t = format!(
            "{}-way {}-shot, {} queries per class, {} episodes (seed {}) on {} images of {} classes\nfeatures: {from}, {layer} ({}-d); {} images through the trunk, the rest from the feature cache\n\n",
            spec.way,
            spec.shot,
            spec.query,
            spec.episodes,
            spec.seed,
            features.labels.len(),
            folder.classes.len(),
            features.dim,
            features.trunk_images
        );
        t.push_str("  classifier  accuracy ± 95 % CI     std\n");
        for s in &scores {
            t.push_str(&format!("  {:<10}  {:.4} ± {:.4}      {:.4}\n", s.classifier.name(), s.mean, s.ci95, s.std));
        }
        t
    });
    Ok(())
}
