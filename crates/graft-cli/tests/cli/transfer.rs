//! `graft probe`, `graft advise` (+ `fit --strategy auto`) and `graft pretrain` (+ `fit --init`).

use std::path::{Path, PathBuf};

use super::{assert_bad_input, graft, graft_in, isolated_home, json_of, scratch, shared};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `graft data import DATASET` into `out`.
pub(super) fn import(dataset: &str, split: &str, per_class: usize, seed: u64, out: &Path) -> PathBuf {
    let source = shared().join("data");
    json_of(&graft(&[
        "data", "import", dataset, "--split", split, "--per-class", &per_class.to_string(), "--seed", &seed.to_string(),
        "--source", s(&source), "--out", s(out), "--json",
    ]));
    out.to_path_buf()
}

#[test]
fn probe_scores_every_stage_and_a_rerun_is_free() {
    let dir = scratch("probe");
    let home = isolated_home("probe");
    let data = import("fashion-mnist", "train", 4, 0, &dir.join("data"));
    // Three classes keep the trunk work small.
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if !["Bag", "Sneaker", "Trouser"].iter().any(|c| path.ends_with(c)) {
            std::fs::remove_dir_all(path).unwrap();
        }
    }
    let plot = dir.join("probe.png");
    let args = ["probe", "--model", "efficientnet-lite0", "--data", s(&data), "--val-split", "0.5", "--plot", s(&plot), "--json"];
    let first = json_of(&graft_in(&home, &args));
    let layers = first["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 18, "stem, 16 blocks, head");
    assert_eq!(layers[0]["name"], "stem");
    assert_eq!(layers[0]["dim"], 32);
    assert_eq!(layers[1]["name"], "_blocks.0");
    assert_eq!(layers[17]["name"], "head");
    assert_eq!(layers[17]["dim"], 1280);
    let acc: Vec<f64> = layers.iter().map(|l| l["accuracy"].as_f64().unwrap()).collect();
    assert!(acc.iter().all(|a| (0.0..=1.0).contains(a)), "{acc:?}");
    let max = acc.iter().copied().fold(0.0, f64::max);
    let first_best = acc.iter().position(|a| *a == max).unwrap();
    assert_eq!(first["best"]["name"], layers[first_best]["name"], "best = highest accuracy, shallowest on a tie");
    assert_eq!(first["n_train"], 6);
    assert_eq!(first["n_val"], 6);
    assert_eq!(first["trunk_images"], 12);
    assert!(std::fs::metadata(&plot).unwrap().len() > 1000, "plot written");
    // Every stage's pooled activations are cached: the rerun runs no trunk and agrees.
    let again = json_of(&graft_in(&home, &args));
    assert_eq!(again["trunk_images"], 0);
    assert_eq!(again["layers"], first["layers"]);
    // The text table carries the same numbers.
    let text = graft_in(&home, &args[..args.len() - 1]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains(&format!("recommended cut: {}", first["best"]["name"].as_str().unwrap())), "{text}");
    assert!(text.contains(&format!("{:.4}", acc[17])), "{text}");
    assert_bad_input(&graft_in(&home, &["probe", "--data", s(&data), "--val-split", "1.5"]), &["--val-split", "1.5"]);
    assert_bad_input(&graft_in(&home, &["probe", "--model", "alexnet", "--data", s(&data)]), &["alexnet"]);
}

/// The line of the human output starting with `label`, its first number.
fn number_after(text: &str, label: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no `{label}` in {text}"));
    line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn advise_tells_few_digits_from_many_and_fit_applies_it() {
    let dir = scratch("advise");
    let few = import("mnist", "train", 20, 0, &dir.join("few"));
    let many = import("mnist", "train", 500, 0, &dir.join("many"));
    let mut strategies = Vec::new();
    for (data, per_class) in [(&few, 20.0), (&many, 500.0)] {
        let args = ["advise", "--model", "efficientnet-lite0", "--data", s(data), "--sample", "30"];
        let json = json_of(&graft(&[&args[..], &["--json"]].concat()));
        assert_eq!(json["images_per_class"].as_f64().unwrap(), per_class);
        let entropy = json["mean_normalized_entropy"].as_f64().unwrap();
        assert!(entropy > 0.0 && entropy < 1.0, "{entropy}");
        assert_eq!(json["entropy_sample"], 30);
        // The reasons quote the measured numbers.
        let reasons: Vec<&str> = json["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert!(reasons.iter().any(|r| r.contains(&format!("{per_class} images per class"))), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains(&format!("{entropy:.3}"))), "{reasons:?}");
        // The text output prints the same measures.
        let out = graft(&args);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(number_after(&text, "images per class:"), per_class);
        assert_eq!(format!("{:.3}", number_after(&text, "mean normalised entropy:")), format!("{entropy:.3}"));
        assert!(text.contains(&format!("strategy: {}", json["strategy"].as_str().unwrap())), "{text}");
        strategies.push(json["strategy"].as_str().unwrap().to_string());
    }
    assert!(strategies[0].starts_with("small-"), "{strategies:?}");
    assert!(strategies[1].starts_with("large-"), "{strategies:?}");
    assert_ne!(strategies[0], strategies[1]);

    // fit --strategy auto applies the advice (short stages given on the command line still win)
    // and records the choice in the run's config.
    let run = dir.join("run");
    json_of(&graft(&["fit", "--strategy", "auto", "--data", s(&few), "--stages", "head:1", "--out", s(&run), "--json"]));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains(&format!("strategy = \"auto:{}", strategies[0])), "{config}");
    assert!(config.contains("body_lr_mult = 0.1"), "the small-different setting: {config}");
    assert_bad_input(&graft(&["fit", "--strategy", "guess", "--data", s(&few), "--out", s(&dir.join("bad"))]), &["--strategy", "guess"]);
}

#[test]
fn pretrain_then_fit_init_then_eval() {
    let dir = scratch("pretrain");
    let unlabelled = import("mnist", "train", 30, 1, &dir.join("unlabelled"));
    let labelled = import("mnist", "train", 10, 2, &dir.join("labelled"));
    let test = import("mnist", "test", 10, 0, &dir.join("test"));
    let pre = dir.join("pre");
    let p = json_of(&graft(&[
        "pretrain", "--method", "autoencoder", "--data", s(&unlabelled), "--arch", "mlp:64,32", "--epochs", "3", "--noise", "0.2", "--out", s(&pre), "--json",
    ]));
    assert_eq!(p["images"], 300);
    let layers = p["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!((layers[0]["input"].as_u64(), layers[0]["output"].as_u64()), (Some(784), Some(64)));
    assert_eq!((layers[1]["input"].as_u64(), layers[1]["output"].as_u64()), (Some(64), Some(32)));
    for l in layers {
        assert!(l["last_epoch_loss"].as_f64().unwrap() < l["first_epoch_loss"].as_f64().unwrap(), "reconstruction improves: {l}");
    }
    let encoder = graft_weights::load(&pre.join("encoder.safetensors")).unwrap();
    assert_eq!(encoder.tensors.len(), 4, "two linear layers: {:?}", encoder.tensors.keys().collect::<Vec<_>>());

    let run = dir.join("run");
    let f = json_of(&graft(&["fit", "--init", s(&pre), "--data", s(&labelled), "--val-split", "0.2", "--epochs", "3", "--out", s(&run), "--json"]));
    assert_eq!(f["arch"], "mlp:64,32");
    assert_eq!(f["n_train"], 80);
    assert_eq!(f["n_val"], 20);
    // The fine-tuned encoder started from the pretrained one (a random one differs by far more).
    let tuned = graft_weights::load(&run.join("best.safetensors")).unwrap();
    let key = encoder.tensors.keys().find(|k| k.contains("layers.0") && k.contains("weight")).unwrap().clone();
    let (a, b) = (&encoder.tensors[&key].data, &tuned.tensors[&format!("encoder.{key}")].data);
    let diff = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    let scale = a.iter().map(|x| x.abs()).sum::<f32>() / a.len() as f32;
    assert!(diff < 0.5 * scale, "fine-tuning moved the pretrained weights by {diff}, their scale is {scale}");

    let e = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&test), "--json"]));
    assert_eq!(e["n"], 100);
    let acc = e["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let confusion: u64 = e["confusion"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap())).sum();
    assert_eq!(confusion, 100);

    assert_bad_input(&graft(&["pretrain", "--method", "autoencoder", "--data", s(&unlabelled), "--arch", "conv:3", "--out", s(&dir.join("x"))]), &["--arch", "conv:3"]);
    assert_bad_input(&graft(&["pretrain", "--method", "boltzmann", "--data", s(&unlabelled), "--out", s(&dir.join("y"))]), &["--method", "boltzmann"]);
    assert_bad_input(&graft(&["fit", "--init", s(&pre), "--arch", "mlp:64", "--data", s(&labelled), "--out", s(&dir.join("z"))]), &["--arch", "mlp:64,32"]);
}

/// Stacked RBMs (CD-1) instead of autoencoders: the same run layout, so `fit --init` reads it;
/// the reconstruction error falls in every layer; settings of the other method are refused.
#[test]
fn rbm_pretraining_stacks_layers_that_fit_init_starts_from() {
    let dir = scratch("pretrain-rbm");
    let unlabelled = import("mnist", "train", 30, 1, &dir.join("unlabelled"));
    let labelled = import("mnist", "train", 10, 2, &dir.join("labelled"));
    let pre = dir.join("pre");
    let p = json_of(&graft(&[
        "pretrain", "--method", "rbm", "--data", s(&unlabelled), "--arch", "mlp:64,32", "--epochs", "4", "--lr", "0.01", "--out", s(&pre), "--json",
    ]));
    assert_eq!(p["config"]["method"], "rbm");
    assert_eq!(p["config"]["cd_k"], 1);
    let layers = p["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        assert!(l["last_epoch_loss"].as_f64().unwrap() < l["first_epoch_loss"].as_f64().unwrap(), "reconstruction improves: {l}");
    }
    let encoder = graft_weights::load(&pre.join("encoder.safetensors")).unwrap();
    assert_eq!(encoder.tensors.len(), 4, "the encoder keeps W and the hidden bias of each RBM: {:?}", encoder.tensors.keys().collect::<Vec<_>>());
    let run = dir.join("run");
    let f = json_of(&graft(&["fit", "--init", s(&pre), "--data", s(&labelled), "--val-split", "0", "--epochs", "2", "--out", s(&run), "--json"]));
    assert_eq!(f["arch"], "mlp:64,32");
    assert_bad_input(&graft(&["pretrain", "--method", "rbm", "--noise", "0.2", "--data", s(&unlabelled), "--out", s(&dir.join("x"))]), &["--noise", "autoencoder"]);
    assert_bad_input(&graft(&["pretrain", "--method", "autoencoder", "--visible", "gaussian", "--data", s(&unlabelled), "--out", s(&dir.join("x"))]), &["--visible", "rbm"]);
    assert_bad_input(&graft(&["pretrain", "--method", "rbm", "--cd-k", "0", "--data", s(&unlabelled), "--out", s(&dir.join("x"))]), &["--cd-k"]);
    assert!(!dir.join("x").exists(), "refused settings leave no run directory");
}

/// The class folders of `dir`, sorted, each with its files as `class/file` paths, sorted.
fn class_files(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut classes: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    classes.sort();
    classes
        .into_iter()
        .map(|c| {
            let mut f: Vec<String> = std::fs::read_dir(dir.join(&c)).unwrap().map(|e| format!("{c}/{}", e.unwrap().file_name().to_string_lossy())).collect();
            f.sort();
            (c, f)
        })
        .collect()
}

/// The whole encoder on tasks whose labels come for free: pairs known only as same/different
/// (siamese) and two views of each unlabelled digit (contrastive), for the MLP and the small CNN;
/// `fit --init` starts from either; bad pairs and settings of other methods are refused by name.
#[test]
fn siamese_and_contrastive_pretraining_feed_fit_init() {
    let dir = scratch("pretrain-pairs");
    let unlabelled = import("mnist", "train", 20, 1, &dir.join("unlabelled"));
    let labelled = import("mnist", "train", 5, 2, &dir.join("labelled"));
    // 200 pairs: each digit with the next of its own class (same) and with one of the next class.
    let classes = class_files(&unlabelled);
    let mut csv = String::from("a,b,same\n");
    for (k, (_, own)) in classes.iter().enumerate() {
        let next = &classes[(k + 1) % classes.len()].1;
        for i in 0..10 {
            csv.push_str(&format!("{},{},1\n{},{},0\n", own[i], own[i + 10], own[i], next[i]));
        }
    }
    let pairs = dir.join("pairs.csv");
    std::fs::write(&pairs, csv).unwrap();
    let contrastive_flags = ["--batch-size", "32", "--crop", "0.6", "--projection-hidden", "16"];
    // The MLP, and the small CNN of `graft study` (its encoder: conv1, conv2, fc1, fc2).
    let weight_and_bias = |layers: &[&str]| -> Vec<String> {
        let mut names: Vec<String> = layers.iter().flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")]).collect();
        names.sort();
        names
    };
    for (arch, encoder_names) in [("mlp:64,32", weight_and_bias(&["layers.0", "layers.1"])), ("small-cnn", weight_and_bias(&["conv1", "conv2", "fc1", "fc2"]))] {
        for (method, extra) in [("siamese", vec!["--pairs", s(&pairs)]), ("contrastive", contrastive_flags.to_vec())] {
            let name = if arch == "small-cnn" { format!("{method}-cnn") } else { method.to_string() };
            let pre = dir.join(&name);
            let mut args = vec!["pretrain", "--method", method, "--data", s(&unlabelled), "--arch", arch, "--epochs", "3", "--out", s(&pre), "--json"];
            args.extend(extra);
            let p = json_of(&graft(&args));
            let layers = p["layers"].as_array().unwrap();
            assert_eq!(layers.len(), 1, "one whole-encoder report: {p}");
            assert!(layers[0]["last_epoch_loss"].as_f64().unwrap() < layers[0]["first_epoch_loss"].as_f64().unwrap(), "{name} loss falls: {p}");
            let encoder = graft_weights::load(&pre.join("encoder.safetensors")).unwrap();
            let mut names: Vec<String> = encoder.tensors.keys().cloned().collect();
            names.sort();
            assert_eq!(names, encoder_names, "{name}: the encoder alone (no projection head)");
            // A finished run resumed trains nothing and keeps its trained encoder (it once saved a fresh one).
            let saved = std::fs::read(pre.join("encoder.safetensors")).unwrap();
            json_of(&graft(&["pretrain", "--resume", s(&pre), "--json"]));
            assert!(std::fs::read(pre.join("encoder.safetensors")).unwrap() == saved, "{name}: the resumed finished run rewrote its encoder");
            let run = dir.join(format!("fit-{name}"));
            let f = json_of(&graft(&["fit", "--init", s(&pre), "--data", s(&labelled), "--val-split", "0", "--epochs", "2", "--out", s(&run), "--json"]));
            assert_eq!(f["arch"], arch);
            if arch == "small-cnn" {
                // The fit started from the pretrained layers: at a learning rate of 1e-9 they stay
                // where pretraining left them, while the output layer is new; `eval` reads the run.
                let still = dir.join(format!("still-{name}"));
                json_of(&graft(&["fit", "--init", s(&pre), "--data", s(&labelled), "--val-split", "0", "--epochs", "1", "--lr", "1e-9", "--out", s(&still), "--json"]));
                let tuned = graft_weights::load(&still.join("best.safetensors")).unwrap();
                for key in &encoder_names {
                    let (a, b) = (&encoder.tensors[key].data, &tuned.tensors[key].data);
                    assert!(a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-5), "{name}: {key} is the pretrained one");
                }
                assert_eq!(tuned.tensors["out.weight"].shape, vec![128, 10]);
                let e = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&labelled), "--json"]));
                assert_eq!(e["n"], 50);
            }
        }
    }
    // The same CNN from random initialisation (the baseline), different from the pretrained start.
    let random = dir.join("random-cnn");
    json_of(&graft(&["fit", "--arch", "small-cnn", "--data", s(&labelled), "--val-split", "0", "--epochs", "1", "--lr", "1e-9", "--out", s(&random), "--json"]));
    let (r, p) = (graft_weights::load(&random.join("best.safetensors")).unwrap(), graft_weights::load(&dir.join("siamese-cnn/encoder.safetensors")).unwrap());
    assert!(r.tensors["conv2.weight"].data.iter().zip(p.tensors["conv2.weight"].data.iter()).any(|(x, y)| (x - y).abs() > 1e-3));
    let x = dir.join("x");
    assert_bad_input(&graft(&["pretrain", "--method", "rbm", "--arch", "small-cnn", "--data", s(&unlabelled), "--out", s(&x)]), &["--arch", "small-cnn", "MLP"]);
    assert_bad_input(&graft(&["fit", "--init", s(&dir.join("siamese-cnn")), "--freeze", "regex:hidden1", "--data", s(&labelled), "--out", s(&x)]), &["--freeze", "small-cnn"]);
    assert_bad_input(&graft(&["fit", "--arch", "small-cnn", "--activation", "relu", "--data", s(&labelled), "--out", s(&x)]), &["--activation", "small-cnn"]);
    assert_bad_input(&graft(&["fit", "--init", s(&dir.join("siamese-cnn")), "--arch", "mlp:64,32", "--data", s(&labelled), "--out", s(&x)]), &["--arch", "small-cnn"]);
    assert_eq!(json_of(&graft(&["inspect", "--run", s(&dir.join("siamese")), "--json"]))["model"]["config"]["pairs"].as_str(), Some(s(&pairs)));
    let contrastive = json_of(&graft(&["inspect", "--run", s(&dir.join("contrastive")), "--json"]))["model"]["config"].clone();
    assert_eq!((contrastive["crop"].as_f64(), contrastive["projection_hidden"].as_u64()), (Some(0.6), Some(16)), "{contrastive}");
    // The head's hidden layer trained with the encoder (16 wide) and was dropped from encoder.safetensors.
    let whole = graft_weights::load(&dir.join("contrastive/pretrained.safetensors")).unwrap();
    assert!(whole.tensors.iter().any(|(k, t)| k.starts_with("hidden") && t.shape.contains(&16)), "{:?}", whole.tensors.keys().collect::<Vec<_>>());
    assert_bad_input(&graft(&["pretrain", "--method", "contrastive", "--crop", "1.5", "--data", s(&unlabelled), "--out", s(&x)]), &["--crop", "1.5"]);
    assert_bad_input(&graft(&["pretrain", "--method", "siamese", "--data", s(&unlabelled), "--out", s(&x)]), &["--pairs", "siamese"]);
    assert_bad_input(&graft(&["pretrain", "--method", "rbm", "--pairs", s(&pairs), "--data", s(&unlabelled), "--out", s(&x)]), &["--pairs", "siamese"]);
    std::fs::write(dir.join("bad.csv"), "a.png,b.png,maybe\n").unwrap();
    assert_bad_input(&graft(&["pretrain", "--method", "siamese", "--pairs", s(&dir.join("bad.csv")), "--data", s(&unlabelled), "--out", s(&x)]), &["bad.csv", "line 1", "maybe"]);
    assert!(!x.exists(), "refused settings leave no run directory");
}

/// A pretrained trunk's top tuned by SimCLR on stored views, and by siamese pairs: Lite0's last
/// block and head convolution train on the frozen part's cached activations; `trunk.safetensors`
/// (the checkpoint's own names) feeds `fit --weights`, whose trunk then has the tuned top and the
/// original frozen part, byte for byte; a finished run resumed changes nothing.
#[test]
fn contrastive_and_siamese_tune_a_pretrained_trunks_top_that_fit_starts_from() {
    let dir = scratch("pretrain-trunk");
    let home = isolated_home("pretrain-trunk");
    let unlabelled = import("fashion-mnist", "train", 2, 1, &dir.join("unlabelled"));
    let labelled = import("fashion-mnist", "train", 1, 2, &dir.join("labelled"));
    let original = graft_weights::load(&super::lite0_weights()).unwrap();
    let top = |name: &str| name.starts_with("_blocks.15.") || name.starts_with("_conv_head.") || name.starts_with("_bn1.");
    // The tensors of `tuned` against the original: every one under the original names, or a
    // fit's convolutions (`trunk.` + the same name; its BatchNorms have burn's names): the frozen
    // part byte-identical, the top's convolutions changed, its BatchNorm statistics not.
    let check = |tuned: &graft_weights::StateDict, prefix: &str, what: &str, at_least: usize| {
        let mut compared = 0;
        for (name, t) in &original.tensors {
            let Some(u) = tuned.tensors.get(&format!("{prefix}{name}")) else {
                assert!(name.starts_with("_fc.") || !prefix.is_empty() && name.contains("_bn"), "{what}: no {prefix}{name}");
                continue;
            };
            compared += 1;
            if top(name) && (name.ends_with("conv.weight") || name == "_conv_head.weight") {
                assert!(u.data != t.data, "{what}: {name} did not train");
            } else if !top(name) || name.contains("running_") {
                assert!(u.data == t.data && u.shape == t.shape, "{what}: frozen {name} changed");
            }
        }
        assert!(compared >= at_least, "{what}: only {compared} tensors compared");
    };

    let pre = dir.join("simclr");
    let args = [
        "pretrain", "--method", "contrastive", "--model", "efficientnet-lite0", "--data", s(&unlabelled), "--epochs", "1",
        "--batch-size", "10", "--cache-views", "3", "--lr", "0.001", "--out", s(&pre), "--json",
    ];
    let p = json_of(&graft_in(&home, &args));
    assert_eq!((p["epochs"].as_u64(), p["images"].as_u64(), p["cut"].as_str()), (Some(1), Some(20), Some("_blocks.14")), "{p}");
    assert!(p["trainable_params"].as_u64().unwrap() > 500_000 && p["last_epoch_loss"].as_f64().unwrap().is_finite(), "{p}");
    let trunk = graft_weights::load(&pre.join("trunk.safetensors")).unwrap();
    check(&trunk, "", "trunk.safetensors", original.tensors.len() - 2);
    // The projection head trained with the top and is not in trunk.safetensors.
    assert!(!trunk.tensors.keys().any(|k| k.starts_with("head.")));

    // A finished run resumed trains nothing and rewrites nothing.
    let saved = std::fs::read(pre.join("trunk.safetensors")).unwrap();
    json_of(&graft_in(&home, &["pretrain", "--resume", s(&pre), "--json"]));
    assert!(std::fs::read(pre.join("trunk.safetensors")).unwrap() == saved, "the resumed finished run rewrote trunk.safetensors");

    // The next step: a head on the tuned trunk.
    let run = dir.join("fit");
    let weights = pre.join("trunk.safetensors");
    json_of(&graft_in(&home, &["fit", "--model", "efficientnet-lite0", "--weights", s(&weights), "--data", s(&labelled), "--val-split", "0", "--epochs", "1", "--out", s(&run), "--json"]));
    check(&graft_weights::load(&run.join("best.safetensors")).unwrap(), "trunk.", "fit --weights trunk.safetensors", 49);

    // Siamese: pairs of the unlabelled images (the first two of each class same, across classes different).
    let classes = class_files(&unlabelled);
    let mut csv = String::from("a,b,same\n");
    for (k, (_, own)) in classes.iter().enumerate() {
        let next = &classes[(k + 1) % classes.len()].1;
        csv.push_str(&format!("{},{},1\n{},{},0\n", own[0], own[1], own[0], next[1]));
    }
    let pairs = dir.join("pairs.csv");
    std::fs::write(&pairs, csv).unwrap();
    let siamese = dir.join("siamese");
    let args = ["pretrain", "--method", "siamese", "--model", "efficientnet-lite0", "--pairs", s(&pairs), "--data", s(&unlabelled), "--epochs", "1", "--lr", "0.001", "--out", s(&siamese), "--json"];
    let p = json_of(&graft_in(&home, &args));
    assert_eq!((p["pairs"].as_u64(), p["images"].as_u64()), (Some(20), Some(20)), "{p}");
    // The top alone trains (no projection head): the last block, the head convolution and BatchNorm.
    assert_eq!(p["trainable_params"].as_u64(), Some(1_017_600), "{p}");
    check(&graft_weights::load(&siamese.join("trunk.safetensors")).unwrap(), "", "siamese trunk.safetensors", original.tensors.len() - 2);
    let inspected = json_of(&graft_in(&home, &["inspect", "--run", s(&siamese), "--json"]));
    assert_eq!((inspected["model"]["kind"].as_str(), inspected["finished"].as_bool()), (Some("trunk-pretrain"), Some(true)), "{inspected}");

    // Settings that cannot train a top are refused by flag, leaving no run.
    let x = dir.join("x");
    let base = ["pretrain", "--model", "efficientnet-lite0", "--data", s(&unlabelled), "--out", s(&x)];
    fn joined<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let with = |extra: &[&'static str]| joined(&base, extra);
    assert_bad_input(&graft_in(&home, &with(&["--method", "contrastive", "--freeze", "all"])), &["--freeze", "all"]);
    assert_bad_input(&graft_in(&home, &with(&["--method", "contrastive", "--cache-views", "1"])), &["--cache-views", "1"]);
    assert_bad_input(&graft_in(&home, &with(&["--method", "rbm"])), &["--method", "rbm"]);
    assert_bad_input(&graft_in(&home, &with(&["--method", "contrastive", "--arch", "mlp:8"])), &["--arch"]);
    assert!(!x.exists(), "refused settings leave no run directory");
}
