//! The feature store: activations of a frozen trunk, computed once per image and kept on disk.

pub mod extract;
pub mod parts;
pub mod store;

pub use store::{FeatureStore, Key, Namespace, StoreDtype};
