//! The dynamic-enhanced Latent Dynamics Model (dLDM) of VideoWorld 2: compresses the change
//! between frames into a few discrete codes, rendered back by a pixel decoder (warm-up) or by the
//! video diffusion model through a control branch.
//!
//! Depends on `vw-diffusion`, `vw-tensor-kernels` and `vw-data`; never on the policy, eval or CLI.

pub mod error;

pub use error::{Error, Result};
