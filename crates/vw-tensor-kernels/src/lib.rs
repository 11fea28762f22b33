//! Custom CUDA kernels for VideoWorld 2's hot paths, each with a plain-Rust CPU reference,
//! plus the device / dtype selection shared by every crate and the `vw` command.
//!
//! This is the bottom of the workspace: it depends on candle only, never on a model crate.
//! Every op is an ordinary function over candle tensors that takes the CUDA kernel on a CUDA
//! tensor (with the `cuda` feature) and the CPU reference otherwise.

pub mod attention;
mod attention_cpu;
pub mod conv2d;
pub mod conv3d;
#[cfg(feature = "cudnn")]
pub mod conv3d_cudnn;
#[cfg(feature = "cuda")]
mod cuda;
pub mod device;
pub mod dist;
pub mod error;
pub mod fsq;
pub mod nll;
pub mod norm;
pub mod rope;
pub mod util;
pub mod vq;

#[cfg(test)]
mod tests;

pub use device::{parse_device, parse_dtype, DeviceSpec, DtypeSpec};
pub use error::{Error, Result};
pub use util::{host_f32, max_rel_err, random_f32, random_tensor};

/// Whether this build carries the CUDA kernels (`--features cuda`).
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");

static POISON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Fill every CUDA kernel output with 0xFF bytes (NaN, u32::MAX) before the kernel runs, so a
/// parity check catches elements a kernel never writes. Off by default (it costs a memset).
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_poison_outputs`] is on.
pub fn poison_outputs() -> bool {
    POISON.load(std::sync::atomic::Ordering::Relaxed)
}

/// 0: not decided yet (read `VW_FLASH_SM90` on first use), 1: on, 2: off.
static FLASH_SM90: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Let flash attention take the Hopper kernel (`kernels/flash_attn_sm90.cu`: wgmma + TMA) where it
/// applies (sm_90 device, bf16/f16, head_dim 128, no additive mask). On by default; the environment
/// variable `VW_FLASH_SM90=0` turns it off. Off, every shape takes the mma.sync kernel.
pub fn set_flash_sm90(on: bool) {
    FLASH_SM90.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_flash_sm90`] is on.
pub fn flash_sm90() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match FLASH_SM90.load(Relaxed) {
        0 => {
            let on = std::env::var("VW_FLASH_SM90").map_or(true, |v| v != "0");
            FLASH_SM90.store(if on { 1 } else { 2 }, Relaxed);
            on
        }
        s => s == 1,
    }
}
