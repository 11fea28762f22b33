//! 2D convolution composed from tensor ops (im2col by strided slicing, then one matmul), pixel
//! shuffles and nearest upsampling with cheap backwards, for models that *train* on the CPU.
//!
//! candle's CPU conv2d forward is fast (im2col + gemm), but its backward goes through candle's
//! direct `conv_transpose2d` and dilated conv2d loops, which made the CraftWorld models spend more
//! than 90% of a training step there (perf: `vec_dot_f32` + closure loops, gemm at 2%). Here every
//! step — zero padding, slicing, reshapes, concatenation, matmul — has a gemm- or copy-bound
//! backward in candle, so forward and backward cost about the same. The weight layout and the
//! `weight` / `bias` key names are those of `candle_nn::Conv2d` (and PyTorch's `nn.Conv2d`), so
//! checkpoints are interchangeable and [`conv2d`] is a drop-in for `candle_nn::conv2d`.

use crate::util::shape_err;
use crate::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// `n` elements of dim `d` starting at `start` with step `step`: x[.., start::step][..n].
fn strided(x: &Tensor, d: usize, start: usize, step: usize, n: usize) -> candle_core::Result<Tensor> {
    if step == 1 {
        return x.narrow(d, start, n);
    }
    // Take start .. start + step*(n-1) + 1, pad to step*n, split the dim into (n, step), keep index 0.
    let span = step * (n - 1) + 1;
    let x = x.narrow(d, start, span)?.pad_with_zeros(d, 0, step - 1)?;
    let mut shape = x.dims().to_vec();
    shape[d] = n;
    shape.insert(d + 1, step);
    x.reshape(shape)?.narrow(d + 1, 0, 1)?.squeeze(d + 1)
}

/// conv2d of `x` (N, C, H, W) with `weight` (O, C, k, k) (+ `bias` (O)), groups 1, dilation 1.
pub fn conv2d_im2col(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let (n, c, h, w) = x.dims4().map_err(|_| shape_err(OP, format!("x must be (N,C,H,W), got {:?}", x.dims())))?;
    let (o, wc, kh, kw) =
        weight.dims4().map_err(|_| shape_err(OP, format!("weight must be (O,C,k,k), got {:?}", weight.dims())))?;
    if wc != c {
        return Err(shape_err(OP, format!("x has {c} channels, weight expects {wc}")));
    }
    if stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        return Err(shape_err(
            OP,
            format!("input {h}x{w} + padding {padding} is shorter than kernel {kh}x{kw} (stride {stride})"),
        ));
    }
    let ho = (h + 2 * padding - kh) / stride + 1;
    let wo = (w + 2 * padding - kw) / stride + 1;
    if kh == stride && kw == stride && padding == 0 && h % stride == 0 && w % stride == 0 {
        // Non-overlapping patches: im2col is a reshape + permute (one copy), the backward another.
        let cols = space_to_depth(x, stride)?.reshape((n, c * kh * kw, ho * wo))?;
        return finish(cols, weight, bias, (n, o, ho, wo));
    }
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let mut taps = Vec::with_capacity(kh * kw);
    for ky in 0..kh {
        let rows = strided(&xp, 2, ky, stride, ho)?;
        for kx in 0..kw {
            taps.push(strided(&rows, 3, kx, stride, wo)?);
        }
    }
    // (N, C, k*k, Ho, Wo) -> (N, C*k*k, Ho*Wo): column index c*k*k + ky*k + kx, as weight.reshape((O, C*k*k)).
    let cols = Tensor::stack(&taps, 2)?.reshape((n, c * kh * kw, ho * wo))?;
    finish(cols, weight, bias, (n, o, ho, wo))
}

/// cols (N, C*k*k, Ho*Wo) -> weight-times-cols + bias, (N, O, Ho, Wo).
fn finish(cols: Tensor, weight: &Tensor, bias: Option<&Tensor>, out: (usize, usize, usize, usize)) -> Result<Tensor> {
    let (n, o, _, _) = out;
    let wmat = weight.reshape((o, cols.dim(1)?))?;
    let y = wmat.broadcast_left(n)?.matmul(&cols)?.reshape(out)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, o, 1, 1))?)?,
        None => y,
    })
}

/// (N, C, H, W) -> (N, C*r*r, H/r, W/r), channel `c*r*r + dy*r + dx` holding pixel (r*y + dy, r*x + dx)
/// of channel `c` (the column order of a `k = r` weight reshaped to (O, C*r*r)).
pub fn space_to_depth(x: &Tensor, r: usize) -> Result<Tensor> {
    let (n, c, h, w) =
        x.dims4().map_err(|_| shape_err("space_to_depth", format!("x must be 4-D, got {:?}", x.dims())))?;
    if r == 0 || h % r != 0 || w % r != 0 {
        return Err(shape_err("space_to_depth", format!("{h}x{w} is not divisible by {r}")));
    }
    Ok(x.reshape((n, c, h / r, r, w / r, r))?.permute((0, 1, 3, 5, 2, 4))?.reshape((n, c * r * r, h / r, w / r))?)
}

/// The inverse of [`space_to_depth`] (pixel shuffle): (N, C*r*r, H, W) -> (N, C, H*r, W*r).
pub fn depth_to_space(x: &Tensor, r: usize) -> Result<Tensor> {
    let (n, cr, h, w) =
        x.dims4().map_err(|_| shape_err("depth_to_space", format!("x must be 4-D, got {:?}", x.dims())))?;
    if r == 0 || cr % (r * r) != 0 {
        return Err(shape_err("depth_to_space", format!("{cr} channels are not divisible by {r}x{r}")));
    }
    let c = cr / (r * r);
    Ok(x.reshape((n, c, r, r, h, w))?.permute((0, 1, 4, 2, 5, 3))?.reshape((n, c, h * r, w * r))?)
}

/// Nearest-neighbour upsampling of `x` (N, C, H, W) by an integer `scale` in both spatial dims, as a
/// broadcast: its backward is a sum, where candle's `upsample_nearest2d` backward runs one grouped
/// conv per channel (most of a CraftWorld renderer's backward time before this).
pub fn upsample_nearest(x: &Tensor, scale: usize) -> Result<Tensor> {
    let (n, c, h, w) =
        x.dims4().map_err(|_| shape_err("upsample_nearest", format!("x must be (N,C,H,W), got {:?}", x.dims())))?;
    if scale == 0 {
        return Err(shape_err("upsample_nearest", "scale must be at least 1"));
    }
    Ok(x.reshape((n, c, h, 1, w, 1))?.broadcast_as((n, c, h, scale, w, scale))?.reshape((
        n,
        c,
        h * scale,
        w * scale,
    ))?)
}

/// A conv2d layer (groups 1, dilation 1) computed by [`conv2d_im2col`].
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// From a weight (O, C, k, k), an optional bias (O), stride and zero padding.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Self {
        Self { weight, bias, stride, padding }
    }

    /// The weight (O, C, k, k).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv2d {
    /// Patch convolutions (kernel = stride, no padding, 1x1 included) run as [`space_to_depth`] +
    /// matmul; overlapping kernels run candle's conv2d, whose im2col + gemm measured faster than
    /// the composed path there (`examples` scratch timing, 2 cores: 9->16 ch, 64x64, stride 2,
    /// batch 32: candle 101 ms vs composed 162 ms forward + backward).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let k = self.weight.dim(3)?;
        if k == self.stride && self.padding == 0 {
            return conv2d_im2col(x, &self.weight, self.bias.as_ref(), self.stride, self.padding)
                .map_err(|e| candle_core::Error::Msg(e.to_string()));
        }
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Same initialisation and key names as `candle_nn::conv2d`; groups and dilation must be 1.
pub fn conv2d(cin: usize, cout: usize, k: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    if cfg.groups != 1 || cfg.dilation != 1 {
        return Err(shape_err(
            "conv2d",
            format!("groups {} / dilation {} are not supported (only 1)", cfg.groups, cfg.dilation),
        ));
    }
    let c = candle_nn::conv2d(cin, cout, k, cfg, vb)?;
    Ok(Conv2d::new(c.weight().clone(), c.bias().cloned(), cfg.stride, cfg.padding))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::{max_rel_err, random_tensor};
    use candle_core::{Device, Var};

    /// Forward and both gradients equal candle's own conv2d on awkward sizes.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        for (i, &(n, c, o, h, w, k, s, p)) in [
            (2, 3, 5, 9, 7, 3, 1, 1),
            (1, 4, 6, 13, 11, 3, 2, 1),
            (3, 2, 3, 8, 8, 4, 2, 1),
            (1, 5, 2, 6, 10, 1, 1, 0),
            (2, 3, 4, 7, 7, 2, 3, 0),
            (2, 3, 4, 8, 6, 2, 2, 0),
            (1, 4, 3, 5, 5, 1, 1, 0),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let x = Var::from_tensor(&random_tensor(seed, &[n, c, h, w], &dev)?)?;
            let wt = Var::from_tensor(&random_tensor(seed + 1, &[o, c, k, k], &dev)?)?;
            let b = Var::from_tensor(&random_tensor(seed + 2, &[o], &dev)?)?;
            let ours = conv2d_im2col(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor()), s, p)?;
            let theirs = x.conv2d(wt.as_tensor(), p, s, 1, 1)?.broadcast_add(&b.reshape((1, o, 1, 1))?)?;
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            assert!(max_rel_err(&ours, &theirs)? < 1e-5, "forward case {i}");
            // A fixed random projection of the output as the loss, so every output element matters.
            let proj = random_tensor(seed + 3, ours.dims(), &dev)?;
            let g1 = (&ours * &proj)?.sum_all()?.backward()?;
            let g2 = (&theirs * &proj)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("weight", &wt), ("bias", &b)] {
                let (a, bb) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
                assert!(max_rel_err(a, bb)? < 1e-4, "grad {name} case {i}: {}", max_rel_err(a, bb)?);
            }
        }
        Ok(())
    }

    #[test]
    fn depth_to_space_inverts_space_to_depth() -> Result<()> {
        let x = random_tensor(7, &[2, 3, 6, 4], &Device::Cpu)?;
        let y = space_to_depth(&x, 2)?;
        assert_eq!(y.dims(), &[2, 12, 3, 2]);
        // Pixel (2*1 + 1, 2*0 + 0) of channel 2 sits in channel 2*4 + 1*2 + 0 at (1, 0).
        let a = x.get(1)?.get(2)?.get(3)?.get(0)?.to_scalar::<f32>()?;
        let b = y.get(1)?.get(10)?.get(1)?.get(0)?.to_scalar::<f32>()?;
        assert_eq!(a, b);
        assert_eq!(max_rel_err(&depth_to_space(&y, 2)?, &x)?, 0.0);
        assert!(space_to_depth(&x, 4).is_err());
        Ok(())
    }

    #[test]
    fn upsample_matches_candle_and_its_gradient_sums_blocks() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&random_tensor(5, &[2, 3, 5, 4], &dev)?)?;
        let ours = upsample_nearest(x.as_tensor(), 3)?;
        let theirs = x.upsample_nearest2d(15, 12)?;
        assert_eq!(max_rel_err(&ours, &theirs)?, 0.0);
        let proj = random_tensor(6, ours.dims(), &dev)?;
        let g = (&ours * &proj)?.sum_all()?.backward()?;
        let g = g.get(&x).expect("grad");
        // d/dx[i,j] = sum of proj over the 3x3 block that x[i,j] was copied to.
        let expect = proj.reshape((2, 3, 5, 3, 4, 3))?.sum(5)?.sum(3)?;
        assert!(max_rel_err(g, &expect)? < 1e-6);
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 4, 3, 3), candle_core::DType::F32, &dev).unwrap();
        assert!(conv2d_im2col(&x, &w, None, 1, 1).unwrap_err().to_string().contains("channels"));
        let w = Tensor::zeros((2, 3, 7, 7), candle_core::DType::F32, &dev).unwrap();
        assert!(conv2d_im2col(&x, &w, None, 1, 1).is_err());
    }
}
