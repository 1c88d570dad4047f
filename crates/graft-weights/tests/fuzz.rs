//! Seeded random corruption of small valid files: `load` must return Ok or
//! Err, never panic. Deterministic (fixed seeds), so a failure reproduces.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use graft_weights::{load, save_safetensors, DType, StateDict, Tensor};

/// xorshift64*: no extra dependency, same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if b.is_empty() {
            break;
        }
        let at = rng.below(b.len());
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8), // flip a bit
            1 => b[at] = rng.next() as u8,   // random byte
            2 => b.truncate(at),             // truncate
            3 => {
                // overwrite with an extreme little-endian integer
                let v: u64 =
                    [u64::MAX, 1 << 62, 1 << 40, 0x7fff_ffff, 0x8000_0000, 0][rng.below(6)];
                for (i, byte) in v.to_le_bytes().iter().enumerate().take(1 + rng.below(8)) {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            4 => {
                // insert random bytes
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    b.insert(at, rng.next() as u8);
                }
            }
            5 => {
                // delete a run
                let end = (at + 1 + rng.below(16)).min(b.len());
                b.drain(at..end);
            }
            _ => {
                // duplicate a run (repeats opcodes, memo puts, marks...)
                let end = (at + 1 + rng.below(32)).min(b.len());
                let run = b[at..end].to_vec();
                b.splice(at..at, run);
            }
        }
    }
    b
}

fn fuzz(name: &str, seed: u64, iterations: usize, valid: &[u8]) -> (usize, usize) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join(name);
    // The unmutated file must load, or the mutations prove nothing.
    std::fs::write(&path, valid).unwrap();
    load(&path).unwrap_or_else(|e| panic!("{name}: valid seed file fails: {e}"));

    let mut rng = Rng(seed);
    let (mut ok, mut err) = (0, 0);
    for i in 0..iterations {
        let bytes = mutate(&mut rng, valid);
        std::fs::write(&path, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| load(&path))) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                assert_eq!(
                    e.path(),
                    path.as_path(),
                    "{name} #{i}: error names another file"
                );
                err += 1;
            }
            Err(_) => {
                let keep = std::env::temp_dir().join(format!("graft-fuzz-{name}-{i}"));
                let _ = std::fs::write(&keep, &bytes);
                panic!(
                    "{name} mutation #{i} (seed {seed}) panicked; input saved to {}",
                    keep.display()
                );
            }
        }
    }
    eprintln!("{name}: {iterations} mutations, {ok} still loaded, {err} rejected");
    // Most mutations must be caught; a reader that accepts everything is broken.
    assert!(
        err > iterations / 4,
        "{name}: only {err} of {iterations} mutations rejected"
    );
    (ok, err)
}

#[test]
fn fuzz_legacy() {
    fuzz("legacy.pth", 0x1234_5678_9abc_def1, 600, &sample_legacy());
}

#[test]
fn fuzz_zip() {
    fuzz("zip.pth", 0x0fed_cba9_8765_4321, 600, &sample_zip());
}

#[test]
fn fuzz_bare_state_dict_pickle_in_legacy_frame() {
    // Mutate only the main pickle, keeping the headers and storages intact,
    // so the VM itself (not the magic-number check) sees the damage.
    let main = state_dict_pickle(&sample_entries(), true);
    let mut rng = Rng(42);
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("vm.pth");
    for i in 0..600 {
        let bytes = legacy_file(&mutate(&mut rng, &main), &sample_storages());
        std::fs::write(&path, &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| load(&path)));
        assert!(r.is_ok(), "pickle mutation #{i} panicked");
    }
}

#[test]
fn fuzz_safetensors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("seed.safetensors");
    let mut sd = StateDict::default();
    sd.tensors.insert(
        "a".into(),
        Tensor {
            shape: vec![2, 2],
            dtype: DType::F32,
            data: vec![1., 2., 3., 4.],
        },
    );
    sd.tensors.insert(
        "b".into(),
        Tensor {
            shape: vec![3],
            dtype: DType::F32,
            data: vec![5., 6., 7.],
        },
    );
    sd.metadata.insert("k".into(), "v".into());
    save_safetensors(&p, &sd).unwrap();
    let valid = std::fs::read(&p).unwrap();
    fuzz("st.safetensors", 7, 600, &valid);
}
