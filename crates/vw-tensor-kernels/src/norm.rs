//! Fused normalisation + AdaLN modulation, `norm(x) * (1 + scale) + shift`, and the gated
//! residual `x + gate * y`, each one pass over the activations on CUDA (`kernels/norm_modulate.cu`).
//!
//! x is (B,L,C); shift / scale / gate broadcast from (B,1,C), (B,L,C), (1,1,C) or (C). Statistics
//! are computed in f32 whatever the activation dtype. On the CPU these are composed candle ops
//! (differentiable); on CUDA the forward is the kernel and the backward recomputes them.

use crate::util::{dims_n, shape_err, storage_f32, unsqueeze_to};
use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, D};

/// Which normalisation the fused op applies before the modulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm without affine parameters.
    Layer,
    /// RMSNorm (any weight is folded into the scale beforehand).
    Rms,
}

/// Element strides (b, l, c) of a contiguous operand broadcast to (B,L,C); 0 on broadcast dims.
pub fn bcast_strides(op: &'static str, name: &str, t: &Tensor, full: [usize; 3]) -> Result<[usize; 3]> {
    let t3 = unsqueeze_to(t, 3)?;
    let d = t3.dims();
    if d.len() != 3 || d.iter().zip(full).any(|(&a, f)| a != 1 && a != f) {
        return Err(shape_err(op, format!("{name} {:?} is not broadcastable to {full:?}", t.shape())));
    }
    let s = [d[1] * d[2], d[2], 1];
    Ok([0, 1, 2].map(|i| if d[i] == 1 { 0 } else { s[i] }))
}

fn check(op: &'static str, x: &Tensor, others: &[(&str, &Tensor)]) -> Result<[usize; 3]> {
    let full = dims_n::<3>(op, "x (B,L,C)", x)?;
    for (name, t) in others {
        bcast_strides(op, name, t, full)?;
    }
    Ok(full)
}

/// LayerNorm (no affine) then modulation: `ln(x) * (1 + scale) + shift`.
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    check("layer_norm_modulate", x, &[("shift", shift), ("scale", scale)])?;
    if x.device().is_cuda() {
        return fused(x, shift, scale, eps, NormKind::Layer);
    }
    composed(x, None, shift, scale, eps, NormKind::Layer)
}

/// RMSNorm with an optional weight (C) then modulation: `rms(x) * w * (1 + scale) + shift`.
pub fn rms_norm_modulate(
    x: &Tensor,
    weight: Option<&Tensor>,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let [_, _, c] = check("rms_norm_modulate", x, &[("shift", shift), ("scale", scale)])?;
    if let Some(w) = weight {
        if w.dims() != [c] {
            return Err(shape_err("rms_norm_modulate", format!("weight {:?} must be ({c},)", w.shape())));
        }
    }
    if x.device().is_cuda() {
        // w * (1 + scale) = 1 + scale' with scale' = w * (1 + scale) - 1: one kernel either way.
        let scale = match weight {
            Some(w) => {
                (unsqueeze_to(&scale.to_dtype(DType::F32)?, 3)?
                    .affine(1.0, 1.0)?
                    .broadcast_mul(&w.to_dtype(DType::F32)?)?
                    - 1.0)?
            }
            None => scale.clone(),
        };
        return fused(x, shift, &scale, eps, NormKind::Rms);
    }
    composed(x, weight, shift, scale, eps, NormKind::Rms)
}

/// Gated residual `x + gate * y`; gate broadcasts like shift/scale.
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    check("gated_residual", x, &[("gate", gate)])?;
    if y.dims() != x.dims() {
        return Err(shape_err("gated_residual", format!("y {:?} must have the shape of x {:?}", y.shape(), x.shape())));
    }
    if x.device().is_cuda() {
        let gate = gate.to_dtype(DType::F32)?.contiguous()?;
        let y = crate::attention::aligned(&y.to_dtype(x.dtype())?)?;
        return Ok(crate::attention::aligned(x)?.apply_op3(&gate, &y, GatedResidualOp)?);
    }
    gated_residual_composed(x, gate, y)
}

/// Composed `x + gate * y` (differentiable), computed in x's dtype.
pub fn gated_residual_composed(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    let gate = unsqueeze_to(&gate.to_dtype(x.dtype())?, 3)?;
    Ok(x.add(&y.to_dtype(x.dtype())?.broadcast_mul(&gate)?)?)
}

fn fused(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64, kind: NormKind) -> Result<Tensor> {
    let f = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F32)?.contiguous()?) };
    let op = NormModulateOp { eps: eps as f32, kind };
    // The kernel's fast path loads 16-byte vectors.
    Ok(crate::attention::aligned(x)?.apply_op3(&f(shift)?, &f(scale)?, op)?)
}

/// Composed norm + modulation in f32 (differentiable), returned in x's dtype.
pub fn composed(
    x: &Tensor,
    weight: Option<&Tensor>,
    shift: &Tensor,
    scale: &Tensor,
    eps: f64,
    kind: NormKind,
) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let xn = match kind {
        NormKind::Layer => {
            let mean = xf.mean_keepdim(D::Minus1)?;
            let xc = xf.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            xc.broadcast_div(&(var + eps)?.sqrt()?)?
        }
        NormKind::Rms => {
            let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
            xf.broadcast_div(&(ms + eps)?.sqrt()?)?
        }
    };
    let xn = match weight {
        Some(w) => xn.broadcast_mul(&w.to_dtype(DType::F32)?)?,
        None => xn,
    };
    let scale = unsqueeze_to(&scale.to_dtype(DType::F32)?, 3)?;
    let shift = unsqueeze_to(&shift.to_dtype(DType::F32)?, 3)?;
    let y = xn.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?;
    Ok(y.to_dtype(dtype)?)
}

/// The fused op over (x, shift f32, scale f32).
#[derive(Debug, Clone, Copy)]
pub struct NormModulateOp {
    /// Variance epsilon.
    pub eps: f32,
    /// LayerNorm or RMSNorm.
    pub kind: NormKind,
}

impl candle_core::CustomOp3 for NormModulateOp {
    fn name(&self) -> &'static str {
        "vw-norm-modulate"
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
        let full = l1.shape().dims3()?;
        let full = [full.0, full.1, full.2];
        let st = |l: &Layout| -> candle_core::Result<[usize; 3]> {
            let t = Tensor::zeros(l.shape(), DType::F32, &candle_core::Device::Cpu)?;
            bcast_strides("norm_modulate", "operand", &t, full).map_err(candle_core::Error::wrap)
        };
        let out = reference_norm(
            &storage_f32(s1, l1)?,
            full,
            (&storage_f32(s2, l2)?, st(l2)?),
            (&storage_f32(s3, l3)?, st(l3)?),
            self.eps,
            self.kind,
        );
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
        crate::cuda::norm_modulate_fwd(self, s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (eps, kind) = (self.eps as f64, self.kind);
        let g =
            crate::util::recompute_grads(&[x, shift, scale], grad, |t| composed(&t[0], None, &t[1], &t[2], eps, kind))
                .map_err(candle_core::Error::wrap)?;
        let mut g = g.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

/// The gated-residual op over (x, gate f32, y).
#[derive(Debug, Clone, Copy)]
pub struct GatedResidualOp;

impl candle_core::CustomOp3 for GatedResidualOp {
    fn name(&self) -> &'static str {
        "vw-gated-residual"
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
        let (b, l, c) = l1.shape().dims3()?;
        let t = Tensor::zeros(l2.shape(), DType::F32, &candle_core::Device::Cpu)?;
        let gs = bcast_strides("gated_residual", "gate", &t, [b, l, c]).map_err(candle_core::Error::wrap)?;
        let out = reference_gated(&storage_f32(s1, l1)?, [b, l, c], (&storage_f32(s2, l2)?, gs), &storage_f32(s3, l3)?);
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
        crate::cuda::gated_residual_fwd(s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gate: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = crate::util::recompute_grads(&[x, gate, y], grad, |t| gated_residual_composed(&t[0], &t[1], &t[2]))
            .map_err(candle_core::Error::wrap)?;
        let mut g = g.into_iter();
        Ok((g.next(), g.next(), g.next()))
    }
}

/// Plain-Rust reference of the fused norm + modulation; operands are (values, (b,l,c) strides).
pub fn reference_norm(
    x: &[f32],
    [b, l, c]: [usize; 3],
    (shift, ss): (&[f32], [usize; 3]),
    (scale, sc): (&[f32], [usize; 3]),
    eps: f32,
    kind: NormKind,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        for li in 0..l {
            let row = &x[(bi * l + li) * c..(bi * l + li + 1) * c];
            let (mean, denom) = match kind {
                NormKind::Layer => {
                    let mean = row.iter().sum::<f32>() / c as f32;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
                    (mean, (var + eps).sqrt())
                }
                NormKind::Rms => (0.0, (row.iter().map(|v| v * v).sum::<f32>() / c as f32 + eps).sqrt()),
            };
            for ci in 0..c {
                let sh = shift[bi * ss[0] + li * ss[1] + ci * ss[2]];
                let sc_ = scale[bi * sc[0] + li * sc[1] + ci * sc[2]];
                out[(bi * l + li) * c + ci] = (row[ci] - mean) / denom * (1.0 + sc_) + sh;
            }
        }
    }
    out
}

/// Plain-Rust reference of `x + gate * y`; gate is (values, (b,l,c) strides).
pub fn reference_gated(x: &[f32], [b, l, c]: [usize; 3], (gate, gs): (&[f32], [usize; 3]), y: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for bi in 0..b {
        for li in 0..l {
            for ci in 0..c {
                let i = (bi * l + li) * c + ci;
                out[i] = x[i] + gate[bi * gs[0] + li * gs[1] + ci * gs[2]] * y[i];
            }
        }
    }
    out
}
