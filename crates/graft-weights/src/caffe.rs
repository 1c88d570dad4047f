//! Caffe `.caffemodel` files: a protobuf `NetParameter`, read in pure Rust.
//!
//! Layers come as `layer` (field 100, `LayerParameter`: name 1, type 2 as a string, blobs 7)
//! or, in files written before 2015 such as the Model Zoo's `bvlc_alexnet.caffemodel`, as
//! legacy `layers` (field 2, `V1LayerParameter`: name 4, type 5 as an enum, blobs 6). A
//! `BlobProto` holds its values in `data` (5, packed float) or `double_data` (8) and its shape
//! in `shape` (7, `BlobShape { repeated int64 dim = 1 }`) or, in old files, in
//! `num`/`channels`/`height`/`width` (1–4).
//!
//! [`load`] names the blobs of convolution and inner-product layers `<layer>.weight` and
//! `<layer>.bias`, with a legacy 4-d bias `[1, 1, 1, n]` flattened to `[n]` and a legacy
//! inner-product weight `[1, 1, out, in]` to `[out, in]` (PyTorch's layouts, which Caffe
//! shares: convolution weights are `[out, in / groups, kh, kw]`); any other layer's blobs are
//! `<layer>.blobs.<i>`, unchanged. [`to_torchvision`] renames those of AlexNet and VGG16 to
//! torchvision's names. Caffe's networks read BGR images on the 0–255 scale with a mean
//! subtracted and no scaling ([`ALEXNET_MEAN_BGR`], [`VGG16_MEAN_BGR`]); [`to_torchvision`]
//! reverses the first convolution's input channels so the network reads RGB instead, and
//! [`CAFFE_RGB_MEAN`] gives the means in that order.

use std::io::Read;
use std::path::Path;

use crate::error::{sanitize, WeightsError};
use crate::limits;
use crate::proto::{push_doubles, push_floats, push_varints, Reader};
use crate::tensor::{numel, DType, StateDict, Tensor};

/// One layer of a `.caffemodel` and its blobs (only layers holding blobs are kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub name: String,
    /// `Convolution`, `InnerProduct`, ... (a legacy layer's enum is translated for those two
    /// and `Deconvolution`; others read `V1 type N`).
    pub kind: String,
    pub blobs: Vec<Tensor>,
}

/// Mean pixel of the BVLC reference AlexNet / CaffeNet (the per-channel average of
/// `ilsvrc_2012_mean.npy`), BGR order, 0–255 scale; its images are 256×256 resized, 227×227
/// cropped, no scaling after the subtraction.
pub const ALEXNET_MEAN_BGR: [f32; 3] = [104.006_99, 116.668_77, 122.678_91];

/// Mean pixel of the VGG ILSVRC-16 Caffe model (Simonyan and Zisserman), BGR order, 0–255
/// scale; 224×224 crops, no scaling after the subtraction.
pub const VGG16_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];

/// `mean` reversed to RGB order: the means to subtract once [`to_torchvision`] has reversed
/// the first convolution's channels (the std is 1: Caffe does not scale).
pub const fn rgb_mean(mean_bgr: [f32; 3]) -> [f32; 3] {
    [mean_bgr[2], mean_bgr[1], mean_bgr[0]]
}

/// [`rgb_mean`] of [`VGG16_MEAN_BGR`].
pub const CAFFE_RGB_MEAN: [f32; 3] = rgb_mean(VGG16_MEAN_BGR);

/// Whether `path` looks like a Caffe model (by its extension, as protobuf has no magic number).
pub fn is_caffemodel(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("caffemodel"))
}

/// Reads the layers of a `.caffemodel` that hold blobs, in file order.
pub fn read_layers(path: &Path) -> Result<Vec<Layer>, WeightsError> {
    let mut file = crate::fsio::open_regular(path).map_err(|e| WeightsError::io(path, e))?;
    let len = file.metadata().map_err(|e| WeightsError::io(path, e))?.len();
    if len > limits::MAX_CAFFE_BYTES {
        return Err(WeightsError::limit(path, format!("file is {len} bytes"), "MAX_CAFFE_BYTES", limits::MAX_CAFFE_BYTES, ""));
    }
    let mut bytes = Vec::new();
    (&mut file).take(limits::MAX_CAFFE_BYTES).read_to_end(&mut bytes).map_err(|e| WeightsError::io(path, e))?;
    parse_layers(path, &bytes)
}

/// [`read_layers`] for bytes in memory; `path` names them in errors.
pub fn parse_layers(path: &Path, bytes: &[u8]) -> Result<Vec<Layer>, WeightsError> {
    let corrupt = |e: String| WeightsError::corrupt(path, format!("not a readable Caffe NetParameter: {e}"));
    let mut r = Reader::new(bytes);
    let mut layers = Vec::new();
    let mut seen_layer = false;
    while let Some((field, value)) = r.next_field().map_err(corrupt)? {
        let (legacy, msg) = match field {
            100 => (false, value.bytes("layer").map_err(corrupt)?),
            2 => (true, value.bytes("layers").map_err(corrupt)?),
            _ => continue,
        };
        seen_layer = true;
        let layer = parse_layer(msg, legacy).map_err(|e| {
            WeightsError::corrupt(path, format!("Caffe layer {} ({}): {e}", layers.len(), if legacy { "legacy `layers`" } else { "`layer`" }))
        })?;
        if !layer.blobs.is_empty() {
            layers.push(layer);
        }
    }
    if !seen_layer {
        return Err(WeightsError::corrupt(path, "no `layer` or `layers` entries: not a Caffe model"));
    }
    Ok(layers)
}

fn parse_layer(bytes: &[u8], legacy: bool) -> Result<Layer, String> {
    let (name_field, blobs_field) = if legacy { (4, 6) } else { (1, 7) };
    let mut layer = Layer { name: String::new(), kind: String::new(), blobs: Vec::new() };
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.next_field()? {
        if field == name_field {
            layer.name = value.string("name")?;
        } else if field == blobs_field {
            if layer.blobs.len() == limits::MAX_CAFFE_BLOBS_PER_LAYER {
                return Err(format!("more than {} blobs", limits::MAX_CAFFE_BLOBS_PER_LAYER));
            }
            let blob = parse_blob(value.bytes("blobs")?).map_err(|e| format!("blob {}: {e}", layer.blobs.len()))?;
            layer.blobs.push(blob);
        } else if !legacy && field == 2 {
            layer.kind = value.string("type")?;
        } else if legacy && field == 5 {
            layer.kind = match value.varint("type")? {
                4 => "Convolution".into(),
                14 => "InnerProduct".into(),
                39 => "Deconvolution".into(),
                t => format!("V1 type {t}"),
            };
        }
    }
    if layer.name.is_empty() && !layer.blobs.is_empty() {
        return Err("a layer with blobs has no name".into());
    }
    Ok(layer)
}

/// A `BlobProto` as a tensor of its shape.
fn parse_blob(bytes: &[u8]) -> Result<Tensor, String> {
    let mut r = Reader::new(bytes);
    let (mut data, mut doubles) = (Vec::new(), Vec::new());
    let mut shape: Option<Vec<u64>> = None;
    let mut legacy = [0u64; 4];
    while let Some((field, value)) = r.next_field()? {
        match field {
            1..=4 => legacy[field as usize - 1] = value.varint("num/channels/height/width")?,
            5 => push_floats(value, &mut data, "data")?,
            8 => push_doubles(value, &mut doubles, "double_data")?,
            7 => {
                let mut dims = Vec::new();
                let mut s = Reader::new(value.bytes("shape")?);
                while let Some((f, v)) = s.next_field()? {
                    if f == 1 {
                        push_varints(v, &mut dims, "shape.dim")?;
                    }
                    if dims.len() > limits::MAX_TENSOR_DIMS {
                        return Err(format!("more than {} dimensions", limits::MAX_TENSOR_DIMS));
                    }
                }
                shape = Some(dims);
            }
            _ => {}
        }
    }
    let dtype = if data.is_empty() && !doubles.is_empty() {
        data = doubles;
        DType::F64
    } else {
        DType::F32
    };
    let dims = shape.unwrap_or_else(|| legacy.to_vec());
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d as u64 <= i64::MAX as u64))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format!("shape {:?} has a negative or huge dimension", dims.iter().map(|&d| d as i64).collect::<Vec<_>>()))?;
    let n = numel(&shape).ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if n != data.len() {
        return Err(format!("shape {shape:?} needs {n} values but the blob holds {}", data.len()));
    }
    Ok(Tensor { shape, dtype, data })
}

/// Reads a `.caffemodel` as a state dict (names as in the module docs).
pub fn load(path: &Path) -> Result<StateDict, WeightsError> {
    dict_of(path, read_layers(path)?)
}

fn dict_of(path: &Path, layers: Vec<Layer>) -> Result<StateDict, WeightsError> {
    let mut dict = StateDict::default();
    for layer in layers {
        let weighted = matches!(layer.kind.as_str(), "Convolution" | "InnerProduct" | "Deconvolution");
        let inner = layer.kind == "InnerProduct";
        for (i, mut blob) in layer.blobs.into_iter().enumerate() {
            let key = match (weighted, i) {
                (true, 0) => {
                    if inner && blob.shape.len() > 2 && blob.shape[..blob.shape.len() - 2].iter().all(|&d| d == 1) {
                        blob.shape.drain(..blob.shape.len() - 2);
                    }
                    format!("{}.weight", layer.name)
                }
                (true, 1) => {
                    if blob.shape.len() > 1 && blob.shape[..blob.shape.len() - 1].iter().all(|&d| d == 1) {
                        blob.shape.drain(..blob.shape.len() - 1);
                    }
                    format!("{}.bias", layer.name)
                }
                _ => format!("{}.blobs.{i}", layer.name),
            };
            if dict.tensors.insert(key.clone(), blob).is_some() {
                return Err(WeightsError::corrupt(path, format!("two layers are named `{}`", sanitize(&layer.name))));
            }
        }
        dict.metadata.insert(format!("caffe.type.{}", layer.name), layer.kind);
    }
    dict.metadata.insert("format".into(), "caffemodel".into());
    dict.check_finite(path)?;
    Ok(dict)
}

/// The Caffe networks whose layers [`to_torchvision`] renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaffeArch {
    /// BVLC AlexNet / CaffeNet (`conv1`…`conv5`, `fc6`…`fc8`), as DeCAF and the
    /// transferability study used. Note its widths are the original paper's (96, 256, 384,
    /// 384, 256 filters, conv2/4/5 in two groups), not torchvision's `alexnet` (64, 192, 384,
    /// 256, 256, ungrouped): the names map, the shapes need Caffe's variant of the network.
    AlexNet,
    /// VGG ILSVRC-16 (`conv1_1`…`conv5_3`, `fc6`…`fc8`): the same shapes as torchvision's
    /// `vgg16`.
    Vgg16,
}

impl CaffeArch {
    /// `(Caffe layer, torchvision module)` pairs, in network order.
    pub fn mapping(self) -> &'static [(&'static str, &'static str)] {
        match self {
            CaffeArch::AlexNet => &[
                ("conv1", "features.0"),
                ("conv2", "features.3"),
                ("conv3", "features.6"),
                ("conv4", "features.8"),
                ("conv5", "features.10"),
                ("fc6", "classifier.1"),
                ("fc7", "classifier.4"),
                ("fc8", "classifier.6"),
            ],
            CaffeArch::Vgg16 => &[
                ("conv1_1", "features.0"),
                ("conv1_2", "features.2"),
                ("conv2_1", "features.5"),
                ("conv2_2", "features.7"),
                ("conv3_1", "features.10"),
                ("conv3_2", "features.12"),
                ("conv3_3", "features.14"),
                ("conv4_1", "features.17"),
                ("conv4_2", "features.19"),
                ("conv4_3", "features.21"),
                ("conv5_1", "features.24"),
                ("conv5_2", "features.26"),
                ("conv5_3", "features.28"),
                ("fc6", "classifier.0"),
                ("fc7", "classifier.3"),
                ("fc8", "classifier.6"),
            ],
        }
    }

    /// The mean pixel the network expects subtracted, BGR order (see the module docs).
    pub fn mean_bgr(self) -> [f32; 3] {
        match self {
            CaffeArch::AlexNet => ALEXNET_MEAN_BGR,
            CaffeArch::Vgg16 => VGG16_MEAN_BGR,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CaffeArch::AlexNet => "AlexNet",
            CaffeArch::Vgg16 => "VGG16",
        }
    }
}

/// Renames the weights and biases of `arch`'s layers in `dict` (as [`load`] reads them) to
/// torchvision's names (`conv1_1.weight` → `features.0.weight`), reversing the first
/// convolution's input channels from BGR to RGB. Other layers are left out. A missing layer is
/// an error naming it; the shapes are checked by the architecture that loads the result.
pub fn to_torchvision(path: &Path, dict: &StateDict, arch: CaffeArch) -> Result<StateDict, WeightsError> {
    let mut out = StateDict::default();
    for (i, (caffe, torch)) in arch.mapping().iter().enumerate() {
        for part in ["weight", "bias"] {
            let key = format!("{caffe}.{part}");
            let Some(t) = dict.tensors.get(&key) else {
                let present: Vec<&str> = dict.tensors.keys().filter_map(|k| k.strip_suffix(".weight")).collect();
                return Err(WeightsError::corrupt(
                    path,
                    format!(
                        "no `{key}`: a Caffe {} needs layers {} (this file has {})",
                        arch.name(),
                        arch.mapping().iter().map(|m| m.0).collect::<Vec<_>>().join(", "),
                        if present.is_empty() { "no weighted layers".to_string() } else { present.iter().map(|p| sanitize(p)).collect::<Vec<_>>().join(", ") }
                    ),
                ));
            };
            let mut t = t.clone();
            if i == 0 && part == "weight" {
                bgr_to_rgb(path, &key, &mut t)?;
            }
            out.tensors.insert(format!("{torch}.{part}"), t);
        }
    }
    let mean = rgb_mean(arch.mean_bgr());
    out.metadata.insert("format".into(), "caffemodel".into());
    out.metadata.insert("caffe.arch".into(), arch.name().into());
    out.metadata.insert("caffe.input".into(), format!("RGB 0-255, mean {mean:?} subtracted, std 1"));
    Ok(out)
}

/// Reverses the input-channel axis (1) of a `[out, 3, kh, kw]` convolution weight.
fn bgr_to_rgb(path: &Path, key: &str, t: &mut Tensor) -> Result<(), WeightsError> {
    if t.shape.len() != 4 || t.shape[1] != 3 {
        return Err(WeightsError::corrupt(path, format!("`{key}` has shape {:?}; the first convolution should read 3 channels", t.shape)));
    }
    let (out, plane) = (t.shape[0], t.shape[2] * t.shape[3]);
    for o in 0..out {
        let base = o * 3 * plane;
        for p in 0..plane {
            t.data.swap(base + p, base + 2 * plane + p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/caffe").join(name)
    }

    /// The values `make_caffe_fixtures.py` wrote for blob `j` of the `li`-th layer with blobs.
    fn expected(n: usize, li: usize, j: usize) -> Vec<f32> {
        (0..n).map(|i| (0.1 * i as f64 + (10 * li + j) as f64).sin() as f32).collect()
    }

    fn shapes(dict: &StateDict) -> Vec<(String, Vec<usize>)> {
        dict.tensors.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect()
    }

    #[test]
    fn layer_format_reads_weights_biases_and_other_blobs() {
        let dict = load(&fixture("layer.caffemodel")).unwrap();
        assert_eq!(
            shapes(&dict),
            [
                ("bn.blobs.0".to_string(), vec![5]),
                ("bn.blobs.1".to_string(), vec![5]),
                ("bn.blobs.2".to_string(), vec![1]),
                ("conv1.bias".to_string(), vec![2]),
                ("conv1.weight".to_string(), vec![2, 3, 3, 3]),
                ("fc.bias".to_string(), vec![5]),
                ("fc.weight".to_string(), vec![5, 8]),
            ]
        );
        assert_eq!(dict.tensors["conv1.weight"].data, expected(54, 0, 0));
        assert_eq!(dict.tensors["fc.weight"].data, expected(40, 1, 0));
        assert_eq!(dict.tensors["bn.blobs.2"].data, expected(1, 2, 2));
        assert_eq!(dict.metadata["caffe.type.fc"], "InnerProduct");
        // ReLU has no blobs and is not listed.
        assert!(!dict.metadata.contains_key("caffe.type.relu1"));
    }

    #[test]
    fn legacy_v1_layers_get_pytorch_shapes() {
        let dict = load(&fixture("v1.caffemodel")).unwrap();
        assert_eq!(
            shapes(&dict),
            [
                ("conv1.bias".to_string(), vec![2]),
                ("conv1.weight".to_string(), vec![2, 3, 3, 3]),
                ("fc.bias".to_string(), vec![5]),
                ("fc.weight".to_string(), vec![5, 8]),
            ]
        );
        assert_eq!(dict.tensors["fc.weight"].data, expected(40, 1, 0));
        assert_eq!(dict.tensors["conv1.bias"].data, expected(2, 0, 1));
        assert_eq!(dict.metadata["caffe.type.conv1"], "Convolution");
    }

    #[test]
    fn vgg16_and_alexnet_names_map_onto_torchvision() {
        let path = fixture("vgg16-names.caffemodel");
        let tv = to_torchvision(&path, &load(&path).unwrap(), CaffeArch::Vgg16).unwrap();
        let features = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
        let mut want: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, f) in features.iter().enumerate() {
            want.push((format!("features.{f}.weight"), vec![2, if i == 0 { 3 } else { 2 }, 3, 3]));
            want.push((format!("features.{f}.bias"), vec![2]));
        }
        for (c, s) in [(0, [4, 2]), (3, [4, 4]), (6, [3, 4])] {
            want.push((format!("classifier.{c}.weight"), s.to_vec()));
            want.push((format!("classifier.{c}.bias"), vec![s[0]]));
        }
        want.sort();
        assert_eq!(shapes(&tv), want);
        // conv1_1 reads RGB now: input channel c holds Caffe's channel 2 - c.
        let caffe = expected(54, 0, 0);
        let rgb = &tv.tensors["features.0.weight"].data;
        for o in 0..2 {
            for c in 0..3 {
                for p in 0..9 {
                    assert_eq!(rgb[o * 27 + c * 9 + p], caffe[o * 27 + (2 - c) * 9 + p]);
                }
            }
        }
        // Later layers are untouched.
        assert_eq!(tv.tensors["features.2.weight"].data, expected(36, 1, 0));
        assert_eq!(tv.tensors["classifier.6.bias"].data, expected(3, 15, 1));
        assert_eq!(CAFFE_RGB_MEAN, [123.68, 116.779, 103.939]);

        let path = fixture("alexnet-names-v1.caffemodel");
        let tv = to_torchvision(&path, &load(&path).unwrap(), CaffeArch::AlexNet).unwrap();
        let names: Vec<String> = tv.tensors.keys().cloned().collect();
        let mut want: Vec<String> = ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4", "classifier.6"]
            .iter()
            .flat_map(|m| [format!("{m}.weight"), format!("{m}.bias")])
            .collect();
        want.sort();
        assert_eq!(names, want);
        assert_eq!(tv.tensors["classifier.1.weight"].shape, [4, 2]);
        assert_eq!(tv.tensors["features.3.bias"].shape, [2]);

        // The VGG16 file is not an AlexNet: the missing layer is named, and what is there.
        let path = fixture("vgg16-names.caffemodel");
        let e = to_torchvision(&path, &load(&path).unwrap(), CaffeArch::AlexNet).unwrap_err().to_string();
        assert!(e.contains("no `conv1.weight`") && e.contains("conv1_1"), "{e}");
    }

    #[test]
    fn truncated_corrupt_and_non_caffe_inputs_fail_cleanly() {
        let path = fixture("layer.caffemodel");
        let bytes = std::fs::read(&path).unwrap();
        // Every truncation: an error (a message cut inside a field) or fewer layers, never a panic.
        for n in 0..bytes.len() {
            if let Ok(layers) = parse_layers(&path, &bytes[..n]) {
                assert!(layers.len() <= 3);
            }
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let _ = parse_layers(&path, &b);
        }
        let e = parse_layers(&path, b"\x0a\x03abc").unwrap_err().to_string();
        assert!(e.contains("not a Caffe model"), "{e}");
        // A blob whose shape disagrees with its data.
        let mut blob = vec![0x3a, 2, 0x08, 3]; // shape { dim: 3 }
        blob.extend([0x2a, 8]);
        blob.extend(1f32.to_le_bytes());
        blob.extend(2f32.to_le_bytes());
        let mut layer = vec![0x0a, 1, b'x', 0x12, 11];
        layer.extend(b"Convolution");
        layer.push(0x3a);
        layer.push(blob.len() as u8);
        layer.extend(&blob);
        let mut net = vec![0xa2, 0x06, layer.len() as u8];
        net.extend(&layer);
        let e = parse_layers(&path, &net).unwrap_err().to_string();
        assert!(e.contains("shape [3] needs 3 values but the blob holds 2"), "{e}");
    }
}
