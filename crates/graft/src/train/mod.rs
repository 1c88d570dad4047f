//! Training: the grafted model, losses, optimisers and schedules, the fit loop and its run
//! directory.

pub mod checkpoint;
pub mod schedule;
pub mod semi;
pub mod model;
pub mod config;
pub mod engine;
pub mod fit;
pub mod lr_find;
pub mod guard;
pub mod loss;
pub mod parallel;
pub mod run;
pub mod text;
