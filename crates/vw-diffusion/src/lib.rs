//! The appearance model of VideoWorld 2: Cosmos-Predict2 video2world (DiT, Wan2.1 VAE, T5 text
//! encoder, flow-matching sampler) in candle, loaded from Hugging Face Hub safetensors.
//!
//! Depends on `vw-tensor-kernels` (ops) and `vw-data` (video I/O) only; knows nothing of the dLDM.

pub mod error;

pub use error::{Error, Result};
