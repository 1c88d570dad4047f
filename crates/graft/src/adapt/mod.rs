//! Domain adaptation: train on a labelled source domain so that the model works on an
//! unlabelled target domain (DDC, DAN, Deep CORAL, DANN, ADDA, CDAN).
//!
//! * [`config`]: the methods and every setting, with their defaults.
//! * [`data`]: domains from image folders or the shared digit sets (`mnist:train`, `usps:test`).
//! * [`model`]: LeNet, the bottleneck classifier and the domain discriminator.
//! * [`autodial`]: AutoDIAL's domain alignment layers (BatchNorm statistics mixed by a learned α).
//! * [`dsn`]: Domain Separation Networks' private encoders, decoder and losses.
//! * [`losses`]: MMD, multi-kernel MMD, CORAL, gradient reversal, adversarial losses, schedules.
//! * [`train`]: the trainer (`graft adapt`), the run directory, and loading an adapted model.
//! * [`shallow`]: the classic methods on fixed features (TCA, JDA, GFK, SA, CORAL), no network.

pub mod autodial;
pub mod config;
pub mod data;
pub mod dsn;
pub mod losses;
pub mod model;
pub mod shallow;
pub mod text;
pub mod train;

pub use config::{AdaptConfig, Method};
pub use train::{adapt, load_adapted, AdaptSummary};
