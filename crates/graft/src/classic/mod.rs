//! Classic classifiers on stored features: softmax regression, linear SVM, k-NN and nearest
//! class mean. They train in milliseconds on a few thousand feature vectors, and are often as
//! good as a neural head when data is scarce.

mod lbfgs;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{GraftError, Result};

/// The L2 strength of the logistic head: C in the penalty ½‖W‖²/C.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Penalty {
    /// C picked among [`C_GRID`] by stratified k-fold cross-validation on the training rows
    /// (as scikit-learn's `LogisticRegressionCV`), the folds drawn from the fit's seed.
    Auto,
    /// This C (finite, > 0).
    C(f64),
}

// C is checked finite and positive where it is parsed, so equality is reflexive.
impl Eq for Penalty {}

/// The values of C that cross-validation chooses among (half-decades, weak to strong data fit).
pub const C_GRID: [f64; 13] = [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0];

/// Folds of the cross-validation that picks C.
pub const CV_FOLDS: usize = 5;

/// Which classic classifier, with its setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClassicKind {
    /// Multinomial logistic regression on standardised features, L2 penalty ½‖W‖²/C
    /// (scikit-learn's objective).
    Logistic(Penalty),
    /// One-vs-rest linear SVM, hinge loss, C = 1 (dual coordinate descent, as LIBLINEAR).
    Svm,
    /// k nearest neighbours by cosine similarity, majority vote.
    Knn(usize),
    /// Nearest class mean by cosine similarity (few-shot prototypes).
    Prototype,
}

/// A trained classic classifier.
#[derive(Debug, Clone)]
pub struct Classic {
    pub kind: ClassicKind,
    pub classes: usize,
    pub dim: usize,
    /// Standardisation of the inputs (logistic, SVM): x' = (x − mean) / std.
    mean: Vec<f32>,
    std: Vec<f32>,
    /// [classes × (dim + 1)] weights with the bias last (logistic, SVM); class means
    /// (prototype); stored training rows (k-NN).
    params: Vec<f32>,
    /// Training labels (k-NN).
    labels: Vec<usize>,
    /// How the logistic head's C was chosen, when `Penalty::Auto` asked for it (not saved).
    pub cross_validation: Option<CrossValidation>,
}

/// The cross-validation that picked C: pooled held-out scores of every C in [`C_GRID`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossValidation {
    pub folds: usize,
    pub scores: Vec<CvScore>,
    /// The C chosen: the best accuracy, ties to the lower log-loss.
    pub c: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CvScore {
    pub c: f64,
    pub accuracy: f64,
    pub log_loss: f64,
}

fn l2_normalise(row: &[f32]) -> Vec<f32> {
    let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    row.iter().map(|v| v / n).collect()
}

fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

impl Classic {
    /// Trains on `rows` (n × dim, row-major) with labels in 0..classes; `seed` draws the
    /// cross-validation folds of `Logistic(Penalty::Auto)`. A logistic head comes back as
    /// `Logistic(Penalty::C(c))` with the C it used.
    pub fn fit(kind: ClassicKind, rows: &[f32], labels: &[usize], dim: usize, classes: usize, seed: u64) -> Result<Self> {
        Self::fit_reporting(kind, rows, labels, dim, classes, seed, &crate::report::Silent)
    }

    /// [`fit`](Self::fit), reporting the cross-validation of `Logistic(Penalty::Auto)` (a
    /// minute or two on thousands of rows) to `reporter` as one task of folds × C values.
    pub fn fit_reporting(kind: ClassicKind, rows: &[f32], labels: &[usize], dim: usize, classes: usize, seed: u64, reporter: &dyn crate::report::Reporter) -> Result<Self> {
        let n = labels.len();
        if n == 0 || dim == 0 || rows.len() != n * dim {
            return Err(GraftError::setting("head", &format!("{kind:?}"), format!("needs training features: {n} rows of width {dim}")));
        }
        if let ClassicKind::Knn(0) = kind {
            return Err(GraftError::setting("head", "knn:0", "k must be at least 1"));
        }
        if let ClassicKind::Logistic(Penalty::C(c)) = kind {
            if !(c.is_finite() && c > 0.0) {
                return Err(GraftError::setting("head", &format!("logistic:c={c}"), "C must be a finite number above 0"));
            }
        }
        let (mut mean, mut std) = (vec![0f32; dim], vec![1f32; dim]);
        let mut model = Classic { kind: kind.clone(), classes, dim, mean: vec![], std: vec![], params: vec![], labels: vec![], cross_validation: None };
        match kind {
            ClassicKind::Logistic(_) | ClassicKind::Svm => {
                for r in rows.chunks(dim) {
                    r.iter().zip(mean.iter_mut()).for_each(|(v, m)| *m += v / n as f32);
                }
                let mut var = vec![0f32; dim];
                for r in rows.chunks(dim) {
                    r.iter().zip(&mean).zip(var.iter_mut()).for_each(|((v, m), s)| *s += (v - m) * (v - m) / n as f32);
                }
                std = var.iter().map(|v| v.sqrt().max(1e-6)).collect();
                let x: Vec<f64> = rows
                    .chunks(dim)
                    .flat_map(|r| r.iter().zip(&mean).zip(&std).map(|((v, m), s)| ((v - m) / s) as f64).collect::<Vec<_>>())
                    .collect();
                model.params = match kind {
                    ClassicKind::Logistic(penalty) => {
                        let c = match penalty {
                            Penalty::C(c) => c,
                            Penalty::Auto => {
                                let total = (CV_FOLDS * C_GRID.len()) as u64;
                                reporter.start(&format!("logistic head: choosing C by {CV_FOLDS}-fold cross-validation ({} values)", C_GRID.len()), Some(total));
                                let done = std::sync::atomic::AtomicU64::new(0);
                                let step = || reporter.progress(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                                model.cross_validation = cross_validate_reporting(&x, labels, dim, classes, seed, &step);
                                reporter.finish();
                                // Too few rows to cross-validate: scikit-learn's default C.
                                model.cross_validation.as_ref().map_or(1.0, |cv| cv.c)
                            }
                        };
                        model.kind = ClassicKind::Logistic(Penalty::C(c));
                        fit_logistic(&x, labels, dim, classes, c, None).iter().map(|&v| v as f32).collect()
                    }
                    _ => fit_svm(&x, labels, dim, classes, 1.0),
                };
            }
            ClassicKind::Prototype => {
                let mut sums = vec![0f32; classes * dim];
                let mut counts = vec![0usize; classes];
                for (r, &l) in rows.chunks(dim).zip(labels) {
                    let r = l2_normalise(r);
                    sums[l * dim..(l + 1) * dim].iter_mut().zip(&r).for_each(|(s, v)| *s += v);
                    counts[l] += 1;
                }
                model.params = sums
                    .chunks(dim)
                    .zip(&counts)
                    .flat_map(|(s, &c)| if c == 0 { vec![0.0; dim] } else { l2_normalise(&s.iter().map(|v| v / c as f32).collect::<Vec<_>>()) })
                    .collect();
            }
            ClassicKind::Knn(_) => {
                model.params = rows.chunks(dim).flat_map(l2_normalise).collect();
                model.labels = labels.to_vec();
            }
        }
        model.mean = mean;
        model.std = std;
        Ok(model)
    }

    /// Says which C a logistic head used, and how cross-validation scored the grid.
    pub fn report_penalty(&self, reporter: &dyn crate::report::Reporter) {
        let ClassicKind::Logistic(Penalty::C(c)) = self.kind else { return };
        match &self.cross_validation {
            Some(cv) => {
                let grid: Vec<String> = cv.scores.iter().map(|s| format!("{}: {:.4}", s.c, s.accuracy)).collect();
                reporter.message(&format!("logistic head: C = {c}, chosen by {}-fold cross-validation on the training split (accuracy per C: {})", cv.folds, grid.join(", ")));
            }
            None => reporter.message(&format!("logistic head: C = {c}")),
        }
    }

    /// Class probabilities (or, for SVM and prototypes, a softmax of their scores) per row.
    pub fn predict_proba(&self, rows: &[f32]) -> Vec<Vec<f32>> {
        rows.chunks(self.dim).map(|r| self.proba_one(r)).collect()
    }

    /// The stored parameters, for exporters: the inputs' mean and std (logistic, SVM), and
    /// `params` (`[classes × (dim + 1)]` weights with the bias last for logistic and SVM, the
    /// `[classes × dim]` class means for prototypes, the training rows for k-NN).
    pub fn parts(&self) -> (&[f32], &[f32], &[f32]) {
        (&self.mean, &self.std, &self.params)
    }

    /// The class of each stored training row (k-NN), for exporters.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    fn proba_one(&self, row: &[f32]) -> Vec<f32> {
        let (d, c) = (self.dim, self.classes);
        match self.kind {
            ClassicKind::Logistic(_) | ClassicKind::Svm => {
                let x: Vec<f32> = row.iter().zip(&self.mean).zip(&self.std).map(|((v, m), s)| (v - m) / s).collect();
                let scores: Vec<f32> = (0..c)
                    .map(|k| {
                        let w = &self.params[k * (d + 1)..(k + 1) * (d + 1)];
                        w[..d].iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() + w[d]
                    })
                    .collect();
                softmax(&scores)
            }
            ClassicKind::Prototype => {
                let x = l2_normalise(row);
                // Cosine similarity, sharpened so that probabilities are not all ~1/C.
                let scores: Vec<f32> = self.params.chunks(d).map(|p| 10.0 * p.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>()).collect();
                softmax(&scores)
            }
            ClassicKind::Knn(k) => {
                let x = l2_normalise(row);
                let mut sims: Vec<(f32, usize)> =
                    self.params.chunks(d).zip(&self.labels).map(|(p, &l)| (p.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>(), l)).collect();
                sims.sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut votes = vec![0f32; c];
                for (rank, (sim, l)) in sims.iter().take(k).enumerate() {
                    // One vote each; a tiny similarity-weighted share breaks ties toward the nearest.
                    votes[*l] += 1.0 + 1e-3 * sim / (rank + 1) as f32;
                }
                let total: f32 = votes.iter().sum();
                votes.iter().map(|v| v / total).collect()
            }
        }
    }

    /// Saves as safetensors (`kind`, `classes`, `dim` in the metadata), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut dict = graft_weights::StateDict::default();
        let tensor = |shape: Vec<usize>, data: Vec<f32>| graft_weights::Tensor { shape, dtype: graft_weights::DType::F32, data };
        dict.tensors.insert("mean".into(), tensor(vec![self.dim], self.mean.clone()));
        dict.tensors.insert("std".into(), tensor(vec![self.dim], self.std.clone()));
        let rows = if self.params.is_empty() { 0 } else { self.params.len() / self.params_width() };
        dict.tensors.insert("params".into(), tensor(vec![rows, self.params_width()], self.params.clone()));
        dict.tensors.insert("labels".into(), tensor(vec![self.labels.len()], self.labels.iter().map(|&l| l as f32).collect()));
        let meta: BTreeMap<String, String> = [
            ("graft.classic".to_string(), serde_json::to_string(&self.kind).expect("kind serializes")),
            ("graft.classes".to_string(), self.classes.to_string()),
            ("graft.dim".to_string(), self.dim.to_string()),
        ]
        .into();
        dict.metadata = meta;
        graft_weights::save_safetensors(path, &dict)?;
        Ok(())
    }

    fn params_width(&self) -> usize {
        match self.kind {
            ClassicKind::Logistic(_) | ClassicKind::Svm => self.dim + 1,
            _ => self.dim,
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let dict = graft_weights::load(path)?;
        let bad = |why: &str| GraftError::Data { path: path.to_path_buf(), reason: format!("not a graft classic head: {why}") };
        let meta = |k: &str| dict.metadata.get(k).ok_or_else(|| bad(&format!("no {k}")));
        let kind = meta("graft.classic")?;
        // Heads saved before C was a setting say "Logistic": they were fitted with C = 1.
        let kind: ClassicKind = if kind == "\"Logistic\"" { ClassicKind::Logistic(Penalty::C(1.0)) } else { serde_json::from_str(kind).map_err(|_| bad("bad kind"))? };
        let classes: usize = meta("graft.classes")?.parse().map_err(|_| bad("bad classes"))?;
        let dim: usize = meta("graft.dim")?.parse().map_err(|_| bad("bad dim"))?;
        let get = |k: &str| dict.tensors.get(k).map(|t| t.data.clone()).ok_or_else(|| bad(&format!("no tensor {k}")));
        let model = Classic {
            kind,
            classes,
            dim,
            mean: get("mean")?,
            std: get("std")?,
            params: get("params")?,
            labels: get("labels")?.iter().map(|&l| l as usize).collect(),
            cross_validation: None,
        };
        let expected = match model.kind {
            ClassicKind::Logistic(_) | ClassicKind::Svm => classes * (dim + 1),
            ClassicKind::Prototype => classes * dim,
            ClassicKind::Knn(_) => model.labels.len() * dim,
        };
        if model.params.len() != expected || model.mean.len() != dim || model.std.len() != dim || model.labels.iter().any(|&l| l >= classes) {
            return Err(bad("tensor sizes disagree with the metadata"));
        }
        Ok(model)
    }
}

/// Class scores of row `xi` under weights `w` ([c × (d + 1)], bias last).
fn linear_scores(w: &[f64], xi: &[f64], d: usize, scores: &mut [f64]) {
    for (k, s) in scores.iter_mut().enumerate() {
        let wk = &w[k * (d + 1)..(k + 1) * (d + 1)];
        *s = wk[..d].iter().zip(xi).map(|(a, b)| a * b).sum::<f64>() + wk[d];
    }
}

/// Stratified folds: each class's rows shuffled (seeded) and dealt round the folds in turn.
fn stratified_folds(labels: &[usize], classes: usize, folds: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut fold_of = vec![0; labels.len()];
    let mut next = 0;
    for class in 0..classes {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ class as u64));
        for i in rows {
            fold_of[i] = next % folds;
            next += 1;
        }
    }
    fold_of
}

/// Picks C for the logistic head by stratified [`CV_FOLDS`]-fold cross-validation on the
/// (standardised) training rows; `None` when a fold would be too small to score.
#[cfg(test)]
pub(crate) fn cross_validate(x: &[f64], labels: &[usize], d: usize, classes: usize, seed: u64) -> Option<CrossValidation> {
    cross_validate_reporting(x, labels, d, classes, seed, &|| {})
}

/// [`cross_validate`], calling `step` once per (fold, C) fit, from the folds' threads.
fn cross_validate_reporting(x: &[f64], labels: &[usize], d: usize, classes: usize, seed: u64, step: &(dyn Fn() + Sync)) -> Option<CrossValidation> {
    use rayon::prelude::*;
    let n = labels.len();
    if n < 4 * CV_FOLDS {
        return None;
    }
    let fold_of = stratified_folds(labels, classes, CV_FOLDS, seed);
    // Per fold: (correct, summed log-loss) for every C, walking the grid from strong to weak
    // penalty with each solution warm-starting the next (as scikit-learn's path does).
    let per_fold: Vec<Vec<(usize, f64)>> = (0..CV_FOLDS)
        .into_par_iter()
        .map(|fold| {
            let (mut xt, mut yt, mut held) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..n {
                if fold_of[i] == fold {
                    held.push(i);
                } else {
                    xt.extend_from_slice(&x[i * d..(i + 1) * d]);
                    yt.push(labels[i]);
                }
            }
            let mut w = None;
            let mut scores = vec![0.0; classes];
            C_GRID
                .iter()
                .map(|&c| {
                    let fitted = fit_logistic(&xt, &yt, d, classes, c, w.take());
                    let (mut correct, mut loss) = (0, 0.0);
                    for &i in &held {
                        linear_scores(&fitted, &x[i * d..(i + 1) * d], d, &mut scores);
                        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let log_sum = scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln() + max;
                        loss += log_sum - scores[labels[i]];
                        // Ties go to the lower class, as argmax elsewhere in graft.
                        let best = scores.iter().enumerate().fold(0, |b, (k, &s)| if s > scores[b] { k } else { b });
                        correct += usize::from(best == labels[i]);
                    }
                    w = Some(fitted);
                    step();
                    (correct, loss)
                })
                .collect()
        })
        .collect();
    let scores: Vec<CvScore> = C_GRID
        .iter()
        .enumerate()
        .map(|(j, &c)| CvScore {
            c,
            accuracy: per_fold.iter().map(|f| f[j].0).sum::<usize>() as f64 / n as f64,
            log_loss: per_fold.iter().map(|f| f[j].1).sum::<f64>() / n as f64,
        })
        .collect();
    let best = scores
        .iter()
        .copied()
        .reduce(|best, s| if s.accuracy > best.accuracy || (s.accuracy == best.accuracy && s.log_loss < best.log_loss) { s } else { best })
        .expect("the grid is not empty");
    Some(CrossValidation { folds: CV_FOLDS, scores, c: best.c })
}

/// Softmax regression minimising Σ cross-entropy + ½‖W‖²/C (bias not penalised) with L-BFGS,
/// from `init` when given (a warm start) or from zero.
pub(crate) fn fit_logistic(x: &[f64], labels: &[usize], d: usize, c: usize, big_c: f64, init: Option<Vec<f64>>) -> Vec<f64> {
    let width = d + 1;
    let objective = |w: &[f64], grad: &mut [f64]| -> f64 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        let mut scores = vec![0.0; c];
        for (i, &y) in labels.iter().enumerate() {
            let xi = &x[i * d..(i + 1) * d];
            linear_scores(w, xi, d, &mut scores);
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            loss += sum.ln() + max - scores[y];
            for k in 0..c {
                let p = (scores[k] - max).exp() / sum - if k == y { 1.0 } else { 0.0 };
                let gk = &mut grad[k * width..(k + 1) * width];
                gk[..d].iter_mut().zip(xi).for_each(|(g, v)| *g += p * v);
                gk[d] += p;
            }
        }
        for k in 0..c {
            for j in 0..d {
                let v = w[k * width + j];
                loss += 0.5 * v * v / big_c;
                grad[k * width + j] += v / big_c;
            }
        }
        loss
    };
    lbfgs::minimise(init.unwrap_or_else(|| vec![0.0; c * width]), objective, 500, 1e-6)
}

/// One-vs-rest L1-loss (hinge) SVM by dual coordinate descent (Hsieh et al. 2008, LIBLINEAR),
/// with the bias as an extra constant feature.
fn fit_svm(x: &[f64], labels: &[usize], d: usize, c: usize, big_c: f64) -> Vec<f32> {
    let n = labels.len();
    let width = d + 1;
    let sq_norm: Vec<f64> = (0..n).map(|i| x[i * d..(i + 1) * d].iter().map(|v| v * v).sum::<f64>() + 1.0).collect();
    let mut out = vec![0f32; c * width];
    for k in 0..c {
        let y: Vec<f64> = labels.iter().map(|&l| if l == k { 1.0 } else { -1.0 }).collect();
        let mut alpha = vec![0.0; n];
        let mut w = vec![0.0; width];
        let mut order: Vec<usize> = (0..n).collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ k as u64;
        for _epoch in 0..1000 {
            // Random permutation each pass (deterministic xorshift).
            for i in (1..n).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                order.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut max_violation: f64 = 0.0;
            for &i in &order {
                let xi = &x[i * d..(i + 1) * d];
                let wx = w[..d].iter().zip(xi).map(|(a, b)| a * b).sum::<f64>() + w[d];
                let g = y[i] * wx - 1.0;
                let pg = if alpha[i] == 0.0 { g.min(0.0) } else if alpha[i] == big_c { g.max(0.0) } else { g };
                max_violation = max_violation.max(pg.abs());
                if pg.abs() > 1e-12 {
                    let old = alpha[i];
                    alpha[i] = (old - g / sq_norm[i]).clamp(0.0, big_c);
                    let delta = (alpha[i] - old) * y[i];
                    w[..d].iter_mut().zip(xi).for_each(|(wj, v)| *wj += delta * v);
                    w[d] += delta;
                }
            }
            if max_violation < 1e-3 {
                break;
            }
        }
        out[k * width..(k + 1) * width].iter_mut().zip(&w).for_each(|(o, v)| *o = *v as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three Gaussian blobs in 5-d, seeded.
    fn blobs(n_per: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut s = seed;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let centres = [[3.0, 0.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 3.0, 1.0, 0.0]];
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for (l, c) in centres.iter().enumerate() {
            for _ in 0..n_per {
                rows.extend(c.iter().map(|v| v + 1.5 * rnd()));
                labels.push(l);
            }
        }
        (rows, labels)
    }

    fn accuracy(m: &Classic, rows: &[f32], labels: &[usize]) -> f64 {
        let p = m.predict_proba(rows);
        p.iter().zip(labels).filter(|(p, &l)| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 == l).count() as f64 / labels.len() as f64
    }

    #[test]
    fn every_kind_separates_blobs_and_survives_a_save() {
        let (train, tl) = blobs(30, 1);
        let (test, sl) = blobs(30, 2);
        let dir = std::env::temp_dir().join(format!("graft-classic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for kind in [ClassicKind::Logistic(Penalty::Auto), ClassicKind::Logistic(Penalty::C(1.0)), ClassicKind::Svm, ClassicKind::Knn(5), ClassicKind::Prototype] {
            let m = Classic::fit(kind.clone(), &train, &tl, 5, 3, 0).unwrap();
            let acc = accuracy(&m, &test, &sl);
            assert!(acc > 0.9, "{kind:?}: accuracy {acc}");
            let path = dir.join("h.safetensors");
            m.save(&path).unwrap();
            let back = Classic::load(&path).unwrap();
            assert_eq!(back.predict_proba(&test), m.predict_proba(&test), "{kind:?} round trip");
        }
    }

    #[test]
    fn logistic_reaches_the_optimum() {
        // At the optimum of Σ CE + ½‖W‖²/C the gradient vanishes: check it numerically.
        let (train, tl) = blobs(20, 3);
        let x: Vec<f64> = train.iter().map(|&v| v as f64).collect();
        let w: Vec<f32> = fit_logistic(&x, &tl, 5, 3, 1.0, None).iter().map(|&v| v as f32).collect();
        let m = Classic { kind: ClassicKind::Logistic(Penalty::C(1.0)), classes: 3, dim: 5, mean: vec![0.0; 5], std: vec![1.0; 5], params: w.clone(), labels: vec![], cross_validation: None };
        assert!(accuracy(&m, &train, &tl) > 0.9);
        let eps = 1e-3f64;
        let f = |w: &[f64]| -> f64 {
            let mut g = vec![0.0; w.len()];
            let obj = |w: &[f64], g: &mut [f64]| {
                let _ = g;
                let mut loss = 0.0;
                for (i, &y) in tl.iter().enumerate() {
                    let s: Vec<f64> = (0..3).map(|k| (0..5).map(|j| w[k * 6 + j] * x[i * 5 + j]).sum::<f64>() + w[k * 6 + 5]).collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    loss += s.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max - s[y];
                }
                loss + (0..3).flat_map(|k| (0..5).map(move |j| (k, j))).map(|(k, j)| 0.5 * w[k * 6 + j] * w[k * 6 + j]).sum::<f64>()
            };
            obj(w, &mut g)
        };
        let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        for j in [0, 4, 5, 11, 17] {
            let (mut a, mut b) = (w64.clone(), w64.clone());
            a[j] += eps;
            b[j] -= eps;
            let g = (f(&a) - f(&b)) / (2.0 * eps);
            assert!(g.abs() < 1e-2, "gradient component {j} is {g} at the returned optimum");
        }
    }

    /// Two classes in 8-d: `signal` scales the class separation along the first axis; labels
    /// are drawn independently of the features when `signal` is 0.
    fn two_classes(n: usize, signal: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut s = seed;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for i in 0..n {
            let label = i % 2;
            let centre = if label == 0 { -signal } else { signal };
            rows.push(centre + rnd());
            rows.extend((1..8).map(|_| rnd()));
            labels.push(label);
        }
        (rows, labels)
    }

    fn cv_of(rows: &[f32], labels: &[usize], seed: u64) -> CrossValidation {
        let m = Classic::fit(ClassicKind::Logistic(Penalty::Auto), rows, labels, 8, 2, seed).unwrap();
        let cv = m.cross_validation.clone().expect("enough rows to cross-validate");
        assert_eq!(m.kind, ClassicKind::Logistic(Penalty::C(cv.c)), "the head records the C it used");
        cv
    }

    #[test]
    fn cross_validation_penalises_noise_and_not_signal() {
        // Labels unrelated to the features: no C predicts better than chance, and the strongest
        // penalty (probabilities nearest ½) has the lowest held-out log-loss.
        let (noise, noise_labels) = two_classes(60, 0.0, 4);
        let noisy = cv_of(&noise, &noise_labels, 0);
        // Separable classes: every C is right everywhere; the weakest penalty is the most confident.
        let (clean, clean_labels) = two_classes(60, 3.0, 5);
        let separable = cv_of(&clean, &clean_labels, 0);
        assert!(separable.scores.iter().all(|s| s.accuracy == 1.0), "{separable:?}");
        assert!(noisy.c < 0.01 && separable.c > 1.0, "noise picked C = {}, signal C = {}", noisy.c, separable.c);
        assert_eq!(noisy.scores.len(), C_GRID.len());
        // The choice is the best accuracy among the grid.
        let best = noisy.scores.iter().map(|s| s.accuracy).fold(0.0, f64::max);
        assert_eq!(noisy.scores.iter().find(|s| s.c == noisy.c).unwrap().accuracy, best);
    }

    /// The cross-validation reports one task, a step per (fold, C) fit, up to folds × C values.
    #[test]
    fn cross_validation_reports_its_progress() {
        use std::sync::Mutex;
        #[derive(Default)]
        struct Log(Mutex<(Vec<(String, Option<u64>)>, u64, usize)>);
        impl crate::report::Reporter for Log {
            fn message(&self, _: &str) {}
            fn start(&self, task: &str, total: Option<u64>) {
                self.0.lock().unwrap().0.push((task.to_string(), total));
            }
            fn progress(&self, done: u64) {
                let mut log = self.0.lock().unwrap();
                log.1 = log.1.max(done);
            }
            fn finish(&self) {
                self.0.lock().unwrap().2 += 1;
            }
        }
        let (rows, labels) = two_classes(60, 1.0, 6);
        let log = Log::default();
        let reported = Classic::fit_reporting(ClassicKind::Logistic(Penalty::Auto), &rows, &labels, 8, 2, 0, &log).unwrap();
        let (starts, done, finished) = log.0.into_inner().unwrap();
        let total = (CV_FOLDS * C_GRID.len()) as u64;
        assert_eq!(starts.len(), 1, "{starts:?}");
        assert!(starts[0].0.contains("cross-validation"), "{starts:?}");
        assert_eq!((starts[0].1, done, finished), (Some(total), total, 1));
        // Reporting changes nothing in the fit.
        let silent = Classic::fit(ClassicKind::Logistic(Penalty::Auto), &rows, &labels, 8, 2, 0).unwrap();
        assert_eq!(reported.kind, silent.kind);
        // A fixed C has nothing to cross-validate and reports nothing.
        let log = Log::default();
        Classic::fit_reporting(ClassicKind::Logistic(Penalty::C(1.0)), &rows, &labels, 8, 2, 0, &log).unwrap();
        assert!(log.0.into_inner().unwrap().0.is_empty());
    }

    #[test]
    fn cross_validation_folds_are_stratified_and_seeded() {
        let labels: Vec<usize> = (0..53).map(|i| usize::from(i % 3 == 0)).collect();
        let folds = stratified_folds(&labels, 2, CV_FOLDS, 7);
        for class in 0..2 {
            let per_fold: Vec<usize> = (0..CV_FOLDS).map(|f| (0..labels.len()).filter(|&i| labels[i] == class && folds[i] == f).count()).collect();
            let (lo, hi) = (per_fold.iter().min().unwrap(), per_fold.iter().max().unwrap());
            assert!(hi - lo <= 1, "class {class} spread over the folds as {per_fold:?}");
        }
        assert_eq!(folds, stratified_folds(&labels, 2, CV_FOLDS, 7), "same seed, same folds");
        assert_ne!(folds, stratified_folds(&labels, 2, CV_FOLDS, 8), "another seed, other folds");
        // The whole fit is deterministic given the seed.
        let (rows, labels) = two_classes(50, 0.3, 9);
        assert_eq!(cv_of(&rows, &labels, 3), cv_of(&rows, &labels, 3));
    }

    #[test]
    fn a_fixed_c_skips_cross_validation_and_old_heads_load_with_c_1() {
        let (rows, labels) = two_classes(40, 1.0, 1);
        let m = Classic::fit(ClassicKind::Logistic(Penalty::C(0.5)), &rows, &labels, 8, 2, 0).unwrap();
        assert!(m.cross_validation.is_none());
        assert_eq!(m.kind, ClassicKind::Logistic(Penalty::C(0.5)));
        // Too few rows for 5 folds: C = 1, said so by the absent cross-validation.
        let few = Classic::fit(ClassicKind::Logistic(Penalty::Auto), &rows[..8 * 10], &labels[..10], 8, 2, 0).unwrap();
        assert!(few.cross_validation.is_none());
        assert_eq!(few.kind, ClassicKind::Logistic(Penalty::C(1.0)));
        // A head saved before C was a setting has "Logistic" as its kind.
        let dir = std::env::temp_dir().join(format!("graft-classic-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.safetensors");
        m.save(&path).unwrap();
        let mut dict = graft_weights::load(&path).unwrap();
        dict.metadata.insert("graft.classic".into(), "\"Logistic\"".into());
        graft_weights::save_safetensors(&path, &dict).unwrap();
        let old = Classic::load(&path).unwrap();
        assert_eq!(old.kind, ClassicKind::Logistic(Penalty::C(1.0)));
        assert_eq!(old.predict_proba(&rows), m.predict_proba(&rows));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Classic::fit(ClassicKind::Logistic(Penalty::Auto), &[], &[], 5, 3, 0).is_err());
        assert!(Classic::fit(ClassicKind::Knn(0), &[1.0, 2.0], &[0], 2, 2, 0).is_err());
        for c in [0.0, -1.0, f64::INFINITY, f64::NAN] {
            assert!(Classic::fit(ClassicKind::Logistic(Penalty::C(c)), &[1.0, 2.0], &[0], 2, 2, 0).is_err(), "C = {c}");
        }
    }
}
