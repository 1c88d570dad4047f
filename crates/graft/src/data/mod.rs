//! Data: image decoding and model preprocessing, image-folder datasets, augmentation, and
//! readers for the digit datasets, and the named datasets graft fetches or installs (`fetch`).

pub mod augment;
pub mod fetch;
pub mod folder;
pub mod idx;
pub mod image;
pub mod stream;
pub mod usps;
