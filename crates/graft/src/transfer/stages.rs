//! Globally-average-pooled activations at every stage boundary of a trunk (any architecture),
//! computed in one pass per image and kept in the feature store (one namespace per stage), so a
//! second probe or advice on the same images runs no trunk at all.

use burn::tensor::Device;

use crate::cache::store::{content_hash, FeatureStore, Key, Namespace};
use crate::cache::StoreDtype;
use crate::data::folder::{decode_with, Sample, Skipped};
use crate::data::image;
use crate::report::Reporter;
use crate::train::model::HeadPool;
use crate::zoo::efficientnet::global_avg_pool;
use crate::zoo::backbone::pooled_cut;
use crate::zoo::{Pretrained, TrunkConfig};
use crate::{GraftError, Result};

/// The feature-store cut of a stage's pooled output: `gap:` and the stage's name (the layer of
/// the architecture that produces it). The last stage's is `pooled:avg`, the same namespace
/// `graft fit` fills for a frozen trunk, so the two share their work.
fn cut_of(stage: usize, config: &TrunkConfig) -> String {
    if stage + 1 == config.num_stages() {
        pooled_cut(HeadPool::Avg)
    } else {
        format!("gap:{}", config.stage_name(stage))
    }
}

/// Pooled activations of some samples at some stages.
#[derive(Debug, Clone)]
pub struct StageFeatures {
    /// Indices (into the samples given) of the images that could be read, in order.
    pub kept: Vec<usize>,
    /// Per requested stage: its width and `kept.len() × width` values, row-major.
    pub stages: Vec<(usize, Vec<f32>)>,
    pub skipped: Vec<Skipped>,
    /// Images that went through the trunk (the rest came from the store).
    pub computed: usize,
}

/// Pooled activations of `samples` after each stage in `stages` (0 = stem … the last stage).
/// One forward per missing image runs up to the deepest stage asked for.
pub fn stage_features(
    model: &Pretrained,
    samples: &[Sample],
    stages: &[usize],
    home: &std::path::Path,
    batch: usize,
    device: &Device,
    reporter: &dyn Reporter,
) -> Result<StageFeatures> {
    let count = model.config.num_stages();
    if let Some(bad) = stages.iter().find(|s| **s >= count) {
        return Err(GraftError::setting("stage", &bad.to_string(), format!("{} has stages 0 … {}", model.spec.id, count - 1)));
    }
    let net = model.net.for_inference(); // frozen: BatchNorm folded (Lite), batches split across threads
    let preprocess = model.preprocess();
    let mut stores = stages
        .iter()
        .map(|&s| {
            let namespace = Namespace {
                model: model.spec.id.into(),
                weights_sha256: model.weights_sha256.clone(),
                cut: cut_of(s, &model.config),
                preprocess: serde_json::to_string(&preprocess).expect("preprocess serializes"),
                augment: "none".into(),
                dtype: StoreDtype::F32,
            };
            let store = FeatureStore::open(&home.join("cache").join("features"), namespace)?;
            for (path, reason) in &store.repaired {
                reporter.message(&format!("feature cache: {} was damaged ({reason}); rebuilding its entries", path.display()));
            }
            Ok(store)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut skipped = Vec::new();
    let mut keys: Vec<Option<Key>> = Vec::with_capacity(samples.len());
    for s in samples {
        match content_hash(&s.path) {
            Ok(h) => keys.push(Some((h, 0))),
            Err(e) => {
                skipped.push(Skipped { path: s.path.clone(), reason: e.to_string() });
                keys.push(None);
            }
        }
    }
    let missing: Vec<usize> = (0..samples.len()).filter(|&i| keys[i].as_ref().is_some_and(|k| stores.iter().any(|st| !st.contains(k)))).collect();
    let deepest = stages.iter().copied().max().unwrap_or(0);
    let mut computed = 0;
    let mut unreadable = vec![false; samples.len()];
    if !missing.is_empty() {
        reporter.start(&format!("pooling {} stages of {}", stages.len(), model.spec.id), Some(missing.len() as u64));
        for (done, chunk) in missing.chunks(batch.max(1)).enumerate() {
            let batch_samples: Vec<Sample> = chunk.iter().map(|&i| samples[i].clone()).collect();
            let (pixels, bad) = decode_with(&batch_samples, &|_| {}, |img| preprocess.apply(&img));
            skipped.extend(bad);
            let good: Vec<usize> = chunk.iter().zip(&pixels).filter(|(_, p)| p.is_some()).map(|(i, _)| *i).collect();
            for (i, p) in chunk.iter().zip(&pixels) {
                unreadable[*i] = p.is_none();
            }
            let rows: Vec<Vec<f32>> = pixels.into_iter().flatten().collect();
            if !rows.is_empty() {
                let mut x = image::batch(&rows, preprocess.size, device); // [n, 3, S, S]
                for stage in 0..=deepest {
                    x = net.forward_stages(x, stage..stage + 1); // [n, C_stage, h, w]
                    let Some(k) = stages.iter().position(|&s| s == stage) else { continue };
                    let pooled = global_avg_pool(x.clone()); // [n, C_stage]
                    let [n, c] = pooled.dims();
                    let values = pooled.into_data().try_to_vec::<f32>().map_err(|e| GraftError::Data { path: stores[k].dir.clone(), reason: format!("{e:?}") })?;
                    for (row, &i) in values.chunks(c).zip(&good).take(n) {
                        let key = keys[i].expect("hashed");
                        if !stores[k].contains(&key) {
                            stores[k].put(key, row.to_vec())?;
                        }
                    }
                }
                computed += good.len();
            }
            reporter.progress(((done + 1) * batch).min(missing.len()) as u64);
        }
        reporter.finish();
        for store in stores.iter_mut() {
            store.flush()?;
        }
    }
    let kept: Vec<usize> = (0..samples.len()).filter(|&i| keys[i].is_some() && !unreadable[i]).collect();
    let mut out = Vec::with_capacity(stages.len());
    for store in &stores {
        let mut values = Vec::new();
        let mut width = 0;
        for &i in &kept {
            let row = store.get(&keys[i].expect("hashed")).ok_or_else(|| GraftError::Data { path: store.dir.clone(), reason: format!("no stored features for {}", samples[i].path.display()) })?;
            width = row.len();
            values.extend(row);
        }
        out.push((width, values));
    }
    Ok(StageFeatures { kept, stages: out, skipped, computed })
}
