//! Which burn device graft computes on.

use burn::tensor::Device;

/// The device for graft's work: CUDA when built with the `cuda` feature and
/// `GRAFT_DEVICE` is not `cpu`; the pure-Rust flex CPU backend otherwise.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if std::env::var("GRAFT_DEVICE").map(|v| v != "cpu").unwrap_or(true) {
            return Device::cuda(0);
        }
    }
    Device::flex()
}

/// A short name of the device for logs and JSON output.
pub fn device_name(device: &Device) -> String {
    format!("{device:?}")
}
