//! The one error type of this crate.

use std::path::PathBuf;

/// Errors raised by this crate, with the context a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation inside candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An op of vw-tensor-kernels failed.
    #[error(transparent)]
    Kernels(#[from] vw_tensor_kernels::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A config.json (or other JSON file) could not be parsed.
    #[error("{path}: invalid JSON config: {source}")]
    Config { path: PathBuf, source: serde_json::Error },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{path}: missing tensor `{key}` (expected shape {expected:?})")]
    MissingTensor { path: PathBuf, key: String, expected: Vec<usize> },
    /// A tensor of the checkpoint has another shape than the config implies.
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    /// A tensor of the checkpoint is not a floating-point tensor.
    #[error("{path}: tensor `{key}` has dtype {found:?}, expected a float dtype (f32, f16, bf16, f64)")]
    DtypeMismatch { path: PathBuf, key: String, found: candle_core::DType },
    /// A model could not be found locally or on the Hub.
    #[error("model `{model}`: {reason}")]
    ModelNotFound { model: String, reason: String },
    /// Tokenizer failure.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// A config or input was invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
