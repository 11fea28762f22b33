//! The appearance model of VideoWorld 2: Cosmos-Predict2 video2world (DiT, Wan2.1 VAE, T5 text
//! encoder, flow-matching sampler) in candle, loaded from Hugging Face Hub safetensors.
//!
//! Depends on `vw-tensor-kernels` (ops) and candle only; knows nothing of the dLDM.

pub mod dit;
pub mod error;
pub mod hub;
pub mod lora;
mod ops;
pub mod parity;
pub mod pipeline;
pub mod recompute;
pub mod scheduler;
pub mod t5;
pub mod vae;
pub mod video_io;
pub mod weights;

pub use dit::{CosmosTransformer3DModel, CosmosTransformerBlock, CosmosTransformerConfig, DitInput, DitState};
pub use error::{Error, Result};
pub use pipeline::{GenerateOptions, Video2WorldPipeline};
pub use recompute::ResidualGrads;
pub use scheduler::{EdmPrecond, FlowMatchEulerScheduler, FlowMatchSchedulerConfig};
pub use t5::T5TextEncoder;
pub use vae::{AutoencoderKLWan, AutoencoderKLWanConfig, WanDecodeStream};
