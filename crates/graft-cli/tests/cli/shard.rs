//! `graft extract --shard auto` under a scheduler's variables (Kubernetes Indexed Job, Slurm job
//! array), and `graft cache merge` of the parts: the merged file is the one-process file, byte
//! for byte; a missing or foreign part is refused by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::fit::fmnist;
use super::{assert_bad_input, json_of, lite0_weights, scratch, test_home};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs graft with exactly `vars` of the scheduler variables: any SLURM_… or JOB_… variable of
/// the environment the tests run in is removed first.
fn graft_env(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args(args).env("GRAFT_HOME", test_home());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("SLURM_") || name.starts_with("JOB_") {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd.envs(vars.iter().copied()).output().expect("run graft")
}

/// Three class folders of 12 files, one unreadable: parts of 4, 3 (the unreadable file is the
/// eighth of the listing, part 2's) and 4 images.
fn data(dir: &Path) -> PathBuf {
    let data = fmnist(dir, 4, 16);
    let bag = data.join("Bag");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&bag).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::write(data.join("Sneaker").join("zz-broken.png"), b"not a png").unwrap();
    data
}

/// Starts `extract --shard auto` once per variable set, all at once as a scheduler would, and
/// checks what each says about its part.
fn extract_parts(data: &Path, merged: &Path, tasks: &[Vec<(&str, String)>], source: &str) {
    let outputs: Vec<Output> = std::thread::scope(|scope| {
        let children: Vec<_> = tasks
            .iter()
            .map(|vars| {
                let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
                scope.spawn(move || graft_env(&["extract", "--data", s(data), "--out", s(merged), "--shard", "auto", "--json"], &vars))
            })
            .collect();
        children.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (i, output) in outputs.iter().enumerate() {
        let v = json_of(output);
        let part = merged.with_file_name(format!("feats.part-{}-of-3.safetensors", i + 1));
        assert_eq!(v["out"], s(&part), "task {i} writes its part beside the merged name");
        assert_eq!(v["shard"], serde_json::json!({"part": i + 1, "of": 3, "from": source, "merged": s(merged)}));
        assert_eq!(v["n"], [4, 3, 4][i], "part {}: every third image", i + 1);
    }
    assert!(!merged.exists(), "no process writes the merged file");
}

#[test]
fn shard_auto_parts_from_kubernetes_and_slurm_merge_into_the_one_process_file_byte_for_byte() {
    let dir = scratch("shard-auto");
    let data = data(&dir);
    let whole = dir.join("whole.safetensors");
    let v = json_of(&graft_env(&["extract", "--data", s(&data), "--out", s(&whole), "--json"], &[]));
    assert_eq!(v["n"], 11);
    assert_eq!(v["skipped"].as_array().unwrap().len(), 1);
    assert!(v.get("shard").is_none());
    let whole_bytes = std::fs::read(&whole).unwrap();

    let kubernetes: Vec<Vec<(&str, String)>> = (0..3).map(|i| vec![("JOB_COMPLETION_INDEX", i.to_string()), ("JOB_COMPLETIONS", "3".into())]).collect();
    let slurm: Vec<Vec<(&str, String)>> = (0..3).map(|i| vec![("SLURM_ARRAY_TASK_ID", i.to_string()), ("SLURM_ARRAY_TASK_COUNT", "3".into())]).collect();
    for (name, tasks, source) in [("k8s", kubernetes, "JOB_COMPLETION_INDEX"), ("slurm", slurm, "SLURM_ARRAY_TASK_ID")] {
        let merged = dir.join(name).join("feats.safetensors");
        extract_parts(&data, &merged, &tasks, source);
        let m = json_of(&graft_env(&["cache", "merge", "--out", s(&merged), "--json"], &[]));
        assert_eq!((m["n"].as_u64(), m["parts"].as_u64(), m["dim"].as_u64()), (Some(11), Some(3), Some(1280)), "{name}: {m}");
        assert!(std::fs::read(&merged).unwrap() == whole_bytes, "{name}: the merged file differs from the one-process extraction");
    }

    // The parts named on the command line (any order) merge the same.
    let k8s = dir.join("k8s");
    let parts: Vec<PathBuf> = [3, 1, 2].iter().map(|i| k8s.join(format!("feats.part-{i}-of-3.safetensors"))).collect();
    let listed = dir.join("listed.safetensors");
    json_of(&graft_env(&["cache", "merge", "--out", s(&listed), s(&parts[0]), s(&parts[1]), s(&parts[2]), "--json"], &[]));
    assert!(std::fs::read(&listed).unwrap() == whole_bytes, "merge of listed parts differs from the one-process extraction");
    // And the library reads it as before: features, labels and paths in listing order.
    let dict = graft_weights::load(&listed).unwrap();
    assert_eq!(dict.tensors["features"].shape, vec![11, 1280]);
    assert_eq!(dict.metadata["weights_sha256"].len(), 64);
    assert!(!dict.metadata.contains_key("shard"));
}

#[test]
fn merge_refuses_a_missing_or_foreign_part_by_name() {
    let dir = scratch("shard-refuse");
    let data = data(&dir);
    let merged = dir.join("out").join("feats.safetensors");
    let part = |i: usize| merged.with_file_name(format!("feats.part-{i}-of-3.safetensors"));
    let extract = |shard: &str, extra: &[&str]| {
        let mut args = vec!["extract", "--data", s(&data), "--out", s(&merged), "--shard", shard, "--json"];
        args.extend_from_slice(extra);
        json_of(&graft_env(&args, &[]))
    };
    for i in 1..=3 {
        assert_eq!(extract(&format!("{i}/3"), &[])["out"], s(&part(i)));
    }
    let merge = || graft_env(&["cache", "merge", "--out", s(&merged)], &[]);
    let keep = dir.join("keep");
    std::fs::create_dir_all(&keep).unwrap();
    for i in 1..=3 {
        std::fs::copy(part(i), keep.join(format!("{i}"))).unwrap();
    }
    let restore = |i: usize| std::fs::copy(keep.join(format!("{i}")), part(i)).unwrap();

    // A part missing.
    std::fs::remove_file(part(2)).unwrap();
    assert_bad_input(&merge(), &["feats.part-2-of-3.safetensors", "missing"]);
    assert_bad_input(&graft_env(&["cache", "merge", "--out", s(&merged), s(&part(1)), s(&part(3))], &[]), &["feats.part-2-of-3.safetensors", "missing: part 2/3"]);
    assert!(!merged.exists());

    // A part from other weights (same architecture, one tensor changed).
    let mut dict = graft_weights::load(&lite0_weights()).unwrap();
    dict.tensors.get_mut("_bn1.bias").unwrap().data[0] += 0.5;
    let other = dir.join("other.safetensors");
    graft_weights::save_safetensors(&other, &dict).unwrap();
    extract("2/3", &["--weights", s(&other)]);
    assert_bad_input(&merge(), &["feats.part-2-of-3.safetensors", "foreign part", "weights_sha256"]);
    restore(2);

    // A part of another layer.
    extract("3/3", &["--layer", "_blocks.2"]);
    assert_bad_input(&merge(), &["feats.part-3-of-3.safetensors", "foreign part", "layer `_blocks.2`"]);
    restore(3);

    // A part renamed to another part's name, and a stale part of another split.
    std::fs::copy(part(1), part(2)).unwrap();
    assert_bad_input(&merge(), &["feats.part-2-of-3.safetensors", "foreign part", "part 1/3"]);
    restore(2);
    // A truncated part (a copy cut short), and one whose header claims more than the file holds.
    let bytes = std::fs::read(part(3)).unwrap();
    std::fs::write(part(3), &bytes[..bytes.len() - 100]).unwrap();
    assert_bad_input(&merge(), &["feats.part-3-of-3.safetensors", "truncated or damaged"]);
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(part(3), &huge).unwrap();
    assert_bad_input(&merge(), &["feats.part-3-of-3.safetensors", "header length 1099511627776"]);
    restore(3);
    let stale = merged.with_file_name("feats.part-1-of-2.safetensors");
    std::fs::copy(part(1), &stale).unwrap();
    assert_bad_input(&merge(), &["two splits", "-of-3", "-of-2"]);
    std::fs::remove_file(&stale).unwrap();

    assert!(!merged.exists(), "nothing is written by a refused merge");
    assert_eq!(json_of(&graft_env(&["cache", "merge", "--out", s(&merged), "--json"], &[]))["n"], 11, "the restored parts merge");
}

#[test]
fn shard_auto_refuses_missing_or_inconsistent_scheduler_variables_before_any_work() {
    let dir = scratch("shard-vars");
    // No data folder at all: the variables are refused before anything is read.
    let data = dir.join("no-such-data");
    let out = dir.join("feats.safetensors");
    let run = |vars: &[(&str, &str)]| graft_env(&["extract", "--data", s(&data), "--out", s(&out), "--shard", "auto"], vars);
    assert_bad_input(&run(&[]), &["invalid --shard `auto`", "JOB_COMPLETION_INDEX", "JOB_COMPLETIONS", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"]);
    assert_bad_input(&run(&[("JOB_COMPLETION_INDEX", "0")]), &["JOB_COMPLETIONS is not"]);
    assert_bad_input(&run(&[("JOB_COMPLETION_INDEX", "3"), ("JOB_COMPLETIONS", "3")]), &["JOB_COMPLETION_INDEX=3 is not below JOB_COMPLETIONS=3"]);
    assert_bad_input(&run(&[("SLURM_ARRAY_TASK_ID", "one"), ("SLURM_ARRAY_TASK_COUNT", "3")]), &["SLURM_ARRAY_TASK_ID=`one` is not a whole number"]);
    assert_bad_input(&run(&[("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "5"), ("SLURM_ARRAY_TASK_MAX", "9")]), &["SLURM_ARRAY_TASK_MAX=9", "plain range"]);
    // The parts are safetensors: another merged name is refused with the flag.
    let csv = dir.join("feats.csv");
    let out = graft_env(&["extract", "--data", s(&data), "--out", s(&csv), "--shard", "auto"], &[("JOB_COMPLETION_INDEX", "0"), ("JOB_COMPLETIONS", "2")]);
    assert_bad_input(&out, &["invalid --out", "must end in .safetensors"]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing written");
}
