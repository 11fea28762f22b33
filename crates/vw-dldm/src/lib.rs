//! The dynamic-enhanced Latent Dynamics Model (dLDM) of VideoWorld 2: compresses the change
//! between frames into a few discrete codes, rendered back by a pixel decoder (warm-up) or by the
//! video diffusion model through a control branch.
//!
//! Depends on `vw-diffusion`, `vw-tensor-kernels` and `vw-data`; never on the policy, eval or CLI.

pub mod baseline;
pub mod checkpoint_keys;
pub mod clip;
pub mod config;
pub mod control;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod haar;
pub mod layers3d;
pub mod qformer;
pub mod quantizer;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};

use candle_core::Tensor;

/// What the policy and eval layers need from a latent dynamics model, whichever renderer it uses
/// (the dLDM with the diffusion model, the dLDM's pixel decoder, or the VideoWorld-1-style plain LDM).
///
/// Frames are `(B, C, T, H, W)` in `[-1, 1]`. Codes are integer indices `(B, S, Q)`: `S` transitions
/// (temporal steps of the encoder), `Q` = [`LatentDynamics::codes_per_step`] queries each, values in
/// `0..vocab_size()`.
pub trait LatentDynamics {
    /// Codes of every transition of a clip; the first frame is the context, not a transition.
    fn encode_codes(&self, frames: &Tensor) -> Result<Tensor>;
    /// Renders the frames that follow `context` (`(B, C, Tc, H, W)`, its last frame the current one)
    /// under `codes` (`(B, S, Q)`); returns `(B, C, T_out, H, W)` without the context frames.
    fn render(&self, context: &Tensor, codes: &Tensor) -> Result<Tensor>;
    /// Codes per transition (`act_embedding_num` of the Q-Former).
    fn codes_per_step(&self) -> usize;
    /// Size of the code vocabulary (product of the FSQ levels, or the VQ codebook size).
    fn vocab_size(&self) -> usize;
    /// Frames rendered per transition (the temporal compression).
    fn frames_per_code_step(&self) -> usize;
}
