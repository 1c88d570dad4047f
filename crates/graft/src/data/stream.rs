//! Streaming: datasets as an index in memory (path, label, content hash), images decoded batch
//! by batch on worker threads that run a bounded distance ahead of compute.
//!
//! * [`index_images`] reads every file once (in parallel, one image at a time per thread):
//!   its sha256 (the feature-store key) and a full decode, so unreadable files are skipped and
//!   counted before training starts, as when everything was decoded up front, but nothing is kept.
//! * [`Prefetch`] runs a job per batch on its own threads and hands the results back in order;
//!   at most `ahead` results exist at once (made, queued or waiting), so memory stays flat however
//!   large the dataset is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use burn::tensor::{Device, Tensor, TensorData};

use super::augment::{sample_rng, Augment};
use super::folder::{reason_of, Sample, Skipped};
use super::image::{decode, decode_bytes, limits, Preprocess};
use crate::Result;

/// The content hash of every sample's file, `None` where the file cannot be read or decoded
/// (each of those is listed in the returned [`Skipped`], in sample order). `progress` is
/// called from worker threads with the number of samples finished so far.
pub fn index_images(samples: &[Sample], progress: &(dyn Fn(usize) + Sync)) -> (Vec<Option<[u8; 32]>>, Vec<Skipped>) {
    let done = AtomicUsize::new(0);
    let results: Vec<std::result::Result<[u8; 32], String>> = samples
        .par_iter()
        .map(|s| {
            let r = check_one(&s.path);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            r
        })
        .collect();
    let mut skipped = Vec::new();
    let hashes = results
        .into_iter()
        .zip(samples)
        .map(|(r, s)| match r {
            Ok(h) => Some(h),
            Err(reason) => {
                skipped.push(Skipped { path: s.path.clone(), reason });
                None
            }
        })
        .collect();
    (hashes, skipped)
}

/// Reads one file, hashes it and decodes it (the image is dropped): decoder panics on hostile
/// input become a reason, like any other failure.
fn check_one(path: &Path) -> std::result::Result<[u8; 32], String> {
    let bytes = crate::fsutil::read_regular(path, crate::limits::MAX_IMAGE_FILE_BYTES).map_err(reason_of)?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_bytes(path, &bytes, &limits()))) {
        Ok(Ok(_)) => Ok(hash),
        Ok(Err(e)) => Err(reason_of(e)),
        Err(_) => Err("the image decoder failed on this file".into()),
    }
}

struct Window {
    /// The next job a worker may take.
    next_job: usize,
    /// Results handed to the consumer so far.
    consumed: usize,
    stop: bool,
}

/// Jobs `0..jobs` run on worker threads, results returned in job order by [`Prefetch::next`].
/// A worker starts job `j` only once `j < consumed + ahead`: at most `ahead` results are alive
/// (being made, queued, or waiting for an earlier one). Dropping it stops the workers.
pub struct Prefetch<T: Send + 'static> {
    rx: Option<Receiver<(usize, T)>>,
    waiting: BTreeMap<usize, T>,
    next: usize,
    jobs: usize,
    window: Arc<(Mutex<Window>, Condvar)>,
    workers: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts `workers` threads (at least one) running `make(job)` for every job.
    pub fn new<F>(jobs: usize, workers: usize, ahead: usize, make: F) -> Self
    where
        F: Fn(usize) -> T + Send + Sync + 'static,
    {
        let ahead = ahead.max(1);
        let (tx, rx) = channel();
        let window = Arc::new((Mutex::new(Window { next_job: 0, consumed: 0, stop: false }), Condvar::new()));
        let make = Arc::new(make);
        let workers = (0..workers.clamp(1, jobs.max(1)))
            .map(|_| {
                let (tx, window, make) = (tx.clone(), window.clone(), make.clone());
                std::thread::spawn(move || loop {
                    let job = {
                        let (lock, cv) = &*window;
                        let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
                        while !w.stop && w.next_job < jobs && w.next_job >= w.consumed + ahead {
                            w = cv.wait(w).unwrap_or_else(|p| p.into_inner());
                        }
                        if w.stop || w.next_job >= jobs {
                            return;
                        }
                        w.next_job += 1;
                        w.next_job - 1
                    };
                    if tx.send((job, make(job))).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Prefetch { rx: Some(rx), waiting: BTreeMap::new(), next: 0, jobs, window, workers }
    }

    /// The next job's result; `None` after the last job, or if a worker died (a bug: it panicked).
    pub fn next(&mut self) -> Option<T> {
        if self.next >= self.jobs {
            return None;
        }
        let rx = self.rx.as_ref()?;
        let out = loop {
            if let Some(t) = self.waiting.remove(&self.next) {
                break t;
            }
            match rx.recv() {
                Ok((job, t)) => {
                    self.waiting.insert(job, t);
                }
                Err(_) => return None,
            }
        };
        self.next += 1;
        let (lock, cv) = &*self.window;
        lock.lock().unwrap_or_else(|p| p.into_inner()).consumed = self.next;
        cv.notify_all();
        Some(out)
    }

    /// The job [`next`](Self::next) returns next.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl<T: Send + 'static> Drop for Prefetch<T> {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.window;
            lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            cv.notify_all();
        }
        // Workers blocked on sending see the receiver gone and stop.
        self.rx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// One item of a batch: the image's index, and for an augmented view the three seeds of its
/// generator ([`sample_rng`]); `None` for the plain image.
pub type Item = (usize, Option<(u64, u64, u64)>);

/// Images of a split by path, turned into normalised CHW pixels one batch at a time: decoded,
/// cropped and resized to the model's input, augmented when asked, normalised.
#[derive(Clone)]
pub struct ImageSource {
    pub paths: Arc<Vec<PathBuf>>,
    pub preprocess: Preprocess,
    pub augment: Augment,
}

impl ImageSource {
    /// The pixels of one item (3 × size × size values). A file that changed since it was
    /// indexed and no longer decodes is an error naming it.
    pub fn pixels(&self, (image, view): Item) -> Result<Vec<f32>> {
        let img = self.preprocess.crop_resize(&decode(&self.paths[image])?);
        Ok(match view {
            None => self.preprocess.normalize(&img),
            Some((a, b, c)) => self.preprocess.normalize(&self.augment.apply(&img, &mut sample_rng(a, b, c))),
        })
    }

    /// The pixels of a batch, concatenated in item order.
    pub fn batch_pixels(&self, items: &[Item]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(items.len() * 3 * (self.preprocess.size as usize).pow(2));
        for &item in items {
            out.extend(self.pixels(item)?);
        }
        Ok(out)
    }

    /// The batches `jobs`, prepared on [`decode_workers`] threads, [`AHEAD`] batches ahead.
    pub fn stream(&self, jobs: Vec<Vec<Item>>) -> Prefetch<Result<Vec<f32>>> {
        let source = self.clone();
        let jobs = Arc::new(jobs);
        Prefetch::new(jobs.len(), decode_workers(), AHEAD, move |j| source.batch_pixels(&jobs[j]))
    }
}

/// Normalised CHW pixels of `n` images (a batch of [`ImageSource::stream`]) as a
/// `[n, 3, size, size]` tensor.
pub fn pixels_tensor(pixels: Vec<f32>, size: u32, device: &Device) -> Tensor<4> {
    let s = size as usize;
    let n = pixels.len() / (3 * s * s);
    Tensor::from_data(TensorData::new(pixels, [n, 3, s, s]), device)
}

/// Batches prepared ahead of the one being computed.
pub const AHEAD: usize = 3;

/// Worker threads for decoding: one per core, at most 4 (decoding is far cheaper than the
/// network it feeds, and the window keeps them from running away).
pub fn decode_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn results_come_back_in_order_whatever_finishes_first() {
        let mut p = Prefetch::new(50, 4, 8, |j| {
            // Later jobs finish sooner.
            std::thread::sleep(Duration::from_micros(((50 - j) * 37 % 500) as u64));
            j * 10
        });
        let got: Vec<usize> = std::iter::from_fn(|| p.next()).collect();
        assert_eq!(got, (0..50).map(|j| j * 10).collect::<Vec<_>>());
        assert_eq!(p.next(), None);
    }

    #[test]
    fn never_more_than_ahead_results_are_alive() {
        // A result is alive from the moment its job starts until the consumer drops it.
        let alive = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let (a, pk) = (alive.clone(), peak.clone());
        let mut p = Prefetch::new(200, 3, 5, move |j| {
            let now = a.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(now, Ordering::SeqCst);
            (j, Guard(a.clone()))
        });
        let mut seen = 0;
        while let Some((j, guard)) = p.next() {
            assert_eq!(j, seen);
            seen += 1;
            // A slow consumer: the workers must wait for it, not pile results up.
            std::thread::sleep(Duration::from_micros(200));
            drop(guard);
        }
        assert_eq!(seen, 200);
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 5 + 1, "{peak} results alive at once with ahead = 5");
        assert!(peak >= 2, "the workers never ran ahead ({peak})");
    }

    #[test]
    fn dropping_it_early_stops_the_workers() {
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let mut p = Prefetch::new(1_000_000, 2, 4, move |j| {
            s.fetch_add(1, Ordering::SeqCst);
            j
        });
        assert_eq!(p.next(), Some(0));
        drop(p);
        let n = started.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(started.load(Ordering::SeqCst), n, "workers went on after the drop");
        assert!(n <= 6, "{n} jobs started");
    }

    #[test]
    fn unreadable_files_are_skipped_and_named() {
        let dir = std::env::temp_dir().join(format!("graft-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("a.png");
        image::RgbImage::from_pixel(4, 3, image::Rgb([10, 20, 30])).save(&good).unwrap();
        let bad = dir.join("b.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let samples = vec![Sample { path: good.clone(), label: 0 }, Sample { path: bad.clone(), label: 1 }];
        let (hashes, skipped) = index_images(&samples, &|_| {});
        let expected: [u8; 32] = Sha256::digest(std::fs::read(&good).unwrap()).into();
        assert_eq!(hashes, vec![Some(expected), None]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, bad);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
