//! The one error type of this crate.

/// Errors raised by this crate, with the context a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation inside candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A vw-tensor-kernels op failed.
    #[error(transparent)]
    Kernels(#[from] vw_tensor_kernels::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// A config or input was invalid.
    #[error("{0}")]
    Invalid(String),
    /// Training stopped on request (Ctrl-C, SIGTERM, a raised `vw_dldm::train::StopSignal`) with
    /// its checkpoint written: the same run resumes.
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
