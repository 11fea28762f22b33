//! Small helpers shared by the ops: shape checks and host copies for the CPU references.

use crate::{Error, Result};
use candle_core::{backend::BackendStorage, CpuStorage, DType, Layout, Tensor};

/// A shape error of `op`.
pub(crate) fn shape_err(op: &'static str, msg: impl Into<String>) -> Error {
    Error::Shape { op, msg: msg.into() }
}

/// The dims of `t`, which must have rank `N`.
pub(crate) fn dims_n<const N: usize>(op: &'static str, name: &str, t: &Tensor) -> Result<[usize; N]> {
    let d = t.dims();
    if d.len() != N {
        return Err(shape_err(op, format!("{name} must have rank {N}, found shape {:?}", t.shape())));
    }
    let mut out = [0; N];
    out.copy_from_slice(d);
    Ok(out)
}

/// Left-pads `t`'s shape with 1s up to rank `n`, so a broadcastable operand can be indexed 4D/3D.
pub(crate) fn unsqueeze_to(t: &Tensor, n: usize) -> Result<Tensor> {
    let mut dims = vec![1; n.saturating_sub(t.rank())];
    dims.extend_from_slice(t.dims());
    Ok(t.reshape(dims)?)
}

/// A tensor's values as f32 on the host, in row-major order (any dtype, any layout, any device).
pub fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A CPU storage's values as f32 in row-major order, honouring the layout's strides and offset.
pub(crate) fn storage_f32(s: &CpuStorage, l: &Layout) -> candle_core::Result<Vec<f32>> {
    fn gather<T: Copy>(data: &[T], l: &Layout, f: impl Fn(T) -> f32) -> Vec<f32> {
        match l.contiguous_offsets() {
            Some((a, b)) => data[a..b].iter().map(|&x| f(x)).collect(),
            None => Vec::new(),
        }
    }
    if l.contiguous_offsets().is_none() {
        candle_core::bail!("vw-tensor-kernels custom ops take contiguous operands");
    }
    Ok(match s {
        CpuStorage::F32(d) => gather(d, l, |x| x),
        CpuStorage::BF16(d) => gather(d, l, |x| x.to_f32()),
        CpuStorage::F16(d) => gather(d, l, |x| x.to_f32()),
        CpuStorage::F64(d) => gather(d, l, |x| x as f32),
        other => candle_core::bail!("expected a float tensor, found {:?}", other.dtype()),
    })
}

/// Wraps f32 results as a CPU storage of `dtype` (the op's output dtype follows its input).
pub(crate) fn f32_storage(v: Vec<f32>, dtype: DType) -> candle_core::Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        DType::F64 => CpuStorage::F64(v.into_iter().map(f64::from).collect()),
        d => candle_core::bail!("unsupported output dtype {d:?}"),
    })
}

/// Gradients of `f(inputs) · grad` w.r.t. each input, recomputed through a fresh autograd graph:
/// the backward of a custom op whose forward is a kernel and whose math is a composed function.
pub(crate) fn recompute_grads(
    inputs: &[&Tensor],
    grad: &Tensor,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars =
        inputs.iter().map(|t| candle_core::Var::from_tensor(&t.detach())).collect::<candle_core::Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts)?;
    let loss = (out.to_dtype(DType::F32)? * grad.to_dtype(DType::F32)?)?.sum_all()?;
    let grads = loss.backward()?;
    ts.iter()
        .map(|t| match grads.get(t) {
            Some(g) => Ok(g.clone()),
            None => Ok(t.zeros_like()?),
        })
        .collect()
}

/// Deterministic uniform values in [-1, 1) (splitmix64), for tests, checks and benches.
pub fn random_f32(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A random f32 tensor of `shape` on `device` (values from [`random_f32`]).
pub fn random_tensor(seed: u64, shape: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(random_f32(seed, n), shape, device)?)
}

/// Largest |a - b| / max(1, |b|) over two tensors of one shape (compared on the host in f32).
pub fn max_rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        return Err(shape_err("max_rel_err", format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    let (a, b) = (host_f32(a)?, host_f32(b)?);
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| if x.is_nan() || y.is_nan() { f32::INFINITY } else { (x - y).abs() / y.abs().max(1.0) })
        .fold(0.0, f32::max))
}
