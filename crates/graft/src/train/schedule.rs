//! Learning-rate schedules, plateau reduction and early stopping: pure functions of the step or
//! of the metric history, so a resumed run computes exactly the rates an uninterrupted one would.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::GraftError;

/// Where one-cycle starts, as a fraction of the peak (PyTorch's `div_factor` of 25).
const ONECYCLE_START: f64 = 1.0 / 25.0;
/// Where one-cycle ends, as a fraction of the peak: close to zero without being a wasted step.
const ONECYCLE_END: f64 = 1e-4;

/// The shape of the learning rate over a run, as a factor of the base rate.
///
/// Written in run files as `{"type": "cosine", "min_factor": 0.0}` and on the command line as
/// `--schedule cosine` (see [`FromStr`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Multiply the rate by `gamma` every `every_epochs` epochs (epochs counted from the start
    /// of the run, so the drops land on the epochs the user named).
    Step { every_epochs: usize, gamma: f64 },
    /// Half a cosine from the base rate down to `base * min_factor` over the whole run.
    Cosine {
        #[serde(default)]
        min_factor: f64,
    },
    /// Leslie Smith's one-cycle: cosine up from `base / 25` to the base rate (the peak) over the
    /// first `pct_start` of the run, then cosine down to `base * 1e-4`. The base rate is the
    /// peak, so pick it as the largest rate that still trains stably.
    OneCycle { pct_start: f64 },
}

impl Schedule {
    /// Check the numbers make sense; also used for schedules read from JSON, which bypass
    /// [`FromStr`].
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                if every_epochs == 0 {
                    Err("the step interval must be at least one epoch".into())
                } else if !(gamma.is_finite() && gamma > 0.0) {
                    Err(format!("gamma must be a positive number, not {gamma}"))
                } else {
                    Ok(())
                }
            }
            Schedule::Cosine { min_factor } => {
                if (0.0..=1.0).contains(&min_factor) {
                    Ok(())
                } else {
                    Err(format!(
                        "the minimum factor must be within [0, 1], not {min_factor}"
                    ))
                }
            }
            Schedule::OneCycle { pct_start } => {
                if pct_start > 0.0 && pct_start < 1.0 {
                    Ok(())
                } else {
                    Err(format!(
                        "the warm-up fraction must be strictly between 0 and 1, not {pct_start}"
                    ))
                }
            }
        }
    }

    /// The factor on the base rate at `step` of a run of `total` steps with `steps_per_epoch`
    /// steps an epoch. Steps at or past `total` get the final value.
    pub fn factor(&self, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
        let total = total.max(1);
        // Progress in [0, 1]: step 0 is the start, `total` (one past the last step) the end, so
        // the last step still gets a small non-zero rate.
        let progress = (step.min(total) as f64) / total as f64;
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Step {
                every_epochs,
                gamma,
            } => {
                let epoch = step / steps_per_epoch.max(1);
                gamma.powi((epoch / every_epochs.max(1)) as i32)
            }
            Schedule::Cosine { min_factor } => cosine(1.0, min_factor, progress),
            Schedule::OneCycle { pct_start } => {
                if progress < pct_start {
                    cosine(ONECYCLE_START, 1.0, progress / pct_start)
                } else {
                    cosine(
                        1.0,
                        ONECYCLE_END,
                        (progress - pct_start) / (1.0 - pct_start),
                    )
                }
            }
        }
    }
}

/// Half a cosine from `from` (at `t = 0`) to `to` (at `t = 1`).
fn cosine(from: f64, to: f64, t: f64) -> f64 {
    to + (from - to) * (1.0 + (PI * t.clamp(0.0, 1.0)).cos()) / 2.0
}

/// `constant`, `step:EVERY[:GAMMA]` (gamma 0.1), `cosine[:MIN_FACTOR]` (0), `onecycle[:PCT]`
/// (0.3): the `--schedule` flag.
impl FromStr for Schedule {
    type Err = GraftError;

    fn from_str(value: &str) -> Result<Self, GraftError> {
        let fail = |reason: String| GraftError::setting("schedule", value, reason);
        let mut parts = value.trim().split(':');
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let args: Vec<&str> = parts.collect();
        let number = |i: usize, what: &str| -> Result<Option<f64>, GraftError> {
            args.get(i)
                .map(|s| {
                    s.trim()
                        .parse::<f64>()
                        .map_err(|_| fail(format!("{what} `{s}` is not a number")))
                })
                .transpose()
        };
        let at_most = |n: usize, usage: &str| {
            if args.len() > n {
                Err(fail(format!("too many fields; expected {usage}")))
            } else {
                Ok(())
            }
        };
        let schedule =
            match name.as_str() {
                "constant" => {
                    at_most(0, "`constant`")?;
                    Schedule::Constant
                }
                "step" => {
                    at_most(2, "`step:EVERY[:GAMMA]`")?;
                    let every = args
                        .first()
                        .ok_or_else(|| fail("expected `step:EVERY[:GAMMA]`".into()))?;
                    let every_epochs = every.trim().parse::<usize>().map_err(|_| {
                        fail(format!(
                            "the interval `{every}` is not a whole number of epochs"
                        ))
                    })?;
                    Schedule::Step {
                        every_epochs,
                        gamma: number(1, "gamma")?.unwrap_or(0.1),
                    }
                }
                "cosine" => {
                    at_most(1, "`cosine[:MIN_FACTOR]`")?;
                    Schedule::Cosine {
                        min_factor: number(0, "the minimum factor")?.unwrap_or(0.0),
                    }
                }
                "onecycle" | "one-cycle" => {
                    at_most(1, "`onecycle[:PCT]`")?;
                    Schedule::OneCycle {
                        pct_start: number(0, "the warm-up fraction")?.unwrap_or(0.3),
                    }
                }
                _ => return Err(fail(
                    "expected constant, step:EVERY[:GAMMA], cosine[:MIN_FACTOR] or onecycle[:PCT]"
                        .into(),
                )),
            };
        schedule.validate().map_err(fail)?;
        Ok(schedule)
    }
}

/// The flag syntax again; `{}` of a parsed schedule parses back to the same value.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Step {
                every_epochs,
                gamma,
            } => write!(f, "step:{every_epochs}:{gamma}"),
            Schedule::Cosine { min_factor } if *min_factor == 0.0 => write!(f, "cosine"),
            Schedule::Cosine { min_factor } => write!(f, "cosine:{min_factor}"),
            Schedule::OneCycle { pct_start } => write!(f, "onecycle:{pct_start}"),
        }
    }
}

/// Everything needed to turn a step number into a learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrPlan {
    pub base_lr: f64,
    pub schedule: Schedule,
    /// Epochs of linear warm-up (fractions allowed). Fresh heads on a pretrained trunk send large
    /// gradients at first; ramping up keeps them from wrecking the pretrained weights.
    pub warmup_epochs: f64,
    pub steps_per_epoch: usize,
    pub epochs: usize,
}

impl LrPlan {
    /// Optimiser steps in the whole run.
    pub fn total_steps(&self) -> usize {
        self.epochs * self.steps_per_epoch.max(1)
    }

    /// Steps of warm-up, rounded to whole steps.
    pub fn warmup_steps(&self) -> usize {
        (self.warmup_epochs.max(0.0) * self.steps_per_epoch.max(1) as f64).round() as usize
    }

    /// The learning rate for optimiser step `step` (0-based).
    ///
    /// The schedule runs on the run's own clock from step 0; warm-up scales it by
    /// `(step + 1) / warmup_steps` until that reaches one. So the first step gets a small but
    /// non-zero rate (a zero-rate step would be wasted), and once warm-up ends the rate is
    /// exactly what the schedule alone would give.
    pub fn lr_at(&self, step: usize) -> f64 {
        let scheduled = self.base_lr
            * self
                .schedule
                .factor(step, self.total_steps(), self.steps_per_epoch);
        let warmup = self.warmup_steps();
        if step < warmup {
            scheduled * (step + 1) as f64 / warmup as f64
        } else {
            scheduled
        }
    }
}

/// Is `metric` better than `best` by more than `min_delta`? A NaN never is.
fn improves(metric: f64, best: Option<f64>, min_delta: f64, higher_is_better: bool) -> bool {
    if metric.is_nan() {
        return false;
    }
    match best {
        None => true,
        Some(best) if higher_is_better => metric > best + min_delta,
        Some(best) => metric < best - min_delta,
    }
}

/// Cut the learning rate when the validation metric stops improving: after `patience` epochs in
/// a row without improving by more than `min_delta`, multiply [`scale`](Self::scale) by
/// `factor` and start counting again. Serialisable so a resumed run keeps its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceOnPlateau {
    factor: f64,
    patience: usize,
    min_delta: f64,
    best: Option<f64>,
    bad_epochs: usize,
    /// The factor to apply on top of the scheduled rate; starts at 1.
    pub scale: f64,
}

impl ReduceOnPlateau {
    pub fn new(factor: f64, patience: usize, min_delta: f64) -> Self {
        ReduceOnPlateau {
            factor,
            patience,
            min_delta,
            best: None,
            bad_epochs: 0,
            scale: 1.0,
        }
    }

    /// Record one epoch's metric; true when this call reduced the rate.
    pub fn observe(&mut self, metric: f64, higher_is_better: bool) -> bool {
        if improves(metric, self.best, self.min_delta, higher_is_better) {
            self.best = Some(metric);
            self.bad_epochs = 0;
            return false;
        }
        self.bad_epochs += 1;
        if self.bad_epochs >= self.patience {
            self.scale *= self.factor;
            self.bad_epochs = 0;
            return true;
        }
        false
    }

    /// The best metric seen so far.
    pub fn best(&self) -> Option<f64> {
        self.best
    }
}

/// Stop training when the validation metric has not improved by more than `min_delta` for
/// `patience` epochs in a row: more epochs would only overfit. Serialisable for resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    patience: usize,
    min_delta: f64,
    best: Option<f64>,
    bad_epochs: usize,
}

impl EarlyStopping {
    /// Epochs without improvement that stop the run.
    pub fn patience(&self) -> usize {
        self.patience
    }

    pub fn new(patience: usize, min_delta: f64) -> Self {
        EarlyStopping {
            patience,
            min_delta,
            best: None,
            bad_epochs: 0,
        }
    }

    /// Record one epoch's metric; true means stop now.
    pub fn observe(&mut self, metric: f64, higher_is_better: bool) -> bool {
        if improves(metric, self.best, self.min_delta, higher_is_better) {
            self.best = Some(metric);
            self.bad_epochs = 0;
            return false;
        }
        self.bad_epochs += 1;
        self.bad_epochs >= self.patience
    }

    /// The best metric seen so far.
    pub fn best(&self) -> Option<f64> {
        self.best
    }

    /// Epochs in a row without improvement.
    pub fn bad_epochs(&self) -> usize {
        self.bad_epochs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: Schedule, warmup_epochs: f64) -> LrPlan {
        LrPlan {
            base_lr: 0.1,
            schedule,
            warmup_epochs,
            steps_per_epoch: 10,
            epochs: 10,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn constant_is_flat() {
        let p = plan(Schedule::Constant, 0.0);
        for step in [0, 50, 99, 100, 1000] {
            assert_eq!(p.lr_at(step), 0.1);
        }
    }

    #[test]
    fn step_multiplies_by_gamma_every_n_epochs() {
        let p = plan(
            Schedule::Step {
                every_epochs: 3,
                gamma: 0.5,
            },
            0.0,
        );
        assert!(close(p.lr_at(0), 0.1));
        assert!(close(p.lr_at(29), 0.1)); // last step of epoch 2
        assert!(close(p.lr_at(30), 0.05)); // first of epoch 3
        assert!(close(p.lr_at(60), 0.025));
        assert!(close(p.lr_at(99), 0.0125));
    }

    #[test]
    fn cosine_goes_from_base_to_min_over_the_run() {
        let p = plan(Schedule::Cosine { min_factor: 0.1 }, 0.0);
        assert!(close(p.lr_at(0), 0.1));
        assert!(close(p.lr_at(50), 0.1 * (1.0 + 0.1) / 2.0)); // halfway: mean of the ends
        assert!(close(p.lr_at(100), 0.01));
        assert!(p.lr_at(99) > 0.01 && p.lr_at(99) < 0.0101);
        let p = plan(Schedule::Cosine { min_factor: 0.0 }, 0.0);
        assert!(p.lr_at(99) > 0.0, "the last step still learns");
        assert!(
            (1..100).all(|s| p.lr_at(s) < p.lr_at(s - 1)),
            "monotone decreasing"
        );
    }

    #[test]
    fn onecycle_rises_to_the_peak_then_anneals() {
        let p = plan(Schedule::OneCycle { pct_start: 0.3 }, 0.0);
        assert!(close(p.lr_at(0), 0.1 / 25.0));
        assert!(close(p.lr_at(30), 0.1)); // the peak, at pct_start
        assert!((1..=30).all(|s| p.lr_at(s) > p.lr_at(s - 1)));
        assert!((31..100).all(|s| p.lr_at(s) < p.lr_at(s - 1)));
        assert!(close(p.lr_at(65), 0.1 * (1.0 + 1e-4) / 2.0)); // halfway down
        assert!(p.lr_at(99) < 0.001 && p.lr_at(99) > 0.0);
        assert!(close(p.lr_at(100), 0.1 * 1e-4));
    }

    #[test]
    fn warmup_ramps_linearly_then_hands_over() {
        let p = plan(Schedule::Constant, 2.0); // 20 warm-up steps
        assert_eq!(p.warmup_steps(), 20);
        assert!(close(p.lr_at(0), 0.1 / 20.0));
        assert!(close(p.lr_at(9), 0.1 * 10.0 / 20.0));
        assert!(close(p.lr_at(19), 0.1));
        assert!(close(p.lr_at(20), 0.1));
        assert!((1..20).all(|s| p.lr_at(s) > p.lr_at(s - 1)));

        let cos = plan(Schedule::Cosine { min_factor: 0.0 }, 0.5); // 5 steps
        let bare = plan(Schedule::Cosine { min_factor: 0.0 }, 0.0);
        assert!(close(cos.lr_at(2), bare.lr_at(2) * 3.0 / 5.0));
        assert_eq!(cos.lr_at(5), bare.lr_at(5));
        assert_eq!(cos.lr_at(70), bare.lr_at(70));
    }

    #[test]
    fn parse_defaults_and_display_round_trip() {
        assert_eq!("constant".parse::<Schedule>().unwrap(), Schedule::Constant);
        assert_eq!(
            "step:5".parse::<Schedule>().unwrap(),
            Schedule::Step {
                every_epochs: 5,
                gamma: 0.1
            }
        );
        assert_eq!(
            "step:5:0.5".parse::<Schedule>().unwrap(),
            Schedule::Step {
                every_epochs: 5,
                gamma: 0.5
            }
        );
        assert_eq!(
            "cosine".parse::<Schedule>().unwrap(),
            Schedule::Cosine { min_factor: 0.0 }
        );
        assert_eq!(
            "cosine:0.01".parse::<Schedule>().unwrap(),
            Schedule::Cosine { min_factor: 0.01 }
        );
        assert_eq!(
            "onecycle".parse::<Schedule>().unwrap(),
            Schedule::OneCycle { pct_start: 0.3 }
        );
        assert_eq!(
            "onecycle:0.25".parse::<Schedule>().unwrap(),
            Schedule::OneCycle { pct_start: 0.25 }
        );

        for text in [
            "constant",
            "step:5:0.1",
            "step:7:0.3333333333333333",
            "cosine",
            "cosine:0.05",
            "onecycle:0.3",
        ] {
            let schedule: Schedule = text.parse().unwrap();
            assert_eq!(schedule.to_string(), text);
            assert_eq!(schedule.to_string().parse::<Schedule>().unwrap(), schedule);
        }
    }

    #[test]
    fn parse_rejects_nonsense_with_the_flag_named() {
        for bad in [
            "",
            "linear",
            "step",
            "step:0",
            "step:x",
            "step:2:0",
            "step:2:-1",
            "step:1:2:3",
            "cosine:2",
            "onecycle:1",
            "onecycle:0",
            "constant:1",
        ] {
            match bad.parse::<Schedule>() {
                Err(GraftError::InvalidSetting { setting, value, .. }) => {
                    assert_eq!(setting, "schedule");
                    assert_eq!(value, bad);
                }
                other => panic!("`{bad}` gave {other:?}"),
            }
        }
    }

    #[test]
    fn schedule_serialises_tagged() {
        let json = serde_json::to_string(&Schedule::OneCycle { pct_start: 0.3 }).unwrap();
        assert_eq!(json, r#"{"type":"one-cycle","pct_start":0.3}"#);
        let back: Schedule = serde_json::from_str(r#"{"type":"constant"}"#).unwrap();
        assert_eq!(back, Schedule::Constant);
        assert!(serde_json::from_str::<Schedule>(r#"{"type":"cosine","min":0}"#).is_err());
    }

    #[test]
    fn early_stopping_stops_after_exactly_patience_bad_epochs() {
        let mut stop = EarlyStopping::new(3, 0.01);
        assert!(!stop.observe(0.50, true));
        assert!(!stop.observe(0.505, true)); // within min_delta: not an improvement
        assert!(!stop.observe(0.40, true));
        assert!(!stop.observe(0.60, true)); // improvement resets the count
        assert_eq!(stop.bad_epochs(), 0);
        assert!(!stop.observe(0.60, true));
        assert!(!stop.observe(0.59, true));
        assert!(stop.observe(0.605, true)); // third in a row
        assert_eq!(stop.best(), Some(0.60));

        let mut loss = EarlyStopping::new(2, 0.0);
        assert!(!loss.observe(1.0, false));
        assert!(!loss.observe(0.9, false));
        assert!(!loss.observe(f64::NAN, false));
        assert!(loss.observe(0.95, false));
    }

    #[test]
    fn plateau_reduces_after_patience_and_survives_resume() {
        let mut plateau = ReduceOnPlateau::new(0.5, 2, 0.0);
        assert!(!plateau.observe(1.0, false));
        assert!(!plateau.observe(1.0, false));
        assert!(plateau.observe(1.1, false));
        assert_eq!(plateau.scale, 0.5);
        assert!(!plateau.observe(0.8, false)); // improvement
        assert!(!plateau.observe(0.9, false));

        let json = serde_json::to_string(&plateau).unwrap();
        let mut resumed: ReduceOnPlateau = serde_json::from_str(&json).unwrap();
        assert_eq!(resumed, plateau);
        assert!(resumed.observe(0.85, false));
        assert_eq!(resumed.scale, 0.25);

        let stop: EarlyStopping =
            serde_json::from_str(&serde_json::to_string(&EarlyStopping::new(4, 0.1)).unwrap())
                .unwrap();
        assert_eq!(stop, EarlyStopping::new(4, 0.1));
    }
}
