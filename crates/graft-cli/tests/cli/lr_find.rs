//! The learning-rate range test: `graft lr-find` sweeps a new head on the frozen trunk's
//! features and suggests a rate; `fit --lr auto` runs the same sweep and trains with it.

use std::path::Path;

use super::fit::fmnist;
use super::{assert_bad_input, graft, json_of, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn lr_find_suggests_a_rate_and_fit_lr_auto_trains_with_it() {
    let dir = scratch("lr-find");
    let train = fmnist(&dir.join("train"), 10, 1);
    let plot = dir.join("sweep.png");
    let v = json_of(&graft(&["lr-find", "--data", s(&train), "--plot", s(&plot), "--json"]));
    let lrs: Vec<f64> = v["lrs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let smoothed = v["smoothed"].as_array().unwrap();
    assert!(lrs.len() >= 3 && lrs.len() <= 100, "{v}");
    assert_eq!(smoothed.len(), lrs.len());
    assert_eq!(v["losses"].as_array().unwrap().len(), lrs.len());
    assert!(lrs.windows(2).all(|w| w[1] > w[0]), "rates grow");
    assert!((lrs[0] - 1e-7).abs() < 1e-15, "starts at 1e-7: {}", lrs[0]);
    let suggested = v["suggested"].as_f64().unwrap();
    assert!(lrs.contains(&suggested), "the suggestion is a rate of the sweep");
    // A new head on ImageNet features: far above the start, far below the blow-up.
    assert!((1e-6..1.0).contains(&suggested), "suggested {suggested}");
    let first = smoothed[0].as_f64().unwrap();
    let at = lrs.iter().position(|&l| l == suggested).unwrap();
    assert!(smoothed[at].as_f64().unwrap() < first, "the loss falls by the suggested rate");
    assert!(v["written"].as_array().unwrap().iter().any(|w| w.as_str() == Some(s(&plot))));
    assert_eq!(&std::fs::read(&plot).unwrap()[..8], b"\x89PNG\r\n\x1a\n");

    // fit --lr auto: the same sweep (same split, seed, head and optimizer), then the fit with its
    // suggestion; the sweep is kept in the run and the resolved rate in its config.
    let run = dir.join("run");
    let f = json_of(&graft(&["fit", "--data", s(&train), "--out", s(&run), "--lr", "auto", "--epochs", "2", "--json"]));
    let used = f["lr"].as_f64().unwrap();
    assert!((used - suggested).abs() <= 1e-12 * suggested, "fit used {used}, lr-find suggested {suggested}");
    assert_eq!(f["lr_find"]["suggested"].as_f64(), Some(used));
    assert!(run.join("lr-find.json").is_file() && run.join("lr-find.png").is_file());
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let line = config.lines().find(|l| l.starts_with("lr = ")).unwrap_or_else(|| panic!("{config}"));
    let saved: f64 = line.trim_start_matches("lr = ").parse().unwrap();
    assert!((saved - used).abs() <= 1e-12 * used, "{line}");

    // Refused clearly where the sweep does not apply.
    assert_bad_input(&graft(&["lr-find", "--data", s(&train), "--head", "prototype", "--plot", s(&plot)]), &["--head", "classic head"]);
    assert_bad_input(&graft(&["lr-find", "--data", s(&train), "--lr-end", "1e-9", "--plot", s(&plot)]), &["--lr-end"]);
    let staged = dir.join("staged");
    assert_bad_input(&graft(&["fit", "--data", s(&train), "--out", s(&staged), "--lr", "auto", "--stages", "head:1,all:1"]), &["--stages", "frozen trunk"]);
    assert!(!staged.exists(), "a refused --lr auto leaves no run directory");
    assert_bad_input(&graft(&["fit", "--data", s(&train), "--out", s(&staged), "--lr", "fast"]), &["--lr"]);
}
