//! Any bytes through the `config.toml` reader of `graft fit --config`
//! (`graft::train::config::FitConfig::from_toml_str`), then what `fit` does with a config
//! it read: validate it and write it back (`to_toml`, which must not panic on anything that
//! parsed). Errors are fine; panics, hangs and huge allocations are bugs.
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = graft::train::config::FitConfig::from_toml_str(Path::new("config.toml"), text) {
        let _ = config.validate();
        let _ = config.to_toml();
    }
});
