//! The one error type of this crate.

/// Errors raised by this crate, with the context a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation inside candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// A config or input was invalid.
    #[error("{0}")]
    Invalid(String),
    /// A data file is malformed: `what` names the file (and record or key), `detail` what is wrong.
    #[error("malformed {what}: {detail}")]
    Malformed { what: String, detail: String },
    /// A data file lacks a key (npz member, tf.train.Example feature, parquet column, json field).
    #[error("{what}: missing key `{key}`")]
    MissingKey { what: String, key: String },
    /// An array has another dtype or shape than the reader expects.
    #[error("{what}: `{key}` is {found}, expected {expected}")]
    Mismatch { what: String, key: String, expected: String, found: String },
    /// A clip has fewer frames than `num_frames` at the target fps needs.
    #[error("{what}: clip too short: needs {needed} source frames, has {available}")]
    ClipTooShort { what: String, needed: usize, available: usize },
    /// Running the external `ffmpeg` decoder failed.
    #[error("ffmpeg on {what}: {detail}")]
    Ffmpeg { what: String, detail: String },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// A malformed-file error for `what` (a path, or a path plus record/key).
    pub fn malformed(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> Self {
        Self::Malformed { what: what.to_string(), detail: detail.to_string() }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
