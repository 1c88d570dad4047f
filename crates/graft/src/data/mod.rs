//! Data: image decoding and model preprocessing, image-folder datasets, augmentation, and
//! readers for the digit datasets.

pub mod augment;
pub mod folder;
pub mod idx;
pub mod image;
pub mod usps;
