//! Logits and pooled features of the pulled Lite0 weights against PyTorch's.

use graft::data::image;
use graft::npy;
use graft::report::Silent;
use graft::zoo::{ModelSpec, Pretrained};

use super::{assert_on_device, reference, test_device, test_home};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn lite0_logits_and_features_match_pytorch() {
    let (on, device) = test_device();
    let spec = ModelSpec::find("efficientnet-lite0").unwrap();
    let model = Pretrained::load(spec, None, test_home(), &Silent, &device).unwrap();
    assert_eq!(model.weights_sha256, spec.source.unwrap().sha256);

    let inputs = npy::read_f32(&reference("efficientnet-lite0/inputs.npy")).unwrap();
    assert_eq!(inputs.shape, vec![4, 3, 224, 224]);
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(inputs.data.clone(), [4, 3, 224, 224]),
        &device,
    );
    let features = model.net.features(x.clone());
    let logits = model.net.forward(x.clone());
    assert_on_device(on, &features);
    assert_on_device(on, &logits);
    let features: Vec<f32> = features.into_data().try_to_vec::<f32>().unwrap();
    let logits: Vec<f32> = logits.into_data().try_to_vec::<f32>().unwrap();

    let want_features = npy::read_f32(&reference("efficientnet-lite0/features.npy")).unwrap();
    let want_logits = npy::read_f32(&reference("efficientnet-lite0/logits.npy")).unwrap();
    let df = max_abs_diff(&features, &want_features.data);
    let dl = max_abs_diff(&logits, &want_logits.data);
    eprintln!("max |Δfeature| = {df:e}, max |Δlogit| = {dl:e}");
    assert!(df <= 1e-4, "pooled features differ from PyTorch by {df}");
    assert!(dl <= 1e-4, "logits differ from PyTorch by {dl}");

    // graft's inference path (BatchNorm folded; on the CPU channels-last and split across
    // threads, elsewhere whole batches through burn's modules) against the same reference.
    let fast = model.net.for_inference().forward(x);
    assert_on_device(on, &fast);
    let fast: Vec<f32> = fast.into_data().try_to_vec::<f32>().unwrap();
    let di = max_abs_diff(&fast, &want_logits.data);
    eprintln!("inference path: max |Δlogit| = {di:e}");
    assert!(di <= 1e-4, "the inference path's logits differ from PyTorch by {di}");
}

#[test]
fn preprocessing_matches_the_reference_pipeline() {
    // graft's own decode + centre crop + PIL-bilinear resize against the reference inputs.
    let spec = ModelSpec::find("efficientnet-lite0").unwrap();
    let inputs = npy::read_f32(&reference("efficientnet-lite0/inputs.npy")).unwrap();
    let plane = 3 * 224 * 224;
    for (i, name) in ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"].iter().enumerate() {
        let ours = image::load(&reference(&format!("efficientnet-lite0/images/{name}")), &spec.preprocess()).unwrap();
        let want = &inputs.data[i * plane..(i + 1) * plane];
        let d = max_abs_diff(&ours, want);
        // One 8-bit level is 1/128 after normalisation; JPEG decoders may differ by a level or two.
        assert!(d <= 2.5 / 128.0, "{name}: preprocessing differs from the reference by {d}");
    }
}
