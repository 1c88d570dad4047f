//! Text domains for `graft adapt --backbone minilm-l6`: the frozen sentence encoder's embeddings
//! (in the feature store, so each review is embedded once across runs and methods, and read back
//! per batch) are the rows the bottleneck → classifier network trains on, like a zoo trunk's
//! pooled features.
//!
//! A domain is any text dataset `graft fit` reads (a CSV with `text,label`, a folder of class
//! sub-folders of `.txt`, an Amazon reviews domain folder …) or `amazon:DOMAIN`, read from
//! `--data-root`/text/amazon-reviews/DOMAIN (books, dvd, electronics, kitchen).

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, TensorData};

use super::config::AdaptConfig;
use super::data::{Domain, InputSpec};
use super::train::{evaluate, AdaptedModel, Loaded};
use crate::cache::StoreDtype;
use crate::data::folder::Skipped;
use crate::report::Reporter;
use crate::train::run::Evaluation;
use crate::text::features::{embed_to_store, open_store, preprocess_id, EmbedStats};
use crate::text::dataset::Texts;
use crate::text::{SentenceEncoder, TextDataset};
use crate::{GraftError, Result};

/// Where a text domain is read from.
pub fn domain_path(value: &str, data_root: &Path) -> PathBuf {
    match value.strip_prefix("amazon:") {
        Some(domain) => data_root.join("text").join("amazon-reviews").join(domain),
        None => PathBuf::from(value),
    }
}

fn read(setting: &str, value: &str, data_root: &Path) -> Result<TextDataset> {
    let path = domain_path(value, data_root);
    TextDataset::open_any(&path).map_err(|e| GraftError::setting(setting, value, format!("not a text dataset: {e}")))
}

impl AdaptedModel {
    fn text_encoder(&self, setting: &str) -> Result<&SentenceEncoder> {
        self.encoder.as_ref().ok_or_else(|| GraftError::setting(setting, &self.info.backbone, "this adaptation run classifies images, not texts"))
    }

    /// Embeddings of `texts` as the run's network takes them (through the feature store under
    /// `home`, as in training).
    fn embed(&self, setting: &str, texts: &Texts, home: &Path, reporter: &dyn Reporter, stats: &mut EmbedStats) -> Result<Domain> {
        let encoder = self.text_encoder(setting)?;
        let mut store = open_store(home, &self.info.backbone, encoder, StoreDtype::F32, reporter)?;
        let keys = embed_to_store(encoder, texts, &mut store, reporter, stats)?;
        let width = store.dim().unwrap_or(self.info.input_width);
        Ok(Domain::from_store(setting.to_string(), store, keys, width, Vec::new()))
    }

    /// Scores the kept model on a labelled text domain (a `text,label` CSV, a class folder of
    /// `.txt`, or `amazon:DOMAIN` under `data_root`) given as `--data`, as `graft adapt`
    /// scored `--target-test`.
    pub fn evaluate_texts(&self, value: &str, data_root: &Path, batch: usize, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<(Evaluation, Vec<Skipped>, EmbedStats)> {
        let setting = "data";
        self.text_encoder(setting)?;
        let data = read(setting, value, data_root)?.with_classes(&self.info.classes)?;
        let mut stats = EmbedStats::default();
        let mut domain = self.embed(setting, &data.texts, home, reporter, &mut stats)?;
        domain.labels = data.labels.clone();
        let (_, predicted) = evaluate(&self.net, &domain, batch, device)?;
        Ok((Evaluation::from_predictions(&self.info.classes, &domain.labels, &predicted), data.skipped, stats))
    }

    /// Class probabilities of `texts`, one row each.
    pub fn text_probabilities(&self, texts: &[impl AsRef<str>], home: &Path, reporter: &dyn Reporter, stats: &mut EmbedStats, device: &Device) -> Result<Vec<Vec<f32>>> {
        let domain = self.embed("run", &Texts::from(texts.iter().map(|t| t.as_ref().to_string()).collect::<Vec<_>>()), home, reporter, stats)?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let x = Tensor::<2>::from_data(TensorData::new(domain.all_rows()?, [texts.len(), domain.width]), device);
        let p: Vec<f32> = softmax(self.net.logits(x), 1).into_data().try_to_vec::<f32>().unwrap_or_default();
        Ok(p.chunks(self.info.classes.len()).map(<[f32]>::to_vec).collect())
    }
}

/// Reads and embeds the source, target and target-test texts.
pub(crate) fn load_text_domains(config: &AdaptConfig, home: &Path, reporter: &dyn Reporter, device: &Device) -> Result<Loaded> {
    let encoder = SentenceEncoder::load(&config.backbone, config.weights.as_deref(), home, reporter, device)?;
    let mut stats = EmbedStats::default();
    let root = &config.data_root;
    let source = read("source", &config.source, root)?;
    source.check_trainable()?;
    let classes = source.classes.clone();
    // The target's labels, if any, are never read.
    let target = read("target", &config.target, root)?;
    let test = config
        .target_test
        .as_deref()
        .map(|t| read("target_test", t, root)?.with_classes(&classes))
        .transpose()?;
    // Each domain reads its rows from its own handle on the store (opened after the domains
    // before it were written).
    let mut embed = |name: &str, data: &TextDataset, labelled: bool| -> Result<Domain> {
        let mut store = open_store(home, &config.backbone, &encoder, StoreDtype::F32, reporter)?;
        let keys = embed_to_store(&encoder, &data.texts, &mut store, reporter, &mut stats)?;
        let width = store.dim().unwrap_or(0);
        let labels = if labelled { data.labels.clone() } else { Vec::new() };
        Ok(Domain::from_store(name.to_string(), store, keys, width, labels))
    };
    let source_all = embed(&config.source, &source, true)?;
    let target_domain = embed(&config.target, &target, false)?;
    let test_domain = match (&test, &config.target_test) {
        (Some(t), Some(name)) => Some(embed(name, t, true)?),
        _ => None,
    };
    reporter.message(&format!("embeddings: {} from the cache, {} computed", stats.hits, stats.misses));
    let mut skipped = source.skipped.clone();
    skipped.extend(target.skipped.iter().cloned());
    if let Some(t) = &test {
        skipped.extend(t.skipped.iter().cloned());
    }
    Ok(Loaded {
        input: InputSpec::Text { model: config.backbone.clone(), preprocess: preprocess_id(&encoder)? },
        lenet: false,
        weights_sha256: Some(encoder.weights_sha256.clone()),
        width: source_all.width,
        source_all,
        classes,
        target: target_domain,
        test: test_domain,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amazon_shorthand_reads_from_the_data_root() {
        assert_eq!(domain_path("amazon:books", Path::new("/d")), PathBuf::from("/d/text/amazon-reviews/books"));
        assert_eq!(domain_path("reviews.csv", Path::new("/d")), PathBuf::from("reviews.csv"));
    }
}
