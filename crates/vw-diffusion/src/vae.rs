//! The Wan2.1 video VAE (`AutoencoderKLWan` in diffusers): causal 3D convolutions, RMS norms,
//! single-head spatial attention, resampling with causal time convolutions; 16 latent channels,
//! 8x spatial and 4x temporal compression.
//!
//! Like the reference, encoding runs in causal chunks (1 frame, then 4 at a time) and decoding one
//! latent frame at a time, carrying a feature cache (the last frames each causal conv saw) between
//! chunks; [`WanDecodeStream`] exposes that so long videos decode in bounded memory. The reference
//! results depend on this chunking (the first chunk is not upsampled in time), so it is not optional.

use crate::ops;
use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, Module, VarBuilder};
use serde::Deserialize;

/// Hyperparameters, deserialized from `vae/config.json` (diffusers names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AutoencoderKLWanConfig {
    /// Base width of the encoder.
    pub base_dim: usize,
    /// Base width of the decoder (defaults to `base_dim`).
    pub decoder_base_dim: Option<usize>,
    /// Latent channels.
    pub z_dim: usize,
    /// Width multipliers per level.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per level.
    pub num_res_blocks: usize,
    /// Scales at which the encoder adds attention (empty for Wan2.1).
    pub attn_scales: Vec<f64>,
    /// Which downsampling levels also halve time.
    pub temperal_downsample: Vec<bool>,
    /// Per-channel latent mean.
    pub latents_mean: Vec<f64>,
    /// Per-channel latent std.
    pub latents_std: Vec<f64>,
    /// Wan2.2 residual blocks (not supported).
    pub is_residual: bool,
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Wan2.2 patchification (not supported).
    pub patch_size: Option<usize>,
}

impl Default for AutoencoderKLWanConfig {
    fn default() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
                -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
                1.1253, 2.8251, 1.9160,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
        }
    }
}

impl AutoencoderKLWanConfig {
    /// A tiny config for tests (the one tools/gen_diffusion_fixtures.py uses).
    pub fn tiny() -> Self {
        Self {
            base_dim: 8,
            z_dim: 4,
            dim_mult: vec![1, 2, 2, 2],
            num_res_blocks: 1,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            latents_mean: vec![0.1, -0.2, 0.3, -0.4],
            latents_std: vec![1.5, 0.5, 2.0, 1.0],
            ..Self::default()
        }
    }

    /// Spatial compression (2 per level below the top).
    pub fn spatial_factor(&self) -> usize {
        1 << self.dim_mult.len().saturating_sub(1)
    }

    /// Temporal compression.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|b| **b).count()
    }

    fn validate(&self) -> Result<()> {
        if self.is_residual || self.patch_size.is_some() {
            return Err(Error::Invalid(
                "AutoencoderKLWan: the Wan2.2 variant (is_residual / patch_size) is not supported".into(),
            ));
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(Error::Invalid(format!(
                "AutoencoderKLWan: temperal_downsample has {} entries, dim_mult {} (need one fewer)",
                self.temperal_downsample.len(),
                self.dim_mult.len()
            )));
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(Error::Invalid(format!(
                "AutoencoderKLWan: latents_mean/std must have z_dim = {} values",
                self.z_dim
            )));
        }
        Ok(())
    }
}

/// One slot of the feature cache: nothing yet, the "first chunk, repeat" marker of the time
/// upsampler, or the last input frames of a causal conv.
#[derive(Debug, Clone)]
enum Slot {
    Empty,
    Rep,
    Frames(Tensor),
}

/// The feature cache carried between chunks; each causal layer takes the next slot in call order.
#[derive(Debug, Clone, Default)]
pub struct FeatureCache {
    slots: Vec<Slot>,
    idx: usize,
}

impl FeatureCache {
    fn begin_chunk(&mut self) {
        self.idx = 0;
    }

    fn slot(&mut self) -> usize {
        if self.idx >= self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.idx += 1;
        self.idx - 1
    }
}

/// Frames to keep for the next chunk: the last two frames of x, padded with the last frame of the
/// previous cache when x has one frame (the reference's `CACHE_T = 2` rule).
fn next_cache(x: &Tensor, prev: &Slot) -> Result<Tensor> {
    let t = x.dim(2)?;
    let tail = x.narrow(2, t.saturating_sub(2), t.min(2))?;
    if tail.dim(2)? < 2 {
        if let Slot::Frames(p) = prev {
            let pt = p.dim(2)?;
            return Ok(Tensor::cat(&[&p.narrow(2, pt - 1, 1)?, &tail], 2)?.contiguous()?);
        }
    }
    Ok(tail.contiguous()?)
}

/// Causal 3D conv (`WanCausalConv3d`): time padded 2*p on the left (cache frames first), space p.
#[derive(Debug, Clone)]
pub struct WanCausalConv3d {
    weight: Tensor,
    bias: Tensor,
    pad: [usize; 3],
    stride: [usize; 3],
}

impl WanCausalConv3d {
    /// Builds a conv of kernel k, padding p, stride s.
    pub fn new(
        cin: usize,
        cout: usize,
        k: [usize; 3],
        pad: [usize; 3],
        stride: [usize; 3],
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((cout, cin, k[0], k[1], k[2]), "weight")?;
        let bias = vb.get(cout, "bias")?;
        Ok(Self { weight, bias, pad, stride })
    }

    /// x (B, C, T, H, W) with an optional cache (B, C, <=2p, H, W) of preceding frames.
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let mut front = 2 * self.pad[0];
        let mut x = x.clone();
        if let (Some(c), true) = (cache, front > 0) {
            front -= c.dim(2)?.min(front);
            x = Tensor::cat(&[&c.to_dtype(x.dtype())?, &x], 2)?;
        }
        if front > 0 {
            x = x.pad_with_zeros(2, front, 0)?;
        }
        ops::conv3d(&x, &self.weight, Some(&self.bias), self.stride, [self.pad[1], self.pad[2]])
    }

    /// The conv over one chunk using and updating its cache slot.
    fn forward_cached(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let i = cache.slot();
        let prev = std::mem::replace(&mut cache.slots[i], Slot::Empty);
        let keep = next_cache(x, &prev)?;
        let y = match &prev {
            Slot::Frames(p) => self.forward(x, Some(p))?,
            _ => self.forward(x, None)?,
        };
        cache.slots[i] = Slot::Frames(keep);
        Ok(y)
    }
}

/// `WanRMS_norm`: L2-normalise over channels, times sqrt(C) and a per-channel gain.
#[derive(Debug, Clone)]
struct WanRmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl WanRmsNorm {
    fn new(dim: usize, images: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = if images { vb.get((dim, 1, 1), "gamma")? } else { vb.get((dim, 1, 1, 1), "gamma")? };
        Ok(Self { gamma, scale: (dim as f64).sqrt() })
    }

    /// x (B, C, ...) normalised over dim 1.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let y = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        Ok((y * self.scale)?.broadcast_mul(&self.gamma.unsqueeze(0)?)?)
    }
}

/// `WanResidualBlock`: (RMS, SiLU, causal conv 3) x 2 + shortcut.
#[derive(Debug, Clone)]
struct WanResidualBlock {
    norm1: WanRmsNorm,
    conv1: WanCausalConv3d,
    norm2: WanRmsNorm,
    conv2: WanCausalConv3d,
    shortcut: Option<WanCausalConv3d>,
}

impl WanResidualBlock {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: WanRmsNorm::new(cin, false, vb.pp("norm1"))?,
            conv1: WanCausalConv3d::new(cin, cout, [3; 3], [1; 3], [1; 3], vb.pp("conv1"))?,
            norm2: WanRmsNorm::new(cout, false, vb.pp("norm2"))?,
            conv2: WanCausalConv3d::new(cout, cout, [3; 3], [1; 3], [1; 3], vb.pp("conv2"))?,
            shortcut: if cin != cout {
                Some(WanCausalConv3d::new(cin, cout, [1; 3], [0; 3], [1; 3], vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let y = self.norm1.forward(x)?.silu()?;
        let y = self.conv1.forward_cached(&y, cache)?;
        let y = self.norm2.forward(&y)?.silu()?;
        let y = self.conv2.forward_cached(&y, cache)?;
        Ok((y + h)?)
    }
}

/// `WanAttentionBlock`: single-head self-attention over the pixels of each frame.
#[derive(Debug, Clone)]
struct WanAttentionBlock {
    norm: WanRmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl WanAttentionBlock {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let c = Conv2dConfig::default();
        Ok(Self {
            norm: WanRmsNorm::new(dim, true, vb.pp("norm"))?,
            to_qkv: candle_nn::conv2d(dim, 3 * dim, 1, c, vb.pp("to_qkv"))?,
            proj: candle_nn::conv2d(dim, dim, 1, c, vb.pp("proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let f = x.permute((0, 2, 1, 3, 4))?.reshape((b * t, c, h, w))?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&f)?)?;
        let qkv = qkv.reshape((b * t, 1, 3 * c, h * w))?.transpose(2, 3)?;
        let q = qkv.narrow(D::Minus1, 0, c)?.contiguous()?;
        let k = qkv.narrow(D::Minus1, c, c)?.contiguous()?;
        let v = qkv.narrow(D::Minus1, 2 * c, c)?.contiguous()?;
        let o = ops::attention(&q, &k, &v, None)?;
        let o = o.squeeze(1)?.transpose(1, 2)?.reshape((b * t, c, h, w))?;
        let o = self.proj.forward(&o)?;
        let o = o.reshape((b, t, c, h, w))?.permute((0, 2, 1, 3, 4))?;
        Ok((o + x)?)
    }
}

/// `WanResample`: spatial up/down (2x) with an optional causal time conv.
#[derive(Debug, Clone)]
struct WanResample {
    mode: ResampleMode,
    conv: Conv2d,
    time_conv: Option<WanCausalConv3d>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResampleMode {
    Up2d,
    Up3d,
    Down2d,
    Down3d,
}

impl WanResample {
    fn new(dim: usize, mode: ResampleMode, vb: VarBuilder) -> Result<Self> {
        let (conv, time_conv) = match mode {
            ResampleMode::Up2d | ResampleMode::Up3d => {
                let cfg = Conv2dConfig { padding: 1, ..Default::default() };
                let conv = candle_nn::conv2d(dim, dim / 2, 3, cfg, vb.pp("resample").pp("1"))?;
                let tc = if mode == ResampleMode::Up3d {
                    Some(WanCausalConv3d::new(dim, 2 * dim, [3, 1, 1], [1, 0, 0], [1; 3], vb.pp("time_conv"))?)
                } else {
                    None
                };
                (conv, tc)
            }
            ResampleMode::Down2d | ResampleMode::Down3d => {
                let cfg = Conv2dConfig { stride: 2, ..Default::default() };
                let conv = candle_nn::conv2d(dim, dim, 3, cfg, vb.pp("resample").pp("1"))?;
                let tc = if mode == ResampleMode::Down3d {
                    Some(WanCausalConv3d::new(dim, dim, [3, 1, 1], [0; 3], [2, 1, 1], vb.pp("time_conv"))?)
                } else {
                    None
                };
                (conv, tc)
            }
        };
        Ok(Self { mode, conv, time_conv })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let mut x = x.clone();
        if let (ResampleMode::Up3d, Some(tc)) = (self.mode, &self.time_conv) {
            let i = cache.slot();
            let prev = std::mem::replace(&mut cache.slots[i], Slot::Empty);
            match prev {
                // First chunk: no temporal upsampling, only mark the slot.
                Slot::Empty => cache.slots[i] = Slot::Rep,
                prev => {
                    let (b, c, t, h, w) = x.dims5()?;
                    let mut keep = next_cache(&x, &prev)?;
                    if keep.dim(2)? < 2 {
                        if let Slot::Rep = prev {
                            keep = Tensor::cat(&[&keep.zeros_like()?, &keep], 2)?;
                        }
                    }
                    let y = match &prev {
                        Slot::Frames(p) => tc.forward(&x, Some(p))?,
                        _ => tc.forward(&x, None)?,
                    };
                    cache.slots[i] = Slot::Frames(keep);
                    // (b, 2c, t) -> (b, c, t, 2) -> (b, c, 2t): the two halves interleave in time.
                    x = y.reshape((b, 2, c, t, h, w))?.permute((0, 2, 3, 1, 4, 5))?.contiguous()?.reshape((
                        b,
                        c,
                        2 * t,
                        h,
                        w,
                    ))?;
                }
            }
        }
        let (b, c, t, h, w) = x.dims5()?;
        let f = x.permute((0, 2, 1, 3, 4))?.reshape((b * t, c, h, w))?;
        let f = match self.mode {
            ResampleMode::Up2d | ResampleMode::Up3d => self.conv.forward(&f.upsample_nearest2d(2 * h, 2 * w)?)?,
            ResampleMode::Down2d | ResampleMode::Down3d => {
                self.conv.forward(&f.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?
            }
        };
        let (_, c2, h2, w2) = f.dims4()?;
        let mut x = f.reshape((b, t, c2, h2, w2))?.permute((0, 2, 1, 3, 4))?.contiguous()?;
        if let (ResampleMode::Down3d, Some(tc)) = (self.mode, &self.time_conv) {
            let i = cache.slot();
            let prev = std::mem::replace(&mut cache.slots[i], Slot::Empty);
            match prev {
                Slot::Frames(p) => {
                    let tt = x.dim(2)?;
                    let keep = x.narrow(2, tt - 1, 1)?.contiguous()?;
                    let pt = p.dim(2)?;
                    x = tc.forward(&Tensor::cat(&[&p.narrow(2, pt - 1, 1)?, &x], 2)?, None)?;
                    cache.slots[i] = Slot::Frames(keep);
                }
                _ => cache.slots[i] = Slot::Frames(x.clone()),
            }
        }
        Ok(x)
    }
}

/// `WanMidBlock`: resnet, (attention, resnet).
#[derive(Debug, Clone)]
struct WanMidBlock {
    resnets: Vec<WanResidualBlock>,
    attentions: Vec<WanAttentionBlock>,
}

impl WanMidBlock {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            resnets: (0..2).map(|i| WanResidualBlock::new(dim, dim, vb.pp("resnets").pp(i))).collect::<Result<_>>()?,
            attentions: vec![WanAttentionBlock::new(dim, vb.pp("attentions").pp(0))?],
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x, cache)?;
        for (a, r) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = a.forward(&x)?;
            x = r.forward(&x, cache)?;
        }
        Ok(x)
    }
}

#[derive(Debug, Clone)]
enum DownLayer {
    Res(WanResidualBlock),
    Attn(WanAttentionBlock),
    Resample(WanResample),
}

/// `WanEncoder3d`.
#[derive(Debug, Clone)]
struct WanEncoder3d {
    conv_in: WanCausalConv3d,
    down: Vec<DownLayer>,
    mid: WanMidBlock,
    norm_out: WanRmsNorm,
    conv_out: WanCausalConv3d,
}

impl WanEncoder3d {
    fn new(cfg: &AutoencoderKLWanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.base_dim;
        let mut dims = vec![dim];
        dims.extend(cfg.dim_mult.iter().map(|m| dim * m));
        let conv_in = WanCausalConv3d::new(cfg.in_channels, dims[0], [3; 3], [1; 3], [1; 3], vb.pp("conv_in"))?;
        let mut down = vec![];
        let mut scale = 1.0;
        let vbd = vb.pp("down_blocks");
        let n = cfg.dim_mult.len();
        for i in 0..n {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            for _ in 0..cfg.num_res_blocks {
                down.push(DownLayer::Res(WanResidualBlock::new(cin, cout, vbd.pp(down.len()))?));
                if cfg.attn_scales.contains(&scale) {
                    down.push(DownLayer::Attn(WanAttentionBlock::new(cout, vbd.pp(down.len()))?));
                }
                cin = cout;
            }
            if i != n - 1 {
                let mode = if cfg.temperal_downsample[i] { ResampleMode::Down3d } else { ResampleMode::Down2d };
                down.push(DownLayer::Resample(WanResample::new(cout, mode, vbd.pp(down.len()))?));
                scale /= 2.0;
            }
        }
        let top = dims[n];
        Ok(Self {
            conv_in,
            down,
            mid: WanMidBlock::new(top, vb.pp("mid_block"))?,
            norm_out: WanRmsNorm::new(top, false, vb.pp("norm_out"))?,
            conv_out: WanCausalConv3d::new(top, 2 * cfg.z_dim, [3; 3], [1; 3], [1; 3], vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let mut x = self.conv_in.forward_cached(x, cache)?;
        for l in &self.down {
            x = match l {
                DownLayer::Res(r) => r.forward(&x, cache)?,
                DownLayer::Attn(a) => a.forward(&x)?,
                DownLayer::Resample(r) => r.forward(&x, cache)?,
            };
        }
        let x = self.mid.forward(&x, cache)?;
        let x = self.norm_out.forward(&x)?.silu()?;
        self.conv_out.forward_cached(&x, cache)
    }
}

/// `WanUpBlock`: resnets then an optional upsampler.
#[derive(Debug, Clone)]
struct WanUpBlock {
    resnets: Vec<WanResidualBlock>,
    upsampler: Option<WanResample>,
}

/// `WanDecoder3d`.
#[derive(Debug, Clone)]
struct WanDecoder3d {
    conv_in: WanCausalConv3d,
    mid: WanMidBlock,
    up: Vec<WanUpBlock>,
    norm_out: WanRmsNorm,
    conv_out: WanCausalConv3d,
}

impl WanDecoder3d {
    fn new(cfg: &AutoencoderKLWanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let n = cfg.dim_mult.len();
        let mut dims = vec![dim * cfg.dim_mult[n - 1]];
        dims.extend(cfg.dim_mult.iter().rev().map(|m| dim * m));
        let temperal_upsample: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let conv_in = WanCausalConv3d::new(cfg.z_dim, dims[0], [3; 3], [1; 3], [1; 3], vb.pp("conv_in"))?;
        let mid = WanMidBlock::new(dims[0], vb.pp("mid_block"))?;
        let mut up = vec![];
        for i in 0..n {
            let vbu = vb.pp("up_blocks").pp(i);
            let mut cin = if i > 0 { dims[i] / 2 } else { dims[i] };
            let cout = dims[i + 1];
            let mut resnets = vec![];
            for j in 0..=cfg.num_res_blocks {
                resnets.push(WanResidualBlock::new(cin, cout, vbu.pp("resnets").pp(j))?);
                cin = cout;
            }
            let upsampler = if i != n - 1 {
                let mode = if temperal_upsample[i] { ResampleMode::Up3d } else { ResampleMode::Up2d };
                Some(WanResample::new(cout, mode, vbu.pp("upsamplers").pp(0))?)
            } else {
                None
            };
            up.push(WanUpBlock { resnets, upsampler });
        }
        let last = dims[n];
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: WanRmsNorm::new(last, false, vb.pp("norm_out"))?,
            conv_out: WanCausalConv3d::new(last, cfg.out_channels, [3; 3], [1; 3], [1; 3], vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let x = self.conv_in.forward_cached(x, cache)?;
        let mut x = self.mid.forward(&x, cache)?;
        for u in &self.up {
            for r in &u.resnets {
                x = r.forward(&x, cache)?;
            }
            if let Some(s) = &u.upsampler {
                x = s.forward(&x, cache)?;
            }
        }
        let x = self.norm_out.forward(&x)?.silu()?;
        self.conv_out.forward_cached(&x, cache)
    }
}

/// The Wan2.1 VAE.
#[derive(Debug, Clone)]
pub struct AutoencoderKLWan {
    cfg: AutoencoderKLWanConfig,
    encoder: WanEncoder3d,
    quant_conv: WanCausalConv3d,
    post_quant_conv: WanCausalConv3d,
    decoder: WanDecoder3d,
}

impl AutoencoderKLWan {
    /// Builds from the root of a diffusers `vae/` checkpoint.
    pub fn new(cfg: &AutoencoderKLWanConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let z = cfg.z_dim;
        Ok(Self {
            cfg: cfg.clone(),
            encoder: WanEncoder3d::new(cfg, vb.pp("encoder"))?,
            quant_conv: WanCausalConv3d::new(2 * z, 2 * z, [1; 3], [0; 3], [1; 3], vb.pp("quant_conv"))?,
            post_quant_conv: WanCausalConv3d::new(z, z, [1; 3], [0; 3], [1; 3], vb.pp("post_quant_conv"))?,
            decoder: WanDecoder3d::new(cfg, vb.pp("decoder"))?,
        })
    }

    /// Loads a diffusers `vae/` folder.
    pub fn load(dir: &std::path::Path, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        let cfg: AutoencoderKLWanConfig = crate::weights::read_config(&dir.join("config.json"))?;
        let store = crate::weights::open(dir)?;
        crate::weights::build(&store, dtype, device, |vb| Self::new(&cfg, vb))
    }

    /// The config.
    pub fn config(&self) -> &AutoencoderKLWanConfig {
        &self.cfg
    }

    /// Posterior moments: x (B, 3, 1 + 4k, H, W) in [-1, 1] -> (mean, logvar), each (B, z, 1 + k, H/8, W/8).
    /// Frames past the last full chunk of 4 are dropped, as in the reference.
    pub fn encode_moments(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = x.dim(2)?;
        if t == 0 {
            return Err(Error::Invalid("VAE encode: the video has no frames".into()));
        }
        let tf = self.cfg.temporal_factor();
        let mut cache = FeatureCache::default();
        let mut outs = vec![];
        for i in 0..1 + (t - 1) / tf {
            cache.begin_chunk();
            let chunk = if i == 0 { x.narrow(2, 0, 1)? } else { x.narrow(2, 1 + tf * (i - 1), tf)? };
            outs.push(self.encoder.forward(&chunk, &mut cache)?);
        }
        let h = self.quant_conv.forward(&Tensor::cat(&outs, 2)?, None)?;
        let z = self.cfg.z_dim;
        let mean = h.narrow(1, 0, z)?;
        let logvar = h.narrow(1, z, z)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }

    /// The posterior mode (mean) of the latents.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.encode_moments(x)?.0)
    }

    /// Decodes z (B, z, T, h, w) to video (B, 3, 1 + 4(T-1), 8h, 8w), clamped to [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut stream = self.decode_stream();
        let mut outs = vec![];
        for i in 0..z.dim(2)? {
            outs.push(stream.next(&z.narrow(2, i, 1)?)?);
        }
        Ok(Tensor::cat(&outs, 2)?)
    }

    /// A streaming decoder: feed latent frames one at a time, get their video frames back.
    pub fn decode_stream(&self) -> WanDecodeStream<'_> {
        WanDecodeStream { vae: self, cache: FeatureCache::default() }
    }

    /// Per-channel normalisation used by the DiT: (z - mean) / std * sigma_data.
    pub fn normalize_latents(&self, z: &Tensor, sigma_data: f64) -> Result<Tensor> {
        let (m, s) = self.mean_std(z)?;
        Ok((z.broadcast_sub(&m)?.broadcast_div(&s)? * sigma_data)?)
    }

    /// Inverse of [`Self::normalize_latents`].
    pub fn denormalize_latents(&self, z: &Tensor, sigma_data: f64) -> Result<Tensor> {
        let (m, s) = self.mean_std(z)?;
        Ok((z.broadcast_mul(&s)? / sigma_data)?.broadcast_add(&m)?)
    }

    fn mean_std(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = self.cfg.z_dim;
        let f = |v: &[f64]| -> Result<Tensor> {
            let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
            Ok(Tensor::from_vec(v, (1, n, 1, 1, 1), z.device())?.to_dtype(z.dtype())?)
        };
        Ok((f(&self.cfg.latents_mean)?, f(&self.cfg.latents_std)?))
    }
}

/// Decodes one latent frame at a time with the causal feature cache (bounded memory).
#[derive(Debug)]
pub struct WanDecodeStream<'a> {
    vae: &'a AutoencoderKLWan,
    cache: FeatureCache,
}

impl WanDecodeStream<'_> {
    /// z (B, z, 1, h, w) -> video frames (B, 3, 1 for the first latent frame else 4, 8h, 8w) in [-1, 1].
    pub fn next(&mut self, z: &Tensor) -> Result<Tensor> {
        if z.dim(2)? != 1 {
            return Err(Error::Invalid(format!("decode stream takes one latent frame at a time, got {}", z.dim(2)?)));
        }
        self.cache.begin_chunk();
        let x = self.vae.post_quant_conv.forward(z, None)?;
        let y = self.vae.decoder.forward(&x, &mut self.cache)?;
        Ok(y.clamp(-1f32, 1f32)?)
    }
}
