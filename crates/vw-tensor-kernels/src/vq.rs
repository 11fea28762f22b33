//! Vector quantisation lookup: the nearest codebook row (squared L2) of each input row.
//! On CUDA one kernel scans the codebook per row (`kernels/vq.cu`); on the CPU the distance
//! matrix is composed in chunks (`|z|^2 - 2 z c^T + |c|^2`) and reduced with argmin.

use crate::util::{dims_n, shape_err};
use crate::Result;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, D};

/// Distance-matrix elements one composed chunk may hold.
const CHUNK_ELEMS: usize = 16 << 20;

/// Index (u32, shape (N)) of the nearest code of each row of z (N,D) in codebook (K,D).
pub fn nearest_code(z: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let [n, d] = dims_n::<2>("nearest_code", "z (N,D)", z)?;
    let [k, kd] = dims_n::<2>("nearest_code", "codebook (K,D)", codebook)?;
    if d != kd || k == 0 {
        return Err(shape_err("nearest_code", format!("z {:?} vs codebook {:?}", z.shape(), codebook.shape())));
    }
    if z.device().is_cuda() {
        let cb = codebook.to_dtype(z.dtype())?.contiguous()?;
        return Ok(z.contiguous()?.apply_op2_no_bwd(&cb, &VqOp)?);
    }
    let z = z.to_dtype(DType::F32)?.detach();
    let cb = codebook.to_dtype(DType::F32)?.detach();
    let cn = cb.sqr()?.sum(D::Minus1)?.reshape((1, k))?;
    let cbt = cb.t()?.contiguous()?;
    let rows = (CHUNK_ELEMS / k).clamp(1, n.max(1));
    let mut outs = Vec::new();
    let mut s = 0;
    while s < n {
        let m = rows.min(n - s);
        let zc = z.narrow(0, s, m)?;
        // |z|^2 is constant per row and does not change the argmin.
        let dist = (zc.matmul(&cbt)? * -2.0)?.broadcast_add(&cn)?;
        outs.push(dist.argmin(D::Minus1)?);
        s += m;
    }
    Ok(if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 0)? })
}

/// The op over (z, codebook): u32 indices.
#[derive(Debug, Clone, Copy)]
pub struct VqOp;

impl candle_core::CustomOp2 for VqOp {
    fn name(&self) -> &'static str {
        "vw-vq-nearest"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = l1.shape().dims2()?;
        let z = crate::util::storage_f32(s1, l1)?;
        let c = crate::util::storage_f32(s2, l2)?;
        Ok((CpuStorage::U32(reference(&z, &c, d)), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::vq_fwd(s1, l1, s2, l2)
    }
}

/// Plain-Rust reference: exact squared distances, first minimum wins.
pub fn reference(z: &[f32], codebook: &[f32], d: usize) -> Vec<u32> {
    z.chunks(d)
        .map(|row| {
            let mut best = (f32::INFINITY, 0u32);
            for (j, c) in codebook.chunks(d).enumerate() {
                let dist: f32 = row.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
                if dist < best.0 {
                    best = (dist, j as u32);
                }
            }
            best.1
        })
        .collect()
}
