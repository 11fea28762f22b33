//! Per-row negative log-likelihood of a target class under softmax logits:
//! `nll[r] = logsumexp(logits[r, :]) - logits[r, target[r]]`, differentiable in the logits.
//!
//! On the CPU it is one fused pass per row (in parallel over rows) whose backward writes
//! `(softmax(logits[r]) - onehot(target[r])) * grad[r]` directly: the composed path
//! ([`composed`], also the reference and what other devices take) allocates several
//! (rows, classes) tensors forward and backward, which was a seventh of a policy training step.

use crate::util::{f32_storage, shape_err, storage_f32};
use crate::Result;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

/// `(R, V)` logits and `(R,)` u32 targets (each `< V`) -> `(R,)` f32 negative log-likelihoods.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    check(logits, targets)?;
    if logits.device().is_cpu() && logits.dtype().is_float() {
        let t = targets.to_dtype(DType::U32)?.contiguous()?;
        return Ok(logits.contiguous()?.apply_op2(&t, NllOp)?);
    }
    composed(logits, targets)
}

/// The composed candle version: `-log_softmax(logits).gather(targets)`, f32.
pub fn composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    check(logits, targets)?;
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let t = targets.to_dtype(DType::U32)?.contiguous()?.unsqueeze(1)?;
    Ok(logp.gather(&t, 1)?.squeeze(1)?.neg()?)
}

fn check(logits: &Tensor, targets: &Tensor) -> Result<()> {
    let (r, v) =
        logits.dims2().map_err(|_| shape_err("token_nll", format!("logits {:?} must be (R, V)", logits.shape())))?;
    if targets.dims() != [r] {
        return Err(shape_err("token_nll", format!("targets {:?} must be ({r},)", targets.shape())));
    }
    if v == 0 {
        return Err(shape_err("token_nll", "no classes"));
    }
    let max = targets.to_dtype(DType::U32)?.max_all()?.to_scalar::<u32>()?;
    if r > 0 && max as usize >= v {
        return Err(shape_err("token_nll", format!("target {max} out of range for {v} classes")));
    }
    Ok(())
}

/// Fused CPU op: logits `(R, V)`, targets `(R,)` u32.
struct NllOp;

/// Row maximum and `log(sum(exp(x - max)))` of one row.
fn row_lse(row: &[f32]) -> (f32, f32) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (m, row.iter().map(|&x| (x - m).exp()).sum::<f32>().ln())
}

fn u32_targets(s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<u32>> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(d), Some((a, b))) => Ok(d[a..b].to_vec()),
        _ => candle_core::bail!("token_nll: targets must be contiguous u32"),
    }
}

impl candle_core::CustomOp2 for NllOp {
    fn name(&self) -> &'static str {
        "vw-token-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, t) = (storage_f32(s1, l1)?, u32_targets(s2, l2)?);
        let v = l1.dims()[1];
        let mut out = vec![0f32; t.len()];
        if v > 0 {
            out.par_iter_mut().zip(x.par_chunks(v)).zip(&t).for_each(|((o, row), &tg)| {
                let (m, lse) = row_lse(row);
                *o = m + lse - row[tg as usize];
            });
        }
        let r = t.len();
        Ok((f32_storage(out, DType::F32)?, Shape::from(r)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (r, v) = logits.dims2()?;
        let host = |t: &Tensor| crate::util::host_f32(&t.detach()).map_err(candle_core::Error::wrap);
        let (x, g) = (host(logits)?, host(grad)?);
        let t = targets.detach().to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
        let mut dx = vec![0f32; r * v];
        if v > 0 {
            dx.par_chunks_mut(v).zip(x.par_chunks(v)).zip(t.par_iter().zip(&g)).for_each(|((d, row), (&tg, &gr))| {
                let (m, lse) = row_lse(row);
                let shift = m + lse;
                d.iter_mut().zip(row).for_each(|(d, &x)| *d = (x - shift).exp() * gr);
                d[tg as usize] -= gr;
            });
        }
        let dx = Tensor::from_vec(dx, (r, v), logits.device())?.to_dtype(logits.dtype())?;
        Ok((Some(dx), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::{max_rel_err, random_tensor};
    use candle_core::{Device, Var};

    /// Fused against composed on awkward sizes, values and the gradient of a weighted sum
    /// (weights 0 included, as a padding mask gives); large logits do not overflow.
    #[test]
    fn fused_nll_matches_composed_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (i, &(r, v, scale)) in [(1, 1, 1.0), (7, 13, 3.0), (37, 1009, 1.0), (5, 3, 80.0)].iter().enumerate() {
            let seed = 300 + i as u64;
            let logits = (random_tensor(seed, &[r, v], &dev)? * scale)?;
            let targets: Vec<u32> = (0..r).map(|k| ((k * 7 + i) % v) as u32).collect();
            let targets = Tensor::from_vec(targets, r, &dev)?;
            let w = random_tensor(seed + 1, &[r], &dev)?.relu()?; // about half the rows weigh 0
            let grads = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<(Tensor, Tensor)> {
                let var = Var::from_tensor(&logits)?;
                let out = f(var.as_tensor())?;
                let g = (&out * &w)?.sum_all()?.backward()?;
                Ok((out, g.get(var.as_tensor()).cloned().expect("a gradient")))
            };
            let (got, dgot) = grads(&|x| token_nll(x, &targets))?;
            let (want, dwant) = grads(&|x| composed(x, &targets))?;
            let what = format!("r={r} v={v} scale={scale}");
            assert!(max_rel_err(&got, &want)? < 1e-5, "nll {what}");
            assert!(max_rel_err(&dgot, &dwant)? < 1e-5, "grad {what}");
        }
        Ok(())
    }

    #[test]
    fn out_of_range_targets_and_bad_shapes_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 3), DType::F32, &dev)?;
        assert!(token_nll(&logits, &Tensor::new(&[0u32, 3], &dev)?).is_err());
        assert!(token_nll(&logits, &Tensor::new(&[0u32], &dev)?).is_err());
        assert!(token_nll(&logits.flatten_all()?, &Tensor::new(&[0u32, 1], &dev)?).is_err());
        Ok(())
    }
}
