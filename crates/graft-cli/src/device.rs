//! `--device` resolved: the flag, else `GRAFT_DEVICE`, else `cpu`. The library never reads the
//! environment for its device; this is the only place that does.

use burn::tensor::Device;
use graft::device::DeviceSpec;
use graft::GraftError;

use crate::cli::DeviceArg;

/// The environment variable read when `--device` is not given.
pub(crate) const ENV: &str = "GRAFT_DEVICE";

impl DeviceArg {
    /// The setting's text and whether it came from `GRAFT_DEVICE`.
    fn value(&self) -> (String, bool) {
        match (&self.device, std::env::var(ENV)) {
            (Some(flag), _) => (flag.clone(), false),
            (None, Ok(env)) if !env.is_empty() => (env, true),
            _ => ("cpu".into(), false),
        }
    }

    /// Every device named (a list only `graft fit` takes).
    pub(crate) fn specs(&self) -> anyhow::Result<Vec<DeviceSpec>> {
        let (value, from_env) = self.value();
        DeviceSpec::parse_list(&value).map_err(|e| from_env_error(e, from_env))
    }

    /// The one device of a command that runs on one.
    pub(crate) fn spec(&self) -> anyhow::Result<DeviceSpec> {
        let (value, from_env) = self.value();
        DeviceSpec::parse_one(&value).map_err(|e| from_env_error(e, from_env))
    }

    /// The burn device of a command that runs on one, or an error naming the setting (and the
    /// feature this build lacks).
    pub(crate) fn device(&self) -> anyhow::Result<Device> {
        let (_, from_env) = self.value();
        self.spec()?.device().map_err(|e| from_env_error(e, from_env))
    }
}

impl DeviceArg {
    /// The burn devices of `graft fit`, which takes a list (`wgpu:0,1`: data-parallel).
    pub(crate) fn devices(&self) -> anyhow::Result<Vec<Device>> {
        let (_, from_env) = self.value();
        self.specs()?.iter().map(|s| s.device().map_err(|e| from_env_error(e, from_env))).collect()
    }
}

/// A refused value that came from `GRAFT_DEVICE` names the variable, not the flag.
fn from_env_error(err: GraftError, from_env: bool) -> anyhow::Error {
    match err {
        GraftError::InvalidSetting { value, reason, .. } if from_env => anyhow::anyhow!("invalid {ENV} `{value}`: {reason}"),
        other => other.into(),
    }
}
