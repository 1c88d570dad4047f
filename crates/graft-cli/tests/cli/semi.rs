//! `graft fit --unlabelled DIR --method pseudo-label|fixmatch|mean-teacher`: semi-supervised
//! training of the head (and of the trunk blocks `--freeze N` leaves trainable) on stored
//! features of labelled and unlabelled data.

use std::path::Path;

use super::fit::{fmnist, trunk_pairs};
use super::text::{import_csv, minilm};
use super::{assert_bad_input, graft, graft_in, isolated_home, json_of, lite0_weights, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn misses(v: &serde_json::Value) -> u64 {
    v["cache"]["misses"].as_u64().unwrap()
}

/// Each method trains from 4 labelled images per class and an unlabelled folder (its class
/// sub-folders ignored): the per-epoch line names the method and its unlabelled loss, FixMatch
/// stores plain, weak and strong views once (a second run computes nothing), an identity weak
/// transform reads the plain rows and stores no views, the mean teacher's
/// kept weights are the averaged ones, and every run evaluates like a supervised one.
#[test]
fn semi_supervised_image_fits_store_their_views_once_and_evaluate() {
    let dir = scratch("semi-images");
    let labelled = fmnist(&dir.join("labelled"), 4, 1);
    let unlabelled = fmnist(&dir.join("unlabelled"), 8, 2); // 24 images in 3 class folders
    let home = isolated_home("semi-images");
    let fit = |name: &str, extra: &[&str]| {
        let run = dir.join(name);
        let args = [&["fit", "--data", s(&labelled), "--out", s(&run), "--unlabelled", s(&unlabelled), "--val-split", "0", "--epochs", "3"][..], extra, &["--batch-size", "4", "--unlabelled-ratio", "2", "--json"]].concat();
        (json_of(&graft_in(&home, &args)), run)
    };

    let (v, run) = fit("fixmatch", &["--method", "fixmatch", "--unlabelled-views", "1", "--threshold", "0.5"]);
    assert_eq!(v["epochs"], 3);
    // 12 labelled plain + 24 unlabelled plain + 24 weak + 24 strong views (no plain strong row).
    assert_eq!(misses(&v), 12 + 24 + 24 + 24, "{v}");
    let lines = records(&run);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_eq!(line["semi_method"], "fixmatch");
        let confident = line["confident"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&confident), "{line}");
        assert!(line["unlabelled_loss"].as_f64().unwrap() >= 0.0, "{line}");
    }
    // 24 unlabelled rows, 8 per iteration: 3 iterations an epoch.
    let (again, _) = fit("fixmatch-again", &["--method", "fixmatch", "--unlabelled-views", "1", "--threshold", "0.5"]);
    assert_eq!(misses(&again), 0, "the second run reads every view from the store: {again}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("[semi]") && config.contains("method = \"fixmatch\""), "{config}");
    let e = json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&labelled), "--json"]));
    assert_eq!(e["n"], 12);

    let (v, run) = fit("pseudo", &["--method", "pseudo-label", "--unlabelled-views", "1"]);
    assert_eq!(misses(&v), 0, "pseudo-label reads the weak views FixMatch stored: {v}");
    assert!(records(&run).iter().all(|l| l["semi_method"] == "pseudo-label" && l["confident"].is_number()));

    // `--weak-augment none` reads the plain rows: 24 stored once, whatever --unlabelled-views says.
    let (v, run) = fit("pseudo-plain", &["--method", "pseudo-label", "--weak-augment", "none", "--unlabelled-views", "3"]);
    assert_eq!(misses(&v), 24, "the plain unlabelled rows only: {v}");
    assert_eq!(records(&run).len(), 3);
    let (v, _) = fit("pseudo-plain-again", &["--method", "pseudo-label", "--weak-augment", "none"]);
    assert_eq!(misses(&v), 0, "{v}");

    let (_, run) = fit("teacher", &["--method", "mean-teacher", "--unlabelled-views", "1", "--ema", "0.9", "--rampup-epochs", "1"]);
    assert!(records(&run).iter().all(|l| l["semi_method"] == "mean-teacher" && l["confident"].is_null()));
    // The teacher (kept in best.safetensors, saved beside the optimiser state) is an average
    // of the student's weights, not the student (last.safetensors).
    assert!(run.join("teacher-3.safetensors").is_file());
    let head = |file: &str| -> Vec<f32> { graft_weights::load(&run.join(file)).unwrap().tensors["head.layers.0.weight"].data.clone() };
    let (best, last, teacher) = (head("best.safetensors"), head("last.safetensors"), head("teacher-3.safetensors"));
    assert_eq!(best, teacher);
    assert_ne!(best, last);
    json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&labelled), "--json"]));
}


fn load(path: &Path) -> graft_weights::StateDict {
    graft_weights::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `--freeze 15` leaves Lite0's last MBConv block (`_blocks.15`) and head convolution
/// trainable: FixMatch and the mean teacher store the views once as `_blocks.14`'s activations
/// (the mean teacher reads the weak views FixMatch stored), every loss trains the block, and the
/// frozen prefix stays bit-identical to the pretrained weights; the block's BatchNorm statistics
/// stay fixed (inference mode) while its scale trains. The mean teacher keeps the average of
/// the block's weights as well as the head's.
#[test]
fn semi_supervised_fits_train_the_blocks_freeze_leaves_trainable() {
    let dir = scratch("semi-unfrozen");
    let labelled = fmnist(&dir.join("labelled"), 4, 6);
    let unlabelled = fmnist(&dir.join("unlabelled"), 4, 7); // 12 images
    let home = isolated_home("semi-unfrozen");
    let pretrained = load(&lite0_weights());
    let fit = |name: &str, extra: &[&str]| {
        let run = dir.join(name);
        let args = [
            &["fit", "--data", s(&labelled), "--out", s(&run), "--unlabelled", s(&unlabelled), "--freeze", "15", "--unlabelled-views", "1", "--val-split", "0", "--epochs", "2"][..],
            extra,
            &["--batch-size", "4", "--unlabelled-ratio", "2", "--lr", "1e-3", "--json"],
        ]
        .concat();
        (json_of(&graft_in(&home, &args)), run)
    };
    let head_params = 1280 * 3 + 3;
    for (method, extra, computed) in [("fixmatch", &["--threshold", "0.0"][..], 12 + 12 + 12 + 12), ("mean-teacher", &["--ema", "0.9", "--rampup-epochs", "0"][..], 0)] {
        let (v, run) = fit(method, &[&["--method", method][..], extra].concat());
        assert_eq!(v["epochs"], 2, "{v}");
        // 12 labelled + 12 unlabelled plain + 12 weak + 12 strong rows at the cut; the mean
        // teacher finds the labelled and weak rows stored.
        assert_eq!(misses(&v), computed, "{method}: {v}");
        assert!(v["trainable_params"].as_u64().unwrap() > head_params, "{method}: the block trains too: {v}");
        assert!(records(&run).iter().all(|l| l["semi_method"] == method && l["unlabelled_loss"].as_f64().unwrap() > 0.0), "{method}: {:?}", records(&run));
        let last = load(&run.join("last.safetensors"));
        for prefix in ["_conv_stem", "_bn0", "_blocks.0.", "_blocks.7.", "_blocks.14.", "_blocks.15._bn0.running_", "_blocks.15._bn2.running_"] {
            let pairs = trunk_pairs(&pretrained, &last, prefix);
            assert!(!pairs.is_empty(), "{prefix}");
            for (name, a, b) in pairs {
                assert!(a == b, "{method}: {name} changed although it is frozen (or a BN statistic in inference mode)");
            }
        }
        for prefix in ["_blocks.15._expand_conv.weight", "_blocks.15._depthwise_conv.weight", "_blocks.15._project_conv.weight", "_blocks.15._bn2.weight", "_conv_head.weight"] {
            let pairs = trunk_pairs(&pretrained, &last, prefix);
            assert_eq!(pairs.len(), 1, "{prefix}");
            assert!(pairs[0].1 != pairs[0].2, "{method}: {prefix} did not train");
        }
        let e = json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&labelled), "--json"]));
        assert_eq!(e["n"], 12);
    }
    // The teacher (best.safetensors) averages the block's weights too: it lies between the
    // pretrained block and the student's (last.safetensors), equal to neither.
    let run = dir.join("mean-teacher");
    let (best, last, teacher) = (load(&run.join("best.safetensors")), load(&run.join("last.safetensors")), load(&run.join("teacher-2.safetensors")));
    let block = |d: &graft_weights::StateDict| d.tensors["trunk._blocks.15._project_conv.weight"].data.clone();
    assert_eq!(block(&best), block(&teacher));
    assert_ne!(block(&best), block(&last));
    assert_ne!(block(&best), pretrained.tensors["_blocks.15._project_conv.weight"].data);
}

/// A killed mean-teacher run resumes from its last epoch with the teacher of that epoch, and
/// ends with the same figures as a run that was never interrupted.
#[test]
fn a_killed_mean_teacher_fit_resumes_to_the_same_result() {
    killed_and_resumed("semi-resume", &[], 10, 30);
}

/// The same with Lite0's last block trainable (`--freeze 15`): the optimiser state, the
/// student's and the teacher's block weights all come back after the kill.
#[test]
fn a_killed_mean_teacher_fit_with_a_trainable_block_resumes_to_the_same_result() {
    killed_and_resumed("semi-resume-unfrozen", &["--freeze", "15"], 4, 4);
}

/// Fits `epochs` mean-teacher epochs (12 labelled images, `unlabelled` per class unlabelled)
/// whole and again killed after an epoch and resumed; both end with the same metrics and kept
/// weights (head and, with `extra` unfreezing it, the last block).
fn killed_and_resumed(name: &str, extra: &[&str], unlabelled: usize, epochs: usize) {
    let dir = scratch(name);
    let labelled = fmnist(&dir.join("labelled"), 4, 3);
    let unlabelled = fmnist(&dir.join("unlabelled"), unlabelled, 4);
    let home = isolated_home(name);
    let args = |run: &Path| -> Vec<String> {
        ["fit", "--data", s(&labelled), "--out", s(run), "--unlabelled", s(&unlabelled), "--method", "mean-teacher", "--unlabelled-views", "1", "--val-split", "0", "--batch-size", "2", "--unlabelled-ratio", "1", "--json"]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .chain(["--epochs".to_string(), epochs.to_string()])
            .collect()
    };
    let whole = dir.join("whole");
    let whole_args = args(&whole);
    json_of(&graft_in(&home, &whole_args.iter().map(String::as_str).collect::<Vec<_>>()));

    let run = dir.join("killed");
    let killed_args = args(&run);
    let killed_args: Vec<&str> = killed_args.iter().map(String::as_str).collect();
    let before = super::kill_after_first_epoch(&home, &killed_args, &run.join("metrics.jsonl"), std::time::Duration::ZERO);
    assert!(before >= 1 && before < epochs, "kill landed after {before} epochs");
    let v = json_of(&graft_in(&home, &["fit", "--resume", s(&run), "--json"]));
    assert_eq!(v["epochs"], epochs);
    let strip = |lines: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        lines
            .into_iter()
            .map(|mut l| {
                l.as_object_mut().unwrap().remove("seconds");
                l
            })
            .collect()
    };
    assert_eq!(strip(records(&run)), strip(records(&whole)), "the resumed run's epochs equal the uninterrupted run's");
    let best = |r: &Path, tensor: &str| graft_weights::load(&r.join("best.safetensors")).unwrap().tensors[tensor].data.clone();
    assert_eq!(best(&run, "head.layers.0.weight"), best(&whole, "head.layers.0.weight"));
    if !extra.is_empty() {
        let block = "trunk._blocks.15._project_conv.weight";
        assert_eq!(best(&run, block), best(&whole, block));
        assert_ne!(best(&whole, block), load(&lite0_weights()).tensors["_blocks.15._project_conv.weight"].data, "the block trained");
    }
    let files: Vec<String> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let teachers: Vec<&String> = files.iter().filter(|f| f.starts_with("teacher-")).collect();
    assert_eq!(teachers, [&format!("teacher-{epochs}.safetensors")], "only the last epoch's teacher is kept: {files:?}");
}

#[test]
fn semi_supervised_settings_are_checked() {
    let dir = scratch("semi-bad");
    let labelled = fmnist(&dir.join("labelled"), 2, 5);
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = dir.join("run");
    let base = ["fit", "--data", s(&labelled), "--out", s(&run)];
    let with = |extra: &[&str]| graft(&[&base[..], extra].concat());
    assert_bad_input(&with(&["--unlabelled", s(&labelled)]), &["--method", "pseudo-label, fixmatch, mean-teacher"]);
    assert_bad_input(&with(&["--unlabelled", s(&empty), "--method", "fixmatch"]), &[s(&empty), "no image files"]);
    assert_bad_input(&with(&["--unlabelled", s(&labelled), "--method", "mixmatch"]), &["mixmatch", "fixmatch"]);
    assert_bad_input(&with(&["--unlabelled", s(&labelled), "--method", "fixmatch", "--ema", "0.9"]), &["ema", "fixmatch"]);
    assert_bad_input(&with(&["--unlabelled", s(&labelled), "--method", "pseudo-label", "--threshold", "2"]), &["threshold"]);
    assert_bad_input(&with(&["--unlabelled", s(&labelled), "--method", "fixmatch", "--unlabelled-ratio", "0"]), &["unlabelled-ratio"]);
    assert_bad_input(&with(&["--unlabelled", s(&labelled), "--method", "fixmatch", "--freeze", "none"]), &["--freeze", "first stage must stay frozen"]);
    assert_bad_input(&with(&["--unlabelled", s(&labelled), "--method", "fixmatch", "--stages", "head:1,top2:1"]), &["--stages", "--freeze N"]);
    assert_bad_input(&with(&["--unlabelled", s(&labelled), "--method", "fixmatch", "--strong-augment", "randaugment:2:20"]), &["randaugment"]);
    assert!(!run.exists(), "a refused fit leaves no run directory");
    // clap's own refusal: the flag it needs is named on the line below.
    let out = graft(&["fit", "--data", s(&labelled), "--out", s(&run), "--method", "fixmatch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--unlabelled"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Text: pseudo-label and mean teacher on MiniLM embeddings of unlabelled texts (a CSV whose
/// label column, if any, is not read); FixMatch is refused for text.
#[test]
fn semi_supervised_text_fit_reads_unlabelled_texts() {
    minilm();
    let dir = scratch("semi-text");
    let labelled = dir.join("labelled.csv");
    import_csv("sms-spam", 6, &labelled);
    let pool = dir.join("pool.csv");
    import_csv("sms-spam", 20, &pool);
    // Unlabelled: the pool's texts, with no `label` column (its classes under another name,
    // which nothing reads).
    let pooled = std::fs::read_to_string(&pool).unwrap();
    let (header, rows) = pooled.split_once('\n').unwrap();
    assert_eq!(header, "text,label");
    let unlabelled = dir.join("unlabelled.csv");
    std::fs::write(&unlabelled, format!("text,kept_aside\n{rows}")).unwrap();
    let home = isolated_home("semi-text");
    for method in ["pseudo-label", "mean-teacher"] {
        let run = dir.join(method);
        let v = json_of(&graft_in(&home, &["fit", "--model", "minilm-l6", "--data", s(&labelled), "--unlabelled", s(&unlabelled), "--method", method, "--val-split", "0", "--epochs", "4", "--batch-size", "4", "--out", s(&run), "--json"]));
        assert_eq!(v["epochs"], 4);
        let lines = records(&run);
        assert!(lines.iter().all(|l| l["semi_method"] == method), "{lines:?}");
        let e = json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&pool), "--json"]));
        assert_eq!(e["n"], 40);
    }
    let out = graft_in(&home, &["fit", "--model", "minilm-l6", "--data", s(&labelled), "--unlabelled", s(&unlabelled), "--method", "fixmatch", "--out", s(&dir.join("fm"))]);
    assert_bad_input(&out, &["fixmatch", "pseudo-label or mean-teacher"]);
}

/// Reads a `text,label` CSV.
fn read_pairs(path: &Path) -> Vec<(String, String)> {
    csv::Reader::from_path(path).unwrap().records().map(|r| r.unwrap()).map(|r| (r[0].to_string(), r[1].to_string())).collect()
}

/// Writes rows under `header` (as CSV, quoted where needed).
fn write_rows(path: &Path, header: &[&str], rows: &[Vec<String>]) {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(header).unwrap();
    rows.iter().for_each(|r| w.write_record(r).unwrap());
    w.flush().unwrap();
}

/// Amazon reviews from two domains with two label columns (sentiment, domain): one MiniLM pass
/// over the texts feeds a head per task, and each task scores within a point of a fit on that
/// task alone; `eval` reports every task, `predict` prints every task's classes.
#[test]
fn multi_task_text_fit_trains_a_head_per_task_from_one_encoder_pass() {
    minilm();
    let dir = scratch("multitask");
    let mut rows = Vec::new();
    for domain in ["books", "kitchen"] {
        let csv = dir.join(format!("{domain}.csv"));
        import_csv(&format!("amazon:{domain}"), 60, &csv);
        rows.extend(read_pairs(&csv).into_iter().map(|(text, sentiment)| vec![text, sentiment, domain.to_string()]));
    }
    // Every other review trains, the rest tests.
    let (train, test): (Vec<_>, Vec<_>) = rows.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let (train, test): (Vec<Vec<String>>, Vec<Vec<String>>) = (train.into_iter().map(|r| r.1).collect(), test.into_iter().map(|r| r.1).collect());
    let (train_csv, test_csv) = (dir.join("train.csv"), dir.join("test.csv"));
    write_rows(&train_csv, &["text", "sentiment", "domain"], &train);
    write_rows(&test_csv, &["text", "sentiment", "domain"], &test);
    let home = isolated_home("multitask");
    let fit = |name: &str, data: &Path, extra: &[&str]| {
        let run = dir.join(name);
        let args = [&["fit", "--model", "minilm-l6", "--data", s(data), "--out", s(&run), "--val-split", "0", "--epochs", "40", "--json"][..], extra].concat();
        (json_of(&graft_in(&home, &args)), run)
    };
    let (v, run) = fit("both", &train_csv, &["--tasks", "sentiment,domain", "--task-weights", "1,1"]);
    assert_eq!(misses(&v), train.len() as u64, "each training text goes through the encoder once: {v}");
    let e = json_of(&graft_in(&home, &["eval", "--run", s(&run), "--data", s(&test_csv), "--json"]));
    let multi = |task: &str| e["tasks"][task]["accuracy"].as_f64().unwrap_or_else(|| panic!("no {task} in {e}"));
    assert_eq!(e["tasks"]["domain"]["labels"], serde_json::json!(["books", "kitchen"]));
    let line = records(&run).pop().unwrap();
    assert!(line["tasks"]["sentiment"]["train_accuracy"].is_number() && line["tasks"]["domain"]["train_accuracy"].is_number(), "{line}");

    for (task, column) in [("sentiment", 1), ("domain", 2)] {
        let single_rows = |rows: &[Vec<String>]| -> Vec<Vec<String>> { rows.iter().map(|r| vec![r[0].clone(), r[column].clone()]).collect() };
        let (one_train, one_test) = (dir.join(format!("{task}-train.csv")), dir.join(format!("{task}-test.csv")));
        write_rows(&one_train, &["text", "label"], &single_rows(&train));
        write_rows(&one_test, &["text", "label"], &single_rows(&test));
        let (_, one) = fit(task, &one_train, &[]);
        let single = json_of(&graft_in(&home, &["eval", "--run", s(&one), "--data", s(&one_test), "--json"]))["accuracy"].as_f64().unwrap();
        assert!((multi(task) - single).abs() <= 0.01 + 1e-9, "{task}: multi-task {} vs single-task {single}", multi(task));
        assert!(single > 0.6, "{task}: {single}");
    }

    let p = json_of(&graft_in(&home, &["predict", "--run", s(&run), "--text", "This blender broke after a week. Awful.", "--json"]));
    let tasks = &p["predictions"][0]["tasks"];
    assert!(tasks["sentiment"][0]["label"].as_str().unwrap().starts_with("sentiment/"), "{p}");
    assert!(tasks["domain"][0]["label"].as_str().unwrap().starts_with("domain/"), "{p}");
    assert_bad_input(&graft_in(&home, &["fit", "--model", "minilm-l6", "--data", s(&train_csv), "--out", s(&dir.join("bad")), "--tasks", "sentiment,colour"]), &["colour"]);
    assert_bad_input(&graft_in(&home, &["fit", "--data", s(&dir), "--out", s(&dir.join("bad2")), "--tasks", "a,b"]), &["--tasks", "text CSV"]);
}
