//! Save and load any burn [`Module`] as a safetensors file, keyed by parameter path.
//!
//! A checkpoint holds every float parameter and every BatchNorm running statistic under its burn
//! module path joined with `.` (`trunk._blocks.3._bn1.gamma`, `trunk._blocks.3._bn1.running_mean`,
//! `head.layers.0.weight`), as row-major f32. Keying by path rather than by [`ParamId`] makes the
//! file readable by any tool and loadable into a freshly built model, whose ids are new.
//!
//! Loading replaces values only: each parameter keeps its [`ParamId`] and its gradient setting,
//! because the training loop freezes parameter groups and keys optimiser state by id before it
//! resumes from a checkpoint. Flags (a layer's training switch) are configuration, not state, and
//! are neither saved nor touched.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use graft_weights::{DType, StateDict};

use crate::{GraftError, Result};

/// Every float parameter and running statistic of `module`, by path.
///
/// Running statistics are read after a sync: BatchNorm's training pass parks its update per
/// thread, and the plain value lags one step behind until something syncs it. Taking a
/// validation snapshot ([`Module::valid`]) performs that sync and also drops autodiff, so the
/// values read are exactly what inference would use.
pub fn export<M: Module>(module: &M) -> StateDict {
    let snapshot = module.valid();
    let mut exporter = Exporter {
        path: Vec::new(),
        tensors: BTreeMap::new(),
    };
    snapshot.visit(&mut exporter);
    StateDict {
        tensors: exporter.tensors,
        metadata: BTreeMap::new(),
    }
}

/// Replace every float parameter and running statistic of `module` with the tensor of the same
/// path in `dict`.
///
/// Each value lands on its parameter's device and keeps its [`ParamId`] and gradient setting, so
/// a frozen parameter stays frozen. Every path must be present with the module's shape
/// ([`GraftError::MissingTensor`], [`GraftError::ShapeMismatch`]); `path` and `model_name` only
/// name the file and model in those errors. A tensor in `dict` that the module has no place for
/// is an error too ([`GraftError::Data`]): a checkpoint is the state of exactly one module, so an
/// extra tensor means the file was written for a different one (say a head with more layers).
pub fn import<M: Module>(module: M, dict: &StateDict, path: &Path, model_name: &str) -> Result<M> {
    // Fold pending per-thread running-statistic updates into the stored value first; otherwise
    // the next sync would overwrite what we load with the stale pending update.
    drop(module.valid());

    let mut importer = Importer {
        dict,
        file: path,
        model: model_name,
        path: Vec::new(),
        seen: Vec::new(),
        error: None,
    };
    let module = module.map(&mut importer);
    if let Some(error) = importer.error {
        return Err(error);
    }

    let seen: std::collections::BTreeSet<&str> = importer.seen.iter().map(String::as_str).collect();
    let extra: Vec<&str> = dict
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|k| !seen.contains(k))
        .collect();
    if !extra.is_empty() {
        let shown: Vec<&str> = extra.iter().take(5).copied().collect();
        let more = if extra.len() > shown.len() {
            format!(" and {} more", extra.len() - shown.len())
        } else {
            String::new()
        };
        return Err(GraftError::Data {
            path: path.to_path_buf(),
            reason: format!(
                "holds tensors {model_name} has no place for: {}{more}",
                shown.join(", ")
            ),
        });
    }
    Ok(module)
}

/// Write `module` to `path` as safetensors with `metadata` in the header. Atomic: a crash leaves
/// either the old file or the new one, never a torn checkpoint.
pub fn save<M: Module>(module: &M, path: &Path, metadata: BTreeMap<String, String>) -> Result<()> {
    let mut dict = export(module);
    dict.metadata = metadata;
    graft_weights::save_safetensors(path, &dict)?;
    Ok(())
}

/// The `__metadata__` of a safetensors file, read from its header alone (the tensors are not
/// read).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read;
    let bad = |reason: &str| GraftError::Data { path: path.into(), reason: format!("not a safetensors file: {reason}") };
    let mut file = std::fs::File::open(path).map_err(|e| GraftError::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("shorter than its header"))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad("header over 100 MB"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|_| bad("shorter than its header"))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(&e.to_string()))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default())
}

/// Read a checkpoint written by [`save`] into `module` (see [`import`]). Errors name the module by
/// its type.
pub fn load<M: Module>(module: M, path: &Path) -> Result<M> {
    let dict = graft_weights::load(path)?;
    let type_name = std::any::type_name::<M>();
    let short = type_name
        .split('<')
        .next()
        .unwrap_or(type_name)
        .rsplit("::")
        .next()
        .unwrap_or(type_name);
    import(module, &dict, path, short)
}

/// Collects tensors by path. The derive calls `enter_module` for every field, parameters
/// included, so the stack holds the full path when `visit_float` runs.
struct Exporter {
    path: Vec<String>,
    tensors: BTreeMap<String, graft_weights::Tensor>,
}

impl ModuleVisitor for Exporter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        let data = value
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("a float tensor converts to f32");
        self.tensors.insert(
            self.path.join("."),
            graft_weights::Tensor {
                shape,
                dtype: DType::F32,
                data,
            },
        );
    }
}

/// Swaps each parameter's value for the dict's. A mapper cannot fail, so the first error is kept
/// and the remaining parameters pass through untouched.
struct Importer<'a> {
    dict: &'a StateDict,
    file: &'a Path,
    model: &'a str,
    path: Vec<String>,
    seen: Vec<String>,
    error: Option<GraftError>,
}

impl Importer<'_> {
    fn lookup(&self, key: &str, expected: &[usize]) -> Result<&graft_weights::Tensor> {
        let tensor = self
            .dict
            .tensors
            .get(key)
            .ok_or_else(|| GraftError::MissingTensor {
                path: self.file.to_path_buf(),
                tensor: key.to_string(),
                model: self.model.to_string(),
            })?;
        if tensor.shape != expected || tensor.data.len() != expected.iter().product::<usize>() {
            return Err(GraftError::ShapeMismatch {
                path: self.file.to_path_buf(),
                tensor: key.to_string(),
                model: self.model.to_string(),
                expected: expected.to_vec(),
                found: tensor.shape.clone(),
            });
        }
        Ok(tensor)
    }
}

impl ModuleMapper for Importer<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let key = self.path.join(".");
        // `lazy_*` read shape and device without running a pending initialiser.
        let expected = param.lazy_shape().to_vec();
        let tensor = match self.lookup(&key, &expected) {
            Ok(tensor) => tensor,
            Err(error) => {
                self.error = Some(error);
                return param;
            }
        };
        let device = param.lazy_device();
        let value = Tensor::<D>::from_data(TensorData::new(tensor.data.clone(), expected), &device);
        self.seen.push(key);
        // Keeps the id, the device and the configured require-grad (frozen stays frozen).
        let id = param.id;
        param.transform_for_load(value, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
    use burn::tensor::Device;

    #[derive(Module, Debug)]
    struct Tiny {
        conv: Conv2d,
        bn: BatchNorm,
        blocks: Vec<Linear>,
    }

    impl Tiny {
        fn new(device: &Device) -> Self {
            Tiny {
                conv: Conv2dConfig::new([3, 4], [3, 3]).init(device),
                bn: BatchNormConfig::new(4).init(device),
                blocks: vec![
                    LinearConfig::new(4, 5).init(device),
                    LinearConfig::new(5, 2).init(device),
                ],
            }
        }

        fn forward(&self, x: Tensor<4>) -> Tensor<2> {
            let x = self.bn.forward(self.conv.forward(x));
            let mut x: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
            for block in &self.blocks {
                x = block.forward(x);
            }
            x
        }
    }

    fn input(device: &Device) -> Tensor<4> {
        let data: Vec<f32> = (0..2 * 3 * 6 * 6)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(data, [2, 3, 6, 6]), device)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// A Tiny whose running statistics moved away from their (0, 1) defaults, by a training
    /// forward pass on an autodiff device.
    fn trained(device: &Device) -> Tiny {
        let tiny = Tiny::new(device);
        let _ = tiny.forward(input(device));
        tiny
    }

    fn temp_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("graft-ckpt-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("model.safetensors")
    }

    #[test]
    fn export_names_every_parameter_and_running_stat_by_path() {
        let dict = export(&Tiny::new(&Device::flex()));
        let keys: Vec<&str> = dict.tensors.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "blocks.0.bias",
                "blocks.0.weight",
                "blocks.1.bias",
                "blocks.1.weight",
                "bn.beta",
                "bn.gamma",
                "bn.running_mean",
                "bn.running_var",
                "conv.bias",
                "conv.weight",
            ]
        );
        assert_eq!(dict.tensors["conv.weight"].shape, [4, 3, 3, 3]);
        assert_eq!(dict.tensors["blocks.0.weight"].shape, [4, 5]);
        assert_eq!(dict.tensors["bn.running_var"].data, [1.0; 4]);
    }

    #[test]
    fn export_reads_synced_running_stats() {
        let device = Device::flex().autodiff();
        let tiny = trained(&device);
        let dict = export(&tiny);
        let mean = values(tiny.bn.running_mean.value_sync());
        assert!(
            mean.iter().any(|v| *v != 0.0),
            "the forward pass moved the running mean"
        );
        assert_eq!(dict.tensors["bn.running_mean"].data, mean);
        assert_eq!(
            dict.tensors["bn.running_var"].data,
            values(tiny.bn.running_var.value_sync())
        );
    }

    #[test]
    fn save_then_load_reproduces_the_module_exactly() {
        let device = Device::flex().autodiff();
        let original = trained(&device);
        let file = temp_file("roundtrip");
        let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
        save(&original, &file, meta).unwrap();
        assert_eq!(graft_weights::load(&file).unwrap().metadata["epoch"], "3");

        let plain = Device::flex();
        let fresh = Tiny::new(&plain);
        let loaded = load(fresh, &file).unwrap();

        let expected = values(original.valid().forward(input(&plain)));
        let got = values(loaded.forward(input(&plain)));
        assert_eq!(
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(
            values(loaded.bn.running_mean.value_sync()),
            values(original.bn.running_mean.value_sync())
        );
        assert_eq!(
            values(loaded.bn.running_var.value_sync()),
            values(original.bn.running_var.value_sync())
        );
        std::fs::remove_dir_all(file.parent().unwrap()).ok();
    }

    #[test]
    fn load_overrides_pending_running_stat_updates() {
        // The destination has its own pending BN update; the loaded statistics must win.
        let device = Device::flex().autodiff();
        let source = export(&Tiny::new(&device));
        let dest = trained(&device);
        let loaded = import(dest, &source, Path::new("x.safetensors"), "Tiny").unwrap();
        assert_eq!(
            values(loaded.bn.running_mean.value_sync()),
            source.tensors["bn.running_mean"].data
        );
    }

    #[test]
    fn missing_tensor_and_wrong_shape_are_reported() {
        let device = Device::flex();
        let file = Path::new("ckpt.safetensors");
        let mut dict = export(&Tiny::new(&device));
        dict.tensors.remove("bn.running_var");
        match import(Tiny::new(&device), &dict, file, "Tiny") {
            Err(GraftError::MissingTensor {
                tensor,
                model,
                path,
            }) => {
                assert_eq!(tensor, "bn.running_var");
                assert_eq!(model, "Tiny");
                assert_eq!(path, file);
            }
            other => panic!("expected MissingTensor, got {other:?}"),
        }

        let mut dict = export(&Tiny::new(&device));
        dict.tensors.insert(
            "blocks.1.weight".into(),
            graft_weights::Tensor {
                shape: vec![2, 5],
                dtype: DType::F32,
                data: vec![0.0; 10],
            },
        );
        match import(Tiny::new(&device), &dict, file, "Tiny") {
            Err(GraftError::ShapeMismatch {
                tensor,
                expected,
                found,
                ..
            }) => {
                assert_eq!(tensor, "blocks.1.weight");
                assert_eq!(expected, [5, 2]);
                assert_eq!(found, [2, 5]);
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }

        let mut dict = export(&Tiny::new(&device));
        dict.tensors.insert(
            "blocks.2.weight".into(),
            dict.tensors["blocks.1.weight"].clone(),
        );
        match import(Tiny::new(&device), &dict, file, "Tiny") {
            Err(GraftError::Data { reason, .. }) => {
                assert!(reason.contains("blocks.2.weight"), "{reason}")
            }
            other => panic!("expected Data, got {other:?}"),
        }
    }

    #[test]
    fn load_keeps_ids_devices_and_frozen_params() {
        let device = Device::flex().autodiff();
        let dict = export(&trained(&device));

        let mut dest = Tiny::new(&device);
        dest.conv = dest.conv.freeze();
        dest.bn = dest.bn.set_require_grad(false);
        let ids_before = burn::module::list_param_ids(&dest);

        let loaded = import(dest, &dict, Path::new("x"), "Tiny").unwrap();
        assert_eq!(burn::module::list_param_ids(&loaded), ids_before);
        assert!(!loaded.conv.weight.val().is_require_grad());
        assert!(!loaded.bn.gamma.val().is_require_grad());
        assert!(loaded.blocks[0].weight.val().is_require_grad());
        assert!(loaded.conv.weight.val().is_autodiff());
        assert_eq!(
            values(loaded.conv.weight.val()),
            dict.tensors["conv.weight"].data
        );

        // Still trainable where it should be, and only there.
        let grads = loaded.forward(input(&device)).sum().backward();
        assert!(loaded.blocks[1].weight.grad(&grads).is_some());
        assert!(loaded.conv.weight.grad(&grads).is_none());

        // And a later train() keeps the freeze (the configured flag, not just the tensor).
        let again = loaded.valid().train();
        assert!(!again.conv.weight.val().is_require_grad());
        assert!(again.blocks[0].weight.val().is_require_grad());
    }
}
