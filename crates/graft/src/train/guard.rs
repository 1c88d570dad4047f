//! Checks every training loop makes, in one place: a non-finite loss or non-finite weights stop
//! training (a diverged run must not save NaN weights as its "best" epoch), and a stop request
//! (the CLI's Ctrl-C handler) ends training between two batches.
//!
//! Each loop calls [`check_loss`] on every batch's loss, [`check_weights`] before it saves a
//! checkpoint, and [`check_stop`] between batches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::{GraftError, Result};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the running training loop to stop at its next batch boundary. Only stores to an atomic,
/// so a signal handler may call it.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether [`request_stop`] was called.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// [`GraftError::Interrupted`] once a stop was requested. The current batch is abandoned: the
/// run directory still holds the last completed epoch (checkpoints are written atomically), which
/// is where a resumed run continues.
pub fn check_stop(run: &Path, epochs_done: usize) -> Result<()> {
    if stop_requested() {
        return Err(GraftError::Interrupted { run: PathBuf::from(run), epochs_done });
    }
    Ok(())
}

/// [`GraftError::NonFinite`] when a loss (`what`: "training loss", "validation loss") is NaN or
/// infinite. `epoch` is 1-based and `lr` the learning rate the step used (or was about to use).
pub fn check_loss(what: &str, loss: f64, epoch: usize, lr: f64) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(GraftError::NonFinite { what: format!("{what} is {loss}"), epoch, lr })
}

/// [`GraftError::NonFinite`] naming the first parameter with a NaN or infinite value.
pub fn check_weights<M: Module>(module: &M, epoch: usize, lr: f64) -> Result<()> {
    struct Finite {
        bad: Option<usize>,
        index: usize,
    }
    impl ModuleVisitor for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.bad.is_none() {
                let data = param.val().into_data();
                let finite = match data.as_slice::<f32>() {
                    Ok(values) => values.iter().all(|v| v.is_finite()),
                    Err(_) => data.iter::<f64>().all(f64::is_finite),
                };
                if !finite {
                    self.bad = Some(self.index);
                }
            }
            self.index += 1;
        }
    }
    let mut visitor = Finite { bad: None, index: 0 };
    module.visit(&mut visitor);
    match visitor.bad {
        None => Ok(()),
        Some(i) => Err(GraftError::NonFinite { what: format!("weights hold NaN or infinite values (parameter #{i})"), epoch, lr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_losses_are_refused_naming_epoch_and_lr() {
        assert!(check_loss("training loss", 0.7, 1, 1e-3).is_ok());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = check_loss("training loss", bad, 3, 1e30).unwrap_err();
            assert!(matches!(err, GraftError::NonFinite { epoch: 3, .. }), "{err:?}");
            let text = err.to_string();
            assert!(text.contains("epoch 3") && text.contains("1e30") && text.contains("lower --lr"), "{text}");
        }
    }

    #[test]
    fn non_finite_weights_are_found() {
        use burn::nn::LinearConfig;
        let device = crate::device::default_device();
        let linear = LinearConfig::new(3, 2).init(&device);
        assert!(check_weights(&linear, 1, 0.1).is_ok());
        let mut bad = linear.clone();
        bad.weight = Param::from_tensor(Tensor::<2>::full([3, 2], f32::NAN, &device));
        let err = check_weights(&bad, 2, 0.1).unwrap_err().to_string();
        assert!(err.contains("epoch 2") && err.contains("weights"), "{err}");
    }
}
