//! One predictor for every run: [`Predictor::load`] reads a run's [`RunManifest`] and rebuilds
//! its model (a zoo trunk and head, a head on the pulled sentence encoder, an adapted network,
//! a digit MLP, a word-encoder text classifier); `eval`, `predict` and exporters use it without
//! knowing the kind.

use std::path::{Path, PathBuf};

use burn::tensor::activation::softmax;
use burn::tensor::Device;

use crate::adapt::data::{DomainSpec, InputSpec};
use crate::adapt::train::{load_adapted, AdaptedModel};
use crate::adapt::losses::gather_rows;
use crate::data::folder::{decode_bytes_with, ImageBytes, ImageFolder, Sample, Skipped};
use crate::manifest::{InputKind, RunManifest};
use crate::report::gradcam::Cam;
use crate::report::Reporter;
use crate::text::features::EmbedStats;
use crate::train::run::{load_run_checked, predict_files, run_store, top1, Evaluation, RunInfo, RunModel};
use crate::train::text::{eval_dataset, load_text_run, TextRunModel};
use crate::transfer::autoencoder::{load_rows, Activation, DigitNet, MlpRun, GREY_INPUT, INPUT};
use crate::transfer::corrupt::{load_word_run, WordRunModel};
use crate::{GraftError, Result};

/// A run's model, ready to classify images or texts.
pub struct Predictor {
    run: PathBuf,
    home: PathBuf,
    kind: &'static str,
    describe: &'static str,
    input: InputKind,
    model: Model,
}

/// What each kind of run rebuilds.
enum Model {
    Image { info: RunInfo, model: Box<RunModel> },
    Text(Box<TextRunModel>),
    Adapt(Box<AdaptedModel>),
    Mlp { info: MlpRun, net: DigitNet },
    Words(Box<WordRunModel>),
}

/// An evaluation on a labelled set, with what `eval` shows beside it.
pub struct Evaluated {
    pub evaluation: Evaluation,
    /// Inputs that could not be read.
    pub skipped: Vec<Skipped>,
    /// Every scored input with its true class and probabilities, when the kind gives them
    /// (image, text and MLP runs; an adaptation run gives only its predictions).
    pub scored: Option<Scored>,
    /// Embeddings served from the cache vs computed (runs on texts).
    pub cache: Option<EmbedStats>,
    /// A multi-task run: every task's evaluation, in output order (`evaluation` and `scored`
    /// are the first task's). Empty otherwise.
    pub tasks: Vec<(String, Evaluation)>,
}

/// An image for people: what the model saw, and where it looked.
pub struct Explanation {
    /// The input as the model saw it, with the heatmap laid over it when there is one.
    pub picture: image::RgbImage,
    pub cam: Option<Cam>,
}

/// Side of the pictures of runs that do not crop to a model's input (digit MLPs, adaptation).
const THUMBNAIL: u32 = 112;

/// The scored inputs of an evaluation, row by row.
pub struct Scored {
    /// Each input for people: a file's path, or the start of a text, quoted.
    pub inputs: Vec<String>,
    pub truth: Vec<usize>,
    pub probs: Vec<Vec<f32>>,
}

impl Predictor {
    /// Loads the run `run` of any kind. `home` is graft's home (pulled weights, the feature
    /// cache); `weights` replaces the pulled trunk or encoder of an adaptation run. An unfinished
    /// image run is refused unless `allow_unfinished` (it then serves its latest checkpoint). A
    /// pretraining run is refused: it holds an encoder, not a classifier.
    pub fn load(run: &Path, home: &Path, weights: Option<&Path>, allow_unfinished: bool, reporter: &dyn Reporter, device: &Device) -> Result<Self> {
        let manifest = RunManifest::load(run)?;
        let (kind, describe, input) = (manifest.kind(), manifest.describe(), manifest.input());
        let model = match manifest {
            RunManifest::Image(_) => {
                let (info, model) = load_run_checked(run, allow_unfinished, device)?;
                Model::Image { info, model: Box::new(model) }
            }
            RunManifest::Text(_) => Model::Text(Box::new(load_text_run(run, home, reporter, device)?)),
            RunManifest::Adapt(_) => Model::Adapt(Box::new(load_adapted(run, home, weights, reporter, device)?)),
            RunManifest::Mlp(info) => {
                crate::fsutil::check_run_dir(run)?;
                let net = crate::train::checkpoint::load(DigitNet::init(&info.config.arch, info.classes.len(), device), &run.join("best.safetensors"))?;
                Model::Mlp { info, net }
            }
            RunManifest::TextPretrain(_) => {
                return Err(GraftError::Data {
                    path: run.to_path_buf(),
                    reason: "a corrupted-text pretraining run holds a word encoder, not a classifier: fine-tune it with `graft fit --init RUN --data LABELLED.csv --out NEW_RUN`".into(),
                })
            }
            RunManifest::Words(_) => Model::Words(Box::new(load_word_run(run, device)?)),
            RunManifest::TrunkPretrain(t) => {
                return Err(GraftError::Data {
                    path: run.to_path_buf(),
                    reason: format!(
                        "a trunk-pretraining run holds a tuned trunk, not a classifier: fit a head on it with `graft fit --model {} --weights {} --data LABELLED --out NEW_RUN`",
                        t.config.model,
                        run.join(crate::transfer::trunk::TRUNK_FILE).display()
                    ),
                })
            }
            RunManifest::Pretrain(_) => {
                return Err(GraftError::Data {
                    path: run.to_path_buf(),
                    reason: "a `graft pretrain` run holds an encoder, not a classifier: fine-tune it with `graft fit --init RUN --data LABELLED --out NEW_RUN` and use NEW_RUN".into(),
                })
            }
        };
        Ok(Self { run: run.to_path_buf(), home: home.to_path_buf(), kind, describe, input, model })
    }

    /// The run's `kind` as in its `model.json` (`image`, `text`, `adapt`, `mlp`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// What made the run, for people.
    pub fn describe(&self) -> &'static str {
        self.describe
    }

    /// Whether the model reads images or texts.
    pub fn input(&self) -> InputKind {
        self.input
    }

    /// The classes the model tells apart, in output order.
    pub fn classes(&self) -> &[String] {
        match &self.model {
            Model::Image { info, .. } => &info.classes,
            Model::Text(m) => &m.info.classes,
            Model::Adapt(m) => &m.info.classes,
            Model::Mlp { info, .. } => &info.classes,
            Model::Words(m) => &m.info.classes,
        }
    }

    /// A multi-task run's tasks (its outputs are their classes, task after task); empty for one task.
    pub fn tasks(&self) -> &[crate::train::text::TaskHead] {
        match &self.model {
            Model::Text(m) => &m.info.tasks,
            _ => &[],
        }
    }

    /// Class probabilities of image files, in batches; an unreadable file is `None` and listed.
    pub fn predict_images(&self, samples: &[Sample], batch: usize, reporter: &dyn Reporter, device: &Device) -> Result<(Vec<Option<Vec<f32>>>, Vec<Skipped>)> {
        match &self.model {
            Model::Image { info, model } => Ok(predict_files(model, &info.preprocess, samples, batch, device, reporter, None)),
            Model::Adapt(m) if self.input == InputKind::Images => m.predict_files(samples, device),
            Model::Mlp { info, net } => Ok(mlp_probabilities(net, info.config.activation, info.classes.len(), samples, batch, device)),
            _ => Err(self.not_its_input("images")),
        }
    }

    /// [`Self::predict_images`] for images held in memory (uploads): the same decoder, limits
    /// and preprocessing, `batch` images per forward pass; an undecodable image is `None` and
    /// listed under its name. Nothing is written to disk (a frozen-trunk run's feature cache is
    /// not consulted).
    pub fn predict_image_bytes(&self, images: &[ImageBytes], batch: usize, device: &Device) -> Result<(Vec<Option<Vec<f32>>>, Vec<Skipped>)> {
        let mut out = Vec::with_capacity(images.len());
        let mut skipped = Vec::new();
        for chunk in images.chunks(batch.max(1)) {
            let (rows, bad) = match &self.model {
                Model::Image { info, .. } => decode_bytes_with(chunk, |img| info.preprocess.apply(&img)),
                Model::Adapt(m) if self.input == InputKind::Images => decode_bytes_with(chunk, |img| m.info.input.rgb_row(&img)),
                Model::Mlp { .. } => decode_bytes_with(chunk, |img| GREY_INPUT.rgb_row(&img)),
                _ => return Err(self.not_its_input("images")),
            };
            skipped.extend(bad);
            let decoded: Vec<bool> = rows.iter().map(Option::is_some).collect();
            let good: Vec<Vec<f32>> = rows.into_iter().flatten().collect();
            let mut probs = Vec::new().into_iter();
            if !good.is_empty() {
                probs = self.probabilities_of_rows(good, device)?.into_iter();
            }
            out.extend(decoded.into_iter().map(|d| if d { probs.next() } else { None }));
        }
        Ok((out, skipped))
    }

    /// Class probabilities of decoded input rows, as the run's kind prepares an image.
    fn probabilities_of_rows(&self, rows: Vec<Vec<f32>>, device: &Device) -> Result<Vec<Vec<f32>>> {
        match &self.model {
            Model::Image { info, model } => Ok(model.probabilities(crate::data::image::batch(&rows, info.preprocess.size, device))),
            Model::Adapt(m) => m.probabilities_of_rows(rows, device),
            Model::Mlp { info, net } => {
                let order: Vec<usize> = (0..rows.len()).collect();
                let x = gather_rows(&rows.concat(), INPUT, &order, device);
                let p = softmax(net.forward_with(x, info.config.activation), 1).into_data().try_to_vec::<f32>();
                let p = p.map_err(|e| GraftError::Data { path: self.run.clone(), reason: format!("the MLP's probabilities: {e:?}") })?;
                Ok(p.chunks(info.classes.len().max(1)).map(|r| r.to_vec()).collect())
            }
            Model::Text(_) | Model::Words(_) => Err(self.not_its_input("images")),
        }
    }

    /// Class probabilities of texts, one row each (embeddings through the feature cache).
    pub fn predict_texts<S: AsRef<str>>(&self, texts: &[S], reporter: &dyn Reporter, device: &Device) -> Result<Vec<Vec<f32>>> {
        let mut stats = EmbedStats::default();
        match &self.model {
            Model::Text(m) => {
                let mut store = m.store(&self.home, reporter)?;
                m.probabilities(texts, Some(&mut store), reporter, &mut stats, device)
            }
            Model::Adapt(m) if self.input == InputKind::Texts => m.text_probabilities(texts, &self.home, reporter, &mut stats, device),
            Model::Words(m) => m.probabilities(texts, device),
            _ => Err(self.not_its_input("texts")),
        }
    }

    /// Scores the model on labelled data given as `--data`: a folder of class sub-folders
    /// (classes named as in training), for a text run a text dataset (`text,label` CSV …), for
    /// an adaptation run also a digit set (`mnist:test`) or `amazon:DOMAIN` read from `data_root`.
    /// With `tta` (image runs of `graft fit` only), each image's probabilities are the mean over
    /// the views of [`tta_views`](crate::train::run::tta_views).
    pub fn evaluate(&self, data: &Path, data_root: &Path, batch: usize, tta: bool, reporter: &dyn Reporter, device: &Device) -> Result<Evaluated> {
        let classes = self.classes();
        if tta && !matches!(self.model, Model::Image { .. }) {
            return Err(GraftError::setting("tta", "on", format!("test-time augmentation applies to image classifiers from `graft fit`, not to this run ({})", self.describe)));
        }
        match &self.model {
            Model::Image { info, model } if tta => {
                let folder = ImageFolder::scan_with_classes(data, classes)?;
                let (probs, skipped) = crate::train::run::predict_files_tta(model, &info.preprocess, &folder.samples, batch, device, reporter);
                score_files(classes, data, &folder.samples, probs, skipped)
            }
            Model::Image { info, model } => {
                let folder = ImageFolder::scan_with_classes(data, classes)?;
                // A frozen-trunk run's features may already be in the cache (and are kept there).
                let mut store = run_store(info, &self.home)?;
                let (probs, skipped) = predict_files(model, &info.preprocess, &folder.samples, batch, device, reporter, store.as_mut());
                score_files(classes, data, &folder.samples, probs, skipped)
            }
            Model::Mlp { info, net } => {
                let folder = ImageFolder::scan_with_classes(data, classes)?;
                let (probs, skipped) = mlp_probabilities(net, info.config.activation, classes.len(), &folder.samples, batch, device);
                score_files(classes, data, &folder.samples, probs, skipped)
            }
            Model::Text(m) if !m.info.tasks.is_empty() => {
                // A label column per task; each task's classes mapped to the run's.
                let names: Vec<&str> = m.info.tasks.iter().map(|t| t.name.as_str()).collect();
                let (texts, sets) = crate::text::dataset::read_csv_columns(data, &names)?;
                let texts = texts.to_vec()?;
                let mut store = m.store(&self.home, reporter)?;
                let mut stats = EmbedStats::default();
                let probs = m.probabilities(&texts, Some(&mut store), reporter, &mut stats, device)?;
                let mut tasks = Vec::new();
                let mut first = None;
                for ((task, range), (found, labels)) in m.info.tasks.iter().zip(crate::train::text::TaskHead::ranges(&m.info.tasks)).zip(sets) {
                    let relabel = crate::text::TextDataset { source: data.to_path_buf(), classes: found, texts: crate::text::dataset::Texts::Memory(Vec::new()), labels, skipped: Vec::new() };
                    let truth = relabel.with_classes(&task.classes)?.labels;
                    let task_probs: Vec<Vec<f32>> = probs.iter().map(|row| row[range.clone()].to_vec()).collect();
                    let evaluation = Evaluation::from_predictions(&task.classes, &truth, &top1(&task_probs));
                    first.get_or_insert((evaluation.clone(), truth, task_probs));
                    tasks.push((task.name.clone(), evaluation));
                }
                let (evaluation, truth, probs) = first.expect("a multi-task run has tasks");
                let inputs = texts.iter().map(|t| text_excerpt(t)).collect();
                Ok(Evaluated { evaluation, skipped: Vec::new(), scored: Some(Scored { inputs, truth, probs }), cache: Some(stats), tasks })
            }
            Model::Text(m) => {
                let set = eval_dataset(data, classes)?;
                let mut store = m.store(&self.home, reporter)?;
                let mut stats = EmbedStats::default();
                let texts = set.texts.to_vec()?;
                let probs = m.probabilities(&texts, Some(&mut store), reporter, &mut stats, device)?;
                let evaluation = Evaluation::from_predictions(classes, &set.labels, &top1(&probs));
                let inputs = texts.iter().map(|t| text_excerpt(t)).collect();
                Ok(Evaluated { evaluation, skipped: set.skipped, scored: Some(Scored { inputs, truth: set.labels, probs }), cache: Some(stats), tasks: Vec::new() })
            }
            Model::Words(m) => {
                let set = eval_dataset(data, classes)?;
                let texts = set.texts.to_vec()?;
                let probs = m.probabilities(&texts, device)?;
                let evaluation = Evaluation::from_predictions(classes, &set.labels, &top1(&probs));
                let inputs = texts.iter().map(|t| text_excerpt(t)).collect();
                Ok(Evaluated { evaluation, skipped: set.skipped, scored: Some(Scored { inputs, truth: set.labels, probs }), cache: None, tasks: Vec::new() })
            }
            Model::Adapt(m) => {
                let value = data.to_string_lossy();
                if matches!(m.info.input, InputSpec::Text { .. }) {
                    let (evaluation, skipped, stats) = m.evaluate_texts(&value, data_root, batch, &self.home, reporter, device)?;
                    return Ok(Evaluated { evaluation, skipped, scored: None, cache: Some(stats), tasks: Vec::new() });
                }
                let spec = DomainSpec::parse("--data", &value)?;
                let (evaluation, skipped) = m.evaluate_domain(&spec, "--data", data_root, batch, reporter, device)?;
                for s in &skipped {
                    reporter.message(&format!("skipped {}: {}", s.path.display(), s.reason));
                }
                Ok(Evaluated { evaluation, skipped, scored: None, cache: None, tasks: Vec::new() })
            }
        }
    }

    /// An image file as the model sees it (cropped and resized as its preprocessing does) with
    /// the Grad-CAM heatmap of `class` laid over it where the model has one (an image run with a
    /// neural head); other image runs give the picture alone, text runs refuse.
    pub fn explain_image(&self, path: &Path, class: usize, device: &Device) -> Result<Explanation> {
        let decoded = crate::data::image::decode(path)?;
        match &self.model {
            Model::Image { info, model } => {
                let seen = info.preprocess.crop_resize(&decoded);
                let input = crate::data::image::batch(&[info.preprocess.normalize(&seen)], info.preprocess.size, device);
                let cam = model.grad_cam(input, class, device);
                let picture = cam.as_ref().map(|c| c.overlay(&seen)).unwrap_or(seen);
                Ok(Explanation { picture, cam })
            }
            Model::Adapt(_) | Model::Mlp { .. } if self.input == InputKind::Images => {
                let side = decoded.width().min(decoded.height()).max(1);
                let square = image::imageops::crop_imm(&decoded, (decoded.width() - side) / 2, (decoded.height() - side) / 2, side, side).to_image();
                Ok(Explanation { picture: crate::data::image::resize_bilinear(&square, THUMBNAIL, THUMBNAIL), cam: None })
            }
            _ => Err(self.not_its_input("images")),
        }
    }

    /// The refusal of inputs (`given`: images or texts) of the other kind, naming the run.
    fn not_its_input(&self, given: &str) -> GraftError {
        let has = match self.input {
            InputKind::Images => "images",
            InputKind::Texts => "texts",
        };
        GraftError::Data { path: self.run.clone(), reason: format!("this run ({}) classifies {has}, not {given}", self.describe) }
    }
}

/// The start of a text, quoted, for lists of inputs.
pub fn text_excerpt(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    if short.len() < text.len() { format!("\"{short}…\"") } else { format!("\"{short}\"") }
}

/// An MLP run's class probabilities of image files (grey 28×28); unreadable files are `None`.
fn mlp_probabilities(net: &DigitNet, act: Activation, classes: usize, samples: &[Sample], batch: usize, device: &Device) -> (Vec<Option<Vec<f32>>>, Vec<Skipped>) {
    let (rows, kept, skipped) = load_rows(samples);
    let mut out = vec![None; samples.len()];
    let order: Vec<usize> = (0..kept.len()).collect();
    for chunk in order.chunks(batch.max(1)) {
        let p: Vec<f32> = softmax(net.forward_with(gather_rows(&rows, INPUT, chunk, device), act), 1).into_data().try_to_vec::<f32>().unwrap_or_default();
        for (&j, row) in chunk.iter().zip(p.chunks(classes.max(1))) {
            out[kept[j]] = Some(row.to_vec());
        }
    }
    (out, skipped)
}

/// The evaluation of image files from their probabilities (unreadable ones left out).
fn score_files(classes: &[String], data: &Path, samples: &[Sample], probs: Vec<Option<Vec<f32>>>, skipped: Vec<Skipped>) -> Result<Evaluated> {
    let mut scored = Scored { inputs: Vec::new(), truth: Vec::new(), probs: Vec::new() };
    for (p, s) in probs.into_iter().zip(samples) {
        if let Some(p) = p {
            scored.truth.push(s.label);
            scored.probs.push(p);
            scored.inputs.push(s.path.display().to_string());
        }
    }
    if scored.probs.is_empty() {
        return Err(GraftError::Data { path: data.to_path_buf(), reason: "no readable images".into() });
    }
    let evaluation = Evaluation::from_predictions(classes, &scored.truth, &top1(&scored.probs));
    Ok(Evaluated { evaluation, skipped, scored: Some(scored), cache: None, tasks: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_and_quoted() {
        assert_eq!(text_excerpt("short"), "\"short\"");
        let long = "é".repeat(70);
        assert_eq!(text_excerpt(&long), format!("\"{}…\"", "é".repeat(60)));
    }
}
