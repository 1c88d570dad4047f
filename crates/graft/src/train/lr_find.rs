//! The learning-rate range test (Smith, 2017; fastai's `lr_find`): train from the start with
//! a learning rate that grows exponentially every step, from `start` to `end`, record the
//! loss, smooth it, stop once it blows up, and suggest a rate from the curve.
//!
//! The suggestion is fastai's default, "valley": the longest stretch over which the smoothed
//! loss keeps falling, and a point in its lower-middle part (past the flat start, before the
//! bottom where the loss turns). `min_div_10` (the minimum's rate over ten) and `steepest` (the
//! rate where the loss falls fastest) are reported beside it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::report::plot::{self, Series};
use crate::{GraftError, Result};

/// How the sweep runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSweep {
    /// First learning rate.
    pub start: f64,
    /// Last learning rate (reached at step `steps - 1` unless the loss blows up first).
    pub end: f64,
    /// Steps (mini-batches) in all.
    pub steps: usize,
    /// Weight of the past in the loss's exponential moving average (bias-corrected).
    pub smoothing: f64,
    /// The sweep stops once the smoothed loss exceeds this many times its minimum.
    pub diverge: f64,
}

impl Default for LrSweep {
    fn default() -> Self {
        LrSweep { start: 1e-7, end: 10.0, steps: 100, smoothing: 0.98, diverge: 4.0 }
    }
}

impl LrSweep {
    pub fn validate(&self) -> Result<()> {
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if !positive(self.start) {
            return Err(GraftError::setting("lr_start", &self.start.to_string(), "must be a positive number"));
        }
        if !positive(self.end) || self.end <= self.start {
            return Err(GraftError::setting("lr_end", &self.end.to_string(), format!("must be larger than the start rate {}", self.start)));
        }
        if !(2..=100_000).contains(&self.steps) {
            return Err(GraftError::setting("lr_steps", &self.steps.to_string(), "must be between 2 and 100000"));
        }
        Ok(())
    }

    /// The rate of step `i`: start · (end / start)^(i / (steps − 1)).
    pub fn lr_at(&self, i: usize) -> f64 {
        self.start * (self.end / self.start).powf(i as f64 / (self.steps - 1) as f64)
    }
}

/// The sweep's record and its suggestions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrFound {
    pub sweep: LrSweep,
    /// The rate of each step run.
    pub lrs: Vec<f64>,
    /// Each step's mini-batch loss.
    pub losses: Vec<f64>,
    /// The bias-corrected exponential moving average of `losses`.
    pub smoothed: Vec<f64>,
    /// Whether the sweep stopped early because the loss blew up.
    pub diverged: bool,
    /// fastai's "valley" rate: the one to use.
    pub suggested: f64,
    /// The rate at the smoothed loss's minimum, divided by 10.
    pub min_div_10: f64,
    /// The rate where the smoothed loss falls fastest (per log-rate).
    pub steepest: f64,
}

/// Runs the sweep: `step(lr)` trains one mini-batch at `lr` and returns its loss (an error, such
/// as a non-finite loss, ends the sweep as a blow-up would).
pub fn sweep(config: &LrSweep, mut step: impl FnMut(usize, f64) -> Result<f64>, mut progress: impl FnMut(usize)) -> Result<LrFound> {
    config.validate()?;
    let (mut lrs, mut losses, mut smoothed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut average, mut best) = (0f64, f64::INFINITY);
    let mut diverged = false;
    for i in 0..config.steps {
        let lr = config.lr_at(i);
        let loss = match step(i, lr) {
            Ok(l) if l.is_finite() => l,
            _ => {
                diverged = true;
                break;
            }
        };
        average = config.smoothing * average + (1.0 - config.smoothing) * loss;
        let s = average / (1.0 - config.smoothing.powi(i as i32 + 1));
        lrs.push(lr);
        losses.push(loss);
        smoothed.push(s);
        progress(i + 1);
        best = best.min(s);
        if i > 0 && s > config.diverge * best {
            diverged = true;
            break;
        }
    }
    if lrs.len() < 3 {
        return Err(GraftError::setting("lr_start", &config.start.to_string(), "the loss blew up at once: start the sweep lower"));
    }
    let (suggested, min_div_10, steepest) = suggestions(&lrs, &smoothed);
    Ok(LrFound { sweep: config.clone(), lrs, losses, smoothed, diverged, suggested, min_div_10, steepest })
}

/// (valley, minimum / 10, steepest) from the rates and the smoothed losses.
pub fn suggestions(lrs: &[f64], smoothed: &[f64]) -> (f64, f64, f64) {
    let n = smoothed.len();
    let argmin = (0..n).min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b])).unwrap_or(0);
    let min_div_10 = lrs[argmin] / 10.0;
    // Steepest: the most negative slope of the loss against ln(lr) between neighbours.
    let steepest = (1..n)
        .min_by(|&a, &b| slope(lrs, smoothed, a).total_cmp(&slope(lrs, smoothed, b)))
        .map(|i| lrs[i - 1])
        .unwrap_or(lrs[0]);
    (valley(lrs, smoothed), min_div_10, steepest)
}

fn slope(lrs: &[f64], loss: &[f64], i: usize) -> f64 {
    (loss[i] - loss[i - 1]) / (lrs[i].ln() - lrs[i - 1].ln())
}

/// fastai's "valley": the longest decreasing run of the loss (a longest decreasing
/// subsequence ending at each point, O(n²)); the rate a sixth of the way past its third.
fn valley(lrs: &[f64], loss: &[f64]) -> f64 {
    let n = loss.len();
    let mut length = vec![1usize; n];
    let (mut start, mut end) = (0, 0);
    for i in 1..n {
        for j in 0..i {
            if loss[i] < loss[j] && length[i] < length[j] + 1 {
                length[i] = length[j] + 1;
            }
        }
        if length[i] > length[end] {
            end = i;
            start = end + 1 - length[end];
        }
    }
    let third = (end - start) as f64 / 3.0;
    let index = (start + third as usize + (third / 2.0) as usize).min(n - 1);
    lrs[index]
}

impl LrFound {
    /// The smoothed loss against the rate (log scale: the x axis is log10 lr), the suggestion
    /// marked by a vertical line, as PNG at `path`.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let points: Vec<(f64, f64)> = self.lrs.iter().zip(&self.smoothed).map(|(l, s)| (l.log10(), *s)).collect();
        let (lo, hi) = self.smoothed.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &s| (a.min(s), b.max(s)));
        let marker = vec![(self.suggested.log10(), lo), (self.suggested.log10(), hi)];
        let series = [
            Series { name: "smoothed loss".into(), points },
            Series { name: format!("suggested {:.1e}", self.suggested), points: marker },
        ];
        plot::line_plot(path, "learning-rate range test", "log10 learning rate", &series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_grow_exponentially_from_start_to_end() {
        let s = LrSweep { start: 1e-6, end: 1.0, steps: 7, ..LrSweep::default() };
        assert!((s.lr_at(0) - 1e-6).abs() < 1e-18);
        assert!((s.lr_at(6) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(3) - 1e-3).abs() < 1e-12);
        assert!(LrSweep { end: 1e-8, ..LrSweep::default() }.validate().is_err());
        assert!(LrSweep { steps: 1, ..LrSweep::default() }.validate().is_err());
    }

    /// A loss that stays flat, falls between 1e-4 and 1e-2 and blows up after 1e-1: the sweep
    /// stops at the blow-up and suggests a rate on the falling part.
    #[test]
    fn the_sweep_stops_at_the_blow_up_and_suggests_a_rate_on_the_slope() {
        let config = LrSweep::default();
        let loss = |lr: f64| {
            let x = lr.log10();
            if x < -4.0 {
                2.0
            } else if x < -2.0 {
                2.0 - 0.9 * (x + 4.0)
            } else if x < -1.0 {
                0.2
            } else {
                0.2 + 50.0 * (x + 1.0)
            }
        };
        let found = sweep(&config, |_, lr| Ok(loss(lr)), |_| {}).unwrap();
        assert!(found.diverged, "the loss blew up");
        assert!(found.lrs.len() < config.steps);
        assert!(*found.lrs.last().unwrap() > 0.1);
        assert!((1e-4..1e-2).contains(&found.suggested), "valley {}", found.suggested);
        assert!((1e-4..3e-2).contains(&found.steepest), "steepest {}", found.steepest);
        assert!(found.min_div_10 < 0.1 && found.min_div_10 > 1e-4, "{}", found.min_div_10);
        // The smoothing is bias-corrected: a constant loss is smoothed to itself.
        let flat = sweep(&LrSweep { steps: 10, ..config.clone() }, |_, _| Ok(1.5), |_| {}).unwrap();
        assert!(flat.smoothed.iter().all(|s| (s - 1.5).abs() < 1e-12), "{:?}", flat.smoothed);
        // A non-finite loss ends the sweep like a blow-up; one at once is an error.
        let nan = sweep(&config, |i, _| Ok(if i < 5 { 1.0 } else { f64::NAN }), |_| {}).unwrap();
        assert_eq!((nan.lrs.len(), nan.diverged), (5, true));
        assert!(sweep(&config, |_, _| Ok(f64::INFINITY), |_| {}).is_err());
    }

    #[test]
    fn valley_is_inside_the_longest_decreasing_run() {
        let lrs: Vec<f64> = (0..10).map(|i| 10f64.powi(i - 8)).collect();
        let loss = [3.0, 3.1, 2.9, 2.5, 2.0, 1.5, 1.0, 0.8, 5.0, 9.0];
        let v = valley(&lrs, &loss);
        let i = lrs.iter().position(|&l| l == v).unwrap();
        assert!((2..=7).contains(&i), "index {i}");
    }
}
