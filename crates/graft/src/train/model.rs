//! The grafted model: a pretrained trunk with its classifier cut off and a new head on top.

use std::collections::BTreeSet;
use std::str::FromStr;

use burn::module::{Module, ParamGroup};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::classic::{ClassicKind, Penalty};
use crate::zoo::efficientnet::global_avg_pool;
use crate::zoo::trunk::InferenceTrunk;
use crate::zoo::{Trunk, TrunkConfig};
use crate::zoo::layers::{LayerRow, ParamRow};
use crate::error::unit_variant;
use crate::limits;
use crate::{GraftError, Result};

/// The new classifier (`--head`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum HeadSpec {
    /// One linear layer: features → classes.
    Linear,
    /// Hidden ReLU layers of these widths, each followed by dropout, then a linear layer.
    Mlp(Vec<usize>),
    /// A classic classifier on the frozen trunk's pooled features.
    Classic(ClassicKind),
}

impl HeadSpec {
    /// The neural layers this head has: a classic head keeps an unused linear placeholder so
    /// that its run directory holds the same model structure as any other.
    pub fn neural(&self) -> HeadSpec {
        match self {
            HeadSpec::Classic(_) => HeadSpec::Linear,
            h => h.clone(),
        }
    }
}

/// An `mlp:` head's hidden widths within [`limits::MAX_HEAD_LAYERS`],
/// [`limits::MAX_HEAD_WIDTH`] and [`limits::MAX_HEAD_HIDDEN_PARAMS`], checked before any
/// tensor of those sizes exists.
pub(crate) fn check_mlp_widths(setting: &str, spec: &str, widths: &[usize]) -> Result<()> {
    let over = |what: String| Err(GraftError::setting(setting, spec, what));
    if widths.len() > limits::MAX_HEAD_LAYERS {
        return over(format!("{} hidden layers, over the limit of {} (graft::limits::MAX_HEAD_LAYERS)", widths.len(), limits::MAX_HEAD_LAYERS));
    }
    if let Some(w) = widths.iter().find(|&&w| w > limits::MAX_HEAD_WIDTH) {
        return over(format!("width {w} is over the limit of {} (graft::limits::MAX_HEAD_WIDTH)", limits::MAX_HEAD_WIDTH));
    }
    let params: u64 = widths.windows(2).map(|p| p[0] as u64 * p[1] as u64).sum();
    if params > limits::MAX_HEAD_HIDDEN_PARAMS {
        return over(format!("{params} weights between hidden layers, over the limit of {} (graft::limits::MAX_HEAD_HIDDEN_PARAMS)", limits::MAX_HEAD_HIDDEN_PARAMS));
    }
    Ok(())
}

impl FromStr for HeadSpec {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => return Ok(HeadSpec::Linear),
            "logistic" | "logistic:c=auto" => return Ok(HeadSpec::Classic(ClassicKind::Logistic(Penalty::Auto))),
            "svm" => return Ok(HeadSpec::Classic(ClassicKind::Svm)),
            "prototype" => return Ok(HeadSpec::Classic(ClassicKind::Prototype)),
            _ => {}
        }
        if let Some(k) = s.strip_prefix("knn:") {
            let k = k.parse::<usize>().ok().filter(|k| *k > 0).ok_or_else(|| GraftError::setting("head", s, "knn:K needs K ≥ 1"))?;
            if k > limits::MAX_KNN_K {
                return Err(GraftError::setting("head", s, format!("knn:K is over the limit of {} (graft::limits::MAX_KNN_K)", limits::MAX_KNN_K)));
            }
            return Ok(HeadSpec::Classic(ClassicKind::Knn(k)));
        }
        if let Some(c) = s.strip_prefix("logistic:c=") {
            let c = c.parse::<f64>().ok().filter(|c| c.is_finite() && *c > 0.0).ok_or_else(|| GraftError::setting("head", s, "logistic:c=C needs C > 0 (or auto)"))?;
            return Ok(HeadSpec::Classic(ClassicKind::Logistic(Penalty::C(c))));
        }
        let bad = || GraftError::setting("head", s, "expected linear, mlp:W1,W2,… (e.g. mlp:1024,1024), logistic[:c=C|auto], svm, knn:K or prototype");
        let widths = s.strip_prefix("mlp:").ok_or_else(bad)?;
        let widths: Vec<usize> = widths.split(',').map(|w| w.trim().parse::<usize>()).collect::<std::result::Result<_, _>>().map_err(|_| bad())?;
        if widths.is_empty() || widths.contains(&0) {
            return Err(bad());
        }
        check_mlp_widths("head", s, &widths)?;
        Ok(HeadSpec::Mlp(widths))
    }
}

impl std::fmt::Display for HeadSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadSpec::Linear => write!(f, "linear"),
            HeadSpec::Mlp(w) => write!(f, "mlp:{}", w.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")),
            HeadSpec::Classic(ClassicKind::Logistic(Penalty::Auto)) => write!(f, "logistic"),
            HeadSpec::Classic(ClassicKind::Logistic(Penalty::C(c))) => write!(f, "logistic:c={c}"),
            HeadSpec::Classic(ClassicKind::Svm) => write!(f, "svm"),
            HeadSpec::Classic(ClassicKind::Prototype) => write!(f, "prototype"),
            HeadSpec::Classic(ClassicKind::Knn(k)) => write!(f, "knn:{k}"),
        }
    }
}

impl From<HeadSpec> for String {
    fn from(h: HeadSpec) -> String {
        h.to_string()
    }
}

impl TryFrom<String> for HeadSpec {
    type Error = GraftError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// How the trunk's last feature map becomes the head's input (`--head-pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HeadPool {
    /// Global average pooling: [C, h, w] → [C].
    #[default]
    Avg,
    /// Flatten: [C, h, w] → [C·h·w] (Keras `Flatten()`).
    Flatten,
}

impl FromStr for HeadPool {
    type Err = GraftError;
    fn from_str(s: &str) -> Result<Self> {
        unit_variant("head_pool", s, "expected avg or flatten")
    }
}

/// Linear layers with ReLU and dropout between them.
#[derive(Module, Debug)]
pub struct Head {
    pub layers: Vec<Linear>,
    pub dropout: Dropout,
}

impl Head {
    pub fn init(spec: &HeadSpec, input: usize, classes: usize, dropout: f64, device: &Device) -> Self {
        let mut widths = vec![input];
        if let HeadSpec::Mlp(hidden) = spec {
            widths.extend(hidden);
        }
        widths.push(classes);
        let layers = widths.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        Self { layers, dropout: DropoutConfig::new(dropout).init() }
    }

    /// [N, D] → [N, classes] logits.
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.dropout.forward(relu(x));
            }
        }
        x
    }

    /// Layer-table rows of the head, under the run's parameter names.
    pub fn rows(spec: &HeadSpec, input: usize, classes: usize) -> Vec<LayerRow> {
        let mut widths = vec![input];
        if let HeadSpec::Mlp(hidden) = spec {
            widths.extend(hidden);
        }
        widths.push(classes);
        widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| LayerRow {
                name: format!("head.layers.{i}"),
                kind: "Linear".into(),
                output_shape: vec![w[1]],
                params: vec![
                    ParamRow::weight(&format!("head.layers.{i}.weight"), w[0] * w[1]),
                    ParamRow::weight(&format!("head.layers.{i}.bias"), w[1]),
                ],
                is_head: true,
                block: None,
            })
            .collect()
    }
}

/// Pretrained trunk + new head.
#[derive(Module, Debug)]
pub struct Grafted {
    pub trunk: Trunk,
    pub head: Head,
    #[module(skip)]
    pub pool: HeadPool,
}

impl Grafted {
    /// Cuts the trunk's classifier off and puts `head` on it.
    pub fn new(trunk: Trunk, head: Head, pool: HeadPool) -> Self {
        Self { trunk: trunk.without_classifier(), head, pool }
    }

    /// Width of the head's input for a trunk whose last map is `[C, h, w]` (see
    /// [`TrunkConfig::final_map`]).
    pub fn head_input_width(pool: HeadPool, [c, h, w]: [usize; 3]) -> usize {
        match pool {
            HeadPool::Avg => c,
            HeadPool::Flatten => c * h * w,
        }
    }

    /// Last feature map → head input: [N, C, h, w] → [N, D].
    pub fn pool_map(&self, x: Tensor<4>) -> Tensor<2> {
        match self.pool {
            HeadPool::Avg => global_avg_pool(x),
            HeadPool::Flatten => x.flatten(1, 3),
        }
    }

    /// The frozen prefix's output, flattened per sample: stages `0..cut` on images, and the
    /// pooled head input when the cut is after the last stage. [N, 3, H, W] → [N, D_cut].
    /// Inference only: `frozen` is this model's trunk prepared once with
    /// [`Trunk::for_inference`](crate::zoo::trunk::Trunk::for_inference) (BatchNorm folded,
    /// batch split across threads); the prefix is frozen.
    pub fn activations(&self, frozen: &InferenceTrunk, images: Tensor<4>, cut: usize) -> Tensor<2> {
        let x = frozen.forward_stages(images, 0..cut);
        if cut == self.trunk.num_stages() {
            self.pool_map(x)
        } else {
            x.flatten(1, 3)
        }
    }

    /// Logits from activations at `cut` with per-sample shape `shape` ([C, h, w]; ignored when
    /// the cut is after the last stage).
    pub fn forward_from(&self, activations: Tensor<2>, cut: usize, shape: [usize; 3]) -> Tensor<2> {
        self.head.forward(self.features_from(activations, cut, shape))
    }

    /// The pooled features (what the head sees, [n, width]) from activations at `cut`, as in
    /// [`forward_from`](Self::forward_from).
    pub fn features_from(&self, activations: Tensor<2>, cut: usize, shape: [usize; 3]) -> Tensor<2> {
        if cut == self.trunk.num_stages() {
            return activations;
        }
        let [n, _] = activations.dims();
        let x = activations.reshape([n, shape[0], shape[1], shape[2]]); // [n, C, h, w]
        let x = self.trunk.forward_stages(x, cut..self.trunk.num_stages()); // [n, C', h', w']
        self.pool_map(x) // [n, width]
    }

    /// Logits from images.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.trunk.forward_stages(images, 0..self.trunk.num_stages());
        self.head.forward(self.pool_map(x))
    }

    /// Freezes the trunk parameters named (checkpoint names) in `frozen`. Whole layers are frozen
    /// through `freeze_group`, which also switches their BatchNorm to inference mode so its
    /// running statistics never move; a layer only partly named (e.g. only a BN's `weight`)
    /// has just those tensors' gradients stopped. `config` maps table names to module paths.
    pub fn freeze(self, rows: &[LayerRow], frozen: &BTreeSet<String>, config: &TrunkConfig) -> Result<Self> {
        let mut patterns = Vec::new();
        for row in rows.iter().filter(|r| !r.is_head && !r.params.is_empty()) {
            let names: Vec<&ParamRow> = row.params.iter().collect();
            let all = names.iter().all(|p| frozen.contains(&p.path));
            if all {
                // The module's parameters, or the parameter itself (ConvNeXt's `layer_scale`).
                patterns.push(format!("^trunk\\.{}(\\.|$)", regex::escape(&config.module_path(&row.name))));
            } else {
                for p in names.iter().filter(|p| frozen.contains(&p.path)) {
                    patterns.push(format!("^trunk\\.{}$", regex::escape(&config.param_path(row, &p.path))));
                }
            }
        }
        if patterns.is_empty() {
            return Ok(self);
        }
        let group = ParamGroup::from_any_regexes(patterns)
            .map_err(|e| GraftError::setting("freeze", "", format!("internal freeze pattern: {e:?}")))?;
        Ok(self.freeze_group(group))
    }
}

/// The number of leading trunk stages whose every parameter is frozen: everything before this
/// cut is a fixed function whose output can be computed once and cached.
pub fn frozen_prefix(rows: &[LayerRow], frozen: &BTreeSet<String>, config: &TrunkConfig) -> usize {
    let stages = config.num_stages();
    let mut stage_frozen = vec![true; stages];
    for row in rows.iter().filter(|r| !r.is_head) {
        if let Some(s) = config.stage_of(&row.name).filter(|s| *s < stages) {
            if row.params.iter().any(|p| !frozen.contains(&p.path)) {
                stage_frozen[s] = false;
            }
        }
    }
    stage_frozen.iter().take_while(|f| **f).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_head_specs_parse_and_print_back() {
        assert_eq!("logistic".parse::<HeadSpec>().unwrap(), HeadSpec::Classic(ClassicKind::Logistic(Penalty::Auto)));
        assert_eq!("logistic:c=auto".parse::<HeadSpec>().unwrap().to_string(), "logistic");
        let fixed: HeadSpec = "logistic:c=0.03".parse().unwrap();
        assert_eq!(fixed, HeadSpec::Classic(ClassicKind::Logistic(Penalty::C(0.03))));
        assert_eq!(fixed.to_string().parse::<HeadSpec>().unwrap(), fixed);
        for bad in ["logistic:c=0", "logistic:c=-1", "logistic:c=inf", "logistic:c=NaN", "logistic:c=", "logistic:0.5"] {
            assert!(bad.parse::<HeadSpec>().is_err(), "{bad}");
        }
    }

    /// Sizes that would allocate tens of GB are refused while parsing, naming the limit.
    #[test]
    fn head_sizes_are_bounded_at_parse_time() {
        let err = |s: &str| s.parse::<HeadSpec>().unwrap_err().to_string();
        assert_eq!(err("mlp:100000000000"), "invalid head `mlp:100000000000`: width 100000000000 is over the limit of 65536 (graft::limits::MAX_HEAD_WIDTH)");
        assert!(err("mlp:4000000000").contains("MAX_HEAD_WIDTH"));
        assert!(err(&format!("mlp:{}", vec!["8"; 17].join(","))).contains("17 hidden layers, over the limit of 16 (graft::limits::MAX_HEAD_LAYERS)"));
        assert!(err("mlp:65536,65536").contains("MAX_HEAD_HIDDEN_PARAMS"));
        assert!(err("knn:100001").contains("MAX_KNN_K"));
        assert_eq!("mlp:65536".parse::<HeadSpec>().unwrap(), HeadSpec::Mlp(vec![65536]));
        assert_eq!("mlp:4096,4096,4096".parse::<HeadSpec>().unwrap(), HeadSpec::Mlp(vec![4096; 3]));
        assert!("knn:100000".parse::<HeadSpec>().is_ok());
    }
}
