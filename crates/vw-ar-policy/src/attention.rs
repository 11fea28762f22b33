//! Causal multi-head attention of the policy, through the workspace's flash attention
//! (`vw_tensor_kernels::attention::flash_attn`: the CUDA kernel on GPUs, chunked composed ops on
//! the CPU; differentiable on both).

use crate::Result;
use candle_core::Tensor;

/// q: `(B, H, Tq, D)`, k/v: `(B, H, Tk, D)` with `Tq <= Tk`. Causal, bottom-right aligned: query `i`
/// sits at absolute position `Tk - Tq + i`, so a block of new queries after a cached prefix sees
/// the whole prefix. Returns `(B, H, Tq, D)`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(3)?;
    let scale = 1.0 / (d as f32).sqrt();
    Ok(vw_tensor_kernels::attention::flash_attn(q, k, v, scale, true, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, D};

    /// Explicit-mask attention written out, to pin the alignment the policy relies on.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (tq, d) = (q.dim(2).unwrap(), q.dim(3).unwrap());
        let tk = k.dim(2).unwrap();
        let past = tk - tq;
        let mask: Vec<f32> =
            (0..tq).flat_map(|i| (0..tk).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (tq, tk), &Device::Cpu).unwrap();
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap().broadcast_add(&mask).unwrap();
        candle_nn::ops::softmax(&s, D::Minus1).unwrap().matmul(v).unwrap()
    }

    #[test]
    fn matches_explicit_bottom_right_mask() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 9, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 9, 8), &dev).unwrap();
        let got = causal_attention(&q, &k, &v).unwrap();
        let diff = (got - naive(&q, &k, &v)).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    }
}
