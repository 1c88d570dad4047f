//! Progress reporting without a terminal: the library calls a [`Reporter`], the CLI decides
//! whether that becomes progress bars, JSON lines or nothing.

/// Receives progress from long-running library work.
pub trait Reporter: Send + Sync {
    /// A one-line message for a person ("downloading efficientnet-lite0 …").
    fn message(&self, text: &str);
    /// A task with `total` steps (`None` when unknown) starts.
    fn start(&self, task: &str, total: Option<u64>);
    /// `done` steps of the current task are complete.
    fn progress(&self, done: u64);
    /// The current task ended.
    fn finish(&self);
}

/// A reporter that drops everything: for tests and quiet library use.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {
    fn message(&self, _text: &str) {}
    fn start(&self, _task: &str, _total: Option<u64>) {}
    fn progress(&self, _done: u64) {}
    fn finish(&self) {}
}

pub mod gradcam;
pub mod html;
pub mod plot;
pub mod tensorboard;
