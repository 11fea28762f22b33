//! The autoregressive policy of VideoWorld 2: a decoder-only transformer over dLDM latent codes,
//! long-horizon rollouts decoded through the dLDM, and an action decoder for robots.
//!
//! Depends on `vw-dldm` and below; never on eval or the CLI.
//!
//! A task is the token sequence `[observation tokens | task text | BOS codes.. EOS | ... | EOT]`
//! ([`tokens::Vocab`]). The pieces:
//! - [`Policy`]: the model ([`Policy::loss`] for training, [`Policy::generate`] for KV-cached,
//!   seeded sampling of whole steps from a first frame);
//! - [`rollout::rollout`]: predicted codes rendered clip by clip through a
//!   [`vw_dldm::LatentDynamics`] into one long video;
//! - [`ActionDecoder`]: (observation, codes of a step) -> action chunk;
//! - [`dataset::CodeDataset`] and [`train`]: teacher-forced training from the codes of
//!   `vw encode-codes`.

pub mod action_decoder;
pub mod attention;
pub mod bench;
pub mod config;
pub mod craftworld;
pub mod dataset;
pub mod error;
pub mod obs_encoder;
pub mod policy;
pub mod rollout;
pub mod sampling;
pub mod text;
pub mod tokens;
pub mod train;
pub mod transformer;

pub use action_decoder::ActionDecoder;
pub use config::{ActionDecoderConfig, ObsEncoderConfig, PolicyConfig};
pub use error::{Error, Result};
pub use policy::{GenerateOptions, Generated, Policy, PolicyBatch};
pub use sampling::{Sampler, SamplingConfig};
pub use tokens::Vocab;

#[cfg(test)]
mod tests;
