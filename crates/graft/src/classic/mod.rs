//! Classic classifiers on stored features: softmax regression, linear SVM, k-NN and nearest
//! class mean. They train in milliseconds on a few thousand feature vectors, and are often as
//! good as a neural head when data is scarce.

mod lbfgs;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{GraftError, Result};

/// Which classic classifier, with its setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClassicKind {
    /// Multinomial logistic regression, L2 penalty ½‖W‖²/C (scikit-learn's objective, C = 1).
    Logistic,
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
    /// Trains on `rows` (n × dim, row-major) with labels in 0..classes.
    pub fn fit(kind: ClassicKind, rows: &[f32], labels: &[usize], dim: usize, classes: usize) -> Result<Self> {
        let n = labels.len();
        if n == 0 || dim == 0 || rows.len() != n * dim {
            return Err(GraftError::spec("--head", &format!("{kind:?}"), format!("needs training features: {n} rows of width {dim}")));
        }
        if let ClassicKind::Knn(0) = kind {
            return Err(GraftError::spec("--head", "knn:0", "k must be at least 1"));
        }
        let (mut mean, mut std) = (vec![0f32; dim], vec![1f32; dim]);
        let mut model = Classic { kind: kind.clone(), classes, dim, mean: vec![], std: vec![], params: vec![], labels: vec![] };
        match kind {
            ClassicKind::Logistic | ClassicKind::Svm => {
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
                model.params = if kind == ClassicKind::Logistic {
                    fit_logistic(&x, labels, dim, classes, 1.0)
                } else {
                    fit_svm(&x, labels, dim, classes, 1.0)
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

    /// Class probabilities (or, for SVM and prototypes, a softmax of their scores) per row.
    pub fn predict_proba(&self, rows: &[f32]) -> Vec<Vec<f32>> {
        rows.chunks(self.dim).map(|r| self.proba_one(r)).collect()
    }

    fn proba_one(&self, row: &[f32]) -> Vec<f32> {
        let (d, c) = (self.dim, self.classes);
        match self.kind {
            ClassicKind::Logistic | ClassicKind::Svm => {
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
            ClassicKind::Logistic | ClassicKind::Svm => self.dim + 1,
            _ => self.dim,
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let dict = graft_weights::load(path)?;
        let bad = |why: &str| GraftError::Data { path: path.to_path_buf(), reason: format!("not a graft classic head: {why}") };
        let meta = |k: &str| dict.metadata.get(k).ok_or_else(|| bad(&format!("no {k}")));
        let kind: ClassicKind = serde_json::from_str(meta("graft.classic")?).map_err(|_| bad("bad kind"))?;
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
        };
        let expected = match model.kind {
            ClassicKind::Logistic | ClassicKind::Svm => classes * (dim + 1),
            ClassicKind::Prototype => classes * dim,
            ClassicKind::Knn(_) => model.labels.len() * dim,
        };
        if model.params.len() != expected || model.mean.len() != dim || model.std.len() != dim || model.labels.iter().any(|&l| l >= classes) {
            return Err(bad("tensor sizes disagree with the metadata"));
        }
        Ok(model)
    }
}

/// Softmax regression minimising Σ cross-entropy + ½‖W‖²/C (bias not penalised) with L-BFGS.
fn fit_logistic(x: &[f64], labels: &[usize], d: usize, c: usize, big_c: f64) -> Vec<f32> {
    let n = labels.len();
    let width = d + 1;
    let objective = |w: &[f64], grad: &mut [f64]| -> f64 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        let mut scores = vec![0.0; c];
        for (i, &y) in labels.iter().enumerate() {
            let xi = &x[i * d..(i + 1) * d];
            for (k, s) in scores.iter_mut().enumerate() {
                let wk = &w[k * width..(k + 1) * width];
                *s = wk[..d].iter().zip(xi).map(|(a, b)| a * b).sum::<f64>() + wk[d];
            }
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
        let _ = n;
        loss
    };
    let w = lbfgs::minimise(vec![0.0; c * width], objective, 500, 1e-6);
    w.iter().map(|&v| v as f32).collect()
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
        for kind in [ClassicKind::Logistic, ClassicKind::Svm, ClassicKind::Knn(5), ClassicKind::Prototype] {
            let m = Classic::fit(kind.clone(), &train, &tl, 5, 3).unwrap();
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
        let w = fit_logistic(&x, &tl, 5, 3, 1.0);
        let m = Classic { kind: ClassicKind::Logistic, classes: 3, dim: 5, mean: vec![0.0; 5], std: vec![1.0; 5], params: w.clone(), labels: vec![] };
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

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Classic::fit(ClassicKind::Logistic, &[], &[], 5, 3).is_err());
        assert!(Classic::fit(ClassicKind::Knn(0), &[1.0, 2.0], &[0], 2, 2).is_err());
    }
}
