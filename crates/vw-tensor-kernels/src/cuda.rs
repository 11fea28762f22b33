//! CUDA glue: loads the PTX that build.rs compiled from `kernels/*.cu` (once per device), and
//! launches the kernels on candle's CUDA storages. Every op allocates its output here; with
//! [`crate::set_poison_outputs`] on, outputs are filled with 0xFF bytes (NaN / u32::MAX) first, so
//! a kernel that skips an element cannot pass a parity check by accident.

use crate::attention::FlashAttnOp;
use crate::conv3d::Conv3dDims;
use crate::fsq::{FsqOp, FsqOutput};
use crate::norm::{NormKind, NormModulateOp};
use crate::rope::RopeLayout;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    self, CudaFunction, CudaModule, CudaSlice, CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{bail, DType, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

macro_rules! ptx {
    ($name:literal) => {
        include_str!(concat!(env!("OUT_DIR"), "/", $name, ".ptx"))
    };
}
const FLASH: &str = ptx!("flash_attn");
const FLASH90: &str = ptx!("flash_attn_sm90");
const CONV: &str = ptx!("conv3d");
const NORM: &str = ptx!("norm_modulate");
const ROPE: &str = ptx!("rope");
const FSQ: &str = ptx!("fsq");
const VQ: &str = ptx!("vq");

type FuncCache = HashMap<(String, &'static str), CudaFunction>;
type ModuleCache = HashMap<(String, usize), Arc<CudaModule>>;

/// The kernel `name` of the PTX module `ptx` on `dev`, loaded once; `smem` above 48 KiB raises the
/// function's dynamic shared memory limit.
fn func(dev: &CudaDevice, ptx: &'static str, name: &'static str, smem: u32) -> Result<CudaFunction> {
    static CACHE: OnceLock<Mutex<FuncCache>> = OnceLock::new();
    let key = (format!("{:?}", dev.id()), name);
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("kernel cache poisoned".into()))?;
    if let Some(f) = cache.get(&key) {
        return Ok(f.clone());
    }
    static MODULES: OnceLock<Mutex<ModuleCache>> = OnceLock::new();
    let mkey = (key.0.clone(), ptx.as_ptr() as usize);
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("module cache poisoned".into()))?;
    let module = match modules.get(&mkey) {
        Some(m) => m.clone(),
        None => {
            let ctx = dev.cuda_stream().context().clone();
            let m = ctx.load_module(candle_core::cuda_backend::cudarc::nvrtc::Ptx::from_src(ptx)).w()?;
            modules.insert(mkey, m.clone());
            m
        }
    };
    let f = module.load_function(name).w()?;
    if smem > 48 * 1024 {
        use driver::sys::CUfunction_attribute_enum as A;
        f.set_attribute(A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32).w()?;
    }
    cache.insert(key, f.clone());
    Ok(f)
}

/// A fresh output buffer of `n` elements, poisoned when the check harness asks for it.
fn alloc_out<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every kernel below writes all n elements (checked by `vw kernel-check` with poison on).
    let out = unsafe { dev.alloc::<T>(n.max(1))? };
    if crate::poison_outputs() {
        let stream = dev.cuda_stream();
        let (ptr, _sync) = out.device_ptr(&stream);
        // SAFETY: ptr is a live allocation of at least n * size_of::<T>() bytes on this stream.
        unsafe { driver::result::memset_d8_async(ptr, 0xFF, n.max(1) * std::mem::size_of::<T>(), stream.cu_stream()) }
            .w()?;
    }
    Ok(out)
}

fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => bail!("vw-tensor-kernels: CUDA kernels take contiguous operands"),
    }
}

/// Launches `f` with the listed arguments (references that outlive the launch).
macro_rules! launch {
    ($f:expr, $dev:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let stream = $dev.cuda_stream();
        let mut b = stream.launch_builder(&$f);
        $( b.arg($arg); )*
        // SAFETY: argument lists match the kernel signatures in kernels/*.cu.
        unsafe { b.launch($cfg) }.w()?;
    }};
}

fn grid1(n: usize, block: u32) -> LaunchConfig {
    let blocks = n.div_ceil(block as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

fn f32_view<'a>(st: &'a Storage, l: &Layout) -> Result<CudaView<'a, f32>> {
    match st {
        Storage::Cuda(c) => view(c.as_cuda_slice::<f32>()?, l),
        _ => bail!("expected an f32 CUDA tensor"),
    }
}

pub(crate) fn flash_attn_fwd(
    op: &FlashAttnOp,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let [b, h, lq, lk, d] = op.dims;
    let dev = s1.device().clone();
    let (suffix, esz) = match s1.dtype() {
        DType::BF16 => ("bf16", 2),
        DType::F16 => ("f16", 2),
        dt => bail!("flash_attn kernel takes bf16/f16, got {dt:?}"),
    };
    let name: &'static str = match (suffix, d) {
        ("bf16", 64) => "flash_fwd_bf16_d64",
        ("bf16", 128) => "flash_fwd_bf16_d128",
        ("f16", 64) => "flash_fwd_f16_d64",
        ("f16", 128) => "flash_fwd_f16_d128",
        _ => bail!("flash_attn kernel takes head_dim 64 or 128, got {d}"),
    };
    for l in [l1, l2, l3] {
        if l.start_offset() % 8 != 0 {
            bail!("flash_attn kernel needs 16-byte aligned operands");
        }
    }
    if op.mask.is_none() && d == 128 && lq > 0 && lk > 0 && crate::flash_sm90() && is_sm90a(&dev)? {
        return flash_attn_fwd_sm90(op, &dev, s1, l1, s2, l2, s3, l3);
    }
    let smem = (4 * 64 * (d + 8) * esz) as u32;
    let f = func(&dev, FLASH, name, smem)?;
    let cfg = LaunchConfig {
        grid_dim: (lq.div_ceil(64) as u32, (b * h) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem,
    };
    let scale_log2 = op.scale * std::f32::consts::LOG2_E;
    let mask_guard;
    let (mask_view, ms) = match &op.mask {
        Some(m) => {
            let (st, ml) = m.storage_and_layout();
            let md = ml.dims().to_vec();
            let full = [b, h, lq, lk];
            let mut strides = [0i64; 4];
            let mut acc = 1i64;
            for i in (0..4).rev() {
                strides[i] = if md[i] == 1 && full[i] != 1 { 0 } else { acc };
                acc *= md[i] as i64;
            }
            mask_guard = (st, ml.clone());
            (Some(f32_view(&mask_guard.0, &mask_guard.1)?), strides)
        }
        None => (None, [0i64; 4]),
    };
    let n = b * h * lq * d;
    let (lq_i, lk_i, h_i, causal) = (lq as i32, lk as i32, h as i32, op.causal as i32);
    macro_rules! run {
        ($t:ty, $variant:ident) => {{
            let (q, k, v) = (
                view(s1.as_cuda_slice::<$t>()?, l1)?,
                view(s2.as_cuda_slice::<$t>()?, l2)?,
                view(s3.as_cuda_slice::<$t>()?, l3)?,
            );
            let out = alloc_out::<$t>(&dev, n)?;
            let null: u64 = 0;
            match &mask_view {
                Some(m) => launch!(f, dev, cfg; &q, &k, &v, &out, m, &h_i, &lq_i, &lk_i, &scale_log2, &causal, &ms[0], &ms[1], &ms[2], &ms[3]),
                None => launch!(f, dev, cfg; &q, &k, &v, &out, &null, &h_i, &lq_i, &lk_i, &scale_log2, &causal, &ms[0], &ms[1], &ms[2], &ms[3]),
            }
            CudaStorageSlice::$variant(out)
        }};
    }
    let slice = match s1.dtype() {
        DType::BF16 => run!(bf16, BF16),
        _ => run!(f16, F16),
    };
    Ok((CudaStorage { slice, device: dev }, Shape::from((b, h, lq, d))))
}

/// Whether the Hopper kernels were built (`cfg(vw_sm90a)`, see build.rs) and `dev` is an sm_90 GPU
/// (sm_90a code runs on compute capability 9.0 only).
fn is_sm90a(dev: &CudaDevice) -> Result<bool> {
    if !cfg!(vw_sm90a) {
        return Ok(false);
    }
    Ok(dev.cuda_stream().context().compute_capability().w()? == (9, 0))
}

/// A driver `CUtensorMap` (128 opaque bytes, 64-byte aligned), passed by value to TMA kernels.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct TensorMap([u64; 16]);
// SAFETY: plain bytes with the layout of CUtensorMap, which the kernels take as __grid_constant__.
unsafe impl DeviceRepr for TensorMap {}

/// TMA map of a contiguous (bh, l, 128) bf16/f16 tensor at `ptr`: boxes of 64 columns x 128 rows,
/// 128-byte swizzle, rows past `l` read as zeros (the layout `flash_attn_sm90.cu` expects).
fn attn_tensor_map(ptr: u64, dt: DType, bh: usize, l: usize) -> Result<TensorMap> {
    use driver::sys;
    let mut map = TensorMap([0; 16]);
    let dims = [128u64, l as u64, bh as u64];
    let strides = [256u64, (l * 256) as u64];
    let boxes = [64u32, 128, 1];
    let elem_strides = [1u32; 3];
    let ty = match dt {
        DType::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        _ => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
    };
    // SAFETY: every pointer is valid for the rank (3) given; `map` outlives the call.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            (&mut map as *mut TensorMap).cast::<sys::CUtensorMap>(),
            ty,
            3,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .w()?;
    Ok(map)
}

/// The Hopper path of [`flash_attn_fwd`]: `flash_attn_sm90.cu` (head_dim 128, no mask, sm_90).
#[allow(clippy::too_many_arguments)]
fn flash_attn_fwd_sm90(
    op: &FlashAttnOp,
    dev: &CudaDevice,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let [b, h, lq, lk, d] = op.dims;
    // 1 KiB alignment slack, Q, two stages of (K, V) tiles of 128x128, 7 mbarriers.
    const SMEM: u32 = 1024 + 32768 * 5 + 8 * 7;
    let name = match s1.dtype() {
        DType::BF16 => "flash_fwd_sm90_bf16_d128",
        _ => "flash_fwd_sm90_f16_d128",
    };
    let f = func(dev, FLASH90, name, SMEM)?;
    let cfg = LaunchConfig {
        grid_dim: (lq.div_ceil(128) as u32, (b * h) as u32, 1),
        block_dim: (384, 1, 1),
        shared_mem_bytes: SMEM,
    };
    let scale_log2 = op.scale * std::f32::consts::LOG2_E;
    let (lq_i, lk_i, causal) = (lq as i32, lk as i32, op.causal as i32);
    let stream = dev.cuda_stream();
    macro_rules! run {
        ($t:ty, $variant:ident) => {{
            let (q, k, v) = (
                view(s1.as_cuda_slice::<$t>()?, l1)?,
                view(s2.as_cuda_slice::<$t>()?, l2)?,
                view(s3.as_cuda_slice::<$t>()?, l3)?,
            );
            let out = alloc_out::<$t>(dev, b * h * lq * d)?;
            let (qp, _gq) = q.device_ptr(&stream);
            let (kp, _gk) = k.device_ptr(&stream);
            let (vp, _gv) = v.device_ptr(&stream);
            let dt = s1.dtype();
            let tq = attn_tensor_map(qp, dt, b * h, lq)?;
            let tk = attn_tensor_map(kp, dt, b * h, lk)?;
            let tv = attn_tensor_map(vp, dt, b * h, lk)?;
            launch!(f, dev, cfg; &tq, &tk, &tv, &out, &lq_i, &lk_i, &scale_log2, &causal);
            CudaStorageSlice::$variant(out)
        }};
    }
    let slice = match s1.dtype() {
        DType::BF16 => run!(bf16, BF16),
        _ => run!(f16, F16),
    };
    Ok((CudaStorage { slice, device: dev.clone() }, Shape::from((b, h, lq, d))))
}

/// Geometry passed by value to `conv3d_*` (matches `ConvGeom` in conv3d.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct ConvGeom([i32; 18]);
// SAFETY: plain old data with the C layout the kernel expects.
unsafe impl DeviceRepr for ConvGeom {}

/// Tiles of the channels-last conv3d kernels `conv3d_cl_*_128x96x{64,32}`: BM x BN = 128 x 96, 8
/// warps; K block 64 with 3 cp.async stages when C % 64 == 0, else 32 with 4 stages. Shared
/// memory is the pipeline's, stages * (BM + BN) * (BK + 8) 16-bit elements.
const CONV_CL_BM: usize = 128;
const CONV_CL_BN: usize = 96;
const CONV_CL_THREADS: u32 = 256;
const fn conv_cl_smem(bk: usize, stages: usize) -> u32 {
    (stages * (CONV_CL_BM + CONV_CL_BN) * (bk + 8) * 2) as u32
}

pub(crate) fn conv3d_fwd(
    d: &Conv3dDims,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let [b, c, t, h, w] = d.x;
    let [o, _, kt, kh, kw] = d.w;
    let [_, _, to, ho, wo] = d.out;
    let g = ConvGeom(
        [
            b,
            c,
            t,
            h,
            w,
            o,
            kt,
            kh,
            kw,
            d.stride[0],
            d.stride[1],
            d.stride[2],
            d.padding[0],
            d.padding[1],
            d.padding[2],
            to,
            ho,
            wo,
        ]
        .map(|v| v as i32),
    );
    let m = b * to * ho * wo;
    let n = b * o * to * ho * wo;
    let taps = kt * kh * kw;
    if crate::conv3d::channels_last_applies(d) {
        // Channels-last implicit GEMM: copy x to (B,T,H,W,C) and w to (O,taps,C), then one launch
        // that writes the (B,O,To,Ho,Wo) output directly.
        let bk64 = c.is_multiple_of(64);
        let smem = if bk64 { conv_cl_smem(64, 3) } else { conv_cl_smem(32, 4) };
        let cfg = LaunchConfig {
            grid_dim: (m.div_ceil(CONV_CL_BM) as u32, o.div_ceil(CONV_CL_BN) as u32, 1),
            block_dim: (CONV_CL_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let thw = (t * h * w) as i64;
        let tx = LaunchConfig {
            grid_dim: ((t * h * w).div_ceil(32) as u32, c.div_ceil(32) as u32, b as u32),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let tw = LaunchConfig {
            grid_dim: (taps.div_ceil(32) as u32, c.div_ceil(32) as u32, o as u32),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let (c_i, taps_i) = (c as i32, taps as i64);
        macro_rules! run_cl {
            ($t:ty, $variant:ident, $k64:literal, $k32:literal) => {{
                let tr = func(&dev, CONV, "transpose_b16", 0)?;
                let f = func(&dev, CONV, if bk64 { $k64 } else { $k32 }, smem)?;
                let (x, wv, bv) = (
                    view(s1.as_cuda_slice::<$t>()?, l1)?,
                    view(s2.as_cuda_slice::<$t>()?, l2)?,
                    view(s3.as_cuda_slice::<$t>()?, l3)?,
                );
                // SAFETY: the transposes below write every element of both scratch buffers.
                let xc = unsafe { dev.alloc::<$t>(b * t * h * w * c)? };
                let wc = unsafe { dev.alloc::<$t>(o * taps * c)? };
                launch!(tr, dev, tx; &x, &xc, &c_i, &thw);
                launch!(tr, dev, tw; &wv, &wc, &c_i, &taps_i);
                let out = alloc_out::<$t>(&dev, n)?;
                launch!(f, dev, cfg; &xc, &wc, &bv, &out, &g);
                CudaStorageSlice::$variant(out)
            }};
        }
        let slice = match s1.dtype() {
            DType::BF16 => run_cl!(bf16, BF16, "conv3d_cl_bf16_128x96x64", "conv3d_cl_bf16_128x96x32"),
            DType::F16 => run_cl!(f16, F16, "conv3d_cl_f16_128x96x64", "conv3d_cl_f16_128x96x32"),
            dt => bail!("conv3d kernel takes bf16/f16, got {dt:?}"),
        };
        return Ok((CudaStorage { slice, device: dev }, Shape::from(d.out.to_vec())));
    }
    let cfg = LaunchConfig {
        grid_dim: (m.div_ceil(64) as u32, o.div_ceil(64) as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let f = func(&dev, CONV, $name, 0)?;
            let (x, wv, bv) = (
                view(s1.as_cuda_slice::<$t>()?, l1)?,
                view(s2.as_cuda_slice::<$t>()?, l2)?,
                view(s3.as_cuda_slice::<$t>()?, l3)?,
            );
            let out = alloc_out::<$t>(&dev, n)?;
            launch!(f, dev, cfg; &x, &wv, &bv, &out, &g);
            CudaStorageSlice::$variant(out)
        }};
    }
    let slice = match s1.dtype() {
        DType::BF16 => run!(bf16, BF16, "conv3d_bf16"),
        DType::F16 => run!(f16, F16, "conv3d_f16"),
        dt => bail!("conv3d kernel takes bf16/f16, got {dt:?}"),
    };
    Ok((CudaStorage { slice, device: dev }, Shape::from(d.out.to_vec())))
}

/// (b, l, c) element strides of a contiguous operand broadcast to `full`.
fn bstrides(l: &Layout, full: [usize; 3]) -> Result<[i64; 3]> {
    let t = Tensor::zeros(l.shape(), DType::F32, &candle_core::Device::Cpu)?;
    crate::norm::bcast_strides("norm", "operand", &t, full)
        .map(|s| s.map(|v| v as i64))
        .map_err(candle_core::Error::wrap)
}

/// Rows (warps) per CTA of the warp-per-row norm kernels.
const NORM_ROWS_PER_CTA: usize = 8;

fn row_block(c: usize) -> u32 {
    (c.div_ceil(32) * 32).clamp(32, 256) as u32
}

pub(crate) fn norm_modulate_fwd(
    op: &NormModulateOp,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (b, l, c) = l1.shape().dims3()?;
    let (ss, sc) = (bstrides(l2, [b, l, c])?, bstrides(l3, [b, l, c])?);
    let rows = b * l;
    let (li, ci, rms) = (l as i32, c as i32, (op.kind == NormKind::Rms) as i32);
    let shift = view(s2.as_cuda_slice::<f32>()?, l2)?;
    let scale = view(s3.as_cuda_slice::<f32>()?, l3)?;
    // One warp per row when the row fits a warp's registers as 16-byte vectors (NV per lane).
    let e = 16 / s1.dtype().size_in_bytes();
    let nv = (c.is_multiple_of(e) && l1.start_offset().is_multiple_of(e))
        .then(|| (c / e).div_ceil(32).max(1).next_power_of_two())
        .filter(|&nv| nv <= 16);
    let cfg = match nv {
        Some(_) => LaunchConfig {
            grid_dim: (rows.div_ceil(NORM_ROWS_PER_CTA).max(1) as u32, 1, 1),
            block_dim: (32 * NORM_ROWS_PER_CTA as u32, 1, 1),
            shared_mem_bytes: 0,
        },
        None => {
            LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (row_block(c), 1, 1), shared_mem_bytes: 0 }
        }
    };
    let rows_i = rows as i64;
    macro_rules! run {
        ($t:ty, $variant:ident, $suf:literal) => {{
            let x = view(s1.as_cuda_slice::<$t>()?, l1)?;
            let out = alloc_out::<$t>(&dev, b * l * c)?;
            match nv {
                Some(nv) => {
                    let name = match nv {
                        1 => concat!("norm_modulate_w1_", $suf),
                        2 => concat!("norm_modulate_w2_", $suf),
                        4 => concat!("norm_modulate_w4_", $suf),
                        8 => concat!("norm_modulate_w8_", $suf),
                        _ => concat!("norm_modulate_w16_", $suf),
                    };
                    let f = func(&dev, NORM, name, 0)?;
                    launch!(f, dev, cfg; &x, &shift, &scale, &out, &rows_i, &li, &ci, &ss[0], &ss[1], &ss[2], &sc[0], &sc[1], &sc[2], &op.eps, &rms);
                }
                None => {
                    let f = func(&dev, NORM, concat!("norm_modulate_", $suf), 0)?;
                    launch!(f, dev, cfg; &x, &shift, &scale, &out, &li, &ci, &ss[0], &ss[1], &ss[2], &sc[0], &sc[1], &sc[2], &op.eps, &rms);
                }
            }
            CudaStorageSlice::$variant(out)
        }};
    }
    let slice = match s1.dtype() {
        DType::F32 => run!(f32, F32, "f32"),
        DType::BF16 => run!(bf16, BF16, "bf16"),
        DType::F16 => run!(f16, F16, "f16"),
        dt => bail!("norm kernel takes f32/bf16/f16, got {dt:?}"),
    };
    Ok((CudaStorage { slice, device: dev }, l1.shape().clone()))
}

pub(crate) fn gated_residual_fwd(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (b, l, c) = l1.shape().dims3()?;
    let gs = bstrides(l2, [b, l, c])?;
    let cfg =
        LaunchConfig { grid_dim: ((b * l).max(1) as u32, 1, 1), block_dim: (row_block(c), 1, 1), shared_mem_bytes: 0 };
    let (li, ci) = (l as i32, c as i32);
    let gate = view(s2.as_cuda_slice::<f32>()?, l2)?;
    macro_rules! run {
        ($t:ty, $variant:ident, $name:literal) => {{
            let f = func(&dev, NORM, $name, 0)?;
            let (x, y) = (view(s1.as_cuda_slice::<$t>()?, l1)?, view(s3.as_cuda_slice::<$t>()?, l3)?);
            let out = alloc_out::<$t>(&dev, b * l * c)?;
            launch!(f, dev, cfg; &x, &gate, &y, &out, &li, &ci, &gs[0], &gs[1], &gs[2]);
            CudaStorageSlice::$variant(out)
        }};
    }
    let slice = match s1.dtype() {
        DType::F32 => run!(f32, F32, "gated_residual_f32"),
        DType::BF16 => run!(bf16, BF16, "gated_residual_bf16"),
        DType::F16 => run!(f16, F16, "gated_residual_f16"),
        dt => bail!("gated residual kernel takes f32/bf16/f16, got {dt:?}"),
    };
    Ok((CudaStorage { slice, device: dev }, l1.shape().clone()))
}

/// (b, h) rows each thread of the vectorised RoPE kernel rotates.
const ROPE_HEADS_PER_THREAD: usize = 2;

pub(crate) fn rope_fwd(
    layout: RopeLayout,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (b, h, l, d) = l1.shape().dims4()?;
    let pairs = (b * h * l * d / 2) as i64;
    let (li, di, il) = (l as i32, d as i32, (layout == RopeLayout::Interleaved) as i32);
    let (cs, sn) = (view(s2.as_cuda_slice::<f32>()?, l2)?, view(s3.as_cuda_slice::<f32>()?, l3)?);
    // The vector path: each thread owns E pairs (one 16-byte vector per half) of one position.
    let e = 16 / s1.dtype().size_in_bytes();
    let vec = d.is_multiple_of(2 * e)
        && l1.start_offset().is_multiple_of(e)
        && l2.start_offset().is_multiple_of(4)
        && l3.start_offset().is_multiple_of(4);
    let bh = b * h;
    // Heads per thread: the cos / sin loads are shared by them; few enough that the last wave of
    // CTAs is short.
    let heads = bh.clamp(1, ROPE_HEADS_PER_THREAD);
    let chunks = bh.div_ceil(heads).max(1);
    let per_pos = d / 2 / e;
    let vcfg = LaunchConfig {
        grid_dim: (((l * per_pos).div_ceil(256) * chunks).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (bhi, hi, ci) = (bh as i32, heads as i32, chunks as i32);
    macro_rules! run {
        ($t:ty, $variant:ident, $suf:literal) => {{
            let x = view(s1.as_cuda_slice::<$t>()?, l1)?;
            let out = alloc_out::<$t>(&dev, b * h * l * d)?;
            if vec {
                let f = func(&dev, ROPE, concat!("rope_vec_", $suf), 0)?;
                launch!(f, dev, vcfg; &x, &cs, &sn, &out, &li, &di, &bhi, &hi, &ci, &il);
            } else {
                let f = func(&dev, ROPE, concat!("rope_", $suf), 0)?;
                launch!(f, dev, grid1(pairs as usize, 256); &x, &cs, &sn, &out, &pairs, &li, &di, &il);
            }
            CudaStorageSlice::$variant(out)
        }};
    }
    let slice = match s1.dtype() {
        DType::F32 => run!(f32, F32, "f32"),
        DType::BF16 => run!(bf16, BF16, "bf16"),
        DType::F16 => run!(f16, F16, "f16"),
        dt => bail!("rope kernel takes f32/bf16/f16, got {dt:?}"),
    };
    Ok((CudaStorage { slice, device: dev }, l1.shape().clone()))
}

/// Thresholds per channel the threshold kernels take (`FSQ_MAX_STEPS` in fsq.cu).
const FSQ_MAX_STEPS: usize = 16;
/// Thresholds per channel the vector kernels unroll (`S` of `fsq_vec` in fsq.cu).
const FSQ_VEC_STEPS: usize = 8;
/// Most CTAs of an FSQ launch (grid-stride loops beyond).
const FSQ_BLOCKS: u32 = 4096;

/// FSQ constants passed by value (matches `FsqParams` in fsq.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct FsqParams {
    d: i32,
    levels: [i32; 8],
    half_l: [f32; 8],
    offset: [f32; 8],
    shift: [f32; 8],
    hw: [f32; 8],
    basis: [f32; 8],
    thr: [[f32; FSQ_MAX_STEPS]; 8],
    dthr: [[f32; FSQ_MAX_STEPS]; 8],
    base: [f32; 8],
    zneg: [f32; 8],
    inv_hw: [f32; 8],
}
// SAFETY: plain old data with the C layout the kernel expects.
unsafe impl DeviceRepr for FsqParams {}

/// The kernel parameters of `levels` and the most thresholds any channel has (`None`: a channel's
/// rounding is not a step function of at most [`FSQ_MAX_STEPS`] thresholds; the tanh kernel then).
/// Computed once per level list (the bisection costs a few hundred tanh evaluations).
fn fsq_params(levels: &[usize]) -> Result<(FsqParams, Option<usize>)> {
    type Cache = HashMap<Vec<usize>, (FsqParams, Option<usize>)>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    if levels.len() > 8 {
        bail!("fsq kernel supports at most 8 levels, got {levels:?}");
    }
    let mut cache =
        CACHE.get_or_init(Default::default).lock().map_err(|_| candle_core::Error::Msg("fsq cache poisoned".into()))?;
    if let Some(p) = cache.get(levels) {
        return Ok(*p);
    }
    let c = crate::fsq::level_constants(levels).map_err(candle_core::Error::wrap)?;
    let mut p = FsqParams {
        d: levels.len() as i32,
        levels: [1; 8],
        half_l: [0.; 8],
        offset: [0.; 8],
        shift: [0.; 8],
        hw: [1.; 8],
        basis: [1.; 8],
        thr: [[f32::NAN; FSQ_MAX_STEPS]; 8],
        dthr: [[f32::NAN; FSQ_MAX_STEPS]; 8],
        base: [0.; 8],
        zneg: [1e9; 8],
        inv_hw: [1.; 8],
    };
    for (i, (l, k)) in levels.iter().zip(c).enumerate() {
        p.levels[i] = *l as i32;
        [p.half_l[i], p.offset[i], p.shift[i], p.hw[i], p.basis[i]] = k.map(|v| v as f32);
    }
    // The threshold kernels where their arithmetic reproduces every level (`fsq::kernel_steps`).
    let steps = crate::fsq::kernel_steps(levels)
        .map_err(candle_core::Error::wrap)?
        .filter(|s| s.iter().all(|s| s.thresholds.len() <= FSQ_MAX_STEPS));
    let max_steps = steps.map(|steps| {
        for (i, s) in steps.iter().enumerate() {
            p.thr[i][..s.thresholds.len()].copy_from_slice(&s.thresholds);
            p.dthr[i][..s.digit_thresholds.len()].copy_from_slice(&s.digit_thresholds);
            (p.base[i], p.zneg[i], p.inv_hw[i]) = (s.base, s.zneg, s.inv_hw);
        }
        steps.iter().map(|s| s.thresholds.len()).max().unwrap_or(0)
    });
    cache.insert(levels.to_vec(), (p, max_steps));
    Ok((p, max_steps))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub(crate) fn fsq_fwd(op: &FsqOp, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device().clone();
    let (p, max_steps) = fsq_params(&op.levels)?;
    let d = op.levels.len();
    if op.want == FsqOutput::Decode {
        let n = l.shape().elem_count();
        let f = func(&dev, FSQ, "fsq_decode", 0)?;
        let idx = view(s.as_cuda_slice::<u32>()?, l)?;
        let out = alloc_out::<f32>(&dev, n * d)?;
        let ni = n as i64;
        launch!(f, dev, grid1(n, 256); &idx, &out, &ni, &p);
        let mut shape = l.dims().to_vec();
        shape.push(d);
        return Ok((CudaStorage { slice: CudaStorageSlice::F32(out), device: dev }, Shape::from(shape)));
    }
    let n = l.shape().elem_count() / d;
    let ni = n as i64;
    let null: u64 = 0;
    let want_codes = op.want == FsqOutput::Codes;
    // The vector path (`fsq_v{d}_*`) takes groups of k rows that fill whole 16-byte vectors; it
    // needs z 16-byte aligned (outputs are fresh allocations) and at most 8 thresholds per channel.
    // Up to 16 thresholds: the row-per-thread threshold kernel; more: the tanh kernel.
    let esz = s.dtype().size_in_bytes();
    let k = 16 / gcd(16, d * esz);
    let vec = (l.start_offset() * esz).is_multiple_of(16) && max_steps.is_some_and(|m| m <= FSQ_VEC_STEPS);
    let tanh = max_steps.is_none();
    // At most FSQ_BLOCKS CTAs: each thread then loops over several groups, which spreads its
    // loads of the ~100 parameter words (into uniform registers) over them.
    let mut cfg = if vec { grid1((n / k).max(k), 256) } else { grid1(n, 256) };
    cfg.grid_dim.0 = cfg.grid_dim.0.min(FSQ_BLOCKS);
    macro_rules! run {
        ($t:ty, $variant:ident, $suf:literal) => {{
            let name = if tanh {
                concat!("fsq_tanh_", $suf)
            } else if !vec {
                concat!("fsq_", $suf)
            } else {
                match d {
                    1 => concat!("fsq_v1_", $suf),
                    2 => concat!("fsq_v2_", $suf),
                    3 => concat!("fsq_v3_", $suf),
                    4 => concat!("fsq_v4_", $suf),
                    5 => concat!("fsq_v5_", $suf),
                    6 => concat!("fsq_v6_", $suf),
                    7 => concat!("fsq_v7_", $suf),
                    _ => concat!("fsq_v8_", $suf),
                }
            };
            let f = func(&dev, FSQ, name, 0)?;
            let z = view(s.as_cuda_slice::<$t>()?, l)?;
            if want_codes {
                let out = alloc_out::<$t>(&dev, n * d)?;
                launch!(f, dev, cfg; &z, &out, &null, &ni, &p);
                CudaStorageSlice::$variant(out)
            } else {
                let out = alloc_out::<u32>(&dev, n)?;
                launch!(f, dev, cfg; &z, &null, &out, &ni, &p);
                CudaStorageSlice::U32(out)
            }
        }};
    }
    let slice = match s.dtype() {
        DType::F32 => run!(f32, F32, "f32"),
        DType::BF16 => run!(bf16, BF16, "bf16"),
        DType::F16 => run!(f16, F16, "f16"),
        dt => bail!("fsq kernel takes f32/bf16/f16, got {dt:?}"),
    };
    let shape = if want_codes { l.shape().clone() } else { Shape::from(l.dims()[..l.dims().len() - 1].to_vec()) };
    Ok((CudaStorage { slice, device: dev }, shape))
}

pub(crate) fn vq_fwd(s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (n, d) = l1.shape().dims2()?;
    let k = l2.shape().dims2()?.0;
    let tk = (4096 / d).max(1);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(128).max(1) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: (tk * d * 4) as u32,
    };
    let (ni, ki, di) = (n as i32, k as i32, d as i32);
    let out = alloc_out::<u32>(&dev, n)?;
    macro_rules! run {
        ($t:ty, $name:literal) => {{
            let f = func(&dev, VQ, $name, cfg.shared_mem_bytes)?;
            let (z, cb) = (view(s1.as_cuda_slice::<$t>()?, l1)?, view(s2.as_cuda_slice::<$t>()?, l2)?);
            launch!(f, dev, cfg; &z, &cb, &out, &ni, &ki, &di);
        }};
    }
    match s1.dtype() {
        DType::F32 => run!(f32, "vq_f32"),
        DType::BF16 => run!(bf16, "vq_bf16"),
        DType::F16 => run!(f16, "vq_f16"),
        dt => bail!("vq kernel takes f32/bf16/f16, got {dt:?}"),
    }
    Ok((CudaStorage { slice: CudaStorageSlice::U32(out), device: dev }, Shape::from(n)))
}

/// Sets the release threshold of `dev`'s current memory pool (the one `cuMemAllocAsync` draws from)
/// to "never": freed blocks stay mapped across synchronisations, as in PyTorch's caching allocator,
/// instead of going back to the driver at each synchronise and being mapped again by the next
/// allocation.
pub(crate) fn retain_pool_memory(dev: &CudaDevice) -> Result<()> {
    use driver::sys;
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: out-pointer to a pool handle of the context's device.
    unsafe { sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) }.result().w()?;
    let mut threshold = u64::MAX;
    // SAFETY: the release threshold attribute takes a pointer to a cuuint64_t.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result()
    .w()?;
    Ok(())
}
