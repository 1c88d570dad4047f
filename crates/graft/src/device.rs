//! Which burn device graft computes on: a typed [`DeviceSpec`] (`cpu`, `wgpu[:N]`, `cuda[:N]`),
//! parsed from the `device` setting, and the burn [`Device`] it names.
//!
//! The library never reads the environment for this: the caller (the CLI, from `--device` or
//! `GRAFT_DEVICE`) passes the device. `cpu` is burn's flex backend, where graft's own kernels,
//! channels-last paths and batch splitting run; every other device runs plain burn modules on
//! whole batches (see [`is_cpu`]).

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::{GraftError, Result};

/// The setting a device is read from (`--device`, `GRAFT_DEVICE`).
pub const SETTING: &str = "device";

/// What the `device` setting accepts, for error messages.
const EXPECTED: &str = "expected cpu, wgpu, wgpu:N, cuda or cuda:N (a list such as wgpu:0,1 only where several devices are supported)";

/// One compute device, as the `device` setting names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    /// burn's flex CPU backend with graft's kernels.
    #[default]
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12). `None`: the adapter wgpu ranks best
    /// (`wgpu`); `Some(n)`: the n-th discrete GPU (`wgpu:n`).
    Wgpu(Option<usize>),
    /// An NVIDIA GPU through CUDA, by index (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// Parses one device or a comma-separated list of the same kind (`wgpu:0,1` or
    /// `wgpu:0,wgpu:1`): every device the setting names, in order, without repeats (but for
    /// `cpu`, which may repeat: `cpu,cpu` checks the data-parallel path without GPUs).
    pub fn parse_list(value: &str) -> Result<Vec<DeviceSpec>> {
        let bad = |reason: String| GraftError::setting(SETTING, value, reason);
        let mut specs: Vec<DeviceSpec> = Vec::new();
        // The kind of the previous item, so that `wgpu:0,1` reads `1` as `wgpu:1`.
        let mut kind: Option<&str> = None;
        for item in value.split(',') {
            let item = item.trim();
            let spec = match (item.parse::<usize>(), kind) {
                (Ok(n), Some("wgpu")) => DeviceSpec::Wgpu(Some(n)),
                (Ok(n), Some("cuda")) => DeviceSpec::Cuda(n),
                _ => item.parse::<DeviceSpec>().map_err(|_| bad(EXPECTED.into()))?,
            };
            kind = Some(spec.kind());
            // The CPU may repeat (`cpu,cpu`): one more replica on the same cores, no faster, but
            // it runs the data-parallel path where there is no second GPU (its tests do).
            if spec != DeviceSpec::Cpu && specs.contains(&spec) {
                return Err(bad(format!("{spec} is named twice")));
            }
            if specs.first().is_some_and(|first| first.kind() != spec.kind()) {
                return Err(bad("all devices of a list must be of one kind".into()));
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    /// Parses a setting that must name exactly one device; a list is refused naming the setting.
    pub fn parse_one(value: &str) -> Result<DeviceSpec> {
        let specs = Self::parse_list(value)?;
        match specs.as_slice() {
            [one] => Ok(*one),
            _ => Err(GraftError::setting(SETTING, value, "this command runs on one device; only `graft fit` takes a list")),
        }
    }

    /// `cpu`, `wgpu` or `cuda`.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceSpec::Cpu => "cpu",
            DeviceSpec::Wgpu(_) => "wgpu",
            DeviceSpec::Cuda(_) => "cuda",
        }
    }

    /// The cargo feature a binary needs for this device (`None`: always built).
    pub fn feature(&self) -> Option<&'static str> {
        match self {
            DeviceSpec::Cpu => None,
            DeviceSpec::Wgpu(_) => Some("wgpu"),
            DeviceSpec::Cuda(_) => Some("cuda"),
        }
    }

    /// The burn device, or an error naming the setting and the cargo feature this build lacks.
    pub fn device(&self) -> Result<Device> {
        match *self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(index) => Ok(Device::wgpu(match index {
                None => burn::tensor::DeviceKind::DefaultDevice,
                Some(n) => burn::tensor::DeviceKind::DiscreteGpu(n),
            })),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => Ok(Device::cuda(index)),
            #[allow(unreachable_patterns)]
            other => Err(GraftError::setting(
                SETTING,
                &other.to_string(),
                format!(
                    "this graft was built without the `{}` feature (rebuild with `cargo build --release --features graft-cli/{}`)",
                    other.feature().unwrap_or_default(),
                    other.feature().unwrap_or_default()
                ),
            )),
        }
    }

    /// The spec whose [`device`](Self::device) is `device` (with or without autodiff), if any
    /// of the devices this build knows: how a run records the device it ran on.
    pub fn of(device: &Device) -> Option<DeviceSpec> {
        let plain = device.clone().without_autodiff();
        let mut candidates = vec![DeviceSpec::Cpu];
        for n in 0..16 {
            candidates.extend([DeviceSpec::Wgpu(Some(n)), DeviceSpec::Cuda(n)]);
        }
        candidates.push(DeviceSpec::Wgpu(None));
        candidates.into_iter().find(|spec| spec.device().is_ok_and(|d| d == plain))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = GraftError;

    /// One device: `cpu`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N` (lower case, no spaces).
    fn from_str(value: &str) -> Result<Self> {
        let bad = || GraftError::setting(SETTING, value, EXPECTED);
        let (kind, index) = match value.split_once(':') {
            Some((kind, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => (kind, Some(n.parse::<usize>().map_err(|_| bad())?)),
            Some(_) => return Err(bad()),
            None => (value, None),
        };
        match (kind, index) {
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("wgpu", index) => Ok(DeviceSpec::Wgpu(index)),
            ("cuda", index) => Ok(DeviceSpec::Cuda(index.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

/// The device of a run recorded in its `model.json` (`"cpu"`, `"wgpu:0"`, …); a device this
/// build cannot name back is written as burn prints it.
pub fn record(device: &Device) -> String {
    DeviceSpec::of(device).map(|s| s.to_string()).unwrap_or_else(|| device_name(device))
}

/// Whether `device` is the CPU (flex, with or without autodiff): where graft's own kernels,
/// channels-last paths and batch splitting apply. Everything else gets whole batches through
/// burn's own modules.
pub fn is_cpu(device: &Device) -> bool {
    crate::kernels::supported(device)
}

/// The CPU device (flex): the default of the `device` setting.
pub fn default_device() -> Device {
    Device::flex()
}

/// A short name of the device for logs and JSON output.
pub fn device_name(device: &Device) -> String {
    format!("{device:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for (text, spec) in [("cpu", DeviceSpec::Cpu), ("wgpu", DeviceSpec::Wgpu(None)), ("wgpu:1", DeviceSpec::Wgpu(Some(1))), ("cuda:0", DeviceSpec::Cuda(0))] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec);
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["", "gpu", "CPU", "cpu:0", "wgpu:", "wgpu:x", "wgpu:-1", "cuda:1:2", " cpu", "metal"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid device `{bad}`: expected cpu, wgpu")), "{err}");
        }
    }

    #[test]
    fn lists_parse_to_several_devices_of_one_kind() {
        let two = vec![DeviceSpec::Wgpu(Some(0)), DeviceSpec::Wgpu(Some(1))];
        assert_eq!(DeviceSpec::parse_list("wgpu:0,1").unwrap(), two);
        assert_eq!(DeviceSpec::parse_list("wgpu:0,wgpu:1").unwrap(), two);
        assert_eq!(DeviceSpec::parse_list("cuda:2,3").unwrap(), vec![DeviceSpec::Cuda(2), DeviceSpec::Cuda(3)]);
        assert_eq!(DeviceSpec::parse_list("cpu").unwrap(), vec![DeviceSpec::Cpu]);
        for (bad, reason) in [("wgpu:0,0", "wgpu:0 is named twice"), ("wgpu:0,cuda:1", "of one kind"), ("cpu,1", "expected cpu"), ("wgpu:0,", "expected cpu")] {
            let err = DeviceSpec::parse_list(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid device `{bad}`")) && err.contains(reason), "{err}");
        }
        let err = DeviceSpec::parse_one("wgpu:0,1").unwrap_err();
        assert!(matches!(&err, GraftError::InvalidSetting { setting, .. } if setting == "device"), "{err}");
        assert!(err.to_string().contains("runs on one device"), "{err}");
        assert_eq!(DeviceSpec::parse_one("wgpu:1").unwrap(), DeviceSpec::Wgpu(Some(1)));
    }

    /// A device this build lacks is refused naming the setting and the feature; the CPU always
    /// resolves, to flex, and is recorded as `cpu`.
    #[test]
    fn devices_resolve_or_name_the_missing_feature() {
        let cpu = DeviceSpec::Cpu.device().unwrap();
        assert!(is_cpu(&cpu) && is_cpu(&cpu.clone().autodiff()));
        assert_eq!(record(&cpu.autodiff()), "cpu");
        #[cfg(not(feature = "cuda"))]
        {
            let err = DeviceSpec::Cuda(1).device().unwrap_err().to_string();
            assert_eq!(err, "invalid device `cuda:1`: this graft was built without the `cuda` feature (rebuild with `cargo build --release --features graft-cli/cuda`)");
        }
        #[cfg(not(feature = "wgpu"))]
        {
            let err = DeviceSpec::Wgpu(None).device().unwrap_err().to_string();
            assert!(err.starts_with("invalid device `wgpu`: this graft was built without the `wgpu` feature"), "{err}");
        }
        #[cfg(feature = "wgpu")]
        {
            // Lazy: naming a wgpu device initialises nothing, and it is not the CPU.
            let gpu = DeviceSpec::Wgpu(Some(1)).device().unwrap();
            assert!(!is_cpu(&gpu));
            assert_eq!(record(&gpu), "wgpu:1");
        }
    }
}
