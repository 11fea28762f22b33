//! The one error type of `vw-tensor-kernels`.

/// Errors raised by the kernels and the device helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation inside candle failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The user asked for a device string we cannot parse or open.
    #[error("invalid device '{spec}': {reason}")]
    Device { spec: String, reason: String },
    /// The user asked for a dtype we do not support.
    #[error("invalid dtype '{0}': expected one of f32, bf16, f16")]
    Dtype(String),
    /// Setting up or running a multi-process group failed.
    #[error("distributed: {0}")]
    Dist(String),
    /// An op got inputs of shapes it does not accept.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
