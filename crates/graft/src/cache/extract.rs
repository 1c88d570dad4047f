//! `graft extract`: activations of any layer for a whole image folder, streamed to a file
//! (safetensors, `.npy` or CSV) with labels and file paths. Memory stays flat: rows go to a
//! temporary file as they are computed and the output is assembled at the end, then renamed
//! into place.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use super::parts::{listing_sha256, write_header, Shard};
use crate::data::folder::{decode_with, ImageFolder, Sample, Skipped};
use crate::data::image::{self, Preprocess};
use crate::report::Reporter;
use crate::zoo::efficientnet::global_avg_pool;
use crate::zoo::{Trunk, TrunkConfig};
use crate::{GraftError, Result};

/// Where to cut the network: after stage `stages` (0 = stem … last = head conv), pooled or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub stages: usize,
    pub pooled: bool,
}

impl Cut {
    /// Resolves a layer name: `pooled` (the pooled features, default) or the pool layer's own
    /// name; a stage's output by the name the architecture gives it (`graft probe`'s names:
    /// `_blocks.N` for EfficientNet-Lite, `layer3` / `layer3.1` for ResNet, `features.14` for
    /// torchvision MobileNetV2, `block_12_add` for Keras); or any trunk layer of `graft
    /// inspect`'s table, which cuts after the stage it belongs to (EfficientNet-Lite's
    /// `_conv_stem` and `_conv_head` are the stem and head stages).
    pub fn parse(layer: &str, config: &TrunkConfig) -> Result<Cut> {
        let stages = config.num_stages();
        let rows = config.layer_rows();
        let is_pool = rows.iter().any(|r| !r.is_head && r.name == layer && r.output_shape.len() == 1);
        if matches!(layer, "pooled" | "features") || is_pool {
            return Ok(Cut { stages, pooled: true });
        }
        let backbone = config.backbone();
        match backbone.stage_named(layer).or_else(|| backbone.stage_of(layer)).filter(|s| *s < stages) {
            Some(s) => Ok(Cut { stages: s + 1, pooled: false }),
            None => {
                let names = backbone.stage_names();
                let examples = [names.first(), names.get(names.len() / 2), names.last()].into_iter().flatten().cloned().collect::<Vec<_>>().join(", ");
                Err(GraftError::setting("layer", layer, format!("expected pooled, a stage ({examples}, … as `graft probe` lists them) or a trunk layer of `graft inspect`")))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    Npy,
    Csv,
}

impl Format {
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
            Some("safetensors") => Ok(Format::Safetensors),
            Some("npy") => Ok(Format::Npy),
            Some("csv") => Ok(Format::Csv),
            _ => Err(GraftError::setting("out", &path.display().to_string(), "the file name must end in .safetensors, .npy or .csv")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ExtractSummary {
    /// The file written: `--out`, or with a shard its part beside it.
    pub out: PathBuf,
    /// With a shard: which part this is.
    pub shard: Option<Shard>,
    pub n: usize,
    pub dim: usize,
    /// Per-image shape before flattening ([C, H, W], or [D] when pooled).
    pub shape: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

/// Extracts `cut` activations for the samples of `folder` into `out`; with a shard, only that
/// part's samples, into the part file beside `out` (see [`Shard::part_path`]), which `graft
/// cache merge` joins into `out`.
#[allow(clippy::too_many_arguments)]
pub fn extract(
    net: &Trunk,
    config: &TrunkConfig,
    model_id: &str,
    weights_sha256: &str,
    layer: &str,
    preprocess: &Preprocess,
    folder: &ImageFolder,
    shard: Option<Shard>,
    out: &Path,
    batch: usize,
    device: &Device,
    reporter: &dyn Reporter,
) -> Result<ExtractSummary> {
    let cut = Cut::parse(layer, config)?;
    let out = &match shard {
        Some(s) => s.part_path(out)?,
        None => out.to_path_buf(),
    };
    let format = Format::from_path(out)?;
    let selected: Vec<(usize, &Sample)> = folder.samples.iter().enumerate().filter(|(i, _)| shard.is_none_or(|s| s.takes(*i))).collect();
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| GraftError::io(dir, e))?;
    let raw_path = dir.join(format!(".{}.rows-{}", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    let mut raw = BufWriter::new(crate::fsutil::create_temp(&raw_path).map_err(|e| GraftError::io(&raw_path, e))?);
    let mut kept: Vec<(usize, &Sample)> = Vec::new();
    let mut skipped = Vec::new();
    let mut shape = Vec::new();
    // Frozen for extraction: BatchNorm folded once, batches split across threads.
    let folded = net.for_inference();
    reporter.start(&format!("extracting {layer}"), Some(selected.len() as u64));
    for (done, chunk) in selected.chunks(batch.max(1)).enumerate() {
        let samples: Vec<Sample> = chunk.iter().map(|(_, s)| (*s).clone()).collect();
        let (pixels, bad) = decode_with(&samples, &|_| {}, |img| preprocess.apply(&img));
        skipped.extend(bad);
        let good: Vec<Vec<f32>> = pixels.iter().flatten().cloned().collect();
        if !good.is_empty() {
            let x = folded.forward_stages(image::batch(&good, preprocess.size, device), 0..cut.stages);
            let [n, c, h, w] = x.dims();
            let x = if cut.pooled { global_avg_pool(x) } else { x.reshape([n, c * h * w]) };
            shape = if cut.pooled { vec![c] } else { vec![c, h, w] };
            let values: Vec<f32> = x.into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: out.into(), reason: format!("{e:?}") })?;
            for v in &values {
                raw.write_all(&v.to_le_bytes()).map_err(|e| GraftError::io(&raw_path, e))?;
            }
        }
        kept.extend(chunk.iter().zip(&pixels).filter(|(_, p)| p.is_some()).map(|(s, _)| *s));
        reporter.progress(((done + 1) * batch).min(selected.len()) as u64);
    }
    reporter.finish();
    raw.flush().map_err(|e| GraftError::io(&raw_path, e))?;
    drop(raw);
    let dim: usize = shape.iter().product();
    let identity = Identity { model: model_id, weights_sha256, layer, preprocess, shard };
    let result = assemble(format, out, &raw_path, &kept, dim, &shape, folder, &identity);
    let _ = std::fs::remove_file(&raw_path);
    result?;
    Ok(ExtractSummary { out: out.to_path_buf(), shard, n: kept.len(), dim, shape, skipped })
}

/// What the rows depend on besides the images, recorded in a safetensors file's metadata.
struct Identity<'a> {
    model: &'a str,
    weights_sha256: &'a str,
    layer: &'a str,
    preprocess: &'a Preprocess,
    shard: Option<Shard>,
}

/// Writes the final file from the raw rows, to a temporary name first.
#[allow(clippy::too_many_arguments)]
fn assemble(format: Format, out: &Path, raw_path: &Path, kept: &[(usize, &Sample)], dim: usize, shape: &[usize], folder: &ImageFolder, identity: &Identity) -> Result<()> {
    let (model, layer) = (identity.model, identity.layer);
    let tmp = out.with_file_name(format!(".{}.tmp-{}", out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), std::process::id()));
    let io = |e: std::io::Error| GraftError::io(out, e);
    let n = kept.len();
    let paths: Vec<String> = kept.iter().map(|(_, s)| s.path.display().to_string()).collect();
    let labels: Vec<usize> = kept.iter().map(|(_, s)| s.label).collect();
    let indices: Vec<usize> = kept.iter().map(|(i, _)| *i).collect();
    {
        let mut file = BufWriter::new(crate::fsutil::create_temp(&tmp).map_err(io)?);
        let mut raw = std::io::BufReader::new(crate::fsutil::open_regular_nofollow(raw_path)?);
        match format {
            Format::Npy => {
                let header = crate::npy::encode_f32(&[n, dim], &[]);
                file.write_all(&header).map_err(io)?;
                std::io::copy(&mut raw, &mut file).map_err(io)?;
                // Labels, paths and classes beside the array.
                let side = serde_json::json!({"model": model, "layer": layer, "shape": shape, "classes": folder.classes, "labels": labels, "paths": paths, "indices": indices});
                crate::fsutil::write_atomic(&out.with_extension("json"), &serde_json::to_vec_pretty(&side).expect("json"))?;
            }
            Format::Csv => {
                let mut head = String::from("path,label,class");
                for j in 0..dim {
                    head.push_str(&format!(",f{j}"));
                }
                writeln!(file, "{head}").map_err(io)?;
                let mut row = vec![0u8; dim * 4];
                for (k, (_, s)) in kept.iter().enumerate() {
                    raw.read_exact(&mut row).map_err(io)?;
                    let path = s.path.display().to_string().replace('"', "\"\"");
                    write!(file, "\"{path}\",{},\"{}\"", labels[k], folder.classes[s.label].replace('"', "\"\"")).map_err(io)?;
                    for c in row.chunks_exact(4) {
                        write!(file, ",{}", f32::from_le_bytes([c[0], c[1], c[2], c[3]])).map_err(io)?;
                    }
                    writeln!(file).map_err(io)?;
                }
            }
            Format::Safetensors => {
                let mut metadata: BTreeMap<String, String> = [
                    ("model", model.to_string()),
                    ("weights_sha256", identity.weights_sha256.to_string()),
                    ("layer", layer.to_string()),
                    ("preprocess", serde_json::to_string(identity.preprocess).expect("json")),
                    ("listing_sha256", listing_sha256(folder)),
                    ("shape", serde_json::to_string(shape).expect("json")),
                    ("classes", serde_json::to_string(&folder.classes).expect("json")),
                    ("paths", serde_json::to_string(&paths).expect("json")),
                    ("indices", serde_json::to_string(&indices).expect("json")),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                if let Some(s) = identity.shard {
                    metadata.insert("shard".into(), s.to_string());
                }
                write_header(&mut file, &metadata, n, dim).map_err(io)?;
                std::io::copy(&mut raw, &mut file).map_err(io)?;
                for l in &labels {
                    file.write_all(&(*l as i64).to_le_bytes()).map_err(io)?;
                }
            }
        }
        file.flush().map_err(io)?;
        file.get_ref().sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, out).map_err(io)
}
