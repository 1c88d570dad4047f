use graft::data::idx::{self, class_names, DIGIT_CLASSES, FASHION_MNIST_CLASSES};
use serde_json::json;

use crate::cli::DataCommand;
use crate::output::Output;

pub fn run(cmd: DataCommand, out: &Output) -> anyhow::Result<()> {
    let DataCommand::Import(args) = cmd;
    if let Some(result) = super::text::import(&args, out) {
        return result;
    }
    let (dir, prefix, classes) = match (args.dataset.as_str(), args.split.as_str()) {
        ("fashion-mnist", "train") => ("fashion-mnist", "train", &FASHION_MNIST_CLASSES),
        ("fashion-mnist", "test") => ("fashion-mnist", "t10k", &FASHION_MNIST_CLASSES),
        ("mnist", "train") => ("digits/mnist", "train-10k", &DIGIT_CLASSES),
        ("mnist", "test") => ("digits/mnist", "t10k", &DIGIT_CLASSES),
        (d, s) => anyhow::bail!("unknown dataset/split `{d}`/`{s}`: expected fashion-mnist or mnist, and train or test (text sets: {})", super::text::TEXT_DATASETS),
    };
    let base = args.source.join(dir);
    let (rows, cols, images) = idx::read_idx_images(base.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
    let labels = idx::read_idx_labels(base.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
    let indices: Vec<usize> = match args.per_class {
        Some(n) => idx::seeded_subset(&labels, n, args.seed),
        None => (0..labels.len()).collect(),
    };
    let written = idx::export_image_folder(&images, rows, cols, &labels, &class_names(classes), &indices, &args.out)?;
    let value = json!({"dataset": args.dataset, "split": args.split, "images": written, "out": args.out});
    out.result(&value, || format!("wrote {written} images to {}\n", args.out.display()));
    Ok(())
}
