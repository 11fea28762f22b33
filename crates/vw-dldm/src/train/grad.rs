//! Gradient bookkeeping: the global L2 norm, clipping, and the NaN/Inf check that names the
//! offending parameter.

use crate::{Error, Result};
use candle_core::{DType, Tensor, Var};
use vw_tensor_kernels::dist::Collective;

/// Upper size of one gradient all-reduce (PyTorch DDP's default bucket is 25 MiB): big enough to
/// amortise the collective's latency, small enough not to double peak memory.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Gradients of `params` taken from a backward pass, in parameter order (`None`: not reached).
pub fn collect(params: &[(String, Var)], grads: &candle_core::backprop::GradStore) -> Vec<Option<Tensor>> {
    params.iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()).collect()
}

/// Data parallelism: the mean over the ranks of `loss` and of each gradient, summed in buckets of
/// at most [`BUCKET_BYTES`] of f32 (the loss rides in the last bucket). Every rank must pass the
/// same parameters; a gradient absent on this rank counts as zeros and stays absent. candle's
/// backward has no per-parameter hooks, so the reduction follows the whole backward pass rather
/// than overlapping it.
pub fn average(
    comm: &dyn Collective,
    params: &[(String, Var)],
    loss: &Tensor,
    grads: Vec<Option<Tensor>>,
) -> Result<(f64, Vec<Option<Tensor>>)> {
    let world = comm.world_size() as f64;
    let mut buckets: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, v)) in params.iter().enumerate() {
        let b = v.elem_count() * 4;
        if i > start && bytes + b > BUCKET_BYTES {
            buckets.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += b;
    }
    buckets.push(start..params.len());
    let mut out: Vec<Option<Tensor>> = vec![None; grads.len()];
    let mut loss_mean = f64::NAN;
    let n_buckets = buckets.len();
    for (b, range) in buckets.into_iter().enumerate() {
        let mut pieces = Vec::with_capacity(range.len() + 1);
        for i in range.clone() {
            let v = params[i].1.as_tensor();
            pieces.push(match &grads[i] {
                Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
                None => Tensor::zeros(v.elem_count(), DType::F32, v.device())?,
            });
        }
        if b + 1 == n_buckets {
            pieces.push(loss.to_dtype(DType::F32)?.reshape(1)?);
        }
        let flat = Tensor::cat(&pieces, 0)?;
        let mean = (comm.all_reduce_sum(&flat)? / world)?;
        let mut off = 0;
        for i in range {
            let v = params[i].1.as_tensor();
            let n = v.elem_count();
            if let Some(g) = &grads[i] {
                out[i] = Some(mean.narrow(0, off, n)?.reshape(v.shape())?.to_dtype(g.dtype())?);
            }
            off += n;
        }
        if b + 1 == n_buckets {
            loss_mean = mean.narrow(0, off, 1)?.to_dtype(DType::F64)?.reshape(())?.to_scalar::<f64>()?;
        }
    }
    Ok((loss_mean, out))
}

/// Global L2 norm over all gradients. One host round trip: the per-tensor sums of squares are
/// stacked on the device first. Errors with [`Error::NonFinite`] naming the first parameter whose
/// gradient holds a NaN or an infinity.
pub fn global_norm(params: &[(String, Var)], grads: &[Option<Tensor>], step: u64) -> Result<f64> {
    let mut sums = Vec::with_capacity(grads.len());
    let mut names = Vec::with_capacity(grads.len());
    for ((name, _), g) in params.iter().zip(grads) {
        if let Some(g) = g {
            sums.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
            names.push(name.as_str());
        }
    }
    if sums.is_empty() {
        return Ok(0.0);
    }
    let sums = Tensor::stack(&sums, 0)?.to_device(&candle_core::Device::Cpu)?.to_vec1::<f32>()?;
    let mut total = 0f64;
    for (s, name) in sums.iter().zip(names) {
        if !s.is_finite() {
            return Err(Error::NonFinite { step, tensor: format!("gradient of parameter '{name}'") });
        }
        total += *s as f64;
    }
    Ok(total.sqrt())
}

/// The factor that brings a gradient of norm `norm` down to at most `max_norm` (1 if already below).
pub fn clip_scale(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if norm > max => max / (norm + 1e-6),
        _ => 1.0,
    }
}

/// Checks a scalar loss; errors with [`Error::NonFinite`] naming `what` if it is NaN or infinite.
pub fn check_loss(loss: f64, what: &str, step: u64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite { step, tensor: format!("{what} (value {loss})") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn global_norm_and_clip_scale() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![0f32; 2], 2, &dev)?;
        let b = Var::from_vec(vec![0f32; 1], 1, &dev)?;
        let params = vec![("a".to_string(), a), ("b".to_string(), b)];
        let grads = vec![Some(Tensor::new(&[3f32, 0.0], &dev)?), Some(Tensor::new(&[4f32], &dev)?)];
        let n = global_norm(&params, &grads, 0)?;
        assert!((n - 5.0).abs() < 1e-6);
        assert!((clip_scale(n, Some(1.0)) - 0.2).abs() < 1e-6);
        assert_eq!(clip_scale(n, Some(10.0)), 1.0);
        assert_eq!(clip_scale(n, None), 1.0);
        Ok(())
    }

    #[test]
    fn non_finite_gradient_names_the_parameter_and_step() -> Result<()> {
        let dev = Device::Cpu;
        let params: Vec<(String, Var)> = ["enc.w", "dec.w"]
            .iter()
            .map(|n| Ok((n.to_string(), Var::from_vec(vec![0f32; 2], 2, &dev)?)))
            .collect::<Result<_>>()?;
        let grads = vec![Some(Tensor::new(&[1f32, 2.0], &dev)?), Some(Tensor::new(&[f32::NAN, 0.0], &dev)?)];
        let err = global_norm(&params, &grads, 17).unwrap_err().to_string();
        assert!(err.contains("step 17") && err.contains("dec.w"), "{err}");
        Ok(())
    }
}
