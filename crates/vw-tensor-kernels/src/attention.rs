//! Flash attention: `softmax(q k^T * scale + bias) v` without materialising the full score matrix.
//!
//! On a CUDA tensor the forward is a tiled online-softmax kernel: `kernels/flash_attn_sm90.cu`
//! (wgmma + TMA) on sm_90 for bf16/f16, head_dim 128 without an additive mask, otherwise
//! `kernels/flash_attn.cu` (mma.sync; bf16/f16, head_dim 64/128, masks), with a backward that recomputes through composed candle ops one
//! query chunk at a time. On the CPU without a mask it is a fused forward and backward in plain
//! Rust, parallel over (batch, head) (`attention_cpu.rs`); anything else (a CPU call with a mask,
//! other CUDA shapes) takes composed candle ops chunked over the queries, so autograd works
//! natively and memory stays bounded for long sequences.

use crate::util::{dims_n, shape_err, storage_f32, unsqueeze_to};
use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor, D};

/// Score-matrix elements one composed chunk may hold (B*H*chunk*Lk), about 256 MiB in f32.
const CHUNK_ELEMS: usize = 64 << 20;

/// Attention over q (B,H,Lq,D), k/v (B,H,Lk,D); returns (B,H,Lq,D) in q's dtype.
///
/// `mask` is additive and broadcastable to (B,H,Lq,Lk). `causal` aligns the last query with the
/// last key (bottom-right) when Lq != Lk; a query that sees no key gets a zero output row.
pub fn flash_attn(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    causal: bool,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = check(q, k, v, mask)?;
    if kernel_supports(q, dims[4]) {
        let op = FlashAttnOp::new(q, k, v, softmax_scale, causal, mask)?;
        return Ok(aligned(q)?.apply_op3(&aligned(k)?, &aligned(v)?, op)?);
    }
    if crate::attention_cpu::supports(q, mask) {
        let op = crate::attention_cpu::CpuAttnOp { scale: softmax_scale, causal, dims };
        return Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?);
    }
    composed(q, k, v, softmax_scale, causal, mask)
}

/// Whether the CUDA kernel handles this input (bf16/f16 on a CUDA device, head_dim 64 or 128);
/// anything else takes the composed path.
pub fn kernel_supports(q: &Tensor, head_dim: usize) -> bool {
    q.device().is_cuda() && matches!(q.dtype(), DType::BF16 | DType::F16) && matches!(head_dim, 64 | 128)
}

/// A contiguous tensor whose data starts 16-byte aligned (the kernel loads 16-byte chunks).
pub(crate) fn aligned(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset() % 8 == 0 {
        return Ok(t);
    }
    Ok(t.affine(1.0, 0.0)?)
}

/// (B, H, Lq, Lk, D), after checking every operand against q.
fn check(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<[usize; 5]> {
    const OP: &str = "flash_attn";
    let [b, h, lq, d] = dims_n::<4>(OP, "q", q)?;
    let [kb, kh, lk, kd] = dims_n::<4>(OP, "k", k)?;
    if (kb, kh, kd) != (b, h, d) {
        return Err(shape_err(OP, format!("k {:?} does not match q {:?} in (B, H, D)", k.shape(), q.shape())));
    }
    if v.dims() != k.dims() {
        return Err(shape_err(OP, format!("v {:?} must have the shape of k {:?}", v.shape(), k.shape())));
    }
    if let Some(m) = mask {
        let md = unsqueeze_to(m, 4)?.dims().to_vec();
        let full = [b, h, lq, lk];
        if md.len() != 4 || md.iter().zip(full).any(|(&a, f)| a != 1 && a != f) {
            return Err(shape_err(OP, format!("mask {:?} is not broadcastable to {full:?}", m.shape())));
        }
    }
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        return Err(shape_err(OP, "q, k and v must share one dtype"));
    }
    Ok([b, h, lq, lk, d])
}

/// The additive bias of query rows `s..s+n`: causal -inf above the bottom-right diagonal plus the
/// user mask, shaped to broadcast against (B,H,n,Lk); `None` when there is nothing to add.
fn chunk_bias(
    s: usize,
    n: usize,
    lq: usize,
    lk: usize,
    causal: bool,
    mask: Option<&Tensor>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let mut bias = None;
    if causal {
        let off = lk as i64 - lq as i64;
        let mut v = vec![0f32; n * lk];
        for i in 0..n {
            let last = (s + i) as i64 + off; // last visible key
            for (j, x) in v[i * lk..(i + 1) * lk].iter_mut().enumerate() {
                if j as i64 > last {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        bias = Some(Tensor::from_vec(v, (1, 1, n, lk), device)?);
    }
    if let Some(m) = mask {
        let m = unsqueeze_to(m, 4)?.to_dtype(DType::F32)?;
        let m = if m.dim(2)? == lq && lq != 1 { m.narrow(2, s, n)? } else { m };
        bias = Some(match bias {
            Some(b) => b.broadcast_add(&m)?,
            None => m,
        });
    }
    Ok(bias)
}

/// Query rows per composed chunk, so the f32 score block stays under [`CHUNK_ELEMS`].
fn chunk_rows(b: usize, h: usize, lq: usize, lk: usize) -> usize {
    (CHUNK_ELEMS / (b * h * lk).max(1)).clamp(1, lq.max(1))
}

/// Softmax probabilities of one score block (f32), with fully-masked rows giving zeros, not NaN.
fn probs(scores: &Tensor) -> Result<Tensor> {
    let m = scores.max_keepdim(D::Minus1)?.detach().maximum(-1e30f64)?;
    let e = scores.broadcast_sub(&m)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?.maximum(1e-30f64)?;
    Ok(e.broadcast_div(&sum)?)
}

/// Composed candle attention, chunked over queries; differentiable end to end.
pub fn composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    causal: bool,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let [b, h, lq, lk, _] = check(q, k, v, mask)?;
    composed_rows(q, k, v, softmax_scale, causal, mask, chunk_rows(b, h, lq, lk))
}

/// [`composed`] with an explicit number of query rows per chunk.
pub(crate) fn composed_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    softmax_scale: f32,
    causal: bool,
    mask: Option<&Tensor>,
    rows: usize,
) -> Result<Tensor> {
    let [_, _, lq, lk, _] = check(q, k, v, mask)?;
    let dtype = q.dtype();
    let (qf, kf, vf) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let kt = kf.t()?.contiguous()?;
    let rows = rows.max(1);
    let mut outs = Vec::new();
    let mut s = 0;
    while s < lq {
        let n = rows.min(lq - s);
        let qc = qf.narrow(2, s, n)?.contiguous()?;
        let mut scores = (qc.matmul(&kt)? * softmax_scale as f64)?;
        if let Some(bias) = chunk_bias(s, n, lq, lk, causal, mask, q.device())? {
            scores = scores.broadcast_add(&bias)?;
        }
        outs.push(probs(&scores)?.matmul(&vf)?);
        s += n;
    }
    let out = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2)? };
    Ok(out.to_dtype(dtype)?)
}

/// Gradients (dq, dk, dv) of attention, recomputed chunk by chunk with composed ops (f32).
#[allow(clippy::too_many_arguments)] // the op's full state; a struct would only rename it
fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    grad: &Tensor,
    scale: f32,
    causal: bool,
    mask: Option<&Tensor>,
    rows: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, h, lq, _) = q.dims4()?;
    let lk = k.dim(2)?;
    // Detached: q, k, v and out are nodes of the forward graph, and ops on them would record a
    // backprop graph that keeps every chunk's f32 scores alive until the gradients are dropped
    // (51 GiB for one 9 360-token backward at 16 heads instead of a few).
    let f = |t: &Tensor| t.detach().to_dtype(DType::F32);
    let (qf, kf, vf, of, gf) = (f(q)?, f(k)?, f(v)?, f(out)?, f(grad)?);
    let kt = kf.t()?.contiguous()?;
    let vt = vf.t()?.contiguous()?;
    let mut dk = kf.zeros_like()?;
    let mut dv = vf.zeros_like()?;
    let mut dqs = Vec::new();
    let rows = if rows == 0 { chunk_rows(b, h, lq, lk) } else { rows };
    let mut s = 0;
    while s < lq {
        let n = rows.min(lq - s);
        let qc = qf.narrow(2, s, n)?.contiguous()?;
        let dout = gf.narrow(2, s, n)?.contiguous()?;
        let mut scores = (qc.matmul(&kt)? * scale as f64)?;
        if let Some(bias) = chunk_bias(s, n, lq, lk, causal, mask, q.device())? {
            scores = scores.broadcast_add(&bias)?;
        }
        let p = probs(&scores)?;
        dv = (dv + p.t()?.matmul(&dout)?)?;
        let dp = dout.matmul(&vt)?;
        let delta = (&dout * of.narrow(2, s, n)?)?.sum_keepdim(D::Minus1)?;
        let ds = (p * dp.broadcast_sub(&delta)?)?;
        dqs.push((ds.matmul(&kf)? * scale as f64)?);
        dk = (dk + (ds.t()?.matmul(&qc)? * scale as f64)?)?;
        s += n;
    }
    let dq = if dqs.len() == 1 { dqs.remove(0) } else { Tensor::cat(&dqs, 2)? };
    let dt = q.dtype();
    Ok((dq.to_dtype(dt)?, dk.to_dtype(dt)?, dv.to_dtype(dt)?))
}

/// The custom op: CUDA kernel forward (plain-Rust reference on the CPU), recomputing backward.
#[derive(Debug, Clone)]
pub struct FlashAttnOp {
    /// Softmax scale.
    pub scale: f32,
    /// Bottom-right causal masking.
    pub causal: bool,
    /// Optional additive mask, broadcastable to (B,H,Lq,Lk); not differentiated.
    pub mask: Option<Tensor>,
    /// (B, H, Lq, Lk, D).
    pub dims: [usize; 5],
    /// Query rows per backward chunk; 0 picks a bound of about 256 MiB of scores.
    pub bwd_rows: usize,
}

impl FlashAttnOp {
    /// An op for these operands (checks shapes).
    pub fn new(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, causal: bool, mask: Option<&Tensor>) -> Result<Self> {
        let dims = check(q, k, v, mask)?;
        let mask = match mask {
            Some(m) => Some(unsqueeze_to(m, 4)?.to_dtype(DType::F32)?.contiguous()?),
            None => None,
        };
        Ok(Self { scale, causal, mask, dims, bwd_rows: 0 })
    }
}

impl candle_core::CustomOp3 for FlashAttnOp {
    fn name(&self) -> &'static str {
        "vw-flash-attn"
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
        let (q, k, v) = (storage_f32(s1, l1)?, storage_f32(s2, l2)?, storage_f32(s3, l3)?);
        let mask = match &self.mask {
            Some(m) => {
                let m4 = unsqueeze_to(m, 4).map_err(candle_core::Error::wrap)?;
                let md = m4.dims4()?;
                Some((crate::util::host_f32(&m4).map_err(candle_core::Error::wrap)?, [md.0, md.1, md.2, md.3]))
            }
            None => None,
        };
        let out = reference(&q, &k, &v, self.dims, self.scale, self.causal, mask.as_ref().map(|(m, d)| (&m[..], *d)));
        let [b, h, lq, _, d] = self.dims;
        Ok((crate::util::f32_storage(out, s1.dtype())?, Shape::from((b, h, lq, d))))
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
        crate::cuda::flash_attn_fwd(self, s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = backward(q, k, v, res, grad, self.scale, self.causal, self.mask.as_ref(), self.bwd_rows)
            .map_err(candle_core::Error::wrap)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Plain-Rust reference: tiled online softmax (the algorithm of the kernel), f32, row-major.
///
/// `dims` is (B, H, Lq, Lk, D); `mask` is (values, 4D dims) with size-1 dims broadcast.
pub fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: [usize; 5],
    scale: f32,
    causal: bool,
    mask: Option<(&[f32], [usize; 4])>,
) -> Vec<f32> {
    const TILE: usize = 64;
    let [b, h, lq, lk, d] = dims;
    let mut out = vec![0f32; b * h * lq * d];
    let off = lk as i64 - lq as i64;
    let mut s = vec![0f32; TILE];
    let mut acc = vec![0f32; d];
    for bi in 0..b {
        for hi in 0..h {
            let qb = ((bi * h + hi) * lq) * d;
            let kb = ((bi * h + hi) * lk) * d;
            for i in 0..lq {
                let qi = &q[qb + i * d..qb + (i + 1) * d];
                let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
                acc.iter_mut().for_each(|a| *a = 0.0);
                let kend = if causal { ((i as i64 + off + 1).clamp(0, lk as i64)) as usize } else { lk };
                let mut j0 = 0;
                while j0 < kend {
                    let jn = TILE.min(kend - j0);
                    let mut tmax = f32::NEG_INFINITY;
                    for (t, st) in s[..jn].iter_mut().enumerate() {
                        let j = j0 + t;
                        let kj = &k[kb + j * d..kb + (j + 1) * d];
                        let mut dot = qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f32>() * scale;
                        if let Some((mv, [m0, m1, m2, m3])) = mask {
                            let idx = (((bi % m0) * m1 + hi % m1) * m2 + i % m2) * m3 + j % m3;
                            dot += mv[idx];
                        }
                        *st = dot;
                        tmax = tmax.max(dot);
                    }
                    let mnew = m.max(tmax);
                    if mnew == f32::NEG_INFINITY {
                        j0 += jn;
                        continue;
                    }
                    let corr = (m - mnew).exp();
                    l *= corr;
                    acc.iter_mut().for_each(|a| *a *= corr);
                    for (t, &st) in s[..jn].iter().enumerate() {
                        let p = (st - mnew).exp();
                        l += p;
                        let vj = &v[kb + (j0 + t) * d..kb + (j0 + t + 1) * d];
                        acc.iter_mut().zip(vj).for_each(|(a, &x)| *a += p * x);
                    }
                    m = mnew;
                    j0 += jn;
                }
                let o = &mut out[qb + i * d..qb + (i + 1) * d];
                if l > 0.0 {
                    o.iter_mut().zip(&acc).for_each(|(o, a)| *o = a / l);
                }
            }
        }
    }
    out
}

/// The reference on tensors: returns an f32 CPU tensor (B,H,Lq,D).
pub fn reference_tensor(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    causal: bool,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = check(q, k, v, mask)?;
    let h = crate::util::host_f32;
    let m = match mask {
        Some(m) => {
            let m4 = unsqueeze_to(m, 4)?;
            let (a, b, c, d) = m4.dims4()?;
            Some((h(&m4)?, [a, b, c, d]))
        }
        None => None,
    };
    let out = reference(&h(q)?, &h(k)?, &h(v)?, dims, scale, causal, m.as_ref().map(|(v, d)| (&v[..], *d)));
    Ok(Tensor::from_vec(out, (dims[0], dims[1], dims[2], dims[4]), &Device::Cpu)?)
}
