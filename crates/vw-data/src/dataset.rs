//! The `ClipDataset` abstraction: any source of fixed-size video clips (with optional actions), plus
//! what every source shares — seeded shuffling, a train/val split, and a loader that batches clips
//! into `(B, C, T, H, W)` tensors in [-1, 1] on worker threads.
//!
//! A new source implements two methods, `len` and `get`; see docs/data.md for a one-file example.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What every clip must look like after decoding: frame count, size and sampling rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipSpec {
    /// Frames per clip (official: 93).
    pub num_frames: usize,
    /// Output height in pixels (official: 480).
    pub height: usize,
    /// Output width in pixels (official: 832).
    pub width: usize,
    /// Target frame rate the clip is sampled at (official: 16).
    pub fps: f32,
    /// Repeat the last frame when a source is too short, instead of failing with `ClipTooShort`.
    #[serde(default)]
    pub pad_short: bool,
}

impl ClipSpec {
    /// The official VideoWorld 2 / Cosmos-Predict2 training clip: 93 frames of 480×832 at 16 fps.
    pub fn official() -> Self {
        Self { num_frames: 93, height: 480, width: 832, fps: 16.0, pad_short: false }
    }

    /// A small spec for tests: 5 frames of 16×24 at 16 fps.
    pub fn tiny() -> Self {
        Self { num_frames: 5, height: 16, width: 24, fps: 16.0, pad_short: false }
    }

    /// Source frames spanned by one clip when the source runs at `source_fps`.
    pub fn source_span(&self, source_fps: f32) -> usize {
        if self.num_frames == 0 {
            return 0;
        }
        self.source_index(self.num_frames - 1, source_fps) + 1
    }

    /// Source frame shown at output frame `k`: the nearest frame at time `k / fps` (as ffmpeg's `fps` filter).
    pub fn source_index(&self, k: usize, source_fps: f32) -> usize {
        (k as f64 * source_fps as f64 / self.fps as f64 + 1e-9).round() as usize
    }

    /// Source indices for one clip starting at `start` in a source of `available` frames.
    pub fn sample_indices(&self, start: usize, available: usize, source_fps: f32, what: &str) -> Result<Vec<usize>> {
        if !(self.fps > 0.0 && source_fps > 0.0) {
            return Err(Error::Invalid(format!(
                "{what}: fps must be positive (target {}, source {source_fps})",
                self.fps
            )));
        }
        let needed = start + self.source_span(source_fps);
        if needed > available && (!self.pad_short || available <= start) {
            return Err(Error::ClipTooShort { what: what.to_string(), needed, available });
        }
        Ok((0..self.num_frames).map(|k| (start + self.source_index(k, source_fps)).min(available - 1)).collect())
    }
}

/// One decoded clip: RGB frames of the spec's size plus whatever per-frame signals the source has.
#[derive(Clone, Debug, PartialEq)]
pub struct Clip {
    /// Pixels, u8 RGB, laid out (T, H, W, 3).
    pub frames: Vec<u8>,
    /// T.
    pub num_frames: usize,
    /// H.
    pub height: usize,
    /// W.
    pub width: usize,
    /// Per-frame actions, (T, action_dim) row-major, when the source records them.
    pub actions: Option<Vec<f32>>,
    /// Width of one action row (0 without actions).
    pub action_dim: usize,
    /// Language instruction, when the source has one.
    pub language: Option<String>,
    /// Where the clip came from (file, episode, window) for logs and errors.
    pub id: String,
}

impl Clip {
    /// A clip without actions.
    pub fn new(frames: Vec<u8>, num_frames: usize, height: usize, width: usize, id: String) -> Result<Self> {
        if frames.len() != num_frames * height * width * 3 {
            return Err(Error::Mismatch {
                what: id,
                key: "frames".into(),
                expected: format!("{num_frames}x{height}x{width}x3 = {} bytes", num_frames * height * width * 3),
                found: format!("{} bytes", frames.len()),
            });
        }
        Ok(Self { frames, num_frames, height, width, actions: None, action_dim: 0, language: None, id })
    }

    /// Attaches (T, dim) actions.
    pub fn with_actions(mut self, actions: Vec<f32>, dim: usize) -> Result<Self> {
        if actions.len() != self.num_frames * dim {
            return Err(Error::Mismatch {
                what: self.id,
                key: "actions".into(),
                expected: format!("{} x {dim} values", self.num_frames),
                found: format!("{} values", actions.len()),
            });
        }
        self.actions = Some(actions);
        self.action_dim = dim;
        Ok(self)
    }

    /// Pixels as f32 in [-1, 1], laid out (C, T, H, W): the model's channel-first video layout.
    pub fn to_chw_f32(&self) -> Vec<f32> {
        let plane = self.num_frames * self.height * self.width;
        let mut out = vec![0f32; 3 * plane];
        for (p, px) in self.frames.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + p] = px[c] as f32 / 127.5 - 1.0;
            }
        }
        out
    }

    /// The clip as a (C, T, H, W) f32 tensor in [-1, 1].
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let t = Tensor::from_vec(self.to_chw_f32(), (3, self.num_frames, self.height, self.width), &Device::Cpu)?;
        Ok(t.to_device(device)?)
    }
}

/// A source of clips addressed by index. Implement `len` and `get`; everything else is shared.
pub trait ClipDataset: Send + Sync {
    /// Number of clips.
    fn len(&self) -> usize;

    /// Decodes clip `index` (`< len()`) at the dataset's configured [`ClipSpec`].
    fn get(&self, index: usize) -> Result<Clip>;

    /// Whether there are no clips.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<D: ClipDataset + ?Sized> ClipDataset for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, index: usize) -> Result<Clip> {
        (**self).get(index)
    }
}

/// Streams every clip of a dataset in index order.
pub fn clips(dataset: &dyn ClipDataset) -> impl Iterator<Item = Result<Clip>> + '_ {
    (0..dataset.len()).map(move |i| dataset.get(i))
}

/// A seeded permutation of `0..n` (ChaCha8, so it is the same on every platform and rand version).
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    idx
}

/// A view of some clips of another dataset, in the given order.
pub struct Subset {
    inner: Arc<dyn ClipDataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// A subset of `inner`; indices must be `< inner.len()`.
    pub fn new(inner: Arc<dyn ClipDataset>, indices: Vec<usize>) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::Invalid(format!("subset index {bad} out of range for {} clips", inner.len())));
        }
        Ok(Self { inner, indices })
    }

    /// The parent indices of this subset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl ClipDataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, index: usize) -> Result<Clip> {
        let i = *self.indices.get(index).ok_or_else(|| Error::Invalid(format!("clip {index} out of range")))?;
        self.inner.get(i)
    }
}

/// Splits a dataset into (train, val) by a seeded shuffle; `val_fraction` of the clips (rounded, at least
/// one when the fraction is positive and there are two or more clips) go to val. Both keep index order.
pub fn train_val_split(dataset: Arc<dyn ClipDataset>, val_fraction: f64, seed: u64) -> Result<(Subset, Subset)> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::Invalid(format!("val_fraction {val_fraction} must be in [0, 1)")));
    }
    let n = dataset.len();
    let mut n_val = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    }
    let perm = shuffled_indices(n, seed);
    let mut val: Vec<usize> = perm[..n_val].to_vec();
    let mut train: Vec<usize> = perm[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Ok((Subset::new(dataset.clone(), train)?, Subset::new(dataset, val)?))
}

/// How a [`Loader`] walks a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Clips per batch.
    pub batch_size: usize,
    /// Shuffle each epoch (seeded by `seed` and the epoch number).
    pub shuffle: bool,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Worker threads that decode clips.
    pub num_workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Show an indicatif progress bar over the epoch's batches.
    pub progress: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self { batch_size: 1, shuffle: true, seed: 0, num_workers: 2, prefetch: 2, drop_last: false, progress: false }
    }
}

/// A batch of clips on the loader's device.
#[derive(Debug)]
pub struct Batch {
    /// (B, C, T, H, W) f32 in [-1, 1].
    pub video: Tensor,
    /// (B, T, A) f32, when every clip of the batch has actions of one width.
    pub actions: Option<Tensor>,
    /// Language instruction per clip.
    pub language: Vec<Option<String>>,
    /// Clip ids, for logs.
    pub ids: Vec<String>,
    /// Dataset indices of the clips.
    pub indices: Vec<usize>,
}

/// A batch assembled on a worker, still on the host.
struct HostBatch {
    video: Tensor,
    actions: Option<Tensor>,
    language: Vec<Option<String>>,
    ids: Vec<String>,
    indices: Vec<usize>,
}

fn assemble(dataset: &dyn ClipDataset, indices: &[usize]) -> Result<HostBatch> {
    let clips = indices.iter().map(|&i| dataset.get(i)).collect::<Result<Vec<_>>>()?;
    let first = clips.first().ok_or_else(|| Error::Invalid("empty batch".into()))?;
    let (t, h, w) = (first.num_frames, first.height, first.width);
    let mut video = Vec::with_capacity(clips.len() * 3 * t * h * w);
    for c in &clips {
        if (c.num_frames, c.height, c.width) != (t, h, w) {
            return Err(Error::Mismatch {
                what: c.id.clone(),
                key: "frames".into(),
                expected: format!("{t}x{h}x{w} like {}", first.id),
                found: format!("{}x{}x{}", c.num_frames, c.height, c.width),
            });
        }
        video.extend(c.to_chw_f32());
    }
    let video = Tensor::from_vec(video, (clips.len(), 3, t, h, w), &Device::Cpu)?;
    let dim = first.action_dim;
    let actions = if dim > 0 && clips.iter().all(|c| c.actions.is_some() && c.action_dim == dim) {
        let a: Vec<f32> = clips.iter().flat_map(|c| c.actions.iter().flatten().copied()).collect();
        Some(Tensor::from_vec(a, (clips.len(), t, dim), &Device::Cpu)?)
    } else {
        None
    };
    Ok(HostBatch {
        video,
        actions,
        language: clips.iter().map(|c| c.language.clone()).collect(),
        ids: clips.into_iter().map(|c| c.id).collect(),
        indices: indices.to_vec(),
    })
}

/// Batches a dataset on worker threads, in an order that depends only on the seed and epoch.
pub struct Loader {
    dataset: Arc<dyn ClipDataset>,
    cfg: LoaderConfig,
    device: Device,
}

impl Loader {
    /// A loader that puts batches on `device`.
    pub fn new(dataset: Arc<dyn ClipDataset>, cfg: LoaderConfig, device: Device) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::Invalid("batch_size must be at least 1".into()));
        }
        Ok(Self { dataset, cfg, device })
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// The clip order of an epoch (before batching).
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.cfg.shuffle {
            // Mix the epoch into the seed so epochs differ but each is reproducible on its own.
            shuffled_indices(self.dataset.len(), self.cfg.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        } else {
            (0..self.dataset.len()).collect()
        }
    }

    /// Starts an epoch: workers begin decoding at once; iterate to receive batches in order.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let order = self.epoch_order(epoch);
        let batches: Vec<Vec<usize>> =
            order.chunks(self.cfg.batch_size).take(self.num_batches()).map(|c| c.to_vec()).collect();
        let batches = Arc::new(batches);
        let workers = self.cfg.num_workers.max(1).min(batches.len().max(1));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        // One bounded channel per worker, worker w owning batches w, w+N, ...: the consumer reads them
        // round-robin, so the order is fixed, memory is bounded, and no reorder buffer is needed.
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Result<HostBatch>>(self.cfg.prefetch.max(1));
            let ds = self.dataset.clone();
            let batches = batches.clone();
            let handle = std::thread::Builder::new().name(format!("vw-data-loader-{w}")).spawn(move || {
                for b in (w..batches.len()).step_by(workers) {
                    if tx.send(assemble(ds.as_ref(), &batches[b])).is_err() {
                        return; // the consumer went away
                    }
                }
            });
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Could not spawn: report on this worker's channel instead of panicking.
                    let (tx2, rx2) = sync_channel(1);
                    let _ = tx2.send(Err(Error::Invalid(format!("spawning loader worker: {e}"))));
                    receivers.push(rx2);
                    continue;
                }
            }
            receivers.push(rx);
        }
        let progress = crate::progress::bar(batches.len() as u64, self.cfg.progress);
        progress.set_style(
            indicatif::ProgressStyle::with_template("epoch {msg} {bar:30} {pos}/{len} batches {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        progress.set_message(epoch.to_string());
        Epoch { receivers, handles, next: 0, total: batches.len(), device: self.device.clone(), progress }
    }
}

/// The batches of one epoch, in order; dropping it stops the workers.
pub struct Epoch {
    receivers: Vec<Receiver<Result<HostBatch>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
    device: Device,
    progress: indicatif::ProgressBar,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total || self.receivers.is_empty() {
            self.progress.finish_and_clear();
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        let host = match rx.recv() {
            Ok(r) => r,
            Err(_) => Err(Error::Invalid("a loader worker stopped early (panicked?)".into())),
        };
        self.progress.inc(1);
        let device = self.device.clone();
        Some(host.and_then(|h| {
            Ok(Batch {
                video: h.video.to_device(&device)?,
                actions: h.actions.map(|a| a.to_device(&device)).transpose()?,
                language: h.language,
                ids: h.ids,
                indices: h.indices,
            })
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.next;
        (left, Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // Closing the channels makes every blocked worker's send fail, so the joins below return.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Clip i is a constant-colour video of value i, with actions equal to i.
    struct Counting {
        n: usize,
        spec: ClipSpec,
        fail_at: Option<usize>,
        loads: AtomicUsize,
    }

    impl ClipDataset for Counting {
        fn len(&self) -> usize {
            self.n
        }
        fn get(&self, index: usize) -> Result<Clip> {
            self.loads.fetch_add(1, Ordering::Relaxed);
            if Some(index) == self.fail_at {
                return Err(Error::malformed(format!("clip {index}"), "broken on purpose"));
            }
            let s = &self.spec;
            let frames = vec![index as u8; s.num_frames * s.height * s.width * 3];
            Clip::new(frames, s.num_frames, s.height, s.width, format!("clip{index}"))?
                .with_actions(vec![index as f32; s.num_frames * 2], 2)
        }
    }

    fn counting(n: usize) -> Arc<Counting> {
        Arc::new(Counting { n, spec: ClipSpec::tiny(), fail_at: None, loads: AtomicUsize::new(0) })
    }

    #[test]
    fn sampling_matches_the_ffmpeg_fps_rule() {
        let spec = ClipSpec { num_frames: 5, ..ClipSpec::tiny() };
        // 30 fps -> 16 fps: nearest frames at k * 1.875.
        assert_eq!(spec.sample_indices(0, 100, 30.0, "x").unwrap(), vec![0, 2, 4, 6, 8]);
        assert_eq!(spec.sample_indices(10, 100, 16.0, "x").unwrap(), vec![10, 11, 12, 13, 14]);
        assert_eq!(ClipSpec::official().source_span(24.0), 139);
        let err = spec.sample_indices(0, 8, 30.0, "x").unwrap_err();
        assert!(matches!(err, Error::ClipTooShort { needed: 9, available: 8, .. }), "{err}");
        let padded = ClipSpec { pad_short: true, ..spec };
        assert_eq!(padded.sample_indices(0, 5, 30.0, "x").unwrap(), vec![0, 2, 4, 4, 4]);
    }

    #[test]
    fn tensor_layout_and_range() {
        let mut frames = vec![0u8; 2 * 2 * 3];
        frames[3..6].copy_from_slice(&[255, 0, 51]); // t=0, x=1
        let clip = Clip::new(frames, 2, 1, 2, "c".into()).unwrap();
        let t = clip.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 2, 1, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Channel planes of 4 values (T*H*W); pixel (t=0, x=1) is index 1 in each plane.
        assert_eq!((v[1], v[5], v[9]), (1.0, -1.0, 51.0 / 127.5 - 1.0));
        assert_eq!(v[0], -1.0);
        assert!(Clip::new(vec![0; 5], 1, 1, 2, "c".into()).is_err());
    }

    #[test]
    fn split_is_seeded_disjoint_and_covering() {
        let ds: Arc<dyn ClipDataset> = counting(20);
        let (train, val) = train_val_split(ds.clone(), 0.2, 7).unwrap();
        assert_eq!((train.len(), val.len()), (16, 4));
        let mut all: Vec<usize> = train.indices().iter().chain(val.indices()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        let (_, val2) = train_val_split(ds.clone(), 0.2, 7).unwrap();
        assert_eq!(val.indices(), val2.indices());
        let (_, val3) = train_val_split(ds, 0.2, 8).unwrap();
        assert_ne!(val.indices(), val3.indices());
    }

    #[test]
    fn loader_batches_in_seeded_order_on_threads() {
        let ds = counting(10);
        let cfg = LoaderConfig { batch_size: 4, seed: 3, num_workers: 3, ..Default::default() };
        let loader = Loader::new(ds.clone(), cfg.clone(), Device::Cpu).unwrap();
        assert_eq!(loader.num_batches(), 3);
        let batches: Vec<Batch> = loader.epoch(0).collect::<Result<_>>().unwrap();
        let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(order, loader.epoch_order(0));
        assert_ne!(order, (0..10).collect::<Vec<_>>());
        assert_ne!(loader.epoch_order(0), loader.epoch_order(1));
        assert_eq!(batches[0].video.dims(), &[4, 3, 5, 16, 24]);
        assert_eq!(batches[2].video.dims(), &[2, 3, 5, 16, 24]);
        // Clip i has pixel value i -> i / 127.5 - 1 everywhere; actions equal i.
        let first = order[0] as f32;
        let v = batches[0].video.get(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| (x - (first / 127.5 - 1.0)).abs() < 1e-6));
        let a = batches[0].actions.as_ref().unwrap();
        assert_eq!(a.dims(), &[4, 5, 2]);
        assert_eq!(a.get(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![first; 10]);
        // Same seed, one worker: identical order.
        let one = Loader::new(ds, LoaderConfig { num_workers: 1, ..cfg }, Device::Cpu).unwrap();
        let order1: Vec<usize> = one.epoch(0).flat_map(|b| b.unwrap().indices).collect();
        assert_eq!(order, order1);
    }

    #[test]
    fn loader_reports_errors_and_stops_cleanly() {
        let ds = Arc::new(Counting { n: 40, spec: ClipSpec::tiny(), fail_at: Some(1), loads: AtomicUsize::new(0) });
        let cfg = LoaderConfig { batch_size: 2, shuffle: false, num_workers: 2, prefetch: 1, ..Default::default() };
        let loader = Loader::new(ds.clone(), cfg, Device::Cpu).unwrap();
        let mut epoch = loader.epoch(0);
        let err = epoch.next().unwrap().unwrap_err().to_string();
        assert!(err.contains("broken on purpose"), "{err}");
        assert!(epoch.next().unwrap().is_ok());
        drop(epoch);
        // Bounded prefetch: the workers stopped long before decoding all 40 clips.
        assert!(ds.loads.load(Ordering::Relaxed) < 20, "{}", ds.loads.load(Ordering::Relaxed));
    }
}
