//! Turns library progress into indicatif bars on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use graft::report::Reporter;
use indicatif::{ProgressBar, ProgressStyle};

pub struct TermReporter {
    bar: Mutex<Option<ProgressBar>>,
    interactive: bool,
}

impl TermReporter {
    pub fn new() -> Self {
        Self { bar: Mutex::new(None), interactive: std::io::stdout().is_terminal() && std::io::stderr().is_terminal() }
    }
}

impl Reporter for TermReporter {
    fn message(&self, text: &str) {
        match self.bar.lock().unwrap().as_ref() {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn start(&self, task: &str, total: Option<u64>) {
        if !self.interactive {
            return;
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})").unwrap().progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner(),
        };
        bar.set_message(task.to_string());
        *self.bar.lock().unwrap() = Some(bar);
    }

    fn progress(&self, done: u64) {
        if let Some(bar) = self.bar.lock().unwrap().as_ref() {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap().take() {
            bar.finish_and_clear();
        }
    }
}

/// A bar left by a command that ended with an error is cleared, so the error line stands alone.
impl Drop for TermReporter {
    fn drop(&mut self) {
        if let Ok(mut bar) = self.bar.lock() {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// Ctrl-C asks the training loop to stop at its next batch boundary (the run directory keeps its
/// last completed epoch, written atomically); a second Ctrl-C exits at once with code 130.
pub fn stop_on_ctrl_c() {
    #[cfg(unix)]
    {
        extern "C" fn on_sigint(_: libc::c_int) {
            if graft::train::guard::stop_requested() {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(130) };
            }
            graft::train::guard::request_stop();
        }
        // SAFETY: the handler only touches an atomic or calls _exit, both async-signal-safe.
        unsafe { libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

/// When `result` is a training loop's [`graft::GraftError::Interrupted`], prints
/// `interrupted: ` and `next` (what to run to continue) on stderr and exits with 130, the
/// shell's code for a Ctrl-C. Any other result is returned.
pub fn exit_if_interrupted(result: anyhow::Result<()>, next: impl Fn(&std::path::Path) -> String) -> anyhow::Result<()> {
    if let Err(err) = &result {
        if let Some(graft::GraftError::Interrupted { run, .. }) = err.downcast_ref::<graft::GraftError>() {
            eprintln!("interrupted: {}", next(run));
            std::process::exit(130);
        }
    }
    result
}

impl graft::train::fit::FitReporter for TermReporter {
    /// A Keras-like one-line epoch summary on stderr.
    fn epoch(&self, m: &graft::train::fit::EpochMetrics, epochs: usize) {
        let mut line = format!(
            "Epoch {}/{} - {:.1}s - loss: {:.4} - accuracy: {:.4}",
            m.epoch, epochs, m.seconds, m.train_loss, m.train_accuracy
        );
        if let (Some(loss), Some(acc)) = (m.val_loss, m.val_accuracy) {
            line.push_str(&format!(" - val_loss: {loss:.4} - val_accuracy: {acc:.4}"));
        }
        line.push_str(&format!(" - lr: {:.2e}", m.lr));
        self.message(&line);
    }
}
