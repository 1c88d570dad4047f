//! `graft pretrain`: greedy layer-wise pretraining (autoencoders or RBMs), siamese and
//! contrastive pretraining of the whole encoder, and corrupted-text pretraining of a word encoder.

use std::path::PathBuf;

use graft::transfer::autoencoder::{pretrain, PretrainConfig};
use graft::transfer::corrupt::{self, CorruptTextConfig};
use graft::transfer::trunk::{self, TrunkPretrainConfig};
use graft::zoo::graft_home;
use serde_json::json;

use crate::output::Output;
use crate::reporter::TermReporter;

/// Arguments of `graft pretrain`.
///
/// Each hidden layer of the MLP is trained in turn, as an autoencoder (sigmoid code, linear
/// decoder, mean squared error, Adam) or as an RBM (contrastive divergence, Adam), on the codes
/// of the frozen layers below; the labels of --data are never read. `graft fit --init RUN` then
/// adds a classifier and fine-tunes. --method corrupted-text trains a word encoder on unlabelled
/// text to score each real sentence above a copy with a word replaced or two words swapped
/// (hinge loss, Collobert & Weston 2008); `graft fit --init RUN` on labelled text then fine-tunes
/// it with a linear classifier.
///
/// With --model, siamese and contrastive train a pretrained trunk's top instead: the stem and
/// the blocks --freeze names stay frozen (BatchNorm in inference mode), their activations are
/// computed once (--cache-views augmented views per image, in the feature cache), and the top
/// trains; the run writes RUN/trunk.safetensors under the checkpoint's own names, for
/// `graft fit --model M --weights RUN/trunk.safetensors`.
#[derive(Debug, clap::Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// autoencoder, rbm (stacked restricted Boltzmann machines, CD-k), siamese (pairs known to be
    /// the same or different, --pairs; contrastive loss) or contrastive (SimCLR: two random views
    /// of each image, NT-Xent) or corrupted-text (a word encoder scoring real sentences above
    /// corrupted copies; --data is text). [default: none; required without --resume]
    #[arg(long, required_unless_present = "resume")]
    pub method: Option<String>,
    /// Images (28×28 grey, e.g. from `graft data import mnist`); class sub-folders, labels
    /// unused. Corrupted-text: a CSV with a `text` column or a folder of .txt files. [default:
    /// none; required without --resume]
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// mlp:W1,W2,… hidden widths on the 784 pixels; siamese and contrastive also small-cnn
    /// (conv 3×3 → 32, conv 3×3 → 64, fc 256, fc 128, as `graft study` trains); corrupted-text:
    /// words:E,W,K (E-wide token embeddings, W filters over windows of K tokens, max over the
    /// sentence). [default: mlp:500,250; words:64,128,5 for --method corrupted-text]
    #[arg(long)]
    pub arch: Option<String>,
    /// Run directory to create. [default: none; required without --resume]
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory after its last completed epoch, with its saved
    /// config.toml (a run killed at any moment finishes as if never interrupted). [default: none]
    #[arg(long, conflicts_with_all = ["method", "data", "arch", "out", "epochs", "batch_size", "lr", "noise", "seed", "cd_k", "visible", "pairs", "margin", "temperature", "crop", "projection_hidden", "tokenizer", "max_tokens", "corruption", "model", "weights", "freeze", "augment", "cache_views"])]
    pub resume: Option<PathBuf>,
    /// Siamese, contrastive: a zoo model (efficientnet-lite0, resnet18, …) whose pretrained
    /// trunk's top trains instead of an MLP (see above). [default: none: the MLP of --arch]
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: its weights file, as `graft fit --weights`. [default: the pulled weights]
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// With --model: what stays frozen, as `graft fit --freeze` (N = stem + first N blocks,
    /// regex:PATTERN, until:LAYER). [default: all but the last numbered block]
    #[arg(long)]
    pub freeze: Option<String>,
    /// With --model: image-level augmentation of the stored views, as `graft fit --augment`
    /// (contrastive pairs two different views of each image). [default: flip,crop:0.35-1 for
    /// contrastive; none for siamese]
    #[arg(long)]
    pub augment: Option<String>,
    /// With --model: views stored per image at the cut (view 0 the plain image; contrastive
    /// needs at least 2). [default: 4 for contrastive; 1 for siamese]
    #[arg(long)]
    pub cache_views: Option<usize>,
    /// Epochs per layer (siamese, contrastive: of the whole encoder). [default: 10; 60 for
    /// --method contrastive; 10 with --model]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per training step (contrastive: each brings two views, the other 2B − 2 views are
    /// its negatives). [default: 64; 256 for --method contrastive; with --model 64 (siamese: pairs)]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (Adam). [default: 0.001; 0.003 for --method contrastive; 0.0001 with --model]
    #[arg(long)]
    pub lr: Option<f64>,
    /// Denoising autoencoders: the fraction of inputs set to zero.
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// Random seed (initialisation, shuffling, noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// RBMs: Gibbs steps of contrastive divergence (CD-k).
    #[arg(long, default_value_t = 1)]
    pub cd_k: usize,
    /// RBMs: the first layer's visible units, bernoulli (inputs in [0, 1], such as pixels) or
    /// gaussian (unit variance, for standardised real-valued inputs); the layers above are
    /// Bernoulli.
    #[arg(long, default_value = "bernoulli")]
    pub visible: String,
    /// Siamese: a CSV of `a,b,same` rows (image paths relative to --data; same is 1/0) [default:
    /// none; required by --method siamese].
    #[arg(long, value_name = "CSV")]
    pub pairs: Option<PathBuf>,
    /// Siamese: how far apart different pairs are pushed (distance of unit-length codes, ≤ 2).
    /// Corrupted-text: the hinge's margin, max(0, margin − s(real) + s(corrupted)).
    #[arg(long, default_value_t = 1.0)]
    pub margin: f64,
    /// Contrastive: the NT-Xent temperature.
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f64,
    /// Contrastive: views from random resized crops, each a window of this fraction of the
    /// image's area up to all of it (aspect ratio 3/4–4/3) stretched back to 28×28, then rotated
    /// by up to ±15°. [default: none: each view scaled by 0.85–1.15, rotated by up to ±15° and
    /// shifted by up to ±3 pixels, which did better on MNIST]
    #[arg(long)]
    pub crop: Option<f64>,
    /// Contrastive: the hidden width of the projection head (Linear–ReLU–Linear to 128 wide;
    /// dropped after pretraining); 0: one linear layer.
    #[arg(long, default_value_t = 0)]
    pub projection_hidden: usize,
    /// Corrupted-text: a BERT WordPiece tokenizer.json whose tokens the encoder embeds (copied
    /// into the run). [default: the pulled MiniLM's (minilm-l6), pulled when absent]
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Corrupted-text: tokens kept per text, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Corrupted-text: how each sentence's corrupted copy is made: replace (one word by a word of
    /// the corpus, drawn by frequency), swap (two words) or both (either, evenly; a new copy
    /// every epoch).
    #[arg(long, default_value = "both")]
    pub corruption: String,
}

/// What `graft pretrain` runs.
enum Plan {
    Images(PretrainConfig),
    Text(CorruptTextConfig),
    Trunk(TrunkPretrainConfig),
}

/// The flags as the library's [`PretrainConfig`], the run directory and whether it resumes.
/// Every flag is named here, so a new one fails to compile until it is resolved. With
/// `--resume`, the run's own config.toml is read (the one file read during resolution).
fn resolve(args: PretrainArgs) -> anyhow::Result<(Plan, PathBuf, bool)> {
    let PretrainArgs {
        device: _, method, data, arch, out, resume, model, weights, freeze, augment, cache_views, epochs, batch_size, lr, noise, seed, cd_k,
        visible, pairs, margin, temperature, crop, projection_hidden, tokenizer, max_tokens, corruption,
    } = args;
    if let Some(run) = resume {
        let config = if corrupt::is_corrupt_text_run(&run) {
            Plan::Text(CorruptTextConfig::from_toml(&run.join("config.toml"))?)
        } else if trunk::is_trunk_run(&run) {
            Plan::Trunk(TrunkPretrainConfig::from_toml(&run.join("config.toml"))?)
        } else {
            Plan::Images(PretrainConfig::from_toml(&run.join("config.toml"))?)
        };
        return Ok((config, run, true));
    }
    let (Some(method), Some(data), Some(out)) = (method, data, out) else {
        anyhow::bail!("--method, --data and --out are required (or --resume RUN)");
    };
    if model.is_some() || weights.is_some() {
        // A pretrained trunk's top: the MLP's and the text method's flags would be ignored.
        let mlp_only = [
            (arch.is_some(), "--arch"), (noise != 0.0, "--noise"), (cd_k != 1, "--cd-k"), (visible != "bernoulli", "--visible"), (crop.is_some(), "--crop"),
            (tokenizer.is_some(), "--tokenizer"), (max_tokens != 64, "--max-tokens"), (corruption != "both", "--corruption"),
        ];
        let given: Vec<&str> = mlp_only.iter().filter(|(g, _)| *g).map(|(_, f)| *f).collect();
        anyhow::ensure!(given.is_empty(), "{} apply to the MLP and text methods, not to a pretrained trunk (--model)", given.join(", "));
        anyhow::ensure!(matches!(method.as_str(), "siamese" | "contrastive"), "invalid --method `{method}`: a pretrained trunk's top (--model) trains by siamese or contrastive");
        let spec = graft::zoo::ModelSpec::find(model.as_deref().unwrap_or("efficientnet-lite0"))?;
        let contrastive = method == "contrastive";
        let freeze = match freeze {
            Some(f) => f.parse()?,
            None => graft::zoo::layers::FreezeSpec::FirstBlocks(graft::zoo::layers::numbered_blocks(&spec.layer_rows()).saturating_sub(1)),
        };
        let augment = augment.as_deref().unwrap_or(if contrastive { "flip,crop:0.35-1" } else { "none" }).parse()?;
        let config = TrunkPretrainConfig {
            method,
            model: spec.id.to_string(),
            weights,
            data,
            pairs,
            freeze,
            epochs: epochs.unwrap_or(10),
            batch_size: batch_size.unwrap_or(64),
            lr: lr.unwrap_or(1e-4),
            seed,
            margin,
            temperature,
            projection_hidden,
            augment,
            cache_views: cache_views.unwrap_or(if contrastive { 4 } else { 1 }),
        };
        return Ok((Plan::Trunk(config), out, false));
    }
    let trunk_only = [(freeze.is_some(), "--freeze"), (augment.is_some(), "--augment"), (cache_views.is_some(), "--cache-views")];
    let given: Vec<&str> = trunk_only.iter().filter(|(g, _)| *g).map(|(_, f)| *f).collect();
    anyhow::ensure!(given.is_empty(), "{} apply to a pretrained trunk's top (--model M) only", given.join(", "));
    if method == corrupt::METHOD {
        // The image methods' flags would be silently ignored.
        let image_only = [
            (noise != 0.0, "--noise"), (cd_k != 1, "--cd-k"), (visible != "bernoulli", "--visible"), (pairs.is_some(), "--pairs"),
            (temperature != 0.2, "--temperature"), (crop.is_some(), "--crop"), (projection_hidden != 0, "--projection-hidden"),
        ];
        let given: Vec<&str> = image_only.iter().filter(|(g, _)| *g).map(|(_, f)| *f).collect();
        anyhow::ensure!(given.is_empty(), "{} apply to the image methods, not to --method corrupted-text", given.join(", "));
        let config = CorruptTextConfig {
            method,
            data,
            arch: arch.as_deref().unwrap_or(corrupt::DEFAULT_ARCH).parse()?,
            tokenizer,
            max_tokens,
            corruption: corruption.parse()?,
            margin,
            epochs: epochs.unwrap_or(10),
            batch_size: batch_size.unwrap_or(64),
            lr: lr.unwrap_or(1e-3),
            seed,
        };
        return Ok((Plan::Text(config), out, false));
    }
    let text_only = [(tokenizer.is_some(), "--tokenizer"), (max_tokens != 64, "--max-tokens"), (corruption != "both", "--corruption")];
    let given: Vec<&str> = text_only.iter().filter(|(g, _)| *g).map(|(_, f)| *f).collect();
    anyhow::ensure!(given.is_empty(), "{} apply to --method corrupted-text only", given.join(", "));
    let arch = arch.as_deref().unwrap_or("mlp:500,250");
    // The contrastive defaults are those that did best on MNIST (docs/transferability.md).
    let contrastive = method == "contrastive";
    let epochs = epochs.unwrap_or(if contrastive { 60 } else { 10 });
    let batch_size = batch_size.unwrap_or(if contrastive { 256 } else { 64 });
    let lr = lr.unwrap_or(if contrastive { 3e-3 } else { 1e-3 });
    let visible = match visible.as_str() {
        "bernoulli" => graft::transfer::rbm::Visible::Bernoulli,
        "gaussian" => graft::transfer::rbm::Visible::Gaussian,
        other => anyhow::bail!("invalid --visible `{other}`: expected bernoulli or gaussian"),
    };
    let config = PretrainConfig { method, arch: arch.parse()?, data, epochs, batch_size, lr, noise, seed, cd_k, visible, pairs, margin, temperature, crop, projection_hidden };
    Ok((Plan::Images(config), out, false))
}

pub fn run(args: PretrainArgs, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let (plan, run_dir, resume) = resolve(args)?;
    crate::reporter::stop_on_ctrl_c();
    let next = |run: &std::path::Path| format!("resume with graft pretrain --resume {}", run.display());
    let config = match plan {
        Plan::Images(config) => config,
        Plan::Trunk(config) => {
            let s = match trunk::pretrain_trunk(&config, &run_dir, resume, &graft_home(), &TermReporter::new(), &device) {
                Ok(s) => s,
                Err(e) => return crate::reporter::exit_if_interrupted(Err(e.into()), next),
            };
            let mut value = serde_json::to_value(&s)?;
            value["skipped"] = json!(s.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect::<Vec<_>>());
            out.result(&value, || {
                let loss = |l: Option<f64>| l.map(|l| format!("{l:.4}")).unwrap_or_else(|| "–".into());
                let trunk = s.trunk_weights.clone().unwrap_or_default();
                format!(
                    "run {}: {} trained above {} by {} on {} images ({} parameters, {} epochs, {:.1} s)\n  loss {} → {}\n  tuned trunk: {} (graft fit --model {} --weights {})\n",
                    s.run.display(), s.config.model, s.cut, s.config.method, s.images, s.trainable_params, s.epochs, s.seconds,
                    loss(s.first_epoch_loss), loss(s.last_epoch_loss), trunk.display(), s.config.model, trunk.display()
                )
            });
            return Ok(());
        }
        Plan::Text(config) => {
            let s = match corrupt::pretrain_corrupt_text(&config, &run_dir, resume, &graft_home(), &TermReporter::new(), &device) {
                Ok(s) => s,
                Err(e) => return crate::reporter::exit_if_interrupted(Err(e.into()), next),
            };
            out.result(&serde_json::to_value(&s)?, || {
                format!(
                    "run {}: {} pretrained on {} sentences ({} too short, left out), {} epochs ({:.1} s)\n  hinge loss {:.4} → {:.4}; last epoch: real above corrupted {:.1}%\n",
                    s.run.display(), s.config.arch, s.sentences, s.too_short, s.epochs, s.seconds, s.first_epoch_loss, s.last_epoch_loss, 100.0 * s.last_epoch_ranked
                )
            });
            return Ok(());
        }
    };
    let s = match pretrain(&config, &run_dir, resume, &TermReporter::new(), &device) {
        Ok(s) => s,
        Err(e) => return crate::reporter::exit_if_interrupted(Err(e.into()), next),
    };
    let mut value = serde_json::to_value(&s)?;
    value["skipped"] = json!(s.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect::<Vec<_>>());
    out.result(&value, || {
        let mut t = format!("run {}: {} pretrained on {} images ({:.1} s)\n", s.run.display(), s.config.arch, s.images, s.seconds);
        for l in &s.layers {
            // The layer-wise methods report each layer's reconstruction; siamese and contrastive
            // the whole encoder's own loss.
            let (what, loss) = match s.config.method.as_str() {
                "autoencoder" | "rbm" => (format!("layer {}", l.layer + 1), "reconstruction mse"),
                method => ("encoder".to_string(), if method == "siamese" { "contrastive loss" } else { "NT-Xent loss" }),
            };
            t.push_str(&format!("  {what} ({} → {}): {loss} {:.5} → {:.5}\n", l.input, l.output, l.first_epoch_loss, l.last_epoch_loss));
        }
        t
    });
    Ok(())
}
