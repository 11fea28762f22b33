//! The no-codes baseline of the demo: a next-clip predictor that sees only the current frame.
//! It has the job the dLDM's renderer has — produce the next clip — but without latent codes, so
//! nothing tells it *which* of the possible futures to draw: trained by L1 on the same training
//! videos, it learns their conditional mean, and rolled out clip by clip it shows what a pixel
//! predictor without a policy over dynamics does on a long task.

use crate::report::write_atomic;
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use vw_tensor_kernels::conv2d::{conv2d, depth_to_space, Conv2d};

/// Shape of the frame predictor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FramePredictorConfig {
    /// Channels of the first layer (the middle has twice as many).
    pub hidden: usize,
    /// Frames predicted per call (match the dLDM's frames per code step for a fair comparison).
    pub frames_out: usize,
}

impl FramePredictorConfig {
    /// The size the demo uses.
    pub fn tiny() -> Self {
        Self { hidden: 24, frames_out: 4 }
    }
}

/// A small conv encoder-decoder: frame `(B, 3, H, W)` -> the next `frames_out` frames.
/// Checkpoint keys: `enc1`, `enc2`, `mid`, `dec`, `out` (each `.weight` / `.bias`).
///
/// Downsampling layers are 2x2 stride-2 patch convs and upsampling layers 1x1 convs + pixel shuffle;
/// only `mid` (at quarter resolution) is a 3x3 conv. A full-resolution 3x3 version trained at
/// 2.5 s per step of 16 frames on 2 CPU cores (candle's CPU conv backward); this one is fast
/// enough for the demo's 20-minute budget.
#[derive(Debug, Clone)]
pub struct FramePredictor {
    cfg: FramePredictorConfig,
    enc1: Conv2d,
    enc2: Conv2d,
    mid: Conv2d,
    dec: Conv2d,
    out: Conv2d,
}

/// The files [`FramePredictor::save`] writes into its folder.
const WEIGHTS_FILE: &str = "model.safetensors";
const CONFIG_FILE: &str = "config.json";

impl FramePredictor {
    /// Builds the network; `vb` is the checkpoint root.
    pub fn new(cfg: &FramePredictorConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden;
        let patch = Conv2dConfig { stride: 2, ..Default::default() };
        let p1 = Conv2dConfig { padding: 1, ..Default::default() };
        let pix = Conv2dConfig::default();
        Ok(Self {
            cfg: cfg.clone(),
            enc1: conv2d(3, h, 2, patch, vb.pp("enc1"))?,
            enc2: conv2d(h, 2 * h, 2, patch, vb.pp("enc2"))?,
            mid: conv2d(2 * h, 2 * h, 3, p1, vb.pp("mid"))?,
            dec: conv2d(2 * h, 4 * h, 1, pix, vb.pp("dec"))?,
            out: conv2d(2 * h, 4 * 3 * cfg.frames_out, 1, pix, vb.pp("out"))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FramePredictorConfig {
        &self.cfg
    }

    /// x: `(B, 3, H, W)` in `[-1, 1]` (H, W divisible by 4) -> `(B, 3, F, H, W)` in `[-1, 1]`: the input plus a
    /// predicted change, so an untrained network starts from "nothing moves".
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        if h % 4 != 0 || w % 4 != 0 {
            return Err(Error::Invalid(format!("frame predictor: {h}x{w} frames must be divisible by 4")));
        }
        let e1 = self.enc1.forward(x)?.gelu()?; // H/2
        let e2 = self.enc2.forward(&e1)?.gelu()?; // H/4
        let m = (self.mid.forward(&e2)?.gelu()? + &e2)?;
        let d = depth_to_space(&self.dec.forward(&m)?, 2)?.gelu()?; // H/2
        let delta = depth_to_space(&self.out.forward(&Tensor::cat(&[d, e1], 1)?)?, 2)?; // H
        let f = self.cfg.frames_out;
        let delta = delta.reshape((b, f, 3, h, w))?.permute((0, 2, 1, 3, 4))?;
        Ok(delta.broadcast_add(&x.unsqueeze(2)?)?.clamp(-1f32, 1f32)?)
    }

    /// Rolls out from `first` `(3, H, W)`: each call continues from the last predicted frame, until
    /// `frames` frames exist. Returns `(3, frames, H, W)`.
    pub fn rollout(&self, first: &Tensor, frames: usize) -> Result<Tensor> {
        let mut out = Vec::new();
        let mut cur = first.unsqueeze(0)?;
        let mut have = 0;
        while have < frames {
            let clip = self.forward(&cur)?; // (1, 3, F, H, W)
            let f = clip.dim(2)?;
            cur = clip.narrow(2, f - 1, 1)?.squeeze(2)?;
            out.push(clip.squeeze(0)?);
            have += f;
        }
        Ok(Tensor::cat(&out, 1)?.narrow(1, 0, frames)?)
    }

    /// Writes weights (`model.safetensors`) and config (`config.json`) into `dir`, atomically.
    pub fn save(varmap: &VarMap, cfg: &FramePredictorConfig, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let w = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(".model.safetensors.tmp");
        varmap.save(&tmp)?;
        std::fs::rename(&tmp, &w).map_err(|e| Error::io(&w, e))?;
        let json = serde_json::to_string_pretty(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
        write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
    }

    /// Whether `dir` holds both files [`FramePredictor::save`] writes.
    pub fn is_saved(dir: &Path) -> bool {
        dir.join(WEIGHTS_FILE).exists() && dir.join(CONFIG_FILE).exists()
    }

    /// Loads what [`FramePredictor::save`] wrote.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cp = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cp).map_err(|e| Error::io(&cp, e))?;
        let cfg: FramePredictorConfig =
            serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", cp.display())))?;
        let w = dir.join(WEIGHTS_FILE);
        // SAFETY: the file is mapped read-only while the weights are copied out.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&w], DType::F32, device)? };
        Self::new(&cfg, vb).map_err(|e| Error::Invalid(format!("loading {}: {e}", w.display())))
    }
}

/// Training pairs: every frame of every training video with the `frames_out` frames after it.
pub struct ClipPairs {
    videos: Vec<Tensor>, // (3, T, H, W) each
    index: Vec<(usize, usize)>,
    frames_out: usize,
}

impl ClipPairs {
    /// Indexes all (video, start) pairs with a full target clip.
    pub fn new(videos: Vec<Tensor>, frames_out: usize) -> Result<Self> {
        let mut index = Vec::new();
        for (i, v) in videos.iter().enumerate() {
            let t = v.dim(1)?;
            for s in 0..t.saturating_sub(frames_out) {
                index.push((i, s));
            }
        }
        if index.is_empty() {
            return Err(Error::Invalid(format!("no training clip has more than {frames_out} frames")));
        }
        Ok(Self { videos, index, frames_out })
    }

    /// A random batch: inputs `(B, 3, H, W)` and targets `(B, 3, F, H, W)`.
    pub fn batch(&self, rng: &mut impl Rng, size: usize) -> Result<(Tensor, Tensor)> {
        let mut xs = Vec::with_capacity(size);
        let mut ys = Vec::with_capacity(size);
        for _ in 0..size {
            let (v, s) = self.index[rng.random_range(0..self.index.len())];
            let vid = &self.videos[v];
            xs.push(vid.narrow(1, s, 1)?.squeeze(1)?);
            ys.push(vid.narrow(1, s + 1, self.frames_out)?);
        }
        Ok((Tensor::stack(&xs, 0)?, Tensor::stack(&ys, 0)?))
    }
}

/// L1 loss of the predictor on a batch.
pub fn l1_loss(model: &FramePredictor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok((model.forward(x)? - y)?.abs()?.mean_all()?)
}

/// Mean absolute error over the last dimension group, used by tests to compare against "copy the frame".
pub fn copy_frame_l1(x: &Tensor, y: &Tensor) -> Result<f32> {
    Ok(y.broadcast_sub(&x.unsqueeze(2)?)?.abs()?.flatten_from(1)?.mean(D::Minus1)?.mean_all()?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn shapes_identity_start_and_round_trip() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let cfg = FramePredictorConfig { hidden: 4, frames_out: 3 };
        let m = FramePredictor::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let x = Tensor::rand(-1f32, 1.0, (2, 3, 8, 8), &dev).unwrap();
        let y = m.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 3, 8, 8]);
        let r = m.rollout(&x.get(0).unwrap(), 7).unwrap();
        assert_eq!(r.dims(), &[3, 7, 8, 8]);
        let dir = tempfile::tempdir().unwrap();
        FramePredictor::save(&vm, &cfg, dir.path()).unwrap();
        let m2 = FramePredictor::load(dir.path(), &dev).unwrap();
        let d = (m2.forward(&x).unwrap() - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
        let videos = vec![Tensor::rand(-1f32, 1.0, (3, 6, 8, 8), &dev).unwrap()];
        let pairs = ClipPairs::new(videos, 3).unwrap();
        let (bx, by) = pairs.batch(&mut ChaCha8Rng::seed_from_u64(0), 5).unwrap();
        assert_eq!((bx.dims(), by.dims()), (&[5, 3, 8, 8][..], &[5, 3, 3, 8, 8][..]));
        assert!(l1_loss(&m, &bx, &by).unwrap().to_scalar::<f32>().unwrap().is_finite());
        assert!(copy_frame_l1(&bx, &by).unwrap() > 0.0);
    }
}
