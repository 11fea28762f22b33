//! The hot-path ops the models call, in one place, so the model files read like the reference and
//! the kernel choice lives here only: on CUDA tensors the fused kernels of vw-tensor-kernels (flash
//! attention, norm + modulate, gated residual, RoPE, conv3d); elsewhere composed candle ops that
//! follow diffusers' arithmetic (f32 statistics), which the parity tests pin down.

use crate::Result;
use candle_core::{DType, Tensor, D};

/// Attention over q (B,H,Lq,D), k/v (B,H,Lk,D) with an optional additive mask broadcastable to
/// (B,H,Lq,Lk); returns (B,H,Lq,D). Chunked over queries on the composed path so memory stays bounded.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    if q.device().is_cuda() {
        return Ok(vw_tensor_kernels::attention::flash_attn(q, k, v, scale as f32, false, mask)?);
    }
    composed_attention(q, k, v, scale, mask)
}

/// Score elements one composed chunk may hold (about 256 MiB in f32).
const CHUNK_ELEMS: usize = 64 << 20;

fn composed_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, h, lq, _) = q.dims4()?;
    let lk = k.dim(2)?;
    let rows = (CHUNK_ELEMS / (b * h * lk).max(1)).clamp(1, lq.max(1));
    let kt = k.transpose(2, 3)?.contiguous()?;
    let v = v.contiguous()?;
    let mut outs = Vec::with_capacity(lq.div_ceil(rows));
    let mut s = 0;
    while s < lq {
        let n = rows.min(lq - s);
        let qc = q.narrow(2, s, n)?.contiguous()?;
        // Scores in f32 like SDPA's math path, so bf16 inputs do not lose the softmax.
        let mut scores = (qc.matmul(&kt)?.to_dtype(DType::F32)? * scale)?;
        if let Some(m) = mask {
            let m = if m.dim(2)? == lq && lq > 1 { m.narrow(2, s, n)? } else { m.clone() };
            scores = scores.broadcast_add(&m.to_dtype(DType::F32)?)?;
        }
        let p = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        outs.push(p.matmul(&v)?);
        s += n;
    }
    Ok(Tensor::cat(&outs, 2)?)
}

/// `LayerNorm(x) * (1 + scale) + shift` over the last dim, no affine; x (B,L,C), shift/scale (B,1,C).
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cuda() {
        return Ok(vw_tensor_kernels::norm::layer_norm_modulate(x, shift, scale, eps)?);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = xn.broadcast_mul(&(scale.to_dtype(DType::F32)? + 1.0)?)?.broadcast_add(&shift.to_dtype(DType::F32)?)?;
    Ok(y.to_dtype(dtype)?)
}

/// `x + gate * y`; x, y (B,L,C), gate (B,1,C).
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.device().is_cuda() {
        return Ok(vw_tensor_kernels::norm::gated_residual(x, gate, y)?);
    }
    Ok(x.add(&y.broadcast_mul(&gate.to_dtype(y.dtype())?)?)?)
}

/// RMSNorm over the last dim with weight, statistics in f32 (diffusers' `RMSNorm`).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xf.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(xn.to_dtype(dtype)?.broadcast_mul(&weight.to_dtype(dtype)?)?)
}

/// Per-head RMSNorm of x (B, L, H*hd) with a (hd) weight, returned as (B, L, H*hd).
pub fn rms_norm_heads(x: &Tensor, weight: &Tensor, heads: usize, eps: f64) -> Result<Tensor> {
    let (b, l, c) = x.dims3()?;
    let hd = c / heads;
    let xh = x.reshape((b, l * heads, hd))?;
    if x.device().is_cuda() {
        // The fused RMS + modulate kernel with zero shift / scale is a plain weighted RMSNorm.
        let z = Tensor::zeros((1, 1, hd), DType::F32, x.device())?;
        let y = vw_tensor_kernels::norm::rms_norm_modulate(&xh, Some(weight), &z, &z, eps)?;
        return Ok(y.reshape((b, l, c))?);
    }
    Ok(rms_norm(&xh, weight, eps)?.reshape((b, l, c))?)
}

/// Rotary embedding, half-split layout (`rotate_half`): x (B,H,L,D), cos/sin (L, D/2).
pub fn rope_half(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.device().is_cuda() {
        return Ok(vw_tensor_kernels::rope::apply_rope_half(x, cos, sin)?);
    }
    let dtype = x.dtype();
    let y = candle_nn::rotary_emb::rope(&x.to_dtype(DType::F32)?.contiguous()?, cos, sin)?;
    Ok(y.to_dtype(dtype)?)
}

/// 3D convolution without time padding (callers pad causally): x (B,C,T,H,W), w (O,C,kt,kh,kw),
/// spatial zero padding `pad_hw` (equal in h and w), stride (st, sh, sw) with sh = sw.
/// Composed as one conv2d over (B*To) frames with the kt taps stacked along channels.
pub fn conv3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, stride: [usize; 3], pad_hw: [usize; 2]) -> Result<Tensor> {
    let (bs, c, t, h, wd) = x.dims5()?;
    let (o, wc, kt, kh, kw) = w.dims5()?;
    if wc != c || t < kt || pad_hw[0] != pad_hw[1] || stride[1] != stride[2] {
        return Err(crate::Error::Invalid(format!(
            "conv3d: input {:?}, weight {:?}, stride {stride:?}, padding {pad_hw:?} are not supported together",
            x.shape(),
            w.shape()
        )));
    }
    if x.device().is_cuda() {
        return Ok(vw_tensor_kernels::conv3d::conv3d(x, w, b, stride, [0, pad_hw[0], pad_hw[1]])?);
    }
    let st = stride[0];
    let to = (t - kt) / st + 1;
    let taps = (0..kt)
        .map(|dt| -> Result<Tensor> {
            if st == 1 {
                Ok(x.narrow(2, dt, to)?)
            } else {
                let idx: Vec<u32> = (0..to).map(|i| (i * st + dt) as u32).collect();
                Ok(x.index_select(&Tensor::from_vec(idx, to, x.device())?, 2)?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    // (B, kt, C, To, H, W) -> (B*To, kt*C, H, W)
    let xs =
        Tensor::stack(&taps, 1)?.permute(vec![0, 3, 1, 2, 4, 5])?.contiguous()?.reshape((bs * to, kt * c, h, wd))?;
    let w2 = w.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((o, kt * c, kh, kw))?;
    let y = xs.conv2d(&w2, pad_hw[0], stride[1], 1, 1)?;
    let y = match b {
        Some(b) => y.broadcast_add(&b.reshape((1, o, 1, 1))?)?,
        None => y,
    };
    let (_, _, ho, wo) = y.dims4()?;
    Ok(y.reshape((bs, to, o, ho, wo))?.permute((0, 2, 1, 3, 4))?.contiguous()?)
}
