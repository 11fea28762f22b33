//! 2D convolution for models that *train* on the CPU: patch convolutions (kernel = stride, no
//! padding, 1x1 included) as a reshape + matmul, and pixel shuffles, all with cheap backwards.
//!
//! candle's CPU conv2d forward is fast (im2col + gemm), but its backward goes through candle's
//! direct `conv_transpose2d` and dilated conv2d loops, which made the CraftWorld models spend more
//! than 90% of a training step there (perf: `vec_dot_f32` + closure loops, gemm at 2%). A patch
//! convolution needs no overlapping windows: im2col is [`space_to_depth`] (one copy, its backward
//! another) and the rest is one matmul. Overlapping kernels stay on candle's conv2d: a general
//! im2col composed of slicing ops was measured and was no faster there (docs/performance.md).
//! The weight layout and the `weight` / `bias` key names are those of `candle_nn::Conv2d` (and
//! PyTorch's `nn.Conv2d`), so checkpoints are interchangeable and [`conv2d`] is a drop-in for
//! `candle_nn::conv2d`.

use crate::util::shape_err;
use crate::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// conv2d of `x` (N, C, H, W) with `weight` (O, C, k, k) (+ `bias` (O)) at stride k, no padding:
/// non-overlapping k x k patches. Rows and columns that do not fill a patch are dropped, as a
/// strided conv drops them.
pub fn patch_conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "patch_conv2d";
    let (n, c, h, w) = x.dims4().map_err(|_| shape_err(OP, format!("x must be (N,C,H,W), got {:?}", x.dims())))?;
    let (o, wc, k, kw) =
        weight.dims4().map_err(|_| shape_err(OP, format!("weight must be (O,C,k,k), got {:?}", weight.dims())))?;
    if wc != c {
        return Err(shape_err(OP, format!("x has {c} channels, weight expects {wc}")));
    }
    if k == 0 || k != kw || h < k || w < k {
        return Err(shape_err(OP, format!("input {h}x{w} does not hold a {k}x{kw} patch")));
    }
    let (ho, wo) = (h / k, w / k);
    let x = x.narrow(2, 0, ho * k)?.narrow(3, 0, wo * k)?;
    // Column index c*k*k + dy*k + dx, as weight.reshape((O, C*k*k)).
    let cols = space_to_depth(&x, k)?.reshape((n, c * k * k, ho * wo))?;
    let y = weight.reshape((o, c * k * k))?.broadcast_left(n)?.matmul(&cols)?.reshape((n, o, ho, wo))?;
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

/// A conv2d layer (groups 1, dilation 1): [`patch_conv2d`] for patch kernels, candle's conv2d otherwise.
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
    /// Patch convolutions (kernel = stride, no padding, 1x1 included) run as [`patch_conv2d`];
    /// overlapping kernels run candle's conv2d, whose im2col + gemm measured faster than a
    /// composed im2col there (2 cores, 9->16 ch, 64x64, stride 2, batch 32: candle 101 ms vs
    /// composed 162 ms forward + backward).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.weight.dim(3)? == self.stride && self.padding == 0 {
            return patch_conv2d(x, &self.weight, self.bias.as_ref())
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

    /// Forward and both gradients of the layer equal candle's own conv2d on awkward sizes, patch
    /// kernels (the composed path, sizes that do and do not fill whole patches) and overlapping ones.
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
            (1, 3, 4, 7, 9, 2, 2, 0),
            (2, 2, 3, 9, 9, 3, 3, 0),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let x = Var::from_tensor(&random_tensor(seed, &[n, c, h, w], &dev)?)?;
            let wt = Var::from_tensor(&random_tensor(seed + 1, &[o, c, k, k], &dev)?)?;
            let b = Var::from_tensor(&random_tensor(seed + 2, &[o], &dev)?)?;
            let layer = Conv2d::new(wt.as_tensor().clone(), Some(b.as_tensor().clone()), s, p);
            let ours = layer.forward(x.as_tensor())?;
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
    fn rejects_bad_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 4, 2, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(patch_conv2d(&x, &w, None).unwrap_err().to_string().contains("channels"));
        let w = Tensor::zeros((2, 3, 7, 7), candle_core::DType::F32, &dev).unwrap();
        assert!(patch_conv2d(&x, &w, None).is_err());
    }
}
