//! After training: every fit writes `report.html`; `eval --report` adds the evaluation with
//! the top-loss gallery (Grad-CAM heatmaps over images, or texts); `eval --tta` averages the
//! probabilities of six views of each image; `eval --out-dir` writes every input's
//! probabilities.

use std::path::{Path, PathBuf};

use super::fit::fmnist;
use super::{assert_bad_input, graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The losses printed in the gallery's captions, in page order.
fn gallery_losses(html: &str) -> Vec<f64> {
    html.split("<div class=\"loss\">loss ").skip(1).map(|rest| rest.split('<').next().unwrap().parse().unwrap()).collect()
}

/// `predictions.csv`: input → the probability of each class.
fn predictions(csv: &Path) -> Vec<(String, Vec<f64>)> {
    let text = read(csv);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("input,true,predicted,p:"), "{header}");
    lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (fields[0].to_string(), fields[3..].iter().map(|p| p.parse().unwrap()).collect())
        })
        .collect()
}

#[test]
fn fits_write_a_report_and_eval_adds_one_gallery_item_per_top_loss() {
    let dir = scratch("report-image");
    let train = fmnist(&dir.join("train"), 8, 1);
    let test = fmnist(&dir.join("test"), 6, 2);
    let run = dir.join("run");
    json_of(&graft(&["fit", "--data", s(&train), "--out", s(&run), "--epochs", "3", "--val-split", "0.25", "--json"]));

    // The fit's own report: curves inline, the kept epoch's validation figures, nothing fetched.
    let fitted = read(&run.join("report.html"));
    assert_eq!(fitted.matches("src=\"data:image/png;base64,").count(), 2, "loss and accuracy curves");
    assert!(fitted.contains("Validation (the kept epoch)") && fitted.contains("<table class=\"confusion\">"));
    assert!(!fitted.contains("http://") && !fitted.contains("https://"), "self-contained");
    assert_eq!(fitted.matches("class=\"top-loss\"").count(), 0);

    // eval --report: the evaluation and the 5 inputs of largest loss, each a picture with its
    // heatmap, largest loss first.
    let v = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&test), "--report", "--top-losses", "5", "--json"]));
    let report = run.join("report.html");
    assert!(v["written"].as_array().unwrap().iter().any(|w| w.as_str() == Some(s(&report))), "{v}");
    let html = read(&report);
    assert_eq!(html.matches("<figure class=\"top-loss\"><img").count(), 5, "one picture per top loss");
    assert!(html.contains("Grad-CAM heatmap of the predicted class"), "the heatmaps are named");
    let losses = gallery_losses(&html);
    assert_eq!(losses.len(), 5);
    assert!(losses.windows(2).all(|w| w[0] >= w[1]), "largest loss first: {losses:?}");
    assert!(html.contains(&format!("accuracy <b>{:.4}</b> on 18 inputs", v["accuracy"].as_f64().unwrap())));
    // The gallery's worst loss is the largest cross-entropy over all inputs (from predictions.csv).
    let out = dir.join("out");
    json_of(&graft(&["eval", "--run", s(&run), "--data", s(&test), "--report", "--top-losses", "30", "--out-dir", s(&out), "--json"]));
    let rows = predictions(&out.join("predictions.csv"));
    assert_eq!(rows.len(), 18);
    let all = read(&out.join("report.html"));
    assert_eq!(all.matches("<figure class=\"top-loss\">").count(), 18, "at most every input");
    let labels: Vec<String> = json_of(&graft(&["inspect", "--run", s(&run), "--json"]))["model"]["classes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    let worst = rows
        .iter()
        .map(|(input, p)| {
            let truth = labels.iter().position(|l| Path::new(input).parent().unwrap().ends_with(l)).unwrap();
            -p[truth].max(1e-12).ln()
        })
        .fold(0f64, f64::max);
    assert!((gallery_losses(&all)[0] - worst).abs() < 2e-3, "{} vs {worst}", gallery_losses(&all)[0]);

    // A classic head has no gradients: pictures without heatmaps, and the page says why.
    let classic = dir.join("classic");
    json_of(&graft(&["fit", "--data", s(&train), "--out", s(&classic), "--head", "prototype", "--val-split", "0", "--json"]));
    json_of(&graft(&["eval", "--run", s(&classic), "--data", s(&test), "--report", "--top-losses", "3", "--json"]));
    let html = read(&classic.join("report.html"));
    assert_eq!(html.matches("<figure class=\"top-loss\"><img").count(), 3);
    assert!(html.contains("no heatmaps"), "the page says why there are no heatmaps");

    // --top-losses only with --report (clap names the missing flag on the next line).
    let out = graft(&["eval", "--run", s(&run), "--data", s(&test), "--top-losses", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--report"), "{stderr}");
}

/// The views of test-time augmentation as files: the image, its mirror and its four corners,
/// each 90 % of the width and height (rounded).
fn write_views(image: &Path, into: &Path) -> Vec<PathBuf> {
    let img = image::open(image).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let (cw, ch) = (((w as f64) * 0.9).round() as u32, ((h as f64) * 0.9).round() as u32);
    let mut views = vec![img.clone(), image::imageops::flip_horizontal(&img)];
    for (x, y) in [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)] {
        views.push(image::imageops::crop_imm(&img, x, y, cw, ch).to_image());
    }
    std::fs::create_dir_all(into).unwrap();
    views
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let path = into.join(format!("view{i}.png"));
            v.save(&path).unwrap();
            path
        })
        .collect()
}

#[test]
fn tta_is_the_mean_over_six_views_of_each_image() {
    let dir = scratch("report-tta");
    let train = fmnist(&dir.join("train"), 6, 1);
    let test = fmnist(&dir.join("test"), 2, 2);
    let run = dir.join("run");
    json_of(&graft(&["fit", "--data", s(&train), "--out", s(&run), "--epochs", "2", "--val-split", "0", "--json"]));

    // One class folder with one image, and a folder of its six views as separate files.
    let class = std::fs::read_dir(&test).unwrap().next().unwrap().unwrap().path();
    let class_name = class.file_name().unwrap().to_str().unwrap().to_string();
    let image = std::fs::read_dir(&class).unwrap().next().unwrap().unwrap().path();
    let single = dir.join("single").join(&class_name);
    std::fs::create_dir_all(&single).unwrap();
    std::fs::copy(&image, single.join(image.file_name().unwrap())).unwrap();
    write_views(&image, &dir.join("views").join(&class_name));

    let tta = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&dir.join("single")), "--tta", "--out-dir", s(&dir.join("out-tta")), "--json"]));
    assert_eq!(tta["n"], 1);
    json_of(&graft(&["eval", "--run", s(&run), "--data", s(&dir.join("views")), "--out-dir", s(&dir.join("out-views")), "--json"]));
    json_of(&graft(&["eval", "--run", s(&run), "--data", s(&dir.join("single")), "--out-dir", s(&dir.join("out-plain")), "--json"]));
    let averaged = &predictions(&dir.join("out-tta/predictions.csv"))[0].1;
    let views = predictions(&dir.join("out-views/predictions.csv"));
    assert_eq!(views.len(), 6);
    for (c, p) in averaged.iter().enumerate() {
        let mean = views.iter().map(|(_, v)| v[c]).sum::<f64>() / 6.0;
        assert!((p - mean).abs() < 1e-5, "class {c}: tta {p} vs mean of the views {mean}");
    }
    let plain = &predictions(&dir.join("out-plain/predictions.csv"))[0].1;
    assert!(plain.iter().zip(averaged).any(|(a, b)| (a - b).abs() > 1e-6), "the views change the answer: {plain:?} {averaged:?}");
    // And on a whole folder every image is scored once.
    let all = json_of(&graft(&["eval", "--run", s(&run), "--data", s(&test), "--tta", "--json"]));
    assert_eq!(all["n"], 6);

    // Refused where it does not apply.
    assert_bad_input(&graft(&["eval", "--episodes", "2", "--way", "2", "--shot", "1", "--data", s(&train), "--tta"]), &["--tta", "--episodes"]);
}

#[test]
fn a_text_run_report_lists_its_top_loss_texts_and_refuses_tta() {
    super::text::minilm();
    let dir = scratch("report-text");
    let sms = dir.join("sms.csv");
    super::text::import_csv("sms-spam", 10, &sms);
    let run = dir.join("run");
    json_of(&graft(&["fit", "--model", "minilm-l6", "--data", s(&sms), "--out", s(&run), "--epochs", "3", "--val-split", "0", "--json"]));
    assert!(run.join("report.html").is_file(), "a text fit writes its report too");
    json_of(&graft(&["eval", "--run", s(&run), "--data", s(&sms), "--report", "--top-losses", "4", "--json"]));
    let html = read(&run.join("report.html"));
    assert_eq!(html.matches("<figure class=\"top-loss\"><blockquote>").count(), 4, "texts, not pictures");
    assert!(html.contains("the texts with the largest loss"));
    assert_bad_input(&graft(&["eval", "--run", s(&run), "--data", s(&sms), "--tta"]), &["--tta", "image classifiers"]);
}
