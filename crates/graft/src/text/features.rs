//! Sentence embeddings through the feature store: each distinct text is embedded once per
//! encoder and kept on disk, so a second `graft fit` (or `eval`, or `adapt`) on the same texts
//! runs no encoder at all.
//!
//! The namespace is the model id, the weights' sha256, the cut `pooled` and a text-preprocessing
//! id (tokenizer sha256, truncation length, mean pooling, L2 normalisation); inside it a text is
//! keyed by the sha256 of its UTF-8 bytes.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::dataset::Texts;
use super::{embed_texts, SentenceEncoder, DEFAULT_BATCH};
use crate::cache::{FeatureStore, Namespace, StoreDtype};
use crate::report::Reporter;
use crate::zoo::pull::sha256_file;
use crate::Result;

/// The feature-store cut of sentence embeddings.
pub const POOLED_CUT: &str = "pooled";

/// Texts served from the store (or repeating a text embedded in the same call) vs run through
/// the encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmbedStats {
    pub hits: u64,
    pub misses: u64,
}

/// How texts become embeddings, as one string: a change to any part misses the cache.
pub fn preprocess_id(encoder: &SentenceEncoder) -> Result<String> {
    let tokenizer = sha256_file(encoder.tokenizer.path())?;
    Ok(format!("text:tokenizer={tokenizer}:max_tokens={}:pool=mean:l2", encoder.tokenizer.max_tokens()))
}

/// sha256 of a text's UTF-8 bytes: its key in the store.
pub fn text_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Opens the store namespace of `encoder`'s embeddings under `home/cache/features`.
pub fn open_store(home: &Path, model: &str, encoder: &SentenceEncoder, dtype: StoreDtype, reporter: &dyn Reporter) -> Result<FeatureStore> {
    let namespace = Namespace {
        model: model.into(),
        weights_sha256: encoder.weights_sha256.clone(),
        cut: POOLED_CUT.into(),
        preprocess: preprocess_id(encoder)?,
        augment: "none".into(),
        dtype,
    };
    let store = FeatureStore::open(&home.join("cache").join("features"), namespace)?;
    for (path, reason) in &store.repaired {
        reporter.message(&format!("feature cache: {} was damaged ({reason}); rebuilding its entries", path.display()));
    }
    Ok(store)
}

/// Embeddings of `texts` in input order: from `store` when there, embedded (each distinct text
/// once) and stored otherwise. Without a store every text is embedded.
pub fn embed_cached<S: AsRef<str>>(
    encoder: &SentenceEncoder,
    texts: &[S],
    mut store: Option<&mut FeatureStore>,
    reporter: &dyn Reporter,
    stats: &mut EmbedStats,
) -> Result<Vec<Vec<f32>>> {
    let keys: Vec<[u8; 32]> = texts.iter().map(|t| text_hash(t.as_ref())).collect();
    let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
    // Distinct missing texts, by key, in first-seen order.
    let mut missing: Vec<usize> = Vec::new();
    let mut first_of: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        match store.as_ref().and_then(|s| s.get(&(*key, 0))) {
            Some(v) => {
                out[i] = Some(v);
                stats.hits += 1;
            }
            // A repeat of a text embedded in this call is served from it: a hit.
            None if first_of.contains_key(key) => stats.hits += 1,
            None => {
                first_of.insert(*key, i);
                missing.push(i);
            }
        }
    }
    if !missing.is_empty() {
        let todo: Vec<&str> = missing.iter().map(|&i| texts[i].as_ref()).collect();
        let embedded = embed_texts(&encoder.model, &encoder.tokenizer, &todo, DEFAULT_BATCH, reporter)?;
        stats.misses += missing.len() as u64;
        for (&i, v) in missing.iter().zip(embedded) {
            if let Some(store) = store.as_mut() {
                store.put((keys[i], 0), v.clone())?;
            }
            out[i] = Some(v);
        }
        if let Some(store) = store.as_mut() {
            store.flush()?;
        }
    }
    // Repeated texts take the vector of their first occurrence.
    let by_key: HashMap<[u8; 32], Vec<f32>> =
        missing.iter().map(|&i| (keys[i], out[i].clone().expect("embedded above"))).collect();
    Ok(out
        .into_iter()
        .zip(&keys)
        .map(|(v, k)| v.unwrap_or_else(|| by_key[k].clone()))
        .collect())
}

/// Embeds every distinct text of `texts` missing from `store` into it, a chunk of
/// [`TEXT_CHUNK`](super::dataset::TEXT_CHUNK) at a time (texts read from disk per chunk when the dataset is indexed), and
/// returns each text's key: neither the texts nor the embeddings are held, however many there
/// are; the embeddings are read back per batch ([`FeatureStore::read_rows`]).
pub fn embed_to_store(
    encoder: &SentenceEncoder,
    texts: &Texts,
    store: &mut FeatureStore,
    reporter: &dyn Reporter,
    stats: &mut EmbedStats,
) -> Result<Vec<crate::cache::store::Key>> {
    let mut keys = Vec::with_capacity(texts.len());
    let mut seen: std::collections::HashSet<[u8; 32]> = std::collections::HashSet::new();
    for chunk in texts.chunks() {
        let chunk = chunk?;
        let mut todo: Vec<&str> = Vec::new();
        let mut todo_keys = Vec::new();
        for text in &chunk {
            let key = text_hash(text);
            keys.push((key, 0));
            if store.contains(&(key, 0)) || !seen.insert(key) {
                stats.hits += 1;
            } else {
                todo.push(text);
                todo_keys.push(key);
            }
        }
        if todo.is_empty() {
            continue;
        }
        let embedded = embed_texts(&encoder.model, &encoder.tokenizer, &todo, DEFAULT_BATCH, reporter)?;
        stats.misses += todo.len() as u64;
        for (key, v) in todo_keys.into_iter().zip(embedded) {
            store.put((key, 0), v)?;
        }
    }
    store.flush()?;
    Ok(keys)
}
