//! Evaluation for VideoWorld 2: step-wise task success, chained evaluation, video quality,
//! code probes, and the reports (markdown, plots, GIFs, JSON) that show them.
//!
//! Depends on the model crates and `vw-data`; never on the CLI.

pub mod baseline;
pub mod chain;
pub mod codebook;
pub mod craft_env;
pub mod demo;
pub mod error;
pub mod fvd;
pub mod probe;
pub mod quality;
pub mod report;
pub mod success;

pub use chain::{evaluate_chains, ChainConfig, ChainResult, Environment, Policy, StepInfo, Subtask};
pub use codebook::{codebook_usage, CodebookUsage};
pub use error::{Error, Result};
pub use probe::{probe_accuracy, LinearProbe, ProbeConfig, ProbeFeatures, ProbeReport};
pub use quality::{psnr, ssim, video_quality, ImageView, VideoQuality, VideoQualityMean};
pub use success::{completed_prefix, EpisodeOutcome, StepSuccess};
