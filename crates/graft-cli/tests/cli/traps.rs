//! Training without silent traps: a diverging run stops (exit 2) instead of saving NaN weights,
//! config values are checked, `--monitor` picks the kept epoch, `--epochs` extends a finished
//! run, and Ctrl-C leaves a resumable run.

use std::path::Path;

use super::fit::fmnist;
use super::{assert_bad_input, graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every tensor of a safetensors file is finite; returns its `graft.epoch`.
fn finite_checkpoint(path: &Path) -> usize {
    let dict = graft_weights::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (name, t) in &dict.tensors {
        assert!(t.data.iter().all(|v| v.is_finite()), "{}: tensor {name} is not finite", path.display());
    }
    dict.metadata["graft.epoch"].parse().unwrap()
}

#[test]
fn a_diverging_learning_rate_stops_training_with_exit_2() {
    let dir = scratch("traps-nan");
    let data = fmnist(&dir, 4, 11);
    let run = dir.join("run");
    let out = graft(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "3", "--batch-size", "4", "--lr", "1e30"]);
    assert_bad_input(&out, &["diverged", "epoch 1", "1e30", "lower --lr (e.g. 1e29)"]);
    assert!(out.stdout.is_empty(), "no summary claims an accuracy: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!run.join("best.safetensors").exists(), "no epoch completed, so no best checkpoint");
    assert!(!run.join("summary.json").exists());

    // Two good epochs, then a stage whose rate diverges: the run stops in epoch 3, and the best
    // checkpoint is still one of the good epochs, finite and loadable.
    let run = dir.join("staged");
    let out = graft(&["fit", "--data", s(&data), "--out", s(&run), "--stages", "head:2:1e-3,head:2:1e30", "--batch-size", "4", "--lr", "1e-3"]);
    assert_bad_input(&out, &["diverged", "epoch 3", "lower --lr"]);
    let best = finite_checkpoint(&run.join("best.safetensors"));
    assert!(best == 1 || best == 2, "best.safetensors is from epoch {best}");
    assert_eq!(finite_checkpoint(&run.join("last.safetensors")), 2);
    assert_eq!(metrics(&run).len(), 2, "the diverged epoch has no metrics line");
}

#[test]
fn monitor_val_loss_keeps_the_epoch_with_the_lowest_validation_loss() {
    let dir = scratch("traps-monitor");
    let data = fmnist(&dir, 6, 12);
    let mut trained = Vec::new();
    for (monitor, flag) in [("val_loss", None), ("val_loss", Some("val_loss")), ("val_accuracy", Some("val_accuracy"))] {
        let run = dir.join(format!("run-{monitor}-{}", flag.is_some()));
        let mut args = vec!["fit", "--data", s(&data), "--out", s(&run), "--epochs", "6", "--batch-size", "4", "--lr", "3e-2", "--val-split", "0.5", "--patience", "2", "--json"];
        if let Some(m) = flag {
            args.extend(["--monitor", m]);
        }
        let v = json_of(&graft(&args));
        let m = metrics(&run);
        let loss = |e: &serde_json::Value| e["val_loss"].as_f64().unwrap();
        let acc = |e: &serde_json::Value| e["val_accuracy"].as_f64().unwrap();
        // Early stopping watches the same metric: the run ends at the first epoch that is the
        // second in a row without a strict improvement, or after all 6.
        let watched: Vec<f64> = m.iter().map(|e| if monitor == "val_loss" { -loss(e) } else { acc(e) }).collect();
        let (mut best, mut bad, mut stop) = (f64::NEG_INFINITY, 0, None);
        for (i, &w) in watched.iter().enumerate() {
            if w > best { (best, bad) = (w, 0) } else { bad += 1 }
            if bad == 2 {
                stop = Some(i + 1);
                break;
            }
        }
        assert_eq!(m.len(), stop.unwrap_or(6), "--monitor {monitor}: {m:?}");
        assert_eq!(v["stopped_early"], stop.is_some());
        trained.push(m.len());
        let expected = if monitor == "val_loss" {
            // The first epoch with the lowest validation loss.
            let min = m.iter().map(loss).fold(f64::INFINITY, f64::min);
            m.iter().position(|e| loss(e) == min).unwrap() + 1
        } else {
            // The highest accuracy; among equals, the lowest loss.
            let max = m.iter().map(acc).fold(0.0, f64::max);
            let min = m.iter().filter(|e| acc(e) == max).map(loss).fold(f64::INFINITY, f64::min);
            m.iter().position(|e| acc(e) == max && loss(e) == min).unwrap() + 1
        };
        assert_eq!(v["best_epoch"].as_u64().unwrap() as usize, expected, "--monitor {monitor}: {m:?}");
        assert_eq!(finite_checkpoint(&run.join("best.safetensors")), expected);
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains(&format!("monitor = \"{monitor}\"")), "{config}");
    }
    // Here the validation accuracy is 1 from the first epoch while the loss still falls: watching
    // the accuracy stops training early, watching the loss does not.
    assert!(trained[2] < trained[0] && trained[0] == trained[1], "epochs trained: {trained:?}");
    let out = graft(&["fit", "--data", s(&data), "--out", s(&dir.join("bad")), "--monitor", "accuracy"]);
    assert_bad_input(&out, &["--monitor", "accuracy", "val_loss"]);
}

#[test]
fn epochs_extend_a_finished_run_and_override_a_config_file() {
    let dir = scratch("traps-extend");
    let data = fmnist(&dir, 4, 13);
    let run = dir.join("run");
    let v = json_of(&graft(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "5", "--batch-size", "4", "--json"]));
    assert_eq!(v["epochs"], 5);
    let v = json_of(&graft(&["fit", "--resume", s(&run), "--epochs", "8", "--json"]));
    assert_eq!(v["epochs"], 8);
    let epochs: Vec<u64> = metrics(&run).iter().map(|m| m["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, (1..=8).collect::<Vec<_>>());
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains("epochs = 8"));
    // Fewer epochs than the run already trained is refused, and so is a setting --resume
    // would ignore.
    assert_bad_input(&graft(&["fit", "--resume", s(&run), "--epochs", "3"]), &["--epochs", "3", "8"]);
    assert_bad_input(&graft(&["fit", "--resume", s(&run), "--epochs", "9", "--lr", "0.1"]), &["--resume", "--lr"]);
    assert_eq!(metrics(&run).len(), 8);

    // --config FILE --epochs N: the flag wins over the file.
    let config = run.join("config.toml");
    let again = dir.join("again");
    let v = json_of(&graft(&["fit", "--config", s(&config), "--out", s(&again), "--epochs", "2", "--json"]));
    assert_eq!(v["epochs"], 2);
    assert_eq!(metrics(&again).len(), 2);

    // Config values a flag would refuse are refused from the file too, naming the setting.
    let text = std::fs::read_to_string(&config).unwrap();
    for (key, line) in [("warmup_epochs", "warmup_epochs = nan"), ("min_delta", "min_delta = nan"), ("min_delta", "min_delta = -1.0")] {
        let bad = dir.join(format!("{key}.toml"));
        let edited: String = text.lines().map(|l| if l.starts_with(&format!("{key} =")) { line.to_string() } else { l.to_string() } + "\n").collect();
        assert_ne!(edited, text, "config.toml has no `{key}` line");
        std::fs::write(&bad, edited).unwrap();
        let out_dir = dir.join(format!("out-{key}"));
        assert_bad_input(&graft(&["fit", "--config", s(&bad), "--out", s(&out_dir)]), &[key]);
        assert!(!out_dir.exists(), "a refused config leaves no run directory");
    }
}

#[test]
fn ctrl_c_stops_fit_with_a_resume_command_and_the_run_resumes() {
    let dir = scratch("traps-sigint");
    let data = fmnist(&dir, 3, 14);
    let run = dir.join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(["fit", "--data", s(&data), "--out", s(&run), "--epochs", "100000", "--batch-size", "3"])
        .env("GRAFT_HOME", super::test_home())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics_path = run.join("metrics.jsonl");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&metrics_path).map(|m| !m.is_empty()).unwrap_or(false) {
        assert!(started.elapsed().as_secs() < 300, "no epoch completed in 300 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "stderr: {stderr}");
    let expected = format!("interrupted: resume with graft fit --resume {}", run.display());
    assert!(stderr.lines().any(|l| l == expected), "stderr lacks `{expected}`: {stderr}");
    assert!(out.stdout.is_empty());

    // The run continues from its last completed epoch; a short new total finishes it.
    let done = metrics(&run).len();
    assert!(done >= 1);
    let total = (done + 1).to_string();
    let v = json_of(&graft(&["fit", "--resume", s(&run), "--epochs", &total, "--json"]));
    assert_eq!(v["epochs"].as_u64().unwrap() as usize, done + 1);
    let epochs: Vec<usize> = metrics(&run).iter().map(|m| m["epoch"].as_u64().unwrap() as usize).collect();
    assert_eq!(epochs, (1..=done + 1).collect::<Vec<_>>());
}

#[test]
fn fit_starts_with_a_data_summary_and_names_skipped_files_once() {
    let dir = scratch("traps-data");
    let data = fmnist(&dir, 4, 15);
    std::fs::write(data.join("Bag").join("broken.png"), b"not a png").unwrap();
    let run = dir.join("run");
    let out = graft(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--val-split", "0.25", "--json"]);
    let v = json_of(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("broken.png").count(), 1, "named once: {stderr}");
    let d = &v["data"];
    assert_eq!(d["classes"], serde_json::json!(["Bag", "Sneaker", "Trouser"]));
    assert_eq!(d["skipped"], 1);
    // The split is drawn before decoding, so the broken file takes a place on one side.
    let counts = |key: &str| -> Vec<u64> { d[key].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect() };
    let (train, val) = (counts("train_per_class"), counts("val_per_class"));
    assert_eq!((train.iter().sum::<u64>(), val.iter().sum::<u64>()), (d["train"].as_u64().unwrap(), d["val"].as_u64().unwrap()));
    let per_class: Vec<u64> = train.iter().zip(&val).map(|(t, v)| t + v).collect();
    assert_eq!(per_class, vec![4, 4, 4], "{d}");
    assert_eq!(&train[1..], &[3, 3]);
    let line = stderr.lines().find(|l| l.starts_with("data: ")).unwrap_or_else(|| panic!("no data line: {stderr}"));
    let expected = format!(
        "data: 3 classes, 12 images ({} train + {} validation): Bag {}+{}, Sneaker 3+1, Trouser 3+1; 1 unreadable files skipped",
        d["train"], d["val"], train[0], val[0]
    );
    assert_eq!(line, expected);
    // The human summary counts the skipped files instead of listing them again.
    let out = graft(&["fit", "--data", s(&data), "--out", s(&dir.join("human")), "--epochs", "1", "--val-split", "0.25"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("skipped 1 unreadable files (named above)") && !stdout.contains("broken.png"), "{stdout}");
}
