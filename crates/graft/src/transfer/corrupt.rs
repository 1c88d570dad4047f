//! Pretraining on text whose labels come for free (Collobert & Weston, 2008, "A unified
//! architecture for natural language processing"): a network learns to score each real sentence
//! of an unlabelled corpus above a corrupted copy of it (one word replaced by another word of the
//! corpus, drawn by frequency, or two words swapped), with the max-margin (hinge) loss
//! `max(0, m − s(real) + s(corrupt))`, m = 1 by default. Each epoch draws new corruptions.
//!
//! The network is a small word-level encoder trained from scratch: the WordPiece tokens of a BERT
//! `tokenizer.json` (MiniLM's by default), an embedding table, one window convolution (ReLU) over
//! the tokens and a max over the positions ([`WordEncoder`], `words:E,W,K`: E-wide embeddings,
//! W filters, K-token windows); the scorer adds a hidden layer and a linear score, dropped
//! afterwards. A run directory (`model.json` of kind `text-pretrain`) holds the encoder
//! (`encoder.safetensors`) and a copy of the tokenizer; `graft fit --init RUN` on labelled text
//! builds the same encoder from it, adds a linear classifier and fine-tunes everything
//! ([`fit_words`], `model.json` of kind `words`); `--from-scratch` trains the same network from a
//! random start, the comparison that shows what the pretraining brought.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, PaddingConfig1d};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::text::tokenize::TextTokenizer;
use crate::text::TextDataset;
use crate::train::checkpoint;
use crate::train::config::Monitor;
use crate::train::engine::{self, Engine, EpochEnd, Iteration, Keep, Phase, Task, Validation};
use crate::train::guard;
use crate::train::loss::{argmax, cross_entropy};
use crate::train::run::Evaluation;
use crate::{GraftError, Result};

/// The method name `graft pretrain` dispatches on.
pub const METHOD: &str = "corrupted-text";

/// The encoder `graft pretrain --method corrupted-text` trains unless told otherwise.
pub const DEFAULT_ARCH: &str = "words:64,128,5";

/// The scorer's hidden width (between the encoder and the score; dropped after pretraining).
const SCORER_HIDDEN: usize = 64;

/// The tokenizer file a run keeps beside its encoder.
const TOKENIZER_FILE: &str = "tokenizer.json";

/// `words:E,W,K`: E-wide token embeddings, W convolution filters over windows of K tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordArch {
    pub embed: usize,
    pub width: usize,
    pub window: usize,
}

impl FromStr for WordArch {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| GraftError::setting("arch", s, why.to_string());
        let numbers = s.strip_prefix("words:").ok_or_else(|| bad("expected words:E,W,K (embedding width, filters, window in tokens), e.g. words:64,128,5"))?;
        let n: Vec<usize> = numbers.split(',').map(|w| w.trim().parse::<usize>().ok().filter(|w| *w > 0).ok_or_else(|| bad("each number is a positive whole number"))).collect::<Result<_>>()?;
        let [embed, width, window] = n[..] else { return Err(bad("expected three numbers: words:E,W,K")) };
        if embed > 1024 || width > 4096 {
            return Err(bad("an embedding of at most 1024 and at most 4096 filters"));
        }
        if window % 2 == 0 || window > 15 {
            return Err(bad("the window is an odd number of tokens up to 15 (centred on each token)"));
        }
        Ok(WordArch { embed, width, window })
    }
}

impl fmt::Display for WordArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "words:{},{},{}", self.embed, self.width, self.window)
    }
}

impl Serialize for WordArch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for WordArch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Token embeddings → window convolution (ReLU) → max over the real tokens.
#[derive(Module, Debug)]
pub struct WordEncoder {
    pub embed: Embedding,
    pub conv: Conv1d,
}

impl WordEncoder {
    pub fn init(arch: &WordArch, vocab: usize, device: &Device) -> Self {
        let pad = arch.window / 2;
        Self {
            embed: EmbeddingConfig::new(vocab, arch.embed).init(device),
            conv: Conv1dConfig::new(arch.embed, arch.width, arch.window).with_padding(PaddingConfig1d::Explicit(pad, pad)).init(device),
        }
    }

    /// Token ids [n, t] and their mask [n, t] (1 for a token, 0 for padding) → [n, W].
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<2> {
        let [n, t] = ids.dims();
        let x = self.embed.forward(ids); // [n, t, E]
        let x = relu(self.conv.forward(x.swap_dims(1, 2))); // [n, W, t]
        let width = x.dims()[1];
        // Padding becomes 0, which no ReLU output is below: the max is over the real tokens.
        let x = x * mask.reshape([n, 1, t]); // [n, W, t]
        x.max_dim(2).reshape([n, width]) // [n, W]
    }
}

/// The encoder and the scorer on top: hidden layer (ReLU), then one score per sentence.
#[derive(Module, Debug)]
pub struct Scorer {
    pub encoder: WordEncoder,
    pub hidden: Linear,
    pub score: Linear,
}

impl Scorer {
    pub fn init(arch: &WordArch, vocab: usize, device: &Device) -> Self {
        Self { encoder: WordEncoder::init(arch, vocab, device), hidden: LinearConfig::new(arch.width, SCORER_HIDDEN).init(device), score: LinearConfig::new(SCORER_HIDDEN, 1).init(device) }
    }

    /// Token ids [n, t] and mask → one score per sentence [n].
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<1> {
        let [n, _] = ids.dims();
        let x = self.encoder.forward(ids, mask); // [n, W]
        let x = relu(self.hidden.forward(x)); // [n, 64]
        self.score.forward(x).reshape([n]) // [n]
    }
}

/// The encoder and a linear classifier.
#[derive(Module, Debug)]
pub struct WordClassifier {
    pub encoder: WordEncoder,
    pub head: Linear,
}

impl WordClassifier {
    pub fn init(arch: &WordArch, vocab: usize, classes: usize, device: &Device) -> Self {
        Self { encoder: WordEncoder::init(arch, vocab, device), head: LinearConfig::new(arch.width, classes).init(device) }
    }

    /// Token ids [n, t] and mask → logits [n, classes].
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<2> {
        self.head.forward(self.encoder.forward(ids, mask))
    }
}

/// Sequences padded to the longest: ids [n, t] and mask [n, t].
pub fn token_batch(seqs: &[&[u32]], device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut ids = Vec::with_capacity(seqs.len() * t);
    let mut mask = Vec::with_capacity(seqs.len() * t);
    for s in seqs {
        ids.extend(s.iter().map(|&i| i as i64));
        ids.extend(std::iter::repeat_n(0i64, t - s.len()));
        mask.extend(std::iter::repeat_n(1f32, s.len()));
        mask.extend(std::iter::repeat_n(0f32, t - s.len()));
    }
    let shape = [seqs.len(), t];
    (Tensor::from_data(TensorData::new(ids, shape), device), Tensor::from_data(TensorData::new(mask, shape), device))
}

/// How a sentence is corrupted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Corruption {
    /// One word replaced by a word of the corpus (drawn by frequency).
    Replace,
    /// Two words swapped.
    Swap,
    /// Either, evenly.
    #[default]
    Both,
}

impl FromStr for Corruption {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        crate::error::unit_variant("corruption", s, "expected replace, swap or both")
    }
}

/// A corrupted copy of `seq` (`[CLS]`, at least two word tokens, `[SEP]`): one word token
/// replaced by a token drawn from `pool` (the corpus's word tokens: a draw by frequency), or two
/// word tokens swapped. A swap of two equal tokens becomes a replacement; a replacement tries a
/// few draws for a token other than the one it replaces.
pub fn corrupt(seq: &[u32], how: Corruption, pool: &[u32], rng: &mut StdRng) -> Vec<u32> {
    let mut out = seq.to_vec();
    let words = seq.len().saturating_sub(2);
    if words == 0 || pool.is_empty() {
        return out;
    }
    let swap = words >= 2 && match how {
        Corruption::Swap => true,
        Corruption::Replace => false,
        Corruption::Both => rng.random_bool(0.5),
    };
    if swap {
        let i = rng.random_range(1..=words);
        let mut j = rng.random_range(1..words);
        if j >= i {
            j += 1;
        }
        out.swap(i, j);
        if out != seq {
            return out;
        }
    }
    let i = rng.random_range(1..=words);
    for _ in 0..8 {
        let token = pool[rng.random_range(0..pool.len())];
        if token != seq[i] {
            out[i] = token;
            break;
        }
    }
    out
}

/// The max-margin ranking loss: mean of `max(0, margin − real + corrupt)` over the pairs.
pub fn hinge(real: Tensor<1>, corrupt: Tensor<1>, margin: f64) -> Tensor<1> {
    relu((corrupt - real).add_scalar(margin)).mean()
}

/// Settings of `graft pretrain --method corrupted-text`, saved in its `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorruptTextConfig {
    /// Always [`METHOD`] (what a resumed run dispatches on).
    pub method: String,
    /// Unlabelled texts: a CSV with a `text` column, or a folder of `.txt` files.
    pub data: PathBuf,
    pub arch: WordArch,
    /// A BERT WordPiece `tokenizer.json`; `None`: the pulled MiniLM's (pulled when absent).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Tokens kept per sentence (`[CLS]` and `[SEP]` included).
    pub max_tokens: usize,
    pub corruption: Corruption,
    /// The hinge's margin.
    pub margin: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

impl CorruptTextConfig {
    pub fn from_toml(path: &Path) -> Result<Self> {
        crate::fsutil::read_toml(path)
    }

    pub fn validate(&self) -> Result<()> {
        if self.method != METHOD {
            return Err(GraftError::setting("method", &self.method, format!("this config is for {METHOD}")));
        }
        if !(4..=512).contains(&self.max_tokens) {
            return Err(GraftError::setting("max_tokens", &self.max_tokens.to_string(), "4 to 512 tokens per sentence ([CLS] and [SEP] included)"));
        }
        if !(self.margin > 0.0 && self.margin.is_finite()) {
            return Err(GraftError::setting("margin", &self.margin.to_string(), "must be a positive number"));
        }
        super::autoencoder::check_training(self.lr, self.epochs, self.batch_size)
    }
}

/// Whether the run directory `run` holds a corrupted-text pretraining run (its `config.toml`
/// names the method), for `graft pretrain --resume`, which serves every method.
pub fn is_corrupt_text_run(run: &Path) -> bool {
    #[derive(Deserialize)]
    struct MethodOnly {
        method: String,
    }
    crate::fsutil::read_toml::<MethodOnly>(&run.join("config.toml")).is_ok_and(|m| m.method == METHOD)
}

/// What a corrupted-text run's `model.json` holds (kind `text-pretrain`): written as the run
/// starts (no losses yet) and again when it ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorruptTextSummary {
    pub run: PathBuf,
    pub config: CorruptTextConfig,
    /// Rows of the embedding table (the tokenizer's vocabulary).
    pub vocab: usize,
    /// Sentences trained on (those with at least two word tokens) and those left out.
    pub sentences: usize,
    pub too_short: usize,
    /// Epochs completed.
    pub epochs: usize,
    /// Mean hinge loss of the first and the last epoch.
    pub first_epoch_loss: f64,
    pub last_epoch_loss: f64,
    /// In the last epoch, the fraction of sentences scored above their corrupted copy.
    pub last_epoch_ranked: f64,
    pub seconds: f64,
}

/// Corrupted-text pretraining of `config.arch` on the texts of `config.data` into `run`. `home`
/// is graft's home (where the MiniLM tokenizer is pulled when no tokenizer is given). With
/// `resume`, the run continues after its last completed epoch and ends as an uninterrupted run.
pub fn pretrain_corrupt_text(config: &CorruptTextConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<CorruptTextSummary> {
    engine::removing_a_failed_start(run, resume, || pretrain_run(config, run, resume, home, reporter, device))
}

fn pretrain_run(config: &CorruptTextConfig, run: &Path, resume: bool, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<CorruptTextSummary> {
    config.validate()?;
    if !resume && crate::fsutil::holds_run(run) {
        return Err(GraftError::setting("out", &run.display().to_string(), "already holds a run"));
    }
    let texts = crate::text::dataset::read_unlabelled(&config.data)?.to_vec()?;
    let source = match (resume, &config.tokenizer) {
        (true, _) => run.join(TOKENIZER_FILE),
        (false, Some(path)) => path.clone(),
        (false, None) => crate::text::pull::tokenizer_path(&crate::text::pull::ensure_minilm(home, reporter)?),
    };
    let tokenizer = TextTokenizer::with_max_tokens(&source, config.max_tokens)?;
    let encoded = tokenizer.encode(&texts)?;
    let total = encoded.len();
    let seqs: Vec<Vec<u32>> = encoded.into_iter().filter(|s| s.len() >= 4).collect();
    if seqs.is_empty() {
        return Err(GraftError::Data { path: config.data.clone(), reason: format!("none of its {total} texts has two word tokens to corrupt") });
    }
    let pool: Vec<u32> = seqs.iter().flat_map(|s| s[1..s.len() - 1].iter().copied()).collect();
    let vocab = tokenizer.vocab_size();
    engine::prepare_run_dir(run, resume)?;
    let started = |epochs, first, last, ranked, seconds| CorruptTextSummary {
        run: run.into(),
        config: config.clone(),
        vocab,
        sentences: seqs.len(),
        too_short: total - seqs.len(),
        epochs,
        first_epoch_loss: first,
        last_epoch_loss: last,
        last_epoch_ranked: ranked,
        seconds,
    };
    if !resume {
        write_atomic(&run.join(TOKENIZER_FILE), &crate::fsutil::read_regular(&source, crate::limits::MAX_TOKENIZER_FILE_BYTES)?)?;
        write_atomic(&run.join("config.toml"), toml::to_string(config).expect("config serializes").as_bytes())?;
        started(0, f64::NAN, f64::NAN, f64::NAN, 0.0).save(run, device)?;
    }
    device.seed(config.seed);
    let mut engine = Engine::open(run, resume, config.seed, reporter, device)?;
    let net = engine::stable_ids(Scorer::init(&config.arch, vocab, device).train());
    let phase = Phase::keep_last("", config.epochs, "scorer.safetensors");
    let net = engine.resume_phase(net, &phase, "the sentence scorer")?;
    let mut task = CorruptTask { config, seqs: &seqs, pool: &pool, train_device: device.clone().autodiff(), batches: Vec::new(), rng: StdRng::seed_from_u64(config.seed), sums: (0.0, 0, 0) };
    let trained = engine.run_phase(&mut task, net, phase)?.valid();
    let records: Vec<serde_json::Value> = engine::read_records(run)?;
    let losses: Vec<f64> = records.iter().filter_map(|r| r["train_loss"].as_f64()).collect();
    let ranked = records.last().and_then(|r| r["ranked"].as_f64()).unwrap_or(f64::NAN);
    checkpoint::save(&trained.encoder, &run.join("encoder.safetensors"), BTreeMap::from([("graft.arch".to_string(), config.arch.to_string())]))?;
    let first = losses.first().copied().unwrap_or(f64::NAN);
    let last = losses.last().copied().unwrap_or(f64::NAN);
    let summary = started(engine.state.epoch, first, last, ranked, engine.state.train_seconds);
    summary.save(run, device)?;
    Ok(summary)
}

/// The fraction of `seqs` that `net` scores above a corrupted copy (drawn with `seed`).
pub fn ranked_fraction(net: &Scorer, seqs: &[Vec<u32>], pool: &[u32], how: Corruption, seed: u64, device: &Device) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut above = 0;
    for chunk in seqs.chunks(256) {
        let corrupted: Vec<Vec<u32>> = chunk.iter().map(|s| corrupt(s, how, pool, &mut rng)).collect();
        let (real, fake) = score_pairs(net, chunk, &corrupted, device);
        above += real.iter().zip(&fake).filter(|(r, f)| r > f).count();
    }
    above as f64 / seqs.len().max(1) as f64
}

/// Scores of real sentences and of their corrupted copies, as numbers.
fn score_pairs(net: &Scorer, real: &[Vec<u32>], fake: &[Vec<u32>], device: &Device) -> (Vec<f32>, Vec<f32>) {
    let both: Vec<&[u32]> = real.iter().chain(fake).map(Vec::as_slice).collect();
    let (ids, mask) = token_batch(&both, device);
    let scores: Vec<f32> = net.forward(ids, mask).into_data().try_to_vec::<f32>().unwrap_or_default();
    let (a, b) = scores.split_at(real.len().min(scores.len()));
    (a.to_vec(), b.to_vec())
}

/// The scorer's training as the engine's task.
struct CorruptTask<'a> {
    config: &'a CorruptTextConfig,
    seqs: &'a [Vec<u32>],
    pool: &'a [u32],
    train_device: Device,
    batches: Vec<Vec<usize>>,
    /// The epoch's corruptions (seeded per epoch: a resumed run draws the same).
    rng: StdRng,
    /// (loss × sentences, sentences ranked above their copy, sentences) of the epoch.
    sums: (f64, usize, usize),
}

impl Task for CorruptTask<'_> {
    type Model = Scorer;

    fn iterations(&self) -> usize {
        self.seqs.len().div_ceil(self.config.batch_size.max(1))
    }

    fn begin_epoch(&mut self, _model: &Scorer, epoch: usize) -> Result<()> {
        let order = engine::epoch_order(self.seqs.len(), self.config.seed, epoch);
        self.batches = order.chunks(self.config.batch_size.max(1)).map(<[usize]>::to_vec).collect();
        self.rng = StdRng::seed_from_u64(engine::epoch_seed(self.config.seed, epoch));
        self.sums = (0.0, 0, 0);
        Ok(())
    }

    fn lr(&self, _it: &Iteration) -> f64 {
        self.config.lr
    }

    fn step(&mut self, net: &Scorer, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let idx = &self.batches[it.index];
        let b = idx.len();
        let real: Vec<&[u32]> = idx.iter().map(|&i| self.seqs[i].as_slice()).collect();
        let fake: Vec<Vec<u32>> = real.iter().map(|s| corrupt(s, self.config.corruption, self.pool, &mut self.rng)).collect();
        let both: Vec<&[u32]> = real.iter().copied().chain(fake.iter().map(Vec::as_slice)).collect();
        let (ids, mask) = token_batch(&both, &self.train_device); // [2b, t]
        let scores = net.forward(ids, mask); // [2b]
        let (s_real, s_fake) = (scores.clone().slice([0..b]), scores.slice([b..2 * b]));
        let above = (s_real.clone() - s_fake.clone()).detach().into_data().try_to_vec::<f32>().unwrap_or_default().iter().filter(|d| **d > 0.0).count();
        let loss = hinge(s_real, s_fake, self.config.margin);
        let value = loss.clone().into_scalar::<f32>() as f64;
        guard::check_loss("corrupted-text hinge loss", value, it.epoch + 1, lr)?;
        self.sums.0 += value * b as f64;
        self.sums.1 += above;
        self.sums.2 += b;
        Ok(vec![(GradientsParams::from_grads(loss.backward(), net), 1.0)])
    }

    fn end_epoch(&mut self, _model: &Scorer, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let (loss, above, n) = self.sums;
        let (loss, ranked) = (loss / n.max(1) as f64, above as f64 / n.max(1) as f64);
        let record = serde_json::json!({"epoch": epoch, "phase": METHOD, "lr": lr, "train_loss": loss, "ranked": ranked, "seconds": seconds});
        Ok(EpochEnd { validation: None, record, scalars: vec![("loss/corrupted_text".into(), loss), ("ranked".into(), ranked), ("lr".into(), lr)] })
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
        reporter.message(&format!(
            "{METHOD} epoch {}/{total}: hinge loss {:.4}, real above corrupted {:.1}%",
            record["epoch"].as_u64().unwrap_or(0),
            record["train_loss"].as_f64().unwrap_or(f64::NAN),
            100.0 * record["ranked"].as_f64().unwrap_or(f64::NAN)
        ));
    }
}

/// Settings of `graft fit --init RUN` where RUN is a corrupted-text run, saved in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordFitConfig {
    /// The corrupted-text run whose encoder (and tokenizer) the classifier starts from.
    pub init: PathBuf,
    /// The same network from a random start (the run's tokenizer and shape only).
    pub from_scratch: bool,
    /// The encoder stays as it starts (pretrained or random); the classifier alone trains.
    #[serde(default)]
    pub freeze_encoder: bool,
    /// Labelled texts: a CSV with text,label columns or class folders of `.txt` files.
    pub data: PathBuf,
    pub val: Option<PathBuf>,
    /// Used without `val`; 0 trains on everything and keeps the last epoch.
    pub val_split: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

impl WordFitConfig {
    pub fn validate(&self) -> Result<()> {
        super::autoencoder::check_training(self.lr, self.epochs, self.batch_size)?;
        if self.val.is_none() && !(0.0..1.0).contains(&self.val_split) {
            return Err(GraftError::setting("val_split", &self.val_split.to_string(), "must be in [0, 1); 0 trains on everything"));
        }
        Ok(())
    }
}

/// What a fine-tuned word-encoder run's `model.json` holds (kind `words`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordFitRun {
    pub config: WordFitConfig,
    pub arch: WordArch,
    pub vocab: usize,
    pub max_tokens: usize,
    pub classes: Vec<String>,
    pub best_epoch: usize,
    pub best_val_accuracy: Option<f64>,
    /// The last epoch's validation accuracy (a figure that no epoch choice has seen).
    pub last_val_accuracy: Option<f64>,
    pub train_accuracy: f64,
    pub n_train: usize,
    pub n_val: usize,
    pub seconds: f64,
}

/// Labelled sequences.
struct Labelled {
    seqs: Vec<Vec<u32>>,
    labels: Vec<usize>,
}

impl Labelled {
    fn of(set: &TextDataset, tokenizer: &TextTokenizer) -> Result<Self> {
        Ok(Labelled { seqs: tokenizer.encode(&set.texts.to_vec()?)?, labels: set.labels.clone() })
    }
}

/// Mean cross-entropy and predictions of `net` on `set`.
fn score(net: &WordClassifier, set: &Labelled, device: &Device) -> (f64, Vec<usize>) {
    let (mut loss, mut predicted) = (0f64, Vec::with_capacity(set.labels.len()));
    for (seqs, labels) in set.seqs.chunks(256).zip(set.labels.chunks(256)) {
        let (ids, mask) = token_batch(&seqs.iter().map(Vec::as_slice).collect::<Vec<_>>(), device);
        let logits = net.forward(ids, mask);
        let l: f32 = cross_entropy(logits.clone(), labels, 0.0, None, device).into_scalar();
        loss += l as f64 * labels.len() as f64;
        predicted.extend(argmax(logits));
    }
    (loss / set.labels.len().max(1) as f64, predicted)
}

/// Fine-tunes the encoder of a corrupted-text run (or, `from_scratch`, the same network from a
/// random start) with a linear classifier on labelled texts (`freeze_encoder`: the classifier
/// alone); the run is in `run`.
pub fn fit_words(config: &WordFitConfig, run: &Path, reporter: &dyn Reporter, device: &Device) -> Result<WordFitRun> {
    if crate::fsutil::holds_run(run) {
        return Err(GraftError::setting("out", &run.display().to_string(), "already holds a run"));
    }
    config.validate()?;
    let started = Instant::now();
    let pre = CorruptTextSummary::load(&config.init)?;
    let tokenizer_file = config.init.join(TOKENIZER_FILE);
    let tokenizer = TextTokenizer::with_max_tokens(&tokenizer_file, pre.config.max_tokens)?;
    let data = TextDataset::open(&config.data)?;
    data.check_trainable()?;
    let (train, val) = match (&config.val, config.val_split) {
        (Some(path), _) => (data.clone(), TextDataset::open(path)?.with_classes(&data.classes)?),
        (None, f) if f > 0.0 => {
            let (t, v) = crate::text::stratified_split(&data.labels, f, config.seed)?;
            (data.subset(&t), data.subset(&v))
        }
        _ => (data.clone(), data.subset(&[])),
    };
    let (train_set, val_set) = (Labelled::of(&train, &tokenizer)?, Labelled::of(&val, &tokenizer)?);
    let classes = data.classes.len();
    device.seed(config.seed);
    let mut net = WordClassifier::init(&pre.config.arch, pre.vocab, classes, device);
    if !config.from_scratch {
        net.encoder = checkpoint::load(WordEncoder::init(&pre.config.arch, pre.vocab, device), &config.init.join("encoder.safetensors"))?;
    }
    let mut net = engine::stable_ids(net.train());
    if config.freeze_encoder {
        net.encoder = net.encoder.no_grad();
    }
    std::fs::create_dir_all(run).map_err(|e| GraftError::io(run, e))?;
    crate::fsutil::check_run_dir(run)?;
    write_atomic(&run.join(TOKENIZER_FILE), &crate::fsutil::read_regular(&tokenizer_file, crate::limits::MAX_TOKENIZER_FILE_BYTES)?)?;
    let mut engine = Engine::open(run, false, config.seed, reporter, device)?;
    let mut task = WordTask { train: &train_set, val: &val_set, classes: &data.classes, config, device, train_device: device.clone().autodiff(), batches: Vec::new(), loss_sum: 0.0, correct: 0 };
    // The best validation accuracy (the last epoch without validation data).
    let phase = Phase { keep: Keep::Best { monitor: Monitor::ValAccuracy, min_delta: 0.0 }, ..Phase::keep_last("", config.epochs, "best.safetensors") };
    engine.run_phase(&mut task, net, phase)?;
    let state = engine.state;
    let best = checkpoint::load(WordClassifier::init(&pre.config.arch, pre.vocab, classes, device), &run.join("best.safetensors"))?;
    let (_, predicted) = score(&best, &train_set, device);
    let correct = predicted.iter().zip(&train_set.labels).filter(|(p, t)| p == t).count();
    let records: Vec<serde_json::Value> = engine::read_records(run)?;
    let info = WordFitRun {
        config: config.clone(),
        arch: pre.config.arch,
        vocab: pre.vocab,
        max_tokens: pre.config.max_tokens,
        classes: data.classes.clone(),
        best_epoch: state.best_epoch,
        best_val_accuracy: (!val_set.labels.is_empty()).then_some(state.best_val_accuracy),
        last_val_accuracy: records.last().and_then(|r| r["val_accuracy"].as_f64()),
        train_accuracy: correct as f64 / train_set.labels.len().max(1) as f64,
        n_train: train_set.labels.len(),
        n_val: val_set.labels.len(),
        seconds: started.elapsed().as_secs_f64(),
    };
    info.save(run, device)?;
    Ok(info)
}

/// A `words` run ready for inference: its tokenizer and kept classifier.
pub struct WordRunModel {
    pub info: WordFitRun,
    pub tokenizer: TextTokenizer,
    pub net: WordClassifier,
}

/// Loads a `words` run: its own copy of the tokenizer and its kept checkpoint.
pub fn load_word_run(run: &Path, device: &Device) -> Result<WordRunModel> {
    let info = WordFitRun::load(run)?;
    crate::fsutil::check_run_dir(run)?;
    let tokenizer = TextTokenizer::with_max_tokens(&run.join(TOKENIZER_FILE), info.max_tokens)?;
    let net = checkpoint::load(WordClassifier::init(&info.arch, info.vocab, info.classes.len(), device), &run.join("best.safetensors"))?;
    Ok(WordRunModel { info, tokenizer, net })
}

impl WordRunModel {
    /// Class probabilities of `texts`, one row each.
    pub fn probabilities<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<Vec<Vec<f32>>> {
        let seqs = self.tokenizer.encode(texts)?;
        let mut rows = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(256) {
            let (ids, mask) = token_batch(&chunk.iter().map(Vec::as_slice).collect::<Vec<_>>(), device);
            let p = burn::tensor::activation::softmax(self.net.forward(ids, mask), 1).into_data().try_to_vec::<f32>();
            let p = p.map_err(|e| GraftError::Data { path: self.tokenizer.path().to_path_buf(), reason: format!("the classifier's probabilities: {e:?}") })?;
            rows.extend(p.chunks(self.info.classes.len().max(1)).map(<[f32]>::to_vec));
        }
        Ok(rows)
    }
}

/// The classifier's fine-tune as the engine's task.
struct WordTask<'a> {
    train: &'a Labelled,
    val: &'a Labelled,
    classes: &'a [String],
    config: &'a WordFitConfig,
    device: &'a Device,
    train_device: Device,
    batches: Vec<Vec<usize>>,
    loss_sum: f64,
    correct: usize,
}

impl Task for WordTask<'_> {
    type Model = WordClassifier;

    fn iterations(&self) -> usize {
        self.train.labels.len().div_ceil(self.config.batch_size.max(1))
    }

    fn begin_epoch(&mut self, _model: &WordClassifier, epoch: usize) -> Result<()> {
        let order = engine::epoch_order(self.train.labels.len(), self.config.seed, epoch);
        self.batches = order.chunks(self.config.batch_size.max(1)).map(<[usize]>::to_vec).collect();
        (self.loss_sum, self.correct) = (0.0, 0);
        Ok(())
    }

    fn lr(&self, _it: &Iteration) -> f64 {
        self.config.lr
    }

    fn step(&mut self, model: &WordClassifier, it: &Iteration, lr: f64) -> Result<Vec<(GradientsParams, f64)>> {
        let idx = &self.batches[it.index];
        let seqs: Vec<&[u32]> = idx.iter().map(|&i| self.train.seqs[i].as_slice()).collect();
        let (ids, mask) = token_batch(&seqs, &self.train_device); // [b, t]
        let targets: Vec<usize> = idx.iter().map(|&i| self.train.labels[i]).collect();
        let logits = model.forward(ids, mask); // [b, classes]
        let loss = cross_entropy(logits.clone(), &targets, 0.0, None, &self.train_device);
        let value = loss.clone().into_scalar::<f32>() as f64;
        guard::check_loss("training loss", value, it.epoch + 1, lr)?;
        self.loss_sum += value * idx.len() as f64;
        self.correct += argmax(logits.detach()).iter().zip(&targets).filter(|(p, t)| p == t).count();
        Ok(vec![(GradientsParams::from_grads(loss.backward(), model), 1.0)])
    }

    fn end_epoch(&mut self, model: &WordClassifier, epoch: usize, lr: f64, seconds: f64) -> Result<EpochEnd> {
        let validation = (!self.val.labels.is_empty()).then(|| {
            let (loss, predicted) = score(model, self.val, self.device);
            let eval = Evaluation::from_predictions(self.classes, &self.val.labels, &predicted);
            Validation { loss, accuracy: eval.accuracy, confusion: eval.confusion }
        });
        Ok(crate::train::fit::classifier_epoch_end(epoch, lr, seconds, self.loss_sum, self.correct, self.train.labels.len(), validation))
    }

    fn report(&self, reporter: &dyn Reporter, record: &serde_json::Value, total: usize) {
        crate::train::fit::report_classifier_epoch(reporter, record, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_parses_and_prints() {
        let a: WordArch = "words:64,128,5".parse().unwrap();
        assert_eq!((a.embed, a.width, a.window), (64, 128, 5));
        assert_eq!(a.to_string(), "words:64,128,5");
        for bad in ["words:64,128", "words:64,128,4", "mlp:64", "words:0,1,1", "words:64,128,17"] {
            assert!(bad.parse::<WordArch>().is_err(), "{bad}");
        }
    }

    /// A corrupted copy keeps `[CLS]` and `[SEP]`, has the same length and differs from the
    /// sentence; a swap leaves the same tokens, a replacement puts in one of the pool's.
    #[test]
    fn corruptions_change_one_word_or_swap_two() {
        let mut rng = StdRng::seed_from_u64(1);
        let seq = vec![101, 5, 6, 7, 8, 102];
        let pool = [9u32, 10];
        for _ in 0..50 {
            let r = corrupt(&seq, Corruption::Replace, &pool, &mut rng);
            assert_eq!((r[0], r[5], r.len()), (101, 102, 6));
            let changed: Vec<usize> = (0..6).filter(|&i| r[i] != seq[i]).collect();
            assert_eq!(changed.len(), 1, "{r:?}");
            assert!(pool.contains(&r[changed[0]]));
            let s = corrupt(&seq, Corruption::Swap, &pool, &mut rng);
            let (mut a, mut b) = (s.clone(), seq.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b, "a swap keeps the tokens");
            assert_eq!((0..6).filter(|&i| s[i] != seq[i]).count(), 2, "{s:?}");
        }
    }

    /// The hinge is zero once every real sentence outscores its copy by the margin, and grows
    /// with the copy's score otherwise.
    #[test]
    fn the_hinge_is_zero_beyond_the_margin() {
        let device = Device::flex();
        let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device);
        let value = |real: Vec<f32>, fake: Vec<f32>| hinge(t(real), t(fake), 1.0).into_scalar::<f32>();
        assert_eq!(value(vec![3.0, 2.0], vec![1.0, 0.5]), 0.0);
        assert!((value(vec![0.0, 0.0], vec![0.0, 1.0]) - 1.5).abs() < 1e-6);
    }

    /// On a tiny corpus of grammatical patterns, training lowers the hinge loss and leaves the
    /// real sentences scored above freshly corrupted copies far more often than chance.
    #[test]
    fn training_ranks_real_sentences_above_corrupted_ones() {
        let device = Device::flex();
        // Token ids: 101 [CLS], 102 [SEP]; every sentence is "determiner adjective noun verb
        // adverb", each word class its own ids, so a swap always breaks the pattern and a
        // replacement does unless it draws a word of the same class (a fifth of the time).
        let classes: [&[u32]; 5] = [&[1, 2, 3], &[10, 11, 12, 13], &[20, 21, 22, 23, 24, 25], &[30, 31, 32, 33], &[40, 41, 42]];
        let mut rng = StdRng::seed_from_u64(0);
        let seqs: Vec<Vec<u32>> = (0..256)
            .map(|_| std::iter::once(101).chain(classes.iter().map(|c| c[rng.random_range(0..c.len())])).chain(std::iter::once(102)).collect())
            .collect();
        let pool: Vec<u32> = seqs.iter().flat_map(|s| s[1..6].to_vec()).collect();
        let config = CorruptTextConfig {
            method: METHOD.into(),
            data: PathBuf::new(),
            arch: "words:16,32,3".parse().unwrap(),
            tokenizer: None,
            max_tokens: 16,
            corruption: Corruption::Both,
            margin: 1.0,
            epochs: 1,
            batch_size: 32,
            lr: 3e-3,
            seed: 0,
        };
        device.seed(0);
        let train_device = device.clone().autodiff();
        let mut net = Scorer::init(&config.arch, 128, &train_device).train();
        let before = ranked_fraction(&net.clone().valid(), &seqs, &pool, Corruption::Both, 99, &device);
        let mut task = CorruptTask { config: &config, seqs: &seqs, pool: &pool, train_device: train_device.clone(), batches: Vec::new(), rng: StdRng::seed_from_u64(0), sums: (0.0, 0, 0) };
        let mut optimizer: burn::optim::ModuleOptimizer = burn::optim::AdamConfig::new().init();
        let mut losses = Vec::new();
        for epoch in 0..15 {
            task.begin_epoch(&net, epoch).unwrap();
            for index in 0..task.iterations() {
                let it = Iteration { epoch, index, phase_step: 0, phase_steps: 1, step: 0 };
                let grads = task.step(&net, &it, config.lr).unwrap().remove(0).0;
                net = optimizer.step(config.lr, net, grads);
            }
            losses.push(task.sums.0 / task.sums.2 as f64);
        }
        let after = ranked_fraction(&net.valid(), &seqs, &pool, Corruption::Both, 99, &device);
        assert!(losses[14] < 0.5 * losses[0], "hinge loss {losses:?}");
        // A perfect scorer ranks about 95% (the undetectable replacements are coin flips).
        assert!(after > 0.8 && after > before + 0.2, "real above corrupted: {before:.3} before, {after:.3} after");
    }
}
