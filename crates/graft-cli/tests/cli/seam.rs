//! The seam between library and CLI: the library names a refused setting as config.toml does
//! (`warmup_epochs`), the CLI names the flag that set it (`--warmup`); flags are resolved before
//! any work starts.

use std::path::Path;

use super::{assert_bad_input, graft, scratch};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A setting whose flag has another name reads as that flag; one with the same name as its
/// flag too.
#[test]
fn a_refused_setting_reads_as_the_flag_that_set_it() {
    let dir = scratch("seam-flags");
    let data = dir.join("data");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
    }
    let out = graft(&["fit", "--data", s(&data), "--out", s(&dir.join("run")), "--warmup", "nan"]);
    assert_bad_input(&out, &["invalid --warmup `NaN`", "epochs, 0 or more"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warmup_epochs"), "the library's name leaked");
    assert_bad_input(&graft(&["fit", "--data", s(&data), "--out", s(&dir.join("run")), "--epochs", "0"]), &["invalid --epochs `0`"]);
    assert_bad_input(&graft(&["extract", "--data", s(&data), "--out", s(&dir.join("x.csv")), "--shard", "3/2"]), &["invalid --shard `3/2`"]);
    assert!(!dir.join("run").exists() && !dir.join("x.csv").exists());
}

/// `--strategy auto` is only recorded while the flags are resolved: a bad flag is refused before
/// the advisor loads a model or reads an image (here there is no data folder to read at all).
#[test]
fn strategy_auto_refuses_a_bad_flag_before_measuring() {
    let dir = scratch("seam-auto");
    let missing = dir.join("no-such-data");
    let out = graft(&["fit", "--strategy", "auto", "--data", s(&missing), "--out", s(&dir.join("run")), "--head", "bogus"]);
    assert_bad_input(&out, &["invalid --head `bogus`"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("strategy auto:") && !stderr.contains("no-such-data"), "the advisor ran: {stderr}");
    assert!(!dir.join("run").exists());
}
