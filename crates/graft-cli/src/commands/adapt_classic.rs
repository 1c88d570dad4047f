//! `graft adapt --method tca|jda|gfk|sa|coral-shallow|pca|none`: the classic domain-adaptation
//! methods on fixed features (`graft::adapt::shallow`), no network trained.

use graft::adapt::shallow::{adapt_shallow, ShallowConfig, ShallowMethod};
use graft::zoo::graft_home;
use serde_json::json;

use super::adapt::AdaptArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

/// The flags of the classic methods (`graft adapt --method tca|jda|gfk|sa|coral-shallow|pca|none`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClassicArgs {
    /// Classic methods: the features adapted. raw:S (grey pixels, the centre square resized to
    /// S×S with a box filter, in [0, 1]; raw:S:bilinear for PIL's bilinear), a zoo model's
    /// pooled features (MODEL) or one layer's (MODEL:LAYER, as `graft extract --layer`), or a
    /// text model's embeddings (minilm-l6). [default: raw:16]
    #[arg(long)]
    pub features: Option<String>,
    /// Classic methods: the classifier trained on the transformed source: 1nn (the papers') or
    /// logistic (C by 5-fold cross-validation). [default: 1nn]
    #[arg(long)]
    pub classifier: Option<String>,
    /// TCA and JDA: linear (solved in feature space, the JDA code's primal) or rbf (over the
    /// training rows: n × n). [default: linear]
    #[arg(long)]
    pub kernel: Option<String>,
    /// γ of --kernel rbf, k(x, y) = exp(−γ‖x − y‖²). [default: 1 / the mean squared distance
    /// between the training rows]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// TCA and JDA: μ, the weight of the projection's norm against the MMD. [default: 1]
    #[arg(long)]
    pub mu: Option<f64>,
    /// Dimension kept: k of tca, jda and pca, the subspace d of gfk and sa. [default: 100 for
    /// tca, jda and pca; 20 for gfk and sa]
    #[arg(long)]
    pub dim: Option<usize>,
    /// JDA: solves, the first without pseudo-labels, each later one with the target's
    /// pseudo-labels from the one before. [default: 10]
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Classic methods: rows before the transform: l2 (each row to unit norm, the JDA code's),
    /// zscore (each feature, per domain) or none. [default: zscore for sa and coral-shallow, l2
    /// otherwise]
    #[arg(long)]
    pub normalize: Option<String>,
    /// Classic methods: images drawn at random (--seed) from the source. [default: all]
    #[arg(long)]
    pub source_samples: Option<usize>,
    /// Classic methods: images drawn at random (--seed) from the target; with --target-test the
    /// same as --target, the drawn images are also the test set (the JDA protocol). [default: all]
    #[arg(long)]
    pub target_samples: Option<usize>,
}

impl ClassicArgs {
    /// The first of these flags that was given, for refusing them with a network method.
    pub fn first_given(&self) -> Option<&'static str> {
        let ClassicArgs { features, classifier, kernel, gamma, mu, dim, iterations, normalize, source_samples, target_samples } = self;
        [
            (features.is_some(), "--features"),
            (classifier.is_some(), "--classifier"),
            (kernel.is_some(), "--kernel"),
            (gamma.is_some(), "--gamma"),
            (mu.is_some(), "--mu"),
            (dim.is_some(), "--dim"),
            (iterations.is_some(), "--iterations"),
            (normalize.is_some(), "--normalize"),
            (source_samples.is_some(), "--source-samples"),
            (target_samples.is_some(), "--target-samples"),
        ]
        .into_iter()
        .find(|(given, _)| *given)
        .map(|(_, flag)| flag)
    }
}

fn resolve(args: AdaptArgs, method: ShallowMethod) -> anyhow::Result<(ShallowConfig, std::path::PathBuf)> {
    let (Some(source), Some(target), Some(out)) = (args.source, args.target, args.out) else {
        anyhow::bail!("--method, --source, --target and --out are required");
    };
    // Flags of the network methods that have no default are refused rather than ignored.
    let network = [
        (args.epochs.is_some(), "--epochs"),
        (args.iters_per_epoch.is_some(), "--iters-per-epoch"),
        (args.lambda.is_some(), "--lambda"),
        (args.lambda_schedule.is_some(), "--lambda-schedule"),
        (args.pretrain_epochs.is_some(), "--pretrain-epochs"),
        (args.entropy, "--entropy"),
        (args.backbone != "lenet", "--backbone (the classic methods take --features)"),
    ];
    if let Some((_, flag)) = network.iter().find(|(given, _)| *given) {
        anyhow::bail!("{flag} applies to the network methods, not to --method {method}");
    }
    let c = args.classic;
    let mut config = ShallowConfig::new(method, &source, &target);
    config.target_test = args.target_test;
    config.data_root = args.data_root;
    config.weights = args.weights;
    config.seed = args.seed;
    if let Some(f) = c.features {
        config.features = f;
    }
    if let Some(v) = c.classifier {
        config.classifier = v.parse()?;
    }
    if let Some(v) = c.kernel {
        config.kernel = v.parse()?;
    }
    config.gamma = c.gamma;
    if let Some(mu) = c.mu {
        config.mu = mu;
    }
    config.dim = c.dim;
    if let Some(n) = c.iterations {
        config.iterations = n;
    }
    config.normalize = c.normalize.as_deref().map(str::parse).transpose()?;
    config.source_samples = c.source_samples;
    config.target_samples = c.target_samples;
    config.validate()?;
    Ok((config, out))
}

pub fn run(args: AdaptArgs, method: ShallowMethod, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let (config, run_dir) = resolve(args, method)?;
    let reporter = TermReporter::new();
    let s = adapt_shallow(&config, &run_dir, &graft_home(), &reporter, &device);
    drop(reporter);
    let s = s?;
    let mut value = serde_json::to_value(&s)?;
    // The deep methods' field for what the features come from.
    value["backbone"] = json!(s.features);
    out.result(&value, || {
        let mut t = format!("run {}: {} on {}, {} → {} ({} source, {} target rows of {}; {:.1} s)\n", s.run.display(), s.method, s.features, s.source, s.target, s.n_source_train, s.n_target, s.width, s.fit_seconds);
        if s.per_iteration.len() > 1 {
            for it in &s.per_iteration {
                if let Some(acc) = it.target_test_accuracy {
                    t.push_str(&format!("  iteration {}: target test accuracy {acc:.4}, {} pseudo-labels changed\n", it.iteration, it.pseudo_labels_changed));
                }
            }
        }
        if let Some(acc) = s.target_test_accuracy {
            let how = if s.transductive { " (the target's own images)" } else { "" };
            t.push_str(&format!("target test accuracy {acc:.4} on {} images{how}\n", s.n_target_test));
        }
        if !s.skipped.is_empty() {
            t.push_str(&format!("skipped {} unreadable files\n", s.skipped.len()));
        }
        t
    });
    Ok(())
}
