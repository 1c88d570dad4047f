//! The datasets graft knows by name (`graft data import NAME`, adapt's `mnist:`/`usps:`/`amazon:`
//! shorthands), every file pinned by sha256, and where they are kept.
//!
//! Layout: a data root (`$GRAFT_HOME/data` unless `--data-root` says otherwise) holds each set
//! in its own folder: `fashion-mnist/`, `digits/mnist/`, `digits/usps/`, `text/sms-spam/`,
//! `text/rt-polarity/`, `text/amazon-reviews/DOMAIN/`. A set graft installed there also has a
//! `source.json`, written last inside a temporary folder that is then renamed into place, so a
//! set's folder is either complete or absent.
//!
//! Fashion-MNIST is fetched from its Debian package (`apt-get download`, no root needed), whose
//! sha256 is checked before it is unpacked here in Rust (an `ar` archive holding `data.tar.xz`).
//! The other sets are not shipped by any package registry graft can fetch from: they are read
//! from a folder or file the user names (`--source`) and checked against the same pins.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::report::Reporter;
use crate::zoo::pull::hex;
use crate::{GraftError, Result};

/// One file of a set, relative to the set's folder, and its sha256.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    pub name: &'static str,
    pub sha256: &'static str,
}

/// A Debian package holding a set's files under `prefix`.
#[derive(Debug, Clone, Copy)]
pub struct DebSource {
    pub package: &'static str,
    pub version: &'static str,
    /// sha256 of the `.deb` itself.
    pub sha256: &'static str,
    /// Folder of the files inside the package's data archive.
    pub prefix: &'static str,
}

/// A dataset graft knows by name.
#[derive(Debug, Clone, Copy)]
pub struct DataSet {
    /// The name `graft data import` takes.
    pub name: &'static str,
    /// Its folder under a data root.
    pub dir: &'static str,
    pub files: &'static [PinnedFile],
    /// Where graft fetches it from; `None`: only from `--source`.
    pub deb: Option<DebSource>,
}

const fn pin(name: &'static str, sha256: &'static str) -> PinnedFile {
    PinnedFile { name, sha256 }
}

/// Fashion-MNIST, 60,000 + 10,000 (Debian's `dataset-fashion-mnist`, MIT).
pub const FASHION_MNIST: DataSet = DataSet {
    name: "fashion-mnist",
    dir: "fashion-mnist",
    files: &[
        pin("train-images-idx3-ubyte.gz", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
        pin("train-labels-idx1-ubyte.gz", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
        pin("t10k-images-idx3-ubyte.gz", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
        pin("t10k-labels-idx1-ubyte.gz", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
    ],
    deb: Some(DebSource {
        package: "dataset-fashion-mnist",
        version: "0.0~git20200523.55506a9-1",
        sha256: "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
        prefix: "usr/share/datasets/fashion-mnist/",
    }),
};

/// MNIST: a 10,000-digit training subset (classes interleaved) and the official 10,000 test digits.
pub const MNIST: DataSet = DataSet {
    name: "mnist",
    dir: "digits/mnist",
    files: &[
        pin("train-10k-images-idx3-ubyte.gz", "0a7474f006ac150676c91cc1b3db20ad56c2fde70b8f1adab67f7ae4a53f6464"),
        pin("train-10k-labels-idx1-ubyte.gz", "dbb7ff81b636827eca691805b66dbed04dc3983c3e26661da1d2a4203024a334"),
        pin("t10k-images-idx3-ubyte.gz", "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b"),
        pin("t10k-labels-idx1-ubyte.gz", "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c"),
    ],
    deb: None,
};

/// USPS, 7,291 + 2,007 16×16 digits in one HDF5 file.
pub const USPS: DataSet = DataSet {
    name: "usps",
    dir: "digits/usps",
    files: &[pin("usps.h5", "734f88c541104a956d88be2c95d03b4a463ffd74ccc2ba9c80841fb98e3fcb36")],
    deb: None,
};

pub const SMS_SPAM: DataSet = DataSet {
    name: "sms-spam",
    dir: "text/sms-spam",
    files: &[pin("SMSSpamCollection", "fae7ea7d915ef73903e5c2f46ffa2f4a39909a574e20fda4f2b81f7cb1e15e1f")],
    deb: None,
};

pub const RT_POLARITY: DataSet = DataSet {
    name: "rt-polarity",
    dir: "text/rt-polarity",
    files: &[
        pin("rt-polarity.pos", "4134882974a28d0c7b5151256f0e33a6169984ee7372c279e673f1114f475d58"),
        pin("rt-polarity.neg", "2d11cfbc790f1cd96d78339f41ce53ced1efa83cd22d37d6788fa3fe3d17e2fd"),
    ],
    deb: None,
};

/// Blitzer et al.'s multi-domain sentiment reviews, one domain each.
pub const AMAZON_BOOKS: DataSet = DataSet {
    name: "amazon:books",
    dir: "text/amazon-reviews/books",
    files: &[
        pin("positive.review", "a7322ce98f6d37c8ae6531c4efcc0503b691717b39c0e64cfbb321ac9cabaa55"),
        pin("negative.review", "4cd64715074b9a15587d69fe31d1f77b3baddec17dfbb0f35c558e3fddd63029"),
    ],
    deb: None,
};
pub const AMAZON_DVD: DataSet = DataSet {
    name: "amazon:dvd",
    dir: "text/amazon-reviews/dvd",
    files: &[
        pin("positive.review", "a25877855d2a1cfcb5b1dc6ac1a9fd29517c089743e59a51ce8c8f17403c0ac9"),
        pin("negative.review", "740259c8bbe6694ee350305c46f2777454803d00000f5d3402db7f282b4b5910"),
    ],
    deb: None,
};
pub const AMAZON_ELECTRONICS: DataSet = DataSet {
    name: "amazon:electronics",
    dir: "text/amazon-reviews/electronics",
    files: &[
        pin("positive.review", "e5b048ded874b6c97354e3ce683f8f106199a6b586e4d9e7632d2fe021f4263d"),
        pin("negative.review", "e8ab164d5cdea3be914afed4cffc41706d56de29f832c78acb3cccd541de8021"),
    ],
    deb: None,
};
pub const AMAZON_KITCHEN: DataSet = DataSet {
    name: "amazon:kitchen",
    dir: "text/amazon-reviews/kitchen",
    files: &[
        pin("positive.review", "53044cb91876146aee00c7af3a35a99e310e06fa9d70700c31bd49cf4b5bbc93"),
        pin("negative.review", "fc647f24f10e65e14d26f788185125c016451a45940252fa40aedfde51ed6902"),
    ],
    deb: None,
};

/// Every set, in the order `graft data import` lists them.
pub const DATASETS: [DataSet; 9] =
    [FASHION_MNIST, MNIST, USPS, SMS_SPAM, RT_POLARITY, AMAZON_BOOKS, AMAZON_DVD, AMAZON_ELECTRONICS, AMAZON_KITCHEN];

/// The set named `name`, if graft knows it.
pub fn by_name(name: &str) -> Option<&'static DataSet> {
    DATASETS.iter().find(|d| d.name == name)
}

/// The names of every set, comma-separated (for error messages and help).
pub fn names() -> String {
    DATASETS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
}

/// Where graft keeps datasets: `$GRAFT_HOME/data`.
pub fn default_data_root() -> PathBuf {
    crate::zoo::graft_home().join("data")
}

#[derive(Serialize, Deserialize)]
struct SourceRecord {
    dataset: String,
    /// `deb PACKAGE=VERSION` or `local PATH`.
    from: String,
    files: Vec<(String, String)>,
}

impl DataSet {
    /// The set's folder under `root`.
    pub fn dir_in(&self, root: &Path) -> PathBuf {
        root.join(self.dir)
    }

    /// Whether every file of the set is under `root` (files are checked when installed, not here).
    pub fn is_present(&self, root: &Path) -> bool {
        let dir = self.dir_in(root);
        self.files.iter().all(|f| dir.join(f.name).is_file())
    }

    fn file_list(&self) -> String {
        self.files.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
    }

    /// How to get the set when it is not under `root`.
    fn missing_hint(&self) -> String {
        let (what, holding) = match self.files {
            [one] => ("FILE", format!("FILE: your copy of {}", one.name)),
            _ => ("DIR", format!("DIR: a folder holding {}", self.file_list())),
        };
        format!(
            "{} is not there (it needs {}), and no package registry graft can fetch from ships it: run \
             `graft data import {} --source {what}` ({holding}; checked against graft's sha256 pins, then kept \
             in {}), or give adapt/eval --data-root DIR holding {}/",
            self.name,
            self.file_list(),
            self.name,
            self.dir_in(&default_data_root()).display(),
            self.dir
        )
    }
}

/// The set's folder under `root`; an error naming where it is expected and how to get it when a
/// file is missing. Fetches nothing.
pub fn require(set: &DataSet, root: &Path) -> Result<PathBuf> {
    let dir = set.dir_in(root);
    if set.is_present(root) {
        return Ok(dir);
    }
    Err(GraftError::Data { path: dir, reason: set.missing_hint() })
}

/// The set's folder under `root`, fetching the set there first when it is missing and a package
/// ships it.
pub fn ensure(set: &DataSet, root: &Path, reporter: &dyn Reporter) -> Result<PathBuf> {
    if set.is_present(root) {
        return Ok(set.dir_in(root));
    }
    match set.deb {
        Some(deb) => fetch_deb(set, &deb, root, reporter),
        None => require(set, root),
    }
}

/// Reads the set's files from `source` (a folder holding them or holding the set's usual
/// sub-folder, the one file of a one-file set, or the set's `.deb`), checks each against its
/// sha256 pin and installs them under `root` (unless they already are). Returns the set's folder.
pub fn install_from(set: &DataSet, source: &Path, root: &Path, reporter: &dyn Reporter) -> Result<PathBuf> {
    if source.is_file() {
        if let (Some(deb), Some("deb")) = (set.deb, source.extension().and_then(|e| e.to_str())) {
            let files = unpack_verified_deb(source, &deb, set)?;
            return install(set, root, files, format!("local {}", source.display()));
        }
    }
    let dir = set.dir_in(root);
    let mut files = Vec::with_capacity(set.files.len());
    let mut in_place = true;
    for f in set.files {
        let path = locate(set, source, f.name)?;
        let bytes = std::fs::read(&path).map_err(|e| GraftError::io(&path, e))?;
        check_sha(&path, &bytes, f.sha256)?;
        in_place &= path.parent().is_some_and(|p| same_dir(p, &dir)) && path.file_name().is_some_and(|n| n == f.name);
        files.push((f.name.to_string(), bytes));
    }
    // Already where graft keeps it (the source is the install, or an earlier import kept it).
    if in_place || installed_record(set, root).is_some() {
        return Ok(dir);
    }
    reporter.message(&format!("keeping {} in {}", set.name, dir.display()));
    install(set, root, files, format!("local {}", source.display()))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// `name` under `source`: the file itself (a one-file set), `source/name`, or `source/DIR/name`.
fn locate(set: &DataSet, source: &Path, name: &str) -> Result<PathBuf> {
    if source.is_file() && set.files.len() == 1 {
        return Ok(source.to_path_buf());
    }
    let candidates = [source.join(name), set.dir_in(source).join(name)];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let reason = if source.exists() {
        format!("{} has no {name} (looked in it and in {}); {} needs {}", set.name, set.dir_in(source).display(), set.name, set.file_list())
    } else {
        "no such file or folder".to_string()
    };
    Err(GraftError::Data { path: source.to_path_buf(), reason })
}

fn check_sha(path: &Path, bytes: &[u8], expected: &str) -> Result<()> {
    let found = hex(&Sha256::digest(bytes));
    if found != expected {
        return Err(GraftError::Checksum { path: path.to_path_buf(), expected: expected.into(), found });
    }
    Ok(())
}

/// The record of a complete install under `root` whose pins match the set's, if any.
fn installed_record(set: &DataSet, root: &Path) -> Option<SourceRecord> {
    let dir = set.dir_in(root);
    let record: SourceRecord = serde_json::from_slice(&std::fs::read(dir.join("source.json")).ok()?).ok()?;
    let pins: Vec<(String, String)> = set.files.iter().map(|f| (f.name.to_string(), f.sha256.to_string())).collect();
    (record.files == pins && set.is_present(root)).then_some(record)
}

/// Writes `files` (already checked) and `source.json` into a temporary folder beside the set's
/// folder, then renames it into place.
fn install(set: &DataSet, root: &Path, files: Vec<(String, Vec<u8>)>, from: String) -> Result<PathBuf> {
    let dir = set.dir_in(root);
    let parent = dir.parent().unwrap_or(root);
    std::fs::create_dir_all(parent).map_err(|e| GraftError::io(parent, e))?;
    let leaf = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = parent.join(format!(".{leaf}.tmp-{}-{nanos}", std::process::id()));
    let write = || -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| GraftError::io(&tmp, e))?;
        for (name, bytes) in &files {
            let path = tmp.join(name);
            std::fs::write(&path, bytes).map_err(|e| GraftError::io(&path, e))?;
        }
        let record = SourceRecord {
            dataset: set.name.into(),
            from,
            files: set.files.iter().map(|f| (f.name.to_string(), f.sha256.to_string())).collect(),
        };
        let json = serde_json::to_vec_pretty(&record).expect("record serializes");
        crate::fsutil::write_atomic(&tmp.join("source.json"), &json)?;
        if std::fs::rename(&tmp, &dir).is_ok() {
            return Ok(());
        }
        // Another process finished first, or an old copy is in the way.
        if installed_record(set, root).is_some() {
            return Ok(());
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| GraftError::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| GraftError::io(&dir, e))
    };
    let result = write();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| dir)
}

/// Downloads the set's package with `apt-get download` into a temporary folder, checks and
/// unpacks it, and installs the files under `root`.
fn fetch_deb(set: &DataSet, deb: &DebSource, root: &Path, reporter: &dyn Reporter) -> Result<PathBuf> {
    let tmp = std::env::temp_dir().join(format!("graft-{}-{}", set.name.replace(':', "-"), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| GraftError::io(&tmp, e))?;
    let result = (|| {
        reporter.message(&format!("fetching {} (apt-get download {}={})", set.name, deb.package, deb.version));
        let file = apt_download(set, deb, &tmp)?;
        reporter.message(&format!("unpacking {}", file.display()));
        let files = unpack_verified_deb(&file, deb, set)?;
        install(set, root, files, format!("deb {}={}", deb.package, deb.version))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn apt_download(set: &DataSet, deb: &DebSource, dir: &Path) -> Result<PathBuf> {
    let requirement = format!("{}={}", deb.package, deb.version);
    let manual = format!(
        "or download {}_{}_all.deb yourself and pass it as --source FILE.deb, or pass --source DIR holding {}",
        deb.package, deb.version, set.file_list()
    );
    let fail = |reason: String| GraftError::Data { path: dir.to_path_buf(), reason };
    let output = Command::new("apt-get").arg("download").arg(&requirement).current_dir(dir).output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!("{} is fetched with `apt-get download {requirement}`, but apt-get was not found: install apt (Debian, Ubuntu), {manual}", set.name)))
        }
        Err(e) => return Err(fail(format!("cannot run apt-get: {e}; {manual}"))),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("W:")).unwrap_or("no output");
        return Err(fail(format!(
            "`apt-get download {requirement}` failed: {} (the package lists may be stale: run `apt-get update`), {manual}",
            last.trim()
        )));
    }
    std::fs::read_dir(dir)
        .map_err(|e| GraftError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| fail(format!("`apt-get download {requirement}` wrote no .deb")))
}

/// Largest uncompressed data archive unpacked from a package (the Fashion-MNIST one is 31 MB).
const MAX_DATA_TAR: u64 = 1 << 30;

/// Checks the package file's sha256, then returns the set's files from its data archive, each
/// checked against its own pin.
pub fn unpack_verified_deb(path: &Path, deb: &DebSource, set: &DataSet) -> Result<Vec<(String, Vec<u8>)>> {
    let bytes = std::fs::read(path).map_err(|e| GraftError::io(path, e))?;
    check_sha(path, &bytes, deb.sha256)?;
    let bad = |reason: String| GraftError::Data { path: path.to_path_buf(), reason };
    let mut archive = ar::Archive::new(Cursor::new(&bytes));
    let mut data: Option<(String, Vec<u8>)> = None;
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.map_err(|e| bad(format!("not a Debian package: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if name.starts_with("data.tar") {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(|e| bad(format!("cannot read {name}: {e}")))?;
            data = Some((name, buf));
            break;
        }
    }
    let (name, compressed) = data.ok_or_else(|| bad("not a Debian package: no data.tar member".into()))?;
    let tar_bytes = match name.as_str() {
        "data.tar" => compressed,
        "data.tar.xz" => {
            let mut out = Vec::new();
            lzma_rs::xz_decompress(&mut std::io::BufReader::new(Cursor::new(&compressed)), &mut LimitedWriter { out: &mut out, left: MAX_DATA_TAR })
                .map_err(|e| bad(format!("cannot decompress {name}: {e}")))?;
            out
        }
        other => return Err(bad(format!("{other}: only data.tar.xz packages are supported"))),
    };
    let mut wanted: Vec<Option<Vec<u8>>> = vec![None; set.files.len()];
    let mut tar = tar::Archive::new(Cursor::new(tar_bytes));
    for entry in tar.entries().map_err(|e| bad(format!("{name}: {e}")))? {
        let mut entry = entry.map_err(|e| bad(format!("{name}: {e}")))?;
        let entry_path = entry.path().map_err(|e| bad(format!("{name}: {e}")))?.to_string_lossy().into_owned();
        let Some(rel) = entry_path.trim_start_matches("./").strip_prefix(deb.prefix) else { continue };
        if let Some(i) = set.files.iter().position(|f| f.name == rel) {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(|e| bad(format!("{name}: {entry_path}: {e}")))?;
            wanted[i] = Some(buf);
        }
    }
    let mut files = Vec::with_capacity(set.files.len());
    for (f, bytes) in set.files.iter().zip(wanted) {
        let bytes = bytes.ok_or_else(|| bad(format!("the package has no {}{}", deb.prefix, f.name)))?;
        check_sha(&path.join(deb.prefix).join(f.name), &bytes, f.sha256)?;
        files.push((f.name.to_string(), bytes));
    }
    Ok(files)
}

/// A writer that refuses more than `left` bytes (a decompression bomb stops there).
struct LimitedWriter<'a> {
    out: &'a mut Vec<u8>,
    left: u64,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other(format!("more than {MAX_DATA_TAR} bytes uncompressed")));
        }
        self.left -= buf.len() as u64;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::folder::tests::TempDir;
    use crate::report::Silent;

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn sha(bytes: &[u8]) -> &'static str {
        leak(hex(&Sha256::digest(bytes)))
    }

    /// A `.deb` (ar: debian-binary, control.tar.xz, data.tar.xz) holding `files` under `prefix`.
    fn make_deb(prefix: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, format!("./{prefix}{name}"), *bytes).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut std::io::BufReader::new(Cursor::new(&tar)), &mut xz).unwrap();
        let mut deb = ar::Builder::new(Vec::new());
        for (name, bytes) in [("debian-binary", b"2.0\n".to_vec()), ("control.tar.xz", Vec::new()), ("data.tar.xz", xz)] {
            deb.append(&ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64), bytes.as_slice()).unwrap();
        }
        deb.into_inner().unwrap()
    }

    fn set_with(files: &[(&str, &[u8])], pins_from: &[&[u8]], deb: Option<DebSource>) -> DataSet {
        let pins: Vec<PinnedFile> = files.iter().zip(pins_from).map(|((n, _), b)| PinnedFile { name: leak(n.to_string()), sha256: sha(b) }).collect();
        DataSet { name: "toy", dir: "sets/toy", files: Box::leak(pins.into_boxed_slice()), deb }
    }

    #[test]
    fn a_tampered_package_is_refused_naming_it() {
        let tmp = TempDir::new("fetch-tampered");
        let deb = tmp.0.join("dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb");
        std::fs::write(&deb, b"!<arch>\nnot the package graft pins").unwrap();
        let err = unpack_verified_deb(&deb, &FASHION_MNIST.deb.unwrap(), &FASHION_MNIST).unwrap_err();
        match &err {
            GraftError::Checksum { path, expected, .. } => {
                assert_eq!(path, &deb);
                assert_eq!(expected, FASHION_MNIST.deb.unwrap().sha256);
            }
            other => panic!("expected a checksum error, got {other}"),
        }
        assert!(err.to_string().contains("dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"), "{err}");
        // Given as --source, the same file is refused and nothing is kept.
        let root = tmp.0.join("data");
        let err = install_from(&FASHION_MNIST, &deb, &root, &Silent).unwrap_err();
        assert!(matches!(err, GraftError::Checksum { .. }), "{err}");
        assert!(!root.join("fashion-mnist").exists());
    }

    #[test]
    fn unpacks_a_package_checks_every_file_and_installs_atomically() {
        let tmp = TempDir::new("fetch-deb");
        let files: [(&str, &[u8]); 2] = [("a.gz", b"first file"), ("b.gz", b"second file")];
        let bytes = make_deb("usr/share/datasets/toy/", &files);
        let deb_path = tmp.0.join("toy.deb");
        std::fs::write(&deb_path, &bytes).unwrap();
        let deb = DebSource { package: "toy", version: "1", sha256: sha(&bytes), prefix: "usr/share/datasets/toy/" };
        let set = set_with(&files, &[b"first file", b"second file"], Some(deb));

        let root = tmp.0.join("data");
        let dir = install_from(&set, &deb_path, &root, &Silent).unwrap();
        assert_eq!(dir, root.join("sets/toy"));
        assert_eq!(std::fs::read(dir.join("a.gz")).unwrap(), b"first file");
        assert_eq!(std::fs::read(dir.join("b.gz")).unwrap(), b"second file");
        assert!(installed_record(&set, &root).is_some());
        let leftovers: Vec<_> = std::fs::read_dir(root.join("sets")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("toy")], "temporary folders left behind");
        assert_eq!(ensure(&set, &root, &Silent).unwrap(), dir);

        // A package whose sha256 matches but whose member does not match its own pin.
        let wrong = set_with(&files, &[b"first file", b"something else"], Some(deb));
        let err = unpack_verified_deb(&deb_path, &deb, &wrong).unwrap_err();
        match &err {
            GraftError::Checksum { path, .. } => assert!(path.ends_with("usr/share/datasets/toy/b.gz"), "{err}"),
            other => panic!("expected a checksum error, got {other}"),
        }
        // A member missing from the package is named.
        let missing = set_with(&[("a.gz", b""), ("c.gz", b"")], &[b"first file", b""], Some(deb));
        let err = unpack_verified_deb(&deb_path, &deb, &missing).unwrap_err().to_string();
        assert!(err.contains("c.gz"), "{err}");
    }

    #[test]
    fn a_folder_source_is_checked_and_kept_and_a_missing_set_says_how_to_get_it() {
        let tmp = TempDir::new("fetch-folder");
        let files: [(&str, &[u8]); 2] = [("x.idx", b"xxxx"), ("y.idx", b"yyyy")];
        let set = set_with(&files, &[b"xxxx", b"yyyy"], None);
        let root = tmp.0.join("data");

        let err = ensure(&set, &root, &Silent).unwrap_err().to_string();
        for needle in ["graft data import toy --source DIR", "x.idx, y.idx", "--data-root", "sets/toy"] {
            assert!(err.contains(needle), "`{needle}` not in: {err}");
        }

        // The set's usual sub-folder under the source is found too; a changed byte is refused.
        let src = tmp.0.join("src");
        std::fs::create_dir_all(src.join("sets/toy")).unwrap();
        std::fs::write(src.join("sets/toy/x.idx"), b"xxxx").unwrap();
        std::fs::write(src.join("sets/toy/y.idx"), b"yyyz").unwrap();
        let err = install_from(&set, &src, &root, &Silent).unwrap_err();
        match &err {
            GraftError::Checksum { path, .. } => assert_eq!(path, &src.join("sets/toy/y.idx")),
            other => panic!("expected a checksum error, got {other}"),
        }
        assert!(!set.is_present(&root), "a refused set must not be kept");

        std::fs::write(src.join("sets/toy/y.idx"), b"yyyy").unwrap();
        let dir = install_from(&set, &src, &root, &Silent).unwrap();
        assert_eq!(std::fs::read(dir.join("y.idx")).unwrap(), b"yyyy");
        assert_eq!(require(&set, &root).unwrap(), dir);
        // Importing from the installed folder itself is a no-op.
        assert_eq!(install_from(&set, &dir, &root, &Silent).unwrap(), dir);

        let err = install_from(&set, &tmp.0.join("nowhere"), &root, &Silent).unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");
    }

    #[test]
    fn every_set_is_known_by_name_with_full_pins() {
        for set in DATASETS {
            assert_eq!(by_name(set.name).map(|s| s.dir), Some(set.dir));
            assert!(!set.files.is_empty(), "{}", set.name);
            for f in set.files {
                assert!(f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{} {}", set.name, f.name);
            }
        }
        assert!(by_name("cifar10").is_none());
    }

    #[test]
    fn the_pins_match_the_shared_copies() {
        let shared = std::env::var_os("GRAFT_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
        let data = shared.join("data");
        assert!(data.is_dir(), "{} is missing: set GRAFT_SHARED to the folder holding data/ (this test must not be skipped)", data.display());
        for set in DATASETS {
            for f in set.files {
                let path = set.dir_in(&data).join(f.name);
                let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                check_sha(&path, &bytes, f.sha256).unwrap();
            }
        }
    }
}
