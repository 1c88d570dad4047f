//! Seeded weights: every tensor of a state dict filled from its name alone, bit for bit the
//! same here and in Python (`crates/graft-cli/tests/fixtures/seeded/seeded.py`), so parity
//! tests against PyTorch need no committed weights: both sides fill the same architecture from
//! the same formula, and only the reference logits (KB) are committed.
//!
//! The formula, for the tensor named `name` with shape `shape` (the weights file's shape, e.g.
//! PyTorch's linear `[out, in]`) and its element `j` in row-major order:
//!
//! - `key = fnv1a64(name)`, `h = splitmix64(key + j)` (wrapping 64-bit arithmetic),
//!   `u = (h >> 40) / 2^24` in `[0, 1)`, `v = 2u − 1` in `[-1, 1)`, all exact in `f64`;
//! - `…running_var`: `0.5 + u` (in `[0.5, 1.5)`); `…running_mean` and `…bias`: `0.1 · v`;
//!   any other 1-D tensor (a norm's weight): `1 + 0.1 · v`; every other tensor (convolution
//!   and linear weights): `v · sqrt(6 / fan_in)` with `fan_in` the product of `shape[1..]`
//!   (He-uniform, so activations keep their scale through ReLU layers);
//! - computed in `f64`, then rounded once to `f32`.
//!
//! Keras names (`<layer>/<weight>`, see [`super::keras`]) follow the same formula with Keras's
//! words and layout: `…/moving_variance` as `running_var`, `…/moving_mean` and `…/beta` as
//! `running_mean`; kernels keep their output channels last (`[kh, kw, in, out]`, Dense
//! `[in, out]`), so `fan_in` is the product of every dimension but the last, and a depthwise
//! kernel `[kh, kw, channels, 1]` has `fan_in = kh · kw`.
//!
//! Every step is an IEEE-exact operation (integer arithmetic, `f64` +, ·, /, `sqrt`, one
//! rounding to `f32`), so numpy reproduces the values exactly. `num_batches_tracked` is not a
//! weight and is left out.

use graft_weights::{DType, StateDict, Tensor};

use super::table::{NameSet, Table};

/// FNV-1a, 64-bit, of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's output function on `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The values of the tensor `name` of `shape` (see the module docs).
pub fn values(name: &str, shape: &[usize]) -> Vec<f32> {
    let key = fnv1a64(name.as_bytes());
    let numel: usize = shape.iter().product();
    let keras = name.contains('/');
    let fan_in: usize = match shape {
        [kh, kw, _, 1] if keras => kh * kw,
        [.., _] if keras => shape[..shape.len() - 1].iter().product(),
        _ => shape.iter().skip(1).product(),
    };
    let bound = (6.0 / fan_in.max(1) as f64).sqrt();
    let unit = |j: usize| (splitmix64(key.wrapping_add(j as u64)) >> 40) as f64 / (1u64 << 24) as f64;
    let value: Box<dyn Fn(f64) -> f64> = if name.ends_with("running_var") || name.ends_with("/moving_variance") {
        Box::new(|u| 0.5 + u)
    } else if name.ends_with("running_mean") || name.ends_with("bias") || name.ends_with("/moving_mean") || name.ends_with("/beta") {
        Box::new(|u| 0.1 * (2.0 * u - 1.0))
    } else if shape.len() == 1 {
        Box::new(|u| 1.0 + 0.1 * (2.0 * u - 1.0))
    } else {
        Box::new(move |u| (2.0 * u - 1.0) * bound)
    };
    (0..numel).map(|j| value(unit(j)) as f32).collect()
}

/// Seeded inputs: `v · 2` (in `[-2, 2)`, about the range of normalised images) for the tensor
/// named `name` of `shape`, with `v` as in the module docs.
pub fn inputs(name: &str, shape: &[usize]) -> Vec<f32> {
    let key = fnv1a64(name.as_bytes());
    let numel: usize = shape.iter().product();
    (0..numel).map(|j| (((splitmix64(key.wrapping_add(j as u64)) >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0) * 2.0) as f32).collect()
}

/// Seeded bytes (a test image's pixels): the top 8 bits of `splitmix64(fnv1a64(name) + j)`.
pub fn bytes(name: &str, n: usize) -> Vec<u8> {
    let key = fnv1a64(name.as_bytes());
    (0..n).map(|j| (splitmix64(key.wrapping_add(j as u64)) >> 56) as u8).collect()
}

/// A state dict with every tensor `table` reads, under the file's names and in the file's
/// shapes, filled with seeded values.
pub fn state_dict(table: &Table) -> StateDict {
    state_dict_as(table, NameSet::Own)
}

/// [`state_dict`] under the name set `names` (timm's: a timm file of the architecture, each
/// tensor seeded from its timm name and shape, as `seeded.py` fills a timm model).
pub fn state_dict_as(table: &Table, names: NameSet) -> StateDict {
    let mut dict = StateDict::default();
    for (name, shape) in table.file_tensors(names) {
        let data = values(&name, &shape);
        dict.tensors.insert(name, Tensor { shape, dtype: DType::F32, data });
    }
    dict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_documented_formula() {
        // Pinned values, also printed by `seeded.py --selftest`: a change on either side fails.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let w = values("features.0.weight", &[64, 3, 3, 3]);
        let bound = (6.0f64 / 27.0).sqrt() as f32;
        assert_eq!(w.len(), 64 * 27);
        assert!(w.iter().all(|x| x.abs() <= bound) && w.iter().any(|x| x.abs() > 0.9 * bound));
        let var = values("features.1.running_var", &[64]);
        assert!(var.iter().all(|v| (0.5..1.5).contains(v)));
        let mean = values("features.1.running_mean", &[64]);
        assert!(mean.iter().all(|v| v.abs() <= 0.1));
        let gamma = values("features.1.weight", &[64]);
        assert!(gamma.iter().all(|v| (0.9..=1.1).contains(v)));
        // Different names give different tensors; the same name the same one.
        assert_ne!(values("a.bias", &[8]), values("b.bias", &[8]));
        assert_eq!(values("a.bias", &[8]), values("a.bias", &[8]));
        let x = inputs("input", &[2, 3, 4, 4]);
        assert!(x.iter().all(|v| (-2.0..2.0).contains(v)));
        // The first values as seeded.py computes them (their f32 bits).
        let bits = |v: &[f32], n: usize| v[..n].iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w, 3), [0x3eab_bb0a, 0xbc49_3cf9, 0xbee7_d501]);
        assert_eq!(bits(&var, 2), [0x3faa_0ea4, 0x3fa9_6e94]);
        assert_eq!(bits(&gamma, 2), [0x3f7d_2dc2, 0x3f8a_5afb]);
        assert_eq!(bits(&x, 2), [0xbfcd_eac2, 0xbfb4_7db0]);
        assert_eq!(bytes("image", 4), [177, 200, 89, 10]);
        // Keras names: output channels last, depthwise fan-in kh·kw, Keras's BatchNorm words.
        let k = values("c/kernel", &[3, 3, 2, 4]);
        assert!(k.iter().all(|x| x.abs() <= (6.0f64 / 18.0).sqrt() as f32) && k.iter().any(|x| x.abs() > 0.5));
        let dw = values("d/kernel", &[3, 3, 8, 1]);
        assert!(dw.iter().any(|x| x.abs() > 0.7) && dw.iter().all(|x| x.abs() <= (6.0f64 / 9.0).sqrt() as f32));
        assert!(values("b/moving_variance", &[8]).iter().all(|v| (0.5..1.5).contains(v)));
        assert!(values("b/moving_mean", &[8]).iter().chain(&values("b/beta", &[8])).all(|v| v.abs() <= 0.1));
        assert_eq!(bits(&k, 2), [0xbca3_ccf3, 0xbf0b_3031]);
        assert_eq!(bits(&values("b/moving_variance", &[8]), 1), [0x3f86_cd52]);
    }
}
