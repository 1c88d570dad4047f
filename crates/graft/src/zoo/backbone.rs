//! The backbone contract: what every trunk architecture states once, in its own file, and
//! what every command (probe, advise, extract, fit's stages and feature cache, bench) reads.
//!
//! A backbone is a sequence of *stages* (a stem, blocks, and a head convolution where the
//! network has one) followed by global pooling and a classifier. A stage is where a cut can
//! fall. The config half ([`Backbone`]) describes the architecture without weights: its layer
//! table ([`Table`], names as in the weights file, recorded by the walk that builds the network),
//! which stage each layer belongs to, and the name of each stage's output as the architecture's
//! own framework calls it (`_blocks.12`, `layer3`, `features.14`, `block_12_add`). The network
//! half ([`BackboneNet`]) runs it: the forward to any cut and the pretrained classifier on
//! pooled features. Feature widths at each cut follow from the layer table
//! ([`Backbone::stage_shape`]). The pretrained configuration (input size, crop, interpolation,
//! mean/std, labels, stages, default freeze groups) is each registered model's
//! [`ModelSpec`](super::ModelSpec), kept with its weights source.
//!
//! # Adding an architecture
//!
//! Two places: a new file `crates/graft/src/zoo/<arch>.rs`, and one registry entry in
//! `crates/graft/src/zoo/mod.rs`.
//!
//! 1. In `zoo/<arch>.rs`, write the network as a burn module (`#[derive(Module, Debug)]`) whose
//!    field names are the module names of the weights file you load (burn's parameter paths
//!    are the field names, so `inspect` and `--freeze` show the file's names), plus a config
//!    struct (`Debug, Clone, PartialEq`). Give the network a `#[module(skip)] pub config` field
//!    holding the config it was built from.
//! 2. Build it in one walk, `fn build(&self, b: &mut Builder) -> Net`, creating every layer
//!    through the [`Builder`](super::table::Builder): `b.pp("layer1").pp(0).conv("conv1",
//!    Conv2dConfig, [c, h, w])`, `batch_norm`, `layer` for pooling, `classifier` for the
//!    pretrained head, last. Call `b.stage(Some(s))` before stage `s`'s layers and
//!    `b.stage(None)` before the global pool. This is the only place a layer's name is written:
//!    the layer table, stages, burn paths and the loader all read what the walk recorded.
//! 3. Derive the rest from the walk: `init(device)` is `Table::build(device, |b|
//!    self.build(b)).0`, `table()` is `Table::build(&Default::default(), |b| self.build(b)).1`
//!    (add `.renamed(Convention::Keras, |leaf| …)` when the weights come from Keras, as
//!    [`MobileNetV2Config::table`](super::mobilenetv2::MobileNetV2Config::table) does), and the
//!    network's `load_weights(self, w)` is `self.config.table().load(self, w)`.
//! 4. Implement [`Backbone`] for the config (`init_trunk` is `self.init(device).into()`;
//!    `table`, `resolution`, `num_classes`, `num_stages`, `stage_name`) and [`BackboneNet`] for
//!    the network (`forward_stages` runs any range of stages; `features`, `forward`,
//!    `classify`, `drop_classifier`).
//! 5. List the architecture's models in `pub const MODELS: &[ModelSpec]` in the same file:
//!    id, `arch` (a constructor of the config, `|| MyConfig::new().into()`), weights source
//!    (`None`: the user brings `--weights FILE`), input preparation and class labels. Another
//!    framework's version of a registered architecture (Caffe's VGG16 of torchvision's
//!    `vgg16`: its names, its preparation, its layers where they differ) is one more entry,
//!    `flavour(id, of, input, arch)`: `--arch of --weights FILE` then loads FILE into whichever
//!    of them names FILE's tensors ([`ModelSpec::for_weights`](super::ModelSpec::for_weights)).
//! 6. In `zoo/mod.rs`, add one line to `backbones!`: `pub mod <arch>: <Variant>(<Config>,
//!    <Net>),`. It declares the module and generates the [`TrunkConfig`](super::TrunkConfig) and
//!    [`Trunk`] variants, their dispatch and the models' place in [`MODELS`](super::MODELS).
//! 7. Run `cargo test --release --workspace --lib every_backbone_keeps_its_contract`: it checks,
//!    for every registered model, that the table names exactly burn's parameters with their
//!    shapes, that stages cover the trunk in order, that the width and map size recorded at
//!    each cut are what `forward_stages` computes, and that the loader fills every parameter
//!    from the file tensor the table names. Then add a parity test against the original
//!    framework's outputs (see `tests/cli/zoo_parity.rs`).

use burn::tensor::{Device, Tensor};

use super::layers::LayerRow;
use super::table::Table;
use super::trunk::Trunk;
use crate::export::onnx::OnnxGraph;
use crate::train::model::HeadPool;
use crate::{GraftError, Result};

/// An architecture's shape and naming, without weights.
pub trait Backbone {
    /// Builds the network (classifier included) with freshly initialised weights.
    fn init_trunk(&self, device: &Device) -> Trunk;

    /// The layers as the build walk records them (see [`table`](super::table)): names in the
    /// weights file, burn paths, shapes, stages. The single source of every name below.
    fn table(&self) -> Table;

    /// Native input side in pixels.
    fn resolution(&self) -> usize;

    /// timm's input configuration for a timm file of this architecture (see
    /// [`Table::with_timm`]); `None` where the table has no timm names.
    fn timm_input(&self) -> Option<super::TimmInput> {
        None
    }

    /// Outputs of the pretrained classifier.
    fn num_classes(&self) -> usize;

    /// Stages: 0 the stem, then the blocks, then the head convolution where there is one.
    fn num_stages(&self) -> usize;

    /// The name of stage `stage`'s output: the layer that produces it, as the architecture's
    /// framework names it. Used in probe tables, `extract --layer` and feature-cache keys.
    fn stage_name(&self, stage: usize) -> String;

    /// Leaf layers in order with their output shape for one image at the native resolution and
    /// their parameters under the weights file's names; the pretrained classifier last
    /// (`is_head`).
    fn layer_rows(&self) -> Vec<LayerRow> {
        self.table().rows()
    }

    /// The stage a layer of the table belongs to; `None` for the pool and the classifier.
    fn stage_of(&self, layer: &str) -> Option<usize> {
        self.table().stage_of(layer)
    }

    /// burn's module path of a layer-table layer (`trunk.` left out).
    fn module_path(&self, layer: &str) -> String {
        self.table().module_path(layer)
    }

    /// burn's path of one parameter of `row` (`trunk.` left out), e.g. BatchNorm's checkpoint
    /// `bn1.weight` is burn's `bn1.gamma`, Keras's `Conv1/kernel` is `features.0.0.weight`.
    fn param_path(&self, row: &LayerRow, param: &str) -> String {
        self.table().burn_path(&row.name, param)
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
        self.table().stage_shape(stage)
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

    /// Pooled features: every stage, then global average pooling: [N, 3, H, W] → [N, D].
    fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.forward_stages(images, 0..self.num_stages()); // [N, D, h, w]
        super::efficientnet::global_avg_pool(x) // [N, D]
    }

    /// The pretrained classifier's logits: [N, 3, H, W] → [N, classes]; the pooled features
    /// once the classifier is cut off.
    fn forward(&self, images: Tensor<4>) -> Tensor<2>;

    /// Whether frozen inference should split a batch across threads, image by image
    /// ([`split_batch`](super::fold::split_batch)): right where many layers run on one thread
    /// (burn's own), wrong where the layers already use every thread on the whole batch (graft's
    /// kernels: ResNet and ConvNeXt measured 15–25 % faster unsplit; ViT as fast either way
    /// since its attention kernel, and unsplit a single image uses both threads).
    fn split_batch_for_inference(&self) -> bool {
        true
    }

    /// The pretrained classifier on pooled features, [N, D] → [N, classes] (logits, in
    /// inference mode); `None` once it is cut off.
    fn classify(&self, pooled: Tensor<2>) -> Option<Tensor<2>>;

    /// Cuts the pretrained classifier off (for a new head).
    fn drop_classifier(&mut self);

    /// Writes every stage (the whole trunk, in inference mode: BatchNorm from its running
    /// statistics) into `g` as ONNX nodes on the images `input` ([N, 3, H, W]) and returns the
    /// name of the last feature map ([N, C, h, w]). Weights come from the module's own
    /// parameters, so fine-tuned blocks are exported as fitted. An architecture without an
    /// emitter refuses, naming itself.
    fn to_onnx(&self, g: &mut OnnxGraph, input: &str) -> Result<String> {
        let _ = (g, input);
        let arch = std::any::type_name::<Self>().rsplit("::").next().unwrap_or("this").to_string();
        Err(GraftError::Export { what: format!("the {arch} architecture to ONNX"), reason: "the architecture has no ONNX emitter (`BackboneNet::to_onnx` in its file)".into() })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use burn::module::{Module, ModuleVisitor, Param};
    use graft_weights::{DType, StateDict};

    use super::*;
    use crate::zoo::efficientnet::global_avg_pool;
    use crate::zoo::load::WeightSource;
    use crate::zoo::table::LeafKind;
    use crate::zoo::MODELS;

    /// burn's float parameters (BatchNorm statistics included): path → shape, and the first
    /// value of each when `values` is set.
    #[derive(Default)]
    struct Params {
        stack: Vec<String>,
        shapes: BTreeMap<String, Vec<usize>>,
        values: Option<BTreeMap<String, f32>>,
    }

    impl ModuleVisitor for Params {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self.stack.join(".");
            let shape: [usize; D] = param.lazy_shape().dims();
            if let Some(values) = self.values.as_mut() {
                let first = param.val().flatten::<1>(0, D - 1).slice([0..1]).into_scalar::<f32>();
                values.insert(path.clone(), first);
            }
            self.shapes.insert(path, shape.to_vec());
        }
    }

    /// Every registered model's backbone states one self-consistent contract: the layer table
    /// names exactly burn's parameters with their shapes, stages cover the trunk in order, the
    /// feature width (and map size) recorded at each cut is what `forward_stages` produces on a
    /// zero image at the native resolution, and the table-driven loader puts each file tensor
    /// into the parameter the table names.
    #[test]
    fn every_backbone_keeps_its_contract() {
        let device = Device::default();
        assert!(MODELS.len() >= 10, "the registry lists {} models", MODELS.len());
        for spec in MODELS.iter() {
            let id = spec.id;
            let config = spec.config();
            let b = config.backbone();
            let table = b.table();
            let trunk = b.init_trunk(&device);
            let mut params = Params::default();
            trunk.visit(&mut params);

            // The table names every burn parameter once, with its shape, and nothing else.
            let mut named = BTreeSet::new();
            for leaf in &table.leaves {
                for t in table.tensors(leaf) {
                    assert_eq!(params.shapes.get(&t.burn), Some(&t.shape), "{id}: {} → {} is not a burn parameter of that shape", t.file, t.burn);
                    assert!(named.insert(t.burn.clone()), "{id}: {} named twice", t.burn);
                }
            }
            for path in params.shapes.keys() {
                assert!(named.contains(path), "{id}: burn parameter {path} is not in the layer table");
            }
            // The rows users see resolve through `param_path` and `module_path` to the same.
            for row in b.layer_rows() {
                for p in &row.params {
                    let burn = b.param_path(&row, &p.path);
                    assert!(params.shapes.contains_key(&burn), "{id}: row {} parameter {} → {burn}", row.name, p.path);
                    // Under the layer's module, or the module itself for a bare parameter
                    // (ConvNeXt's `layer_scale`), as `Grafted::freeze` matches them.
                    let module = b.module_path(&row.name);
                    assert!(burn == module || burn.starts_with(&format!("{module}.")), "{id}: {burn} is not under {module}");
                }
            }

            // Stages: in order, each with a layer, the pool and classifier outside them.
            let stages = b.num_stages();
            assert_eq!(trunk.num_stages(), stages, "{id}: stage counts of config and network");
            let mut previous = 0;
            for leaf in &table.leaves {
                match leaf.stage {
                    Some(s) => {
                        assert!(s >= previous && s < stages && !leaf.is_head, "{id}: {} in stage {s} after stage {previous}", leaf.name);
                        previous = s;
                    }
                    None => assert!(leaf.is_head || matches!(leaf.kind, LeafKind::Pool(_)), "{id}: {} has no stage", leaf.name),
                }
            }
            for s in 0..stages {
                assert!(table.leaves.iter().any(|l| l.stage == Some(s)), "{id}: stage {s} has no layer");
                assert_eq!(b.stage_named(&b.stage_name(s)), Some(s), "{id}: stage {s} is not found by its name");
            }
            // The classifier: the last layers (one, or VGG's three), the last giving the classes.
            let first_head = table.leaves.iter().position(|l| l.is_head).unwrap_or_else(|| panic!("{id}: no classifier"));
            assert!(table.leaves[first_head..].iter().all(|l| l.is_head), "{id}: the classifier layers are not the last ones");
            assert_eq!(table.leaves.last().map(|l| l.output_shape.clone()), Some(vec![b.num_classes()]), "{id}: classifier outputs");

            // Feature width and map size at each cut, as the network computes them.
            let side = b.resolution();
            let mut x = Tensor::<4>::zeros([1, 3, side, side], &device);
            for s in 0..stages {
                x = trunk.forward_stages(x, s..s + 1);
                let [_, c, h, w] = x.dims();
                assert_eq!([c, h, w], b.stage_shape(s), "{id}: stage {s} ({})", b.stage_name(s));
            }
            let pooled = global_avg_pool(x);
            assert_eq!(pooled.dims(), [1, config.feature_dim()], "{id}: pooled features");
            assert_eq!(trunk.classify(pooled).map(|l| l.dims()), Some([1, b.num_classes()]), "{id}: logits");

            // The loader, driven by the same table: file tensor k (in the file's layout) filled
            // with k lands in the parameter the table names.
            let mut dict = StateDict::default();
            let mut want = BTreeMap::new();
            for (k, t) in table.leaves.iter().flat_map(|l| table.tensors(l)).enumerate() {
                let shape = t.file_shape();
                let data = vec![k as f32; shape.iter().product()];
                dict.tensors.insert(t.file.clone(), graft_weights::Tensor { shape, dtype: DType::F32, data });
                want.insert(t.burn, k as f32);
            }
            let path = std::path::Path::new("synthetic.pth");
            let source = WeightSource { dict: &dict, path, model: id, device: &device };
            let loaded = b.init_trunk(&device).load_weights(&source).unwrap_or_else(|e| panic!("{id}: {e}"));
            drop(dict);
            let mut values = Params { values: Some(BTreeMap::new()), ..Params::default() };
            loaded.visit(&mut values);
            assert_eq!(values.values, Some(want), "{id}: loaded values by burn path");
        }
    }
}
