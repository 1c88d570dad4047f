//! One run format: every run directory (`graft fit` on images or texts, `graft adapt`,
//! `graft fit --init`/`--arch mlp:…`, `graft pretrain`) describes itself in `model.json` as a
//! [`RunManifest`]: `"format": 2`, a `"kind"` and what that kind needs to rebuild its model.
//!
//! Older runs still load: a `model.json` without `kind` is an image run, a run with `mlp.json`
//! (and no `model.json`) an MLP run, one with `pretrain.json` a pretraining run. Anything else is
//! refused naming the file and the field (`model.json: unknown kind "x"`, `missing field
//! `classes``).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapt::data::InputSpec;
use crate::adapt::train::AdaptInfo;
use crate::fsutil::write_atomic;
use crate::limits::shorten_message;
use crate::train::run::RunInfo;
use crate::train::text::TextRunInfo;
use crate::transfer::autoencoder::{MlpRun, PretrainSummary};
use crate::transfer::corrupt::{CorruptTextSummary, WordFitRun};
use crate::transfer::trunk::TrunkPretrainSummary;
use crate::{GraftError, Result};

/// The `format` every run written now has; a run without one predates it (and is read as such).
pub const RUN_FORMAT: u64 = 2;

/// The file a run describes itself in.
pub const MANIFEST_FILE: &str = "model.json";

/// Where runs written before [`RUN_FORMAT`] 2 kept their description when not in `model.json`.
const LEGACY_FILES: [(&str, &str); 2] = [(crate::fsutil::RUN_FILES[1], "mlp"), (crate::fsutil::RUN_FILES[2], "pretrain")];

/// Every `kind` a run can have, as written in `model.json`.
pub const KINDS: [&str; 8] = ["image", "text", "adapt", "mlp", "pretrain", "text-pretrain", "words", "trunk-pretrain"];

/// What a run holds, by kind (`model.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RunManifest {
    /// `graft fit` on images: a zoo trunk and a head (neural, or classic in `classic.safetensors`).
    Image(RunInfo),
    /// `graft fit --model minilm-l6`: a head on the pulled sentence encoder's embeddings.
    Text(TextRunInfo),
    /// `graft adapt`: a network trained on a source domain for a target domain.
    Adapt(AdaptInfo),
    /// `graft fit --init RUN` / `--arch mlp:…`: an MLP on 28×28 grey images.
    Mlp(MlpRun),
    /// `graft pretrain`: a layer-wise pretrained encoder (not a classifier).
    Pretrain(PretrainSummary),
    /// `graft pretrain --method corrupted-text`: a word encoder that scores real sentences above
    /// corrupted ones (not a classifier).
    #[serde(rename = "text-pretrain")]
    TextPretrain(CorruptTextSummary),
    /// `graft fit --init RUN` from a corrupted-text run: the word encoder and a linear classifier.
    Words(WordFitRun),
    /// `graft pretrain --method siamese|contrastive --model M`: a pretrained trunk whose top was
    /// tuned (`trunk.safetensors`, read by `graft fit --weights`; not a classifier).
    #[serde(rename = "trunk-pretrain")]
    TrunkPretrain(TrunkPretrainSummary),
}

/// What is written: the format number, the device the run computed on, then the kind and its
/// fields.
#[derive(Serialize)]
struct Stored<'a> {
    format: u64,
    /// `cpu`, `wgpu:0`, … ([`crate::device::record`]); a record, not read back.
    device: String,
    #[serde(flatten)]
    run: &'a RunManifest,
}

/// What a run's model takes as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Images,
    Texts,
}

impl RunManifest {
    /// The `kind` written in `model.json`.
    pub fn kind(&self) -> &'static str {
        match self {
            RunManifest::Image(_) => "image",
            RunManifest::Text(_) => "text",
            RunManifest::Adapt(_) => "adapt",
            RunManifest::Mlp(_) => "mlp",
            RunManifest::Pretrain(_) => "pretrain",
            RunManifest::TextPretrain(_) => "text-pretrain",
            RunManifest::Words(_) => "words",
            RunManifest::TrunkPretrain(_) => "trunk-pretrain",
        }
    }

    /// What made the run, for people.
    pub fn describe(&self) -> &'static str {
        match self {
            RunManifest::Image(_) => "image classifier (graft fit)",
            RunManifest::Text(_) => "text classifier (graft fit --model minilm-l6)",
            RunManifest::Adapt(a) if matches!(a.input, InputSpec::Text { .. }) => "text adaptation (graft adapt --backbone minilm-l6)",
            RunManifest::Adapt(_) => "image adaptation (graft adapt)",
            RunManifest::Mlp(_) => "digit MLP (graft pretrain / fit --init)",
            RunManifest::Pretrain(_) => "pretrained encoder (graft pretrain; fine-tune it with graft fit --init)",
            RunManifest::TextPretrain(_) => "pretrained word encoder (graft pretrain --method corrupted-text; fine-tune it with graft fit --init)",
            RunManifest::Words(_) => "word-encoder text classifier (graft fit --init from a corrupted-text run)",
            RunManifest::TrunkPretrain(_) => "pretrained trunk with a tuned top (graft pretrain --model; fine-tune it with graft fit --weights RUN/trunk.safetensors)",
        }
    }

    /// The classes a classifier run tells apart (`None`: a pretraining run, not a classifier).
    pub fn classes(&self) -> Option<&[String]> {
        match self {
            RunManifest::Image(i) => Some(&i.classes),
            RunManifest::Text(t) => Some(&t.classes),
            RunManifest::Adapt(a) => Some(&a.classes),
            RunManifest::Mlp(m) => Some(&m.classes),
            RunManifest::Words(w) => Some(&w.classes),
            RunManifest::Pretrain(_) | RunManifest::TextPretrain(_) | RunManifest::TrunkPretrain(_) => None,
        }
    }

    /// Whether the run's model reads images or texts.
    pub fn input(&self) -> InputKind {
        match self {
            RunManifest::Text(_) | RunManifest::TextPretrain(_) | RunManifest::Words(_) => InputKind::Texts,
            RunManifest::Adapt(a) if matches!(a.input, InputSpec::Text { .. }) => InputKind::Texts,
            _ => InputKind::Images,
        }
    }

    /// Writes `run/model.json` (atomically) with `format` [`RUN_FORMAT`] and the `device` the
    /// run computes on.
    pub fn save(&self, run: &Path, device: &burn::tensor::Device) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&Stored { format: RUN_FORMAT, device: crate::device::record(device), run: self }).expect("run manifest serializes");
        write_atomic(&run.join(MANIFEST_FILE), &bytes)
    }

    /// The file [`RunManifest::load`] reads in `run`: `model.json`, or for an older MLP or
    /// pretraining run without one its `mlp.json` / `pretrain.json`; `None` when there is none.
    pub fn file(run: &Path) -> Option<PathBuf> {
        std::iter::once(MANIFEST_FILE).chain(LEGACY_FILES.iter().map(|(f, _)| *f)).map(|f| run.join(f)).find(|p| p.symlink_metadata().is_ok())
    }

    /// Reads a run's description (see the module docs for older runs). Errors name the file and
    /// the field: an unknown `kind`, a missing or mistyped field, an unknown field.
    pub fn load(run: &Path) -> Result<Self> {
        let path = Self::file(run).ok_or_else(|| GraftError::Data {
            path: run.to_path_buf(),
            reason: "no model.json: not a graft run (made by fit, adapt or pretrain)".into(),
        })?;
        let bytes = crate::fsutil::read_run_file(&path, crate::limits::MAX_CONFIG_FILE_BYTES)?;
        let bad = |reason: String| GraftError::Data { path: path.clone(), reason };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {}", shorten_message(&e.to_string()))))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(bad("not a graft run's description (a JSON object with a `kind`)".into()));
        };
        // The device the run computed on is a record only (a run loads on any device).
        fields.remove("device");
        match fields.remove("format") {
            None => {}
            Some(f) if f.as_u64() == Some(RUN_FORMAT) => {}
            Some(f) => {
                return Err(bad(format!("field `format` is {}, this graft reads format {RUN_FORMAT} (and older runs without one)", shorten_message(&f.to_string()))))
            }
        }
        let legacy = LEGACY_FILES.iter().find(|(f, _)| path.ends_with(f)).map(|(_, kind)| *kind);
        let kind = match fields.get("kind") {
            Some(serde_json::Value::String(k)) => k.clone(),
            Some(other) => return Err(bad(format!("field `kind` must be a string, not {}", shorten_message(&other.to_string())))),
            // Before format 2, image runs and pretraining runs had no kind.
            None => legacy.unwrap_or("image").to_string(),
        };
        if !KINDS.contains(&kind.as_str()) {
            let shown: String = kind.chars().take(40).collect();
            return Err(bad(format!("unknown kind {shown:?} in field `kind` (graft writes {})", KINDS.join(", "))));
        }
        if legacy.is_some_and(|l| l != kind) {
            return Err(bad(format!("field `kind` is {kind:?}, but this file only holds {:?} runs", legacy.unwrap_or_default())));
        }
        fields.insert("kind".into(), serde_json::Value::String(kind));
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| bad(shorten_message(&e.to_string())))
    }
}

/// Each kind's description reads and writes itself through the manifest (here, so that the
/// training modules that define them need not know the manifest).
macro_rules! manifest_kind {
    ($ty:ty, $variant:ident, $what:literal) => {
        impl $ty {
            /// Writes `model.json` as this kind's [`RunManifest`], recording `device`.
            pub fn save(&self, run: &Path, device: &burn::tensor::Device) -> Result<()> {
                RunManifest::$variant(self.clone()).save(run, device)
            }

            /// Reads `model.json`, which must be this kind's [`RunManifest`].
            pub fn load(run: &Path) -> Result<Self> {
                match RunManifest::load(run)? {
                    RunManifest::$variant(info) => Ok(info),
                    other => Err(wrong_kind(run, &other, $what)),
                }
            }
        }
    };
}

manifest_kind!(RunInfo, Image, "an image classifier from `graft fit`");
manifest_kind!(TextRunInfo, Text, "a text classifier from `graft fit --model minilm-l6`");
manifest_kind!(AdaptInfo, Adapt, "an adaptation run from `graft adapt`");
manifest_kind!(MlpRun, Mlp, "an MLP run from `graft fit --init` or `--arch mlp:…`");
manifest_kind!(PretrainSummary, Pretrain, "a pretraining run from `graft pretrain` (what --init takes)");
manifest_kind!(CorruptTextSummary, TextPretrain, "a corrupted-text pretraining run from `graft pretrain --method corrupted-text`");
manifest_kind!(TrunkPretrainSummary, TrunkPretrain, "a trunk-pretraining run from `graft pretrain --model`");
manifest_kind!(WordFitRun, Words, "a word-encoder classifier from `graft fit --init` on a corrupted-text run");

/// The run's description when it is of the kind `expected` (`what` names it in the error).
fn wrong_kind(run: &Path, found: &RunManifest, what: &str) -> GraftError {
    GraftError::Data { path: run.join(MANIFEST_FILE), reason: format!("field `kind` is \"{}\" ({}), not {what}", found.kind(), found.describe()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::image::Preprocess;
    use crate::train::model::{HeadPool, HeadSpec};

    fn image_info() -> RunInfo {
        RunInfo {
            model: "efficientnet-lite0".into(),
            classes: vec!["a".into(), "b".into()],
            head: HeadSpec::Linear,
            head_pool: HeadPool::Avg,
            dropout: 0.2,
            preprocess: Preprocess::centre_square(224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            weights_sha256: None,
            frozen_trunk: false,
            weights_names: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("graft-manifest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn reason(e: GraftError) -> String {
        e.to_string()
    }

    #[test]
    fn a_saved_manifest_has_format_and_kind_and_loads_back() {
        let run = scratch("roundtrip");
        let manifest = RunManifest::Image(image_info());
        manifest.save(&run, &crate::device::default_device().autodiff()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("model.json")).unwrap()).unwrap();
        assert_eq!(v["format"], 2);
        assert_eq!(v["device"], "cpu");
        assert_eq!(v["kind"], "image");
        assert_eq!(v["classes"], serde_json::json!(["a", "b"]));
        assert!(matches!(RunManifest::load(&run).unwrap(), RunManifest::Image(i) if i == image_info()));
        assert_eq!(RunInfo::load(&run).unwrap(), image_info());
    }

    #[test]
    fn an_old_image_run_without_kind_or_format_still_loads() {
        let run = scratch("old-image");
        std::fs::write(run.join("model.json"), serde_json::to_vec(&image_info()).unwrap()).unwrap();
        assert!(matches!(RunManifest::load(&run).unwrap(), RunManifest::Image(i) if i == image_info()));
    }

    #[test]
    fn bad_manifests_name_the_file_and_the_field() {
        let run = scratch("bad");
        let write = |v: serde_json::Value| std::fs::write(run.join("model.json"), v.to_string()).unwrap();
        let mut v = serde_json::to_value(image_info()).unwrap();
        v["kind"] = "bogus".into();
        write(v.clone());
        let e = reason(RunManifest::load(&run).unwrap_err());
        assert!(e.contains("model.json") && e.contains("unknown kind \"bogus\"") && e.contains("`kind`"), "{e}");

        v["kind"] = "image".into();
        v.as_object_mut().unwrap().remove("classes");
        write(v.clone());
        let e = reason(RunManifest::load(&run).unwrap_err());
        assert!(e.contains("model.json") && e.contains("missing field `classes`"), "{e}");

        v["classes"] = serde_json::json!(["a"]);
        v["colour"] = "red".into();
        write(v.clone());
        let e = reason(RunManifest::load(&run).unwrap_err());
        assert!(e.contains("model.json") && e.contains("unknown field `colour`"), "{e}");

        v.as_object_mut().unwrap().remove("colour");
        v["format"] = 3.into();
        write(v);
        let e = reason(RunManifest::load(&run).unwrap_err());
        assert!(e.contains("model.json") && e.contains("`format` is 3"), "{e}");

        // A directory without a description is not a run.
        let text = scratch("empty");
        let e = reason(RunManifest::load(&text).unwrap_err());
        assert!(e.contains("no model.json"), "{e}");
    }
}
