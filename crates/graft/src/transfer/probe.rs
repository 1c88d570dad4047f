//! `graft probe`: how well does each depth of a pretrained trunk separate *your* classes?
//! A logistic-regression probe on the pooled activations after every stage (Yosinski et al.,
//! "How transferable are features in deep neural networks?", answered per dataset): early
//! stages are generic, late ones ImageNet-specific, and the best cut is where they meet.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::Serialize;

use super::stages::stage_features;
use crate::classic::{Classic, ClassicKind, Penalty};
use crate::data::folder::{stratified_split, ImageFolder, Sample, Skipped};
use crate::report::plot::{line_plot, Series};
use crate::report::Reporter;
use crate::train::run::top1;
use crate::zoo::Pretrained;
use crate::{GraftError, Result};

/// One probed layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerProbe {
    /// The layer whose output was probed, as the architecture names it (`_blocks.N`,
    /// `layer3`, `features.14`, `block_12_add`; see `Backbone::stage_name`).
    pub name: String,
    /// Stage index: 0 = stem … the last stage (the head convolution where there is one).
    pub stage: usize,
    /// Width of the pooled activations (channels).
    pub dim: usize,
    /// Validation accuracy of the logistic probe.
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeSummary {
    pub model: String,
    pub layers: Vec<LayerProbe>,
    /// Index into `layers` of the recommended cut: best accuracy, the shallower on a tie.
    pub best: usize,
    pub n_train: usize,
    pub n_val: usize,
    pub classes: Vec<String>,
    /// Images that went through the trunk this time (0 on a cached rerun).
    pub trunk_images: usize,
    pub skipped: Vec<Skipped>,
}

/// Where the probe's validation data comes from.
#[derive(Debug, Clone)]
pub enum Validation {
    /// A folder with the same class names.
    Folder(PathBuf),
    /// A stratified, seeded fraction of the training folder.
    Split { fraction: f64, seed: u64 },
}

/// Probes every stage of `model` on `data`, scored on `validation`.
pub fn probe(model: &Pretrained, data: &Path, validation: &Validation, home: &Path, batch: usize, device: &Device, reporter: &dyn Reporter) -> Result<ProbeSummary> {
    let folder = ImageFolder::scan(data)?;
    let (train, val): (Vec<Sample>, Vec<Sample>) = match validation {
        Validation::Folder(dir) => (folder.samples.clone(), ImageFolder::scan_with_classes(dir, &folder.classes)?.samples),
        Validation::Split { fraction, seed } => {
            let (t, v) = stratified_split(&folder.samples, *fraction, *seed)?;
            (t.iter().map(|&i| folder.samples[i].clone()).collect(), v.iter().map(|&i| folder.samples[i].clone()).collect())
        }
    };
    if val.is_empty() {
        return Err(GraftError::setting("val_split", "", "no validation images: give --val DIR or a larger --val-split"));
    }
    let stages: Vec<usize> = (0..model.config.num_stages()).collect();
    let ft = stage_features(model, &train, &stages, home, batch, device, reporter)?;
    let fv = stage_features(model, &val, &stages, home, batch, device, reporter)?;
    let train_labels: Vec<usize> = ft.kept.iter().map(|&i| train[i].label).collect();
    let val_labels: Vec<usize> = fv.kept.iter().map(|&i| val[i].label).collect();
    if train_labels.is_empty() || val_labels.is_empty() {
        return Err(GraftError::Data { path: data.into(), reason: "no readable images to probe".into() });
    }
    let classes = folder.classes.len();
    let mut layers = Vec::with_capacity(stages.len());
    reporter.start("fitting logistic probes", Some(stages.len() as u64));
    for (k, &stage) in stages.iter().enumerate() {
        let (dim, ref rows) = ft.stages[k];
        let head = Classic::fit(ClassicKind::Logistic(Penalty::C(1.0)), rows, &train_labels, dim, classes, 0)?;
        let predicted = top1(&head.predict_proba(&fv.stages[k].1));
        let correct = predicted.iter().zip(&val_labels).filter(|(p, t)| p == t).count();
        layers.push(LayerProbe { name: model.config.stage_name(stage), stage, dim, accuracy: correct as f64 / val_labels.len() as f64 });
        reporter.progress(k as u64 + 1);
    }
    reporter.finish();
    let best = best_layer(&layers);
    let mut skipped = ft.skipped;
    skipped.extend(fv.skipped);
    Ok(ProbeSummary {
        model: model.spec.id.into(),
        layers,
        best,
        n_train: train_labels.len(),
        n_val: val_labels.len(),
        classes: folder.classes,
        trunk_images: ft.computed + fv.computed,
        skipped,
    })
}

/// The best accuracy; on a tie the shallower layer (fewer stages to run, more general).
pub fn best_layer(layers: &[LayerProbe]) -> usize {
    let mut best = 0;
    for (i, l) in layers.iter().enumerate() {
        if l.accuracy > layers[best].accuracy {
            best = i;
        }
    }
    best
}

/// Accuracy against depth (stage index), as a PNG.
pub fn plot(summary: &ProbeSummary, path: &Path) -> Result<()> {
    let points = summary.layers.iter().map(|l| (l.stage as f64, l.accuracy)).collect();
    let title = format!("{}: linear probe accuracy", summary.model);
    let (first, last) = (summary.layers.first(), summary.layers.last());
    let x_label = match (first, last) {
        (Some(f), Some(l)) => format!("stage (0 {} … {} {})", f.name, l.stage, l.name),
        _ => "stage".to_string(),
    };
    line_plot(path, &title, &x_label, &[Series { name: "probe accuracy".into(), points }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(stage: usize, accuracy: f64) -> LayerProbe {
        LayerProbe { name: format!("s{stage}"), stage, dim: 1, accuracy }
    }

    #[test]
    fn ties_go_to_the_shallower_layer() {
        assert_eq!(best_layer(&[layer(0, 0.5), layer(1, 0.8), layer(2, 0.8), layer(3, 0.7)]), 1);
        assert_eq!(best_layer(&[layer(0, 0.9), layer(1, 0.8)]), 0);
        assert_eq!(best_layer(&[layer(0, 0.1), layer(1, 0.2), layer(2, 0.3)]), 2);
    }
}
