//! The layer table (`graft inspect`) and freeze specifications resolved against it.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::Serialize;

use crate::{GraftError, Result};

/// One parameter tensor of a layer, under its checkpoint name.
#[derive(Debug, Clone, Serialize)]
pub struct ParamRow {
    pub path: String,
    pub numel: usize,
    /// BatchNorm running statistics: state, never trained by gradients.
    pub buffer: bool,
}

impl ParamRow {
    pub fn weight(path: &str, numel: usize) -> Self {
        Self { path: path.into(), numel, buffer: false }
    }
    pub fn buffer(path: &str, numel: usize) -> Self {
        Self { path: path.into(), numel, buffer: true }
    }
}

/// One leaf layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub name: String,
    pub kind: String,
    /// Output shape for one input at the model's native resolution, batch dimension left out.
    pub output_shape: Vec<usize>,
    pub params: Vec<ParamRow>,
    /// Part of the classifier head rather than the reusable trunk; freeze specs skip it.
    #[serde(skip)]
    pub is_head: bool,
    /// The block `--freeze N` counts the layer in when the architecture says so (e.g. VGG's
    /// `features.1` BatchNorm with its convolution `features.0`); `None`: the one its name
    /// implies.
    #[serde(skip)]
    pub block: Option<String>,
}

impl LayerRow {
    /// Trainable-kind parameters (weights, biases, BN scale and shift), buffers excluded.
    pub fn num_params(&self) -> usize {
        self.params.iter().filter(|p| !p.buffer).map(|p| p.numel).sum()
    }

    pub fn num_buffers(&self) -> usize {
        self.params.iter().filter(|p| p.buffer).map(|p| p.numel).sum()
    }

    /// The block this layer belongs to: the architecture's own grouping where it states one,
    /// else `_blocks.3` for `_blocks.3._bn1`, else the layer itself.
    pub fn block(&self) -> &str {
        self.block.as_deref().unwrap_or_else(|| block_of(&self.name))
    }
}

fn block_of(name: &str) -> &str {
    // Keras names: `block_3_expand_BN` → `block_3`.
    if let Some(rest) = name.strip_prefix("block_") {
        if let Some((n, _)) = rest.split_once('_').filter(|(n, _)| n.parse::<usize>().is_ok()) {
            return &name[..("block_".len() + n.len())];
        }
    }
    // The prefix through the first numeric component: `_blocks.3._bn1` → `_blocks.3`.
    let mut end = 0;
    for part in name.split('.') {
        end += part.len();
        if part.parse::<usize>().is_ok() {
            return &name[..end];
        }
        end += 1;
    }
    name
}

/// Which reused layers stay fixed (`--freeze`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum FreezeSpec {
    /// Every trunk layer.
    All,
    /// Nothing: fine-tune everything.
    None,
    /// The stem and the first N numbered blocks.
    FirstBlocks(usize),
    /// Parameters whose checkpoint path matches the pattern.
    Regex(String),
    /// Every layer up to and including the named layer or block.
    Until(String),
}

impl FromStr for FreezeSpec {
    type Err = GraftError;

    fn from_str(s: &str) -> Result<Self> {
        let spec = match s {
            "all" => FreezeSpec::All,
            "none" => FreezeSpec::None,
            _ if s.starts_with("regex:") => {
                let pattern = &s["regex:".len()..];
                regex::Regex::new(pattern).map_err(|e| GraftError::setting("freeze", s, regex_reason(&e)))?;
                FreezeSpec::Regex(pattern.to_string())
            }
            _ if s.starts_with("until:") => FreezeSpec::Until(s["until:".len()..].to_string()),
            _ => match s.parse::<usize>() {
                Ok(n) => FreezeSpec::FirstBlocks(n),
                Err(_) => {
                    return Err(GraftError::setting(
                        "freeze",
                        s,
                        "expected all, none, N (first N blocks), regex:PATTERN or until:LAYER",
                    ))
                }
            },
        };
        Ok(spec)
    }
}

impl std::fmt::Display for FreezeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FreezeSpec::All => write!(f, "all"),
            FreezeSpec::None => write!(f, "none"),
            FreezeSpec::FirstBlocks(n) => write!(f, "{n}"),
            FreezeSpec::Regex(p) => write!(f, "regex:{p}"),
            FreezeSpec::Until(l) => write!(f, "until:{l}"),
        }
    }
}

impl From<FreezeSpec> for String {
    fn from(spec: FreezeSpec) -> String {
        spec.to_string()
    }
}

impl TryFrom<String> for FreezeSpec {
    type Error = GraftError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl FreezeSpec {
    /// The checkpoint paths of the frozen parameters (buffers included: a frozen BatchNorm's
    /// statistics stay fixed too). Head layers are never frozen.
    pub fn frozen_params(&self, rows: &[LayerRow]) -> Result<BTreeSet<String>> {
        let trunk: Vec<&LayerRow> = rows.iter().filter(|r| !r.is_head).collect();
        let all_of = |rows: &[&LayerRow]| -> BTreeSet<String> {
            rows.iter().flat_map(|r| r.params.iter().map(|p| p.path.clone())).collect()
        };
        match self {
            FreezeSpec::All => Ok(all_of(&trunk)),
            FreezeSpec::None => Ok(BTreeSet::new()),
            FreezeSpec::FirstBlocks(n) => {
                // Blocks in order of appearance; the stem (everything before the first numbered
                // block) comes with the first.
                let numbered = numbered_block_names(&trunk);
                if *n > numbered.len() {
                    return Err(GraftError::setting(
                        "freeze",
                        &n.to_string(),
                        format!("the model has only {} blocks", numbered.len()),
                    ));
                }
                if *n == 0 {
                    return Ok(BTreeSet::new());
                }
                let last = numbered[*n - 1];
                let end = trunk.iter().rposition(|r| r.block() == last).unwrap_or(0);
                Ok(all_of(&trunk[..=end]))
            }
            FreezeSpec::Until(layer) => {
                // A layer, or a block by its prefix: `layer3` (`layer3.1.bn2`), `block_5`
                // (`block_5_project_BN`).
                let end = trunk.iter().rposition(|r| r.name == *layer || r.name.starts_with(&format!("{layer}.")) || r.block() == layer);
                match end {
                    Some(end) => Ok(all_of(&trunk[..=end])),
                    None => Err(GraftError::setting(
                        "freeze",
                        &format!("until:{layer}"),
                        format!(
                            "no layer named `{layer}` (e.g. {})",
                            trunk.iter().step_by(7).take(4).map(|r| r.block()).collect::<Vec<_>>().join(", ")
                        ),
                    )),
                }
            }
            FreezeSpec::Regex(pattern) => {
                let re = regex::Regex::new(pattern)
                    .map_err(|e| GraftError::setting("freeze", &format!("regex:{pattern}"), regex_reason(&e)))?;
                let frozen: BTreeSet<String> = trunk
                    .iter()
                    .flat_map(|r| r.params.iter())
                    .filter(|p| re.is_match(&p.path))
                    .map(|p| p.path.clone())
                    .collect();
                if frozen.is_empty() {
                    return Err(GraftError::setting("freeze", &format!("regex:{pattern}"), "matches no parameter path"));
                }
                Ok(frozen)
            }
        }
    }
}

/// The numbered blocks of a layer table in order (`_blocks.3`, `layer2.1`, `block_5`).
fn numbered_block_names<'a>(rows: &[&'a LayerRow]) -> Vec<&'a str> {
    let mut numbered: Vec<&str> = Vec::new();
    for (row, block) in rows.iter().map(|r| (r, r.block())) {
        let is_numbered = row.block.is_some() || block.split('.').any(|s| s.parse::<usize>().is_ok()) || block.starts_with("block_");
        if is_numbered && numbered.last() != Some(&block) {
            numbered.push(block);
        }
    }
    numbered
}

/// How many numbered blocks the trunk part of a layer table has (what `--freeze N` counts).
pub fn numbered_blocks(rows: &[LayerRow]) -> usize {
    let trunk: Vec<&LayerRow> = rows.iter().filter(|r| !r.is_head).collect();
    numbered_block_names(&trunk).len()
}

/// The regex crate's messages span lines (pattern, caret, reason); keep the reason.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text.lines().last().unwrap_or("").trim().trim_start_matches("error: ");
    format!("bad regex: {reason}")
}

/// Totals of a layer table under a freeze spec.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub total_params: usize,
    pub trainable_params: usize,
    pub frozen_params: usize,
    /// BatchNorm running statistics (not parameters; never trained by gradients).
    pub buffers: usize,
}

pub fn summarize(rows: &[LayerRow], frozen: &BTreeSet<String>) -> Summary {
    let params = rows.iter().flat_map(|r| r.params.iter());
    let (mut total, mut trainable, mut buffers) = (0, 0, 0);
    for p in params {
        if p.buffer {
            buffers += p.numel;
        } else {
            total += p.numel;
            if !frozen.contains(&p.path) {
                trainable += p.numel;
            }
        }
    }
    Summary { total_params: total, trainable_params: trainable, frozen_params: total - trainable, buffers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_names() {
        assert_eq!(block_of("_blocks.3._bn1"), "_blocks.3");
        assert_eq!(block_of("_conv_stem"), "_conv_stem");
        assert_eq!(block_of("layer1.0.conv1"), "layer1.0");
        assert_eq!(block_of("features.3"), "features.3");
        // Keras names: `block_N_*` are blocks; the head convolution `Conv_1` is not.
        assert_eq!(block_of("block_12_expand_BN"), "block_12");
        assert_eq!(block_of("Conv_1_bn"), "Conv_1_bn");
        let rows = crate::zoo::mobilenetv2::MobileNetV2Config::keras(1.0, 160, 19, "dense").layer_rows();
        assert_eq!(numbered_blocks(&rows), 16);
        // `until:block_2` freezes through block_2's last layer, not block_20-something.
        let frozen = FreezeSpec::Until("block_2".into()).frozen_params(&rows).unwrap();
        assert!(frozen.contains("block_2_project_BN/moving_variance") && !frozen.contains("block_3_expand/kernel"));
    }

    #[test]
    fn spec_parsing() {
        assert_eq!("all".parse::<FreezeSpec>().unwrap(), FreezeSpec::All);
        assert_eq!("12".parse::<FreezeSpec>().unwrap(), FreezeSpec::FirstBlocks(12));
        assert_eq!("until:_blocks.4".parse::<FreezeSpec>().unwrap(), FreezeSpec::Until("_blocks.4".into()));
        assert!("regex:(".parse::<FreezeSpec>().is_err());
        assert!("sometimes".parse::<FreezeSpec>().is_err());
    }
}
