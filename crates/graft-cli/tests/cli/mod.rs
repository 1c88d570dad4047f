mod adapt;
mod adapt_classic;
mod arch_parity;
mod backbones;
mod bad_weights;
mod cache;
mod cnn_archs_cli;
mod corrupt_text;
mod data;
mod device;
mod export;
mod fewzero;
mod fit;
mod formats;
mod help;
mod hostile;
mod hostile_io;
mod hostile_weights;
mod inspect;
mod keras_parity;
mod lr_find;
mod parity;
mod predict;
mod predictor;
mod report;
mod resume;
mod seam;
mod semi;
mod serve;
mod shard;
mod study;
mod text;
mod timm_parity;
mod traps;
mod transfer;
mod vgg_cli;
mod vit_cli;
mod views;
mod zoo_cli;
mod zoo_parity;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The project's `shared/` folder (reference outputs, data): `$GRAFT_SHARED` or `../shared`
/// beside the repository.
pub fn shared() -> PathBuf {
    let dir = std::env::var_os("GRAFT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    assert!(dir.join("reference").is_dir(), "shared data not found at {} (set GRAFT_SHARED)", dir.display());
    dir
}

pub fn reference(rel: &str) -> PathBuf {
    let p = shared().join("reference").join(rel);
    assert!(p.exists(), "reference file missing: {}", p.display());
    p
}

/// A GRAFT_HOME shared by the tests, with efficientnet-lite0 pulled (once per test run).
pub fn test_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/graft-test-home");
        let out = Command::new(env!("CARGO_BIN_EXE_graft"))
            .args(["pull", "efficientnet-lite0", "--json"])
            .env("GRAFT_HOME", &home)
            .output()
            .expect("run graft pull");
        assert!(out.status.success(), "graft pull failed: {}", String::from_utf8_lossy(&out.stderr));
        home
    })
}

/// Runs graft with the test home and returns its output.
pub fn graft(args: &[&str]) -> Output {
    graft_in(test_home(), args)
}

/// Runs graft with another GRAFT_HOME.
pub fn graft_in(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_HOME", home)
        // The tests choose their device with --device; a user's GRAFT_DEVICE must not move them.
        .env_remove("GRAFT_DEVICE")
        .output()
        .expect("run graft")
}

/// Starts `graft ARGS` under `home` and SIGKILLs it `grace` after the first line of `metrics`
/// (a run's `metrics.jsonl`) appears; returns how many epoch lines the killed run left.
pub fn kill_after_first_epoch(home: &Path, args: &[&str], metrics: &Path, grace: std::time::Duration) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .env("GRAFT_HOME", home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..3000 {
        if std::fs::read_to_string(metrics).map(|m| !m.is_empty()).unwrap_or(false) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(grace);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::fs::read_to_string(metrics).unwrap().lines().count()
}

/// Runs the calling test again in a child process of this test binary and returns `true` in
/// the child, where the test does its work; in the parent it waits for the child, fails if the
/// child failed, and returns `false`. For tests that hold gigabytes in-process (seeded VGG
/// weights): a process this binary starts meanwhile would inherit that resident set in its
/// peak-RSS figure (Linux counts the parent's pages at fork), failing the memory checks of the
/// tests running beside it. `name` is the test's path as the harness lists it.
pub fn in_child_process(name: &str) -> bool {
    const CHILD: &str = "GRAFT_TEST_IN_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test in a child process");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprint!("{stderr}");
    assert!(out.status.success(), "{name} failed in its child process:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{name} did not run in its child process:\n{stdout}");
    false
}

/// A fresh GRAFT_HOME of its own (an empty feature cache) sharing the pulled weights.
pub fn isolated_home(name: &str) -> PathBuf {
    let home = scratch(&format!("home-{name}"));
    std::os::unix::fs::symlink(test_home().join("models").canonicalize().unwrap(), home.join("models")).unwrap();
    home
}

/// Runs graft (test home, plus `env`) and measures it: returns its output, how long it ran and
/// its own peak RSS in bytes, from `wait4` on exactly this child (RUSAGE_CHILDREN would mix in
/// other tests' children). A run still going after `limit` is killed and fails the test (a
/// FIFO read, say, would block forever).
pub fn run_measured(args: &[&str], env: &[(&str, &str)], limit: std::time::Duration) -> (Output, std::time::Duration, u64) {
    use std::io::Read;
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_graft"));
    cmd.args(args).env("GRAFT_HOME", test_home()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = std::time::Instant::now();
    let mut child = cmd.spawn().expect("run graft");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        out_pipe.read_to_end(&mut b).unwrap();
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        err_pipe.read_to_end(&mut b).unwrap();
        b
    });
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child with valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert_eq!(r, 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if start.elapsed() > limit {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!("graft {args:?} still running after {limit:?}: killed");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let elapsed = start.elapsed();
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::ExitStatus::from_raw(status);
    std::mem::forget(child); // already reaped
    // Linux reports ru_maxrss in kilobytes.
    (Output { status, stdout, stderr }, elapsed, usage.ru_maxrss as u64 * 1024)
}

/// Parses stdout as JSON, failing with stderr shown.
pub fn json_of(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "graft failed ({:?}): {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Asserts exit code 2 with a one-line message containing every `needle`.
pub fn assert_bad_input(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2, stderr: {stderr}");
    let line = stderr.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line in: {stderr}"));
    for needle in needles {
        assert!(line.contains(needle), "error line does not mention `{needle}`: {line}");
    }
}

/// The device the parity tests compute on: `GRAFT_TEST_DEVICE` (`cpu`, `wgpu`, `wgpu:N`, …),
/// else the CPU. A device this build lacks FAILS the test (it never falls back to the CPU).
pub fn test_device() -> (graft::device::DeviceSpec, burn::tensor::Device) {
    let value = std::env::var("GRAFT_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let spec = graft::device::DeviceSpec::parse_one(&value).unwrap_or_else(|e| panic!("GRAFT_TEST_DEVICE: {e}"));
    let device = spec.device().unwrap_or_else(|e| panic!("GRAFT_TEST_DEVICE: {e}"));
    (spec, device)
}

/// Asserts that `tensor` (an output) was computed on `spec`'s device: a run that fell back to
/// the CPU fails here.
pub fn assert_on_device<const D: usize>(spec: graft::device::DeviceSpec, tensor: &burn::tensor::Tensor<D>) {
    let on = tensor.device();
    assert_eq!(graft::device::DeviceSpec::of(&on), Some(spec), "computed on {on:?}, not on {spec}");
    assert_eq!(graft::device::is_cpu(&on), spec == graft::device::DeviceSpec::Cpu, "{on:?}");
}

pub fn lite0_weights() -> PathBuf {
    test_home().join("models/efficientnet-lite0/weights.safetensors")
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/graft-test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
