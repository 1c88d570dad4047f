//! graft: transfer learning on burn. Load a network trained on ImageNet, cut off its
//! classifier, graft on a new head, freeze what should stay fixed and train the rest.
//!
//! The library never touches the terminal: long work reports through [`report::Reporter`].

pub mod adapt;
pub mod cache;
pub mod classic;
pub mod data;
pub mod device;
pub mod error;
pub mod export;
pub mod fewshot;
pub mod fsutil;
pub mod kernels;
pub mod limits;
pub mod manifest;
pub mod npy;
pub mod predictor;
pub mod report;
pub mod text;
pub mod train;
pub mod transfer;
pub mod zoo;

pub use error::{GraftError, Result};
