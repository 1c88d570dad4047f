//! The backbone contract: what every trunk architecture states once, in its own file, and
//! what every command (probe, advise, extract, fit's stages and feature cache, bench) reads.
//!
//! A backbone is a sequence of *stages* (a stem, blocks, and a head convolution where the
//! network has one) followed by global pooling and a classifier. A stage is where a cut can
//! fall. The config half ([`Backbone`]) describes the architecture without weights: its layer
//! table (names as in the weights file), which stage each layer belongs to, and the name of each
//! stage's output as the architecture's own framework calls it (`_blocks.12`, `layer3`,
//! `features.14`, `block_12_add`). The network half ([`BackboneNet`]) runs it: the forward to any
//! cut and the pretrained classifier on pooled features. Feature widths at each cut follow from
//! the layer table ([`Backbone::stage_shape`]).
//!
//! Adding an architecture: one file implementing both traits, a variant in
//! [`TrunkConfig`](super::trunk::TrunkConfig) / [`Trunk`](super::trunk::Trunk), and one entry in
//! [`MODELS`](super::MODELS).

use burn::tensor::{Device, Tensor};

use super::layers::LayerRow;
use super::trunk::Trunk;
use crate::train::model::HeadPool;

/// An architecture's shape and naming, without weights.
pub trait Backbone {
    /// Builds the network (classifier included) with freshly initialised weights.
    fn init_trunk(&self, device: &Device) -> Trunk;

    /// Native input side in pixels.
    fn resolution(&self) -> usize;

    /// Outputs of the pretrained classifier.
    fn num_classes(&self) -> usize;

    /// Leaf layers in order with their output shape for one image at the native resolution and
    /// their parameters under the weights file's names; the pretrained classifier last
    /// (`is_head`).
    fn layer_rows(&self) -> Vec<LayerRow>;

    /// Stages: 0 the stem, then the blocks, then the head convolution where there is one.
    fn num_stages(&self) -> usize;

    /// The stage a layer of the table belongs to; `None` for the pool and the classifier.
    fn stage_of(&self, layer: &str) -> Option<usize>;

    /// The name of stage `stage`'s output: the layer that produces it, as the architecture's
    /// framework names it. Used in probe tables, `extract --layer` and feature-cache keys.
    fn stage_name(&self, stage: usize) -> String;

    /// burn's module path of a layer-table layer (`trunk.` left out).
    fn module_path(&self, layer: &str) -> String {
        layer.to_string()
    }

    /// burn's path of one parameter of `row` (`trunk.` left out): BatchNorm's checkpoint
    /// `weight`/`bias` are burn's `gamma`/`beta`.
    fn param_path(&self, row: &LayerRow, param: &str) -> String {
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

    /// Every stage's output name, stage 0 first.
    fn stage_names(&self) -> Vec<String> {
        (0..self.num_stages()).map(|s| self.stage_name(s)).collect()
    }

    /// The stage whose output `name` is (see [`stage_name`](Self::stage_name)).
    fn stage_named(&self, name: &str) -> Option<usize> {
        (0..self.num_stages()).find(|&s| self.stage_name(s) == name)
    }

    /// `[C, h, w]` of stage `stage`'s output for one image at the native resolution: the
    /// output of the stage's last layer in the table. `C` is the feature width at that cut.
    fn stage_shape(&self, stage: usize) -> [usize; 3] {
        let rows = self.layer_rows();
        let shape = rows.iter().rev().find(|r| !r.is_head && r.output_shape.len() == 3 && self.stage_of(&r.name) == Some(stage)).map(|r| r.output_shape.clone());
        match shape.as_deref() {
            Some(&[c, h, w]) => [c, h, w],
            _ => [0; 3],
        }
    }

    /// The feature-store name of a cut after `cut` stages: `input` before any, the last stage's
    /// pooled output `pooled:<pool>` after all of them (shared by `fit`, `probe` and `advise`),
    /// otherwise the name of the last stage run.
    fn cut_name(&self, cut: usize, pool: HeadPool) -> String {
        match cut {
            0 => "input".into(),
            c if c >= self.num_stages() => pooled_cut(pool),
            c => self.stage_name(c - 1),
        }
    }
}

/// The feature-store name of a trunk's pooled output (the same for every architecture).
pub fn pooled_cut(pool: HeadPool) -> String {
    format!("pooled:{}", serde_json::to_string(&pool).expect("pool serializes").trim_matches('"'))
}

/// A backbone with weights: the forward to any cut and its pretrained classifier.
pub trait BackboneNet {
    /// See [`Backbone::num_stages`].
    fn num_stages(&self) -> usize;

    /// Runs stages `range` on a feature map (images when the range starts at 0).
    fn forward_stages(&self, x: Tensor<4>, range: std::ops::Range<usize>) -> Tensor<4>;

    /// Pooled features: [N, 3, H, W] → [N, D].
    fn features(&self, images: Tensor<4>) -> Tensor<2>;

    /// The pretrained classifier's logits: [N, 3, H, W] → [N, classes]; the pooled features
    /// once the classifier is cut off.
    fn forward(&self, images: Tensor<4>) -> Tensor<2>;

    /// The pretrained classifier on pooled features, [N, D] → [N, classes] (logits, in
    /// inference mode); `None` once it is cut off.
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>>;

    /// Cuts the pretrained classifier off (for a new head).
    fn drop_classifier(&mut self);
}
