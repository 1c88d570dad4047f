//! The one description of an architecture's layers, recorded while its network is built.
//!
//! An architecture builds its network through a [`Builder`], a path builder in the manner of
//! candle's `vb.pp("stages")`: `b.pp("layer1").pp(0).conv("conv1", config, out)` creates the
//! convolution and records a [`Leaf`] named `layer1.0.conv1`, with its kind, its output shape for
//! one image at the native resolution and its stage. The name is written once, there; the struct
//! field that holds the module must carry the same name, since burn derives parameter paths
//! from field names (the contract test in [`super::backbone`] checks that every recorded
//! parameter is a real one of the same shape, and that none is left out).
//!
//! Everything else reads the recorded [`Table`]: the layer table users see (`inspect`,
//! `--freeze`), the stage of each layer, and the loader, which for every leaf and every
//! parameter reads the weights file's tensor into burn's parameter ([`Table::load`]). How a
//! weights file names and lays out tensors is a [`Convention`]: PyTorch's (`bn1.weight`, linear
//! weights `[out, in]`) or Keras's (`bn_Conv1/gamma`, kernels `[kh, kw, in, out]`), the latter
//! with the architecture's own layer names given by [`Table::renamed`]. An architecture that
//! timm also builds names every tensor a second time, timm's way ([`Table::with_timm`]): the
//! loader reads a file under whichever of the two name sets it holds ([`Table::name_set`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use std::fmt::Display;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};

use super::keras::{depthwise_to_oihw, hwio_to_oihw};
use super::layers::{LayerRow, ParamRow};
use super::load::WeightSource;
use crate::{GraftError, Result};

/// What a leaf layer is, with the sizes that fix its parameters' shapes.
#[derive(Debug, Clone, PartialEq)]
pub enum LeafKind {
    Conv { input: usize, output: usize, kernel: usize, groups: usize, bias: bool },
    BatchNorm { channels: usize },
    Linear { input: usize, output: usize, bias: bool },
    /// A LayerNorm over `channels` (weight and bias; ConvNeXt's over the channels of a map).
    LayerNorm { channels: usize },
    /// A bare parameter of this shape, named by the leaf itself (ConvNeXt's `layer_scale`).
    Scale { shape: [usize; 3] },
    /// A bare parameter added to or joined with the activations, named by the leaf itself
    /// (ViT's `class_token` and `encoder.pos_embedding`).
    Embedding { shape: [usize; 3] },
    /// A linear layer whose weight and bias are its parent's own `<leaf>_weight` and
    /// `<leaf>_bias` (PyTorch's `nn.MultiheadAttention`: `self_attention.in_proj_weight`).
    InProj { input: usize, output: usize },
    /// A layer without parameters (pooling), shown under this kind.
    Pool(&'static str),
}

/// One leaf layer, as the build walk recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// The layer's name in the weights file (burn's module path unless [`Table::renamed`]).
    pub name: String,
    /// burn's module path, `trunk.` left out: `layer1.0.conv1`, `features.2.conv.0.0`.
    pub module: String,
    pub kind: LeafKind,
    /// Output shape for one image at the native resolution, batch dimension left out.
    pub output_shape: Vec<usize>,
    /// The stage the layer belongs to; `None` for the pool and the classifier.
    pub stage: Option<usize>,
    /// The pretrained classifier.
    pub is_head: bool,
    /// The block `--freeze N` counts this layer in, where the architecture groups its layers
    /// itself (see [`Builder::block`]); `None`: the block its name implies.
    pub block: Option<String>,
    /// How the file's layer sees its input, where that reorders its kernel (Keras and Caffe
    /// files; set by [`Table::with_input`]).
    pub input: FileInput,
}

/// What a Keras or Caffe file's layer takes as input, where that differs from burn's network
/// and its kernel is reordered on loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileInput {
    #[default]
    Same,
    /// The first convolution of a network whose file expects BGR images (Caffe's networks,
    /// Keras's Caffe-style `preprocess_input` of VGG and ResNet50): its kernel's input channels
    /// are reversed, so
    /// burn's network takes RGB images like every other graft network.
    Bgr,
    /// A Dense layer after Keras's `Flatten` of a `[h, w, channels]` map: its kernel's rows are
    /// in (h, w, c) order, burn's flatten of `[c, h, w]` wants (c, h, w).
    ChannelsLast { channels: usize, h: usize, w: usize },
}

/// How a weights file names and lays out tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// PyTorch state dicts: `<module>.<param>`, BatchNorm `weight`/`bias`/`running_mean`/
    /// `running_var`, linear weights `[out, in]`.
    Torch,
    /// Keras `.h5` (see [`super::keras`]): `<layer>/<weight>`, `kernel` in `[kh, kw, in, out]`
    /// (depthwise `[kh, kw, channels, multiplier]`, Keras 2 calls it `depthwise_kernel`),
    /// BatchNorm `gamma`/`beta`/`moving_mean`/`moving_variance`, Dense kernels `[in, out]`.
    Keras,
    /// Caffe `.caffemodel` (see `graft_weights::caffe`): PyTorch's layouts (`conv1.weight`
    /// `[out, in / groups, kh, kw]`, InnerProduct `[out, in]`) under Caffe's layer names and
    /// types. Caffe's networks read BGR images: their first convolution is marked
    /// [`FileInput::Bgr`] and reversed on load, so the network reads RGB as every graft model does.
    Caffe,
}

/// How a file tensor becomes burn's parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The same shape and order.
    Same,
    /// PyTorch's linear weight `[out, in]` → burn's `[in, out]`.
    Transposed,
    /// Keras's `[kh, kw, in, out]` → `[out, in, kh, kw]`.
    KerasConv,
    /// Keras's depthwise `[kh, kw, groups, multiplier]` → `[groups · multiplier, 1, kh, kw]`.
    KerasDepthwise { groups: usize },
    /// The same shape with the input channels (axis 1) in reverse order ([`FileInput::Bgr`] in
    /// PyTorch's layout: Caffe's first convolution).
    ReversedInput,
    /// [`KerasConv`](Self::KerasConv) with the input channels reversed ([`FileInput::Bgr`]).
    KerasConvBgr,
    /// A Keras Dense kernel `[h·w·c, out]` after a `Flatten` of `[h, w, c]` → burn's
    /// `[c·h·w, out]` ([`FileInput::ChannelsLast`]).
    KerasFlattened { channels: usize, h: usize, w: usize },
}

/// One parameter of a leaf: its name in the file, its burn path and shape, and how one becomes
/// the other.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorName {
    pub file: String,
    /// burn's parameter path, `trunk.` left out: `layer1.0.bn1.gamma`.
    pub burn: String,
    /// burn's shape.
    pub shape: Vec<usize>,
    /// BatchNorm running statistics: state, never trained by gradients.
    pub buffer: bool,
    pub layout: Layout,
}

impl TensorName {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor's shape in the weights file.
    pub fn file_shape(&self) -> Vec<usize> {
        match (self.layout, self.shape.as_slice()) {
            (Layout::Transposed, &[d_in, d_out]) => vec![d_out, d_in],
            (Layout::KerasConv | Layout::KerasConvBgr, &[out, in_per_group, kh, kw]) => vec![kh, kw, in_per_group, out],
            (Layout::KerasDepthwise { groups }, &[out, _, kh, kw]) => vec![kh, kw, groups, out / groups],
            _ => self.shape.clone(),
        }
    }

    /// Reads the tensor from `w` in burn's layout, checking that it exists and has the shape
    /// this architecture needs. `timm`: the tensor's name and shape in a timm file instead
    /// (the same values in the same order, see [`Table::with_timm`]).
    fn read(&self, w: &WeightSource, timm: Option<&(String, Vec<usize>)>) -> Result<Vec<f32>> {
        let file_shape = self.file_shape();
        let (key, shape) = timm.map_or((&self.file, &file_shape), |(name, shape)| (name, shape));
        Ok(match self.layout {
            Layout::Same => w.data(key, shape)?.to_vec(),
            Layout::Transposed => {
                let (d_in, d_out) = (self.shape[0], self.shape[1]);
                let torch_layout = w.data(key, shape)?;
                let mut transposed = vec![0f32; d_in * d_out];
                for o in 0..d_out {
                    for i in 0..d_in {
                        transposed[i * d_out + o] = torch_layout[o * d_in + i];
                    }
                }
                transposed
            }
            Layout::KerasConv => hwio_to_oihw(w.data(&self.file, &file_shape)?, shape4(&file_shape)),
            Layout::ReversedInput => reverse_input_channels(w.data(&self.file, &self.shape)?, shape4(&self.shape)),
            Layout::KerasConvBgr => reverse_input_channels(&hwio_to_oihw(w.data(&self.file, &file_shape)?, shape4(&file_shape)), shape4(&self.shape)),
            Layout::KerasFlattened { channels, h, w: width } => {
                let d_out = self.shape[1];
                let keras = w.data(&self.file, &file_shape)?;
                let mut rows = vec![0f32; keras.len()];
                for c in 0..channels {
                    for y in 0..h {
                        for x in 0..width {
                            let (to, from) = (((c * h + y) * width + x) * d_out, ((y * width + x) * channels + c) * d_out);
                            rows[to..to + d_out].copy_from_slice(&keras[from..from + d_out]);
                        }
                    }
                }
                rows
            }
            Layout::KerasDepthwise { .. } => {
                // Keras 2 names the depthwise kernel `depthwise_kernel`, Keras 3 `kernel`.
                let keras2 = self.file.strip_suffix("/kernel").map(|layer| format!("{layer}/depthwise_kernel"));
                let key = keras2.filter(|k| w.dict.tensors.contains_key(k)).unwrap_or_else(|| self.file.clone());
                depthwise_to_oihw(w.data(&key, &file_shape)?, shape4(&file_shape))
            }
        })
    }
}

/// A `[out, in, kh, kw]` kernel with its input channels in reverse order (a network that reads
/// BGR made to read RGB).
fn reverse_input_channels(data: &[f32], [out, channels, kh, kw]: [usize; 4]) -> Vec<f32> {
    let plane = kh * kw;
    let mut reversed = vec![0f32; data.len()];
    for o in 0..out {
        for c in 0..channels {
            let (to, from) = ((o * channels + c) * plane, (o * channels + channels - 1 - c) * plane);
            reversed[to..to + plane].copy_from_slice(&data[from..from + plane]);
        }
    }
    reversed
}

fn shape4(shape: &[usize]) -> [usize; 4] {
    let mut out = [0; 4];
    out.copy_from_slice(&shape[..4]);
    out
}

/// An architecture's recorded layers and the convention of its weights files.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub leaves: Vec<Leaf>,
    pub convention: Convention,
    /// timm's name and shape of each tensor, by its name in the table's own set (see
    /// [`Table::with_timm`]); `None` for architectures timm's files do not name here.
    pub timm: Option<HashMap<String, (String, Vec<usize>)>>,
}

/// Which of an architecture's name sets a weights file uses (see [`Table::name_set`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameSet {
    /// The table's own names: the layer table's, torchvision's for the PyTorch architectures.
    Own,
    /// timm's names for the same tensors ([`Table::with_timm`]).
    Timm,
}

impl Table {
    /// Builds a network through a [`Builder`] on `device`; the table records what was built.
    /// Parameters are initialised lazily (on first use), so building only to read the table
    /// allocates no weights.
    pub fn build<N>(device: &Device, f: impl FnOnce(&mut Builder) -> N) -> (N, Table) {
        let mut record = Record::default();
        let net = f(&mut Builder { device, record: &mut record, prefix: String::new() });
        (net, Table { leaves: record.leaves, convention: Convention::Torch, timm: None })
    }

    /// The table with timm's name for every tensor as well: `rename` takes a tensor's name in
    /// the table's own set and its shape there, and gives timm's name and shape. The shape may
    /// differ only where timm keeps the same values in the same row-major order (a linear
    /// layer's `[out, in]` as a convolution's `[out, c, k, k]`, a `[C, 1, 1]` scale as `[C]`).
    /// The layer table (`inspect`, `--freeze`) keeps the own names; a timm file loads by these.
    pub fn with_timm(mut self, rename: impl Fn(&str, &[usize]) -> (String, Vec<usize>)) -> Self {
        let names = self
            .leaves
            .iter()
            .flat_map(|l| self.tensors(l))
            .map(|t| {
                let (name, shape) = rename(&t.file, &t.file_shape());
                debug_assert_eq!(shape.iter().product::<usize>(), t.numel(), "{} → {name}", t.file);
                (t.file, (name, shape))
            })
            .collect();
        self.timm = Some(names);
        self
    }

    /// Every tensor a file of name set `set` holds: its name and shape there, in the table's
    /// order. Empty for timm's set when the table has none.
    pub fn file_tensors(&self, set: NameSet) -> Vec<(String, Vec<usize>)> {
        let own = self.leaves.iter().flat_map(|l| self.tensors(l)).map(|t| {
            let shape = t.file_shape();
            (t.file, shape)
        });
        match (set, &self.timm) {
            (NameSet::Own, _) => own.collect(),
            (NameSet::Timm, Some(timm)) => own.filter_map(|(file, _)| timm.get(&file).cloned()).collect(),
            (NameSet::Timm, None) => Vec::new(),
        }
    }

    /// How many of the tensors a file of name set `set` holds are in `dict`.
    pub fn held(&self, set: NameSet, dict: &graft_weights::StateDict) -> usize {
        self.file_tensors(set).iter().filter(|(name, _)| dict.tensors.contains_key(name)).count()
    }

    /// The name set `dict` uses: timm's when the table has one and the file holds at least half
    /// of its names and more of them than of the table's own (a timm file short of a few
    /// tensors is still read as timm's, and its error names timm's missing tensor); otherwise
    /// the own. A file of another architecture, which may share a few generic names with one
    /// set (a ResNet's `bn1.weight` is also timm MobileNetV2's), is read under the own names
    /// and fails naming their first missing tensor.
    pub fn name_set(&self, dict: &graft_weights::StateDict) -> NameSet {
        let timm = self.held(NameSet::Timm, dict);
        if self.timm.is_some() && timm > self.held(NameSet::Own, dict) && 2 * timm >= self.file_tensors(NameSet::Timm).len() {
            NameSet::Timm
        } else {
            NameSet::Own
        }
    }

    /// The table with every layer named by `rename` in a file of `convention`: the one place
    /// where an architecture's other framework names its layers.
    pub fn renamed(mut self, convention: Convention, rename: impl Fn(&Leaf) -> String) -> Self {
        for leaf in &mut self.leaves {
            leaf.name = rename(leaf);
        }
        self.convention = convention;
        self
    }

    /// The table with the layer named `layer` taking `input` in the file (see [`FileInput`]).
    pub fn with_input(mut self, layer: &str, input: FileInput) -> Self {
        for leaf in self.leaves.iter_mut().filter(|l| l.name == layer) {
            leaf.input = input;
        }
        self
    }

    /// The table without the pretrained classifier (a Keras `include_top=False` file).
    pub fn without_head(mut self) -> Self {
        self.leaves.retain(|l| !l.is_head);
        self
    }

    /// Every parameter of `leaf`, under the file's name and burn's, in burn's field order.
    pub fn tensors(&self, leaf: &Leaf) -> Vec<TensorName> {
        let keras = self.convention == Convention::Keras;
        let sep = if keras { "/" } else { "." };
        let tensor = |file: &str, burn: &str, shape: Vec<usize>, buffer: bool, layout: Layout| TensorName {
            file: format!("{}{sep}{file}", leaf.name),
            burn: format!("{}.{burn}", leaf.module),
            shape,
            buffer,
            layout,
        };
        let mut out = Vec::new();
        match leaf.kind {
            LeafKind::Conv { input, output, kernel, groups, bias } => {
                let shape = vec![output, input / groups, kernel, kernel];
                let (name, layout) = match (keras, is_depthwise(&leaf.kind)) {
                    (false, _) if leaf.input == FileInput::Bgr => ("weight", Layout::ReversedInput),
                    (false, _) => ("weight", Layout::Same),
                    (true, false) if leaf.input == FileInput::Bgr => ("kernel", Layout::KerasConvBgr),
                    (true, false) => ("kernel", Layout::KerasConv),
                    (true, true) => ("kernel", Layout::KerasDepthwise { groups }),
                };
                out.push(tensor(name, "weight", shape, false, layout));
                if bias {
                    out.push(tensor("bias", "bias", vec![output], false, Layout::Same));
                }
            }
            LeafKind::BatchNorm { channels } => {
                let names = if keras {
                    ["gamma", "beta", "moving_mean", "moving_variance"]
                } else {
                    ["weight", "bias", "running_mean", "running_var"]
                };
                for (i, (file, burn)) in names.into_iter().zip(["gamma", "beta", "running_mean", "running_var"]).enumerate() {
                    out.push(tensor(file, burn, vec![channels], i >= 2, Layout::Same));
                }
            }
            LeafKind::Linear { input, output, bias } => {
                let (name, layout) = match (keras, leaf.input) {
                    (true, FileInput::ChannelsLast { channels, h, w }) => ("kernel", Layout::KerasFlattened { channels, h, w }),
                    (true, _) => ("kernel", Layout::Same),
                    (false, _) => ("weight", Layout::Transposed),
                };
                out.push(tensor(name, "weight", vec![input, output], false, layout));
                if bias {
                    out.push(tensor("bias", "bias", vec![output], false, Layout::Same));
                }
            }
            LeafKind::LayerNorm { channels } => {
                let names = if keras { ["gamma", "beta"] } else { ["weight", "bias"] };
                for (file, burn) in names.into_iter().zip(["gamma", "beta"]) {
                    out.push(tensor(file, burn, vec![channels], false, Layout::Same));
                }
            }
            LeafKind::Scale { shape } | LeafKind::Embedding { shape } => {
                out.push(TensorName { file: leaf.name.clone(), burn: leaf.module.clone(), shape: shape.to_vec(), buffer: false, layout: Layout::Same });
            }
            LeafKind::InProj { input, output } => {
                let fused = |file: &str, burn: &str, shape: Vec<usize>, layout: Layout| TensorName {
                    file: format!("{}_{file}", leaf.name),
                    burn: format!("{}.{burn}", leaf.module),
                    shape,
                    buffer: false,
                    layout,
                };
                out.push(fused("weight", "weight", vec![input, output], Layout::Transposed));
                out.push(fused("bias", "bias", vec![output], Layout::Same));
            }
            LeafKind::Pool(_) => {}
        }
        out
    }

    /// The layer table (`inspect`, freeze specs): layers and parameters under the file's names.
    pub fn rows(&self) -> Vec<LayerRow> {
        self.leaves
            .iter()
            .map(|leaf| LayerRow {
                name: leaf.name.clone(),
                kind: self.kind(&leaf.kind),
                output_shape: leaf.output_shape.clone(),
                params: self.tensors(leaf).into_iter().map(|t| ParamRow { numel: t.numel(), path: t.file, buffer: t.buffer }).collect(),
                is_head: leaf.is_head,
                block: leaf.block.clone(),
            })
            .collect()
    }

    /// A layer's kind as its framework calls it.
    fn kind(&self, kind: &LeafKind) -> String {
        let keras = self.convention == Convention::Keras;
        if self.convention == Convention::Caffe {
            // Caffe's layer types.
            return match *kind {
                LeafKind::Conv { kernel, .. } => format!("Convolution {kernel}x{kernel}"),
                LeafKind::Linear { .. } => "InnerProduct".into(),
                LeafKind::Pool(kind) => kind.into(),
                _ => "Layer".into(),
            };
        }
        match *kind {
            LeafKind::Conv { kernel, .. } => {
                let name = match (keras, is_depthwise(kind)) {
                    (false, false) => "Conv2d",
                    (false, true) => "DepthwiseConv2d",
                    (true, false) => "Conv2D",
                    (true, true) => "DepthwiseConv2D",
                };
                format!("{name} {kernel}x{kernel}")
            }
            LeafKind::BatchNorm { .. } => if keras { "BatchNormalization" } else { "BatchNorm2d" }.into(),
            LeafKind::Linear { .. } => if keras { "Dense" } else { "Linear" }.into(),
            LeafKind::LayerNorm { .. } => if keras { "LayerNormalization" } else { "LayerNorm" }.into(),
            LeafKind::Scale { .. } => "LayerScale".into(),
            LeafKind::Embedding { .. } => "Parameter".into(),
            LeafKind::InProj { .. } => "Linear (in_proj)".into(),
            LeafKind::Pool(kind) => kind.into(),
        }
    }

    /// The leaf named `layer` (the file's name).
    pub fn leaf(&self, layer: &str) -> Option<&Leaf> {
        self.leaves.iter().find(|l| l.name == layer)
    }

    /// The stage of the layer named `layer`; `None` for the pool, the classifier and names
    /// that are not layers.
    pub fn stage_of(&self, layer: &str) -> Option<usize> {
        self.leaf(layer).and_then(|l| l.stage)
    }

    /// burn's path of the parameter named `param` in the file.
    pub fn param_path(&self, param: &str) -> Option<String> {
        self.leaves.iter().flat_map(|l| self.tensors(l)).find(|t| t.file == param).map(|t| t.burn)
    }

    /// burn's module path of the layer named `layer`; the name itself when no layer has it.
    pub fn module_path(&self, layer: &str) -> String {
        self.leaf(layer).map_or_else(|| layer.to_string(), |l| l.module.clone())
    }

    /// burn's path of the parameter named `param` of the layer named `layer` (looked up in
    /// every layer when that one lacks it); the name itself when no layer has it.
    pub fn burn_path(&self, layer: &str, param: &str) -> String {
        let in_layer = self.leaf(layer).and_then(|l| self.tensors(l).into_iter().find(|t| t.file == param)).map(|t| t.burn);
        in_layer.or_else(|| self.param_path(param)).unwrap_or_else(|| param.to_string())
    }

    /// `[C, h, w]` of stage `stage`'s output for one image at the native resolution: the output
    /// of the stage's last layer. `C` is the feature width at that cut.
    pub fn stage_shape(&self, stage: usize) -> [usize; 3] {
        let last = self.leaves.iter().rev().find(|l| !l.is_head && l.output_shape.len() == 3 && l.stage == Some(stage));
        match last.map(|l| l.output_shape.as_slice()) {
            Some(&[c, h, w]) => [c, h, w],
            _ => [0; 3],
        }
    }

    /// Replaces every parameter and BatchNorm statistic of `net` (built by the same walk) with
    /// the file's, read under the name set the file uses ([`name_set`](Self::name_set)), checking that each tensor exists and has the shape this architecture needs.
    /// Parameters are visited in burn's field order, so the first tensor that differs is named.
    pub fn load<M: Module>(&self, net: M, w: &WeightSource) -> Result<M> {
        let names: HashMap<String, TensorName> = self.leaves.iter().flat_map(|l| self.tensors(l)).map(|t| (t.burn.clone(), t)).collect();
        let timm = self.timm.as_ref().filter(|_| self.name_set(w.dict) == NameSet::Timm);
        let mut loader = Loader { names: &names, timm, w, path: Vec::new(), error: None };
        let net = net.map(&mut loader);
        match loader.error {
            Some(e) => Err(e),
            None => Ok(net),
        }
    }
}

/// `table`'s tensors under timm's names, name → shape (for the architectures' unit tests).
#[cfg(test)]
pub(crate) fn timm_names(table: &Table) -> HashMap<String, Vec<usize>> {
    table.file_tensors(NameSet::Timm).into_iter().collect()
}

/// A convolution with one input channel per group over several groups.
fn is_depthwise(kind: &LeafKind) -> bool {
    matches!(*kind, LeafKind::Conv { input, groups, .. } if groups > 1 && groups == input)
}

/// Moves file tensors into the parameters the table names, by burn path.
struct Loader<'a, 'w> {
    names: &'a HashMap<String, TensorName>,
    /// timm's names, when the file uses them.
    timm: Option<&'a HashMap<String, (String, Vec<usize>)>>,
    w: &'a WeightSource<'w>,
    path: Vec<String>,
    error: Option<GraftError>,
}

impl ModuleMapper for Loader<'_, '_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        // Every parameter is named by the table (test `every_backbone_keeps_its_contract`).
        let Some(name) = self.names.get(&self.path.join(".")) else { return param };
        let shape: [usize; D] = param.lazy_shape().dims();
        debug_assert_eq!(shape.as_slice(), name.shape.as_slice(), "{}", name.burn);
        match name.read(self.w, self.timm.and_then(|t| t.get(&name.file))) {
            Ok(data) => Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), self.w.device)),
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

#[derive(Default)]
struct Record {
    leaves: Vec<Leaf>,
    stage: Option<usize>,
    block: Option<String>,
}

/// Builds modules and records each as a [`Leaf`] under its path (see the module docs).
pub struct Builder<'a> {
    device: &'a Device,
    record: &'a mut Record,
    prefix: String,
}

impl Builder<'_> {
    /// A builder for the submodule `name` (a field, or an index of a `Vec` or tuple).
    pub fn pp(&mut self, name: impl Display) -> Builder<'_> {
        let prefix = self.path(name);
        Builder { device: self.device, record: &mut *self.record, prefix }
    }

    /// The layers recorded from now on belong to `stage` (`None`: the pool and classifier).
    pub fn stage(&mut self, stage: Option<usize>) {
        self.record.stage = stage;
    }

    /// The layers recorded from now on form the block `block` for `--freeze N` (which counts
    /// blocks); `None`: each layer's block is the one its name implies (`layer1.0` for
    /// `layer1.0.conv1`, see [`LayerRow::block`]). For networks whose weights file numbers
    /// every layer (`features.0` a convolution, `features.1` its BatchNorm), so that a
    /// convolution and its BatchNorm count as one.
    pub fn block(&mut self, block: Option<String>) {
        self.record.block = block;
    }

    pub fn device(&self) -> &Device {
        self.device
    }

    fn path(&self, name: impl Display) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    fn push(&mut self, name: impl Display, kind: LeafKind, output_shape: Vec<usize>, is_head: bool) {
        let module = self.path(name);
        let (stage, block) = if is_head { (None, None) } else { (self.record.stage, self.record.block.clone()) };
        self.record.leaves.push(Leaf { name: module.clone(), module, kind, output_shape, stage, is_head, block, input: FileInput::Same });
    }

    /// A convolution whose output for one image at the native resolution is `out`.
    pub fn conv(&mut self, name: impl Display, config: Conv2dConfig, out: [usize; 3]) -> Conv2d {
        let [input, output] = config.channels;
        let kind = LeafKind::Conv { input, output, kernel: config.kernel_size[0], groups: config.groups, bias: config.bias };
        self.push(name, kind, out.to_vec(), false);
        config.init(self.device)
    }

    pub fn batch_norm(&mut self, name: impl Display, config: BatchNormConfig, out: [usize; 3]) -> BatchNorm {
        self.push(name, LeafKind::BatchNorm { channels: config.num_features }, out.to_vec(), false);
        config.init(self.device)
    }

    /// A layer without parameters (pooling), recorded for the table.
    pub fn layer(&mut self, name: impl Display, kind: &'static str, out: Vec<usize>) {
        self.push(name, LeafKind::Pool(kind), out, false);
    }

    /// A LayerNorm over the last dimension; `head`: part of the pretrained classifier.
    pub fn layer_norm(&mut self, name: impl Display, config: LayerNormConfig, out: Vec<usize>, head: bool) -> LayerNorm {
        self.push(name, LeafKind::LayerNorm { channels: config.d_model }, out, head);
        config.init(self.device)
    }

    /// A linear layer inside the trunk (the pretrained classifier is [`classifier`](Self::classifier)).
    pub fn linear(&mut self, name: impl Display, config: LinearConfig, out: Vec<usize>) -> Linear {
        let kind = LeafKind::Linear { input: config.d_input, output: config.d_output, bias: config.bias };
        self.push(name, kind, out, false);
        config.init(self.device)
    }

    /// A bare parameter of `shape`, initialised to ones (ConvNeXt's `layer_scale`).
    pub fn scale(&mut self, name: impl Display, shape: [usize; 3], out: [usize; 3]) -> Param<Tensor<3>> {
        self.push(name, LeafKind::Scale { shape }, out.to_vec(), false);
        Param::from_tensor(Tensor::ones(shape, self.device))
    }

    /// A bare parameter of `shape` joined with or added to the activations (ViT's class token
    /// and position embedding), initialised to zeros; `out` is the layer's output for one image.
    pub fn embedding(&mut self, name: impl Display, shape: [usize; 3], out: Vec<usize>) -> Param<Tensor<3>> {
        self.push(name, LeafKind::Embedding { shape }, out, false);
        Param::from_tensor(Tensor::zeros(shape, self.device))
    }

    /// A linear layer recorded as PyTorch's `nn.MultiheadAttention` input projection
    /// ([`LeafKind::InProj`]): the file's `<name>_weight` `[out, in]` and `<name>_bias`.
    pub fn in_proj(&mut self, name: impl Display, config: LinearConfig, out: Vec<usize>) -> Linear {
        self.push(name, LeafKind::InProj { input: config.d_input, output: config.d_output }, out, false);
        config.init(self.device)
    }

    /// The pretrained classifier.
    pub fn classifier(&mut self, name: impl Display, config: LinearConfig) -> Linear {
        let kind = LeafKind::Linear { input: config.d_input, output: config.d_output, bias: config.bias };
        self.push(name, kind, vec![config.d_output], true);
        config.init(self.device)
    }
}
