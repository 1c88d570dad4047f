//! Text: labelled text datasets, tokenization, and sentence embeddings from the `minilm-l6`
//! encoder (all-MiniLM-L6-v2: BERT, mean pooling, L2 normalisation), the text counterpart of
//! pooled image features.

pub mod dataset;
pub mod features;
pub mod pull;
pub mod tokenize;
pub mod zeroshot;

#[cfg(test)]
mod probe;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::report::Reporter;
use crate::zoo::bert::{BertConfig, BertModel};
use crate::zoo::load::WeightSource;
use crate::zoo::pull::sha256_file;
use crate::{GraftError, Result};
pub use dataset::{stratified_split, TextDataset};
pub use tokenize::{TextTokenizer, MAX_TOKENS};

/// Whether `model` names a text encoder (its data are texts, not images).
pub fn is_text_model(model: &str) -> bool {
    model == pull::MINILM_ID
}

/// Texts per forward pass when the caller has no preference.
pub const DEFAULT_BATCH: usize = 32;

/// A sentence encoder with its tokenizer, ready to embed.
#[derive(Debug)]
pub struct SentenceEncoder {
    pub model: BertModel,
    pub tokenizer: TextTokenizer,
    /// The file the weights were read from.
    pub weights_path: PathBuf,
    /// sha256 of the weights file (the checkpoint's identity in caches and runs).
    pub weights_sha256: String,
}

impl SentenceEncoder {
    /// all-MiniLM-L6-v2 from graft's cache, pulled on first use.
    pub fn minilm(home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<Self> {
        let pulled = pull::ensure_minilm(home, reporter)?;
        let tokenizer = pull::tokenizer_path(&pulled);
        Self::from_files(&pulled.path, &tokenizer, device)
    }

    /// The text model `model` (only `minilm-l6`): from `weights` when given (with the pulled
    /// tokenizer), otherwise from graft's cache, pulled on first use.
    pub fn load(model: &str, weights: Option<&Path>, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<Self> {
        if !is_text_model(model) {
            return Err(GraftError::setting("model", model, format!("not a text model (text models: {})", pull::MINILM_ID)));
        }
        let pulled = pull::ensure_minilm(home, reporter)?;
        let tokenizer = pull::tokenizer_path(&pulled);
        Self::from_files(weights.unwrap_or(&pulled.path), &tokenizer, device)
    }

    /// A MiniLM-L6-shaped checkpoint (`model.safetensors` or a `.bin` state dict, bare or with
    /// a `bert.` prefix) and its `tokenizer.json`.
    pub fn from_files(weights: &Path, tokenizer: &Path, device: &Device) -> Result<Self> {
        let tokenizer = TextTokenizer::from_file(tokenizer)?;
        let dict = graft_weights::load(weights)?;
        let source = WeightSource { dict: &dict, path: weights, model: pull::MINILM_ID, device };
        let model = BertConfig::minilm_l6().init(device).load_weights(&source)?;
        Ok(Self { model, tokenizer, weights_path: weights.to_path_buf(), weights_sha256: sha256_file(weights)? })
    }

    /// Unit-length embeddings of `texts`, [`DEFAULT_BATCH`] at a time.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S], reporter: &dyn Reporter) -> Result<Vec<Vec<f32>>> {
        embed_texts(&self.model, &self.tokenizer, texts, DEFAULT_BATCH, reporter)
    }
}

/// Embeds `texts` in batches of `batch`, returning one vector per text in input order.
///
/// Texts are tokenized up front and batched in order of token count, so that a batch holds
/// texts of similar length and little compute goes to padding (as sentence-transformers does);
/// the results are put back in input order. Progress counts texts.
pub fn embed_texts<S: AsRef<str>>(
    model: &BertModel,
    tokenizer: &TextTokenizer,
    texts: &[S],
    batch: usize,
    reporter: &dyn Reporter,
) -> Result<Vec<Vec<f32>>> {
    if batch == 0 {
        return Err(GraftError::setting("batch_size", "0", "the batch size must be at least 1"));
    }
    let ids = tokenizer.encode(texts)?;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut out = vec![Vec::new(); ids.len()];
    reporter.start("embedding texts", Some(ids.len() as u64));
    let mut done = 0;
    for chunk in order.chunks(batch) {
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
        let embedded = model.embed(&tokenizer.pad(&rows))?; // [rows, D]
        let [_, d] = embedded.dims();
        let values: Vec<f32> = embedded.into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data {
            path: tokenizer.path().to_path_buf(),
            reason: format!("cannot read embeddings back: {e:?}"),
        })?;
        for (&i, row) in chunk.iter().zip(values.chunks_exact(d)) {
            out[i] = row.to_vec();
        }
        done += chunk.len();
        reporter.progress(done as u64);
    }
    reporter.finish();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::device::default_device;
    use crate::report::Silent;

    fn home() -> PathBuf {
        std::env::var_os("GRAFT_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/graft-test-home"))
    }

    fn shared_text() -> PathBuf {
        std::env::var_os("GRAFT_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
            .join("data/text")
    }

    /// Frozen MiniLM embeddings + multinomial logistic regression on seeded stratified 50/50
    /// splits of SMS spam and rt-polarity. A measurement, not a test:
    /// `cargo test --release -p graft --lib text::tests::measure_minilm_probe -- --ignored --nocapture`
    /// (`GRAFT_MEASURE_LIMIT=N` embeds only the first N texts of each set; `GRAFT_MEASURE_SEEDS`
    /// lists split seeds, default `0`; `GRAFT_MEASURE_BATCH` sets the batch size;
    /// `GRAFT_MEASURE_SAVE=DIR` writes the embeddings and labels there as `.npy`).
    #[test]
    #[ignore]
    fn measure_minilm_probe() {
        let device = default_device();
        let encoder = SentenceEncoder::minilm(&home(), &Silent, &device).unwrap();
        let limit: usize = std::env::var("GRAFT_MEASURE_LIMIT").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
        let batch: usize =
            std::env::var("GRAFT_MEASURE_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_BATCH);
        let seeds: Vec<u64> = std::env::var("GRAFT_MEASURE_SEEDS")
            .unwrap_or_else(|_| "0".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        let sets = [
            ("sms-spam", TextDataset::sms_spam(&shared_text().join("sms-spam/SMSSpamCollection")).unwrap()),
            ("rt-polarity", TextDataset::rt_polarity(&shared_text().join("rt-polarity")).unwrap()),
        ];
        for (name, data) in sets {
            let n = data.len().min(limit);
            let data = data.subset(&(0..n).collect::<Vec<_>>());
            let texts = data.texts.to_vec().unwrap();
            let tokens: usize = encoder.tokenizer.encode(&texts).unwrap().iter().map(Vec::len).sum();
            let start = Instant::now();
            let x = embed_texts(&encoder.model, &encoder.tokenizer, &texts, batch, &Silent).unwrap();
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "{name}: embedded {n} texts ({tokens} tokens, batch {batch}) in {secs:.1} s = {:.1} sentences/s, {:.0} tokens/s",
                n as f64 / secs,
                tokens as f64 / secs
            );
            if let Some(dir) = std::env::var_os("GRAFT_MEASURE_SAVE") {
                // Embeddings and labels as .npy, to check the probe against another library.
                let dir = PathBuf::from(dir);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join(format!("{name}-x.npy")),
                    crate::npy::encode_f32(&[n, x[0].len()], &x.concat()),
                )
                .unwrap();
                let y: Vec<f32> = data.labels.iter().map(|&l| l as f32).collect();
                std::fs::write(dir.join(format!("{name}-y.npy")), crate::npy::encode_f32(&[n], &y)).unwrap();
            }
            for &seed in &seeds {
                let (train, test) = stratified_split(&data.labels, 0.5, seed).unwrap();
                let pick = |idx: &[usize]| -> (Vec<Vec<f32>>, Vec<usize>) {
                    (idx.iter().map(|&i| x[i].clone()).collect(), idx.iter().map(|&i| data.labels[i]).collect())
                };
                let ((xtr, ytr), (xte, yte)) = (pick(&train), pick(&test));
                let start = Instant::now();
                let model = probe::LogisticRegression::fit(&xtr, &ytr, data.classes.len(), 1.0);
                let fit_secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "{name} seed {seed}: train {} test {}; logistic regression (C=1) train acc {:.4}, test acc {:.4} (fit {fit_secs:.1} s, {} steps)",
                    xtr.len(),
                    xte.len(),
                    model.accuracy(&xtr, &ytr),
                    model.accuracy(&xte, &yte),
                    model.iterations
                );
            }
        }
    }

    /// The logistic head's C and standardisation on cached MiniLM embeddings (a measurement:
    /// `GRAFT_HOME=… GRAFT_MEASURE_SEEDS=0,1,2 cargo test --release -p graft --lib
    /// text::tests::measure_logistic_penalty -- --ignored --nocapture`). C is picked by
    /// cross-validation on the training half only; the held-out half is scored once per variant.
    #[test]
    #[ignore]
    fn measure_logistic_penalty() {
        use crate::classic::{cross_validate, fit_logistic};
        let device = default_device();
        let encoder = SentenceEncoder::minilm(&home(), &Silent, &device).unwrap();
        let mut store = features::open_store(&home(), "minilm-l6", &encoder, crate::cache::StoreDtype::F32, &Silent).unwrap();
        let seeds: Vec<u64> = std::env::var("GRAFT_MEASURE_SEEDS").unwrap_or_else(|_| "0".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
        let sets = [
            ("sms-spam", TextDataset::sms_spam(&shared_text().join("sms-spam/SMSSpamCollection")).unwrap()),
            ("rt-polarity", TextDataset::rt_polarity(&shared_text().join("rt-polarity")).unwrap()),
        ];
        for (name, data) in sets {
            let mut stats = features::EmbedStats::default();
            let x = features::embed_cached(&encoder, &data.texts.to_vec().unwrap(), Some(&mut store), &Silent, &mut stats).unwrap();
            eprintln!("{name}: {} hits, {} misses", stats.hits, stats.misses);
            let d = x[0].len();
            let k = data.classes.len();
            for &seed in &seeds {
                let (train, test) = stratified_split(&data.labels, 0.5, seed).unwrap();
                let ytr: Vec<usize> = train.iter().map(|&i| data.labels[i]).collect();
                for standardise in [true, false] {
                    let (mut mean, mut std) = (vec![0f64; d], vec![1f64; d]);
                    if standardise {
                        for &i in &train {
                            x[i].iter().zip(mean.iter_mut()).for_each(|(v, m)| *m += *v as f64 / train.len() as f64);
                        }
                        let mut var = vec![0f64; d];
                        for &i in &train {
                            x[i].iter().zip(&mean).zip(var.iter_mut()).for_each(|((v, m), s)| *s += (*v as f64 - m).powi(2) / train.len() as f64);
                        }
                        std = var.iter().map(|v| v.sqrt().max(1e-6)).collect();
                    }
                    let rows = |idx: &[usize]| -> Vec<f64> { idx.iter().flat_map(|&i| x[i].iter().zip(&mean).zip(&std).map(|((v, m), s)| (*v as f64 - m) / s)).collect() };
                    let (xtr, xte) = (rows(&train), rows(&test));
                    let start = Instant::now();
                    let cv = cross_validate(&xtr, &ytr, d, k, seed).unwrap();
                    let cv_secs = start.elapsed().as_secs_f64();
                    let test_acc = |c: f64| {
                        let w = fit_logistic(&xtr, &ytr, d, k, c, None);
                        let correct = test.iter().enumerate().filter(|(j, &i)| {
                            let xi = &xte[j * d..(j + 1) * d];
                            let s: Vec<f64> = (0..k).map(|c| w[c * (d + 1)..(c + 1) * (d + 1) - 1].iter().zip(xi).map(|(a, b)| a * b).sum::<f64>() + w[(c + 1) * (d + 1) - 1]).collect();
                            let best = s.iter().enumerate().fold(0, |b, (c, &v)| if v > s[b] { c } else { b });
                            best == data.labels[i]
                        }).count();
                        correct as f64 / test.len() as f64
                    };
                    let grid: Vec<String> = cv.scores.iter().map(|s| format!("{}:{:.4}/{:.3}", s.c, s.accuracy, s.log_loss)).collect();
                    eprintln!("{name} seed {seed} standardise {standardise}: CV ({cv_secs:.1} s) {}", grid.join(" "));
                    eprintln!("  chosen C {} → test {:.4}; C=1 → test {:.4}", cv.c, test_acc(cv.c), test_acc(1.0));
                }
            }
        }
    }
}
