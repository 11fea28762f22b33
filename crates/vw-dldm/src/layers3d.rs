//! The causal 3D building blocks of the official `modules/layers3d.py` used by the LDM encoder and
//! the LDM_V2 decoder: `CausalConv3d`, `CausalNormalize`, `CausalResnetBlockFactorized3d`, the
//! spatial / temporal / cross attention blocks and the hybrid down- and upsamplers.
//!
//! Every tensor is (B, C, T, H, W). "Causal" means output frame t depends only on input frames
//! <= t: time is padded on the left by replicating the first frame, the norms are per frame, the
//! temporal attention is masked.

use crate::Result;
use candle_core::{DType, Tensor, D};
use candle_nn::{Init, Linear, Module, VarBuilder};
use vw_tensor_kernels::attention::flash_attn;
use vw_tensor_kernels::conv3d::conv3d;

/// torch's default init for conv / linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
pub(crate) fn torch_uniform(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// A `torch.nn.Linear` with torch's init (candle_nn::linear uses another bias init).
pub(crate) fn linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((cout, cin), "weight", torch_uniform(cin))?;
    let b = vb.get_with_hints(cout, "bias", torch_uniform(cin))?;
    Ok(Linear::new(w, Some(b)))
}

/// x * sigmoid(x), the official `nonlinearity`.
pub(crate) fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(x)?)
}

/// `CausalConv3d`: a Conv3d whose time axis is left-padded with copies of the first frame.
/// Keys: `conv3d.weight` (O, C, kt, kh, kw), `conv3d.bias` (O).
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    time_stride: usize,
    padding: usize,
    time_pad: usize,
}

impl CausalConv3d {
    /// Kernel (kt, kh, kw), spatial stride and zero padding, temporal stride.
    pub fn new(
        cin: usize,
        cout: usize,
        kernel: [usize; 3],
        stride: usize,
        time_stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vb = vb.pp("conv3d");
        let fan_in = cin * kernel.iter().product::<usize>();
        let weight =
            vb.get_with_hints((cout, cin, kernel[0], kernel[1], kernel[2]), "weight", torch_uniform(fan_in))?;
        let bias = vb.get_with_hints(cout, "bias", torch_uniform(fan_in))?;
        // time_pad = (kt - 1) + (1 - time_stride), as the reference (dilation 1)
        let time_pad = kernel[0].saturating_sub(time_stride);
        Ok(Self { weight, bias, stride, time_stride, padding, time_pad })
    }

    /// A pointwise (1x1x1) conv.
    pub fn pointwise(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Self::new(cin, cout, [1, 1, 1], 1, 1, 0, vb)
    }

    /// x: (B, C, T, H, W) -> (B, O, T', H', W').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.time_pad > 0 {
            let (b, c, _, h, w) = x.dims5()?;
            let first = x.narrow(2, 0, 1)?.broadcast_as((b, c, self.time_pad, h, w))?;
            Tensor::cat(&[&first, x], 2)?
        } else {
            x.clone()
        };
        let stride = [self.time_stride, self.stride, self.stride];
        Ok(conv3d(&x, &self.weight, Some(&self.bias), stride, [0, self.padding, self.padding])?)
    }
}

/// `CausalNormalize` with one group: a GroupNorm(1) over (C, H, W) of each frame separately.
/// Keys: `norm.weight`, `norm.bias`.
#[derive(Debug, Clone)]
pub struct CausalNormalize {
    weight: Tensor,
    bias: Tensor,
}

impl CausalNormalize {
    /// A per-frame norm over `channels`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("norm");
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    /// x: (B, C, T, H, W) -> same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = x.dim(1)?;
        let dtype = x.dtype();
        let xf = if dtype == DType::F32 || dtype == DType::F64 { x.clone() } else { x.to_dtype(DType::F32)? };
        let mean = xf.mean_keepdim(4)?.mean_keepdim(3)?.mean_keepdim(1)?;
        let xc = xf.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(4)?.mean_keepdim(3)?.mean_keepdim(1)?;
        let xn = xc.broadcast_div(&(var + 1e-6)?.sqrt()?)?.to_dtype(dtype)?;
        let w = self.weight.reshape((1, c, 1, 1, 1))?;
        let b = self.bias.reshape((1, c, 1, 1, 1))?;
        Ok(xn.broadcast_mul(&w)?.broadcast_add(&b)?)
    }
}

/// A (1,3,3) spatial conv followed by a (3,1,1) causal temporal conv (`nn.Sequential` keys `0`, `1`).
#[derive(Debug, Clone)]
pub struct FactorizedConv {
    spatial: CausalConv3d,
    temporal: CausalConv3d,
}

impl FactorizedConv {
    /// cin -> cout, then cout -> cout.
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            spatial: CausalConv3d::new(cin, cout, [1, 3, 3], 1, 1, 1, vb.pp("0"))?,
            temporal: CausalConv3d::new(cout, cout, [3, 1, 1], 1, 1, 0, vb.pp("1"))?,
        })
    }

    /// x: (B, C, T, H, W) -> (B, O, T, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.temporal.forward(&self.spatial.forward(x)?)
    }
}

/// `CausalResnetBlockFactorized3d`: norm, silu, factorized conv, twice, plus a (1x1x1) shortcut.
#[derive(Debug, Clone)]
pub struct ResnetBlockFactorized {
    norm1: CausalNormalize,
    conv1: FactorizedConv,
    norm2: CausalNormalize,
    conv2: FactorizedConv,
    nin_shortcut: Option<CausalConv3d>,
}

impl ResnetBlockFactorized {
    /// cin -> cout channels.
    pub fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: CausalNormalize::new(cin, vb.pp("norm1"))?,
            conv1: FactorizedConv::new(cin, cout, vb.pp("conv1"))?,
            norm2: CausalNormalize::new(cout, vb.pp("norm2"))?,
            conv2: FactorizedConv::new(cout, cout, vb.pp("conv2"))?,
            nin_shortcut: if cin != cout {
                Some(CausalConv3d::pointwise(cin, cout, vb.pp("nin_shortcut"))?)
            } else {
                None
            },
        })
    }

    /// x: (B, C, T, H, W) -> (B, O, T, H, W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        let h = self.conv2.forward(&silu(&self.norm2.forward(&h)?)?)?;
        let x = match &self.nin_shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok((x + h)?)
    }
}

/// Single-head attention over (N, L, C) rows reshaped to flash_attn's (N, 1, L, C).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, mask: Option<&Tensor>) -> Result<Tensor> {
    let c = q.dim(D::Minus1)?;
    let scale = 1.0 / (c as f32).sqrt();
    let out = flash_attn(&q.unsqueeze(1)?, &k.unsqueeze(1)?, &v.unsqueeze(1)?, scale, causal, mask)?;
    Ok(out.squeeze(1)?)
}

/// (B, C, T, H, W) -> (B*T, H*W, C): the rows of spatial attention.
fn frames_as_rows(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    Ok(x.permute((0, 2, 3, 4, 1))?.reshape((b * t, h * w, c))?)
}

/// (B, C, T, H, W) -> (B*H*W, T, C): the rows of temporal attention.
fn pixels_as_rows(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    Ok(x.permute((0, 3, 4, 2, 1))?.reshape((b * h * w, t, c))?)
}

/// `CausalAttnBlock`: single-head self-attention over the pixels of each frame.
#[derive(Debug, Clone)]
pub struct AttnBlock {
    norm: CausalNormalize,
    q: CausalConv3d,
    k: CausalConv3d,
    v: CausalConv3d,
    proj_out: CausalConv3d,
}

impl AttnBlock {
    /// Over `c` channels.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: CausalNormalize::new(c, vb.pp("norm"))?,
            q: CausalConv3d::pointwise(c, c, vb.pp("q"))?,
            k: CausalConv3d::pointwise(c, c, vb.pp("k"))?,
            v: CausalConv3d::pointwise(c, c, vb.pp("v"))?,
            proj_out: CausalConv3d::pointwise(c, c, vb.pp("proj_out"))?,
        })
    }

    /// x: (B, C, T, H, W) -> same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let hn = self.norm.forward(x)?;
        let (q, k, v) = (self.q.forward(&hn)?, self.k.forward(&hn)?, self.v.forward(&hn)?);
        let o = attend(&frames_as_rows(&q)?, &frames_as_rows(&k)?, &frames_as_rows(&v)?, false, None)?;
        let o = o.reshape((b, t, h, w, c))?.permute((0, 4, 1, 2, 3))?;
        Ok((x + self.proj_out.forward(&o)?)?)
    }
}

/// `CausalTemporalAttnBlock`: single-head causal self-attention over the frames of each pixel.
#[derive(Debug, Clone)]
pub struct TemporalAttnBlock {
    inner: AttnBlock,
}

impl TemporalAttnBlock {
    /// Over `c` channels (same keys as [`AttnBlock`]).
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { inner: AttnBlock::new(c, vb)? })
    }

    /// x: (B, C, T, H, W) -> same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = &self.inner;
        let (b, c, t, h, w) = x.dims5()?;
        let hn = a.norm.forward(x)?;
        let (q, k, v) = (a.q.forward(&hn)?, a.k.forward(&hn)?, a.v.forward(&hn)?);
        let o = attend(&pixels_as_rows(&q)?, &pixels_as_rows(&k)?, &pixels_as_rows(&v)?, true, None)?;
        let o = o.reshape((b, h, w, t, c))?.permute((0, 4, 3, 1, 2))?;
        Ok((x + a.proj_out.forward(&o)?)?)
    }
}

/// `CausalCrossAttention`: every pixel of latent frame i attends to the first (i+1)*n context
/// tokens, n = context length / frames (the codes of transitions 0..=i).
#[derive(Debug, Clone)]
pub struct CrossAttention {
    norm: CausalNormalize,
    q_proj: CausalConv3d,
    kv_proj: Linear,
    proj_out: CausalConv3d,
}

impl CrossAttention {
    /// Queries of `c` channels, context of `context_dim`.
    pub fn new(c: usize, context_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: CausalNormalize::new(c, vb.pp("norm"))?,
            q_proj: CausalConv3d::pointwise(c, c, vb.pp("q_proj"))?,
            kv_proj: linear(context_dim, 2 * c, vb.pp("kv_proj"))?,
            proj_out: CausalConv3d::pointwise(c, c, vb.pp("proj_out"))?,
        })
    }

    /// x: (B, C, T, H, W), context: (B, Tc, Dc) with Tc a multiple of T -> (B, C, T, H, W).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let tc = context.dim(1)?;
        if t == 0 || tc % t != 0 {
            return Err(crate::Error::Invalid(format!(
                "cross attention: context length {tc} is not a multiple of {t} frames"
            )));
        }
        let n = tc / t;
        let q = self.q_proj.forward(&self.norm.forward(x)?)?;
        // every (pixel, frame) is one query row of a single sequence per batch item
        let q = q.permute((0, 3, 4, 2, 1))?.reshape((b, h * w * t, c))?;
        let kv = self.kv_proj.forward(context)?;
        let k = kv.narrow(2, 0, c)?.contiguous()?;
        let v = kv.narrow(2, c, c)?.contiguous()?;
        let mut bias = vec![0f32; h * w * t * tc];
        for (r, row) in bias.chunks_mut(tc).enumerate() {
            let visible = ((r % t) + 1) * n;
            row[visible.min(tc)..].fill(f32::NEG_INFINITY);
        }
        let mask = Tensor::from_vec(bias, (1, 1, h * w * t, tc), x.device())?.to_dtype(x.dtype())?;
        let o = attend(&q, &k, &v, false, Some(&mask))?;
        let o = o.reshape((b, h, w, t, c))?.permute((0, 4, 3, 1, 2))?;
        Ok((x + self.proj_out.forward(&o)?)?)
    }
}

/// `CausalHybridDownsample3d`: strided conv + average pool, spatially and/or temporally, then 1x1x1.
#[derive(Debug, Clone)]
pub struct HybridDownsample {
    conv1: Option<CausalConv3d>,
    conv2: Option<CausalConv3d>,
    conv3: Option<CausalConv3d>,
}

impl HybridDownsample {
    /// Over `c` channels; either direction may be off (both off: identity, no weights).
    pub fn new(c: usize, spatial: bool, temporal: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: if spatial { Some(CausalConv3d::new(c, c, [1, 3, 3], 2, 1, 0, vb.pp("conv1"))?) } else { None },
            conv2: if temporal { Some(CausalConv3d::new(c, c, [3, 1, 1], 1, 2, 0, vb.pp("conv2"))?) } else { None },
            conv3: if spatial || temporal { Some(CausalConv3d::pointwise(c, c, vb.pp("conv3"))?) } else { None },
        })
    }

    /// x: (B, C, T, H, W) -> (B, C, T/2 or T, H/2 or H, W/2 or W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(conv1) = &self.conv1 {
            // zero pad right and bottom by one, as the reference
            let xp = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(4, 0, 1)?;
            let (b, c, t, h, w) = xp.dims5()?;
            let (ho, wo) = (h / 2, w / 2);
            let pooled = xp
                .narrow(3, 0, 2 * ho)?
                .narrow(4, 0, 2 * wo)?
                .reshape(vec![b, c, t, ho, 2, wo, 2])?
                .mean(6)?
                .mean(4)?;
            x = (conv1.forward(&xp)? + pooled)?;
        }
        if let Some(conv2) = &self.conv2 {
            let xp = Tensor::cat(&[&x.narrow(2, 0, 1)?, &x], 2)?;
            let (b, c, t, h, w) = xp.dims5()?;
            let to = t / 2;
            let pooled = xp.narrow(2, 0, 2 * to)?.reshape((b, c, to, 2, h, w))?.mean(3)?;
            x = (conv2.forward(&xp)? + pooled)?;
        }
        match &self.conv3 {
            Some(conv3) => conv3.forward(&x),
            None => Ok(x),
        }
    }
}

/// `CausalHybridUpsample3d`: nearest repeat + residual conv, temporally and/or spatially, then 1x1x1.
#[derive(Debug, Clone)]
pub struct HybridUpsample {
    conv1: Option<CausalConv3d>,
    conv2: Option<CausalConv3d>,
    conv3: Option<CausalConv3d>,
}

/// Repeats every element of `axis` twice (torch `repeat_interleave(2, dim)`).
fn repeat2(x: &Tensor, axis: usize) -> Result<Tensor> {
    let mut shape = x.dims().to_vec();
    let x = x.unsqueeze(axis + 1)?;
    let mut b = x.dims().to_vec();
    b[axis + 1] = 2;
    shape[axis] *= 2;
    Ok(x.broadcast_as(b)?.contiguous()?.reshape(shape)?)
}

impl HybridUpsample {
    /// Over `c` channels; either direction may be off.
    pub fn new(c: usize, spatial: bool, temporal: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: if temporal { Some(CausalConv3d::new(c, c, [3, 1, 1], 1, 1, 0, vb.pp("conv1"))?) } else { None },
            conv2: if spatial { Some(CausalConv3d::new(c, c, [1, 3, 3], 1, 1, 1, vb.pp("conv2"))?) } else { None },
            conv3: if spatial || temporal { Some(CausalConv3d::pointwise(c, c, vb.pp("conv3"))?) } else { None },
        })
    }

    /// x: (B, C, T, H, W) -> (B, C, 2T-1 or T, 2H or H, 2W or W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        if let Some(conv1) = &self.conv1 {
            let t = x.dim(2)?;
            if t > 1 {
                let r = repeat2(&x, 2)?;
                x = r.narrow(2, 1, 2 * t - 1)?;
            }
            x = (conv1.forward(&x)? + &x)?;
        }
        if let Some(conv2) = &self.conv2 {
            x = repeat2(&repeat2(&x, 3)?, 4)?;
            x = (conv2.forward(&x)? + &x)?;
        }
        match &self.conv3 {
            Some(conv3) => conv3.forward(&x),
            None => Ok(x),
        }
    }
}
