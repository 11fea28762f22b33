//! 3D convolution (groups = 1) and the causal variant with a carried frame cache for streaming.
//!
//! candle has no conv3d. On the CPU we compose it as a sum over the kt temporal taps of candle
//! conv2d calls, which candle can differentiate; on a CUDA tensor the forward is the
//! implicit-GEMM kernel of `kernels/conv3d.cu` (channels-last when the channel count allows, see
//! [`channels_last_applies`]) and the backward recomputes through that sum.

use crate::util::{dims_n, shape_err, storage_f32};
use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};

/// Output size of one convolved dim.
fn out_len(op: &'static str, n: usize, k: usize, s: usize, p: usize) -> Result<usize> {
    if s == 0 || n + 2 * p < k {
        return Err(shape_err(op, format!("input {n} + 2*padding {p} is shorter than kernel {k} (stride {s})")));
    }
    Ok((n + 2 * p - k) / s + 1)
}

/// Geometry of one convolution: input (B,C,T,H,W), weight (O,C,kt,kh,kw), output (B,O,To,Ho,Wo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv3dDims {
    /// Input (B, C, T, H, W).
    pub x: [usize; 5],
    /// Weight (O, C, kt, kh, kw).
    pub w: [usize; 5],
    /// Stride (t, h, w).
    pub stride: [usize; 3],
    /// Zero padding (t, h, w), both sides.
    pub padding: [usize; 3],
    /// Output (B, O, To, Ho, Wo).
    pub out: [usize; 5],
}

impl Conv3dDims {
    /// Checks the operands and derives the output shape.
    pub fn new(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: [usize; 3], padding: [usize; 3]) -> Result<Self> {
        const OP: &str = "conv3d";
        let xd = dims_n::<5>(OP, "x (B,C,T,H,W)", x)?;
        let wd = dims_n::<5>(OP, "weight (O,C,kt,kh,kw)", w)?;
        if xd[1] != wd[1] {
            return Err(shape_err(
                OP,
                format!("x has {} channels but weight {:?} expects {}", xd[1], w.shape(), wd[1]),
            ));
        }
        if let Some(b) = b {
            if b.dims() != [wd[0]] {
                return Err(shape_err(OP, format!("bias {:?} must be ({},)", b.shape(), wd[0])));
            }
        }
        let mut out = [xd[0], wd[0], 0, 0, 0];
        for i in 0..3 {
            out[2 + i] = out_len(OP, xd[2 + i], wd[2 + i], stride[i], padding[i])?;
        }
        Ok(Self { x: xd, w: wd, stride, padding, out })
    }

    /// Multiply-adds of the convolution (for TFLOP/s = 2 * macs / s).
    pub fn macs(&self) -> usize {
        self.out.iter().product::<usize>() * self.w[1] * self.w[2] * self.w[3] * self.w[4]
    }
}

/// Whether the CUDA forward takes the channels-last implicit-GEMM kernel (`conv3d_cl_*` in
/// kernels/conv3d.cu): input channels a multiple of its K block (32, so every 16-byte gather is one
/// voxel's channels) and at most 32 kernel taps (its per-row tap mask). Other shapes (the first
/// conv with 3 or 16 channels, say) take the older NCDHW kernel, as does everything when
/// `VW_CONV3D=ncdhw` is set (for A/B timing).
pub fn channels_last_applies(d: &Conv3dDims) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("VW_CONV3D").is_ok_and(|v| v == "ncdhw"));
    !off && d.x[1].is_multiple_of(32) && d.w[2] * d.w[3] * d.w[4] <= 32
}

/// 3D convolution with symmetric zero padding; x (B,C,T,H,W), w (O,C,kt,kh,kw), b (O).
pub fn conv3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: [usize; 3], padding: [usize; 3]) -> Result<Tensor> {
    let dims = Conv3dDims::new(x, w, b, stride, padding)?;
    #[cfg(feature = "cudnn")]
    if x.device().is_cuda() && crate::conv3d_cudnn::enabled() {
        let op = crate::conv3d_cudnn::CudnnConv3d { dims };
        let init = match b {
            Some(b) => {
                b.to_dtype(x.dtype())?.reshape((1, (), 1, 1, 1))?.broadcast_as(dims.out.to_vec())?.contiguous()?
            }
            None => Tensor::zeros(dims.out.to_vec(), x.dtype(), x.device())?,
        };
        return Ok(x.contiguous()?.apply_op3(&w.to_dtype(x.dtype())?.contiguous()?, &init, op)?);
    }
    // The kernel runs on tensor cores (bf16/f16); f32 on CUDA takes the composed conv2d path.
    if x.device().is_cuda() && matches!(x.dtype(), DType::BF16 | DType::F16) {
        let bias = match b {
            Some(b) => b.to_dtype(x.dtype())?,
            None => Tensor::zeros(dims.w[0], x.dtype(), w.device())?,
        };
        let op = Conv3dOp { dims, has_bias: b.is_some() };
        return Ok(x.contiguous()?.apply_op3(&w.to_dtype(x.dtype())?.contiguous()?, &bias.contiguous()?, op)?);
    }
    composed(x, w, b, stride, padding)
}

/// Causal 3D convolution: time is padded on the left with kt-1 zero frames, or with `cache`
/// (B,C,kt-1,H,W), the last input frames of the previous chunk, for streaming decode.
/// Height and width get symmetric zero padding `padding_hw`.
pub fn causal_conv3d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: [usize; 3],
    padding_hw: [usize; 2],
    cache: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "causal_conv3d";
    let [bs, c, _, h, wd] = dims_n::<5>(OP, "x (B,C,T,H,W)", x)?;
    let kt = dims_n::<5>(OP, "weight (O,C,kt,kh,kw)", w)?[2];
    let xp = if kt <= 1 {
        x.clone()
    } else {
        match cache {
            Some(cache) => {
                if cache.dims() != [bs, c, kt - 1, h, wd] {
                    return Err(shape_err(
                        OP,
                        format!(
                            "cache {:?} must be {:?} (the last kt-1 frames)",
                            cache.shape(),
                            [bs, c, kt - 1, h, wd]
                        ),
                    ));
                }
                Tensor::cat(&[&cache.to_dtype(x.dtype())?, x], 2)?
            }
            None => x.pad_with_zeros(2, kt - 1, 0)?,
        }
    };
    conv3d(&xp, w, b, stride, [0, padding_hw[0], padding_hw[1]])
}

/// The cache for the next chunk: the last kt-1 frames of `cache ++ x` (zero frames stand in for
/// a missing `cache`), so chunks with fewer than kt-1 frames still stream exactly.
pub fn causal_conv3d_cache(x: &Tensor, cache: Option<&Tensor>, kt: usize) -> Result<Tensor> {
    let [b, c, t, h, w] = dims_n::<5>("causal_conv3d_cache", "x (B,C,T,H,W)", x)?;
    let keep = kt.saturating_sub(1);
    if t >= keep {
        return Ok(x.narrow(2, t - keep, keep)?.contiguous()?);
    }
    let prev = match cache {
        Some(p) => p.to_dtype(x.dtype())?,
        None => Tensor::zeros((b, c, keep, h, w), x.dtype(), x.device())?,
    };
    let all = Tensor::cat(&[&prev, x], 2)?;
    let n = all.dim(2)?;
    Ok(all.narrow(2, n - keep, keep)?.contiguous()?)
}

/// Composed conv3d: a sum over temporal taps of candle conv2d over (B*To) frames. Differentiable.
pub fn composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: [usize; 3], padding: [usize; 3]) -> Result<Tensor> {
    let d = Conv3dDims::new(x, w, b, stride, padding)?;
    let [bs, c, _, _, _] = d.x;
    let [o, _, kt, _, _] = d.w;
    let [_, _, to, ho, wo] = d.out;
    let [st, sh, sw] = stride;
    let [pt, ph, pw] = padding;
    let mut xp = x.pad_with_zeros(2, pt, pt)?;
    // candle's conv2d takes one padding and one stride for both spatial dims, and its backward
    // derives the transposed conv's output padding from H alone: with a spatial stride, pad (or
    // trim unused trailing input) by hand so each dim is exactly the extent the windows read.
    let stride2 = if sh == sw { sh } else { 1 };
    let pad2 = if stride2 > 1 {
        for (dim, p, k, s, o) in [(3, ph, d.w[3], sh, ho), (4, pw, d.w[4], sw, wo)] {
            let need = (o - 1) * s + k;
            xp = xp.pad_with_zeros(dim, p, 0)?;
            let have = xp.dim(dim)?;
            xp = if have >= need { xp.narrow(dim, 0, need)? } else { xp.pad_with_zeros(dim, 0, need - have)? };
        }
        0
    } else if ph == pw {
        ph
    } else {
        xp = xp.pad_with_zeros(3, ph, ph)?.pad_with_zeros(4, pw, pw)?;
        0
    };
    let mut acc: Option<Tensor> = None;
    for i in 0..kt {
        let frames = if st == 1 {
            xp.narrow(2, i, to)?
        } else {
            let idx: Vec<u32> = (0..to).map(|t| (i + t * st) as u32).collect();
            xp.index_select(&Tensor::new(idx, x.device())?, 2)?
        };
        let (h, wd) = (frames.dim(3)?, frames.dim(4)?);
        let frames = frames.transpose(1, 2)?.contiguous()?.reshape((bs * to, c, h, wd))?;
        let wi = w.narrow(2, i, 1)?.squeeze(2)?.contiguous()?;
        let mut y = frames.conv2d(&wi, pad2, stride2, 1, 1)?;
        if sh != sw {
            let rows: Vec<u32> = (0..ho).map(|r| (r * sh) as u32).collect();
            let cols: Vec<u32> = (0..wo).map(|r| (r * sw) as u32).collect();
            y = y.index_select(&Tensor::new(rows, x.device())?, 2)?;
            y = y.index_select(&Tensor::new(cols, x.device())?, 3)?;
        }
        acc = Some(match acc {
            Some(a) => (a + y)?,
            None => y,
        });
    }
    let y = acc.ok_or_else(|| shape_err("conv3d", "kernel has zero temporal taps"))?;
    let mut y = y.reshape((bs, to, o, ho, wo))?.transpose(1, 2)?.contiguous()?;
    if let Some(b) = b {
        y = y.broadcast_add(&b.reshape((1, o, 1, 1, 1))?)?;
    }
    Ok(y)
}

/// The custom op over (x, weight, bias): CUDA implicit GEMM forward, plain-Rust CPU reference,
/// backward recomputed through [`composed`].
#[derive(Debug, Clone, Copy)]
pub struct Conv3dOp {
    /// Geometry.
    pub dims: Conv3dDims,
    /// Whether the bias operand is real (its gradient is then returned).
    pub has_bias: bool,
}

impl candle_core::CustomOp3 for Conv3dOp {
    fn name(&self) -> &'static str {
        "vw-conv3d"
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
        let out = reference(&storage_f32(s1, l1)?, &storage_f32(s2, l2)?, Some(&storage_f32(s3, l3)?), &self.dims);
        Ok((crate::util::f32_storage(out, s1.dtype())?, Shape::from(self.dims.out.to_vec())))
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
        crate::cuda::conv3d_fwd(&self.dims, s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (stride, padding) = (self.dims.stride, self.dims.padding);
        let g =
            crate::util::recompute_grads(&[x, w, b], grad, |t| composed(&t[0], &t[1], Some(&t[2]), stride, padding))
                .map_err(candle_core::Error::wrap)?;
        let mut g = g.into_iter();
        let (gx, gw, gb) = (g.next(), g.next(), g.next());
        Ok((gx, gw, if self.has_bias { gb } else { None }))
    }
}

/// Plain-Rust reference: direct convolution in f32 over row-major buffers.
pub fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, d: &Conv3dDims) -> Vec<f32> {
    let [bs, c, t, h, wd] = d.x;
    let [o, _, kt, kh, kw] = d.w;
    let [_, _, to, ho, wo] = d.out;
    let [st, sh, sw] = d.stride;
    let [pt, ph, pw] = d.padding;
    let mut out = vec![0f32; bs * o * to * ho * wo];
    for bi in 0..bs {
        for oi in 0..o {
            for ti in 0..to {
                for yi in 0..ho {
                    for xi in 0..wo {
                        let mut acc = b.map_or(0.0, |b| b[oi]);
                        for ci in 0..c {
                            for a in 0..kt {
                                let tt = (ti * st + a) as isize - pt as isize;
                                if tt < 0 || tt >= t as isize {
                                    continue;
                                }
                                for p in 0..kh {
                                    let yy = (yi * sh + p) as isize - ph as isize;
                                    if yy < 0 || yy >= h as isize {
                                        continue;
                                    }
                                    for q in 0..kw {
                                        let xx = (xi * sw + q) as isize - pw as isize;
                                        if xx < 0 || xx >= wd as isize {
                                            continue;
                                        }
                                        let xv =
                                            x[(((bi * c + ci) * t + tt as usize) * h + yy as usize) * wd + xx as usize];
                                        let wv = w[(((oi * c + ci) * kt + a) * kh + p) * kw + q];
                                        acc += xv * wv;
                                    }
                                }
                            }
                        }
                        out[(((bi * o + oi) * to + ti) * ho + yi) * wo + xi] = acc;
                    }
                }
            }
        }
    }
    out
}

/// The reference on tensors: an f32 CPU tensor (B,O,To,Ho,Wo).
pub fn reference_tensor(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Result<Tensor> {
    let d = Conv3dDims::new(x, w, b, stride, padding)?;
    let h = crate::util::host_f32;
    let bv = b.map(h).transpose()?;
    let out = reference(&h(x)?, &h(w)?, bv.as_deref(), &d);
    Ok(Tensor::from_vec(out, d.out.to_vec(), &candle_core::Device::Cpu)?.to_dtype(DType::F32)?)
}
