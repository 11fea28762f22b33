//! Readers that turn real data on disk into clips: video folders (mp4 / GIF / image sequences),
//! Open-X Embodiment RLDS TFRecords, CALVIN npz episodes and LeRobot datasets.
//!
//! Each reader streams its episodes and implements [`crate::ClipDataset`]; every malformed file
//! becomes an [`crate::Error`] naming the file, never a panic.

pub mod calvin;
pub mod example;
pub mod lerobot;
pub mod npy;
pub mod openx;
pub mod pickle;
pub mod tfrecord;
pub mod video;
