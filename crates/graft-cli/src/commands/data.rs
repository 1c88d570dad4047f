use std::path::PathBuf;

use graft::data::fetch::{self, DataSet};
use graft::data::idx::{self, class_names, DIGIT_CLASSES, FASHION_MNIST_CLASSES};
use graft::data::usps;
use serde_json::json;

use crate::cli::{DataCommand, ImportArgs};
use crate::output::Output;
use crate::reporter::TermReporter;

/// `graft data import`, resolved from its flags (nothing is read or fetched).
pub struct Import {
    pub set: &'static DataSet,
    /// As given (`amazon:books`), where `set` is the family (`amazon`).
    pub dataset: String,
    pub split: String,
    pub per_class: Option<usize>,
    pub seed: u64,
    pub source: Option<PathBuf>,
    pub out: Option<PathBuf>,
}

/// Every flag is named here, so a new one fails to compile until it is resolved.
fn resolve(cmd: DataCommand) -> anyhow::Result<Import> {
    let DataCommand::Import(args) = cmd;
    let ImportArgs { dataset, split, per_class, seed, source, out } = args;
    let set = fetch::by_name(&dataset).ok_or_else(|| anyhow::anyhow!("unknown dataset `{dataset}`: expected one of {}", fetch::names()))?;
    anyhow::ensure!(split == "train" || split == "test", "invalid --split `{split}`: expected train or test");
    Ok(Import { set, dataset, split, per_class, seed, source, out })
}

pub fn run(cmd: DataCommand, out: &Output) -> anyhow::Result<()> {
    let args = resolve(cmd)?;
    let set = args.set;
    let dir = obtain(set, &args)?;
    let Some(dest) = &args.out else {
        let value = json!({"dataset": args.dataset, "dir": dir});
        out.result(&value, || format!("{} is in {}\n", args.dataset, dir.display()));
        return Ok(());
    };
    if let Some(result) = import_text(&args, &dir, dest, out) {
        return result;
    }
    let written = match set.name {
        "usps" => {
            let h5 = dir.join("usps.h5");
            let indices = args.per_class.map(|n| {
                usps::read_usps(&h5, &args.split).map(|u| idx::seeded_subset(&u.labels, n, args.seed))
            });
            usps::export_image_folder(&h5, &args.split, indices.transpose()?.as_deref(), dest)?
        }
        _ => {
            let (prefix, classes) = match (set.name, args.split.as_str()) {
                ("fashion-mnist", "train") => ("train", &FASHION_MNIST_CLASSES),
                ("fashion-mnist", _) => ("t10k", &FASHION_MNIST_CLASSES),
                ("mnist", "train") => ("train-10k", &DIGIT_CLASSES),
                _ => ("t10k", &DIGIT_CLASSES),
            };
            let (rows, cols, images) = idx::read_idx_images(dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
            let labels = idx::read_idx_labels(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
            let indices: Vec<usize> = match args.per_class {
                Some(n) => idx::seeded_subset(&labels, n, args.seed),
                None => (0..labels.len()).collect(),
            };
            idx::export_image_folder(&images, rows, cols, &labels, &class_names(classes), &indices, dest)?
        }
    };
    let value = json!({"dataset": args.dataset, "split": args.split, "images": written, "out": dest, "dir": dir});
    out.result(&value, || format!("wrote {written} images to {}\n", dest.display()));
    Ok(())
}

/// The set's folder in `$GRAFT_HOME/data`: installed from `--source` (checked against the
/// pins), already there, or fetched.
fn obtain(set: &DataSet, args: &Import) -> anyhow::Result<PathBuf> {
    let root = fetch::default_data_root();
    let reporter = TermReporter::new();
    Ok(match &args.source {
        Some(source) => fetch::install_from(set, source, &root, &reporter)?,
        None => fetch::ensure(set, &root, &reporter)?,
    })
}

/// The text sets `graft data import` writes as `text,label` CSV.
pub const TEXT_DATASETS: &str = "sms-spam, rt-polarity, amazon:books, amazon:dvd, amazon:electronics, amazon:kitchen";

/// `graft data import sms-spam|rt-polarity|amazon:DOMAIN --out FILE.csv`: a seeded subset
/// (`--per-class`) of the set kept in `dir` as CSV. `None` when `dataset` is not a text set.
fn import_text(args: &Import, dir: &std::path::Path, dest: &std::path::Path, out: &Output) -> Option<anyhow::Result<()>> {
    let path = match args.dataset.as_str() {
        "sms-spam" => dir.join("SMSSpamCollection"),
        "rt-polarity" => dir.to_path_buf(),
        d if d.starts_with("amazon:") => dir.to_path_buf(),
        _ => return None,
    };
    Some((|| {
        let data = anyhow::Context::with_context(graft::text::TextDataset::open_any(&path), || format!("reading {} (text sets: {TEXT_DATASETS})", args.dataset))?;
        let data = match args.per_class {
            Some(n) => data.seeded_per_class(n, args.seed),
            None => data,
        };
        data.write_csv(dest)?;
        let value = json!({"dataset": args.dataset, "texts": data.len(), "classes": data.classes, "out": dest});
        out.result(&value, || format!("wrote {} texts to {}\n", data.len(), dest.display()));
        Ok(())
    })())
}
