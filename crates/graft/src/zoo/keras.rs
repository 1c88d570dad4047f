//! Keras `.h5` weights, read in pure Rust (no libhdf5), and moved into burn layers.
//!
//! Three layouts, one result:
//!
//! * Keras 2 (`model.save('m.h5')`) stores `model_weights/<layer>/<layer>/kernel:0`
//!   (`model.save_weights('w.h5')`, and the Keras Applications files such as
//!   `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`, put the layer groups at the root);
//! * Keras 3's legacy `.h5` (`model.save('m.h5')`) stores `model_weights/<layer>/<sublayer>/kernel`
//!   (a nested model, such as the MobileNetV2 trunk of a fine-tuned classifier, is one
//!   top-level layer whose sublayers are its layers);
//! * Keras 3's native `.weights.h5` (`model.save_weights('m.weights.h5')`) stores numbered
//!   variables, `layers/<class>/vars/<i>`, where `<class>` is the layer's class in snake case
//!   made unique by a counter (`conv2d_3`: Keras's `saving_lib._save_container_state`, which
//!   deliberately does not address layers by name) and the `vars` group carries the layer's
//!   name as its `name` attribute (`saving_lib.H5IOStore._create_h5_group`). The variables are
//!   `layer._trainable_variables + layer._non_trainable_variables` in creation order
//!   (`Layer.save_own_variables`): Conv2D, DepthwiseConv2D and Dense `kernel`, then `bias`
//!   (`build` of `keras/src/layers/convolutional/base_conv.py`, `base_depthwise_conv.py`,
//!   `core/dense.py`); BatchNormalization `gamma`, `beta` (trainable), then `moving_mean`,
//!   `moving_variance` (`normalization/batch_normalization.py`). The file does not say a
//!   layer's class, so [`keras3_var_names`] tells them apart by the variables' ranks.
//!
//! All become `<layer>/<weight>`: `Conv1/kernel`, `bn_Conv1/moving_mean`, `dense/bias`. Tensors keep Keras's layout (convolution kernels `[kh, kw, in, out]`,
//! depthwise `[kh, kw, channels, multiplier]`, Dense `[in, out]`); [`hwio_to_oihw`] and
//! [`depthwise_to_oihw`] transpose them for burn (see [`super::table::Layout`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use graft_weights::{DType, StateDict};
use hdf5_reader::group::Group;
use hdf5_reader::{Datatype, Hdf5File, OpenOptions};

use crate::{GraftError, Result};

/// Deeper nesting than this is not a Keras file (and guards against link cycles).
const MAX_DEPTH: usize = 16;
/// No single Keras weight comes near this (VGG16's largest kernel is 411 MB); a larger extent
/// means a corrupt or hostile header.
const MAX_READ_BYTES: usize = 1 << 30;
/// Deflate, the only compression Keras could use, expands at most ~1032:1; a dataset
/// claiming more than that over the whole file is a lie, refused before allocating.
const MAX_EXPANSION: u64 = 1032;

/// Reads every layer weight of a Keras `.h5` file as `<layer>/<weight>` (see the module docs).
/// Optimizer state is left out; non-float datasets (counters, seeds) are skipped. Weights
/// holding NaN or an infinity are refused (as `graft_weights::load` refuses them).
pub fn load_keras_h5(path: &Path) -> Result<StateDict> {
    // A FIFO or a device is refused here instead of blocking (or reading forever).
    let file = graft_weights::fsio::open_regular(path).map_err(|e| GraftError::io(path, e))?;
    let storage = hdf5_reader::storage::FileStorage::from_file(file)
        .map_err(|e| GraftError::Data { path: path.to_path_buf(), reason: format!("not a readable HDF5 file: {e}") })?;
    let file = Hdf5File::from_storage_with_options(Arc::new(storage), OpenOptions::default().with_max_read_bytes(MAX_READ_BYTES))
        .map_err(|e| GraftError::Data { path: path.to_path_buf(), reason: format!("not a readable HDF5 file: {e}") })?;
    from_hdf5(path, &file)
}

/// [`load_keras_h5`] for a file already in memory; `path` only names it in errors.
pub fn keras_h5_from_bytes(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let file = Hdf5File::from_bytes_with_options(bytes, OpenOptions::default().with_max_read_bytes(MAX_READ_BYTES))
        .map_err(|e| GraftError::Data { path: path.to_path_buf(), reason: format!("not a readable HDF5 file: {e}") })?;
    from_hdf5(path, &file)
}

fn from_hdf5(path: &Path, file: &Hdf5File) -> Result<StateDict> {
    let bad = |reason: String| GraftError::Data { path: path.to_path_buf(), reason };
    let root = file.root_group().map_err(|e| bad(format!("cannot read the root group: {e}")))?;
    // `model.save('m.h5')` nests the weights under `model_weights`; Keras 2's
    // `model.save_weights('w.h5')` puts the layer groups at the root.
    let base = root.group("model_weights").unwrap_or(root);
    let mut dict = StateDict::default();
    let mut trail = Vec::new();
    // Per dataset: possible for this file, and never over MAX_READ_BYTES. All datasets
    // together: the same expansion bound, so that one dataset linked from many groups cannot
    // be read over and over.
    let total = file.storage().len().saturating_mul(MAX_EXPANSION).saturating_add(1 << 20);
    let mut walker = Walker {
        path,
        max_bytes: total.min(MAX_READ_BYTES as u64),
        budget: total,
        visited: HashSet::new(),
    };
    walker.visited.insert(base.address());
    walker.walk(&base, &mut trail, &mut dict)?;
    dict.check_finite(path)?;
    if dict.tensors.is_empty() {
        return Err(bad("holds no Keras layer weights (expected model_weights/<layer>/<layer>/<weight>)".into()));
    }
    if let Some(version) = base.attribute("keras_version").ok().and_then(|a| a.read_string().ok()) {
        dict.metadata.insert("keras_version".into(), version);
    }
    dict.metadata.insert("format".into(), "keras-h5".into());
    Ok(dict)
}

/// The state of one walk over a file's groups.
struct Walker<'a> {
    path: &'a Path,
    /// Largest dataset, in bytes.
    max_bytes: u64,
    /// Bytes all datasets together may still take.
    budget: u64,
    /// Object-header addresses of the groups and datasets already reached. HDF5 hard links
    /// can share one subtree between many parents (a 22 KB file of 15 levels x 4 links is
    /// 4^15 paths); each object is read once, whatever links lead to it again.
    visited: HashSet<u64>,
}

impl Walker<'_> {
    fn walk(&mut self, group: &Group, trail: &mut Vec<String>, dict: &mut StateDict) -> Result<()> {
        let path = self.path;
        let bad = |reason: String| GraftError::Data { path: path.to_path_buf(), reason };
        let here = |trail: &[String]| format!("/{}", trail.join("/"));
        if trail.len() > MAX_DEPTH {
            return Err(bad(format!("groups nested deeper than {MAX_DEPTH} at {}", here(trail))));
        }
        let (groups, datasets) = group.members().map_err(|e| bad(format!("cannot list {}: {e}", here(trail))))?;
        for dataset in datasets {
            trail.push(dataset.name().to_string());
            let location = here(trail);
            let name = keras_tensor_name(trail);
            trail.pop();
            let Some(name) = name else { continue };
            let Some(tensor) = self.read(&dataset, &location)? else { continue };
            if dict.tensors.contains_key(&name) {
                return Err(bad(format!("{location}: a second tensor named `{name}` (two nested models with a layer of the same name)")));
            }
            dict.tensors.insert(name, tensor);
        }
        for sub in groups {
            // Keras 2 `save_weights` files have no `model_weights`; optimizer state is not a weight.
            if trail.is_empty() && (sub.name() == "optimizer_weights" || sub.name() == "optimizer") {
                continue;
            }
            if !self.visited.insert(sub.address()) {
                continue;
            }
            trail.push(sub.name().to_string());
            if sub.name() == "vars" {
                self.read_vars(&sub, trail, dict)?;
            } else {
                self.walk(&sub, trail, dict)?;
            }
            trail.pop();
        }
        Ok(())
    }

    /// A Keras 3 `.weights.h5` variable group (`…/<class>/vars`, see the module docs): its
    /// numbered datasets as `<layer>/<weight>`, the layer named by the group's `name` attribute.
    fn read_vars(&mut self, group: &Group, trail: &mut Vec<String>, dict: &mut StateDict) -> Result<()> {
        let path = self.path;
        let here = format!("/{}", trail.join("/"));
        let bad = |reason: String| GraftError::Data { path: path.to_path_buf(), reason };
        let (_, datasets) = group.members().map_err(|e| bad(format!("cannot list {here}: {e}")))?;
        if datasets.is_empty() {
            return Ok(()); // a layer without variables (the model itself, pooling, ReLU)
        }
        let Some(layer) = group.attribute("name").ok().and_then(|a| a.read_string().ok()) else {
            return Err(bad(format!(
                "{here}: this Keras 3 `.weights.h5` file does not name its layers (only newer Keras writes the layer name beside its variables); save the weights again with a current Keras, or the model with `model.save(\"model.h5\")`"
            )));
        };
        let mut vars = Vec::new();
        for dataset in &datasets {
            let location = format!("{here}/{}", dataset.name());
            let index: usize = dataset.name().parse().map_err(|_| bad(format!("{location}: a Keras 3 variable is named by its index")))?;
            if let Some(tensor) = self.read(dataset, &location)? {
                vars.push((index, tensor));
            }
        }
        vars.sort_by_key(|(index, _)| *index);
        let shapes: Vec<&[usize]> = vars.iter().map(|(_, t)| t.shape.as_slice()).collect();
        let names = keras3_var_names(&shapes);
        for ((index, tensor), weight) in vars.into_iter().zip(names) {
            let name = format!("{layer}/{weight}");
            if dict.tensors.contains_key(&name) {
                return Err(bad(format!("{here}/{index}: a second tensor named `{name}` (two layers named `{layer}`)")));
            }
            dict.tensors.insert(name, tensor);
        }
        Ok(())
    }

    /// One float dataset, checked for size before allocating; `None` for a non-float one
    /// (counters, seeds) or one already read through another link.
    fn read(&mut self, dataset: &hdf5_reader::Dataset, location: &str) -> Result<Option<graft_weights::Tensor>> {
        let path = self.path;
        let bad = |reason: String| GraftError::Data { path: path.to_path_buf(), reason };
        let float_size = match dataset.dtype() {
            Datatype::FloatingPoint { size, .. } => *size,
            _ => return Ok(None),
        };
        if !self.visited.insert(dataset.address()) {
            return Ok(None);
        }
        let shape: Vec<usize> = dataset.shape().iter().map(|&d| d as usize).collect();
        let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(format!("{location}: shape {shape:?} overflows")))?;
        // Before allocating: the header's extent must be possible for this file.
        let bytes = (numel as u64).saturating_mul(float_size as u64);
        if bytes > self.max_bytes {
            return Err(bad(format!("{location}: shape {shape:?} needs {bytes} bytes, impossible for a file of this size")));
        }
        if bytes > self.budget {
            return Err(bad(format!("{location}: the datasets read so far and this one need more bytes than a file of this size can hold")));
        }
        self.budget -= bytes;
        let read_err = |e: hdf5_reader::error::Error| bad(format!("cannot read {location}: {e}"));
        let (data, dtype) = match float_size {
            4 => {
                let mut data = vec![0f32; numel];
                dataset.read_into(&mut data).map_err(read_err)?;
                (data, DType::F32)
            }
            8 => {
                let mut data = vec![0f64; numel];
                dataset.read_into(&mut data).map_err(read_err)?;
                (data.into_iter().map(|x| x as f32).collect(), DType::F64)
            }
            size => return Err(bad(format!("{location}: {}-bit floats are not supported", size as usize * 8))),
        };
        Ok(Some(graft_weights::Tensor { shape, dtype, data }))
    }
}

/// The weight names of one Keras 3 layer's numbered variables, told from their shapes (see the
/// module docs for the order): four vectors are a BatchNormalization's `gamma`, `beta`,
/// `moving_mean`, `moving_variance`; a first variable of rank 2 or more is a Dense or
/// convolution `kernel` (DepthwiseConv2D's too, as Keras 3 names it), a vector after it its
/// `bias`. Anything else keeps its index as its name (`vars/2`), which no architecture reads.
pub fn keras3_var_names(shapes: &[&[usize]]) -> Vec<String> {
    let vector = |s: &&[usize]| s.len() == 1;
    match shapes {
        [a, b, c, d] if [a, b, c, d].into_iter().all(vector) => ["gamma", "beta", "moving_mean", "moving_variance"].map(String::from).to_vec(),
        [kernel] if kernel.len() >= 2 => vec!["kernel".into()],
        [kernel, bias] if kernel.len() >= 2 && bias.len() == 1 => vec!["kernel".into(), "bias".into()],
        _ => (0..shapes.len()).map(|i| format!("vars/{i}")).collect(),
    }
}

/// The state-dict name of a dataset from its path below `model_weights`: the last group is
/// the layer, the dataset the weight, Keras 2's `:0` suffix dropped.
/// `["mobilenetv2_1.00_160", "Conv1", "kernel"]` → `Conv1/kernel`;
/// `["dense", "dense", "bias:0"]` → `dense/bias`.
pub fn keras_tensor_name<S: AsRef<str>>(components: &[S]) -> Option<String> {
    let [.., layer, weight] = components else { return None };
    let weight = weight.as_ref();
    let weight = match weight.rsplit_once(':') {
        Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => weight,
    };
    Some(format!("{}/{weight}", layer.as_ref()))
}

/// `[kh, kw, in, out]` (Keras) → `[out, in, kh, kw]` (burn). Also right for grouped
/// convolutions, whose Keras kernel is `[kh, kw, in / groups, out]`.
pub fn hwio_to_oihw(src: &[f32], [kh, kw, cin, cout]: [usize; 4]) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    for h in 0..kh {
        for x in 0..kw {
            for i in 0..cin {
                for o in 0..cout {
                    dst[((o * cin + i) * kh + h) * kw + x] = src[((h * kw + x) * cin + i) * cout + o];
                }
            }
        }
    }
    dst
}

/// Depthwise `[kh, kw, channels, multiplier]` (Keras) → `[channels · multiplier, 1, kh, kw]`
/// (burn, groups = channels); output channel `c · multiplier + m` as in TensorFlow.
pub fn depthwise_to_oihw(src: &[f32], [kh, kw, channels, multiplier]: [usize; 4]) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    for h in 0..kh {
        for x in 0..kw {
            for c in 0..channels {
                for m in 0..multiplier {
                    dst[((c * multiplier + m) * kh + h) * kw + x] = src[((h * kw + x) * channels + c) * multiplier + m];
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_from_both_layouts() {
        // Keras 3 legacy .h5, nested trunk.
        assert_eq!(keras_tensor_name(&["mobilenetv2_1.00_160", "Conv1", "kernel"]).as_deref(), Some("Conv1/kernel"));
        // Keras 3, top-level layer.
        assert_eq!(keras_tensor_name(&["dense", "dense", "bias"]).as_deref(), Some("dense/bias"));
        // Keras 2: `:0` suffixes, depthwise kernels by their own name.
        assert_eq!(keras_tensor_name(&["conv_dw", "conv_dw", "depthwise_kernel:0"]).as_deref(), Some("conv_dw/depthwise_kernel"));
        assert_eq!(keras_tensor_name(&["model", "block_1_expand_BN", "moving_mean:0"]).as_deref(), Some("block_1_expand_BN/moving_mean"));
        assert_eq!(keras_tensor_name(&["weird:name"]), None);
        assert_eq!(keras_tensor_name(&["l", "a:b"]).as_deref(), Some("l/a:b"));
    }

    #[test]
    fn keras3_variables_are_named_by_their_ranks() {
        let names = |shapes: &[&[usize]]| keras3_var_names(shapes);
        assert_eq!(names(&[&[8], &[8], &[8], &[8]]), ["gamma", "beta", "moving_mean", "moving_variance"]);
        assert_eq!(names(&[&[3, 3, 3, 8], &[8]]), ["kernel", "bias"]);
        assert_eq!(names(&[&[1, 1, 8, 4]]), ["kernel"]);
        assert_eq!(names(&[&[16, 10], &[10]]), ["kernel", "bias"]);
        // Not a layer graft knows (a Normalization's mean and variance): indices kept.
        assert_eq!(names(&[&[3], &[3]]), ["vars/0", "vars/1"]);
    }

    #[test]
    fn kernel_transposes() {
        // [kh=1, kw=2, in=2, out=3], value = 1000h + 100x + 10i + o.
        let (kh, kw, cin, cout) = (1, 2, 2, 3);
        let mut src = vec![0f32; kh * kw * cin * cout];
        for x in 0..kw {
            for i in 0..cin {
                for o in 0..cout {
                    src[(x * cin + i) * cout + o] = (100 * x + 10 * i + o) as f32;
                }
            }
        }
        let dst = hwio_to_oihw(&src, [kh, kw, cin, cout]);
        // [out, in, kh, kw]: element (o=2, i=1, h=0, x=1).
        assert_eq!(dst[((2 * cin + 1) * kh) * kw + 1], 112.0);
        // Depthwise with multiplier 2: channel c·2 + m.
        let src: Vec<f32> = (0..(kw * 2 * 2)).map(|v| v as f32).collect(); // [1, 2, C=2, M=2]
        let dst = depthwise_to_oihw(&src, [1, kw, 2, 2]);
        // out channel 3 = (c=1, m=1), x=1 → src index (1·2 + 1)·2 + 1 = 7.
        assert_eq!(dst[3 * kw + 1], 7.0);
    }

    #[test]
    fn non_hdf5_files_are_reported_with_their_path() {
        let dir = std::env::temp_dir().join(format!("graft-keras-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.h5");
        std::fs::write(&file, b"not hdf5 at all").unwrap();
        let err = load_keras_h5(&file).unwrap_err().to_string();
        assert!(err.contains("model.h5") && err.contains("HDF5"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn fixture(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    #[test]
    fn a_small_keras2_file_loads() {
        // Written by fuzz/make-seeds (hdf5-pure), the hdf5 fuzz target's seed.
        let dict = load_keras_h5(&fixture("../../fuzz/seeds/hdf5/keras.h5")).unwrap();
        let kernel = &dict.tensors["dense/kernel"];
        assert_eq!(kernel.shape, vec![2, 3]);
        assert_eq!(kernel.data, vec![0.5, -1.0, 2.0, 0.25, 1.5, -0.75]);
        assert_eq!(dict.tensors["bn/moving_mean"].dtype, DType::F64);
        assert_eq!(dict.tensors["bn/gamma"].data, vec![1.0, 1.0]);
    }

    #[test]
    fn a_subtree_shared_by_hard_links_is_read_once() {
        // 15 levels of groups, each hard-linked 4 times from the level above, one dataset at
        // the bottom (tests/fixtures/make_hostile_h5.py): 4^15 paths, 16 objects. Following
        // every path took forever; each object is now read once, by its first path.
        let path = fixture("tests/fixtures/keras-shared-subtree.h5");
        let start = std::time::Instant::now();
        let dict = load_keras_h5(&path).unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{:?}", start.elapsed());
        let names: Vec<_> = dict.tensors.keys().cloned().collect();
        assert_eq!(names, ["a/kernel"]);
        assert_eq!(dict.tensors["a/kernel"].data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(keras_h5_from_bytes(&path, &bytes).unwrap().tensors.len(), 1);
    }

    #[test]
    fn nan_and_infinite_keras_weights_are_refused_naming_file_and_tensor() {
        let path = fixture("tests/fixtures/keras-nan.h5");
        let err = load_keras_h5(&path).unwrap_err().to_string();
        // Tensors are checked in name order: dense/bias (inf) before dense/kernel (NaN).
        assert!(err.contains("keras-nan.h5") && err.contains("`dense/bias`") && err.contains("inf at element 0"), "{err}");
        let bytes = std::fs::read(&path).unwrap();
        let err = keras_h5_from_bytes(&path, &bytes).unwrap_err().to_string();
        assert!(err.contains("non-finite"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_given_as_a_keras_file_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("graft-keras-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("model.h5");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = load_keras_h5(&fifo).unwrap_err().to_string();
        assert!(err.contains("model.h5") && err.contains("FIFO"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_extent_larger_than_the_file_is_refused_before_allocating() {
        // The same file claiming [2^40, 3] floats (tests/fixtures/make_hostile_h5.py). Allocating
        // first would abort the test process.
        let path = fixture("tests/fixtures/keras-huge-extent.h5");
        let err = load_keras_h5(&path).unwrap_err().to_string();
        assert!(err.contains("keras-huge-extent.h5") && err.contains("kernel:0") && err.contains("impossible for a file of this size"), "{err}");
        let bytes = std::fs::read(&path).unwrap();
        let err = keras_h5_from_bytes(&path, &bytes).unwrap_err().to_string();
        assert!(err.contains("impossible for a file of this size"), "{err}");
    }
}
