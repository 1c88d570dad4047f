use std::path::PathBuf;

use graft::cache::extract::extract;
use graft::cache::parts::Shard;
use graft::data::folder::ImageFolder;
use graft::zoo::{graft_home, ModelSpec, Pretrained};
use graft::GraftError;
use serde_json::json;

use crate::cli::ExtractArgs;
use crate::output::Output;
use crate::reporter::TermReporter;

/// What to extract, resolved from the flags (nothing is read or run).
struct Settings {
    spec: &'static ModelSpec,
    weights: Option<PathBuf>,
    layer: String,
    data: PathBuf,
    /// The file to write; with a shard, the merged file its part is written beside.
    out: PathBuf,
    /// The part, and where it came from (`--shard` or the scheduler's variables).
    shard: Option<(Shard, &'static str)>,
    batch: usize,
}

/// Every flag is named here, so a new one fails to compile until it is resolved. A bad
/// --layer or --shard (or, with `--shard auto`, bad scheduler variables) fails here, before
/// any work.
fn resolve(args: ExtractArgs) -> anyhow::Result<Settings> {
    let ExtractArgs { device: _, model, arch, weights, layer, data, out, shard, batch } = args;
    let spec = super::model_spec(&model, arch.as_deref())?;
    // A layer of one of the architecture's flavours (Keras's `block3_pool`, Caffe's `pool3`) is
    // checked again against the flavour the weights file loads into.
    let in_flavour = spec.flavours().iter().filter_map(|f| graft::zoo::ModelSpec::find(f).ok()).any(|f| graft::cache::extract::Cut::parse(&layer, &f.config()).is_ok());
    if !in_flavour {
        graft::cache::extract::Cut::parse(&layer, &spec.config())?;
    }
    let shard = match shard.as_deref() {
        None => None,
        Some("auto") => Some(shard_from_env(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))?),
        Some(text) => Some((Shard::parse(text)?, "--shard")),
    };
    if let Some((s, _)) = shard {
        s.part_path(&out)?;
    }
    Ok(Settings { spec, weights, layer, data, out, shard, batch })
}

/// `--shard auto`: the part from a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, and
/// `JOB_COMPLETIONS`, which the Job's manifest sets from its `completions`) or a Slurm job array
/// (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`). Returns the part
/// and the variable it came from. `var` reads a variable (the environment; a map in tests).
fn shard_from_env(var: impl Fn(&str) -> Option<String>) -> Result<(Shard, &'static str), GraftError> {
    let refuse = |reason: String| GraftError::InvalidSetting { setting: "shard".into(), value: "auto".into(), reason };
    let number = |name: &str| -> Result<Option<usize>, GraftError> {
        match var(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| refuse(format!("{name}=`{v}` is not a whole number"))),
        }
    };
    let (k8s, slurm) = (number("JOB_COMPLETION_INDEX")?, number("SLURM_ARRAY_TASK_ID")?);
    let (index, count, source) = match (k8s, slurm) {
        (Some(_), Some(_)) => return Err(refuse("both JOB_COMPLETION_INDEX (Kubernetes) and SLURM_ARRAY_TASK_ID (Slurm) are set; unset the one that does not belong to this job, or give --shard i/n".into())),
        (None, None) => {
            return Err(refuse(
                "neither JOB_COMPLETION_INDEX with JOB_COMPLETIONS (a Kubernetes Indexed Job) nor SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT (a Slurm job array) is set; outside a scheduler give --shard i/n".into(),
            ))
        }
        (Some(index), None) => {
            let count = number("JOB_COMPLETIONS")?.ok_or_else(|| refuse("JOB_COMPLETION_INDEX is set but JOB_COMPLETIONS is not: set it in the Job's pod template to the Job's completions (docs/scale-out/extract-job.yaml does)".into()))?;
            if index >= count {
                return Err(refuse(format!("JOB_COMPLETION_INDEX={index} is not below JOB_COMPLETIONS={count} (indices count from 0; is JOB_COMPLETIONS the Job's completions?)")));
            }
            (index, count, "JOB_COMPLETION_INDEX")
        }
        (None, Some(id)) => {
            let count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| refuse("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into()))?;
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            if let Some(step) = number("SLURM_ARRAY_TASK_STEP")?.filter(|s| *s != 1) {
                return Err(refuse(format!("SLURM_ARRAY_TASK_STEP={step}: the array must be a plain range such as --array=0-{}", count.max(1) - 1)));
            }
            if let Some(max) = number("SLURM_ARRAY_TASK_MAX")? {
                if max < min || max - min + 1 != count {
                    return Err(refuse(format!("SLURM_ARRAY_TASK_MIN={min} … SLURM_ARRAY_TASK_MAX={max} is not SLURM_ARRAY_TASK_COUNT={count} tasks in a row: the array must be a plain range such as --array=0-{}", count.max(1) - 1)));
                }
            }
            if id < min || id - min >= count {
                return Err(refuse(format!("SLURM_ARRAY_TASK_ID={id} is outside SLURM_ARRAY_TASK_MIN={min} … +SLURM_ARRAY_TASK_COUNT={count}")));
            }
            (id - min, count, "SLURM_ARRAY_TASK_ID")
        }
    };
    Ok((Shard::new(index, count)?, source))
}

pub fn run(args: ExtractArgs, out: &Output) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let Settings { spec, weights, layer, data, out: file, shard, batch } = resolve(args)?;
    let folder = ImageFolder::scan(&data)?;
    let reporter = TermReporter::new();
    let model = Pretrained::load(spec, weights.as_deref(), &graft_home(), &reporter, &device)?;
    let part = shard.map(|(s, _)| s);
    let spec = model.spec; // the file's flavour of the architecture
    let s = extract(&model.net, &model.config, spec.id, &model.weights_sha256, &layer, &model.preprocess(), &folder, part, &file, batch, &device, &reporter)?;
    let skipped: Vec<_> = s.skipped.iter().map(|k| json!({"file": k.path, "reason": k.reason})).collect();
    let mut value = json!({"out": s.out, "n": s.n, "dim": s.dim, "shape": s.shape, "layer": layer, "skipped": skipped});
    if let Some((p, source)) = shard {
        value["shard"] = json!({"part": p.number(), "of": p.count, "from": source, "merged": file});
    }
    out.result(&value, || {
        let mut t = format!("{}: {} images × {} values ({:?} each), {} skipped\n", s.out.display(), s.n, s.dim, s.shape, s.skipped.len());
        if let Some((p, source)) = shard {
            t.push_str(&format!("part {p} (from {source}); when every part is written: graft cache merge --out {}\n", file.display()));
        }
        t
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<(Shard, &'static str), GraftError> {
        shard_from_env(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn shard_auto_reads_kubernetes_and_slurm_and_refuses_what_does_not_fit() {
        assert_eq!(from(&[("JOB_COMPLETION_INDEX", "2"), ("JOB_COMPLETIONS", "3")]).unwrap(), (Shard { index: 2, count: 3 }, "JOB_COMPLETION_INDEX"));
        assert_eq!(from(&[("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "4")]).unwrap(), (Shard { index: 0, count: 4 }, "SLURM_ARRAY_TASK_ID"));
        // An array written --array=1-4: ids 1..4 are parts 1..4 (index 0..3).
        let one_based = [("SLURM_ARRAY_TASK_ID", "4"), ("SLURM_ARRAY_TASK_COUNT", "4"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "4"), ("SLURM_ARRAY_TASK_STEP", "1")];
        assert_eq!(from(&one_based).unwrap().0, Shard { index: 3, count: 4 });
        for (vars, needle) in [
            (&[][..], "JOB_COMPLETION_INDEX with JOB_COMPLETIONS"),
            (&[("JOB_COMPLETION_INDEX", "1")][..], "JOB_COMPLETIONS is not"),
            (&[("JOB_COMPLETION_INDEX", "3"), ("JOB_COMPLETIONS", "3")][..], "JOB_COMPLETION_INDEX=3 is not below JOB_COMPLETIONS=3"),
            (&[("JOB_COMPLETION_INDEX", "x"), ("JOB_COMPLETIONS", "3")][..], "JOB_COMPLETION_INDEX=`x`"),
            (&[("JOB_COMPLETION_INDEX", "0"), ("JOB_COMPLETIONS", "0")][..], "JOB_COMPLETION_INDEX=0 is not below JOB_COMPLETIONS=0"),
            (&[("JOB_COMPLETION_INDEX", "0"), ("JOB_COMPLETIONS", "2"), ("SLURM_ARRAY_TASK_ID", "0")][..], "both"),
            (&[("SLURM_ARRAY_TASK_ID", "0")][..], "SLURM_ARRAY_TASK_COUNT is not"),
            (&[("SLURM_ARRAY_TASK_ID", "-1"), ("SLURM_ARRAY_TASK_COUNT", "3")][..], "SLURM_ARRAY_TASK_ID=`-1`"),
            (&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "3")][..], "SLURM_ARRAY_TASK_ID=3 is outside"),
            (&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "0"), ("SLURM_ARRAY_TASK_MAX", "7")][..], "SLURM_ARRAY_TASK_MAX=7"),
            (&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("SLURM_ARRAY_TASK_STEP", "2")][..], "SLURM_ARRAY_TASK_STEP=2"),
        ] {
            let err = from(vars).expect_err(needle).to_string();
            assert!(err.starts_with("invalid shard `auto`: ") && err.contains(needle), "{vars:?}: {err}");
        }
    }
}
