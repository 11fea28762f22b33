//! The 3D Haar wavelet patcher and unpatcher (`Patcher3D` / `UnPatcher3D` of the official
//! `modules/patching.py`, method "haar"), as differentiable tensor ops.
//!
//! One level splits (T, H, W) in halves into 8 bands ordered (t, h, w) low/high with t the slowest,
//! each band `(a ± b ± ...) / 8`; bands go in front of the channels (band * C + c). The patcher first
//! repeats the first frame `patch_size` times so a clip of `1 + k * patch` frames gives `1 + k` latent
//! frames; the unpatcher drops those `patch_size - 1` extra frames.

use crate::{Error, Result};
use candle_core::Tensor;

/// Low / high halves of one level along `axis`: `(even + odd) / sqrt 2`, `(even - odd) / sqrt 2`.
/// An odd length is reflect-padded by one element, as the official `F.pad(mode="reflect")`.
fn split(x: &Tensor, axis: usize) -> Result<(Tensor, Tensor)> {
    let n = x.dim(axis)?;
    let x = if n % 2 == 1 {
        if n < 2 {
            return Err(Error::Invalid(format!("haar patcher: axis {axis} has length 1, cannot reflect-pad")));
        }
        Tensor::cat(&[x, &x.narrow(axis, n - 2, 1)?], axis)?
    } else {
        x.clone()
    };
    let half = x.dim(axis)? / 2;
    let mut shape = x.dims().to_vec();
    shape[axis] = half;
    shape.insert(axis + 1, 2);
    let pairs = x.reshape(shape)?;
    let even = pairs.narrow(axis + 1, 0, 1)?.squeeze(axis + 1)?;
    let odd = pairs.narrow(axis + 1, 1, 1)?.squeeze(axis + 1)?;
    let s = std::f64::consts::FRAC_1_SQRT_2;
    Ok((((&even + &odd)? * s)?, ((&even - &odd)? * s)?))
}

/// Inverse of [`split`] for even lengths: interleaves `(lo + hi) / sqrt 2`, `(lo - hi) / sqrt 2`.
fn merge(lo: &Tensor, hi: &Tensor, axis: usize) -> Result<Tensor> {
    let s = std::f64::consts::FRAC_1_SQRT_2;
    let even = ((lo + hi)? * s)?;
    let odd = ((lo - hi)? * s)?;
    let mut shape = lo.dims().to_vec();
    shape[axis] *= 2;
    Ok(Tensor::stack(&[&even, &odd], axis + 1)?.reshape(shape)?)
}

fn dwt3d(x: &Tensor) -> Result<Tensor> {
    let (l, h) = split(x, 2)?;
    let mut bands = Vec::with_capacity(8);
    for t in [l, h] {
        let (tl, th) = split(&t, 3)?;
        for s in [tl, th] {
            let (sl, sh) = split(&s, 4)?;
            bands.push(sl);
            bands.push(sh);
        }
    }
    // the official rescale by 1 / (2 sqrt 2) per level
    Ok((Tensor::cat(&bands, 1)? * (0.5 * std::f64::consts::FRAC_1_SQRT_2))?)
}

fn idwt3d(x: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    if c % 8 != 0 {
        return Err(Error::Invalid(format!("haar unpatcher: {c} channels is not a multiple of 8")));
    }
    let x = (x * (2.0 * std::f64::consts::SQRT_2))?;
    let b: Vec<Tensor> = x.chunk(8, 1)?;
    let w = |i: usize| merge(&b[2 * i], &b[2 * i + 1], 4);
    let (ll, lh, hl, hh) = (w(0)?, w(1)?, w(2)?, w(3)?);
    let l = merge(&ll, &lh, 3)?;
    let h = merge(&hl, &hh, 3)?;
    merge(&l, &h, 2)
}

/// Haar patching: x (B, C, T, H, W) -> (B, C * p^3, (T - 1) / p + 1, H / p, W / p) for patch size p.
pub fn patch3d(x: &Tensor, patch_size: usize) -> Result<Tensor> {
    if x.rank() != 5 {
        return Err(Error::Invalid(format!("haar patcher expects (B, C, T, H, W), got {:?}", x.shape())));
    }
    let t = x.dim(2)?;
    let first = x.narrow(2, 0, 1)?;
    let reps: Vec<&Tensor> = std::iter::repeat_n(&first, patch_size).collect();
    let mut parts = reps;
    let rest = x.narrow(2, 1, t - 1)?;
    parts.push(&rest);
    let mut x = Tensor::cat(&parts, 2)?;
    for _ in 0..patch_size.ilog2() {
        x = dwt3d(&x)?;
    }
    Ok(x)
}

/// Inverse of [`patch3d`]: (B, C * p^3, T', H', W') -> (B, C, p * T' - (p - 1), p * H', p * W').
pub fn unpatch3d(x: &Tensor, patch_size: usize) -> Result<Tensor> {
    let mut x = x.clone();
    for _ in 0..patch_size.ilog2() {
        x = idwt3d(&x)?;
    }
    let t = x.dim(2)?;
    Ok(x.narrow(2, patch_size - 1, t + 1 - patch_size)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn clip(b: usize, t: usize, h: usize, w: usize) -> Tensor {
        let n = b * 3 * t * h * w;
        let v: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        Tensor::from_vec(v, (b, 3, t, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn shapes_and_round_trip() {
        let x = clip(2, 9, 16, 8);
        let p = patch3d(&x, 4).unwrap();
        assert_eq!(p.dims(), &[2, 192, 3, 4, 2]);
        let y = unpatch3d(&p, 4).unwrap();
        assert_eq!(y.dims(), x.dims());
        let err = (y - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-5, "round trip error {err}");
    }

    #[test]
    fn lowest_band_is_the_block_mean() {
        // one level on a (1,1,2,2,2) block: band 0 is the mean of the 8 values
        let v: Vec<f32> = (0..8).map(|i| i as f32 * 1.5 - 2.0).collect();
        let x = Tensor::from_vec(v.clone(), (1, 1, 2, 2, 2), &Device::Cpu).unwrap();
        let d = dwt3d(&x).unwrap();
        assert_eq!(d.dims(), &[1, 8, 1, 1, 1]);
        let band0 = d.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        let mean = v.iter().sum::<f32>() / 8.0;
        assert!((band0 - mean).abs() < 1e-6);
        // the highest band is the alternating sum over all three axes
        let alt: f32 =
            v.iter().enumerate().map(|(i, x)| if i.count_ones() % 2 == 0 { *x } else { -x }).sum::<f32>() / 8.0;
        let band7 = d.flatten_all().unwrap().to_vec1::<f32>().unwrap()[7];
        assert!((band7 - alt).abs() < 1e-6, "{band7} vs {alt}");
    }
}
