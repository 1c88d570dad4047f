//! The classic domain-adaptation methods on fixed features (`graft adapt --method
//! tca|jda|gfk|sa|coral-shallow`, and the baselines `none` and `pca`): a transform fitted on a
//! labelled source and an unlabelled target, then a 1-nearest-neighbour (the papers') or
//! logistic classifier trained on the transformed source.
//!
//! * TCA (Pan et al. 2011) and JDA (Long et al. 2013): the `k` leading eigenvectors of
//!   (φᵀMφ + μI)⁻¹ φᵀHφ, M the (marginal; for JDA also per-class, from the target's
//!   pseudo-labels, re-estimated every iteration) MMD matrix, as in the JDA authors' code:
//!   M divided by its Frobenius norm, the eigenvectors scaled to unit norm, the projected rows
//!   to unit norm. `--kernel linear` solves in feature space (their `primal`), `rbf` over the
//!   training rows.
//! * GFK (Gong et al. 2012): the closed-form geodesic flow kernel between the `d`-dimensional
//!   PCA subspaces of the two domains; 1-NN under that kernel.
//! * SA (Fernando et al. 2013): the source's PCA basis aligned to the target's.
//! * CORAL (Sun et al. 2016): the source whitened by (Cs + I)^−½ and recoloured by (Ct + I)^½.
//! * `pca`: PCA of both domains together (`k` directions); `none`: the classifier alone.
//!
//! Features (`--features`): `raw:S` grey pixels resized to S×S (box filter by default, which
//! reproduces the JDA paper's 16×16 MNIST, see docs/classic-da.md; `raw:S:bilinear` for the
//! antialiased bilinear filter), a zoo model's pooled features or one layer's (`MODEL[:LAYER]`),
//! or a text encoder's embeddings (`minilm-l6`). Rows are then L2-normalised (the JDA code),
//! or z-scored per domain (`--normalize zscore`, the SA and CORAL papers').

pub mod dense;
pub mod linalg;
pub mod methods;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use burn::tensor::Device;
use dense::{Mat, MatRef};
use image::GrayImage;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use self::methods::{DomainSide, Fitted, Kernel, MmdOptions};
use super::data::{DomainSpec, Featurizer, InputSpec, Digits};
use crate::classic::{Classic, ClassicKind, Penalty};
use crate::data::fetch;
use crate::data::folder::{is_image_file, ImageFolder, Skipped};
use crate::data::idx::{self, DIGIT_CLASSES};
use crate::data::usps::{self, USPS_SIDE};
use crate::error::unit_variant;
use crate::report::Reporter;
use crate::train::run::Evaluation;
use crate::zoo::{ModelSpec, Pretrained};
use crate::{GraftError, Result};

/// A classic method (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShallowMethod {
    /// No transform: the classifier on the source rows as they are (the papers' "NN").
    None,
    /// PCA of both domains together.
    Pca,
    Tca,
    Jda,
    Gfk,
    Sa,
    CoralShallow,
}

pub const SHALLOW_METHODS: &str = "none, pca, tca, jda, gfk, sa, coral-shallow";

impl ShallowMethod {
    /// The method a `--method` value names, if it is a classic one.
    pub fn parse(s: &str) -> Option<Self> {
        unit_variant::<ShallowMethod>("method", s, SHALLOW_METHODS).ok()
    }

    /// Default `--dim`: 100 for the projections (the JDA paper's k), 20 for the subspace
    /// methods (its GFK d), none for `none` and CORAL.
    pub fn default_dim(self) -> Option<usize> {
        match self {
            ShallowMethod::Pca | ShallowMethod::Tca | ShallowMethod::Jda => Some(100),
            ShallowMethod::Gfk | ShallowMethod::Sa => Some(20),
            ShallowMethod::None | ShallowMethod::CoralShallow => None,
        }
    }

    /// Default `--normalize`: z-score per domain for SA and CORAL (their papers), L2 rows for
    /// the others (the JDA code).
    pub fn default_normalize(self) -> Normalize {
        match self {
            ShallowMethod::Sa | ShallowMethod::CoralShallow => Normalize::Zscore,
            _ => Normalize::L2,
        }
    }
}

impl std::fmt::Display for ShallowMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        f.write_str(&s)
    }
}

/// The classifier after the transform (`--classifier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShallowClassifier {
    /// 1-nearest-neighbour, Euclidean (the JDA, TCA and GFK papers').
    #[serde(rename = "1nn")]
    Nn1,
    /// Softmax regression, C by 5-fold cross-validation on the source (`graft fit --head logistic`).
    Logistic,
}

impl FromStr for ShallowClassifier {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("classifier", s, "expected 1nn or logistic")
    }
}

/// `--kernel` of TCA and JDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelKind {
    Linear,
    Rbf,
}

impl FromStr for KernelKind {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("kernel", s, "expected linear or rbf")
    }
}

/// How rows are standardised before the transform (`--normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// Each row scaled to unit Euclidean norm.
    L2,
    /// Each feature to zero mean and unit variance, with each domain's own statistics.
    Zscore,
    None,
}

impl FromStr for Normalize {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("normalize", s, "expected l2, zscore or none")
    }
}

/// The resampling filter of `raw:S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resample {
    /// PIL's BOX filter: each output pixel the mean of the input pixels whose centres it covers
    /// (the same values as PIL's `Image.resize(…, Image.BOX)` before its rounding to bytes).
    Box,
    /// PIL's BILINEAR (a triangle filter widened when shrinking, i.e. antialiased).
    Bilinear,
}

/// Where the features come from (`--features`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureSpec {
    /// Grey pixels (the centre square) resized to `side`×`side`, in [0, 1].
    Raw { side: u32, resample: Resample },
    /// A zoo model's activations: `layer` as `graft extract --layer` takes it (pooled by default).
    Model { id: String, layer: String },
    /// A text encoder's embeddings.
    Text { model: String },
}

impl FeatureSpec {
    pub fn parse(value: &str) -> Result<Self> {
        let bad = |why: &str| GraftError::setting("features", value, why.to_string());
        if let Some(rest) = value.strip_prefix("raw:") {
            let (side, filter) = rest.split_once(':').unwrap_or((rest, "box"));
            let side: u32 = side.parse().map_err(|_| bad("expected raw:S with S the side in pixels, e.g. raw:16"))?;
            if !(2..=256).contains(&side) {
                return Err(bad("the side of raw:S must be 2 to 256 pixels"));
            }
            let resample = match filter {
                "box" => Resample::Box,
                "bilinear" => Resample::Bilinear,
                _ => return Err(bad("the filter of raw:S:FILTER is box or bilinear")),
            };
            return Ok(FeatureSpec::Raw { side, resample });
        }
        if crate::text::is_text_model(value) {
            return Ok(FeatureSpec::Text { model: value.to_string() });
        }
        let (id, layer) = value.split_once(':').unwrap_or((value, "pooled"));
        if ModelSpec::find(id).is_err() {
            return Err(bad("expected raw:S, a zoo model (MODEL or MODEL:LAYER) or a text model (minilm-l6)"));
        }
        if layer.is_empty() {
            return Err(bad("the layer of MODEL:LAYER is empty"));
        }
        Ok(FeatureSpec::Model { id: id.to_string(), layer: layer.to_string() })
    }
}

/// Everything `graft adapt` with a classic method is asked to do.
#[derive(Debug, Clone)]
pub struct ShallowConfig {
    pub method: ShallowMethod,
    pub source: String,
    pub target: String,
    /// Labelled test set; the same value as `target` evaluates on the target's own (sampled)
    /// images, transductively, as the JDA protocol does.
    pub target_test: Option<String>,
    pub data_root: PathBuf,
    /// `--features`, as given.
    pub features: String,
    pub weights: Option<PathBuf>,
    pub classifier: ShallowClassifier,
    pub kernel: KernelKind,
    /// γ of the RBF kernel [default: 1 / the mean squared distance between the training rows].
    pub gamma: Option<f64>,
    /// μ of TCA and JDA.
    pub mu: f64,
    /// k of TCA, JDA and PCA, d of GFK and SA [default: [`ShallowMethod::default_dim`]].
    pub dim: Option<usize>,
    /// JDA's solves (the first without pseudo-labels).
    pub iterations: usize,
    pub normalize: Option<Normalize>,
    /// Images (rows) drawn at random from the source [default: all].
    pub source_samples: Option<usize>,
    /// Images drawn at random from the target [default: all].
    pub target_samples: Option<usize>,
    pub seed: u64,
}

impl ShallowConfig {
    pub fn new(method: ShallowMethod, source: &str, target: &str) -> Self {
        ShallowConfig {
            method,
            source: source.into(),
            target: target.into(),
            target_test: None,
            data_root: fetch::default_data_root(),
            features: "raw:16".into(),
            weights: None,
            classifier: ShallowClassifier::Nn1,
            kernel: KernelKind::Linear,
            gamma: None,
            mu: 1.0,
            dim: None,
            iterations: 10,
            normalize: None,
            source_samples: None,
            target_samples: None,
            seed: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.mu.is_finite() && self.mu > 0.0) {
            return Err(GraftError::setting("mu", &self.mu.to_string(), "must be a positive number"));
        }
        if let Some(g) = self.gamma {
            if !(g.is_finite() && g > 0.0) {
                return Err(GraftError::setting("gamma", &g.to_string(), "must be a positive number"));
            }
        }
        if self.dim == Some(0) {
            return Err(GraftError::setting("dim", "0", "must be at least 1"));
        }
        if self.iterations == 0 {
            return Err(GraftError::setting("iterations", "0", "must be at least 1"));
        }
        for (name, n) in [("source_samples", self.source_samples), ("target_samples", self.target_samples)] {
            if n == Some(0) {
                return Err(GraftError::setting(name, "0", "must be at least 1"));
            }
        }
        FeatureSpec::parse(&self.features)?;
        Ok(())
    }

    fn transductive(&self) -> bool {
        self.target_test.as_deref() == Some(self.target.as_str())
    }
}

/// Figures of one JDA solve (TCA, PCA, GFK, SA, CORAL: one entry).
#[derive(Debug, Clone, Serialize)]
pub struct IterationFigures {
    pub iteration: usize,
    /// Accuracy on the target test set with this iteration's transform.
    pub target_test_accuracy: Option<f64>,
    /// Target pseudo-labels that changed since the previous iteration.
    pub pseudo_labels_changed: usize,
    /// Linear MMD² between the transformed source and target rows.
    pub mmd: f64,
}

/// What a classic run did (`summary.json` in the run directory; `--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct ShallowSummary {
    pub run: PathBuf,
    pub method: ShallowMethod,
    pub features: String,
    pub source: String,
    pub target: String,
    pub target_test: Option<String>,
    /// The test set is the target's own (sampled) images: the JDA protocol.
    pub transductive: bool,
    pub classifier: ShallowClassifier,
    pub kernel: KernelKind,
    pub gamma: Option<f64>,
    pub mu: f64,
    pub dim: Option<usize>,
    pub iterations: usize,
    pub normalize: Normalize,
    pub seed: u64,
    pub n_source_train: usize,
    pub n_target: usize,
    pub n_target_test: usize,
    pub width: usize,
    /// Linear MMD² between the (normalised) source and target rows before the transform.
    pub mmd_before: f64,
    pub target_test_accuracy: Option<f64>,
    pub target_test_evaluation: Option<Evaluation>,
    pub per_iteration: Vec<IterationFigures>,
    pub fit_seconds: f64,
    pub wall_seconds: f64,
    pub skipped: Vec<Skipped>,
}

/// The widest rows the methods that build a `width × width` matrix take (TCA and JDA with the
/// linear kernel, GFK, CORAL): 4,096 (a 128 MiB matrix).
pub const MAX_SQUARE_WIDTH: usize = 4096;

/// One domain's rows.
struct Rows {
    x: Mat<f64>,
    labels: Vec<usize>,
}

/// Runs a classic method; writes `summary.json` and `metrics.jsonl` (one line per iteration)
/// into the new run directory `run`.
pub fn adapt_shallow(config: &ShallowConfig, run: &Path, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<ShallowSummary> {
    crate::train::engine::removing_a_failed_start(run, false, || adapt_shallow_run(config, run, home, reporter, device))
}

fn adapt_shallow_run(config: &ShallowConfig, run: &Path, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<ShallowSummary> {
    let wall = Instant::now();
    config.validate()?;
    let features = FeatureSpec::parse(&config.features)?;
    crate::train::engine::prepare_run_dir(run, false)?;
    let loaded = load(config, &features, home, reporter, device)?;
    let Loaded { source, target, test, classes, skipped } = loaded;
    let width = source.x.ncols();
    let square = match config.method {
        ShallowMethod::Tca | ShallowMethod::Jda => config.kernel == KernelKind::Linear,
        ShallowMethod::Gfk | ShallowMethod::CoralShallow => true,
        ShallowMethod::None | ShallowMethod::Pca | ShallowMethod::Sa => false,
    };
    if square && width > MAX_SQUARE_WIDTH {
        let hint = if matches!(config.method, ShallowMethod::Tca | ShallowMethod::Jda) { "--kernel rbf (n × n) or " } else { "" };
        return Err(GraftError::setting("features", &config.features, format!("rows are {width} wide and {} builds a {width} × {width} matrix (at most {MAX_SQUARE_WIDTH} wide): use {hint}a pooled layer or smaller raw:S", config.method)));
    }
    let normalize = config.normalize.unwrap_or(config.method.default_normalize());
    let xs = normalise(&source.x, normalize);
    let xt = normalise(&target.x, normalize);
    let test_x = test.as_ref().map(|t| normalise(&t.x, normalize));
    let ys = &source.labels;
    let n_classes = classes.len();
    let dim = config.dim.or(config.method.default_dim());
    let fit_start = Instant::now();
    let gamma = match config.kernel {
        KernelKind::Rbf => Some(config.gamma.unwrap_or_else(|| methods::default_gamma(stack_rows(xs.as_ref(), xt.as_ref()).as_ref()))),
        KernelKind::Linear => None,
    };
    let kernel = match gamma {
        Some(gamma) => Kernel::Rbf { gamma },
        None => Kernel::Linear,
    };
    let mmd_before = methods::linear_mmd2(xs.as_ref(), xt.as_ref());
    let seed = config.seed;
    let classifier = config.classifier;
    let mut classify = |zs: MatRef<'_, f64>, ys: &[usize], zt: MatRef<'_, f64>| -> Result<Vec<usize>> { classify_rows(classifier, zs, ys, zt, n_classes, seed) };
    let mut per_iteration = Vec::new();
    let mut previous: Option<Vec<usize>> = None;
    let evaluate = |f: &Fitted, classify: &mut dyn FnMut(MatRef<'_, f64>, &[usize], MatRef<'_, f64>) -> Result<Vec<usize>>| -> Result<Option<(f64, Vec<usize>)>> {
        let (Some(t), Some(tx)) = (&test, &test_x) else { return Ok(None) };
        let zs = f.apply(xs.as_ref(), DomainSide::Source);
        let zt = f.apply(tx.as_ref(), DomainSide::Target);
        let predicted = classify(zs.as_ref(), ys, zt.as_ref())?;
        let acc = predicted.iter().zip(&t.labels).filter(|(a, b)| a == b).count() as f64 / t.labels.len().max(1) as f64;
        Ok(Some((acc, predicted)))
    };
    let k = dim.unwrap_or(0);
    let opts = MmdOptions { k, mu: config.mu, kernel, classes: n_classes };
    let fitted = match config.method {
        ShallowMethod::Jda => {
            reporter.start("JDA iterations", Some(config.iterations as u64));
            let mut each = |it: usize, f: &Fitted, labels: &[usize]| -> Result<()> {
                let changed = previous.as_ref().map(|p| p.iter().zip(labels).filter(|(a, b)| a != b).count()).unwrap_or(labels.len());
                previous = Some(labels.to_vec());
                let acc = evaluate(f, &mut |a, b, c| classify_rows(classifier, a, b, c, n_classes, seed))?.map(|(a, _)| a);
                let mmd = methods::linear_mmd2(f.apply(xs.as_ref(), DomainSide::Source).as_ref(), f.apply(xt.as_ref(), DomainSide::Target).as_ref());
                per_iteration.push(IterationFigures { iteration: it, target_test_accuracy: acc, pseudo_labels_changed: changed, mmd });
                reporter.progress(it as u64);
                Ok(())
            };
            let (f, _) = methods::jda(xs.as_ref(), ys, xt.as_ref(), &opts, config.iterations, &mut classify, &mut each)?;
            reporter.finish();
            f
        }
        ShallowMethod::Tca => methods::tca(xs.as_ref(), ys, xt.as_ref(), &opts)?,
        ShallowMethod::Pca => methods::pca(xs.as_ref(), xt.as_ref(), k)?,
        ShallowMethod::Gfk => methods::gfk(xs.as_ref(), xt.as_ref(), k)?,
        ShallowMethod::Sa => methods::sa(xs.as_ref(), xt.as_ref(), k)?,
        ShallowMethod::CoralShallow => methods::coral(xs.as_ref(), xt.as_ref())?,
        ShallowMethod::None => Fitted::Identity,
    };
    let result = evaluate(&fitted, &mut classify)?;
    let fit_seconds = fit_start.elapsed().as_secs_f64();
    if config.method != ShallowMethod::Jda {
        let mmd = methods::linear_mmd2(fitted.apply(xs.as_ref(), DomainSide::Source).as_ref(), fitted.apply(xt.as_ref(), DomainSide::Target).as_ref());
        per_iteration.push(IterationFigures { iteration: 1, target_test_accuracy: result.as_ref().map(|r| r.0), pseudo_labels_changed: 0, mmd });
    }
    let (target_test_accuracy, target_test_evaluation) = match (&result, &test) {
        (Some((acc, predicted)), Some(t)) => (Some(*acc), Some(Evaluation::from_predictions(&classes, &t.labels, predicted))),
        _ => (None, None),
    };
    let mut metrics = String::new();
    for it in &per_iteration {
        metrics.push_str(&serde_json::to_string(it).map_err(|e| GraftError::Data { path: run.join("metrics.jsonl"), reason: e.to_string() })?);
        metrics.push('\n');
    }
    crate::fsutil::write_atomic(&run.join("metrics.jsonl"), metrics.as_bytes())?;
    let summary = ShallowSummary {
        run: run.to_path_buf(),
        method: config.method,
        features: config.features.clone(),
        source: config.source.clone(),
        target: config.target.clone(),
        target_test: config.target_test.clone(),
        transductive: config.transductive(),
        classifier: config.classifier,
        kernel: config.kernel,
        gamma,
        mu: config.mu,
        dim,
        iterations: if config.method == ShallowMethod::Jda { config.iterations } else { 1 },
        normalize,
        seed: config.seed,
        n_source_train: source.labels.len(),
        n_target: target.x.nrows(),
        n_target_test: test.as_ref().map(|t| t.labels.len()).unwrap_or(0),
        width: source.x.ncols(),
        mmd_before,
        target_test_accuracy,
        target_test_evaluation,
        per_iteration,
        fit_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        skipped,
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| GraftError::Data { path: run.join("summary.json"), reason: e.to_string() })?;
    crate::fsutil::write_atomic(&run.join("summary.json"), &json)?;
    Ok(summary)
}

fn stack_rows(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let n = a.nrows();
    Mat::from_fn(n + b.nrows(), a.ncols(), |i, j| if i < n { a[(i, j)] } else { b[(i - n, j)] })
}

fn normalise(x: &Mat<f64>, how: Normalize) -> Mat<f64> {
    match how {
        Normalize::None => x.clone(),
        Normalize::L2 => {
            let mut z = x.clone();
            linalg::normalise_rows(&mut z);
            z
        }
        Normalize::Zscore => {
            let c = linalg::centred(x.as_ref());
            let n = (x.nrows().max(2) - 1) as f64;
            let sd: Vec<f64> = (0..x.ncols()).map(|j| ((0..x.nrows()).map(|i| c[(i, j)].powi(2)).sum::<f64>() / n).sqrt()).collect();
            Mat::from_fn(x.nrows(), x.ncols(), |i, j| if sd[j] > 0.0 { c[(i, j)] / sd[j] } else { 0.0 })
        }
    }
}

fn classify_rows(classifier: ShallowClassifier, zs: MatRef<'_, f64>, ys: &[usize], zt: MatRef<'_, f64>, classes: usize, seed: u64) -> Result<Vec<usize>> {
    match classifier {
        ShallowClassifier::Nn1 => Ok(methods::nearest_neighbour(zs, ys, zt)),
        ShallowClassifier::Logistic => {
            let d = zs.ncols();
            let to_f32 = |m: MatRef<'_, f64>| -> Vec<f32> { (0..m.nrows()).flat_map(|i| (0..d).map(move |j| m[(i, j)] as f32)).collect() };
            let model = Classic::fit(ClassicKind::Logistic(Penalty::Auto), &to_f32(zs), ys, d, classes, seed)?;
            Ok(model
                .predict_proba(&to_f32(zt))
                .iter()
                .map(|p| p.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0)
                .collect())
        }
    }
}

struct Loaded {
    source: Rows,
    target: Rows,
    test: Option<Rows>,
    classes: Vec<String>,
    skipped: Vec<Skipped>,
}

/// Seeded draw of `want` of `n` indices (all, in order, when `want` is none or ≥ n).
fn draw(n: usize, want: Option<usize>, rng: &mut rand::rngs::StdRng) -> Vec<usize> {
    match want {
        Some(k) if k < n => {
            let mut idx = rand::seq::index::sample(rng, n, k).into_vec();
            idx.sort_unstable();
            idx
        }
        _ => (0..n).collect(),
    }
}

/// A domain before its features: `n` items, their labels (empty when unlabelled) and where
/// their images are.
struct Pending {
    labels: Vec<usize>,
    n: usize,
    items: Items,
}

enum Items {
    /// Grey images in [0, 1], `side`×`side`, row-major, one after another.
    Pixels { side: usize, values: Vec<f32> },
    /// Image files.
    Files(Vec<PathBuf>),
    /// Rows computed or made by graft's adapt data path (zoo-preprocessed images, text
    /// embeddings).
    Domain(super::data::Domain),
}

fn load(config: &ShallowConfig, features: &FeatureSpec, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<Loaded> {
    let root = &config.data_root;
    let transductive = config.transductive();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut skipped = Vec::new();
    if let FeatureSpec::Text { model } = features {
        let mut ac = super::AdaptConfig::new(super::Method::SourceOnly, &config.source, &config.target);
        ac.backbone = model.clone();
        ac.weights = config.weights.clone();
        ac.data_root = root.clone();
        ac.target_test = config.target_test.clone();
        let l = super::text::load_text_domains(&ac, home, reporter, device)?;
        let rows = |d: &super::data::Domain, idx: &[usize]| -> Result<Rows> {
            let s = d.subset(idx);
            Ok(Rows { x: methods::matrix_f32(&s.all_rows()?, idx.len(), s.width), labels: s.labels.clone() })
        };
        let si = draw(l.source_all.len(), config.source_samples, &mut rng);
        let ti = draw(l.target.len(), config.target_samples, &mut rng);
        let source = rows(&l.source_all, &si)?;
        let target = rows(&l.target, &ti)?;
        let test = match &l.test {
            Some(t) if transductive => Some(rows(t, &ti)?),
            Some(t) => Some(rows(t, &(0..t.len()).collect::<Vec<_>>())?),
            None => None,
        };
        return Ok(Loaded { source, target, test, classes: l.classes, skipped: l.skipped });
    }
    let trunk = match features {
        FeatureSpec::Model { id, .. } => {
            let spec = ModelSpec::find(id).map_err(|e| GraftError::setting("features", &config.features, e.to_string()))?;
            Some(Pretrained::load(spec, config.weights.as_deref(), home, reporter, device)?)
        }
        _ => None,
    };
    let source_spec = DomainSpec::parse("source", &config.source)?;
    let target_spec = DomainSpec::parse("target", &config.target)?;
    let test_spec = config.target_test.as_deref().map(|t| DomainSpec::parse("target_test", t)).transpose()?;
    let pending = |spec: &DomainSpec, setting: &str, classes: Option<&[String]>, labelled: bool, skipped: &mut Vec<Skipped>| -> Result<(Pending, Vec<String>)> {
        match (features, &trunk) {
            (FeatureSpec::Model { .. }, Some(t)) => {
                let input = InputSpec::Zoo { model: t.spec.id.into(), preprocess: t.preprocess() };
                let (domain, classes, bad) = Featurizer::new(input, None, home, device).load(spec, setting, root, classes, labelled, reporter)?;
                skipped.extend(bad);
                Ok((Pending { labels: domain.labels.clone(), n: domain.len(), items: Items::Domain(domain) }, classes))
            }
            _ => pending_images(spec, setting, root, classes, labelled),
        }
    };
    let (source_p, classes) = pending(&source_spec, "source", None, true, &mut skipped)?;
    if source_p.labels.is_empty() {
        return Err(GraftError::setting("source", &config.source, "the source has no labelled images"));
    }
    // The target's labels are read only when it is also the test set, and then only to score.
    let (target_p, _) = pending(&target_spec, "target", Some(&classes), transductive, &mut skipped)?;
    let si = draw(source_p.n, config.source_samples, &mut rng);
    let ti = draw(target_p.n, config.target_samples, &mut rng);
    let mut featurise = |p: &Pending, idx: &[usize], what: &str| -> Result<Rows> { rows_of(p, idx, features, trunk.as_ref(), what, reporter, device, &mut skipped) };
    let source = featurise(&source_p, &si, "source")?;
    let target_all = featurise(&target_p, &ti, "target")?;
    let (target, test) = if transductive {
        let test = Rows { x: target_all.x.clone(), labels: target_all.labels };
        (Rows { x: target_all.x, labels: Vec::new() }, Some(test))
    } else {
        let test = match &test_spec {
            Some(spec) => {
                let (p, _) = pending(spec, "target_test", Some(&classes), true, &mut skipped)?;
                let all: Vec<usize> = (0..p.n).collect();
                Some(rows_of(&p, &all, features, trunk.as_ref(), "target test", reporter, device, &mut skipped)?)
            }
            None => None,
        };
        (target_all, test)
    };
    if source.x.nrows() == 0 || target.x.nrows() == 0 {
        return Err(GraftError::setting(if source.x.nrows() == 0 { "source" } else { "target" }, if source.x.nrows() == 0 { &config.source } else { &config.target }, "no readable images"));
    }
    Ok(Loaded { source, target, test, classes, skipped })
}

/// A domain's images for `raw:S` (kept as they are until the draw).
fn pending_images(spec: &DomainSpec, setting: &str, root: &Path, classes: Option<&[String]>, labelled: bool) -> Result<(Pending, Vec<String>)> {
    match spec {
        DomainSpec::Digits { set, train } => {
            let digit_classes: Vec<String> = DIGIT_CLASSES.iter().map(|s| s.to_string()).collect();
            if let Some(c) = classes {
                if labelled && c != digit_classes.as_slice() {
                    return Err(GraftError::setting(setting, &spec.name(), format!("the digit classes 0–9 differ from the source classes ({})", c.join(", "))));
                }
            }
            let (side, values, labels) = match set {
                Digits::Mnist => {
                    let prefix = if *train { "train-10k" } else { "t10k" };
                    let base = fetch::require(&fetch::MNIST, root)?;
                    let (rows, cols, pixels) = idx::read_idx_images(base.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
                    let labels = idx::read_idx_labels(base.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
                    if rows != cols || labels.len() * rows * cols != pixels.len() {
                        return Err(GraftError::Data { path: base, reason: format!("{} labels for {} pixels of {rows}×{cols} images", labels.len(), pixels.len()) });
                    }
                    (rows, pixels.iter().map(|&v| v as f32 / 255.0).collect(), labels)
                }
                Digits::Usps => {
                    let dir = fetch::require(&fetch::USPS, root)?;
                    let u = usps::read_usps(&dir.join("usps.h5"), if *train { "train" } else { "test" })?;
                    (USPS_SIDE, u.pixels, u.labels)
                }
            };
            if let Some(&bad) = labels.iter().find(|&&l| l >= 10) {
                return Err(GraftError::Data { path: root.to_path_buf(), reason: format!("{}: label {bad} is not a digit", spec.name()) });
            }
            let n = labels.len();
            let labels = if labelled { labels.into_iter().map(usize::from).collect() } else { Vec::new() };
            Ok((Pending { labels, n, items: Items::Pixels { side, values } }, digit_classes))
        }
        DomainSpec::Folder(dir) => {
            if labelled {
                let folder = match classes {
                    None => ImageFolder::scan(dir)?,
                    Some(c) => ImageFolder::scan_with_classes(dir, c)?,
                };
                let n = folder.samples.len();
                let labels = folder.samples.iter().map(|s| s.label).collect();
                let paths = folder.samples.into_iter().map(|s| s.path).collect();
                return Ok((Pending { labels, n, items: Items::Files(paths) }, folder.classes));
            }
            let paths: Vec<PathBuf> = match ImageFolder::scan(dir) {
                Ok(folder) => folder.samples.into_iter().map(|s| s.path).collect(),
                Err(scan_err) => {
                    let entries = std::fs::read_dir(dir).map_err(|e| GraftError::io(dir, e))?;
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && is_image_file(p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                        .collect();
                    files.sort();
                    if files.is_empty() {
                        return Err(scan_err);
                    }
                    files
                }
            };
            Ok((Pending { labels: Vec::new(), n: paths.len(), items: Items::Files(paths) }, classes.map(|c| c.to_vec()).unwrap_or_default()))
        }
    }
}

/// The feature rows of items `idx` of `p` (unreadable files are skipped, with their labels).
#[allow(clippy::too_many_arguments)]
fn rows_of(p: &Pending, idx: &[usize], features: &FeatureSpec, trunk: Option<&Pretrained>, what: &str, reporter: &dyn Reporter, device: &Device, skipped: &mut Vec<Skipped>) -> Result<Rows> {
    let labelled = !p.labels.is_empty();
    let label_of = |i: usize| if labelled { vec![p.labels[i]] } else { Vec::new() };
    match (&p.items, features) {
        (Items::Pixels { side, values }, FeatureSpec::Raw { side: out, resample }) => {
            let plane = side * side;
            let out = *out as usize;
            let mut x = Vec::with_capacity(idx.len() * out * out);
            let mut labels = Vec::new();
            for &i in idx {
                x.extend(resize(&values[i * plane..(i + 1) * plane], *side, *side, out, *resample));
                labels.extend(label_of(i));
            }
            Ok(Rows { x: linalg::from_rows(&x, idx.len(), out * out), labels })
        }
        (Items::Files(paths), FeatureSpec::Raw { side: out, resample }) => {
            let out = *out as usize;
            let mut x = Vec::with_capacity(idx.len() * out * out);
            let mut labels = Vec::new();
            let mut n = 0;
            for &i in idx {
                match crate::data::image::decode(&paths[i]) {
                    Ok(img) => {
                        let grey: GrayImage = image::DynamicImage::ImageRgb8(img).to_luma8();
                        let (w, h) = grey.dimensions();
                        let s = w.min(h);
                        let square = image::imageops::crop_imm(&grey, (w - s) / 2, (h - s) / 2, s, s).to_image();
                        let v: Vec<f32> = square.as_raw().iter().map(|&b| b as f32 / 255.0).collect();
                        x.extend(resize(&v, s as usize, s as usize, out, *resample));
                        labels.extend(label_of(i));
                        n += 1;
                    }
                    Err(e) => skipped.push(Skipped { path: paths[i].clone(), reason: e.to_string() }),
                }
            }
            Ok(Rows { x: linalg::from_rows(&x, n, out * out), labels })
        }
        (Items::Domain(d), FeatureSpec::Model { layer, .. }) => {
            let t = trunk.ok_or_else(|| GraftError::setting("features", layer, "no model loaded"))?;
            let cut = crate::cache::extract::Cut::parse(layer, &t.config)?;
            let folded = t.net.for_inference();
            let InputSpec::Zoo { preprocess, .. } = d_input(t) else { unreachable!("zoo input") };
            let mut x: Vec<f32> = Vec::new();
            let mut width = 0;
            reporter.start(&format!("features of the {what} ({})", t.spec.id), Some(idx.len() as u64));
            for (done, chunk) in idx.chunks(64).enumerate() {
                let rows = d.rows(chunk)?;
                let images: Vec<Vec<f32>> = rows.chunks(d.width).map(<[f32]>::to_vec).collect();
                let out = folded.forward_stages(crate::data::image::batch(&images, preprocess.size, device), 0..cut.stages);
                let [n, c, h, w] = out.dims();
                let out = if cut.pooled { crate::zoo::efficientnet::global_avg_pool(out) } else { out.reshape([n, c * h * w]) };
                width = if cut.pooled { c } else { c * h * w };
                x.extend(out.into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: t.weights_path.clone(), reason: format!("{e:?}") })?);
                reporter.progress((((done + 1) * 64).min(idx.len())) as u64);
            }
            reporter.finish();
            let labels = idx.iter().flat_map(|&i| label_of(i)).collect();
            Ok(Rows { x: methods::matrix_f32(&x, idx.len(), width), labels })
        }
        _ => Err(GraftError::setting("features", "", "these features do not fit this domain")),
    }
}

fn d_input(t: &Pretrained) -> InputSpec {
    InputSpec::Zoo { model: t.spec.id.into(), preprocess: t.preprocess() }
}

/// PIL's separable resampling (BOX or BILINEAR, the filter widened when shrinking) of a
/// `w`×`h` grey image in [0, 1] to `out`×`out`, in floating point.
pub fn resize(src: &[f32], w: usize, h: usize, out: usize, filter: Resample) -> Vec<f64> {
    let coeffs = |n_in: usize, n_out: usize| -> Vec<(usize, Vec<f64>)> {
        let scale = n_in as f64 / n_out as f64;
        let fscale = scale.max(1.0);
        let (support, f): (f64, fn(f64) -> f64) = match filter {
            // PIL's box: (−½, ½], so a pixel centre on the boundary of two output pixels
            // belongs to the left one.
            Resample::Box => (0.5, |x| if x > -0.5 && x <= 0.5 { 1.0 } else { 0.0 }),
            Resample::Bilinear => (1.0, |x| if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 }),
        };
        let support = support * fscale;
        (0..n_out)
            .map(|o| {
                let centre = (o as f64 + 0.5) * scale;
                let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
                let hi = ((centre + support + 0.5).floor() as usize).min(n_in);
                let raw: Vec<f64> = (lo..hi).map(|x| f((x as f64 - centre + 0.5) / fscale)).collect();
                let total: f64 = raw.iter().sum();
                (lo, raw.iter().map(|v| if total != 0.0 { v / total } else { 0.0 }).collect())
            })
            .collect()
    };
    if w == out && h == out {
        return src.iter().map(|&v| v as f64).collect();
    }
    let cx = coeffs(w, out);
    let cy = coeffs(h, out);
    // Horizontal pass, then vertical.
    let mut tmp = vec![0.0f64; h * out];
    for y in 0..h {
        for (x, (lo, ws)) in cx.iter().enumerate() {
            tmp[y * out + x] = ws.iter().enumerate().map(|(k, wgt)| wgt * src[y * w + lo + k] as f64).sum();
        }
    }
    let mut dst = vec![0.0f64; out * out];
    for (y, (lo, ws)) in cy.iter().enumerate() {
        for x in 0..out {
            dst[y * out + x] = ws.iter().enumerate().map(|(k, wgt)| wgt * tmp[(lo + k) * out + x]).sum();
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_feature_specs() {
        assert_eq!(FeatureSpec::parse("raw:16").unwrap(), FeatureSpec::Raw { side: 16, resample: Resample::Box });
        assert_eq!(FeatureSpec::parse("raw:8:bilinear").unwrap(), FeatureSpec::Raw { side: 8, resample: Resample::Bilinear });
        for bad in ["raw:", "raw:x", "raw:1", "raw:16:cubic", "no-such-model", "raw:100000"] {
            let e = FeatureSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("features") && e.contains(bad), "{e}");
        }
        assert_eq!(ShallowMethod::parse("coral-shallow"), Some(ShallowMethod::CoralShallow));
        assert_eq!(ShallowMethod::parse("dann"), None);
        assert_eq!("1nn".parse::<ShallowClassifier>().unwrap(), ShallowClassifier::Nn1);
    }

    #[test]
    fn box_resize_averages_the_covered_pixels() {
        // 4×4 → 2×2: each output pixel the mean of a 2×2 block.
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resize(&src, 4, 4, 2, Resample::Box);
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
        // 28 → 16 as PIL's BOX: output column 1 covers [1.75, 3.5), and the centre of pixel 3,
        // on its right edge, belongs to it (PIL's box is (−½, ½]): columns 2 and 3, ½ each.
        let mut col3 = vec![0.0f32; 28 * 28];
        for r in 0..28 {
            col3[r * 28 + 3] = 1.0;
        }
        let out = resize(&col3, 28, 28, 16, Resample::Box);
        assert_eq!((out[0], out[1], out[2]), (0.0, 0.5, 0.0));
        // A flat image stays flat under both filters and any ratio (28 → 16).
        for f in [Resample::Box, Resample::Bilinear] {
            let flat = vec![0.25f32; 28 * 28];
            assert!(resize(&flat, 28, 28, 16, f).iter().all(|&v| (v - 0.25).abs() < 1e-6));
        }
    }

    #[test]
    fn draws_are_seeded_and_without_repeats() {
        let mut a = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = rand::rngs::StdRng::seed_from_u64(3);
        let x = draw(100, Some(20), &mut a);
        assert_eq!(x, draw(100, Some(20), &mut b));
        let mut s = x.clone();
        s.dedup();
        assert_eq!(s.len(), 20);
        assert_eq!(draw(5, Some(20), &mut a), vec![0, 1, 2, 3, 4]);
    }
}
