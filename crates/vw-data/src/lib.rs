//! Data for VideoWorld 2: CraftWorld, a built-in procedural long-horizon video world with a
//! pixel judge, and readers that turn video folders and robot datasets into clips and batches.
//!
//! Bottom layer: depends on candle-core for batches only; never on a model crate.

pub mod craftworld;
pub mod dataset;
pub mod error;
pub mod image_tensor;
pub mod progress;
pub mod readers;

pub use dataset::{Batch, Clip, ClipDataset, ClipSpec, Loader, LoaderConfig};
pub use error::{Error, Result};
