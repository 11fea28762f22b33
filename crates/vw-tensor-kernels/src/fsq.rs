//! Finite scalar quantisation, exactly as the official VideoWorld 2 `FSQuantizer`
//! (`videoworld2/latent_dynamics/modules/quantizers.py`): bound with tanh and a half-level offset
//! for even levels, round (straight-through), normalise by the half width `level / 2` (integer
//! division), index = sum of `(code * half_width + half_width) * basis` with basis = cumprod of
//! `[1] + levels[:-1]`. The CUDA path (`kernels/fsq.cu`) fuses bound, round, normalise and index.

use crate::util::{shape_err, storage_f32};
use crate::Result;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor, D};

/// The bound's epsilon in the reference (`half_l = (levels - 1) * (1 + eps) / 2`).
const BOUND_EPS: f64 = 1e-3;

/// Per-level constants (half_l, offset, shift, half_width, basis), in f64 for exactness.
pub(crate) fn level_constants(levels: &[usize]) -> Result<Vec<[f64; 5]>> {
    if levels.is_empty() || levels.iter().any(|&l| l < 2) {
        return Err(shape_err("fsq", format!("levels {levels:?} must be non-empty and each >= 2")));
    }
    let mut basis = 1usize;
    let mut out = Vec::new();
    for &l in levels {
        let half_l = (l as f64 - 1.0) * (1.0 + BOUND_EPS) / 2.0;
        let offset = if l % 2 == 0 { 0.5 } else { 0.0 };
        let shift = (offset / half_l).atanh();
        out.push([half_l, offset, shift, (l / 2) as f64, basis as f64]);
        basis = basis
            .checked_mul(l)
            .ok_or_else(|| shape_err("fsq", format!("codebook size of levels {levels:?} overflows")))?;
    }
    if basis > u32::MAX as usize {
        return Err(shape_err("fsq", format!("codebook size {basis} of levels {levels:?} does not fit u32")));
    }
    Ok(out)
}

/// The per-level digits of a code index (mixed radix, the first level least significant — the
/// convention of [`fsq_quantize`]'s indices): `digits[k]` is in `0..levels[k]`.
pub fn index_digits(index: u32, levels: &[usize]) -> Vec<usize> {
    let mut rest = index as usize;
    levels
        .iter()
        .map(|&l| {
            let d = rest % l;
            rest /= l;
            d
        })
        .collect()
}

/// Number of codes of `levels` (their product).
pub fn codebook_size(levels: &[usize]) -> usize {
    levels.iter().product()
}

fn level_tensor(levels: &[usize], col: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<f32> = level_constants(levels)?.iter().map(|c| c[col] as f32).collect();
    Ok(Tensor::from_vec(v, levels.len(), dev)?)
}

/// FSQ's bound of z (..., D), D = levels.len(): `tanh(z + shift) * half_l - offset` per level, in
/// f32 and differentiable; rounding it gives each latent's level, dividing by [`half_widths`] a code.
pub fn fsq_bound(z: &Tensor, levels: &[usize]) -> Result<Tensor> {
    if z.dims().last() != Some(&levels.len()) {
        return Err(shape_err("fsq_bound", format!("z {:?} needs a last dim of {} levels", z.dims(), levels.len())));
    }
    let dev = z.device();
    let (half_l, offset, shift) =
        (level_tensor(levels, 0, dev)?, level_tensor(levels, 1, dev)?, level_tensor(levels, 2, dev)?);
    Ok(z.to_dtype(DType::F32)?.broadcast_add(&shift)?.tanh()?.broadcast_mul(&half_l)?.broadcast_sub(&offset)?)
}

/// The half widths `level / 2` (f32, (D,)) that map a rounded [`fsq_bound`] into [-1, 1].
pub fn half_widths(levels: &[usize], dev: &candle_core::Device) -> Result<Tensor> {
    level_tensor(levels, 3, dev)
}

/// Quantises z (..., D) with D = levels.len(): returns the straight-through codes in [-1, 1]
/// (z's dtype; gradient flows through the tanh bound) and the code indices (u32, shape (...)).
pub fn fsq_quantize(z: &Tensor, levels: &[usize]) -> Result<(Tensor, Tensor)> {
    let d = *z.dims().last().ok_or_else(|| shape_err("fsq_quantize", "z must have a channel dim"))?;
    if d != levels.len() {
        return Err(shape_err(
            "fsq_quantize",
            format!("z {:?} has last dim {d}, levels {levels:?} need {}", z.shape(), levels.len()),
        ));
    }
    if z.device().is_cuda() {
        let codes = z.contiguous()?.apply_op1(FsqOp { levels: levels.to_vec(), want: FsqOutput::Codes })?;
        let idx = z.contiguous()?.apply_op1_no_bwd(&FsqOp { levels: levels.to_vec(), want: FsqOutput::Indices })?;
        return Ok((codes, idx));
    }
    composed(z, levels)
}

/// Composed candle FSQ (differentiable codes, straight-through round); indices via f32 sums.
pub fn composed(z: &Tensor, levels: &[usize]) -> Result<(Tensor, Tensor)> {
    let dev = z.device();
    let (hw, basis) = (half_widths(levels, dev)?, level_tensor(levels, 4, dev)?);
    let bounded = fsq_bound(z, levels)?;
    let rounded = round_half_even(&bounded.detach())?;
    let ste = (&bounded + (&rounded - bounded.detach())?)?;
    let codes = ste.broadcast_div(&hw)?.to_dtype(z.dtype())?;
    let idx = rounded.broadcast_add(&hw)?.broadcast_mul(&basis)?.sum(D::Minus1)?.to_dtype(DType::U32)?;
    Ok((codes, idx))
}

/// Rounds half to even, as the reference and torch.round (candle's `round` rounds ties away from
/// zero, which gave another index than the CUDA kernel on exact ties).
fn round_half_even(x: &Tensor) -> Result<Tensor> {
    let tie = (x - x.floor()?)?.eq(0.5)?;
    let even = ((x * 0.5)?.round()? * 2.0)?;
    Ok(tie.where_cond(&even, &x.round()?)?)
}

/// Code vectors (..., D) in [-1, 1] (f32) of indices (...) (any integer dtype).
pub fn fsq_indices_to_codes(indices: &Tensor, levels: &[usize]) -> Result<Tensor> {
    level_constants(levels)?;
    if indices.device().is_cuda() {
        let idx = indices.to_dtype(DType::U32)?.contiguous()?;
        return Ok(idx.apply_op1_no_bwd(&FsqOp { levels: levels.to_vec(), want: FsqOutput::Decode })?);
    }
    let idx: Vec<u32> = indices.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
    let mut shape = indices.dims().to_vec();
    shape.push(levels.len());
    Ok(Tensor::from_vec(reference_decode(&idx, levels)?, shape, indices.device())?)
}

/// What a [`FsqOp`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsqOutput {
    /// Normalised codes (z's dtype), straight-through gradient.
    Codes,
    /// u32 indices over the last dim.
    Indices,
    /// Codes (f32) from u32 indices.
    Decode,
}

/// The fused op.
#[derive(Debug, Clone)]
pub struct FsqOp {
    /// Levels per channel.
    pub levels: Vec<usize>,
    /// Which output.
    pub want: FsqOutput,
}

impl candle_core::CustomOp1 for FsqOp {
    fn name(&self) -> &'static str {
        "vw-fsq"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let wrap = candle_core::Error::wrap;
        let d = self.levels.len();
        match self.want {
            FsqOutput::Decode => {
                let idx: Vec<u32> = match s {
                    CpuStorage::U32(v) => match l.contiguous_offsets() {
                        Some((a, b)) => v[a..b].to_vec(),
                        None => candle_core::bail!("fsq decode takes contiguous indices"),
                    },
                    _ => candle_core::bail!("fsq decode expects u32 indices"),
                };
                let mut shape = l.dims().to_vec();
                shape.push(d);
                Ok((CpuStorage::F32(reference_decode(&idx, &self.levels).map_err(wrap)?), Shape::from(shape)))
            }
            want => {
                let z = storage_f32(s, l)?;
                let (codes, idx) = reference(&z, &self.levels).map_err(wrap)?;
                if want == FsqOutput::Codes {
                    Ok((crate::util::f32_storage(codes, s.dtype())?, l.shape().clone()))
                } else {
                    let dims = l.dims();
                    Ok((CpuStorage::U32(idx), Shape::from(dims[..dims.len() - 1].to_vec())))
                }
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::fsq_fwd(self, s, l)
    }

    fn bwd(&self, z: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d codes / dz = half_l * (1 - tanh^2(z + shift)) / half_width (round is straight-through).
        let f = || -> Result<Tensor> {
            let dev = z.device();
            let (half_l, shift, hw) = (
                level_tensor(&self.levels, 0, dev)?,
                level_tensor(&self.levels, 2, dev)?,
                level_tensor(&self.levels, 3, dev)?,
            );
            let t = z.to_dtype(DType::F32)?.broadcast_add(&shift)?.tanh()?;
            let dt = (t.sqr()?.neg()? + 1.0)?.broadcast_mul(&half_l.broadcast_div(&hw)?)?;
            Ok((dt * grad.to_dtype(DType::F32)?)?.to_dtype(z.dtype())?)
        };
        Ok(Some(f().map_err(candle_core::Error::wrap)?))
    }
}

/// The reference's rounded level of one latent `v` (before dividing by the half width), with the
/// level constants `c` of [`level_constants`] in f32: `round_half_even(tanh(v + shift) * half_l - offset)`.
#[inline]
pub(crate) fn round_level(v: f32, c: [f32; 5]) -> f32 {
    let [half_l, offset, shift, _, _] = c;
    ((v + shift).tanh() * half_l - offset).round_ties_even()
}

/// Plain-Rust reference over a row-major (N, D) buffer: (codes, indices). Rounds half to even, as torch.
pub fn reference(z: &[f32], levels: &[usize]) -> Result<(Vec<f32>, Vec<u32>)> {
    let c = level_constants(levels)?;
    let d = levels.len();
    let mut codes = vec![0f32; z.len()];
    let mut idx = vec![0u32; z.len() / d];
    for (n, row) in z.chunks(d).enumerate() {
        let mut acc = 0f32;
        for (i, &v) in row.iter().enumerate() {
            let [_, _, _, hw, basis] = c[i].map(|x| x as f32);
            let r = round_level(v, c[i].map(|x| x as f32));
            codes[n * d + i] = r / hw;
            acc += (r + hw) * basis;
        }
        idx[n] = acc as u32;
    }
    Ok((codes, idx))
}

/// Plain-Rust decode of indices to normalised codes (row-major (N, D)).
pub fn reference_decode(idx: &[u32], levels: &[usize]) -> Result<Vec<f32>> {
    let c = level_constants(levels)?;
    let mut out = Vec::with_capacity(idx.len() * levels.len());
    for &i in idx {
        for (k, digit) in index_digits(i, levels).into_iter().enumerate() {
            let hw = c[k][3] as f32;
            out.push((digit as f32 - hw) / hw);
        }
    }
    Ok(out)
}

/// The rounded level of the reference as a step function of the latent, for one level count:
/// `values[0]` for `v < thresholds[0]`, `values[j + 1]` for `thresholds[j] <= v < thresholds[j + 1]`
/// (IEEE comparisons; NaN maps to NaN). The values are the distinct results of the reference's
/// rounding in f32 total order, so the signed zeros count as two steps (`-0` below the crossing,
/// as `round_half_even` of a small negative number gives). The CUDA kernel compares against these
/// thresholds instead of evaluating tanh, so it returns the reference's values bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelSteps {
    /// Smallest f32 at which the rounded level moves to the next value (ascending).
    pub thresholds: Vec<f32>,
    /// The rounded levels, `thresholds.len() + 1` of them, ascending in f32 total order.
    pub values: Vec<f32>,
}

impl LevelSteps {
    /// The rounded level of `v` read off the steps (what the CUDA kernel computes).
    pub fn level(&self, v: f32) -> f32 {
        if v.is_nan() {
            return v;
        }
        let mut out = self.values[0];
        for (t, &q) in self.thresholds.iter().zip(&self.values[1..]) {
            if v >= *t {
                out = q;
            }
        }
        out
    }
}

/// Key of `v` in f32 total order (for bisection over all non-NaN floats).
fn order_key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

fn from_order_key(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// The step function of the reference's rounding for each level (see [`LevelSteps`]), found by
/// bisection over all f32 on [`reference`]'s own arithmetic, from -inf upwards: each threshold is
/// the smallest float whose rounded level exceeds (in f32 total order) the level just below it.
/// Exact when the rounding is monotone in z, which holds because f32 `tanh` is monotone (checked over
/// every f32 by the ignored test `fsq_tanh_monotone_over_all_f32`) and the rest (add, multiply by a
/// positive constant, subtract, round) are monotone IEEE operations; the CPU tests also compare the
/// steps with the reference on sweeps of random and edge values.
pub fn level_steps(levels: &[usize]) -> Result<Vec<LevelSteps>> {
    let cs = level_constants(levels)?;
    let mut out = Vec::with_capacity(levels.len());
    for (&l, c) in levels.iter().zip(cs) {
        let c = c.map(|x| x as f32);
        // Keys as i64: the distance between two i32 keys can exceed i32::MAX.
        let r = |k: i64| round_level(from_order_key(k as i32), c);
        let (lo_key, hi_key) = (order_key(f32::NEG_INFINITY) as i64, order_key(f32::INFINITY) as i64);
        let top = r(hi_key);
        let mut values = vec![r(lo_key)];
        let mut thresholds = Vec::new();
        let mut from = lo_key;
        while values.last().is_some_and(|q| q.total_cmp(&top).is_lt()) {
            let cur = *values.last().unwrap_or(&top);
            // Invariant: r(lo) <= cur (total order), r(hi) > cur.
            let (mut lo, mut hi) = (from, hi_key);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if r(mid).total_cmp(&cur).is_gt() {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            let q = r(hi);
            // A level of l values has l + 1 steps at most (the signed zeros split one); +0.0 as a
            // threshold would put -0.0 on the wrong side of an IEEE comparison.
            if q.is_nan() || thresholds.len() > l || from_order_key(hi as i32).to_bits() == 0 {
                return Err(shape_err(
                    "fsq",
                    format!("rounding of level {l} is not a step function of IEEE thresholds"),
                ));
            }
            thresholds.push(from_order_key(hi as i32));
            values.push(q);
            from = hi;
        }
        out.push(LevelSteps { thresholds, values });
    }
    Ok(out)
}

/// One channel's constants of the CUDA threshold kernels (`fsq_level`, `fsq_code`, `fsq_digit` in
/// `kernels/fsq.cu`), with the kernels' arithmetic mirrored on the CPU by [`KernelSteps::code`] and
/// [`KernelSteps::digit`] so the tests can hold it against the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSteps {
    /// All steps of the rounded level (the [`LevelSteps`] thresholds).
    pub thresholds: Vec<f32>,
    /// The steps of the digit `level + half_width`: the thresholds without the -0 -> +0 one.
    pub digit_thresholds: Vec<f32>,
    /// Level below the first step.
    pub base: f32,
    /// Number of steps passed at which the level is -0 (1e9: never).
    pub zneg: f32,
    /// The half width and its f32 reciprocal.
    pub hw: f32,
    /// `1 / hw` rounded to f32.
    pub inv_hw: f32,
}

impl KernelSteps {
    fn count(ts: &[f32], v: f32) -> f32 {
        ts.iter().map(|&t| if v >= t { 1f32 } else { 0f32 }).sum()
    }

    /// The rounded level as the kernel computes it (count of steps passed).
    pub fn level(&self, v: f32) -> f32 {
        let c = Self::count(&self.thresholds, v);
        let q = if c == self.zneg { -0.0 } else { self.base + c - if c > self.zneg { 1.0 } else { 0.0 } };
        if v.is_nan() {
            v
        } else {
            q
        }
    }

    fn divide(&self, q: f32) -> f32 {
        let y0 = q * self.inv_hw;
        let e = (-y0).mul_add(self.hw, q);
        e.mul_add(self.inv_hw, y0).copysign(q)
    }

    /// The code `level / hw` as the kernel computes it (reciprocal, one FMA residual step, sign of q).
    pub fn code(&self, v: f32) -> f32 {
        self.divide(self.level(v))
    }

    /// The index digit `level + hw` as the kernel computes it (count of digit steps passed).
    pub fn digit(&self, v: f32) -> f32 {
        if v.is_nan() {
            v
        } else {
            Self::count(&self.digit_thresholds, v)
        }
    }
}

/// The CUDA threshold kernels' constants for `levels`, or `None` where their arithmetic cannot
/// reproduce the reference for every level value of some channel (the levels are not consecutive
/// integers with one split zero, the lowest is not `-hw`, or the reciprocal division differs from
/// the IEEE quotient for one of them); the caller then takes the tanh kernel.
pub fn kernel_steps(levels: &[usize]) -> Result<Option<Vec<KernelSteps>>> {
    let Ok(steps) = level_steps(levels) else { return Ok(None) };
    let cs = level_constants(levels)?;
    let mut out = Vec::with_capacity(levels.len());
    for (s, c) in steps.iter().zip(cs) {
        let hw = c[3] as f32;
        let zpos = s.values.iter().position(|v| v.to_bits() == (-0f32).to_bits());
        let k = KernelSteps {
            thresholds: s.thresholds.clone(),
            digit_thresholds: s
                .thresholds
                .iter()
                .enumerate()
                .filter(|&(j, _)| Some(j) != zpos)
                .map(|(_, &t)| t)
                .collect(),
            base: s.values[0],
            zneg: zpos.map_or(1e9, |z| z as f32),
            hw,
            inv_hw: 1.0 / hw,
        };
        // Level after c steps, its code and its digit, against the reference's values.
        let ok = s.values.iter().enumerate().all(|(c, &want)| {
            let c = c as f32;
            let q = if c == k.zneg { -0.0 } else { k.base + c - if c > k.zneg { 1.0 } else { 0.0 } };
            q.to_bits() == want.to_bits() && k.divide(want).to_bits() == (want / hw).to_bits()
        }) && k.base + hw == 0.0;
        if !ok {
            return Ok(None);
        }
        out.push(k);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composed_rounding_breaks_ties_to_even_like_the_reference() -> Result<()> {
        let x = Tensor::new(&[0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 0.3, -0.7, 3.5], &candle_core::Device::Cpu)?;
        let got = round_half_even(&x)?.to_vec1::<f32>()?;
        let want: Vec<f32> = x.to_vec1::<f32>()?.iter().map(|v| v.round_ties_even()).collect();
        assert_eq!(got, want);
        Ok(())
    }
}
