//! Rotary position embedding: the 3D (t, h, w) frequency tables of Cosmos-Predict2 / Wan, and
//! the two ways of applying them (rotate-half and interleaved pairs), fused on CUDA (`kernels/rope.cu`).
//!
//! Tables are (L, D/2) f32: one angle per rotated pair. x is (B,H,L,D); the result keeps x's dtype
//! and is computed in f32, as diffusers does (`x.float() * cos + rotated.float() * sin`).

use crate::util::{dims_n, shape_err, storage_f32};
use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};

/// How the D channels pair up for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Channel i pairs with i + D/2 (diffusers `use_real_unbind_dim=-2`: Cosmos, CogView4).
    Half,
    /// Channel 2i pairs with 2i+1 (complex multiplication: Wan, Flux).
    Interleaved,
}

/// Rotate-half RoPE: x (B,H,L,D), cos/sin (L, D/2).
pub fn apply_rope_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply(x, cos, sin, RopeLayout::Half)
}

/// Interleaved-pair RoPE: x (B,H,L,D), cos/sin (L, D/2).
pub fn apply_rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply(x, cos, sin, RopeLayout::Interleaved)
}

fn check(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<[usize; 4]> {
    const OP: &str = "rope";
    let [b, h, l, d] = dims_n::<4>(OP, "x (B,H,L,D)", x)?;
    if d % 2 != 0 {
        return Err(shape_err(OP, format!("head dim {d} must be even")));
    }
    for (name, t) in [("cos", cos), ("sin", sin)] {
        if t.dims() != [l, d / 2] {
            return Err(shape_err(OP, format!("{name} {:?} must be (L, D/2) = ({l}, {})", t.shape(), d / 2)));
        }
    }
    Ok([b, h, l, d])
}

/// Applies the rotation with the given layout.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    check(x, cos, sin)?;
    if x.device().is_cuda() {
        let f = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
        return Ok(x.contiguous()?.apply_op3(&f(cos)?, &f(sin)?, RopeOp { layout })?);
    }
    composed(x, cos, sin, layout)
}

/// Composed candle RoPE in f32 (differentiable in x), returned in x's dtype.
pub fn composed(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let [b, h, l, d] = check(x, cos, sin)?;
    let xf = x.to_dtype(DType::F32)?;
    let cos = cos.to_dtype(DType::F32)?;
    let sin = sin.to_dtype(DType::F32)?;
    let out = match layout {
        RopeLayout::Half => {
            let (cos, sin) = (cos.reshape((1, 1, l, d / 2))?, sin.reshape((1, 1, l, d / 2))?);
            let x1 = xf.narrow(3, 0, d / 2)?;
            let x2 = xf.narrow(3, d / 2, d / 2)?;
            let o1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let o2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Tensor::cat(&[o1, o2], 3)?
        }
        RopeLayout::Interleaved => {
            let (cos, sin) = (cos.reshape((1, 1, l, d / 2, 1))?, sin.reshape((1, 1, l, d / 2, 1))?);
            let xp = xf.reshape((b, h, l, d / 2, 2))?;
            let re = xp.narrow(4, 0, 1)?;
            let im = xp.narrow(4, 1, 1)?;
            let o1 = (re.broadcast_mul(&cos)? - im.broadcast_mul(&sin)?)?;
            let o2 = (im.broadcast_mul(&cos)? + re.broadcast_mul(&sin)?)?;
            Tensor::cat(&[o1, o2], 4)?.reshape((b, h, l, d))?
        }
    };
    Ok(out.to_dtype(x.dtype())?)
}

/// The fused op over (x, cos f32, sin f32).
#[derive(Debug, Clone, Copy)]
pub struct RopeOp {
    /// Pairing of the channels.
    pub layout: RopeLayout,
}

impl candle_core::CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "vw-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, l, d) = l1.shape().dims4()?;
        let out =
            reference(&storage_f32(s1, l1)?, [b, h, l, d], &storage_f32(s2, l2)?, &storage_f32(s3, l3)?, self.layout);
        Ok((crate::util::f32_storage(out, s1.dtype())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::rope_fwd(self.layout, s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The rotation is orthogonal: its transpose is the rotation by -angle.
        let gx = apply(&grad.to_dtype(x.dtype())?, cos, &sin.neg()?, self.layout).map_err(candle_core::Error::wrap)?;
        Ok((Some(gx), None, None))
    }
}

/// Plain-Rust reference over row-major (B,H,L,D) and (L, D/2) buffers.
pub fn reference(x: &[f32], [b, h, l, d]: [usize; 4], cos: &[f32], sin: &[f32], layout: RopeLayout) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let half = d / 2;
    for bh in 0..b * h {
        for li in 0..l {
            let base = (bh * l + li) * d;
            for i in 0..half {
                let (c, s) = (cos[li * half + i], sin[li * half + i]);
                let (a, bb) = match layout {
                    RopeLayout::Half => (base + i, base + i + half),
                    RopeLayout::Interleaved => (base + 2 * i, base + 2 * i + 1),
                };
                out[a] = x[a] * c - x[bb] * s;
                out[bb] = x[bb] * c + x[a] * s;
            }
        }
    }
    out
}

/// The 3D RoPE frequency layout of Cosmos-Predict2 (and, with unit scales, of Wan 2.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope3dConfig {
    /// Attention head dim D; split into t/h/w bands as `D - 2*(D/6*2)`, `D/6*2`, `D/6*2`.
    pub head_dim: usize,
    /// Base theta of every band before NTK scaling (10000).
    pub theta: f64,
    /// Extrapolation ratios (t, h, w): band theta = theta * ratio^(dim / (dim - 2)) (NTK-aware).
    pub rope_scale: [f64; 3],
    /// The fps the temporal positions are normalised to (`t / fps * base_fps`) when fps is given.
    pub base_fps: f64,
}

impl Rope3dConfig {
    /// Cosmos-Predict2 video defaults (diffusers `CosmosRotaryPosEmbed`): rope_scale (2, 1, 1), base fps 24.
    pub fn cosmos(head_dim: usize) -> Self {
        Self { head_dim, theta: 10000.0, rope_scale: [2.0, 1.0, 1.0], base_fps: 24.0 }
    }

    /// Band dims (t, h, w), each even, summing to head_dim.
    pub fn band_dims(&self) -> [usize; 3] {
        let hw = self.head_dim / 6 * 2;
        [self.head_dim - 2 * hw, hw, hw]
    }
}

/// cos/sin tables (T*H*W, D/2) for a (T, H, W) token grid, tokens ordered t-major then h then w;
/// each row is the t band, then the h band, then the w band (half-layout pair order).
/// `fps` rescales temporal positions as Cosmos does for videos; `None` means images (raw frame index).
pub fn rope3d_freqs(
    cfg: &Rope3dConfig,
    grid: [usize; 3],
    fps: Option<f64>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let bands = cfg.band_dims();
    if !cfg.head_dim.is_multiple_of(2) || bands.iter().any(|&b| b < 4 || !b.is_multiple_of(2)) {
        return Err(shape_err(
            "rope3d_freqs",
            format!("head dim {} gives bands {bands:?}; need even bands >= 4", cfg.head_dim),
        ));
    }
    // Inverse frequencies per band, in f32 like the reference (arange(0, dim, 2) / dim).
    let inv: Vec<Vec<f32>> = (0..3)
        .map(|a| {
            let dim = bands[a] as f64;
            let theta = (cfg.theta * cfg.rope_scale[a].powf(dim / (dim - 2.0))) as f32;
            (0..bands[a] / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32)).collect()
        })
        .collect();
    let half = cfg.head_dim / 2;
    let [t, h, w] = grid;
    let n = t * h * w;
    let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
    for ti in 0..t {
        let pt = match fps {
            Some(f) => ti as f32 / f as f32 * cfg.base_fps as f32,
            None => ti as f32,
        };
        for hi in 0..h {
            for wi in 0..w {
                for (pos, band) in [(pt, &inv[0]), (hi as f32, &inv[1]), (wi as f32, &inv[2])] {
                    for &f in band {
                        let a = pos * f;
                        cos.push(a.cos());
                        sin.push(a.sin());
                    }
                }
            }
        }
    }
    Ok((Tensor::from_vec(cos, (n, half), device)?, Tensor::from_vec(sin, (n, half), device)?))
}
