//! Data-parallel training on one machine: one training step split over several devices.
//!
//! [`DataParallel::step`] splits a batch's rows into one contiguous shard per device (the first
//! device is the main one, where the model lives and the optimiser steps), runs each shard's
//! forward and backward on that device's replica of the model — the main shard on the calling
//! thread with the model itself, every other shard on its own thread — brings every shard's
//! gradients to the main device and combines them, weighted by each shard's share of the loss's
//! denominator, into the gradient of the whole batch's loss. The caller hands the result to its
//! optimiser as usual ([`split_groups`] cuts it into its parameter groups).
//!
//! Replicas are kept between steps: before each step every parameter that trains on the main
//! model (the ones the optimiser moved) is copied onto each replica; frozen parameters were
//! copied once. A change of what trains (a new stage unfreezing layers) rebuilds the replicas.
//!
//! BatchNorm: a layer in training mode normalises each shard by that shard's own batch
//! statistics (as PyTorch's DistributedDataParallel without SyncBatchNorm), so with BatchNorm
//! training the combined gradient is not the one-device gradient of the whole batch. burn keeps a
//! layer's running statistics in one state shared by every clone of the model and, updated from
//! several threads, averages the threads' updates: after a step the main model's running
//! statistics are the mean of the shards' updates. Frozen BatchNorm (inference mode, graft's
//! default for a frozen trunk) uses the running statistics only and is exact.
//!
//! Reuses burn's pieces: [`Module::fork`] makes a replica, [`GradientsParams::to_device`] moves a
//! shard's gradients to the main device and [`GradientsAccumulator`] sums them.

use std::ops::Range;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};

use crate::{GraftError, Result};

/// One shard of a step: which rows of the batch, on which device.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Index of the device in [`DataParallel::devices`] (0: the main device).
    pub device_index: usize,
    /// The autodiff device the shard runs on.
    pub device: Device,
    /// The batch rows of this shard.
    pub rows: Range<usize>,
}

impl Shard {
    /// Rows in the shard.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// This shard's rows of `batch` (split along dim 0), moved to the shard's device.
    pub fn take<const D: usize>(&self, batch: &Tensor<D>) -> Tensor<D> {
        batch.clone().narrow(0, self.rows.start, self.rows.len()).to_device(&self.device)
    }
}

/// What the loss closure returns for one shard.
pub struct ShardLoss<T> {
    /// The shard's loss, a scalar `[1]` on the shard's device: the shard's part of the batch's
    /// loss normalised by the shard's own `weight` (a mean over the shard's rows, or a weighted
    /// mean Σ w·ℓ / Σ w).
    pub loss: Tensor<1>,
    /// The denominator of the shard's loss: its row count for a plain mean, Σ of its rows'
    /// weights for a weighted mean (see [`loss_weight`]). The combined gradient is that of
    /// Σ weightᵢ·lossᵢ / Σ weightᵢ, which is the whole batch's loss.
    pub weight: f64,
    /// Anything else the caller wants back from the shard (predictions, counts).
    pub output: T,
}

impl<T> ShardLoss<T> {
    /// A loss that is the mean over the shard's `rows` rows.
    pub fn mean(loss: Tensor<1>, rows: usize, output: T) -> Self {
        ShardLoss { loss, weight: rows as f64, output }
    }
}

/// The denominator of graft's cross-entropy over `targets` ([`super::loss::cross_entropy`]): the
/// row count, or Σ of the targets' class weights.
pub fn loss_weight(targets: &[usize], class_weights: Option<&[f32]>) -> f64 {
    match class_weights {
        None => targets.len() as f64,
        Some(w) => targets.iter().map(|&t| w.get(t).copied().unwrap_or(0.0) as f64).sum(),
    }
}

/// A data-parallel step's result.
pub struct Combined<T> {
    /// The gradient of the whole batch's loss, on the main device, keyed by the main model's
    /// parameter ids.
    pub grads: GradientsParams,
    /// The whole batch's loss: Σ weightᵢ·lossᵢ / Σ weightᵢ.
    pub loss: f64,
    /// Each non-empty shard and its closure's output, in row order.
    pub outputs: Vec<(Shard, T)>,
}

/// Splits `n` rows into `parts` contiguous ranges as even as possible (the first `n % parts`
/// ranges one row longer); ranges that would be empty (fewer rows than parts) are left out.
pub fn shard_rows(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    let mut out = Vec::new();
    for p in 0..parts {
        let len = base + usize::from(p < extra);
        if len > 0 {
            out.push(start..start + len);
        }
        start += len;
    }
    out
}

/// Cuts `grads` into one [`GradientsParams`] per group of parameter ids (a parameter in no group
/// is dropped, one in several goes to the first), as a task's `step` returns them.
pub fn split_groups<M: Module>(mut grads: GradientsParams, model: &M, groups: &[&[ParamId]]) -> Vec<GradientsParams> {
    struct Split<'a> {
        grads: &'a mut GradientsParams,
        groups: &'a [&'a [ParamId]],
        out: Vec<GradientsParams>,
    }
    impl ModuleVisitor for Split<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(g) = self.groups.iter().position(|ids| ids.contains(&param.id)) else {
                return;
            };
            if let Some(grad) = self.grads.remove::<D>(param.id) {
                self.out[g].register::<D>(param.id, grad);
            }
        }
    }
    let mut split = Split { grads: &mut grads, groups, out: (0..groups.len()).map(|_| GradientsParams::new()).collect() };
    model.visit(&mut split);
    split.out
}

/// The trained parameters of a model: their ids (in visiting order) and detached values.
fn trained_params<M: Module>(model: &M) -> (Vec<ParamId>, GradientsParams) {
    struct Collect {
        ids: Vec<ParamId>,
        values: GradientsParams,
    }
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.ids.push(param.id);
                self.values.register::<D>(param.id, param.val().detach());
            }
        }
    }
    let mut c = Collect { ids: Vec::new(), values: GradientsParams::new() };
    model.visit(&mut c);
    (c.ids, c.values)
}

/// Replaces the replica's parameters that have a value in `values` with that value on `device`,
/// as new leaves that require gradients (what [`Module::fork`] does to each parameter).
fn refresh<M: Module>(replica: M, values: &GradientsParams, device: &Device) -> M {
    struct Refresh<'a> {
        values: &'a GradientsParams,
        device: &'a Device,
    }
    impl ModuleMapper for Refresh<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match self.values.get::<D>(param.id) {
                Some(value) => {
                    let device = self.device;
                    param.map(|_| value.to_device(device).detach().require_grad())
                }
                None => param,
            }
        }
    }
    replica.map(&mut Refresh { values, device })
}

/// How replicas follow the main model between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// Keep each replica; before a step copy only the parameters that train (the default).
    Cached,
    /// Fork a fresh replica from the main model every step (copies every parameter).
    Fork,
}

/// Runs training steps data-parallel over a list of devices (the first is the main device).
pub struct DataParallel<M: Module> {
    devices: Vec<Device>,
    mode: Replicas,
    /// Replicas for devices 1.. (index 0 unused: the main shard runs on the model itself).
    replicas: Vec<Option<M>>,
    /// The ids that trained when the replicas were built.
    trained: Vec<ParamId>,
}

impl<M: Module> DataParallel<M> {
    /// Data parallelism over `devices` (made autodiff devices if they are not). The same device
    /// may be listed more than once (each entry gets its own replica and thread). One device
    /// runs every step exactly as a plain backward would.
    pub fn new(devices: Vec<Device>) -> Result<Self> {
        if devices.is_empty() {
            return Err(GraftError::setting("device", "", "data-parallel training needs at least one device"));
        }
        let devices: Vec<Device> = devices.into_iter().map(|d| d.autodiff()).collect();
        let replicas = devices.iter().map(|_| None).collect();
        Ok(DataParallel { devices, mode: Replicas::Cached, replicas, trained: Vec::new() })
    }

    /// How replicas follow the main model (default [`Replicas::Cached`]).
    pub fn with_replicas(mut self, mode: Replicas) -> Self {
        self.mode = mode;
        self
    }

    /// The (autodiff) devices, main first.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The main device: the model's, where the combined gradients are.
    pub fn main_device(&self) -> &Device {
        &self.devices[0]
    }

    /// Drops the replicas: the next step forks them afresh from the model. Call it when the
    /// model changed other than through the optimiser's step on the returned gradients (its
    /// frozen weights were loaded anew).
    pub fn reset(&mut self) {
        self.replicas.iter_mut().for_each(|r| *r = None);
        self.trained.clear();
    }

    /// Seeds the generator of each device other than the main one (the main one the engine seeds
    /// every epoch) from `seed`, so dropout masks on replicas repeat in a resumed run. A device
    /// that equals the main device, or one listed earlier, is not reseeded.
    pub fn seed(&self, seed: u64) {
        for (k, device) in self.devices.iter().enumerate().skip(1) {
            if !self.devices[..k].contains(device) {
                device.seed(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            }
        }
    }

    /// One data-parallel step over a batch of `rows` rows. `loss` computes the loss of one shard
    /// on the given model replica (whose parameters live on `shard.device`); it is called once
    /// per non-empty shard, concurrently. The batch is split by [`shard_rows`]; a batch with fewer
    /// rows than devices leaves the last devices idle.
    ///
    /// `model` must be on the main device. The returned gradient is that of the whole batch's
    /// loss (see [`ShardLoss::weight`]), on the main device, keyed by `model`'s parameter ids.
    /// The first shard's error (in row order) is returned; a panic in a shard is resumed.
    pub fn step<T, F>(&mut self, model: &M, rows: usize, loss: F) -> Result<Combined<T>>
    where
        T: Send,
        F: Fn(&M, &Shard) -> Result<ShardLoss<T>> + Sync,
    {
        if rows == 0 {
            return Err(GraftError::setting("batch_size", "0", "a training step needs at least one row"));
        }
        let shards: Vec<Shard> = shard_rows(rows, self.devices.len())
            .into_iter()
            .enumerate()
            .map(|(k, rows)| Shard { device_index: k, device: self.devices[k].clone(), rows })
            .collect();
        if shards.len() == 1 {
            // One shard: the model's own backward, exactly as without data parallelism.
            let shard = shards.into_iter().next().expect("one shard");
            let out = loss(model, &shard)?;
            let value = scalar(&out.loss);
            let grads = GradientsParams::from_grads(out.loss.backward(), model);
            return Ok(Combined { grads, loss: value, outputs: vec![(shard, out.output)] });
        }

        // Bring the replicas of the devices this step uses up to date.
        let (trained, values) = trained_params(model);
        if self.mode == Replicas::Fork || trained != self.trained {
            self.reset();
            self.trained = trained;
        }
        for shard in &shards[1..] {
            let k = shard.device_index;
            self.replicas[k] = Some(match self.replicas[k].take() {
                Some(replica) => refresh(replica, &values, &shard.device),
                None => model.clone().fork(&shard.device),
            });
        }
        drop(values);
        // Settle BatchNorm running statistics left by the last step's threads (burn averages
        // per-thread updates on the next read from a thread that wrote one), so every shard of
        // this step reads the same statistics whichever thread runs first.
        drop(model.valid());

        let main_device = self.devices[0].clone().inner();
        let loss = &loss;
        let results: Vec<(Shard, Result<Part<T>>)> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for shard in &shards[1..] {
                let replica = self.replicas[shard.device_index].take().expect("replica prepared above");
                let (shard, main_device) = (shard.clone(), main_device.clone());
                handles.push(scope.spawn(move || {
                    let part = run_shard(&replica, &shard, loss).map(|mut part| {
                        part.grads = part.grads.to_device(&main_device, &replica);
                        part
                    });
                    (replica, shard, part)
                }));
            }
            let mut results = vec![(shards[0].clone(), run_shard(model, &shards[0], loss))];
            for handle in handles {
                let (replica, shard, part) = handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                self.replicas[shard.device_index] = Some(replica);
                results.push((shard, part));
            }
            results
        });
        if self.mode == Replicas::Fork {
            self.reset();
        }

        let mut accumulator = GradientsAccumulator::<M>::new();
        let (mut total, mut weighted) = (0.0, 0.0);
        let mut outputs = Vec::with_capacity(results.len());
        for (shard, part) in results {
            let part = part?;
            total += part.weight;
            weighted += part.weight * part.loss;
            accumulator.accumulate(model, part.grads);
            outputs.push((shard, part.output));
        }
        if total.is_nan() || total <= 0.0 {
            return Err(GraftError::setting("class_weights", "", "the batch's loss weights sum to zero"));
        }
        let grads = scale(accumulator.grads(), model, 1.0 / total);
        Ok(Combined { grads, loss: weighted / total, outputs })
    }
}

/// One shard's gradient of weight·loss, its loss and weight.
struct Part<T> {
    grads: GradientsParams,
    loss: f64,
    weight: f64,
    output: T,
}

fn run_shard<M: Module, T>(model: &M, shard: &Shard, loss: &impl Fn(&M, &Shard) -> Result<ShardLoss<T>>) -> Result<Part<T>> {
    let out = loss(model, shard)?;
    let value = scalar(&out.loss);
    let grads = GradientsParams::from_grads(out.loss.mul_scalar(out.weight).backward(), model);
    Ok(Part { grads, loss: value, weight: out.weight, output: out.output })
}

fn scalar(loss: &Tensor<1>) -> f64 {
    let v: f32 = loss.clone().into_scalar();
    v as f64
}

/// Multiplies every gradient of `model`'s parameters by `factor`.
fn scale<M: Module>(mut grads: GradientsParams, model: &M, factor: f64) -> GradientsParams {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register::<D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    model.visit(&mut Scale { grads: &mut grads, factor });
    grads
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
    use burn::optim::SgdConfig;
    use burn::tensor::{Distribution, TensorData};

    use super::*;
    use crate::train::loss::cross_entropy;

    /// conv → BatchNorm (frozen: inference mode, as a frozen trunk's) → ReLU → linear.
    #[derive(Module, Debug)]
    struct Net {
        conv: Conv2d,
        bn: BatchNorm,
        fc: Linear,
    }

    const CLASSES: usize = 4;

    impl Net {
        fn new(device: &Device) -> Self {
            device.seed(7);
            let conv = Conv2dConfig::new([2, 3], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
            let bn = BatchNormConfig::new(3).init(device);
            // Non-trivial running statistics, so inference-mode BN does something.
            bn.running_mean.update(Tensor::from_data(TensorData::new(vec![0.1f32, -0.2, 0.3], [3]), device));
            bn.running_var.update(Tensor::from_data(TensorData::new(vec![0.5f32, 2.0, 1.5], [3]), device));
            let bn = bn.valid().train().freeze();
            Net { conv, bn, fc: LinearConfig::new(3 * 5 * 5, CLASSES).init(device) }
        }

        fn forward(&self, x: Tensor<4>) -> Tensor<2> {
            let x = burn::tensor::activation::relu(self.bn.forward(self.conv.forward(x)));
            self.fc.forward(x.flatten(1, 3))
        }
    }

    fn batch(n: usize, device: &Device) -> (Tensor<4>, Vec<usize>) {
        device.seed(11);
        let x = Tensor::<4>::random([n, 2, 5, 5], Distribution::Normal(0.0, 1.0), device);
        let targets = (0..n).map(|i| (i * 3 + 1) % CLASSES).collect();
        (x, targets)
    }

    /// Every gradient of `model`'s parameters: id → values.
    fn grad_values<M: Module>(grads: &GradientsParams, model: &M) -> Vec<(ParamId, Vec<f32>)> {
        struct Read<'a>(&'a GradientsParams, Vec<(ParamId, Vec<f32>)>);
        impl ModuleVisitor for Read<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.0.get::<D>(param.id) {
                    self.1.push((param.id, g.into_data().try_to_vec::<f32>().unwrap()));
                }
            }
        }
        let mut r = Read(grads, Vec::new());
        model.visit(&mut r);
        r.1
    }

    /// Every parameter value (trained or not, BN statistics included).
    fn param_values<M: Module>(model: &M) -> Vec<(ParamId, Vec<f32>)> {
        struct Read(Vec<(ParamId, Vec<f32>)>);
        impl ModuleVisitor for Read {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push((param.id, param.val().into_data().try_to_vec::<f32>().unwrap()));
            }
        }
        let mut r = Read(Vec::new());
        model.visit(&mut r);
        r.0
    }

    /// Asserts the two gradients have the same parameters and agree to `tol` relative to each
    /// tensor's largest magnitude.
    fn assert_close(got: &[(ParamId, Vec<f32>)], want: &[(ParamId, Vec<f32>)], tol: f32) {
        assert_eq!(got.len(), want.len(), "parameters with gradients");
        for ((ig, g), (iw, w)) in got.iter().zip(want) {
            assert_eq!(ig, iw);
            assert_eq!(g.len(), w.len());
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "a zero gradient proves nothing");
            let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= tol * scale, "gradient of {ig} differs by {diff} (scale {scale})");
        }
    }

    /// The single-device gradient of the whole batch's loss.
    fn full_batch(model: &Net, x: &Tensor<4>, targets: &[usize], weights: Option<&[f32]>) -> (f64, Vec<(ParamId, Vec<f32>)>) {
        let device = x.device();
        let loss = cross_entropy(model.forward(x.clone()), targets, 0.1, weights, &device);
        let value = scalar(&loss);
        let grads = GradientsParams::from_grads(loss.backward(), model);
        (value, grad_values(&grads, model))
    }

    /// The shard closure a task writes: its rows of the batch, on its device.
    fn shard_loss<'a>(x: &'a Tensor<4>, targets: &'a [usize], weights: Option<&'a [f32]>) -> impl Fn(&Net, &Shard) -> Result<ShardLoss<usize>> + Sync + 'a {
        move |replica: &Net, shard: &Shard| {
            let t = &targets[shard.rows.clone()];
            let logits = replica.forward(shard.take(x));
            let loss = cross_entropy(logits, t, 0.1, weights, &shard.device);
            Ok(ShardLoss { loss, weight: loss_weight(t, weights), output: shard.len() })
        }
    }

    /// CPU devices for the tests: burn's flex backend has one device (`FlexDevice` is a unit
    /// struct), so "several devices" are the flex device listed several times — each entry
    /// still gets its own replica, autodiff graph and thread.
    fn flex_devices(n: usize) -> Vec<Device> {
        (0..n).map(|_| Device::flex()).collect()
    }

    #[test]
    fn combined_gradient_equals_the_one_device_gradient() {
        let device = Device::flex().autodiff();
        let model = Net::new(&device);
        let (x, targets) = batch(7, &device);
        let class_weights = [1.0f32, 3.0, 0.5, 2.0];
        for weights in [None, Some(&class_weights[..])] {
            let (want_loss, want) = full_batch(&model, &x, &targets, weights);
            // conv weight and bias, linear weight and bias: the frozen BN has none.
            assert_eq!(want.len(), 4);
            for (devices, mode) in [(2, Replicas::Cached), (3, Replicas::Cached), (2, Replicas::Fork)] {
                let mut dp = DataParallel::new(flex_devices(devices)).unwrap().with_replicas(mode);
                let out = dp.step(&model, 7, shard_loss(&x, &targets, weights)).unwrap();
                let rows: Vec<usize> = out.outputs.iter().map(|(_, n)| *n).collect();
                assert_eq!(rows, if devices == 2 { vec![4, 3] } else { vec![3, 2, 2] });
                assert!((out.loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "{} vs {want_loss}", out.loss);
                assert_close(&grad_values(&out.grads, &model), &want, 1e-5);
            }
        }
    }

    #[test]
    fn one_device_is_a_plain_backward() {
        let device = Device::flex().autodiff();
        let model = Net::new(&device);
        let (x, targets) = batch(5, &device);
        let (want_loss, want) = full_batch(&model, &x, &targets, None);
        let mut dp = DataParallel::new(vec![Device::flex()]).unwrap();
        let out = dp.step(&model, 5, shard_loss(&x, &targets, None)).unwrap();
        assert_eq!(out.loss, want_loss);
        assert_close(&grad_values(&out.grads, &model), &want, 0.0);
    }

    #[test]
    fn replicas_follow_the_main_model_after_optimizer_steps() {
        let device = Device::flex().autodiff();
        let mut model = Net::new(&device);
        let (x, targets) = batch(7, &device);
        let mut optimizer = SgdConfig::new().init();
        let mut dp = DataParallel::new(flex_devices(3)).unwrap();
        for step in 0..3 {
            let out = dp.step(&model, 7, shard_loss(&x, &targets, None)).unwrap();
            // The gradient of every step is that of the updated model: replicas were in sync.
            let (_, want) = full_batch(&model, &x, &targets, None);
            assert_close(&grad_values(&out.grads, &model), &want, 1e-5);
            let before = param_values(&model);
            model = optimizer.step(0.5, model, out.grads);
            assert_ne!(param_values(&model), before, "step {step} changed nothing");
            // Refreshed as the next step does: every replica equals the main model.
            let (trained, values) = trained_params(&model);
            assert_eq!(trained, dp.trained);
            for k in 1..3 {
                let replica = refresh(dp.replicas[k].take().unwrap(), &values, &dp.devices[k]);
                assert_eq!(param_values(&replica), param_values(&model), "replica {k} after step {step}");
                dp.replicas[k] = Some(replica);
            }
        }
    }

    #[test]
    fn a_batch_smaller_than_the_device_count_skips_empty_shards() {
        let device = Device::flex().autodiff();
        let model = Net::new(&device);
        for n in [1, 2] {
            let (x, targets) = batch(n, &device);
            let (_, want) = full_batch(&model, &x, &targets, None);
            let mut dp = DataParallel::new(flex_devices(3)).unwrap();
            let out = dp.step(&model, n, shard_loss(&x, &targets, None)).unwrap();
            let shards: Vec<Range<usize>> = out.outputs.iter().map(|(s, _)| s.rows.clone()).collect();
            assert_eq!(shards, (0..n).map(|i| i..i + 1).collect::<Vec<_>>());
            assert_close(&grad_values(&out.grads, &model), &want, 1e-5);
        }
    }

    #[test]
    fn unfreezing_rebuilds_the_replicas() {
        let device = Device::flex().autodiff();
        let frozen_fc = {
            let mut m = Net::new(&device);
            m.fc = m.fc.freeze();
            m
        };
        let (x, targets) = batch(6, &device);
        let mut dp = DataParallel::new(flex_devices(2)).unwrap();
        let out = dp.step(&frozen_fc, 6, shard_loss(&x, &targets, None)).unwrap();
        assert_eq!(grad_values(&out.grads, &frozen_fc).len(), 2, "only the conv trains");
        let unfrozen = Net { fc: frozen_fc.fc.clone().unfreeze(), ..frozen_fc.clone() };
        let out = dp.step(&unfrozen, 6, shard_loss(&x, &targets, None)).unwrap();
        let (_, want) = full_batch(&unfrozen, &x, &targets, None);
        assert_close(&grad_values(&out.grads, &unfrozen), &want, 1e-5);
    }

    /// BatchNorm in training mode normalises each shard by its own statistics (documented, as
    /// DDP without SyncBatchNorm): the gradient is no longer the one-device gradient, and the
    /// running statistics are the mean of the shards' updates — for two equal shards the running
    /// mean is the one-device update.
    #[test]
    fn training_batchnorm_uses_per_shard_statistics() {
        let device = Device::flex().autodiff();
        let trained_bn = || {
            let mut m = Net::new(&device);
            m.bn = m.bn.unfreeze();
            m
        };
        let (x, targets) = batch(8, &device);
        let one = trained_bn();
        // The same weights with their own running state (tests share the device's generator,
        // so a second `trained_bn()` could draw other weights).
        let model = trained_bn().load_record(one.clone().into_record());
        let values = |m: &Net| param_values(m).into_iter().map(|(_, v)| v).collect::<Vec<_>>();
        assert_eq!(values(&model), values(&one));
        let (_, one_device) = full_batch(&one, &x, &targets, None);
        let one_mean = one.valid().bn.running_mean.value().into_data().try_to_vec::<f32>().unwrap();
        let before = model.bn.running_mean.value().into_data().try_to_vec::<f32>().unwrap();
        let mut dp = DataParallel::new(flex_devices(2)).unwrap();
        let out = dp.step(&model, 8, shard_loss(&x, &targets, None)).unwrap();
        let got = grad_values(&out.grads, &model);
        assert_eq!(got.len(), one_device.len(), "BN's gamma and beta train too");
        let differs = got.iter().zip(&one_device).any(|((_, g), (_, w))| {
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            g.iter().zip(w).any(|(a, b)| (a - b).abs() > 1e-3 * scale)
        });
        assert!(differs, "per-shard batch statistics should change the gradient");
        let dp_mean = model.valid().bn.running_mean.value().into_data().try_to_vec::<f32>().unwrap();
        assert_ne!(dp_mean, before, "the running mean moved");
        for (a, b) in dp_mean.iter().zip(&one_mean) {
            assert!((a - b).abs() < 1e-5, "{dp_mean:?} vs {one_mean:?}");
        }
    }

    #[test]
    fn split_groups_cuts_by_parameter_ids() {
        let device = Device::flex().autodiff();
        let model = Net::new(&device);
        let (x, targets) = batch(4, &device);
        let mut dp = DataParallel::new(flex_devices(2)).unwrap();
        let out = dp.step(&model, 4, shard_loss(&x, &targets, None)).unwrap();
        let head = [model.fc.weight.id];
        let body = [model.conv.weight.id, model.fc.weight.id];
        let groups = split_groups(out.grads, &model, &[&head, &body]);
        assert_eq!(groups.iter().map(GradientsParams::len).collect::<Vec<_>>(), vec![1, 1]);
        assert!(groups[0].get::<2>(model.fc.weight.id).is_some());
        assert!(groups[1].get::<4>(model.conv.weight.id).is_some());
    }

    #[test]
    fn shard_rows_are_contiguous_and_even() {
        assert_eq!(shard_rows(7, 2), vec![0..4, 4..7]);
        assert_eq!(shard_rows(7, 3), vec![0..3, 3..5, 5..7]);
        assert_eq!(shard_rows(2, 4), vec![0..1, 1..2]);
        assert_eq!(shard_rows(0, 2), Vec::<Range<usize>>::new());
        assert_eq!(shard_rows(5, 1), vec![0..5]);
        assert_eq!(loss_weight(&[0, 1, 1], None), 3.0);
        assert_eq!(loss_weight(&[0, 1, 1], Some(&[2.0, 0.5])), 3.0);
    }

    #[test]
    fn bad_settings_and_shard_errors_are_errors() {
        let err = DataParallel::<Net>::new(Vec::new()).err().unwrap();
        assert!(matches!(&err, GraftError::InvalidSetting { setting, .. } if setting == "device"), "{err:?}");
        let device = Device::flex().autodiff();
        let model = Net::new(&device);
        let mut dp = DataParallel::new(flex_devices(2)).unwrap();
        let err = dp.step(&model, 0, |_: &Net, _: &Shard| -> Result<ShardLoss<()>> { unreachable!() }).err().unwrap();
        assert!(err.to_string().contains("batch_size"), "{err}");
        // A shard's error comes back (the second shard's here), not a panic.
        let (x, targets) = batch(4, &device);
        let ok = shard_loss(&x, &targets, None);
        let err = dp
            .step(&model, 4, |m: &Net, s: &Shard| {
                if s.device_index == 1 {
                    return Err(GraftError::NonFinite { what: "training loss".into(), epoch: 1, lr: 0.1 });
                }
                ok(m, s)
            })
            .err()
            .unwrap();
        assert!(matches!(err, GraftError::NonFinite { .. }), "{err:?}");
    }
}
