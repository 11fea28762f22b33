//! Flash attention on the CPU without a mask: one fused pass per (batch, head), in parallel over
//! them, forward and backward. It never materialises a score matrix (a row of scores at a time),
//! so it needs O(Lk) scratch per thread where the composed path allocates (B, H, Lq, Lk) blocks
//! several times over; for the policy's short sequences that allocation was most of the time.
//! [`super::composed`] is its reference (tests in `attention.rs`).

use crate::util::{f32_storage, storage_f32};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The op: (q, k, v) -> out, with a fused backward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuAttnOp {
    pub scale: f32,
    pub causal: bool,
    /// (B, H, Lq, Lk, D).
    pub dims: [usize; 5],
}

/// `a · b`, eight partial sums so the compiler can vectorise it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `y += a * x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
}

impl CpuAttnOp {
    /// Keys query row `i` sees: all of them, or up to the bottom-right diagonal.
    fn visible(&self, i: usize) -> usize {
        let [_, _, lq, lk, _] = self.dims;
        if self.causal {
            (i as i64 + lk as i64 - lq as i64 + 1).clamp(0, lk as i64) as usize
        } else {
            lk
        }
    }

    /// Softmax probabilities of query `qi` over the first `kend` keys of `k` into `p`.
    fn probs(&self, qi: &[f32], k: &[f32], kend: usize, p: &mut [f32]) {
        let d = self.dims[4];
        let mut m = f32::NEG_INFINITY;
        for (j, pj) in p[..kend].iter_mut().enumerate() {
            *pj = dot(qi, &k[j * d..(j + 1) * d]) * self.scale;
            m = m.max(*pj);
        }
        let mut l = 0f32;
        for pj in &mut p[..kend] {
            *pj = (*pj - m).exp();
            l += *pj;
        }
        let inv = 1.0 / l;
        p[..kend].iter_mut().for_each(|pj| *pj *= inv);
    }

    fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let [b, h, lq, lk, d] = self.dims;
        let mut out = vec![0f32; b * h * lq * d];
        if lq == 0 || d == 0 {
            return out;
        }
        out.par_chunks_mut(lq * d).enumerate().for_each(|(bh, o)| {
            let (qs, ks, vs) = (&q[bh * lq * d..][..lq * d], &k[bh * lk * d..][..lk * d], &v[bh * lk * d..][..lk * d]);
            let mut p = vec![0f32; lk];
            for i in 0..lq {
                let kend = self.visible(i);
                if kend == 0 {
                    continue; // a query that sees no key: zero row
                }
                self.probs(&qs[i * d..(i + 1) * d], ks, kend, &mut p);
                let oi = &mut o[i * d..(i + 1) * d];
                for (j, &pj) in p[..kend].iter().enumerate() {
                    axpy(oi, pj, &vs[j * d..(j + 1) * d]);
                }
            }
        });
        out
    }

    /// (dq, dk, dv) from the forward's output and its gradient.
    fn backward(&self, q: &[f32], k: &[f32], v: &[f32], out: &[f32], dout: &[f32]) -> [Vec<f32>; 3] {
        let [b, h, lq, lk, d] = self.dims;
        let mut dq = vec![0f32; b * h * lq * d];
        let mut dk = vec![0f32; b * h * lk * d];
        let mut dv = vec![0f32; b * h * lk * d];
        if lq == 0 || lk == 0 || d == 0 {
            return [dq, dk, dv];
        }
        dq.par_chunks_mut(lq * d).zip(dk.par_chunks_mut(lk * d)).zip(dv.par_chunks_mut(lk * d)).enumerate().for_each(
            |(bh, ((dqs, dks), dvs))| {
                let qs = &q[bh * lq * d..][..lq * d];
                let (ks, vs) = (&k[bh * lk * d..][..lk * d], &v[bh * lk * d..][..lk * d]);
                let (os, gs) = (&out[bh * lq * d..][..lq * d], &dout[bh * lq * d..][..lq * d]);
                let mut p = vec![0f32; lk];
                for i in 0..lq {
                    let kend = self.visible(i);
                    if kend == 0 {
                        continue;
                    }
                    let (qi, gi) = (&qs[i * d..(i + 1) * d], &gs[i * d..(i + 1) * d]);
                    self.probs(qi, ks, kend, &mut p);
                    let delta = dot(gi, &os[i * d..(i + 1) * d]);
                    let dqi = &mut dqs[i * d..(i + 1) * d];
                    for (j, &pj) in p[..kend].iter().enumerate() {
                        let (kj, vj) = (&ks[j * d..(j + 1) * d], &vs[j * d..(j + 1) * d]);
                        let ds = pj * (dot(gi, vj) - delta) * self.scale;
                        axpy(dqi, ds, kj);
                        axpy(&mut dks[j * d..(j + 1) * d], ds, qi);
                        axpy(&mut dvs[j * d..(j + 1) * d], pj, gi);
                    }
                }
            },
        );
        [dq, dk, dv]
    }
}

impl candle_core::CustomOp3 for CpuAttnOp {
    fn name(&self) -> &'static str {
        "vw-attn-cpu"
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
        let out = self.forward(&storage_f32(s1, l1)?, &storage_f32(s2, l2)?, &storage_f32(s3, l3)?);
        let [b, h, lq, _, d] = self.dims;
        Ok((f32_storage(out, s1.dtype())?, Shape::from((b, h, lq, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let host = |t: &Tensor| crate::util::host_f32(&t.detach()).map_err(candle_core::Error::wrap);
        let [dq, dk, dv] = self.backward(&host(q)?, &host(k)?, &host(v)?, &host(res)?, &host(grad)?);
        let back = |g: Vec<f32>, like: &Tensor| -> candle_core::Result<Tensor> {
            Tensor::from_vec(g, like.shape(), like.device())?.to_dtype(like.dtype())
        };
        Ok((Some(back(dq, q)?), Some(back(dk, k)?), Some(back(dv, v)?)))
    }
}

/// Whether the fused CPU path takes this call: a CPU tensor of a float dtype, no additive mask.
pub(crate) fn supports(q: &Tensor, mask: Option<&Tensor>) -> bool {
    q.device().is_cpu() && mask.is_none() && matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16 | DType::F64)
}
