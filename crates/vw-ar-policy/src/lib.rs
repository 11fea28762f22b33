//! The autoregressive policy of VideoWorld 2: a decoder-only transformer over dLDM latent codes,
//! long-horizon rollouts decoded through the dLDM, and an action decoder for robots.
//!
//! Depends on `vw-dldm` and below; never on eval or the CLI.

pub mod error;

pub use error::{Error, Result};
