//! A small multinomial logistic regression for measuring frozen embeddings (test-only; the
//! `classic` module is graft's real one).
//!
//! Objective as scikit-learn's `LogisticRegression(C)`: mean cross-entropy plus
//! `‖W‖² / (2·C·n)`, the intercept unpenalised. Minimised with accelerated full-batch gradient
//! descent (FISTA momentum) at step 1/L, L bounding the gradient's Lipschitz constant.

/// Weights `[k × (d + 1)]`, the last column the intercept.
pub(crate) struct LogisticRegression {
    w: Vec<f64>,
    d: usize,
    k: usize,
    /// Gradient steps taken (`MAX_ITERS` when the tolerance was not reached).
    pub(crate) iterations: usize,
}

const MAX_ITERS: usize = 5000;
const GRAD_TOL: f64 = 1e-6;

impl LogisticRegression {
    pub(crate) fn fit(x: &[Vec<f32>], y: &[usize], k: usize, c: f64) -> Self {
        let (n, d) = (x.len(), x[0].len());
        let lambda = 1.0 / (c * n as f64);
        // Softmax cross-entropy's Hessian is at most ½·XᵀX/n (per class block).
        let lipschitz = 0.5 * top_eigenvalue(x) + lambda;
        let step = 1.0 / lipschitz;
        let mut w = vec![0.0; k * (d + 1)];
        let mut ahead = w.clone();
        let mut t = 1.0f64;
        let mut iterations = MAX_ITERS;
        for it in 0..MAX_ITERS {
            let grad = Self { w: ahead.clone(), d, k, iterations: 0 }.gradient(x, y, lambda);
            if grad.iter().fold(0.0f64, |m, g| m.max(g.abs())) < GRAD_TOL {
                w = ahead;
                iterations = it;
                break;
            }
            let next: Vec<f64> = ahead.iter().zip(&grad).map(|(a, g)| a - step * g).collect();
            let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
            let momentum = (t - 1.0) / t_next;
            ahead = next.iter().zip(&w).map(|(nx, old)| nx + momentum * (nx - old)).collect();
            w = next;
            t = t_next;
        }
        Self { w, d, k, iterations }
    }

    fn logits(&self, row: &[f32]) -> Vec<f64> {
        (0..self.k)
            .map(|c| {
                let wc = &self.w[c * (self.d + 1)..(c + 1) * (self.d + 1)];
                wc[self.d] + row.iter().zip(wc).map(|(&a, b)| a as f64 * b).sum::<f64>()
            })
            .collect()
    }

    fn gradient(&self, x: &[Vec<f32>], y: &[usize], lambda: f64) -> Vec<f64> {
        let (n, d) = (x.len() as f64, self.d);
        let mut grad = vec![0.0; self.w.len()];
        for (row, &label) in x.iter().zip(y) {
            let logits = self.logits(row);
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = exp.iter().sum();
            for c in 0..self.k {
                let err = (exp[c] / total - f64::from(u8::from(c == label))) / n;
                let gc = &mut grad[c * (d + 1)..(c + 1) * (d + 1)];
                for (g, &a) in gc.iter_mut().zip(row) {
                    *g += err * a as f64;
                }
                gc[d] += err;
            }
        }
        for c in 0..self.k {
            for j in 0..d {
                grad[c * (d + 1) + j] += lambda * self.w[c * (d + 1) + j];
            }
        }
        grad
    }

    pub(crate) fn predict(&self, row: &[f32]) -> usize {
        let logits = self.logits(row);
        (0..self.k).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0)
    }

    pub(crate) fn accuracy(&self, x: &[Vec<f32>], y: &[usize]) -> f64 {
        let right = x.iter().zip(y).filter(|(row, &label)| self.predict(row) == label).count();
        right as f64 / x.len().max(1) as f64
    }
}

/// Largest eigenvalue of XᵀX/n for X with a column of ones appended (power iteration).
fn top_eigenvalue(x: &[Vec<f32>]) -> f64 {
    let (n, d) = (x.len() as f64, x[0].len());
    let mut v = vec![1.0 / ((d + 1) as f64).sqrt(); d + 1];
    let mut eigen = 0.0;
    for _ in 0..100 {
        let mut next = vec![0.0; d + 1];
        for row in x {
            let dot = v[d] + row.iter().zip(&v).map(|(&a, b)| a as f64 * b).sum::<f64>();
            for (nx, &a) in next.iter_mut().zip(row) {
                *nx += dot * a as f64 / n;
            }
            next[d] += dot / n;
        }
        let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        eigen = norm;
        v = next.into_iter().map(|a| a / norm).collect();
    }
    eigen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_separable_classes() {
        let x: Vec<Vec<f32>> =
            (0..60).map(|i| vec![(i % 3) as f32 + 0.1 * (i as f32 / 60.0), 1.0 - (i % 3) as f32]).collect();
        let y: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let model = LogisticRegression::fit(&x, &y, 3, 100.0);
        assert_eq!(model.accuracy(&x, &y), 1.0);
    }
}
