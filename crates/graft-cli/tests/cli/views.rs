//! What a user looks at after training: `eval`'s classification report, confusion matrix and
//! worst errors (and `--out-dir`), `predict` on a folder with `--csv`, `inspect --run`.

use std::path::Path;

use super::fit::fmnist;
use super::{graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One trained run on three Fashion-MNIST classes, evaluated on another seeded sample.
#[test]
fn eval_reports_per_class_metrics_confusion_and_worst_errors() {
    let dir = scratch("views-eval");
    let train = fmnist(&dir.join("train"), 6, 1);
    let test = fmnist(&dir.join("test"), 10, 2);
    let run = dir.join("run");
    json_of(&graft(&["fit", "--data", s(&train), "--out", s(&run), "--epochs", "2", "--val-split", "0", "--json"]));

    let v = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&test), "--errors", "3", "--out-dir", s(&dir.join("report")), "--json"]));
    let labels: Vec<&str> = v["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(labels.len(), 3);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(v["confusion"].clone()).unwrap();
    let classes = v["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 3);
    // Each row agrees with the confusion matrix it came from.
    for (i, c) in classes.iter().enumerate() {
        let support: u64 = confusion[i].iter().sum();
        let predicted: u64 = confusion.iter().map(|r| r[i]).sum();
        assert_eq!(c["support"], support);
        assert_eq!(support, 10, "10 test images per class: {c}");
        let recall = confusion[i][i] as f64 / support as f64;
        assert!((c["recall"].as_f64().unwrap() - recall).abs() < 1e-9, "{c}");
        if predicted > 0 {
            let precision = confusion[i][i] as f64 / predicted as f64;
            assert!((c["precision"].as_f64().unwrap() - precision).abs() < 1e-9, "{c}");
        }
    }
    // Errors: at most 3 listed, all misclassified, lowest probability of the true class first.
    let n_wrong: u64 = (0..3).map(|i| confusion[i].iter().sum::<u64>() - confusion[i][i]).sum();
    assert_eq!(v["misclassified"], n_wrong);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len() as u64, n_wrong.min(3));
    for pair in errors.windows(2) {
        assert!(pair[0]["p_true"].as_f64() <= pair[1]["p_true"].as_f64(), "{errors:?}");
    }
    for e in errors {
        assert_ne!(e["true"], e["predicted"]);
        assert!(Path::new(e["input"].as_str().unwrap()).is_file());
    }
    // --out-dir: the confusion plot and every error as CSV (header + one row each).
    let png = std::fs::read(dir.join("report/eval.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let csv = std::fs::read_to_string(dir.join("report/errors.csv")).unwrap();
    assert_eq!(csv.lines().count() as u64, n_wrong + 1, "{csv}");
    assert!(csv.starts_with("input,true,predicted,p_true,p_predicted\n"));

    // The text view has the same report.
    let out = graft(&["eval", "--run", s(&run), "--data", s(&test)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["precision", "recall", "f1", "support", "confusion (rows: true class", labels[0], labels[2]] {
        assert!(text.contains(needle), "eval output lacks `{needle}`:\n{text}");
    }
    if n_wrong > 0 {
        assert!(text.contains("misclassified, lowest probability of the true class first"), "{text}");
    }

    // inspect --run: the run's kind, classes, state and checkpoints.
    let v = json_of(&graft(&["inspect", "--run", s(&run), "--json"]));
    assert_eq!(v["kind"], "image classifier (graft fit)");
    assert_eq!(v["finished"], true);
    assert_eq!(v["epochs_done"], 2);
    assert_eq!(v["model"]["classes"].as_array().unwrap().len(), 3);
    assert_eq!(v["config"]["epochs"], 2);
    let files: Vec<&str> = v["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
    assert!(files.contains(&"last.safetensors") && files.contains(&"model.json"), "{files:?}");
    let out = graft(&["inspect", "--run", s(&run)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("finished") && text.contains("epochs done 2"), "{text}");

    // predict on a folder: every image below it, in path order; --csv has one row per file.
    let folder = test.join(labels[1]);
    let n_files = std::fs::read_dir(&folder).unwrap().count();
    std::fs::write(folder.join("broken.png"), b"not a png").unwrap();
    let csv_path = dir.join("predictions.csv");
    let v = json_of(&graft(&["predict", "--run", s(&run), s(&folder), "--top", "2", "--csv", s(&csv_path), "--json"]));
    let predictions = v["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), n_files);
    let files: Vec<&str> = predictions.iter().map(|p| p["file"].as_str().unwrap()).collect();
    let mut sorted = files.clone();
    sorted.sort();
    assert_eq!(files, sorted);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 1);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "input,label_1,prob_1,label_2,prob_2,error");
    assert_eq!(rows.len(), n_files + 2, "header + {n_files} predictions + 1 skipped:\n{csv}");
    for (row, p) in rows[1..=n_files].iter().zip(predictions) {
        let cells: Vec<&str> = row.split(',').collect();
        assert_eq!(cells.len(), 6, "{row}");
        assert_eq!(cells[0], p["file"].as_str().unwrap());
        assert_eq!(cells[1], p["top"][0]["label"].as_str().unwrap());
        assert!(cells[5].is_empty());
    }
    let last = rows.last().unwrap();
    assert!(last.contains("broken.png") && !last.ends_with(','), "the skipped file's row names its error: {last}");

    // A text file given to an image run is refused, not skipped as an unreadable image.
    let note = dir.join("note.txt");
    std::fs::write(&note, "a sneaker").unwrap();
    super::assert_bad_input(&graft(&["predict", "--run", s(&run), s(&note)]), &["note.txt", "a text file, but this model classifies images"]);

    // An empty folder is refused, naming it.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = graft(&["predict", "--run", s(&run), s(&empty)]);
    super::assert_bad_input(&out, &["empty", "no image files"]);
}
