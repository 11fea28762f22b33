//! The one error type of this crate.

/// Errors raised by this crate, with the context a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation inside candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A vw-tensor-kernels op rejected its inputs or failed.
    #[error(transparent)]
    Kernel(#[from] vw_tensor_kernels::Error),
    /// A checkpoint tensor is missing or has the wrong shape for the model.
    #[error("{path}: tensor {key}: {reason}")]
    Weights { path: std::path::PathBuf, key: String, reason: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// A config or input was invalid.
    #[error("{0}")]
    Invalid(String),
    /// A loss, gradient or parameter became NaN or infinite during training.
    #[error(
        "non-finite value at step {step} in {tensor}; training stopped (lower the learning rate or clip gradients)"
    )]
    NonFinite { step: u64, tensor: String },
    /// Stage 1's codebook collapsed (see `Stage1Config::restart_on_collapse`); what a checked attempt
    /// returns to the restart loop.
    #[error("the codebook collapsed: {codes} distinct code(s) in steps {from}..={step}")]
    Collapsed { step: u64, from: u64, codes: usize },
    /// Training stopped because a [`crate::train::StopSignal`] asked it to (Ctrl-C, SIGTERM); the
    /// checkpoint of the step reached is written, so the same run resumes from it.
    #[error("training stopped on request at step {step}; its checkpoint is in {dir} (run again to resume)")]
    Interrupted { step: u64, dir: std::path::PathBuf },
    /// A training checkpoint is missing a tensor or disagrees with the run it should resume.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: std::path::PathBuf, reason: String },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
