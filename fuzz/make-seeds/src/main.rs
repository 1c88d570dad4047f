//! Seed corpora for the fuzz targets: a few small, valid files per format, so that libFuzzer
//! starts from inputs that reach deep into each parser instead of guessing magic numbers.
//! Deterministic: rerunning rewrites the same bytes.

use std::io::Write;
use std::path::Path;

// The hand-assembled PyTorch files of graft-weights' tests (pickle writer, legacy and zip
// layouts), so the seeds are the same files the unit tests load.
#[path = "../../../crates/graft-weights/tests/common/mod.rs"]
mod common;

use common::*;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn safetensors(tensors: &[(&str, &str, &[usize], Vec<u8>)], metadata: Option<&str>) -> Vec<u8> {
    let mut header = String::from("{");
    let mut offset = 0;
    let mut data = Vec::new();
    for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            shape.join(","),
            offset + bytes.len()
        ));
        offset += bytes.len();
        data.extend_from_slice(bytes);
    }
    if let Some(m) = metadata {
        header.push_str(&format!(",\"__metadata__\":{m}"));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

fn torch() {
    put("torch_legacy", "sample.pth", &sample_legacy());
    // One float tensor, no views: the common case of a real checkpoint.
    let one = [Entry::new("fc.weight", "FloatStorage", "0", 4, 0, &[2, 2], &[2, 1])];
    put(
        "torch_legacy",
        "one.pth",
        &legacy_file(&state_dict_pickle(&one, true), &[("0", 4, f32_bytes(&[1., 2., 3., 4.]))]),
    );
    put("torch_zip", "sample.pt", &sample_zip());
    put("torch_zip", "one.pt", &zip_file(&state_dict_pickle(&one, false), &[("0", f32_bytes(&[1., 2., 3., 4.]))]));
    let half = [Entry::new("h", "HalfStorage", "0", 2, 0, &[2], &[1])];
    put(
        "torch_zip",
        "half-big-endian.pt",
        &zip_file_with_byteorder(&state_dict_pickle(&half, false), &[("0", vec![0x3c, 0, 0x40, 0])], "big"),
    );
    // A deflated entry (torch never writes one; we accept them with a bound).
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(&state_dict_pickle(&one, false)).unwrap();
        z.start_file("archive/data/0", opts).unwrap();
        z.write_all(&f32_bytes(&[1., 2., 3., 4.])).unwrap();
        z.finish().unwrap();
    }
    put("torch_zip", "deflated.pt", &buf.into_inner());
}

fn safetensors_seeds() {
    put(
        "safetensors",
        "two.safetensors",
        &safetensors(
            &[("w", "F32", &[2, 2], f32_bytes(&[1., 2., 3., 4.])), ("n", "I64", &[], 7i64.to_le_bytes().to_vec())],
            Some("{\"format\":\"pt\"}"),
        ),
    );
    put("safetensors", "half.safetensors", &safetensors(&[("h", "F16", &[2], vec![0, 0x3c, 0, 0x40])], None));
    put("safetensors", "empty.safetensors", &safetensors(&[], None));
}

fn hdf5() {
    use hdf5_pure::FileBuilder;
    // Keras 2 `model.save`: model_weights/<layer>/<layer>/<weight>:0.
    let mut b = FileBuilder::new();
    let mut weights = b.create_group("model_weights");
    let mut dense = weights.create_group("dense");
    let mut inner = dense.create_group("dense");
    inner.create_dataset("kernel:0").with_f32_data(&[0.5, -1.0, 2.0, 0.25, 1.5, -0.75]).with_shape(&[2, 3]);
    inner.create_dataset("bias:0").with_f32_data(&[0.1, 0.2, 0.3]);
    dense.add_group(inner.finish());
    weights.add_group(dense.finish());
    let mut bn = weights.create_group("bn");
    let mut inner = bn.create_group("bn");
    inner.create_dataset("moving_mean:0").with_f64_data(&[0.0, 1.0]);
    inner.create_dataset("gamma:0").with_f32_data(&[1.0, 1.0]).with_chunks(&[1]).with_deflate(4);
    bn.add_group(inner.finish());
    weights.add_group(bn.finish());
    weights.set_attr("keras_version", hdf5_pure::AttrValue::String("2.15.0".into()));
    b.add_group(weights.finish());
    put("hdf5", "keras.h5", &b.finish().unwrap());

    // USPS layout: train/data [n, 256] floats in [0, 1], train/target [n] ints.
    let mut b = FileBuilder::new();
    let mut train = b.create_group("train");
    let pixels: Vec<f64> = (0..2 * 256).map(|i| (i % 17) as f64 / 16.0).collect();
    train.create_dataset("data").with_f64_data(&pixels).with_shape(&[2, 256]);
    train.create_dataset("target").with_i64_data(&[3, 7]);
    b.add_group(train.finish());
    put("hdf5", "usps.h5", &b.finish().unwrap());
}

fn images() {
    use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
    let rgb = RgbImage::from_fn(8, 6, |x, y| Rgb([(x * 30) as u8, (y * 40) as u8, ((x + y) * 10) as u8]));
    let rgba = RgbaImage::from_fn(5, 7, |x, y| Rgba([(x * 50) as u8, (y * 30) as u8, 90, (x * y * 7) as u8]));
    let grey = DynamicImage::ImageRgb8(rgb.clone()).to_luma8();
    let encode = |img: &DynamicImage, format: ImageFormat| {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    };
    let rgb = DynamicImage::ImageRgb8(rgb);
    let rgba = DynamicImage::ImageRgba8(rgba);
    let grey = DynamicImage::ImageLuma8(grey);
    put("image_decode", "rgb.png", &encode(&rgb, ImageFormat::Png));
    put("image_decode", "rgba.png", &encode(&rgba, ImageFormat::Png));
    put("image_decode", "grey.png", &encode(&grey, ImageFormat::Png));
    put("image_decode", "rgb16.png", &encode(&DynamicImage::ImageRgb16(rgb.to_rgb16()), ImageFormat::Png));
    put("image_decode", "rgb.jpg", &encode(&rgb, ImageFormat::Jpeg));
    put("image_decode", "grey.jpg", &encode(&grey, ImageFormat::Jpeg));
    put("image_decode", "rgb.bmp", &encode(&rgb, ImageFormat::Bmp));
    put("image_decode", "rgba.gif", &encode(&rgba, ImageFormat::Gif));
    put("image_decode", "rgb.webp", &encode(&rgb, ImageFormat::WebP));
    put("image_decode", "rgb.tiff", &encode(&rgb, ImageFormat::Tiff));
}

fn main() {
    torch();
    safetensors_seeds();
    hdf5();
    images();
    for target in ["torch_legacy", "torch_zip", "safetensors", "hdf5", "image_decode"] {
        let dir = Path::new("seeds").join(target);
        let n = std::fs::read_dir(&dir).unwrap().count();
        let bytes: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        println!("{target}: {n} seeds, {bytes} bytes");
    }
}
