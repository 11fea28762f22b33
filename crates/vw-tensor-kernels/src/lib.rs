//! Custom CUDA kernels for VideoWorld 2's hot paths, each with a plain-Rust CPU reference,
//! plus the device / dtype selection shared by every crate and the `vw` command.
//!
//! This is the bottom of the workspace: it depends on candle only, never on a model crate.
//! Every op is an ordinary function over candle tensors that takes the CUDA kernel on a CUDA
//! tensor (with the `cuda` feature) and the CPU reference otherwise.

pub mod device;
pub mod error;

pub use device::{parse_device, parse_dtype, DeviceSpec, DtypeSpec};
pub use error::{Error, Result};

/// Whether this build carries the CUDA kernels (`--features cuda`).
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");
