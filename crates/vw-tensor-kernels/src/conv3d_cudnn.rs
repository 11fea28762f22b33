//! conv3d through cuDNN's N-d convolution (`--features cudnn`): the fast path of [`crate::conv3d`]
//! on CUDA while our implicit-GEMM kernel is far from cuDNN's speed (docs/performance.md). Set
//! `VW_CONV3D=kernel` (or `ncdhw`, which also forces the older NCDHW kernel), or call
//! [`set_enabled`]`(false)` as `vw kernel-check` / `kernel-bench` do so that they measure our
//! kernel, to run our kernel instead. cuDNN's bf16 convolution measured up to
//! 1.05e-2 max relative error against the f32 reference where our kernel stays under 4e-3
//! (docs/performance.md), so bf16 outputs differ from the kernel path in the last bits.

use crate::conv3d::{composed, Conv3dDims};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{self, sys, ConvForward, Cudnn, CudnnDataType};
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{bail, CpuStorage, DType, Layout, Shape, Tensor, WithDType};
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

static ON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether [`crate::conv3d`] takes cuDNN on CUDA (default with the feature; `VW_CONV3D=kernel` or
/// [`set_enabled`]`(false)` opts out).
pub fn enabled() -> bool {
    static ENV_OFF: OnceLock<bool> = OnceLock::new();
    let env_off = *ENV_OFF.get_or_init(|| std::env::var("VW_CONV3D").is_ok_and(|v| v == "kernel" || v == "ncdhw"));
    !env_off && ON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Turns the cuDNN path of [`crate::conv3d`] on or off for this process.
pub fn set_enabled(on: bool) {
    ON.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The conv3d as a candle op over (x, w, bias broadcast to the output shape): cuDNN accumulates
/// onto the bias (beta = 1), so conv + bias is rounded to bf16/f16 once, as in our kernel. Backward
/// recomputes through the composed conv2d path, like our kernel's op.
pub(crate) struct CudnnConv3d {
    pub dims: Conv3dDims,
}

thread_local! {
    static HANDLES: std::cell::RefCell<HashMap<String, Arc<Cudnn>>> = Default::default();
}

fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    let key = format!("{:?}", dev.id());
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&key) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(|e| candle_core::Error::Msg(format!("cuDNN: {e:?}")))?;
        h.borrow_mut().insert(key, c.clone());
        Ok(c)
    })
}

fn contiguous_strides(d: &[usize; 5]) -> [i32; 5] {
    let mut s = [1i32; 5];
    for i in (0..4).rev() {
        s[i] = s[i + 1] * d[i + 1] as i32;
    }
    s
}

/// Runs one convolution: `T` the storage type, `C` cuDNN's compute type.
fn run<T, C>(
    d: &Conv3dDims,
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
) -> candle_core::Result<CudaStorage>
where
    T: candle_core::cuda_backend::CudaDType + CudnnDataType + DeviceRepr + WithDType,
    C: CudnnDataType,
{
    let err = |e: cudnn::CudnnError| candle_core::Error::Msg(format!("cuDNN conv3d: {e:?}"));
    let dev = xs.device().clone();
    let c = handle(&dev)?;
    let i32s = |v: &[usize]| v.iter().map(|x| *x as i32).collect::<Vec<_>>();
    let mut conv = c
        .create_convnd::<C>(
            &i32s(&d.padding),
            &i32s(&d.stride),
            &[1, 1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(err)?;
    // Half types on tensor cores; f32 stays exact (no TF32), as its parity bound needs.
    let math = if T::DTYPE == DType::F32 {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    };
    conv.set_math_type(math).map_err(err)?;
    let x = c.create_nd_tensor::<T>(&i32s(&d.x), &contiguous_strides(&d.x)).map_err(err)?;
    let w = c.create_nd_filter::<T>(sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW, &i32s(&d.w)).map_err(err)?;
    let y = c.create_nd_tensor::<T>(&i32s(&d.out), &contiguous_strides(&d.out)).map_err(err)?;
    let fwd = ConvForward { conv: &conv, x: &x, w: &w, y: &y };
    // The heuristic's pick measured as fast as forcing the implicit precomputed GEMM, with the
    // same error (docs/performance.md).
    let algo = fwd.pick_algorithm().map_err(err)?;
    let bytes = fwd.get_workspace_size(algo).map_err(err)?;
    let (xo, xe) = xl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("conv3d: x not contiguous".into()))?;
    let (wo, we) = wl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("conv3d: w not contiguous".into()))?;
    let xv = xs.as_cuda_slice::<T>()?.slice(xo..xe);
    let wv = ws.as_cuda_slice::<T>()?.slice(wo..we);
    let (bo, be) =
        bl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("conv3d: bias not contiguous".into()))?;
    let n: usize = d.out.iter().product();
    if be - bo != n {
        bail!("conv3d: the bias operand has {} elements, the output {n}", be - bo);
    }
    // The output starts as the broadcast bias; cuDNN adds the convolution to it (beta = 1).
    let mut out = dev.cuda_stream().clone_dtod(&bs.as_cuda_slice::<T>()?.slice(bo..be))?;
    // SAFETY: scratch memory for cuDNN, never read by us.
    let mut workspace = unsafe { dev.alloc::<u8>(bytes.max(1))? };
    // SAFETY: descriptors match the buffers' shapes and dtypes; all live on this stream.
    unsafe { fwd.launch(algo, Some(&mut workspace), (T::one(), T::one()), &xv, &wv, &mut out) }.map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

impl candle_core::CustomOp3 for CudnnConv3d {
    fn name(&self) -> &'static str {
        "vw-conv3d-cudnn"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("the cuDNN conv3d runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
        bs: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (d, x, w, b) = (&self.dims, (xs, xl), (ws, wl), (bs, bl));
        let out = match xs.dtype() {
            DType::BF16 => run::<bf16, f32>(d, x, w, b)?,
            DType::F16 => run::<f16, f32>(d, x, w, b)?,
            DType::F32 => run::<f32, f32>(d, x, w, b)?,
            dt => bail!("cuDNN conv3d takes f32/bf16/f16, got {dt:?}"),
        };
        Ok((out, Shape::from(d.out.to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (stride, padding) = (self.dims.stride, self.dims.padding);
        let g = crate::util::recompute_grads(&[x, w], grad, |t| composed(&t[0], &t[1], None, stride, padding))
            .map_err(candle_core::Error::wrap)?;
        let mut g = g.into_iter();
        // The broadcast bias operand's gradient is the output gradient itself.
        Ok((g.next(), g.next(), Some(grad.clone())))
    }
}
