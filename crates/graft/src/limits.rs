//! Every size graft derives from its input — a setting, a file's header, a dataset's contents —
//! is checked against a limit here before anything of that size is allocated. Each limit is a
//! named constant with the reason for its value; a refusal names the limit (and, where raising
//! it makes sense, how). The weight-file parsers' limits are defined in `graft_weights::limits`
//! (that crate cannot depend on this one) and re-exported here, so this module lists them all.

pub use graft_weights::limits::*;

use crate::{GraftError, Result};

/// Widest hidden layer of an `mlp:` head. A 65536-wide layer after a 2048-wide trunk is
/// already 134 M parameters (2 GB with gradients and Adam's two moments); nothing a head on
/// pooled features needs comes close.
pub const MAX_HEAD_WIDTH: usize = 65_536;

/// Most hidden layers in an `mlp:` head: heads on pooled features are one to three layers deep.
pub const MAX_HEAD_LAYERS: usize = 16;

/// Most weights between the hidden layers of an `mlp:` head (the first layer's input width
/// depends on the model and is bounded by [`MAX_HEAD_WIDTH`] separately): 64 M floats is
/// 256 MB, about 1 GB once training keeps gradients and optimiser moments beside them.
pub const MAX_HEAD_HIDDEN_PARAMS: u64 = 64 << 20;

/// Largest K of a `knn:K` head: more neighbours than this is a mistyped number (and every
/// prediction sorts K distances).
pub const MAX_KNN_K: usize = 100_000;

/// Largest `--batch-size` / `--batch`: one batch of 224×224 RGB images is 0.6 MB per image
/// before any activation, so 4096 is already several GB of activations.
pub const MAX_BATCH_SIZE: usize = 4096;

/// Most augmented views per image in the feature cache (`--cache-views`): each view costs a
/// trunk forward pass per image and a row in the cache.
pub const MAX_CACHE_VIEWS: usize = 256;

/// Most classes in a dataset. Checked while scanning, before anything per class is
/// allocated; 10 000 covers every public classification benchmark but ImageNet-21k.
pub const MAX_CLASSES: usize = 10_000;

/// Largest image file graft reads (a 50-megapixel uncompressed 16-bit TIFF is 300 MB).
pub const MAX_IMAGE_FILE_BYTES: u64 = 512 << 20;

/// Largest text dataset file (CSV, SMS spam, rt-polarity, Amazon reviews) read whole.
pub const MAX_TEXT_FILE_BYTES: u64 = 1 << 30;

/// Longest single text kept, in bytes of UTF-8: longer texts are cut (at a character
/// boundary) while reading. Far more than the model's token limit can use.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// Bytes of text kept per token of the model's limit before tokenizing: a WordPiece token
/// covers at most 100 characters (longer words become one `[UNK]`), so the first
/// `max_tokens × 128` bytes yield every token the truncation keeps, and tokenizing a
/// megabyte-long text costs no more than a short one.
pub const TOKENIZE_BYTES_PER_TOKEN: usize = 128;

/// Largest config/JSON file of a run or model directory (`config.toml`, `model.json`,
/// `summary.json`, `namespace.json`…): graft writes a few kilobytes.
pub const MAX_CONFIG_FILE_BYTES: u64 = 16 << 20;

/// Largest `tokenizer.json` (MiniLM's is 466 kB; large multilingual vocabularies are ~20 MB).
pub const MAX_TOKENIZER_FILE_BYTES: u64 = 256 << 20;

/// Largest `metrics.jsonl` graft reads back (one line of about 300 bytes per epoch).
pub const MAX_METRICS_FILE_BYTES: u64 = 256 << 20;

/// Longest excerpt of a user's file quoted in an error message.
pub const MAX_QUOTED_CHARS: usize = 200;

/// Ancillary PNG chunks dropped before decoding, whatever their size (ICC profile, text,
/// EXIF): graft uses none of them, and the decoder inflates a compressed ICC profile up to its
/// whole memory budget (hundreds of MB per image) before the pixels are even read.
pub const PNG_DROPPED_CHUNKS: [&[u8; 4]; 5] = [b"iCCP", b"zTXt", b"iTXt", b"tEXt", b"eXIf"];

/// `value` must be at most `max`; else an [`GraftError::InvalidSetting`] naming `setting` and the
/// limit's name.
pub fn check_setting(setting: &str, value: usize, max: usize, limit: &str) -> Result<()> {
    if value > max {
        return Err(GraftError::setting(setting, &value.to_string(), format!("over the limit of {max} ({limit})")));
    }
    Ok(())
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A short excerpt of `text` for an error message: at most [`MAX_QUOTED_CHARS`] characters,
/// with `…` when cut.
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// A parse error's message on one line and at most about 2 × [`MAX_QUOTED_CHARS`] characters:
/// `toml` quotes the offending line whole and `serde_json` the offending string, which for a
/// hostile file can be megabytes. Runs of white space become one space; a long message keeps
/// its beginning (where the error is) and its end (what was expected), with `…` between.
pub fn shorten_message(message: &str) -> String {
    let mut words = String::new();
    for word in message.split_whitespace() {
        if !words.is_empty() {
            words.push(' ');
        }
        // A multi-megabyte word is cut right away, not copied whole.
        words.push_str(truncate_str(word, 4 * MAX_QUOTED_CHARS + 4));
    }
    let chars = words.chars().count();
    if chars <= 2 * MAX_QUOTED_CHARS {
        return words;
    }
    let head: String = words.chars().take(MAX_QUOTED_CHARS).collect();
    let tail: String = words.chars().skip(chars - MAX_QUOTED_CHARS).collect();
    format!("{head} … {tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole_and_errors_stay_short() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("héllo", 3), "hé");
        assert_eq!(truncate_str("abc", 10), "abc");
        let long = "x".repeat(10_000_000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(e.ends_with('…'));
        let caret = " ".repeat(10_000_000);
        let msg = shorten_message(&format!("TOML parse error at line 1\n  |\n1 | a = {long}\n  |{caret}^\ninvalid basic string\n"));
        assert!(msg.len() < 1000, "{}", msg.len());
        assert!(!msg.contains('\n'));
        assert!(msg.starts_with("TOML parse error at line 1 | 1 | a = xxx"), "{msg}");
        assert!(msg.ends_with("xxx | ^ invalid basic string"), "{msg}");
        let json = format!("invalid type: string \"{long}\", expected a sequence at line 1 column 10000030");
        assert!(shorten_message(&json).ends_with(" expected a sequence at line 1 column 10000030"));
        assert_eq!(shorten_message("missing field `classes`"), "missing field `classes`");
        let err = check_setting("batch_size", 5000, MAX_BATCH_SIZE, "graft::limits::MAX_BATCH_SIZE").unwrap_err().to_string();
        assert_eq!(err, "invalid batch_size `5000`: over the limit of 4096 (graft::limits::MAX_BATCH_SIZE)");
        assert!(check_setting("batch_size", 4096, MAX_BATCH_SIZE, "x").is_ok());
    }
}
