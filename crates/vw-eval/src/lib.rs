//! Evaluation for VideoWorld 2: step-wise task success, chained evaluation, video quality,
//! code probes, and the reports (markdown, plots, GIFs, JSON) that show them.
//!
//! Depends on the model crates and `vw-data`; never on the CLI.

pub mod error;

pub use error::{Error, Result};
